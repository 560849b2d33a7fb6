//! Softmax over the last dimension: forward `y = exp(x − max) / Σ exp(x − max)`
//! (online max and sum, then one write pass) and backward
//! `dx = y · (dy − Σ dy·y)`, one workgroup per row, vocabulary-long rows fine.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::ops::reduce::rows_of;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

/// One workgroup per row.
fn launch(
    rec: &mut Recorder,
    entry: &str,
    args: &[(&str, &Tensor)],
    rows: usize,
    cols: usize,
) -> Result<()> {
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        _pad: [0; 2],
    };
    launch::per_group(rec, "softmax", entry, args, &p, rows)
}

/// Softmax of `x` over its last dimension, into a new tensor.
pub fn softmax(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    let (rows, cols, _) = rows_of("softmax", x)?;
    let y = Tensor::empty(rec.gpu(), "softmax.y", x.shape(), DType::F32)?;
    launch(rec, "softmax_fwd", &[("x", x), ("y", &y)], rows, cols)?;
    Ok(y)
}

/// Gradient w.r.t. the input of softmax, from its output `y` and the
/// upstream gradient `dy`: `dx = y · (dy − Σ_last dy·y)`.
pub fn softmax_backward(rec: &mut Recorder, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (rows, cols, _) = rows_of("softmax_backward", y)?;
    if dy.dtype() != DType::F32 || dy.shape() != y.shape() {
        shape_bail!("softmax_backward: dy {dy:?} must be f32 shaped like y {y:?}");
    }
    let dx = Tensor::empty(rec.gpu(), "softmax.dx", y.shape(), DType::F32)?;
    launch(
        rec,
        "softmax_bwd",
        &[("yin", y), ("dy", dy), ("dx", &dx)],
        rows,
        cols,
    )?;
    Ok(dx)
}

pub mod cpu {
    pub fn softmax(x: &[f32], cols: usize) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len());
        for r in x.chunks(cols) {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = r.iter().map(|&v| (v as f64 - m).exp()).sum();
            y.extend(r.iter().map(|&v| ((v as f64 - m).exp() / z) as f32));
        }
        y
    }
    pub fn softmax_backward(y: &[f32], dy: &[f32], cols: usize) -> Vec<f32> {
        let mut dx = Vec::with_capacity(y.len());
        for (yr, gr) in y.chunks(cols).zip(dy.chunks(cols)) {
            let d: f64 = yr.iter().zip(gr).map(|(&a, &b)| a as f64 * b as f64).sum();
            dx.extend(
                yr.iter()
                    .zip(gr)
                    .map(|(&a, &b)| (a as f64 * (b as f64 - d)) as f32),
            );
        }
        dx
    }
}
