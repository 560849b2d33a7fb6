//! Bias add: `y = x + b` with `b` `[n]` (f32 or bf16) broadcast over the
//! rows of `x` `[.., n]`. Backward: dx = dy, db = column sums of dy,
//! summed deterministically ([`bias_add_backward`], via `colsum`).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::{colsum, launch};
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    total: u32,
    n: u32,
    _pad: [u32; 2],
}

fn check(op: &str, x: &Tensor, b: &Tensor) -> Result<()> {
    if x.dtype() != DType::F32 {
        shape_bail!("{op}: x must be f32, got {:?}", x);
    }
    if !matches!(b.dtype(), DType::F32 | DType::BF16) {
        shape_bail!("{op}: bias must be f32 or bf16, got {:?}", b);
    }
    let n = b.numel();
    if x.shape().is_empty() || n == 0 || x.dim(-1) != n {
        shape_bail!(
            "{op}: bias {:?} does not match the last dim of x {:?}",
            b.shape(),
            x.shape()
        );
    }
    if x.numel() > u32::MAX as usize {
        shape_bail!("{op}: x {:?} is too large for one launch", x.shape());
    }
    Ok(())
}

/// `entry` over `x`'s elements; the bias is bound as `b` in its own dtype.
fn launch(
    rec: &mut Recorder,
    entry: &str,
    args: &[(&str, &Tensor)],
    x: &Tensor,
    b: &Tensor,
) -> Result<()> {
    let p = Params {
        total: x.numel() as u32,
        n: b.numel() as u32,
        _pad: [0; 2],
    };
    let constants = [("B_BF16", (b.dtype() == DType::BF16) as u32 as f64)];
    let kernel = ("bias_add", entry);
    launch::per_item_with(rec, kernel, &constants, args, &p, x.numel())
}

/// y = x + b (new tensor).
pub fn bias_add(rec: &mut Recorder, x: &Tensor, b: &Tensor) -> Result<Tensor> {
    check("bias_add", x, b)?;
    let out = Tensor::empty(rec.gpu(), "bias_add.out", x.shape(), DType::F32)?;
    launch(rec, "bias_add", &[("x", x), ("b", b), ("out", &out)], x, b)?;
    Ok(out)
}

/// x ← x + b.
pub fn bias_add_inplace(rec: &mut Recorder, x: &Tensor, b: &Tensor) -> Result<()> {
    check("bias_add_inplace", x, b)?;
    launch(rec, "bias_add_inplace", &[("xio", x), ("b", b)], x, b)
}

/// db = Σ over rows of dy `[.., n]` → `[n]` (dx is dy itself).
pub fn bias_add_backward(rec: &mut Recorder, dy: &Tensor) -> Result<Tensor> {
    colsum::colsum(rec, dy)
}

pub mod cpu {
    pub fn bias_add(x: &[f32], b: &[f32]) -> Vec<f32> {
        x.iter()
            .enumerate()
            .map(|(i, v)| v + b[i % b.len()])
            .collect()
    }
}
