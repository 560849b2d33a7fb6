//! The distillation loss at the LM head, chunk by chunk of token rows
//! (`model::head`): per chunk, the student's and the teacher's logits (one
//! matmul per block of each head's vocabulary rows), the fused CE + KL
//! kernel writing its gradient over the student logits, and that
//! gradient's two products: into the student's final normed states
//! (`d_normed`, seeded into the tape) and into each head block's gradient
//! buffer. Logit memory is two chunks at any sequence length.
//!
//! Lean mode never holds the head's whole gradient: the chunk loop keeps
//! each row's softmax statistics instead of adding into the head, and a
//! second pass finishes the gradient one block of vocabulary rows at a
//! time (the block's student and teacher logits recomputed for every
//! token, `distill_grad_cols`, one product into the block's slot), each
//! block handed to the host before the next. It costs two more head
//! products per micro-batch and saves the head's f32 gradient (2.3 GiB
//! for Qwen3-8B).

use super::loss::GradSink;
use super::student::StudentParams;
use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::model::decoder::Decoder;
use crate::model::exec::ParamGrads;
use crate::model::head::{chunk_logits, chunk_rows, rows_of, rows_per_chunk};
use crate::ops::distill_loss::{self, ColBlock, DistillLoss, LossRows, ROW_STATS};
use crate::ops::matmul::{matmul_region, matmul_row_blocks_dx, Gemm, Region};

/// The student and teacher sides of a step, from their final normed states.
pub struct HeadInputs<'a> {
    pub student: &'a Decoder,
    pub s_normed: &'a Tensor,
    pub teacher: &'a Decoder,
    pub t_normed: &'a Tensor,
    /// Next-token target per row (`NO_TARGET` where none).
    pub targets: &'a [u32],
}

/// Per-row CE and KL (f32 `[rows]`), and with `params` the gradient of the
/// loss w.r.t. the student's normed states (the head blocks' gradients are
/// added into `params`' buffers; in lean mode each block's is handed to
/// `sink` when complete).
pub fn distill_head(
    rec: &mut Recorder,
    x: &HeadInputs,
    cfg: &DistillLoss,
    params: Option<&StudentParams>,
    sink: Option<&mut dyn GradSink>,
) -> Result<(LossRows, Option<Tensor>)> {
    let lean = params.is_some_and(|p| p.is_lean());
    if lean && sink.is_none() {
        return Err(Error::Invalid(
            "lean mode's head gradient needs somewhere to go (a gradient sink)".into(),
        ));
    }
    let (student, teacher) = (x.student, x.teacher);
    let vocab = student.head.rows();
    if teacher.head.rows() != vocab {
        return Err(Error::Invalid(format!(
            "the student's vocabulary ({vocab}) differs from the teacher's ({})",
            teacher.head.rows()
        )));
    }
    let n = x.targets.len();
    let hidden = student.cfg.hidden_size;
    if x.s_normed.numel() != n * hidden || x.t_normed.numel() != n * teacher.cfg.hidden_size {
        return Err(Error::Shape(format!(
            "distill head: {n} targets for states {:?} and {:?}",
            x.s_normed, x.t_normed
        )));
    }
    let gpu = rec.gpu();
    let c = chunk_rows(gpu, vocab)?;
    let whole = c >= n;
    let ce = Tensor::empty(gpu, "head.ce", &[n], DType::F32)?;
    let kl = Tensor::empty(gpu, "head.kl", &[n], DType::F32)?;
    let d_normed = match params {
        Some(_) => Some(Tensor::empty(
            gpu,
            "head.d_normed",
            &[n, hidden],
            DType::F32,
        )?),
        None => None,
    };
    // Lean mode: every row's softmax statistics, for the second pass.
    let stats = match lean {
        true => Some(Tensor::empty(
            gpu,
            "head.stats",
            &[n, ROW_STATS],
            DType::F32,
        )?),
        false => None,
    };
    for r0 in (0..n).step_by(c.max(1)) {
        let m = c.min(n - r0);
        let xs = rows_of(rec, x.s_normed, r0, m)?;
        let xt = rows_of(rec, x.t_normed, r0, m)?;
        let s = chunk_logits(rec, student, &xs)?;
        let t = chunk_logits(rec, teacher, &xt)?;
        drop(xt);
        let tg = rec
            .gpu()
            .upload_u32("head.targets", &[m], &x.targets[r0..r0 + m])?;
        let rows = match params {
            // The gradient overwrites the student logits.
            Some(_) => {
                let (rows, st) = distill_loss::distill_loss_inplace(rec, &s, &t, &tg, cfg)?;
                if let Some(all) = &stats {
                    let row = (ROW_STATS * 4) as u64;
                    rec.copy(&st, 0, all, r0 as u64 * row, m as u64 * row)?;
                }
                rows
            }
            None => distill_loss::distill_forward(rec, &s, &t, &tg, cfg)?,
        };
        drop(t);
        rec.copy(&rows.ce, 0, &ce, r0 as u64 * 4, m as u64 * 4)?;
        rec.copy(&rows.kl, 0, &kl, r0 as u64 * 4, m as u64 * 4)?;
        if let (Some(params), Some(dn)) = (params, &d_normed) {
            let ds = Region::whole(&s);
            // d_normed[rows] = Σ ds[:, block] · W_block
            let out = Region::whole(dn).rows(r0, m);
            matmul_row_blocks_dx(rec, (&s, ds), student.head.iter(), (dn, out))?;
            for (start, w) in student.head.iter().filter(|_| !lean) {
                // dW_block += ds[:, block]ᵀ · normed[rows]
                if let Some(gw) = params.grad_of(w) {
                    let cols = ds.cols(start, w.dim(0));
                    let g = Gemm::new(true, false).accumulate();
                    matmul_region(rec, (&s, cols), &xs, (gw, Region::whole(gw)), g)?;
                }
            }
        }
        if !whole {
            // Let this chunk's logits return to the pool for the next.
            rec.flush()?;
        }
    }
    if let (Some(params), Some(stats), Some(sink)) = (params, &stats, sink) {
        head_blocks_lean(rec, x, cfg, params, stats, sink)?;
    }
    Ok((LossRows { ce, kl }, d_normed))
}

