//! The key/value cache of one sequence on the GPU: per layer, K and V as
//! rows `[positions, kv_heads·head_dim]` (after rope) of f16 (the default:
//! half the memory and reads) or f32, read in place by attention; new
//! rows are rounded to f16 as they are written. Each is stored in blocks of rows, every block one buffer
//! within the adapter's binding limit: one block unless the context is
//! long (at 128 MiB, 32,768 positions of 8 KV heads of 128), several
//! beyond, which attention reads block by block (`attention_blocks`).
//!
//! The cache is allocated for a few chunks and grows in chunks (new
//! buffers for the blocks that grow, the filled rows copied over on the
//! GPU) up to `max_ctx`, the context the user asked for; asking for more is
//! an error that says so. It also remembers which token ids its rows hold,
//! so that a chat turn re-uses the rows of the shared prefix of the
//! conversation.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, RowBlocks, Tensor};
use crate::model::decoder::{Decoder, KvStore};

/// Rows added per growth step.
pub const DEFAULT_CHUNK: usize = 512;

pub struct KvCache {
    /// Per layer, the blocks of K (`[rows, kv_dim]` of `dtype`; block `b`
    /// holds positions `b·block_rows ..`).
    pub k: Vec<Vec<Tensor>>,
    pub v: Vec<Vec<Tensor>>,
    /// Rows allocated per layer.
    capacity: usize,
    /// The most rows the cache may hold (the context length).
    max_ctx: usize,
    kv_dim: usize,
    chunk: usize,
    /// Rows of a full block.
    block_rows: usize,
    /// Token ids of the filled rows, in order (`len()` rows are valid).
    tokens: Vec<u32>,
    /// f16 or f32.
    dtype: DType,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_dim` columns, holding up to
    /// `max_ctx` positions, growing `chunk` rows at a time, in blocks of as
    /// many rows as one binding holds.
    pub fn new(
        gpu: &Gpu,
        layers: usize,
        kv_dim: usize,
        (max_ctx, chunk): (usize, usize),
        dtype: DType,
    ) -> Result<KvCache> {
        // A position's keys are one row: refused when one is over the limit.
        let row = (kv_dim * dtype.size()) as u64;
        let block_rows = RowBlocks::rows_per_block(gpu, "kv.k0", row)?;
        KvCache::in_blocks(gpu, layers, kv_dim, (max_ctx, chunk, block_rows), dtype)
    }

    /// As [`KvCache::new`] with blocks of `block_rows` rows (tests use
    /// small blocks to exercise the blocked attention).
    pub fn in_blocks(
        gpu: &Gpu,
        layers: usize,
        kv_dim: usize,
        (max_ctx, chunk, block_rows): (usize, usize, usize),
        dtype: DType,
    ) -> Result<KvCache> {
        if !matches!(dtype, DType::F16 | DType::F32) {
            return Err(Error::Invalid(format!(
                "a KV cache holds f16 or f32, not {}",
                dtype.name()
            )));
        }
        if dtype == DType::F16 && !kv_dim.is_multiple_of(2) {
            return Err(Error::Invalid(format!(
                "an f16 KV cache needs an even width, not {kv_dim}"
            )));
        }
        if max_ctx == 0 || kv_dim == 0 || block_rows == 0 {
            return Err(Error::Invalid(format!(
                "KV cache needs a context, a width and blocks above 0 (got {max_ctx}, {kv_dim} and {block_rows})"
            )));
        }
        let mut c = KvCache {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            capacity: 0,
            max_ctx,
            kv_dim,
            chunk: chunk.max(1),
            block_rows,
            tokens: Vec::new(),
            dtype,
        };
        let first = c.chunk.min(max_ctx);
        let mut rec = gpu.recorder();
        c.reserve(&mut rec, first)?;
        rec.run()?;
        Ok(c)
    }

    /// A cache shaped for `dec` (its layer count and kv width), in its KV
    /// dtype (`Decoder::kv_dtype`).
    pub fn for_decoder(gpu: &Gpu, dec: &Decoder, max_ctx: usize) -> Result<KvCache> {
        let c = &dec.cfg;
        KvCache::new(
            gpu,
            dec.layers.len(),
            c.num_kv_heads * c.head_dim,
            (max_ctx, DEFAULT_CHUNK),
            dec.kv_dtype(),
        )
    }

    /// f16 or f32.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Filled rows.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }
    pub fn layers(&self) -> usize {
        self.k.len()
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
    /// The token ids whose keys and values the cache holds.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// GPU bytes held.
    pub fn bytes(&self) -> u64 {
        self.k
            .iter()
            .chain(&self.v)
            .flatten()
            .map(|t| t.byte_len())
            .sum()
    }

    /// Forget every row (the buffers stay).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Keep only the first `n` rows.
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    /// Record that rows `[len, len + ids.len())` now hold `ids` (called
    /// once the forward pass that writes them has been recorded).
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        if self.len() + ids.len() > self.capacity {
            return Err(Error::Invalid(format!(
                "KV cache: {} rows past {} filled exceed the capacity {}",
                ids.len(),
                self.len(),
                self.capacity
            )));
        }
        self.tokens.extend_from_slice(ids);
        Ok(())
    }

    /// The error for a sequence of `needed` positions beyond the context.
    pub fn too_long(&self, needed: usize) -> Error {
        Error::Invalid(format!(
            "{needed} tokens do not fit the context of {} tokens; shorten the prompt or raise --max-context",
            self.max_ctx
        ))
    }

    /// Rows of a full block.
    pub fn block_rows(&self) -> usize {
        self.block_rows
    }

    /// Blocks per layer.
    pub fn blocks(&self) -> usize {
        self.k.first().map_or(0, Vec::len)
    }

    /// Make room for `needed` rows in all, growing in whole chunks: new
    /// buffers for the blocks that grow, with their filled rows copied over
    /// by commands recorded in `rec` (they run before anything recorded
    /// later); full blocks are kept as they are.
    pub fn reserve(&mut self, rec: &mut Recorder, needed: usize) -> Result<()> {
        if needed > self.max_ctx {
            return Err(self.too_long(needed));
        }
        if needed <= self.capacity {
            return Ok(());
        }
        let cap = needed.div_ceil(self.chunk) * self.chunk;
        let cap = cap.min(self.max_ctx);
        let gpu = rec.gpu();
        let (r, kv_dim, filled) = (self.block_rows, self.kv_dim, self.len());
        for b in 0..cap.div_ceil(r) {
            let want = r.min(cap - b * r);
            let have = self.k[0].get(b).map_or(0, |t| t.numel() / kv_dim);
            if have >= want {
                continue;
            }
            // Filled rows of this block, to keep.
            let keep = (filled.saturating_sub(b * r).min(have) * kv_dim * self.dtype.size()) as u64;
            for l in 0..self.k.len() {
                for (which, list) in [("k", &mut self.k[l]), ("v", &mut self.v[l])] {
                    let name = format!("kv.{which}{l}");
                    let t = Tensor::empty(gpu, &name, &[want, kv_dim], self.dtype)?;
                    if b < list.len() {
                        if keep > 0 {
                            rec.copy(&list[b], 0, &t, 0, keep)?;
                        }
                        list[b] = t;
                    } else {
                        list.push(t);
                    }
                }
            }
        }
        self.capacity = cap;
        Ok(())
    }
}

impl KvStore for KvCache {
    fn layers(&self) -> usize {
        self.k.len()
    }
    fn kv_dim(&self) -> usize {
        self.kv_dim
    }
    fn filled(&self) -> usize {
        self.len()
    }
    fn reserve(&mut self, rec: &mut Recorder, needed: usize) -> Result<()> {
        KvCache::reserve(self, rec, needed)
    }
    fn block_rows(&self) -> usize {
        self.block_rows
    }
    fn layer(&self, l: usize) -> (&[Tensor], &[Tensor]) {
        (&self.k[l], &self.v[l])
    }
    fn push(&mut self, ids: &[u32]) -> Result<()> {
        KvCache::push(self, ids)
    }
}
