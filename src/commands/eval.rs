//! `boomgpu eval`: perplexity of a model on a text file.

use std::path::Path;

use serde_json::json;

use super::common::{load_model, open_gpu, read_text};
use crate::error::{Error, Result};
use crate::gpu::GpuOptions;
use crate::model::score;
use crate::progress::Progress;

pub struct EvalArgs<'a> {
    pub model: &'a str,
    pub data: &'a Path,
    pub seq_len: Option<usize>,
    pub json: bool,
}

pub fn run(opts: &GpuOptions, a: &EvalArgs) -> Result<String> {
    let gpu = open_gpu(opts)?;
    let m = load_model(&gpu, a.model, false)?;
    let tok = m.tokenizer.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no tokenizer.json; eval needs the model's tokenizer",
            m.dir.display()
        ))
    })?;
    let seq_len = a.seq_len.unwrap_or(m.cfg.max_position_embeddings.min(2048));
    if seq_len > m.cfg.max_position_embeddings {
        eprintln!(
            "note: --seq-len {seq_len} is beyond the model's max_position_embeddings ({})",
            m.cfg.max_position_embeddings
        );
    }
    let text = read_text(a.data)?;
    let ids = tok.encode(&text, false)?;
    let n_windows = score::windows(&ids, seq_len).len();
    let mut bar = Progress::new("eval", n_windows, "windows");
    let p = score::perplexity(&gpu, &m.decoder, &ids, seq_len, |done, _| {
        bar.update(done, "")
    })?;
    if a.json {
        return Ok(json!({
            "perplexity": p.perplexity,
            "nll": p.nll,
            "tokens": p.tokens,
            "predicted": p.predicted,
            "layers": m.cfg.num_layers,
            "params": m.decoder.params(),
        })
        .to_string()
            + "\n");
    }
    Ok(format!(
        "{}: {} tokens, {} windows of up to {seq_len}\nperplexity {:.4}  (mean NLL {:.4} nats over {} predicted tokens; {} layers, {:.1}M parameters)\n",
        a.data.display(),
        p.tokens,
        n_windows,
        p.perplexity,
        p.nll / p.predicted as f64,
        p.predicted,
        m.cfg.num_layers,
        m.decoder.params() as f64 / 1e6
    ))
}
