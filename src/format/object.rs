//! The object file envelope: a 16-byte header, then the content, raw or as one zstd frame.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "WSOB"
//!      4     1  envelope version, 1
//!      5     1  kind: 1 raw bytes, 2 lossless delta payload, 3 UltraDelta payload
//!      6     1  compression: 0 none, 1 zstd
//!      7     1  reserved, 0
//!      8     8  content length in bytes, u64 little-endian (before compression)
//!     16     -  body: the content, or one zstd frame that decompresses to it
//! ```
//!
//! An object's id is the BLAKE3 of its content, so the same bytes stored raw or compressed
//! have one id, and a reader checks the id after decompressing.

use thiserror::Error;

pub const MAGIC: &[u8; 4] = b"WSOB";
pub const ENVELOPE_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;

/// Upper bound on a declared content length, so a corrupt header cannot make a reader
/// allocate without limit. 64 GiB is far above any single tensor or file we store.
pub const MAX_CONTENT_LEN: u64 = 64 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// Tensor bytes, a safetensors header, or any other file, kept verbatim.
    Raw,
    /// A lossless delta payload (`codec::lossless`).
    LosslessDelta,
    /// An UltraDelta payload (`codec::ultradelta`).
    UltraDelta,
}

impl ObjectKind {
    fn code(self) -> u8 {
        match self {
            ObjectKind::Raw => 1,
            ObjectKind::LosslessDelta => 2,
            ObjectKind::UltraDelta => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ObjectKind::Raw),
            2 => Some(ObjectKind::LosslessDelta),
            3 => Some(ObjectKind::UltraDelta),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

/// The parsed fixed-size header of an object file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub kind: ObjectKind,
    pub compression: Compression,
    pub content_len: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("object file is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("object file does not start with the magic \"WSOB\"")]
    BadMagic,
    #[error("object envelope version {0} is not supported by this wstore (it reads version {ENVELOPE_VERSION}); upgrade wstore")]
    UnsupportedVersion(u8),
    #[error("object kind code {0} is unknown")]
    UnknownKind(u8),
    #[error("object compression code {0} is unknown")]
    UnknownCompression(u8),
    #[error("object declares {declared} content bytes, above the limit of {MAX_CONTENT_LEN}")]
    ContentTooLarge { declared: u64 },
    #[error("object body holds {actual} content bytes but its header declares {declared}")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("object body is not a valid zstd frame: {0}")]
    Decompress(String),
}

/// Builds the 16-byte header.
pub fn encode_header(header: &EnvelopeHeader) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4] = ENVELOPE_VERSION;
    out[5] = header.kind.code();
    out[6] = match header.compression {
        Compression::None => 0,
        Compression::Zstd => 1,
    };
    out[8..16].copy_from_slice(&header.content_len.to_le_bytes());
    out
}

/// Parses and checks the 16-byte header at the start of `file`.
pub fn decode_header(file: &[u8]) -> Result<EnvelopeHeader, EnvelopeError> {
    let head = file
        .get(..HEADER_LEN)
        .ok_or(EnvelopeError::TooShort { len: file.len() })?;
    if &head[..4] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if head[4] != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(head[4]));
    }
    let kind = ObjectKind::from_code(head[5]).ok_or(EnvelopeError::UnknownKind(head[5]))?;
    let compression = match head[6] {
        0 => Compression::None,
        1 => Compression::Zstd,
        other => return Err(EnvelopeError::UnknownCompression(other)),
    };
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&head[8..16]);
    let content_len = u64::from_le_bytes(len_bytes);
    if content_len > MAX_CONTENT_LEN {
        return Err(EnvelopeError::ContentTooLarge { declared: content_len });
    }
    Ok(EnvelopeHeader { kind, compression, content_len })
}

/// Wraps `content` in an envelope, compressing it with zstd at `level` when that saves at
/// least 1/64 of its size (below that, the decompression cost on every read is not worth it).
pub fn encode(kind: ObjectKind, content: &[u8], level: i32) -> Vec<u8> {
    let compressed = zstd::bulk::compress(content, level).ok();
    let worth_it = |c: &Vec<u8>| (c.len() as u64) < content.len() as u64 - content.len() as u64 / 64;
    let (compression, body) = match compressed {
        Some(c) if !content.is_empty() && worth_it(&c) => (Compression::Zstd, c),
        _ => (Compression::None, content.to_vec()),
    };
    let header = EnvelopeHeader { kind, compression, content_len: content.len() as u64 };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&encode_header(&header));
    out.extend_from_slice(&body);
    out
}

/// Unwraps an object file into its header and content.
pub fn decode(file: &[u8]) -> Result<(EnvelopeHeader, Vec<u8>), EnvelopeError> {
    let header = decode_header(file)?;
    let body = &file[HEADER_LEN..];
    let content = match header.compression {
        Compression::None => body.to_vec(),
        Compression::Zstd => {
            // Stream the frame so memory grows with the bytes it really holds, not with the
            // length the header declares (a corrupt header could claim gigabytes). Reading one
            // byte past the declared length is enough to catch a frame that inflates further.
            use std::io::Read;
            let decoder = zstd::stream::read::Decoder::with_buffer(body)
                .map_err(|e| EnvelopeError::Decompress(e.to_string()))?;
            let mut content = Vec::new();
            decoder
                .take(header.content_len.saturating_add(1))
                .read_to_end(&mut content)
                .map_err(|e| EnvelopeError::Decompress(e.to_string()))?;
            content
        }
    };
    if content.len() as u64 != header.content_len {
        return Err(EnvelopeError::LengthMismatch {
            declared: header.content_len,
            actual: content.len() as u64,
        });
    }
    Ok((header, content))
}

