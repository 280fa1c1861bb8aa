//! A daemon as one side of a transfer.

use super::Endpoint;
use crate::client::DaemonClient;
use crate::error::Error;
use crate::id::ObjectId;
use crate::store::{Bundle, ImportReport};

/// A daemon reached over HTTP: the remote of `push` and `pull`, or the daemon that owns the
/// local store.
#[derive(Debug, Clone)]
pub struct HttpEndpoint {
    client: DaemonClient,
    /// True for the remote named on the command line, whose errors name the remote's flags.
    remote: bool,
}

impl HttpEndpoint {
    /// Wraps the client of the daemon named as REMOTE, whose token comes from
    /// `--remote-token-file` or `WSTORE_REMOTE_TOKEN`.
    pub fn remote(client: DaemonClient) -> Self {
        HttpEndpoint { client, remote: true }
    }

    /// Wraps the client of the daemon that owns this machine's store.
    pub fn local(client: DaemonClient) -> Self {
        HttpEndpoint { client, remote: false }
    }

    /// Rewords the errors whose fix differs for the remote: an unreachable daemon and a
    /// rejected token.
    fn reword(&self, error: Error) -> Error {
        if !self.remote {
            return error;
        }
        match error {
            Error::DaemonUnreachable { url, detail } => Error::RemoteUnreachable { url, detail },
            Error::Daemon { status: 401, kind, .. } => Error::Daemon {
                status: 401,
                kind,
                message: format!(
                    "the remote daemon at {} rejected the bearer token, or none was sent; pass --remote-token-file FILE or set {REMOTE_TOKEN_ENV} with the remote daemon's token",
                    self.client.url()
                ),
            },
            other => other,
        }
    }
}

/// Environment variable holding the remote daemon's token when `--remote-token-file` is not
/// given.
pub const REMOTE_TOKEN_ENV: &str = "WSTORE_REMOTE_TOKEN";

impl Endpoint for HttpEndpoint {
    fn location(&self) -> String {
        self.client.url().to_string()
    }

    fn bundle(&self, ref_name: &str) -> Result<Bundle, Error> {
        match self.client.bundle(ref_name) {
            // A URL with a path reaches the daemon's catch-all route, not a missing ref.
            Err(Error::Daemon { status: 404, kind, message }) if self.remote && message.starts_with("no route ") => Err(Error::Daemon {
                status: 404,
                kind,
                message: format!("the remote daemon at {} returned: {message}; give REMOTE as the daemon's base URL, such as http://127.0.0.1:7070", self.client.url()),
            }),
            // The daemon's message suggests `wstore ls`, which would list this machine's store.
            Err(Error::Daemon { status: 404, kind, .. }) if self.remote => Err(Error::Daemon {
                status: 404,
                kind,
                message: format!("ref {ref_name:?} not found on the remote daemon at {0}; GET {0}/v1/refs lists the refs it has", self.client.url()),
            }),
            other => other.map_err(|e| self.reword(e)),
        }
    }

    fn missing_objects(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, Error> {
        self.client.missing_objects(ids).map_err(|e| self.reword(e))
    }

    fn get_object(&self, id: &ObjectId) -> Result<Vec<u8>, Error> {
        self.client.get_object(id).map_err(|e| self.reword(e))
    }

    fn put_object(&self, id: &ObjectId, file: &[u8]) -> Result<(), Error> {
        self.client.put_object(id, file).map(|_| ()).map_err(|e| self.reword(e))
    }

    fn import_bundle(&self, bundle: &Bundle, force: bool) -> Result<ImportReport, Error> {
        self.client.import_bundle(bundle, force).map_err(|e| self.reword(e))
    }
}
