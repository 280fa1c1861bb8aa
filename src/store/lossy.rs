//! Choosing and encoding the tensors of a commit that the UltraDelta codec stores lossily.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Store;
use crate::catalog::TensorEntry;
use crate::checkpoint::{Checkpoint, FileBytes};
use crate::codec::ultradelta::{self, Band, MaskMode, Settings, SparsityPlan, TensorDelta, TensorStats};
use crate::error::Error;
use crate::format::safetensors::{Dtype, TensorInfo};
use crate::id::ObjectId;

/// Tensors below this many elements are stored exactly: their deltas cost little, and
/// vectors such as biases and norm scales are sensitive to error.
pub const MIN_LOSSY_ELEMENTS: u64 = 4096;

/// Parameters per batch handed to the codec. The batch bounds memory at about 16 bytes per
/// parameter, as f32 copies.
const BATCH_PARAMETERS: u64 = 64 << 20;

/// UltraDelta options of one commit.
#[derive(Debug, Clone, Default)]
pub struct LossyOptions {
    pub settings: Settings,
    /// Store the commit even if tensors exceed `settings.max_error` in explicit mode.
    pub accept_error: bool,
    pub policy: TensorPolicy,
}

/// Selection of the tensors that go through the lossy codec. By default: floating-point tensors of two or
/// more dimensions with at least `MIN_LOSSY_ELEMENTS` elements and a base tensor of the same
/// name, dtype and shape. `include` patterns add tensors that the default leaves out (still
/// only float tensors with a matching base tensor); `exclude` patterns win over everything.
#[derive(Debug, Clone, Default)]
pub struct TensorPolicy {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl TensorPolicy {
    pub fn is_lossy(&self, info: &TensorInfo) -> bool {
        let float = matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16);
        if !float || self.exclude.iter().any(|p| glob_match(p, &info.name)) {
            return false;
        }
        let numel = info.numel().unwrap_or(0);
        let default = info.shape.len() >= 2 && numel >= MIN_LOSSY_ELEMENTS;
        default || self.include.iter().any(|p| glob_match(p, &info.name))
    }
}

/// Matches `name` against a pattern where `*` stands for any run of characters and `?` for
/// one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((star_p, star_n)) = star {
            pi = star_p + 1;
            ni = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// One tensor encoded lossily, ready to store.
#[derive(Debug, Clone)]
pub struct LossyTensor {
    pub payload: Vec<u8>,
    /// BLAKE3 of the reconstructed bytes: what a checkout returns and verifies.
    pub rebuilt_hash: ObjectId,
    pub stats: TensorStats,
}

/// Report of the codec on one commit, recorded in its codec parameters and printed by `commit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossyReport {
    pub mode: String,
    pub tensors: usize,
    /// Sum of the lossy tensors' original and encoded bytes.
    pub original_bytes: u64,
    pub object_bytes: u64,
    /// Published-style ratio: 16 bits per weight against value plus position bytes.
    pub paper_ratio: f64,
    pub bits_per_parameter: f64,
    pub sparsity: f64,
    /// Largest per-tensor `||W_rec - W_ft|| / ||W_ft||`, and its tensor.
    pub max_rel_error: f64,
    pub worst_tensor: Option<String>,
    /// `||delta_rec - delta|| / ||delta||` and cosine over all lossy tensors together.
    pub delta_rel_error: f64,
    pub delta_cosine: f64,
    pub max_error: f64,
    pub trace_norm: Option<f64>,
    pub trace_norm_factor: f64,
    /// Tensors over `max_error`, worst first (explicit settings only).
    pub over_budget: Vec<(String, f64)>,
}

/// A tensor selected for lossy coding.
struct Candidate<'a> {
    info: &'a TensorInfo,
    bytes: &'a [u8],
    base: &'a TensorEntry,
    /// The mapped input file and the tensor's offset in it, to release pages once read.
    file: &'a FileBytes,
    offset: usize,
}

impl Candidate<'_> {
    fn release(&self) {
        self.file.release(self.offset, self.bytes.len());
    }
}

