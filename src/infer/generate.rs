//! The generation loop: prefill the prompt in one batched pass (re-using
//! the cached rows of a shared prefix), then one token per step, each step
//! one submission whose only readback is the chosen id. Text is streamed to
//! a callback as it is produced, decoded incrementally so that multi-byte
//! characters split over tokens come out whole; generation stops at an EOS
//! id, a stop string (not printed), the token limit, a full context, or an
//! interrupt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::kv::KvCache;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Tensor};
use crate::model::decoder::Decoder;
use crate::model::tokenizer::Tokenizer;
use crate::ops::sample::{self, SampleParams};

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenOptions {
    pub max_tokens: usize,
    pub sampling: SampleParams,
    /// Strings that end the answer (they are not part of it).
    pub stop: Vec<String>,
    /// Ids that end the answer (not part of it either).
    pub eos_ids: Vec<u32>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_tokens: 256,
            sampling: SampleParams::greedy(),
            stop: Vec::new(),
            eos_ids: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    /// The next token would not fit the context.
    ContextFull,
    Interrupted,
}

#[derive(Clone, Debug, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already cached.
    pub reused_tokens: usize,
    pub new_tokens: usize,
    /// Wall time of the prompt pass up to the first token id.
    pub prefill_secs: f64,
    /// Wall time of the remaining steps.
    pub decode_secs: f64,
    /// GPU steps after the prompt pass.
    pub decode_steps: usize,
    /// The GPU's counters when the first of them was recorded: what the
    /// decode steps asked of the GPU is `gpu.counters().since(…)` once
    /// the generation is done.
    pub counters_at_decode: Option<crate::gpu::Counters>,
}

impl GenStats {
    /// Prompt tokens computed per second.
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        (self.prompt_tokens - self.reused_tokens) as f64 / self.prefill_secs.max(1e-9)
    }
    /// Tokens per second of the decode steps (after the first token).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.new_tokens.saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

pub struct Generation {
    /// Every generated id (an EOS that stopped generation excluded).
    pub ids: Vec<u32>,
    /// The streamed text (stop string excluded).
    pub text: String,
    pub stop: StopReason,
    pub stats: GenStats,
}

/// The host random generator (SplitMix64): one 32-bit uniform per sampled
/// token, passed to the GPU sampler, so `--seed` reproduces a run.
#[derive(Clone, Debug)]
pub struct HostRng(u64);

impl HostRng {
    pub fn new(seed: u64) -> Self {
        HostRng(seed)
    }
    /// A seed from the clock (no --seed).
    pub fn from_time() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        HostRng(t ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
}

/// Incremental detokenisation with stop strings: text is released once it
/// decodes to whole characters and cannot be the start of a stop string.
pub struct TextStream<'t> {
    tok: &'t Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    text: String,
    emitted: usize,
    stops: Vec<String>,
}

