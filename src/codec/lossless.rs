//! Lossless delta codec for one tensor against a base tensor of the same shape and dtype.
//!
//! Checkout must be byte-identical, so the codec works on bit patterns: float subtraction does
//! not round-trip. Each [`Transform`] maps (base, target) to bytes that zstd compresses well and
//! that the base maps back exactly. The tensor is cut into chunks of about [`CHUNK_BYTES`] that
//! rayon compresses in parallel, and a chunk that zstd does not shrink is stored as it is.
//!
//! # Payload layout (version 1, integers little-endian)
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `WSLD` |
//! | 1 | version |
//! | 1 | transform code ([`Transform::code`]) |
//! | 1 | elem_size, 1 to 8 |
//! | 1 | reserved, 0 |
//! | 8 | element count (u64) |
//! | 4 | elements per chunk (u32) |
//! | 5 per chunk | coding (0 stored, 1 zstd frame with checksum) and body length (u32) |
//! | rest | chunk bodies in order |
//!
//! # Measured payload sizes
//!
//! Payload size in % of the raw target at zstd level 3, 8 Mi elements per tensor, from the
//! ignored test `tests::size_table`. Bases are N(0, 0.02) weights. The "10%" fine-tunes add
//! N(0, 0.002) and round to the dtype, and the "0.1%" ones add N(0, 2e-5). The int8 fine-tune
//! moves a third of the weights by one step, and "unrelated" is an independent N(0, 0.02) tensor.
//!
//! | data | zstd of target | Xor | XorPlanes | SubPlanes | OrderedSubPlanes | `encode` keeps |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | bf16, 10% delta | 77.99 | 63.60 | 57.62 | 58.08 | **53.22** | OrderedSubPlanes |
//! | f32, 0.1% delta | 92.67 | 69.28 | 58.77 | 62.43 | **56.27** | OrderedSubPlanes |
//! | f16, 10% delta | 91.87 | 80.11 | 74.59 | 72.90 | **72.48** | OrderedSubPlanes |
//! | f64, 0.1% delta | 95.75 | 84.80 | 74.13 | 76.96 | **72.73** | OrderedSubPlanes |
//! | bf16, 0.1% of entries changed | 77.98 | **0.25** | 0.28 | 0.32 | 0.26 | Xor |
//! | int8, +-1 on a third | 87.89 | 28.04 | 28.04 | **23.24** | 23.71 | SubPlanes |
//! | bf16, unrelated target | 77.99 | 80.32 | **73.41** | 74.19 | 75.96 | XorPlanes |
//!
//! Giving each byte plane its own zstd frame instead of one frame per chunk changed no size
//! by more than 0.01 points (bf16 57.62 either way, f32 58.77 vs 58.76), because zstd already
//! fits a separate Huffman table to each 128 KiB block, so the format keeps one frame per chunk.
//!
//! # Why `encode` picks per tensor, from a sample
//!
//! No single transform is best everywhere: OrderedSubPlanes wins on every float fine-tune
//! (7.6% smaller than XorPlanes on bf16) but loses to SubPlanes on int8 and to XorPlanes on an
//! unrelated target. Trying every transform on the whole tensor would cost five full encodes.
//! [`encode`] therefore compresses four windows that together hold `SAMPLE_BYTES` (1 MiB) with
//! each transform and encodes the tensor once with the winner. That adds about 5 MiB of
//! compression per tensor, 8% of a 64 MiB tensor's work, and it kept the best transform in every
//! row above. Tensors of at most 1 MiB are encoded with every transform and the smallest payload
//! is kept. [`encode_with`] skips the choice.
//!
//! NOTE: throughput is still unmeasured on an idle machine. `benches/lossless_delta.rs` on 2
//! cores shared with other builds (load average about 14) gave 64 MiB bf16 encode 870 ms
//! (`encode`) and 733 ms (`encode_with` OrderedSubPlanes), and decode 474 ms.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// zstd level used when the caller has no preference.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// First four bytes of every payload.
pub const MAGIC: [u8; 4] = *b"WSLD";

/// Payload layout version that [`encode`] writes and [`decode`] reads.
pub const FORMAT_VERSION: u8 = 1;

/// Target size of one independently compressed chunk, in bytes of tensor data.
///
/// Chunking depends only on this constant and the element size, never on the thread count, so the
/// payload is the same on every machine. A chunk contains `CHUNK_BYTES / elem_size` elements.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Largest chunk, in bytes of tensor data, that [`decode`] accepts from a payload header.
///
/// Bounds the per-thread scratch buffer that a malformed header could otherwise inflate.
const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// Fixed header: magic (4), version (1), transform (1), elem_size (1), reserved zero (1),
/// element count (u64 LE), elements per chunk (u32 LE).
const HEADER_LEN: usize = 20;

/// One chunk-table entry: coding (1) and body length in bytes (u32 LE).
const CHUNK_ENTRY_LEN: usize = 5;

/// Reversible map from (base, target) element bit patterns to the bytes handed to zstd.
///
/// Elements are read as little-endian unsigned integers of `elem_size` bytes, the byte order of
/// safetensors, so byte `elem_size - 1` contains a float's sign and top exponent bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transform {
    /// The target bytes as they are; ignores the base.
    Plain,
    /// `target ^ base` per byte, element bytes left interleaved.
    Xor,
    /// `target ^ base`, then split into byte planes: plane `j` contains byte `j` of every element.
    XorPlanes,
    /// `target - base` as wrapping `elem_size`-byte integers, then byte planes.
    SubPlanes,
    /// Both bit patterns mapped to integers that sort like the floats they encode, subtracted with
    /// wrapping, zigzag-coded so small negative differences become small positive ones, then byte
    /// planes. Bijective on every bit pattern, so it is lossless for integers and NaNs too.
    OrderedSubPlanes,
}

impl Transform {
    /// Every transform, in the order of their payload codes.
    pub const ALL: [Transform; 5] = [
        Transform::Plain,
        Transform::Xor,
        Transform::XorPlanes,
        Transform::SubPlanes,
        Transform::OrderedSubPlanes,
    ];

    /// Returns the byte that identifies this transform in a payload header.
    pub fn code(self) -> u8 {
        match self {
            Transform::Plain => 0,
            Transform::Xor => 1,
            Transform::XorPlanes => 2,
            Transform::SubPlanes => 3,
            Transform::OrderedSubPlanes => 4,
        }
    }

    /// Returns the transform with payload code `code`, or `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<Transform> {
        Transform::ALL.into_iter().find(|t| t.code() == code)
    }
}

/// Storage form of one chunk's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkCoding {
    /// Transformed bytes kept as they are, used when zstd would not make the chunk smaller.
    Stored,
    /// Transformed bytes as one zstd frame.
    Zstd,
}

impl ChunkCoding {
    fn code(self) -> u8 {
        match self {
            ChunkCoding::Stored => 0,
            ChunkCoding::Zstd => 1,
        }
    }

    fn from_code(code: u8) -> Option<ChunkCoding> {
        match code {
            0 => Some(ChunkCoding::Stored),
            1 => Some(ChunkCoding::Zstd),
            _ => None,
        }
    }
}

