//! Rotary position embeddings in Hugging Face's "rotate half" layout, with
//! partial rotary (only the first `rot_dim` dims of each head rotate; the
//! rest pass through, as in GPT-NeoX/Pythia).
//!
//! Inputs: `x` `[tokens, heads·head_dim]` f32 (any shape with that many
//! elements), `positions` u32 `[tokens]` (so batching, KV-cache offsets and
//! padding are all expressed by positions) and host-built `cos`/`sin`
//! tables, f32 `[max_pos, rot_dim/2]` ([`rope_tables`], [`RopeTables`]).
//! `rot_dim` is twice the tables' last dimension. A position ≥ `max_pos`
//! is clamped to `max_pos − 1` (no out-of-bounds read; build tables for the
//! longest context you will use).
//!
//! Backward is the rotation by −angle ([`rope_backward`]).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    total: u32,
    heads: u32,
    head_dim: u32,
    rot_half: u32,
    pairs: u32,
    max_pos: u32,
    sign: f32,
    _pad: u32,
}

/// How inverse frequencies are made (`rope_scaling` in config.json).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = 1 / theta^(2i / rot_dim)`.
    Default,
    /// Llama 3 (`rope_type: "llama3"`), as transformers'
    /// `_compute_llama3_parameters`.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: u32,
    },
}

