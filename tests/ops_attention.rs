//! Fused causal GQA attention: CPU reference vs finite differences, GPU vs
//! CPU for the forward (GQA, padding mask with empty rows, decode from a KV
//! cache with and without key splits, chunked prefill with strided rows,
//! several head dims, batch 2) and the backward.

mod common;
use common::*;

use boomgpu::ops::attention::{self, cpu, AttnConfig, AttnInputs};
use boomgpu::Error;

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    mask: Option<Vec<u32>>,
}

fn data(rng: &mut Rng, c: &AttnConfig, mask: Option<Vec<u32>>) -> Data {
    Data {
        q: rng.vec(c.q_elems(), 1.5),
        k: rng.vec(c.kv_elems(), 1.5),
        v: rng.vec(c.kv_elems(), 1.0),
        mask,
    }
}

/// A padding mask [B, S] with roughly one key in `hole_every` masked.
fn holes(rng: &mut Rng, batch: usize, s: usize, hole_every: u32) -> Vec<u32> {
    (0..batch * s)
        .map(|_| (rng.below(hole_every) != 0) as u32)
        .collect()
}

struct Gpu3 {
    q: boomgpu::gpu::Tensor,
    k: boomgpu::gpu::Tensor,
    v: boomgpu::gpu::Tensor,
    mask: Option<boomgpu::gpu::Tensor>,
}

fn upload(c: &AttnConfig, d: &Data) -> Gpu3 {
    let g = gpu();
    Gpu3 {
        q: g.upload_f32("q", &[d.q.len()], &d.q).unwrap(),
        k: g.upload_f32("k", &[d.k.len()], &d.k).unwrap(),
        v: g.upload_f32("v", &[d.v.len()], &d.v).unwrap(),
        mask: d.mask.as_ref().map(|m| {
            g.upload_u32("mask", &[c.batch, m.len() / c.batch], m)
                .unwrap()
        }),
    }
}

fn inputs(t: &Gpu3) -> AttnInputs<'_> {
    AttnInputs {
        q: &t.q,
        k: &t.k,
        v: &t.v,
        mask: t.mask.as_ref(),
    }
}

fn gpu_forward(c: &AttnConfig, d: &Data) -> (Vec<f32>, Vec<f32>) {
    let g = gpu();
    let t = upload(c, d);
    let mut rec = g.recorder();
    let (out, lse) = attention::attention(&mut rec, c, &inputs(&t)).unwrap();
    rec.run().unwrap();
    (g.read_f32(&out).unwrap(), g.read_f32(&lse).unwrap())
}

/// -inf (rows with nothing to attend) must match exactly; the rest closely.
#[track_caller]
fn assert_lse(what: &str, got: &[f32], want: &[f32]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            *w == f32::NEG_INFINITY,
            *g == f32::NEG_INFINITY,
            "{what}: lse[{i}] is {g}, want {w}"
        );
    }
    let fin = |x: &[f32]| -> Vec<f32> { x.iter().map(|v| v.max(-1e30)).collect() };
    assert_close(what, &fin(got), &fin(want), 2e-5, 2e-5);
}

#[track_caller]
fn check_forward(what: &str, c: &AttnConfig, d: &Data) {
    let (out, lse) = gpu_forward(c, d);
    assert!(
        out.iter().all(|x| x.is_finite()),
        "{what}: non-finite output"
    );
    let (want_out, want_lse) = cpu::forward(c, &d.q, &d.k, &d.v, d.mask.as_deref());
    assert_close(&format!("{what} out"), &out, &want_out, 2e-5, 1e-4);
    assert_lse(&format!("{what} lse"), &lse, &want_lse);
}

#[test]
fn forward_gqa_causal_batch2() {
    let mut rng = Rng::new(1);
    // 33 queries × group 2 = 66 rows: three row blocks, three key blocks.
    let c = AttnConfig::new(2, 33, 33, 4, 2, 16);
    check_forward("gqa b2 t33", &c, &data(&mut rng, &c, None));
    // Group of 4 as in Qwen3, a single query row block that is mostly empty.
    let c = AttnConfig::new(1, 7, 7, 8, 2, 8);
    check_forward("gqa g4 t7", &c, &data(&mut rng, &c, None));
}

#[test]
fn forward_head_dims() {
    let mut rng = Rng::new(2);
    for (t, hq, hkv, d) in [(37, 3, 3, 8), (5, 2, 1, 64), (4, 2, 1, 128), (3, 1, 1, 4)] {
        let c = AttnConfig::new(1, t, t, hq, hkv, d);
        check_forward(&format!("d{d} t{t}"), &c, &data(&mut rng, &c, None));
    }
    // A scale other than 1/sqrt(D).
    let c = AttnConfig::new(1, 9, 9, 2, 1, 16).with_scale(0.7);
    check_forward("scale 0.7", &c, &data(&mut rng, &c, None));
}

