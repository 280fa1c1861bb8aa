//! UltraDelta: lossy per-tensor delta compression without calibration data.
//!
//! The method comes from X. Wang et al., "Breaking the Compression Ceiling: Data-Free Pipeline
//! for Ultra-Efficient Delta Compression" (arXiv 2505.13563). With explicit settings a commit
//! goes through its four steps:
//!
//! 1. per-tensor uniform quantization of `finetuned - base` (`quantize.rs`);
//! 2. three-band sparsity allocation by the standard deviation of the quantized deltas
//!    (`allocate.rs`);
//! 3. random pruning that removes the same share of every quantization level (`prune.rs`);
//! 4. a `1 / (1 - p)` rescale times an optional factor, and a trace-norm factor shared by the
//!    fine-tunes of one base (`trace_norm.rs`).
//!
//! Without explicit settings each tensor gets the smallest object whose weight error fits a
//! budget (`budget.rs`).
//!
//! Choices the method leaves open, and how they are made here:
//!
//! - Storage (`object.rs`): in `Grouped` mode the kept positions are stored as Golomb-Rice or
//!   Elias-Fano codes, whichever is smaller per tensor. In `Seeded` mode the drop mask is
//!   replayed from the recorded seed, independently of the values, so no positions are stored.
//!   Codes are entropy-coded with an order-0 rANS coder (`entropy.rs`).
//! - Per-level drop counts are `floor(n_g * q)`, plus one for the levels with the largest
//!   remainders, so each level is within one of `n_g * q` and the tensor drops exactly
//!   `round(n * q)` non-zero entries.
//! - Randomness is ChaCha8 keyed by BLAKE3 of (commit seed, tensor name), so objects are the same
//!   bytes on any machine and thread count.
//!
//! Measured defaults. `tests::measure_storage_choices` encodes one synthetic 2048 x 1024 f32
//! tensor (base uniform in [-0.1, 0.1], Laplace delta of scale 1e-3, seeds fixed, so the sizes
//! are exact on any machine) and prints every combination; rerun it with
//! `cargo test --lib codec::ultradelta::tests::measure -- --ignored --nocapture`. Bytes per
//! tensor, at 4 bits:
//!
//! | p | kept | rANS | zstd -19 | order-0 entropy | Rice | Elias-Fano | grouped object | seeded object | delta cosine grouped / seeded |
//! |---|---|---|---|---|---|---|---|---|---|
//! | 0 | 2097152 | 429820 | 472657 | 429640 | - | - | 429940 (dense) | 429940 (dense) | 0.9174 |
//! | 0.5 | 1048576 | 214923 | 236309 | 214820 | 262145 | 393218 | 477188 | 214941 | 0.6486 / 0.6484 |
//! | 0.9 | 209715 | 43020 | 47336 | 42963 | 124675 | 137627 | 167815 | 43136 | 0.2901 / 0.2899 |
//! | 0.97 | 62915 | 12939 | 14219 | 12889 | 51849 | 55380 | 64908 | 13112 | 0.1586 / 0.1598 |
//! | 0.99 | 20972 | 4340 | 4770 | 4296 | 21257 | 22448 | 25717 | 4488 | 0.0918 / 0.0923 |
//!
//! - rANS stays within 0.5 % of the order-0 entropy. It is 9 to 10 % smaller than zstd level
//!   19 at 4 bits, up to 33 % smaller at 2 bits, and within 1.2 % either way at 8 bits. rANS is
//!   the default value coding.
//! - Golomb-Rice beats Elias-Fano on every row (6.6 bits per kept position at p = 0.97); the
//!   encoder still picks the smaller of the two per tensor.
//! - At equal fidelity (the same relative error and cosine within sampling noise), seeded objects
//!   are 2.2 to 5.7 times smaller than grouped ones, because positions cost more than the codes.
//!   `Seeded` is therefore the default mask mode; `Grouped` keeps the exact per-level counts.
//!   NOTE: measured on synthetic Laplace deltas only; real fine-tunes may differ.

