use boomgpu::gpu::{DType, Tensor};
use boomgpu::ops::matmul;

use crate::harness::{Bench, Bound};

fn random_tensor(b: &Bench, name: &str, shape: &[usize], dtype: DType) -> Option<Tensor> {
    let n: usize = shape.iter().product();
    // Values in [-1, 1): the speed does not depend on them.
    let vals: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let t = match dtype {
        DType::BF16 => {
            let h: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
            b.gpu.upload_bf16(name, shape, &h)
        }
        DType::F16 => {
            let h: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
            b.gpu.upload_f16(name, shape, &h)
        }
        _ => b.gpu.upload_f32(name, shape, &vals),
    };
    match t {
        Ok(t) => Some(t),
        Err(e) => {
            println!("{name}: {e}");
            None
        }
    }
}

pub fn run(b: &mut Bench) {
    // (M, N, K): the MLP up-projection of Qwen3-4B over 2048 tokens, and a cube.
    let shapes: Vec<(usize, usize, usize)> = if b.small() {
        vec![(256, 512, 576), (512, 512, 512)]
    } else {
        vec![(2048, 9728, 2560), (4096, 4096, 4096)]
    };
    // The portable path (tiled on GPUs, direct on CPU adapters) and, where
    // offered, the cooperative-matrix one, each named in the row.
    // (Direct8 falls back to the scalar direct kernel where shapes need it.)
    let portable = match matmul::choose_path(&b.gpu) {
        matmul::Path::Coop | matmul::Path::Direct
            if b.gpu.info.device_type == wgpu::DeviceType::Cpu =>
        {
            matmul::Path::Direct8
        }
        matmul::Path::Coop => matmul::Path::Tiled,
        p => p,
    };
    let mut paths = vec![(portable, Bound::F32)];
    if b.gpu.caps.coop_matmul_size().is_some() {
        paths.push((matmul::Path::Coop, Bound::Tensor));
    }
    for (m, n, k) in shapes {
        for (dtype, tb) in [(DType::F32, true), (DType::BF16, true), (DType::F32, false)] {
            for &(path, bound) in &paths {
                let name = format!(
                    "matmul {m}x{n}x{k} B {}{} {}",
                    dtype.name(),
                    if tb { "ᵀ" } else { "" },
                    match path {
                        matmul::Path::Coop => "coop",
                        matmul::Path::Tiled => "tiled",
                        _ => "direct",
                    }
                );
                if !b.wants(&name) {
                    continue;
                }
                let Some(a) = random_tensor(b, "a", &[m, k], DType::F32) else {
                    return;
                };
                let b_shape = if tb { [n, k] } else { [k, n] };
                let Some(w) = random_tensor(b, "w", &b_shape, dtype) else {
                    return;
                };
                let Ok(c) = Tensor::empty(&b.gpu, "c", &[m, n], DType::F32) else {
                    return;
                };
                let flops = 2.0 * (m * n * k) as f64;
                let bytes = (4 * m * k + dtype.size() * n * k + 4 * m * n) as f64;
                let mut g = matmul::Gemm::new(false, tb);
                g.path = Some(path);
                b.run(&name, flops, bytes, bound, |rec| {
                    matmul::matmul_into(rec, &a, &w, &c, g)
                });
            }
        }
    }
}

/// Decode: one token through a weight, bandwidth-bound.
pub fn run_gemv(b: &mut Bench) {
    use boomgpu::ops::gemv;
    let shapes: Vec<(usize, usize)> = if b.small() {
        vec![(1536, 576), (49152, 576)]
    } else {
        vec![(9728, 2560), (2560, 9728), (151936, 2560)]
    };
    for (n, k) in shapes {
        for dtype in [DType::BF16, DType::F32] {
            let name = format!("gemv 1x{n}x{k} W {}", dtype.name());
            if !b.wants(&name) {
                continue;
            }
            let Some(x) = random_tensor(b, "x", &[1, k], DType::F32) else {
                return;
            };
            let Some(w) = random_tensor(b, "w", &[n, k], dtype) else {
                continue;
            };
            let Ok(y) = Tensor::empty(&b.gpu, "y", &[1, n], DType::F32) else {
                return;
            };
            let flops = 2.0 * (n * k) as f64;
            let bytes = (dtype.size() * n * k + 4 * k + 4 * n) as f64;
            b.run(&name, flops, bytes, Bound::Memory, |rec| {
                gemv::gemv_into(rec, &x, &w, &y, 1.0, 0.0)
            });
        }
    }
}
