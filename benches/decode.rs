//! Decoding end to end, batch 1: prefill and decode tokens/s, the bytes a
//! decoded token reads (every weight once, plus the KV cache so far), the
//! GB/s that makes and its ratio to the device's memory bandwidth — the
//! known peak (`--peak-gbps X`, or the harness's table of GPUs) and the
//! rate of a large buffer copy measured here — with submissions, launches
//! and bytes read back per token.
//!
//! `cargo bench --bench decode -- [tiny|smollm2|qwen3-0.6b|qwen3-4b] [--tokens N] [--peak-gbps X]`
//!
//! - smollm2: the real SmolLM2-135M (bf16) from `BOOMGPU_SMOLLM2_DIR` or
//!   `target/demo/smollm2` (made by `scripts/demo.sh`); skipped when absent.
//! - qwen3-0.6b, qwen3-4b: random bf16 weights of Qwen3-0.6B's shape and
//!   of `tests/fixtures/published/Qwen3-4B-Base/config.json`.
//! - tiny: a 4-layer Qwen3 shape.
//!
//! With no name, a CPU adapter runs tiny and smollm2, a GPU every model.

#[allow(dead_code)]
mod harness;

use std::time::Instant;

use boomgpu::gpu::{format_bytes, DType, Gpu, Tensor};
use boomgpu::infer::generate::step;
use boomgpu::infer::KvCache;
use boomgpu::model::decoder::Decoder;
use boomgpu::model::ModelConfig;
use boomgpu::ops::sample::SampleParams;
use boomgpu::Result;
use serde_json::json;

fn qwen3(h: usize, i: usize, l: usize, hq: usize, hkv: usize, v: usize) -> Result<ModelConfig> {
    ModelConfig::from_json(json!({
        "model_type": "qwen3", "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": l, "num_attention_heads": hq, "num_key_value_heads": hkv,
        "head_dim": 128, "vocab_size": v, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "max_position_embeddings": 40960
    }))
}

/// The model of `name`, or None (with the reason said) when unavailable.
fn model(gpu: &Gpu, name: &str) -> Result<Option<Decoder>> {
    let random = |cfg: ModelConfig| Decoder::random(gpu, &cfg, DType::BF16, 1).map(Some);
    match name {
        "tiny" => random(qwen3(256, 768, 4, 4, 2, 8192)?),
        "qwen3-0.6b" => random(qwen3(1024, 3072, 28, 16, 8, 151936)?),
        "qwen3-4b" => {
            let p = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/published/Qwen3-4B-Base/config.json"
            );
            random(ModelConfig::from_file(std::path::Path::new(p))?)
        }
        _ => {
            let dir = std::env::var("BOOMGPU_SMOLLM2_DIR").unwrap_or_else(|_| {
                concat!(env!("CARGO_MANIFEST_DIR"), "/target/demo/smollm2").into()
            });
            if !std::path::Path::new(&dir).join("config.json").exists() {
                println!("smollm2: skipped, no model at {dir} (run scripts/demo.sh, or set BOOMGPU_SMOLLM2_DIR)");
                return Ok(None);
            }
            Ok(Some(
                boomgpu::commands::common::load_model(gpu, &dir, false)?.decoder,
            ))
        }
    }
}

/// GB/s of a copy between two buffers of `bytes` (read + write counted).
fn copy_gbps(gpu: &Gpu, bytes: usize) -> Result<f64> {
    let n = bytes / 4;
    let a = Tensor::empty(gpu, "bench.copy.a", &[n], DType::F32)?;
    let b = Tensor::empty(gpu, "bench.copy.b", &[n], DType::F32)?;
    let len = (n * 4) as u64;
    let mut rec = gpu.recorder();
    rec.copy(&a, 0, &b, 0, len)?;
    rec.run()?;
    let reps = 8;
    let mut rec = gpu.recorder();
    for _ in 0..reps {
        rec.copy(&a, 0, &b, 0, len)?;
    }
    let t0 = Instant::now();
    rec.run()?;
    Ok(2.0 * len as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9)
}

fn pct(gbps: f64, of: Option<f64>) -> String {
    of.map_or("-".into(), |p| format!("{:.1}%", 100.0 * gbps / p))
}

