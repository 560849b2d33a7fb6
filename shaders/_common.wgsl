// Helpers shared by kernels (pulled in with `//#include _common`).

// bf16 is stored as published: two values per u32 word, the element with
// the even index in the low 16 bits. bf16 -> f32 is a 16-bit shift.
fn bf16_lo(word: u32) -> f32 {
    return bitcast<f32>(word << 16u);
}
fn bf16_hi(word: u32) -> f32 {
    return bitcast<f32>(word & 0xffff0000u);
}
fn bf16_unpack2(word: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}
// Element i of a packed bf16 array, given the word that holds it.
fn bf16_pick(word: u32, i: u32) -> f32 {
    return select(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u), (i & 1u) == 1u);
}
// f32 -> bf16 bits, rounding to nearest even (NaN stays NaN).
fn f32_to_bf16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// Linear invocation index of a 1-D launch whose grid may be folded into y
// (Gpu::grid_1d), for workgroups of `wg` invocations.
fn folded_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg;
}
// Linear workgroup index of a folded 1-D launch.
fn folded_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
