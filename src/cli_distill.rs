//! The flags of `boomgpu distill` (a module of the binary, beside
//! main.rs, so that each file stays readable).

use std::path::PathBuf;

use clap::Args;

use boomgpu::gpu::GpuOptions;

use crate::PruneArgs;

#[derive(Args)]
pub struct DistillCli {
    /// Teacher: a Hugging Face folder or hub id.
    #[arg(long)]
    teacher: String,
    /// Student to continue from (default: prune the teacher).
    #[arg(long)]
    student: Option<String>,
    /// Training text: .txt or .jsonl files ("text" or pre-tokenised "input_ids"), or folders of them.
    #[arg(long, required_unless_present = "plan", num_args = 1..)]
    data: Vec<PathBuf>,
    /// Folder for the student, its checkpoint and student_config.json.
    #[arg(long, required_unless_present = "plan")]
    out: Option<PathBuf>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate (AdamW; 0 is allowed).
    #[arg(long, default_value_t = 3e-4)]
    lr: f32,
    /// Linear warm-up: a fraction of --steps if below 1, else a number of steps.
    #[arg(long, default_value_t = 0.01)]
    warmup: f64,
    /// Weight of the KL term.
    #[arg(long, default_value_t = 0.1)]
    kl_weight: f32,
    /// Total weight of the cosine alignment terms (split over the pairs).
    #[arg(long, default_value_t = 2.0)]
    cos_weight: f32,
    /// Distillation temperature τ.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f32,
    /// Gradient-norm clipping (0 disables).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Seed of the data order (and of --random-init).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Evaluate on the held-out sequences every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Tokens held out from training for evaluation.
    #[arg(long, default_value_t = 0)]
    eval_tokens: usize,
    /// Continue the run whose --out is DIR from its last checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// One JSON line per step: step, loss, ce, kl, cos, lr, grad_norm, tokens_per_s, peak_bytes.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Fresh random student weights instead of pruned copies (ablation).
    #[arg(long)]
    random_init: bool,
    /// Activation checkpointing: keep only each layer's input and
    /// recompute the layer in backward (less GPU memory, ~1/3 more work).
    #[arg(long)]
    recompute: bool,
    /// dtype of the written student: f32, bf16 or f16 (default: the
    /// teacher's). Training and checkpoints stay f32.
    #[arg(long, value_name = "DTYPE")]
    save_dtype: Option<String>,
    #[command(flatten)]
    prune: PruneArgs,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the memory plan (GPU bytes by part, host bytes, whether it
    /// fits) and stop. Needs only config.json (a folder or a hub id):
    /// no weights, no --data, no --out.
    #[arg(long)]
    plan: bool,
    /// With --plan: one JSON object (gpu_peak_bytes, host_peak_bytes,
    /// fits, settings, parts).
    #[arg(long, requires = "plan")]
    json: bool,
    /// GPU memory the run may use, e.g. 24GiB or 900MiB (default: the
    /// adapter's memory less 1/16, at least 512 MiB). A plan over it is
    /// refused before anything is loaded.
    #[arg(long, value_name = "SIZE")]
    memory_budget: Option<String>,
    /// Host memory the run may use (default: what the host reports
    /// available). Lean mode picks 8-bit AdamW moments when f32 ones would
    /// not fit; a plan over it is refused before anything is loaded.
    #[arg(long, value_name = "SIZE")]
    host_memory_budget: Option<String>,
    /// Lean mode: bf16 compute weights on the GPU, f32 master weights and
    /// AdamW on the host, each layer's gradients off the GPU as backward
    /// produces them (layers recomputed). Chosen by itself when exact
    /// mode does not fit the budget.
    #[arg(long, conflicts_with = "exact")]
    lean: bool,
    /// Exact mode even when it does not fit: f32 weights, gradients and
    /// AdamW states all on the GPU.
    #[arg(long)]
    exact: bool,
    /// The teacher's layer matrices in 8-bit blocks (32 values per
    /// scale) on the GPU: about half its memory, a little accuracy.
    #[arg(long)]
    teacher_8bit: bool,
    /// AdamW moments in 8-bit blocks on the host (256 values per scale, a
    /// small float code): 10 instead of 16 bytes per student parameter of
    /// host memory. Implies lean mode.
    #[arg(long, conflicts_with = "exact")]
    adam_8bit: bool,
}

impl DistillCli {
    pub fn run(self, opts: &GpuOptions) -> boomgpu::Result<()> {
        let DistillCli {
            teacher,
            student,
            data,
            out,
            steps,
            seq_len,
            batch,
            grad_accum,
            lr,
            warmup,
            kl_weight,
            cos_weight,
            temperature,
            weight_decay,
            max_grad_norm,
            seed,
            save_every,
            eval_every,
            eval_tokens,
            resume,
            log,
            random_init,
            recompute,
            save_dtype,
            prune,
            quiet,
            plan,
            json,
            memory_budget,
            host_memory_budget,
            lean,
            exact,
            teacher_8bit,
            adam_8bit,
        } = self;
        let a = boomgpu::commands::distill::DistillArgs {
            teacher,
            student,
            data,
            out,
            seq_len,
            opts: boomgpu::train::run::DistillOptions {
                steps,
                batch,
                grad_accum,
                lr,
                warmup,
                weights: boomgpu::train::loss::LossWeights {
                    kl: kl_weight,
                    cos: cos_weight,
                    temperature,
                },
                weight_decay,
                max_grad_norm,
                seed,
                recompute,
                adam_8bit,
                ..Default::default()
            },
            prune: prune.params(),
            random_init,
            save_every,
            eval_every,
            eval_tokens,
            resume,
            log,
            save_dtype,
            quiet,
            memory_budget,
            host_budget: host_memory_budget,
            mode: boomgpu::commands::distill::TrainMode::from_flags(lean || adam_8bit, exact),
            teacher_8bit,
        };
        if plan {
            boomgpu::commands::distill::plan_only(opts, &a, json).map(|s| print!("{s}"))
        } else {
            boomgpu::commands::distill::run(opts, &a).map(|s| print!("{s}"))
        }
    }
}
