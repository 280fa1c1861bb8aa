//! The read path: rebuilding a stored checkpoint, verified tensor by tensor and file by file.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Store, Target};
use crate::catalog::{FileEntry, Layout, SafetensorsFile, Snapshot, TensorEntry, TensorStorage};
use crate::codec::{lossless, ultradelta};
use crate::format::safetensors::Dtype;
use crate::durable::{write_durably, DurableFile, Publish};
use crate::error::Error;
use crate::id::ObjectId;
use crate::progress::Progress;

#[derive(Debug, Clone, Default)]
pub struct CheckoutOptions {
    /// Replace an existing output file, or write into a non-empty output directory.
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckoutReport {
    pub output: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// BLAKE3 of each file written, verified against the hash recorded when it was stored.
    pub file_hashes: Vec<(String, ObjectId)>,
    pub lossy: bool,
}

impl Store {
    /// Returns the snapshot behind a target, and whether it is a lossy commit.
    pub fn snapshot_of(&self, target: Target) -> Result<(Snapshot, bool), Error> {
        match target {
            Target::Commit(id) => {
                let commit = self.catalog.get_commit(&id)?.ok_or_else(|| crate::catalog::CatalogError::NotFound {
                    kind: "commit",
                    text: id.to_hex(),
                })?;
                let lossy = commit.is_lossy();
                Ok((commit.snapshot, lossy))
            }
            Target::Base(id) => {
                let base = self.catalog.get_base(&id)?.ok_or_else(|| crate::catalog::CatalogError::NotFound {
                    kind: "base",
                    text: id.to_hex(),
                })?;
                Ok((base.snapshot, false))
            }
        }
    }

