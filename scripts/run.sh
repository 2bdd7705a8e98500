#!/usr/bin/env bash
# Sets up, builds and runs one Lodestone member on its embedded defaults (like `etcd` with
# no flags): cluster `default`, data in ./default.lodestone, clients on 127.0.0.1:2379.
# Extra arguments are passed to `lodestone`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --bin lodestone
exec "$CARGO_TARGET_DIR/release/lodestone" "$@"
