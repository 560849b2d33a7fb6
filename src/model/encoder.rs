//! The encoder family on the GPU (BERT and DistilBERT masked language
//! models), written against [`Exec`] like the decoders' layers:
//! embeddings (words + absolute positions (+ token type 0), LayerNorm),
//! post-LayerNorm layers with bidirectional attention and an exact-GELU
//! MLP, and the masked-LM head (dense, GELU, LayerNorm, decoder + bias).
//!
//! BERT and DistilBERT layers compute the same function under different
//! tensor names; on load both are renamed to one set (`q`, `k`, `v`, `o`,
//! `ln1`, `ff1`, `ff2`, `ln2`), so an interpolated model is a list of
//! shared layer handles from either, as for the decoders.

use std::sync::Arc;

use super::decoder::Layer;
use super::encoder_config::{EncoderConfig, EncoderKind};
use super::exec::{Attend, Eager, Exec};
use super::weights::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, RowBlocks, Tensor};
use crate::ops::attention::AttnConfig;

/// Word and position embeddings and their LayerNorm. BERT's token-type
/// row 0 (every token of a single text) is folded into the position table
/// on load: one gather and one add fewer per pass.
pub struct Embeddings {
    pub words: RowBlocks,
    /// `[max_positions, width]`, f32 when a token type was folded in.
    pub positions: RowBlocks,
    pub norm: (Tensor, Tensor),
    /// Parameters as stored (token-type table included).
    pub params: u64,
}

/// The masked-LM head.
pub struct MlmHead {
    pub dense: (Tensor, Tensor),
    pub norm: (Tensor, Tensor),
    /// `[vocab, width]`: the word embeddings themselves when tied.
    pub decoder: RowBlocks,
    pub bias: Tensor,
    /// The decoder is the model's own word-embedding table.
    pub tied: bool,
}

/// An encoder: shared handles, so that assembling an interpolated model
/// copies nothing.
#[derive(Clone)]
pub struct Encoder {
    /// The sizes; `num_layers` equals `layers.len()`.
    pub cfg: EncoderConfig,
    pub embed: Arc<Embeddings>,
    pub layers: Vec<Arc<Layer>>,
    pub head: Arc<MlmHead>,
}

/// A LayerNorm's weight and bias, under either spelling (`weight`/`bias`,
/// or `gamma`/`beta` in the original BERT files).
pub fn norm_names(ckpt: &Checkpoint, prefix: &str) -> (String, String) {
    let w = format!("{prefix}.weight");
    if ckpt.tensors.contains_key(&w) {
        (w, format!("{prefix}.bias"))
    } else {
        (format!("{prefix}.gamma"), format!("{prefix}.beta"))
    }
}

