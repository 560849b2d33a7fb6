mod cli_distill;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use boomgpu::boomerang::PruneParams;
use boomgpu::commands::init_student::InitStudentOptions;
use boomgpu::commands::order::OrderChoice;
use boomgpu::commands::patch::{prune_params, PatchOptions};
use boomgpu::commands::plan::PlanOptions;
use boomgpu::gpu::GpuOptions;

/// boomgpu: make families of language models of many sizes from one large
/// model (boomerang distillation), on any GPU through wgpu.
#[derive(Parser)]
#[command(name = "boomgpu", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    gpu: GpuArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct GpuArgs {
    /// Adapter to use: an index from `boomgpu devices` or part of its name.
    #[arg(long, global = true, env = "BOOMGPU_ADAPTER")]
    adapter: Option<String>,
    /// Graphics API: vulkan, metal, dx12, gl, all (comma-separated list allowed).
    #[arg(long, global = true, env = "BOOMGPU_BACKEND")]
    backend: Option<String>,
}

/// How a student was pruned, for students without student_config.json.
#[derive(Args, Clone, Copy)]
struct PruneArgs {
    /// For a student without student_config.json: it kept one teacher layer out of every EVERY [default: 2].
    #[arg(long)]
    every: Option<usize>,
    /// For a student without student_config.json: the leading teacher layers it kept [default: 1].
    #[arg(long)]
    keep_first: Option<usize>,
    /// For a student without student_config.json: the trailing teacher layers it kept [default: 2].
    #[arg(long)]
    keep_last: Option<usize>,
}

impl PruneArgs {
    fn params(self) -> Option<PruneParams> {
        prune_params(self.every, self.keep_first, self.keep_last)
    }
}

/// One model, or a teacher and its student (any size between them).
#[derive(Args)]
struct ModelArgs {
    /// One model: folder or hub id (e.g. Qwen/Qwen3-4B-Base).
    #[arg(long, conflicts_with_all = ["teacher", "student"])]
    model: Option<String>,
    /// Teacher of a boomerang pair (folder or hub id).
    #[arg(long, requires = "student")]
    teacher: Option<String>,
    /// Student of the pair (with student_config.json, or pass --every/--keep-first/--keep-last).
    #[arg(long, requires = "teacher")]
    student: Option<String>,
    #[command(flatten)]
    prune: PruneArgs,
}

/// Which student layers get their teacher blocks back, in which order.
#[derive(Args, Clone)]
struct OrderArgs {
    /// Patch the first student layers (the reference's order for Llama); same as --order first.
    #[arg(long, conflicts_with_all = ["last", "order"])]
    first: bool,
    /// Patch the last student layers (the reference's order for Qwen3 and Pythia); same as --order last.
    #[arg(long, conflicts_with = "order")]
    last: bool,
    /// Patch order: first, last, or auto (chosen greedily by the perplexity of --calibration
    /// text, or the order the student stores) [default: the student's stored order, else the
    /// reference's for the family].
    #[arg(long, value_name = "ORDER")]
    order: Option<String>,
    /// With --order auto: the text whose perplexity chooses the order.
    #[arg(long, value_name = "TEXT")]
    calibration: Option<PathBuf>,
    /// With --calibration: how many of its first tokens are scored [default: 2048].
    #[arg(long, value_name = "N")]
    calibration_tokens: Option<usize>,
}

