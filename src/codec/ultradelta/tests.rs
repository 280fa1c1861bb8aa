use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Builds a base uniform in [-0.1, 0.1] and a fine-tune that adds a Laplace delta of scale
/// `delta_scale`, the heavy-tailed shape that fine-tune deltas usually have.
fn synthetic(numel: usize, delta_scale: f32, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base: Vec<f32> = (0..numel).map(|_| (rng.gen::<f32>() - 0.5) * 0.2).collect();
    let finetuned = base
        .iter()
        .map(|&b| {
            let u: f32 = rng.gen_range(1e-7..1.0);
            let sign = if rng.gen::<bool>() { 1.0 } else { -1.0 };
            b + sign * -u.ln() * delta_scale
        })
        .collect();
    (base, finetuned)
}

struct Family {
    names: Vec<String>,
    shapes: Vec<Vec<u64>>,
    bases: Vec<Vec<f32>>,
    finetuned: Vec<Vec<f32>>,
}

impl Family {
    /// Tensors with different delta scales, so their variances differ.
    fn new(shapes: &[(u64, u64)], seed: u64) -> Self {
        let mut family = Family {
            names: vec![],
            shapes: vec![],
            bases: vec![],
            finetuned: vec![],
        };
        for (i, &(rows, cols)) in shapes.iter().enumerate() {
            let (b, f) = synthetic(
                (rows * cols) as usize,
                1e-3 * (1.0 + i as f32),
                seed + i as u64,
            );
            family.names.push(format!("layers.{i}.weight"));
            family.shapes.push(vec![rows, cols]);
            family.bases.push(b);
            family.finetuned.push(f);
        }
        family
    }

    /// Rounds every value to bf16, as tensors read from a bf16 checkpoint are.
    fn rounded_to_bf16(mut self) -> Self {
        for values in self.bases.iter_mut().chain(self.finetuned.iter_mut()) {
            let bytes = values_to_bytes(values, &Dtype::BF16).unwrap();
            *values = values_from_bytes(&bytes, &Dtype::BF16).unwrap();
        }
        self
    }

    fn tensors(&self) -> Vec<TensorDelta<'_>> {
        (0..self.names.len())
            .map(|i| TensorDelta {
                name: &self.names[i],
                shape: &self.shapes[i],
                base: &self.bases[i],
                finetuned: &self.finetuned[i],
            })
            .collect()
    }
}

fn explicit(p: f64, bits: u8, mask_mode: MaskMode) -> Settings {
    Settings {
        sparsity: Some(p),
        bits: Some(bits),
        mask_mode,
        seed: 11,
        ..Settings::default()
    }
}

#[test]
fn weighted_mean_sparsity_matches_target() {
    let family = Family::new(
        &[(64, 64), (32, 100), (128, 16), (10, 300), (50, 50), (7, 13)],
        1,
    );
    for mode in [MaskMode::Grouped, MaskMode::Seeded] {
        let commit = encode_commit(
            &family.tensors(),
            &vec![Dtype::F32; 6],
            &explicit(0.9, 4, mode),
            1.0,
        )
        .unwrap();
        let numel: u64 = commit.stats.iter().map(|s| s.numel).sum();
        let zeros: f64 = commit
            .stats
            .iter()
            .map(|s| s.sparsity * s.numel as f64)
            .sum();
        let target = 0.9 * numel as f64;
        // Both modes drop exactly round(n * r_t) entries per tensor. Seeded drops may land on an
        // exact-zero level, so only the grouped mode is also checked by its count of zeros.
        let dropped: u64 = commit.stats.iter().map(|s| s.dropped).sum();
        assert!(
            (dropped as f64 - target).abs() <= 6.0,
            "{mode:?}: dropped {dropped}, target {target}"
        );
        if mode == MaskMode::Grouped {
            assert!(
                (zeros - target).abs() <= 6.0,
                "zeros {zeros}, target {target}"
            );
        }
    }
}

