//! Losses, optimizer and reductions at model shapes (Qwen3-4B: vocab
//! 151,936, hidden 2560, 2048 training tokens; decode = 1 row).

use boomgpu::gpu::{DType, Gpu, Tensor};
use boomgpu::ops::distill_loss::{self, DistillLoss};
use boomgpu::ops::{adamw, argmax, cosine, reduce, softmax};

use crate::harness::{Bench, Bound};

fn random(g: &Gpu, name: &str, shape: &[usize], scale: f32, seed: u64) -> boomgpu::Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    g.upload_f32(name, shape, &v)
}

pub fn run(b: &mut Bench) {
    let small = b.small();
    let vocab = 151_936usize;
    if let Err(e) = losses(b, if small { 8 } else { 2048 }, vocab) {
        println!("distill_loss: setup failed: {e}");
    }
    if let Err(e) = optimizer(b, if small { 1 << 20 } else { 100_000_000 }) {
        println!("adamw: setup failed: {e}");
    }
    if let Err(e) = rows(b, if small { 4 } else { 128 }, vocab) {
        println!("reductions: setup failed: {e}");
    }
}

fn losses(b: &mut Bench, rows: usize, vocab: usize) -> boomgpu::Result<()> {
    let g = &b.gpu;
    let n = (rows * vocab) as f64;
    let s = random(g, "s", &[rows, vocab], 4.0, 1)?;
    let t = random(g, "t", &[rows, vocab], 4.0, 2)?;
    let y: Vec<u32> = (0..rows as u32)
        .map(|r| (r * 7919) % vocab as u32)
        .collect();
    let y = g.upload_u32("y", &[rows], &y)?;
    let cfg = DistillLoss::reference(rows as f32, rows as f32);
    // Reads s and t twice, writes ds once: 20 bytes per logit.
    b.run(
        &format!("distill_loss {rows}x{vocab}"),
        30.0 * n,
        20.0 * n,
        Bound::Memory,
        |rec| distill_loss::distill_loss(rec, &s, &t, &y, &cfg).map(|_| ()),
    );
    b.run(
        &format!("distill_loss_inplace {rows}x{vocab}"),
        30.0 * n,
        20.0 * n,
        Bound::Memory,
        |rec| distill_loss::distill_loss_inplace(rec, &s, &t, &y, &cfg).map(|_| ()),
    );
    b.run(
        &format!("cross_entropy {rows}x{vocab}"),
        4.0 * n,
        4.0 * n,
        Bound::Memory,
        |rec| distill_loss::cross_entropy(rec, &s, &y).map(|_| ()),
    );
    drop((s, t));
    let hidden = 2560;
    let a = random(&b.gpu, "a", &[rows, hidden], 1.0, 3)?;
    let bt = random(&b.gpu, "b", &[rows, hidden], 1.0, 4)?;
    let m = b.gpu.upload_u32("mask", &[rows], &vec![1; rows])?;
    let grad = b.gpu.zeros("grad", &[rows, hidden], DType::F32)?;
    let n = (rows * hidden) as f64;
    // Reads a, b twice, reads and writes the gradient.
    b.run(
        &format!("cosine_loss_accumulate {rows}x{hidden}"),
        10.0 * n,
        24.0 * n,
        Bound::Memory,
        |rec| cosine::cosine_loss_accumulate(rec, &a, &bt, &m, 0.1, rows as f32, &grad).map(|_| ()),
    );
    Ok(())
}

fn optimizer(b: &mut Bench, n: usize) -> boomgpu::Result<()> {
    let g = &b.gpu;
    let p = random(g, "p", &[n], 1.0, 5)?;
    let gr = random(g, "g", &[n], 1.0, 6)?;
    let m = g.zeros("m", &[n], DType::F32)?;
    let v = g.zeros("v", &[n], DType::F32)?;
    let cfg = adamw::AdamW::default();
    let gn = adamw::GradNorm::new(g, &[n])?;
    let nf = n as f64;
    b.run(
        &format!("grad_norm n={n}"),
        2.0 * nf,
        4.0 * nf,
        Bound::Memory,
        |rec| gn.record(rec, &[&gr], 1.0),
    );
    // Reads p, g, m, v, writes p, m, v.
    b.run(
        &format!("adamw_step (clipped) n={n}"),
        15.0 * nf,
        28.0 * nf,
        Bound::Memory,
        |rec| adamw::adamw_step(rec, &p, &gr, &m, &v, &cfg, 10, Some(gn.out())),
    );
    Ok(())
}

fn rows(b: &mut Bench, rows: usize, vocab: usize) -> boomgpu::Result<()> {
    let g = &b.gpu;
    let x = random(g, "x", &[rows, vocab], 4.0, 7)?;
    let row = random(g, "row", &[1, vocab], 4.0, 8)?;
    let n = (rows * vocab) as f64;
    let v = vocab as f64;
    b.run(
        &format!("argmax decode 1x{vocab}"),
        v,
        4.0 * v,
        Bound::Memory,
        |rec| argmax::argmax(rec, &row).map(|_| ()),
    );
    b.run(
        &format!("argmax decode 1x{vocab} (one workgroup)"),
        v,
        4.0 * v,
        Bound::Memory,
        |rec| argmax::argmax_with(rec, &row, false).map(|_| ()),
    );
    b.run(
        &format!("softmax {rows}x{vocab}"),
        5.0 * n,
        12.0 * n,
        Bound::Memory,
        |rec| softmax::softmax(rec, &x).map(|_| ()),
    );
    b.run(
        &format!("row_max {rows}x{vocab}"),
        n,
        4.0 * n,
        Bound::Memory,
        |rec| reduce::row_max(rec, &x).map(|_| ()),
    );
    b.run(
        &format!("sum {rows}x{vocab}"),
        n,
        4.0 * n,
        Bound::Memory,
        |rec| reduce::sum(rec, &x).map(|_| ()),
    );
    Ok(())
}
