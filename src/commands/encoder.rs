//! The encoder family in `boomgpu eval`: pseudo-perplexity of one model,
//! of one interpolated size of a BERT / DistilBERT pair, or of every size
//! with the naive-pruning baseline (the reference's DistilBERT notebook).
//! An interpolated model takes the student's embeddings and first layers,
//! then the teacher's layers from the cut-off up, and the teacher's
//! masked-LM head (last-k patching; first-k is the mirror image).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::common::{open_gpu, read_text};
use super::eval::{report, CurveRow, EvalArgs, Report, Sizes, Target};
use crate::boomerang::student_config::StudentConfig;
use crate::boomerang::{LayerSource, Part, PatchOrder, PatchPlan, PruneParams, PrunePlan};
use crate::error::{Error, Result};
use crate::gpu::{format_bytes, Gpu, GpuOptions};
use crate::model::encoder::Encoder;
use crate::model::encoder_config::{is_encoder_type, model_type_of, EncoderConfig, EncoderKind};
use crate::model::pseudo::{self, PseudoPerplexity, Special};
use crate::model::score::Perplexity;
use crate::model::source;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Checkpoint;
use crate::progress::Progress;

/// The teacher layers distilbert-base-uncased's six layers were copied
/// from (its paper's initialisation; the hub folder has no
/// student_config.json).
pub const DISTILBERT_COPIED: [usize; 6] = [0, 2, 4, 7, 9, 11];

/// The `model_type` of a model reference, from its config.json alone.
pub fn model_type(reference: &str) -> Result<String> {
    model_type_of(&source::resolve_config(reference)?.join("config.json"))
}

/// Whether a model reference is an encoder.
pub fn is_encoder(reference: &str) -> Result<bool> {
    Ok(is_encoder_type(&model_type(reference)?))
}

/// Whether a teacher and student are encoders; a pair mixing an encoder
/// and a decoder is refused. A reference whose config cannot be read here
/// goes the decoder way, which says what is wrong with it.
pub fn pair_is_encoder(teacher: &str, student: &str) -> Result<bool> {
    let (tk, sk) = (model_type(teacher).ok(), model_type(student).ok());
    let is_enc = |k: &Option<String>| k.as_deref().is_some_and(is_encoder_type);
    if is_enc(&tk) != is_enc(&sk) {
        let name = |k: &Option<String>| k.clone().unwrap_or_else(|| "?".into());
        let what = |k: &Option<String>| if is_enc(k) { "an encoder" } else { "a decoder" };
        return Err(Error::Invalid(format!(
            "the teacher {teacher} is {} ({}) and the student {student} {} ({}): a teacher \
             and its student are one family",
            what(&tk),
            name(&tk),
            what(&sk),
            name(&sk)
        )));
    }
    Ok(is_enc(&tk))
}

/// An encoder's files, checked, not yet on the GPU.
pub struct EncoderFiles {
    pub dir: PathBuf,
    pub cfg: EncoderConfig,
    pub ckpt: Checkpoint,
    pub tokenizer: Option<Tokenizer>,
}

impl EncoderFiles {
    pub fn open(reference: &str) -> Result<EncoderFiles> {
        let dir = source::resolve(reference)?;
        let cfg = EncoderConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(&dir)?;
        Encoder::check(&cfg, &ckpt)
            .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
        let tokenizer = match dir.join("tokenizer.json").exists() {
            true => {
                let t = Tokenizer::from_dir(&dir, &[], None)?;
                t.check_vocab(&dir, cfg.vocab_size)?;
                Some(t)
            }
            false => None,
        };
        Ok(EncoderFiles {
            dir,
            cfg,
            ckpt,
            tokenizer,
        })
    }

    pub fn upload(&self, gpu: &Gpu) -> Result<Encoder> {
        Encoder::load(gpu, &self.cfg, &self.ckpt)
    }

    /// The tokenizer and its special ids, or why there are none.
    pub fn special(&self) -> Result<(&Tokenizer, Special)> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no tokenizer.json; pseudo-perplexity needs the model's tokenizer",
                self.dir.display()
            ))
        })?;
        Ok((tok, Special::of(tok)?))
    }
}

/// A teacher and a student of the encoder family with the student's plan,
/// checked before anything is uploaded.
pub struct EncoderPair {
    pub teacher: EncoderFiles,
    pub student: EncoderFiles,
    pub plan: PrunePlan,
    /// Said when the plan was assumed rather than read.
    pub note: Option<String>,
}

