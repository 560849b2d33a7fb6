//! The op interface a model's forward is written against, so that each
//! family's layer exists once (`model::layers`) and serves every use:
//!
//! - [`Eager`] runs the ops straight into a [`Recorder`] with no tape: the
//!   teacher, `eval`, prefill and cached decode. Values are tensors, and a
//!   temporary the layer made may be updated in place (bias, rope,
//!   residual adds), which saves a buffer and a pass each time; decode
//!   steps can take the gemv kernel and write into a KV cache.
//! - [`Taped`] records the same ops on an autodiff [`Tape`]: the student in
//!   training, with or without recompute. Values are tape variables;
//!   weights that have a gradient buffer become parameters, the rest
//!   constants.
//!
//! Changing how an op is launched means changing it here, once per mode.

use std::collections::HashMap;

use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, RowBlocks, Tensor};
use crate::ops::attention::{self, AttnConfig};
use crate::ops::matmul::Region;
use crate::ops::rope::RopeTables;
use crate::ops::{
    bias_add, cast, elementwise, embedding, gelu, gemv, layernorm, matmul, rmsnorm, rope, swiglu,
};

/// Where a layer's attention reads keys and values.
pub enum Attend<'a> {
    /// The batch's own keys and values (training, scoring, eval).
    Dense {
        cfg: AttnConfig,
        /// u32 `[batch, seq]`: 1 = real token, 0 = padding.
        mask: Option<&'a Tensor>,
    },
    /// A KV cache of one sequence in blocks of `block_rows` rows: the new
    /// keys and values are copied into rows `past..past + n`, then the
    /// queries attend as `cfg` says (rows `0..past + n` of the cache,
    /// queries offset by `past`).
    Cached {
        cfg: AttnConfig,
        k: &'a [Tensor],
        v: &'a [Tensor],
        block_rows: usize,
        past: usize,
    },
}

/// The ops of a forward pass. `V` is a value: a tensor when run eagerly, a
/// tape variable when recorded for backward.
pub trait Exec {
    type V: Clone;

    fn gpu(&self) -> &Gpu;
    /// The tensor behind a value.
    fn value<'a>(&'a self, v: &'a Self::V) -> &'a Tensor;
    /// A model weight as a value (a parameter when it has a gradient).
    fn weight(&mut self, t: &Tensor) -> Result<Self::V>;
    /// Rows of `table` (a weight, in one or more blocks of rows) gathered
    /// by `ids`.
    fn embedding(&mut self, ids: &Tensor, table: &RowBlocks) -> Result<Self::V>;
    /// Logits x·headᵀ `[tokens, vocab]` over a head in blocks of rows.
    fn logits(&mut self, x: &Self::V, head: &RowBlocks) -> Result<Self::V>;
    /// x·wᵀ (+ b), w stored `[out, in]`.
    fn linear(&mut self, x: &Self::V, w: &Self::V, b: Option<&Self::V>) -> Result<Self::V>;
    /// x·wᵀ (+ b) with w a weight in blocks of rows: each block writes its
    /// columns of the output.
    fn linear_rows(&mut self, x: &Self::V, w: &RowBlocks, b: Option<&Self::V>) -> Result<Self::V>;
    fn rmsnorm(&mut self, x: &Self::V, w: &Self::V, eps: f32) -> Result<Self::V>;
    fn layernorm(&mut self, x: &Self::V, w: &Self::V, b: &Self::V, eps: f32) -> Result<Self::V>;
    /// Rotary embedding of `x` (consumed: an eager run rotates in place).
    fn rope(
        &mut self,
        x: Self::V,
        positions: &Tensor,
        tables: &RopeTables,
        head_dim: usize,
    ) -> Result<Self::V>;
    fn attention(&mut self, q: &Self::V, k: &Self::V, v: &Self::V, src: &Attend)
        -> Result<Self::V>;
    /// Rotary embedding of `q` and `k` (both consumed), then attention as
    /// `src` says. An eager run over a KV cache rotates q in place and k
    /// into its cache rows (with v) in one launch.
    fn rope_attention(
        &mut self,
        q: Self::V,
        k: Self::V,
        v: &Self::V,
        (positions, tables, head_dim): (&Tensor, &RopeTables, usize),
        src: &Attend,
    ) -> Result<Self::V> {
        let q = self.rope(q, positions, tables, head_dim)?;
        let k = self.rope(k, positions, tables, head_dim)?;
        self.attention(&q, &k, v, src)
    }
    /// silu(g) ⊙ u.
    fn swiglu(&mut self, g: &Self::V, u: &Self::V) -> Result<Self::V>;
    fn gelu(&mut self, x: &Self::V) -> Result<Self::V>;
    /// fresh + other, where `fresh` is a temporary the caller made and
    /// gives up (an eager run adds into it in place).
    fn residual_add(&mut self, fresh: Self::V, other: &Self::V) -> Result<Self::V>;
    /// `x·wᵀ + resid` (no bias): a projection added to the residual stream.
    /// A cached pass (`Eager::residual_in_place`) accumulates into `resid`
    /// itself, in the product's own launch.
    fn linear_residual(&mut self, x: &Self::V, w: &Self::V, resid: &Self::V) -> Result<Self::V> {
        let y = self.linear(x, w, None)?;
        self.residual_add(y, resid)
    }
    /// Submit what is recorded, so that temporaries return to the pool.
    fn flush(&mut self) -> Result<()>;
}

