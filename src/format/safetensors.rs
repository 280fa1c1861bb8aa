//! Strict parser and writer for the safetensors header.
//!
//! A safetensors file is an 8-byte little-endian `u64` header length N, then N bytes of UTF-8
//! JSON (an object, optionally padded at the end with spaces 0x20), then the data section. Each
//! JSON key other than `__metadata__` names a tensor and maps to
//! `{"dtype": STR, "shape": [u64, ...], "data_offsets": [start, end]}`, with offsets relative to
//! the start of the data section (file offset 8 + N). `__metadata__` is an optional object of
//! string values.
//!
//! The parser rejects everything the format does not allow, including what serde_json or the
//! reference loader would silently accept: duplicate keys, unknown fields, leading whitespace,
//! padding other than spaces, and data sections with gaps, overlaps or trailing bytes. It does no
//! file I/O, so the caller passes the whole file (usually an mmap) and adds the path to errors.

use std::collections::HashSet;
use std::fmt;

/// Maximum header length N in bytes: 100 MB, the same cap as the reference loader (safetensors
/// 0.4.5, `MAX_HEADER_SIZE = 100_000_000`).
///
/// A header that large describes millions of tensors, far more than any checkpoint has. The cap
/// bounds the memory a corrupt or hostile length prefix can make the parser read and allocate.
/// It equals the reference value rather than 100 MiB so that every header this parser accepts
/// is also loadable by the reference implementation.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Size of the little-endian `u64` header length prefix, in bytes.
const PREFIX_LEN: u64 = 8;

/// Reserved JSON key of the optional string-to-string metadata object.
const METADATA_KEY: &str = "__metadata__";

/// Maximum number of characters of an unexpected JSON string quoted in an error message.
const QUOTE_MAX_CHARS: usize = 64;

/// Element type of a tensor, spelled in files as the safetensors format spells it (`"F8_E4M3"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    /// 8-bit exponent-only scale format of the OCP microscaling (MX) spec.
    F8E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
    /// Complex number made of two `F32` values.
    C64,
    /// 4-bit float (E2M1), packed two elements to a byte.
    F4,
    /// 6-bit float with 2 exponent and 3 mantissa bits.
    F6E2M3,
    /// 6-bit float with 3 exponent and 2 mantissa bits.
    F6E3M2,
    /// Any dtype string this crate does not know. Its bytes are kept but not interpreted.
    Other(String),
}

impl Dtype {
    /// Every dtype with a known element size, in declaration order.
    pub const KNOWN: [Dtype; 20] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::F8E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
        Dtype::C64,
        Dtype::F4,
        Dtype::F6E2M3,
        Dtype::F6E3M2,
    ];

    /// Parses a dtype string as written in a safetensors header. The match is case-sensitive,
    /// and any text that is not a known spelling becomes `Other(text)`.
    pub fn parse(text: &str) -> Dtype {
        match text {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E8M0" => Dtype::F8E8M0,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            "C64" => Dtype::C64,
            "F4" => Dtype::F4,
            "F6_E2M3" => Dtype::F6E2M3,
            "F6_E3M2" => Dtype::F6E3M2,
            other => Dtype::Other(other.to_owned()),
        }
    }

    /// Returns the exact safetensors spelling, or the stored text for `Other`.
    pub fn as_str(&self) -> &str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::C64 => "C64",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
            Dtype::Other(text) => text,
        }
    }

    /// Returns the bits per element, or `None` for `Other`, whose bytes are opaque.
    /// `Bool` takes a whole byte per element, as in the format.
    pub fn bits(&self) -> Option<u64> {
        match self {
            Dtype::F4 => Some(4),
            Dtype::F6E2M3 | Dtype::F6E3M2 => Some(6),
            Dtype::Bool | Dtype::U8 | Dtype::I8 => Some(8),
            Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F8E8M0 => Some(8),
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => Some(16),
            Dtype::I32 | Dtype::U32 | Dtype::F32 => Some(32),
            Dtype::F64 | Dtype::I64 | Dtype::U64 | Dtype::C64 => Some(64),
            Dtype::Other(_) => None,
        }
    }

    /// Tells whether elements are real floating-point numbers. `C64` is complex and returns
    /// false, as `torch.is_floating_point` does for complex dtypes.
    pub fn is_float(&self) -> bool {
        matches!(
            self,
            Dtype::F8E4M3
                | Dtype::F8E5M2
                | Dtype::F8E8M0
                | Dtype::F16
                | Dtype::BF16
                | Dtype::F32
                | Dtype::F64
                | Dtype::F4
                | Dtype::F6E2M3
                | Dtype::F6E3M2
        )
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor entry of a header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// First byte, relative to the data section start.
    pub start: u64,
    /// One past the last byte, relative to the data section start.
    pub end: u64,
}

impl TensorInfo {
    /// Returns the byte length of the tensor's range, or 0 if `start > end` (never true in a
    /// parsed header).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Tells whether the tensor's byte range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the element count (1 for a scalar, shape `[]`), or `None` if it overflows `u64`.
    /// A shape containing 0 has 0 elements even when its other dimensions multiply past
    /// `u64::MAX`. Never `None` for a tensor of a parsed header.
    pub fn numel(&self) -> Option<u64> {
        element_count(&self.shape)
    }
}

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// N: the JSON length in bytes, padding included.
    pub header_len: u64,
    /// Tensors in the JSON key order of the file.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` entries in file order, or `None` if the key is absent.
    pub metadata: Option<Vec<(String, String)>>,
}

impl Header {
    /// Returns the file offset of the data section: 8 + N.
    pub fn data_start(&self) -> u64 {
        PREFIX_LEN.saturating_add(self.header_len)
    }

    /// Returns the sum of tensor byte lengths, which equals the data section length in a parsed
    /// header.
    pub fn data_len(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |sum, tensor| sum.saturating_add(tensor.len()))
    }

    /// Returns the tensors sorted by `(start, end)`, the order their bytes appear in the file.
    /// The sort is stable, so tensors with equal ranges (only empty ones in a parsed header)
    /// keep their JSON key order.
    pub fn by_offset(&self) -> Vec<&TensorInfo> {
        let mut tensors: Vec<&TensorInfo> = self.tensors.iter().collect();
        tensors.sort_by_key(|tensor| (tensor.start, tensor.end));
        tensors
    }
}

/// A header that fails to parse or validate, or a tensor list that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error(
        "file is {len} bytes, shorter than the 8-byte header length prefix of a safetensors file"
    )]
    FileTooShort { len: u64 },

    #[error("header length {header_len} exceeds the maximum of {max} bytes; the file is corrupt or not a safetensors file")]
    HeaderTooLarge { header_len: u64, max: u64 },

    #[error("header length {header_len} runs past the end of the {file_len}-byte file; the file is truncated or not a safetensors file")]
    HeaderBeyondFile { header_len: u64, file_len: u64 },

    #[error("header object is {len} bytes, but its length prefix says 8 + {header_len}; the stored header is corrupt")]
    HeaderObjectLength { header_len: u64, len: u64 },

    #[error("header is not valid UTF-8 at file offset {offset}")]
    HeaderNotUtf8 { offset: u64 },

    #[error(
        "header starts with {first:?} instead of '{{'; a safetensors header must be a JSON object"
    )]
    HeaderNotObject { first: char },

    #[error("header is not valid JSON: {reason}")]
    HeaderNotJson { reason: String },

    #[error("header has byte {byte:#04x} at file offset {offset} after its JSON object; only spaces (0x20) may pad the header")]
    HeaderPadding { offset: u64, byte: u8 },

    #[error("tensor name {name:?} appears more than once in the header")]
    DuplicateTensorName { name: String },

    #[error("key \"__metadata__\" appears more than once in the header")]
    DuplicateMetadata,

    #[error("metadata key {key:?} appears more than once")]
    DuplicateMetadataKey { key: String },

    #[error("__metadata__ is {found}, expected an object of string values")]
    MetadataNotObject { found: String },

    #[error("metadata value of key {key:?} is {found}, expected a string")]
    MetadataValueNotString { key: String, found: String },

    #[error("entry of tensor {tensor:?} is {found}, expected an object with dtype, shape and data_offsets")]
    TensorNotObject { tensor: String, found: String },

    #[error("tensor {tensor:?} is missing field {field:?}")]
    MissingField { tensor: String, field: &'static str },

    #[error("tensor {tensor:?} has field {field:?} more than once")]
    DuplicateField { tensor: String, field: String },

    #[error("tensor {tensor:?} has unknown field {field:?}; only dtype, shape and data_offsets are allowed")]
    UnknownField { tensor: String, field: String },

    #[error("field {field:?} of tensor {tensor:?} is {found}, expected {expected}")]
    InvalidField {
        tensor: String,
        field: &'static str,
        expected: &'static str,
        found: String,
    },

    #[error(
        "tensor {tensor:?} of dtype {dtype} and shape {shape:?} has a byte size that overflows u64"
    )]
    SizeOverflow {
        tensor: String,
        dtype: String,
        shape: Vec<u64>,
    },

    #[error("tensor {tensor:?} has data_offsets [{start}, {end}] whose start is after its end")]
    StartAfterEnd {
        tensor: String,
        start: u64,
        end: u64,
    },

    #[error("tensor {tensor:?} of dtype {dtype} and shape {shape:?} takes {expected} bytes, but its data_offsets [{start}, {end}] span {} bytes", .end.saturating_sub(*.start))]
    LengthMismatch {
        tensor: String,
        dtype: String,
        shape: Vec<u64>,
        expected: u64,
        start: u64,
        end: u64,
    },

    #[error("tensor {tensor:?} starts at data offset {start}, leaving bytes {expected}..{start} of the data section unclaimed; tensors must cover it from offset 0 without gaps")]
    OffsetGap {
        tensor: String,
        start: u64,
        expected: u64,
    },

    #[error("tensor {tensor:?} starts at data offset {start}, inside tensor {previous:?}, which ends at {expected}")]
    OffsetOverlap {
        tensor: String,
        start: u64,
        previous: String,
        expected: u64,
    },

    #[error("data section is {data_len} bytes, but the tensors end at data offset {tensors_end}")]
    DataLengthMismatch { data_len: u64, tensors_end: u64 },

    #[error("tensor name \"__metadata__\" is reserved for the metadata object; rename the tensor")]
    ReservedTensorName,

    #[error("tensor {tensor:?} has dtype {dtype:?}, whose element size is unknown, so its byte length cannot be computed")]
    UnsizedDtype { tensor: String, dtype: String },

    #[error("data section overflows u64 at tensor {tensor:?}")]
    DataOverflow { tensor: String },
}

