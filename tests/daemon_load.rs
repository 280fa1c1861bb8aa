//! Load on the real daemon: 32 client threads read random byte ranges of two fine-tunes of one
//! base (one lossless, one lossy) at once, and every byte is compared with a local checkout.
//! The daemon runs with a 1 MiB tensor cache, so rebuilds and evictions happen concurrently.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use common::daemon::{wstore_in, Daemon};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wstore::client::DaemonClient;
use wstore::synth::{tiny_base, tiny_finetune, to_safetensors};

const CLIENT_THREADS: usize = 32;
const REQUESTS_PER_THREAD: usize = 96;
/// Largest range one request reads, in bytes.
const MAX_RANGE_BYTES: u64 = 96 * 1024;

fn wstore(store: &Path, args: &[&str]) {
    let output = wstore_in(store, store.parent().unwrap(), &[], args);
    assert_eq!(output.status.code(), Some(0), "wstore {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// One file the clients read: its URL path on the daemon and the local checkout's bytes.
struct Served {
    url_path: String,
    bytes: Vec<u8>,
}

fn write_family(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let base = tiny_base(5);
    let files = [("base.safetensors", base.clone()), ("ft-a.safetensors", tiny_finetune(&base, 6, 0.1)), ("ft-b.safetensors", tiny_finetune(&base, 7, 0.05))];
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|(name, tensors)| {
            let path = dir.join(name);
            std::fs::write(&path, to_safetensors(tensors, None).unwrap()).unwrap();
            path
        })
        .collect();
    (paths[0].clone(), paths[1].clone(), paths[2].clone())
}

#[test]
fn concurrent_range_reads_match_checkouts() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft_a, ft_b) = write_family(dir.path());
    let store = dir.path().join("store");
    wstore(&store, &["init"]);
    wstore(&store, &["base", "add", "tiny", base.to_str().unwrap()]);
    wstore(&store, &["commit", ft_a.to_str().unwrap(), "--base", "tiny", "--name", "exact", "--codec", "lossless"]);
    wstore(&store, &["commit", ft_b.to_str().unwrap(), "--base", "tiny", "--name", "lossy", "--max-error", "2e-3"]);
    let exact_out = dir.path().join("exact.safetensors");
    let lossy_out = dir.path().join("lossy.safetensors");
    wstore(&store, &["checkout", "exact", "-o", exact_out.to_str().unwrap()]);
    wstore(&store, &["checkout", "lossy", "-o", lossy_out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&exact_out).unwrap(), std::fs::read(&ft_a).unwrap());
    assert_ne!(std::fs::read(&lossy_out).unwrap(), std::fs::read(&ft_b).unwrap());

    let daemon = Daemon::start(&store, &["--cache-mb", "1"]);
    let client = DaemonClient::new(&daemon.url, None);
    let mut served = Vec::new();
    for (target, local, lossy) in [("exact", &exact_out, false), ("lossy", &lossy_out, true)] {
        let manifest = client.checkout_manifest(target).unwrap();
        assert_eq!(manifest.lossy, lossy, "{target}");
        assert_eq!(manifest.files.len(), 1, "{target}");
        let bytes = std::fs::read(local).unwrap();
        assert_eq!(manifest.files[0].bytes, bytes.len() as u64, "{target}");
        served.push(Served { url_path: manifest.files[0].url.clone(), bytes });
    }
    let served = Arc::new(served);

    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENT_THREADS)
        .map(|thread| {
            let served = Arc::clone(&served);
            let url = daemon.url.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let client = DaemonClient::new(&url, None);
                let mut rng = ChaCha8Rng::seed_from_u64(thread as u64);
                let mut checked = 0u64;
                for request in 0..REQUESTS_PER_THREAD {
                    let file = &served[rng.gen_range(0..served.len())];
                    let len = file.bytes.len() as u64;
                    let start = rng.gen_range(0..len);
                    let end = (start + rng.gen_range(0..MAX_RANGE_BYTES)).min(len - 1);
                    let got = client
                        .read_range(&file.url_path, start, end)
                        .map_err(|e| format!("thread {thread} request {request} bytes {start}-{end} of {}: {e}", file.url_path))?;
                    let expected = file.bytes.get(start as usize..=end as usize).ok_or("range outside the local file")?;
                    if got != expected {
                        return Err(format!("thread {thread} request {request}: bytes {start}-{end} of {} differ from the checkout", file.url_path));
                    }
                    checked += got.len() as u64;
                }
                Ok(checked)
            })
        })
        .collect();
    let mut checked = 0u64;
    for worker in workers {
        checked += worker.join().unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} range requests from {CLIENT_THREADS} threads, {checked} bytes checked in {:.2} s",
        CLIENT_THREADS * REQUESTS_PER_THREAD,
        elapsed.as_secs_f64()
    );
    assert!(checked > 0);
    daemon.stop();
}
