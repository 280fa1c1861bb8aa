//! The store's side of push and pull: a bundle of the records behind a ref, which objects
//! are missing, receiving one object file, and importing a bundle once its objects are here.
//!
//! Records are imported last, after every object they name is stored, so an interrupted
//! transfer leaves only unreferenced objects (which `gc` spares for its grace period) and a
//! second run sends only what is still missing.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use super::commit::snapshot_objects;
use super::{validate_name, Store};
use crate::catalog::{BaseRecord, Catalog, CatalogError, CommitRecord, Layout};
use crate::checkpoint::directory_id;
use crate::error::Error;
use crate::id::ObjectId;
use crate::objects::verify_file;
use crate::storage::PutOutcome;

/// Value of `Bundle::schema` that this wstore writes and reads.
pub const BUNDLE_SCHEMA: &str = "wstore-bundle-v1";

/// The records a ref needs in another store, and the objects they name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bundle {
    /// Always `BUNDLE_SCHEMA`.
    pub schema: String,
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// The commit the ref names.
    pub commit: ObjectId,
    /// `commit` and its ancestors, newest first, down to the commit without a parent.
    pub commits: Vec<CommitRecord>,
    /// The bases of `commits`, each with its names.
    pub bases: Vec<BundleBase>,
    /// Every object the records name, in id order, with its stored (encoded) size in bytes.
    pub objects: Vec<ObjectEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BundleBase {
    pub record: BaseRecord,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectEntry {
    pub id: ObjectId,
    pub stored_bytes: u64,
}

/// The outcome of importing a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportReport {
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub commit: ObjectId,
    /// The commit the ref named before, if it existed.
    pub previous: Option<ObjectId>,
    pub commits_added: usize,
    pub bases_added: usize,
    /// True when `--force` moved the ref to a commit that does not descend from `previous`.
    pub forced: bool,
}

impl Store {
    /// Collects the bundle of `ref_name`: its commit, the commit's ancestors, their bases and
    /// the objects all of them name. Only a ref is accepted, not a commit id, because the
    /// destination needs a name to point at the commit.
    pub fn bundle(&self, ref_name: &str) -> Result<Bundle, Error> {
        let catalog = self.catalog();
        let tip = catalog
            .get_ref(ref_name)?
            .ok_or_else(|| CatalogError::NotFound { kind: "ref", text: ref_name.to_string() })?;

        let mut commits = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(tip);
        while let Some(id) = next {
            if !seen.insert(id) {
                return Err(corrupt_lineage(&id, "the parent chain loops back to it"));
            }
            let record = catalog.get_commit(&id)?.ok_or_else(|| corrupt_lineage(&id, "the record is missing"))?;
            next = record.parent;
            commits.push(record);
        }

        let base_ids: BTreeSet<ObjectId> = commits.iter().map(|c| c.base).collect();
        let mut bases = Vec::new();
        for (record, names) in catalog.list_bases()? {
            if base_ids.contains(&record.id) {
                bases.push(BundleBase { record, names });
            }
        }
        if let Some(missing) = base_ids.iter().find(|id| !bases.iter().any(|b| b.record.id == **id)) {
            return Err(CatalogError::Corrupt { what: format!("base {}", missing.short()), detail: "a commit names it, but the record is missing".into() }.into());
        }

        let mut ids = BTreeSet::new();
        for commit in &commits {
            ids.extend(snapshot_objects(&commit.snapshot));
        }
        for base in &bases {
            ids.extend(snapshot_objects(&base.record.snapshot));
        }
        let storage = self.objects().storage();
        let mut objects = Vec::with_capacity(ids.len());
        for id in ids {
            objects.push(ObjectEntry { id, stored_bytes: storage.size(&id)? });
        }

        Ok(Bundle { schema: BUNDLE_SCHEMA.into(), ref_name: ref_name.to_string(), commit: tip, commits, bases, objects })
    }