mod allocate;
mod budget;
mod dtype;
mod encode;
mod entropy;
mod lanczos;
mod object;
mod positions;
mod prune;
mod quantize;
mod stats;
mod trace_norm;

use rayon::prelude::*;

pub use allocate::Band;
pub use dtype::{values_from_bytes, values_to_bytes};
pub use entropy::ValueCoding;
pub use object::with_trace_norm_factor;
pub use positions::PositionCoding;
pub use stats::{CommitStats, LayoutKind, TensorStats};
pub use trace_norm::{estimated_trace_norm, exact_trace_norm, family_factors, trace_norm};

use crate::format::safetensors::Dtype;
use dtype::FloatDtype;
use encode::{decode_object, prune_tensor, write_object, EncodedTensor, TensorPlan};
use object::{Layout, MAX_NDIM, MAX_NUMEL};
use stats::Fidelity;

/// Relative weight error `||W_rec - W_ft|| / ||W_ft||` allowed per tensor when no explicit
/// sparsity and bits are given.
///
/// Chosen from the rxnfp output check in docs/BENCHMARKS.md: the largest budget tried whose
/// reconstructions keep a [CLS] cosine of at least 0.999 and full top-1 agreement.
pub const DEFAULT_MAX_ERROR: f64 = 1e-3;

/// Largest `||W_rec - W_ft|| / ||W_ft - W_base||` the budget accepts on top of `max_error`: a
/// lossy tensor must be at least twice as close to the fine-tune as the base is, so it keeps
/// the fine-tuned change and not only the weights. Without it a fine-tune whose whole change
/// was smaller than `max_error` could be stored as (nearly) the base itself.
///
/// Random pruning at rate `s` with rescale costs about `sqrt(s / (1 - s))` of the delta, so
/// this bound lets budget mode prune up to about 20 %. The budget runs measured at 1e-3
/// (rxnfp) and 2e-3 (the 7B shape) pruned nothing and kept the delta error near 0.012.
/// Explicit settings are not bound by it.
pub const MAX_DELTA_ERROR: f64 = 0.5;

/// Sparsity step between the variance bands, as in the published runs.
pub const DEFAULT_STEP: f64 = 0.01;

/// Rule that chooses the dropped entries of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskMode {
    /// Exact counts per quantization level; kept positions are stored.
    Grouped,
    /// A value-independent mask replayed from the seed; no positions are stored.
    Seeded,
}

/// Encoding settings of one commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Target mean sparsity `p` in `[0, 1)`. `None` searches per tensor within `max_error`.
    pub sparsity: Option<f64>,
    /// Quantization bits, 1 to 8. With `sparsity` set and `bits` unset, 4 bits; with both unset,
    /// searched from 2 to 8; with only `bits` set, only sparsity is searched.
    pub bits: Option<u8>,
    /// Sparsity step `s` between the variance bands.
    pub step: f64,
    /// Extra factor on the `1 / (1 - p)` rescale.
    pub extra_rescale: f64,
    pub mask_mode: MaskMode,
    /// Per-tensor budget on `||W_rec - W_ft|| / ||W_ft||`. In explicit mode it only flags
    /// tensors over budget in the report.
    pub max_error: f64,
    /// Commit seed; each tensor's mask seed is derived from it and the tensor name.
    pub seed: u64,
    pub value_coding: ValueCoding,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sparsity: None,
            bits: None,
            step: DEFAULT_STEP,
            extra_rescale: 1.0,
            mask_mode: MaskMode::Seeded,
            max_error: DEFAULT_MAX_ERROR,
            seed: 0,
            value_coding: ValueCoding::Rans,
        }
    }
}

/// One tensor to compress: row-major f32 values of the base and the fine-tune, and its shape.
#[derive(Clone, Copy, Debug)]
pub struct TensorDelta<'a> {
    pub name: &'a str,
    pub shape: &'a [u64],
    pub base: &'a [f32],
    pub finetuned: &'a [f32],
}

