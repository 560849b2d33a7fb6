//! The boomerang distillation loss (REFERENCE.md §3) for one micro-batch:
//! teacher forward without a tape, student forward on the tape, the fused
//! CE + KL kernel, one cosine term per aligned hidden-state pair, and the
//! backward pass that adds the micro-batch's gradients into the student's
//! gradient buffers.
//!
//! loss = CE + w_kl·τ²·KL + Σ_pairs (w_cos / n_pairs)·mean(1 − cos)

use super::head_loss::{distill_head, HeadInputs};
use super::student::{self, StudentParams};
use crate::autodiff::Tape;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Tensor};
use crate::model::decoder::{Batch, Decoder};
use crate::ops::{cosine, distill_loss};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossWeights {
    pub kl: f32,
    pub cos: f32,
    pub temperature: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            kl: 0.1,
            cos: 2.0,
            temperature: 1.0,
        }
    }
}

/// The loss of one micro-batch, in the reference's terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossParts {
    /// Weighted total.
    pub loss: f64,
    /// Mean next-token cross-entropy.
    pub ce: f64,
    /// KL(teacher ‖ student) at temperature τ, batchmean, times τ².
    pub kl: f64,
    /// Unweighted mean over aligned pairs of mean(1 − cos).
    pub cos: f64,
    /// mean(1 − cos) of each pair, in pair order.
    pub cos_pairs: Vec<f64>,
}

impl LossParts {
    /// Add `p`'s scalar parts divided by `n` (a running mean of `n`).
    pub fn add_mean(&mut self, p: &LossParts, n: f64) {
        self.loss += p.loss / n;
        self.ce += p.ce / n;
        self.kl += p.kl / n;
        self.cos += p.cos / n;
    }
}

/// Where lean mode's gradients go as the GPU finishes them (the host's
/// sums, `train::offload`): none of them is ever whole on the GPU.
pub trait GradSink {
    /// The teacher's forward is recorded; the student's weights are read
    /// next (lean mode waits here for the last step's update).
    fn student_turn(&mut self, rec: &mut Recorder) -> Result<()>;
    /// Layer `layer`'s backward has been submitted: its gradients are in
    /// the shared slots, which the sink empties.
    fn layer_done(&mut self, rec: &mut Recorder, layer: usize) -> Result<()>;
    /// Parameter `param`'s gradient (a block of the head) is complete in
    /// its slot, submitted.
    fn param_done(&mut self, rec: &mut Recorder, param: usize) -> Result<()>;
    /// The gradient of the embedding's output, submitted: `d` holds one
    /// row of `hidden` values per token of `ids`.
    fn embedding_rows(&mut self, ids: &[u32], d: &Tensor) -> Result<()>;
}

/// Token ids of a micro-batch: `batch` packed sequences of `seq` tokens.
pub struct MicroBatch<'a> {
    pub ids: &'a [u32],
    pub batch: usize,
    pub seq: usize,
}

