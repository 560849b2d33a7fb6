//! The import: plan the tensors, dequantise and encode them, write the
//! Hugging Face folder (safetensors, shards and index, JSON files) into a
//! temporary folder, check it reads back, and rename it into place.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::dequant::{is_supported_type, type_name, SUPPORTED_TYPES};
use super::llama::{hf_name, llama_config_json, unpermute_qk_rows, LlamaParams};
use super::reader::{Gguf, TensorInfo};
use super::tokenizer::tokenizer_files;
use crate::error::{Error, Result};
use crate::gpu::DType;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// dtype of the written weights: f32 (default, exact), bf16 or f16.
    pub dtype: DType,
    /// Replace a non-empty output folder.
    pub force: bool,
    /// Largest safetensors file; bigger models are sharded with an index.
    pub max_shard_bytes: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dtype: DType::F32,
            force: false,
            max_shard_bytes: 4 << 30,
        }
    }
}

/// What an import wrote.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub out: PathBuf,
    pub tensors: usize,
    pub params: u64,
    pub dtype: DType,
    pub layers: usize,
    pub tied: bool,
    pub vocab_size: usize,
    /// Tokens in the tokenizer and how many of them are added tokens.
    pub tokenizer_tokens: usize,
    pub added_tokens: usize,
    /// ggml type name → number of tensors of that type in the source.
    pub source_types: BTreeMap<String, usize>,
    /// Files written, relative to `out`.
    pub files: Vec<String>,
}

/// One tensor to write: its GGUF source, HF name and what to do to it.
struct Planned<'a> {
    info: &'a TensorInfo,
    hf: String,
    shape: Vec<usize>,
    /// Heads to undo the rotary row order with (q: heads, k: kv heads).
    unpermute_heads: Option<usize>,
}

fn plan<'a>(g: &'a Gguf, p: &LlamaParams) -> Result<Vec<Planned<'a>>> {
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for t in &g.tensors {
        let Some(hf) = hf_name(&t.name) else {
            unknown.push(t.name.clone());
            continue;
        };
        let unpermute_heads = if t.name.ends_with(".attn_q.weight") {
            Some(p.num_heads)
        } else if t.name.ends_with(".attn_k.weight") {
            Some(p.num_kv_heads)
        } else {
            None
        };
        out.push(Planned {
            shape: t.hf_shape(),
            info: t,
            hf,
            unpermute_heads,
        });
    }
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(8).map(String::as_str).collect();
        return Err(g.bad(format!(
            "{} tensor(s) have no Hugging Face llama equivalent: {}{}",
            unknown.len(),
            shown.join(", "),
            if unknown.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )));
    }
    // Shapes are checked against the config by Checkpoint::check on the
    // written folder; here only what must hold for the conversion itself.
    for t in &out {
        if !is_supported_type(t.info.ggml_type) {
            return Err(g.bad(format!(
                "unsupported ggml type {} ({}) for tensor '{}'; import-gguf reads {SUPPORTED_TYPES} (re-quantise the model to one of these, e.g. with llama-quantize)",
                t.info.ggml_type,
                type_name(t.info.ggml_type),
                t.info.name
            )));
        }
        if t.info.n_elements == 0 {
            return Err(g.bad(format!("tensor '{}' is empty", t.info.name)));
        }
        if t.unpermute_heads.is_some() && t.shape.len() != 2 {
            return Err(g.bad(format!(
                "tensor '{}' has shape {:?}; a projection matrix has two dimensions",
                t.info.name, t.shape
            )));
        }
    }
    out.sort_by(|a, b| a.hf.cmp(&b.hf));
    Ok(out)
}

/// Dequantise, reorder and encode one tensor.
fn convert(g: &Gguf, t: &Planned, dtype: DType) -> Result<Vec<u8>> {
    let mut v = g.tensor_f32(t.info)?;
    if let Some(heads) = t.unpermute_heads {
        v = unpermute_qk_rows(&v, t.shape[0], t.shape[1], heads)
            .map_err(|e| g.bad(format!("tensor '{}': {e}", t.info.name)))?;
    }
    encode(&v, dtype).map_err(|m| g.bad(format!("tensor '{}': {m}", t.info.name)))
}

