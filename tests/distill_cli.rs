//! `boomgpu distill` as a user runs it: the first logged line against the
//! reference's loss parts, and SIGKILL in the middle of a run followed by
//! --resume ending with exactly the weights of an uninterrupted run.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `boomgpu distill --quiet` from the fixture teacher `teacher`.
fn distill(teacher: &str, data: &Path, out: &Path) -> Command {
    let mut c = boomgpu_cmd();
    c.args(["distill", "--quiet", "--teacher"])
        .arg(fixture(teacher))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn first_logged_line_has_the_reference_loss_parts() {
    let dir = tmpdir("firstline");
    let sdir = fixture("qwen3-student");
    let r = read_json(&sdir.join("distill_ref.json"));
    // The fixture's batch as pre-tokenised records (packed as they are).
    let refs =
        boomgpu::model::weights::Checkpoint::open_file(&sdir.join("distill_grads.safetensors"))
            .unwrap();
    let (ids, shape) = reference_batch(&refs);
    let t = shape[1];
    let data = dir.join("batch.jsonl");
    let lines: Vec<String> = ids
        .chunks(t)
        .map(|c| serde_json::json!({ "input_ids": c }).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out = distill("qwen3", &data, &dir.join("out"))
        .arg("--student")
        .arg(&sdir)
        .args(["--steps", "1", "--lr", "0", "--batch", "2"])
        .args(["--seq-len", &t.to_string()])
        .args(["--temperature", &r["tau"].to_string()])
        .arg("--log")
        .arg(dir.join("log.jsonl"))
        .output()
        .unwrap();
    ok(&out);
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 1);
    for key in ["loss", "ce", "kl", "cos"] {
        let (got, want) = (first[key].as_f64().unwrap(), r[key].as_f64().unwrap());
        assert!(
            (got - want).abs() <= 1e-3 * want.abs(),
            "{key}: {got} vs reference {want}"
        );
    }
    for key in ["lr", "grad_norm", "tokens_per_s", "peak_bytes"] {
        assert!(first.get(key).is_some(), "log line lacks {key}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The run that is killed and resumed: 24 steps, a checkpoint every 3,
/// in the mode `mode` asks for.
fn resumable_run(data: &Path, out: &Path, mode: &[&str]) -> Command {
    let mut c = distill("llama-tied", data, out);
    c.args(mode);
    c.args([
        "--steps",
        "24",
        "--seq-len",
        "16",
        "--batch",
        "2",
        "--lr",
        "2e-3",
    ])
    .args(["--save-every", "3", "--seed", "5"])
    .arg("--log")
    .arg(out.with_extension("log"));
    c
}

#[test]
fn sigkill_then_resume_is_bit_identical() {
    sigkill_then_resume("resume", &["--exact"]);
}

/// Lean mode's checkpoint holds the host's masters and moments.
#[test]
fn lean_sigkill_then_resume_is_bit_identical() {
    sigkill_then_resume("resume-lean", &["--lean"]);
}

/// With 8-bit moments: a checkpoint holds them decoded to f32, and
/// encoding them again gives the same codes.
#[test]
fn lean_8bit_adam_sigkill_then_resume_is_bit_identical() {
    sigkill_then_resume("resume-lean8", &["--lean", "--adam-8bit"]);
}

fn sigkill_then_resume(tag: &str, mode: &[&str]) {
    let dir = tmpdir(tag);
    let data = fixture_path("text.txt");
    // Uninterrupted.
    let full = dir.join("full");
    let out = resumable_run(&data, &full, mode).output().unwrap();
    ok(&out);

    // Killed once a checkpoint exists, then resumed.
    let part = dir.join("part");
    let mut child = resumable_run(&data, &part, mode).spawn().unwrap();
    let state = part.join("checkpoint/trainer_state.json");
    let t0 = Instant::now();
    let mut killed_mid_run = false;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        let step = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0);
        if step >= 3 {
            // SIGKILL: no chance to clean up.
            child.kill().unwrap();
            child.wait().unwrap();
            killed_mid_run = !part.join("model.safetensors").exists();
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        killed_mid_run,
        "the run finished before it could be killed; make it longer"
    );
    let out = resumable_run(&data, &part, mode)
        .arg("--resume")
        .arg(&part)
        .output()
        .unwrap();
    ok(&out);
    let a = std::fs::read(full.join("model.safetensors")).unwrap();
    let b = std::fs::read(part.join("model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from the uninterrupted run");
    let la = std::fs::read_to_string(full.with_extension("log")).unwrap();
    let lb = std::fs::read_to_string(part.with_extension("log")).unwrap();
    let strip = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("tokens_per_s");
                v.as_object_mut().unwrap().remove("peak_bytes");
                v
            })
            .collect()
    };
    assert_eq!(strip(&la), strip(&lb), "the resumed log differs");
    assert_eq!(strip(&la).len(), 24);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_student_of_another_teacher_is_refused() {
    let dir = tmpdir("mismatch");
    let out = distill("qwen3", &fixture_path("text.txt"), &dir.join("out"))
        .arg("--student")
        .arg(fixture("neox-distilled"))
        .args(["--steps", "1", "--seq-len", "32"])
        .output()
        .unwrap();
    let stderr = err(&out);
    assert!(stderr.contains("model_type qwen3 vs gpt_neox"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn save_dtype_rounds_the_student_and_keeps_f32_checkpoints() {
    let dir = tmpdir("savedtype");
    let data = fixture_path("text.txt");
    let out_dir = dir.join("bf16");
    let out = distill("llama-tied", &data, &out_dir)
        .args(["--steps", "2", "--seq-len", "16", "--save-dtype", "bf16"])
        .output()
        .unwrap();
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(bf16 weights)"));
    let cfg = read_json(&out_dir.join("config.json"));
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    use boomgpu::model::weights::Checkpoint;
    let student = Checkpoint::open(&out_dir).unwrap();
    let master = Checkpoint::open(&out_dir.join("checkpoint")).unwrap();
    assert_eq!(student.tensors.len(), master.tensors.len());
    for (name, e) in &student.tensors {
        assert_eq!(e.dtype, safetensors::Dtype::BF16, "{name}");
        let m = &master.tensors[name];
        assert_eq!(m.dtype, safetensors::Dtype::F32, "{name}: checkpoint");
        let want: Vec<f32> = master
            .to_f32(name)
            .unwrap()
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        assert_eq!(student.to_f32(name).unwrap(), want, "{name}");
    }
    // The bf16 student is a model like any other.
    let ev = boomgpu_cmd()
        .args(["eval", "--model"])
        .arg(&out_dir)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    ok(&ev);
    assert!(String::from_utf8_lossy(&ev.stdout).contains("perplexity"));

    // A wrong value is refused before any work.
    let bad = distill("llama-tied", &data, &dir.join("bad"))
        .args(["--save-dtype", "f8"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--save-dtype f8"), "{err}");
    assert!(!dir.join("bad").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
