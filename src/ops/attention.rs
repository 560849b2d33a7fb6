//! Causal self-attention with grouped-query heads, fused flash style: the
//! scores of a block of queries against a block of keys live only in
//! workgroup memory, the softmax is computed online, and the backward
//! recomputes probabilities from the saved log-sum-exp. No T×T matrix ever
//! reaches global memory; the backward uses no atomics and is deterministic.
//!
//! Layouts are token-major (f32):
//! - `q`: rows `b*q_len + i`, `q_row_stride` elements apart; head `h` at
//!   columns `h*D .. h*D+D` (a wider row, e.g. a fused QKV buffer, is fine).
//! - `k`, `v`: rows `b*kv_batch_stride + j`, `kv_row_stride` apart; kv head
//!   `g` at `g*D`. Dense `[B*Tk, Hkv*D]` tensors use the defaults; a KV cache
//!   `[B*max_ctx, Hkv*D]` is read in place with `kv_batch_stride = max_ctx`.
//! - `mask` (optional): u32 `[B, S]` with `S >= kv_len`, 1 = attend, 0 = a
//!   padded key.
//! - outputs: `out [B*Tq, Hq*D]`, `lse [B, Hq, Tq]` (log-sum-exp of the
//!   scaled scores; `-inf` for a row with nothing to attend, whose output is
//!   zero), gradients `dq [B*Tq, Hq*D]`, `dk`, `dv [B*Tk, Hkv*D]` (dense).
//!
//! Query `i` sits at key position `q_offset + i` and sees keys
//! `j <= q_offset + i`. Prefill and training use `q_offset = 0` with
//! `Tq = Tk`; decode uses `Tq = 1`, `q_offset = Tk - 1`; chunked prefill
//! anything in between (`AttnConfig::new` picks `Tk - Tq`). Query head `h`
//! reads kv head `h / (Hq / Hkv)`.
//!
//! Kernels (`shaders/attention.wgsl`): `attn_fwd` (a workgroup per 32
//! (query, group head) rows of one kv head; with several key splits each
//! workgroup covers a key range and `attn_combine` merges the partials, which
//! keeps decode parallel), `attn_bwd_delta` (rowsum(dO·O) next to the lse),
//! `attn_bwd_dq` (iterates over key blocks) and `attn_bwd_dkdv` (iterates
//! over the rows of the group that see its keys).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

const SHADER: &str = "attention";
/// Rows per forward workgroup, rows per dq workgroup, keys per block and per
/// dk/dv workgroup (must match the shader).
const F_BQ: usize = 32;
const Q_BQ: usize = 16;
const BK: usize = 16;
const MAX_HEAD_DIM: usize = 128;

