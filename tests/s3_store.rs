//! Stores whose objects live on a real S3 server (a single-node Garage, see common/s3.rs):
//! the CLI end to end, the daemon, the read cache, error messages, and two stores sharing a
//! bucket. Without a garage binary each test prints a skip line and passes, unless
//! `WSTORE_REQUIRE_S3=1`.

mod common;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::daemon::Daemon;
use common::s3::Garage;
use wstore::id::ObjectId;
use wstore::storage::s3::{S3Location, S3Storage};
use wstore::storage::{PutOutcome, SharedObjects, Storage};

/// Runs the CLI on `store` with the server's credentials.
fn wstore(garage: &Garage, store: &Path, args: &[&str]) -> Output {
    wstore_env(store, &garage.env(), args)
}

fn wstore_env(store: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wstore"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("WSTORE_HOME")
        .env_remove("WSTORE_S3_CONFIG")
        .env("WSTORE_AUTHOR", "ci-tester")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn blake3_hex(path: &Path) -> String {
    ObjectId::of(&std::fs::read(path).unwrap()).to_hex()
}

/// Opens the objects at `url` through the library, without cache, to count and inspect them.
fn inspect(garage: &Garage, url: &str) -> S3Storage {
    let cache = std::env::temp_dir().join("wstore-unused-cache");
    S3Storage::open(S3Location::parse(url).unwrap(), &garage.credentials(), "inspector", &cache, 0).unwrap()
}

/// Every object at `url` with its modification time.
fn objects_with_times(storage: &S3Storage) -> BTreeMap<ObjectId, std::time::SystemTime> {
    storage.list().unwrap().into_iter().map(|id| (id, storage.modified(&id).unwrap().unwrap())).collect()
}

#[test]
fn s3_store_round_trips() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = wstore::synth::write_tiny_family(dir.path(), 41).unwrap();
    let url = garage.fresh_url("roundtrip");
    let store = dir.path().join("store");
    let local = dir.path().join("local");

    assert!(ok(wstore(garage, &store, &["init", "--objects", &url])).contains("initialised empty store"));
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("store.json")).unwrap()).unwrap();
    assert_eq!(config["version"], 1);
    assert_eq!(config["objects"], url.as_str());
    assert_eq!(config["cache_mb"], 1024);
    assert_eq!(config["store_id"].as_str().unwrap().len(), 16);
    ok(wstore_env(&local, &[], &["init"]));
    for (target, env) in [(&store, garage.env()), (&local, Vec::new())] {
        ok(wstore_env(target, &env, &["base", "add", "tiny", base.to_str().unwrap()]));
        ok(wstore_env(target, &env, &["commit", finetune.to_str().unwrap(), "--base", "tiny", "--name", "exact", "--codec", "lossless"]));
        ok(wstore_env(target, &env, &["commit", finetune.to_str().unwrap(), "--base", "tiny", "--name", "lossy"]));
    }

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    ok(wstore(garage, &store, &["checkout", "exact", "-o", out.join("exact.safetensors").to_str().unwrap()]));
    ok(wstore(garage, &store, &["checkout", "lossy", "-o", out.join("lossy.safetensors").to_str().unwrap()]));
    ok(wstore_env(&local, &[], &["checkout", "lossy", "-o", out.join("local-lossy.safetensors").to_str().unwrap()]));
    ok(wstore(garage, &store, &["checkout", "tiny", "-o", out.join("base.safetensors").to_str().unwrap()]));

    assert_eq!(blake3_hex(&out.join("exact.safetensors")), blake3_hex(&finetune));
    assert_eq!(blake3_hex(&out.join("base.safetensors")), blake3_hex(&base));
    // The lossy codec is deterministic, so S3 and the local filesystem give the same bytes.
    assert_eq!(blake3_hex(&out.join("lossy.safetensors")), blake3_hex(&out.join("local-lossy.safetensors")));
    // Same objects in the bucket as in the local store's objects/ directory.
    let remote = inspect(garage, &url).list().unwrap();
    let local_objects = wstore::storage::fs::FsStorage::open(&local.join("objects")).unwrap().list().unwrap();
    assert_eq!(remote, local_objects);
    let fsck: serde_json::Value = serde_json::from_str(&ok(wstore(garage, &store, &["fsck", "--full", "--json"]))).unwrap();
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert_eq!(fsck["report"]["objects"], remote.len(), "{fsck}");
    assert!(!store.join("objects").read_dir().unwrap().any(|_| true), "objects went to the local directory");
}

