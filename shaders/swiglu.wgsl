// SwiGLU: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (Llama, Qwen3).
// gate and up are [tokens, I]: separate tensors, or one fused [tokens, 2I]
// tensor `gu` with gate in the first I columns and up in the last I.
// Backward (d = dL/dout, s = sigmoid(gate)):
//   dgate = d * up * s * (1 + gate * (1 - s)),   dup = d * silu(gate)
// One invocation per output element.

struct Params {
    n: u32,       // tokens * I
    width: u32,   // I
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read> gu: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(7) var<storage, read_write> dup: array<f32>;
@group(0) @binding(8) var<storage, read_write> dgu: array<f32>;

//#include _common

fn sigmoid(g: f32) -> f32 {
    return 1.0 / (1.0 + exp(-g));
}

fn silu(g: f32) -> f32 {
    return g / (1.0 + exp(-g));
}

// (dgate, dup) for one element.
fn grads(d: f32, g: f32, u: f32) -> vec2<f32> {
    let s = sigmoid(g);
    return vec2<f32>(d * u * (s * (1.0 + g * (1.0 - s))), d * silu(g));
}

// Index of the gate element of output i in the fused layout.
fn fused_gate(i: u32) -> u32 {
    let t = i / p.width;
    return i + t * p.width;
}

@compute @workgroup_size(256)
fn swiglu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, 256u);
    if i < p.n {
        out[i] = silu(gate[i]) * up[i];
    }
}

@compute @workgroup_size(256)
fn swiglu_fused_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, 256u);
    if i < p.n {
        let j = fused_gate(i);
        out[i] = silu(gu[j]) * gu[j + p.width];
    }
}

@compute @workgroup_size(256)
fn swiglu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, 256u);
    if i < p.n {
        let d = grads(dout[i], gate[i], up[i]);
        dgate[i] = d.x;
        dup[i] = d.y;
    }
}

@compute @workgroup_size(256)
fn swiglu_fused_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, 256u);
    if i < p.n {
        let j = fused_gate(i);
        let d = grads(dout[i], gu[j], gu[j + p.width]);
        dgu[j] = d.x;
        dgu[j + p.width] = d.y;
    }
}
