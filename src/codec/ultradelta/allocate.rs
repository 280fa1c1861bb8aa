//! Step 2: variance-based three-band sparsity allocation across the tensors of one commit.

use serde::Serialize;

/// The variance band a tensor fell into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    /// Lowest-variance third of the parameters: sparsity `p + s`.
    Low,
    /// Middle third: sparsity `p`.
    Mid,
    /// Highest-variance third: the rate `r` that makes the weighted mean exactly `p`.
    High,
}

/// The sparsity of each tensor, in input order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Allocation {
    pub bands: Vec<Band>,
    pub rates: Vec<f64>,
    /// The high-band rate after clamping to `[0, 0.99]`.
    pub high_rate: f64,
}

/// Assigns bands and rates from each tensor's standard deviation and element count.
///
/// Tensors are sorted by standard deviation, ascending (ties keep input order), and walked while
/// accumulating element counts. A tensor whose running total, itself included, is at most a
/// third of all elements is `Low`. Up to two thirds it is `Mid`, and beyond that `High`. The last
/// tensor always ends at the full count, so `High` is never empty. The high rate is
/// `r = (p*N - p*N_mid - (p+s)*N_low) / N_high`, clamped to `[0, 0.99]`, and `p + s` is
/// clamped to `[0, 1]`.
pub(crate) fn allocate(std_devs: &[f64], numels: &[u64], p: f64, s: f64) -> Allocation {
    let total: u64 = numels.iter().sum();
    let mut order: Vec<usize> = (0..std_devs.len()).collect();
    // total_cmp gives NaN a fixed place, so a degenerate tensor cannot make the sort unstable.
    order.sort_by(|&a, &b| std_devs[a].total_cmp(&std_devs[b]).then(a.cmp(&b)));

    let mut bands = vec![Band::High; std_devs.len()];
    let (mut n_low, mut n_mid, mut n_high) = (0u64, 0u64, 0u64);
    let mut running = 0u64;
    for &i in &order {
        running += numels[i];
        // Integer comparisons, so the thirds have no rounding error.
        let band = if u128::from(running) * 3 <= u128::from(total) {
            n_low += numels[i];
            Band::Low
        } else if u128::from(running) * 3 <= u128::from(total) * 2 {
            n_mid += numels[i];
            Band::Mid
        } else {
            n_high += numels[i];
            Band::High
        };
        bands[i] = band;
    }

    let low_rate = (p + s).clamp(0.0, 1.0);
    let high_rate = if n_high == 0 {
        p
    } else {
        let n = total as f64;
        ((p * n - p * n_mid as f64 - (p + s) * n_low as f64) / n_high as f64).clamp(0.0, 0.99)
    };
    let rates = bands
        .iter()
        .map(|band| match band {
            Band::Low => low_rate,
            Band::Mid => p,
            Band::High => high_rate,
        })
        .collect();
    Allocation {
        bands,
        rates,
        high_rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_and_high_rate_match_hand_computation() {
        // Six tensors, N = 600. Sorted by std: t1 (100), t4 (100) reach 200 = N/3, so Low;
        // t0 (50), t3 (150) reach 400 = 2N/3, so Mid; t5 (120), t2 (80) are High.
        // r = (0.9*600 - 0.9*200 - 0.92*200) / 200 = (540 - 180 - 184) / 200 = 0.88.
        let std_devs = [0.3, 0.1, 0.9, 0.35, 0.2, 0.5];
        let numels = [50, 100, 80, 150, 100, 120];
        let alloc = allocate(&std_devs, &numels, 0.9, 0.02);
        use Band::*;
        assert_eq!(alloc.bands, vec![Mid, Low, High, Mid, Low, High]);
        assert!(
            (alloc.high_rate - 0.88).abs() < 1e-12,
            "high rate {}",
            alloc.high_rate
        );
        assert_eq!(alloc.rates[1], 0.9 + 0.02);
        assert_eq!(alloc.rates[0], 0.9);
        let mean: f64 = alloc
            .rates
            .iter()
            .zip(&numels)
            .map(|(r, &n)| r * n as f64)
            .sum::<f64>()
            / 600.0;
        assert!((mean - 0.9).abs() < 1e-12, "weighted mean {mean}");
    }

    #[test]
    fn straddling_tensor_goes_to_next_band() {
        // Running totals 30, 100 of N = 100: the first tensor ends within N/3 (Low). The second
        // spans the whole middle third but ends past 2N/3, so it is High and Mid is empty.
        // r = (0.5*100 - 0 - 0.6*30) / 70 = 32/70.
        let alloc = allocate(&[1.0, 2.0], &[30, 70], 0.5, 0.1);
        assert_eq!(alloc.bands, vec![Band::Low, Band::High]);
        assert!((alloc.high_rate - 32.0 / 70.0).abs() < 1e-12);
    }

    #[test]
    fn single_tensor_is_high_with_rate_p() {
        let alloc = allocate(&[1.0], &[10], 0.97, 0.01);
        assert_eq!(alloc.bands, vec![Band::High]);
        assert!((alloc.rates[0] - 0.97).abs() < 1e-12);
    }

    #[test]
    fn high_rate_is_clamped() {
        // r = (0.25*30 - 0.25*10 - 0.75*10) / 10 = -0.25, clamped to 0.
        let alloc = allocate(&[1.0, 2.0, 3.0], &[10, 10, 10], 0.25, 0.5);
        assert_eq!(alloc.rates, vec![0.75, 0.25, 0.0]);
        assert_eq!(alloc.high_rate, 0.0);
    }
}