/// Objects of one commit, in input order, with their reports.
#[derive(Clone, Debug)]
pub struct EncodedCommit {
    pub objects: Vec<Vec<u8>>,
    pub stats: Vec<TensorStats>,
    pub summary: CommitStats,
}

#[derive(Debug, thiserror::Error)]
pub enum UltraDeltaError {
    #[error("invalid tensor {name:?}: {reason}")]
    InvalidInput { name: String, reason: String },
    #[error("invalid ultradelta settings: {0}")]
    InvalidSettings(String),
    #[error("dtype {0} is not supported by the ultradelta codec; store the tensor with the lossless codec")]
    UnsupportedDtype(String),
    #[error("corrupt ultradelta object: {0}")]
    Corrupt(String),
}

/// One tensor's plan, its encoding, and its variance band in explicit mode.
type Choice = (TensorPlan, EncodedTensor, Option<Band>);

fn validate_settings(settings: &Settings, trace_norm_factor: f64) -> Result<(), UltraDeltaError> {
    let invalid = |what: String| Err(UltraDeltaError::InvalidSettings(what));
    if let Some(p) = settings.sparsity {
        if !(0.0..1.0).contains(&p) {
            return invalid(format!("sparsity {p} must be in [0, 1)"));
        }
    }
    if let Some(bits) = settings.bits {
        if !(1..=8).contains(&bits) {
            return invalid(format!("bits {bits} must be 1 to 8"));
        }
    }
    if !settings.step.is_finite() || settings.step < 0.0 {
        return invalid(format!(
            "step {} must be finite and at least 0",
            settings.step
        ));
    }
    if !settings.extra_rescale.is_finite() || settings.extra_rescale <= 0.0 {
        return invalid(format!(
            "extra rescale {} must be finite and positive",
            settings.extra_rescale
        ));
    }
    if !settings.max_error.is_finite() || settings.max_error < 0.0 {
        return invalid(format!(
            "max error {} must be finite and at least 0",
            settings.max_error
        ));
    }
    if !trace_norm_factor.is_finite() || trace_norm_factor <= 0.0 {
        return invalid(format!(
            "trace-norm factor {trace_norm_factor} must be finite and positive"
        ));
    }
    Ok(())
}

fn validate_tensor(tensor: &TensorDelta) -> Result<(), UltraDeltaError> {
    let invalid = |reason: String| {
        Err(UltraDeltaError::InvalidInput {
            name: tensor.name.to_string(),
            reason,
        })
    };
    if tensor.shape.len() > MAX_NDIM {
        return invalid(format!(
            "{} dimensions, at most {MAX_NDIM} supported",
            tensor.shape.len()
        ));
    }
    let numel = tensor
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_NUMEL);
    let Some(numel) = numel else {
        return invalid(format!(
            "shape {:?} has more than {MAX_NUMEL} elements",
            tensor.shape
        ));
    };
    if tensor.base.len() as u64 != numel || tensor.finetuned.len() as u64 != numel {
        return invalid(format!(
            "shape {:?} has {numel} elements, but base has {} and fine-tune {}",
            tensor.shape,
            tensor.base.len(),
            tensor.finetuned.len()
        ));
    }
    let finite = tensor
        .base
        .par_iter()
        .zip(tensor.finetuned.par_iter())
        .all(|(b, f)| (f - b).is_finite());
    if !finite {
        return invalid(
            "base or fine-tune has a non-finite value or delta; store it with the lossless codec"
                .into(),
        );
    }
    Ok(())
}

