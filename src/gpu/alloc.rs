//! The one allocator every GPU buffer goes through. It knows the bytes live
//! in tensors, the bytes held by the device (live + pooled) and their peaks,
//! checks binding and buffer limits before allocating, and pools freed
//! buffers so that a repeated step (a training step, a decode step) allocates
//! nothing after its first run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// What a buffer is for; pools are kept apart by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferKind {
    /// Tensor storage: bound to shaders, copied to and from.
    Storage,
    /// Kernel parameters (uniforms).
    Uniform,
    /// Host-mapped buffer for reading results back.
    Readback,
    /// Timestamp query results.
    Query,
}

impl BufferKind {
    fn usages(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            BufferKind::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            BufferKind::Uniform => U::UNIFORM | U::COPY_DST,
            BufferKind::Readback => U::MAP_READ | U::COPY_DST,
            BufferKind::Query => U::QUERY_RESOLVE | U::COPY_SRC,
        }
    }
}

/// `Error::OverLimit`'s `what` for an allocation the budget refused.
pub const BUDGET_LIMIT: &str = "GPU memory budget";

/// How many memory tags there are (see `MemoryTag`).
pub const MEMORY_TAGS: usize = 12;

/// What the bytes of a buffer are for, as the caller labels them with
/// `Allocator::tagged`: the allocator keeps live bytes per tag and their
/// split at the device peak, so that a memory plan can say which part of a
/// program the peak is made of. The GPU layer gives meaning to two tags
/// only; the layers above number their own from `MemoryTag::FIRST_FREE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryTag(pub u8);

impl MemoryTag {
    /// Buffers that are not tensor storage: kernel parameters, readback
    /// and upload staging, timestamp queries.
    pub const STAGING: MemoryTag = MemoryTag(0);
    /// Storage allocated outside any tagged scope.
    pub const UNTAGGED: MemoryTag = MemoryTag(1);
    pub const FIRST_FREE: u8 = 2;
}

/// Bytes per tag: what was asked for (the rounding up to pool sizes is
/// counted apart, as slack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaggedBytes {
    pub by_tag: [u64; MEMORY_TAGS],
    /// Bytes added by rounding requests up to pooled sizes.
    pub rounding: u64,
}

/// Byte counters. `device_*` counts every buffer the allocator holds on the
/// device (in use or pooled), which is what the GPU's memory sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub live_bytes: u64,
    pub peak_live_bytes: u64,
    pub device_bytes: u64,
    pub peak_device_bytes: u64,
    /// Buffers created on the device since the allocator was made.
    pub buffers_created: u64,
    /// Requests served from the pool.
    pub reuses: u64,
    /// Bytes of pooled buffers released to stay within the budget.
    pub released: u64,
    /// Live bytes by tag now.
    pub live: TaggedBytes,
    /// Live bytes by tag when `peak_live_bytes` was reached: what the
    /// program held at its fullest (the device peak is that plus what
    /// the pool keeps of earlier sizes).
    pub at_peak: TaggedBytes,
}

impl MemoryStats {
    fn note_peaks(&mut self) {
        self.peak_device_bytes = self.peak_device_bytes.max(self.device_bytes);
        if self.live_bytes >= self.peak_live_bytes {
            self.peak_live_bytes = self.live_bytes;
            self.at_peak = self.live;
        }
    }
}

/// A buffer in the pool: its id and, unless the allocator is a dry run,
/// the device buffer.
type Pooled = (u64, Option<wgpu::Buffer>);

struct Pool {
    /// Free buffers by (kind, size).
    free: HashMap<BufferKind, BTreeMap<u64, Vec<Pooled>>>,
    stats: MemoryStats,
}

pub(crate) struct AllocShared {
    device: wgpu::Device,
    pool: Mutex<Pool>,
    next_id: AtomicU64,
    max_binding: u64,
    max_buffer: u64,
    budget: AtomicU64,
    /// A dry run: sizes are counted and pooled exactly as in a real run,
    /// but no device memory is made (memory plans rehearse the program).
    dry: bool,
    tag: AtomicU8,
}

/// A GPU buffer owned by the allocator. Dropping it returns the buffer to
/// the pool (the device memory stays allocated until `trim`).
pub struct GpuBuffer {
    id: u64,
    size: u64,
    /// Bytes asked for (`size` minus rounding).
    requested: u64,
    tag: MemoryTag,
    kind: BufferKind,
    /// None in a dry run.
    buffer: Option<wgpu::Buffer>,
    shared: Arc<AllocShared>,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer
            .as_ref()
            .expect("a dry run's buffers are never bound or copied")
    }
    /// Identity that survives pooling: the same id means the same device buffer.
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn kind(&self) -> BufferKind {
        self.kind
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuBuffer#{}({} bytes, {:?})",
            self.id, self.size, self.kind
        )
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        let buf = self.buffer.take();
        let mut pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut pool.stats;
        s.live_bytes -= self.size;
        s.live.by_tag[self.tag.0 as usize] -= self.requested;
        s.live.rounding -= self.size - self.requested;
        pool.free
            .entry(self.kind)
            .or_default()
            .entry(self.size)
            .or_default()
            .push((self.id, buf));
    }
}

