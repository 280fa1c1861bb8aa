//! The daemon under crashes and concurrent writers: SIGKILL during uploads and commits loses
//! no acknowledged commit, and concurrent commits and reads through it all verify.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::{wstore_in, Daemon};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wstore::synth::{tiny_base, tiny_finetune, to_safetensors};

fn ok(store: &Path, args: &[&str]) -> String {
    let output = wstore_in(store, store.parent().unwrap(), &[], args);
    assert_eq!(output.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Creates a store with a base, writes `count` fine-tunes of that base to files without
/// committing them, and returns the store and the fine-tune paths.
fn family(dir: &Path, count: u64) -> (PathBuf, Vec<PathBuf>) {
    let base = tiny_base(7);
    std::fs::write(dir.join("base.safetensors"), to_safetensors(&base, None).unwrap()).unwrap();
    let finetunes = (0..count)
        .map(|i| {
            let path = dir.join(format!("ft{i}.safetensors"));
            std::fs::write(&path, to_safetensors(&tiny_finetune(&base, 100 + i, 0.1), None).unwrap()).unwrap();
            path
        })
        .collect();
    let store = dir.join("store");
    ok(&store, &["init"]);
    ok(&store, &["base", "add", "tiny", dir.join("base.safetensors").to_str().unwrap()]);
    (store, finetunes)
}

fn blake3_of(path: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(path).unwrap())
}

/// Checks out `target` with the CLI (through the daemon if one runs) and returns its hash.
fn checkout_hash(store: &Path, target: &str, scratch: &Path) -> blake3::Hash {
    let out = scratch.join(format!("{target}.safetensors"));
    let _ = std::fs::remove_file(&out);
    ok(store, &["checkout", target, "-o", out.to_str().unwrap()]);
    blake3_of(&out)
}

#[test]
fn daemon_kill_loses_no_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, finetunes) = family(dir.path(), 3);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut acknowledged: Vec<(String, blake3::Hash)> = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(std::env::var("WSTORE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(5));
    let trials: usize = std::env::var("WSTORE_CRASH_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    for trial in 0..trials {
        let daemon = Daemon::start(&store, &[]);
        // An acknowledged commit through the daemon, then an upload and a commit in flight.
        let name = format!("acked-{trial}");
        let ft = &finetunes[trial % finetunes.len()];
        ok(&store, &["commit", ft.to_str().unwrap(), "--base", "tiny", "--name", &name, "--codec", "lossless"]);
        acknowledged.push((name, blake3_of(ft)));
        let upload = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--limit-rate", "40k", "-T"])
            .arg(&finetunes[(trial + 1) % finetunes.len()])
            .arg(format!("{}/v1/uploads/slow.safetensors", daemon.url))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let in_flight = Command::new(env!("CARGO_BIN_EXE_wstore"))
            .arg("--store")
            .arg(&store)
            .args(["commit", finetunes[(trial + 2) % finetunes.len()].to_str().unwrap(), "--base", "tiny", "--name", &format!("in-flight-{trial}")])
            .env_remove("WSTORE_HOME")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..400)));
        daemon.kill();
        let mut upload = upload;
        let mut in_flight = in_flight;
        let _ = upload.wait();
        let in_flight_ok = in_flight.wait().unwrap().success();

        // The store opens without the daemon, despite its stale discovery file.
        let fsck = wstore_in(&store, dir.path(), &[], &["fsck", "--full", "--json"]);
        assert_eq!(fsck.status.code(), Some(0), "trial {trial}: fsck found problems: {}", String::from_utf8_lossy(&fsck.stdout));
        for (name, hash) in &acknowledged {
            assert_eq!(checkout_hash(&store, name, &scratch), *hash, "trial {trial}: acknowledged commit {name}");
        }
        // The commit in flight is all there (its checkout verifies) or absent.
        let listing = ok(&store, &["ls", "--json"]);
        let in_flight_name = format!("in-flight-{trial}");
        if in_flight_ok {
            assert!(listing.contains(&in_flight_name), "trial {trial}: an acknowledged commit is missing");
        }
        if listing.contains(&in_flight_name) {
            checkout_hash(&store, &in_flight_name, &scratch);
        }
    }
    // The next daemon clears the uploads that the killed ones left.
    let daemon = Daemon::start(&store, &[]);
    let leftovers = std::fs::read_dir(store.join("uploads")).map(|d| d.count()).unwrap_or(0);
    daemon.stop();
    assert_eq!(leftovers, 0);
}

#[test]
fn daemon_concurrent_writes_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (store, finetunes) = family(dir.path(), 3);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    ok(&store, &["commit", finetunes[0].to_str().unwrap(), "--base", "tiny", "--name", "first", "--codec", "lossless"]);
    let first = checkout_hash(&store, "first", &scratch);

    let daemon = Daemon::start(&store, &[]);
    let file_url = {
        let manifest: serde_json::Value =
            serde_json::from_slice(&Command::new("curl").args(["-sSf", &format!("{}/v1/checkout/first", daemon.url)]).output().unwrap().stdout).unwrap();
        format!("{}{}", daemon.url, manifest["files"][0]["url"].as_str().unwrap())
    };
    let expected = std::fs::read(scratch.join("first.safetensors")).unwrap();

    std::thread::scope(|scope| {
        // Three different fine-tunes, and the second one twice under two refs.
        let jobs = [(1usize, "b"), (2, "c"), (1, "b-again"), (0, "a-again")];
        for (index, name) in jobs {
            let (store, path) = (&store, &finetunes[index]);
            scope.spawn(move || ok(store, &["commit", path.to_str().unwrap(), "--base", "tiny", "--name", name, "--codec", "lossless"]));
        }
        // Range reads of a stored commit while the commits run.
        let (file_url, expected) = (&file_url, &expected);
        scope.spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            for _ in 0..40 {
                let start = rng.gen_range(0..expected.len());
                let end = (start + rng.gen_range(1..4096)).min(expected.len()) - 1;
                let body = Command::new("curl").args(["-sSf", "-r", &format!("{start}-{end}"), file_url]).output().unwrap();
                assert!(body.status.success());
                assert!(body.stdout == expected[start..=end], "range {start}-{end} differs from the checkout");
            }
        });
    });

    for (name, index) in [("b", 1), ("c", 2), ("b-again", 1), ("a-again", 0)] {
        assert_eq!(checkout_hash(&store, name, &scratch), blake3_of(&finetunes[index]), "{name}");
    }
    assert_eq!(checkout_hash(&store, "first", &scratch), first);
    daemon.stop();

    // One set of objects per distinct fine-tune: no orphans, nothing torn.
    let fsck: serde_json::Value = serde_json::from_str(&ok(&store, &["fsck", "--full", "--json"])).unwrap();
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert_eq!(fsck["report"]["findings"].as_array().map(Vec::len), Some(0), "{fsck}");
}
