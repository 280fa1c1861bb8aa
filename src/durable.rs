//! Atomic, durable file writes.
//!
//! Every write goes to a new temp file beside its target (same directory, so publishing never
//! crosses a filesystem), is fsynced, published by hard link or rename, and then the directory
//! is fsynced so the new name survives a crash. A crash at any step leaves either the old target
//! or the complete new one, plus at worst a `.tmp-*` file that a cleanup pass can delete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temp file name; readers and listings skip names that start with it.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Buffer size of `DurableFile` (1 MiB), large enough that multi-GiB outputs make few syscalls.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Attempts at finding an unused temp name before giving up. A clash needs a reused pid, the
/// same sequence number and the same 64 random bits, so even one retry is unlikely.
const TEMP_NAME_ATTEMPTS: u32 = 8;

/// Per-process sequence number that keeps temp names of concurrent writers apart.
static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Publishing method of a finished temp file: hard link or rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Hard-links the temp file to the target. An existing regular file at the target counts as
    /// success and is left untouched, which is what content-addressed storage wants.
    NoClobber,
    /// Renames the temp file over the target, replacing whatever file was there.
    Replace,
}

/// Writes `bytes` to `target` atomically and durably.
///
/// Returns `Ok(true)` when this call published the bytes and `Ok(false)` when `mode` is
/// `Publish::NoClobber` and a regular file already sits at `target`. On error the temp file is
/// removed and `target` is unchanged (unless the error came from the final directory fsync, in
/// which case the new file may or may not survive a crash). The raw OS error is kept, so callers
/// can recognise ENOSPC.
pub fn write_durably(target: &Path, bytes: &[u8], mode: Publish) -> io::Result<bool> {
    let mut file = DurableFile::create(target)?;
    file.write_all(bytes)?;
    file.commit(mode)
}

/// A streaming writer whose output becomes `target` only on `commit`.
///
/// Bytes go through a buffer into a temp file beside the target. Dropping the writer without
/// committing deletes the temp file, so an aborted checkout leaves nothing behind.
#[derive(Debug)]
pub struct DurableFile {
    /// `None` once `commit` has taken the file.
    writer: Option<BufWriter<File>>,
    temp_path: PathBuf,
    target: PathBuf,
    /// Whether `temp_path` may still exist and must be removed on drop.
    temp_exists: bool,
}

impl DurableFile {
    /// Creates a new temp file in the directory of `target`, which must exist.
    pub fn create(target: &Path) -> io::Result<Self> {
        let dir = parent_dir(target)?;
        let (file, temp_path) = create_temp_file(dir)?;
        Ok(DurableFile {
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            temp_path,
            target: target.to_path_buf(),
            temp_exists: true,
        })
    }

    /// Returns the path that `commit` publishes the output at.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes and fsyncs the temp file, publishes it at the target, and fsyncs the directory.
    ///
    /// Returns the same value as `write_durably`. On error the temp file is removed.
    pub fn commit(mut self, mode: Publish) -> io::Result<bool> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("durable file was already committed"))?;
        let file = writer
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        // Close before publishing, because some platforms cannot rename or link an open file.
        drop(file);

        let dir = parent_dir(&self.target)?;
        let created = match mode {
            Publish::Replace => {
                fs::rename(&self.temp_path, &self.target)?;
                self.temp_exists = false;
                true
            }
            Publish::NoClobber => {
                let created = link_no_clobber(&self.temp_path, &self.target)?;
                fs::remove_file(&self.temp_path)?;
                self.temp_exists = false;
                created
            }
        };
        // Also needed when the target already existed, because another writer may have linked
        // it without having fsynced the directory yet, and the caller is about to rely on it.
        sync_dir(dir)?;
        Ok(created)
    }
}

impl Write for DurableFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.writer.as_mut() {
            Some(writer) => writer.write(bytes),
            None => Err(io::Error::other("durable file was already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for DurableFile {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            // `into_parts` drops buffered bytes without writing them to a file about to go.
            let (file, _unwritten) = writer.into_parts();
            drop(file);
        }
        if self.temp_exists {
            if let Err(error) = fs::remove_file(&self.temp_path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.temp_path.display(), %error, "failed to remove temp file");
                }
            }
        }
    }
}

/// Fsyncs a directory, so that names created, renamed or removed in it survive a crash.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Fsyncs a directory, so that names created, renamed or removed in it survive a crash.
// NOTE: a no-op off Unix, because std cannot open a directory as a file there; NTFS journals
// metadata, but the durability of a new name after a crash is not verified on those platforms.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Returns whether a file name is a temp file of this module, complete or not.
pub fn is_temp_name(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// Returns the directory that contains `target`, with "." for a bare file name.
fn parent_dir(target: &Path) -> io::Result<&Path> {
    match target.parent() {
        Some(dir) if dir.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(dir) => Ok(dir),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid target {}: it has no parent directory",
                target.display()
            ),
        )),
    }
}

