//! Exact (erf) GELU as GPT-NeoX uses it, `x·0.5·(1 + erf(x/√2))`, with its
//! backward, and `erf` itself. WGSL has no erf; the shader's `erf_f32` is a
//! minimax approximation with about 1 ulp error (< 1e-7 absolute).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

fn unary(rec: &mut Recorder, entry: &str, x: &Tensor, dout: Option<&Tensor>) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        shape_bail!("{entry}: x must be f32, got {:?}", x);
    }
    if let Some(d) = dout {
        if d.dtype() != DType::F32 || d.numel() != x.numel() {
            shape_bail!("{entry}: dout {:?} does not match x {:?}", d, x);
        }
    }
    let out = Tensor::empty(rec.gpu(), "gelu.out", x.shape(), DType::F32)?;
    let n = x.numel();
    let p = Params {
        n: n as u32,
        _pad: [0; 3],
    };
    let mut args = vec![("x", x), ("out", &out)];
    if let Some(d) = dout {
        args.push(("dout", d));
    }
    launch::per_item(rec, "gelu", entry, &args, &p, n)?;
    Ok(out)
}

/// gelu(x) = x·0.5·(1 + erf(x/√2)).
pub fn gelu(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    unary(rec, "gelu_fwd", x, None)
}

/// dx = dout · gelu'(x).
pub fn gelu_backward(rec: &mut Recorder, dout: &Tensor, x: &Tensor) -> Result<Tensor> {
    unary(rec, "gelu_bwd", x, Some(dout))
}

/// erf(x) elementwise (the shader's approximation, exposed for tests).
pub fn erf(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    unary(rec, "erf_fwd", x, None)
}

pub mod cpu {
    /// erf in f64 to about 1e-15: 2/√π·e^{−x²}·Σ (2x²)^n·x / (1·3·…·(2n+1)),
    /// a series of positive terms (no cancellation); ±1 beyond |x| = 6.
    pub fn erf64(x: f64) -> f64 {
        if x.is_nan() {
            return f64::NAN;
        }
        if x.abs() >= 6.0 {
            return x.signum();
        }
        let x2 = 2.0 * x * x;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= x2 / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    pub fn gelu(x: &[f32]) -> Vec<f32> {
        x.iter()
            .map(|&v| {
                let v = v as f64;
                (0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2))) as f32
            })
            .collect()
    }

    pub fn gelu_backward(dout: &[f32], x: &[f32]) -> Vec<f32> {
        x.iter()
            .zip(dout)
            .map(|(&v, &d)| {
                let v = v as f64;
                let cdf = 0.5 * (1.0 + erf64(v / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (d as f64 * (cdf + v * pdf)) as f32
            })
            .collect()
    }
}
