//! Objects as files under a directory, fanned out by the first byte of their id.
//!
//! Object `abcdef…` lives at `objects_dir/ab/cdef…`. Fan-out keeps directories near 1/256 of the
//! object count, which keeps lookups fast on filesystems with linear directory scans.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{check_range, PutOutcome, Storage, StorageError};
use crate::durable::{is_temp_name, sync_dir, write_durably, Publish};
use crate::id::ObjectId;

/// Number of fan-out directories: one per value of the first id byte.
const FANOUT_DIRS: usize = 256;

/// Hex digits of an id that name its fan-out directory.
const FANOUT_HEX_LEN: usize = 2;

/// Hex digits of an object file name: a 64-digit id minus the fan-out prefix.
const FILE_HEX_LEN: usize = 62;

/// The on-disk object store.
///
/// After any I/O error in `put` or `delete` the instance is poisoned: later writes return
/// `StorageError::Poisoned` so a failing disk cannot leave a half-recorded commit behind, while
/// reads keep working. Opening the directory again yields a fresh, writable instance.
pub struct FsStorage {
    objects_dir: PathBuf,
    poisoned: AtomicBool,
    /// Entry `i` is set once the fan-out directory for first byte `i` is known to exist with
    /// its name fsynced into `objects_dir`, so `put` can skip the mkdir and parent fsync.
    fanout_durable: Box<[AtomicBool]>,
}

impl FsStorage {
    /// Opens the store at `objects_dir`, creating the directory (and its parents) if missing.
    ///
    /// Opening does not delete crash leftovers, because another process may be writing. Call
    /// `remove_stale_temps` while this process owns the store's writer lock.
    pub fn open(objects_dir: &Path) -> Result<Self, StorageError> {
        let open_error =
            |source| StorageError::from_io("open object directory", objects_dir, source);

        if !objects_dir.is_dir() {
            fs::create_dir_all(objects_dir).map_err(open_error)?;
            if let Some(parent) = objects_dir
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
            {
                sync_dir(parent).map_err(open_error)?;
            }
        }
        // One fsync here makes every fan-out directory name that already exists durable, so
        // they can be marked as such.
        sync_dir(objects_dir).map_err(open_error)?;

        let fanout_durable: Box<[AtomicBool]> =
            (0..FANOUT_DIRS).map(|_| AtomicBool::new(false)).collect();
        for (index, flag) in fanout_durable.iter().enumerate() {
            if objects_dir.join(format!("{index:02x}")).is_dir() {
                flag.store(true, Ordering::Relaxed);
            }
        }

        Ok(FsStorage {
            objects_dir: objects_dir.to_path_buf(),
            poisoned: AtomicBool::new(false),
            fanout_durable,
        })
    }

    pub fn objects_dir(&self) -> &Path {
        &self.objects_dir
    }