/// Encodes the tensors of one commit.
///
/// With `settings.sparsity` set, the four published steps run: per-tensor quantization,
/// three-band allocation across all given tensors, per-level random pruning, and the
/// `extra / (1 - p)` rescale. Otherwise each tensor gets the sparsity (upwards from 0) and bits
/// (2 to 8, or `settings.bits`) with the fewest object bytes whose relative reconstruction error
/// `||W_rec - W_ft|| / ||W_ft||`, measured after casting back to its dtype, is within
/// `settings.max_error`. `trace_norm_factor` multiplies every delta and is frozen in the objects.
pub fn encode_commit(
    tensors: &[TensorDelta],
    dtypes: &[Dtype],
    settings: &Settings,
    trace_norm_factor: f64,
) -> Result<EncodedCommit, UltraDeltaError> {
    encode_tensors(tensors, dtypes, settings, trace_norm_factor, None)
}

/// Sparsity of each tensor of a commit from the three-band allocation (step 2), computed once
/// over all its tensors so that they can then be encoded a batch at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct SparsityPlan {
    pub rates: Vec<f64>,
    pub bands: Vec<Band>,
}

/// Standard deviation of each tensor's quantized delta at `bits`, the input of
/// [`allocate_sparsity`]. Needs one tensor batch at a time, not the whole commit.
pub fn quantized_std_devs(tensors: &[TensorDelta], bits: u8) -> Result<Vec<f64>, UltraDeltaError> {
    if !(1..=8).contains(&bits) {
        return Err(UltraDeltaError::InvalidSettings(format!("bits {bits} must be 1 to 8")));
    }
    tensors.par_iter().try_for_each(validate_tensor)?;
    Ok(tensors
        .par_iter()
        .map(|t| {
            let q = quantize::Quantizer::fit(t.base, t.finetuned, bits);
            q.std_dev(&q.histogram(t.base, t.finetuned))
        })
        .collect())
}

/// Three-band allocation over all tensors of a commit, from their quantized standard
/// deviations and element counts, for target mean sparsity `p` and band step `step`.
pub fn allocate_sparsity(std_devs: &[f64], numels: &[u64], p: f64, step: f64) -> SparsityPlan {
    let allocation = allocate::allocate(std_devs, numels, p, step);
    SparsityPlan { rates: allocation.rates, bands: allocation.bands }
}

/// Encodes some tensors of a commit in explicit mode with rates and bands allocated over the
/// whole commit by [`allocate_sparsity`]. `rates[i]` and `bands[i]` belong to `tensors[i]`.
/// The result is identical to encoding all tensors in one [`encode_commit`] call.
pub fn encode_allocated(
    tensors: &[TensorDelta],
    dtypes: &[Dtype],
    settings: &Settings,
    trace_norm_factor: f64,
    rates: &[f64],
    bands: &[Band],
) -> Result<EncodedCommit, UltraDeltaError> {
    if settings.sparsity.is_none() {
        return Err(UltraDeltaError::InvalidSettings("an allocated encoding needs an explicit sparsity".into()));
    }
    if rates.len() != tensors.len() || bands.len() != tensors.len() {
        return Err(UltraDeltaError::InvalidSettings(format!(
            "{} rates and {} bands given for {} tensors",
            rates.len(),
            bands.len(),
            tensors.len()
        )));
    }
    encode_tensors(tensors, dtypes, settings, trace_norm_factor, Some((rates, bands)))
}

