//! Scoring text: perplexity with `boomgpu eval`'s exact semantics, so that
//! numbers compare with other tools. The text is tokenised without special
//! tokens and cut into consecutive non-overlapping windows of `seq_len`
//! tokens (the last may be shorter; a window needs at least 2 tokens); each
//! window is scored on its own and every token but a window's first is
//! predicted. Perplexity = exp(total NLL / predicted tokens).

use super::decoder::{Batch, Decoder};
use super::head;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::ops::distill_loss;

#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Total negative log-likelihood in nats.
    pub nll: f64,
    /// Tokens in the text.
    pub tokens: usize,
    /// Tokens predicted (scored).
    pub predicted: usize,
}

/// The window `eval` scores in when not told (and `--order auto`
/// calibrates in): at most 2,048 tokens, within the model's positions.
pub fn default_window(max_positions: usize) -> usize {
    max_positions.min(2048)
}

/// The windows of `ids` that are scored.
pub fn windows(ids: &[u32], seq_len: usize) -> Vec<&[u32]> {
    ids.chunks(seq_len.max(2))
        .filter(|w| w.len() >= 2)
        .collect()
}

/// The forward pass over one window (positions from 0), recorded.
fn forward_window(
    gpu: &Gpu,
    rec: &mut crate::gpu::Recorder,
    model: &Decoder,
    window: &[u32],
) -> Result<super::decoder::ForwardOut> {
    let t = window.len();
    let ids = gpu.upload_u32("eval.ids", &[t], window)?;
    let pos: Vec<u32> = (0..t as u32).collect();
    let positions = gpu.upload_u32("eval.positions", &[t], &pos)?;
    let batch = Batch {
        ids: &ids,
        positions: &positions,
        batch: 1,
        seq: t,
        mask: None,
    };
    model.forward(rec, &batch, false, false)
}

/// Summed NLL of one window's next-token predictions (f64 on the host).
pub fn window_nll(gpu: &Gpu, model: &Decoder, window: &[u32]) -> Result<f64> {
    // Row i predicts token i+1; the last row predicts nothing.
    let mut tgt: Vec<u32> = window[1..].to_vec();
    tgt.push(distill_loss::NO_TARGET);
    let mut rec = gpu.recorder();
    let out = forward_window(gpu, &mut rec, model, window)?;
    // Logits in chunks of tokens: bounded memory at any window length.
    let nll = head::nll(&mut rec, model, &out.normed, &tgt)?;
    drop(out);
    rec.run()?;
    let v = gpu.read_f32(&nll)?;
    debug_assert_eq!(nll.dtype(), DType::F32);
    Ok(v.iter().map(|&x| x as f64).sum())
}

/// The log-probability of one token given the ones before it, and the
/// most likely tokens at that position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenScore {
    pub logprob: f64,
    /// The `top` most likely ids and their log-probabilities, best first.
    pub top: Vec<(u32, f64)>,
}

/// Log-probabilities of tokens `1..` of `window` (each given those before
/// it) in one forward pass, with the `top` most likely tokens at each
/// position: what `/v1/completions` returns with `echo` and `logprobs`.
/// The sum of the log-probabilities is minus [`window_nll`]. Logits are
/// read a chunk of rows at a time and normalised on the host in f64.
pub fn token_logprobs(
    gpu: &Gpu,
    model: &Decoder,
    window: &[u32],
    top: usize,
) -> Result<Vec<TokenScore>> {
    let t = window.len();
    if t < 2 {
        return Ok(Vec::new());
    }
    let mut rec = gpu.recorder();
    let out = forward_window(gpu, &mut rec, model, window)?;
    rec.run()?;
    let vocab = model.head.rows();
    let rows = head::chunk_rows(gpu, vocab)?.max(1);
    let mut scores = Vec::with_capacity(t - 1);
    // Row i predicts token i + 1; the last row predicts nothing.
    for r0 in (0..t - 1).step_by(rows) {
        let n = rows.min(t - 1 - r0);
        let mut rec = gpu.recorder();
        let x = head::rows_of(&mut rec, &out.normed, r0, n)?;
        let logits = head::chunk_logits(&mut rec, model, &x)?;
        rec.run()?;
        let v = gpu.read_f32(&logits)?;
        for (i, row) in v.chunks(vocab).enumerate() {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let target = window[r0 + i + 1] as usize;
            let logprob = row
                .get(target)
                .map_or(f64::NEG_INFINITY, |&x| x as f64 - lse);
            if !logprob.is_finite() {
                return Err(Error::Invalid(format!(
                    "token {}: its log-probability is {logprob}, not a finite number; the \
                     model's weights or config.json produce overflowing values",
                    r0 + i + 1
                )));
            }
            let mut best: Vec<(u32, f64)> = Vec::with_capacity(top + 1);
            if top > 0 {
                for (id, &x) in row.iter().enumerate() {
                    let lp = x as f64 - lse;
                    if best.len() < top || lp > best[best.len() - 1].1 {
                        let at = best.partition_point(|b| b.1 >= lp);
                        best.insert(at, (id as u32, lp));
                        best.truncate(top);
                    }
                }
            }
            scores.push(TokenScore { logprob, top: best });
        }
    }
    Ok(scores)
}

/// Perplexity of `ids` under `model`; `progress` is called after each
/// window with (windows done, windows in all).
pub fn perplexity(
    gpu: &Gpu,
    model: &Decoder,
    ids: &[u32],
    seq_len: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    if seq_len < 2 {
        return Err(Error::Invalid(format!(
            "--seq-len must be at least 2, got {seq_len}"
        )));
    }
    let ws = windows(ids, seq_len);
    if ws.is_empty() {
        return Err(Error::Invalid(format!(
            "the text has {} token(s); perplexity needs at least 2",
            ids.len()
        )));
    }
    let mut nll = 0.0;
    let mut predicted = 0;
    let mut first_token = 0;
    for (i, w) in ws.iter().enumerate() {
        let w_nll = window_nll(gpu, model, w)?;
        if !w_nll.is_finite() {
            return Err(Error::Invalid(format!(
                "window {} of {} (tokens {first_token}..{}): the negative log-likelihood is {w_nll}, \
                 not a finite number; the model's weights or config.json produce overflowing \
                 values (NaN or infinity), so no perplexity is reported",
                i + 1,
                ws.len(),
                first_token + w.len()
            )));
        }
        first_token += w.len();
        nll += w_nll;
        predicted += w.len() - 1;
        progress(i + 1, ws.len());
    }
    let perplexity = (nll / predicted as f64).exp();
    if !perplexity.is_finite() {
        return Err(Error::Invalid(format!(
            "the mean negative log-likelihood {} nats is too large for a finite perplexity \
             (exp overflows); the model's weights or config.json are broken",
            nll / predicted as f64
        )));
    }
    Ok(Perplexity {
        perplexity,
        nll,
        tokens: ids.len(),
        predicted,
    })
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn windows_follow_the_rules() {
        let ids: Vec<u32> = (0..10).collect();
        let w = windows(&ids, 4);
        assert_eq!(w.len(), 3);
        assert_eq!(w[2], &[8, 9]);
        // A last window of one token predicts nothing and is dropped.
        let ids: Vec<u32> = (0..9).collect();
        assert_eq!(windows(&ids, 4).len(), 2);
    }
}
