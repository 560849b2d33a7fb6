//! Typed tensors on the GPU: a shape, a dtype and a view into a pooled
//! buffer. bf16 is stored as published (two values per 32-bit word, since
//! WGSL has no bf16 type; the low half is the element with the even index).

use std::sync::Arc;

use super::alloc::{BufferKind, GpuBuffer};
use super::Gpu;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    /// bfloat16, packed in pairs into u32 words.
    BF16,
    /// IEEE half; shaders read it as `f16` where the adapter has SHADER_F16
    /// and unpack pairs of u32 otherwise.
    F16,
    U32,
    /// 8-bit blocks (a frozen teacher's matrices): every 32 consecutive
    /// values share one f32 scale (GGUF's Q8_0 with an f32 scale). The
    /// int8 values come first, four per u32 word, then the scales
    /// (`q8::quantize` writes the layout).
    Q8,
}

impl DType {
    /// Bytes per element (Q8: of its values, without the scales; use
    /// `storage_bytes` for a tensor's size).
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::Q8 => 1,
        }
    }
    /// Bytes of `numel` elements as stored.
    pub fn storage_bytes(self, numel: usize) -> usize {
        match self {
            DType::Q8 => q8::storage_bytes(numel),
            _ => numel * self.size(),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::Q8 => "q8",
        }
    }
}

/// The 8-bit block format of `DType::Q8`.
pub mod q8 {
    /// Values that share one scale.
    pub const BLOCK: usize = 32;

    /// Bytes of `n` values: the int8s padded to whole u32 words, then one
    /// f32 scale per block.
    pub fn storage_bytes(n: usize) -> usize {
        n.div_ceil(4) * 4 + 4 * n.div_ceil(BLOCK)
    }

    /// Word offset of the scales in a tensor of `n` values.
    pub fn scales_word(n: usize) -> usize {
        n.div_ceil(4)
    }

    /// Round-to-nearest quantisation: scale = max|x| / 127 per block.
    pub fn quantize(values: &[f32]) -> Vec<u8> {
        let n = values.len();
        let mut out = vec![0u8; storage_bytes(n)];
        let at = 4 * scales_word(n);
        for (b, block) in values.chunks(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (i, &x) in block.iter().enumerate() {
                out[b * BLOCK + i] = ((x * inv).round().clamp(-127.0, 127.0) as i8) as u8;
            }
            out[at + 4 * b..at + 4 * b + 4].copy_from_slice(&scale.to_le_bytes());
        }
        out
    }

    /// The values `quantize` stands for.
    pub fn dequantize(bytes: &[u8], n: usize) -> Vec<f32> {
        let at = 4 * scales_word(n);
        (0..n)
            .map(|i| {
                let s = at + 4 * (i / BLOCK);
                let scale =
                    f32::from_le_bytes([bytes[s], bytes[s + 1], bytes[s + 2], bytes[s + 3]]);
                bytes[i] as i8 as f32 * scale
            })
            .collect()
    }
}

#[derive(Clone)]
pub struct Tensor {
    buf: Arc<GpuBuffer>,
    /// Start of the view in the buffer, in bytes.
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?} {} @{}+{})",
            self.shape,
            self.dtype.name(),
            self.buf.id(),
            self.offset
        )
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// An uninitialised tensor (its contents are whatever the pooled buffer
    /// held): for outputs that a kernel writes in full.
    pub fn empty(gpu: &Gpu, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = dtype.storage_bytes(numel(shape)) as u64;
        let buf = gpu.alloc.alloc(name, bytes.max(4), BufferKind::Storage)?;
        Ok(Tensor {
            buf: Arc::new(buf),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    /// Size of dimension `i`, counting from the end when negative.
    pub fn dim(&self, i: isize) -> usize {
        let n = self.shape.len() as isize;
        let i = if i < 0 { n + i } else { i };
        self.shape[i as usize]
    }
    pub fn byte_len(&self) -> u64 {
        self.dtype.storage_bytes(self.numel()) as u64
    }
    pub fn byte_offset(&self) -> u64 {
        self.offset
    }
    pub fn buffer(&self) -> &Arc<GpuBuffer> {
        &self.buf
    }

    /// The same data with another shape of equal element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape(format!(
                "cannot reshape {:?} into {:?}",
                self.shape, shape
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// A view of `shape` starting `elem_offset` elements into this tensor.
    pub fn view(&self, elem_offset: usize, shape: &[usize]) -> Result<Tensor> {
        if elem_offset + numel(shape) > self.numel() {
            return Err(Error::Shape(format!(
                "view of {:?} at element {elem_offset} runs past a tensor of {:?}",
                shape, self.shape
            )));
        }
        let off = (elem_offset * self.dtype.size()) as u64;
        Ok(Tensor {
            offset: self.offset + off,
            shape: shape.to_vec(),
            ..self.clone()
        })
    }
}

/// Largest readback staging buffer: bigger reads go through it in turns.
pub const READBACK_CHUNK: u64 = 16 << 20;

fn pad4(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if bytes.len().is_multiple_of(4) {
        bytes.into()
    } else {
        let mut v = bytes.to_vec();
        v.resize(bytes.len().div_ceil(4) * 4, 0);
        v.into()
    }
}

/// Map a readback buffer and copy its first `len` bytes out.
pub(crate) fn map_read(gpu: &Gpu, buf: &GpuBuffer, len: u64) -> Result<Vec<u8>> {
    let slice = buf.raw().slice(0..len.div_ceil(4) * 4);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.wait()?;
    rx.recv()
        .map_err(|_| Error::DeviceLost("readback never completed".into()))?
        .map_err(|e| Error::Gpu(format!("could not read results back: {e}")))?;
    let out = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("could not map results: {e:?}")))?;
        view[..len as usize].to_vec()
    };
    buf.raw().unmap();
    Ok(out)
}

