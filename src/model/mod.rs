//! Models: configuration, checkpoints, tokenizers, references to local
//! folders or hub ids.

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod encoder_config;
pub mod exec;
pub mod gguf;
pub mod head;
pub mod layers;
pub mod pseudo;
pub mod score;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use config::{Family, ModelConfig};
