//! A bounded local cache of whole objects read from S3, under `STORE/cache/`.
//!
//! Each cached object is a file named `<id hex>.<size in bytes>`, written atomically (temp
//! file, fsync, rename). The size in the name lets a read detect a truncated or damaged file
//! without asking the server; such a file is dropped and the object fetched again. Files are
//! evicted least recently used first, so that their total size stays within the limit.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::durable::{is_temp_name, write_durably, Publish};
use crate::id::ObjectId;

#[derive(Debug)]
struct Entry {
    size: u64,
    /// Value of `State::clock` at the last use; the smallest is evicted first.
    last_used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<ObjectId, Entry>,
    total_bytes: u64,
    clock: u64,
}

/// The read cache. A limit of 0 bytes disables it.
#[derive(Debug)]
pub struct ReadCache {
    dir: PathBuf,
    limit_bytes: u64,
    state: Mutex<State>,
}

impl ReadCache {
    /// Opens the cache in `dir`, creating it, and indexes the files already there (oldest
    /// modification first, so the least recently written go first).
    pub fn open(dir: &Path, limit_bytes: u64) -> std::io::Result<ReadCache> {
        let cache = ReadCache { dir: dir.to_path_buf(), limit_bytes, state: Mutex::new(State::default()) };
        if limit_bytes == 0 {
            return Ok(cache);
        }
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if is_temp_name(&name) {
                // A leftover of an interrupted write; the cache belongs to one open store.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some((id, size)) = name.to_str().and_then(parse_name) else { continue };
            let modified = entry.metadata()?.modified().ok();
            found.push((modified, id, size));
        }
        found.sort();
        {
            let mut state = cache.lock();
            for (_, id, size) in found {
                state.clock += 1;
                let last_used = state.clock;
                state.entries.insert(id, Entry { size, last_used });
                state.total_bytes += size;
            }
        }
        cache.evict_to(0);
        Ok(cache)
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Number of cached objects and their total bytes.
    pub fn usage(&self) -> (usize, u64) {
        let state = self.lock();
        (state.entries.len(), state.total_bytes)
    }

    /// The whole cached object, or `None` when it is not cached or its file is bad.
    pub fn get(&self, id: &ObjectId) -> Option<Vec<u8>> {
        let size = self.touch(id)?;
        match fs::read(self.path(id, size)) {
            Ok(bytes) if bytes.len() as u64 == size => Some(bytes),
            _ => {
                self.drop_entry(id);
                None
            }
        }
    }

    /// `len` bytes at `offset` of a cached object; `None` when the object is not cached whole
    /// or its file is bad. The caller has checked the range against the object's size.
    pub fn get_range(&self, id: &ObjectId, offset: u64, len: u64) -> Option<Vec<u8>> {
        let size = self.touch(id)?;
        let read = || -> std::io::Result<Vec<u8>> {
            let mut file = File::open(self.path(id, size))?;
            if file.metadata()?.len() != size {
                return Err(std::io::Error::other("cached file has the wrong size"));
            }
            file.seek(SeekFrom::Start(offset))?;
            let mut bytes = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
            file.read_exact(&mut bytes)?;
            Ok(bytes)
        };
        match read() {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                self.drop_entry(id);
                None
            }
        }
    }

    /// Size of a cached object, if cached.
    pub fn size(&self, id: &ObjectId) -> Option<u64> {
        self.lock().entries.get(id).map(|entry| entry.size)
    }

    /// Keeps a whole object. Objects larger than the limit are not cached; a write error only
    /// leaves the object uncached, because the cache is an optimisation.
    pub fn insert(&self, id: &ObjectId, bytes: &[u8]) {
        let size = bytes.len() as u64;
        if size > self.limit_bytes || self.size(id).is_some() {
            return;
        }
        self.evict_to(size);
        if let Err(error) = write_durably(&self.path(id, size), bytes, Publish::Replace) {
            tracing::warn!(object = %id, error = %error, "could not write the read cache");
            return;
        }
        let mut state = self.lock();
        state.clock += 1;
        let last_used = state.clock;
        if state.entries.insert(*id, Entry { size, last_used }).is_none() {
            state.total_bytes += size;
        }
        drop(state);
        // Another thread may have filled the room meanwhile.
        self.evict_to(0);
    }

    /// Drops a cached object (after a delete, or when its bytes failed their hash check), and
    /// returns whether it was cached.
    pub fn remove(&self, id: &ObjectId) -> bool {
        self.drop_entry(id)
    }

    /// Evicts least recently used files until `incoming` more bytes fit within the limit.
    fn evict_to(&self, incoming: u64) {
        let mut state = self.lock();
        while state.total_bytes + incoming > self.limit_bytes {
            let Some((&oldest, _)) = state.entries.iter().min_by_key(|(_, entry)| entry.last_used) else { break };
            if let Some(entry) = state.entries.remove(&oldest) {
                state.total_bytes -= entry.size;
                let _ = fs::remove_file(self.path(&oldest, entry.size));
            }
        }
    }

    /// Marks an object used and returns its size.
    fn touch(&self, id: &ObjectId) -> Option<u64> {
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(id)?;
        entry.last_used = clock;
        Some(entry.size)
    }

    fn drop_entry(&self, id: &ObjectId) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.entries.remove(id) else { return false };
        state.total_bytes -= entry.size;
        let _ = fs::remove_file(self.path(id, entry.size));
        true
    }

    fn path(&self, id: &ObjectId, size: u64) -> PathBuf {
        self.dir.join(format!("{}.{size}", id.to_hex()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every unlock, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Parses `<id hex>.<size>`.
fn parse_name(name: &str) -> Option<(ObjectId, u64)> {
    let (hex, size) = name.split_once('.')?;
    Some((hex.parse().ok()?, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReadCache::open(dir.path(), 250).unwrap();
        let (a, b, c) = (ObjectId::of(b"a"), ObjectId::of(b"b"), ObjectId::of(b"c"));
        cache.insert(&a, &[1; 100]);
        cache.insert(&b, &[2; 100]);
        assert_eq!(cache.get(&a), Some(vec![1; 100]));
        cache.insert(&c, &[3; 100]);
        assert_eq!(cache.usage(), (2, 200));
        assert_eq!(cache.get(&b), None);
        assert_eq!(cache.get_range(&c, 10, 5), Some(vec![3; 5]));
        cache.insert(&ObjectId::of(b"big"), &[4; 251]);
        assert_eq!(cache.usage(), (2, 200));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn damaged_file_is_dropped_and_reopen_keeps_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = ObjectId::of(b"a");
        {
            let cache = ReadCache::open(dir.path(), 1000).unwrap();
            cache.insert(&a, &[7; 64]);
        }
        let cache = ReadCache::open(dir.path(), 1000).unwrap();
        assert_eq!(cache.usage(), (1, 64));
        fs::write(dir.path().join(format!("{}.64", a.to_hex())), [7; 10]).unwrap();
        assert_eq!(cache.get(&a), None);
        assert_eq!(cache.usage(), (0, 0));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
