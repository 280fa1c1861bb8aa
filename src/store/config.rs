//! `store.json`: where a store keeps its objects, when not in its own `objects/` directory.
//!
//! A store without the file keeps objects on the local filesystem, as every store did before
//! the file existed. `wstore init --objects s3://bucket/prefix` writes it.

use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::durable::{write_durably, Publish};
use crate::error::Error;

/// Name of the config file in the store root.
pub const CONFIG_FILE: &str = "store.json";

/// Format version of `store.json`.
const CONFIG_VERSION: u32 = 1;

/// Default read cache size of an S3 store, in MiB (1 GiB).
pub const DEFAULT_CACHE_MB: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub version: u32,
    /// `s3://bucket/prefix` of the objects.
    pub objects: String,
    /// Random id naming this store's reference markers and gc fence in a shared bucket.
    pub store_id: String,
    /// Read cache limit in MiB (2^20 bytes); 0 disables the cache.
    pub cache_mb: u64,
}

impl StoreConfig {
    /// A config for new objects at `objects`, with a fresh random store id.
    pub fn new(objects: &str, cache_mb: u64) -> StoreConfig {
        let id: u64 = rand::thread_rng().gen();
        StoreConfig { version: CONFIG_VERSION, objects: objects.to_string(), store_id: format!("{id:016x}"), cache_mb }
    }

    /// Reads the config of the store at `root`; `None` when it has none.
    pub fn read(root: &Path) -> Result<Option<StoreConfig>, Error> {
        let path = config_path(root);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io("read", &path, error)),
        };
        let invalid = |detail: String| Error::StoreConfig { path: path.clone(), detail };
        let config: StoreConfig = serde_json::from_slice(&text)
            .map_err(|error| invalid(format!("{error}; restore the file from a backup or rewrite it by hand")))?;
        if config.version != CONFIG_VERSION {
            return Err(invalid(format!(
                "version {} is not supported (this wstore reads version {CONFIG_VERSION}); upgrade wstore",
                config.version
            )));
        }
        if config.store_id.is_empty() || !config.store_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid("store_id must be letters and digits".to_string()));
        }
        Ok(Some(config))
    }

    /// Writes the config atomically into the store at `root`.
    pub fn write(&self, root: &Path) -> Result<(), Error> {
        let path = config_path(root);
        let mut text = serde_json::to_vec_pretty(self).map_err(|error| Error::StoreConfig { path: path.clone(), detail: error.to_string() })?;
        text.push(b'\n');
        write_durably(&path, &text, Publish::Replace).map_err(|error| Error::io("write", &path, error))?;
        Ok(())
    }

    /// Read cache limit in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_mb.saturating_mul(1 << 20)
    }
}

pub fn config_path(root: &Path) -> PathBuf {
    root.join(CONFIG_FILE)
}
