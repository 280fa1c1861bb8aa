//! Reading a checkpoint from disk: one safetensors file, a sharded checkpoint's index, or a
//! model directory. Every safetensors header is validated before anything is stored.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;

use crate::catalog::Layout;
use crate::error::Error;
use crate::format::safetensors::{self, Header};
use crate::id::ObjectId;

/// Suffix that marks a sharded checkpoint's index file.
pub const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// Cap on an index file's size; real ones are a few hundred KiB even for 70B models.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// A file's bytes, memory-mapped (or empty: a zero-length file cannot be mapped).
pub struct FileBytes {
    map: Option<Mmap>,
}

impl FileBytes {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        if len == 0 {
            return Ok(FileBytes { map: None });
        }
        // SAFETY: the map is read-only, and inputs should not be written while they are read.
        // If one changes anyway, `Checkpoint::verify_unchanged` rejects the commit.
        // NOTE: truncating the file instead ends the process with SIGBUS; the store is unharmed.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("mmap", path, e))?;
        Ok(FileBytes { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Drops the pages of `offset..offset + len` from this process's resident set once they are
    /// processed. They stay in the page cache and fault back in if read again, so memory stays
    /// near one tensor even though the whole file is mapped.
    pub fn release(&self, offset: usize, len: usize) {
        if let Some(map) = &self.map {
            // SAFETY: the map is a read-only shared mapping of a file, for which MADV_DONTNEED
            // only drops resident pages; later reads see the same file contents.
            #[allow(unsafe_code)]
            let result = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
            if let Err(error) = result {
                tracing::debug!(%error, "madvise(DONTNEED) failed; memory use may grow with the file");
            }
        }
    }

    /// BLAKE3 of the whole file, read in windows that are released as they are hashed.
    fn hash(&self) -> ObjectId {
        const WINDOW: usize = 256 << 20;
        let bytes = self.bytes();
        let mut hasher = blake3::Hasher::new();
        for (i, window) in bytes.chunks(WINDOW).enumerate() {
            hasher.update_rayon(window);
            self.release(i * WINDOW, window.len());
        }
        ObjectId::from_bytes(*hasher.finalize().as_bytes())
    }
}

/// One file of an input checkpoint.
pub struct InputFile {
    /// Path inside the checkpoint, `/`-separated; for a single file, its file name.
    pub rel_path: String,
    pub abs_path: PathBuf,
    pub data: FileBytes,
    /// Parsed header, for safetensors files.
    pub header: Option<Header>,
    /// BLAKE3 of the whole file.
    pub hash: ObjectId,
}

/// A checkpoint opened for reading, fully validated.
pub struct Checkpoint {
    pub layout: Layout,
    pub files: Vec<InputFile>,
}

impl Checkpoint {
    /// Opens `path` (a `.safetensors` file, a `*.safetensors.index.json`, or a directory)
    /// and validates every safetensors header in it.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("read", path, e))?;
        let (layout, files) = if meta.is_dir() {
            let dir_name = file_name(path);
            (Layout::Directory { dir_name }, list_directory(path)?)
        } else if file_name(path).ends_with(INDEX_SUFFIX) {
            let dir = path.parent().unwrap_or(Path::new("."));
            let dir_name = file_name(&dir.canonicalize().map_err(|e| Error::io("resolve", dir, e))?);
            (Layout::Directory { dir_name }, list_sharded(path)?)
        } else {
            let name = file_name(path);
            (Layout::SingleFile { file_name: name.clone() }, vec![(name, path.to_path_buf())])
        };

        let single = matches!(layout, Layout::SingleFile { .. });
        let files = files
            .into_par_iter()
            .map(|(rel_path, abs_path)| {
                let is_safetensors = single || rel_path.ends_with(".safetensors");
                open_file(rel_path, abs_path, is_safetensors)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Checkpoint { layout, files })
    }

    /// Computes the checkpoint's identity: the file's BLAKE3 for a single file (what `b3sum`
    /// prints), else the BLAKE3 of a canonical listing of relative paths and file hashes.
    pub fn content_id(&self) -> ObjectId {
        match self.layout {
            Layout::SingleFile { .. } => self.files[0].hash,
            Layout::Directory { .. } => directory_id(self.files.iter().map(|file| (file.rel_path.as_str(), file.hash))),
        }
    }

    /// Hashes every file again and fails if any changed since it was opened, so a commit never
    /// records hashes of bytes other than those it stored.
    pub fn verify_unchanged(&self) -> Result<(), Error> {
        for file in &self.files {
            if file.data.hash() != file.hash {
                return Err(Error::InputChanged { path: file.abs_path.clone() });
            }
        }
        Ok(())
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.data.bytes().len() as u64).sum()
    }
}

/// Identity of a directory checkpoint: the BLAKE3 of its canonical listing of relative paths
/// and file hashes, in checkpoint order. Also recomputed from a received base record, whose
/// id must match it.
pub fn directory_id<'a>(files: impl Iterator<Item = (&'a str, ObjectId)>) -> ObjectId {
    let mut listing = String::from("wstore-directory-v1\n");
    for (rel_path, hash) in files {
        listing.push_str(&format!("{rel_path}\0{hash}\n"));
    }
    ObjectId::of(listing.as_bytes())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".to_string())
}

