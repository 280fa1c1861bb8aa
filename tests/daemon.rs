//! Starts the real `wstore serve` on port 0 and drives it with real clients (`curl`, Python's
//! `safetensors`), comparing every byte with a local checkout made before the daemon started.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Time the daemon gets to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn wstore(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wstore"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("WSTORE_HOME")
        .env_remove("WSTORE_TOKEN")
        .env("WSTORE_AUTHOR", "ci-tester")
        .output()
        .unwrap()
}

fn ok_stdout(output: Output) -> Vec<u8> {
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// A store with a base, a lossless commit, a lossy commit and a model-directory commit, plus
/// local checkouts and the CLI's JSON output of each, all made before any daemon runs.
struct Fixture {
    dir: tempfile::TempDir,
    store: PathBuf,
    base_file: PathBuf,
    finetune_file: PathBuf,
    lossless: Vec<u8>,
    lossy: Vec<u8>,
    dir_model: Vec<u8>,
    dir_config: Vec<u8>,
}

const CONFIG_JSON: &[u8] = b"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64}\n";

impl Fixture {
    fn new(seed: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (base_file, finetune_file) = wstore::synth::write_tiny_family(dir.path(), seed).unwrap();
        let store = dir.path().join("store");
        ok_stdout(wstore(&store, &["init"]));
        ok_stdout(wstore(&store, &["base", "add", "tiny", base_file.to_str().unwrap()]));
        let ft = finetune_file.to_str().unwrap();
        ok_stdout(wstore(&store, &["commit", ft, "--base", "tiny", "--name", "task-a", "--codec", "lossless", "-m", "exact"]));
        ok_stdout(wstore(&store, &["commit", ft, "--base", "tiny", "--name", "task-lossy", "--parent", "task-a"]));

        let model_dir = dir.path().join("model-dir");
        std::fs::create_dir_all(model_dir.join("extra")).unwrap();
        std::fs::copy(&finetune_file, model_dir.join("model.safetensors")).unwrap();
        std::fs::write(model_dir.join("config.json"), CONFIG_JSON).unwrap();
        std::fs::write(model_dir.join("extra").join("notes.txt"), b"nested file\n").unwrap();
        ok_stdout(wstore(&store, &["commit", model_dir.to_str().unwrap(), "--base", "tiny", "--name", "dir-ft", "--codec", "lossless"]));

        let checkout = |target: &str, out: &Path| {
            ok_stdout(wstore(&store, &["checkout", target, "-o", out.to_str().unwrap()]));
        };
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        checkout("task-a", &out.join("a.safetensors"));
        checkout("task-lossy", &out.join("lossy.safetensors"));
        checkout("dir-ft", &out.join("dir-ft"));
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        Fixture {
            lossless: read(out.join("a.safetensors")),
            lossy: read(out.join("lossy.safetensors")),
            dir_model: read(out.join("dir-ft").join("model.safetensors")),
            dir_config: read(out.join("dir-ft").join("config.json")),
            dir,
            store,
            base_file,
            finetune_file,
        }
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        serde_json::from_slice(&ok_stdout(wstore(&self.store, args))).unwrap()
    }
}

/// A running `wstore serve`; stopped with SIGKILL if a test fails before stopping it.
struct Daemon {
    child: Child,
    url: String,
}

impl Daemon {
    fn start(store: &Path, args: &[&str], token: Option<&str>) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wstore"));
        command
            .arg("--store")
            .arg(store)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("WSTORE_HOME")
            .env_remove("WSTORE_TOKEN")
            .env("WSTORE_AUTHOR", "ci-tester")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(token) = token {
            command.env("WSTORE_TOKEN", token);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = sender.send(url.to_string());
                }
            }
        });
        let url = receiver.recv_timeout(START_TIMEOUT).expect("daemon printed no listening line");
        Daemon { child, url }
    }

    /// Sends SIGTERM and returns the exit code.
    fn terminate(mut self) -> Option<i32> {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0);
        let status = self.child.wait().unwrap();
        status.code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One curl exchange: status, response headers (lower-case names) and body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn curl(url: &str, args: &[&str]) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let headers_path = dir.path().join("headers");
    let body_path = dir.path().join("body");
    let output = Command::new("curl")
        .args(["-sS", "--path-as-is", "-D"])
        .arg(&headers_path)
        .arg("-o")
        .arg(&body_path)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl must be installed to run the daemon tests");
    assert_eq!(output.status.code(), Some(0), "curl {url}: {}", String::from_utf8_lossy(&output.stderr));
    let status = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    let headers = std::fs::read_to_string(&headers_path)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let body = std::fs::read(&body_path).unwrap_or_default();
    Reply { status, headers, body }
}

