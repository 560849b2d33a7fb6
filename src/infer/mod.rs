//! Inference: the KV cache, generation with GPU sampling, chat templates
//! and the chat session behind `boomgpu chat`.

pub mod chat;
pub mod generate;
pub mod kv;
pub mod session;

pub use generate::{generate, GenOptions, GenStats, Generation, HostRng, StopReason};
pub use kv::KvCache;
pub use session::{Reply, Resizer, Session};