#[test]
fn forward_padding_mask_with_empty_rows() {
    let mut rng = Rng::new(3);
    let c = AttnConfig::new(2, 9, 9, 2, 1, 16);
    // Left padding on sequence 0 (queries 0..2 see nothing), holes in 1.
    let mut mask = vec![0, 0, 0, 1, 1, 1, 1, 1, 1];
    mask.extend([1, 1, 1, 1, 1, 1, 0, 1, 0]);
    let d = data(&mut rng, &c, Some(mask));
    check_forward("left padding", &c, &d);
    let (out, lse) = gpu_forward(&c, &d);
    let row = c.q_heads * c.head_dim;
    assert!(
        out[..3 * row].iter().all(|&x| x == 0.0),
        "empty rows give 0"
    );
    assert_eq!(lse[0], f32::NEG_INFINITY);
    // A mask row wider than kv_len (a [B, max_ctx] mask).
    let c = AttnConfig::new(2, 19, 19, 4, 2, 8);
    let m = holes(&mut rng, 2, 24, 4);
    check_forward("wide mask", &c, &data(&mut rng, &c, Some(m)));
}

#[test]
fn forward_decode_from_kv_cache() {
    let mut rng = Rng::new(4);
    // Tq = 1 at position 36 of a cache of 48 rows per sequence.
    let base = AttnConfig::new(2, 1, 37, 8, 2, 16).with_kv_cache(48);
    assert_eq!(base.q_offset, 36);
    let m = holes(&mut rng, 2, 48, 5);
    let d = data(&mut rng, &base, Some(m));
    for splits in [1, 3, 0] {
        let c = base.with_kv_splits(splits);
        check_forward(&format!("decode splits {splits}"), &c, &d);
    }
    // Sequence 1 fully masked: its rows are empty in every split.
    let mut m = d.mask.clone().unwrap();
    m[48..].fill(0);
    let d = Data { mask: Some(m), ..d };
    check_forward("decode empty splits 3", &base.with_kv_splits(3), &d);
    // Long enough that the automatic choice splits the keys.
    let c = AttnConfig::new(1, 1, 300, 4, 1, 16);
    check_forward("decode tk300 auto", &c, &data(&mut rng, &c, None));
    let c = AttnConfig::new(1, 2, 300, 4, 1, 16).with_kv_splits(5);
    check_forward("decode tq2 splits 5", &c, &data(&mut rng, &c, None));
}

#[test]
fn forward_chunked_prefill_strided_rows() {
    let mut rng = Rng::new(5);
    // 5 new queries at positions 16..20 of 21 keys; q rows and kv rows wider
    // than the heads (as in a fused projection output), kv in a cache.
    let c = AttnConfig::new(2, 5, 21, 4, 2, 8)
        .with_q_row_stride(4 * 8 + 12)
        .with_kv_row_stride(2 * 8 + 4)
        .with_kv_cache(26);
    assert_eq!(c.q_offset, 16);
    check_forward("chunk", &c, &data(&mut rng, &c, None));
    // q_offset given explicitly, past the natural one (keys beyond the
    // query positions are not seen).
    let c = AttnConfig::new(1, 4, 12, 2, 2, 8).with_q_offset(3);
    check_forward("q_offset 3", &c, &data(&mut rng, &c, None));
}

