//! Argmax over the last dimension (greedy sampling): u32 index per row,
//! the lowest index on ties; NaNs never win (a row of NaNs gives 0).
//! Many rows: one workgroup per row. Few long rows (decoding one token over
//! a 151,936-word vocabulary): each row is split over 4096-element chunks
//! reduced by separate workgroups, then merged in order.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::ops::reduce::rows_of;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    chunks: u32,
    _pad: u32,
}

const CHUNK: usize = 4096;

/// Index of the largest element of each row (shape without the last
/// dimension, [1] for a vector), u32.
pub fn argmax(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    let (rows, cols, _) = rows_of("argmax", x)?;
    // Split rows when there are too few to fill a GPU with one workgroup each.
    let split = cols >= 4 * CHUNK && rows < 256;
    argmax_with(rec, x, split)
}

/// `argmax` with the path chosen by the caller (`split`: chunked rows).
pub fn argmax_with(rec: &mut Recorder, x: &Tensor, split: bool) -> Result<Tensor> {
    let (rows, cols, shape) = rows_of("argmax", x)?;
    let gpu = rec.gpu();
    let idx = Tensor::empty(gpu, "argmax.idx", &shape, DType::U32)?;
    let chunks = cols.div_ceil(CHUNK);
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        chunks: chunks as u32,
        _pad: 0,
    };
    let lim = gpu.caps.limits.max_compute_workgroups_per_dimension as usize;
    if !split || rows > lim || chunks > lim {
        let args = [("x", x), ("idx", &idx)];
        launch::per_group(rec, "argmax", "argmax_rows", &args, &p, rows)?;
        return Ok(idx);
    }
    let pv = Tensor::empty(gpu, "argmax.part_val", &[rows * chunks], DType::F32)?;
    let pi = Tensor::empty(gpu, "argmax.part_idx", &[rows * chunks], DType::U32)?;
    launch::dispatch(
        rec,
        "argmax",
        "argmax_partial",
        &[("x", x), ("part_val", &pv), ("part_idx", &pi)],
        &p,
        [chunks as u32, rows as u32, 1],
    )?;
    let args = [("part_val", &pv), ("part_idx", &pi), ("idx", &idx)];
    launch::per_group(rec, "argmax", "argmax_finish", &args, &p, rows)?;
    Ok(idx)
}

pub mod cpu {
    /// First index of the maximum of each row (NaNs ignored; 0 if none).
    pub fn argmax(x: &[f32], cols: usize) -> Vec<u32> {
        x.chunks(cols)
            .map(|r| {
                let mut best: Option<(f32, usize)> = None;
                for (i, &v) in r.iter().enumerate() {
                    if v.is_nan() {
                        continue;
                    }
                    if best.is_none_or(|(b, _)| v > b) {
                        best = Some((v, i));
                    }
                }
                best.map_or(0, |(_, i)| i as u32)
            })
            .collect()
    }
}
