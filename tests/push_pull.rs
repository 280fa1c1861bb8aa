//! `wstore push` and `wstore pull` between real daemons: what crosses the wire (exact object
//! counts and stored bytes), that the copy checks out byte-identical, resuming after an
//! interruption, and the transfers the destination rejects.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::daemon::{wstore_in, Daemon};
use wstore::catalog::{FileEntry, Snapshot};
use wstore::id::ObjectId;
use wstore::progress::NoProgress;
use wstore::store::{CodecChoice, CommitOptions};
use wstore::synth::{tiny_base, tiny_finetune, to_safetensors};
use wstore::Store;

fn wstore(store: &Path, args: &[&str]) -> Output {
    wstore_in(store, store.parent().unwrap(), &[], args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(output: Output) -> Output {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    output
}

/// Runs a command that must fail with exit code 2 and returns its stderr.
fn fails(output: Output) -> String {
    assert_eq!(output.status.code(), Some(2), "stdout: {}", String::from_utf8_lossy(&output.stdout));
    stderr(&output)
}

fn json(output: Output) -> serde_json::Value {
    serde_json::from_slice(&ok(output).stdout).unwrap()
}

/// A source store with base `tiny` and two lossless fine-tunes of it, `ft1` and `ft2`, made
/// through the library, and the objects each record names with their stored sizes.
struct Fixture {
    dir: tempfile::TempDir,
    src: PathBuf,
    /// Input files by name: `base`, `ft1`, `ft2`.
    files: BTreeMap<&'static str, PathBuf>,
    /// Objects each of `base`, `ft1` and `ft2` names (a fine-tune's include the base
    /// objects its deltas apply to).
    objects: BTreeMap<&'static str, BTreeSet<ObjectId>>,
    sizes: BTreeMap<ObjectId, u64>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = tiny_base(7);
        let mut files = BTreeMap::new();
        for (name, tensors) in [("base", base.clone()), ("ft1", tiny_finetune(&base, 11, 0.1)), ("ft2", tiny_finetune(&base, 12, 0.1))] {
            let path = dir.path().join(format!("{name}.safetensors"));
            std::fs::write(&path, to_safetensors(&tensors, None).unwrap()).unwrap();
            files.insert(name, path);
        }

        let src = dir.path().join("src");
        let store = Store::init(&src).unwrap();
        store.add_base("tiny", &files["base"], &NoProgress).unwrap();
        for name in ["ft1", "ft2"] {
            let options = CommitOptions { base: "tiny".into(), name: Some(name.into()), codec: CodecChoice::Lossless, ..Default::default() };
            store.commit(&files[name], &options, &NoProgress).unwrap();
        }

        let catalog = store.catalog();
        let mut objects = BTreeMap::new();
        let base_id = catalog.resolve_base("tiny").unwrap();
        objects.insert("base", snapshot_ids(&catalog.get_base(&base_id).unwrap().unwrap().snapshot));
        for name in ["ft1", "ft2"] {
            let commit = catalog.get_ref(name).unwrap().unwrap();
            objects.insert(name, snapshot_ids(&catalog.get_commit(&commit).unwrap().unwrap().snapshot));
        }
        let mut sizes = BTreeMap::new();
        for id in objects.values().flatten() {
            sizes.insert(*id, store.objects().stored_size(id).unwrap());
        }
        Fixture { dir, src, files, objects, sizes }
    }

    /// Creates an empty store in the fixture's directory.
    fn empty_store(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        ok(wstore(&path, &["init"]));
        path
    }

    /// Objects a transfer of `name` needs: its own and its base's.
    fn closure(&self, name: &str) -> BTreeSet<ObjectId> {
        self.objects[name].union(&self.objects["base"]).copied().collect()
    }

    fn bytes_of(&self, ids: &BTreeSet<ObjectId>) -> u64 {
        ids.iter().map(|id| self.sizes[id]).sum()
    }

    /// Reads the stored object file of `id` in the source store, as the daemon serves it.
    fn object_file(&self, id: &ObjectId) -> Vec<u8> {
        let hex = id.to_hex();
        std::fs::read(self.src.join("objects").join(&hex[..2]).join(&hex[2..])).unwrap()
    }
}

fn snapshot_ids(snapshot: &Snapshot) -> BTreeSet<ObjectId> {
    let mut ids = BTreeSet::new();
    for file in &snapshot.files {
        match file {
            FileEntry::Plain(plain) => {
                ids.insert(plain.object);
            }
            FileEntry::Safetensors(st) => {
                ids.insert(st.header_object);
                for tensor in &st.tensors {
                    ids.extend(tensor.storage.objects());
                }
            }
        }
    }
    ids
}

/// Checks the report of one transfer against the objects sent and present.
fn assert_report(report: &serde_json::Value, fixture: &Fixture, ref_name: &str, sent: &BTreeSet<ObjectId>, present: &BTreeSet<ObjectId>) {
    assert_eq!(report["ref"], ref_name);
    assert_eq!(report["objects_total"], sent.len() + present.len());
    assert_eq!(report["objects_sent"], sent.len());
    assert_eq!(report["bytes_sent"], fixture.bytes_of(sent));
    assert_eq!(report["objects_present"], present.len());
    assert_eq!(report["bytes_present"], fixture.bytes_of(present));
}

/// Checks out `ref_name` from `store` and checks it is byte-identical to the committed file.
fn assert_checkout_identical(fixture: &Fixture, store: &Path, ref_name: &str) {
    let out = fixture.dir.path().join(format!("out-{}-{ref_name}.safetensors", store.file_name().unwrap().to_string_lossy()));
    ok(wstore(store, &["checkout", ref_name, "-o", out.to_str().unwrap(), "--force"]));
    let expected = std::fs::read(&fixture.files[ref_name]).unwrap();
    let actual = std::fs::read(&out).unwrap();
    assert_eq!(ObjectId::of(&actual), ObjectId::of(&expected));
    assert_eq!(actual.len(), expected.len());
}

/// Starts a daemon on a store the test process may have just closed: a CLI command first
/// waits for the catalog lock to be free, which `serve` does not.
fn serve(store: &Path, args: &[&str]) -> Daemon {
    ok(wstore(store, &["ls"]));
    Daemon::start(store, args)
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build())
}

