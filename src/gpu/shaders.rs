//! The shader registry: every `shaders/*.wgsl` file is embedded at build
//! time (see build.rs). Files whose names start with `_` are libraries that
//! other shaders pull in with a `//#include _name` line; the rest are
//! compiled, one module per file, with forward and backward entry points
//! side by side.
//!
//! This module also validates shaders with naga and translates them to
//! every back end (SPIR-V, MSL, HLSL, GLSL), which catches most portability
//! mistakes on a machine that can only execute Vulkan.

use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

/// Names of the compilable shaders (library snippets left out).
pub fn shader_names() -> impl Iterator<Item = &'static str> {
    SHADER_SOURCES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !n.starts_with('_'))
}

fn raw_source(name: &str) -> Option<&'static str> {
    SHADER_SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// The source of a shader with its `//#include` lines expanded.
pub fn source(name: &str) -> Result<String> {
    let raw = raw_source(name).ok_or_else(|| Error::Shader {
        name: name.to_string(),
        message: "no such shader in shaders/".to_string(),
    })?;
    expand_includes(name, raw, 0)
}

fn expand_includes(name: &str, src: &str, depth: usize) -> Result<String> {
    if depth > 8 {
        return Err(Error::Shader {
            name: name.to_string(),
            message: "includes nested too deeply (a cycle?)".to_string(),
        });
    }
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        if let Some(inc) = line.trim().strip_prefix("//#include ") {
            let inc = inc.trim().trim_end_matches(".wgsl");
            let body = raw_source(inc).ok_or_else(|| Error::Shader {
                name: name.to_string(),
                message: format!("includes '{inc}', which is not in shaders/"),
            })?;
            out.push_str(&expand_includes(name, body, depth + 1)?);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

/// Back ends a shader must translate to. A shader may narrow this with a
/// line `//! targets: spv, msl` (cooperative matrices exist only in some).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    pub spv: bool,
    pub msl: bool,
    pub hlsl: bool,
    pub glsl: bool,
}

pub fn targets_of(src: &str) -> Targets {
    for line in src.lines() {
        if let Some(list) = line.trim().strip_prefix("//! targets:") {
            let has = |t: &str| list.split(',').any(|x| x.trim() == t);
            return Targets {
                spv: has("spv"),
                msl: has("msl"),
                hlsl: has("hlsl"),
                glsl: has("glsl"),
            };
        }
    }
    Targets {
        spv: true,
        msl: true,
        hlsl: true,
        glsl: true,
    }
}

/// Device capabilities a shader needs beyond the baseline, from a line
/// `//! requires: coop16` (see `Capabilities::meets`).
pub fn requires_of(src: &str) -> Vec<String> {
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("//! requires:"))
        .flat_map(|list| list.split(',').map(|x| x.trim().to_string()))
        .filter(|x| !x.is_empty())
        .collect()
}

/// Parse and validate WGSL with naga, with every capability the engine may
/// request (the device still refuses what the adapter lacks).
pub fn parse_and_validate(
    name: &str,
    src: &str,
) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| Error::Shader {
        name: name.to_string(),
        message: format!("parse error:\n{}", e.emit_to_string(src)),
    })?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| Error::Shader {
        name: name.to_string(),
        message: format!("validation error:\n{}", e.emit_to_string(src)),
    })?;
    Ok((module, info))
}

/// Sizes of each back end's output, for reporting.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    pub spv_words: usize,
    pub msl_bytes: usize,
    pub hlsl_bytes: usize,
    pub glsl_bytes: usize,
    pub entry_points: Vec<String>,
}

