//! The five published teachers' config.json files (copied from the hub as
//! test data) parse and give the parameter counts the model cards state.
//! No weights and no GPU.

use std::path::Path;

use boomgpu::model::{Family, ModelConfig};

/// (folder, family, layers, hidden, vocab, parameters as published in billions)
const TEACHERS: &[(&str, Family, usize, usize, usize, f64)] = &[
    ("Qwen3-4B-Base", Family::Qwen3, 36, 2560, 151_936, 4.02),
    ("Qwen3-8B-Base", Family::Qwen3, 36, 4096, 151_936, 8.19),
    ("Llama-3.2-3B", Family::Llama, 28, 3072, 128_256, 3.21),
    ("pythia-2.8b", Family::GptNeox, 32, 2560, 50_304, 2.78),
    ("pythia-6.9b", Family::GptNeox, 32, 4096, 50_432, 6.86),
];

#[test]
fn published_teacher_configs_parse_with_their_sizes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published");
    for &(name, family, layers, hidden, vocab, billions) in TEACHERS {
        let cfg = ModelConfig::from_file(&dir.join(name).join("config.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.family, family, "{name}");
        assert_eq!(cfg.num_layers, layers, "{name}");
        assert_eq!(cfg.hidden_size, hidden, "{name}");
        assert_eq!(cfg.vocab_size, vocab, "{name}");
        let p = cfg.param_count() as f64 / 1e9;
        println!("{name}: {} parameters", cfg.param_count());
        assert!(
            (p - billions).abs() < 0.006,
            "{name}: {p:.3}B parameters, the model card says {billions}B"
        );
    }
}

/// The distillation loss's workspace at the head for one 2,048-token
/// sequence of the Qwen3 teachers: two logits chunks of at most 64 MiB
/// instead of two 1.24 GB logits tensors (numbers for the README).
#[test]
fn head_loss_workspace_is_bounded_at_seq_2048() {
    use boomgpu::gpu::format_bytes;
    use boomgpu::model::head::{distill_workspace_bytes, rows_per_chunk, LOGITS_CHUNK_BYTES};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/published");
    for name in ["Qwen3-4B-Base", "Qwen3-8B-Base"] {
        let cfg = ModelConfig::from_file(&dir.join(name).join("config.json")).unwrap();
        let (v, h, t) = (cfg.vocab_size, cfg.hidden_size, 2048);
        for limit in [128u64 << 20, 4 << 30] {
            // 64 MiB / (151,936 × 4 bytes) = 110 tokens per chunk.
            assert_eq!(rows_per_chunk(limit, v), 110, "{name}");
            let ws = distill_workspace_bytes(limit, v, h, t);
            let unchunked = 2 * (t * v * 4) as u64;
            let normed_grad = (t * h * 4) as u64;
            assert!(
                ws <= 2 * LOGITS_CHUNK_BYTES + normed_grad + (4 << 20),
                "{name}: {ws}"
            );
            println!(
                "{name} at seq {t}, binding limit {}: head loss workspace {} (unchunked logits alone: {})",
                format_bytes(limit),
                format_bytes(ws),
                format_bytes(unchunked)
            );
        }
        // A binding limit below one chunk shrinks the chunk with it.
        assert_eq!(rows_per_chunk(16 << 20, v), 27);
    }
}
