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
//#include _matmul_io

override WG: u32 = 128u;

const TM: u32 = 2u;
const TN: u32 = 2u;
const BM: u32 = 2u * TM * S;
const BN: u32 = 2u * TN * S;
const BK: u32 = 2u * S;

// Row-major staging: ta[m][k] (stride BK), tb[k][n] (stride BN), tc[m][n].
var<workgroup> ta: array<f16, BM * BK>;
var<workgroup> tb: array<f16, BK * BN>;
var<workgroup> tc: array<f32, BM * BN>;

@compute @workgroup_size(WG)
fn matmul_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let base_a = base_of_a(wid.z);
    let base_b = wid.z * p.stride_b;
    let base_c = base_of_c(wid.z);
    // This subgroup's corner inside the workgroup tile.
    let q = sg % 4u;
    let sm = (q / 2u) * TM * S;
    let sn = (q % 2u) * TN * S;

    var acc: array<CoopC, TM * TN>;
    for (var i = 0u; i < TM * TN; i++) {
        acc[i] = CoopC();
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage A (BM×BK) and B (BK×BN) as f16, row-major.
        for (var idx = li; idx < BM * BK; idx += WG) {
            let t = stage_a(idx, BM, BK, row0, k0, base_a);
            let dst = t.mn * BK + t.k;
            ta[dst] = f16(t.v);
        }
        for (var idx = li; idx < BK * BN; idx += WG) {
            let t = stage_b(idx, BN, BK, col0, k0, base_b);
            let dst = t.k * BN + t.mn;
            tb[dst] = f16(t.v);
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
        store_c(base_c, row0 + idx / BN, col0 + idx % BN, tc[idx]);
    }
}
