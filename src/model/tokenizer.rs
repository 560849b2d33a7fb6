//! The model's tokenizer (`tokenizer.json`, through the tokenizers crate)
//! and the special ids from `tokenizer_config.json` / `config.json`.

use std::path::Path;

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    /// The chat template from tokenizer_config.json, if any.
    pub chat_template: Option<String>,
}

fn token_id(inner: &tokenizers::Tokenizer, v: Option<&serde_json::Value>) -> Option<u32> {
    match v? {
        serde_json::Value::String(s) => inner.token_to_id(s),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .and_then(|s| inner.token_to_id(s)),
        _ => None,
    }
}

/// Run a call into the tokenizers crate, turning a panic (which a
/// malformed but parseable tokenizer.json can cause inside it) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let m = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::Invalid(format!(
            "{what} failed inside the tokenizer ({m}); tokenizer.json is probably corrupt"
        )))
    })
}

impl Tokenizer {
    /// Load from a model folder; `eos_from_config` are the ids config.json
    /// names (used when tokenizer_config.json does not say).
    pub fn from_dir(
        dir: &Path,
        eos_from_config: &[u32],
        bos_from_config: Option<u32>,
    ) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "{}: no tokenizer.json (boomgpu needs the fast-tokenizer file)",
                dir.display()
            )));
        }
        let inner = guarded(&format!("loading {}", path.display()), || {
            tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| {
                Error::Invalid(format!("{}: not valid JSON: {e}", cfg_path.display()))
            })?
        } else {
            serde_json::Value::Null
        };
        let mut eos_ids: Vec<u32> = eos_from_config.to_vec();
        if let Some(id) = token_id(&inner, cfg.get("eos_token")) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        Ok(Tokenizer {
            bos_id: token_id(&inner, cfg.get("bos_token")).or(bos_from_config),
            pad_id: token_id(&inner, cfg.get("pad_token")),
            eos_ids,
            chat_template,
            inner,
        })
    }

    /// Token ids of `text`, with or without the tokenizer's special tokens.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        guarded("tokenizing", || {
            let enc = self
                .inner
                .encode(text, add_special)
                .map_err(|e| Error::Invalid(format!("tokenizing failed: {e}")))?;
            Ok(enc.get_ids().to_vec())
        })
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        guarded("detokenizing", || {
            self.inner
                .decode(ids, skip_special)
                .map_err(|e| Error::Invalid(format!("detokenizing failed: {e}")))
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One more than the highest id the tokenizer can produce.
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .map(|&i| i as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// Every id the tokenizer produces must have a row in the embedding.
    pub fn check_vocab(&self, dir: &Path, vocab_size: usize) -> Result<()> {
        let bound = self.id_bound();
        if bound > vocab_size {
            return Err(Error::Invalid(format!(
                "{}: 'vocab_size' in config.json is {vocab_size}, but tokenizer.json has ids up \
                 to {}; expected a vocab_size of at least {bound}",
                dir.display(),
                bound - 1
            )));
        }
        Ok(())
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }
}