fn put_object(url: &str, id: &ObjectId, file: &[u8]) -> (u16, serde_json::Value) {
    let mut response = http_agent().put(format!("{url}/v1/objects/{id}")).send(file).unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap())
}

fn missing_on(url: &str, ids: &[ObjectId]) -> Vec<String> {
    let body = serde_json::json!({ "ids": ids }).to_string();
    let mut response = http_agent().post(format!("{url}/v1/objects/missing")).content_type("application/json").send(body).unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let value: serde_json::Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    value["missing"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_string()).collect()
}

#[test]
fn push_sends_only_missing_objects() {
    let fixture = Fixture::new();
    let dst = fixture.empty_store("dst");
    let daemon = serve(&dst, &[]);
    let src = fixture.src.to_str().unwrap();
    let push = |ref_name: &str| json(wstore_in(Path::new(src), fixture.dir.path(), &[], &["push", &daemon.url, ref_name, "--json", "-q"]));

    let first = push("ft1");
    assert_report(&first, &fixture, "ft1", &fixture.closure("ft1"), &BTreeSet::new());
    assert_eq!(first["previous"], serde_json::Value::Null);
    assert_checkout_identical(&fixture, &dst, "ft1");

    // The remote has the base and ft1, so ft2 sends only the objects no earlier push sent.
    let ft2_own: BTreeSet<ObjectId> = fixture.objects["ft2"].difference(&fixture.closure("ft1")).copied().collect();
    let ft2_present: BTreeSet<ObjectId> = fixture.closure("ft2").intersection(&fixture.closure("ft1")).copied().collect();
    assert!(ft2_own.is_disjoint(&fixture.objects["base"]));
    assert!(fixture.objects["base"].is_subset(&ft2_present));
    assert!(!ft2_own.is_empty());
    let second = push("ft2");
    assert_report(&second, &fixture, "ft2", &ft2_own, &ft2_present);
    assert_checkout_identical(&fixture, &dst, "ft2");

    let again = push("ft2");
    assert_report(&again, &fixture, "ft2", &BTreeSet::new(), &fixture.closure("ft2"));
    assert_eq!(again["previous"], second["commit"]);
    daemon.stop();
}

