// Fused distillation loss over vocabulary rows: per row, cross-entropy of
// the student logits s against a target id, KL(p_t || q_s) at temperature
// tau with p_t = softmax(t / tau), q_s = softmax(s / tau), and the gradient
// of   w_ce * sum(ce) / n_ce + w_kl * tau^2 * sum(kl) / n_kl   w.r.t. s:
//   ds = ce_scale * (softmax(s) - onehot(y)) + kl_scale * (q_s - p_t)
// with ce_scale = w_ce / n_ce (0 on rows without a target) and
// kl_scale = w_kl * tau / n_kl  (tau^2 times the 1/tau of d(s/tau)/ds).
//
// One workgroup per row. Pass 1 streams s and t once and keeps, per
// invocation, an online state: the student max m with sum(exp(s - m)) and
// sum(exp((s - m) / tau)), the teacher max mt with zt = sum(exp((t - mt) / tau))
// and w = sum(exp((t - mt) / tau) * (t - s) / tau). A workgroup tree merges
// the states; then KL = w / zt - log(sum exp(t/tau)) + log(sum exp(s/tau))
// and CE = log(sum exp(s)) - s[y]. Pass 2 streams s and t again and writes
// the gradient (in place over s in the *_inplace variant). No softmax of
// the batch is ever stored.
//
// Targets >= cols (u32::MAX marks "no target") contribute no CE and no
// CE gradient on that row.
//
// The in-place variant also stores each row's softmax statistics (five
// f32: student max, log sums at 1 and at tau, teacher max, teacher log
// sum), from which `distill_grad_cols` recomputes the gradient of any
// block of vocabulary columns from those columns' logits alone: the
// gradient of an LM head block can then be finished block by block.

