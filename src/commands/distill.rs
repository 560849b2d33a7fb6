//! `boomgpu distill`: train a student to match its teacher (REFERENCE §3).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::common::{load_model, open_gpu};
use crate::boomerang::patch::check_compatible;
use crate::boomerang::{reference_alignment, Hidden, PruneParams, PrunePlan, StudentConfig};
use crate::commands::init_student::{init_student, student_config_json, InitStudentOptions};
use crate::error::{Error, Result};
use crate::gpu::{format_bytes, DType, GpuOptions};
use crate::model::decoder::Decoder;
use crate::model::weights::Checkpoint;
use crate::model::ModelConfig;
use crate::progress::Progress;
use crate::train::data::{token_stream, Corpus};
use crate::train::plan::{
    over_budget, plan_within, rehearse, suggestion, tag, within_budget, MemoryPlan, PlanSpec,
};
use crate::train::run::{write_student_folder, DistillOptions, StepLog, Trainer};
use crate::train::student::import_values;

pub struct DistillArgs {
    pub teacher: String,
    pub student: Option<String>,
    pub data: Vec<PathBuf>,
    /// Required for a run; not for `--plan`.
    pub out: Option<PathBuf>,
    pub seq_len: usize,
    pub opts: DistillOptions,
    pub prune: Option<PruneParams>,
    pub random_init: bool,
    pub save_every: usize,
    pub eval_every: usize,
    pub eval_tokens: usize,
    pub resume: Option<PathBuf>,
    pub log: Option<PathBuf>,
    /// dtype of the written student (f32, bf16, f16); None: the teacher's.
    pub save_dtype: Option<String>,
    pub quiet: bool,
    /// GPU memory the run may use (`--memory-budget`: `24GiB`, `900MiB`,
    /// bytes); None: the adapter's memory less a margin, where known.
    pub memory_budget: Option<String>,
    /// Host memory the run may use (`--host-memory-budget`); None: what
    /// the host has available now, where known.
    pub host_budget: Option<String>,
    pub mode: TrainMode,
    /// The teacher's layer matrices in 8-bit blocks on the GPU.
    pub teacher_8bit: bool,
}

impl TrainMode {
    /// From the `--lean` and `--exact` switches (clap keeps them apart).
    pub fn from_flags(lean: bool, exact: bool) -> TrainMode {
        match (lean, exact) {
            (true, _) => TrainMode::Lean,
            (_, true) => TrainMode::Exact,
            _ => TrainMode::Auto,
        }
    }
}

/// `--exact`, `--lean`, or the plan's choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainMode {
    /// Exact mode when its plan fits the budget, else lean mode.
    #[default]
    Auto,
    /// f32 weights, gradients and AdamW states on the GPU.
    Exact,
    /// bf16 compute weights on the GPU; f32 masters and AdamW on the host.
    Lean,
}

/// Most tokens one optimiser step may cover (--batch × --grad-accum ×
/// --seq-len): far beyond any GPU, small enough that sizes derived from it
/// cannot overflow.
pub const MAX_TOKENS_PER_STEP: u64 = 1 << 40;

impl DistillArgs {
    /// The numeric flags, checked before anything is loaded: each error
    /// names the flag, the value and what is expected.
    pub fn validate(&self) -> Result<()> {
        self.budget_bytes()?;
        let o = &self.opts;
        let bad = |flag: &str, v: String, want: &str| {
            Err(Error::Invalid(format!("--{flag} {v}: expected {want}")))
        };
        if o.steps == 0 {
            return bad("steps", "0".into(), "at least 1 optimiser step");
        }
        if self.seq_len < 2 {
            return bad(
                "seq-len",
                self.seq_len.to_string(),
                "at least 2 tokens per sequence",
            );
        }
        for (flag, v) in [("batch", o.batch), ("grad-accum", o.grad_accum)] {
            if v == 0 {
                return bad(flag, "0".into(), "at least 1");
            }
        }
        let tokens = (o.batch as u64)
            .checked_mul(o.grad_accum as u64)
            .and_then(|x| x.checked_mul(self.seq_len as u64));
        if tokens.is_none_or(|t| t > MAX_TOKENS_PER_STEP) {
            return Err(Error::Invalid(format!(
                "--batch {} × --grad-accum {} × --seq-len {} tokens per optimiser step: expected \
                 at most 2^40",
                o.batch, o.grad_accum, self.seq_len
            )));
        }
        let non_negative = [
            ("lr", o.lr as f64),
            ("warmup", o.warmup),
            ("kl-weight", o.weights.kl as f64),
            ("cos-weight", o.weights.cos as f64),
            ("weight-decay", o.weight_decay as f64),
            ("max-grad-norm", o.max_grad_norm as f64),
        ];
        for (flag, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return bad(flag, v.to_string(), "a finite number >= 0");
            }
        }
        let t = o.weights.temperature;
        if !(t.is_finite() && t > 0.0 && (1.0 / t).is_finite()) {
            return bad("temperature", t.to_string(), "a finite number > 0");
        }
        Ok(())
    }
}

