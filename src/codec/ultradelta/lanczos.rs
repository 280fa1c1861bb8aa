//! An estimate of the trace (nuclear) norm by stochastic Lanczos quadrature with a low-rank
//! sketch (Hutch++), measured as a faster alternative to the exact SVD for LLaMA-sized deltas
//! (4096 × 11008). Commits do not use it: see `trace_norm::trace_norm` for why.
//!
//! The trace norm of `M` is `tr(G^(1/2))` with `G = MᵀM` (or `MMᵀ`, whichever is smaller,
//! `n × n`). Any quadratic form `uᵀ G^(1/2) u` is a Gauss quadrature over `k` steps of Lanczos
//! started at `u`: `|u|² · Σ_l τ_l² sqrt(θ_l)`, over the eigenvalues `θ_l` of the Lanczos
//! tridiagonal matrix and the first components `τ_l` of its eigenvectors. The trace is split
//! in two. A sketch `Q` (orthonormal columns spanning `G S` for random ±1 columns `S`) catches
//! the largest singular directions, and their part `Σ q_iᵀ G^(1/2) q_i` is computed directly.
//! The rest is Hutchinson's estimate `mean over z of zᵀ (I - QQᵀ) G^(1/2) (I - QQᵀ) z` with
//! random ±1 vectors `z`. Without the sketch, a delta dominated by a few directions (as fine-tuning
//! deltas often are) makes Hutchinson's estimate swing by tens of percent.
//!
//! All quadratic forms advance together, so each step costs two matrix products of `M` with
//! an `n × (sketch + probes)` block. Deterministic: the random vectors come from a fixed seed
//! and the products run on one thread, so the result does not depend on the thread count
//! (callers parallelise across matrices).

use faer::linalg::matmul::matmul;
use faer::{Mat, MatRef, Parallelism, Side};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seed of the random vectors. Fixed, so a trace norm is the same on every machine.
const PROBE_SEED: u64 = 0x5452_4143_455f_4e4f;

/// Estimates the trace norm of the row-major `rows × cols` matrix from a sketch of `sketch`
/// columns, `probes` random vectors for the rest, and at most `steps` Lanczos steps per
/// quadratic form. The caller checks that the matrix is finite and that
/// `matrix.len() == rows * cols`.
pub(crate) fn estimate_trace_norm(
    matrix: &[f32],
    rows: usize,
    cols: usize,
    sketch: usize,
    probes: usize,
    steps: usize,
) -> f64 {
    let n = rows.min(cols);
    if n == 0 {
        return 0.0;
    }
    let gram = Gram::new(matrix, rows, cols);
    let mut rng = ChaCha8Rng::seed_from_u64(PROBE_SEED);
    let mut sign = |_| if rng.gen::<bool>() { 1.0f64 } else { -1.0 };

    let sketch = sketch.min(n);
    let random: Vec<Vec<f64>> = (0..sketch).map(|_| (0..n).map(&mut sign).collect()).collect();
    let basis = orthonormalise(gram.apply(&random));
    let mut starts: Vec<(Vec<f64>, f64)> = basis.iter().map(|q| (q.clone(), 1.0)).collect();
    for _ in 0..probes {
        let mut z: Vec<f64> = (0..n).map(&mut sign).collect();
        for q in &basis {
            axpy(-dot(q, &z), q, &mut z);
        }
        starts.push((z, 1.0 / probes as f64));
    }

    let mut lanczos: Vec<Lanczos> = starts.into_iter().map(|(u, weight)| Lanczos::new(u, weight)).collect();
    for _ in 0..steps.clamp(1, n) {
        let active: Vec<usize> = (0..lanczos.len()).filter(|&j| !lanczos[j].done).collect();
        if active.is_empty() {
            break;
        }
        let vectors: Vec<Vec<f64>> = active.iter().map(|&j| lanczos[j].current().to_vec()).collect();
        for (w, &j) in gram.apply(&vectors).into_iter().zip(&active) {
            lanczos[j].step(w, steps);
        }
    }
    lanczos.iter().map(Lanczos::quadrature).sum()
}

/// The Gram matrix of `M`, `MᵀM` when `cols <= rows` and `MMᵀ` otherwise, applied through two
/// products with `M` in f32 (the precision of the deltas) so it is never formed.
struct Gram<'a> {
    first: MatRef<'a, f32>,
    second: MatRef<'a, f32>,
}

impl<'a> Gram<'a> {
    fn new(matrix: &'a [f32], rows: usize, cols: usize) -> Self {
        let m = faer::mat::from_row_major_slice(matrix, rows, cols);
        let (first, second) = if cols <= rows { (m, m.transpose()) } else { (m.transpose(), m) };
        Gram { first, second }
    }

