//! The linearizable read barrier, batched like etcd's read loop: one ReadIndex round serves
//! every read that was waiting when the round started. Reads that arrive during a round wait
//! for the next one, because the running round may have started before their writes were
//! acknowledged.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::Server;
use crate::error::{Result, StoreError};

type Waiter = oneshot::Sender<Result<u64>>;

pub struct ReadBarrier {
    tx: mpsc::UnboundedSender<Waiter>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Waiter>>>,
}

impl ReadBarrier {
    pub fn new() -> ReadBarrier {
        let (tx, rx) = mpsc::unbounded_channel();
        ReadBarrier {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Starts the read loop; it ends when the server shuts down.
    pub fn start(&self, server: Arc<Server>) {
        let Some(mut rx) = self.rx.lock().expect("read barrier lock").take() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    _ = server.shutdown.cancelled() => return,
                    w = rx.recv() => match w { Some(w) => w, None => return },
                };
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let fetch = || tokio::time::timeout(server.cfg.request_timeout(), server.fetch_read_index());
                let mut result = fetch().await.unwrap_or(Err(StoreError::Timeout));
                // Leadership moved between finding the leader and asking it: ask the new one.
                for _ in 0..3 {
                    if !matches!(result, Err(StoreError::NotLeader)) {
                        break;
                    }
                    tokio::time::sleep(server.cfg.heartbeat()).await;
                    result = fetch().await.unwrap_or(Err(StoreError::Timeout));
                }
                if matches!(result, Err(StoreError::NotLeader)) {
                    result = Err(StoreError::LeaderChanged);
                }
                crate::metrics::read_index_round(waiters.len());
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
    }

    /// The index this member must apply before serving a linearizable read.
    pub async fn read_index(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

impl Default for ReadBarrier {
    fn default() -> Self {
        Self::new()
    }
}
