// C = alpha · op(A) · op(B) + beta · C, batched, any shape.
//
// A is f32 [M, K] (or [K, M] when TRANS_A); B is [K, N] (or [N, K] when
// TRANS_B, the Hugging Face Linear layout) in f32, bf16, f16 or q8, always bound
// as u32 words and decoded by B_DTYPE; C is f32 [M, N]. Transposes are
// resolved while tiles are staged in workgroup memory, so dA = dC·Bᵀ and
// dB = Aᵀ·dC need no copies.
//
// Portable tiled path: a 16×16 workgroup computes a 64×64 tile of C, each
// invocation a 4×4 block strided by 16 (coalesced stores, conflict-free
// workgroup reads), K staged 16 at a time. Accumulation is f32.

//#include _common
//#include _matmul_io

// The same tensors seen as 4-wide vectors by the vectorised direct path.
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> b4: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> b2: array<vec2<u32>>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

// Tiles stored k-major: tile_a[k][m], tile_b[k][n].
var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let base_a = base_of_a(wid.z);
    let base_b = wid.z * p.stride_b;
    let base_c = base_of_c(wid.z);
    let tid = lid.y * 16u + lid.x;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage A: 64×16 values, 4 per invocation.
        for (var r = 0u; r < 4u; r++) {
            let t = stage_a(tid + r * 256u, BM, BK, row0, k0, base_a);
            tile_a[t.k * BM + t.mn] = t.v;
        }
        // Stage B: 16×64 values.
        for (var r = 0u; r < 4u; r++) {
            let t = stage_b(tid + r * 256u, BN, BK, col0, k0, base_b);
            tile_b[t.k * BN + t.mn] = t.v;
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
        for (var j = 0u; j < 4u; j++) {
            store_c(base_c, row0 + lid.y + 16u * i, col0 + lid.x + 16u * j, acc[i * 4u + j]);
        }
    }
}

// Direct path for CPU adapters (lavapipe), where barriers and workgroup
// memory cost more than they save: each invocation computes a 4×4 block of
// C straight from global memory. Edge rows and columns are clamped on load
// and skipped on store, so any shape works.
fn load_a(e: u32) -> f32 {
    return a[e];
}

fn a_index(base: u32, row: u32, kk: u32) -> u32 {
    if TRANS_A {
        return base + kk * p.lda + row;
    }
    return base + row * p.lda + kk;
}

fn b_index(base: u32, kk: u32, col: u32) -> u32 {
    if TRANS_B {
        return base + col * p.ldb + kk;
    }
    return base + kk * p.ldb + col;
}

@compute @workgroup_size(8, 8)
fn matmul_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    let base_a = base_of_a(gid.z);
    let base_b = gid.z * p.stride_b;
    let base_c = base_of_c(gid.z);
    var rows: array<u32, 4>;
    var cols: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        rows[i] = min(row0 + i, p.m - 1u);
        cols[i] = min(col0 + i, p.n - 1u);
    }
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var kk = 0u; kk < p.k; kk++) {
        var av: array<f32, 4>;
        var bv: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) {
            av[i] = load_a(a_index(base_a, rows[i], kk));
            bv[i] = load_b(b_index(base_b, kk, cols[i]));
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                acc[i * 4u + j] = fma(av[i], bv[j], acc[i * 4u + j]);
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let gm = row0 + i;
        if gm >= p.m {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            store_c(base_c, gm, col0 + j, acc[i * 4u + j]);
        }
    }
}

// Four consecutive elements of B starting at e (a multiple of 4).
fn load_b4(e: u32) -> vec4<f32> {
    if B_DTYPE == 1u {
        let w = b2[e >> 2u];
        return vec4<f32>(bf16_unpack2(w.x), bf16_unpack2(w.y));
    } else if B_DTYPE == 2u {
        let w = b2[e >> 2u];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    } else if B_DTYPE == 3u {
        // Four int8s of one block (e is a multiple of 4, blocks of 32).
        let w = bitcast<i32>(b[e >> 2u]);
        let q = vec4<i32>(
            extractBits(w, 0u, 8u),
            extractBits(w, 8u, 8u),
            extractBits(w, 16u, 8u),
            extractBits(w, 24u, 8u),
        );
        return vec4<f32>(q) * bitcast<f32>(b[p.b_scales + (e >> 5u)]);
    }
    return bitcast<vec4<f32>>(b4[e >> 2u]);
}