#[test]
fn daemon_serves_s3_ranges() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = wstore::synth::write_tiny_family(dir.path(), 42).unwrap();
    let store = dir.path().join("store");
    ok(wstore(garage, &store, &["init", "--objects", &garage.fresh_url("daemon"), "--cache-mb", "0"]));
    ok(wstore(garage, &store, &["base", "add", "tiny", base.to_str().unwrap()]));
    ok(wstore(garage, &store, &["commit", finetune.to_str().unwrap(), "--base", "tiny", "--name", "task-a", "--codec", "lossless"]));
    let expected = std::fs::read(&finetune).unwrap();

    let daemon = Daemon::start_with_env(&store, &[], &garage.env());
    let url = format!("{}/v1/checkout/task-a/finetune.safetensors", daemon.url);
    let ranged = Command::new("curl").args(["-sS", "--fail", "-H", "Range: bytes=100-4195", &url]).output().unwrap();
    let whole = Command::new("curl").args(["-sS", "--fail", &url]).output().unwrap();
    daemon.stop();

    assert_eq!(ranged.status.code(), Some(0), "{}", String::from_utf8_lossy(&ranged.stderr));
    assert_eq!(ranged.stdout, expected[100..4196]);
    assert_eq!(ObjectId::of(&whole.stdout), ObjectId::of(&expected));
    assert!(!store.join("cache").exists(), "--cache-mb 0 disables the read cache");
}

/// A loopback TCP relay to the S3 server that can be cut to act as a network failure. Once cut, it
/// closes new connections at once and shuts down open ones.
struct Relay {
    address: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Relay { address: listener.local_addr().unwrap(), cut: Arc::default(), open: Arc::default() };
        let (cut, open) = (relay.cut.clone(), relay.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                open.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn daemon_answers_502_without_bucket() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = wstore::synth::write_tiny_family(dir.path(), 46).unwrap();
    let store = dir.path().join("store");
    ok(wstore(garage, &store, &["init", "--objects", &garage.fresh_url("unreachable"), "--cache-mb", "0"]));
    ok(wstore(garage, &store, &["base", "add", "tiny", base.to_str().unwrap()]));
    let mut env = garage.env();
    let endpoint = env.iter_mut().find(|(name, _)| *name == "AWS_ENDPOINT_URL").unwrap();
    let relay = Relay::start(&endpoint.1);
    endpoint.1 = format!("http://{}", relay.address);
    let daemon = Daemon::start_with_env(&store, &[], &env);
    let url = format!("{}/v1/checkout/tiny/base.safetensors", daemon.url);

    relay.cut();
    let response = Command::new("curl").args(["-sS", "-w", "\n%{http_code}", "-H", "Range: bytes=0-99", &url]).output().unwrap();
    daemon.stop();

    let text = String::from_utf8(response.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "502", "{text}");
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["kind"], "storage_unavailable", "{body}");
    assert!(error["error"]["message"].as_str().unwrap().contains(&relay.address.to_string()), "{body}");
}

#[test]
fn read_cache_evicts_lru_within_bound() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let location = S3Location::parse(&garage.fresh_url("cache")).unwrap();
    // Room for two 1000-byte objects, not three.
    let storage = S3Storage::open(location, &garage.credentials(), "cache", &cache_dir, 2500).unwrap();
    let objects: Vec<(ObjectId, Vec<u8>)> = (0..5u8)
        .map(|seed| {
            let bytes = vec![seed; 1000];
            (ObjectId::of(&bytes), bytes)
        })
        .collect();
    for (id, bytes) in &objects {
        assert_eq!(storage.put(id, bytes).unwrap(), PutOutcome::Created);
    }
    for (id, bytes) in &objects {
        assert_eq!(&storage.get(id).unwrap(), bytes);
    }
    let mut files: Vec<String> = std::fs::read_dir(&cache_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    let mut expected: Vec<String> = objects[3..].iter().map(|(id, _)| format!("{}.1000", id.to_hex())).collect();
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(storage.cache().unwrap().usage(), (2, 2000));

    // A range of an evicted object is a ranged GET and caches nothing.
    assert_eq!(storage.get_range(&objects[0].0, 10, 5).unwrap(), vec![0; 5]);
    assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 2);
    // A damaged cached file is dropped and the object fetched again.
    std::fs::write(cache_dir.join(&expected[0]), b"short").unwrap();
    let damaged = objects.iter().find(|(id, _)| expected[0].starts_with(&id.to_hex())).unwrap();
    assert_eq!(storage.get(&damaged.0).unwrap(), damaged.1);
    assert_eq!(std::fs::metadata(cache_dir.join(&expected[0])).unwrap().len(), 1000);
}

