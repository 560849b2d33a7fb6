//! `boomgpu plan`: every model `boomgpu patch` can make from a teacher and
//! its student, in both patch orders, with layer count, parameters, bytes
//! of weights (in the stored dtypes) and where each part comes from. Reads
//! only the checkpoint headers; no GPU.

use serde_json::{json, Value};

use super::init_student::format_params;
use super::patch::{Pair, Size};
use crate::boomerang::patch::compact_sources;
use crate::boomerang::{Direction, Part, PatchOrder, PatchPlan, PruneParams};
use crate::error::Result;
use crate::gpu::format_bytes;

#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub teacher: String,
    pub student: String,
    /// `--every/--keep-first/--keep-last`, if any was given.
    pub params: Option<PruneParams>,
    pub json: bool,
}

/// One patched size.
#[derive(Clone, Debug)]
pub struct Row {
    pub plan: PatchPlan,
    pub tied: bool,
    pub size: Size,
}

/// Every `k` of `order`, `0..=P`.
pub fn rows(pair: &Pair, order: &PatchOrder) -> Result<Vec<Row>> {
    (0..=pair.max_k(order.direction))
        .map(|k| {
            let (plan, layout) = pair.layout(k, order)?;
            let size = pair.size(&layout);
            Ok(Row {
                plan,
                tied: layout.tied,
                size,
            })
        })
        .collect()
}

fn letter(p: Part) -> &'static str {
    match p {
        Part::Student => "S",
        Part::Teacher => "T",
    }
}

fn row_json(r: &Row, default: bool) -> Value {
    let p = &r.plan;
    json!({
        "k": p.k,
        "layers": p.num_layers(),
        "params": r.size.params,
        "bytes": r.size.bytes,
        "sources": compact_sources(&p.layers),
        "layer_sources": p.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        "embed": p.embed.to_string(),
        "final_norm": p.final_norm.to_string(),
        "lm_head": p.head.to_string(),
        "tie_word_embeddings": r.tied,
        "is_teacher": p.is_teacher,
        "default_direction": default,
    })
}

/// Left-aligned columns except those in `right`.
fn table(rows: &[Vec<String>], right: &[usize]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line += "  ";
            }
            if right.contains(&c) {
                line += &format!("{cell:>w$}", w = width[c]);
            } else {
                line += &format!("{cell:<w$}", w = width[c]);
            }
        }
        s += line.trim_end();
        s += "\n";
    }
    s
}

fn list(v: &[usize]) -> String {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", s.join(", "))
}