fn get(daemon: &Daemon, path: &str, args: &[&str]) -> Reply {
    curl(&format!("{}{path}", daemon.url), args)
}

fn range(daemon: &Daemon, path: &str, spec: &str) -> Reply {
    get(daemon, path, &["-H", &format!("Range: {spec}")])
}

fn hex_blake3(bytes: &[u8]) -> String {
    wstore::id::ObjectId::of(bytes).to_hex()
}

/// Splits a `multipart/byteranges` body into (Content-Range, bytes) pairs.
fn multipart(reply: &Reply) -> Vec<(String, Vec<u8>)> {
    let content_type = reply.header("content-type");
    let boundary = content_type.split("boundary=").nth(1).unwrap();
    let delimiter = format!("\r\n--{boundary}");
    let body = &reply.body;
    let mut parts = Vec::new();
    let mut rest: &[u8] = body;
    loop {
        let start = find(rest, delimiter.as_bytes()).unwrap();
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            assert_eq!(rest, b"--\r\n");
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").unwrap();
        let head = String::from_utf8(rest[..head_end].to_vec()).unwrap();
        let content_range = head.lines().find_map(|l| l.strip_prefix("Content-Range: ")).unwrap().to_string();
        let data_start = head_end + 4;
        let data_end = data_start + find(&rest[data_start..], delimiter.as_bytes()).unwrap();
        parts.push((content_range, rest[data_start..data_end].to_vec()));
        rest = &rest[data_end..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn range_reads_match_local_checkout() {
    let fixture = Fixture::new(31);
    let daemon = Daemon::start(&fixture.store, &[], None);
    let path = "/v1/checkout/task-a/finetune.safetensors";
    let local = &fixture.lossless;
    let len = local.len();
    let etag = format!("\"{}\"", hex_blake3(local));

    let full = get(&daemon, path, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, *local);
    assert_eq!(full.header("content-length"), len.to_string());
    assert_eq!(full.header("accept-ranges"), "bytes");
    assert_eq!(full.header("etag"), etag);
    assert_eq!(full.header("x-wstore-lossy"), "false");

    let closed = range(&daemon, path, "bytes=100-4195");
    assert_eq!(closed.status, 206);
    assert_eq!(closed.body, local[100..4196]);
    assert_eq!(closed.header("content-range"), format!("bytes 100-4195/{len}"));
    assert_eq!(closed.header("content-length"), "4096");

    let open = range(&daemon, path, &format!("bytes={}-", len - 5000));
    assert_eq!(open.status, 206);
    assert_eq!(open.body, local[len - 5000..]);

    let suffix = range(&daemon, path, "bytes=-777");
    assert_eq!(suffix.status, 206);
    assert_eq!(suffix.body, local[len - 777..]);
    assert_eq!(suffix.header("content-range"), format!("bytes {}-{}/{len}", len - 777, len - 1));

    let multi = range(&daemon, path, "bytes=0-7, 50000-50099, -16");
    assert_eq!(multi.status, 206);
    assert_eq!(multi.header("content-length"), multi.body.len().to_string());
    let parts = multipart(&multi);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], (format!("bytes 0-7/{len}"), local[0..8].to_vec()));
    assert_eq!(parts[1], (format!("bytes 50000-50099/{len}"), local[50000..50100].to_vec()));
    assert_eq!(parts[2], (format!("bytes {}-{}/{len}", len - 16, len - 1), local[len - 16..].to_vec()));

    let matching = get(&daemon, path, &["-H", "Range: bytes=10-19", "-H", &format!("If-Range: {etag}")]);
    assert_eq!(matching.status, 206);
    assert_eq!(matching.body, local[10..20]);
    let stale = get(&daemon, path, &["-H", "Range: bytes=10-19", "-H", "If-Range: \"0000\""]);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, *local);

    let unsatisfiable = range(&daemon, path, &format!("bytes={len}-"));
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("content-range"), format!("bytes */{len}"));
    assert_eq!(unsatisfiable.json()["error"]["kind"], "range_not_satisfiable");

    for malformed in ["bytes=5-4", "bytes=abc", "lines=0-1", "bytes="] {
        let reply = range(&daemon, path, malformed);
        assert_eq!(reply.status, 200, "{malformed}");
        assert_eq!(reply.body, *local, "{malformed}");
    }

    let head = get(&daemon, path, &["-I"]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), len.to_string());
    assert_eq!(head.header("etag"), etag);
    // curl -I writes the response headers where the body would go; no file bytes follow them.
    assert!(head.body.starts_with(b"HTTP/1.1 200"));
    assert!(head.body.len() < 1024, "{} bytes", head.body.len());
    let head_ranged = get(&daemon, path, &["-I", "-H", "Range: bytes=-10"]);
    assert_eq!(head_ranged.status, 206);
    assert_eq!(head_ranged.header("content-length"), "10");
    assert_eq!(head_ranged.header("content-range"), format!("bytes {}-{}/{len}", len - 10, len - 1));
    let head_unsatisfiable = get(&daemon, path, &["-I", "-H", &format!("Range: bytes={len}-")]);
    assert_eq!(head_unsatisfiable.status, 416);

    let config = get(&daemon, "/v1/checkout/dir-ft/config.json", &[]);
    assert_eq!(config.status, 200);
    assert_eq!(config.body, fixture.dir_config);
    assert_eq!(config.header("content-type"), "application/json");
    let config_part = range(&daemon, "/v1/checkout/dir-ft/config.json", "bytes=2-14");
    assert_eq!(config_part.body, CONFIG_JSON[2..15]);
    let nested = get(&daemon, "/v1/checkout/dir-ft/extra/notes.txt", &[]);
    assert_eq!(nested.body, b"nested file\n");
    let shard = range(&daemon, "/v1/checkout/dir-ft/model.safetensors", "bytes=-100000");
    assert_eq!(shard.body, fixture.dir_model[fixture.dir_model.len() - 100_000..]);

    let manifest = get(&daemon, "/v1/checkout/dir-ft", &[]).json();
    assert_eq!(manifest["kind"], "commit");
    let files = manifest["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["config.json", "extra/notes.txt", "model.safetensors"]);
    assert_eq!(files[0]["bytes"], CONFIG_JSON.len());
    assert_eq!(files[0]["etag"], format!("\"{}\"", hex_blake3(CONFIG_JSON)));
    let by_url = get(&daemon, files[2]["url"].as_str().unwrap(), &[]);
    assert_eq!(by_url.body, fixture.dir_model);

    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn etag_is_stable_across_restart() {
    let fixture = Fixture::new(32);
    let path = "/v1/checkout/task-lossy/finetune.safetensors";
    let daemon = Daemon::start(&fixture.store, &[], None);
    let first = get(&daemon, path, &["-I"]).header("etag").to_string();
    assert_eq!(daemon.terminate(), Some(0));
    let daemon = Daemon::start(&fixture.store, &["--cache-mb", "0"], None);
    let second = get(&daemon, path, &["-I"]);
    assert_eq!(second.header("etag"), first);
    assert_eq!(first, format!("\"{}\"", hex_blake3(&fixture.lossy)));
    assert_eq!(second.header("x-wstore-lossy"), "true");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn lossy_tensor_range_equals_local_checkout() {
    let fixture = Fixture::new(33);
    let show = fixture.cli_json(&["show", "task-lossy", "--json"]);
    let lossy_names: Vec<&str> = show["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["storage"] == "ultradelta")
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!lossy_names.is_empty());

    // Offsets from the local checkout's own header, as a reader of the file would find them.
    let local = &fixture.lossy;
    let header_len = u64::from_le_bytes(local[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&local[8..8 + header_len]).unwrap();
    let daemon = Daemon::start(&fixture.store, &[], None);
    for name in lossy_names {
        let offsets = &header[name]["data_offsets"];
        let start = 8 + header_len + offsets[0].as_u64().unwrap() as usize;
        let end = 8 + header_len + offsets[1].as_u64().unwrap() as usize;
        let reply = range(&daemon, "/v1/checkout/task-lossy/finetune.safetensors", &format!("bytes={start}-{}", end - 1));
        assert_eq!(reply.status, 206, "{name}");
        assert_eq!(reply.body.len(), end - start, "{name}");
        assert_eq!(reply.body, local[start..end], "{name}");
    }
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn json_endpoints_equal_cli_output() {
    let fixture = Fixture::new(34);
    let cli = |args: &[&str]| ok_stdout(wstore(&fixture.store, args));
    let expected = [
        ("/v1/ls", cli(&["ls", "--json"])),
        ("/v1/bases", cli(&["base", "list", "--json"])),
        ("/v1/show/task-lossy", cli(&["show", "task-lossy", "--json"])),
        ("/v1/show/tiny", cli(&["show", "tiny", "--json"])),
        ("/v1/log/task-lossy", cli(&["log", "task-lossy", "--json"])),
    ];
    let daemon = Daemon::start(&fixture.store, &[], None);
    for (path, stdout) in &expected {
        let reply = get(&daemon, path, &[]);
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), "application/json", "{path}");
        assert_eq!(String::from_utf8_lossy(&reply.body), String::from_utf8_lossy(stdout), "{path}");
    }

    let refs = get(&daemon, "/v1/refs", &[]).json();
    let names: Vec<&str> = refs.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dir-ft", "task-a", "task-lossy"]);
    let listing: Value = serde_json::from_slice(&expected[0].1).unwrap();
    let lossy_id = listing["commits"].as_array().unwrap().iter().find(|c| c["refs"][0] == "task-lossy").unwrap()["id"].clone();
    assert_eq!(refs[2]["commit"], lossy_id);

    let health = get(&daemon, "/v1/health", &[]).json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    let missing = get(&daemon, "/v1/show/ghost", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["kind"], "not_found");
    assert!(missing.json()["error"]["message"].as_str().unwrap().contains("\"ghost\" not found"));
    let no_route = get(&daemon, "/v1/nothing", &[]);
    assert_eq!(no_route.status, 404);
    let wrong_method = get(&daemon, "/v1/ls", &["-X", "DELETE"]);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), "GET");
    assert_eq!(daemon.terminate(), Some(0));
}