fn open_file(rel_path: String, abs_path: PathBuf, is_safetensors: bool) -> Result<InputFile, Error> {
    let data = FileBytes::open(&abs_path)?;
    let header = if is_safetensors {
        let header = safetensors::parse(data.bytes())
            .map_err(|source| Error::InvalidSafetensors { path: abs_path.clone(), source })?;
        Some(header)
    } else {
        None
    };
    let hash = data.hash();
    Ok(InputFile { rel_path, abs_path, data, header, hash })
}

/// Lists the regular files under `root` (sorted, hidden entries skipped). A symlink is
/// followed only when its target lies inside `root`, so an input cannot pull in files from
/// elsewhere on the machine.
fn list_directory(root: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let canonical_root = root.canonicalize().map_err(|e| Error::io("resolve", root, e))?;
    let mut out = Vec::new();
    let mut pending = vec![(String::new(), root.to_path_buf())];
    while let Some((prefix, dir)) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let file_type = entry.file_type().map_err(|e| Error::io("stat", &path, e))?;
            if file_type.is_symlink() {
                let target = path.canonicalize().map_err(|e| Error::io("resolve", &path, e))?;
                if !target.starts_with(&canonical_root) {
                    return Err(Error::UnsafePath {
                        path,
                        reason: format!("is a symlink to {}, outside the model directory", target.display()),
                    });
                }
            }
            let meta = std::fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
            if meta.is_dir() {
                pending.push((rel, path));
            } else if meta.is_file() {
                out.push((rel, path));
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::EmptyInput { path: root.to_path_buf() });
    }
    Ok(out)
}

/// Lists a sharded checkpoint: the index file plus every shard its `weight_map` names,
/// each checked to be a plain file name inside the index's directory.
fn list_sharded(index_path: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let len = std::fs::metadata(index_path).map_err(|e| Error::io("stat", index_path, e))?.len();
    if len > MAX_INDEX_BYTES {
        return Err(Error::InvalidIndex {
            path: index_path.to_path_buf(),
            reason: format!("the file is {len} bytes, above the {MAX_INDEX_BYTES}-byte cap"),
        });
    }
    let text = std::fs::read(index_path).map_err(|e| Error::io("read", index_path, e))?;
    let shards = parse_index(&text).map_err(|reason| Error::InvalidIndex { path: index_path.to_path_buf(), reason })?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let canonical_dir = dir.canonicalize().map_err(|e| Error::io("resolve", dir, e))?;
    let mut out = vec![(file_name(index_path), index_path.to_path_buf())];
    for shard in shards {
        let path = dir.join(&shard);
        // A shard that is a symlink must still resolve inside the index's directory.
        let target = path.canonicalize().map_err(|e| Error::io("resolve", &path, e))?;
        if !target.starts_with(&canonical_dir) {
            return Err(Error::UnsafePath {
                path,
                reason: format!("is a symlink to {}, outside the checkpoint directory", target.display()),
            });
        }
        out.push((shard, path));
    }
    out.sort();
    Ok(out)
}

/// Parses a `model.safetensors.index.json` and returns the distinct shard file names in its
/// `weight_map`. Pure, so it can be fuzzed.
pub fn parse_index(text: &[u8]) -> Result<BTreeSet<String>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| "no \"weight_map\" object".to_string())?;
    let mut shards = BTreeSet::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| format!("tensor {tensor:?} maps to a non-string value"))?;
        check_shard_name(shard)?;
        shards.insert(shard.to_string());
    }
    if shards.is_empty() {
        return Err("\"weight_map\" names no shard".to_string());
    }
    Ok(shards)
}

fn check_shard_name(shard: &str) -> Result<(), String> {
    let path = Path::new(shard);
    let plain = path.components().count() == 1 && matches!(path.components().next(), Some(Component::Normal(_)));
    // `Path` drops a trailing slash, so "x/" would pass as one component: reject any separator.
    if shard.is_empty() || shard.contains('\0') || shard.contains('/') || !plain {
        return Err(format!("shard name {shard:?} is not a plain file name inside the index's directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_distinct_shards() {
        let text = br#"{"metadata":{"total_size":8},"weight_map":{"a":"s-1.safetensors","b":"s-2.safetensors","c":"s-1.safetensors"}}"#;
        let shards = parse_index(text).unwrap();
        assert_eq!(shards.into_iter().collect::<Vec<_>>(), vec!["s-1.safetensors", "s-2.safetensors"]);
    }

    #[test]
    fn index_rejects_escaping_shard_names() {
        // "x/" was found by the sharded_index fuzz target.
        for bad in ["../x.safetensors", "/etc/passwd", "a/b.safetensors", "", "x\u{0}y", "..", "x/"] {
            let text = serde_json::json!({"weight_map": {"t": bad}}).to_string();
            assert!(parse_index(text.as_bytes()).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn index_rejects_missing_weight_map() {
        assert!(parse_index(b"{}").is_err());
        assert!(parse_index(b"[1]").is_err());
        assert!(parse_index(b"not json").is_err());
    }
}
