//! Comparing one matched pair of tensors and classifying the result.

use serde::Serialize;

use super::source::{is_raw, Side, TensorBytes, TensorRef};
use super::stats::{compare_values, count_differing_units, Figures, Numeric, Tolerance};
use crate::error::Error;
use crate::id::ObjectId;
use crate::store::Store;

/// Classification of a tensor pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorStatus {
    /// Same name (after mapping), dtype and shape, and no element differs beyond the tolerance.
    Unchanged,
    /// Same dtype and shape, some element differs beyond the tolerance.
    Changed,
    /// Only in B.
    Added,
    /// Only in A.
    Removed,
    ShapeChanged,
    /// Same shape, different dtype. Values are still compared when both dtypes are numeric.
    DtypeChanged,
}

impl TensorStatus {
    pub const ALL: [TensorStatus; 6] = [
        TensorStatus::Unchanged,
        TensorStatus::Changed,
        TensorStatus::Added,
        TensorStatus::Removed,
        TensorStatus::ShapeChanged,
        TensorStatus::DtypeChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TensorStatus::Unchanged => "unchanged",
            TensorStatus::Changed => "changed",
            TensorStatus::Added => "added",
            TensorStatus::Removed => "removed",
            TensorStatus::ShapeChanged => "shape_changed",
            TensorStatus::DtypeChanged => "dtype_changed",
        }
    }
}

impl std::str::FromStr for TensorStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        TensorStatus::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            let names: Vec<&str> = TensorStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown status {text:?}; expected one of {}", names.join(", "))
        })
    }
}

/// Depth of a pair's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Equal BLAKE3 hashes or equal bytes: unchanged without an element-wise pass. The
    /// norms are still computed from one side's values.
    Hash,
    /// Element by element, decoded to f64.
    Values,
    /// Byte by byte, for dtypes that are not decoded (8-bit and sub-byte floats, complex,
    /// unknown).
    Bytes,
    /// Not compared: the tensor is on one side only, or its shape or dtype changed.
    None,
}

/// One row of the diff: a tensor of A, of B, or a matched pair.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TensorDiff {
    /// A's tensor name, or B's for an added tensor.
    pub name: String,
    /// B's tensor name when a name mapping made it differ from `name`.
    pub name_b: Option<String>,
    pub status: TensorStatus,
    pub dtype_a: Option<String>,
    pub dtype_b: Option<String>,
    pub shape_a: Option<Vec<u64>>,
    pub shape_b: Option<Vec<u64>>,
    /// A's element count, or B's for an added tensor.
    pub elements: u64,
    pub comparison: Comparison,
    /// ||A||, ||B|| and ||B - A||, Euclidean over all elements.
    pub a_norm: Option<f64>,
    pub b_norm: Option<f64>,
    pub diff_norm: Option<f64>,
    /// ||B - A|| / ||A||.
    pub relative_change: Option<f64>,
    pub cosine: Option<f64>,
    pub max_abs_diff: Option<f64>,
    /// Share of elements (bytes for sub-byte and unknown dtypes) that differ, 0 to 1.
    pub differing_fraction: Option<f64>,
}

impl TensorDiff {
    fn new(a: Option<&TensorRef<'_>>, b: Option<&TensorRef<'_>>, status: TensorStatus) -> TensorDiff {
        let name = a.or(b).map(|t| t.name.to_string()).unwrap_or_default();
        let name_b = b.map(|t| t.name.to_string()).filter(|n| *n != name);
        TensorDiff {
            name,
            name_b,
            status,
            dtype_a: a.map(|t| t.dtype.as_str().to_string()),
            dtype_b: b.map(|t| t.dtype.as_str().to_string()),
            shape_a: a.map(|t| t.shape.to_vec()),
            shape_b: b.map(|t| t.shape.to_vec()),
            elements: a.or(b).map(element_count).unwrap_or(0),
            comparison: Comparison::None,
            a_norm: None,
            b_norm: None,
            diff_norm: None,
            relative_change: None,
            cosine: None,
            max_abs_diff: None,
            differing_fraction: None,
        }
    }

    fn with_figures(mut self, figures: &Figures, comparison: Comparison) -> TensorDiff {
        self.comparison = comparison;
        self.a_norm = Some(figures.a_norm);
        self.b_norm = Some(figures.b_norm);
        self.diff_norm = Some(figures.diff_norm);
        self.relative_change = figures.relative_change;
        self.cosine = figures.cosine;
        self.max_abs_diff = Some(figures.max_abs_diff);
        self.differing_fraction = Some(figures.differing_fraction);
        self
    }
}

/// Multiplies out a shape, saturating instead of overflowing (a parsed header never overflows).
fn element_count(tensor: &TensorRef<'_>) -> u64 {
    tensor.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).unwrap_or(u64::MAX)
}

/// The store and the two sides a pair is read from.
pub(crate) struct PairReader<'s> {
    pub store: Option<&'s Store>,
    pub a: &'s Side,
    pub b: &'s Side,
    pub tolerance: Tolerance,
}

