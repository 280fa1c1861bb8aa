//! Data-free fidelity and size accounting of encoded tensors and commits.

use rayon::prelude::*;
use serde::Serialize;

use super::allocate::Band;
use super::dtype::FloatDtype;
use super::entropy::ValueCoding;
use super::positions::PositionCoding;
use super::quantize::CHUNK;

/// Sums of squares comparing a reconstructed tensor with the exact fine-tune.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Fidelity {
    /// `||W_rec - W_ft||^2`, with `W_rec` cast to the tensor's dtype.
    pub weight_error_sq: f64,
    /// `||W_ft||^2`.
    pub weight_sq: f64,
    /// `||delta_rec - delta||^2`.
    pub delta_error_sq: f64,
    /// `||delta||^2`.
    pub delta_sq: f64,
    /// `||delta_rec||^2`.
    pub decoded_sq: f64,
    /// `<delta_rec, delta>`.
    pub dot: f64,
}

impl Fidelity {
    /// Measures `decoded` against `finetuned - base`. Sums run over fixed chunks and combine in
    /// order, so the result does not depend on the thread count.
    pub(crate) fn measure(
        base: &[f32],
        finetuned: &[f32],
        decoded: &[f32],
        dtype: FloatDtype,
    ) -> Self {
        let parts: Vec<Fidelity> = base
            .par_chunks(CHUNK)
            .zip(finetuned.par_chunks(CHUNK))
            .zip(decoded.par_chunks(CHUNK))
            .map(|((b, f), d)| {
                let mut part = Fidelity::default();
                for ((&b, &f), &d) in b.iter().zip(f).zip(d) {
                    let rec = dtype.reconstruct_value(b, d);
                    let ft = f64::from(f);
                    let exact = f64::from(f - b);
                    let dec = f64::from(d);
                    part.weight_error_sq += (rec - ft) * (rec - ft);
                    part.weight_sq += ft * ft;
                    part.delta_error_sq += (dec - exact) * (dec - exact);
                    part.delta_sq += exact * exact;
                    part.decoded_sq += dec * dec;
                    part.dot += dec * exact;
                }
                part
            })
            .collect();
        parts.iter().fold(Fidelity::default(), |acc, p| acc.add(p))
    }

    pub(crate) fn add(&self, other: &Fidelity) -> Fidelity {
        Fidelity {
            weight_error_sq: self.weight_error_sq + other.weight_error_sq,
            weight_sq: self.weight_sq + other.weight_sq,
            delta_error_sq: self.delta_error_sq + other.delta_error_sq,
            delta_sq: self.delta_sq + other.delta_sq,
            decoded_sq: self.decoded_sq + other.decoded_sq,
            dot: self.dot + other.dot,
        }
    }

    /// `||W_rec - W_ft|| / ||W_ft||`; 0 when both are 0, infinite when only `W_ft` is 0.
    pub(crate) fn rel_error(&self) -> f64 {
        ratio_of_norms(self.weight_error_sq, self.weight_sq)
    }

    /// Returns whether the reconstruction meets the budget: relative weight error at most
    /// `max_error`, and the fine-tune's change kept to within [`super::MAX_DELTA_ERROR`] of its
    /// norm. The second bound matters when the whole delta is smaller than `max_error` allows,
    /// because dropping every entry (the base itself) would otherwise pass.
    pub(crate) fn within_budget(&self, max_error: f64) -> bool {
        // `W_rec - W_ft` is the error of the delta as the dtype stores it, so
        // `weight_error_sq` measures the kept change after the cast.
        let keeps_delta = self.weight_error_sq <= super::MAX_DELTA_ERROR * super::MAX_DELTA_ERROR * self.delta_sq;
        self.rel_error() <= max_error && keeps_delta
    }

    pub(crate) fn delta_rel_error(&self) -> f64 {
        ratio_of_norms(self.delta_error_sq, self.delta_sq)
    }

    /// Cosine similarity of the decoded and exact deltas; 1 when both are 0, 0 when one is.
    pub(crate) fn delta_cosine(&self) -> f64 {
        if self.delta_sq == 0.0 && self.decoded_sq == 0.0 {
            1.0
        } else if self.delta_sq == 0.0 || self.decoded_sq == 0.0 {
            0.0
        } else {
            self.dot / (self.delta_sq.sqrt() * self.decoded_sq.sqrt())
        }
    }
}

fn ratio_of_norms(error_sq: f64, reference_sq: f64) -> f64 {
    if error_sq == 0.0 {
        0.0
    } else if reference_sq == 0.0 {
        f64::INFINITY
    } else {
        (error_sq / reference_sq).sqrt()
    }
}

/// Storage layout of one object, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutKind {
    /// Every code stored in element order; nothing was pruned.
    Dense,
    /// Kept positions stored with their codes.
    Grouped,
    /// Drop mask replayed from the seed; only codes stored.
    Seeded,
}