/// Lean mode's second pass: the head's gradient one block of vocabulary
/// rows at a time, from every row's statistics, each block's handed to
/// `sink` once complete.
fn head_blocks_lean(
    rec: &mut Recorder,
    x: &HeadInputs,
    cfg: &DistillLoss,
    params: &StudentParams,
    stats: &Tensor,
    sink: &mut dyn GradSink,
) -> Result<()> {
    let (student, teacher) = (x.student, x.teacher);
    let gpu = rec.gpu();
    let n = x.targets.len();
    let vocab = student.head.rows();
    let targets = gpu.upload_u32("head.targets", &[n], x.targets)?;
    let limit = gpu.caps.max_tensor_bytes();
    for (start, w) in student.head.iter() {
        let rows = w.dim(0);
        let param = params.param_of(w).ok_or_else(|| {
            Error::Invalid(format!(
                "head block at row {start} is not a student parameter"
            ))
        })?;
        let slot = &params.params[param].grad;
        let tw = head_rows(rec, teacher, start, rows)?;
        // Token rows per pass: the block's logits of both models bounded
        // like a logits chunk.
        let per = rows_per_chunk(limit, rows);
        for r0 in (0..n).step_by(per) {
            let m = per.min(n - r0);
            let xs = rows_of(rec, x.s_normed, r0, m)?;
            let xt = rows_of(rec, x.t_normed, r0, m)?;
            let s = Tensor::empty(gpu, "head.block_logits", &[m, rows], DType::F32)?;
            let t = Tensor::empty(gpu, "head.block_logits", &[m, rows], DType::F32)?;
            let nt = Gemm::new(false, true);
            matmul_region(
                rec,
                (&xs, Region::whole(&xs)),
                w,
                (&s, Region::whole(&s)),
                nt,
            )?;
            matmul_region(
                rec,
                (&xt, Region::whole(&xt)),
                &tw,
                (&t, Region::whole(&t)),
                nt,
            )?;
            let at = ColBlock {
                row0: r0,
                col0: start,
                vocab,
            };
            distill_loss::distill_grad_cols(rec, (&s, &t), (stats, &targets), at, cfg)?;
            drop(t);
            // The block's gradient: the first rows overwrite the slot.
            let g = Gemm {
                beta: if r0 == 0 { 0.0 } else { 1.0 },
                ..Gemm::new(true, false)
            };
            matmul_region(
                rec,
                (&s, Region::whole(&s)),
                &xs,
                (slot, Region::whole(slot)),
                g,
            )?;
            rec.flush()?;
        }
        sink.param_done(rec, param)?;
    }
    Ok(())
}

/// Rows `start..start + n` of a model's head as one tensor: the block
/// itself when one block is exactly those rows, else a copy gathered from
/// the blocks that hold them (the teacher's head may be cut into other
/// blocks than the student's).
fn head_rows(rec: &mut Recorder, model: &Decoder, start: usize, n: usize) -> Result<Tensor> {
    if let Some((_, b)) = model
        .head
        .iter()
        .find(|(s, b)| *s == start && b.dim(0) == n)
    {
        return Ok(b.clone());
    }
    let (dtype, cols) = (model.head.dtype(), model.head.cols());
    let row = (cols * dtype.size()) as u64;
    if dtype == DType::Q8 || !row.is_multiple_of(4) {
        return Err(Error::Invalid(format!(
            "the teacher's head ({}) cannot be cut at row {start}: its rows are not whole words",
            model.head.describe()
        )));
    }
    let out = Tensor::empty(rec.gpu(), "head.teacher_rows", &[n, cols], dtype)?;
    for (s0, b) in model.head.iter() {
        let (lo, hi) = (start.max(s0), (start + n).min(s0 + b.dim(0)));
        if lo < hi {
            let (src, dst) = ((lo - s0) as u64 * row, (lo - start) as u64 * row);
            rec.copy(b, src, &out, dst, (hi - lo) as u64 * row)?;
        }
    }
    Ok(out)
}
