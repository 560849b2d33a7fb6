// Elementwise f32 kernels: out = alpha * a + beta * b, out = a * b, and
// in-place scaling. One element per invocation, 256 per workgroup; the grid
// may be folded into y for more than 65535 workgroups.

struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

//#include _common

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return folded_index(gid, nwg, 256u);
}

// out = alpha * a + beta * b
@compute @workgroup_size(256)
fn axpby(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i < p.n {
        out[i] = p.alpha * a[i] + p.beta * b[i];
    }
}

// out = a * b
@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i < p.n {
        out[i] = a[i] * b[i];
    }
}

// x = alpha * x (in place)
@compute @workgroup_size(256)
fn scale_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i < p.n {
        x[i] = p.alpha * x[i];
    }
}

// x = x + alpha * a (in place; residual adds and gradient accumulation)
@compute @workgroup_size(256)
fn add_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if i < p.n {
        x[i] = x[i] + p.alpha * a[i];
    }
}
