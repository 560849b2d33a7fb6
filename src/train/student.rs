//! The student as trainable parameters: f32 values, gradient buffers and
//! AdamW states, and its forward pass on the autodiff tape: the model's
//! own forward (`Decoder::forward_with`, the layers of `model::layers`)
//! run by the taping executor, whole or one layer at a time (recompute).

use std::collections::{BTreeMap, HashMap};

use crate::autodiff::{Tape, Var};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::model::decoder::{Batch, Decoder};
use crate::model::exec::{tensor_key, ParamGrads, Taped};
use crate::model::layers::LayerCtx;
use crate::model::Family;

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
    /// Parameter by the identity of its value tensor.
    by_tensor: HashMap<(u64, u64), usize>,
}

impl ParamGrads for StudentParams {
    fn grad_of(&self, value: &Tensor) -> Option<&Tensor> {
        self.by_tensor
            .get(&tensor_key(value))
            .map(|&i| &self.params[i].grad)
    }
}

impl StudentParams {
    /// Parameters over a student decoder's tensors (which must be f32;
    /// load the student with `as_f32`). The tensors are shared, so the
    /// decoder sees every optimiser update.
    pub fn new(gpu: &Gpu, student: &Decoder) -> Result<StudentParams> {
        // A table in blocks of rows is one parameter per block,
        // `embed@{first row}` (grouped again by `groups`).
        let blocked = |base: &str, rows: &crate::gpu::RowBlocks| -> Vec<(String, Tensor)> {
            match rows.as_whole() {
                Some(t) => vec![(base.to_string(), t.clone())],
                None => rows
                    .iter()
                    .map(|(start, t)| (format!("{base}@{start}"), t.clone()))
                    .collect(),
            }
        };
        let mut named: Vec<(String, Tensor)> = blocked("embed", &student.embed);
        for (i, l) in student.layers.iter().enumerate() {
            // By name; a weight in blocks of rows as its blocks, in row order.
            let mut names: Vec<&String> = l.tensors.keys().chain(l.split.keys()).collect();
            names.sort();
            for n in names {
                let name = format!("layers.{i}.{n}");
                match l.split.get(n) {
                    Some(rows) => named.extend(blocked(&name, rows)),
                    None => named.push((name, l.tensors[n].clone())),
                }
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
            named.extend(blocked("head", &student.head));
        }
        let mut params = Vec::new();
        let mut index = BTreeMap::new();
        let mut by_tensor = HashMap::new();
        for (name, value) in named {
            if value.dtype() != DType::F32 {
                return Err(crate::Error::Invalid(format!(
                    "student parameter '{name}' is {}; the student trains in f32",
                    value.dtype().name()
                )));
            }
            let shape = value.shape().to_vec();
            let decay = shape.len() >= 2;
            let grad = {
                let _t = gpu.alloc.tagged(super::plan::tag::GRADIENTS);
                gpu.zeros(&format!("grad.{name}"), &shape, DType::F32)?
            };
            let _t = gpu.alloc.tagged(super::plan::tag::OPTIMIZER);
            let m = gpu.zeros(&format!("adam_m.{name}"), &shape, DType::F32)?;
            let v = gpu.zeros(&format!("adam_v.{name}"), &shape, DType::F32)?;
            index.insert(name.clone(), params.len());
            by_tensor.insert(tensor_key(&value), params.len());
            params.push(Param {
                name,
                value,
                grad,
                m,
                v,
                decay,
            });
        }
        Ok(StudentParams {
            params,
            index,
            by_tensor,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    /// The parameters by the tensor they belong to, in order: a table in
    /// blocks of rows (`embed@0`, `embed@4096`, …) is one group `embed`.
    pub fn groups(&self) -> Vec<(&str, Vec<&Param>)> {
        let mut out: Vec<(&str, Vec<&Param>)> = Vec::new();
        for p in &self.params {
            let base = p.name.split('@').next().expect("split yields one item");
            match out.last_mut() {
                Some((b, ps)) if *b == base => ps.push(p),
                _ => out.push((base, vec![p])),
            }
        }
        out
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
    /// HF hidden states: embedding output, each layer's output but the
    /// last, and the final normed state (which the head reads: the logits
    /// and the loss are computed off the tape, in chunks, by
    /// `train::head_loss`).
    pub hidden: Vec<Var>,
}

/// The student's forward pass on `tape`: every hidden state.
pub fn forward(
    tape: &mut Tape,
    rec: &mut Recorder,
    student: &Decoder,
    params: &StudentParams,
    batch: &Batch,
) -> Result<TapeOut> {
    let mut e = Taped::new(tape, rec, Some(params));
    let out = student.forward_with(&mut e, batch, false, true)?;
    Ok(TapeOut { hidden: out.hidden })
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
    for (name, group) in params.groups() {
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
        let (shape, values) = group_values(&group, |p| read(p))?;
        out.insert(hf, (shape, values));
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

/// A group's tensors joined along the rows: its shape and values.
pub fn group_values(
    group: &[&Param],
    mut read: impl FnMut(&Param) -> Result<Vec<f32>>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let mut shape = group[0].value.shape().to_vec();
    shape[0] = group.iter().map(|p| p.value.dim(0)).sum();
    let mut values = Vec::with_capacity(shape.iter().product());
    for p in group {
        values.extend(read(p)?);
    }
    Ok((shape, values))
}

/// The student's forward pass with activation checkpointing: only each
/// layer's input is kept; `backward` recomputes one layer at a time on a
/// fresh tape, which bounds activation memory to one layer's worth.
pub struct Checkpointed {
    /// HF hidden states (values), as `TapeOut::hidden` would hold them.
    pub hidden: Vec<Tensor>,
    embed_tape: Tape,
    x0: Var,
    /// The final norm, on its own tape.
    head_tape: Tape,
    head_in_grad: Tensor,
    normed_var: Var,
    inputs: Vec<Tensor>,
    tables: std::sync::Arc<crate::ops::rope::RopeTables>,
}

pub fn forward_checkpointed(
    rec: &mut Recorder,
    student: &Decoder,
    params: &StudentParams,
    batch: &Batch,
) -> Result<Checkpointed> {
    let gpu = rec.gpu();
    let tables = student.rope_tables(gpu, batch.seq)?;
    let attend = student.dense_attend(batch);
    let ctx = LayerCtx {
        positions: batch.positions,
        tables: &tables,
        attend: &attend,
    };
    let mut embed_tape = Tape::new();
    let x0 = student.embed_forward(
        &mut Taped::new(&mut embed_tape, rec, Some(params)),
        batch.ids,
    )?;
    let mut x = embed_tape.value(x0).clone();
    let mut inputs = Vec::with_capacity(student.layers.len());
    for layer in &student.layers {
        inputs.push(x.clone());
        // A throwaway tape: nothing is kept but the layer's output.
        let mut t = Tape::new();
        let xv = t.constant(x.clone());
        let y =
            student.layer_forward(&mut Taped::new(&mut t, rec, Some(params)), layer, &xv, &ctx)?;
        x = t.value(y).clone();
        drop(t);
        rec.flush()?;
    }
    let mut head_tape = Tape::new();
    let head_in_grad = Tensor::empty(gpu, "checkpoint.head_in_grad", x.shape(), DType::F32)?;
    rec.clear(&head_in_grad);
    let hx = head_tape.param(x, head_in_grad.clone())?;
    let mut e = Taped::new(&mut head_tape, rec, Some(params));
    let normed_var = student.final_norm_forward(&mut e, &hx)?;
    let mut hidden = inputs.clone();
    hidden.push(head_tape.value(normed_var).clone());
    Ok(Checkpointed {
        hidden,
        embed_tape,
        x0,
        head_tape,
        head_in_grad,
        normed_var,
        inputs,
        tables,
    })
}

impl Checkpointed {
    /// Backward from the gradient of the final normed states (the head's
    /// input) and of hidden states (by HF index), adding into the
    /// parameters' gradient buffers.
    pub fn backward(
        mut self,
        rec: &mut Recorder,
        student: &Decoder,
        params: &StudentParams,
        batch: &Batch,
        d_normed: Tensor,
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
        let mut seeds = vec![(self.normed_var, d_normed)];
        for g in at[n].drain(..) {
            seeds.push((self.normed_var, g));
        }
        self.head_tape.backward(rec, seeds, 0)?;
        let attend = student.dense_attend(batch);
        let ctx = LayerCtx {
            positions: batch.positions,
            tables: &self.tables,
            attend: &attend,
        };
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
                DType::F32,
            )?;
            rec.clear(&gx);
            let mut t = Tape::new();
            let xv = t.param(self.inputs[i].clone(), gx.clone())?;
            let layer = &student.layers[i];
            let y = student.layer_forward(
                &mut Taped::new(&mut t, rec, Some(params)),
                layer,
                &xv,
                &ctx,
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
