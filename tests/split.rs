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

/// Three logged distillation steps, split and whole: every loss part and
/// the gradient norm within `rel`.
fn same_steps(what: &str, whole: &[Value], split: &[Value], rel: f64) {
    assert_eq!(whole.len(), 3, "{what}: {whole:?}");
    assert_eq!(whole.len(), split.len(), "{what}");
    for (w, s) in whole.iter().zip(split) {
        for key in ["loss", "ce", "kl", "cos", "grad_norm"] {
            let at = format!("{what} step {} {key}", w["step"]);
            close(&at, s[key].as_f64().unwrap(), w[key].as_f64().unwrap(), rel);
        }
    }
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
        close(
            &format!("{fam} perplexity"),
            perplexity_of(&split),
            perplexity_of(&whole),
            1e-6,
        );

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
        same_steps(fam, &whole, &split, 1e-6);

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
    // 1 KiB: the fixture's 8 KiB rope table cannot be bound (only tables,
    // logits, KV caches and layer matrices are split); named, with the
    // limit.
    let e = fail_limited("1KiB", &args);
    assert!(
        e.contains("tensor '")
            && e.contains("needs 8.00 KiB")
            && e.contains("1.00 KiB (1024 bytes)")
            && e.contains("BOOMGPU_MAX_BINDING"),
        "{e}"
    );
    // A 2 KiB row of a 512-wide embedding cannot be split further.
    let dir = tmpdir("split-row");
    let config = serde_json::json!({
        "model_type": "qwen3", "hidden_size": 512, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 64, "vocab_size": 320, "max_position_embeddings": 256,
        "bos_token_id": 318, "eos_token_id": 319, "tie_word_embeddings": true,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0
    });
    write_seeded_model(&dir, &config, boomgpu::gpu::DType::F32, 1);
    let eval = [
        "eval",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
    ];
    let e = fail_limited("1KiB", &eval);
    assert!(
        e.contains("tensor 'model.embed_tokens.weight (one row)' needs 2.00 KiB")
            && e.contains("cannot be split further"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // An unreadable switch is an error, not ignored.
    let e = fail_limited("lots", &args);
    assert!(
        e.contains("BOOMGPU_MAX_BINDING='lots' is not a size"),
        "{e}"
    );
}

/// Layer weights over the limit: a 384-wide MLP's 48 KiB matrices at a
/// 16 KiB limit are stored in blocks of rows (output features), and eval,
/// a 3-step distillation (with and without recompute) and the student it
/// writes match the whole run, for Qwen3 (SwiGLU) and GPT-NeoX (biases,
/// GELU).
#[test]
fn layer_weights_in_blocks_match_whole() {
    let dir = tmpdir("split-layers");
    let text = fixture_path("text.txt");
    let text = text.to_str().unwrap();
    let base = serde_json::json!({
        "hidden_size": 32, "intermediate_size": 384, "num_hidden_layers": 4,
        "num_attention_heads": 4, "vocab_size": 320, "max_position_embeddings": 256,
        "bos_token_id": 318, "eos_token_id": 319, "tie_word_embeddings": false
    });
    let families = [
        serde_json::json!({"model_type": "qwen3", "num_key_value_heads": 2, "head_dim": 16,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0}),
        serde_json::json!({"model_type": "gpt_neox", "rotary_pct": 0.5,
            "use_parallel_residual": true, "layer_norm_eps": 1e-5}),
    ];
    for fam in families {
        let mut config = base.clone();
        config
            .as_object_mut()
            .unwrap()
            .extend(fam.as_object().unwrap().clone());
        let name = config["model_type"].as_str().unwrap().to_string();
        let teacher = dir.join(&name);
        write_seeded_model(&teacher, &config, boomgpu::gpu::DType::F32, 3);
        let t = teacher.to_str().unwrap();

        let eval = [
            "eval",
            "--model",
            t,
            "--data",
            text,
            "--seq-len",
            "8",
            "--json",
        ];
        let (whole, _) = run(None, &eval);
        let (split, log) = run(Some("16KiB"), &eval);
        // Per layer: gate, up and down (Qwen3) or h→4h and 4h→h (GPT-NeoX).
        let n = if name == "qwen3" { 12 } else { 8 };
        let needle = format!("; {n} layer weights in blocks of rows");
        assert!(log.contains(&needle), "{name}: {log}");
        close(
            &format!("{name} perplexity"),
            perplexity_of(&split),
            perplexity_of(&whole),
            1e-6,
        );

        for recompute in [false, true] {
            let distill = |tag: &str| {
                let out = dir.join(format!("{name}-{tag}-{recompute}"));
                let log = dir.join(format!("{name}-{tag}-{recompute}.jsonl"));
                let mut args = vec![
                    "distill",
                    "--quiet",
                    "--teacher",
                    t,
                    "--data",
                    text,
                    "--out",
                    out.to_str().unwrap(),
                    "--steps",
                    "3",
                    "--seq-len",
                    "8",
                    "--batch",
                    "1",
                    "--lr",
                    "1e-3",
                    "--seed",
                    "5",
                    "--log",
                    log.to_str().unwrap(),
                ];
                if recompute {
                    args.push("--recompute");
                }
                run((tag == "split").then_some("16KiB"), &args);
                (log_lines(&log), out)
            };
            let ((whole, w_out), (split, s_out)) = (distill("whole"), distill("split"));
            same_steps(
                &format!("{name} recompute {recompute}"),
                &whole,
                &split,
                1e-5,
            );
            // The students written: every tensor, blocks joined in order.
            let (a, b) = (
                boomgpu::model::weights::Checkpoint::open(&w_out).unwrap(),
                boomgpu::model::weights::Checkpoint::open(&s_out).unwrap(),
            );
            assert_eq!(a.tensors.len(), b.tensors.len());
            for n in a.tensors.keys() {
                let (x, y) = (a.to_f32(n).unwrap(), b.to_f32(n).unwrap());
                let worst = x
                    .iter()
                    .zip(&y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                // Summing dx over blocks rounds differently, and AdamW moves a
                // weight whose gradient is rounding noise (GPT-NeoX's key bias:
                // softmax ignores it) by up to lr = 1e-3 a step whatever its
                // size; blocks joined out of order would differ by ~0.1.
                assert!(
                    worst <= 6e-3,
                    "{name}: student tensor {n} differs by {worst}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
