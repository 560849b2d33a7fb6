//! The recorder batches many dispatches (and buffer copies) into one command
//! encoder and one submission. Kernel parameters go to one uniform arena per
//! submission, bound at dynamic offsets, so that bind groups depend only on
//! the buffers and are cached across steps: a repeated step creates neither
//! buffers nor bind groups after its first run.

use std::sync::Arc;

use super::alloc::{BufferKind, GpuBuffer};
use super::kernel::{Kernel, PARAM_WINDOW};
use super::shaders::BindingKind;
use super::tensor::Tensor;
use super::Gpu;
use crate::error::{Error, Result};

/// Cache key of a bind group: kernel layout, then (binding, buffer id,
/// offset, size) per storage binding, then the parameter arena's id.
pub(crate) type BindKey = (u64, Vec<(u32, u64, u64, u64)>, u64);

struct Bound {
    binding: u32,
    buffer: Arc<GpuBuffer>,
    offset: u64,
    size: u64,
}

enum Cmd {
    Dispatch {
        kernel: Arc<Kernel>,
        bound: Vec<Bound>,
        param_offset: Option<u32>,
        groups: [u32; 3],
    },
    Copy {
        src: Arc<GpuBuffer>,
        src_offset: u64,
        dst: Arc<GpuBuffer>,
        dst_offset: u64,
        size: u64,
    },
    Clear {
        buf: Arc<GpuBuffer>,
        offset: u64,
        size: u64,
    },
}

pub struct Recorder<'g> {
    gpu: &'g Gpu,
    cmds: Vec<Cmd>,
    params: Vec<u8>,
    timed: bool,
}

