//! The encoder family's `config.json` (BERT and DistilBERT masked language
//! models) in one description, and the names their checkpoints give each
//! tensor.

use std::path::Path;

use serde_json::Value;

use super::config::{
    need_in, opt_bool, opt_f64_where, opt_in, opt_str, positive_f32, wrong, MAX_DIM, MAX_ELEMENTS,
    MAX_HEADS, MAX_LAYERS,
};
use crate::error::{Error, Result};

/// The encoder model types boomgpu reads.
pub const ENCODER_TYPES: &[&str] = &["bert", "distilbert"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderKind {
    /// `BertForMaskedLM`: token-type embeddings, `cls.predictions` head.
    Bert,
    /// `DistilBertForMaskedLM`: no token types, `vocab_*` head.
    DistilBert,
}

impl EncoderKind {
    pub fn model_type(self) -> &'static str {
        match self {
            EncoderKind::Bert => "bert",
            EncoderKind::DistilBert => "distilbert",
        }
    }
}

/// Whether a `model_type` is one of the encoder family.
pub fn is_encoder_type(model_type: &str) -> bool {
    ENCODER_TYPES.contains(&model_type)
}

/// The `model_type` of a config file, without validating the rest.
pub fn model_type_of(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path.display())))?;
    Ok(v.get("model_type")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string())
}

#[derive(Clone, Debug)]
pub struct EncoderConfig {
    pub kind: EncoderKind,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (0 for DistilBERT).
    pub type_vocab_size: usize,
    pub norm_eps: f64,
    /// The file as read, so that exports keep every field we do not model.
    pub raw: Value,
}

