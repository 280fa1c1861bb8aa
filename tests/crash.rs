//! Crash safety and concurrency through the real binary.
//!
//! `crash_trials` kills `wstore commit` processes with SIGKILL after a random delay. It then
//! checks that the store opens and that `fsck --full` finds nothing but orphans and stale temp
//! files. Every acknowledged commit (exit code 0 seen) must check out with the expected
//! BLAKE3, and the killed commit must be either complete or absent. It runs
//! `WSTORE_CRASH_TRIALS` trials (default 3); `benches/crash_harness.sh` runs 100 or more.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wstore::format::safetensors::Dtype;
use wstore::synth::{llama_layout, tiny_finetune, to_safetensors, SynthTensor};

/// Trials in the default test run, kept small so the suite stays fast.
const DEFAULT_TRIALS: usize = 3;

fn wstore(store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wstore"));
    command.arg("--store").arg(store).arg("--quiet").args(args).env_remove("WSTORE_HOME").env("WSTORE_AUTHOR", "crash-test");
    command
}

fn run(store: &Path, args: &[&str]) -> Output {
    wstore(store, args).output().unwrap()
}

fn run_ok(store: &Path, args: &[&str]) -> Output {
    let output = run(store, args);
    assert_eq!(output.status.code(), Some(0), "wstore {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Generates a bf16 base with LLaMA names at widths where a commit takes long enough to be killed
/// part-way (about 0.95 M parameters, 1.9 MB).
fn crash_base(seed: u64) -> Vec<SynthTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    llama_layout(512, 128, 344, 4)
        .into_iter()
        .map(|(name, shape)| {
            let numel: u64 = shape.iter().product();
            let bytes = (0..numel).flat_map(|_| bf16::from_f32(rng.gen_range(-0.05f32..0.05)).to_le_bytes()).collect();
            SynthTensor { name, dtype: Dtype::BF16, shape, bytes }
        })
        .collect()
}

/// One fine-tune input: its file, the codec it is committed with, and the BLAKE3 its checkout
/// must have.
struct Input {
    path: PathBuf,
    codec: &'static str,
    expected: blake3::Hash,
    /// Wall time of an uninterrupted commit.
    duration: Duration,
}

/// Inputs shared by the trials: a base and four fine-tunes, two of them lossy, with their
/// expected checkout hashes taken from a reference store.
struct Family {
    dir: tempfile::TempDir,
    base: PathBuf,
    inputs: Vec<Input>,
}

impl Family {
    fn new() -> Family {
        let dir = tempfile::tempdir().unwrap();
        let base_tensors = crash_base(11);
        let base = dir.path().join("base.safetensors");
        std::fs::write(&base, to_safetensors(&base_tensors, None).unwrap()).unwrap();

        let reference = dir.path().join("reference");
        run_ok(&reference, &["init"]);
        run_ok(&reference, &["base", "add", "base", base.to_str().unwrap()]);
        let mut inputs = Vec::new();
        for (index, codec) in ["lossless", "ultradelta", "lossless", "ultradelta"].into_iter().enumerate() {
            let path = dir.path().join(format!("ft-{index}.safetensors"));
            let tensors = tiny_finetune(&base_tensors, 100 + index as u64, 0.01);
            std::fs::write(&path, to_safetensors(&tensors, None).unwrap()).unwrap();
            let name = format!("ft-{index}");
            let started = Instant::now();
            run_ok(&reference, &["commit", path.to_str().unwrap(), "--base", "base", "--name", &name, "--codec", codec]);
            let duration = started.elapsed();
            let out = dir.path().join(format!("expected-{index}.safetensors"));
            run_ok(&reference, &["checkout", &name, "-o", out.to_str().unwrap()]);
            let expected = blake3::hash(&std::fs::read(&out).unwrap());
            if codec == "lossless" {
                assert_eq!(expected, blake3::hash(&std::fs::read(&path).unwrap()));
            }
            inputs.push(Input { path, codec, expected, duration });
        }
        Family { dir, base, inputs }
    }

    /// Creates a closed store holding the base and the acknowledged lossless commit "ack-0".
    fn template(&self) -> PathBuf {
        let store = self.dir.path().join("template");
        run_ok(&store, &["init"]);
        run_ok(&store, &["base", "add", "base", self.base.to_str().unwrap()]);
        self.commit(&store, 0, "ack-0");
        store
    }

    fn commit(&self, store: &Path, input: usize, name: &str) {
        let input = &self.inputs[input];
        run_ok(store, &["commit", input.path.to_str().unwrap(), "--base", "base", "--name", name, "--codec", input.codec]);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {} failed", from.display(), to.display());
}

/// Outcome counts over all trials.
#[derive(Debug, Default)]
struct Tally {
    trials: usize,
    /// Commits killed before they exited.
    killed: usize,
    /// Killed commits whose record was found complete afterwards.
    killed_present: usize,
    /// Commits that exited 0 before the kill arrived.
    finished_before_kill: usize,
    lost_acknowledged: usize,
    corrupt_objects: usize,
    other_problems: usize,
    orphans: usize,
    stale_temps: usize,
}

/// Checks out `name` and returns the BLAKE3 of the output, or None when the checkout fails.
fn checkout_hash(store: &Path, scratch: &Path, name: &str) -> Option<blake3::Hash> {
    let out = scratch.join(format!("{name}.safetensors"));
    let output = run(store, &["checkout", name, "-o", out.to_str().unwrap(), "--force"]);
    if output.status.code() != Some(0) {
        eprintln!("checkout {name} failed: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let hash = blake3::hash(&std::fs::read(&out).ok()?);
    std::fs::remove_file(&out).ok()?;
    Some(hash)
}

/// Runs one trial in a copy of the template and adds its outcome to `tally`.
fn trial(family: &Family, template: &Path, number: usize, rng: &mut ChaCha8Rng, tally: &mut Tally) {
    let work = family.dir.path().join(format!("trial-{number}"));
    std::fs::create_dir(&work).unwrap();
    let store = work.join("store");
    copy_dir(template, &store);

    // One more acknowledged commit, then the one to kill.
    let acked_input = 1 + number % 3;
    family.commit(&store, acked_input, "ack-1");
    let killed_input = rng.gen_range(0..family.inputs.len());
    let input = &family.inputs[killed_input];
    let max_delay = input.duration.mul_f64(1.3);
    let delay = max_delay.mul_f64(rng.gen::<f64>());
    let mut child = wstore(&store, &["commit", input.path.to_str().unwrap(), "--base", "base", "--name", "victim", "--codec", input.codec])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let _ = child.kill();
    let status = child.wait().unwrap();
    let victim_acknowledged = status.code() == Some(0);
    if victim_acknowledged {
        tally.finished_before_kill += 1;
    } else {
        tally.killed += 1;
    }

    let fsck = run(&store, &["fsck", "--full", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&fsck.stdout)
        .unwrap_or_else(|e| panic!("trial {number}: fsck printed no JSON ({e}): {}", String::from_utf8_lossy(&fsck.stderr)));
    let counts = &report["counts"];
    let count = |kind: &str| counts[kind].as_u64().unwrap_or(0) as usize;
    tally.corrupt_objects += count("corrupt_object");
    tally.orphans += count("orphan_object");
    tally.stale_temps += count("stale_temp");
    let problems = report["problems"].as_u64().unwrap() as usize;
    tally.other_problems += problems - count("corrupt_object");
    if problems > 0 || fsck.status.code() != Some(0) {
        eprintln!("trial {number}: fsck found problems: {report}");
    }

    let mut acknowledged = vec![("ack-0", 0), ("ack-1", acked_input)];
    if victim_acknowledged {
        acknowledged.push(("victim", killed_input));
    }
    for (name, input) in &acknowledged {
        if checkout_hash(&store, &work, name) != Some(family.inputs[*input].expected) {
            eprintln!("trial {number}: acknowledged commit {name} is lost or changed");
            tally.lost_acknowledged += 1;
        }
    }
    let listing: serde_json::Value = serde_json::from_slice(&run_ok(&store, &["ls", "--json"]).stdout).unwrap();
    let commits = listing["commits"].as_array().unwrap();
    let victim_present = commits.iter().any(|c| c["refs"].as_array().unwrap().iter().any(|r| r == "victim"));
    if victim_present && !victim_acknowledged {
        tally.killed_present += 1;
        let hash = checkout_hash(&store, &work, "victim");
        assert_eq!(hash, Some(input.expected), "trial {number}: the killed commit is recorded but does not check out");
    }
    // The ref and its commit record are written in one transaction, so every commit has a ref.
    // The victim may share a commit with "ack-1": same input, same second, same record.
    let without_ref = commits.iter().filter(|c| c["refs"].as_array().is_none_or(|refs| refs.is_empty())).count();
    assert_eq!(without_ref, 0, "trial {number}: a commit record without its ref: {listing}");
    tally.trials += 1;
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn crash_trials() {
    let trials = std::env::var("WSTORE_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_TRIALS);
    let seed = std::env::var("WSTORE_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let family = Family::new();
    let template = family.template();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let started = Instant::now();

    for number in 0..trials {
        trial(&family, &template, number, &mut rng, &mut tally);
    }

    let durations: Vec<String> = family.inputs.iter().map(|i| format!("{} {:.0} ms", i.codec, i.duration.as_secs_f64() * 1e3)).collect();
    println!(
        "crash tally: seed {seed}, {} trials in {:.0} s, {} killed mid-commit ({} of them recorded complete, the rest absent), \
         {} finished before the kill, {} lost acknowledged commits, {} corrupt objects, {} other fsck problems, \
         {} orphan objects, {} stale temp files; uninterrupted commits: {}",
        tally.trials,
        started.elapsed().as_secs_f64(),
        tally.killed,
        tally.killed_present,
        tally.finished_before_kill,
        tally.lost_acknowledged,
        tally.corrupt_objects,
        tally.other_problems,
        tally.orphans,
        tally.stale_temps,
        durations.join(", ")
    );
    assert_eq!(tally.lost_acknowledged, 0, "{tally:?}");
    assert_eq!(tally.corrupt_objects, 0, "{tally:?}");
    assert_eq!(tally.other_problems, 0, "{tally:?}");
}

#[test]
fn concurrent_cli_commits() {
    let family = Family::new();
    let store = family.template();
    let jobs = [(1, "a"), (2, "b"), (1, "c"), (1, "d")];

    let children: Vec<_> = jobs
        .iter()
        .map(|(input, name)| {
            let input = &family.inputs[*input];
            wstore(&store, &["commit", input.path.to_str().unwrap(), "--base", "base", "--name", name, "--codec", input.codec])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let reader = wstore(&store, &["checkout", "ack-0", "-o", family.dir.path().join("read.safetensors").to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for child in children.into_iter().chain([reader]) {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    }

    for (input, name) in jobs.iter().chain(&[(0, "ack-0")]) {
        let hash = checkout_hash(&store, family.dir.path(), name);
        assert_eq!(hash, Some(family.inputs[*input].expected), "{name}");
    }
    let fsck = run(&store, &["fsck", "--full", "--json"]);
    assert_eq!(fsck.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&fsck.stdout).unwrap();
    // No orphans either: the same fine-tune committed twice wrote one set of objects.
    assert_eq!(report["report"]["findings"], serde_json::json!([]));
    // A commit id hashes its record, time in seconds included, so the same fine-tune
    // committed twice within one second is one commit under two refs.
    let mut ids: Vec<String> = ["ack-0", "a", "b", "c", "d"]
        .iter()
        .map(|name| {
            let log: serde_json::Value = serde_json::from_slice(&run_ok(&store, &["log", name, "--json"]).stdout).unwrap();
            log[0]["id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(report["report"]["commits"], ids.len());
    let show = |name: &str| -> serde_json::Value {
        let details: serde_json::Value = serde_json::from_slice(&run_ok(&store, &["show", name, "--json"]).stdout).unwrap();
        details["tensors"].clone()
    };
    assert!(show("c").as_array().is_some_and(|tensors| tensors.len() == 39));
    assert_eq!(show("c"), show("d"));
    assert_eq!(show("a"), show("c"));
}