/// A KV cache in blocks of rows (each its own buffer): decode and a
/// chunk of queries over 700 keys in blocks of 300 (the automatic key
/// splits inside each block), and over blocks of 5; the CPU reference over
/// the whole cache.
#[test]
fn forward_over_kv_blocks() {
    let g = gpu();
    let mut rng = Rng::new(14);
    for (tq, tk, block, kv_heads) in [(1, 700, 300, 2), (3, 700, 300, 1), (7, 23, 5, 2)] {
        let c = AttnConfig::new(1, tq, tk, 8, kv_heads, 16);
        let d = data(&mut rng, &c, None);
        let (want, _) = cpu::forward(&c, &d.q, &d.k, &d.v, None);
        let row = kv_heads * 16;
        let q = g.upload_f32("q", &[d.q.len()], &d.q).unwrap();
        // Blocks of `block` rows; the last holds spare rows past tk.
        let mut tensors = Vec::new();
        for start in (0..tk).step_by(block) {
            let n = block.min(tk - start);
            let mut k = d.k[start * row..(start + n) * row].to_vec();
            let mut v = d.v[start * row..(start + n) * row].to_vec();
            k.resize(block * row, f32::NAN);
            v.resize(block * row, f32::NAN);
            tensors.push((
                g.upload_f32("k", &[block, row], &k).unwrap(),
                g.upload_f32("v", &[block, row], &v).unwrap(),
                start,
            ));
        }
        let blocks: Vec<attention::KvBlock> = tensors
            .iter()
            .map(|(k, v, start)| attention::KvBlock {
                k,
                v,
                start: *start,
                rows: block,
            })
            .collect();
        let mut rec = g.recorder();
        let out = attention::attention_blocks(&mut rec, &c, &q, &blocks).unwrap();
        rec.run().unwrap();
        let what = format!("tq {tq} over {} blocks of {block}", blocks.len());
        assert_close(&what, &g.read_f32(&out).unwrap(), &want, 2e-5, 1e-4);
        // Blocks that miss keys are refused.
        let mut rec = g.recorder();
        let e = attention::attention_blocks(&mut rec, &c, &q, &blocks[..1]);
        assert!(e.is_err(), "{what}: a missing block was accepted");
    }
}

#[test]
fn rejects_bad_shapes() {
    let g = gpu();
    let mut rng = Rng::new(6);
    let c = AttnConfig::new(1, 4, 4, 4, 2, 8);
    let d = data(&mut rng, &c, None);
    let t = upload(&c, &d);
    let mut rec = g.recorder();
    let bad = [
        AttnConfig::new(1, 4, 4, 3, 2, 8),
        AttnConfig::new(1, 4, 4, 4, 2, 6),
        AttnConfig::new(1, 4, 4, 4, 2, 132),
        AttnConfig::new(1, 5, 4, 4, 2, 8),
        AttnConfig::new(1, 4, 0, 4, 2, 8),
        c.with_kv_cache(3),
    ];
    for b in bad {
        let e = attention::attention(&mut rec, &b, &inputs(&t));
        assert!(matches!(e, Err(Error::Shape(_))), "{b:?} accepted");
    }
    // Masks of the wrong dtype, and too short for kv_len.
    let bad_masks = [
        g.upload_f32("m", &[4], &[1.0; 4]).unwrap(),
        g.upload_u32("m", &[1, 3], &[1; 3]).unwrap(),
    ];
    for m in &bad_masks {
        let x = AttnInputs {
            mask: Some(m),
            ..inputs(&t)
        };
        assert!(matches!(
            attention::attention(&mut rec, &c, &x),
            Err(Error::Shape(_))
        ));
    }
    let (out, lse) = attention::attention(&mut rec, &c, &inputs(&t)).unwrap();
    assert!(matches!(
        attention::attention_backward(&mut rec, &c, &inputs(&t), &out, &lse, &lse),
        Err(Error::Shape(_))
    ));
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let mut rng = Rng::new(7);
    // GQA, batch 2, chunked queries, a padding mask that empties query 0 of
    // sequence 1, kv in a strided cache.
    let c = AttnConfig::new(2, 3, 5, 2, 1, 4).with_kv_cache(6);
    let mask = vec![1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1];
    let d = data(&mut rng, &c, Some(mask));
    let w = rng.vec(c.out_shape().iter().product(), 1.0);
    let (dq, dk, dv) = cpu::backward(&c, &d.q, &d.k, &d.v, d.mask.as_deref(), &w);
    let m = d.mask.as_deref();
    let fq = finite_diff(
        |x| dot64(&w, &cpu::forward(&c, x, &d.k, &d.v, m).0),
        &d.q,
        1e-3,
    );
    let fk = finite_diff(
        |x| dot64(&w, &cpu::forward(&c, &d.q, x, &d.v, m).0),
        &d.k,
        1e-3,
    );
    let fv = finite_diff(
        |x| dot64(&w, &cpu::forward(&c, &d.q, &d.k, x, m).0),
        &d.v,
        1e-3,
    );
    assert_close("dq vs fd", &dq, &fq, 2e-3, 1e-2);
    // dk, dv are dense [B*Tk, Hkv*D]; the finite differences follow the
    // cache layout (6 rows per sequence, the last one unused).
    let dense = |x: &[f32]| -> Vec<f32> {
        (0..2)
            .flat_map(|b| x[b * 6 * 4..][..5 * 4].to_vec())
            .collect()
    };
    assert_close("dk vs fd", &dk, &dense(&fk), 2e-3, 1e-2);
    assert_close("dv vs fd", &dv, &dense(&fv), 2e-3, 1e-2);
    assert!(
        dq.iter().any(|x| x.abs() > 1e-2),
        "gradients are not trivial"
    );
}

