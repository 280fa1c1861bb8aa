//! Read-only views of the catalog for `ls`, `log` and `show`, serialisable as JSON.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Store, Target};
use crate::catalog::{BaseRecord, CodecInfo, CommitRecord, PrefixMap, Snapshot};
use crate::error::Error;
use crate::id::ObjectId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseView {
    pub id: ObjectId,
    pub names: Vec<String>,
    pub added_at: u64,
    pub tensors: usize,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    /// original / stored.
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitView {
    pub id: ObjectId,
    pub refs: Vec<String>,
    pub base: ObjectId,
    pub base_names: Vec<String>,
    pub parent: Option<ObjectId>,
    pub message: String,
    pub author: String,
    pub time: u64,
    pub codec: CodecInfo,
    pub lossy: bool,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreListing {
    pub bases: Vec<BaseView>,
    pub commits: Vec<CommitView>,
}

/// One step of a lineage: a commit, or the base the chain ends at.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEntry {
    Commit(CommitView),
    Base(BaseView),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorView {
    pub file: String,
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub storage: String,
    pub base_tensor: Option<String>,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    pub hash: ObjectId,
    /// Bits, sparsity, rescale and error of a lossy tensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec_stats: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Details {
    Commit { commit: CommitView, name_map: Option<PrefixMap>, files: Vec<FileView>, tensors: Vec<TensorView> },
    Base { base: BaseView, files: Vec<FileView>, tensors: Vec<TensorView> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileView {
    pub path: String,
    pub kind: String,
    pub bytes: u64,
    pub hash: ObjectId,
}

fn ratio(original: u64, stored: u64) -> f64 {
    if stored == 0 {
        0.0
    } else {
        original as f64 / stored as f64
    }
}

impl Store {
    fn base_names(&self) -> Result<HashMap<ObjectId, Vec<String>>, Error> {
        Ok(self.catalog.list_bases()?.into_iter().map(|(r, names)| (r.id, names)).collect())
    }

    fn refs_by_commit(&self) -> Result<HashMap<ObjectId, Vec<String>>, Error> {
        let mut out: HashMap<ObjectId, Vec<String>> = HashMap::new();
        for (name, id) in self.catalog.list_refs()? {
            out.entry(id).or_default().push(name);
        }
        Ok(out)
    }

    fn base_view(record: &BaseRecord, names: Vec<String>) -> BaseView {
        BaseView {
            id: record.id,
            names,
            added_at: record.added_at,
            tensors: record.snapshot.tensors().count(),
            original_bytes: record.original_bytes,
            stored_bytes: record.stored_bytes,
            ratio: ratio(record.original_bytes, record.stored_bytes),
        }
    }

    fn commit_view(
        record: &CommitRecord,
        refs: &HashMap<ObjectId, Vec<String>>,
        base_names: &HashMap<ObjectId, Vec<String>>,
    ) -> CommitView {
        CommitView {
            id: record.id,
            refs: refs.get(&record.id).cloned().unwrap_or_default(),
            base: record.base,
            base_names: base_names.get(&record.base).cloned().unwrap_or_default(),
            parent: record.parent,
            message: record.message.clone(),
            author: record.author.clone(),
            time: record.time,
            codec: record.codec.clone(),
            lossy: record.is_lossy(),
            original_bytes: record.original_bytes,
            stored_bytes: record.stored_bytes,
            ratio: ratio(record.original_bytes, record.stored_bytes),
        }
    }

    /// Lists every base and commit, for `ls`.
    pub fn list(&self) -> Result<StoreListing, Error> {
        let refs = self.refs_by_commit()?;
        let base_names = self.base_names()?;
        let bases = self
            .catalog
            .list_bases()?
            .into_iter()
            .map(|(record, names)| Self::base_view(&record, names))
            .collect();
        let commits = self
            .catalog
            .list_commits()?
            .iter()
            .map(|c| Self::commit_view(c, &refs, &base_names))
            .collect();
        Ok(StoreListing { bases, commits })
    }

    /// Returns the lineage of a commit: itself, its parents, then the base of the last one.
    pub fn log(&self, text: &str) -> Result<Vec<LogEntry>, Error> {
        let refs = self.refs_by_commit()?;
        let base_names = self.base_names()?;
        let mut entries = Vec::new();
        let mut next = match self.resolve(text)? {
            Target::Commit(id) => Some(id),
            Target::Base(id) => {
                let record = self.snapshot_base(&id)?;
                return Ok(vec![LogEntry::Base(Self::base_view(&record, base_names.get(&id).cloned().unwrap_or_default()))]);
            }
        };
        let mut last_base = None;
        // A parent chain is acyclic (ids are hashes over parents), but a damaged catalog
        // could loop, so stop after as many steps as there are commits.
        let mut budget = self.catalog.list_commits()?.len() + 1;
        while let (Some(id), true) = (next, budget > 0) {
            budget -= 1;
            let Some(record) = self.catalog.get_commit(&id)? else {
                break;
            };
            entries.push(LogEntry::Commit(Self::commit_view(&record, &refs, &base_names)));
            last_base = Some(record.base);
            next = record.parent;
        }
        if let Some(base) = last_base {
            let record = self.snapshot_base(&base)?;
            entries.push(LogEntry::Base(Self::base_view(&record, base_names.get(&base).cloned().unwrap_or_default())));
        }
        Ok(entries)
    }

    fn snapshot_base(&self, id: &ObjectId) -> Result<BaseRecord, Error> {
        Ok(self
            .catalog
            .get_base(id)?
            .ok_or_else(|| crate::catalog::CatalogError::NotFound { kind: "base", text: id.to_hex() })?)
    }

    /// Everything about one commit or base, tensor by tensor, for `show`.
    pub fn show(&self, text: &str) -> Result<Details, Error> {
        let refs = self.refs_by_commit()?;
        let base_names = self.base_names()?;
        match self.resolve(text)? {
            Target::Commit(id) => {
                let record = self
                    .catalog
                    .get_commit(&id)?
                    .ok_or_else(|| crate::catalog::CatalogError::NotFound { kind: "commit", text: text.to_string() })?;
                Ok(Details::Commit {
                    commit: Self::commit_view(&record, &refs, &base_names),
                    name_map: record.name_map.clone(),
                    files: file_views(&record.snapshot),
                    tensors: tensor_views(&record.snapshot),
                })
            }
            Target::Base(id) => {
                let record = self.snapshot_base(&id)?;
                Ok(Details::Base {
                    base: Self::base_view(&record, base_names.get(&id).cloned().unwrap_or_default()),
                    files: file_views(&record.snapshot),
                    tensors: tensor_views(&record.snapshot),
                })
            }
        }
    }
}

fn file_views(snapshot: &Snapshot) -> Vec<FileView> {
    snapshot
        .files
        .iter()
        .map(|f| FileView {
            path: f.path().to_string(),
            kind: match f {
                crate::catalog::FileEntry::Plain(_) => "plain".to_string(),
                crate::catalog::FileEntry::Safetensors(_) => "safetensors".to_string(),
            },
            bytes: f.bytes(),
            hash: f.file_hash(),
        })
        .collect()
}

fn tensor_views(snapshot: &Snapshot) -> Vec<TensorView> {
    let mut out = Vec::new();
    for file in &snapshot.files {
        if let crate::catalog::FileEntry::Safetensors(st) = file {
            for t in &st.tensors {
                use crate::catalog::TensorStorage::*;
                let base_tensor = match &t.storage {
                    Whole { .. } => None,
                    SameAsBase { base_name, .. } | LosslessDelta { base_name, .. } | UltraDelta { base_name, .. } => {
                        Some(base_name.clone())
                    }
                };
                out.push(TensorView {
                    file: st.path.clone(),
                    name: t.name.clone(),
                    dtype: t.dtype.clone(),
                    shape: t.shape.clone(),
                    storage: t.storage.kind_name().to_string(),
                    base_tensor,
                    original_bytes: t.len,
                    stored_bytes: t.stored_bytes,
                    hash: t.hash,
                    codec_stats: t.codec_stats.clone(),
                });
            }
        }
    }
    out
}
