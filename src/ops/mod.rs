pub mod adamw;
pub mod argmax;
pub mod cosine;
pub mod distill_loss;
pub mod elementwise;
pub mod reduce;
pub mod softmax;
