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
use super::exec::{Attend, Eager, Exec};
use super::layers::{self, LayerCtx};
use super::weights::{encode_f32, Checkpoint};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, RowBlocks, Tensor};
use crate::ops::attention::AttnConfig;
use crate::ops::{gemv, rope};

/// The most prompt tokens one prefill pass runs (`Decoder::prefill_chunk`).
pub const PREFILL_CHUNK: usize = 2048;

/// One decoder layer's weights on the GPU, names relative to the layer
/// prefix (GPT-NeoX's fused query_key_value is split into q/k/v on load).
#[derive(Default)]
pub struct Layer {
    pub tensors: HashMap<String, Tensor>,
    /// Weights over the binding limit, in blocks of rows (output features);
    /// their names are not in `tensors`.
    pub split: HashMap<String, RowBlocks>,
}

impl Layer {
    /// Add a matrix: stored whole when it is one block.
    pub fn insert_rows(&mut self, name: String, rows: RowBlocks) {
        match rows.as_whole() {
            Some(t) => {
                self.tensors.insert(name, t.clone());
            }
            None => {
                self.split.insert(name, rows);
            }
        }
    }
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::Invalid(match self.split.get(name) {
                Some(r) => format!("layer tensor '{name}' is stored as {}", r.describe()),
                None => format!("layer has no tensor '{name}'"),
            })
        })
    }
    pub fn bytes(&self) -> u64 {
        let whole: u64 = self.tensors.values().map(|t| t.byte_len()).sum();
        whole + self.split.values().map(|r| r.byte_len()).sum::<u64>()
    }
    pub fn params(&self) -> u64 {
        let whole: u64 = self.tensors.values().map(|t| t.numel() as u64).sum();
        whole + self.split.values().map(|r| r.numel() as u64).sum::<u64>()
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
    /// Embedding table [vocab, hidden], in blocks of rows where it is over
    /// the adapter's binding limit.
    pub embed: RowBlocks,
    pub layers: Vec<Arc<Layer>>,
    pub final_norm: Norm,
    /// LM head [vocab, hidden] (blocked like the embedding); the embedding
    /// itself when tied.
    pub head: RowBlocks,
    rope: Arc<Mutex<Option<Arc<rope::RopeTables>>>>,
    /// Decode steps (at most `gemv::MAX_ROWS` tokens) use gemv: Some(on),
    /// or None = on GPUs, off on CPU adapters (where matmul is as fast for
    /// large layers and much faster for tiny ones).
    decode_gemv: Option<bool>,
    /// The KV caches made for this model hold K and V in this dtype: f16
    /// (half the memory and the reads of f32) unless f32 is asked for.
    kv_dtype: DType,
}

/// What a forward pass returns: tensors, or tape variables when recorded
/// for training.
pub struct ForwardOut<V = Tensor> {
    /// [tokens, vocab] f32, when asked for.
    pub logits: Option<V>,
    /// HF `output_hidden_states`: num_layers + 1 values [tokens, hidden].
    pub hidden: Vec<V>,
    /// The final normed states [tokens, hidden] (what the head reads).
    pub normed: V,
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

/// What a cached forward needs of a KV cache (`infer::KvCache` is one):
/// per layer K and V, f32 `[capacity, kv_heads·head_dim]`, one row per
/// position (after rope), and the token ids of the filled rows.
pub trait KvStore {
    fn layers(&self) -> usize;
    fn kv_dim(&self) -> usize;
    /// Rows filled so far (the next token's position).
    fn filled(&self) -> usize;
    /// Make room for `needed` rows in all (copies recorded into `rec`).
    fn reserve(&mut self, rec: &mut Recorder, needed: usize) -> Result<()>;
    /// Rows of a full block of K or V (block `b` holds positions from
    /// `b · block_rows`).
    fn block_rows(&self) -> usize;
    /// Layer `l`'s K and V, in blocks of rows.
    fn layer(&self, l: usize) -> (&[Tensor], &[Tensor]);
    /// Rows `[filled, filled + ids.len())` now hold `ids`.
    fn push(&mut self, ids: &[u32]) -> Result<()>;
}

/// Split GPT-NeoX's fused query_key_value rows (per head: q, k, v of
/// head_dim rows each) into separate q, k, v row blocks.
pub(crate) fn split_neox_qkv(
    bytes: &[u8],
    heads: usize,
    head_dim: usize,
    row_bytes: usize,
) -> [Vec<u8>; 3] {
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
        Decoder::load_layers_with(gpu, cfg, ckpt, as_f32, keep, false)
    }

