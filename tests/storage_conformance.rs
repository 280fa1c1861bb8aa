//! One conformance suite run on every `Storage` implementation, plus `FsStorage` crash,
//! disk-full and poisoning tests.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

mod common;

use wstore::durable::{DurableFile, Publish};
use wstore::id::ObjectId;
use wstore::storage::faulty::FaultyStorage;
use wstore::storage::fs::FsStorage;
use wstore::storage::memory::MemoryStorage;
use wstore::storage::s3::{S3Location, S3Storage, PART_BYTES};
use wstore::storage::{PutOutcome, Storage, StorageError};

/// Deterministic pseudo-random bytes, different for each `seed`.
fn sample_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, and enough to make every object distinct.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Stores `bytes` under the id of their own content, as the store's callers do.
fn put_content(storage: &dyn Storage, bytes: &[u8]) -> (ObjectId, PutOutcome) {
    let id = ObjectId::of(bytes);
    let outcome = storage.put(&id, bytes).unwrap();
    (id, outcome)
}

/// Runs every conformance check on an empty store.
fn check_storage(storage: &dyn Storage) {
    let mut expected = BTreeSet::new();

    check_starts_empty(storage);
    check_round_trip(storage, &mut expected);
    check_put_twice(storage, &mut expected);
    check_missing_id(storage);
    check_get_range(storage, &mut expected);
    check_delete(storage);
    check_concurrent_same_id(storage, &mut expected);
    check_concurrent_different_ids(storage, &mut expected);
    check_list_sorted(storage, &expected);
}

fn check_starts_empty(storage: &dyn Storage) {
    assert_eq!(
        storage.list().unwrap(),
        Vec::<ObjectId>::new(),
        "{storage:?}"
    );
}

fn check_round_trip(storage: &dyn Storage, expected: &mut BTreeSet<ObjectId>) {
    for (seed, len) in [(1, 0), (2, 1), (3, 4096), (4, 1 << 20)] {
        let bytes = sample_bytes(seed, len);

        let (id, outcome) = put_content(storage, &bytes);

        assert_eq!(outcome, PutOutcome::Created, "{storage:?} len {len}");
        assert_eq!(storage.get(&id).unwrap(), bytes, "{storage:?} len {len}");
        assert_eq!(
            storage.size(&id).unwrap(),
            len as u64,
            "{storage:?} len {len}"
        );
        assert!(storage.contains(&id).unwrap(), "{storage:?} len {len}");
        expected.insert(id);
    }
}

fn check_put_twice(storage: &dyn Storage, expected: &mut BTreeSet<ObjectId>) {
    let bytes = sample_bytes(10, 777);
    let (id, first) = put_content(storage, &bytes);

    let second = storage.put(&id, &bytes).unwrap();
    // Same id with other bytes, as a second encoding of the same content would be: the
    // stored copy must stay.
    let third = storage.put(&id, b"other encoding").unwrap();

    assert_eq!(first, PutOutcome::Created, "{storage:?}");
    assert_eq!(second, PutOutcome::AlreadyPresent, "{storage:?}");
    assert_eq!(third, PutOutcome::AlreadyPresent, "{storage:?}");
    assert_eq!(storage.get(&id).unwrap(), bytes, "{storage:?}");
    expected.insert(id);
}

fn check_missing_id(storage: &dyn Storage) {
    let missing = ObjectId::of(b"never stored");

    let get = storage.get(&missing).unwrap_err();
    let range = storage.get_range(&missing, 0, 1).unwrap_err();
    let size = storage.size(&missing).unwrap_err();

    assert!(
        matches!(get, StorageError::NotFound { id } if id == missing),
        "{storage:?}: {get:?}"
    );
    assert!(
        matches!(range, StorageError::NotFound { id } if id == missing),
        "{storage:?}: {range:?}"
    );
    assert!(
        matches!(size, StorageError::NotFound { id } if id == missing),
        "{storage:?}: {size:?}"
    );
    assert_eq!(
        get.to_string(),
        format!("object {missing} not found in the store; run `wstore fsck` to see what needs it, then add or commit that source again")
    );
    assert!(!storage.contains(&missing).unwrap(), "{storage:?}");
    assert!(!storage.delete(&missing).unwrap(), "{storage:?}");
}

