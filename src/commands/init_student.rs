//! `boomgpu init-student`: make a student from a teacher by deleting layers
//! (boomerang step 1, REFERENCE §2). No GPU needed: tensors are copied byte
//! for byte from the memory-mapped teacher (or freshly initialised with
//! `--random-init`) and streamed into one safetensors file.
//!
//! The student folder is built next to `--out` as `<out>.tmp-<pid>` and
//! renamed into place at the end, so an interrupted run leaves no
//! half-written student.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::outdir::OutDir;
use crate::boomerang::init::{init_rule, initializer_range, OutTensor, TensorData};
use crate::boomerang::{PruneParams, PrunePlan, StudentConfig};
use crate::error::{Error, Result};
use crate::model::weights::Checkpoint;
use crate::model::{source, ModelConfig};

/// Files copied from the teacher when present (tokenizer and generation settings).
pub const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
];

#[derive(Clone, Debug)]
pub struct InitStudentOptions {
    /// Local folder or hub id.
    pub teacher: String,
    pub out: PathBuf,
    pub params: PruneParams,
    /// `Some(seed)`: fresh weights instead of copies.
    pub random_init: Option<u64>,
    /// Replace a non-empty `out`.
    pub force: bool,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct InitStudentReport {
    pub teacher_dir: PathBuf,
    pub out: PathBuf,
    pub plan: PrunePlan,
    pub teacher_params: u64,
    pub student_params: u64,
    pub copied_files: Vec<String>,
    /// Teacher tensors the model does not use (not written).
    pub dropped_tensors: Vec<String>,
    /// The stored dtypes of the student's tensors (the teacher's).
    pub dtypes: Vec<String>,
}

/// The student's config: the teacher's raw config.json with
/// `num_hidden_layers` changed (and a per-layer `layer_types` list, when
/// present, reduced to the copied layers).
pub fn student_config_json(teacher: &ModelConfig, plan: &PrunePlan) -> ModelConfig {
    let mut c = teacher.with_layers(plan.num_student_layers());
    if let Some(Value::Array(types)) = teacher.raw.get("layer_types") {
        if types.len() == plan.num_teacher_layers {
            let kept: Vec<Value> = plan.copied.iter().map(|&i| types[i].clone()).collect();
            c.raw["layer_types"] = Value::Array(kept);
        }
    }
    c
}

/// Student tensor name → teacher tensor name, for every tensor the student has.
pub fn tensor_map(teacher: &ModelConfig, plan: &PrunePlan) -> Vec<(String, String)> {
    let mut out = vec![(
        teacher.embed_name().to_string(),
        teacher.embed_name().to_string(),
    )];
    for (j, &t) in plan.copied.iter().enumerate() {
        let (sp, tp) = (teacher.layer_prefix(j), teacher.layer_prefix(t));
        for (rel, _) in teacher.layer_tensors() {
            out.push((format!("{sp}{rel}"), format!("{tp}{rel}")));
        }
    }
    for (n, _) in teacher.final_norm_names() {
        out.push((n.clone(), n));
    }
    if !teacher.tie_word_embeddings {
        out.push((
            teacher.head_name().to_string(),
            teacher.head_name().to_string(),
        ));
    }
    out
}

pub fn init_student(opts: &InitStudentOptions) -> Result<InitStudentReport> {
    let teacher_dir = source::resolve(&opts.teacher)?;
    let cfg = ModelConfig::from_file(&teacher_dir.join("config.json"))?;
    let ckpt = Checkpoint::open(&teacher_dir)?;
    ckpt.check(&cfg)?;
    let plan = PrunePlan::from_params(cfg.num_layers, opts.params)?;

    // The output folder: absent, empty, or replaced with --force (never the
    // teacher's own folder or one that holds it).
    let outdir = OutDir::prepare(&opts.out, opts.force, &[("teacher", &teacher_dir)])?;
    let tmp = outdir.path().to_path_buf();

    // config.json
    let scfg = student_config_json(&cfg, &plan);
    let path = tmp.join("config.json");
    let text = serde_json::to_string_pretty(&scfg.raw).expect("JSON value");
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;

    // model.safetensors
    let map = tensor_map(&cfg, &plan);
    let mut tensors: BTreeMap<String, OutTensor> = BTreeMap::new();
    for (sname, tname) in &map {
        let e = &ckpt.tensors[tname];
        let data = match opts.random_init {
            None => TensorData::Borrowed(ckpt.bytes(tname).expect("checked")),
            Some(seed) => TensorData::Random {
                rule: init_rule(&scfg, sname, &e.shape),
                seed,
                name: sname.clone(),
            },
        };
        tensors.insert(
            sname.clone(),
            OutTensor {
                dtype: e.dtype,
                shape: e.shape.clone(),
                data,
            },
        );
    }
    let used: std::collections::HashSet<&str> = map.iter().map(|(_, t)| t.as_str()).collect();
    let dropped_tensors: Vec<String> = ckpt
        .tensors
        .keys()
        .filter(|k| !used.contains(k.as_str()) && !is_pruned_layer_tensor(&cfg, &plan, k))
        .cloned()
        .collect();
    let dtypes = outdir.write_weights(tensors)?;
    // Tokenizer and generation settings, student_config.json.
    let copied_files = outdir.copy_files(&teacher_dir, COPIED_FILES)?;
    StudentConfig::from_plan(&plan)
        .write(&tmp.join(crate::boomerang::student_config::FILE_NAME))?;

    // Into place.
    let out = outdir.commit()?;

    Ok(InitStudentReport {
        teacher_dir,
        out,
        teacher_params: cfg.param_count(),
        student_params: scfg.param_count(),
        plan,
        copied_files,
        dropped_tensors,
        dtypes,
    })
}

/// Whether `name` belongs to a pruned teacher layer (expected to be left out).
fn is_pruned_layer_tensor(cfg: &ModelConfig, plan: &PrunePlan, name: &str) -> bool {
    plan.pruned
        .iter()
        .any(|&i| name.starts_with(&cfg.layer_prefix(i)))
}

/// A parameter count for people: 4.02B, 85.1M, 1234.
pub fn format_params(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2}B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else {
        n.to_string()
    }
}

