//! One distillation step (teacher forward + student forward and backward +
//! gradient clipping + AdamW) at real model shapes with random weights:
//! tokens/s and peak GPU memory. The teacher is bf16, the student f32.
//!
//! `cargo bench --bench distill -- [qwen3-4b|qwen3-0.6b|tiny] [--steps N] [--seq N]`
//! On a CPU adapter only the tiny shape runs unless one is named.

#[allow(dead_code)]
mod harness;

use boomgpu::gpu::{format_bytes, DType};
use boomgpu::model::decoder::Decoder;
use boomgpu::model::ModelConfig;
use boomgpu::train::data::Corpus;
use boomgpu::train::run::{DistillOptions, Trainer};
use serde_json::json;

fn qwen3(hidden: usize, inter: usize, layers: usize, heads: usize, kv: usize) -> ModelConfig {
    ModelConfig::from_json(json!({
        "model_type": "qwen3", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "head_dim": 128, "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "max_position_embeddings": 40960
    }))
    .expect("valid config")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |n: &str| harness::parse_flag(&args, n).map(|v| v as usize);
    let gpu = harness::open_gpu_or_exit();
    let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
    println!("device: {}", gpu.describe());
    let named: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
        .map(|s| s.as_str())
        .filter(|s| *s != "--bench")
        .collect();
    let shapes: Vec<&str> = if !named.is_empty() {
        named
    } else if cpu {
        vec!["tiny"]
    } else {
        vec!["qwen3-0.6b", "qwen3-4b"]
    };
    for shape in shapes {
        let (cfg, student_layers) = match shape {
            // Qwen3-4B-Base → 19 layers, Qwen3-0.6B → 15 layers (REFERENCE §2).
            "qwen3-4b" => (
                qwen3(2560, 9728, 36, 32, 8),
                (0..36)
                    .filter(|l| *l == 0 || l % 2 == 0 || *l == 35)
                    .collect::<Vec<_>>(),
            ),
            "qwen3-0.6b" => (
                qwen3(1024, 3072, 28, 16, 8),
                (0..28)
                    .filter(|l| *l == 0 || l % 2 == 0 || *l == 27)
                    .collect(),
            ),
            "tiny" => {
                let mut c = qwen3(256, 768, 8, 4, 2);
                c.vocab_size = 4096;
                (c, vec![0, 2, 4, 6, 7])
            }
            other => {
                println!("unknown shape {other} (qwen3-4b, qwen3-0.6b, tiny)");
                continue;
            }
        };
        let seq = flag("--seq").unwrap_or(if shape == "tiny" { 128 } else { 2048 });
        let steps = flag("--steps").unwrap_or(3);
        let run = || -> boomgpu::Result<(f64, u64, usize)> {
            gpu.trim();
            gpu.alloc.reset_peaks();
            let teacher = Decoder::random(&gpu, &cfg, DType::BF16, 1)?;
            let scfg = cfg.with_layers(student_layers.len());
            let student = Decoder::random(&gpu, &scfg, DType::F32, 2)?;
            let n = student_layers.len();
            // Pairs: embeddings, each student layer against the teacher
            // layer it stands for, and the final normed state.
            let mut pairs = vec![(0, 0)];
            for (j, &t) in student_layers.iter().enumerate().skip(1).take(n - 2) {
                pairs.push((j, t));
            }
            pairs.push((n, cfg.num_layers));
            let stream: Vec<u32> = (0..seq * (steps + 1))
                .map(|i| (i * 7919 % cfg.vocab_size) as u32)
                .collect();
            let corpus = Corpus::pack(&stream, seq, 0)?;
            let opts = DistillOptions {
                steps,
                ..Default::default()
            };
            let mut tr = Trainer::new(&gpu, &teacher, student, pairs, &corpus, opts)?;
            tr.train_step()?; // warm-up: pipelines compiled, pool filled
            let t0 = std::time::Instant::now();
            for _ in 1..steps {
                tr.train_step()?;
            }
            let secs = t0.elapsed().as_secs_f64();
            Ok((
                secs / (steps - 1).max(1) as f64,
                gpu.memory().peak_device_bytes,
                tr.params.count() as usize,
            ))
        };
        match run() {
            Ok((step_s, peak, params)) => println!(
                "distill step {shape} → {} layers, 1×{seq} tokens: {:.3} s/step, {:.0} tokens/s, peak GPU memory {} ({:.2}B student parameters)",
                student_layers.len(),
                step_s,
                seq as f64 / step_s,
                format_bytes(peak),
                params as f64 / 1e9
            ),
            Err(e) => println!("distill step {shape}: {e}"),
        }
    }
}
