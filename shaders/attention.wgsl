// Causal self-attention with grouped-query heads, flash style: scores live
// only in workgroup memory, softmax is computed online, and the backward
// recomputes probabilities from the saved log-sum-exp. Never a T×T matrix in
// global memory, never a float atomic.
//
// Layouts (f32, token-major, row-major):
//   q      [B*Tq rows, stride q_stride]      head h at columns h*D..h*D+D
//   k, v   row (b*kv_batch + key - k_base), stride kv_stride, kv head at
//          kvh*D (kv_batch = Tk for dense tensors, the rows of a KV cache
//          buffer; k_base > 0 for the later blocks of a cache in blocks)
//   mask   u32 [B, mask_stride], 1 = attend, 0 = masked key (optional)
//   out    [B*Tq, Hq*D] dense;  lse [B, Hq, Tq]
// Query i of batch b sits at key position q_offset + i and sees the keys
// j <= q_offset + i (and j < Tk, mask[b, j] != 0). Query head h uses kv head
// h / group. A workgroup handles one (batch, kv head) and a block of "rows",
// a row being a (query, head of the group) pair numbered query*group + g, so
// the heads of one GQA group share every K/V tile they load.
//
// Entry points:
//   attn_fwd       out, lse; with splits > 1 a key range per workgroup (z),
//                  partial results to scratch (flash-decoding)
//   attn_combine   merges the split partials into out, lse
//   attn_bwd_delta stats[row] = (lse, rowsum(dO*O)) for the backward
//   attn_bwd_dq    dq, iterating over key blocks
//   attn_bwd_dkdv  dk, dv (summed over the group), iterating over rows

