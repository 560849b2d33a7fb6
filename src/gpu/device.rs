//! Adapter discovery and choice, device creation with every optional feature
//! the engine can use, and the record of what was granted.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// How the user asked for an adapter: `--adapter`/`--backend` or the
/// `BOOMGPU_ADAPTER`/`BOOMGPU_BACKEND` environment variables.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// An index into the adapter list or a case-insensitive part of a name.
    pub adapter: Option<String>,
    /// `vulkan`, `metal`, `dx12`, `gl`, `all`; several may be joined by commas.
    pub backend: Option<String>,
}

impl GpuOptions {
    /// Options from the environment alone (used by tests and benches).
    pub fn from_env() -> Self {
        GpuOptions {
            adapter: std::env::var("BOOMGPU_ADAPTER")
                .ok()
                .filter(|s| !s.is_empty()),
            backend: std::env::var("BOOMGPU_BACKEND")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

/// The test switch `BOOMGPU_MAX_BINDING` (bytes, or with a unit: `64KiB`,
/// `1MiB`, `2GiB`): a lower storage-binding and buffer limit than the
/// adapter's, so that tiny models take every split path. It can only
/// lower the limits; an unreadable value is an error, not ignored.
pub fn binding_override() -> Result<Option<u64>> {
    match std::env::var("BOOMGPU_MAX_BINDING") {
        Ok(s) if !s.trim().is_empty() => parse_bytes(&s).map(Some).ok_or_else(|| {
            Error::Invalid(format!(
                "BOOMGPU_MAX_BINDING='{s}' is not a size: expected bytes, or a number with \
                 KiB, MiB or GiB (e.g. 64KiB), of at least 1KiB"
            ))
        }),
        _ => Ok(None),
    }
}

/// `1024`, `64KiB`, `64K`, `1.5MiB`, `2GiB` as bytes (binary units); None
/// when unreadable or under 1 KiB (nothing useful fits).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return None,
    };
    let bytes = num * scale as f64;
    (bytes.is_finite() && bytes >= 1024.0 && bytes < u64::MAX as f64).then(|| bytes as u64 / 4 * 4)
}

/// Lower `limits` to the `BOOMGPU_MAX_BINDING` switch, if set.
pub fn apply_binding_override(limits: &mut wgpu::Limits) -> Result<()> {
    if let Some(cap) = binding_override()? {
        limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(cap);
        limits.max_buffer_size = limits.max_buffer_size.min(cap);
    }
    Ok(())
}

/// Parse a backend list. The default leaves out GL: its compute support is
/// partial and it is only used when asked for by name.
pub fn parse_backends(spec: Option<&str>) -> Result<wgpu::Backends> {
    let Some(spec) = spec else {
        return Ok(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12);
    };
    let mut out = wgpu::Backends::empty();
    for part in spec.split(',').map(|s| s.trim().to_ascii_lowercase()) {
        out |= match part.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "all" => {
                wgpu::Backends::VULKAN
                    | wgpu::Backends::METAL
                    | wgpu::Backends::DX12
                    | wgpu::Backends::GL
            }
            _ => return Err(Error::UnknownBackend(part)),
        };
    }
    Ok(out)
}

pub fn backends_to_string(b: wgpu::Backends) -> String {
    let mut names = Vec::new();
    for (flag, name) in [
        (wgpu::Backends::VULKAN, "vulkan"),
        (wgpu::Backends::METAL, "metal"),
        (wgpu::Backends::DX12, "dx12"),
        (wgpu::Backends::GL, "gl"),
    ] {
        if b.contains(flag) {
            names.push(name);
        }
    }
    names.join(", ")
}

pub(crate) fn no_adapter_hint() -> String {
    if cfg!(target_os = "linux") {
        "Install a Vulkan driver: on a machine without a GPU, the software driver \
         (Debian/Ubuntu: `sudo apt-get install mesa-vulkan-drivers`; Fedora: `mesa-vulkan-drivers`); \
         with an NVIDIA GPU, the proprietary driver and `libvulkan1`; with AMD or Intel, \
         `mesa-vulkan-drivers`. Check with `vulkaninfo --summary`."
            .to_string()
    } else if cfg!(target_os = "macos") {
        "Metal should always be present on macOS 10.15+; check that the machine has a Metal-capable GPU."
            .to_string()
    } else if cfg!(target_os = "windows") {
        "Install or update your GPU driver (DX12 or Vulkan); on a machine without a GPU, \
         WARP (the DX12 software adapter) ships with Windows 10+."
            .to_string()
    } else {
        "Install a Vulkan driver for your GPU.".to_string()
    }
}