fn post_json(daemon: &Daemon, path: &str, body: &Value) -> Reply {
    get(daemon, path, &["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &body.to_string()])
}

#[test]
fn write_api_by_path_and_upload() {
    let fixture = Fixture::new(35);
    let daemon = Daemon::start(&fixture.store, &["--max-upload-gb", "1"], None);
    let ft = fixture.finetune_file.to_str().unwrap();

    let again = post_json(&daemon, "/v1/bases", &serde_json::json!({"name": "tiny-again", "path": fixture.base_file}));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["already_present"], true);
    assert_eq!(again.json()["new_bytes"], 0);

    let by_path = post_json(
        &daemon,
        "/v1/commits",
        &serde_json::json!({"path": ft, "base": "tiny", "name": "by-path", "codec": "lossless", "message": "over http", "author": "http-client"}),
    );
    assert_eq!(by_path.status, 201, "{}", String::from_utf8_lossy(&by_path.body));
    assert_eq!(by_path.json()["ref_name"], "by-path");
    assert_eq!(by_path.json()["new_bytes"], 0);

    let upload = get(&daemon, "/v1/uploads/ft.safetensors", &["-T", ft]);
    assert_eq!(upload.status, 201, "{}", String::from_utf8_lossy(&upload.body));
    let upload_id = upload.json()["upload"].as_str().unwrap().to_string();
    assert_eq!(upload.json()["bytes"], std::fs::metadata(ft).unwrap().len());
    let by_upload = post_json(&daemon, "/v1/commits", &serde_json::json!({"upload": upload_id, "base": "tiny", "name": "by-upload", "codec": "lossless"}));
    assert_eq!(by_upload.status, 201, "{}", String::from_utf8_lossy(&by_upload.body));
    assert_eq!(by_upload.json()["ref_name"], "by-upload");
    assert_eq!(by_upload.json()["tensors_by_kind"], by_path.json()["tensors_by_kind"]);
    let reused = post_json(&daemon, "/v1/commits", &serde_json::json!({"upload": upload_id, "base": "tiny"}));
    assert_eq!(reused.status, 404);
    assert_eq!(std::fs::read_dir(fixture.store.join("uploads")).unwrap().count(), 0);

    let base_upload = get(&daemon, "/v1/uploads/base.safetensors", &["-T", fixture.base_file.to_str().unwrap()]);
    let base_id = base_upload.json()["upload"].as_str().unwrap().to_string();
    let base_by_upload = post_json(&daemon, "/v1/bases", &serde_json::json!({"name": "tiny-upload", "upload": base_id}));
    assert_eq!(base_by_upload.status, 200);
    assert_eq!(base_by_upload.json()["already_present"], true);

    let cases = [
        (serde_json::json!({"name": "task-a", "path": fixture.base_file}), "/v1/bases", 409, "name_taken"),
        (serde_json::json!({"name": "x", "path": "relative.safetensors"}), "/v1/bases", 400, "invalid_input"),
        (serde_json::json!({"name": "x", "path": "/nonexistent/base.safetensors"}), "/v1/bases", 400, "invalid_input"),
        (serde_json::json!({"name": "-bad", "path": fixture.base_file}), "/v1/bases", 400, "invalid_input"),
        (serde_json::json!({"path": ft, "base": "ghost"}), "/v1/commits", 404, "not_found"),
        (serde_json::json!({"path": ft, "base": "tiny", "max_eror": 0.1}), "/v1/commits", 400, "invalid_input"),
        (serde_json::json!({"path": ft, "base": "tiny", "codec": "zip"}), "/v1/commits", 400, "invalid_input"),
        (serde_json::json!({"path": ft, "base": "tiny", "name": "task-a", "parent": "dir-ft"}), "/v1/commits", 409, "ref_exists"),
    ];
    for (body, path, status, kind) in cases {
        let reply = post_json(&daemon, path, &body);
        assert_eq!(reply.status, status, "{body}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["error"]["kind"], kind, "{body}");
    }
    let huge_body = fixture.dir.path().join("huge.json");
    std::fs::write(&huge_body, " ".repeat(2 << 20)).unwrap();
    let huge = get(&daemon, "/v1/commits", &["-X", "POST", "--data-binary", &format!("@{}", huge_body.display())]);
    assert_eq!(huge.status, 413);
    let bad_name = get(&daemon, "/v1/uploads/model.bin", &["-T", ft]);
    assert_eq!(bad_name.status, 400);
    assert_eq!(daemon.terminate(), Some(0));

    // The commits made through the daemon are in the store, and check out byte for byte.
    let listing = fixture.cli_json(&["ls", "--json"]);
    let refs: Vec<&str> = listing["commits"].as_array().unwrap().iter().flat_map(|c| c["refs"].as_array().unwrap()).map(|r| r.as_str().unwrap()).collect();
    assert!(refs.contains(&"by-path"), "{refs:?}");
    assert!(refs.contains(&"by-upload"), "{refs:?}");
    let out = fixture.dir.path().join("by-upload.safetensors");
    ok_stdout(wstore(&fixture.store, &["checkout", "by-upload", "-o", out.to_str().unwrap()]));
    assert_eq!(std::fs::read(out).unwrap(), std::fs::read(ft).unwrap());
    let log = fixture.cli_json(&["log", "by-path", "--json"]);
    assert_eq!(log[0]["author"], "http-client");
    assert_eq!(log[0]["message"], "over http");
}

#[test]
fn upload_over_limit_is_rejected() {
    let fixture = Fixture::new(36);
    // 0 GiB: every non-empty upload is over the limit.
    let daemon = Daemon::start(&fixture.store, &["--max-upload-gb", "0"], None);
    let reply = get(&daemon, "/v1/uploads/ft.safetensors", &["-T", fixture.finetune_file.to_str().unwrap()]);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["kind"], "too_large");
    assert_eq!(std::fs::read_dir(fixture.store.join("uploads")).unwrap().count(), 0);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn token_is_required_when_configured() {
    let fixture = Fixture::new(37);
    let daemon = Daemon::start(&fixture.store, &[], Some("s3cret"));
    let discovery: Value = serde_json::from_slice(&std::fs::read(fixture.store.join("daemon.json")).unwrap()).unwrap();
    assert_eq!(discovery["token_required"], true);

    let missing = get(&daemon, "/v1/health", &[]);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), "Bearer");
    assert_eq!(missing.json()["error"]["kind"], "unauthorized");
    let wrong = get(&daemon, "/v1/checkout/task-a/finetune.safetensors", &["-H", "Authorization: Bearer s3cre"]);
    assert_eq!(wrong.status, 401);
    assert!(!wrong.headers.contains_key("etag"));
    let right = get(&daemon, "/v1/checkout/task-a/finetune.safetensors", &["-H", "Authorization: Bearer s3cret"]);
    assert_eq!(right.status, 200);
    assert_eq!(right.body, fixture.lossless);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn non_loopback_listen_needs_token() {
    let fixture = Fixture::new(38);
    let output = Command::new(env!("CARGO_BIN_EXE_wstore"))
        .arg("--store")
        .arg(&fixture.store)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("WSTORE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen 0.0.0.0:0: is not a loopback address"), "{stderr}");
    assert!(!fixture.store.join("daemon.json").exists());
}

