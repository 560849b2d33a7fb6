//! Commands: thin wiring of the layers below, called by the CLI.

pub mod chat;
pub mod common;
pub mod devices;
pub mod distill;
pub mod encoder;
pub mod encoder_patch;
pub mod eval;
pub mod fit;
pub mod import_gguf;
pub mod init_student;
pub mod order;
pub mod outdir;
pub mod patch;
pub mod plan;
pub mod serve;
