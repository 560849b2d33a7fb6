//! A minimal reverse-mode autodiff over the kernel library. Ops called on a
//! `Tape` run forward immediately (recorded into the caller's Recorder) and
//! remember what their backward rule needs; `backward` walks the tape in
//! reverse, turning each output gradient into input gradients with the
//! ops' backward kernels. Parameters may carry an external gradient buffer
//! into which gradients accumulate across micro-batches.
//!
//! Values are never modified in place, so a value stays valid for every
//! node that reads it; gradients of internal values are summed out of
//! place, which keeps shared gradient tensors from aliasing.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gpu::{Recorder, Tensor};
use crate::ops::matmul::{Gemm, Region};
use crate::ops::{
    attention, bias_add, elementwise, embedding, gelu, layernorm, matmul, rmsnorm, rope, swiglu,
};

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

enum Node {
    /// y = x·wᵀ (Linear layer, w stored [out, in]).
    Linear {
        x: Var,
        w: Var,
        y: Var,
    },
    BiasAdd {
        x: Var,
        b: Var,
        y: Var,
    },
    RmsNorm {
        x: Var,
        w: Var,
        y: Var,
        saved: rmsnorm::RmsNormSaved,
    },
    LayerNorm {
        x: Var,
        w: Var,
        y: Var,
        b: Var,
        saved: layernorm::LayerNormSaved,
    },
    Rope {
        x: Var,
        y: Var,
        positions: Tensor,
        cos: Tensor,
        sin: Tensor,
        head_dim: usize,
    },
    Attention {
        q: Var,
        k: Var,
        v: Var,
        y: Var,
        lse: Tensor,
        cfg: attention::AttnConfig,
        mask: Option<Tensor>,
    },
    Swiglu {
        g: Var,
        u: Var,
        y: Var,
    },
    Gelu {
        x: Var,
        y: Var,
    },
    Add {
        a: Var,
        b: Var,
        y: Var,
    },
    /// y = x·wᵀ with w in blocks of rows (block, its first row): each
    /// block gives its columns of y.
    LinearRows {
        x: Var,
        blocks: Vec<(Var, usize)>,
        y: Var,
    },
    /// A gather from a table in blocks of rows: (block, its first row).
    Embedding {
        ids: Tensor,
        blocks: Vec<(Var, usize)>,
        y: Var,
    },
}

#[derive(Default)]
pub struct Tape {
    values: Vec<Option<Tensor>>,
    nodes: Vec<Node>,
    /// Parameters whose gradient accumulates into a caller-owned buffer.
    param_grads: HashMap<Var, Tensor>,
    /// Values whose gradient is not needed (inputs, frozen weights).
    constant: Vec<bool>,
}

impl Tape {
    pub fn new() -> Tape {
        Tape::default()
    }

    fn push(&mut self, t: Tensor, constant: bool) -> Var {
        self.values.push(Some(t));
        self.constant.push(constant);
        Var(self.values.len() - 1)
    }

    /// A value that needs no gradient.
    pub fn constant(&mut self, t: Tensor) -> Var {
        self.push(t, true)
    }

    /// A trainable parameter; its gradient is added into `grad` (same
    /// shape, f32) by `backward`.
    pub fn param(&mut self, value: Tensor, grad: Tensor) -> Result<Var> {
        if grad.numel() != value.numel() {
            return Err(Error::Shape(format!(
                "parameter {:?} with a gradient buffer of shape {:?}",
                value.shape(),
                grad.shape()
            )));
        }
        let v = self.push(value, false);
        self.param_grads.insert(v, grad);
        Ok(v)
    }

