//! `boomgpu eval`: perplexity of a model, of one intermediate size of a
//! teacher/student pair, or of every size (the interpolation curve: table,
//! CSV and SVG).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::common::{load_model, open_gpu, read_text, Pair};
use super::order::{self, OrderChoice};
use crate::boomerang::{PatchOrder, PatchPlan, PruneParams};
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
        order: OrderChoice,
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
    let encoder = match &a.target {
        Target::Model(r) => super::encoder::is_encoder(r).unwrap_or(false),
        Target::Pair {
            teacher, student, ..
        } => super::encoder::pair_is_encoder(teacher, student)?,
    };
    if encoder {
        return super::encoder::eval(opts, a);
    }
    let gpu = open_gpu(opts)?;
    match &a.target {
        Target::Model(reference) => {
            let m = load_model(&gpu, reference, false)?;
            let seq_len = a
                .seq_len
                .unwrap_or(score::default_window(m.cfg.max_position_embeddings));
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
            order: choice,
            params,
        } => {
            let pair = Pair::load(&gpu, teacher, student, *params)?;
            let seq_len = a.seq_len.unwrap_or(score::default_window(
                pair.teacher.cfg.max_position_embeddings,
            ));
            if let Some(c) = choice.calibration() {
                if same_file(&c.text, a.data) {
                    eprintln!(
                        "warning: --calibration is the --data text: the order is chosen on the \
                         text it is scored on, so its perplexities are optimistic"
                    );
                }
            }
            let order = order::for_pair(&gpu, &pair, choice, Some(seq_len))?;
            let ids = tokenize(pair.teacher.tokenizer.as_ref(), &pair.teacher.dir, a.data)?;
            eprintln!(
                "teacher + student on the GPU: {} (every size shares these tensors)",
                format_bytes(pair.union_bytes())
            );
            match sizes {
                Sizes::One(k) => {
                    let (plan, dec) = pair.patched(*k, &order)?;
                    eprintln!(
                        "{}: {} layers ({} from the teacher), {:.1}M parameters, {} of weights",
                        plan.label(),
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
                        "{}: {} tokens\n{}-k = {k}: {} layers, {:.1}M parameters: perplexity {:.4}\n",
                        a.data.display(),
                        p.tokens,
                        order.name(),
                        plan.num_layers(),
                        dec.params() as f64 / 1e6,
                        p.perplexity
                    ))
                }
                Sizes::All => {
                    let all: Vec<usize> =
                        (0..=PatchPlan::max_k(&pair.plan, order.direction)).collect();
                    curve(&gpu, &pair, &order, &all, &ids, seq_len, a)
                }
                Sizes::List(ks) => curve(&gpu, &pair, &order, ks, &ids, seq_len, a),
            }
        }
    }
}

/// Whether two paths name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A size of a chosen (`--order auto`) order, beside the reference's.
pub struct AutoRow {
    pub label: String,
    pub layers: usize,
    pub params: u64,
    pub ppl: Perplexity,
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
    /// The chosen order at this `k` (`--order auto`).
    pub auto: Option<AutoRow>,
}

/// The curve of `order`'s sizes `ks`. A chosen order is scored beside the
/// reference order of its base direction, which makes the main curve.
fn curve(
    gpu: &Gpu,
    pair: &Pair,
    order: &PatchOrder,
    ks: &[usize],
    ids: &[u32],
    seq_len: usize,
    a: &EvalArgs,
) -> Result<String> {
    let (main, auto) = match order.is_reference() {
        true => (order.clone(), None),
        false => (PatchOrder::reference(order.direction), Some(order)),
    };
    let dir = main.direction;
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
                &pair.naive(k, &main)?,
                ids,
                seq_len,
                "naive",
                true,
            )?),
            false => None,
        };
        let before = match (&before, k) {
            (Some(b), Some(k)) => {
                let dec = pair.patched_with(b, k, &main)?.1;
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
        auto: None,
    });
    bar.update(1, "");
    for (i, &k) in ks.iter().enumerate() {
        let (plan, dec) = pair.patched(k, &main)?;
        let p = score(gpu, &dec, ids, seq_len, "patched", true)?;
        let (naive, bef) = extra(Some(k))?;
        // The chosen order differs from the reference's below the top.
        let auto = match auto {
            Some(o) if !plan.is_teacher => {
                let (ap, adec) = pair.patched(k, o)?;
                let ppl = if ap.layers == plan.layers {
                    p.clone()
                } else {
                    score(gpu, &adec, ids, seq_len, "auto", true)?
                };
                Some(AutoRow {
                    label: ap.label(),
                    layers: ap.num_layers(),
                    params: adec.params(),
                    ppl,
                })
            }
            _ => None,
        };
        rows.push(CurveRow {
            label: plan.label(),
            k: Some(k),
            layers: plan.num_layers(),
            params: dec.params(),
            bytes: dec.weight_bytes(),
            ppl: p,
            naive,
            before: bef,
            auto,
        });
        bar.update(
            i + 2,
            &format!("k={k}: ppl {:.3}", rows.last().expect("row").ppl.perplexity),
        );
    }
    let intro = format!(
        "{}: {} tokens, windows of up to {seq_len}, {dir}-k patching",
        a.data.display(),
        ids.len()
    );
    let shape = Report {
        intro,
        dir,
        metric: "perplexity",
        column: "perplexity",
        key: "perplexity",
        before: before.is_some(),
        auto: auto.map(|o| o.keys(&pair.plan)),
    };
    report(a, &rows, &shape)
}

