//! A chat session: a model (which may be swapped for another size), its
//! tokenizer and template, the conversation, generation options and the
//! KV cache of the current model. Commands (`/reset`, `/stats`, `/layers`,
//! `/help`, `/quit`) are handled here so that the CLI is only I/O.

use std::sync::atomic::AtomicBool;

use super::chat::{fit_prompt, ChatTemplate, Message};
use super::generate::{generate, GenOptions, GenStats, Generation, HostRng};
use super::kv::KvCache;
use crate::error::{Error, Result};
use crate::gpu::{format_bytes, Gpu};
use crate::model::decoder::Decoder;
use crate::model::tokenizer::Tokenizer;

/// Builds the model with `k` layers (boomerang patching of a teacher and a
/// student); given to a session by whoever can make such models.
pub type Resizer = Box<dyn FnMut(usize) -> Result<Decoder>>;

pub const HELP: &str = "\
commands:
  /help       this list
  /reset      forget the conversation
  /stats      model size, speed of the last answer, GPU memory
  /layers N   switch to the model with N layers (needs --teacher/--student)
  /quit       leave (also Ctrl-D)
Ctrl-C stops the answer being written.";

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Text to show (command output).
    Text(String),
    /// Leave the session.
    Quit,
    /// Not a command: a message for the model.
    Ask,
}

pub struct Session<'g> {
    gpu: &'g Gpu,
    model: Decoder,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    cache: KvCache,
    max_ctx: usize,
    pub history: Vec<Message>,
    pub opts: GenOptions,
    rng: HostRng,
    resizer: Option<Resizer>,
    last: Option<GenStats>,
}

