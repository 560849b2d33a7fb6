//! Memory plans for `boomgpu distill`: what a run will hold on the GPU and
//! on the host, from config.json alone, before any weight is read.
//!
//! A plan is not a formula kept beside the trainer (it would drift from
//! it). It is a rehearsal: the trainer itself runs on a dry-run GPU
//! (`Gpu::open_dry`), on synthetic models of the configs' shapes, through
//! the phases a run goes through (held-out evaluation, two optimiser steps
//! so that the buffer pool reaches its steady state, a checkpoint's
//! readback). The allocator counts every buffer exactly as it would on the
//! device, so the planned peak is the peak the run will reach on this
//! adapter, and tags say what the peak is made of.

use serde_json::{json, Value};

use super::data::Corpus;
use super::offload::MOMENT_BLOCK;
use super::run::{DistillOptions, Trainer};
use super::student::group_shape;
use crate::error::{format_bytes, Error, Result};
use crate::gpu::alloc::BUDGET_LIMIT;
use crate::gpu::{DType, Gpu, GpuOptions, MemoryTag, TaggedBytes};
use crate::model::decoder::Decoder;
use crate::model::ModelConfig;

/// Memory tags of a distillation run (the GPU layer owns 0 and 1).
pub mod tag {
    use crate::gpu::MemoryTag;
    pub const TEACHER: MemoryTag = MemoryTag(MemoryTag::FIRST_FREE);
    pub const STUDENT: MemoryTag = MemoryTag(MemoryTag::FIRST_FREE + 1);
    pub const GRADIENTS: MemoryTag = MemoryTag(MemoryTag::FIRST_FREE + 2);
    pub const OPTIMIZER: MemoryTag = MemoryTag(MemoryTag::FIRST_FREE + 3);
    pub const ACTIVATIONS: MemoryTag = MemoryTag(MemoryTag::FIRST_FREE + 4);
    pub const LOGITS: MemoryTag = MemoryTag(MemoryTag::FIRST_FREE + 5);
}

/// The GPU parts of a plan, in the order they are printed: JSON key and
/// what it holds.
pub const GPU_PARTS: &[(&str, &str)] = &[
    ("teacher_weights", "teacher weights"),
    ("student_weights", "student weights the GPU computes with"),
    ("gradients", "gradients (f32)"),
    ("optimizer_states", "AdamW moments m, v and the norm"),
    (
        "activations",
        "activations, teacher hidden states, backward",
    ),
    ("logits_loss", "logits and loss workspace (chunked)"),
    ("staging", "staging: kernel parameters, readback"),
    ("allocator_slack", "allocator slack: pooled and rounding"),
];

/// The device peak split into `GPU_PARTS` (same order): what each part
/// held when the program's live bytes peaked, and as slack the rest of
/// the device peak (rounding to pool sizes, buffers pooled for reuse).
pub fn gpu_parts(t: &TaggedBytes, device_peak: u64) -> Vec<u64> {
    let by = |m: MemoryTag| t.by_tag[m.0 as usize];
    let tagged: u64 = t.by_tag.iter().sum();
    vec![
        by(tag::TEACHER),
        by(tag::STUDENT),
        by(tag::GRADIENTS),
        by(tag::OPTIMIZER),
        // Storage made outside the tagged phases (rotary tables, the
        // batch's ids) is working memory of the steps.
        by(tag::ACTIVATIONS) + by(MemoryTag::UNTAGGED),
        by(tag::LOGITS),
        by(MemoryTag::STAGING),
        device_peak.saturating_sub(tagged),
    ]
}

