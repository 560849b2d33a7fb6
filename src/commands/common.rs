//! Pieces every command uses: opening the GPU, loading models and text.

use std::path::{Path, PathBuf};

use crate::boomerang::{LayerSource, Part, PatchOrder, PatchPlan, PruneParams, PrunePlan};
use crate::error::{Error, Result};
use crate::gpu::{format_bytes, Gpu, GpuOptions};
use crate::model::decoder::Decoder;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Checkpoint;
use crate::model::{source, ModelConfig};

pub fn open_gpu(opts: &GpuOptions) -> Result<Gpu> {
    let gpu = Gpu::open(opts)?;
    eprintln!("GPU: {}", gpu.describe());
    Ok(gpu)
}

/// A model loaded on the GPU with everything that describes it.
pub struct Loaded {
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    pub decoder: Decoder,
    pub tokenizer: Option<Tokenizer>,
}

/// Resolve, check and upload a model in its stored dtypes; with `q8`, a
/// frozen teacher's layer matrices in 8-bit blocks (`Decoder::load_8bit`).
pub fn load_model(gpu: &Gpu, reference: &str, q8: bool) -> Result<Loaded> {
    let dir = source::resolve(reference)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(&dir)?;
    upload(gpu, reference, dir, cfg, &ckpt, q8)
}

/// Upload an opened checkpoint and load its tokenizer.
fn upload(
    gpu: &Gpu,
    reference: &str,
    dir: PathBuf,
    cfg: ModelConfig,
    ckpt: &Checkpoint,
    q8: bool,
) -> Result<Loaded> {
    // Files are checked before anything goes to the GPU.
    ckpt.check(&cfg)?;
    let tokenizer = if dir.join("tokenizer.json").exists() {
        let t = Tokenizer::from_dir(&dir, &cfg.eos_token_ids, cfg.bos_token_id)?;
        t.check_vocab(&dir, cfg.vocab_size)?;
        Some(t)
    } else {
        None
    };
    let decoder = if q8 {
        Decoder::load_8bit(gpu, &cfg, ckpt)?
    } else {
        Decoder::load(gpu, &cfg, ckpt, false)?
    };
    // Say so when a table is over the binding limit and stored in blocks.
    let blocks = match decoder.embed.blocks().len() {
        1 => String::new(),
        n => format!(
            "; embedding{} in {n} blocks of rows",
            if decoder.head_is_embed() || decoder.head.is_split() {
                " and head"
            } else {
                ""
            }
        ),
    };
    let split_layers: usize = decoder.layers.iter().map(|l| l.split.len()).sum();
    let blocks = match split_layers {
        0 => blocks,
        n => format!("{blocks}; {n} layer weights in blocks of rows"),
    };
    eprintln!(
        "loaded {reference}: {} ({} layers, {:.1}M parameters, {} on the GPU{blocks})",
        cfg.family.model_type(),
        cfg.num_layers,
        decoder.params() as f64 / 1e6,
        format_bytes(decoder.weight_bytes())
    );
    Ok(Loaded {
        dir,
        cfg,
        decoder,
        tokenizer,
    })
}

pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", path.display())))
}

/// A teacher and its student, both on the GPU, with the student's plan:
/// every intermediate size is a list of references into these two.
pub struct Pair {
    pub teacher: Loaded,
    pub student: Loaded,
    pub plan: PrunePlan,
    /// The patch order the student's `student_config.json` stores, if any.
    pub stored_order: Option<PatchOrder>,
}

impl Pair {
    pub fn load(
        gpu: &Gpu,
        teacher: &str,
        student: &str,
        params: Option<PruneParams>,
    ) -> Result<Pair> {
        // Every check `boomgpu patch` makes (architectures match, the plan
        // agrees with any flags given) runs before anything is uploaded.
        let files = super::patch::Pair::open(teacher, student, params)?;
        let t = upload(
            gpu,
            teacher,
            files.teacher_dir,
            files.teacher_cfg,
            &files.teacher_ckpt,
            false,
        )?;
        let s = upload(
            gpu,
            student,
            files.student_dir,
            files.student_cfg,
            &files.student_ckpt,
            false,
        )?;
        Ok(Pair {
            teacher: t,
            student: s,
            plan: files.prune,
            stored_order: files.stored_order,
        })
    }

    /// The model with `k` units of `order` patched (`boomgpu patch`'s
    /// plan), sharing every tensor with the teacher and the student.
    pub fn patched(&self, k: usize, order: &PatchOrder) -> Result<(PatchPlan, Decoder)> {
        self.patched_with(&self.student.decoder, k, order)
    }

    /// Naive layer pruning at size `k`: the teacher's own layers that the
    /// patched model stands for (`PatchPlan::naive_layers`), with the
    /// teacher's embedding, final norm and head; untrained, and sharing
    /// every tensor with the teacher.
    /// `k = None`: the student's own size (the teacher's `copied` layers).
    pub fn naive(&self, k: Option<usize>, order: &PatchOrder) -> Result<Decoder> {
        let keep = match k {
            Some(k) => PatchPlan::ordered(&self.plan, k, order)?.naive_layers(&self.plan),
            None => self.plan.copied.clone(),
        };
        let t = &self.teacher.decoder;
        let layers = keep.into_iter().map(|j| t.layers[j].clone()).collect();
        Ok(Decoder::assemble(
            t,
            t.embed.clone(),
            layers,
            t.final_norm.clone(),
            t.head.clone(),
        ))
    }

    /// Size `k` patched from the teacher and `student`, a student of this
    /// pair's plan (`eval --before`: the student before distillation).
    pub fn patched_with(
        &self,
        student: &Decoder,
        k: usize,
        order: &PatchOrder,
    ) -> Result<(PatchPlan, Decoder)> {
        if student.layers.len() != self.plan.copied.len() {
            return Err(Error::Invalid(format!(
                "a student of {} layers for a plan that keeps {} teacher layers",
                student.layers.len(),
                self.plan.copied.len()
            )));
        }
        let plan = PatchPlan::ordered(&self.plan, k, order)?;
        let t = &self.teacher.decoder;
        let pick = |p: Part| if p == Part::Teacher { t } else { student };
        let layers = plan
            .layers
            .iter()
            .map(|l| match *l {
                LayerSource::Teacher(j) => t.layers[j].clone(),
                LayerSource::Student(i) => student.layers[i].clone(),
            })
            .collect();
        let dec = Decoder::assemble(
            t,
            pick(plan.embed).embed.clone(),
            layers,
            pick(plan.final_norm).final_norm.clone(),
            pick(plan.head).head.clone(),
        );
        Ok((plan, dec))
    }

    /// GPU bytes of teacher and student together (shared by every size).
    pub fn union_bytes(&self) -> u64 {
        self.teacher.decoder.weight_bytes() + self.student.decoder.weight_bytes()
    }
}
