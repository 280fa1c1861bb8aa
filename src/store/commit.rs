//! The write path: registering bases and committing fine-tunes.
//!
//! Order of writes, so a crash never leaves a record naming a missing object:
//! 1. open and validate every input file (nothing is written before this succeeds);
//! 2. write every object (tensors, deltas, headers, plain files) durably;
//! 3. write the catalog record and ref in one sled transaction and flush it.
//!
//! A crash between 2 and 3 leaves only unreferenced objects, which gc removes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{now_secs, validate_name, Store, Target};
use crate::align::detect_prefix_map;
use crate::catalog::{
    BaseRecord, Catalog, CodecInfo, CommitRecord, FileEntry, PlainFile, PrefixMap, SafetensorsFile, Snapshot,
    TensorEntry, TensorStorage,
};
use crate::checkpoint::{Checkpoint, InputFile};
use crate::codec::lossless;
use crate::error::Error;
use crate::format::object::ObjectKind;
use crate::format::safetensors::TensorInfo;
use crate::id::ObjectId;
use crate::progress::Progress;
use super::lossy::{LossyOptions, LossyReport, LossyTensor};

/// Options of `commit` besides the input path.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Base name or id prefix.
    pub base: String,
    /// Ref to create or advance.
    pub name: Option<String>,
    pub message: String,
    /// Parent ref or commit; defaults to the commit `name` points at, if any.
    pub parent: Option<String>,
    /// Defaults to $WSTORE_AUTHOR, then $USER.
    pub author: Option<String>,
    /// `FINETUNE=BASE` prefix rewrite; overrides detection.
    pub map_prefix: Option<String>,
    /// Skip prefix detection (names must match as they are).
    pub no_align: bool,
    pub codec: CodecChoice,
}