#[test]
fn pull_copies_from_remote_daemon() {
    let fixture = Fixture::new();
    let source_daemon = serve(&fixture.src, &[]);

    // The destination store opened directly by the CLI.
    let dst = fixture.empty_store("dst");
    let report = json(wstore(&dst, &["pull", &source_daemon.url, "ft2", "--json", "-q"]));
    assert_report(&report, &fixture, "ft2", &fixture.closure("ft2"), &BTreeSet::new());
    assert_checkout_identical(&fixture, &dst, "ft2");

    // The destination owned by its own daemon: the CLI goes through it, daemon to daemon.
    let dst_daemon = serve(&dst, &[]);
    let report = json(wstore(&dst, &["pull", &source_daemon.url, "ft1", "--json", "-q"]));
    let ft1_own: BTreeSet<ObjectId> = fixture.objects["ft1"].difference(&fixture.closure("ft2")).copied().collect();
    let ft1_present: BTreeSet<ObjectId> = fixture.closure("ft1").intersection(&fixture.closure("ft2")).copied().collect();
    assert_report(&report, &fixture, "ft1", &ft1_own, &ft1_present);
    assert_checkout_identical(&fixture, &dst, "ft1");

    // And a push from the source's daemon back to a third store sends everything once.
    let third = fixture.empty_store("third");
    let third_daemon = serve(&third, &[]);
    let report = json(wstore(&fixture.src, &["push", &third_daemon.url, "ft1", "--json", "-q"]));
    assert_report(&report, &fixture, "ft1", &fixture.closure("ft1"), &BTreeSet::new());
    assert_checkout_identical(&fixture, &third, "ft1");

    third_daemon.stop();
    dst_daemon.stop();
    source_daemon.stop();
}

#[test]
fn interrupted_push_resumes_with_missing_objects() {
    let fixture = Fixture::new();
    let dst = fixture.empty_store("dst");
    let daemon = serve(&dst, &[]);

    // A push cut off midway has put some objects and imported no records: put the first half
    // of the objects in id order, as the transfer sends them, then kill the daemon.
    let all = fixture.closure("ft1");
    let arrived: BTreeSet<ObjectId> = all.iter().take(all.len() / 2).copied().collect();
    for id in &arrived {
        let (status, body) = put_object(&daemon.url, id, &fixture.object_file(id));
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["created"], true);
    }
    daemon.kill();

    let daemon = Daemon::start(&dst, &[]);
    let listing = json(wstore(&dst, &["ls", "--json"]));
    assert_eq!(listing["commits"].as_array().unwrap().len(), 0);
    let rest: BTreeSet<ObjectId> = all.difference(&arrived).copied().collect();
    let report = json(wstore(&fixture.src, &["push", &daemon.url, "ft1", "--json", "-q"]));
    assert_report(&report, &fixture, "ft1", &rest, &arrived);
    assert_checkout_identical(&fixture, &dst, "ft1");
    daemon.stop();

    // fsck exits with 0 only when it finds no problem.
    ok(wstore(&dst, &["fsck", "--full"]));
}

