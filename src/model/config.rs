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

fn get_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

fn get_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path.display())))?;
        ModelConfig::from_json(v).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn from_json(v: Value) -> Result<ModelConfig> {
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let family = match model_type.as_str() {
            "qwen3" => Family::Qwen3,
            "llama" => Family::Llama,
            "gpt_neox" => Family::GptNeox,
            other => {
                return Err(Error::Invalid(format!(
                    "unsupported model_type '{other}'; boomgpu supports: {}",
                    SUPPORTED.join(", ")
                )))
            }
        };
        let need = |key: &str| {
            get_usize(&v, key)
                .ok_or_else(|| Error::Invalid(format!("config is missing the integer '{key}'")))
        };
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        let num_layers = need("num_hidden_layers")?;
        let intermediate_size = need("intermediate_size")?;
        let vocab_size = need("vocab_size")?;
        if num_heads == 0 || hidden_size % num_heads != 0 && get_usize(&v, "head_dim").is_none() {
            return Err(Error::Invalid(format!(
                "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}"
            )));
        }
        let num_kv_heads = match family {
            Family::GptNeox => num_heads,
            _ => get_usize(&v, "num_key_value_heads").unwrap_or(num_heads),
        };
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::Invalid(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let head_dim = match family {
            Family::GptNeox => hidden_size / num_heads,
            _ => get_usize(&v, "head_dim").unwrap_or(hidden_size / num_heads),
        };
        let rope_theta = get_f64(&v, "rope_theta")
            .or_else(|| get_f64(&v, "rotary_emb_base"))
            .or_else(|| {
                v.get("rope_parameters")
                    .and_then(|r| get_f64(r, "rope_theta"))
            })
            .unwrap_or(10000.0);
        let rope_scaling = match v.get("rope_scaling").or_else(|| v.get("rope_parameters")) {
            Some(r) if !r.is_null() => {
                let kind = r
                    .get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| {
                            get_f64(r, k).ok_or_else(|| {
                                Error::Invalid(format!("rope_scaling (llama3) is missing '{k}'"))
                            })
                        };
                        Some(Llama3Scaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position_embeddings: f(
                                "original_max_position_embeddings",
                            )?,
                        })
                    }
                    other => {
                        return Err(Error::Invalid(format!(
                            "unsupported rope scaling type '{other}' (supported: default, llama3)"
                        )))
                    }
                }
            }
            _ => None,
        };
        let (norm_eps, tie_default, rotary_pct) = match family {
            Family::GptNeox => (
                get_f64(&v, "layer_norm_eps").unwrap_or(1e-5),
                false,
                get_f64(&v, "rotary_pct")
                    .or_else(|| {
                        v.get("rope_parameters")
                            .and_then(|r| get_f64(r, "partial_rotary_factor"))
                    })
                    .unwrap_or(0.25),
            ),
            _ => (
                get_f64(&v, "rms_norm_eps").unwrap_or(1e-6),
                family == Family::Llama,
                1.0,
            ),
        };
        let tie_word_embeddings = v
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(tie_default);
        if family == Family::GptNeox {
            let act = v
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("gelu");
            if act != "gelu" {
                return Err(Error::Invalid(format!(
                    "gpt_neox hidden_act '{act}' is not supported (only the exact 'gelu')"
                )));
            }
        } else {
            let act = v
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("silu");
            if act != "silu" {
                return Err(Error::Invalid(format!(
                    "hidden_act '{act}' is not supported (only 'silu')"
                )));
            }
        }
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
            use_parallel_residual: v
                .get("use_parallel_residual")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            norm_eps,
            max_position_embeddings: get_usize(&v, "max_position_embeddings").unwrap_or(2048),
            attention_bias: match family {
                Family::GptNeox => v
                    .get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
                _ => v
                    .get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            mlp_bias: family == Family::GptNeox
                || v.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: get_usize(&v, "bos_token_id").map(|x| x as u32),
            eos_token_ids: ids(v.get("eos_token_id")),
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