impl EncoderConfig {
    pub fn from_file(path: &Path) -> Result<EncoderConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path.display())))?;
        EncoderConfig::from_json(v).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parse and validate: every key boomgpu reads has a usable value, or
    /// the error names the key, its value and what was expected. Variants
    /// boomgpu does not compute (another activation, relative positions, a
    /// decoder configuration of BERT) are refused here.
    pub fn from_json(v: Value) -> Result<EncoderConfig> {
        if !v.is_object() {
            return Err(Error::Invalid("the config is not a JSON object".into()));
        }
        let model_type = opt_str(&v, "model_type")?.unwrap_or("");
        let kind = match model_type {
            "bert" => EncoderKind::Bert,
            "distilbert" => EncoderKind::DistilBert,
            other => {
                return Err(Error::Invalid(format!(
                    "model_type '{other}' is not an encoder; the encoder family is: {}",
                    ENCODER_TYPES.join(", ")
                )))
            }
        };
        // The two spell the same sizes differently.
        let key = |bert: &'static str, distil: &'static str| match kind {
            EncoderKind::Bert => bert,
            EncoderKind::DistilBert => distil,
        };
        let hidden_size = need_in(&v, key("hidden_size", "dim"), 1, MAX_DIM)?;
        let num_layers = need_in(&v, key("num_hidden_layers", "n_layers"), 1, MAX_LAYERS)?;
        let num_heads = need_in(&v, key("num_attention_heads", "n_heads"), 1, MAX_HEADS)?;
        let intermediate_size = need_in(&v, key("intermediate_size", "hidden_dim"), 1, MAX_DIM)?;
        let vocab_size = need_in(&v, "vocab_size", 1, MAX_DIM)?;
        let max_position_embeddings =
            opt_in(&v, "max_position_embeddings", 1, MAX_DIM)?.unwrap_or(512);
        let act_key = key("hidden_act", "activation");
        let act = opt_str(&v, act_key)?.unwrap_or("gelu");
        if act != "gelu" {
            return Err(wrong(
                act_key,
                &v[act_key],
                "\"gelu\" (the exact GELU; other activations are not implemented)",
            ));
        }
        let (type_vocab_size, norm_eps) = match kind {
            EncoderKind::Bert => {
                if let Some(p) = opt_str(&v, "position_embedding_type")? {
                    if p != "absolute" {
                        return Err(wrong(
                            "position_embedding_type",
                            &v["position_embedding_type"],
                            "\"absolute\" (relative position embeddings are not implemented)",
                        ));
                    }
                }
                if opt_bool(&v, "is_decoder")? == Some(true) {
                    return Err(Error::Invalid(
                        "'is_decoder' is true: boomgpu runs BERT as a bidirectional masked \
                         language model"
                            .into(),
                    ));
                }
                let eps = opt_f64_where(
                    &v,
                    "layer_norm_eps",
                    positive_f32,
                    "a positive number (finite in f32)",
                )?
                .unwrap_or(1e-12);
                (need_in(&v, "type_vocab_size", 1, MAX_DIM)?, eps)
            }
            // DistilBERT's LayerNorms use 1e-12 and no key sets it.
            EncoderKind::DistilBert => (0, 1e-12),
        };
        if !hidden_size.is_multiple_of(num_heads) {
            return Err(Error::Invalid(format!(
                "the width {hidden_size} is not divisible by the {num_heads} attention heads"
            )));
        }
        let head_dim = hidden_size / num_heads;
        if head_dim > 128 || !head_dim.is_multiple_of(4) {
            return Err(Error::Invalid(format!(
                "the head size is {head_dim} (width / heads); boomgpu's attention needs a \
                 multiple of 4 up to 128"
            )));
        }
        for (what, a, b) in [
            ("vocab_size × width", vocab_size, hidden_size),
            ("intermediate size × width", intermediate_size, hidden_size),
            ("positions × width", max_position_embeddings, hidden_size),
        ] {
            if a.checked_mul(b).is_none_or(|n| n > MAX_ELEMENTS) {
                return Err(Error::Invalid(format!(
                    "{what} is too large (more than {MAX_ELEMENTS} elements in one tensor)"
                )));
            }
        }
        Ok(EncoderConfig {
            kind,
            hidden_size,
            num_layers,
            num_heads,
            intermediate_size,
            vocab_size,
            max_position_embeddings,
            type_vocab_size,
            norm_eps,
            raw: v,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The prefix of layer `l`'s tensors.
    pub fn layer_prefix(&self, l: usize) -> String {
        match self.kind {
            EncoderKind::Bert => format!("bert.encoder.layer.{l}."),
            EncoderKind::DistilBert => format!("distilbert.transformer.layer.{l}."),
        }
    }

    /// The checkpoint's name of each part of a layer (each with `.weight`
    /// and `.bias`), beside the name boomgpu gives it.
    pub fn layer_parts(&self) -> [(&'static str, &'static str); 8] {
        match self.kind {
            EncoderKind::Bert => BERT_LAYER,
            EncoderKind::DistilBert => [
                ("q", "attention.q_lin"),
                ("k", "attention.k_lin"),
                ("v", "attention.v_lin"),
                ("o", "attention.out_lin"),
                ("ln1", "sa_layer_norm"),
                ("ff1", "ffn.lin1"),
                ("ff2", "ffn.lin2"),
                ("ln2", "output_layer_norm"),
            ],
        }
    }

    /// `[rows, cols]` of a layer part's weight (a LayerNorm's is `[width]`).
    pub fn part_shape(&self, part: &str) -> Vec<usize> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        match part {
            "ff1" => vec![i, h],
            "ff2" => vec![h, i],
            "ln1" | "ln2" => vec![h],
            _ => vec![h, h],
        }
    }

    /// Names of the embedding tensors: words, positions, LayerNorm prefix,
    /// and the token types (BERT).
    pub fn embedding_names(&self) -> EmbeddingNames {
        let p = match self.kind {
            EncoderKind::Bert => "bert.embeddings.",
            EncoderKind::DistilBert => "distilbert.embeddings.",
        };
        EmbeddingNames {
            words: format!("{p}word_embeddings.weight"),
            positions: format!("{p}position_embeddings.weight"),
            norm: format!("{p}LayerNorm"),
            token_types: (self.kind == EncoderKind::Bert)
                .then(|| format!("{p}token_type_embeddings.weight")),
        }
    }

    /// Names of the masked-LM head: transform (dense + bias), its
    /// LayerNorm prefix, the decoder matrix (absent when tied to the word
    /// embeddings) and the decoder bias, each with the names older files use.
    pub fn head_names(&self) -> HeadNames {
        match self.kind {
            EncoderKind::Bert => HeadNames {
                dense: "cls.predictions.transform.dense",
                norm: "cls.predictions.transform.LayerNorm",
                decoder: "cls.predictions.decoder.weight",
                bias: &["cls.predictions.bias", "cls.predictions.decoder.bias"],
            },
            EncoderKind::DistilBert => HeadNames {
                dense: "vocab_transform",
                norm: "vocab_layer_norm",
                decoder: "vocab_projector.weight",
                bias: &["vocab_projector.bias"],
            },
        }
    }
}

/// BERT's names of a layer's parts (also the names an export writes).
pub const BERT_LAYER: [(&str, &str); 8] = [
    ("q", "attention.self.query"),
    ("k", "attention.self.key"),
    ("v", "attention.self.value"),
    ("o", "attention.output.dense"),
    ("ln1", "attention.output.LayerNorm"),
    ("ff1", "intermediate.dense"),
    ("ff2", "output.dense"),
    ("ln2", "output.LayerNorm"),
];

pub struct EmbeddingNames {
    pub words: String,
    pub positions: String,
    pub norm: String,
    pub token_types: Option<String>,
}

pub struct HeadNames {
    pub dense: &'static str,
    pub norm: &'static str,
    pub decoder: &'static str,
    pub bias: &'static [&'static str],
}
