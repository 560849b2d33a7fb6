//! SwiGLU activation of the Llama/Qwen3 MLP: `out = silu(gate) · up`, with
//! `gate`, `up` `[tokens, I]` as separate tensors or one fused
//! `[tokens, 2I]` tensor (gate columns first, then up). Backward gives
//! `dgate = d·up·s·(1 + gate·(1 − s))`, `dup = d·silu(gate)` (s = sigmoid).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    width: u32,
    _pad: [u32; 2],
}

fn launch(
    rec: &mut Recorder,
    entry: &str,
    args: &[(&str, &Tensor)],
    n: usize,
    width: usize,
) -> Result<()> {
    if n > u32::MAX as usize / 2 {
        shape_bail!("swiglu: {n} elements are too many for one launch");
    }
    let p = Params {
        n: n as u32,
        width: width as u32,
        _pad: [0; 2],
    };
    launch::per_item(rec, "swiglu", entry, args, &p, n)
}

fn check_pair(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 || a.shape() != b.shape() {
        shape_bail!(
            "{op}: expects two f32 tensors of one shape, got {:?} and {:?}",
            a,
            b
        );
    }
    Ok(())
}

/// Shape of the output of the fused layout: `[.., 2I]` → `[.., I]`.
fn fused_out_shape(op: &str, gu: &Tensor) -> Result<Vec<usize>> {
    if gu.dtype() != DType::F32 || gu.shape().is_empty() || !gu.dim(-1).is_multiple_of(2) {
        shape_bail!("{op}: gate_up must be f32 [tokens, 2I], got {:?}", gu);
    }
    let mut s = gu.shape().to_vec();
    *s.last_mut().expect("non-empty") /= 2;
    Ok(s)
}

/// silu(gate) · up.
pub fn swiglu(rec: &mut Recorder, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check_pair("swiglu", gate, up)?;
    let out = Tensor::empty(rec.gpu(), "swiglu.out", gate.shape(), DType::F32)?;
    let width = gate.shape().last().copied().unwrap_or(1);
    launch(
        rec,
        "swiglu_fwd",
        &[("gate", gate), ("up", up), ("out", &out)],
        gate.numel(),
        width,
    )?;
    Ok(out)
}

/// (dgate, dup) from dout and the forward inputs.
pub fn swiglu_backward(
    rec: &mut Recorder,
    dout: &Tensor,
    gate: &Tensor,
    up: &Tensor,
) -> Result<(Tensor, Tensor)> {
    check_pair("swiglu_backward", gate, up)?;
    check_pair("swiglu_backward", dout, gate)?;
    let gpu = rec.gpu();
    let dgate = Tensor::empty(gpu, "swiglu.dgate", gate.shape(), DType::F32)?;
    let dup = Tensor::empty(gpu, "swiglu.dup", gate.shape(), DType::F32)?;
    let width = gate.shape().last().copied().unwrap_or(1);
    launch(
        rec,
        "swiglu_bwd",
        &[
            ("dout", dout),
            ("gate", gate),
            ("up", up),
            ("dgate", &dgate),
            ("dup", &dup),
        ],
        gate.numel(),
        width,
    )?;
    Ok((dgate, dup))
}

/// silu(gate) · up from a fused `[tokens, 2I]` gate_up tensor → `[tokens, I]`.
pub fn swiglu_fused(rec: &mut Recorder, gate_up: &Tensor) -> Result<Tensor> {
    let shape = fused_out_shape("swiglu_fused", gate_up)?;
    let out = Tensor::empty(rec.gpu(), "swiglu.out", &shape, DType::F32)?;
    let width = *shape.last().expect("non-empty");
    launch(
        rec,
        "swiglu_fused_fwd",
        &[("gu", gate_up), ("out", &out)],
        out.numel(),
        width,
    )?;
    Ok(out)
}

/// d(gate_up) `[tokens, 2I]` from dout `[tokens, I]` and the fused input.
pub fn swiglu_fused_backward(
    rec: &mut Recorder,
    dout: &Tensor,
    gate_up: &Tensor,
) -> Result<Tensor> {
    let shape = fused_out_shape("swiglu_fused_backward", gate_up)?;
    if dout.dtype() != DType::F32 || dout.shape() != shape.as_slice() {
        shape_bail!(
            "swiglu_fused_backward: dout {:?} should be f32 {:?}",
            dout,
            shape
        );
    }
    let dgu = Tensor::empty(rec.gpu(), "swiglu.dgate_up", gate_up.shape(), DType::F32)?;
    let width = *shape.last().expect("non-empty");
    launch(
        rec,
        "swiglu_fused_bwd",
        &[("dout", dout), ("gu", gate_up), ("dgu", &dgu)],
        dout.numel(),
        width,
    )?;
    Ok(dgu)
}

pub mod cpu {
    fn sigmoid(g: f64) -> f64 {
        1.0 / (1.0 + (-g).exp())
    }

    pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
        gate.iter()
            .zip(up)
            .map(|(&g, &u)| (g as f64 * sigmoid(g as f64) * u as f64) as f32)
            .collect()
    }

    /// (dgate, dup).
    pub fn swiglu_backward(dout: &[f32], gate: &[f32], up: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut dg = Vec::with_capacity(gate.len());
        let mut du = Vec::with_capacity(gate.len());
        for ((&d, &g), &u) in dout.iter().zip(gate).zip(up) {
            let (d, g, u) = (d as f64, g as f64, u as f64);
            let s = sigmoid(g);
            dg.push((d * u * s * (1.0 + g * (1.0 - s))) as f32);
            du.push((d * g * s) as f32);
        }
        (dg, du)
    }

    /// Split a fused `[tokens, 2I]` into (gate, up).
    pub fn split_fused(gu: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
        let mut g = Vec::new();
        let mut u = Vec::new();
        for row in gu.chunks_exact(2 * width) {
            g.extend_from_slice(&row[..width]);
            u.extend_from_slice(&row[width..]);
        }
        (g, u)
    }
}
