//! The optimiser loop: gradient accumulation over micro-batches, global
//! gradient-norm clipping and AdamW on the GPU, the cosine schedule with
//! linear warm-up, held-out evaluation, and checkpoints that resume to the
//! exact weights of an uninterrupted run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::data::{permutation, Corpus, DataPosition};
use super::loss::{micro_step, GradSink, LossParts, LossWeights, MicroBatch};
use super::offload::{embed_blocks, read_grad, HostSink, HostSlot, HostState, PendingUpdate};
use super::plan::tag;
use super::student::{export_plan, group_shape, group_values, StudentParams};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::model::decoder::Decoder;
use crate::model::weights::{encode_f32, write_safetensors_streamed, Checkpoint};
use crate::model::ModelConfig;
use crate::ops::adamw::{adamw_step, AdamW, GradNorm};

#[derive(Clone, Debug)]
pub struct DistillOptions {
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    pub grad_accum: usize,
    pub lr: f32,
    /// Warm-up: a fraction of the steps when below 1, else a step count.
    pub warmup: f64,
    pub weights: LossWeights,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    pub seed: u64,
    /// Activation checkpointing: recompute each student layer in backward.
    pub recompute: bool,
    /// AdamW moments in 8-bit blocks (lean mode, where they are on the host).
    pub adam_8bit: bool,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            steps: 500,
            batch: 1,
            grad_accum: 1,
            lr: 3e-4,
            warmup: 0.01,
            weights: LossWeights::default(),
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            seed: 0,
            recompute: false,
            adam_8bit: false,
        }
    }
}

impl DistillOptions {
    pub fn warmup_steps(&self) -> usize {
        if self.warmup < 1.0 {
            (self.steps as f64 * self.warmup).ceil() as usize
        } else {
            self.warmup as usize
        }
    }

    /// Learning rate of optimiser step `s` (0-based), as the Hugging Face
    /// cosine schedule with warm-up gives it.
    pub fn lr_at(&self, s: usize) -> f32 {
        let w = self.warmup_steps();
        let f = if s < w {
            s as f64 / w.max(1) as f64
        } else {
            let progress = (s - w) as f64 / (self.steps.saturating_sub(w)).max(1) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        };
        (self.lr as f64 * f) as f32
    }
}

/// One line of the training log.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub ce: f64,
    pub kl: f64,
    pub cos: f64,
    pub lr: f32,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub peak_bytes: u64,
}

impl StepLog {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "step": self.step, "loss": self.loss, "ce": self.ce, "kl": self.kl, "cos": self.cos,
            "lr": self.lr, "grad_norm": self.grad_norm, "tokens_per_s": self.tokens_per_s,
            "peak_bytes": self.peak_bytes,
        })
    }
}

pub struct Trainer<'a> {
    gpu: &'a Gpu,
    teacher: &'a Decoder,
    pub student: Decoder,
    pub params: StudentParams,
    pairs: Vec<(usize, usize)>,
    corpus: &'a Corpus,
    pub opts: DistillOptions,
    pub pos: DataPosition,
    perm: Vec<usize>,
    /// Optimiser steps completed.
    pub step: usize,
    /// The gradient norm on the GPU (exact mode; lean mode sums it on the
    /// host).
    norm: Option<GradNorm>,
    /// Lean mode: masters, moments and gradient sums on the host.
    pub host: Option<HostState>,
    /// Lean mode: the last step's update, not yet run. It runs on host
    /// threads while the GPU computes the next micro-batch's teacher
    /// forward (which reads no student weight), and at once before
    /// anything else reads the weights (`settle`).
    pending: Option<PendingUpdate>,
    /// Small files written into every checkpoint (e.g. student_config.json).
    pub checkpoint_files: Vec<(String, String)>,
}