struct Params {
    batch: u32,
    tq: u32,
    tk: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    group: u32,
    q_offset: u32,
    q_stride: u32,
    kv_stride: u32,
    kv_batch: u32,
    mask_stride: u32,
    has_mask: u32,
    splits: u32,
    split_len: u32,
    scale: f32,
    // Keys [k_base, k_end) are in the bound k / v (row key - k_base): a
    // block of a KV cache stored in several buffers (0 and tk otherwise).
    // Partial results go to split slots split_base + z.
    k_base: u32,
    k_end: u32,
    split_base: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
@group(0) @binding(7) var<storage, read> o_part: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> lse_part: array<f32>;
@group(0) @binding(9) var<storage, read> o: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> d_out: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> lse_in: array<f32>;
@group(0) @binding(12) var<storage, read_write> stats: array<f32>;
@group(0) @binding(13) var<storage, read> stats_in: array<f32>;
@group(0) @binding(14) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> dv: array<vec4<f32>>;
// K and V as f16 (a 16-bit KV cache), four values per element: read by the
// forward when KV_HALF is set (the same buffers are bound as k and v then).
@group(0) @binding(17) var<storage, read> k16: array<vec2<u32>>;
@group(0) @binding(18) var<storage, read> v16: array<vec2<u32>>;

override KV_HALF: bool = false;

//#include _common

// 128 invocations as 8 row groups (ty) × 16 column lanes (tx). In the score
// phase lane tx takes key tx of the block; in the output phase it owns the
// vec4 columns tx and tx + 16 (head dims up to 128).
const NT: u32 = 128u;
const TX: u32 = 16u;
const MAX_D4: u32 = 32u;
// Row stride of the vec4 tiles: one vec4 of padding against bank conflicts.
const STR: u32 = 33u;
// Keys per block.
const BK: u32 = 16u;
// Row stride of score tiles.
const PS: u32 = 17u;
// Finite stand-in for -inf inside the kernels (no inf arithmetic anywhere).
const NEG: f32 = -1.0e30;
// Forward: 32 rows per workgroup, 4 per invocation.
const F_BQ: u32 = 32u;
const F_RQ: u32 = 4u;
// dq: 16 rows per workgroup, 2 per invocation.
const Q_BQ: u32 = 16u;
const Q_RQ: u32 = 2u;
// dk/dv: 16 keys per workgroup (2 per invocation), 8 rows per step.
const K_BK: u32 = 16u;
const K_BR: u32 = 8u;

// One pool of tiles shared by all entry points (each carves its own regions):
// 48 rows of 33 vec4 = 25,344 bytes; with the score and row arrays under
// 28 KiB, inside the 32 KiB that lavapipe and Apple GPUs allow.
var<workgroup> tiles: array<vec4<f32>, 1584>;
var<workgroup> sm: array<f32, 576>;
var<workgroup> rs: array<f32, 96>;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// vec4 index of (batch b, query qi, head h) in q.
fn q_index(b: u32, qi: u32, h: u32) -> u32 {
    return ((b * p.tq + qi) * p.q_stride + h * p.d) / 4u;
}
// vec4 index in the dense [B*Tq, Hq*D] outputs and gradients.
fn o_index(b: u32, qi: u32, h: u32) -> u32 {
    return ((b * p.tq + qi) * p.hq + h) * p.d / 4u;
}
// vec4 index in k / v (strided, possibly a KV cache).
fn kv_index(b: u32, key: u32, kvh: u32) -> u32 {
    return ((b * p.kv_batch + key - p.k_base) * p.kv_stride + kvh * p.d) / 4u;
}
// vec4 index in the dense [B*Tk, Hkv*D] dk / dv.
fn dkv_index(b: u32, key: u32, kvh: u32) -> u32 {
    return ((b * p.tk + key) * p.hkv + kvh) * p.d / 4u;
}
fn lse_index(b: u32, h: u32, qi: u32) -> u32 {
    return (b * p.hq + h) * p.tq + qi;
}
// Key below `kend` and not masked out by padding.
fn key_ok(b: u32, key: u32, kend: u32) -> bool {
    var ok = key < kend;
    if ok && p.has_mask != 0u {
        ok = mask[b * p.mask_stride + key] != 0u;
    }
    return ok;
}

// Element i of a tile load of d4 vec4 per row: (tile row, vec4 column).
fn tile_rc(i: u32, d4: u32) -> vec2<u32> {
    let r = i / d4;
    return vec2<u32>(r, i - r * d4);
}

// (query, head) of `row` (query * group + head in group) of kv head kvh.
fn row_qh(kvh: u32, row: u32) -> vec2<u32> {
    let qi = row / p.group;
    return vec2<u32>(qi, kvh * p.group + row - qi * p.group);
}

// Rows [k0, k0 + BK) of k (or, with from_v, of v) for kv head kvh into
// tiles[base..], zeros past kend.
fn load_kv_tile(from_v: bool, base: u32, b: u32, kvh: u32, k0: u32, kend: u32, tid: u32, d4: u32) {
    for (var i = tid; i < BK * d4; i += NT) {
        let jc = tile_rc(i, d4);
        let key = k0 + jc.x;
        var val = vec4<f32>(0.0);
        if key < kend {
            let src = kv_index(b, key, kvh) + jc.y;
            if KV_HALF {
                var h: vec2<u32>;
                if from_v {
                    h = v16[src];
                } else {
                    h = k16[src];
                }
                val = vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
            } else if from_v {
                val = v[src];
            } else {
                val = k[src];
            }
        }
        tiles[base + jc.x * STR + jc.y] = val;
    }
}

// Q rows [row0, row0 + n) of the group into tiles[base..] (zeros past the end).
fn load_q_rows(base: u32, b: u32, kvh: u32, row0: u32, n: u32, tid: u32, d4: u32) {
    for (var i = tid; i < n * d4; i += NT) {
        let rc = tile_rc(i, d4);
        var val = vec4<f32>(0.0);
        if row0 + rc.x < p.tq * p.group {
            let qh = row_qh(kvh, row0 + rc.x);
            val = q[q_index(b, qh.x, qh.y) + rc.y];
        }
        tiles[base + rc.x * STR + rc.y] = val;
    }
}

// The same rows of q into tiles[q_base..] and of d_out into tiles[do_base..].
fn load_q_dout_rows(q_base: u32, do_base: u32, b: u32, kvh: u32, row0: u32, n: u32, tid: u32, d4: u32) {
    for (var i = tid; i < n * d4; i += NT) {
        let rc = tile_rc(i, d4);
        var qv = vec4<f32>(0.0);
        var dov = vec4<f32>(0.0);
        if row0 + rc.x < p.tq * p.group {
            let qh = row_qh(kvh, row0 + rc.x);
            qv = q[q_index(b, qh.x, qh.y) + rc.y];
            dov = d_out[o_index(b, qh.x, qh.y) + rc.y];
        }
        tiles[q_base + rc.x * STR + rc.y] = qv;
        tiles[do_base + rc.x * STR + rc.y] = dov;
    }
}

// (lse, delta) of `row` of kv head kvh from the stats (zeros past the end).
fn row_stats(b: u32, kvh: u32, row: u32) -> vec2<f32> {
    var st = vec2<f32>(0.0);
    if row < p.tq * p.group {
        let qh = row_qh(kvh, row);
        let li = lse_index(b, qh.y, qh.x);
        st = vec2<f32>(stats_in[2u * li], stats_in[2u * li + 1u]);
    }
    return st;
}

// Where a workgroup works (uniform over it): batch b and kv head kvh from
// grid y, the group's rows (nrows; row = query * group + head in group),
// and d4 vec4 per head.
struct Place {
    g: u32,
    nrows: u32,
    b: u32,
    kvh: u32,
    d4: u32,
}

fn place(wy: u32) -> Place {
    return Place(p.group, p.tq * p.group, wy / p.hkv, wy % p.hkv, p.d / 4u);
}

// An invocation of the 128 as a row group ty and a lane tx, whose vec4
// columns in the output phases are tx and c1 = tx + 16.
struct Lane {
    ty: u32,
    tx: u32,
    c1: u32,
}

fn lane_of(tid: u32) -> Lane {
    return Lane(tid / TX, tid % TX, tid % TX + TX);
}

// ---------------------------------------------------------------- forward
// grid: x = row blocks of 32, y = batch * hkv, z = key splits.
@compute @workgroup_size(128)
fn attn_fwd(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let at = place(wid.y);
    let ln = lane_of(tid);
    // The last row blocks see the most keys: start them first.
    let row0 = (nwg.x - 1u - wid.x) * F_BQ;
    let kv0 = F_BQ * STR;

    load_q_rows(0u, at.b, at.kvh, row0, F_BQ, tid, at.d4);
    if tid < F_BQ {
        rs[tid] = NEG;
        rs[F_BQ + tid] = 0.0;
        rs[2u * F_BQ + tid] = 1.0;
    }

    let last_row = min(row0 + F_BQ, at.nrows) - 1u;
    let kmax = min(p.tk, p.q_offset + last_row / at.g + 1u);
    let kstart = p.k_base + wid.z * p.split_len;
    let kend = min(min(kmax, kstart + p.split_len), p.k_end);

    let my0 = ln.ty * F_RQ;
    let live = row0 + my0 < at.nrows;
    // Last key each of this invocation's rows may see.
    let lim0 = p.q_offset + (row0 + my0) / at.g;
    let lim1 = p.q_offset + (row0 + my0 + 1u) / at.g;
    let lim2 = p.q_offset + (row0 + my0 + 2u) / at.g;
    let lim3 = p.q_offset + (row0 + my0 + 3u) / at.g;

    var acc: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var kb = kstart; kb < kend; kb += BK) {
        workgroupBarrier();
        load_kv_tile(false, kv0, at.b, at.kvh, kb, kend, tid, at.d4);
        workgroupBarrier();
        if live {
            let key = kb + ln.tx;
            let kok = key_ok(at.b, key, kend);
            var s = vec4<f32>(0.0);
            let qb = my0 * STR;
            let kbase = kv0 + ln.tx * STR;
            for (var c = 0u; c < at.d4; c++) {
                let kk = tiles[kbase + c];
                s.x += dot(tiles[qb + c], kk);
                s.y += dot(tiles[qb + STR + c], kk);
                s.z += dot(tiles[qb + 2u * STR + c], kk);
                s.w += dot(tiles[qb + 3u * STR + c], kk);
            }
            s *= p.scale;
            sm[my0 * PS + ln.tx] = select(NEG, s.x, kok && key <= lim0);
            sm[(my0 + 1u) * PS + ln.tx] = select(NEG, s.y, kok && key <= lim1);
            sm[(my0 + 2u) * PS + ln.tx] = select(NEG, s.z, kok && key <= lim2);
            sm[(my0 + 3u) * PS + ln.tx] = select(NEG, s.w, kok && key <= lim3);
        }
        workgroupBarrier();
        // K is no longer needed: V takes its place.
        load_kv_tile(true, kv0, at.b, at.kvh, kb, kend, tid, at.d4);
        // Online softmax, one invocation per row.
        if tid < F_BQ {
            let base = tid * PS;
            var mx = NEG;
            for (var j = 0u; j < BK; j++) {
                mx = max(mx, sm[base + j]);
            }
            let m_old = rs[tid];
            let m_new = max(m_old, mx);
            var alpha = 1.0;
            var sum = 0.0;
            if m_new > 0.5 * NEG {
                alpha = exp(m_old - m_new);
                for (var j = 0u; j < BK; j++) {
                    let e = exp(sm[base + j] - m_new);
                    sm[base + j] = e;
                    sum += e;
                }
            } else {
                for (var j = 0u; j < BK; j++) {
                    sm[base + j] = 0.0;
                }
            }
            rs[tid] = m_new;
            rs[F_BQ + tid] = rs[F_BQ + tid] * alpha + sum;
            rs[2u * F_BQ + tid] = alpha;
        }
        workgroupBarrier();
        if live {
            for (var i = 0u; i < F_RQ; i++) {
                let a = rs[2u * F_BQ + my0 + i];
                acc[2u * i] *= a;
                acc[2u * i + 1u] *= a;
            }
            if ln.c1 < at.d4 {
                for (var j = 0u; j < BK; j++) {
                    let v0 = tiles[kv0 + j * STR + ln.tx];
                    let v1 = tiles[kv0 + j * STR + ln.c1];
                    let p0 = sm[my0 * PS + j];
                    let p1 = sm[(my0 + 1u) * PS + j];
                    let p2 = sm[(my0 + 2u) * PS + j];
                    let p3 = sm[(my0 + 3u) * PS + j];
                    acc[0] += p0 * v0;
                    acc[1] += p0 * v1;
                    acc[2] += p1 * v0;
                    acc[3] += p1 * v1;
                    acc[4] += p2 * v0;
                    acc[5] += p2 * v1;
                    acc[6] += p3 * v0;
                    acc[7] += p3 * v1;
                }
            } else if ln.tx < at.d4 {
                for (var j = 0u; j < BK; j++) {
                    let v0 = tiles[kv0 + j * STR + ln.tx];
                    acc[0] += sm[my0 * PS + j] * v0;
                    acc[2] += sm[(my0 + 1u) * PS + j] * v0;
                    acc[4] += sm[(my0 + 2u) * PS + j] * v0;
                    acc[6] += sm[(my0 + 3u) * PS + j] * v0;
                }
            }
        }
    }
    workgroupBarrier();

