// dtype conversions between f32 and the packed 16-bit formats (two values
// per u32 word, the even element in the low half). One invocation per
// packed word, i.e. per pair of elements.
//   f32 -> bf16: round to nearest even, NaN stays NaN (= half::bf16::from_f32)
//   f32 -> f16:  round to nearest even in integer arithmetic, overflow to
//                inf, subnormals, NaN (= half::f16::from_f32). Not
//                pack2x16float: WGSL leaves its result for values outside the
//                f16 range indeterminate, and its rounding to the driver.
//   bf16 -> f32: a shift;  f16 -> f32: unpack2x16float (exact).

struct Params {
    n: u32,      // elements
    src_off: u32, // kv_to_f16: first element read (even)
    dst_off: u32, // kv_to_f16: first word written
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src_f32: array<f32>;
@group(0) @binding(2) var<storage, read> src_u32: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst_f32: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst_u32: array<u32>;

@group(0) @binding(5) var<storage, read> src2_f32: array<f32>;
@group(0) @binding(6) var<storage, read_write> dst2_u32: array<u32>;

//#include _common

//#include _f16

fn pair_f32(w: u32) -> vec2<f32> {
    let i = 2u * w;
    var hi = 0.0;
    if i + 1u < p.n {
        hi = src_f32[i + 1u];
    }
    return vec2<f32>(src_f32[i], hi);
}

fn store_pair(w: u32, v: vec2<f32>) {
    let i = 2u * w;
    dst_f32[i] = v.x;
    if i + 1u < p.n {
        dst_f32[i + 1u] = v.y;
    }
}

@compute @workgroup_size(256)
fn f32_to_bf16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = folded_index(gid, nwg, 256u);
    if 2u * w >= p.n {
        return;
    }
    let v = pair_f32(w);
    dst_u32[w] = f32_to_bf16_bits(v.x) | (f32_to_bf16_bits(v.y) << 16u);
}

@compute @workgroup_size(256)
fn f32_to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = folded_index(gid, nwg, 256u);
    if 2u * w >= p.n {
        return;
    }
    let v = pair_f32(w);
    dst_u32[w] = f32_to_f16_bits(v.x) | (f32_to_f16_bits(v.y) << 16u);
}

@compute @workgroup_size(256)
fn bf16_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = folded_index(gid, nwg, 256u);
    if 2u * w >= p.n {
        return;
    }
    store_pair(w, bf16_unpack2(src_u32[w]));
}

@compute @workgroup_size(256)
fn f16_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = folded_index(gid, nwg, 256u);
    if 2u * w >= p.n {
        return;
    }
    store_pair(w, unpack2x16float(src_u32[w]));
}

// New rows of a 16-bit KV cache: elements [src_off, src_off + n) of the
// f32 keys (src_f32) and values (src2_f32) to f16 words from dst_off of
// the cache blocks (dst_u32, dst2_u32). n and src_off are even.
@compute @workgroup_size(256)
fn kv_to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = folded_index(gid, nwg, 256u);
    if 2u * w >= p.n {
        return;
    }
    let i = p.src_off + 2u * w;
    dst_u32[p.dst_off + w] = f32_to_f16_bits(src_f32[i]) | (f32_to_f16_bits(src_f32[i + 1u]) << 16u);
    dst2_u32[p.dst_off + w] = f32_to_f16_bits(src2_f32[i]) | (f32_to_f16_bits(src2_f32[i + 1u]) << 16u);
}
