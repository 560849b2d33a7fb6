// Workgroup tree sum for 256-invocation workgroups (pulled in with
// `//#include _wg_reduce`): a fixed order, so results repeat bit for bit.

const WG: u32 = 256u;

var<workgroup> red: array<f32, 256>;

// Sum of `val` over the workgroup, returned to every invocation. Every
// invocation must call it (it has barriers); `red` is free again after it.
fn wg_sum(val: f32, lid: u32) -> f32 {
    red[lid] = val;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k / 2u) {
        if lid < k {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