/// Header fields of a payload, as read by [`inspect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadInfo {
    /// Transform the encoder kept.
    pub transform: Transform,
    /// Bytes per element, 1 to 8.
    pub elem_size: usize,
    /// Number of elements in the tensor.
    pub element_count: u64,
    /// Elements per chunk; the last chunk may hold fewer.
    pub chunk_elems: u64,
    /// Number of chunks in the body.
    pub chunk_count: usize,
    /// Chunks kept uncompressed because zstd did not shrink them.
    pub stored_chunks: usize,
}

impl PayloadInfo {
    /// Returns the tensor size in bytes that the payload decodes to.
    pub fn tensor_len(&self) -> u64 {
        self.element_count.saturating_mul(self.elem_size as u64)
    }
}

/// Errors from [`encode`], [`decode`] and [`inspect`].
#[derive(Debug, thiserror::Error)]
pub enum LosslessError {
    #[error("invalid element size {elem_size}: expected 1 to 8 bytes")]
    InvalidElemSize { elem_size: usize },

    #[error("base is {base_len} bytes but target is {target_len} bytes: a delta needs two tensors of the same shape and dtype")]
    TargetLengthMismatch { base_len: usize, target_len: usize },

    #[error("tensor length {len} bytes is not a multiple of the element size {elem_size}: check the dtype passed to the codec")]
    UnalignedLength { len: usize, elem_size: usize },

    #[error("payload truncated: the {part} needs {needed} bytes but only {available} remain")]
    Truncated {
        part: &'static str,
        needed: usize,
        available: usize,
    },

    #[error(
        "invalid magic {found:02x?}: expected {MAGIC:02x?}, so this is not a wstore lossless delta"
    )]
    BadMagic { found: [u8; 4] },

    #[error("unsupported payload version {version}: this build reads version {FORMAT_VERSION}; upgrade wstore")]
    UnsupportedVersion { version: u8 },

    #[error("unknown transform code {code} in the payload header: the payload is corrupt or written by a newer wstore")]
    UnknownTransform { code: u8 },

    #[error("reserved header byte is {value}, expected 0: the payload is corrupt or written by a newer wstore")]
    ReservedByte { value: u8 },

    #[error("payload element size {elem_size} does not divide the base length {base_len} bytes: the delta was made against a tensor of another dtype")]
    ElemSizeMismatch { elem_size: usize, base_len: usize },

    #[error("payload describes {element_count} elements of {elem_size} bytes but the base is {base_len} bytes: the delta was made against another base tensor")]
    BaseLengthMismatch {
        element_count: u64,
        elem_size: usize,
        base_len: usize,
    },

    #[error("invalid chunk size {chunk_elems} elements of {elem_size} bytes in the payload header: expected 1 to {MAX_CHUNK_BYTES} bytes")]
    InvalidChunkSize { chunk_elems: u64, elem_size: usize },

    #[error("unknown coding {code} for chunk {chunk}: the payload is corrupt")]
    UnknownChunkCoding { chunk: usize, code: u8 },

    #[error(
        "chunk {chunk} decodes to {actual} bytes, expected {expected}: the payload is corrupt"
    )]
    ChunkLengthMismatch {
        chunk: usize,
        expected: usize,
        actual: usize,
    },

    #[error("payload has {extra} bytes after the last chunk: the payload is corrupt")]
    TrailingBytes { extra: usize },

    #[error("zstd failed to decompress chunk {chunk}: {message}; the payload is corrupt")]
    Decompress { chunk: usize, message: String },

    #[error("zstd failed to compress chunk {chunk} at level {level}: {message}")]
    Compress {
        chunk: usize,
        level: i32,
        message: String,
    },
}

/// Encodes `target` against `base` with the transform that compresses it best.
///
/// Tensors of at most 1 MiB are encoded with every transform and the smallest payload is kept.
/// Larger ones pick the transform from a 1 MiB sample (see the module docs), so the payload may
/// be slightly larger than the best of [`encode_with`] over all transforms.
///
/// `base` and `target` must have the same length, a multiple of `elem_size` (1 to 8 bytes).
/// Returns a self-describing payload that [`decode`] turns back into `target` given `base`.
pub fn encode(
    base: &[u8],
    target: &[u8],
    elem_size: usize,
    zstd_level: i32,
) -> Result<Vec<u8>, LosslessError> {
    check_inputs(base, target, elem_size)?;
    if target.len() <= SAMPLE_BYTES {
        return encode_smallest(base, target, elem_size, zstd_level);
    }
    let transform = choose_transform(base, target, elem_size, zstd_level)?;
    encode_with(base, target, elem_size, zstd_level, transform)
}

/// Encodes `target` against `base` with a fixed `transform`; see [`encode`] for the contract.
pub fn encode_with(
    base: &[u8],
    target: &[u8],
    elem_size: usize,
    zstd_level: i32,
    transform: Transform,
) -> Result<Vec<u8>, LosslessError> {
    check_inputs(base, target, elem_size)?;
    let chunk_elems = CHUNK_BYTES / elem_size;
    let chunk_bytes = chunk_elems * elem_size;
    let element_count = target.len() / elem_size;

    // Rayon's indexed collect keeps chunk order, so the output does not depend on scheduling.
    let chunks: Vec<EncodedChunk> = base
        .par_chunks(chunk_bytes)
        .zip(target.par_chunks(chunk_bytes))
        .enumerate()
        .map_init(
            ChunkEncoder::default,
            |encoder, (index, (base_chunk, target_chunk))| {
                encoder.encode(
                    index,
                    base_chunk,
                    target_chunk,
                    elem_size,
                    zstd_level,
                    transform,
                )
            },
        )
        .collect::<Result<_, _>>()?;

    let body_len: usize = chunks.iter().map(|c| c.body.len()).sum();
    let mut payload = Vec::with_capacity(HEADER_LEN + chunks.len() * CHUNK_ENTRY_LEN + body_len);
    payload.extend_from_slice(&MAGIC);
    payload.push(FORMAT_VERSION);
    payload.push(transform.code());
    payload.push(elem_size as u8);
    payload.push(0);
    payload.extend_from_slice(&(element_count as u64).to_le_bytes());
    payload.extend_from_slice(&(chunk_elems as u32).to_le_bytes());
    for chunk in &chunks {
        payload.push(chunk.coding.code());
        payload.extend_from_slice(&chunk.body_len_u32().to_le_bytes());
    }
    for chunk in &chunks {
        payload.extend_from_slice(&chunk.body);
    }
    Ok(payload)
}

/// Rebuilds the target tensor from `base` and a payload made by [`encode`].
///
/// Checks every header field, the chunk table and each chunk's decoded length against
/// `base.len()`, and returns an error, never a panic, on a malformed payload.
pub fn decode(base: &[u8], payload: &[u8]) -> Result<Vec<u8>, LosslessError> {
    let layout = parse(payload)?;
    let info = layout.info;
    if base.len() % info.elem_size != 0 {
        return Err(LosslessError::ElemSizeMismatch {
            elem_size: info.elem_size,
            base_len: base.len(),
        });
    }
    if info.tensor_len() != base.len() as u64
        || info
            .element_count
            .checked_mul(info.elem_size as u64)
            .is_none()
    {
        return Err(LosslessError::BaseLengthMismatch {
            element_count: info.element_count,
            elem_size: info.elem_size,
            base_len: base.len(),
        });
    }

    let mut target = vec![0u8; base.len()];
    if target.is_empty() {
        return Ok(target);
    }
    // parse() checked chunk_elems * elem_size against MAX_CHUNK_BYTES, so this fits in usize.
    let chunk_bytes = (info.chunk_elems as usize) * info.elem_size;
    target
        .par_chunks_mut(chunk_bytes)
        .zip(base.par_chunks(chunk_bytes))
        .zip(layout.chunks.par_iter())
        .enumerate()
        .try_for_each_init(Vec::new, |scratch, (index, ((out, base_chunk), entry))| {
            let body = payload
                .get(entry.body_start..entry.body_start + entry.body_len)
                .unwrap_or(&[]);
            decode_chunk(
                index,
                entry.coding,
                body,
                base_chunk,
                out,
                info.elem_size,
                info.transform,
                scratch,
            )
        })?;
    Ok(target)
}