/// Per-tensor report of one encoding.
#[derive(Clone, Debug, Serialize)]
pub struct TensorStats {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub numel: u64,
    /// Quantization bits.
    pub bits: u8,
    /// Variance band in explicit mode; none in budget mode.
    pub band: Option<Band>,
    /// Rate this tensor was allocated (explicit mode) or chosen (budget mode).
    pub target_sparsity: f64,
    /// Fraction of elements that decode to 0: pruned ones plus those at an exact-zero level.
    pub sparsity: f64,
    /// Elements removed by pruning.
    pub dropped: u64,
    /// Codes stored in the object.
    pub kept: u64,
    /// `extra / (1 - p)` applied to every kept value.
    pub rescale: f64,
    pub trace_norm_factor: f64,
    pub layout: LayoutKind,
    pub position_coding: Option<PositionCoding>,
    pub value_coding: ValueCoding,
    /// `||W_rec - W_ft|| / ||W_ft||`, with `W_rec` cast back to the tensor's dtype.
    pub rel_error: f64,
    /// `||delta_rec - delta|| / ||delta||`.
    pub delta_rel_error: f64,
    /// Cosine similarity of the decoded and exact deltas.
    pub delta_cosine: f64,
    /// Whether `rel_error <= max_error` and the delta is kept to `MAX_DELTA_ERROR` (see
    /// `Fidelity::within_budget`). Budget mode stores a tensor lossily only when this holds.
    pub within_budget: bool,
    /// Bytes of the values section.
    pub value_bytes: u64,
    /// Bytes of the positions section (0 in dense and seeded layouts).
    pub position_bytes: u64,
    /// Bytes of the whole object, header and checksum included.
    pub object_bytes: u64,
    /// Bytes of the tensor in its dtype.
    pub original_bytes: u64,
}

/// Whole-commit report.
#[derive(Clone, Debug, Serialize)]
pub struct CommitStats {
    /// Explicit settings (the four published steps) or per-tensor budget search.
    pub mode: &'static str,
    pub tensors: usize,
    pub numel: u64,
    pub original_bytes: u64,
    /// Sum of all object sizes, headers and checksums included.
    pub stored_bytes: u64,
    /// `original_bytes / stored_bytes`.
    pub ratio: f64,
    pub value_bytes: u64,
    pub position_bytes: u64,
    /// `8 * stored_bytes / numel`.
    pub bits_per_parameter: f64,
    /// `16 * numel / (8 * (value_bytes + position_bytes))`: the published way of counting, with
    /// 16-bit weights and without headers.
    pub paper_ratio: f64,
    /// `1/(1-p) * 16/b`, the nominal ratio quoted for the method, in explicit mode.
    pub nominal_ratio: Option<f64>,
    /// Parameter-weighted mean of the per-tensor `sparsity`.
    pub sparsity: f64,
    /// `||delta_rec - delta|| / ||delta||` over all tensors together.
    pub delta_rel_error: f64,
    /// Cosine similarity of the whole decoded and exact deltas.
    pub delta_cosine: f64,
    /// Largest per-tensor `rel_error`, and the tensor it belongs to.
    pub max_rel_error: f64,
    pub worst_tensor: Option<String>,
    pub max_error: f64,
    /// Whether every tensor is within `max_error`.
    pub within_budget: bool,
}

impl CommitStats {
    pub(crate) fn summarise(
        mode: &'static str,
        stats: &[TensorStats],
        fidelities: &[Fidelity],
        max_error: f64,
        nominal_ratio: Option<f64>,
    ) -> Self {
        let numel: u64 = stats.iter().map(|s| s.numel).sum();
        let original_bytes: u64 = stats.iter().map(|s| s.original_bytes).sum();
        let stored_bytes: u64 = stats.iter().map(|s| s.object_bytes).sum();
        let value_bytes: u64 = stats.iter().map(|s| s.value_bytes).sum();
        let position_bytes: u64 = stats.iter().map(|s| s.position_bytes).sum();
        let total = fidelities
            .iter()
            .fold(Fidelity::default(), |acc, f| acc.add(f));
        let worst = stats
            .iter()
            .max_by(|a, b| a.rel_error.total_cmp(&b.rel_error));
        let weighted_sparsity: f64 = stats.iter().map(|s| s.sparsity * s.numel as f64).sum();
        let per_param = |x: f64| if numel == 0 { 0.0 } else { x / numel as f64 };
        let payload_bits = 8 * (value_bytes + position_bytes);
        Self {
            mode,
            tensors: stats.len(),
            numel,
            original_bytes,
            stored_bytes,
            ratio: if stored_bytes == 0 {
                0.0
            } else {
                original_bytes as f64 / stored_bytes as f64
            },
            value_bytes,
            position_bytes,
            bits_per_parameter: per_param(8.0 * stored_bytes as f64),
            paper_ratio: if payload_bits == 0 {
                0.0
            } else {
                16.0 * numel as f64 / payload_bits as f64
            },
            nominal_ratio,
            sparsity: per_param(weighted_sparsity),
            delta_rel_error: total.delta_rel_error(),
            delta_cosine: total.delta_cosine(),
            max_rel_error: worst.map_or(0.0, |s| s.rel_error),
            worst_tensor: worst.map(|s| s.name.clone()),
            max_error,
            within_budget: stats.iter().all(|s| s.within_budget),
        }
    }
}
