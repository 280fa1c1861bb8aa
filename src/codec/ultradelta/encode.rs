//! One tensor through quantization, pruning and rescaling into an object, and back.

use rayon::prelude::*;

use super::dtype::FloatDtype;
use super::entropy::{self, ValueCoding};
use super::object::{self, Header, Layout};
use super::positions::{self, PositionCoding};
use super::prune;
use super::quantize::{Quantizer, CHUNK};
use super::{MaskMode, UltraDeltaError};

/// Everything chosen for one tensor before it is encoded.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorPlan {
    pub bits: u8,
    /// Rate `r_t` for this tensor.
    pub tensor_sparsity: f64,
    /// The `p` of the `1 / (1 - p)` rescale.
    pub commit_sparsity: f64,
    /// `extra / (1 - p)`.
    pub rescale: f64,
    pub trace_norm_factor: f64,
    pub mask_mode: MaskMode,
    pub seed: u64,
    pub value_coding: ValueCoding,
}

/// A quantized and pruned tensor, before entropy coding.
pub(crate) struct Pruned {
    pub quantizer: Quantizer,
    pub layout: PrunedLayout,
    /// Codes of the stored elements, in element order.
    pub kept_codes: Vec<u8>,
    pub dropped: u64,
    pub numel: u64,
    /// Elements that decode to 0 structurally: dropped, or at an exact-zero level.
    pub zeros: u64,
}

pub(crate) enum PrunedLayout {
    Dense,
    Grouped(Vec<u64>),
    Seeded,
}

/// Rate applied to the non-zero entries so the tensor ends with `rate` zeros overall:
/// `max(0, (rate - z) / (1 - z))` for a zero fraction `z`.
fn rate_beyond_zeros(rate: f64, zeros: u64, numel: u64) -> f64 {
    if numel == 0 || zeros >= numel {
        return 0.0;
    }
    let z = zeros as f64 / numel as f64;
    ((rate - z) / (1.0 - z)).clamp(0.0, 1.0)
}

fn histogram_of(codes: &[u8]) -> [u64; 256] {
    let parts: Vec<[u64; 256]> = codes
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut counts = [0u64; 256];
            for &c in chunk {
                counts[usize::from(c)] += 1;
            }
            counts
        })
        .collect();
    let mut counts = [0u64; 256];
    for part in &parts {
        for (total, n) in counts.iter_mut().zip(part) {
            *total += n;
        }
    }
    counts
}

/// Steps 1 and 3: quantizes `finetuned - base` and prunes it according to the plan.
pub(crate) fn prune_tensor(base: &[f32], finetuned: &[f32], plan: &TensorPlan) -> Pruned {
    let quantizer = Quantizer::fit(base, finetuned, plan.bits);
    let codes = quantizer.codes(base, finetuned);
    let histogram = histogram_of(&codes);
    let zero_code = quantizer.zero_code();
    let zero_count = zero_code.map_or(0, |c| histogram[usize::from(c)]);
    let numel = codes.len() as u64;
    let rate = rate_beyond_zeros(plan.tensor_sparsity, zero_count, numel);

    match plan.mask_mode {
        MaskMode::Grouped => {
            let drops = prune::group_drop_counts(&histogram, zero_code, rate);
            let dropped: u64 = drops.iter().sum();
            if dropped == 0 {
                return Pruned {
                    quantizer,
                    layout: PrunedLayout::Dense,
                    kept_codes: codes,
                    dropped,
                    numel,
                    zeros: zero_count,
                };
            }
            let kept =
                prune::grouped_kept_positions(&codes, &histogram, &drops, zero_code, plan.seed);
            let kept_codes = kept.iter().map(|&i| codes[i as usize]).collect();
            let zeros = numel - kept.len() as u64;
            Pruned {
                quantizer,
                layout: PrunedLayout::Grouped(kept),
                kept_codes,
                dropped,
                numel,
                zeros,
            }
        }
        MaskMode::Seeded => {
            let dropped = (numel as f64 * rate).round() as u64;
            if dropped == 0 {
                return Pruned {
                    quantizer,
                    layout: PrunedLayout::Dense,
                    kept_codes: codes,
                    dropped,
                    numel,
                    zeros: zero_count,
                };
            }
            let mut kept_codes = Vec::with_capacity((numel - dropped) as usize);
            let mut zeros = 0u64;
            prune::for_each_seeded(numel, dropped, plan.seed, |i, drop| {
                let code = codes[i as usize];
                if drop {
                    zeros += 1;
                } else {
                    zeros += u64::from(Some(code) == zero_code);
                    kept_codes.push(code);
                }
            });
            Pruned {
                quantizer,
                layout: PrunedLayout::Seeded,
                kept_codes,
                dropped,
                numel,
                zeros,
            }
        }
    }
}

/// Decoded value of each of the 256 codes: `(min + code * step) * scale`, rounded to f32.
fn value_table(min: f64, step: f64, scale: f64) -> [f32; 256] {
    let mut table = [0f32; 256];
    for (c, v) in table.iter_mut().enumerate() {
        *v = ((min + c as f64 * step) * scale) as f32;
    }
    table
}

