//! wstore: a version store for model weights.
//!
//! Each base checkpoint is kept once, deduplicated by BLAKE3 per file and per tensor, and every
//! fine-tune committed against it is kept as per-tensor deltas. A sled catalog records lineage;
//! blobs live as content-addressed files under the store.

pub mod align;
pub mod catalog;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod codec;
pub mod daemon;
pub mod diff;
pub mod durable;
pub mod error;
pub mod format;
pub mod id;
pub mod objects;
pub mod progress;
pub mod storage;
pub mod store;
pub mod synth;
pub mod transfer;

pub use error::Error;
pub use store::{Store, Target};