/// Decodes an object file as a stream and returns its header and the BLAKE3 of its content,
/// without holding the content: memory stays small whatever length the header declares, so a
/// received file that inflates to gigabytes cannot exhaust it. Checks what `decode` checks.
pub fn content_hash(file: &[u8]) -> Result<(EnvelopeHeader, blake3::Hash), EnvelopeError> {
    use std::io::Read;
    let header = decode_header(file)?;
    let body = &file[HEADER_LEN..];
    let mut hasher = blake3::Hasher::new();
    let actual = match header.compression {
        Compression::None => {
            hasher.update(body);
            body.len() as u64
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(|e| EnvelopeError::Decompress(e.to_string()))?;
            // One byte past the declared length is enough to catch a frame that inflates further.
            std::io::copy(&mut decoder.take(header.content_len.saturating_add(1)), &mut hasher)
                .map_err(|e| EnvelopeError::Decompress(e.to_string()))?
        }
    };
    if actual != header.content_len {
        return Err(EnvelopeError::LengthMismatch { declared: header.content_len, actual });
    }
    Ok((header, hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compressible_content_is_stored_as_zstd() {
        let content = vec![7u8; 10_000];
        let file = encode(ObjectKind::Raw, &content, 3);
        let (header, back) = decode(&file).unwrap();
        assert_eq!(header.compression, Compression::Zstd);
        assert!(file.len() < 200);
        assert_eq!(back, content);
    }

    #[test]
    fn incompressible_content_is_stored_raw() {
        use rand::{RngCore, SeedableRng};
        let mut content = vec![0u8; 4096];
        rand_chacha::ChaCha8Rng::seed_from_u64(1).fill_bytes(&mut content);
        let file = encode(ObjectKind::LosslessDelta, &content, 3);
        let (header, back) = decode(&file).unwrap();
        assert_eq!(header.compression, Compression::None);
        assert_eq!(header.kind, ObjectKind::LosslessDelta);
        assert_eq!(file.len(), HEADER_LEN + content.len());
        assert_eq!(back, content);
    }

    #[test]
    fn content_hash_streams_what_decode_returns() {
        let compressed = encode(ObjectKind::Raw, &[7u8; 10_000], 3);
        let raw = encode(ObjectKind::Raw, b"abc", 3);
        for file in [&compressed, &raw] {
            let (header, hash) = content_hash(file).unwrap();
            let (decoded_header, content) = decode(file).unwrap();
            assert_eq!(header, decoded_header);
            assert_eq!(hash, blake3::hash(&content));
        }
        // A frame that inflates past the declared length, as a hostile file's would.
        let mut inflating = compressed.clone();
        inflating[8..16].copy_from_slice(&9_999u64.to_le_bytes());
        assert_eq!(content_hash(&inflating).unwrap_err(), EnvelopeError::LengthMismatch { declared: 9_999, actual: 10_000 });
        assert_eq!(content_hash(&compressed[..5]).unwrap_err(), EnvelopeError::TooShort { len: 5 });
    }

    #[test]
    fn empty_content_round_trips() {
        let file = encode(ObjectKind::Raw, b"", 3);
        assert_eq!(file.len(), HEADER_LEN);
        assert_eq!(decode(&file).unwrap().1, b"");
    }

    #[test]
    fn header_errors_by_kind() {
        let good = encode(ObjectKind::Raw, b"abc", 3);
        assert_eq!(decode(&good[..5]).unwrap_err(), EnvelopeError::TooShort { len: 5 });
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad).unwrap_err(), EnvelopeError::BadMagic);
        let mut bad = good.clone();
        bad[4] = 9;
        assert_eq!(decode(&bad).unwrap_err(), EnvelopeError::UnsupportedVersion(9));
        let mut bad = good.clone();
        bad[5] = 0;
        assert_eq!(decode(&bad).unwrap_err(), EnvelopeError::UnknownKind(0));
        let mut bad = good.clone();
        bad[6] = 5;
        assert_eq!(decode(&bad).unwrap_err(), EnvelopeError::UnknownCompression(5));
        let mut bad = good.clone();
        bad[8] = 4;
        assert_eq!(
            decode(&bad).unwrap_err(),
            EnvelopeError::LengthMismatch { declared: 4, actual: 3 }
        );
        let mut bad = good;
        bad[15] = 0xff;
        assert!(matches!(decode(&bad).unwrap_err(), EnvelopeError::ContentTooLarge { .. }));
    }

    #[test]
    fn huge_declared_length_is_not_allocated() {
        // A zstd body of 3 bytes whose header claims 32 GiB: found by the object_decoders
        // fuzz target, which ran out of memory when the claim sized the buffer.
        let mut file = encode_header(&EnvelopeHeader {
            kind: ObjectKind::Raw,
            compression: Compression::Zstd,
            content_len: 32 << 30,
        })
        .to_vec();
        file.extend_from_slice(&zstd::bulk::compress(b"abc", 3).unwrap());
        assert_eq!(decode(&file).unwrap_err(), EnvelopeError::LengthMismatch { declared: 32 << 30, actual: 3 });
    }

    proptest! {
        #[test]
        fn round_trip(content in proptest::collection::vec(any::<u8>(), 0..3000), zeros in 0usize..3000) {
            let mut content = content;
            content.extend(std::iter::repeat_n(0u8, zeros));
            let file = encode(ObjectKind::Raw, &content, 3);
            prop_assert_eq!(decode(&file).unwrap().1, content);
        }

        #[test]
        fn decode_never_panics(file in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&file);
        }
    }
}
