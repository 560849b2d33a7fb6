//! Safetensors checkpoints: one file or a sharded set with an index,
//! memory-mapped, checked against the model description before anything
//! goes to the GPU, then uploaded in the stored dtype.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};

/// Where one tensor lives in the mapped files.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub file: usize,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file.
    pub start: usize,
    pub end: usize,
}

pub struct Checkpoint {
    pub files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    pub tensors: BTreeMap<String, TensorEntry>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; boomgpu never writes to a
    // checkpoint it has mapped (exports go to new files and are renamed).
    unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))
}

/// Parse the safetensors header of a mapped file, bounds-checked.
fn read_header(
    path: &Path,
    data: &[u8],
    file: usize,
    out: &mut BTreeMap<String, TensorEntry>,
) -> Result<()> {
    let bad = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
    if data.len() < 8 {
        return Err(bad("too short to be a safetensors file (truncated?)".into()));
    }
    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
    if n > data.len() - 8 {
        return Err(bad(format!(
            "header claims {n} bytes but the file has {} (truncated?)",
            data.len()
        )));
    }
    let header: serde_json::Value = serde_json::from_slice(&data[8..8 + n])
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let base = 8 + n;
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype_s = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let dtype: safetensors::Dtype = serde_json::from_value(serde_json::Value::from(dtype_s))
            .map_err(|_| bad(format!("tensor '{name}' has unknown dtype '{dtype_s}'")))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .ok_or_else(|| bad(format!("tensor '{name}' has no shape")))?;
        let offs: Vec<usize> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default();
        if offs.len() != 2 || offs[0] > offs[1] {
            return Err(bad(format!("tensor '{name}' has bad data_offsets")));
        }
        let (start, end) = (base + offs[0], base + offs[1]);
        if end > data.len() {
            return Err(bad(format!(
                "tensor '{name}' ends at byte {end} but the file has {} bytes (truncated?)",
                data.len()
            )));
        }
        let elems: usize = shape.iter().product();
        if elems * dtype.bitsize() / 8 != end - start {
            return Err(bad(format!(
                "tensor '{name}' has {} bytes for shape {shape:?} of {dtype:?}",
                end - start
            )));
        }
        out.insert(
            name.clone(),
            TensorEntry {
                file,
                dtype,
                shape,
                start,
                end,
            },
        );
    }
    Ok(())
}

impl Checkpoint {
    /// Open `model.safetensors` or the shards named by
    /// `model.safetensors.index.json` in `dir`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::Invalid(format!("{}: no 'weight_map' object", index.display()))
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            let missing: Vec<&String> = names.iter().filter(|n| !dir.join(n).exists()).collect();
            if !missing.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: shard file(s) missing: {} (the download may be incomplete)",
                    dir.display(),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::Invalid(format!(
                "{}: no model.safetensors or model.safetensors.index.json (boomgpu reads safetensors checkpoints)",
                dir.display()
            )));
        };
        let mut maps = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            let m = map_file(f)?;
            read_header(f, &m, i, &mut tensors)?;
            maps.push(m);
        }
        Ok(Checkpoint {
            files,
            maps,
            tensors,
        })
    }

    /// Open one safetensors file of any contents (reference outputs, etc.).
    pub fn open_file(path: &Path) -> Result<Checkpoint> {
        let m = map_file(path)?;
        let mut tensors = BTreeMap::new();
        read_header(path, &m, 0, &mut tensors)?;
        Ok(Checkpoint {
            files: vec![path.to_path_buf()],
            maps: vec![m],
            tensors,
        })
    }

    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let e = self.tensors.get(name)?;
        Some(&self.maps[e.file][e.start..e.end])
    }

    /// Check names, shapes and dtypes against the model description and
    /// report every problem at once.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        let mut problems = Vec::new();
        let expected = cfg.expected_tensors();
        for (name, shape) in &expected {
            match self.tensors.get(name) {
                None => problems.push(format!(
                    "missing tensor '{name}' (expected shape {shape:?})"
                )),
                Some(e) => {
                    if &e.shape != shape {
                        problems.push(format!(
                            "tensor '{name}' has shape {:?}, the config implies {shape:?}",
                            e.shape
                        ));
                    }
                    if dtype_of(e.dtype).is_none() {
                        problems.push(format!(
                            "tensor '{name}' is {:?}; boomgpu reads bf16, f16 and f32",
                            e.dtype
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "checkpoint in {} does not match its config.json ({} problem{}):\n  {}",
                self.files
                    .first()
                    .and_then(|f| f.parent())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("\n  ")
            )))
        }
    }

    /// Upload one tensor in its stored dtype, or widened to f32.
    pub fn upload(&self, gpu: &Gpu, name: &str, as_f32: bool) -> Result<Tensor> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("missing tensor '{name}'")))?;
        let bytes = self.bytes(name).expect("entry exists");
        let dtype = dtype_of(e.dtype).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor '{name}' has unsupported dtype {:?}",
                e.dtype
            ))
        })?;
        if as_f32 && dtype != DType::F32 {
            let v = to_f32(bytes, dtype);
            return gpu.upload_f32(name, &e.shape, &v);
        }
        gpu.upload_bytes(name, &e.shape, dtype, bytes)
    }

    /// A tensor as f32 on the host.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("missing tensor '{name}'")))?;
        any_to_f32(self.bytes(name).expect("entry exists"), e.dtype).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor '{name}' has unsupported dtype {:?}",
                e.dtype
            ))
        })
    }
}

/// A tensor's values as f32, whatever its stored type (integers too).
pub fn any_to_f32(bytes: &[u8], d: safetensors::Dtype) -> Option<Vec<f32>> {
    Some(match d {
        safetensors::Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        safetensors::Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => to_f32(bytes, dtype_of(other)?),
    })
}

pub fn dtype_of(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        safetensors::Dtype::F16 => Some(DType::F16),
        _ => None,
    }
}

pub use crate::gpu::tensor::to_f32;

/// Write tensors as one safetensors file, atomically (temporary name, then
/// rename). `tensors`: name → (dtype, shape, little-endian bytes).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (DType, Vec<usize>, Vec<u8>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut views = Vec::new();
    for (name, (dtype, shape, bytes)) in tensors {
        let d = match dtype {
            DType::F32 => safetensors::Dtype::F32,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F16 => safetensors::Dtype::F16,
            DType::U32 => safetensors::Dtype::U32,
        };
        let view = safetensors::tensor::TensorView::new(d, shape.clone(), bytes)
            .map_err(|e| Error::Invalid(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), view));
    }
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, metadata, &tmp)
        .map_err(|e| Error::Invalid(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
