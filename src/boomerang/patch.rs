//! Patch: which layers, embeddings, final norm and LM head an intermediate
//! model takes from the student and which from the teacher (REFERENCE §4,
//! the reference's `get_layer_cutoffs` and `patch_{first,last}_k_layers`).

use std::ops::Range;

use serde_json::Value;

use super::order::{segments, PatchOrder};
use super::plan::PrunePlan;
use crate::error::{Error, Result};
use crate::model::{Family, ModelConfig};

/// Which end of the student is patched with teacher blocks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Replace the first `k` student layers (reference default for Llama).
    First,
    /// Replace the last `k` student layers (default for Qwen3 and GPT-NeoX).
    Last,
}

impl Direction {
    /// The reference's default order: first-k for Llama, last-k otherwise.
    pub fn default_for(family: Family) -> Direction {
        match family {
            Family::Llama => Direction::First,
            Family::Qwen3 | Family::GptNeox => Direction::Last,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::First => "first",
            Direction::Last => "last",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Direction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Direction> {
        match s.to_ascii_lowercase().as_str() {
            "first" | "first-k" => Ok(Direction::First),
            "last" | "last-k" => Ok(Direction::Last),
            _ => Err(Error::Invalid(format!(
                "unknown patch order '{s}'; use 'first' or 'last'"
            ))),
        }
    }
}

/// The model a part comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Student,
    Teacher,
}

/// One decoder layer of a patched model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSource {
    /// Layer `i` of the student.
    Student(usize),
    /// Layer `j` of the teacher.
    Teacher(usize),
}

/// A cut-off: student layer index and teacher layer index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchPoint {
    pub student: usize,
    pub teacher: usize,
}

/// The patch points of `copied` in `direction`, in ascending order.
/// Last-k: every `copied[i]` whose gap to its predecessor is > 1.
/// First-k: every `copied[i]` whose gap to its successor is > 1.
pub fn patch_points(copied: &[usize], direction: Direction) -> Vec<PatchPoint> {
    let point = |i: usize| PatchPoint {
        student: i,
        teacher: copied[i],
    };
    match direction {
        Direction::Last => (1..copied.len())
            .filter(|&i| copied[i] - copied[i - 1] > 1)
            .map(point)
            .collect(),
        Direction::First => (0..copied.len().saturating_sub(1))
            .filter(|&i| copied[i + 1] - copied[i] > 1)
            .map(point)
            .collect(),
    }
}

/// How an intermediate model is assembled.
///
/// For a teacher with tied embeddings, "head" means the teacher's (or
/// student's) embedding matrix used as LM head; see [`PatchPlan::tied`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchPlan {
    /// The order's base direction.
    pub direction: Direction,
    /// Number of units restored (student layers replaced by teacher blocks).
    pub k: usize,
    /// The order is a chosen one (`--order auto`), not the reference's.
    pub auto: bool,
    /// The decoder layers, in order.
    pub layers: Vec<LayerSource>,
    pub embed: Part,
    pub final_norm: Part,
    pub head: Part,
    /// The result is the teacher itself (`k` at the top of the range).
    pub is_teacher: bool,
}

impl PatchPlan {
    /// Naive layer pruning at this size: the teacher layers this model
    /// stands for, ascending (a student layer stands for the teacher layer
    /// it was copied from). The teacher with every other layer removed,
    /// untrained: the baseline boomerang distillation is measured against.
    pub fn naive_layers(&self, prune: &PrunePlan) -> Vec<usize> {
        self.layers
            .iter()
            .map(|l| match *l {
                LayerSource::Teacher(j) => j,
                LayerSource::Student(i) => prune.copied[i],
            })
            .collect()
    }

    /// `P`, the number of patch points: valid `k` are `0..=P`, and `k = P`
    /// gives the teacher (the reference README's ranges are `1..=P`).
    pub fn max_k(plan: &PrunePlan, direction: Direction) -> usize {
        patch_points(&plan.copied, direction).len()
    }

    /// Size `k` of the reference order of `direction` (REFERENCE §4).
    pub fn new(plan: &PrunePlan, k: usize, direction: Direction) -> Result<PatchPlan> {
        PatchPlan::ordered(plan, k, &PatchOrder::reference(direction))
    }

