// Cooperative-matrix matmul with 16×16×16 fragments: f16 inputs, f32
// accumulation. Only compiled on adapters that offer that configuration
// (see ops::matmul); the body is in _matmul_coop.wgsl.
//! targets: spv
//! requires: coop16
enable f16;
enable wgpu_cooperative_matrix;

alias CoopA = coop_mat16x16<f16, A>;
alias CoopB = coop_mat16x16<f16, B>;
alias CoopC = coop_mat16x16<f32, C>;
const S: u32 = 16u;

//#include _matmul_coop
