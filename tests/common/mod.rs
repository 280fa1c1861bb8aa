//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod daemon;
pub mod s3;

use std::path::{Path, PathBuf};

use wstore::format::safetensors::Dtype;
use wstore::progress::NoProgress;
use wstore::store::{CheckoutOptions, CommitOptions};
use wstore::synth::{to_safetensors, SynthTensor};
use wstore::{Store, Target};

pub fn tensor(name: &str, dtype: Dtype, shape: &[u64], bytes: Vec<u8>) -> SynthTensor {
    SynthTensor { name: name.into(), dtype, shape: shape.to_vec(), bytes }
}

pub fn write(path: &Path, tensors: &[SynthTensor]) -> PathBuf {
    std::fs::write(path, to_safetensors(tensors, None).unwrap()).unwrap();
    path.to_path_buf()
}

/// Lists everything observable about a store's contents: object files with their sizes, and
/// the `ls --json` listing. It reads through the open store, because sled allows one opener.
pub fn store_state(store: &Store) -> (Vec<(String, u64)>, String) {
    let mut files = Vec::new();
    for fan in std::fs::read_dir(store.root().join("objects")).unwrap() {
        let fan = fan.unwrap().path();
        if fan.is_dir() {
            for entry in std::fs::read_dir(&fan).unwrap() {
                let entry = entry.unwrap();
                files.push((entry.path().display().to_string(), entry.metadata().unwrap().len()));
            }
        }
    }
    files.sort();
    (files, serde_json::to_string(&store.list().unwrap()).unwrap())
}

pub fn commit(store: &Store, path: &Path, base: &str, name: Option<&str>) -> Result<wstore::store::CommitReport, wstore::Error> {
    let options = CommitOptions { base: base.into(), name: name.map(Into::into), ..Default::default() };
    store.commit(path, &options, &NoProgress)
}

/// Checks out `target` to `out` and returns the bytes written.
pub fn checkout_bytes(store: &Store, target: &str, out: &Path) -> Vec<u8> {
    let resolved: Target = store.resolve(target).unwrap();
    store.checkout(resolved, out, &CheckoutOptions { force: true }, &NoProgress).unwrap();
    std::fs::read(out).unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the store at `root` again after this process dropped its handle. sled's background
/// threads may hold the catalog lock for a moment after the drop, so a lock error is retried
/// for up to 10 s.
pub fn reopen(root: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(root) {
            Err(wstore::Error::Catalog(wstore::catalog::CatalogError::Locked { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// Runs the built `wstore` binary on `store`, with a fixed author and no $WSTORE_HOME.
pub fn run_wstore(store: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wstore"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("WSTORE_HOME")
        .env("WSTORE_AUTHOR", "ci-tester")
        .output()
        .unwrap()
}