    /// Size `k` of `order`: the base model of its direction with the
    /// order's first `k` units replaced by their teacher layers; `k = P`
    /// is the teacher. Below the top, embedding, final norm and head come
    /// from where the direction takes them: last-k keeps the student's
    /// embedding and the teacher's norm and head, first-k the teacher's
    /// embedding and the student's norm and head.
    pub fn ordered(plan: &PrunePlan, k: usize, order: &PatchOrder) -> Result<PatchPlan> {
        let direction = order.direction;
        let l = plan.num_teacher_layers;
        let n = plan.num_student_layers();
        let seg = segments(plan, direction);
        let p = seg.units.len();
        if k > p {
            return Err(Error::Invalid(format!(
                "--layers {k} is out of range for {direction}-k patching of this pair \
                 (teacher {l} layers, student {n}): valid --layers for this pair: 0..={p} \
                 ({p} gives the teacher itself)"
            )));
        }
        let auto = !order.is_reference();
        if k == p {
            return Ok(PatchPlan {
                direction,
                k,
                auto,
                layers: (0..l).map(LayerSource::Teacher).collect(),
                embed: Part::Teacher,
                final_norm: Part::Teacher,
                head: Part::Teacher,
                is_teacher: true,
            });
        }
        let restored = order.restored(k);
        let mut parts: Vec<(Range<usize>, Range<usize>, bool)> = seg
            .units
            .iter()
            .enumerate()
            .map(|(u, x)| (x.student.clone(), x.teacher.clone(), restored.contains(&u)))
            .collect();
        parts.extend(seg.base_teacher.map(|(s, t)| (s, t, true)));
        parts.sort_by_key(|(s, t, _)| (s.start, t.start));
        let layers = parts
            .into_iter()
            .flat_map(|(s, t, teacher)| -> Vec<LayerSource> {
                if teacher {
                    t.map(LayerSource::Teacher).collect()
                } else {
                    s.map(LayerSource::Student).collect()
                }
            })
            .collect();
        let (embed, below) = match direction {
            Direction::Last => (Part::Student, Part::Teacher),
            Direction::First => (Part::Teacher, Part::Student),
        };
        Ok(PatchPlan {
            direction,
            k,
            auto,
            layers,
            embed,
            final_norm: below,
            head: below,
            is_teacher: false,
        })
    }

    /// `teacher`, or the order and size: `last-3`, `first-0`, `auto-2`.
    pub fn label(&self) -> String {
        match (self.is_teacher, self.auto) {
            (true, _) => "teacher".into(),
            (false, true) => format!("auto-{}", self.k),
            (false, false) => format!("{}-{}", self.direction, self.k),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Whether the patched model may be saved with tied embeddings, given
    /// that teacher and student tie them (`tie_word_embeddings`): only when
    /// embedding and LM head come from the same model. Otherwise it must be
    /// saved untied (`tie_word_embeddings: false`, an explicit LM head
    /// tensor: the other model's embedding matrix).
    pub fn tied(&self, tie_word_embeddings: bool) -> bool {
        tie_word_embeddings && self.embed == self.head
    }

    /// Number of layers taken from the teacher.
    pub fn teacher_layers(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l, LayerSource::Teacher(_)))
            .count()
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Student => "student",
            Part::Teacher => "teacher",
        })
    }
}

impl LayerSource {
    pub fn part(self) -> Part {
        match self {
            LayerSource::Student(_) => Part::Student,
            LayerSource::Teacher(_) => Part::Teacher,
        }
    }

    pub fn index(self) -> usize {
        match self {
            LayerSource::Student(i) | LayerSource::Teacher(i) => i,
        }
    }
}

impl std::fmt::Display for LayerSource {
    /// `S3` (student layer 3) or `T7` (teacher layer 7).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerSource::Student(i) => write!(f, "S{i}"),
            LayerSource::Teacher(i) => write!(f, "T{i}"),
        }
    }
}

/// Layer sources in runs: `S0-15 T32-35` (a run of one is `S0`).
pub fn compact_sources(layers: &[LayerSource]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len()
            && layers[j + 1].part() == layers[i].part()
            && layers[j + 1].index() == layers[j].index() + 1
        {
            j += 1;
        }
        runs.push(if i == j {
            layers[i].to_string()
        } else {
            format!("{}-{}", layers[i], layers[j].index())
        });
        i = j + 1;
    }
    runs.join(" ")
}

/// One tensor of a patched model: its name there, and the model and tensor
/// its bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSource {
    pub name: String,
    pub part: Part,
    pub source: String,
}

/// A patched model as Hugging Face stores it: its config and where each of
/// its tensors comes from.
#[derive(Clone, Debug)]
pub struct PatchLayout {
    /// The config.json of the patched model.
    pub config: ModelConfig,
    /// Saved with tied embeddings (no LM head tensor).
    pub tied: bool,
    /// Every tensor, in model order: embedding, layers, final norm, head.
    pub tensors: Vec<TensorSource>,
}

