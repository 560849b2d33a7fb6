//! matmul and gemv against CPU references, every transpose and weight dtype,
//! awkward shapes, batching, accumulation, and gradients by finite differences.

mod common;

use boomgpu::gpu::{DType, Tensor};
use boomgpu::ops::matmul::{self, cpu, matmul_region, Gemm, Path, Region};

const PATHS: [Path; 4] = [Path::Tiled, Path::Direct, Path::Direct4, Path::Direct8];
use common::*;

fn upload_b(dtype: &str, shape: &[usize], vals: &[f32]) -> (Tensor, Vec<f32>) {
    let g = gpu();
    match dtype {
        "bf16" => {
            let h: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let r = h.iter().map(|v| v.to_f32()).collect();
            (g.upload_bf16("b", shape, &h).unwrap(), r)
        }
        "f16" => {
            let h: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
            let r = h.iter().map(|v| v.to_f32()).collect();
            (g.upload_f16("b", shape, &h).unwrap(), r)
        }
        "q8" => {
            use boomgpu::gpu::tensor::q8;
            let bytes = q8::quantize(vals);
            let r = q8::dequantize(&bytes, vals.len());
            let t = g.upload_bytes("b", shape, DType::Q8, &bytes).unwrap();
            (t, r)
        }
        _ => (g.upload_f32("b", shape, vals).unwrap(), vals.to_vec()),
    }
}

/// One product to check: random operands in every layout and weight dtype,
/// uploaded, with B as the GPU sees it (rounded to its dtype).
struct Case {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    what: String,
    a: Vec<f32>,
    b_used: Vec<f32>,
    ta: Tensor,
    tb: Tensor,
}

/// (m, n, k) that fit no tile: ones, odd sizes, one past a tile.
const AWKWARD: [(usize, usize, usize); 5] = [
    (1, 1, 1),
    (7, 33, 129),
    (65, 64, 17),
    (129, 7, 64),
    (33, 130, 3),
];

fn cases(rng: &mut Rng, shapes: &[(usize, usize, usize)]) -> Vec<Case> {
    let g = gpu();
    let mut out = Vec::new();
    for &(m, n, k) in shapes {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for dtype in ["f32", "bf16", "f16", "q8"] {
                    let a = rng.vec(m * k, 1.0);
                    let bv = rng.vec(k * n, 1.0);
                    let a_shape = if trans_a { [k, m] } else { [m, k] };
                    let b_shape = if trans_b { [n, k] } else { [k, n] };
                    let ta = g.upload_f32("a", &a_shape, &a).unwrap();
                    let (tb, b_used) = upload_b(dtype, &b_shape, &bv);
                    let what = format!("{m}x{n}x{k} ta={trans_a} tb={trans_b} {dtype}");
                    out.push(Case {
                        m,
                        n,
                        k,
                        trans_a,
                        trans_b,
                        what,
                        a,
                        b_used,
                        ta,
                        tb,
                    });
                }
            }
        }
    }
    out
}

#[test]
fn matmul_matches_cpu_for_all_layouts_and_dtypes() {
    let g = gpu();
    let mut rng = Rng::new(7);
    // Multiples of 4 (and not of 8), so the vectorised paths run.
    let shapes = [&AWKWARD[..], &[(36, 68, 20), (8, 8, 8), (4, 12, 4)]].concat();
    for cs in cases(&mut rng, &shapes) {
        let (m, n, k) = (cs.m, cs.n, cs.k);
        let mut rec = g.recorder();
        let c = matmul::matmul(&mut rec, &cs.ta, &cs.tb, cs.trans_a, cs.trans_b).unwrap();
        rec.run().unwrap();
        assert_eq!(c.shape(), &[m, n]);
        let want = cpu::matmul(&cs.a, &cs.b_used, m, n, k, cs.trans_a, cs.trans_b);
        assert_close(
            &cs.what,
            &g.read_f32(&c).unwrap(),
            &want,
            1e-5 * k as f32,
            1e-5,
        );
    }
}

