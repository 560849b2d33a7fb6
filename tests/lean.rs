//! Lean training mode against exact mode: the same loss curve within 1%
//! over 30 steps on every tiny family, final weights close, the plan equal
//! to the measured peak, and the choice of mode by the budget.

mod common;
use common::*;

use std::path::Path;

/// Run distill from the fixture `family` with `extra` flags; returns the
/// logged losses and the final f32 weights.
fn run(
    family: &str,
    dir: &Path,
    tag: &str,
    extra: &[&str],
) -> (
    Vec<f64>,
    std::collections::BTreeMap<String, Vec<f32>>,
    String,
) {
    let out = dir.join(tag);
    let log = dir.join(format!("{tag}.jsonl"));
    let teacher = fixture(family);
    let text = fixture_path("text.txt");
    let mut args = vec![
        "distill",
        "--quiet",
        "--teacher",
        teacher.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "--seq-len",
        "32",
        "--lr",
        "1e-3",
        "--save-dtype",
        "f32",
    ];
    if !extra.contains(&"--steps") {
        args.extend(["--steps", "30"]);
    }
    args.extend_from_slice(extra);
    let stdout = ok(&boomgpu_run(&args));
    let losses = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let ck = boomgpu::model::weights::Checkpoint::open(&out).unwrap();
    let weights = ck
        .tensors
        .keys()
        .map(|n| (n.clone(), ck.to_f32(n).unwrap()))
        .collect();
    (losses, weights, stdout)
}

#[test]
fn lean_follows_exact_on_every_family() {
    lean_follows_exact("lean-follows", &["--lean"]);
}

/// 8-bit moments too (their codes keep about 6% relative precision).
#[test]
fn lean_with_8bit_moments_follows_exact() {
    lean_follows_exact("lean8-follows", &["--lean", "--adam-8bit"]);
}

/// With the teacher's layer matrices in 8-bit blocks as well: the targets
/// move by about 1e-4, the curve stays within the same bound.
#[test]
fn lean_with_an_8bit_teacher_follows_exact() {
    lean_follows_exact("lean-q8-follows", &["--lean", "--teacher-8bit"]);
}

/// With gradient accumulation and held-out evaluation between steps: the
/// update of each step runs beside the next step's first teacher forward,
/// or at once when an evaluation reads the weights first.
#[test]
fn lean_with_accumulation_and_evaluation_follows_exact() {
    let dir = tmpdir("lean-accum");
    let extra = [
        "--grad-accum",
        "2",
        "--eval-tokens",
        "64",
        "--eval-every",
        "3",
        "--steps",
        "12",
    ];
    let mut exact = extra.to_vec();
    exact.push("--exact");
    let mut lean = extra.to_vec();
    lean.push("--lean");
    let (le, _, _) = run("qwen3", &dir, "exact", &exact);
    let (ll, _, stdout) = run("qwen3", &dir, "lean", &lean);
    assert_eq!((le.len(), ll.len()), (12, 12));
    for (s, (a, b)) in le.iter().zip(&ll).enumerate() {
        assert!(
            (a - b).abs() <= 0.01 * a.abs(),
            "step {}: exact {a}, lean {b}",
            s + 1
        );
    }
    let (measured, planned) = peaks_of(&stdout);
    assert_eq!(measured, planned);
}

fn lean_follows_exact(tag: &str, lean: &[&str]) {
    let dir = tmpdir(tag);
    for family in ["qwen3", "llama-tied", "neox"] {
        let (le, we, _) = run(family, &dir, &format!("{family}-exact"), &["--exact"]);
        let (ll, wl, stdout) = run(family, &dir, &format!("{family}-lean"), lean);
        assert_eq!((le.len(), ll.len()), (30, 30));
        let mut worst_loss = 0f64;
        for (s, (a, b)) in le.iter().zip(&ll).enumerate() {
            let rel = (a - b).abs() / a.abs();
            worst_loss = worst_loss.max(rel);
            assert!(rel <= 0.01, "{family} step {}: exact {a}, lean {b}", s + 1);
        }
        // Training moved the weights, and both modes moved them alike:
        // the difference is small next to how far they moved.
        let (mut moved, mut apart) = (0f64, 0f64);
        for (name, a) in &we {
            let b = &wl[name];
            assert_eq!(a.len(), b.len(), "{name}");
            for (x, y) in a.iter().zip(b) {
                apart = apart.max((x - y).abs() as f64);
            }
            moved += a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
        }
        let rms = (moved / we.values().map(Vec::len).sum::<usize>() as f64).sqrt();
        assert!(
            apart <= 0.05 * rms.max(1e-3) + 2e-3,
            "{family}: weights differ by up to {apart} (weights' rms {rms})"
        );
        // Lean mode's plan is the measured peak too.
        let (measured, planned) = peaks_of(&stdout);
        assert_eq!(measured, planned, "{family}");
        eprintln!("{family} {lean:?}: worst loss difference {worst_loss:.2e}, weights {apart:.2e}");
    }
}

