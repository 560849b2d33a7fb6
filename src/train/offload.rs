//! Lean mode's host side: the f32 master weights, AdamW moments and
//! gradient accumulators live in host memory, and a multi-threaded CPU
//! AdamW updates them (as ZeRO-Offload does); the GPU keeps 16-bit copies
//! of the matrices to compute with.
//!
//! Every result is independent of the number of threads: work is cut into
//! fixed chunks, the update is element-wise, and the gradient norm sums
//! fixed chunks' f64 partials in order. So a lean run resumed from a
//! checkpoint ends bit-identical to an uninterrupted one on any machine.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu};
use crate::ops::adamw::{cpu, AdamW};
use crate::train::loss::GradSink;
use crate::train::student::StudentParams;

/// Elements per unit of work.
const CHUNK: usize = 1 << 16;

/// Run `f` on every job, spread over the host's threads.
fn par_each<T: Send>(jobs: Vec<T>, f: impl Fn(T) + Sync) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs.len().max(1));
    if threads <= 1 {
        jobs.into_iter().for_each(f);
        return;
    }
    let per = jobs.len().div_ceil(threads);
    let mut groups: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut it = jobs.into_iter();
    loop {
        let g: Vec<T> = it.by_ref().take(per).collect();
        if g.is_empty() {
            break;
        }
        groups.push(g);
    }
    let f = &f;
    std::thread::scope(|s| {
        for g in groups {
            s.spawn(move || g.into_iter().for_each(f));
        }
    });
}

/// Values per 8-bit moment block (one f32 scale each).
pub const MOMENT_BLOCK: usize = 256;

/// The magnitudes an 8-bit moment code stands for, relative to its block's
/// largest magnitude, ascending: code 0 is 0, the others a small float
/// (`e` exponent bits, 3 mantissa bits) scaled so that the top code is
/// exactly 1. Unsigned (v ≥ 0): 8 bits, 5 exponent bits, down to 2^-31;
/// signed (m): 7 bits and a sign, 4 exponent bits, down to 2^-15. Like
/// bitsandbytes' dynamic map, small values keep their relative precision,
/// which a linear code would round to zero.
fn code_table(signed: bool) -> &'static [f32] {
    static TABLES: std::sync::OnceLock<[Vec<f32>; 2]> = std::sync::OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let make = |codes: u32, top_exp: i32| -> Vec<f32> {
            (0..codes)
                .map(|c| {
                    if c == 0 {
                        return 0.0;
                    }
                    let (e, m) = ((c >> 3) as i32, (c & 7) as f64);
                    (2f64.powi(e - top_exp) * (1.0 + m / 8.0) / 1.875) as f32
                })
                .collect()
        };
        [make(256, 31), make(128, 15)]
    });
    &t[signed as usize]
}

/// The code of `x` (already divided by its block's scale) in `table`:
/// the nearest magnitude, ties to the smaller; the sign in bit 7 when
/// signed.
fn encode(x: f32, table: &[f32], signed: bool) -> u8 {
    let a = x.abs().min(1.0);
    let hi = table.partition_point(|&t| t < a).min(table.len() - 1);
    let c = if hi > 0 && a - table[hi - 1] <= table[hi] - a {
        hi - 1
    } else {
        hi
    } as u8;
    if signed && x < 0.0 && c != 0 {
        c | 0x80
    } else {
        c
    }
}

fn decode(c: u8, table: &[f32], signed: bool) -> f32 {
    if signed {
        let v = table[(c & 0x7f) as usize];
        if c & 0x80 != 0 {
            -v
        } else {
            v
        }
    } else {
        table[c as usize]
    }
}

