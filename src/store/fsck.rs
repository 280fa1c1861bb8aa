//! `fsck`: checks every object file against its id, decodes every delta object against its
//! base tensor, checks that every catalog reference resolves, and with `full` rebuilds every
//! stored file and compares it with the hash recorded when it was stored. Objects that no
//! record reaches, and temp files left by interrupted writes, are listed too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use super::Store;
use crate::catalog::{BaseRecord, Catalog, CommitRecord, FileEntry, SafetensorsFile, ScannedRecord, Snapshot, TensorEntry, TensorStorage};
use crate::codec::{lossless, ultradelta};
use crate::error::Error;
use crate::format::object::ObjectKind;
use crate::format::safetensors::Dtype;
use crate::id::ObjectId;
use crate::storage::StorageError;

#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Whether to also rebuild every file of every base and commit and compare it with its
    /// recorded BLAKE3.
    pub full: bool,
    /// Whether to delete object files that fail their hash check. A corrupt object blocks its
    /// own repair: adding or committing its source again finds the file present and writes
    /// nothing. Once it is deleted, that writes it anew.
    pub repair: bool,
}

/// Kind of a finding; the JSON names are part of `fsck --json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// An object file a record reaches fails the envelope checks or hashes to another id.
    CorruptObject,
    /// A record names an object that is not stored.
    MissingObject,
    /// A delta object does not decode against its base tensor, or is of the wrong kind.
    UndecodableDelta,
    /// A rebuilt tensor or file, or a whole-tensor object, differs from the recorded hash.
    HashMismatch,
    /// A catalog record does not parse, or its key or commit id does not match its content.
    CorruptRecord,
    /// A ref names a commit that is not recorded.
    DanglingRef,
    /// A commit or base name points at a base that is not recorded.
    MissingBase,
    /// A commit's parent is not recorded.
    MissingParent,
    /// An object no base or commit record reaches; `gc` deletes it.
    OrphanObject,
    /// A temp file left by an interrupted write, removed when the store was opened.
    StaleTemp,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::CorruptObject => "corrupt_object",
            FindingKind::MissingObject => "missing_object",
            FindingKind::UndecodableDelta => "undecodable_delta",
            FindingKind::HashMismatch => "hash_mismatch",
            FindingKind::CorruptRecord => "corrupt_record",
            FindingKind::DanglingRef => "dangling_ref",
            FindingKind::MissingBase => "missing_base",
            FindingKind::MissingParent => "missing_parent",
            FindingKind::OrphanObject => "orphan_object",
            FindingKind::StaleTemp => "stale_temp",
        }
    }

    /// Returns whether the finding makes the store unhealthy. Orphans and stale temp files are
    /// what a killed writer legitimately leaves behind, and no checkout reads them.
    pub fn is_problem(self) -> bool {
        !matches!(self, FindingKind::OrphanObject | FindingKind::StaleTemp)
    }
}

/// One thing `fsck` found, with the ids involved. Absent fields are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<ObjectId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<ObjectId>,
    /// The missing parent of `commit`, for `missing_parent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ObjectId>,
    /// Ref name, base name, file path or tensor name involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Temp file path, for `stale_temp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub detail: String,
}

impl Finding {
    fn new(kind: FindingKind, detail: impl Into<String>) -> Self {
        Finding { kind, object: None, commit: None, base: None, parent: None, name: None, path: None, detail: detail.into() }
    }

    fn object(mut self, id: ObjectId) -> Self {
        self.object = Some(id);
        self
    }

    fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn owner(mut self, owner: Owner) -> Self {
        match owner {
            Owner::Base(id) => self.base = Some(id),
            Owner::Commit(id) => self.commit = Some(id),
        }
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FsckReport {
    pub full: bool,
    /// Object files read and hashed.
    pub objects: usize,
    pub bases: usize,
    pub commits: usize,
    pub refs: usize,
    /// Delta entries decoded against their base tensors; identical entries of several
    /// records are decoded once.
    pub deltas: usize,
    /// Files rebuilt and compared with their recorded hash (`full` only).
    pub files_rebuilt: usize,
    /// Sorted by kind, then by the ids involved.
    pub findings: Vec<Finding>,
    /// Corrupt object files deleted by `repair`.
    #[serde(default)]
    pub removed_corrupt: Vec<ObjectId>,
}

impl FsckReport {
    /// Number of findings that make the store unhealthy (all but orphans and stale temps).
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| f.kind.is_problem()).count()
    }