/// `pub fn $name(self, v) -> Self` setting one field, for building a
/// configuration from its defaults.
macro_rules! with_setters {
    ($($(#[$doc:meta])* $name:ident => $field:ident: $ty:ty,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

/// Shape and layout of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnConfig {
    pub batch: usize,
    /// Query rows per sequence (Tq).
    pub q_len: usize,
    /// Keys per sequence (Tk).
    pub kv_len: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    /// At most 128, a multiple of 4.
    pub head_dim: usize,
    /// Key position of the first query: query `i` sees keys `j <= q_offset + i`.
    pub q_offset: usize,
    /// Multiplies q·k (default 1/sqrt(head_dim)).
    pub scale: f32,
    /// Elements between rows of q (default q_heads·head_dim).
    pub q_row_stride: usize,
    /// Elements between rows of k and v (default kv_heads·head_dim).
    pub kv_row_stride: usize,
    /// Rows between sequences in k and v (default kv_len; max_ctx for a
    /// KV cache).
    pub kv_batch_stride: usize,
    /// Key ranges the forward splits each row block into (flash-decoding);
    /// 0 picks a number from the shape.
    pub kv_splits: usize,
}

impl AttnConfig {
    /// Dense q, k, v; the queries are the last `q_len` of `kv_len` positions.
    pub fn new(
        batch: usize,
        q_len: usize,
        kv_len: usize,
        q_heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        AttnConfig {
            batch,
            q_len,
            kv_len,
            q_heads,
            kv_heads,
            head_dim,
            q_offset: kv_len.saturating_sub(q_len),
            scale: 1.0 / (head_dim as f32).sqrt(),
            q_row_stride: q_heads * head_dim,
            kv_row_stride: kv_heads * head_dim,
            kv_batch_stride: kv_len,
            kv_splits: 0,
        }
    }
    /// Every query of a text sees every key of it (an encoder): the
    /// queries sit at the last position, so the causal limit never cuts.
    /// Padding is left out by the mask alone.
    pub fn bidirectional(batch: usize, len: usize, heads: usize, head_dim: usize) -> Self {
        AttnConfig::new(batch, len, len, heads, heads, head_dim)
            .with_q_offset(len.saturating_sub(1))
    }
    with_setters! {
        with_q_offset => q_offset: usize,
        with_scale => scale: f32,
        /// Read k and v from a cache of `kv_batch_stride` (max_ctx) rows
        /// per sequence.
        with_kv_cache => kv_batch_stride: usize,
        with_q_row_stride => q_row_stride: usize,
        with_kv_row_stride => kv_row_stride: usize,
        with_kv_splits => kv_splits: usize,
    }
    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads.max(1)
    }
    /// Elements q must hold.
    pub fn q_elems(&self) -> usize {
        (self.batch * self.q_len - 1) * self.q_row_stride + self.q_heads * self.head_dim
    }
    /// Elements k and v must hold.
    pub fn kv_elems(&self) -> usize {
        ((self.batch - 1) * self.kv_batch_stride + self.kv_len - 1) * self.kv_row_stride
            + self.kv_heads * self.head_dim
    }
    pub fn out_shape(&self) -> [usize; 2] {
        [self.batch * self.q_len, self.q_heads * self.head_dim]
    }
    pub fn lse_shape(&self) -> [usize; 3] {
        [self.batch, self.q_heads, self.q_len]
    }
    pub fn dkv_shape(&self) -> [usize; 2] {
        [self.batch * self.kv_len, self.kv_heads * self.head_dim]
    }

    /// Check the configuration itself (not the tensors).
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.batch == 0 || c.q_len == 0 || c.kv_len == 0 || c.q_heads == 0 || c.kv_heads == 0 {
            shape_bail!("attention: empty shape {c:?}");
        }
        if !c.q_heads.is_multiple_of(c.kv_heads) {
            shape_bail!(
                "attention: {} query heads are not a multiple of {} kv heads",
                c.q_heads,
                c.kv_heads
            );
        }
        if c.head_dim == 0 || !c.head_dim.is_multiple_of(4) || c.head_dim > MAX_HEAD_DIM {
            shape_bail!(
                "attention: head_dim {} must be a multiple of 4 and at most {MAX_HEAD_DIM}",
                c.head_dim
            );
        }
        if c.q_row_stride < c.q_heads * c.head_dim || !c.q_row_stride.is_multiple_of(4) {
            shape_bail!(
                "attention: q row stride {} must be a multiple of 4 and at least {}",
                c.q_row_stride,
                c.q_heads * c.head_dim
            );
        }
        if c.kv_row_stride < c.kv_heads * c.head_dim || !c.kv_row_stride.is_multiple_of(4) {
            shape_bail!(
                "attention: kv row stride {} must be a multiple of 4 and at least {}",
                c.kv_row_stride,
                c.kv_heads * c.head_dim
            );
        }
        if c.kv_batch_stride < c.kv_len {
            shape_bail!(
                "attention: kv batch stride {} is below kv_len {}",
                c.kv_batch_stride,
                c.kv_len
            );
        }
        if !c.scale.is_finite() {
            shape_bail!("attention: scale {} is not finite", c.scale);
        }
        let biggest = [
            c.q_elems(),
            c.kv_elems(),
            c.batch * c.q_len * c.q_heads * c.head_dim * c.kv_splits.max(1),
            c.batch * c.kv_len * c.kv_heads * c.head_dim,
            c.q_offset + c.q_len + c.kv_len,
        ];
        if biggest.iter().any(|&n| n >= u32::MAX as usize) {
            shape_bail!("attention: {c:?} indexes past 2^32 elements");
        }
        Ok(())
    }
}

/// The tensors attention reads.
#[derive(Clone, Copy)]
pub struct AttnInputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// u32 `[B, S]`, S >= kv_len: 1 = attend, 0 = masked key.
    pub mask: Option<&'a Tensor>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    tq: u32,
    tk: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    group: u32,
    q_offset: u32,
    q_stride: u32,
    kv_stride: u32,
    kv_batch: u32,
    mask_stride: u32,
    has_mask: u32,
    splits: u32,
    split_len: u32,
    scale: f32,
    k_base: u32,
    k_end: u32,
    split_base: u32,
    _pad: u32,
}

