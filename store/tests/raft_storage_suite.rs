//! openraft's storage conformance suite against Lodestone's RocksDB log store and state
//! machine.

use lodestone::raft::TypeConfig;
use lodestone::raft::log_store::LogStore;
use lodestone::raft::state_machine::StateMachine;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("wal")).expect("open log store");
        let sm = StateMachine::open(&dir.path().join("sm")).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance() {
    Suite::test_all(Builder).await.expect("storage suite");
}