#[test]
fn damaged_cache_files_leave_bucket_objects_alone() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = wstore::synth::write_tiny_family(dir.path(), 43).unwrap();
    let url = garage.fresh_url("damaged-cache");
    let store = dir.path().join("store");
    ok(wstore(garage, &store, &["init", "--objects", &url]));
    ok(wstore(garage, &store, &["base", "add", "tiny", base.to_str().unwrap()]));
    ok(wstore(garage, &store, &["commit", finetune.to_str().unwrap(), "--base", "tiny", "--name", "task-a", "--codec", "lossless"]));
    let first = dir.path().join("first.safetensors");
    ok(wstore(garage, &store, &["checkout", "task-a", "-o", first.to_str().unwrap()]));
    let bucket_objects = inspect(garage, &url).list().unwrap();
    // Same length, one byte flipped: only the hash check can tell.
    let mut damaged = 0;
    for entry in std::fs::read_dir(store.join("cache")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        damaged += 1;
    }

    let repair = wstore(garage, &store, &["fsck", "--repair", "--json"]);
    let second = dir.path().join("second.safetensors");
    let checkout = wstore(garage, &store, &["checkout", "task-a", "-o", second.to_str().unwrap()]);

    assert!(damaged > 0, "no cache files to damage");
    assert!(damaged <= bucket_objects.len(), "{damaged} cache files");
    let report: serde_json::Value = serde_json::from_str(&ok(repair)).unwrap();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(inspect(garage, &url).list().unwrap(), bucket_objects);
    ok(checkout);
    assert_eq!(blake3_hex(&second), blake3_hex(&finetune));
}

/// Flips one byte in the middle of every file of the read cache, keeping their lengths, and
/// returns how many files it damaged.
fn damage_cache_files(store: &Path) -> usize {
    let mut damaged = 0;
    for entry in std::fs::read_dir(store.join("cache")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        damaged += 1;
    }
    damaged
}

#[test]
fn transfers_reread_damaged_cache_files() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = wstore::synth::write_tiny_family(dir.path(), 44).unwrap();
    let store = dir.path().join("store");
    ok(wstore(garage, &store, &["init", "--objects", &garage.fresh_url("transfer-cache")]));
    ok(wstore(garage, &store, &["base", "add", "tiny", base.to_str().unwrap()]));
    ok(wstore(garage, &store, &["commit", finetune.to_str().unwrap(), "--base", "tiny", "--name", "task-a", "--codec", "lossless"]));
    ok(wstore(garage, &store, &["checkout", "task-a", "-o", dir.path().join("fill-cache.safetensors").to_str().unwrap()]));
    let pushed_to = dir.path().join("pushed-to");
    let pulled_to = dir.path().join("pulled-to");
    ok(wstore(garage, &pushed_to, &["init"]));
    ok(wstore(garage, &pulled_to, &["init"]));

    // Push: this store is opened by the CLI and reads its objects through the cache.
    assert!(damage_cache_files(&store) > 0);
    let receiver = Daemon::start(&pushed_to, &[]);
    let push = wstore(garage, &store, &["push", &receiver.url, "task-a", "--quiet"]);
    receiver.stop();
    // Pull: this store's daemon serves its object files through the cache.
    ok(wstore(garage, &store, &["checkout", "task-a", "-o", dir.path().join("refill.safetensors").to_str().unwrap()]));
    assert!(damage_cache_files(&store) > 0);
    let sender = Daemon::start_with_env(&store, &[], &garage.env());
    let pull = wstore(garage, &pulled_to, &["pull", &sender.url, "task-a", "--quiet"]);
    sender.stop();

    ok(push);
    ok(pull);
    for (name, copy) in [("pushed", &pushed_to), ("pulled", &pulled_to)] {
        let output = dir.path().join(format!("{name}.safetensors"));
        ok(wstore(garage, copy, &["checkout", "task-a", "-o", output.to_str().unwrap()]));
        assert_eq!(blake3_hex(&output), blake3_hex(&finetune), "{name}");
    }
}

