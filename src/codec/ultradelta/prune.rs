//! Step 3: random pruning, either per value group (grouped) or by a value-independent mask drawn
//! from the recorded seed (seeded).
//!
//! Both draw exact counts by selection sampling: walking the candidates in index order, each is
//! dropped with probability `still_to_drop / still_remaining`. That yields every subset of the
//! requested size with equal probability, and the decoder of the seeded mode can replay it from
//! `(numel, dropped, seed)` alone.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random stream of one tensor's mask, keyed by its recorded 64-bit seed.
pub(crate) fn mask_rng(tensor_seed: u64) -> ChaCha8Rng {
    let mut key = blake3::Hasher::new();
    key.update(b"wstore ultradelta mask v1");
    key.update(&tensor_seed.to_le_bytes());
    ChaCha8Rng::from_seed(*key.finalize().as_bytes())
}

/// Derives a tensor's seed from the commit seed and the tensor name, so tensors get independent
/// masks and the result does not depend on the order or thread that encodes them.
pub(crate) fn tensor_seed(commit_seed: u64, name: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"wstore ultradelta tensor seed v1");
    hasher.update(&commit_seed.to_le_bytes());
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Returns whether the next candidate is dropped, given how many are still to drop out of how
/// many remain. The multiply-shift maps 64 random bits onto `[0, remaining)` with a bias below
/// `remaining / 2^64`.
fn draw_drop(rng: &mut ChaCha8Rng, to_drop: u64, remaining: u64) -> bool {
    if to_drop == 0 {
        return false;
    }
    if to_drop >= remaining {
        return true;
    }
    let r = ((u128::from(rng.next_u64()) * u128::from(remaining)) >> 64) as u64;
    r < to_drop
}

/// Splits `round(nonzero * q)` drops across the value groups: each group gets `floor(n_g * q)`,
/// and the remaining drops go to the groups with the largest fractional parts (ties to the lower
/// level). Every group thus loses `round(n_g * q)` entries within one, and the tensor loses
/// exactly `round(nonzero * q)`. The zero level, if any, is never pruned because it already
/// decodes to 0.
pub(crate) fn group_drop_counts(
    histogram: &[u64; 256],
    zero_code: Option<u8>,
    q: f64,
) -> [u64; 256] {
    let mut drops = [0u64; 256];
    let q = q.clamp(0.0, 1.0);
    let candidates: Vec<usize> = (0..256)
        .filter(|&c| histogram[c] > 0 && Some(c as u8) != zero_code)
        .collect();
    let nonzero: u64 = candidates.iter().map(|&c| histogram[c]).sum();
    let target = (nonzero as f64 * q).round() as u64;

    let mut assigned = 0u64;
    let mut remainders = Vec::with_capacity(candidates.len());
    for &c in &candidates {
        let exact = histogram[c] as f64 * q;
        let floor = (exact.floor() as u64).min(histogram[c]);
        drops[c] = floor;
        assigned += floor;
        remainders.push((exact - floor as f64, c));
    }
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, c) in &remainders {
        if assigned >= target {
            break;
        }
        if drops[c] < histogram[c] {
            drops[c] += 1;
            assigned += 1;
        }
    }
    drops
}

/// Returns the positions kept after dropping `drops[level]` entries of each level uniformly at
/// random. Entries at the zero level are neither kept nor dropped: they decode to 0 anyway.
pub(crate) fn grouped_kept_positions(
    codes: &[u8],
    histogram: &[u64; 256],
    drops: &[u64; 256],
    zero_code: Option<u8>,
    tensor_seed: u64,
) -> Vec<u64> {
    let mut rng = mask_rng(tensor_seed);
    let mut remaining = *histogram;
    let mut to_drop = *drops;
    let nonzero: u64 = (0..256)
        .filter(|&c| Some(c as u8) != zero_code)
        .map(|c| histogram[c])
        .sum();
    let dropped: u64 = to_drop.iter().sum();
    let mut kept = Vec::with_capacity((nonzero - dropped.min(nonzero)) as usize);
    for (i, &code) in codes.iter().enumerate() {
        if Some(code) == zero_code {
            continue;
        }
        let c = usize::from(code);
        let drop = draw_drop(&mut rng, to_drop[c], remaining[c]);
        remaining[c] -= 1;
        if drop {
            to_drop[c] -= 1;
        } else {
            kept.push(i as u64);
        }
    }
    kept
}

/// Calls `visit(index, dropped)` for every position of a tensor whose seeded mask drops exactly
/// `dropped` of `numel` positions. The encoder and decoder both go through this function.
pub(crate) fn for_each_seeded(
    numel: u64,
    dropped: u64,
    tensor_seed: u64,
    mut visit: impl FnMut(u64, bool),
) {
    let mut rng = mask_rng(tensor_seed);
    let mut to_drop = dropped;
    for i in 0..numel {
        let drop = draw_drop(&mut rng, to_drop, numel - i);
        if drop {
            to_drop -= 1;
        }
        visit(i, drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_drop_counts_match_rounding() {
        let mut histogram = [0u64; 256];
        histogram[0] = 10;
        histogram[1] = 25;
        histogram[2] = 40; // zero level
        histogram[3] = 7;
        // q = 0.5 over the 42 non-zero entries: target 21. Floors 5, 12, 3 = 20; fractional
        // parts 0, 0.5, 0.5, so level 1 (lower of the tie) takes the last drop.
        let drops = group_drop_counts(&histogram, Some(2), 0.5);
        assert_eq!(drops[0], 5);
        assert_eq!(drops[1], 13);
        assert_eq!(drops[2], 0);
        assert_eq!(drops[3], 3);
        assert_eq!(drops.iter().sum::<u64>(), 21);
    }

    #[test]
    fn grouped_pruning_keeps_exact_counts_per_level() {
        let codes: Vec<u8> = (0..10_000u32).map(|i| ((i * 7919) % 13) as u8).collect();
        let mut histogram = [0u64; 256];
        for &c in &codes {
            histogram[usize::from(c)] += 1;
        }
        let drops = group_drop_counts(&histogram, Some(4), 0.9);
        let kept = grouped_kept_positions(&codes, &histogram, &drops, Some(4), 42);
        let mut kept_per_level = [0u64; 256];
        for &i in &kept {
            kept_per_level[usize::from(codes[i as usize])] += 1;
        }
        for level in 0..13 {
            let expected = if level == 4 {
                0
            } else {
                histogram[level] - drops[level]
            };
            assert_eq!(kept_per_level[level], expected, "level {level}");
            let exact = histogram[level] as f64 * 0.9;
            if level != 4 {
                assert!((drops[level] as f64 - exact).abs() < 1.0, "level {level}");
            }
        }
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn seeded_mask_drops_exact_count() {
        let mut dropped = 0;
        let mut visited = 0;
        for_each_seeded(1000, 970, 7, |i, drop| {
            assert_eq!(i, visited);
            visited += 1;
            dropped += u64::from(drop);
        });
        assert_eq!(visited, 1000);
        assert_eq!(dropped, 970);
    }

    #[test]
    fn tensor_seeds_differ_by_name() {
        assert_ne!(tensor_seed(1, "a.weight"), tensor_seed(1, "b.weight"));
        assert_eq!(tensor_seed(1, "a.weight"), tensor_seed(1, "a.weight"));
    }
}
