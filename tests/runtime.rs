//! The GPU runtime on the test device: allocator accounting and reuse, the
//! recorder, uploads and readback in every dtype, limits, timestamps, and
//! the shader translation check.

mod common;

use boomgpu::gpu::{shaders, DType, Gpu, GpuOptions, Tensor};
use boomgpu::ops::elementwise;
use boomgpu::Error;
use common::{assert_close, gpu, Rng};

#[test]
fn elementwise_end_to_end() {
    let g = gpu();
    let mut rng = Rng::new(1);
    // Awkward sizes: below, at and past a workgroup, and a large odd one.
    for n in [1usize, 7, 255, 256, 257, 100_003] {
        let a = rng.vec(n, 3.0);
        let b = rng.vec(n, 3.0);
        let ta = g.upload_f32("a", &[n], &a).unwrap();
        let tb = g.upload_f32("b", &[n], &b).unwrap();
        let mut rec = g.recorder();
        let sum = elementwise::axpby(&mut rec, 0.5, &ta, -2.0, &tb).unwrap();
        let prod = elementwise::mul(&mut rec, &ta, &tb).unwrap();
        elementwise::scale_inplace(&mut rec, &prod, 3.0).unwrap();
        elementwise::add_inplace(&mut rec, &prod, 2.0, &sum).unwrap();
        rec.run().unwrap();
        let want_sum = elementwise::cpu::axpby(0.5, &a, -2.0, &b);
        let want_prod: Vec<f32> = elementwise::cpu::mul(&a, &b)
            .iter()
            .zip(&want_sum)
            .map(|(p, s)| 3.0 * p + 2.0 * s)
            .collect();
        assert_close("axpby", &g.read_f32(&sum).unwrap(), &want_sum, 1e-6, 1e-6);
        assert_close("chain", &g.read_f32(&prod).unwrap(), &want_prod, 1e-5, 1e-6);
    }
}

#[test]
fn grid_folds_past_workgroup_limit() {
    // 65535 workgroups × 256 is the most one dimension reaches; go past it.
    let g = gpu();
    let n = 65_535 * 256 + 1000;
    let a: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let ta = g.upload_f32("a", &[n], &a).unwrap();
    let mut rec = g.recorder();
    elementwise::scale_inplace(&mut rec, &ta, 2.0).unwrap();
    rec.run().unwrap();
    let got = g.read_f32(&ta).unwrap();
    for i in [0, 1, n / 2, n - 1000, n - 1] {
        assert_eq!(got[i], 2.0 * a[i], "element {i}");
    }
}

#[test]
fn allocator_accounts_and_reuses() {
    // A private device, so other tests' buffers do not disturb the counts.
    let g = Gpu::open(&GpuOptions::from_env()).unwrap();
    let s0 = g.memory();
    assert_eq!(s0.live_bytes, 0);
    let a = g.upload_f32("a", &[1000], &vec![1.0; 1000]).unwrap();
    let s1 = g.memory();
    assert_eq!(s1.live_bytes, 4000);
    assert_eq!(s1.device_bytes, 4000);
    drop(a);
    let s2 = g.memory();
    assert_eq!(s2.live_bytes, 0, "freed tensors are no longer live");
    assert_eq!(
        s2.device_bytes, 4000,
        "freed buffers stay pooled on the device"
    );
    assert_eq!(s2.peak_live_bytes, 4000);

    // A repeated step allocates nothing after its first run.
    let x = g.upload_f32("x", &[4096], &vec![1.0; 4096]).unwrap();
    let y = g.upload_f32("y", &[4096], &vec![2.0; 4096]).unwrap();
    let step = |g: &Gpu| {
        let mut rec = g.recorder();
        let s = elementwise::add(&mut rec, &x, &y).unwrap();
        let p = elementwise::mul(&mut rec, &s, &y).unwrap();
        elementwise::add_inplace(&mut rec, &x, 1e-3, &p).unwrap();
        rec.run().unwrap();
    };
    step(&g);
    step(&g);
    let before = g.memory();
    let bind_groups_before = g.bind_group_count();
    for _ in 0..5 {
        step(&g);
    }
    let after = g.memory();
    assert_eq!(
        after.buffers_created, before.buffers_created,
        "steady-state steps create no buffers"
    );
    assert_eq!(after.device_bytes, before.device_bytes);
    assert_eq!(
        g.bind_group_count(),
        bind_groups_before,
        "bind groups are cached"
    );
    assert!(after.reuses > before.reuses);

    // trim gives pooled memory back.
    drop((x, y));
    let freed = g.trim();
    assert!(freed > 0);
    assert_eq!(g.memory().device_bytes, 0);
}

