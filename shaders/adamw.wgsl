// AdamW (torch.optim.AdamW, decoupled weight decay) on f32 parameters and
// states, in place, one element per invocation; and the global gradient
// norm for clip_grad_norm_, reduced deterministically on the GPU so that
// clipping needs no readback.
//
// Per element, in torch's order of operations:
//   g  = grad * scale            (scale = clip factor from gscale[0], or 1)
//   x  = param * (1 - lr * wd)
//   m  = lerp(m, g, 1 - beta1)
//   v  = v * beta2 + ((1 - beta2) * g) * g
//   x += -step_size * (m / (sqrt(v) / bc2_sqrt + eps))
// with step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)
// computed on the host in f64 as torch does.

struct Params {
    n: u32,
    decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    neg_step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct NormParams {
    // sumsq_partial: elements of x, and where its partials start
    n: u32,
    out_offset: u32,
    // grad_norm_finish: tensors, and the clip threshold (<= 0: no clipping)
    n_tensors: u32,
    max_norm: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> gscale: array<f32>;

@group(0) @binding(6) var<uniform> q: NormParams;
@group(0) @binding(7) var<storage, read> x: array<f32>;
@group(0) @binding(8) var<storage, read_write> partials: array<f32>;
@group(0) @binding(9) var<storage, read> segs: array<u32>;
@group(0) @binding(10) var<storage, read_write> per_tensor: array<f32>;
@group(0) @binding(11) var<storage, read_write> out: array<f32>;

//#include _common
//#include _wg_reduce

// Elements per workgroup of sumsq_partial: 16 per invocation.
const CHUNK: u32 = 4096u;

// torch.lerp: start + w * (end - start), or end - (end - start) * (1 - w)
// when w >= 0.5.
fn lerp(start: f32, end: f32, w: f32) -> f32 {
    if w < 0.5 {
        return start + w * (end - start);
    }
    return end - (end - start) * (1.0 - w);
}

fn update(i: u32, g: f32) {
    let xd = param[i] * p.decay;
    let m1 = lerp(m[i], g, p.one_minus_beta1);
    let v1 = v[i] * p.beta2 + (p.one_minus_beta2 * g) * g;
    let denom = sqrt(v1) / p.bc2_sqrt + p.eps;
    m[i] = m1;
    v[i] = v1;
    param[i] = xd + p.neg_step_size * (m1 / denom);
}

@compute @workgroup_size(256)
fn adamw_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, WG);
    if i < p.n {
        update(i, grad[i]);
    }
}

// Same, with the gradient scaled by gscale[0] (the clip factor).
@compute @workgroup_size(256)
fn adamw_step_scaled(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = folded_index(gid, nwg, WG);
    if i < p.n {
        update(i, grad[i] * gscale[0]);
    }
}

// Stage 1: the sum of squares of each CHUNK of x into partials[out_offset + chunk].
@compute @workgroup_size(256)
fn sumsq_partial(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let chunk = folded_group(wid, nwg);
    let base = chunk * CHUNK;
    if base >= q.n {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < CHUNK; k += WG) {
        let i = base + k + lid;
        if i < q.n {
            let g = x[i];
            acc += g * g;
        }
    }
    let total = wg_sum(acc, lid);
    if lid == 0u {
        partials[q.out_offset + chunk] = total;
    }
}

// Stage 2 (one workgroup): per-tensor sums of squares from their partials
// (tensor k owns partials[segs[k] .. segs[k + 1]]), their total in tensor
// order, the norm and the clip factor
//   out = [min(1, max_norm / (norm + 1e-6)), norm, sum of squares, 0].
@compute @workgroup_size(256)
fn grad_norm_finish(@builtin(local_invocation_index) lid: u32) {
    var total = 0.0;
    for (var k = 0u; k < q.n_tensors; k++) {
        let lo = segs[k];
        let hi = segs[k + 1u];
        var acc = 0.0;
        for (var i = lo + lid; i < hi; i += WG) {
            acc += partials[i];
        }
        let sk = wg_sum(acc, lid);
        if lid == 0u {
            per_tensor[k] = sk;
            total += sk;
        }
    }
    if lid == 0u {
        let norm = sqrt(total);
        var scale = 1.0;
        if q.max_norm > 0.0 {
            scale = min(1.0, q.max_norm / (norm + 1e-6));
        }
        out[0] = scale;
        out[1] = norm;
        out[2] = total;
        out[3] = 0.0;
    }
}
