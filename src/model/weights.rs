//! Safetensors checkpoints: one file or a sharded set with an index,
//! memory-mapped, checked against the model description before anything
//! goes to the GPU, then uploaded in the stored dtype.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, RowBlocks, Tensor};

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

/// Parse and validate the safetensors header of a mapped file, as the
/// format requires: the 8-byte header length fits the file, the header is
/// UTF-8 JSON, every tensor's byte length is dtype × shape, the offsets are
/// contiguous from 0 and the last one ends exactly at the end of the file.
/// The checks are the `safetensors` crate's own (`read_metadata`); this
/// function turns its errors into messages that name the file.
fn read_header(
    path: &Path,
    data: &[u8],
    file: usize,
    out: &mut BTreeMap<String, TensorEntry>,
) -> Result<()> {
    use safetensors::SafeTensorError as E;
    let bad = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
    if data.len() < 8 {
        return Err(bad(format!(
            "{} bytes is too short to be a safetensors file (truncated?)",
            data.len()
        )));
    }
    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let after_len = (data.len() - 8) as u64;
    if n > after_len {
        return Err(bad(format!(
            "the header length field says {n} bytes but only {after_len} bytes follow it \
             (the file has {} bytes; truncated, or not a safetensors file?)",
            data.len()
        )));
    }
    let (n, meta) = safetensors::SafeTensors::read_metadata(data).map_err(|e| match e {
        E::InvalidHeader(e) => bad(format!("the header is not valid UTF-8: {e}")),
        E::InvalidHeaderDeserialization(e) | E::JsonError(e) => bad(format!(
            "the header is not valid JSON or not a safetensors header: {e} \
             (truncated, or a wrong header length?)"
        )),
        E::HeaderTooLarge => bad(format!(
            "the header length field says {n} bytes, more than safetensors allows (100 MB)"
        )),
        E::MetadataIncompleteBuffer => {
            let covered = covered_bytes(data, n as usize);
            bad(format!(
                "the tensors cover {} bytes of data but the file has {} bytes after the \
                 {n}-byte header: the offsets must reach exactly the end of the file \
                 (truncated, extra bytes, or a wrong header length?)",
                covered.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                after_len - n
            ))
        }
        E::InvalidOffset(name) => bad(format!(
            "tensor '{name}' has data_offsets that do not start where the previous tensor \
             ends (offsets must be contiguous from 0)"
        )),
        E::TensorInvalidInfo => {
            bad("a tensor's data_offsets do not span dtype size × shape bytes".to_string())
        }
        E::ValidationOverflow => bad("a tensor's shape overflows when multiplied out".into()),
        other => bad(format!("invalid safetensors file: {other}")),
    })?;
    let base = 8 + n;
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        out.insert(
            name,
            TensorEntry {
                file,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: base + s,
                end: base + e,
            },
        );
    }
    Ok(())
}

/// The largest end offset a header names, for the message about a data
/// section that the tensors do not cover exactly.
fn covered_bytes(data: &[u8], n: usize) -> Option<u64> {
    let header: serde_json::Value = serde_json::from_slice(data.get(8..8 + n)?).ok()?;
    header
        .as_object()?
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .or(Some(0))
}

/// Whether a tensor of `dtype` and `rank` is widened to f32 on upload:
/// every tensor of a student in training (`as_f32`), and f16 vectors (norm
/// weights, biases: the kernels read vectors as f32 or bf16). f16 matrices
/// and tables stay f16 (matmul, gemv and the embedding read them).
pub fn widens(dtype: DType, rank: usize, as_f32: bool) -> bool {
    dtype != DType::F32 && (as_f32 || (dtype == DType::F16 && rank == 1))
}

/// Tensor bytes as stored, or widened to f32 with `as_f32` (16-bit
/// weights for a student that trains in f32).
pub fn widened(bytes: &[u8], dtype: DType, as_f32: bool) -> (DType, std::borrow::Cow<'_, [u8]>) {
    if as_f32 && dtype != DType::F32 {
        let v = to_f32(bytes, dtype);
        return (
            DType::F32,
            std::borrow::Cow::Owned(bytemuck::cast_slice(&v).to_vec()),
        );
    }
    (dtype, std::borrow::Cow::Borrowed(bytes))
}