/// Refuse a missing tensor or one of the wrong shape, naming both.
fn expect(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<()> {
    match ckpt.tensors.get(name) {
        None => Err(Error::Invalid(format!("missing tensor '{name}'"))),
        Some(e) if e.shape != shape => Err(Error::Invalid(format!(
            "tensor '{name}' has shape {:?}, expected {shape:?} from config.json",
            e.shape
        ))),
        Some(_) => Ok(()),
    }
}

impl Encoder {
    /// Check every tensor the config implies, before anything is uploaded.
    pub fn check(cfg: &EncoderConfig, ckpt: &Checkpoint) -> Result<()> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let e = cfg.embedding_names();
        expect(ckpt, &e.words, &[v, h])?;
        expect(ckpt, &e.positions, &[cfg.max_position_embeddings, h])?;
        if let Some(t) = &e.token_types {
            expect(ckpt, t, &[cfg.type_vocab_size, h])?;
        }
        let (nw, nb) = norm_names(ckpt, &e.norm);
        expect(ckpt, &nw, &[h])?;
        expect(ckpt, &nb, &[h])?;
        for l in 0..cfg.num_layers {
            let prefix = cfg.layer_prefix(l);
            for (part, stored) in cfg.layer_parts() {
                let shape = cfg.part_shape(part);
                let (w, b) = if shape.len() == 1 {
                    norm_names(ckpt, &format!("{prefix}{stored}"))
                } else {
                    (
                        format!("{prefix}{stored}.weight"),
                        format!("{prefix}{stored}.bias"),
                    )
                };
                expect(ckpt, &w, &shape)?;
                expect(ckpt, &b, &shape[..1])?;
            }
        }
        let hn = cfg.head_names();
        if !ckpt.tensors.contains_key(&format!("{}.weight", hn.dense)) {
            return Err(Error::Invalid(format!(
                "no masked-LM head ('{}.weight'): boomgpu scores encoders as masked language \
                 models and needs a {} checkpoint",
                hn.dense,
                match cfg.kind {
                    EncoderKind::Bert => "BertForMaskedLM",
                    EncoderKind::DistilBert => "DistilBertForMaskedLM",
                }
            )));
        }
        expect(ckpt, &format!("{}.weight", hn.dense), &[h, h])?;
        expect(ckpt, &format!("{}.bias", hn.dense), &[h])?;
        let (nw, nb) = norm_names(ckpt, hn.norm);
        expect(ckpt, &nw, &[h])?;
        expect(ckpt, &nb, &[h])?;
        if ckpt.tensors.contains_key(hn.decoder) {
            expect(ckpt, hn.decoder, &[v, h])?;
        }
        let bias = head_bias_name(cfg, ckpt)?;
        expect(ckpt, bias, &[v])
    }

    /// Upload a checkpoint (checked first) in its stored dtypes.
    pub fn load(gpu: &Gpu, cfg: &EncoderConfig, ckpt: &Checkpoint) -> Result<Encoder> {
        Encoder::check(cfg, ckpt)?;
        let h = cfg.hidden_size;
        let e = cfg.embedding_names();
        let words = ckpt.upload_rows(gpu, &e.words, false)?;
        let mut params = (cfg.vocab_size + cfg.max_position_embeddings) as u64 * h as u64;
        let positions = match &e.token_types {
            Some(t) => {
                params += (cfg.type_vocab_size * h) as u64;
                let types = ckpt.to_f32(t)?;
                let mut pos = ckpt.to_f32(&e.positions)?;
                for row in pos.chunks_mut(h) {
                    for (p, t) in row.iter_mut().zip(&types[..h]) {
                        *p += t;
                    }
                }
                let table =
                    gpu.upload_f32(&e.positions, &[cfg.max_position_embeddings, h], &pos)?;
                RowBlocks::whole(table)?
            }
            None => ckpt.upload_rows(gpu, &e.positions, false)?,
        };
        let (nw, nb) = norm_names(ckpt, &e.norm);
        params += 2 * h as u64;
        let norm = (ckpt.upload(gpu, &nw, false)?, ckpt.upload(gpu, &nb, false)?);
        let embed = Arc::new(Embeddings {
            words,
            positions,
            norm,
            params,
        });
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let prefix = cfg.layer_prefix(l);
            let mut layer = Layer::default();
            for (part, stored) in cfg.layer_parts() {
                let full = format!("{prefix}{stored}");
                if cfg.part_shape(part).len() == 1 {
                    let (w, b) = norm_names(ckpt, &full);
                    layer
                        .tensors
                        .insert(format!("{part}.weight"), ckpt.upload(gpu, &w, false)?);
                    layer
                        .tensors
                        .insert(format!("{part}.bias"), ckpt.upload(gpu, &b, false)?);
                } else {
                    let w = ckpt.upload_rows(gpu, &format!("{full}.weight"), false)?;
                    layer.insert_rows(format!("{part}.weight"), w);
                    let b = ckpt.upload(gpu, &format!("{full}.bias"), false)?;
                    layer.tensors.insert(format!("{part}.bias"), b);
                }
            }
            layers.push(Arc::new(layer));
        }
        let hn = cfg.head_names();
        let (tied, decoder) = match ckpt.tensors.contains_key(hn.decoder) {
            true => (false, ckpt.upload_rows(gpu, hn.decoder, false)?),
            false => (true, embed.words.clone()),
        };
        let (nw, nb) = norm_names(ckpt, hn.norm);
        let head = Arc::new(MlmHead {
            dense: (
                ckpt.upload(gpu, &format!("{}.weight", hn.dense), false)?,
                ckpt.upload(gpu, &format!("{}.bias", hn.dense), false)?,
            ),
            norm: (ckpt.upload(gpu, &nw, false)?, ckpt.upload(gpu, &nb, false)?),
            decoder,
            bias: ckpt.upload(gpu, head_bias_name(cfg, ckpt)?, false)?,
            tied,
        });
        Ok(Encoder {
            cfg: cfg.clone(),
            embed,
            layers,
            head,
        })
    }

    /// A model of `embed`, `layers` and `head` (handles into loaded
    /// encoders), with `base`'s sizes and its layer count.
    pub fn assemble(
        base: &EncoderConfig,
        embed: Arc<Embeddings>,
        layers: Vec<Arc<Layer>>,
        head: Arc<MlmHead>,
    ) -> Encoder {
        let mut cfg = base.clone();
        cfg.num_layers = layers.len();
        Encoder {
            cfg,
            embed,
            layers,
            head,
        }
    }

    /// Parameters: embeddings as stored, layers, head; the decoder matrix
    /// counted once when it is this model's own input table.
    pub fn params(&self) -> u64 {
        let h = &self.head;
        let mut p = self.embed.params + self.layers.iter().map(|l| l.params()).sum::<u64>();
        p += (h.dense.0.numel() + h.dense.1.numel() + h.norm.0.numel() + h.norm.1.numel()) as u64;
        p += h.bias.numel() as u64;
        if !h.decoder.same_storage(&self.embed.words) {
            p += h.decoder.numel() as u64;
        }
        p
    }

    /// GPU bytes of the weights this model reads.
    pub fn weight_bytes(&self) -> u64 {
        let (e, h) = (&self.embed, &self.head);
        let mut b = e.words.byte_len() + e.positions.byte_len();
        b += e.norm.0.byte_len() + e.norm.1.byte_len();
        b += self.layers.iter().map(|l| l.bytes()).sum::<u64>();
        b += h.dense.0.byte_len() + h.dense.1.byte_len() + h.norm.0.byte_len();
        b += h.norm.1.byte_len() + h.bias.byte_len();
        if !h.decoder.same_storage(&e.words) {
            b += h.decoder.byte_len();
        }
        b
    }

    /// The last hidden states `[batch·seq, width]` of `batch` texts of
    /// `seq` tokens each (ids and positions u32 `[batch·seq]`), every token
    /// attending to every other of its text that `mask` (u32 `[batch,
    /// seq]`, 1 = real token) keeps.
    pub fn hidden<E: Exec>(
        &self,
        e: &mut E,
        ids: &Tensor,
        positions: &Tensor,
        (batch, seq): (usize, usize),
        mask: Option<&Tensor>,
    ) -> Result<E::V> {
        let cfg = &self.cfg;
        if ids.numel() != batch * seq || positions.numel() != batch * seq {
            return Err(Error::Shape(format!(
                "encoder: {batch} × {seq} tokens for ids {ids:?} and positions {positions:?}"
            )));
        }
        if seq > cfg.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "{seq} tokens in one text; the model has {} positions",
                cfg.max_position_embeddings
            )));
        }
        let eps = cfg.norm_eps as f32;
        let words = e.embedding(ids, &self.embed.words)?;
        let pos = e.embedding(positions, &self.embed.positions)?;
        let x = e.residual_add(words, &pos)?;
        let (nw, nb) = (e.weight(&self.embed.norm.0)?, e.weight(&self.embed.norm.1)?);
        let mut x = e.layernorm(&x, &nw, &nb, eps)?;
        let h = cfg.num_heads;
        let attend = Attend::Dense {
            cfg: AttnConfig::bidirectional(batch, seq, h, cfg.head_dim()),
            mask,
        };
        for layer in &self.layers {
            x = layer_forward(e, layer, &x, &attend, eps)?;
        }
        Ok(x)
    }

    /// Masked-LM logits `[rows, vocab]` of hidden states `[rows, width]`.
    pub fn mlm_logits<E: Exec>(&self, e: &mut E, x: &E::V) -> Result<E::V> {
        let h = &self.head;
        let (dw, db) = (e.weight(&h.dense.0)?, e.weight(&h.dense.1)?);
        let t = e.linear(x, &dw, Some(&db))?;
        let t = e.gelu(&t)?;
        let (nw, nb) = (e.weight(&h.norm.0)?, e.weight(&h.norm.1)?);
        let t = e.layernorm(&t, &nw, &nb, self.cfg.norm_eps as f32)?;
        let bias = e.weight(&h.bias)?;
        e.linear_rows(&t, &h.decoder, Some(&bias))
    }
}

