//! A matrix stored as blocks of consecutive rows, each its own buffer
//! within the adapter's binding and buffer limits: how a vocabulary ×
//! hidden table (Qwen3's 151,936 rows) lives on an adapter that binds
//! 128 MiB at a time. A matrix that fits is one block, the plain tensor.

use super::{format_bytes, DType, Gpu, Tensor};
use crate::error::{Error, Result};

/// The most bytes of one block of a `blocks_of` matrix made by
/// `RowBlocks::empty_blocked_as`.
pub const GRAD_BLOCK_BYTES: u64 = 256 << 20;

#[derive(Clone, Debug)]
pub struct RowBlocks {
    blocks: Vec<Tensor>,
    /// First row of each block, and the row count at the end.
    starts: Vec<usize>,
    cols: usize,
}

impl RowBlocks {
    /// One block: the tensor itself (2-D).
    pub fn whole(t: Tensor) -> Result<RowBlocks> {
        if t.shape().len() != 2 {
            return Err(Error::Shape(format!(
                "a row-blocked matrix must be 2-D, got {t:?}"
            )));
        }
        let (rows, cols) = (t.dim(0), t.dim(1));
        Ok(RowBlocks {
            blocks: vec![t],
            starts: vec![0, rows],
            cols,
        })
    }

    /// Rows per block for rows of `row_bytes` on this adapter: as many as
    /// one binding holds. Refused, naming the tensor, when one row is over.
    pub fn rows_per_block(gpu: &Gpu, name: &str, row_bytes: u64) -> Result<usize> {
        let limit = gpu.caps.max_tensor_bytes();
        let per = limit / row_bytes.max(1);
        if per == 0 {
            return Err(Error::OverLimit {
                tensor: format!("{name} (one row)"),
                requested: row_bytes,
                limit,
                what: "largest buffer one shader may bind on this adapter",
                hint: "A single row cannot be split further: use an adapter with a larger \
                       binding limit (or unset BOOMGPU_MAX_BINDING).",
            });
        }
        Ok(per as usize)
    }

