//! Cosine alignment loss of REFERENCE.md §3: per row (token position)
//! `1 − cos(a_r, b_r)` between a student hidden state `a` and the teacher's
//! `b`, masked mean over rows, and its gradient w.r.t. `a` only (the teacher
//! gets none).
//!
//! The cosine follows `torch.nn.functional.cosine_similarity` (PyTorch ≥ 2.0):
//! `cos = Σ (a / max(‖a‖, eps)) · (b / max(‖b‖, eps))`, eps = 1e-8, where the
//! clamp happens under no-grad, so the gradient is the one of `‖a‖` itself:
//! `∂cos/∂a = b/(n_a n_b) − cos · a/(n_a ‖a‖)` with `n_a = max(‖a‖, eps)`
//! (the second term is 0 when a = 0).
//!
//! The loss of a pair is `weight · Σ_r mask_r (1 − cos_r) / n_counted`; the
//! per-row values (0 on masked rows) come back so callers can sum and log.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

/// torch's default eps of cosine_similarity.
pub const EPS: f32 = 1e-8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    eps: f32,
    accumulate: u32,
    _pad: [u32; 3],
}

fn check(op: &str, a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<(usize, usize)> {
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 || a.shape().is_empty() {
        shape_bail!("{op}: expects f32 [rows, hidden] tensors, got {a:?} and {b:?}");
    }
    if a.shape() != b.shape() {
        shape_bail!(
            "{op}: student {:?} and teacher {:?} hidden states differ in shape",
            a.shape(),
            b.shape()
        );
    }
    let cols = a.dim(-1);
    let rows = a.numel().checked_div(cols).unwrap_or(0);
    if mask.dtype() != DType::U32 || mask.numel() != rows {
        shape_bail!("{op}: mask must be u32 with one entry per row ({rows}), got {mask:?}");
    }
    Ok((rows, cols))
}

fn launch(
    rec: &mut Recorder,
    entry: &str,
    args: &[(&str, &Tensor)],
    rows: usize,
    cols: usize,
    scale: f32,
    accumulate: bool,
) -> Result<()> {
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        scale,
        eps: EPS,
        accumulate: accumulate as u32,
        _pad: [0; 3],
    };
    launch::per_group(rec, "cosine", entry, args, &p, rows)
}

fn scale_of(weight: f32, n_counted: f32) -> f32 {
    if n_counted > 0.0 {
        (weight as f64 / n_counted as f64) as f32
    } else {
        0.0
    }
}

/// Per-row `1 − cos` (f32 [rows], 0 where mask is 0), no gradient.
pub fn cosine_forward(rec: &mut Recorder, a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (rows, cols) = check("cosine_forward", a, b, mask)?;
    let val = Tensor::empty(rec.gpu(), "cosine.val", &[rows], DType::F32)?;
    launch(
        rec,
        "cosine_fwd",
        &[("a", a), ("b", b), ("mask", mask), ("val", &val)],
        rows,
        cols,
        0.0,
        false,
    )?;
    Ok(val)
}

/// Per-row `1 − cos` and the gradient of `weight · Σ_r mask_r (1 − cos_r) / n_counted`
/// w.r.t. `a`, into a new tensor shaped like `a`.
pub fn cosine_loss(
    rec: &mut Recorder,
    a: &Tensor,
    b: &Tensor,
    mask: &Tensor,
    weight: f32,
    n_counted: f32,
) -> Result<(Tensor, Tensor)> {
    let shape = check("cosine_loss", a, b, mask)?;
    let ga = Tensor::empty(rec.gpu(), "cosine.grad", a.shape(), DType::F32)?;
    let scale = scale_of(weight, n_counted);
    let val = fwd_bwd(rec, (a, b, mask), shape, scale, &ga, false)?;
    Ok((val, ga))
}

