//! `wstore serve`: an HTTP/1.1 server that owns the store while it runs. It serves checkouts
//! with byte ranges (each tensor rebuilt on demand), the read API as JSON, and the write API.
//!
//! Hashing, decompression, reconstruction and catalog calls run in `spawn_blocking`, never on
//! the async workers, so a slow rebuild cannot stall other connections.

pub mod auth;
pub mod body;
pub mod cache;
pub mod checkout;
pub mod error;
pub mod exchange;
pub mod paths;
pub mod range;
pub mod routes;
pub mod upload;
pub mod write;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::durable::{write_durably, Publish};
use crate::error::Error;
use crate::store::Store;
use auth::BearerToken;
use cache::TensorCache;
use upload::Uploads;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Default cap on concurrent connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Default cap on one upload, in GiB.
pub const DEFAULT_MAX_UPLOAD_GIB: u64 = 64;

/// Name of the discovery file in the store directory while a daemon runs.
pub const DISCOVERY_FILE: &str = "daemon.json";

/// Cap on the request line plus headers, in bytes (hyper's read buffer).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Time a client has to send its request headers before the connection is closed, so idle
/// connections cannot hold the connection slots.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Time in-flight responses get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of `wstore serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Required from every request when set.
    pub token: Option<BearerToken>,
    pub cache_bytes: u64,
    pub max_connections: usize,
    pub max_upload_bytes: u64,
}

/// Contents of `<store>/daemon.json`: the record that a daemon owns the store, and the URL
/// other processes reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// Base URL, e.g. `http://127.0.0.1:7070`, with the port actually bound.
    pub url: String,
    pub pid: u32,
    pub token_required: bool,
    /// wstore version of the daemon.
    pub version: String,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub cache: TensorCache,
    pub token: Option<BearerToken>,
    pub uploads: Uploads,
    next_request_id: AtomicU64,
}

impl Shared {
    pub fn new(store: Store, config: &ServeConfig) -> Result<Self, Error> {
        let uploads = Uploads::open(store.root(), config.max_upload_bytes)?;
        Ok(Shared {
            store,
            cache: TensorCache::new(config.cache_bytes),
            token: config.token.clone(),
            uploads,
            next_request_id: AtomicU64::new(1),
        })
    }

    /// Returns a new id for a request, for logs and the `X-Request-Id` header.
    pub fn next_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Path of the discovery file of the store at `root`.
pub fn discovery_path(root: &Path) -> PathBuf {
    root.join(DISCOVERY_FILE)
}

/// Reads the discovery file of the store at `root`; `None` when no daemon has written one.
pub fn read_discovery(root: &Path) -> Result<Option<Discovery>, Error> {
    let path = discovery_path(root);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::InvalidArgument { what: path.display().to_string(), detail: format!("is not a daemon discovery file: {e}; delete it if no daemon runs") })
}

/// Checks that a listener outside loopback has a token, because the API can read any local
/// path the daemon can and write to the store.
pub fn check_listen_address(config: &ServeConfig) -> Result<(), Error> {
    if !config.listen.ip().is_loopback() && config.token.is_none() {
        return Err(Error::InvalidArgument {
            what: format!("--listen {}", config.listen),
            detail: format!(
                "is not a loopback address, and no bearer token is set; set one with --token-file FILE or {}, or listen on 127.0.0.1",
                auth::TOKEN_ENV
            ),
        });
    }
    Ok(())
}

/// Runs the daemon on the store at `root` until SIGINT or SIGTERM, then drains in-flight
/// responses, removes the discovery file and returns.
pub fn serve(root: &Path, config: ServeConfig) -> Result<(), Error> {
    check_listen_address(&config)?;
    let store = Store::open(root)?;
    let shared = Arc::new(Shared::new(store, &config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Task { what: "starting the async runtime".into(), detail: e.to_string() })?;
    let result = runtime.block_on(async {
        let listener = TcpListener::bind(config.listen).await.map_err(|source| Error::Listen { addr: config.listen, source })?;
        let local = listener.local_addr().map_err(|source| Error::Listen { addr: config.listen, source })?;
        let discovery = Discovery {
            url: url_for(local),
            pid: std::process::id(),
            token_required: config.token.is_some(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let path = discovery_path(root);
        let text = serde_json::to_vec_pretty(&discovery).unwrap_or_default();
        write_durably(&path, &text, Publish::Replace).map_err(|e| Error::io("write", &path, e))?;
        tracing::info!(address = %local, store = %root.display(), token_required = discovery.token_required, "daemon started");
        // Scripts and tests read the bound port from this line when they pass port 0.
        println!("listening on {}", discovery.url);
        run(listener, Arc::clone(&shared), config.max_connections, shutdown_signal()).await;
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "failed to remove the discovery file");
        }
        Ok(())
    });
    // Blocking tasks still running (a commit) get a bounded wait; an interrupted commit leaves
    // only unreferenced objects, as after a crash.
    runtime.shutdown_timeout(DRAIN_TIMEOUT);
    shared.uploads.remove_all();
    tracing::info!(store = %root.display(), "daemon stopped");
    result
}

/// URL other processes use to reach a listener bound to `local`: an unspecified address
/// (`0.0.0.0`, `::`) is reached through loopback.
fn url_for(local: SocketAddr) -> String {
    let port = local.port();
    match local.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => format!("http://127.0.0.1:{port}"),
        ip if ip.is_unspecified() => format!("http://[::1]:{port}"),
        std::net::IpAddr::V4(ip) => format!("http://{ip}:{port}"),
        std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
    }
}

/// Accepts connections on `listener` until `shutdown` completes, at most `max_connections` at
/// a time, then waits up to `DRAIN_TIMEOUT` for open connections to finish their responses.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, max_connections: usize, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.max_buf_size(MAX_HEADER_BYTES).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);

    loop {
        // Waiting for a free slot before accepting leaves extra clients in the kernel's
        // backlog instead of accepting connections that cannot be served.
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Usually out of file descriptors; pausing lets open connections finish.
                tracing::warn!(%error, "failed to accept a connection; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection_shared = Arc::clone(&shared);
        let service = service_fn(move |request| routes::handle(Arc::clone(&connection_shared), request));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutdown requested; draining in-flight responses");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(timeout_s = DRAIN_TIMEOUT.as_secs(), "connections still open after the drain timeout; closing them");
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => tracing::info!(signal = "SIGINT", "signal received"),
                    _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "failed to install the SIGTERM handler; only SIGINT stops the daemon");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_reach_the_bound_port() {
        assert_eq!(url_for("127.0.0.1:7070".parse().unwrap()), "http://127.0.0.1:7070");
        assert_eq!(url_for("0.0.0.0:81".parse().unwrap()), "http://127.0.0.1:81");
        assert_eq!(url_for("[::]:81".parse().unwrap()), "http://[::1]:81");
        assert_eq!(url_for("[::1]:81".parse().unwrap()), "http://[::1]:81");
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let mut config = ServeConfig {
            listen: "0.0.0.0:7070".parse().unwrap(),
            token: None,
            cache_bytes: 0,
            max_connections: 1,
            max_upload_bytes: 0,
        };
        assert!(matches!(check_listen_address(&config), Err(Error::InvalidArgument { .. })));
        config.token = Some(BearerToken::new("t").unwrap());
        assert!(check_listen_address(&config).is_ok());
        config.token = None;
        config.listen = "127.0.0.1:7070".parse().unwrap();
        assert!(check_listen_address(&config).is_ok());
    }
}
