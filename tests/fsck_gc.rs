//! `fsck` finds each kind of damage made to a real store, `gc` deletes exactly the objects no
//! record reaches, and removals reject what would leave records behind without what they need.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{checkout_bytes, commit, reopen};
use wstore::catalog::{CommitRecord, FileEntry, Removal, TensorEntry, TensorStorage};
use wstore::codec::ultradelta::Settings;
use wstore::format::object::ObjectKind;
use wstore::id::ObjectId;
use wstore::progress::NoProgress;
use wstore::storage::faulty::FaultyStorage;
use wstore::storage::fs::FsStorage;
use wstore::storage::{Storage, StorageError};
use wstore::store::{CodecChoice, CommitOptions, Finding, FindingKind, FsckOptions, GcOptions, LossyOptions};
use wstore::{Error, Store};

/// A store with base "tiny" and the lossless commit "task-a" of its fine-tune.
struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    base_path: PathBuf,
    finetune_path: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (base_path, finetune_path) = wstore::synth::write_tiny_family(dir.path(), 7).unwrap();
        let store = Store::init(&dir.path().join("store")).unwrap();
        store.add_base("tiny", &base_path, &NoProgress).unwrap();
        commit(&store, &finetune_path, "tiny", Some("task-a")).unwrap();
        Fixture { dir, store, base_path, finetune_path }
    }

    fn commit_record(&self, name: &str) -> CommitRecord {
        let id = self.store.catalog().resolve_commit(name).unwrap();
        self.store.catalog().get_commit(&id).unwrap().unwrap()
    }

    fn object_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.store.root().join("objects").join(&hex[..2]).join(&hex[2..])
    }

    fn reopen(self) -> Fixture {
        let root = self.store.root().to_path_buf();
        drop(self.store);
        Fixture { store: reopen(&root), ..self }
    }
}

/// Returns the first lossless delta of a commit: its tensor name and delta object.
fn first_delta(record: &CommitRecord) -> (String, ObjectId) {
    record
        .snapshot
        .tensors()
        .find_map(|t| match &t.storage {
            TensorStorage::LosslessDelta { object, .. } => Some((t.name.clone(), *object)),
            _ => None,
        })
        .unwrap()
}

/// Runs fsck and returns the findings of problem kinds (orphans and stale temps left out).
fn problems(store: &Store, full: bool) -> Vec<Finding> {
    let report = store.fsck(&FsckOptions { full, repair: false }).unwrap();
    report.findings.into_iter().filter(|f| f.kind.is_problem()).collect()
}

fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}

/// Stores `record` (changed by the caller) under a new id and ref, as a buggy writer would.
fn put_altered(store: &Store, mut record: CommitRecord, ref_name: &str) -> ObjectId {
    record.message = format!("altered for {ref_name}");
    wstore::catalog::Catalog::seal_commit(&mut record);
    store.catalog().put_commit(&record, Some(ref_name), None).unwrap();
    record.id
}

/// Applies `change` to the entry of `tensor` in every file of `record`.
fn alter_tensor(record: &mut CommitRecord, tensor: &str, mut change: impl FnMut(&mut TensorEntry)) {
    for file in &mut record.snapshot.files {
        if let FileEntry::Safetensors(st) = file {
            st.tensors.iter_mut().filter(|t| t.name == tensor).for_each(&mut change);
        }
    }
}

#[test]
fn fresh_store_is_clean() {
    let fx = Fixture::new();

    let report = fx.store.fsck(&FsckOptions { full: true, repair: false }).unwrap();

    assert_eq!(report.findings, Vec::<Finding>::new());
    assert!(report.is_clean());
    assert_eq!(report.bases, 1);
    assert_eq!(report.commits, 1);
    assert_eq!(report.refs, 1);
    assert_eq!(report.objects, fx.store.objects().storage().list().unwrap().len());
    // 4 attention projections and 3 MLP matrices in each of 2 layers change.
    assert_eq!(report.deltas, 14);
    assert_eq!(report.files_rebuilt, 2);
}

