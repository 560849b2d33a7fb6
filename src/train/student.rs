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
    /// The weights the GPU computes with: the f32 master weights in exact
    /// mode; in lean mode a 16-bit copy of matrices (vectors stay f32) of
    /// masters kept on the host.
    pub value: Tensor,
    /// Where backward adds this tensor's gradient. In lean mode the
    /// tensors of a decoder layer share one slot per tensor name with the
    /// other layers' (their gradients leave the GPU layer by layer).
    pub grad: Tensor,
    /// AdamW moments on the GPU (exact mode; lean mode keeps them on the
    /// host).
    pub m: Option<Tensor>,
    pub v: Option<Tensor>,
    /// The decoder layer the tensor belongs to.
    pub layer: Option<usize>,
    /// Weight decay applies to matrices only (not to biases and norm
    /// weights, as the Hugging Face Trainer does).
    pub decay: bool,
}

pub struct StudentParams {
    pub params: Vec<Param>,
    /// Lean mode: per decoder layer, its parameters (indices) whose
    /// gradients are in shared slots. Empty in exact mode.
    pub layer_params: Vec<Vec<usize>>,
    /// Lean mode: the blocks of the embedding and the head (indices),
    /// whose gradients reach the host during the micro-step (the head's
    /// block by block through shared slots, the embedding's as the rows
    /// of its output's gradient). Empty in exact mode.
    pub table_params: Vec<usize>,
    /// The shared gradient slots (lean mode).
    pub slots: Vec<Tensor>,
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
        StudentParams::build(gpu, student, false)
    }

    /// Lean mode: the decoder's matrices may be 16-bit (vectors f32); no
    /// moments on the GPU; one gradient slot per tensor name shared by the
    /// layers, which `train::run` empties to the host after each layer's
    /// backward (so backward must go layer by layer: recompute).
    pub fn new_lean(gpu: &Gpu, student: &Decoder) -> Result<StudentParams> {
        StudentParams::build(gpu, student, true)
    }

    fn build(gpu: &Gpu, student: &Decoder, lean: bool) -> Result<StudentParams> {
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
        let mut layer_params: Vec<Vec<usize>> = Vec::new();
        let mut table_params: Vec<usize> = Vec::new();
        let mut slots: Vec<Tensor> = Vec::new();
        // Lean mode's slots by (tensor name in the layer, shape).
        let mut slot_of: HashMap<(String, Vec<usize>), usize> = HashMap::new();
        for (name, value) in named {
            let matrix_16 = lean && value.shape().len() == 2 && value.dtype() != DType::U32;
            if value.dtype() != DType::F32 && !matrix_16 {
                return Err(crate::Error::Invalid(format!(
                    "student parameter '{name}' is {}; the student trains in f32{}",
                    value.dtype().name(),
                    if lean {
                        " (lean mode: 16-bit matrices, f32 vectors)"
                    } else {
                        ""
                    }
                )));
            }
            let shape = value.shape().to_vec();
            let decay = shape.len() >= 2;
            let layer = name
                .strip_prefix("layers.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(i, _)| i.parse::<usize>().ok());
            let base = name.split('@').next().expect("split yields one item");
            let table = base == "embed" || base == "head";
            let grad = {
                let _t = gpu.alloc.tagged(super::plan::tag::GRADIENTS);
                // Lean mode: a layer's tensor shares a slot with the same
                // tensor of the other layers; the blocks of the embedding
                // and the head share one slot per block shape.
                let slot_key = match (lean, layer) {
                    (true, Some(_)) => {
                        let within = name.split_once('.').expect("layers.").1;
                        Some(within.split_once('.').expect("{i}.").1.to_string())
                    }
                    (true, None) if table => Some("table".to_string()),
                    _ => None,
                };
                match slot_key {
                    Some(within) => {
                        let key = (within, shape.clone());
                        let slot = match slot_of.get(&key) {
                            Some(&i) => i,
                            None => {
                                let t =
                                    gpu.zeros(&format!("grad_slot.{}", key.0), &shape, DType::F32)?;
                                slots.push(t);
                                slot_of.insert(key, slots.len() - 1);
                                slots.len() - 1
                            }
                        };
                        match layer {
                            Some(l) => {
                                if layer_params.len() <= l {
                                    layer_params.resize(l + 1, Vec::new());
                                }
                                layer_params[l].push(params.len());
                            }
                            None => table_params.push(params.len()),
                        }
                        slots[slot].clone()
                    }
                    None => gpu.zeros(&format!("grad.{name}"), &shape, DType::F32)?,
                }
            };
            let (m, v) = if lean {
                (None, None)
            } else {
                let _t = gpu.alloc.tagged(super::plan::tag::OPTIMIZER);
                (
                    Some(gpu.zeros(&format!("adam_m.{name}"), &shape, DType::F32)?),
                    Some(gpu.zeros(&format!("adam_v.{name}"), &shape, DType::F32)?),
                )
            };
            index.insert(name.clone(), params.len());
            by_tensor.insert(tensor_key(&value), params.len());
            params.push(Param {
                name,
                value,
                grad,
                m,
                v,
                layer,
                decay,
            });
        }
        Ok(StudentParams {
            params,
            layer_params,
            table_params,
            slots,
            index,
            by_tensor,
        })
    }

    /// The parameter whose value `value` is.
    pub fn param_of(&self, value: &Tensor) -> Option<usize> {
        self.by_tensor.get(&tensor_key(value)).copied()
    }

    /// Whether this is lean mode's layout (shared slots, no GPU moments).
    pub fn is_lean(&self) -> bool {
        self.params.iter().all(|p| p.m.is_none())
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    /// Position of the parameter named `name` in `params`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
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

    /// The parameters (with their index) whose gradient buffer is their
    /// own: all in exact mode; in lean mode the final norm's (the others
    /// are shared slots).
    pub fn own_grads(&self) -> impl Iterator<Item = (usize, &Param)> {
        let lean = self.is_lean();
        self.params
            .iter()
            .enumerate()
            .filter(move |(i, p)| !lean || (p.layer.is_none() && !self.table_params.contains(i)))
    }

    /// Set every gradient buffer to zero (a shared slot once).
    pub fn zero_grads(&self, rec: &mut Recorder) {
        for (_, p) in self.own_grads() {
            rec.clear(&p.grad);
        }
        for s in &self.slots {
            rec.clear(s);
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
    export_named_with(cfg, params, |p: &Param| {
        gpu.read_f32(match which {
            Which::Value => &p.value,
            Which::Grad => &p.grad,
        })
    })
}

/// `export_named` with each parameter's values from `read` (lean mode
/// reads the host's master weights).
pub fn export_named_with(
    cfg: &crate::model::ModelConfig,
    params: &StudentParams,
    mut read: impl FnMut(&Param) -> Result<Vec<f32>>,
) -> Result<NamedTensors> {
    let mut out = BTreeMap::new();
    for e in export_plan(cfg, params)? {
        let values = e.values(params, &mut read)?;
        out.insert(e.name, (e.shape, values));
    }
    Ok(out)
}

/// One tensor of the student under its Hugging Face name: which
/// parameters make it and how, known before any value is read (so that a
/// file can be written one tensor at a time).
pub struct Export {
    pub name: String,
    pub shape: Vec<usize>,
    how: How,
}

enum How {
    /// Parameters (indices) joined along the rows: a table in blocks.
    Rows(Vec<usize>),
    /// GPT-NeoX's query_key_value: per head, q, k and v rows of
    /// `head_dim × row` values each.
    NeoxFused {
        parts: [usize; 3],
        heads: usize,
        head_dim: usize,
        row: usize,
    },
}

impl Export {
    /// The tensor's values, from each parameter's through `read`.
    pub fn values(
        &self,
        params: &StudentParams,
        read: &mut impl FnMut(&Param) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        match &self.how {
            How::Rows(ids) => {
                let mut v = Vec::with_capacity(self.shape.iter().product());
                for &i in ids {
                    v.extend(read(&params.params[i])?);
                }
                Ok(v)
            }
            How::NeoxFused {
                parts,
                heads,
                head_dim,
                row,
            } => {
                let parts: Vec<Vec<f32>> = parts
                    .iter()
                    .map(|&i| read(&params.params[i]))
                    .collect::<Result<_>>()?;
                let n = head_dim * row;
                let mut fused = Vec::with_capacity(3 * parts[0].len());
                for head in 0..*heads {
                    for part in &parts {
                        fused.extend_from_slice(&part[head * n..(head + 1) * n]);
                    }
                }
                Ok(fused)
            }
        }
    }
}

/// The student's tensors under their Hugging Face names, in file order.
pub fn export_plan(cfg: &crate::model::ModelConfig, params: &StudentParams) -> Result<Vec<Export>> {
    let mut out = Vec::new();
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
            let neox_part = cfg.family == Family::GptNeox
                && ["attention.q.", "attention.k.", "attention.v."]
                    .iter()
                    .any(|p| t.starts_with(p));
            if neox_part {
                continue; // fused below, from its three parts
            }
            format!("{}{t}", cfg.layer_prefix(i))
        } else {
            name.to_string()
        };
        let shape = group_shape(&group);
        let ids = group
            .iter()
            .map(|p| params.index_of(&p.name).expect("own parameter"))
            .collect();
        out.push(Export {
            name: hf,
            shape,
            how: How::Rows(ids),
        });
    }
    if cfg.family == Family::GptNeox {
        let (heads, d, h) = (cfg.num_heads, cfg.head_dim, cfg.hidden_size);
        for i in 0..cfg.num_layers {
            for kind in ["weight", "bias"] {
                let mut parts = [0usize; 3];
                for (slot, part) in parts.iter_mut().zip(["q", "k", "v"]) {
                    let n = format!("layers.{i}.attention.{part}.{kind}");
                    *slot = params.index_of(&n).ok_or_else(|| {
                        crate::Error::Invalid(format!(
                            "student lacks layer {i} attention.{part}.{kind}"
                        ))
                    })?;
                }
                let (row, shape) = if kind == "weight" {
                    (h, vec![3 * h, h])
                } else {
                    (1, vec![3 * h])
                };
                out.push(Export {
                    name: format!("{}attention.query_key_value.{kind}", cfg.layer_prefix(i)),
                    shape,
                    how: How::NeoxFused {
                        parts,
                        heads,
                        head_dim: d,
                        row,
                    },
                });
            }
        }
    }
    Ok(out)
}

/// A group's tensors joined along the rows: their values.
pub fn group_values(
    group: &[&Param],
    mut read: impl FnMut(&Param) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let mut values = Vec::with_capacity(group_shape(group).iter().product());
    for p in group {
        values.extend(read(p)?);
    }
    Ok(values)
}

/// The shape of a group's tensors joined along the rows.
pub fn group_shape(group: &[&Param]) -> Vec<usize> {
    let mut shape = group[0].value.shape().to_vec();
    shape[0] = group.iter().map(|p| p.value.dim(0)).sum();
    shape
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
    /// parameters' gradient buffers. With a `sink` (lean mode), each
    /// layer's gradients are handed to it once that layer's backward is
    /// submitted, and the embedding's output gradient is returned instead
    /// of being added into the table on the GPU.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        mut self,
        rec: &mut Recorder,
        student: &Decoder,
        params: &StudentParams,
        batch: &Batch,
        d_normed: Tensor,
        hidden_seeds: Vec<(usize, Tensor)>,
        mut sink: Option<&mut dyn crate::train::loss::GradSink>,
    ) -> Result<Option<Tensor>> {
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
            seeds.push((
                self.normed_var,
                crate::ops::cast::cast(rec, &g, DType::F32)?,
            ));
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
                    g = add_seed(rec, &g, &s)?;
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
            if let Some(sink) = sink.as_mut() {
                sink.layer_done(rec, i)?;
            }
        }
        for s in at[0].drain(..) {
            g = add_seed(rec, &g, &s)?;
        }
        if sink.is_some() {
            return Ok(Some(g));
        }
        self.embed_tape.backward(rec, vec![(self.x0, g)], 0)?;
        Ok(None)
    }
}