fn check_backward(what: &str, c: &AttnConfig, d: &Data, rng: &mut Rng) {
    let g = gpu();
    let t = upload(c, d);
    let w = rng.vec(c.out_shape().iter().product(), 1.0);
    let dout = g.upload_f32("d_out", &c.out_shape(), &w).unwrap();
    let run = || {
        let mut rec = g.recorder();
        let (out, lse) = attention::attention(&mut rec, c, &inputs(&t)).unwrap();
        let (dq, dk, dv) =
            attention::attention_backward(&mut rec, c, &inputs(&t), &out, &lse, &dout).unwrap();
        rec.run().unwrap();
        (
            g.read_f32(&dq).unwrap(),
            g.read_f32(&dk).unwrap(),
            g.read_f32(&dv).unwrap(),
        )
    };
    let (dq, dk, dv) = run();
    let (wq, wk, wv) = cpu::backward(c, &d.q, &d.k, &d.v, d.mask.as_deref(), &w);
    assert_close(&format!("{what} dq"), &dq, &wq, 5e-5, 5e-4);
    assert_close(&format!("{what} dk"), &dk, &wk, 5e-5, 5e-4);
    assert_close(&format!("{what} dv"), &dv, &wv, 5e-5, 5e-4);
    // Deterministic: a second run gives the same bits.
    let again = run();
    assert!(
        again.0 == dq && again.1 == dk && again.2 == dv,
        "{what}: not deterministic"
    );
}

#[test]
fn backward_matches_cpu() {
    let mut rng = Rng::new(8);
    let c = AttnConfig::new(2, 33, 33, 4, 2, 16);
    let m = holes(&mut rng, 2, 33, 6);
    let d = data(&mut rng, &c, Some(m));
    check_backward("gqa b2 t33 mask", &c, &d, &mut rng);

    // Left padding: empty rows must give zero gradients, not NaN.
    let c = AttnConfig::new(1, 9, 9, 2, 1, 8);
    let d = data(&mut rng, &c, Some(vec![0, 0, 1, 1, 1, 1, 1, 1, 1]));
    check_backward("left pad", &c, &d, &mut rng);

    for (t, hq, hkv, dim) in [(5, 2, 1, 64), (3, 2, 2, 128), (20, 3, 1, 4)] {
        let c = AttnConfig::new(1, t, t, hq, hkv, dim);
        let d = data(&mut rng, &c, None);
        check_backward(&format!("d{dim} t{t}"), &c, &d, &mut rng);
    }

    // Chunked queries against a strided cache, group of 4.
    let c = AttnConfig::new(2, 3, 21, 4, 1, 8)
        .with_kv_cache(24)
        .with_q_row_stride(40);
    let d = data(&mut rng, &c, None);
    check_backward("chunk cache", &c, &d, &mut rng);
}