    /// A frozen model (a teacher) with its layers' matrices in the 8-bit
    /// block format (`DType::Q8`: about 1.1 bytes per value); the
    /// embedding, head and vectors stay as stored.
    pub fn load_8bit(gpu: &Gpu, cfg: &ModelConfig, ckpt: &Checkpoint) -> Result<Decoder> {
        let all: Vec<usize> = (0..cfg.num_layers).collect();
        Decoder::load_layers_with(gpu, cfg, ckpt, false, &all, true)
    }

    fn load_layers_with(
        gpu: &Gpu,
        cfg: &ModelConfig,
        ckpt: &Checkpoint,
        as_f32: bool,
        keep: &[usize],
        q8: bool,
    ) -> Result<Decoder> {
        ckpt.check(cfg)?;
        if let Some(&bad) = keep.iter().find(|&&l| l >= cfg.num_layers) {
            return Err(Error::Invalid(format!(
                "layer {bad} does not exist (the model has {})",
                cfg.num_layers
            )));
        }
        let embed = ckpt.upload_rows(gpu, cfg.embed_name(), as_f32)?;
        let mut layers = Vec::with_capacity(keep.len());
        for &l in keep {
            let prefix = cfg.layer_prefix(l);
            let mut layer = Layer::default();
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
                        let full = format!("{prefix}{tname}");
                        let widen = super::weights::widens(dtype, shape.len(), as_f32);
                        let (dtype, data) = super::weights::widened(&data, dtype, widen);
                        if is_bias {
                            let t = gpu.upload_bytes(&full, &shape, dtype, &data)?;
                            layer.tensors.insert(tname, t);
                        } else if q8 {
                            let vals = super::weights::to_f32(&data, dtype);
                            let t = RowBlocks::upload_q8(gpu, &full, &shape, &vals)?;
                            layer.insert_rows(tname, t);
                        } else {
                            let t = RowBlocks::upload(gpu, &full, &shape, dtype, &data)?;
                            layer.insert_rows(tname, t);
                        }
                    }
                    continue;
                }
                // Matrices over the binding limit in blocks of rows.
                let shape = &ckpt.tensors[&full].shape;
                if shape.len() == 2 && q8 {
                    let vals = ckpt.to_f32(&full)?;
                    layer.insert_rows(
                        name.clone(),
                        RowBlocks::upload_q8(gpu, &full, shape, &vals)?,
                    );
                } else if shape.len() == 2 {
                    layer.insert_rows(name.clone(), ckpt.upload_rows(gpu, &full, as_f32)?);
                } else {
                    layer
                        .tensors
                        .insert(name.clone(), ckpt.upload(gpu, &full, as_f32)?);
                }
            }
            layers.push(Arc::new(layer));
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
            ckpt.upload_rows(gpu, cfg.head_name(), as_f32)?
        };
        Ok(Decoder::from_parts(cfg, embed, layers, final_norm, head))
    }

    /// A decoder assembled from parts of others (patched models).
    /// It shares `base`'s rotary tables, so switching sizes uploads nothing.
    pub fn assemble(
        base: &Decoder,
        embed: RowBlocks,
        layers: Vec<Arc<Layer>>,
        final_norm: Norm,
        head: RowBlocks,
    ) -> Decoder {
        Decoder {
            rope: base.rope.clone(),
            decode_gemv: base.decode_gemv,
            kv_dtype: base.kv_dtype,
            ..Decoder::from_parts(&base.cfg, embed, layers, final_norm, head)
        }
    }

    /// Force (or, with None, leave to the device) the gemv kernel for the
    /// linear layers of decode steps.
    pub fn with_decode_gemv(mut self, on: Option<bool>) -> Decoder {
        self.decode_gemv = on;
        self
    }

    /// KV caches of this model in `dtype` (f16 or f32).
    pub fn with_kv_dtype(mut self, dtype: DType) -> Result<Decoder> {
        if !matches!(dtype, DType::F16 | DType::F32) {
            return Err(Error::Invalid(format!(
                "a KV cache holds f16 or f32, not {}",
                dtype.name()
            )));
        }
        self.kv_dtype = dtype;
        Ok(self)
    }

    /// The dtype of the KV caches made for this model.
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype
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
        self.head.same_storage(&self.embed)
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

    /// Attention of a dense batch over its own keys and values.
    pub fn dense_attend<'a>(&self, batch: &Batch<'a>) -> Attend<'a> {
        let c = &self.cfg;
        Attend::Dense {
            cfg: AttnConfig::new(
                batch.batch,
                batch.seq,
                batch.seq,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
            ),
            mask: batch.mask,
        }
    }

    /// One decoder layer of this model's family: x → the new residual
    /// stream (the code in `model::layers`, for any executor).
    pub fn layer_forward<E: Exec>(
        &self,
        e: &mut E,
        layer: &Layer,
        x: &E::V,
        ctx: &LayerCtx,
    ) -> Result<E::V> {
        layers::layer_forward(&self.cfg, e, layer, x, ctx)
    }

    /// The embeddings of `ids` (the first residual stream).
    pub fn embed_forward<E: Exec>(&self, e: &mut E, ids: &Tensor) -> Result<E::V> {
        e.embedding(ids, &self.embed)
    }

    /// The final norm applied to the residual stream.
    pub fn final_norm_forward<E: Exec>(&self, e: &mut E, x: &E::V) -> Result<E::V> {
        let eps = self.cfg.norm_eps as f32;
        let w = e.weight(&self.final_norm.weight)?;
        match &self.final_norm.bias {
            Some(b) => {
                let b = e.weight(b)?;
                e.layernorm(x, &w, &b, eps)
            }
            None => e.rmsnorm(x, &w, eps),
        }
    }

    /// Logits `[tokens, vocab]` of final-normed states, all at once (a
    /// decode step's few rows; long inputs go through `model::head` in
    /// chunks, so that logit memory stays bounded).
    pub fn head_forward<E: Exec>(&self, e: &mut E, normed: &E::V) -> Result<E::V> {
        e.logits(normed, &self.head)
    }

    /// Run the whole model on a batch with executor `e` (eagerly, or on a
    /// tape for training). `want_logits` / `want_hidden` select the outputs.
    pub fn forward_with<E: Exec>(
        &self,
        e: &mut E,
        batch: &Batch,
        want_logits: bool,
        want_hidden: bool,
    ) -> Result<ForwardOut<E::V>> {
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
        let tables = self.rope_tables(e.gpu(), batch.seq.max(1))?;
        let attend = self.dense_attend(batch);
        let ctx = LayerCtx {
            positions: batch.positions,
            tables: &tables,
            attend: &attend,
        };
        let mut x = self.embed_forward(e, batch.ids)?;
        let mut hidden = Vec::new();
        for layer in &self.layers {
            if want_hidden {
                hidden.push(x.clone());
            }
            x = self.layer_forward(e, layer, &x, &ctx)?;
            // Let each layer's temporaries go back to the pool before the
            // next one allocates (decode steps are small: keep them whole).
            if n > 1 {
                e.flush()?;
            }
        }
        let normed = self.final_norm_forward(e, &x)?;
        let logits = if want_logits {
            Some(self.head_forward(e, &normed)?)
        } else {
            None
        };
        if want_hidden {
            hidden.push(normed.clone());
        }
        Ok(ForwardOut {
            logits,
            hidden,
            normed,
        })
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
        self.forward_with(&mut Eager::new(rec), batch, want_logits, want_hidden)
    }

    /// Run `ids`, the next tokens of the sequence whose first
    /// `cache.filled()` tokens the cache holds, at positions
    /// `[past, past + n)` with `past = cache.filled()`: the cache grows if
    /// needed (an error past its context), each layer writes the new keys
    /// and values into it and attends to everything cached. Prefill is the
    /// whole prompt in one call (run in passes of `prefill_chunk` tokens);
    /// decoding one token per call (records
    /// nothing but kernels and copies: one submission per step).
    ///
    /// Returns logits f32 `[n, vocab]` with `all_logits`, else `[1, vocab]`
    /// for the last token only. The result equals `forward` on the whole
    /// sequence (tests/infer.rs checks it).
    pub fn forward_cached<C: KvStore>(
        &self,
        rec: &mut Recorder,
        ids: &[u32],
        cache: &mut C,
        all_logits: bool,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let n = ids.len();
        let past = cache.filled();
        let kv_dim = c.num_kv_heads * c.head_dim;
        if n == 0 {
            return Err(Error::Shape("forward_cached: no tokens".into()));
        }
        if cache.layers() != self.layers.len() || cache.kv_dim() != kv_dim {
            return Err(Error::Shape(format!(
                "forward_cached: the cache has {} layers of {} columns, the model {} of {kv_dim}",
                cache.layers(),
                cache.kv_dim(),
                self.layers.len(),
            )));
        }
        let chunk = self.prefill_chunk(rec.gpu());
        if n > chunk && !all_logits {
            // A long prompt in chunks of tokens, each against the cache
            // the ones before filled: every activation stays bounded.
            let mut done = 0;
            while n - done > chunk {
                self.forward_cached(rec, &ids[done..done + chunk], cache, false)?;
                rec.flush()?;
                done += chunk;
            }
            return self.forward_cached(rec, &ids[done..], cache, false);
        }
        cache.reserve(rec, past + n)?;
        let gpu = rec.gpu();
        let tables = self.rope_tables(gpu, past + n)?;
        let tids = gpu.upload_u32("decode.ids", &[n], ids)?;
        let pos: Vec<u32> = (past as u32..(past + n) as u32).collect();
        let positions = gpu.upload_u32("decode.positions", &[n], &pos)?;
        let mut e = Eager::new(rec);
        e.gemv = self.gemv_rows(gpu, n);
        // Each layer's input is read by that layer alone (no hidden states
        // are kept): projections add into the residual stream in place.
        e.residual_in_place = true;
        let mut x = self.embed_forward(&mut e, &tids)?;
        let block_rows = cache.block_rows();
        for (l, layer) in self.layers.iter().enumerate() {
            let (k_cache, v_cache) = cache.layer(l);
            let capacity: usize = k_cache.iter().map(|t| t.numel() / kv_dim.max(1)).sum();
            let fits = |b: usize, t: &Tensor| {
                let rows = t.numel() / kv_dim.max(1);
                t.numel() == rows * kv_dim
                    && (rows == block_rows || b + 1 == k_cache.len())
                    && v_cache.get(b).is_some_and(|v| v.numel() == t.numel())
            };
            if k_cache.len() != v_cache.len()
                || !k_cache.iter().enumerate().all(|(b, t)| fits(b, t))
                || past + n > capacity
            {
                return Err(Error::Shape(format!(
                    "forward_cached: {n} positions from {past} into layer {l}'s caches of {} blocks ({capacity} rows of {kv_dim} columns)",
                    k_cache.len(),
                )));
            }
            let cfg = AttnConfig::new(1, n, past + n, c.num_heads, c.num_kv_heads, c.head_dim)
                .with_q_offset(past);
            let attend = Attend::Cached {
                cfg,
                k: k_cache,
                v: v_cache,
                block_rows,
                past,
            };
            let ctx = LayerCtx {
                positions: &positions,
                tables: &tables,
                attend: &attend,
            };
            x = self.layer_forward(&mut e, layer, &x, &ctx)?;
            if n > 1 {
                e.flush()?;
            }
        }
        cache.push(ids)?;
        let h = c.hidden_size;
        let rows = if all_logits { n } else { 1 };
        let x = if rows == n {
            x
        } else {
            // The last row, copied (a view would start at an unaligned offset).
            let last = Tensor::empty(gpu, "decode.last", &[1, h], DType::F32)?;
            e.rec()
                .copy(&x, ((n - 1) * h * 4) as u64, &last, 0, (h * 4) as u64)?;
            last
        };
        e.gemv = false;
        let normed = self.final_norm_forward(&mut e, &x)?;
        e.gemv = self.gemv_rows(gpu, rows);
        self.head_forward(&mut e, &normed)
    }
}

