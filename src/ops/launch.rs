//! The launch steps most ops share: find the kernel, pass the op's
//! parameter struct as the uniform, and pick the workgroup grid for the two
//! common layouts (one invocation per element, one workgroup per row or
//! chunk).
//! Ops with their own grids call [`dispatch`] directly.

use bytemuck::Pod;

use crate::error::Result;
use crate::gpu::{Recorder, Tensor};

/// Invocations per workgroup of the one-invocation-per-element kernels
/// (their `@workgroup_size(256)`).
pub(crate) const WG: u32 = 256;

/// Record `shader::entry` over `args` with `params` on `groups` workgroups.
pub(crate) fn dispatch<P: Pod>(
    rec: &mut Recorder,
    shader: &str,
    entry: &str,
    args: &[(&str, &Tensor)],
    params: &P,
    groups: [u32; 3],
) -> Result<()> {
    dispatch_with(rec, (shader, entry), &[], args, params, groups)
}

/// `dispatch` with WGSL `override` constants set (`Gpu::kernel_with`).
pub(crate) fn dispatch_with<P: Pod>(
    rec: &mut Recorder,
    (shader, entry): (&str, &str),
    constants: &[(&str, f64)],
    args: &[(&str, &Tensor)],
    params: &P,
    groups: [u32; 3],
) -> Result<()> {
    let k = rec.gpu().kernel_with(shader, entry, constants)?;
    rec.dispatch(&k, args, bytemuck::bytes_of(params), groups)
}

/// One invocation per item, [`WG`] to a workgroup (the grid folded into y
/// when long, see `Gpu::grid_1d`). No items, no launch. `items` must fit
/// in u32 (callers check the tensor sizes first).
pub(crate) fn per_item<P: Pod>(
    rec: &mut Recorder,
    shader: &str,
    entry: &str,
    args: &[(&str, &Tensor)],
    params: &P,
    items: usize,
) -> Result<()> {
    per_item_with(rec, (shader, entry), &[], args, params, items)
}

/// `per_item` with WGSL `override` constants set.
pub(crate) fn per_item_with<P: Pod>(
    rec: &mut Recorder,
    kernel: (&str, &str),
    constants: &[(&str, f64)],
    args: &[(&str, &Tensor)],
    params: &P,
    items: usize,
) -> Result<()> {
    if items == 0 {
        return Ok(());
    }
    let groups = rec.gpu().grid_1d((items as u32).div_ceil(WG));
    dispatch_with(rec, kernel, constants, args, params, groups)
}

/// One workgroup per group of work (a row, a chunk), the grid folded into y
/// when long. No groups, no launch.
pub(crate) fn per_group<P: Pod>(
    rec: &mut Recorder,
    shader: &str,
    entry: &str,
    args: &[(&str, &Tensor)],
    params: &P,
    groups: usize,
) -> Result<()> {
    if groups == 0 {
        return Ok(());
    }
    let groups = rec.gpu().grid_1d(groups as u32);
    dispatch(rec, shader, entry, args, params, groups)
}
