//! Losses, optimizer and reductions: distill_loss (CE + KL + gradient),
//! cosine_loss, adamw + grad_norm, reduce, softmax, argmax. Each against
//! its CPU reference on awkward shapes, each backward against finite
//! differences of the CPU forward.

mod common;
use common::*;

use boomgpu::ops::distill_loss::{self, DistillLoss, NO_TARGET};
use boomgpu::ops::{adamw, argmax, cosine, reduce, softmax};

fn targets_for(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u32> {
    (0..rows)
        .map(|r| match r % 5 {
            // no target (last position / padding), and one out of range
            3 => NO_TARGET,
            4 => cols as u32 + 3,
            _ => rng.below(cols as u32),
        })
        .collect()
}

fn count_ce(targets: &[u32], cols: usize) -> f32 {
    targets.iter().filter(|&&y| (y as usize) < cols).count() as f32
}

#[test]
fn distill_backward_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let (rows, cols) = (5, 7);
    let s = rng.vec(rows * cols, 3.0);
    let t = rng.vec(rows * cols, 3.0);
    let targets = targets_for(&mut rng, rows, cols);
    for tau in [1.0f32, 2.0, 0.7] {
        let cfg = DistillLoss {
            tau,
            w_ce: 1.0,
            w_kl: 0.3,
            n_ce: count_ce(&targets, cols),
            n_kl: rows as f32,
        };
        let fd = finite_diff(
            |x| distill_loss::cpu::loss(x, &t, &targets, cols, &cfg),
            &s,
            1e-3,
        );
        let an = distill_loss::cpu::backward(&s, &t, &targets, cols, &cfg);
        assert_close(&format!("distill d/ds FD tau={tau}"), &an, &fd, 2e-4, 1e-3);
    }
    // The KL of identical distributions is 0 and its gradient vanishes.
    let (_, kl) = distill_loss::cpu::forward(&s, &s, &targets, cols, 2.0);
    assert_close("kl(p, p)", &kl, &vec![0.0; rows], 1e-9, 0.0);
}