/// Quantise `x` into `codes` and one scale per `MOMENT_BLOCK` values.
fn quantize_moments(x: &[f32], codes: &mut [u8], scales: &mut [f32], signed: bool) {
    let table = code_table(signed);
    for ((xb, cb), s) in x
        .chunks(MOMENT_BLOCK)
        .zip(codes.chunks_mut(MOMENT_BLOCK))
        .zip(scales.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        *s = amax;
        for (c, &v) in cb.iter_mut().zip(xb) {
            *c = if amax > 0.0 {
                encode(v / amax, table, signed)
            } else {
                0
            };
        }
    }
}

fn dequantize_moments(codes: &[u8], scales: &[f32], signed: bool, out: &mut [f32]) {
    let table = code_table(signed);
    for ((cb, &s), ob) in codes
        .chunks(MOMENT_BLOCK)
        .zip(scales)
        .zip(out.chunks_mut(MOMENT_BLOCK))
    {
        for (o, &c) in ob.iter_mut().zip(cb) {
            *o = decode(c, table, signed) * s;
        }
    }
}

/// One AdamW moment of every parameter: f32, or 8-bit blocks.
enum Moments {
    F32(Vec<Vec<f32>>),
    Q8 {
        signed: bool,
        codes: Vec<Vec<u8>>,
        scales: Vec<Vec<f32>>,
    },
}

impl Moments {
    fn zeros(sizes: &[usize], eight_bit: bool, signed: bool) -> Moments {
        if eight_bit {
            Moments::Q8 {
                signed,
                codes: sizes.iter().map(|&n| vec![0u8; n]).collect(),
                scales: sizes
                    .iter()
                    .map(|&n| vec![0f32; n.div_ceil(MOMENT_BLOCK)])
                    .collect(),
            }
        } else {
            Moments::F32(sizes.iter().map(|&n| vec![0f32; n]).collect())
        }
    }

    fn get(&self, i: usize) -> Vec<f32> {
        match self {
            Moments::F32(v) => v[i].clone(),
            Moments::Q8 {
                signed,
                codes,
                scales,
            } => {
                let mut out = vec![0f32; codes[i].len()];
                dequantize_moments(&codes[i], &scales[i], *signed, &mut out);
                out
            }
        }
    }

    fn set(&mut self, i: usize, x: &[f32]) {
        match self {
            Moments::F32(v) => v[i].copy_from_slice(x),
            Moments::Q8 {
                signed,
                codes,
                scales,
            } => quantize_moments(x, &mut codes[i], &mut scales[i], *signed),
        }
    }

    fn bytes_per_value(&self) -> f64 {
        match self {
            Moments::F32(_) => 4.0,
            Moments::Q8 { .. } => 1.0 + 4.0 / MOMENT_BLOCK as f64,
        }
    }
}

/// One unit of AdamW work over a chunk of one parameter: its moments in
/// place (f32) or as 8-bit blocks to decode and encode again.
enum MomentChunk<'a> {
    F32(&'a mut [f32]),
    Q8 {
        codes: &'a mut [u8],
        scales: &'a mut [f32],
        signed: bool,
    },
}