    fn apply(&self, vectors: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = self.first.ncols();
        let block = Mat::<f32>::from_fn(n, vectors.len(), |i, j| vectors[j][i] as f32);
        let mut inner = Mat::<f32>::zeros(self.first.nrows(), vectors.len());
        let mut product = Mat::<f32>::zeros(n, vectors.len());
        matmul(inner.as_mut(), self.first, block.as_ref(), None, 1.0, Parallelism::None);
        matmul(product.as_mut(), self.second, inner.as_ref(), None, 1.0, Parallelism::None);
        (0..vectors.len()).map(|j| (0..n).map(|i| f64::from(product.read(i, j))).collect()).collect()
    }
}

/// Orthonormal vectors spanning the given ones (Gram-Schmidt, twice for accuracy); vectors
/// that add no new direction are dropped.
fn orthonormalise(vectors: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let largest = vectors.iter().map(|v| dot(v, v).sqrt()).fold(0.0, f64::max);
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(vectors.len());
    for mut v in vectors {
        for _ in 0..2 {
            for q in &basis {
                axpy(-dot(q, &v), q, &mut v);
            }
        }
        let norm = dot(&v, &v).sqrt();
        if norm > 1e-6 * largest && norm > 0.0 {
            basis.push(v.into_iter().map(|x| x / norm).collect());
        }
    }
    basis
}

/// The Lanczos recurrence of one probe, with full reorthogonalisation: `k` is at most a few
/// dozen, so keeping every basis vector costs little and keeps the quadrature accurate.
struct Lanczos {
    basis: Vec<Vec<f64>>,
    alphas: Vec<f64>,
    betas: Vec<f64>,
    /// `weight · |u|²` for the start vector `u`: the factor of the quadrature.
    scale: f64,
    done: bool,
}

impl Lanczos {
    fn new(start: Vec<f64>, weight: f64) -> Self {
        let squared = dot(&start, &start);
        if squared == 0.0 {
            return Lanczos { basis: vec![start], alphas: Vec::new(), betas: Vec::new(), scale: 0.0, done: true };
        }
        let norm = squared.sqrt();
        let unit = start.into_iter().map(|x| x / norm).collect();
        Lanczos { basis: vec![unit], alphas: Vec::new(), betas: Vec::new(), scale: weight * squared, done: false }
    }

    fn current(&self) -> &[f64] {
        self.basis.last().map_or(&[], Vec::as_slice)
    }

    /// Takes `w = G q` for the current vector `q` and extends the recurrence by one step.
    fn step(&mut self, mut w: Vec<f64>, max_steps: usize) {
        let alpha = dot(self.current(), &w);
        self.alphas.push(alpha);
        // Two passes of Gram-Schmidt against the whole basis remove the loss of orthogonality
        // that plain three-term Lanczos suffers in floating point.
        for _ in 0..2 {
            for q in &self.basis {
                axpy(-dot(q, &w), q, &mut w);
            }
        }
        let beta = dot(&w, &w).sqrt();
        // A tiny beta means the Krylov space is invariant: the quadrature is already exact.
        let scale = alpha.abs().max(self.betas.last().copied().unwrap_or(0.0));
        if self.alphas.len() >= max_steps || beta <= 1e-9 * scale || beta == 0.0 {
            self.done = true;
            return;
        }
        self.betas.push(beta);
        self.basis.push(w.into_iter().map(|v| v / beta).collect());
    }

