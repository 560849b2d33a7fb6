//! GGUF, llama.cpp's model file: a bounds-checked parser, dequantisation of
//! the common block formats to f32, and conversion of a llama-architecture
//! file into a Hugging Face model folder (`config.json`,
//! `model.safetensors`, `tokenizer.json`, ...).
//!
//! Everything here is plain Rust on bytes; no GPU. A file is never trusted:
//! every read is checked against the file's length, every count is checked
//! before it sizes an allocation, and a malformed file is an
//! [`Error::Invalid`] naming the file and what was wrong.
//!
//! The conversion reproduces what Hugging Face transformers (5.x) makes of
//! the same file with `from_pretrained(dir, gguf_file=...)`: the same
//! dequantised values (f32 arithmetic in the same order as `gguf-py`), the
//! rotary row order of `q_proj`/`k_proj` restored, and a byte-level BPE
//! tokenizer built the way transformers builds it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::gpu::DType;

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

    fn type_name(&self) -> &'static str {
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
// ggml tensor types
// ---------------------------------------------------------------------------

/// The ggml type ids boomgpu reads (`enum ggml_type`).
pub mod ggml_type {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q5_0: u32 = 6;
    pub const Q5_1: u32 = 7;
    pub const Q8_0: u32 = 8;
    pub const Q4_K: u32 = 12;
    pub const Q5_K: u32 = 13;
    pub const Q6_K: u32 = 14;
    pub const BF16: u32 = 30;
}

/// Name, elements per block and bytes per block of a ggml type, or None for
/// an id ggml does not define.
pub fn ggml_type_layout(id: u32) -> Option<(&'static str, usize, usize)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

/// Whether [`dequantize`] reads this ggml type.
pub fn is_supported_type(id: u32) -> bool {
    use ggml_type::*;
    matches!(
        id,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    )
}

const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K";

fn type_name(id: u32) -> String {
    ggml_type_layout(id)
        .map(|l| l.0.to_string())
        .unwrap_or_else(|| format!("type {id}"))
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
        let (version, metadata, tensors, alignment, data_start) = parsed.map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{source}: not a valid GGUF file: {m}")),
            other => other,
        })?;
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
        dequantize(t.ggml_type, self.tensor_bytes(t), t.n_elements as usize).map_err(|e| match e {
            Error::Invalid(m) => {
                Error::Invalid(format!("{}: tensor '{}': {m}", self.source, t.name))
            }
            other => other,
        })
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