/// What is planned: the models' shapes and the run's settings.
#[derive(Clone, Debug)]
pub struct PlanSpec {
    pub teacher: ModelConfig,
    /// dtype the teacher's weights have on the GPU (as stored).
    pub teacher_dtype: DType,
    pub student: ModelConfig,
    /// Aligned hidden-state pairs (student, teacher), HF indices.
    pub pairs: Vec<(usize, usize)>,
    pub seq_len: usize,
    pub opts: DistillOptions,
    /// Whether the run evaluates held-out sequences.
    pub eval: bool,
    /// Lean mode: bf16 compute weights on the GPU, f32 masters and AdamW
    /// moments on the host, gradients leaving the GPU layer by layer.
    pub lean: bool,
    /// The teacher's layer matrices in 8-bit blocks (`Decoder::load_8bit`).
    pub teacher_8bit: bool,
}

impl PlanSpec {
    pub fn mode(&self) -> &'static str {
        if self.lean {
            "lean"
        } else {
            "exact"
        }
    }

    pub fn settings(&self) -> Value {
        json!({
            "mode": self.mode(),
            "seq_len": self.seq_len,
            "batch": self.opts.batch,
            "grad_accum": self.opts.grad_accum,
            "tokens_per_step": self.seq_len * self.opts.batch * self.opts.grad_accum,
            "recompute": self.opts.recompute || self.lean,
            "teacher_dtype": self.teacher_dtype.name(),
            "teacher_8bit": self.teacher_8bit,
            "student_dtype": if self.lean {
                "bf16 matrices and f32 vectors on the GPU, f32 masters on the host"
            } else {
                "f32"
            },
            "optimizer": if self.lean && self.opts.adam_8bit {
                "AdamW on the host (all threads), moments in 8-bit blocks"
            } else if self.lean {
                "AdamW on the host (all threads), f32 moments"
            } else {
                "AdamW on the GPU, f32 moments"
            },
            "gradients": if self.lean {
                "each layer's leave the GPU after its backward; summed on the host"
            } else {
                "f32 on the GPU"
            },
            "aligned_pairs": self.pairs.len(),
            "held_out_eval": self.eval,
        })
    }
}

/// A memory plan: bytes by part on the GPU and on the host.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub spec: PlanSpec,
    /// The adapter the plan was rehearsed on (its limits decide blocks
    /// and chunk sizes).
    pub adapter: String,
    /// The adapter's largest device-local heap, where the driver says.
    pub adapter_memory: Option<u64>,
    pub gpu_peak_bytes: u64,
    /// Bytes of pooled buffers the allocator released to stay within the
    /// budget (0 when the run is planned without one).
    pub pool_released: u64,
    /// Bytes of each of `GPU_PARTS` at the peak; they sum to the peak.
    pub gpu_parts: Vec<u64>,
    pub host_peak_bytes: u64,
    pub host_parts: Vec<(&'static str, u64)>,
    /// The host memory the run may use, where known (set by the caller).
    pub host_budget: Option<u64>,
    /// Choices made for the plan's sake, printed with it.
    pub notes: Vec<String>,
    pub teacher_params: u64,
    pub student_params: u64,
}

/// Rehearse a run on a dry-run GPU of the adapter `gpu_opts` picks.
pub fn rehearse(gpu_opts: &GpuOptions, spec: &PlanSpec) -> Result<MemoryPlan> {
    rehearse_under(gpu_opts, spec, None)
}

/// The plan of a run under `budget`: as `rehearse`, and when that peak is
/// over the budget, rehearsed again with the budget set. The allocator
/// then releases buffers it pools for reuse (largest first) whenever a
/// new one would cross the budget, as the run will: a run whose live
/// bytes fit is planned at or under its budget, at the cost of creating
/// again, in later steps, some buffers it released. When even that fails,
/// the unconstrained plan (over the budget).
pub fn plan_within(
    gpu_opts: &GpuOptions,
    spec: &PlanSpec,
    budget: Option<u64>,
) -> Result<MemoryPlan> {
    within_budget(gpu_opts, rehearse(gpu_opts, spec)?, budget)
}