#[test]
fn fsck_reads_bucket_not_cache() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = wstore::synth::write_tiny_family(dir.path(), 45).unwrap();
    let url = garage.fresh_url("fsck-cache");
    let store = dir.path().join("store");
    ok(wstore(garage, &store, &["init", "--objects", &url]));
    ok(wstore(garage, &store, &["base", "add", "tiny", base.to_str().unwrap()]));
    ok(wstore(garage, &store, &["checkout", "tiny", "-o", dir.path().join("warm.safetensors").to_str().unwrap()]));
    // Damage one object in the bucket while the cache keeps its intact copy.
    let bucket = inspect(garage, &url);
    let damaged = bucket.list().unwrap()[0];
    let mut file = bucket.get(&damaged).unwrap();
    let last = file.len() - 1;
    file[last] ^= 0xff;
    assert!(bucket.delete(&damaged).unwrap());
    assert_eq!(bucket.put(&damaged, &file).unwrap(), PutOutcome::Created);

    let output = wstore(garage, &store, &["fsck", "--json"]);

    assert_eq!(output.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["counts"]["corrupt_object"], 1, "{report}");
}

#[test]
fn gc_dry_run_lists_what_gc_deletes() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = wstore::synth::write_tiny_family(dir.path(), 44).unwrap();
    let store = dir.path().join("store");
    ok(wstore(garage, &store, &["init", "--objects", &garage.fresh_url("dry-run")]));
    ok(wstore(garage, &store, &["base", "add", "tiny", base.to_str().unwrap()]));
    let committed = ok(wstore(garage, &store, &["commit", finetune.to_str().unwrap(), "--base", "tiny", "--name", "task-a", "--json"]));
    let commit = serde_json::from_str::<serde_json::Value>(&committed).unwrap()["commit"].as_str().unwrap().to_string();
    ok(wstore(garage, &store, &["rm", "task-a"]));
    ok(wstore(garage, &store, &["rm", "--commit", &commit]));

    let planned: serde_json::Value = serde_json::from_str(&ok(wstore(garage, &store, &["gc", "--dry-run", "--grace", "0s", "--json"]))).unwrap();
    let done: serde_json::Value = serde_json::from_str(&ok(wstore(garage, &store, &["gc", "--grace", "0s", "--json"]))).unwrap();

    assert_eq!(planned["deleted"], done["deleted"]);
    assert_eq!(planned["freed_bytes"], done["freed_bytes"]);
    assert!(!done["deleted"].as_array().unwrap().is_empty(), "{done}");
}

#[test]
fn bad_credentials_and_bucket_named() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();

    let mut env = garage.env();
    env[1].1 = "0".repeat(64);
    let output = wstore_env(&dir.path().join("a"), &env, &["init", "--objects", &garage.fresh_url("badkey")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("failed to list bucket s3://{}/", garage.bucket)), "{stderr}");
    assert!(stderr.contains(&format!("access denied by {}", garage.endpoint)), "{stderr}");
    assert!(stderr.contains("check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"), "{stderr}");
    assert!(!stderr.contains(&garage.secret_key), "{stderr}");
    assert!(!dir.path().join("a").exists(), "a failed init leaves no store behind");

    let output = wstore(garage, &dir.path().join("b"), &["init", "--objects", "s3://no-such-bucket/x"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("failed to open bucket s3://no-such-bucket/x: bucket no-such-bucket does not exist at {}; create the bucket", garage.endpoint)),
        "{stderr}"
    );

    let output = wstore_env(&dir.path().join("c"), &[], &["init", "--objects", "s3://no-such-bucket/x"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AWS_ACCESS_KEY_ID is not set: export it, or put AWS_ACCESS_KEY_ID=... in the file named by WSTORE_S3_CONFIG"), "{stderr}");
}

#[test]
fn wrong_region_names_aws_region() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();

    // The README's example region; the test server accepts only requests signed for its own.
    let mut env = garage.env();
    env[2].1 = "us-east-1".to_string();
    let output = wstore_env(&dir.path().join("a"), &env, &["init", "--objects", &garage.fresh_url("region")]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("failed to list bucket s3://{}/", garage.bucket)), "{stderr}");
    assert!(stderr.contains(&format!("{} rejected region \"us-east-1\"", garage.endpoint)), "{stderr}");
    assert!(stderr.contains("set AWS_REGION to the region the server expects"), "{stderr}");
    assert!(!stderr.contains("is reachable"), "{stderr}");
    assert!(!stderr.contains(&garage.secret_key), "{stderr}");
    assert!(!dir.path().join("a").exists(), "a failed init leaves no store behind");
}