#[test]
fn budget_refuses_with_tensor_name() {
    let g = Gpu::open(&GpuOptions::from_env()).unwrap();
    g.alloc.set_budget(Some(1 << 20));
    let ok = Tensor::empty(&g, "small", &[1000], DType::F32);
    assert!(ok.is_ok());
    let err = Tensor::empty(&g, "kv_cache.layer3", &[1 << 20], DType::F32).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::OverLimit { .. }));
    assert!(
        msg.contains("kv_cache.layer3") && msg.contains("budget"),
        "{msg}"
    );
}

#[test]
fn binding_limit_is_checked_before_allocating() {
    let g = gpu();
    let limit = g.caps.max_binding();
    let before = g.memory().buffers_created;
    let err = Tensor::empty(
        g,
        "embed_tokens.weight",
        &[(limit / 4 + 1) as usize],
        DType::F32,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("embed_tokens.weight"), "{msg}");
    assert!(msg.contains("max_storage_buffer_binding_size"), "{msg}");
    assert!(
        msg.contains(&limit.to_string()),
        "message gives the limit: {msg}"
    );
    assert_eq!(g.memory().buffers_created, before);
}

#[test]
fn upload_and_read_every_dtype() {
    let g = gpu();
    let vals: Vec<f32> = vec![1.0, -2.5, 3.25, 0.0, 1e-3, 65504.0, -7.0];
    let bf: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let hf: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
    let t = g.upload_bf16("bf", &[7], &bf).unwrap();
    assert_eq!(t.byte_len(), 14);
    let back = g.read_f32(&t).unwrap();
    let want: Vec<f32> = bf.iter().map(|v| v.to_f32()).collect();
    assert_eq!(back, want);
    let t = g.upload_f16("hf", &[7], &hf).unwrap();
    let want: Vec<f32> = hf.iter().map(|v| v.to_f32()).collect();
    assert_eq!(g.read_f32(&t).unwrap(), want);
    let t = g.upload_u32("ids", &[3], &[7, 0, u32::MAX]).unwrap();
    assert_eq!(g.read_u32(&t).unwrap(), vec![7, 0, u32::MAX]);
    assert!(g.read_f32(&t).is_err());
    let z = g.zeros("z", &[5, 3], DType::F32).unwrap();
    assert_eq!(g.read_f32(&z).unwrap(), vec![0.0; 15]);
    // Views and reshapes share storage.
    let t = g
        .upload_f32(
            "m",
            &[4, 64],
            &(0..256).map(|i| i as f32).collect::<Vec<_>>(),
        )
        .unwrap();
    let row = t.view(128, &[64]).unwrap();
    assert_eq!(g.read_f32(&row).unwrap()[0], 128.0);
    assert!(t.reshape(&[3, 64]).is_err());
    assert!(t.view(200, &[64]).is_err());
    assert!(g.upload_f32("bad", &[3], &[1.0, 2.0]).is_err());
}

