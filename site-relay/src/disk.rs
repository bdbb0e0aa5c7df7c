//! The relay's own sled database under the data dir (`<data_dir>/relay`): the async
//! outboxes and the keys in doubt, with flushes shared by the writers waiting on them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{Notify, watch};

use crate::RelayError;
use crate::outbox::outbox_error;

/// Memory sled may use to cache the relay's data.
const CACHE_BYTES: u64 = 32 << 20;

/// The relay's database.
#[derive(Debug)]
pub(crate) struct Disk {
    db: sled::Db,
    flush: Arc<GroupFlush>,
}

impl Disk {
    /// Opens (or creates) the database at `path`; needs a tokio runtime.
    pub(crate) fn open(path: &Path) -> Result<Arc<Disk>, RelayError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|error| RelayError::Outbox(format!("{}: {error}", path.display())))?;
        let flush = Arc::new(GroupFlush {
            db: db.clone(),
            written: AtomicU64::new(0),
            flushed: watch::channel(0).0,
            wanted: Notify::new(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(flush.clone().run());
        Ok(Arc::new(Disk { db, flush }))
    }

    /// The tree `name`.
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, RelayError> {
        self.db.open_tree(name).map_err(outbox_error)
    }

    /// Returns once everything written before the call is on disk.
    pub(crate) async fn flush(&self) {
        let written = self.flush.written.fetch_add(1, Ordering::AcqRel) + 1;
        self.flush.wait(written).await;
    }
}

/// Opens the database at `path` again once the flusher of a dropped one let go of it
/// (it does when it next runs).
#[cfg(test)]
pub(crate) async fn reopen(path: &Path) -> Arc<Disk> {
    let mut attempts = 0;
    loop {
        match Disk::open(path) {
            Ok(disk) => return disk,
            Err(_) if attempts < 1_000 => {
                attempts += 1;
                tokio::task::yield_now().await;
            }
            Err(error) => panic!("the database is still held: {error}"),
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.flush.closed.store(true, Ordering::Release);
        self.flush.wanted.notify_one();
    }
}

/// Flushes on behalf of every writer waiting, one flush at a time: writers that arrive
/// during a flush share the next one. sled's own `flush_async` can wait forever; this
/// cannot.
#[derive(Debug)]
struct GroupFlush {
    db: sled::Db,
    /// Flushes asked for so far.
    written: AtomicU64,
    /// Flushes asked for that are done.
    flushed: watch::Sender<u64>,
    wanted: Notify,
    /// The database was dropped: the flusher ends.
    closed: AtomicBool,
}

impl GroupFlush {
    /// Flushes whenever asked, until the database is dropped.
    async fn run(self: Arc<GroupFlush>) {
        let this = self;
        loop {
            this.wanted.notified().await;
            if this.closed.load(Ordering::Acquire) {
                return;
            }
            let target = this.written.load(Ordering::Acquire);
            let db = this.db.clone();
            match tokio::task::spawn_blocking(move || db.flush()).await {
                Ok(Ok(_)) => {
                    this.flushed.send_if_modified(|flushed| {
                        let moved = target > *flushed;
                        *flushed = (*flushed).max(target);
                        moved
                    });
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "cannot flush the relay database; trying again");
                    this.wanted.notify_one();
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => {
                    tracing::error!(%error, "the relay database flush failed; trying again");
                    this.wanted.notify_one();
                }
            }
        }
    }

    /// Returns once flush number `seq` is done.
    async fn wait(&self, seq: u64) {
        let mut flushed = self.flushed.subscribe();
        self.wanted.notify_one();
        let _ = flushed.wait_for(|flushed| *flushed >= seq).await;
    }
}