#[test]
fn corrupt_object_put_is_rejected() {
    let fixture = Fixture::new();
    let dst = fixture.empty_store("dst");
    let daemon = serve(&dst, &[]);
    let ids: Vec<ObjectId> = fixture.closure("ft1").into_iter().collect();
    let (claimed, other) = (ids[0], ids[1]);

    // A valid object file sent under another object's id.
    let (status, body) = put_object(&daemon.url, &claimed, &fixture.object_file(&other));
    assert_eq!(status, 422);
    assert_eq!(body["error"]["kind"], "invalid_object");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&claimed.to_hex()), "{message}");
    assert!(message.contains(&format!("content hashes to {}", other.to_hex())), "{message}");

    // A file with one flipped byte, and bytes that are no object file at all.
    let mut flipped = fixture.object_file(&claimed);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    for file in [flipped, b"not an object".to_vec()] {
        let (status, body) = put_object(&daemon.url, &claimed, &file);
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["kind"], "invalid_object");
    }
    assert_eq!(missing_on(&daemon.url, &[claimed]), vec![claimed.to_hex()]);

    // The genuine file is accepted once, then reported as already present.
    let (status, _) = put_object(&daemon.url, &claimed, &fixture.object_file(&claimed));
    assert_eq!(status, 201);
    let (status, body) = put_object(&daemon.url, &claimed, &fixture.object_file(&claimed));
    assert_eq!(status, 200);
    assert_eq!(body["created"], false);
    assert_eq!(missing_on(&daemon.url, &[claimed, other]), vec![other.to_hex()]);
    daemon.stop();
}

#[test]
fn non_fast_forward_push_is_rejected() {
    let fixture = Fixture::new();
    let dst = fixture.empty_store("dst");
    let daemon = serve(&dst, &[]);
    ok(wstore(&fixture.src, &["push", &daemon.url, "ft1", "-q"]));
    let ft1_before = json(wstore(&dst, &["log", "ft1", "--json"]))[0]["id"].clone();

    // A child of ft1 moves the ref forward.
    let ft2_file = fixture.files["ft2"].to_str().unwrap();
    ok(wstore(&fixture.src, &["commit", ft2_file, "--base", "tiny", "--name", "ft1", "--codec", "lossless"]));
    let forward = json(wstore(&fixture.src, &["push", &daemon.url, "ft1", "--json", "-q"]));
    assert_eq!(forward["previous"], ft1_before);
    assert_eq!(forward["forced"], false);

    // Another store's ft1 does not descend from it.
    let other = fixture.empty_store("other");
    ok(wstore(&other, &["base", "add", "tiny", fixture.files["base"].to_str().unwrap()]));
    ok(wstore(&other, &["commit", ft2_file, "--base", "tiny", "--name", "ft1", "--codec", "lossless", "-m", "diverged"]));
    let message = fails(wstore(&other, &["push", &daemon.url, "ft1", "-q"]));
    let remote_before = forward["commit"].as_str().unwrap();
    assert!(message.contains(&format!("ref \"ft1\" on the destination names commit {remote_before}, and commit ")), "{message}");
    assert!(message.contains(&format!("does not descend from it; pass --force to replace the ref anyway, which leaves commit {remote_before} without it")), "{message}");
    let remote_log = json(wstore(&dst, &["log", "ft1", "--json"]));
    assert_eq!(remote_log[0]["id"], forward["commit"]);

    let forced = json(wstore(&other, &["push", &daemon.url, "ft1", "--force", "--json", "-q"]));
    assert_eq!(forced["forced"], true);
    assert_eq!(forced["previous"], forward["commit"]);
    assert_eq!(json(wstore(&dst, &["log", "ft1", "--json"]))[0]["id"], forced["commit"]);
    daemon.stop();
}

#[test]
fn base_name_conflict_is_rejected() {
    let fixture = Fixture::new();
    let dst = fixture.empty_store("dst");
    // The remote's `tiny` is another checkpoint.
    let other_base = fixture.dir.path().join("other-base.safetensors");
    std::fs::write(&other_base, to_safetensors(&tiny_base(8), None).unwrap()).unwrap();
    ok(wstore(&dst, &["base", "add", "tiny", other_base.to_str().unwrap()]));
    let daemon = serve(&dst, &[]);

    let message = fails(wstore(&fixture.src, &["push", &daemon.url, "ft1", "-q"]));
    assert!(message.contains("base name \"tiny\" on the destination names base"), "{message}");
    assert!(message.contains("`wstore base rm tiny`"), "{message}");
    let listing = json(wstore(&dst, &["ls", "--json"]));
    assert_eq!(listing["commits"].as_array().unwrap().len(), 0);
    assert_eq!(listing["bases"].as_array().unwrap().len(), 1);

    // The rejected push stored every object before its import failed, so once the name is
    // free a second push sends none.
    let ids: Vec<ObjectId> = fixture.closure("ft1").into_iter().collect();
    assert_eq!(missing_on(&daemon.url, &ids), Vec::<String>::new());
    daemon.stop();
    ok(wstore(&dst, &["base", "rm", "tiny"]));
    let daemon = Daemon::start(&dst, &[]);
    let report = json(wstore(&fixture.src, &["push", &daemon.url, "ft1", "--json", "-q"]));
    assert_report(&report, &fixture, "ft1", &BTreeSet::new(), &fixture.closure("ft1"));
    assert_checkout_identical(&fixture, &dst, "ft1");
    daemon.stop();
}