impl Encoder {
    /// Masked-LM logits of every row of `hidden` (`[rows, width]`) read to
    /// the host, row-major `[rows, vocab]`, computed in chunks of rows so
    /// that no logits tensor is over one binding.
    pub fn read_mlm_logits(&self, gpu: &Gpu, hidden: &Tensor) -> Result<Vec<f32>> {
        let n = hidden.numel() / self.cfg.hidden_size.max(1);
        let c = super::head::chunk_rows(gpu, self.cfg.vocab_size)?.max(1);
        let mut all = Vec::with_capacity(n * self.cfg.vocab_size);
        for r0 in (0..n).step_by(c) {
            let mut rec = gpu.recorder();
            let x = super::head::rows_of(&mut rec, hidden, r0, c.min(n - r0))?;
            let mut e = Eager::new(&mut rec);
            let logits = self.mlm_logits(&mut e, &x)?;
            all.extend(bytemuck::cast_slice::<u8, f32>(&rec.submit_read(&logits)?));
        }
        Ok(all)
    }
}

/// The decoder bias's name in this checkpoint.
fn head_bias_name(cfg: &EncoderConfig, ckpt: &Checkpoint) -> Result<&'static str> {
    let names = cfg.head_names().bias;
    names
        .iter()
        .find(|n| ckpt.tensors.contains_key(**n))
        .copied()
        .ok_or_else(|| Error::Invalid(format!("missing tensor '{}'", names[0])))
}

