//! Group "a" ops against their CPU references: rmsnorm, layernorm, rope,
//! swiglu, gelu/erf, bias_add/colsum, embedding, cast. Backward rules are
//! checked twice: CPU backward against finite differences of the CPU
//! forward, and GPU backward against CPU backward.

mod common;
use common::*;

use boomgpu::gpu::{DType, Tensor};
use boomgpu::ops::{bias_add, cast, colsum, embedding, gelu, layernorm, rmsnorm, rope, swiglu};
use boomgpu::Error;

fn up(data: &[f32], shape: &[usize]) -> Tensor {
    gpu().upload_f32("t", shape, data).unwrap()
}

fn up_bf16(data: &[f32], shape: &[usize]) -> (Tensor, Vec<f32>) {
    let b: Vec<half::bf16> = data.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let rounded = b.iter().map(|v| v.to_f32()).collect();
    (gpu().upload_bf16("t", shape, &b).unwrap(), rounded)
}

fn read(t: &Tensor) -> Vec<f32> {
    gpu().read_f32(t).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Shapes (rows, n) with awkward sizes: rows not a multiple of the rows per
/// workgroup, n below/at/past the invocations per row.
const ROW_SHAPES: &[(usize, usize)] = &[(1, 1), (5, 7), (37, 33), (3, 129), (2, 300), (70, 16)];

// ---------------------------------------------------------------- rmsnorm

#[test]
fn rmsnorm_forward_matches_cpu() {
    let g = gpu();
    let mut rng = Rng::new(11);
    for &(rows, n) in ROW_SHAPES {
        let x = rng.vec(rows * n, 2.0);
        let w = rng.vec(n, 1.5);
        let (tx, tw) = (up(&x, &[rows, n]), up(&w, &[n]));
        let (tw16, w16) = up_bf16(&w, &[n]);
        let mut rec = g.recorder();
        let (y, saved) = rmsnorm::rmsnorm_fwd(&mut rec, &tx, &tw, 1e-6).unwrap();
        let y16 = rmsnorm::rmsnorm(&mut rec, &tx, &tw16, 1e-6).unwrap();
        rec.run().unwrap();
        let (want, want_r) = rmsnorm::cpu::rmsnorm(&x, &w, 1e-6);
        let what = format!("rmsnorm [{rows},{n}]");
        assert_eq!(y.shape(), &[rows, n]);
        assert_close(&what, &read(&y), &want, 1e-5, 1e-5);
        assert_close(
            &format!("{what} rstd"),
            &read(&saved.rstd),
            &want_r,
            0.0,
            1e-5,
        );
        let (want16, _) = rmsnorm::cpu::rmsnorm(&x, &w16, 1e-6);
        assert_close(&format!("{what} bf16 w"), &read(&y16), &want16, 1e-5, 1e-5);
    }
}

#[test]
fn rmsnorm_per_head_qk_norm_shape() {
    // Qwen3 q_norm: x [tokens, heads·head_dim], weight [head_dim].
    let g = gpu();
    let mut rng = Rng::new(12);
    let (tokens, heads, hd) = (5, 3, 24);
    let x = rng.vec(tokens * heads * hd, 3.0);
    let w = rng.vec(hd, 1.0);
    let (tx, tw) = (up(&x, &[tokens, heads * hd]), up(&w, &[hd]));
    let mut rec = g.recorder();
    let (y, saved) = rmsnorm::rmsnorm_fwd(&mut rec, &tx, &tw, 1e-6).unwrap();
    rec.run().unwrap();
    assert_eq!(y.shape(), &[tokens, heads * hd]);
    assert_eq!(saved.rstd.shape(), &[tokens * heads]);
    let (want, _) = rmsnorm::cpu::rmsnorm(&x, &w, 1e-6);
    assert_close("q_norm per head", &read(&y), &want, 1e-5, 1e-5);
    // The backward accepts the same shapes.
    let dy = rng.vec(x.len(), 1.0);
    let tdy = up(&dy, &[tokens, heads * hd]);
    let mut rec = g.recorder();
    let (dx, dw) = rmsnorm::rmsnorm_backward(&mut rec, &tdy, &tx, &tw, &saved).unwrap();
    rec.run().unwrap();
    let (wdx, wdw) = rmsnorm::cpu::rmsnorm_backward(&dy, &x, &w, 1e-6);
    assert_close("q_norm dx", &read(&dx), &wdx, 1e-5, 1e-4);
    assert_close("q_norm dw", &read(&dw), &wdw, 1e-4, 1e-4);
    // A last dim that is not a multiple of the weight is refused.
    let bad = up(&x[..tokens * 25], &[tokens, 25]);
    let mut rec = g.recorder();
    assert!(matches!(
        rmsnorm::rmsnorm(&mut rec, &bad, &tw, 1e-6),
        Err(Error::Shape(_))
    ));
}

#[test]
fn rmsnorm_cpu_backward_matches_finite_differences() {
    let mut rng = Rng::new(13);
    let (rows, n) = (3, 7);
    let x = rng.vec(rows * n, 2.0);
    let w = rng.vec(n, 1.5);
    let dy = rng.vec(rows * n, 1.0);
    let eps = 1e-5;
    let (dx, dw) = rmsnorm::cpu::rmsnorm_backward(&dy, &x, &w, eps);
    let fdx = finite_diff(
        |x| dot64(&dy, &rmsnorm::cpu::rmsnorm(x, &w, eps).0),
        &x,
        1e-3,
    );
    let fdw = finite_diff(
        |w| dot64(&dy, &rmsnorm::cpu::rmsnorm(&x, w, eps).0),
        &w,
        1e-3,
    );
    assert_close("rmsnorm dx vs fd", &dx, &fdx, 2e-3, 1e-2);
    assert_close("rmsnorm dw vs fd", &dw, &fdw, 2e-3, 1e-2);
}

#[test]
fn rmsnorm_backward_matches_cpu_and_is_deterministic() {
    let g = gpu();
    let mut rng = Rng::new(14);
    for &(rows, n) in ROW_SHAPES.iter().chain(&[(300, 5)]) {
        let x = rng.vec(rows * n, 2.0);
        let w = rng.vec(n, 1.5);
        let dy = rng.vec(rows * n, 1.0);
        let (tx, tw, tdy) = (up(&x, &[rows, n]), up(&w, &[n]), up(&dy, &[rows, n]));
        let mut rec = g.recorder();
        let (_, saved) = rmsnorm::rmsnorm_fwd(&mut rec, &tx, &tw, 1e-6).unwrap();
        let (dx, dw) = rmsnorm::rmsnorm_backward(&mut rec, &tdy, &tx, &tw, &saved).unwrap();
        let (_, dw2) = rmsnorm::rmsnorm_backward(&mut rec, &tdy, &tx, &tw, &saved).unwrap();
        rec.run().unwrap();
        let (wdx, wdw) = rmsnorm::cpu::rmsnorm_backward(&dy, &x, &w, 1e-6);
        let what = format!("rmsnorm backward [{rows},{n}]");
        assert_close(&format!("{what} dx"), &read(&dx), &wdx, 1e-5, 1e-4);
        assert_close(&format!("{what} dw"), &read(&dw), &wdw, 1e-4, 1e-4);
        assert_eq!(
            bits(&read(&dw)),
            bits(&read(&dw2)),
            "{what}: dw differs run to run"
        );
    }
}

#[test]
fn rmsnorm_fused_residual_and_accumulating_backward() {
    let g = gpu();
    let mut rng = Rng::new(15);
    for &(rows, n) in &[(5usize, 7usize), (37, 33), (3, 300)] {
        let x = rng.vec(rows * n, 2.0);
        let r = rng.vec(rows * n, 2.0);
        let w = rng.vec(n, 1.5);
        let dy = rng.vec(rows * n, 1.0);
        let base = rng.vec(rows * n, 1.0);
        let (tx, tr, tw, tdy) = (
            up(&x, &[rows, n]),
            up(&r, &[rows, n]),
            up(&w, &[n]),
            up(&dy, &[rows, n]),
        );
        let acc = up(&base, &[rows, n]);
        let mut rec = g.recorder();
        let (h, y, saved) = rmsnorm::rmsnorm_residual_fwd(&mut rec, &tx, &tr, &tw, 1e-6).unwrap();
        let dw = rmsnorm::rmsnorm_backward_acc(&mut rec, &tdy, &h, &tw, &saved, &acc).unwrap();
        rec.run().unwrap();
        let hs: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
        let what = format!("rmsnorm residual [{rows},{n}]");
        assert_eq!(read(&h), hs, "{what} h");
        let (want, _) = rmsnorm::cpu::rmsnorm(&hs, &w, 1e-6);
        assert_close(&what, &read(&y), &want, 1e-5, 1e-5);
        let (wdx, wdw) = rmsnorm::cpu::rmsnorm_backward(&dy, &hs, &w, 1e-6);
        let wacc: Vec<f32> = base.iter().zip(&wdx).map(|(a, b)| a + b).collect();
        assert_close(
            &format!("{what} dx accumulated"),
            &read(&acc),
            &wacc,
            1e-5,
            1e-4,
        );
        assert_close(&format!("{what} dw"), &read(&dw), &wdw, 1e-4, 1e-4);
    }
}

// -------------------------------------------------------------- layernorm

#[test]
fn layernorm_forward_matches_cpu() {
    let g = gpu();
    let mut rng = Rng::new(21);
    for &(rows, n) in ROW_SHAPES {
        // An offset mean, as real activations have.
        let x: Vec<f32> = rng.vec(rows * n, 2.0).iter().map(|v| v + 3.0).collect();
        let w = rng.vec(n, 1.5);
        let b = rng.vec(n, 0.5);
        let (tx, tw, tb) = (up(&x, &[rows, n]), up(&w, &[n]), up(&b, &[n]));
        let (tw16, w16) = up_bf16(&w, &[n]);
        let (tb16, b16) = up_bf16(&b, &[n]);
        let mut rec = g.recorder();
        let (y, saved) = layernorm::layernorm_fwd(&mut rec, &tx, &tw, &tb, 1e-5).unwrap();
        let y16 = layernorm::layernorm(&mut rec, &tx, &tw16, &tb16, 1e-5).unwrap();
        rec.run().unwrap();
        let (want, want_st) = layernorm::cpu::layernorm(&x, &w, &b, 1e-5);
        let what = format!("layernorm [{rows},{n}]");
        assert_close(&what, &read(&y), &want, 2e-5, 1e-5);
        assert_close(
            &format!("{what} stats"),
            &read(&saved.stats),
            &want_st,
            1e-5,
            1e-5,
        );
        let (want16, _) = layernorm::cpu::layernorm(&x, &w16, &b16, 1e-5);
        assert_close(&format!("{what} bf16"), &read(&y16), &want16, 2e-5, 1e-5);
    }
    // Mismatched bias dtype is refused.
    let (tw, tb) = (up(&[1.0; 4], &[4]), up_bf16(&[1.0; 4], &[4]).0);
    let tx = up(&[1.0; 8], &[2, 4]);
    let mut rec = g.recorder();
    assert!(matches!(
        layernorm::layernorm(&mut rec, &tx, &tw, &tb, 1e-5),
        Err(Error::Shape(_))
    ));
}

#[test]
fn layernorm_cpu_backward_matches_finite_differences() {
    let mut rng = Rng::new(22);
    let (rows, n) = (3, 7);
    let x = rng.vec(rows * n, 2.0);
    let w = rng.vec(n, 1.5);
    let b = rng.vec(n, 0.5);
    let dy = rng.vec(rows * n, 1.0);
    let eps = 1e-5;
    let (dx, dw, db) = layernorm::cpu::layernorm_backward(&dy, &x, &w, eps);
    let f =
        |x: &[f32], w: &[f32], b: &[f32]| dot64(&dy, &layernorm::cpu::layernorm(x, w, b, eps).0);
    let fdx = finite_diff(|v| f(v, &w, &b), &x, 1e-3);
    let fdw = finite_diff(|v| f(&x, v, &b), &w, 1e-3);
    let fdb = finite_diff(|v| f(&x, &w, v), &b, 1e-3);
    assert_close("layernorm dx vs fd", &dx, &fdx, 2e-3, 1e-2);
    assert_close("layernorm dw vs fd", &dw, &fdw, 2e-3, 1e-2);
    assert_close("layernorm db vs fd", &db, &fdb, 2e-3, 1e-2);
}

#[test]
fn layernorm_backward_matches_cpu_and_is_deterministic() {
    let g = gpu();
    let mut rng = Rng::new(23);
    for &(rows, n) in ROW_SHAPES.iter().chain(&[(300, 5)]) {
        let x: Vec<f32> = rng.vec(rows * n, 2.0).iter().map(|v| v - 1.0).collect();
        let w = rng.vec(n, 1.5);
        let b = rng.vec(n, 0.5);
        let dy = rng.vec(rows * n, 1.0);
        let (tx, tw, tb, tdy) = (
            up(&x, &[rows, n]),
            up(&w, &[n]),
            up(&b, &[n]),
            up(&dy, &[rows, n]),
        );
        let mut rec = g.recorder();
        let (_, saved) = layernorm::layernorm_fwd(&mut rec, &tx, &tw, &tb, 1e-5).unwrap();
        let (dx, dw, db) = layernorm::layernorm_backward(&mut rec, &tdy, &tx, &tw, &saved).unwrap();
        let (_, dw2, db2) =
            layernorm::layernorm_backward(&mut rec, &tdy, &tx, &tw, &saved).unwrap();
        rec.run().unwrap();
        let (wdx, wdw, wdb) = layernorm::cpu::layernorm_backward(&dy, &x, &w, 1e-5);
        let what = format!("layernorm backward [{rows},{n}]");
        // n = 1: every x̂ is 0, dx is 0 up to rounding.
        assert_close(&format!("{what} dx"), &read(&dx), &wdx, 2e-5, 1e-4);
        assert_close(&format!("{what} dw"), &read(&dw), &wdw, 1e-4, 1e-4);
        assert_close(&format!("{what} db"), &read(&db), &wdb, 1e-4, 1e-5);
        assert_eq!(bits(&read(&dw)), bits(&read(&dw2)), "{what}: dw run to run");
        assert_eq!(bits(&read(&db)), bits(&read(&db2)), "{what}: db run to run");
        // Accumulating into an existing gradient.
        let base = rng.vec(rows * n, 1.0);
        let acc = up(&base, &[rows, n]);
        let mut rec = g.recorder();
        layernorm::layernorm_backward_acc(&mut rec, &tdy, &tx, &tw, &saved, &acc).unwrap();
        rec.run().unwrap();
        let wacc: Vec<f32> = base.iter().zip(&wdx).map(|(a, b)| a + b).collect();
        assert_close(
            &format!("{what} dx accumulated"),
            &read(&acc),
            &wacc,
            2e-5,
            1e-4,
        );
    }
}

// ------------------------------------------------------------------- rope

#[test]
fn rope_inv_freq_default_and_llama3() {
    // Default: 1 / theta^(2i/d).
    let f = rope::inv_freq(128, 1e6, rope::RopeScaling::Default);
    assert_eq!(f.len(), 64);
    for (i, v) in f.iter().enumerate() {
        let want = 1.0 / 1e6f64.powf(2.0 * i as f64 / 128.0);
        assert!(
            (*v as f64 - want).abs() <= 1e-6 * want,
            "inv_freq[{i}] {v} vs {want}"
        );
    }
    // Llama 3.2: theta 500000, factor 32, low 1, high 4, original 8192.
    let sc = rope::RopeScaling::Llama3 {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let base = rope::inv_freq(128, 500000.0, rope::RopeScaling::Default);
    let got = rope::inv_freq(128, 500000.0, sc);
    let (mut high, mut low, mut mid) = (0, 0, 0);
    for i in 0..64 {
        let b = base[i] as f64;
        let wavelen = 2.0 * std::f64::consts::PI / b;
        let want = if wavelen < 8192.0 / 4.0 {
            high += 1;
            b
        } else if wavelen > 8192.0 {
            low += 1;
            b / 32.0
        } else {
            mid += 1;
            let s = (8192.0 / wavelen - 1.0) / 3.0;
            (1.0 - s) * b / 32.0 + s * b
        };
        assert!(
            (got[i] as f64 - want).abs() <= 2e-6 * want,
            "llama3 inv_freq[{i}] {} vs {want}",
            got[i]
        );
    }
    assert!(high > 0 && low > 0 && mid > 0, "{high} {low} {mid}");
    assert_eq!(got[0], 1.0);
    // Tables: cos/sin of pos·inv_freq.
    let (c, s) = rope::rope_tables(&got, 5, 1.0);
    assert_eq!(c.len(), 5 * 64);
    assert_eq!((c[0], s[0]), (1.0, 0.0));
    assert!((c[64 * 3 + 1] as f64 - (3.0 * got[1] as f64).cos()).abs() < 1e-7);
    assert!((s[64 * 4 + 9] as f64 - (4.0 * got[9] as f64).sin()).abs() < 1e-7);
}

/// (tokens, heads, head_dim, rot_dim): full rotary, Pythia's 25%, odd counts.
const ROPE_SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 1, 2, 2),
    (7, 3, 16, 16),
    (5, 2, 80, 20),
    (33, 4, 8, 4),
    (3, 2, 128, 128),
];