/// Codec for changed tensors.
#[derive(Debug, Clone, Default)]
pub enum CodecChoice {
    /// Exact bit-pattern deltas: a checkout is byte-identical to the input.
    #[default]
    Lossless,
    /// UltraDelta for the tensors its policy selects, exact deltas for the rest.
    UltraDelta(LossyOptions),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseReport {
    pub id: ObjectId,
    pub name: String,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    /// Bytes written by this call (0 when the same weights were already stored).
    pub new_bytes: u64,
    pub already_present: bool,
    pub tensors: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitReport {
    pub commit: ObjectId,
    pub ref_name: Option<String>,
    pub base: ObjectId,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    pub new_bytes: u64,
    pub name_map: Option<PrefixMap>,
    /// Number of tensors by storage kind.
    pub tensors_by_kind: std::collections::BTreeMap<String, usize>,
    /// Report of the lossy codec, for UltraDelta commits.
    pub lossy: Option<LossyReport>,
}

/// Outcome of storing one tensor: its storage, on-disk bytes, the BLAKE3 a checkout must
/// reproduce, and codec statistics for lossy tensors.
pub(crate) struct StoredTensor {
    storage: TensorStorage,
    stored_bytes: u64,
    hash: ObjectId,
    codec_stats: Option<serde_json::Value>,
}

/// Counts bytes of objects this call created.
#[derive(Default)]
struct WriteTally {
    new_bytes: AtomicU64,
    created: AtomicUsize,
}

impl WriteTally {
    fn record(&self, stored: &crate::objects::Stored) {
        if stored.created {
            self.new_bytes.fetch_add(stored.stored_bytes, Ordering::Relaxed);
            self.created.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Store {
    /// Registers the checkpoint at `path` as a base named `name`. The same weights added
    /// again, under any name, store no new bytes.
    pub fn add_base(&self, name: &str, path: &Path, progress: &dyn Progress) -> Result<BaseReport, Error> {
        validate_name("base", name)?;
        let _writing = self.lock_shared();
        if self.catalog.get_ref(name)?.is_some() {
            return Err(Error::NameTaken { name: name.to_string(), taken_by: "a ref" });
        }
        let checkpoint = Checkpoint::open(path)?;
        let id = checkpoint.content_id();
        if let Some(existing) = self.catalog.base_by_name(name)? {
            if existing != id {
                return Err(Error::NameTaken { name: name.to_string(), taken_by: "another base" });
            }
        }

        if let Some(existing) = self.catalog.get_base(&id)? {
            self.catalog.put_base(&existing, name)?;
            tracing::debug!(base = %id, name, "base already stored; added a name only");
            return Ok(BaseReport {
                id,
                name: name.to_string(),
                original_bytes: existing.original_bytes,
                stored_bytes: existing.stored_bytes,
                new_bytes: 0,
                already_present: true,
                tensors: existing.snapshot.tensors().count(),
            });
        }

        let tally = WriteTally::default();
        progress.start("adding base", checkpoint.total_bytes());
        let snapshot = self.store_snapshot(&checkpoint, &tally, progress, |_info, bytes, hash| {
            let stored = self.objects.put_with_id(hash, ObjectKind::Raw, bytes)?;
            tally.record(&stored);
            Ok(StoredTensor {
                storage: TensorStorage::Whole { object: hash },
                stored_bytes: stored.stored_bytes,
                hash,
                codec_stats: None,
            })
        })?;
        progress.finish();
        checkpoint.verify_unchanged()?;

        let stored_bytes = self.distinct_stored_bytes(&snapshot, &HashSet::new())?;
        let record = BaseRecord {
            id,
            added_at: now_secs(),
            original_bytes: checkpoint.total_bytes(),
            stored_bytes,
            snapshot,
        };
        self.catalog.put_base(&record, name)?;
        tracing::info!(base = %id, name, new_bytes = tally.new_bytes.load(Ordering::Relaxed), "base added");
        Ok(BaseReport {
            id,
            name: name.to_string(),
            original_bytes: record.original_bytes,
            stored_bytes,
            new_bytes: tally.new_bytes.load(Ordering::Relaxed),
            already_present: false,
            tensors: record.snapshot.tensors().count(),
        })
    }

    /// Commits the fine-tune at `path` against a base, storing each tensor as a reference
    /// to the base, a lossless delta against it, or whole.
    pub fn commit(&self, path: &Path, options: &CommitOptions, progress: &dyn Progress) -> Result<CommitReport, Error> {
        let _writing = self.lock_shared();
        if let Some(name) = &options.name {
            validate_name("ref", name)?;
            if self.catalog.base_by_name(name)?.is_some() {
                return Err(Error::NameTaken { name: name.clone(), taken_by: "a base" });
            }
        }
        let base_id = match self.catalog.resolve_base(&options.base) {
            Err(crate::catalog::CatalogError::NotFound { .. }) if self.catalog.resolve_commit(&options.base).is_ok() => {
                return Err(Error::InvalidArgument {
                    what: format!("--base {}", options.base),
                    detail: "names a commit, not a base; give the base it was committed against, or register the checkpoint with `wstore base add`".into(),
                });
            }
            other => other?,
        };
        let base = self
            .catalog
            .get_base(&base_id)?
            .ok_or_else(|| crate::catalog::CatalogError::NotFound { kind: "base", text: options.base.clone() })?;
        let (parent, expected_ref) = self.resolve_parent(options)?;
        // Lineage stays on one base: `log` walks parents down to a single base, and removing a
        // base removes the commits descended from it.
        if let Some(parent_id) = parent {
            if let Some(parent_record) = self.catalog.get_commit(&parent_id)? {
                if parent_record.base != base_id {
                    return Err(Error::InvalidArgument {
                        what: format!("parent {}", parent_id.short()),
                        detail: format!(
                            "was committed on base {}, not on {}; commit under another --name, or give --parent of a commit on {}",
                            parent_record.base.short(),
                            options.base,
                            options.base
                        ),
                    });
                }
            }
        }
        let checkpoint = Checkpoint::open(path)?;

        // Base tensors by name, across all of the base's files.
        let base_tensors: HashMap<&str, &TensorEntry> =
            base.snapshot.tensors().map(|t| (t.name.as_str(), t)).collect();
        let name_map = choose_name_map(&checkpoint, &base_tensors, options)?;
        let lookup = |name: &str| -> Option<&TensorEntry> {
            let mapped = name_map.as_ref().and_then(|m| m.base_name(name));
            mapped
                .as_deref()
                .and_then(|n| base_tensors.get(n))
                .or_else(|| base_tensors.get(name))
                .copied()
        };
        let shared = checkpoint
            .files
            .iter()
            .filter_map(|f| f.header.as_ref())
            .flat_map(|h| h.tensors.iter())
            .filter(|t| lookup(&t.name).is_some())
            .count();
        if shared == 0 {
            return Err(Error::NoSharedTensors { path: path.to_path_buf(), base: options.base.clone() });
        }

        let matching_base = |info: &TensorInfo| {
            lookup(&info.name).filter(|b| b.dtype == info.dtype.as_str() && b.shape == info.shape)
        };

        // Lossy tensors are encoded first: explicit settings allocate sparsity across all of them.
        let (lossy, lossy_report) = match &options.codec {
            CodecChoice::Lossless => (HashMap::new(), None),
            CodecChoice::UltraDelta(lossy_options) => {
                let family = self.family_trace_norms(&base_id)?;
                let (lossy, report) = self.encode_lossy(&checkpoint, &matching_base, lossy_options, &family)?;
                if let Some(report) = &report {
                    if report.mode == "explicit" && !report.over_budget.is_empty() && !lossy_options.accept_error {
                        return Err(Error::OverBudget {
                            max_error: report.max_error,
                            worst: report
                                .over_budget
                                .iter()
                                .take(5)
                                .map(|(name, error)| format!("{name} ({error:.2e})"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            count: report.over_budget.len(),
                        });
                    }
                }
                (lossy, report)
            }
        };

        let tally = WriteTally::default();
        progress.start("committing", checkpoint.total_bytes());
        let mut snapshot = self.store_snapshot(&checkpoint, &tally, progress, |info, bytes, hash| {
            let base_entry = matching_base(info);
            match (lossy.get(&info.name), base_entry) {
                (Some(encoded), Some(base_entry)) => self.store_lossy_tensor(encoded, base_entry, &tally),
                _ => self.store_finetune_tensor(info, bytes, hash, base_entry, &tally),
            }
        })?;
        progress.finish();
        checkpoint.verify_unchanged()?;
        if !lossy.is_empty() {
            self.record_rebuilt_file_hashes(&mut snapshot)?;
        }

        let base_objects: HashSet<ObjectId> = snapshot_objects(&base.snapshot);
        let stored_bytes = self.distinct_stored_bytes(&snapshot, &base_objects)?;
        let mut record = CommitRecord {
            id: ObjectId::from_bytes([0; 32]),
            base: base_id,
            parent,
            message: options.message.clone(),
            author: author(options),
            time: now_secs(),
            codec: codec_info(&options.codec, lossy_report.as_ref(), !lossy.is_empty()),
            source_id: checkpoint.content_id(),
            name_map: name_map.clone(),
            original_bytes: checkpoint.total_bytes(),
            stored_bytes,
            snapshot,
        };
        Catalog::seal_commit(&mut record);
        self.catalog.put_commit(&record, options.name.as_deref(), expected_ref)?;
        tracing::info!(commit = %record.id, base = %base_id, new_bytes = tally.new_bytes.load(Ordering::Relaxed), "commit stored");

        let mut tensors_by_kind = std::collections::BTreeMap::new();
        for tensor in record.snapshot.tensors() {
            *tensors_by_kind.entry(tensor.storage.kind_name().to_string()).or_insert(0) += 1;
        }
        Ok(CommitReport {
            commit: record.id,
            ref_name: options.name.clone(),
            base: base_id,
            original_bytes: record.original_bytes,
            stored_bytes,
            new_bytes: tally.new_bytes.load(Ordering::Relaxed),
            name_map,
            tensors_by_kind,
            lossy: lossy_report,
        })
    }

    /// Trace norms recorded by earlier UltraDelta commits (explicit settings) on `base`.
    fn family_trace_norms(&self, base: &ObjectId) -> Result<Vec<f64>, Error> {
        let mut norms = Vec::new();
        for id in self.catalog.commits_of_base(base)? {
            if let Some(commit) = self.catalog.get_commit(&id)? {
                if let Some(norm) = commit.codec.params.pointer("/report/trace_norm").and_then(|v| v.as_f64()) {
                    norms.push(norm);
                }
            }
        }
        Ok(norms)
    }

    fn store_lossy_tensor(
        &self,
        encoded: &LossyTensor,
        base_entry: &TensorEntry,
        tally: &WriteTally,
    ) -> Result<StoredTensor, Error> {
        let stored = self.objects.put(ObjectKind::UltraDelta, &encoded.payload)?;
        tally.record(&stored);
        Ok(StoredTensor {
            storage: TensorStorage::UltraDelta {
                base_name: base_entry.name.clone(),
                base_object: base_entry.hash,
                object: stored.id,
            },
            stored_bytes: stored.stored_bytes,
            hash: encoded.rebuilt_hash,
            codec_stats: serde_json::to_value(&encoded.stats).ok(),
        })
    }

    /// The parent commit, and the commit the ref must still name when we write.
    fn resolve_parent(&self, options: &CommitOptions) -> Result<(Option<ObjectId>, Option<ObjectId>), Error> {
        let current = match &options.name {
            Some(name) => self.catalog.get_ref(name)?,
            None => None,
        };
        let parent = match &options.parent {
            Some(text) => match self.resolve(text)? {
                Target::Commit(id) => Some(id),
                Target::Base(_) => {
                    return Err(Error::InvalidArgument {
                        what: format!("--parent {text}"),
                        detail: "names a base, not a commit; the base is given with --base".into(),
                    })
                }
            },
            None => current,
        };
        if let (Some(name), Some(current)) = (&options.name, current) {
            if parent != Some(current) {
                return Err(crate::catalog::CatalogError::RefExists { name: name.clone(), existing: current.short() }.into());
            }
        }
        Ok((parent, current))
    }

    /// Writes every file of `checkpoint` as objects; `store_tensor` decides how each tensor
    /// is kept and returns its storage and on-disk size.
    fn store_snapshot<F>(
        &self,
        checkpoint: &Checkpoint,
        tally: &WriteTally,
        progress: &dyn Progress,
        store_tensor: F,
    ) -> Result<Snapshot, Error>
    where
        F: Fn(&TensorInfo, &[u8], ObjectId) -> Result<StoredTensor, Error> + Sync,
    {
        let mut files = Vec::with_capacity(checkpoint.files.len());
        for file in &checkpoint.files {
            let entry = match &file.header {
                None => {
                    let stored = self.objects.put_with_id(file.hash, ObjectKind::Raw, file.data.bytes())?;
                    file.data.release(0, file.data.bytes().len());
                    tally.record(&stored);
                    progress.advance(file.data.bytes().len() as u64);
                    FileEntry::Plain(PlainFile { path: file.rel_path.clone(), object: file.hash, bytes: file.data.bytes().len() as u64 })
                }
                Some(_) => FileEntry::Safetensors(self.store_safetensors(file, tally, progress, &store_tensor)?),
            };
            files.push(entry);
        }
        Ok(Snapshot { layout: checkpoint.layout.clone(), files })
    }

    fn store_safetensors<F>(
        &self,
        file: &InputFile,
        tally: &WriteTally,
        progress: &dyn Progress,
        store_tensor: &F,
    ) -> Result<SafetensorsFile, Error>
    where
        F: Fn(&TensorInfo, &[u8], ObjectId) -> Result<StoredTensor, Error> + Sync,
    {
        let bytes = file.data.bytes();
        let header = file.header.as_ref().ok_or_else(|| Error::InvalidArgument {
            what: file.rel_path.clone(),
            detail: "not parsed as safetensors".into(),
        })?;
        let data_start = header.data_start() as usize;
        let header_stored = self.objects.put(ObjectKind::Raw, &bytes[..data_start])?;
        tally.record(&header_stored);

        // Parallel across tensors; rayon bounds the tensors in flight by its thread count.
        let tensors = header
            .by_offset()
            .into_par_iter()
            .map(|info| {
                let start = data_start + info.start as usize;
                let tensor_bytes = &bytes[start..data_start + info.end as usize];
                let hash = ObjectId::of_large(tensor_bytes);
                let stored = store_tensor(info, tensor_bytes, hash)?;
                file.data.release(start, tensor_bytes.len());
                progress.advance(tensor_bytes.len() as u64);
                tracing::trace!(tensor = %info.name, kind = stored.storage.kind_name(), stored.stored_bytes, "tensor stored");
                Ok(TensorEntry {
                    name: info.name.clone(),
                    dtype: info.dtype.as_str().to_string(),
                    shape: info.shape.clone(),
                    start: info.start,
                    len: info.end - info.start,
                    hash: stored.hash,
                    storage: stored.storage,
                    stored_bytes: stored.stored_bytes,
                    codec_stats: stored.codec_stats,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(SafetensorsFile {
            path: file.rel_path.clone(),
            header_object: header_stored.id,
            file_hash: file.hash,
            bytes: bytes.len() as u64,
            tensors,
        })
    }

    /// Keeps one fine-tune tensor: a reference when it equals its base tensor, a lossless
    /// delta when it has a base tensor of the same dtype and shape, else whole.
    fn store_finetune_tensor(
        &self,
        info: &TensorInfo,
        bytes: &[u8],
        hash: ObjectId,
        base_entry: Option<&TensorEntry>,
        tally: &WriteTally,
    ) -> Result<StoredTensor, Error> {
        let exact = |storage, stored_bytes| StoredTensor { storage, stored_bytes, hash, codec_stats: None };
        let Some(base_entry) = base_entry else {
            let stored = self.objects.put_with_id(hash, ObjectKind::Raw, bytes)?;
            tally.record(&stored);
            return Ok(exact(TensorStorage::Whole { object: hash }, stored.stored_bytes));
        };
        if base_entry.hash == hash {
            return Ok(exact(TensorStorage::SameAsBase { base_name: base_entry.name.clone(), object: hash }, 0));
        }
        let base_bytes = self.objects.get(&base_entry.hash)?;
        let elem_size = info.dtype.bits().filter(|b| b % 8 == 0 && *b <= 64 && *b > 0).map(|b| (b / 8) as usize).unwrap_or(1);
        let payload = lossless::encode(&base_bytes, bytes, elem_size, lossless::DEFAULT_ZSTD_LEVEL)
            .map_err(|e| Error::Codec { tensor: info.name.clone(), detail: e.to_string() })?;
        // A tiny or unrelated tensor can cost more as a delta than whole.
        if payload.len() >= bytes.len() {
            let stored = self.objects.put_with_id(hash, ObjectKind::Raw, bytes)?;
            tally.record(&stored);
            return Ok(exact(TensorStorage::Whole { object: hash }, stored.stored_bytes));
        }
        let stored = self.objects.put(ObjectKind::LosslessDelta, &payload)?;
        tally.record(&stored);
        Ok(exact(
            TensorStorage::LosslessDelta { base_name: base_entry.name.clone(), base_object: base_entry.hash, object: stored.id },
            stored.stored_bytes,
        ))
    }

    /// On-disk bytes of the distinct objects `snapshot` references, leaving out `exclude`.
    pub(crate) fn distinct_stored_bytes(&self, snapshot: &Snapshot, exclude: &HashSet<ObjectId>) -> Result<u64, Error> {
        let mut total = 0;
        for id in snapshot_own_objects(snapshot) {
            if !exclude.contains(&id) {
                total += self.objects.stored_size(&id)?;
            }
        }
        Ok(total)
    }
}

/// Objects a snapshot's entries name directly (headers, plain files, tensor or delta objects),
/// leaving out the base tensors deltas are applied to.
fn snapshot_own_objects(snapshot: &Snapshot) -> HashSet<ObjectId> {
    let mut ids = HashSet::new();
    for file in &snapshot.files {
        match file {
            FileEntry::Plain(p) => {
                ids.insert(p.object);
            }
            FileEntry::Safetensors(s) => {
                ids.insert(s.header_object);
                for t in &s.tensors {
                    match &t.storage {
                        TensorStorage::Whole { object }
                        | TensorStorage::SameAsBase { object, .. }
                        | TensorStorage::LosslessDelta { object, .. }
                        | TensorStorage::UltraDelta { object, .. } => {
                            ids.insert(*object);
                        }
                    }
                }
            }
        }
    }
    ids
}

/// Collects every object a snapshot needs, base tensors of deltas included.
pub(crate) fn snapshot_objects(snapshot: &Snapshot) -> HashSet<ObjectId> {
    let mut ids = snapshot_own_objects(snapshot);
    for tensor in snapshot.tensors() {
        ids.extend(tensor.storage.objects());
    }
    ids
}

/// Builds the codec record of a commit: name, whether any tensor is lossy, and its parameters.
fn codec_info(choice: &CodecChoice, report: Option<&LossyReport>, any_lossy: bool) -> CodecInfo {
    match choice {
        CodecChoice::Lossless => CodecInfo {
            name: "lossless".into(),
            lossy: false,
            params: serde_json::json!({ "zstd_level": lossless::DEFAULT_ZSTD_LEVEL }),
        },
        CodecChoice::UltraDelta(options) => {
            let s = &options.settings;
            CodecInfo {
                name: "ultradelta".into(),
                lossy: any_lossy,
                params: serde_json::json!({
                    "sparsity": s.sparsity,
                    "bits": s.bits,
                    "step": s.step,
                    "extra_rescale": s.extra_rescale,
                    "mask_mode": s.mask_mode,
                    "max_error": s.max_error,
                    "seed": s.seed,
                    "value_coding": format!("{:?}", s.value_coding),
                    "accept_error": options.accept_error,
                    "include": options.policy.include,
                    "exclude": options.policy.exclude,
                    "report": report,
                }),
            }
        }
    }
}

fn author(options: &CommitOptions) -> String {
    default_author(options.author.clone())
}

/// Returns the author a commit records: `explicit`, else $WSTORE_AUTHOR, else $USER.
pub fn default_author(explicit: Option<String>) -> String {
    explicit
        .or_else(|| std::env::var("WSTORE_AUTHOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Chooses the name map: the explicit `--map-prefix`, else a detected prefix rewrite unless detection is off.
fn choose_name_map(
    checkpoint: &Checkpoint,
    base_tensors: &HashMap<&str, &TensorEntry>,
    options: &CommitOptions,
) -> Result<Option<PrefixMap>, Error> {
    if let Some(text) = &options.map_prefix {
        return PrefixMap::parse(text).map(Some).ok_or_else(|| Error::InvalidPrefixMap { text: text.clone() });
    }
    if options.no_align {
        return Ok(None);
    }
    let finetune_names = checkpoint
        .files
        .iter()
        .filter_map(|f| f.header.as_ref())
        .flat_map(|h| h.tensors.iter().map(|t| t.name.as_str()));
    let map = detect_prefix_map(finetune_names, base_tensors.keys().copied());
    if let Some(map) = &map {
        tracing::debug!(finetune_prefix = %map.finetune_prefix, base_prefix = %map.base_prefix, "aligned tensor names");
    }
    Ok(map)
}
