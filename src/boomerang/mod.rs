//! Boomerang distillation without the GPU: which teacher layers a student
//! keeps (`plan`), which hidden states the loss aligns (`plan`), how an
//! intermediate model is assembled (`patch`), the `student_config.json`
//! a student carries (`student_config`) and fresh weights for the
//! random-init ablation (`init`). See REFERENCE §2–§4.

pub mod init;
pub mod order;
pub mod patch;
pub mod plan;
pub mod student_config;

pub use order::PatchOrder;
pub use patch::{patch_points, Direction, LayerSource, Part, PatchPlan, PatchPoint};
pub use plan::{reference_alignment, AlignPair, Hidden, PruneParams, PrunePlan};
pub use student_config::{PlanSource, StudentConfig};
