//! `boomgpu import-gguf`: a Hugging Face model folder from a llama.cpp GGUF
//! file, so quantised models can be run, distilled and exported.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{format_bytes, DType};
use crate::model::gguf::{import_gguf, ImportOptions};

/// Parse `--dtype`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(Error::Invalid(format!(
            "--dtype '{other}' is not one of f32, bf16, f16"
        ))),
    }
}

/// Import `file` into `out`; returns the text to print.
pub fn run(file: &Path, out: &Path, dtype: &str, force: bool) -> Result<String> {
    let opts = ImportOptions {
        dtype: parse_dtype(dtype)?,
        force,
        ..ImportOptions::default()
    };
    let r = import_gguf(file, out, &opts)?;
    let types: Vec<String> = r
        .source_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    let bytes: u64 = r
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(r.out.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let mut s = String::new();
    s.push_str(&format!(
        "imported {} -> {}\n",
        file.display(),
        r.out.display()
    ));
    s.push_str(&format!(
        "  weights: {} tensors ({} in the GGUF: {}), {:.1}M parameters, {} ({})\n",
        r.tensors,
        r.source_types.values().sum::<usize>(),
        types.join(", "),
        r.params as f64 / 1e6,
        r.dtype.name(),
        format_bytes(bytes),
    ));
    s.push_str(&format!(
        "  model: llama, {} layers, vocab {}, {}\n",
        r.layers,
        r.vocab_size,
        if r.tied {
            "tied embeddings"
        } else {
            "separate lm_head"
        }
    ));
    s.push_str(&format!(
        "  tokenizer: {} tokens ({} added/special)\n",
        r.tokenizer_tokens, r.added_tokens
    ));
    s.push_str(&format!("  files: {}\n", r.files.join(", ")));
    Ok(s)
}
