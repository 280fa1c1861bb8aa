//! Object storage behind one trait.
//!
//! Objects are encoded object files keyed by the `ObjectId` of their logical content. Because
//! the key fixes the content, a store never overwrites an object: a second `put` of the same id
//! leaves the first copy in place. `fs::FsStorage` is the on-disk store, `memory::MemoryStorage`
//! serves tests, and `faulty::FaultyStorage` wraps either to inject I/O failures.

pub mod faulty;
pub mod fs;
pub mod memory;
pub mod s3;

use std::io;
use std::path::PathBuf;

use crate::id::ObjectId;

/// Result of a `put`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// This call stored the object.
    Created,
    /// An object with this id was already stored and was left untouched.
    AlreadyPresent,
}

/// A content-addressed object store.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` (an encoded object file) under `id`. An existing object is left untouched,
    /// because content addressing makes it identical.
    fn put(&self, id: &ObjectId, bytes: &[u8]) -> Result<PutOutcome, StorageError>;

    /// Reads a whole object. A missing id returns `StorageError::NotFound`.
    fn get(&self, id: &ObjectId) -> Result<Vec<u8>, StorageError>;

    /// Reads `len` bytes starting at byte `offset`. A range past the end of the object returns
    /// `StorageError::RangeOutOfBounds`.
    fn get_range(&self, id: &ObjectId, offset: u64, len: u64) -> Result<Vec<u8>, StorageError>;

    /// Size of the stored object in bytes (the encoded size on disk, not the logical size).
    fn size(&self, id: &ObjectId) -> Result<u64, StorageError>;

    fn contains(&self, id: &ObjectId) -> Result<bool, StorageError>;

    /// Records that this store now references an object that is already stored, and returns
    /// whether it is. A store that shares its objects with other stores (a shared bucket) must
    /// mark the reference before it relies on the object, so that another store's `gc` keeps
    /// it; a store of its own has nothing to mark and just checks presence.
    fn adopt(&self, id: &ObjectId) -> Result<bool, StorageError> {
        self.contains(id)
    }

    /// Deletes an object and returns `false` when it was not stored.
    fn delete(&self, id: &ObjectId) -> Result<bool, StorageError>;

    /// Ids of all stored objects in ascending order.
    fn list(&self) -> Result<Vec<ObjectId>, StorageError>;

    /// Last modification time of an object, or `None` where the storage keeps no times (the
    /// in-memory store). `gc` spares unreferenced objects younger than its grace period.
    fn modified(&self, id: &ObjectId) -> Result<Option<std::time::SystemTime>, StorageError> {
        let _ = id;
        Ok(None)
    }

    /// Drops a local copy of an object that `get` serves in place of the stored one (the S3
    /// read cache), and returns whether there was one. A reader whose object fails its hash
    /// check calls this and reads again, so that a damaged cache file never passes for a
    /// damaged stored object. Storage without such a copy keeps the default.
    fn forget_cached(&self, id: &ObjectId) -> bool {
        let _ = id;
        false
    }

    /// Returns the shared-bucket side of storage that several stores may share (S3). `None`,
    /// the default, means the objects belong to this store alone.
    fn shared(&self) -> Option<&dyn SharedObjects> {
        None
    }
}

/// A gc fence not rewritten for this long is from a gc that died: writers ignore it. A running
/// gc rewrites its fence every `FENCE_REFRESH`, well inside this.
pub const FENCE_STALE: std::time::Duration = std::time::Duration::from_secs(3600);

/// How often a running gc rewrites its fence.
pub const FENCE_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

/// Reference markers and gc fences of storage shared by several stores, each with its own
/// catalog (see docs/design.md, "Shared buckets").
pub trait SharedObjects {
    /// Returns the random id of this store, the last part of its marker and fence keys.
    fn store_id(&self) -> &str;

    /// Writes (or rewrites, to keep it fresh) this store's gc fence; every other store's
    /// `put` and `adopt` then wait until it is gone before they check for the object.
    fn begin_gc(&self) -> Result<(), StorageError>;

    /// Deletes this store's gc fence.
    fn end_gc(&self) -> Result<(), StorageError>;

    /// Lists every store's reference markers.
    fn markers(&self) -> Result<Vec<s3::Marker>, StorageError>;

    /// Returns whether any store has a marker for `id`.
    fn is_marked(&self, id: &ObjectId) -> Result<bool, StorageError>;

