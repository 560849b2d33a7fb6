//! The decoder of the three families on the GPU, built from the kernel
//! library: logits and, on request, every hidden state in the Hugging Face
//! convention (index 0 = embedding output, index i = output of layer i−1,
//! the last = after the final norm).
//!
//! A `Decoder` is a list of shared layer handles plus embeddings, final norm
//! and head; building a patched model from a teacher and a student is a new
//! list over the same GPU tensors (nothing is copied or uploaded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::config::{Family, ModelConfig};
use super::weights::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::infer::kv::KvCache;
use crate::ops::{
    attention, bias_add, elementwise, gelu, gemv, layernorm, matmul, rmsnorm, rope, swiglu,
};

/// One decoder layer's weights on the GPU, names relative to the layer
/// prefix (GPT-NeoX's fused query_key_value is split into q/k/v on load).
pub struct Layer {
    pub tensors: HashMap<String, Tensor>,
}

impl Layer {
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("layer has no tensor '{name}'")))
    }
    fn opt(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
    pub fn bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.byte_len()).sum()
    }
    pub fn params(&self) -> u64 {
        self.tensors.values().map(|t| t.numel() as u64).sum()
    }
}

/// Final norm: RMSNorm weight, or LayerNorm weight and bias.
#[derive(Clone)]
pub struct Norm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

#[derive(Clone)]
pub struct Decoder {
    /// Dimensions and family; `num_layers` equals `layers.len()`.
    pub cfg: ModelConfig,
    pub embed: Tensor,
    pub layers: Vec<Arc<Layer>>,
    pub final_norm: Norm,
    /// LM head [vocab, hidden]; the embedding tensor itself when tied.
    pub head: Tensor,
    rope: Arc<Mutex<Option<Arc<rope::RopeTables>>>>,
    /// Decode steps (at most `gemv::MAX_ROWS` tokens) use gemv: Some(on),
    /// or None = on GPUs, off on CPU adapters (where matmul is as fast for
    /// large layers and much faster for tiny ones).
    decode_gemv: Option<bool>,
}

/// What a forward pass returns.
pub struct ForwardOut {
    /// [tokens, vocab] f32, when asked for.
    pub logits: Option<Tensor>,
    /// HF `output_hidden_states`: num_layers + 1 tensors [tokens, hidden].
    pub hidden: Vec<Tensor>,
}

/// The tokens of one forward pass: `batch` sequences of `seq` tokens,
/// token-major, with their positions and an optional key padding mask.
pub struct Batch<'a> {
    pub ids: &'a Tensor,
    pub positions: &'a Tensor,
    pub batch: usize,
    pub seq: usize,
    /// u32 [batch, seq]: 1 = real token, 0 = padding.
    pub mask: Option<&'a Tensor>,
}

/// Where a layer's attention reads keys and values.
enum Attend<'a> {
    /// The batch's own k and v.
    Dense {
        cfg: attention::AttnConfig,
        mask: Option<&'a Tensor>,
    },
    /// A KV cache of one sequence: the new rows go to `past..`, then
    /// attention reads rows `0..past + n`.
    Cached {
        k: &'a Tensor,
        v: &'a Tensor,
        past: usize,
        capacity: usize,
    },
}

/// Split GPT-NeoX's fused query_key_value rows (per head: q, k, v of
/// head_dim rows each) into separate q, k, v row blocks.
fn split_neox_qkv(bytes: &[u8], heads: usize, head_dim: usize, row_bytes: usize) -> [Vec<u8>; 3] {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for h in 0..heads {
        for (part, o) in out.iter_mut().enumerate() {
            let start = (h * 3 + part) * head_dim * row_bytes;
            o.extend_from_slice(&bytes[start..start + head_dim * row_bytes]);
        }
    }
    out
}

