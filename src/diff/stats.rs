//! Element-wise comparison of two tensors' bytes, decoded per dtype and accumulated in f64.

use half::{bf16, f16};
use rayon::prelude::*;
use serde::Serialize;

use crate::format::safetensors::Dtype;

/// Elements decoded per rayon task. Each task uses two f64 buffers of this length (1 MiB).
const CHUNK_ELEMENTS: usize = 1 << 16;

/// A dtype whose elements decode to real numbers. Every other dtype is compared bytewise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Numeric {
    Bool,
    U8,
    I8,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl Numeric {
    /// Returns the numeric view of `dtype`, or `None` for dtypes compared bytewise (8-bit and
    /// sub-byte floats, complex, unknown).
    pub(crate) fn of(dtype: &Dtype) -> Option<Numeric> {
        Some(match dtype {
            Dtype::Bool => Numeric::Bool,
            Dtype::U8 => Numeric::U8,
            Dtype::I8 => Numeric::I8,
            Dtype::U16 => Numeric::U16,
            Dtype::I16 => Numeric::I16,
            Dtype::F16 => Numeric::F16,
            Dtype::BF16 => Numeric::BF16,
            Dtype::U32 => Numeric::U32,
            Dtype::I32 => Numeric::I32,
            Dtype::F32 => Numeric::F32,
            Dtype::U64 => Numeric::U64,
            Dtype::I64 => Numeric::I64,
            Dtype::F64 => Numeric::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            Numeric::Bool | Numeric::U8 | Numeric::I8 => 1,
            Numeric::U16 | Numeric::I16 | Numeric::F16 | Numeric::BF16 => 2,
            Numeric::U32 | Numeric::I32 | Numeric::F32 => 4,
            Numeric::U64 | Numeric::I64 | Numeric::F64 => 8,
        }
    }

    /// Decodes little-endian elements into `out`, one per `size()` bytes of `bytes`.
    /// 64-bit integers above 2^53 in magnitude round to the nearest f64.
    fn decode(self, bytes: &[u8], out: &mut [f64]) {
        let pairs = out.iter_mut().zip(bytes.chunks_exact(self.size()));
        match self {
            Numeric::Bool => pairs.for_each(|(o, c)| *o = f64::from(u8::from(c.iter().any(|&byte| byte != 0)))),
            Numeric::U8 => pairs.for_each(|(o, c)| *o = f64::from(u8::from_le_bytes(array(c)))),
            Numeric::I8 => pairs.for_each(|(o, c)| *o = f64::from(i8::from_le_bytes(array(c)))),
            Numeric::U16 => pairs.for_each(|(o, c)| *o = f64::from(u16::from_le_bytes(array(c)))),
            Numeric::I16 => pairs.for_each(|(o, c)| *o = f64::from(i16::from_le_bytes(array(c)))),
            Numeric::F16 => pairs.for_each(|(o, c)| *o = f16::from_le_bytes(array(c)).to_f64()),
            Numeric::BF16 => pairs.for_each(|(o, c)| *o = bf16::from_le_bytes(array(c)).to_f64()),
            Numeric::U32 => pairs.for_each(|(o, c)| *o = f64::from(u32::from_le_bytes(array(c)))),
            Numeric::I32 => pairs.for_each(|(o, c)| *o = f64::from(i32::from_le_bytes(array(c)))),
            Numeric::F32 => pairs.for_each(|(o, c)| *o = f64::from(f32::from_le_bytes(array(c)))),
            Numeric::U64 => pairs.for_each(|(o, c)| *o = u64::from_le_bytes(array(c)) as f64),
            Numeric::I64 => pairs.for_each(|(o, c)| *o = i64::from_le_bytes(array(c)) as f64),
            Numeric::F64 => pairs.for_each(|(o, c)| *o = f64::from_le_bytes(array(c))),
        }
    }
}

/// Copies a chunk from `chunks_exact(N)` into an array; the chunk always has N bytes.
fn array<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(chunk);
    out
}

/// When an element counts as different: `|a - b| > atol + rtol * |a|`, as in `numpy.isclose`
/// with A as the reference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

/// Sums over the elements of one tensor pair, or of one chunk of it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Sums {
    pub elements: u64,
    pub a_squared: f64,
    pub b_squared: f64,
    pub dot: f64,
    pub diff_squared: f64,
    pub max_abs_diff: f64,
    /// An element pair had exactly one NaN, so its difference is undefined.
    pub nan_diff: bool,
    pub differing: u64,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.elements += other.elements;
        self.a_squared += other.a_squared;
        self.b_squared += other.b_squared;
        self.dot += other.dot;
        self.diff_squared += other.diff_squared;
        self.max_abs_diff = self.max_abs_diff.max(other.max_abs_diff);
        self.nan_diff |= other.nan_diff;
        self.differing += other.differing;
    }

    fn accumulate(&mut self, a: &[f64], b: &[f64], tolerance: Tolerance) {
        for (&x, &y) in a.iter().zip(b) {
            // Equal elements (both NaN, or the same infinity, included) differ by exactly 0.
            let d = if x == y || (x.is_nan() && y.is_nan()) { 0.0 } else { y - x };
            self.a_squared += x * x;
            self.b_squared += y * y;
            self.dot += x * y;
            self.diff_squared += d * d;
            let abs = d.abs();
            if abs.is_nan() {
                self.nan_diff = true;
                self.differing += 1;
            } else {
                self.max_abs_diff = self.max_abs_diff.max(abs);
                if abs > tolerance.atol + tolerance.rtol * x.abs() {
                    self.differing += 1;
                }
            }
        }
        self.elements += a.len().min(b.len()) as u64;
    }
}