pub fn run(opts: &PlanOptions) -> Result<String> {
    let pair = Pair::open(&opts.teacher, &opts.student, opts.params)?;
    let default = pair.default_direction();
    let other = match default {
        Direction::First => Direction::Last,
        Direction::Last => Direction::First,
    };
    // The order patch, chat and eval follow without flags comes first:
    // the one the student stores, else the family's reference order.
    let mut by_dir: Vec<(PatchOrder, Vec<Row>)> = Vec::new();
    if let Some(o) = &pair.stored_order {
        by_dir.push((o.clone(), rows(&pair, o)?));
    }
    for d in [default, other] {
        let o = PatchOrder::reference(d);
        let r = rows(&pair, &o)?;
        by_dir.push((o, r));
    }
    let teacher = by_dir[0].1.last().expect("k = P").size;
    let student = pair.student_size();
    let family = pair.teacher_cfg.family.model_type();

    if opts.json {
        let mut v = json!({
            "teacher": {
                "ref": pair.teacher_ref,
                "path": pair.teacher_dir.display().to_string(),
                "model_type": family,
                "num_hidden_layers": pair.teacher_cfg.num_layers,
                "params": teacher.params,
                "bytes": teacher.bytes,
                "tie_word_embeddings": pair.teacher_cfg.tie_word_embeddings,
            },
            "student": {
                "ref": pair.student_ref,
                "path": pair.student_dir.display().to_string(),
                "num_hidden_layers": pair.student_cfg.num_layers,
                "params": student.params,
                "bytes": student.bytes,
                "copied_teacher_layers": pair.prune.copied,
                "pruned_teacher_layers": pair.prune.pruned,
                "layers_from": pair.plan_source_text(),
            },
            "default_direction": default.name(),
            "default_order": by_dir[0].0.name(),
        });
        if let Some(o) = &pair.stored_order {
            v["patch_order"] = o.to_json(&pair.prune);
        }
        for (i, (o, rs)) in by_dir.iter().enumerate() {
            v[o.name()] = Value::Array(rs.iter().map(|r| row_json(r, i == 0)).collect());
        }
        return Ok(v.to_string() + "\n");
    }

    let pct = |p: u64| format!("{:.0}%", 100.0 * p as f64 / teacher.params as f64);
    let mut t: Vec<Vec<String>> = vec![[
        "order",
        "k",
        "layers",
        "params",
        "of teacher",
        "weights",
        "layers from",
        "embed",
        "norm",
        "head",
        "tied",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()];
    let n = pair.student_cfg.num_layers;
    t.push(vec![
        "-".into(),
        "-".into(),
        n.to_string(),
        format_params(student.params),
        pct(student.params),
        format_bytes(student.bytes),
        compact_sources(
            &(0..n)
                .map(crate::boomerang::LayerSource::Student)
                .collect::<Vec<_>>(),
        ),
        "S".into(),
        "S".into(),
        "S".into(),
        if pair.student_cfg.tie_word_embeddings {
            "yes"
        } else {
            "no"
        }
        .into(),
        "the student itself".into(),
    ]);
    for (i, (o, rs)) in by_dir.iter().enumerate() {
        for r in rs {
            let p = &r.plan;
            t.push(vec![
                format!("{}{}", o.name(), if i == 0 { "*" } else { "" }),
                p.k.to_string(),
                p.num_layers().to_string(),
                format_params(r.size.params),
                pct(r.size.params),
                format_bytes(r.size.bytes),
                compact_sources(&p.layers),
                letter(p.embed).into(),
                letter(p.final_norm).into(),
                letter(p.head).into(),
                if r.tied { "yes" } else { "no" }.into(),
                if p.is_teacher {
                    "the teacher itself".into()
                } else {
                    String::new()
                },
            ]);
        }
    }
    let mut s = String::new();
    s += &format!(
        "teacher: {} ({family}, {} layers, {} parameters, {})\n",
        pair.teacher_dir.display(),
        pair.teacher_cfg.num_layers,
        format_params(teacher.params),
        format_bytes(teacher.bytes)
    );
    s += &format!(
        "student: {} ({n} layers = teacher layers {}, from {})\n",
        pair.student_dir.display(),
        list(&pair.prune.copied),
        pair.plan_source_text()
    );
    if let Some(o) = &pair.stored_order {
        s += &format!(
            "{}\n",
            super::order::describe(o, &pair.prune).replace(
                "patch order:",
                "patch order stored with the student (the default):"
            )
        );
    }
    s += &format!(
        "valid --layers: {} 0..={}, {} 0..={} (the top one gives the teacher)\n\n",
        default,
        pair.max_k(default),
        other,
        pair.max_k(other),
    );
    s += &table(&t, &[1, 2, 3, 4, 5]);
    s += &format!(
        "\n* default order {} (boomgpu patch, chat and eval without --order/--first/--last).\n\
         Sn = student layer n, Tn = teacher layer n; embed/norm/head: S student, T teacher; \
         tied: the LM head is the embedding matrix.\n\
         Make one: boomgpu patch --teacher {} --student {} --layers K [--{}] --out DIR\n",
        match pair.stored_order {
            Some(_) => "stored with the student".to_string(),
            None => format!("for {family}"),
        },
        pair.teacher_ref,
        pair.student_ref,
        other
    );
    Ok(s)
}
