//! Fresh weights for `init-student --random-init` (the reference's
//! `random_initialization` ablation): what Hugging Face `_init_weights`
//! does for these families. Matrices (linear layers, embeddings, LM head)
//! ~ normal(0, `initializer_range`), norm weights = 1, biases = 0, and the
//! embedding row of `pad_token_id` (llama/qwen3 `padding_idx`) = 0.
//!
//! Each tensor gets its own stream, seeded from the seed and the tensor's
//! name, so the result does not depend on the order tensors are written in.

use std::borrow::Cow;

use serde_json::Value;

use crate::model::{Family, ModelConfig};

/// How one tensor is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitRule {
    Normal {
        std: f32,
    },
    Ones,
    Zeros,
    /// Normal, with row `pad` zero (an embedding with `padding_idx`).
    NormalPadRow {
        std: f32,
        pad: usize,
    },
}

/// The `initializer_range` of a config (0.02 when absent, as in HF).
pub fn initializer_range(cfg: &ModelConfig) -> f32 {
    cfg.raw
        .get("initializer_range")
        .and_then(Value::as_f64)
        .unwrap_or(0.02) as f32
}

/// The rule for tensor `name` of shape `shape` in a model of `cfg`.
pub fn init_rule(cfg: &ModelConfig, name: &str, shape: &[usize]) -> InitRule {
    let std = initializer_range(cfg);
    if name.ends_with(".bias") {
        return InitRule::Zeros;
    }
    if shape.len() == 1 {
        // Every 1-D weight of these families is a norm (RMSNorm, LayerNorm, q/k norm).
        return InitRule::Ones;
    }
    if name == cfg.embed_name() && cfg.family != Family::GptNeox {
        if let Some(pad) = cfg.raw.get("pad_token_id").and_then(Value::as_u64) {
            if (pad as usize) < shape[0] {
                return InitRule::NormalPadRow {
                    std,
                    pad: pad as usize,
                };
            }
        }
    }
    InitRule::Normal { std }
}

/// SplitMix64: small, fast, and good enough for initial weights.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The stream of tensor `name` under `seed`.
    pub fn for_tensor(seed: u64, name: &str) -> Rng {
        // FNV-1a of the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut r = Rng(seed ^ h.rotate_left(17));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform_open0(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Two independent standard normals (Box-Muller).
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let r = (-2.0 * self.uniform_open0().ln()).sqrt();
        let a = std::f64::consts::TAU * self.uniform_open0();
        (r * a.cos(), r * a.sin())
    }
}

/// The values of a tensor of `shape` under `rule`, row-major.
pub fn init_values(rule: InitRule, shape: &[usize], seed: u64, name: &str) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let normal = |std: f32| {
        let mut rng = Rng::for_tensor(seed, name);
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let (a, b) = rng.normal_pair();
            v.push((a * std as f64) as f32);
            v.push((b * std as f64) as f32);
        }
        v.truncate(n);
        v
    };
    match rule {
        InitRule::Ones => vec![1.0; n],
        InitRule::Zeros => vec![0.0; n],
        InitRule::Normal { std } => normal(std),
        InitRule::NormalPadRow { std, pad } => {
            let mut v = normal(std);
            let cols: usize = shape[1..].iter().product();
            v[pad * cols..(pad + 1) * cols].fill(0.0);
            v
        }
    }
}

/// Little-endian bytes of `values` in `dtype` (f32, bf16 or f16, rounded to nearest).
pub fn encode(values: &[f32], dtype: safetensors::Dtype) -> Vec<u8> {
    match dtype {
        safetensors::Dtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        safetensors::Dtype::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        safetensors::Dtype::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        other => panic!("encode: unsupported dtype {other:?} (checked before)"),
    }
}

/// Tensor data for the safetensors writer: bytes borrowed from a mapped
/// checkpoint, or fresh weights generated only when written (so a large
/// student is never held in memory whole).
pub enum TensorData<'a> {
    Borrowed(&'a [u8]),
    Random {
        rule: InitRule,
        seed: u64,
        name: String,
    },
}

pub struct OutTensor<'a> {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: TensorData<'a>,
}

impl safetensors::View for OutTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match &self.data {
            TensorData::Borrowed(b) => Cow::Borrowed(b),
            TensorData::Random { rule, seed, name } => Cow::Owned(encode(
                &init_values(*rule, &self.shape, *seed, name),
                self.dtype,
            )),
        }
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normals_have_the_right_moments_and_streams_differ() {
        let v = init_values(InitRule::Normal { std: 0.02 }, &[1000, 101], 7, "x");
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 2e-4, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 4e-4, "{}", var.sqrt());
        assert_eq!(
            v,
            init_values(InitRule::Normal { std: 0.02 }, &[1000, 101], 7, "x")
        );
        let w = init_values(InitRule::Normal { std: 0.02 }, &[1000, 101], 7, "y");
        let u = init_values(InitRule::Normal { std: 0.02 }, &[1000, 101], 8, "x");
        assert_ne!(v, w);
        assert_ne!(v, u);
    }

    #[test]
    fn rules_follow_hf_init_weights() {
        let cfg = ModelConfig::from_json(json!({
            "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 10,
            "initializer_range": 0.05, "pad_token_id": 3
        }))
        .unwrap();
        assert_eq!(
            init_rule(&cfg, "model.layers.0.input_layernorm.weight", &[8]),
            InitRule::Ones
        );
        assert_eq!(
            init_rule(&cfg, "model.layers.0.self_attn.q_proj.weight", &[8, 8]),
            InitRule::Normal { std: 0.05 }
        );
        assert_eq!(
            init_rule(&cfg, "model.layers.0.self_attn.q_proj.bias", &[8]),
            InitRule::Zeros
        );
        let r = init_rule(&cfg, "model.embed_tokens.weight", &[10, 8]);
        assert_eq!(r, InitRule::NormalPadRow { std: 0.05, pad: 3 });
        let v = init_values(r, &[10, 8], 1, "e");
        assert!(v[24..32].iter().all(|&x| x == 0.0));
        assert!(v[16..24].iter().all(|&x| x != 0.0));
        let b = encode(&[1.0, -2.0], safetensors::Dtype::BF16);
        assert_eq!(b, vec![0x80, 0x3f, 0x00, 0xc0]);
    }
}
