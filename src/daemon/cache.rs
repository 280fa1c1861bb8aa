//! A bounded least-recently-used cache of rebuilt tensors, keyed by the BLAKE3 a checkout must
//! reproduce. Only verified bytes go in, so two commits sharing a tensor share one entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

use crate::id::ObjectId;

/// Default capacity of the tensor cache, in MiB.
pub const DEFAULT_CACHE_MIB: u64 = 512;

#[derive(Debug)]
pub struct TensorCache {
    capacity_bytes: u64,
    inner: Mutex<Lru>,
}

#[derive(Debug, Default)]
struct Lru {
    entries: HashMap<ObjectId, Entry>,
    /// Use tick to key; the smallest tick is the least recently used entry.
    order: BTreeMap<u64, ObjectId>,
    next_tick: u64,
    used_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    tick: u64,
}

impl TensorCache {
    /// Creates a cache holding at most `capacity_bytes` of tensor bytes (0 disables it).
    pub fn new(capacity_bytes: u64) -> Self {
        TensorCache { capacity_bytes, inner: Mutex::new(Lru::default()) }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    /// Returns the cached bytes of `hash` and marks them as most recently used.
    pub fn get(&self, hash: &ObjectId) -> Option<Bytes> {
        let mut lru = self.lock();
        let tick = lru.bump();
        let entry = lru.entries.get_mut(hash)?;
        let old_tick = std::mem::replace(&mut entry.tick, tick);
        let bytes = entry.bytes.clone();
        lru.order.remove(&old_tick);
        lru.order.insert(tick, *hash);
        Some(bytes)
    }

    /// Inserts verified tensor bytes, evicting least recently used entries to make room. A
    /// tensor larger than the whole capacity is not cached.
    pub fn insert(&self, hash: ObjectId, bytes: Bytes) {
        let size = bytes.len() as u64;
        if size > self.capacity_bytes {
            return;
        }
        let mut lru = self.lock();
        if lru.entries.contains_key(&hash) {
            return;
        }
        while lru.used_bytes + size > self.capacity_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(evicted) = lru.entries.remove(&oldest) {
                lru.used_bytes -= evicted.bytes.len() as u64;
            }
        }
        let tick = lru.bump();
        lru.order.insert(tick, hash);
        lru.entries.insert(hash, Entry { bytes, tick });
        lru.used_bytes += size;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // A panic while holding the lock leaves the maps consistent (every step above is a
        // single insert or remove), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Lru {
    fn bump(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::of(&[n])
    }

    #[test]
    fn evicts_least_recently_used() {
        let cache = TensorCache::new(10);
        cache.insert(id(1), Bytes::from(vec![1; 4]));
        cache.insert(id(2), Bytes::from(vec![2; 4]));
        assert_eq!(cache.get(&id(1)).as_deref(), Some(&[1u8; 4][..]));
        cache.insert(id(3), Bytes::from(vec![3; 4]));
        assert!(cache.get(&id(2)).is_none());
        assert!(cache.get(&id(1)).is_some());
        assert!(cache.get(&id(3)).is_some());
        assert_eq!(cache.used_bytes(), 8);
    }

    #[test]
    fn oversized_tensor_is_not_cached() {
        let cache = TensorCache::new(10);
        cache.insert(id(1), Bytes::from(vec![1; 11]));
        assert!(cache.get(&id(1)).is_none());
        assert_eq!(cache.used_bytes(), 0);
    }

    #[test]
    fn zero_capacity_disables_cache() {
        let cache = TensorCache::new(0);
        cache.insert(id(1), Bytes::from(vec![1; 1]));
        assert!(cache.get(&id(1)).is_none());
    }

    #[test]
    fn repeated_insert_counts_once() {
        let cache = TensorCache::new(10);
        cache.insert(id(1), Bytes::from(vec![1; 4]));
        cache.insert(id(1), Bytes::from(vec![1; 4]));
        assert_eq!(cache.used_bytes(), 4);
    }
}