impl Pool {
    /// Destroy pooled buffers, largest first, until at least `bytes` are
    /// released or the pool is empty; returns the bytes released.
    fn release(&mut self, bytes: u64) -> u64 {
        let mut freed = 0;
        while freed < bytes {
            let largest = self
                .free
                .iter()
                .filter_map(|(k, sizes)| {
                    let (s, _) = sizes.iter().rev().find(|(_, v)| !v.is_empty())?;
                    Some((*s, *k))
                })
                .max_by_key(|&(s, _)| s);
            let Some((size, kind)) = largest else {
                break;
            };
            let sizes = self.free.get_mut(&kind).expect("found above");
            let bufs = sizes.get_mut(&size).expect("found above");
            if let Some((_, b)) = bufs.pop() {
                if let Some(b) = b {
                    b.destroy();
                }
                freed += size;
            }
            if bufs.is_empty() {
                sizes.remove(&size);
            }
        }
        freed
    }
}

/// Restores the allocator's previous tag when dropped.
pub struct TagGuard {
    shared: Arc<AllocShared>,
    previous: u8,
}

impl Drop for TagGuard {
    fn drop(&mut self) {
        self.shared.tag.store(self.previous, Ordering::Relaxed);
    }
}

/// Sizes are rounded so that pooled buffers fit many requests and vec4
/// loads never run past the end: 16 bytes below 64 KiB, then to 1/32 of the
/// next power of two (at most 6.25% slack).
pub fn rounded_size(bytes: u64) -> u64 {
    let b = bytes.max(16);
    if b <= 65536 {
        return b.div_ceil(16) * 16;
    }
    let step = b.next_power_of_two() / 32;
    b.div_ceil(step) * step
}

#[derive(Clone)]
pub struct Allocator {
    pub(crate) shared: Arc<AllocShared>,
}

impl Allocator {
    pub(crate) fn new(device: wgpu::Device, limits: &wgpu::Limits, dry: bool) -> Self {
        Allocator {
            shared: Arc::new(AllocShared {
                device,
                pool: Mutex::new(Pool {
                    free: HashMap::new(),
                    stats: MemoryStats::default(),
                }),
                next_id: AtomicU64::new(1),
                max_binding: limits.max_storage_buffer_binding_size,
                max_buffer: limits.max_buffer_size,
                budget: AtomicU64::new(u64::MAX),
                dry,
                tag: AtomicU8::new(MemoryTag::UNTAGGED.0),
            }),
        }
    }

    /// Whether this allocator only counts (a dry run).
    pub fn is_dry(&self) -> bool {
        self.shared.dry
    }

    /// Label the storage allocated until the guard drops with `tag`.
    pub fn tagged(&self, tag: MemoryTag) -> TagGuard {
        assert!(
            (tag.0 as usize) < MEMORY_TAGS,
            "memory tag {} out of range",
            tag.0
        );
        TagGuard {
            shared: self.shared.clone(),
            previous: self.shared.tag.swap(tag.0, Ordering::Relaxed),
        }
    }

    /// Refuse allocations that would take the device bytes over `bytes`.
    pub fn set_budget(&self, bytes: Option<u64>) {
        self.shared
            .budget
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn budget(&self) -> Option<u64> {
        match self.shared.budget.load(Ordering::Relaxed) {
            u64::MAX => None,
            b => Some(b),
        }
    }

    pub fn stats(&self) -> MemoryStats {
        self.shared
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats
    }

    /// Restart the peak counters from the current values.
    pub fn reset_peaks(&self) {
        let mut pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.stats.peak_live_bytes = 0;
        pool.stats.peak_device_bytes = 0;
        pool.stats.note_peaks();
    }

    /// Release every pooled (unused) buffer back to the device.
    pub fn trim(&self) -> u64 {
        let mut pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner());
        let mut freed = 0;
        for sizes in pool.free.values_mut() {
            for (size, bufs) in sizes.iter_mut() {
                for (_, b) in bufs.drain(..) {
                    if let Some(b) = b {
                        b.destroy();
                    }
                    freed += size;
                }
            }
            sizes.clear();
        }
        pool.stats.device_bytes -= freed;
        freed
    }

