//! Masked-LM pseudo-perplexity, the encoder family's score, as the
//! reference's DistilBERT notebook computes it: every text (one line of the
//! data file) is tokenised with `[CLS]` … `[SEP]` and cut at the model's
//! positions; each position that is not `[CLS]`, `[SEP]` or padding is
//! replaced by `[MASK]` in a copy of the text of its own, and scores
//! −log p(original token) there. Over a corpus the NLLs are summed and
//! divided by the scored tokens: pseudo-perplexity = exp(Σ NLL / scored).
//! Texts with nothing to score contribute nothing.
//!
//! The masked copies of one text run as one batch (as many per pass as
//! the adapter's binding limit allows, at most 64 as in the notebook);
//! only the masked rows go through the head.

use super::encoder::Encoder;
use super::exec::Eager;
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::distill_loss;

/// The notebook's rows per pass.
pub const MAX_ROWS: usize = 64;

/// The token ids pseudo-perplexity needs from a WordPiece tokenizer.
#[derive(Clone, Copy, Debug)]
pub struct Special {
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
    pub pad: Option<u32>,
}

impl Special {
    pub fn of(tok: &Tokenizer) -> Result<Special> {
        let need = |t: &str| {
            tok.token_to_id(t).ok_or_else(|| {
                Error::Invalid(format!(
                    "the tokenizer has no '{t}' token; pseudo-perplexity needs a BERT-style \
                     WordPiece tokenizer ([CLS], [SEP], [MASK])"
                ))
            })
        };
        Ok(Special {
            cls: need("[CLS]")?,
            sep: need("[SEP]")?,
            mask: need("[MASK]")?,
            pad: tok.token_to_id("[PAD]"),
        })
    }

    /// Whether position holding `id` is scored.
    pub fn scored(&self, id: u32) -> bool {
        id != self.cls && id != self.sep && Some(id) != self.pad
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PseudoPerplexity {
    pub pseudo_perplexity: f64,
    /// Σ NLL in nats.
    pub nll: f64,
    /// Tokens of all texts, `[CLS]` and `[SEP]` included.
    pub tokens: usize,
    /// Positions scored.
    pub scored: usize,
    /// Texts with at least one scored position.
    pub texts: usize,
}

/// The texts of `data`, one per line, each `[CLS]` + its tokens (cut so
/// that the whole fits `max_len`) + `[SEP]`; lines with no tokens are left
/// out (they would score nothing).
pub fn texts(
    tok: &Tokenizer,
    special: &Special,
    data: &str,
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    if max_len < 3 {
        return Err(Error::Invalid(format!(
            "texts of at most {max_len} tokens leave nothing to score"
        )));
    }
    let mut out = Vec::new();
    for line in data.lines() {
        let mut body = tok.encode(line, false)?;
        if body.is_empty() {
            continue;
        }
        body.truncate(max_len - 2);
        let mut ids = Vec::with_capacity(body.len() + 2);
        ids.push(special.cls);
        ids.extend(body);
        ids.push(special.sep);
        out.push(ids);
    }
    Ok(out)
}

/// Masked copies of a `len`-token text one pass may hold on this adapter:
/// the widest activation (`len` × the MLP's width) and the logits must
/// each fit one binding.
pub fn rows_per_pass(gpu: &Gpu, enc: &Encoder, len: usize) -> usize {
    let limit = gpu.caps.max_tensor_bytes();
    let c = &enc.cfg;
    let widest = (len * c.intermediate_size.max(4 * c.hidden_size) * 4) as u64;
    let logits = (c.vocab_size * 4) as u64;
    let by_binding = (limit / widest.max(1)).min(limit / logits.max(1)) as usize;
    by_binding.clamp(1, MAX_ROWS)
}

/// Σ NLL and the scored count of one text (`[CLS]` … `[SEP]`).
pub fn text_nll(gpu: &Gpu, enc: &Encoder, ids: &[u32], special: &Special) -> Result<(f64, usize)> {
    let t = ids.len();
    if t > enc.cfg.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "a text of {t} tokens; the model has {} positions",
            enc.cfg.max_position_embeddings
        )));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= enc.cfg.vocab_size) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the model's vocabulary of {}",
            enc.cfg.vocab_size
        )));
    }
    let scored: Vec<usize> = (0..t).filter(|&p| special.scored(ids[p])).collect();
    let h = enc.cfg.hidden_size;
    let rows = rows_per_pass(gpu, enc, t);
    let mut nll = 0.0f64;
    for chunk in scored.chunks(rows) {
        let m = chunk.len();
        let mut batch = Vec::with_capacity(m * t);
        for &p in chunk {
            let start = batch.len();
            batch.extend_from_slice(ids);
            batch[start + p] = special.mask;
        }
        let pos: Vec<u32> = (0..m).flat_map(|_| 0..t as u32).collect();
        let targets: Vec<u32> = chunk.iter().map(|&p| ids[p]).collect();
        let ids_t = gpu.upload_u32("mlm.ids", &[m * t], &batch)?;
        let pos_t = gpu.upload_u32("mlm.positions", &[m * t], &pos)?;
        let tg = gpu.upload_u32("mlm.targets", &[m], &targets)?;
        let mut rec = gpu.recorder();
        let mut e = Eager::new(&mut rec);
        let hidden = enc.hidden(&mut e, &ids_t, &pos_t, (m, t), None)?;
        // Only the masked position of each copy goes through the head.
        let x = Tensor::empty(gpu, "mlm.masked", &[m, h], DType::F32)?;
        let row = (h * 4) as u64;
        for (r, &p) in chunk.iter().enumerate() {
            e.rec()
                .copy(&hidden, (r * t + p) as u64 * row, &x, r as u64 * row, row)?;
        }
        let logits = enc.mlm_logits(&mut e, &x)?;
        let per_row = distill_loss::cross_entropy(e.rec(), &logits, &tg)?;
        let bytes = rec.submit_read(&per_row)?;
        let v: &[f32] = bytemuck::cast_slice(&bytes);
        nll += v.iter().map(|&x| x as f64).sum::<f64>();
    }
    Ok((nll, scored.len()))
}

/// Pseudo-perplexity of a corpus of texts; `progress(done, total)` after
/// each text.
pub fn pseudo_perplexity(
    gpu: &Gpu,
    enc: &Encoder,
    texts: &[Vec<u32>],
    special: &Special,
    mut progress: impl FnMut(usize, usize),
) -> Result<PseudoPerplexity> {
    let (mut nll, mut scored, mut tokens, mut used) = (0.0, 0, 0, 0);
    for (i, ids) in texts.iter().enumerate() {
        let (n, s) = text_nll(gpu, enc, ids, special)?;
        nll += n;
        scored += s;
        tokens += ids.len();
        used += (s > 0) as usize;
        progress(i + 1, texts.len());
    }
    if scored == 0 {
        return Err(Error::Invalid(
            "the text has no token to score (every line is empty or special tokens only)".into(),
        ));
    }
    Ok(PseudoPerplexity {
        pseudo_perplexity: (nll / scored as f64).exp(),
        nll,
        tokens,
        scored,
        texts: used,
    })
}