    /// Returns the ids among `ids` that this store lacks, in the order given. Each present id
    /// is adopted, so that a storage shared with other stores records this store's reference
    /// before a later import relies on the object.
    pub fn missing_objects(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, Error> {
        let storage = self.objects().storage();
        let mut missing = Vec::new();
        for id in ids {
            if !storage.adopt(id)? {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    /// Stores an object file received from another store after checking that it decodes and
    /// that its content hashes to `id`. Storage writes it atomically, so a transfer cut off
    /// midway leaves no partial object. Returns whether this call stored it.
    pub fn receive_object(&self, id: &ObjectId, file: &[u8]) -> Result<bool, Error> {
        verify_file(id, file).map_err(|detail| Error::InvalidObjectFile { id: *id, detail })?;
        let _writing = self.lock_shared();
        Ok(self.objects().storage().put(id, file)? == PutOutcome::Created)
    }

    /// Imports a bundle whose objects are all stored here: adds its bases, base names and
    /// commits, then moves the ref. The ref moves only forward (to a commit that descends from
    /// the one it names) unless `force` is set. Nothing is written when a check fails.
    pub fn import_bundle(&self, bundle: &Bundle, force: bool) -> Result<ImportReport, Error> {
        check_bundle(bundle)?;
        let _writing = self.lock_shared();
        let catalog = self.catalog();

        self.check_objects_present(bundle)?;
        if catalog.base_by_name(&bundle.ref_name)?.is_some() {
            return Err(Error::NameTaken { name: bundle.ref_name.clone(), taken_by: "a base" });
        }
        for base in &bundle.bases {
            for name in &base.names {
                if catalog.get_ref(name)?.is_some() {
                    return Err(Error::NameTaken { name: name.clone(), taken_by: "a ref" });
                }
                match catalog.base_by_name(name)? {
                    Some(existing) if existing != base.record.id => {
                        return Err(Error::BaseNameConflict { name: name.clone(), existing, incoming: base.record.id });
                    }
                    _ => {}
                }
            }
        }
        let previous = catalog.get_ref(&bundle.ref_name)?;
        let fast_forward = previous.is_none_or(|current| bundle.commits.iter().any(|c| c.id == current));
        if !fast_forward && !force {
            let current = previous.unwrap_or(bundle.commit);
            return Err(Error::NonFastForward { ref_name: bundle.ref_name.clone(), current, commit: bundle.commit });
        }

        // Last, because it reads every object of a new base.
        for base in &bundle.bases {
            if catalog.get_base(&base.record.id)?.is_none() {
                self.check_received_base(&base.record)?;
            }
        }

        let mut bases_added = 0;
        for base in &bundle.bases {
            if catalog.get_base(&base.record.id)?.is_none() {
                bases_added += 1;
            }
            for name in &base.names {
                if catalog.base_by_name(name)?.is_none() {
                    catalog.put_base(&base.record, name)?;
                }
            }
        }
        let mut commits_added = 0;
        for record in bundle.commits.iter().rev() {
            if catalog.get_commit(&record.id)?.is_none() {
                catalog.put_commit(record, None, None)?;
                commits_added += 1;
            }
        }
        if previous != Some(bundle.commit) {
            // The tip is stored again with the ref, which compares the ref with `previous` in
            // one transaction, so a concurrent writer's move is not lost.
            catalog.put_commit(&bundle.commits[0], Some(&bundle.ref_name), previous)?;
        }
        tracing::info!(ref_name = %bundle.ref_name, commit = %bundle.commit, commits_added, bases_added, forced = !fast_forward, "imported a bundle");

        Ok(ImportReport {
            ref_name: bundle.ref_name.clone(),
            commit: bundle.commit,
            previous,
            commits_added,
            bases_added,
            forced: !fast_forward,
        })
    }

    /// Checks that every object the bundle's records name is stored here, computed from the
    /// records rather than taken from the bundle's object list.
    fn check_objects_present(&self, bundle: &Bundle) -> Result<(), Error> {
        let mut ids = BTreeSet::new();
        for commit in &bundle.commits {
            ids.extend(snapshot_objects(&commit.snapshot));
        }
        for base in &bundle.bases {
            ids.extend(snapshot_objects(&base.record.snapshot));
        }
        let ids: Vec<ObjectId> = ids.into_iter().collect();
        let missing = self.missing_objects(&ids)?;
        match missing.first() {
            Some(first) => Err(Error::ObjectsMissing { count: missing.len(), first: *first }),
            None => Ok(()),
        }
    }
}

/// Checks a bundle on its own: the schema, the names, every commit id against its record, and
/// that the commits form one parent chain whose bases are all included.
fn check_bundle(bundle: &Bundle) -> Result<(), Error> {
    let invalid = |detail: String| Error::InvalidBundle { detail };
    if bundle.schema != BUNDLE_SCHEMA {
        return Err(invalid(format!("schema {:?} is not {BUNDLE_SCHEMA:?}; upgrade the older wstore", bundle.schema)));
    }
    validate_name("ref", &bundle.ref_name)?;
    let Some(tip) = bundle.commits.first() else {
        return Err(invalid("it holds no commit".into()));
    };
    if tip.id != bundle.commit {
        return Err(invalid(format!("its first commit is {}, not the ref's commit {}", tip.id, bundle.commit)));
    }
    for (index, record) in bundle.commits.iter().enumerate() {
        let mut sealed = record.clone();
        Catalog::seal_commit(&mut sealed);
        if sealed.id != record.id {
            return Err(invalid(format!("commit record {} hashes to {}", record.id, sealed.id)));
        }
        let expected_parent = bundle.commits.get(index + 1).map(|parent| parent.id);
        if record.parent != expected_parent {
            return Err(invalid(format!("commit {} does not have the next commit in the bundle as its parent", record.id)));
        }
        if !bundle.bases.iter().any(|b| b.record.id == record.base) {
            return Err(invalid(format!("commit {} uses base {}, which the bundle lacks", record.id, record.base)));
        }
    }
    // Each name may be imported once: a base name equal to the ref would name both a ref and
    // a base, and a name on two bases would leave the second base without a record.
    let mut names = HashSet::from([bundle.ref_name.as_str()]);
    for name in bundle.bases.iter().flat_map(|base| &base.names) {
        if !names.insert(name.as_str()) {
            return Err(invalid(format!("name {name:?} is given twice, as the ref or a base name")));
        }
    }
    for base in &bundle.bases {
        // A base id is the content hash of the checkpoint, which names it on every store: a
        // record under another id would pass off other weights as that checkpoint.
        let content_id = match (&base.record.snapshot.layout, base.record.snapshot.files.as_slice()) {
            (Layout::SingleFile { .. }, [file]) => Some(file.file_hash()),
            (Layout::SingleFile { .. }, _) => None,
            (Layout::Directory { .. }, files) => Some(directory_id(files.iter().map(|file| (file.path(), file.file_hash())))),
        };
        // The entries are checked against the objects at import (`check_received_base`).
        if content_id != Some(base.record.id) {
            return Err(invalid(format!("base record {} does not match the hashes of the files it lists", base.record.id)));
        }
        if base.names.is_empty() {
            return Err(invalid(format!("base {} has no name", base.record.id)));
        }
        for name in &base.names {
            validate_name("base", name)?;
        }
    }
    Ok(())
}

fn corrupt_lineage(id: &ObjectId, detail: &str) -> Error {
    CatalogError::Corrupt { what: format!("commit {}", id.short()), detail: detail.to_string() }.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::FileEntry;
    use crate::progress::NoProgress;
    use crate::store::{CodecChoice, CommitOptions};
    use crate::synth::{tiny_base, tiny_finetune, to_safetensors};

    /// A store with base `tiny`, and ref `ft` on a commit whose parent is another commit.
    fn store_with_lineage(dir: &std::path::Path) -> Store {
        let base = tiny_base(3);
        let files = [("base", base.clone()), ("one", tiny_finetune(&base, 4, 0.1)), ("two", tiny_finetune(&base, 5, 0.1))];
        for (name, tensors) in &files {
            std::fs::write(dir.join(format!("{name}.safetensors")), to_safetensors(tensors, None).unwrap()).unwrap();
        }
        let store = Store::init(&dir.join("store")).unwrap();
        store.add_base("tiny", &dir.join("base.safetensors"), &NoProgress).unwrap();
        for name in ["one", "two"] {
            let options = CommitOptions { base: "tiny".into(), name: Some("ft".into()), codec: CodecChoice::Lossless, ..Default::default() };
            store.commit(&dir.join(format!("{name}.safetensors")), &options, &NoProgress).unwrap();
        }
        store
    }

    #[test]
    fn bundle_lists_lineage_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_lineage(dir.path());
        let bundle = store.bundle("ft").unwrap();

        assert_eq!(bundle.schema, BUNDLE_SCHEMA);
        assert_eq!(bundle.commits.len(), 2);
        assert_eq!(bundle.commits[0].id, bundle.commit);
        assert_eq!(bundle.commits[0].parent, Some(bundle.commits[1].id));
        assert_eq!(bundle.commits[1].parent, None);
        assert_eq!(bundle.bases.len(), 1);
        assert_eq!(bundle.bases[0].names, vec!["tiny".to_string()]);
        assert!(bundle.objects.windows(2).all(|pair| pair[0].id < pair[1].id));
        assert!(check_bundle(&bundle).is_ok());
    }

    #[test]
    fn broken_bundles_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_lineage(dir.path());
        let bundle = store.bundle("ft").unwrap();

        let mut without_parent = bundle.clone();
        without_parent.commits.truncate(1);
        let mut without_base = bundle.clone();
        without_base.bases.clear();
        let mut nameless_base = bundle.clone();
        nameless_base.bases[0].names.clear();
        let mut other_tip = bundle.clone();
        other_tip.commit = bundle.commits[1].id;
        let mut empty = bundle.clone();
        empty.commits.clear();
        let cases = [
            (without_parent, "does not have the next commit in the bundle as its parent"),
            (without_base, "which the bundle lacks"),
            (nameless_base, "has no name"),
            (other_tip, "not the ref's commit"),
            (empty, "it holds no commit"),
        ];
        for (broken, expected) in cases {
            let error = check_bundle(&broken).unwrap_err();
            assert!(matches!(error, Error::InvalidBundle { .. }), "{error}");
            assert!(error.to_string().contains(expected), "{error}");
        }

        let mut bad_ref = bundle.clone();
        bad_ref.ref_name = "../x".into();
        assert!(matches!(check_bundle(&bad_ref).unwrap_err(), Error::InvalidName { .. }));
    }

    #[test]
    fn name_given_twice_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_lineage(dir.path());
        let bundle = store.bundle("ft").unwrap();

        let mut ref_as_base_name = bundle.clone();
        ref_as_base_name.bases[0].names.push("ft".into());
        let mut base_listed_twice = bundle.clone();
        base_listed_twice.bases.push(bundle.bases[0].clone());
        for (broken, name) in [(ref_as_base_name, "ft"), (base_listed_twice, "tiny")] {
            let error = check_bundle(&broken).unwrap_err();
            assert!(matches!(error, Error::InvalidBundle { .. }), "{error}");
            assert!(error.to_string().contains(&format!("name {name:?} is given twice")), "{error}");
        }
    }

    #[test]
    fn base_record_under_another_id_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_lineage(dir.path());
        let mut forged = store.bundle("ft").unwrap();
        // Claim another checkpoint's id for these weights, and reseal the commits onto it, as
        // anyone who can write the bundle JSON can.
        let claimed = ObjectId::of(b"another checkpoint");
        forged.bases[0].record.id = claimed;
        let mut parent = None;
        for record in forged.commits.iter_mut().rev() {
            record.base = claimed;
            record.parent = parent;
            Catalog::seal_commit(record);
            parent = Some(record.id);
        }
        forged.commit = forged.commits[0].id;

        let error = check_bundle(&forged).unwrap_err();

        assert!(matches!(error, Error::InvalidBundle { .. }), "{error}");
        assert!(error.to_string().contains(&format!("base record {claimed} does not match the hashes of the files it lists")), "{error}");
    }