// ---------------------------------------------------------------------------
// Dequantisation
// ---------------------------------------------------------------------------
//
// Each block format as ggml defines it; the arithmetic is f32 in the order
// gguf-py (which transformers uses) evaluates it, so results match bit for
// bit.

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantise `n` elements of ggml type `ty` from `data`.
pub fn dequantize(ty: u32, data: &[u8], n: usize) -> Result<Vec<f32>> {
    use ggml_type::*;
    let (name, block, block_bytes) =
        ggml_type_layout(ty).ok_or_else(|| Error::Invalid(format!("unknown ggml type {ty}")))?;
    if !is_supported_type(ty) {
        return Err(Error::Invalid(format!(
            "unsupported ggml type {ty} ({name}); boomgpu reads {SUPPORTED_TYPES}"
        )));
    }
    let need = (n / block).checked_mul(block_bytes);
    if !n.is_multiple_of(block) || need != Some(data.len()) {
        return Err(Error::Invalid(format!(
            "{n} elements of {name} (blocks of {block}, {block_bytes} bytes each) do not fit {} bytes",
            data.len()
        )));
    }
    let mut out = vec![0f32; n];
    let blocks = data
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block));
    match ty {
        F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        BF16 => {
            for (b, y) in blocks {
                y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Q8_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = d * (b[2 + j] as i8) as f32;
                }
            }
        }
        Q4_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    y[j] = d * ((qs[j] & 0x0f) as i32 - 8) as f32;
                    y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
                }
            }
        }
        Q4_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                for j in 0..16 {
                    y[j] = d * (qs[j] & 0x0f) as f32 + m;
                    y[j + 16] = d * (qs[j] >> 4) as f32 + m;
                }
            }
        }
        Q5_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..16 {
                    let lo = (qs[j] & 0x0f) as u32 | ((qh >> j) & 1) << 4;
                    let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                    y[j] = d * (lo as i32 - 16) as f32;
                    y[j + 16] = d * (hi as i32 - 16) as f32;
                }
            }
        }
        Q5_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                for j in 0..16 {
                    let lo = (qs[j] & 0x0f) as u32 | ((qh >> j) & 1) << 4;
                    let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                    y[j] = d * lo as f32 + m;
                    y[j + 16] = d * hi as f32 + m;
                }
            }
        }
        Q4_K => {
            for (b, y) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for g in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * g, scales);
                    let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * g..32 * g + 32];
                    let y = &mut y[64 * g..64 * g + 64];
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
        Q5_K => {
            for (b, y) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                for g in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * g, scales);
                    let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * g..32 * g + 32];
                    let y = &mut y[64 * g..64 * g + 64];
                    for l in 0..32 {
                        let h1 = ((qh[l] >> (2 * g)) & 1) << 4;
                        let h2 = ((qh[l] >> (2 * g + 1)) & 1) << 4;
                        y[l] = d1 * ((q[l] & 0x0f) | h1) as f32 - m1;
                        y[l + 32] = d2 * ((q[l] >> 4) | h2) as f32 - m2;
                    }
                }
            }
        }
        Q6_K => {
            for (b, y) in blocks {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let sc = &b[192..208];
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &ql[64 * half..64 * half + 64];
                    let qh = &qh[32 * half..32 * half + 32];
                    let sc = &sc[8 * half..8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | (qh[l] & 3) << 4) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) as i32 - 32;
                        let s = |k: usize| d * (sc[is + k] as i8) as f32;
                        y[l] = s(0) * q1 as f32;
                        y[l + 32] = s(2) * q2 as f32;
                        y[l + 64] = s(4) * q3 as f32;
                        y[l + 96] = s(6) * q4 as f32;
                    }
                }
            }
        }
        _ => unreachable!("checked by is_supported_type"),
    }
    Ok(out)
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

// ---------------------------------------------------------------------------
// Rotary row order of q/k
// ---------------------------------------------------------------------------

/// llama.cpp's converter reorders the rows of each head of `q_proj`/`k_proj`
/// from Hugging Face's "rotate half" layout to interleaved pairs:
/// GGUF row `h·d + 2i + s` is HF row `h·d + s·d/2 + i` (d = head_dim).
/// This undoes it (transformers' `reverse_permute_weights`). `w` is row-major
/// `[rows, cols]`; rows must be a multiple of `2·n_head`.
pub fn unpermute_qk_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    permute_rows(w, rows, cols, n_head, false)
}

/// The converter's direction (HF → GGUF), for tests and round trips.
pub fn permute_qk_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    permute_rows(w, rows, cols, n_head, true)
}

