//! The student as trainable parameters: f32 values, gradient buffers and
//! AdamW states, and its forward pass on the autodiff tape (the same
//! architecture as `model::decoder`, recorded for backward).

use std::collections::BTreeMap;

use crate::autodiff::{Tape, Var};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::model::decoder::{Batch, Decoder};
use crate::model::Family;
use crate::ops::attention::AttnConfig;

/// One trainable tensor.
pub struct Param {
    /// Name inside the decoder: `embed`, `head`, `final_norm.weight`,
    /// `final_norm.bias`, `layers.{i}.{tensor}`.
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    /// Weight decay applies to matrices only (not to biases and norm
    /// weights, as the Hugging Face Trainer does).
    pub decay: bool,
}

pub struct StudentParams {
    pub params: Vec<Param>,
    index: BTreeMap<String, usize>,
}

impl StudentParams {
    /// Parameters over a student decoder's tensors (which must be f32;
    /// load the student with `as_f32`). The tensors are shared, so the
    /// decoder sees every optimiser update.
    pub fn new(gpu: &Gpu, student: &Decoder) -> Result<StudentParams> {
        let mut named: Vec<(String, Tensor)> = vec![("embed".into(), student.embed.clone())];
        for (i, l) in student.layers.iter().enumerate() {
            let mut names: Vec<&String> = l.tensors.keys().collect();
            names.sort();
            for n in names {
                named.push((format!("layers.{i}.{n}"), l.tensors[n].clone()));
            }
        }
        named.push((
            "final_norm.weight".into(),
            student.final_norm.weight.clone(),
        ));
        if let Some(b) = &student.final_norm.bias {
            named.push(("final_norm.bias".into(), b.clone()));
        }
        if !student.head_is_embed() {
            named.push(("head".into(), student.head.clone()));
        }
        let mut params = Vec::new();
        let mut index = BTreeMap::new();
        for (name, value) in named {
            if value.dtype() != DType::F32 {
                return Err(crate::Error::Invalid(format!(
                    "student parameter '{name}' is {}; the student trains in f32",
                    value.dtype().name()
                )));
            }
            let shape = value.shape().to_vec();
            let decay = shape.len() >= 2;
            let grad = gpu.zeros(&format!("grad.{name}"), &shape, DType::F32)?;
            let m = gpu.zeros(&format!("adam_m.{name}"), &shape, DType::F32)?;
            let v = gpu.zeros(&format!("adam_v.{name}"), &shape, DType::F32)?;
            index.insert(name.clone(), params.len());
            params.push(Param {
                name,
                value,
                grad,
                m,
                v,
                decay,
            });
        }
        Ok(StudentParams { params, index })
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    pub fn count(&self) -> u64 {
        self.params.iter().map(|p| p.value.numel() as u64).sum()
    }

    /// Set every gradient buffer to zero.
    pub fn zero_grads(&self, rec: &mut Recorder) {
        for p in &self.params {
            rec.clear(&p.grad);
        }
    }
}

/// The tape variables of one forward pass.
pub struct TapeOut {
    pub logits: Var,
    /// HF hidden states: embedding output, each layer's output but the
    /// last, and the final normed state.
    pub hidden: Vec<Var>,
}

/// The student's forward pass on `tape` (architecture as in
/// `Decoder::layer_forward`, which the tests compare against).
pub fn forward(
    tape: &mut Tape,
    rec: &mut Recorder,
    student: &Decoder,
    params: &StudentParams,
    batch: &Batch,
) -> Result<TapeOut> {
    let c = &student.cfg;
    let gpu = rec.gpu();
    let eps = c.norm_eps as f32;
    let tables = student.rope_tables(gpu, batch.seq)?;
    let p = |tape: &mut Tape, name: &str| -> Result<Var> {
        let prm = params
            .get(name)
            .ok_or_else(|| crate::Error::Invalid(format!("student has no parameter '{name}'")))?;
        tape.param(prm.value.clone(), prm.grad.clone())
    };
    let embed = p(tape, "embed")?;
    let mut x = tape.embedding(rec, batch.ids, embed)?;
    let mut hidden = Vec::with_capacity(c.num_layers + 1);
    let attn_cfg = AttnConfig::new(
        batch.batch,
        batch.seq,
        batch.seq,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
    );
    for i in 0..student.layers.len() {
        hidden.push(x);
        x = layer(tape, rec, student, params, i, x, batch, &tables, &attn_cfg)?;
        if batch.batch * batch.seq > 1 {
            rec.flush()?;
        }
    }
    let fw = p(tape, "final_norm.weight")?;
    let normed = match params.get("final_norm.bias") {
        Some(_) => {
            let fb = p(tape, "final_norm.bias")?;
            tape.layernorm(rec, x, fw, fb, eps)?
        }
        None => tape.rmsnorm(rec, x, fw, eps)?,
    };
    hidden.push(normed);
    let head = if params.get("head").is_some() {
        p(tape, "head")?
    } else {
        embed
    };
    let logits = tape.linear(rec, normed, head)?;
    Ok(TapeOut { logits, hidden })
}

/// Tensors by name: shape and f32 values on the host.
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Which tensor of each parameter to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Value,
    Grad,
}