#[test]
fn grouped_commit_keeps_exact_level_counts() {
    let family = Family::new(&[(64, 64)], 3);
    let tensors = family.tensors();
    let settings = explicit(0.7, 3, MaskMode::Grouped);
    let commit = encode_commit(&tensors, &[Dtype::F32], &settings, 1.0).unwrap();
    let q = quantize::Quantizer::fit(&family.bases[0], &family.finetuned[0], 3);
    let codes = q.codes(&family.bases[0], &family.finetuned[0]);
    let decoded = decode_delta(&commit.objects[0]).unwrap();
    let scale = 1.0 / (1.0 - 0.7);
    let mut total = [0u64; 8];
    let mut kept = [0u64; 8];
    for (&c, &d) in codes.iter().zip(&decoded) {
        total[usize::from(c)] += 1;
        if d != 0.0 {
            kept[usize::from(c)] += 1;
            assert_eq!(d, (q.value(c) * scale) as f32);
        }
    }
    // One tensor is the high band with rate 0.7 exactly; no level decodes to 0 here.
    assert_eq!(q.zero_code(), None);
    for level in 0..8 {
        let drops = total[level] - kept[level];
        assert!(
            (drops as f64 - total[level] as f64 * 0.7).abs() < 1.0,
            "level {level}: {drops} of {}",
            total[level]
        );
    }
}

#[test]
fn budget_mode_keeps_tensors_within_max_error() {
    let family = Family::new(&[(64, 64), (16, 256), (100, 10)], 5).rounded_to_bf16();
    for max_error in [1e-2, 3e-3, 1e-3] {
        let settings = Settings {
            max_error,
            ..Settings::default()
        };
        let commit =
            encode_commit(&family.tensors(), &vec![Dtype::BF16; 3], &settings, 1.0).unwrap();
        for stats in &commit.stats {
            assert!(
                stats.within_budget,
                "{}: error {} over {max_error}",
                stats.name, stats.rel_error
            );
            assert!(stats.rel_error <= max_error);
        }
        assert!(commit.summary.within_budget);
    }
}

#[test]
fn budget_mode_pruning_keeps_the_delta() {
    // Deltas of rms 1.4e-3 against weights of rms 0.058: pruning at rate s adds about
    // 0.024 * sqrt(s / (1 - s)) of relative weight error, so a 10 % budget alone would allow
    // s = 0.9. It costs sqrt(s / (1 - s)) of the delta, and MAX_DELTA_ERROR (0.5) stops the
    // search at s = 0.1 (at 0.2 the pruning alone reaches 0.5); the fewest bytes then decide.
    let family = Family::new(&[(64, 64)], 9);
    let settings = Settings {
        max_error: 0.1,
        ..Settings::default()
    };
    let commit = encode_commit(&family.tensors(), &[Dtype::F32], &settings, 1.0).unwrap();
    assert!(commit.stats[0].target_sparsity <= 0.1, "chose {}", commit.stats[0].target_sparsity);
    assert!(commit.stats[0].within_budget);
    assert!(commit.stats[0].delta_rel_error <= MAX_DELTA_ERROR, "{}", commit.stats[0].delta_rel_error);
    assert_eq!(commit.summary.mode, "budget");
}

#[test]
fn over_budget_tensor_is_flagged() {
    let family = Family::new(&[(32, 32)], 2);
    let settings = Settings {
        max_error: 0.0,
        ..Settings::default()
    };
    let commit = encode_commit(&family.tensors(), &[Dtype::F32], &settings, 1.0).unwrap();
    assert!(!commit.stats[0].within_budget);
    assert_eq!(commit.stats[0].bits, 8);
    assert_eq!(commit.stats[0].target_sparsity, 0.0);
    assert_eq!(
        commit.summary.worst_tensor.as_deref(),
        Some("layers.0.weight")
    );
}