/// `near`: the teacher is the student plus small noise (KL ~ 1e-5, where
/// the cancellation in the KL is hardest).
fn check_distill(rows: usize, cols: usize, tau: f32, seed: u64, near: bool) {
    let g = gpu();
    let mut rng = Rng::new(seed);
    let s = rng.vec(rows * cols, 4.0);
    let t: Vec<f32> = if near {
        s.iter().map(|&x| x + 0.01 * rng.uniform()).collect()
    } else {
        rng.vec(rows * cols, 4.0)
    };
    let targets = targets_for(&mut rng, rows, cols);
    let cfg = DistillLoss {
        tau,
        w_ce: 1.0,
        w_kl: 0.1,
        n_ce: count_ce(&targets, cols).max(1.0),
        n_kl: rows as f32,
    };
    let (want_ce, want_kl) = distill_loss::cpu::forward(&s, &t, &targets, cols, tau);
    let want_ds = distill_loss::cpu::backward(&s, &t, &targets, cols, &cfg);
    let want_nll = distill_loss::cpu::cross_entropy(&s, &targets, cols);

    let ts = g.upload_f32("s", &[rows, cols], &s).unwrap();
    let ts2 = g.upload_f32("s2", &[rows, cols], &s).unwrap();
    let tt = g.upload_f32("t", &[rows, cols], &t).unwrap();
    let ty = g.upload_u32("y", &[rows], &targets).unwrap();
    let mut rec = g.recorder();
    let (out, ds) = distill_loss::distill_loss(&mut rec, &ts, &tt, &ty, &cfg).unwrap();
    let fwd = distill_loss::distill_forward(&mut rec, &ts, &tt, &ty, &cfg).unwrap();
    let nll = distill_loss::cross_entropy(&mut rec, &ts, &ty).unwrap();
    let (inpl, stats) = distill_loss::distill_loss_inplace(&mut rec, &ts2, &tt, &ty, &cfg).unwrap();
    rec.run().unwrap();

    let what = format!("{rows}x{cols} tau={tau} near={near}");
    // Measured worst: 1e-6 on KL ~ 3 (random teacher), see the report.
    const KL_ATOL: f32 = 2e-6;
    let rd = |t| g.read_f32(t).unwrap();
    // ce ≈ log V + spread: absolute error from the f32 log-sum-exp.
    assert_close(&format!("ce {what}"), &rd(&out.ce), &want_ce, 2e-6, 1e-6);
    assert_close(&format!("kl {what}"), &rd(&out.kl), &want_kl, KL_ATOL, 2e-6);
    assert_close(&format!("ds {what}"), &rd(&ds), &want_ds, 1e-8, 1e-4);
    assert_close(
        &format!("fwd ce {what}"),
        &rd(&fwd.ce),
        &want_ce,
        2e-6,
        1e-6,
    );
    assert_close(
        &format!("fwd kl {what}"),
        &rd(&fwd.kl),
        &want_kl,
        KL_ATOL,
        2e-6,
    );
    assert_close(&format!("nll {what}"), &rd(&nll), &want_nll, 2e-6, 1e-6);
    assert_close(
        &format!("inplace ce {what}"),
        &rd(&inpl.ce),
        &want_ce,
        2e-6,
        1e-6,
    );
    assert_close(
        &format!("inplace kl {what}"),
        &rd(&inpl.kl),
        &want_kl,
        KL_ATOL,
        2e-6,
    );
    assert_close(
        &format!("inplace ds {what}"),
        &rd(&ts2),
        &want_ds,
        1e-8,
        1e-4,
    );
    // The gradient block by block of columns (rows from row 1 on, as a
    // later chunk of rows reads them) from the rows' statistics.
    let r0 = rows.min(1);
    let n = rows - r0;
    let width = (cols / 3).max(1);
    for c0 in (0..cols).step_by(width) {
        let w = width.min(cols - c0);
        let block = |x: &[f32]| -> Vec<f32> {
            (r0..rows)
                .flat_map(|r| x[r * cols + c0..r * cols + c0 + w].to_vec())
                .collect()
        };
        let bs = g.upload_f32("bs", &[n, w], &block(&s)).unwrap();
        let bt = g.upload_f32("bt", &[n, w], &block(&t)).unwrap();
        let at = distill_loss::ColBlock {
            row0: r0,
            col0: c0,
            vocab: cols,
        };
        let mut rec = g.recorder();
        distill_loss::distill_grad_cols(&mut rec, (&bs, &bt), (&stats, &ty), at, &cfg).unwrap();
        rec.run().unwrap();
        let what = format!("{what} columns {c0}..{}", c0 + w);
        assert_close(
            &what,
            &g.read_f32(&bs).unwrap(),
            &block(&want_ds),
            1e-8,
            1e-4,
        );
    }
}

#[test]
fn distill_gpu_matches_cpu() {
    for (i, &(rows, cols)) in [(3, 1), (6, 7), (5, 33), (2, 1000), (2, 1027), (2, 50304)]
        .iter()
        .enumerate()
    {
        let tau = [1.0, 2.0, 0.5][i % 3];
        check_distill(rows, cols, tau, 100 + i as u64, false);
        check_distill(rows, cols, tau, 200 + i as u64, true);
    }
}

#[test]
fn distill_qwen3_vocab_rows() {
    check_distill(2, 151_936, 1.0, 7, false);
    check_distill(1, 151_936, 2.0, 8, true);
}