fn short_list(v: &[String]) -> String {
    if v.len() <= 6 {
        v.join(", ")
    } else {
        format!("{}, ... ({} more)", v[..5].join(", "), v.len() - 5)
    }
}

fn list(v: &[usize]) -> String {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", s.join(", "))
}

/// Run the command and return the summary to print.
pub fn run(opts: &InitStudentOptions) -> Result<String> {
    let r = init_student(opts)?;
    let cfg = ModelConfig::from_file(&r.out.join("config.json"))?;
    let l = r.plan.num_teacher_layers;
    let n = r.plan.num_student_layers();
    let mut s = String::new();
    s += &format!(
        "teacher: {} ({}, {l} layers, {} parameters)\n",
        r.teacher_dir.display(),
        cfg.family.model_type(),
        format_params(r.teacher_params)
    );
    s += &format!(
        "pruning: {} -> pruned {} teacher layers {}\n",
        opts.params,
        r.plan.pruned.len(),
        list(&r.plan.pruned)
    );
    s += &format!(
        "student: {n} layers = teacher layers {}, {} parameters ({:.0}% of the teacher)\n",
        list(&r.plan.copied),
        format_params(r.student_params),
        100.0 * r.student_params as f64 / r.teacher_params as f64
    );
    match opts.random_init {
        None => {
            s += &format!(
                "weights: copied from the teacher in its stored dtype ({})\n",
                r.dtypes.join(", ")
            )
        }
        Some(seed) => {
            s += &format!(
                "weights: random (seed {seed}; normal(0, {}) matrices, norms 1, biases 0; {})\n",
                initializer_range(&cfg),
                r.dtypes.join(", ")
            )
        }
    }
    if !r.dropped_tensors.is_empty() {
        s += &format!(
            "note: {} teacher tensor(s) the model does not use were left out: {}\n",
            r.dropped_tensors.len(),
            short_list(&r.dropped_tensors)
        );
    }
    s += &format!(
        "wrote {} (config.json, model.safetensors, student_config.json{}{})\n",
        r.out.display(),
        if r.copied_files.is_empty() { "" } else { ", " },
        r.copied_files.join(", ")
    );
    Ok(s)
}
