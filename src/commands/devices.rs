//! `boomgpu devices`: every adapter, what it can do, and which one boomgpu uses.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::gpu::device::{
    self, adapter_label, backend_name, device_type_name, list_adapters, make_instance,
    parse_backends, wanted_features, Capabilities,
};
use crate::gpu::{format_bytes, GpuOptions};

fn feature_names(f: wgpu::Features) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (flag, name) in [
        (wgpu::Features::SHADER_F16, "SHADER_F16"),
        (wgpu::Features::SUBGROUP, "SUBGROUP"),
        (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
        (
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            "TIMESTAMP_QUERY_INSIDE_ENCODERS",
        ),
        (
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            "TIMESTAMP_QUERY_INSIDE_PASSES",
        ),
        (
            wgpu::Features::SHADER_FLOAT32_ATOMIC,
            "SHADER_FLOAT32_ATOMIC",
        ),
        (
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            "EXPERIMENTAL_COOPERATIVE_MATRIX",
        ),
    ] {
        if f.contains(flag) {
            out.push(name);
        }
    }
    out
}

/// Describe every adapter; returns the text (or JSON) to print.
pub fn run(opts: &GpuOptions, as_json: bool) -> Result<String> {
    let backends = parse_backends(opts.backend.as_deref())?;
    let instance = make_instance(backends);
    let adapters = list_adapters(&instance, backends);
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            backends: device::backends_to_string(backends),
            hint: device::no_adapter_hint(),
        });
    }
    let chosen = device::choose_adapter(&adapters, opts.adapter.as_deref())?;
    let mut list = Vec::new();
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let features = a.features() & wanted_features();
        let caps = Capabilities::from_adapter(a, features);
        let l = &caps.limits;
        let mut effective = l.clone();
        device::apply_binding_override(&mut effective)?;
        let split_above = effective
            .max_storage_buffer_binding_size
            .min(effective.max_buffer_size);
        list.push(json!({
            "index": i,
            "name": info.name,
            "backend": backend_name(info.backend),
            "type": device_type_name(info.device_type),
            "vendor": info.vendor,
            "device": info.device,
            "driver": info.driver,
            "driver_info": info.driver_info,
            "features": feature_names(features),
            "subgroup_size": [caps.subgroup_min_size, caps.subgroup_max_size],
            "limits": {
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                "max_buffer_size": l.max_buffer_size,
                "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
                "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                "max_compute_workgroup_size": [l.max_compute_workgroup_size_x, l.max_compute_workgroup_size_y, l.max_compute_workgroup_size_z],
                "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
                "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
            },
            // Tensors above this are stored as blocks of rows
            // (after the BOOMGPU_MAX_BINDING switch, if set).
            "split_above_bytes": split_above,
            "cooperative_matrix": caps.coop_matrix.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "selected": i == chosen,
        }));
    }
    if as_json {
        let v = json!({ "adapters": list, "selected": chosen });
        return Ok(v.to_string());
    }
    let mut s = String::new();
    for (i, (a, v)) in adapters.iter().zip(&list).enumerate() {
        let mark = if i == chosen {
            "  <- boomgpu uses this"
        } else {
            ""
        };
        s.push_str(&format!("[{i}] {}{mark}\n", adapter_label(a)));
        s.push_str(&format!(
            "    features: {}\n",
            joined(&v["features"], "none of the optional ones")
        ));
        let l = &v["limits"];
        let g = |k: &str| l[k].as_u64().unwrap_or(0);
        s.push_str(&format!(
            "    max storage binding: {}   max buffer: {}   workgroup memory: {}\n",
            format_bytes(g("max_storage_buffer_binding_size")),
            format_bytes(g("max_buffer_size")),
            format_bytes(g("max_compute_workgroup_storage_size")),
        ));
        let split = v["split_above_bytes"].as_u64().unwrap_or(0);
        let forced = if split < g("max_storage_buffer_binding_size").min(g("max_buffer_size")) {
            " (lowered by BOOMGPU_MAX_BINDING)"
        } else {
            ""
        };
        s.push_str(&format!(
            "    embedding and head tables above {} are stored as blocks of rows{forced}\n",
            format_bytes(split)
        ));
        s.push_str(&format!(
            "    invocations per workgroup: {}   workgroup size: {}   workgroups per dimension: {}   subgroup size: {}..{}\n",
            g("max_compute_invocations_per_workgroup"),
            l["max_compute_workgroup_size"],
            g("max_compute_workgroups_per_dimension"),
            v["subgroup_size"][0],
            v["subgroup_size"][1],
        ));
        s.push_str(&format!(
            "    cooperative matrices: {}\n",
            joined(&v["cooperative_matrix"], "none")
        ));
    }
    Ok(s)
}

/// The strings of a JSON list, comma-separated, or `none` if there are none.
fn joined(list: &Value, none: &str) -> String {
    let items: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if items.is_empty() {
        none.to_string()
    } else {
        items.join(", ")
    }
}