/// `g + seed`, f32, for a seed gradient kept in f32 or (lean mode) bf16.
fn add_seed(rec: &mut Recorder, g: &Tensor, seed: &Tensor) -> Result<Tensor> {
    let seed = crate::ops::cast::cast(rec, seed, DType::F32)?;
    crate::ops::elementwise::add(rec, g, &seed)
}

/// Every parameter's values (in `params` order) from a checkpoint: the
/// inverse of `export_named` (GPT-NeoX's fused query_key_value split into
/// q, k, v; tables in blocks sliced by rows). `layer_map[i]` is the
/// checkpoint layer of student layer `i` (the kept teacher layers when the
/// student is pruned straight from its teacher's files).
pub fn import_values(
    cfg: &crate::model::ModelConfig,
    params: &StudentParams,
    ckpt: &crate::model::weights::Checkpoint,
    layer_map: &[usize],
) -> Result<Vec<Vec<f32>>> {
    // Every tensor the config implies, with its shape: what follows slices
    // them without further checks.
    ckpt.check(cfg)?;
    let bad = |m: String| crate::Error::Invalid(m);
    // The last tensor read, for the blocks of one table.
    let mut cached: Option<(String, Vec<f32>)> = None;
    let mut out = Vec::with_capacity(params.params.len());
    for p in &params.params {
        let (base, start) = match p.name.split_once('@') {
            Some((b, s)) => (
                b,
                s.parse::<usize>()
                    .map_err(|e| bad(format!("{}: {e}", p.name)))?,
            ),
            None => (p.name.as_str(), 0),
        };
        let (hf, part) = if base == "embed" {
            (cfg.embed_name().to_string(), None)
        } else if base == "head" {
            (cfg.head_name().to_string(), None)
        } else if let Some(rest) = base.strip_prefix("final_norm.") {
            let norms = cfg.final_norm_names();
            let i = usize::from(rest != "weight");
            let n = norms
                .get(i)
                .ok_or_else(|| bad(format!("the config has no final norm {rest}")))?;
            (n.0.clone(), None)
        } else if let Some(rest) = base.strip_prefix("layers.") {
            let (i, t) = rest
                .split_once('.')
                .ok_or_else(|| bad(format!("parameter name {base}")))?;
            let i: usize = i.parse().map_err(|e| bad(format!("{base}: {e}")))?;
            let l = *layer_map.get(i).ok_or_else(|| {
                bad(format!(
                    "student layer {i} has no source layer ({layer_map:?})"
                ))
            })?;
            let prefix = cfg.layer_prefix(l);
            let split = (cfg.family == Family::GptNeox)
                .then(|| t.strip_prefix("attention."))
                .flatten()
                .and_then(|r| r.split_once('.'))
                .and_then(|(part, kind)| {
                    ["q", "k", "v"]
                        .iter()
                        .position(|x| *x == part)
                        .map(|i| (i, kind))
                });
            match split {
                Some((i, kind)) => (
                    format!("{prefix}attention.query_key_value.{kind}"),
                    Some((i, kind == "weight")),
                ),
                None => (format!("{prefix}{t}"), None),
            }
        } else {
            return Err(bad(format!("parameter name {base}")));
        };
        if cached.as_ref().is_none_or(|(n, _)| *n != hf) {
            cached = Some((hf.clone(), ckpt.to_f32(&hf)?));
        }
        let full = &cached.as_ref().expect("just read").1;
        let whole: Vec<f32> = match part {
            Some((i, is_weight)) => {
                let row = if is_weight { cfg.hidden_size } else { 1 };
                let parts = crate::model::decoder::split_neox_qkv(
                    bytemuck::cast_slice(full),
                    cfg.num_heads,
                    cfg.head_dim,
                    row * 4,
                );
                bytemuck::pod_collect_to_vec(&parts[i])
            }
            None => full.clone(),
        };
        let n = p.value.numel();
        let cols = if p.value.shape().len() == 2 {
            p.value.dim(1)
        } else {
            n
        };
        let from = start * cols;
        let vals = whole.get(from..from + n).ok_or_else(|| {
            bad(format!(
                "{hf}: {} values; parameter {} needs {n} from {from}",
                whole.len(),
                p.name
            ))
        })?;
        out.push(vals.to_vec());
    }
    Ok(out)
}