    /// Path of the object file for `id`, whether or not it exists.
    pub fn object_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        let (fanout, rest) = hex.split_at(FANOUT_HEX_LEN);
        self.objects_dir.join(fanout).join(rest)
    }

    /// Returns whether an earlier write error has poisoned this instance.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Deletes `.tmp-*` files left by crashed writers and returns how many were removed.
    ///
    /// Only call this while no other process writes to the store, because it cannot tell a
    /// crash leftover from a temp file that is still being written.
    pub fn remove_stale_temps(&self) -> Result<usize, StorageError> {
        self.remove_stale_temps_listed().map(|removed| removed.len())
    }

    /// Like `remove_stale_temps`, but returns the paths of the removed files, so `fsck` can
    /// report them.
    pub fn remove_stale_temps_listed(&self) -> Result<Vec<PathBuf>, StorageError> {
        // Removals are not fsynced, because a temp file that reappears after a crash is simply
        // removed again.
        let mut removed = Vec::new();
        remove_temps_in(&self.objects_dir, &mut removed)?;
        for fanout_dir in self.fanout_dirs()? {
            remove_temps_in(&fanout_dir, &mut removed)?;
        }
        Ok(removed)
    }

    /// Existing fan-out directories, in ascending order.
    fn fanout_dirs(&self) -> Result<Vec<PathBuf>, StorageError> {
        let list_error =
            |source| StorageError::from_io("list object directory", &self.objects_dir, source);
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&self.objects_dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let name = entry.file_name();
            let is_fanout_name =
                name.len() == FANOUT_HEX_LEN && name.to_str().is_some_and(is_lower_hex);
            if is_fanout_name && entry.file_type().map_err(list_error)?.is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }

    /// Makes sure the fan-out directory of `id` exists and its name is durable.
    fn ensure_fanout_dir(&self, id: &ObjectId) -> Result<PathBuf, StorageError> {
        let first_byte = usize::from(id.as_bytes()[0]);
        let object_path = self.object_path(id);
        let fanout_dir = object_path
            .parent()
            .unwrap_or(&self.objects_dir)
            .to_path_buf();
        let flag = &self.fanout_durable[first_byte];
        if flag.load(Ordering::Acquire) {
            return Ok(fanout_dir);
        }

        let mkdir_error =
            |source| StorageError::from_io("create fan-out directory", &fanout_dir, source);
        match fs::create_dir(&fanout_dir) {
            Ok(()) => {}
            // Another thread or process created it, but may not have fsynced the parent yet.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(mkdir_error(error)),
        }
        sync_dir(&self.objects_dir).map_err(mkdir_error)?;
        flag.store(true, Ordering::Release);
        Ok(fanout_dir)
    }

    /// Runs a write operation and poisons the instance if it fails.
    fn guard_write<T>(
        &self,
        write: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if self.is_poisoned() {
            return Err(StorageError::Poisoned);
        }
        let result = write();
        if let Err(error) = &result {
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(
                objects_dir = %self.objects_dir.display(),
                %error,
                "object store write failed; rejecting further writes until the store is reopened"
            );
        }
        result
    }

    fn put_unguarded(&self, id: &ObjectId, bytes: &[u8]) -> Result<PutOutcome, StorageError> {
        let fanout_dir = self.ensure_fanout_dir(id)?;
        let path = self.object_path(id);

        // Skip writing when the object exists, which is common because identical tensors
        // recur across checkpoints. The directory fsync covers the case where another writer
        // has linked the file but not yet made the name durable.
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_file() => {
                sync_dir(&fanout_dir).map_err(|source| {
                    StorageError::from_io("sync directory", &fanout_dir, source)
                })?;
                return Ok(PutOutcome::AlreadyPresent);
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(StorageError::from_io("check object", &path, error)),
        }

        match write_durably(&path, bytes, Publish::NoClobber) {
            Ok(true) => Ok(PutOutcome::Created),
            Ok(false) => Ok(PutOutcome::AlreadyPresent),
            Err(error) => Err(StorageError::from_io("write object", &path, error)),
        }
    }

    fn delete_unguarded(&self, id: &ObjectId) -> Result<bool, StorageError> {
        let path = self.object_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(StorageError::from_io("delete object", &path, error)),
        }
        let fanout_dir = path.parent().unwrap_or(&self.objects_dir);
        sync_dir(fanout_dir)
            .map_err(|source| StorageError::from_io("sync directory", fanout_dir, source))?;
        Ok(true)
    }

    /// Maps a read error to `NotFound` when the object file is missing.
    fn read_error(id: &ObjectId, op: &'static str, path: &Path, error: io::Error) -> StorageError {
        if error.kind() == io::ErrorKind::NotFound {
            StorageError::NotFound { id: *id }
        } else {
            StorageError::from_io(op, path, error)
        }
    }
}

impl Storage for FsStorage {
    fn put(&self, id: &ObjectId, bytes: &[u8]) -> Result<PutOutcome, StorageError> {
        self.guard_write(|| self.put_unguarded(id, bytes))
    }

    fn get(&self, id: &ObjectId) -> Result<Vec<u8>, StorageError> {
        let path = self.object_path(id);
        fs::read(&path).map_err(|error| Self::read_error(id, "read object", &path, error))
    }

    fn get_range(&self, id: &ObjectId, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let path = self.object_path(id);
        let read_error = |error| Self::read_error(id, "read object", &path, error);

        let mut file = File::open(&path).map_err(read_error)?;
        let size = file.metadata().map_err(read_error)?.len();
        check_range(id, offset, len, size)?;
        // Fails only where usize is narrower than u64 and the range exceeds the address space.
        let buffer_len = usize::try_from(len).map_err(|_| StorageError::RangeOutOfBounds {
            id: *id,
            offset,
            len,
            size,
        })?;

        let mut buffer = vec![0u8; buffer_len];
        file.seek(SeekFrom::Start(offset)).map_err(read_error)?;
        file.read_exact(&mut buffer).map_err(read_error)?;
        Ok(buffer)
    }

