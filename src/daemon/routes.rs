//! Routing and the JSON handlers. Every route is under `/v1`; `docs/openapi.yaml` lists them.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::body::BodyError;
use super::error::ApiError;
use super::paths::{check_target, check_upload_name, split_path};
use super::{checkout, exchange, write, Shared};
use crate::id::ObjectId;
use crate::store::Store;

/// Body type of every response.
pub type ResponseBody = BoxBody<Bytes, BodyError>;

/// Cap on a JSON request body, in bytes.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// One ref and the commit it names, as `GET /v1/refs` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RefEntry {
    pub name: String,
    pub commit: ObjectId,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub store: String,
}

/// Ids of a request that logs of its failure carry.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub id: u64,
    pub method: Method,
    pub path: String,
    pub target: Option<String>,
    pub file: Option<String>,
}

/// Serves one request. Handler errors become JSON error responses, logged with the request's
/// ids, so the service never returns an error to hyper.
pub async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    let mut info = RequestInfo {
        id: shared.next_request_id(),
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        target: None,
        file: None,
    };
    let started = std::time::Instant::now();
    let mut response = match route(&shared, request, &mut info).await {
        Ok(response) => response,
        Err(error) => {
            log_error(&info, &error);
            error_response(&error)
        }
    };
    if let Ok(value) = HeaderValue::from_str(&info.id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::debug!(request_id = info.id, method = %info.method, path = %info.path, status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request served");
    Ok(response)
}

fn log_error(info: &RequestInfo, error: &ApiError) {
    let target = info.target.as_deref().unwrap_or("-");
    let file = info.file.as_deref().unwrap_or("-");
    if error.status.is_server_error() {
        tracing::error!(request_id = info.id, method = %info.method, path = %info.path, target, file, status = error.status.as_u16(), kind = error.kind, error = %error.message, "request failed");
    } else {
        tracing::warn!(request_id = info.id, method = %info.method, path = %info.path, target, file, status = error.status.as_u16(), kind = error.kind, error = %error.message, "request rejected");
    }
}

async fn route(shared: &Arc<Shared>, request: Request<Incoming>, info: &mut RequestInfo) -> Result<Response<ResponseBody>, ApiError> {
    // Parsed before the token check so that a rejected request is still logged with its ids.
    let segments = split_path(request.uri().path()).map_err(|e| ApiError::bad_request(e.0));
    if let Ok(segments) = &segments {
        if let [_, kind, target, ..] = segments.as_slice() {
            if matches!(kind.as_str(), "checkout" | "show" | "log" | "diff" | "bundles" | "objects") {
                info.target = Some(target.clone());
            }
        }
        if let [_, kind, _, file @ ..] = segments.as_slice() {
            if kind == "checkout" && !file.is_empty() {
                info.file = Some(file.join("/"));
            }
        }
    }
    check_browser_headers(shared, &request)?;
    if let Some(token) = &shared.token {
        let header = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
        if !token.accepts(header) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token; send Authorization: Bearer TOKEN with the daemon's token",
            ));
        }
    }
    let segments = segments?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method().clone();
    let Some(("v1", rest)) = segments.split_first().map(|(first, rest)| (*first, rest)) else {
        return Err(unknown_route(info));
    };
    match (rest, &method) {
        (["health"], &Method::GET) => Ok(json_response(
            StatusCode::OK,
            // The canonical path, so a client can tell whether this daemon serves its store.
            &Health {
                status: "ok".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                store: std::fs::canonicalize(shared.store.root()).unwrap_or_else(|_| shared.store.root().to_path_buf()).display().to_string(),
            },
        )),
        (["bases"], &Method::GET) => {
            let listing = blocking(shared, |store| Ok(store.list()?)).await?;
            Ok(json_response(StatusCode::OK, &listing.bases))
        }
        (["bases"], &Method::POST) => write::add_base(shared, request).await,
        (["ls"], &Method::GET) => Ok(json_response(StatusCode::OK, &blocking(shared, |store| Ok(store.list()?)).await?)),
        (["refs"], &Method::GET) => {
            let refs = blocking(shared, |store| Ok(store.catalog().list_refs().map_err(crate::error::Error::from)?)).await?;
            let refs: Vec<RefEntry> = refs.into_iter().map(|(name, commit)| RefEntry { name, commit }).collect();
            Ok(json_response(StatusCode::OK, &refs))
        }
        (["show", target], &Method::GET) => {
            let target = checked_target(target)?;
            Ok(json_response(StatusCode::OK, &blocking(shared, move |store| Ok(store.show(&target)?)).await?))
        }
        (["log", target], &Method::GET) => {
            let target = checked_target(target)?;
            Ok(json_response(StatusCode::OK, &blocking(shared, move |store| Ok(store.log(&target)?)).await?))
        }
        (["diff", a], &Method::GET) => diff(shared, &request, a, None).await,
        (["diff", a, b], &Method::GET) => diff(shared, &request, a, Some(b)).await,
        (["checkout", target], &Method::GET) => checkout::manifest(shared, checked_target(target)?).await,
        (["checkout", target, file @ ..], &Method::GET | &Method::HEAD) if !file.is_empty() => {
            let target = checked_target(target)?;
            let file = super::paths::file_path(&file.iter().map(|s| (*s).to_string()).collect::<Vec<_>>()).map_err(|e| ApiError::bad_request(e.0))?;
            checkout::file(shared, request, target, file, info.id).await
        }
        (["commits"], &Method::POST) => write::commit(shared, request).await,
        (["uploads", file_name], &Method::PUT) => {
            check_upload_name(file_name).map_err(|e| ApiError::bad_request(e.0))?;
            write::upload(shared, request, file_name).await
        }
        (["bundles", ref_name], &Method::GET) => exchange::bundle(shared, checked_target(ref_name)?).await,
        (["bundles"], &Method::POST) => exchange::import(shared, request).await,
        (["objects", "missing"], &Method::POST) => exchange::missing(shared, request).await,
        (["objects", id], &Method::GET) => exchange::get_object(shared, id).await,
        (["objects", id], &Method::PUT) => exchange::put_object(shared, request, id).await,
        (["uploads", id], &Method::DELETE) => {
            drop(shared.uploads.take(id)?);
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        _ => Err(match allowed_methods(rest) {
            Some(allow) => {
                let mut error = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {}; use {allow}", info.path));
                error.allow = Some(allow);
                error
            }
            None => unknown_route(info),
        }),
    }
}