#[test]
fn path_traversal_is_rejected() {
    let fixture = Fixture::new(39);
    let daemon = Daemon::start(&fixture.store, &[], None);
    for path in [
        "/v1/checkout/dir-ft/../../../etc/passwd",
        "/v1/checkout/dir-ft/%2e%2e/%2e%2e/etc/passwd",
        "/v1/checkout/dir-ft/%2Fetc%2Fpasswd",
        "/v1/checkout/dir-ft/extra%2F..%2F..%2Fx",
        "/v1/checkout/dir-ft//etc/passwd",
        "/v1/checkout/dir-ft/a%00b",
        "/v1/checkout/..%2Fstore/config.json",
        "/v1/show/..",
        "/v1/uploads/..%2F..%2Fx.safetensors",
    ] {
        let reply = get(&daemon, path, &["-X", if path.starts_with("/v1/uploads") { "PUT" } else { "GET" }]);
        assert_eq!(reply.status, 400, "{path}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["error"]["kind"], "invalid_input", "{path}");
    }
    let missing = get(&daemon, "/v1/checkout/dir-ft/etc/passwd", &[]);
    assert_eq!(missing.status, 404);
    let long = get(&daemon, &format!("/v1/show/{}", "a".repeat(200)), &[]);
    assert_eq!(long.status, 400);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn sigterm_drains_and_removes_discovery_file() {
    let dir = tempfile::tempdir().unwrap();
    let (big_file, big) = write_big_checkpoint(dir.path());
    let store = dir.path().join("store");
    ok_stdout(wstore(&store, &["init"]));
    ok_stdout(wstore(&store, &["base", "add", "big", big_file.to_str().unwrap()]));
    let daemon = Daemon::start(&store, &[], None);

    let discovery_path = store.join("daemon.json");
    let discovery: Value = serde_json::from_slice(&std::fs::read(&discovery_path).unwrap()).unwrap();
    assert_eq!(discovery["url"], daemon.url);
    assert_eq!(discovery["pid"], daemon.child.id());
    assert_eq!(discovery["token_required"], false);
    assert_eq!(discovery["version"], env!("CARGO_PKG_VERSION"));
    let parsed = wstore::daemon::read_discovery(&store).unwrap().unwrap();
    assert_eq!(parsed.url, daemon.url);

    // The client reads the headers and stops reading, so the 16 MiB body is still being sent
    // (it is larger than the socket buffers) when SIGTERM arrives.
    let address = daemon.url.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.write_all(b"GET /v1/checkout/big/big.safetensors HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let (head, mut body) = read_response_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!("content-length: {}", big.len())), "{head}");
    let pid = libc::pid_t::try_from(daemon.child.id()).unwrap();
    // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(discovery_path.exists(), "the discovery file must stay until the drain ends");

    stream.read_to_end(&mut body).unwrap();
    assert_eq!(body.len(), big.len());
    assert!(body == big, "drained body differs from the stored file");
    let mut daemon = daemon;
    assert_eq!(daemon.child.wait().unwrap().code(), Some(0));
    assert!(!discovery_path.exists());

    // With the daemon gone the CLI opens the store itself again.
    ok_stdout(wstore(&store, &["ls"]));
}

/// Writes a 16 MiB single-tensor checkpoint of random F32 values (incompressible, so the
/// object is as large as the tensor) and returns its path and bytes.
fn write_big_checkpoint(dir: &Path) -> (PathBuf, Vec<u8>) {
    use rand::{RngCore, SeedableRng};

    let mut values = vec![0u8; 16 << 20];
    rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut values);
    let tensor = wstore::synth::SynthTensor { name: "w".into(), dtype: wstore::format::safetensors::Dtype::F32, shape: vec![4096, 1024], bytes: values };
    let bytes = wstore::synth::to_safetensors(&[tensor], None).unwrap();
    let path = dir.join("big.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Writes an F32/F16 base and a fine-tune of it (numpy has no bf16), returning their paths.
fn write_float_family(dir: &Path) -> (PathBuf, PathBuf) {
    use rand::{Rng, SeedableRng};
    use wstore::format::safetensors::Dtype;
    use wstore::synth::{to_safetensors, SynthTensor};

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut values = |count: usize, scale: f32| -> Vec<f32> { (0..count).map(|_| scale * (rng.gen::<f32>() - 0.5)).collect() };
    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let f16_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect() };
    let w1 = values(64 * 128, 0.1);
    let b1 = values(128, 0.1);
    let w2 = values(128 * 64, 0.1);
    let noise = values(64 * 128, 0.002);
    let w1_ft: Vec<f32> = w1.iter().zip(&noise).map(|(w, n)| w + n).collect();
    let tensor = |name: &str, dtype: Dtype, shape: &[u64], bytes: Vec<u8>| SynthTensor { name: name.into(), dtype, shape: shape.to_vec(), bytes };
    let base = [
        tensor("layer.w1", Dtype::F32, &[64, 128], f32_bytes(&w1)),
        tensor("layer.b1", Dtype::F32, &[128], f32_bytes(&b1)),
        tensor("layer.w2", Dtype::F16, &[128, 64], f16_bytes(&w2)),
    ];
    let mut finetune = base.clone();
    finetune[0].bytes = f32_bytes(&w1_ft);
    let base_path = dir.join("float-base.safetensors");
    let finetune_path = dir.join("float-ft.safetensors");
    std::fs::write(&base_path, to_safetensors(&base, None).unwrap()).unwrap();
    std::fs::write(&finetune_path, to_safetensors(&finetune, None).unwrap()).unwrap();
    (base_path, finetune_path)
}

#[test]
fn python_safetensors_reads_via_daemon() {
    let python = std::env::var("WSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let required = std::env::var("WSTORE_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let probe = Command::new(&python).args(["-c", "import safetensors, numpy"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(!required, "WSTORE_REQUIRE_PYTHON=1 but {python} cannot import safetensors and numpy");
        eprintln!("SKIP python_safetensors_reads_via_daemon: {python} cannot import safetensors and numpy (set WSTORE_PYTHON)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = write_float_family(dir.path());
    let store = dir.path().join("store");
    ok_stdout(wstore(&store, &["init"]));
    ok_stdout(wstore(&store, &["base", "add", "float", base.to_str().unwrap()]));
    let report: Value = serde_json::from_slice(&ok_stdout(wstore(&store, &["commit", finetune.to_str().unwrap(), "--base", "float", "--name", "ft", "--json"]))).unwrap();
    assert_eq!(report["tensors_by_kind"]["ultradelta"], 1, "{report}");
    let local = dir.path().join("ft-local.safetensors");
    ok_stdout(wstore(&store, &["checkout", "ft", "-o", local.to_str().unwrap()]));

    let daemon = Daemon::start(&store, &[], None);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_via_daemon.py");
    for name in ["layer.w1", "layer.w2"] {
        let output = Command::new(&python)
            .arg(&script)
            .arg(format!("{}/v1/checkout/ft/float-ft.safetensors", daemon.url))
            .arg(&local)
            .arg(name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("full file: "), "{stdout}");
        assert!(stdout.contains(&format!("tensor {name}: 3 range requests")), "{stdout}");
    }
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn corrupt_tensor_truncates_response() {
    let fixture = Fixture::new(42);
    // `score.weight` is new in the fine-tune, so it is stored whole: its object id is its hash.
    let show = fixture.cli_json(&["show", "task-a", "--json"]);
    let score = show["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "score.weight").unwrap().clone();
    assert_eq!(score["storage"], "whole");
    let hash = score["hash"].as_str().unwrap();
    let object = fixture.store.join("objects").join(&hash[..2]).join(&hash[2..]);
    let size = std::fs::metadata(&object).unwrap().len() as usize;
    std::fs::write(&object, vec![0x5a; size]).unwrap();

    let local = &fixture.lossless;
    let header_len = u64::from_le_bytes(local[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&local[8..8 + header_len]).unwrap();
    let offsets = &header["score.weight"]["data_offsets"];
    let start = 8 + header_len + offsets[0].as_u64().unwrap() as usize;
    let end = 8 + header_len + offsets[1].as_u64().unwrap() as usize;

    let daemon = Daemon::start(&fixture.store, &[], None);
    let url = format!("{}/v1/checkout/task-a/finetune.safetensors", daemon.url);
    for args in [vec![], vec!["-H".to_string(), format!("Range: bytes={start}-{}", end - 1)]] {
        let output = Command::new("curl").args(["-sS", "-o", "/dev/null"]).args(&args).arg(&url).output().unwrap();
        // 18: the transfer ended before Content-Length bytes arrived.
        assert_eq!(output.status.code(), Some(18), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    // Ranges that do not touch the damaged tensor are still served, and correct.
    let header_only = range(&daemon, "/v1/checkout/task-a/finetune.safetensors", &format!("bytes=0-{}", start - 1));
    assert_eq!(header_only.status, 206);
    assert_eq!(header_only.body, local[..start]);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn connection_cap_holds_extra_clients() {
    let fixture = Fixture::new(43);
    let daemon = Daemon::start(&fixture.store, &["--max-connections", "1"], None);

    // A kept-alive connection occupies the only connection slot until it is closed.
    let address = daemon.url.trim_start_matches("http://").to_string();
    let mut held = TcpStream::connect(&address).unwrap();
    held.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let (head, _) = read_response_head(&mut held);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let url = format!("{}/v1/health", daemon.url);
    let waiting = Command::new("curl").args(["-sS", "-o", "/dev/null", "--max-time", "1"]).arg(&url).output().unwrap();
    // 28: curl timed out waiting for the response.
    assert_eq!(waiting.status.code(), Some(28), "{}", String::from_utf8_lossy(&waiting.stderr));

    drop(held);
    let after = get(&daemon, "/v1/health", &[]);
    assert_eq!(after.status, 200);
    assert_eq!(daemon.terminate(), Some(0));
}

/// Reads a response's status line and headers; returns them and any body bytes read past them.
fn read_response_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "connection closed before the response headers ended");
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
            return (head, buffer[end + 4..].to_vec());
        }
    }
}

/// What only a browser sends is refused: a Host that is not loopback (DNS rebinding) and a
/// write carrying an Origin header (a page's script). Plain clients are unaffected.
#[test]
fn browser_requests_are_rejected() {
    let fixture = Fixture::new(38);
    let daemon = Daemon::start(&fixture.store, &[], None);
    let rebinding = get(&daemon, "/v1/ls", &["-H", "Host: attacker.example:7070"]);
    assert_eq!(rebinding.status, 403, "{}", String::from_utf8_lossy(&rebinding.body));
    assert_eq!(rebinding.json()["error"]["kind"], "forbidden");
    assert_eq!(get(&daemon, "/v1/ls", &["-H", "Host: localhost:7070"]).status, 200);
    let path = fixture.finetune_file.to_str().unwrap();
    let body = serde_json::json!({"path": path, "base": "tiny", "name": "from-page"}).to_string();
    let from_page = get(&daemon, "/v1/commits", &["-X", "POST", "-H", "Origin: http://attacker.example", "-H", "Content-Type: text/plain", "--data-binary", &body]);
    assert_eq!(from_page.status, 403, "{}", String::from_utf8_lossy(&from_page.body));
    assert!(!String::from_utf8_lossy(&get(&daemon, "/v1/refs", &[]).body).contains("from-page"));
    assert_eq!(daemon.terminate(), Some(0));
}