impl Store {
    /// Encodes the lossy tensors of `checkpoint`; the result maps fine-tune tensor names to
    /// their objects. `lookup` gives each tensor's base entry of the same dtype and shape.
    pub(crate) fn encode_lossy<'a>(
        &self,
        checkpoint: &'a Checkpoint,
        lookup: &(dyn Fn(&TensorInfo) -> Option<&'a TensorEntry> + Sync),
        options: &LossyOptions,
        family_trace_norms: &[f64],
    ) -> Result<(HashMap<String, LossyTensor>, Option<LossyReport>), Error> {
        let mut candidates = Vec::new();
        for file in &checkpoint.files {
            let Some(header) = &file.header else { continue };
            let data_start = header.data_start() as usize;
            for info in &header.tensors {
                let Some(base) = lookup(info) else { continue };
                if !options.policy.is_lossy(info) {
                    continue;
                }
                let offset = data_start + info.start as usize;
                let bytes = &file.data.bytes()[offset..data_start + info.end as usize];
                candidates.push(Candidate { info, bytes, base, file: &file.data, offset });
            }
        }
        // A tensor equal to its base stays a reference to it.
        let unchanged: Vec<bool> = candidates
            .par_iter()
            .map(|c| {
                let same = ObjectId::of_large(c.bytes) == c.base.hash;
                c.release();
                same
            })
            .collect();
        let mut keep = unchanged.iter().map(|u| !u);
        candidates.retain(|_| keep.next().unwrap_or(true));
        if candidates.is_empty() {
            return Ok((HashMap::new(), None));
        }

        let settings = &options.settings;
        let explicit = settings.sparsity.is_some();
        // Batches bound the memory: f32 copies of one batch at a time. Explicit settings
        // allocate sparsity across all tensors, so a first pass over the batches collects the
        // statistics the allocation needs, and the second encodes with the allocated rates.
        let batches = batch_by_parameters(&candidates, BATCH_PARAMETERS);
        let plan = match settings.sparsity {
            Some(p) => Some(self.allocate_explicit(&batches, settings, p)?),
            None => None,
        };
        let mut encoded = Vec::with_capacity(candidates.len());
        let mut first = 0;
        for batch in batches {
            let allocated = plan.as_ref().map(|plan| (&plan.rates[first..first + batch.len()], &plan.bands[first..first + batch.len()]));
            encoded.extend(self.encode_batch(batch, settings, allocated)?);
            first += batch.len();
        }
        // Tensors with a non-finite value or delta are stored exactly.
        let finite: Vec<bool> = encoded.iter().map(Option::is_some).collect();
        let candidates: Vec<Candidate> = keep_accepted(candidates, &finite);
        let (mut payloads, stats): (Vec<Vec<u8>>, Vec<TensorStats>) = encoded.into_iter().flatten().unzip();
        if candidates.is_empty() {
            return Ok((HashMap::new(), None));
        }

        // Trace-norm rescaling needs a family; it applies to explicit settings only, because
        // shrinking a delta would break the error budget that budget mode guarantees.
        let (trace_norm, factor) = if explicit {
            let norm = ultradelta::commit_trace_norm(&payloads)
                .map_err(codec_error)?;
            let mut family = family_trace_norms.to_vec();
            family.push(norm);
            let factor = *ultradelta::family_factors(&family).last().unwrap_or(&1.0);
            (Some(norm), factor)
        } else {
            (None, 1.0)
        };
        if factor != 1.0 {
            payloads = payloads
                .par_iter()
                .map(|p| ultradelta::with_trace_norm_factor(p, factor))
                .collect::<Result<_, _>>()
                .map_err(codec_error)?;
        }

        // Reconstruct every tensor once: its hash is recorded for checkout, and the whole-delta
        // fidelity is measured on exactly what a checkout will return.
        let rebuilt: Vec<(ObjectId, [f64; 4])> = candidates
            .par_iter()
            .zip(payloads.par_iter())
            .map(|(c, payload)| {
                let base_bytes = self.objects.get(&c.base.hash)?;
                let bytes = ultradelta::reconstruct(&base_bytes, &c.info.dtype, payload)
                    .map_err(|e| Error::Codec { tensor: c.info.name.clone(), detail: e.to_string() })?;
                let sums = delta_sums(&base_bytes, c.bytes, &bytes, &c.info.dtype)?;
                c.release();
                Ok((ObjectId::of_large(&bytes), sums))
            })
            .collect::<Result<_, Error>>()?;

        // In budget mode a tensor that no setting fits into the budget is stored exactly, and
        // left out of the report.
        let accepted: Vec<bool> = stats.iter().map(|s| explicit || s.within_budget).collect();
        let candidates: Vec<&Candidate> = keep_accepted(candidates.iter().collect(), &accepted);
        let payloads = keep_accepted(payloads, &accepted);
        let rebuilt = keep_accepted(rebuilt, &accepted);
        let mut stats = keep_accepted(stats, &accepted);
        for (tensor_stats, (_, sums)) in stats.iter_mut().zip(&rebuilt) {
            tensor_stats.trace_norm_factor = factor;
            // The codec measured its errors before the trace-norm factor. A checkout returns
            // the rescaled delta, so the report and the budget check measure that instead.
            if factor != 1.0 {
                refresh_fidelity(tensor_stats, sums, settings.max_error);
            }
        }
        if candidates.is_empty() {
            return Ok((HashMap::new(), None));
        }

        let report = summarise(explicit, &stats, &rebuilt, settings.max_error, trace_norm, factor);
        let mut out = HashMap::with_capacity(candidates.len());
        for ((candidate, payload), ((hash, _), tensor_stats)) in
            candidates.iter().zip(payloads).zip(rebuilt.into_iter().zip(stats))
        {
            out.insert(candidate.info.name.clone(), LossyTensor { payload, rebuilt_hash: hash, stats: tensor_stats });
        }
        Ok((out, Some(report)))
    }