    fn size(&self, id: &ObjectId) -> Result<u64, StorageError> {
        let path = self.object_path(id);
        fs::metadata(&path)
            .map(|metadata| metadata.len())
            .map_err(|error| Self::read_error(id, "read size of object", &path, error))
    }

    fn contains(&self, id: &ObjectId) -> Result<bool, StorageError> {
        let path = self.object_path(id);
        match fs::symlink_metadata(&path) {
            Ok(metadata) => Ok(metadata.is_file()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(StorageError::from_io("check object", &path, error)),
        }
    }

    fn delete(&self, id: &ObjectId) -> Result<bool, StorageError> {
        self.guard_write(|| self.delete_unguarded(id))
    }

    fn list(&self) -> Result<Vec<ObjectId>, StorageError> {
        let mut ids = Vec::new();
        for fanout_dir in self.fanout_dirs()? {
            let list_error =
                |source| StorageError::from_io("list object directory", &fanout_dir, source);
            let fanout_name = fanout_dir
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            for entry in fs::read_dir(&fanout_dir).map_err(list_error)? {
                let entry = entry.map_err(list_error)?;
                let name = entry.file_name();
                if is_temp_name(&name) {
                    continue;
                }
                match parse_object_name(fanout_name, &name) {
                    Some(id) if entry.file_type().map_err(list_error)?.is_file() => ids.push(id),
                    _ => {
                        tracing::warn!(path = %entry.path().display(), "skipping unexpected entry in object directory")
                    }
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn modified(&self, id: &ObjectId) -> Result<Option<std::time::SystemTime>, StorageError> {
        let path = self.object_path(id);
        let metadata = fs::symlink_metadata(&path)
            .map_err(|error| Self::read_error(id, "read modification time of object", &path, error))?;
        let modified = metadata
            .modified()
            .map_err(|error| StorageError::from_io("read modification time of object", &path, error))?;
        Ok(Some(modified))
    }
}

impl fmt::Debug for FsStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsStorage")
            .field("objects_dir", &self.objects_dir)
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses the id of the object file `file_name` in fan-out directory `fanout_name`, or returns
/// `None` for a name this store would never write.
fn parse_object_name(fanout_name: &str, file_name: &std::ffi::OsStr) -> Option<ObjectId> {
    let file_name = file_name.to_str()?;
    // Upper-case hex would parse, but `object_path` would never find the file.
    if file_name.len() != FILE_HEX_LEN || !is_lower_hex(file_name) {
        return None;
    }
    format!("{fanout_name}{file_name}").parse().ok()
}

/// Removes `.tmp-*` regular files directly inside `dir` and adds their paths to `removed`.
fn remove_temps_in(dir: &Path, removed: &mut Vec<PathBuf>) -> Result<(), StorageError> {
    let list_error = |source| StorageError::from_io("list object directory", dir, source);
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        if !is_temp_name(&entry.file_name()) || !entry.file_type().map_err(list_error)?.is_file() {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            // Its writer finished or cleaned up between the listing and the removal.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(StorageError::from_io("remove temp file", path, error)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_path_fans_out_by_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path()).unwrap();
        let id = ObjectId::of(b"");

        let path = storage.object_path(&id);

        let expected = dir
            .path()
            .join("af")
            .join("1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
        assert_eq!(path, expected);
    }

    #[test]
    fn object_name_parse_rejects_foreign_names() {
        let hex = ObjectId::of(b"").to_hex();
        let (fanout, rest) = hex.split_at(2);

        assert_eq!(
            parse_object_name(fanout, rest.as_ref()),
            Some(ObjectId::of(b""))
        );
        assert_eq!(
            parse_object_name(fanout, rest.to_uppercase().as_ref()),
            None
        );
        assert_eq!(parse_object_name(fanout, rest[1..].as_ref()), None);
        assert_eq!(parse_object_name(fanout, ".DS_Store".as_ref()), None);
    }

    #[test]
    fn open_creates_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let objects_dir = dir.path().join("store").join("objects");

        let storage = FsStorage::open(&objects_dir).unwrap();

        assert!(objects_dir.is_dir());
        assert_eq!(storage.list().unwrap(), Vec::<ObjectId>::new());
    }

    #[test]
    fn open_marks_existing_fanout_dirs() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("af")).unwrap();

        let storage = FsStorage::open(dir.path()).unwrap();

        assert!(storage.fanout_durable[0xaf].load(Ordering::Relaxed));
        assert!(!storage.fanout_durable[0xae].load(Ordering::Relaxed));
    }
}
