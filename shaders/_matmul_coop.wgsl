// Cooperative-matrix (tensor core) matmul body, included by
// matmul_coop16.wgsl and matmul_coop8.wgsl, which declare the fragment
// types CoopA / CoopB / CoopC and their edge S (16 or 8) first.
//
// Same contract as matmul.wgsl: C = alpha · op(A) · op(B) + beta · C, batched,
// any shape; A f32, B f32 / bf16 / f16 (u32 words, decoded by B_DTYPE), C f32.
//
// A workgroup computes a BM×BN = 4S×4S tile of C with four subgroups in a
// 2×2 arrangement, each owning TM×TN = 2×2 fragments (2S×2S outputs). K is
// staged BK = 2S at a time into workgroup memory, converted to f16 on the way
// in; the transposes and B's dtype are resolved there, and out-of-range rows
// and columns are staged as zeros, so fragments never read past the matrix.
// Accumulation is f32. The accumulators go through workgroup memory at the
// end so that alpha, beta and the ragged edges are applied per element.
//
// The workgroup has WG invocations, set by the launcher to four subgroups of
// the adapter's largest subgroup size. Cooperative operations need
// workgroup-uniform control flow, so every subgroup takes part: if the
// driver forms smaller subgroups, those past the fourth repeat the fragments
// of subgroup sg % 4 (the same values, stored to the same places).

//#include _common

override TRANS_A: bool = false;
override TRANS_B: bool = false;
// 0: f32, 1: bf16 (pairs packed in u32), 2: f16 (pairs packed in u32)
override B_DTYPE: u32 = 0u;
override WG: u32 = 128u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TM: u32 = 2u;
const TN: u32 = 2u;
const BM: u32 = 2u * TM * S;
const BN: u32 = 2u * TN * S;
const BK: u32 = 2u * S;

// Row-major staging: ta[m][k] (stride BK), tb[k][n] (stride BN), tc[m][n].
var<workgroup> ta: array<f16, BM * BK>;
var<workgroup> tb: array<f16, BK * BN>;
var<workgroup> tc: array<f32, BM * BN>;

fn load_b(e: u32) -> f32 {
    if B_DTYPE == 1u {
        return bf16_pick(b[e >> 1u], e);
    } else if B_DTYPE == 2u {
        let pair = unpack2x16float(b[e >> 1u]);
        return select(pair.x, pair.y, (e & 1u) == 1u);
    }
    return bitcast<f32>(b[e]);
}

@compute @workgroup_size(WG)
fn matmul_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let base_a = wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = wid.z * p.stride_c;
    // This subgroup's corner inside the workgroup tile.
    let q = sg % 4u;
    let sm = (q / 2u) * TM * S;
    let sn = (q % 2u) * TN * S;

    var acc: array<CoopC, TM * TN>;
    for (var i = 0u; i < TM * TN; i++) {
        acc[i] = CoopC();
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage A (BM×BK); consecutive invocations read consecutive
        // addresses in either layout.
        for (var idx = li; idx < BM * BK; idx += WG) {
            var m: u32;
            var kk: u32;
            if TRANS_A {
                m = idx % BM;
                kk = idx / BM;
            } else {
                m = idx / BK;
                kk = idx % BK;
            }
            let gm = row0 + m;
            let gk = k0 + kk;
            var v = 0.0;
            if gm < p.m && gk < p.k {
                var ai: u32;
                if TRANS_A {
                    ai = gk * p.lda + gm;
                } else {
                    ai = gm * p.lda + gk;
                }
                v = a[base_a + ai];
            }
            let dst = m * BK + kk;
            ta[dst] = f16(v);
        }
        // Stage B (BK×BN).
        for (var idx = li; idx < BK * BN; idx += WG) {
            var n: u32;
            var kk: u32;
            if TRANS_B {
                n = idx / BK;
                kk = idx % BK;
            } else {
                n = idx % BN;
                kk = idx / BN;
            }
            let gn = col0 + n;
            let gk = k0 + kk;
            var v = 0.0;
            if gn < p.n && gk < p.k {
                var bi: u32;
                if TRANS_B {
                    bi = gn * p.ldb + gk;
                } else {
                    bi = gk * p.ldb + gn;
                }
                v = load_b(base_b + bi);
            }
            let dst = kk * BN + n;
            tb[dst] = f16(v);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += S) {
            var fa: array<CoopA, TM>;
            var fb: array<CoopB, TN>;
            for (var i = 0u; i < TM; i++) {
                let ia = (sm + i * S) * BK + kk;
                fa[i] = coopLoadT<CoopA>(&ta[ia], BK);
            }
            for (var j = 0u; j < TN; j++) {
                let ib = kk * BN + sn + j * S;
                fb[j] = coopLoadT<CoopB>(&tb[ib], BN);
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    let t = i * TN + j;
                    acc[t] = coopMultiplyAdd(fa[i], fb[j], acc[t]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            let t = i * TN + j;
            let ic = (sm + i * S) * BN + sn + j * S;
            coopStoreT(acc[t], &tc[ic], BN);
        }
    }
    workgroupBarrier();
    // Epilogue: consecutive invocations write consecutive columns.
    for (var idx = li; idx < BM * BN; idx += WG) {
        let gm = row0 + idx / BN;
        let gn = col0 + idx % BN;
        if gm < p.m && gn < p.n {
            let ci = base_c + gm * p.ldc + gn;
            var v = p.alpha * tc[idx];
            if p.beta != 0.0 {
                v += p.beta * c[ci];
            }
            c[ci] = v;
        }
    }
}