/// The student's tensors under their Hugging Face names, read back to the
/// host as f32 (GPT-NeoX's q/k/v fused back into query_key_value).
pub fn export_named(
    gpu: &Gpu,
    cfg: &crate::model::ModelConfig,
    params: &StudentParams,
    which: Which,
) -> Result<NamedTensors> {
    let mut out = BTreeMap::new();
    let read = |p: &Param| -> Result<Vec<f32>> {
        gpu.read_f32(match which {
            Which::Value => &p.value,
            Which::Grad => &p.grad,
        })
    };
    for p in &params.params {
        let name = p.name.as_str();
        let hf = if name == "embed" {
            cfg.embed_name().to_string()
        } else if name == "head" {
            cfg.head_name().to_string()
        } else if let Some(rest) = name.strip_prefix("final_norm.") {
            let norms = cfg.final_norm_names();
            if rest == "weight" {
                norms[0].0.clone()
            } else {
                norms[1].0.clone()
            }
        } else if let Some(rest) = name.strip_prefix("layers.") {
            let (i, t) = rest.split_once('.').expect("layers.{i}.{name}");
            let i: usize = i.parse().expect("layer index");
            if cfg.family == Family::GptNeox && t.starts_with("attention.") && t.len() > 12 {
                let part = &t["attention.".len()..];
                if let Some(kind) = part
                    .strip_prefix("q.")
                    .or_else(|| part.strip_prefix("k."))
                    .or_else(|| part.strip_prefix("v."))
                {
                    // Fused below, once all three parts are read.
                    let _ = kind;
                    continue;
                }
            }
            format!("{}{t}", cfg.layer_prefix(i))
        } else {
            name.to_string()
        };
        out.insert(hf, (p.value.shape().to_vec(), read(p)?));
    }
    if cfg.family == Family::GptNeox {
        let (heads, d, h) = (cfg.num_heads, cfg.head_dim, cfg.hidden_size);
        for i in 0..cfg.num_layers {
            for kind in ["weight", "bias"] {
                let parts: Vec<Vec<f32>> = ["q", "k", "v"]
                    .iter()
                    .map(|part| {
                        let p = params
                            .get(&format!("layers.{i}.attention.{part}.{kind}"))
                            .ok_or_else(|| {
                                crate::Error::Invalid(format!(
                                    "student lacks layer {i} attention.{part}.{kind}"
                                ))
                            })?;
                        read(p)
                    })
                    .collect::<Result<_>>()?;
                let row = if kind == "weight" { h } else { 1 };
                let mut fused = Vec::with_capacity(3 * parts[0].len());
                for head in 0..heads {
                    for part in &parts {
                        fused.extend_from_slice(&part[head * d * row..(head + 1) * d * row]);
                    }
                }
                let shape = if kind == "weight" {
                    vec![3 * h, h]
                } else {
                    vec![3 * h]
                };
                out.insert(
                    format!("{}attention.query_key_value.{kind}", cfg.layer_prefix(i)),
                    (shape, fused),
                );
            }
        }
    }
    Ok(out)
}

/// Parameter `name` of the student as a tape variable.
fn param_var(tape: &mut Tape, params: &StudentParams, name: &str) -> Result<Var> {
    let prm = params
        .get(name)
        .ok_or_else(|| crate::Error::Invalid(format!("student has no parameter '{name}'")))?;
    tape.param(prm.value.clone(), prm.grad.clone())
}

