//! The sled storage engine: one sled tree per cache, plus one for metadata.

use std::collections::HashMap;
use std::path::Path;

use parking_lot::Mutex;

use super::{Storage, StorageError, StorageOp, StorageResult};

const META_TREE: &str = "meta";
const CACHE_TREE_PREFIX: &str = "cache/";

/// Persistent caches in a sled database.
#[derive(Debug)]
pub struct SledStorage {
    db: sled::Db,
    /// Open trees by cache name; opening a tree is a lookup we don't repeat per write.
    trees: Mutex<HashMap<String, sled::Tree>>,
}

fn error<'a>(
    operation: &'static str,
    cache: Option<&'a str>,
) -> impl FnOnce(sled::Error) -> StorageError + 'a {
    move |source| StorageError {
        operation,
        cache: cache.map(str::to_string),
        source: Box::new(source),
    }
}

impl SledStorage {
    /// Opens (or creates) the database at `path`, with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> StorageResult<SledStorage> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|source| StorageError {
                operation: "open",
                cache: None,
                source: format!("{}: {source}", path.display()).into(),
            })?;
        Ok(SledStorage {
            db,
            trees: Mutex::new(HashMap::new()),
        })
    }

    fn tree(&self, cache: &str) -> StorageResult<sled::Tree> {
        let mut trees = self.trees.lock();
        if let Some(tree) = trees.get(cache) {
            return Ok(tree.clone());
        }
        let tree = self
            .db
            .open_tree(format!("{CACHE_TREE_PREFIX}{cache}"))
            .map_err(error("open tree", Some(cache)))?;
        trees.insert(cache.to_string(), tree.clone());
        Ok(tree)
    }

    fn meta_tree(&self) -> StorageResult<sled::Tree> {
        self.db
            .open_tree(META_TREE)
            .map_err(error("open tree", None))
    }
}

impl Storage for SledStorage {
    fn scan(&self, cache: &str, visit: &mut dyn FnMut(&[u8], &[u8])) -> StorageResult<()> {
        for item in self.tree(cache)?.iter() {
            let (key, value) = item.map_err(error("scan", Some(cache)))?;
            visit(&key, &value);
        }
        Ok(())
    }

    fn write(&self, ops: &[StorageOp]) -> StorageResult<()> {
        for op in ops {
            match op {
                StorageOp::Put { cache, key, record } => {
                    self.tree(cache)?
                        .insert(&key[..], &record[..])
                        .map_err(error("write", Some(cache)))?;
                }
                StorageOp::Delete { cache, key } => {
                    self.tree(cache)?
                        .remove(&key[..])
                        .map_err(error("delete", Some(cache)))?;
                }
                StorageOp::Clear { cache } => {
                    self.tree(cache)?
                        .clear()
                        .map_err(error("clear", Some(cache)))?;
                }
                StorageOp::Meta { name, value } => {
                    self.meta_tree()?
                        .insert(name.as_bytes(), &value[..])
                        .map_err(error("write metadata", None))?;
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> StorageResult<()> {
        self.db.flush().map_err(error("sync", None))?;
        Ok(())
    }

    fn meta(&self, name: &str) -> StorageResult<Option<Vec<u8>>> {
        Ok(self
            .meta_tree()?
            .get(name.as_bytes())
            .map_err(error("read metadata", None))?
            .map(|value| value.to_vec()))
    }
}
