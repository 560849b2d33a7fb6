//! `boomgpu patch`: export an intermediate model (boomerang step 3,
//! REFERENCE §4) as an ordinary Hugging Face folder. No GPU needed: the
//! tensors are copied byte for byte, each in its stored dtype, from the
//! memory-mapped teacher and student checkpoints and streamed into one
//! safetensors file. The folder is written atomically (see [`OutDir`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::init_student::{format_params, COPIED_FILES};
use super::order::OrderChoice;
use super::outdir::OutDir;
use crate::boomerang::init::{OutTensor, TensorData};
use crate::boomerang::patch::{compact_sources, PatchLayout};
use crate::boomerang::{
    Direction, Part, PatchOrder, PatchPlan, PlanSource, PruneParams, PrunePlan, StudentConfig,
};
use crate::error::{Error, Result};
use crate::gpu::{format_bytes, GpuOptions};
use crate::model::weights::Checkpoint;
use crate::model::{source, ModelConfig};

/// Name of the provenance file written next to the weights.
pub const PROVENANCE_FILE: &str = "boomgpu.json";

/// A teacher and its student, opened and checked.
pub struct Pair {
    pub teacher_ref: String,
    pub student_ref: String,
    pub teacher_dir: PathBuf,
    pub student_dir: PathBuf,
    pub teacher_cfg: ModelConfig,
    pub student_cfg: ModelConfig,
    pub teacher_ckpt: Checkpoint,
    pub student_ckpt: Checkpoint,
    /// Which teacher layers the student kept.
    pub prune: PrunePlan,
    pub plan_source: PlanSource,
    /// The patch order the student's `student_config.json` stores, if any.
    pub stored_order: Option<PatchOrder>,
}

/// Size of a model's weights as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    pub params: u64,
    pub bytes: u64,
}

fn open_model(reference: &str) -> Result<(PathBuf, ModelConfig, Checkpoint)> {
    let dir = source::resolve(reference)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(&dir)?;
    ckpt.check(&cfg)?;
    Ok((dir, cfg, ckpt))
}

fn list(v: &[usize]) -> String {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", s.join(", "))
}

impl Pair {
    /// Resolve, read and check teacher and student. `params`: the
    /// `--every/--keep-first/--keep-last` given (`None` when none was), used
    /// when the student has no `student_config.json` and checked against it
    /// when it has one.
    pub fn open(teacher: &str, student: &str, params: Option<PruneParams>) -> Result<Pair> {
        let (teacher_dir, teacher_cfg, teacher_ckpt) = open_model(teacher)?;
        let (student_dir, student_cfg, student_ckpt) = open_model(student)?;
        crate::boomerang::patch::check_compatible(&teacher_cfg, &student_cfg)
            .map_err(|e| Error::Invalid(format!("{student} and {teacher}: {e}")))?;
        let (prune, plan_source) = StudentConfig::load_plan(
            &student_dir,
            teacher_cfg.num_layers,
            student_cfg.num_layers,
            params,
        )?;
        if let (PlanSource::File, Some(p)) = (plan_source, params) {
            let given = PrunePlan::from_params(teacher_cfg.num_layers, p)?;
            if given.copied != prune.copied {
                return Err(Error::Invalid(format!(
                    "{}: its {} says the student copied teacher layers {}, but {p} gives {}; \
                     leave out --every/--keep-first/--keep-last (they are only needed for \
                     students without {})",
                    student_dir.display(),
                    crate::boomerang::student_config::FILE_NAME,
                    list(&prune.copied),
                    list(&given.copied),
                    crate::boomerang::student_config::FILE_NAME,
                )));
            }
        }
        let stored_order = StudentConfig::load_order(&student_dir, &prune)?;
        Ok(Pair {
            teacher_ref: teacher.to_string(),
            student_ref: student.to_string(),
            teacher_dir,
            student_dir,
            teacher_cfg,
            student_cfg,
            teacher_ckpt,
            student_ckpt,
            prune,
            plan_source,
            stored_order,
        })
    }

    pub fn ckpt(&self, part: Part) -> &Checkpoint {
        match part {
            Part::Student => &self.student_ckpt,
            Part::Teacher => &self.teacher_ckpt,
        }
    }

    /// The default patch order for this teacher's family.
    pub fn default_direction(&self) -> Direction {
        Direction::default_for(self.teacher_cfg.family)
    }

    /// `P`: valid `k` are `0..=P` in `direction`.
    pub fn max_k(&self, direction: Direction) -> usize {
        PatchPlan::max_k(&self.prune, direction)
    }

    /// The plan and layout of the model with `k` units of `order` patched.
    pub fn layout(&self, k: usize, order: &PatchOrder) -> Result<(PatchPlan, PatchLayout)> {
        let plan = PatchPlan::ordered(&self.prune, k, order)?;
        let layout = plan.layout(&self.teacher_cfg, &self.student_cfg, &self.prune)?;
        Ok((plan, layout))
    }