/// Decoder layer `i` of the student on `tape`: x → the new residual stream.
#[allow(clippy::too_many_arguments)]
fn layer(
    tape: &mut Tape,
    rec: &mut Recorder,
    student: &Decoder,
    params: &StudentParams,
    i: usize,
    x: Var,
    batch: &Batch,
    tables: &crate::ops::rope::RopeTables,
    attn_cfg: &AttnConfig,
) -> Result<Var> {
    let c = &student.cfg;
    let eps = c.norm_eps as f32;
    let p = |tape: &mut Tape, name: &str| param_var(tape, params, name);
    let l = |tape: &mut Tape, n: &str| p(tape, &format!("layers.{i}.{n}"));
    let has = |n: &str| params.get(&format!("layers.{i}.{n}")).is_some();
    let linear = |tape: &mut Tape, rec: &mut Recorder, x: Var, w: &str, b: &str| -> Result<Var> {
        let wv = l(tape, w)?;
        let y = tape.linear(rec, x, wv)?;
        if has(b) {
            let bv = l(tape, b)?;
            tape.bias_add(rec, y, bv)
        } else {
            Ok(y)
        }
    };
    let y = match c.family {
        Family::Llama | Family::Qwen3 => {
            let w = l(tape, "input_layernorm.weight")?;
            let h = tape.rmsnorm(rec, x, w, eps)?;
            let mut q = linear(
                tape,
                rec,
                h,
                "self_attn.q_proj.weight",
                "self_attn.q_proj.bias",
            )?;
            let mut k = linear(
                tape,
                rec,
                h,
                "self_attn.k_proj.weight",
                "self_attn.k_proj.bias",
            )?;
            let v = linear(
                tape,
                rec,
                h,
                "self_attn.v_proj.weight",
                "self_attn.v_proj.bias",
            )?;
            if c.family == Family::Qwen3 {
                let qn = l(tape, "self_attn.q_norm.weight")?;
                q = tape.rmsnorm(rec, q, qn, eps)?;
                let kn = l(tape, "self_attn.k_norm.weight")?;
                k = tape.rmsnorm(rec, k, kn, eps)?;
            }
            let q = tape.rope(rec, q, batch.positions, tables, c.head_dim)?;
            let k = tape.rope(rec, k, batch.positions, tables, c.head_dim)?;
            let a = tape.attention(rec, attn_cfg, q, k, v, batch.mask)?;
            let o = linear(
                tape,
                rec,
                a,
                "self_attn.o_proj.weight",
                "self_attn.o_proj.bias",
            )?;
            let x2 = tape.add(rec, x, o)?;
            let w2 = l(tape, "post_attention_layernorm.weight")?;
            let h2 = tape.rmsnorm(rec, x2, w2, eps)?;
            let g = linear(tape, rec, h2, "mlp.gate_proj.weight", "mlp.gate_proj.bias")?;
            let u = linear(tape, rec, h2, "mlp.up_proj.weight", "mlp.up_proj.bias")?;
            let m = tape.swiglu(rec, g, u)?;
            let d = linear(tape, rec, m, "mlp.down_proj.weight", "mlp.down_proj.bias")?;
            tape.add(rec, x2, d)?
        }
        Family::GptNeox => {
            let w = l(tape, "input_layernorm.weight")?;
            let b = l(tape, "input_layernorm.bias")?;
            let h = tape.layernorm(rec, x, w, b, eps)?;
            let q = linear(tape, rec, h, "attention.q.weight", "attention.q.bias")?;
            let k = linear(tape, rec, h, "attention.k.weight", "attention.k.bias")?;
            let v = linear(tape, rec, h, "attention.v.weight", "attention.v.bias")?;
            let q = tape.rope(rec, q, batch.positions, tables, c.head_dim)?;
            let k = tape.rope(rec, k, batch.positions, tables, c.head_dim)?;
            let a = tape.attention(rec, attn_cfg, q, k, v, batch.mask)?;
            let o = linear(
                tape,
                rec,
                a,
                "attention.dense.weight",
                "attention.dense.bias",
            )?;
            let mlp_in = if c.use_parallel_residual {
                x
            } else {
                tape.add(rec, x, o)?
            };
            let w2 = l(tape, "post_attention_layernorm.weight")?;
            let b2 = l(tape, "post_attention_layernorm.bias")?;
            let h2 = tape.layernorm(rec, mlp_in, w2, b2, eps)?;
            let u = linear(
                tape,
                rec,
                h2,
                "mlp.dense_h_to_4h.weight",
                "mlp.dense_h_to_4h.bias",
            )?;
            let m = tape.gelu(rec, u)?;
            let d = linear(
                tape,
                rec,
                m,
                "mlp.dense_4h_to_h.weight",
                "mlp.dense_4h_to_h.bias",
            )?;
            if c.use_parallel_residual {
                let s = tape.add(rec, o, d)?;
                tape.add(rec, x, s)?
            } else {
                tape.add(rec, mlp_in, d)?
            }
        }
    };
    Ok(y)
}

/// The student's forward pass with activation checkpointing: only each
/// layer's input is kept; `backward` recomputes one layer at a time on a
/// fresh tape, which bounds activation memory to one layer's worth.
pub struct Checkpointed {
    pub logits: Tensor,
    /// HF hidden states (values), as `TapeOut::hidden` would hold them.
    pub hidden: Vec<Tensor>,
    embed_tape: Tape,
    x0: Var,
    head_tape: Tape,
    head_in_grad: Tensor,
    logits_var: Var,
    normed_var: Var,
    inputs: Vec<Tensor>,
    tables: std::sync::Arc<crate::ops::rope::RopeTables>,
    attn_cfg: AttnConfig,
}

