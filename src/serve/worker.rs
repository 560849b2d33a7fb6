//! The GPU side of `boomgpu serve`: one thread owns the GPU, every size of
//! the family (zero-copy patches of one teacher and one student) and the
//! tokenizer. Requests arrive as [`Job`]s on a channel; the scheduler keeps
//! up to `max_batch` of them running and advances them all by one GPU step
//! a round (prompt pass, then one token), so short answers are not held
//! behind long ones: a prompt pass is a submission of its own, the decode
//! steps of every other running job share one submission and one read. Each job reports through its own event channel; a job
//! whose client went away is dropped with its KV cache at the next turn.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;

use super::api::{ApiError, Prompt};
use crate::gpu::Gpu;
use crate::infer::chat::{encode_prompt, ChatTemplate, Message};
use crate::infer::generate::{Decoding, GenOptions, HostRng, StopReason};
use crate::infer::kv::KvCache;
use crate::model::decoder::Decoder;
use crate::model::score::token_logprobs;
use crate::model::tokenizer::Tokenizer;
use crate::ops::sample::SampleParams;

/// One model id of the server: a size of the family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Size {
    pub id: String,
    /// Other names the size answers to (`student`, `teacher`, `NAME-kK`).
    pub aliases: Vec<String>,
    pub layers: usize,
    pub params: u64,
}

/// What the server offers, known once the models are loaded.
#[derive(Clone, Debug)]
pub struct Catalogue {
    pub sizes: Vec<Size>,
    /// The context of every request (prompt and answer), `--ctx`.
    pub ctx: usize,
    pub vocab: usize,
}

impl Catalogue {
    /// The index of the size a request names.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.sizes
            .iter()
            .position(|s| s.id == name || s.aliases.iter().any(|a| a == name))
    }

    /// Every id, for error messages.
    pub fn known(&self) -> String {
        self.sizes
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The input of a job.
#[derive(Clone, Debug)]
pub enum Input {
    Prompt(Prompt),
    Chat(Vec<Message>),
}

/// One generation asked for by a client.
pub struct Job {
    pub request_id: String,
    /// Index into the catalogue.
    pub size: usize,
    pub input: Input,
    /// `None`: 16 for completions, the rest of the context for chat.
    pub max_tokens: Option<usize>,
    pub sampling: SampleParams,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Generate past end-of-text.
    pub ignore_eos: bool,
    /// `logprobs: N` (completions; chat's `top_logprobs` with `logprobs`).
    pub logprobs: Option<usize>,
    pub echo: bool,
    pub events: UnboundedSender<Event>,
    pub queued_at: Instant,
}

/// Per-token log-probabilities in the form OpenAI's completions return.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f64>>,
    pub top_logprobs: Vec<Option<Vec<(String, f64)>>>,
    pub text_offset: Vec<usize>,
}

impl Logprobs {
    pub fn to_json(&self) -> serde_json::Value {
        let top: Vec<serde_json::Value> = self
            .top_logprobs
            .iter()
            .map(|t| match t {
                None => serde_json::Value::Null,
                Some(v) => {
                    let mut m = serde_json::Map::new();
                    for (s, lp) in v {
                        m.entry(s.clone()).or_insert(json!(lp));
                    }
                    serde_json::Value::Object(m)
                }
            })
            .collect();
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": top,
            "text_offset": self.text_offset,
        })
    }

    /// The chat completions form: `{"content": [{token, logprob, bytes,
    /// top_logprobs: [{token, logprob, bytes}]}]}` for the answer's tokens.
    pub fn to_chat_json(&self) -> serde_json::Value {
        let entry = |t: &str, lp: f64| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
        let content: Vec<serde_json::Value> = self
            .tokens
            .iter()
            .zip(&self.token_logprobs)
            .zip(&self.top_logprobs)
            .map(|((t, lp), top)| {
                let mut e = entry(t, lp.unwrap_or(0.0));
                let top: Vec<serde_json::Value> =
                    top.iter().flatten().map(|(t, lp)| entry(t, *lp)).collect();
                e["top_logprobs"] = json!(top);
                e
            })
            .collect();
        json!({ "content": content })
    }
}