impl PairReader<'_> {
    /// Compares one row, then releases the pages of file tensors.
    pub(crate) fn compare(&self, a: Option<&TensorRef<'_>>, b: Option<&TensorRef<'_>>) -> Result<TensorDiff, Error> {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => return Ok(TensorDiff::new(Some(a), None, TensorStatus::Removed)),
            (None, b) => return Ok(TensorDiff::new(None, b, TensorStatus::Added)),
        };
        let result = self.compare_present(a, b);
        self.a.release(a);
        self.b.release(b);
        result
    }

    fn compare_present(&self, a: &TensorRef<'_>, b: &TensorRef<'_>) -> Result<TensorDiff, Error> {
        if a.shape != b.shape {
            return Ok(TensorDiff::new(Some(a), Some(b), TensorStatus::ShapeChanged));
        }
        let (a_numeric, b_numeric) = (Numeric::of(&a.dtype), Numeric::of(&b.dtype));
        if a.dtype != b.dtype {
            let row = TensorDiff::new(Some(a), Some(b), TensorStatus::DtypeChanged);
            let (Some(a_type), Some(b_type)) = (a_numeric, b_numeric) else { return Ok(row) };
            let a_bytes = self.read(self.a, a, a_type)?;
            let b_bytes = self.read(self.b, b, b_type)?;
            let sums = compare_values(&a_bytes, a_type, &b_bytes, b_type, self.tolerance);
            return Ok(row.with_figures(&Figures::from_sums(&sums), Comparison::Values));
        }

        if let Some(same) = self.compare_by_hash(a, b, a_numeric)? {
            return Ok(same);
        }
        let a_bytes = self.a.bytes(self.store, a)?;
        let b_bytes = self.b.bytes(self.store, b)?;
        self.compare_bytes(a, b, a_numeric, &a_bytes, &b_bytes)
    }

    /// Returns the unchanged row when both tensors have the same BLAKE3, or for two files the
    /// same bytes. Returns `None` when they differ.
    fn compare_by_hash(&self, a: &TensorRef<'_>, b: &TensorRef<'_>, numeric: Option<Numeric>) -> Result<Option<TensorDiff>, Error> {
        let (known_a, known_b) = (Side::known_hash(a), Side::known_hash(b));
        let values: TensorBytes<'_> = match (known_a, known_b) {
            (Some(hash_a), Some(hash_b)) => {
                if hash_a != hash_b {
                    return Ok(None);
                }
                // Either side has the same bytes; read the one that needs no delta applied.
                if is_raw(b) && !is_raw(a) {
                    self.b.bytes(self.store, b)?
                } else {
                    self.a.bytes(self.store, a)?
                }
            }
            (Some(hash), None) | (None, Some(hash)) => {
                let (side, file_tensor) = if known_a.is_none() { (self.a, a) } else { (self.b, b) };
                let bytes = side.bytes(self.store, file_tensor)?;
                if ObjectId::of_large(&bytes) != hash {
                    return Ok(None);
                }
                bytes
            }
            (None, None) => {
                let a_bytes = self.a.bytes(self.store, a)?;
                let b_bytes = self.b.bytes(self.store, b)?;
                if *a_bytes != *b_bytes {
                    return Ok(None);
                }
                a_bytes
            }
        };
        let row = TensorDiff::new(Some(a), Some(b), TensorStatus::Unchanged);
        let Some(numeric) = numeric else {
            let mut row = row;
            row.comparison = Comparison::Hash;
            row.differing_fraction = Some(0.0);
            return Ok(Some(row));
        };
        check_length(a, &values, numeric)?;
        let sums = compare_values(&values, numeric, &values, numeric, self.tolerance);
        Ok(Some(row.with_figures(&Figures::from_sums(&sums), Comparison::Hash)))
    }

    fn compare_bytes(
        &self,
        a: &TensorRef<'_>,
        b: &TensorRef<'_>,
        numeric: Option<Numeric>,
        a_bytes: &[u8],
        b_bytes: &[u8],
    ) -> Result<TensorDiff, Error> {
        if let Some(numeric) = numeric {
            check_length(a, a_bytes, numeric)?;
            check_length(b, b_bytes, numeric)?;
            let sums = compare_values(a_bytes, numeric, b_bytes, numeric, self.tolerance);
            let status = if sums.differing == 0 { TensorStatus::Unchanged } else { TensorStatus::Changed };
            return Ok(TensorDiff::new(Some(a), Some(b), status).with_figures(&Figures::from_sums(&sums), Comparison::Values));
        }
        // Dtypes that are not decoded compare by bytes, whole elements where the size is whole
        // bytes. The tolerance does not apply to them.
        let element_size = a.dtype.bits().filter(|bits| bits % 8 == 0).map(|bits| (bits / 8) as usize);
        let units = match element_size {
            Some(size) if size > 0 => (a_bytes.len() / size) as u64,
            _ => a_bytes.len() as u64,
        };
        let differing = if a_bytes.len() == b_bytes.len() {
            count_differing_units(a_bytes, b_bytes, element_size)
        } else {
            units.max(1)
        };
        let status = if differing == 0 { TensorStatus::Unchanged } else { TensorStatus::Changed };
        let mut row = TensorDiff::new(Some(a), Some(b), status);
        row.comparison = Comparison::Bytes;
        row.differing_fraction = Some(if units == 0 { 0.0 } else { (differing as f64 / units as f64).min(1.0) });
        Ok(row)
    }

    fn read<'s>(&self, side: &'s Side, tensor: &TensorRef<'_>, numeric: Numeric) -> Result<TensorBytes<'s>, Error> {
        let bytes = side.bytes(self.store, tensor)?;
        check_length(tensor, &bytes, numeric)?;
        Ok(bytes)
    }
}

/// Checks that a tensor's bytes hold exactly its shape's element count.
fn check_length(tensor: &TensorRef<'_>, bytes: &[u8], numeric: Numeric) -> Result<(), Error> {
    let expected = element_count(tensor).checked_mul(numeric.size() as u64);
    if expected != Some(bytes.len() as u64) {
        return Err(Error::InvalidArgument {
            what: format!("tensor {:?}", tensor.name),
            detail: format!(
                "has {} bytes, but its shape {:?} and dtype {} need {}",
                bytes.len(),
                tensor.shape,
                tensor.dtype,
                expected.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
            ),
        });
    }
    Ok(())
}