/// Compares `elements` values of dtype `a_type` in `a` with those of `b_type` in `b`. Chunks
/// run in parallel and their sums are added in chunk order, so the result does not depend on
/// the thread count. Both slices must hold exactly `elements` values.
pub(crate) fn compare_values(a: &[u8], a_type: Numeric, b: &[u8], b_type: Numeric, tolerance: Tolerance) -> Sums {
    let elements = (a.len() / a_type.size()).min(b.len() / b_type.size());
    let chunks = elements.div_ceil(CHUNK_ELEMENTS);
    let parts: Vec<Sums> = (0..chunks)
        .into_par_iter()
        .map_init(
            || (vec![0f64; CHUNK_ELEMENTS], vec![0f64; CHUNK_ELEMENTS]),
            |(a_values, b_values), chunk| {
                let first = chunk * CHUNK_ELEMENTS;
                let count = CHUNK_ELEMENTS.min(elements - first);
                let a_bytes = a.get(first * a_type.size()..(first + count) * a_type.size()).unwrap_or_default();
                let b_bytes = b.get(first * b_type.size()..(first + count) * b_type.size()).unwrap_or_default();
                let (a_values, b_values) = (&mut a_values[..count], &mut b_values[..count]);
                a_type.decode(a_bytes, a_values);
                b_type.decode(b_bytes, b_values);
                let mut sums = Sums::default();
                sums.accumulate(a_values, b_values, tolerance);
                // f64 represents integers exactly only up to 2^53, so exact 64-bit integer
                // comparisons count differing elements from their bytes.
                let exact = tolerance.atol == 0.0 && tolerance.rtol == 0.0;
                if exact && a_type == b_type && matches!(a_type, Numeric::U64 | Numeric::I64) {
                    sums.differing = count_differing_units(a_bytes, b_bytes, Some(8));
                }
                sums
            },
        )
        .collect();
    let mut total = Sums::default();
    for part in &parts {
        total.add(part);
    }
    total
}

/// Counts the elements of `element_size` bytes that differ between two equally long byte
/// strings. `None` as the size (sub-byte and unknown dtypes) counts differing bytes instead.
pub(crate) fn count_differing_units(a: &[u8], b: &[u8], element_size: Option<usize>) -> u64 {
    let size = element_size.unwrap_or(1).max(1);
    // Whole elements per task, so no element is split between two tasks.
    let span = (CHUNK_ELEMENTS / size).max(1) * size;
    a.par_chunks(span)
        .zip(b.par_chunks(span))
        .map(|(x, y)| x.chunks(size).zip(y.chunks(size)).filter(|(p, q)| p != q).count() as u64)
        .sum()
}

/// Per-tensor figures derived from `Sums`. Norms are Euclidean (Frobenius) norms over all
/// elements. `None` marks a figure that is undefined (a ratio over a zero norm); NaN marks a
/// figure a NaN element made undefined, and is written as `null` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Figures {
    /// ||A||
    pub a_norm: f64,
    /// ||B||
    pub b_norm: f64,
    /// ||B - A||
    pub diff_norm: f64,
    /// ||B - A|| / ||A||; `None` when ||A|| is 0 and B differs.
    pub relative_change: Option<f64>,
    /// <A, B> / (||A|| ||B||); `None` when either norm is 0.
    pub cosine: Option<f64>,
    /// max |B - A|
    pub max_abs_diff: f64,
    /// Share of elements that differ beyond the tolerance, 0 to 1.
    pub differing_fraction: f64,
}