#[test]
fn flipped_byte_is_corrupt_object() {
    let fx = Fixture::new();
    let record = fx.commit_record("task-a");
    let (tensor, delta) = first_delta(&record);
    let path = fx.object_path(&delta);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let found = problems(&fx.store, true);

    assert_eq!(kinds(&found), vec![FindingKind::CorruptObject]);
    assert_eq!(found[0].object, Some(delta));
    assert_eq!(found[0].commit, Some(record.id));
    assert_eq!(found[0].name.as_deref(), Some(tensor.as_str()));
}

#[test]
fn deleted_object_is_missing_object() {
    let fx = Fixture::new();
    let record = fx.commit_record("task-a");
    let FileEntry::Safetensors(file) = &record.snapshot.files[0] else { panic!("expected a safetensors file") };
    std::fs::remove_file(fx.object_path(&file.header_object)).unwrap();

    let found = problems(&fx.store, true);

    assert_eq!(kinds(&found), vec![FindingKind::MissingObject]);
    assert_eq!(found[0].object, Some(file.header_object));
    assert_eq!(found[0].commit, Some(record.id));
    assert_eq!(found[0].name.as_deref(), Some("finetune.safetensors (header)"));
}

#[test]
fn stray_object_is_orphan_and_clean() {
    let fx = Fixture::new();
    let stray = fx.store.objects().put(ObjectKind::Raw, b"written by a commit that was killed").unwrap();

    let report = fx.store.fsck(&FsckOptions::default()).unwrap();

    assert!(report.is_clean());
    assert_eq!(kinds(&report.findings), vec![FindingKind::OrphanObject]);
    assert_eq!(report.findings[0].object, Some(stray.id));
}

#[test]
fn garbage_delta_is_undecodable() {
    let fx = Fixture::new();
    let garbage = fx.store.objects().put(ObjectKind::LosslessDelta, b"WSLD but not really a payload").unwrap();
    let mut record = fx.commit_record("task-a");
    let (tensor, _) = first_delta(&record);
    alter_tensor(&mut record, &tensor, |entry| {
        if let TensorStorage::LosslessDelta { object, .. } = &mut entry.storage {
            *object = garbage.id;
        }
    });
    let altered = put_altered(&fx.store, record, "broken");

    let found = problems(&fx.store, true);

    assert_eq!(kinds(&found), vec![FindingKind::UndecodableDelta]);
    assert_eq!(found[0].object, Some(garbage.id));
    assert_eq!(found[0].commit, Some(altered));
    assert_eq!(found[0].name.as_deref(), Some(tensor.as_str()));
}

#[test]
fn delta_of_wrong_kind_is_undecodable() {
    let fx = Fixture::new();
    let mut record = fx.commit_record("task-a");
    let (tensor, delta) = first_delta(&record);
    alter_tensor(&mut record, &tensor, |entry| {
        if let TensorStorage::LosslessDelta { base_name, base_object, object } = entry.storage.clone() {
            entry.storage = TensorStorage::UltraDelta { base_name, base_object, object };
        }
    });
    put_altered(&fx.store, record, "mislabelled");

    let found = problems(&fx.store, false);

    assert_eq!(kinds(&found), vec![FindingKind::UndecodableDelta]);
    assert_eq!(found[0].object, Some(delta));
    assert!(found[0].detail.contains("LosslessDelta object"), "{}", found[0].detail);
}

#[test]
fn wrong_tensor_hash_is_hash_mismatch() {
    let fx = Fixture::new();
    let mut record = fx.commit_record("task-a");
    let (tensor, delta) = first_delta(&record);
    alter_tensor(&mut record, &tensor, |entry| entry.hash = ObjectId::of(b"not the tensor"));
    let altered = put_altered(&fx.store, record, "wrong-hash");

    let found = problems(&fx.store, false);

    assert_eq!(kinds(&found), vec![FindingKind::HashMismatch]);
    assert_eq!(found[0].object, Some(delta));
    assert_eq!(found[0].commit, Some(altered));
}