/// `plan_within` from the plan rehearsed without a budget.
pub fn within_budget(
    gpu_opts: &GpuOptions,
    free: MemoryPlan,
    budget: Option<u64>,
) -> Result<MemoryPlan> {
    let Some(b) = budget.filter(|&b| free.gpu_peak_bytes > b) else {
        return Ok(free);
    };
    match rehearse_under(gpu_opts, &free.spec, Some(b)) {
        Ok(p) => Ok(p),
        Err(Error::OverLimit { what, .. }) if what == BUDGET_LIMIT => Ok(free),
        Err(e) => Err(e),
    }
}

fn rehearse_under(
    gpu_opts: &GpuOptions,
    spec: &PlanSpec,
    budget: Option<u64>,
) -> Result<MemoryPlan> {
    let gpu = Gpu::open_dry(gpu_opts)?;
    gpu.alloc.set_budget(budget);
    let teacher = {
        let _t = gpu.alloc.tagged(tag::TEACHER);
        if spec.teacher_8bit {
            Decoder::shaped_8bit(&gpu, &spec.teacher, spec.teacher_dtype)?
        } else {
            Decoder::shaped(&gpu, &spec.teacher, spec.teacher_dtype)?
        }
    };
    let student = {
        let _t = gpu.alloc.tagged(tag::STUDENT);
        if spec.lean {
            Decoder::shaped_as(&gpu, &spec.student, DType::BF16, DType::F32)?
        } else {
            Decoder::shaped(&gpu, &spec.student, DType::F32)?
        }
    };
    let (teacher_params, student_params) = (teacher.params(), student.params());
    let seq = vec![0u32; spec.seq_len];
    let corpus = Corpus {
        seq_len: spec.seq_len,
        train: vec![seq.clone()],
        eval: if spec.eval { vec![seq] } else { Vec::new() },
    };
    let mut opts = spec.opts.clone();
    opts.steps = opts.steps.max(2);
    let mut tr = if spec.lean {
        // No host values at all: a plan of a 5B student costs no host
        // memory (the host's bytes are planned from the parameter count).
        let zeros = |p: &super::student::StudentParams| Ok(vec![Vec::new(); p.params.len()]);
        Trainer::new_lean(
            &gpu,
            &teacher,
            student,
            spec.pairs.clone(),
            &corpus,
            opts,
            zeros,
        )?
    } else {
        Trainer::new(&gpu, &teacher, student, spec.pairs.clone(), &corpus, opts)?
    };
    tr.evaluate()?;
    for _ in 0..2 {
        tr.train_step()?;
    }
    tr.evaluate()?;
    tr.rehearse_checkpoint_reads()?;
    let stats = gpu.memory();
    let largest = tr
        .params
        .groups()
        .iter()
        .map(|(_, g)| group_shape(g).iter().product::<usize>() as u64)
        .max()
        .unwrap_or(0);
    let host_parts = host_parts(student_params, largest, spec.lean, spec.opts.adam_8bit);
    Ok(MemoryPlan {
        spec: spec.clone(),
        adapter: gpu.describe(),
        adapter_memory: crate::gpu::device::device_memory_bytes(&gpu.adapter),
        gpu_peak_bytes: stats.peak_device_bytes,
        pool_released: stats.released,
        gpu_parts: gpu_parts(&stats.at_peak, stats.peak_device_bytes),
        host_peak_bytes: host_parts.iter().map(|p| p.1).sum(),
        host_parts,
        host_budget: None,
        notes: Vec::new(),
        teacher_params,
        student_params,
    })
}

/// Host memory beyond the program itself. The teacher's safetensors are
/// mapped, not copied (the page cache holds them and can drop them). Lean
/// mode holds masters, moments and gradient sums; checkpoints are written
/// one tensor at a time (its f32 values, a copy, and its bytes).
fn host_parts(
    student_params: u64,
    largest_tensor: u64,
    lean: bool,
    adam_8bit: bool,
) -> Vec<(&'static str, u64)> {
    let mut parts = Vec::new();
    if lean {
        // Masters and gradient sums in f32; m and v in f32, or one byte
        // each plus an f32 scale per block.
        let moments = if adam_8bit {
            2 * (student_params + 4 * student_params.div_ceil(MOMENT_BLOCK as u64))
        } else {
            8 * student_params
        };
        parts.push(("masters_moments_gradients", 8 * student_params + moments));
    }
    parts.push(("checkpoint_writing", 12 * largest_tensor));
    parts
}

