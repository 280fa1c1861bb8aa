//! A blocking HTTP client for the daemon's API. While `wstore serve` owns a store (sled lets
//! one process open it), the CLI reads and writes through this client and gets back the same
//! typed values the `Store` methods return.

pub mod checkout;
pub mod discovery;
mod exchange;

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use ureq::http::StatusCode;

use crate::daemon::checkout::CheckoutManifest;
pub use crate::daemon::write::{AddBaseRequest, CommitRequest};
use crate::daemon::routes::{Health, RefEntry};
use crate::error::Error;
use crate::store::{BaseReport, BaseView, CommitReport, Details, LogEntry, StoreListing};

pub use discovery::discover;

/// Cap on a JSON response, in bytes. `show` of a checkpoint with tens of thousands of tensors
/// stays far below it; the cap only stops a broken peer from filling memory.
pub const MAX_JSON_RESPONSE: u64 = 256 << 20;

/// Time to open a TCP connection to the daemon. The daemon listens on loopback by default,
/// so a connection that takes longer means it is stuck or gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The JSON error body every failed request carries.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    kind: String,
    message: String,
}

/// A client of one daemon, identified by its base URL (`http://127.0.0.1:7070`).
#[derive(Debug, Clone)]
pub struct DaemonClient {
    base_url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl DaemonClient {
    /// Creates a client; `token` is sent as `Authorization: Bearer TOKEN` on every request.
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        let config = ureq::Agent::config_builder()
            // Error responses carry the JSON error body, which is read rather than dropped.
            .http_status_as_error(false)
            // The daemon is on this machine: a proxy from the environment must not be used.
            .proxy(None)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .user_agent(format!("wstore/{}", env!("CARGO_PKG_VERSION")))
            .build();
        DaemonClient { base_url: base_url.trim_end_matches('/').to_string(), token, agent: ureq::Agent::new_with_config(config) }
    }

    /// Returns the daemon's base URL.
    pub fn url(&self) -> &str {
        &self.base_url
    }

    /// `GET /v1/health`, failing after `timeout` so a stale discovery file cannot hang the CLI.
    pub fn health(&self, timeout: Duration) -> Result<Health, Error> {
        let path = "/v1/health";
        let response = self
            .authorize(self.agent.get(self.url_of(path)))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call()
            .map_err(|e| self.unreachable(&e))?;
        self.read_json(path, response)
    }

    /// `GET /v1/bases`: what `base list --json` prints.
    pub fn bases(&self) -> Result<Vec<BaseView>, Error> {
        self.get_json("/v1/bases")
    }

    /// `GET /v1/ls`: what `ls --json` prints.
    pub fn list(&self) -> Result<StoreListing, Error> {
        self.get_json("/v1/ls")
    }

    /// `GET /v1/refs`: every ref and the commit it names.
    pub fn refs(&self) -> Result<Vec<RefEntry>, Error> {
        self.get_json("/v1/refs")
    }

    /// `GET /v1/show/{target}`: what `show --json` prints.
    pub fn show(&self, target: &str) -> Result<Details, Error> {
        self.get_json(&format!("/v1/show/{}", encode_segment(target)))
    }

    /// `GET /v1/log/{target}`: what `log --json` prints.
    pub fn log(&self, target: &str) -> Result<Vec<LogEntry>, Error> {
        self.get_json(&format!("/v1/log/{}", encode_segment(target)))
    }

    /// `GET /v1/diff/{a}[/{b}]`: what `diff --json` prints for two stored checkpoints, or a
    /// commit and its base.
    pub fn diff(&self, a: &str, b: Option<&str>, options: &crate::diff::DiffOptions) -> Result<crate::diff::DiffReport, Error> {
        let mut path = format!("/v1/diff/{}", encode_segment(a));
        if let Some(b) = b {
            path.push('/');
            path.push_str(&encode_segment(b));
        }
        path.push('?');
        path.push_str(&crate::diff::query::to_query(options));
        self.get_json(&path)
    }

    /// `GET /v1/checkout/{target}`: the files of a stored checkpoint with their hashes.
    pub fn checkout_manifest(&self, target: &str) -> Result<CheckoutManifest, Error> {
        self.get_json(&format!("/v1/checkout/{}", encode_segment(target)))
    }

    /// `POST /v1/bases`: registers the checkpoint at `path`, which must be absolute.
    pub fn add_base(&self, name: &str, path: &Path) -> Result<BaseReport, Error> {
        let request = AddBaseRequest { name: name.to_string(), path: Some(path.to_path_buf()), upload: None };
        self.post_json("/v1/bases", &request)
    }

    /// `POST /v1/commits`: commits the fine-tune at `request.path`, which must be absolute.
    pub fn commit(&self, request: &CommitRequest) -> Result<CommitReport, Error> {
        self.post_json("/v1/commits", request)
    }

