// Decode-time matrix-vector product: y[r, n] = alpha · Σ_k x[r, k] · W[n, k]
// + beta · y[r, n], for 1 to 4 rows of x and W in the Hugging Face Linear
// layout [N, K] stored as f32, bf16 or f16. Bandwidth-bound: every weight is
// read once, 16 bytes per load when K allows, by 32 invocations per output
// row; partial sums meet in workgroup memory.

//#include _common

// 0: f32, 1: bf16, 2: f16 (pairs packed in u32)
override W_DTYPE: u32 = 0u;
// Vector loads: needs K a multiple of 8 (16-bit weights) or 4 (f32).
override VEC: bool = false;

struct Params {
    n: u32,
    k: u32,
    rows: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read> w4: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const LANES: u32 = 32u;
const OUTS: u32 = 8u;
const MAX_ROWS: u32 = 4u;

var<workgroup> partial: array<f32, 1024>;

fn w_at(e: u32) -> f32 {
    if W_DTYPE == 1u {
        return bf16_pick(w[e >> 1u], e);
    } else if W_DTYPE == 2u {
        let pair = unpack2x16float(w[e >> 1u]);
        return select(pair.x, pair.y, (e & 1u) == 1u);
    }
    return bitcast<f32>(w[e]);
}

// Partial dot products of weight row `wbase` with every row of x, over the
// k of `first`, `first + stride`, ... in units of one load (4 f32 weights, 8
// packed 16-bit weights, or one weight without VEC).
fn row_dots(wbase: u32, first: u32, stride: u32) -> array<f32, 4> {
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    if VEC && W_DTYPE == 0u {
        // 4 weights per load.
        for (var k = first * 4u; k < p.k; k += stride * 4u) {
            let wv = bitcast<vec4<f32>>(w4[(wbase + k) >> 2u]);
            for (var r = 0u; r < MAX_ROWS; r++) {
                if r < p.rows {
                    acc[r] += dot(wv, x4[(r * p.k + k) >> 2u]);
                }
            }
        }
    } else if VEC {
        // 8 weights per load.
        for (var k = first * 8u; k < p.k; k += stride * 8u) {
            let q = w4[(wbase + k) >> 3u];
            var lo: vec4<f32>;
            var hi: vec4<f32>;
            if W_DTYPE == 1u {
                lo = vec4<f32>(bf16_unpack2(q.x), bf16_unpack2(q.y));
                hi = vec4<f32>(bf16_unpack2(q.z), bf16_unpack2(q.w));
            } else {
                lo = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
                hi = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
            }
            for (var r = 0u; r < MAX_ROWS; r++) {
                if r < p.rows {
                    let xi = (r * p.k + k) >> 2u;
                    acc[r] += dot(lo, x4[xi]) + dot(hi, x4[xi + 1u]);
                }
            }
        }
    } else {
        for (var k = first; k < p.k; k += stride) {
            let wv = w_at(wbase + k);
            for (var r = 0u; r < MAX_ROWS; r++) {
                if r < p.rows {
                    acc[r] += wv * x[r * p.k + k];
                }
            }
        }
    }
    return acc;
}

// y[r, out] = alpha * dot_r + beta * y[r, out] for every row r.
fn store_out(out: u32, dots: array<f32, 4>) {
    for (var r = 0u; r < MAX_ROWS; r++) {
        if r < p.rows {
            let yi = r * p.n + out;
            var v = p.alpha * dots[r];
            if p.beta != 0.0 {
                v += p.beta * y[yi];
            }
            y[yi] = v;
        }
    }
}

@compute @workgroup_size(32, 8)
fn gemv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let lane = lid.x;
    let out = folded_group(wid, nwg) * OUTS + lid.y;
    let valid = out < p.n;
    let row = min(out, p.n - 1u);
    let acc = row_dots(row * p.k, lane, LANES);
    // Tree reduction over the 32 lanes of each output.
    let slot = (lid.y * LANES + lane) * MAX_ROWS;
    for (var r = 0u; r < MAX_ROWS; r++) {
        partial[slot + r] = acc[r];
    }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            let other = (lid.y * LANES + lane + s) * MAX_ROWS;
            for (var r = 0u; r < MAX_ROWS; r++) {
                partial[slot + r] += partial[other + r];
            }
        }
        workgroupBarrier();
    }
    if lane == 0u && valid {
        store_out(out, array<f32, 4>(partial[slot], partial[slot + 1u], partial[slot + 2u], partial[slot + 3u]));
    }
}

// One invocation per output, no workgroup memory or barriers: the faster
// shape on CPU adapters, where each invocation is a SIMD lane and barriers
// are costly. Same results as `gemv`.
@compute @workgroup_size(64)
fn gemv_per_output(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let out = folded_index(gid, nwg, 64u);
    if out >= p.n {
        return;
    }
    store_out(out, row_dots(out * p.k, 0u, 1u));
}