// One 4×4 block of op(A) at (row0, kk): columns of the returned matrix are
// the block's columns.
fn block_a(base: u32, row0: u32, kk: u32) -> mat4x4<f32> {
    if TRANS_A {
        return mat4x4<f32>(
            a4[(base + kk * p.lda + row0) >> 2u],
            a4[(base + (kk + 1u) * p.lda + row0) >> 2u],
            a4[(base + (kk + 2u) * p.lda + row0) >> 2u],
            a4[(base + (kk + 3u) * p.lda + row0) >> 2u],
        );
    }
    let last = p.m - 1u;
    return transpose(mat4x4<f32>(
        a4[(base + min(row0, last) * p.lda + kk) >> 2u],
        a4[(base + min(row0 + 1u, last) * p.lda + kk) >> 2u],
        a4[(base + min(row0 + 2u, last) * p.lda + kk) >> 2u],
        a4[(base + min(row0 + 3u, last) * p.lda + kk) >> 2u],
    ));
}

// One 4×4 block of op(B) at (kk, col0).
fn block_b(base: u32, kk: u32, col0: u32) -> mat4x4<f32> {
    if TRANS_B {
        let last = p.n - 1u;
        return mat4x4<f32>(
            load_b4(base + min(col0, last) * p.ldb + kk),
            load_b4(base + min(col0 + 1u, last) * p.ldb + kk),
            load_b4(base + min(col0 + 2u, last) * p.ldb + kk),
            load_b4(base + min(col0 + 3u, last) * p.ldb + kk),
        );
    }
    return transpose(mat4x4<f32>(
        load_b4(base + kk * p.ldb + col0),
        load_b4(base + (kk + 1u) * p.ldb + col0),
        load_b4(base + (kk + 2u) * p.ldb + col0),
        load_b4(base + (kk + 3u) * p.ldb + col0),
    ));
}

fn store_block(base: u32, row0: u32, col0: u32, blk: mat4x4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        let gn = col0 + j;
        if gn >= p.n {
            break;
        }
        let col = blk[j];
        for (var i = 0u; i < 4u; i++) {
            store_c(base, row0 + i, gn, col[i]);
        }
    }
}

// Vectorised direct path: 4×4 blocks of A and B are loaded as four vec4
// each (along whichever axis is contiguous in memory) and multiplied as
// mat4x4, so the layout only decides where a transpose goes. Needs K, and
// the contiguous axes of A and B, to be multiples of 4 (the launcher
// checks and falls back to matmul_direct otherwise).
@compute @workgroup_size(8, 8)
fn matmul_direct4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    let base_a = base_of_a(gid.z);
    let base_b = gid.z * p.stride_b;
    var acc = mat4x4<f32>();
    for (var kk = 0u; kk < p.k; kk += 4u) {
        acc += block_a(base_a, row0, kk) * block_b(base_b, kk, col0);
    }
    store_block(base_of_c(gid.z), row0, col0, acc);
}

// 8×8 per invocation: four 4×4 accumulators, half the loads per FMA of
// matmul_direct4.
@compute @workgroup_size(8, 8)
fn matmul_direct8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 8u;
    let col0 = gid.x * 8u;
    if row0 >= p.m || col0 >= p.n {
        return;
    }
    let base_a = base_of_a(gid.z);
    let base_b = gid.z * p.stride_b;
    let base_c = base_of_c(gid.z);
    // With TRANS_A the second row block must exist (m is a multiple of 4).
    let row1 = select(row0 + 4u, row0, TRANS_A && row0 + 4u >= p.m);
    let col1 = select(col0 + 4u, col0, !TRANS_B && col0 + 4u >= p.n);
    var c00 = mat4x4<f32>();
    var c01 = mat4x4<f32>();
    var c10 = mat4x4<f32>();
    var c11 = mat4x4<f32>();
    for (var kk = 0u; kk < p.k; kk += 4u) {
        let a0 = block_a(base_a, row0, kk);
        let a1 = block_a(base_a, row1, kk);
        let b0 = block_b(base_b, kk, col0);
        let b1 = block_b(base_b, kk, col1);
        c00 += a0 * b0;
        c01 += a0 * b1;
        c10 += a1 * b0;
        c11 += a1 * b1;
    }
    store_block(base_c, row0, col0, c00);
    if col0 + 4u < p.n {
        store_block(base_c, row0, col0 + 4u, c01);
    }
    if row0 + 4u < p.m {
        store_block(base_c, row0 + 4u, col0, c10);
        if col0 + 4u < p.n {
            store_block(base_c, row0 + 4u, col0 + 4u, c11);
        }
    }
}