fn check_get_range(storage: &dyn Storage, expected: &mut BTreeSet<ObjectId>) {
    let bytes: Vec<u8> = (0..100u8).collect();
    let (id, _) = put_content(storage, &bytes);
    expected.insert(id);

    for (offset, len) in [(0u64, 100u64), (10, 5), (99, 1), (100, 0), (0, 0)] {
        let range = storage.get_range(&id, offset, len).unwrap();
        let start = offset as usize;
        let end = (offset + len) as usize;
        assert_eq!(
            range,
            &bytes[start..end],
            "{storage:?} offset {offset} len {len}"
        );
    }

    for (offset, len) in [
        (0u64, 101u64),
        (101, 0),
        (50, 51),
        (u64::MAX, 1),
        (1, u64::MAX),
    ] {
        let error = storage.get_range(&id, offset, len).unwrap_err();
        assert!(
            matches!(
                error,
                StorageError::RangeOutOfBounds { id: error_id, offset: o, len: l, size: 100 }
                    if error_id == id && o == offset && l == len
            ),
            "{storage:?} offset {offset} len {len}: {error:?}"
        );
    }
}

fn check_delete(storage: &dyn Storage) {
    let bytes = sample_bytes(20, 300);
    let (id, _) = put_content(storage, &bytes);

    assert!(storage.delete(&id).unwrap(), "{storage:?}");
    assert!(!storage.contains(&id).unwrap(), "{storage:?}");
    assert!(storage.get(&id).unwrap_err().is_not_found(), "{storage:?}");
    assert!(!storage.list().unwrap().contains(&id), "{storage:?}");
    assert!(!storage.delete(&id).unwrap(), "{storage:?}");

    // A deleted object can be stored again.
    assert_eq!(
        storage.put(&id, &bytes).unwrap(),
        PutOutcome::Created,
        "{storage:?}"
    );
    assert!(storage.delete(&id).unwrap(), "{storage:?}");
}

fn check_concurrent_same_id(storage: &dyn Storage, expected: &mut BTreeSet<ObjectId>) {
    const WRITERS: usize = 8;
    const READERS: usize = 2;
    let bytes = sample_bytes(30, 512 * 1024);
    let id = ObjectId::of(&bytes);
    let start = Barrier::new(WRITERS + READERS);

    let outcomes: Vec<PutOutcome> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    storage.put(&id, &bytes).unwrap()
                })
            })
            .collect();
        for _ in 0..READERS {
            scope.spawn(|| {
                start.wait();
                // A reader sees either no object or all of it, never a prefix.
                for _ in 0..200 {
                    match storage.get(&id) {
                        Ok(read) => assert!(
                            read == bytes,
                            "{storage:?}: torn read of {} bytes",
                            read.len()
                        ),
                        Err(error) => assert!(error.is_not_found(), "{storage:?}: {error:?}"),
                    }
                }
            });
        }
        writers
            .into_iter()
            .map(|writer| writer.join().unwrap())
            .collect()
    });

    let created = outcomes
        .iter()
        .filter(|outcome| **outcome == PutOutcome::Created)
        .count();
    assert_eq!(created, 1, "{storage:?}: {outcomes:?}");
    assert_eq!(storage.get(&id).unwrap(), bytes, "{storage:?}");
    expected.insert(id);
}

