//! The two sides of a diff: a stored commit or base, or a safetensors file on disk, and the
//! tensors each holds.

use std::collections::HashSet;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{CatalogError, FileEntry, PrefixMap, Snapshot, TensorEntry};
use crate::checkpoint::FileBytes;
use crate::error::Error;
use crate::format::safetensors::{self, Dtype, Header};
use crate::id::ObjectId;
use crate::store::{Store, Target};

/// Kind of checkpoint on one side of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SideKind {
    Commit,
    Base,
    File,
}

/// One side of a diff as the report shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SideInfo {
    /// The argument as given, or the base's name for the implied base of a one-argument diff.
    pub arg: String,
    pub kind: SideKind,
    /// Commit or base id; `None` for a file.
    pub id: Option<ObjectId>,
    /// The file read; `None` for a stored side.
    pub path: Option<PathBuf>,
    /// True for a lossy commit: its values are the codec's reconstruction, which is what a
    /// checkout returns, not the bytes that were committed.
    pub lossy: bool,
    /// The base a commit was stored against; `None` for bases and files.
    pub base: Option<ObjectId>,
}

/// A side opened for reading.
pub(crate) enum Side {
    Stored { info: SideInfo, snapshot: Snapshot, name_map: Option<PrefixMap> },
    File { info: SideInfo, data: FileBytes, header: Header },
}

/// Source of one tensor's bytes.
#[derive(Clone, Copy)]
pub(crate) enum Location<'a> {
    Stored(&'a TensorEntry),
    /// Byte range inside the mapped file.
    File { start: usize, end: usize },
}

/// One tensor of a side.
#[derive(Clone)]
pub(crate) struct TensorRef<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [u64],
    pub location: Location<'a>,
}

/// A tensor's bytes: rebuilt from the store, or borrowed from a mapped file.
pub(crate) enum TensorBytes<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Deref for TensorBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            TensorBytes::Owned(bytes) => bytes,
            TensorBytes::Borrowed(bytes) => bytes,
        }
    }
}

impl Side {
    /// Opens `arg`: the path of an existing file is read as a safetensors file (when
    /// `read_files` allows it), anything else is resolved in the store.
    pub(crate) fn open(store: Option<&Store>, arg: &str, read_files: bool) -> Result<Side, Error> {
        let path = Path::new(arg);
        if read_files && path.is_file() {
            return Side::open_file(arg, path);
        }
        if read_files && path.is_dir() {
            return Err(Error::InvalidArgument {
                what: format!("diff argument {arg:?}"),
                detail: "is a directory; diff reads single .safetensors files, so commit the directory and diff the commit".into(),
            });
        }
        let Some(store) = store else {
            return Err(Error::InvalidArgument {
                what: format!("diff argument {arg:?}"),
                detail: "is not an existing file, and no store is open to resolve it as a ref, commit or base".into(),
            });
        };
        Side::open_stored(store, arg, store.resolve(arg)?)
    }

    fn open_file(arg: &str, path: &Path) -> Result<Side, Error> {
        let data = FileBytes::open(path)?;
        let header = safetensors::parse(data.bytes())
            .map_err(|source| Error::InvalidSafetensors { path: path.to_path_buf(), source })?;
        let info = SideInfo {
            arg: arg.to_string(),
            kind: SideKind::File,
            id: None,
            path: Some(path.to_path_buf()),
            lossy: false,
            base: None,
        };
        Ok(Side::File { info, data, header })
    }

    pub(crate) fn open_stored(store: &Store, arg: &str, target: Target) -> Result<Side, Error> {
        match target {
            Target::Commit(id) => {
                let record = store
                    .catalog()
                    .get_commit(&id)?
                    .ok_or_else(|| CatalogError::NotFound { kind: "commit", text: id.to_hex() })?;
                let info = SideInfo {
                    arg: arg.to_string(),
                    kind: SideKind::Commit,
                    id: Some(id),
                    path: None,
                    lossy: record.is_lossy(),
                    base: Some(record.base),
                };
                Ok(Side::Stored { info, snapshot: record.snapshot, name_map: record.name_map })
            }
            Target::Base(id) => {
                let (snapshot, _) = store.snapshot_of(target)?;
                let info = SideInfo {
                    arg: arg.to_string(),
                    kind: SideKind::Base,
                    id: Some(id),
                    path: None,
                    lossy: false,
                    base: None,
                };
                Ok(Side::Stored { info, snapshot, name_map: None })
            }
        }
    }