/// Like `cosine_loss`, but adds the gradient into `grad` (shaped like `a`),
/// e.g. the gradient already flowing into that hidden state.
pub fn cosine_loss_accumulate(
    rec: &mut Recorder,
    a: &Tensor,
    b: &Tensor,
    mask: &Tensor,
    weight: f32,
    n_counted: f32,
    grad: &Tensor,
) -> Result<Tensor> {
    let shape = check("cosine_loss_accumulate", a, b, mask)?;
    if grad.dtype() != DType::F32 || grad.shape() != a.shape() {
        shape_bail!("cosine_loss_accumulate: gradient {grad:?} must be f32 shaped like {a:?}");
    }
    let scale = scale_of(weight, n_counted);
    fwd_bwd(rec, (a, b, mask), shape, scale, grad, true)
}

/// The per-row values, and the gradient written into (or, with
/// `accumulate`, added to) `ga`.
fn fwd_bwd(
    rec: &mut Recorder,
    (a, b, mask): (&Tensor, &Tensor, &Tensor),
    (rows, cols): (usize, usize),
    scale: f32,
    ga: &Tensor,
    accumulate: bool,
) -> Result<Tensor> {
    let val = Tensor::empty(rec.gpu(), "cosine.val", &[rows], DType::F32)?;
    launch(
        rec,
        "cosine_fwd_bwd",
        &[
            ("a", a),
            ("b", b),
            ("mask", mask),
            ("val", &val),
            ("ga", ga),
        ],
        rows,
        cols,
        scale,
        accumulate,
    )?;
    Ok(val)
}

/// Plain references in f64.
pub mod cpu {
    fn dots(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
        a.iter()
            .zip(b)
            .fold((0.0, 0.0, 0.0), |(aa, bb, ab), (&x, &y)| {
                let (x, y) = (x as f64, y as f64);
                (aa + x * x, bb + y * y, ab + x * y)
            })
    }

    /// Per-row `1 − cos` (0 where mask is 0), torch's formula with `eps`.
    pub fn forward(a: &[f32], b: &[f32], mask: &[u32], cols: usize, eps: f32) -> Vec<f32> {
        mask.iter()
            .enumerate()
            .map(|(r, &m)| {
                if m == 0 {
                    return 0.0;
                }
                let (ar, br) = (&a[r * cols..(r + 1) * cols], &b[r * cols..(r + 1) * cols]);
                let (aa, bb, ab) = dots(ar, br);
                let na = aa.sqrt().max(eps as f64);
                let nb = bb.sqrt().max(eps as f64);
                (1.0 - ab / (na * nb)) as f32
            })
            .collect()
    }

    /// `weight · Σ forward / n_counted`.
    pub fn loss(
        a: &[f32],
        b: &[f32],
        mask: &[u32],
        cols: usize,
        weight: f32,
        n_counted: f32,
    ) -> f64 {
        let v = forward(a, b, mask, cols, super::EPS);
        weight as f64 * v.iter().map(|&x| x as f64).sum::<f64>() / n_counted as f64
    }

    /// Gradient of `loss` w.r.t. `a`.
    pub fn backward(
        a: &[f32],
        b: &[f32],
        mask: &[u32],
        cols: usize,
        eps: f32,
        weight: f32,
        n_counted: f32,
    ) -> Vec<f32> {
        let scale = weight as f64 / n_counted as f64;
        let mut g = vec![0.0f32; a.len()];
        for (r, &m) in mask.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let (ar, br) = (&a[r * cols..(r + 1) * cols], &b[r * cols..(r + 1) * cols]);
            let (aa, bb, ab) = dots(ar, br);
            let la = aa.sqrt();
            let na = la.max(eps as f64);
            let nb = bb.sqrt().max(eps as f64);
            let cos = ab / (na * nb);
            let ca = if la > 0.0 { cos / (na * la) } else { 0.0 };
            let cb = 1.0 / (na * nb);
            for v in 0..cols {
                g[r * cols + v] = (scale * (ca * ar[v] as f64 - cb * br[v] as f64)) as f32;
            }
        }
        g
    }
}