/// Preference order when the user names no adapter.
fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

pub fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU",
        wgpu::DeviceType::Other => "other",
    }
}

pub fn backend_name(b: wgpu::Backend) -> &'static str {
    match b {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        wgpu::Backend::Noop => "noop",
    }
}

pub fn make_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    // Validation layers are for debugging wgpu itself; keep them off unless
    // WGPU_DEBUG-style flags are set in the environment.
    desc.flags = wgpu::InstanceFlags::empty().with_env();
    wgpu::Instance::new(desc)
}

/// All adapters for the backends, in boomgpu's preference order (the first
/// is the one used when nothing is named).
pub fn list_adapters(instance: &wgpu::Instance, backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
    // Stable sort keeps the driver's order inside one device type.
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        let backend_rank = match info.backend {
            wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
            _ => 1,
        };
        (type_rank(info.device_type), backend_rank)
    });
    adapters
}

pub fn adapter_label(a: &wgpu::Adapter) -> String {
    let i = a.get_info();
    format!(
        "{} ({}, {}, driver: {} {})",
        i.name,
        backend_name(i.backend),
        device_type_name(i.device_type),
        i.driver,
        i.driver_info
    )
}

/// Pick the adapter: by index or name if asked, else the first by preference.
pub fn choose_adapter(adapters: &[wgpu::Adapter], wanted: Option<&str>) -> Result<usize> {
    if adapters.is_empty() {
        unreachable!("caller checks for an empty list");
    }
    let Some(wanted) = wanted else {
        return Ok(0);
    };
    if let Ok(i) = wanted.trim().parse::<usize>() {
        if i < adapters.len() {
            return Ok(i);
        }
    } else {
        let w = wanted.to_ascii_lowercase();
        if let Some(i) = adapters
            .iter()
            .position(|a| a.get_info().name.to_ascii_lowercase().contains(&w))
        {
            return Ok(i);
        }
    }
    Err(Error::AdapterNotFound {
        wanted: wanted.to_string(),
        available: adapters.iter().map(adapter_label).collect(),
    })
}

/// Optional features boomgpu uses when an adapter has them.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::SHADER_FLOAT32_ATOMIC
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
}

/// One cooperative-matrix configuration, in plain words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoopConfig {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub ab: String,
    pub cr: String,
}

impl std::fmt::Display for CoopConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{} {}->{}",
            self.m, self.n, self.k, self.ab, self.cr
        )
    }
}

fn coop_scalar_name(t: wgpu::CooperativeScalarType) -> String {
    format!("{t:?}").to_ascii_lowercase()
}

/// What the opened device can do; ops read this to choose fast paths.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub f16: bool,
    pub subgroup: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub timestamps: bool,
    pub timestamps_in_passes: bool,
    pub f32_atomics: bool,
    pub coop_matrix: Vec<CoopConfig>,
    pub limits: wgpu::Limits,
}