#[test]
fn objects_identical_across_thread_counts() {
    let family = Family::new(&[(300, 300), (64, 700), (5, 5)], 4);
    let tensors = family.tensors();
    let dtypes = vec![Dtype::BF16; 3];
    for settings in [
        explicit(0.97, 4, MaskMode::Grouped),
        explicit(0.97, 4, MaskMode::Seeded),
        Settings {
            max_error: 5e-3,
            ..Settings::default()
        },
    ] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                encode_commit(&tensors, &dtypes, &settings, 0.8)
                    .unwrap()
                    .objects
            })
        };
        let one = run(1);
        assert_eq!(one, run(3), "{settings:?}");
    }
}

/// Explicit mode encoded a batch at a time, with the allocation made over the whole commit
/// first, writes the same objects as one call over all tensors: what bounds a 7B commit's memory.
#[test]
fn batched_explicit_encoding_equals_one_call() {
    let family = Family::new(&[(64, 64), (32, 100), (128, 16), (10, 300), (50, 50)], 9);
    let tensors = family.tensors();
    let dtypes = vec![Dtype::F32; tensors.len()];
    for mode in [MaskMode::Grouped, MaskMode::Seeded] {
        let settings = explicit(0.9, 4, mode);
        let whole = encode_commit(&tensors, &dtypes, &settings, 1.0).unwrap();
        let devs = quantized_std_devs(&tensors, 4).unwrap();
        let numels: Vec<u64> = tensors.iter().map(|t| t.base.len() as u64).collect();
        let plan = allocate_sparsity(&devs, &numels, 0.9, settings.step);
        let mut objects = Vec::new();
        for range in [0..2, 2..5] {
            let part = encode_allocated(
                &tensors[range.clone()],
                &dtypes[range.clone()],
                &settings,
                1.0,
                &plan.rates[range.clone()],
                &plan.bands[range],
            )
            .unwrap();
            objects.extend(part.objects);
        }
        assert_eq!(objects, whole.objects, "{mode:?}");
    }
    let budget = Settings::default();
    assert!(matches!(
        encode_allocated(&tensors, &dtypes, &budget, 1.0, &[0.5; 5], &[Band::Mid; 5]),
        Err(UltraDeltaError::InvalidSettings(_))
    ));
    let settings = explicit(0.9, 4, MaskMode::Seeded);
    assert!(matches!(
        encode_allocated(&tensors, &dtypes, &settings, 1.0, &[0.5; 4], &[Band::Mid; 5]),
        Err(UltraDeltaError::InvalidSettings(_))
    ));
}

/// A fine-tune whose whole change is far below the weight budget: base uniform in
/// [-0.1, 0.1] (norm about 0.058 per element), delta of scale 1e-6 (relative 2.4e-5). Dropping
/// the delta would pass `max_error` alone; the budget must keep the change or refuse.
#[test]
fn budget_keeps_tiny_delta() {
    let (base, finetuned) = synthetic(64 * 64, 1e-6, 21);
    let shape = [64u64, 64];
    let tensor = TensorDelta { name: "w", shape: &shape, base: &base, finetuned: &finetuned };
    let commit = encode_commit(&[tensor], &[Dtype::F32], &Settings::default(), 1.0).unwrap();
    let stats = &commit.stats[0];
    assert!(stats.rel_error <= DEFAULT_MAX_ERROR);
    assert!(stats.within_budget, "a setting that keeps the delta exists: 8 bits, no pruning");
    assert!(stats.delta_rel_error <= MAX_DELTA_ERROR, "delta error {}", stats.delta_rel_error);
    assert!(stats.delta_cosine > 0.85, "cosine {}", stats.delta_cosine);
}