/// The end of a job.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The answer (with `echo`, the prompt's text before it).
    pub text: String,
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub logprobs: Option<Logprobs>,
}

/// What a job reports, in order: `Started`, any `Text`, then `Done` or
/// `Failed` (alone, when the request is refused before any work).
#[derive(Clone, Debug)]
pub enum Event {
    Started { prompt_tokens: usize },
    Text(String),
    Done(Box<Finished>),
    Failed(ApiError),
}

/// Everything the worker serves from.
pub struct Models {
    pub gpu: Gpu,
    /// One decoder per catalogue size (they share the tensors).
    pub decoders: Vec<Decoder>,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub eos_ids: Vec<u32>,
    pub catalogue: Catalogue,
    /// Log lines as JSON objects.
    pub json_log: bool,
}

/// A job refused before it started, with the reason.
type Refused = Box<(Job, ApiError)>;

fn refuse(job: Job, e: ApiError) -> Refused {
    Box::new((job, e))
}

struct Active<'t> {
    job: Job,
    prompt: Vec<u32>,
    /// The prompt's text, for `echo`.
    prompt_text: Option<String>,
    cache: KvCache,
    decoding: Decoding<'t>,
    rng: HostRng,
    started: Instant,
}

fn finish_reason(s: StopReason) -> &'static str {
    match s {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::Eos | StopReason::StopString | StopReason::Interrupted => "stop",
    }
}