/// A submitted batch: wait on it, or read its GPU time.
pub struct Submitted<'g> {
    gpu: &'g Gpu,
    pub index: wgpu::SubmissionIndex,
    timing: Option<GpuBuffer>,
    _params: Option<GpuBuffer>,
    pub dispatches: usize,
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Recorder {
            gpu,
            cmds: Vec::new(),
            params: Vec::new(),
            timed: false,
        }
    }

    /// Measure the GPU time of the whole batch with timestamp queries (when
    /// the adapter supports them; otherwise `Submitted::gpu_seconds` is None).
    pub fn timed(mut self) -> Self {
        self.timed = self.gpu.caps.timestamps;
        self
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Record one dispatch. `args` names each storage binding by its
    /// variable name in the shader; `params` fills the uniform binding.
    pub fn dispatch(
        &mut self,
        kernel: &Arc<Kernel>,
        args: &[(&str, &Tensor)],
        params: &[u8],
        groups: [u32; 3],
    ) -> Result<()> {
        let lim = self.gpu.caps.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > lim) {
            return Err(Error::Gpu(format!(
                "{}::{}: {groups:?} workgroups exceeds the per-dimension limit {lim}",
                kernel.shader, kernel.entry
            )));
        }
        let mut bound = Vec::with_capacity(args.len());
        let mut param_offset = None;
        for b in &kernel.bindings {
            if b.kind == BindingKind::Uniform {
                if params.len() as u64 > PARAM_WINDOW {
                    return Err(Error::Gpu(format!(
                        "{}::{}: parameters of {} bytes exceed the {PARAM_WINDOW}-byte window",
                        kernel.shader,
                        kernel.entry,
                        params.len()
                    )));
                }
                let align =
                    (self.gpu.caps.limits.min_uniform_buffer_offset_alignment as usize).max(16);
                let off = self.params.len().div_ceil(align) * align;
                self.params.resize(off, 0);
                self.params.extend_from_slice(params);
                param_offset = Some(off as u32);
                continue;
            }
            let t = args
                .iter()
                .find(|(n, _)| *n == b.name)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    Error::Gpu(format!(
                        "{}::{}: no tensor given for binding '{}'",
                        kernel.shader, kernel.entry, b.name
                    ))
                })?;
            let align = self.gpu.caps.limits.min_storage_buffer_offset_alignment as u64;
            if t.byte_offset() % align != 0 {
                return Err(Error::Gpu(format!(
                    "{}::{}: tensor for '{}' starts at byte {}, not a multiple of {align}; pass the offset as a parameter instead",
                    kernel.shader, kernel.entry, b.name, t.byte_offset()
                )));
            }
            // Bind whole 4-byte words, never past the buffer's end.
            let size = t
                .byte_len()
                .div_ceil(4)
                .max(1)
                .saturating_mul(4)
                .min(t.buffer().size() - t.byte_offset());
            bound.push(Bound {
                binding: b.binding,
                buffer: t.buffer().clone(),
                offset: t.byte_offset(),
                size,
            });
        }
        if kernel.has_params() && param_offset.is_none() {
            unreachable!("uniform binding handled above");
        }
        self.cmds.push(Cmd::Dispatch {
            kernel: kernel.clone(),
            bound,
            param_offset,
            groups,
        });
        Ok(())
    }

    /// Copy bytes between tensors' buffers (offsets in bytes, multiples of 4).
    pub fn copy(
        &mut self,
        src: &Tensor,
        src_offset: u64,
        dst: &Tensor,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        if !size.is_multiple_of(4) || !src_offset.is_multiple_of(4) || !dst_offset.is_multiple_of(4)
        {
            return Err(Error::Gpu(format!(
                "copy of {size} bytes at {src_offset}->{dst_offset}: offsets and size must be multiples of 4"
            )));
        }
        let (so, dob) = (
            src.byte_offset() + src_offset,
            dst.byte_offset() + dst_offset,
        );
        if so + size > src.buffer().size() || dob + size > dst.buffer().size() {
            return Err(Error::Gpu("copy runs past the end of a buffer".into()));
        }
        self.cmds.push(Cmd::Copy {
            src: src.buffer().clone(),
            src_offset: so,
            dst: dst.buffer().clone(),
            dst_offset: dob,
            size,
        });
        Ok(())
    }

    /// Set a tensor's bytes to zero.
    pub fn clear(&mut self, t: &Tensor) {
        let size = (t.byte_len().div_ceil(4) * 4).min(t.buffer().size() - t.byte_offset());
        self.cmds.push(Cmd::Clear {
            buf: t.buffer().clone(),
            offset: t.byte_offset(),
            size,
        });
    }

    fn bind_group(
        &self,
        kernel: &Kernel,
        bound: &[Bound],
        params: Option<&GpuBuffer>,
    ) -> wgpu::BindGroup {
        let key: BindKey = (
            kernel.id,
            bound
                .iter()
                .map(|b| (b.binding, b.buffer.id(), b.offset, b.size))
                .collect(),
            params.map(|p| p.id()).unwrap_or(0),
        );
        let mut cache = self
            .gpu
            .bind_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(bg) = cache.get(&key) {
            return bg.clone();
        }
        let mut entries: Vec<wgpu::BindGroupEntry> = bound
            .iter()
            .map(|b| wgpu::BindGroupEntry {
                binding: b.binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer.raw(),
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size),
                }),
            })
            .collect();
        if let Some(p) = params {
            let binding = kernel
                .bindings
                .iter()
                .find(|b| b.kind == BindingKind::Uniform)
                .map(|b| b.binding)
                .unwrap_or(0);
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: p.raw(),
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAM_WINDOW),
                }),
            });
        }
        let bg = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: kernel.layout.as_ref().expect("compiled on a real GPU"),
                entries: &entries,
            });
        // A long-running program that keeps making new buffers would grow
        // this without end; stale entries are cheap to rebuild.
        if cache.len() > 16384 {
            cache.clear();
        }
        cache.insert(key, bg.clone());
        bg
    }

    /// Encode everything into one command buffer and submit it.
    pub fn submit(self) -> Result<Submitted<'g>> {
        let gpu = self.gpu;
        let params_buf = if self.params.is_empty() {
            None
        } else {
            let size = self.params.len() as u64 + PARAM_WINDOW;
            let buf = gpu
                .alloc
                .alloc("kernel parameters", size, BufferKind::Uniform)?;
            if !gpu.is_dry() {
                let mut bytes = self.params.clone();
                bytes.resize(bytes.len().div_ceil(4) * 4, 0);
                gpu.queue.write_buffer(buf.raw(), 0, &bytes);
            }
            Some(buf)
        };
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let n_dispatch = self
            .cmds
            .iter()
            .filter(|c| matches!(c, Cmd::Dispatch { .. }))
            .count();
        gpu.count(1, n_dispatch as u64, 0);
        if gpu.is_dry() {
            // Count what a real submission holds; run nothing.
            let timing = if self.timed {
                Some(gpu.alloc.alloc("timestamps", 16, BufferKind::Query)?)
            } else {
                None
            };
            return Ok(Submitted {
                gpu,
                index: gpu.queue.submit(None),
                timing,
                _params: params_buf,
                dispatches: n_dispatch,
            });
        }
        let (query_set, timing) = if self.timed {
            let qs = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            (
                Some(qs),
                Some(gpu.alloc.alloc("timestamps", 16, BufferKind::Query)?),
            )
        } else {
            (None, None)
        };
        // Group consecutive dispatches into one compute pass; wgpu places
        // the barriers between dependent dispatches inside a pass.
        let mut i = 0;
        let mut first_pass = true;
        let mut seen_dispatch = 0;
        while i < self.cmds.len() {
            match &self.cmds[i] {
                Cmd::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => {
                    enc.copy_buffer_to_buffer(
                        src.raw(),
                        *src_offset,
                        dst.raw(),
                        *dst_offset,
                        *size,
                    );
                    i += 1;
                }
                Cmd::Clear { buf, offset, size } => {
                    enc.clear_buffer(buf.raw(), *offset, Some(*size));
                    i += 1;
                }
                Cmd::Dispatch { .. } => {
                    let mut j = i;
                    while j < self.cmds.len() && matches!(self.cmds[j], Cmd::Dispatch { .. }) {
                        j += 1;
                    }
                    let last_pass = seen_dispatch + (j - i) == n_dispatch;
                    let tw = query_set
                        .as_ref()
                        .map(|qs| wgpu::ComputePassTimestampWrites {
                            query_set: qs,
                            beginning_of_pass_write_index: if first_pass { Some(0) } else { None },
                            end_of_pass_write_index: if last_pass { Some(1) } else { None },
                        });
                    let tw = tw.filter(|t| {
                        t.beginning_of_pass_write_index.is_some()
                            || t.end_of_pass_write_index.is_some()
                    });
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: tw,
                    });
                    for cmd in &self.cmds[i..j] {
                        let Cmd::Dispatch {
                            kernel,
                            bound,
                            param_offset,
                            groups,
                        } = cmd
                        else {
                            unreachable!()
                        };
                        let bg =
                            self.bind_group(kernel, bound, param_offset.and(params_buf.as_ref()));
                        pass.set_pipeline(
                            kernel.pipeline.as_ref().expect("compiled on a real GPU"),
                        );
                        match param_offset {
                            Some(o) => pass.set_bind_group(0, &bg, &[*o]),
                            None => pass.set_bind_group(0, &bg, &[]),
                        }
                        if groups.iter().all(|&g| g > 0) {
                            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        }
                    }
                    drop(pass);
                    seen_dispatch += j - i;
                    first_pass = false;
                    i = j;
                }
            }
        }
        if let (Some(qs), Some(t)) = (&query_set, &timing) {
            if n_dispatch > 0 {
                enc.resolve_query_set(qs, 0..2, t.raw(), 0);
            }
        }
        let index = gpu.queue.submit(Some(enc.finish()));
        gpu.check_errors()?;
        Ok(Submitted {
            gpu,
            index,
            timing: if n_dispatch > 0 { timing } else { None },
            _params: params_buf,
            dispatches: n_dispatch,
        })
    }

    /// Submit what has been recorded so far and keep recording. Buffers of
    /// tensors dropped since recording began go back to the pool, which
    /// bounds the memory of long command streams (a forward pass flushes
    /// after each layer). A timed recorder does not flush, so that its
    /// single measurement covers everything.
    pub fn flush(&mut self) -> Result<()> {
        if self.timed || self.cmds.is_empty() {
            return Ok(());
        }
        let mut next = Recorder::new(self.gpu);
        std::mem::swap(self, &mut next);
        next.submit()?;
        Ok(())
    }

    /// Submit and block until done.
    pub fn run(self) -> Result<()> {
        self.submit()?.wait()
    }

    /// Submit with a copy of `t` into host-visible memory as the last
    /// command, wait, and return `t`'s bytes: one submission where
    /// `submit` and `Gpu::read_bytes` take two (a decode step reads its
    /// token id so). Tensors over the readback chunk are read apart.
    pub fn submit_read(mut self, t: &Tensor) -> Result<Vec<u8>> {
        let gpu = self.gpu;
        let len = t.byte_len();
        let padded = len.div_ceil(4) * 4;
        if len == 0 || padded > super::tensor::READBACK_CHUNK {
            self.run()?;
            return gpu.read_bytes(t);
        }
        let rb = Arc::new(gpu.alloc.alloc("readback", padded, BufferKind::Readback)?);
        self.cmds.push(Cmd::Copy {
            src: t.buffer().clone(),
            src_offset: t.byte_offset(),
            dst: rb.clone(),
            dst_offset: 0,
            size: padded,
        });
        self.submit()?;
        gpu.count(0, 0, len);
        if gpu.is_dry() {
            return Ok(vec![0; len as usize]);
        }
        super::tensor::map_read(gpu, &rb, len)
    }
}

impl Submitted<'_> {
    pub fn wait(&self) -> Result<()> {
        self.gpu
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(self.index.clone()),
                timeout: None,
            })
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.gpu.check_errors()
    }

    /// GPU seconds between the start of the first dispatch and the end of
    /// the last, when the batch was recorded with `timed()`.
    pub fn gpu_seconds(&self) -> Result<Option<f64>> {
        let Some(t) = &self.timing else {
            return Ok(None);
        };
        let gpu = self.gpu;
        if gpu.is_dry() {
            return Ok(None);
        }
        let rb = gpu
            .alloc
            .alloc("timestamp readback", 16, BufferKind::Readback)?;
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(t.raw(), 0, rb.raw(), 0, 16);
        gpu.queue.submit(Some(enc.finish()));
        gpu.count(1, 0, 16);
        let bytes = super::tensor::map_read(gpu, &rb, 16)?;
        let ts: &[u64] = bytemuck::cast_slice(&bytes);
        let ticks = ts[1].saturating_sub(ts[0]);
        Ok(Some(
            ticks as f64 * gpu.queue.get_timestamp_period() as f64 * 1e-9,
        ))
    }
}