    /// Check a storage request against the binding and buffer limits without
    /// allocating, so that plans can be refused before they start.
    pub fn check_storage(&self, name: &str, bytes: u64) -> Result<()> {
        if bytes > self.shared.max_binding {
            return Err(Error::OverLimit {
                tensor: name.to_string(),
                requested: bytes,
                limit: self.shared.max_binding,
                what: "largest buffer one shader may bind on this adapter (max_storage_buffer_binding_size)",
                hint: "boomgpu stores weight matrices and KV caches in blocks of rows and computes \
                       logits in chunks, but this tensor must fit one binding: use an adapter with \
                       a larger binding limit (or unset BOOMGPU_MAX_BINDING if it lowered the \
                       limit).",
            });
        }
        if bytes > self.shared.max_buffer {
            return Err(Error::OverLimit {
                tensor: name.to_string(),
                requested: bytes,
                limit: self.shared.max_buffer,
                what: "largest buffer on this adapter (max_buffer_size)",
                hint: "This tensor must fit one buffer: use an adapter with a larger buffer limit.",
            });
        }
        Ok(())
    }

    /// A buffer of at least `bytes` bytes. `name` says what it is for in errors.
    pub fn alloc(&self, name: &str, bytes: u64, kind: BufferKind) -> Result<GpuBuffer> {
        if kind == BufferKind::Storage {
            self.check_storage(name, bytes)?;
        } else if bytes > self.shared.max_buffer {
            return Err(Error::OverLimit {
                tensor: name.to_string(),
                requested: bytes,
                limit: self.shared.max_buffer,
                what: "largest buffer on this adapter (max_buffer_size)",
                hint: "Read back or time fewer values at once.",
            });
        }
        let mut size = rounded_size(bytes);
        if kind == BufferKind::Storage && size > self.shared.max_binding.min(self.shared.max_buffer)
        {
            // Near the limit, give up pooling slack rather than fail.
            size = bytes.div_ceil(4) * 4;
        }
        let shared = &self.shared;
        let tag = if kind == BufferKind::Storage {
            MemoryTag(shared.tag.load(Ordering::Relaxed))
        } else {
            MemoryTag::STAGING
        };
        {
            let mut pool = shared.pool.lock().unwrap_or_else(|e| e.into_inner());
            // Smallest pooled buffer that fits without wasting more than a
            // quarter of it.
            let found = pool.free.get_mut(&kind).and_then(|sizes| {
                let key = sizes
                    .range(size..=size + size / 4)
                    .find(|(_, v)| !v.is_empty())
                    .map(|(k, _)| *k)?;
                let (id, buf) = sizes.get_mut(&key)?.pop()?;
                Some((key, id, buf))
            });
            if let Some((actual, id, buf)) = found {
                let s = &mut pool.stats;
                s.live_bytes += actual;
                s.reuses += 1;
                s.live.by_tag[tag.0 as usize] += bytes;
                s.live.rounding += actual - bytes;
                s.note_peaks();
                return Ok(GpuBuffer {
                    id,
                    size: actual,
                    requested: bytes,
                    tag,
                    kind,
                    buffer: buf,
                    shared: shared.clone(),
                });
            }
            let budget = shared.budget.load(Ordering::Relaxed);
            if pool.stats.device_bytes + size > budget {
                // Release pooled buffers (largest first) until this one
                // fits: under a tight budget the pool gives up reuse for
                // room; under a loose one it keeps every buffer.
                let over = pool.stats.device_bytes + size - budget;
                let freed = pool.release(over);
                pool.stats.device_bytes -= freed;
                pool.stats.released += freed;
                if pool.stats.device_bytes + size > budget {
                    return Err(Error::OverLimit {
                        tensor: name.to_string(),
                        requested: pool.stats.device_bytes + size,
                        limit: budget,
                        what: BUDGET_LIMIT,
                        hint: "Lower the batch or sequence length, or raise the budget.",
                    });
                }
            }
        }
        let buffer = (!shared.dry).then(|| {
            shared.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(name),
                size,
                usage: kind.usages(),
                mapped_at_creation: false,
            })
        });
        let mut pool = shared.pool.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut pool.stats;
        s.live_bytes += size;
        s.device_bytes += size;
        s.live.by_tag[tag.0 as usize] += bytes;
        s.live.rounding += size - bytes;
        s.note_peaks();
        s.buffers_created += 1;
        Ok(GpuBuffer {
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            size,
            requested: bytes,
            tag,
            kind,
            buffer,
            shared: shared.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::rounded_size;

    #[test]
    fn rounding_keeps_slack_small() {
        assert_eq!(rounded_size(1), 16);
        assert_eq!(rounded_size(17), 32);
        assert_eq!(rounded_size(65536), 65536);
        for b in [65537u64, 100_000, 3_000_000, 1 << 30, (1 << 30) + 1] {
            let r = rounded_size(b);
            assert!(r >= b && r.is_multiple_of(16));
            assert!((r - b) as f64 <= b as f64 / 16.0 + 16.0, "{b} -> {r}");
        }
    }
}
