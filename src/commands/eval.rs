//! `boomgpu eval`: perplexity of a model, of one intermediate size of a
//! teacher/student pair, or of every size (the interpolation curve: table,
//! CSV and SVG).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::common::{load_model, open_gpu, read_text, Pair};
use crate::boomerang::{Direction, PatchPlan, PruneParams};
use crate::error::{Error, Result};
use crate::gpu::{format_bytes, Gpu, GpuOptions};
use crate::model::decoder::Decoder;
use crate::model::score::{self, Perplexity};
use crate::model::tokenizer::Tokenizer;
use crate::plot::{curve_svg, Point, Series};
use crate::progress::Progress;

/// Which sizes of a pair to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sizes {
    One(usize),
    /// Several sizes (`--layers 1,5,9`), listed with the student as a curve.
    List(Vec<usize>),
    All,
}

impl std::str::FromStr for Sizes {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Sizes, String> {
        if s == "all" {
            return Ok(Sizes::All);
        }
        if s.contains(',') {
            return s
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("'{p}' in --layers {s} is not a number"))
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Sizes::List);
        }
        s.parse()
            .map(Sizes::One)
            .map_err(|_| format!("'{s}' is neither a number of student layers to patch nor 'all'"))
    }
}

pub enum Target<'a> {
    Model(&'a str),
    Pair {
        teacher: &'a str,
        student: &'a str,
        sizes: Sizes,
        first: bool,
        last: bool,
        params: Option<PruneParams>,
    },
}

pub struct EvalArgs<'a> {
    pub target: Target<'a>,
    pub data: &'a Path,
    pub seq_len: Option<usize>,
    pub json: bool,
    /// For `--layers all`: where to write the CSV and the SVG plot
    /// (default: next to the data file's name in the current folder).
    pub csv: Option<PathBuf>,
    pub svg: Option<PathBuf>,
    /// With a curve: naive layer pruning at every size too.
    pub baseline: bool,
    /// With a curve: another student of the pair's plan (the student before
    /// distillation), patched the same way.
    pub before: Option<&'a str>,
}

fn tokenize(tok: Option<&Tokenizer>, dir: &Path, data: &Path) -> Result<Vec<u32>> {
    let tok = tok.ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no tokenizer.json; eval needs the model's tokenizer",
            dir.display()
        ))
    })?;
    tok.encode(&read_text(data)?, false)
}

fn score(
    gpu: &Gpu,
    dec: &Decoder,
    ids: &[u32],
    seq_len: usize,
    label: &str,
    quiet: bool,
) -> Result<Perplexity> {
    let n = score::windows(ids, seq_len).len();
    let mut bar = Progress::new(label, n, "windows").quiet(quiet);
    score::perplexity(gpu, dec, ids, seq_len, |done, _| bar.update(done, ""))
}

fn json_line(p: &Perplexity, layers: usize, params: u64) -> serde_json::Value {
    json!({
        "perplexity": p.perplexity, "nll": p.nll, "tokens": p.tokens,
        "predicted": p.predicted, "layers": layers, "params": params,
    })
}