fn check_concurrent_different_ids(storage: &dyn Storage, expected: &mut BTreeSet<ObjectId>) {
    const THREADS: u64 = 8;
    const OBJECTS_PER_THREAD: u64 = 8;

    let stored: Vec<(ObjectId, PutOutcome, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                scope.spawn(move || {
                    (0..OBJECTS_PER_THREAD)
                        .map(|index| {
                            let bytes =
                                sample_bytes(1000 + thread * OBJECTS_PER_THREAD + index, 2000);
                            let (id, outcome) = put_content(storage, &bytes);
                            (id, outcome, bytes)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap())
            .collect()
    });

    assert_eq!(stored.len() as u64, THREADS * OBJECTS_PER_THREAD);
    for (id, outcome, bytes) in stored {
        assert_eq!(outcome, PutOutcome::Created, "{storage:?} {id:?}");
        assert_eq!(storage.get(&id).unwrap(), bytes, "{storage:?} {id:?}");
        expected.insert(id);
    }
}

fn check_list_sorted(storage: &dyn Storage, expected: &BTreeSet<ObjectId>) {
    let listed = storage.list().unwrap();

    let expected: Vec<ObjectId> = expected.iter().copied().collect();
    // Round trip 4, put twice 1, get_range 1, concurrent same id 1, concurrent ids 64.
    assert_eq!(listed.len(), 71, "{storage:?}");
    assert_eq!(listed, expected, "{storage:?}");
}

#[test]
fn memory_storage_conforms() {
    check_storage(&MemoryStorage::new());
}

#[test]
fn fs_storage_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(&dir.path().join("objects")).unwrap();

    check_storage(&storage);

    assert_eq!(
        temp_files_under(storage.objects_dir()),
        Vec::<PathBuf>::new()
    );
}

/// Opens S3 storage on the shared Garage under a fresh prefix, or returns `None` to skip.
fn s3_storage(label: &str, cache_dir: &Path, cache_bytes: u64) -> Option<S3Storage> {
    let garage = common::s3::garage()?;
    let location = S3Location::parse(&garage.fresh_url(label)).unwrap();
    Some(S3Storage::open(location, &garage.credentials(), "conformance", cache_dir, cache_bytes).unwrap())
}

#[test]
fn s3_storage_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let Some(storage) = s3_storage("conform", &dir.path().join("cache"), 0) else { return };
    check_storage(&storage);
    // Distinct uploads: round trip 4, put twice 1, get_range 1, delete 2, same id 1, ids 64.
    assert_eq!(storage.uploads(), 73);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "a disabled cache writes nothing");
}

#[test]
fn s3_storage_with_read_cache_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let Some(storage) = s3_storage("conform-cached", &dir.path().join("cache"), 4 << 20) else { return };
    check_storage(&storage);
    let (files, bytes) = storage.cache().unwrap().usage();
    assert_eq!(fs::read_dir(dir.path().join("cache")).unwrap().count(), files);
    assert!(bytes <= 4 << 20, "cache holds {bytes} bytes");
}

#[test]
fn s3_multipart_round_trip_and_ranges_across_parts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(storage) = s3_storage("multipart", &dir.path().join("cache"), 0) else { return };
    // Two whole parts and a short third one.
    let len = 2 * PART_BYTES + 12345;
    let bytes = sample_bytes(77, len);
    let (id, outcome) = put_content(&storage, &bytes);

    assert_eq!(outcome, PutOutcome::Created);
    assert_eq!(storage.size(&id).unwrap(), len as u64);
    assert_eq!(storage.get(&id).unwrap(), bytes);
    let boundary = PART_BYTES as u64;
    let range = storage.get_range(&id, boundary - 10, 20).unwrap();
    assert_eq!(range, &bytes[PART_BYTES - 10..PART_BYTES + 10]);
    assert_eq!(storage.put(&id, &bytes).unwrap(), PutOutcome::AlreadyPresent);
    assert_eq!(storage.uploads(), 1);
    assert_eq!(storage.list().unwrap(), vec![id]);
}

#[test]
fn faulty_storage_over_memory_conforms() {
    check_storage(&FaultyStorage::new(Arc::new(MemoryStorage::new())));
}

#[test]
fn faulty_storage_over_fs_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let inner = FsStorage::open(dir.path()).unwrap();

    check_storage(&FaultyStorage::new(Arc::new(inner)));
}