fn need(what: &str, t: &Tensor, dtype: DType, elems: usize) -> Result<()> {
    if t.dtype() != dtype {
        shape_bail!("attention: {what} must be {}, got {:?}", dtype.name(), t);
    }
    if t.numel() < elems {
        shape_bail!(
            "attention: {what} {:?} holds {} elements, the configuration reads {elems}",
            t.shape(),
            t.numel()
        );
    }
    Ok(())
}

fn exact(what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.dtype() != DType::F32 || t.numel() != shape.iter().product::<usize>() {
        shape_bail!("attention: {what} must be f32 {shape:?}, got {:?}", t);
    }
    Ok(())
}

/// K and V of the forward: both f32, or both f16 (a 16-bit KV cache).
fn need_kv(what: &str, k: &Tensor, v: &Tensor, elems: usize) -> Result<()> {
    let dtype = match k.dtype() {
        DType::F16 => DType::F16,
        _ => DType::F32,
    };
    need(&format!("k{what}"), k, dtype, elems)?;
    need(&format!("v{what}"), v, dtype, elems)
}

/// The forward's override for K and V stored as f16.
fn kv_constants(k: &Tensor) -> Vec<(&'static str, f64)> {
    match k.dtype() {
        DType::F16 => vec![("KV_HALF", 1.0)],
        _ => Vec::new(),
    }
}

/// Checks the inputs; returns the mask's row stride (0 without a mask).
/// K and V may be f16 in the forward (`half_kv`).
fn check_inputs_kv(cfg: &AttnConfig, x: &AttnInputs, half_kv: bool) -> Result<u32> {
    cfg.validate()?;
    need("q", x.q, DType::F32, cfg.q_elems())?;
    if half_kv {
        need_kv("", x.k, x.v, cfg.kv_elems())?;
    } else {
        need("k", x.k, DType::F32, cfg.kv_elems())?;
        need("v", x.v, DType::F32, cfg.kv_elems())?;
    }
    match x.mask {
        None => Ok(0),
        Some(m) => {
            if m.dtype() != DType::U32 || m.numel() % cfg.batch != 0 {
                shape_bail!(
                    "attention: mask must be u32 [batch {}, keys], got {:?}",
                    cfg.batch,
                    m
                );
            }
            let stride = m.numel() / cfg.batch;
            if stride < cfg.kv_len {
                shape_bail!(
                    "attention: mask {:?} covers {stride} keys per sequence, kv_len is {}",
                    m.shape(),
                    cfg.kv_len
                );
            }
            Ok(stride as u32)
        }
    }
}

fn params(
    cfg: &AttnConfig,
    mask_stride: u32,
    has_mask: bool,
    splits: usize,
    split_len: usize,
) -> Params {
    Params {
        batch: cfg.batch as u32,
        tq: cfg.q_len as u32,
        tk: cfg.kv_len as u32,
        hq: cfg.q_heads as u32,
        hkv: cfg.kv_heads as u32,
        d: cfg.head_dim as u32,
        group: cfg.group() as u32,
        q_offset: cfg.q_offset as u32,
        q_stride: cfg.q_row_stride as u32,
        kv_stride: cfg.kv_row_stride as u32,
        kv_batch: cfg.kv_batch_stride as u32,
        mask_stride,
        has_mask: has_mask as u32,
        splits: splits as u32,
        split_len: split_len as u32,
        scale: cfg.scale,
        k_base: 0,
        k_end: cfg.kv_len as u32,
        split_base: 0,
        _pad: 0,
    }
}

