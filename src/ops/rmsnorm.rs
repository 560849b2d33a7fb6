//! RMSNorm over the last dimension (Llama, Qwen3), computed as Hugging Face
//! does in f32: `y = w * (x * rsqrt(mean(x²) + eps))`.
//!
//! The weight has `n` entries and `x`'s last dimension must be a multiple of
//! `n`: rows are `x.numel() / n`. So Qwen3's per-head q/k norm is this op on
//! a `[tokens, heads·head_dim]` activation with a `[head_dim]` weight.
//!
//! Forward returns the per-row `rstd` that backward needs. Backward gives
//! `dx` and `dw` (dw summed over rows deterministically: per-chunk partials,
//! then an in-order sum, see `colsum`).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::{colsum, launch};
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct NormParams {
    pub rows: u32,
    pub n: u32,
    pub tpr: u32,
    pub eps: f32,
    pub chunk: u32,
    pub accumulate: u32,
    pub _pad: [u32; 2],
}

/// Invocations per row for rows of `n` (power of two, at most 256): about
/// four columns per invocation, so short rows share a workgroup.
pub(crate) fn threads_per_group(n: usize) -> u32 {
    (n.div_ceil(4).max(1).next_power_of_two()).min(256) as u32
}

/// Rows and invocations per row, and the workgroup grid, for a row kernel.
pub(crate) fn row_launch(rec: &Recorder, rows: usize, n: usize) -> (u32, [u32; 3]) {
    let tpr = threads_per_group(n);
    let per_group = 256 / tpr as usize;
    let groups = rec.gpu().grid_1d(rows.div_ceil(per_group).max(1) as u32);
    (tpr, groups)
}

/// Whether a norm's weight (f32 or bf16) is bf16: the shaders' `W_BF16`.
pub(crate) fn weight_is_bf16(op: &str, w: &Tensor) -> Result<bool> {
    match w.dtype() {
        DType::F32 => Ok(false),
        DType::BF16 => Ok(true),
        other => shape_bail!("{op}: weight must be f32 or bf16, got {}", other.name()),
    }
}

/// Record a norm's forward kernel over `rows` rows of `n` (nothing for no
/// rows), its weight bound as `w` in f32 or (`w_bf16`) bf16.
pub(crate) fn forward_launch(
    rec: &mut Recorder,
    kernel: (&str, &str),
    w_bf16: bool,
    args: &[(&str, &Tensor)],
    rows: usize,
    n: usize,
    eps: f32,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let (tpr, groups) = row_launch(rec, rows, n);
    let p = NormParams {
        rows: rows as u32,
        n: n as u32,
        tpr,
        eps,
        chunk: 0,
        accumulate: 0,
        _pad: [0; 2],
    };
    let constants = [("W_BF16", w_bf16 as u32 as f64)];
    launch::dispatch_with(rec, kernel, &constants, args, &p, groups)
}

/// Rows of `x` for a weight of `n` entries, or a shape error.
pub(crate) fn norm_rows(op: &str, x: &Tensor, n: usize) -> Result<usize> {
    if x.dtype() != DType::F32 {
        shape_bail!("{op}: x must be f32, got {:?}", x);
    }
    if x.shape().is_empty() || n == 0 || !x.dim(-1).is_multiple_of(n) {
        shape_bail!(
            "{op}: the last dimension of x {:?} must be a multiple of the weight's {n} entries",
            x.shape()
        );
    }
    Ok(x.numel() / n)
}

/// What forward saves for backward: `rstd` per row (`[rows]`, f32).
pub struct RmsNormSaved {
    pub rstd: Tensor,
}