    /// Reads one batch as f32 base and fine-tune values, and flags the tensors whose values and
    /// delta are all finite: the codec cannot quantize the others, so they are stored exactly.
    fn batch_values(&self, batch: &[Candidate]) -> Result<(Vec<(Vec<f32>, Vec<f32>)>, Vec<bool>), Error> {
        let values: Vec<(Vec<f32>, Vec<f32>)> = batch
            .par_iter()
            .map(|c| {
                let base_bytes = self.objects.get(&c.base.hash)?;
                let to_values = |bytes: &[u8]| {
                    ultradelta::values_from_bytes(bytes, &c.info.dtype)
                        .map_err(|e| Error::Codec { tensor: c.info.name.clone(), detail: e.to_string() })
                };
                let values = (to_values(&base_bytes)?, to_values(c.bytes)?);
                c.release();
                Ok(values)
            })
            .collect::<Result<_, Error>>()?;
        let finite = values
            .par_iter()
            .map(|(base, finetuned)| base.iter().zip(finetuned).all(|(b, f)| (f - b).is_finite() && b.is_finite()))
            .collect();
        Ok((values, finite))
    }

    /// First pass of explicit mode: the three-band allocation over every finite candidate,
    /// returned with one rate and band per candidate in order (placeholders for the others,
    /// which `encode_batch` leaves out).
    fn allocate_explicit(&self, batches: &[&[Candidate]], settings: &Settings, p: f64) -> Result<SparsityPlan, Error> {
        let bits = settings.bits.unwrap_or(4);
        let mut std_devs: Vec<Option<f64>> = Vec::new();
        let mut numels = Vec::new();
        for batch in batches {
            let (values, finite) = self.batch_values(batch)?;
            let deltas = finite_deltas(batch, &values, &finite);
            let mut batch_devs = ultradelta::quantized_std_devs(&deltas, bits).map_err(codec_error)?.into_iter();
            for (c, ok) in batch.iter().zip(&finite) {
                std_devs.push(if *ok { batch_devs.next() } else { None });
                numels.push(c.info.numel().unwrap_or(0));
            }
        }
        let finite_devs: Vec<f64> = std_devs.iter().flatten().copied().collect();
        let finite_numels: Vec<u64> =
            std_devs.iter().zip(&numels).filter(|(d, _)| d.is_some()).map(|(_, n)| *n).collect();
        let allocated = ultradelta::allocate_sparsity(&finite_devs, &finite_numels, p, settings.step);
        let (mut rates, mut bands) = (allocated.rates.into_iter(), allocated.bands.into_iter());
        let mut plan = SparsityPlan { rates: Vec::with_capacity(std_devs.len()), bands: Vec::with_capacity(std_devs.len()) };
        for dev in &std_devs {
            let (rate, band) = match dev {
                Some(_) => (rates.next().unwrap_or(p), bands.next().unwrap_or(Band::Mid)),
                None => (p, Band::Mid),
            };
            plan.rates.push(rate);
            plan.bands.push(band);
        }
        Ok(plan)
    }