#[test]
fn shared_bucket_dedups_and_gc_spares() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = wstore::synth::write_tiny_family(dir.path(), 43).unwrap();
    let url = garage.fresh_url("shared");
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let bucket = inspect(garage, &url);

    ok(wstore(garage, &first, &["init", "--objects", &url]));
    ok(wstore(garage, &first, &["base", "add", "tiny", base.to_str().unwrap()]));
    let base_only = objects_with_times(&bucket);
    ok(wstore(garage, &first, &["commit", finetune.to_str().unwrap(), "--base", "tiny", "--name", "task", "--codec", "lossless"]));
    let after_first = objects_with_times(&bucket);

    ok(wstore(garage, &second, &["init", "--objects", &url]));
    ok(wstore(garage, &second, &["base", "add", "tiny", base.to_str().unwrap()]));
    ok(wstore(garage, &second, &["commit", finetune.to_str().unwrap(), "--base", "tiny", "--name", "task", "--codec", "lossless"]));
    // Same objects with the same times: nothing was uploaded again.
    assert_eq!(objects_with_times(&bucket), after_first);
    let markers = bucket.markers().unwrap();
    assert_eq!(markers.len(), 2 * after_first.len(), "each store marks every object once");

    // The second store drops its commit and collects: the fine-tune's objects stay, because
    // the first store marks them.
    let show: serde_json::Value = serde_json::from_str(&ok(wstore(garage, &second, &["show", "task", "--json"]))).unwrap();
    let commit_id = show["commit"]["id"].as_str().unwrap().to_string();
    ok(wstore(garage, &second, &["rm", "task"]));
    ok(wstore(garage, &second, &["rm", "--commit", &commit_id]));
    let report: serde_json::Value = serde_json::from_str(&ok(wstore(garage, &second, &["gc", "--grace", "0", "--json"]))).unwrap();
    let finetune_only = after_first.len() - base_only.len();
    assert_eq!(report["deleted"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["spared_shared"], finetune_only, "{report}");
    assert_eq!(objects_with_times(&bucket), after_first);
    assert_eq!(bucket.markers().unwrap().len(), 2 * after_first.len() - finetune_only, "the second store's stale markers are gone");
    assert!(bucket.list().unwrap().len() == after_first.len() && !fence_present(&bucket));

    let out = dir.path().join("task.safetensors");
    ok(wstore(garage, &first, &["checkout", "task", "-o", out.to_str().unwrap()]));
    assert_eq!(blake3_hex(&out), blake3_hex(&finetune));

    // Once the first store drops the commit too, no store marks the fine-tune's objects and
    // its gc deletes exactly them.
    let show: serde_json::Value = serde_json::from_str(&ok(wstore(garage, &first, &["show", "task", "--json"]))).unwrap();
    let commit_id = show["commit"]["id"].as_str().unwrap().to_string();
    ok(wstore(garage, &first, &["rm", "task"]));
    ok(wstore(garage, &first, &["rm", "--commit", &commit_id]));
    let report: serde_json::Value = serde_json::from_str(&ok(wstore(garage, &first, &["gc", "--grace", "0", "--json"]))).unwrap();
    assert_eq!(report["deleted"].as_array().unwrap().len(), finetune_only, "{report}");
    assert_eq!(report["spared_shared"], serde_json::Value::Null, "{report}");
    assert_eq!(objects_with_times(&bucket), base_only);
    assert_eq!(bucket.markers().unwrap().len(), 2 * base_only.len());
}

