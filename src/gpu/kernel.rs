//! Compiled kernels: one compute pipeline per (shader, entry point, override
//! constants), with an explicit bind-group layout built from naga's
//! reflection of the bindings that entry point really uses. Everything is
//! compiled once per device and cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::shaders::{self, BindingInfo, BindingKind};
use super::Gpu;
use crate::error::{Error, Result};

/// Parameters live in one uniform arena per submission; each dispatch sees
/// a window of this many bytes at a dynamic offset.
pub const PARAM_WINDOW: u64 = 256;

pub struct Kernel {
    pub shader: String,
    pub entry: String,
    pub(crate) id: u64,
    /// None on a dry-run GPU (nothing is compiled or dispatched there).
    pub(crate) pipeline: Option<wgpu::ComputePipeline>,
    pub(crate) layout: Option<wgpu::BindGroupLayout>,
    pub bindings: Vec<BindingInfo>,
    /// As declared in the shader (zeros when set by override constants).
    pub workgroup_size: [u32; 3],
}

impl Kernel {
    pub fn has_params(&self) -> bool {
        self.bindings.iter().any(|b| b.kind == BindingKind::Uniform)
    }
}

struct ModuleEntry {
    /// None on a dry-run GPU.
    module: Option<wgpu::ShaderModule>,
    naga: naga::Module,
    info: naga::valid::ModuleInfo,
}

type KernelKey = (String, String, Vec<(String, u64)>);

#[derive(Default)]
pub(crate) struct KernelCache {
    modules: Mutex<HashMap<String, Arc<ModuleEntry>>>,
    kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
    next_id: AtomicU64,
}

fn scoped<T>(gpu: &Gpu, name: &str, f: impl FnOnce() -> T) -> Result<T> {
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Shader {
            name: name.to_string(),
            message: e.to_string(),
        });
    }
    Ok(out)
}

impl Gpu {
    fn module(&self, shader: &str) -> Result<Arc<ModuleEntry>> {
        let cache = &self.kernels;
        if let Some(m) = cache
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(shader)
        {
            return Ok(m.clone());
        }
        let src = shaders::source(shader)?;
        if let Some(r) = shaders::requires_of(&src)
            .into_iter()
            .find(|r| !self.caps.meets(r))
        {
            return Err(Error::Shader {
                name: shader.to_string(),
                message: format!(
                    "needs '{r}', which {} does not offer (cooperative matrices: {})",
                    self.info.name,
                    if self.caps.coop_matrix.is_empty() {
                        "none".to_string()
                    } else {
                        self.caps
                            .coop_matrix
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            });
        }
        let (naga_module, info) = shaders::parse_and_validate(shader, &src)?;
        let module = if self.is_dry() {
            None
        } else {
            Some(scoped(self, shader, || {
                self.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader),
                        source: wgpu::ShaderSource::Wgsl(src.clone().into()),
                    })
            })?)
        };
        let entry = Arc::new(ModuleEntry {
            module,
            naga: naga_module,
            info,
        });
        cache
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(shader.to_string(), entry.clone());
        Ok(entry)
    }

    /// The kernel for `shader`'s entry point `entry`, compiled on first use.
    pub fn kernel(&self, shader: &str, entry: &str) -> Result<Arc<Kernel>> {
        self.kernel_with(shader, entry, &[])
    }

    /// Like `kernel`, with WGSL `override` constants set (tile sizes etc.).
    pub fn kernel_with(
        &self,
        shader: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Arc<Kernel>> {
        let key: KernelKey = (
            shader.to_string(),
            entry.to_string(),
            constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
        );
        if let Some(k) = self
            .kernels
            .kernels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(k.clone());
        }
        let m = self.module(shader)?;
        let (bindings, workgroup_size) = shaders::entry_bindings(shader, &m.naga, &m.info, entry)?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .map(|b| wgpu::BindGroupLayoutEntry {
                binding: b.binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b.kind {
                        BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
                        BindingKind::StorageRead => {
                            wgpu::BufferBindingType::Storage { read_only: true }
                        }
                        BindingKind::StorageReadWrite => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: b.kind == BindingKind::Uniform,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let label = format!("{shader}::{entry}");
        let compiled = match &m.module {
            None => None,
            Some(module) => Some(scoped(self, &label, || {
                let layout =
                    self.device
                        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                            label: Some(&label),
                            entries: &entries,
                        });
                let pl = self
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(&label),
                        bind_group_layouts: &[Some(&layout)],
                        immediate_size: 0,
                    });
                let pipeline =
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(&label),
                            layout: Some(&pl),
                            module,
                            entry_point: Some(entry),
                            compilation_options: wgpu::PipelineCompilationOptions {
                                constants,
                                zero_initialize_workgroup_memory: false,
                            },
                            cache: None,
                        });
                (pipeline, layout)
            })?),
        };
        let (pipeline, layout) = match compiled {
            Some((p, l)) => (Some(p), Some(l)),
            None => (None, None),
        };
        let kernel = Arc::new(Kernel {
            shader: shader.to_string(),
            entry: entry.to_string(),
            id: self.kernels.next_id.fetch_add(1, Ordering::Relaxed),
            pipeline,
            layout,
            bindings,
            workgroup_size,
        });
        self.kernels
            .kernels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, kernel.clone());
        Ok(kernel)
    }
}