#[test]
fn wrong_file_hash_needs_full() {
    let fx = Fixture::new();
    let mut record = fx.commit_record("task-a");
    if let FileEntry::Safetensors(st) = &mut record.snapshot.files[0] {
        st.file_hash = ObjectId::of(b"not the file");
    }
    let altered = put_altered(&fx.store, record, "wrong-file");

    assert_eq!(problems(&fx.store, false), Vec::<Finding>::new());
    let found = problems(&fx.store, true);

    assert_eq!(kinds(&found), vec![FindingKind::HashMismatch]);
    assert_eq!(found[0].commit, Some(altered));
    assert_eq!(found[0].name.as_deref(), Some("finetune.safetensors"));
}

#[test]
fn ref_to_removed_commit_dangles() {
    let fx = Fixture::new();
    let record = fx.commit_record("task-a");
    let removal = Removal { commits: vec![(record.id, record.base)], ..Default::default() };
    fx.store.catalog().remove(&removal).unwrap();

    let found = problems(&fx.store, false);

    assert_eq!(kinds(&found), vec![FindingKind::DanglingRef]);
    assert_eq!(found[0].name.as_deref(), Some("task-a"));
    assert_eq!(found[0].commit, Some(record.id));
}

#[test]
fn removed_parent_is_missing_parent() {
    let fx = Fixture::new();
    let parent = fx.commit_record("task-a");
    commit(&fx.store, &fx.base_path, "tiny", Some("task-a")).unwrap();
    let child = fx.commit_record("task-a");
    fx.store.catalog().remove(&Removal { commits: vec![(parent.id, parent.base)], ..Default::default() }).unwrap();

    let found = problems(&fx.store, false);

    assert_eq!(kinds(&found), vec![FindingKind::MissingParent]);
    assert_eq!(found[0].commit, Some(child.id));
    assert_eq!(found[0].parent, Some(parent.id));
}

#[test]
fn removed_base_record_is_missing_base() {
    let fx = Fixture::new();
    let record = fx.commit_record("task-a");
    fx.store.catalog().remove(&Removal { bases: vec![record.base], ..Default::default() }).unwrap();

    let found = problems(&fx.store, false);

    assert_eq!(kinds(&found), vec![FindingKind::MissingBase, FindingKind::MissingBase]);
    let by_commit = found.iter().find(|f| f.commit.is_some()).unwrap();
    assert_eq!(by_commit.commit, Some(record.id));
    assert_eq!(by_commit.base, Some(record.base));
    let by_name = found.iter().find(|f| f.name.is_some()).unwrap();
    assert_eq!(by_name.name.as_deref(), Some("tiny"));
    assert_eq!(by_name.base, Some(record.base));
}