/// Parses and validates the header of a whole safetensors file held in memory (usually an mmap).
///
/// On success the tensors tile the data section exactly. Sorted by offset, the first starts at
/// 0, each starts where the previous ends, and the last ends at `file.len() - 8 - N`. Every
/// byte range has the length its shape and dtype need, rounded up to whole bytes for sub-byte
/// dtypes, except for `Dtype::Other`, whose length is not checked.
pub fn parse(file: &[u8]) -> Result<Header, SafetensorsError> {
    let (header_len, raw) = read_header_json(file)?;
    let data_len = file.len() as u64 - PREFIX_LEN - header_len;
    validate(raw, header_len, data_len)
}

/// Parses and validates a header kept apart from its data section (a stored header object):
/// `header` is exactly the first 8 + N bytes of the file and `data_len` the length in bytes of
/// the data section that follows. Checks what `parse` checks.
pub fn parse_header(header: &[u8], data_len: u64) -> Result<Header, SafetensorsError> {
    let (header_len, raw) = read_header_json(header)?;
    let expected = PREFIX_LEN + header_len;
    if header.len() as u64 != expected {
        return Err(SafetensorsError::HeaderObjectLength { header_len, len: header.len() as u64 });
    }
    validate(raw, header_len, data_len)
}

/// Reads the length prefix and the JSON object after it from the start of `file`, which must
/// hold at least 8 + N bytes. Returns N and the unvalidated entries.
fn read_header_json(file: &[u8]) -> Result<(u64, json::RawHeader), SafetensorsError> {
    let file_len = file.len() as u64;
    let prefix: [u8; 8] = file
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(SafetensorsError::FileTooShort { len: file_len })?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge {
            header_len,
            max: MAX_HEADER_LEN,
        });
    }

    // header_len <= MAX_HEADER_LEN, so the sum cannot overflow and fits a 32-bit usize.
    let json_bytes = usize::try_from(PREFIX_LEN + header_len)
        .ok()
        .and_then(|data_start| file.get(8..data_start))
        .ok_or(SafetensorsError::HeaderBeyondFile {
            header_len,
            file_len,
        })?;
    let json = std::str::from_utf8(json_bytes).map_err(|err| SafetensorsError::HeaderNotUtf8 {
        offset: PREFIX_LEN + err.valid_up_to() as u64,
    })?;

    Ok((header_len, json::parse_object(json)?))
}

/// Serializes a header for tensors laid out in the given order (offsets recomputed
/// contiguously from 0), padded with spaces to a multiple of 8 bytes as the reference writer
/// does. Returns the 8 + N header bytes and the tensors with their offsets.
///
/// `__metadata__` is written first, then the tensors in the given order. Fails on duplicate or
/// reserved tensor names, duplicate metadata keys, `Dtype::Other` (its byte length is unknown)
/// and sizes that overflow `u64`.
pub fn write_header(
    tensors: &[(String, Dtype, Vec<u64>)],
    metadata: Option<&[(String, String)]>,
) -> Result<(Vec<u8>, Vec<TensorInfo>), SafetensorsError> {
    let infos = lay_out(tensors)?;

    let mut json = String::from("{");
    if let Some(entries) = metadata {
        push_metadata(&mut json, entries)?;
        if !infos.is_empty() {
            json.push(',');
        }
    }
    for (index, info) in infos.iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        push_tensor(&mut json, info);
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }

    let header_len = json.len() as u64;
    if header_len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge {
            header_len,
            max: MAX_HEADER_LEN,
        });
    }
    let mut bytes = Vec::with_capacity(json.len() + 8);
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    Ok((bytes, infos))
}

/// Assigns contiguous offsets from 0 to the tensors in the given order.
fn lay_out(tensors: &[(String, Dtype, Vec<u64>)]) -> Result<Vec<TensorInfo>, SafetensorsError> {
    let mut names = HashSet::with_capacity(tensors.len());
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        if name == METADATA_KEY {
            return Err(SafetensorsError::ReservedTensorName);
        }
        if !names.insert(name.as_str()) {
            return Err(SafetensorsError::DuplicateTensorName { name: name.clone() });
        }
        let len =
            byte_length(name, dtype, shape)?.ok_or_else(|| SafetensorsError::UnsizedDtype {
                tensor: name.clone(),
                dtype: dtype.as_str().to_owned(),
            })?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| SafetensorsError::DataOverflow {
                tensor: name.clone(),
            })?;
        infos.push(TensorInfo {
            name: name.clone(),
            dtype: dtype.clone(),
            shape: shape.clone(),
            start: offset,
            end,
        });
        offset = end;
    }
    Ok(infos)
}

fn push_metadata(json: &mut String, entries: &[(String, String)]) -> Result<(), SafetensorsError> {
    let mut keys = HashSet::with_capacity(entries.len());
    push_json_string(json, METADATA_KEY);
    json.push_str(":{");
    for (index, (key, value)) in entries.iter().enumerate() {
        if !keys.insert(key.as_str()) {
            return Err(SafetensorsError::DuplicateMetadataKey { key: key.clone() });
        }
        if index > 0 {
            json.push(',');
        }
        push_json_string(json, key);
        json.push(':');
        push_json_string(json, value);
    }
    json.push('}');
    Ok(())
}

fn push_tensor(json: &mut String, info: &TensorInfo) {
    push_json_string(json, &info.name);
    json.push_str(":{\"dtype\":");
    push_json_string(json, info.dtype.as_str());
    json.push_str(",\"shape\":[");
    for (index, dim) in info.shape.iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        json.push_str(&dim.to_string());
    }
    json.push_str("],\"data_offsets\":[");
    json.push_str(&info.start.to_string());
    json.push(',');
    json.push_str(&info.end.to_string());
    json.push_str("]}");
}

/// Appends `text` as a quoted, escaped JSON string.
fn push_json_string(json: &mut String, text: &str) {
    // Display of a serde_json Value is infallible, unlike serde_json::to_string.
    json.push_str(&serde_json::Value::from(text).to_string());
}

/// Returns the element count of `shape`, or `None` if it overflows `u64`.
fn element_count(shape: &[u64]) -> Option<u64> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape
        .iter()
        .try_fold(1u64, |count, &dim| count.checked_mul(dim))
}

/// Returns the bytes a tensor of `dtype` and `shape` takes, rounded up to whole bytes for
/// sub-byte dtypes, or `None` for `Dtype::Other`.
fn byte_length(name: &str, dtype: &Dtype, shape: &[u64]) -> Result<Option<u64>, SafetensorsError> {
    let overflow = || SafetensorsError::SizeOverflow {
        tensor: name.to_owned(),
        dtype: dtype.as_str().to_owned(),
        shape: shape.to_vec(),
    };
    // The element count is checked for Other dtypes too, so numel() is Some for every tensor
    // of a parsed header.
    let count = element_count(shape).ok_or_else(overflow)?;
    let Some(bits) = dtype.bits() else {
        return Ok(None);
    };
    // count <= u64::MAX and bits <= 64, so the product fits in u128.
    // NOTE: later safetensors releases, judging by ports of their validation, reject a sub-byte
    // tensor whose bit count is not a multiple of 8 instead of rounding up, so such a file
    // (3 F4 elements, say) may not load there.
    let bytes = (u128::from(count) * u128::from(bits)).div_ceil(8);
    u64::try_from(bytes).map(Some).map_err(|_| overflow())
}

/// Checks the parsed entries against each other and against the data section length.
fn validate(
    raw: json::RawHeader,
    header_len: u64,
    data_len: u64,
) -> Result<Header, SafetensorsError> {
    for tensor in &raw.tensors {
        check_range(tensor)?;
    }
    let tensors_end = check_tiling(&raw.tensors)?;
    if tensors_end != data_len {
        return Err(SafetensorsError::DataLengthMismatch {
            data_len,
            tensors_end,
        });
    }
    Ok(Header {
        header_len,
        tensors: raw.tensors,
        metadata: raw.metadata,
    })
}

/// Checks that a tensor's byte range is ordered and as long as its dtype and shape need.
fn check_range(tensor: &TensorInfo) -> Result<(), SafetensorsError> {
    if tensor.start > tensor.end {
        return Err(SafetensorsError::StartAfterEnd {
            tensor: tensor.name.clone(),
            start: tensor.start,
            end: tensor.end,
        });
    }
    let Some(expected) = byte_length(&tensor.name, &tensor.dtype, &tensor.shape)? else {
        return Ok(());
    };
    if tensor.len() != expected {
        return Err(SafetensorsError::LengthMismatch {
            tensor: tensor.name.clone(),
            dtype: tensor.dtype.as_str().to_owned(),
            shape: tensor.shape.clone(),
            expected,
            start: tensor.start,
            end: tensor.end,
        });
    }
    Ok(())
}

