//! `boomgpu chat`: answer one `--prompt` (the answer alone on stdout), or
//! an interactive conversation on stdin with /commands (line editing and
//! history on a terminal); Ctrl-C stops the answer being written, not the
//! program.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustyline::error::ReadlineError;
use serde_json::Value;

use super::common::{load_model, open_gpu, Pair};
use crate::error::{Error, Result};
use crate::gpu::GpuOptions;
use crate::infer::{GenOptions, Reply, Session, StopReason};
use crate::model::tokenizer::Tokenizer;
use crate::ops::sample::SampleParams;

/// The pair `boomgpu chat` uses when given no model (REFERENCE §5).
pub const DEFAULT_TEACHER: &str = "Qwen/Qwen3-4B-Base";
pub const DEFAULT_STUDENT: &str = "Harvard-DCML/boomerang-qwen3-2.3B";

pub enum ChatTarget {
    Model(String),
    Pair { teacher: String, student: String },
}

pub struct ChatArgs {
    pub target: ChatTarget,
    /// Student layers to patch (pairs only); None = the student itself.
    pub layers: Option<usize>,
    /// The patch order `/layers` follows.
    pub order: super::order::OrderChoice,
    pub prune: Option<crate::boomerang::PruneParams>,
    pub prompt: Option<String>,
    /// With `prompt`: one JSON object instead of the answer.
    pub json: bool,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub max_context: Option<usize>,
    pub stop: Vec<String>,
    /// dtype of the KV cache (f16 or f32).
    pub kv_dtype: crate::gpu::DType,
}

impl ChatArgs {
    /// The numeric flags, checked before anything is loaded: each error
    /// names the flag, the value and what is expected.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, v: f32, want: &str| {
            Err(Error::Invalid(format!("--{flag} {v}: expected {want}")))
        };
        if let Some(t) = self.temperature {
            if !(t.is_finite() && t >= 0.0) || (t > 0.0 && !(1.0 / t).is_finite()) {
                return bad(
                    "temperature",
                    t,
                    "a finite number >= 0 (0 is greedy) that can be divided by",
                );
            }
        }
        for (flag, v) in [("top-p", self.top_p), ("min-p", self.min_p)] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                return bad(flag, v, "a number in [0, 1]");
            }
        }
        if let Some(v) = self.repetition_penalty {
            if !(v.is_finite() && v > 0.0) {
                return bad("repetition-penalty", v, "a finite number > 0 (1 is off)");
            }
        }
        if self.max_context == Some(0) {
            return Err(Error::Invalid(
                "--max-context 0: expected at least 1 token of context".into(),
            ));
        }
        Ok(())
    }
}

/// Sampling defaults from generation_config.json (as transformers reads
/// them: greedy unless `do_sample`; top_k 50 when sampling and unset),
/// overridden by the flags; also the EOS ids it names.
fn sampling(gen_cfg: &Value, a: &ChatArgs) -> (SampleParams, Vec<u32>) {
    let f = |k: &str| gen_cfg.get(k).and_then(Value::as_f64);
    let do_sample = gen_cfg
        .get("do_sample")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut p = SampleParams::greedy();
    if do_sample {
        p.temperature = f("temperature").unwrap_or(1.0) as f32;
        p.top_k = f("top_k").unwrap_or(50.0) as usize;
        p.top_p = f("top_p").unwrap_or(1.0) as f32;
        p.min_p = f("min_p").unwrap_or(0.0) as f32;
    }
    p.repetition_penalty = f("repetition_penalty").unwrap_or(1.0) as f32;
    if let Some(t) = a.temperature {
        p.temperature = t;
    }
    if let Some(k) = a.top_k {
        p.top_k = k;
    }
    if let Some(v) = a.top_p {
        p.top_p = v;
    }
    if let Some(v) = a.min_p {
        p.min_p = v;
    }
    if let Some(v) = a.repetition_penalty {
        p.repetition_penalty = v;
    }
    let eos = match gen_cfg.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(v)) => v
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    };
    (p, eos)
}

fn describe(p: &SampleParams) -> String {
    if p.is_greedy() {
        let mut s = "greedy".to_string();
        if p.has_penalty() {
            s += &format!(", repetition penalty {}", p.repetition_penalty);
        }
        return s;
    }
    format!(
        "temperature {}, top-k {}, top-p {}, min-p {}, repetition penalty {}",
        p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty
    )
}