    /// Writes the checkpoint named by `target` to `output`: a file for a single-file
    /// checkpoint, a directory otherwise. Every tensor and file is verified before the
    /// output is published, so a failed checkout leaves no partial file behind.
    pub fn checkout(
        &self,
        target: Target,
        output: &Path,
        options: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<CheckoutReport, Error> {
        let (snapshot, lossy) = self.snapshot_of(target)?;
        let paths: Vec<&str> = snapshot.files.iter().map(FileEntry::path).collect();
        let destinations = prepare_output(&self.root, &snapshot.layout, &paths, output, options.force)?;
        progress.start("checking out", snapshot.total_bytes());
        let mut file_hashes = Vec::new();
        for (file, destination) in snapshot.files.iter().zip(&destinations) {
            file_hashes.push((file.path().to_string(), self.write_file(file, destination, progress)?));
        }
        progress.finish();
        Ok(CheckoutReport {
            output: output.to_path_buf(),
            files: snapshot.files.len(),
            bytes: snapshot.total_bytes(),
            file_hashes,
            lossy,
        })
    }

    fn write_file(&self, file: &FileEntry, path: &Path, progress: &dyn Progress) -> Result<ObjectId, Error> {
        match file {
            FileEntry::Plain(plain) => {
                let bytes = self.objects.get(&plain.object)?;
                write_durably(path, &bytes, Publish::Replace).map_err(|e| Error::io("write", path, e))?;
                progress.advance(plain.bytes);
                Ok(plain.object)
            }
            FileEntry::Safetensors(st) => self.write_safetensors(st, path, progress),
        }
    }

    /// Rebuilds a safetensors file in order, handing each piece to `sink`, and returns the
    /// BLAKE3 of the whole. Tensors are rebuilt a window at a time in parallel and passed on
    /// in file order, so memory stays within (threads × largest tensor).
    pub(super) fn stream_safetensors(
        &self,
        st: &SafetensorsFile,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<ObjectId, Error> {
        let mut hasher = blake3::Hasher::new();
        let header = self.objects.get(&st.header_object)?;
        sink(&header)?;
        hasher.update(&header);
        let window = rayon::current_num_threads().max(1);
        for chunk in st.tensors.chunks(window) {
            let rebuilt = chunk
                .par_iter()
                .map(|entry| self.rebuild_tensor(entry))
                .collect::<Result<Vec<_>, Error>>()?;
            for bytes in rebuilt {
                sink(&bytes)?;
                hasher.update(&bytes);
            }
        }
        Ok(ObjectId::from_bytes(*hasher.finalize().as_bytes()))
    }

    /// Sets each lossy safetensors file's hash to that of its reconstruction, which is what a
    /// checkout writes and verifies.
    pub(crate) fn record_rebuilt_file_hashes(&self, snapshot: &mut Snapshot) -> Result<(), Error> {
        for file in &mut snapshot.files {
            if let FileEntry::Safetensors(st) = file {
                if st.tensors.iter().any(|t| matches!(t.storage, TensorStorage::UltraDelta { .. })) {
                    st.file_hash = self.stream_safetensors(st, &mut |_| Ok(()))?;
                }
            }
        }
        Ok(())
    }

    fn write_safetensors(&self, st: &SafetensorsFile, path: &Path, progress: &dyn Progress) -> Result<ObjectId, Error> {
        let mut out = DurableFile::create(path).map_err(|e| Error::io("create", path, e))?;
        let actual = self.stream_safetensors(st, &mut |bytes| {
            out.write_all(bytes).map_err(|e| Error::io("write", path, e))?;
            progress.advance(bytes.len() as u64);
            Ok(())
        })?;
        if actual != st.file_hash {
            return Err(Error::VerificationFailed { what: format!("file {}", st.path), expected: st.file_hash, actual });
        }
        out.commit(Publish::Replace).map_err(|e| Error::io("publish", path, e))?;
        Ok(actual)
    }

    /// Rebuilds one tensor's bytes and checks them against the hash recorded at commit.
    pub fn rebuild_tensor(&self, entry: &TensorEntry) -> Result<Vec<u8>, Error> {
        let bytes = match &entry.storage {
            TensorStorage::Whole { object } | TensorStorage::SameAsBase { object, .. } => self.objects.get(object)?,
            TensorStorage::LosslessDelta { base_object, object, .. } => {
                let base = self.objects.get(base_object)?;
                let payload = self.objects.get(object)?;
                lossless::decode(&base, &payload).map_err(|e| Error::CorruptObject { id: *object, detail: e.to_string() })?
            }
            TensorStorage::UltraDelta { base_object, object, .. } => {
                let base = self.objects.get(base_object)?;
                let payload = self.objects.get(object)?;
                let dtype = Dtype::parse(&entry.dtype);
                ultradelta::reconstruct(&base, &dtype, &payload)
                    .map_err(|e| Error::CorruptObject { id: *object, detail: e.to_string() })?
            }
        };
        let actual = ObjectId::of_large(&bytes);
        if actual != entry.hash || bytes.len() as u64 != entry.len {
            return Err(Error::VerificationFailed { what: format!("tensor {}", entry.name), expected: entry.hash, actual });
        }
        Ok(bytes)
    }
}

/// Checks and prepares the output of a checkout, for the store at `store_root`, and returns
/// where each of `file_paths` goes. It rejects an output inside the store and an existing
/// output unless `force` is set, creates the directory of a directory layout, and rejects
/// stored paths that leave it or pass through a symlink in it.
pub fn prepare_output(store_root: &Path, layout: &Layout, file_paths: &[&str], output: &Path, force: bool) -> Result<Vec<PathBuf>, Error> {
    check_output_outside_store(store_root, output)?;
    match layout {
        Layout::SingleFile { file_name } => {
            // Renaming the file onto a directory would fail only after the whole rebuild, with
            // a bare "Not a directory".
            let names_directory = output.is_dir() || output.as_os_str().to_string_lossy().ends_with(std::path::is_separator);
            if names_directory {
                return Err(Error::InvalidArgument {
                    what: format!("output {}", output.display()),
                    detail: format!(
                        "names a directory, but this checkout is one file, {file_name}; give a file path such as {} as the output",
                        output.join(file_name).display()
                    ),
                });
            }
            if output.exists() && !force {
                return Err(Error::OutputExists { path: output.to_path_buf() });
            }
            Ok(file_paths.iter().map(|_| output.to_path_buf()).collect())
        }
        Layout::Directory { .. } => {
            let non_empty = std::fs::read_dir(output).map(|mut d| d.next().is_some()).unwrap_or(false);
            if non_empty && !force {
                return Err(Error::OutputExists { path: output.to_path_buf() });
            }
            std::fs::create_dir_all(output).map_err(|e| Error::io("create", output, e))?;
            let mut destinations = Vec::with_capacity(file_paths.len());
            for path in file_paths {
                let relative = safe_relative(path)?;
                refuse_symlinks_below(output, &relative)?;
                let destination = output.join(relative);
                if let Some(parent) = destination.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
                }
                destinations.push(destination);
            }
            Ok(destinations)
        }
    }
}

/// Rejects an output inside the store directory, where a checkout could overwrite objects.
fn check_output_outside_store(store_root: &Path, output: &Path) -> Result<(), Error> {
    let store = store_root.canonicalize().map_err(|e| Error::io("resolve", store_root, e))?;
    // The output may not exist yet: resolve its nearest existing ancestor.
    let mut probe = if output.is_absolute() { output.to_path_buf() } else { std::env::current_dir().map_err(|e| Error::io("resolve", output, e))?.join(output) };
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let resolved = probe.canonicalize().unwrap_or(probe);
    if resolved.starts_with(&store) {
        return Err(Error::UnsafePath { path: output.to_path_buf(), reason: "is inside the store directory; check out somewhere else".into() });
    }
    Ok(())
}

/// Rejects an existing symlink on the way from `root` to `root/relative`, so a checkout into
/// a non-empty directory cannot be redirected outside it.
fn refuse_symlinks_below(root: &Path, relative: &Path) -> Result<(), Error> {
    let mut path = root.to_path_buf();
    for component in relative.components() {
        path.push(component);
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if meta.file_type().is_symlink() {
                return Err(Error::UnsafePath { path, reason: "is a symlink inside the output directory; remove it or choose an empty directory".into() });
            }
        }
    }
    Ok(())
}

/// Turns a stored relative path into a path that cannot leave the output directory.
fn safe_relative(path: &str) -> Result<PathBuf, Error> {
    let candidate = Path::new(path);
    let plain = !path.is_empty() && !path.contains('\0') && candidate.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(Error::UnsafePath { path: candidate.to_path_buf(), reason: "stored file path leaves the output directory".into() });
    }
    Ok(candidate.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_file_into_directory_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let existing = dir.path().join("out");
        std::fs::create_dir(&existing).unwrap();
        let layout = Layout::SingleFile { file_name: "ft.safetensors".into() };
        let trailing_slash = PathBuf::from(format!("{}/", dir.path().join("new").display()));

        for (output, force) in [(existing.clone(), false), (existing.clone(), true), (trailing_slash.clone(), false)] {
            let error = prepare_output(&store, &layout, &["ft.safetensors"], &output, force).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, Error::InvalidArgument { .. }), "{message}");
            assert!(message.contains("names a directory, but this checkout is one file, ft.safetensors"), "{message}");
            assert!(message.contains("ft.safetensors as the output"), "{message}");
        }
        assert!(!dir.path().join("new").exists(), "a rejected checkout creates nothing");
    }
}
