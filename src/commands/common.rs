//! Pieces every command uses: opening the GPU, loading models and text.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::{format_bytes, Gpu, GpuOptions};
use crate::model::decoder::Decoder;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Checkpoint;
use crate::model::{source, ModelConfig};

pub fn open_gpu(opts: &GpuOptions) -> Result<Gpu> {
    let gpu = Gpu::open(opts)?;
    eprintln!("GPU: {}", gpu.describe());
    Ok(gpu)
}

/// A model loaded on the GPU with everything that describes it.
pub struct Loaded {
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    pub decoder: Decoder,
    pub tokenizer: Option<Tokenizer>,
}

/// Resolve, check and upload a model. `as_f32` widens 16-bit weights.
pub fn load_model(gpu: &Gpu, reference: &str, as_f32: bool) -> Result<Loaded> {
    let dir = source::resolve(reference)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(&dir)?;
    let decoder = Decoder::load(gpu, &cfg, &ckpt, as_f32)?;
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(
            &dir,
            &cfg.eos_token_ids,
            cfg.bos_token_id,
        )?)
    } else {
        None
    };
    eprintln!(
        "loaded {reference}: {} ({} layers, {:.1}M parameters, {} on the GPU)",
        cfg.family.model_type(),
        cfg.num_layers,
        decoder.params() as f64 / 1e6,
        format_bytes(decoder.weight_bytes())
    );
    Ok(Loaded {
        dir,
        cfg,
        decoder,
        tokenizer,
    })
}

pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", path.display())))
}
