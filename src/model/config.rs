//! Model configuration: the Hugging Face `config.json` of the supported
//! families (qwen3, llama, gpt_neox) in one description, and the tensors a
//! checkpoint of that description must hold.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

pub const SUPPORTED: &[&str] = &["qwen3", "llama", "gpt_neox"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Llama-style decoder with per-head q/k RMSNorm.
    Qwen3,
    Llama,
    /// GPT-NeoX / Pythia: LayerNorm with bias, parallel residual, partial rotary.
    GptNeox,
}

impl Family {
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Qwen3 => "qwen3",
            Family::Llama => "llama",
            Family::GptNeox => "gpt_neox",
        }
    }
}

/// Llama 3 rope scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    /// Fraction of each head's dimensions that are rotated (GPT-NeoX).
    pub rotary_pct: f64,
    pub use_parallel_residual: bool,
    pub norm_eps: f64,
    pub max_position_embeddings: usize,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The file as read, so that exports keep every field we do not model.
    pub raw: Value,
}

/// Largest layer count, head count and per-dimension size a config may
/// name: far above any published model, low enough that nothing planned
/// from them (layer lists, tensor names) is a large allocation before the
/// checkpoint's own tensors confirm the sizes.
pub const MAX_LAYERS: usize = 4096;
pub const MAX_HEADS: usize = 1 << 16;
pub const MAX_DIM: usize = 1 << 24;
/// Largest element count of any one tensor the config implies (2⁴⁰).
pub const MAX_ELEMENTS: usize = 1 << 40;

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(57).map(|c| c.0).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

pub(super) fn wrong(key: &str, v: &Value, expected: &str) -> Error {
    Error::Invalid(format!("'{key}' is {}, expected {expected}", show(v)))
}

/// An optional non-negative integer: absent or null → None; anything else
/// that is not an integer (a string, a fraction, a negative number) is an error.
fn opt_uint(v: &Value, key: &str) -> Result<Option<u64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong(key, x, "a non-negative integer")),
    }
}

/// An optional integer in `[lo, hi]`.
pub(super) fn opt_in(v: &Value, key: &str, lo: usize, hi: usize) -> Result<Option<usize>> {
    match opt_uint(v, key)? {
        None => Ok(None),
        Some(x) if (lo as u64..=hi as u64).contains(&x) => Ok(Some(x as usize)),
        Some(_) => Err(wrong(
            key,
            &v[key],
            &format!("an integer from {lo} to {hi}"),
        )),
    }
}

/// A required integer in `[lo, hi]`.
pub(super) fn need_in(v: &Value, key: &str, lo: usize, hi: usize) -> Result<usize> {
    opt_in(v, key, lo, hi)?.ok_or_else(|| {
        Error::Invalid(format!(
            "'{key}' is missing, expected an integer from {lo} to {hi}"
        ))
    })
}

fn opt_f64(v: &Value, key: &str) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| wrong(key, x, "a number")),
    }
}

/// An optional number with `ok(x)`; `expected` says what is allowed.
pub(super) fn opt_f64_where(
    v: &Value,
    key: &str,
    ok: impl Fn(f64) -> bool,
    expected: &str,
) -> Result<Option<f64>> {
    match opt_f64(v, key)? {
        Some(x) if !ok(x) => Err(wrong(key, &v[key], expected)),
        x => Ok(x),
    }
}

pub(super) fn opt_bool(v: &Value, key: &str) -> Result<Option<bool>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(x) => Err(wrong(key, x, "true or false")),
    }
}

pub(super) fn opt_str<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(x) => Err(wrong(key, x, "a string")),
    }
}

/// A positive number that stays finite (and non-zero) in f32, where the
/// GPU uses it.
pub(super) fn positive_f32(x: f64) -> bool {
    x > 0.0 && x.is_finite() && (x as f32).is_finite() && (x as f32) > 0.0
}