#[test]
fn damaged_records_are_corrupt_records() {
    let fx = Fixture::new();
    let record = fx.commit_record("task-a");
    let root = fx.store.root().to_path_buf();
    drop(fx.store);
    {
        // Like `reopen`, wait until sled's threads have released the lock.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let db = loop {
            match sled::open(root.join("catalog")) {
                Ok(db) => break db,
                Err(error) if std::time::Instant::now() < deadline => {
                    eprintln!("retrying sled::open: {error}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("{error}"),
            }
        };
        let commits = db.open_tree("commits").unwrap();
        let mut tampered = record.clone();
        tampered.message = "rewritten after the fact".into();
        commits.insert(record.id.as_bytes(), serde_json::to_vec(&tampered).unwrap()).unwrap();
        commits.insert([7u8; 32], b"{not json".as_slice()).unwrap();
        db.flush().unwrap();
    }
    let store = reopen(&root);

    let found = problems(&store, false);

    assert_eq!(kinds(&found), vec![FindingKind::CorruptRecord, FindingKind::CorruptRecord]);
    assert!(found.iter().any(|f| f.commit == Some(record.id)), "{found:?}");
    assert!(found.iter().any(|f| f.detail.contains("070707070707")), "{found:?}");
    let error = store.gc(&GcOptions { dry_run: false, grace: Duration::ZERO }).unwrap_err();
    assert!(matches!(error, Error::Catalog(wstore::catalog::CatalogError::Corrupt { .. })), "{error:?}");
}

#[test]
fn leftover_temp_is_stale_temp_and_removed() {
    let fx = Fixture::new();
    let fanout = std::fs::read_dir(fx.store.root().join("objects")).unwrap().next().unwrap().unwrap().path();
    let temp = fanout.join(".tmp-12345-0-deadbeef");
    std::fs::write(&temp, b"half an object").unwrap();
    let fx = fx.reopen();

    let report = fx.store.fsck(&FsckOptions::default()).unwrap();

    assert!(report.is_clean());
    assert_eq!(kinds(&report.findings), vec![FindingKind::StaleTemp]);
    assert_eq!(report.findings[0].path.as_deref(), Some(temp.as_path()));
    assert!(!temp.exists());
}

/// Stores two objects no record names and returns their ids and total on-disk bytes.
fn two_orphans(store: &Store) -> (Vec<ObjectId>, u64) {
    let first = store.objects().put(ObjectKind::Raw, &[3u8; 1000]).unwrap();
    let second = store.objects().put(ObjectKind::Raw, b"orphan two").unwrap();
    let mut ids = vec![first.id, second.id];
    ids.sort();
    (ids, first.stored_bytes + second.stored_bytes)
}

fn object_files(store: &Store) -> Vec<ObjectId> {
    store.objects().storage().list().unwrap()
}

#[test]
fn gc_deletes_only_orphans() {
    let fx = Fixture::new();
    let before = object_files(&fx.store);
    let (orphans, orphan_bytes) = two_orphans(&fx.store);

    let report = fx.store.gc(&GcOptions { dry_run: false, grace: Duration::ZERO }).unwrap();

    assert_eq!(report.deleted, orphans);
    assert_eq!(report.freed_bytes, orphan_bytes);
    assert_eq!(report.reachable, before.len());
    assert_eq!(report.spared_recent, 0);
    assert_eq!(object_files(&fx.store), before);
    let out = fx.dir.path().join("out.safetensors");
    assert_eq!(checkout_bytes(&fx.store, "task-a", &out), std::fs::read(&fx.finetune_path).unwrap());
    assert_eq!(checkout_bytes(&fx.store, "tiny", &out), std::fs::read(&fx.base_path).unwrap());
    assert_eq!(fx.store.fsck(&FsckOptions { full: true, repair: false }).unwrap().findings, Vec::<Finding>::new());
}

#[test]
fn gc_dry_run_deletes_nothing() {
    let fx = Fixture::new();
    let (orphans, orphan_bytes) = two_orphans(&fx.store);
    let before = object_files(&fx.store);

    let report = fx.store.gc(&GcOptions { dry_run: true, grace: Duration::ZERO }).unwrap();

    assert!(report.dry_run);
    assert_eq!(report.deleted, orphans);
    assert_eq!(report.freed_bytes, orphan_bytes);
    assert_eq!(object_files(&fx.store), before);
}

#[test]
fn gc_spares_objects_within_grace() {
    let fx = Fixture::new();
    let before_orphans = object_files(&fx.store);
    two_orphans(&fx.store);
    let before = object_files(&fx.store);

    let report = fx.store.gc(&GcOptions::default()).unwrap();

    assert_eq!(report.deleted, Vec::<ObjectId>::new());
    assert_eq!(report.spared_recent, 2);
    assert_eq!(report.reachable, before_orphans.len());
    assert_eq!(object_files(&fx.store), before);
}

#[test]
fn gc_after_rm_frees_commit_objects() {
    let fx = Fixture::new();
    let record = fx.commit_record("task-a");
    let base_id = fx.store.catalog().resolve_base("tiny").unwrap();
    let base = fx.store.catalog().get_base(&base_id).unwrap().unwrap();
    let file_objects = base.snapshot.files.iter().map(|f| match f {
        FileEntry::Safetensors(st) => st.header_object,
        FileEntry::Plain(p) => p.object,
    });
    let base_objects: std::collections::HashSet<ObjectId> = base.snapshot.tensors().map(|t| t.hash).chain(file_objects).collect();
    let mut only_commit: Vec<ObjectId> = object_files(&fx.store).into_iter().filter(|id| !base_objects.contains(id)).collect();
    only_commit.sort();
    let only_commit_bytes: u64 = only_commit.iter().map(|id| fx.store.objects().stored_size(id).unwrap()).sum();

    assert_eq!(fx.store.remove_ref("task-a").unwrap(), record.id);
    assert_eq!(fx.store.remove_commit(&record.id.to_hex()[..12]).unwrap(), record.id);
    let report = fx.store.gc(&GcOptions { dry_run: false, grace: Duration::ZERO }).unwrap();

    // The header, the new head and 14 deltas.
    assert_eq!(only_commit.len(), 16);
    assert_eq!(report.deleted, only_commit);
    assert_eq!(report.freed_bytes, only_commit_bytes);
    assert_eq!(record.stored_bytes, only_commit_bytes);
    let out = fx.dir.path().join("base.safetensors");
    assert_eq!(checkout_bytes(&fx.store, "tiny", &out), std::fs::read(&fx.base_path).unwrap());
    assert_eq!(fx.store.fsck(&FsckOptions { full: true, repair: false }).unwrap().findings, Vec::<Finding>::new());
}

#[test]
fn rm_commit_rejected_while_needed() {
    let fx = Fixture::new();
    let first = fx.commit_record("task-a");
    commit(&fx.store, &fx.base_path, "tiny", Some("task-a")).unwrap();
    let second = fx.commit_record("task-a");

    let error = fx.store.remove_commit(&first.id.to_hex()).unwrap_err();
    assert!(matches!(error, Error::HasDependants { .. }), "{error:?}");
    assert!(error.to_string().contains(&format!("child commit {}", second.id.short())), "{error}");

    let error = fx.store.remove_commit(&second.id.to_hex()).unwrap_err();
    assert!(error.to_string().contains("ref task-a"), "{error}");

    fx.store.remove_ref("task-a").unwrap();
    fx.store.remove_commit(&second.id.to_hex()).unwrap();
    fx.store.remove_commit(&first.id.to_hex()).unwrap();
    assert_eq!(fx.store.catalog().list_commits().unwrap(), Vec::<CommitRecord>::new());
    assert!(fx.store.fsck(&FsckOptions::default()).unwrap().is_clean());
}

#[test]
fn rm_unknown_ref_is_not_found() {
    let fx = Fixture::new();

    let error = fx.store.remove_ref("no-such-ref").unwrap_err();

    assert!(matches!(error, Error::Catalog(wstore::catalog::CatalogError::NotFound { kind: "ref", .. })), "{error:?}");
}

#[test]
fn base_rm_lists_dependants() {
    let fx = Fixture::new();
    let record = fx.commit_record("task-a");
    fx.store.add_base("tiny-alias", &fx.base_path, &NoProgress).unwrap();

    let only_name = fx.store.remove_base("tiny", false).unwrap();
    assert!(!only_name.base_removed);
    assert_eq!(only_name.names, vec!["tiny".to_string()]);

    let error = fx.store.remove_base("tiny-alias", false).unwrap_err();
    assert!(matches!(error, Error::HasDependants { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!("commit {} (ref task-a)", record.id.short())), "{message}");
    assert!(message.contains("--with-commits"), "{message}");
    assert_eq!(fx.store.catalog().list_commits().unwrap().len(), 1);

    let removal = fx.store.remove_base("tiny-alias", true).unwrap();
    assert!(removal.base_removed);
    assert_eq!(removal.commits, vec![record.id]);
    assert_eq!(removal.refs, vec!["task-a".to_string()]);
    assert!(fx.store.fsck(&FsckOptions::default()).unwrap().is_clean());
    let report = fx.store.gc(&GcOptions { dry_run: false, grace: Duration::ZERO }).unwrap();
    assert_eq!(report.reachable, 0);
    assert_eq!(object_files(&fx.store), Vec::<ObjectId>::new());
}

#[test]
fn lossy_commit_checks_clean() {
    let fx = Fixture::new();
    let settings = Settings { sparsity: Some(0.5), bits: Some(8), ..Default::default() };
    let options = CommitOptions {
        base: "tiny".into(),
        name: Some("task-lossy".into()),
        codec: CodecChoice::UltraDelta(LossyOptions { settings, accept_error: true, ..Default::default() }),
        ..Default::default()
    };
    fx.store.commit(&fx.finetune_path, &options, &NoProgress).unwrap();
    let record = fx.commit_record("task-lossy");
    let lossy = record.snapshot.tensors().filter(|t| matches!(t.storage, TensorStorage::UltraDelta { .. })).count();

    let report = fx.store.fsck(&FsckOptions { full: true, repair: false }).unwrap();

    assert_eq!(report.findings, Vec::<Finding>::new());
    assert_eq!(lossy, 14);
    assert_eq!(report.deltas, 28);
    assert_eq!(report.files_rebuilt, 3);
}

#[test]
fn io_error_blocks_writes_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, finetune_path) = wstore::synth::write_tiny_family(dir.path(), 9).unwrap();
    let root = dir.path().join("store");
    let inner = Arc::new(FsStorage::open(&root.join("objects")).unwrap());
    let faulty = Arc::new(FaultyStorage::new(inner.clone()));
    let store = Store::open_with_storage(&root, faulty.clone()).unwrap();
    store.add_base("tiny", &base_path, &NoProgress).unwrap();
    faulty.fail_nth_put(faulty.puts_attempted() + 2);

    let first = commit(&store, &finetune_path, "tiny", Some("task")).unwrap_err();
    let second = commit(&store, &finetune_path, "tiny", Some("task")).unwrap_err();

    assert!(matches!(first, Error::Storage(StorageError::Io { op: "write object", .. })), "{first:?}");
    assert!(matches!(second, Error::Storage(StorageError::Poisoned)), "{second:?}");
    assert_eq!(second.to_string(), "the store rejects writes after an I/O error; reopen it once the cause is fixed");
    assert_eq!(store.catalog().list_commits().unwrap(), Vec::<CommitRecord>::new());
    drop(store);

    let reopened = reopen(&root);
    assert!(reopened.fsck(&FsckOptions::default()).unwrap().is_clean());
    commit(&reopened, &finetune_path, "tiny", Some("task")).unwrap();
    let out = dir.path().join("out.safetensors");
    assert_eq!(checkout_bytes(&reopened, "task", &out), std::fs::read(&finetune_path).unwrap());
}