impl DistillArgs {
    /// `--memory-budget` in bytes.
    pub fn budget_bytes(&self) -> Result<Option<u64>> {
        size_flag("--memory-budget", self.memory_budget.as_deref())
    }

    /// `--host-memory-budget` in bytes, else the host's available memory.
    pub fn host_budget_bytes(&self) -> Result<Option<u64>> {
        Ok(
            size_flag("--host-memory-budget", self.host_budget.as_deref())?
                .or_else(crate::gpu::device::host_available_bytes),
        )
    }
}

fn size_flag(flag: &str, value: Option<&str>) -> Result<Option<u64>> {
    value
        .map(|s| {
            crate::gpu::device::parse_bytes(s).ok_or_else(|| {
                Error::Invalid(format!(
                    "{flag} {s}: expected a size such as 24GiB, 900MiB or a number of bytes \
                     (at least 1KiB)"
                ))
            })
        })
        .transpose()
}

/// The dtype the teacher's weights are stored in (that of its embedding,
/// or of the first floating-point tensor), for saving the student alike.
pub fn stored_dtype(dir: &std::path::Path) -> Result<DType> {
    let ck = Checkpoint::open(dir)?;
    let by_name = ck
        .tensors
        .iter()
        .find(|(n, _)| n.ends_with("embed_tokens.weight") || n.ends_with("embed_in.weight"))
        .or_else(|| ck.tensors.iter().next());
    Ok(match by_name.map(|(_, e)| e.dtype) {
        Some(safetensors::Dtype::BF16) => DType::BF16,
        Some(safetensors::Dtype::F16) => DType::F16,
        _ => DType::F32,
    })
}

/// `--save-dtype` values.
pub fn parse_save_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        _ => Err(Error::Invalid(format!(
            "--save-dtype {s}: expected f32, bf16 or f16"
        ))),
    }
}

/// Hidden-state pairs as Hugging Face indices: the reference's mapping
/// when the pruning parameters are known, else the plan's block rule.
fn pairs_for(plan: &PrunePlan, params: PruneParams) -> Vec<(usize, usize)> {
    let (l, n) = (plan.num_teacher_layers, plan.num_student_layers());
    match PrunePlan::from_params(l, params) {
        Ok(p) if p.copied == plan.copied => reference_alignment(l, params)
            .iter()
            .map(|a| {
                let idx = |h: Hidden, layers: usize| h.hf_index(layers);
                (idx(a.student, n), idx(a.teacher, l))
            })
            .collect(),
        _ => plan.alignment_hf(),
    }
}

fn log_line(file: &mut Option<std::fs::File>, log: &StepLog) -> Result<()> {
    if let Some(f) = file {
        writeln!(f, "{}", log.to_json())
            .map_err(|e| Error::Invalid(format!("writing the log: {e}")))?;
        f.flush()
            .map_err(|e| Error::Invalid(format!("writing the log: {e}")))?;
    }
    Ok(())
}

/// Keep the log lines of steps up to `step` (a resumed run's log then
/// reads as if it had never stopped).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(path, body).map_err(|e| Error::io(path, e))
}

/// The student of a run, known from config files alone (no weights).
struct StudentChoice {
    cfg: ModelConfig,
    plan: PrunePlan,
    /// Where its weights come from.
    from: StudentFrom,
}

enum StudentFrom {
    /// A checkpoint folder of an earlier run.
    Resume(PathBuf),
    /// A student folder (--student).
    Folder(PathBuf),
    /// Fresh random weights (--random-init).
    Random,
    /// The teacher's kept layers (the default).
    Pruned,
}

