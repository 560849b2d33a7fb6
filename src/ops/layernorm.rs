//! LayerNorm with weight and bias over the last dimension (GPT-NeoX /
//! Pythia), as torch computes it in f32: biased variance,
//! `y = (x - mean) / sqrt(var + eps) * w + b`.
//!
//! `w` and `b` have `n` entries; x's last dimension must be a multiple of
//! `n` (rows = `x.numel() / n`). Forward saves per-row (mean, rstd);
//! backward gives dx, dw and db, the last two summed over rows
//! deterministically (per-chunk partials, then an in-order sum).

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::rmsnorm::{forward_launch, norm_backward, norm_rows, weight_is_bf16, NormBackward};
use crate::shape_bail;

/// What forward saves for backward: `[rows, 2]` f32, (mean, rstd) per row.
pub struct LayerNormSaved {
    pub stats: Tensor,
}

/// y = (x − mean)·rstd·w + b; `w`, `b` both f32 or both bf16, `[n]`.
pub fn layernorm_fwd(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, LayerNormSaved)> {
    let n = w.numel();
    let rows = norm_rows("layernorm", x, n)?;
    if b.numel() != n || b.dtype() != w.dtype() {
        shape_bail!("layernorm: bias {:?} does not match weight {:?}", b, w);
    }
    let bf16 = weight_is_bf16("layernorm", w)?;
    let gpu = rec.gpu();
    let y = Tensor::empty(gpu, "layernorm.y", x.shape(), DType::F32)?;
    let stats = Tensor::empty(gpu, "layernorm.stats", &[rows, 2], DType::F32)?;
    forward_launch(
        rec,
        ("layernorm", "layernorm_fwd"),
        bf16,
        &[
            ("x", x),
            ("w", w),
            ("b", b),
            ("y", &y),
            ("stats_out", &stats),
        ],
        rows,
        n,
        eps,
    )?;
    Ok((y, LayerNormSaved { stats }))
}

/// LayerNorm forward for inference (nothing saved).
pub fn layernorm(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    Ok(layernorm_fwd(rec, x, w, b, eps)?.0)
}

fn backward(
    rec: &mut Recorder,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    saved: &LayerNormSaved,
    dx: &Tensor,
    accumulate: bool,
) -> Result<(Tensor, Tensor)> {
    let nb = NormBackward {
        shader: "layernorm",
        partial_entry: "layernorm_bwd_dwdb_partial",
        stats: ("stats", &saved.stats, 2),
        parts: &["dw_part", "db_part"],
    };
    let mut g = norm_backward(rec, &nb, dy, x, w, dx, accumulate)?;
    let db = g.pop().expect("two gradients");
    let dw = g.pop().expect("two gradients");
    Ok((dw, db))
}

/// Backward of LayerNorm: (dx, dw, db) from dy, the forward input x, the
/// f32 weight and the saved statistics.
pub fn layernorm_backward(
    rec: &mut Recorder,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    saved: &LayerNormSaved,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dx = Tensor::empty(rec.gpu(), "layernorm.dx", x.shape(), DType::F32)?;
    let (dw, db) = backward(rec, dy, x, w, saved, &dx, false)?;
    Ok((dx, dw, db))
}

/// Backward of LayerNorm adding its dx into `dx_acc`; returns (dw, db).
pub fn layernorm_backward_acc(
    rec: &mut Recorder,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    saved: &LayerNormSaved,
    dx_acc: &Tensor,
) -> Result<(Tensor, Tensor)> {
    backward(rec, dy, x, w, saved, dx_acc, true)
}

pub mod cpu {
    fn stats(row: &[f32], eps: f32) -> (f64, f64) {
        let n = row.len() as f64;
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / n;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, 1.0 / (var + eps as f64).sqrt())
    }

    /// (y, stats as [rows, 2] of (mean, rstd)) for x `[rows, n]`.
    pub fn layernorm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
        let n = w.len();
        let mut y = Vec::with_capacity(x.len());
        let mut st = Vec::new();
        for row in x.chunks_exact(n) {
            let (mean, r) = stats(row, eps);
            st.extend([mean as f32, r as f32]);
            for c in 0..n {
                y.push(((row[c] as f64 - mean) * r * w[c] as f64 + b[c] as f64) as f32);
            }
        }
        (y, st)
    }

    /// (dx, dw, db) from dy, x, w (f64 throughout).
    pub fn layernorm_backward(
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        eps: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = w.len();
        let mut dx = Vec::with_capacity(x.len());
        let mut dw = vec![0f64; n];
        let mut db = vec![0f64; n];
        for (g, row) in dy.chunks_exact(n).zip(x.chunks_exact(n)) {
            let (mean, r) = stats(row, eps);
            let xh: Vec<f64> = row.iter().map(|v| (*v as f64 - mean) * r).collect();
            let gw: Vec<f64> = (0..n).map(|c| g[c] as f64 * w[c] as f64).collect();
            let m1 = gw.iter().sum::<f64>() / n as f64;
            let m2 = gw.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / n as f64;
            for c in 0..n {
                dx.push((r * (gw[c] - m1 - xh[c] * m2)) as f32);
                dw[c] += g[c] as f64 * xh[c];
                db[c] += g[c] as f64;
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
        (dx, f(dw), f(db))
    }
}