#[test]
fn reconstruct_adds_delta_in_dtype() {
    let family = Family::new(&[(40, 25)], 6);
    let tensors = family.tensors();
    let commit = encode_commit(
        &tensors,
        &[Dtype::BF16],
        &explicit(0.5, 4, MaskMode::Seeded),
        1.0,
    )
    .unwrap();
    let base_bytes = values_to_bytes(&family.bases[0], &Dtype::BF16).unwrap();
    let rebuilt = reconstruct(&base_bytes, &Dtype::BF16, &commit.objects[0]).unwrap();
    let base_values = values_from_bytes(&base_bytes, &Dtype::BF16).unwrap();
    let delta = decode_delta(&commit.objects[0]).unwrap();
    let expected: Vec<f32> = base_values.iter().zip(&delta).map(|(b, d)| b + d).collect();
    assert_eq!(rebuilt, values_to_bytes(&expected, &Dtype::BF16).unwrap());
    assert!(reconstruct(&base_bytes, &Dtype::F16, &commit.objects[0]).is_err());
    assert!(reconstruct(&base_bytes[2..], &Dtype::BF16, &commit.objects[0]).is_err());
}

#[test]
fn trace_norm_factor_is_frozen_and_rewritable() {
    let family = Family::new(&[(20, 30)], 8);
    let commit = encode_commit(
        &family.tensors(),
        &[Dtype::F32],
        &explicit(0.5, 4, MaskMode::Grouped),
        1.0,
    )
    .unwrap();
    let unscaled = decode_delta(&commit.objects[0]).unwrap();
    let halved = with_trace_norm_factor(&commit.objects[0], 0.5).unwrap();
    let scaled = decode_delta(&halved).unwrap();
    for (&a, &b) in unscaled.iter().zip(&scaled) {
        assert_eq!((f64::from(a) * 0.5) as f32, b);
    }
    // The trace norm leaves the frozen factor out, so it is the same for both objects.
    let norm = commit_trace_norm(&commit.objects).unwrap();
    assert_eq!(norm, commit_trace_norm(&[halved]).unwrap());
    assert!(norm > 0.0);
}

#[test]
fn invalid_inputs_are_rejected() {
    let base = [0.0f32; 4];
    let nan = [0.0, f32::NAN, 0.0, 0.0];
    let tensors = [TensorDelta {
        name: "t",
        shape: &[2, 2],
        base: &base,
        finetuned: &nan,
    }];
    assert!(matches!(
        encode_commit(&tensors, &[Dtype::F32], &Settings::default(), 1.0),
        Err(UltraDeltaError::InvalidInput { .. })
    ));
    let tensors = [TensorDelta {
        name: "t",
        shape: &[3],
        base: &base,
        finetuned: &base,
    }];
    assert!(encode_commit(&tensors, &[Dtype::F32], &Settings::default(), 1.0).is_err());
    let tensors = [TensorDelta {
        name: "t",
        shape: &[4],
        base: &base,
        finetuned: &base,
    }];
    assert!(matches!(
        encode_commit(&tensors, &[Dtype::I32], &Settings::default(), 1.0),
        Err(UltraDeltaError::UnsupportedDtype(_))
    ));
    let bad = Settings {
        sparsity: Some(1.0),
        ..Settings::default()
    };
    assert!(encode_commit(&tensors, &[Dtype::F32], &bad, 1.0).is_err());
}

#[test]
fn zero_delta_tensor_round_trips() {
    let base = vec![0.25f32; 1000];
    let tensors = [TensorDelta {
        name: "frozen",
        shape: &[1000],
        base: &base,
        finetuned: &base,
    }];
    for settings in [
        Settings::default(),
        explicit(0.97, 4, MaskMode::Grouped),
        explicit(0.97, 4, MaskMode::Seeded),
    ] {
        let commit = encode_commit(&tensors, &[Dtype::F32], &settings, 1.0).unwrap();
        assert_eq!(decode_delta(&commit.objects[0]).unwrap(), vec![0.0; 1000]);
        assert_eq!(commit.stats[0].rel_error, 0.0);
    }
}