#[test]
fn rope_forward_and_backward_match_cpu() {
    let g = gpu();
    let mut rng = Rng::new(31);
    let max_pos = 50;
    for &(tokens, heads, hd, rot) in ROPE_SHAPES {
        let tables =
            rope::RopeTables::new(g, rot, 10000.0, rope::RopeScaling::Default, max_pos).unwrap();
        let (c, s) = rope::rope_tables(
            &rope::inv_freq(rot, 10000.0, rope::RopeScaling::Default),
            max_pos,
            1.0,
        );
        // Positions: a batch of two sequences, one with an offset (KV cache),
        // and one past the table (clamped).
        let mut pos: Vec<u32> = (0..tokens as u32)
            .map(|t| if t < 3 { t } else { 40 + (t * 7) % 9 })
            .collect();
        if tokens > 4 {
            pos[4] = 1000;
        }
        let x = rng.vec(tokens * heads * hd, 2.0);
        let tpos = g.upload_u32("pos", &[tokens], &pos).unwrap();
        let tx = up(&x, &[tokens, heads * hd]);
        let tx_in = up(&x, &[tokens, heads, hd]);
        let mut rec = g.recorder();
        let y = rope::rope(&mut rec, &tx, &tpos, &tables.cos, &tables.sin, hd).unwrap();
        rope::rope_inplace(&mut rec, &tx_in, &tpos, &tables.cos, &tables.sin, hd).unwrap();
        let back = rope::rope_backward(&mut rec, &y, &tpos, &tables.cos, &tables.sin, hd).unwrap();
        rec.run().unwrap();
        let want = rope::cpu::rope(&x, &pos, &c, &s, rot / 2, hd, 1.0);
        let what = format!("rope t{tokens} h{heads} d{hd} r{rot}");
        assert_close(&what, &read(&y), &want, 1e-6, 1e-5);
        assert_close(
            &format!("{what} in place"),
            &read(&tx_in),
            &want,
            1e-6,
            1e-5,
        );
        // Backward = rotation by −angle: undoes the forward.
        assert_close(
            &format!("{what} backward∘forward"),
            &read(&back),
            &x,
            1e-5,
            1e-5,
        );
        // Backward against CPU on an independent gradient, in place too.
        let dy = rng.vec(x.len(), 1.0);
        let tdy = up(&dy, &[tokens, heads * hd]);
        let mut rec = g.recorder();
        let dx = rope::rope_backward(&mut rec, &tdy, &tpos, &tables.cos, &tables.sin, hd).unwrap();
        rope::rope_backward_inplace(&mut rec, &tdy, &tpos, &tables.cos, &tables.sin, hd).unwrap();
        rec.run().unwrap();
        let wdx = rope::cpu::rope(&dy, &pos, &c, &s, rot / 2, hd, -1.0);
        assert_close(&format!("{what} dx"), &read(&dx), &wdx, 1e-6, 1e-5);
        assert_close(
            &format!("{what} dx in place"),
            &read(&tdy),
            &wdx,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn rope_cpu_backward_matches_finite_differences() {
    let mut rng = Rng::new(32);
    let (tokens, hd, rot) = (3, 8, 4);
    let f = rope::inv_freq(rot, 10000.0, rope::RopeScaling::Default);
    let (c, s) = rope::rope_tables(&f, 10, 1.0);
    let pos = [0u32, 3, 9];
    let x = rng.vec(tokens * 2 * hd, 1.0);
    let dy = rng.vec(x.len(), 1.0);
    let dx = rope::cpu::rope(&dy, &pos, &c, &s, rot / 2, hd, -1.0);
    let fd = finite_diff(
        |x| dot64(&dy, &rope::cpu::rope(x, &pos, &c, &s, rot / 2, hd, 1.0)),
        &x,
        1e-3,
    );
    assert_close("rope dx vs fd", &dx, &fd, 1e-3, 1e-3);
}

#[test]
fn rope_refuses_bad_shapes() {
    let g = gpu();
    let t = rope::RopeTables::new(g, 4, 10000.0, rope::RopeScaling::Default, 8).unwrap();
    let pos = g.upload_u32("pos", &[3], &[0, 1, 2]).unwrap();
    let x = up(&[0.0; 30], &[3, 10]);
    let mut rec = g.recorder();
    // head_dim 3 is odd; head_dim 10 with 3 tokens fits; rot 4 > head_dim 2.
    assert!(matches!(
        rope::rope(&mut rec, &x, &pos, &t.cos, &t.sin, 3),
        Err(Error::Shape(_))
    ));
    assert!(rope::rope(&mut rec, &x, &pos, &t.cos, &t.sin, 10).is_ok());
    assert!(matches!(
        rope::rope(&mut rec, &x, &pos, &t.cos, &t.sin, 2),
        Err(Error::Shape(_))
    ));
    let fpos = up(&[0.0; 3], &[3]);
    assert!(matches!(
        rope::rope(&mut rec, &x, &fpos, &t.cos, &t.sin, 10),
        Err(Error::Shape(_))
    ));
}

// ------------------------------------------------------------ activations

#[test]
fn swiglu_forward_backward_match_cpu() {
    let g = gpu();
    let mut rng = Rng::new(41);
    for &(t, i) in &[(1usize, 1usize), (5, 7), (3, 33), (2, 129), (300, 3)] {
        let mut gate = rng.vec(t * i, 4.0);
        gate[0] = -120.0; // exp overflow: silu → −0
        if gate.len() > 1 {
            gate[1] = 90.0;
        }
        let upv = rng.vec(t * i, 2.0);
        let d = rng.vec(t * i, 1.0);
        let (tg, tu, td) = (up(&gate, &[t, i]), up(&upv, &[t, i]), up(&d, &[t, i]));
        let mut fused = Vec::new();
        for r in 0..t {
            fused.extend_from_slice(&gate[r * i..(r + 1) * i]);
            fused.extend_from_slice(&upv[r * i..(r + 1) * i]);
        }
        let tgu = up(&fused, &[t, 2 * i]);
        let mut rec = g.recorder();
        let y = swiglu::swiglu(&mut rec, &tg, &tu).unwrap();
        let yf = swiglu::swiglu_fused(&mut rec, &tgu).unwrap();
        let (dg, du) = swiglu::swiglu_backward(&mut rec, &td, &tg, &tu).unwrap();
        let dgu = swiglu::swiglu_fused_backward(&mut rec, &td, &tgu).unwrap();
        rec.run().unwrap();
        let what = format!("swiglu [{t},{i}]");
        let want = swiglu::cpu::swiglu(&gate, &upv);
        assert_close(&what, &read(&y), &want, 1e-6, 1e-5);
        assert_eq!(yf.shape(), &[t, i]);
        assert_close(&format!("{what} fused"), &read(&yf), &want, 1e-6, 1e-5);
        let (wdg, wdu) = swiglu::cpu::swiglu_backward(&d, &gate, &upv);
        assert_close(&format!("{what} dgate"), &read(&dg), &wdg, 1e-6, 1e-5);
        assert_close(&format!("{what} dup"), &read(&du), &wdu, 1e-6, 1e-5);
        let (fdg, fdu) = swiglu::cpu::split_fused(&read(&dgu), i);
        assert_close(&format!("{what} fused dgate"), &fdg, &wdg, 1e-6, 1e-5);
        assert_close(&format!("{what} fused dup"), &fdu, &wdu, 1e-6, 1e-5);
    }
}

#[test]
fn swiglu_cpu_backward_matches_finite_differences() {
    let mut rng = Rng::new(42);
    let gate = rng.vec(20, 4.0);
    let upv = rng.vec(20, 2.0);
    let d = rng.vec(20, 1.0);
    let (dg, du) = swiglu::cpu::swiglu_backward(&d, &gate, &upv);
    let fdg = finite_diff(|g| dot64(&d, &swiglu::cpu::swiglu(g, &upv)), &gate, 1e-3);
    let fdu = finite_diff(|u| dot64(&d, &swiglu::cpu::swiglu(&gate, u)), &upv, 1e-3);
    assert_close("swiglu dgate vs fd", &dg, &fdg, 1e-3, 1e-3);
    assert_close("swiglu dup vs fd", &du, &fdu, 1e-3, 1e-3);
}

#[test]
fn erf_is_accurate_to_1e6() {
    let g = gpu();
    // Dense grid over [−10, 10] plus tiny, huge and special values.
    let mut x: Vec<f32> = (0..40001).map(|i| -10.0 + i as f32 * 5e-4).collect();
    x.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-20,
        1e-7,
        0.927_734_4,
        0.927_734_3,
        3.9,
        1e6,
        -1e30,
        f32::MAX,
    ]);
    let tx = up(&x, &[x.len()]);
    let mut rec = g.recorder();
    let y = gelu::erf(&mut rec, &tx).unwrap();
    rec.run().unwrap();
    let got = read(&y);
    let want: Vec<f32> = x
        .iter()
        .map(|&v| gelu::cpu::erf64(v as f64) as f32)
        .collect();
    assert_close("erf", &got, &want, 1e-6, 0.0);
    // And relative accuracy near 0 (where 1e-6 absolute says little).
    assert_close(
        "erf small",
        &got[x.len() - 11..x.len() - 6],
        &want[x.len() - 11..x.len() - 6],
        0.0,
        1e-6,
    );
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("erf max abs error on the device: {worst:e}");
    // The reference itself: known values.
    assert!((gelu::cpu::erf64(1.0) - 0.842_700_792_949_714_9).abs() < 1e-15);
    assert!((gelu::cpu::erf64(-2.5) + 0.999_593_047_982_555).abs() < 1e-14);
}

#[test]
fn gelu_forward_backward_match_cpu() {
    let g = gpu();
    let mut rng = Rng::new(43);
    for n in [1usize, 7, 33, 129, 1000] {
        let mut x = rng.vec(n, 5.0);
        x[0] = -12.0;
        let d = rng.vec(n, 1.0);
        let (tx, td) = (up(&x, &[n]), up(&d, &[n]));
        let mut rec = g.recorder();
        let y = gelu::gelu(&mut rec, &tx).unwrap();
        let dx = gelu::gelu_backward(&mut rec, &td, &tx).unwrap();
        rec.run().unwrap();
        assert_close(
            &format!("gelu {n}"),
            &read(&y),
            &gelu::cpu::gelu(&x),
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("gelu dx {n}"),
            &read(&dx),
            &gelu::cpu::gelu_backward(&d, &x),
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn gelu_cpu_backward_matches_finite_differences() {
    let mut rng = Rng::new(44);
    let x = rng.vec(30, 4.0);
    let d = rng.vec(30, 1.0);
    let dx = gelu::cpu::gelu_backward(&d, &x);
    let fd = finite_diff(|x| dot64(&d, &gelu::cpu::gelu(x)), &x, 1e-3);
    assert_close("gelu dx vs fd", &dx, &fd, 1e-3, 1e-3);
}

#[test]
fn bias_add_and_backward_match_cpu() {
    let g = gpu();
    let mut rng = Rng::new(51);
    for &(rows, n) in ROW_SHAPES.iter().chain(&[(1000, 3), (17, 260)]) {
        let x = rng.vec(rows * n, 2.0);
        let b = rng.vec(n, 1.0);
        let (tx, tb) = (up(&x, &[rows, n]), up(&b, &[n]));
        let (tb16, b16) = up_bf16(&b, &[n]);
        let tx2 = up(&x, &[rows, n]);
        let mut rec = g.recorder();
        let y = bias_add::bias_add(&mut rec, &tx, &tb).unwrap();
        let y16 = bias_add::bias_add(&mut rec, &tx, &tb16).unwrap();
        bias_add::bias_add_inplace(&mut rec, &tx2, &tb).unwrap();
        bias_add::bias_add_inplace(&mut rec, &tx2, &tb16).unwrap();
        let db = bias_add::bias_add_backward(&mut rec, &tx).unwrap();
        let db2 = colsum::colsum(&mut rec, &tx).unwrap();
        rec.run().unwrap();
        let what = format!("bias_add [{rows},{n}]");
        let want = bias_add::cpu::bias_add(&x, &b);
        assert_eq!(read(&y), want, "{what}");
        assert_eq!(read(&y16), bias_add::cpu::bias_add(&x, &b16), "{what} bf16");
        let want2 = bias_add::cpu::bias_add(&want, &b16);
        assert_eq!(read(&tx2), want2, "{what} in place");
        let wdb = colsum::cpu::colsum(&x, n);
        assert_eq!(db.shape(), &[n]);
        assert_close(
            &format!("{what} db"),
            &read(&db),
            &wdb,
            1e-5 * (rows as f32).sqrt(),
            1e-5,
        );
        assert_eq!(bits(&read(&db)), bits(&read(&db2)), "{what}: db run to run");
    }
    let mut rec = g.recorder();
    let (tx, tb) = (up(&[0.0; 6], &[2, 3]), up(&[0.0; 2], &[2]));
    assert!(matches!(
        bias_add::bias_add(&mut rec, &tx, &tb),
        Err(Error::Shape(_))
    ));
}

// -------------------------------------------------------------- embedding

#[test]
fn embedding_forward_f32_bf16_f16_and_shards() {
    let g = gpu();
    let mut rng = Rng::new(61);
    for &(vocab, hidden, tokens) in &[
        (10usize, 1usize, 1usize),
        (13, 7, 9),
        (50, 33, 21),
        (5, 129, 300),
    ] {
        let table = rng.vec(vocab * hidden, 1.0);
        let mut ids: Vec<u32> = (0..tokens).map(|_| rng.below(vocab as u32)).collect();
        if tokens > 3 {
            ids[2] = vocab as u32 + 5; // outside the table: zeros
        }
        let tids = g.upload_u32("ids", &[tokens], &ids).unwrap();
        let tt = up(&table, &[vocab, hidden]);
        let (tt16, t16) = up_bf16(&table, &[vocab, hidden]);
        let h16: Vec<half::f16> = table.iter().map(|&x| half::f16::from_f32(x)).collect();
        let th16 = g.upload_f16("table.f16", &[vocab, hidden], &h16).unwrap();
        let f16_vals: Vec<f32> = h16.iter().map(|x| x.to_f32()).collect();
        // Two shards: rows [0, split) and [split, vocab).
        let split = vocab / 2 + 1;
        let s0 = up(&table[..split * hidden], &[split, hidden]);
        let s1 = up(&table[split * hidden..], &[vocab - split, hidden]);
        let mut rec = g.recorder();
        let y = embedding::embedding(&mut rec, &tids, &tt).unwrap();
        let y16 = embedding::embedding(&mut rec, &tids, &tt16).unwrap();
        let yh = embedding::embedding(&mut rec, &tids, &th16).unwrap();
        let ys = embedding::embedding_sharded(&mut rec, &tids, &[s0, s1]).unwrap();
        rec.run().unwrap();
        let what = format!("embedding v{vocab} h{hidden} t{tokens}");
        let want = embedding::cpu::embedding(&ids, &table, hidden);
        assert_eq!(y.shape(), &[tokens, hidden]);
        assert_eq!(read(&y), want, "{what}");
        assert_eq!(
            read(&y16),
            embedding::cpu::embedding(&ids, &t16, hidden),
            "{what} bf16"
        );
        assert_eq!(
            read(&yh),
            embedding::cpu::embedding(&ids, &f16_vals, hidden),
            "{what} f16"
        );
        assert_eq!(read(&ys), want, "{what} sharded");
    }
}

#[test]
fn embedding_backward_is_exact_and_deterministic() {
    let g = gpu();
    let mut rng = Rng::new(62);
    for &(vocab, hidden, tokens) in &[
        (10usize, 1usize, 1usize),
        (7, 33, 40),
        (40, 7, 300),
        (3, 260, 9),
    ] {
        // Few ids so they repeat; one id outside the table.
        let mut ids: Vec<u32> = (0..tokens).map(|_| rng.below(vocab as u32)).collect();
        if tokens > 5 {
            ids[5] = 1 << 20;
        }
        let dout = rng.vec(tokens * hidden, 1.0);
        let tids = g.upload_u32("ids", &[tokens], &ids).unwrap();
        let td = up(&dout, &[tokens, hidden]);
        let mut rec = g.recorder();
        let d1 = embedding::embedding_backward(&mut rec, &tids, &td, vocab).unwrap();
        let d2 = embedding::embedding_backward(&mut rec, &tids, &td, vocab).unwrap();
        rec.run().unwrap();
        let what = format!("embedding backward v{vocab} h{hidden} t{tokens}");
        let got = read(&d1);
        assert_close(
            &what,
            &got,
            &embedding::cpu::embedding_backward(&ids, &dout, vocab, hidden),
            1e-5,
            1e-5,
        );
        assert_eq!(bits(&got), bits(&read(&d2)), "{what}: run to run");
        let mut exact = vec![0.0; vocab * hidden];
        embedding::cpu::embedding_backward_f32_order(&ids, &dout, &mut exact, hidden);
        assert_eq!(bits(&got), bits(&exact), "{what}: the documented f32 order");

        // Accumulating into two shards of an existing gradient.
        let split = vocab / 2;
        let base = rng.vec(vocab * hidden, 1.0);
        let s0 = up(&base[..split * hidden], &[split, hidden]);
        let s1 = up(&base[split * hidden..], &[vocab - split, hidden]);
        let mut rec = g.recorder();
        embedding::embedding_backward_accumulate(&mut rec, &tids, &td, &s0, 0).unwrap();
        embedding::embedding_backward_accumulate(&mut rec, &tids, &td, &s1, split).unwrap();
        rec.run().unwrap();
        let mut want = base.clone();
        embedding::cpu::embedding_backward_f32_order(&ids, &dout, &mut want, hidden);
        let mut both = read(&s0);
        both.extend(read(&s1));
        assert_eq!(bits(&both), bits(&want), "{what}: sharded accumulate");
    }
}

#[test]
fn embedding_cpu_backward_matches_finite_differences() {
    let mut rng = Rng::new(63);
    let (vocab, hidden) = (4, 3);
    let ids = [1u32, 3, 1, 0, 1];
    let table = rng.vec(vocab * hidden, 1.0);
    let d = rng.vec(ids.len() * hidden, 1.0);
    let dt = embedding::cpu::embedding_backward(&ids, &d, vocab, hidden);
    let fd = finite_diff(
        |t| dot64(&d, &embedding::cpu::embedding(&ids, t, hidden)),
        &table,
        1e-3,
    );
    assert_close("embedding d_table vs fd", &dt, &fd, 1e-3, 1e-3);
}

// ------------------------------------------------------------------- cast

fn cast_inputs(rng: &mut Rng) -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40, // f32 subnormal
        65504.0,
        65519.99, // rounds down to f16 max
        65520.0,  // rounds to f16 inf
        -70000.0,
        6.1e-5,                      // f16 normal boundary region
        5.96e-8,                     // f16 smallest subnormal
        2.98e-8,                     // half of it: ties to zero
        2.99e-8,                     // just above: rounds up
        1.0 + 1.0 / 2048.0,          // f16 tie → even (1.0)
        1.0 + 3.0 / 2048.0,          // f16 tie → even (up)
        f32::from_bits(0x3f80_8000), // bf16 tie → even (1.0)
        f32::from_bits(0x3f81_8000), // bf16 tie → even (up)
        f32::from_bits(0x3f80_8001), // just above the tie
        f32::from_bits(0x7f7f_ffff), // rounds to bf16 inf
    ];
    for _ in 0..500 {
        // Random bit patterns (finite), and plain random values.
        let b = (rng.next_u64() as u32) & 0xbfff_ffff;
        v.push(f32::from_bits(b));
        v.push(rng.uniform() * 100.0);
    }
    v.push(1.5); // odd length
    v
}

#[test]
fn cast_matches_half_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng::new(71);
    let mut x = cast_inputs(&mut rng);
    x.push(f32::NAN);
    x.push(f32::from_bits(0xffc0_1234)); // negative NaN with payload
    for len in [1usize, 2, 7, x.len()] {
        let xs = &x[x.len() - len..];
        let tx = up(xs, &[len]);
        let mut rec = g.recorder();
        let b = cast::cast(&mut rec, &tx, DType::BF16).unwrap();
        let h = cast::cast(&mut rec, &tx, DType::F16).unwrap();
        let bb = cast::cast(&mut rec, &b, DType::F32).unwrap();
        let hb = cast::cast(&mut rec, &h, DType::F32).unwrap();
        rec.run().unwrap();
        assert_eq!((b.dtype(), h.dtype()), (DType::BF16, DType::F16));
        let got_b: Vec<u16> = bytemuck::pod_collect_to_vec(&g.read_bytes(&b).unwrap());
        let got_h: Vec<u16> = bytemuck::pod_collect_to_vec(&g.read_bytes(&h).unwrap());
        let want_b: Vec<u16> = cast::cpu::to_bf16(xs).iter().map(|v| v.to_bits()).collect();
        let want_h: Vec<u16> = cast::cpu::to_f16(xs).iter().map(|v| v.to_bits()).collect();
        for i in 0..len {
            assert_eq!(
                got_b[i],
                want_b[i],
                "bf16 of {:e} ({:#x})",
                xs[i],
                xs[i].to_bits()
            );
            assert_eq!(
                got_h[i],
                want_h[i],
                "f16 of {:e} ({:#x})",
                xs[i],
                xs[i].to_bits()
            );
        }
        // Back to f32: exact widening of what half produced.
        let wb: Vec<u32> = cast::cpu::to_bf16(xs)
            .iter()
            .map(|v| v.to_f32().to_bits())
            .collect();
        let wh: Vec<f32> = cast::cpu::to_f16(xs).iter().map(|v| v.to_f32()).collect();
        assert_eq!(bits(&read(&bb)), wb, "bf16 → f32");
        let gh = read(&hb);
        for i in 0..len {
            assert!(
                gh[i].to_bits() == wh[i].to_bits() || (gh[i].is_nan() && wh[i].is_nan()),
                "f16 {:#x} → f32: {} vs {}",
                want_h[i],
                gh[i],
                wh[i]
            );
        }
    }
    // Every f16 bit pattern widens exactly (subnormals, inf, NaN included).
    let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
    let th = g.upload_f16("all", &[all.len()], &all).unwrap();
    let mut rec = g.recorder();
    let f = cast::cast(&mut rec, &th, DType::F32).unwrap();
    rec.run().unwrap();
    for (i, (got, h)) in read(&f).iter().zip(&all).enumerate() {
        let want = h.to_f32();
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "f16 {i:#x}: {got} vs {want}"
        );
    }
    // Unsupported pairs are refused.
    let tu = g.upload_u32("u", &[2], &[1, 2]).unwrap();
    let mut rec = g.recorder();
    assert!(matches!(
        cast::cast(&mut rec, &tu, DType::F32),
        Err(Error::Shape(_))
    ));
}