impl Figures {
    pub(crate) fn from_sums(sums: &Sums) -> Figures {
        let a_norm = sums.a_squared.sqrt();
        let b_norm = sums.b_squared.sqrt();
        let diff_norm = sums.diff_squared.sqrt();
        let relative_change = if a_norm > 0.0 {
            Some(diff_norm / a_norm)
        } else if diff_norm == 0.0 {
            Some(0.0)
        } else {
            None
        };
        let cosine = (a_norm > 0.0 && b_norm > 0.0).then(|| sums.dot / (a_norm * b_norm));
        let max_abs_diff = if sums.nan_diff { f64::NAN } else { sums.max_abs_diff };
        let differing_fraction = if sums.elements == 0 { 0.0 } else { sums.differing as f64 / sums.elements as f64 };
        Figures { a_norm, b_norm, diff_norm, relative_change, cosine, max_abs_diff, differing_fraction }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXACT: Tolerance = Tolerance { atol: 0.0, rtol: 0.0 };

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn figures_of_small_f32_pair() {
        let a = f32_bytes(&[1.0, 2.0, 2.0, 4.0]);
        let b = f32_bytes(&[1.0, 2.0, 2.0, 7.0]);
        let figures = Figures::from_sums(&compare_values(&a, Numeric::F32, &b, Numeric::F32, EXACT));
        assert_eq!(figures.a_norm, 5.0);
        assert_eq!(figures.b_norm, 58f64.sqrt());
        assert_eq!(figures.diff_norm, 3.0);
        assert_eq!(figures.relative_change, Some(0.6));
        assert_eq!(figures.cosine, Some(37.0 / (5.0 * 58f64.sqrt())));
        assert_eq!(figures.max_abs_diff, 3.0);
        assert_eq!(figures.differing_fraction, 0.25);
    }

    #[test]
    fn tolerance_hides_small_differences() {
        let a = f32_bytes(&[1.0, 4.0]);
        let b = f32_bytes(&[1.5, 7.0]);
        let count = |atol, rtol| compare_values(&a, Numeric::F32, &b, Numeric::F32, Tolerance { atol, rtol }).differing;
        assert_eq!(count(0.0, 0.0), 2);
        assert_eq!(count(0.5, 0.0), 1);
        assert_eq!(count(3.0, 0.0), 0);
        assert_eq!(count(0.0, 0.75), 0);
        assert_eq!(count(0.0, 0.7), 1);
    }

    #[test]
    fn half_and_integer_dtypes_decode() {
        let a: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect();
        let b: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        let sums = compare_values(&a, Numeric::BF16, &b, Numeric::F16, EXACT);
        assert_eq!(sums.differing, 0);
        assert_eq!(sums.a_squared, 6.25);

        let a: Vec<u8> = [-3i32, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [-3i64, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let sums = compare_values(&a, Numeric::I32, &b, Numeric::I64, EXACT);
        assert_eq!(sums.diff_squared, 16.0);
        assert_eq!(sums.dot, 54.0);

        // 2^53 and 2^53 + 1 are one f64, but they differ.
        let a: Vec<u8> = [1i64 << 53, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [(1i64 << 53) + 1, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(compare_values(&a, Numeric::I64, &b, Numeric::I64, EXACT).differing, 1);
        let a: Vec<u8> = [u64::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [u64::MAX - 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(compare_values(&a, Numeric::U64, &b, Numeric::U64, EXACT).differing, 1);
        let sums = compare_values(&[0, 1, 7], Numeric::Bool, &[0, 1, 1], Numeric::Bool, EXACT);
        assert_eq!(sums.differing, 0);
        assert_eq!(sums.a_squared, 2.0);
    }

    #[test]
    fn nan_elements_compare_equal_only_to_nan() {
        let a = f32_bytes(&[f32::NAN, f32::NAN, 1.0]);
        let b = f32_bytes(&[f32::NAN, 2.0, 1.0]);
        let sums = compare_values(&a, Numeric::F32, &b, Numeric::F32, EXACT);
        assert_eq!(sums.differing, 1);
        assert!(sums.nan_diff);
        assert!(Figures::from_sums(&sums).max_abs_diff.is_nan());
    }

    #[test]
    fn zero_norms_leave_ratios_undefined() {
        let zeros = f32_bytes(&[0.0, 0.0]);
        let ones = f32_bytes(&[1.0, 1.0]);
        let same = Figures::from_sums(&compare_values(&zeros, Numeric::F32, &zeros, Numeric::F32, EXACT));
        assert_eq!(same.relative_change, Some(0.0));
        assert_eq!(same.cosine, None);
        let grown = Figures::from_sums(&compare_values(&zeros, Numeric::F32, &ones, Numeric::F32, EXACT));
        assert_eq!(grown.relative_change, None);
        assert_eq!(grown.diff_norm, 2f64.sqrt());
    }

    #[test]
    fn sums_do_not_depend_on_chunking() {
        let n = CHUNK_ELEMENTS * 3 + 17;
        let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() + if i % 5 == 0 { 1e-3 } else { 0.0 }).collect();
        let (a, b) = (f32_bytes(&a), f32_bytes(&b));
        let first = compare_values(&a, Numeric::F32, &b, Numeric::F32, EXACT);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let single = pool.install(|| compare_values(&a, Numeric::F32, &b, Numeric::F32, EXACT));
        assert_eq!(first, single);
        assert_eq!(first.elements, n as u64);
        assert_eq!(first.differing, n.div_ceil(5) as u64);
    }

    #[test]
    fn differing_units_count_elements_or_bytes() {
        let a = [1u8, 2, 3, 4, 5, 6];
        let b = [1u8, 2, 3, 9, 5, 7];
        assert_eq!(count_differing_units(&a, &b, Some(2)), 2);
        assert_eq!(count_differing_units(&a, &b, Some(3)), 1);
        assert_eq!(count_differing_units(&a, &b, Some(6)), 1);
        assert_eq!(count_differing_units(&a, &b, None), 2);
    }
}