impl Moments {
    /// The moments cut like `CHUNK`-sized chunks of parameter `i`.
    fn chunks(&mut self) -> Vec<Vec<MomentChunk<'_>>> {
        match self {
            Moments::F32(v) => v
                .iter_mut()
                .map(|x| x.chunks_mut(CHUNK).map(MomentChunk::F32).collect())
                .collect(),
            Moments::Q8 {
                signed,
                codes,
                scales,
            } => codes
                .iter_mut()
                .zip(scales.iter_mut())
                .map(|(c, s)| {
                    c.chunks_mut(CHUNK)
                        .zip(s.chunks_mut(CHUNK / MOMENT_BLOCK))
                        .map(|(codes, scales)| MomentChunk::Q8 {
                            codes,
                            scales,
                            signed: *signed,
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

impl MomentChunk<'_> {
    fn load(&self, out: &mut Vec<f32>) {
        if let MomentChunk::Q8 {
            codes,
            scales,
            signed,
        } = self
        {
            out.resize(codes.len(), 0.0);
            dequantize_moments(codes, scales, *signed, out);
        }
    }

    fn store(&mut self, x: &[f32]) {
        if let MomentChunk::Q8 {
            codes,
            scales,
            signed,
        } = self
        {
            quantize_moments(x, codes, scales, *signed);
        }
    }
}

/// Masters, moments and gradient sums of every parameter, in
/// `StudentParams` order.
pub struct HostState {
    pub masters: Vec<Vec<f32>>,
    m: Moments,
    v: Moments,
    pub grads: Vec<Vec<f32>>,
    /// A memory plan's rehearsal: the vectors are never written, so their
    /// pages are never touched (a plan of a 5B student costs no memory).
    dry: bool,
}

impl HostState {
    /// Zero moments and gradients beside `masters`; the moments in 8-bit
    /// blocks with `adam_8bit`.
    pub fn new(masters: Vec<Vec<f32>>, adam_8bit: bool) -> HostState {
        let sizes: Vec<usize> = masters.iter().map(Vec::len).collect();
        HostState {
            m: Moments::zeros(&sizes, adam_8bit, true),
            v: Moments::zeros(&sizes, adam_8bit, false),
            grads: sizes.iter().map(|&n| vec![0f32; n]).collect(),
            masters,
            dry: false,
        }
    }

    /// Parameter `i`'s moment `kind` ("m" or "v") as f32.
    pub fn moment(&self, i: usize, kind: &str) -> Vec<f32> {
        if kind == "m" {
            self.m.get(i)
        } else {
            self.v.get(i)
        }
    }

    /// Set parameter `i`'s moment `kind` (a checkpoint being restored).
    pub fn set_moment(&mut self, i: usize, kind: &str, x: &[f32]) {
        if kind == "m" {
            self.m.set(i, x)
        } else {
            self.v.set(i, x)
        }
    }

    /// A state whose updates are skipped (rehearsals on a dry-run GPU).
    pub fn dry(mut self) -> HostState {
        self.dry = true;
        self
    }

    /// Host bytes held: masters and gradient sums (4 bytes each per
    /// parameter) and the moments (4 each, or 8-bit blocks).
    pub fn bytes(&self) -> u64 {
        let n: usize = self.masters.iter().map(Vec::len).sum();
        let per = 8.0 + self.m.bytes_per_value() + self.v.bytes_per_value();
        (per * n as f64).ceil() as u64
    }

    /// grads[i] += g.
    pub fn add_grad(&mut self, i: usize, g: &[f32]) {
        if self.dry {
            return;
        }
        for (a, b) in self.grads[i].iter_mut().zip(g) {
            *a += b;
        }
    }

    /// Add `g` into parameter `i`'s gradient from element `at` on (rows
    /// of a table).
    pub fn add_grad_at(&mut self, i: usize, at: usize, g: &[f32]) {
        if self.dry {
            return;
        }
        for (a, b) in self.grads[i][at..at + g.len()].iter_mut().zip(g) {
            *a += b;
        }
    }

    pub fn zero_grads(&mut self) {
        if self.dry {
            return;
        }
        for g in &mut self.grads {
            g.fill(0.0);
        }
    }

    /// clip_grad_norm_'s total norm (f64) and clip factor over every
    /// gradient, as `ops::adamw::cpu::grad_norm` defines them.
    pub fn grad_norm(&self, max_norm: f32) -> (f64, f32) {
        if self.dry {
            return (0.0, 1.0);
        }
        let pieces: Vec<&[f32]> = self.grads.iter().flat_map(|g| g.chunks(CHUNK)).collect();
        let mut partial = vec![0f64; pieces.len()];
        let jobs: Vec<(&[f32], &mut f64)> = pieces.into_iter().zip(partial.iter_mut()).collect();
        par_each(jobs, |(g, out)| {
            *out = g.iter().map(|&x| x as f64 * x as f64).sum();
        });
        let norm = partial.iter().sum::<f64>().sqrt();
        let scale = if max_norm > 0.0 {
            (max_norm / (norm as f32 + 1e-6)).min(1.0)
        } else {
            1.0
        };
        (norm, scale)
    }

    /// One AdamW step of every parameter (`cfgs[i]` is parameter i's), the
    /// gradients multiplied by `scale` first.
    pub fn adamw(&mut self, cfgs: &[AdamW], step: u64, scale: f32) {
        if self.dry {
            return;
        }
        let mut jobs = Vec::new();
        let (mc, vc) = (self.m.chunks(), self.v.chunks());
        for ((((p, m), v), g), cfg) in self
            .masters
            .iter_mut()
            .zip(mc)
            .zip(vc)
            .zip(self.grads.iter())
            .zip(cfgs)
        {
            for (((p, m), v), g) in p.chunks_mut(CHUNK).zip(m).zip(v).zip(g.chunks(CHUNK)) {
                jobs.push((p, m, v, g, cfg));
            }
        }
        par_each(jobs, |(p, mut m, mut v, g, cfg)| match (&mut m, &mut v) {
            (MomentChunk::F32(m), MomentChunk::F32(v)) => {
                cpu::adamw_step(p, g, m, v, cfg, step, scale)
            }
            _ => {
                let (mut mf, mut vf) = (Vec::new(), Vec::new());
                m.load(&mut mf);
                v.load(&mut vf);
                cpu::adamw_step(p, g, &mut mf, &mut vf, cfg, step, scale);
                m.store(&mf);
                v.store(&vf);
            }
        });
    }

    /// Write the masters into the GPU's compute weights (rounded to
    /// nearest-even where those are 16-bit).
    pub fn upload(&self, gpu: &Gpu, params: &StudentParams) -> Result<()> {
        if self.dry || gpu.is_dry() {
            return Ok(());
        }
        for (p, vals) in params.params.iter().zip(&self.masters) {
            match p.value.dtype() {
                DType::BF16 => {
                    let mut out = vec![half::bf16::ZERO; vals.len()];
                    let jobs: Vec<_> = out.chunks_mut(CHUNK).zip(vals.chunks(CHUNK)).collect();
                    par_each(jobs, |(o, v)| {
                        for (o, &x) in o.iter_mut().zip(v) {
                            *o = half::bf16::from_f32(x);
                        }
                    });
                    gpu.write_bytes(&p.value, bytemuck::cast_slice(&out))?;
                }
                _ => gpu.write_f32(&p.value, vals)?,
            }
        }
        Ok(())
    }
}

/// Lean mode's update of one step: AdamW of every parameter with the
/// clip factor, then the masters written into the GPU's copy.
pub(crate) struct PendingUpdate {
    pub cfgs: Vec<AdamW>,
    pub step: u64,
    pub clip: f32,
}

impl PendingUpdate {
    pub fn run(self, h: &mut HostState, gpu: &Gpu, params: &StudentParams) -> Result<()> {
        h.adamw(&self.cfgs, self.step, self.clip);
        h.zero_grads();
        h.upload(gpu, params)
    }
}

/// The host's state during a micro-batch: still being updated by the
/// last step's AdamW on other threads, or ready for gradients.
pub(crate) enum HostSlot<'scope> {
    Updating(std::thread::ScopedJoinHandle<'scope, Result<HostState>>),
    Ready(HostState),
    /// Only while being taken out.
    Taken,
}

/// The embedding's blocks: first row and parameter index, in row order.
pub(crate) fn embed_blocks(
    student: &crate::model::decoder::Decoder,
    params: &StudentParams,
) -> Result<Vec<(usize, usize)>> {
    student
        .embed
        .iter()
        .map(|(first, t)| {
            let i = params.param_of(t).ok_or_else(|| {
                Error::Invalid(format!(
                    "embedding block at row {first} is not a student parameter"
                ))
            })?;
            Ok((first, i))
        })
        .collect()
}

/// Lean mode's gradients leaving the GPU into the host's sums.
pub(crate) struct HostSink<'s, 'scope> {
    pub gpu: &'s Gpu,
    pub params: &'s StudentParams,
    pub slot: HostSlot<'scope>,
    /// The embedding's blocks: first row and parameter index, in order.
    pub embed: Vec<(usize, usize)>,
}

impl HostSink<'_, '_> {
    /// The host's state, once the update running on it is done.
    fn host(&mut self) -> Result<&mut HostState> {
        self.slot = match std::mem::replace(&mut self.slot, HostSlot::Taken) {
            HostSlot::Updating(job) => HostSlot::Ready(
                job.join()
                    .map_err(|_| Error::Invalid("the host's AdamW update panicked".into()))??,
            ),
            other => other,
        };
        match &mut self.slot {
            HostSlot::Ready(h) => Ok(h),
            _ => Err(Error::Invalid(
                "the host's state was lost to a failed update".into(),
            )),
        }
    }

    pub fn into_host(mut self) -> Result<HostState> {
        self.host()?;
        match std::mem::replace(&mut self.slot, HostSlot::Taken) {
            HostSlot::Ready(h) => Ok(h),
            _ => unreachable!("host() made it ready"),
        }
    }
}

impl GradSink for HostSink<'_, '_> {
    fn student_turn(&mut self, _rec: &mut crate::gpu::Recorder) -> Result<()> {
        self.host().map(|_| ())
    }

    fn layer_done(&mut self, rec: &mut crate::gpu::Recorder, layer: usize) -> Result<()> {
        let Some(own) = self.params.layer_params.get(layer) else {
            return Ok(());
        };
        for &i in own {
            let g = read_grad(self.gpu, &self.params.params[i].grad)?;
            self.host()?.add_grad(i, &g);
        }
        for s in &self.params.slots {
            rec.clear(s);
        }
        Ok(())
    }

    fn param_done(&mut self, _rec: &mut crate::gpu::Recorder, param: usize) -> Result<()> {
        let g = read_grad(self.gpu, &self.params.params[param].grad)?;
        self.host()?.add_grad(param, &g);
        Ok(())
    }

    fn embedding_rows(&mut self, ids: &[u32], d: &crate::gpu::Tensor) -> Result<()> {
        let d = read_grad(self.gpu, d)?;
        if self.gpu.is_dry() {
            return Ok(());
        }
        let hidden = d.len() / ids.len().max(1);
        if hidden * ids.len() != d.len() || self.embed.is_empty() {
            return Err(Error::Shape(format!(
                "embedding gradient: {} values for {} tokens",
                d.len(),
                ids.len()
            )));
        }
        let (last, li) = *self.embed.last().expect("checked above");
        let vocab = last + self.params.params[li].value.dim(0);
        // Tokens in order: the sums do not depend on threads.
        for (k, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(Error::Invalid(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                )));
            }
            let b = self.embed.partition_point(|&(first, _)| first <= id) - 1;
            let (first, i) = self.embed[b];
            let row = &d[k * hidden..(k + 1) * hidden];
            self.host()?.add_grad_at(i, (id - first) * hidden, row);
        }
        Ok(())
    }
}

/// A gradient's values on the host; on a dry-run GPU only the readback is
/// made (its zeros are never converted, so they cost no host memory).
pub(crate) fn read_grad(gpu: &Gpu, t: &crate::gpu::Tensor) -> Result<Vec<f32>> {
    if gpu.is_dry() {
        gpu.read_bytes(t)?;
        return Ok(Vec::new());
    }
    gpu.read_f32(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threaded_adamw_and_norm_match_the_reference() {
        let n = [3 * CHUNK + 17, 5, CHUNK];
        let vals = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 - 500.0) / 700.0)
                .collect()
        };
        let masters: Vec<Vec<f32>> = n.iter().enumerate().map(|(i, &l)| vals(i, l)).collect();
        let mut h = HostState::new(masters.clone(), false);
        for (i, g) in h.grads.iter_mut().enumerate() {
            *g = vals(i + 10, g.len());
        }
        let grads = h.grads.clone();
        let cfgs = [
            AdamW::default(),
            AdamW {
                weight_decay: 0.0,
                ..AdamW::default()
            },
            AdamW::default(),
        ];
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let (want_norm, want_scale) = cpu::grad_norm(&refs, 1.0);
        let (norm, scale) = h.grad_norm(1.0);
        assert!((norm - want_norm).abs() <= 1e-9 * want_norm);
        assert_eq!(scale, want_scale);
        h.adamw(&cfgs, 3, scale);
        for i in 0..n.len() {
            let (mut p, mut m, mut v) = (masters[i].clone(), vec![0.0; n[i]], vec![0.0; n[i]]);
            cpu::adamw_step(&mut p, &grads[i], &mut m, &mut v, &cfgs[i], 3, scale);
            assert_eq!(h.masters[i], p, "parameter {i}");
            assert_eq!(h.moment(i, "m"), m);
            assert_eq!(h.moment(i, "v"), v);
        }
        assert_eq!(h.bytes(), 16 * n.iter().sum::<usize>() as u64);
    }

    #[test]
    fn eight_bit_moments_round_trip_and_follow_f32_adamw() {
        for signed in [false, true] {
            let t = code_table(signed);
            assert!(t.windows(2).all(|w| w[0] < w[1]), "ascending");
            assert_eq!(*t.last().unwrap(), 1.0);
        }
        // Values over many magnitudes, and their relative error.
        let n = 3 * MOMENT_BLOCK + 17;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let mag = 10f32.powi(-((i % 9) as i32));
                if i % 3 == 0 {
                    -mag
                } else {
                    mag * 0.7
                }
            })
            .collect();
        for signed in [true, false] {
            let x: Vec<f32> = x
                .iter()
                .map(|&v| if signed { v } else { v.abs() })
                .collect();
            let mut codes = vec![0u8; n];
            let mut scales = vec![0f32; n.div_ceil(MOMENT_BLOCK)];
            quantize_moments(&x, &mut codes, &mut scales, signed);
            let mut back = vec![0f32; n];
            dequantize_moments(&codes, &scales, signed, &mut back);
            for (a, b) in x.iter().zip(&back) {
                let floor = if signed {
                    2f32.powi(-15)
                } else {
                    2f32.powi(-31)
                };
                if a.abs() > floor {
                    assert!((a - b).abs() <= 0.07 * a.abs(), "{a} -> {b}");
                }
            }
            // Encoding what was decoded gives the same codes (resumes are exact).
            let (mut c2, mut s2) = (vec![0u8; n], vec![0f32; scales.len()]);
            quantize_moments(&back, &mut c2, &mut s2, signed);
            assert_eq!(c2, codes);
            assert_eq!(s2, scales);
        }
        // Ten AdamW steps with 8-bit moments stay close to f32 moments.
        let len = CHUNK + 300;
        let masters: Vec<Vec<f32>> =
            vec![(0..len).map(|i| ((i % 97) as f32 - 48.0) / 100.0).collect()];
        let (mut a, mut b) = (
            HostState::new(masters.clone(), false),
            HostState::new(masters, true),
        );
        for step in 1..=10u64 {
            for h in [&mut a, &mut b] {
                h.grads[0] = (0..len)
                    .map(|i| (((i * 31 + step as usize * 7) % 101) as f32 - 50.0) / 500.0)
                    .collect();
                h.adamw(&[AdamW::default()], step, 1.0);
            }
        }
        let moved: f32 = a.masters[0].iter().map(|x| x.abs()).fold(0.0, f32::max);
        let apart = a.masters[0]
            .iter()
            .zip(&b.masters[0])
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(apart < 1e-3 * moved.max(1.0), "apart {apart}");
        assert!(b.bytes() < a.bytes() * 2 / 3);
    }
}
