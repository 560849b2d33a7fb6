//! Token sampling on the GPU for one row of logits: repetition penalty
//! (Hugging Face semantics), temperature, top-k, top-p, min-p and a draw
//! with a host-given uniform, so that decoding reads back nothing but the
//! chosen id. Greedy decoding (temperature 0) is the argmax op after the
//! penalty.
//!
//! The filters follow transformers' warpers in their order (temperature →
//! top-k → top-p → min-p), expressed as thresholds on the logits, so no
//! sort is needed:
//! - top-k keeps every token whose logit is at least the k-th largest
//!   (ties kept, as `TopKLogitsWarper`);
//! - top-p keeps the tokens, from the most likely down, until the mass of
//!   those strictly more likely reaches `top_p` of the top-k survivors'
//!   mass (`TopPLogitsWarper`; tokens tied at the boundary are all kept);
//! - min-p keeps tokens with probability at least `min_p` times the top
//!   one's (`MinPLogitsWarper`).
//!
//! Probabilities are fixed-point: `w = u32(min(exp(z − max), 1)·2^31)` with
//! 64-bit integer sums, so the GPU (in any order) and the CPU reference add
//! up the same integers. The token is the first, in vocabulary order, where
//! the running sum of kept weights exceeds `floor(S·u / 2^32)` for the
//! 32-bit uniform `u`: a draw from the kept distribution that is exactly
//! reproducible from `u`. See `shaders/sample.wgsl` for the kernels.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::{argmax, launch};
use crate::shape_bail;

const SHADER: &str = "sample";
/// Elements per workgroup of the multi-workgroup passes (as the shader).
const CHUNK: usize = 1024;
const WG: usize = 256;
/// u32 words of the selection state and the histograms (as the shader).
const STATE_WORDS: usize = 16;
const HIST_WORDS: usize = 4096;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off; >1 discourages tokens already in the sequence.
    pub repetition_penalty: f32,
}

impl Default for SampleParams {
    fn default() -> Self {
        SampleParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
        }
    }
}

impl SampleParams {
    pub fn greedy() -> Self {
        SampleParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
    pub fn has_penalty(&self) -> bool {
        self.repetition_penalty != 1.0
    }
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            shape_bail!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            );
        }
        if self.temperature > 0.0 && !self.inv_temperature().is_finite() {
            shape_bail!(
                "temperature {} is too small to divide by (use 0 for greedy decoding)",
                self.temperature
            );
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            shape_bail!("top-p must be in [0, 1], got {}", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            shape_bail!("min-p must be in [0, 1], got {}", self.min_p);
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            shape_bail!(
                "repetition penalty must be > 0, got {}",
                self.repetition_penalty
            );
        }
        Ok(())
    }
    /// Which filters run for a vocabulary of `n`.
    fn top_k_on(&self, n: usize) -> bool {
        self.top_k > 0 && self.top_k < n
    }
    fn top_p_on(&self) -> bool {
        self.top_p < 1.0
    }
    fn min_p_on(&self) -> bool {
        self.min_p > 0.0
    }
    /// top_p as a 32-bit fraction.
    pub fn top_p32(&self) -> u32 {
        ((self.top_p as f64) * 4294967296.0)
            .floor()
            .min(u32::MAX as f64) as u32
    }
    pub fn ln_min_p(&self) -> f32 {
        (self.min_p as f64).ln() as f32
    }
    pub fn inv_temperature(&self) -> f32 {
        1.0 / self.temperature
    }
    pub fn inv_penalty(&self) -> f32 {
        1.0 / self.repetition_penalty
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    chunks: u32,
    inv_temp: f32,
    top_k: u32,
    use_top_p: u32,
    top_p32: u32,
    use_min_p: u32,
    ln_min_p: f32,
    u: u32,
    mode: u32,
    round: u32,
    n_seen: u32,
    penalty: f32,
    inv_penalty: f32,
    blocks: u32,
    _pad: u32,
}

fn check_logits(logits: &Tensor) -> Result<usize> {
    let n = logits.numel();
    if logits.dtype() != DType::F32 || n == 0 || logits.dim(-1) != n {
        shape_bail!("sample: logits must be one f32 row ([vocab] or [1, vocab]), got {logits:?}");
    }
    if n > u32::MAX as usize / 2 {
        shape_bail!("sample: a vocabulary of {n} is too large");
    }
    Ok(n)
}

