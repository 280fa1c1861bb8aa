//! The UltraDelta object: one compressed tensor delta, self-describing and checksummed.
//!
//! All integers and floats are little-endian; floats are IEEE 754 binary64.
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `WSUD` |
//! | 4 | 2 | format version, u16, currently 1 |
//! | 6 | 1 | codec id, 1 = UltraDelta |
//! | 7 | 1 | dtype of the reconstructed tensor: 0 F32, 1 F16, 2 BF16, 3 F64 |
//! | 8 | 1 | quantization bits `b`, 1 to 8 |
//! | 9 | 1 | requested mask mode: 0 grouped, 1 seeded |
//! | 10 | 1 | layout: 0 dense (every code stored, nothing pruned), 1 grouped positions, 2 seeded mask |
//! | 11 | 1 | position coding: 0 none (layouts 0 and 2), 1 Golomb-Rice, 2 Elias-Fano (layout 1) |
//! | 12 | 1 | value coding: 0 rANS, 1 zstd |
//! | 13 | 1 | `ndim`, 0 to 8 |
//! | 14 | 2 | reserved, zero |
//! | 16 | 8 × ndim | shape, u64 per dimension; `numel` is their product (1 for ndim 0) |
//! | h | 8 | `min`, f64: level `c` decodes to `min + c * step` |
//! | h+8 | 8 | `step`, f64, at least 0 |
//! | h+16 | 8 | tensor sparsity, f64: the rate this tensor was allocated |
//! | h+24 | 8 | commit sparsity `p`, f64 (informational; the rescale below already uses it) |
//! | h+32 | 8 | rescale, f64: `extra / (1 - p)` |
//! | h+40 | 8 | trace-norm factor, f64, frozen when the object is written |
//! | h+48 | 8 | tensor seed, u64, keys the ChaCha8 mask stream |
//! | h+56 | 8 | `kept`, u64: number of stored codes |
//! | h+64 | 8 | positions section length in bytes, u64 |
//! | h+72 | 8 | values section length in bytes, u64 |
//! | h+80 | … | positions section, then values section |
//! | end−8 | 8 | checksum: the first 8 bytes of the BLAKE3 hash of all preceding bytes |
//!
//! where `h = 16 + 8 × ndim`. Layouts: dense stores `numel` codes in element order; grouped
//! stores `kept` increasing positions (see `positions.rs`) and their codes, every other element
//! decoding to 0; seeded stores the codes of the `kept` elements that survive the mask replayed
//! from `(numel, numel - kept, seed)`. A kept element decodes to
//! `(min + code * step) * (rescale * trace-norm factor)`, computed in f64 and rounded to f32.

use super::dtype::FloatDtype;
use super::entropy::ValueCoding;
use super::positions::PositionCoding;
use super::{MaskMode, UltraDeltaError};

pub(crate) const MAGIC: [u8; 4] = *b"WSUD";
pub(crate) const VERSION: u16 = 1;
pub(crate) const CODEC_ID: u8 = 1;
pub(crate) const MAX_NDIM: usize = 8;
/// Largest tensor the codec accepts, in elements. It bounds what a decoder allocates from a
/// header: 2^32 f32 values are 16 GiB, above any single tensor of today's open checkpoints.
pub(crate) const MAX_NUMEL: u64 = 1 << 32;
const CHECKSUM_BYTES: usize = 8;
/// Offset of the trace-norm factor from the end of the shape.
const TRACE_FACTOR_OFFSET: usize = 40;

/// How the kept codes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    Dense,
    Grouped(PositionCoding),
    Seeded,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Header {
    pub dtype: FloatDtype,
    pub bits: u8,
    pub mask_mode: MaskMode,
    pub layout: Layout,
    pub value_coding: ValueCoding,
    pub shape: Vec<u64>,
    pub min: f64,
    pub step: f64,
    pub tensor_sparsity: f64,
    pub commit_sparsity: f64,
    pub rescale: f64,
    pub trace_norm_factor: f64,
    pub seed: u64,
    pub kept: u64,
}

impl Header {
    pub(crate) fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The factor every kept level value is multiplied by.
    pub(crate) fn scale(&self) -> f64 {
        self.rescale * self.trace_norm_factor
    }
}

/// A parsed object: its header and its two sections.
pub(crate) struct Object<'a> {
    pub header: Header,
    pub positions: &'a [u8],
    pub values: &'a [u8],
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..CHECKSUM_BYTES]);
    out
}

