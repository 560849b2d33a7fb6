//! The llama architecture as a GGUF states it and as Hugging Face expects
//! it: the hyper-parameters read and checked, `config.json`, the tensor
//! names, and the rotary row order of `q_proj`/`k_proj`.

use serde_json::{json, Value};

use super::reader::{Gguf, MetaValue};
use crate::error::{Error, Result};
use crate::gpu::DType;

// ---------------------------------------------------------------------------
// Rotary row order of q/k
// ---------------------------------------------------------------------------

/// llama.cpp's converter reorders the rows of each head of `q_proj`/`k_proj`
/// from Hugging Face's "rotate half" layout to interleaved pairs:
/// GGUF row `h·d + 2i + s` is HF row `h·d + s·d/2 + i` (d = head_dim).
/// This undoes it (transformers' `reverse_permute_weights`). `w` is row-major
/// `[rows, cols]`; rows must be a multiple of `2·n_head`.
pub fn unpermute_qk_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    permute_rows(w, rows, cols, n_head, false)
}

/// The converter's direction (HF → GGUF), for tests and round trips.
pub fn permute_qk_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    permute_rows(w, rows, cols, n_head, true)
}

fn permute_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    to_gguf: bool,
) -> Result<Vec<f32>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || w.len() != rows * cols {
        return Err(Error::Invalid(format!(
            "cannot reorder the rotary rows of a [{rows}, {cols}] matrix ({} values) into {n_head} heads",
            w.len()
        )));
    }
    let head = rows / n_head;
    let half = head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let hf = h * head + s * half + i;
                let gg = h * head + 2 * i + s;
                let (dst, src) = if to_gguf { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// The Hugging Face llama name of a llama.cpp tensor name, or None.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}
// ---------------------------------------------------------------------------
// The hyper-parameters and config.json
// ---------------------------------------------------------------------------

/// The llama hyper-parameters a GGUF states, read and checked.
#[derive(Clone, Debug)]
pub struct LlamaParams {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub unk_token_id: Option<u32>,
}
impl Gguf {
    fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.bad(format!(
                        "metadata '{key}' should be a non-negative integer, found {}",
                        v.type_name()
                    ))
                }),
        }
    }

    fn need_usize(&self, key: &str) -> Result<usize> {
        self.meta_usize(key)?
            .ok_or_else(|| self.bad(format!("metadata '{key}' is missing")))
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.bad(format!(
                    "metadata '{key}' should be a number, found {}",
                    v.type_name()
                ))
            }),
        }
    }

    fn token_id(&self, key: &str, vocab: usize) -> Result<Option<u32>> {
        match self.meta_usize(key)? {
            None => Ok(None),
            Some(id) if id < vocab => Ok(Some(id as u32)),
            Some(id) => Err(self.bad(format!(
                "metadata '{key}' = {id} is outside the vocabulary of {vocab} tokens"
            ))),
        }
    }

    /// The architecture (`general.architecture`).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// Read the llama hyper-parameters and check the tensors agree with them.
    pub fn llama_params(&self) -> Result<LlamaParams> {
        match self.architecture() {
            Some("llama") => {}
            Some(other) => {
                return Err(self.bad(format!(
                    "architecture '{other}' is not supported; import-gguf converts llama-architecture files"
                )))
            }
            None => return Err(self.bad("metadata 'general.architecture' is missing".into())),
        }
        let num_layers = self.need_usize("llama.block_count")?;
        let hidden_size = self.need_usize("llama.embedding_length")?;
        let intermediate_size = self.need_usize("llama.feed_forward_length")?;
        let num_heads = self.need_usize("llama.attention.head_count")?;
        let num_kv_heads = self
            .meta_usize("llama.attention.head_count_kv")?
            .unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(self.bad(format!(
                "{num_heads} attention heads cannot share {num_kv_heads} key/value heads"
            )));
        }
        let head_dim = match self.meta_usize("llama.attention.key_length")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(self.bad(format!(
                    "hidden size {hidden_size} is not a multiple of {num_heads} heads and llama.attention.key_length is missing"
                )))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(self.bad(format!("head dimension {head_dim} is not even")));
        }
        if let Some(v) = self.meta_usize("llama.attention.value_length")? {
            if v != head_dim {
                return Err(self.bad(format!(
                    "key length {head_dim} and value length {v} differ; Hugging Face llama needs them equal"
                )));
            }
        }
        if let Some(r) = self.meta_usize("llama.rope.dimension_count")? {
            if r != head_dim {
                return Err(self.bad(format!(
                    "rotary embeddings cover {r} of {head_dim} head dimensions; Hugging Face llama rotates all of them"
                )));
            }
        }
        if let Some(kind) = self
            .get("llama.rope.scaling.type")
            .and_then(MetaValue::as_str)
        {
            if kind != "none" {
                return Err(self.bad(format!(
                    "rope scaling '{kind}' is not supported by import-gguf"
                )));
            }
        }
        if self.tensor("rope_freqs.weight").is_some() {
            return Err(self.bad(
                "the file has rope_freqs.weight (Llama 3.1-style rope scaling), which import-gguf cannot express in config.json yet".into(),
            ));
        }
        let embed = self
            .tensor("token_embd.weight")
            .ok_or_else(|| self.bad("tensor 'token_embd.weight' is missing".into()))?;
        if embed.dims.len() != 2 || embed.dims[0] as usize != hidden_size {
            return Err(self.bad(format!(
                "token_embd.weight has dimensions {:?}, expected [{hidden_size}, vocab]",
                embed.dims
            )));
        }
        let vocab_size = embed.dims[1] as usize;
        if let Some(n) = self.meta_usize("llama.vocab_size")? {
            if n != vocab_size {
                return Err(self.bad(format!(
                    "llama.vocab_size is {n} but token_embd.weight has {vocab_size} rows"
                )));
            }
        }
        let rms_norm_eps = self
            .meta_f64("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5);
        let rope_theta = self.meta_f64("llama.rope.freq_base")?.unwrap_or(10000.0);
        let max_position_embeddings = self.meta_usize("llama.context_length")?.unwrap_or(2048);
        Ok(LlamaParams {
            num_layers,
            hidden_size,
            intermediate_size,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            bos_token_id: self.token_id("tokenizer.ggml.bos_token_id", vocab_size)?,
            eos_token_id: self.token_id("tokenizer.ggml.eos_token_id", vocab_size)?,
            pad_token_id: self.token_id("tokenizer.ggml.padding_token_id", vocab_size)?,
            unk_token_id: self.token_id("tokenizer.ggml.unknown_token_id", vocab_size)?,
        })
    }
}

/// `config.json` for a llama model.
pub fn llama_config_json(p: &LlamaParams, dtype: DType) -> Value {
    let dtype_name = torch_dtype(dtype);
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.num_heads,
        "num_key_value_heads": p.num_kv_heads,
        "head_dim": p.head_dim,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": p.max_position_embeddings,
        "rms_norm_eps": p.rms_norm_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": null,
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": p.tie_word_embeddings,
        "use_cache": true,
        "bos_token_id": p.bos_token_id,
        "eos_token_id": p.eos_token_id,
        "pad_token_id": p.pad_token_id,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    })
}

fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}