    pub fn is_clean(&self) -> bool {
        self.problems() == 0
    }

    /// Counts findings by kind.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for finding in &self.findings {
            *counts.entry(finding.kind.as_str()).or_insert(0) += 1;
        }
        counts
    }
}

/// The record that names an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Base(ObjectId),
    Commit(ObjectId),
}

/// Object kind a record expects in one slot.
fn expected_kind(storage: &TensorStorage) -> Option<ObjectKind> {
    match storage {
        TensorStorage::LosslessDelta { .. } => Some(ObjectKind::LosslessDelta),
        TensorStorage::UltraDelta { .. } => Some(ObjectKind::UltraDelta),
        TensorStorage::Whole { .. } | TensorStorage::SameAsBase { .. } => None,
    }
}

/// Lists every object a snapshot names, with the file or tensor that names it.
fn named_objects(snapshot: &Snapshot) -> Vec<(ObjectId, String)> {
    let mut out = Vec::new();
    for file in &snapshot.files {
        match file {
            FileEntry::Plain(plain) => out.push((plain.object, plain.path.clone())),
            FileEntry::Safetensors(st) => {
                out.push((st.header_object, format!("{} (header)", st.path)));
                for tensor in &st.tensors {
                    for id in tensor.storage.objects() {
                        out.push((id, tensor.name.clone()));
                    }
                }
            }
        }
    }
    out
}

/// State shared by the checks: what the object pass found, and the findings so far.
struct Check<'a> {
    store: &'a Store,
    /// Kind of every object that read back intact.
    intact: HashMap<ObjectId, ObjectKind>,
    /// Every listed object, intact or not.
    listed: HashSet<ObjectId>,
    /// Objects that failed their check, with the finding's detail.
    corrupt: HashMap<ObjectId, String>,
    findings: Vec<Finding>,
}

impl Store {
    /// Checks the whole store and lists what it found. Damage is reported as findings, not
    /// errors; an error means the check itself could not run (unreadable catalog, I/O failure
    /// listing objects).
    pub fn fsck(&self, options: &FsckOptions) -> Result<FsckReport, Error> {
        // Repair deletes files, so no writer of this store may run meanwhile (as for gc).
        let _exclusive = options.repair.then(|| self.lock_exclusive());
        let listed = self.objects.storage().list()?;
        let mut check = Check {
            store: self,
            intact: HashMap::new(),
            listed: listed.iter().copied().collect(),
            corrupt: HashMap::new(),
            findings: Vec::new(),
        };
        check.read_objects(&listed)?;
        let mut removed_corrupt = Vec::new();
        if options.repair {
            let mut corrupt: Vec<ObjectId> = check.corrupt.keys().copied().collect();
            corrupt.sort();
            for id in corrupt {
                if self.objects.storage().delete(&id)? {
                    tracing::warn!(object = %id, "deleted a corrupt object file");
                    removed_corrupt.push(id);
                }
            }
        }

        let bases = check.check_bases(self.catalog.scan_bases()?);
        let commits = check.check_commits(self.catalog.scan_commits()?, &bases);
        check.check_names(&bases, &commits)?;
        let refs = self.catalog.list_refs()?.len();

        let mut reachable = HashSet::new();
        let owned: Vec<(Owner, &Snapshot)> = bases
            .values()
            .map(|b| (Owner::Base(b.id), &b.snapshot))
            .chain(commits.values().map(|c| (Owner::Commit(c.id), &c.snapshot)))
            .collect();
        for (owner, snapshot) in &owned {
            check.check_references(*owner, snapshot, &mut reachable);
        }
        let failed_deltas = check.decode_deltas(&owned);
        let deltas = failed_deltas.1;
        let files_rebuilt = if options.full { check.rebuild_files(&owned, &failed_deltas.0) } else { 0 };
        check.report_orphans(&listed, &reachable);
        for path in &self.removed_temps {
            let mut finding = Finding::new(
                FindingKind::StaleTemp,
                "temp file left by an interrupted write; removed when the store was opened",
            );
            finding.path = Some(path.clone());
            check.findings.push(finding);
        }

        let mut findings = check.findings;
        findings.sort_by(|a, b| {
            (a.kind, a.object, a.commit, a.base, &a.name, &a.path).cmp(&(b.kind, b.object, b.commit, b.base, &b.name, &b.path))
        });
        findings.dedup();
        Ok(FsckReport {
            full: options.full,
            objects: listed.len(),
            bases: bases.len(),
            commits: commits.len(),
            refs,
            deltas,
            files_rebuilt,
            findings,
            removed_corrupt,
        })
    }
}

