//! Response bodies of checkout files: a whole file, one byte range or several, streamed through
//! a bounded channel so that only the tensors a range overlaps are rebuilt, one at a time.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::range::ByteRange;
use super::Shared;
use crate::catalog::{CatalogError, FileEntry, TensorEntry, TensorStorage};
use crate::error::Error;
use crate::id::ObjectId;

/// Error type of response bodies. An error ends the response early, so the client sees a
/// body shorter than its `Content-Length` and can tell that it is incomplete.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Frames buffered between the task that rebuilds tensors and the connection. Each frame is at
/// most `FRAME_BYTES`, so a slow client holds back the rebuild of the next tensor.
const CHANNEL_FRAMES: usize = 4;

/// Largest data frame sent, in bytes. Frames are zero-copy slices of a rebuilt tensor.
const FRAME_BYTES: usize = 1 << 20;

/// A stored file ready to be served: its length is known without rebuilding any tensor.
#[derive(Debug)]
pub struct FileSource {
    pub path: String,
    pub bytes: u64,
    /// BLAKE3 of the whole file as a checkout writes it; the strong ETag.
    pub file_hash: ObjectId,
    pub content_type: &'static str,
    /// True when the file contains tensors rebuilt by a lossy codec.
    pub lossy: bool,
    /// Pieces that tile `[0, bytes)` in order.
    segments: Vec<Segment>,
}

/// One contiguous piece of a file and where its bytes come from.
#[derive(Debug, Clone)]
struct Segment {
    offset: u64,
    len: u64,
    origin: Origin,
}

#[derive(Debug, Clone)]
enum Origin {
    /// Bytes already in memory (a safetensors header).
    Loaded(Bytes),
    /// A raw object read whole (a plain file).
    Object(ObjectId),
    /// A tensor rebuilt from its storage and verified.
    Tensor(Box<TensorEntry>),
}

impl FileSource {
    /// Prepares `entry` for serving. For a safetensors file this reads the header object only.
    /// It blocks on I/O, so async callers run it in `spawn_blocking`.
    pub fn load(shared: &Shared, entry: &FileEntry) -> Result<Self, Error> {
        let segments = match entry {
            FileEntry::Plain(plain) => vec![Segment { offset: 0, len: plain.bytes, origin: Origin::Object(plain.object) }],
            FileEntry::Safetensors(st) => {
                let header = Bytes::from(shared.store.objects().get(&st.header_object)?);
                let data_start = header.len() as u64;
                let mut segments = vec![Segment { offset: 0, len: data_start, origin: Origin::Loaded(header) }];
                for tensor in &st.tensors {
                    let offset = data_start.checked_add(tensor.start).ok_or_else(|| corrupt_layout(&st.path))?;
                    segments.push(Segment { offset, len: tensor.len, origin: Origin::Tensor(Box::new(tensor.clone())) });
                }
                segments
            }
        };
        let source = FileSource {
            path: entry.path().to_string(),
            bytes: entry.bytes(),
            file_hash: entry.file_hash(),
            content_type: content_type_of(entry.path()),
            lossy: is_lossy(entry),
            segments,
        };
        source.check_tiling()?;
        Ok(source)
    }

    /// Returns the strong entity tag, quoted as HTTP requires.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.file_hash.to_hex())
    }

    /// Checks that the segments cover the file exactly, so a range can never read past a
    /// segment or leave a gap. Records the catalog wrote always pass.
    fn check_tiling(&self) -> Result<(), Error> {
        let mut next = 0u64;
        for segment in &self.segments {
            if segment.offset != next {
                return Err(corrupt_layout(&self.path));
            }
            next = next.checked_add(segment.len).ok_or_else(|| corrupt_layout(&self.path))?;
        }
        if next != self.bytes {
            return Err(corrupt_layout(&self.path));
        }
        Ok(())
    }
}

/// Returns whether a file contains tensors rebuilt by a lossy codec.
pub fn is_lossy(entry: &FileEntry) -> bool {
    match entry {
        FileEntry::Plain(_) => false,
        FileEntry::Safetensors(st) => st.tensors.iter().any(|t| matches!(t.storage, TensorStorage::UltraDelta { .. })),
    }
}

fn corrupt_layout(path: &str) -> Error {
    CatalogError::Corrupt { what: format!("file {path}"), detail: "its header and tensors do not tile the file".into() }.into()
}

fn content_type_of(path: &str) -> &'static str {
    if path.ends_with(".json") {
        "application/json"
    } else if path.ends_with(".txt") || path.ends_with(".md") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// One step of a response body: literal bytes (multipart headers) or a range of the file.