fn grid_dim(rec: &Recorder, what: &str, n: usize) -> Result<u32> {
    let lim = rec.gpu().caps.limits.max_compute_workgroups_per_dimension as usize;
    if n > lim {
        shape_bail!("attention: {n} {what} exceed the device's {lim} workgroups per dimension");
    }
    Ok(n as u32)
}

/// How many key ranges the forward uses: enough workgroups to fill a big
/// GPU when there are few query rows (decode), each range at least 64 keys.
fn choose_splits(cfg: &AttnConfig) -> usize {
    if cfg.kv_splits > 0 {
        return cfg.kv_splits.min(cfg.kv_len.div_ceil(BK));
    }
    let blocks = (cfg.q_len * cfg.group()).div_ceil(F_BQ) * cfg.batch * cfg.kv_heads;
    if blocks >= 128 || cfg.kv_len < 256 {
        return 1;
    }
    256usize.div_ceil(blocks).min(cfg.kv_len / 64).max(1)
}

/// The most split partials of `cfg`'s output that one binding holds (at
/// least 1): key splits are a speed choice and give way to the limit.
fn max_partials(rec: &Recorder, cfg: &AttnConfig) -> usize {
    let [rows, cols] = cfg.out_shape();
    let one = (rows * cols * 4).max(1) as u64;
    (rec.gpu().caps.max_tensor_bytes() / one).max(1) as usize
}

/// Forward: `(out [B*Tq, Hq*D], lse [B, Hq, Tq])`.
pub fn attention(rec: &mut Recorder, cfg: &AttnConfig, x: &AttnInputs) -> Result<(Tensor, Tensor)> {
    let mask_stride = check_inputs_kv(cfg, x, true)?;
    let gpu = rec.gpu();
    let out = Tensor::empty(gpu, "attention.out", &cfg.out_shape(), DType::F32)?;
    let lse = Tensor::empty(gpu, "attention.lse", &cfg.lse_shape(), DType::F32)?;
    let splits = choose_splits(cfg).min(max_partials(rec, cfg));
    let split_len = cfg.kv_len.div_ceil(splits).div_ceil(BK) * BK;
    let splits = cfg.kv_len.div_ceil(split_len);
    let p = params(cfg, mask_stride, x.mask.is_some(), splits, split_len);
    // Without a mask the binding still needs a buffer; q is never read
    // through it (read-only bindings may share a buffer).
    let mask = x.mask.unwrap_or(x.q);
    let groups = [
        grid_dim(rec, "row blocks", (cfg.q_len * cfg.group()).div_ceil(F_BQ))?,
        grid_dim(rec, "batch·kv heads", cfg.batch * cfg.kv_heads)?,
        grid_dim(rec, "key splits", splits)?,
    ];
    // With several key splits each split writes partial rows and
    // log-sum-exps, which attn_combine merges.
    let partials = if splits == 1 {
        None
    } else {
        let [rows, cols] = cfg.out_shape();
        let lse_len = cfg.lse_shape().iter().product::<usize>();
        Some((
            Tensor::empty(gpu, "attention.o_part", &[splits * rows, cols], DType::F32)?,
            Tensor::empty(gpu, "attention.lse_part", &[splits * lse_len], DType::F32)?,
        ))
    };
    let (o_dst, lse_dst) = partials.as_ref().map_or((&out, &lse), |(o, l)| (o, l));
    launch::dispatch_with(
        rec,
        (SHADER, "attn_fwd"),
        &kv_constants(x.k),
        &[
            ("q", x.q),
            ("k", x.k),
            ("v", x.v),
            ("k16", x.k),
            ("v16", x.v),
            ("k16", x.k),
            ("v16", x.v),
            ("mask", mask),
            ("out", o_dst),
            ("lse", lse_dst),
        ],
        &p,
        groups,
    )?;
    if let Some((o_part, lse_part)) = &partials {
        launch::per_item(
            rec,
            SHADER,
            "attn_combine",
            &[
                ("o_part", o_part),
                ("lse_part", lse_part),
                ("out", &out),
                ("lse", &lse),
            ],
            &p,
            out.numel() / 4,
        )?;
    }
    Ok((out, lse))
}