fn bench(gpu: &Gpu, name: &str, tokens: usize, peaks: (Option<f64>, f64)) -> Result<()> {
    let t0 = Instant::now();
    let Some(dec) = model(gpu, name)? else {
        return Ok(());
    };
    gpu.wait()?;
    let cfg = dec.cfg.clone();
    let weights = dec.weight_bytes();
    println!(
        "{name}: {} layers, {:.3}B parameters, {} of weights, {} KV cache (ready in {:.1} s)",
        cfg.num_layers,
        dec.params() as f64 / 1e9,
        format_bytes(weights),
        dec.kv_dtype().name(),
        t0.elapsed().as_secs_f64()
    );
    let prompt_len = 32;
    let mut cache = KvCache::for_decoder(gpu, &dec, prompt_len + tokens + 8)?;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab_size as u32)
        .collect();
    let greedy = SampleParams::greedy();
    // Warm-up: pipelines and pooled buffers.
    let t = step(gpu, &dec, &mut cache, &prompt, &greedy, &[], 1)?;
    step(gpu, &dec, &mut cache, &[t], &greedy, &[], 2)?;
    cache.clear();
    let t0 = Instant::now();
    let mut t = step(gpu, &dec, &mut cache, &prompt, &greedy, &[], 3)?;
    let prefill = t0.elapsed().as_secs_f64();
    let (t1, c1) = (Instant::now(), gpu.counters());
    for i in 0..tokens - 1 {
        t = step(gpu, &dec, &mut cache, &[t], &greedy, &[], i as u32)?;
    }
    let per_token = t1.elapsed().as_secs_f64() / (tokens - 1) as f64;
    let used = gpu.counters().since(&c1);
    let per = |x: u64| x as f64 / (tokens - 1) as f64;
    // The KV rows a step reads on average: the prompt and half the answer.
    let kv_row = 2 * cfg.num_kv_heads * cfg.head_dim * dec.kv_dtype().size() * cfg.num_layers;
    let bytes = weights as f64 + (kv_row * (prompt_len + tokens / 2)) as f64;
    let gbps = bytes / per_token / 1e9;
    let (peak, copy) = peaks;
    println!(
        "  prefill {prompt_len} tokens: {:.1} tokens/s; decode {} tokens: {:.1} tokens/s ({:.3} ms/token)",
        prompt_len as f64 / prefill,
        tokens,
        1.0 / per_token,
        per_token * 1e3
    );
    println!(
        "  {} read per token, {gbps:.2} GB/s: {} of the copy's {copy:.1} GB/s, {} of the peak",
        format_bytes(bytes as u64),
        pct(gbps, Some(copy)),
        pct(gbps, peak)
    );
    println!(
        "  per token: {:.1} submissions, {:.0} launches ({:.1} per layer), {:.0} bytes read back",
        per(used.submissions),
        per(used.dispatches),
        per(used.dispatches) / cfg.num_layers as f64,
        per(used.readback_bytes)
    );
    gpu.trim();
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |n: &str| harness::parse_flag(&args, n);
    let gpu = harness::open_gpu_or_exit();
    let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
    let names: Vec<&str> = ["tiny", "smollm2", "qwen3-0.6b", "qwen3-4b"]
        .into_iter()
        .filter(|n| args.iter().any(|a| a == n))
        .collect();
    let names = match (names.is_empty(), cpu) {
        (false, _) => names,
        (true, true) => vec!["tiny", "smollm2"],
        (true, false) => vec!["tiny", "smollm2", "qwen3-0.6b", "qwen3-4b"],
    };
    let tokens = flag("--tokens").map_or(if cpu { 16 } else { 128 }, |t| (t as usize).max(2));
    let peak = flag("--peak-gbps").or(harness::known_gbps(&gpu.info.name));
    let copy_bytes =
        (if cpu { 64usize } else { 1024 } << 20).min(gpu.caps.max_tensor_bytes() as usize);
    println!("device: {}", gpu.describe());
    let copy = match copy_gbps(&gpu, copy_bytes) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: the copy measurement failed: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "memory: copy of {} at {copy:.1} GB/s; peak {}",
        format_bytes(copy_bytes as u64),
        peak.map_or("unknown (--peak-gbps X)".into(), |p| format!("{p} GB/s"))
    );
    for name in names {
        if let Err(e) = bench(&gpu, name, tokens, (peak, copy)) {
            println!("{name}: failed: {e}");
        }
    }
    println!(
        "peak GPU memory {}",
        format_bytes(gpu.memory().peak_device_bytes)
    );
}