#[test]
fn distill_rejects_bad_inputs() {
    let g = gpu();
    let s = g.upload_f32("s", &[2, 3], &[0.0; 6]).unwrap();
    let t = g.upload_f32("t", &[3, 2], &[0.0; 6]).unwrap();
    let y = g.upload_u32("y", &[2], &[0, 1]).unwrap();
    let y3 = g.upload_u32("y3", &[3], &[0, 1, 2]).unwrap();
    let cfg = DistillLoss::reference(2.0, 2.0);
    let mut rec = g.recorder();
    assert!(distill_loss::distill_loss(&mut rec, &s, &t, &y, &cfg).is_err());
    assert!(distill_loss::distill_loss(&mut rec, &s, &s, &y3, &cfg).is_err());
    let bad = DistillLoss { tau: 0.0, ..cfg };
    assert!(distill_loss::distill_loss_inplace(&mut rec, &s, &s, &y, &bad).is_err());
    assert!(distill_loss::cross_entropy(&mut rec, &s, &y3).is_err());
    // A column block past the vocabulary, or rows past the statistics.
    let (_, stats) = distill_loss::distill_loss_inplace(&mut rec, &s, &s, &y, &cfg).unwrap();
    let b = g.upload_f32("b", &[2, 2], &[0.0; 4]).unwrap();
    for (row0, col0) in [(0, 2), (1, 0)] {
        let at = distill_loss::ColBlock {
            row0,
            col0,
            vocab: 3,
        };
        let r = distill_loss::distill_grad_cols(&mut rec, (&b, &b), (&stats, &y), at, &cfg);
        assert!(r.is_err(), "{at:?}");
    }
}

#[test]
fn cosine_backward_matches_finite_differences() {
    let mut rng = Rng::new(21);
    let (rows, cols) = (4, 7);
    let a = rng.vec(rows * cols, 1.0);
    let b = rng.vec(rows * cols, 1.0);
    let mask = [1, 0, 1, 1];
    let fd = finite_diff(
        |x| cosine::cpu::loss(x, &b, &mask, cols, 2.0, 3.0),
        &a,
        1e-3,
    );
    let an = cosine::cpu::backward(&a, &b, &mask, cols, cosine::EPS, 2.0, 3.0);
    assert_close("cosine d/da FD", &an, &fd, 2e-4, 1e-3);
    // Row 1 is masked: no gradient at all.
    assert!(an[cols..2 * cols].iter().all(|&v| v == 0.0));
}

#[test]
fn cosine_gpu_matches_cpu() {
    let g = gpu();
    let mut rng = Rng::new(22);
    for &(rows, cols) in &[(1usize, 1usize), (7, 33), (5, 129), (3, 2560)] {
        let mut a = rng.vec(rows * cols, 2.0);
        let b = rng.vec(rows * cols, 2.0);
        let mask: Vec<u32> = (0..rows).map(|r| (r % 3 != 1) as u32).collect();
        if rows >= 6 {
            // a zero student row (counted): cos = 0, gradient −b/(eps·‖b‖)
            a[3 * cols..4 * cols].fill(0.0);
            // a tiny one, ‖a‖ < eps: the clamped norm, torch's gradient
            a[5 * cols..6 * cols].iter_mut().for_each(|x| *x *= 1e-10);
        }
        let n = mask.iter().sum::<u32>() as f32;
        let (w, eps) = (0.1f32, cosine::EPS);
        let want_v = cosine::cpu::forward(&a, &b, &mask, cols, eps);
        let want_g = cosine::cpu::backward(&a, &b, &mask, cols, eps, w, n);
        let base = rng.vec(rows * cols, 1.0);

        let ta = g.upload_f32("a", &[rows, cols], &a).unwrap();
        let tb = g.upload_f32("b", &[rows, cols], &b).unwrap();
        let tm = g.upload_u32("m", &[rows], &mask).unwrap();
        let acc = g.upload_f32("acc", &[rows, cols], &base).unwrap();
        let mut rec = g.recorder();
        let (v, ga) = cosine::cosine_loss(&mut rec, &ta, &tb, &tm, w, n).unwrap();
        let v2 = cosine::cosine_forward(&mut rec, &ta, &tb, &tm).unwrap();
        let v3 = cosine::cosine_loss_accumulate(&mut rec, &ta, &tb, &tm, w, n, &acc).unwrap();
        rec.run().unwrap();
        let what = format!("{rows}x{cols}");
        let want_acc: Vec<f32> = base.iter().zip(&want_g).map(|(x, y)| x + y).collect();
        assert_close(
            &format!("cos val {what}"),
            &g.read_f32(&v).unwrap(),
            &want_v,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("cos fwd {what}"),
            &g.read_f32(&v2).unwrap(),
            &want_v,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("cos acc val {what}"),
            &g.read_f32(&v3).unwrap(),
            &want_v,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("cos grad {what}"),
            &g.read_f32(&ga).unwrap(),
            &want_g,
            1e-7,
            1e-4,
        );
        assert_close(
            &format!("cos acc {what}"),
            &g.read_f32(&acc).unwrap(),
            &want_acc,
            1e-6,
            1e-4,
        );
    }
}