#[derive(Debug, Clone)]
pub enum Part {
    Literal(Bytes),
    Range(ByteRange),
}

impl Part {
    pub fn len(&self) -> u64 {
        match self {
            Part::Literal(bytes) => bytes.len() as u64,
            Part::Range(range) => range.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Ids logged with a failure while a body streams.
#[derive(Debug, Clone)]
pub struct StreamContext {
    pub request_id: u64,
    pub target: String,
}

/// A body fed by a channel from the task that produces it.
pub struct ChannelBody {
    receiver: mpsc::Receiver<Result<Bytes, BodyError>>,
    remaining: u64,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Starts streaming `parts` of `source` and returns the body that carries them. The total
/// length is the sum of the parts' lengths, which the caller sends as `Content-Length`.
pub fn stream(shared: Arc<Shared>, source: Arc<FileSource>, parts: Vec<Part>, context: StreamContext) -> ChannelBody {
    let total = parts.iter().map(Part::len).sum();
    let (sender, receiver) = mpsc::channel(CHANNEL_FRAMES);
    tokio::spawn(async move {
        if let Err(error) = send_parts(&shared, &source, &parts, &sender).await {
            tracing::error!(
                request_id = context.request_id,
                target = %context.target,
                file = %source.path,
                %error,
                "response aborted while streaming; the client receives a truncated body"
            );
            // The receiver may be gone already (client disconnected); nothing else to tell.
            let _ = sender.send(Err(Box::new(error))).await;
        }
    });
    ChannelBody { receiver, remaining: total }
}

/// Sends every part in order. Returns early without error when the client has gone away.
async fn send_parts(
    shared: &Arc<Shared>,
    source: &FileSource,
    parts: &[Part],
    sender: &mpsc::Sender<Result<Bytes, BodyError>>,
) -> Result<(), Error> {
    for part in parts {
        let range = match part {
            Part::Literal(bytes) => {
                if sender.send(Ok(bytes.clone())).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            Part::Range(range) => *range,
        };
        let end_exclusive = range.end + 1;
        for segment in source.segments.iter().filter(|s| s.len > 0 && s.offset < end_exclusive && range.start < s.offset + s.len) {
            let bytes = segment_bytes(shared, segment).await?;
            let from = range.start.saturating_sub(segment.offset);
            let to = (end_exclusive - segment.offset).min(segment.len);
            let mut piece = slice(&bytes, from, to)?;
            while !piece.is_empty() {
                let frame = piece.split_to(piece.len().min(FRAME_BYTES));
                if sender.send(Ok(frame)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Returns `bytes[from..to]` without copying, or an error if the stored lengths disagree.
fn slice(bytes: &Bytes, from: u64, to: u64) -> Result<Bytes, Error> {
    let start = usize::try_from(from).ok().filter(|&f| f <= bytes.len());
    let end = usize::try_from(to).ok().filter(|&t| t <= bytes.len());
    match (start, end) {
        (Some(start), Some(end)) if start <= end => Ok(bytes.slice(start..end)),
        _ => Err(CatalogError::Corrupt {
            what: "file segment".into(),
            detail: format!("{} bytes stored, fewer than the record's range {from}..{to}", bytes.len()),
        }
        .into()),
    }
}

/// Fetches a segment's bytes: from memory, from the cache, or rebuilt (and verified) on a
/// blocking thread, then cached.
async fn segment_bytes(shared: &Arc<Shared>, segment: &Segment) -> Result<Bytes, Error> {
    let key = match &segment.origin {
        Origin::Loaded(bytes) => return Ok(bytes.clone()),
        Origin::Object(id) => *id,
        Origin::Tensor(entry) => entry.hash,
    };
    if let Some(bytes) = shared.cache.get(&key) {
        return Ok(bytes);
    }
    let worker = Arc::clone(shared);
    let origin = segment.origin.clone();
    let rebuilt = tokio::task::spawn_blocking(move || match origin {
        Origin::Object(id) => worker.store.objects().get(&id),
        Origin::Tensor(entry) => worker.store.rebuild_tensor(&entry),
        Origin::Loaded(bytes) => Ok(bytes.to_vec()),
    })
    .await
    .map_err(|join| Error::Task { what: "tensor rebuild".into(), detail: join.to_string() })??;
    let bytes = Bytes::from(rebuilt);
    if bytes.len() as u64 != segment.len {
        return Err(Error::VerificationFailed { what: format!("segment at offset {}", segment.offset), expected: key, actual: ObjectId::of_large(&bytes) });
    }
    shared.cache.insert(key, bytes.clone());
    Ok(bytes)
}
