//! The LM head over many tokens, in chunks of token rows: logits are
//! computed for at most `chunk_rows` tokens at a time (one matmul per
//! block of the head's vocabulary rows, each writing its columns of the
//! chunk), consumed, and dropped before the next chunk. So logit memory is
//! bounded by `LOGITS_CHUNK_BYTES` (and the binding limit) at any sequence
//! length and vocabulary, and a vocabulary of any size works on any
//! adapter as long as one token's logits fit one binding.

use super::decoder::Decoder;
use crate::error::{Error, Result};
use crate::gpu::{format_bytes, DType, Gpu, Recorder, Tensor};
use crate::ops::distill_loss;
use crate::ops::matmul::{matmul_row_blocks, Region};

/// The most bytes of f32 logits one chunk holds (each of the student's and
/// the teacher's in distillation).
pub const LOGITS_CHUNK_BYTES: u64 = 64 << 20;

/// Token rows per logits chunk for a vocabulary of `vocab`: as many as
/// `LOGITS_CHUNK_BYTES` and one binding allow. Refused when one token's
/// logits are over the binding limit.
pub fn chunk_rows(gpu: &Gpu, vocab: usize) -> Result<usize> {
    let row = vocab as u64 * 4;
    let limit = gpu.caps.max_tensor_bytes();
    if row > limit {
        return Err(Error::OverLimit {
            tensor: "logits (one token's row)".into(),
            requested: row,
            limit,
            what: "largest buffer one shader may bind on this adapter",
            hint: "One token's logits over the whole vocabulary must fit one binding; use an \
                   adapter with a larger binding limit.",
        });
    }
    Ok(rows_per_chunk(limit, vocab))
}

/// Token rows per logits chunk under a binding limit of `limit` bytes (at
/// least 1; [`chunk_rows`] refuses a row over the limit).
pub fn rows_per_chunk(limit: u64, vocab: usize) -> usize {
    (LOGITS_CHUNK_BYTES.min(limit) / (vocab as u64 * 4).max(1)).max(1) as usize
}

/// The bytes the distillation loss at the head holds at once for `tokens`
/// tokens of a `hidden`-wide model under a binding limit of `limit`: the
/// student's and the teacher's logits chunks, the chunk's rows of both
/// normed states, the per-token CE and KL, and the gradient into the
/// student's normed states.
pub fn distill_workspace_bytes(limit: u64, vocab: usize, hidden: usize, tokens: usize) -> u64 {
    let c = rows_per_chunk(limit, vocab).min(tokens.max(1)) as u64;
    let (v, h, t) = (vocab as u64, hidden as u64, tokens as u64);
    2 * c * v * 4 + 2 * c * h * 4 + 2 * t * 4 + t * h * 4
}

/// Rows `r0..r0 + n` of a `[rows, hidden]` f32 tensor as a tensor of its
/// own (the tensor itself when that is all of it).
pub fn rows_of(rec: &mut Recorder, x: &Tensor, r0: usize, n: usize) -> Result<Tensor> {
    let hidden = x.dim(-1);
    let total = x.numel() / hidden.max(1);
    if r0 == 0 && n == total {
        return x.reshape(&[n, hidden]);
    }
    let part = Tensor::empty(rec.gpu(), "head.rows", &[n, hidden], DType::F32)?;
    let bytes = (hidden * 4) as u64;
    rec.copy(x, r0 as u64 * bytes, &part, 0, n as u64 * bytes)?;
    Ok(part)
}

/// Logits of one chunk of rows of final-normed states `x` ([n, hidden]).
pub fn chunk_logits(rec: &mut Recorder, model: &Decoder, x: &Tensor) -> Result<Tensor> {
    let n = x.numel() / x.dim(-1).max(1);
    let out = Tensor::empty(
        rec.gpu(),
        "head.logits",
        &[n, model.head.rows()],
        DType::F32,
    )?;
    let (xr, or) = (Region::whole(x), Region::whole(&out));
    matmul_row_blocks(rec, (x, xr), model.head.iter(), (&out, or))?;
    Ok(out)
}

/// Per-token negative log-likelihood (f32 `[tokens]`, 0 where the target
/// is `NO_TARGET`) of final-normed states, chunk by chunk; the chunks'
/// rows are gathered into one tensor, so the host reads it once.
pub fn nll(
    rec: &mut Recorder,
    model: &Decoder,
    normed: &Tensor,
    targets: &[u32],
) -> Result<Tensor> {
    let gpu = rec.gpu();
    let n = targets.len();
    if normed.numel() != n * model.cfg.hidden_size {
        return Err(Error::Shape(format!(
            "head: {n} targets for normed states {normed:?}"
        )));
    }
    let c = chunk_rows(gpu, model.head.rows())?;
    let all = Tensor::empty(gpu, "head.nll", &[n], DType::F32)?;
    for r0 in (0..n).step_by(c.max(1)) {
        let m = c.min(n - r0);
        let x = rows_of(rec, normed, r0, m)?;
        let logits = chunk_logits(rec, model, &x)?;
        let tg = rec
            .gpu()
            .upload_u32("head.targets", &[m], &targets[r0..r0 + m])?;
        let part = distill_loss::cross_entropy(rec, &logits, &tg)?;
        rec.copy(&part, 0, &all, r0 as u64 * 4, m as u64 * 4)?;
    }
    Ok(all)
}

/// A line for plans and logs: the logits workspace at `tokens` tokens
/// when `live` chunks exist at once (2 in distillation: the student's and
/// the teacher's).
pub fn describe_workspace(gpu: &Gpu, vocab: usize, tokens: usize, live: usize) -> Result<String> {
    let c = chunk_rows(gpu, vocab)?.min(tokens.max(1));
    let one = c as u64 * vocab as u64 * 4;
    let whole = tokens as u64 * vocab as u64 * 4;
    Ok(format!(
        "logits in chunks of {c} token(s) × {vocab}: {} per chunk, {} live at once ({} for all {tokens} tokens unchunked)",
        format_bytes(one),
        format_bytes(one * live as u64),
        format_bytes(whole * live as u64),
    ))
}

/// All logits of final-normed states `normed` (`[tokens, hidden]`) read to
/// the host, row-major `[tokens, vocab]`: computed and read chunk by chunk,
/// so no GPU tensor holds more than one chunk at any vocabulary.
pub fn read_logits(gpu: &Gpu, model: &Decoder, normed: &Tensor) -> Result<Vec<f32>> {
    let hidden = model.cfg.hidden_size;
    let n = normed.numel() / hidden.max(1);
    let c = chunk_rows(gpu, model.head.rows())?;
    let mut all = Vec::with_capacity(n * model.head.rows());
    for r0 in (0..n).step_by(c.max(1)) {
        let mut rec = gpu.recorder();
        let x = rows_of(&mut rec, normed, r0, c.min(n - r0))?;
        let logits = chunk_logits(&mut rec, model, &x)?;
        rec.run()?;
        all.extend(gpu.read_f32(&logits)?);
    }
    Ok(all)
}
