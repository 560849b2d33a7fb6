//! `boomgpu distill --plan` and the plan every run prints: the planned GPU
//! peak against the allocator's measured peak on every tiny family and
//! setting, plans of the five published teachers from config.json alone,
//! budgets refused before anything is loaded, and f16 checkpoints (as
//! Pythia is published) running as stored.

mod common;
use common::*;

use std::path::Path;

fn plan_json(args: &[&str]) -> serde_json::Value {
    // A fixed host budget, so that plans do not depend on this machine's
    // memory (unless a test names its own).
    let mut all = vec!["distill", "--plan", "--json"];
    if !args.contains(&"--host-memory-budget") {
        all.extend(["--host-memory-budget", "4096GiB"]);
    }
    all.extend_from_slice(args);
    let out = ok(&boomgpu_run(&all));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn planned_peak_is_the_measured_peak() {
    let dir = tmpdir("plan-measured");
    let text = fixture_path("text.txt");
    let settings: &[&[&str]] = &[
        &["--seq-len", "32"],
        &[
            "--seq-len",
            "48",
            "--batch",
            "2",
            "--grad-accum",
            "2",
            "--eval-tokens",
            "100",
        ],
        &["--seq-len", "40", "--recompute", "--save-every", "1"],
    ];
    for family in ["qwen3", "llama-tied", "neox"] {
        for (i, s) in settings.iter().enumerate() {
            let teacher = fixture(family);
            let teacher = teacher.to_str().unwrap();
            let out_dir = dir.join(format!("{family}-{i}"));
            let log = dir.join(format!("{family}-{i}.jsonl"));
            let mut args = vec!["distill", "--quiet", "--steps", "3", "--teacher", teacher];
            args.extend_from_slice(s);
            let (text_s, out_s, log_s) = (
                text.to_str().unwrap(),
                out_dir.to_str().unwrap(),
                log.to_str().unwrap(),
            );
            args.extend(["--data", text_s, "--out", out_s, "--log", log_s]);
            let stdout = ok(&boomgpu_run(&args));
            let (measured, planned) = peaks_of(&stdout);
            let what = format!("{family} {s:?}");
            assert!(
                (measured as f64 - planned as f64).abs() <= 0.05 * measured as f64,
                "{what}: measured {measured}, planned {planned}"
            );
            // Every logged step stays within the plan.
            let logged = std::fs::read_to_string(&log).unwrap();
            for l in logged.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(v["peak_bytes"].as_u64().unwrap() <= planned, "{what}: {l}");
            }
            // --plan alone (no weights read, no data) plans the same run.
            let mut plan_args: Vec<&str> = vec!["--teacher", teacher];
            plan_args.extend_from_slice(s);
            let p = plan_json(&plan_args);
            assert_eq!(p["gpu_peak_bytes"].as_u64(), Some(planned), "{what}");
        }
    }
}

