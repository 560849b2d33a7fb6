// Column sums of a row-major [rows, n] f32 matrix, deterministically: each
// invocation owns one column and adds `chunk` consecutive rows in order,
// writing one partial row per chunk (grid: x = column blocks, y = chunks).
// The launcher applies this twice (rows -> chunks -> 1), so the summation
// order depends only on the shape, never on scheduling. Loads are coalesced:
// neighbouring invocations read neighbouring columns of the same row.

struct Params {
    rows: u32,
    n: u32,
    chunk: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn colsum_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    if c >= p.n {
        return;
    }
    let r0 = wid.y * p.chunk;
    let r1 = min(r0 + p.chunk, p.rows);
    var acc = 0.0;
    for (var r = r0; r < r1; r++) {
        acc += x[r * p.n + c];
    }
    out[wid.y * p.n + c] = acc;
}