#[test]
fn one_submission_holds_many_dispatches_and_times_them() {
    let g = gpu();
    let x = g.upload_f32("x", &[1024], &vec![1.0; 1024]).unwrap();
    let mut rec = g.recorder().timed();
    for _ in 0..100 {
        elementwise::scale_inplace(&mut rec, &x, 1.01).unwrap();
    }
    assert_eq!(rec.len(), 100);
    let sub = rec.submit().unwrap();
    assert_eq!(sub.dispatches, 100);
    sub.wait().unwrap();
    let got = g.read_f32(&x).unwrap();
    assert!((got[0] - 1.01f32.powi(100)).abs() < 1e-3, "{}", got[0]);
    if g.caps.timestamps {
        let secs = sub.gpu_seconds().unwrap().expect("timed batch has a time");
        assert!(secs > 0.0 && secs < 60.0, "{secs}");
    }
}

#[test]
fn missing_binding_is_an_error_not_a_crash() {
    let g = gpu();
    let k = g.kernel("elementwise", "mul").unwrap();
    let a = g.upload_f32("a", &[4], &[1.0; 4]).unwrap();
    let mut rec = g.recorder();
    let err = rec
        .dispatch(&k, &[("a", &a)], &[0u8; 16], [1, 1, 1])
        .unwrap_err();
    assert!(err.to_string().contains("'b'"), "{err}");
    assert!(g.kernel("elementwise", "no_such_entry").is_err());
    assert!(g.kernel("no_such_shader", "main").is_err());
}

#[test]
fn every_shader_validates_and_translates_to_all_backends() {
    let mut n = 0;
    for name in shaders::shader_names() {
        let src = shaders::source(name).unwrap();
        let t = shaders::translate_all(name, &src).unwrap_or_else(|e| panic!("{e}"));
        let targets = shaders::targets_of(&src);
        assert!(!t.entry_points.is_empty());
        assert_eq!(t.spv_words > 0, targets.spv, "{name}: SPIR-V");
        assert_eq!(t.msl_bytes > 0, targets.msl, "{name}: MSL");
        assert_eq!(t.hlsl_bytes > 0, targets.hlsl, "{name}: HLSL");
        assert_eq!(t.glsl_bytes > 0, targets.glsl, "{name}: GLSL");
        // And the device compiles every entry point, where it offers what
        // the shader requires (cooperative matrices, say).
        let unmet: Vec<String> = shaders::requires_of(&src)
            .into_iter()
            .filter(|r| !gpu().caps.meets(r))
            .collect();
        if !unmet.is_empty() {
            let e = match gpu().kernel(name, &t.entry_points[0]) {
                Ok(_) => panic!("{name}: compiled without {unmet:?}"),
                Err(e) => e,
            };
            assert!(e.to_string().contains(&unmet[0]), "{name}: {e}");
            n += 1;
            continue;
        }
        for ep in &t.entry_points {
            gpu().kernel(name, ep).unwrap_or_else(|e| panic!("{e}"));
        }
        n += 1;
    }
    assert!(n >= 1, "no shaders found");
}

#[test]
fn translation_check_catches_broken_shaders() {
    // A type error: f32 assigned from a u32 expression.
    let type_error = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
        @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { x[g.x] = g.x; }";
    let e = shaders::translate_all("broken", type_error).unwrap_err();
    assert!(e.to_string().contains("broken"), "{e}");
    // A syntax error.
    let syntax = "@compute @workgroup_size(64) fn main( { }";
    assert!(shaders::translate_all("broken2", syntax).is_err());
    // Valid WGSL without any entry point is not a kernel.
    assert!(shaders::translate_all("empty", "fn f() -> f32 { return 1.0; }").is_err());
    // Something naga validates but which breaks the rules of the back ends:
    // a workgroup bigger than any device allows is caught by validation.
    let good = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
        @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { x[g.x] = f32(g.x); }";
    shaders::translate_all("good", good).unwrap();
}

