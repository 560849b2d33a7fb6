// C = alpha · op(A) · op(B) + beta · C, batched, any shape.
//
// A is f32 [M, K] (or [K, M] when TRANS_A); B is [K, N] (or [N, K] when
// TRANS_B, the Hugging Face Linear layout) in f32, bf16 or f16, always bound
// as u32 words and decoded by B_DTYPE; C is f32 [M, N]. Transposes are
// resolved while tiles are staged in workgroup memory, so dA = dC·Bᵀ and
// dB = Aᵀ·dC need no copies.
//
// Portable tiled path: a 16×16 workgroup computes a 64×64 tile of C, each
// invocation a 4×4 block strided by 16 (coalesced stores, conflict-free
// workgroup reads), K staged 16 at a time. Accumulation is f32.

//#include _common

override TRANS_A: bool = false;
override TRANS_B: bool = false;
// 0: f32, 1: bf16 (pairs packed in u32), 2: f16 (pairs packed in u32)
override B_DTYPE: u32 = 0u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    // Elements between consecutive batch entries (0 broadcasts).
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

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

// Tiles stored k-major: tile_a[k][m], tile_b[k][n].
var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

// Element e of B in its storage dtype.
fn load_b(e: u32) -> f32 {
    if B_DTYPE == 1u {
        return bf16_pick(b[e >> 1u], e);
    } else if B_DTYPE == 2u {
        let pair = unpack2x16float(b[e >> 1u]);
        return select(pair.x, pair.y, (e & 1u) == 1u);
    }
    return bitcast<f32>(b[e]);
}

@compute @workgroup_size(16, 16)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let base_a = wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = wid.z * p.stride_c;
    let tid = lid.y * 16u + lid.x;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage A: 64×16 values, 4 per invocation; consecutive invocations
        // read consecutive addresses in either layout.
        for (var r = 0u; r < 4u; r++) {
            let idx = tid + r * 256u;
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
            tile_a[kk * BM + m] = v;
        }
        // Stage B: 16×64 values.
        for (var r = 0u; r < 4u; r++) {
            let idx = tid + r * 256u;
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
            tile_b[kk * BN + n] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = tile_a[kk * BM + lid.y + 16u * i];
                bv[i] = tile_b[kk * BN + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(av[i], bv[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let gm = row0 + lid.y + 16u * i;
        if gm >= p.m {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let gn = col0 + lid.x + 16u * j;
            if gn < p.n {
                let ci = base_c + gm * p.ldc + gn;
                var v = p.alpha * acc[i * 4u + j];
                if p.beta != 0.0 {
                    v += p.beta * c[ci];
                }
                c[ci] = v;
            }
        }
    }
}
