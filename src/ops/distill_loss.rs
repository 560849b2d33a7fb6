//! The fused distillation loss over vocabulary rows (REFERENCE.md §3):
//! cross-entropy of the student logits against the next token, KL of the
//! tempered student from the tempered teacher, and the gradient w.r.t. the
//! student logits, in one kernel with one workgroup per row. No softmax of
//! the batch is ever materialised: pass 1 keeps online maxima and sums,
//! pass 2 writes the gradient (optionally over the logits, in place).
//!
//! The scalar loss of a step is
//! `L = w_ce · Σ_r ce_r / n_ce + w_kl · τ² · Σ_r kl_r / n_kl`, where
//! - `ce_r = −log softmax(s_r)[y_r]` (0 on rows without a target),
//! - `kl_r = Σ_v p_v (log p_v − log q_v)`, `p = softmax(t_r/τ)`,
//!   `q = softmax(s_r/τ)` (every row counts: batchmean over all B·T
//!   positions, so `n_kl = B·T`, while `n_ce` counts rows with a target).
//!
//! Gradient: `∂ce_r/∂s_rv = softmax(s_r)_v − [v = y_r]`;
//! `∂kl_r/∂s_rv = −Σ_u p_u ∂log q_u/∂s_rv = −(1/τ) Σ_u p_u ([u = v] − q_v)
//! = (q_v − p_v)/τ`. Hence
//! `∂L/∂s_rv = (w_ce/n_ce)(softmax(s_r)_v − [v = y_r]) + (w_kl·τ/n_kl)(q_v − p_v)`.
//!
//! Targets are u32; any target `>= vocab` (u32::MAX by convention, e.g. the
//! last position of a sequence or padding) means "no target on this row".

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

/// Marks a row without a next-token target.
pub const NO_TARGET: u32 = u32::MAX;

/// Weights and divisors of the loss. `n_ce` and `n_kl` are the counts over
/// the whole optimizer step (all micro-batches), so that gradients of
/// micro-batches add up to the gradient of the step's loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillLoss {
    /// Temperature τ (> 0). The reference default is 1.
    pub tau: f32,
    /// Weight of the cross-entropy term (1 in the reference).
    pub w_ce: f32,
    /// Weight of the KL term (0.1 in the reference).
    pub w_kl: f32,
    /// Number of rows with a target (the CE mean's divisor).
    pub n_ce: f32,
    /// The KL divisor: B·T positions (batchmean over all positions).
    pub n_kl: f32,
}

impl DistillLoss {
    /// The reference defaults (τ = 1, w_ce = 1, w_kl = 0.1) with the given counts.
    pub fn reference(n_ce: f32, n_kl: f32) -> Self {
        DistillLoss {
            tau: 1.0,
            w_ce: 1.0,
            w_kl: 0.1,
            n_ce,
            n_kl,
        }
    }

    /// The scalar loss from the sums of the per-row outputs.
    pub fn total(&self, ce_sum: f64, kl_sum: f64) -> f64 {
        let tau = self.tau as f64;
        self.w_ce as f64 * ce_sum / self.n_ce as f64
            + self.w_kl as f64 * tau * tau * kl_sum / self.n_kl as f64
    }

    /// Coefficient of (softmax(s) − onehot) in the gradient.
    pub fn ce_scale(&self) -> f32 {
        if self.n_ce > 0.0 {
            (self.w_ce as f64 / self.n_ce as f64) as f32
        } else {
            0.0
        }
    }

    /// Coefficient of (q − p) in the gradient: w_kl · τ² · (1/τ) / n_kl.
    pub fn kl_scale(&self) -> f32 {
        if self.n_kl > 0.0 {
            (self.w_kl as f64 * self.tau as f64 / self.n_kl as f64) as f32
        } else {
            0.0
        }
    }
}

/// Per-row outputs: `ce` (f32 [rows], unscaled NLL, 0 without a target)
/// and `kl` (f32 [rows], unscaled KL of the row, without τ²).
pub struct LossRows {
    pub ce: Tensor,
    pub kl: Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    inv_tau: f32,
    tau_is_one: u32,
    ce_scale: f32,
    kl_scale: f32,
    col0: u32,
    vocab: u32,
    row0: u32,
    _pad: [u32; 3],
}