    // Splits write partials to scratch: [split][rows of out], [split][lse].
    let slot = p.split_base + wid.z;
    let o_off = slot * (p.batch * p.tq * p.hq * at.d4);
    let l_off = slot * (p.batch * p.hq * p.tq);
    if live {
        for (var i = 0u; i < F_RQ; i++) {
            let row = row0 + my0 + i;
            if row < at.nrows {
                let qh = row_qh(at.kvh, row);
                let l = rs[F_BQ + my0 + i];
                let inv = select(0.0, 1.0 / max(l, 1.0e-30), l > 0.0);
                let oi = o_off + o_index(at.b, qh.x, qh.y);
                if ln.tx < at.d4 {
                    out[oi + ln.tx] = acc[2u * i] * inv;
                }
                if ln.c1 < at.d4 {
                    out[oi + ln.c1] = acc[2u * i + 1u] * inv;
                }
            }
        }
    }
    if tid < F_BQ && row0 + tid < at.nrows {
        let qh = row_qh(at.kvh, row0 + tid);
        let l = rs[F_BQ + tid];
        let empty = select(neg_inf(), NEG, p.splits > 1u);
        lse[l_off + lse_index(at.b, qh.y, qh.x)] = select(empty, rs[tid] + log(max(l, 1.0e-30)), l > 0.0);
    }
}

