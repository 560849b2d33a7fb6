// Argmax over the last dimension (greedy decoding), lowest index on ties.
// NaN never wins (comparisons with NaN are false).
// argmax_rows: one workgroup per row. For few long rows (decode), the split
// path spreads each row over many workgroups: argmax_partial finds the best
// of each CHUNK of a row, argmax_finish merges a row's chunks in order.

struct Params {
    rows: u32,
    cols: u32,
    // chunks per row (split path)
    chunks: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> part_val: array<f32>;
@group(0) @binding(4) var<storage, read_write> part_idx: array<u32>;

//#include _common

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;
const NEG_INF_BITS: u32 = 0xff800000u;
// Larger than any index: loses every tie.
const NONE: u32 = 0xffffffffu;

var<workgroup> red_v: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;

// Does (va, ia) beat (vb, ib)? Larger value, then lower index.
fn better(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    return va > vb || (va == vb && ia < ib);
}

// Merge every invocation's candidate; returns the winner's index and value.
fn wg_argmax(v: f32, i: u32, lid: u32) {
    red_v[lid] = v;
    red_i[lid] = i;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k / 2u) {
        if lid < k {
            let vb = red_v[lid + k];
            let ib = red_i[lid + k];
            if better(vb, ib, red_v[lid], red_i[lid]) {
                red_v[lid] = vb;
                red_i[lid] = ib;
            }
        }
        workgroupBarrier();
    }
}

// Best of x[base + lo .. base + hi), strided over the workgroup. Each
// invocation visits increasing indices, so a strict > keeps the first.
fn scan(base: u32, lo: u32, hi: u32, lid: u32) {
    var bv = bitcast<f32>(NEG_INF_BITS);
    var bi = NONE;
    for (var i = lo + lid; i < hi; i += WG) {
        let v = x[base + i];
        if v > bv || (bi == NONE && v == v) {
            bv = v;
            bi = i;
        }
    }
    wg_argmax(bv, bi, lid);
}

@compute @workgroup_size(256)
fn argmax_rows(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    scan(row * p.cols, 0u, p.cols, lid);
    if lid == 0u {
        // A row of NaNs has no winner: report index 0.
        idx[row] = select(red_i[0], 0u, red_i[0] == NONE);
    }
}

// Grid: x = chunk within the row, y = row.
@compute @workgroup_size(256)
fn argmax_partial(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let chunk = wid.x;
    let row = wid.y;
    if row >= p.rows || chunk >= p.chunks {
        return;
    }
    let lo = chunk * CHUNK;
    scan(row * p.cols, lo, min(lo + CHUNK, p.cols), lid);
    if lid == 0u {
        part_val[row * p.chunks + chunk] = red_v[0];
        part_idx[row * p.chunks + chunk] = red_i[0];
    }
}

@compute @workgroup_size(256)
fn argmax_finish(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    var bv = bitcast<f32>(NEG_INF_BITS);
    var bi = NONE;
    for (var c = lid; c < p.chunks; c += WG) {
        let v = part_val[row * p.chunks + c];
        let i = part_idx[row * p.chunks + c];
        if better(v, i, bv, bi) {
            bv = v;
            bi = i;
        }
    }
    wg_argmax(bv, bi, lid);
    if lid == 0u {
        idx[row] = select(red_i[0], 0u, red_i[0] == NONE);
    }
}
