use boomgpu::gpu::Tensor;
use boomgpu::ops::attention::{self, AttnConfig, AttnInputs};

use crate::harness::{Bench, Bound};

/// Causal attention FLOPs of the forward: QK^T and PV, 2 FLOPs per
/// multiply-add, over the visible (query, key) pairs.
fn fwd_flops(c: &AttnConfig) -> f64 {
    let visible: f64 = (0..c.q_len)
        .map(|i| (c.q_offset + i + 1).min(c.kv_len) as f64)
        .sum();
    2.0 * 2.0 * (c.batch * c.q_heads * c.head_dim) as f64 * visible
}

/// q, k, v and d_out for `c`, or None (said) when an upload fails.
fn tensors(b: &Bench, c: &AttnConfig) -> Option<[Tensor; 4]> {
    let g = &b.gpu;
    let fill = |name: &str, n: usize| {
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        g.upload_f32(name, &[n], &data)
    };
    let out: Vec<usize> = c.out_shape().to_vec();
    match (
        fill("q", c.q_elems()),
        fill("k", c.kv_elems()),
        fill("v", c.kv_elems()),
        fill("d_out", out[0] * out[1]),
    ) {
        (Ok(q), Ok(k), Ok(v), Ok(d)) => Some([q, k, v, d.reshape(&out).ok()?]),
        _ => {
            println!("attention: upload failed");
            None
        }
    }
}

/// Unmasked inputs from `tensors`.
fn inputs(t: &[Tensor; 4]) -> AttnInputs<'_> {
    AttnInputs {
        q: &t[0],
        k: &t[1],
        v: &t[2],
        mask: None,
    }
}

pub fn run(b: &mut Bench) {
    // Qwen3-4B: 32 query heads, 8 kv heads of 128; training 2048 tokens,
    // decode one token against 2048 cached keys.
    let (t, hq, hkv, d, tk_dec) = if b.small() {
        (128, 4, 1, 64, 512)
    } else {
        (2048, 32, 8, 128, 2048)
    };
    let train = AttnConfig::new(1, t, t, hq, hkv, d);
    let Some(train_t) = tensors(b, &train) else {
        return;
    };
    let (x, dout) = (inputs(&train_t), &train_t[3]);
    let f = fwd_flops(&train);
    // Each of q, k, v, out read or written once.
    let io = 4.0 * (2.0 * train.q_elems() as f64 + 2.0 * train.kv_elems() as f64);
    b.run(
        &format!("attention fwd T={t} H={hq}/{hkv} D={d}"),
        f,
        io,
        Bound::F32,
        |rec| attention::attention(rec, &train, &x).map(|_| ()),
    );
    // Backward: recomputes QK^T, then dP, dS·K, dS^T·Q, P^T·dO: 2.5× the
    // forward's useful FLOPs (the kernels recompute QK^T and dP once more).
    let mut rec = b.gpu.recorder();
    let Ok((out, lse)) = attention::attention(&mut rec, &train, &x) else {
        println!("attention: forward failed");
        return;
    };
    if rec.run().is_err() {
        println!("attention: forward failed");
        return;
    }
    b.run(
        &format!("attention bwd T={t} H={hq}/{hkv} D={d}"),
        2.5 * f,
        2.0 * io,
        Bound::F32,
        |rec| attention::attention_backward(rec, &train, &x, &out, &lse, dout).map(|_| ()),
    );

    // Decode: one query per head against a KV cache of tk_dec keys; memory
    // bound (every cached key and value read once).
    let dec = AttnConfig::new(1, 1, tk_dec, hq, hkv, d);
    let Some(dec_t) = tensors(b, &dec) else {
        return;
    };
    let x = inputs(&dec_t);
    let bytes = 4.0 * 2.0 * dec.kv_elems() as f64;
    b.run(
        &format!("attention decode Tk={tk_dec} H={hq}/{hkv} D={d}"),
        fwd_flops(&dec),
        bytes,
        Bound::Memory,
        |rec| attention::attention(rec, &dec, &x).map(|_| ()),
    );
}
