//! Uploads: a request body streamed to a file under `<store>/uploads/`, never held whole in
//! memory, then named by an upload id in a later `POST /v1/bases` or `POST /v1/commits`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::error::ApiError;
use crate::error::Error;

/// Directory under the store root that contains uploads until they are committed.
pub const UPLOADS_DIR: &str = "uploads";

/// An upload not used by a commit within this time is deleted, so abandoned uploads do not
/// fill the disk.
const UPLOAD_TTL: Duration = Duration::from_secs(3600);

/// Maximum wait for the next piece of an upload body before the upload fails, so a stalled
/// client cannot hold a connection slot forever.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Report of a received upload, as `PUT /v1/uploads/{file_name}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadReport {
    /// Id to pass as `upload` to `POST /v1/bases` or `POST /v1/commits`.
    pub upload: String,
    pub file_name: String,
    pub bytes: u64,
}

/// Uploads received and not yet used, by id.
#[derive(Debug)]
pub struct Uploads {
    dir: PathBuf,
    max_bytes: u64,
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Pending {
    file: PathBuf,
    received_at: Instant,
}

/// An upload taken for a commit. Dropping it deletes the uploaded file and its directory.
#[derive(Debug)]
pub struct TakenUpload {
    file: PathBuf,
}

impl TakenUpload {
    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for TakenUpload {
    fn drop(&mut self) {
        remove_upload_dir(&self.file);
    }
}

/// An upload being received; dropped before it is complete, it deletes its directory.
struct PartialUpload {
    file: PathBuf,
    complete: bool,
}

impl Drop for PartialUpload {
    fn drop(&mut self) {
        if !self.complete {
            remove_upload_dir(&self.file);
        }
    }
}

fn remove_upload_dir(file: &Path) {
    if let Some(dir) = file.parent() {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), %error, "failed to remove an upload directory");
            }
        }
    }
}

impl Uploads {
    /// Prepares `<root>/uploads/`, deleting what an earlier daemon left there: its ids died
    /// with it, so nothing can name those files any more.
    pub fn open(root: &Path, max_bytes: u64) -> Result<Self, Error> {
        let dir = root.join(UPLOADS_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let path = entry.map_err(|e| Error::io("list", &dir, e))?.path();
            let result = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            result.map_err(|e| Error::io("remove", &path, e))?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(path = %dir.display(), removed, "removed uploads left by an earlier daemon");
        }
        Ok(Uploads { dir, max_bytes, pending: Mutex::new(HashMap::new()) })
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Streams `body` to `<uploads>/<id>/<file_name>` and registers it. A body longer than the
    /// cap is cut off with 413 and its file removed.
    pub async fn receive(&self, file_name: &str, declared_len: Option<u64>, mut body: Incoming) -> Result<UploadReport, ApiError> {
        if declared_len.is_some_and(|len| len > self.max_bytes) {
            return Err(self.too_large());
        }
        self.expire_old();

        let id = format!("{:032x}", rand::random::<u128>());
        let dir = self.dir.join(&id);
        let file = dir.join(file_name);
        tokio::fs::create_dir(&dir).await.map_err(|e| ApiError::from(Error::io("create", &dir, e)))?;
        // Removes the partial upload on every early return below.
        let mut partial = PartialUpload { file: file.clone(), complete: false };

        let mut out = tokio::fs::File::create(&file).await.map_err(|e| ApiError::from(Error::io("create", &file, e)))?;
        let mut bytes = 0u64;
        loop {
            let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await.map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timed_out",
                    format!("upload body sent no data for {} s after {bytes} bytes; upload the file again", BODY_IDLE_TIMEOUT.as_secs()),
                )
            })?;
            let Some(frame) = next else { break };
            let frame = frame.map_err(|e| ApiError::bad_request(format!("failed to read the upload body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            bytes += data.len() as u64;
            if bytes > self.max_bytes {
                return Err(self.too_large());
            }
            out.write_all(&data).await.map_err(|e| ApiError::from(Error::io("write", &file, e)))?;
        }
        out.flush().await.map_err(|e| ApiError::from(Error::io("write", &file, e)))?;
        drop(out);

        if let Some(declared) = declared_len.filter(|&len| len != bytes) {
            return Err(ApiError::bad_request(format!("upload body has {bytes} bytes, but its Content-Length is {declared}; send the whole file again")));
        }

        partial.complete = true;
        self.lock().insert(id.clone(), Pending { file, received_at: Instant::now() });
        tracing::info!(upload = %id, file_name, bytes, "upload received");
        Ok(UploadReport { upload: id, file_name: file_name.to_string(), bytes })
    }

    /// Takes a pending upload for one commit; a second take of the same id fails.
    pub fn take(&self, id: &str) -> Result<TakenUpload, ApiError> {
        match self.lock().remove(id) {
            Some(pending) => Ok(TakenUpload { file: pending.file }),
            None => Err(ApiError::not_found(format!("upload {id:?} not found: it was used, deleted or expired; upload the file again"))),
        }
    }

    /// Deletes every pending upload (at shutdown).
    pub fn remove_all(&self) {
        for (_, pending) in self.lock().drain() {
            remove_upload_dir(&pending.file);
        }
    }

    fn expire_old(&self) {
        let mut pending = self.lock();
        let expired: Vec<String> = pending.iter().filter(|(_, p)| p.received_at.elapsed() > UPLOAD_TTL).map(|(id, _)| id.clone()).collect();
        for id in expired {
            if let Some(entry) = pending.remove(&id) {
                tracing::info!(upload = %id, "deleting an upload unused for an hour");
                remove_upload_dir(&entry.file);
            }
        }
    }

    fn too_large(&self) -> ApiError {
        ApiError::too_large(format!("upload is larger than the limit of {} bytes; raise --max-upload-gb or commit the file by path", self.max_bytes))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // Every critical section is a single map operation, so a poisoned map is consistent.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