// Merge split partials: one invocation per output vec4.
@compute @workgroup_size(256)
fn attn_combine(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = folded_index(gid, nwg, 256u);
    let d4 = p.d / 4u;
    let total = p.batch * p.tq * p.hq * d4;
    if i >= total {
        return;
    }
    let c = i % d4;
    let t = i / d4;
    let h = t % p.hq;
    let bq = t / p.hq;
    let qi = bq % p.tq;
    let b = bq / p.tq;
    let li = lse_index(b, h, qi);
    let nl = p.batch * p.hq * p.tq;
    var mx = NEG;
    for (var s = 0u; s < p.splits; s++) {
        mx = max(mx, lse_part[s * nl + li]);
    }
    var acc = vec4<f32>(0.0);
    var sum = 0.0;
    if mx > 0.5 * NEG {
        for (var s = 0u; s < p.splits; s++) {
            let w = exp(lse_part[s * nl + li] - mx);
            sum += w;
            acc += w * o_part[s * total + i];
        }
    }
    out[i] = select(vec4<f32>(0.0), acc * (1.0 / max(sum, 1.0e-30)), sum > 0.0);
    if c == 0u {
        lse[li] = select(neg_inf(), mx + log(max(sum, 1.0e-30)), sum > 0.0);
    }
}