/// One block of a KV cache stored in several buffers: keys
/// `[start, start + rows)` of the sequence, `rows` rows each of `k` and `v`
/// (the block's capacity; only keys below `kv_len` are read).
pub struct KvBlock<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub start: usize,
    pub rows: usize,
}

/// Forward over a KV cache of one sequence held in blocks of rows: each
/// block's key ranges write partial rows and log-sum-exps (as the key
/// splits of [`attention`] do), which one combine merges. The same values
/// as [`attention`] over the whole cache, up to the order of the sums.
pub fn attention_blocks(
    rec: &mut Recorder,
    cfg: &AttnConfig,
    q: &Tensor,
    blocks: &[KvBlock],
) -> Result<Tensor> {
    cfg.validate()?;
    if cfg.batch != 1 {
        shape_bail!(
            "attention: a KV cache in blocks holds one sequence, not {}",
            cfg.batch
        );
    }
    need("q", q, DType::F32, cfg.q_elems())?;
    // (block, its key range, key splits, keys per split) of blocks that
    // hold keys below kv_len, in order and contiguous from 0.
    let mut plan = Vec::new();
    let mut next = 0;
    // Key splits inside a block share what one binding of partials holds
    // (each block has at least one).
    let used = blocks
        .iter()
        .filter(|b| b.start < cfg.kv_len)
        .count()
        .max(1);
    let per_block = (max_partials(rec, cfg) / used).max(1);
    for blk in blocks.iter().filter(|b| b.start < cfg.kv_len) {
        if blk.start != next || blk.rows == 0 {
            shape_bail!(
                "attention: KV block at key {} after keys up to {next}",
                blk.start
            );
        }
        let end = cfg.kv_len.min(blk.start + blk.rows);
        let bcfg = AttnConfig {
            kv_len: end - blk.start,
            kv_batch_stride: blk.rows,
            ..*cfg
        };
        need_kv(" block", blk.k, blk.v, bcfg.kv_elems())?;
        let splits = choose_splits(&bcfg).min(per_block);
        let split_len = bcfg.kv_len.div_ceil(splits).div_ceil(BK) * BK;
        plan.push((blk, end, bcfg.kv_len.div_ceil(split_len), split_len));
        next = blk.start + blk.rows;
    }
    if next < cfg.kv_len {
        shape_bail!(
            "attention: the KV blocks hold {next} keys, {} are attended",
            cfg.kv_len
        );
    }
    let gpu = rec.gpu();
    let out = Tensor::empty(gpu, "attention.out", &cfg.out_shape(), DType::F32)?;
    let lse = Tensor::empty(gpu, "attention.lse", &cfg.lse_shape(), DType::F32)?;
    let slots: usize = plan.iter().map(|p| p.2).sum();
    let [rows, cols] = cfg.out_shape();
    let lse_len = cfg.lse_shape().iter().product::<usize>();
    let o_part = Tensor::empty(gpu, "attention.o_part", &[slots * rows, cols], DType::F32)?;
    let lse_part = Tensor::empty(gpu, "attention.lse_part", &[slots * lse_len], DType::F32)?;
    let row_blocks = grid_dim(rec, "row blocks", (cfg.q_len * cfg.group()).div_ceil(F_BQ))?;
    let heads = grid_dim(rec, "batch·kv heads", cfg.kv_heads)?;
    let mut slot = 0;
    for (blk, end, splits, split_len) in plan {
        let mut p = params(cfg, 0, false, slots, split_len);
        p.kv_batch = blk.rows as u32;
        p.k_base = blk.start as u32;
        p.k_end = end as u32;
        p.split_base = slot as u32;
        launch::dispatch_with(
            rec,
            (SHADER, "attn_fwd"),
            &kv_constants(blk.k),
            &[
                ("q", q),
                ("k", blk.k),
                ("v", blk.v),
                ("k16", blk.k),
                ("v16", blk.v),
                ("mask", q),
                ("out", &o_part),
                ("lse", &lse_part),
            ],
            &p,
            [row_blocks, heads, grid_dim(rec, "key splits", splits)?],
        )?;
        slot += splits;
    }
    let p = params(cfg, 0, false, slots, 0);
    launch::per_item(
        rec,
        SHADER,
        "attn_combine",
        &[
            ("o_part", &o_part),
            ("lse_part", &lse_part),
            ("out", &out),
            ("lse", &lse),
        ],
        &p,
        out.numel() / 4,
    )?;
    Ok(out)
}