fn encode_tensors(
    tensors: &[TensorDelta],
    dtypes: &[Dtype],
    settings: &Settings,
    trace_norm_factor: f64,
    allocated: Option<(&[f64], &[Band])>,
) -> Result<EncodedCommit, UltraDeltaError> {
    validate_settings(settings, trace_norm_factor)?;
    if dtypes.len() != tensors.len() {
        return Err(UltraDeltaError::InvalidSettings(format!(
            "{} dtypes given for {} tensors",
            dtypes.len(),
            tensors.len()
        )));
    }
    let float_dtypes: Vec<FloatDtype> = dtypes
        .iter()
        .map(FloatDtype::from_dtype)
        .collect::<Result<_, _>>()?;
    tensors.par_iter().try_for_each(validate_tensor)?;

    let template = |tensor: &TensorDelta| TensorPlan {
        bits: 4,
        tensor_sparsity: 0.0,
        commit_sparsity: 0.0,
        rescale: settings.extra_rescale,
        trace_norm_factor,
        mask_mode: settings.mask_mode,
        seed: prune::tensor_seed(settings.seed, tensor.name),
        value_coding: settings.value_coding,
    };

    let (mode, nominal_ratio, choices): (&'static str, Option<f64>, Vec<Choice>) = match settings
        .sparsity
    {
        Some(p) => {
            let bits = settings.bits.unwrap_or(4);
            let owned;
            let (rates, bands) = match allocated {
                Some(given) => given,
                None => {
                    let std_devs = quantized_std_devs(tensors, bits)?;
                    let numels: Vec<u64> = tensors.iter().map(|t| t.base.len() as u64).collect();
                    owned = allocate_sparsity(&std_devs, &numels, p, settings.step);
                    (&owned.rates[..], &owned.bands[..])
                }
            };
            let choices = tensors
                .par_iter()
                .zip(float_dtypes.par_iter())
                .enumerate()
                .map(|(i, (t, &dtype))| {
                    let plan = TensorPlan {
                        bits,
                        tensor_sparsity: rates[i],
                        commit_sparsity: p,
                        rescale: settings.extra_rescale / (1.0 - p),
                        ..template(t)
                    };
                    let pruned = prune_tensor(t.base, t.finetuned, &plan);
                    let encoded = write_object(&pruned, t.shape, dtype, &plan);
                    (plan, encoded, Some(bands[i]))
                })
                .collect();
            (
                "explicit",
                Some(16.0 / f64::from(bits) / (1.0 - p)),
                choices,
            )
        }
        None => {
            let (min_bits, max_bits) = settings.bits.map_or((2, 8), |b| (b, b));
            let limits = budget::Budget {
                min_bits,
                max_bits,
                max_error: settings.max_error,
                extra_rescale: settings.extra_rescale,
            };
            let choices = tensors
                .par_iter()
                .zip(float_dtypes.par_iter())
                .map(|(t, &dtype)| {
                    let choice =
                        budget::search(t.base, t.finetuned, t.shape, dtype, &template(t), &limits);
                    (choice.plan, choice.encoded, None)
                })
                .collect();
            ("budget", None, choices)
        }
    };

    // Fidelity is measured on the decoded objects, so a format bug shows up as error here.
    let measured: Vec<(TensorStats, Fidelity)> = tensors
        .par_iter()
        .zip(float_dtypes.par_iter())
        .zip(choices.par_iter())
        .map(|((t, &dtype), (plan, encoded, band))| {
            let (_, decoded) = decode_object(&encoded.payload, Some(t.base.len() as u64), true)?;
            let fidelity = Fidelity::measure(t.base, t.finetuned, &decoded, dtype);
            Ok((
                tensor_stats(
                    t,
                    dtype,
                    plan,
                    encoded,
                    *band,
                    &fidelity,
                    settings.max_error,
                ),
                fidelity,
            ))
        })
        .collect::<Result<_, UltraDeltaError>>()?;
    let (stats, fidelities): (Vec<TensorStats>, Vec<Fidelity>) = measured.into_iter().unzip();
    let summary =
        CommitStats::summarise(mode, &stats, &fidelities, settings.max_error, nominal_ratio);
    let objects = choices
        .into_iter()
        .map(|(_, encoded, _)| encoded.payload)
        .collect();
    Ok(EncodedCommit {
        objects,
        stats,
        summary,
    })
}

fn tensor_stats(
    tensor: &TensorDelta,
    dtype: FloatDtype,
    plan: &TensorPlan,
    encoded: &EncodedTensor,
    band: Option<Band>,
    fidelity: &Fidelity,
    max_error: f64,
) -> TensorStats {
    let numel = tensor.base.len() as u64;
    let layout = match (encoded.position_coding, encoded.dropped) {
        (Some(_), _) => LayoutKind::Grouped,
        (None, 0) => LayoutKind::Dense,
        (None, _) => LayoutKind::Seeded,
    };
    let rel_error = fidelity.rel_error();
    TensorStats {
        name: tensor.name.to_string(),
        dtype: dtype.name(),
        shape: tensor.shape.to_vec(),
        numel,
        bits: plan.bits,
        band,
        target_sparsity: plan.tensor_sparsity,
        sparsity: if numel == 0 {
            0.0
        } else {
            encoded.zeros as f64 / numel as f64
        },
        dropped: encoded.dropped,
        kept: encoded.kept,
        rescale: plan.rescale,
        trace_norm_factor: plan.trace_norm_factor,
        layout,
        position_coding: encoded.position_coding,
        value_coding: plan.value_coding,
        rel_error,
        delta_rel_error: fidelity.delta_rel_error(),
        delta_cosine: fidelity.delta_cosine(),
        within_budget: fidelity.within_budget(max_error),
        value_bytes: encoded.value_bytes,
        position_bytes: encoded.position_bytes,
        object_bytes: encoded.payload.len() as u64,
        original_bytes: numel * dtype.size() as u64,
    }
}

/// Decodes one object to its f32 delta, rescale and trace-norm factors applied.
///
/// NOTE: the output size comes from the shape in the (checksummed) header, up to 2^32 elements.
/// Callers that know the tensor's size should prefer [`reconstruct`], which checks it first.
pub fn decode_delta(payload: &[u8]) -> Result<Vec<f32>, UltraDeltaError> {
    decode_object(payload, None, true).map(|(_, delta)| delta)
}

/// Rebuilds the tensor bytes: `base + delta` in the tensor's dtype, rounded to nearest even.
pub fn reconstruct(
    base_bytes: &[u8],
    dtype: &Dtype,
    payload: &[u8],
) -> Result<Vec<u8>, UltraDeltaError> {
    let float = FloatDtype::from_dtype(dtype)?;
    let header = object::parse(payload)?.header;
    if header.dtype != float {
        return Err(UltraDeltaError::Corrupt(format!(
            "object was written for dtype {}, but the base tensor is {}",
            header.dtype.name(),
            float.name()
        )));
    }
    let numel = header.numel();
    if base_bytes.len() as u64 != numel * float.size() as u64 {
        return Err(UltraDeltaError::Corrupt(format!(
            "base tensor has {} bytes, but the object's shape {:?} needs {}",
            base_bytes.len(),
            header.shape,
            numel * float.size() as u64
        )));
    }
    let (_, delta) = decode_object(payload, Some(numel), true)?;
    Ok(dtype::add_delta_to_bytes(base_bytes, float, &delta))
}

/// Trace norm of one object's 2-D delta after pruning and the `1/(1-p)` rescale, without its
/// frozen trace-norm factor; `None` for tensors that are not 2-D.
pub fn object_trace_norm(payload: &[u8]) -> Result<Option<f64>, UltraDeltaError> {
    let (header, delta) = decode_object(payload, None, false)?;
    match header.shape[..] {
        [rows, cols] => Ok(Some(trace_norm(&delta, rows as usize, cols as usize))),
        _ => Ok(None),
    }
}

/// Trace norm of a commit: the sum over its 2-D objects, the input of [`family_factors`].
pub fn commit_trace_norm(objects: &[Vec<u8>]) -> Result<f64, UltraDeltaError> {
    let norms: Vec<Option<f64>> = objects
        .par_iter()
        .map(|o| object_trace_norm(o))
        .collect::<Result<_, _>>()?;
    Ok(norms.into_iter().flatten().sum())
}

/// Reads the storage layout of a stored object, for reports.
pub fn object_layout(payload: &[u8]) -> Result<LayoutKind, UltraDeltaError> {
    Ok(match object::parse(payload)?.header.layout {
        Layout::Dense => LayoutKind::Dense,
        Layout::Grouped(_) => LayoutKind::Grouped,
        Layout::Seeded => LayoutKind::Seeded,
    })
}

#[cfg(test)]
mod tests;