/// `part.weight` (whole or in blocks of rows) with `part.bias`.
fn linear<E: Exec>(e: &mut E, layer: &Layer, x: &E::V, part: &str) -> Result<E::V> {
    let name = format!("{part}.weight");
    let b = e.weight(layer.get(&format!("{part}.bias"))?)?;
    if let Some(rows) = layer.split.get(&name) {
        return e.linear_rows(x, rows, Some(&b));
    }
    let w = e.weight(layer.get(&name)?)?;
    e.linear(x, &w, Some(&b))
}

fn norm<E: Exec>(e: &mut E, layer: &Layer, x: &E::V, part: &str, eps: f32) -> Result<E::V> {
    let w = e.weight(layer.get(&format!("{part}.weight"))?)?;
    let b = e.weight(layer.get(&format!("{part}.bias"))?)?;
    e.layernorm(x, &w, &b, eps)
}

/// One post-LayerNorm encoder layer: `x1 = LN(x + attn(x))`,
/// `LN(x1 + W2·gelu(W1·x1))`.
pub fn layer_forward<E: Exec>(
    e: &mut E,
    layer: &Layer,
    x: &E::V,
    attend: &Attend,
    eps: f32,
) -> Result<E::V> {
    let q = linear(e, layer, x, "q")?;
    let k = linear(e, layer, x, "k")?;
    let v = linear(e, layer, x, "v")?;
    let a = e.attention(&q, &k, &v, attend)?;
    let o = linear(e, layer, &a, "o")?;
    let s = e.residual_add(o, x)?;
    let x1 = norm(e, layer, &s, "ln1", eps)?;
    let f = linear(e, layer, &x1, "ff1")?;
    let f = e.gelu(&f)?;
    let f = linear(e, layer, &f, "ff2")?;
    let s = e.residual_add(f, &x1)?;
    norm(e, layer, &s, "ln2", eps)
}
