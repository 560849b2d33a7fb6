//! Intermediate models assembled on the GPU from a teacher and a student
//! (no copies) against transformers evaluating the same construction
//! (tests/fixtures/make_fixtures.py implements REFERENCE §4 independently).

mod common;

use boomgpu::boomerang::Direction;
use boomgpu::commands::common::Pair;
use boomgpu::model::score;
use common::*;

#[test]
fn every_size_in_both_directions_matches_transformers() {
    let g = gpu();
    let text = std::fs::read_to_string(fixture_path("text.txt")).unwrap();
    for name in ["llama-tied", "qwen3", "neox"] {
        let t = fixture(name);
        let s = fixture(&format!("{name}-distilled"));
        let pair = Pair::load(g, t.to_str().unwrap(), s.to_str().unwrap(), None).unwrap();
        let r = read_json(&s.join("patch_ref.json"));
        let seq = r["seq_len"].as_u64().unwrap() as usize;
        let ids = pair
            .teacher
            .tokenizer
            .as_ref()
            .unwrap()
            .encode(&text, false)
            .unwrap();
        for (dir, key) in [(Direction::Last, "last"), (Direction::First, "first")] {
            for row in r[key].as_array().unwrap() {
                let k = row["k"].as_u64().unwrap() as usize;
                let (plan, dec) = pair.patched(k, &dir.into()).unwrap();
                assert_eq!(
                    plan.num_layers() as u64,
                    row["layers"].as_u64().unwrap(),
                    "{name} {key}-{k}"
                );
                assert_eq!(plan.is_teacher, row["is_teacher"].as_bool().unwrap());
                let p = score::perplexity(g, &dec, &ids, seq, |_, _| {}).unwrap();
                let want = row["perplexity"].as_f64().unwrap();
                let rel = (p.perplexity - want).abs() / want;
                assert!(
                    rel < 1e-3,
                    "{name} {key}-{k}: {} vs transformers {want}",
                    p.perplexity
                );
            }
        }
        // Switching sizes uploads nothing once the pool is warm: a second
        // pass over every size creates no buffer.
        let window = &ids[..seq];
        for dir in [Direction::Last, Direction::First] {
            for k in 0..=boomgpu::boomerang::PatchPlan::max_k(&pair.plan, dir) {
                let (_, dec) = pair.patched(k, &dir.into()).unwrap();
                score::window_nll(g, &dec, window).unwrap();
            }
        }
        let before = g.memory().buffers_created;
        for dir in [Direction::Last, Direction::First] {
            for k in 0..=boomgpu::boomerang::PatchPlan::max_k(&pair.plan, dir) {
                let (_, dec) = pair.patched(k, &dir.into()).unwrap();
                score::window_nll(g, &dec, window).unwrap();
            }
        }
        assert_eq!(
            g.memory().buffers_created,
            before,
            "{name}: switching sizes allocated"
        );
        let sp = score::perplexity(g, &pair.student.decoder, &ids, seq, |_, _| {}).unwrap();
        let want = r["student"]["perplexity"].as_f64().unwrap();
        assert!((sp.perplexity - want).abs() / want < 1e-3, "{name} student");
    }
}

#[test]
fn a_student_of_another_family_is_refused_before_upload() {
    // A private device, so other tests' buffers do not disturb the count.
    let g = &boomgpu::gpu::Gpu::open(&boomgpu::gpu::GpuOptions::from_env()).unwrap();
    let before = g.memory().buffers_created;
    let e = Pair::load(
        g,
        fixture("qwen3").to_str().unwrap(),
        fixture("llama-tied-distilled").to_str().unwrap(),
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("model_type qwen3 vs llama"), "{e}");
    assert_eq!(g.memory().buffers_created, before, "nothing was uploaded");
}

#[test]
fn out_of_range_layers_lists_the_valid_range() {
    let g = gpu();
    let pair = Pair::load(
        g,
        fixture("qwen3").to_str().unwrap(),
        fixture("qwen3-distilled").to_str().unwrap(),
        None,
    )
    .unwrap();
    let e = pair
        .patched(9, &Direction::Last.into())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("valid --layers for this pair: 0..=2"), "{e}");
}