/// Check that a student has the architecture of its teacher (everything
/// but the layer count), so that their layers can be mixed.
pub fn check_compatible(teacher: &ModelConfig, student: &ModelConfig) -> Result<()> {
    let mut diffs: Vec<String> = Vec::new();
    if teacher.family != student.family {
        diffs.push(format!(
            "model_type {} vs {}",
            teacher.family.model_type(),
            student.family.model_type()
        ));
    } else {
        // What must match, in the order a mismatch is reported.
        type Field = (&'static str, fn(&ModelConfig) -> String);
        let fields: [Field; 10] = [
            ("hidden_size", |c| c.hidden_size.to_string()),
            ("intermediate_size", |c| c.intermediate_size.to_string()),
            ("num_attention_heads", |c| c.num_heads.to_string()),
            ("num_key_value_heads", |c| c.num_kv_heads.to_string()),
            ("head_dim", |c| c.head_dim.to_string()),
            ("vocab_size", |c| c.vocab_size.to_string()),
            ("attention_bias", |c| c.attention_bias.to_string()),
            ("mlp_bias", |c| c.mlp_bias.to_string()),
            ("use_parallel_residual", |c| {
                c.use_parallel_residual.to_string()
            }),
            ("rotary dimensions", |c| c.rotary_dim().to_string()),
        ];
        for (what, value) in fields {
            let (t, s) = (value(teacher), value(student));
            if t != s {
                diffs.push(format!("{what} {t} vs {s}"));
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the student does not have the teacher's architecture (teacher vs student: {}); \
             is it the student of another teacher?",
            diffs.join(", ")
        )))
    }
}

impl PatchPlan {
    /// The name of the tensor that serves as LM head of `cfg`'s model: its
    /// own head, or its embedding matrix when it ties them.
    fn head_of(cfg: &ModelConfig) -> String {
        if cfg.tie_word_embeddings {
            cfg.embed_name().to_string()
        } else {
            cfg.head_name().to_string()
        }
    }