impl Decoder {
    /// Upload a checkpoint. `as_f32` widens 16-bit weights (students being
    /// trained); otherwise tensors keep their stored dtype.
    pub fn load(gpu: &Gpu, cfg: &ModelConfig, ckpt: &Checkpoint, as_f32: bool) -> Result<Decoder> {
        let all: Vec<usize> = (0..cfg.num_layers).collect();
        Decoder::load_layers(gpu, cfg, ckpt, as_f32, &all)
    }

    /// Upload only the listed layers of a checkpoint, in that order: a
    /// pruned student straight from its teacher's files.
    pub fn load_layers(
        gpu: &Gpu,
        cfg: &ModelConfig,
        ckpt: &Checkpoint,
        as_f32: bool,
        keep: &[usize],
    ) -> Result<Decoder> {
        ckpt.check(cfg)?;
        if let Some(&bad) = keep.iter().find(|&&l| l >= cfg.num_layers) {
            return Err(Error::Invalid(format!(
                "layer {bad} does not exist (the model has {})",
                cfg.num_layers
            )));
        }
        let embed = ckpt.upload(gpu, cfg.embed_name(), as_f32)?;
        let mut layers = Vec::with_capacity(keep.len());
        for &l in keep {
            let prefix = cfg.layer_prefix(l);
            let mut tensors = HashMap::new();
            for (name, _) in cfg.layer_tensors() {
                let full = format!("{prefix}{name}");
                if cfg.family == Family::GptNeox && name.starts_with("attention.query_key_value.") {
                    let e = &ckpt.tensors[&full];
                    let dtype = super::weights::dtype_of(e.dtype).expect("checked");
                    let is_bias = name.ends_with("bias");
                    let row_elems = if is_bias { 1 } else { cfg.hidden_size };
                    let bytes = ckpt.bytes(&full).expect("checked");
                    let parts = split_neox_qkv(
                        bytes,
                        cfg.num_heads,
                        cfg.head_dim,
                        row_elems * dtype.size(),
                    );
                    let kind = if is_bias { "bias" } else { "weight" };
                    for (part, data) in ["q", "k", "v"].iter().zip(parts) {
                        let shape: Vec<usize> = if is_bias {
                            vec![cfg.hidden_size]
                        } else {
                            vec![cfg.hidden_size, cfg.hidden_size]
                        };
                        let tname = format!("attention.{part}.{kind}");
                        let t = if as_f32 && dtype != DType::F32 {
                            let v = super::weights::to_f32(&data, dtype);
                            gpu.upload_f32(&format!("{prefix}{tname}"), &shape, &v)?
                        } else {
                            gpu.upload_bytes(&format!("{prefix}{tname}"), &shape, dtype, &data)?
                        };
                        tensors.insert(tname, t);
                    }
                    continue;
                }
                tensors.insert(name.clone(), ckpt.upload(gpu, &full, as_f32)?);
            }
            layers.push(Arc::new(Layer { tensors }));
        }
        let norms = cfg.final_norm_names();
        let final_norm = Norm {
            weight: ckpt.upload(gpu, &norms[0].0, as_f32)?,
            bias: match norms.get(1) {
                Some((n, _)) => Some(ckpt.upload(gpu, n, as_f32)?),
                None => None,
            },
        };
        let head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            ckpt.upload(gpu, cfg.head_name(), as_f32)?
        };
        Ok(Decoder {
            cfg: cfg.with_layers(keep.len()),
            embed,
            layers,
            final_norm,
            head,
            rope: Arc::new(Mutex::new(None)),
            decode_gemv: None,
        })
    }

    /// A decoder assembled from parts of others (patched models).
    /// It shares `base`'s rotary tables, so switching sizes uploads nothing.
    pub fn assemble(
        base: &Decoder,
        embed: Tensor,
        layers: Vec<Arc<Layer>>,
        final_norm: Norm,
        head: Tensor,
    ) -> Decoder {
        let cfg = base.cfg.with_layers(layers.len());
        Decoder {
            cfg,
            embed,
            layers,
            final_norm,
            head,
            rope: base.rope.clone(),
            decode_gemv: base.decode_gemv,
        }
    }

    /// Force (or, with None, leave to the device) the gemv kernel for the
    /// linear layers of decode steps.
    pub fn with_decode_gemv(mut self, on: Option<bool>) -> Decoder {
        self.decode_gemv = on;
        self
    }

    /// Whether `rows` rows of a cached pass take gemv.
    fn gemv_rows(&self, gpu: &Gpu, rows: usize) -> bool {
        rows <= gemv::MAX_ROWS
            && self
                .decode_gemv
                .unwrap_or(gemv::default_path(gpu) == gemv::GemvPath::Cooperative)
    }

    /// Parameters, counting a tied head once.
    pub fn params(&self) -> u64 {
        let mut p = self.embed.numel() as u64 + self.layers.iter().map(|l| l.params()).sum::<u64>();
        p += self.final_norm.weight.numel() as u64;
        p += self
            .final_norm
            .bias
            .as_ref()
            .map_or(0, |b| b.numel() as u64);
        if !self.head_is_embed() {
            p += self.head.numel() as u64;
        }
        p
    }

    /// GPU bytes of the weights this model uses (shared tensors once).
    pub fn weight_bytes(&self) -> u64 {
        let mut b = self.embed.byte_len() + self.layers.iter().map(|l| l.bytes()).sum::<u64>();
        b += self.final_norm.weight.byte_len()
            + self.final_norm.bias.as_ref().map_or(0, |t| t.byte_len());
        if !self.head_is_embed() {
            b += self.head.byte_len();
        }
        b
    }

    pub fn head_is_embed(&self) -> bool {
        self.head.buffer().id() == self.embed.buffer().id()
            && self.head.byte_offset() == self.embed.byte_offset()
    }

    /// Rotary tables covering positions below `max_pos` (grown on demand).
    pub fn rope_tables(&self, gpu: &Gpu, max_pos: usize) -> Result<Arc<rope::RopeTables>> {
        let mut slot = self.rope.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slot.as_ref() {
            if t.max_pos >= max_pos {
                return Ok(t.clone());
            }
        }
        let scaling = match self.cfg.rope_scaling {
            Some(s) => rope::RopeScaling::Llama3 {
                factor: s.factor as f32,
                low_freq_factor: s.low_freq_factor as f32,
                high_freq_factor: s.high_freq_factor as f32,
                original_max_position_embeddings: s.original_max_position_embeddings as u32,
            },
            None => rope::RopeScaling::Default,
        };
        // Grow in chunks so that generation does not rebuild every token.
        let cap = max_pos.next_power_of_two().max(256);
        let t = Arc::new(rope::RopeTables::new(
            gpu,
            self.cfg.rotary_dim(),
            self.cfg.rope_theta,
            scaling,
            cap,
        )?);
        *slot = Some(t.clone());
        Ok(t)
    }

    /// x·Wᵀ (+ b); `few_rows` (decode steps) takes the gemv kernel, which
    /// reads each weight once for up to `gemv::MAX_ROWS` rows.
    fn linear(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        few_rows: bool,
    ) -> Result<Tensor> {
        let y = if few_rows {
            gemv::gemv(rec, x, w)?
        } else {
            matmul::matmul(rec, x, w, false, true)?
        };
        if let Some(b) = b {
            bias_add::bias_add_inplace(rec, &y, b)?;
        }
        Ok(y)
    }

    /// One decoder layer: x [tokens, hidden] → new residual stream.
    pub fn layer_forward(
        &self,
        rec: &mut Recorder,
        layer: &Layer,
        x: &Tensor,
        batch: &Batch,
        tables: &rope::RopeTables,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let cfg = attention::AttnConfig::new(
            batch.batch,
            batch.seq,
            batch.seq,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
        );
        let src = Attend::Dense {
            cfg,
            mask: batch.mask,
        };
        self.layer_impl(rec, layer, x, batch.positions, &src, tables)
    }

    /// One decoder layer for `n` new tokens of one sequence at positions
    /// `[past, past + n)` (`positions`), against this layer's KV cache
    /// (`k_cache`, `v_cache`: `[capacity, kv_heads·head_dim]` f32): the new
    /// keys and values (after rope) are written at rows `past..past + n`,
    /// then the queries attend to rows `0..past + n`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_forward_cached(
        &self,
        rec: &mut Recorder,
        layer: &Layer,
        x: &Tensor,
        positions: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        past: usize,
        tables: &rope::RopeTables,
    ) -> Result<Tensor> {
        let n = positions.numel();
        let kv_dim = self.cfg.num_kv_heads * self.cfg.head_dim;
        let capacity = k_cache.numel() / kv_dim.max(1);
        if x.numel() != n * self.cfg.hidden_size
            || k_cache.numel() != v_cache.numel()
            || k_cache.numel() != capacity * kv_dim
            || past + n > capacity
        {
            return Err(Error::Shape(format!(
                "layer_forward_cached: x {:?}, {n} positions from {past}, caches {:?} / {:?} of {kv_dim} columns",
                x.shape(),
                k_cache.shape(),
                v_cache.shape()
            )));
        }
        let src = Attend::Cached {
            k: k_cache,
            v: v_cache,
            past,
            capacity,
        };
        self.layer_impl(rec, layer, x, positions, &src, tables)
    }

    /// Attention of q against the keys and values `src` names (k and v are
    /// the new tokens' own, after rope).
    fn attend(
        &self,
        rec: &mut Recorder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        src: &Attend,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        match *src {
            Attend::Dense { cfg, mask } => {
                let inputs = attention::AttnInputs { q, k, v, mask };
                Ok(attention::attention(rec, &cfg, &inputs)?.0)
            }
            Attend::Cached {
                k: kc,
                v: vc,
                past,
                capacity,
            } => {
                let row = (c.num_kv_heads * c.head_dim * 4) as u64;
                let n = q.numel() / (c.num_heads * c.head_dim);
                rec.copy(k, 0, kc, past as u64 * row, n as u64 * row)?;
                rec.copy(v, 0, vc, past as u64 * row, n as u64 * row)?;
                let cfg = attention::AttnConfig::new(
                    1,
                    n,
                    past + n,
                    c.num_heads,
                    c.num_kv_heads,
                    c.head_dim,
                )
                .with_q_offset(past)
                .with_kv_cache(capacity);
                let inputs = attention::AttnInputs {
                    q,
                    k: kc,
                    v: vc,
                    mask: None,
                };
                Ok(attention::attention(rec, &cfg, &inputs)?.0)
            }
        }
    }

    fn layer_impl(
        &self,
        rec: &mut Recorder,
        layer: &Layer,
        x: &Tensor,
        positions: &Tensor,
        src: &Attend,
        tables: &rope::RopeTables,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let eps = c.norm_eps as f32;
        let few =
            matches!(src, Attend::Cached { .. }) && self.gemv_rows(rec.gpu(), positions.numel());
        match c.family {
            Family::Llama | Family::Qwen3 => {
                let h = rmsnorm::rmsnorm(rec, x, layer.get("input_layernorm.weight")?, eps)?;
                let q = self.linear(
                    rec,
                    &h,
                    layer.get("self_attn.q_proj.weight")?,
                    layer.opt("self_attn.q_proj.bias"),
                    few,
                )?;
                let k = self.linear(
                    rec,
                    &h,
                    layer.get("self_attn.k_proj.weight")?,
                    layer.opt("self_attn.k_proj.bias"),
                    few,
                )?;
                let v = self.linear(
                    rec,
                    &h,
                    layer.get("self_attn.v_proj.weight")?,
                    layer.opt("self_attn.v_proj.bias"),
                    few,
                )?;
                let (q, k) = if c.family == Family::Qwen3 {
                    (
                        rmsnorm::rmsnorm(rec, &q, layer.get("self_attn.q_norm.weight")?, eps)?,
                        rmsnorm::rmsnorm(rec, &k, layer.get("self_attn.k_norm.weight")?, eps)?,
                    )
                } else {
                    (q, k)
                };
                rope::rope_inplace(rec, &q, positions, &tables.cos, &tables.sin, c.head_dim)?;
                rope::rope_inplace(rec, &k, positions, &tables.cos, &tables.sin, c.head_dim)?;
                let a = self.attend(rec, &q, &k, &v, src)?;
                let o = self.linear(rec, &a, layer.get("self_attn.o_proj.weight")?, None, few)?;
                elementwise::add_inplace(rec, &o, 1.0, x)?;
                let h2 =
                    rmsnorm::rmsnorm(rec, &o, layer.get("post_attention_layernorm.weight")?, eps)?;
                let g = self.linear(
                    rec,
                    &h2,
                    layer.get("mlp.gate_proj.weight")?,
                    layer.opt("mlp.gate_proj.bias"),
                    few,
                )?;
                let u = self.linear(
                    rec,
                    &h2,
                    layer.get("mlp.up_proj.weight")?,
                    layer.opt("mlp.up_proj.bias"),
                    few,
                )?;
                let m = swiglu::swiglu(rec, &g, &u)?;
                let d = self.linear(
                    rec,
                    &m,
                    layer.get("mlp.down_proj.weight")?,
                    layer.opt("mlp.down_proj.bias"),
                    few,
                )?;
                elementwise::add_inplace(rec, &d, 1.0, &o)?;
                Ok(d)
            }
            Family::GptNeox => {
                let h = layernorm::layernorm(
                    rec,
                    x,
                    layer.get("input_layernorm.weight")?,
                    layer.get("input_layernorm.bias")?,
                    eps,
                )?;
                let q = self.linear(
                    rec,
                    &h,
                    layer.get("attention.q.weight")?,
                    layer.opt("attention.q.bias"),
                    few,
                )?;
                let k = self.linear(
                    rec,
                    &h,
                    layer.get("attention.k.weight")?,
                    layer.opt("attention.k.bias"),
                    few,
                )?;
                let v = self.linear(
                    rec,
                    &h,
                    layer.get("attention.v.weight")?,
                    layer.opt("attention.v.bias"),
                    few,
                )?;
                rope::rope_inplace(rec, &q, positions, &tables.cos, &tables.sin, c.head_dim)?;
                rope::rope_inplace(rec, &k, positions, &tables.cos, &tables.sin, c.head_dim)?;
                let a = self.attend(rec, &q, &k, &v, src)?;
                let o = self.linear(
                    rec,
                    &a,
                    layer.get("attention.dense.weight")?,
                    layer.opt("attention.dense.bias"),
                    few,
                )?;
                let mlp_in = if c.use_parallel_residual {
                    x.clone()
                } else {
                    elementwise::add_inplace(rec, &o, 1.0, x)?;
                    o.clone()
                };
                let h2 = layernorm::layernorm(
                    rec,
                    &mlp_in,
                    layer.get("post_attention_layernorm.weight")?,
                    layer.get("post_attention_layernorm.bias")?,
                    eps,
                )?;
                let u = self.linear(
                    rec,
                    &h2,
                    layer.get("mlp.dense_h_to_4h.weight")?,
                    layer.opt("mlp.dense_h_to_4h.bias"),
                    few,
                )?;
                let m = gelu::gelu(rec, &u)?;
                let d = self.linear(
                    rec,
                    &m,
                    layer.get("mlp.dense_4h_to_h.weight")?,
                    layer.opt("mlp.dense_4h_to_h.bias"),
                    few,
                )?;
                elementwise::add_inplace(rec, &d, 1.0, &o)?;
                if c.use_parallel_residual {
                    elementwise::add_inplace(rec, &d, 1.0, x)?;
                }
                Ok(d)
            }
        }
    }

    /// The final norm applied to the residual stream.
    pub fn final_norm_forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.norm_eps as f32;
        match &self.final_norm.bias {
            Some(b) => layernorm::layernorm(rec, x, &self.final_norm.weight, b, eps),
            None => rmsnorm::rmsnorm(rec, x, &self.final_norm.weight, eps),
        }
    }

    /// Run the whole model on a batch, recording into `rec` (nothing is
    /// submitted). `want_logits` / `want_hidden` select the outputs.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        batch: &Batch,
        want_logits: bool,
        want_hidden: bool,
    ) -> Result<ForwardOut> {
        let gpu = rec.gpu();
        let n = batch.batch * batch.seq;
        if batch.ids.numel() != n || batch.positions.numel() != n {
            return Err(Error::Shape(format!(
                "forward: {} ids and {} positions for {}×{} tokens",
                batch.ids.numel(),
                batch.positions.numel(),
                batch.batch,
                batch.seq
            )));
        }
        let tables = self.rope_tables(gpu, batch.seq.max(1))?;
        let mut x = crate::ops::embedding::embedding(rec, batch.ids, &self.embed)?;
        let mut hidden = Vec::new();
        for layer in &self.layers {
            if want_hidden {
                hidden.push(x.clone());
            }
            x = self.layer_forward(rec, layer, &x, batch, &tables)?;
            // Let each layer's temporaries go back to the pool before the
            // next one allocates (decode steps are small: keep them whole).
            if n > 1 {
                rec.flush()?;
            }
        }
        let normed = self.final_norm_forward(rec, &x)?;
        if want_hidden {
            hidden.push(normed.clone());
        }
        let logits = if want_logits {
            Some(matmul::matmul(rec, &normed, &self.head, false, true)?)
        } else {
            None
        };
        Ok(ForwardOut { logits, hidden })
    }

    /// Run `ids`, the next tokens of the sequence whose first
    /// `cache.len()` tokens the cache holds, at positions
    /// `[past, past + n)` with `past = cache.len()`: the cache grows if
    /// needed (an error past its context), each layer writes the new keys
    /// and values into it and attends to everything cached. Prefill is the
    /// whole prompt in one call; decoding one token per call (records
    /// nothing but kernels and copies: one submission per step).
    ///
    /// Returns logits f32 `[n, vocab]` with `all_logits`, else `[1, vocab]`
    /// for the last token only. The result equals `forward` on the whole
    /// sequence (tests/infer.rs checks it).
    pub fn forward_cached(
        &self,
        rec: &mut Recorder,
        ids: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        let n = ids.len();
        let past = cache.len();
        if n == 0 {
            return Err(Error::Shape("forward_cached: no tokens".into()));
        }
        if cache.layers() != self.layers.len()
            || cache.kv_dim() != self.cfg.num_kv_heads * self.cfg.head_dim
        {
            return Err(Error::Shape(format!(
                "forward_cached: the cache has {} layers of {} columns, the model {} of {}",
                cache.layers(),
                cache.kv_dim(),
                self.layers.len(),
                self.cfg.num_kv_heads * self.cfg.head_dim
            )));
        }
        cache.reserve(rec, past + n)?;
        let gpu = rec.gpu();
        let tables = self.rope_tables(gpu, past + n)?;
        let tids = gpu.upload_u32("decode.ids", &[n], ids)?;
        let pos: Vec<u32> = (past as u32..(past + n) as u32).collect();
        let positions = gpu.upload_u32("decode.positions", &[n], &pos)?;
        let mut x = crate::ops::embedding::embedding(rec, &tids, &self.embed)?;
        for (l, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward_cached(
                rec,
                layer,
                &x,
                &positions,
                &cache.k[l],
                &cache.v[l],
                past,
                &tables,
            )?;
            if n > 1 {
                rec.flush()?;
            }
        }
        cache.push(ids)?;
        let h = self.cfg.hidden_size;
        let rows = if all_logits { n } else { 1 };
        let x = if rows == n {
            x
        } else {
            // The last row, copied (a view would start at an unaligned offset).
            let last = Tensor::empty(gpu, "decode.last", &[1, h], DType::F32)?;
            rec.copy(&x, ((n - 1) * h * 4) as u64, &last, 0, (h * 4) as u64)?;
            last
        };
        let normed = self.final_norm_forward(rec, &x)?;
        if self.gemv_rows(gpu, rows) {
            gemv::gemv(rec, &normed, &self.head)
        } else {
            matmul::matmul(rec, &normed, &self.head, false, true)
        }
    }
}