impl Check<'_> {
    /// Reads and hash-checks every listed object. A read that fails for another reason than
    /// bad content (an I/O error, an unreachable bucket) fails the whole check, because such an
    /// object may be intact and `repair` deletes what is counted corrupt.
    fn read_objects(&mut self, listed: &[ObjectId]) -> Result<(), Error> {
        let results: Vec<(ObjectId, Result<ObjectKind, Error>)> = listed
            .par_iter()
            .map(|id| {
                // Check the stored copy itself, not a cached one that may outlive its damage.
                self.store.objects.storage().forget_cached(id);
                (*id, self.store.objects.get_with_kind(id).map(|(kind, _)| kind))
            })
            .collect();
        for (id, result) in results {
            match result {
                Ok(kind) => {
                    self.intact.insert(id, kind);
                }
                // Deleted between the listing and the read: nothing left to check.
                Err(Error::Storage(StorageError::NotFound { .. })) => {}
                Err(Error::CorruptObject { detail, .. }) => {
                    self.corrupt.insert(id, detail);
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    fn check_bases(&mut self, scanned: Vec<ScannedRecord<BaseRecord>>) -> HashMap<ObjectId, BaseRecord> {
        let mut bases = HashMap::new();
        for (key, record) in scanned {
            match record {
                Ok(record) if key.as_slice() == record.id.as_bytes() => {
                    bases.insert(record.id, record);
                }
                Ok(record) => self.findings.push(
                    Finding::new(FindingKind::CorruptRecord, format!("base record stored under key {} holds id {}", hex(&key), record.id))
                        .owner(Owner::Base(record.id)),
                ),
                Err(error) => self.findings.push(Finding::new(FindingKind::CorruptRecord, error.to_string())),
            }
        }
        bases
    }

    fn check_commits(
        &mut self,
        scanned: Vec<ScannedRecord<CommitRecord>>,
        bases: &HashMap<ObjectId, BaseRecord>,
    ) -> HashMap<ObjectId, CommitRecord> {
        let mut commits = HashMap::new();
        for (key, record) in scanned {
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    self.findings.push(Finding::new(FindingKind::CorruptRecord, error.to_string()));
                    continue;
                }
            };
            let mut sealed = record.clone();
            Catalog::seal_commit(&mut sealed);
            if key.as_slice() != record.id.as_bytes() || sealed.id != record.id {
                self.findings.push(
                    Finding::new(
                        FindingKind::CorruptRecord,
                        format!("commit record under key {} hashes to {}; it was changed after it was written", hex(&key), sealed.id),
                    )
                    .owner(Owner::Commit(record.id)),
                );
            }
            commits.insert(record.id, record);
        }
        for commit in commits.values() {
            if !bases.contains_key(&commit.base) {
                let mut finding = Finding::new(FindingKind::MissingBase, format!("base {} of commit {} is not recorded", commit.base, commit.id));
                finding.base = Some(commit.base);
                self.findings.push(finding.owner(Owner::Commit(commit.id)));
            }
            if let Some(parent) = commit.parent.filter(|p| !commits.contains_key(p)) {
                let mut finding = Finding::new(FindingKind::MissingParent, format!("parent {parent} of commit {} is not recorded", commit.id));
                finding.parent = Some(parent);
                self.findings.push(finding.owner(Owner::Commit(commit.id)));
            }
        }
        commits
    }

    /// Checks that every base name and ref points at a recorded base or commit.
    fn check_names(
        &mut self,
        bases: &HashMap<ObjectId, BaseRecord>,
        commits: &HashMap<ObjectId, CommitRecord>,
    ) -> Result<(), Error> {
        for (name, id) in self.store.catalog.list_base_names()? {
            if !bases.contains_key(&id) {
                let detail = format!("base name {name:?} points at base {id}, which is not recorded");
                self.findings.push(Finding::new(FindingKind::MissingBase, detail).name(name).owner(Owner::Base(id)));
            }
        }
        for (name, id) in self.store.catalog.list_refs()? {
            if !commits.contains_key(&id) {
                let detail = format!("ref {name:?} points at commit {id}, which is not recorded");
                self.findings.push(Finding::new(FindingKind::DanglingRef, detail).name(name).owner(Owner::Commit(id)));
            }
        }
        Ok(())
    }

    /// Checks that every object a record names is stored and intact, and that whole-tensor
    /// objects are the recorded tensor bytes; adds them to `reachable`.
    fn check_references(&mut self, owner: Owner, snapshot: &Snapshot, reachable: &mut HashSet<ObjectId>) {
        for (id, name) in named_objects(snapshot) {
            reachable.insert(id);
            if !self.listed.contains(&id) {
                self.findings.push(
                    Finding::new(FindingKind::MissingObject, format!("object {id} named by {name:?} is not stored"))
                        .object(id)
                        .name(name)
                        .owner(owner),
                );
            } else if let Some(detail) = self.corrupt.get(&id) {
                let detail = detail.clone();
                self.findings.push(Finding::new(FindingKind::CorruptObject, detail).object(id).name(name).owner(owner));
            }
        }
        for tensor in snapshot.tensors() {
            if let TensorStorage::Whole { object } | TensorStorage::SameAsBase { object, .. } = &tensor.storage {
                if *object != tensor.hash {
                    let detail = format!("tensor {:?} is recorded with BLAKE3 {} but its object is {object}", tensor.name, tensor.hash);
                    self.findings.push(Finding::new(FindingKind::HashMismatch, detail).object(*object).name(&tensor.name).owner(owner));
                }
            }
        }
    }

    /// Decodes each delta against its base tensor, once per distinct entry, and compares the
    /// result with the recorded tensor hash. Returns the records and delta objects that failed, and
    /// how many deltas were decoded.
    fn decode_deltas(&mut self, owned: &[(Owner, &Snapshot)]) -> (HashSet<(Owner, ObjectId)>, usize) {
        // Entries that agree on these fields rebuild, and expect, the same bytes.
        type Key<'s> = (ObjectId, ObjectId, &'static str, ObjectId, u64, &'s str);
        let mut jobs: HashMap<Key, (Owner, &TensorEntry)> = HashMap::new();
        for (owner, snapshot) in owned {
            for tensor in snapshot.tensors() {
                if let TensorStorage::LosslessDelta { base_object, object, .. } | TensorStorage::UltraDelta { base_object, object, .. } =
                    &tensor.storage
                {
                    let key = (*object, *base_object, tensor.storage.kind_name(), tensor.hash, tensor.len, tensor.dtype.as_str());
                    jobs.entry(key).or_insert((*owner, tensor));
                }
            }
        }
        let runnable: Vec<_> = jobs
            .into_iter()
            .filter(|((object, base, ..), _)| self.intact.contains_key(object) && self.intact.contains_key(base))
            .collect();
        let decoded = runnable.len();
        let findings: Vec<Finding> = runnable
            .par_iter()
            .filter_map(|((object, base, ..), (owner, tensor))| self.decode_one(*object, *base, tensor).map(|f| f.owner(*owner)))
            .collect();
        let failed = findings
            .iter()
            .filter_map(|f| {
                let owner = f.commit.map(Owner::Commit).or(f.base.map(Owner::Base))?;
                Some((owner, f.object?))
            })
            .collect();
        self.findings.extend(findings);
        (failed, decoded)
    }

    fn decode_one(&self, object: ObjectId, base: ObjectId, tensor: &TensorEntry) -> Option<Finding> {
        let undecodable = |detail: String| Some(Finding::new(FindingKind::UndecodableDelta, detail).object(object).name(&tensor.name));
        let expected = expected_kind(&tensor.storage)?;
        let actual = *self.intact.get(&object)?;
        if actual != expected {
            return undecodable(format!("object is a {actual:?} object, but tensor {:?} records a {expected:?}", tensor.name));
        }
        let (base_bytes, payload) = match (self.store.objects.get(&base), self.store.objects.get(&object)) {
            (Ok(base_bytes), Ok(payload)) => (base_bytes, payload),
            (Err(error), _) | (_, Err(error)) => return undecodable(format!("could not be read again: {error}")),
        };
        let rebuilt = match expected {
            ObjectKind::LosslessDelta => lossless::decode(&base_bytes, &payload).map_err(|e| e.to_string()),
            _ => ultradelta::reconstruct(&base_bytes, &Dtype::parse(&tensor.dtype), &payload).map_err(|e| e.to_string()),
        };
        let rebuilt = match rebuilt {
            Ok(bytes) => bytes,
            Err(detail) => return undecodable(format!("does not decode against base tensor object {base}: {detail}")),
        };
        let actual_hash = ObjectId::of_large(&rebuilt);
        if actual_hash != tensor.hash || rebuilt.len() as u64 != tensor.len {
            let detail = format!(
                "tensor {:?} rebuilds to {} bytes with BLAKE3 {actual_hash}, but {} bytes with BLAKE3 {} were recorded",
                tensor.name,
                rebuilt.len(),
                tensor.len,
                tensor.hash
            );
            return Some(Finding::new(FindingKind::HashMismatch, detail).object(object).name(&tensor.name));
        }
        None
    }

    /// Rebuilds every safetensors file whose objects all passed the earlier checks and compares
    /// it with its recorded hash. Returns the number of files rebuilt.
    fn rebuild_files(&mut self, owned: &[(Owner, &Snapshot)], failed_deltas: &HashSet<(Owner, ObjectId)>) -> usize {
        let healthy = |owner: Owner, st: &SafetensorsFile| {
            std::iter::once(st.header_object)
                .chain(st.tensors.iter().flat_map(|t| t.storage.objects()))
                .all(|id| self.intact.contains_key(&id) && !failed_deltas.contains(&(owner, id)))
        };
        let files: Vec<(Owner, &SafetensorsFile)> = owned
            .iter()
            .flat_map(|(owner, snapshot)| {
                snapshot.files.iter().filter_map(move |file| match file {
                    FileEntry::Safetensors(st) => Some((*owner, st)),
                    FileEntry::Plain(_) => None,
                })
            })
            .filter(|(owner, st)| healthy(*owner, st))
            .collect();
        for (owner, st) in &files {
            let detail = match self.store.stream_safetensors(st, &mut |_| Ok(())) {
                Ok(actual) if actual == st.file_hash => continue,
                Ok(actual) => format!("file {:?} rebuilds to BLAKE3 {actual}, but {} was recorded", st.path, st.file_hash),
                Err(error) => format!("file {:?} could not be rebuilt: {error}", st.path),
            };
            self.findings.push(Finding::new(FindingKind::HashMismatch, detail).name(&st.path).owner(*owner));
        }
        files.len()
    }

    fn report_orphans(&mut self, listed: &[ObjectId], reachable: &HashSet<ObjectId>) {
        for id in listed.iter().filter(|id| !reachable.contains(id)) {
            let detail = match self.corrupt.get(id) {
                Some(problem) => format!("no base or commit record reaches this object (it is also corrupt: {problem}); `wstore gc` deletes it"),
                None => "no base or commit record reaches this object; `wstore gc` deletes it".to_string(),
            };
            self.findings.push(Finding::new(FindingKind::OrphanObject, detail).object(*id));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