#[test]
fn adamw_reference_first_step_is_sign_descent() {
    // Step 1 from zero moments: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + eps).
    let cfg = adamw::AdamW::default();
    let mut p = vec![1.0f32, -2.0, 0.5];
    let g = [0.3f32, -4.0, 1e-3];
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    adamw::cpu::adamw_step(&mut p, &g, &mut m, &mut v, &cfg, 1, 1.0);
    let want: Vec<f32> = [1.0f32, -2.0, 0.5]
        .iter()
        .zip(&g)
        .map(|(&x, &gi)| x * (1.0 - cfg.lr * cfg.weight_decay) - cfg.lr * gi / (gi.abs() + cfg.eps))
        .collect();
    assert_close("adamw step 1", &p, &want, 1e-7, 1e-6);
}

#[test]
fn adamw_gpu_matches_cpu() {
    let g = gpu();
    let mut rng = Rng::new(31);
    let cfg = adamw::AdamW {
        lr: 1e-2,
        ..Default::default()
    };
    for n in [1usize, 7, 1000, 100_003] {
        for scaled in [false, true] {
            let mut p = rng.vec(n, 1.0);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let tp = g.upload_f32("p", &[n], &p).unwrap();
            let tm = g.zeros("m", &[n], boomgpu::gpu::DType::F32).unwrap();
            let tv = g.zeros("v", &[n], boomgpu::gpu::DType::F32).unwrap();
            let scale = 0.37f32;
            let ts = g
                .upload_f32("scale", &[4], &[scale, 9.0, 9.0, 9.0])
                .unwrap();
            for step in 1..=3u64 {
                let grad = rng.vec(n, 2.0);
                let tg = g.upload_f32("g", &[n], &grad).unwrap();
                let mut rec = g.recorder();
                let sc = if scaled { Some(&ts) } else { None };
                adamw::adamw_step(&mut rec, &tp, &tg, &tm, &tv, &cfg, step, sc).unwrap();
                rec.run().unwrap();
                let s = if scaled { scale } else { 1.0 };
                adamw::cpu::adamw_step(&mut p, &grad, &mut m, &mut v, &cfg, step, s);
            }
            let what = format!("n={n} scaled={scaled}");
            assert_close(
                &format!("adamw p {what}"),
                &g.read_f32(&tp).unwrap(),
                &p,
                1e-6,
                1e-5,
            );
            assert_close(
                &format!("adamw m {what}"),
                &g.read_f32(&tm).unwrap(),
                &m,
                1e-7,
                1e-5,
            );
            assert_close(
                &format!("adamw v {what}"),
                &g.read_f32(&tv).unwrap(),
                &v,
                1e-8,
                1e-5,
            );
        }
    }
    let t = g.upload_f32("t", &[3], &[0.0; 3]).unwrap();
    let u = g.upload_f32("u", &[4], &[0.0; 4]).unwrap();
    let mut rec = g.recorder();
    assert!(adamw::adamw_step(&mut rec, &t, &u, &t, &t, &cfg, 1, None).is_err());
    assert!(adamw::adamw_step(&mut rec, &t, &t, &t, &t, &cfg, 0, None).is_err());
}

