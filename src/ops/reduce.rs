//! Reductions: sum and max over the last dimension per row, and the sum of
//! a whole tensor (two deterministic stages: fixed 4096-element chunks,
//! then one workgroup over the chunk sums). Rows may be vocabulary-long
//! (151,936): one workgroup per row strides over it.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    _pad: u32,
}

const CHUNK: usize = 4096;

/// (rows, cols, output shape) of a reduction over the last dimension.
pub(crate) fn rows_of(op: &str, x: &Tensor) -> Result<(usize, usize, Vec<usize>)> {
    if x.dtype() != DType::F32 || x.shape().is_empty() {
        shape_bail!("{op}: expects an f32 tensor with at least one dimension, got {x:?}");
    }
    let cols = x.dim(-1);
    if cols == 0 {
        shape_bail!(
            "{op}: cannot reduce an empty last dimension ({:?})",
            x.shape()
        );
    }
    if x.numel() > u32::MAX as usize {
        shape_bail!("{op}: {x:?} exceeds 32-bit indexing; split it");
    }
    let rows = x.numel() / cols;
    let mut shape = x.shape()[..x.shape().len() - 1].to_vec();
    if shape.is_empty() {
        shape.push(1);
    }
    Ok((rows, cols, shape))
}

fn row_reduce(rec: &mut Recorder, x: &Tensor, entry: &str) -> Result<Tensor> {
    let (rows, cols, shape) = rows_of(entry, x)?;
    let out = Tensor::empty(rec.gpu(), "reduce.out", &shape, DType::F32)?;
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        n: 0,
        _pad: 0,
    };
    launch::per_group(rec, "reduce", entry, &[("x", x), ("out", &out)], &p, rows)?;
    Ok(out)
}

/// Sum over the last dimension: shape without it ([1] for a vector).
pub fn row_sum(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    row_reduce(rec, x, "row_sum")
}

/// Max over the last dimension: shape without it ([1] for a vector).
pub fn row_max(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    row_reduce(rec, x, "row_max")
}

/// Sum of every element: f32 [1]. Deterministic (same order every run).
pub fn sum(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || x.numel() > u32::MAX as usize {
        shape_bail!("sum: expects an f32 tensor within 32-bit indexing, got {x:?}");
    }
    let gpu = rec.gpu();
    let n = x.numel();
    let chunks = n.div_ceil(CHUNK);
    let out = Tensor::empty(gpu, "sum.out", &[1], DType::F32)?;
    let partials = Tensor::empty(gpu, "sum.partials", &[chunks.max(1)], DType::F32)?;
    let p = Params {
        rows: 0,
        cols: 0,
        n: n as u32,
        _pad: 0,
    };
    launch::per_group(
        rec,
        "reduce",
        "sum_partial",
        &[("x", x), ("partials", &partials)],
        &p,
        chunks,
    )?;
    let p2 = Params {
        n: chunks as u32,
        ..p
    };
    launch::dispatch(
        rec,
        "reduce",
        "sum_finish",
        &[("partials", &partials), ("out", &out)],
        &p2,
        [1, 1, 1],
    )?;
    Ok(out)
}

pub mod cpu {
    pub fn row_sum(x: &[f32], cols: usize) -> Vec<f32> {
        x.chunks(cols)
            .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() as f32)
            .collect()
    }
    pub fn row_max(x: &[f32], cols: usize) -> Vec<f32> {
        x.chunks(cols)
            .map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max))
            .collect()
    }
    pub fn sum(x: &[f32]) -> f32 {
        x.iter().map(|&v| v as f64).sum::<f64>() as f32
    }
}