/// Whether any gc fence is left under the prefix.
fn fence_present(storage: &S3Storage) -> bool {
    !storage.gc_fences().unwrap().is_empty()
}

#[test]
fn writers_wait_for_another_stores_gc() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = garage.fresh_url("fence");
    let location = S3Location::parse(&url).unwrap();
    let committer = S3Storage::open(location.clone(), &garage.credentials(), "committer", &dir.path().join("a"), 0).unwrap();
    let collector = S3Storage::open(location, &garage.credentials(), "collector", &dir.path().join("b"), 0).unwrap();
    let bytes = b"shared object".to_vec();
    let id = ObjectId::of(&bytes);

    assert_eq!(committer.put(&id, &bytes).unwrap(), PutOutcome::Created);
    assert_eq!(committer.put(&id, &bytes).unwrap(), PutOutcome::AlreadyPresent);
    assert_eq!(committer.uploads(), 1);

    // The collector's gc runs and deletes the object (it listed no marker before the
    // committer wrote one). A put that starts meanwhile must wait for the gc to end, then
    // find the object gone and upload it again; relying on it would lose it.
    collector.begin_gc().unwrap();
    assert_eq!(committer.gc_fences().unwrap(), [format!("{}/gc/collector", location_key(&url))]);
    let deleted = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let put = scope.spawn(|| {
            let outcome = committer.put(&id, &bytes).unwrap();
            (outcome, deleted.load(std::sync::atomic::Ordering::SeqCst))
        });
        let adopt = scope.spawn(|| (committer.adopt(&id).unwrap(), deleted.load(std::sync::atomic::Ordering::SeqCst)));
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(!put.is_finished() && !adopt.is_finished(), "a writer went on under another store's gc fence");
        assert!(collector.delete(&id).unwrap());
        deleted.store(true, std::sync::atomic::Ordering::SeqCst);
        collector.end_gc().unwrap();
        // Both saw the deletion: the put uploaded the object again, and the adopt, if it
        // looked before that upload, reported it missing so its caller sends it.
        let (outcome, after_delete) = put.join().unwrap();
        assert_eq!((outcome, after_delete), (PutOutcome::Created, true));
        let (_, after_delete) = adopt.join().unwrap();
        assert!(after_delete);
    });
    assert_eq!(committer.uploads(), 2);
    assert!(committer.contains(&id).unwrap());

    // Its own fence does not stop a store.
    committer.begin_gc().unwrap();
    assert_eq!(committer.put(&id, &bytes).unwrap(), PutOutcome::AlreadyPresent);
    assert!(committer.adopt(&id).unwrap());
    committer.end_gc().unwrap();
    assert!(!fence_present(&committer));
    assert_eq!(committer.uploads(), 2);
    assert!(!format!("{committer:?}").contains(&garage.secret_key));
    assert!(collector.adopt(&id).unwrap());
    let mut stores: Vec<String> = committer.markers().unwrap().into_iter().map(|m| m.store_id).collect();
    stores.sort();
    assert_eq!(stores, ["collector", "committer"]);
}

/// The key prefix of an `s3://bucket/prefix` URL.
fn location_key(url: &str) -> String {
    S3Location::parse(url).unwrap().prefix
}

#[test]
fn credentials_from_config_file() {
    let Some(garage) = common::s3::garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s3.env");
    let mut text = String::from("# test server\n\n");
    for (name, value) in garage.env() {
        text.push_str(&format!("{name}={value}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let from_file = [("WSTORE_S3_CONFIG", file.display().to_string())];

    ok(wstore_env(&dir.path().join("a"), &from_file, &["init", "--objects", &garage.fresh_url("file")]));

    // A variable in the environment wins over the file.
    let overridden = [from_file[0].clone(), ("AWS_SECRET_ACCESS_KEY", "1".repeat(64))];
    let output = wstore_env(&dir.path().join("b"), &overridden, &["init", "--objects", &garage.fresh_url("file")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("access denied"), "{stderr}");
}