/// Reads and checks the header and chunk table of a payload without decompressing it.
pub fn inspect(payload: &[u8]) -> Result<PayloadInfo, LosslessError> {
    parse(payload).map(|layout| layout.info)
}

/// Tensors up to this many bytes are encoded with every transform; larger ones are sampled.
const SAMPLE_BYTES: usize = 1 << 20;

/// Number of evenly spaced windows, together `SAMPLE_BYTES` long, that [`choose_transform`]
/// compresses. Several windows keep one unusual region (say, rows of an embedding that the
/// fine-tune never touched) from deciding for the whole tensor.
const SAMPLE_WINDOWS: usize = 4;

/// Encodes with every transform and returns the smallest payload; ties go to the earlier one
/// in [`Transform::ALL`].
fn encode_smallest(
    base: &[u8],
    target: &[u8],
    elem_size: usize,
    level: i32,
) -> Result<Vec<u8>, LosslessError> {
    let mut best = encode_with(base, target, elem_size, level, Transform::ALL[0])?;
    for transform in &Transform::ALL[1..] {
        let payload = encode_with(base, target, elem_size, level, *transform)?;
        if payload.len() < best.len() {
            best = payload;
        }
    }
    Ok(best)
}

/// Picks the transform whose output compresses smallest on `SAMPLE_WINDOWS` element-aligned
/// windows spread over the tensor, so the choice costs about `SAMPLE_BYTES` of extra
/// compression per transform, whatever the tensor size. Window positions depend only on the
/// tensor length, so the choice is deterministic.
fn choose_transform(
    base: &[u8],
    target: &[u8],
    elem_size: usize,
    level: i32,
) -> Result<Transform, LosslessError> {
    let window = (SAMPLE_BYTES / SAMPLE_WINDOWS / elem_size).max(1) * elem_size;
    let last_start = target.len().saturating_sub(window) / elem_size;
    let starts: Vec<usize> = (0..SAMPLE_WINDOWS)
        .map(|w| last_start * w / (SAMPLE_WINDOWS - 1) * elem_size)
        .collect();

    let trials: Vec<(Transform, usize)> = Transform::ALL
        .iter()
        .flat_map(|t| starts.iter().map(move |s| (*t, *s)))
        .collect();
    let sizes: Vec<usize> = trials
        .par_iter()
        .map_init(ChunkEncoder::default, |encoder, (transform, start)| {
            let end = (start + window).min(target.len());
            let chunk = encoder.encode(
                0,
                &base[*start..end],
                &target[*start..end],
                elem_size,
                level,
                *transform,
            )?;
            Ok(chunk.body.len())
        })
        .collect::<Result<_, LosslessError>>()?;

    let mut best = (Transform::ALL[0], usize::MAX);
    for (transform, sizes) in Transform::ALL.iter().zip(sizes.chunks(SAMPLE_WINDOWS)) {
        let total: usize = sizes.iter().sum();
        if total < best.1 {
            best = (*transform, total);
        }
    }
    Ok(best.0)
}