/// New rows of a 16-bit KV cache: rows 1..4 of k and v land at row 2 of
/// blocks that already hold rows, rounded as `half` rounds, nothing else
/// touched.
#[test]
fn kv_rows_to_f16_writes_rounded_rows_in_place() {
    let g = gpu();
    let mut rng = Rng::new(72);
    let cols = 6;
    let vals = cast_inputs(&mut rng);
    let (k, v): (Vec<f32>, Vec<f32>) =
        (vals[..5 * cols].to_vec(), vals[40..40 + 5 * cols].to_vec());
    let old: Vec<half::f16> = (0..7 * cols)
        .map(|i| half::f16::from_f32(i as f32))
        .collect();
    let (tk, tv) = (up(&k, &[5, cols]), up(&v, &[5, cols]));
    let kc = g.upload_f16("kc", &[7, cols], &old).unwrap();
    let vc = g.upload_f16("vc", &[7, cols], &old).unwrap();
    let mut rec = g.recorder();
    cast::kv_rows_to_f16(&mut rec, (&tk, &tv), 1, (&kc, &vc), 2, 3, cols).unwrap();
    rec.run().unwrap();
    for (src, dst) in [(&k, &kc), (&v, &vc)] {
        let got: Vec<u16> = bytemuck::pod_collect_to_vec(&g.read_bytes(dst).unwrap());
        let mut want: Vec<u16> = old.iter().map(|h| h.to_bits()).collect();
        for (i, x) in cast::cpu::to_f16(&src[cols..4 * cols]).iter().enumerate() {
            want[2 * cols + i] = x.to_bits();
        }
        assert_eq!(got, want);
    }
    // Out of the blocks, an odd width, or an f32 destination: refused.
    let mut rec = g.recorder();
    assert!(cast::kv_rows_to_f16(&mut rec, (&tk, &tv), 1, (&kc, &vc), 5, 3, cols).is_err());
    assert!(cast::kv_rows_to_f16(&mut rec, (&tk, &tv), 3, (&kc, &vc), 0, 3, cols).is_err());
    let f = up(
        &old.iter().map(|h| h.to_f32()).collect::<Vec<_>>(),
        &[7, cols],
    );
    assert!(cast::kv_rows_to_f16(&mut rec, (&tk, &tv), 0, (&f, &vc), 0, 1, cols).is_err());
}

