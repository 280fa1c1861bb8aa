//! Checkout over HTTP: the manifest of a stored checkpoint, and each of its files with byte
//! ranges, conditional ranges and multipart responses.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::body::{self, FileSource, Part, StreamContext};
use super::error::ApiError;
use super::range::{if_range_matches, parse_range, ByteRange, RangeSpec};
use super::routes::{blocking, empty_response, error_response, json_response, ResponseBody};
use super::Shared;
use crate::catalog::{FileEntry, Layout};
use crate::id::ObjectId;
use crate::store::Target;

/// Manifest of a stored checkpoint's files, as `GET /v1/checkout/{target}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckoutManifest {
    /// The target as requested.
    pub target: String,
    /// `commit` or `base`.
    pub kind: String,
    /// Full id of the commit or base; file URLs use it, so they stay valid when a ref moves.
    pub id: ObjectId,
    pub lossy: bool,
    pub layout: Layout,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestFile {
    /// Path inside the checkpoint, `/`-separated.
    pub path: String,
    /// `safetensors` or `plain`.
    pub kind: String,
    pub bytes: u64,
    /// BLAKE3 of the file as a checkout writes it.
    pub blake3: ObjectId,
    /// The `ETag` header value of the file: its BLAKE3 in quotes.
    pub etag: String,
    /// True when the file contains tensors rebuilt by a lossy codec.
    pub lossy: bool,
    /// Path of the file's URL on this daemon.
    pub url: String,
}

pub async fn manifest(shared: &Arc<Shared>, target: String) -> Result<Response<ResponseBody>, ApiError> {
    let manifest = blocking(shared, move |store| {
        let resolved = store.resolve(&target)?;
        let (snapshot, lossy) = store.snapshot_of(resolved)?;
        let (kind, id) = match resolved {
            Target::Commit(id) => ("commit", id),
            Target::Base(id) => ("base", id),
        };
        let files = snapshot
            .files
            .iter()
            .map(|file| ManifestFile {
                path: file.path().to_string(),
                kind: match file {
                    FileEntry::Plain(_) => "plain".into(),
                    FileEntry::Safetensors(_) => "safetensors".into(),
                },
                bytes: file.bytes(),
                blake3: file.file_hash(),
                etag: format!("\"{}\"", file.file_hash().to_hex()),
                lossy: body::is_lossy(file),
                url: format!("/v1/checkout/{}/{}", id.to_hex(), encode_path(file.path())),
            })
            .collect();
        Ok(CheckoutManifest { target, kind: kind.into(), id, lossy, layout: snapshot.layout, files })
    })
    .await?;
    Ok(json_response(StatusCode::OK, &manifest))
}

