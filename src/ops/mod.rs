pub mod elementwise;
pub mod gemv;
pub mod matmul;