/// Inverse frequencies `[rot_dim/2]`, computed step by step in f32 as
/// transformers does (`torch.arange(0, dim, 2).float() / dim`, `base **`,
/// reciprocal; then the Llama-3 wavelength bands).
pub fn inv_freq(rot_dim: usize, theta: f64, scaling: RopeScaling) -> Vec<f32> {
    let half = rot_dim / 2;
    let base: Vec<f32> = (0..half)
        .map(|i| {
            let e = (2 * i) as f32 / rot_dim as f32;
            // torch.pow(base, e) in f32: powf of f32 operands, rounded once.
            let pw = (theta as f32 as f64).powf(e as f64) as f32;
            1.0f32 / pw
        })
        .collect();
    match scaling {
        RopeScaling::Default => base,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings as f32;
            // Python floats: old / low, old / high in f64, used as f32 scalars.
            let low_wavelen =
                (original_max_position_embeddings as f64 / low_freq_factor as f64) as f32;
            let high_wavelen =
                (original_max_position_embeddings as f64 / high_freq_factor as f64) as f32;
            let two_pi = (2.0 * std::f64::consts::PI) as f32;
            base.iter()
                .map(|&f| {
                    // `2 * math.pi / inv_freq` is reciprocal(inv_freq) * 2π.
                    let wavelen = (1.0f32 / f) * two_pi;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let smooth = ((1.0f32 / wavelen) * old - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                    // `~(wavelen < high) * ~(wavelen > low)` (wavelen is never NaN)
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    if medium {
                        smoothed
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

/// cos and sin tables `[max_pos, inv_freq.len()]`: angle = `pos as f32 *
/// inv_freq` in f32 (as HF's f32 matmul of positions by inv_freq), cos/sin
/// evaluated in f64 and rounded, times `attention_scaling` (1 for default
/// and llama3 rope).
pub fn rope_tables(
    inv_freq: &[f32],
    max_pos: usize,
    attention_scaling: f32,
) -> (Vec<f32>, Vec<f32>) {
    let h = inv_freq.len();
    let mut cos = Vec::with_capacity(max_pos * h);
    let mut sin = Vec::with_capacity(max_pos * h);
    for pos in 0..max_pos {
        for &f in inv_freq {
            let a = (pos as f32 * f) as f64;
            cos.push((a.cos() as f32) * attention_scaling);
            sin.push((a.sin() as f32) * attention_scaling);
        }
    }
    (cos, sin)
}

/// Tables on the GPU, ready for [`rope`].
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub rot_dim: usize,
    pub max_pos: usize,
}

impl RopeTables {
    /// Build and upload the tables for `rot_dim` rotated dims per head
    /// (`head_dim`, or `head_dim · partial_rotary_factor` for Pythia).
    pub fn new(
        gpu: &Gpu,
        rot_dim: usize,
        theta: f64,
        scaling: RopeScaling,
        max_pos: usize,
    ) -> Result<RopeTables> {
        if rot_dim == 0 || !rot_dim.is_multiple_of(2) || max_pos == 0 {
            shape_bail!(
                "rope tables: rot_dim {rot_dim} must be even and > 0, max_pos {max_pos} > 0"
            );
        }
        let f = inv_freq(rot_dim, theta, scaling);
        let (c, s) = rope_tables(&f, max_pos, 1.0);
        Ok(RopeTables {
            cos: gpu.upload_f32("rope.cos", &[max_pos, rot_dim / 2], &c)?,
            sin: gpu.upload_f32("rope.sin", &[max_pos, rot_dim / 2], &s)?,
            rot_dim,
            max_pos,
        })
    }
}

struct Geometry {
    tokens: usize,
    heads: usize,
    rot_half: usize,
    max_pos: usize,
}

fn geometry(
    op: &str,
    x: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
) -> Result<Geometry> {
    if x.dtype() != DType::F32 {
        shape_bail!("{op}: x must be f32, got {:?}", x);
    }
    if positions.dtype() != DType::U32 {
        shape_bail!("{op}: positions must be u32, got {:?}", positions);
    }
    if cos.dtype() != DType::F32
        || cos.shape().len() != 2
        || sin.shape() != cos.shape()
        || sin.dtype() != DType::F32
    {
        shape_bail!(
            "{op}: cos {:?} and sin {:?} must both be f32 [max_pos, rot_dim/2]",
            cos,
            sin
        );
    }
    let (max_pos, rot_half) = (cos.dim(0), cos.dim(1));
    let tokens = positions.numel();
    if head_dim == 0
        || !head_dim.is_multiple_of(2)
        || 2 * rot_half > head_dim
        || rot_half == 0
        || max_pos == 0
    {
        shape_bail!(
            "{op}: head_dim {head_dim} must be even and hold rot_dim {} (> 0) from tables {:?}",
            2 * rot_half,
            cos.shape()
        );
    }
    if tokens == 0 || !x.numel().is_multiple_of(tokens * head_dim) {
        shape_bail!(
            "{op}: x {:?} is not [{tokens} tokens, heads × {head_dim}]",
            x.shape()
        );
    }
    Ok(Geometry {
        tokens,
        heads: x.numel() / (tokens * head_dim),
        rot_half,
        max_pos,
    })
}

#[allow(clippy::too_many_arguments)]
fn launch(
    rec: &mut Recorder,
    entry: &str,
    args: &[(&str, &Tensor)],
    g: &Geometry,
    head_dim: usize,
    pairs: usize,
    sign: f32,
) -> Result<()> {
    let total = g.tokens * g.heads * pairs;
    if total > u32::MAX as usize {
        shape_bail!("rope: {total} rotations are too many for one launch");
    }
    let p = Params {
        total: total as u32,
        heads: g.heads as u32,
        head_dim: head_dim as u32,
        rot_half: g.rot_half as u32,
        pairs: pairs as u32,
        max_pos: g.max_pos as u32,
        sign,
        _pad: 0,
    };
    launch::per_item(rec, "rope", entry, args, &p, total)
}

fn out_of_place(
    rec: &mut Recorder,
    x: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
    sign: f32,
) -> Result<Tensor> {
    let g = geometry("rope", x, positions, cos, sin, head_dim)?;
    let out = Tensor::empty(rec.gpu(), "rope.out", x.shape(), DType::F32)?;
    launch(
        rec,
        "rope",
        &[
            ("positions", positions),
            ("cos_t", cos),
            ("sin_t", sin),
            ("xin", x),
            ("out", &out),
        ],
        &g,
        head_dim,
        head_dim / 2,
        sign,
    )?;
    Ok(out)
}

fn in_place(
    rec: &mut Recorder,
    x: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
    sign: f32,
) -> Result<()> {
    let g = geometry("rope_inplace", x, positions, cos, sin, head_dim)?;
    let pairs = g.rot_half;
    launch(
        rec,
        "rope_inplace",
        &[
            ("positions", positions),
            ("cos_t", cos),
            ("sin_t", sin),
            ("xio", x),
        ],
        &g,
        head_dim,
        pairs,
        sign,
    )
}

/// Rotate `x` `[tokens, heads·head_dim]` by its tokens' positions → new tensor.
pub fn rope(
    rec: &mut Recorder,
    x: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
) -> Result<Tensor> {
    out_of_place(rec, x, positions, cos, sin, head_dim, 1.0)
}

/// Rotate `x` in place.
pub fn rope_inplace(
    rec: &mut Recorder,
    x: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
) -> Result<()> {
    in_place(rec, x, positions, cos, sin, head_dim, 1.0)
}

/// dx from dy: the rotation by −angle → new tensor.
pub fn rope_backward(
    rec: &mut Recorder,
    dy: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
) -> Result<Tensor> {
    out_of_place(rec, dy, positions, cos, sin, head_dim, -1.0)
}

/// dx from dy, in place (dy becomes dx).
pub fn rope_backward_inplace(
    rec: &mut Recorder,
    dy: &Tensor,
    positions: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
) -> Result<()> {
    in_place(rec, dy, positions, cos, sin, head_dim, -1.0)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvParams {
    total: u32,
    q_heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rot_half: u32,
    max_pos: u32,
    src_row: u32,
    dst_row: u32,
}

/// Whether [`rope_kv`] takes this rotation: it moves four elements per
/// invocation, two adjacent rotation pairs, so rot/2 must be even and
/// head_dim a multiple of 4.
pub fn rope_kv_fits(head_dim: usize, tables: &RopeTables) -> bool {
    let rot_half = tables.rot_dim / 2;
    head_dim.is_multiple_of(4)
        && rot_half.is_multiple_of(2)
        && rot_half > 0
        && 2 * rot_half <= head_dim
}

/// A cached pass's rotation and KV write in one launch: rows
/// `[src_row, src_row + tokens)` of `q` (`[.., q_heads·head_dim]`) are
/// rotated in place; the same rows of `k` are rotated into rows
/// `[dst_row, ..)` of `k_cache` and those of `v` copied into `v_cache`
/// (both f32, or both f16 rounded as `half` rounds). The rows' positions
/// are `positions[src_row..]`.
pub fn rope_kv(
    rec: &mut Recorder,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (positions, tables, head_dim): (&Tensor, &RopeTables, usize),
    (q_heads, kv_heads): (usize, usize),
    (src_row, tokens, dst_row): (usize, usize, usize),
    (k_cache, v_cache): (&Tensor, &Tensor),
) -> Result<()> {
    let (cos, sin) = (&tables.cos, &tables.sin);
    let rot_half = tables.rot_dim / 2;
    let (qw, kvw) = (q_heads * head_dim, kv_heads * head_dim);
    let end = src_row + tokens;
    let f32s = [q, k, v, cos, sin].iter().all(|t| t.dtype() == DType::F32);
    let cache_dtype = k_cache.dtype();
    let ok = rope_kv_fits(head_dim, tables)
        && f32s
        && matches!(cache_dtype, DType::F32 | DType::F16)
        && v_cache.dtype() == cache_dtype
        && positions.dtype() == DType::U32
        && positions.numel() >= end
        && cos.numel() == tables.max_pos * rot_half
        && sin.numel() == cos.numel()
        && q.numel() >= end * qw
        && k.numel() >= end * kvw
        && v.numel() >= end * kvw
        && k_cache.numel() >= (dst_row + tokens) * kvw
        && v_cache.numel() >= (dst_row + tokens) * kvw;
    if !ok || tokens == 0 || k_cache.numel() >= u32::MAX as usize {
        shape_bail!(
            "rope_kv: {tokens} rows from {src_row} of q {q:?}, k {k:?}, v {v:?} ({q_heads} + \
             {kv_heads} heads of {head_dim}, rot {}) into row {dst_row} of {k_cache:?} / {v_cache:?}",
            tables.rot_dim
        );
    }
    let total = tokens * (q_heads + kv_heads) * head_dim / 4;
    if total > u32::MAX as usize {
        shape_bail!("rope_kv: {total} invocations are too many for one launch");
    }
    let p = KvParams {
        total: total as u32,
        q_heads: q_heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: head_dim as u32,
        rot_half: rot_half as u32,
        max_pos: tables.max_pos as u32,
        src_row: src_row as u32,
        dst_row: dst_row as u32,
    };
    let f16 = (cache_dtype == DType::F16) as u32 as f64;
    launch::per_item_with(
        rec,
        ("rope_kv", "rope_kv"),
        &[("KV_F16", f16)],
        &[
            ("positions", positions),
            ("cos_t", cos),
            ("sin_t", sin),
            ("q", q),
            ("k", k),
            ("v", v),
            ("k_cache", k_cache),
            ("v_cache", v_cache),
            ("k_cache16", k_cache),
            ("v_cache16", v_cache),
        ],
        &p,
        total,
    )
}

pub mod cpu {
    /// Rotation of x `[tokens, heads·head_dim]` by angle·sign (sign = −1
    /// gives the backward); tables `[max_pos, rot/2]`. f64 arithmetic.
    pub fn rope(
        x: &[f32],
        positions: &[u32],
        cos: &[f32],
        sin: &[f32],
        rot_half: usize,
        head_dim: usize,
        sign: f32,
    ) -> Vec<f32> {
        let tokens = positions.len();
        let per_token = x.len() / tokens;
        let max_pos = cos.len() / rot_half;
        let mut out = x.to_vec();
        for (t, &pos) in positions.iter().enumerate() {
            let pos = (pos as usize).min(max_pos - 1);
            for h in 0..per_token / head_dim {
                let base = t * per_token + h * head_dim;
                for i in 0..rot_half {
                    let c = cos[pos * rot_half + i] as f64;
                    let s = sign as f64 * sin[pos * rot_half + i] as f64;
                    let a = x[base + i] as f64;
                    let b = x[base + i + rot_half] as f64;
                    out[base + i] = (a * c - b * s) as f32;
                    out[base + i + rot_half] = (b * c + a * s) as f32;
                }
            }
        }
        out
    }
}