    /// `weight · |u|² · Σ τ_l² sqrt(θ_l)`: the weighted quadrature of `uᵀ G^(1/2) u`.
    fn quadrature(&self) -> f64 {
        let k = self.alphas.len();
        if k == 0 {
            return 0.0;
        }
        let tridiagonal = Mat::<f64>::from_fn(k, k, |i, j| {
            if i == j {
                self.alphas[i]
            } else if i == j + 1 {
                self.betas[j]
            } else if j == i + 1 {
                self.betas[i]
            } else {
                0.0
            }
        });
        let eigen = tridiagonal.selfadjoint_eigendecomposition(Side::Lower);
        let (values, vectors) = (eigen.s().column_vector(), eigen.u());
        // Rounding can leave an eigenvalue of a positive semi-definite G slightly negative.
        let sum: f64 = (0..k).map(|l| vectors.read(0, l).powi(2) * values.read(l).max(0.0).sqrt()).sum();
        self.scale * sum
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y += a · x`.
fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a sketch and with MᵀM diagonal, every probe's quadratic form is exactly the sum
    /// of the singular values, so the estimate is exact once Lanczos has seen every distinct
    /// eigenvalue.
    #[test]
    fn exact_for_orthogonal_columns() {
        let (rows, cols) = (60, 40);
        let mut matrix = vec![0f32; rows * cols];
        let mut expected = 0.0;
        for i in 0..cols {
            let s = 0.5 + i as f32 * 0.25;
            matrix[i * cols + i] = if i % 2 == 0 { s } else { -s };
            expected += f64::from(s);
        }
        let estimate = estimate_trace_norm(&matrix, rows, cols, 0, 4, 40);
        assert!((estimate - expected).abs() < 1e-6 * expected, "{estimate} vs {expected}");
        // The transposed shape goes through MMᵀ and must agree.
        let transposed: Vec<f32> = (0..cols * rows).map(|k| matrix[(k % rows) * cols + k / rows]).collect();
        let estimate = estimate_trace_norm(&transposed, cols, rows, 0, 4, 40);
        assert!((estimate - expected).abs() < 1e-6 * expected, "{estimate} vs {expected}");
    }

    /// A sketch as wide as the Gram matrix spans everything: the residual is zero and the
    /// estimate is the exact trace norm.
    #[test]
    fn full_sketch_is_exact() {
        let (rows, cols) = (30, 20);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let matrix: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let exact = super::super::trace_norm::exact_trace_norm(&matrix, rows, cols);
        let estimate = estimate_trace_norm(&matrix, rows, cols, 20, 8, 20);
        assert!((estimate - exact).abs() < 1e-5 * exact, "{estimate} vs {exact}");
    }

    #[test]
    fn estimate_near_exact_svd() {
        let (rows, cols) = (300, 200);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let noise: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let u: Vec<f32> = (0..rows).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let v: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let low_rank: Vec<f32> =
            (0..rows * cols).map(|k| 5.0 * u[k / cols] * v[k % cols] + 0.01 * noise[k]).collect();
        for matrix in [noise, low_rank] {
            let exact = super::super::trace_norm::exact_trace_norm(&matrix, rows, cols);
            let estimate = estimate_trace_norm(&matrix, rows, cols, 16, 8, 30);
            let error = (estimate - exact).abs() / exact;
            assert!(error < 0.02, "estimate {estimate}, exact {exact}, relative error {error}");
        }
    }

    #[test]
    fn same_result_on_any_thread_count() {
        let (rows, cols) = (90, 70);
        let matrix: Vec<f32> = (0..rows * cols).map(|k| ((k * 7919) % 1013) as f32 / 1013.0 - 0.5).collect();
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map(|pool| pool.install(|| estimate_trace_norm(&matrix, rows, cols, 16, 8, 30)))
                .unwrap_or(f64::NAN)
        };
        assert_eq!(run(1).to_bits(), run(3).to_bits());
    }
}

/// Measurement behind docs/BENCHMARKS.md ("Trace norm estimate"); prints, asserts nothing:
/// `cargo test --release --lib measure_trace_norm_estimate -- --ignored --nocapture`.
#[cfg(test)]
mod measure {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn measure_trace_norm_estimate() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let mut gaussian = move || -> f32 {
            // Sum of 4 uniforms: close enough to normal for a spectrum test, and cheap.
            (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * 0.866
        };
        for &(rows, cols, rank) in &[(2048usize, 2048usize, 0usize), (2048, 2048, 32), (4096, 1024, 8)] {
            let noise: Vec<f32> = (0..rows * cols).map(|_| gaussian()).collect();
            let matrix: Vec<f32> = if rank == 0 {
                noise
            } else {
                let u: Vec<f32> = (0..rows * rank).map(|_| gaussian()).collect();
                let v: Vec<f32> = (0..rank * cols).map(|_| gaussian()).collect();
                (0..rows * cols)
                    .map(|k| {
                        let (i, j) = (k / cols, k % cols);
                        let low: f32 = (0..rank).map(|r| u[i * rank + r] * v[r * cols + j]).sum();
                        low + 0.05 * noise[k]
                    })
                    .collect()
            };
            let started = Instant::now();
            let exact = super::super::trace_norm::exact_trace_norm(&matrix, rows, cols);
            let exact_s = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let estimate = estimate_trace_norm(&matrix, rows, cols, 16, 8, 30);
            let estimate_s = started.elapsed().as_secs_f64();
            println!(
                "{rows} x {cols}, rank {rank} + noise: exact {exact:.3} in {exact_s:.1} s, estimate {estimate:.3} in {estimate_s:.2} s, relative error {:.2e}",
                (estimate - exact).abs() / exact
            );
        }
        let (rows, cols) = (11008usize, 4096usize);
        let matrix: Vec<f32> = (0..rows * cols).map(|_| gaussian()).collect();
        let started = Instant::now();
        let estimate = estimate_trace_norm(&matrix, rows, cols, 16, 8, 30);
        println!("{rows} x {cols} noise: estimate {estimate:.1} in {:.2} s (exact not run)", started.elapsed().as_secs_f64());
    }
}