impl Decoder {
    /// Tokens per prefill pass: at most `PREFILL_CHUNK`, and few enough
    /// that the widest activation of a layer (q, k and v together, or the
    /// MLP's gate and up) stays within one binding.
    pub fn prefill_chunk(&self, gpu: &Gpu) -> usize {
        let c = &self.cfg;
        let widest = [
            c.hidden_size,
            (c.num_heads + 2 * c.num_kv_heads) * c.head_dim,
            2 * c.intermediate_size,
        ]
        .into_iter()
        .max()
        .unwrap_or(1) as u64
            * 4;
        ((gpu.caps.max_tensor_bytes() / widest.max(1)) as usize).clamp(1, PREFILL_CHUNK)
    }

    /// A decoder from tensors made elsewhere (random weights for benches).
    pub fn from_parts(
        cfg: &ModelConfig,
        embed: RowBlocks,
        layers: Vec<Arc<Layer>>,
        final_norm: Norm,
        head: RowBlocks,
    ) -> Decoder {
        Decoder {
            cfg: cfg.with_layers(layers.len()),
            embed,
            layers,
            final_norm,
            head,
            rope: Arc::new(Mutex::new(None)),
            decode_gemv: None,
            kv_dtype: DType::F16,
        }
    }

    /// Random weights of `cfg`'s shapes in `dtype` (f32, bf16 or f16), for
    /// speed measurements at real model sizes without downloading them.
    /// Values are small and deterministic; nothing is read back.
    pub fn random(gpu: &Gpu, cfg: &ModelConfig, dtype: DType, seed: u64) -> Result<Decoder> {
        Decoder::synthetic(gpu, cfg, Layout::as_loaded(dtype), Some(seed))
    }

