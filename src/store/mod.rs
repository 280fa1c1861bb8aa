//! A store on disk: the sled catalog under `catalog/` and object files under `objects/`.

mod checkout;
mod commit;
mod exchange;
mod config;
mod fsck;
mod gc;
mod lossy;
mod received_base;
mod remove;
mod views;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use checkout::{prepare_output, CheckoutOptions, CheckoutReport};
pub use exchange::{Bundle, BundleBase, ImportReport, ObjectEntry, BUNDLE_SCHEMA};
pub use config::{StoreConfig, CONFIG_FILE, DEFAULT_CACHE_MB};
pub use commit::{default_author, BaseReport, CodecChoice, CommitOptions, CommitReport};
pub use fsck::{Finding, FindingKind, FsckOptions, FsckReport};
pub use gc::{GcOptions, GcReport, DEFAULT_GC_GRACE};
pub use remove::BaseRemoval;
pub use lossy::{glob_match, parse_mask_mode, LossyOptions, LossyReport, TensorPolicy, MIN_LOSSY_ELEMENTS};
pub use views::{BaseView, CommitView, Details, FileView, LogEntry, StoreListing, TensorView};

use crate::catalog::{Catalog, CatalogError};
use crate::error::Error;
use crate::id::ObjectId;
use crate::objects::ObjectStore;
use crate::storage::fs::FsStorage;
use crate::storage::s3::{S3Credentials, S3Location, S3Storage};
use crate::storage::Storage;

const CATALOG_DIR: &str = "catalog";
const OBJECTS_DIR: &str = "objects";
/// Read cache of a store whose objects live in S3.
const CACHE_DIR: &str = "cache";

/// Maximum length of a ref or base name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// An open store. sled locks the catalog, so one process at a time holds it.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    catalog: Catalog,
    objects: ObjectStore,
    /// Temp files left by interrupted writes that `open` removed, reported by `fsck`.
    removed_temps: Vec<PathBuf>,
    /// Held shared by writers (`add_base`, `commit`) and exclusively by `gc` and removals, so
    /// threads sharing this `Store` never see gc delete an object that a commit in flight
    /// relies on. Other processes are kept out by the catalog's lock.
    write_lock: RwLock<()>,
}

/// Resolved target of a user-supplied reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Commit(ObjectId),
    Base(ObjectId),
}

impl Store {
    /// Creates a store at `root` (the directory may exist but must not hold a store yet,
    /// unless it is a complete one, which is then just opened).
    pub fn init(root: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(root.join(OBJECTS_DIR)).map_err(|e| Error::io("create", root, e))?;
        // Creating the catalog here is what marks the directory as a store. It stays open:
        // sled's background threads may hold its lock for a moment after a drop, so closing
        // and reopening it here could fail as locked.
        let catalog = Catalog::open(&root.join(CATALOG_DIR))?;
        Self::with_catalog(root, catalog)
    }

    /// Creates a store at `root` whose objects live at `objects` (`s3://bucket/prefix`), with
    /// a read cache of `cache_mb` MiB (0 disables it). The bucket is checked before anything is
    /// written, so bad credentials or a missing bucket leave no store behind. An existing
    /// store is opened if its config names the same objects URL.
    pub fn init_with_objects(root: &Path, objects: &str, cache_mb: u64) -> Result<Store, Error> {
        if let Some(existing) = StoreConfig::read(root)? {
            if existing.objects.trim_end_matches('/') != objects.trim_end_matches('/') {
                return Err(Error::StoreConfig {
                    path: config::config_path(root),
                    detail: format!(
                        "the store already keeps its objects at {}, not {objects}; choose another store directory",
                        existing.objects
                    ),
                });
            }
            return Self::init(root);
        }
        if root.join(CATALOG_DIR).exists() {
            return Err(Error::StoreConfig {
                path: config::config_path(root),
                detail: "the store already keeps its objects on the local filesystem; init an S3 store in a new directory".to_string(),
            });
        }
        let config = StoreConfig::new(objects, cache_mb);
        // Checked without the cache, which would create directories in the store.
        drop(open_s3(root, &config, 0)?);
        std::fs::create_dir_all(root).map_err(|e| Error::io("create", root, e))?;
        config.write(root)?;
        Self::init(root)
    }