/// Lists every `.tmp-*` file in `dir` and its subdirectories, sorted.
fn temp_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut temps = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            temps.extend(temp_files_under(&path));
        } else if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            temps.push(path);
        }
    }
    temps.sort();
    temps
}

#[test]
fn fs_layout_fans_out_by_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).unwrap();
    let bytes = sample_bytes(40, 123);

    let (id, _) = put_content(&storage, &bytes);

    let hex = id.to_hex();
    let path = dir.path().join(&hex[..2]).join(&hex[2..]);
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(storage.object_path(&id), path);
}

#[test]
fn fs_reopen_keeps_objects() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_bytes(41, 5000);
    let id = {
        let storage = FsStorage::open(dir.path()).unwrap();
        put_content(&storage, &bytes).0
    };

    let reopened = FsStorage::open(dir.path()).unwrap();

    assert_eq!(reopened.list().unwrap(), vec![id]);
    assert_eq!(reopened.get(&id).unwrap(), bytes);
    assert_eq!(
        reopened.put(&id, &bytes).unwrap(),
        PutOutcome::AlreadyPresent
    );
}

#[test]
fn fs_crash_temps_ignored_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).unwrap();
    let bytes = sample_bytes(42, 4096);
    let (id, _) = put_content(&storage, &bytes);
    let fanout_dir = storage.object_path(&id).parent().unwrap().to_path_buf();
    // Leftovers of writers that crashed: mid-write, after linking but before unlinking the
    // temp, and in the objects directory itself.
    fs::write(fanout_dir.join(".tmp-1f-0-00000000deadbeef"), &bytes[..100]).unwrap();
    fs::write(fanout_dir.join(".tmp-1f-1-00000000cafef00d"), &bytes).unwrap();
    fs::write(dir.path().join(".tmp-2a-0-0000000000000001"), b"partial").unwrap();

    assert_eq!(storage.list().unwrap(), vec![id]);
    assert_eq!(storage.get(&id).unwrap(), bytes);

    assert_eq!(storage.remove_stale_temps().unwrap(), 3);
    assert_eq!(temp_files_under(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(storage.remove_stale_temps().unwrap(), 0);
    assert_eq!(storage.get(&id).unwrap(), bytes);
}

#[test]
fn fs_list_skips_foreign_entries() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).unwrap();
    let (id, _) = put_content(&storage, &sample_bytes(43, 64));
    let fanout_dir = storage.object_path(&id).parent().unwrap().to_path_buf();
    fs::write(fanout_dir.join(".DS_Store"), b"x").unwrap();
    fs::write(dir.path().join("README"), b"x").unwrap();
    fs::create_dir(dir.path().join("zz")).unwrap();

    assert_eq!(storage.list().unwrap(), vec![id]);
}

#[test]
fn fs_write_error_poisons_store() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).unwrap();
    let (stored, _) = put_content(&storage, &sample_bytes(44, 256));
    let blocked_bytes = sample_bytes(45, 256);
    let blocked = ObjectId::of(&blocked_bytes);
    // A regular file where the fan-out directory should be makes the put fail with ENOTDIR,
    // even for root, who passes every permission check.
    let blocked_fanout = storage
        .object_path(&blocked)
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        !blocked_fanout.exists(),
        "choose another seed: fan-out dir already used"
    );
    fs::write(&blocked_fanout, b"not a directory").unwrap();

    let error = storage.put(&blocked, &blocked_bytes).unwrap_err();

    assert!(
        matches!(&error, StorageError::Io { path, .. } if *path == storage.object_path(&blocked)),
        "{error:?}"
    );
    assert!(storage.is_poisoned());
    let other_bytes = sample_bytes(46, 256);
    let other = ObjectId::of(&other_bytes);
    let poisoned = storage.put(&other, &other_bytes).unwrap_err();
    assert!(matches!(poisoned, StorageError::Poisoned), "{poisoned:?}");
    assert_eq!(
        poisoned.to_string(),
        "the store rejects writes after an I/O error; reopen it once the cause is fixed"
    );
    assert!(matches!(
        storage.delete(&stored),
        Err(StorageError::Poisoned)
    ));
    assert_eq!(storage.get(&stored).unwrap(), sample_bytes(44, 256));
    assert_eq!(storage.list().unwrap(), vec![stored]);

    let reopened = FsStorage::open(dir.path()).unwrap();
    assert!(!reopened.is_poisoned());
    assert_eq!(
        reopened.put(&other, &other_bytes).unwrap(),
        PutOutcome::Created
    );
}

