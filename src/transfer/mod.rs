//! `push` and `pull`: copy a ref, its commits' lineage, their bases and the objects the
//! destination lacks from one store to another. Either side is a store opened here or a
//! daemon over HTTP, behind the `Endpoint` trait, so one transfer routine serves all four
//! combinations.
//!
//! Order: the bundle from the source, the missing ids from the destination, then each missing
//! object from the source (checked against its id on arrival) to the destination, and the
//! records last. A run cut off midway leaves objects but no records, so running it again sends
//! only the objects still missing.

pub mod http;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::id::ObjectId;
use crate::objects::verify_file;
use crate::progress::Progress;
use crate::store::{Bundle, ImportReport, ObjectEntry, Store};

/// Ids per missing-objects query. An id is 64 hex digits, so with quotes and commas a batch
/// is about 280 KB of JSON, below the daemon's 1 MiB cap on a JSON request.
pub const MISSING_QUERY_BATCH: usize = 4096;

/// One side of a transfer: a store opened by this process, or a daemon over HTTP.
pub trait Endpoint {
    /// Returns where this side is (a store directory or a daemon URL), for messages.
    fn location(&self) -> String;
    /// Collects the bundle of `ref_name` (see `Store::bundle`).
    fn bundle(&self, ref_name: &str) -> Result<Bundle, Error>;
    /// Returns the ids among `ids` that this side lacks (see `Store::missing_objects`).
    fn missing_objects(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, Error>;
    /// Reads one stored object file, as stored (encoded).
    fn get_object(&self, id: &ObjectId) -> Result<Vec<u8>, Error>;
    /// Stores one object file after checking it against `id` (see `Store::receive_object`).
    fn put_object(&self, id: &ObjectId, file: &[u8]) -> Result<(), Error>;
    /// Imports the bundle's records (see `Store::import_bundle`).
    fn import_bundle(&self, bundle: &Bundle, force: bool) -> Result<ImportReport, Error>;
}

impl Endpoint for Store {
    fn location(&self) -> String {
        self.root().display().to_string()
    }

    fn bundle(&self, ref_name: &str) -> Result<Bundle, Error> {
        Store::bundle(self, ref_name)
    }

    fn missing_objects(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, Error> {
        Store::missing_objects(self, ids)
    }

    fn get_object(&self, id: &ObjectId) -> Result<Vec<u8>, Error> {
        self.objects().get_file(id)
    }

    fn put_object(&self, id: &ObjectId, file: &[u8]) -> Result<(), Error> {
        self.receive_object(id, file).map(|_| ())
    }

    fn import_bundle(&self, bundle: &Bundle, force: bool) -> Result<ImportReport, Error> {
        Store::import_bundle(self, bundle, force)
    }
}

/// The result of a `push` or `pull`, as `--json` prints it. Sizes are stored (encoded) object bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferReport {
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub commit: ObjectId,
    /// Objects the bundle's records name.
    pub objects_total: usize,
    /// Objects this run copied to the destination.
    pub objects_sent: usize,
    pub bytes_sent: u64,
    /// Objects the destination already had.
    pub objects_present: usize,
    pub bytes_present: u64,
    /// The destination ref's commit before the transfer, if the ref existed.
    pub previous: Option<ObjectId>,
    /// True when `--force` replaced a ref that the commit does not descend from.
    pub forced: bool,
}

/// Copies `ref_name` from `source` to `destination`: records, lineage, bases, and only the
/// objects the destination lacks. `progress` counts stored bytes of the objects sent.
pub fn transfer(
    source: &dyn Endpoint,
    destination: &dyn Endpoint,
    ref_name: &str,
    force: bool,
    progress: &dyn Progress,
) -> Result<TransferReport, Error> {
    let bundle = source.bundle(ref_name)?;

    let ids: Vec<ObjectId> = bundle.objects.iter().map(|entry| entry.id).collect();
    let mut missing = std::collections::HashSet::new();
    for batch in ids.chunks(MISSING_QUERY_BATCH) {
        missing.extend(destination.missing_objects(batch)?);
    }
    let (to_send, present): (Vec<&ObjectEntry>, Vec<&ObjectEntry>) = bundle.objects.iter().partition(|entry| missing.contains(&entry.id));
    tracing::debug!(ref_name, from = %source.location(), to = %destination.location(), missing = to_send.len(), present = present.len(), "transfer planned");

    let mut report = TransferReport {
        ref_name: ref_name.to_string(),
        commit: bundle.commit,
        objects_total: bundle.objects.len(),
        objects_sent: 0,
        bytes_sent: 0,
        objects_present: present.len(),
        bytes_present: present.iter().map(|entry| entry.stored_bytes).sum(),
        previous: None,
        forced: false,
    };
    progress.start(&format!("sending {ref_name}"), to_send.iter().map(|entry| entry.stored_bytes).sum());
    for entry in to_send {
        let file = source.get_object(&entry.id)?;
        verify_file(&entry.id, &file).map_err(|detail| Error::InvalidObjectFile { id: entry.id, detail })?;
        destination.put_object(&entry.id, &file)?;
        report.objects_sent += 1;
        report.bytes_sent += file.len() as u64;
        progress.advance(file.len() as u64);
    }
    progress.finish();

    let imported = destination.import_bundle(&bundle, force)?;
    report.previous = imported.previous;
    report.forced = imported.forced;
    Ok(report)
}