impl<'g> Session<'g> {
    /// A session over `model`, with up to `max_ctx` positions of context;
    /// `seed` makes sampling reproducible.
    pub fn new(
        gpu: &'g Gpu,
        model: Decoder,
        tokenizer: Tokenizer,
        max_ctx: usize,
        opts: GenOptions,
        seed: Option<u64>,
    ) -> Result<Session<'g>> {
        let template = ChatTemplate::from_tokenizer(&tokenizer)?;
        let cache = KvCache::for_decoder(gpu, &model, max_ctx)?;
        Ok(Session {
            gpu,
            model,
            tokenizer,
            template,
            cache,
            max_ctx,
            history: Vec::new(),
            opts,
            rng: seed.map_or_else(HostRng::from_time, HostRng::new),
            resizer: None,
            last: None,
        })
    }

    /// Let `/layers N` build other sizes.
    pub fn set_resizer(&mut self, r: Resizer) {
        self.resizer = Some(r);
    }

    pub fn model(&self) -> &Decoder {
        &self.model
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
    pub fn last_stats(&self) -> Option<&GenStats> {
        self.last.as_ref()
    }

    /// Forget the conversation (the cache keeps its buffers; its rows are
    /// re-used only where a later prompt shares their tokens).
    pub fn reset(&mut self) {
        self.history.clear();
        self.cache.clear();
    }

    /// Swap in `model` (another size of the same family): the conversation
    /// stays, the cache starts over for the new model.
    pub fn set_model(&mut self, model: Decoder) -> Result<()> {
        let model = model.with_kv_dtype(self.model.kv_dtype())?;
        self.cache = KvCache::for_decoder(self.gpu, &model, self.max_ctx)?;
        self.model = model;
        self.gpu.trim();
        Ok(())
    }

    /// `/layers N`.
    pub fn resize(&mut self, layers: usize) -> Result<String> {
        let Some(r) = self.resizer.as_mut() else {
            return Err(Error::Invalid(
                "resizing needs --teacher/--student (a boomerang pair); this session has one model"
                    .into(),
            ));
        };
        let m = r(layers)?;
        self.set_model(m)?;
        Ok(format!(
            "now {} layers, {:.1}M parameters",
            self.model.layers.len(),
            self.model.params() as f64 / 1e6
        ))
    }

    /// Answer `text` as the next user turn, streaming the answer to
    /// `on_text`. The answer joins the history (also when interrupted).
    pub fn ask(
        &mut self,
        text: &str,
        interrupt: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        self.history.push(Message::user(text));
        let budget = self.max_ctx.saturating_sub(self.opts.max_tokens);
        let fitted = fit_prompt(
            &self.tokenizer,
            self.template.as_ref(),
            &self.history,
            budget,
            self.max_ctx,
        );
        let (ids, dropped) = match fitted {
            Ok(x) => x,
            Err(e) => {
                self.history.pop();
                return Err(e);
            }
        };
        if dropped > 0 {
            let sys = usize::from(self.history.first().is_some_and(|m| m.role == "system"));
            self.history.drain(sys..sys + dropped);
            eprintln!(
                "note: dropped the {dropped} oldest message(s) of the conversation to fit the context of {} tokens",
                self.max_ctx
            );
        }
        let gen = generate(
            self.gpu,
            &self.model,
            &mut self.cache,
            &ids,
            &self.opts,
            &mut self.rng,
            Some(&self.tokenizer),
            interrupt,
            on_text,
        );
        let gen = match gen {
            Ok(g) => g,
            Err(e) => {
                self.history.pop();
                self.cache.clear();
                return Err(e);
            }
        };
        self.history.push(Message::assistant(&gen.text));
        self.last = Some(gen.stats.clone());
        Ok(gen)
    }

    /// The `/stats` report.
    pub fn stats(&self) -> String {
        let m = &self.model;
        let mem = self.gpu.memory();
        let mut s = format!(
            "model: {} layers, {:.1}M parameters, {} of weights\n",
            m.layers.len(),
            m.params() as f64 / 1e6,
            format_bytes(m.weight_bytes())
        );
        s += &format!(
            "context: {} of {} tokens cached ({} allocated for {} positions)\n",
            self.cache.len(),
            self.max_ctx,
            format_bytes(self.cache.bytes()),
            self.cache.capacity()
        );
        match &self.last {
            Some(st) => {
                s += &format!(
                    "last answer: {} tokens, {:.1} tokens/s decode; prompt {} tokens ({} cached) at {:.1} tokens/s\n",
                    st.new_tokens,
                    st.decode_tokens_per_sec(),
                    st.prompt_tokens,
                    st.reused_tokens,
                    st.prefill_tokens_per_sec()
                )
            }
            None => s += "last answer: none yet\n",
        }
        s += &format!(
            "GPU memory: {} in tensors (peak {}), {} held by the device (peak {})",
            format_bytes(mem.live_bytes),
            format_bytes(mem.peak_live_bytes),
            format_bytes(mem.device_bytes),
            format_bytes(mem.peak_device_bytes)
        );
        s
    }

    /// Handle a line typed at the prompt: a command, or `Reply::Ask`.
    pub fn command(&mut self, line: &str) -> Reply {
        let line = line.trim();
        if !line.starts_with('/') {
            return Reply::Ask;
        }
        let mut parts = line.split_whitespace();
        let cmd = parts.next().unwrap_or("");
        match cmd {
            "/quit" | "/exit" | "/q" => Reply::Quit,
            "/help" | "/?" => Reply::Text(HELP.into()),
            "/reset" => {
                self.reset();
                Reply::Text("conversation cleared".into())
            }
            "/stats" => Reply::Text(self.stats()),
            "/layers" => match parts.next().map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => match self.resize(n) {
                    Ok(s) => Reply::Text(s),
                    Err(e) => Reply::Text(format!("error: {e}")),
                },
                _ => Reply::Text(format!(
                    "usage: /layers N (the model has {} layers now)",
                    self.model.layers.len()
                )),
            },
            other => Reply::Text(format!("unknown command {other}; /help lists them")),
        }
    }
}
