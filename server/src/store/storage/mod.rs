//! Where persistent caches are kept: the [`Storage`] trait and its engines.
//!
//! The store keeps every cache in memory and writes persistent caches through to a
//! [`Storage`]. The trait is small on purpose (scan at start, write, make durable, a few
//! metadata values) so the engine can be swapped; [`SledStorage`] is the real one and
//! [`MemoryStorage`] its in-memory twin for tests, which can also "crash" to drop what
//! was never made durable. The engine-agnostic tests at the bottom run against both.
//!
//! Calls may block on disk: the store makes them from its storage thread (see
//! `durability`), never from async code.

mod memory;
mod sled_engine;

use std::sync::Arc;

use bytes::Bytes;

pub use memory::MemoryStorage;
pub use sled_engine::SledStorage;

/// A change to storage.
#[derive(Debug, Clone)]
pub enum StorageOp {
    /// Store `record` under `key` in `cache`.
    Put {
        /// Cache name.
        cache: Arc<str>,
        /// The key.
        key: Bytes,
        /// The encoded slot.
        record: Bytes,
    },
    /// Forget `key` in `cache`.
    Delete {
        /// Cache name.
        cache: Arc<str>,
        /// The key.
        key: Bytes,
    },
    /// Forget every key of `cache`.
    Clear {
        /// Cache name.
        cache: Arc<str>,
    },
    /// Store a metadata value (clock high-water mark, clear floors).
    Meta {
        /// Metadata name.
        name: String,
        /// Its value.
        value: Vec<u8>,
    },
}

/// A storage engine failure.
#[derive(Debug, thiserror::Error)]
#[error("storage {operation} failed{}", cache.as_ref().map(|c| format!(" for cache {c}")).unwrap_or_default())]
pub struct StorageError {
    /// What was being done.
    pub operation: &'static str,
    /// The cache concerned, if any.
    pub cache: Option<String>,
    /// The engine's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// `Result` with [`StorageError`].
pub type StorageResult<T> = Result<T, StorageError>;

/// A storage engine.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Calls `visit(key, record)` for every record of `cache`, in key order.
    fn scan(&self, cache: &str, visit: &mut dyn FnMut(&[u8], &[u8])) -> StorageResult<()>;

    /// Applies changes; they are durable only after the next [`Storage::sync`].
    fn write(&self, ops: &[StorageOp]) -> StorageResult<()>;

    /// Makes every change written so far durable.
    fn sync(&self) -> StorageResult<()>;

    /// Reads a metadata value.
    fn meta(&self, name: &str) -> StorageResult<Option<Vec<u8>>>;
}

#[cfg(test)]
mod engine_tests {
    //! The same behaviour, checked against every engine.

    use super::*;

    fn engines() -> Vec<(&'static str, Arc<dyn Storage>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStorage::open(&dir.path().join("db"), 8 << 20).unwrap();
        vec![
            (
                "memory",
                Arc::new(MemoryStorage::default()),
                tempfile::tempdir().unwrap(),
            ),
            ("sled", Arc::new(sled), dir),
        ]
    }

    fn put(cache: &str, key: &str, record: &str) -> StorageOp {
        StorageOp::Put {
            cache: Arc::from(cache),
            key: Bytes::copy_from_slice(key.as_bytes()),
            record: Bytes::copy_from_slice(record.as_bytes()),
        }
    }

    fn scan(storage: &dyn Storage, cache: &str) -> Vec<(String, String)> {
        let mut all = Vec::new();
        storage
            .scan(cache, &mut |k, v| {
                all.push((
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                ))
            })
            .unwrap();
        all
    }

    #[test]
    fn writes_are_scanned_back_in_key_order_per_cache() {
        for (name, storage, _dir) in engines() {
            storage
                .write(&[
                    put("a", "k2", "v2"),
                    put("a", "k1", "v1"),
                    put("b", "k1", "other"),
                ])
                .unwrap();
            storage.sync().unwrap();
            assert_eq!(
                scan(&*storage, "a"),
                [("k1".into(), "v1".into()), ("k2".into(), "v2".into())],
                "{name}"
            );
            assert_eq!(scan(&*storage, "b").len(), 1, "{name}");
            assert!(scan(&*storage, "never-written").is_empty(), "{name}");
        }
    }

    #[test]
    fn deletes_and_clears_forget_records() {
        for (name, storage, _dir) in engines() {
            storage
                .write(&[
                    put("a", "k1", "v1"),
                    put("a", "k2", "v2"),
                    put("b", "k", "v"),
                ])
                .unwrap();
            storage
                .write(&[StorageOp::Delete {
                    cache: Arc::from("a"),
                    key: Bytes::from_static(b"k1"),
                }])
                .unwrap();
            assert_eq!(scan(&*storage, "a").len(), 1, "{name}");
            storage
                .write(&[StorageOp::Clear {
                    cache: Arc::from("a"),
                }])
                .unwrap();
            assert!(scan(&*storage, "a").is_empty(), "{name}");
            assert_eq!(scan(&*storage, "b").len(), 1, "{name}");
        }
    }

    #[test]
    fn metadata_is_kept_by_name() {
        for (name, storage, _dir) in engines() {
            assert_eq!(storage.meta("hwm").unwrap(), None, "{name}");
            storage
                .write(&[StorageOp::Meta {
                    name: "hwm".into(),
                    value: vec![1, 2],
                }])
                .unwrap();
            storage.sync().unwrap();
            assert_eq!(storage.meta("hwm").unwrap(), Some(vec![1, 2]), "{name}");
        }
    }

    #[test]
    fn sled_keeps_synced_writes_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let storage = SledStorage::open(&path, 8 << 20).unwrap();
            storage.write(&[put("sessions", "s1", "r1")]).unwrap();
            storage
                .write(&[StorageOp::Meta {
                    name: "m".into(),
                    value: vec![7],
                }])
                .unwrap();
            storage.sync().unwrap();
        }
        let storage = SledStorage::open(&path, 8 << 20).unwrap();
        assert_eq!(scan(&storage, "sessions"), [("s1".into(), "r1".into())]);
        assert_eq!(storage.meta("m").unwrap(), Some(vec![7]));
    }

    #[test]
    fn the_memory_twin_loses_exactly_what_was_not_synced_on_a_crash() {
        let storage = MemoryStorage::default();
        storage.write(&[put("a", "durable", "1")]).unwrap();
        storage.sync().unwrap();
        storage.write(&[put("a", "lost", "2")]).unwrap();
        storage.crash();
        assert_eq!(scan(&storage, "a"), [("durable".into(), "1".into())]);
    }
}