/// Where `n` new rows from position `past` go in a KV cache of `blocks`
/// blocks of `block_rows` rows: per block they touch, (block, first new
/// row, rows, first row in the block).
fn new_rows(
    past: usize,
    n: usize,
    block_rows: usize,
    blocks: usize,
) -> Vec<(usize, (usize, usize, usize))> {
    (0..blocks)
        .filter_map(|b| {
            let start = b * block_rows;
            let (lo, hi) = (past.max(start), (past + n).min(start + block_rows));
            (lo < hi).then(|| (b, (lo - past, hi - lo, lo - start)))
        })
        .collect()
}

/// Ops recorded straight into a recorder, no tape.
pub struct Eager<'r, 'g> {
    rec: &'r mut Recorder<'g>,
    /// Linear layers take the gemv kernel (decode steps of a few rows).
    pub gemv: bool,
    /// `linear_residual` adds into the residual stream it is given: only
    /// where nothing reads a layer's input after the layer (cached passes,
    /// which keep no hidden states).
    pub residual_in_place: bool,
}

impl<'r, 'g> Eager<'r, 'g> {
    pub fn new(rec: &'r mut Recorder<'g>) -> Self {
        Eager {
            rec,
            gemv: false,
            residual_in_place: false,
        }
    }
    pub fn rec(&mut self) -> &mut Recorder<'g> {
        self.rec
    }

    /// Attention of `q` over a KV cache of `cols` columns in blocks of
    /// `block_rows` rows (the first `cfg.kv_len` rows filled).
    fn attend_cache(
        &mut self,
        q: &Tensor,
        cfg: AttnConfig,
        (kc, vc): (&[Tensor], &[Tensor]),
        block_rows: usize,
        cols: usize,
    ) -> Result<Tensor> {
        if let ([kb], [vb]) = (kc, vc) {
            let cfg = cfg.with_kv_cache(kb.numel() / cols.max(1));
            let inputs = attention::AttnInputs {
                q,
                k: kb,
                v: vb,
                mask: None,
            };
            return Ok(attention::attention(self.rec, &cfg, &inputs)?.0);
        }
        let blocks: Vec<attention::KvBlock> = kc
            .iter()
            .zip(vc)
            .enumerate()
            .map(|(b, (k, v))| attention::KvBlock {
                k,
                v,
                start: b * block_rows,
                rows: k.numel() / cols.max(1),
            })
            .collect();
        attention::attention_blocks(self.rec, &cfg, q, &blocks)
    }
}

impl Exec for Eager<'_, '_> {
    type V = Tensor;

