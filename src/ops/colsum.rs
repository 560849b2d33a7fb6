//! Deterministic column sums: `out[c] = Σ_r x[r, c]` over a row-major
//! `[rows, n]` f32 matrix (the last dimension is `n`, everything before it
//! is rows). Used for bias gradients and, through [`sum_partials`], to finish
//! the per-chunk weight-gradient partials of the norm backward kernels.
//!
//! Rows are cut into chunks of [`chunk_rows`] consecutive rows, one partial
//! row per chunk, and the partial rows are summed the same way until at
//! most 16 remain, which one pass adds in order. Every invocation adds in a fixed
//! order, so results are bit-identical run to run (no float atomics).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    chunk: u32,
    _pad: u32,
}

/// Columns per workgroup of the partial-sum kernels (here and in the norms).
pub const COLS_PER_GROUP: usize = 256;

/// Workgroups a first-level pass aims for: enough to fill a large GPU
/// (about 1000 workgroups of 256), so long sums over few columns (the
/// per-head norm weight: 65,536 rows of 128) still run wide.
const TARGET_GROUPS: usize = 1024;

/// Rows added by one invocation in the first level for `[rows, n]`:
/// chosen from the shape alone (so the summation order is fixed), at
/// least 8.
pub fn chunk_rows(rows: usize, n: usize) -> usize {
    let col_groups = n.div_ceil(COLS_PER_GROUP).max(1);
    let chunks = TARGET_GROUPS
        .div_ceil(col_groups)
        .clamp(1, rows.div_ceil(8).max(1));
    rows.div_ceil(chunks).max(1)
}

/// Number of first-level partial rows for `[rows, n]`.
pub fn num_chunks(rows: usize, n: usize) -> usize {
    rows.div_ceil(chunk_rows(rows, n)).max(1)
}

fn pass(rec: &mut Recorder, x: &Tensor, rows: usize, n: usize, chunk: usize) -> Result<Tensor> {
    let chunks = rows.div_ceil(chunk).max(1);
    let gpu = rec.gpu();
    let out = Tensor::empty(gpu, "colsum.out", &[chunks, n], DType::F32)?;
    let col_groups = n.div_ceil(COLS_PER_GROUP);
    let lim = gpu.caps.limits.max_compute_workgroups_per_dimension as usize;
    if col_groups > lim || chunks > lim {
        shape_bail!("colsum: [{rows}, {n}] is too large for one launch");
    }
    let p = Params {
        rows: rows as u32,
        n: n as u32,
        chunk: chunk as u32,
        _pad: 0,
    };
    launch::dispatch(
        rec,
        "colsum",
        "colsum_partial",
        &[("x", x), ("out", &out)],
        &p,
        [col_groups as u32, chunks as u32, 1],
    )?;
    Ok(out)
}

/// Σ over rows of `x` viewed as `[rows, n]` → `[n]`, with `n` given.
pub fn colsum_n(rec: &mut Recorder, x: &Tensor, n: usize) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        shape_bail!("colsum: expects f32, got {:?}", x);
    }
    if n == 0 || !x.numel().is_multiple_of(n) {
        shape_bail!("colsum: {:?} is not a whole number of rows of {n}", x);
    }
    reduce(rec, x, x.numel() / n, n)
}

/// Up to 16 rows: one pass; otherwise partial rows, then their sum.
fn reduce(rec: &mut Recorder, x: &Tensor, rows: usize, n: usize) -> Result<Tensor> {
    if rows <= 16 {
        return pass(rec, x, rows, n, rows.max(1))?.reshape(&[n]);
    }
    let chunk = chunk_rows(rows, n);
    let part = pass(rec, x, rows, n, chunk)?;
    reduce(rec, &part, rows.div_ceil(chunk), n)
}

/// Σ over rows of `x` (`[.., n]`, summed over everything but the last dim).
pub fn colsum(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    if x.shape().is_empty() {
        shape_bail!("colsum: needs at least one dimension, got {:?}", x);
    }
    colsum_n(rec, x, x.dim(-1))
}

/// Sum the rows of a `[chunks, n]` matrix of partial sums → `[n]` (how
/// the norm backward kernels finish their weight gradients).
pub fn sum_partials(rec: &mut Recorder, partials: &Tensor) -> Result<Tensor> {
    if partials.shape().len() != 2 || partials.dtype() != DType::F32 {
        shape_bail!("sum_partials: expects f32 [chunks, n], got {:?}", partials);
    }
    reduce(rec, partials, partials.dim(0), partials.dim(1))
}

pub mod cpu {
    /// Column sums of `[rows, n]`, accumulated in f64.
    pub fn colsum(x: &[f32], n: usize) -> Vec<f32> {
        let mut acc = vec![0f64; n];
        for row in x.chunks_exact(n) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += *v as f64;
            }
        }
        acc.into_iter().map(|v| v as f32).collect()
    }
}