    fn out(&mut self, t: Tensor, inputs: &[Var]) -> Var {
        let constant = inputs.iter().all(|v| self.constant[v.0]);
        self.push(t, constant)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        self.values[v.0]
            .as_ref()
            .expect("value is alive until backward releases it")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn linear(&mut self, rec: &mut Recorder, x: Var, w: Var) -> Result<Var> {
        let y = matmul::matmul(rec, self.value(x), self.value(w), false, true)?;
        let y = self.out(y, &[x, w]);
        self.nodes.push(Node::Linear { x, w, y });
        Ok(y)
    }

    /// y = x·wᵀ for a weight `[out, in]` given as blocks of consecutive
    /// rows with their first row: one product per block into its columns.
    pub fn linear_rows(
        &mut self,
        rec: &mut Recorder,
        x: Var,
        blocks: &[(Var, usize)],
    ) -> Result<Var> {
        let xv = self.value(x).clone();
        let mut rows = 0;
        for &(w, first) in blocks {
            if first != rows {
                return Err(Error::Shape(format!(
                    "linear: a weight block starts at row {first}, expected {rows}"
                )));
            }
            rows += self.value(w).dim(0);
        }
        let mut shape = xv.shape().to_vec();
        *shape.last_mut().expect("x has a feature dimension") = rows;
        let y = Tensor::empty(rec.gpu(), "linear.rows", &shape, crate::gpu::DType::F32)?;
        let ws = blocks.iter().map(|&(w, first)| (first, self.value(w)));
        let (xr, yr) = (Region::whole(&xv), Region::whole(&y));
        matmul::matmul_row_blocks(rec, (&xv, xr), ws, (&y, yr))?;
        let mut inputs = vec![x];
        inputs.extend(blocks.iter().map(|&(w, _)| w));
        let y = self.out(y, &inputs);
        self.nodes.push(Node::LinearRows {
            x,
            blocks: blocks.to_vec(),
            y,
        });
        Ok(y)
    }

    pub fn bias_add(&mut self, rec: &mut Recorder, x: Var, b: Var) -> Result<Var> {
        let y = bias_add::bias_add(rec, self.value(x), self.value(b))?;
        let y = self.out(y, &[x, b]);
        self.nodes.push(Node::BiasAdd { x, b, y });
        Ok(y)
    }

    pub fn rmsnorm(&mut self, rec: &mut Recorder, x: Var, w: Var, eps: f32) -> Result<Var> {
        let (y, saved) = rmsnorm::rmsnorm_fwd(rec, self.value(x), self.value(w), eps)?;
        let y = self.out(y, &[x, w]);
        self.nodes.push(Node::RmsNorm { x, w, y, saved });
        Ok(y)
    }

    pub fn layernorm(
        &mut self,
        rec: &mut Recorder,
        x: Var,
        w: Var,
        b: Var,
        eps: f32,
    ) -> Result<Var> {
        let (y, saved) =
            layernorm::layernorm_fwd(rec, self.value(x), self.value(w), self.value(b), eps)?;
        let y = self.out(y, &[x, w, b]);
        self.nodes.push(Node::LayerNorm { x, w, y, b, saved });
        Ok(y)
    }

    pub fn rope(
        &mut self,
        rec: &mut Recorder,
        x: Var,
        positions: &Tensor,
        tables: &rope::RopeTables,
        head_dim: usize,
    ) -> Result<Var> {
        let y = rope::rope(
            rec,
            self.value(x),
            positions,
            &tables.cos,
            &tables.sin,
            head_dim,
        )?;
        let y = self.out(y, &[x]);
        self.nodes.push(Node::Rope {
            x,
            y,
            positions: positions.clone(),
            cos: tables.cos.clone(),
            sin: tables.sin.clone(),
            head_dim,
        });
        Ok(y)
    }

    pub fn attention(
        &mut self,
        rec: &mut Recorder,
        cfg: &attention::AttnConfig,
        q: Var,
        k: Var,
        v: Var,
        mask: Option<&Tensor>,
    ) -> Result<Var> {
        let inputs = attention::AttnInputs {
            q: self.value(q),
            k: self.value(k),
            v: self.value(v),
            mask,
        };
        let (y, lse) = attention::attention(rec, cfg, &inputs)?;
        let y = self.out(y, &[q, k, v]);
        self.nodes.push(Node::Attention {
            q,
            k,
            v,
            y,
            lse,
            cfg: *cfg,
            mask: mask.cloned(),
        });
        Ok(y)
    }

    pub fn swiglu(&mut self, rec: &mut Recorder, g: Var, u: Var) -> Result<Var> {
        let y = swiglu::swiglu(rec, self.value(g), self.value(u))?;
        let y = self.out(y, &[g, u]);
        self.nodes.push(Node::Swiglu { g, u, y });
        Ok(y)
    }

    pub fn gelu(&mut self, rec: &mut Recorder, x: Var) -> Result<Var> {
        let y = gelu::gelu(rec, self.value(x))?;
        let y = self.out(y, &[x]);
        self.nodes.push(Node::Gelu { x, y });
        Ok(y)
    }

    pub fn add(&mut self, rec: &mut Recorder, a: Var, b: Var) -> Result<Var> {
        let y = elementwise::add(rec, self.value(a), self.value(b))?;
        let y = self.out(y, &[a, b]);
        self.nodes.push(Node::Add { a, b, y });
        Ok(y)
    }

    /// Rows of a table gathered by `ids`; the table is given as blocks of
    /// consecutive rows with their first row (one block: the whole table).
    pub fn embedding(
        &mut self,
        rec: &mut Recorder,
        ids: &Tensor,
        blocks: &[(Var, usize)],
    ) -> Result<Var> {
        let mut start = 0;
        let mut tables = Vec::with_capacity(blocks.len());
        for &(v, first) in blocks {
            if first != start {
                return Err(Error::Shape(format!(
                    "embedding: a block starts at row {first}, expected {start}"
                )));
            }
            start += self.value(v).shape()[0];
            tables.push(self.value(v).clone());
        }
        let y = embedding::embedding_sharded(rec, ids, &tables)?;
        let inputs: Vec<Var> = blocks.iter().map(|&(v, _)| v).collect();
        let y = self.out(y, &inputs);
        self.nodes.push(Node::Embedding {
            ids: ids.clone(),
            blocks: blocks.to_vec(),
            y,
        });
        Ok(y)
    }

    /// Walk the tape backwards from `seeds` (value, d loss / d value).
    /// Parameter gradients are added into their buffers; every value and
    /// saved tensor is released as soon as nothing earlier needs it. The
    /// recorder is flushed every `flush_every` nodes to bound memory.
    pub fn backward(
        &mut self,
        rec: &mut Recorder,
        seeds: Vec<(Var, Tensor)>,
        flush_every: usize,
    ) -> Result<()> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.values.len()];
        for (v, g) in seeds {
            accumulate(rec, &mut grads, v, g)?;
        }
        let nodes = std::mem::take(&mut self.nodes);
        for (i, node) in nodes.into_iter().rev().enumerate() {
            self.backward_node(rec, &mut grads, node)?;
            if flush_every > 0 && (i + 1) % flush_every == 0 {
                rec.flush()?;
            }
        }
        // What reached the parameters goes into their gradient buffers.
        for (v, buf) in &self.param_grads {
            if let Some(g) = grads[v.0].take() {
                elementwise::add_inplace(rec, buf, 1.0, &g)?;
            }
        }
        self.values.clear();
        self.constant.clear();
        self.param_grads.clear();
        Ok(())
    }

    fn needs(&self, v: Var) -> bool {
        !self.constant[v.0]
    }

    fn backward_node(
        &mut self,
        rec: &mut Recorder,
        grads: &mut [Option<Tensor>],
        node: Node,
    ) -> Result<()> {
        let y = match &node {
            Node::Linear { y, .. }
            | Node::BiasAdd { y, .. }
            | Node::RmsNorm { y, .. }
            | Node::LayerNorm { y, .. }
            | Node::Rope { y, .. }
            | Node::Attention { y, .. }
            | Node::Swiglu { y, .. }
            | Node::Gelu { y, .. }
            | Node::Add { y, .. }
            | Node::LinearRows { y, .. }
            | Node::Embedding { y, .. } => *y,
        };
        let Some(dy) = grads[y.0].take() else {
            // No gradient flows through here (or nothing downstream used it).
            self.values[y.0] = None;
            return Ok(());
        };
        match node {
            Node::Linear { x, w, .. } => {
                if self.needs(x) {
                    let dx = matmul::matmul(rec, &dy, self.value(w), false, false)?;
                    accumulate(rec, grads, x, dx)?;
                }
                if self.needs(w) {
                    // dW = dyᵀ·x, straight into the parameter's buffer.
                    let xv = self.value(x).clone();
                    let rows = xv.numel() / xv.dim(-1);
                    let dy2 = dy.reshape(&[rows, dy.dim(-1)])?;
                    let x2 = xv.reshape(&[rows, xv.dim(-1)])?;
                    match self.param_grads.get(&w) {
                        Some(buf) => {
                            matmul::matmul_into(
                                rec,
                                &dy2,
                                &x2,
                                buf,
                                matmul::Gemm::new(true, false).accumulate(),
                            )?;
                        }
                        None => {
                            let dw = matmul::matmul(rec, &dy2, &x2, true, false)?;
                            accumulate(rec, grads, w, dw)?;
                        }
                    }
                }
            }
            Node::BiasAdd { x, b, .. } => {
                if self.needs(b) {
                    let db = bias_add::bias_add_backward(rec, &dy)?;
                    accumulate(rec, grads, b, db)?;
                }
                if self.needs(x) {
                    accumulate(rec, grads, x, dy)?;
                }
            }
            Node::RmsNorm { x, w, saved, .. } => {
                let (dx, dw) =
                    rmsnorm::rmsnorm_backward(rec, &dy, self.value(x), self.value(w), &saved)?;
                if self.needs(w) {
                    accumulate(rec, grads, w, dw)?;
                }
                if self.needs(x) {
                    accumulate(rec, grads, x, dx)?;
                }
            }
            Node::LayerNorm { x, w, b, saved, .. } => {
                let (dx, dw, db) =
                    layernorm::layernorm_backward(rec, &dy, self.value(x), self.value(w), &saved)?;
                if self.needs(w) {
                    accumulate(rec, grads, w, dw)?;
                }
                if self.needs(b) {
                    accumulate(rec, grads, b, db)?;
                }
                if self.needs(x) {
                    accumulate(rec, grads, x, dx)?;
                }
            }
            Node::Rope {
                x,
                positions,
                cos,
                sin,
                head_dim,
                ..
            } => {
                if self.needs(x) {
                    let dx = rope::rope_backward(rec, &dy, &positions, &cos, &sin, head_dim)?;
                    accumulate(rec, grads, x, dx)?;
                }
            }
            Node::Attention {
                q,
                k,
                v,
                y,
                lse,
                cfg,
                mask,
            } => {
                let inputs = attention::AttnInputs {
                    q: self.value(q),
                    k: self.value(k),
                    v: self.value(v),
                    mask: mask.as_ref(),
                };
                let out = self.values[y.0]
                    .as_ref()
                    .expect("attention output kept for backward");
                let (dq, dk, dv) =
                    attention::attention_backward(rec, &cfg, &inputs, out, &lse, &dy)?;
                accumulate(rec, grads, q, dq)?;
                accumulate(rec, grads, k, dk)?;
                accumulate(rec, grads, v, dv)?;
            }
            Node::Swiglu { g, u, .. } => {
                let (dg, du) = swiglu::swiglu_backward(rec, &dy, self.value(g), self.value(u))?;
                accumulate(rec, grads, g, dg)?;
                accumulate(rec, grads, u, du)?;
            }
            Node::Gelu { x, .. } => {
                let dx = gelu::gelu_backward(rec, &dy, self.value(x))?;
                accumulate(rec, grads, x, dx)?;
            }
            Node::Add { a, b, .. } => {
                if self.needs(a) {
                    accumulate(rec, grads, a, dy.clone())?;
                }
                if self.needs(b) {
                    accumulate(rec, grads, b, dy)?;
                }
            }
            Node::LinearRows { x, blocks, .. } => {
                let xv = self.value(x).clone();
                let n = xv.numel() / xv.dim(-1);
                let x2 = xv.reshape(&[n, xv.dim(-1)])?;
                let dy2 = dy.reshape(&[n, dy.dim(-1)])?;
                let dys = Region::whole(&dy2);
                if self.needs(x) {
                    // dx = Σ dy[:, block]·W_block
                    let dx =
                        Tensor::empty(rec.gpu(), "linear.dx", xv.shape(), crate::gpu::DType::F32)?;
                    let ws = blocks.iter().map(|&(w, first)| (first, self.value(w)));
                    matmul::matmul_row_blocks_dx(rec, (&dy2, dys), ws, (&dx, Region::whole(&dx)))?;
                    accumulate(rec, grads, x, dx)?;
                }
                for &(w, first) in &blocks {
                    if !self.needs(w) {
                        continue;
                    }
                    // dW_block = dy[:, block]ᵀ·x, into the parameter's buffer.
                    let wv = self.value(w).clone();
                    let cols = dys.cols(first, wv.dim(0));
                    let g = Gemm::new(true, false);
                    match self.param_grads.get(&w) {
                        Some(buf) => {
                            let r = Region::whole(buf);
                            matmul::matmul_region(
                                rec,
                                (&dy2, cols),
                                &x2,
                                (buf, r),
                                g.accumulate(),
                            )?;
                        }
                        None => {
                            let dw = Tensor::empty(
                                rec.gpu(),
                                "linear.dw",
                                wv.shape(),
                                crate::gpu::DType::F32,
                            )?;
                            let r = Region::whole(&dw);
                            matmul::matmul_region(rec, (&dy2, cols), &x2, (&dw, r), g)?;
                            accumulate(rec, grads, w, dw)?;
                        }
                    }
                }
            }
            Node::Embedding { ids, blocks, .. } => {
                for (table, first) in blocks {
                    if self.needs(table) {
                        let rows = self.value(table).shape()[0];
                        let dt = embedding::embedding_backward_rows(rec, &ids, &dy, rows, first)?;
                        accumulate(rec, grads, table, dt)?;
                    }
                }
            }
        }
        // The output is consumed: nothing earlier on the tape reads it.
        self.values[y.0] = None;
        Ok(())
    }
}

/// grads[v] += g, out of place (a gradient tensor may be shared by two
/// values, e.g. both inputs of an add).
fn accumulate(rec: &mut Recorder, grads: &mut [Option<Tensor>], v: Var, g: Tensor) -> Result<()> {
    grads[v.0] = Some(match grads[v.0].take() {
        None => g,
        Some(prev) => {
            let g = g.reshape(prev.shape())?;
            elementwise::add(rec, &prev, &g)?
        }
    });
    Ok(())
}
