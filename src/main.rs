use std::path::PathBuf;
use std::process::ExitCode;

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
        Command::ImportGguf {
            file,
            out,
            dtype,
            force,
        } => boomgpu::commands::import_gguf::run(&file, &out, &dtype, force).map(|s| print!("{s}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
