// Softmax over the last dimension, one workgroup per row.
// Forward: one pass for the online max and sum of exp, one to write
//   y = exp(x - m) / z.
// Backward: dx = y * (dy - sum(dy * y)), one pass for the dot, one to write.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> yin: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

//#include _common
//#include _wg_reduce

// A finite "minus infinity": exp(NEG - m) is 0 and NEG - NEG is 0.
const NEG: f32 = -3.0e38;

var<workgroup> red_m: array<f32, 256>;
var<workgroup> red_z: array<f32, 256>;

@compute @workgroup_size(256)
fn softmax_fwd(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var m = NEG;
    var z = 0.0;
    var i = lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        let j = base + i;
        let v = vec4<f32>(x[j], x[j + WG], x[j + 2u * WG], x[j + 3u * WG]);
        let m1 = max(m, max(max(v.x, v.y), max(v.z, v.w)));
        let e = exp(v - m1);
        z = z * exp(m - m1) + ((e.x + e.y) + (e.z + e.w));
        m = m1;
    }
    for (; i < p.cols; i += WG) {
        let v = x[base + i];
        let m1 = max(m, v);
        z = z * exp(m - m1) + exp(v - m1);
        m = m1;
    }
    red_m[lid] = m;
    red_z[lid] = z;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k / 2u) {
        if lid < k {
            let ma = red_m[lid];
            let mb = red_m[lid + k];
            let mm = max(ma, mb);
            red_z[lid] = red_z[lid] * exp(ma - mm) + red_z[lid + k] * exp(mb - mm);
            red_m[lid] = mm;
        }
        workgroupBarrier();
    }
    let mr = red_m[0];
    let inv_z = 1.0 / red_z[0];
    for (i = lid; i + 3u * WG < p.cols; i += 4u * WG) {
        let j = base + i;
        let v = vec4<f32>(x[j], x[j + WG], x[j + 2u * WG], x[j + 3u * WG]);
        let e = exp(v - mr) * inv_z;
        y[j] = e.x;
        y[j + WG] = e.y;
        y[j + 2u * WG] = e.z;
        y[j + 3u * WG] = e.w;
    }
    for (; i < p.cols; i += WG) {
        y[base + i] = exp(x[base + i] - mr) * inv_z;
    }
}

@compute @workgroup_size(256)
fn softmax_bwd(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = folded_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var acc = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        acc += yin[base + i] * dy[base + i];
    }
    let dot_row = wg_sum(acc, lid);
    for (var i = lid; i < p.cols; i += WG) {
        let j = base + i;
        dx[j] = yin[j] * (dy[j] - dot_row);
    }
}
