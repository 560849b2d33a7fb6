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
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src_f32: array<f32>;
@group(0) @binding(2) var<storage, read> src_u32: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst_f32: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst_u32: array<u32>;

//#include _common

// f32 -> IEEE binary16 bits, as half's f32_to_f16_fallback.
fn f32_to_f16_bits(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let e = (x >> 23u) & 0xffu;
    let man = x & 0x7fffffu;
    if e == 0xffu {
        // inf, or NaN with the quiet bit set and the top mantissa bits kept
        return sign | 0x7c00u | select(0u, 0x200u, man != 0u) | (man >> 13u);
    }
    let he = i32(e) - 127 + 15;
    if he >= 0x1f {
        return sign | 0x7c00u;
    }
    if he <= 0 {
        if 14 - he > 24 {
            return sign;
        }
        let m = man | 0x800000u;
        let sh = u32(14 - he);
        var hm = m >> sh;
        let round_bit = 1u << (sh - 1u);
        if (m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u {
            hm += 1u;
        }
        return sign | hm;
    }
    let bits = sign | (u32(he) << 10u) | (man >> 13u);
    if (man & 0x1000u) != 0u && (man & 0x2fffu) != 0u {
        return bits + 1u;
    }
    return bits;
}

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