    /// Encodes one batch. `None` marks a tensor whose values or delta are not all finite,
    /// which is stored exactly. `allocated` contains the batch's explicit-mode rates and bands.
    fn encode_batch(
        &self,
        batch: &[Candidate],
        settings: &Settings,
        allocated: Option<(&[f64], &[Band])>,
    ) -> Result<Vec<Option<(Vec<u8>, TensorStats)>>, Error> {
        let (values, finite) = self.batch_values(batch)?;
        let deltas = finite_deltas(batch, &values, &finite);
        let dtypes: Vec<Dtype> =
            batch.iter().zip(&finite).filter(|(_, ok)| **ok).map(|(c, _)| c.info.dtype.clone()).collect();
        let encoded = if deltas.is_empty() {
            None
        } else {
            let result = match allocated {
                Some((rates, bands)) => {
                    let rates = keep_accepted(rates.to_vec(), &finite);
                    let bands = keep_accepted(bands.to_vec(), &finite);
                    ultradelta::encode_allocated(&deltas, &dtypes, settings, 1.0, &rates, &bands)
                }
                None => ultradelta::encode_commit(&deltas, &dtypes, settings, 1.0),
            };
            Some(result.map_err(codec_error)?)
        };
        let mut results = encoded.into_iter().flat_map(|e| e.objects.into_iter().zip(e.stats));
        Ok(finite.iter().map(|ok| if *ok { results.next() } else { None }).collect())
    }
}

/// Pairs each finite candidate of a batch with its f32 values, as the codec takes them.
fn finite_deltas<'v>(batch: &'v [Candidate], values: &'v [(Vec<f32>, Vec<f32>)], finite: &[bool]) -> Vec<TensorDelta<'v>> {
    batch
        .iter()
        .zip(values)
        .zip(finite)
        .filter(|(_, ok)| **ok)
        .map(|((c, (base, finetuned)), _)| TensorDelta { name: &c.info.name, shape: &c.info.shape, base, finetuned })
        .collect()
}

/// Maps a codec error to the library error: invalid settings are the caller's arguments.
fn codec_error(error: ultradelta::UltraDeltaError) -> Error {
    match error {
        ultradelta::UltraDeltaError::InvalidSettings(detail) => Error::InvalidArgument { what: "UltraDelta settings".into(), detail },
        other => Error::Codec { tensor: "(commit)".into(), detail: other.to_string() },
    }
}

fn keep_accepted<T>(items: Vec<T>, accepted: &[bool]) -> Vec<T> {
    items.into_iter().zip(accepted).filter(|(_, keep)| **keep).map(|(item, _)| item).collect()
}

fn batch_by_parameters<'c, 'a>(candidates: &'c [Candidate<'a>], limit: u64) -> Vec<&'c [Candidate<'a>]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut count = 0u64;
    for (i, c) in candidates.iter().enumerate() {
        let numel = c.info.numel().unwrap_or(0);
        if i > start && count + numel > limit {
            batches.push(&candidates[start..i]);
            start = i;
            count = 0;
        }
        count += numel;
    }
    batches.push(&candidates[start..]);
    batches
}

/// Sums over one tensor, in f64: ||delta_rec - delta||², ||delta||², <delta_rec, delta>, ||W_ft||².
fn delta_sums(base: &[u8], finetuned: &[u8], rebuilt: &[u8], dtype: &Dtype) -> Result<[f64; 4], Error> {
    let values = |bytes: &[u8]| {
        ultradelta::values_from_bytes(bytes, dtype).map_err(|e| Error::Codec { tensor: String::new(), detail: e.to_string() })
    };
    let (b, f, r) = (values(base)?, values(finetuned)?, values(rebuilt)?);
    let mut sums = [0f64; 4];
    for ((b, f), r) in b.iter().zip(&f).zip(&r) {
        let exact = f64::from(*f) - f64::from(*b);
        let got = f64::from(*r) - f64::from(*b);
        sums[0] += (got - exact) * (got - exact);
        sums[1] += exact * exact;
        sums[2] += got * exact;
        sums[3] += f64::from(*f) * f64::from(*f);
    }
    Ok(sums)
}