struct Params {
    rows: u32,
    cols: u32,
    inv_tau: f32,
    // 1 when tau == 1: the tempered student sums equal the plain ones.
    tau_is_one: u32,
    ce_scale: f32,
    kl_scale: f32,
    // distill_grad_cols: vocabulary index of the block's first column,
    // the vocabulary size (targets at or past it are "no target") and the
    // row of stats and targets the block's first row reads.
    col0: u32,
    vocab: u32,
    row0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> s: array<f32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<storage, read_write> ce: array<f32>;
@group(0) @binding(5) var<storage, read_write> kl: array<f32>;
@group(0) @binding(6) var<storage, read_write> ds: array<f32>;
// In-place variant: student logits in, gradient out, one binding.
@group(0) @binding(7) var<storage, read_write> sg: array<f32>;
// Per-row statistics (STATS f32 a row), written by the in-place variant.
@group(0) @binding(8) var<storage, read_write> stats: array<f32>;

//#include _common

const WG: u32 = 256u;
const STATS: u32 = 5u;
// A finite "minus infinity": exp(NEG - x) is 0 and NEG - NEG is 0, never NaN.
const NEG: f32 = -3.0e38;

struct St {
    m: f32,
    z1: f32,
    z2: f32,
    mt: f32,
    zt: f32,
    w: f32,
}

var<workgroup> red: array<St, 256>;

fn st_init() -> St {
    return St(NEG, 0.0, 0.0, NEG, 0.0, 0.0);
}

fn max4(v: vec4<f32>) -> f32 {
    return max(max(v.x, v.y), max(v.z, v.w));
}

fn sum4(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// Student part only (plain cross-entropy).
fn upd_s4(a: St, sv: vec4<f32>) -> St {
    var r = a;
    r.m = max(a.m, max4(sv));
    r.z1 = a.z1 * exp(a.m - r.m) + sum4(exp(sv - r.m));
    return r;
}

// Fold four (student, teacher) logit pairs into the running state.
fn upd4(a: St, sv: vec4<f32>, tv: vec4<f32>) -> St {
    var r = upd_s4(a, sv);
    if p.tau_is_one == 1u {
        r.z2 = r.z1;
    } else {
        r.z2 = a.z2 * exp((a.m - r.m) * p.inv_tau) + sum4(exp((sv - r.m) * p.inv_tau));
    }
    r.mt = max(a.mt, max4(tv));
    let ft = exp((a.mt - r.mt) * p.inv_tau);
    let et = exp((tv - r.mt) * p.inv_tau);
    r.zt = a.zt * ft + sum4(et);
    // p_t = 0 entries (teacher logit -inf) contribute nothing, not 0 * inf.
    let d = select(vec4<f32>(0.0), et * (tv - sv), et > vec4<f32>(0.0));
    r.w = a.w * ft + sum4(d) * p.inv_tau;
    return r;
}

fn upd_s1(a: St, x: f32) -> St {
    var r = a;
    r.m = max(a.m, x);
    r.z1 = a.z1 * exp(a.m - r.m) + exp(x - r.m);
    return r;
}

fn upd1(a: St, x: f32, y: f32) -> St {
    var r = upd_s1(a, x);
    if p.tau_is_one == 1u {
        r.z2 = r.z1;
    } else {
        r.z2 = a.z2 * exp((a.m - r.m) * p.inv_tau) + exp((x - r.m) * p.inv_tau);
    }
    r.mt = max(a.mt, y);
    let ft = exp((a.mt - r.mt) * p.inv_tau);
    let et = exp((y - r.mt) * p.inv_tau);
    r.zt = a.zt * ft + et;
    let d = select(0.0, et * (y - x), et > 0.0);
    r.w = a.w * ft + d * p.inv_tau;
    return r;
}

fn combine(a: St, b: St) -> St {
    var r: St;
    r.m = max(a.m, b.m);
    r.z1 = a.z1 * exp(a.m - r.m) + b.z1 * exp(b.m - r.m);
    if p.tau_is_one == 1u {
        r.z2 = r.z1;
    } else {
        r.z2 = a.z2 * exp((a.m - r.m) * p.inv_tau) + b.z2 * exp((b.m - r.m) * p.inv_tau);
    }
    r.mt = max(a.mt, b.mt);
    let ga = exp((a.mt - r.mt) * p.inv_tau);
    let gb = exp((b.mt - r.mt) * p.inv_tau);
    r.zt = a.zt * ga + b.zt * gb;
    r.w = a.w * ga + b.w * gb;
    return r;
}

// Merge every invocation's state; all invocations get the row's state.
fn reduce_state(v: St, lid: u32) -> St {
    red[lid] = v;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k / 2u) {
        if lid < k {
            red[lid] = combine(red[lid], red[lid + k]);
        }
        workgroupBarrier();
    }
    return red[0];
}

// What pass 2 needs, from the merged state.
struct Fin {
    m: f32,
    lz1: f32,
    lz2: f32,
    mt: f32,
    lzt: f32,
    kl: f32,
}

fn finish(r: St) -> Fin {
    var f: Fin;
    f.m = r.m;
    f.lz1 = log(r.z1);
    f.lz2 = log(r.z2);
    f.mt = r.mt;
    f.lzt = log(r.zt);
    // KL = sum p (log p - log q) = w / zt - (mt - m) / tau - log zt + log z2
    f.kl = r.w / r.zt - (r.mt - r.m) * p.inv_tau - f.lzt + f.lz2;
    return f;
}

fn grad4(f: Fin, sv: vec4<f32>, tv: vec4<f32>, idx: vec4<u32>, y: u32, cs: f32) -> vec4<f32> {
    let sm = exp(sv - f.m - f.lz1);
    var q = sm;
    if p.tau_is_one != 1u {
        q = exp((sv - f.m) * p.inv_tau - f.lz2);
    }
    let pt = exp((tv - f.mt) * p.inv_tau - f.lzt);
    let hot = select(vec4<f32>(0.0), vec4<f32>(1.0), idx == vec4<u32>(y));
    return cs * (sm - hot) + p.kl_scale * (q - pt);
}

fn grad1(f: Fin, x: f32, y_t: f32, idx: u32, y: u32, cs: f32) -> f32 {
    let sm = exp(x - f.m - f.lz1);
    var q = sm;
    if p.tau_is_one != 1u {
        q = exp((x - f.m) * p.inv_tau - f.lz2);
    }
    let pt = exp((y_t - f.mt) * p.inv_tau - f.lzt);
    let hot = select(0.0, 1.0, idx == y);
    return cs * (sm - hot) + p.kl_scale * (q - pt);
}

// Four logits WG apart from j, as the 4-wide loops stride. (naga passes
// no storage pointers to functions, so each binding has its own loader.)
fn s4(j: u32) -> vec4<f32> {
    return vec4<f32>(s[j], s[j + WG], s[j + 2u * WG], s[j + 3u * WG]);
}
fn sg4(j: u32) -> vec4<f32> {
    return vec4<f32>(sg[j], sg[j + WG], sg[j + 2u * WG], sg[j + 3u * WG]);
}
fn t4(j: u32) -> vec4<f32> {
    return vec4<f32>(t[j], t[j + WG], t[j + 2u * WG], t[j + 3u * WG]);
}

// Pass 1 over s (read-only binding) and t.
fn pass1_s(base: u32, lid: u32) -> St {
    var a = st_init();
    var i = lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        a = upd4(a, s4(base + i), t4(base + i));
    }
    for (; i < p.cols; i += WG) {
        a = upd1(a, s[base + i], t[base + i]);
    }
    return a;
}

// Pass 1 over sg (the in-place binding) and t.
fn pass1_sg(base: u32, lid: u32) -> St {
    var a = st_init();
    var i = lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        a = upd4(a, sg4(base + i), t4(base + i));
    }
    for (; i < p.cols; i += WG) {
        a = upd1(a, sg[base + i], t[base + i]);
    }
    return a;
}

fn wg_offsets(i: u32) -> vec4<u32> {
    return vec4<u32>(i, i + WG, i + 2u * WG, i + 3u * WG);
}