/// Percent-encodes each segment of a stored path for use in a URL.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `GET` or `HEAD` of one file. Headers, including `Content-Length`, are computed from the
/// catalog and the safetensors header alone; tensors are rebuilt while the body streams.
pub async fn file(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    target: String,
    file: String,
    request_id: u64,
) -> Result<Response<ResponseBody>, ApiError> {
    let (lookup_target, lookup_file) = (target.clone(), file.clone());
    let worker = Arc::clone(shared);
    let source = blocking(shared, move |store| {
        let resolved = store.resolve(&lookup_target)?;
        let (snapshot, _) = store.snapshot_of(resolved)?;
        let entry = snapshot.files.iter().find(|f| f.path() == lookup_file).ok_or_else(|| {
            ApiError::not_found(format!("file {lookup_file:?} not found in {lookup_target}; GET /v1/checkout/{lookup_target} lists its files"))
        })?;
        Ok(FileSource::load(&worker, entry)?)
    })
    .await?;
    let source = Arc::new(source);

    let etag = source.etag();
    let spec = requested_ranges(request.headers(), &etag, source.bytes);
    let head = request.method() == hyper::Method::HEAD;
    let context = StreamContext { request_id, target };

    let (status, parts, extra): (StatusCode, Vec<Part>, Vec<(header::HeaderName, String)>) = match spec {
        RangeSpec::Unsatisfiable => {
            let mut response = error_response(&ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("no requested range overlaps the {} bytes of {}", source.bytes, source.path),
            ));
            set(response.headers_mut(), header::CONTENT_RANGE, &format!("bytes */{}", source.bytes));
            common_headers(response.headers_mut(), &source);
            return Ok(response);
        }
        RangeSpec::Full => {
            let parts = if source.bytes == 0 { Vec::new() } else { vec![Part::Range(ByteRange { start: 0, end: source.bytes - 1 })] };
            (StatusCode::OK, parts, vec![(header::CONTENT_TYPE, source.content_type.to_string())])
        }
        RangeSpec::Ranges(ranges) if ranges.len() == 1 => {
            let range = ranges[0];
            let content_range = format!("bytes {}-{}/{}", range.start, range.end, source.bytes);
            (
                StatusCode::PARTIAL_CONTENT,
                vec![Part::Range(range)],
                vec![(header::CONTENT_TYPE, source.content_type.to_string()), (header::CONTENT_RANGE, content_range)],
            )
        }
        RangeSpec::Ranges(ranges) => {
            let boundary = format!("wstore-{}", &source.file_hash.to_hex()[..32]);
            let parts = multipart_parts(&ranges, &boundary, source.content_type, source.bytes);
            (StatusCode::PARTIAL_CONTENT, parts, vec![(header::CONTENT_TYPE, format!("multipart/byteranges; boundary={boundary}"))])
        }
    };

    let length: u64 = parts.iter().map(Part::len).sum();
    let mut response = if head || parts.is_empty() {
        empty_response(status)
    } else {
        let body = body::stream(Arc::clone(shared), Arc::clone(&source), parts, context);
        let mut response = Response::new(body.boxed());
        *response.status_mut() = status;
        response
    };
    let headers = response.headers_mut();
    common_headers(headers, &source);
    set(headers, header::CONTENT_LENGTH, &length.to_string());
    for (name, value) in extra {
        set(headers, name, &value);
    }
    Ok(response)
}

/// Resolves the `Range` and `If-Range` headers; anything unreadable means the whole file.
fn requested_ranges(headers: &HeaderMap, etag: &str, len: u64) -> RangeSpec {
    let Some(range) = headers.get(header::RANGE) else {
        return RangeSpec::Full;
    };
    let Ok(range) = range.to_str() else {
        return RangeSpec::Full;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        let matches = if_range.to_str().is_ok_and(|value| if_range_matches(value, etag));
        if !matches {
            return RangeSpec::Full;
        }
    }
    parse_range(range, len)
}

/// Lays out a `multipart/byteranges` body: each part's headers, its bytes, and the closing
/// delimiter, so the total length is known before any byte is produced.
fn multipart_parts(ranges: &[ByteRange], boundary: &str, content_type: &str, len: u64) -> Vec<Part> {
    let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
    for range in ranges {
        let head = format!(
            "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
            range.start, range.end
        );
        parts.push(Part::Literal(Bytes::from(head)));
        parts.push(Part::Range(*range));
    }
    parts.push(Part::Literal(Bytes::from(format!("\r\n--{boundary}--\r\n"))));
    parts
}

fn common_headers(headers: &mut HeaderMap, source: &FileSource) {
    set(headers, header::ACCEPT_RANGES, "bytes");
    set(headers, header::ETAG, &source.etag());
    set(headers, header::HeaderName::from_static("x-wstore-lossy"), if source.lossy { "true" } else { "false" });
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    // Every value set here is ASCII built from numbers, hex and fixed words.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_percent_encoded() {
        assert_eq!(encode_path("sub dir/model-00001.safetensors"), "sub%20dir/model-00001.safetensors");
        assert_eq!(encode_path("a%b"), "a%25b");
    }

    #[test]
    fn multipart_length_counts_every_byte() {
        let ranges = [ByteRange { start: 0, end: 9 }, ByteRange { start: 20, end: 29 }];
        let parts = multipart_parts(&ranges, "B", "application/octet-stream", 100);
        let first = "\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-9/100\r\n\r\n";
        let second = "\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 20-29/100\r\n\r\n";
        let closing = "\r\n--B--\r\n";
        let total: u64 = parts.iter().map(Part::len).sum();
        assert_eq!(parts.len(), 5);
        assert_eq!(total, (first.len() + second.len() + closing.len()) as u64 + 20);
    }
}
