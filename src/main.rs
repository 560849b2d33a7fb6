use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Talk to a model: one --prompt, or an interactive conversation on stdin
    /// (/help lists the commands; Ctrl-C stops an answer).
    Chat {
        /// Model folder or hub id (e.g. Qwen/Qwen3-4B).
        #[arg(long)]
        model: String,
        /// Answer this once and exit; the answer alone goes to stdout.
        #[arg(long)]
        prompt: Option<String>,
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
        /// Stop the answer at this string (repeatable; not printed).
        #[arg(long)]
        stop: Vec<String>,
    },
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
        Command::Chat {
            model,
            prompt,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed,
            max_context,
            stop,
        } => {
            let a = boomgpu::commands::chat::ChatArgs {
                model,
                prompt,
                max_tokens,
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty,
                seed,
                max_context,
                stop,
            };
            boomgpu::commands::chat::run(&opts, &a)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