/// What an upload needs: shape, dtype and bytes (borrowed from the mapped
/// file, or widened).
type UploadParts<'a> = (&'a [usize], DType, std::borrow::Cow<'a, [u8]>);

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
        // The layer count first: the expected tensors are listed per layer,
        // and the list must not be planned from an unchecked config value.
        let held = self.layer_count(cfg);
        if held != cfg.num_layers {
            return Err(Error::Invalid(format!(
                "'num_hidden_layers' in config.json is {}, but the checkpoint in {} holds {held} \
                 layer(s); expected {held}",
                cfg.num_layers,
                self.folder()
            )));
        }
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
                self.folder(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("\n  ")
            )))
        }
    }

    fn folder(&self) -> String {
        self.files
            .first()
            .and_then(|f| f.parent())
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// Decoder layers the checkpoint holds: one more than the highest
    /// index among tensors named `<layer prefix><index>.…`.
    pub fn layer_count(&self, cfg: &ModelConfig) -> usize {
        let prefix = cfg.layer_prefix(0);
        let prefix = prefix.trim_end_matches("0.");
        self.tensors
            .keys()
            .filter_map(|n| {
                n.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i.saturating_add(1))
            .max()
            .unwrap_or(0)
    }

    /// A tensor's shape, dtype and bytes, widened to f32 with `as_f32`.
    fn upload_parts(&self, name: &str, as_f32: bool) -> Result<UploadParts<'_>> {
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
        let widen = widens(dtype, e.shape.len(), as_f32);
        let (dtype, bytes) = widened(bytes, dtype, widen);
        Ok((&e.shape, dtype, bytes))
    }

    /// Upload one tensor in its stored dtype, or widened to f32.
    pub fn upload(&self, gpu: &Gpu, name: &str, as_f32: bool) -> Result<Tensor> {
        let (shape, dtype, bytes) = self.upload_parts(name, as_f32)?;
        gpu.upload_bytes(name, shape, dtype, &bytes)
    }

    /// A 2-D tensor split into blocks of rows that each fit one binding
    /// (one block when it fits): embeddings, LM heads and layer matrices.
    pub fn upload_rows(&self, gpu: &Gpu, name: &str, as_f32: bool) -> Result<RowBlocks> {
        let (shape, dtype, bytes) = self.upload_parts(name, as_f32)?;
        RowBlocks::upload(gpu, name, shape, dtype, &bytes)
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
    let items: Vec<(String, DType, Vec<usize>)> = tensors
        .iter()
        .map(|(name, (dtype, shape, _))| (name.clone(), *dtype, shape.clone()))
        .collect();
    let data: Vec<&[u8]> = tensors.values().map(|t| t.2.as_slice()).collect();
    write_safetensors_streamed(path, &items, metadata.as_ref(), |i| {
        Ok(std::borrow::Cow::Borrowed(data[i]))
    })
}

/// `v` as little-endian bytes of `dtype` (f32, or rounded to nearest-even
/// bf16 / f16; f16 refuses values beyond its range, naming tensor `name`).
pub fn encode_f32(name: &str, v: &[f32], dtype: DType) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::BF16 => {
            let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
            bytemuck::cast_slice(&h).to_vec()
        }
        DType::F16 => {
            if let Some(x) = v.iter().find(|x| x.abs() > 65504.0) {
                return Err(Error::Invalid(format!(
                    "tensor '{name}' holds {x}, beyond the range of f16; save in bf16 or f32"
                )));
            }
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            bytemuck::cast_slice(&h).to_vec()
        }
        _ => bytemuck::cast_slice(v).to_vec(),
    })
}

/// Write a safetensors file one tensor at a time: `tensors` gives each
/// tensor's name, dtype and shape up front (the header), `bytes(i)` its
/// data when it is written, so at most one tensor's bytes are in memory.
/// Atomic: written under a temporary name (removed on any error), then
/// renamed.
pub fn write_safetensors_streamed<'a>(
    path: &Path,
    tensors: &[(String, DType, Vec<usize>)],
    metadata: Option<&HashMap<String, String>>,
    mut bytes: impl FnMut(usize) -> Result<std::borrow::Cow<'a, [u8]>>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), serde_json::json!(m));
    }
    let mut at = 0usize;
    for (name, dtype, shape) in tensors {
        let d = match dtype {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::U32 => "U32",
            DType::Q8 => {
                return Err(Error::Invalid(format!(
                    "tensor '{name}': the 8-bit block format is not written to safetensors"
                )))
            }
        };
        let len = dtype.storage_bytes(shape.iter().product());
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": d, "shape": shape, "data_offsets": [at, at + len]}),
        );
        at += len;
    }
    let mut text = serde_json::to_string(&serde_json::Value::Object(header)).expect("json");
    // The data starts on an 8-byte boundary.
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let written = write_streamed(&tmp, &text, tensors, &mut bytes);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn write_streamed<'a>(
    tmp: &Path,
    text: &str,
    tensors: &[(String, DType, Vec<usize>)],
    bytes: &mut impl FnMut(usize) -> Result<std::borrow::Cow<'a, [u8]>>,
) -> Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| Error::io(tmp, e);
    w.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(text.as_bytes()).map_err(io)?;
    for (i, (name, dtype, shape)) in tensors.iter().enumerate() {
        let data = bytes(i)?;
        let want = dtype.storage_bytes(shape.iter().product());
        if data.len() != want {
            return Err(Error::Invalid(format!(
                "tensor '{name}': {} bytes for {want}",
                data.len()
            )));
        }
        w.write_all(&data).map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| Error::io(tmp, e.into_error()))?
        .sync_all()
        .map_err(io)
}
