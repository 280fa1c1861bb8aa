//! The library's top-level error, grouped by what the caller should do about it.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::catalog::CatalogError;
use crate::format::safetensors::SafetensorsError;
use crate::id::ObjectId;
use crate::storage::StorageError;

#[derive(Debug, Error)]
pub enum Error {
    // ---- the store itself
    #[error("no wstore store at {path}; run `wstore init` first, or point --store or WSTORE_HOME at an existing store")]
    StoreMissing { path: PathBuf },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("object {id} is corrupt: {detail}; restore the object file from a backup, or run `wstore fsck --repair` and then add or commit its source again")]
    CorruptObject { id: ObjectId, detail: String },
    #[error("{what} failed verification: expected BLAKE3 {expected}, rebuilt {actual}; nothing was written to the output")]
    VerificationFailed { what: String, expected: ObjectId, actual: ObjectId },
    #[error("{what} is still needed by {dependants}; {fix}")]
    HasDependants { what: String, dependants: String, fix: String },
    #[error("{path}: the store stayed locked by another wstore process for {waited_secs} s; retry once it has finished, or raise --lock-timeout")]
    LockTimeout { path: PathBuf, waited_secs: u64 },

    // ---- invalid input
    #[error("{path}: invalid safetensors file: {source}")]
    InvalidSafetensors { path: PathBuf, source: SafetensorsError },
    #[error("{path}: invalid sharded checkpoint index: {reason}")]
    InvalidIndex { path: PathBuf, reason: String },
    #[error("{path}: rejected: {reason}")]
    UnsafePath { path: PathBuf, reason: String },
    #[error("{path}: the file changed while it was being stored; nothing was recorded, retry once it is no longer being written")]
    InputChanged { path: PathBuf },
    #[error("{path}: the directory holds no files to store")]
    EmptyInput { path: PathBuf },
    #[error("{path}: the fine-tune shares no tensor name with base {base}; check --base, or map names with --map-prefix FINETUNE=BASE")]
    NoSharedTensors { path: PathBuf, base: String },
    #[error("name {name:?} already names {taken_by}; choose another name")]
    NameTaken { name: String, taken_by: &'static str },
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName { kind: &'static str, name: String, reason: String },
    #[error("invalid --map-prefix {text:?}: expected FINETUNE_PREFIX=BASE_PREFIX, e.g. =bert.")]
    InvalidPrefixMap { text: String },
    #[error("{path} already exists; choose another output path or pass --force to replace it")]
    OutputExists { path: PathBuf },
    #[error("{what}: {detail}")]
    InvalidArgument { what: String, detail: String },

    // ---- codecs
    #[error("{count} tensors exceed --max-error {max_error:e} with these settings, worst: {worst}; loosen --sparsity or raise --bits, or pass --accept-error to store it anyway")]
    OverBudget { max_error: f64, worst: String, count: usize },
    #[error("tensor {tensor:?}: {detail}")]
    Codec { tensor: String, detail: String },

    // ---- the daemon
    #[error("failed to listen on {addr}: {source}; choose another --listen address or stop the process that holds it")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{what} failed: {detail}")]
    Task { what: String, detail: String },

    // ---- the daemon, as the CLI's client sees it
    /// An error response of the daemon. `message` is the daemon's text, which for store
    /// errors is what the same command prints without a daemon.
    #[error("{message}")]
    Daemon { status: u16, kind: String, message: String },
    #[error("failed to reach the daemon at {url}: {detail}; check that `wstore serve` still runs for this store")]
    DaemonUnreachable { url: String, detail: String },
    #[error("the daemon at {url} (pid {pid}) owns the store at {store}, and `wstore {command}` cannot run through it; stop the daemon (SIGINT or SIGTERM to pid {pid}) and run the command again")]
    DaemonUnsupported { command: String, url: String, pid: u32, store: PathBuf },

    // ---- push and pull between stores
    #[error("object file sent as {id} is invalid: {detail}; nothing was stored, so run `wstore fsck` on the sending store")]
    InvalidObjectFile { id: ObjectId, detail: String },
    #[error("invalid bundle: {detail}; nothing was imported")]
    InvalidBundle { detail: String },
    #[error("the destination lacks {count} of the objects the bundle references (first {first}); nothing was imported, so run the push or pull again to send them")]
    ObjectsMissing { count: usize, first: ObjectId },
    #[error("base name {name:?} on the destination names base {existing}, but the transferred commits use base {incoming}; remove that name on the destination (`wstore base rm {name}`) or rename the base on the source, then retry")]
    BaseNameConflict { name: String, existing: ObjectId, incoming: ObjectId },
    #[error("ref {ref_name:?} on the destination names commit {current}, and commit {commit} does not descend from it; pass --force to replace the ref anyway, which leaves commit {current} without it")]
    NonFastForward { ref_name: String, current: ObjectId, commit: ObjectId },
    #[error("failed to reach the remote daemon at {url}: {detail}; check the URL and that `wstore serve` runs there")]
    RemoteUnreachable { url: String, detail: String },
    // ---- the store's config file
    #[error("store config {}: {detail}", path.display())]
    StoreConfig { path: PathBuf, detail: String },

    // ---- plain I/O on inputs and outputs
    #[error("{path}: failed to {op}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
}

impl Error {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io { op, path: path.to_path_buf(), source }
    }
}