#[test]
fn grad_norm_and_clipped_step() {
    let g = gpu();
    let mut rng = Rng::new(41);
    let sizes = [1usize, 7, 0, 4096, 4097, 100_003];
    let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 0.5)).collect();
    let tg: Vec<_> = grads
        .iter()
        .zip(&sizes)
        .map(|(x, &n)| g.upload_f32("g", &[n], x).unwrap())
        .collect();
    let refs: Vec<&boomgpu::gpu::Tensor> = tg.iter().collect();
    let gn = adamw::GradNorm::new(g, &sizes).unwrap();
    let slices: Vec<&[f32]> = grads.iter().map(|x| x.as_slice()).collect();
    for max_norm in [1.0f32, 1e6, 0.0] {
        let mut rec = g.recorder();
        gn.record(&mut rec, &refs, max_norm).unwrap();
        rec.run().unwrap();
        let out = g.read_f32(gn.out()).unwrap();
        let (norm, scale) = adamw::cpu::grad_norm(&slices, max_norm);
        let what = format!("max_norm={max_norm}");
        assert_close(
            &format!("norm {what}"),
            &out[1..2],
            &[norm as f32],
            0.0,
            1e-5,
        );
        assert_close(&format!("scale {what}"), &out[0..1], &[scale], 0.0, 1e-5);
        assert_close(
            &format!("sumsq {what}"),
            &out[2..3],
            &[(norm * norm) as f32],
            0.0,
            2e-5,
        );
    }
    let per: Vec<f32> = grads
        .iter()
        .map(|x| x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32)
        .collect();
    assert_close(
        "per-tensor sumsq",
        &g.read_f32(gn.per_tensor()).unwrap(),
        &per,
        1e-7,
        1e-5,
    );
    assert!(adamw::cpu::grad_norm(&slices, 1.0).1 < 0.1, "test clips");

    // Tiny gradients: the 1e-6 in max_norm / (norm + 1e-6) matters.
    let tiny: Vec<f32> = (0..33).map(|i| 1e-6 * (i as f32 - 16.0)).collect();
    let tt = g.upload_f32("tiny", &[33], &tiny).unwrap();
    let gn1 = adamw::GradNorm::new(g, &[33]).unwrap();
    let mut rec = g.recorder();
    gn1.record(&mut rec, &[&tt], 1e-5).unwrap();
    rec.run().unwrap();
    let (norm, scale) = adamw::cpu::grad_norm(&[&tiny], 1e-5);
    assert!(scale < 0.5 && norm < 1e-4);
    let out = g.read_f32(gn1.out()).unwrap();
    assert_close("tiny norm", &out[1..2], &[norm as f32], 0.0, 1e-5);
    assert_close("tiny scale", &out[0..1], &[scale], 0.0, 1e-5);

    // Clip + step in one submission, no readback in between.
    let cfg = adamw::AdamW::default();
    let n = sizes[5];
    let mut p = rng.vec(n, 1.0);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let tp = g.upload_f32("p", &[n], &p).unwrap();
    let tm = g.zeros("m", &[n], boomgpu::gpu::DType::F32).unwrap();
    let tv = g.zeros("v", &[n], boomgpu::gpu::DType::F32).unwrap();
    let mut rec = g.recorder();
    gn.record(&mut rec, &refs, 1.0).unwrap();
    adamw::adamw_step(&mut rec, &tp, &tg[5], &tm, &tv, &cfg, 1, Some(gn.out())).unwrap();
    rec.run().unwrap();
    let (_, scale) = adamw::cpu::grad_norm(&slices, 1.0);
    adamw::cpu::adamw_step(&mut p, &grads[5], &mut m, &mut v, &cfg, 1, scale);
    assert_close("clipped m", &g.read_f32(&tm).unwrap(), &m, 1e-8, 1e-4);
    assert_close("clipped p", &g.read_f32(&tp).unwrap(), &p, 1e-6, 1e-5);
}