impl Gpu {
    /// Upload raw bytes as a tensor of `dtype`.
    pub fn upload_bytes(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        bytes: &[u8],
    ) -> Result<Tensor> {
        let want = dtype.storage_bytes(numel(shape));
        if bytes.len() != want {
            return Err(Error::Shape(format!(
                "'{name}': {} bytes given for shape {shape:?} of {} (needs {want})",
                bytes.len(),
                dtype.name()
            )));
        }
        let t = Tensor::empty(self, name, shape, dtype)?;
        if !bytes.is_empty() && !self.is_dry() {
            self.queue.write_buffer(t.buf.raw(), 0, &pad4(bytes));
        }
        Ok(t)
    }

    pub fn upload_f32(&self, name: &str, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_bytes(name, shape, DType::F32, bytemuck::cast_slice(data))
    }

    pub fn upload_u32(&self, name: &str, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        self.upload_bytes(name, shape, DType::U32, bytemuck::cast_slice(data))
    }

    pub fn upload_bf16(&self, name: &str, shape: &[usize], data: &[half::bf16]) -> Result<Tensor> {
        self.upload_bytes(name, shape, DType::BF16, bytemuck::cast_slice(data))
    }

    pub fn upload_f16(&self, name: &str, shape: &[usize], data: &[half::f16]) -> Result<Tensor> {
        self.upload_bytes(name, shape, DType::F16, bytemuck::cast_slice(data))
    }

    /// A tensor filled with zeros (cleared on the GPU, no host copy).
    pub fn zeros(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Tensor::empty(self, name, shape, dtype)?;
        let mut rec = self.recorder();
        rec.clear(&t);
        rec.submit()?;
        Ok(t)
    }

    /// Overwrite a tensor's contents from the host.
    pub fn write_f32(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if t.dtype != DType::F32 || data.len() != t.numel() {
            return Err(Error::Shape(format!(
                "write of {} f32 values into {:?}",
                data.len(),
                t
            )));
        }
        if !self.is_dry() {
            self.queue
                .write_buffer(t.buf.raw(), t.offset, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Overwrite a tensor's contents with raw bytes of its dtype.
    pub fn write_bytes(&self, t: &Tensor, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != t.byte_len() {
            return Err(Error::Shape(format!(
                "write of {} bytes into {:?} ({} bytes)",
                bytes.len(),
                t,
                t.byte_len()
            )));
        }
        if !self.is_dry() && !bytes.is_empty() {
            self.queue.write_buffer(t.buf.raw(), t.offset, &pad4(bytes));
        }
        Ok(())
    }

    /// Copy a tensor's bytes back to the host.
    pub fn read_bytes(&self, t: &Tensor) -> Result<Vec<u8>> {
        let len = t.byte_len();
        if len == 0 {
            return Ok(Vec::new());
        }
        let padded = len.div_ceil(4) * 4;
        // Large tensors come back through one bounded staging buffer, so
        // that reading a checkpoint's embedding does not leave a buffer of
        // its size in the pool.
        let staging = padded.min(READBACK_CHUNK);
        let rb = self
            .alloc
            .alloc("readback", staging, BufferKind::Readback)?;
        if self.is_dry() {
            // Zeros (calloc'd, so untouched pages cost no host memory).
            return Ok(vec![0; len as usize]);
        }
        let end = (t.offset + padded).min(t.buf.size());
        let mut out = Vec::with_capacity(len as usize);
        let mut at = t.offset;
        while (out.len() as u64) < len {
            let copy = staging.min(end - at);
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("readback"),
                });
            enc.copy_buffer_to_buffer(t.buf.raw(), at, rb.raw(), 0, copy);
            self.queue.submit(Some(enc.finish()));
            let want = copy.min(len - out.len() as u64);
            self.count(1, 0, want);
            out.extend_from_slice(&map_read(self, &rb, want)?);
            at += copy;
        }
        Ok(out)
    }

    /// Read any float tensor as f32 (bf16 and f16 are widened on the host).
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(t)?;
        if t.dtype == DType::U32 {
            return Err(Error::Shape(
                "read_f32 of a u32 tensor; use read_u32".into(),
            ));
        }
        if t.dtype == DType::Q8 {
            return Ok(q8::dequantize(&bytes, t.numel()));
        }
        Ok(to_f32(&bytes, t.dtype))
    }

    pub fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        if t.dtype != DType::U32 {
            return Err(Error::Shape(format!(
                "read_u32 of a {} tensor",
                t.dtype.name()
            )));
        }
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(t)?))
    }
}

/// Little-endian elements of `dtype` as f32 (16-bit floats widened
/// exactly, u32 converted as numbers).
pub fn to_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::U32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        // Bytes of 8-bit blocks do not say how many values they hold:
        // `Gpu::read_f32` dequantises with the tensor's element count.
        DType::Q8 => unreachable!("8-bit blocks are read with q8::dequantize"),
    }
}
