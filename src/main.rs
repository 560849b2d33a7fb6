use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use boomgpu::boomerang::{Direction, PruneParams};
use boomgpu::commands::init_student::InitStudentOptions;
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

#[derive(Subcommand)]
enum Command {
    /// List GPU adapters, their features and limits, and which one boomgpu uses.
    Devices {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a model on a text file.
    Eval {
        /// Model folder or hub id (e.g. Qwen/Qwen3-4B-Base).
        #[arg(long)]
        model: String,
        /// UTF-8 text file to score.
        #[arg(long)]
        data: PathBuf,
        /// Tokens per window (default: min(2048, max_position_embeddings)).
        #[arg(long)]
        seq_len: Option<usize>,
        /// One JSON line: perplexity, nll (total, nats), tokens, predicted, layers, params.
        #[arg(long)]
        json: bool,
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
    /// Export an intermediate model (boomerang step 3): the student with K of
    /// its layers replaced by the teacher blocks they stand for, as a
    /// Hugging Face folder. Needs no GPU: tensors are copied byte for byte.
    /// `boomgpu plan` lists every K.
    Patch {
        #[command(flatten)]
        pair: PairArgs,
        /// Number of student layers to replace by teacher blocks (0..=P; P gives the teacher).
        #[arg(long, value_name = "K")]
        layers: usize,
        /// Patch the first K student layers (default for llama).
        #[arg(long, conflicts_with = "last")]
        first: bool,
        /// Patch the last K student layers (default for qwen3 and gpt_neox).
        #[arg(long)]
        last: bool,
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
}

#[derive(Args)]
struct PairArgs {
    /// The teacher: a local Hugging Face folder or a hub id (org/name).
    #[arg(long)]
    teacher: String,
    /// Its student (local folder or hub id), with student_config.json.
    #[arg(long)]
    student: String,
    /// For a student without student_config.json: the --every it was made with [default: 2].
    #[arg(long)]
    every: Option<usize>,
    /// For a student without student_config.json: its --keep-first [default: 1].
    #[arg(long)]
    keep_first: Option<usize>,
    /// For a student without student_config.json: its --keep-last [default: 2].
    #[arg(long)]
    keep_last: Option<usize>,
}

fn main() -> ExitCode {
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
        Command::Eval {
            model,
            data,
            seq_len,
            json,
        } => {
            let a = boomgpu::commands::eval::EvalArgs {
                model: &model,
                data: &data,
                seq_len,
                json,
            };
            boomgpu::commands::eval::run(&opts, &a).map(|s| print!("{s}"))
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
            first,
            last,
            out,
            force,
        } => boomgpu::commands::patch::run(&PatchOptions {
            params: prune_params(pair.every, pair.keep_first, pair.keep_last),
            teacher: pair.teacher,
            student: pair.student,
            k: layers,
            direction: if first {
                Some(Direction::First)
            } else if last {
                Some(Direction::Last)
            } else {
                None
            },
            out,
            force,
        })
        .map(|s| print!("{s}")),
        Command::Plan { pair, json } => boomgpu::commands::plan::run(&PlanOptions {
            params: prune_params(pair.every, pair.keep_first, pair.keep_last),
            teacher: pair.teacher,
            student: pair.student,
            json,
        })
        .map(|s| print!("{s}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
