// Parameters, bindings and tile staging shared by the matmul kernels
// (matmul.wgsl, _matmul_coop.wgsl). Needs _common (bf16_pick).

override TRANS_A: bool = false;
override TRANS_B: bool = false;
// 0: f32, 1: bf16 (pairs packed in u32), 2: f16 (pairs packed in u32),
// 3: q8 (int8 quads packed in u32, then one f32 scale per 32 values from
// word p.b_scales)
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
    // Elements before A's and C's first entry: a region inside a larger
    // tensor (a block of vocabulary columns, a chunk of token rows).
    off_a: u32,
    off_c: u32,
    b_scales: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Where batch entry z of A and of C starts.
fn base_of_a(z: u32) -> u32 {
    return z * p.stride_a + p.off_a;
}

fn base_of_c(z: u32) -> u32 {
    return z * p.stride_c + p.off_c;
}

// Element e of B in its storage dtype.
fn load_b(e: u32) -> f32 {
    if B_DTYPE == 1u {
        return bf16_pick(b[e >> 1u], e);
    } else if B_DTYPE == 2u {
        let pair = unpack2x16float(b[e >> 1u]);
        return select(pair.x, pair.y, (e & 1u) == 1u);
    } else if B_DTYPE == 3u {
        let q = extractBits(bitcast<i32>(b[e >> 2u]), (e & 3u) * 8u, 8u);
        return f32(q) * bitcast<f32>(b[p.b_scales + (e >> 5u)]);
    }
    return bitcast<f32>(b[e]);
}

// One element of a staged tile: its row and column inside the tile (m or n,
// and k) and its value, zero outside the matrix.
struct TileElem {
    mn: u32,
    k: u32,
    v: f32,
}

// Element `idx` of the bm×bk tile of op(A) at (row0, k0). Consecutive idx
// read consecutive addresses in either layout.
fn stage_a(idx: u32, bm: u32, bk: u32, row0: u32, k0: u32, base_a: u32) -> TileElem {
    var t: TileElem;
    if TRANS_A {
        t.mn = idx % bm;
        t.k = idx / bm;
    } else {
        t.mn = idx / bk;
        t.k = idx % bk;
    }
    let gm = row0 + t.mn;
    let gk = k0 + t.k;
    t.v = 0.0;
    if gm < p.m && gk < p.k {
        var ai: u32;
        if TRANS_A {
            ai = gk * p.lda + gm;
        } else {
            ai = gm * p.lda + gk;
        }
        t.v = a[base_a + ai];
    }
    return t;
}

// Element `idx` of the bk×bn tile of op(B) at (k0, col0).
fn stage_b(idx: u32, bn: u32, bk: u32, col0: u32, k0: u32, base_b: u32) -> TileElem {
    var t: TileElem;
    if TRANS_B {
        t.mn = idx / bk;
        t.k = idx % bk;
    } else {
        t.mn = idx % bn;
        t.k = idx / bn;
    }
    let gn = col0 + t.mn;
    let gk = k0 + t.k;
    t.v = 0.0;
    if gn < p.n && gk < p.k {
        var bi: u32;
        if TRANS_B {
            bi = gn * p.ldb + gk;
        } else {
            bi = gk * p.ldb + gn;
        }
        t.v = load_b(base_b + bi);
    }
    return t;
}

// C[gm, gn] = alpha * v + beta * C[gm, gn], inside the matrix only.
fn store_c(base_c: u32, gm: u32, gn: u32, v: f32) {
    if gm < p.m && gn < p.n {
        let ci = base_c + gm * p.ldc + gn;
        var r = p.alpha * v;
        if p.beta != 0.0 {
            r += p.beta * c[ci];
        }
        c[ci] = r;
    }
}
