// LayerNorm with weight and bias over the last dimension (GPT-NeoX), f32:
//   mean = sum(x)/n,  var = sum((x-mean)^2)/n (biased, two passes),
//   rstd = 1/sqrt(var + eps),  y = (x - mean) * rstd * w + b
// Launch layout and tree sums: `_norm.wgsl`, as rmsnorm.
//
// Backward (g = dL/dy, xh = (x-mean)*rstd):
//   dx = rstd * (g*w - mean(g*w) - xh * mean(g*w*xh))
//   dw = sum over rows of g*xh,  db = sum over rows of g   (per-chunk partials)
// With `accumulate`, dx is added into (Pythia's parallel residual sums the
// gradients of both norms and of the residual path).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(8) var<storage, read> dy: array<f32>;
@group(0) @binding(9) var<storage, read> stats: array<f32>;
@group(0) @binding(10) var<storage, read_write> dx: array<f32>;
@group(0) @binding(11) var<storage, read_write> dw_part: array<f32>;
@group(0) @binding(12) var<storage, read_write> db_part: array<f32>;

//#include _common
//#include _norm

// The bias, in the weight's encoding.
fn bias(c: u32) -> f32 {
    if W_BF16 {
        return bf16_pick(b[c >> 1u], c);
    }
    return bitcast<f32>(b[c]);
}

// (mean, rstd) of `row`; every invocation must call it.
fn row_stats(row: u32, lane: u32, lid: u32) -> vec2<f32> {
    let base = row * p.n;
    let live = row < p.rows;
    var s = 0.0;
    if live {
        for (var c = lane; c < p.n; c += p.tpr) {
            s += x[base + c];
        }
    }
    let mean = row_sum(s, lid) / f32(p.n);
    var q = 0.0;
    if live {
        for (var c = lane; c < p.n; c += p.tpr) {
            let d = x[base + c] - mean;
            q += d * d;
        }
    }
    let var_ = row_sum(q, lid) / f32(p.n);
    return vec2<f32>(mean, inverseSqrt(var_ + p.eps));
}

@compute @workgroup_size(256)
fn layernorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg, lid);
    let lane = lid % p.tpr;
    let st = row_stats(row, lane, lid);
    if row >= p.rows {
        return;
    }
    let base = row * p.n;
    for (var c = lane; c < p.n; c += p.tpr) {
        y[base + c] = (x[base + c] - st.x) * st.y * weight(c) + bias(c);
    }
    if lane == 0u {
        stats_out[2u * row] = st.x;
        stats_out[2u * row + 1u] = st.y;
    }
}

@compute @workgroup_size(256)
fn layernorm_bwd_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg, lid);
    let lane = lid % p.tpr;
    let base = row * p.n;
    var mean = 0.0;
    var r = 0.0;
    var s = vec2<f32>(0.0);
    if row < p.rows {
        mean = stats[2u * row];
        r = stats[2u * row + 1u];
        for (var c = lane; c < p.n; c += p.tpr) {
            let gw = dy[base + c] * weight(c);
            let xh = (x[base + c] - mean) * r;
            s += vec2<f32>(gw, gw * xh);
        }
    }
    let tot = row_sum2(s, lid) / f32(p.n);
    if row >= p.rows {
        return;
    }
    for (var c = lane; c < p.n; c += p.tpr) {
        let gw = dy[base + c] * weight(c);
        let xh = (x[base + c] - mean) * r;
        let v = r * (gw - tot.x - xh * tot.y);
        store_dx(base + c, v);
    }
}

// dw and db partials: invocation = one column, adds `chunk` rows in order.
// Grid: x = column blocks of 256, y = chunks; outputs [chunks, n] each.
@compute @workgroup_size(256)
fn layernorm_bwd_dwdb_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    if c >= p.n {
        return;
    }
    let r0 = wid.y * p.chunk;
    let r1 = min(r0 + p.chunk, p.rows);
    var aw = 0.0;
    var ab = 0.0;
    for (var r = r0; r < r1; r++) {
        let i = r * p.n + c;
        let g = dy[i];
        let xh = (x[i] - stats[2u * r]) * stats[2u * r + 1u];
        aw += g * xh;
        ab += g;
    }
    dw_part[wid.y * p.n + c] = aw;
    db_part[wid.y * p.n + c] = ab;
}