fn permute_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    to_gguf: bool,
) -> Result<Vec<f32>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || w.len() != rows * cols {
        return Err(Error::Invalid(format!(
            "cannot reorder the rotary rows of a [{rows}, {cols}] matrix ({} values) into {n_head} heads",
            w.len()
        )));
    }
    let head = rows / n_head;
    let half = head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let hf = h * head + s * half + i;
                let gg = h * head + 2 * i + s;
                let (dst, src) = if to_gguf { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// The Hugging Face llama name of a llama.cpp tensor name, or None.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

// ---------------------------------------------------------------------------
// Hugging Face files from the metadata
// ---------------------------------------------------------------------------

/// The llama hyper-parameters a GGUF states, read and checked.
#[derive(Clone, Debug)]
pub struct LlamaParams {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub unk_token_id: Option<u32>,
}

impl Gguf {
    fn bad(&self, m: String) -> Error {
        Error::Invalid(format!("{}: {m}", self.source))
    }

    fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.bad(format!(
                        "metadata '{key}' should be a non-negative integer, found {}",
                        v.type_name()
                    ))
                }),
        }
    }

    fn need_usize(&self, key: &str) -> Result<usize> {
        self.meta_usize(key)?
            .ok_or_else(|| self.bad(format!("metadata '{key}' is missing")))
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.bad(format!(
                    "metadata '{key}' should be a number, found {}",
                    v.type_name()
                ))
            }),
        }
    }

    fn token_id(&self, key: &str, vocab: usize) -> Result<Option<u32>> {
        match self.meta_usize(key)? {
            None => Ok(None),
            Some(id) if id < vocab => Ok(Some(id as u32)),
            Some(id) => Err(self.bad(format!(
                "metadata '{key}' = {id} is outside the vocabulary of {vocab} tokens"
            ))),
        }
    }

    /// The architecture (`general.architecture`).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// Read the llama hyper-parameters and check the tensors agree with them.
    pub fn llama_params(&self) -> Result<LlamaParams> {
        match self.architecture() {
            Some("llama") => {}
            Some(other) => {
                return Err(self.bad(format!(
                    "architecture '{other}' is not supported; import-gguf converts llama-architecture files"
                )))
            }
            None => return Err(self.bad("metadata 'general.architecture' is missing".into())),
        }
        let num_layers = self.need_usize("llama.block_count")?;
        let hidden_size = self.need_usize("llama.embedding_length")?;
        let intermediate_size = self.need_usize("llama.feed_forward_length")?;
        let num_heads = self.need_usize("llama.attention.head_count")?;
        let num_kv_heads = self
            .meta_usize("llama.attention.head_count_kv")?
            .unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(self.bad(format!(
                "{num_heads} attention heads cannot share {num_kv_heads} key/value heads"
            )));
        }
        let head_dim = match self.meta_usize("llama.attention.key_length")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(self.bad(format!(
                    "hidden size {hidden_size} is not a multiple of {num_heads} heads and llama.attention.key_length is missing"
                )))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(self.bad(format!("head dimension {head_dim} is not even")));
        }
        if let Some(v) = self.meta_usize("llama.attention.value_length")? {
            if v != head_dim {
                return Err(self.bad(format!(
                    "key length {head_dim} and value length {v} differ; Hugging Face llama needs them equal"
                )));
            }
        }
        if let Some(r) = self.meta_usize("llama.rope.dimension_count")? {
            if r != head_dim {
                return Err(self.bad(format!(
                    "rotary embeddings cover {r} of {head_dim} head dimensions; Hugging Face llama rotates all of them"
                )));
            }
        }
        if let Some(kind) = self
            .get("llama.rope.scaling.type")
            .and_then(MetaValue::as_str)
        {
            if kind != "none" {
                return Err(self.bad(format!(
                    "rope scaling '{kind}' is not supported by import-gguf"
                )));
            }
        }
        if self.tensor("rope_freqs.weight").is_some() {
            return Err(self.bad(
                "the file has rope_freqs.weight (Llama 3.1-style rope scaling), which import-gguf cannot express in config.json yet".into(),
            ));
        }
        let embed = self
            .tensor("token_embd.weight")
            .ok_or_else(|| self.bad("tensor 'token_embd.weight' is missing".into()))?;
        if embed.dims.len() != 2 || embed.dims[0] as usize != hidden_size {
            return Err(self.bad(format!(
                "token_embd.weight has dimensions {:?}, expected [{hidden_size}, vocab]",
                embed.dims
            )));
        }
        let vocab_size = embed.dims[1] as usize;
        if let Some(n) = self.meta_usize("llama.vocab_size")? {
            if n != vocab_size {
                return Err(self.bad(format!(
                    "llama.vocab_size is {n} but token_embd.weight has {vocab_size} rows"
                )));
            }
        }
        let rms_norm_eps = self
            .meta_f64("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5);
        let rope_theta = self.meta_f64("llama.rope.freq_base")?.unwrap_or(10000.0);
        let max_position_embeddings = self.meta_usize("llama.context_length")?.unwrap_or(2048);
        Ok(LlamaParams {
            num_layers,
            hidden_size,
            intermediate_size,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            bos_token_id: self.token_id("tokenizer.ggml.bos_token_id", vocab_size)?,
            eos_token_id: self.token_id("tokenizer.ggml.eos_token_id", vocab_size)?,
            pad_token_id: self.token_id("tokenizer.ggml.padding_token_id", vocab_size)?,
            unk_token_id: self.token_id("tokenizer.ggml.unknown_token_id", vocab_size)?,
        })
    }

    fn token_list(&self) -> Result<&[String]> {
        match self.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(MetaArray::Str(t))) => Ok(t),
            Some(v) => Err(self.bad(format!(
                "tokenizer.ggml.tokens should be an array of strings, found {}",
                match v {
                    MetaValue::Array(a) => format!("an array of {}", a.type_name()),
                    other => other.type_name().to_string(),
                }
            ))),
            None => {
                Err(self.bad("the file has no tokenizer (tokenizer.ggml.tokens is missing)".into()))
            }
        }
    }
}