fn encode(v: &[f32], dtype: DType) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(v.len() * dtype.size());
    match dtype {
        DType::F32 => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::BF16 => v
            .iter()
            .for_each(|&x| out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())),
        DType::F16 => {
            for &x in v {
                let h = half::f16::from_f32(x);
                if h.is_infinite() && x.is_finite() {
                    return Err(format!(
                        "value {x} does not fit in f16; import with --dtype bf16 or f32"
                    ));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
        DType::U32 | DType::Q8 => {
            return Err(format!("weights cannot be written as {}", dtype.name()))
        }
    }
    Ok(out)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialise");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Removes a half-written folder unless the import finished.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Convert a llama GGUF file into a Hugging Face folder at `out`.
///
/// Everything is written into a temporary folder beside `out` and renamed
/// into place at the end, so `out` is either the complete model or
/// untouched. A non-empty `out` is replaced only with `opts.force`.
pub fn import_gguf(src: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    if !matches!(opts.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::Invalid(format!(
            "--dtype {} is not a weight dtype (use f32, bf16 or f16)",
            opts.dtype.name()
        )));
    }
    let out_exists = match std::fs::symlink_metadata(out) {
        Ok(m) if !m.is_dir() => {
            return Err(Error::Invalid(format!(
                "{}: exists and is not a folder",
                out.display()
            )))
        }
        Ok(_) => true,
        Err(_) => false,
    };
    let out_nonempty = out_exists
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
    if out_nonempty && !opts.force {
        return Err(Error::Invalid(format!(
            "{}: the folder is not empty; pass --force to replace it",
            out.display()
        )));
    }
    if out_nonempty {
        let src_abs = std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
        let out_abs = std::fs::canonicalize(out).map_err(|e| Error::io(out, e))?;
        if src_abs.starts_with(&out_abs) {
            return Err(Error::Invalid(format!(
                "{} lies inside --out {}; replacing the folder would delete it",
                src.display(),
                out.display()
            )));
        }
    }

    let g = Gguf::open(src)?;
    let p = g.llama_params()?;
    let tok = tokenizer_files(&g, &p)?;
    let planned = plan(&g, &p)?;
    let config = llama_config_json(&p, opts.dtype);
    // The description boomgpu itself will read, so that a config it would
    // reject never gets written.
    let cfg = crate::model::config::ModelConfig::from_json(config.clone())
        .map_err(|e| g.bad(format!("the derived config.json is not usable: {e}")))?;
    let expected: HashMap<String, Vec<usize>> = cfg.expected_tensors().into_iter().collect();
    let mut problems = Vec::new();
    for t in &planned {
        match expected.get(&t.hf) {
            Some(s) if *s == t.shape => {}
            Some(s) => problems.push(format!(
                "{} ({}) has shape {:?}, the metadata implies {s:?}",
                t.info.name, t.hf, t.shape
            )),
            None => problems.push(format!(
                "{} ({}) is not part of a llama model with these hyper-parameters",
                t.info.name, t.hf
            )),
        }
    }
    let have: std::collections::HashSet<&str> = planned.iter().map(|t| t.hf.as_str()).collect();
    for name in expected.keys() {
        if !have.contains(name.as_str()) {
            problems.push(format!("{name} is missing"));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(g.bad(format!(
            "the tensors do not form a llama model ({} problem{}):\n  {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        )));
    }

    // Shards: consecutive runs of tensors in name order, each under the limit.
    let elem = opts.dtype.size() as u64;
    let mut shards: Vec<Vec<&Planned>> = vec![Vec::new()];
    let mut size = 0u64;
    let mut total = 0u64;
    for t in &planned {
        let bytes = t.info.n_elements * elem;
        total += bytes;
        if size > 0 && size + bytes > opts.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(t);
        size += bytes;
    }

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let base = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{base}.import-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut guard = TempDir(Some(tmp.clone()));

    let mut files = Vec::new();
    let n_shards = shards.len();
    let mut weight_map = Map::new();
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    for (i, shard) in shards.iter().enumerate() {
        let file = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n_shards)
        };
        let mut tensors = BTreeMap::new();
        for t in shard {
            let bytes = convert(&g, t, opts.dtype)?;
            tensors.insert(t.hf.clone(), (opts.dtype, t.shape.clone(), bytes));
            weight_map.insert(t.hf.clone(), Value::from(file.clone()));
        }
        crate::model::weights::write_safetensors(
            &tmp.join(&file),
            &tensors,
            Some(metadata.clone()),
        )?;
        files.push(file);
    }
    if n_shards > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&tmp.join("model.safetensors.index.json"), &index)?;
        files.push("model.safetensors.index.json".into());
    }
    for (name, v) in [
        ("config.json", &config),
        ("generation_config.json", &tok.generation_config),
        ("tokenizer.json", &tok.tokenizer),
        ("tokenizer_config.json", &tok.tokenizer_config),
    ] {
        write_json(&tmp.join(name), v)?;
        files.push(name.to_string());
    }

    // Re-read what was written, as every other command will.
    let written = crate::model::config::ModelConfig::from_file(&tmp.join("config.json"))?;
    crate::model::weights::Checkpoint::open(&tmp)?.check(&written)?;
    tokenizers::Tokenizer::from_file(tmp.join("tokenizer.json"))
        .map_err(|e| g.bad(format!("the written tokenizer.json does not load: {e}")))?;

    // Into place: an empty folder is replaced; a non-empty one (--force) is
    // moved aside first and deleted only after the new one is in place.
    if out_nonempty {
        let old = parent.join(format!(".{base}.replaced-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        if let Err(e) = std::fs::rename(&tmp, out) {
            let _ = std::fs::rename(&old, out);
            return Err(Error::io(out, e));
        }
        let _ = std::fs::remove_dir_all(&old);
    } else {
        if out_exists {
            std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    }
    guard.0 = None;

    let mut source_types = BTreeMap::new();
    for t in &g.tensors {
        *source_types.entry(type_name(t.ggml_type)).or_insert(0) += 1;
    }
    Ok(ImportReport {
        out: out.to_path_buf(),
        tensors: planned.len(),
        params: planned.iter().map(|t| t.info.n_elements).sum(),
        dtype: opts.dtype,
        layers: p.num_layers,
        tied: p.tie_word_embeddings,
        vocab_size: p.vocab_size,
        tokenizer_tokens: tok.vocab_size,
        added_tokens: tok.added,
        source_types,
        files,
    })
}
