//! Commands: thin wiring of the layers below, called by the CLI.

pub mod chat;
pub mod common;
pub mod devices;
pub mod eval;
