//! The GPU layer: device choice and features, the allocator, the shader
//! registry and kernel cache, the command recorder, and typed tensors.
//! It knows nothing of transformers.

pub mod alloc;
pub mod device;
pub mod kernel;
pub mod recorder;
pub mod rows;
pub mod shaders;
pub mod tensor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use alloc::{Allocator, BufferKind, GpuBuffer, MemoryStats, MemoryTag, TaggedBytes};
pub use device::{Capabilities, CoopConfig, GpuOptions};
pub use kernel::Kernel;
pub use recorder::{Recorder, Submitted};
pub use rows::RowBlocks;
pub use tensor::{DType, Tensor};

// Byte sizes are formatted where the error messages need them, at the
// bottom of the crate; the GPU layer reports sizes with the same function.
pub use crate::error::format_bytes;
use crate::error::{Error, Result};

/// An opened GPU: device, queue, what it can do, the allocator and caches.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Capabilities,
    pub alloc: Allocator,
    pub(crate) kernels: kernel::KernelCache,
    pub(crate) bind_groups: Mutex<HashMap<recorder::BindKey, wgpu::BindGroup>>,
    /// Outcome of the cooperative matmul's one-time check against the
    /// portable path (`ops::matmul::coop_ready`).
    pub(crate) coop_matmul_ok: std::sync::OnceLock<bool>,
    /// Submissions, dispatches and bytes read back since the GPU was
    /// opened (counted in dry runs too).
    pub(crate) counters: Mutex<Counters>,
    errors: Arc<device::ErrorSink>,
    _instance: wgpu::Instance,
}

/// What the program has asked of the GPU since it was opened: the
/// structure of a decode step (submissions, dispatches and bytes read back
/// per token) is counted, not timed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Command buffers submitted to the queue.
    pub submissions: u64,
    /// Compute dispatches in them.
    pub dispatches: u64,
    /// Bytes copied back to the host.
    pub readback_bytes: u64,
}

impl Counters {
    /// `self − earlier`, field by field.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            submissions: self.submissions - earlier.submissions,
            dispatches: self.dispatches - earlier.dispatches,
            readback_bytes: self.readback_bytes - earlier.readback_bytes,
        }
    }
}

impl Gpu {
    /// Open the adapter that the options (or the preference order) pick.
    pub fn open(opts: &GpuOptions) -> Result<Gpu> {
        Gpu::open_with(opts, false)
    }

    /// A dry run of the adapter that `open` would pick: same limits,
    /// features and allocator, but buffers are only counted, kernels are
    /// not compiled and submissions run nothing (reads return zeros). A
    /// program run on it allocates exactly what it would on the real
    /// device, which is how memory plans are made without weights.
    pub fn open_dry(opts: &GpuOptions) -> Result<Gpu> {
        Gpu::open_with(opts, true)
    }

    /// Whether this is a dry run (`open_dry`).
    pub fn is_dry(&self) -> bool {
        self.alloc.is_dry()
    }

    fn open_with(opts: &GpuOptions, dry: bool) -> Result<Gpu> {
        let backends = device::parse_backends(opts.backend.as_deref())?;
        let instance = device::make_instance(backends);
        let adapters = device::list_adapters(&instance, backends);
        if adapters.is_empty() {
            return Err(Error::NoAdapter {
                backends: device::backends_to_string(backends),
                hint: device::no_adapter_hint(),
            });
        }
        let idx = device::choose_adapter(&adapters, opts.adapter.as_deref())?;
        let adapter = adapters
            .into_iter()
            .nth(idx)
            .expect("index from choose_adapter");
        let (dev, queue, features, errors) = device::open_device(&adapter)?;
        let mut caps = Capabilities::from_adapter(&adapter, features);
        device::apply_binding_override(&mut caps.limits)?;
        let alloc = Allocator::new(dev.clone(), &caps.limits, dry);
        Ok(Gpu {
            info: adapter.get_info(),
            adapter,
            device: dev,
            queue,
            caps,
            alloc,
            kernels: kernel::KernelCache::default(),
            bind_groups: Mutex::new(HashMap::new()),
            coop_matmul_ok: std::sync::OnceLock::new(),
            counters: Mutex::new(Counters::default()),
            errors,
            _instance: instance,
        })
    }

    /// A one-line description: name, backend, type.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {})",
            self.info.name,
            device::backend_name(self.info.backend),
            device::device_type_name(self.info.device_type)
        )
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn count(&self, submissions: u64, dispatches: u64, readback_bytes: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.submissions += submissions;
        c.dispatches += dispatches;
        c.readback_bytes += readback_bytes;
    }

    pub fn memory(&self) -> MemoryStats {
        self.alloc.stats()
    }

    /// Report asynchronous errors (lost device, validation) as an `Error`.
    pub fn check_errors(&self) -> Result<()> {
        self.errors.take()
    }

    /// Block until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| match e {
                wgpu::PollError::Timeout => Error::Gpu("timed out waiting for the GPU".into()),
                other => Error::DeviceLost(other.to_string()),
            })?;
        self.check_errors()
    }

    /// Release pooled buffers and the bind groups that refer to them.
    pub fn trim(&self) -> u64 {
        self.bind_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.alloc.trim()
    }

    pub fn recorder(&self) -> Recorder<'_> {
        Recorder::new(self)
    }

    /// Workgroup counts for `n` workgroups in a 1-D launch, folded into y
    /// when x would pass the per-dimension limit. Shaders rebuild the linear
    /// index as `wid.x + wid.y * nwg.x`.
    pub fn grid_1d(&self, n: u32) -> [u32; 3] {
        let max = self.caps.limits.max_compute_workgroups_per_dimension.max(1);
        if n <= max {
            [n.max(1), 1, 1]
        } else {
            let y = n.div_ceil(max);
            [n.div_ceil(y), y, 1]
        }
    }
}

impl Gpu {
    /// Bind groups currently cached (tests check that steady state adds none).
    pub fn bind_group_count(&self) -> usize {
        self.bind_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}
