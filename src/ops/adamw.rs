//! AdamW as `torch.optim.AdamW` computes it (decoupled weight decay, bias
//! correction), one in-place step on f32 parameter, gradient, and moment
//! tensors; and the global gradient norm of `torch.nn.utils.clip_grad_norm_`,
//! reduced on the GPU (deterministically: fixed chunks, fixed trees, tensors
//! summed in order) into a small buffer whose element 0 is the clip factor
//! that `adamw_step` multiplies the gradient by, so that clipping needs no
//! host readback.
//!
//! torch's step `t` (starting at 1), per element:
//! ```text
//! g  = grad · clip                       (clip_grad_norm_ scales the grads in place)
//! p  = p · (1 − lr·wd)
//! m  = lerp(m, g, 1 − β1)
//! v  = v·β2 + (1 − β2)·g·g
//! p  = p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
//! ```
//! where the bias corrections are Python floats (f64) and the clip factor is
//! `min(1, max_norm / (‖g‖ + 1e-6))` over all gradients together.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

/// Hyper-parameters of one AdamW step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// The reference training defaults (REFERENCE.md §3).
    fn default() -> Self {
        AdamW {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct Params {
    n: u32,
    decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    neg_step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    _pad: [u32; 3],
}

impl AdamW {
    fn params(&self, n: usize, step: u64) -> Params {
        let (lr, b1, b2) = (self.lr as f64, self.beta1 as f64, self.beta2 as f64);
        let t = step as f64;
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        Params {
            n: n as u32,
            decay: (1.0 - lr * self.weight_decay as f64) as f32,
            beta1: self.beta1,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: self.beta2,
            one_minus_beta2: (1.0 - b2) as f32,
            neg_step_size: (-(lr / bc1)) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: self.eps,
            _pad: [0; 3],
        }
    }
}

/// One AdamW step (`step` counts from 1, as torch's state["step"] after its
/// increment) updating `param`, `m` (exp_avg) and `v` (exp_avg_sq) in place.
/// `grad_scale`: a small f32 tensor whose element 0 multiplies the gradient
/// (the clip factor of `GradNorm::out`), or None for no scaling.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    rec: &mut Recorder,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    cfg: &AdamW,
    step: u64,
    grad_scale: Option<&Tensor>,
) -> Result<()> {
    for (what, t) in [("param", param), ("grad", grad), ("m", m), ("v", v)] {
        if t.dtype() != DType::F32 || t.numel() != param.numel() {
            shape_bail!("adamw_step: {what} {t:?} must be f32 with as many elements as the parameter {param:?}");
        }
    }
    if step == 0 {
        return Err(Error::Invalid(
            "adamw_step: steps count from 1 (torch increments before its first update)".into(),
        ));
    }
    let n = param.numel();
    if n == 0 {
        return Ok(());
    }
    if n > u32::MAX as usize {
        shape_bail!("adamw_step: {n} elements exceed 32-bit indexing; split the tensor");
    }
    let p = cfg.params(n, step);
    let mut args = vec![("param", param), ("grad", grad), ("m", m), ("v", v)];
    let entry = match grad_scale {
        None => "adamw_step",
        Some(s) => {
            if s.dtype() != DType::F32 || s.numel() == 0 {
                shape_bail!("adamw_step: gradient scale must be an f32 tensor, got {s:?}");
            }
            args.push(("gscale", s));
            "adamw_step_scaled"
        }
    };
    launch::per_item(rec, "adamw", entry, &args, &p, n)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    n: u32,
    out_offset: u32,
    n_tensors: u32,
    max_norm: f32,
}

/// Elements per stage-1 workgroup (matches CHUNK in adamw.wgsl).
const CHUNK: usize = 4096;

/// The global L2 norm of a fixed list of gradient tensors and the clip
/// factor, on the GPU. Build once per parameter list (it owns its scratch
/// buffers), record every step.
pub struct GradNorm {
    sizes: Vec<usize>,
    offsets: Vec<u32>,
    partials: Tensor,
    segs: Tensor,
    per_tensor: Tensor,
    out: Tensor,
}

impl GradNorm {
    /// For gradients of these element counts, in this order.
    pub fn new(gpu: &Gpu, sizes: &[usize]) -> Result<GradNorm> {
        let mut offsets = Vec::with_capacity(sizes.len() + 1);
        let mut total = 0usize;
        offsets.push(0u32);
        for &n in sizes {
            if n > u32::MAX as usize {
                shape_bail!(
                    "grad_norm: a tensor of {n} elements exceeds 32-bit indexing; split it"
                );
            }
            total += n.div_ceil(CHUNK);
            offsets.push(total as u32);
        }
        Ok(GradNorm {
            sizes: sizes.to_vec(),
            partials: Tensor::empty(gpu, "grad_norm.partials", &[total.max(1)], DType::F32)?,
            segs: gpu.upload_u32("grad_norm.segs", &[offsets.len()], &offsets)?,
            per_tensor: Tensor::empty(
                gpu,
                "grad_norm.per_tensor",
                &[sizes.len().max(1)],
                DType::F32,
            )?,
            out: Tensor::empty(gpu, "grad_norm.out", &[4], DType::F32)?,
            offsets,
        })
    }

    /// Record the reduction of `grads` (shaped as given to `new`). Afterwards
    /// `out()` holds `[clip factor, norm, sum of squares, 0]` with clip factor
    /// `min(1, max_norm / (norm + 1e-6))`, or 1 when `max_norm <= 0`.
    pub fn record(&self, rec: &mut Recorder, grads: &[&Tensor], max_norm: f32) -> Result<()> {
        if grads.len() != self.sizes.len() {
            shape_bail!(
                "grad_norm: built for {} tensors, given {}",
                self.sizes.len(),
                grads.len()
            );
        }
        for (i, (g, &n)) in grads.iter().zip(&self.sizes).enumerate() {
            if g.dtype() != DType::F32 || g.numel() != n {
                shape_bail!("grad_norm: tensor {i} is {g:?}, expected f32 with {n} elements");
            }
            if n == 0 {
                continue;
            }
            let p = NormParams {
                n: n as u32,
                out_offset: self.offsets[i],
                n_tensors: 0,
                max_norm: 0.0,
            };
            let args = [("x", *g), ("partials", &self.partials)];
            launch::per_group(rec, "adamw", "sumsq_partial", &args, &p, n.div_ceil(CHUNK))?;
        }
        let p = NormParams {
            n: 0,
            out_offset: 0,
            n_tensors: self.sizes.len() as u32,
            max_norm,
        };
        launch::dispatch(
            rec,
            "adamw",
            "grad_norm_finish",
            &[
                ("partials", &self.partials),
                ("segs", &self.segs),
                ("per_tensor", &self.per_tensor),
                ("out", &self.out),
            ],
            &p,
            [1, 1, 1],
        )
    }

    /// f32 [4]: clip factor, global norm, sum of squares, 0. Pass it as
    /// `grad_scale` to `adamw_step`.
    pub fn out(&self) -> &Tensor {
        &self.out
    }

    /// f32 [tensors] (at least 1 element): each gradient's sum of squares.
    pub fn per_tensor(&self) -> &Tensor {
        &self.per_tensor
    }
}

/// References written out as torch computes them.
pub mod cpu {
    use super::AdamW;

    /// torch.lerp's formula.
    pub fn lerp(start: f32, end: f32, w: f32) -> f32 {
        if w < 0.5 {
            start + w * (end - start)
        } else {
            end - (end - start) * (1.0 - w)
        }
    }

    /// One step of torch.optim.AdamW's single-tensor path in f32 (scalars
    /// in f64 like Python floats, rounded to f32 where torch casts them),
    /// with the gradient first multiplied by `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step(
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        cfg: &AdamW,
        step: u64,
        scale: f32,
    ) {
        let (lr, b1, b2) = (cfg.lr as f64, cfg.beta1 as f64, cfg.beta2 as f64);
        let bc1 = 1.0 - b1.powf(step as f64);
        let bc2 = 1.0 - b2.powf(step as f64);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = (1.0 - lr * cfg.weight_decay as f64) as f32;
        let w1 = (1.0 - b1) as f32;
        let w2 = (1.0 - b2) as f32;
        for i in 0..param.len() {
            let g = grad[i] * scale;
            param[i] *= decay;
            m[i] = lerp(m[i], g, w1);
            v[i] = v[i] * cfg.beta2 + (w2 * g) * g;
            let denom = v[i].sqrt() / bc2_sqrt + cfg.eps;
            param[i] += -step_size * (m[i] / denom);
        }
    }

    /// clip_grad_norm_'s total norm (f64 here) and clip factor.
    pub fn grad_norm(grads: &[&[f32]], max_norm: f32) -> (f64, f32) {
        let sumsq: f64 = grads
            .iter()
            .flat_map(|g| g.iter())
            .map(|&x| x as f64 * x as f64)
            .sum();
        let norm = sumsq.sqrt();
        let scale = if max_norm > 0.0 {
            (max_norm / (norm as f32 + 1e-6)).min(1.0)
        } else {
            1.0
        };
        (norm, scale)
    }
}