/// Run one micro-batch. With `backward`, gradients of the loss divided by
/// `accum` (the number of micro-batches in the optimiser step) are added
/// into the student's gradient buffers; with `recompute`, the student keeps
/// only each layer's input and recomputes layers during backward
/// (activation checkpointing: less memory, one more student forward).
/// Lean mode's parameters need `sink` (and recompute): their gradients
/// leave the GPU through it during the backward.
/// `pairs` are (student, teacher) indices into the Hugging Face
/// hidden-state lists.
#[allow(clippy::too_many_arguments)]
pub fn micro_step(
    gpu: &Gpu,
    teacher: &Decoder,
    student: &Decoder,
    params: &StudentParams,
    mb: &MicroBatch,
    pairs: &[(usize, usize)],
    w: &LossWeights,
    accum: usize,
    backward: bool,
    recompute: bool,
    mut sink: Option<&mut dyn GradSink>,
) -> Result<LossParts> {
    let (b, t) = (mb.batch, mb.seq);
    let n = b * t;
    if mb.ids.len() != n || t < 2 {
        return Err(Error::Invalid(format!(
            "micro-batch of {} ids for {b}×{t} tokens (sequences need at least 2)",
            mb.ids.len()
        )));
    }
    let ids = gpu.upload_u32("batch.ids", &[n], mb.ids)?;
    let pos: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
    let positions = gpu.upload_u32("batch.positions", &[n], &pos)?;
    let mut tgt = Vec::with_capacity(n);
    for s in 0..b {
        tgt.extend_from_slice(&mb.ids[s * t + 1..(s + 1) * t]);
        tgt.push(distill_loss::NO_TARGET);
    }
    let mask = gpu.upload_u32("batch.mask", &[n], &vec![1u32; n])?;
    let batch = Batch {
        ids: &ids,
        positions: &positions,
        batch: b,
        seq: t,
        mask: None,
    };
    let n_ce = (b * (t - 1)) as f32;
    let accum_f = accum.max(1) as f32;
    let cfg = distill_loss::DistillLoss {
        tau: w.temperature,
        w_ce: 1.0,
        w_kl: w.kl,
        n_ce: n_ce * accum_f,
        n_kl: n as f32 * accum_f,
    };
    let n_pairs = pairs.len().max(1) as f32;
    let lean = params.is_lean();

    let mut rec = gpu.recorder();
    let t_out = teacher.forward(&mut rec, &batch, false, !pairs.is_empty())?;
    if let Some(s) = sink.as_mut() {
        // The teacher's forward runs on the GPU while the host finishes
        // the last update.
        rec.flush()?;
        s.student_turn(&mut rec)?;
    }
    // The student: on one tape, or with activation checkpointing.
    enum Run {
        Tape(Tape, student::TapeOut),
        Checkpointed(Box<student::Checkpointed>),
    }
    let run = if recompute {
        Run::Checkpointed(Box::new(student::forward_checkpointed(
            &mut rec, student, params, &batch,
        )?))
    } else {
        let mut tape = Tape::new();
        let out = student::forward(&mut tape, &mut rec, student, params, &batch)?;
        Run::Tape(tape, out)
    };
    let s_hidden: Vec<Tensor> = match &run {
        Run::Tape(tape, out) => out.hidden.iter().map(|&v| tape.value(v).clone()).collect(),
        Run::Checkpointed(ck) => ck.hidden.clone(),
    };
    for &(si, ti) in pairs {
        if si >= s_hidden.len() || ti >= t_out.hidden.len() {
            return Err(Error::Invalid(format!(
                "aligned pair {si}→{ti} is outside the hidden states ({} student, {} teacher)",
                s_hidden.len(),
                t_out.hidden.len()
            )));
        }
    }
    // The head and the loss, chunk by chunk of tokens: bounded logits.
    let inputs = HeadInputs {
        student,
        s_normed: s_hidden.last().expect("the final normed state"),
        teacher,
        t_normed: &t_out.normed,
        targets: &tgt,
    };
    let (rows, d_normed) = {
        let _t = gpu.alloc.tagged(super::plan::tag::LOGITS);
        let sink = sink.as_mut().map(|s| &mut **s as &mut dyn GradSink);
        distill_head(&mut rec, &inputs, &cfg, backward.then_some(params), sink)?
    };
    let mut hidden_grads: Vec<(usize, Tensor)> = Vec::with_capacity(pairs.len());
    let mut cos_vals = Vec::with_capacity(pairs.len());
    for &(si, ti) in pairs {
        let (val, grad) = cosine::cosine_loss(
            &mut rec,
            &s_hidden[si],
            &t_out.hidden[ti],
            &mask,
            w.cos / n_pairs,
            n as f32 * accum_f,
        )?;
        cos_vals.push(val);
        // Lean mode keeps the hidden states' gradients until backward
        // reaches their layer in bf16 (the precision of the reference's
        // bf16 autocast activations): half the bytes of one hidden state
        // per aligned pair (288 MiB for pythia-6.9b at seq 2048). Each is
        // submitted before the next so that its f32 form is reused.
        let grad = if lean && backward {
            let g = crate::ops::cast::cast(&mut rec, &grad, crate::gpu::DType::BF16)?;
            rec.flush()?;
            g
        } else {
            grad
        };
        hidden_grads.push((si, grad));
    }
    drop(s_hidden);
    drop(t_out);
    // Submit: the recorded work holds the teacher's hidden states (and
    // the head's workspace) until then, and backward should not start
    // with them still on the GPU.
    rec.flush()?;
    let mut d_embedded = None;
    if let Some(d_normed) = d_normed {
        match run {
            Run::Tape(mut tape, out) => {
                let last = *out.hidden.last().expect("the final normed state");
                let mut seeds = vec![(last, d_normed)];
                seeds.extend(hidden_grads.into_iter().map(|(h, g)| (out.hidden[h], g)));
                tape.backward(&mut rec, seeds, 24)?;
            }
            Run::Checkpointed(ck) => {
                let sink = sink.as_mut().map(|s| &mut **s as &mut dyn GradSink);
                d_embedded = ck.backward(
                    &mut rec,
                    student,
                    params,
                    &batch,
                    d_normed,
                    hidden_grads,
                    sink,
                )?;
            }
        }
    }
    rec.run()?;
    if let (Some(d), Some(sink)) = (d_embedded, sink) {
        // Lean mode: the embedding's gradient is its output's gradient
        // added into the rows of the tokens, on the host.
        sink.embedding_rows(mb.ids, &d)?;
    }

    let sum = |t: &Tensor| -> Result<f64> { Ok(gpu.read_f32(t)?.iter().map(|&x| x as f64).sum()) };
    let ce = sum(&rows.ce)? / n_ce as f64;
    let tau = w.temperature as f64;
    let kl = sum(&rows.kl)? * tau * tau / n as f64;
    let mut cos_pairs = Vec::with_capacity(cos_vals.len());
    for v in &cos_vals {
        cos_pairs.push(sum(v)? / n as f64);
    }
    let cos = if cos_pairs.is_empty() {
        0.0
    } else {
        cos_pairs.iter().sum::<f64>() / cos_pairs.len() as f64
    };
    let loss = ce + w.kl as f64 * kl + w.cos as f64 * cos;
    Ok(LossParts {
        loss,
        ce,
        kl,
        cos,
        cos_pairs,
    })
}