#[test]
fn reads_past_the_staging_size_come_back_whole() {
    let g = Gpu::open(&GpuOptions::from_env()).unwrap();
    let chunk = boomgpu::gpu::tensor::READBACK_CHUNK as usize / 4;
    // Two and a bit staging buffers, and a view that starts inside one.
    let n = 2 * chunk + 777;
    let vals: Vec<f32> = (0..n).map(|i| (i % 9973) as f32 - 17.5).collect();
    let t = g.upload_f32("big", &[n], &vals).unwrap();
    assert_eq!(g.read_f32(&t).unwrap(), vals);
    let v = t.view(chunk - 5, &[chunk + 100]).unwrap();
    assert_eq!(g.read_f32(&v).unwrap(), &vals[chunk - 5..2 * chunk + 95]);
    // The staging buffer stays bounded: nothing of the tensor's size.
    let readback_bytes = g.memory().device_bytes - g.memory().live_bytes;
    assert!(
        readback_bytes <= boomgpu::gpu::tensor::READBACK_CHUNK * 2,
        "{readback_bytes}"
    );
}

#[test]
fn tags_split_live_bytes_and_the_peak() {
    use boomgpu::gpu::MemoryTag;
    let g = Gpu::open(&GpuOptions::from_env()).unwrap();
    let weights = MemoryTag(MemoryTag::FIRST_FREE);
    let work = MemoryTag(MemoryTag::FIRST_FREE + 1);
    let w = {
        let _t = g.alloc.tagged(weights);
        Tensor::empty(&g, "w", &[1000], DType::F32).unwrap()
    };
    let a = {
        let _t = g.alloc.tagged(work);
        let a = Tensor::empty(&g, "a", &[3000], DType::F32).unwrap();
        // Nested scopes restore the outer tag.
        {
            let _u = g.alloc.tagged(weights);
        }
        let b = Tensor::empty(&g, "b", &[500], DType::F32).unwrap();
        drop(b);
        a
    };
    let untagged = Tensor::empty(&g, "u", &[10], DType::F32).unwrap();
    let m = g.memory();
    assert_eq!(m.live.by_tag[weights.0 as usize], 4000);
    assert_eq!(m.live.by_tag[work.0 as usize], 12000);
    assert_eq!(m.live.by_tag[MemoryTag::UNTAGGED.0 as usize], 40);
    // The peak came with a, b and w live (b is gone now).
    assert_eq!(m.at_peak.by_tag[work.0 as usize], 14000);
    let tagged: u64 = m.live.by_tag.iter().sum();
    assert_eq!(tagged + m.live.rounding, m.live_bytes);
    drop((w, a, untagged));
    let m = g.memory();
    assert_eq!(m.live.by_tag.iter().sum::<u64>(), 0);
    assert_eq!(m.live_bytes, 0);
}

#[test]
fn a_dry_run_counts_what_a_real_run_allocates() {
    let program = |g: &Gpu| {
        let x = g.upload_f32("x", &[5000], &vec![1.5; 5000]).unwrap();
        let y = g.zeros("y", &[5000], DType::F32).unwrap();
        for _ in 0..3 {
            let mut rec = g.recorder();
            let z = elementwise::add(&mut rec, &x, &y).unwrap();
            let w = elementwise::add(&mut rec, &z, &x).unwrap();
            rec.run().unwrap();
            let back = g.read_f32(&w).unwrap();
            assert_eq!(back.len(), 5000);
        }
        g.memory()
    };
    let real = program(&Gpu::open(&GpuOptions::from_env()).unwrap());
    let dry_gpu = Gpu::open_dry(&GpuOptions::from_env()).unwrap();
    assert!(dry_gpu.is_dry());
    let dry = program(&dry_gpu);
    assert_eq!(dry.peak_device_bytes, real.peak_device_bytes);
    assert_eq!(dry.peak_live_bytes, real.peak_live_bytes);
    assert_eq!(dry.buffers_created, real.buffers_created);
    // Reads on a dry run are zeros.
    let t = dry_gpu
        .upload_f32("t", &[4], &[1.0, 2.0, 3.0, 4.0])
        .unwrap();
    assert_eq!(dry_gpu.read_f32(&t).unwrap(), vec![0.0; 4]);
}