pub fn run(opts: &GpuOptions, a: &ChatArgs) -> Result<()> {
    a.validate()?;
    let gpu = open_gpu(opts)?;
    let (m, resizer) = match &a.target {
        ChatTarget::Model(r) => {
            if a.layers.is_some() {
                return Err(Error::Invalid(
                    "--layers needs --teacher and --student (a boomerang pair)".into(),
                ));
            }
            (load_model(&gpu, r, false)?, None)
        }
        ChatTarget::Pair { teacher, student } => {
            let pair = std::sync::Arc::new(Pair::load(&gpu, teacher, student, a.prune)?);
            let order = super::order::for_pair(&gpu, &pair, &a.order, None)?;
            let dec = match a.layers {
                Some(k) => pair.patched(k, &order)?.1,
                None => pair.student.decoder.clone(),
            };
            let max_k = crate::boomerang::PatchPlan::max_k(&pair.plan, order.direction);
            eprintln!(
                "{} layers, {:.1}M parameters; /layers 0..={max_k} switches size ({}-k patching, {max_k} = the teacher)",
                dec.layers.len(),
                dec.params() as f64 / 1e6,
                order.name()
            );
            let p2 = pair.clone();
            let resizer: crate::infer::session::Resizer =
                Box::new(move |k| p2.patched(k, &order).map(|(_, d)| d));
            let t = &pair.teacher;
            let loaded = super::common::Loaded {
                dir: t.dir.clone(),
                cfg: dec.cfg.clone(),
                decoder: dec,
                tokenizer: Some(Tokenizer::from_dir(
                    &t.dir,
                    &t.cfg.eos_token_ids,
                    t.cfg.bos_token_id,
                )?),
            };
            (loaded, Some(resizer))
        }
    };
    let tok = m.tokenizer.ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no tokenizer.json; chat needs the model's tokenizer",
            m.dir.display()
        ))
    })?;
    let gen_path = m.dir.join("generation_config.json");
    let gen_cfg: Value = std::fs::read_to_string(&gen_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let (params, gen_eos) = sampling(&gen_cfg, a);
    // The flags were checked: what is wrong now came from the file.
    params
        .validate()
        .map_err(|e| Error::Invalid(format!("{}: {e}", gen_path.display())))?;
    let max_pos = m.cfg.max_position_embeddings;
    let max_ctx = a.max_context.unwrap_or(super::fit::default_ctx(max_pos));
    if max_ctx == 0 {
        return Err(Error::Invalid("--max-context must be at least 1".into()));
    }
    if max_ctx > max_pos {
        eprintln!("note: --max-context {max_ctx} is beyond the model's max_position_embeddings ({max_pos})");
    }
    let mut eos_ids = tok.eos_ids.clone();
    for id in gen_eos {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    }
    let gen = GenOptions {
        max_tokens: a.max_tokens.unwrap_or(512),
        sampling: params,
        stop: a.stop.clone(),
        eos_ids,
    };
    let model = m.decoder.with_kv_dtype(a.kv_dtype)?;
    let mut session = Session::new(&gpu, model, tok, max_ctx, gen, a.seed)?;
    if let Some(r) = resizer {
        session.set_resizer(r);
    }
    eprintln!(
        "sampling: {}; context {max_ctx} tokens; {}",
        describe(&params),
        if session.has_template() {
            "chat template"
        } else {
            "no chat template: plain continuation"
        }
    );
    let stdout = std::io::stdout();
    if let (Some(prompt), true) = (&a.prompt, a.json) {
        let g = session.ask(prompt, None, &mut |_| {})?;
        println!("{}", answer_json(&gpu, session.model(), &g));
        return Ok(());
    }
    if let Some(prompt) = &a.prompt {
        let mut out = stdout.lock();
        let g = session.ask(prompt, None, &mut |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })?;
        let _ = writeln!(out);
        report(&g.stats, g.stop);
        return Ok(());
    }
    interactive(&mut session)
}

/// `chat --prompt … --json`: the answer and what producing it took. The
/// per-token figures are over the decode steps (after the prompt pass);
/// weight bytes per token are every weight a step reads (the head and
/// the layers; one row of an untied embedding, left out).
fn answer_json(
    gpu: &crate::gpu::Gpu,
    model: &crate::model::decoder::Decoder,
    g: &crate::infer::Generation,
) -> Value {
    let st = &g.stats;
    let steps = st.decode_steps as f64;
    let per = |x: u64| (st.decode_steps > 0).then(|| x as f64 / steps);
    let used = st.counters_at_decode.map(|c| gpu.counters().since(&c));
    let weights = model.weight_bytes()
        - if model.head_is_embed() {
            0
        } else {
            model.embed.byte_len()
        };
    serde_json::json!({
        "text": g.text,
        "token_ids": g.ids,
        "prompt_tokens": st.prompt_tokens,
        "generated_tokens": g.ids.len(),
        "stop": stop_name(g.stop),
        "prefill_tokens_per_s": st.prefill_tokens_per_sec(),
        "decode_tokens_per_s": st.decode_tokens_per_sec(),
        "decode_steps": st.decode_steps,
        "submissions_per_token": used.and_then(|c| per(c.submissions)),
        "dispatches_per_token": used.and_then(|c| per(c.dispatches)),
        "readback_bytes_per_token": used.and_then(|c| per(c.readback_bytes)),
        "weight_bytes_per_token": weights,
        "peak_bytes": gpu.memory().peak_device_bytes,
    })
}

fn stop_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Eos => "end of text",
        StopReason::StopString => "stop string",
        StopReason::MaxTokens => "--max-tokens",
        StopReason::ContextFull => "context full",
        StopReason::Interrupted => "interrupted",
    }
}

