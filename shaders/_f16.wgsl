// f32 -> IEEE binary16 rounding shared by the kernels that write f16:
// round to nearest even in integer arithmetic, overflow to inf,
// subnormals and NaN kept (= half::f16::from_f32).

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
