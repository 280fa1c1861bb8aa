//! The catalog: bases, commits, refs and the schema version, in an embedded sled database.
//! Blobs never go in here; records name objects by id.

mod migrations;
pub mod records;
mod removal;

use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use thiserror::Error;

pub use migrations::{apply_migrations, LATEST_SCHEMA};
pub use records::*;
pub use removal::{Removal, ScannedRecord};

use crate::id::ObjectId;

/// Shortest id prefix accepted in place of a full id, so short words are not taken for ids.
pub const MIN_ID_PREFIX: usize = 4;

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("{path}: the catalog is locked by another wstore process; wait for it to finish, then retry")]
    Locked { path: PathBuf },
    #[error("{path}: failed to open the catalog: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("catalog schema version {found} is newer than this wstore supports ({supported}); upgrade wstore")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("catalog record {what} is corrupt: {detail}; restore the store's catalog directory from a backup")]
    Corrupt { what: String, detail: String },
    #[error("{kind} {text:?} not found; run `wstore ls` to see what is stored")]
    NotFound { kind: &'static str, text: String },
    #[error("{kind} id prefix {text:?} is ambiguous: it matches {candidates}; give more digits")]
    Ambiguous { kind: &'static str, text: String, candidates: String },
    #[error("ref {name:?} already names commit {existing}; pass --parent {name} to commit on top of it, or choose another --name")]
    RefExists { name: String, existing: String },
    #[error("catalog write failed: {0}")]
    Sled(#[from] sled::Error),
}

type Result<T> = std::result::Result<T, CatalogError>;

/// An open catalog. sled allows one process at a time, so the daemon owns it while it runs.
pub struct Catalog {
    db: sled::Db,
    meta: sled::Tree,
    bases: sled::Tree,
    base_names: sled::Tree,
    commits: sled::Tree,
    refs: sled::Tree,
    commits_by_base: sled::Tree,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own plain records cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_vec(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| CatalogError::Corrupt { what: what.to_string(), detail: e.to_string() })
}

fn id_from_ivec(what: &str, bytes: &[u8]) -> Result<ObjectId> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| CatalogError::Corrupt { what: what.to_string(), detail: format!("id of {} bytes", bytes.len()) })?;
    Ok(ObjectId::from_bytes(array))
}

fn abort(error: CatalogError) -> ConflictableTransactionError<CatalogError> {
    ConflictableTransactionError::Abort(error)
}

