//! Small synthetic checkpoints for the quickstart example and the tests: a base with LLaMA
//! tensor names at toy widths, and fine-tunes of it. Everything is deterministic in `seed`.
//! (`examples/synth.rs` streams the full LLaMA-2-7B shapes for benchmarks.)

use std::path::Path;

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::format::safetensors::{write_header, Dtype, SafetensorsError};

/// One tensor of a generated checkpoint.
#[derive(Debug, Clone)]
pub struct SynthTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// Serialises tensors as a safetensors file, in the given order, with optional metadata.
pub fn to_safetensors(tensors: &[SynthTensor], metadata: Option<&[(String, String)]>) -> Result<Vec<u8>, SafetensorsError> {
    let specs: Vec<(String, Dtype, Vec<u64>)> =
        tensors.iter().map(|t| (t.name.clone(), t.dtype.clone(), t.shape.clone())).collect();
    let (mut out, _) = write_header(&specs, metadata)?;
    for tensor in tensors {
        out.extend_from_slice(&tensor.bytes);
    }
    Ok(out)
}

/// Tensor names and shapes of a LLaMA-style decoder with the given widths.
pub fn llama_layout(vocab: u64, hidden: u64, intermediate: u64, layers: u64) -> Vec<(String, Vec<u64>)> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![vocab, hidden])];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for proj in ["q", "k", "v", "o"] {
            out.push((format!("{p}.self_attn.{proj}_proj.weight"), vec![hidden, hidden]));
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![intermediate, hidden]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![intermediate, hidden]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![hidden, intermediate]));
        out.push((format!("{p}.input_layernorm.weight"), vec![hidden]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![hidden]));
    }
    out.push(("model.norm.weight".to_string(), vec![hidden]));
    out.push(("lm_head.weight".to_string(), vec![vocab, hidden]));
    out
}

/// Approximately normal sample (sum of uniforms), cheap and deterministic.
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let sum: f32 = (0..4).map(|_| rng.gen::<f32>()).sum();
    (sum - 2.0) * 1.732
}

/// Generates a tiny bf16 LLaMA-shaped base: weights ~ N(0, 0.02), norms ~ 1.
pub fn tiny_base(seed: u64) -> Vec<SynthTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    llama_layout(256, 64, 172, 2)
        .into_iter()
        .map(|(name, shape)| {
            let numel: u64 = shape.iter().product();
            let is_norm = shape.len() == 1;
            let bytes = (0..numel)
                .flat_map(|_| {
                    let v = if is_norm { 1.0 + 0.02 * normal(&mut rng) } else { 0.02 * normal(&mut rng) };
                    bf16::from_f32(v).to_le_bytes()
                })
                .collect();
            SynthTensor { name, dtype: Dtype::BF16, shape, bytes }
        })
        .collect()
}

/// Generates a fine-tune of `base`. Every 2-D tensor except the embedding and head gets noise
/// of `scale` times the weights' spread, and the embedding, head and norms stay identical.
pub fn tiny_finetune(base: &[SynthTensor], seed: u64, scale: f32) -> Vec<SynthTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    base.iter()
        .map(|t| {
            let keep = t.shape.len() != 2 || t.name.contains("embed_tokens") || t.name == "lm_head.weight";
            if keep {
                return t.clone();
            }
            let bytes = t
                .bytes
                .chunks_exact(2)
                .flat_map(|pair| {
                    let v = bf16::from_le_bytes([pair[0], pair[1]]).to_f32();
                    bf16::from_f32(v + scale * 0.02 * normal(&mut rng)).to_le_bytes()
                })
                .collect();
            SynthTensor { bytes, ..t.clone() }
        })
        .collect()
}

/// Writes a tiny base and one fine-tune (with a new classifier-like head) into `dir` and
/// returns their paths.
pub fn write_tiny_family(dir: &Path, seed: u64) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let base = tiny_base(seed);
    let mut finetune = tiny_finetune(&base, seed + 1, 0.1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 2);
    let head: Vec<u8> = (0..64 * 4).flat_map(|_| bf16::from_f32(0.02 * normal(&mut rng)).to_le_bytes()).collect();
    finetune.push(SynthTensor { name: "score.weight".into(), dtype: Dtype::BF16, shape: vec![4, 64], bytes: head });
    let metadata = [("format".to_string(), "pt".to_string())];
    let to_io = |e: SafetensorsError| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    let base_path = dir.join("base.safetensors");
    let finetune_path = dir.join("finetune.safetensors");
    std::fs::write(&base_path, to_safetensors(&base, Some(&metadata)).map_err(to_io)?)?;
    std::fs::write(&finetune_path, to_safetensors(&finetune, Some(&metadata)).map_err(to_io)?)?;
    Ok((base_path, finetune_path))
}