/// Validate `src` and translate it to every back end its targets name.
pub fn translate_all(name: &str, src: &str) -> Result<Translation> {
    let (module, info) = parse_and_validate(name, src)?;
    // Back ends need `override` constants resolved: use their defaults, as
    // a pipeline created without constants would.
    let constants = naga::back::PipelineConstants::default();
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
            .map_err(|e| Error::Shader {
                name: name.to_string(),
                message: format!("override constants: {e}"),
            })?;
    let (module, info) = (module.into_owned(), info.into_owned());
    let targets = targets_of(src);
    let fail = |backend: &str, e: String| Error::Shader {
        name: name.to_string(),
        message: format!("{backend} translation failed: {e}"),
    };
    let mut t = Translation {
        entry_points: module.entry_points.iter().map(|e| e.name.clone()).collect(),
        ..Default::default()
    };
    if t.entry_points.is_empty() {
        return Err(fail("all", "the shader has no entry point".to_string()));
    }
    if targets.spv {
        let opts = naga::back::spv::Options {
            lang_version: (1, 3),
            ..Default::default()
        };
        let words = naga::back::spv::write_vec(&module, &info, &opts, None)
            .map_err(|e| fail("SPIR-V", e.to_string()))?;
        t.spv_words = words.len();
    }
    if targets.msl {
        let opts = naga::back::msl::Options {
            lang_version: (2, 4),
            ..Default::default()
        };
        let (msl, _) = naga::back::msl::write_string(
            &module,
            &info,
            &opts,
            &naga::back::msl::PipelineOptions::default(),
        )
        .map_err(|e| fail("MSL", e.to_string()))?;
        t.msl_bytes = msl.len();
    }
    if targets.hlsl {
        let opts = naga::back::hlsl::Options {
            shader_model: naga::back::hlsl::ShaderModel::V6_2,
            ..Default::default()
        };
        let popts = naga::back::hlsl::PipelineOptions::default();
        let mut hlsl = String::new();
        naga::back::hlsl::Writer::new(&mut hlsl, &opts, &popts)
            .write(&module, &info, None)
            .map_err(|e| fail("HLSL", e.to_string()))?;
        t.hlsl_bytes = hlsl.len();
    }
    if targets.glsl {
        // GLSL holds one entry point per output.
        for ep in &module.entry_points {
            let opts = naga::back::glsl::Options {
                version: naga::back::glsl::Version::Desktop(450),
                ..Default::default()
            };
            let popts = naga::back::glsl::PipelineOptions {
                shader_stage: ep.stage,
                entry_point: ep.name.clone(),
                multiview: None,
            };
            let mut glsl = String::new();
            naga::back::glsl::Writer::new(
                &mut glsl,
                &module,
                &info,
                &opts,
                &popts,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write())
            .map_err(|e| fail(&format!("GLSL ({})", ep.name), e.to_string()))?;
            t.glsl_bytes += glsl.len();
        }
    }
    Ok(t)
}

/// How an entry point uses one of its bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    Uniform,
    StorageRead,
    StorageReadWrite,
}

/// A resource an entry point uses: its name in the WGSL source is how
/// launchers refer to it.
#[derive(Clone, Debug)]
pub struct BindingInfo {
    pub name: String,
    pub binding: u32,
    pub kind: BindingKind,
}

/// The bindings (group 0 only) that entry point `entry` really uses.
pub fn entry_bindings(
    name: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> Result<(Vec<BindingInfo>, [u32; 3])> {
    let (idx, ep) = module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, e)| e.name == entry)
        .ok_or_else(|| Error::Shader {
            name: name.to_string(),
            message: format!(
                "no entry point '{entry}' (has: {})",
                module
                    .entry_points
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    let finfo = info.get_entry_point(idx);
    let mut out = Vec::new();
    for (h, var) in module.global_variables.iter() {
        if finfo[h].is_empty() {
            continue;
        }
        let Some(rb) = &var.binding else { continue };
        if rb.group != 0 {
            return Err(Error::Shader {
                name: name.to_string(),
                message: "boomgpu kernels bind everything in @group(0)".to_string(),
            });
        }
        let kind = match var.space {
            naga::AddressSpace::Uniform => BindingKind::Uniform,
            naga::AddressSpace::Storage { access } => {
                if access.contains(naga::StorageAccess::STORE) {
                    BindingKind::StorageReadWrite
                } else {
                    BindingKind::StorageRead
                }
            }
            other => {
                return Err(Error::Shader {
                    name: name.to_string(),
                    message: format!("unsupported resource space {other:?}"),
                })
            }
        };
        out.push(BindingInfo {
            name: var.name.clone().unwrap_or_default(),
            binding: rb.binding,
            kind,
        });
    }
    out.sort_by_key(|b| b.binding);
    Ok((out, ep.workgroup_size))
}