fn unwrap_tx<T>(result: std::result::Result<T, TransactionError<CatalogError>>) -> Result<T> {
    match result {
        Ok(value) => Ok(value),
        Err(TransactionError::Abort(error)) => Err(error),
        Err(TransactionError::Storage(error)) => Err(CatalogError::Sled(error)),
    }
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new().path(path).open().map_err(|source| match &source {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("lock") =>
            {
                CatalogError::Locked { path: path.to_path_buf() }
            }
            sled::Error::Corruption { .. } => CatalogError::Corrupt {
                what: path.display().to_string(),
                detail: source.to_string(),
            },
            _ => CatalogError::Open { path: path.to_path_buf(), source },
        })?;
        apply_migrations(&db)?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Self> {
        Ok(Catalog {
            meta: db.open_tree("meta")?,
            bases: db.open_tree("bases")?,
            base_names: db.open_tree("base_names")?,
            commits: db.open_tree("commits")?,
            refs: db.open_tree("refs")?,
            commits_by_base: db.open_tree("commits_by_base")?,
            db,
        })
    }

    pub fn schema_version(&self) -> Result<u32> {
        migrations::read_version(&self.meta)
    }

    /// Waits until every write so far is on disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    // ---- bases

    /// Records a base (if new) and points `name` at it, in one transaction, then flushes.
    pub fn put_base(&self, record: &BaseRecord, name: &str) -> Result<()> {
        let key = record.id.as_bytes().to_vec();
        let value = to_json(record);
        let result = (&self.bases, &self.base_names).transaction(|(bases, names)| {
            if bases.get(&key)?.is_none() {
                bases.insert(key.as_slice(), value.as_slice())?;
            }
            names.insert(name.as_bytes(), key.as_slice())?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.flush()
    }

    pub fn get_base(&self, id: &ObjectId) -> Result<Option<BaseRecord>> {
        match self.bases.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(from_json(&format!("base {}", id.short()), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Lists all bases, each with the names that point at it, sorted by time added.
    pub fn list_bases(&self) -> Result<Vec<(BaseRecord, Vec<String>)>> {
        let mut names_by_id: std::collections::HashMap<ObjectId, Vec<String>> = Default::default();
        for item in self.base_names.iter() {
            let (name, id) = item?;
            let id = id_from_ivec("base name", &id)?;
            names_by_id.entry(id).or_default().push(String::from_utf8_lossy(&name).into_owned());
        }
        let mut out = Vec::new();
        for item in self.bases.iter() {
            let (_, bytes) = item?;
            let record: BaseRecord = from_json("base", &bytes)?;
            let names = names_by_id.remove(&record.id).unwrap_or_default();
            out.push((record, names));
        }
        out.sort_by_key(|(record, _)| (record.added_at, record.id));
        Ok(out)
    }

    /// Returns the base a name points at, if it is a base name.
    pub fn base_by_name(&self, name: &str) -> Result<Option<ObjectId>> {
        match self.base_names.get(name.as_bytes())? {
            Some(id) => Ok(Some(id_from_ivec("base name", &id)?)),
            None => Ok(None),
        }
    }

    /// Resolves a base name, or else a unique prefix of a base id.
    pub fn resolve_base(&self, text: &str) -> Result<ObjectId> {
        if let Some(id) = self.base_names.get(text.as_bytes())? {
            return id_from_ivec("base name", &id);
        }
        resolve_prefix(&self.bases, "base", text)
    }

    // ---- commits

    /// Computes a commit's id from its content: BLAKE3 of the JSON record with a zero id.
    pub fn seal_commit(record: &mut CommitRecord) {
        record.id = ObjectId::from_bytes([0; 32]);
        record.id = ObjectId::of(&to_json(record));
    }

    /// Records a commit and, if given, points `ref_name` at it, in one transaction, then
    /// flushes. `expected_ref` is the commit the ref must name now (None: must not exist),
    /// so two writers moving one ref cannot lose each other's commit.
    pub fn put_commit(
        &self,
        record: &CommitRecord,
        ref_name: Option<&str>,
        expected_ref: Option<ObjectId>,
    ) -> Result<()> {
        let key = record.id.as_bytes().to_vec();
        let value = to_json(record);
        let mut index_key = record.base.as_bytes().to_vec();
        index_key.extend_from_slice(record.id.as_bytes());
        let result = (&self.commits, &self.refs, &self.commits_by_base).transaction(|(commits, refs, index)| {
            if let Some(name) = ref_name {
                let current = refs.get(name.as_bytes())?;
                let current = match current {
                    Some(bytes) => Some(id_from_ivec("ref", &bytes).map_err(abort)?),
                    None => None,
                };
                if current != expected_ref {
                    let existing = current.map(|id| id.short()).unwrap_or_else(|| "nothing".into());
                    return Err(abort(CatalogError::RefExists { name: name.to_string(), existing }));
                }
                refs.insert(name.as_bytes(), key.as_slice())?;
            }
            commits.insert(key.as_slice(), value.as_slice())?;
            index.insert(index_key.as_slice(), &[] as &[u8])?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.flush()
    }

    pub fn get_commit(&self, id: &ObjectId) -> Result<Option<CommitRecord>> {
        match self.commits.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(from_json(&format!("commit {}", id.short()), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Lists every commit, oldest first.
    pub fn list_commits(&self) -> Result<Vec<CommitRecord>> {
        let mut out = Vec::new();
        for item in self.commits.iter() {
            let (_, bytes) = item?;
            out.push(from_json::<CommitRecord>("commit", &bytes)?);
        }
        out.sort_by_key(|c| (c.time, c.id));
        Ok(out)
    }

    /// Ids of the commits made against `base`, from the index added in schema 2.
    pub fn commits_of_base(&self, base: &ObjectId) -> Result<Vec<ObjectId>> {
        let mut out = Vec::new();
        for item in self.commits_by_base.scan_prefix(base.as_bytes()) {
            let (key, _) = item?;
            out.push(id_from_ivec("commit index", &key[32..])?);
        }
        Ok(out)
    }

    // ---- refs

    pub fn get_ref(&self, name: &str) -> Result<Option<ObjectId>> {
        match self.refs.get(name.as_bytes())? {
            Some(bytes) => Ok(Some(id_from_ivec("ref", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Lists all refs, sorted by name.
    pub fn list_refs(&self) -> Result<Vec<(String, ObjectId)>> {
        let mut out = Vec::new();
        for item in self.refs.iter() {
            let (name, id) = item?;
            out.push((String::from_utf8_lossy(&name).into_owned(), id_from_ivec("ref", &id)?));
        }
        Ok(out)
    }

    /// Resolves a ref name, or else a unique prefix of a commit id.
    pub fn resolve_commit(&self, text: &str) -> Result<ObjectId> {
        if let Some(id) = self.get_ref(text)? {
            return Ok(id);
        }
        resolve_prefix(&self.commits, "ref or commit", text)
    }
}

/// Finds the one key of `tree` whose hex starts with `text`.
fn resolve_prefix(tree: &sled::Tree, kind: &'static str, text: &str) -> Result<ObjectId> {
    let not_found = || CatalogError::NotFound { kind, text: text.to_string() };
    let lower = text.to_ascii_lowercase();
    if lower.len() < MIN_ID_PREFIX || lower.len() > 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    // Keys are raw digests, so scan from the first byte the prefix fixes.
    let whole_bytes = lower.len() / 2;
    let mut key_prefix = Vec::with_capacity(whole_bytes);
    for i in 0..whole_bytes {
        let byte = u8::from_str_radix(&lower[2 * i..2 * i + 2], 16).map_err(|_| not_found())?;
        key_prefix.push(byte);
    }
    let mut matches = Vec::new();
    for item in tree.scan_prefix(&key_prefix) {
        let (key, _) = item?;
        let id = id_from_ivec(kind, &key)?;
        if id.to_hex().starts_with(&lower) {
            matches.push(id);
            if matches.len() > 5 {
                break;
            }
        }
    }
    match matches.len() {
        0 => Err(not_found()),
        1 => Ok(matches[0]),
        _ => Err(CatalogError::Ambiguous {
            kind,
            text: text.to_string(),
            candidates: matches.iter().map(|id| id.short()).collect::<Vec<_>>().join(", "),
        }),
    }
}
