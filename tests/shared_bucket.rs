//! Two stores, each with its own catalog and its own daemon, on one bucket of a real S3 server
//! (a single-node Garage, see common/s3.rs). Each commits through its daemon, pulls the other's
//! catalog records, and checks out the other's commit from the shared objects. No object is
//! uploaded twice, and gc in one store keeps what the other references. Without a garage
//! binary the test prints a skip line and passes, unless `WSTORE_REQUIRE_S3=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

use common::daemon::Daemon;
use common::s3::Garage;
use wstore::id::ObjectId;
use wstore::storage::s3::{S3Location, S3Storage};
use wstore::storage::{SharedObjects, Storage};
use wstore::synth::{tiny_base, tiny_finetune, to_safetensors};

fn wstore(garage: &Garage, store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wstore"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("WSTORE_HOME")
        .env_remove("WSTORE_S3_CONFIG")
        .env_remove("WSTORE_TOKEN")
        .env_remove("WSTORE_REMOTE_TOKEN")
        .env("WSTORE_AUTHOR", "ci-tester")
        .envs(garage.env())
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn json(output: Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).unwrap()
}

/// Lists every object in the bucket with its modification time, which any upload changes,
/// even one of the same bytes.
fn objects_with_times(bucket: &S3Storage) -> BTreeMap<ObjectId, SystemTime> {
    bucket.list().unwrap().into_iter().map(|id| (id, bucket.modified(&id).unwrap().unwrap())).collect()
}

/// Checks out `target` of `store` (through its daemon when one runs) and returns the output's
/// BLAKE3.
fn checkout_hash(garage: &Garage, store: &Path, target: &str, out: &Path) -> ObjectId {
    let _ = std::fs::remove_file(out);
    ok(wstore(garage, store, &["checkout", target, "-o", out.to_str().unwrap()]));
    ObjectId::of(&std::fs::read(out).unwrap())
}

#[test]
fn two_daemons_share_one_bucket() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(21);
    let mut files = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    for (name, tensors) in [("base", base.clone()), ("ft1", tiny_finetune(&base, 22, 0.1)), ("ft2", tiny_finetune(&base, 23, 0.1))] {
        let bytes = to_safetensors(&tensors, None).unwrap();
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        hashes.insert(name, ObjectId::of(&bytes));
        files.insert(name, path.display().to_string());
    }
    let url = garage.fresh_url("shared");
    let bucket = S3Storage::open(S3Location::parse(&url).unwrap(), &garage.credentials(), "inspector", &dir.path().join("unused"), 0).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for store in [&a, &b] {
        ok(wstore(garage, store, &["init", "--objects", &url]));
    }
    let daemon_a = Daemon::start_with_env(&a, &[], &garage.env());
    let daemon_b = Daemon::start_with_env(&b, &[], &garage.env());
    let out = dir.path().join("out.safetensors");

    // A adds the base and commits ft1; B pulls the records and finds every object in place.
    ok(wstore(garage, &a, &["base", "add", "llama", &files["base"]]));
    ok(wstore(garage, &a, &["commit", &files["ft1"], "--base", "llama", "--name", "ft1", "--codec", "lossless"]));
    let after_a = objects_with_times(&bucket);
    let pulled = json(wstore(garage, &b, &["pull", &daemon_a.url, "ft1", "--json"]));
    assert_eq!(pulled["objects_sent"], 0, "{pulled}");
    assert_eq!(pulled["bytes_sent"], 0, "{pulled}");
    let ft1_commit = pulled["commit"].as_str().unwrap().to_string();
    assert_eq!(pulled["objects_present"].as_u64().unwrap() as usize, after_a.len(), "{pulled}");
    assert_eq!(checkout_hash(garage, &b, "ft1", &out), hashes["ft1"]);
    assert_eq!(checkout_hash(garage, &b, "llama", &out), hashes["base"]);
    assert_eq!(objects_with_times(&bucket), after_a, "the pull uploaded objects");

    // B commits ft2 of the same base: only ft2's own objects go up, nothing already there is
    // uploaded again, and A pulls it without a byte of objects.
    let committed = json(wstore(garage, &b, &["commit", &files["ft2"], "--base", "llama", "--name", "ft2", "--codec", "lossless", "--json"]));
    let after_b = objects_with_times(&bucket);
    let ft2_own: BTreeSet<ObjectId> = after_b.keys().filter(|id| !after_a.contains_key(id)).copied().collect();
    assert!(!ft2_own.is_empty());
    for (id, time) in &after_a {
        assert_eq!(after_b.get(id), Some(time), "object {id} was uploaded twice");
    }
    let ft2_bytes: u64 = ft2_own.iter().map(|id| bucket.size(id).unwrap()).sum();
    assert_eq!(committed["stored_bytes"].as_u64(), Some(ft2_bytes), "{committed}");
    let pulled = json(wstore(garage, &a, &["pull", &daemon_b.url, "ft2", "--json"]));
    assert_eq!((pulled["objects_sent"].as_u64(), pulled["bytes_sent"].as_u64()), (Some(0), Some(0)), "{pulled}");
    assert_eq!(checkout_hash(garage, &a, "ft2", &out), hashes["ft2"]);
    assert_eq!(objects_with_times(&bucket), after_b);

    // Both stores mark every object they rely on.
    let mut marked: BTreeMap<ObjectId, BTreeSet<String>> = BTreeMap::new();
    for marker in bucket.markers().unwrap() {
        marked.entry(marker.object).or_default().insert(marker.store_id);
    }
    assert_eq!(marked.keys().copied().collect::<BTreeSet<_>>(), after_b.keys().copied().collect());
    assert!(marked.values().all(|stores| stores.len() == 2), "{marked:?}");

    // A drops ft1 and collects garbage with no grace: B still references ft1, so nothing goes.
    daemon_a.stop();
    ok(wstore(garage, &a, &["rm", "ft1"]));
    ok(wstore(garage, &a, &["rm", "--commit", &ft1_commit]));
    let gc = json(wstore(garage, &a, &["gc", "--grace", "0", "--json"]));
    assert_eq!(gc["deleted"].as_array().map(Vec::len), Some(0), "{gc}");
    assert!(gc["spared_shared"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(objects_with_times(&bucket), after_b);
    assert!(bucket.gc_fences().unwrap().is_empty());

    // B, reading the bucket with an empty cache, still checks out ft1 exactly and finds its
    // store whole.
    daemon_b.stop();
    std::fs::remove_dir_all(b.join("cache")).ok();
    assert_eq!(checkout_hash(garage, &b, "ft1", &out), hashes["ft1"]);
    let fsck = wstore(garage, &b, &["fsck", "--full"]);
    assert_eq!(fsck.status.code(), Some(0), "{}", String::from_utf8_lossy(&fsck.stdout));
}