#[test]
fn curve_through_the_cli_writes_table_csv_and_svg() {
    let dir = tmpdir("curve");
    let out = boomgpu_cmd()
        .args(["eval", "--teacher"])
        .arg(fixture("neox"))
        .arg("--student")
        .arg(fixture("neox-distilled"))
        .args(["--layers", "all", "--seq-len", "32", "--data"])
        .arg(fixture_path("text.txt"))
        .arg("--csv")
        .arg(dir.join("c.csv"))
        .arg("--svg")
        .arg(dir.join("c.svg"))
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(
        stdout.contains("student") && stdout.contains("teacher") && stdout.contains("last-1"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(dir.join("c.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 1 + 3, "{csv}");
    let svg = std::fs::read_to_string(dir.join("c.svg")).unwrap();
    // One line, four points and the legend's marker; the sizes labelled.
    assert!(
        svg.starts_with("<svg")
            && svg.contains("<polyline")
            && svg.matches("<circle").count() == 4 + 1
            && ["student", "last-0", "last-1", "teacher", "boomerang"]
                .iter()
                .all(|l| svg.contains(&format!("\n{l}\n"))),
        "{svg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Naive layer pruning at size k keeps exactly the teacher layers the
/// patched model stands for: its removed layers are the pruned layers whose
/// blocks were not patched back, for every k, both orders, every family.
#[test]
fn naive_pruning_removes_what_the_patched_model_lacks() {
    use boomgpu::boomerang::{LayerSource, PatchPlan};
    let g = gpu();
    for name in ["llama-tied", "qwen3", "neox"] {
        let t = fixture(name);
        let s = fixture(&format!("{name}-distilled"));
        let pair = Pair::load(g, t.to_str().unwrap(), s.to_str().unwrap(), None).unwrap();
        let prune = &pair.plan;
        for dir in [Direction::Last, Direction::First] {
            for k in 0..=PatchPlan::max_k(prune, dir) {
                let plan = PatchPlan::new(prune, k, dir).unwrap();
                let kept = plan.naive_layers(prune);
                assert_eq!(kept.len(), plan.num_layers(), "{name} {dir}-{k}");
                assert!(
                    kept.windows(2).all(|w| w[0] < w[1]),
                    "{name} {dir}-{k}: {kept:?}"
                );
                let patched_back: Vec<usize> = plan
                    .layers
                    .iter()
                    .filter_map(|l| match *l {
                        LayerSource::Teacher(j) => Some(j),
                        LayerSource::Student(_) => None,
                    })
                    .collect();
                let removed: Vec<usize> = (0..prune.num_teacher_layers)
                    .filter(|j| !kept.contains(j))
                    .collect();
                let lacking: Vec<usize> = prune
                    .pruned
                    .iter()
                    .copied()
                    .filter(|j| !patched_back.contains(j))
                    .collect();
                assert_eq!(removed, lacking, "{name} {dir}-{k}");
                // The decoder is the teacher's layers, shared.
                let dec = pair.naive(Some(k), &dir.into()).unwrap();
                assert_eq!(dec.layers.len(), kept.len());
                for (l, &j) in dec.layers.iter().zip(&kept) {
                    assert!(std::sync::Arc::ptr_eq(l, &pair.teacher.decoder.layers[j]));
                }
            }
        }
    }
}

/// `eval --layers all --baseline --before`: naive pruning at the teacher's
/// size is the teacher and at the student's size the pruned teacher
/// (`init-student`, scored alone); the untrained student patched the same
/// way holds the same weights as naive pruning, so its curve is the same.
#[test]
fn baseline_and_before_curves_through_the_cli() {
    let dir = tmpdir("baseline");
    let (t, s) = (fixture("qwen3"), fixture("qwen3-distilled"));
    let pruned = dir.join("pruned");
    ok(&boomgpu_run(&[
        "init-student",
        "--teacher",
        t.to_str().unwrap(),
        "--out",
        pruned.to_str().unwrap(),
    ]));
    let text = fixture_path("text.txt");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--seq-len",
            "32",
            "--json",
            "--data",
            text.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&boomgpu_run(&args))
    };
    let alone: serde_json::Value =
        serde_json::from_str(&eval(&["--model", pruned.to_str().unwrap()])).unwrap();
    let (csv, svg) = (dir.join("c.csv"), dir.join("c.svg"));
    let out = eval(&[
        "--teacher",
        t.to_str().unwrap(),
        "--student",
        s.to_str().unwrap(),
        "--layers",
        "all",
        "--baseline",
        "--before",
        pruned.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    let student = &rows[0];
    assert_eq!(student["label"], "student");
    assert_eq!(f(student, "naive_perplexity"), f(&alone, "perplexity"));
    let teacher = rows.last().unwrap();
    assert_eq!(teacher["label"], "teacher");
    assert_eq!(f(teacher, "naive_perplexity"), f(teacher, "perplexity"));
    for r in &rows {
        assert_eq!(f(r, "before_perplexity"), f(r, "naive_perplexity"), "{r}");
    }
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.starts_with("label,k,layers,params,weight_bytes,perplexity,nll,predicted,naive_perplexity,before_perplexity\n"), "{csv}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("naive pruning") && svg.contains("before distillation"),
        "{svg}"
    );
    // Without a curve the extra columns are refused.
    let out = boomgpu_run(&[
        "eval",
        "--model",
        t.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--baseline",
    ]);
    assert!(err(&out).contains("--baseline and --before add curves"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--fit SIZE`: for budgets between every pair of sizes, the largest `K`
/// whose weights (from `plan --json`) and f32 KV cache (layers × 2 × ctx ×
/// kv heads × head dim × 4) fit is chosen by `patch`, `eval` and `chat`,
/// with the arithmetic; a budget below the smallest is refused with it.
#[test]
fn fit_chooses_the_largest_size_that_fits() {
    let (t, s) = (fixture("qwen3"), fixture("qwen3-distilled"));
    let (t, s) = (t.to_str().unwrap(), s.to_str().unwrap());
    let plan: serde_json::Value = serde_json::from_str(&ok(&boomgpu_run(&[
        "plan",
        "--teacher",
        t,
        "--student",
        s,
        "--json",
    ])))
    .unwrap();
    let cfg = read_json(&fixture("qwen3").join("config.json"));
    // K and V of a position, f16 (the KV cache chat and serve keep).
    let kv_row =
        2 * cfg["num_key_value_heads"].as_u64().unwrap() * cfg["head_dim"].as_u64().unwrap() * 2;
    let ctx = 64;
    let need: Vec<u64> = plan["last"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap() + r["layers"].as_u64().unwrap() * kv_row * ctx)
        .collect();
    assert!(need.windows(2).all(|w| w[0] < w[1]), "{need:?}");
    let dir = tmpdir("fit");
    let out = dir.join("m");
    for (k, &bytes) in need.iter().enumerate() {
        // Exactly the size's need, and just below the next one's.
        let below_next = need.get(k + 1).map_or(bytes + 4096, |n| n - 4);
        for budget in [bytes, below_next] {
            let r = boomgpu_cmd()
                .args([
                    "patch",
                    "--teacher",
                    t,
                    "--student",
                    s,
                    "--force",
                    "--ctx",
                    "64",
                ])
                .args(["--fit", &budget.to_string(), "--out", out.to_str().unwrap()])
                .output()
                .unwrap();
            let stdout = ok(&r);
            assert!(
                stdout.contains(&format!("k = {k} of 0..=2")),
                "{budget}: {stdout}"
            );
            let e = String::from_utf8_lossy(&r.stderr);
            assert!(
                e.contains(&format!("--layers {k} is ")) && e.contains("at 64 positions"),
                "{e}"
            );
        }
    }
    // eval and chat choose by the same rule (chat's context: --max-context).
    let text = fixture_path("text.txt");
    let budget = need[1].to_string();
    let e = boomgpu_cmd()
        .args([
            "eval",
            "--teacher",
            t,
            "--student",
            s,
            "--fit",
            &budget,
            "--ctx",
            "64",
        ])
        .args([
            "--seq-len",
            "32",
            "--json",
            "--data",
            text.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&e)).unwrap();
    assert_eq!(v["layers"], plan["last"][1]["layers"], "{v}");
    let c = boomgpu_cmd()
        .args([
            "chat",
            "--teacher",
            t,
            "--student",
            s,
            "--fit",
            &budget,
            "--max-context",
            "64",
        ])
        .args(["--prompt", "hi", "--max-tokens", "2"])
        .output()
        .unwrap();
    ok(&c);
    assert!(String::from_utf8_lossy(&c.stderr).contains("--layers 1 is last-1"));
    // Below the smallest size: refused with the numbers.
    let r = boomgpu_run(&[
        "patch",
        "--teacher",
        t,
        "--student",
        s,
        "--fit",
        "2KiB",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = err(&r);
    assert!(
        e.contains("even the smallest size does not fit: last-0 (4 layers"),
        "{e}"
    );
    assert!(e.contains("weights 274 KiB + KV cache"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
