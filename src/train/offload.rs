//! Lean mode's host side: the f32 master weights, AdamW moments and
//! gradient accumulators live in host memory, and a multi-threaded CPU
//! AdamW updates them (as ZeRO-Offload does); the GPU keeps 16-bit copies
//! of the matrices to compute with.
//!
//! Every result is independent of the number of threads: work is cut into
//! fixed chunks, the update is element-wise, and the gradient norm sums
//! fixed chunks' f64 partials in order. So a lean run resumed from a
//! checkpoint ends bit-identical to an uninterrupted one on any machine.

use crate::error::Result;
use crate::gpu::{DType, Gpu};
use crate::ops::adamw::{cpu, AdamW};
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

/// Masters, moments and gradient sums of every parameter, in
/// `StudentParams` order.
pub struct HostState {
    pub masters: Vec<Vec<f32>>,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub grads: Vec<Vec<f32>>,
    /// A memory plan's rehearsal: the vectors are never written, so their
    /// pages are never touched (a plan of a 5B student costs no memory).
    dry: bool,
}

impl HostState {
    /// Zero moments and gradients beside `masters`.
    pub fn new(masters: Vec<Vec<f32>>) -> HostState {
        let zeros = |m: &Vec<Vec<f32>>| m.iter().map(|x| vec![0.0f32; x.len()]).collect();
        HostState {
            m: zeros(&masters),
            v: zeros(&masters),
            grads: zeros(&masters),
            masters,
            dry: false,
        }
    }

    /// A state whose updates are skipped (rehearsals on a dry-run GPU).
    pub fn dry(mut self) -> HostState {
        self.dry = true;
        self
    }

    /// Host bytes held (4 × 4 bytes per parameter).
    pub fn bytes(&self) -> u64 {
        let n: usize = self.masters.iter().map(Vec::len).sum();
        16 * n as u64
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
        for ((((p, m), v), g), cfg) in self
            .masters
            .iter_mut()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
            .zip(self.grads.iter())
            .zip(cfgs)
        {
            for (((p, m), v), g) in p
                .chunks_mut(CHUNK)
                .zip(m.chunks_mut(CHUNK))
                .zip(v.chunks_mut(CHUNK))
                .zip(g.chunks(CHUNK))
            {
                jobs.push((p, m, v, g, cfg));
            }
        }
        par_each(jobs, |(p, m, v, g, cfg)| {
            cpu::adamw_step(p, g, m, v, cfg, step, scale)
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
        let mut h = HostState::new(masters.clone());
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
            assert_eq!(h.m[i], m);
            assert_eq!(h.v[i], v);
        }
        assert_eq!(h.bytes(), 16 * n.iter().sum::<usize>() as u64);
    }
}
