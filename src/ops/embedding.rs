//! Token embedding: gather rows of a `[vocab, hidden]` table (f32, bf16 or f16)
//! by u32 ids `[tokens]` into an f32 `[tokens, hidden]`, and the
//! deterministic backward: a scatter-add of the output gradient rows into
//! an f32 `d_table`, bit-identical run to run (no float atomics; see
//! shaders/embedding.wgsl).
//!
//! Tables larger than one binding (a 151,936 × 4096 f32 table is 2.5 GB) can
//! be split by rows into shards: [`embedding_sharded`] gathers from the
//! shards, [`embedding_backward_accumulate`] adds into one shard at a time.
//! Ids outside the table give zero rows (and no gradient).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::ops::launch;
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    hidden: u32,
    row_start: u32,
    rows: u32,
    fill: u32,
    col_blocks: u32,
    _pad: [u32; 2],
}

fn check_ids(op: &str, ids: &Tensor) -> Result<usize> {
    if ids.dtype() != DType::U32 {
        shape_bail!("{op}: ids must be u32, got {:?}", ids);
    }
    if ids.numel() >= 0x7fff_ffff {
        shape_bail!("{op}: {} tokens are too many", ids.numel());
    }
    Ok(ids.numel())
}

fn table_dims(op: &str, t: &Tensor) -> Result<(usize, usize)> {
    if t.shape().len() != 2 || !matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        shape_bail!(
            "{op}: table must be f32, bf16 or f16 [vocab, hidden], got {:?}",
            t
        );
    }
    Ok((t.dim(0), t.dim(1)))
}

/// Gather from a table split by rows into consecutive shards (all of one
/// dtype and width): shard k holds rows starting after the rows of shards
/// 0..k. One launch per shard.
pub fn embedding_sharded(rec: &mut Recorder, ids: &Tensor, shards: &[Tensor]) -> Result<Tensor> {
    let tokens = check_ids("embedding", ids)?;
    let Some(first) = shards.first() else {
        shape_bail!("embedding: no table given");
    };
    let (_, hidden) = table_dims("embedding", first)?;
    let gpu = rec.gpu();
    let out = Tensor::empty(gpu, "embedding.out", &[tokens, hidden], DType::F32)?;
    let total = tokens * hidden;
    if total > u32::MAX as usize {
        shape_bail!("embedding: [{tokens}, {hidden}] is too large for one launch");
    }
    let mut row_start = 0usize;
    for (k, shard) in shards.iter().enumerate() {
        let (rows, h) = table_dims("embedding", shard)?;
        if h != hidden || shard.dtype() != first.dtype() {
            shape_bail!(
                "embedding: shard {k} {:?} does not match shard 0 {:?}",
                shard,
                first
            );
        }
        if total > 0 {
            let p = Params {
                tokens: tokens as u32,
                hidden: hidden as u32,
                row_start: row_start.min(u32::MAX as usize) as u32,
                rows: rows as u32,
                fill: (k == 0) as u32,
                col_blocks: 0,
                _pad: [0; 2],
            };
            let args = [("ids", ids), ("table", shard), ("out", &out)];
            let dtype = [
                ("TABLE_BF16", (shard.dtype() == DType::BF16) as u32 as f64),
                ("TABLE_F16", (shard.dtype() == DType::F16) as u32 as f64),
            ];
            launch::per_item_with(rec, ("embedding", "embed"), &dtype, &args, &p, total)?;
        }
        row_start += rows;
    }
    Ok(out)
}

/// out[t] = table[ids[t]] → `[tokens, hidden]` f32.
pub fn embedding(rec: &mut Recorder, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    embedding_sharded(rec, ids, std::slice::from_ref(table))
}

