//! boomgpu: boomerang distillation on any GPU through wgpu.
//!
//! Layers, bottom to top: `gpu` (device, buffers, kernels, recorder),
//! `ops` (one WGSL kernel and one Rust launcher per op, with CPU references).

pub mod autodiff;
pub mod boomerang;
pub mod commands;
pub mod error;
pub mod gpu;
pub mod infer;
pub mod model;
pub mod ops;
pub mod plot;
pub mod progress;
pub mod serve;
pub mod train;

pub use error::{Error, Result};
