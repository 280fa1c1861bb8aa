//! wstore: a version store for model weights.
//!
//! Each base checkpoint is kept once, deduplicated by BLAKE3 per file and per tensor, and every
//! fine-tune committed against it is kept as per-tensor deltas. A sled catalog records lineage;
//! blobs live as content-addressed files under the store.

pub mod codec;
pub mod durable;
pub mod format;
pub mod id;
pub mod storage;