// --------------------------------------------------------------- backward
// stats[2*i] = lse (clamped to a finite value), stats[2*i+1] = rowsum(dO*O),
// for i = lse_index(b, h, qi); one invocation per (b, qi, h).
@compute @workgroup_size(256)
fn attn_bwd_delta(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = folded_index(gid, nwg, 256u);
    if t >= p.batch * p.tq * p.hq {
        return;
    }
    let d4 = p.d / 4u;
    let h = t % p.hq;
    let bq = t / p.hq;
    let qi = bq % p.tq;
    let b = bq / p.tq;
    let base = t * d4;
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < d4; c++) {
        acc += d_out[base + c] * o[base + c];
    }
    let li = lse_index(b, h, qi);
    stats[2u * li] = max(lse_in[li], NEG);
    stats[2u * li + 1u] = acc.x + acc.y + acc.z + acc.w;
}

// dq = scale * sum_j dS_ij k_j with dS = P * (dP - delta), dP = dO V^T.
// grid: x = row blocks of 16, y = batch * hkv.
@compute @workgroup_size(128)
fn attn_bwd_dq(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let at = place(wid.y);
    let ln = lane_of(tid);
    let row0 = (nwg.x - 1u - wid.x) * Q_BQ;
    let q0 = 0u;
    let do0 = Q_BQ * STR;
    let kv0 = 2u * Q_BQ * STR;

    load_q_dout_rows(q0, do0, at.b, at.kvh, row0, Q_BQ, tid, at.d4);
    if tid < Q_BQ {
        let st = row_stats(at.b, at.kvh, row0 + tid);
        rs[tid] = st.x;
        rs[Q_BQ + tid] = st.y;
    }

    let last_row = min(row0 + Q_BQ, at.nrows) - 1u;
    let kmax = min(p.tk, p.q_offset + last_row / at.g + 1u);
    let my0 = ln.ty * Q_RQ;
    let live = row0 + my0 < at.nrows;
    let lim0 = p.q_offset + (row0 + my0) / at.g;
    let lim1 = p.q_offset + (row0 + my0 + 1u) / at.g;

    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var kb = 0u; kb < kmax; kb += BK) {
        workgroupBarrier();
        load_kv_tile(true, kv0, at.b, at.kvh, kb, kmax, tid, at.d4);
        workgroupBarrier();
        var dp = vec2<f32>(0.0);
        if live {
            let kbase = kv0 + ln.tx * STR;
            let ob = do0 + my0 * STR;
            for (var c = 0u; c < at.d4; c++) {
                let vv = tiles[kbase + c];
                dp.x += dot(tiles[ob + c], vv);
                dp.y += dot(tiles[ob + STR + c], vv);
            }
        }
        workgroupBarrier();
        load_kv_tile(false, kv0, at.b, at.kvh, kb, kmax, tid, at.d4);
        workgroupBarrier();
        if live {
            let key = kb + ln.tx;
            let kok = key_ok(at.b, key, kmax);
            var s = vec2<f32>(0.0);
            let kbase = kv0 + ln.tx * STR;
            let qb = q0 + my0 * STR;
            for (var c = 0u; c < at.d4; c++) {
                let kk = tiles[kbase + c];
                s.x += dot(tiles[qb + c], kk);
                s.y += dot(tiles[qb + STR + c], kk);
            }
            s *= p.scale;
            let pr0 = select(0.0, exp(s.x - rs[my0]), kok && key <= lim0);
            let pr1 = select(0.0, exp(s.y - rs[my0 + 1u]), kok && key <= lim1);
            sm[my0 * PS + ln.tx] = pr0 * (dp.x - rs[Q_BQ + my0]) * p.scale;
            sm[(my0 + 1u) * PS + ln.tx] = pr1 * (dp.y - rs[Q_BQ + my0 + 1u]) * p.scale;
        }
        workgroupBarrier();
        if live && ln.tx < at.d4 {
            let has1 = ln.c1 < at.d4;
            for (var j = 0u; j < BK; j++) {
                let k0v = tiles[kv0 + j * STR + ln.tx];
                let ds0 = sm[my0 * PS + j];
                let ds1 = sm[(my0 + 1u) * PS + j];
                acc[0] += ds0 * k0v;
                acc[2] += ds1 * k0v;
                if has1 {
                    let k1v = tiles[kv0 + j * STR + ln.c1];
                    acc[1] += ds0 * k1v;
                    acc[3] += ds1 * k1v;
                }
            }
        }
    }

    if live {
        for (var i = 0u; i < Q_RQ; i++) {
            let row = row0 + my0 + i;
            if row < at.nrows {
                let qh = row_qh(at.kvh, row);
                let oi = o_index(at.b, qh.x, qh.y);
                if ln.tx < at.d4 {
                    dq[oi + ln.tx] = acc[2u * i];
                }
                if ln.c1 < at.d4 {
                    dq[oi + ln.c1] = acc[2u * i + 1u];
                }
            }
        }
    }
}