fn check_rows(op: &str, s: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    if s.dtype() != DType::F32 || s.shape().is_empty() {
        shape_bail!("{op}: student logits must be f32 [rows, vocab], got {s:?}");
    }
    let cols = s.dim(-1);
    let rows = s.numel().checked_div(cols).unwrap_or(0);
    if targets.dtype() != DType::U32 || targets.numel() != rows {
        shape_bail!("{op}: targets must be u32 with one entry per row ({rows}), got {targets:?}");
    }
    if rows.checked_mul(cols).is_none_or(|n| n > u32::MAX as usize) {
        shape_bail!("{op}: {rows}×{cols} logits exceed 32-bit indexing; split the rows");
    }
    Ok((rows, cols))
}

fn check_teacher(op: &str, s: &Tensor, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 || t.shape() != s.shape() {
        shape_bail!("{op}: teacher logits {t:?} must be f32 and shaped like the student's {s:?}");
    }
    Ok(())
}

fn params(rows: usize, cols: usize, cfg: &DistillLoss) -> Result<Params> {
    if !(cfg.tau > 0.0 && cfg.tau.is_finite()) {
        return Err(Error::Invalid(format!(
            "distill_loss: temperature must be positive and finite, got {}",
            cfg.tau
        )));
    }
    Ok(Params {
        rows: rows as u32,
        cols: cols as u32,
        inv_tau: (1.0 / cfg.tau as f64) as f32,
        tau_is_one: (cfg.tau == 1.0) as u32,
        ce_scale: cfg.ce_scale(),
        kl_scale: cfg.kl_scale(),
        col0: 0,
        vocab: cols as u32,
        row0: 0,
        _pad: [0; 3],
    })
}

fn row_outputs(rec: &Recorder, rows: usize) -> Result<LossRows> {
    Ok(LossRows {
        ce: Tensor::empty(rec.gpu(), "distill_loss.ce", &[rows], DType::F32)?,
        kl: Tensor::empty(rec.gpu(), "distill_loss.kl", &[rows], DType::F32)?,
    })
}

fn launch(rec: &mut Recorder, entry: &str, args: &[(&str, &Tensor)], p: &Params) -> Result<()> {
    if p.cols == 0 {
        return Ok(());
    }
    launch::per_group(rec, "distill_loss", entry, args, p, p.rows as usize)
}

/// What a teacher-student launch does with the gradient w.r.t. the student.
#[derive(Clone, Copy)]
enum Gradient {
    None,
    /// Into a new tensor shaped like the student logits.
    New,
    /// Over the student logits.
    InPlace,
}

/// The checks, per-row outputs and launch of the three entry points that
/// compare the student with the teacher; returns the new gradient tensor
/// for `Gradient::New`, the rows' statistics for `Gradient::InPlace`.
fn with_teacher(
    rec: &mut Recorder,
    op: &str,
    (s, t, targets): (&Tensor, &Tensor, &Tensor),
    cfg: &DistillLoss,
    grad: Gradient,
) -> Result<(LossRows, Option<Tensor>)> {
    let (rows, cols) = check_rows(op, s, targets)?;
    check_teacher(op, s, t)?;
    let p = params(rows, cols, cfg)?;
    let out = row_outputs(rec, rows)?;
    let ds = match grad {
        Gradient::New => Some(Tensor::empty(
            rec.gpu(),
            "distill_loss.ds",
            s.shape(),
            DType::F32,
        )?),
        Gradient::InPlace => Some(Tensor::empty(
            rec.gpu(),
            "distill_loss.stats",
            &[rows, ROW_STATS],
            DType::F32,
        )?),
        Gradient::None => None,
    };
    let (entry, s_name) = match grad {
        Gradient::None => ("distill_fwd", "s"),
        Gradient::New => ("distill_fwd_bwd", "s"),
        Gradient::InPlace => ("distill_fwd_bwd_inplace", "sg"),
    };
    let mut args = vec![
        (s_name, s),
        ("t", t),
        ("targets", targets),
        ("ce", &out.ce),
        ("kl", &out.kl),
    ];
    if let Some(x) = &ds {
        args.push((if s_name == "sg" { "stats" } else { "ds" }, x));
    }
    launch(rec, entry, &args, &p)?;
    Ok((out, ds))
}

