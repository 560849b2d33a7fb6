//! The GGUF container: header, metadata key-value pairs and tensor
//! descriptions, every read checked against the file's length and every
//! count checked before it sizes an allocation.

use std::collections::HashMap;
use std::path::Path;

use super::dequant::{dequantize, ggml_type_layout};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is not plausible
/// and would let a crafted file recurse without bound.
const MAX_ARRAY_DEPTH: usize = 8;

// ---------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------

/// A typed metadata array, stored compactly (a vocabulary is ~10^5 strings).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    Array(Vec<MetaArray>),
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as an integer, for integer arrays (token types).
    pub fn int_at(&self, i: usize) -> Option<i64> {
        match self {
            MetaArray::U8(v) => v.get(i).map(|&x| x as i64),
            MetaArray::I8(v) => v.get(i).map(|&x| x as i64),
            MetaArray::U16(v) => v.get(i).map(|&x| x as i64),
            MetaArray::I16(v) => v.get(i).map(|&x| x as i64),
            MetaArray::U32(v) => v.get(i).map(|&x| x as i64),
            MetaArray::I32(v) => v.get(i).map(|&x| x as i64),
            MetaArray::U64(v) => v.get(i).and_then(|&x| i64::try_from(x).ok()),
            MetaArray::I64(v) => v.get(i).copied(),
            _ => None,
        }
    }

    pub(super) fn type_name(&self) -> &'static str {
        match self {
            MetaArray::U8(_) => "uint8",
            MetaArray::I8(_) => "int8",
            MetaArray::U16(_) => "uint16",
            MetaArray::I16(_) => "int16",
            MetaArray::U32(_) => "uint32",
            MetaArray::I32(_) => "int32",
            MetaArray::U64(_) => "uint64",
            MetaArray::I64(_) => "int64",
            MetaArray::F32(_) => "float32",
            MetaArray::F64(_) => "float64",
            MetaArray::Bool(_) => "bool",
            MetaArray::Str(_) => "string",
            MetaArray::Array(_) => "array",
        }
    }
}

/// One metadata value (GGUF value types 0..=12).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(MetaArray),
}