    /// Parameters and bytes of a layout's tensors in their stored dtypes.
    pub fn size(&self, layout: &PatchLayout) -> Size {
        let mut s = Size::default();
        for t in &layout.tensors {
            let e = &self.ckpt(t.part).tensors[&t.source];
            s.params += e.shape.iter().product::<usize>() as u64;
            s.bytes += (e.end - e.start) as u64;
        }
        s
    }

    /// Size of the student as it is.
    pub fn student_size(&self) -> Size {
        let mut s = Size::default();
        for (name, _) in self.student_cfg.expected_tensors() {
            let e = &self.student_ckpt.tensors[&name];
            s.params += e.shape.iter().product::<usize>() as u64;
            s.bytes += (e.end - e.start) as u64;
        }
        s
    }

    /// The output folder of `patch`, which must not be or hold an input.
    fn out_dir(&self, opts: &PatchOptions) -> Result<OutDir> {
        OutDir::prepare(
            &opts.out,
            opts.force,
            &[
                ("teacher", &self.teacher_dir),
                ("student", &self.student_dir),
            ],
        )
    }

    /// How the student's layer list was found, for people.
    pub fn plan_source_text(&self) -> String {
        match self.plan_source {
            PlanSource::File => crate::boomerang::student_config::FILE_NAME.to_string(),
            PlanSource::Rebuilt(p) => p.to_string(),
        }
    }
}

/// The prune parameters from optional flags: `None` when none was given,
/// else the given ones with the reference's defaults for the rest.
pub fn prune_params(
    every: Option<usize>,
    keep_first: Option<usize>,
    keep_last: Option<usize>,
) -> Option<PruneParams> {
    if every.is_none() && keep_first.is_none() && keep_last.is_none() {
        return None;
    }
    let d = PruneParams::default();
    Some(PruneParams {
        every: every.unwrap_or(d.every),
        keep_first: keep_first.unwrap_or(d.keep_first),
        keep_last: keep_last.unwrap_or(d.keep_last),
    })
}