impl OrderArgs {
    /// The order asked for.
    fn choice(&self) -> boomgpu::Result<OrderChoice> {
        OrderChoice::from_flags(
            self.order.as_deref(),
            self.first,
            self.last,
            self.calibration.clone(),
            self.calibration_tokens,
        )
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a student to match its teacher: CE + KL + per-layer cosine
    /// alignment (boomerang step 2). Without --student, the student is
    /// pruned from the teacher first (--every/--keep-first/--keep-last).
    Distill(cli_distill::DistillCli),
    /// List GPU adapters, their features and limits, and which one boomgpu uses.
    Devices {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a model, of one intermediate size of a teacher/student
    /// pair (--layers K), or of every size (--layers all: table, CSV, SVG).
    Eval {
        #[command(flatten)]
        models: ModelArgs,
        /// Student layers to patch with teacher blocks: K, a list K1,K2,... (a curve), or `all`.
        #[arg(long, conflicts_with = "fit")]
        layers: Option<String>,
        #[command(flatten)]
        order: OrderArgs,
        #[command(flatten)]
        fit: FitArgs,
        /// UTF-8 text file to score.
        #[arg(long)]
        data: PathBuf,
        /// Tokens per window (default: min(2048, max_position_embeddings)).
        #[arg(long)]
        seq_len: Option<usize>,
        /// JSON: one line {perplexity, nll (total, nats), tokens, predicted, layers, params}; an array for --layers all.
        #[arg(long)]
        json: bool,
        /// With --layers all: the CSV file to write [default: DATA.sizes.csv].
        #[arg(long)]
        csv: Option<PathBuf>,
        /// With --layers all: the SVG plot to write [default: DATA.sizes.svg].
        #[arg(long)]
        svg: Option<PathBuf>,
        /// With a curve: also score naive layer pruning at every size (the
        /// teacher with the same layers removed, untrained).
        #[arg(long)]
        baseline: bool,
        /// With a curve: also score this student (e.g. the pruned one before
        /// distillation) patched the same way.
        #[arg(long, value_name = "DIR")]
        before: Option<String>,
    },
    /// Make a student from a teacher by deleting layers (boomerang step 1).
    /// Needs no GPU: the kept layers are copied byte for byte.
    InitStudent {
        /// The teacher: a local Hugging Face folder or a hub id (org/name).
        #[arg(long)]
        teacher: String,
        /// Folder to write the student to.
        #[arg(long)]
        out: PathBuf,
        /// Keep one teacher layer out of every EVERY in the middle.
        #[arg(long, default_value_t = 2)]
        every: usize,
        /// Leading teacher layers kept as they are.
        #[arg(long, default_value_t = 1)]
        keep_first: usize,
        /// Trailing teacher layers kept as they are.
        #[arg(long, default_value_t = 2)]
        keep_last: usize,
        /// Fresh random weights of the student's shape instead of copies (ablation).
        #[arg(long)]
        random_init: bool,
        /// Seed of --random-init [default: 0].
        #[arg(long, requires = "random_init")]
        seed: Option<u64>,
        /// Replace --out if it exists and is not empty.
        #[arg(long)]
        force: bool,
    },
    /// Convert a llama-architecture GGUF file (llama.cpp) into a Hugging Face
    /// model folder: config.json, model.safetensors, tokenizer files.
    ImportGguf {
        /// The .gguf file.
        file: PathBuf,
        /// Folder to write; must be empty or absent unless --force.
        #[arg(long)]
        out: PathBuf,
        /// dtype of the written weights: f32 (exact dequantised values,
        /// the default), bf16 or f16 (half the size, rounded).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Replace a non-empty --out folder.
        #[arg(long)]
        force: bool,
    },
    /// Export an intermediate model (boomerang step 3): the student with K of
    /// its layers replaced by the teacher blocks they stand for, as a
    /// Hugging Face folder. Needs no GPU (tensors are copied byte for byte)
    /// unless --order auto searches an order on --calibration text.
    /// `boomgpu plan` lists every K.
    Patch {
        #[command(flatten)]
        pair: PairArgs,
        /// Number of student layers to replace by teacher blocks (0..=P; P gives the teacher).
        /// Without it and without --fit, --order auto exports the student itself with the
        /// chosen order in its student_config.json.
        #[arg(long, value_name = "K", conflicts_with = "fit")]
        layers: Option<usize>,
        #[command(flatten)]
        order: OrderArgs,
        #[command(flatten)]
        fit: FitArgs,
        /// Folder to write the model to.
        #[arg(long)]
        out: PathBuf,
        /// Replace --out if it exists and is not empty.
        #[arg(long)]
        force: bool,
    },
    /// Every model `boomgpu patch` can make from a teacher and its student:
    /// layers, parameters, bytes of weights and layer sources for each K,
    /// in both patch orders.
    Plan {
        #[command(flatten)]
        pair: PairArgs,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Serve every size of a boomerang pair (or one model) behind one
    /// OpenAI-compatible HTTP endpoint: /v1/models, /v1/completions,
    /// /v1/chat/completions, /health. Ctrl-C or SIGTERM stops it after the
    /// requests in flight.
    Serve(ServeCmd),
    /// Talk to a model: one --prompt, or an interactive conversation on stdin
    /// (/help lists the commands; Ctrl-C stops an answer).
    ///
    /// Without --model/--teacher/--student: the pair Qwen/Qwen3-4B-Base +
    /// Harvard-DCML/boomerang-qwen3-2.3B.
    Chat(ChatCmd),
}

/// The flags of `boomgpu serve`.
#[derive(Args)]
struct ServeCmd {
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    order: OrderArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require 'Authorization: Bearer KEY' on /v1/ requests.
    #[arg(long, env = "BOOMGPU_API_KEY")]
    api_key: Option<String>,
    /// Context of every request, prompt and answer (default: min(4096, max_position_embeddings)).
    #[arg(long)]
    ctx: Option<usize>,
    /// Requests generating at once (the rest wait in the queue).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests queued or running before the server answers 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Log one JSON object per request instead of a line of text.
    #[arg(long)]
    json_log: bool,
    /// dtype of the requests' KV caches: f16 (half the memory and reads) or f32.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    kv_dtype: String,
}

/// The `--kv-dtype` value (checked by clap).
fn kv_dtype(s: &str) -> boomgpu::gpu::DType {
    match s {
        "f32" => boomgpu::gpu::DType::F32,
        _ => boomgpu::gpu::DType::F16,
    }
}

impl ServeCmd {
    fn into_args(self) -> boomgpu::Result<boomgpu::commands::serve::ServeArgs> {
        use boomgpu::commands::serve::{ServeArgs, ServeTarget};
        let target = match (self.models.model, self.models.teacher, self.models.student) {
            (Some(m), _, _) => ServeTarget::Model(m),
            (None, Some(teacher), Some(student)) => ServeTarget::Pair {
                teacher,
                student,
                order: self.order.choice()?,
                params: self.models.prune.params(),
            },
            _ => {
                return Err(boomgpu::Error::Invalid(
                    "serve needs --model REF, or --teacher REF --student REF".into(),
                ))
            }
        };
        Ok(ServeArgs {
            target,
            host: self.host,
            port: self.port,
            api_key: self.api_key.filter(|k| !k.is_empty()),
            ctx: self.ctx,
            max_batch: self.max_batch,
            max_queue: self.max_queue,
            json_log: self.json_log,
            kv_dtype: kv_dtype(&self.kv_dtype),
        })
    }
}

/// The flags of `boomgpu chat`.
#[derive(Args)]
struct ChatCmd {
    #[command(flatten)]
    models: ModelArgs,
    /// Number of student layers to patch with teacher blocks (default: the student itself);
    /// `/layers N` changes it without reloading.
    #[arg(long)]
    layers: Option<usize>,
    #[command(flatten)]
    order: OrderArgs,
    /// Answer this once and exit; the answer alone goes to stdout.
    #[arg(long)]
    prompt: Option<String>,
    /// With --prompt: one JSON object on stdout instead (the answer, its
    /// speed, and submissions, dispatches and bytes per decoded token).
    #[arg(long, requires = "prompt")]
    json: bool,
    /// Most tokens per answer (default 512).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// 0 = greedy (default: generation_config.json, else greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass (1 = off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the top one (0 = off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalise tokens already in the conversation (1 = off; HF semantics).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Random seed, for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Context length in tokens (default min(4096, max_position_embeddings)).
    #[arg(long)]
    max_context: Option<usize>,
    /// dtype of the KV cache: f16 (half the memory and reads) or f32.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    kv_dtype: String,
    /// Stop the answer at this string (repeatable; not printed).
    #[arg(long)]
    stop: Vec<String>,
    /// Start at the largest size whose weights and KV cache (at --max-context) fit in SIZE
    /// (e.g. 300MiB), and say why.
    #[arg(long, value_name = "SIZE", conflicts_with_all = ["layers", "model"])]
    fit: Option<String>,
}

impl ChatCmd {
    /// `--fit`: the starting `--layers`, chosen from the pair's headers.
    fn choose_size(mut self) -> boomgpu::Result<ChatCmd> {
        let Some(size) = self.fit.take() else {
            return Ok(self);
        };
        let (t, s) = match (&self.models.teacher, &self.models.student) {
            (Some(t), Some(s)) => (t.clone(), s.clone()),
            _ => (
                boomgpu::commands::chat::DEFAULT_TEACHER.to_string(),
                boomgpu::commands::chat::DEFAULT_STUDENT.to_string(),
            ),
        };
        let params = self.models.prune.params();
        let f = boomgpu::commands::fit::for_pair(
            &t,
            &s,
            params,
            &self.order.choice()?,
            &size,
            self.max_context,
        )?;
        eprintln!(
            "{}\n(chat also keeps the rest of the teacher and student on the GPU so that /layers can \
             resize; `boomgpu patch --fit` exports the size alone)",
            f.report
        );
        self.layers = Some(f.k);
        Ok(self)
    }

    fn into_args(self) -> boomgpu::Result<boomgpu::commands::chat::ChatArgs> {
        use boomgpu::commands::chat::{ChatArgs, ChatTarget, DEFAULT_STUDENT, DEFAULT_TEACHER};
        let target = match (self.models.model, self.models.teacher, self.models.student) {
            (Some(m), _, _) => ChatTarget::Model(m),
            (None, Some(teacher), Some(student)) => ChatTarget::Pair { teacher, student },
            _ => ChatTarget::Pair {
                teacher: DEFAULT_TEACHER.into(),
                student: DEFAULT_STUDENT.into(),
            },
        };
        Ok(ChatArgs {
            target,
            layers: self.layers,
            order: self.order.choice()?,
            prune: self.models.prune.params(),
            prompt: self.prompt,
            json: self.json,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            max_context: self.max_context,
            stop: self.stop,
            kv_dtype: kv_dtype(&self.kv_dtype),
        })
    }
}

#[derive(Args)]
struct PairArgs {
    /// The teacher: a local Hugging Face folder or a hub id (org/name).
    #[arg(long)]
    teacher: String,
    /// Its student (local folder or hub id), with student_config.json.
    #[arg(long)]
    student: String,
    #[command(flatten)]
    prune: PruneArgs,
}

/// Mesa's Vulkan drivers print "error: XDG_RUNTIME_DIR is invalid or not
/// set" (twice) when that variable names no folder, though boomgpu opens no
/// window. Point it at a private folder first (before any thread starts).
fn quiet_vulkan_runtime_dir() {
    let set = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| PathBuf::from(d).is_dir());
    if set {
        return;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let dir = std::env::temp_dir().join(format!("boomgpu-runtime-{user}"));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    std::env::set_var("XDG_RUNTIME_DIR", dir);
}

fn main() -> ExitCode {
    quiet_vulkan_runtime_dir();
    let cli = Cli::parse();
    let opts = GpuOptions {
        adapter: cli.gpu.adapter.filter(|s| !s.is_empty()),
        backend: cli.gpu.backend.filter(|s| !s.is_empty()),
    };
    let result = match cli.command {
        Command::Devices { json } => boomgpu::commands::devices::run(&opts, json).map(|s| {
            print!("{s}");
            if json {
                println!();
            }
        }),
        Command::Distill(d) => d.run(&opts),
        Command::Eval {
            models,
            layers,
            order,
            fit,
            data,
            seq_len,
            json,
            csv,
            svg,
            baseline,
            before,
        } => {
            let compare = Compare { baseline, before };
            let layers = match (&models.teacher, &models.student, &fit.fit) {
                (Some(t), Some(s), Some(_)) => order
                    .choice()
                    .and_then(|c| fit.layers(t, s, models.prune.params(), &c, None))
                    .map(|k| k.map(|k| k.to_string())),
                (_, _, Some(_)) => Err(boomgpu::Error::Invalid(
                    "--fit chooses a size of a pair: give --teacher and --student".into(),
                )),
                _ => Ok(layers),
            };
            layers.and_then(|layers| {
                eval(
                    models,
                    layers,
                    order,
                    data,
                    seq_len,
                    json,
                    (csv, svg),
                    compare,
                    &opts,
                )
            })
        }
        Command::InitStudent {
            teacher,
            out,
            every,
            keep_first,
            keep_last,
            random_init,
            seed,
            force,
        } => boomgpu::commands::init_student::run(&InitStudentOptions {
            teacher,
            out,
            params: PruneParams {
                every,
                keep_first,
                keep_last,
            },
            random_init: random_init.then(|| seed.unwrap_or(0)),
            force,
        })
        .map(|s| print!("{s}")),
        Command::Patch {
            pair,
            layers,
            order,
            fit,
            out,
            force,
        } => order
            .choice()
            .and_then(|order| {
                boomgpu::commands::patch::run(&PatchOptions {
                    params: pair.prune.params(),
                    teacher: pair.teacher,
                    student: pair.student,
                    k: layers,
                    fit: fit.fit.map(|f| (f, fit.ctx)),
                    order,
                    out,
                    force,
                    gpu: opts.clone(),
                })
            })
            .map(|s| print!("{s}")),
        Command::Plan { pair, json } => boomgpu::commands::plan::run(&PlanOptions {
            params: pair.prune.params(),
            teacher: pair.teacher,
            student: pair.student,
            json,
        })
        .map(|s| print!("{s}")),
        Command::ImportGguf {
            file,
            out,
            dtype,
            force,
        } => boomgpu::commands::import_gguf::run(&file, &out, &dtype, force).map(|s| print!("{s}")),
        Command::Serve(c) => c
            .into_args()
            .and_then(|a| boomgpu::commands::serve::run(&opts, &a)),
        Command::Chat(c) => c
            .choose_size()
            .and_then(|c| c.into_args())
            .and_then(|a| boomgpu::commands::chat::run(&opts, &a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--fit SIZE [--ctx N]`: choose `--layers` by memory.
#[derive(Args, Clone, Default)]
struct FitArgs {
    /// Choose the largest size whose weights and KV cache (at --ctx) fit in SIZE (e.g. 300MiB,
    /// 8GiB), and say why.
    #[arg(long, value_name = "SIZE")]
    fit: Option<String>,
    /// With --fit: the context the KV cache is counted for [default: min(4096, max_position_embeddings)].
    #[arg(long, value_name = "N", requires = "fit")]
    ctx: Option<usize>,
}

impl FitArgs {
    /// `--layers` as given, or as `--fit` chooses (printed to stderr).
    fn layers(
        &self,
        teacher: &str,
        student: &str,
        params: Option<boomgpu::boomerang::PruneParams>,
        order: &OrderChoice,
        given: Option<usize>,
    ) -> boomgpu::Result<Option<usize>> {
        let Some(size) = &self.fit else {
            return Ok(given);
        };
        let f = boomgpu::commands::fit::for_pair(teacher, student, params, order, size, self.ctx)?;
        eprintln!("{}", f.report);
        Ok(Some(f.k))
    }
}

/// `eval`'s extra curves.
struct Compare {
    baseline: bool,
    before: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn eval(
    models: ModelArgs,
    layers: Option<String>,
    order: OrderArgs,
    data: PathBuf,
    seq_len: Option<usize>,
    json: bool,
    (csv, svg): (Option<PathBuf>, Option<PathBuf>),
    compare: Compare,
    opts: &GpuOptions,
) -> boomgpu::Result<()> {
    use boomgpu::commands::eval::{run, EvalArgs, Sizes, Target};
    let target = match (&models.model, &models.teacher, &models.student) {
        (Some(m), None, None) => Target::Model(m),
        (None, Some(t), Some(s)) => {
            let spec = layers.as_deref().ok_or_else(|| {
                boomgpu::Error::Invalid(
                    "with --teacher/--student, say which size: --layers K or --layers all".into(),
                )
            })?;
            let sizes: Sizes = spec.parse().map_err(boomgpu::Error::Invalid)?;
            Target::Pair {
                teacher: t,
                student: s,
                sizes,
                order: order.choice()?,
                params: models.prune.params(),
            }
        }
        _ => {
            return Err(boomgpu::Error::Invalid(
                "eval needs --model REF, or --teacher REF --student REF --layers K|all".into(),
            ))
        }
    };
    let a = EvalArgs {
        target,
        data: &data,
        seq_len,
        json,
        csv,
        svg,
        baseline: compare.baseline,
        before: compare.before.as_deref(),
    };
    match run(opts, &a) {
        Ok(s) => {
            print!("{s}");
            Ok(())
        }
        Err(e) => {
            // A script reading --json gets an object it can tell apart
            // from a result (and the exit status still says failure).
            if json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            }
            Err(e)
        }
    }
}