impl MemoryPlan {
    pub fn fits(&self, budget: Option<u64>) -> Option<bool> {
        budget.map(|b| self.gpu_peak_bytes <= b)
    }

    /// Whether the host's part fits its budget, where one is known.
    pub fn host_fits(&self) -> Option<bool> {
        self.host_budget.map(|b| self.host_peak_bytes <= b)
    }

    pub fn to_json(&self, budget: Option<u64>) -> Value {
        let parts: serde_json::Map<String, Value> = GPU_PARTS
            .iter()
            .zip(&self.gpu_parts)
            .map(|((k, _), v)| (k.to_string(), json!(v)))
            .collect();
        let host: serde_json::Map<String, Value> = self
            .host_parts
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({
            "adapter": self.adapter,
            "adapter_memory_bytes": self.adapter_memory,
            "teacher_params": self.teacher_params,
            "student_params": self.student_params,
            "gpu_peak_bytes": self.gpu_peak_bytes,
            "pool_released_bytes": self.pool_released,
            "host_peak_bytes": self.host_peak_bytes,
            "budget_bytes": budget,
            "fits": self.fits(budget),
            "host_budget_bytes": self.host_budget,
            "host_fits": self.host_fits(),
            "notes": self.notes,
            "settings": self.spec.settings(),
            "parts": parts,
            "host_parts": host,
        })
    }