impl MetaValue {
    /// A non-negative integer of any integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(x) => Some(x as u64),
            MetaValue::U16(x) => Some(x as u64),
            MetaValue::U32(x) => Some(x as u64),
            MetaValue::U64(x) => Some(x),
            MetaValue::I8(x) => u64::try_from(x).ok(),
            MetaValue::I16(x) => u64::try_from(x).ok(),
            MetaValue::I32(x) => u64::try_from(x).ok(),
            MetaValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// A number of any type. An f32 is widened through its shortest decimal
    /// form, so 1e-5 stored as f32 reads as 1e-5, not 9.999999747e-6.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(x) => format!("{x}").parse().ok(),
            MetaValue::F64(x) => Some(x),
            MetaValue::I8(x) => Some(x as f64),
            MetaValue::I16(x) => Some(x as f64),
            MetaValue::I32(x) => Some(x as f64),
            MetaValue::I64(x) => Some(x as f64),
            _ => self.as_u64().map(|x| x as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F32(_) => "float32",
            MetaValue::F64(_) => "float64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

// ---------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest (the reverse of a PyTorch shape).
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Byte offset inside the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape as Hugging Face / PyTorch write it (slowest dimension first).
    pub fn hf_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file; tensor data stays in the (mapped) file until asked for.
pub struct Gguf {
    /// Where it came from, for messages.
    pub source: String,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_start: usize,
    bytes: Bytes,
}

/// A bounds-checked little-endian cursor over the file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(Error::Invalid(format!(
                "truncated: {} needs {n} bytes at offset {} but the file ends at {}",
                what(),
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(&|| format!("the length of {}", what()))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::Invalid(format!("{} is not valid UTF-8", what())))
    }

    /// A capacity for `count` items of at least `min_bytes` each that the
    /// rest of the file could actually hold (a lying count then fails on
    /// reading, not on allocating).
    fn capacity(&self, count: u64, min_bytes: usize) -> usize {
        count.min((self.remaining() / min_bytes.max(1)) as u64) as usize
    }

    /// `n` array elements of at least `min_bytes` each, read by `read`.
    fn elements<T, W: Fn() -> String>(
        &mut self,
        n: u64,
        min_bytes: usize,
        what: &dyn Fn(u64) -> W,
        read: impl Fn(&mut Self, &dyn Fn() -> String) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut v = Vec::with_capacity(self.capacity(n, min_bytes));
        for i in 0..n {
            v.push(read(self, &what(i))?);
        }
        Ok(v)
    }

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8(what)?),
            1 => MetaValue::I8(self.u8(what)? as i8),
            2 => MetaValue::U16(self.u16(what)?),
            3 => MetaValue::I16(self.u16(what)? as i16),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(self.u32(what)? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32(what)?)),
            7 => MetaValue::Bool(self.u8(what)? != 0),
            8 => MetaValue::Str(self.string(what)?),
            9 => MetaValue::Array(self.array_value(what, depth)?),
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(self.u64(what)? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64(what)?)),
            other => {
                return Err(Error::Invalid(format!(
                    "{} has unknown value type {other}",
                    what()
                )))
            }
        })
    }

    fn array_value(&mut self, what: &dyn Fn() -> String, depth: usize) -> Result<MetaArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Error::Invalid(format!(
                "{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels",
                what()
            )));
        }
        let ty = self.u32(&|| format!("the element type of {}", what()))?;
        let n = self.u64(&|| format!("the length of {}", what()))?;
        let elem = |i: u64| move || format!("element {i} of {}", what());
        Ok(match ty {
            0 => MetaArray::U8(self.elements(n, 1, &elem, |r, w| r.u8(w))?),
            1 => MetaArray::I8(self.elements(n, 1, &elem, |r, w| Ok(r.u8(w)? as i8))?),
            2 => MetaArray::U16(self.elements(n, 2, &elem, |r, w| r.u16(w))?),
            3 => MetaArray::I16(self.elements(n, 2, &elem, |r, w| Ok(r.u16(w)? as i16))?),
            4 => MetaArray::U32(self.elements(n, 4, &elem, |r, w| r.u32(w))?),
            5 => MetaArray::I32(self.elements(n, 4, &elem, |r, w| Ok(r.u32(w)? as i32))?),
            6 => MetaArray::F32(self.elements(n, 4, &elem, |r, w| Ok(f32::from_bits(r.u32(w)?)))?),
            7 => MetaArray::Bool(self.elements(n, 1, &elem, |r, w| Ok(r.u8(w)? != 0))?),
            8 => MetaArray::Str(self.elements(n, 8, &elem, |r, w| r.string(w))?),
            // An inner array is at least its type and length (12 bytes).
            9 => MetaArray::Array(self.elements(n, 12, &elem, |r, w| r.array_value(w, depth + 1))?),
            10 => MetaArray::U64(self.elements(n, 8, &elem, |r, w| r.u64(w))?),
            11 => MetaArray::I64(self.elements(n, 8, &elem, |r, w| Ok(r.u64(w)? as i64))?),
            12 => MetaArray::F64(self.elements(n, 8, &elem, |r, w| Ok(f64::from_bits(r.u64(w)?)))?),
            other => {
                return Err(Error::Invalid(format!(
                    "{} has unknown element type {other}",
                    what()
                )))
            }
        })
    }
}

impl Gguf {
    /// Map and parse a file.
    pub fn open(path: &Path) -> Result<Gguf> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: mapped read-only; boomgpu never writes to its input files.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        Gguf::parse(Bytes::Map(map), path.display().to_string())
    }

    /// Parse a file held in memory; `source` names it in messages.
    pub fn from_bytes(bytes: Vec<u8>, source: &str) -> Result<Gguf> {
        Gguf::parse(Bytes::Owned(bytes), source.to_string())
    }

    fn parse(bytes: Bytes, source: String) -> Result<Gguf> {
        let parsed = parse_header(bytes.as_slice());
        let (version, metadata, tensors, alignment, data_start) =
            parsed.map_err(|e| prefix_invalid(e, &format!("{source}: not a valid GGUF file: ")))?;
        let index = metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        Ok(Gguf {
            source,
            version,
            metadata,
            index,
            tensors,
            alignment,
            data_start,
            bytes,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked when parsing).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_start + t.offset as usize;
        &self.bytes.as_slice()[start..start + t.n_bytes as usize]
    }

    /// A tensor dequantised to f32, in ggml element order (which is also the
    /// row-major order of its Hugging Face shape).
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        dequantize(t.ggml_type, self.tensor_bytes(t), t.n_elements as usize)
            .map_err(|e| prefix_invalid(e, &format!("{}: tensor '{}': ", self.source, t.name)))
    }
}