/// How a curve is reported: its first line, the patch direction, the
/// score's name in text and in CSV/JSON keys, and its extra curves.
pub(super) struct Report {
    pub intro: String,
    pub dir: crate::boomerang::Direction,
    pub metric: &'static str,
    /// The metric's table heading (at most 11 characters).
    pub column: &'static str,
    pub key: &'static str,
    pub before: bool,
    /// The chosen order's student layers, in turn (`--order auto`).
    pub auto: Option<Vec<usize>>,
}

/// Write the curve's CSV and SVG and return its table (or JSON).
pub(super) fn report(a: &EvalArgs, rows: &[CurveRow], shape: &Report) -> Result<String> {
    let dir = shape.dir;
    let before = shape.before.then_some(());
    let auto = shape.auto.as_ref();
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
    let key = shape.key;
    let mut csv = format!("label,k,layers,params,weight_bytes,{key},nll,predicted");
    if a.baseline {
        csv.push_str(&format!(",naive_{key}"));
    }
    if before.is_some() {
        csv.push_str(&format!(",before_{key}"));
    }
    if auto.is_some() {
        csv.push_str(&format!(",auto_layers,auto_params,auto_{key}"));
    }
    csv.push('\n');
    for r in rows {
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
        if auto.is_some() {
            match &r.auto {
                Some(x) => {
                    csv.push_str(&format!(",{},{},{}", x.layers, x.params, x.ppl.perplexity))
                }
                None => csv.push_str(",,,"),
            }
        }
        csv.push('\n');
    }
    std::fs::write(&csv_path, &csv).map_err(|e| Error::io(&csv_path, e))?;
    let series = |name: &str, y: &dyn Fn(&CurveRow) -> Option<(u64, f64)>| Series {
        name: name.into(),
        points: rows
            .iter()
            .filter_map(|r| {
                let (params, y) = y(r)?;
                Some(Point {
                    x: params as f64 / 1e6,
                    y,
                    label: r.label.clone(),
                })
            })
            .collect(),
    };
    let main_name = match auto {
        Some(_) => format!("boomerang, {dir}-k"),
        None => "boomerang".to_string(),
    };
    let mut curves = vec![series(&main_name, &|r| Some((r.params, r.ppl.perplexity)))];
    if auto.is_some() {
        // The auto curve shares the student and the teacher with the main one.
        curves.push(series("boomerang, auto order", &|r| match &r.auto {
            Some(x) => Some((x.params, x.ppl.perplexity)),
            None => Some((r.params, r.ppl.perplexity)),
        }));
    }
    if a.baseline {
        curves.push(series("naive pruning", &|r| {
            r.naive.as_ref().map(|p| (r.params, p.perplexity))
        }));
    }
    if before.is_some() {
        curves.push(series("before distillation", &|r| {
            r.before.as_ref().map(|p| (r.params, p.perplexity))
        }));
    }
    let mut title = shape.metric.to_string();
    title[..1].make_ascii_uppercase();
    let svg = curve_svg(
        &format!("{title} of every size ({dir}-k patching)"),
        "parameters (millions)",
        shape.metric,
        &curves,
    )?;
    std::fs::write(&svg_path, svg).map_err(|e| Error::io(&svg_path, e))?;
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut j = json_line(&r.ppl, r.layers, r.params);
                if key != "perplexity" {
                    j[key] = j["perplexity"].take();
                    j.as_object_mut().map(|o| o.remove("perplexity"));
                }
                j["label"] = json!(r.label);
                j["k"] = json!(r.k);
                if let Some(p) = &r.naive {
                    j[format!("naive_{key}")] = json!(p.perplexity);
                }
                if let Some(p) = &r.before {
                    j[format!("before_{key}")] = json!(p.perplexity);
                }
                if let Some(x) = &r.auto {
                    j[format!("auto_{key}")] = json!(x.ppl.perplexity);
                    j["auto_layers"] = json!(x.layers);
                    j["auto_params"] = json!(x.params);
                }
                j
            })
            .collect();
        return Ok(serde_json::Value::Array(v).to_string() + "\n");
    }
    let mut out = format!(
        "{}\n{:<10} {:>3} {:>7} {:>12} {:>11} {:>11}",
        shape.intro, "size", "k", "layers", "params", "weights", shape.column
    );
    if a.baseline {
        out.push_str(&format!(" {:>11}", "naive"));
    }
    if before.is_some() {
        out.push_str(&format!(" {:>11}", "before"));
    }
    if auto.is_some() {
        out.push_str(&format!(" {:>11}", "auto order"));
    }
    out.push('\n');
    for r in rows {
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
        if auto.is_some() {
            match &r.auto {
                Some(x) if x.layers == r.layers => {
                    out.push_str(&format!(" {:>11.4}", x.ppl.perplexity))
                }
                Some(x) => out.push_str(&format!(
                    " {:>11.4} ({} layers)",
                    x.ppl.perplexity, x.layers
                )),
                None => out.push_str(&format!(" {:>11}", "=")),
            }
        }
        out.push('\n');
    }
    if let Some(keys) = auto {
        let better = rows
            .iter()
            .filter_map(|r| Some((r.ppl.perplexity, r.auto.as_ref()?.ppl.perplexity)))
            .fold((0, 0, 0), |(b, w, e), (r, x)| match x.partial_cmp(&r) {
                Some(std::cmp::Ordering::Less) => (b + 1, w, e),
                Some(std::cmp::Ordering::Greater) => (b, w + 1, e),
                _ => (b, w, e + 1),
            });
        out.push_str(&format!(
            "auto order (student layers {:?} in turn): lower perplexity than {dir}-k at {} \
             sizes, higher at {}, equal at {}\n",
            keys, better.0, better.1, better.2
        ));
    }
    out.push_str(&format!(
        "wrote {} and {}\n",
        csv_path.display(),
        svg_path.display()
    ));
    Ok(out)
}