#[test]
fn remote_errors_are_clear() {
    let fixture = Fixture::new();
    let dst = fixture.empty_store("dst");
    let token_file = fixture.dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-for-tests\n").unwrap();
    let daemon = serve(&dst, &["--token-file", token_file.to_str().unwrap()]);
    let src = fixture.src.as_path();
    let cwd = fixture.dir.path();

    let message = fails(wstore_in(src, cwd, &[], &["push", &daemon.url, "ft1"]));
    assert!(message.contains(&format!("the remote daemon at {} rejected the bearer token", daemon.url)), "{message}");
    assert!(message.contains("--remote-token-file"), "{message}");
    let message = fails(wstore_in(src, cwd, &[("WSTORE_REMOTE_TOKEN", "wrong")], &["push", &daemon.url, "ft1"]));
    assert!(message.contains("rejected the bearer token"), "{message}");

    let message = fails(wstore_in(src, cwd, &[], &["push", "http://127.0.0.1:1", "ft1"]));
    assert!(message.contains("failed to reach the remote daemon at http://127.0.0.1:1"), "{message}");
    let message = fails(wstore_in(src, cwd, &[], &["push", "https://127.0.0.1:1", "ft1"]));
    assert!(message.contains("https is not supported"), "{message}");
    let message = fails(wstore_in(src, cwd, &[], &["push", &daemon.url, "nope", "--remote-token-file", token_file.to_str().unwrap()]));
    assert!(message.contains("ref \"nope\" not found"), "{message}");
    let message = fails(wstore_in(src, cwd, &[("WSTORE_REMOTE_TOKEN", "s3cret-token-for-tests")], &["pull", &daemon.url, "ft1"]));
    assert!(message.contains(&format!("ref \"ft1\" not found on the remote daemon at {0}; GET {0}/v1/refs lists the refs it has", daemon.url)), "{message}");

    let message = fails(wstore_in(src, cwd, &[("WSTORE_REMOTE_TOKEN", "s3cret-token-for-tests")], &["pull", &format!("{}/x", daemon.url), "ft1"]));
    assert!(message.contains("no route GET /x/v1/bundles/ft1"), "{message}");
    assert!(!message.contains("ref \"ft1\" not found"), "{message}");

    for command in ["push", "pull"] {
        for bad_ref in ["../x", "a b"] {
            let message = fails(wstore_in(src, cwd, &[("WSTORE_REMOTE_TOKEN", "s3cret-token-for-tests")], &[command, &daemon.url, bad_ref]));
            assert!(message.contains(&format!("invalid ref name {bad_ref:?}")), "{command} {bad_ref}: {message}");
        }
    }

    let report = json(wstore_in(src, cwd, &[("WSTORE_REMOTE_TOKEN", "s3cret-token-for-tests")], &["push", &daemon.url, "ft1", "--json", "-q"]));
    assert_eq!(report["objects_sent"], fixture.closure("ft1").len());
    daemon.stop();
}