fn check_inputs(base: &[u8], target: &[u8], elem_size: usize) -> Result<(), LosslessError> {
    if !(1..=8).contains(&elem_size) {
        return Err(LosslessError::InvalidElemSize { elem_size });
    }
    if base.len() != target.len() {
        return Err(LosslessError::TargetLengthMismatch {
            base_len: base.len(),
            target_len: target.len(),
        });
    }
    if target.len() % elem_size != 0 {
        return Err(LosslessError::UnalignedLength {
            len: target.len(),
            elem_size,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Chunk encoding and decoding

struct EncodedChunk {
    coding: ChunkCoding,
    body: Vec<u8>,
}

impl EncodedChunk {
    fn body_len_u32(&self) -> u32 {
        // A body is at most zstd's compress bound of a CHUNK_BYTES chunk, far below u32::MAX.
        u32::try_from(self.body.len()).unwrap_or(u32::MAX)
    }
}

/// Per-thread buffers reused across the chunks one rayon worker encodes.
#[derive(Default)]
struct ChunkEncoder {
    transformed: Vec<u8>,
    compressed: Vec<u8>,
}

impl ChunkEncoder {
    fn encode(
        &mut self,
        index: usize,
        base: &[u8],
        target: &[u8],
        elem_size: usize,
        level: i32,
        transform: Transform,
    ) -> Result<EncodedChunk, LosslessError> {
        let delta: &[u8] = if transform == Transform::Plain {
            target
        } else {
            self.transformed.resize(target.len(), 0);
            forward(transform, elem_size, base, target, &mut self.transformed);
            &self.transformed
        };

        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(delta.len()));
        let compress_error = |e: std::io::Error| LosslessError::Compress {
            chunk: index,
            level,
            message: e.to_string(),
        };
        let mut compressor = zstd::bulk::Compressor::new(level).map_err(compress_error)?;
        // A 4-byte XXH64 checksum per frame turns a corrupted body into a decode error rather
        // than a silently wrong tensor.
        compressor
            .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
            .map_err(compress_error)?;
        compressor
            .compress_to_buffer(delta, &mut self.compressed)
            .map_err(compress_error)?;

        if self.compressed.len() < delta.len() {
            Ok(EncodedChunk {
                coding: ChunkCoding::Zstd,
                body: self.compressed.clone(),
            })
        } else {
            Ok(EncodedChunk {
                coding: ChunkCoding::Stored,
                body: delta.to_vec(),
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_chunk(
    index: usize,
    coding: ChunkCoding,
    body: &[u8],
    base: &[u8],
    out: &mut [u8],
    elem_size: usize,
    transform: Transform,
    scratch: &mut Vec<u8>,
) -> Result<(), LosslessError> {
    // Plain and Xor keep element order, so their delta bytes can land in `out` directly.
    let in_place = matches!(transform, Transform::Plain | Transform::Xor);
    if !in_place {
        scratch.resize(out.len(), 0);
    }
    let delta: &mut [u8] = if in_place {
        out
    } else {
        scratch.as_mut_slice()
    };

    match coding {
        ChunkCoding::Stored => {
            if body.len() != delta.len() {
                return Err(LosslessError::ChunkLengthMismatch {
                    chunk: index,
                    expected: delta.len(),
                    actual: body.len(),
                });
            }
            delta.copy_from_slice(body);
        }
        ChunkCoding::Zstd => {
            // The frame must fill the buffer exactly: zstd fails on a frame that would overflow
            // it, and the length check catches one that stops short.
            let written = zstd::bulk::decompress_to_buffer(body, delta).map_err(|e| {
                LosslessError::Decompress {
                    chunk: index,
                    message: e.to_string(),
                }
            })?;
            if written != delta.len() {
                return Err(LosslessError::ChunkLengthMismatch {
                    chunk: index,
                    expected: delta.len(),
                    actual: written,
                });
            }
        }
    }

    match transform {
        Transform::Plain => {}
        Transform::Xor => out.iter_mut().zip(base).for_each(|(o, b)| *o ^= b),
        _ => inverse(transform, elem_size, base, scratch, out),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Payload parsing

struct ChunkEntry {
    coding: ChunkCoding,
    body_start: usize,
    body_len: usize,
}

struct Layout {
    info: PayloadInfo,
    chunks: Vec<ChunkEntry>,
}

fn take<'a>(
    payload: &'a [u8],
    at: usize,
    len: usize,
    part: &'static str,
) -> Result<&'a [u8], LosslessError> {
    let available = payload.len().saturating_sub(at);
    payload
        .get(at..at.saturating_add(len))
        .ok_or(LosslessError::Truncated {
            part,
            needed: len,
            available,
        })
}

fn parse(payload: &[u8]) -> Result<Layout, LosslessError> {
    let magic = take(payload, 0, 4, "magic")?;
    let found: [u8; 4] = [magic[0], magic[1], magic[2], magic[3]];
    if found != MAGIC {
        return Err(LosslessError::BadMagic { found });
    }
    let header = take(payload, 0, HEADER_LEN, "header")?;
    let mut fields = [0u8; HEADER_LEN];
    fields.copy_from_slice(header);

    let version = fields[4];
    if version != FORMAT_VERSION {
        return Err(LosslessError::UnsupportedVersion { version });
    }
    let transform = Transform::from_code(fields[5])
        .ok_or(LosslessError::UnknownTransform { code: fields[5] })?;
    let elem_size = usize::from(fields[6]);
    if !(1..=8).contains(&elem_size) {
        return Err(LosslessError::InvalidElemSize { elem_size });
    }
    if fields[7] != 0 {
        return Err(LosslessError::ReservedByte { value: fields[7] });
    }
    let element_count = u64::from_le_bytes([
        fields[8], fields[9], fields[10], fields[11], fields[12], fields[13], fields[14],
        fields[15],
    ]);
    let chunk_elems = u64::from(u32::from_le_bytes([
        fields[16], fields[17], fields[18], fields[19],
    ]));
    if chunk_elems == 0 || chunk_elems * elem_size as u64 > MAX_CHUNK_BYTES {
        return Err(LosslessError::InvalidChunkSize {
            chunk_elems,
            elem_size,
        });
    }

    // Check that the table fits in the payload before allocating for it, so a forged element
    // count cannot trigger a huge allocation.
    let chunk_count_u64 = element_count.div_ceil(chunk_elems);
    let table_len = chunk_count_u64.saturating_mul(CHUNK_ENTRY_LEN as u64);
    let available = payload.len() - HEADER_LEN;
    if table_len > available as u64 {
        return Err(LosslessError::Truncated {
            part: "chunk table",
            needed: usize::try_from(table_len).unwrap_or(usize::MAX),
            available,
        });
    }
    let chunk_count = chunk_count_u64 as usize;
    let table = take(
        payload,
        HEADER_LEN,
        chunk_count * CHUNK_ENTRY_LEN,
        "chunk table",
    )?;

    let mut chunks = Vec::with_capacity(chunk_count);
    let mut body_start = HEADER_LEN + table.len();
    let mut stored_chunks = 0;
    for (index, entry) in table.chunks_exact(CHUNK_ENTRY_LEN).enumerate() {
        let coding = ChunkCoding::from_code(entry[0]).ok_or(LosslessError::UnknownChunkCoding {
            chunk: index,
            code: entry[0],
        })?;
        let body_len = u32::from_le_bytes([entry[1], entry[2], entry[3], entry[4]]) as usize;
        take(payload, body_start, body_len, "chunk body")?;
        if coding == ChunkCoding::Stored {
            stored_chunks += 1;
        }
        chunks.push(ChunkEntry {
            coding,
            body_start,
            body_len,
        });
        body_start += body_len;
    }
    if body_start != payload.len() {
        return Err(LosslessError::TrailingBytes {
            extra: payload.len() - body_start,
        });
    }

    let info = PayloadInfo {
        transform,
        elem_size,
        element_count,
        chunk_elems,
        chunk_count,
        stored_chunks,
    };
    Ok(Layout { info, chunks })
}

// ---------------------------------------------------------------------------------------------
// Transforms on element bit patterns

/// Writes the transformed bytes of one chunk into `out` (same length as `target`).
fn forward(transform: Transform, elem_size: usize, base: &[u8], target: &[u8], out: &mut [u8]) {
    match elem_size {
        1 => forward_w::<1>(transform, base, target, out),
        2 => forward_w::<2>(transform, base, target, out),
        3 => forward_w::<3>(transform, base, target, out),
        4 => forward_w::<4>(transform, base, target, out),
        5 => forward_w::<5>(transform, base, target, out),
        6 => forward_w::<6>(transform, base, target, out),
        7 => forward_w::<7>(transform, base, target, out),
        _ => forward_w::<8>(transform, base, target, out),
    }
}

/// Rebuilds one chunk of the target into `out` from its transformed bytes `delta` and the base.
fn inverse(transform: Transform, elem_size: usize, base: &[u8], delta: &[u8], out: &mut [u8]) {
    match elem_size {
        1 => inverse_w::<1>(transform, base, delta, out),
        2 => inverse_w::<2>(transform, base, delta, out),
        3 => inverse_w::<3>(transform, base, delta, out),
        4 => inverse_w::<4>(transform, base, delta, out),
        5 => inverse_w::<5>(transform, base, delta, out),
        6 => inverse_w::<6>(transform, base, delta, out),
        7 => inverse_w::<7>(transform, base, delta, out),
        _ => inverse_w::<8>(transform, base, delta, out),
    }
}

/// Bit mask of a `W`-byte integer held in a u64.
const fn mask<const W: usize>() -> u64 {
    if W >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * W)) - 1
    }
}

fn load<const W: usize>(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..W].copy_from_slice(&bytes[..W]);
    u64::from_le_bytes(word)
}

/// Maps a `W`-byte sign-magnitude pattern to an integer with the same order as the float it
/// encodes: negative values get all bits flipped, non-negative ones get the sign bit set.
fn to_ordered<const W: usize>(x: u64) -> u64 {
    let sign = 1u64 << (8 * W - 1);
    if x & sign != 0 {
        !x & mask::<W>()
    } else {
        x | sign
    }
}

fn from_ordered<const W: usize>(u: u64) -> u64 {
    let sign = 1u64 << (8 * W - 1);
    if u & sign != 0 {
        u & !sign
    } else {
        !u & mask::<W>()
    }
}

/// Zigzag-codes a `W`-byte two's-complement value: 0, -1, 1, -2 become 0, 1, 2, 3.
fn zigzag<const W: usize>(d: u64) -> u64 {
    let negative = (d >> (8 * W - 1)) & 1;
    ((d << 1) & mask::<W>()) ^ negative.wrapping_neg() & mask::<W>()
}

fn unzigzag<const W: usize>(z: u64) -> u64 {
    (z >> 1) ^ (z & 1).wrapping_neg() & mask::<W>()
}

fn forward_w<const W: usize>(transform: Transform, base: &[u8], target: &[u8], out: &mut [u8]) {
    match transform {
        Transform::Plain => out.copy_from_slice(target),
        Transform::Xor => out
            .iter_mut()
            .zip(base.iter().zip(target))
            .for_each(|(o, (b, t))| *o = b ^ t),
        Transform::XorPlanes => split_planes::<W>(base, target, out, |b, t| t ^ b),
        Transform::SubPlanes => {
            split_planes::<W>(base, target, out, |b, t| t.wrapping_sub(b) & mask::<W>())
        }
        Transform::OrderedSubPlanes => split_planes::<W>(base, target, out, |b, t| {
            zigzag::<W>(to_ordered::<W>(t).wrapping_sub(to_ordered::<W>(b)) & mask::<W>())
        }),
    }
}

fn inverse_w<const W: usize>(transform: Transform, base: &[u8], delta: &[u8], out: &mut [u8]) {
    match transform {
        Transform::Plain => out.copy_from_slice(delta),
        Transform::Xor => out
            .iter_mut()
            .zip(base.iter().zip(delta))
            .for_each(|(o, (b, d))| *o = b ^ d),
        Transform::XorPlanes => join_planes::<W>(base, delta, out, |b, d| b ^ d),
        Transform::SubPlanes => {
            join_planes::<W>(base, delta, out, |b, d| b.wrapping_add(d) & mask::<W>())
        }
        Transform::OrderedSubPlanes => join_planes::<W>(base, delta, out, |b, d| {
            from_ordered::<W>(to_ordered::<W>(b).wrapping_add(unzigzag::<W>(d)) & mask::<W>())
        }),
    }
}

/// Elements per block in the plane loops: the block's deltas sit in a stack array so that each
/// plane is written or read as one contiguous run.
const PLANE_BLOCK: usize = 256;

/// Writes `delta(base, target)` of every `W`-byte element into byte planes: byte `j` of element
/// `i` goes to `out[j * n + i]`, with `n` the element count.
fn split_planes<const W: usize>(
    base: &[u8],
    target: &[u8],
    out: &mut [u8],
    delta: impl Fn(u64, u64) -> u64,
) {
    let n = target.len() / W;
    if n == 0 {
        return;
    }
    let mut deltas = [0u64; PLANE_BLOCK];
    let block_bytes = PLANE_BLOCK * W;
    for (block, (b, t)) in base
        .chunks(block_bytes)
        .zip(target.chunks(block_bytes))
        .enumerate()
    {
        let start = block * PLANE_BLOCK;
        let len = t.len() / W;
        let elements = b.chunks_exact(W).zip(t.chunks_exact(W));
        for (d, (b, t)) in deltas.iter_mut().zip(elements) {
            *d = delta(load::<W>(b), load::<W>(t));
        }
        for (j, plane) in out.chunks_exact_mut(n).take(W).enumerate() {
            let run = &mut plane[start..start + len];
            for (byte, d) in run.iter_mut().zip(&deltas) {
                *byte = (d >> (8 * j)) as u8;
            }
        }
    }
}

/// Inverse of [`split_planes`]: gathers each element's delta from the planes and writes
/// `combine(base, delta)` into `out`.
fn join_planes<const W: usize>(
    base: &[u8],
    delta: &[u8],
    out: &mut [u8],
    combine: impl Fn(u64, u64) -> u64,
) {
    let n = out.len() / W;
    if n == 0 {
        return;
    }
    let mut deltas = [0u64; PLANE_BLOCK];
    let block_bytes = PLANE_BLOCK * W;
    for (block, (b, o)) in base
        .chunks(block_bytes)
        .zip(out.chunks_mut(block_bytes))
        .enumerate()
    {
        let start = block * PLANE_BLOCK;
        let len = o.len() / W;
        deltas.fill(0);
        for (j, plane) in delta.chunks_exact(n).take(W).enumerate() {
            let run = &plane[start..start + len];
            for (d, byte) in deltas.iter_mut().zip(run) {
                *d |= u64::from(*byte) << (8 * j);
            }
        }
        for (d, (b, o)) in deltas
            .iter()
            .zip(b.chunks_exact(W).zip(o.chunks_exact_mut(W)))
        {
            let t = combine(load::<W>(b), *d);
            o.copy_from_slice(&t.to_le_bytes()[..W]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Standard normal samples from a seeded ChaCha8 stream (Box-Muller), scaled by `std`.
    fn normals(count: usize, std: f64, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(count + 1);
        while out.len() < count {
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen::<f64>();
            let radius = (-2.0 * u1.ln()).sqrt() * std;
            let angle = 2.0 * std::f64::consts::PI * u2;
            out.push(radius * angle.cos());
            out.push(radius * angle.sin());
        }
        out.truncate(count);
        out
    }

    /// A named (base, target, elem_size) tensor pair for the size table.
    struct Case {
        name: &'static str,
        elem_size: usize,
        base: Vec<u8>,
        target: Vec<u8>,
    }

    fn bf16_bytes(values: impl Iterator<Item = f64>) -> Vec<u8> {
        values
            .flat_map(|v| half::bf16::from_f64(v).to_le_bytes())
            .collect()
    }

    fn bf16_values(bytes: &[u8]) -> Vec<f64> {
        bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect()
    }

    /// bf16 base of N(0, 0.02) weights and a fine-tune of base + N(0, 0.002), rounded to bf16.
    fn bf16_finetune(count: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let base = bf16_bytes(normals(count, 0.02, seed).into_iter());
        let noise = normals(count, 0.002, seed + 1);
        let target = bf16_bytes(
            bf16_values(&base)
                .into_iter()
                .zip(noise)
                .map(|(b, n)| b + n),
        );
        (base, target)
    }

    fn realistic_cases(count: usize) -> Vec<Case> {
        let (bf16_base, bf16_target) = bf16_finetune(count, 1);

        let f32_base: Vec<f32> = normals(count, 0.02, 3)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let f32_noise = normals(count, 0.02e-3, 4);
        let f32_target: Vec<f32> = f32_base
            .iter()
            .zip(f32_noise)
            .map(|(b, n)| (*b as f64 + n) as f32)
            .collect();

        let f16_base: Vec<half::f16> = normals(count, 0.02, 5)
            .into_iter()
            .map(half::f16::from_f64)
            .collect();
        let f16_noise = normals(count, 0.002, 6);
        let f16_target: Vec<half::f16> = f16_base
            .iter()
            .zip(f16_noise)
            .map(|(b, n)| half::f16::from_f64(b.to_f64() + n))
            .collect();

        let f64_base = normals(count, 0.02, 7);
        let f64_noise = normals(count, 0.02e-3, 8);
        let f64_target: Vec<f64> = f64_base.iter().zip(f64_noise).map(|(b, n)| b + n).collect();

        // One element in a thousand changed, the rest bit-identical to the base.
        let mut sparse_target = bf16_base.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..count / 1000 {
            let i = rng.gen_range(0..count);
            let moved = half::bf16::from_le_bytes([sparse_target[2 * i], sparse_target[2 * i + 1]])
                .to_f64()
                + 0.002;
            sparse_target[2 * i..2 * i + 2]
                .copy_from_slice(&half::bf16::from_f64(moved).to_le_bytes());
        }

        // int8 weights quantized from N(0, 30). The fine-tune moves a third of them by one step.
        let int8_base: Vec<u8> = normals(count, 30.0, 10)
            .into_iter()
            .map(|v| v.round().clamp(-127.0, 127.0) as i8 as u8)
            .collect();
        let int8_target: Vec<u8> = int8_base
            .iter()
            .map(|b| {
                let step: i8 = [-1, 0, 0, 0, 0, 1][rng.gen_range(0..6)];
                (*b as i8).saturating_add(step) as u8
            })
            .collect();

        // A target unrelated to its base, so the base gives a transform the least help.
        let unrelated = bf16_bytes(normals(count, 0.02, 11).into_iter());

        vec![
            Case {
                name: "bf16 fine-tune (10% delta)",
                elem_size: 2,
                base: bf16_base.clone(),
                target: bf16_target,
            },
            Case {
                name: "f32 fine-tune (0.1% delta)",
                elem_size: 4,
                base: f32_base.iter().flat_map(|v| v.to_le_bytes()).collect(),
                target: f32_target.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
            Case {
                name: "f16 fine-tune (10% delta)",
                elem_size: 2,
                base: f16_base.iter().flat_map(|v| v.to_le_bytes()).collect(),
                target: f16_target.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
            Case {
                name: "f64 fine-tune (0.1% delta)",
                elem_size: 8,
                base: f64_base.iter().flat_map(|v| v.to_le_bytes()).collect(),
                target: f64_target.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
            Case {
                name: "bf16 0.1% of entries changed",
                elem_size: 2,
                base: bf16_base.clone(),
                target: sparse_target,
            },
            Case {
                name: "int8 +-1 steps on 1/3",
                elem_size: 1,
                base: int8_base,
                target: int8_target,
            },
            Case {
                name: "bf16 unrelated target",
                elem_size: 2,
                base: bf16_base,
                target: unrelated,
            },
        ]
    }

    /// Size of XorPlanes with each byte plane of a chunk in its own zstd frame.
    fn xor_planes_split_frames(case: &Case, level: i32) -> usize {
        let chunk_bytes = CHUNK_BYTES / case.elem_size * case.elem_size;
        let mut total = HEADER_LEN;
        for (b, t) in case
            .base
            .chunks(chunk_bytes)
            .zip(case.target.chunks(chunk_bytes))
        {
            let mut planes = vec![0u8; t.len()];
            forward(Transform::XorPlanes, case.elem_size, b, t, &mut planes);
            for plane in planes.chunks(t.len() / case.elem_size) {
                total += CHUNK_ENTRY_LEN
                    + zstd::bulk::compress(plane, level)
                        .map(|c| c.len().min(plane.len()))
                        .unwrap_or(plane.len());
            }
        }
        total
    }

    /// Prints the compressed size of every alternative on the synthetic fine-tunes.
    /// Run with `cargo test --lib codec::lossless::tests::size_table -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement: prints the size table quoted in the module docs"]
    fn size_table() {
        let count: usize = std::env::var("WSTORE_TABLE_ELEMS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8 << 20);
        let level = DEFAULT_ZSTD_LEVEL;
        println!("{count} elements per tensor, zstd level {level}; size as % of the raw target, encode/decode MB/s of target bytes");
        for case in realistic_cases(count) {
            let raw = case.target.len();
            println!("\n{} ({} MiB)", case.name, raw >> 20);
            let plain_zstd = zstd::bulk::compress(&case.target, level)
                .map(|c| c.len())
                .unwrap_or(raw);
            println!(
                "  {:<28} {:>7.2}%",
                "zstd of target, one frame",
                100.0 * plain_zstd as f64 / raw as f64
            );
            for transform in Transform::ALL {
                let started = std::time::Instant::now();
                let payload =
                    encode_with(&case.base, &case.target, case.elem_size, level, transform)
                        .unwrap();
                let encode_secs = started.elapsed().as_secs_f64();
                let started = std::time::Instant::now();
                let decoded = decode(&case.base, &payload).unwrap();
                let decode_secs = started.elapsed().as_secs_f64();
                assert!(decoded == case.target, "{transform:?} round trip");
                println!(
                    "  {:<28} {:>7.2}%  enc {:>6.0} MB/s  dec {:>6.0} MB/s",
                    format!("{transform:?}"),
                    100.0 * payload.len() as f64 / raw as f64,
                    raw as f64 / encode_secs / 1e6,
                    raw as f64 / decode_secs / 1e6,
                );
            }
            let split = xor_planes_split_frames(&case, level);
            println!(
                "  {:<28} {:>7.2}%",
                "XorPlanes, frame per plane",
                100.0 * split as f64 / raw as f64
            );
            let started = std::time::Instant::now();
            let payload = encode(&case.base, &case.target, case.elem_size, level).unwrap();
            let encode_secs = started.elapsed().as_secs_f64();
            println!(
                "  {:<28} {:>7.2}%  enc {:>6.0} MB/s  kept {:?}",
                "encode() auto",
                100.0 * payload.len() as f64 / raw as f64,
                raw as f64 / encode_secs / 1e6,
                inspect(&payload).unwrap().transform,
            );
        }
    }

    /// Pseudo-random bytes from a seeded ChaCha8 stream.
    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = vec![0u8; len];
        rng.fill(bytes.as_mut_slice());
        bytes
    }

    /// Copies `base` with every seventh byte incremented by one.
    fn nudged(base: &[u8]) -> Vec<u8> {
        base.iter()
            .enumerate()
            .map(|(i, b)| if i % 7 == 3 { b.wrapping_add(1) } else { *b })
            .collect()
    }

    fn assert_round_trip(base: &[u8], target: &[u8], elem_size: usize) {
        for transform in Transform::ALL {
            let payload =
                encode_with(base, target, elem_size, DEFAULT_ZSTD_LEVEL, transform).unwrap();
            let decoded = decode(base, &payload).unwrap();
            assert!(
                decoded == target,
                "{transform:?}, elem_size {elem_size}, {} bytes",
                target.len()
            );
        }
        let payload = encode(base, target, elem_size, DEFAULT_ZSTD_LEVEL).unwrap();
        assert!(
            decode(base, &payload).unwrap() == target,
            "encode(), elem_size {elem_size}, {} bytes",
            target.len()
        );
    }

    /// Builds a valid payload of 3 bf16 elements (6 bytes) and its base, for corrupting one field.
    fn small_payload(transform: Transform) -> (Vec<u8>, Vec<u8>) {
        let base = vec![0x10, 0x3c, 0x20, 0xbc, 0x00, 0x00];
        let target = vec![0x11, 0x3c, 0x20, 0xbc, 0x80, 0x3f];
        let payload = encode_with(&base, &target, 2, DEFAULT_ZSTD_LEVEL, transform).unwrap();
        (base, payload)
    }

    /// Builds a payload of a compressible bf16 fine-tune whose single chunk is zstd-coded.
    fn zstd_payload() -> (Vec<u8>, Vec<u8>) {
        let (base, target) = bf16_finetune(4096, 21);
        let payload =
            encode_with(&base, &target, 2, DEFAULT_ZSTD_LEVEL, Transform::XorPlanes).unwrap();
        assert_eq!(inspect(&payload).unwrap().stored_chunks, 0);
        (base, payload)
    }

    #[test]
    fn round_trip_every_elem_size() {
        for elem_size in 1..=8 {
            for count in [0usize, 1, 2, 3, 255, 256, 257, 1001] {
                let base = random_bytes(count * elem_size, (elem_size * 1000 + count) as u64);
                let target = nudged(&base);
                assert_round_trip(&base, &target, elem_size);
                let unrelated = random_bytes(count * elem_size, 7);
                assert_round_trip(&base, &unrelated, elem_size);
            }
        }
    }

    #[test]
    fn round_trip_float_fine_tunes() {
        for case in realistic_cases(3001) {
            for transform in Transform::ALL {
                let payload = encode_with(
                    &case.base,
                    &case.target,
                    case.elem_size,
                    DEFAULT_ZSTD_LEVEL,
                    transform,
                )
                .unwrap();
                assert!(
                    decode(&case.base, &payload).unwrap() == case.target,
                    "{} with {transform:?}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn round_trip_special_floats() {
        let specials: [f32; 8] = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            -1e-45,
            f32::MAX,
        ];
        let base: Vec<u8> = specials.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut target: Vec<u8> = specials
            .iter()
            .rev()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        // A NaN with payload bits must come back bit for bit.
        target[0..4].copy_from_slice(&0x7fc0_1234u32.to_le_bytes());
        assert_round_trip(&base, &target, 4);
    }

    #[test]
    fn round_trip_spans_several_chunks() {
        // CHUNK_BYTES is not a multiple of 3, so this checks that chunks end on element
        // boundaries. The length leaves a short last chunk.
        let len = (2 * CHUNK_BYTES / 3 + 5) * 3;
        let base = random_bytes(len, 31);
        let target = nudged(&base);
        for transform in [Transform::Xor, Transform::OrderedSubPlanes] {
            let payload = encode_with(&base, &target, 3, DEFAULT_ZSTD_LEVEL, transform).unwrap();
            let info = inspect(&payload).unwrap();
            assert_eq!(info.chunk_elems, (CHUNK_BYTES / 3) as u64);
            assert_eq!(info.chunk_count, 3);
            assert!(decode(&base, &payload).unwrap() == target, "{transform:?}");
        }
    }

    #[test]
    fn empty_tensor_round_trip() {
        for elem_size in 1..=8 {
            let payload = encode(&[], &[], elem_size, DEFAULT_ZSTD_LEVEL).unwrap();
            assert_eq!(payload.len(), HEADER_LEN);
            assert_eq!(decode(&[], &payload).unwrap(), Vec::<u8>::new());
            let info = inspect(&payload).unwrap();
            assert_eq!(info.element_count, 0);
            assert_eq!(info.chunk_count, 0);
        }
    }

    #[test]
    fn inspect_reports_header_fields() {
        let (base, target) = bf16_finetune(1000, 41);
        let payload =
            encode_with(&base, &target, 2, DEFAULT_ZSTD_LEVEL, Transform::SubPlanes).unwrap();
        let info = inspect(&payload).unwrap();
        assert_eq!(info.transform, Transform::SubPlanes);
        assert_eq!(info.elem_size, 2);
        assert_eq!(info.element_count, 1000);
        assert_eq!(info.chunk_elems, (CHUNK_BYTES / 2) as u64);
        assert_eq!(info.chunk_count, 1);
        assert_eq!(info.stored_chunks, 0);
        assert_eq!(info.tensor_len(), 2000);
        assert_eq!(&payload[..4], b"WSLD");
        assert_eq!(payload[4], FORMAT_VERSION);
    }

    #[test]
    fn transform_codes_round_trip() {
        for (code, transform) in Transform::ALL.iter().enumerate() {
            assert_eq!(transform.code(), code as u8);
            assert_eq!(Transform::from_code(code as u8), Some(*transform));
        }
        assert_eq!(Transform::from_code(5), None);
    }

    #[test]
    fn unchanged_tensor_compresses_to_almost_nothing() {
        let (base, _) = bf16_finetune(1 << 20, 51);
        let payload = encode(&base, &base, 2, DEFAULT_ZSTD_LEVEL).unwrap();
        assert!(
            payload.len() < 200,
            "{} bytes for 2 MiB of zero delta",
            payload.len()
        );
        assert!(decode(&base, &payload).unwrap() == base);
    }

    #[test]
    fn incompressible_chunk_is_stored() {
        let base = random_bytes(10_000, 61);
        let target = random_bytes(10_000, 62);
        let payload = encode_with(&base, &target, 4, DEFAULT_ZSTD_LEVEL, Transform::Plain).unwrap();
        let info = inspect(&payload).unwrap();
        assert_eq!(info.stored_chunks, 1);
        assert_eq!(payload.len(), HEADER_LEN + CHUNK_ENTRY_LEN + 10_000);
        assert!(decode(&base, &payload).unwrap() == target);
    }

    #[test]
    fn encode_picks_a_base_transform_for_fine_tunes() {
        // Above SAMPLE_BYTES, so the choice comes from the sampled windows.
        let (base, target) = bf16_finetune(1 << 20, 71);
        let payload = encode(&base, &target, 2, DEFAULT_ZSTD_LEVEL).unwrap();
        assert_eq!(
            inspect(&payload).unwrap().transform,
            Transform::OrderedSubPlanes
        );
        let plain = encode_with(&base, &target, 2, DEFAULT_ZSTD_LEVEL, Transform::Plain).unwrap();
        assert!(
            payload.len() < plain.len() * 3 / 4,
            "{} vs plain {}",
            payload.len(),
            plain.len()
        );
    }

    #[test]
    fn encode_small_tensor_keeps_smallest() {
        let (base, target) = bf16_finetune(5000, 81);
        let payload = encode(&base, &target, 2, DEFAULT_ZSTD_LEVEL).unwrap();
        let smallest = Transform::ALL
            .iter()
            .map(|t| {
                encode_with(&base, &target, 2, DEFAULT_ZSTD_LEVEL, *t)
                    .unwrap()
                    .len()
            })
            .min()
            .unwrap();
        assert_eq!(payload.len(), smallest);
    }

    #[test]
    fn encode_rejects_invalid_inputs() {
        let four = [0u8; 4];
        let err = encode(&four, &four, 0, DEFAULT_ZSTD_LEVEL).unwrap_err();
        assert!(
            matches!(err, LosslessError::InvalidElemSize { elem_size: 0 }),
            "{err:?}"
        );
        let err = encode(&four, &four, 9, DEFAULT_ZSTD_LEVEL).unwrap_err();
        assert!(
            matches!(err, LosslessError::InvalidElemSize { elem_size: 9 }),
            "{err:?}"
        );
        let err = encode(&four, &[0u8; 6], 2, DEFAULT_ZSTD_LEVEL).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::TargetLengthMismatch {
                    base_len: 4,
                    target_len: 6
                }
            ),
            "{err:?}"
        );
        let err = encode(&[0u8; 6], &[0u8; 6], 4, DEFAULT_ZSTD_LEVEL).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::UnalignedLength {
                    len: 6,
                    elem_size: 4
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_truncated_payload() {
        let (base, payload) = zstd_payload();
        for cut in [0, 3, 4, 10, HEADER_LEN, HEADER_LEN + 2, payload.len() - 1] {
            let err = decode(&base, &payload[..cut]).unwrap_err();
            assert!(
                matches!(err, LosslessError::Truncated { .. }),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn decode_rejects_bad_magic() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload[0] = b'X';
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::BadMagic {
                    found: [b'X', b'S', b'L', b'D']
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_unknown_version() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload[4] = FORMAT_VERSION + 1;
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(err, LosslessError::UnsupportedVersion { version } if version == FORMAT_VERSION + 1),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_unknown_transform() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload[5] = 200;
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(err, LosslessError::UnknownTransform { code: 200 }),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_reserved_byte() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload[7] = 1;
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(err, LosslessError::ReservedByte { value: 1 }),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_elem_size_mismatch() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload[6] = 4;
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::ElemSizeMismatch {
                    elem_size: 4,
                    base_len: 6
                }
            ),
            "{err:?}"
        );
        payload[6] = 0;
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(err, LosslessError::InvalidElemSize { elem_size: 0 }),
            "{err:?}"
        );
        payload[6] = 9;
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(err, LosslessError::InvalidElemSize { elem_size: 9 }),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_base_length_mismatch() {
        let (base, payload) = small_payload(Transform::XorPlanes);
        let longer = [base.as_slice(), &[0, 0]].concat();
        let err = decode(&longer, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::BaseLengthMismatch {
                    element_count: 3,
                    elem_size: 2,
                    base_len: 8
                }
            ),
            "{err:?}"
        );
        let err = decode(&[], &payload).unwrap_err();
        assert!(
            matches!(err, LosslessError::BaseLengthMismatch { base_len: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_forged_element_count() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::Truncated {
                    part: "chunk table",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_invalid_chunk_size() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload[16..20].copy_from_slice(&0u32.to_le_bytes());
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::InvalidChunkSize {
                    chunk_elems: 0,
                    elem_size: 2
                }
            ),
            "{err:?}"
        );
        payload[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::InvalidChunkSize {
                    chunk_elems: 0xffff_ffff,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_unknown_chunk_coding() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload[HEADER_LEN] = 7;
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(err, LosslessError::UnknownChunkCoding { chunk: 0, code: 7 }),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        payload.extend_from_slice(&[0, 0, 0]);
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(err, LosslessError::TrailingBytes { extra: 3 }),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_stored_chunk_of_wrong_length() {
        let (base, mut payload) = small_payload(Transform::XorPlanes);
        // Six delta bytes do not compress, so the chunk is stored. Shorten it by one byte.
        assert_eq!(payload[HEADER_LEN], ChunkCoding::Stored.code());
        payload[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&5u32.to_le_bytes());
        payload.pop();
        let err = decode(&base, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                LosslessError::ChunkLengthMismatch {
                    chunk: 0,
                    expected: 6,
                    actual: 5
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn decode_rejects_corrupted_zstd_body() {
        let (base, payload) = zstd_payload();
        let body_start = HEADER_LEN + CHUNK_ENTRY_LEN;

        let mut bad_frame_magic = payload.clone();
        bad_frame_magic[body_start] ^= 0xff;
        let err = decode(&base, &bad_frame_magic).unwrap_err();
        assert!(
            matches!(err, LosslessError::Decompress { chunk: 0, .. }),
            "{err:?}"
        );

        // Flipping any single byte after the frame header must fail: the frame checksum
        // catches changes the entropy decoder accepts.
        for offset in (body_start + 6..payload.len()).step_by(97) {
            let mut corrupted = payload.clone();
            corrupted[offset] ^= 0x01;
            let result = decode(&base, &corrupted);
            assert!(
                matches!(
                    result,
                    Err(LosslessError::Decompress { .. })
                        | Err(LosslessError::ChunkLengthMismatch { .. })
                ),
                "offset {offset}: {result:?}"
            );
        }
    }

    #[test]
    fn errors_name_the_value() {
        let err = LosslessError::BaseLengthMismatch {
            element_count: 3,
            elem_size: 2,
            base_len: 8,
        };
        assert_eq!(
            err.to_string(),
            "payload describes 3 elements of 2 bytes but the base is 8 bytes: the delta was made against another base tensor"
        );
    }

    #[test]
    fn encode_is_deterministic_across_thread_counts() {
        // Three chunks of bf16, so several workers share the job.
        let (base, target) = bf16_finetune(5 << 20, 91);
        let default_pool = encode(&base, &target, 2, DEFAULT_ZSTD_LEVEL).unwrap();
        let again = encode(&base, &target, 2, DEFAULT_ZSTD_LEVEL).unwrap();
        assert!(default_pool == again, "two runs differ");
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let payload = pool.install(|| encode(&base, &target, 2, DEFAULT_ZSTD_LEVEL).unwrap());
            assert!(
                payload == default_pool,
                "{threads}-thread pool differs from the default pool"
            );
        }
        assert_eq!(inspect(&default_pool).unwrap().chunk_count, 3);
        assert!(decode(&base, &default_pool).unwrap() == target);
    }

    /// (elem_size, base, target) with a target that is either related to the base or random.
    fn tensor_pair() -> impl Strategy<Value = (usize, Vec<u8>, Vec<u8>)> {
        (1usize..=8, 0usize..300, any::<bool>()).prop_flat_map(|(elem_size, count, related)| {
            let len = elem_size * count;
            (
                Just(elem_size),
                proptest::collection::vec(any::<u8>(), len),
                proptest::collection::vec(any::<u8>(), len),
                proptest::collection::vec(any::<bool>(), len),
            )
                .prop_map(move |(elem_size, base, noise, keep)| {
                    let target = if related {
                        base.iter()
                            .zip(&noise)
                            .zip(&keep)
                            .map(|((b, n), k)| if *k { *b } else { *n })
                            .collect()
                    } else {
                        noise
                    };
                    (elem_size, base, target)
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn prop_round_trip((elem_size, base, target) in tensor_pair(), transform_index in 0usize..5) {
            let transform = Transform::ALL[transform_index];
            let payload = encode_with(&base, &target, elem_size, DEFAULT_ZSTD_LEVEL, transform).unwrap();
            prop_assert_eq!(decode(&base, &payload).unwrap(), target.clone());
            let payload = encode(&base, &target, elem_size, DEFAULT_ZSTD_LEVEL).unwrap();
            prop_assert_eq!(decode(&base, &payload).unwrap(), target);
        }

        #[test]
        fn prop_decode_never_panics_on_arbitrary_bytes(payload in proptest::collection::vec(any::<u8>(), 0..200), base_len in 0usize..64) {
            let base = vec![0u8; base_len];
            let _ = decode(&base, &payload);
            let _ = inspect(&payload);
        }

        #[test]
        fn prop_decode_never_panics_on_mutated_payload(
            (elem_size, base, target) in tensor_pair(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut payload = encode(&base, &target, elem_size, DEFAULT_ZSTD_LEVEL).unwrap();
            for (position, value) in flips {
                let index = position % payload.len();
                payload[index] = value;
            }
            if let Ok(decoded) = decode(&base, &payload) {
                prop_assert_eq!(decoded.len(), base.len());
            }
        }
    }
}