#[test]
fn a_tight_budget_releases_pooled_buffers_and_changes_no_number() {
    // Between the live bytes and the peak with every buffer kept for
    // reuse, the allocator releases pooled buffers as the budget requires:
    // the plan says so, the run peaks where planned (within the budget),
    // and training computes exactly what it computes without a budget.
    let dir = tmpdir("plan-tight");
    let text = fixture_path("text.txt");
    for family in ["qwen3", "neox"] {
        let teacher = fixture(family);
        let teacher = teacher.to_str().unwrap();
        let base = ["--teacher", teacher, "--seq-len", "32", "--lean"];
        let free = plan_json(&base);
        let (peak, slack) = (
            free["gpu_peak_bytes"].as_u64().unwrap(),
            free["parts"]["allocator_slack"].as_u64().unwrap(),
        );
        assert_eq!(free["pool_released_bytes"], 0, "{family}");
        let budget = (peak - slack / 2).to_string();
        let mut tight_args = base.to_vec();
        tight_args.extend(["--memory-budget", &budget]);
        let tight = plan_json(&tight_args);
        let tpeak = tight["gpu_peak_bytes"].as_u64().unwrap();
        let budget: u64 = budget.parse().unwrap();
        assert!(
            tpeak <= budget && tight["fits"] == true,
            "{family}: {tight}"
        );
        assert!(tight["pool_released_bytes"].as_u64().unwrap() > 0);
        let mut losses = Vec::new();
        for (tag, extra) in [("free", None), ("tight", Some(budget.to_string()))] {
            let (out_dir, log) = (
                dir.join(format!("{family}-{tag}")),
                dir.join(format!("{family}-{tag}.jsonl")),
            );
            let mut args = vec![
                "distill",
                "--quiet",
                "--steps",
                "4",
                "--data",
                text.to_str().unwrap(),
            ];
            args.extend(base);
            args.extend([
                "--out",
                out_dir.to_str().unwrap(),
                "--log",
                log.to_str().unwrap(),
            ]);
            if let Some(b) = &extra {
                args.extend(["--memory-budget", b]);
            }
            let stdout = ok(&boomgpu_run(&args));
            let (measured, planned) = peaks_of(&stdout);
            assert_eq!(measured, planned, "{family} {tag}");
            if extra.is_some() {
                assert!(measured <= budget, "{family}: {measured} over {budget}");
            }
            losses.push(
                std::fs::read_to_string(&log)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        (
                            v["loss"].as_f64().unwrap(),
                            v["grad_norm"].as_f64().unwrap(),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(losses[0], losses[1], "{family}");
    }
}

#[test]
fn the_host_budget_chooses_8bit_moments_and_refuses_what_cannot_fit() {
    // Qwen3-8B's lean plan holds 16 bytes per student parameter on the
    // host (80 GiB): under 64 GiB, 8-bit moments are chosen by themselves.
    let q8 = published("Qwen3-8B-Base");
    let args = ["--teacher", &q8, "--lean", "--teacher-8bit"];
    let mut with = args.to_vec();
    with.extend(["--host-memory-budget", "64GiB"]);
    let p = plan_json(&with);
    let host = p["host_peak_bytes"].as_u64().unwrap();
    assert!(host <= 64 << 30 && p["host_fits"] == true, "{p}");
    assert!(p["settings"]["optimizer"]
        .as_str()
        .unwrap()
        .contains("8-bit"));
    assert!(p["notes"][0]
        .as_str()
        .unwrap()
        .contains("8-bit AdamW moments chosen"));
    let free = plan_json(&args);
    assert!(free["host_peak_bytes"].as_u64().unwrap() > 64 << 30);
    assert_eq!(free["notes"].as_array().unwrap().len(), 0);
    // The GPU side does not change.
    assert_eq!(p["gpu_peak_bytes"], free["gpu_peak_bytes"]);
    let mut tight = args.to_vec();
    tight.extend(["--host-memory-budget", "32GiB"]);
    assert_eq!(plan_json(&tight)["host_fits"], false);

    // A run over its host budget is refused before anything is loaded.
    let dir = tmpdir("plan-host");
    let teacher = fixture("qwen3");
    let text = fixture_path("text.txt");
    let out = dir.join("out");
    let budget = [
        "--seq-len",
        "32",
        "--lean",
        "--host-memory-budget",
        "100KiB",
    ];
    let r = distill(&teacher, &text, &out, &budget);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(
        err.contains("over the host budget") && err.contains("even with 8-bit AdamW moments"),
        "{err}"
    );
    assert!(!out.exists(), "nothing was written");
}

/// `boomgpu distill --teacher T --data D --out O` and `extra`, run.
fn distill(teacher: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    boomgpu_run(&args)
}

/// The five published teachers' config.json files (facts, as test data).
fn published(name: &str) -> String {
    fixture_path("published")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn plans_of_the_published_pairs_from_config_alone() {
    // (teacher, dtype bytes per teacher parameter, the lean GPU
    // target at seq 2048 in GiB, and with the 8-bit teacher where it
    // names one)
    let pairs = [
        ("Qwen3-4B-Base", 2u64, 16u64, Some(12u64)),
        ("Llama-3.2-3B", 2, 24, None),
        ("pythia-2.8b", 2, 24, None),
        ("pythia-6.9b", 2, 24, None),
        ("Qwen3-8B-Base", 2, 32, Some(24)),
    ];
    let mut peaks = Vec::new();
    for (name, bytes, target, target_8bit) in pairs {
        let dir = published(name);
        assert!(
            !Path::new(&dir).join("model.safetensors").exists(),
            "config only"
        );
        let p = plan_json(&["--teacher", &dir, "--memory-budget", "24GiB", "--exact"]);
        let peak = p["gpu_peak_bytes"].as_u64().unwrap();
        let parts = p["parts"].as_object().unwrap();
        let sum: u64 = parts.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(sum, peak, "{name}: parts sum to the peak");
        let (tp, sp) = (
            p["teacher_params"].as_u64().unwrap(),
            p["student_params"].as_u64().unwrap(),
        );
        assert!(
            tp > 2_000_000_000 && sp > tp / 2 && sp < tp,
            "{name}: {tp} {sp}"
        );
        let near = |key: &str, want: u64| {
            let got = parts[key].as_u64().unwrap();
            assert!(
                (got as f64 - want as f64).abs() <= 0.01 * want as f64,
                "{name} {key}: {got} vs {want}"
            );
        };
        near("teacher_weights", bytes * tp);
        near("student_weights", 4 * sp);
        near("gradients", 4 * sp);
        near("optimizer_states", 8 * sp);
        assert!(parts["activations"].as_u64().unwrap() > 0);
        // Exact mode keeps 16 bytes per student parameter: no pair fits.
        assert_eq!(p["fits"], false, "{name}");
        assert_eq!(p["budget_bytes"].as_u64(), Some(24 << 30));
        assert_eq!(p["settings"]["mode"], "exact");
        assert_eq!(p["settings"]["seq_len"], 2048);
        // Checkpoints are written one tensor at a time: the host never
        // holds the whole student.
        let host = p["host_peak_bytes"].as_u64().unwrap();
        assert!(host > 0 && host < 4 * sp, "{name}: host {host}");
        peaks.push(peak);
        // Lean mode: 16-bit compute weights, no moments on the GPU, masters
        // and moments on the host; chosen by itself when exact cannot fit.
        let l = plan_json(&["--teacher", &dir, "--memory-budget", "24GiB"]);
        assert_eq!(l["settings"]["mode"], "lean", "{name}");
        assert_eq!(l["exact_gpu_peak_bytes"].as_u64(), Some(peak), "{name}");
        let lp = l["parts"].as_object().unwrap();
        let lpeak = l["gpu_peak_bytes"].as_u64().unwrap();
        assert!(lpeak < peak / 2, "{name}: lean {lpeak} vs exact {peak}");
        let got = lp["student_weights"].as_u64().unwrap();
        assert!(
            (got as f64 - 2.0 * sp as f64).abs() <= 0.01 * 2.0 * sp as f64,
            "{name}: lean student weights {got}"
        );
        assert!(lp["optimizer_states"].as_u64().unwrap() < 16 << 20);
        assert_eq!(
            l["host_parts"]["masters_moments_gradients"].as_u64(),
            Some(16 * sp)
        );
        assert_eq!(
            l["host_parts"]["checkpoint_writing"],
            p["host_parts"]["checkpoint_writing"]
        );
        assert_eq!(l["fits"], lpeak <= 24 << 30, "{name}");
        // The targets: the head's and the embedding's gradients never
        // whole on the GPU, layer gradients one layer at a time.
        assert!(lpeak <= target << 30, "{name}: lean {lpeak} > {target} GiB");
        assert!(lp["gradients"].as_u64().unwrap() < sp, "{name}: {lp:?}");
        if let Some(t8) = target_8bit {
            let q = plan_json(&["--teacher", &dir, "--lean", "--teacher-8bit"]);
            let qpeak = q["gpu_peak_bytes"].as_u64().unwrap();
            assert!(
                qpeak <= t8 << 30,
                "{name}: 8-bit teacher {qpeak} > {t8} GiB"
            );
        }
    }
    // 8-bit moments: 10 bytes per student parameter on the host, which
    // brings the largest pair under 64 GiB.
    let q8 = published("Qwen3-8B-Base");
    let l = plan_json(&["--teacher", &q8, "--adam-8bit"]);
    assert_eq!(l["settings"]["mode"], "lean");
    let sp = l["student_params"].as_u64().unwrap();
    let mm = l["host_parts"]["masters_moments_gradients"]
        .as_u64()
        .unwrap();
    assert!(mm > 10 * sp && mm < 10 * sp + sp / 10, "{mm} for {sp}");
    assert!(l["host_peak_bytes"].as_u64().unwrap() < 64 << 30);
    // Bigger teachers plan bigger peaks.
    assert!(peaks[3] > peaks[2] && peaks[4] > peaks[0]);
    // Activation checkpointing lowers the peak.
    let q = published("Qwen3-4B-Base");
    let full = plan_json(&["--teacher", &q, "--exact"]);
    let rec = plan_json(&["--teacher", &q, "--exact", "--recompute"]);
    assert!(
        rec["parts"]["activations"].as_u64() < full["parts"]["activations"].as_u64(),
        "{rec} vs {full}"
    );
    // The text plan names every part and the verdict.
    let text = ok(&boomgpu_run(&[
        "distill",
        "--plan",
        "--exact",
        "--teacher",
        &q,
        "--memory-budget",
        "24GiB",
    ]));
    for want in [
        "teacher weights",
        "gradients",
        "AdamW",
        "activations",
        "GPU peak",
        "host peak",
        "does NOT fit the GPU budget of 24.0 GiB",
        "would fit:",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

#[test]
fn a_budget_below_the_plan_is_refused_before_anything_is_loaded() {
    let dir = tmpdir("plan-budget");
    let out = dir.join("out");
    let teacher = fixture("qwen3");
    let text = fixture_path("text.txt");
    let e = err(&distill(
        &teacher,
        &text,
        &out,
        &["--seq-len", "64", "--memory-budget", "1MiB"],
    ));
    for want in [
        "planned GPU peak",
        "budget of 1.00 MiB",
        "Nothing was loaded",
        "teacher_weights",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    assert!(!out.exists(), "refused before --out was made");
    // A budget the plan fits runs.
    let p = plan_json(&["--teacher", teacher.to_str().unwrap(), "--seq-len", "32"]);
    let peak = p["gpu_peak_bytes"].as_u64().unwrap();
    let budget = format!("{}", peak + 4096);
    let extra = [
        "--quiet",
        "--steps",
        "1",
        "--seq-len",
        "32",
        "--memory-budget",
        &budget,
    ];
    let stdout = ok(&distill(&teacher, &text, &out, &extra));
    assert!(peaks_of(&stdout).0 <= peak + 4096);
    // Flag errors name the flag.
    let e = err(&boomgpu_run(&[
        "distill",
        "--plan",
        "--teacher",
        teacher.to_str().unwrap(),
        "--memory-budget",
        "lots",
    ]));
    assert!(e.contains("--memory-budget lots"), "{e}");
    let e = err(&distill(&teacher, &text, &out, &["--json"]));
    assert!(e.contains("--plan"), "{e}");
    let e = err(&boomgpu_run(&[
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
    ]));
    assert!(e.contains("--data"), "{e}");
}

#[test]
fn f16_checkpoints_run_as_stored() {
    use boomgpu::gpu::DType;
    use boomgpu::model::weights::{write_safetensors, Checkpoint};
    // The GPT-NeoX fixture in f16, as Pythia is published.
    let dir = tmpdir("f16-neox");
    let src = fixture("neox");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
    }
    let ck = Checkpoint::open(&src).unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    for (name, e) in &ck.tensors {
        let vals = ck.to_f32(name).unwrap();
        let h: Vec<half::f16> = vals.iter().map(|&x| half::f16::from_f32(x)).collect();
        tensors.insert(
            name.clone(),
            (
                DType::F16,
                e.shape.clone(),
                bytemuck::cast_slice(&h).to_vec(),
            ),
        );
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    let text = fixture_path("text.txt");
    let ppl = |model: &Path| -> f64 {
        let out = ok(&boomgpu_run(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            text.to_str().unwrap(),
            "--seq-len",
            "64",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    let (p16, p32) = (ppl(&dir), ppl(&src));
    assert!((p16 - p32).abs() <= 1e-3 * p32, "f16 {p16} vs f32 {p32}");
    // The plan keeps the teacher's matrices in f16 (2 bytes each).
    let p = plan_json(&["--teacher", dir.to_str().unwrap(), "--seq-len", "32"]);
    assert_eq!(p["settings"]["teacher_dtype"], "f16");
}