/// Apply the repetition penalty to a copy of `logits` for the distinct ids
/// in `seen` (u32); returns the copy (or `logits` itself without penalty).
pub fn penalize(
    rec: &mut Recorder,
    logits: &Tensor,
    seen: Option<&Tensor>,
    penalty: f32,
) -> Result<Tensor> {
    let n = check_logits(logits)?;
    let Some(seen) = seen.filter(|s| s.numel() > 0 && penalty != 1.0) else {
        return Ok(logits.clone());
    };
    if seen.dtype() != DType::U32 {
        shape_bail!("sample: seen ids must be u32, got {seen:?}");
    }
    let gpu = rec.gpu();
    let z = Tensor::empty(gpu, "sample.z", logits.shape(), DType::F32)?;
    rec.copy(logits, 0, &z, 0, (n * 4) as u64)?;
    let p = Params {
        n: n as u32,
        n_seen: seen.numel() as u32,
        penalty,
        inv_penalty: 1.0 / penalty,
        ..Zeroable::zeroed()
    };
    let args = [("zw", &z), ("seen", seen)];
    launch::per_item(rec, SHADER, "sample_penalize", &args, &p, seen.numel())?;
    Ok(z)
}

/// Choose one token from one row of logits; returns u32 `[1]`. `seen` are
/// the distinct ids the repetition penalty applies to (prompt and output
/// so far); `u` is 32 random bits (ignored when greedy).
pub fn sample(
    rec: &mut Recorder,
    logits: &Tensor,
    params: &SampleParams,
    seen: Option<&Tensor>,
    u: u32,
) -> Result<Tensor> {
    params.validate()?;
    let n = check_logits(logits)?;
    let z = if params.has_penalty() {
        penalize(rec, logits, seen, params.repetition_penalty)?
    } else {
        logits.clone()
    };
    if params.is_greedy() {
        return argmax::argmax(rec, &z.reshape(&[1, n])?)?.reshape(&[1]);
    }
    let gpu = rec.gpu();
    let chunks = n.div_ceil(CHUNK);
    let base = Params {
        n: n as u32,
        chunks: chunks as u32,
        inv_temp: params.inv_temperature(),
        top_k: if params.top_k_on(n) {
            params.top_k as u32
        } else {
            0
        },
        use_top_p: params.top_p_on() as u32,
        top_p32: params.top_p32(),
        use_min_p: params.min_p_on() as u32,
        ln_min_p: params.ln_min_p(),
        u,
        blocks: chunks.div_ceil(WG) as u32,
        ..Zeroable::zeroed()
    };
    let part_max = Tensor::empty(gpu, "sample.part_max", &[chunks], DType::F32)?;
    let state = Tensor::empty(gpu, "sample.state", &[STATE_WORDS], DType::U32)?;
    let hist = Tensor::empty(gpu, "sample.hist", &[HIST_WORDS], DType::U32)?;
    let part_sum = Tensor::empty(gpu, "sample.part_sum", &[chunks * 2], DType::U32)?;
    let out = Tensor::empty(gpu, "sample.out", &[1], DType::U32)?;
    let args: [(&str, &Tensor); 6] = [
        ("x", &z),
        ("part_max", &part_max),
        ("state", &state),
        ("hist", &hist),
        ("part_sum", &part_sum),
        ("out", &out),
    ];
    let grid = [chunks as u32, 1, 1];
    let mut pass = |entry: &str, p: &Params, groups: [u32; 3]| {
        launch::dispatch(rec, SHADER, entry, &args, p, groups)
    };
    pass("sample_max", &base, grid)?;
    pass("sample_init", &base, [1, 1, 1])?;
    for (mode, on) in [(0u32, base.top_k > 0), (1, base.use_top_p != 0)] {
        if !on {
            continue;
        }
        for round in 0..4u32 {
            let p = Params {
                mode,
                round,
                ..base
            };
            pass("sample_hist", &p, grid)?;
            pass("sample_select", &p, [1, 1, 1])?;
        }
    }
    pass("sample_kept", &base, grid)?;
    pass("sample_pick", &base, [1, 1, 1])?;
    Ok(out)
}

/// The id [`guard_finite`] leaves in place of a token when the row of
/// logits is not finite.
pub const NOT_FINITE: u32 = u32::MAX;