impl<'t> TextStream<'t> {
    pub fn new(tok: &'t Tokenizer, stops: &[String]) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            emitted: 0,
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Add one id; returns the text that may be shown now and whether a
    /// stop string ended the answer.
    pub fn push(&mut self, id: u32) -> Result<(String, bool)> {
        self.ids.push(id);
        let before = self
            .tok
            .decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let now = self.tok.decode(&self.ids[self.prefix_offset..], true)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            self.text.push_str(&now[before.len()..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        } else if !now.starts_with(&before) && !now.ends_with('\u{FFFD}') {
            // A decoder that rewrote earlier text (rare): take the new tail.
            let common = before
                .char_indices()
                .zip(now.chars())
                .find(|((_, a), b)| a != b)
                .map_or(before.len().min(now.len()), |((i, _), _)| i);
            self.text.push_str(&now[common..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        Ok(self.release())
    }

    fn release(&mut self) -> (String, bool) {
        let hit = {
            let pending = &self.text[self.emitted..];
            self.stops
                .iter()
                .filter_map(|s| pending.find(s.as_str()))
                .min()
        };
        if let Some(at) = hit {
            let cut = self.emitted + at;
            let out = self.text[self.emitted..cut].to_string();
            self.text.truncate(cut);
            self.emitted = cut;
            return (out, true);
        }
        let pending = &self.text[self.emitted..];
        // Hold back the longest tail that could begin a stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in pending.char_indices() {
                let tail = &pending[i..];
                if tail.len() < s.len() && s.starts_with(tail) {
                    hold = hold.max(tail.len());
                    break;
                }
            }
        }
        let upto = self.text.len() - hold;
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        (out, false)
    }

    /// The text held back so far (at the end of generation).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// Everything released.
    pub fn text(&self) -> &str {
        &self.text[..self.emitted]
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One step: run `ids` through the model against the cache and choose the
/// next token on the GPU; returns its id (the only readback), or
/// [`sample::NOT_FINITE`] when the row of logits holds a NaN or an infinity
/// (checked on the GPU, see [`sample::guard_finite`]).
pub fn step(
    gpu: &Gpu,
    model: &Decoder,
    cache: &mut KvCache,
    ids: &[u32],
    params: &SampleParams,
    seen: &[u32],
    u: u32,
) -> Result<u32> {
    let mut rec = gpu.recorder();
    let tok = record_step(&mut rec, model, cache, ids, params, seen, u)?;
    read_id(rec, &tok)
}

/// Submit `rec` and read the chosen id in `tok`: one submission, 4 bytes.
fn read_id(rec: Recorder, tok: &Tensor) -> Result<u32> {
    let bytes = rec.submit_read(tok)?;
    Ok(bytemuck::pod_read_unaligned(&bytes[..4]))
}

/// `step` recorded into `rec` without submitting: the u32 tensor the
/// chosen id will be in once `rec` has run (several sequences' steps can
/// share one submission).
pub fn record_step(
    rec: &mut Recorder,
    model: &Decoder,
    cache: &mut KvCache,
    ids: &[u32],
    params: &SampleParams,
    seen: &[u32],
    u: u32,
) -> Result<Tensor> {
    let logits = model.forward_cached(rec, ids, cache, false)?;
    let vocab = logits.numel();
    let seen_t = if params.has_penalty() && !seen.is_empty() {
        Some(rec.gpu().upload_u32("sample.seen", &[seen.len()], seen)?)
    } else {
        None
    };
    let tok = sample::sample(rec, &logits.reshape(&[vocab])?, params, seen_t.as_ref(), u)?;
    sample::guard_finite(rec, &logits.reshape(&[vocab])?, &tok)?;
    Ok(tok)
}

/// The error for a step whose logits are not finite: generation stops
/// there and emits nothing for it. Step 1 is the prompt pass.
fn not_finite(step: usize, prompt_tokens: usize) -> Error {
    let what = if step == 1 {
        format!("the prompt pass over {prompt_tokens} token(s)")
    } else {
        format!("token {step} of the answer")
    };
    Error::Invalid(format!(
        "generation step {step} ({what}): the logits hold NaN or infinity, not a finite \
         number; the model's weights or config.json produce overflowing values, so \
         generation stopped without emitting a token for this step"
    ))
}

/// A generation in progress, advanced one GPU step at a time: `generate`
/// runs one to the end, the server interleaves many. Rows of the cache that
/// hold a prefix of the prompt are re-used; the rest are replaced.
pub struct Decoding<'t> {
    opts: GenOptions,
    prompt: Vec<u32>,
    reuse: usize,
    seen: Vec<u32>,
    seen_set: std::collections::HashSet<u32>,
    stream: Option<TextStream<'t>>,
    ids: Vec<u32>,
    /// The id chosen by the last step, not yet taken into the answer.
    next: Option<u32>,
    stop: Option<StopReason>,
    stats: GenStats,
    /// When the prompt pass was recorded (until its id is accepted).
    t_prefill: Option<Instant>,
    t_decode: Option<Instant>,
}

impl<'t> Decoding<'t> {
    /// Check the request and set the cache up for `prompt`; no GPU work.
    pub fn new(
        cache: &mut KvCache,
        prompt: &[u32],
        opts: &GenOptions,
        tok: Option<&'t Tokenizer>,
    ) -> Result<Decoding<'t>> {
        if prompt.is_empty() {
            return Err(Error::Invalid(
                "the prompt is empty (no tokens to continue)".into(),
            ));
        }
        if prompt.len() > cache.max_ctx() {
            return Err(cache.too_long(prompt.len()));
        }
        opts.sampling.validate()?;
        let reuse = common_prefix(cache.tokens(), prompt).min(prompt.len() - 1);
        cache.truncate(reuse);
        let mut seen: Vec<u32> = Vec::new();
        let mut seen_set = std::collections::HashSet::new();
        if opts.sampling.has_penalty() {
            for &t in prompt {
                if seen_set.insert(t) {
                    seen.push(t);
                }
            }
        }
        Ok(Decoding {
            opts: opts.clone(),
            prompt: prompt.to_vec(),
            reuse,
            seen,
            seen_set,
            stream: tok.map(|t| TextStream::new(t, &opts.stop)),
            ids: Vec::new(),
            next: None,
            stop: (opts.max_tokens == 0).then_some(StopReason::MaxTokens),
            stats: GenStats {
                prompt_tokens: prompt.len(),
                reused_tokens: reuse,
                ..Default::default()
            },
            t_prefill: None,
            t_decode: None,
        })
    }

    /// Why generation ended, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.stop
    }

    /// The ids generated so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Run one GPU step: the prompt pass first, then one token at a time.
    /// The text of each token taken goes to `on_text`. Returns why it
    /// stopped once it has (then nothing more is run); `interrupt` is
    /// looked at before each decode step.
    pub fn advance(
        &mut self,
        gpu: &Gpu,
        model: &Decoder,
        cache: &mut KvCache,
        rng: &mut HostRng,
        interrupt: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Option<StopReason>> {
        let Some(ids) = self.next_input(cache, interrupt, on_text)? else {
            return Ok(self.stop);
        };
        let mut rec = gpu.recorder();
        let tok = self.record(&mut rec, model, cache, &ids, rng)?;
        self.accept(read_id(rec, &tok)?)?;
        Ok(None)
    }

    /// Whether the next step is the prompt pass.
    pub fn at_prompt(&self) -> bool {
        self.next.is_none() && self.stop.is_none() && self.t_decode.is_none()
    }

    /// Host work before a step: the last chosen id taken into the answer
    /// (its text to `on_text`), then the ids the next step feeds, or None
    /// once the generation has stopped (`stopped` says why).
    pub fn next_input(
        &mut self,
        cache: &KvCache,
        interrupt: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Option<Vec<u32>>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        let Some(next) = self.next.take() else {
            return Ok(Some(self.prompt[self.reuse..].to_vec()));
        };
        let stop = self.take(next, cache, interrupt, on_text)?;
        if stop.is_some() {
            self.stop = stop;
            return Ok(None);
        }
        Ok(Some(vec![next]))
    }

    /// Record the step that feeds `ids` (from `next_input`) into `rec`;
    /// the u32 tensor its chosen id will be in. `accept` it once `rec` ran.
    pub fn record(
        &mut self,
        rec: &mut Recorder,
        model: &Decoder,
        cache: &mut KvCache,
        ids: &[u32],
        rng: &mut HostRng,
    ) -> Result<Tensor> {
        if self.t_decode.is_none() {
            self.t_prefill = Some(Instant::now());
        } else {
            if self.stats.decode_steps == 0 {
                self.stats.counters_at_decode = Some(rec.gpu().counters());
            }
            self.stats.decode_steps += 1;
        }
        let (params, seen) = (&self.opts.sampling, &self.seen);
        record_step(rec, model, cache, ids, params, seen, rng.next_u32())
    }

    /// The id a recorded step chose (read back after it ran).
    pub fn accept(&mut self, next: u32) -> Result<()> {
        if let Some(t0) = self.t_prefill.take() {
            if next == sample::NOT_FINITE {
                return Err(not_finite(1, self.prompt.len() - self.reuse));
            }
            self.stats.prefill_secs = t0.elapsed().as_secs_f64();
            self.t_decode = Some(Instant::now());
        } else if next == sample::NOT_FINITE {
            return Err(not_finite(
                self.ids.len() + 1,
                self.prompt.len() - self.reuse,
            ));
        }
        self.next = Some(next);
        Ok(())
    }

    /// Take the chosen id into the answer; `Some` when the answer ends.
    fn take(
        &mut self,
        next: u32,
        cache: &KvCache,
        interrupt: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Option<StopReason>> {
        if self.opts.eos_ids.contains(&next) {
            return Ok(Some(StopReason::Eos));
        }
        self.ids.push(next);
        if self.opts.sampling.has_penalty() && self.seen_set.insert(next) {
            self.seen.push(next);
        }
        if let Some(s) = self.stream.as_mut() {
            let (piece, hit) = s.push(next)?;
            if !piece.is_empty() {
                on_text(&piece);
            }
            if hit {
                return Ok(Some(StopReason::StopString));
            }
        }
        if self.ids.len() >= self.opts.max_tokens {
            return Ok(Some(StopReason::MaxTokens));
        }
        if interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
            return Ok(Some(StopReason::Interrupted));
        }
        if cache.len() + 1 > cache.max_ctx() {
            return Ok(Some(StopReason::ContextFull));
        }
        Ok(None)
    }

    /// The finished generation; text held back for a stop string that did
    /// not come goes to `on_text` first.
    pub fn finish(&mut self, on_text: &mut dyn FnMut(&str)) -> Generation {
        let stop = *self.stop.get_or_insert(StopReason::Interrupted);
        self.stats.decode_secs = self.t_decode.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.stats.new_tokens = self.ids.len();
        let text = match self.stream.as_mut() {
            Some(s) => {
                if stop != StopReason::StopString {
                    let rest = s.finish();
                    if !rest.is_empty() {
                        on_text(&rest);
                    }
                }
                s.text().to_string()
            }
            None => String::new(),
        };
        Generation {
            ids: std::mem::take(&mut self.ids),
            text,
            stop,
            stats: self.stats.clone(),
        }
    }
}

/// Generate a continuation of `prompt` (token ids). Rows of the cache that
/// hold a prefix of `prompt` are re-used; the rest are replaced. `on_text`
/// receives the answer piece by piece (nothing without a tokenizer).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    gpu: &Gpu,
    model: &Decoder,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &GenOptions,
    rng: &mut HostRng,
    tok: Option<&Tokenizer>,
    interrupt: Option<&AtomicBool>,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut d = Decoding::new(cache, prompt, opts, tok)?;
    while d
        .advance(gpu, model, cache, rng, interrupt, on_text)?
        .is_none()
    {}
    Ok(d.finish(on_text))
}