#[test]
fn disk_full_commit_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, finetune_path) = wstore::synth::write_tiny_family(dir.path(), 10).unwrap();
    let root = dir.path().join("store");
    let inner = Arc::new(FsStorage::open(&root.join("objects")).unwrap());
    let faulty = Arc::new(FaultyStorage::new(inner));
    let store = Store::open_with_storage(&root, faulty.clone()).unwrap();
    store.add_base("tiny", &base_path, &NoProgress).unwrap();
    let listing_before = serde_json::to_string(&store.list().unwrap()).unwrap();
    faulty.set_byte_budget(4096);

    let error = commit(&store, &finetune_path, "tiny", Some("task")).unwrap_err();

    assert!(matches!(error, Error::Storage(StorageError::Full { .. })), "{error:?}");
    assert!(error.to_string().starts_with("no space left on device while trying to write object"), "{error}");
    assert_eq!(serde_json::to_string(&store.list().unwrap()).unwrap(), listing_before);
    drop(store);
    let reopened = reopen(&root);
    assert!(reopened.fsck(&FsckOptions { full: true, repair: false }).unwrap().is_clean());
}

#[test]
fn repair_deletes_no_object_it_could_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, finetune_path) = wstore::synth::write_tiny_family(dir.path(), 11).unwrap();
    let root = dir.path().join("store");
    let inner = Arc::new(FsStorage::open(&root.join("objects")).unwrap());
    let faulty = Arc::new(FaultyStorage::new(inner.clone()));
    let store = Store::open_with_storage(&root, faulty.clone()).unwrap();
    store.add_base("tiny", &base_path, &NoProgress).unwrap();
    commit(&store, &finetune_path, "tiny", Some("task")).unwrap();
    let stored = inner.list().unwrap();
    // A failed read does not mean the bytes are bad (a flaky disk, an unreachable bucket).
    faulty.set_fail_reads(true);

    let error = store.fsck(&FsckOptions { full: false, repair: true }).unwrap_err();

    assert!(matches!(error, Error::Storage(StorageError::Io { op: "read object", .. })), "{error:?}");
    assert_eq!(inner.list().unwrap(), stored);
    faulty.set_fail_reads(false);
    assert!(store.fsck(&FsckOptions { full: true, repair: false }).unwrap().is_clean());
}

