// RMSNorm over the last dimension, as Hugging Face computes it in f32:
//   rstd = 1 / sqrt(mean(x^2) + eps),   y = w * (x * rstd)
// Rows are everything but the last dim; the weight has `n` entries (Qwen3's
// per-head q/k norm is the same op on rows of head_dim).
// Launch layout and tree sums: `_norm.wgsl`.
//
// Backward (g = dL/dy):
//   dx = rstd * (g*w) - x * rstd^3 / n * sum(g*w*x)
//   dw = sum over rows of g * x * rstd   (per-chunk partials, then colsum)
// With `accumulate`, dx is added into (residual streams sum gradients).
// rmsnorm_residual_fwd fuses the residual add: h = x + res, y = norm(h).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(6) var<storage, read> dy: array<f32>;
@group(0) @binding(7) var<storage, read> rstd: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;
@group(0) @binding(9) var<storage, read_write> dw_part: array<f32>;
@group(0) @binding(10) var<storage, read> res: array<f32>;
@group(0) @binding(11) var<storage, read_write> h: array<f32>;

//#include _common
//#include _norm

// 1 / sqrt(mean(x^2) + eps) of `row` (0 for rows past the end).
fn row_rstd(row: u32, lane: u32, lid: u32) -> f32 {
    var ss = 0.0;
    if row < p.rows {
        let base = row * p.n;
        for (var c = lane; c < p.n; c += p.tpr) {
            let v = x[base + c];
            ss += v * v;
        }
    }
    let total = row_sum(ss, lid);
    return inverseSqrt(total / f32(p.n) + p.eps);
}

@compute @workgroup_size(256)
fn rmsnorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg, lid);
    let lane = lid % p.tpr;
    let r = row_rstd(row, lane, lid);
    if row >= p.rows {
        return;
    }
    let base = row * p.n;
    for (var c = lane; c < p.n; c += p.tpr) {
        y[base + c] = weight(c) * (x[base + c] * r);
    }
    if lane == 0u {
        rstd_out[row] = r;
    }
}

// h = x + res, then y = w * (h * rstd(h)). Each invocation reads back only
// the h values it wrote itself, so no barrier is needed between the passes.
@compute @workgroup_size(256)
fn rmsnorm_residual_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg, lid);
    let lane = lid % p.tpr;
    let base = row * p.n;
    var ss = 0.0;
    if row < p.rows {
        for (var c = lane; c < p.n; c += p.tpr) {
            let v = x[base + c] + res[base + c];
            h[base + c] = v;
            ss += v * v;
        }
    }
    let r = inverseSqrt(row_sum(ss, lid) / f32(p.n) + p.eps);
    if row >= p.rows {
        return;
    }
    for (var c = lane; c < p.n; c += p.tpr) {
        y[base + c] = weight(c) * (h[base + c] * r);
    }
    if lane == 0u {
        rstd_out[row] = r;
    }
}

@compute @workgroup_size(256)
fn rmsnorm_bwd_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg, lid);
    let lane = lid % p.tpr;
    let base = row * p.n;
    var s = 0.0;
    if row < p.rows {
        for (var c = lane; c < p.n; c += p.tpr) {
            s += dy[base + c] * weight(c) * x[base + c];
        }
    }
    let total = row_sum(s, lid);
    if row >= p.rows {
        return;
    }
    let r = rstd[row];
    let k = r * r * r * total / f32(p.n);
    for (var c = lane; c < p.n; c += p.tpr) {
        let v = r * (dy[base + c] * weight(c)) - k * x[base + c];
        store_dx(base + c, v);
    }
}

// dw partials: invocation = one column, adds `chunk` rows in order.
// Grid: x = column blocks of 256, y = chunks; output [chunks, n].
@compute @workgroup_size(256)
fn rmsnorm_bwd_dw_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    if c >= p.n {
        return;
    }
    let r0 = wid.y * p.chunk;
    let r1 = min(r0 + p.chunk, p.rows);
    var acc = 0.0;
    for (var r = r0; r < r1; r++) {
        let i = r * p.n + c;
        acc += dy[i] * (x[i] * rstd[r]);
    }
    dw_part[wid.y * p.n + c] = acc;
}