    /// Imports `bundle` into a new store beside `dir` that holds every object of `source`.
    fn import_with_objects(dir: &std::path::Path, source: &Store, bundle: &Bundle) -> (Store, Result<ImportReport, Error>) {
        let receiver = Store::init(&dir.join("receiver")).unwrap();
        for entry in &bundle.objects {
            receiver.receive_object(&entry.id, &source.objects().storage().get(&entry.id).unwrap()).unwrap();
        }
        let result = receiver.import_bundle(bundle, false);
        (receiver, result)
    }

    #[test]
    fn base_entries_must_match_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_lineage(dir.path());
        let bundle = store.bundle("ft").unwrap();
        let FileEntry::Safetensors(file) = &bundle.bases[0].record.snapshot.files[0] else { panic!("a safetensors base") };
        let position = |name: &str| file.tensors.iter().position(|t| t.name == name).unwrap();
        let (q, k) = (position("model.layers.0.self_attn.q_proj.weight"), position("model.layers.0.self_attn.k_proj.weight"));
        // The file hash, and so the base id, stay right: only the entries lie.
        let mut swapped_objects = bundle.clone();
        let mut swapped_names = bundle.clone();
        for (forged, swap_names) in [(&mut swapped_objects, false), (&mut swapped_names, true)] {
            let FileEntry::Safetensors(file) = &mut forged.bases[0].record.snapshot.files[0] else { unreachable!() };
            let (first, second) = (file.tensors[q].clone(), file.tensors[k].clone());
            if swap_names {
                file.tensors[q].name = second.name;
                file.tensors[k].name = first.name;
            } else {
                (file.tensors[q].storage, file.tensors[q].hash) = (second.storage, second.hash);
                (file.tensors[k].storage, file.tensors[k].hash) = (first.storage, first.hash);
            }
        }

