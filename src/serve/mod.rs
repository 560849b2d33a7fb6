//! `boomgpu serve`: every size of a boomerang family behind one
//! OpenAI-compatible HTTP endpoint. `api` checks request bodies, `worker`
//! runs them on the GPU (one thread, one channel), `http` is the axum
//! server between clients and the worker.

pub mod api;
pub mod http;
pub mod worker;
