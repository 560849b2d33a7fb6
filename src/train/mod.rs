//! Distillation: the student's parameters and forward on the tape, the
//! boomerang loss, data, the optimiser loop and checkpoints.

pub mod data;
pub mod head_loss;
pub mod loss;
pub mod offload;
pub mod plan;
pub mod run;
pub mod student;