    /// `cfg`'s tensors in `dtype`, laid out and split exactly as `load`
    /// lays out a checkpoint, with uninitialised contents: what memory
    /// plans rehearse on a dry-run GPU (nothing is computed on the host).
    pub fn shaped(gpu: &Gpu, cfg: &ModelConfig, dtype: DType) -> Result<Decoder> {
        Decoder::synthetic(gpu, cfg, Layout::as_loaded(dtype), None)
    }

    /// `shaped` as `load_8bit` lays a model out: layer matrices in Q8.
    pub fn shaped_8bit(gpu: &Gpu, cfg: &ModelConfig, dtype: DType) -> Result<Decoder> {
        let layout = Layout {
            layer_q8: true,
            ..Layout::as_loaded(dtype)
        };
        Decoder::synthetic(gpu, cfg, layout, None)
    }

    /// Like `shaped`, with matrices (tables included) in `matrices` and
    /// vectors (norm weights, biases) in `vectors`: lean training's compute
    /// copy (16-bit matrices, f32 vectors). Matrices are cut into the
    /// blocks of rows an f32 matrix would need, so that each block's f32
    /// gradient fits one binding.
    pub fn shaped_as(
        gpu: &Gpu,
        cfg: &ModelConfig,
        matrices: DType,
        vectors: DType,
    ) -> Result<Decoder> {
        let layout = Layout {
            matrices,
            vectors,
            layer_q8: false,
            blocks_of: DType::F32,
        };
        Decoder::synthetic(gpu, cfg, layout, None)
    }