/// `config.json` for a llama model.
pub fn llama_config_json(p: &LlamaParams, dtype: DType) -> Value {
    let dtype_name = torch_dtype(dtype);
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.num_heads,
        "num_key_value_heads": p.num_kv_heads,
        "head_dim": p.head_dim,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": p.max_position_embeddings,
        "rms_norm_eps": p.rms_norm_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": null,
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": p.tie_word_embeddings,
        "use_cache": true,
        "bos_token_id": p.bos_token_id,
        "eos_token_id": p.eos_token_id,
        "pad_token_id": p.pad_token_id,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    })
}

fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// GPT-2's byte ↔ printable-character table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xa1..=0xac).contains(&b)
            || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("below the surrogates")
        };
    }
    table
}

/// The split regex transformers puts before the byte-level step for the
/// `tokenizer.ggml.pre` names it knows (GGUF_PRE_TOKENIZER_SPLITS); others
/// use GPT-2's own regex inside ByteLevel.
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// Token type 3 in `tokenizer.ggml.token_type`.
const TOKEN_CONTROL: i64 = 3;
/// Token type 4: an added token that is matched whole but is not special.
const TOKEN_USER_DEFINED: i64 = 4;

/// The tokenizer files a GGUF's `tokenizer.ggml.*` metadata describes.
pub struct TokenizerFiles {
    pub tokenizer: Value,
    pub tokenizer_config: Value,
    pub generation_config: Value,
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// Tokens added as special (control) or whole (user-defined).
    pub added: usize,
}

/// Build `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json`. Only byte-level BPE (`tokenizer.ggml.model =
/// "gpt2"`) is supported; the result is the tokenizer transformers 5.x
/// builds from the same metadata.
pub fn tokenizer_files(g: &Gguf, p: &LlamaParams) -> Result<TokenizerFiles> {
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| g.bad("metadata 'tokenizer.ggml.model' is missing".into()))?;
    if model != "gpt2" {
        return Err(g.bad(format!(
            "tokenizer model '{model}' is not supported yet; import-gguf converts byte-level BPE ('gpt2') tokenizers"
        )));
    }
    let tokens = g.token_list()?;
    if tokens.len() > p.vocab_size {
        return Err(g.bad(format!(
            "the tokenizer has {} tokens but the embedding only {} rows",
            tokens.len(),
            p.vocab_size
        )));
    }
    let types = match g.get("tokenizer.ggml.token_type") {
        None => None,
        Some(MetaValue::Array(a))
            if a.len() == tokens.len() && (a.is_empty() || a.int_at(0).is_some()) =>
        {
            Some(a)
        }
        Some(_) => {
            return Err(g.bad(format!(
                "tokenizer.ggml.token_type should be an integer array of {} entries",
                tokens.len()
            )))
        }
    };
    let merges: &[String] = match g.get("tokenizer.ggml.merges") {
        Some(MetaValue::Array(MetaArray::Str(m))) => m,
        Some(MetaValue::Array(a)) if a.is_empty() => &[],
        None => {
            return Err(g.bad(
                "tokenizer.ggml.merges is missing (a byte-level BPE tokenizer needs its merges)"
                    .into(),
            ))
        }
        Some(_) => return Err(g.bad("tokenizer.ggml.merges should be an array of strings".into())),
    };

    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (id, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) {
            t.clone()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        // A later duplicate wins, as in a Python dict comprehension.
        seen.insert(key.clone(), id);
        vocab.insert(key, Value::from(id));
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let parts: Vec<&str> = m.split(' ').collect();
        if parts.len() != 2 {
            return Err(g.bad(format!(
                "merge {i} '{m}' is not two tokens separated by one space"
            )));
        }
        merge_pairs.push(json!([parts[0], parts[1]]));
    }

    let token_type = |i: usize| types.and_then(|a| a.int_at(i)).unwrap_or(1);
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let special = match token_type(id) {
            TOKEN_CONTROL if in_alphabet(t) => true,
            TOKEN_USER_DEFINED if seen.contains_key(t) => false,
            _ => continue,
        };
        // A token spelled twice maps to its last id in the vocabulary.
        let vid = seen.get(t).copied().unwrap_or(id);
        added.push((vid, t.clone(), special));
    }
    added.sort_by_key(|a| a.0);
    added.dedup_by_key(|a| a.0);
    let added_json: Vec<Value> = added
        .iter()
        .map(|(id, t, special)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": special})
        })
        .collect();

    // Ids were checked against the embedding, which may have more rows than
    // the tokenizer has tokens.
    let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned();
    let bos = name_of(p.bos_token_id);
    let eos = name_of(p.eos_token_id);
    let add_bos = g
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(false)
        && bos.is_some();
    let add_eos = g
        .get("tokenizer.ggml.add_eos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(false)
        && eos.is_some();
    let post_processor = template_processing(
        bos.clone().zip(p.bos_token_id).filter(|_| add_bos),
        eos.clone().zip(p.eos_token_id).filter(|_| add_eos),
    );

    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let pre_tokenizer = match pre_tokenizer_split(pre) {
        None => byte_level,
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merge_pairs
        }
    });

    let mut tc = Map::new();
    tc.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    tc.insert("add_bos_token".into(), add_bos.into());
    tc.insert("add_eos_token".into(), add_eos.into());
    tc.insert("bos_token".into(), json!(bos));
    tc.insert("eos_token".into(), json!(eos));
    tc.insert("pad_token".into(), json!(name_of(p.pad_token_id)));
    tc.insert("unk_token".into(), json!(name_of(p.unk_token_id)));
    tc.insert("clean_up_tokenization_spaces".into(), false.into());
    tc.insert(
        "model_max_length".into(),
        Value::from(p.max_position_embeddings),
    );
    if let Some(t) = g.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        tc.insert("chat_template".into(), t.into());
    }

    let generation_config = json!({
        "bos_token_id": p.bos_token_id,
        "eos_token_id": p.eos_token_id,
        "pad_token_id": p.pad_token_id,
    });
    Ok(TokenizerFiles {
        tokenizer,
        tokenizer_config: Value::Object(tc),
        generation_config,
        vocab_size: tokens.len(),
        added: added.len(),
    })
}

