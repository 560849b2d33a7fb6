// Cooperative-matrix matmul with 8×8×8 fragments: f16 inputs, f32
// accumulation. Only compiled on adapters that offer that configuration
// (see ops::matmul); the body is in _matmul_coop.wgsl.
//! targets: spv, msl
//! requires: coop8
enable f16;
enable wgpu_cooperative_matrix;

alias CoopA = coop_mat8x8<f16, A>;
alias CoopB = coop_mat8x8<f16, B>;
alias CoopC = coop_mat8x8<f32, C>;
const S: u32 = 8u;

//#include _matmul_coop