fn report(st: &crate::infer::GenStats, stop: StopReason) {
    eprintln!(
        "[{} tokens, {:.1} tokens/s; prompt {} tokens at {:.1} tokens/s; stopped: {}]",
        st.new_tokens,
        st.decode_tokens_per_sec(),
        st.prompt_tokens,
        st.prefill_tokens_per_sec(),
        stop_name(stop)
    );
}

/// Where the interactive lines come from: a line editor (rustyline:
/// editing, history, Ctrl-C clears the line, Ctrl-D leaves) when stdin is a
/// terminal; plain lines otherwise (piped input, tests), read as they come.
enum Input {
    Editor {
        editor: Box<rustyline::DefaultEditor>,
        history: Option<PathBuf>,
    },
    Plain(std::io::Stdin),
}

/// Where the history of the line editor is kept across sessions
/// (`~/.local/share/boomgpu/chat_history` on Linux), or None without a
/// data folder or when `BOOMGPU_CHAT_HISTORY` is `off` (prompts can be
/// private); another value of that variable is the file to use.
fn history_file() -> Option<PathBuf> {
    match std::env::var_os("BOOMGPU_CHAT_HISTORY") {
        Some(v) if v == "off" || v.is_empty() => return None,
        Some(v) => return Some(PathBuf::from(v)),
        None => {}
    }
    let dir = dirs::data_dir()?.join("boomgpu");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("chat_history"))
}

impl Input {
    fn new() -> Input {
        if !std::io::stdin().is_terminal() {
            return Input::Plain(std::io::stdin());
        }
        // The editor talks to the terminal itself (/dev/tty), so that stdout
        // keeps the answers alone when it is redirected.
        let config = rustyline::Config::builder()
            .behavior(rustyline::config::Behavior::PreferTerm)
            .auto_add_history(false);
        let config = match config.max_history_size(1000) {
            Ok(c) => c,
            Err(_) => return Input::Plain(std::io::stdin()),
        };
        match rustyline::DefaultEditor::with_config(config.build()) {
            Ok(mut editor) => {
                let history = history_file();
                if let Some(h) = &history {
                    // A missing file is the first session, not an error.
                    let _ = editor.load_history(h);
                }
                Input::Editor {
                    editor: Box::new(editor),
                    history,
                }
            }
            Err(_) => Input::Plain(std::io::stdin()),
        }
    }

    /// The next line without its line ending; None at the end (Ctrl-D,
    /// end of input).
    fn line(&mut self) -> Result<Option<String>> {
        match self {
            Input::Plain(stdin) => {
                eprint!("> ");
                let _ = std::io::stderr().flush();
                let mut line = String::new();
                if stdin
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| Error::io("stdin", e))?
                    == 0
                {
                    eprintln!();
                    return Ok(None);
                }
                Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
            }
            Input::Editor { editor, history } => loop {
                match editor.readline("> ") {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                            if let Some(h) = history {
                                // History is a convenience: a read-only home
                                // must not stop the conversation.
                                let _ = editor.append_history(h);
                            }
                        }
                        return Ok(Some(line));
                    }
                    // Ctrl-C at the prompt clears the line (as in a shell).
                    Err(ReadlineError::Interrupted) => continue,
                    Err(ReadlineError::Eof) => return Ok(None),
                    Err(e) => {
                        return Err(Error::Invalid(format!(
                            "cannot read from the terminal: {e}"
                        )))
                    }
                }
            },
        }
    }
}

fn interactive(session: &mut Session) -> Result<()> {
    // Ctrl-C while an answer is being written stops it. At the line editor's
    // prompt the terminal is in raw mode and rustyline reads Ctrl-C as a key
    // (it clears the line), so this handler only sees it during an answer,
    // or at the plain prompt of piped input, where it leaves as usual.
    let generating = Arc::new(AtomicBool::new(false));
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let generating = generating.clone();
        let interrupt = interrupt.clone();
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupt.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                std::process::exit(130);
            }
        })
        .map_err(|e| Error::Invalid(format!("cannot install the Ctrl-C handler: {e}")))?;
    }
    eprintln!("type a message, /help for commands, /quit or Ctrl-D to leave");
    let stdout = std::io::stdout();
    let mut input = Input::new();
    while let Some(text) = input.line()? {
        if text.trim().is_empty() {
            continue;
        }
        match session.command(&text) {
            Reply::Quit => return Ok(()),
            Reply::Text(t) => {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{t}");
                let _ = out.flush();
            }
            Reply::Ask => {
                interrupt.store(false, Ordering::SeqCst);
                generating.store(true, Ordering::SeqCst);
                let mut out = stdout.lock();
                let r = session.ask(&text, Some(&interrupt), &mut |piece| {
                    let _ = out.write_all(piece.as_bytes());
                    let _ = out.flush();
                });
                generating.store(false, Ordering::SeqCst);
                let _ = writeln!(out);
                let _ = out.flush();
                drop(out);
                match r {
                    Ok(g) => report(&g.stats, g.stop),
                    Err(e) => eprintln!("error: {e}"),
                }
            }
        }
    }
    Ok(())
}
