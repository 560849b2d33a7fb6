//! Ops: one WGSL file and one launcher per op, each with a CPU reference.

pub mod adamw;
pub mod argmax;
pub mod attention;
pub mod bias_add;
pub mod cast;
pub mod colsum;
pub mod cosine;
pub mod distill_loss;
pub mod elementwise;
pub mod embedding;
pub mod gelu;
pub mod gemv;
mod launch;
pub mod layernorm;
pub mod matmul;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod swiglu;