pub fn run(opts: &GpuOptions, a: &EvalArgs) -> Result<String> {
    let curve_asked = matches!(
        a.target,
        Target::Pair {
            sizes: Sizes::All | Sizes::List(_),
            ..
        }
    );
    if (a.baseline || a.before.is_some()) && !curve_asked {
        return Err(Error::Invalid(
            "--baseline and --before add curves: use them with --teacher, --student and \
             --layers all (or a list of sizes)"
                .into(),
        ));
    }
    let gpu = open_gpu(opts)?;
    match &a.target {
        Target::Model(reference) => {
            let m = load_model(&gpu, reference, false)?;
            let seq_len = a.seq_len.unwrap_or(m.cfg.max_position_embeddings.min(2048));
            let ids = tokenize(m.tokenizer.as_ref(), &m.dir, a.data)?;
            let p = score(&gpu, &m.decoder, &ids, seq_len, "eval", false)?;
            if a.json {
                return Ok(json_line(&p, m.cfg.num_layers, m.decoder.params()).to_string() + "\n");
            }
            Ok(format!(
                "{}: {} tokens, windows of up to {seq_len}\nperplexity {:.4}  (mean NLL {:.4} nats over {} predicted tokens; {} layers, {:.1}M parameters)\n",
                a.data.display(),
                p.tokens,
                p.perplexity,
                p.nll / p.predicted as f64,
                p.predicted,
                m.cfg.num_layers,
                m.decoder.params() as f64 / 1e6
            ))
        }
        Target::Pair {
            teacher,
            student,
            sizes,
            first,
            last,
            params,
        } => {
            let pair = Pair::load(&gpu, teacher, student, *params)?;
            let dir = pair.direction(*first, *last);
            let seq_len = a
                .seq_len
                .unwrap_or(pair.teacher.cfg.max_position_embeddings.min(2048));
            let ids = tokenize(pair.teacher.tokenizer.as_ref(), &pair.teacher.dir, a.data)?;
            eprintln!(
                "teacher + student on the GPU: {} (every size shares these tensors)",
                format_bytes(pair.union_bytes())
            );
            match sizes {
                Sizes::One(k) => {
                    let (plan, dec) = pair.patched(*k, dir)?;
                    eprintln!(
                        "{dir}-{k}: {} layers ({} from the teacher), {:.1}M parameters, {} of weights",
                        plan.num_layers(),
                        plan.teacher_layers(),
                        dec.params() as f64 / 1e6,
                        format_bytes(dec.weight_bytes())
                    );
                    let p = score(&gpu, &dec, &ids, seq_len, "eval", false)?;
                    if a.json {
                        return Ok(
                            json_line(&p, plan.num_layers(), dec.params()).to_string() + "\n"
                        );
                    }
                    Ok(format!(
                        "{}: {} tokens\n{dir}-k = {k}: {} layers, {:.1}M parameters: perplexity {:.4}\n",
                        a.data.display(),
                        p.tokens,
                        plan.num_layers(),
                        dec.params() as f64 / 1e6,
                        p.perplexity
                    ))
                }
                Sizes::All => {
                    let all: Vec<usize> = (0..=PatchPlan::max_k(&pair.plan, dir)).collect();
                    curve(&gpu, &pair, dir, &all, &ids, seq_len, a)
                }
                Sizes::List(ks) => curve(&gpu, &pair, dir, ks, &ids, seq_len, a),
            }
        }
    }
}

/// One row of the interpolation curve.
pub struct CurveRow {
    pub label: String,
    pub k: Option<usize>,
    pub layers: usize,
    pub params: u64,
    pub bytes: u64,
    pub ppl: Perplexity,
    /// Naive layer pruning at this size (`--baseline`).
    pub naive: Option<Perplexity>,
    /// The `--before` student patched the same way.
    pub before: Option<Perplexity>,
}

