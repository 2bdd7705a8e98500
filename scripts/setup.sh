#!/usr/bin/env bash
# Installs what building and testing Lodestone needs on a Debian machine: protoc (gRPC code
# generation), libclang (RocksDB bindings), etcd 3.4's etcdctl and etcd (reference client and
# side-by-side peer in the tests). Safe to run again: installs only what is missing.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# bindgen needs libclang itself; libclang-cpp (which other packages bring) does not do.
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null \
  || need+=(libclang-dev)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v c++ >/dev/null 2>&1 || need+=(g++)
# jemalloc (the store's allocator) builds with its own configure and make.
command -v make >/dev/null 2>&1 || need+=(make)
# The fault suite puts members in network namespaces (`ip netns`).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# lodestone-bench draws its plot's labels with DejaVu Sans.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # The etcd-server package may start a system etcd on the default ports; Lodestone's
  # defaults are the same ports, so stop it.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop etcd >/dev/null 2>&1 || true; fi
  pkill -x etcd >/dev/null 2>&1 || true
fi

# Python packages for the chart tests (the Helm v4 engine and Kubernetes schemas), in a venv
# beside the build cache so the system Python stays untouched.
VENV="${LODESTONE_VENV:-$HOME/.cache/lodestone-venv}"
REQUIREMENTS="$(dirname "$0")/../charts/lodestone-operator/tests/requirements.txt"
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt" 2>/dev/null; then
  echo "setup: installing chart-test packages into $VENV"
  python3 -m venv "$VENV" 2>/dev/null || {
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
echo "setup: ok (protoc $(protoc --version | cut -d' ' -f2), $(etcd --version | head -1))"
