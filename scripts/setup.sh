#!/usr/bin/env bash
# Installs what building and testing Lodestone needs on a Debian machine: protoc (gRPC code
# generation), libclang (RocksDB bindings), etcd 3.4's etcdctl and etcd (reference client and
# side-by-side peer in the tests). Safe to run again: installs only what is missing.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v c++ >/dev/null 2>&1 || need+=(g++)

if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # The etcd-server package may start a system etcd on the default ports; Lodestone's
  # defaults are the same ports, so stop it.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop etcd >/dev/null 2>&1 || true; fi
  pkill -x etcd >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
echo "setup: ok (protoc $(protoc --version | cut -d' ' -f2), $(etcd --version | head -1))"