    fn gpu(&self) -> &Gpu {
        self.rec.gpu()
    }
    fn value<'a>(&'a self, v: &'a Tensor) -> &'a Tensor {
        v
    }
    fn weight(&mut self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn embedding(&mut self, ids: &Tensor, table: &RowBlocks) -> Result<Tensor> {
        embedding::embedding_sharded(self.rec, ids, table.blocks())
    }
    fn logits(&mut self, x: &Tensor, head: &RowBlocks) -> Result<Tensor> {
        self.linear_rows(x, head, None)
    }
    fn linear_rows(&mut self, x: &Tensor, w: &RowBlocks, b: Option<&Tensor>) -> Result<Tensor> {
        if let Some(w) = w.as_whole() {
            return self.linear(x, w, b);
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("x has a feature dimension") = w.rows();
        let out = Tensor::empty(self.rec.gpu(), "linear.rows", &shape, DType::F32)?;
        let (xr, or) = (Region::whole(x), Region::whole(&out));
        matmul::matmul_row_blocks(self.rec, (x, xr), w.iter(), (&out, or))?;
        if let Some(b) = b {
            bias_add::bias_add_inplace(self.rec, &out, b)?;
        }
        Ok(out)
    }
    fn linear(&mut self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = if self.gemv {
            gemv::gemv(self.rec, x, w)?
        } else {
            matmul::matmul(self.rec, x, w, false, true)?
        };
        if let Some(b) = b {
            bias_add::bias_add_inplace(self.rec, &y, b)?;
        }
        Ok(y)
    }
    fn rmsnorm(&mut self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        rmsnorm::rmsnorm(self.rec, x, w, eps)
    }
    fn layernorm(&mut self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        layernorm::layernorm(self.rec, x, w, b, eps)
    }
    fn rope(
        &mut self,
        x: Tensor,
        positions: &Tensor,
        tables: &RopeTables,
        head_dim: usize,
    ) -> Result<Tensor> {
        rope::rope_inplace(self.rec, &x, positions, &tables.cos, &tables.sin, head_dim)?;
        Ok(x)
    }
    fn attention(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, src: &Attend) -> Result<Tensor> {
        match *src {
            Attend::Dense { cfg, mask } => {
                let inputs = attention::AttnInputs { q, k, v, mask };
                Ok(attention::attention(self.rec, &cfg, &inputs)?.0)
            }
            Attend::Cached {
                cfg,
                k: kc,
                v: vc,
                block_rows,
                past,
            } => {
                // The new rows into the blocks they fall in: copied to an
                // f32 cache, rounded by one launch into an f16 one.
                let n = cfg.q_len;
                let cols = k.numel() / n.max(1);
                let row = (cols * 4) as u64;
                for (b, (src_row, rows, dst_row)) in new_rows(past, n, block_rows, kc.len()) {
                    let (kb, vb) = (&kc[b], &vc[b]);
                    if kb.dtype() == DType::F16 {
                        let (kv, to) = ((k, v), (kb, vb));
                        cast::kv_rows_to_f16(self.rec, kv, src_row, to, dst_row, rows, cols)?;
                    } else {
                        let (src, dst) = (src_row as u64 * row, dst_row as u64 * row);
                        let len = rows as u64 * row;
                        self.rec.copy(k, src, kb, dst, len)?;
                        self.rec.copy(v, src, vb, dst, len)?;
                    }
                }
                self.attend_cache(q, cfg, (kc, vc), block_rows, cols)
            }
        }
    }
    fn rope_attention(
        &mut self,
        q: Tensor,
        k: Tensor,
        v: &Tensor,
        (positions, tables, head_dim): (&Tensor, &RopeTables, usize),
        src: &Attend,
    ) -> Result<Tensor> {
        let fused = match *src {
            Attend::Cached {
                cfg,
                k: kc,
                v: vc,
                block_rows,
                past,
            } if rope::rope_kv_fits(head_dim, tables) => Some((cfg, kc, vc, block_rows, past)),
            _ => None,
        };
        let Some((cfg, kc, vc, block_rows, past)) = fused else {
            let q = self.rope(q, positions, tables, head_dim)?;
            let k = self.rope(k, positions, tables, head_dim)?;
            return self.attention(&q, &k, v, src);
        };
        // Rotate q in place, and k into the cache rows beside v, block by
        // block: one launch where rope, rope and the KV write took three.
        let n = cfg.q_len;
        let heads = (cfg.q_heads, cfg.kv_heads);
        for (b, rows) in new_rows(past, n, block_rows, kc.len()) {
            let (qkv, rope) = ((&q, &k, v), (positions, tables, head_dim));
            rope::rope_kv(self.rec, qkv, rope, heads, rows, (&kc[b], &vc[b]))?;
        }
        let cols = cfg.kv_heads * head_dim;
        self.attend_cache(&q, cfg, (kc, vc), block_rows, cols)
    }
    fn swiglu(&mut self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        swiglu::swiglu(self.rec, g, u)
    }
    fn gelu(&mut self, x: &Tensor) -> Result<Tensor> {
        gelu::gelu(self.rec, x)
    }
    fn linear_residual(&mut self, x: &Tensor, w: &Tensor, resid: &Tensor) -> Result<Tensor> {
        if !self.residual_in_place {
            let y = self.linear(x, w, None)?;
            return self.residual_add(y, resid);
        }
        if self.gemv {
            gemv::gemv_into(self.rec, x, w, resid, 1.0, 1.0)?;
        } else {
            let g = matmul::Gemm::new(false, true).accumulate();
            matmul::matmul_into(self.rec, x, w, resid, g)?;
        }
        Ok(resid.clone())
    }
    fn residual_add(&mut self, fresh: Tensor, other: &Tensor) -> Result<Tensor> {
        elementwise::add_inplace(self.rec, &fresh, 1.0, other)?;
        Ok(fresh)
    }
    fn flush(&mut self) -> Result<()> {
        self.rec.flush()
    }
}

/// Gradient buffers of trainable weights: a weight with one is recorded
/// as a parameter whose gradient `Tape::backward` adds into the buffer.
pub trait ParamGrads {
    fn grad_of(&self, value: &Tensor) -> Option<&Tensor>;
}

/// A weight's identity: the same device buffer and offset.
pub fn tensor_key(t: &Tensor) -> (u64, u64) {
    (t.buffer().id(), t.byte_offset())
}

/// Ops recorded on an autodiff tape.
pub struct Taped<'t, 'r, 'g, 'p> {
    pub tape: &'t mut Tape,
    rec: &'r mut Recorder<'g>,
    params: Option<&'p dyn ParamGrads>,
    /// One variable per weight, so that a tied embedding and head share
    /// their gradient like one parameter.
    weights: HashMap<(u64, u64), Var>,
}

impl<'t, 'r, 'g, 'p> Taped<'t, 'r, 'g, 'p> {
    /// `params` names the trainable weights; without it every weight is
    /// constant (gradients flow to the inputs only).
    pub fn new(
        tape: &'t mut Tape,
        rec: &'r mut Recorder<'g>,
        params: Option<&'p dyn ParamGrads>,
    ) -> Self {
        Taped {
            tape,
            rec,
            params,
            weights: HashMap::new(),
        }
    }
    pub fn rec(&mut self) -> &mut Recorder<'g> {
        self.rec
    }
}

impl Exec for Taped<'_, '_, '_, '_> {
    type V = Var;

