# Sourced by the scripts: one build cache outside the clone, so rebuilds are incremental
# (RocksDB's C++ build alone takes minutes) while a fresh machine still works.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lodestone-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