/// Creates a file with a fresh `.tmp-` name in `dir`, never opening an existing file.
fn create_temp_file(dir: &Path) -> io::Result<(File, PathBuf)> {
    let mut last_error = None;
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let sequence = TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{TEMP_PREFIX}{:x}-{sequence:x}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

/// Hard-links `temp` to `target`; returns `Ok(false)` when a regular file is already there.
fn link_no_clobber(temp: &Path, target: &Path) -> io::Result<bool> {
    match fs::hard_link(temp, target) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            // A directory or symlink at the target is not a stored copy of these bytes.
            if fs::symlink_metadata(target)?.is_file() {
                Ok(false)
            } else {
                Err(error)
            }
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names in `dir`, sorted, so tests can assert that no temp file is left.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn no_clobber_creates_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("object");

        let created = write_durably(&target, b"tensor bytes", Publish::NoClobber).unwrap();

        assert!(created);
        assert_eq!(fs::read(&target).unwrap(), b"tensor bytes");
        assert_eq!(names_in(dir.path()), vec!["object"]);
    }

    #[test]
    fn no_clobber_keeps_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("object");
        fs::write(&target, b"first").unwrap();

        let created = write_durably(&target, b"second", Publish::NoClobber).unwrap();

        assert!(!created);
        assert_eq!(fs::read(&target).unwrap(), b"first");
        assert_eq!(names_in(dir.path()), vec!["object"]);
    }

    #[test]
    fn no_clobber_rejects_directory_at_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("object");
        fs::create_dir(&target).unwrap();

        let error = write_durably(&target, b"bytes", Publish::NoClobber).unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert!(target.is_dir());
        assert_eq!(names_in(dir.path()), vec!["object"]);
    }

    #[test]
    fn replace_overwrites_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("HEAD");
        fs::write(&target, b"old").unwrap();

        let created = write_durably(&target, b"new", Publish::Replace).unwrap();

        assert!(created);
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(names_in(dir.path()), vec!["HEAD"]);
    }

    #[test]
    fn replace_failure_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("HEAD");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();

        let result = write_durably(&target, b"new", Publish::Replace);

        assert!(result.is_err());
        assert!(target.is_dir());
        assert_eq!(names_in(dir.path()), vec!["HEAD"]);
    }

    #[test]
    fn missing_directory_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing").join("object");

        let error = write_durably(&target, b"bytes", Publish::NoClobber).unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert_eq!(names_in(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn empty_bytes_publish_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("empty");

        assert!(write_durably(&target, b"", Publish::NoClobber).unwrap());

        assert_eq!(fs::metadata(&target).unwrap().len(), 0);
    }

    #[test]
    fn streaming_commit_publishes_all_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.safetensors");
        // 3 MiB in 1000-byte chunks crosses the 1 MiB buffer several times.
        let chunk: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let chunk_count = 3 * 1024 * 1024 / chunk.len();

        let mut file = DurableFile::create(&target).unwrap();
        for _ in 0..chunk_count {
            file.write_all(&chunk).unwrap();
        }
        assert!(!target.exists());
        assert!(file.commit(Publish::Replace).unwrap());

        let written = fs::read(&target).unwrap();
        assert_eq!(written.len(), chunk.len() * chunk_count);
        assert!(written
            .chunks(chunk.len())
            .all(|piece| piece == chunk.as_slice()));
        assert_eq!(names_in(dir.path()), vec!["model.safetensors"]);
    }

    #[test]
    fn temp_file_sits_beside_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("object");

        let mut file = DurableFile::create(&target).unwrap();
        file.write_all(b"partial").unwrap();
        file.flush().unwrap();

        let names = names_in(dir.path());
        assert_eq!(names.len(), 1);
        assert!(
            names[0].starts_with(TEMP_PREFIX),
            "unexpected name {}",
            names[0]
        );
        assert!(is_temp_name(std::ffi::OsStr::new(&names[0])));
        drop(file);
    }

    #[test]
    fn drop_without_commit_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("object");

        let mut file = DurableFile::create(&target).unwrap();
        file.write_all(&[7u8; 4096]).unwrap();
        file.flush().unwrap();
        drop(file);

        assert!(!target.exists());
        assert_eq!(names_in(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn concurrent_no_clobber_creates_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("object");
        let bytes = vec![42u8; 64 * 1024];

        let created_count = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| write_durably(&target, &bytes, Publish::NoClobber).unwrap())
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .filter(|created| *created)
                .count()
        });

        assert_eq!(created_count, 1);
        assert_eq!(fs::read(&target).unwrap(), bytes);
        assert_eq!(names_in(dir.path()), vec!["object"]);
    }

    #[test]
    fn bare_file_name_uses_current_directory() {
        assert_eq!(parent_dir(Path::new("object")).unwrap(), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/object")).unwrap(), Path::new("a"));
        assert_eq!(
            parent_dir(Path::new("/")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