/// y = w · (x · rsqrt(mean(x²) + eps)); `w` is f32 or bf16 `[n]`.
/// Returns y (shaped like x) and the per-row rstd for backward.
pub fn rmsnorm_fwd(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<(Tensor, RmsNormSaved)> {
    let n = w.numel();
    let rows = norm_rows("rmsnorm", x, n)?;
    let bf16 = weight_is_bf16("rmsnorm", w)?;
    let gpu = rec.gpu();
    let y = Tensor::empty(gpu, "rmsnorm.y", x.shape(), DType::F32)?;
    let rstd = Tensor::empty(gpu, "rmsnorm.rstd", &[rows], DType::F32)?;
    let args = [("x", x), ("w", w), ("y", &y), ("rstd_out", &rstd)];
    forward_launch(rec, ("rmsnorm", "rmsnorm_fwd"), bf16, &args, rows, n, eps)?;
    Ok((y, RmsNormSaved { rstd }))
}

/// y = w · (x · rsqrt(mean(x²) + eps)) (inference: nothing saved).
pub fn rmsnorm(rec: &mut Recorder, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(rmsnorm_fwd(rec, x, w, eps)?.0)
}

/// h = x + residual, then y = w · (h · rsqrt(mean(h²) + eps)), in one
/// pass (f32 weight). Returns (h, y, saved); backward takes h as its x.
pub fn rmsnorm_residual_fwd(
    rec: &mut Recorder,
    x: &Tensor,
    residual: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, RmsNormSaved)> {
    let n = w.numel();
    let rows = norm_rows("rmsnorm_residual", x, n)?;
    if w.dtype() != DType::F32 {
        shape_bail!("rmsnorm_residual: weight must be f32, got {:?}", w);
    }
    if residual.dtype() != DType::F32 || residual.numel() != x.numel() {
        shape_bail!(
            "rmsnorm_residual: residual {:?} does not match x {:?}",
            residual,
            x
        );
    }
    let gpu = rec.gpu();
    let h = Tensor::empty(gpu, "rmsnorm.h", x.shape(), DType::F32)?;
    let y = Tensor::empty(gpu, "rmsnorm.y", x.shape(), DType::F32)?;
    let rstd = Tensor::empty(gpu, "rmsnorm.rstd", &[rows], DType::F32)?;
    forward_launch(
        rec,
        ("rmsnorm", "rmsnorm_residual_fwd"),
        false,
        &[
            ("x", x),
            ("res", residual),
            ("w", w),
            ("h", &h),
            ("y", &y),
            ("rstd_out", &rstd),
        ],
        rows,
        n,
        eps,
    )?;
    Ok((h, y, RmsNormSaved { rstd }))
}

/// What a norm's backward reads and writes besides dy, x, w and dx.
pub(crate) struct NormBackward<'a> {
    /// Shader file; the dx entry point is `{shader}_bwd_dx`.
    pub shader: &'a str,
    /// Entry point writing per-chunk column partials of the parameter
    /// gradients.
    pub partial_entry: &'a str,
    /// The saved per-row statistics: binding name, tensor, values per row.
    pub stats: (&'a str, &'a Tensor, usize),
    /// Binding names of the partial outputs, one per parameter gradient.
    pub parts: &'a [&'a str],
}