#[test]
fn linear_layer_folds_leading_dims_and_batches() {
    let g = gpu();
    let mut rng = Rng::new(8);
    // [2, 5, 12] · Wᵀ, W [9, 12] → [2, 5, 9]
    let x = rng.vec(2 * 5 * 12, 1.0);
    let w = rng.vec(9 * 12, 1.0);
    let tx = g.upload_f32("x", &[2, 5, 12], &x).unwrap();
    let tw = g.upload_f32("w", &[9, 12], &w).unwrap();
    // Batched with a batched B: [3, 4, 6] · [3, 6, 5]
    let a3 = rng.vec(3 * 4 * 6, 1.0);
    let b3 = rng.vec(3 * 6 * 5, 1.0);
    let ta3 = g.upload_f32("a3", &[3, 4, 6], &a3).unwrap();
    let tb3 = g.upload_f32("b3", &[3, 6, 5], &b3).unwrap();
    // Broadcast A over a batched B: [4, 6] · [3, 6, 5]
    let a2 = rng.vec(4 * 6, 1.0);
    let ta2 = g.upload_f32("a2", &[4, 6], &a2).unwrap();
    let mut rec = g.recorder();
    let y = matmul::matmul(&mut rec, &tx, &tw, false, true).unwrap();
    let c3 = matmul::matmul(&mut rec, &ta3, &tb3, false, false).unwrap();
    let c3b = Tensor::empty(g, "c3b", &[3, 4, 5], DType::F32).unwrap();
    let mut gm = Gemm::new(false, false);
    gm.path = Some(Path::Tiled);
    matmul::matmul_into(&mut rec, &ta3, &tb3, &c3b, gm).unwrap();
    let c2 = matmul::matmul(&mut rec, &ta2, &tb3, false, false).unwrap();
    rec.run().unwrap();
    assert_eq!(y.shape(), &[2, 5, 9]);
    assert_close(
        "linear",
        &g.read_f32(&y).unwrap(),
        &cpu::matmul(&x, &w, 10, 9, 12, false, true),
        1e-4,
        1e-5,
    );
    assert_eq!(c3.shape(), &[3, 4, 5]);
    assert_eq!(c2.shape(), &[3, 4, 5]);
    let got3 = g.read_f32(&c3).unwrap();
    let got2 = g.read_f32(&c2).unwrap();
    assert_close(
        "batched tiled",
        &g.read_f32(&c3b).unwrap(),
        &got3,
        1e-5,
        1e-5,
    );
    for bi in 0..3 {
        let bslice = &b3[bi * 30..(bi + 1) * 30];
        let want = cpu::matmul(&a3[bi * 24..(bi + 1) * 24], bslice, 4, 5, 6, false, false);
        assert_close("batched", &got3[bi * 20..(bi + 1) * 20], &want, 1e-5, 1e-5);
        let want = cpu::matmul(&a2, bslice, 4, 5, 6, false, false);
        assert_close(
            "broadcast A",
            &got2[bi * 20..(bi + 1) * 20],
            &want,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn alpha_beta_accumulate() {
    let g = gpu();
    let mut rng = Rng::new(9);
    let (m, n, k) = (17, 23, 31);
    let a = rng.vec(m * k, 1.0);
    let b = rng.vec(k * n, 1.0);
    let c0 = rng.vec(m * n, 1.0);
    let ta = g.upload_f32("a", &[m, k], &a).unwrap();
    let tb = g.upload_f32("b", &[k, n], &b).unwrap();
    let prod = cpu::matmul(&a, &b, m, n, k, false, false);
    let want: Vec<f32> = prod.iter().zip(&c0).map(|(p, c)| 0.5 * p + c).collect();
    for path in PATHS {
        let tc = g.upload_f32("c", &[m, n], &c0).unwrap();
        let mut rec = g.recorder();
        let mut gm = Gemm::new(false, false).accumulate();
        gm.alpha = 0.5;
        gm.path = Some(path);
        matmul::matmul_into(&mut rec, &ta, &tb, &tc, gm).unwrap();
        rec.run().unwrap();
        assert_close(
            &format!("accumulate {path:?}"),
            &g.read_f32(&tc).unwrap(),
            &want,
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn shape_errors_are_reported() {
    let g = gpu();
    let a = g.upload_f32("a", &[3, 4], &[0.0; 12]).unwrap();
    let b = g.upload_f32("b", &[5, 6], &[0.0; 30]).unwrap();
    let mut rec = g.recorder();
    let e = matmul::matmul(&mut rec, &a, &b, false, false).unwrap_err();
    assert!(e.to_string().contains("inner dimensions"), "{e}");
    let ids = g.upload_u32("ids", &[4, 5], &[0; 20]).unwrap();
    assert!(matmul::matmul(&mut rec, &a, &ids, false, false).is_err());
    let c = g.upload_f32("c", &[2, 2], &[0.0; 4]).unwrap();
    assert!(matmul::matmul_into(
        &mut rec,
        &a,
        &g.upload_f32("b", &[4, 6], &[0.0; 24]).unwrap(),
        &c,
        Gemm::new(false, false)
    )
    .is_err());
}

/// The Linear layer y = x·Wᵀ and its gradients dx = dy·W, dW = dyᵀ·x, all
/// through matmul, against finite differences of the CPU forward.
#[test]
fn linear_gradients_match_finite_differences() {
    let g = gpu();
    let mut rng = Rng::new(10);
    let (t, i, o) = (5, 7, 6);
    let x = rng.vec(t * i, 1.0);
    let w = rng.vec(o * i, 1.0);
    let dy = rng.vec(t * o, 1.0);
    let fd_x = finite_diff(
        |x| dot64(&dy, &cpu::matmul(x, &w, t, o, i, false, true)),
        &x,
        1e-2,
    );
    let fd_w = finite_diff(
        |w| dot64(&dy, &cpu::matmul(&x, w, t, o, i, false, true)),
        &w,
        1e-2,
    );
    let tx = g.upload_f32("x", &[t, i], &x).unwrap();
    let tw = g.upload_f32("w", &[o, i], &w).unwrap();
    let tdy = g.upload_f32("dy", &[t, o], &dy).unwrap();
    let mut rec = g.recorder();
    let dx = matmul::matmul(&mut rec, &tdy, &tw, false, false).unwrap();
    let dw = matmul::matmul(&mut rec, &tdy, &tx, true, false).unwrap();
    rec.run().unwrap();
    assert_eq!(dw.shape(), &[o, i]);
    assert_close("dx", &g.read_f32(&dx).unwrap(), &fd_x, 1e-3, 1e-3);
    assert_close("dw", &g.read_f32(&dw).unwrap(), &fd_w, 1e-3, 1e-3);
}

#[test]
fn gemv_matches_matmul_reference() {
    use boomgpu::ops::gemv;
    let g = gpu();
    let mut rng = Rng::new(11);
    // K multiple of 8 (vector loads), of 4 only, and odd (scalar loads).
    for &(rows, n, k) in &[
        (1, 1, 8),
        (1, 33, 64),
        (3, 17, 36),
        (4, 9, 7),
        (2, 130, 129),
        (1, 70, 2560),
    ] {
        for dtype in ["f32", "bf16", "f16"] {
            let x = rng.vec(rows * k, 1.0);
            let w = rng.vec(n * k, 1.0);
            let tx = g.upload_f32("x", &[rows, k], &x).unwrap();
            let (tw, w_used) = upload_b(dtype, &[n, k], &w);
            let y0 = rng.vec(rows * n, 1.0);
            let want = cpu::matmul(&x, &w_used, rows, n, k, false, true);
            let want2: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| 2.0 * a + b).collect();
            for path in [gemv::GemvPath::Cooperative, gemv::GemvPath::PerOutput] {
                let ty = g.upload_f32("y", &[rows, n], &y0).unwrap();
                let y = Tensor::empty(g, "y", &[rows, n], DType::F32).unwrap();
                let mut rec = g.recorder();
                gemv::gemv_into_with(&mut rec, &tx, &tw, &y, 1.0, 0.0, path).unwrap();
                gemv::gemv_into_with(&mut rec, &tx, &tw, &ty, 2.0, 1.0, path).unwrap();
                rec.run().unwrap();
                let what = format!("gemv {rows}x{n}x{k} {dtype} {path:?}");
                assert_close(
                    &what,
                    &g.read_f32(&y).unwrap(),
                    &want,
                    1e-5 * k as f32,
                    1e-5,
                );
                assert_close(
                    &what,
                    &g.read_f32(&ty).unwrap(),
                    &want2,
                    2e-5 * k as f32,
                    1e-5,
                );
            }
        }
    }
    let x = g.upload_f32("x", &[5, 8], &[0.0; 40]).unwrap();
    let w = g.upload_f32("w", &[3, 8], &[0.0; 24]).unwrap();
    let mut rec = g.recorder();
    assert!(gemv::gemv(&mut rec, &x, &w)
        .unwrap_err()
        .to_string()
        .contains("1 to 4 rows"));
}

/// The cooperative-matrix path against a CPU product of the same
/// f16-rounded operands, so only the order of the f32 sums differs: every
/// layout and weight dtype, shapes that are not fragment multiples, a
/// batch, and alpha/beta. Where the adapter has no cooperative matrices the
/// launch must fail with a clear error (BOOMGPU_REQUIRE_COOP=1 makes that a
/// failure, for the CI step that runs on a lavapipe which has them).
#[test]
fn coop_path_matches_f16_reference() {
    let g = gpu();
    let mut rng = Rng::new(21);
    let Some(size) = g.caps.coop_matmul_size() else {
        assert!(
            std::env::var("BOOMGPU_REQUIRE_COOP").as_deref() != Ok("1"),
            "BOOMGPU_REQUIRE_COOP=1 but {} offers no f16 cooperative matrices",
            g.describe()
        );
        let ta = g.upload_f32("a", &[4, 4], &[0.0; 16]).unwrap();
        let tc = g.upload_f32("c", &[4, 4], &[0.0; 16]).unwrap();
        let mut rec = g.recorder();
        let mut gm = Gemm::new(false, false);
        gm.path = Some(Path::Coop);
        let e = matmul::matmul_into(&mut rec, &ta, &ta, &tc, gm).unwrap_err();
        assert!(e.to_string().contains("cooperative"), "{e}");
        assert!(!matmul::coop_ready(g));
        eprintln!(
            "no cooperative matrices on {}: launch refused as expected",
            g.describe()
        );
        return;
    };
    eprintln!(
        "cooperative fragments {size}x{size}x{size} on {}",
        g.describe()
    );
    let f16r =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
    let shapes = [&AWKWARD[..], &[(64, 64, 64), (100, 72, 40)]].concat();
    for cs in cases(&mut rng, &shapes) {
        let (m, n, k) = (cs.m, cs.n, cs.k);
        let c0 = rng.vec(m * n, 1.0);
        let tc = g.upload_f32("c", &[m, n], &c0).unwrap();
        let mut rec = g.recorder();
        let mut gm = Gemm::new(cs.trans_a, cs.trans_b);
        gm.path = Some(Path::Coop);
        gm.alpha = 0.75;
        gm.beta = 1.0;
        matmul::matmul_into(&mut rec, &cs.ta, &cs.tb, &tc, gm).unwrap();
        rec.run().unwrap();
        let prod = cpu::matmul(
            &f16r(&cs.a),
            &f16r(&cs.b_used),
            m,
            n,
            k,
            cs.trans_a,
            cs.trans_b,
        );
        let want: Vec<f32> = prod.iter().zip(&c0).map(|(p, c)| 0.75 * p + c).collect();
        let what = format!("coop {}", cs.what);
        assert_close(
            &what,
            &g.read_f32(&tc).unwrap(),
            &want,
            2e-6 * k as f32,
            1e-5,
        );
    }
    // Batched B with a broadcast A, and a Linear layer folding [2, 5, K].
    let (bn, m, n, k) = (3, 9, 20, 24);
    let a = rng.vec(m * k, 1.0);
    let b = rng.vec(bn * k * n, 1.0);
    let ta = g.upload_f32("a", &[m, k], &a).unwrap();
    let tb = g.upload_f32("b", &[bn, k, n], &b).unwrap();
    let tc = Tensor::empty(g, "c", &[bn, m, n], DType::F32).unwrap();
    let x = rng.vec(2 * 5 * k, 1.0);
    let w = rng.vec(n * k, 1.0);
    let tx = g.upload_f32("x", &[2, 5, k], &x).unwrap();
    let tw = g.upload_f32("w", &[n, k], &w).unwrap();
    let ty = Tensor::empty(g, "y", &[2, 5, n], DType::F32).unwrap();
    let mut rec = g.recorder();
    let mut gm = Gemm::new(false, false);
    gm.path = Some(Path::Coop);
    matmul::matmul_into(&mut rec, &ta, &tb, &tc, gm).unwrap();
    gm.trans_b = true;
    matmul::matmul_into(&mut rec, &tx, &tw, &ty, gm).unwrap();
    rec.run().unwrap();
    let got = g.read_f32(&tc).unwrap();
    for bi in 0..bn {
        let bs = &b[bi * k * n..(bi + 1) * k * n];
        let want = cpu::matmul(&f16r(&a), &f16r(bs), m, n, k, false, false);
        assert_close(
            "coop batched",
            &got[bi * m * n..(bi + 1) * m * n],
            &want,
            1e-4,
            1e-5,
        );
    }
    let want = cpu::matmul(&f16r(&x), &f16r(&w), 10, n, k, false, true);
    assert_close("coop linear", &g.read_f32(&ty).unwrap(), &want, 1e-4, 1e-5);
    // And the default path adopts it after its self-check.
    assert!(
        matmul::coop_ready(g),
        "self-check failed on {}",
        g.describe()
    );
}

/// Products over regions of larger tensors, as the LM head over blocks of
/// its vocabulary uses them: logits columns of a chunk (C region, B a bf16
/// block, transposed), the gradient into a chunk of token rows (A columns,
/// C rows, accumulated), and a block's weight gradient (A columns,
/// transposed). Cells outside the C region keep their values.
#[test]
fn regions_of_a_and_c_match_cpu_and_touch_nothing_else() {
    let g = gpu();
    let mut rng = Rng::new(21);
    let sub = |v: &[f32], ld: usize, r0: usize, rows: usize, c0: usize, cols: usize| {
        (r0..r0 + rows)
            .flat_map(|r| v[r * ld + c0..r * ld + c0 + cols].to_vec())
            .collect::<Vec<f32>>()
    };
    let (tokens, vocab, hidden) = (9, 70, 12);
    for (c0, w) in [(0, 32), (33, 37), (5, 1)] {
        for path in PATHS {
            let what = format!("columns {c0}+{w}, {path:?}");
            let gm = |ta, tb| {
                let mut gm = Gemm::new(ta, tb);
                gm.path = Some(path);
                gm
            };
            // Logits: C[:, c0..c0+w] = X · Wᵀ with W a bf16 [w, hidden] block.
            let x = rng.vec(tokens * hidden, 1.0);
            let (tw, wv) = upload_b("bf16", &[w, hidden], &rng.vec(w * hidden, 1.0));
            let c_init = rng.vec(tokens * vocab, 1.0);
            let tx = g.upload_f32("x", &[tokens, hidden], &x).unwrap();
            let tc = g.upload_f32("c", &[tokens, vocab], &c_init).unwrap();
            let rc = Region::whole(&tc).cols(c0, w);
            let mut rec = g.recorder();
            matmul_region(
                &mut rec,
                (&tx, Region::whole(&tx)),
                &tw,
                (&tc, rc),
                gm(false, true),
            )
            .unwrap();
            rec.run().unwrap();
            let got = g.read_f32(&tc).unwrap();
            let want = cpu::matmul(&x, &wv, tokens, w, hidden, false, true);
            assert_close(
                &format!("logits {what}"),
                &sub(&got, vocab, 0, tokens, c0, w),
                &want,
                1e-4,
                1e-5,
            );
            let mut outside = got.clone();
            let mut init = c_init.clone();
            for r in 0..tokens {
                for c in c0..c0 + w {
                    outside[r * vocab + c] = 0.0;
                    init[r * vocab + c] = 0.0;
                }
            }
            assert_eq!(
                outside, init,
                "logits {what}: cells outside the region changed"
            );

            // d_normed[r0..r0+m] += dS[:, c0..c0+w] · W (rows 2..2+m of 13).
            let (r0, m) = (2, tokens);
            let dn0 = rng.vec(13 * hidden, 1.0);
            let tdn = g.upload_f32("dn", &[13, hidden], &dn0).unwrap();
            let mut rec = g.recorder();
            let out = Region::whole(&tdn).rows(r0, m);
            let acc = gm(false, false).accumulate();
            matmul_region(&mut rec, (&tc, rc), &tw, (&tdn, out), acc).unwrap();
            rec.run().unwrap();
            let got_dn = g.read_f32(&tdn).unwrap();
            let ds = sub(&got, vocab, 0, tokens, c0, w);
            let prod = cpu::matmul(&ds, &wv, m, hidden, w, false, false);
            let want: Vec<f32> = prod
                .iter()
                .zip(&dn0[r0 * hidden..(r0 + m) * hidden])
                .map(|(p, d)| p + d)
                .collect();
            assert_close(
                &format!("d_normed {what}"),
                &got_dn[r0 * hidden..(r0 + m) * hidden],
                &want,
                1e-4,
                1e-5,
            );
            assert_eq!(
                &got_dn[..r0 * hidden],
                &dn0[..r0 * hidden],
                "{what}: rows before"
            );
            assert_eq!(
                &got_dn[(r0 + m) * hidden..],
                &dn0[(r0 + m) * hidden..],
                "{what}: rows after"
            );

            // dW += dS[:, c0..c0+w]ᵀ · X.
            let gw0 = rng.vec(w * hidden, 1.0);
            let tgw = g.upload_f32("gw", &[w, hidden], &gw0).unwrap();
            let mut rec = g.recorder();
            let acc = gm(true, false).accumulate();
            matmul_region(&mut rec, (&tc, rc), &tx, (&tgw, Region::whole(&tgw)), acc).unwrap();
            rec.run().unwrap();
            let prod = cpu::matmul(&ds, &x, w, hidden, tokens, true, false);
            let want: Vec<f32> = prod.iter().zip(&gw0).map(|(p, a)| p + a).collect();
            assert_close(
                &format!("dW {what}"),
                &g.read_f32(&tgw).unwrap(),
                &want,
                1e-4,
                1e-5,
            );
        }
    }
    // A region that does not lie inside its tensor is refused.
    let t = g.upload_f32("t", &[4, 8], &[0.0; 32]).unwrap();
    let b = g.upload_f32("b", &[8, 3], &[0.0; 24]).unwrap();
    let mut rec = g.recorder();
    let bad = Region::whole(&t).cols(6, 3);
    let e = matmul_region(
        &mut rec,
        (&t, bad),
        &b,
        (&t, Region::whole(&t)),
        Gemm::new(false, false),
    );
    assert!(format!("{}", e.unwrap_err()).contains("does not lie inside"));
}

/// The tape's product with a weight in blocks of rows against the same
/// weight whole: output, input gradient and each block's weight gradient
/// (accumulated into parameter buffers), for blocks of 7, 7 and 3 rows.
#[test]
fn linear_over_row_blocks_matches_whole_on_the_tape() {
    use boomgpu::autodiff::Tape;
    let g = gpu();
    let mut rng = Rng::new(33);
    let (n, din, dout) = (6, 10, 17);
    let x = rng.vec(n * din, 1.0);
    let w = rng.vec(dout * din, 1.0);
    let dy = rng.vec(n * dout, 1.0);
    let tdy = g.upload_f32("dy", &[n, dout], &dy).unwrap();
    // Whole.
    let mut rec = g.recorder();
    let mut tape = Tape::new();
    let gx = g.zeros("gx", &[n, din], DType::F32).unwrap();
    let gw = g.zeros("gw", &[dout, din], DType::F32).unwrap();
    let vx = tape
        .param(g.upload_f32("x", &[n, din], &x).unwrap(), gx.clone())
        .unwrap();
    let vw = tape
        .param(g.upload_f32("w", &[dout, din], &w).unwrap(), gw.clone())
        .unwrap();
    let y = tape.linear(&mut rec, vx, vw).unwrap();
    rec.run().unwrap();
    let want_y = g.read_f32(tape.value(y)).unwrap();
    let mut rec = g.recorder();
    tape.backward(&mut rec, vec![(y, tdy.clone())], 0).unwrap();
    rec.run().unwrap();
    // In blocks.
    let mut rec = g.recorder();
    let mut tape = Tape::new();
    let bx = g.zeros("bx", &[n, din], DType::F32).unwrap();
    let vx = tape
        .param(g.upload_f32("x", &[n, din], &x).unwrap(), bx.clone())
        .unwrap();
    let mut blocks = Vec::new();
    let mut grads = Vec::new();
    for (start, rows) in [(0, 7), (7, 7), (14, 3)] {
        let t = g
            .upload_f32("wb", &[rows, din], &w[start * din..(start + rows) * din])
            .unwrap();
        let gb = g.zeros("gb", &[rows, din], DType::F32).unwrap();
        blocks.push((tape.param(t, gb.clone()).unwrap(), start));
        grads.push(gb);
    }
    // Blocks out of order are refused (before anything is recorded).
    let bad = [blocks[1], blocks[0], blocks[2]];
    assert!(tape.linear_rows(&mut rec, vx, &bad).is_err());
    let y = tape.linear_rows(&mut rec, vx, &blocks).unwrap();
    rec.run().unwrap();
    let mut rec = g.recorder();
    assert_close(
        "y",
        &g.read_f32(tape.value(y)).unwrap(),
        &want_y,
        1e-5,
        1e-5,
    );
    tape.backward(&mut rec, vec![(y, tdy)], 0).unwrap();
    rec.run().unwrap();
    assert_close(
        "dx",
        &g.read_f32(&bx).unwrap(),
        &g.read_f32(&gx).unwrap(),
        1e-5,
        1e-5,
    );
    let joined: Vec<f32> = grads.iter().flat_map(|t| g.read_f32(t).unwrap()).collect();
    assert_close("dW", &joined, &g.read_f32(&gw).unwrap(), 1e-5, 1e-5);
}

#[test]
fn q8_weights_match_cpu_on_every_path() {
    let g = gpu();
    let mut rng = Rng::new(31);
    // Linear layers' layout (B [n, k], k a multiple of 32) and awkward ones.
    let shapes = [&AWKWARD[..], &[(36, 68, 64), (5, 40, 96)]].concat();
    for cs in cases(&mut rng, &shapes)
        .into_iter()
        .filter(|c| c.what.ends_with("q8"))
    {
        let want = cpu::matmul(&cs.a, &cs.b_used, cs.m, cs.n, cs.k, cs.trans_a, cs.trans_b);
        for path in PATHS {
            let c = g.zeros("c", &[cs.m, cs.n], DType::F32).unwrap();
            let mut gm = matmul::Gemm::new(cs.trans_a, cs.trans_b);
            gm.path = Some(path);
            let mut rec = g.recorder();
            matmul::matmul_into(&mut rec, &cs.ta, &cs.tb, &c, gm).unwrap();
            rec.run().unwrap();
            assert_close(
                &format!("{} {path:?}", cs.what),
                &g.read_f32(&c).unwrap(),
                &want,
                1e-5 * cs.k as f32,
                1e-5,
            );
        }
    }
}

#[test]
fn q8_blocks_round_to_within_half_a_step() {
    use boomgpu::gpu::tensor::q8;
    let mut rng = Rng::new(3);
    let mut vals = rng.vec(1000, 3.0);
    vals[40..72].fill(0.0); // an all-zero block
    vals[100] = 1e-30;
    let bytes = q8::quantize(&vals);
    assert_eq!(bytes.len(), q8::storage_bytes(1000));
    assert_eq!(bytes.len(), 1000 + 4 * 32);
    let back = q8::dequantize(&bytes, vals.len());
    for (b, block) in vals.chunks(q8::BLOCK).enumerate() {
        let step = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        for (i, (&x, &y)) in block.iter().zip(&back[b * q8::BLOCK..]).enumerate() {
            assert!(
                (x - y).abs() <= step * 0.5 + 1e-12,
                "block {b} value {i}: {x} -> {y}"
            );
        }
    }
    assert!(back[40..72].iter().all(|&x| x == 0.0));
    // A tensor's read back is the dequantised values.
    let g = gpu();
    let t = g.upload_bytes("q", &[1000], DType::Q8, &bytes).unwrap();
    assert_eq!(g.read_f32(&t).unwrap(), back);
}
