//! Finding the daemon that owns a store. A running daemon writes `<store>/daemon.json` and
//! removes it when it stops gracefully; a file left by a killed daemon is stale and ignored.

use std::path::Path;
use std::time::Duration;

use super::DaemonClient;
use crate::daemon::{read_discovery, Discovery};
use crate::error::Error;

/// Time a daemon named by `daemon.json` has to respond to `GET /v1/health` before the file is
/// taken as stale. A live daemon responds from memory, without touching the store.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// A daemon that responded on the URL its discovery file names.
#[derive(Debug, Clone)]
pub struct LiveDaemon {
    pub client: DaemonClient,
    pub discovery: Discovery,
}

/// Returns the live daemon of the store at `root`, or `None` when there is no discovery file
/// or it is stale: its pid is not running, nothing responds to `GET /v1/health` at its URL,
/// or the responding daemon serves another store (a copied store keeps the original's file).
/// A 401 for a missing token counts as live, so the command then fails with the daemon's
/// reason instead of a catalog lock error; any other HTTP error means no wstore daemon.
pub fn discover(root: &Path, token: Option<String>) -> Result<Option<LiveDaemon>, Error> {
    let discovery = match read_discovery(root) {
        Ok(Some(discovery)) => discovery,
        Ok(None) => return Ok(None),
        Err(error) => {
            tracing::warn!(%error, "ignoring an unreadable daemon discovery file");
            return Ok(None);
        }
    };
    if !process_may_run(discovery.pid) {
        tracing::debug!(pid = discovery.pid, url = %discovery.url, "ignoring a stale daemon discovery file: no such process");
        return Ok(None);
    }
    let client = DaemonClient::new(&discovery.url, token);
    match client.health(HEALTH_TIMEOUT) {
        Ok(health) => {
            let ours = std::fs::canonicalize(root).map(|r| Path::new(&health.store) == r).unwrap_or(false);
            if !ours {
                tracing::debug!(url = %discovery.url, serves = %health.store, "ignoring a daemon discovery file: that daemon serves another store");
                return Ok(None);
            }
            Ok(Some(LiveDaemon { client, discovery }))
        }
        Err(Error::Daemon { status: 401, .. }) => Ok(Some(LiveDaemon { client, discovery })),
        Err(error) => {
            tracing::debug!(url = %discovery.url, %error, "ignoring a stale daemon discovery file: no response");
            Ok(None)
        }
    }
}

/// Reads the bearer token for the daemon: from `file` if given, else from `$WSTORE_TOKEN`.
/// Surrounding whitespace, such as a trailing newline, is dropped.
pub fn read_token(file: Option<&Path>) -> Result<Option<String>, Error> {
    read_token_or_env(file, crate::daemon::auth::TOKEN_ENV)
}

/// Reads a bearer token from `file` if given, else from the environment variable `env`,
/// dropping surrounding whitespace.
pub fn read_token_or_env(file: Option<&Path>, env: &str) -> Result<Option<String>, Error> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| Error::io("read token file", path, e))?,
        None => std::env::var(env).unwrap_or_default(),
    };
    let token = text.trim();
    Ok((!token.is_empty()).then(|| token.to_string()))
}

/// Returns false only when the process certainly does not exist; where the platform offers
/// no cheap check, the health request decides.
fn process_may_run(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if cfg!(target_os = "linux") && proc_root.join("self").exists() {
        return proc_root.join(pid.to_string()).exists();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_discovery(root: &Path, url: &str, pid: u32) {
        let discovery = Discovery { url: url.into(), pid, token_required: false, version: "0".into() };
        std::fs::write(crate::daemon::discovery_path(root), serde_json::to_vec(&discovery).unwrap()).unwrap();
    }

    #[test]
    fn missing_file_means_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        assert!(discover(dir.path(), None).unwrap().is_none());
    }

    #[test]
    fn dead_port_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        // This test process is alive, so only the health request can find the file stale.
        write_discovery(dir.path(), "http://127.0.0.1:1", std::process::id());
        assert!(discover(dir.path(), None).unwrap().is_none());
    }

    #[test]
    fn garbage_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(crate::daemon::discovery_path(dir.path()), b"{not json").unwrap();
        assert!(discover(dir.path(), None).unwrap().is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn dead_pid_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        // Above the kernel's maximum pid (2^22), so no process can have it.
        write_discovery(dir.path(), "http://127.0.0.1:1", 4_194_305);
        assert!(!process_may_run(4_194_305));
        assert!(discover(dir.path(), None).unwrap().is_none());
    }

    #[test]
    fn token_file_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_token(Some(&path)).unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&path, " \n").unwrap();
        assert_eq!(read_token(Some(&path)).unwrap(), None);
        assert!(matches!(read_token(Some(&dir.path().join("missing"))), Err(Error::Io { .. })));
    }
}
