//! The distillation loss at the LM head, chunk by chunk of token rows
//! (`model::head`): per chunk, the student's and the teacher's logits (one
//! matmul per block of each head's vocabulary rows), the fused CE + KL
//! kernel writing its gradient over the student logits, and that
//! gradient's two products: into the student's final normed states
//! (`d_normed`, seeded into the tape) and into each head block's gradient
//! buffer. Logit memory is two chunks at any sequence length.

use super::student::StudentParams;
use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::model::decoder::Decoder;
use crate::model::exec::ParamGrads;
use crate::model::head::{chunk_logits, chunk_rows, rows_of};
use crate::ops::distill_loss::{self, DistillLoss, LossRows};
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
/// added into `params`' buffers).
pub fn distill_head(
    rec: &mut Recorder,
    x: &HeadInputs,
    cfg: &DistillLoss,
    params: Option<&StudentParams>,
) -> Result<(LossRows, Option<Tensor>)> {
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
            Some(_) => distill_loss::distill_loss_inplace(rec, &s, &t, &tg, cfg)?,
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
            for (start, w) in student.head.iter() {
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
    Ok((LossRows { ce, kl }, d_normed))
}