    pub(crate) fn info(&self) -> &SideInfo {
        match self {
            Side::Stored { info, .. } | Side::File { info, .. } => info,
        }
    }

    /// Returns the commit's stored name map, for a commit side.
    pub(crate) fn name_map(&self) -> Option<&PrefixMap> {
        match self {
            Side::Stored { name_map, .. } => name_map.as_ref(),
            Side::File { .. } => None,
        }
    }

    /// Lists the tensors in file order. Tensors are matched by name, so a name that appears
    /// in two files of a model directory is rejected.
    pub(crate) fn tensors(&self) -> Result<Vec<TensorRef<'_>>, Error> {
        let list: Vec<TensorRef<'_>> = match self {
            Side::Stored { snapshot, .. } => snapshot
                .files
                .iter()
                .filter_map(|file| match file {
                    FileEntry::Safetensors(st) => Some(st.tensors.iter()),
                    FileEntry::Plain(_) => None,
                })
                .flatten()
                .map(|entry| TensorRef {
                    name: &entry.name,
                    dtype: Dtype::parse(&entry.dtype),
                    shape: &entry.shape,
                    location: Location::Stored(entry),
                })
                .collect(),
            Side::File { header, .. } => {
                let data_start = header.data_start();
                header
                    .by_offset()
                    .into_iter()
                    .map(|info| {
                        // The parser checked that every range lies inside the file, so the
                        // sums fit in usize.
                        let start = usize::try_from(data_start + info.start).unwrap_or(usize::MAX);
                        let end = usize::try_from(data_start + info.end).unwrap_or(usize::MAX);
                        TensorRef {
                            name: &info.name,
                            dtype: info.dtype.clone(),
                            shape: &info.shape,
                            location: Location::File { start, end },
                        }
                    })
                    .collect()
            }
        };
        let mut seen = HashSet::new();
        for tensor in &list {
            if !seen.insert(tensor.name) {
                return Err(Error::InvalidArgument {
                    what: format!("diff argument {:?}", self.info().arg),
                    detail: format!("tensor {:?} appears in two of its files; diff matches tensors by name", tensor.name),
                });
            }
        }
        Ok(list)
    }

    /// Returns the BLAKE3 of a tensor's bytes when it is known without reading them.
    pub(crate) fn known_hash(tensor: &TensorRef<'_>) -> Option<ObjectId> {
        match tensor.location {
            Location::Stored(entry) => Some(entry.hash),
            Location::File { .. } => None,
        }
    }

    /// Reads a tensor's bytes: a verified rebuild from the store, or a slice of the file.
    pub(crate) fn bytes<'s>(&'s self, store: Option<&Store>, tensor: &TensorRef<'_>) -> Result<TensorBytes<'s>, Error> {
        match (self, tensor.location) {
            (Side::Stored { .. }, Location::Stored(entry)) => {
                let store = store.ok_or_else(|| Error::InvalidArgument {
                    what: format!("tensor {:?}", entry.name),
                    detail: "is stored, but no store is open".into(),
                })?;
                Ok(TensorBytes::Owned(store.rebuild_tensor(entry)?))
            }
            (Side::File { data, info, .. }, Location::File { start, end }) => {
                data.bytes().get(start..end).map(TensorBytes::Borrowed).ok_or_else(|| Error::InvalidArgument {
                    what: format!("diff argument {:?}", info.arg),
                    detail: format!("tensor {:?} lies outside the file; was it truncated while being read?", tensor.name),
                })
            }
            _ => Err(Error::InvalidArgument {
                what: format!("tensor {:?}", tensor.name),
                detail: "belongs to the other side of the diff".into(),
            }),
        }
    }

    /// Drops a file tensor's pages from the resident set once it is compared, so memory stays
    /// near the tensors in flight even though the whole file is mapped.
    pub(crate) fn release(&self, tensor: &TensorRef<'_>) {
        if let (Side::File { data, .. }, Location::File { start, end }) = (self, tensor.location) {
            data.release(start, end.saturating_sub(start));
        }
    }
}

/// Tells whether a tensor is cheap to read from the store: one raw object, no delta to apply.
pub(crate) fn is_raw(tensor: &TensorRef<'_>) -> bool {
    match tensor.location {
        Location::Stored(entry) => matches!(
            entry.storage,
            crate::catalog::TensorStorage::Whole { .. } | crate::catalog::TensorStorage::SameAsBase { .. }
        ),
        Location::File { .. } => true,
    }
}