/// `--resume DIR`: the run's checkpoint folder (DIR/checkpoint, or DIR).
fn resume_dir(a: &DistillArgs) -> Option<PathBuf> {
    a.resume.as_ref().map(|d| {
        if d.join("checkpoint").is_dir() {
            d.join("checkpoint")
        } else {
            d.clone()
        }
    })
}

/// Which student, from config.json and student_config.json only.
fn choose_student(
    a: &DistillArgs,
    teacher: &ModelConfig,
    configs_only: bool,
) -> Result<StudentChoice> {
    let params = a.prune.unwrap_or_default();
    if let Some(ck) = resume_dir(a) {
        let cfg = ModelConfig::from_file(&ck.join("config.json"))?;
        check_compatible(teacher, &cfg)
            .map_err(|e| Error::Invalid(format!("{}: {e}", ck.display())))?;
        let (plan, _) =
            StudentConfig::load_plan(&ck, teacher.num_layers, cfg.num_layers, Some(params))?;
        return Ok(StudentChoice {
            cfg,
            plan,
            from: StudentFrom::Resume(ck),
        });
    }
    if let Some(s) = &a.student {
        let dir = if configs_only {
            crate::model::source::resolve_config(s)?
        } else {
            crate::model::source::resolve(s)?
        };
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        check_compatible(teacher, &cfg).map_err(|e| Error::Invalid(format!("{s}: {e}")))?;
        let (plan, _) =
            StudentConfig::load_plan(&dir, teacher.num_layers, cfg.num_layers, a.prune)?;
        return Ok(StudentChoice {
            cfg,
            plan,
            from: StudentFrom::Folder(dir),
        });
    }
    let plan = PrunePlan::from_params(teacher.num_layers, params)?;
    Ok(StudentChoice {
        cfg: student_config_json(teacher, &plan),
        plan,
        from: if a.random_init {
            StudentFrom::Random
        } else {
            StudentFrom::Pruned
        },
    })
}

/// The dtype a model's weights have on the GPU when loaded as stored: from
/// the safetensors headers when the folder has weights, else from
/// config.json's `torch_dtype` (`dtype` in newer files).
fn teacher_dtype(dir: &Path, cfg: &ModelConfig) -> Result<DType> {
    if Checkpoint::open(dir).is_ok() {
        return stored_dtype(dir);
    }
    let named = cfg.raw["torch_dtype"]
        .as_str()
        .or(cfg.raw["dtype"].as_str())
        .unwrap_or("float32");
    Ok(match named {
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        _ => DType::F32,
    })
}

/// What a memory plan of the run `a` describes is made of (exact mode),
/// from config files alone.
fn plan_spec(a: &DistillArgs, configs_only: bool) -> Result<PlanSpec> {
    let dir = if configs_only {
        crate::model::source::resolve_config(&a.teacher)?
    } else {
        crate::model::source::resolve(&a.teacher)?
    };
    let tcfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let choice = choose_student(a, &tcfg, configs_only)?;
    Ok(PlanSpec {
        teacher_dtype: teacher_dtype(&dir, &tcfg)?,
        pairs: pairs_for(&choice.plan, a.prune.unwrap_or_default()),
        teacher: tcfg,
        student: choice.cfg,
        seq_len: a.seq_len,
        opts: a.opts.clone(),
        eval: a.eval_tokens > 0,
        lean: false,
        teacher_8bit: a.teacher_8bit,
    })
}

/// The plan the run will follow: `--exact` or `--lean` as asked; else
/// exact mode when it fits the budget, lean mode when only that fits (or
/// neither does: the smaller plan, to refuse with). Returns the plan, its
/// budget, and the exact plan it replaced, if any.
fn choose_plan(
    gpu_opts: &GpuOptions,
    a: &DistillArgs,
    configs_only: bool,
) -> Result<(MemoryPlan, Option<u64>, Option<MemoryPlan>)> {
    // A resumed run keeps the mode of its checkpoint unless told otherwise
    // (the two modes round differently).
    let mode = match (a.mode, resume_dir(a)) {
        (TrainMode::Auto, Some(ck)) => {
            let state = std::fs::read_to_string(ck.join("trainer_state.json")).unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&state)
                .ok()
                .and_then(|v| v["mode"].as_str().map(String::from))
                .as_deref()
            {
                Some("lean") => TrainMode::Lean,
                Some("exact") => TrainMode::Exact,
                _ => TrainMode::Auto,
            }
        }
        (m, _) => m,
    };
    let mut spec = plan_spec(a, configs_only)?;
    spec.lean = mode == TrainMode::Lean;
    let first = rehearse(gpu_opts, &spec)?;
    let budget = budget_for(&first, a.budget_bytes()?);
    let first = within_budget(gpu_opts, first, budget)?;
    if mode != TrainMode::Auto || first.fits(budget) != Some(false) {
        let first = fit_host(gpu_opts, a, first, budget)?;
        return Ok((first, budget, None));
    }
    spec.lean = true;
    let lean_plan = plan_within(gpu_opts, &spec, budget)?;
    let lean_plan = fit_host(gpu_opts, a, lean_plan, budget)?;
    Ok((lean_plan, budget, Some(first)))
}