/// Token ids: one integer, a list of them, or absent/null; each below `vocab`.
fn token_ids(v: &Value, key: &str, vocab: usize) -> Result<Vec<u32>> {
    let expected = format!("a token id below vocab_size {vocab}, or a list of them");
    let one = |x: &Value| match x.as_u64() {
        Some(i) if i < vocab as u64 => Ok(i as u32),
        _ => Err(wrong(key, &v[key], &expected)),
    };
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path.display())))?;
        ModelConfig::from_json(v).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parse and validate a config: every key boomgpu reads has the right
    /// type and a usable value (positive sizes within bounds, heads that
    /// divide, finite positive eps and rope theta), or the error names the
    /// key, its value and what was expected.
    pub fn from_json(v: Value) -> Result<ModelConfig> {
        if !v.is_object() {
            return Err(Error::Invalid(format!(
                "the config is {}, expected a JSON object",
                show(&v)
            )));
        }
        let model_type = opt_str(&v, "model_type")?.unwrap_or("").to_string();
        let family = match model_type.as_str() {
            "qwen3" => Family::Qwen3,
            "llama" => Family::Llama,
            "gpt_neox" => Family::GptNeox,
            other if super::encoder_config::is_encoder_type(other) => {
                return Err(Error::Invalid(format!(
                    "'{other}' is an encoder (a masked language model): eval and patch take \
                     encoder pairs; this command needs a decoder ({})",
                    SUPPORTED.join(", ")
                )))
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unsupported model_type '{other}'; boomgpu supports: {} (decoders) and {} \
                     (encoders, in eval and patch)",
                    SUPPORTED.join(", "),
                    super::encoder_config::ENCODER_TYPES.join(", ")
                )))
            }
        };
        let hidden_size = need_in(&v, "hidden_size", 1, MAX_DIM)?;
        let num_heads = need_in(&v, "num_attention_heads", 1, MAX_HEADS)?;
        let num_layers = need_in(&v, "num_hidden_layers", 1, MAX_LAYERS)?;
        let intermediate_size = need_in(&v, "intermediate_size", 1, MAX_DIM)?;
        let vocab_size = need_in(&v, "vocab_size", 1, MAX_DIM)?;
        let head_dim_key = match family {
            Family::GptNeox => None,
            _ => opt_in(&v, "head_dim", 1, MAX_DIM)?,
        };
        if head_dim_key.is_none() && hidden_size % num_heads != 0 {
            return Err(Error::Invalid(format!(
                "'hidden_size' {hidden_size} is not divisible by 'num_attention_heads' {num_heads}; \
                 expected a multiple (or a 'head_dim' key)"
            )));
        }
        let head_dim = head_dim_key.unwrap_or(hidden_size / num_heads);
        if !head_dim.is_multiple_of(2) {
            return Err(Error::Invalid(format!(
                "the head size is {head_dim} ('head_dim', or hidden_size / num_attention_heads); \
                 expected an even number (rotary embeddings rotate pairs)"
            )));
        }
        let num_kv_heads = match family {
            Family::GptNeox => num_heads,
            _ => opt_in(&v, "num_key_value_heads", 1, MAX_HEADS)?.unwrap_or(num_heads),
        };
        if num_heads % num_kv_heads != 0 {
            return Err(Error::Invalid(format!(
                "'num_key_value_heads' is {num_kv_heads}, expected a divisor of \
                 'num_attention_heads' {num_heads}"
            )));
        }
        // No tensor the config implies may be absurdly large (or overflow).
        let q = num_heads.checked_mul(head_dim);
        for (what, a, b) in [
            ("vocab_size × hidden_size", Some(vocab_size), hidden_size),
            (
                "intermediate_size × hidden_size",
                Some(intermediate_size),
                hidden_size,
            ),
            (
                "num_attention_heads × head_dim × hidden_size",
                q,
                hidden_size,
            ),
        ] {
            match a.and_then(|a| a.checked_mul(b)) {
                Some(n) if n <= MAX_ELEMENTS => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "{what} is too large (more than {MAX_ELEMENTS} elements in one tensor); \
                         expected the sizes of a real model"
                    )))
                }
            }
        }
        const THETA: &str = "a positive number (finite in f32)";
        let rope_params = match v.get("rope_parameters") {
            None | Some(Value::Null) => None,
            Some(r @ Value::Object(_)) => Some(r),
            Some(x) => return Err(wrong("rope_parameters", x, "an object")),
        };
        let rope_theta = match opt_f64_where(&v, "rope_theta", positive_f32, THETA)? {
            Some(t) => t,
            None => match opt_f64_where(&v, "rotary_emb_base", positive_f32, THETA)? {
                Some(t) => t,
                None => match rope_params {
                    Some(r) => opt_f64_where(r, "rope_theta", positive_f32, THETA)
                        .map_err(|e| Error::Invalid(format!("rope_parameters: {e}")))?
                        .unwrap_or(10000.0),
                    None => 10000.0,
                },
            },
        };
        let scaling_key = if v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        let rope_scaling = match v.get(scaling_key) {
            Some(r @ Value::Object(_)) => {
                let in_scaling = |e: Error| Error::Invalid(format!("{scaling_key}: {e}"));
                let kind = match opt_str(r, "rope_type").map_err(in_scaling)? {
                    Some(k) => k,
                    None => opt_str(r, "type").map_err(in_scaling)?.unwrap_or("default"),
                };
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| {
                            opt_f64_where(r, k, positive_f32, THETA)
                                .map_err(in_scaling)?
                                .ok_or_else(|| {
                                    Error::Invalid(format!(
                                        "{scaling_key} (llama3) is missing '{k}', expected {THETA}"
                                    ))
                                })
                        };
                        let s = Llama3Scaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position_embeddings: f(
                                "original_max_position_embeddings",
                            )?,
                        };
                        if s.high_freq_factor as f32 <= s.low_freq_factor as f32 {
                            return Err(Error::Invalid(format!(
                                "{scaling_key}: 'high_freq_factor' is {}, expected more than \
                                 'low_freq_factor' {}",
                                s.high_freq_factor, s.low_freq_factor
                            )));
                        }
                        Some(s)
                    }
                    other => {
                        return Err(Error::Invalid(format!(
                            "unsupported rope scaling type '{other}' (supported: default, llama3)"
                        )))
                    }
                }
            }
            None | Some(Value::Null) => None,
            Some(x) => return Err(wrong(scaling_key, x, "an object or null")),
        };
        const EPS: &str = "a small positive number (0 < eps < 1)";
        let eps_ok = |x: f64| positive_f32(x) && x < 1.0;
        let (norm_eps, tie_default, rotary_pct) = match family {
            Family::GptNeox => {
                let pct = match opt_f64(&v, "rotary_pct")? {
                    Some(p) => Some(("rotary_pct", p)),
                    None => match rope_params {
                        Some(r) => opt_f64(r, "partial_rotary_factor")
                            .map_err(|e| Error::Invalid(format!("rope_parameters: {e}")))?
                            .map(|p| ("partial_rotary_factor", p)),
                        None => None,
                    },
                };
                let rotary_pct = match pct {
                    Some((key, p)) => {
                        let rot = (head_dim as f64 * p) as usize;
                        if !(p > 0.0 && p <= 1.0) || rot < 2 || !rot.is_multiple_of(2) {
                            return Err(Error::Invalid(format!(
                                "'{key}' is {p}, expected a fraction in (0, 1] that rotates an \
                                 even number (at least 2) of the {head_dim} dimensions of a head"
                            )));
                        }
                        p
                    }
                    None => 0.25,
                };
                (
                    opt_f64_where(&v, "layer_norm_eps", eps_ok, EPS)?.unwrap_or(1e-5),
                    false,
                    rotary_pct,
                )
            }
            _ => (
                opt_f64_where(&v, "rms_norm_eps", eps_ok, EPS)?.unwrap_or(1e-6),
                family == Family::Llama,
                1.0,
            ),
        };
        if family == Family::GptNeox && rotary_pct == 0.25 && !(head_dim / 4).is_multiple_of(2) {
            return Err(Error::Invalid(format!(
                "the default 'rotary_pct' 0.25 rotates {} of the {head_dim} dimensions of a head; \
                 expected an even number",
                head_dim / 4
            )));
        }
        let tie_word_embeddings = opt_bool(&v, "tie_word_embeddings")?.unwrap_or(tie_default);
        let act = opt_str(&v, "hidden_act")?;
        if family == Family::GptNeox {
            let act = act.unwrap_or("gelu");
            if act != "gelu" {
                return Err(Error::Invalid(format!(
                    "gpt_neox hidden_act '{act}' is not supported (only the exact 'gelu')"
                )));
            }
        } else {
            let act = act.unwrap_or("silu");
            if act != "silu" {
                return Err(Error::Invalid(format!(
                    "hidden_act '{act}' is not supported (only 'silu')"
                )));
            }
        }
        let max_position_embeddings =
            opt_in(&v, "max_position_embeddings", 2, usize::MAX)?.unwrap_or(2048);
        let use_parallel_residual = opt_bool(&v, "use_parallel_residual")?.unwrap_or(true);
        let attention_bias = opt_bool(&v, "attention_bias")?;
        let mlp_bias = opt_bool(&v, "mlp_bias")?;
        let bos = token_ids(&v, "bos_token_id", vocab_size)?;
        if bos.len() > 1 {
            return Err(wrong(
                "bos_token_id",
                &v["bos_token_id"],
                &format!("one token id below vocab_size {vocab_size}"),
            ));
        }
        let eos_token_ids = token_ids(&v, "eos_token_id", vocab_size)?;
        Ok(ModelConfig {
            family,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            tie_word_embeddings,
            rope_theta,
            rope_scaling,
            rotary_pct,
            use_parallel_residual,
            norm_eps,
            max_position_embeddings,
            attention_bias: attention_bias.unwrap_or(family == Family::GptNeox),
            mlp_bias: family == Family::GptNeox || mlp_bias.unwrap_or(false),
            bos_token_id: bos.first().copied(),
            eos_token_ids,
            raw: v,
        })
    }

    /// Number of dimensions of each head that rotary embeddings rotate.
    pub fn rotary_dim(&self) -> usize {
        match self.family {
            Family::GptNeox => (self.head_dim as f64 * self.rotary_pct) as usize,
            _ => self.head_dim,
        }
    }

    /// Prefix of a decoder layer's tensor names.
    pub fn layer_prefix(&self, i: usize) -> String {
        match self.family {
            Family::GptNeox => format!("gpt_neox.layers.{i}."),
            _ => format!("model.layers.{i}."),
        }
    }

    pub fn embed_name(&self) -> &'static str {
        match self.family {
            Family::GptNeox => "gpt_neox.embed_in.weight",
            _ => "model.embed_tokens.weight",
        }
    }

    pub fn head_name(&self) -> &'static str {
        match self.family {
            Family::GptNeox => "embed_out.weight",
            _ => "lm_head.weight",
        }
    }

    /// Names and shapes of the final norm (weight, and bias for NeoX).
    pub fn final_norm_names(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        match self.family {
            Family::GptNeox => vec![
                ("gpt_neox.final_layer_norm.weight".into(), vec![h]),
                ("gpt_neox.final_layer_norm.bias".into(), vec![h]),
            ],
            _ => vec![("model.norm.weight".into(), vec![h])],
        }
    }

    /// The tensors of decoder layer `i`, names relative to the layer prefix.
    pub fn layer_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut t: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |n: &str, s: Vec<usize>| t.push((n.to_string(), s));
        match self.family {
            Family::GptNeox => {
                add("input_layernorm.weight", vec![h]);
                add("input_layernorm.bias", vec![h]);
                add("post_attention_layernorm.weight", vec![h]);
                add("post_attention_layernorm.bias", vec![h]);
                add("attention.query_key_value.weight", vec![3 * h, h]);
                add("attention.query_key_value.bias", vec![3 * h]);
                add("attention.dense.weight", vec![h, h]);
                add("attention.dense.bias", vec![h]);
                add("mlp.dense_h_to_4h.weight", vec![i, h]);
                add("mlp.dense_h_to_4h.bias", vec![i]);
                add("mlp.dense_4h_to_h.weight", vec![h, i]);
                add("mlp.dense_4h_to_h.bias", vec![h]);
            }
            Family::Llama | Family::Qwen3 => {
                add("input_layernorm.weight", vec![h]);
                add("post_attention_layernorm.weight", vec![h]);
                add("self_attn.q_proj.weight", vec![q, h]);
                add("self_attn.k_proj.weight", vec![kv, h]);
                add("self_attn.v_proj.weight", vec![kv, h]);
                add("self_attn.o_proj.weight", vec![h, q]);
                if self.attention_bias {
                    add("self_attn.q_proj.bias", vec![q]);
                    add("self_attn.k_proj.bias", vec![kv]);
                    add("self_attn.v_proj.bias", vec![kv]);
                    // Hugging Face's Llama and Qwen3 give o_proj a bias
                    // under the same switch.
                    add("self_attn.o_proj.bias", vec![h]);
                }
                if self.family == Family::Qwen3 {
                    add("self_attn.q_norm.weight", vec![self.head_dim]);
                    add("self_attn.k_norm.weight", vec![self.head_dim]);
                }
                add("mlp.gate_proj.weight", vec![i, h]);
                add("mlp.up_proj.weight", vec![i, h]);
                add("mlp.down_proj.weight", vec![h, i]);
                if self.mlp_bias {
                    add("mlp.gate_proj.bias", vec![i]);
                    add("mlp.up_proj.bias", vec![i]);
                    add("mlp.down_proj.bias", vec![h]);
                }
            }
        }
        t
    }

    /// Every tensor a checkpoint must hold, with its shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![(
            self.embed_name().to_string(),
            vec![self.vocab_size, self.hidden_size],
        )];
        for l in 0..self.num_layers {
            let p = self.layer_prefix(l);
            for (n, s) in self.layer_tensors() {
                out.push((format!("{p}{n}"), s));
            }
        }
        out.extend(self.final_norm_names());
        if !self.tie_word_embeddings {
            out.push((
                self.head_name().to_string(),
                vec![self.vocab_size, self.hidden_size],
            ));
        }
        out
    }

    /// Parameters of the whole model (tied embeddings counted once).
    pub fn param_count(&self) -> u64 {
        self.expected_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    }

    /// The config with another layer count (students, patched models).
    pub fn with_layers(&self, n: usize) -> ModelConfig {
        let mut c = self.clone();
        c.num_layers = n;
        c.raw["num_hidden_layers"] = Value::from(n);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qwen3_llama_neox_parse() {
        let q = ModelConfig::from_json(json!({
            "model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "vocab_size": 151936, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": true, "hidden_act": "silu"
        }))
        .unwrap();
        assert_eq!((q.head_dim, q.num_kv_heads, q.rotary_dim()), (128, 8, 128));
        // Qwen3-4B has about 4.0B parameters.
        let p = q.param_count() as f64 / 1e9;
        assert!((p - 4.02).abs() < 0.03, "{p}");
        let l = ModelConfig::from_json(json!({
            "model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192,
            "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
            "vocab_size": 128256, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "tie_word_embeddings": true, "eos_token_id": [128001, 128008]
        }))
        .unwrap();
        assert_eq!(l.head_dim, 128);
        assert_eq!(l.rope_scaling.unwrap().factor, 32.0);
        assert_eq!(l.eos_token_ids, vec![128001, 128008]);
        let n = ModelConfig::from_json(json!({
            "model_type": "gpt_neox", "hidden_size": 2560, "intermediate_size": 10240,
            "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 50304,
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true,
            "layer_norm_eps": 1e-5, "hidden_act": "gelu"
        }))
        .unwrap();
        assert_eq!((n.rotary_dim(), n.tie_word_embeddings), (20, false));
        // Pythia-2.8b: about 2.78B parameters.
        let p = n.param_count() as f64 / 1e9;
        assert!((p - 2.775).abs() < 0.02, "{p}");
    }

    #[test]
    fn unknown_model_type_lists_supported() {
        let e = ModelConfig::from_json(json!({"model_type": "mamba"})).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("mamba") && m.contains("qwen3, llama, gpt_neox"),
            "{m}"
        );
    }
}