    /// The plan as a table for people.
    pub fn describe(&self, budget: Option<u64>) -> String {
        let s = &self.spec;
        let mut out = format!(
            "memory plan ({} mode, rehearsed on {}): teacher {} layers, {:.2}B parameters in \
             {}{}; student {} layers, {:.2}B parameters{}; {} × {} tokens × {} micro-batches{}\n",
            s.mode(),
            self.adapter,
            s.teacher.num_layers,
            self.teacher_params as f64 / 1e9,
            s.teacher_dtype.name(),
            if s.teacher_8bit {
                " (layer matrices in 8-bit blocks)"
            } else {
                ""
            },
            s.student.num_layers,
            self.student_params as f64 / 1e9,
            if s.lean {
                " (bf16 on the GPU, f32 masters and AdamW on the host)"
            } else {
                " in f32"
            },
            s.opts.batch,
            s.seq_len,
            s.opts.grad_accum,
            if s.opts.recompute || s.lean {
                ", --recompute"
            } else {
                ""
            }
        );
        for ((_, what), bytes) in GPU_PARTS.iter().zip(&self.gpu_parts) {
            out.push_str(&format!("  {:>10}  {what}\n", format_bytes(*bytes)));
        }
        out.push_str(&format!(
            "  {:>10}  GPU peak{}\n",
            format_bytes(self.gpu_peak_bytes),
            if self.pool_released > 0 {
                " (within the budget: pooled buffers are released and made again as it requires)"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "  {:>10}  host peak ({})\n",
            format_bytes(self.host_peak_bytes),
            if s.lean {
                "masters, moments, gradient sums; checkpoint writing"
            } else {
                "checkpoint writing"
            }
        ));
        match budget {
            Some(b) if self.gpu_peak_bytes <= b => {
                out.push_str(&format!("  fits the GPU budget of {}\n", format_bytes(b)))
            }
            Some(b) => out.push_str(&format!(
                "  does NOT fit the GPU budget of {} (over by {})\n",
                format_bytes(b),
                format_bytes(self.gpu_peak_bytes - b)
            )),
            None => out.push_str("  no GPU budget known: pass --memory-budget to check one\n"),
        }
        match self.host_budget {
            Some(b) if self.host_peak_bytes > b => out.push_str(&format!(
                "  does NOT fit the host budget of {} (over by {})\n",
                format_bytes(b),
                format_bytes(self.host_peak_bytes - b)
            )),
            Some(b) => out.push_str(&format!("  fits the host budget of {}\n", format_bytes(b))),
            None => {}
        }
        for n in &self.notes {
            out.push_str(&format!("  {n}\n"));
        }
        out
    }
}

/// A change that would make a plan fit `budget`, checked by its own
/// rehearsal: `--recompute`, `--grad-accum` in place of `--batch`, and
/// the longest `--seq-len` (halving) that fits.
pub fn suggestion(gpu_opts: &GpuOptions, spec: &PlanSpec, budget: u64) -> Result<String> {
    let fits = |s: &PlanSpec| -> Result<Option<u64>> {
        let p = plan_within(gpu_opts, s, Some(budget))?;
        Ok((p.gpu_peak_bytes <= budget).then_some(p.gpu_peak_bytes))
    };
    let mut base = spec.clone();
    // Lean mode always recomputes.
    let recompute = if base.lean { "" } else { "--recompute " };
    if !base.opts.recompute && !base.lean {
        base.opts.recompute = true;
        if let Some(peak) = fits(&base)? {
            return Ok(format!("--recompute (peak {})", format_bytes(peak)));
        }
    }
    if base.opts.batch > 1 {
        let mut s = base.clone();
        s.opts.grad_accum *= s.opts.batch;
        s.opts.batch = 1;
        if let Some(peak) = fits(&s)? {
            return Ok(format!(
                "{recompute}--batch 1 --grad-accum {} (same tokens per step; peak {})",
                s.opts.grad_accum,
                format_bytes(peak)
            ));
        }
        base = s;
    }
    let mut s = base.clone();
    // The plan of `s` as last rehearsed, for the message when nothing fits.
    let mut last = None;
    while s.seq_len > 64 {
        s.seq_len /= 2;
        let p = plan_within(gpu_opts, &s, Some(budget))?;
        let peak = p.gpu_peak_bytes;
        last = Some(p);
        if peak <= budget {
            return Ok(format!(
                "{recompute}{}--seq-len {} (peak {})",
                if s.opts.batch == 1 && spec.opts.batch > 1 {
                    format!("--batch 1 --grad-accum {} ", s.opts.grad_accum)
                } else {
                    String::new()
                },
                s.seq_len,
                format_bytes(peak)
            ));
        }
    }
    if !spec.teacher_8bit {
        let mut q = base.clone();
        q.teacher_8bit = true;
        if let Some(peak) = fits(&q)? {
            return Ok(format!(
                "{recompute}--teacher-8bit (the teacher's layer matrices in 8-bit blocks; \
                 peak {})",
                format_bytes(peak)
            ));
        }
    }
    let weights = match last {
        Some(p) => p,
        None => rehearse(gpu_opts, &s)?,
    };
    let fixed: u64 = weights.gpu_parts[..4].iter().sum();
    Ok(format!(
        "none of --recompute, --grad-accum or a shorter --seq-len: the weights, gradients and \
         optimiser states alone take {} in {} mode",
        format_bytes(fixed),
        spec.mode()
    ))
}

/// The refusal of a plan over its budget: the numbers, and what would fit.
pub fn over_budget(plan: &MemoryPlan, budget: u64, suggestion: &str) -> Error {
    Error::Invalid(format!(
        "the planned GPU peak is {} ({} bytes), over the budget of {} ({} bytes): {}. Nothing \
         was loaded. What would fit: {}",
        format_bytes(plan.gpu_peak_bytes),
        plan.gpu_peak_bytes,
        format_bytes(budget),
        budget,
        GPU_PARTS
            .iter()
            .zip(&plan.gpu_parts)
            .filter(|(_, &b)| b > 0)
            .map(|((k, _), b)| format!("{k} {}", format_bytes(*b)))
            .collect::<Vec<_>>()
            .join(", "),
        suggestion
    ))
}