/// Softmax attention over every unmasked key of a sequence, written out
/// here without the library's causal rule: what an encoder computes.
fn dense_bidirectional(c: &AttnConfig, d: &Data) -> Vec<f32> {
    let (s, h, hd) = (c.q_len, c.q_heads, c.head_dim);
    let mut out = vec![0.0f32; c.batch * s * h * hd];
    for b in 0..c.batch {
        for i in 0..s {
            for head in 0..h {
                let q = &d.q[((b * s + i) * h + head) * hd..][..hd];
                let keys: Vec<usize> = (0..s)
                    .filter(|&j| d.mask.as_ref().is_none_or(|m| m[b * s + j] != 0))
                    .collect();
                let logits: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let k = &d.k[((b * s + j) * h + head) * hd..][..hd];
                        q.iter().zip(k).map(|(x, y)| (x * y) as f64).sum::<f64>() * c.scale as f64
                    })
                    .collect();
                let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
                let z: f64 = w.iter().sum();
                let o = &mut out[((b * s + i) * h + head) * hd..][..hd];
                for (&j, wj) in keys.iter().zip(&w) {
                    let v = &d.v[((b * s + j) * h + head) * hd..][..hd];
                    for (x, y) in o.iter_mut().zip(v) {
                        *x += (wj / z * *y as f64) as f32;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn bidirectional_with_padding_sees_every_kept_key() {
    let mut rng = Rng::new(17);
    // Two texts of 11 positions, the second padded at the end (as a
    // tokenizer pads a batch), heads of 8 as the encoder fixtures use.
    let c = AttnConfig::bidirectional(2, 11, 4, 8);
    let mut mask = vec![1; 11];
    mask.extend([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    let d = data(&mut rng, &c, Some(mask));
    check_forward("bidirectional, padded", &c, &d);
    let (out, _) = gpu_forward(&c, &d);
    assert_close(
        "bidirectional vs dense softmax",
        &out,
        &dense_bidirectional(&c, &d),
        2e-5,
        1e-4,
    );
    // Longer than one key block, no mask.
    let c = AttnConfig::bidirectional(1, 70, 2, 16);
    let d = data(&mut rng, &c, None);
    let (out, _) = gpu_forward(&c, &d);
    assert_close(
        "bidirectional, 70 keys",
        &out,
        &dense_bidirectional(&c, &d),
        2e-5,
        1e-4,
    );
}

/// K and V rounded to f16 as a 16-bit KV cache holds them.
fn rounded(x: &[f32]) -> (Vec<f32>, Vec<half::f16>) {
    let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    (h.iter().map(|v| v.to_f32()).collect(), h)
}

/// The forward reading K and V as f16 (a 16-bit KV cache): the CPU
/// reference on the rounded values, for prefill, a decode step with key
/// splits, GQA and a mask, whole and in blocks.
#[test]
fn forward_with_f16_keys_and_values() {
    let g = gpu();
    let mut rng = Rng::new(29);
    let cases = [
        ("prefill", AttnConfig::new(1, 21, 21, 4, 2, 16), None),
        (
            "decode, 4 splits",
            AttnConfig::new(1, 1, 300, 8, 2, 32).with_kv_splits(4),
            None,
        ),
        (
            "masked batch",
            AttnConfig::new(2, 9, 9, 2, 1, 8),
            Some(holes(&mut rng, 2, 9, 3)),
        ),
    ];
    for (what, c, mask) in cases {
        let mut d = data(&mut rng, &c, mask);
        let (k, kh) = rounded(&d.k);
        let (v, vh) = rounded(&d.v);
        d.k = k;
        d.v = v;
        let (want, _) = cpu::forward(&c, &d.q, &d.k, &d.v, d.mask.as_deref());
        let t = upload(&c, &d);
        let k16 = g.upload_f16("k16", &[kh.len()], &kh).unwrap();
        let v16 = g.upload_f16("v16", &[vh.len()], &vh).unwrap();
        let half = AttnInputs {
            k: &k16,
            v: &v16,
            ..inputs(&t)
        };
        let mut rec = g.recorder();
        let (out, _) = attention::attention(&mut rec, &c, &half).unwrap();
        rec.run().unwrap();
        assert_close(what, &g.read_f32(&out).unwrap(), &want, 2e-5, 1e-4);
        // K in f16 with V in f32 is refused.
        let mixed = AttnInputs {
            k: &k16,
            ..inputs(&t)
        };
        let mut rec = g.recorder();
        assert!(
            attention::attention(&mut rec, &c, &mixed).is_err(),
            "{what}"
        );
    }
    // A decode step over a cache in two f16 blocks of 160 rows.
    let c = AttnConfig::new(1, 1, 300, 4, 2, 16);
    let d = data(&mut rng, &c, None);
    let (k, kh) = rounded(&d.k);
    let (v, vh) = rounded(&d.v);
    let (want, _) = cpu::forward(&c, &d.q, &k, &v, None);
    let q = g.upload_f32("q", &[d.q.len()], &d.q).unwrap();
    let row = c.kv_heads * c.head_dim;
    let block = |x: &[half::f16], b: usize| {
        let mut part = x[b * 160 * row..(300.min((b + 1) * 160)) * row].to_vec();
        part.resize(160 * row, half::f16::ZERO);
        g.upload_f16("blk", &[160, row], &part).unwrap()
    };
    let (k0, k1, v0, v1) = (block(&kh, 0), block(&kh, 1), block(&vh, 0), block(&vh, 1));
    let blocks = [
        attention::KvBlock {
            k: &k0,
            v: &v0,
            start: 0,
            rows: 160,
        },
        attention::KvBlock {
            k: &k1,
            v: &v1,
            start: 160,
            rows: 160,
        },
    ];
    let mut rec = g.recorder();
    let out = attention::attention_blocks(&mut rec, &c, &q, &blocks).unwrap();
    rec.run().unwrap();
    assert_close("f16 blocks", &g.read_f32(&out).unwrap(), &want, 2e-5, 1e-4);
}