/// The plan with its host budget; a lean plan whose f32 moments would not
/// fit the host is planned again with 8-bit moments (unless they were
/// asked for already), and says so.
fn fit_host(
    gpu_opts: &GpuOptions,
    a: &DistillArgs,
    mut plan: MemoryPlan,
    budget: Option<u64>,
) -> Result<MemoryPlan> {
    let host = a.host_budget_bytes()?;
    if let Some(h) =
        host.filter(|&h| plan.spec.lean && !plan.spec.opts.adam_8bit && plan.host_peak_bytes > h)
    {
        let f32_peak = plan.host_peak_bytes;
        let mut spec = plan.spec.clone();
        spec.opts.adam_8bit = true;
        plan = plan_within(gpu_opts, &spec, budget)?;
        plan.notes.push(format!(
            "8-bit AdamW moments chosen: f32 moments would take {} of host memory, over the \
             host budget of {}",
            crate::gpu::format_bytes(f32_peak),
            crate::gpu::format_bytes(h)
        ));
    }
    plan.host_budget = host;
    Ok(plan)
}

/// What the exact plan would have needed, when lean mode replaced it.
fn replaced_note(exact: &Option<MemoryPlan>, budget: Option<u64>) -> String {
    match (exact, budget) {
        (Some(e), Some(b)) => format!(
            "  exact mode would need {} (over the budget of {}): lean mode chosen \
             (--exact to insist)\n",
            format_bytes(e.gpu_peak_bytes),
            format_bytes(b)
        ),
        _ => String::new(),
    }
}

/// The GPU budget: `--memory-budget`, else the adapter's memory less a
/// margin for the driver and other programs (1/16, at least 512 MiB).
pub fn budget_for(plan: &MemoryPlan, asked: Option<u64>) -> Option<u64> {
    asked.or(plan
        .adapter_memory
        .map(|m| m.saturating_sub((m / 16).max(512 << 20))))
}

/// `distill --plan`: the plan, as text or one JSON object.
pub fn plan_only(gpu_opts: &GpuOptions, a: &DistillArgs, json: bool) -> Result<String> {
    a.validate()?;
    let (plan, budget, exact) = choose_plan(gpu_opts, a, true)?;
    if json {
        let mut v = plan.to_json(budget);
        if let Some(e) = &exact {
            v["exact_gpu_peak_bytes"] = serde_json::json!(e.gpu_peak_bytes);
        }
        return Ok(format!("{v}\n"));
    }
    let mut out = replaced_note(&exact, budget);
    out.push_str(&plan.describe(budget));
    if plan.fits(budget) == Some(false) {
        let spec = plan.spec.clone();
        let tip = suggestion(gpu_opts, &spec, budget.expect("a budget"))?;
        out.push_str(&format!("  would fit: {tip}\n"));
    }
    Ok(out)
}

