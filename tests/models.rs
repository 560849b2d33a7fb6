//! The decoder of every family against Hugging Face transformers: logits,
//! hidden states and perplexity of tiny random models (fixtures made by
//! tests/fixtures/make_fixtures.py).

mod common;

use boomgpu::model::decoder::{Batch, Decoder};
use boomgpu::model::weights::Checkpoint;
use boomgpu::model::{score, tokenizer::Tokenizer, ModelConfig};
use common::*;

const MODELS: &[&str] = &["llama-tied", "llama-rope3", "qwen3", "neox", "neox-seq"];

fn load(name: &str) -> (ModelConfig, Decoder) {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let dec = Decoder::load(gpu(), &cfg, &ckpt, false).unwrap();
    (cfg, dec)
}

#[test]
fn logits_and_hidden_states_match_transformers() {
    let g = gpu();
    for name in MODELS {
        let (cfg, dec) = load(name);
        let refs = Checkpoint::open_file(&fixture(name).join("ref.safetensors")).unwrap();
        let ids_i32 = refs.to_f32("input_ids").unwrap();
        let shape = refs.tensors["input_ids"].shape.clone();
        let (b, t) = (shape[0], shape[1]);
        let ids: Vec<u32> = ids_i32.iter().map(|&x| x as u32).collect();
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let tids = g.upload_u32("ids", &[b * t], &ids).unwrap();
        let tpos = g.upload_u32("pos", &[b * t], &positions).unwrap();
        let mut rec = g.recorder();
        let batch = Batch {
            ids: &tids,
            positions: &tpos,
            batch: b,
            seq: t,
            mask: None,
        };
        let out = dec.forward(&mut rec, &batch, false, true).unwrap();
        rec.run().unwrap();
        let want = refs.to_f32("logits").unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        // In chunks of tokens, over every block of the head's rows.
        let got = boomgpu::model::head::read_logits(g, &dec, &out.normed).unwrap();
        assert_close(&format!("{name} logits"), &got, &want, 1e-4 * scale, 0.0);
        assert_eq!(out.hidden.len(), cfg.num_layers + 1);
        for (i, h) in out.hidden.iter().enumerate() {
            let want = refs.to_f32(&format!("hidden.{i}")).unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_close(
                &format!("{name} hidden.{i}"),
                &g.read_f32(h).unwrap(),
                &want,
                1e-4 * scale,
                0.0,
            );
        }
    }
}

#[test]
fn perplexity_matches_transformers() {
    let g = gpu();
    let text = std::fs::read_to_string(fixture_path("text.txt")).unwrap();
    for name in MODELS {
        let (cfg, dec) = load(name);
        let tok =
            Tokenizer::from_dir(&fixture(name), &cfg.eos_token_ids, cfg.bos_token_id).unwrap();
        let ids = tok.encode(&text, false).unwrap();
        let r = read_json(&fixture(name).join("ref.json"));
        assert_eq!(
            ids.len() as u64,
            r["tokens"].as_u64().unwrap(),
            "{name}: tokenisation differs"
        );
        let seq = r["seq_len"].as_u64().unwrap() as usize;
        let p = score::perplexity(g, &dec, &ids, seq, |_, _| {}).unwrap();
        assert_eq!(p.predicted as u64, r["predicted"].as_u64().unwrap());
        let want = r["perplexity"].as_f64().unwrap();
        let rel = (p.perplexity - want).abs() / want;
        assert!(
            rel < 1e-3,
            "{name}: perplexity {} vs transformers {want} ({rel:e} relative)",
            p.perplexity
        );
        assert_eq!(
            dec.params(),
            r["params"].as_u64().unwrap(),
            "{name}: parameter count"
        );
    }
}
