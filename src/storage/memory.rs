//! An in-memory object store for tests.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::{check_range, PutOutcome, Storage, StorageError};
use crate::id::ObjectId;

/// Objects in a map behind a mutex, lost when the process exits.
#[derive(Default)]
pub struct MemoryStorage {
    /// A `BTreeMap` so `list` comes out sorted without a separate sort.
    objects: Mutex<BTreeMap<ObjectId, Vec<u8>>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Total bytes of all stored objects.
    pub fn stored_bytes(&self) -> u64 {
        self.lock().values().map(|bytes| bytes.len() as u64).sum()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ObjectId, Vec<u8>>> {
        // Each operation changes the map in one call, so a thread that panicked while holding
        // the lock cannot have left it half-updated.
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn put(&self, id: &ObjectId, bytes: &[u8]) -> Result<PutOutcome, StorageError> {
        let mut objects = self.lock();
        if objects.contains_key(id) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        objects.insert(*id, bytes.to_vec());
        Ok(PutOutcome::Created)
    }

    fn get(&self, id: &ObjectId) -> Result<Vec<u8>, StorageError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or(StorageError::NotFound { id: *id })
    }

    fn get_range(&self, id: &ObjectId, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let objects = self.lock();
        let bytes = objects.get(id).ok_or(StorageError::NotFound { id: *id })?;
        let size = bytes.len() as u64;
        let end = check_range(id, offset, len, size)?;

        // Both bounds are at most `bytes.len()` after the check, so they fit in usize.
        let out_of_bounds = || StorageError::RangeOutOfBounds {
            id: *id,
            offset,
            len,
            size,
        };
        let start = usize::try_from(offset).map_err(|_| out_of_bounds())?;
        let end = usize::try_from(end).map_err(|_| out_of_bounds())?;
        bytes
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(out_of_bounds)
    }

    fn size(&self, id: &ObjectId) -> Result<u64, StorageError> {
        self.lock()
            .get(id)
            .map(|bytes| bytes.len() as u64)
            .ok_or(StorageError::NotFound { id: *id })
    }

    fn contains(&self, id: &ObjectId) -> Result<bool, StorageError> {
        Ok(self.lock().contains_key(id))
    }

    fn delete(&self, id: &ObjectId) -> Result<bool, StorageError> {
        Ok(self.lock().remove(id).is_some())
    }

    fn list(&self) -> Result<Vec<ObjectId>, StorageError> {
        Ok(self.lock().keys().copied().collect())
    }
}

impl fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("MemoryStorage");
        // `try_lock` because formatting may happen while this thread holds the lock.
        match self.objects.try_lock() {
            Ok(objects) => debug.field("objects", &objects.len()),
            Err(TryLockError::Poisoned(poisoned)) => {
                debug.field("objects", &poisoned.into_inner().len())
            }
            Err(TryLockError::WouldBlock) => debug.field("objects", &"<locked>"),
        };
        debug.finish()
    }
}