pub(crate) fn write(header: &Header, positions: &[u8], values: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + 8 * header.shape.len() + 80 + positions.len() + values.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(CODEC_ID);
    out.push(header.dtype.code());
    out.push(header.bits);
    out.push(match header.mask_mode {
        MaskMode::Grouped => 0,
        MaskMode::Seeded => 1,
    });
    let (layout, position_coding) = match header.layout {
        Layout::Dense => (0, 0),
        Layout::Grouped(coding) => (1, coding.code()),
        Layout::Seeded => (2, 0),
    };
    out.push(layout);
    out.push(position_coding);
    out.push(header.value_coding.code());
    out.push(header.shape.len() as u8);
    out.extend_from_slice(&[0, 0]);
    for &dim in &header.shape {
        out.extend_from_slice(&dim.to_le_bytes());
    }
    for value in [
        header.min,
        header.step,
        header.tensor_sparsity,
        header.commit_sparsity,
        header.rescale,
        header.trace_norm_factor,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    for value in [
        header.seed,
        header.kept,
        positions.len() as u64,
        values.len() as u64,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(positions);
    out.extend_from_slice(values);
    let sum = checksum(&out);
    out.extend_from_slice(&sum);
    out
}

fn corrupt(what: impl Into<String>) -> UltraDeltaError {
    UltraDeltaError::Corrupt(what.into())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], UltraDeltaError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt("truncated header"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, UltraDeltaError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, UltraDeltaError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn f64(&mut self) -> Result<f64, UltraDeltaError> {
        Ok(f64::from_bits(self.u64()?))
    }
}

/// Parses and validates an object; no allocation depends on untrusted sizes beyond the shape.
pub(crate) fn parse(payload: &[u8]) -> Result<Object<'_>, UltraDeltaError> {
    if payload.len() < 16 + 80 + CHECKSUM_BYTES {
        return Err(corrupt(format!(
            "{} bytes is shorter than the smallest object",
            payload.len()
        )));
    }
    let (body, sum) = payload.split_at(payload.len() - CHECKSUM_BYTES);
    if checksum(body) != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let mut cur = Cursor { bytes: body, at: 0 };
    if cur.take(4)? != MAGIC {
        return Err(corrupt("bad magic, not an ultradelta object"));
    }
    let version = u16::from_le_bytes([cur.u8()?, cur.u8()?]);
    if version != VERSION {
        return Err(corrupt(format!(
            "format version {version} is not supported (expected {VERSION}); upgrade wstore"
        )));
    }
    let codec = cur.u8()?;
    if codec != CODEC_ID {
        return Err(corrupt(format!("codec id {codec}, expected {CODEC_ID}")));
    }
    let dtype_code = cur.u8()?;
    let dtype = FloatDtype::from_code(dtype_code)
        .ok_or_else(|| corrupt(format!("unknown dtype code {dtype_code}")))?;
    let bits = cur.u8()?;
    if !(1..=8).contains(&bits) {
        return Err(corrupt(format!(
            "{bits} quantization bits, expected 1 to 8"
        )));
    }
    let mask_mode = match cur.u8()? {
        0 => MaskMode::Grouped,
        1 => MaskMode::Seeded,
        other => return Err(corrupt(format!("unknown mask mode {other}"))),
    };
    let layout_code = cur.u8()?;
    let position_code = cur.u8()?;
    let layout = match (layout_code, position_code) {
        (0, 0) => Layout::Dense,
        (1, code) => Layout::Grouped(
            PositionCoding::from_code(code)
                .ok_or_else(|| corrupt(format!("unknown position coding {code}")))?,
        ),
        (2, 0) => Layout::Seeded,
        (layout, coding) => {
            return Err(corrupt(format!(
                "layout {layout} with position coding {coding}"
            )))
        }
    };
    let value_code = cur.u8()?;
    let value_coding = ValueCoding::from_code(value_code)
        .ok_or_else(|| corrupt(format!("unknown value coding {value_code}")))?;
    let ndim = usize::from(cur.u8()?);
    if ndim > MAX_NDIM {
        return Err(corrupt(format!(
            "{ndim} dimensions, at most {MAX_NDIM} supported"
        )));
    }
    if cur.take(2)? != [0, 0] {
        return Err(corrupt("reserved bytes are not zero"));
    }
    let mut shape = Vec::with_capacity(ndim);
    let mut numel = 1u64;
    for _ in 0..ndim {
        let dim = cur.u64()?;
        numel = numel
            .checked_mul(dim)
            .filter(|&n| n <= MAX_NUMEL)
            .ok_or_else(|| corrupt(format!("shape has more than {MAX_NUMEL} elements")))?;
        shape.push(dim);
    }

    let min = cur.f64()?;
    let step = cur.f64()?;
    let tensor_sparsity = cur.f64()?;
    let commit_sparsity = cur.f64()?;
    let rescale = cur.f64()?;
    let trace_norm_factor = cur.f64()?;
    let all_finite = [
        min,
        step,
        tensor_sparsity,
        commit_sparsity,
        rescale,
        trace_norm_factor,
    ]
    .iter()
    .all(|v| v.is_finite());
    if !all_finite || step < 0.0 {
        return Err(corrupt(
            "non-finite level grid or factors, or negative step",
        ));
    }
    let seed = cur.u64()?;
    let kept = cur.u64()?;
    let positions_len = cur.u64()?;
    let values_len = cur.u64()?;
    if kept > numel || (layout == Layout::Dense && kept != numel) {
        return Err(corrupt(format!("{kept} kept codes for {numel} elements")));
    }
    let sections_end = (cur.at as u64)
        .checked_add(positions_len)
        .and_then(|n| n.checked_add(values_len));
    if sections_end != Some(body.len() as u64) {
        return Err(corrupt("section lengths do not match the object size"));
    }
    if !matches!(layout, Layout::Grouped(_)) && positions_len != 0 {
        return Err(corrupt(
            "positions section present in a layout without positions",
        ));
    }
    let positions = cur.take(positions_len as usize)?;
    let values = cur.take(values_len as usize)?;

    let header = Header {
        dtype,
        bits,
        mask_mode,
        layout,
        value_coding,
        shape,
        min,
        step,
        tensor_sparsity,
        commit_sparsity,
        rescale,
        trace_norm_factor,
        seed,
        kept,
    };
    Ok(Object {
        header,
        positions,
        values,
    })
}

/// Returns a copy of `payload` with a new frozen trace-norm factor and an updated checksum.
pub fn with_trace_norm_factor(payload: &[u8], factor: f64) -> Result<Vec<u8>, UltraDeltaError> {
    if !factor.is_finite() {
        return Err(UltraDeltaError::InvalidSettings(format!(
            "trace-norm factor {factor} is not finite"
        )));
    }
    let object = parse(payload)?;
    let offset = 16 + 8 * object.header.shape.len() + TRACE_FACTOR_OFFSET;
    let mut out = payload[..payload.len() - CHECKSUM_BYTES].to_vec();
    out[offset..offset + 8].copy_from_slice(&factor.to_le_bytes());
    let sum = checksum(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}
