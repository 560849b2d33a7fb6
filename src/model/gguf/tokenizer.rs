//! The tokenizer files (`tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`) a GGUF's `tokenizer.ggml.*` metadata describes,
//! built the way transformers 5.x builds them.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::llama::LlamaParams;
use super::reader::{Gguf, MetaArray, MetaValue};
use crate::error::Result;

impl Gguf {
    fn token_list(&self) -> Result<&[String]> {
        match self.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(MetaArray::Str(t))) => Ok(t),
            Some(v) => Err(self.bad(format!(
                "tokenizer.ggml.tokens should be an array of strings, found {}",
                match v {
                    MetaValue::Array(a) => format!("an array of {}", a.type_name()),
                    other => other.type_name().to_string(),
                }
            ))),
            None => {
                Err(self.bad("the file has no tokenizer (tokenizer.ggml.tokens is missing)".into()))
            }
        }
    }
}

/// GPT-2's byte ↔ printable-character table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xa1..=0xac).contains(&b)
            || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("below the surrogates")
        };
    }
    table
}

/// The split regex transformers puts before the byte-level step for the
/// `tokenizer.ggml.pre` names it knows (GGUF_PRE_TOKENIZER_SPLITS); others
/// use GPT-2's own regex inside ByteLevel.
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// Token type 3 in `tokenizer.ggml.token_type`.
const TOKEN_CONTROL: i64 = 3;
/// Token type 4: an added token that is matched whole but is not special.
const TOKEN_USER_DEFINED: i64 = 4;

/// The tokenizer files a GGUF's `tokenizer.ggml.*` metadata describes.
pub struct TokenizerFiles {
    pub tokenizer: Value,
    pub tokenizer_config: Value,
    pub generation_config: Value,
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// Tokens added as special (control) or whole (user-defined).
    pub added: usize,
}

/// Build `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json`. Only byte-level BPE (`tokenizer.ggml.model =
/// "gpt2"`) is supported; the result is the tokenizer transformers 5.x
/// builds from the same metadata.
pub fn tokenizer_files(g: &Gguf, p: &LlamaParams) -> Result<TokenizerFiles> {
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| g.bad("metadata 'tokenizer.ggml.model' is missing".into()))?;
    if model != "gpt2" {
        return Err(g.bad(format!(
            "tokenizer model '{model}' is not supported yet; import-gguf converts byte-level BPE ('gpt2') tokenizers"
        )));
    }
    let tokens = g.token_list()?;
    if tokens.len() > p.vocab_size {
        return Err(g.bad(format!(
            "the tokenizer has {} tokens but the embedding only {} rows",
            tokens.len(),
            p.vocab_size
        )));
    }
    let types = match g.get("tokenizer.ggml.token_type") {
        None => None,
        Some(MetaValue::Array(a))
            if a.len() == tokens.len() && (a.is_empty() || a.int_at(0).is_some()) =>
        {
            Some(a)
        }
        Some(_) => {
            return Err(g.bad(format!(
                "tokenizer.ggml.token_type should be an integer array of {} entries",
                tokens.len()
            )))
        }
    };
    let merges: &[String] = match g.get("tokenizer.ggml.merges") {
        Some(MetaValue::Array(MetaArray::Str(m))) => m,
        Some(MetaValue::Array(a)) if a.is_empty() => &[],
        None => {
            return Err(g.bad(
                "tokenizer.ggml.merges is missing (a byte-level BPE tokenizer needs its merges)"
                    .into(),
            ))
        }
        Some(_) => return Err(g.bad("tokenizer.ggml.merges should be an array of strings".into())),
    };

    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (id, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) {
            t.clone()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        // A later duplicate wins, as in a Python dict comprehension.
        seen.insert(key.clone(), id);
        vocab.insert(key, Value::from(id));
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let parts: Vec<&str> = m.split(' ').collect();
        if parts.len() != 2 {
            return Err(g.bad(format!(
                "merge {i} '{m}' is not two tokens separated by one space"
            )));
        }
        merge_pairs.push(json!([parts[0], parts[1]]));
    }

    let token_type = |i: usize| types.and_then(|a| a.int_at(i)).unwrap_or(1);
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let special = match token_type(id) {
            TOKEN_CONTROL if in_alphabet(t) => true,
            TOKEN_USER_DEFINED if seen.contains_key(t) => false,
            _ => continue,
        };
        // A token spelled twice maps to its last id in the vocabulary.
        let vid = seen.get(t).copied().unwrap_or(id);
        added.push((vid, t.clone(), special));
    }
    added.sort_by_key(|a| a.0);
    added.dedup_by_key(|a| a.0);
    let added_json: Vec<Value> = added
        .iter()
        .map(|(id, t, special)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": special})
        })
        .collect();

    // Ids were checked against the embedding, which may have more rows than
    // the tokenizer has tokens.
    let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned();
    let bos = name_of(p.bos_token_id);
    let eos = name_of(p.eos_token_id);
    let flag = |key: &str| g.get(key).and_then(MetaValue::as_bool).unwrap_or(false);
    let add_bos = flag("tokenizer.ggml.add_bos_token") && bos.is_some();
    let add_eos = flag("tokenizer.ggml.add_eos_token") && eos.is_some();
    let post_processor = template_processing(
        bos.clone().zip(p.bos_token_id).filter(|_| add_bos),
        eos.clone().zip(p.eos_token_id).filter(|_| add_eos),
    );

    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let pre_tokenizer = match pre_tokenizer_split(pre) {
        None => byte_level,
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merge_pairs
        }
    });

    let mut tc = Map::new();
    tc.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    tc.insert("add_bos_token".into(), add_bos.into());
    tc.insert("add_eos_token".into(), add_eos.into());
    tc.insert("bos_token".into(), json!(bos));
    tc.insert("eos_token".into(), json!(eos));
    tc.insert("pad_token".into(), json!(name_of(p.pad_token_id)));
    tc.insert("unk_token".into(), json!(name_of(p.unk_token_id)));
    tc.insert("clean_up_tokenization_spaces".into(), false.into());
    tc.insert(
        "model_max_length".into(),
        Value::from(p.max_position_embeddings),
    );
    if let Some(t) = g.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        tc.insert("chat_template".into(), t.into());
    }

    let generation_config = json!({
        "bos_token_id": p.bos_token_id,
        "eos_token_id": p.eos_token_id,
        "pad_token_id": p.pad_token_id,
    });
    Ok(TokenizerFiles {
        tokenizer,
        tokenizer_config: Value::Object(tc),
        generation_config,
        vocab_size: tokens.len(),
        added: added.len(),
    })
}

/// transformers' `update_post_processor`: `[bos] $A [eos]`, pairs likewise.
fn template_processing(bos: Option<(String, u32)>, eos: Option<(String, u32)>) -> Value {
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (type_id, seq_id) in [(0u32, "A"), (1, "B")] {
        let mut part = Vec::new();
        if let Some((b, _)) = &bos {
            part.push(special(b, type_id));
        }
        part.push(seq(seq_id, type_id));
        if let Some((e, _)) = &eos {
            part.push(special(e, type_id));
        }
        if type_id == 0 {
            single = part.clone();
        }
        pair.extend(part);
    }
    let mut specials = Map::new();
    for (t, id) in bos.iter().chain(eos.iter()) {
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}