impl EncoderPair {
    pub fn open(teacher: &str, student: &str, params: Option<PruneParams>) -> Result<EncoderPair> {
        let t = EncoderFiles::open(teacher)?;
        let s = EncoderFiles::open(student)?;
        let (tc, sc) = (&t.cfg, &s.cfg);
        for (what, a, b) in [
            ("width", tc.hidden_size, sc.hidden_size),
            ("attention heads", tc.num_heads, sc.num_heads),
            ("MLP width", tc.intermediate_size, sc.intermediate_size),
            ("vocabulary", tc.vocab_size, sc.vocab_size),
            (
                "positions",
                tc.max_position_embeddings,
                sc.max_position_embeddings,
            ),
        ] {
            if a != b {
                return Err(Error::Invalid(format!(
                    "the student's {what} is {b} and the teacher's {a}: {} is not a student of {}",
                    s.dir.display(),
                    t.dir.display()
                )));
            }
        }
        let file = s.dir.join("student_config.json");
        let distilbert_default = !file.exists()
            && params.is_none()
            && sc.kind == EncoderKind::DistilBert
            && tc.num_layers == 12
            && sc.num_layers == DISTILBERT_COPIED.len();
        let (plan, note) = if distilbert_default {
            let pruned = (0..12).filter(|l| !DISTILBERT_COPIED.contains(l)).collect();
            let plan = PrunePlan::from_lists(12, pruned, DISTILBERT_COPIED.to_vec())?;
            let note = format!(
                "{}: no student_config.json; DistilBERT's layers are taken as copies of teacher \
                 layers {DISTILBERT_COPIED:?}, as distilbert-base-uncased was initialised",
                s.dir.display()
            );
            (plan, Some(note))
        } else {
            let (plan, _) = StudentConfig::load_plan(&s.dir, tc.num_layers, sc.num_layers, params)?;
            (plan, None)
        };
        Ok(EncoderPair {
            teacher: t,
            student: s,
            plan,
            note,
        })
    }
}

/// Both models of a pair on the GPU.
pub struct Loaded {
    pub teacher: Encoder,
    pub student: Encoder,
}

impl Loaded {
    /// Size `k` of `order`, sharing every tensor with the two models.
    pub fn patched(
        &self,
        plan: &PrunePlan,
        k: usize,
        order: &PatchOrder,
    ) -> Result<(PatchPlan, Encoder)> {
        let p = PatchPlan::ordered(plan, k, order)?;
        let (t, s) = (&self.teacher, &self.student);
        let pick = |part: Part| if part == Part::Teacher { t } else { s };
        let layers = p
            .layers
            .iter()
            .map(|l| match *l {
                LayerSource::Teacher(j) => t.layers[j].clone(),
                LayerSource::Student(i) => s.layers[i].clone(),
            })
            .collect();
        let enc = Encoder::assemble(
            &t.cfg,
            pick(p.embed).embed.clone(),
            layers,
            pick(p.head).head.clone(),
        );
        Ok((p, enc))
    }

    /// Naive layer pruning at size `k` (`None`: the student's size): the
    /// teacher's own layers the size stands for, its embeddings and head.
    pub fn naive(&self, plan: &PrunePlan, k: Option<usize>, order: &PatchOrder) -> Result<Encoder> {
        let keep = match k {
            Some(k) => PatchPlan::ordered(plan, k, order)?.naive_layers(plan),
            None => plan.copied.clone(),
        };
        let t = &self.teacher;
        let layers = keep.into_iter().map(|j| t.layers[j].clone()).collect();
        Ok(Encoder::assemble(
            &t.cfg,
            Arc::clone(&t.embed),
            layers,
            Arc::clone(&t.head),
        ))
    }
}

fn as_perplexity(p: &PseudoPerplexity) -> Perplexity {
    Perplexity {
        perplexity: p.pseudo_perplexity,
        nll: p.nll,
        tokens: p.tokens,
        predicted: p.scored,
    }
}

fn json_line(p: &PseudoPerplexity, layers: usize, params: u64) -> serde_json::Value {
    json!({
        "pseudo_perplexity": p.pseudo_perplexity, "nll": p.nll, "tokens": p.tokens,
        "predicted": p.scored, "texts": p.texts, "layers": layers, "params": params,
    })
}

fn score(
    gpu: &Gpu,
    enc: &Encoder,
    texts: &[Vec<u32>],
    special: &Special,
    label: &str,
    quiet: bool,
) -> Result<PseudoPerplexity> {
    let mut bar = Progress::new(label, texts.len(), "texts").quiet(quiet);
    pseudo::pseudo_perplexity(gpu, enc, texts, special, |done, _| bar.update(done, ""))
}

/// The data's texts, one per line, cut at `max_len` tokens.
fn read_texts(
    tok: &Tokenizer,
    special: &Special,
    data: &Path,
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let texts = pseudo::texts(tok, special, &read_text(data)?, max_len)?;
    if texts.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no line has a token to score",
            data.display()
        )));
    }
    Ok(texts)
}