/// Checks that the byte ranges, sorted by `(start, end)`, cover `0..end` with no gap or
/// overlap, and returns that end. Empty ranges may share an offset with each other and with
/// the start of the next tensor, but may not sit strictly inside another tensor's range.
/// Requires `start <= end` for every tensor.
fn check_tiling(tensors: &[TensorInfo]) -> Result<u64, SafetensorsError> {
    let mut sorted: Vec<&TensorInfo> = tensors.iter().collect();
    sorted.sort_by_key(|tensor| (tensor.start, tensor.end));

    let mut covered_to = 0u64;
    // The last non-empty tensor, which is the one ending at covered_to when covered_to > 0.
    let mut previous: Option<&TensorInfo> = None;
    for tensor in sorted {
        if tensor.start > covered_to {
            return Err(SafetensorsError::OffsetGap {
                tensor: tensor.name.clone(),
                start: tensor.start,
                expected: covered_to,
            });
        }
        if tensor.start < covered_to {
            return Err(SafetensorsError::OffsetOverlap {
                tensor: tensor.name.clone(),
                start: tensor.start,
                previous: previous.map(|p| p.name.clone()).unwrap_or_default(),
                expected: covered_to,
            });
        }
        if !tensor.is_empty() {
            previous = Some(tensor);
        }
        covered_to = tensor.end;
    }
    Ok(covered_to)
}

/// Streaming deserialization of the header JSON with serde_json.
///
/// Custom visitors read the object key by key, so duplicate keys are seen (serde_json's
/// preserve_order map keeps only the last) and memory stays proportional to the tensors and
/// shapes kept. Each visitor accepts one JSON kind and stops at the first value of another
/// kind, so no nested value is ever descended past depth 3. serde_json's recursion limit of 128
/// is a second guard against stack overflow.
mod json {
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

    use super::{Dtype, SafetensorsError, TensorInfo, METADATA_KEY, PREFIX_LEN, QUOTE_MAX_CHARS};

    /// Tensor entries and metadata in file order, with types checked but ranges unchecked.
    #[derive(Debug)]
    pub(super) struct RawHeader {
        pub(super) tensors: Vec<TensorInfo>,
        pub(super) metadata: Option<Vec<(String, String)>>,
    }

    /// Parses the header text into entries, rejecting anything that is not a single JSON object
    /// followed by spaces.
    pub(super) fn parse_object(json: &str) -> Result<RawHeader, SafetensorsError> {
        if let Some(first) = json.chars().next() {
            if first != '{' {
                return Err(SafetensorsError::HeaderNotObject { first });
            }
        }

        let slot = RefCell::new(None);
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let parsed = HeaderVisitor {
            problem: Problem(&slot),
        }
        .deserialize(&mut deserializer)
        .and_then(|raw| deserializer.end().map(|()| raw));
        let raw = match parsed {
            Ok(raw) => raw,
            Err(err) => {
                return Err(slot
                    .into_inner()
                    .unwrap_or(SafetensorsError::HeaderNotJson {
                        reason: err.to_string(),
                    }))
            }
        };

        // end() has accepted everything after the object as JSON whitespace, and the object
        // ends with '}', so the padding starts after the last '}'.
        let object_end = json.rfind('}').map_or(json.len(), |index| index + 1);
        let padding = json.as_bytes().get(object_end..).unwrap_or_default();
        let not_space = padding.iter().enumerate().find(|(_, &byte)| byte != b' ');
        if let Some((position, &byte)) = not_space {
            return Err(SafetensorsError::HeaderPadding {
                offset: PREFIX_LEN + (object_end + position) as u64,
                byte,
            });
        }
        Ok(raw)
    }

