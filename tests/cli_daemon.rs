//! The CLI while the real `wstore serve` owns the store: every routed command must print what
//! the same command prints when the CLI opens the store itself, and checkouts through the
//! daemon must be byte-identical to direct ones.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};


use common::daemon::{wstore_in, Daemon};

fn wstore(store: &Path, args: &[&str]) -> Output {
    wstore_in(store, store.parent().unwrap(), &[], args)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(output: Output) -> Output {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    output
}

/// Copies a closed store (catalog and objects) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Replaces every 64-digit hex id with `<id>`: commit ids hash the commit time, so two stores
/// that commit the same files a second apart name them differently.
fn mask_ids(text: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() == 64 { "<id>" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// A store with a base, a lossless commit, a lossy child commit and a model-directory commit,
/// made by the CLI with no daemon running.
struct Fixture {
    dir: tempfile::TempDir,
    store: PathBuf,
}

impl Fixture {
    fn new(seed: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (base, finetune) = wstore::synth::write_tiny_family(dir.path(), seed).unwrap();
        let store = dir.path().join("store");
        ok(wstore(&store, &["init"]));
        ok(wstore(&store, &["base", "add", "tiny", base.to_str().unwrap()]));
        let ft = finetune.to_str().unwrap();
        ok(wstore(&store, &["commit", ft, "--base", "tiny", "--name", "task-a", "--codec", "lossless", "-m", "exact"]));
        ok(wstore(&store, &["commit", ft, "--base", "tiny", "--name", "task-lossy", "--parent", "task-a"]));

        let model_dir = dir.path().join("model-dir");
        std::fs::create_dir_all(model_dir.join("extra")).unwrap();
        std::fs::copy(&finetune, model_dir.join("model.safetensors")).unwrap();
        std::fs::write(model_dir.join("config.json"), b"{\"hidden_size\": 64}\n").unwrap();
        std::fs::write(model_dir.join("extra").join("notes.txt"), b"nested file\n").unwrap();
        ok(wstore(&store, &["commit", model_dir.to_str().unwrap(), "--base", "tiny", "--name", "dir-ft", "--codec", "lossless"]));
        Fixture { dir, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Read commands whose output must not depend on the route.
const READ_COMMANDS: &[&[&str]] = &[
    &["ls"],
    &["ls", "--json"],
    &["base", "list"],
    &["base", "list", "--json"],
    &["log", "task-lossy"],
    &["log", "task-lossy", "--json"],
    &["log", "tiny"],
    &["show", "task-a"],
    &["show", "task-lossy", "--json"],
    &["show", "dir-ft"],
    &["show", "tiny", "--json"],
];

/// Checkouts to paths relative to the fixture directory: a lossless file, a lossy file, a
/// model directory, a base, and a file into an existing directory.
const CHECKOUTS: &[&[&str]] = &[
    &["checkout", "task-a", "-o", "out/a.safetensors"],
    &["checkout", "task-lossy", "-o", "out/lossy.safetensors", "--json"],
    &["checkout", "dir-ft", "-o", "out/dir-ft"],
    &["checkout", "tiny", "-o", "out/base.safetensors", "--json"],
    &["checkout", "task-a", "-o", "out/existing-dir"],
];

/// Files the checkouts above write, relative to the fixture directory.
const CHECKOUT_FILES: &[&str] = &[
    "out/a.safetensors",
    "out/lossy.safetensors",
    "out/dir-ft/model.safetensors",
    "out/dir-ft/config.json",
    "out/dir-ft/extra/notes.txt",
    "out/base.safetensors",
    "out/existing-dir/finetune.safetensors",
];

/// Commands that must fail the same way on both routes, with their expected stderr part.
const FAILING_COMMANDS: &[(&[&str], &str)] = &[
    (&["show", "no-such-ref"], "not found"),
    (&["log", "no-such-ref", "--json"], "not found"),
    (&["checkout", "task-a", "-o", "out/a.safetensors"], "--force"),
    (&["checkout", "no-such-ref"], "not found"),
    (&["base", "add", "b@d", "base.safetensors"], "invalid base name"),
    (&["commit", "finetune.safetensors", "--base", "no-such-base"], "not found"),
    (&["commit", "finetune.safetensors", "--base", "tiny", "--mask-mode", "odd"], "--mask-mode"),
];

struct Run {
    reads: Vec<String>,
    checkouts: Vec<String>,
    files: Vec<Vec<u8>>,
    failures: Vec<String>,
}

/// Runs the read commands, the checkouts (into a fresh `out/`) and the failing commands.
fn run_all(fixture: &Fixture) -> Run {
    let cwd = fixture.dir.path();
    let out = fixture.path("out");
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::create_dir_all(out.join("existing-dir")).unwrap();
    let reads = READ_COMMANDS.iter().map(|args| stdout(&ok(wstore(&fixture.store, args)))).collect();
    let checkouts = CHECKOUTS.iter().map(|args| stdout(&ok(wstore_in(&fixture.store, cwd, &[], args)))).collect();
    let files = CHECKOUT_FILES.iter().map(|path| std::fs::read(cwd.join(path)).unwrap()).collect();
    let failures = FAILING_COMMANDS
        .iter()
        .map(|(args, expected)| {
            let output = wstore_in(&fixture.store, cwd, &[], args);
            assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
            assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
            stderr(&output)
        })
        .collect();
    Run { reads, checkouts, files, failures }
}

#[test]
fn routed_commands_print_direct_output() {
    let fixture = Fixture::new(31);
    let daemon = Daemon::start(&fixture.store, &[]);
    let through_daemon = run_all(&fixture);
    daemon.stop();
    let direct = run_all(&fixture);

    for (i, args) in READ_COMMANDS.iter().enumerate() {
        assert_eq!(through_daemon.reads[i], direct.reads[i], "wstore {args:?}");
    }
    for (i, args) in CHECKOUTS.iter().enumerate() {
        assert_eq!(through_daemon.checkouts[i], direct.checkouts[i], "wstore {args:?}");
    }
    for (i, path) in CHECKOUT_FILES.iter().enumerate() {
        assert!(through_daemon.files[i] == direct.files[i], "{path} differs between the routes");
    }
    for (i, (args, _)) in FAILING_COMMANDS.iter().enumerate() {
        assert_eq!(through_daemon.failures[i], direct.failures[i], "wstore {args:?}");
    }
    // The lossy checkout is the codec's reconstruction, not the committed file.
    let committed = std::fs::read(fixture.path("finetune.safetensors")).unwrap();
    assert_eq!(through_daemon.files[0], committed);
    assert_ne!(through_daemon.files[1], committed);
    assert_eq!(through_daemon.files[5], std::fs::read(fixture.path("base.safetensors")).unwrap());
}

#[test]
fn writes_through_daemon_match_direct_writes() {
    let fixture = Fixture::new(41);
    let twin = fixture.path("twin");
    copy_tree(&fixture.store, &twin);
    let other = fixture.path("other");
    std::fs::create_dir_all(&other).unwrap();
    wstore::synth::write_tiny_family(&other, 42).unwrap();

    // Relative input paths: the CLI must send them absolute, as the daemon has another cwd.
    let writes: &[&[&str]] = &[
        &["base", "add", "other", "other/base.safetensors"],
        &["base", "add", "other-again", "other/base.safetensors", "--json"],
        &["base", "add", "tiny-copy", "base.safetensors"],
        &["commit", "finetune.safetensors", "--base", "tiny", "--name", "task-b", "--codec", "lossless", "-m", "b"],
        &["commit", "finetune.safetensors", "--base", "tiny", "--name", "task-c", "--max-error", "2e-3", "--json"],
        &["commit", "other/finetune.safetensors", "--base", "other", "--name", "other-ft", "--author", "ana"],
    ];
    let cwd = fixture.dir.path();
    let daemon = Daemon::start(&fixture.store, &[]);
    let routed: Vec<String> = writes.iter().map(|args| stdout(&ok(wstore_in(&fixture.store, cwd, &[], args)))).collect();
    let routed_log = stdout(&ok(wstore(&fixture.store, &["log", "other-ft", "--json"])));
    daemon.stop();
    let direct: Vec<String> = writes.iter().map(|args| stdout(&ok(wstore_in(&twin, cwd, &[], args)))).collect();

    for (i, args) in writes.iter().enumerate() {
        assert_eq!(mask_ids(&routed[i]), mask_ids(&direct[i]), "wstore {args:?}");
    }
    // Base ids hash the weights alone, so they match without masking.
    assert_eq!(routed[0], direct[0]);
    assert!(routed[2].contains("already stored"), "{}", routed[2]);
    // The author is resolved by the CLI, not taken from the daemon's environment.
    let log: serde_json::Value = serde_json::from_str(&routed_log).unwrap();
    assert_eq!(log[0]["author"], "ana");
}

#[test]
fn verbose_names_the_route() {
    let fixture = Fixture::new(51);
    let output = ok(wstore(&fixture.store, &["--verbose", "ls"]));
    assert!(stderr(&output).contains(&format!("opening store at {} directly", fixture.store.display())), "{}", stderr(&output));

    let daemon = Daemon::start(&fixture.store, &[]);
    let output = ok(wstore(&fixture.store, &["--verbose", "ls"]));
    assert!(stderr(&output).contains(&format!("using daemon at {}", daemon.url)), "{}", stderr(&output));
    daemon.stop();
}

#[test]
fn stale_discovery_file_is_ignored() {
    let fixture = Fixture::new(61);
    let expected = stdout(&ok(wstore(&fixture.store, &["ls", "--json"])));
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // A pid that has exited.
    let mut exited = Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    for pid in [exited.id(), std::process::id()] {
        let discovery = serde_json::json!({ "url": format!("http://127.0.0.1:{port}"), "pid": pid, "token_required": false, "version": "0.0.0" });
        std::fs::write(fixture.store.join("daemon.json"), discovery.to_string()).unwrap();
        let output = ok(wstore(&fixture.store, &["--verbose", "ls", "--json"]));
        assert_eq!(stdout(&output), expected, "pid {pid}");
        assert!(stderr(&output).contains("directly"), "pid {pid}: {}", stderr(&output));
    }
    std::fs::remove_file(fixture.store.join("daemon.json")).unwrap();
}

#[test]
fn token_daemon_needs_wstore_token() {
    let fixture = Fixture::new(71);
    let expected = stdout(&ok(wstore(&fixture.store, &["ls"])));
    let token_file = fixture.path("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let daemon = Daemon::start(&fixture.store, &["--token-file", token_file.to_str().unwrap()]);
    let cwd = fixture.dir.path();

    let output = wstore(&fixture.store, &["ls"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("set WSTORE_TOKEN or pass --token-file FILE"), "{}", stderr(&output));
    let output = wstore_in(&fixture.store, cwd, &[("WSTORE_TOKEN", "wrong")], &["ls"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("rejected the bearer token"), "{}", stderr(&output));

    let output = ok(wstore_in(&fixture.store, cwd, &[("WSTORE_TOKEN", "s3cret-token")], &["ls"]));
    assert_eq!(stdout(&output), expected);
    let output = ok(wstore_in(&fixture.store, cwd, &[], &["--token-file", "token", "ls"]));
    assert_eq!(stdout(&output), expected);
    let output = ok(wstore_in(&fixture.store, cwd, &[("WSTORE_TOKEN", "s3cret-token")], &["checkout", "task-lossy", "-o", "t.safetensors"]));
    assert!(stdout(&output).contains("verified"), "{}", stdout(&output));
    daemon.stop();
}

#[test]
fn daemon_rejects_what_it_cannot_serve() {
    let fixture = Fixture::new(81);
    let daemon = Daemon::start(&fixture.store, &[]);

    let output = ok(wstore(&fixture.store, &["init"]));
    assert_eq!(stdout(&output), format!("store already exists at {}\n", fixture.store.display()));

    let output = wstore(&fixture.store, &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains(&format!("the daemon at {}", daemon.url)), "{message}");
    assert!(message.contains("`wstore serve` cannot run through it; stop the daemon"), "{message}");
    assert!(!message.contains("lock"), "{message}");

    // A checkout into the store is rejected before any byte is fetched.
    let inside = fixture.store.join("x.safetensors");
    let output = wstore(&fixture.store, &["checkout", "task-a", "-o", inside.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("inside the store directory"), "{}", stderr(&output));
    assert!(!inside.exists());
    daemon.stop();
}

#[test]
fn ids_are_masked() {
    let id = "a".repeat(64);
    assert_eq!(mask_ids(&format!("committed x as {id} (lossless)")), "committed x as <id> (lossless)");
    assert_eq!(mask_ids("short cafe1234 stays"), "short cafe1234 stays");
}

/// `wstore diff` arguments with the exit code they must give on both routes.
const DIFF_COMMANDS: &[(&[&str], i32)] = &[
    (&["diff", "task-a", "task-lossy", "--json"], 1),
    (&["diff", "task-a"], 1),
    (&["diff", "task-a", "task-a"], 0),
    (&["diff", "task-a", "task-lossy", "--sort", "relative", "--top", "2", "--status", "changed", "--atol", "1e-3"], 0),
    (&["diff", "finetune.safetensors", "base.safetensors", "--json"], 1),
];

#[test]
fn diff_through_daemon_prints_direct_output() {
    let fixture = Fixture::new(43);
    let cwd = fixture.dir.path();
    let run = || -> Vec<String> {
        DIFF_COMMANDS
            .iter()
            .map(|(args, code)| {
                let output = wstore_in(&fixture.store, cwd, &[], args);
                assert_eq!(output.status.code(), Some(*code), "{args:?}: {}", stderr(&output));
                stdout(&output)
            })
            .collect()
    };

    let daemon = Daemon::start(&fixture.store, &[]);
    let through_daemon = run();

    // The endpoint itself returns what `diff --json` prints.
    let body = Command::new("curl").args(["-sS", "--fail-with-body", &format!("{}/v1/diff/task-a/task-lossy", daemon.url)]).output().unwrap();
    assert_eq!(body.status.code(), Some(0), "{}", String::from_utf8_lossy(&body.stdout));
    let bad = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/v1/diff/task-a/task-lossy?top=many", daemon.url)])
        .output()
        .unwrap();
    assert_eq!(stdout(&bad), "400");

    // A file against a stored checkpoint needs the store in this process.
    let mixed = wstore_in(&fixture.store, cwd, &[], &["diff", "finetune.safetensors", "task-a"]);
    assert_eq!(mixed.status.code(), Some(2));
    assert!(stderr(&mixed).contains("stop the daemon"), "{}", stderr(&mixed));
    daemon.stop();

    let direct = run();
    assert_eq!(through_daemon, direct);
    assert_eq!(String::from_utf8_lossy(&body.stdout).trim_end(), direct[0].trim_end());
}

/// A discovery file that names a live daemon of another store (as a copied store has) is
/// ignored: the CLI opens its own store instead of writing into the other one.
#[test]
fn daemon_of_another_store_is_ignored() {
    let first = Fixture::new(51);
    let second = Fixture::new(52);
    let daemon = Daemon::start(&first.store, &[]);
    std::fs::copy(first.store.join("daemon.json"), second.store.join("daemon.json")).unwrap();
    let output = wstore_in(&second.store, second.dir.path(), &[], &["--verbose", "ls", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("opening store at"), "{}", stderr(&output));
    let direct = wstore_in(&first.store, first.dir.path(), &[], &["ls", "--json"]);
    assert_ne!(stdout(&output), stdout(&direct), "the second store listed the first one's commits");
    daemon.stop();
}
