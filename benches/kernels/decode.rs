//! Decoding end to end: a Qwen3-4B-shaped decoder with random bf16 weights
//! (a tiny one on CPU adapters), batch 1, a 32-token prompt, then new
//! tokens one per step with the KV cache, greedy and sampled. Reports
//! tokens/s and the fraction of the memory-bandwidth limit: every weight
//! is read once per token, so the ideal step time is weight bytes / peak
//! GB/s.

use std::time::Instant;

use boomgpu::gpu::{format_bytes, DType};
use boomgpu::infer::generate::step;
use boomgpu::infer::KvCache;
use boomgpu::model::decoder::Decoder;
use boomgpu::model::ModelConfig;
use boomgpu::ops::sample::SampleParams;
use boomgpu::Result;

use crate::harness::Bench;

fn config(small: bool) -> Result<ModelConfig> {
    let (h, i, l, hq, hkv, d, v) = if small {
        (256, 768, 4, 4, 2, 64, 8192)
    } else {
        (2560, 9728, 36, 32, 8, 128, 151936)
    };
    ModelConfig::from_json(serde_json::json!({
        "model_type": "qwen3", "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": l, "num_attention_heads": hq, "num_key_value_heads": hkv,
        "head_dim": d, "vocab_size": v, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "max_position_embeddings": 40960
    }))
}

fn line(b: &Bench, name: &str, secs_per_token: f64, bytes_per_token: f64) {
    let gbps = bytes_per_token / secs_per_token / 1e9;
    let frac = b.peak.gbps.map(|p| gbps / p);
    println!(
        "{:<44} {:>10} {:>11} {:>10.2} {:>8}",
        name,
        format!("{:.3} ms", secs_per_token * 1e3),
        format!("{:.1} tok/s", 1.0 / secs_per_token),
        gbps,
        frac.map_or("-".into(), |f| format!("{:.1}%", f * 100.0))
    );
}

fn bench(b: &Bench) -> Result<()> {
    let gpu = &b.gpu;
    let small = b.small();
    let cfg = config(small)?;
    let (prompt_len, new_tokens) = if small { (32, 16) } else { (32, 256) };
    let t0 = Instant::now();
    let dec = Decoder::random(gpu, &cfg, DType::BF16, 1)?;
    gpu.wait()?;
    println!(
        "decode (columns: time per token, tokens/s, GB/s of weights read, % of peak bandwidth)"
    );
    println!(
        "decode model: {} layers, {:.2}B parameters, {} bf16 weights (built in {:.1} s)",
        cfg.num_layers,
        dec.params() as f64 / 1e9,
        format_bytes(dec.weight_bytes()),
        t0.elapsed().as_secs_f64()
    );
    // Per decode step every weight is read once (the tied embedding as
    // the head; one embedding row besides).
    let bytes_per_token = dec.weight_bytes() as f64;
    let ctx = prompt_len + new_tokens + 8;
    let mut cache = KvCache::for_decoder(gpu, &dec, ctx)?;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab_size as u32)
        .collect();
    let greedy = SampleParams::greedy();
    let sampled = SampleParams {
        temperature: 0.6,
        top_k: 20,
        top_p: 0.95,
        ..Default::default()
    };
    // Warm-up: pipelines and pooled buffers of both paths.
    let mut t = step(gpu, &dec, &mut cache, &prompt, &greedy, &[], 1)?;
    for p in [&greedy, &sampled] {
        t = step(gpu, &dec, &mut cache, &[t], p, &[], 2)?;
    }
    for (label, p) in [("greedy", &greedy), ("top-k 20 top-p 0.95", &sampled)] {
        cache.clear();
        let t0 = Instant::now();
        let mut t = step(gpu, &dec, &mut cache, &prompt, p, &[], 3)?;
        let prefill = t0.elapsed().as_secs_f64();
        let (t1, c1) = (Instant::now(), gpu.counters());
        for i in 0..new_tokens - 1 {
            t = step(gpu, &dec, &mut cache, &[t], p, &[], i as u32)?;
        }
        let decode = t1.elapsed().as_secs_f64() / (new_tokens - 1) as f64;
        let used = gpu.counters().since(&c1);
        let per = |x: u64| x as f64 / (new_tokens - 1) as f64;
        println!(
            "{:<44} {:>10} {:>11}",
            format!("decode prefill {prompt_len} tokens ({label})"),
            format!("{:.3} ms", prefill * 1e3),
            format!("{:.1} tok/s", prompt_len as f64 / prefill),
        );
        line(
            b,
            &format!("decode {new_tokens} tokens, batch 1 ({label})"),
            decode,
            bytes_per_token,
        );
        println!(
            "{:<44} {:.1} submissions, {:.1} dispatches ({:.1} per layer), {:.0} bytes read back",
            "  per decoded token:",
            per(used.submissions),
            per(used.dispatches),
            per(used.dispatches) / cfg.num_layers as f64,
            per(used.readback_bytes)
        );
    }
    Ok(())
}

pub fn run(b: &mut Bench) {
    if !b.wants("decode") {
        return;
    }
    if let Err(e) = bench(b) {
        println!("decode: failed: {e}");
    }
    b.gpu.trim();
}
