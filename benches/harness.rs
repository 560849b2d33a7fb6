//! The benchmark harness shared by every kernel bench.

use boomgpu::gpu::{Gpu, GpuOptions, Recorder};
use boomgpu::Result;

/// Peak rates of known devices (dense, no sparsity), for the "% of peak"
/// column: f32 FMA rate (non-tensor), f16/bf16 tensor-core rate, memory
/// bandwidth. Public spec-sheet figures.
const KNOWN_DEVICES: &[(&str, f64, f64, f64)] = &[
    // name substring, f32 TFLOP/s, tensor f16 TFLOP/s, GB/s
    ("H100 PCIe", 51.2, 756.0, 2000.0),
    ("H100", 66.9, 989.0, 3350.0),
    ("H200", 66.9, 989.0, 4800.0),
    ("A100", 19.5, 312.0, 2039.0),
    ("RTX 4090", 82.6, 165.2, 1008.0),
    ("RTX 3090", 35.6, 71.0, 936.0),
];

/// The memory bandwidth (GB/s) of a device the table knows by name.
pub fn known_gbps(name: &str) -> Option<f64> {
    KNOWN_DEVICES
        .iter()
        .find(|(n, ..)| name.contains(n))
        .map(|&(.., g)| g)
}

pub struct Peak {
    pub f32_tflops: Option<f64>,
    pub tensor_tflops: Option<f64>,
    pub gbps: Option<f64>,
}

/// What limits a kernel: arithmetic (f32 or tensor cores) or memory.
#[derive(Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Bound {
    F32,
    Tensor,
    Memory,
}

pub struct Bench {
    pub gpu: Gpu,
    pub peak: Peak,
    filter: Option<String>,
    reps: Option<usize>,
    rows: usize,
}

/// The GPU a bench runs on; on failure the error is printed and the
/// process exits.
pub fn open_gpu_or_exit() -> Gpu {
    match Gpu::open(&GpuOptions::from_env()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// The number after `name` among the bench's arguments.
pub fn parse_flag(args: &[String], name: &str) -> Option<f64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

impl Bench {
    pub fn from_args() -> Result<Bench> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let gpu = open_gpu_or_exit();
        let known = KNOWN_DEVICES
            .iter()
            .find(|(n, ..)| gpu.info.name.contains(n))
            .map(|&(_, f, t, g)| (f, t, g));
        let peak = Peak {
            f32_tflops: parse_flag(&args, "--peak-tflops").or(known.map(|k| k.0)),
            tensor_tflops: parse_flag(&args, "--peak-tensor-tflops").or(known.map(|k| k.1)),
            gbps: parse_flag(&args, "--peak-gbps").or(known_gbps(&gpu.info.name)),
        };
        let mut skip_next = false;
        let mut filter = None;
        for a in &args {
            if skip_next {
                skip_next = false;
                continue;
            }
            if a.starts_with("--peak") || a == "--reps" {
                skip_next = true;
            } else if !a.starts_with("--") {
                filter = Some(a.clone());
            }
        }
        let reps = parse_flag(&args, "--reps").map(|r| r as usize);
        println!("device: {}", gpu.describe());
        println!(
            "peaks: f32 {} TFLOP/s, tensor {} TFLOP/s, memory {} GB/s{}",
            peak.f32_tflops.map_or("?".into(), |v| format!("{v}")),
            peak.tensor_tflops.map_or("?".into(), |v| format!("{v}")),
            peak.gbps.map_or("?".into(), |v| format!("{v}")),
            if known.is_none() {
                " (unknown device: pass --peak-tflops/--peak-gbps)"
            } else {
                ""
            }
        );
        println!(
            "{:<44} {:>10} {:>11} {:>10} {:>8}",
            "kernel", "time", "TFLOP/s", "GB/s", "% peak"
        );
        Ok(Bench {
            gpu,
            peak,
            filter,
            reps,
            rows: 0,
        })
    }

    /// True on CPU adapters: use small shapes.
    pub fn small(&self) -> bool {
        self.gpu.info.device_type == wgpu::DeviceType::Cpu
    }

    pub fn wants(&self, name: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    }

    /// Time `record` (which records one run of the kernel) with GPU
    /// timestamps: one warm-up submission, then `reps` runs in one timed
    /// submission. `flops` and `bytes` are per run.
    pub fn run(
        &mut self,
        name: &str,
        flops: f64,
        bytes: f64,
        bound: Bound,
        mut record: impl FnMut(&mut Recorder) -> Result<()>,
    ) {
        if !self.wants(name) {
            return;
        }
        let result = (|| -> Result<f64> {
            let mut rec = self.gpu.recorder();
            record(&mut rec)?;
            let t0 = std::time::Instant::now();
            rec.run()?;
            let warm = t0.elapsed().as_secs_f64();
            // Aim for about half a second of GPU work per measurement.
            let reps = self
                .reps
                .unwrap_or_else(|| ((0.5 / warm.max(1e-6)) as usize).clamp(1, 200));
            let mut rec = self.gpu.recorder().timed();
            for _ in 0..reps {
                record(&mut rec)?;
            }
            let t0 = std::time::Instant::now();
            let sub = rec.submit()?;
            sub.wait()?;
            let wall = t0.elapsed().as_secs_f64();
            let secs = sub.gpu_seconds()?.unwrap_or(wall);
            Ok(secs / reps as f64)
        })();
        self.rows += 1;
        match result {
            Ok(t) => {
                let tflops = flops / t / 1e12;
                let gbps = bytes / t / 1e9;
                let frac = match bound {
                    Bound::F32 => self.peak.f32_tflops.map(|p| tflops / p),
                    Bound::Tensor => self.peak.tensor_tflops.map(|p| tflops / p),
                    Bound::Memory => self.peak.gbps.map(|p| gbps / p),
                };
                println!(
                    "{:<44} {:>10} {:>11.4} {:>10.2} {:>8}",
                    name,
                    format_time(t),
                    tflops,
                    gbps,
                    frac.map_or("-".into(), |f| format!("{:.1}%", f * 100.0))
                );
            }
            Err(e) => println!("{name:<44} failed: {e}"),
        }
        self.gpu.trim();
    }

    pub fn finish(self) {
        let m = self.gpu.memory();
        println!(
            "{} benchmarks; peak GPU memory {}",
            self.rows,
            boomgpu::gpu::format_bytes(m.peak_device_bytes)
        );
    }
}

fn format_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}
