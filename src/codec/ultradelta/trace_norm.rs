//! Trace-norm-guided rescaling across the fine-tunes of one base.

use faer::Mat;

/// Returns the trace (nuclear) norm, the sum of the singular values, of a row-major matrix,
/// by the exact SVD ([`exact_trace_norm`]).
///
/// NOTE: at LLaMA sizes this is the slow step of an explicit-settings commit (minutes per
/// 11008 × 4096 matrix on a loaded core). The Lanczos estimate ([`estimated_trace_norm`]) was
/// measured as an alternative (docs/BENCHMARKS.md, "Trace norm estimate") and is not used:
/// it was 5x faster but off by up to 5.6 % on a rank-32 delta.
///
/// Returns NaN if the matrix has a non-finite entry or `matrix.len() != rows * cols`, so
/// callers can reject it instead of panicking.
pub fn trace_norm(matrix: &[f32], rows: usize, cols: usize) -> f64 {
    if rows.checked_mul(cols) != Some(matrix.len()) || matrix.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    exact_trace_norm(matrix, rows, cols)
}

/// Returns the trace norm by faer's exact SVD (singular values only) in f32, the precision of
/// the deltas themselves and of numpy's `svd` on them, summed in f64. At 1024 × 1024 on one
/// core, f32 took 1/1.5 of the f64 time, and the two sums agreed to 1e-7 relative. The caller checks
/// the matrix as [`trace_norm`] does.
pub fn exact_trace_norm(matrix: &[f32], rows: usize, cols: usize) -> f64 {
    if rows == 0 || cols == 0 {
        return 0.0;
    }
    let mat = Mat::<f32>::from_fn(rows, cols, |i, j| matrix[i * cols + j]);
    mat.singular_values().iter().map(|&s| f64::from(s)).sum()
}

/// Estimates the trace norm with the given sketch, probes and steps, whatever the size; for
/// measuring the estimate against [`exact_trace_norm`]. The caller checks the matrix.
pub fn estimated_trace_norm(matrix: &[f32], rows: usize, cols: usize, sketch: usize, probes: usize, steps: usize) -> f64 {
    super::lanczos::estimate_trace_norm(matrix, rows, cols, sketch, probes, steps)
}

/// Returns the factor each fine-tune's delta is multiplied by, from the trace norms of the
/// pruned deltas of all fine-tunes of one base.
///
/// `ratio_i = mean / norm_i`, divided by the largest ratio, so the fine-tune with the smallest
/// trace norm keeps 1 and the others shrink; the result is clamped to `[0.5, 1]`. A fine-tune
/// whose norm is zero or not finite has no delta to scale: it gets 1 and is left out of the mean
/// and the largest ratio.
pub fn family_factors(trace_norms: &[f64]) -> Vec<f64> {
    let valid: Vec<f64> = trace_norms
        .iter()
        .copied()
        .filter(|n| n.is_finite() && *n > 0.0)
        .collect();
    if valid.is_empty() {
        return vec![1.0; trace_norms.len()];
    }
    let mean = valid.iter().sum::<f64>() / valid.len() as f64;
    let largest_ratio = valid.iter().map(|n| mean / n).fold(0.0, f64::max);
    trace_norms
        .iter()
        .map(|&n| {
            if n.is_finite() && n > 0.0 {
                (mean / n / largest_ratio).clamp(0.5, 1.0)
            } else {
                1.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_of_three_matches_hand_computation() {
        // Norms 2, 3, 4: mean 3, ratios 1.5, 1, 0.75; divided by 1.5: 1, 2/3, 0.5.
        let factors = family_factors(&[2.0, 3.0, 4.0]);
        assert_eq!(factors[0], 1.0);
        assert!((factors[1] - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(factors[2], 0.5);
    }

    #[test]
    fn family_factor_is_clamped_to_half() {
        // Norms 1, 2, 4: mean 7/3, normalised ratios 1, 0.5, 0.25 -> clamped to 0.5.
        assert_eq!(family_factors(&[1.0, 2.0, 4.0]), vec![1.0, 0.5, 0.5]);
    }

    #[test]
    fn single_fine_tune_keeps_factor_one() {
        assert_eq!(family_factors(&[5.0]), vec![1.0]);
        assert_eq!(family_factors(&[0.0, 5.0]), vec![1.0, 1.0]);
    }

    #[test]
    fn trace_norm_of_diagonal_matrix() {
        // diag(3, -4) has singular values 4 and 3.
        let norm = trace_norm(&[3.0, 0.0, 0.0, -4.0], 2, 2);
        assert!((norm - 7.0).abs() < 1e-12, "norm {norm}");
        // A rank-one 2x3 matrix u v^T with |u| = sqrt(2), |v| = sqrt(3).
        // The singular value is computed in f32: within a few f32 ulps of sqrt(6).
        let norm = trace_norm(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2, 3);
        assert!((norm - 6f64.sqrt()).abs() < 1e-6, "norm {norm}");
        assert!(trace_norm(&[1.0], 2, 2).is_nan());
    }
}