impl Models {
    /// Tokenise and check a job; its cache and decoding state.
    fn start<'t>(&'t self, job: Job) -> Result<Active<'t>, Refused> {
        let tok = &self.tokenizer;
        let ctx = self.catalogue.ctx;
        let vocab = self.catalogue.vocab;
        let (prompt, prompt_text) = match &job.input {
            Input::Prompt(Prompt::Text(t)) => match tok.encode(t, false) {
                Ok(ids) => (ids, Some(t.clone())),
                Err(e) => return Err(refuse(job, ApiError::invalid("prompt", e.to_string()))),
            },
            Input::Prompt(Prompt::Ids(ids)) => {
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                    let e = ApiError::invalid(
                        "prompt",
                        format!("token id {bad} is out of range: the vocabulary has {vocab} ids (0..{vocab})"),
                    );
                    return Err(refuse(job, e));
                }
                (ids.clone(), None)
            }
            Input::Chat(m) => match encode_prompt(tok, self.template.as_ref(), m) {
                Ok(ids) => (ids, None),
                Err(e) => return Err(refuse(job, ApiError::invalid("messages", e.to_string()))),
            },
        };
        let param = if matches!(job.input, Input::Chat(_)) {
            "messages"
        } else {
            "prompt"
        };
        if prompt.is_empty() {
            return Err(refuse(
                job,
                ApiError::invalid(param, "the prompt has no tokens"),
            ));
        }
        if prompt.len() > ctx {
            return Err(refuse(job, ApiError::context(param, prompt.len(), ctx)));
        }
        let max_tokens = match (job.max_tokens, &job.input) {
            (Some(0), _) if !job.echo => {
                let e = ApiError::invalid("max_tokens", "max_tokens 0 needs echo: true");
                return Err(refuse(job, e));
            }
            (Some(m), _) => m,
            (None, Input::Chat(_)) => ctx - prompt.len(),
            (None, _) => 16,
        };
        let opts = GenOptions {
            max_tokens,
            sampling: job.sampling,
            stop: job.stop.clone(),
            eos_ids: if job.ignore_eos {
                Vec::new()
            } else {
                self.eos_ids.clone()
            },
        };
        let dec = &self.decoders[job.size];
        let mut cache = match KvCache::for_decoder(&self.gpu, dec, ctx) {
            Ok(c) => c,
            Err(e) => return Err(refuse(job, ApiError::server(e.to_string()))),
        };
        let decoding = match Decoding::new(&mut cache, &prompt, &opts, Some(tok)) {
            Ok(d) => d,
            Err(e) => return Err(refuse(job, ApiError::invalid(param, e.to_string()))),
        };
        let rng = job.seed.map_or_else(HostRng::from_time, HostRng::new);
        let _ = job.events.send(Event::Started {
            prompt_tokens: prompt.len(),
        });
        Ok(Active {
            job,
            prompt,
            prompt_text,
            cache,
            decoding,
            rng,
            started: Instant::now(),
        })
    }

    /// Per-token log-probabilities of prompt (with `echo`) and answer.
    fn logprobs(&self, a: &Active, answer: &[u32], top: usize) -> crate::Result<Logprobs> {
        let tok = &self.tokenizer;
        let mut all = a.prompt.clone();
        all.extend_from_slice(answer);
        let scores = token_logprobs(&self.gpu, &self.decoders[a.job.size], &all, top)?;
        let from = if a.job.echo { 0 } else { a.prompt.len() };
        let piece = |id: u32| tok.decode(&[id], false);
        let mut lp = Logprobs::default();
        let mut offset = 0;
        for (i, &id) in all.iter().enumerate().skip(from) {
            // Character offsets into the returned text.
            let before = tok.decode(&all[from..i], false)?.chars().count();
            offset = offset.max(before);
            lp.tokens.push(piece(id)?);
            lp.text_offset.push(offset);
            if i == 0 {
                lp.token_logprobs.push(None);
                lp.top_logprobs.push(None);
            } else {
                let s = &scores[i - 1];
                lp.token_logprobs.push(Some(s.logprob));
                let top: crate::Result<Vec<(String, f64)>> =
                    s.top.iter().map(|&(t, v)| Ok((piece(t)?, v))).collect();
                lp.top_logprobs.push(Some(top?));
            }
        }
        Ok(lp)
    }

    /// One round of GPU work for every active job: `Ok(true)` for a job
    /// that has ended, an error for its client when its step failed. A
    /// job's prompt pass runs in a submission of its own; the decode steps
    /// of all the others (one token each) are recorded into one
    /// submission, and their chosen ids come back in one read.
    fn advance_all(&self, active: &mut [Active]) -> Vec<Result<bool, ApiError>> {
        let n = active.len();
        let mut out: Vec<Option<Result<bool, ApiError>>> = (0..n).map(|_| None).collect();
        let gpu = &self.gpu;
        let server = |e: crate::Error| ApiError::server(e.to_string());
        let mut rec = gpu.recorder();
        // (job, its step's chosen-id tensor)
        let mut batch = Vec::new();
        for (i, a) in active.iter_mut().enumerate() {
            let events = a.job.events.clone();
            let mut on_text = |t: &str| {
                let _ = events.send(Event::Text(t.to_string()));
            };
            let dec = &self.decoders[a.job.size];
            if a.decoding.at_prompt() {
                let r = a
                    .decoding
                    .advance(gpu, dec, &mut a.cache, &mut a.rng, None, &mut on_text);
                out[i] = Some(r.map(|s| s.is_some()).map_err(server));
                continue;
            }
            let ids = match a.decoding.next_input(&a.cache, None, &mut on_text) {
                Ok(Some(ids)) => ids,
                Ok(None) => {
                    out[i] = Some(Ok(true));
                    continue;
                }
                Err(e) => {
                    out[i] = Some(Err(server(e)));
                    continue;
                }
            };
            match a
                .decoding
                .record(&mut rec, dec, &mut a.cache, &ids, &mut a.rng)
            {
                Ok(tok) => batch.push((i, tok)),
                Err(e) => out[i] = Some(Err(server(e))),
            }
        }
        if !batch.is_empty() {
            let ids = (|| -> crate::Result<Vec<u32>> {
                let all = crate::gpu::Tensor::empty(
                    gpu,
                    "serve.next_ids",
                    &[batch.len()],
                    crate::gpu::DType::U32,
                )?;
                for (slot, (_, tok)) in batch.iter().enumerate() {
                    rec.copy(tok, 0, &all, slot as u64 * 4, 4)?;
                }
                Ok(bytemuck::pod_collect_to_vec(&rec.submit_read(&all)?))
            })();
            for (slot, (i, _)) in batch.iter().enumerate() {
                let r = match &ids {
                    Ok(ids) => active[*i]
                        .decoding
                        .accept(ids[slot])
                        .map(|_| false)
                        .map_err(server),
                    Err(e) => Err(ApiError::server(e.to_string())),
                };
                out[*i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every job has its outcome"))
            .collect()
    }

    /// Report a finished job and log it.
    fn complete(&self, mut rest: Active) {
        let events = rest.job.events.clone();
        let mut on_text = |t: &str| {
            let _ = events.send(Event::Text(t.to_string()));
        };
        let g = rest.decoding.finish(&mut on_text);
        let ids = &g.ids;
        let logprobs = match rest.job.logprobs {
            Some(n) => match self.logprobs(&rest, ids, n) {
                Ok(l) => Some(l),
                Err(e) => {
                    let _ = rest
                        .job
                        .events
                        .send(Event::Failed(ApiError::server(e.to_string())));
                    return;
                }
            },
            None => None,
        };
        let text = match (rest.job.echo, &rest.prompt_text) {
            (true, Some(p)) => format!("{p}{}", g.text),
            (true, None) => {
                let p = self
                    .tokenizer
                    .decode(&rest.prompt, false)
                    .unwrap_or_default();
                format!("{p}{}", g.text)
            }
            (false, _) => g.text.clone(),
        };
        let done = Finished {
            text,
            finish_reason: finish_reason(g.stop),
            prompt_tokens: rest.prompt.len(),
            completion_tokens: g.ids.len(),
            logprobs,
        };
        self.log(&rest.job, &done, rest.started);
        let _ = rest.job.events.send(Event::Done(Box::new(done)));
    }

    fn log(&self, job: &Job, done: &Finished, started: Instant) {
        let queue = (started - job.queued_at).as_secs_f64();
        let total = job.queued_at.elapsed().as_secs_f64();
        let run = started.elapsed().as_secs_f64();
        let tps = done.completion_tokens as f64 / run.max(1e-9);
        let model = &self.catalogue.sizes[job.size].id;
        if self.json_log {
            eprintln!(
                "{}",
                json!({
                    "id": job.request_id, "model": model, "prompt_tokens": done.prompt_tokens,
                    "completion_tokens": done.completion_tokens, "queue_s": queue,
                    "total_s": total, "tokens_per_s": tps, "finish_reason": done.finish_reason,
                })
            );
        } else {
            eprintln!(
                "{} {model}: {} prompt + {} completion tokens, queued {:.3} s, total {:.3} s, {:.1} tokens/s ({})",
                job.request_id,
                done.prompt_tokens,
                done.completion_tokens,
                queue,
                total,
                tps,
                done.finish_reason
            );
        }
    }
}

/// The scheduler loop: runs until the job channel is closed and every job
/// has ended. `pending` counts jobs queued or running (the HTTP side adds,
/// this loop takes away).
pub fn run(models: Models, jobs: Receiver<Job>, max_batch: usize, pending: Arc<AtomicUsize>) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;
    let done = |n: usize| {
        pending.fetch_sub(n, Ordering::SeqCst);
    };
    loop {
        if open && active.is_empty() && waiting.is_empty() {
            match jobs.recv() {
                Ok(j) => waiting.push_back(j),
                Err(_) => open = false,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(j) => waiting.push_back(j),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        while active.len() < max_batch.max(1) {
            let Some(job) = waiting.pop_front() else {
                break;
            };
            if job.events.is_closed() {
                done(1);
                continue;
            }
            match models.start(job) {
                Ok(a) => active.push(a),
                Err(r) => {
                    let (job, e) = *r;
                    // Counted out before the client hears, so that its next
                    // request finds the place free.
                    done(1);
                    let _ = job.events.send(Event::Failed(e));
                }
            }
        }
        if active.is_empty() && waiting.is_empty() && !open {
            break;
        }
        // A client that went away frees its cache now.
        let before = active.len();
        active.retain(|a| !a.job.events.is_closed());
        done(before - active.len());
        let outcomes = models.advance_all(&mut active);
        for (i, r) in outcomes.into_iter().enumerate().rev() {
            match r {
                Ok(false) => {}
                Ok(true) => {
                    let a = active.remove(i);
                    done(1);
                    models.complete(a);
                }
                Err(e) => {
                    let a = active.remove(i);
                    done(1);
                    let _ = a.job.events.send(Event::Failed(e));
                }
            }
        }
    }
}