#[test]
fn the_budget_chooses_lean_mode() {
    let teacher = fixture("qwen3");
    let t = teacher.to_str().unwrap();
    let plan = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec![
            "distill",
            "--plan",
            "--json",
            "--teacher",
            t,
            "--seq-len",
            "64",
        ];
        a.extend_from_slice(extra);
        serde_json::from_str(ok(&boomgpu_run(&a)).trim()).unwrap()
    };
    let exact = plan(&["--exact"]);
    let lean = plan(&["--lean"]);
    assert_eq!(exact["settings"]["mode"], "exact");
    assert_eq!(lean["settings"]["mode"], "lean");
    let (pe, pl) = (
        exact["gpu_peak_bytes"].as_u64().unwrap(),
        lean["gpu_peak_bytes"].as_u64().unwrap(),
    );
    assert!(pl < pe, "lean {pl} vs exact {pe}");
    // Lean mode has no moments on the GPU and holds them on the host.
    assert!(
        lean["parts"]["optimizer_states"].as_u64().unwrap()
            < exact["parts"]["optimizer_states"].as_u64().unwrap() / 10
    );
    assert!(
        lean["host_parts"]["masters_moments_gradients"]
            .as_u64()
            .unwrap()
            > 0
    );
    // A budget between the two picks lean mode by itself and says why.
    let between = ((pe + pl) / 2).to_string();
    let chosen = plan(&["--memory-budget", &between]);
    assert_eq!(chosen["settings"]["mode"], "lean");
    assert_eq!(chosen["fits"], true);
    assert_eq!(chosen["exact_gpu_peak_bytes"].as_u64(), Some(pe));
    // A budget above exact keeps exact mode.
    let above = (pe + 1).to_string();
    assert_eq!(
        plan(&["--memory-budget", &above])["settings"]["mode"],
        "exact"
    );
    // --exact insists, and is refused over the budget.
    let dir = tmpdir("lean-budget");
    let text = fixture_path("text.txt");
    let e = err(&boomgpu_run(&[
        "distill",
        "--exact",
        "--teacher",
        t,
        "--data",
        text.to_str().unwrap(),
        "--out",
        dir.join("o").to_str().unwrap(),
        "--seq-len",
        "64",
        "--memory-budget",
        &between,
    ]));
    assert!(e.contains("planned GPU peak"), "{e}");
    let e = err(&boomgpu_run(&[
        "distill",
        "--plan",
        "--lean",
        "--exact",
        "--teacher",
        t,
    ]));
    assert!(e.contains("--exact") || e.contains("--lean"), "{e}");
}

#[test]
fn an_8bit_teacher_halves_its_memory_and_barely_moves_the_loss() {
    let dir = tmpdir("teacher-8bit");
    for family in ["qwen3", "llama-tied", "neox"] {
        let (full, _, _) = run(family, &dir, &format!("{family}-16"), &["--steps", "3"]);
        let (q8, _, stdout) = run(
            family,
            &dir,
            &format!("{family}-8"),
            &["--steps", "3", "--teacher-8bit"],
        );
        let (measured, planned) = peaks_of(&stdout);
        assert_eq!(measured, planned, "{family}");
        // Step 1 sees the initial student (lr 0 at the first step): the
        // teacher's rounding is all that differs.
        let rel = (full[0] - q8[0]).abs() / full[0];
        assert!(
            rel <= 0.01,
            "{family}: loss {} vs {} with the 8-bit teacher",
            full[0],
            q8[0]
        );
        eprintln!(
            "{family}: step-1 loss {:.6} vs {:.6} 8-bit ({rel:.2e})",
            full[0], q8[0]
        );
    }
    // The plan of a published teacher: its layer matrices at ~1.1 bytes.
    let q = fixture_path("published").join("Qwen3-4B-Base");
    let plan = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec![
            "distill",
            "--plan",
            "--json",
            "--lean",
            "--teacher",
            q.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        serde_json::from_str(ok(&boomgpu_run(&a)).trim()).unwrap()
    };
    let (t16, t8) = (plan(&[]), plan(&["--teacher-8bit"]));
    let bytes = |p: &serde_json::Value| p["parts"]["teacher_weights"].as_u64().unwrap();
    // Layers at 1.125 bytes per value; the tied embedding stays bf16.
    assert!(
        bytes(&t8) < bytes(&t16) * 2 / 3,
        "{} vs {}",
        bytes(&t8),
        bytes(&t16)
    );
    assert_eq!(t8["settings"]["teacher_8bit"], true);
}