/// Backward: `(dq [B*Tq, Hq*D], dk [B*Tk, Hkv*D], dv [B*Tk, Hkv*D])` from
/// the forward's inputs, its `out` and `lse`, and the gradient `d_out`.
/// dk and dv sum over the query heads of each group.
pub fn attention_backward(
    rec: &mut Recorder,
    cfg: &AttnConfig,
    x: &AttnInputs,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mask_stride = check_inputs_kv(cfg, x, false)?;
    exact("out", out, &cfg.out_shape())?;
    exact("d_out", d_out, &cfg.out_shape())?;
    exact("lse", lse, &cfg.lse_shape())?;
    let gpu = rec.gpu();
    let n_rows = cfg.batch * cfg.q_heads * cfg.q_len;
    let stats = Tensor::empty(gpu, "attention.stats", &[n_rows, 2], DType::F32)?;
    let dq = Tensor::empty(gpu, "attention.dq", &cfg.out_shape(), DType::F32)?;
    let dk = Tensor::empty(gpu, "attention.dk", &cfg.dkv_shape(), DType::F32)?;
    let dv = Tensor::empty(gpu, "attention.dv", &cfg.dkv_shape(), DType::F32)?;
    let p = params(cfg, mask_stride, x.mask.is_some(), 1, cfg.kv_len);
    let mask = x.mask.unwrap_or(x.q);
    let bh = grid_dim(rec, "batch·kv heads", cfg.batch * cfg.kv_heads)?;
    launch::per_item(
        rec,
        SHADER,
        "attn_bwd_delta",
        &[
            ("o", out),
            ("d_out", d_out),
            ("lse_in", lse),
            ("stats", &stats),
        ],
        &p,
        n_rows,
    )?;
    let inputs = [
        ("q", x.q),
        ("k", x.k),
        ("v", x.v),
        ("k16", x.k),
        ("v16", x.v),
        ("mask", mask),
        ("d_out", d_out),
        ("stats_in", &stats),
    ];
    let row_blocks = grid_dim(rec, "row blocks", (cfg.q_len * cfg.group()).div_ceil(Q_BQ))?;
    let args = [&inputs[..], &[("dq", &dq)]].concat();
    let groups = [row_blocks, bh, 1];
    launch::dispatch(rec, SHADER, "attn_bwd_dq", &args, &p, groups)?;
    let key_blocks = grid_dim(rec, "key blocks", cfg.kv_len.div_ceil(BK))?;
    let args = [&inputs[..], &[("dk", &dk), ("dv", &dv)]].concat();
    let groups = [key_blocks, bh, 1];
    launch::dispatch(rec, SHADER, "attn_bwd_dkdv", &args, &p, groups)?;
    Ok((dq, dk, dv))
}

/// Naive softmax attention in f64, with the same layouts and rules.
pub mod cpu {
    use super::AttnConfig;

    fn allowed(c: &AttnConfig, mask: Option<&[u32]>, b: usize, i: usize, j: usize) -> bool {
        let ms = mask.map_or(0, |m| m.len() / c.batch);
        j < c.kv_len && j <= c.q_offset + i && mask.is_none_or(|m| m[b * ms + j] != 0)
    }