fn wstore(store: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wstore"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("WSTORE_HOME")
        .output()
        .unwrap()
}

#[test]
fn cli_exit_codes_and_json() {
    let fx = Fixture::new();
    let root = fx.store.root().to_path_buf();
    let record = fx.commit_record("task-a");
    let (_, delta) = first_delta(&record);
    let delta_path = fx.object_path(&delta);
    drop(fx.store);

    let clean = wstore(&root, &["fsck", "--json"]);
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stderr));
    let json: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(json["clean"], true);
    assert_eq!(json["problems"], 0);
    assert_eq!(json["report"]["commits"], 1);

    let mut bytes = std::fs::read(&delta_path).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&delta_path, bytes).unwrap();
    let damaged = wstore(&root, &["fsck"]);
    assert_eq!(damaged.status.code(), Some(1));
    let text = String::from_utf8_lossy(&damaged.stdout);
    assert!(text.contains(&format!("corrupt_object: object {delta}, commit {}", record.id)), "{text}");
    assert!(text.contains("1 problems found"), "{text}");

    let gc = wstore(&root, &["gc", "--dry-run", "--grace", "0s", "--json"]);
    assert_eq!(gc.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(json["deleted"], serde_json::json!([]));

    let rm = wstore(&root, &["base", "rm", "tiny"]);
    assert_eq!(rm.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&rm.stderr).contains("(ref task-a)"));
    let rm = wstore(&root, &["rm", "task-a"]);
    assert_eq!(rm.status.code(), Some(0));
    let rm = wstore(&root, &["rm"]);
    assert_eq!(rm.status.code(), Some(2));
}

