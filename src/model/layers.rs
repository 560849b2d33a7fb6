//! Each family's decoder layer, written once against [`Exec`]: the same
//! code runs the teacher, eval, prefill and cached decode (eagerly) and
//! the student in training (on the tape). Adding a family means adding
//! one arm here (and its tensor names in `config`).

use super::config::{Family, ModelConfig};
use super::decoder::Layer;
use super::exec::{Attend, Exec};
use crate::error::Result;
use crate::gpu::Tensor;
use crate::ops::rope::RopeTables;

/// The inputs of one layer besides the residual stream.
pub struct LayerCtx<'a> {
    /// u32 position of each token (rotary embedding).
    pub positions: &'a Tensor,
    pub tables: &'a RopeTables,
    pub attend: &'a Attend<'a>,
}

/// A layer's weights as values of one executor.
struct Weights<'l> {
    layer: &'l Layer,
}

impl Weights<'_> {
    fn get<E: Exec>(&self, e: &mut E, name: &str) -> Result<E::V> {
        e.weight(self.layer.get(name)?)
    }
    fn opt<E: Exec>(&self, e: &mut E, name: &str) -> Result<Option<E::V>> {
        match self.layer.tensors.get(name) {
            Some(t) => Ok(Some(e.weight(t)?)),
            None => Ok(None),
        }
    }
    /// `prefix.weight` with `prefix.bias` when the checkpoint has one.
    /// A weight over the binding limit is in blocks of rows (output
    /// features): one product per block.
    fn linear<E: Exec>(&self, e: &mut E, x: &E::V, prefix: &str) -> Result<E::V> {
        let name = format!("{prefix}.weight");
        let b = self.opt(e, &format!("{prefix}.bias"))?;
        if let Some(rows) = self.layer.split.get(&name) {
            return e.linear_rows(x, rows, b.as_ref());
        }
        let w = self.get(e, &name)?;
        e.linear(x, &w, b.as_ref())
    }
    /// `resid + x·wᵀ (+ b)`: one launch where the executor can (a whole
    /// weight, no bias), else the product and an add.
    fn linear_residual<E: Exec>(
        &self,
        e: &mut E,
        x: &E::V,
        prefix: &str,
        resid: &E::V,
    ) -> Result<E::V> {
        let name = format!("{prefix}.weight");
        let whole = self.layer.tensors.get(&name);
        let bias = self.layer.tensors.contains_key(&format!("{prefix}.bias"));
        match whole {
            Some(t) if !bias => {
                let w = e.weight(t)?;
                e.linear_residual(x, &w, resid)
            }
            _ => {
                let y = self.linear(e, x, prefix)?;
                e.residual_add(y, resid)
            }
        }
    }
}

/// One decoder layer: x `[tokens, hidden]` → the new residual stream.
pub fn layer_forward<E: Exec>(
    cfg: &ModelConfig,
    e: &mut E,
    layer: &Layer,
    x: &E::V,
    ctx: &LayerCtx,
) -> Result<E::V> {
    let eps = cfg.norm_eps as f32;
    let w = Weights { layer };
    let d = cfg.head_dim;
    match cfg.family {
        Family::Llama | Family::Qwen3 => {
            let n1 = w.get(e, "input_layernorm.weight")?;
            let h = e.rmsnorm(x, &n1, eps)?;
            let mut q = w.linear(e, &h, "self_attn.q_proj")?;
            let mut k = w.linear(e, &h, "self_attn.k_proj")?;
            let v = w.linear(e, &h, "self_attn.v_proj")?;
            if cfg.family == Family::Qwen3 {
                let qn = w.get(e, "self_attn.q_norm.weight")?;
                q = e.rmsnorm(&q, &qn, eps)?;
                let kn = w.get(e, "self_attn.k_norm.weight")?;
                k = e.rmsnorm(&k, &kn, eps)?;
            }
            let a = e.rope_attention(q, k, &v, (ctx.positions, ctx.tables, d), ctx.attend)?;
            let x2 = w.linear_residual(e, &a, "self_attn.o_proj", x)?;
            let n2 = w.get(e, "post_attention_layernorm.weight")?;
            let h2 = e.rmsnorm(&x2, &n2, eps)?;
            let g = w.linear(e, &h2, "mlp.gate_proj")?;
            let u = w.linear(e, &h2, "mlp.up_proj")?;
            let m = e.swiglu(&g, &u)?;
            w.linear_residual(e, &m, "mlp.down_proj", &x2)
        }
        Family::GptNeox => {
            let n1 = w.get(e, "input_layernorm.weight")?;
            let b1 = w.get(e, "input_layernorm.bias")?;
            let h = e.layernorm(x, &n1, &b1, eps)?;
            let q = w.linear(e, &h, "attention.q")?;
            let k = w.linear(e, &h, "attention.k")?;
            let v = w.linear(e, &h, "attention.v")?;
            let a = e.rope_attention(q, k, &v, (ctx.positions, ctx.tables, d), ctx.attend)?;
            let o = w.linear(e, &a, "attention.dense")?;
            // Parallel residual: x + attn(ln1(x)) + mlp(ln2(x)); otherwise
            // the MLP reads x + attn(ln1(x)).
            let (mlp_in, attn_out) = if cfg.use_parallel_residual {
                (x.clone(), Some(o))
            } else {
                (e.residual_add(o, x)?, None)
            };
            let n2 = w.get(e, "post_attention_layernorm.weight")?;
            let b2 = w.get(e, "post_attention_layernorm.bias")?;
            let h2 = e.layernorm(&mlp_in, &n2, &b2, eps)?;
            let u = w.linear(e, &h2, "mlp.dense_h_to_4h")?;
            let m = e.gelu(&u)?;
            let down = w.linear(e, &m, "mlp.dense_4h_to_h")?;
            match attn_out {
                Some(o) => {
                    let s = e.residual_add(down, &o)?;
                    e.residual_add(s, x)
                }
                None => e.residual_add(down, &mlp_in),
            }
        }
    }
}