impl Decoder {
    /// A decoder from tensors made elsewhere (random weights for benches).
    pub fn from_parts(
        cfg: &ModelConfig,
        embed: Tensor,
        layers: Vec<Arc<Layer>>,
        final_norm: Norm,
        head: Tensor,
    ) -> Decoder {
        Decoder {
            cfg: cfg.with_layers(layers.len()),
            embed,
            layers,
            final_norm,
            head,
            rope: Arc::new(Mutex::new(None)),
            decode_gemv: None,
        }
    }

    /// Random weights of `cfg`'s shapes in `dtype` (f32 or bf16), for
    /// speed measurements at real model sizes without downloading them.
    /// Values are small and deterministic; nothing is read back.
    pub fn random(gpu: &Gpu, cfg: &ModelConfig, dtype: DType, seed: u64) -> Result<Decoder> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut make = |name: &str, shape: &[usize], norm: bool| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let scale = if norm {
                0.0
            } else {
                1.0 / (shape[shape.len() - 1] as f32).sqrt()
            };
            let vals: Vec<f32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                    if norm {
                        1.0
                    } else {
                        u * scale
                    }
                })
                .collect();
            match dtype {
                DType::BF16 => {
                    let h: Vec<half::bf16> =
                        vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
                    gpu.upload_bf16(name, shape, &h)
                }
                _ => gpu.upload_f32(name, shape, &vals),
            }
        };
        let embed = make("embed", &[cfg.vocab_size, cfg.hidden_size], false)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let mut tensors = HashMap::new();
            for (name, shape) in cfg.layer_tensors() {
                let is_norm = name.contains("norm") && name.ends_with("weight");
                let is_bias = name.ends_with("bias");
                if cfg.family == Family::GptNeox && name.starts_with("attention.query_key_value") {
                    for part in ["q", "k", "v"] {
                        let kind = if is_bias { "bias" } else { "weight" };
                        let shape: Vec<usize> = if is_bias {
                            vec![cfg.hidden_size]
                        } else {
                            vec![cfg.hidden_size, cfg.hidden_size]
                        };
                        tensors.insert(
                            format!("attention.{part}.{kind}"),
                            make(&format!("layer{l}.{part}"), &shape, false)?,
                        );
                    }
                    continue;
                }
                tensors.insert(
                    name.clone(),
                    make(&format!("layer{l}.{name}"), &shape, is_norm && !is_bias)?,
                );
            }
            layers.push(Arc::new(Layer { tensors }));
        }
        let norms = cfg.final_norm_names();
        let final_norm = Norm {
            weight: make("final_norm", &norms[0].1, true)?,
            bias: match norms.get(1) {
                Some((_, s)) => Some(make("final_norm.bias", s, false)?),
                None => None,
            },
        };
        let head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            make("head", &[cfg.vocab_size, cfg.hidden_size], false)?
        };
        Ok(Decoder::from_parts(cfg, embed, layers, final_norm, head))
    }
}