        let cases = [
            (swapped_objects, "rebuilds to BLAKE3"),
            (swapped_names, "tensor \"model.layers.0.self_attn.q_proj.weight\" of the header differs from entry \"model.layers.0.self_attn.k_proj.weight\""),
        ];
        for (number, (forged, expected)) in cases.into_iter().enumerate() {
            let case_dir = dir.path().join(format!("case-{number}"));
            std::fs::create_dir(&case_dir).unwrap();
            assert!(check_bundle(&forged).is_ok(), "the bundle alone looks sound");
            let (receiver, result) = import_with_objects(&case_dir, &store, &forged);
            let error = result.unwrap_err();
            assert!(matches!(error, Error::InvalidBundle { .. }), "{error}");
            assert!(error.to_string().contains(expected), "{error}");
            assert!(receiver.catalog().list_bases().unwrap().is_empty());
            assert_eq!(receiver.catalog().get_ref("ft").unwrap(), None);
        }

        let (_, honest) = import_with_objects(dir.path(), &store, &bundle);
        assert_eq!(honest.unwrap().bases_added, 1);
    }

    #[test]
    fn bundle_of_unknown_ref_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_lineage(dir.path());

        let error = store.bundle("nope").unwrap_err();
        assert!(matches!(error, Error::Catalog(CatalogError::NotFound { kind: "ref", .. })), "{error}");
    }
}