/// The finite-value guard of generation: overwrite the chosen id `tok`
/// (u32 `[1]`, from [`sample`] over the same `logits`) with [`NOT_FINITE`]
/// when any logit is NaN or ±infinity. One pass over the row and no extra
/// readback: the caller reads the id as before and treats the sentinel as
/// an error. ([`sample`] itself accepts -inf logits, as masked entries.)
pub fn guard_finite(rec: &mut Recorder, logits: &Tensor, tok: &Tensor) -> Result<()> {
    let n = check_logits(logits)?;
    if tok.dtype() != DType::U32 || tok.numel() != 1 {
        shape_bail!("sample: the chosen id must be one u32, got {tok:?}");
    }
    let p = Params {
        n: n as u32,
        ..Zeroable::zeroed()
    };
    let args = [("x", logits), ("out", tok)];
    launch::per_item(rec, SHADER, "sample_guard", &args, &p, n)
}

/// Plain CPU reference with the same semantics (sorts instead of radix
/// selection, so it checks the GPU's selection independently).
pub mod cpu {
    use super::SampleParams;

    /// Hugging Face's repetition penalty on the distinct ids of `seen`.
    pub fn penalize(logits: &[f32], seen: &[u32], penalty: f32) -> Vec<f32> {
        let mut z = logits.to_vec();
        let inv = 1.0 / penalty;
        let mut done = std::collections::HashSet::new();
        for &id in seen {
            if (id as usize) < z.len() && done.insert(id) {
                let v = z[id as usize];
                z[id as usize] = if v < 0.0 { v * penalty } else { v * inv };
            }
        }
        z
    }

    pub fn key_of(z: f32) -> u32 {
        let b = z.to_bits();
        if b & 0x8000_0000 != 0 {
            !b
        } else {
            b | 0x8000_0000
        }
    }

    pub fn weight(z: f32, m: f32) -> u32 {
        let d = z - m;
        if d.is_nan() || d < -30.0 {
            return 0;
        }
        (d.exp().min(1.0) * 2147483648.0) as u32
    }

    /// The thresholds and the max: (τk, τp, m), keys as in the shader.
    pub fn thresholds(z: &[f32], p: &SampleParams) -> (u32, u32, f32) {
        let m = z
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        let mut keys: Vec<(u32, u32)> = z
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| (key_of(v), weight(v, m)))
            .collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.0));
        let tk = if p.top_k_on(z.len()) && p.top_k <= keys.len() {
            keys[p.top_k - 1].0
        } else {
            0
        };
        let tp = if p.top_p_on() {
            let top: Vec<&(u32, u32)> = keys.iter().filter(|k| k.0 >= tk).collect();
            let s: u64 = top.iter().map(|k| k.1 as u64).sum();
            let t = ((s as u128 * p.top_p32() as u128) >> 32) as u64;
            let mut cum = 0u64;
            let mut tp = 0;
            for k in top {
                cum += k.1 as u64;
                if cum > t {
                    tp = k.0;
                    break;
                }
            }
            tp
        } else {
            0
        };
        (tk, tp, m)
    }

    /// Which tokens survive the filters (after penalty and temperature).
    pub fn kept(logits: &[f32], p: &SampleParams) -> Vec<bool> {
        let inv_t = p.inv_temperature();
        let z: Vec<f32> = logits.iter().map(|&v| v * inv_t).collect();
        let (tk, tp, m) = thresholds(&z, p);
        let ln_min_p = p.ln_min_p();
        z.iter()
            .map(|&v| {
                let key = key_of(v);
                !v.is_nan() && key >= tk && key >= tp && (!p.min_p_on() || v - m >= ln_min_p)
            })
            .collect()
    }

    /// The token `ops::sample::sample` picks for `u`.
    pub fn sample(logits: &[f32], p: &SampleParams, seen: &[u32], u: u32) -> u32 {
        let l = if p.has_penalty() {
            penalize(logits, seen, p.repetition_penalty)
        } else {
            logits.to_vec()
        };
        if p.is_greedy() {
            return crate::ops::argmax::cpu::argmax(&l, l.len())[0];
        }
        let inv_t = p.inv_temperature();
        let z: Vec<f32> = l.iter().map(|&v| v * inv_t).collect();
        let keep = kept(&l, p);
        let m = z
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<u64> = z
            .iter()
            .zip(&keep)
            .map(|(&v, &k)| if k { weight(v, m) as u64 } else { 0 })
            .collect();
        let s: u64 = w.iter().sum();
        if s == 0 {
            return 0;
        }
        let target = ((s as u128 * u as u128) >> 32) as u64;
        let mut cum = 0u64;
        for (i, &wi) in w.iter().enumerate() {
            cum += wi;
            if cum > target {
                return i as u32;
            }
        }
        unreachable!("target below the total")
    }
}
