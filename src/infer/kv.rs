//! The key/value cache of one sequence on the GPU: per layer, K and V as
//! f32 `[capacity, kv_heads·head_dim]` (rows = positions, after rope), read
//! in place by attention (`AttnConfig::with_kv_cache(capacity)`).
//!
//! The cache is allocated for a few chunks and grows in chunks (new
//! buffers, the filled rows copied over on the GPU) up to `max_ctx`, the
//! context the user asked for; asking for more is an error that says so.
//! It also remembers which token ids its rows hold, so that a chat turn
//! re-uses the rows of the shared prefix of the conversation.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::model::decoder::{Decoder, KvStore};

/// Rows added per growth step.
pub const DEFAULT_CHUNK: usize = 512;

pub struct KvCache {
    /// Per layer `[capacity, kv_dim]` f32.
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Rows allocated per layer.
    capacity: usize,
    /// The most rows the cache may hold (the context length).
    max_ctx: usize,
    kv_dim: usize,
    chunk: usize,
    /// Token ids of the filled rows, in order (`len()` rows are valid).
    tokens: Vec<u32>,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_dim` columns, holding up to
    /// `max_ctx` positions, growing `chunk` rows at a time.
    pub fn new(
        gpu: &Gpu,
        layers: usize,
        kv_dim: usize,
        max_ctx: usize,
        chunk: usize,
    ) -> Result<KvCache> {
        if max_ctx == 0 || kv_dim == 0 {
            return Err(Error::Invalid(format!(
                "KV cache needs a context and a width above 0 (got {max_ctx} and {kv_dim})"
            )));
        }
        // Each layer's K and V are one binding each: refuse a context
        // whose cache could not be bound before anything is allocated.
        let row = kv_dim as u64 * 4;
        let limit = gpu.caps.max_tensor_bytes();
        let need = (max_ctx as u64).saturating_mul(row);
        if need > limit {
            return Err(Error::Invalid(format!(
                "a context of {max_ctx} positions needs {} per layer for each of K and V (kv.k0), \
                 over the {} one shader may bind on this adapter; KV caches are not split into \
                 blocks: use --max-context {} or less",
                crate::gpu::format_bytes(need),
                crate::gpu::format_bytes(limit),
                limit / row
            )));
        }
        let mut c = KvCache {
            k: Vec::new(),
            v: Vec::new(),
            capacity: 0,
            max_ctx,
            kv_dim,
            chunk: chunk.max(1),
            tokens: Vec::new(),
        };
        let first = c.chunk.min(max_ctx);
        for l in 0..layers {
            c.k.push(Tensor::empty(
                gpu,
                &format!("kv.k{l}"),
                &[first, kv_dim],
                DType::F32,
            )?);
            c.v.push(Tensor::empty(
                gpu,
                &format!("kv.v{l}"),
                &[first, kv_dim],
                DType::F32,
            )?);
        }
        c.capacity = first;
        Ok(c)
    }

    /// A cache shaped for `dec` (its layer count and kv width).
    pub fn for_decoder(gpu: &Gpu, dec: &Decoder, max_ctx: usize) -> Result<KvCache> {
        let c = &dec.cfg;
        KvCache::new(
            gpu,
            dec.layers.len(),
            c.num_kv_heads * c.head_dim,
            max_ctx,
            DEFAULT_CHUNK,
        )
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
        self.k.iter().chain(&self.v).map(|t| t.byte_len()).sum()
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

    /// Make room for `needed` rows in all, growing in whole chunks: new
    /// buffers, with the filled rows copied over by commands recorded in
    /// `rec` (they run before anything recorded later).
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
        let filled = (self.len() * self.kv_dim * 4) as u64;
        let kv_dim = self.kv_dim;
        for l in 0..self.k.len() {
            for (which, list) in [("k", &mut self.k), ("v", &mut self.v)] {
                let t = Tensor::empty(gpu, &format!("kv.{which}{l}"), &[cap, kv_dim], DType::F32)?;
                if filled > 0 {
                    rec.copy(&list[l], 0, &t, 0, filled)?;
                }
                list[l] = t;
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
    fn layer(&self, l: usize) -> (&Tensor, &Tensor) {
        (&self.k[l], &self.v[l])
    }
    fn push(&mut self, ids: &[u32]) -> Result<()> {
        KvCache::push(self, ids)
    }
}