    /// Opens the store at `root`; a missing store is an error naming `wstore init`.
    pub fn open(root: &Path) -> Result<Store, Error> {
        if !root.join(OBJECTS_DIR).is_dir() || !root.join(CATALOG_DIR).join("conf").is_file() {
            return Err(Error::StoreMissing { path: root.to_path_buf() });
        }
        // The catalog's lock comes first: with it held no other wstore process writes here,
        // so leftover temp files are from a crash and safe to delete.
        let catalog = Catalog::open(&root.join(CATALOG_DIR))?;
        Self::with_catalog(root, catalog)
    }

    /// Opens the object storage of a store whose catalog this process has opened (and so
    /// locked), removing temp files that interrupted writes left.
    fn with_catalog(root: &Path, catalog: Catalog) -> Result<Store, Error> {
        if let Some(config) = StoreConfig::read(root)? {
            return Ok(Store {
                root: root.to_path_buf(),
                catalog,
                objects: ObjectStore::new(Arc::new(open_s3(root, &config, config.cache_bytes())?)),
                removed_temps: Vec::new(),
                write_lock: RwLock::new(()),
            });
        }
        let storage = FsStorage::open(&root.join(OBJECTS_DIR))?;
        let removed_temps = storage.remove_stale_temps_listed()?;
        if !removed_temps.is_empty() {
            tracing::warn!(removed = removed_temps.len(), store = %root.display(), "removed temp files left by an interrupted write");
        }
        Ok(Store {
            root: root.to_path_buf(),
            catalog,
            objects: ObjectStore::new(Arc::new(storage)),
            removed_temps,
            write_lock: RwLock::new(()),
        })
    }

    /// Opens the catalog at `root` over a given object storage (tests inject faults here).
    pub fn open_with_storage(root: &Path, storage: Arc<dyn Storage>) -> Result<Store, Error> {
        let catalog = Catalog::open(&root.join(CATALOG_DIR))?;
        Ok(Store {
            root: root.to_path_buf(),
            catalog,
            objects: ObjectStore::new(storage),
            removed_temps: Vec::new(),
            write_lock: RwLock::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn objects(&self) -> &ObjectStore {
        &self.objects
    }

    /// Takes the write lock shared, for a writer that adds objects and records.
    pub(crate) fn lock_shared(&self) -> RwLockReadGuard<'_, ()> {
        // The lock guards no data, so a panic in another holder leaves nothing inconsistent.
        self.write_lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the write lock exclusively, for gc and removals.
    pub(crate) fn lock_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.write_lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves a ref, commit id prefix, base name or base id prefix, in that order.
    pub fn resolve(&self, text: &str) -> Result<Target, Error> {
        match self.catalog.resolve_commit(text) {
            Ok(id) => return Ok(Target::Commit(id)),
            Err(CatalogError::NotFound { .. }) => {}
            Err(other) => return Err(other.into()),
        }
        match self.catalog.resolve_base(text) {
            Ok(id) => Ok(Target::Base(id)),
            Err(CatalogError::NotFound { .. }) => Err(CatalogError::NotFound {
                kind: "ref, commit or base",
                text: text.to_string(),
            }
            .into()),
            Err(other) => Err(other.into()),
        }
    }
}

/// Connects to the S3 objects a store's config names, with credentials from the environment
/// and a read cache of `cache_bytes` (0 disables it).
fn open_s3(root: &Path, config: &StoreConfig, cache_bytes: u64) -> Result<S3Storage, Error> {
    let location = S3Location::parse(&config.objects)?;
    let credentials = S3Credentials::from_env()?;
    Ok(S3Storage::open(location, &credentials, &config.store_id, &root.join(CACHE_DIR), cache_bytes)?)
}

/// Checks a ref or base name: it becomes a URL path segment and a file name, so it is kept
/// to letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), Error> {
    let invalid = |reason: &str| Error::InvalidName { kind, name: name.to_string(), reason: reason.to_string() };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(&format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(invalid("may contain only letters, digits, '.', '_' and '-'"));
    }
    if name.contains("..") {
        return Err(invalid("must not contain '..'"));
    }
    if name.len() >= crate::catalog::MIN_ID_PREFIX && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("must not be all hexadecimal digits, which would read as an id prefix"));
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["llama2-7b", "task_a.v2", "7b", "abc", "cafe-2"] {
            assert!(validate_name("ref", good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a/b", "a..b", "a b", "é", &"x".repeat(129), "d98e", "f0c127f3eca4"] {
            assert!(validate_name("ref", bad).is_err(), "{bad}");
        }
    }
}