/// transformers' `update_post_processor`: `[bos] $A [eos]`, pairs likewise.
fn template_processing(bos: Option<(String, u32)>, eos: Option<(String, u32)>) -> Value {
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (type_id, seq_id) in [(0u32, "A"), (1, "B")] {
        let mut part = Vec::new();
        if let Some((b, _)) = &bos {
            part.push(special(b, type_id));
        }
        part.push(seq(seq_id, type_id));
        if let Some((e, _)) = &eos {
            part.push(special(e, type_id));
        }
        if type_id == 0 {
            single = part.clone();
        }
        pair.extend(part);
    }
    let mut specials = Map::new();
    for (t, id) in bos.iter().chain(eos.iter()) {
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

// ---------------------------------------------------------------------------
// The import
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// dtype of the written weights: f32 (default, exact), bf16 or f16.
    pub dtype: DType,
    /// Replace a non-empty output folder.
    pub force: bool,
    /// Largest safetensors file; bigger models are sharded with an index.
    pub max_shard_bytes: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dtype: DType::F32,
            force: false,
            max_shard_bytes: 4 << 30,
        }
    }
}

/// What an import wrote.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub out: PathBuf,
    pub tensors: usize,
    pub params: u64,
    pub dtype: DType,
    pub layers: usize,
    pub tied: bool,
    pub vocab_size: usize,
    /// Tokens in the tokenizer and how many of them are added tokens.
    pub tokenizer_tokens: usize,
    pub added_tokens: usize,
    /// ggml type name → number of tensors of that type in the source.
    pub source_types: BTreeMap<String, usize>,
    /// Files written, relative to `out`.
    pub files: Vec<String>,
}

/// One tensor to write: its GGUF source, HF name and what to do to it.
struct Planned<'a> {
    info: &'a TensorInfo,
    hf: String,
    shape: Vec<usize>,
    /// Heads to undo the rotary row order with (q: heads, k: kv heads).
    unpermute_heads: Option<usize>,
}