/// Per-row CE and KL, and the gradient of the loss w.r.t. the student
/// logits `s` (f32 [.., vocab]) into a new tensor shaped like `s`.
/// `t`: teacher logits shaped like `s`; `targets`: u32, one per row.
pub fn distill_loss(
    rec: &mut Recorder,
    s: &Tensor,
    t: &Tensor,
    targets: &Tensor,
    cfg: &DistillLoss,
) -> Result<(LossRows, Tensor)> {
    let (out, ds) = with_teacher(rec, "distill_loss", (s, t, targets), cfg, Gradient::New)?;
    Ok((out, ds.expect("Gradient::New makes a gradient tensor")))
}

/// Like `distill_loss`, but the gradient overwrites the student logits
/// `s` (saves a vocabulary-sized buffer per row). Also returns each
/// row's softmax statistics (f32 `[rows, ROW_STATS]`), from which
/// [`distill_grad_cols`] recomputes the gradient of any block of columns.
pub fn distill_loss_inplace(
    rec: &mut Recorder,
    s: &Tensor,
    t: &Tensor,
    targets: &Tensor,
    cfg: &DistillLoss,
) -> Result<(LossRows, Tensor)> {
    let op = "distill_loss_inplace";
    let (rows, stats) = with_teacher(rec, op, (s, t, targets), cfg, Gradient::InPlace)?;
    Ok((rows, stats.expect("Gradient::InPlace makes row statistics")))
}

/// f32 values per row of the statistics `distill_loss_inplace` returns.
pub const ROW_STATS: usize = 5;

/// Where a block of vocabulary columns sits: rows `row0..` of the
/// statistics and targets, columns `col0..` of a `vocab`-wide row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColBlock {
    pub row0: usize,
    pub col0: usize,
    pub vocab: usize,
}

/// The gradient of the loss w.r.t. a block of the student's logits,
/// written over them: `s` and `t` are `[rows, cols]` logits of vocabulary
/// columns `at.col0..at.col0 + cols` for rows `at.row0..` of the rows
/// whose `stats` (from [`distill_loss_inplace`] over whole rows, with the
/// same `cfg`) and `targets` are given. Equal to those columns of the
/// in-place gradient: the LM head's gradient can be finished one block of
/// vocabulary rows at a time without whole rows of logits.
pub fn distill_grad_cols(
    rec: &mut Recorder,
    (s, t): (&Tensor, &Tensor),
    (stats, targets): (&Tensor, &Tensor),
    at: ColBlock,
    cfg: &DistillLoss,
) -> Result<()> {
    let op = "distill_grad_cols";
    if s.dtype() != DType::F32 || s.shape().len() != 2 {
        shape_bail!("{op}: student logits must be f32 [rows, cols], got {s:?}");
    }
    check_teacher(op, s, t)?;
    let (rows, cols) = (s.dim(0), s.dim(1));
    let all = targets.numel();
    if targets.dtype() != DType::U32
        || stats.dtype() != DType::F32
        || stats.numel() != all * ROW_STATS
        || at.row0 + rows > all
        || at.col0 + cols > at.vocab
        || rows * cols > u32::MAX as usize
    {
        shape_bail!(
            "{op}: a {rows}×{cols} block at {at:?} of stats {stats:?} and targets {targets:?}"
        );
    }
    let mut p = params(rows, cols, cfg)?;
    p.col0 = at.col0 as u32;
    p.vocab = at.vocab as u32;
    p.row0 = at.row0 as u32;
    let args = [("sg", s), ("t", t), ("targets", targets), ("stats", stats)];
    launch::per_item(rec, "distill_loss", op, &args, &p, rows * cols)
}

/// Per-row CE and KL without a gradient (evaluation against a teacher).
/// Only `tau` of `cfg` matters.
pub fn distill_forward(
    rec: &mut Recorder,
    s: &Tensor,
    t: &Tensor,
    targets: &Tensor,
    cfg: &DistillLoss,
) -> Result<LossRows> {
    let op = "distill_forward";
    Ok(with_teacher(rec, op, (s, t, targets), cfg, Gradient::None)?.0)
}

/// Plain cross-entropy for evaluation (perplexity): per-row negative
/// log-likelihood `−log softmax(s_r)[y_r]` (f32 [rows]), 0 on rows without
/// a target. No teacher, no gradient.
pub fn cross_entropy(rec: &mut Recorder, s: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (rows, cols) = check_rows("cross_entropy", s, targets)?;
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        inv_tau: 1.0,
        tau_is_one: 1,
        ce_scale: 0.0,
        kl_scale: 0.0,
        col0: 0,
        vocab: cols as u32,
        row0: 0,
        _pad: [0; 3],
    };
    let nll = Tensor::empty(rec.gpu(), "cross_entropy.nll", &[rows], DType::F32)?;
    launch(
        rec,
        "ce_fwd",
        &[("s", s), ("targets", targets), ("ce", &nll)],
        &p,
    )?;
    Ok(nll)
}

