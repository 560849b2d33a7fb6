// A cached pass's rotary embedding and KV write in one launch: the
// queries are rotated in place, the keys rotated into their cache rows and
// the values copied beside them, in the cache's dtype (f32, or f16 rounded
// as half::f16::from_f32 when KV_F16). Rotation as rope.wgsl ("rotate
// half": pair i < rot/2 with i + rot/2; elements rot..head_dim pass
// through).
//
// One invocation per (token, head, 4 elements): two adjacent rotation
// pairs (i, i + 1) with i even, so that every f16 word it writes holds two
// of its own elements; rot/2 must be even. Heads 0..q_heads are the
// queries', the rest the keys' and values'. Tokens [0, tokens) of q, k, v
// start at row src_row; their cache rows at dst_row.

struct Params {
    total: u32,     // tokens * (q_heads + kv_heads) * head_dim / 4
    q_heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rot_half: u32,
    max_pos: u32,
    src_row: u32,
    dst_row: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read> k: array<f32>;
@group(0) @binding(6) var<storage, read> v: array<f32>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(9) var<storage, read_write> k_cache16: array<u32>;
@group(0) @binding(10) var<storage, read_write> v_cache16: array<u32>;

override KV_F16: bool = false;

//#include _common
//#include _f16

// Element e of the row, and e + 1, into the cache at element d (even).
fn store2(d: u32, k0: f32, k1: f32, v0: f32, v1: f32) {
    if KV_F16 {
        k_cache16[d >> 1u] = f32_to_f16_bits(k0) | (f32_to_f16_bits(k1) << 16u);
        v_cache16[d >> 1u] = f32_to_f16_bits(v0) | (f32_to_f16_bits(v1) << 16u);
    } else {
        k_cache[d] = k0;
        k_cache[d + 1u] = k1;
        v_cache[d] = v0;
        v_cache[d + 1u] = v1;
    }
}

@compute @workgroup_size(256)
fn rope_kv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = folded_index(gid, nwg, 256u);
    if g >= p.total {
        return;
    }
    let quads = p.head_dim / 4u;
    let heads = p.q_heads + p.kv_heads;
    let i = 2u * (g % quads);
    let h = (g / quads) % heads;
    let t = g / (quads * heads);
    let pos = min(positions[p.src_row + t], p.max_pos - 1u);
    let rotated = i < p.rot_half;
    var cs0 = vec2<f32>(1.0, 0.0);
    var cs1 = vec2<f32>(1.0, 0.0);
    if rotated {
        cs0 = vec2<f32>(cos_t[pos * p.rot_half + i], sin_t[pos * p.rot_half + i]);
        cs1 = vec2<f32>(cos_t[pos * p.rot_half + i + 1u], sin_t[pos * p.rot_half + i + 1u]);
    }
    // The four elements: two pairs (e1, e1 + rot/2) when rotated, else
    // pairs i and i + 1 pass through as elements 2i .. 2i + 3 (pair i >=
    // rot/2 stands for elements rot + 2(i - rot/2), as in rope.wgsl).
    var e1 = i;
    var e2 = i + p.rot_half;
    if !rotated {
        e1 = 2u * i;
        e2 = e1 + 2u;
    }
    if h < p.q_heads {
        if rotated {
            let base = ((p.src_row + t) * p.q_heads + h) * p.head_dim;
            let a0 = q[base + e1];
            let a1 = q[base + e1 + 1u];
            let b0 = q[base + e2];
            let b1 = q[base + e2 + 1u];
            q[base + e1] = a0 * cs0.x - b0 * cs0.y;
            q[base + e1 + 1u] = a1 * cs1.x - b1 * cs1.y;
            q[base + e2] = b0 * cs0.x + a0 * cs0.y;
            q[base + e2 + 1u] = b1 * cs1.x + a1 * cs1.y;
        }
        return;
    }
    let kvh = h - p.q_heads;
    let src = ((p.src_row + t) * p.kv_heads + kvh) * p.head_dim;
    let dst = ((p.dst_row + t) * p.kv_heads + kvh) * p.head_dim;
    let a0 = k[src + e1];
    let a1 = k[src + e1 + 1u];
    let b0 = k[src + e2];
    let b1 = k[src + e2 + 1u];
    if rotated {
        store2(dst + e1, a0 * cs0.x - b0 * cs0.y, a1 * cs1.x - b1 * cs1.y, v[src + e1], v[src + e1 + 1u]);
        store2(dst + e2, b0 * cs0.x + a0 * cs0.y, b1 * cs1.x + a1 * cs1.y, v[src + e2], v[src + e2 + 1u]);
    } else {
        store2(dst + e1, a0, a1, v[src + e1], v[src + e1 + 1u]);
        store2(dst + e2, b0, b1, v[src + e2], v[src + e2 + 1u]);
    }
}