fn plan<'a>(g: &'a Gguf, p: &LlamaParams) -> Result<Vec<Planned<'a>>> {
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for t in &g.tensors {
        let Some(hf) = hf_name(&t.name) else {
            unknown.push(t.name.clone());
            continue;
        };
        let unpermute_heads = if t.name.ends_with(".attn_q.weight") {
            Some(p.num_heads)
        } else if t.name.ends_with(".attn_k.weight") {
            Some(p.num_kv_heads)
        } else {
            None
        };
        out.push(Planned {
            shape: t.hf_shape(),
            info: t,
            hf,
            unpermute_heads,
        });
    }
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(8).map(String::as_str).collect();
        return Err(g.bad(format!(
            "{} tensor(s) have no Hugging Face llama equivalent: {}{}",
            unknown.len(),
            shown.join(", "),
            if unknown.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )));
    }
    // Shapes are checked against the config by Checkpoint::check on the
    // written folder; here only what must hold for the conversion itself.
    for t in &out {
        if !is_supported_type(t.info.ggml_type) {
            return Err(g.bad(format!(
                "unsupported ggml type {} ({}) for tensor '{}'; import-gguf reads {SUPPORTED_TYPES} (re-quantise the model to one of these, e.g. with llama-quantize)",
                t.info.ggml_type,
                type_name(t.info.ggml_type),
                t.info.name
            )));
        }
        if t.info.n_elements == 0 {
            return Err(g.bad(format!("tensor '{}' is empty", t.info.name)));
        }
        if t.unpermute_heads.is_some() && t.shape.len() != 2 {
            return Err(g.bad(format!(
                "tensor '{}' has shape {:?}; a projection matrix has two dimensions",
                t.info.name, t.shape
            )));
        }
    }
    out.sort_by(|a, b| a.hf.cmp(&b.hf));
    Ok(out)
}

/// Dequantise, reorder and encode one tensor.
fn convert(g: &Gguf, t: &Planned, dtype: DType) -> Result<Vec<u8>> {
    let mut v = g.tensor_f32(t.info)?;
    if let Some(heads) = t.unpermute_heads {
        v = unpermute_qk_rows(&v, t.shape[0], t.shape[1], heads)
            .map_err(|e| g.bad(format!("tensor '{}': {e}", t.info.name)))?;
    }
    encode(&v, dtype).map_err(|m| g.bad(format!("tensor '{}': {m}", t.info.name)))
}

