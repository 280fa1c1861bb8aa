//! Objects in an S3-compatible bucket, through the `object_store` crate.
//!
//! Key layout under the store's prefix:
//! - `objects/<id hex>`: the object file, as `FsStorage` would store it.
//! - `refs/<id hex>/<store id>`: an empty marker saying that store relies on the object.
//! - `gc/<store id>`: an empty fence, present while that store's gc runs.
//!
//! Several stores, each with its own catalog, may share one bucket and prefix. The markers
//! and fences keep one store's gc from deleting objects another store relies on. The protocol,
//! and why its order is safe, is in docs/design.md ("Objects on S3 and shared buckets").
//!
//! Calls block: see `bridge` for where they may be made from.

mod bridge;
pub mod cache;
pub mod config;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use self::bridge::Bridge;
use self::cache::ReadCache;
pub use self::config::{S3Credentials, S3Location};
use super::{check_range, PutOutcome, SharedObjects, Storage, StorageError, FENCE_STALE};
use crate::id::ObjectId;

/// Objects larger than this go up as multipart uploads in parts of this size (8 MiB, above
/// S3's 5 MiB minimum part size).
pub const PART_BYTES: usize = 8 << 20;

/// Parts of one multipart upload in flight at once.
const PART_CONCURRENCY: usize = 4;

/// Retries of a failed request (connection errors, 5xx) before the error is reported.
const MAX_RETRIES: usize = 3;

/// How long a writer waits for another store's gc before giving up with an error.
const FENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(1800);

/// Pause between two looks at the fences while waiting.
const FENCE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// One marker or fence key, listed with its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub object: ObjectId,
    pub store_id: String,
    pub modified: SystemTime,
}

/// The S3 object storage of one store. Its methods block, so call them from plain threads or
/// `spawn_blocking`, never from an async worker thread.
pub struct S3Storage {
    location: S3Location,
    endpoint: String,
    /// The region requests are signed for, named when the server rejects it.
    region: String,
    store_id: String,
    client: Arc<AmazonS3>,
    bridge: Bridge,
    cache: Option<ReadCache>,
    /// Objects this instance uploaded (each whole upload counts once), for reports and tests.
    uploads: AtomicU64,
    /// Ids being put by this instance, so that concurrent puts of one id upload it once.
    in_flight: Mutex<HashSet<ObjectId>>,
    put_done: Condvar,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds the credentials, so it is left out.
        f.debug_struct("S3Storage")
            .field("location", &self.location.url())
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("store_id", &self.store_id)
            .field("cache", &self.cache)
            .finish()
    }
}

impl S3Storage {
    /// Connects to the bucket of `location` and checks that it can be listed, so that a
    /// missing bucket or bad credentials fail at open with a clear message. `cache_dir` holds
    /// the read cache, limited to `cache_bytes` (0 disables it).
    pub fn open(
        location: S3Location,
        credentials: &S3Credentials,
        store_id: &str,
        cache_dir: &Path,
        cache_bytes: u64,
    ) -> Result<S3Storage, StorageError> {
        let endpoint = credentials.endpoint.clone().unwrap_or_else(|| "AWS S3".to_string());
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(&credentials.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            // Path-style requests (`endpoint/bucket/key`): local servers have no per-bucket
            // host names.
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig { max_retries: MAX_RETRIES, retry_timeout: std::time::Duration::from_secs(30), ..RetryConfig::default() })
            // Client options replace the whole set, so allow_http goes in here too.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(credentials.allow_http)
                    .with_connect_timeout(std::time::Duration::from_secs(5)),
            );
        if let Some(url) = &credentials.endpoint {
            builder = builder.with_endpoint(url);
        }
        let client = builder.build().map_err(|error| StorageError::Config {
            detail: format!("cannot set up the S3 client for {}: {error}; check AWS_ENDPOINT_URL and AWS_REGION", location.url()),
        })?;
        let cache = if cache_bytes == 0 {
            None
        } else {
            Some(ReadCache::open(cache_dir, cache_bytes).map_err(|source| StorageError::from_io("open read cache", cache_dir, source))?)
        };
        let storage = S3Storage {
            location,
            endpoint,
            region: credentials.region.clone(),
            store_id: store_id.to_string(),
            client: Arc::new(client),
            bridge: Bridge::new()?,
            cache,
            uploads: AtomicU64::new(0),
            in_flight: Mutex::new(HashSet::new()),
            put_done: Condvar::new(),
        };
        storage.check_bucket()?;
        Ok(storage)
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// Objects this instance has uploaded so far.
    pub fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// The read cache, if enabled.
    pub fn cache(&self) -> Option<&ReadCache> {
        self.cache.as_ref()
    }