/// Plain references in f64: `s`, `t` are row-major [rows, cols].
pub mod cpu {
    use super::DistillLoss;

    fn log_softmax(x: &[f32], inv_tau: f64) -> Vec<f64> {
        let m = x
            .iter()
            .map(|&v| v as f64 * inv_tau)
            .fold(f64::NEG_INFINITY, f64::max);
        let lz = x
            .iter()
            .map(|&v| (v as f64 * inv_tau - m).exp())
            .sum::<f64>()
            .ln();
        x.iter().map(|&v| v as f64 * inv_tau - m - lz).collect()
    }

    /// Per-row (ce, kl): ce = −log softmax(s)[y] (0 when y >= cols),
    /// kl = Σ p (log p − log q) with p = softmax(t/τ), q = softmax(s/τ).
    pub fn forward(
        s: &[f32],
        t: &[f32],
        targets: &[u32],
        cols: usize,
        tau: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let inv_tau = 1.0 / tau as f64;
        let mut ce = Vec::new();
        let mut kl = Vec::new();
        for (r, &y) in targets.iter().enumerate() {
            let sr = &s[r * cols..(r + 1) * cols];
            let tr = &t[r * cols..(r + 1) * cols];
            let ls = log_softmax(sr, 1.0);
            ce.push(if (y as usize) < cols {
                -ls[y as usize] as f32
            } else {
                0.0
            });
            let lq = log_softmax(sr, inv_tau);
            let lp = log_softmax(tr, inv_tau);
            let k: f64 = lp
                .iter()
                .zip(&lq)
                .map(|(&a, &b)| {
                    if a.exp() > 0.0 {
                        a.exp() * (a - b)
                    } else {
                        0.0
                    }
                })
                .sum();
            kl.push(k as f32);
        }
        (ce, kl)
    }

    /// The scalar loss `w_ce·Σce/n_ce + w_kl·τ²·Σkl/n_kl`, in f64.
    pub fn loss(s: &[f32], t: &[f32], targets: &[u32], cols: usize, cfg: &DistillLoss) -> f64 {
        let (ce, kl) = forward(s, t, targets, cols, cfg.tau);
        let sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
        cfg.total(sum(&ce), sum(&kl))
    }

    /// ∂loss/∂s = (w_ce/n_ce)(softmax(s) − onehot) + (w_kl·τ/n_kl)(q − p).
    pub fn backward(
        s: &[f32],
        t: &[f32],
        targets: &[u32],
        cols: usize,
        cfg: &DistillLoss,
    ) -> Vec<f32> {
        let inv_tau = 1.0 / cfg.tau as f64;
        let per = |w: f32, n: f32| if n > 0.0 { w as f64 / n as f64 } else { 0.0 };
        let cs = per(cfg.w_ce, cfg.n_ce);
        let ks = per(cfg.w_kl, cfg.n_kl) * cfg.tau as f64;
        let mut ds = Vec::with_capacity(s.len());
        for (r, &y) in targets.iter().enumerate() {
            let sr = &s[r * cols..(r + 1) * cols];
            let tr = &t[r * cols..(r + 1) * cols];
            let ls = log_softmax(sr, 1.0);
            let lq = log_softmax(sr, inv_tau);
            let lp = log_softmax(tr, inv_tau);
            for v in 0..cols {
                let ce = if (y as usize) < cols {
                    cs * (ls[v].exp() - if v == y as usize { 1.0 } else { 0.0 })
                } else {
                    0.0
                };
                ds.push((ce + ks * (lq[v].exp() - lp[v].exp())) as f32);
            }
        }
        ds
    }

    /// Per-row NLL of the target (0 without a target).
    pub fn cross_entropy(s: &[f32], targets: &[u32], cols: usize) -> Vec<f32> {
        targets
            .iter()
            .enumerate()
            .map(|(r, &y)| {
                if (y as usize) < cols {
                    -log_softmax(&s[r * cols..(r + 1) * cols], 1.0)[y as usize] as f32
                } else {
                    0.0
                }
            })
            .collect()
    }
}
