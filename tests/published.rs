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
