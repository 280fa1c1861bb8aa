//! A storage wrapper that injects I/O faults, for disk-full and crash tests.
//!
//! Like `FsStorage`, a `FaultyStorage` poisons itself after a failed write: later `put` and
//! `delete` calls return `StorageError::Poisoned` while reads keep working. Wrapping the same
//! inner store in a new `FaultyStorage` plays the part of reopening the store.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{PutOutcome, Storage, StorageError};
use crate::id::ObjectId;

/// ENOSPC on Linux, macOS and the BSDs.
const ENOSPC: i32 = 28;

/// `put_fault_number` value meaning that no put fails.
const NO_PUT_FAULT: u64 = 0;

/// `remaining_budget` value meaning that puts may store any number of bytes.
const UNLIMITED_BUDGET: u64 = u64::MAX;

/// Wrapper around any store that fails chosen operations. All settings can change while in use.
#[derive(Debug)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    /// Number of `put` calls so far, including rejected ones.
    puts_attempted: AtomicU64,
    /// 1-based number of the `put` call that fails, or `NO_PUT_FAULT`.
    put_fault_number: AtomicU64,
    /// Whether the failing put stores the object before returning its error, like a write
    /// whose data reached the disk but whose final fsync failed.
    put_fault_after_store: AtomicBool,
    /// Bytes that puts of new objects may still store before failing with `Full`.
    remaining_budget: AtomicU64,
    fail_reads: AtomicBool,
    corrupt_reads: AtomicBool,
    poisoned: AtomicBool,
}

impl FaultyStorage {
    /// Wraps `inner` with no faults enabled.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultyStorage {
            inner,
            puts_attempted: AtomicU64::new(0),
            put_fault_number: AtomicU64::new(NO_PUT_FAULT),
            put_fault_after_store: AtomicBool::new(false),
            remaining_budget: AtomicU64::new(UNLIMITED_BUDGET),
            fail_reads: AtomicBool::new(false),
            corrupt_reads: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
        }
    }

    pub fn inner(&self) -> &Arc<dyn Storage> {
        &self.inner
    }

    /// Makes the `n`th `put` call on this wrapper (counting from 1, including calls already
    /// made) fail with an I/O error without storing anything. `n = 0` disables the fault.
    pub fn fail_nth_put(&self, n: u64) {
        self.put_fault_after_store.store(false, Ordering::SeqCst);
        self.put_fault_number.store(n, Ordering::SeqCst);
    }

    /// Like `fail_nth_put`, but the failing put stores the object in the inner store first,
    /// so the caller sees an error for an object that nevertheless exists.
    pub fn fail_nth_put_after_storing(&self, n: u64) {
        self.put_fault_after_store.store(true, Ordering::SeqCst);
        self.put_fault_number.store(n, Ordering::SeqCst);
    }

    /// Lets puts of new objects store `bytes` more bytes. The put that would go past the
    /// budget stores nothing and fails with `StorageError::Full`, as on a full disk.
    pub fn set_byte_budget(&self, bytes: u64) {
        self.remaining_budget.store(bytes, Ordering::SeqCst);
    }

    /// Removes the byte budget set by `set_byte_budget`.
    pub fn clear_byte_budget(&self) {
        self.remaining_budget
            .store(UNLIMITED_BUDGET, Ordering::SeqCst);
    }

    /// Bytes that puts may still store, or `None` when no budget is set.
    pub fn remaining_budget(&self) -> Option<u64> {
        match self.remaining_budget.load(Ordering::SeqCst) {
            UNLIMITED_BUDGET => None,
            bytes => Some(bytes),
        }
    }

    /// Makes `get`, `get_range` and `size` fail with an I/O error while `fail` is true.
    /// `contains` and `list` keep working.
    pub fn set_fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// Flips the lowest bit of the first byte of every non-empty `get` and `get_range`
    /// result while `corrupt` is true, as a silently corrupted disk would.
    pub fn set_corrupt_reads(&self, corrupt: bool) {
        self.corrupt_reads.store(corrupt, Ordering::SeqCst);
    }

    /// Returns whether an injected or inner write failure has poisoned this wrapper.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    pub fn puts_attempted(&self) -> u64 {
        self.puts_attempted.load(Ordering::SeqCst)
    }

    /// Poisons the wrapper and passes `error` through.
    fn poison(&self, error: StorageError) -> StorageError {
        self.poisoned.store(true, Ordering::SeqCst);
        error
    }

    /// Takes `bytes` from the budget and returns false when the budget is too small.
    fn reserve_budget(&self, bytes: u64) -> bool {
        self.remaining_budget
            .fetch_update(
                Ordering::SeqCst,
                Ordering::SeqCst,
                |remaining| match remaining {
                    UNLIMITED_BUDGET => Some(UNLIMITED_BUDGET),
                    remaining => remaining.checked_sub(bytes),
                },
            )
            .is_ok()
    }

    fn refund_budget(&self, bytes: u64) {
        // The closure always returns `Some`, so `fetch_update` cannot fail.
        let _ =
            self.remaining_budget
                .fetch_update(
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                    |remaining| match remaining {
                        UNLIMITED_BUDGET => Some(UNLIMITED_BUDGET),
                        remaining => {
                            Some(remaining.saturating_add(bytes).min(UNLIMITED_BUDGET - 1))
                        }
                    },
                );
    }

    fn check_reads(&self, id: &ObjectId) -> Result<(), StorageError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                op: "read object",
                path: injected_path(id),
                source: io::Error::other("injected read failure"),
            });
        }
        Ok(())
    }

    fn maybe_corrupt(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        if self.corrupt_reads.load(Ordering::SeqCst) {
            if let Some(first) = bytes.first_mut() {
                *first ^= 1;
            }
        }
        bytes
    }
}