/// Rebuilds the f32 delta from stored codes. Encoder and decoder share this function, so the
/// fidelity measured at encode time is the fidelity a checkout gets.
pub(crate) fn expand(
    numel: u64,
    header_grid: (f64, f64, f64),
    layout: &PrunedLayout,
    kept_codes: &[u8],
    dropped: u64,
    seed: u64,
) -> Vec<f32> {
    let (min, step, scale) = header_grid;
    let table = value_table(min, step, scale);
    let mut out = vec![0f32; numel as usize];
    match layout {
        PrunedLayout::Dense => {
            out.par_chunks_mut(CHUNK)
                .zip(kept_codes.par_chunks(CHUNK))
                .for_each(|(o, c)| {
                    for (o, &c) in o.iter_mut().zip(c) {
                        *o = table[usize::from(c)];
                    }
                });
        }
        PrunedLayout::Grouped(positions) => {
            for (&p, &c) in positions.iter().zip(kept_codes) {
                out[p as usize] = table[usize::from(c)];
            }
        }
        PrunedLayout::Seeded => {
            let mut codes = kept_codes.iter();
            prune::for_each_seeded(numel, dropped, seed, |i, drop| {
                if !drop {
                    if let Some(&c) = codes.next() {
                        out[i as usize] = table[usize::from(c)];
                    }
                }
            });
        }
    }
    out
}

impl Pruned {
    pub(crate) fn decoded(&self, plan: &TensorPlan) -> Vec<f32> {
        expand(
            self.numel,
            (
                self.quantizer.min,
                self.quantizer.step,
                plan.rescale * plan.trace_norm_factor,
            ),
            &self.layout,
            &self.kept_codes,
            self.dropped,
            plan.seed,
        )
    }
}

/// An encoded tensor with the section sizes the report needs.
pub(crate) struct EncodedTensor {
    pub payload: Vec<u8>,
    pub position_coding: Option<PositionCoding>,
    pub value_bytes: u64,
    pub position_bytes: u64,
    pub dropped: u64,
    pub zeros: u64,
    pub kept: u64,
}

/// Entropy-codes a pruned tensor and writes its object.
pub(crate) fn write_object(
    pruned: &Pruned,
    shape: &[u64],
    dtype: FloatDtype,
    plan: &TensorPlan,
) -> EncodedTensor {
    let (layout, position_bytes) = match &pruned.layout {
        PrunedLayout::Dense => (Layout::Dense, Vec::new()),
        PrunedLayout::Grouped(kept) => {
            let numel = shape.iter().product();
            let (coding, bytes) = positions::encode(kept, numel);
            (Layout::Grouped(coding), bytes)
        }
        PrunedLayout::Seeded => (Layout::Seeded, Vec::new()),
    };
    let values = entropy::encode(plan.value_coding, &pruned.kept_codes);
    let header = Header {
        dtype,
        bits: plan.bits,
        mask_mode: plan.mask_mode,
        layout,
        value_coding: plan.value_coding,
        shape: shape.to_vec(),
        min: pruned.quantizer.min,
        step: pruned.quantizer.step,
        tensor_sparsity: plan.tensor_sparsity,
        commit_sparsity: plan.commit_sparsity,
        rescale: plan.rescale,
        trace_norm_factor: plan.trace_norm_factor,
        seed: plan.seed,
        kept: pruned.kept_codes.len() as u64,
    };
    let payload = object::write(&header, &position_bytes, &values);
    EncodedTensor {
        payload,
        position_coding: match layout {
            Layout::Grouped(coding) => Some(coding),
            _ => None,
        },
        value_bytes: values.len() as u64,
        position_bytes: position_bytes.len() as u64,
        dropped: pruned.dropped,
        zeros: pruned.zeros,
        kept: pruned.kept_codes.len() as u64,
    }
}

/// Decodes an object to its delta; `apply_trace_norm_factor` false leaves the frozen factor out,
/// which the trace-norm computation of a family needs.
pub(crate) fn decode_object(
    payload: &[u8],
    expected_numel: Option<u64>,
    apply_trace_norm_factor: bool,
) -> Result<(Header, Vec<f32>), UltraDeltaError> {
    let object = object::parse(payload)?;
    let header = object.header;
    let numel = header.numel();
    if let Some(expected) = expected_numel {
        if expected != numel {
            return Err(UltraDeltaError::Corrupt(format!(
                "object contains {numel} elements, but the base tensor has {expected}"
            )));
        }
    }

    let kept = header.kept;
    let layout = match header.layout {
        Layout::Dense => PrunedLayout::Dense,
        Layout::Grouped(coding) => {
            PrunedLayout::Grouped(positions::decode(coding, object.positions, kept, numel)?)
        }
        Layout::Seeded => PrunedLayout::Seeded,
    };
    let codes = entropy::decode(header.value_coding, object.values, kept as usize)?;
    let max_code = ((1u32 << header.bits) - 1) as u8;
    if codes.iter().any(|&c| c > max_code) {
        return Err(UltraDeltaError::Corrupt(format!(
            "code above {max_code} for {} bits",
            header.bits
        )));
    }
    let scale = if apply_trace_norm_factor {
        header.scale()
    } else {
        header.rescale
    };
    let delta = expand(
        numel,
        (header.min, header.step, scale),
        &layout,
        &codes,
        numel - kept,
        header.seed,
    );
    Ok((header, delta))
}