/// `eval` of an encoder, or of a pair of them. `--seq-len` caps the
/// tokens of each text (default: the model's positions).
pub fn eval(opts: &GpuOptions, a: &EvalArgs) -> Result<String> {
    match &a.target {
        Target::Model(reference) => {
            let f = EncoderFiles::open(reference)?;
            let (tok, special) = f.special()?;
            let max_len = text_len(a, &f.cfg)?;
            let texts = read_texts(tok, &special, a.data, max_len)?;
            let gpu = &open_gpu(opts)?;
            let enc = f.upload(gpu)?;
            let p = score(gpu, &enc, &texts, &special, "eval", false)?;
            if a.json {
                return Ok(json_line(&p, enc.layers.len(), enc.params()).to_string() + "\n");
            }
            Ok(format!(
                "{}: {} texts, {} tokens (each text cut at {max_len})\npseudo-perplexity {:.4}  (mean NLL {:.4} nats over {} masked tokens; {} layers, {:.1}M parameters)\n",
                a.data.display(),
                p.texts,
                p.tokens,
                p.pseudo_perplexity,
                p.nll / p.scored as f64,
                p.scored,
                enc.layers.len(),
                enc.params() as f64 / 1e6
            ))
        }
        Target::Pair {
            teacher,
            student,
            sizes,
            order,
            params,
        } => {
            if a.before.is_some() {
                return Err(Error::Invalid(
                    "--before is not available for encoder pairs yet; --baseline is".into(),
                ));
            }
            let pair = EncoderPair::open(teacher, student, *params)?;
            if let Some(n) = &pair.note {
                eprintln!("note: {n}");
            }
            let direction = super::encoder_patch::direction(order)?;
            let order = PatchOrder::reference(direction);
            let (tok, special) = pair.teacher.special()?;
            let max_len = text_len(a, &pair.teacher.cfg)?;
            let texts = read_texts(tok, &special, a.data, max_len)?;
            let gpu = &open_gpu(opts)?;
            let loaded = Loaded {
                teacher: pair.teacher.upload(gpu)?,
                student: pair.student.upload(gpu)?,
            };
            eprintln!(
                "teacher + student on the GPU: {} (every size shares these tensors)",
                format_bytes(loaded.teacher.weight_bytes() + loaded.student.weight_bytes())
            );
            let p_max = PatchPlan::max_k(&pair.plan, direction);
            let ks: Vec<usize> = match sizes {
                Sizes::One(k) => {
                    let (plan, enc) = loaded.patched(&pair.plan, *k, &order)?;
                    let p = score(gpu, &enc, &texts, &special, "eval", false)?;
                    if a.json {
                        return Ok(
                            json_line(&p, plan.num_layers(), enc.params()).to_string() + "\n"
                        );
                    }
                    return Ok(format!(
                        "{}: {} texts\n{direction}-k = {k}: {} layers ({} from the teacher), {:.1}M parameters: pseudo-perplexity {:.4}\n",
                        a.data.display(),
                        p.texts,
                        plan.num_layers(),
                        plan.teacher_layers(),
                        enc.params() as f64 / 1e6,
                        p.pseudo_perplexity
                    ));
                }
                Sizes::All => (0..=p_max).collect(),
                Sizes::List(ks) => ks.clone(),
            };
            let mut rows = Vec::new();
            let mut bar = Progress::new("sizes", ks.len() + 1, "models");
            let naive = |k: Option<usize>| -> Result<Option<Perplexity>> {
                match a.baseline {
                    true => {
                        let n = loaded.naive(&pair.plan, k, &order)?;
                        Ok(Some(as_perplexity(&score(
                            gpu, &n, &texts, &special, "naive", true,
                        )?)))
                    }
                    false => Ok(None),
                }
            };
            let s = &loaded.student;
            rows.push(CurveRow {
                label: "student".into(),
                k: None,
                layers: s.layers.len(),
                params: s.params(),
                bytes: s.weight_bytes(),
                ppl: as_perplexity(&score(gpu, s, &texts, &special, "student", true)?),
                naive: naive(None)?,
                before: None,
                auto: None,
            });
            bar.update(1, "");
            for (i, &k) in ks.iter().enumerate() {
                let (plan, enc) = loaded.patched(&pair.plan, k, &order)?;
                let p = score(gpu, &enc, &texts, &special, "patched", true)?;
                rows.push(CurveRow {
                    label: plan.label(),
                    k: Some(k),
                    layers: plan.num_layers(),
                    params: enc.params(),
                    bytes: enc.weight_bytes(),
                    ppl: as_perplexity(&p),
                    naive: naive(Some(k))?,
                    before: None,
                    auto: None,
                });
                bar.update(i + 2, &format!("k={k}: {:.3}", p.pseudo_perplexity));
            }
            let shape = Report {
                intro: format!(
                    "{}: {} texts, {} masked tokens (each text cut at {max_len}), {direction}-k patching",
                    a.data.display(),
                    texts.len(),
                    rows[0].ppl.predicted
                ),
                dir: direction,
                metric: "pseudo-perplexity",
                column: "pseudo-PPL",
                key: "pseudo_perplexity",
                before: false,
                auto: None,
            };
            report(a, &rows, &shape)
        }
    }
}

/// Tokens per text: `--seq-len`, else the model's positions.
fn text_len(a: &EvalArgs, cfg: &EncoderConfig) -> Result<usize> {
    let n = a.seq_len.unwrap_or(cfg.max_position_embeddings);
    if n > cfg.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "--seq-len {n} is over the model's {} positions",
            cfg.max_position_embeddings
        )));
    }
    Ok(n)
}