fn settings_strategy() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just(None), (0.0f64..0.99).prop_map(Some)],
        prop_oneof![Just(None), (1u8..=8).prop_map(Some)],
        prop_oneof![Just(MaskMode::Grouped), Just(MaskMode::Seeded)],
        prop_oneof![Just(ValueCoding::Rans), Just(ValueCoding::Zstd)],
        any::<u64>(),
    )
        .prop_map(|(sparsity, bits, mask_mode, value_coding, seed)| Settings {
            sparsity,
            bits,
            mask_mode,
            value_coding,
            seed,
            max_error: 0.05,
            ..Settings::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encode_decode_round_trip(
        deltas in proptest::collection::vec(-1.0f32..1.0, 1..400),
        zero_every in 0usize..5,
        settings in settings_strategy(),
        factor in 0.5f64..=1.0,
    ) {
        // Some deltas exactly 0, as in fine-tunes that leave weights untouched.
        let deltas: Vec<f32> = deltas
            .iter()
            .enumerate()
            .map(|(i, &d)| if zero_every > 0 && i % zero_every == 0 { 0.0 } else { d })
            .collect();
        let base: Vec<f32> = (0..deltas.len()).map(|i| (i as f32 * 0.1).sin()).collect();
        let finetuned: Vec<f32> = base.iter().zip(&deltas).map(|(b, d)| b + d).collect();
        let shape = [deltas.len() as u64];
        let tensors = [TensorDelta { name: "w", shape: &shape, base: &base, finetuned: &finetuned }];
        let commit = encode_commit(&tensors, &[Dtype::F32], &settings, factor).unwrap();
        let object = &commit.objects[0];
        let header = object::parse(object).unwrap().header;
        let decoded = decode_delta(object).unwrap();
        prop_assert_eq!(decoded.len(), deltas.len());

        // Every stored value is the exact delta within half a step, times the scale.
        let scale = header.scale();
        let mut nonzero = 0u64;
        for ((&b, &f), &d) in base.iter().zip(&finetuned).zip(&decoded) {
            if d != 0.0 {
                nonzero += 1;
                let exact = f64::from(f - b);
                let err = (f64::from(d) / scale - exact).abs();
                prop_assert!(err <= header.step / 2.0 + 1e-6 * (1.0 + exact.abs()), "error {} step {}", err, header.step);
            }
        }
        prop_assert!(nonzero <= header.kept);
        prop_assert_eq!(commit.stats[0].object_bytes, object.len() as u64);

        // Same inputs, same bytes.
        let again = encode_commit(&tensors, &[Dtype::F32], &settings, factor).unwrap();
        prop_assert_eq!(&again.objects, &commit.objects);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_delta(&bytes);
        let _ = reconstruct(&[0u8; 16], &Dtype::F32, &bytes);
    }

    #[test]
    fn decode_never_panics_on_corrupted_objects(
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
        mode in prop_oneof![Just(MaskMode::Grouped), Just(MaskMode::Seeded)],
        sparsity in prop_oneof![Just(None), Just(Some(0.0)), Just(Some(0.8))],
    ) {
        // The checksum is recomputed after the change, so the structural checks are reached.
        let (base, finetuned) = synthetic(600, 1e-2, 13);
        let tensors = [TensorDelta { name: "w", shape: &[20, 30], base: &base, finetuned: &finetuned }];
        let settings = Settings { sparsity, mask_mode: mode, ..Settings::default() };
        let object = encode_commit(&tensors, &[Dtype::F32], &settings, 1.0).unwrap().objects.remove(0);
        let mut body = object[..object.len() - 8].to_vec();
        let i = position.index(body.len());
        body[i] = value;
        let sum = blake3::hash(&body);
        body.extend_from_slice(&sum.as_bytes()[..8]);
        let _ = decode_delta(&body);
    }
}

#[test]
fn flipped_byte_fails_checksum() {
    let (base, finetuned) = synthetic(100, 1e-2, 1);
    let tensors = [TensorDelta {
        name: "w",
        shape: &[100],
        base: &base,
        finetuned: &finetuned,
    }];
    let mut object = encode_commit(&tensors, &[Dtype::F32], &Settings::default(), 1.0)
        .unwrap()
        .objects
        .remove(0);
    object[40] ^= 1;
    assert!(matches!(
        decode_delta(&object),
        Err(UltraDeltaError::Corrupt(_))
    ));
}

/// Prints section sizes of every storage choice on synthetic Laplace deltas. Run with
/// `cargo test --lib codec::ultradelta::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_storage_choices() {
    let (rows, cols) = (2048u64, 1024u64);
    let (base, finetuned) = synthetic((rows * cols) as usize, 1e-3, 21);
    let numel = rows * cols;
    println!("| p | bits | mode | kept | values rANS | values zstd-19 | order-0 entropy | rice | elias-fano | object | rel error | delta cos |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &p in &[0.0, 0.5, 0.9, 0.97, 0.99] {
        for &bits in &[2u8, 4, 8] {
            for mode in [MaskMode::Grouped, MaskMode::Seeded] {
                let plan = encode::TensorPlan {
                    bits,
                    tensor_sparsity: p,
                    commit_sparsity: p,
                    rescale: 1.0 / (1.0 - p),
                    trace_norm_factor: 1.0,
                    mask_mode: mode,
                    seed: 1,
                    value_coding: ValueCoding::Rans,
                };
                let pruned = encode::prune_tensor(&base, &finetuned, &plan);
                let rans = entropy::encode(ValueCoding::Rans, &pruned.kept_codes).len();
                let zstd = entropy::encode(ValueCoding::Zstd, &pruned.kept_codes).len();
                let h = entropy::entropy_bytes(&pruned.kept_codes);
                let (rice, ef) = match &pruned.layout {
                    encode::PrunedLayout::Grouped(kept) => positions::sizes(kept, numel),
                    _ => (0, 0),
                };
                let written =
                    encode::write_object(&pruned, &[rows, cols], dtype::FloatDtype::F32, &plan);
                let fidelity = stats::Fidelity::measure(
                    &base,
                    &finetuned,
                    &pruned.decoded(&plan),
                    dtype::FloatDtype::F32,
                );
                println!(
                    "| {p} | {bits} | {mode:?} | {} | {rans} | {zstd} | {h:.0} | {rice} | {ef} | {} | {:.2e} | {:.4} |",
                    pruned.kept_codes.len(),
                    written.payload.len(),
                    fidelity.rel_error(),
                    fidelity.delta_cosine()
                );
                if p == 0.0 {
                    break;
                }
            }
        }
    }
}

