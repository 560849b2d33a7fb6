// Token sampling on the GPU for one row of logits (decoding, batch 1):
// repetition penalty, temperature, top-k, top-p, min-p, and a draw from the
// kept tokens with one host-given uniform (32 random bits). Only the chosen
// id is ever read back.
//
// Semantics (src/ops/sample.rs has the CPU reference):
//   z_i   = penalised logit · inv_temp            (f32)
//   key_i = order-preserving u32 of z_i            (NaN: never kept)
//   m     = max z
//   w_i   = u32(min(exp(z_i − m), 1) · 2^31)       (fixed-point weight;
//           0 when z_i − m < −30)
//   top-k keeps key >= τk, the k-th largest key (ties kept);
//   top-p keeps key >= τp, the largest key whose cumulative weight (over
//           the top-k survivors, in descending key order) exceeds
//           T = floor(S·p32 / 2^32), S = their total weight;
//   min-p keeps z − m >= ln(min_p);
//   the token is the first index (vocabulary order) whose running sum of
//   kept weights exceeds floor(S_kept·u / 2^32).
// Sums are 64-bit integers ((lo, hi) u32 pairs), so every order of
// accumulation gives the same bits: results are deterministic.
//
// Thresholds come from a radix select over the keys, 8 bits per round from
// the top: `sample_hist` histograms the next digit of the keys that share
// the prefix chosen so far (counts for top-k, weights for top-p) and
// `sample_select` picks the digit where the cumulative weight crosses.

struct Params {
    n: u32,
    chunks: u32,
    inv_temp: f32,
    top_k: u32,
    use_top_p: u32,
    top_p32: u32,
    use_min_p: u32,
    ln_min_p: f32,
    u: u32,
    // 0: top-k (counts), 1: top-p (weights)
    mode: u32,
    round: u32,
    n_seen: u32,
    penalty: f32,
    inv_penalty: f32,
    // ceil(chunks / WG)
    blocks: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> zw: array<f32>;
@group(0) @binding(3) var<storage, read> seen: array<u32>;
@group(0) @binding(4) var<storage, read_write> part_max: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: array<u32>;
@group(0) @binding(6) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read_write> part_sum: array<u32>;
@group(0) @binding(8) var<storage, read_write> out: array<u32>;

//#include _common

const WG: u32 = 256u;
const PER: u32 = 4u;
// Elements per chunk (one workgroup of the multi-workgroup passes).
const CHUNK: u32 = 1024u;
const NEG_INF_BITS: u32 = 0xff800000u;

// state[] slots (keep in sync with src/ops/sample.rs)
const S_M: u32 = 0u;
// per mode: prefix (threshold key), remaining target lo, hi, done
const S_MODE: u32 = 1u;
const S_STRIDE: u32 = 4u;
const HIST_WORDS: u32 = 4096u; // 2 modes · 4 rounds · 256 bins · 2 words

// ---- 64-bit unsigned integers as (lo, hi) ----
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}
fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}
fn gt64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x > b.x);
}
// Full 32×32 → 64-bit product.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let hh = ah * bh;
    let mid = lh + hl;
    let mid_carry = select(0u, 0x10000u, mid < lh);
    let lo = ll + (mid << 16u);
    let lo_carry = select(0u, 1u, lo < ll);
    return vec2<u32>(lo, hh + (mid >> 16u) + mid_carry + lo_carry);
}
// floor(s · f / 2^32) for a 64-bit s and a 32-bit fraction f.
fn scale64(s: vec2<u32>, f: u32) -> vec2<u32> {
    return add64(mul_wide(s.y, f), vec2<u32>(mul_wide(s.x, f).y, 0u));
}