    fn q_at(c: &AttnConfig, b: usize, i: usize, h: usize) -> usize {
        (b * c.q_len + i) * c.q_row_stride + h * c.head_dim
    }
    fn kv_at(c: &AttnConfig, b: usize, j: usize, g: usize) -> usize {
        (b * c.kv_batch_stride + j) * c.kv_row_stride + g * c.head_dim
    }
    fn o_at(c: &AttnConfig, b: usize, i: usize, h: usize) -> usize {
        ((b * c.q_len + i) * c.q_heads + h) * c.head_dim
    }
    fn dkv_at(c: &AttnConfig, b: usize, j: usize, g: usize) -> usize {
        ((b * c.kv_len + j) * c.kv_heads + g) * c.head_dim
    }
    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    /// Softmax probabilities of query (b, i, h) over all keys (None where
    /// masked), and the log-sum-exp; None when nothing is attended.
    fn probs(
        c: &AttnConfig,
        q: &[f32],
        k: &[f32],
        mask: Option<&[u32]>,
        (b, i, h): (usize, usize, usize),
    ) -> Option<(Vec<f64>, f64)> {
        let d = c.head_dim;
        let g = h / c.group();
        let qr = &q[q_at(c, b, i, h)..][..d];
        let s: Vec<Option<f64>> = (0..c.kv_len)
            .map(|j| {
                allowed(c, mask, b, i, j)
                    .then(|| c.scale as f64 * dot(qr, &k[kv_at(c, b, j, g)..][..d]))
            })
            .collect();
        let m = s
            .iter()
            .flatten()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        if m == f64::NEG_INFINITY {
            return None;
        }
        let e: Vec<f64> = s.iter().map(|x| x.map_or(0.0, |x| (x - m).exp())).collect();
        let sum: f64 = e.iter().sum();
        Some((e.iter().map(|x| x / sum).collect(), m + sum.ln()))
    }

    /// (out [B*Tq, Hq*D], lse [B, Hq, Tq]); rows with nothing to attend give
    /// zeros and lse = -inf.
    pub fn forward(
        c: &AttnConfig,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[u32]>,
    ) -> (Vec<f32>, Vec<f32>) {
        let d = c.head_dim;
        let mut out = vec![0f32; c.batch * c.q_len * c.q_heads * d];
        let mut lse = vec![f32::NEG_INFINITY; c.batch * c.q_heads * c.q_len];
        for b in 0..c.batch {
            for h in 0..c.q_heads {
                let g = h / c.group();
                for i in 0..c.q_len {
                    let Some((p, l)) = probs(c, q, k, mask, (b, i, h)) else {
                        continue;
                    };
                    lse[(b * c.q_heads + h) * c.q_len + i] = l as f32;
                    let o = &mut out[o_at(c, b, i, h)..][..d];
                    for (e, oe) in o.iter_mut().enumerate() {
                        let acc: f64 = (0..c.kv_len)
                            .filter(|&j| p[j] != 0.0)
                            .map(|j| p[j] * v[kv_at(c, b, j, g) + e] as f64)
                            .sum();
                        *oe = acc as f32;
                    }
                }
            }
        }
        (out, lse)
    }

    /// (dq [B*Tq, Hq*D], dk [B*Tk, Hkv*D], dv [B*Tk, Hkv*D]) for upstream
    /// gradient `d_out` [B*Tq, Hq*D].
    pub fn backward(
        c: &AttnConfig,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[u32]>,
        d_out: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = c.head_dim;
        let mut dq = vec![0f64; c.batch * c.q_len * c.q_heads * d];
        let mut dk = vec![0f64; c.batch * c.kv_len * c.kv_heads * d];
        let mut dv = vec![0f64; dk.len()];
        let sc = c.scale as f64;
        for b in 0..c.batch {
            for h in 0..c.q_heads {
                let g = h / c.group();
                for i in 0..c.q_len {
                    let Some((p, _)) = probs(c, q, k, mask, (b, i, h)) else {
                        continue;
                    };
                    let qi = q_at(c, b, i, h);
                    let oi = o_at(c, b, i, h);
                    let dor = &d_out[oi..][..d];
                    let dp: Vec<f64> = (0..c.kv_len)
                        .map(|j| {
                            if p[j] != 0.0 {
                                dot(dor, &v[kv_at(c, b, j, g)..][..d])
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for j in 0..c.kv_len {
                        if p[j] == 0.0 {
                            continue;
                        }
                        let ds = p[j] * (dp[j] - delta);
                        let kj = kv_at(c, b, j, g);
                        let dj = dkv_at(c, b, j, g);
                        for e in 0..d {
                            dq[oi + e] += sc * ds * k[kj + e] as f64;
                            dk[dj + e] += sc * ds * q[qi + e] as f64;
                            dv[dj + e] += p[j] * d_out[oi + e] as f64;
                        }
                    }
                }
            }
        }
        let f = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        (f(dq), f(dk), f(dv))
    }
}
