//! dtype conversions: f32 ↔ bf16 (round to nearest even, as
//! `half::bf16::from_f32`) and f32 ↔ f16 (as `half::f16::from_f32`:
//! nearest even, overflow to ±inf, subnormals kept). The 16-bit formats are
//! packed in pairs into u32 words, so no shader-f16 feature is needed.
//! No backward (casts sit outside the trained graph).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// `x` converted to `to` (same shape). Supported: f32 → bf16, f32 → f16,
/// bf16 → f32, f16 → f32. Casting to the tensor's own dtype returns a
/// handle to the same storage.
pub fn cast(rec: &mut Recorder, x: &Tensor, to: DType) -> Result<Tensor> {
    let from = x.dtype();
    if from == to {
        return Ok(x.clone());
    }
    let (entry, src, dst) = match (from, to) {
        (DType::F32, DType::BF16) => ("f32_to_bf16", "src_f32", "dst_u32"),
        (DType::F32, DType::F16) => ("f32_to_f16", "src_f32", "dst_u32"),
        (DType::BF16, DType::F32) => ("bf16_to_f32", "src_u32", "dst_f32"),
        (DType::F16, DType::F32) => ("f16_to_f32", "src_u32", "dst_f32"),
        _ => shape_bail!(
            "cast: {} → {} is not supported (only f32 ↔ bf16 and f32 ↔ f16)",
            from.name(),
            to.name()
        ),
    };
    let n = x.numel();
    if n >= u32::MAX as usize {
        shape_bail!("cast: {:?} is too large for one launch", x.shape());
    }
    let out = Tensor::empty(rec.gpu(), "cast.out", x.shape(), to)?;
    let p = Params {
        n: n as u32,
        _pad: [0; 3],
    };
    // One invocation per u32 word of the 16-bit side.
    let words = n.div_ceil(2);
    launch::per_item(rec, "cast", entry, &[(src, x), (dst, &out)], &p, words)?;
    Ok(out)
}

/// Rows of new keys and values into a 16-bit KV cache: `rows` rows of
/// `cols` from row `src_row` of the f32 `k` and `v` to row `dst_row` of
/// the f16 blocks `k_dst` and `v_dst`, rounded as [`cast`] rounds. One
/// launch for both.
#[allow(clippy::too_many_arguments)]
pub fn kv_rows_to_f16(
    rec: &mut Recorder,
    (k, v): (&Tensor, &Tensor),
    src_row: usize,
    (k_dst, v_dst): (&Tensor, &Tensor),
    dst_row: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let n = rows * cols;
    let ok = k.dtype() == DType::F32
        && v.dtype() == DType::F32
        && k_dst.dtype() == DType::F16
        && v_dst.dtype() == DType::F16
        && cols.is_multiple_of(2)
        && k.numel() >= (src_row + rows) * cols
        && v.numel() >= (src_row + rows) * cols
        && k_dst.numel() >= (dst_row + rows) * cols
        && v_dst.numel() >= (dst_row + rows) * cols;
    if !ok || k_dst.numel() >= u32::MAX as usize || k.numel() >= u32::MAX as usize {
        shape_bail!(
            "kv_rows_to_f16: {rows} rows of {cols} from row {src_row} of {k:?} / {v:?} to row \
             {dst_row} of {k_dst:?} / {v_dst:?}"
        );
    }
    let p = Params {
        n: n as u32,
        _pad: [(src_row * cols) as u32, (dst_row * cols / 2) as u32, 0],
    };
    launch::per_item(
        rec,
        "cast",
        "kv_to_f16",
        &[
            ("src_f32", k),
            ("src2_f32", v),
            ("dst_u32", k_dst),
            ("dst2_u32", v_dst),
        ],
        &p,
        n / 2,
    )
}

pub mod cpu {
    pub fn to_bf16(x: &[f32]) -> Vec<half::bf16> {
        x.iter().map(|&v| half::bf16::from_f32(v)).collect()
    }
    pub fn to_f16(x: &[f32]) -> Vec<half::f16> {
        x.iter().map(|&v| half::f16::from_f32(v)).collect()
    }
}
