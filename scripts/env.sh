# Sourced by the scripts: one build cache outside the clone, so rebuilds are incremental
# (RocksDB's C++ build alone takes minutes) while a fresh machine still works.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lodestone-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Cargo resolves features per invocation, across the packages it selects. The store side and
# the operator side are therefore always built in two invocations with these selections: the
# operator's dependencies (kube and friends) enable features in crates that RocksDB's build
# script shares, and building them together would compile RocksDB's C++ a second time.
# The operator never links RocksDB (ARCHITECTURE.md).
STORE_PACKAGES=(-p lodestone -p lodestone-tests)
OPERATOR_PACKAGES=(-p lodestone-operator)
# The fault suite's lazy filesystem: fuser enables libc features that would otherwise rebuild
# RocksDB, so it is resolved on its own as well.
LAZYFS_PACKAGES=(-p lodestone-lazyfs)
