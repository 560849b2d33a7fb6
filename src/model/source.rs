//! Model references: a local Hugging Face folder, or a hub id fetched with
//! hf-hub into the standard cache (`HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`
//! and `HF_ENDPOINT` are honoured).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Files a model folder may have besides the weights.
const SIDE_FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("tokenizer.json", false),
    ("tokenizer_config.json", false),
    ("generation_config.json", false),
    ("student_config.json", false),
    ("special_tokens_map.json", false),
];

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").as_deref(),
        Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes")
    )
}

/// Resolve a reference to a local folder holding config.json and weights.
pub fn resolve(reference: &str) -> Result<PathBuf> {
    let p = Path::new(reference);
    if p.is_dir() {
        if !p.join("config.json").exists() {
            return Err(Error::Invalid(format!(
                "{}: no config.json here; is this a Hugging Face model folder?",
                p.display()
            )));
        }
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        return Err(Error::Invalid(format!(
            "{reference}: is a file; pass the model's folder (with config.json and safetensors)"
        )));
    }
    if !looks_like_hub_id(reference) {
        return Err(Error::Invalid(format!(
            "{reference}: no such folder, and not a hub id of the form 'org/name'"
        )));
    }
    fetch_from_hub(reference)
}

/// Resolve a reference to a local folder holding config.json, without
/// weights: a local folder as `resolve` takes it, or a hub id of which only
/// config.json and the small side files are fetched (memory plans).
pub fn resolve_config(reference: &str) -> Result<PathBuf> {
    let p = Path::new(reference);
    if p.is_dir() || p.exists() || !looks_like_hub_id(reference) {
        return resolve(reference);
    }
    fetch(reference, false)
}

fn fetch_from_hub(id: &str) -> Result<PathBuf> {
    fetch(id, true)
}

fn fetch(id: &str, weights: bool) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    if offline() {
        let repo = cache.model(id.to_string());
        let config = repo.get("config.json").ok_or_else(|| {
            Error::Invalid(format!(
                "'{id}' is not in the local Hugging Face cache ({}) and HF_HUB_OFFLINE is set; \
                 download it once with network access, or pass a local folder",
                cache.path().display()
            ))
        })?;
        return Ok(config.parent().expect("file in a folder").to_path_buf());
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(true);
    if let Ok(tok) = std::env::var("HF_TOKEN") {
        if !tok.is_empty() {
            builder = builder.with_token(Some(tok));
        }
    }
    let api = builder
        .build()
        .map_err(|e| Error::Invalid(format!("cannot use the Hugging Face hub for '{id}': {e}")))?;
    let repo = api.model(id.to_string());
    let unreachable = |e: hf_hub::api::sync::ApiError| {
        Error::Invalid(format!(
            "could not fetch '{id}' from the Hugging Face hub: {e}. \
             Check the id and your network (or HF_TOKEN for gated models); \
             offline, pass a local folder or set HF_HUB_OFFLINE=1 to use the cache"
        ))
    };
    let mut dir = None;
    for (name, required) in SIDE_FILES {
        match repo.get(name) {
            Ok(path) => {
                if dir.is_none() {
                    dir = path.parent().map(Path::to_path_buf);
                }
            }
            Err(e) if *required => return Err(unreachable(e)),
            Err(_) => {}
        }
    }
    let dir = dir.expect("config.json was fetched");
    if !weights {
        return Ok(dir);
    }
    // Weights: one file, or the shards listed by the index.
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("{}: {e}", index.display())))?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo.get(&s).map_err(unreachable)?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(unreachable)?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths() {
        assert!(looks_like_hub_id("Qwen/Qwen3-4B-Base"));
        assert!(looks_like_hub_id("Harvard-DCML/boomerang-qwen3-2.3B"));
        assert!(!looks_like_hub_id("/tmp/x"));
        assert!(!looks_like_hub_id("a/b/c"));
        let e = resolve("./definitely/not/here/xyz")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a hub id"), "{e}");
    }
}
