//! Group "a" ops at model shapes (Qwen3-4B: hidden 2560, intermediate 9728,
//! 32/8 heads of 128, vocab 151,936; Pythia-2.8b: intermediate 10240, heads
//! of 80 with 20 rotary dims), 2048 tokens for training and 1 for decode.
//! All memory-bound: GB/s counts the bytes each op must move at least.

use boomgpu::gpu::{DType, Gpu, Tensor};
use boomgpu::ops::{bias_add, cast, colsum, embedding, gelu, layernorm, rmsnorm, rope, swiglu};
use boomgpu::Result;

use crate::harness::{Bench, Bound};

fn rand(g: &Gpu, shape: &[usize], seed: u32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    g.upload_f32("bench", shape, &v)
}

pub fn run(b: &mut Bench) {
    if let Err(e) = run_all(b) {
        println!("ops_a: setup failed: {e}");
    }
}

fn run_all(b: &mut Bench) -> Result<()> {
    let small = b.small();
    let t = if small { 128 } else { 2048 };
    let (h, inter, inter_neox) = (2560usize, 9728usize, 10240usize);
    let (heads, kv_heads, hd) = (32usize, 8usize, 128usize);
    let f = 4.0f64;

    // ---- norms
    for tokens in [t, 1] {
        let g = &b.gpu;
        let x = rand(g, &[tokens, h], 1)?;
        let w = rand(g, &[h], 2)?;
        let bias = rand(g, &[h], 3)?;
        let dy = rand(g, &[tokens, h], 4)?;
        let mut rec = g.recorder();
        let (_, rs) = rmsnorm::rmsnorm_fwd(&mut rec, &x, &w, 1e-6)?;
        let (_, ls) = layernorm::layernorm_fwd(&mut rec, &x, &w, &bias, 1e-5)?;
        rec.run()?;
        let sz = (tokens * h) as f64 * f;
        b.run(
            &format!("rmsnorm fwd [{tokens},{h}]"),
            0.0,
            2.0 * sz,
            Bound::Memory,
            |rec| rmsnorm::rmsnorm(rec, &x, &w, 1e-6).map(drop),
        );
        b.run(
            &format!("layernorm fwd [{tokens},{h}]"),
            0.0,
            2.0 * sz,
            Bound::Memory,
            |rec| layernorm::layernorm(rec, &x, &w, &bias, 1e-5).map(drop),
        );
        if tokens > 1 {
            b.run(
                &format!("rmsnorm bwd dx+dw [{tokens},{h}]"),
                0.0,
                3.0 * sz,
                Bound::Memory,
                |rec| rmsnorm::rmsnorm_backward(rec, &dy, &x, &w, &rs).map(drop),
            );
            b.run(
                &format!("layernorm bwd dx+dw+db [{tokens},{h}]"),
                0.0,
                3.0 * sz,
                Bound::Memory,
                |rec| layernorm::layernorm_backward(rec, &dy, &x, &w, &ls).map(drop),
            );
        }
    }
    {
        // Qwen3 q_norm: [tokens, 32·128] with a [128] weight.
        let g = &b.gpu;
        let q = rand(g, &[t, heads * hd], 5)?;
        let w = rand(g, &[hd], 6)?;
        let dy = rand(g, &[t, heads * hd], 7)?;
        let mut rec = g.recorder();
        let (_, rs) = rmsnorm::rmsnorm_fwd(&mut rec, &q, &w, 1e-6)?;
        rec.run()?;
        let sz = (t * heads * hd) as f64 * f;
        b.run(
            &format!("rmsnorm q_norm fwd [{t},{heads}x{hd}]"),
            0.0,
            2.0 * sz,
            Bound::Memory,
            |rec| rmsnorm::rmsnorm(rec, &q, &w, 1e-6).map(drop),
        );
        b.run(
            &format!("rmsnorm q_norm bwd [{t},{heads}x{hd}]"),
            0.0,
            3.0 * sz,
            Bound::Memory,
            |rec| rmsnorm::rmsnorm_backward(rec, &dy, &q, &w, &rs).map(drop),
        );
    }

    // ---- rope
    {
        let g = &b.gpu;
        let max_pos = 4096;
        let tq = rope::RopeTables::new(g, hd, 1e6, rope::RopeScaling::Default, max_pos)?;
        let tn = rope::RopeTables::new(g, 20, 10000.0, rope::RopeScaling::Default, max_pos)?;
        let pos = g.upload_u32("pos", &[t], &(0..t as u32).collect::<Vec<_>>())?;
        let q = rand(g, &[t, heads * hd], 8)?;
        let k = rand(g, &[t, kv_heads * hd], 9)?;
        let qn = rand(g, &[t, heads * 80], 10)?;
        let tab = |r: usize| (t * r / 2 * 2) as f64 * f; // cos+sin rows read
        let sz = (t * heads * hd) as f64 * f;
        b.run(
            &format!("rope q in place [{t},{heads}x{hd}]"),
            0.0,
            2.0 * sz + tab(hd),
            Bound::Memory,
            |rec| rope::rope_inplace(rec, &q, &pos, &tq.cos, &tq.sin, hd),
        );
        let szk = (t * kv_heads * hd) as f64 * f;
        b.run(
            &format!("rope k in place [{t},{kv_heads}x{hd}]"),
            0.0,
            2.0 * szk + tab(hd),
            Bound::Memory,
            |rec| rope::rope_inplace(rec, &k, &pos, &tq.cos, &tq.sin, hd),
        );
        b.run(
            &format!("rope q out of place [{t},{heads}x{hd}]"),
            0.0,
            2.0 * sz + tab(hd),
            Bound::Memory,
            |rec| rope::rope(rec, &q, &pos, &tq.cos, &tq.sin, hd).map(drop),
        );
        let szn = (t * heads * 80) as f64 * f;
        b.run(
            &format!("rope neox 25% out of place [{t},{heads}x80]"),
            0.0,
            2.0 * szn + tab(20),
            Bound::Memory,
            |rec| rope::rope(rec, &qn, &pos, &tn.cos, &tn.sin, 80).map(drop),
        );
    }

    // ---- activations
    {
        let g = &b.gpu;
        let gate = rand(g, &[t, inter], 11)?;
        let upt = rand(g, &[t, inter], 12)?;
        let gu = rand(g, &[t, 2 * inter], 13)?;
        let d = rand(g, &[t, inter], 14)?;
        let sz = (t * inter) as f64 * f;
        b.run(
            &format!("swiglu fwd [{t},{inter}]"),
            0.0,
            3.0 * sz,
            Bound::Memory,
            |rec| swiglu::swiglu(rec, &gate, &upt).map(drop),
        );
        b.run(
            &format!("swiglu fused fwd [{t},2x{inter}]"),
            0.0,
            3.0 * sz,
            Bound::Memory,
            |rec| swiglu::swiglu_fused(rec, &gu).map(drop),
        );
        b.run(
            &format!("swiglu bwd [{t},{inter}]"),
            0.0,
            5.0 * sz,
            Bound::Memory,
            |rec| swiglu::swiglu_backward(rec, &d, &gate, &upt).map(drop),
        );
        b.run(
            &format!("swiglu fused bwd [{t},2x{inter}]"),
            0.0,
            5.0 * sz,
            Bound::Memory,
            |rec| swiglu::swiglu_fused_backward(rec, &d, &gu).map(drop),
        );
    }
    {
        let g = &b.gpu;
        let x = rand(g, &[t, inter_neox], 15)?;
        let d = rand(g, &[t, inter_neox], 16)?;
        let bias = rand(g, &[inter_neox], 17)?;
        let bias16 = {
            let mut rec = g.recorder();
            let c = cast::cast(&mut rec, &bias, DType::BF16)?;
            rec.run()?;
            c
        };
        let sz = (t * inter_neox) as f64 * f;
        b.run(
            &format!("gelu fwd [{t},{inter_neox}]"),
            0.0,
            2.0 * sz,
            Bound::Memory,
            |rec| gelu::gelu(rec, &x).map(drop),
        );
        b.run(
            &format!("gelu bwd [{t},{inter_neox}]"),
            0.0,
            3.0 * sz,
            Bound::Memory,
            |rec| gelu::gelu_backward(rec, &d, &x).map(drop),
        );
        b.run(
            &format!("bias_add fwd [{t},{inter_neox}]"),
            0.0,
            2.0 * sz,
            Bound::Memory,
            |rec| bias_add::bias_add(rec, &x, &bias).map(drop),
        );
        b.run(
            &format!("bias_add in place bf16 b [{t},{inter_neox}]"),
            0.0,
            2.0 * sz,
            Bound::Memory,
            |rec| bias_add::bias_add_inplace(rec, &d, &bias16),
        );
        b.run(
            &format!("bias_add bwd (colsum) [{t},{inter_neox}]"),
            0.0,
            sz,
            Bound::Memory,
            |rec| colsum::colsum(rec, &x).map(drop),
        );
    }

    // ---- embedding
    {
        let vocab = if small { 8192 } else { 151_936 };
        let g = &b.gpu;
        let table32 = g.zeros("table", &[vocab, h], DType::F32)?;
        let table16 = g.zeros("table", &[vocab, h], DType::BF16)?;
        let mut s = 12345u64;
        let ids: Vec<u32> = (0..t)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % vocab as u64) as u32
            })
            .collect();
        let tids = g.upload_u32("ids", &[t], &ids)?;
        let d = rand(g, &[t, h], 18)?;
        let rows = (t * h) as f64;
        b.run(
            &format!("embedding f32 [{t}] of [{vocab},{h}]"),
            0.0,
            rows * 8.0,
            Bound::Memory,
            |rec| embedding::embedding(rec, &tids, &table32).map(drop),
        );
        b.run(
            &format!("embedding bf16 [{t}] of [{vocab},{h}]"),
            0.0,
            rows * 6.0,
            Bound::Memory,
            |rec| embedding::embedding(rec, &tids, &table16).map(drop),
        );
        b.run(
            &format!("embedding bwd accumulate [{t},{h}]"),
            0.0,
            rows * 12.0,
            Bound::Memory,
            |rec| embedding::embedding_backward_accumulate(rec, &tids, &d, &table32, 0),
        );
        drop(table16);
        // f32 → bf16 of the whole table (teacher weight conversion, 6 B/elt).
        let n = (vocab * h) as f64;
        b.run(
            &format!("cast f32->bf16 [{vocab},{h}]"),
            0.0,
            n * 6.0,
            Bound::Memory,
            |rec| cast::cast(rec, &table32, DType::BF16).map(drop),
        );
        b.run(
            &format!("cast f32->f16 [{vocab},{h}]"),
            0.0,
            n * 6.0,
            Bound::Memory,
            |rec| cast::cast(rec, &table32, DType::F16).map(drop),
        );
    }
    {
        let g = &b.gpu;
        let w16 = g.zeros("w", &[inter, h], DType::BF16)?;
        let n = (inter * h) as f64;
        b.run(
            &format!("cast bf16->f32 [{inter},{h}]"),
            0.0,
            n * 6.0,
            Bound::Memory,
            |rec| cast::cast(rec, &w16, DType::F32).map(drop),
        );
    }
    Ok(())
}