/// An [`Error::Invalid`] message with `prefix` (which file, which tensor) in
/// front; other errors pass through.
fn prefix_invalid(e: Error, prefix: &str) -> Error {
    match e {
        Error::Invalid(m) => Error::Invalid(format!("{prefix}{m}")),
        other => other,
    }
}

type Header = (u32, Vec<(String, MetaValue)>, Vec<TensorInfo>, u64, usize);

fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.take(4, &|| "the magic number".into())?;
    if magic != MAGIC {
        return Err(Error::Invalid(format!(
            "the file starts with {magic:02x?}, not the GGUF magic \"GGUF\""
        )));
    }
    let version = r.u32(&|| "the version".into())?;
    if version != 2 && version != 3 {
        return Err(Error::Invalid(format!(
            "GGUF version {version} is not supported (boomgpu reads versions 2 and 3; re-convert the model with a recent llama.cpp)"
        )));
    }
    let n_tensors = r.u64(&|| "the tensor count".into())?;
    let n_kv = r.u64(&|| "the metadata count".into())?;

    // A key-value pair is at least a key length, a type and one byte.
    let mut metadata = Vec::with_capacity(r.capacity(n_kv, 13));
    let mut seen = HashMap::new();
    for i in 0..n_kv {
        let key = r.string(&|| format!("the key of metadata entry {i}"))?;
        let ty = r.u32(&|| format!("the value type of metadata '{key}'"))?;
        let value = r.value(ty, &|| format!("metadata '{key}'"), 0)?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(Error::Invalid(format!(
                "metadata key '{key}' appears twice"
            )));
        }
        metadata.push((key, value));
    }

    let alignment = match seen.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => match metadata[i as usize].1 {
            MetaValue::U32(a) if a > 0 && a.is_power_of_two() => a as u64,
            ref v => {
                return Err(Error::Invalid(format!(
                    "general.alignment must be a uint32 power of two, found {v:?}"
                )))
            }
        },
    };

    // A tensor description is at least a name length, a dimension count,
    // a type and an offset.
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(r.capacity(n_tensors, 24));
    let mut names = HashMap::new();
    for i in 0..n_tensors {
        let name = r.string(&|| format!("the name of tensor {i}"))?;
        let n_dims = r.u32(&|| format!("the dimension count of tensor '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(Error::Invalid(format!(
                "tensor '{name}' has {n_dims} dimensions; ggml allows at most {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
        }
        let ggml_type = r.u32(&|| format!("the type of tensor '{name}'"))?;
        let offset = r.u64(&|| format!("the data offset of tensor '{name}'"))?;
        let (tname, block, block_bytes) = ggml_type_layout(ggml_type).ok_or_else(|| {
            Error::Invalid(format!("tensor '{name}' has unknown ggml type {ggml_type}"))
        })?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor '{name}' has dimensions {dims:?} whose product overflows"
                ))
            })?;
        let row = dims.first().copied().unwrap_or(1);
        if row % block as u64 != 0 {
            return Err(Error::Invalid(format!(
                "tensor '{name}' ({tname}) has rows of {row} elements, not a multiple of its block size {block}"
            )));
        }
        let n_bytes = (n_elements / block as u64)
            .checked_mul(block_bytes as u64)
            .ok_or_else(|| Error::Invalid(format!("tensor '{name}' is too large")))?;
        if offset % alignment != 0 {
            return Err(Error::Invalid(format!(
                "tensor '{name}' starts at offset {offset}, not a multiple of the alignment {alignment}"
            )));
        }
        if names.insert(name.clone(), i).is_some() {
            return Err(Error::Invalid(format!(
                "tensor name '{name}' appears twice"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_elements,
            n_bytes,
        });
    }

    let pos = r.pos as u64;
    let data_start = pos.div_ceil(alignment) * alignment;
    let len = buf.len() as u64;
    for t in &tensors {
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= len => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "tensor '{}' ({} bytes at data offset {}) runs past the end of the file ({len} bytes; truncated?)",
                    t.name, t.n_bytes, t.offset
                )))
            }
        }
    }
    let data_start = usize::try_from(data_start)
        .map_err(|_| Error::Invalid("data section beyond the address space".into()))?;
    Ok((version, metadata, tensors, alignment, data_start))
}

impl Gguf {
    /// An [`Error::Invalid`] that names the file.
    pub(super) fn bad(&self, m: String) -> Error {
        Error::Invalid(format!("{}: {m}", self.source))
    }
}