#[test]
fn reductions_match_cpu() {
    let g = gpu();
    let mut rng = Rng::new(51);
    for &(rows, cols) in &[(1usize, 1usize), (3, 7), (5, 33), (2, 1000), (1, 151_936)] {
        let x = rng.vec(rows * cols, 3.0);
        let tx = g.upload_f32("x", &[rows, cols], &x).unwrap();
        let mut rec = g.recorder();
        let s = reduce::row_sum(&mut rec, &tx).unwrap();
        let mx = reduce::row_max(&mut rec, &tx).unwrap();
        let total = reduce::sum(&mut rec, &tx).unwrap();
        rec.run().unwrap();
        let what = format!("{rows}x{cols}");
        assert_eq!(s.shape(), &[rows]);
        let tol = 1e-6 * (cols as f32).sqrt() * 3.0;
        assert_close(
            &format!("row_sum {what}"),
            &g.read_f32(&s).unwrap(),
            &reduce::cpu::row_sum(&x, cols),
            tol,
            1e-5,
        );
        assert_eq!(
            g.read_f32(&mx).unwrap(),
            reduce::cpu::row_max(&x, cols),
            "row_max {what}"
        );
        let tol = 1e-6 * ((rows * cols) as f32).sqrt() * 3.0;
        assert_close(
            &format!("sum {what}"),
            &g.read_f32(&total).unwrap(),
            &[reduce::cpu::sum(&x)],
            tol,
            1e-5,
        );
    }
    // A vector reduces to [1]; a long sum is deterministic run to run.
    let x = rng.vec(300_001, 1.0);
    let tx = g.upload_f32("x", &[300_001], &x).unwrap();
    let mut rec = g.recorder();
    let a = reduce::sum(&mut rec, &tx).unwrap();
    let b = reduce::sum(&mut rec, &tx).unwrap();
    let r = reduce::row_max(&mut rec, &tx).unwrap();
    rec.run().unwrap();
    assert_eq!(r.shape(), &[1]);
    let (a, b) = (g.read_f32(&a).unwrap(), g.read_f32(&b).unwrap());
    assert_eq!(a[0].to_bits(), b[0].to_bits());
    assert_close("sum 300001", &a, &[reduce::cpu::sum(&x)], 2e-3, 1e-5);
}

#[test]
fn softmax_backward_matches_finite_differences() {
    let mut rng = Rng::new(61);
    let (rows, cols) = (3, 7);
    let x = rng.vec(rows * cols, 2.0);
    let w = rng.vec(rows * cols, 1.0);
    let fd = finite_diff(|x| dot64(&w, &softmax::cpu::softmax(x, cols)), &x, 1e-3);
    let y = softmax::cpu::softmax(&x, cols);
    let an = softmax::cpu::softmax_backward(&y, &w, cols);
    assert_close("softmax FD", &an, &fd, 1e-4, 1e-3);
}

#[test]
fn softmax_gpu_matches_cpu() {
    let g = gpu();
    let mut rng = Rng::new(62);
    for &(rows, cols) in &[(3usize, 1usize), (4, 7), (2, 33), (2, 1000), (1, 151_936)] {
        let x = rng.vec(rows * cols, 5.0);
        let dy = rng.vec(rows * cols, 1.0);
        let tx = g.upload_f32("x", &[rows, cols], &x).unwrap();
        let tdy = g.upload_f32("dy", &[rows, cols], &dy).unwrap();
        let mut rec = g.recorder();
        let y = softmax::softmax(&mut rec, &tx).unwrap();
        let dx = softmax::softmax_backward(&mut rec, &y, &tdy).unwrap();
        rec.run().unwrap();
        let want_y = softmax::cpu::softmax(&x, cols);
        let got_y = g.read_f32(&y).unwrap();
        let what = format!("{rows}x{cols}");
        assert_close(&format!("softmax {what}"), &got_y, &want_y, 1e-9, 1e-5);
        // backward from the GPU's own y, so only the backward is compared
        let want_dx = softmax::cpu::softmax_backward(&got_y, &dy, cols);
        assert_close(
            &format!("softmax_bwd {what}"),
            &g.read_f32(&dx).unwrap(),
            &want_dx,
            1e-8,
            1e-4,
        );
    }
}

