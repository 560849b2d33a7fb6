// Cosine alignment loss between student (a) and teacher (b) hidden states,
// per row (token): value = 1 - cos(a, b) on counted rows (mask != 0), 0 on
// the others, with torch.nn.functional.cosine_similarity's eps handling:
//   cos = sum((a / max(|a|, eps)) * (b / max(|b|, eps)))
// and its gradient w.r.t. a (b gets none), times scale = weight / n_counted:
//   d(1 - cos)/da = -(b / (na * nb) - cos * a / (na * |a|))
// where na = max(|a|, eps), nb = max(|b|, eps). As in torch, the clamp is
// not differentiated (the norm's own gradient a / |a| is, and is 0 at a = 0).
// One workgroup per row: one pass for a.a, b.b, a.b, one to write the grad.

struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    eps: f32,
    // 1: add the gradient into ga; 0: overwrite ga.
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> val: array<f32>;
@group(0) @binding(5) var<storage, read_write> ga: array<f32>;

//#include _common

const WG: u32 = 256u;

var<workgroup> red: array<vec4<f32>, 256>;

// (a.a, b.b, a.b) of the row, summed over the workgroup.
fn row_dots(base: u32, lid: u32) -> vec3<f32> {
    var acc = vec3<f32>(0.0);
    for (var i = lid; i < p.cols; i += WG) {
        let x = a[base + i];
        let y = b[base + i];
        acc += vec3<f32>(x * x, y * y, x * y);
    }
    red[lid] = vec4<f32>(acc, 0.0);
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k / 2u) {
        if lid < k {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    return red[0].xyz;
}

struct Cos {
    cos: f32,
    // d cos / da = cb * b - ca * a
    cb: f32,
    ca: f32,
}

fn cosine(d: vec3<f32>) -> Cos {
    let la = sqrt(d.x);
    let na = max(la, p.eps);
    let nb = max(sqrt(d.y), p.eps);
    var c: Cos;
    c.cos = d.z / (na * nb);
    c.cb = 1.0 / (na * nb);
    c.ca = select(0.0, c.cos / (na * la), la > 0.0);
    return c;
}

@compute @workgroup_size(256)
fn cosine_fwd(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let c = cosine(row_dots(row * p.cols, lid));
    if lid == 0u {
        val[row] = select(0.0, 1.0 - c.cos, mask[row] != 0u);
    }
}

@compute @workgroup_size(256)
fn cosine_fwd_bwd(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let c = cosine(row_dots(base, lid));
    let counted = mask[row] != 0u;
    if lid == 0u {
        val[row] = select(0.0, 1.0 - c.cos, counted);
    }
    // d(scale * (1 - cos))/da = scale * (ca * a - cb * b)
    let sa = select(0.0, p.scale * c.ca, counted);
    let sb = select(0.0, p.scale * c.cb, counted);
    if p.accumulate == 1u {
        for (var i = lid; i < p.cols; i += WG) {
            let j = base + i;
            ga[j] = ga[j] + (sa * a[j] - sb * b[j]);
        }
    } else {
        for (var i = lid; i < p.cols; i += WG) {
            let j = base + i;
            ga[j] = sa * a[j] - sb * b[j];
        }
    }
}