// ---- element values ----
fn zval(i: u32) -> f32 {
    return x[i] * p.inv_temp;
}
// Order-preserving map of f32 to u32 (larger float, larger key).
fn key_of(z: f32) -> u32 {
    let b = bitcast<u32>(z);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn weight(z: f32, m: f32) -> u32 {
    let d = z - m;
    if !(d >= -30.0) {
        return 0u;
    }
    return u32(min(exp(d), 1.0) * 2147483648.0);
}
// Is element (z, key) kept by every active filter?
fn kept(z: f32, key: u32, m: f32, tk: u32, tp: u32) -> bool {
    let min_p_ok = p.use_min_p == 0u || (z - m) >= p.ln_min_p;
    return z == z && key >= tk && key >= tp && min_p_ok;
}

var<workgroup> red_f: array<f32, 256>;
var<workgroup> bin_lo: array<atomic<u32>, 256>;
var<workgroup> bin_hi: array<atomic<u32>, 256>;
var<workgroup> sc: array<vec2<u32>, 256>;
var<workgroup> found: u32;
var<workgroup> found_base: vec2<u32>;

// Inclusive prefix sum of 64-bit values over the workgroup.
fn scan64(v: vec2<u32>, lid: u32) -> vec2<u32> {
    sc[lid] = v;
    workgroupBarrier();
    for (var off = 1u; off < WG; off = off * 2u) {
        var t = sc[lid];
        if lid >= off {
            t = add64(t, sc[lid - off]);
        }
        workgroupBarrier();
        sc[lid] = t;
        workgroupBarrier();
    }
    let r = sc[lid];
    workgroupBarrier();
    return r;
}

// Max over the workgroup (NaN ignored: comparisons with NaN are false).
fn wg_max(v: f32, lid: u32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k / 2u) {
        if lid < k {
            let o = red_f[lid + k];
            if o > red_f[lid] || red_f[lid] != red_f[lid] {
                red_f[lid] = o;
            }
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

// Add `w` into the workgroup's 64-bit bin `b`.
fn bin_add(b: u32, w: u32) {
    let old = atomicAdd(&bin_lo[b], w);
    if old + w < old {
        atomicAdd(&bin_hi[b], 1u);
    }
}

// Repetition penalty on the working copy, one invocation per distinct id:
// positive logits are divided by the penalty, negative ones multiplied.
@compute @workgroup_size(256)
fn sample_penalize(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = folded_index(gid, nwg, WG);
    if i >= p.n_seen {
        return;
    }
    let id = seen[i];
    if id >= p.n {
        return;
    }
    let v = zw[id];
    zw[id] = select(v * p.inv_penalty, v * p.penalty, v < 0.0);
}

// Max of z over each chunk.
@compute @workgroup_size(256)
fn sample_max(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let chunk = wid.x;
    var best = bitcast<f32>(NEG_INF_BITS);
    for (var j = 0u; j < PER; j++) {
        let i = chunk * CHUNK + j * WG + lid;
        if i < p.n {
            let z = zval(i);
            if z > best {
                best = z;
            }
        }
    }
    let r = wg_max(best, lid);
    if lid == 0u {
        part_max[chunk] = r;
    }
}

// One workgroup: the global max, fresh selection state, cleared histograms.
@compute @workgroup_size(256)
fn sample_init(@builtin(local_invocation_index) lid: u32) {
    var best = bitcast<f32>(NEG_INF_BITS);
    for (var c = lid; c < p.chunks; c += WG) {
        let v = part_max[c];
        if v > best {
            best = v;
        }
    }
    let m = wg_max(best, lid);
    for (var i = lid; i < HIST_WORDS; i += WG) {
        atomicStore(&hist[i], 0u);
    }
    if lid == 0u {
        state[S_M] = bitcast<u32>(m);
        // top-k: find the largest key with count(key >= κ) > k - 1
        state[S_MODE] = 0u;
        state[S_MODE + 1u] = max(p.top_k, 1u) - 1u;
        state[S_MODE + 2u] = 0u;
        state[S_MODE + 3u] = 0u;
        // top-p: the target is set by its first select round
        state[S_MODE + S_STRIDE] = 0u;
        state[S_MODE + S_STRIDE + 1u] = 0u;
        state[S_MODE + S_STRIDE + 2u] = 0u;
        state[S_MODE + S_STRIDE + 3u] = 0u;
    }
}

// Histogram of the next key digit (round p.round) of the keys that match
// the prefix chosen so far, into hist slot (mode, round).
@compute @workgroup_size(256)
fn sample_hist(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let chunk = wid.x;
    atomicStore(&bin_lo[lid], 0u);
    atomicStore(&bin_hi[lid], 0u);
    workgroupBarrier();
    let base = S_MODE + p.mode * S_STRIDE;
    let prefix = state[base];
    let is_on = state[base + 3u] == 0u;
    let m = bitcast<f32>(state[S_M]);
    // top-p counts only what top-k keeps
    let tk = select(0u, state[S_MODE], p.mode == 1u);
    let shift = 24u - 8u * p.round;
    let hi_mask = select(0u, 0xffffffffu << min(shift + 8u, 31u), p.round > 0u);
    for (var j = 0u; j < PER; j++) {
        let i = chunk * CHUNK + j * WG + lid;
        if is_on && i < p.n {
            let z = zval(i);
            let key = key_of(z);
            if z == z && key >= tk && (key & hi_mask) == (prefix & hi_mask) {
                let w = select(1u, weight(z, m), p.mode == 1u);
                if w != 0u {
                    bin_add((key >> shift) & 255u, w);
                }
            }
        }
    }
    workgroupBarrier();
    let lo = atomicLoad(&bin_lo[lid]);
    var hi = atomicLoad(&bin_hi[lid]);
    if lo != 0u || hi != 0u {
        let at = ((p.mode * 4u + p.round) * 256u + lid) * 2u;
        let old = atomicAdd(&hist[at], lo);
        if old + lo < old {
            hi += 1u;
        }
        if hi != 0u {
            atomicAdd(&hist[at + 1u], hi);
        }
    }
}

// One workgroup: the digit where the cumulative weight (from the top)
// first exceeds the remaining target; extends the prefix.
@compute @workgroup_size(256)
fn sample_select(@builtin(local_invocation_index) lid: u32) {
    let base = S_MODE + p.mode * S_STRIDE;
    let prefix = state[base];
    var tgt = vec2<u32>(state[base + 1u], state[base + 2u]);
    let is_on = state[base + 3u] == 0u;
    let digit = 255u - lid;
    let at = ((p.mode * 4u + p.round) * 256u + digit) * 2u;
    let v = vec2<u32>(atomicLoad(&hist[at]), atomicLoad(&hist[at + 1u]));
    let incl = scan64(v, lid);
    let total = sc[WG - 1u];
    if p.mode == 1u && p.round == 0u {
        tgt = scale64(total, p.top_p32);
    }
    let excl = sub64(incl, v);
    let shift = 24u - 8u * p.round;
    if is_on && !gt64(excl, tgt) && gt64(incl, tgt) {
        state[base] = prefix | (digit << shift);
        let rest = sub64(tgt, excl);
        state[base + 1u] = rest.x;
        state[base + 2u] = rest.y;
    }
    if is_on && lid == WG - 1u && !gt64(total, tgt) {
        // Everything fits under the target: keep all (threshold 0).
        state[base + 3u] = 1u;
    }
}

// Sum of kept weights per chunk.
@compute @workgroup_size(256)
fn sample_kept(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let chunk = wid.x;
    atomicStore(&bin_lo[lid], 0u);
    atomicStore(&bin_hi[lid], 0u);
    workgroupBarrier();
    let m = bitcast<f32>(state[S_M]);
    let tk = state[S_MODE];
    let tp = state[S_MODE + S_STRIDE];
    for (var j = 0u; j < PER; j++) {
        let i = chunk * CHUNK + j * WG + lid;
        if i < p.n {
            let z = zval(i);
            if kept(z, key_of(z), m, tk, tp) {
                let w = weight(z, m);
                if w != 0u {
                    bin_add(0u, w);
                }
            }
        }
    }
    workgroupBarrier();
    if lid == 0u {
        part_sum[chunk * 2u] = atomicLoad(&bin_lo[0]);
        part_sum[chunk * 2u + 1u] = atomicLoad(&bin_hi[0]);
    }
}

// One workgroup: the draw. Finds the chunk, then the element, where the
// running sum of kept weights (vocabulary order) exceeds the target.
@compute @workgroup_size(256)
fn sample_pick(@builtin(local_invocation_index) lid: u32) {
    // Total kept weight.
    var mine = vec2<u32>(0u, 0u);
    for (var c = lid; c < p.chunks; c += WG) {
        mine = add64(mine, vec2<u32>(part_sum[c * 2u], part_sum[c * 2u + 1u]));
    }
    let total = scan64(mine, lid);
    let s = sc[WG - 1u];
    let tgt = scale64(s, p.u);
    if lid == 0u {
        found = 0xffffffffu;
        found_base = vec2<u32>(0u, 0u);
    }
    workgroupBarrier();
    // The chunk: blocks of WG chunks in order, carrying the running sum.
    var carry = vec2<u32>(0u, 0u);
    for (var b = 0u; b < p.blocks; b++) {
        let c = b * WG + lid;
        var v = vec2<u32>(0u, 0u);
        if c < p.chunks {
            v = vec2<u32>(part_sum[c * 2u], part_sum[c * 2u + 1u]);
        }
        let incl = add64(carry, scan64(v, lid));
        let excl = sub64(incl, v);
        if c < p.chunks && !gt64(excl, tgt) && gt64(incl, tgt) {
            found = c;
            found_base = excl;
        }
        carry = add64(carry, sc[WG - 1u]);
        workgroupBarrier();
    }
    let chunk = workgroupUniformLoad(&found);
    let rest = sub64(tgt, found_base);
    // The element within the chunk: PER consecutive elements per invocation.
    let m = bitcast<f32>(state[S_M]);
    let tk = state[S_MODE];
    let tp = state[S_MODE + S_STRIDE];
    var w: array<u32, 4>;
    var acc_w = vec2<u32>(0u, 0u);
    for (var j = 0u; j < PER; j++) {
        let i = chunk * CHUNK + lid * PER + j;
        w[j] = 0u;
        if chunk < p.chunks && i < p.n {
            let z = zval(i);
            if kept(z, key_of(z), m, tk, tp) {
                w[j] = weight(z, m);
            }
        }
        acc_w = add64(acc_w, vec2<u32>(w[j], 0u));
    }
    let incl = scan64(acc_w, lid);
    var run = sub64(incl, acc_w);
    for (var j = 0u; j < PER; j++) {
        let next = add64(run, vec2<u32>(w[j], 0u));
        if !gt64(run, rest) && gt64(next, rest) {
            out[0] = chunk * CHUNK + lid * PER + j;
        }
        run = next;
    }
    if lid == 0u && (chunk >= p.chunks || !gt64(s, vec2<u32>(0u, 0u))) {
        // Nothing to draw from (every logit NaN or -inf).
        out[0] = 0u;
    }
    _ = total;
}

// The finite-value guard of generation: when any logit of the row is NaN
// or infinite, the chosen id becomes 0xffffffff (no token), whatever the
// pick or the argmax wrote before. One invocation per logit; every writer
// writes the same word. The test is on the bits (exponent all ones), as
// float comparisons may assume finite values.
@compute @workgroup_size(256)
fn sample_guard(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = folded_index(gid, nwg, WG);
    if i >= p.n {
        return;
    }
    if (bitcast<u32>(x[i]) & 0x7f800000u) == 0x7f800000u {
        out[0] = 0xffffffffu;
    }
}