    /// Upload `[rows, cols]` of `dtype` from `bytes`, split into blocks
    /// that each fit one binding.
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
        dtype: DType,
        bytes: &[u8],
    ) -> Result<RowBlocks> {
        Self::make(gpu, name, shape, dtype, Some(bytes), dtype)
    }

    /// Uninitialised `[rows, cols]` of `dtype`, in the blocks `upload`
    /// would make (synthetic models for plans and benchmarks).
    pub fn empty(gpu: &Gpu, name: &str, shape: &[usize], dtype: DType) -> Result<RowBlocks> {
        Self::make(gpu, name, shape, dtype, None, dtype)
    }

    /// Like `empty`, cut into the blocks a `[rows, cols]` matrix of
    /// `blocks_of` would need (at least as small as its own), each of at
    /// most `GRAD_BLOCK_BYTES` as `blocks_of`: a 16-bit copy whose f32
    /// gradients must fit a binding block by block.
    pub fn empty_blocked_as(
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
        dtype: DType,
        blocks_of: DType,
    ) -> Result<RowBlocks> {
        Self::make(gpu, name, shape, dtype, None, blocks_of)
    }

    fn make(
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
        dtype: DType,
        bytes: Option<&[u8]>,
        blocks_of: DType,
    ) -> Result<RowBlocks> {
        let [rows, cols] = *shape else {
            return Err(Error::Shape(format!(
                "'{name}': a row-blocked matrix must be 2-D, got {shape:?}"
            )));
        };
        let row_bytes = cols * dtype.size();
        if bytes.is_some() && dtype == DType::Q8 {
            return Err(Error::Shape(format!(
                "'{name}': 8-bit blocks are quantised block by block (RowBlocks::upload_q8)"
            )));
        }
        if let Some(bytes) = bytes.filter(|b| b.len() != rows * row_bytes) {
            return Err(Error::Shape(format!(
                "'{name}': {} bytes given for shape {shape:?} of {}",
                bytes.len(),
                dtype.name()
            )));
        }
        let mut per = Self::rows_per_block(gpu, name, split_row_bytes(cols, dtype, blocks_of))?;
        if blocks_of != dtype {
            // A copy whose f32 gradients leave the GPU block by block
            // through one slot (lean training): bounded blocks on any
            // adapter, however much one binding may hold.
            per = per
                .min((GRAD_BLOCK_BYTES / (cols * blocks_of.size()).max(1) as u64).max(1) as usize);
        }
        Self::by_rows(name, [rows, cols], per, |label, start, n| match bytes {
            Some(b) => {
                let range = start * row_bytes..(start + n) * row_bytes;
                gpu.upload_bytes(label, &[n, cols], dtype, &b[range])
            }
            None => Tensor::empty(gpu, label, &[n, cols], dtype),
        })
    }

    /// Blocks of at most `per` rows of a `[rows, cols]` matrix, each made
    /// by `block(label, first row, rows)` (labelled `name` when there is one).
    fn by_rows(
        name: &str,
        [rows, cols]: [usize; 2],
        per: usize,
        mut block: impl FnMut(&str, usize, usize) -> Result<Tensor>,
    ) -> Result<RowBlocks> {
        if per >= rows {
            return Self::whole(block(name, 0, rows)?);
        }
        let mut blocks = Vec::new();
        let mut starts = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = per.min(rows - start);
            blocks.push(block(&format!("{name}[{start}..{}]", start + n), start, n)?);
            starts.push(start);
            start += n;
        }
        starts.push(rows);
        Ok(RowBlocks {
            blocks,
            starts,
            cols,
        })
    }

    /// `[rows, cols]` f32 values stored in the 8-bit block format (`DType::Q8`),
    /// each block of rows quantised on its own.
    pub fn upload_q8(gpu: &Gpu, name: &str, shape: &[usize], values: &[f32]) -> Result<RowBlocks> {
        let [rows, cols] = *shape else {
            return Err(Error::Shape(format!(
                "'{name}': a row-blocked matrix must be 2-D, got {shape:?}"
            )));
        };
        if values.len() != rows * cols {
            return Err(Error::Shape(format!(
                "'{name}': {} values for shape {shape:?}",
                values.len()
            )));
        }
        let per = Self::rows_per_block(gpu, name, split_row_bytes(cols, DType::Q8, DType::Q8))?;
        Self::by_rows(name, [rows, cols], per, |label, start, n| {
            let bytes = super::tensor::q8::quantize(&values[start * cols..(start + n) * cols]);
            gpu.upload_bytes(label, &[n, cols], DType::Q8, &bytes)
        })
    }

    pub fn blocks(&self) -> &[Tensor] {
        &self.blocks
    }
    /// Block `i` with its first row.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Tensor)> {
        self.starts.iter().copied().zip(&self.blocks)
    }
    pub fn rows(&self) -> usize {
        *self.starts.last().expect("starts end with the row count")
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn shape(&self) -> [usize; 2] {
        [self.rows(), self.cols]
    }
    pub fn dtype(&self) -> DType {
        self.blocks[0].dtype()
    }
    pub fn numel(&self) -> usize {
        self.rows() * self.cols
    }
    pub fn byte_len(&self) -> u64 {
        self.blocks.iter().map(Tensor::byte_len).sum()
    }
    pub fn is_split(&self) -> bool {
        self.blocks.len() > 1
    }
    /// The single tensor, when the matrix is one block.
    pub fn as_whole(&self) -> Option<&Tensor> {
        (!self.is_split()).then(|| &self.blocks[0])
    }
    /// Whether both hold the same device storage (a tied head).
    pub fn same_storage(&self, other: &RowBlocks) -> bool {
        self.blocks.len() == other.blocks.len()
            && self.blocks.iter().zip(&other.blocks).all(|(a, b)| {
                a.buffer().id() == b.buffer().id() && a.byte_offset() == b.byte_offset()
            })
    }

    /// Every row's bytes, in order (blocks read back and joined).
    pub fn read_bytes(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.byte_len() as usize);
        for b in &self.blocks {
            out.extend(gpu.read_bytes(b)?);
        }
        Ok(out)
    }

    /// A description for messages: the shape, and the blocks if split.
    pub fn describe(&self) -> String {
        let [r, c] = self.shape();
        if self.is_split() {
            format!(
                "[{r}, {c}] {} in {} blocks of ≤ {}",
                self.dtype().name(),
                self.blocks.len(),
                format_bytes(self.blocks[0].byte_len())
            )
        } else {
            format!("[{r}, {c}] {}", self.dtype().name())
        }
    }
}

/// Bytes per row when cutting a `cols`-wide matrix of `dtype` into blocks
/// that each fit a binding (as a `blocks_of` matrix would need, if more);
/// Q8 rows count their share of the scales and padding, generously.
fn split_row_bytes(cols: usize, dtype: DType, blocks_of: DType) -> u64 {
    let of = |d: DType| match d {
        DType::Q8 => cols + cols.div_ceil(32) * 4 + 8,
        d => cols * d.size(),
    };
    of(dtype).max(of(blocks_of)) as u64
}
