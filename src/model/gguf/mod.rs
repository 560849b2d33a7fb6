//! GGUF, llama.cpp's model file: a bounds-checked parser, dequantisation of
//! the common block formats to f32, and conversion of a llama-architecture
//! file into a Hugging Face model folder (`config.json`,
//! `model.safetensors`, `tokenizer.json`, ...).
//!
//! Everything here is plain Rust on bytes; no GPU. A file is never trusted:
//! every read is checked against the file's length, every count is checked
//! before it sizes an allocation, and a malformed file is an
//! [`Error::Invalid`](crate::error::Error::Invalid) naming the file and what
//! was wrong.
//!
//! The conversion reproduces what Hugging Face transformers (5.x) makes of
//! the same file with `from_pretrained(dir, gguf_file=...)`: the same
//! dequantised values (f32 arithmetic in the same order as `gguf-py`), the
//! rotary row order of `q_proj`/`k_proj` restored, and a byte-level BPE
//! tokenizer built the way transformers builds it.
//!
//! One file per job: `reader` parses the container (header, metadata,
//! tensor descriptions, bounds), `dequant` knows the ggml block formats and
//! decodes them, `llama` maps the llama architecture (hyper-parameters,
//! `config.json`, tensor names, the q/k row order), `tokenizer` builds the
//! tokenizer files, and `writer` plans, converts and writes the folder.

mod dequant;
mod llama;
mod reader;
mod tokenizer;
mod writer;

pub use dequant::{dequantize, ggml_type, ggml_type_layout, is_supported_type};
pub use llama::{hf_name, llama_config_json, permute_qk_rows, unpermute_qk_rows, LlamaParams};
pub use reader::{Gguf, MetaArray, MetaValue, TensorInfo};
pub use tokenizer::{tokenizer_files, TokenizerFiles};
pub use writer::{import_gguf, ImportOptions, ImportReport};