    /// `GET` of a file URL path from a manifest (`/v1/checkout/{id}/{file}`), whole. Returns
    /// the response once its status is 200, so the caller streams the body.
    pub fn get_file(&self, url_path: &str) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let response = self.authorize(self.agent.get(self.url_of(url_path))).call().map_err(|e| self.unreachable(&e))?;
        if response.status() != StatusCode::OK {
            return Err(self.error_from(url_path, response));
        }
        Ok(response)
    }

    /// `GET` of bytes `start..=end` of a file URL path, checked to be exactly that range.
    pub fn read_range(&self, url_path: &str, start: u64, end: u64) -> Result<Vec<u8>, Error> {
        let response = self
            .authorize(self.agent.get(self.url_of(url_path)))
            .header("Range", format!("bytes={start}-{end}"))
            .call()
            .map_err(|e| self.unreachable(&e))?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(self.error_from(url_path, response));
        }
        let expected = end.saturating_sub(start).saturating_add(1);
        let bytes = self.read_body(response, expected)?;
        if bytes.len() as u64 != expected {
            return Err(self.protocol_error(url_path, format!("returned {} bytes for a range of {expected}", bytes.len())));
        }
        Ok(bytes)
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let response = self.authorize(self.agent.get(self.url_of(path))).call().map_err(|e| self.unreachable(&e))?;
        self.read_json(path, response)
    }

    fn post_json<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Result<T, Error> {
        let text = serde_json::to_string(body).map_err(|e| self.protocol_error(path, format!("failed to encode the request: {e}")))?;
        let response = self
            .authorize(self.agent.post(self.url_of(path)))
            .content_type("application/json")
            .send(text)
            .map_err(|e| self.unreachable(&e))?;
        self.read_json(path, response)
    }

    fn authorize<S>(&self, request: ureq::RequestBuilder<S>) -> ureq::RequestBuilder<S> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Decodes a 2xx JSON body, or turns any other status into the daemon's error.
    fn read_json<T: DeserializeOwned>(&self, path: &str, response: ureq::http::Response<ureq::Body>) -> Result<T, Error> {
        if !response.status().is_success() {
            return Err(self.error_from(path, response));
        }
        let bytes = self.read_body(response, MAX_JSON_RESPONSE)?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol_error(path, format!("returned JSON this wstore cannot read: {e}")))
    }

    /// Reads a whole response body of at most `limit` bytes.
    fn read_body(&self, response: ureq::http::Response<ureq::Body>, limit: u64) -> Result<Vec<u8>, Error> {
        response.into_body().into_with_config().limit(limit).read_to_vec().map_err(|e| self.unreachable(&e))
    }

    /// Turns an error response into `Error::Daemon`, keeping the daemon's message, which is
    /// the text the same error has without a daemon.
    fn error_from(&self, path: &str, response: ureq::http::Response<ureq::Body>) -> Error {
        let status = response.status().as_u16();
        if response.status() == StatusCode::UNAUTHORIZED {
            return Error::Daemon {
                status,
                kind: "unauthorized".into(),
                message: format!(
                    "the daemon at {} rejected the bearer token, or none was sent; set {} or pass --token-file FILE with the daemon's token",
                    self.base_url,
                    crate::daemon::auth::TOKEN_ENV
                ),
            };
        }
        // An error body is small; more than this is not the daemon's JSON error.
        let body = response.into_body().into_with_config().limit(1 << 20).read_to_vec().unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(parsed) => Error::Daemon { status, kind: parsed.error.kind, message: parsed.error.message },
            Err(_) => Error::Daemon {
                status,
                kind: "http".into(),
                message: format!(
                    "the daemon at {} answered GET or POST {path} with HTTP {status} and no wstore error body: {}",
                    self.base_url,
                    String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
                ),
            },
        }
    }

    fn unreachable(&self, error: &ureq::Error) -> Error {
        Error::DaemonUnreachable { url: self.base_url.clone(), detail: error.to_string() }
    }

    fn protocol_error(&self, path: &str, detail: String) -> Error {
        Error::Daemon { status: 200, kind: "protocol".into(), message: format!("the daemon at {} for {path}: {detail}", self.base_url) }
    }
}

/// Percent-encodes one URL path segment, leaving only unreserved characters as they are.
fn encode_segment(text: &str) -> String {
    crate::daemon::paths::percent_encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::cli::CodecArgs;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("task-a.v2_x~"), "task-a.v2_x~");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn commit_request_carries_every_commit_flag() {
        let request = CommitRequest {
            path: Some(PathBuf::from("/ft.safetensors")),
            upload: None,
            base: "b".into(),
            name: Some("task".into()),
            message: "m".into(),
            parent: None,
            author: Some("ana".into()),
            map_prefix: None,
            no_align: true,
            codec: CodecArgs::default(),
        };
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(value["path"], "/ft.safetensors");
        assert_eq!(value["no_align"], true);
        assert_eq!(value["codec"], "ultradelta");
        assert_eq!(value["max_error"], crate::codec::ultradelta::DEFAULT_MAX_ERROR);
        assert_eq!(value["parent"], serde_json::Value::Null);
    }

    #[test]
    fn closed_port_is_unreachable() {
        // Port 1 on loopback has no listener on a normal machine, so the connection is refused.
        let client = DaemonClient::new("http://127.0.0.1:1", None);
        let error = client.list().unwrap_err();
        assert!(matches!(error, Error::DaemonUnreachable { .. }), "{error}");
        assert!(error.to_string().starts_with("failed to reach the daemon at http://127.0.0.1:1: "), "{error}");
    }
}