    /// Deletes this store's marker for `id`.
    fn delete_marker(&self, id: &ObjectId) -> Result<(), StorageError>;
}

/// Error of a `Storage` operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {id} not found in the store; run `wstore fsck` to see what needs it, then add or commit that source again")]
    NotFound { id: ObjectId },

    #[error(
        "invalid range: {len} bytes at offset {offset} run past the end of object {id}, \
         which has {size} bytes"
    )]
    RangeOutOfBounds {
        id: ObjectId,
        offset: u64,
        len: u64,
        size: u64,
    },

    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        /// The operation that failed, phrased to follow "failed to", such as "read object".
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "no space left on device while trying to {op} {}: free space or move the store \
         to a larger disk, then reopen it",
        path.display()
    )]
    Full {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the store rejects writes after an I/O error; reopen it once the cause is fixed")]
    Poisoned,

    /// A request to remote object storage failed.
    #[error("failed to {op} {key}: {detail}; {hint}")]
    Remote {
        op: &'static str,
        /// The full `s3://bucket/key` of the request.
        key: String,
        detail: String,
        /// The fix to suggest to the user.
        hint: String,
    },

    /// The object storage settings are missing or invalid.
    #[error("{detail}")]
    Config { detail: String },
}

impl StorageError {
    /// Wraps an I/O error, mapping "no space left on device" (ENOSPC) and "disk quota
    /// exceeded" (EDQUOT) to `Full` so callers can tell the user to free space.
    pub fn from_io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if is_no_space(&source) {
            StorageError::Full { op, path, source }
        } else {
            StorageError::Io { op, path, source }
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    pub fn is_full(&self) -> bool {
        matches!(self, StorageError::Full { .. })
    }
}

/// Returns whether an I/O error means the filesystem has no room for the write.
pub fn is_no_space(error: &io::Error) -> bool {
    // ENOSPC is 28 on Linux, macOS and the BSDs. EDQUOT differs: 122 on Linux, 69 on macOS
    // and the BSDs.
    const ENOSPC: i32 = 28;
    #[cfg(target_os = "linux")]
    const EDQUOT: i32 = 122;
    #[cfg(not(target_os = "linux"))]
    const EDQUOT: i32 = 69;

    if !cfg!(unix) {
        return false;
    }
    matches!(error.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// Checks that `len` bytes at `offset` lie inside an object of `size` bytes and returns the
/// end offset of the range.
pub(crate) fn check_range(
    id: &ObjectId,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<u64, StorageError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(end),
        _ => Err(StorageError::RangeOutOfBounds {
            id: *id,
            offset,
            len,
            size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_maps_to_full() {
        let error = StorageError::from_io(
            "write object",
            "/store/ab/cd",
            io::Error::from_raw_os_error(28),
        );

        assert!(error.is_full());
        assert_eq!(
            error.to_string(),
            "no space left on device while trying to write object /store/ab/cd: free space or \
             move the store to a larger disk, then reopen it"
        );
    }

    #[test]
    fn other_io_error_stays_io() {
        let source = io::Error::new(io::ErrorKind::PermissionDenied, "permission denied");
        let error = StorageError::from_io("read object", "/store/ab/cd", source);

        assert!(!error.is_full());
        assert_eq!(
            error.to_string(),
            "failed to read object /store/ab/cd: permission denied"
        );
    }

    #[test]
    fn range_check_accepts_ranges_inside() {
        let id = ObjectId::of(b"object");

        assert_eq!(check_range(&id, 0, 10, 10).unwrap(), 10);
        assert_eq!(check_range(&id, 10, 0, 10).unwrap(), 10);
        assert_eq!(check_range(&id, 3, 4, 10).unwrap(), 7);
    }

    #[test]
    fn range_check_rejects_ranges_past_end() {
        let id = ObjectId::of(b"object");

        for (offset, len) in [(0, 11), (11, 0), (5, 6), (u64::MAX, 2), (2, u64::MAX)] {
            let error = check_range(&id, offset, len, 10).unwrap_err();
            assert!(
                matches!(
                    error,
                    StorageError::RangeOutOfBounds { offset: o, len: l, size: 10, .. } if o == offset && l == len
                ),
                "offset {offset} len {len}: {error:?}"
            );
        }
    }
}