impl Storage for FaultyStorage {
    fn put(&self, id: &ObjectId, bytes: &[u8]) -> Result<PutOutcome, StorageError> {
        let put_number = self.puts_attempted.fetch_add(1, Ordering::SeqCst) + 1;
        if self.is_poisoned() {
            return Err(StorageError::Poisoned);
        }

        if put_number == self.put_fault_number.load(Ordering::SeqCst) {
            if self.put_fault_after_store.load(Ordering::SeqCst) {
                self.inner
                    .put(id, bytes)
                    .map_err(|error| self.poison(error))?;
            }
            return Err(self.poison(StorageError::Io {
                op: "write object",
                path: injected_path(id),
                source: io::Error::other(format!("injected failure of put number {put_number}")),
            }));
        }

        // A present object costs no space, as in `FsStorage`, which skips the write.
        if self
            .inner
            .contains(id)
            .map_err(|error| self.poison(error))?
        {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let byte_count = bytes.len() as u64;
        if !self.reserve_budget(byte_count) {
            return Err(self.poison(StorageError::Full {
                op: "write object",
                path: injected_path(id),
                source: io::Error::from_raw_os_error(ENOSPC),
            }));
        }

        match self.inner.put(id, bytes) {
            Ok(PutOutcome::Created) => Ok(PutOutcome::Created),
            Ok(PutOutcome::AlreadyPresent) => {
                // Another thread stored it between `contains` and `put`.
                self.refund_budget(byte_count);
                Ok(PutOutcome::AlreadyPresent)
            }
            Err(error) => {
                self.refund_budget(byte_count);
                Err(self.poison(error))
            }
        }
    }

    fn get(&self, id: &ObjectId) -> Result<Vec<u8>, StorageError> {
        self.check_reads(id)?;
        self.inner.get(id).map(|bytes| self.maybe_corrupt(bytes))
    }

    fn get_range(&self, id: &ObjectId, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        self.check_reads(id)?;
        self.inner
            .get_range(id, offset, len)
            .map(|bytes| self.maybe_corrupt(bytes))
    }

    fn size(&self, id: &ObjectId) -> Result<u64, StorageError> {
        self.check_reads(id)?;
        self.inner.size(id)
    }

    fn contains(&self, id: &ObjectId) -> Result<bool, StorageError> {
        self.inner.contains(id)
    }

    fn delete(&self, id: &ObjectId) -> Result<bool, StorageError> {
        if self.is_poisoned() {
            return Err(StorageError::Poisoned);
        }
        self.inner.delete(id).map_err(|error| self.poison(error))
    }

    fn list(&self) -> Result<Vec<ObjectId>, StorageError> {
        self.inner.list()
    }

    fn modified(&self, id: &ObjectId) -> Result<Option<std::time::SystemTime>, StorageError> {
        self.inner.modified(id)
    }
}

/// Stand-in path for injected errors, which have no real file.
fn injected_path(id: &ObjectId) -> PathBuf {
    PathBuf::from(format!("<injected>/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    fn wrap_memory() -> (Arc<MemoryStorage>, FaultyStorage) {
        let inner = Arc::new(MemoryStorage::new());
        let faulty = FaultyStorage::new(inner.clone());
        (inner, faulty)
    }

    #[test]
    fn nth_put_fails_and_poisons() {
        let (inner, faulty) = wrap_memory();
        faulty.fail_nth_put(2);
        let first = ObjectId::of(b"first");
        let second = ObjectId::of(b"second");
        let third = ObjectId::of(b"third");

        assert_eq!(faulty.put(&first, b"first").unwrap(), PutOutcome::Created);
        let error = faulty.put(&second, b"second").unwrap_err();
        assert!(
            matches!(
                error,
                StorageError::Io {
                    op: "write object",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(faulty.is_poisoned());
        assert!(matches!(
            faulty.put(&third, b"third"),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(faulty.delete(&first), Err(StorageError::Poisoned)));

        assert_eq!(faulty.get(&first).unwrap(), b"first");
        assert_eq!(inner.list().unwrap(), vec![first]);
        assert_eq!(faulty.puts_attempted(), 3);
    }

    #[test]
    fn nth_put_after_storing_keeps_object() {
        let (inner, faulty) = wrap_memory();
        faulty.fail_nth_put_after_storing(1);
        let id = ObjectId::of(b"object");

        assert!(faulty.put(&id, b"object").is_err());

        assert!(faulty.is_poisoned());
        assert_eq!(inner.get(&id).unwrap(), b"object");
    }

    #[test]
    fn reopening_clears_poison() {
        let (inner, faulty) = wrap_memory();
        faulty.fail_nth_put(1);
        let id = ObjectId::of(b"object");
        assert!(faulty.put(&id, b"object").is_err());

        let reopened = FaultyStorage::new(inner);

        assert_eq!(reopened.put(&id, b"object").unwrap(), PutOutcome::Created);
    }

    #[test]
    fn byte_budget_fails_put_with_full() {
        let (inner, faulty) = wrap_memory();
        faulty.set_byte_budget(10);
        let small = ObjectId::of(b"small");
        let large = ObjectId::of(b"large");

        assert_eq!(faulty.put(&small, &[1u8; 6]).unwrap(), PutOutcome::Created);
        assert_eq!(faulty.remaining_budget(), Some(4));
        // A present object needs no space.
        assert_eq!(
            faulty.put(&small, &[1u8; 6]).unwrap(),
            PutOutcome::AlreadyPresent
        );
        let error = faulty.put(&large, &[2u8; 5]).unwrap_err();

        assert!(error.is_full(), "{error:?}");
        assert!(
            error.to_string().starts_with("no space left on device"),
            "{error}"
        );
        assert_eq!(faulty.remaining_budget(), Some(4));
        assert!(faulty.is_poisoned());
        assert_eq!(inner.list().unwrap(), vec![small]);
    }

    #[test]
    fn budget_exactly_used_up_succeeds() {
        let (_inner, faulty) = wrap_memory();
        faulty.set_byte_budget(8);

        let outcome = faulty.put(&ObjectId::of(b"eight"), &[0u8; 8]).unwrap();

        assert_eq!(outcome, PutOutcome::Created);
        assert_eq!(faulty.remaining_budget(), Some(0));
        faulty.clear_byte_budget();
        assert_eq!(faulty.remaining_budget(), None);
    }

    #[test]
    fn failed_reads_leave_listing_working() {
        let (_inner, faulty) = wrap_memory();
        let id = ObjectId::of(b"object");
        faulty.put(&id, b"object").unwrap();
        faulty.set_fail_reads(true);

        assert!(matches!(
            faulty.get(&id),
            Err(StorageError::Io {
                op: "read object",
                ..
            })
        ));
        assert!(matches!(
            faulty.get_range(&id, 0, 1),
            Err(StorageError::Io { .. })
        ));
        assert!(matches!(faulty.size(&id), Err(StorageError::Io { .. })));
        assert!(faulty.contains(&id).unwrap());
        assert_eq!(faulty.list().unwrap(), vec![id]);
        assert!(!faulty.is_poisoned());

        faulty.set_fail_reads(false);
        assert_eq!(faulty.get(&id).unwrap(), b"object");
    }

    #[test]
    fn corrupt_reads_flip_first_bit() {
        let (_inner, faulty) = wrap_memory();
        let id = ObjectId::of(b"object");
        faulty.put(&id, &[0x10, 0x20, 0x30]).unwrap();
        faulty.set_corrupt_reads(true);

        assert_eq!(faulty.get(&id).unwrap(), vec![0x11, 0x20, 0x30]);
        assert_eq!(faulty.get_range(&id, 1, 2).unwrap(), vec![0x21, 0x30]);
        assert_eq!(faulty.get_range(&id, 3, 0).unwrap(), Vec::<u8>::new());
    }
}