/// The fused cached-pass rotation: q rotated in place, k rotated into the
/// cache rows and v copied beside it, in f32 and f16 caches, full and
/// partial rotary, rows taken from an offset and written at another; the
/// rows around them untouched.
#[test]
fn rope_kv_matches_rope_then_write() {
    let g = gpu();
    let mut rng = Rng::new(37);
    let max_pos = 50;
    // (tokens, q heads, kv heads, head_dim, rot)
    for (tokens, qh, kvh, hd, rot) in [(5, 4, 2, 16, 16), (3, 2, 2, 24, 8), (2, 8, 1, 8, 8)] {
        let tables =
            rope::RopeTables::new(g, rot, 10000.0, rope::RopeScaling::Default, max_pos).unwrap();
        assert!(rope::rope_kv_fits(hd, &tables));
        let (c, s) = rope::rope_tables(
            &rope::inv_freq(rot, 10000.0, rope::RopeScaling::Default),
            max_pos,
            1.0,
        );
        let pos: Vec<u32> = (0..tokens as u32).map(|t| 7 + 3 * t).collect();
        let (src, n, dst) = (1, tokens - 1, 2);
        let q = rng.vec(tokens * qh * hd, 2.0);
        let k = rng.vec(tokens * kvh * hd, 2.0);
        let v = rng.vec(tokens * kvh * hd, 2.0);
        let want_q = {
            let mut w = q.clone();
            let rows = &q[src * qh * hd..];
            let r = rope::cpu::rope(rows, &pos[src..], &c, &s, rot / 2, hd, 1.0);
            w[src * qh * hd..].copy_from_slice(&r);
            w
        };
        let kw = kvh * hd;
        let want_k = rope::cpu::rope(&k[src * kw..], &pos[src..], &c, &s, rot / 2, hd, 1.0);
        let want_v = &v[src * kw..];
        let what = format!("rope_kv t{tokens} {qh}+{kvh} heads d{hd} r{rot}");
        let tpos = g.upload_u32("pos", &[tokens], &pos).unwrap();
        let (tk, tv) = (up(&k, &[tokens, kw]), up(&v, &[tokens, kw]));
        let rows = dst + n + 1;
        // f32 cache: exactly what rope and a copy give, up to f32 rounding.
        let tq = up(&q, &[tokens, qh * hd]);
        let (kc, vc) = (
            up(&vec![9.0; rows * kw], &[rows, kw]),
            up(&vec![9.0; rows * kw], &[rows, kw]),
        );
        let fused = |tq: &Tensor, kc: &Tensor, vc: &Tensor| {
            let mut rec = g.recorder();
            let (qkv, rope) = ((tq, &tk, &tv), (&tpos, &tables, hd));
            rope::rope_kv(&mut rec, qkv, rope, (qh, kvh), (src, n, dst), (kc, vc)).unwrap();
            rec.run().unwrap();
        };
        fused(&tq, &kc, &vc);
        assert_close(&format!("{what} q"), &read(&tq), &want_q, 1e-6, 1e-5);
        let (gk, gv) = (read(&kc), read(&vc));
        assert_close(
            &format!("{what} k"),
            &gk[dst * kw..(dst + n) * kw],
            &want_k,
            1e-6,
            1e-5,
        );
        assert_eq!(&gv[dst * kw..(dst + n) * kw], want_v, "{what} v");
        for x in [&gk, &gv] {
            assert!(x[..dst * kw]
                .iter()
                .chain(&x[(dst + n) * kw..])
                .all(|&y| y == 9.0));
        }
        // f16 cache: the f32 results rounded as half rounds them.
        let tq = up(&q, &[tokens, qh * hd]);
        let nine = vec![half::f16::from_f32(9.0); rows * kw];
        let kc = g.upload_f16("kc", &[rows, kw], &nine).unwrap();
        let vc = g.upload_f16("vc", &[rows, kw], &nine).unwrap();
        fused(&tq, &kc, &vc);
        let f16s = |t| -> Vec<f32> {
            let h: Vec<half::f16> = bytemuck::pod_collect_to_vec(&g.read_bytes(t).unwrap());
            h.iter().map(|x| x.to_f32()).collect()
        };
        let (gk, gv) = (f16s(&kc), f16s(&vc));
        let round = |x: &[f32]| -> Vec<f32> {
            x.iter().map(|&y| half::f16::from_f32(y).to_f32()).collect()
        };
        // One f16 step of the value: rotation in f32 vs the f64 reference.
        assert_close(
            &format!("{what} k f16"),
            &gk[dst * kw..(dst + n) * kw],
            &round(&want_k),
            1e-3,
            1e-3,
        );
        assert_eq!(
            &gv[dst * kw..(dst + n) * kw],
            &round(want_v)[..],
            "{what} v f16"
        );
        assert!(gk[..dst * kw].iter().all(|&y| y == 9.0));
    }
    // An odd number of rotation pairs cannot be fused, and is refused.
    let tables = rope::RopeTables::new(g, 6, 10000.0, rope::RopeScaling::Default, 8).unwrap();
    assert!(!rope::rope_kv_fits(8, &tables));
    let (t, p) = (
        up(&[0.0; 8], &[1, 8]),
        g.upload_u32("p", &[1], &[0]).unwrap(),
    );
    let mut rec = g.recorder();
    assert!(rope::rope_kv(
        &mut rec,
        (&t, &t, &t),
        (&p, &tables, 8),
        (1, 1),
        (0, 1, 0),
        (&t, &t)
    )
    .is_err());
}