pub fn run(gpu_opts: &GpuOptions, a: &DistillArgs) -> Result<String> {
    a.validate()?;
    let save_dtype = a.save_dtype.as_deref().map(parse_save_dtype).transpose()?;
    let out_dir = a
        .out
        .clone()
        .ok_or_else(|| Error::Invalid("--out is required (except with --plan)".into()))?;
    if a.data.is_empty() {
        return Err(Error::Invalid(
            "--data is required (except with --plan)".into(),
        ));
    }
    // The plan first: a run that cannot fit is refused before any weight
    // is read or any GPU memory is taken.
    let (mplan, budget, exact) = choose_plan(gpu_opts, a, false)?;
    eprint!(
        "{}{}",
        replaced_note(&exact, budget),
        mplan.describe(budget)
    );
    let lean = mplan.spec.lean;
    if let (Some(false), Some(b)) = (mplan.fits(budget), budget) {
        let tip = suggestion(gpu_opts, &mplan.spec, b)?;
        return Err(over_budget(&mplan, b, &tip));
    }
    if let (Some(false), Some(h)) = (mplan.host_fits(), mplan.host_budget) {
        return Err(Error::Invalid(format!(
            "the planned host memory peak is {} ({} bytes), over the host budget of {} ({} \
             bytes){}. Nothing was loaded. Pass --host-memory-budget if more is free than the \
             host reports available",
            crate::gpu::format_bytes(mplan.host_peak_bytes),
            mplan.host_peak_bytes,
            crate::gpu::format_bytes(h),
            h,
            if mplan.spec.lean && mplan.spec.opts.adam_8bit {
                " even with 8-bit AdamW moments"
            } else {
                ""
            }
        )));
    }
    // The plan may have chosen 8-bit moments for the host's sake.
    let mut opts = a.opts.clone();
    opts.adam_8bit = mplan.spec.opts.adam_8bit;
    let gpu = open_gpu(gpu_opts)?;
    gpu.alloc.set_budget(budget);
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
    let teacher = {
        let _t = gpu.alloc.tagged(tag::TEACHER);
        load_model(&gpu, &a.teacher, a.teacher_8bit)?
    };
    let tok = teacher.tokenizer.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no tokenizer.json; distill tokenises --data with the teacher's tokenizer",
            teacher.dir.display()
        ))
    })?;
    let params = a.prune.unwrap_or_default();
    let choice = choose_student(a, &teacher.cfg, false)?;
    let resume_dir = match &choice.from {
        StudentFrom::Resume(d) => Some(d.clone()),
        _ => None,
    };
    let (scfg, plan) = (choice.cfg, choice.plan);
    // Where the student's starting weights are: a folder, the config that
    // names its tensors, and the layer of it each student layer comes from.
    let init_dir = out_dir.join("initial-student");
    if matches!(choice.from, StudentFrom::Random) {
        init_student(&InitStudentOptions {
            teacher: teacher.dir.display().to_string(),
            out: init_dir.clone(),
            params,
            random_init: Some(a.opts.seed),
            force: true,
        })?;
    }
    let own_layers: Vec<usize> = (0..scfg.num_layers).collect();
    let (weights_dir, names_cfg, layer_map): (PathBuf, &ModelConfig, &[usize]) = match &choice.from
    {
        StudentFrom::Resume(d) | StudentFrom::Folder(d) => (d.clone(), &scfg, &own_layers),
        StudentFrom::Random => (init_dir.clone(), &scfg, &own_layers),
        StudentFrom::Pruned => (teacher.dir.clone(), &teacher.cfg, &plan.copied),
    };
    let student = {
        let _t = gpu.alloc.tagged(tag::STUDENT);
        if lean {
            Decoder::shaped_as(&gpu, &scfg, DType::BF16, DType::F32)?
        } else if matches!(choice.from, StudentFrom::Pruned) {
            let ckpt = Checkpoint::open(&teacher.dir)?;
            Decoder::load_layers(&gpu, &teacher.cfg, &ckpt, true, &plan.copied)?
        } else {
            Decoder::load(&gpu, &scfg, &Checkpoint::open(&weights_dir)?, true)?
        }
    };
    let pairs = pairs_for(&plan, params);
    eprintln!(
        "student: {} layers (teacher layers {:?}), {:.1}M parameters; {} aligned hidden-state pairs",
        scfg.num_layers,
        plan.copied,
        student.params() as f64 / 1e6,
        pairs.len()
    );
    let eos = *teacher
        .cfg
        .eos_token_ids
        .first()
        .or(tok.eos_ids.first())
        .ok_or_else(|| {
            Error::Invalid("the teacher has no eos_token_id to join documents with".into())
        })?;
    let stream = token_stream(&a.data, tok, eos, teacher.cfg.vocab_size)?;
    let corpus = Corpus::pack(&stream, a.seq_len, a.eval_tokens)?;
    let tokens_per_step = a.opts.batch * a.opts.grad_accum * a.seq_len;
    eprintln!(
        "data: {} tokens → {} training sequences of {} (+{} held out); {} tokens per optimiser step",
        stream.len(),
        corpus.train.len(),
        a.seq_len,
        corpus.eval.len(),
        tokens_per_step
    );
    eprintln!(
        "loss at the head: {}",
        crate::model::head::describe_workspace(
            &gpu,
            teacher.cfg.vocab_size,
            a.opts.batch * a.seq_len,
            2
        )?
    );
    if tokens_per_step < 1 << 20 {
        eprintln!(
            "note: the reference trains with 2048 sequences of 2048 tokens per step (≈4.2M tokens); \
             this run uses {} × {} × {} — raise --grad-accum to approach it",
            a.opts.batch, a.opts.grad_accum, a.seq_len
        );
    }
    let mut tr = if lean {
        let ckpt = Checkpoint::open(&weights_dir)?;
        Trainer::new_lean(
            &gpu,
            &teacher.decoder,
            student,
            pairs,
            &corpus,
            opts.clone(),
            |p| import_values(names_cfg, p, &ckpt, layer_map),
        )?
    } else {
        Trainer::new(
            &gpu,
            &teacher.decoder,
            student,
            pairs,
            &corpus,
            opts.clone(),
        )?
    };
    let sc = StudentConfig::from_plan(&plan);
    tr.checkpoint_files.push((
        "student_config.json".into(),
        serde_json::to_string_pretty(&sc.to_json()).expect("json"),
    ));
    if let Some(ck) = &resume_dir {
        tr.restore(ck)?;
        eprintln!("resumed at step {} of {}", tr.step, a.opts.steps);
    }
    let mut log = match &a.log {
        Some(p) => {
            if resume_dir.is_some() {
                truncate_log(p, tr.step)?;
            } else if p.exists() {
                std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            }
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::io(p, e))?,
            )
        }
        None => None,
    };
    if !corpus.eval.is_empty() && tr.step == 0 {
        if let Some(e) = tr.evaluate()? {
            eprintln!(
                "held-out before training: loss {:.4} ce {:.4} kl {:.4} cos {:.4}",
                e.loss, e.ce, e.kl, e.cos
            );
        }
    }
    let mut bar = Progress::new("distill", a.opts.steps, "steps").quiet(a.quiet);
    let mut last = None;
    while tr.step < a.opts.steps {
        let l = tr.train_step()?;
        log_line(&mut log, &l)?;
        bar.update(
            l.step,
            &format!(
                "loss {:.4} (ce {:.4} kl {:.4} cos {:.4}) {:.0} tok/s peak {}",
                l.loss,
                l.ce,
                l.kl,
                l.cos,
                l.tokens_per_s,
                format_bytes(l.peak_bytes)
            ),
        );
        if a.eval_every > 0 && l.step % a.eval_every == 0 {
            if let Some(e) = tr.evaluate()? {
                bar.println(&format!(
                    "held-out at step {}: loss {:.4} ce {:.4} kl {:.4} cos {:.4}",
                    l.step, e.loss, e.ce, e.kl, e.cos
                ));
            }
        }
        if a.save_every > 0 && l.step % a.save_every == 0 && l.step < a.opts.steps {
            tr.save_checkpoint(&scfg, &out_dir)?;
        }
        last = Some(l);
    }
    let save_dtype = match save_dtype {
        Some(d) => d,
        None => stored_dtype(&teacher.dir)?,
    };
    write_student_folder(
        &mut tr,
        &scfg,
        &teacher.dir,
        &sc.to_json(),
        &out_dir,
        save_dtype,
    )?;
    tr.save_checkpoint(&scfg, &out_dir)?;
    let held = tr.evaluate()?;
    let mut out = format!(
        "wrote the student to {} ({} weights)\n",
        out_dir.display(),
        save_dtype.name()
    );
    if let Some(l) = last {
        out.push_str(&format!(
            "last step {}: loss {:.4} ce {:.4} kl {:.4} cos {:.4}\n",
            l.step, l.loss, l.ce, l.kl, l.cos
        ));
    }
    if let Some(e) = held {
        out.push_str(&format!(
            "held-out after training: loss {:.4} ce {:.4} kl {:.4} cos {:.4}\n",
            e.loss, e.ce, e.kl, e.cos
        ));
    }
    let peak = gpu.memory().peak_device_bytes;
    out.push_str(&format!(
        "GPU peak {} ({peak} bytes); planned {} ({} bytes)\n",
        format_bytes(peak),
        format_bytes(mplan.gpu_peak_bytes),
        mplan.gpu_peak_bytes
    ));
    Ok(out)
}