impl<'a> Trainer<'a> {
    pub fn new(
        gpu: &'a Gpu,
        teacher: &'a Decoder,
        student: Decoder,
        pairs: Vec<(usize, usize)>,
        corpus: &'a Corpus,
        opts: DistillOptions,
    ) -> Result<Trainer<'a>> {
        if opts.batch == 0 || opts.grad_accum == 0 {
            return Err(Error::Invalid(
                "--batch and --grad-accum must be at least 1".into(),
            ));
        }
        if opts.adam_8bit {
            return Err(Error::Invalid(
                "--adam-8bit stores the AdamW moments on the host in 8 bits: it needs lean mode \
                 (--lean), not exact mode"
                    .into(),
            ));
        }
        let params = StudentParams::new(gpu, &student)?;
        Trainer::with_params(gpu, teacher, student, params, pairs, corpus, opts, None)
    }

    /// Lean mode: `student` computes in 16-bit matrices and f32 vectors
    /// (`Decoder::shaped_as`); `masters` gives every parameter's f32
    /// values (in `StudentParams` order), which stay on the host with the
    /// moments, and are written into the GPU's copy. Layers are recomputed
    /// in backward, each layer's gradients leaving the GPU as it is done.
    #[allow(clippy::too_many_arguments)]
    pub fn new_lean(
        gpu: &'a Gpu,
        teacher: &'a Decoder,
        student: Decoder,
        pairs: Vec<(usize, usize)>,
        corpus: &'a Corpus,
        mut opts: DistillOptions,
        masters: impl FnOnce(&StudentParams) -> Result<Vec<Vec<f32>>>,
    ) -> Result<Trainer<'a>> {
        opts.recompute = true;
        let params = {
            let _t = gpu.alloc.tagged(tag::STUDENT);
            StudentParams::new_lean(gpu, &student)?
        };
        let values = masters(&params)?;
        if values.len() != params.params.len() {
            return Err(Error::Invalid(format!(
                "{} master tensors for {} parameters",
                values.len(),
                params.params.len()
            )));
        }
        // A rehearsal holds no host values (its sizes are planned apart).
        for (p, v) in params.params.iter().zip(&values).filter(|_| !gpu.is_dry()) {
            if v.len() != p.value.numel() {
                return Err(Error::Invalid(format!(
                    "master weights of '{}': {} values for {} elements",
                    p.name,
                    v.len(),
                    p.value.numel()
                )));
            }
        }
        let mut host = HostState::new(values, opts.adam_8bit);
        if gpu.is_dry() {
            host = host.dry();
        }
        host.upload(gpu, &params)?;
        Trainer::with_params(
            gpu,
            teacher,
            student,
            params,
            pairs,
            corpus,
            opts,
            Some(host),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with_params(
        gpu: &'a Gpu,
        teacher: &'a Decoder,
        student: Decoder,
        params: StudentParams,
        pairs: Vec<(usize, usize)>,
        corpus: &'a Corpus,
        opts: DistillOptions,
        host: Option<HostState>,
    ) -> Result<Trainer<'a>> {
        let norm = if host.is_some() {
            None
        } else {
            let sizes: Vec<usize> = params.params.iter().map(|p| p.grad.numel()).collect();
            let _t = gpu.alloc.tagged(tag::OPTIMIZER);
            Some(GradNorm::new(gpu, &sizes)?)
        };
        let pos = DataPosition {
            seed: opts.seed,
            epoch: 0,
            index: 0,
        };
        let perm = permutation(corpus.train.len(), opts.seed, 0);
        Ok(Trainer {
            gpu,
            teacher,
            student,
            params,
            pairs,
            corpus,
            opts,
            pos,
            perm,
            step: 0,
            norm,
            host,
            pending: None,
            checkpoint_files: Vec::new(),
        })
    }

    /// Whether this run is in lean mode.
    pub fn is_lean(&self) -> bool {
        self.host.is_some()
    }

    /// AdamW's settings for parameter `p` at learning rate `lr`.
    fn adamw_for(&self, p: &super::student::Param, lr: f32) -> AdamW {
        AdamW {
            lr,
            beta1: self.opts.betas.0,
            beta2: self.opts.betas.1,
            eps: self.opts.eps,
            weight_decay: if p.decay { self.opts.weight_decay } else { 0.0 },
        }
    }

    /// One optimiser step; the log describes the loss before the update.
    pub fn train_step(&mut self) -> Result<StepLog> {
        let t0 = Instant::now();
        let gpu = self.gpu;
        let _t = gpu.alloc.tagged(tag::ACTIVATIONS);
        let mut rec = gpu.recorder();
        self.params.zero_grads(&mut rec);
        rec.run()?;
        let accum = self.opts.grad_accum;
        let mut sum = LossParts::default();
        let mut host = self.host.take();
        // A pending update empties the sums once it has used them.
        if let (Some(h), None) = (&mut host, &self.pending) {
            h.zero_grads();
        }
        let result = self.accumulate(accum, &mut host, &mut sum);
        self.host = host;
        result?;
        let lr = self.opts.lr_at(self.step);
        let (grad_norm, clip) = match &mut self.host {
            Some(h) => {
                // The final norm's gradients are whole on the GPU; add
                // them to the others' on the host.
                for (i, p) in self.params.own_grads() {
                    h.add_grad(i, &read_grad(gpu, &p.grad)?);
                }
                let (n, c) = h.grad_norm(self.opts.max_grad_norm);
                (n as f32, c)
            }
            None => {
                let norm = self.norm.as_ref().expect("exact mode has a GPU norm");
                let mut rec = gpu.recorder();
                let grads: Vec<&crate::gpu::Tensor> =
                    self.params.params.iter().map(|p| &p.grad).collect();
                norm.record(&mut rec, &grads, self.opts.max_grad_norm)?;
                rec.run()?;
                let norm = gpu.read_f32(norm.out())?;
                (norm[1], norm[0])
            }
        };
        // A non-finite loss or gradient norm stops training before the
        // update: the weights stay as they were and no checkpoint is
        // written over the last good one.
        let step = self.step + 1;
        if !sum.loss.is_finite() || !grad_norm.is_finite() {
            let what = if sum.loss.is_finite() {
                format!("the gradient norm is {grad_norm}")
            } else {
                format!("the loss is {}", sum.loss)
            };
            return Err(Error::Invalid(format!(
                "step {step}: {what}, not a finite number; training stopped before this \
                 update (the last checkpoint written, if any, is kept). Try a lower --lr or \
                 --max-grad-norm, or check the teacher's weights and the data"
            )));
        }
        let cfgs: Vec<AdamW> = self
            .params
            .params
            .iter()
            .map(|p| self.adamw_for(p, lr))
            .collect();
        if self.host.is_some() {
            self.pending = Some(PendingUpdate {
                cfgs,
                step: self.step as u64 + 1,
                clip,
            });
        } else {
            let norm = self.norm.as_ref().expect("exact mode has a GPU norm");
            let mut rec = gpu.recorder();
            for (p, cfg) in self.params.params.iter().zip(&cfgs) {
                let (m, v) = (p.m.as_ref(), p.v.as_ref());
                adamw_step(
                    &mut rec,
                    &p.value,
                    &p.grad,
                    m.expect("exact mode"),
                    v.expect("exact mode"),
                    cfg,
                    self.step as u64 + 1,
                    Some(norm.out()),
                )?;
            }
            rec.run()?;
        }
        self.step += 1;
        let secs = t0.elapsed().as_secs_f64();
        let tokens = (self.opts.batch * accum * self.corpus.seq_len) as f64;
        Ok(StepLog {
            step: self.step,
            loss: sum.loss,
            ce: sum.ce,
            kl: sum.kl,
            cos: sum.cos,
            lr,
            grad_norm: grad_norm as f64,
            tokens_per_s: tokens / secs,
            peak_bytes: gpu.memory().peak_device_bytes,
        })
    }

    /// The micro-batches of one step, their loss parts summed into `sum`
    /// and their gradients into the GPU's buffers (and the host's, lean).
    fn accumulate(
        &mut self,
        accum: usize,
        host: &mut Option<HostState>,
        sum: &mut LossParts,
    ) -> Result<()> {
        for _ in 0..accum {
            let ids = self
                .pos
                .next_batch(self.corpus, self.opts.batch, &mut self.perm);
            let mb = MicroBatch {
                ids: &ids,
                batch: self.opts.batch,
                seq: self.corpus.seq_len,
            };
            // The last step's update overlaps the first micro-batch's
            // teacher forward.
            let pending = self.pending.take();
            let p = self.micro_step(&mb, accum, true, host, pending)?;
            sum.add_mean(&p, accum as f64);
        }
        Ok(())
    }

    /// Run the last step's update now if it has not run (lean mode): the
    /// weights on the host and the GPU are then those of `self.step`.
    pub fn settle(&mut self) -> Result<()> {
        if let (Some(p), Some(h)) = (self.pending.take(), self.host.as_mut()) {
            p.run(h, self.gpu, &self.params)?;
        }
        Ok(())
    }

    /// The loss of one micro-batch, and with `backward` its gradients
    /// (scaled by 1/`accum`) added into the parameters' buffers; in lean
    /// mode each layer's into `host` as soon as its backward is done,
    /// after `pending` has run on host threads beside the teacher's
    /// forward.
    fn micro_step(
        &self,
        mb: &MicroBatch,
        accum: usize,
        backward: bool,
        host: &mut Option<HostState>,
        pending: Option<PendingUpdate>,
    ) -> Result<LossParts> {
        let run = |sink: Option<&mut dyn GradSink>| {
            micro_step(
                self.gpu,
                self.teacher,
                &self.student,
                &self.params,
                mb,
                &self.pairs,
                &self.opts.weights,
                accum,
                backward,
                backward && self.opts.recompute,
                sink,
            )
        };
        let Some(h) = host.take() else {
            return run(None);
        };
        let (gpu, params) = (self.gpu, &self.params);
        let embed = embed_blocks(&self.student, params)?;
        let (parts, back) = std::thread::scope(|s| {
            let slot = match pending {
                Some(p) => HostSlot::Updating(s.spawn(move || {
                    let mut h = h;
                    p.run(&mut h, gpu, params)?;
                    Ok(h)
                })),
                None => HostSlot::Ready(h),
            };
            let mut sink = HostSink {
                gpu,
                params,
                slot,
                embed,
            };
            let parts = run(Some(&mut sink));
            (parts, sink.into_host())
        });
        *host = Some(back?);
        parts
    }

    /// Mean loss parts over the held-out sequences (no gradients).
    pub fn evaluate(&mut self) -> Result<Option<LossParts>> {
        if self.corpus.eval.is_empty() {
            return Ok(None);
        }
        self.settle()?;
        let _t = self.gpu.alloc.tagged(tag::ACTIVATIONS);
        let mut sum = LossParts::default();
        let n = self.corpus.eval.len() as f64;
        for seq in &self.corpus.eval {
            let mb = MicroBatch {
                ids: seq,
                batch: 1,
                seq: self.corpus.seq_len,
            };
            let p = self.micro_step(&mb, 1, false, &mut None, None)?;
            sum.add_mean(&p, n);
        }
        Ok(Some(sum))
    }

    /// Write the student's weights (Hugging Face names) in `dtype`: f32
    /// as trained, or rounded to nearest-even bf16 / f16.
    pub fn write_weights(&mut self, cfg: &ModelConfig, path: &Path, dtype: DType) -> Result<()> {
        self.settle()?;
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::Invalid(format!(
                "weights are saved as f32, bf16 or f16, not {}",
                dtype.name()
            )));
        }
        // One tensor at a time: the host never holds the whole student.
        let plan = export_plan(cfg, &self.params)?;
        let items: Vec<(String, DType, Vec<usize>)> = plan
            .iter()
            .map(|e| (e.name.clone(), dtype, e.shape.clone()))
            .collect();
        write_safetensors_streamed(path, &items, None, |i| {
            let e = &plan[i];
            let v = match &self.host {
                Some(h) => {
                    e.values(&self.params, &mut |p| Ok(h.masters[self.index(p)?].clone()))?
                }
                None => e.values(&self.params, &mut |p| self.gpu.read_f32(&p.value))?,
            };
            encode_f32(&e.name, &v, dtype).map(std::borrow::Cow::Owned)
        })
    }

    /// The GPU side of `save_checkpoint` without the files: every value
    /// and moment read back, for memory plans on a dry-run GPU.
    pub fn rehearse_checkpoint_reads(&mut self) -> Result<()> {
        self.settle()?;
        if self.is_lean() {
            // Lean checkpoints are written from the host.
            return Ok(());
        }
        for p in &self.params.params {
            for t in [Some(&p.value), p.m.as_ref(), p.v.as_ref()]
                .into_iter()
                .flatten()
            {
                self.gpu.read_bytes(t)?;
            }
        }
        Ok(())
    }

    fn index(&self, p: &super::student::Param) -> Result<usize> {
        self.params
            .index_of(&p.name)
            .ok_or_else(|| Error::Invalid(format!("no parameter '{}'", p.name)))
    }

    /// Parameter `p`'s moment `kind` (m or v), from the GPU or the host.
    fn moment(&self, p: &super::student::Param, kind: &str) -> Result<Vec<f32>> {
        match &self.host {
            Some(h) => {
                let i = self.index(p)?;
                Ok(h.moment(i, kind))
            }
            None => {
                let t = if kind == "m" { &p.m } else { &p.v };
                self.gpu.read_f32(t.as_ref().expect("exact mode"))
            }
        }
    }

    /// A checkpoint in `dir/checkpoint`: weights, AdamW states, data
    /// position and step, replaced atomically.
    pub fn save_checkpoint(&mut self, cfg: &ModelConfig, dir: &Path) -> Result<()> {
        self.settle()?;
        let final_dir = dir.join("checkpoint");
        let tmp = dir.join("checkpoint.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        // Master weights in f32, so that --resume continues exactly.
        self.write_weights(cfg, &tmp.join("model.safetensors"), DType::F32)?;
        // One entry per tensor (a table in blocks is joined), so that a
        // run resumes on an adapter that splits it differently; written one
        // tensor at a time.
        let groups = self.params.groups();
        let mut items = Vec::new();
        for (name, group) in &groups {
            for kind in ["m", "v"] {
                items.push((format!("{kind}.{name}"), DType::F32, group_shape(group)));
            }
        }
        write_safetensors_streamed(&tmp.join("optimizer.safetensors"), &items, None, |i| {
            let (_, group) = &groups[i / 2];
            let kind = if i % 2 == 0 { "m" } else { "v" };
            let v = group_values(group, |p| self.moment(p, kind))?;
            Ok(std::borrow::Cow::Owned(bytemuck::cast_slice(&v).to_vec()))
        })?;
        let state = json!({
            "step": self.step,
            "data": {"seed": self.pos.seed, "epoch": self.pos.epoch, "index": self.pos.index},
            "train_sequences": self.corpus.train.len(),
            "seq_len": self.corpus.seq_len,
            "mode": if self.is_lean() { "lean" } else { "exact" },
            "options": format!("{:?}", self.opts),
        });
        let sp = tmp.join("trainer_state.json");
        std::fs::write(&sp, serde_json::to_string_pretty(&state).expect("json"))
            .map_err(|e| Error::io(&sp, e))?;
        std::fs::write(
            tmp.join("config.json"),
            serde_json::to_string_pretty(&cfg.raw).expect("json"),
        )
        .map_err(|e| Error::io(&tmp, e))?;
        // Swap in the new checkpoint; a crash at any point leaves either the
        // old or the new one whole.
        let old = dir.join("checkpoint.old");
        if final_dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            std::fs::rename(&final_dir, &old).map_err(|e| Error::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&tmp, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }

    /// Continue from a checkpoint written by `save_checkpoint` (the
    /// student's weights are loaded by the caller from the same folder).
    pub fn restore(&mut self, ckpt_dir: &Path) -> Result<()> {
        let sp = ckpt_dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", sp.display())))?;
        let get = |k: &str| {
            v["data"][k]
                .as_u64()
                .ok_or_else(|| Error::Invalid(format!("{}: no data.{k}", sp.display())))
        };
        if v["train_sequences"].as_u64() != Some(self.corpus.train.len() as u64)
            || v["seq_len"].as_u64() != Some(self.corpus.seq_len as u64)
        {
            return Err(Error::Invalid(format!(
                "{}: the checkpoint was made with other data or --seq-len ({} sequences of {}); resume with the same --data and --seq-len",
                ckpt_dir.display(),
                v["train_sequences"],
                v["seq_len"]
            )));
        }
        self.pos = DataPosition {
            seed: get("seed")?,
            epoch: get("epoch")?,
            index: get("index")? as usize,
        };
        self.perm = permutation(self.corpus.train.len(), self.pos.seed, self.pos.epoch);
        self.step = v["step"].as_u64().unwrap_or(0) as usize;
        let opt = Checkpoint::open_file(&ckpt_dir.join("optimizer.safetensors"))?;
        for (name, group) in self.params.groups() {
            for kind in ["m", "v"] {
                let vals = opt.to_f32(&format!("{kind}.{name}"))?;
                let want: usize = group.iter().map(|p| p.value.numel()).sum();
                if vals.len() != want {
                    return Err(Error::Invalid(format!(
                        "{}: optimizer state '{kind}.{name}' has {} values, the student {want}",
                        ckpt_dir.display(),
                        vals.len()
                    )));
                }
                let mut at = 0;
                for p in &group {
                    let n = p.value.numel();
                    let part = &vals[at..at + n];
                    match &mut self.host {
                        Some(h) => {
                            let i = self.params.index_of(&p.name).expect("own parameter");
                            h.set_moment(i, kind, part);
                        }
                        None => {
                            let t = if kind == "m" { &p.m } else { &p.v };
                            self.gpu.write_f32(t.as_ref().expect("exact mode"), part)?;
                        }
                    }
                    at += n;
                }
            }
        }
        Ok(())
    }
}

/// Files of a Hugging Face folder other than weights and config, copied
/// from the teacher into the student folder.
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// Write the final student folder atomically: config.json, weights in
/// `dtype`, tokenizer files and student_config.json.
pub fn write_student_folder(
    trainer: &mut Trainer,
    cfg: &ModelConfig,
    teacher_dir: &Path,
    student_config: &serde_json::Value,
    out: &Path,
    dtype: DType,
) -> Result<PathBuf> {
    let tmp = out.join("student.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut raw = cfg.raw.clone();
    let torch_name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    raw["torch_dtype"] = json!(torch_name);
    raw["dtype"] = json!(torch_name);
    std::fs::write(
        tmp.join("config.json"),
        serde_json::to_string_pretty(&raw).expect("json"),
    )
    .map_err(|e| Error::io(&tmp, e))?;
    trainer.write_weights(cfg, &tmp.join("model.safetensors"), dtype)?;
    for f in SIDE_FILES {
        let src = teacher_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, tmp.join(f)).map_err(|e| Error::io(&src, e))?;
        }
    }
    std::fs::write(
        tmp.join("student_config.json"),
        serde_json::to_string_pretty(student_config).expect("json"),
    )
    .map_err(|e| Error::io(&tmp, e))?;
    // Move the finished files into place one by one (each rename is atomic).
    let mut names: Vec<_> = std::fs::read_dir(&tmp)
        .map_err(|e| Error::io(&tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    // Weights last: a folder with a config but old weights is never left.
    names.sort_by_key(|n| n == "model.safetensors");
    for n in names {
        std::fs::rename(tmp.join(&n), out.join(&n)).map_err(|e| Error::io(out, e))?;
    }
    std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(out.to_path_buf())
}
