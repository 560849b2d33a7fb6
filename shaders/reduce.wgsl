// Reductions: sum and max over the last dimension (one workgroup per row,
// strided over the row, then a workgroup tree), and the sum of a whole
// tensor in two deterministic stages (fixed chunks per workgroup, then one
// workgroup over the chunk sums in order).

struct Params {
    rows: u32,
    cols: u32,
    // sum_partial: elements; sum_finish: partial sums
    n: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;

//#include _common
//#include _wg_reduce

const CHUNK: u32 = 4096u;
const NEG_INF_BITS: u32 = 0xff800000u;

fn wg_max(val: f32, lid: u32) -> f32 {
    red[lid] = val;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k / 2u) {
        if lid < k {
            red[lid] = max(red[lid], red[lid + k]);
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(256)
fn row_sum(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var acc = vec4<f32>(0.0);
    var i = lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        let j = base + i;
        acc += vec4<f32>(x[j], x[j + WG], x[j + 2u * WG], x[j + 3u * WG]);
    }
    var tail = 0.0;
    for (; i < p.cols; i += WG) {
        tail += x[base + i];
    }
    let total = wg_sum((acc.x + acc.y) + (acc.z + acc.w) + tail, lid);
    if lid == 0u {
        out[row] = total;
    }
}

@compute @workgroup_size(256)
fn row_max(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let ninf = bitcast<f32>(NEG_INF_BITS);
    var acc = vec4<f32>(ninf);
    var i = lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        let j = base + i;
        acc = max(acc, vec4<f32>(x[j], x[j + WG], x[j + 2u * WG], x[j + 3u * WG]));
    }
    var tail = ninf;
    for (; i < p.cols; i += WG) {
        tail = max(tail, x[base + i]);
    }
    let best = wg_max(max(max(max(acc.x, acc.y), max(acc.z, acc.w)), tail), lid);
    if lid == 0u {
        out[row] = best;
    }
}

// Stage 1 of the full sum: chunk sums into partials[chunk].
@compute @workgroup_size(256)
fn sum_partial(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let chunk = folded_group(wid, nwg);
    let base = chunk * CHUNK;
    if base >= p.n {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < CHUNK; k += WG) {
        let i = base + k + lid;
        if i < p.n {
            acc += x[i];
        }
    }
    let total = wg_sum(acc, lid);
    if lid == 0u {
        partials[chunk] = total;
    }
}

// Stage 2: one workgroup sums the p.n chunk sums into out[0].
@compute @workgroup_size(256)
fn sum_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        acc += partials[i];
    }
    let total = wg_sum(acc, lid);
    if lid == 0u {
        out[0] = total;
    }
}
