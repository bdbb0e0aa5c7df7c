//! The in-memory twin of the sled engine, for tests.
//!
//! Writes land in a pending layer that [`Storage::sync`] makes durable;
//! [`MemoryStorage::crash`] throws the pending layer away, as a power cut would, so tests
//! can check that nothing acknowledged depended on it.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Storage, StorageOp, StorageResult};

/// Storage kept in memory.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    durable: Mutex<Layer>,
    pending: Mutex<Vec<StorageOp>>,
}

#[derive(Debug, Default, Clone)]
struct Layer {
    caches: HashMap<String, BTreeMap<Bytes, Bytes>>,
    meta: HashMap<String, Vec<u8>>,
}

impl Layer {
    fn apply(&mut self, op: &StorageOp) {
        match op {
            StorageOp::Put { cache, key, record } => {
                self.caches
                    .entry(cache.to_string())
                    .or_default()
                    .insert(key.clone(), record.clone());
            }
            StorageOp::Delete { cache, key } => {
                if let Some(records) = self.caches.get_mut(&**cache) {
                    records.remove(key);
                }
            }
            StorageOp::Clear { cache } => {
                self.caches.remove(&**cache);
            }
            StorageOp::Meta { name, value } => {
                self.meta.insert(name.clone(), value.clone());
            }
        }
    }
}

impl MemoryStorage {
    /// Forgets every write not yet synced.
    pub fn crash(&self) {
        self.pending.lock().clear();
    }

    /// The durable layer with the pending writes on top: what reads see.
    fn view(&self) -> Layer {
        let mut layer = self.durable.lock().clone();
        for op in self.pending.lock().iter() {
            layer.apply(op);
        }
        layer
    }
}

impl Storage for MemoryStorage {
    fn scan(&self, cache: &str, visit: &mut dyn FnMut(&[u8], &[u8])) -> StorageResult<()> {
        if let Some(records) = self.view().caches.get(cache) {
            for (key, record) in records {
                visit(key, record);
            }
        }
        Ok(())
    }

    fn write(&self, ops: &[StorageOp]) -> StorageResult<()> {
        self.pending.lock().extend_from_slice(ops);
        Ok(())
    }

    fn sync(&self) -> StorageResult<()> {
        let pending = std::mem::take(&mut *self.pending.lock());
        let mut durable = self.durable.lock();
        for op in &pending {
            durable.apply(op);
        }
        Ok(())
    }

    fn meta(&self, name: &str) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.view().meta.get(name).cloned())
    }
}
