#!/usr/bin/env bash
# Sets up and runs the whole test suite: formatting, lints, unit tests, openraft's storage
# conformance suite, and the end-to-end suites against real lodestone, etcd 3.4 and etcdctl
# processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
# Always select the whole workspace: a narrower selection unifies dependency features
# differently and would rebuild RocksDB's C++ from scratch.
cargo build --workspace --all-targets --locked
export LODESTONE_BIN="$CARGO_TARGET_DIR/debug/lodestone"
echo "== cargo test"
# Tests start real clusters; two at a time suits a 2-core machine.
cargo test --workspace --locked -- --test-threads=2