    /// The patched model as a Hugging Face folder holds it, from the
    /// configs of teacher and student and the student's pruning `prune`.
    ///
    /// The config is the teacher's (rotary settings, norm epsilon, token
    /// ids) with `num_hidden_layers` set and a per-layer `layer_types` list
    /// taken layer by layer from where each layer comes from. It is tied
    /// (no head tensor) only when embedding and head come from the same
    /// model and that model ties them ([`PatchPlan::tied`]); otherwise it
    /// is saved untied with an explicit head tensor (REFERENCE §4). The
    /// teacher itself (`is_teacher`) keeps the teacher's config unchanged.
    pub fn layout(
        &self,
        teacher: &ModelConfig,
        student: &ModelConfig,
        prune: &PrunePlan,
    ) -> Result<PatchLayout> {
        check_compatible(teacher, student)?;
        let model = |p: Part| match p {
            Part::Student => student,
            Part::Teacher => teacher,
        };
        let tied = self.embed == self.head && model(self.head).tie_word_embeddings;
        let n = self.num_layers();
        let config = if self.is_teacher {
            teacher.clone()
        } else {
            let mut c = teacher.with_layers(n);
            c.tie_word_embeddings = tied;
            c.raw["tie_word_embeddings"] = Value::Bool(tied);
            if let Some(Value::Array(tt)) = teacher.raw.get("layer_types") {
                if tt.len() == teacher.num_layers {
                    let st = student
                        .raw
                        .get("layer_types")
                        .and_then(Value::as_array)
                        .filter(|a| a.len() == student.num_layers);
                    let types: Vec<Value> = self
                        .layers
                        .iter()
                        .map(|l| match *l {
                            LayerSource::Teacher(j) => tt[j].clone(),
                            LayerSource::Student(i) => match st {
                                Some(st) => st[i].clone(),
                                None => tt[prune.copied[i]].clone(),
                            },
                        })
                        .collect();
                    c.raw["layer_types"] = Value::Array(types);
                }
            }
            c
        };
        let mut tensors = vec![TensorSource {
            name: config.embed_name().to_string(),
            part: self.embed,
            source: model(self.embed).embed_name().to_string(),
        }];
        let rel = config.layer_tensors();
        for (j, l) in self.layers.iter().enumerate() {
            let (out_p, src_p) = (config.layer_prefix(j), config.layer_prefix(l.index()));
            for (r, _) in &rel {
                tensors.push(TensorSource {
                    name: format!("{out_p}{r}"),
                    part: l.part(),
                    source: format!("{src_p}{r}"),
                });
            }
        }
        for (name, _) in config.final_norm_names() {
            tensors.push(TensorSource {
                name: name.clone(),
                part: self.final_norm,
                source: name,
            });
        }
        if !tied {
            tensors.push(TensorSource {
                name: config.head_name().to_string(),
                part: self.head,
                source: PatchPlan::head_of(model(self.head)),
            });
        }
        Ok(PatchLayout {
            config,
            tied,
            tensors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LayerSource::{Student as S, Teacher as T};

    #[test]
    fn last_k_36_layers() {
        let plan = PrunePlan::new(36, 2, 1, 2).unwrap();
        assert_eq!(PatchPlan::max_k(&plan, Direction::Last), 17);
        let p = PatchPlan::new(&plan, 1, Direction::Last).unwrap();
        let want: Vec<LayerSource> = (0..16).map(S).chain((32..36).map(T)).collect();
        assert_eq!(p.layers, want);
        assert_eq!(p.num_layers(), 20);
        assert_eq!(
            (p.embed, p.final_norm, p.head, p.is_teacher),
            (Part::Student, Part::Teacher, Part::Teacher, false)
        );
        assert!(!p.tied(true));
        assert!(!p.tied(false));
        let p = PatchPlan::new(&plan, 16, Direction::Last).unwrap();
        assert_eq!(p.layers[0], S(0));
        assert_eq!(p.layers[1..], (2..36).map(T).collect::<Vec<_>>()[..]);
        assert_eq!(p.num_layers(), 35);
        let p = PatchPlan::new(&plan, 17, Direction::Last).unwrap();
        assert!(p.is_teacher);
        assert_eq!(p.layers, (0..36).map(T).collect::<Vec<_>>());
        assert_eq!(p.embed, Part::Teacher);
        assert!(p.tied(true));
        // k = 0: as many layers as the student, its last two from the teacher.
        let p = PatchPlan::new(&plan, 0, Direction::Last).unwrap();
        let want: Vec<LayerSource> = (0..17).map(S).chain((34..36).map(T)).collect();
        assert_eq!(p.layers, want);
        let e = PatchPlan::new(&plan, 18, Direction::Last)
            .unwrap_err()
            .to_string();
        assert!(e.contains("valid --layers for this pair: 0..=17"), "{e}");
    }

    #[test]
    fn first_k_28_layers() {
        let plan = PrunePlan::new(28, 2, 1, 2).unwrap();
        assert_eq!(PatchPlan::max_k(&plan, Direction::First), 13);
        let p = PatchPlan::new(&plan, 0, Direction::First).unwrap();
        assert_eq!(p.layers, (0..15).map(S).collect::<Vec<_>>());
        assert_eq!(
            (p.embed, p.final_norm, p.head, p.is_teacher),
            (Part::Teacher, Part::Student, Part::Student, false)
        );
        assert!(!p.tied(true));
        let p = PatchPlan::new(&plan, 1, Direction::First).unwrap();
        let want: Vec<LayerSource> = (0..2).map(T).chain((1..15).map(S)).collect();
        assert_eq!(p.layers, want);
        assert_eq!(p.num_layers(), 16);
        let p = PatchPlan::new(&plan, 12, Direction::First).unwrap();
        // 12th point: student 12 = teacher 24; teacher 0..24 + student 12..15.
        let want: Vec<LayerSource> = (0..24).map(T).chain((12..15).map(S)).collect();
        assert_eq!(p.layers, want);
        assert_eq!(p.num_layers(), 27);
        assert!(
            PatchPlan::new(&plan, 13, Direction::First)
                .unwrap()
                .is_teacher
        );
        let e = PatchPlan::new(&plan, 14, Direction::First)
            .unwrap_err()
            .to_string();
        assert!(e.contains("valid --layers for this pair: 0..=13"), "{e}");
        // The other order on the same pair.
        assert_eq!(PatchPlan::max_k(&plan, Direction::Last), 13);
    }

    #[test]
    fn pythia_32_layers() {
        let plan = PrunePlan::new(32, 2, 1, 2).unwrap();
        assert_eq!(PatchPlan::max_k(&plan, Direction::Last), 15);
        assert_eq!(PatchPlan::max_k(&plan, Direction::First), 15);
        // Every k adds exactly one layer.
        for k in 0..=15 {
            let p = PatchPlan::new(&plan, k, Direction::Last).unwrap();
            assert_eq!(p.num_layers(), if k == 15 { 32 } else { 17 + k });
            let p = PatchPlan::new(&plan, k, Direction::First).unwrap();
            assert_eq!(p.num_layers(), if k == 15 { 32 } else { 17 + k });
        }
    }

    #[test]
    fn every_3_keep_first_2_keep_last_1() {
        // L = 11: copied 0, 1, 4, 7, 10.
        let plan = PrunePlan::new(11, 3, 2, 1).unwrap();
        let last = patch_points(&plan.copied, Direction::Last);
        let pts: Vec<(usize, usize)> = last.iter().map(|p| (p.student, p.teacher)).collect();
        assert_eq!(pts, vec![(2, 4), (3, 7), (4, 10)]);
        let first = patch_points(&plan.copied, Direction::First);
        let pts: Vec<(usize, usize)> = first.iter().map(|p| (p.student, p.teacher)).collect();
        assert_eq!(pts, vec![(1, 1), (2, 4), (3, 7)]);
        let p = PatchPlan::new(&plan, 1, Direction::Last).unwrap();
        assert_eq!(p.layers, vec![S(0), S(1), S(2), T(7), T(8), T(9), T(10)]);
        let p = PatchPlan::new(&plan, 1, Direction::First).unwrap();
        assert_eq!(p.layers, vec![T(0), T(1), T(2), T(3), S(2), S(3), S(4)]);
        assert!(
            PatchPlan::new(&plan, 3, Direction::Last)
                .unwrap()
                .is_teacher
        );
        assert!(PatchPlan::new(&plan, 4, Direction::Last).is_err());
    }

    #[test]
    fn small_teacher() {
        // L = 4: copied 0, 2, 3; one patch point either way.
        let plan = PrunePlan::new(4, 2, 1, 2).unwrap();
        let p = PatchPlan::new(&plan, 0, Direction::Last).unwrap();
        assert_eq!(p.layers, vec![S(0), T(2), T(3)]);
        let p = PatchPlan::new(&plan, 0, Direction::First).unwrap();
        assert_eq!(p.layers, vec![S(0), S(1), S(2)]);
        assert_eq!(p.embed, Part::Teacher);
        assert!(
            PatchPlan::new(&plan, 1, Direction::First)
                .unwrap()
                .is_teacher
        );
        let e = PatchPlan::new(&plan, 2, Direction::First)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0..=1"), "{e}");
    }

    fn cfg(model_type: &str, layers: usize, tied: bool) -> ModelConfig {
        let mut v = serde_json::json!({
            "model_type": model_type, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": layers, "num_attention_heads": 2, "vocab_size": 10,
            "tie_word_embeddings": tied,
        });
        if model_type == "qwen3" {
            v["layer_types"] = serde_json::json!(vec!["full_attention"; layers]);
        }
        ModelConfig::from_json(v).unwrap()
    }

    #[test]
    fn compact() {
        assert_eq!(
            compact_sources(&[S(0), S(1), T(4), T(5)]),
            "S0-1 T4-5".to_string()
        );
        assert_eq!(compact_sources(&[S(0), T(2), T(3)]), "S0 T2-3");
        assert_eq!(compact_sources(&[T(0), T(2), S(2), S(3)]), "T0 T2 S2-3");
        assert_eq!(compact_sources(&[]), "");
    }

    #[test]
    fn layouts_rename_layers_and_untie() {
        let prune = PrunePlan::new(6, 2, 1, 2).unwrap();
        let (t, s) = (cfg("llama", 6, true), cfg("llama", 4, true));
        // last-k, k = 1: S0 T2-5, student embedding, teacher norm and head.
        let p = PatchPlan::new(&prune, 1, Direction::Last).unwrap();
        let l = p.layout(&t, &s, &prune).unwrap();
        assert!(!l.tied);
        assert_eq!(l.config.num_layers, 5);
        assert_eq!(l.config.raw["num_hidden_layers"], 5);
        assert_eq!(l.config.raw["tie_word_embeddings"], false);
        let find = |n: &str| l.tensors.iter().find(|x| x.name == n).unwrap().clone();
        let e = find("model.embed_tokens.weight");
        assert_eq!(
            (e.part, e.source.as_str()),
            (Part::Student, "model.embed_tokens.weight")
        );
        let h = find("lm_head.weight");
        assert_eq!(
            (h.part, h.source.as_str()),
            (Part::Teacher, "model.embed_tokens.weight")
        );
        let q = find("model.layers.1.self_attn.q_proj.weight");
        assert_eq!(
            (q.part, q.source.as_str()),
            (Part::Teacher, "model.layers.2.self_attn.q_proj.weight")
        );
        assert_eq!(l.tensors.len(), l.config.expected_tensors().len());
        // The teacher itself stays tied, with its own config.
        let p = PatchPlan::new(&prune, 2, Direction::First).unwrap();
        let l = p.layout(&t, &s, &prune).unwrap();
        assert!(l.tied);
        assert_eq!(l.config.raw, t.raw);
        assert!(l
            .tensors
            .iter()
            .all(|x| x.part == Part::Teacher && x.name == x.source));
        // Untied models: the head is the lm_head tensor; layer_types follow the layers.
        let (t, s) = (cfg("qwen3", 6, false), cfg("qwen3", 4, false));
        let p = PatchPlan::new(&prune, 0, Direction::First).unwrap();
        let l = p.layout(&t, &s, &prune).unwrap();
        let h = l.tensors.last().unwrap();
        assert_eq!(
            (h.part, h.source.as_str()),
            (Part::Student, "lm_head.weight")
        );
        assert_eq!(l.config.raw["layer_types"].as_array().unwrap().len(), 4);
        // Mismatched architectures are refused.
        let e = p.layout(&t, &cfg("llama", 4, false), &prune).unwrap_err();
        assert!(e.to_string().contains("model_type qwen3 vs llama"), "{e}");
    }

    #[test]
    fn chosen_orders_mix_blocks_and_the_identity_is_the_reference() {
        let plan = PrunePlan::new(12, 2, 1, 2).unwrap();
        for dir in [Direction::Last, Direction::First] {
            let p = PatchPlan::max_k(&plan, dir);
            let id = PatchOrder::chosen(&plan, dir, (0..p).collect(), None).unwrap();
            for k in 0..=p {
                let a = PatchPlan::new(&plan, k, dir).unwrap();
                let b = PatchPlan::ordered(&plan, k, &id).unwrap();
                assert_eq!((a.layers, a.embed, a.head), (b.layers, b.embed, b.head));
                assert!(b.auto && !a.auto);
            }
        }
        // Copied 0,2,4,6,8,10,11 (students 0..7). Last-based units, by
        // reference step: 0 = S4 (T8-9), 1 = S3, 2 = S2, 3 = S1, 4 = S0 (T0-1).
        let o = PatchOrder::chosen(&plan, Direction::Last, vec![2, 4, 0, 1, 3], None).unwrap();
        let p1 = PatchPlan::ordered(&plan, 1, &o).unwrap();
        assert_eq!(compact_sources(&p1.layers), "S0-1 T4-5 S3-4 T10-11");
        assert_eq!(p1.label(), "auto-1");
        assert_eq!((p1.embed, p1.head), (Part::Student, Part::Teacher));
        let p2 = PatchPlan::ordered(&plan, 2, &o).unwrap();
        assert_eq!(compact_sources(&p2.layers), "T0-1 S1 T4-5 S3-4 T10-11");
        assert_eq!(p2.num_layers(), 9);
        assert!(PatchPlan::ordered(&plan, 5, &o).unwrap().is_teacher);
        assert!(PatchPlan::ordered(&plan, 6, &o).is_err());
        // The naive baseline stands for the same teacher layers.
        assert_eq!(p2.naive_layers(&plan), vec![0, 1, 2, 4, 5, 6, 8, 10, 11]);
        // First-based: base T0 S? ...; unit 2 = S2 (T4-5) alone.
        let o = PatchOrder::chosen(&plan, Direction::First, vec![2, 0, 1, 3, 4], None).unwrap();
        let p1 = PatchPlan::ordered(&plan, 1, &o).unwrap();
        assert_eq!(compact_sources(&p1.layers), "S0-1 T4-5 S3-6");
        assert_eq!((p1.embed, p1.head), (Part::Teacher, Part::Student));
    }

    #[test]
    fn directions() {
        assert_eq!(Direction::default_for(Family::Llama), Direction::First);
        assert_eq!(Direction::default_for(Family::Qwen3), Direction::Last);
        assert_eq!(Direction::default_for(Family::GptNeox), Direction::Last);
        assert_eq!("LAST".parse::<Direction>().unwrap(), Direction::Last);
        assert_eq!("first".parse::<Direction>().unwrap(), Direction::First);
        assert!("middle".parse::<Direction>().is_err());
    }
}