#[test]
fn argmax_lowest_index_on_ties_both_paths() {
    let g = gpu();
    let mut rng = Rng::new(71);
    for &(rows, cols) in &[(1usize, 1usize), (3, 7), (5, 33), (2, 50_304), (1, 151_936)] {
        let mut x = rng.vec(rows * cols, 3.0);
        for r in 0..rows {
            // ties: the maximum at several places, the first not at 0
            let row = &mut x[r * cols..(r + 1) * cols];
            let k = rng.below(cols as u32) as usize;
            for i in (k..cols).step_by(3 + r) {
                row[i] = 7.5;
            }
            if cols > 10 {
                row[cols - 1] = f32::NAN;
            }
        }
        let want = argmax::cpu::argmax(&x, cols);
        let tx = g.upload_f32("x", &[rows, cols], &x).unwrap();
        let mut rec = g.recorder();
        let a = argmax::argmax(&mut rec, &tx).unwrap();
        let b = argmax::argmax_with(&mut rec, &tx, true).unwrap();
        let c = argmax::argmax_with(&mut rec, &tx, false).unwrap();
        rec.run().unwrap();
        for (name, t) in [("auto", &a), ("split", &b), ("rows", &c)] {
            assert_eq!(g.read_u32(t).unwrap(), want, "argmax {name} {rows}x{cols}");
        }
    }
    // all -inf: index 0; all NaN: 0.
    let x = [f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NAN, f32::NAN];
    let tx = g.upload_f32("x", &[2, 2], &x).unwrap();
    let mut rec = g.recorder();
    let a = argmax::argmax(&mut rec, &tx).unwrap();
    rec.run().unwrap();
    assert_eq!(g.read_u32(&a).unwrap(), vec![0, 0]);
}

#[test]
fn distill_teacher_minus_inf_logits() {
    // Teacher logits of -inf (masked words): p = 0 there, no NaN anywhere.
    let g = gpu();
    let mut rng = Rng::new(81);
    let (rows, cols) = (3, 37);
    let s = rng.vec(rows * cols, 3.0);
    let mut t = rng.vec(rows * cols, 3.0);
    for i in (0..rows * cols).step_by(4) {
        t[i] = f32::NEG_INFINITY;
    }
    let targets = vec![1, NO_TARGET, 36];
    let cfg = DistillLoss {
        tau: 2.0,
        ..DistillLoss::reference(2.0, 3.0)
    };
    let (want_ce, want_kl) = distill_loss::cpu::forward(&s, &t, &targets, cols, cfg.tau);
    let want_ds = distill_loss::cpu::backward(&s, &t, &targets, cols, &cfg);
    assert!(want_kl.iter().all(|k| k.is_finite()));
    let ts = g.upload_f32("s", &[rows, cols], &s).unwrap();
    let tt = g.upload_f32("t", &[rows, cols], &t).unwrap();
    let ty = g.upload_u32("y", &[rows], &targets).unwrap();
    let mut rec = g.recorder();
    let (out, ds) = distill_loss::distill_loss(&mut rec, &ts, &tt, &ty, &cfg).unwrap();
    rec.run().unwrap();
    assert_close(
        "ce -inf",
        &g.read_f32(&out.ce).unwrap(),
        &want_ce,
        2e-6,
        1e-6,
    );
    assert_close(
        "kl -inf",
        &g.read_f32(&out.kl).unwrap(),
        &want_kl,
        2e-6,
        2e-6,
    );
    assert_close("ds -inf", &g.read_f32(&ds).unwrap(), &want_ds, 1e-8, 1e-4);
}

#[test]
fn many_rows_fold_the_grid() {
    // More rows than one grid dimension holds (65535 workgroups); every
    // row kernel uses the same folded_group index, one is checked here.
    let g = gpu();
    let mut rng = Rng::new(91);
    let (rows, cols) = (65_535 + 9, 3);
    let s = rng.vec(rows * cols, 2.0);
    let targets: Vec<u32> = (0..rows).map(|r| (r % 4) as u32).collect();
    let ts = g.upload_f32("s", &[rows, cols], &s).unwrap();
    let ty = g.upload_u32("y", &[rows], &targets).unwrap();
    let mut rec = g.recorder();
    let nll = distill_loss::cross_entropy(&mut rec, &ts, &ty).unwrap();
    rec.run().unwrap();
    let want = distill_loss::cpu::cross_entropy(&s, &targets, cols);
    assert_close("nll folded", &g.read_f32(&nll).unwrap(), &want, 2e-6, 1e-6);
}