#[test]
fn durable_file_drop_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.safetensors");

    let mut file = DurableFile::create(&target).unwrap();
    file.write_all(&sample_bytes(47, 3 << 20)).unwrap();
    drop(file);

    assert!(!target.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn durable_file_commit_no_clobber_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("object");
    fs::write(&target, b"first").unwrap();

    let mut file = DurableFile::create(&target).unwrap();
    file.write_all(b"second").unwrap();
    let created = file.commit(Publish::NoClobber).unwrap();

    assert!(!created);
    assert_eq!(fs::read(&target).unwrap(), b"first");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// A tmpfs mounted for one test and unmounted on drop, even when the test fails.
struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (a `mount -o size=` value) at `dir`, or returns why it could not.
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|error| format!("failed to run mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(TmpfsMount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        match Command::new("umount").arg(&self.dir).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("failed to unmount {}: {other:?}", self.dir.display()),
        }
    }
}

#[test]
fn fs_disk_full_fails_cleanly() {
    const OBJECT_BYTES: usize = 200 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let _mount = match TmpfsMount::mount(dir.path(), "1m") {
        Ok(mount) => mount,
        Err(reason) => {
            eprintln!("skipping fs_disk_full_fails_cleanly: {reason}");
            return;
        }
    };
    let objects_dir = dir.path().join("objects");
    let storage = FsStorage::open(&objects_dir).unwrap();

    // Five 200 KiB objects need 1000 KiB of the 1024 KiB filesystem, so the sixth put fails
    // at the latest. Because tmpfs counts whole 4 KiB pages, one fewer may fit.
    let mut stored = Vec::new();
    let error = loop {
        assert!(
            stored.len() < 6,
            "1 MiB tmpfs accepted {} objects of 200 KiB",
            stored.len()
        );
        let bytes = sample_bytes(100 + stored.len() as u64, OBJECT_BYTES);
        let id = ObjectId::of(&bytes);
        match storage.put(&id, &bytes) {
            Ok(outcome) => {
                assert_eq!(outcome, PutOutcome::Created);
                stored.push((id, bytes));
            }
            Err(error) => break error,
        }
    };

    assert!(stored.len() >= 4, "only {} objects fit", stored.len());
    assert!(error.is_full(), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("no space left on device while trying to write object "),
        "{error}"
    );
    assert!(storage.is_poisoned());
    assert!(matches!(
        storage.put(&ObjectId::of(b"tiny"), b"tiny"),
        Err(StorageError::Poisoned)
    ));
    assert_eq!(temp_files_under(&objects_dir), Vec::<PathBuf>::new());
    let mut stored_ids: Vec<ObjectId> = stored.iter().map(|(id, _)| *id).collect();
    stored_ids.sort();
    assert_eq!(storage.list().unwrap(), stored_ids);
    for (id, bytes) in &stored {
        assert_eq!(&storage.get(id).unwrap(), bytes, "{id:?}");
    }

    // Freeing space and reopening makes the store writable again.
    let reopened = FsStorage::open(&objects_dir).unwrap();
    assert!(reopened.delete(&stored[0].0).unwrap());
    assert_eq!(
        reopened.put(&ObjectId::of(b"tiny"), b"tiny").unwrap(),
        PutOutcome::Created
    );
}
