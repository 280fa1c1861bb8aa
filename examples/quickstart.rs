//! The README's first command: generate a small base and a fine-tune of it, store both,
//! check the fine-tune out again, and verify it byte for byte.
//!
//! Run with `cargo run --release --example quickstart`.

use std::error::Error;

use wstore::cli::human_bytes;
use wstore::progress::NoProgress;
use wstore::store::{CheckoutOptions, CodecChoice, CommitOptions};
use wstore::{Store, Target};

fn main() -> Result<(), Box<dyn Error>> {
    let work = tempfile::tempdir()?;
    let (base_path, finetune_path) = wstore::synth::write_tiny_family(work.path(), 7)?;
    println!("generated {} ({} bytes)", base_path.display(), std::fs::metadata(&base_path)?.len());
    println!("generated {} ({} bytes)", finetune_path.display(), std::fs::metadata(&finetune_path)?.len());

    let store_dir = work.path().join("store");
    let store = Store::init(&store_dir)?;
    println!("\n$ wstore init --store {}", store_dir.display());

    println!("$ wstore base add tiny-llama {}", base_path.display());
    let base = store.add_base("tiny-llama", &base_path, &NoProgress)?;
    println!("  base {}: {} original, {} stored", base.id.short(), human_bytes(base.original_bytes), human_bytes(base.stored_bytes));

    println!("$ wstore base add tiny-llama-again {}", base_path.display());
    let again = store.add_base("tiny-llama-again", &base_path, &NoProgress)?;
    println!("  same weights, new bytes written: {}", again.new_bytes);

    println!("$ wstore commit {} --base tiny-llama --name task-a --codec lossless", finetune_path.display());
    let options = CommitOptions {
        base: "tiny-llama".into(),
        name: Some("task-a".into()),
        message: "quickstart fine-tune".into(),
        codec: CodecChoice::Lossless,
        ..Default::default()
    };
    let commit = store.commit(&finetune_path, &options, &NoProgress)?;
    println!(
        "  commit {}: {} original, {} stored ({:.2}x), tensors {:?}",
        commit.commit.short(),
        human_bytes(commit.original_bytes),
        human_bytes(commit.stored_bytes),
        commit.original_bytes as f64 / commit.stored_bytes.max(1) as f64,
        commit.tensors_by_kind
    );

    let output = work.path().join("task-a.safetensors");
    println!("$ wstore checkout task-a -o {}", output.display());
    let report = store.checkout(Target::Commit(commit.commit), &output, &CheckoutOptions::default(), &NoProgress)?;
    let original = std::fs::read(&finetune_path)?;
    let restored = std::fs::read(&output)?;
    let original_hash = blake3::hash(&original);
    let restored_hash = blake3::hash(&restored);
    println!("  fine-tune blake3 {original_hash}");
    println!("  checkout  blake3 {restored_hash}");
    if original != restored || report.file_hashes[0].1.to_hex() != original_hash.to_hex().as_str() {
        return Err("checkout differs from the committed file".into());
    }
    println!("\nverified: the checkout is byte-identical to the committed fine-tune");
    Ok(())
}
