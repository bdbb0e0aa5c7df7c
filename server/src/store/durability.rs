//! Group commit: one storage thread writes what every task hands it and makes it durable
//! with one sync per batch.
//!
//! Writers on the async side send their storage changes down a channel and, if they need
//! the write acknowledged only once durable, wait for an answer. The thread takes
//! everything queued, writes it, syncs once, and answers every waiter of the batch: with
//! 64 concurrent writers, one fsync covers dozens of writes. Storage calls that may block
//! on disk therefore never run on the async runtime.
//!
//! Changes to one key reach storage in the order they were sent (one FIFO channel), so a
//! writer that doesn't wait (expiry, tombstone purges) can't be overtaken by a later
//! write to the same key.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::{error, info};

use crate::store::storage::{Storage, StorageError, StorageOp};

/// Most changes taken into one batch, so one huge backlog can't delay every answer.
const MAX_BATCH_OPS: usize = 8192;

/// The answer to a waiting writer: `Err` carries the batch's storage error.
pub type DurableResult = Result<(), Arc<StorageError>>;

/// Changes to write, and who waits for them to be durable.
struct Job {
    ops: Vec<StorageOp>,
    done: Option<oneshot::Sender<DurableResult>>,
}

/// Handle to the storage thread. [`Durability::close`] (or dropping it) has the thread
/// finish what is queued, sync and exit, and waits for that.
#[derive(Debug)]
pub struct Durability {
    /// Jobs, then `None` to stop.
    sender: mpsc::Sender<Option<Job>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Durability {
    /// Starts the storage thread over `storage`.
    pub fn start(storage: Arc<dyn Storage>) -> std::io::Result<Durability> {
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sitegrid-storage".into())
            .spawn(move || run(&*storage, &receiver))?;
        Ok(Durability {
            sender,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes `ops` and waits until they are durable.
    pub async fn write(&self, ops: Vec<StorageOp>) -> DurableResult {
        let (done, answer) = oneshot::channel();
        self.send(Job {
            ops,
            done: Some(done),
        })?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Writes `ops` without waiting; they become durable with the next batch.
    pub fn write_in_background(&self, ops: Vec<StorageOp>) {
        if let Err(error) = self.send(Job { ops, done: None }) {
            error!(error = %error, "storage thread gone, background write dropped");
        }
    }

    fn send(&self, job: Job) -> DurableResult {
        self.sender.send(Some(job)).map_err(|_| stopped())
    }

    /// Finishes every write queued so far, syncs, and stops the thread; writes after
    /// that fail as "stopped". Through a shared handle: the store is still held by the
    /// parts of a node that hold each other (cluster, relay) when the node stops.
    pub fn close(&self) {
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        let _ = self.sender.send(None);
        if thread.join().is_err() {
            error!("storage thread panicked");
        }
    }
}

impl Drop for Durability {
    fn drop(&mut self) {
        self.close();
    }
}

fn stopped() -> Arc<StorageError> {
    Arc::new(StorageError {
        operation: "write",
        cache: None,
        source: "the storage thread has stopped".into(),
    })
}

fn run(storage: &dyn Storage, receiver: &mpsc::Receiver<Option<Job>>) {
    let mut ops = Vec::new();
    let mut waiters = Vec::new();
    let mut stopping = false;
    // Jobs sent after the stop are dropped with the receiver: their writers hear
    // "stopped" (their answer channel closes).
    while !stopping && let Ok(Some(first)) = receiver.recv() {
        let mut job = Some(first);
        while let Some(Job { ops: batch, done }) = job.take() {
            ops.extend(batch);
            waiters.extend(done);
            if ops.len() >= MAX_BATCH_OPS {
                break;
            }
            job = match receiver.try_recv() {
                Ok(Some(job)) => Some(job),
                Ok(None) => {
                    stopping = true;
                    None
                }
                Err(_) => None,
            };
        }
        let result = storage
            .write(&ops)
            .and_then(|()| storage.sync())
            .map_err(Arc::new);
        if let Err(error) = &result {
            error!(error = %error, ops = ops.len(), "storage batch failed");
        }
        ops.clear();
        for waiter in waiters.drain(..) {
            // A waiter that went away no longer needs the answer.
            let _ = waiter.send(result.clone());
        }
    }
    info!("storage thread stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::storage::MemoryStorage;
    use bytes::Bytes;

    fn put(key: &str) -> StorageOp {
        StorageOp::Put {
            cache: Arc::from("c"),
            key: Bytes::copy_from_slice(key.as_bytes()),
            record: Bytes::from_static(b"r"),
        }
    }

    fn durable_keys(storage: &MemoryStorage) -> usize {
        storage.crash(); // drop anything not synced
        let mut count = 0;
        storage.scan("c", &mut |_, _| count += 1).unwrap();
        count
    }

    #[tokio::test]
    async fn an_acknowledged_write_is_durable() {
        let storage = Arc::new(MemoryStorage::default());
        let durability = Durability::start(storage.clone()).unwrap();
        durability.write(vec![put("a")]).await.unwrap();
        assert_eq!(durable_keys(&storage), 1);
    }

    #[tokio::test]
    async fn concurrent_writers_are_all_acknowledged() {
        let storage = Arc::new(MemoryStorage::default());
        let durability = Arc::new(Durability::start(storage.clone()).unwrap());
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let durability = durability.clone();
                tokio::spawn(async move { durability.write(vec![put(&format!("k{i}"))]).await })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        assert_eq!(durable_keys(&storage), 64);
    }

    #[tokio::test]
    async fn close_makes_background_writes_durable() {
        let storage = Arc::new(MemoryStorage::default());
        let durability = Durability::start(storage.clone()).unwrap();
        durability.write_in_background(vec![put("a"), put("b")]);
        durability.close();
        assert_eq!(durable_keys(&storage), 2);
    }

    #[tokio::test]
    async fn a_write_after_close_fails_instead_of_waiting() {
        let storage = Arc::new(MemoryStorage::default());
        let durability = Arc::new(Durability::start(storage.clone()).unwrap());
        let other_handle = durability.clone();
        durability.write(vec![put("a")]).await.unwrap();
        other_handle.close();
        assert!(durability.write(vec![put("b")]).await.is_err());
        assert_eq!(durable_keys(&storage), 1);
    }
}