    /// Slot for the typed error of the first semantic problem a visitor finds. It is needed
    /// because an error passed through serde_json comes back as a plain message.
    #[derive(Clone, Copy)]
    struct Problem<'a>(&'a RefCell<Option<SafetensorsError>>);

    impl Problem<'_> {
        /// Stores `err` and returns a serde error that aborts deserialization.
        fn raise<E: de::Error>(self, err: SafetensorsError) -> E {
            let serde_err = E::custom(&err);
            *self.0.borrow_mut() = Some(err);
            serde_err
        }
    }

    /// A JSON value of an unexpected kind, described for an error message.
    enum Found<'a> {
        Null,
        Bool(bool),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Str(&'a str),
        Array,
        Object,
    }

    impl fmt::Display for Found<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Found::Null => f.write_str("null"),
                Found::Bool(value) => write!(f, "boolean {value}"),
                Found::Unsigned(value) => write!(f, "number {value}"),
                Found::Signed(value) => write!(f, "number {value}"),
                Found::Float(value) => write!(f, "number {value:?}"),
                Found::Str(text) if text.chars().count() > QUOTE_MAX_CHARS => {
                    let head: String = text.chars().take(QUOTE_MAX_CHARS).collect();
                    write!(f, "string {head:?}...")
                }
                Found::Str(text) => write!(f, "string {text:?}"),
                Found::Array => f.write_str("an array"),
                Found::Object => f.write_str("an object"),
            }
        }
    }

    /// Implements the `Visitor` methods of the listed JSON kinds by failing with
    /// `self.wrong_kind(found)`. The first argument is the `'de` lifetime of the impl, which the
    /// generated signatures must name.
    macro_rules! reject_kinds {
        (@one $de:lifetime null) => {
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Err(self.wrong_kind(Found::Null))
            }
        };
        (@one $de:lifetime bool) => {
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Err(self.wrong_kind(Found::Bool(value)))
            }
        };
        (@one $de:lifetime u64) => {
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Err(self.wrong_kind(Found::Unsigned(value)))
            }
        };
        (@one $de:lifetime i64) => {
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Err(self.wrong_kind(Found::Signed(value)))
            }
        };
        (@one $de:lifetime f64) => {
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Err(self.wrong_kind(Found::Float(value)))
            }
        };
        (@one $de:lifetime str) => {
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Err(self.wrong_kind(Found::Str(value)))
            }
        };
        (@one $de:lifetime seq) => {
            fn visit_seq<A: SeqAccess<$de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
                Err(self.wrong_kind(Found::Array))
            }
        };
        (@one $de:lifetime map) => {
            fn visit_map<A: MapAccess<$de>>(self, _map: A) -> Result<Self::Value, A::Error> {
                Err(self.wrong_kind(Found::Object))
            }
        };
        ($de:lifetime; $($kind:ident)*) => {
            $(reject_kinds!(@one $de $kind);)*
        };
    }

    /// The top-level object. parse_object has checked that the text starts with '{', so any
    /// other kind is a syntax error that serde_json reports itself.
    struct HeaderVisitor<'a> {
        problem: Problem<'a>,
    }

    impl<'de> DeserializeSeed<'de> for HeaderVisitor<'_> {
        type Value = RawHeader;

        fn deserialize<D: de::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<RawHeader, D::Error> {
            deserializer.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for HeaderVisitor<'_> {
        type Value = RawHeader;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object of tensor entries")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
            let mut names = HashSet::new();
            let mut tensors = Vec::new();
            let mut metadata = None;
            while let Some(key) = map.next_key::<String>()? {
                if key == METADATA_KEY {
                    if metadata.is_some() {
                        return Err(self.problem.raise(SafetensorsError::DuplicateMetadata));
                    }
                    metadata = Some(map.next_value_seed(MetadataVisitor {
                        problem: self.problem,
                    })?);
                    continue;
                }
                if names.contains(key.as_str()) {
                    return Err(self
                        .problem
                        .raise(SafetensorsError::DuplicateTensorName { name: key }));
                }
                let tensor = map.next_value_seed(EntryVisitor {
                    problem: self.problem,
                    tensor: &key,
                })?;
                names.insert(key);
                tensors.push(tensor);
            }
            Ok(RawHeader { tensors, metadata })
        }
    }

    /// The object of one tensor entry.
    #[derive(Clone, Copy)]
    struct EntryVisitor<'a> {
        problem: Problem<'a>,
        tensor: &'a str,
    }

    impl<'a> EntryVisitor<'a> {
        fn wrong_kind<E: de::Error>(self, found: Found<'_>) -> E {
            self.problem.raise(SafetensorsError::TensorNotObject {
                tensor: self.tensor.to_owned(),
                found: found.to_string(),
            })
        }

        fn missing(self, field: &'static str) -> SafetensorsError {
            SafetensorsError::MissingField {
                tensor: self.tensor.to_owned(),
                field,
            }
        }

        fn list(
            self,
            field: &'static str,
            expected: &'static str,
            exact_len: Option<usize>,
        ) -> ListVisitor<'a> {
            ListVisitor {
                field: FieldContext {
                    problem: self.problem,
                    tensor: self.tensor,
                    field,
                    expected,
                },
                exact_len,
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for EntryVisitor<'_> {
        type Value = TensorInfo;

        fn deserialize<D: de::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<TensorInfo, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for EntryVisitor<'_> {
        type Value = TensorInfo;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object with dtype, shape and data_offsets")
        }

        reject_kinds!('de; null bool u64 i64 f64 str seq);

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TensorInfo, A::Error> {
            let mut dtype = None;
            let mut shape = None;
            let mut offsets = None;
            while let Some(field) = map.next_key::<String>()? {
                let duplicate = match field.as_str() {
                    "dtype" => dtype.is_some(),
                    "shape" => shape.is_some(),
                    "data_offsets" => offsets.is_some(),
                    _ => {
                        return Err(self.problem.raise(SafetensorsError::UnknownField {
                            tensor: self.tensor.to_owned(),
                            field,
                        }))
                    }
                };
                if duplicate {
                    return Err(self.problem.raise(SafetensorsError::DuplicateField {
                        tensor: self.tensor.to_owned(),
                        field,
                    }));
                }
                match field.as_str() {
                    "dtype" => {
                        let context = FieldContext {
                            problem: self.problem,
                            tensor: self.tensor,
                            field: "dtype",
                            expected: "a string",
                        };
                        dtype = Some(map.next_value_seed(DtypeVisitor { field: context })?);
                    }
                    "shape" => {
                        let list = self.list("shape", "an array of unsigned integers", None);
                        shape = Some(map.next_value_seed(list)?);
                    }
                    _ => {
                        let list =
                            self.list("data_offsets", "an array of two unsigned integers", Some(2));
                        offsets = Some(map.next_value_seed(list)?);
                    }
                }
            }

            let dtype = dtype.ok_or_else(|| self.problem.raise(self.missing("dtype")))?;
            let shape = shape.ok_or_else(|| self.problem.raise(self.missing("shape")))?;
            let offsets =
                offsets.ok_or_else(|| self.problem.raise(self.missing("data_offsets")))?;
            // ListVisitor returns exactly two items for data_offsets.
            let (start, end) = match offsets.as_slice() {
                [start, end] => (*start, *end),
                _ => return Err(self.problem.raise(self.missing("data_offsets"))),
            };
            Ok(TensorInfo {
                name: self.tensor.to_owned(),
                dtype,
                shape,
                start,
                end,
            })
        }
    }

    /// The tensor field being read, for error messages.
    #[derive(Clone, Copy)]
    struct FieldContext<'a> {
        problem: Problem<'a>,
        tensor: &'a str,
        field: &'static str,
        expected: &'static str,
    }

    impl FieldContext<'_> {
        fn invalid<E: de::Error>(self, found: String) -> E {
            self.problem.raise(SafetensorsError::InvalidField {
                tensor: self.tensor.to_owned(),
                field: self.field,
                expected: self.expected,
                found,
            })
        }
    }

    struct DtypeVisitor<'a> {
        field: FieldContext<'a>,
    }

    impl DtypeVisitor<'_> {
        fn wrong_kind<E: de::Error>(self, found: Found<'_>) -> E {
            self.field.invalid(found.to_string())
        }
    }

    impl<'de> DeserializeSeed<'de> for DtypeVisitor<'_> {
        type Value = Dtype;

        fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Dtype, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for DtypeVisitor<'_> {
        type Value = Dtype;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a dtype string")
        }

        reject_kinds!('de; null bool u64 i64 f64 seq map);

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Dtype, E> {
            Ok(Dtype::parse(value))
        }
    }

    /// An array of unsigned integers, optionally of an exact length.
    struct ListVisitor<'a> {
        field: FieldContext<'a>,
        exact_len: Option<usize>,
    }

    impl ListVisitor<'_> {
        fn wrong_kind<E: de::Error>(self, found: Found<'_>) -> E {
            self.field.invalid(found.to_string())
        }
    }

    impl<'de> DeserializeSeed<'de> for ListVisitor<'_> {
        type Value = Vec<u64>;

        fn deserialize<D: de::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Vec<u64>, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ListVisitor<'_> {
        type Value = Vec<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.field.expected)
        }

        reject_kinds!('de; null bool u64 i64 f64 str map);

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
            let mut items = Vec::new();
            loop {
                let element = UnsignedVisitor {
                    field: self.field,
                    index: items.len(),
                };
                let Some(item) = seq.next_element_seed(element)? else {
                    break;
                };
                items.push(item);
                // Stop reading an over-long fixed-length array at its first extra item.
                if let Some(len) = self.exact_len {
                    if items.len() > len {
                        return Err(self
                            .field
                            .invalid(format!("an array of more than {len} items")));
                    }
                }
            }
            if let Some(len) = self.exact_len {
                if items.len() != len {
                    return Err(self
                        .field
                        .invalid(format!("an array of {} items", items.len())));
                }
            }
            Ok(items)
        }
    }

    /// One item of an unsigned integer array.
    struct UnsignedVisitor<'a> {
        field: FieldContext<'a>,
        index: usize,
    }

    impl UnsignedVisitor<'_> {
        fn wrong_kind<E: de::Error>(self, found: Found<'_>) -> E {
            self.field
                .invalid(format!("{found} at index {}", self.index))
        }
    }

    impl<'de> DeserializeSeed<'de> for UnsignedVisitor<'_> {
        type Value = u64;

        fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for UnsignedVisitor<'_> {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an unsigned integer")
        }

        // serde_json reads negative integers as i64, and fractions, exponents and integers
        // above u64::MAX as f64, so only visit_u64 receives a valid item.
        reject_kinds!('de; null bool i64 f64 str seq map);

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }
    }

    /// The `__metadata__` object.
    struct MetadataVisitor<'a> {
        problem: Problem<'a>,
    }

    impl MetadataVisitor<'_> {
        fn wrong_kind<E: de::Error>(self, found: Found<'_>) -> E {
            self.problem.raise(SafetensorsError::MetadataNotObject {
                found: found.to_string(),
            })
        }
    }

    impl<'de> DeserializeSeed<'de> for MetadataVisitor<'_> {
        type Value = Vec<(String, String)>;

        fn deserialize<D: de::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for MetadataVisitor<'_> {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of string values")
        }

        reject_kinds!('de; null bool u64 i64 f64 str seq);

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = HashSet::new();
            let mut entries = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                if keys.contains(key.as_str()) {
                    return Err(self
                        .problem
                        .raise(SafetensorsError::DuplicateMetadataKey { key }));
                }
                let value = map.next_value_seed(MetadataValueVisitor {
                    problem: self.problem,
                    key: &key,
                })?;
                keys.insert(key.clone());
                entries.push((key, value));
            }
            Ok(entries)
        }
    }

    /// One value of the `__metadata__` object.
    struct MetadataValueVisitor<'a> {
        problem: Problem<'a>,
        key: &'a str,
    }

    impl MetadataValueVisitor<'_> {
        fn wrong_kind<E: de::Error>(self, found: Found<'_>) -> E {
            self.problem
                .raise(SafetensorsError::MetadataValueNotString {
                    key: self.key.to_owned(),
                    found: found.to_string(),
                })
        }
    }

    impl<'de> DeserializeSeed<'de> for MetadataValueVisitor<'_> {
        type Value = String;

        fn deserialize<D: de::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<String, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for MetadataValueVisitor<'_> {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        reject_kinds!('de; null bool u64 i64 f64 seq map);

        fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_owned())
        }

        fn visit_string<E: de::Error>(self, value: String) -> Result<String, E> {
            Ok(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Builds a file from header JSON (used as is, no padding) and a zero-filled data section.
    fn file_with(json: &str, data_len: usize) -> Vec<u8> {
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(json.as_bytes());
        file.resize(file.len() + data_len, 0);
        file
    }

    fn parse_err(file: &[u8]) -> SafetensorsError {
        match parse(file) {
            Ok(header) => panic!("expected an error, parsed {header:?}"),
            Err(err) => err,
        }
    }

    fn entry(dtype: &str, shape: &str, start: u64, end: u64) -> String {
        format!(r#"{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{start},{end}]}}"#)
    }

    fn tensor(name: &str, dtype: Dtype, shape: &[u64], start: u64, end: u64) -> TensorInfo {
        TensorInfo {
            name: name.to_owned(),
            dtype,
            shape: shape.to_vec(),
            start,
            end,
        }
    }

    #[test]
    fn header_object_parses_like_whole_file() {
        let json = format!(r#"{{"a":{},"b":{}}}"#, entry("F32", "[2]", 0, 8), entry("U8", "[3]", 8, 11));
        let file = file_with(&json, 11);
        let header_bytes = &file[..8 + json.len()];

        let parsed = parse_header(header_bytes, 11).unwrap();

        assert_eq!(parsed, parse(&file).unwrap());
        assert!(matches!(
            parse_header(&file[..9 + json.len()], 11).unwrap_err(),
            SafetensorsError::HeaderObjectLength { len, .. } if len == 9 + json.len() as u64
        ));
        assert!(matches!(parse_header(header_bytes, 12).unwrap_err(), SafetensorsError::DataLengthMismatch { .. }));
        assert!(matches!(parse_header(&header_bytes[..20], 11).unwrap_err(), SafetensorsError::HeaderBeyondFile { .. }));
    }

    /// Returns the invalid field error of a header whose only tensor "t" has `fields` as entry.
    fn invalid_field(fields: &str, data_len: usize) -> (&'static str, &'static str, String) {
        let err = parse_err(&file_with(&format!(r#"{{"t":{{{fields}}}}}"#), data_len));
        match err {
            SafetensorsError::InvalidField {
                tensor,
                field,
                expected,
                found,
            } => {
                assert_eq!(tensor, "t");
                (field, expected, found)
            }
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    // ---- Dtype ----

    #[test]
    fn dtype_spellings_round_trip() {
        let spellings = [
            "BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "F8_E8M0", "I16", "U16", "F16", "BF16",
            "I32", "U32", "F32", "F64", "I64", "U64", "C64", "F4", "F6_E2M3", "F6_E3M2",
        ];
        for (dtype, spelling) in Dtype::KNOWN.iter().zip(spellings) {
            assert_eq!(dtype.as_str(), spelling);
            assert_eq!(&Dtype::parse(spelling), dtype);
        }
    }

    #[test]
    fn dtype_unknown_text_is_other() {
        assert_eq!(Dtype::parse("Q4_K"), Dtype::Other("Q4_K".to_owned()));
        assert_eq!(Dtype::parse("f32"), Dtype::Other("f32".to_owned()));
        assert_eq!(Dtype::parse("Q4_K").as_str(), "Q4_K");
        assert_eq!(Dtype::parse("Q4_K").bits(), None);
        assert!(!Dtype::parse("Q4_K").is_float());
    }

    #[test]
    fn dtype_bits_table() {
        let bits: Vec<u64> = Dtype::KNOWN.iter().filter_map(Dtype::bits).collect();
        assert_eq!(
            bits,
            [8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64, 64, 4, 6, 6]
        );
    }

    #[test]
    fn dtype_is_float_table() {
        let floats: Vec<&str> = Dtype::KNOWN
            .iter()
            .filter(|dtype| dtype.is_float())
            .map(Dtype::as_str)
            .collect();
        assert_eq!(
            floats,
            [
                "F8_E4M3", "F8_E5M2", "F8_E8M0", "F16", "BF16", "F32", "F64", "F4", "F6_E2M3",
                "F6_E3M2"
            ]
        );
    }

    // ---- TensorInfo and Header helpers ----

    #[test]
    fn tensor_info_len_and_numel() {
        let matrix = tensor("w", Dtype::F32, &[2, 3], 8, 32);
        assert_eq!(matrix.len(), 24);
        assert_eq!(matrix.numel(), Some(6));
        assert_eq!(tensor("s", Dtype::F32, &[], 0, 4).numel(), Some(1));
        assert_eq!(
            tensor("z", Dtype::F32, &[u64::MAX, u64::MAX, 0], 0, 0).numel(),
            Some(0)
        );
        assert_eq!(tensor("o", Dtype::F32, &[u64::MAX, 2], 0, 0).numel(), None);
        assert_eq!(tensor("r", Dtype::F32, &[1], 9, 5).len(), 0);
    }

    #[test]
    fn header_offsets_and_order() {
        let json = format!(
            r#"{{"b":{},"a":{}}}"#,
            entry("F16", "[2]", 4, 8),
            entry("F32", "[1]", 0, 4)
        );
        let header = parse(&file_with(&json, 8)).unwrap();
        assert_eq!(header.header_len, json.len() as u64);
        assert_eq!(header.data_start(), 8 + json.len() as u64);
        assert_eq!(header.data_len(), 8);
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let by_offset: Vec<&str> = header.by_offset().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(by_offset, ["a", "b"]);
    }

    // ---- errors, one test per variant ----

    #[test]
    fn error_file_too_short() {
        assert!(matches!(
            parse_err(&[]),
            SafetensorsError::FileTooShort { len: 0 }
        ));
        assert!(matches!(
            parse_err(&[2, 0, 0, 0, 0, 0, 0]),
            SafetensorsError::FileTooShort { len: 7 }
        ));
    }

    #[test]
    fn error_header_too_large() {
        for header_len in [MAX_HEADER_LEN + 1, u64::MAX] {
            let mut file = header_len.to_le_bytes().to_vec();
            file.extend_from_slice(b"{}");
            let err = parse_err(&file);
            assert!(
                matches!(err, SafetensorsError::HeaderTooLarge { header_len: n, max: MAX_HEADER_LEN } if n == header_len),
                "{err:?}"
            );
        }
    }

    #[test]
    fn error_header_beyond_file() {
        let mut file = 10u64.to_le_bytes().to_vec();
        file.extend_from_slice(b"{}   ");
        let err = parse_err(&file);
        assert!(
            matches!(
                err,
                SafetensorsError::HeaderBeyondFile {
                    header_len: 10,
                    file_len: 13
                }
            ),
            "{err:?}"
        );
        // Exactly at the maximum but past the end of the file.
        let file = MAX_HEADER_LEN.to_le_bytes();
        assert!(matches!(
            parse_err(&file),
            SafetensorsError::HeaderBeyondFile { .. }
        ));
    }

    #[test]
    fn error_header_not_utf8() {
        let mut file = 4u64.to_le_bytes().to_vec();
        file.extend_from_slice(b"{\xff}");
        file.push(b' ');
        let err = parse_err(&file);
        assert!(
            matches!(err, SafetensorsError::HeaderNotUtf8 { offset: 9 }),
            "{err:?}"
        );
    }

    #[test]
    fn error_header_not_json() {
        for json in ["{\"a\":", "{}}", "{} {}", "{\"a\" 1}", "{,}", ""] {
            let err = parse_err(&file_with(json, 0));
            assert!(
                matches!(err, SafetensorsError::HeaderNotJson { .. }),
                "{json}: {err:?}"
            );
        }
    }

    #[test]
    fn error_header_not_object() {
        for (json, first) in [
            ("[]", '['),
            ("\"x\"", '"'),
            ("1", '1'),
            (" {}", ' '),
            ("\n{}", '\n'),
        ] {
            let err = parse_err(&file_with(json, 0));
            assert!(
                matches!(err, SafetensorsError::HeaderNotObject { first: f } if f == first),
                "{json}: {err:?}"
            );
        }
    }

    #[test]
    fn error_header_padding_not_space() {
        let err = parse_err(&file_with("{}  \n", 0));
        assert!(
            matches!(
                err,
                SafetensorsError::HeaderPadding {
                    offset: 12,
                    byte: b'\n'
                }
            ),
            "{err:?}"
        );
        let err = parse_err(&file_with("{}\t", 0));
        assert!(
            matches!(
                err,
                SafetensorsError::HeaderPadding {
                    offset: 10,
                    byte: b'\t'
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn error_duplicate_tensor_name() {
        let same = entry("U8", "[1]", 0, 1);
        let json = format!(r#"{{"a":{same},"a":{same}}}"#);
        let err = parse_err(&file_with(&json, 1));
        assert!(
            matches!(err, SafetensorsError::DuplicateTensorName { ref name } if name == "a"),
            "{err:?}"
        );

        // Escapes that decode to the same name are the same name.
        let json = format!(
            r#"{{"a":{},"\u0061":{}}}"#,
            entry("U8", "[1]", 0, 1),
            entry("U8", "[1]", 1, 2)
        );
        let err = parse_err(&file_with(&json, 2));
        assert!(
            matches!(err, SafetensorsError::DuplicateTensorName { ref name } if name == "a"),
            "{err:?}"
        );
    }

    #[test]
    fn error_duplicate_metadata() {
        let json = r#"{"__metadata__":{},"__metadata__":{"k":"v"}}"#;
        let err = parse_err(&file_with(json, 0));
        assert!(
            matches!(err, SafetensorsError::DuplicateMetadata),
            "{err:?}"
        );
    }

    #[test]
    fn error_duplicate_metadata_key() {
        let json = r#"{"__metadata__":{"k":"v","j":"w","k":"v"}}"#;
        let err = parse_err(&file_with(json, 0));
        assert!(
            matches!(err, SafetensorsError::DuplicateMetadataKey { ref key } if key == "k"),
            "{err:?}"
        );
    }

    #[test]
    fn error_metadata_not_object() {
        for (json, expected) in [
            (r#"{"__metadata__":null}"#, "null"),
            (r#"{"__metadata__":["k","v"]}"#, "an array"),
            (r#"{"__metadata__":"k=v"}"#, "string \"k=v\""),
        ] {
            let err = parse_err(&file_with(json, 0));
            assert!(
                matches!(err, SafetensorsError::MetadataNotObject { ref found } if found == expected),
                "{json}: {err:?}"
            );
        }
    }

    #[test]
    fn error_metadata_value_not_string() {
        for (json, expected) in [
            (r#"{"__metadata__":{"epoch":3}}"#, "number 3"),
            (r#"{"__metadata__":{"epoch":-3}}"#, "number -3"),
            (r#"{"__metadata__":{"epoch":0.5}}"#, "number 0.5"),
            (r#"{"__metadata__":{"epoch":null}}"#, "null"),
            (r#"{"__metadata__":{"epoch":true}}"#, "boolean true"),
            (r#"{"__metadata__":{"epoch":{"a":"b"}}}"#, "an object"),
        ] {
            let err = parse_err(&file_with(json, 0));
            assert!(
                matches!(err, SafetensorsError::MetadataValueNotString { ref key, ref found } if key == "epoch" && found == expected),
                "{json}: {err:?}"
            );
        }
    }

    #[test]
    fn error_tensor_not_object() {
        for (json, expected) in [
            (r#"{"t":[1,2]}"#, "an array"),
            (r#"{"t":"F32"}"#, "string \"F32\""),
        ] {
            let err = parse_err(&file_with(json, 0));
            assert!(
                matches!(err, SafetensorsError::TensorNotObject { ref tensor, ref found } if tensor == "t" && found == expected),
                "{json}: {err:?}"
            );
        }
    }

    #[test]
    fn error_missing_field() {
        for (fields, missing) in [
            (r#""shape":[1],"data_offsets":[0,1]"#, "dtype"),
            (r#""dtype":"U8","data_offsets":[0,1]"#, "shape"),
            (r#""dtype":"U8","shape":[1]"#, "data_offsets"),
            ("", "dtype"),
        ] {
            let err = parse_err(&file_with(&format!(r#"{{"t":{{{fields}}}}}"#), 1));
            assert!(
                matches!(err, SafetensorsError::MissingField { ref tensor, field } if tensor == "t" && field == missing),
                "{fields}: {err:?}"
            );
        }
    }

    #[test]
    fn error_duplicate_field() {
        let json = r#"{"t":{"dtype":"U8","shape":[1],"dtype":"I8","data_offsets":[0,1]}}"#;
        let err = parse_err(&file_with(json, 1));
        assert!(
            matches!(err, SafetensorsError::DuplicateField { ref tensor, ref field } if tensor == "t" && field == "dtype"),
            "{err:?}"
        );
    }

    #[test]
    fn error_unknown_field() {
        let json = r#"{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"stride":[1]}}"#;
        let err = parse_err(&file_with(json, 1));
        assert!(
            matches!(err, SafetensorsError::UnknownField { ref tensor, ref field } if tensor == "t" && field == "stride"),
            "{err:?}"
        );
    }

    #[test]
    fn error_invalid_field_dtype() {
        let (field, expected, found) =
            invalid_field(r#""dtype":32,"shape":[1],"data_offsets":[0,4]"#, 4);
        assert_eq!(
            (field, expected, found.as_str()),
            ("dtype", "a string", "number 32")
        );
        let (_, _, found) = invalid_field(r#""dtype":null,"shape":[1],"data_offsets":[0,4]"#, 4);
        assert_eq!(found, "null");
    }

    #[test]
    fn error_invalid_field_shape() {
        let cases = [
            (
                r#""dtype":"U8","shape":"2x3","data_offsets":[0,6]"#,
                "string \"2x3\"",
            ),
            (
                r#""dtype":"U8","shape":[2,-3],"data_offsets":[0,6]"#,
                "number -3 at index 1",
            ),
            (
                r#""dtype":"U8","shape":[2.0,3],"data_offsets":[0,6]"#,
                "number 2.0 at index 0",
            ),
            (
                r#""dtype":"U8","shape":[6e0],"data_offsets":[0,6]"#,
                "number 6.0 at index 0",
            ),
            (
                r#""dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,6]"#,
                "number 1.8446744073709552e19 at index 0",
            ),
            (
                r#""dtype":"U8","shape":[[6]],"data_offsets":[0,6]"#,
                "an array at index 0",
            ),
            (
                r#""dtype":"U8","shape":{"0":6},"data_offsets":[0,6]"#,
                "an object",
            ),
        ];
        for (fields, expected_found) in cases {
            let (field, expected, found) = invalid_field(fields, 6);
            assert_eq!(field, "shape", "{fields}");
            assert_eq!(expected, "an array of unsigned integers", "{fields}");
            assert_eq!(found, expected_found, "{fields}");
        }
    }

    #[test]
    fn error_invalid_field_data_offsets() {
        let cases = [
            (
                r#""dtype":"U8","shape":[1],"data_offsets":[0]"#,
                "an array of 1 items",
            ),
            (
                r#""dtype":"U8","shape":[1],"data_offsets":[]"#,
                "an array of 0 items",
            ),
            (
                r#""dtype":"U8","shape":[1],"data_offsets":[0,1,2]"#,
                "an array of more than 2 items",
            ),
            (
                r#""dtype":"U8","shape":[1],"data_offsets":[0,"1"]"#,
                "string \"1\" at index 1",
            ),
            (r#""dtype":"U8","shape":[1],"data_offsets":null"#, "null"),
        ];
        for (fields, expected_found) in cases {
            let (field, expected, found) = invalid_field(fields, 1);
            assert_eq!(field, "data_offsets", "{fields}");
            assert_eq!(expected, "an array of two unsigned integers", "{fields}");
            assert_eq!(found, expected_found, "{fields}");
        }
    }

    #[test]
    fn error_size_overflow() {
        // The element count overflows.
        let json = format!(
            r#"{{"t":{}}}"#,
            entry("F32", "[4294967296,4294967296]", 0, 0)
        );
        let err = parse_err(&file_with(&json, 0));
        assert!(
            matches!(err, SafetensorsError::SizeOverflow { ref tensor, ref dtype, ref shape } if tensor == "t" && dtype == "F32" && shape == &[1 << 32, 1 << 32]),
            "{err:?}"
        );
        // The element count fits, the byte count does not.
        let json = format!(r#"{{"t":{}}}"#, entry("F32", "[4611686018427387904]", 0, 0));
        assert!(matches!(
            parse_err(&file_with(&json, 0)),
            SafetensorsError::SizeOverflow { .. }
        ));
        // Other dtypes still need an element count that fits.
        let json = format!(
            r#"{{"t":{}}}"#,
            entry("Q4_K", "[4294967296,4294967296]", 0, 0)
        );
        assert!(matches!(
            parse_err(&file_with(&json, 0)),
            SafetensorsError::SizeOverflow { .. }
        ));
    }

    #[test]
    fn error_start_after_end() {
        let json = format!(r#"{{"t":{}}}"#, entry("U8", "[0]", 4, 2));
        let err = parse_err(&file_with(&json, 4));
        assert!(
            matches!(err, SafetensorsError::StartAfterEnd { ref tensor, start: 4, end: 2 } if tensor == "t"),
            "{err:?}"
        );
    }

    #[test]
    fn error_length_mismatch() {
        let json = format!(r#"{{"t":{}}}"#, entry("F32", "[2,3]", 0, 20));
        let err = parse_err(&file_with(&json, 20));
        assert!(
            matches!(err, SafetensorsError::LengthMismatch { ref tensor, ref dtype, ref shape, expected: 24, start: 0, end: 20 }
                if tensor == "t" && dtype == "F32" && shape == &[2, 3]),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "tensor \"t\" of dtype F32 and shape [2, 3] takes 24 bytes, but its data_offsets [0, 20] span 20 bytes"
        );
        // Sub-byte dtypes round up: 3 F4 elements are 12 bits, so 2 bytes, not 1.
        let json = format!(r#"{{"t":{}}}"#, entry("F4", "[3]", 0, 1));
        let err = parse_err(&file_with(&json, 1));
        assert!(
            matches!(err, SafetensorsError::LengthMismatch { expected: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn error_offset_gap() {
        // The first tensor must start at 0.
        let json = format!(r#"{{"t":{}}}"#, entry("U8", "[4]", 4, 8));
        let err = parse_err(&file_with(&json, 8));
        assert!(
            matches!(err, SafetensorsError::OffsetGap { ref tensor, start: 4, expected: 0 } if tensor == "t"),
            "{err:?}"
        );
        // A gap between two tensors.
        let json = format!(
            r#"{{"a":{},"b":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("U8", "[4]", 6, 10)
        );
        let err = parse_err(&file_with(&json, 10));
        assert!(
            matches!(err, SafetensorsError::OffsetGap { ref tensor, start: 6, expected: 4 } if tensor == "b"),
            "{err:?}"
        );
        // An empty tensor at offset 2 does not close the gap before offset 4.
        let json = format!(
            r#"{{"e":{},"b":{}}}"#,
            entry("U8", "[0]", 2, 2),
            entry("U8", "[4]", 4, 8)
        );
        let err = parse_err(&file_with(&json, 8));
        assert!(
            matches!(err, SafetensorsError::OffsetGap { ref tensor, start: 2, expected: 0 } if tensor == "e"),
            "{err:?}"
        );
    }

    #[test]
    fn error_offset_overlap() {
        let json = format!(
            r#"{{"a":{},"b":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("U8", "[4]", 2, 6)
        );
        let err = parse_err(&file_with(&json, 6));
        assert!(
            matches!(err, SafetensorsError::OffsetOverlap { ref tensor, start: 2, ref previous, expected: 4 }
                if tensor == "b" && previous == "a"),
            "{err:?}"
        );
        // Two tensors on the same range.
        let json = format!(
            r#"{{"a":{},"b":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("I8", "[4]", 0, 4)
        );
        let err = parse_err(&file_with(&json, 4));
        assert!(
            matches!(err, SafetensorsError::OffsetOverlap { ref tensor, start: 0, ref previous, expected: 4 }
                if tensor == "b" && previous == "a"),
            "{err:?}"
        );
        // An empty tensor strictly inside another tensor's range. The overlap names the
        // non-empty tensor even after an empty one at its end.
        let json = format!(
            r#"{{"a":{},"z":{},"e":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("U8", "[0]", 4, 4),
            entry("U8", "[0]", 2, 2)
        );
        let err = parse_err(&file_with(&json, 4));
        assert!(
            matches!(err, SafetensorsError::OffsetOverlap { ref tensor, start: 2, ref previous, expected: 4 }
                if tensor == "e" && previous == "a"),
            "{err:?}"
        );
    }

    #[test]
    fn error_data_length_mismatch() {
        let json = format!(r#"{{"t":{}}}"#, entry("U8", "[4]", 0, 4));
        let err = parse_err(&file_with(&json, 5));
        assert!(
            matches!(
                err,
                SafetensorsError::DataLengthMismatch {
                    data_len: 5,
                    tensors_end: 4
                }
            ),
            "{err:?}"
        );
        let err = parse_err(&file_with(&json, 3));
        assert!(
            matches!(
                err,
                SafetensorsError::DataLengthMismatch {
                    data_len: 3,
                    tensors_end: 4
                }
            ),
            "{err:?}"
        );
        let err = parse_err(&file_with("{}", 1));
        assert!(
            matches!(
                err,
                SafetensorsError::DataLengthMismatch {
                    data_len: 1,
                    tensors_end: 0
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn error_deep_nesting_no_stack_overflow() {
        let depth = 200_000;
        let deep_array = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let deep_object = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let unclosed_array = "[".repeat(depth);
        let cases = [
            (deep_array.clone(), "HeaderNotObject"),
            (deep_object.clone(), "UnknownField"),
            (format!(r#"{{"t":{deep_array}}}"#), "TensorNotObject"),
            (format!(r#"{{"t":{deep_object}}}"#), "UnknownField"),
            (
                format!(r#"{{"t":{{"dtype":"U8","shape":{deep_array},"data_offsets":[0,0]}}}}"#),
                "InvalidField",
            ),
            (
                format!(r#"{{"t":{{"dtype":{deep_array}}}}}"#),
                "InvalidField",
            ),
            (
                format!(r#"{{"t":{{"dtype":"U8","x":{deep_array}}}}}"#),
                "UnknownField",
            ),
            (
                format!(r#"{{"__metadata__":{deep_object}}}"#),
                "MetadataValueNotString",
            ),
            (
                format!(r#"{{"__metadata__":{{"k":{deep_array}}}}}"#),
                "MetadataValueNotString",
            ),
            (
                format!(r#"{{"__metadata__":{unclosed_array}"#),
                "MetadataNotObject",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_err(&file_with(&json, 0));
            let variant = format!("{err:?}");
            assert!(variant.starts_with(expected), "{expected}: {variant:.200}");
        }
    }

    #[test]
    fn writer_errors() {
        let reserved = [(METADATA_KEY.to_owned(), Dtype::U8, vec![1])];
        assert!(matches!(
            write_header(&reserved, None),
            Err(SafetensorsError::ReservedTensorName)
        ));

        let duplicate = [
            ("a".to_owned(), Dtype::U8, vec![1]),
            ("a".to_owned(), Dtype::I8, vec![2]),
        ];
        assert!(matches!(
            write_header(&duplicate, None),
            Err(SafetensorsError::DuplicateTensorName { ref name }) if name == "a"
        ));

        let unsized_dtype = [("q".to_owned(), Dtype::Other("Q4_K".to_owned()), vec![32])];
        assert!(matches!(
            write_header(&unsized_dtype, None),
            Err(SafetensorsError::UnsizedDtype { ref tensor, ref dtype }) if tensor == "q" && dtype == "Q4_K"
        ));

        let overflow = [("big".to_owned(), Dtype::F64, vec![1 << 40, 1 << 30])];
        assert!(matches!(
            write_header(&overflow, None),
            Err(SafetensorsError::SizeOverflow { .. })
        ));

        let total_overflow = [
            ("a".to_owned(), Dtype::U8, vec![u64::MAX]),
            ("b".to_owned(), Dtype::U8, vec![1]),
        ];
        assert!(matches!(
            write_header(&total_overflow, None),
            Err(SafetensorsError::DataOverflow { ref tensor }) if tensor == "b"
        ));

        let metadata = [
            ("k".to_owned(), "1".to_owned()),
            ("k".to_owned(), "2".to_owned()),
        ];
        assert!(matches!(
            write_header(&[], Some(&metadata)),
            Err(SafetensorsError::DuplicateMetadataKey { ref key }) if key == "k"
        ));
    }

    #[test]
    fn error_messages_name_values() {
        let json = format!(
            r#"{{"a":{},"b":{}}}"#,
            entry("U8", "[4]", 0, 4),
            entry("U8", "[4]", 6, 10)
        );
        assert_eq!(
            parse_err(&file_with(&json, 10)).to_string(),
            "tensor \"b\" starts at data offset 6, leaving bytes 4..6 of the data section unclaimed; \
             tensors must cover it from offset 0 without gaps"
        );
        assert_eq!(
            parse_err(&file_with("{}\n", 0)).to_string(),
            "header has byte 0x0a at file offset 10 after its JSON object; only spaces (0x20) may pad the header"
        );
        let long_name = "x".repeat(100);
        let err = parse_err(&file_with(&format!(r#"{{"t":"{long_name}"}}"#), 0));
        assert_eq!(
            err.to_string(),
            format!(
                "entry of tensor \"t\" is string \"{}\"..., expected an object with dtype, shape and data_offsets",
                "x".repeat(64)
            )
        );
    }

    // ---- accepted files ----

    #[test]
    fn accepts_empty_header() {
        let header = parse(&file_with("{}", 0)).unwrap();
        assert_eq!(
            header,
            Header {
                header_len: 2,
                tensors: vec![],
                metadata: None
            }
        );
        let header = parse(&file_with("{}      ", 0)).unwrap();
        assert_eq!(header.header_len, 8);
        assert_eq!(header.data_len(), 0);
        let header = parse(&file_with("{ }", 0)).unwrap();
        assert!(header.tensors.is_empty());
    }

    #[test]
    fn accepts_every_dtype() {
        let shape = vec![3, 5];
        let tensors: Vec<(String, Dtype, Vec<u64>)> = Dtype::KNOWN
            .iter()
            .map(|dtype| {
                (
                    format!("t.{}", dtype.as_str()),
                    dtype.clone(),
                    shape.clone(),
                )
            })
            .collect();
        let (bytes, infos) = write_header(&tensors, None).unwrap();
        let data_len = infos.last().map_or(0, |info| info.end);
        let mut file = bytes;
        file.resize(file.len() + data_len as usize, 0xAB);
        let header = parse(&file).unwrap();
        assert_eq!(header.tensors, infos);
        // 15 elements: 4-bit is 60 bits, so 8 bytes, and 6-bit is 90 bits, so 12 bytes.
        let lens: Vec<u64> = header.tensors.iter().map(TensorInfo::len).collect();
        assert_eq!(
            lens,
            [15, 15, 15, 15, 15, 15, 30, 30, 30, 30, 60, 60, 60, 120, 120, 120, 120, 8, 12, 12]
        );
    }

    #[test]
    fn accepts_other_dtype_any_length() {
        let json = format!(
            r#"{{"q":{},"w":{}}}"#,
            entry("Q4_K", "[256]", 0, 144),
            entry("F32", "[1]", 144, 148)
        );
        let header = parse(&file_with(&json, 148)).unwrap();
        assert_eq!(
            header.tensors[0],
            tensor("q", Dtype::Other("Q4_K".to_owned()), &[256], 0, 144)
        );
        assert_eq!(header.tensors[0].numel(), Some(256));
    }

    #[test]
    fn accepts_zero_sized_tensors_sharing_offsets() {
        let json = format!(
            r#"{{"e0":{},"a":{},"e1":{},"e2":{},"b":{},"e3":{}}}"#,
            entry("F32", "[0]", 0, 0),
            entry("U8", "[2]", 0, 2),
            entry("F16", "[4,0]", 2, 2),
            entry("BF16", "[0,7]", 2, 2),
            entry("U8", "[1]", 2, 3),
            entry("I64", "[0]", 3, 3)
        );
        let header = parse(&file_with(&json, 3)).unwrap();
        assert_eq!(header.tensors.len(), 6);
        assert_eq!(header.data_len(), 3);
        let by_offset: Vec<&str> = header.by_offset().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(by_offset, ["e0", "a", "e1", "e2", "b", "e3"]);
        // Only empty tensors.
        let json = format!(
            r#"{{"x":{},"y":{}}}"#,
            entry("F32", "[0]", 0, 0),
            entry("F32", "[0, 3]", 0, 0)
        );
        assert_eq!(parse(&file_with(&json, 0)).unwrap().tensors.len(), 2);
    }

    #[test]
    fn accepts_scalar_tensor() {
        let json = format!(r#"{{"step":{}}}"#, entry("I64", "[]", 0, 8));
        let header = parse(&file_with(&json, 8)).unwrap();
        assert_eq!(header.tensors, [tensor("step", Dtype::I64, &[], 0, 8)]);
        assert_eq!(header.tensors[0].numel(), Some(1));
    }

    #[test]
    fn accepts_metadata_anywhere() {
        let a = entry("U8", "[1]", 0, 1);
        let b = entry("U8", "[1]", 1, 2);
        let metadata = r#""__metadata__":{"format":"pt","note":"é \"q\""}"#;
        for json in [
            format!(r#"{{{metadata},"a":{a},"b":{b}}}"#),
            format!(r#"{{"a":{a},{metadata},"b":{b}}}"#),
            format!(r#"{{"a":{a},"b":{b},{metadata}}}"#),
        ] {
            let header = parse(&file_with(&json, 2)).unwrap();
            assert_eq!(
                header.metadata,
                Some(vec![
                    ("format".to_owned(), "pt".to_owned()),
                    ("note".to_owned(), "é \"q\"".to_owned())
                ])
            );
            let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["a", "b"], "{json}");
        }
        let header = parse(&file_with(r#"{"__metadata__":{}}"#, 0)).unwrap();
        assert_eq!(header.metadata, Some(vec![]));
    }

    #[test]
    fn accepts_escaped_and_unicode_names() {
        let json = format!(
            r#"{{"a\"b\\c":{},"\u00e9\ud83d\ude00":{},"":{}}}"#,
            entry("U8", "[1]", 0, 1),
            entry("U8", "[1]", 1, 2),
            entry("U8", "[1]", 2, 3)
        );
        let header = parse(&file_with(&json, 3)).unwrap();
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a\"b\\c", "é😀", ""]);
    }

    #[test]
    fn accepts_json_whitespace_inside_object() {
        let json = "{\n  \"t\" : {\"dtype\" : \"U8\",\t\"shape\" : [ 2 ] ,\r\n \"data_offsets\" : [0, 2]}\n}   ";
        let header = parse(&file_with(json, 2)).unwrap();
        assert_eq!(header.tensors, [tensor("t", Dtype::U8, &[2], 0, 2)]);
    }

    #[test]
    fn write_header_layout() {
        let tensors = [
            ("w".to_owned(), Dtype::F32, vec![2, 2]),
            ("b".to_owned(), Dtype::F16, vec![3]),
        ];
        let metadata = [("format".to_owned(), "pt".to_owned())];
        let (bytes, infos) = write_header(&tensors, Some(&metadata)).unwrap();
        let json = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[16,22]}}"#;
        let padded_len = json.len().div_ceil(8) * 8;
        assert_eq!(bytes.len(), 8 + padded_len);
        assert_eq!(bytes[..8], (padded_len as u64).to_le_bytes());
        assert_eq!(&bytes[8..8 + json.len()], json.as_bytes());
        assert!(bytes[8 + json.len()..].iter().all(|&b| b == b' '));
        assert_eq!(
            infos,
            [
                tensor("w", Dtype::F32, &[2, 2], 0, 16),
                tensor("b", Dtype::F16, &[3], 16, 22)
            ]
        );

        let (bytes, infos) = write_header(&[], None).unwrap();
        assert_eq!(bytes, b"\x08\0\0\0\0\0\0\0{}      ");
        assert!(infos.is_empty());
    }

    // ---- cross-check against the reference crate ----

    fn reference_dtype(dtype: &Dtype) -> safetensors::Dtype {
        match dtype {
            Dtype::Bool => safetensors::Dtype::BOOL,
            Dtype::U8 => safetensors::Dtype::U8,
            Dtype::I8 => safetensors::Dtype::I8,
            Dtype::F8E4M3 => safetensors::Dtype::F8_E4M3,
            Dtype::F8E5M2 => safetensors::Dtype::F8_E5M2,
            Dtype::I16 => safetensors::Dtype::I16,
            Dtype::U16 => safetensors::Dtype::U16,
            Dtype::F16 => safetensors::Dtype::F16,
            Dtype::BF16 => safetensors::Dtype::BF16,
            Dtype::I32 => safetensors::Dtype::I32,
            Dtype::U32 => safetensors::Dtype::U32,
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F64 => safetensors::Dtype::F64,
            Dtype::I64 => safetensors::Dtype::I64,
            Dtype::U64 => safetensors::Dtype::U64,
            other => panic!("safetensors 0.4 has no dtype {other}"),
        }
    }

    /// The dtypes that safetensors 0.4 knows.
    const REFERENCE_DTYPES: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// Serializes the tensors with `safetensors::serialize`, parses the file with both crates
    /// and checks they agree on every name, dtype, shape, offset and metadata entry.
    fn check_against_reference(
        tensors: &[(String, Dtype, Vec<u64>)],
        metadata: Option<HashMap<String, String>>,
    ) {
        let buffers: Vec<Vec<u8>> = tensors
            .iter()
            .enumerate()
            .map(|(index, (_, dtype, shape))| {
                let len = byte_length("", dtype, shape).unwrap().unwrap() as usize;
                (0..len).map(|i| (i + index) as u8).collect()
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .zip(&buffers)
            .map(|((name, dtype, shape), data)| {
                let shape = shape.iter().map(|&dim| dim as usize).collect();
                let view =
                    safetensors::tensor::TensorView::new(reference_dtype(dtype), shape, data)
                        .unwrap();
                (name.clone(), view)
            })
            .collect();
        let file = safetensors::serialize(views, &metadata).unwrap();

        let header = parse(&file).unwrap();
        let (reference_len, reference) = safetensors::SafeTensors::read_metadata(&file).unwrap();
        assert_eq!(header.header_len, reference_len as u64);
        let reference_tensors = reference.tensors();
        assert_eq!(header.tensors.len(), reference_tensors.len());
        for info in &header.tensors {
            let expected = &reference_tensors[&info.name];
            assert_eq!(info.dtype.as_str(), format!("{:?}", expected.dtype));
            let expected_shape: Vec<u64> = expected.shape.iter().map(|&dim| dim as u64).collect();
            assert_eq!(info.shape, expected_shape);
            assert_eq!(
                (info.start, info.end),
                (
                    expected.data_offsets.0 as u64,
                    expected.data_offsets.1 as u64
                )
            );
        }
        let metadata_map: Option<HashMap<String, String>> = header
            .metadata
            .clone()
            .map(|entries| entries.into_iter().collect());
        assert_eq!(&metadata_map, reference.metadata());

        // The bytes of each tensor are where the header says they are.
        for ((name, _, _), data) in tensors.iter().zip(&buffers) {
            let info = header.tensors.iter().find(|t| &t.name == name).unwrap();
            let range = (header.data_start() + info.start) as usize
                ..(header.data_start() + info.end) as usize;
            assert_eq!(&file[range], data.as_slice());
        }
    }

    #[test]
    fn matches_reference_serializer() {
        let tensors: Vec<(String, Dtype, Vec<u64>)> = REFERENCE_DTYPES
            .iter()
            .enumerate()
            .map(|(index, dtype)| {
                (
                    format!("layer.{index}.weight"),
                    dtype.clone(),
                    vec![2, index as u64 + 1],
                )
            })
            .chain([
                ("scalar".to_owned(), Dtype::F32, vec![]),
                ("empty".to_owned(), Dtype::F16, vec![0, 4]),
            ])
            .collect();
        let metadata = HashMap::from([
            ("format".to_owned(), "pt".to_owned()),
            ("step".to_owned(), "7".to_owned()),
        ]);
        check_against_reference(&tensors, Some(metadata));
        check_against_reference(&tensors, None);
        check_against_reference(&[], None);
    }

    #[test]
    fn reference_writer_breaks_empty_file() {
        // safetensors 0.4.5 sizes its JSON map by tensors plus metadata entries, so with neither
        // serde_json closes the map at once and the metadata entry lands after the "}".
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = vec![];
        let file = safetensors::serialize(views, &Some(HashMap::new())).unwrap();
        assert_eq!(&file[8..], br#"{},"__metadata__":{}}   "#);
        assert!(safetensors::SafeTensors::read_metadata(&file).is_err());
        let err = parse_err(&file);
        assert!(
            matches!(err, SafetensorsError::HeaderNotJson { .. }),
            "{err:?}"
        );
    }

    // ---- property tests ----

    fn known_dtype() -> impl Strategy<Value = Dtype> {
        proptest::sample::select(Dtype::KNOWN.to_vec())
    }

    fn tensor_specs(
        dtype: impl Strategy<Value = Dtype>,
    ) -> impl Strategy<Value = Vec<(String, Dtype, Vec<u64>)>> {
        proptest::collection::btree_map(
            "[a-z0-9._é\"\\\\]{0,12}",
            (dtype, proptest::collection::vec(0u64..6, 0..4)),
            0..8,
        )
        .prop_map(|map| {
            map.into_iter()
                .filter(|(name, _)| name != METADATA_KEY)
                .map(|(name, (dtype, shape))| (name, dtype, shape))
                .collect()
        })
        .prop_shuffle()
    }

    fn metadata_entries() -> impl Strategy<Value = Option<Vec<(String, String)>>> {
        proptest::option::of(
            proptest::collection::btree_map("\\PC{0,8}", "\\PC{0,16}", 0..4)
                .prop_map(|map| map.into_iter().collect::<Vec<_>>())
                .prop_shuffle(),
        )
    }

    /// A whole file, the tensors its header was written with, and its metadata.
    type ValidFile = (Vec<u8>, Vec<TensorInfo>, Option<Vec<(String, String)>>);

    /// A valid file with random data bytes.
    fn valid_file() -> impl Strategy<Value = ValidFile> {
        (
            tensor_specs(known_dtype()),
            metadata_entries(),
            any::<u64>(),
        )
            .prop_map(|(specs, metadata, seed)| {
                let (mut file, infos) = write_header(&specs, metadata.as_deref()).unwrap();
                let data_len = infos.last().map_or(0, |info| info.end);
                let mut state = seed;
                for _ in 0..data_len {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    file.push((state >> 56) as u8);
                }
                (file, infos, metadata)
            })
    }

    /// Checks the invariants every parsed header must hold.
    fn check_invariants(file: &[u8], header: &Header) {
        assert_eq!(header.data_start() + header.data_len(), file.len() as u64);
        let mut covered_to = 0;
        for info in header.by_offset() {
            assert_eq!(info.start, covered_to);
            assert!(info.numel().is_some());
            covered_to = info.end;
        }
        assert_eq!(covered_to, header.data_len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn write_then_parse_round_trips((file, infos, metadata) in valid_file()) {
            let header = parse(&file).unwrap();
            prop_assert_eq!(&header.tensors, &infos);
            prop_assert_eq!(&header.metadata, &metadata);
            prop_assert_eq!(header.data_start() % 8, 0);
            prop_assert_eq!(header.data_start() + header.data_len(), file.len() as u64);
            check_invariants(&file, &header);
        }

        #[test]
        fn reference_files_parse_alike(
            specs in tensor_specs(proptest::sample::select(REFERENCE_DTYPES.to_vec())),
            metadata in proptest::option::of(proptest::collection::hash_map("\\PC{0,8}", "\\PC{0,16}", 0..4)),
        ) {
            // See reference_writer_breaks_empty_file.
            prop_assume!(!specs.is_empty() || metadata.as_ref().is_none_or(|m| !m.is_empty()));
            check_against_reference(&specs, metadata);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(header) = parse(&bytes) {
                check_invariants(&bytes, &header);
            }
        }

        #[test]
        fn parse_never_panics_on_arbitrary_json(body in "[ {}\\[\\]\":,0-9a-z_\\-.]{0,200}", extra in 0usize..16) {
            let file = file_with(&body, extra);
            if let Ok(header) = parse(&file) {
                check_invariants(&file, &header);
            }
        }

        #[test]
        fn parse_never_panics_on_mutated_files(
            (file, _, _) in valid_file(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
        ) {
            let mut file = file;
            for (index, byte, kind) in edits {
                if file.is_empty() {
                    break;
                }
                let position = index.index(file.len());
                match kind {
                    0 => file[position] = byte,
                    1 => file.insert(position, byte),
                    2 => { file.remove(position); }
                    _ => file.truncate(position),
                }
            }
            if let Ok(header) = parse(&file) {
                check_invariants(&file, &header);
            }
        }
    }
}