pub fn forward_checkpointed(
    rec: &mut Recorder,
    student: &Decoder,
    params: &StudentParams,
    batch: &Batch,
) -> Result<Checkpointed> {
    let c = &student.cfg;
    let gpu = rec.gpu();
    let eps = c.norm_eps as f32;
    let tables = student.rope_tables(gpu, batch.seq)?;
    let attn_cfg = AttnConfig::new(
        batch.batch,
        batch.seq,
        batch.seq,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
    );
    let mut embed_tape = Tape::new();
    let embed = param_var(&mut embed_tape, params, "embed")?;
    let x0 = embed_tape.embedding(rec, batch.ids, embed)?;
    let mut x = embed_tape.value(x0).clone();
    let mut inputs = Vec::with_capacity(student.layers.len());
    for i in 0..student.layers.len() {
        inputs.push(x.clone());
        // A throwaway tape: nothing is kept but the layer's output.
        let mut t = Tape::new();
        let xv = t.constant(x.clone());
        let y = layer(
            &mut t, rec, student, params, i, xv, batch, &tables, &attn_cfg,
        )?;
        x = t.value(y).clone();
        drop(t);
        rec.flush()?;
    }
    let mut head_tape = Tape::new();
    let head_in_grad = Tensor::empty(
        gpu,
        "checkpoint.head_in_grad",
        x.shape(),
        crate::gpu::DType::F32,
    )?;
    rec.clear(&head_in_grad);
    let hx = head_tape.param(x, head_in_grad.clone())?;
    let fw = param_var(&mut head_tape, params, "final_norm.weight")?;
    let normed_var = match params.get("final_norm.bias") {
        Some(_) => {
            let fb = param_var(&mut head_tape, params, "final_norm.bias")?;
            head_tape.layernorm(rec, hx, fw, fb, eps)?
        }
        None => head_tape.rmsnorm(rec, hx, fw, eps)?,
    };
    let head_name = if params.get("head").is_some() {
        "head"
    } else {
        "embed"
    };
    let head = param_var(&mut head_tape, params, head_name)?;
    let logits_var = head_tape.linear(rec, normed_var, head)?;
    let mut hidden = inputs.clone();
    hidden.push(head_tape.value(normed_var).clone());
    Ok(Checkpointed {
        logits: head_tape.value(logits_var).clone(),
        hidden,
        embed_tape,
        x0,
        head_tape,
        head_in_grad,
        logits_var,
        normed_var,
        inputs,
        tables,
        attn_cfg,
    })
}

impl Checkpointed {
    /// Backward from the gradient of the logits and of hidden states
    /// (by HF index), adding into the parameters' gradient buffers.
    pub fn backward(
        mut self,
        rec: &mut Recorder,
        student: &Decoder,
        params: &StudentParams,
        batch: &Batch,
        d_logits: Tensor,
        hidden_seeds: Vec<(usize, Tensor)>,
    ) -> Result<()> {
        let n = self.inputs.len();
        let mut at: Vec<Vec<Tensor>> = vec![Vec::new(); n + 1];
        for (h, g) in hidden_seeds {
            if h > n {
                return Err(crate::Error::Invalid(format!(
                    "hidden state {h} of a {n}-layer student"
                )));
            }
            at[h].push(g);
        }
        let mut seeds = vec![(self.logits_var, d_logits)];
        for g in at[n].drain(..) {
            seeds.push((self.normed_var, g));
        }
        self.head_tape.backward(rec, seeds, 0)?;
        let mut g = self.head_in_grad.clone();
        for i in (0..n).rev() {
            if i + 1 < n {
                for s in at[i + 1].drain(..) {
                    g = crate::ops::elementwise::add(rec, &g, &s)?;
                }
            }
            let gx = Tensor::empty(
                rec.gpu(),
                "checkpoint.dx",
                self.inputs[i].shape(),
                crate::gpu::DType::F32,
            )?;
            rec.clear(&gx);
            let mut t = Tape::new();
            let xv = t.param(self.inputs[i].clone(), gx.clone())?;
            let y = layer(
                &mut t,
                rec,
                student,
                params,
                i,
                xv,
                batch,
                &self.tables,
                &self.attn_cfg,
            )?;
            t.backward(rec, vec![(y, g)], 24)?;
            g = gx;
            rec.flush()?;
        }
        for s in at[0].drain(..) {
            g = crate::ops::elementwise::add(rec, &g, &s)?;
        }
        self.embed_tape.backward(rec, vec![(self.x0, g)], 0)
    }
}
