//! Throughput of the lossless delta codec on a 64 MiB bf16 fine-tune pair.
//!
//! The base contains N(0, 0.02) weights and the target is base + N(0, 0.002) rounded to bf16, about
//! a 10% relative delta. Before timing, the bench prints the payload size of every transform on
//! this pair. Run with `cargo bench --bench lossless_delta`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wstore::codec::lossless::{
    decode, encode, encode_with, inspect, Transform, DEFAULT_ZSTD_LEVEL,
};

/// Elements in each tensor: 32 Mi bf16 values, 64 MiB.
const ELEMENTS: usize = 32 << 20;

/// Returns `count` N(0, std) samples, drawn with Box-Muller from a seeded ChaCha8 stream.
fn normals(count: usize, std: f64, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt() * std;
        let angle = 2.0 * std::f64::consts::PI * u2;
        out.push(radius * angle.cos());
        out.push(radius * angle.sin());
    }
    out.truncate(count);
    out
}

/// Returns the little-endian bytes of a bf16 base and of its fine-tune.
fn bf16_pair() -> (Vec<u8>, Vec<u8>) {
    let base: Vec<half::bf16> = normals(ELEMENTS, 0.02, 1)
        .into_iter()
        .map(half::bf16::from_f64)
        .collect();
    let noise = normals(ELEMENTS, 0.002, 2);
    let target: Vec<half::bf16> = base
        .iter()
        .zip(noise)
        .map(|(b, n)| half::bf16::from_f64(b.to_f64() + n))
        .collect();
    let bytes = |values: &[half::bf16]| {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    (bytes(&base), bytes(&target))
}

fn print_sizes(base: &[u8], target: &[u8]) {
    let raw = target.len() as f64;
    println!(
        "payload size on the {} MiB bf16 fine-tune, zstd level {DEFAULT_ZSTD_LEVEL}:",
        target.len() >> 20
    );
    for transform in Transform::ALL {
        let payload =
            encode_with(base, target, 2, DEFAULT_ZSTD_LEVEL, transform).expect("encode_with");
        println!(
            "  {:<18} {:>10} bytes  {:>6.2}%",
            format!("{transform:?}"),
            payload.len(),
            100.0 * payload.len() as f64 / raw
        );
    }
    let payload = encode(base, target, 2, DEFAULT_ZSTD_LEVEL).expect("encode");
    let kept = inspect(&payload).expect("inspect").transform;
    println!(
        "  {:<18} {:>10} bytes  {:>6.2}%  (kept {kept:?})",
        "encode()",
        payload.len(),
        100.0 * payload.len() as f64 / raw
    );
}

fn bench_lossless(c: &mut Criterion) {
    let (base, target) = bf16_pair();
    print_sizes(&base, &target);
    let payload = encode(&base, &target, 2, DEFAULT_ZSTD_LEVEL).expect("encode");

    let mut group = c.benchmark_group("lossless_bf16_64MiB");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(target.len() as u64));

    group.bench_function("encode", |b| {
        b.iter(|| encode(&base, &target, 2, DEFAULT_ZSTD_LEVEL).expect("encode"))
    });
    for transform in [Transform::XorPlanes, Transform::OrderedSubPlanes] {
        group.bench_with_input(
            BenchmarkId::new("encode_with", format!("{transform:?}")),
            &transform,
            |b, t| {
                b.iter(|| {
                    encode_with(&base, &target, 2, DEFAULT_ZSTD_LEVEL, *t).expect("encode_with")
                })
            },
        );
    }
    group.bench_function("decode", |b| {
        b.iter(|| decode(&base, &payload).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, bench_lossless);
criterion_main!(benches);
