//! Step 1: per-tensor uniform quantization of the delta to `2^bits` levels between its min and max.

use rayon::prelude::*;

/// Elements per parallel chunk. Fixed, so chunked sums and outputs do not depend on thread count.
pub(crate) const CHUNK: usize = 1 << 16;

/// The level grid of one tensor: level `code` stands for `min + code * step`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Quantizer {
    pub min: f64,
    /// `(max - min) / (2^bits - 1)`, or 0 for a constant tensor, which has one level.
    pub step: f64,
    pub bits: u8,
}

impl Quantizer {
    /// Fits the grid to the min and max of `finetuned - base` (computed in f32).
    ///
    /// Callers must pass finite values and `1 <= bits <= 8`.
    pub(crate) fn fit(base: &[f32], finetuned: &[f32], bits: u8) -> Self {
        let (min, max) = base
            .par_chunks(CHUNK)
            .zip(finetuned.par_chunks(CHUNK))
            .map(|(b, f)| {
                b.iter()
                    .zip(f)
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (&b, &f)| {
                        let d = f - b;
                        (lo.min(d), hi.max(d))
                    })
            })
            .reduce(
                || (f32::INFINITY, f32::NEG_INFINITY),
                |a, b| (a.0.min(b.0), a.1.max(b.1)),
            );
        if base.is_empty() {
            return Self {
                min: 0.0,
                step: 0.0,
                bits,
            };
        }
        let levels = (1u32 << bits) - 1;
        let step = (f64::from(max) - f64::from(min)) / f64::from(levels);
        Self {
            min: f64::from(min),
            step,
            bits,
        }
    }

    pub(crate) fn max_code(&self) -> u8 {
        if self.step == 0.0 {
            0
        } else {
            ((1u32 << self.bits) - 1) as u8
        }
    }

    /// Returns `round((x - min) / step)`, the nearest level, clamped to the grid.
    pub(crate) fn code(&self, x: f32) -> u8 {
        if self.step == 0.0 {
            return 0;
        }
        let t = ((f64::from(x) - self.min) / self.step).round();
        t.clamp(0.0, f64::from(self.max_code())) as u8
    }

    pub(crate) fn value(&self, code: u8) -> f64 {
        self.min + f64::from(code) * self.step
    }

    /// Returns the level whose value is exactly 0, if the grid has one.
    pub(crate) fn zero_code(&self) -> Option<u8> {
        (0..=self.max_code()).find(|&c| self.value(c) == 0.0)
    }

    /// Quantizes `finetuned - base` into one code per element.
    pub(crate) fn codes(&self, base: &[f32], finetuned: &[f32]) -> Vec<u8> {
        let mut codes = vec![0u8; base.len()];
        codes
            .par_chunks_mut(CHUNK)
            .zip(base.par_chunks(CHUNK).zip(finetuned.par_chunks(CHUNK)))
            .for_each(|(out, (b, f))| {
                for ((c, &b), &f) in out.iter_mut().zip(b).zip(f) {
                    *c = self.code(f - b);
                }
            });
        codes
    }

    /// Counts the elements of each level (256 entries, unused levels 0).
    pub(crate) fn histogram(&self, base: &[f32], finetuned: &[f32]) -> [u64; 256] {
        let partial: Vec<[u64; 256]> = base
            .par_chunks(CHUNK)
            .zip(finetuned.par_chunks(CHUNK))
            .map(|(b, f)| {
                let mut counts = [0u64; 256];
                for (&b, &f) in b.iter().zip(f) {
                    counts[usize::from(self.code(f - b))] += 1;
                }
                counts
            })
            .collect();
        let mut counts = [0u64; 256];
        for part in &partial {
            for (total, n) in counts.iter_mut().zip(part) {
                *total += n;
            }
        }
        counts
    }

    /// Standard deviation (population) of the quantized delta, from its level histogram.
    pub(crate) fn std_dev(&self, histogram: &[u64; 256]) -> f64 {
        let n: u64 = histogram.iter().sum();
        if n == 0 {
            return 0.0;
        }
        let n = n as f64;
        let mean = histogram
            .iter()
            .enumerate()
            .map(|(c, &k)| k as f64 * self.value(c as u8))
            .sum::<f64>()
            / n;
        let var = histogram
            .iter()
            .enumerate()
            .map(|(c, &k)| {
                let d = self.value(c as u8) - mean;
                k as f64 * d * d
            })
            .sum::<f64>()
            / n;
        var.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_error_within_half_step() {
        let base: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let finetuned: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b + (i as f32 * 1.3).cos() * 0.01)
            .collect();
        for bits in 1..=8u8 {
            let q = Quantizer::fit(&base, &finetuned, bits);
            let codes = q.codes(&base, &finetuned);
            for ((&b, &f), &c) in base.iter().zip(&finetuned).zip(&codes) {
                let x = f64::from(f - b);
                let err = (x - q.value(c)).abs();
                assert!(
                    err <= q.step / 2.0 * (1.0 + 1e-9),
                    "bits {bits}: error {err} > step/2 {}",
                    q.step / 2.0
                );
            }
        }
    }

    #[test]
    fn grid_matches_formula() {
        // Delta -1, 0, 0.5, 2 at 2 bits: step (2 - -1) / 3 = 1, codes round(x + 1).
        let base = [0.0f32; 4];
        let finetuned = [-1.0f32, 0.0, 0.5, 2.0];
        let q = Quantizer::fit(&base, &finetuned, 2);
        assert_eq!(q.min, -1.0);
        assert_eq!(q.step, 1.0);
        assert_eq!(q.codes(&base, &finetuned), vec![0, 1, 2, 3]);
        assert_eq!(q.zero_code(), Some(1));
        assert_eq!(q.histogram(&base, &finetuned)[..4], [1, 1, 1, 1]);
    }

    #[test]
    fn constant_delta_has_one_level() {
        let base = [1.0f32; 3];
        let finetuned = [1.5f32; 3];
        let q = Quantizer::fit(&base, &finetuned, 4);
        assert_eq!(q.step, 0.0);
        assert_eq!(q.max_code(), 0);
        assert_eq!(q.codes(&base, &finetuned), vec![0, 0, 0]);
        assert_eq!(q.value(0), 0.5);
        assert_eq!(q.std_dev(&q.histogram(&base, &finetuned)), 0.0);
    }
}