#[test]
fn object_over_upload_limit_names_flag() {
    let fixture = Fixture::new();
    let dst = fixture.empty_store("dst");
    let daemon = serve(&dst, &["--max-upload-gb", "0"]);

    let message = fails(wstore_in(&fixture.src, fixture.dir.path(), &[], &["push", &daemon.url, "ft1"]));

    assert!(message.contains("is larger than the limit of 0 bytes"), "{message}");
    assert!(message.contains("restart that daemon with a larger --max-upload-gb"), "{message}");
    assert!(stored_objects(&dst).is_empty(), "nothing is stored");
    daemon.stop();
}

fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let mut response = http_agent().post(url).content_type("application/json").send(body.to_string()).unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap())
}

#[test]
fn bundle_import_checks_records_and_objects() {
    let fixture = Fixture::new();
    let source = serve(&fixture.src, &[]);
    let dst = fixture.empty_store("dst");
    let daemon = serve(&dst, &[]);

    let mut response = http_agent().get(format!("{}/v1/bundles/ft1", source.url)).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bundle: serde_json::Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(bundle["schema"], "wstore-bundle-v1");
    assert_eq!(bundle["commits"].as_array().unwrap().len(), 1);
    assert_eq!(bundle["bases"][0]["names"], serde_json::json!(["tiny"]));
    assert_eq!(bundle["objects"].as_array().unwrap().len(), fixture.closure("ft1").len());

    // Records before their objects are rejected.
    let import_url = format!("{}/v1/bundles", daemon.url);
    let (status, body) = post_json(&import_url, &serde_json::json!({ "bundle": bundle }));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["kind"], "objects_missing");
    let lacks = format!("the destination lacks {} of the objects", fixture.closure("ft1").len());
    assert!(body["error"]["message"].as_str().unwrap().contains(&lacks), "{body}");

    // Object files served by the source are the stored files.
    for id in fixture.closure("ft1") {
        let mut response = http_agent().get(format!("{}/v1/objects/{id}", source.url)).call().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let file = response.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
        assert_eq!(file, fixture.object_file(&id));
        assert_eq!(put_object(&daemon.url, &id, &file).0, 201);
    }
    let unknown = ObjectId::of(b"no such object");
    let response = http_agent().get(format!("{}/v1/objects/{unknown}", source.url)).call().unwrap();
    assert_eq!(response.status().as_u16(), 404);

    // A commit record edited after sealing, and an unknown schema.
    let mut tampered = bundle.clone();
    tampered["commits"][0]["message"] = "edited".into();
    let (status, body) = post_json(&import_url, &serde_json::json!({ "bundle": tampered }));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["kind"], "invalid_bundle");
    assert!(body["error"]["message"].as_str().unwrap().contains("hashes to"), "{body}");
    let mut future = bundle.clone();
    future["schema"] = "wstore-bundle-v2".into();
    let (status, body) = post_json(&import_url, &serde_json::json!({ "bundle": future }));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["kind"], "invalid_bundle");

    let (status, report) = post_json(&import_url, &serde_json::json!({ "bundle": bundle }));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["commits_added"], 1);
    assert_eq!(report["bases_added"], 1);
    assert_eq!(report["previous"], serde_json::Value::Null);
    assert_eq!(report["forced"], false);
    let (status, again) = post_json(&import_url, &serde_json::json!({ "bundle": bundle }));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["commits_added"], 0);
    assert_eq!(again["bases_added"], 0);
    assert_eq!(again["previous"], report["commit"]);
    assert_checkout_identical(&fixture, &dst, "ft1");

    daemon.stop();
    source.stop();
}

/// Lists the objects stored under a store's `objects/` directory, skipping temp files.
fn stored_objects(store: &Path) -> BTreeMap<ObjectId, u64> {
    let mut objects = BTreeMap::new();
    let Ok(fans) = std::fs::read_dir(store.join("objects")) else { return objects };
    for fan in fans {
        let fan = fan.unwrap();
        let Ok(entries) = std::fs::read_dir(fan.path()) else { continue };
        for entry in entries {
            let entry = entry.unwrap();
            let hex = format!("{}{}", fan.file_name().to_string_lossy(), entry.file_name().to_string_lossy());
            if let Ok(id) = hex.parse::<ObjectId>() {
                objects.insert(id, entry.metadata().unwrap().len());
            }
        }
    }
    objects
}

