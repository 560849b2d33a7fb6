// y = x + b, b broadcast over the rows of a row-major [rows, n] x.
// b is f32 or bf16 (packed pairs). Out of place, or in place on one
// read_write binding. The backward (db = column sums of dy) is colsum.

struct Params {
    total: u32,   // rows * n
    n: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// f32 bits, or (B_BF16) bf16 pairs as published.
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> xio: array<f32>;

override B_BF16: bool = false;

//#include _common

fn bias(c: u32) -> f32 {
    if B_BF16 {
        return bf16_pick(b[c >> 1u], c);
    }
    return bitcast<f32>(b[c]);
}

@compute @workgroup_size(256)
fn bias_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, 256u);
    if i < p.total {
        out[i] = x[i] + bias(i % p.n);
    }
}

@compute @workgroup_size(256)
fn bias_add_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, 256u);
    if i < p.total {
        xio[i] = xio[i] + bias(i % p.n);
    }
}
