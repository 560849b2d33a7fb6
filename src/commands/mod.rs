//! Commands: thin wiring of the layers below, called by the CLI.

pub mod devices;
pub mod import_gguf;