fn encode(v: &[f32], dtype: DType) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(v.len() * dtype.size());
    match dtype {
        DType::F32 => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::BF16 => v
            .iter()
            .for_each(|&x| out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())),
        DType::F16 => {
            for &x in v {
                let h = half::f16::from_f32(x);
                if h.is_infinite() && x.is_finite() {
                    return Err(format!(
                        "value {x} does not fit in f16; import with --dtype bf16 or f32"
                    ));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
        DType::U32 => return Err("weights cannot be written as u32".into()),
    }
    Ok(out)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialise");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Removes a half-written folder unless the import finished.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Convert a llama GGUF file into a Hugging Face folder at `out`.
///
/// Everything is written into a temporary folder beside `out` and renamed
/// into place at the end, so `out` is either the complete model or
/// untouched. A non-empty `out` is replaced only with `opts.force`.
pub fn import_gguf(src: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    if !matches!(opts.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::Invalid(format!(
            "--dtype {} is not a weight dtype (use f32, bf16 or f16)",
            opts.dtype.name()
        )));
    }
    let out_exists = match std::fs::symlink_metadata(out) {
        Ok(m) if !m.is_dir() => {
            return Err(Error::Invalid(format!(
                "{}: exists and is not a folder",
                out.display()
            )))
        }
        Ok(_) => true,
        Err(_) => false,
    };
    let out_nonempty = out_exists
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
    if out_nonempty && !opts.force {
        return Err(Error::Invalid(format!(
            "{}: the folder is not empty; pass --force to replace it",
            out.display()
        )));
    }
    if out_nonempty {
        let src_abs = std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
        let out_abs = std::fs::canonicalize(out).map_err(|e| Error::io(out, e))?;
        if src_abs.starts_with(&out_abs) {
            return Err(Error::Invalid(format!(
                "{} lies inside --out {}; replacing the folder would delete it",
                src.display(),
                out.display()
            )));
        }
    }

    let g = Gguf::open(src)?;
    let p = g.llama_params()?;
    let tok = tokenizer_files(&g, &p)?;
    let planned = plan(&g, &p)?;
    let config = llama_config_json(&p, opts.dtype);
    // The description boomgpu itself will read, so that a config it would
    // reject never gets written.
    let cfg = crate::model::config::ModelConfig::from_json(config.clone())
        .map_err(|e| g.bad(format!("the derived config.json is not usable: {e}")))?;
    let expected: HashMap<String, Vec<usize>> = cfg.expected_tensors().into_iter().collect();
    let mut problems = Vec::new();
    for t in &planned {
        match expected.get(&t.hf) {
            Some(s) if *s == t.shape => {}
            Some(s) => problems.push(format!(
                "{} ({}) has shape {:?}, the metadata implies {s:?}",
                t.info.name, t.hf, t.shape
            )),
            None => problems.push(format!(
                "{} ({}) is not part of a llama model with these hyper-parameters",
                t.info.name, t.hf
            )),
        }
    }
    let have: std::collections::HashSet<&str> = planned.iter().map(|t| t.hf.as_str()).collect();
    for name in expected.keys() {
        if !have.contains(name.as_str()) {
            problems.push(format!("{name} is missing"));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(g.bad(format!(
            "the tensors do not form a llama model ({} problem{}):\n  {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        )));
    }

    // Shards: consecutive runs of tensors in name order, each under the limit.
    let elem = opts.dtype.size() as u64;
    let mut shards: Vec<Vec<&Planned>> = vec![Vec::new()];
    let mut size = 0u64;
    let mut total = 0u64;
    for t in &planned {
        let bytes = t.info.n_elements * elem;
        total += bytes;
        if size > 0 && size + bytes > opts.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(t);
        size += bytes;
    }

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let base = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{base}.import-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut guard = TempDir(Some(tmp.clone()));

    let mut files = Vec::new();
    let n_shards = shards.len();
    let mut weight_map = Map::new();
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    for (i, shard) in shards.iter().enumerate() {
        let file = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n_shards)
        };
        let mut tensors = BTreeMap::new();
        for t in shard {
            let bytes = convert(&g, t, opts.dtype)?;
            tensors.insert(t.hf.clone(), (opts.dtype, t.shape.clone(), bytes));
            weight_map.insert(t.hf.clone(), Value::from(file.clone()));
        }
        crate::model::weights::write_safetensors(
            &tmp.join(&file),
            &tensors,
            Some(metadata.clone()),
        )?;
        files.push(file);
    }
    if n_shards > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&tmp.join("model.safetensors.index.json"), &index)?;
        files.push("model.safetensors.index.json".into());
    }
    for (name, v) in [
        ("config.json", &config),
        ("generation_config.json", &tok.generation_config),
        ("tokenizer.json", &tok.tokenizer),
        ("tokenizer_config.json", &tok.tokenizer_config),
    ] {
        write_json(&tmp.join(name), v)?;
        files.push(name.to_string());
    }

    // Re-read what was written, as every other command will.
    let written = crate::model::config::ModelConfig::from_file(&tmp.join("config.json"))?;
    crate::model::weights::Checkpoint::open(&tmp)?.check(&written)?;
    tokenizers::Tokenizer::from_file(tmp.join("tokenizer.json"))
        .map_err(|e| g.bad(format!("the written tokenizer.json does not load: {e}")))?;

    // Into place: an empty folder is replaced; a non-empty one (--force) is
    // moved aside first and deleted only after the new one is in place.
    if out_nonempty {
        let old = parent.join(format!(".{base}.replaced-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        if let Err(e) = std::fs::rename(&tmp, out) {
            let _ = std::fs::rename(&old, out);
            return Err(Error::io(out, e));
        }
        let _ = std::fs::remove_dir_all(&old);
    } else {
        if out_exists {
            std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    }
    guard.0 = None;

    let mut source_types = BTreeMap::new();
    for t in &g.tensors {
        *source_types.entry(type_name(t.ggml_type)).or_insert(0) += 1;
    }
    Ok(ImportReport {
        out: out.to_path_buf(),
        tensors: planned.len(),
        params: planned.iter().map(|t| t.info.n_elements).sum(),
        dtype: opts.dtype,
        layers: p.num_layers,
        tied: p.tie_word_embeddings,
        vocab_size: p.vocab_size,
        tokenizer_tokens: tok.vocab_size,
        added_tokens: tok.added,
        source_types,
        files,
    })
}
