//! End-to-end round trips on real third-party weights. Skipped unless WSTORE_REAL_MODELS
//! points at a directory filled by `fetch-real-models.sh DIR` (it writes DIR/pairs.json).
//! Run: `WSTORE_REAL_MODELS=DIR cargo test --release --test real_models -- --nocapture`.

mod common;

use std::path::{Path, PathBuf};

use wstore::progress::NoProgress;
use wstore::Store;

fn real_models_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("WSTORE_REAL_MODELS").map(PathBuf::from);
    if dir.is_none() {
        eprintln!("skipped: set WSTORE_REAL_MODELS=DIR (filled by fetch-real-models.sh DIR) to run");
    }
    dir
}

/// (base, fine-tune) pairs from DIR/pairs.json, as file stems relative to DIR.
fn pairs(dir: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read(dir.join("pairs.json")).expect("DIR/pairs.json: run fetch-real-models.sh DIR first");
    let pairs: serde_json::Value = serde_json::from_slice(&text).unwrap();
    pairs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["base"].as_str().unwrap().to_string(),
                p["ft"].as_str().unwrap().to_string(),
                p["relation"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_real_finetune_round_trips() {
    let Some(dir) = real_models_dir() else { return };
    let work = tempfile::tempdir().unwrap();
    let store = Store::init(&work.path().join("store")).unwrap();
    println!("| base | fine-tune | relation | original bytes | stored bytes | ratio | tensors by storage |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (base, finetune, relation)) in pairs(&dir).into_iter().enumerate() {
        let base_path = dir.join(format!("{base}.safetensors"));
        let finetune_path = dir.join(format!("{finetune}.safetensors"));
        let base_name = format!("base-{i}");
        let first = store.add_base(&base_name, &base_path, &NoProgress).unwrap();

        // The same weights under another name add nothing.
        let again = store.add_base(&format!("again-{i}"), &base_path, &NoProgress).unwrap();
        assert_eq!(again.new_bytes, 0, "{base}: second add wrote bytes");
        assert_eq!(again.id, first.id);

        let ref_name = format!("ft-{i}");
        let report = common::commit(&store, &finetune_path, &base_name, Some(&ref_name)).unwrap();
        let out = work.path().join(format!("out-{i}.safetensors"));
        let restored = common::checkout_bytes(&store, &ref_name, &out);
        let original = std::fs::read(&finetune_path).unwrap();
        assert_eq!(restored.len(), original.len(), "{finetune}: length differs");
        assert!(restored == original, "{finetune}: checkout is not byte-identical");
        assert_eq!(common::sha256_hex(&restored), common::sha256_hex(&original));
        assert!(
            report.stored_bytes < report.original_bytes,
            "{finetune}: stored {} >= original {}",
            report.stored_bytes,
            report.original_bytes
        );
        println!(
            "| {base} | {finetune} | {relation} | {} | {} | {:.3}x | {:?} |",
            report.original_bytes,
            report.stored_bytes,
            report.original_bytes as f64 / report.stored_bytes as f64,
            report.tensors_by_kind
        );
        std::fs::remove_file(&out).unwrap();
    }
}
