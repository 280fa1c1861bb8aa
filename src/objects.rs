//! Content-addressed objects over a `Storage`: envelope, compression and verification.

use std::sync::Arc;

use crate::error::Error;
use crate::format::object::{self, ObjectKind};
use crate::id::ObjectId;
use crate::storage::{PutOutcome, Storage};

/// zstd level for object bodies: level 3 compresses float tensors within about 1 % of
/// level 19 at a small fraction of the time.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The outcome of storing one object.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub id: ObjectId,
    /// Size of the object file on disk.
    pub stored_bytes: u64,
    /// False when the object was already present (dedup).
    pub created: bool,
}

#[derive(Debug, Clone)]
pub struct ObjectStore {
    storage: Arc<dyn Storage>,
    zstd_level: i32,
}

impl ObjectStore {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        ObjectStore { storage, zstd_level: DEFAULT_ZSTD_LEVEL }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Stores `content` under its BLAKE3 id unless an object with that id exists.
    pub fn put(&self, kind: ObjectKind, content: &[u8]) -> Result<Stored, Error> {
        self.put_with_id(ObjectId::of_large(content), kind, content)
    }

    /// Like `put`, for a caller that already hashed `content` (the id must be its BLAKE3).
    pub fn put_with_id(&self, id: ObjectId, kind: ObjectKind, content: &[u8]) -> Result<Stored, Error> {
        debug_assert_eq!(id, ObjectId::of_large(content));
        // `adopt`, not `contains`: storage shared with other stores marks the reference
        // before this store relies on the present object.
        if self.storage.adopt(&id)? {
            let stored_bytes = self.storage.size(&id)?;
            return Ok(Stored { id, stored_bytes, created: false });
        }
        let file = object::encode(kind, content, self.zstd_level);
        let outcome = self.storage.put(&id, &file)?;
        Ok(Stored { id, stored_bytes: file.len() as u64, created: outcome == PutOutcome::Created })
    }

    /// Reads an object's content and checks it against its id.
    pub fn get(&self, id: &ObjectId) -> Result<Vec<u8>, Error> {
        Ok(self.get_with_kind(id)?.1)
    }

    pub fn get_with_kind(&self, id: &ObjectId) -> Result<(ObjectKind, Vec<u8>), Error> {
        self.read_checked(id, |file| decode_checked(id, file)).map(|(decoded, _)| decoded)
    }

    /// Reads an object file as stored (encoded), after checking that its content hashes to
    /// `id`, for sending to another store.
    pub fn get_file(&self, id: &ObjectId) -> Result<Vec<u8>, Error> {
        self.read_checked(id, |file| verify_file(id, file)).map(|((), file)| file)
    }

    /// Reads an object file and runs `check` on it. A file that fails the check and came from
    /// a local cache is dropped and the stored object read instead, because `fsck --repair`
    /// deletes corrupt objects and the stored one may be intact.
    fn read_checked<T>(&self, id: &ObjectId, check: impl Fn(&[u8]) -> Result<T, String>) -> Result<(T, Vec<u8>), Error> {
        let file = self.storage.get(id)?;
        match check(&file) {
            Ok(value) => return Ok((value, file)),
            Err(_) if self.storage.forget_cached(id) => {}
            Err(detail) => return Err(Error::CorruptObject { id: *id, detail }),
        }
        let file = self.storage.get(id)?;
        match check(&file) {
            Ok(value) => Ok((value, file)),
            Err(detail) => {
                // `get` has cached the bad copy again. Drop it, so that a repaired object reads clean.
                self.storage.forget_cached(id);
                Err(Error::CorruptObject { id: *id, detail })
            }
        }
    }

    pub fn contains(&self, id: &ObjectId) -> Result<bool, Error> {
        Ok(self.storage.contains(id)?)
    }

    /// Size of the object file on disk.
    pub fn stored_size(&self, id: &ObjectId) -> Result<u64, Error> {
        Ok(self.storage.size(id)?)
    }
}

/// Checks that an object file decodes and that its content hashes to `id`, like
/// `decode_checked`, but streams the content through the hash instead of keeping it. For
/// files received from another store, whose header may declare any length up to the limit.
pub fn verify_file(id: &ObjectId, file: &[u8]) -> Result<(), String> {
    let (_, hash) = object::content_hash(file).map_err(|e| e.to_string())?;
    let actual = ObjectId::from_bytes(*hash.as_bytes());
    if actual != *id {
        return Err(format!("content hashes to {actual}"));
    }
    Ok(())
}

/// Decodes an object file and checks that its content hashes to `id`. The error is the
/// reason alone, which the caller wraps with the object's id.
fn decode_checked(id: &ObjectId, file: &[u8]) -> Result<(ObjectKind, Vec<u8>), String> {
    let (header, content) = object::decode(file).map_err(|e| e.to_string())?;
    let actual = ObjectId::of_large(&content);
    if actual != *id {
        return Err(format!("content hashes to {actual}"));
    }
    Ok((header.kind, content))
}