/// Writes a base of 300 random bf16 tensors and a fine-tune that changes each, so a push of the
/// fine-tune sends about 600 objects, one request each.
fn write_wide_family(dir: &Path) -> (PathBuf, PathBuf) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut random_tensor = |name: String| {
        let bytes = (0..64 * 128).flat_map(|_| half::bf16::from_f32(rng.gen_range(-0.05..0.05)).to_le_bytes()).collect();
        wstore::synth::SynthTensor { name, dtype: wstore::format::safetensors::Dtype::BF16, shape: vec![64, 128], bytes }
    };
    let base: Vec<_> = (0..300).map(|i| random_tensor(format!("layers.{i}.weight"))).collect();
    let finetune = tiny_finetune(&base, 6, 0.1);
    let base_path = dir.join("wide-base.safetensors");
    let finetune_path = dir.join("wide-ft.safetensors");
    std::fs::write(&base_path, to_safetensors(&base, None).unwrap()).unwrap();
    std::fs::write(&finetune_path, to_safetensors(&finetune, None).unwrap()).unwrap();
    (base_path, finetune_path)
}

#[test]
fn killed_receiver_push_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = write_wide_family(dir.path());
    let src = dir.path().join("src");
    ok(wstore(&src, &["init"]));
    ok(wstore(&src, &["base", "add", "wide", base.to_str().unwrap()]));
    ok(wstore(&src, &["commit", finetune.to_str().unwrap(), "--base", "wide", "--name", "ft", "--codec", "lossless"]));
    // The source holds only the base and the commit, so the push needs every object in it.
    let all = stored_objects(&src);

    // The push may finish before the kill lands; each attempt uses a new destination.
    for attempt in 0..3 {
        let dst = dir.path().join(format!("dst{attempt}"));
        ok(wstore(&dst, &["init"]));
        let daemon = Daemon::start(&dst, &[]);
        let pusher = std::process::Command::new(env!("CARGO_BIN_EXE_wstore"))
            .arg("--store")
            .arg(&src)
            .args(["push", &daemon.url, "ft", "-q"])
            .env_remove("WSTORE_HOME")
            .env_remove("WSTORE_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while stored_objects(&dst).is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        daemon.kill();
        let output = pusher.wait_with_output().unwrap();
        if output.status.success() {
            continue;
        }
        let message = stderr(&output);
        assert!(message.contains("failed to reach the remote daemon at http://127.0.0.1:"), "{message}");

        // Restarting removes temp files of the cut-off write; what remains arrived whole.
        let daemon = Daemon::start(&dst, &[]);
        let arrived = stored_objects(&dst);
        assert!(!arrived.is_empty());
        assert!(arrived.len() < all.len(), "all {} objects arrived before the kill", all.len());
        assert_eq!(json(wstore(&dst, &["ls", "--json"]))["commits"].as_array().unwrap().len(), 0);

        let report = json(wstore(&src, &["push", &daemon.url, "ft", "--json", "-q"]));
        let rest_bytes: u64 = all.iter().filter(|(id, _)| !arrived.contains_key(id)).map(|(_, size)| size).sum();
        let arrived_bytes: u64 = arrived.values().sum();
        assert_eq!(report["objects_total"], all.len());
        assert_eq!(report["objects_sent"], all.len() - arrived.len());
        assert_eq!(report["bytes_sent"], rest_bytes);
        assert_eq!(report["objects_present"], arrived.len());
        assert_eq!(report["bytes_present"], arrived_bytes);
        assert_eq!(stored_objects(&dst), all);

        let out = dir.path().join("wide-out.safetensors");
        ok(wstore(&dst, &["checkout", "ft", "-o", out.to_str().unwrap()]));
        assert_eq!(ObjectId::of(&std::fs::read(&out).unwrap()), ObjectId::of(&std::fs::read(&finetune).unwrap()));
        daemon.stop();
        return;
    }
    panic!("the push finished before the daemon was killed in all 3 attempts");
}