    /// `cfg`'s tensors stored as `layout` says, with random values from
    /// `seed`, or none at all.
    fn synthetic(
        gpu: &Gpu,
        cfg: &ModelConfig,
        layout: Layout,
        seed: Option<u64>,
    ) -> Result<Decoder> {
        let state = std::cell::Cell::new(seed.unwrap_or(0).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let values = |shape: &[usize], norm: bool| -> Vec<f32> {
            let n: usize = shape.iter().product();
            let scale = if norm {
                0.0
            } else {
                1.0 / (shape[shape.len() - 1] as f32).sqrt()
            };
            let vals: Vec<f32> = (0..n)
                .map(|_| {
                    let mut x = state.get();
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    state.set(x);
                    let u = (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                    if norm {
                        1.0
                    } else {
                        u * scale
                    }
                })
                .collect();
            vals
        };
        let make = |name: &str, shape: &[usize], norm: bool| -> Result<Tensor> {
            let d = layout.vectors;
            match seed {
                None => Tensor::empty(gpu, name, shape, d),
                Some(_) => {
                    gpu.upload_bytes(name, shape, d, &encode_f32(name, &values(shape, norm), d)?)
                }
            }
        };
        let make_matrix = |name: &str, shape: &[usize]| -> Result<RowBlocks> {
            let d = layout.matrices;
            match seed {
                None => RowBlocks::empty_blocked_as(gpu, name, shape, d, layout.blocks_of),
                Some(_) => RowBlocks::upload(
                    gpu,
                    name,
                    shape,
                    d,
                    &encode_f32(name, &values(shape, false), d)?,
                ),
            }
        };
        let vocab = [cfg.vocab_size, cfg.hidden_size];
        let make_rows = |name: &str| make_matrix(name, &vocab);
        let embed = make_rows("embed")?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let mut layer = Layer::default();
            // Matrices in blocks of rows when over the binding limit.
            let mut add = |name: String, shape: &[usize], norm: bool| -> Result<()> {
                let label = format!("layer{l}.{name}");
                if shape.len() == 2 && layout.layer_q8 {
                    let t = match seed {
                        None => RowBlocks::empty(gpu, &label, shape, DType::Q8)?,
                        Some(_) => RowBlocks::upload_q8(gpu, &label, shape, &values(shape, false))?,
                    };
                    layer.insert_rows(name, t);
                } else if shape.len() == 2 {
                    layer.insert_rows(name, make_matrix(&label, shape)?);
                } else {
                    layer.tensors.insert(name, make(&label, shape, norm)?);
                }
                Ok(())
            };
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
                        add(format!("attention.{part}.{kind}"), &shape, false)?;
                    }
                    continue;
                }
                add(name.clone(), &shape, is_norm && !is_bias)?;
            }
            layers.push(Arc::new(layer));
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
            make_rows("head")?
        };
        Ok(Decoder::from_parts(cfg, embed, layers, final_norm, head))
    }
}

/// How `Decoder::synthetic` stores a model's tensors.
#[derive(Clone, Copy)]
struct Layout {
    /// Embedding, head and (unless `layer_q8`) layer matrices.
    matrices: DType,
    /// Norm weights and biases.
    vectors: DType,
    /// Layer matrices in 8-bit blocks (as `Decoder::load_8bit` stores them).
    layer_q8: bool,
    /// Matrices are cut into the blocks of rows a matrix of this dtype
    /// would need.
    blocks_of: DType,
}

impl Layout {
    /// As `Decoder::load` keeps a checkpoint stored in `dtype` (f16
    /// vectors widened to f32).
    fn as_loaded(dtype: DType) -> Layout {
        let matrices = match dtype {
            DType::BF16 | DType::F16 => dtype,
            _ => DType::F32,
        };
        let vectors = if super::weights::widens(matrices, 1, false) {
            DType::F32
        } else {
            matrices
        };
        Layout {
            matrices,
            vectors,
            layer_q8: false,
            blocks_of: matrices,
        }
    }
}