    fn object_key(&self, id: &ObjectId) -> Key {
        Key::from(self.location.key(&format!("objects/{}", id.to_hex())))
    }

    fn marker_key(&self, id: &ObjectId) -> Key {
        Key::from(self.location.key(&format!("refs/{}/{}", id.to_hex(), self.store_id)))
    }

    fn fence_key(&self) -> Key {
        Key::from(self.location.key(&format!("gc/{}", self.store_id)))
    }

    /// Lists the bucket under the prefix once: a missing bucket or bad credentials fail here.
    fn check_bucket(&self) -> Result<(), StorageError> {
        let client = self.client.clone();
        let prefix = Key::from(self.location.key("gc"));
        let listed = self.bridge.run(async move { client.list_with_delimiter(Some(&prefix)).await.map(|_| ()) })?;
        listed.map_err(|error| match error {
            _ if is_missing_bucket(&error) => StorageError::Remote {
                op: "open bucket",
                key: self.location.url(),
                detail: format!("bucket {} does not exist at {}", self.location.bucket, self.endpoint),
                hint: format!(
                    "create the bucket (for example `aws s3 mb s3://{}`) or fix the objects URL in store.json",
                    self.location.bucket
                ),
            },
            other => self.remote_error("list bucket", &self.location.prefix, other),
        })
    }

    /// Maps a client error to a `StorageError` that names the key and the likely fix.
    fn remote_error(&self, op: &'static str, key: &str, error: object_store::Error) -> StorageError {
        let chain = error_chain(&error);
        // LIST errors arrive as `Generic`, so the HTTP status is read from the message too.
        let denied = matches!(error, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
            || chain.contains("403 Forbidden")
            || chain.contains("401 Unauthorized");
        let missing = matches!(error, object_store::Error::NotFound { .. }) || chain.contains("404 Not Found");
        // A request signed for another region: Garage 2.5.0 answers 400 with the S3 error code
        // `AuthorizationHeaderMalformed` and names the region it expects.
        let wrong_region = chain.contains("AuthorizationHeaderMalformed");
        let (detail, hint) = match &error {
            _ if wrong_region => (
                format!("{} rejected region {:?}: {chain}", self.endpoint, self.region),
                "set AWS_REGION to the region the server expects, which its message above names".to_string(),
            ),
            _ if denied => (
                format!("access denied by {}", self.endpoint),
                format!(
                    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that the key may read and write bucket {}",
                    self.location.bucket
                ),
            ),
            _ if missing => (
                format!("not found at {}", self.endpoint),
                format!("check that bucket {} exists and the objects URL in store.json is right", self.location.bucket),
            ),
            _ => (
                chain,
                format!("check that {} is reachable (AWS_ENDPOINT_URL) and try again", self.endpoint),
            ),
        };
        StorageError::Remote { op, key: format!("s3://{}/{key}", self.location.bucket), detail, hint }
    }

    /// HEAD of an object key: `None` when it does not exist.
    fn head(&self, op: &'static str, key: Key) -> Result<Option<object_store::ObjectMeta>, StorageError> {
        let client = self.client.clone();
        let key_text = key.to_string();
        match self.bridge.run(async move { client.head(&key).await })? {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.remote_error(op, &key_text, error)),
        }
    }

    /// Writes an empty object at `key`.
    fn put_empty(&self, op: &'static str, key: Key) -> Result<(), StorageError> {
        let client = self.client.clone();
        let key_text = key.to_string();
        self.bridge
            .run(async move { client.put(&key, PutPayload::new()).await.map(|_| ()) })?
            .map_err(|error| self.remote_error(op, &key_text, error))
    }

    fn delete_key(&self, op: &'static str, key: Key) -> Result<(), StorageError> {
        let client = self.client.clone();
        let key_text = key.to_string();
        match self.bridge.run(async move { client.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.remote_error(op, &key_text, error)),
        }
    }

    /// Every key under `name/` with its modification time.
    fn list_keys(&self, name: &str) -> Result<Vec<(String, SystemTime)>, StorageError> {
        let client = self.client.clone();
        let prefix = Key::from(self.location.key(name));
        let key_text = prefix.to_string();
        let listed = self.bridge.run(async move {
            client
                .list(Some(&prefix))
                .map_ok(|meta| (meta.location.to_string(), SystemTime::from(meta.last_modified)))
                .try_collect::<Vec<_>>()
                .await
        })?;
        listed.map_err(|error| self.remote_error("list", &key_text, error))
    }

    /// Keys of every gc fence under the prefix, this store's own included.
    pub fn gc_fences(&self) -> Result<Vec<String>, StorageError> {
        Ok(self.list_keys("gc")?.into_iter().map(|(key, _)| key).collect())
    }