impl Capabilities {
    pub fn from_adapter(adapter: &wgpu::Adapter, features: wgpu::Features) -> Self {
        let info = adapter.get_info();
        let coop_matrix = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            adapter
                .cooperative_matrix_properties()
                .into_iter()
                .map(|p| CoopConfig {
                    m: p.m_size,
                    n: p.n_size,
                    k: p.k_size,
                    ab: coop_scalar_name(p.ab_type),
                    cr: coop_scalar_name(p.cr_type),
                })
                .collect()
        } else {
            Vec::new()
        };
        Capabilities {
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamps_in_passes: features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            f32_atomics: features.contains(wgpu::Features::SHADER_FLOAT32_ATOMIC),
            coop_matrix,
            limits: adapter.limits(),
        }
    }

    /// Whether the device offers square `size`³ cooperative matrices with
    /// f16 inputs and f32 accumulation, and the f16 and subgroup features
    /// that the cooperative matmul also uses.
    pub fn coop_f16_f32(&self, size: u32) -> bool {
        self.f16
            && self.subgroup
            && self.coop_matrix.iter().any(|c| {
                c.m == size && c.n == size && c.k == size && c.ab == "f16" && c.cr == "f32"
            })
    }

    /// The fragment edge the cooperative matmul would use here: 16 where
    /// offered (tensor cores), else 8 (lavapipe, Apple), else none.
    pub fn coop_matmul_size(&self) -> Option<u32> {
        [16, 8].into_iter().find(|&s| self.coop_f16_f32(s))
    }

    /// Whether a shader's `//! requires:` item (`coop16`, `coop8`, `f16`,
    /// `subgroup`) is met.
    pub fn meets(&self, requirement: &str) -> bool {
        match requirement {
            "coop16" => self.coop_f16_f32(16),
            "coop8" => self.coop_f16_f32(8),
            "f16" => self.f16,
            "subgroup" => self.subgroup,
            _ => false,
        }
    }

    /// Largest buffer that one shader binding may see (after the
    /// `BOOMGPU_MAX_BINDING` switch).
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }

    /// Largest tensor one buffer and one binding may hold: tensors above
    /// it are stored as blocks of rows.
    pub fn max_tensor_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }
}

/// Errors that arrive asynchronously from wgpu: the device-lost callback and
/// uncaptured validation errors. Checked after every submission.
#[derive(Default)]
pub(crate) struct ErrorSink {
    pub lost: Mutex<Option<String>>,
    pub uncaptured: Mutex<Vec<String>>,
}

impl ErrorSink {
    pub fn take(&self) -> Result<()> {
        if let Some(m) = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(Error::DeviceLost(m));
        }
        let mut errs = self.uncaptured.lock().unwrap_or_else(|e| e.into_inner());
        if !errs.is_empty() {
            let m = errs.join("\n");
            errs.clear();
            return Err(Error::Gpu(m));
        }
        Ok(())
    }
}

pub(crate) fn open_device(
    adapter: &wgpu::Adapter,
) -> Result<(wgpu::Device, wgpu::Queue, wgpu::Features, Arc<ErrorSink>)> {
    let features = adapter.features() & wanted_features();
    let experimental = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        // SAFETY: cooperative matrices are only used by the matmul fast path,
        // whose results the tests compare against the portable path.
        unsafe { wgpu::ExperimentalFeatures::enabled() }
    } else {
        wgpu::ExperimentalFeatures::disabled()
    };
    let desc = wgpu::DeviceDescriptor {
        label: Some("boomgpu"),
        required_features: features,
        required_limits: adapter.limits(),
        experimental_features: experimental,
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc))
        .map_err(|e| Error::RequestDevice(e.to_string()))?;
    let sink = Arc::new(ErrorSink::default());
    {
        let sink = sink.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                *sink.lost.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{reason:?}: {msg}"));
            }
        });
    }
    {
        let sink = sink.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.uncaptured
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(e.to_string());
        }));
    }
    Ok((device, queue, features, sink))
}

/// Bytes of memory the adapter computes in: for a CPU adapter (lavapipe,
/// WARP) the host's memory (their reported heaps are not a limit); else the
/// largest device-local heap, where the driver says (Vulkan); None
/// elsewhere.
pub fn device_memory_bytes(adapter: &wgpu::Adapter) -> Option<u64> {
    let info = adapter.get_info();
    if info.device_type == wgpu::DeviceType::Cpu {
        return host_memory_bytes();
    }
    if info.backend != wgpu::Backend::Vulkan {
        return None;
    }
    // SAFETY: only queries properties of the physical device; nothing is
    // created or destroyed through the raw handles.
    unsafe {
        let hal = adapter.as_hal::<wgpu::hal::api::Vulkan>()?;
        let instance = hal.shared_instance().raw_instance();
        let props = instance.get_physical_device_memory_properties(hal.raw_physical_device());
        props.memory_heaps[..props.memory_heap_count as usize]
            .iter()
            .filter(|h| h.flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|h| h.size)
            .max()
    }
}

/// The host's physical memory (Linux: MemTotal of /proc/meminfo).
pub fn host_memory_bytes() -> Option<u64> {
    meminfo("MemTotal:")
}

/// What a new program may take of the host's memory without swapping
/// (Linux: MemAvailable of /proc/meminfo).
pub fn host_available_bytes() -> Option<u64> {
    meminfo("MemAvailable:")
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