/// Prints encode and decode wall times for one 4096 x 4096 tensor in each mode. Run with
/// `cargo test --lib codec::ultradelta::tests::time -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_large_tensor() {
    let family = Family::new(&[(4096, 4096)], 31).rounded_to_bf16();
    let tensors = family.tensors();
    for (label, settings) in [
        ("seeded p=0.97 b=4", explicit(0.97, 4, MaskMode::Seeded)),
        ("grouped p=0.97 b=4", explicit(0.97, 4, MaskMode::Grouped)),
        (
            "budget 1e-2",
            Settings {
                max_error: 1e-2,
                ..Settings::default()
            },
        ),
    ] {
        let start = std::time::Instant::now();
        let commit = encode_commit(&tensors, &[Dtype::BF16], &settings, 1.0).unwrap();
        let encoded = start.elapsed();
        let start = std::time::Instant::now();
        let delta = decode_delta(&commit.objects[0]).unwrap();
        let decoded = start.elapsed();
        println!(
            "{label}: encode {encoded:.2?}, decode {decoded:.2?}, {} bytes, sparsity {:.3}, bits {}, rel error {:.2e}, {} threads",
            commit.objects[0].len(),
            commit.stats[0].target_sparsity,
            commit.stats[0].bits,
            commit.stats[0].rel_error,
            rayon::current_num_threads()
        );
        assert_eq!(delta.len(), 4096 * 4096);
    }
}
