#!/usr/bin/env bash
# Sets up, builds and runs one Lodestone member on its embedded defaults (like `etcd` with
# no flags): cluster `default`, data in ./default.lodestone, clients on 127.0.0.1:2379
# (also /health, /version and /metrics), peers on 127.0.0.1:2380. Extra arguments are passed
# to `lodestone`. The build shares its cache with the test suite (dependencies are built
# optimized); `cargo build --release --bin lodestone` gives a fully optimized binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# The same selection as scripts/test.sh, so the two share one RocksDB build.
cargo build "${STORE_PACKAGES[@]}" --all-targets
exec "$CARGO_TARGET_DIR/debug/lodestone" "$@"