    /// Fences of gcs running in other stores: keys under `gc/` other than this store's own,
    /// refreshed within `FENCE_STALE`. An older fence is from a gc that died; it is logged and
    /// ignored.
    fn running_gc_fences(&self) -> Result<Vec<String>, StorageError> {
        let own = self.fence_key().to_string();
        let now = SystemTime::now();
        let mut running = Vec::new();
        for (key, modified) in self.list_keys("gc")? {
            if key == own {
                continue;
            }
            let age = now.duration_since(modified).unwrap_or_default();
            if age > FENCE_STALE {
                tracing::warn!(fence = %key, age_secs = age.as_secs(), "ignoring a stale gc fence");
                continue;
            }
            running.push(key);
        }
        Ok(running)
    }

    /// Blocks while another store's gc runs on this bucket. Called after writing a marker and
    /// before relying on (or uploading) the object: once no fence is up, any gc that could
    /// delete the object has finished its deletions, and any gc that starts later lists the
    /// marker (docs/design.md, "Objects on S3 and shared buckets").
    fn wait_for_gc(&self) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        loop {
            let running = self.running_gc_fences()?;
            let Some(first) = running.first() else { return Ok(()) };
            if started.elapsed() > FENCE_WAIT {
                return Err(StorageError::Remote {
                    op: "wait for the gc fence",
                    key: format!("s3://{}/{first}", self.location.bucket),
                    detail: format!("another store's gc has held it for over {} s", FENCE_WAIT.as_secs()),
                    hint: "retry once that gc ends; if no gc runs there any more, delete that key".into(),
                });
            }
            std::thread::sleep(FENCE_POLL);
        }
    }

    /// Uploads an object: one PUT, or a multipart upload whose parts go up concurrently and
    /// which is aborted if any part fails.
    fn upload(&self, id: &ObjectId, bytes: &[u8]) -> Result<(), StorageError> {
        let client = self.client.clone();
        let key = self.object_key(id);
        let key_text = key.to_string();
        let bytes = Bytes::copy_from_slice(bytes);
        let result = self.bridge.run(async move {
            if bytes.len() <= PART_BYTES {
                return client.put(&key, PutPayload::from(bytes)).await.map(|_| ());
            }
            let mut upload = client.put_multipart(&key).await?;
            let parts: Vec<_> = (0..bytes.len())
                .step_by(PART_BYTES)
                .map(|start| {
                    let end = (start + PART_BYTES).min(bytes.len());
                    upload.put_part(PutPayload::from(bytes.slice(start..end)))
                })
                .collect();
            let sent = futures_util::stream::iter(parts).buffer_unordered(PART_CONCURRENCY).try_collect::<Vec<()>>().await;
            match sent {
                Ok(_) => upload.complete().await.map(|_| ()),
                Err(error) => {
                    // Uploaded parts cost storage until aborted; the part error is the one to report.
                    if let Err(abort_error) = upload.abort().await {
                        tracing::warn!(error = %abort_error, "could not abort a failed multipart upload");
                    }
                    Err(error)
                }
            }
        })?;
        result.map_err(|error| self.remote_error("upload object", &key_text, error))?;
        self.uploads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until no other thread of this instance puts `id`, then claims it until the
    /// returned guard drops.
    fn claim(&self, id: &ObjectId) -> Claim<'_> {
        // The set stays consistent at every unlock, so a panic elsewhere leaves it usable.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while in_flight.contains(id) {
            in_flight = self.put_done.wait(in_flight).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        in_flight.insert(*id);
        Claim { storage: self, id: *id }
    }

    /// Reads a whole object from the bucket.
    fn download(&self, id: &ObjectId) -> Result<Vec<u8>, StorageError> {
        let client = self.client.clone();
        let key = self.object_key(id);
        let key_text = key.to_string();
        match self.bridge.run(async move { client.get(&key).await?.bytes().await })? {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound { id: *id }),
            Err(error) => Err(self.remote_error("download object", &key_text, error)),
        }
    }
}

/// Whether a LIST failed because the bucket does not exist (S3 error code `NoSuchBucket`).
fn is_missing_bucket(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::NotFound { .. }) || error_chain(error).contains("NoSuchBucket")
}

/// An error with its sources, joined by ": ", because the client's top-level message often
/// hides the cause (a refused connection, a DNS failure).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A put in progress; dropping it lets the next put of the same id go on.
struct Claim<'a> {
    storage: &'a S3Storage,
    id: ObjectId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.storage.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        in_flight.remove(&self.id);
        self.storage.put_done.notify_all();
    }
}