/// `GET /v1/diff/{a}[/{b}]`: both sides are stored checkpoints (never paths: the daemon reads
/// no file a request names), with the options of `wstore diff` in the query string.
async fn diff(shared: &Arc<Shared>, request: &Request<Incoming>, a: &str, b: Option<&str>) -> Result<Response<ResponseBody>, ApiError> {
    let a = checked_target(a)?;
    let b = b.map(checked_target).transpose()?;
    let options = crate::diff::query::from_query(request.uri().query().unwrap_or("")).map_err(ApiError::bad_request)?;
    let report = blocking(shared, move |store| Ok(crate::diff::diff(Some(store), &a, b.as_deref(), &options)?)).await?;
    Ok(json_response(StatusCode::OK, &report))
}

/// Rejects requests that only a web browser sends, so that a page the user visits cannot
/// drive the daemon. Without a token the daemon listens on loopback only, so a `Host` other
/// than a loopback name means a DNS-rebinding page. A write with an `Origin` header comes from
/// a page's script: wstore's own client, curl and Python's urllib send none.
fn check_browser_headers(shared: &Shared, request: &Request<Incoming>) -> Result<(), ApiError> {
    let forbidden = |message: String| ApiError::new(StatusCode::FORBIDDEN, "forbidden", message);
    if shared.token.is_none() {
        if let Some(host) = request.headers().get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !is_loopback_host(host) {
                return Err(forbidden(format!(
                    "Host {host:?} is not a loopback name; a daemon without a token responds only to requests addressed to 127.0.0.1, [::1] or localhost"
                )));
            }
        }
    }
    let writes = matches!(*request.method(), Method::POST | Method::PUT | Method::DELETE);
    if writes && request.headers().contains_key(header::ORIGIN) {
        return Err(forbidden("writes from a web page (a request with an Origin header) are rejected; use the wstore CLI, curl or another HTTP client".into()));
    }
    Ok(())
}

/// Returns whether a `Host` header value names the loopback interface, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host })
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn unknown_route(info: &RequestInfo) -> ApiError {
    ApiError::not_found(format!("no route {} {}; see docs/openapi.yaml for the API", info.method, info.path))
}

/// Methods a known path accepts, for 405 responses; `None` for an unknown path.
fn allowed_methods(rest: &[&str]) -> Option<&'static str> {
    match rest {
        ["health"] | ["ls"] | ["refs"] | ["show", _] | ["log", _] | ["diff", _] | ["diff", _, _] | ["checkout", _] => {
            Some("GET")
        }
        ["bases"] => Some("GET, POST"),
        ["commits"] => Some("POST"),
        ["checkout", _, ..] => Some("GET, HEAD"),
        ["uploads", _] => Some("PUT, DELETE"),
        ["bundles", _] => Some("GET"),
        ["bundles"] | ["objects", "missing"] => Some("POST"),
        ["objects", _] => Some("GET, PUT"),
        _ => None,
    }
}

fn checked_target(target: &str) -> Result<String, ApiError> {
    check_target(target).map_err(|e| ApiError::bad_request(e.0))?;
    Ok(target.to_string())
}

/// Runs catalog or object work on a blocking thread.
pub async fn blocking<T, F>(shared: &Arc<Shared>, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
{
    let worker = Arc::clone(shared);
    tokio::task::spawn_blocking(move || work(&worker.store))
        .await
        .map_err(|join| ApiError::internal(format!("a blocking task failed: {join}")))?
}

/// Builds a JSON response whose body is exactly what the CLI's `--json` prints for `value`.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    match serde_json::to_string_pretty(value) {
        Ok(text) => bytes_response(status, "application/json", Bytes::from(format!("{text}\n"))),
        Err(e) => error_response(&ApiError::internal(format!("failed to format JSON: {e}"))),
    }
}

pub fn bytes_response(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn empty_response(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

pub fn error_response(error: &ApiError) -> Response<ResponseBody> {
    let mut response = bytes_response(error.status, "application/json", Bytes::from(error.body()));
    if let Some(allow) = error.allow {
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if error.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in ["127.0.0.1:7070", "127.0.0.1", "localhost:1", "LOCALHOST", "[::1]:7070", "[::1]", "127.3.4.5:80"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["example.com", "evil.example:7070", "10.0.0.1:7070", "[2001:db8::1]:80", "", "localhost.evil.com", "127.0.0.1.evil.com:80"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