fn curve(
    gpu: &Gpu,
    pair: &Pair,
    dir: Direction,
    ks: &[usize],
    ids: &[u32],
    seq_len: usize,
    a: &EvalArgs,
) -> Result<String> {
    let mut rows = Vec::new();
    let total = ks.len() + 1;
    let mut bar = Progress::new("sizes", total, "models");
    let before = match a.before {
        Some(r) => {
            let m = load_model(gpu, r, false)?;
            crate::boomerang::patch::check_compatible(&pair.teacher.cfg, &m.cfg)?;
            Some(m.decoder)
        }
        None => None,
    };
    // The extra curves at a size (`None`: the student's own).
    let extra = |k: Option<usize>| -> Result<(Option<Perplexity>, Option<Perplexity>)> {
        let naive = match a.baseline {
            true => Some(score(
                gpu,
                &pair.naive(k, dir)?,
                ids,
                seq_len,
                "naive",
                true,
            )?),
            false => None,
        };
        let before = match (&before, k) {
            (Some(b), Some(k)) => {
                let dec = pair.patched_with(b, k, dir)?.1;
                Some(score(gpu, &dec, ids, seq_len, "before", true)?)
            }
            (Some(b), None) => Some(score(gpu, b, ids, seq_len, "before", true)?),
            (None, _) => None,
        };
        Ok((naive, before))
    };
    let s = &pair.student.decoder;
    let p = score(gpu, s, ids, seq_len, "student", true)?;
    let (naive, bef) = extra(None)?;
    rows.push(CurveRow {
        label: "student".into(),
        k: None,
        layers: s.layers.len(),
        params: s.params(),
        bytes: s.weight_bytes(),
        ppl: p,
        naive,
        before: bef,
    });
    bar.update(1, "");
    for (i, &k) in ks.iter().enumerate() {
        let (plan, dec) = pair.patched(k, dir)?;
        let p = score(gpu, &dec, ids, seq_len, "patched", true)?;
        let (naive, bef) = extra(Some(k))?;
        rows.push(CurveRow {
            label: if plan.is_teacher {
                "teacher".into()
            } else {
                format!("{dir}-{k}")
            },
            k: Some(k),
            layers: plan.num_layers(),
            params: dec.params(),
            bytes: dec.weight_bytes(),
            ppl: p,
            naive,
            before: bef,
        });
        bar.update(
            i + 2,
            &format!("k={k}: ppl {:.3}", rows.last().expect("row").ppl.perplexity),
        );
    }
    let stem = a
        .data
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "eval".into());
    let csv_path = a
        .csv
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}.sizes.csv")));
    let svg_path = a
        .svg
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}.sizes.svg")));
    let opt = |p: &Option<Perplexity>| p.as_ref().map(|p| p.perplexity.to_string());
    let mut csv = String::from("label,k,layers,params,weight_bytes,perplexity,nll,predicted");
    if a.baseline {
        csv.push_str(",naive_perplexity");
    }
    if before.is_some() {
        csv.push_str(",before_perplexity");
    }
    csv.push('\n');
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{}",
            r.label,
            r.k.map(|k| k.to_string()).unwrap_or_default(),
            r.layers,
            r.params,
            r.bytes,
            r.ppl.perplexity,
            r.ppl.nll,
            r.ppl.predicted
        ));
        for p in [opt(&r.naive), opt(&r.before)].into_iter().flatten() {
            csv.push(',');
            csv.push_str(&p);
        }
        csv.push('\n');
    }
    std::fs::write(&csv_path, &csv).map_err(|e| Error::io(&csv_path, e))?;
    let series = |name: &str, y: &dyn Fn(&CurveRow) -> Option<f64>| Series {
        name: name.into(),
        points: rows
            .iter()
            .filter_map(|r| {
                Some(Point {
                    x: r.params as f64 / 1e6,
                    y: y(r)?,
                    label: r.label.clone(),
                })
            })
            .collect(),
    };
    let mut curves = vec![series("boomerang", &|r| Some(r.ppl.perplexity))];
    if a.baseline {
        curves.push(series("naive pruning", &|r| {
            r.naive.as_ref().map(|p| p.perplexity)
        }));
    }
    if before.is_some() {
        curves.push(series("before distillation", &|r| {
            r.before.as_ref().map(|p| p.perplexity)
        }));
    }
    let svg = curve_svg(
        &format!("Perplexity of every size ({dir}-k patching)"),
        "parameters (millions)",
        "perplexity",
        &curves,
    )?;
    std::fs::write(&svg_path, svg).map_err(|e| Error::io(&svg_path, e))?;
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut j = json_line(&r.ppl, r.layers, r.params);
                j["label"] = json!(r.label);
                j["k"] = json!(r.k);
                if let Some(p) = &r.naive {
                    j["naive_perplexity"] = json!(p.perplexity);
                }
                if let Some(p) = &r.before {
                    j["before_perplexity"] = json!(p.perplexity);
                }
                j
            })
            .collect();
        return Ok(serde_json::Value::Array(v).to_string() + "\n");
    }
    let mut out = format!(
        "{}: {} tokens, windows of up to {seq_len}, {dir}-k patching\n{:<10} {:>3} {:>7} {:>12} {:>11} {:>11}",
        a.data.display(),
        ids.len(),
        "size",
        "k",
        "layers",
        "params",
        "weights",
        "perplexity"
    );
    if a.baseline {
        out.push_str(&format!(" {:>11}", "naive"));
    }
    if before.is_some() {
        out.push_str(&format!(" {:>11}", "before"));
    }
    out.push('\n');
    for r in &rows {
        out.push_str(&format!(
            "{:<10} {:>3} {:>7} {:>11.2}M {:>11} {:>11.4}",
            r.label,
            r.k.map(|k| k.to_string()).unwrap_or_else(|| "-".into()),
            r.layers,
            r.params as f64 / 1e6,
            format_bytes(r.bytes),
            r.ppl.perplexity
        ));
        for p in [&r.naive, &r.before].into_iter().flatten() {
            out.push_str(&format!(" {:>11.4}", p.perplexity));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "wrote {} and {}\n",
        csv_path.display(),
        svg_path.display()
    ));
    Ok(out)
}