/// The backward launches of RMSNorm and LayerNorm: dx row by row (written,
/// or added when `accumulate`), then the parameter gradients as column
/// partials over row chunks, summed. Returns the gradients in `parts` order.
pub(crate) fn norm_backward(
    rec: &mut Recorder,
    nb: &NormBackward,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    accumulate: bool,
) -> Result<Vec<Tensor>> {
    let op = format!("{}_backward", nb.shader);
    let n = w.numel();
    let rows = norm_rows(&op, x, n)?;
    if w.dtype() != DType::F32 {
        shape_bail!("{op}: weight must be f32, got {:?}", w);
    }
    for (what, t) in [("dy", dy), ("dx", dx)] {
        if t.dtype() != DType::F32 || t.numel() != x.numel() {
            shape_bail!("{op}: {what} {:?} does not match x {:?}", t, x);
        }
    }
    let (stats_name, stats, per_group) = nb.stats;
    if stats.numel() != per_group * rows || stats.dtype() != DType::F32 {
        let shape = if per_group == 1 {
            format!("[{rows}]")
        } else {
            format!("[{rows}, {per_group}]")
        };
        shape_bail!("{op}: {stats_name} {:?} should be f32 {shape}", stats);
    }
    let gpu = rec.gpu();
    let chunk = colsum::chunk_rows(rows, n);
    let chunks = colsum::num_chunks(rows, n);
    let parts = nb
        .parts
        .iter()
        .map(|name| {
            Tensor::empty(
                gpu,
                &format!("{}.{name}", nb.shader),
                &[chunks, n],
                DType::F32,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let (tpr, groups) = row_launch(rec, rows, n);
    let p = NormParams {
        rows: rows as u32,
        n: n as u32,
        tpr,
        eps: 0.0,
        chunk: chunk as u32,
        accumulate: accumulate as u32,
        _pad: [0; 2],
    };
    if rows > 0 {
        launch::dispatch(
            rec,
            nb.shader,
            &format!("{}_bwd_dx", nb.shader),
            &[
                ("dy", dy),
                ("x", x),
                ("w", w),
                (stats_name, stats),
                ("dx", dx),
            ],
            &p,
            groups,
        )?;
    }
    let col_groups = n.div_ceil(colsum::COLS_PER_GROUP) as u32;
    let mut bind: Vec<(&str, &Tensor)> = vec![("dy", dy), ("x", x), (stats_name, stats)];
    bind.extend(nb.parts.iter().copied().zip(&parts));
    let groups = [col_groups, chunks as u32, 1];
    launch::dispatch(rec, nb.shader, nb.partial_entry, &bind, &p, groups)?;
    parts
        .iter()
        .map(|part| colsum::sum_partials(rec, part)?.reshape(w.shape()))
        .collect()
}

fn backward(
    rec: &mut Recorder,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    saved: &RmsNormSaved,
    dx: &Tensor,
    accumulate: bool,
) -> Result<Tensor> {
    let nb = NormBackward {
        shader: "rmsnorm",
        partial_entry: "rmsnorm_bwd_dw_partial",
        stats: ("rstd", &saved.rstd, 1),
        parts: &["dw_part"],
    };
    let mut g = norm_backward(rec, &nb, dy, x, w, dx, accumulate)?;
    Ok(g.remove(0))
}

/// Backward of RMSNorm: (dx, dw) from dy, the forward input x, the f32
/// weight and the saved rstd.
pub fn rmsnorm_backward(
    rec: &mut Recorder,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    saved: &RmsNormSaved,
) -> Result<(Tensor, Tensor)> {
    let dx = Tensor::empty(rec.gpu(), "rmsnorm.dx", x.shape(), DType::F32)?;
    let dw = backward(rec, dy, x, w, saved, &dx, false)?;
    Ok((dx, dw))
}

/// Backward of RMSNorm adding its dx into `dx_acc` (a residual stream's
/// gradient); returns dw.
pub fn rmsnorm_backward_acc(
    rec: &mut Recorder,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    saved: &RmsNormSaved,
    dx_acc: &Tensor,
) -> Result<Tensor> {
    backward(rec, dy, x, w, saved, dx_acc, true)
}

pub mod cpu {
    /// (y, rstd) for x `[rows, n]` and w `[n]`; sums in f64.
    pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
        let n = w.len();
        let mut y = Vec::with_capacity(x.len());
        let mut rstd = Vec::new();
        for row in x.chunks_exact(n) {
            let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / n as f64;
            let r = (1.0 / (ms + eps as f64).sqrt()) as f32;
            rstd.push(r);
            y.extend(row.iter().zip(w).map(|(v, wc)| wc * (v * r)));
        }
        (y, rstd)
    }

    /// (dx, dw) from dy, x, w (f64 sums).
    pub fn rmsnorm_backward(dy: &[f32], x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
        let n = w.len();
        let mut dx = Vec::with_capacity(x.len());
        let mut dw = vec![0f64; n];
        for (g, row) in dy.chunks_exact(n).zip(x.chunks_exact(n)) {
            let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / n as f64;
            let r = 1.0 / (ms + eps as f64).sqrt();
            let s: f64 = (0..n)
                .map(|c| g[c] as f64 * w[c] as f64 * row[c] as f64)
                .sum();
            for c in 0..n {
                let (gc, xc, wc) = (g[c] as f64, row[c] as f64, w[c] as f64);
                dx.push((r * gc * wc - xc * r * r * r * s / n as f64) as f32);
                dw[c] += gc * xc * r;
            }
        }
        (dx, dw.into_iter().map(|v| v as f32).collect())
    }
}
