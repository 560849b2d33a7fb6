// What rmsnorm and layernorm share (pulled in with `//#include _norm`,
// after `_common`): the parameters, the row layout of a launch and the
// per-row tree sum.
//
// Layout of a launch: 256 invocations per workgroup, `tpr` (a power of two)
// invocations per row, so 256 / tpr rows per workgroup; short rows (head_dim
// 128) then still fill a workgroup. Sums are segmented tree reductions in
// workgroup memory: fixed order, so results do not vary from run to run.

struct Params {
    rows: u32,
    n: u32,
    tpr: u32,
    eps: f32,
    chunk: u32,
    accumulate: u32,   // backward: 1 adds into dx instead of overwriting
    _p1: u32,
    _p2: u32,
}

// The weight is bound as u32 words: f32 bits, or (W_BF16) bf16 pairs as
// published. The including shader declares `w`.
override W_BF16: bool = false;

fn weight(c: u32) -> f32 {
    if W_BF16 {
        return bf16_pick(w[c >> 1u], c);
    }
    return bitcast<f32>(w[c]);
}

var<workgroup> red: array<vec2<f32>, 256>;

// Sums of `v` over the `p.tpr` invocations of a row (both components, each
// added on its own). Every invocation of the workgroup must call it (it
// has barriers).
fn row_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    let lane = lid % p.tpr;
    var s = p.tpr / 2u;
    loop {
        if s == 0u {
            break;
        }
        if lane < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
        s = s / 2u;
    }
    let total = red[lid - lane];
    workgroupBarrier();
    return total;
}

// The same for one value.
fn row_sum(v: f32, lid: u32) -> f32 {
    return row_sum2(vec2<f32>(v, 0.0), lid).x;
}

// Row handled by this invocation (may be >= p.rows: then it only joins the
// barriers).
fn row_of(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return folded_group(wid, nwg) * (256u / p.tpr) + lid / p.tpr;
}

// dx[i] = v, or dx[i] += v with `accumulate` (the including shader declares
// dx).
fn store_dx(i: u32, v: f32) {
    if p.accumulate == 1u {
        dx[i] = dx[i] + v;
    } else {
        dx[i] = v;
    }
}
