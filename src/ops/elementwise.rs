//! Elementwise f32 ops: `out = alpha·a + beta·b` (add, sub, residual adds),
//! `out = a·b`, in-place scaling and accumulation. Each has a CPU reference.
//! Backward rules are linear: d(alpha·a + beta·b)/da = alpha, and for the
//! product, da = dout·b, db = dout·a (which is `mul` again).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    _pad: u32,
}

fn check_f32(op: &str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        if t.dtype() != DType::F32 {
            shape_bail!("{op}: expects f32 tensors, got {:?}", t);
        }
    }
    let n = ts[0].numel();
    for t in &ts[1..] {
        if t.numel() != n {
            shape_bail!(
                "{op}: element counts differ: {:?} vs {:?}",
                ts[0].shape(),
                t.shape()
            );
        }
    }
    Ok(())
}

fn launch(
    rec: &mut Recorder,
    entry: &str,
    args: &[(&str, &Tensor)],
    n: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let p = Params {
        n: n as u32,
        alpha,
        beta,
        _pad: 0,
    };
    launch::per_item(rec, "elementwise", entry, args, &p, n)
}

/// `out = entry(a, b)` into a new tensor shaped like `a`.
fn binary(
    rec: &mut Recorder,
    entry: &str,
    a: &Tensor,
    b: &Tensor,
    alpha: f32,
    beta: f32,
) -> Result<Tensor> {
    check_f32(entry, &[a, b])?;
    let out = Tensor::empty(rec.gpu(), &format!("{entry}.out"), a.shape(), DType::F32)?;
    launch(
        rec,
        entry,
        &[("a", a), ("b", b), ("out", &out)],
        a.numel(),
        alpha,
        beta,
    )?;
    Ok(out)
}

/// out = alpha·a + beta·b, into a new tensor shaped like `a`.
pub fn axpby(rec: &mut Recorder, alpha: f32, a: &Tensor, beta: f32, b: &Tensor) -> Result<Tensor> {
    binary(rec, "axpby", a, b, alpha, beta)
}

/// a + b
pub fn add(rec: &mut Recorder, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    axpby(rec, 1.0, a, 1.0, b)
}

/// a·b elementwise.
pub fn mul(rec: &mut Recorder, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(rec, "mul", a, b, 1.0, 0.0)
}

/// x ← alpha·x
pub fn scale_inplace(rec: &mut Recorder, x: &Tensor, alpha: f32) -> Result<()> {
    check_f32("scale_inplace", &[x])?;
    launch(rec, "scale_inplace", &[("x", x)], x.numel(), alpha, 0.0)
}

/// x ← x + alpha·a
pub fn add_inplace(rec: &mut Recorder, x: &Tensor, alpha: f32, a: &Tensor) -> Result<()> {
    check_f32("add_inplace", &[x, a])?;
    launch(
        rec,
        "add_inplace",
        &[("x", x), ("a", a)],
        x.numel(),
        alpha,
        0.0,
    )
}

pub mod cpu {
    pub fn axpby(alpha: f32, a: &[f32], beta: f32, b: &[f32]) -> Vec<f32> {
        a.iter().zip(b).map(|(x, y)| alpha * x + beta * y).collect()
    }
    pub fn mul(a: &[f32], b: &[f32]) -> Vec<f32> {
        a.iter().zip(b).map(|(x, y)| x * y).collect()
    }
}
