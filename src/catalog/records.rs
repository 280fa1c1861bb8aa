//! Catalog records, stored in sled as JSON. Field names are part of the on-disk format:
//! rename one only with a migration.

use serde::{Deserialize, Serialize};

use crate::id::ObjectId;

/// A registered base checkpoint. Its id is the content hash of what was added (see
/// `checkpoint::content_id`); names point at it from the `base_names` tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseRecord {
    pub id: ObjectId,
    /// Unix time in seconds when the base was first added.
    pub added_at: u64,
    pub snapshot: Snapshot,
    /// Bytes of the checkpoint as added.
    pub original_bytes: u64,
    /// On-disk bytes of the distinct objects this base references.
    pub stored_bytes: u64,
}

/// A committed fine-tune.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommitRecord {
    /// BLAKE3 of this record serialised with `id` set to all zeros (see `Catalog::seal_commit`).
    pub id: ObjectId,
    pub base: ObjectId,
    pub parent: Option<ObjectId>,
    pub message: String,
    pub author: String,
    /// Unix time in seconds.
    pub time: u64,
    pub codec: CodecInfo,
    /// Content hash of the committed input, computed like a base id.
    pub source_id: ObjectId,
    /// Mapping of fine-tune tensor names onto base names, if they differ.
    pub name_map: Option<PrefixMap>,
    pub snapshot: Snapshot,
    pub original_bytes: u64,
    /// On-disk bytes of the distinct objects this commit references and its base does not.
    pub stored_bytes: u64,
}

impl CommitRecord {
    pub fn is_lossy(&self) -> bool {
        self.codec.lossy
    }
}

/// Codec that made a commit's deltas, with its parameters as given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CodecInfo {
    pub name: String,
    pub lossy: bool,
    pub params: serde_json::Value,
}

/// A prefix rewrite from fine-tune names to base names: a fine-tune tensor named
/// `finetune_prefix + rest` is compared with the base tensor `base_prefix + rest`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrefixMap {
    pub finetune_prefix: String,
    pub base_prefix: String,
    /// True when wstore found the mapping itself, false when the user gave it.
    pub detected: bool,
}

/// The files of a checkpoint: one safetensors file, or a model directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub layout: Layout,
    pub files: Vec<FileEntry>,
}

impl Snapshot {
    pub fn tensors(&self) -> impl Iterator<Item = &TensorEntry> {
        self.files.iter().flat_map(|file| match file {
            FileEntry::Safetensors(st) => st.tensors.iter(),
            FileEntry::Plain(_) => [].iter(),
        })
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(FileEntry::bytes).sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One safetensors file; `file_name` is the name it had when added.
    SingleFile { file_name: String },
    /// A directory (a Hugging Face model directory or a sharded checkpoint).
    Directory { dir_name: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FileEntry {
    Plain(PlainFile),
    Safetensors(SafetensorsFile),
}

impl FileEntry {
    pub fn path(&self) -> &str {
        match self {
            FileEntry::Plain(p) => &p.path,
            FileEntry::Safetensors(s) => &s.path,
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            FileEntry::Plain(p) => p.bytes,
            FileEntry::Safetensors(s) => s.bytes,
        }
    }

    /// BLAKE3 of the whole file as it must come out of a checkout.
    pub fn file_hash(&self) -> ObjectId {
        match self {
            FileEntry::Plain(p) => p.object,
            FileEntry::Safetensors(s) => s.file_hash,
        }
    }
}

/// A file kept as one raw object (config.json, tokenizer files, an index).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlainFile {
    /// Relative path with `/` separators.
    pub path: String,
    pub object: ObjectId,
    pub bytes: u64,
}

/// A safetensors file kept as its original header bytes plus one entry per tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SafetensorsFile {
    pub path: String,
    /// The first 8 + N bytes of the file, verbatim (padding and key order included).
    pub header_object: ObjectId,
    pub file_hash: ObjectId,
    pub bytes: u64,
    /// Sorted by `start`, the order their bytes follow the header.
    pub tensors: Vec<TensorEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Offset of the tensor's bytes from the start of the data section.
    pub start: u64,
    pub len: u64,
    /// BLAKE3 of the tensor's bytes as a checkout must produce them.
    pub hash: ObjectId,
    pub storage: TensorStorage,
    /// On-disk bytes of this entry's own object (0 for a reference to the base).
    pub stored_bytes: u64,
    /// Codec report of a lossy tensor (bits, sparsity, rescale, error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec_stats: Option<serde_json::Value>,
}

/// Storage of a tensor's bytes, which decides how they are rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TensorStorage {
    /// The bytes are one raw object whose id is `TensorEntry::hash`.
    Whole { object: ObjectId },
    /// Identical to the base tensor `base_name`; no bytes of its own.
    SameAsBase { base_name: String, object: ObjectId },
    /// A lossless delta object applied to the base tensor `base_name` (raw object `base_object`).
    LosslessDelta { base_name: String, base_object: ObjectId, object: ObjectId },
    /// An UltraDelta object added to the base tensor `base_name`.
    UltraDelta { base_name: String, base_object: ObjectId, object: ObjectId },
}

impl TensorStorage {
    pub fn kind_name(&self) -> &'static str {
        match self {
            TensorStorage::Whole { .. } => "whole",
            TensorStorage::SameAsBase { .. } => "same_as_base",
            TensorStorage::LosslessDelta { .. } => "lossless_delta",
            TensorStorage::UltraDelta { .. } => "ultradelta",
        }
    }

    /// Lists every object this tensor needs to be rebuilt.
    pub fn objects(&self) -> Vec<ObjectId> {
        match self {
            TensorStorage::Whole { object } | TensorStorage::SameAsBase { object, .. } => vec![*object],
            TensorStorage::LosslessDelta { base_object, object, .. }
            | TensorStorage::UltraDelta { base_object, object, .. } => vec![*base_object, *object],
        }
    }
}