#[test]
fn cli_waits_for_locked_store() {
    let fx = Fixture::new();
    let root = fx.store.root().to_path_buf();

    let started = std::time::Instant::now();
    let timed_out = wstore(&root, &["ls", "--lock-timeout", "1"]);
    assert_eq!(timed_out.status.code(), Some(2));
    let message = String::from_utf8_lossy(&timed_out.stderr);
    assert!(message.contains("stayed locked by another wstore process for 1 s"), "{message}");
    assert!(started.elapsed() >= Duration::from_secs(1));

    let waiting = std::process::Command::new(env!("CARGO_BIN_EXE_wstore"))
        .args(["--store", root.to_str().unwrap(), "ls", "--json", "--lock-timeout", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(fx.store);
    let output = waiting.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("waiting for another wstore process"));
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listing["commits"][0]["refs"][0], "task-a");
}

/// A corrupt object blocks its own repair (the source's objects look present), so
/// `fsck --repair` deletes it; committing the source again then restores it.
#[test]
fn repair_then_recommit_restores_object() {
    let fx = Fixture::new();
    let record = fx.commit_record("task-a");
    let (_, delta) = first_delta(&record);
    let path = fx.object_path(&delta);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let repaired = fx.store.fsck(&FsckOptions { full: false, repair: true }).unwrap();
    assert_eq!(repaired.removed_corrupt, vec![delta]);
    assert!(!path.exists());
    assert_eq!(kinds(&problems(&fx.store, false)), vec![FindingKind::MissingObject]);

    commit(&fx.store, &fx.finetune_path, "tiny", Some("task-a")).unwrap();
    assert!(path.exists());
    assert_eq!(problems(&fx.store, true), Vec::<Finding>::new());
}