#[derive(Clone, Debug)]
pub struct PatchOptions {
    /// Local folder or hub id.
    pub teacher: String,
    /// Local folder or hub id.
    pub student: String,
    /// Number of units of the order restored (`--layers K`); `None` with
    /// `--fit` (chosen by memory) or, with a chosen order, to export the
    /// student itself carrying that order.
    pub k: Option<usize>,
    /// `--fit SIZE [--ctx N]`.
    pub fit: Option<(String, Option<usize>)>,
    pub order: OrderChoice,
    pub out: PathBuf,
    pub force: bool,
    /// `--every/--keep-first/--keep-last`, if any was given.
    pub params: Option<PruneParams>,
    /// The GPU `--order auto --calibration` searches on.
    pub gpu: GpuOptions,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct PatchReport {
    pub out: PathBuf,
    pub plan: PatchPlan,
    pub max_k: usize,
    pub default_direction: Direction,
    pub tied: bool,
    pub head_name: String,
    pub size: Size,
    pub teacher_size: Size,
    pub dtypes: Vec<String>,
    pub copied_files: Vec<String>,
    pub teacher_dir: PathBuf,
    pub student_dir: PathBuf,
    pub plan_source: String,
    pub copied: Vec<usize>,
    pub family: &'static str,
    pub teacher_layers: usize,
    pub student_layers: usize,
}

fn abs(p: &Path) -> String {
    p.canonicalize()
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The provenance record written as `boomgpu.json`.
fn provenance(pair: &Pair, plan: &PatchPlan, layout: &PatchLayout, size: Size) -> Value {
    let sources: Vec<String> = plan.layers.iter().map(|l| l.to_string()).collect();
    json!({
        "boomgpu_version": env!("CARGO_PKG_VERSION"),
        "what": "boomerang-patched model (REFERENCE §4)",
        "teacher": {
            "ref": pair.teacher_ref,
            "path": abs(&pair.teacher_dir),
            "num_hidden_layers": pair.teacher_cfg.num_layers,
        },
        "student": {
            "ref": pair.student_ref,
            "path": abs(&pair.student_dir),
            "num_hidden_layers": pair.student_cfg.num_layers,
            "copied_teacher_layers": pair.prune.copied,
            "pruned_teacher_layers": pair.prune.pruned,
            "layers_from": pair.plan_source_text(),
        },
        "k": plan.k,
        "direction": plan.direction.name(),
        "order": if plan.auto { "auto" } else { "reference" },
        "max_k": PatchPlan::max_k(&pair.prune, plan.direction),
        "is_teacher": plan.is_teacher,
        "num_hidden_layers": plan.num_layers(),
        "layers": sources,
        "layers_compact": compact_sources(&plan.layers),
        "embed": plan.embed.to_string(),
        "final_norm": plan.final_norm.to_string(),
        "lm_head": plan.head.to_string(),
        "tie_word_embeddings": layout.tied,
        "params": size.params,
        "bytes": size.bytes,
    })
}

/// The order `patch` follows: resolved from the flags and the student's
/// file, or searched on the GPU for `--order auto --calibration`.
fn resolve_order(pair: &Pair, opts: &PatchOptions) -> Result<PatchOrder> {
    let default = pair.default_direction();
    if opts.order.calibration().is_none() {
        let o = opts
            .order
            .resolve(default, pair.stored_order.as_ref(), &pair.student_dir)?;
        if !o.is_reference() {
            eprintln!("{}", super::order::describe(&o, &pair.prune));
        }
        return Ok(o);
    }
    let gpu = super::common::open_gpu(&opts.gpu)?;
    let loaded = super::common::Pair::load(&gpu, &opts.teacher, &opts.student, opts.params)?;
    super::order::for_pair(&gpu, &loaded, &opts.order, None)
}

/// Export size `k` of `order` (or, with `k = None` and a chosen order,
/// the student carrying it). Returns the summary to print.
pub fn run(opts: &PatchOptions) -> Result<String> {
    if super::encoder::pair_is_encoder(&opts.teacher, &opts.student)? {
        return super::encoder_patch::run(opts);
    }
    let pair = Pair::open(&opts.teacher, &opts.student, opts.params)?;
    let order = resolve_order(&pair, opts)?;
    let k = match (opts.k, &opts.fit) {
        (Some(k), _) => Some(k),
        (None, Some((size, ctx))) => {
            let budget = super::fit::parse_size(size)?;
            let ctx = ctx.unwrap_or_else(|| {
                super::fit::default_ctx(pair.teacher_cfg.max_position_embeddings)
            });
            let f = super::fit::choose(&pair, &order, budget, ctx)?;
            eprintln!("{}", f.report);
            Some(f.k)
        }
        (None, None) => None,
    };
    match k {
        Some(k) => Ok(summary(&patch(&pair, k, &order, opts)?)),
        None if !order.is_reference() => export_student(&pair, &order, opts),
        None => Err(Error::Invalid(
            "say which size to export: --layers K or --fit SIZE (or, with --order auto, \
             neither, to export the student with its chosen order)"
                .into(),
        )),
    }
}

/// The student as it is, its weights linked (or copied) byte for byte,
/// with a `student_config.json` that stores `order`: chat, eval and patch
/// follow it for this folder.
fn export_student(pair: &Pair, order: &PatchOrder, opts: &PatchOptions) -> Result<String> {
    let outdir = pair.out_dir(opts)?;
    let mut names: Vec<String> = Vec::new();
    let entries =
        std::fs::read_dir(&pair.student_dir).map_err(|e| Error::io(&pair.student_dir, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(&pair.student_dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if e.path().is_file()
            && (weights || name == "config.json" || COPIED_FILES.contains(&name.as_str()))
        {
            names.push(name);
        }
    }
    names.sort();
    let mut linked = 0;
    for name in &names {
        let (src, dst) = (pair.student_dir.join(name), outdir.path().join(name));
        // A hard link costs no space; across file systems, a copy.
        if name.ends_with(".safetensors") && std::fs::hard_link(&src, &dst).is_ok() {
            linked += 1;
            continue;
        }
        std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
    }
    StudentConfig::from_plan(&pair.prune)
        .with_order(&pair.prune, order)
        .write(
            &outdir
                .path()
                .join(crate::boomerang::student_config::FILE_NAME),
        )?;
    let out = outdir.commit()?;
    Ok(format!(
        "wrote {} ({}; weights {}): the student of {} with its patch order in {}\n\
         {}\nchat, eval and patch follow this order with --student {}; --first/--last return to the reference's\n",
        out.display(),
        names.join(", "),
        if linked > 0 { "hard-linked" } else { "copied" },
        pair.teacher_ref,
        crate::boomerang::student_config::FILE_NAME,
        super::order::describe(order, &pair.prune),
        out.display()
    ))
}

/// Write size `k` of `order` to `opts.out`.
pub fn patch(
    pair: &Pair,
    k: usize,
    order: &PatchOrder,
    opts: &PatchOptions,
) -> Result<PatchReport> {
    let direction = order.direction;
    let (plan, layout) = pair.layout(k, order)?;
    let outdir = pair.out_dir(opts)?;
    let tmp = outdir.path().to_path_buf();

    // config.json (the teacher's own file, verbatim, for the teacher itself)
    let path = tmp.join("config.json");
    if plan.is_teacher {
        let src = pair.teacher_dir.join("config.json");
        std::fs::copy(&src, &path).map_err(|e| Error::io(&src, e))?;
    } else {
        let text = serde_json::to_string_pretty(&layout.config.raw).expect("JSON value");
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    }

    // model.safetensors: every tensor borrowed from its mapped source.
    let expected: HashMap<String, Vec<usize>> =
        layout.config.expected_tensors().into_iter().collect();
    let mut tensors: BTreeMap<String, OutTensor> = BTreeMap::new();
    for t in &layout.tensors {
        let ck = pair.ckpt(t.part);
        let e = &ck.tensors[&t.source];
        if expected.get(&t.name) != Some(&e.shape) {
            return Err(Error::Invalid(format!(
                "{} tensor '{}' has shape {:?} but '{}' of the patched model needs {:?}",
                t.part,
                t.source,
                e.shape,
                t.name,
                expected.get(&t.name)
            )));
        }
        tensors.insert(
            t.name.clone(),
            OutTensor {
                dtype: e.dtype,
                shape: e.shape.clone(),
                data: TensorData::Borrowed(ck.bytes(&t.source).expect("checked")),
            },
        );
    }
    if tensors.len() != expected.len() {
        return Err(Error::Invalid(format!(
            "internal: {} tensors for a model of {}",
            tensors.len(),
            expected.len()
        )));
    }
    let size = pair.size(&layout);
    let dtypes = outdir.write_weights(tensors)?;
    // Tokenizer and generation settings from the teacher, provenance.
    let copied_files = outdir.copy_files(&pair.teacher_dir, COPIED_FILES)?;
    let path = tmp.join(PROVENANCE_FILE);
    let mut prov = provenance(pair, &plan, &layout, size);
    if !order.is_reference() {
        prov["patch_order"] = order.to_json(&pair.prune);
    }
    let text = serde_json::to_string_pretty(&prov).expect("JSON value");
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;

    let out = outdir.commit()?;
    let (_, tlayout) = pair.layout(pair.max_k(direction), order)?;
    Ok(PatchReport {
        out,
        max_k: pair.max_k(direction),
        default_direction: pair.default_direction(),
        tied: layout.tied,
        head_name: layout.config.head_name().to_string(),
        size,
        teacher_size: pair.size(&tlayout),
        dtypes,
        copied_files,
        teacher_dir: pair.teacher_dir.clone(),
        student_dir: pair.student_dir.clone(),
        plan_source: pair.plan_source_text(),
        copied: pair.prune.copied.clone(),
        family: pair.teacher_cfg.family.model_type(),
        teacher_layers: pair.teacher_cfg.num_layers,
        student_layers: pair.student_cfg.num_layers,
        plan,
    })
}

/// What `patch` wrote, for people.
fn summary(r: &PatchReport) -> String {
    let p = &r.plan;
    let mut s = String::new();
    s += &format!(
        "teacher: {} ({}, {} layers)\n",
        r.teacher_dir.display(),
        r.family,
        r.teacher_layers
    );
    s += &format!(
        "student: {} ({} layers = teacher layers {}, from {})\n",
        r.student_dir.display(),
        r.student_layers,
        list(&r.copied),
        r.plan_source
    );
    s += &format!(
        "patch: {}{}, k = {} of 0..={}\n",
        if p.auto {
            format!("auto order ({}-based)", p.direction)
        } else {
            format!("{}-k", p.direction)
        },
        if p.direction == r.default_direction && !p.auto {
            format!(" (default for {})", r.family)
        } else {
            String::new()
        },
        p.k,
        r.max_k
    );
    if p.is_teacher {
        s += &format!(
            "model: k = {} is the top of the range: the teacher itself ({} layers)\n",
            p.k,
            p.num_layers()
        );
    } else {
        s += &format!(
            "model: {} layers = {}; embeddings {}, final norm {}, LM head {}\n",
            p.num_layers(),
            compact_sources(&p.layers),
            p.embed,
            p.final_norm,
            p.head
        );
    }
    s += &if r.tied {
        "embeddings: tied (no LM head tensor)\n".to_string()
    } else {
        format!(
            "embeddings: untied (tie_word_embeddings false, explicit {})\n",
            r.head_name
        )
    };
    s += &format!(
        "size: {} parameters ({:.0}% of the teacher), {} of weights ({})\n",
        format_params(r.size.params),
        100.0 * r.size.params as f64 / r.teacher_size.params as f64,
        format_bytes(r.size.bytes),
        r.dtypes.join(", ")
    );
    s += &format!(
        "wrote {} (config.json, model.safetensors, {PROVENANCE_FILE}{}{})\n",
        r.out.display(),
        if r.copied_files.is_empty() { "" } else { ", " },
        r.copied_files.join(", ")
    );
    s
}