impl Storage for S3Storage {
    fn put(&self, id: &ObjectId, bytes: &[u8]) -> Result<PutOutcome, StorageError> {
        let _claim = self.claim(id);
        // Marker first, then the fence check, then the existence check: see docs/design.md.
        self.put_empty("write reference marker", self.marker_key(id))?;
        self.wait_for_gc()?;
        if self.head("check object", self.object_key(id))?.is_some() {
            return Ok(PutOutcome::AlreadyPresent);
        }
        self.upload(id, bytes)?;
        Ok(PutOutcome::Created)
    }

    fn get(&self, id: &ObjectId) -> Result<Vec<u8>, StorageError> {
        if let Some(bytes) = self.cache.as_ref().and_then(|cache| cache.get(id)) {
            return Ok(bytes);
        }
        let bytes = self.download(id)?;
        if let Some(cache) = &self.cache {
            cache.insert(id, &bytes);
        }
        Ok(bytes)
    }

    fn get_range(&self, id: &ObjectId, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let size = self.size(id)?;
        let end = check_range(id, offset, len, size)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if let Some(bytes) = self.cache.as_ref().and_then(|cache| cache.get_range(id, offset, len)) {
            return Ok(bytes);
        }
        let client = self.client.clone();
        let key = self.object_key(id);
        let key_text = key.to_string();
        match self.bridge.run(async move { client.get_range(&key, offset..end).await })? {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound { id: *id }),
            Err(error) => Err(self.remote_error("read range of object", &key_text, error)),
        }
    }

    fn size(&self, id: &ObjectId) -> Result<u64, StorageError> {
        if let Some(size) = self.cache.as_ref().and_then(|cache| cache.size(id)) {
            return Ok(size);
        }
        match self.head("read size of object", self.object_key(id))? {
            Some(meta) => Ok(meta.size),
            None => Err(StorageError::NotFound { id: *id }),
        }
    }

    fn contains(&self, id: &ObjectId) -> Result<bool, StorageError> {
        Ok(self.head("check object", self.object_key(id))?.is_some())
    }

    fn adopt(&self, id: &ObjectId) -> Result<bool, StorageError> {
        self.put_empty("write reference marker", self.marker_key(id))?;
        self.wait_for_gc()?;
        self.contains(id)
    }

    fn delete(&self, id: &ObjectId) -> Result<bool, StorageError> {
        if let Some(cache) = &self.cache {
            cache.remove(id);
        }
        if !self.contains(id)? {
            return Ok(false);
        }
        self.delete_key("delete object", self.object_key(id))?;
        Ok(true)
    }

    fn list(&self) -> Result<Vec<ObjectId>, StorageError> {
        let ids: BTreeSet<ObjectId> = self
            .list_keys("objects")?
            .into_iter()
            .filter_map(|(key, _)| key.rsplit('/').next().and_then(|hex| hex.parse().ok()))
            .collect();
        Ok(ids.into_iter().collect())
    }

    fn modified(&self, id: &ObjectId) -> Result<Option<SystemTime>, StorageError> {
        match self.head("read time of object", self.object_key(id))? {
            Some(meta) => Ok(Some(SystemTime::from(meta.last_modified))),
            None => Err(StorageError::NotFound { id: *id }),
        }
    }

    fn forget_cached(&self, id: &ObjectId) -> bool {
        self.cache.as_ref().is_some_and(|cache| cache.remove(id))
    }

    fn shared(&self) -> Option<&dyn SharedObjects> {
        Some(self)
    }
}

impl SharedObjects for S3Storage {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn begin_gc(&self) -> Result<(), StorageError> {
        self.put_empty("write gc fence", self.fence_key())
    }

    fn end_gc(&self) -> Result<(), StorageError> {
        self.delete_key("delete gc fence", self.fence_key())
    }

    fn markers(&self) -> Result<Vec<Marker>, StorageError> {
        let mut markers = Vec::new();
        for (key, modified) in self.list_keys("refs")? {
            let mut parts = key.rsplit('/');
            let (Some(store_id), Some(hex)) = (parts.next(), parts.next()) else { continue };
            if let Ok(object) = hex.parse() {
                markers.push(Marker { object, store_id: store_id.to_string(), modified });
            }
        }
        Ok(markers)
    }

    fn is_marked(&self, id: &ObjectId) -> Result<bool, StorageError> {
        Ok(!self.list_keys(&format!("refs/{}", id.to_hex()))?.is_empty())
    }

    fn delete_marker(&self, id: &ObjectId) -> Result<(), StorageError> {
        self.delete_key("delete reference marker", self.marker_key(id))
    }
}