/// Sets a tensor's fidelity figures from the sums of `delta_sums` over its reconstruction.
/// `W_rec - W_ft` equals `delta_rec - delta`, so the weight error needs no separate pass.
fn refresh_fidelity(stats: &mut TensorStats, sums: &[f64; 4], max_error: f64) {
    let [err, norm, dot, weights] = *sums;
    stats.rel_error = if weights > 0.0 { (err / weights).sqrt() } else { err.sqrt() };
    stats.delta_rel_error = if norm > 0.0 { (err / norm).sqrt() } else { 0.0 };
    let got = (err + 2.0 * dot - norm).max(0.0);
    stats.delta_cosine = if norm > 0.0 && got > 0.0 { dot / (norm.sqrt() * got.sqrt()) } else { 1.0 };
    stats.within_budget = stats.rel_error <= max_error;
}

fn summarise(
    explicit: bool,
    stats: &[TensorStats],
    rebuilt: &[(ObjectId, [f64; 4])],
    max_error: f64,
    trace_norm: Option<f64>,
    trace_norm_factor: f64,
) -> LossyReport {
    let numel: u64 = stats.iter().map(|s| s.numel).sum();
    let original_bytes = stats.iter().map(|s| s.original_bytes).sum();
    let object_bytes: u64 = stats.iter().map(|s| s.object_bytes).sum();
    let coded_bytes: u64 = stats.iter().map(|s| s.value_bytes + s.position_bytes).sum();
    let zeros: f64 = stats.iter().map(|s| s.sparsity * s.numel as f64).sum();
    let worst = stats.iter().max_by(|a, b| a.rel_error.total_cmp(&b.rel_error));
    let [err, norm, dot, _] =
        rebuilt.iter().fold([0f64; 4], |acc, (_, s)| [acc[0] + s[0], acc[1] + s[1], acc[2] + s[2], acc[3] + s[3]]);
    let got_norm: f64 = (norm + err - 2.0 * (norm - dot)).max(0.0);
    let mut over_budget: Vec<(String, f64)> =
        stats.iter().filter(|s| s.rel_error > max_error).map(|s| (s.name.clone(), s.rel_error)).collect();
    over_budget.sort_by(|a, b| b.1.total_cmp(&a.1));
    LossyReport {
        mode: if explicit { "explicit" } else { "budget" }.to_string(),
        tensors: stats.len(),
        original_bytes,
        object_bytes,
        paper_ratio: if coded_bytes == 0 { 0.0 } else { 16.0 * numel as f64 / (8.0 * coded_bytes as f64) },
        bits_per_parameter: if numel == 0 { 0.0 } else { 8.0 * object_bytes as f64 / numel as f64 },
        sparsity: if numel == 0 { 0.0 } else { zeros / numel as f64 },
        max_rel_error: worst.map_or(0.0, |w| w.rel_error),
        worst_tensor: worst.map(|w| w.name.clone()),
        delta_rel_error: if norm > 0.0 { (err / norm).sqrt() } else { 0.0 },
        delta_cosine: if norm > 0.0 && got_norm > 0.0 { dot / (norm.sqrt() * got_norm.sqrt()) } else { 1.0 },
        max_error,
        trace_norm,
        trace_norm_factor,
        over_budget,
    }
}

/// Parses `grouped` or `seeded`.
pub fn parse_mask_mode(text: &str) -> Option<MaskMode> {
    match text {
        "grouped" => Some(MaskMode::Grouped),
        "seeded" => Some(MaskMode::Seeded),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_marks() {
        assert!(glob_match("*.bias", "encoder.layer.0.bias"));
        assert!(glob_match("encoder.layer.?.attention*", "encoder.layer.3.attention.self.query.weight"));
        assert!(!glob_match("encoder.layer.?.attention*", "encoder.layer.10.attention.self.query.weight"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acd"));
        assert!(glob_match("*embeddings*", "bert.embeddings.word_embeddings.weight"));
    }
}
