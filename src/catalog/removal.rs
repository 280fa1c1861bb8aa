//! Removing refs, commits, base names and bases, and reading every record for `fsck`.
//!
//! Removal never touches objects: `gc` deletes the objects no remaining record reaches.

use sled::Transactional;

use super::{from_json, id_from_ivec, unwrap_tx, Catalog, CatalogError, Result};
use crate::catalog::{BaseRecord, CommitRecord};
use crate::id::ObjectId;

/// Catalog entries to delete together, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    /// Base records to delete.
    pub bases: Vec<ObjectId>,
    pub base_names: Vec<String>,
    /// Commit records to delete, each with the base it was made against (the key of its
    /// `commits_by_base` entry).
    pub commits: Vec<(ObjectId, ObjectId)>,
    pub refs: Vec<String>,
}

impl Removal {
    pub fn is_empty(&self) -> bool {
        self.bases.is_empty() && self.base_names.is_empty() && self.commits.is_empty() && self.refs.is_empty()
    }
}

/// A record read by `Catalog::scan_bases` or `Catalog::scan_commits`: its key, and the record
/// or why it could not be read.
pub type ScannedRecord<T> = (Vec<u8>, Result<T>);

impl Catalog {
    /// Deletes everything `removal` names in one transaction, then flushes. Entries that are
    /// already gone are skipped, so a repeated removal succeeds.
    pub fn remove(&self, removal: &Removal) -> Result<()> {
        let trees = (&self.bases, &self.base_names, &self.commits, &self.refs, &self.commits_by_base);
        let result = trees.transaction(|(bases, names, commits, refs, index)| {
            for id in &removal.bases {
                bases.remove(id.as_bytes().as_slice())?;
            }
            for name in &removal.base_names {
                names.remove(name.as_bytes())?;
            }
            for (commit, base) in &removal.commits {
                commits.remove(commit.as_bytes().as_slice())?;
                let mut index_key = base.as_bytes().to_vec();
                index_key.extend_from_slice(commit.as_bytes());
                index.remove(index_key)?;
            }
            for name in &removal.refs {
                refs.remove(name.as_bytes())?;
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<CatalogError>>(())
        });
        unwrap_tx(result)?;
        self.flush()
    }

    /// Lists every base name with the base id it points at, sorted by name.
    pub fn list_base_names(&self) -> Result<Vec<(String, ObjectId)>> {
        let mut out = Vec::new();
        for item in self.base_names.iter() {
            let (name, id) = item?;
            out.push((String::from_utf8_lossy(&name).into_owned(), id_from_ivec("base name", &id)?));
        }
        Ok(out)
    }

    /// Reads every base record on its own, so one corrupt record does not hide the others.
    pub fn scan_bases(&self) -> Result<Vec<ScannedRecord<BaseRecord>>> {
        scan(&self.bases, "base")
    }

    /// Reads every commit record on its own, so one corrupt record does not hide the others.
    pub fn scan_commits(&self) -> Result<Vec<ScannedRecord<CommitRecord>>> {
        scan(&self.commits, "commit")
    }
}

fn scan<T: serde::de::DeserializeOwned>(tree: &sled::Tree, what: &str) -> Result<Vec<ScannedRecord<T>>> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (key, bytes) = item?;
        let label = match id_from_ivec(what, &key) {
            Ok(id) => format!("{what} {}", id.short()),
            Err(_) => format!("{what} with a {}-byte key", key.len()),
        };
        out.push((key.to_vec(), from_json(&label, &bytes)));
    }
    Ok(out)
}
