// Rotary position embeddings, "rotate half" layout as Hugging Face: within
// each head, element i < rot/2 pairs with i + rot/2:
//   out[i]         = x[i] * cos - x[i + rot/2] * sin
//   out[i + rot/2] = x[i + rot/2] * cos + x[i] * sin
// with cos/sin = tables[positions[token], i] (host-built, [max_pos, rot/2]).
// Elements rot..head_dim pass through (partial rotary, Pythia).
// Backward is the rotation by -angle: the same kernels with sign = -1.
// x is [tokens, heads * head_dim]; one invocation per (token, head, pair).

struct Params {
    total: u32,      // tokens * heads * pairs
    heads: u32,
    head_dim: u32,
    rot_half: u32,
    pairs: u32,      // invocations per head: head_dim/2 (out of place) or rot/2 (in place)
    max_pos: u32,
    sign: f32,       // +1 forward, -1 backward
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read> xin: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> xio: array<f32>;

//#include _common

struct Site {
    base: u32,   // first element of the head
    i: u32,      // pair index within the head
    cs: vec2<f32>,
}

fn site(g: u32) -> Site {
    let i = g % p.pairs;
    let th = g / p.pairs;
    let t = th / p.heads;
    var s: Site;
    s.base = th * p.head_dim;
    s.i = i;
    if i < p.rot_half {
        let pos = min(positions[t], p.max_pos - 1u);
        let k = pos * p.rot_half + i;
        s.cs = vec2<f32>(cos_t[k], p.sign * sin_t[k]);
    }
    return s;
}

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = folded_index(gid, nwg, 256u);
    if g >= p.total {
        return;
    }
    let s = site(g);
    if s.i < p.rot_half {
        let i1 = s.base + s.i;
        let i2 = i1 + p.rot_half;
        let a = xin[i1];
        let b = xin[i2];
        out[i1] = a * s.cs.x - b * s.cs.y;
        out[i2] = b * s.cs.x + a * s.cs.y;
    } else {
        let j = s.base + 2u * s.i;   // = base + rot + 2 * (i - rot/2)
        out[j] = xin[j];
        out[j + 1u] = xin[j + 1u];
    }
}

// In place (one read_write binding); only the rotated pairs are visited.
@compute @workgroup_size(256)
fn rope_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = folded_index(gid, nwg, 256u);
    if g >= p.total {
        return;
    }
    let s = site(g);
    let i1 = s.base + s.i;
    let i2 = i1 + p.rot_half;
    let a = xio[i1];
    let b = xio[i2];
    xio[i1] = a * s.cs.x - b * s.cs.y;
    xio[i2] = b * s.cs.x + a * s.cs.y;
}
