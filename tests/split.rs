//! Tensors over the binding limit. With `BOOMGPU_MAX_BINDING` forced small,
//! the fixtures' 320 × 32 f32 embedding (40 KiB) is stored in blocks of rows
//! and logits are computed in chunks of tokens; every command must give the
//! results of the unsplit run. (The distillation suite's checks against
//! PyTorch also run under a forced limit in scripts/test.sh.)

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Splits the 40 KiB embedding in two (256 + 64 rows) and a 32-token
/// batch's 40 KiB of logits into chunks of 25 and 7 tokens, while a layer's
/// tensors and the chat's KV cache still fit (at 16 KiB the cache is split
/// too).
const LIMIT: &str = "32KiB";

use common::run_limited as run;

fn close(what: &str, split: f64, whole: f64, rel: f64) {
    assert!(
        (split - whole).abs() <= rel * whole.abs().max(1e-12),
        "{what}: split {split} vs unsplit {whole} (relative tolerance {rel})"
    );
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_command_matches_the_unsplit_run_for_every_family() {
    let dir = tmpdir("split");
    let text = fixture_path("text.txt");
    let text = text.to_str().unwrap();
    for fam in ["qwen3", "llama-tied", "neox"] {
        let teacher = fixture(fam);
        let teacher = teacher.to_str().unwrap();
        let student = fixture(&format!("{fam}-distilled"));
        let student = student.to_str().unwrap();

        // Perplexity.
        let eval = [
            "eval",
            "--model",
            teacher,
            "--data",
            text,
            "--seq-len",
            "64",
            "--json",
        ];
        let (whole, _) = run(None, &eval);
        let (split, log) = run(Some(LIMIT), &eval);
        assert!(
            log.contains("in 2 blocks of rows"),
            "{fam}: not split: {log}"
        );
        let ppl = |s: &str| {
            serde_json::from_str::<Value>(s).unwrap()["perplexity"]
                .as_f64()
                .unwrap()
        };
        close(&format!("{fam} perplexity"), ppl(&split), ppl(&whole), 1e-6);

        // Every patched size.
        let curve = |tag: &str| {
            let csv = dir.join(format!("{fam}-{tag}.csv"));
            let svg = dir.join(format!("{fam}-{tag}.svg"));
            let args = [
                "eval",
                "--teacher",
                teacher,
                "--student",
                student,
                "--layers",
                "all",
                "--seq-len",
                "64",
                "--data",
                text,
                "--json",
                "--csv",
                csv.to_str().unwrap(),
                "--svg",
                svg.to_str().unwrap(),
            ];
            let (out, _) = run((tag == "split").then_some(LIMIT), &args);
            let v: Value = serde_json::from_str(&out).unwrap();
            v["sizes"]
                .as_array()
                .or(v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        let (whole, split) = (curve("whole"), curve("split"));
        assert!(whole.len() >= 3, "{fam}: {whole:?}");
        assert_eq!(whole.len(), split.len());
        for (w, s) in whole.iter().zip(&split) {
            let p = |v: &Value| v["perplexity"].as_f64().unwrap();
            close(&format!("{fam} size {}", w["label"]), p(s), p(w), 1e-6);
        }

        // Three distillation steps: every loss part and gradient norm.
        let distill = |tag: &str| {
            let out = dir.join(format!("{fam}-d-{tag}"));
            let log = dir.join(format!("{fam}-{tag}.jsonl"));
            let args = [
                "distill",
                "--quiet",
                "--teacher",
                teacher,
                "--data",
                text,
                "--out",
                out.to_str().unwrap(),
                "--steps",
                "3",
                "--seq-len",
                "16",
                "--batch",
                "2",
                "--lr",
                "1e-3",
                "--seed",
                "5",
                "--log",
                log.to_str().unwrap(),
            ];
            run((tag == "split").then_some(LIMIT), &args);
            log_lines(&log)
        };
        let (whole, split) = (distill("whole"), distill("split"));
        assert_eq!(whole.len(), 3, "{fam}: {whole:?}");
        assert_eq!(whole.len(), split.len());
        for (w, s) in whole.iter().zip(&split) {
            for key in ["loss", "ce", "kl", "cos", "grad_norm"] {
                let what = format!("{fam} step {} {key}", w["step"]);
                close(
                    &what,
                    s[key].as_f64().unwrap(),
                    w[key].as_f64().unwrap(),
                    1e-6,
                );
            }
        }

        // Greedy chat: the same tokens.
        let chat = [
            "chat",
            "--model",
            teacher,
            "--prompt",
            "hello there",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
        ];
        let (whole, _) = run(None, &chat);
        let (split, _) = run(Some(LIMIT), &chat);
        assert_eq!(split, whole, "{fam}: greedy chat differs when split");

        // A prompt longer than a prefill pass under the limit (64 tokens
        // when an MLP row is 512 bytes): prefilled in chunks against the
        // cache, the same continuation.
        let long: String = std::fs::read_to_string(fixture_path("text.txt"))
            .unwrap()
            .chars()
            .take(300)
            .collect();
        let chat = [
            "chat",
            "--model",
            teacher,
            "--prompt",
            &long,
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ];
        let (whole, _) = run(None, &chat);
        let (split, _) = run(Some(LIMIT), &chat);
        assert_eq!(
            split, whole,
            "{fam}: greedy chat after a chunked prefill differs"
        );
        // At 16 KiB the 256-position KV cache is in blocks too (two of 128
        // positions for Qwen3's and GPT-NeoX's 32 columns).
        let (split, _) = run(Some("16KiB"), &chat);
        assert_eq!(split, whole, "{fam}: greedy chat over KV blocks differs");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn devices_shows_the_effective_limit() {
    let (out, _) = run(Some("48KiB"), &["devices", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let chosen = v["selected"].as_u64().unwrap() as usize;
    assert_eq!(v["adapters"][chosen]["split_above_bytes"], 48 * 1024);
    let (text, _) = run(Some("48KiB"), &["devices"]);
    assert!(
        text.contains(
            "embedding and head tables above 48.0 KiB are stored as blocks of rows (lowered by BOOMGPU_MAX_BINDING)"
        ),
        "{text}"
    );
}

#[test]
fn what_cannot_fit_is_refused_before_any_work() {
    let text = fixture_path("text.txt");
    let model = fixture("qwen3");
    let args = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--json",
    ];
    // 1 KiB: a layer's 8 KiB weight cannot be bound; named, with the limit.
    let out = boomgpu_cmd()
        .args(args)
        .env("BOOMGPU_MAX_BINDING", "1KiB")
        .output()
        .unwrap();
    let e = err(&out);
    assert!(
        e.contains("needs 8.00 KiB")
            && e.contains("1.00 KiB (1024 bytes)")
            && e.contains("tensor 'model.layers.0.")
            && e.contains("BOOMGPU_MAX_BINDING"),
        "{e}"
    );
    // An unreadable switch is an error, not ignored.
    let out = boomgpu_cmd()
        .args(args)
        .env("BOOMGPU_MAX_BINDING", "lots")
        .output()
        .unwrap();
    let e = err(&out);
    assert!(
        e.contains("BOOMGPU_MAX_BINDING='lots' is not a size"),
        "{e}"
    );
}