// dv_j = sum_rows P_rj dO_r, dk_j = scale * sum_rows dS_rj q_r over every
// (query, head) row of the group that sees key j.
// grid: x = key blocks of 16, y = batch * hkv.
@compute @workgroup_size(128)
fn attn_bwd_dkdv(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let at = place(wid.y);
    let ln = lane_of(tid);
    let kb0 = wid.x * K_BK;
    let k0 = 0u;
    let v0 = K_BK * STR;
    let q0 = 2u * K_BK * STR;
    let do0 = q0 + K_BR * STR;
    let ds0 = K_BR * PS;

    load_kv_tile(false, k0, at.b, at.kvh, kb0, p.tk, tid, at.d4);
    load_kv_tile(true, v0, at.b, at.kvh, kb0, p.tk, tid, at.d4);

    // Score phase: one (row, key) pair per invocation.
    let sj = tid % K_BK;
    let sr = tid / K_BK;
    let skey = kb0 + sj;
    let skey_ok = key_ok(at.b, skey, p.tk);
    // Accumulation phase: keys 2ty, 2ty+1 and vec4 columns ln.tx, ln.tx + 16.
    let my0 = ln.ty * 2u;

    // The first query that sees key kb0.
    var qi_min = 0u;
    if kb0 > p.q_offset {
        qi_min = kb0 - p.q_offset;
    }

    var adk: array<vec4<f32>, 4>;
    var adv: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        adk[i] = vec4<f32>(0.0);
        adv[i] = vec4<f32>(0.0);
    }

    for (var r0 = qi_min * at.g; r0 < at.nrows; r0 += K_BR) {
        workgroupBarrier();
        load_q_dout_rows(q0, do0, at.b, at.kvh, r0, K_BR, tid, at.d4);
        if tid < K_BR {
            let st = row_stats(at.b, at.kvh, r0 + tid);
            rs[tid] = st.x;
            rs[K_BR + tid] = st.y;
        }
        workgroupBarrier();
        let row = r0 + sr;
        var pr = 0.0;
        var dsr = 0.0;
        if skey_ok && row < at.nrows && skey <= p.q_offset + row / at.g {
            var s = 0.0;
            var dp = 0.0;
            let qb = q0 + sr * STR;
            let ob = do0 + sr * STR;
            let kbase = k0 + sj * STR;
            let vbase = v0 + sj * STR;
            for (var c = 0u; c < at.d4; c++) {
                s += dot(tiles[qb + c], tiles[kbase + c]);
                dp += dot(tiles[ob + c], tiles[vbase + c]);
            }
            pr = exp(s * p.scale - rs[sr]);
            dsr = pr * (dp - rs[K_BR + sr]);
        }
        sm[sr * PS + sj] = pr;
        sm[ds0 + sr * PS + sj] = dsr;
        workgroupBarrier();
        if ln.tx < at.d4 {
            let has1 = ln.c1 < at.d4;
            for (var r = 0u; r < K_BR; r++) {
                let qa = tiles[q0 + r * STR + ln.tx];
                let oa = tiles[do0 + r * STR + ln.tx];
                let pa = sm[r * PS + my0];
                let pb = sm[r * PS + my0 + 1u];
                let da = sm[ds0 + r * PS + my0];
                let db = sm[ds0 + r * PS + my0 + 1u];
                adv[0] += pa * oa;
                adv[2] += pb * oa;
                adk[0] += da * qa;
                adk[2] += db * qa;
                if has1 {
                    let qb = tiles[q0 + r * STR + ln.c1];
                    let ob = tiles[do0 + r * STR + ln.c1];
                    adv[1] += pa * ob;
                    adv[3] += pb * ob;
                    adk[1] += da * qb;
                    adk[3] += db * qb;
                }
            }
        }
    }

    for (var i = 0u; i < 2u; i++) {
        let key = kb0 + my0 + i;
        if key < p.tk {
            let oi = dkv_index(at.b, key, at.kvh);
            if ln.tx < at.d4 {
                dk[oi + ln.tx] = adk[2u * i] * p.scale;
                dv[oi + ln.tx] = adv[2u * i];
            }
            if ln.c1 < at.d4 {
                dk[oi + ln.c1] = adk[2u * i + 1u] * p.scale;
                dv[oi + ln.c1] = adv[2u * i + 1u];
            }
        }
    }
}