// The target's student logit (0 without a target), read by invocation 0
// only, which writes the CE.
fn s_target(base: u32, y: u32, lid: u32) -> f32 {
    var s_y = 0.0;
    if lid == 0u && y < p.cols {
        s_y = s[base + y];
    }
    return s_y;
}

// The row's CE (0 without a target) and KL, from invocation 0.
fn store_losses(row: u32, lid: u32, f: Fin, s_y: f32, y: u32) {
    if lid == 0u {
        ce[row] = select(0.0, f.m + f.lz1 - s_y, y < p.cols);
        kl[row] = f.kl;
    }
}

// Pass 1 over a row of s and t and the workgroup merge; stores the row's
// CE and KL and returns what pass 2 needs.
fn losses_s(row: u32, lid: u32) -> Fin {
    let base = row * p.cols;
    let y = targets[row];
    let s_y = s_target(base, y, lid);
    let f = finish(reduce_state(pass1_s(base, lid), lid));
    store_losses(row, lid, f, s_y, y);
    return f;
}

// CE + KL per row, and the gradient into ds.
@compute @workgroup_size(256)
fn distill_fwd_bwd(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let f = losses_s(row, lid);
    let base = row * p.cols;
    let y = targets[row];
    let cs = select(0.0, p.ce_scale, y < p.cols);
    var i = lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        let j = base + i;
        let g = grad4(f, s4(j), t4(j), wg_offsets(i), y, cs);
        ds[j] = g.x;
        ds[j + WG] = g.y;
        ds[j + 2u * WG] = g.z;
        ds[j + 3u * WG] = g.w;
    }
    for (; i < p.cols; i += WG) {
        ds[base + i] = grad1(f, s[base + i], t[base + i], i, y, cs);
    }
}

// Same, with the gradient written over the student logits.
@compute @workgroup_size(256)
fn distill_fwd_bwd_inplace(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let y = targets[row];
    var s_y = 0.0;
    if lid == 0u && y < p.cols {
        s_y = sg[base + y];
    }
    let st = pass1_sg(base, lid);
    // Every read of this row happens before any write of it below.
    storageBarrier();
    let f = finish(reduce_state(st, lid));
    store_losses(row, lid, f, s_y, y);
    if lid == 0u {
        let o = row * STATS;
        stats[o] = f.m;
        stats[o + 1u] = f.lz1;
        stats[o + 2u] = f.lz2;
        stats[o + 3u] = f.mt;
        stats[o + 4u] = f.lzt;
    }
    let cs = select(0.0, p.ce_scale, y < p.cols);
    var i = lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        let j = base + i;
        let g = grad4(f, sg4(j), t4(j), wg_offsets(i), y, cs);
        sg[j] = g.x;
        sg[j + WG] = g.y;
        sg[j + 2u * WG] = g.z;
        sg[j + 3u * WG] = g.w;
    }
    for (; i < p.cols; i += WG) {
        sg[base + i] = grad1(f, sg[base + i], t[base + i], i, y, cs);
    }
}

// The gradient over a block of vocabulary columns, from the rows' stats:
// s (in sg, overwritten by the gradient) and t are [rows, cols] logits of
// vocabulary columns col0.. of rows row0..; one invocation per element.
// The same arithmetic as the in-place pass 2 (grad1).
@compute @workgroup_size(256)
fn distill_grad_cols(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = folded_index(gid, nwg, WG);
    if i >= p.rows * p.cols {
        return;
    }
    let r = i / p.cols;
    let row = p.row0 + r;
    let o = row * STATS;
    var f: Fin;
    f.m = stats[o];
    f.lz1 = stats[o + 1u];
    f.lz2 = stats[o + 2u];
    f.mt = stats[o + 3u];
    f.lzt = stats[o + 4u];
    let y = targets[row];
    let cs = select(0.0, p.ce_scale, y < p.vocab);
    let col = p.col0 + i % p.cols;
    sg[i] = grad1(f, sg[i], t[i], col, y, cs);
}

// CE + KL per row, no gradient (evaluation with a teacher).
@compute @workgroup_size(256)
fn distill_fwd(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row < p.rows {
        _ = losses_s(row, lid);
    }
}

// Plain cross-entropy (no teacher, no gradient): per-row negative
// log-likelihood of the target into ce, 0 on rows without a target.
@compute @workgroup_size(256)
fn ce_fwd(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let y = targets[row];
    let s_y = s_target(base, y, lid);
    var a = st_init();
    var i = lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        a = upd_s4(a, s4(base + i));
    }
    for (; i < p.cols; i += WG) {
        a = upd_s1(a, s[base + i]);
    }
    // The teacher fields stay empty; with tau_is_one set, combine skips z2.
    let r = reduce_state(a, lid);
    if lid == 0u {
        ce[row] = select(0.0, r.m + log(r.z1) - s_y, y < p.cols);
    }
}
