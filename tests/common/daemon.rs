//! A real `wstore serve` for integration tests: started on port 0, found through the discovery
//! file it writes, and stopped with SIGTERM as a user would stop it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Time the daemon gets to write its discovery file.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the CLI on `store` from the working directory `cwd`, with `env` set on top of a clean
/// environment for wstore's variables.
pub fn wstore_in(store: &Path, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wstore"));
    command
        .arg("--store")
        .arg(store)
        .args(args)
        .current_dir(cwd)
        .env_remove("WSTORE_HOME")
        .env_remove("WSTORE_TOKEN")
        .env_remove("WSTORE_LOG")
        .env("WSTORE_AUTHOR", "ci-tester");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// A running daemon, killed if a test fails before stopping it.
pub struct Daemon {
    child: Child,
    store: PathBuf,
    pub url: String,
}

impl Daemon {
    /// Starts `wstore --store STORE serve --listen 127.0.0.1:0 ARGS` and waits for its
    /// discovery file.
    pub fn start(store: &Path, args: &[&str]) -> Daemon {
        Self::start_with_env(store, args, &[])
    }

    /// Like `start`, with `env` set for the daemon (an S3 store's credentials).
    pub fn start_with_env(store: &Path, args: &[&str], env: &[(&str, String)]) -> Daemon {
        let discovery = store.join("daemon.json");
        let child = Command::new(env!("CARGO_BIN_EXE_wstore"))
            .arg("--store")
            .arg(store)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("WSTORE_HOME")
            .env_remove("WSTORE_TOKEN")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let url = loop {
            // The daemon writes the file durably (temp file, then rename), so a read gets all
            // of it or nothing.
            // A file left by a killed daemon names another pid; the new daemon replaces it.
            if let Ok(text) = std::fs::read(&discovery) {
                let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
                if value["pid"] == child.id() {
                    break value["url"].as_str().unwrap().to_string();
                }
            }
            assert!(started.elapsed() < START_TIMEOUT, "the daemon wrote no {} in {START_TIMEOUT:?}", discovery.display());
            std::thread::sleep(Duration::from_millis(20));
        };
        Daemon { child, store: store.to_path_buf(), url }
    }

    /// Stops the daemon with SIGTERM and checks that it exits with 0 and removes its
    /// discovery file.
    pub fn stop(mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert_eq!(exit.code(), Some(0));
        assert!(!self.store.join("daemon.json").exists());
    }
}

impl Daemon {
    /// Kills the daemon with SIGKILL, as a crash or the OOM killer would, and waits for it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
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
