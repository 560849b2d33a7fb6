//! Decode-time y = x·Wᵀ for 1 to 4 rows of x, with W [N, K] in f32, bf16 or
//! f16 (the Hugging Face Linear layout). Reads every weight exactly once;
//! the same product as `matmul(x, W, false, true)`, which tests check.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    k: u32,
    rows: u32,
    alpha: f32,
    beta: f32,
    _pad: [u32; 3],
}

/// Most rows one launch handles.
pub const MAX_ROWS: usize = 4;
const OUTS_PER_GROUP: u32 = 8;

/// y = x·Wᵀ into a new [rows, N] tensor.
pub fn gemv(rec: &mut Recorder, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dimension") = w.shape()[0];
    let y = Tensor::empty(rec.gpu(), "gemv.out", &shape, DType::F32)?;
    gemv_into(rec, x, w, &y, 1.0, 0.0)?;
    Ok(y)
}

/// Which kernel: cooperative (32 invocations per output, for GPUs) or one
/// invocation per output (for CPU adapters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvPath {
    Cooperative,
    PerOutput,
}

pub fn default_path(gpu: &crate::gpu::Gpu) -> GemvPath {
    if gpu.info.device_type == wgpu::DeviceType::Cpu {
        GemvPath::PerOutput
    } else {
        GemvPath::Cooperative
    }
}

/// y = alpha·x·Wᵀ + beta·y.
pub fn gemv_into(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let path = default_path(rec.gpu());
    gemv_into_with(rec, x, w, y, alpha, beta, path)
}

/// `gemv_into` with the kernel chosen by the caller.
pub fn gemv_into_with(
    rec: &mut Recorder,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    alpha: f32,
    beta: f32,
    path: GemvPath,
) -> Result<()> {
    if w.shape().len() != 2 || x.shape().is_empty() {
        shape_bail!(
            "gemv: W must be [N, K] and x [.., K], got {:?} and {:?}",
            w.shape(),
            x.shape()
        );
    }
    let (n, k) = (w.shape()[0], w.shape()[1]);
    if x.dim(-1) != k {
        shape_bail!(
            "gemv: x has {} columns, W {:?} needs {k}",
            x.dim(-1),
            w.shape()
        );
    }
    let rows = x.numel() / k.max(1);
    if rows == 0 || rows > MAX_ROWS {
        shape_bail!("gemv: takes 1 to {MAX_ROWS} rows, got {rows}; use matmul for more");
    }
    if x.dtype() != DType::F32 || y.dtype() != DType::F32 || y.numel() != rows * n {
        shape_bail!(
            "gemv: x and y must be f32 with y [{rows}, {n}], got {:?} and {:?}",
            x,
            y
        );
    }
    let code = match w.dtype() {
        DType::F32 => 0.0,
        DType::BF16 => 1.0,
        DType::F16 => 2.0,
        DType::U32 | DType::Q8 => shape_bail!("gemv: W must be f32, bf16 or f16"),
    };
    let vec = if w.dtype() == DType::F32 {
        k % 4 == 0
    } else {
        k % 8 == 0
    };
    let gpu = rec.gpu();
    let entry = match path {
        GemvPath::Cooperative => "gemv",
        GemvPath::PerOutput => "gemv_per_output",
    };
    let kern = gpu.kernel_with(
        "gemv",
        entry,
        &[("W_DTYPE", code), ("VEC", vec as u32 as f64)],
    )?;
    let p = Params {
        n: n as u32,
        k: k as u32,
        rows: rows as u32,
        alpha,
        beta,
        _pad: [0; 3],
    };
    let per_group = match path {
        GemvPath::Cooperative => OUTS_PER_GROUP,
        GemvPath::PerOutput => 64,
    };
    let groups = gpu.grid_1d((n as u32).div_ceil(per_group));
    rec.dispatch(
        &kern,
        &[("x", x), ("x4", x), ("w", w), ("w4", w), ("y", y)],
        bytemuck::bytes_of(&p),
        groups,
    )
}
