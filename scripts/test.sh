#!/usr/bin/env bash
# Sets up and runs the whole test suite: formatting, lints, unit tests, openraft's storage
# conformance suite, the end-to-end suites against real lodestone, etcd 3.4 and etcdctl
# processes, the operator's tests (plan tables, controller against a stand-in API server,
# CEL rules, member probe against real processes), the fault suite's short runs (network
# partitions, crashes that lose unsynced writes; they need root) and the chart tests (real
# Helm engine, Kubernetes schema validation).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true
VENV="${LODESTONE_VENV:-$HOME/.cache/lodestone-venv}"

# Each step prints the minutes elapsed so far; RocksDB's C++ compiles once, in the first
# cargo step on a fresh machine (see the build-override profile in Cargo.toml).
step() { echo "== [$((SECONDS / 60)) min] $*"; }

# Store and operator are built in separate cargo invocations (see scripts/env.sh).
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (store)"
cargo clippy "${STORE_PACKAGES[@]}" --all-targets --locked -- -D warnings
step "cargo clippy (operator)"
cargo clippy "${OPERATOR_PACKAGES[@]}" --all-targets --locked -- -D warnings
step "cargo clippy (lazy filesystem)"
cargo clippy "${LAZYFS_PACKAGES[@]}" --all-targets --locked -- -D warnings
step "build"
cargo build "${STORE_PACKAGES[@]}" --all-targets --locked
cargo build "${OPERATOR_PACKAGES[@]}" --all-targets --locked
cargo build "${LAZYFS_PACKAGES[@]}" --all-targets --locked
export LODESTONE_BIN="$CARGO_TARGET_DIR/debug/lodestone"
step "cargo test (store)"
# Tests start real clusters; two at a time suits a 2-core machine.
cargo test "${STORE_PACKAGES[@]}" --locked -- --test-threads=2
step "cargo test (lazy filesystem)"
cargo test "${LAZYFS_PACKAGES[@]}" --locked
step "cargo test (operator)"
cargo test "${OPERATOR_PACKAGES[@]}" --locked -- --test-threads=2
step "operator crd output matches crds/"
diff <("$CARGO_TARGET_DIR/debug/lodestone-operator" crd) <(for f in crds/*.yaml; do echo "---"; cat "$f"; done)
step "chart tests"
"$VENV/bin/python" -m unittest discover -s charts/lodestone-operator/tests -v
step "done"