/// d_table[id − row_start] += Σ over tokens with that id of dout[token],
/// for the ids in this (shard of the) table: rows `[row_start, row_start +
/// d_table.dim(0))`. Sums run in token order: bit-identical run to run.
pub fn embedding_backward_accumulate(
    rec: &mut Recorder,
    ids: &Tensor,
    dout: &Tensor,
    d_table: &Tensor,
    row_start: usize,
) -> Result<()> {
    let tokens = check_ids("embedding_backward", ids)?;
    if d_table.dtype() != DType::F32 || d_table.shape().len() != 2 {
        shape_bail!(
            "embedding_backward: d_table must be f32 [rows, hidden], got {:?}",
            d_table
        );
    }
    let (rows, hidden) = (d_table.dim(0), d_table.dim(1));
    if dout.dtype() != DType::F32 || dout.numel() != tokens * hidden {
        shape_bail!(
            "embedding_backward: dout {:?} should be f32 [{tokens}, {hidden}]",
            dout
        );
    }
    if tokens == 0 || hidden == 0 || rows == 0 || row_start >= u32::MAX as usize {
        return Ok(());
    }
    let gpu = rec.gpu();
    let col_blocks = hidden.div_ceil(256);
    if tokens * col_blocks > u32::MAX as usize {
        shape_bail!("embedding_backward: [{tokens}, {hidden}] is too large for one launch");
    }
    let p = Params {
        tokens: tokens as u32,
        hidden: hidden as u32,
        row_start: row_start as u32,
        rows: rows as u32,
        fill: 0,
        col_blocks: col_blocks as u32,
        _pad: [0; 2],
    };
    let links = Tensor::empty(gpu, "embedding.links", &[tokens], DType::U32)?;
    let args = [("ids", ids), ("links_out", &links)];
    launch::per_item(rec, "embedding", "embed_links", &args, &p, tokens)?;
    launch::per_group(
        rec,
        "embedding",
        "embed_bwd",
        &[
            ("ids", ids),
            ("links", &links),
            ("dout", dout),
            ("dtable", d_table),
        ],
        &p,
        tokens * col_blocks,
    )
}

/// A new zeroed `[vocab, hidden]` f32 gradient with dout's rows added in.
pub fn embedding_backward(
    rec: &mut Recorder,
    ids: &Tensor,
    dout: &Tensor,
    vocab: usize,
) -> Result<Tensor> {
    embedding_backward_rows(rec, ids, dout, vocab, 0)
}

/// The gradient of one block of a table split by rows: a new zeroed
/// `[rows, hidden]` f32 tensor with the rows of the ids in
/// `[row_start, row_start + rows)` added in.
pub fn embedding_backward_rows(
    rec: &mut Recorder,
    ids: &Tensor,
    dout: &Tensor,
    rows: usize,
    row_start: usize,
) -> Result<Tensor> {
    if dout.shape().is_empty() {
        shape_bail!("embedding_backward: dout {:?} has no hidden dim", dout);
    }
    let hidden = dout.dim(-1);
    let d_table = Tensor::empty(rec.gpu(), "embedding.d_table", &[rows, hidden], DType::F32)?;
    rec.clear(&d_table);
    embedding_backward_accumulate(rec, ids, dout, &d_table, row_start)?;
    Ok(d_table)
}

pub mod cpu {
    /// Gather (ids outside the table give zeros).
    pub fn embedding(ids: &[u32], table: &[f32], hidden: usize) -> Vec<f32> {
        let vocab = table.len() / hidden;
        let mut out = Vec::with_capacity(ids.len() * hidden);
        for &id in ids {
            let id = id as usize;
            if id < vocab {
                out.extend_from_slice(&table[id * hidden..(id + 1) * hidden]);
            } else {
                out.extend(std::iter::repeat_n(0.0, hidden));
            }
        }
        out
    }

    /// Scatter-add in f64.
    pub fn embedding_backward(ids: &[u32], dout: &[f32], vocab: usize, hidden: usize) -> Vec<f32> {
        let mut acc = vec![0f64; vocab * hidden];
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id < vocab {
                for c in 0..hidden {
                    acc[id * hidden + c] += dout[t * hidden + c] as f64;
                }
            }
        }
        acc.into_iter().map(|v| v as f32).collect()
    }

    /// The GPU's exact f32 order: per id, sum the rows of its tokens in
    /// token order (starting from the first), then add to the table.
    pub fn embedding_backward_f32_order(
        ids: &[u32],
        dout: &[f32],
        d_table: &mut [f32],
        hidden: usize,
    ) {
        let vocab = d_table.len() / hidden;
        let mut done = std::collections::HashSet::new();
        for (t, &id) in ids.iter().enumerate() {
            if (id as usize) >= vocab || !done.insert(id) {
                continue;
            }
            for c in 0..hidden {
                let mut acc = dout[t * hidden + c];
                for (j, &other) in ids.iter().enumerate().skip(t + 1) {
                    if other == id {
                        acc += dout[j * hidden + c];
                    }
                }
                d_table[id as usize * hidden + c] += acc;
            }
        }
    }
}