    fn gpu(&self) -> &Gpu {
        self.rec.gpu()
    }
    fn value<'a>(&'a self, v: &'a Var) -> &'a Tensor {
        self.tape.value(*v)
    }
    fn weight(&mut self, t: &Tensor) -> Result<Var> {
        let key = tensor_key(t);
        if let Some(&v) = self.weights.get(&key) {
            return Ok(v);
        }
        let v = match self.params.and_then(|p| p.grad_of(t)) {
            Some(g) => self.tape.param(t.clone(), g.clone())?,
            None => self.tape.constant(t.clone()),
        };
        self.weights.insert(key, v);
        Ok(v)
    }
    fn embedding(&mut self, ids: &Tensor, table: &RowBlocks) -> Result<Var> {
        let mut blocks = Vec::with_capacity(table.blocks().len());
        for (start, t) in table.iter() {
            blocks.push((self.weight(t)?, start));
        }
        self.tape.embedding(self.rec, ids, &blocks)
    }
    fn logits(&mut self, x: &Var, head: &RowBlocks) -> Result<Var> {
        self.linear_rows(x, head, None)
    }
    fn linear_rows(&mut self, x: &Var, w: &RowBlocks, b: Option<&Var>) -> Result<Var> {
        let mut blocks = Vec::with_capacity(w.blocks().len());
        for (start, t) in w.iter() {
            blocks.push((self.weight(t)?, start));
        }
        let y = match blocks[..] {
            [(w, _)] => self.tape.linear(self.rec, *x, w)?,
            _ => self.tape.linear_rows(self.rec, *x, &blocks)?,
        };
        match b {
            Some(b) => self.tape.bias_add(self.rec, y, *b),
            None => Ok(y),
        }
    }
    fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = self.tape.linear(self.rec, *x, *w)?;
        match b {
            Some(b) => self.tape.bias_add(self.rec, y, *b),
            None => Ok(y),
        }
    }
    fn rmsnorm(&mut self, x: &Var, w: &Var, eps: f32) -> Result<Var> {
        self.tape.rmsnorm(self.rec, *x, *w, eps)
    }
    fn layernorm(&mut self, x: &Var, w: &Var, b: &Var, eps: f32) -> Result<Var> {
        self.tape.layernorm(self.rec, *x, *w, *b, eps)
    }
    fn rope(
        &mut self,
        x: Var,
        positions: &Tensor,
        tables: &RopeTables,
        head_dim: usize,
    ) -> Result<Var> {
        self.tape.rope(self.rec, x, positions, tables, head_dim)
    }
    fn attention(&mut self, q: &Var, k: &Var, v: &Var, src: &Attend) -> Result<Var> {
        match src {
            Attend::Dense { cfg, mask } => self.tape.attention(self.rec, cfg, *q, *k, *v, *mask),
            Attend::Cached { .. } => Err(Error::Invalid(
                "attention over a KV cache is for inference; training attends to its own batch"
                    .into(),
            )),
        }
    }
    fn swiglu(&mut self, g: &Var, u: &Var) -> Result<Var> {
        self.tape.swiglu(self.rec, *g, *u)
    }
    fn gelu(&mut self, x: &Var) -> Result<Var> {
        self.tape.gelu(self.rec, *x)
    }
    fn residual_add(&mut self, fresh: Var, other: &Var) -> Result<Var> {
        self.tape.add(self.rec, fresh, *other)
    }
    fn flush(&mut self) -> Result<()> {
        self.rec.flush()
    }
}
