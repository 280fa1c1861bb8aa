//! Float dtypes the codec can compress, and conversions between their bytes and f32.

use half::{bf16, f16};

use super::UltraDeltaError;
use crate::format::safetensors::Dtype;

/// A float dtype with a stable one-byte code for the object header.
///
/// The codec maps the safetensors dtype through its name, so new safetensors variants (integers,
/// fp8) are rejected here instead of being silently mis-cast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FloatDtype {
    F32,
    F16,
    BF16,
    F64,
}

impl FloatDtype {
    pub(crate) fn from_dtype(dtype: &Dtype) -> Result<Self, UltraDeltaError> {
        match dtype.as_str() {
            "F32" => Ok(Self::F32),
            "F16" => Ok(Self::F16),
            "BF16" => Ok(Self::BF16),
            "F64" => Ok(Self::F64),
            other => Err(UltraDeltaError::UnsupportedDtype(other.to_string())),
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::BF16 => 2,
            Self::F64 => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            2 => Some(Self::BF16),
            3 => Some(Self::F64),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F64 => "F64",
        }
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 2,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// Reconstructs one element as the stored dtype would hold it: `base + delta`, rounded to
    /// nearest even for the 16-bit dtypes, returned widened to f64 for error sums.
    ///
    /// F64 tensors reach the codec as f32 values, so their base is already rounded to f32 here.
    pub(crate) fn reconstruct_value(self, base: f32, delta: f32) -> f64 {
        match self {
            Self::F32 => f64::from(base + delta),
            Self::F16 => f16::from_f32(base + delta).to_f64(),
            Self::BF16 => bf16::from_f32(base + delta).to_f64(),
            Self::F64 => f64::from(base) + f64::from(delta),
        }
    }
}

/// Converts little-endian tensor bytes of `dtype` to f32 values.
///
/// F64 values are rounded to f32, so an F64 delta is computed at f32 precision.
pub fn values_from_bytes(bytes: &[u8], dtype: &Dtype) -> Result<Vec<f32>, UltraDeltaError> {
    let float = FloatDtype::from_dtype(dtype)?;
    float_values_from_bytes(bytes, float)
}

pub(crate) fn float_values_from_bytes(
    bytes: &[u8],
    dtype: FloatDtype,
) -> Result<Vec<f32>, UltraDeltaError> {
    let size = dtype.size();
    if bytes.len() % size != 0 {
        return Err(UltraDeltaError::InvalidInput {
            name: String::new(),
            reason: format!(
                "{} bytes is not a whole number of {} elements of {size} bytes",
                bytes.len(),
                dtype.name()
            ),
        });
    }
    let values = match dtype {
        FloatDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        FloatDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        FloatDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        FloatDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
    };
    Ok(values)
}

/// Converts f32 values to little-endian bytes of `dtype`, rounding to nearest even.
pub fn values_to_bytes(values: &[f32], dtype: &Dtype) -> Result<Vec<u8>, UltraDeltaError> {
    let float = FloatDtype::from_dtype(dtype)?;
    let mut out = Vec::with_capacity(values.len() * float.size());
    for &v in values {
        match float {
            FloatDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
            FloatDtype::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
            FloatDtype::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            FloatDtype::F64 => out.extend_from_slice(&f64::from(v).to_le_bytes()),
        }
    }
    Ok(out)
}

/// Adds `delta` to the base bytes element by element and returns bytes of the same dtype.
///
/// The sum is taken in f32 and rounded to nearest even for F16 and BF16, and in f64 for F64, so
/// an F64 base keeps its full precision.
pub(crate) fn add_delta_to_bytes(base: &[u8], dtype: FloatDtype, delta: &[f32]) -> Vec<u8> {
    let size = dtype.size();
    let mut out = vec![0u8; base.len()];
    for ((src, dst), &d) in base
        .chunks_exact(size)
        .zip(out.chunks_exact_mut(size))
        .zip(delta)
    {
        match dtype {
            FloatDtype::F32 => {
                let b = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                dst.copy_from_slice(&(b + d).to_le_bytes());
            }
            FloatDtype::F16 => {
                let b = f16::from_le_bytes([src[0], src[1]]).to_f32();
                dst.copy_from_slice(&f16::from_f32(b + d).to_le_bytes());
            }
            FloatDtype::BF16 => {
                let b = bf16::from_le_bytes([src[0], src[1]]).to_f32();
                dst.copy_from_slice(&bf16::from_f32(b + d).to_le_bytes());
            }
            FloatDtype::F64 => {
                let b = f64::from_le_bytes([
                    src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
                ]);
                dst.copy_from_slice(&(b + f64::from(d)).to_le_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_sum_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7, so it rounds to the even 1.
        let base = bf16::from_f32(1.0).to_le_bytes();
        let out = add_delta_to_bytes(&base, FloatDtype::BF16, &[2f32.powi(-8)]);
        assert_eq!(bf16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6, so it rounds to 1 + 2^-6.
        let out = add_delta_to_bytes(&base, FloatDtype::BF16, &[3.0 * 2f32.powi(-8)]);
        assert_eq!(
            bf16::from_le_bytes([out[0], out[1]]).to_f32(),
            1.0 + 2f32.powi(-6)
        );
    }

    #[test]
    fn dtype_codes_round_trip() {
        for dtype in [
            FloatDtype::F32,
            FloatDtype::F16,
            FloatDtype::BF16,
            FloatDtype::F64,
        ] {
            assert_eq!(FloatDtype::from_code(dtype.code()), Some(dtype));
        }
        assert_eq!(FloatDtype::from_code(4), None);
    }
}
