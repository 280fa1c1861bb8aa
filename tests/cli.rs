//! Drives the built `wstore` binary the way a user's shell script would.

mod common;

use std::process::{Command, Output};

use common::run_wstore as wstore;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn missing_store_is_reported_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let output = wstore(&dir.path().join("nowhere"), &["ls"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("run `wstore init` first"), "{}", stderr(&output));
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn store_location_comes_from_wstore_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home-store");
    let output = Command::new(env!("CARGO_BIN_EXE_wstore"))
        .arg("init")
        .env("WSTORE_HOME", &home)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(home.join("objects").is_dir());
    assert!(home.join("catalog").is_dir());
}

#[test]
fn full_session_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, ft_path) = wstore::synth::write_tiny_family(dir.path(), 21).unwrap();
    let store = dir.path().join("store");
    let base_arg = base_path.to_str().unwrap();
    let ft_arg = ft_path.to_str().unwrap();

    let output = wstore(&store, &["init"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("initialised empty store"));

    let output = wstore(&store, &["base", "add", "tiny", base_arg]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("added base tiny"));

    let output = wstore(&store, &["base", "add", "tiny-again", base_arg, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["new_bytes"], 0);
    assert_eq!(report["already_present"], true);

    let output = wstore(&store, &["commit", ft_arg, "--base", "tiny", "--name", "task-a", "-m", "first", "--codec", "lossless"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("committed task-a"));

    let output = wstore(&store, &["ls", "--json"]);
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listing["bases"].as_array().unwrap().len(), 1);
    assert_eq!(listing["commits"][0]["refs"][0], "task-a");
    assert_eq!(listing["commits"][0]["author"], "ci-tester");
    assert_eq!(listing["commits"][0]["lossy"], false);
    let names = listing["bases"][0]["names"].as_array().unwrap();
    assert_eq!(names.len(), 2);

    let output = wstore(&store, &["ls"]);
    assert!(stdout(&output).contains("task-a"));
    assert!(stdout(&output).contains("lossless"));

    let output = wstore(&store, &["log", "task-a", "--json"]);
    let log: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(log[0]["type"], "commit");
    assert_eq!(log[0]["message"], "first");
    assert_eq!(log[1]["type"], "base");

    let output = wstore(&store, &["show", "task-a", "--json"]);
    let show: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(show["tensors"].as_array().unwrap().len(), 22);
    let output = wstore(&store, &["show", "task-a"]);
    assert!(stdout(&output).contains("lossless_delta"));

    let out = dir.path().join("task-a.safetensors");
    let output = wstore(&store, &["checkout", "task-a", "-o", out.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("verified"));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&ft_path).unwrap());

    // A second checkout to the same path needs --force.
    let output = wstore(&store, &["checkout", "task-a", "-o", out.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--force"));
}

#[test]
fn malformed_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    wstore(&store, &["init"]);
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x05\x00\x00\x00\x00\x00\x00\x00{oops").unwrap();
    let output = wstore(&store, &["base", "add", "b", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("bad.safetensors"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"));
}

#[test]
fn unknown_ref_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    wstore(&store, &["init"]);
    let output = wstore(&store, &["checkout", "ghost"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("\"ghost\" not found"), "{}", stderr(&output));
}

#[test]
fn default_commit_is_lossy_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, ft_path) = wstore::synth::write_tiny_family(dir.path(), 22).unwrap();
    let store = dir.path().join("store");
    wstore(&store, &["init"]);
    wstore(&store, &["base", "add", "tiny", base_path.to_str().unwrap()]);

    let output = wstore(&store, &["commit", ft_path.to_str().unwrap(), "--base", "tiny", "--name", "lossy"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("(lossy, ultradelta)"), "{}", stdout(&output));
    assert!(stdout(&output).contains("fidelity"));

    let output = wstore(&store, &["ls"]);
    assert!(stdout(&output).contains("ultradelta*"), "{}", stdout(&output));
    assert!(stdout(&output).contains("lossy"));

    let output = wstore(&store, &["show", "lossy", "--json"]);
    let show: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(show["commit"]["lossy"], true);
    let report = &show["commit"]["codec"]["params"]["report"];
    assert_eq!(report["mode"], "budget");
    assert!(report["max_rel_error"].as_f64().unwrap() <= 1e-3);
    let lossy_tensors = show["tensors"].as_array().unwrap().iter().filter(|t| t["storage"] == "ultradelta").count();
    assert!(lossy_tensors > 0);

    let out = dir.path().join("lossy.safetensors");
    let output = wstore(&store, &["checkout", "lossy", "-o", out.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("lossy commit"), "{}", stdout(&output));
    assert!(stdout(&output).contains("verified"));
}

#[test]
fn explicit_settings_over_budget_need_accept_error() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, ft_path) = wstore::synth::write_tiny_family(dir.path(), 23).unwrap();
    let store = dir.path().join("store");
    wstore(&store, &["init"]);
    wstore(&store, &["base", "add", "tiny", base_path.to_str().unwrap()]);
    let ft = ft_path.to_str().unwrap();

    let output = wstore(&store, &["commit", ft, "--base", "tiny", "--sparsity", "0.97", "--bits", "4"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("exceed --max-error"), "{}", stderr(&output));
    assert!(stderr(&output).contains("--accept-error"));
    let listing: serde_json::Value = serde_json::from_slice(&wstore(&store, &["ls", "--json"]).stdout).unwrap();
    assert_eq!(listing["commits"].as_array().unwrap().len(), 0);

    let output = wstore(&store, &["commit", ft, "--base", "tiny", "--sparsity", "0.97", "--bits", "4", "--accept-error", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["lossy"]["mode"], "explicit");
    assert!(report["lossy"]["sparsity"].as_f64().unwrap() > 0.9);
}

#[test]
fn closed_stdout_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    wstore(&store, &["init"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wstore"))
        .arg("--store")
        .arg(&store)
        .args(["ls", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    assert_ne!(output.status.code(), Some(101));
}
