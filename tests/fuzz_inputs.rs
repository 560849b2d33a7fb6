//! Bad input never gives a wrong number or a crash: a deterministic, seeded
//! mutation suite over the tiny fixture folders. Every mutated copy of
//! config.json, the safetensors checkpoint (single and sharded), the
//! tokenizer files, student_config.json and a GGUF file goes through the
//! same parsers and loaders the commands use, in-process and without a GPU;
//! each case must end as a clear `Err` or as success with sane values —
//! never a panic, a hang or a NaN. A few cases (the ones the fuzz of
//! `boomgpu eval --json` found) also run through the GPU eval path.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boomgpu::boomerang::StudentConfig;
use boomgpu::gpu::DType;
use boomgpu::model::gguf::Gguf;
use boomgpu::model::tokenizer::Tokenizer;
use boomgpu::model::weights::{write_safetensors, Checkpoint};
use boomgpu::model::ModelConfig;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("boomgpu-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of a fixture folder (weights and side files).
fn copy_fixture(name: &str, to: &str) -> PathBuf {
    let dir = scratch(to);
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir
}

/// splitmix64: the whole suite is a function of its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A value a case found wrong although nothing refused it.
const BAD: &str = "ACCEPTED BUT WRONG: ";

#[derive(Default)]
struct Tally {
    cases: usize,
    refused: usize,
    accepted: usize,
    panics: usize,
    failures: Vec<String>,
    per_kind: BTreeMap<&'static str, (usize, usize)>,
}

impl Tally {
    /// Run one case; `f` returns Ok (accepted), Err (refused) or an Err
    /// starting with `BAD` (accepted a wrong value: a failure).
    fn case(&mut self, kind: &'static str, label: &str, f: impl FnOnce() -> Result<(), String>) {
        self.cases += 1;
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(f));
        if t0.elapsed() > Duration::from_secs(10) {
            self.failures
                .push(format!("{kind} {label}: took {:?}", t0.elapsed()));
        }
        let k = self.per_kind.entry(kind).or_default();
        match r {
            Ok(Ok(())) => {
                self.accepted += 1;
                k.0 += 1;
            }
            Ok(Err(m)) if m.starts_with(BAD) => self.failures.push(format!("{kind} {label}: {m}")),
            Ok(Err(m)) if m.trim().is_empty() => {
                self.failures.push(format!("{kind} {label}: empty error"))
            }
            Ok(Err(_)) => {
                self.refused += 1;
                k.1 += 1;
            }
            Err(p) => {
                self.panics += 1;
                let m = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.failures.push(format!("{kind} {label}: PANIC {m}"));
            }
        }
    }
}

/// What the commands do with a folder before the GPU: parse config.json,
/// open and validate the checkpoint, check it against the config, load the
/// tokenizer and the student's plan. Accepted values must be sane.
fn load_folder(dir: &Path, teacher_layers: Option<usize>) -> Result<(), String> {
    let s = |e: boomgpu::Error| e.to_string();
    let cfg = ModelConfig::from_file(&dir.join("config.json")).map_err(s)?;
    let sane = cfg.norm_eps > 0.0
        && cfg.norm_eps < 1.0
        && cfg.rope_theta.is_finite()
        && cfg.rope_theta > 0.0
        && cfg.num_layers >= 1
        && cfg.num_heads >= 1
        && cfg.num_heads % cfg.num_kv_heads == 0
        && cfg.intermediate_size >= 1
        && cfg.rotary_dim() >= 2
        && cfg.rotary_dim() <= cfg.head_dim;
    if !sane {
        return Err(format!("{BAD}config {cfg:?}"));
    }
    let ck = Checkpoint::open(dir).map_err(s)?;
    for (name, t) in &ck.tensors {
        let elems: usize = t.shape.iter().product();
        let bytes = ck.bytes(name).map(<[u8]>::len).unwrap_or(usize::MAX);
        if bytes != elems * t.dtype.bitsize() / 8 {
            return Err(format!("{BAD}tensor {name}: {bytes} bytes for {t:?}"));
        }
    }
    ck.check(&cfg).map_err(s)?;
    if ck.layer_count(&cfg) != cfg.num_layers {
        return Err(format!("{BAD}layer count"));
    }
    if dir.join("tokenizer.json").exists() {
        let tok = Tokenizer::from_dir(dir, &cfg.eos_token_ids, cfg.bos_token_id).map_err(s)?;
        tok.check_vocab(dir, cfg.vocab_size).map_err(s)?;
        let ids = tok
            .encode("Hello, world: 12 boomerangs.", false)
            .map_err(s)?;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
            return Err(format!(
                "{BAD}token id {bad} beyond vocab {}",
                cfg.vocab_size
            ));
        }
    }
    if let Some(t) = teacher_layers {
        StudentConfig::load_plan(dir, t, cfg.num_layers, None).map_err(s)?;
    }
    Ok(())
}

/// The replacement values every JSON key gets (`None`: the key removed).
fn replacements() -> Vec<(&'static str, Option<Value>)> {
    vec![
        ("0", Some(json!(0))),
        ("-1", Some(json!(-1))),
        ("2^31", Some(json!(2147483648u64))),
        ("2^63", Some(json!(9223372036854775808u64))),
        ("1e308", Some(json!(1e308))),
        ("-1e308", Some(json!(-1e308))),
        ("string", Some(json!("boom"))),
        ("null", Some(Value::Null)),
        ("list", Some(json!([1, "a"]))),
        ("object", Some(json!({"a": 1}))),
        ("bool", Some(json!(true))),
        ("0.5", Some(json!(0.5))),
        ("removed", None),
    ]
}

/// Every key path of a JSON object, one level of nesting included
/// (`rope_parameters.rope_theta`).
fn key_paths(v: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            out.push(vec![k.clone()]);
            if let Some(inner) = x.as_object() {
                for k2 in inner.keys() {
                    out.push(vec![k.clone(), k2.clone()]);
                }
            }
        }
    }
    out
}

fn replaced(v: &Value, path: &[String], with: &Option<Value>) -> Value {
    let mut v = v.clone();
    let mut cur = &mut v;
    for k in &path[..path.len() - 1] {
        cur = cur.get_mut(k).unwrap();
    }
    let obj = cur.as_object_mut().unwrap();
    let last = &path[path.len() - 1];
    match with {
        Some(x) => {
            obj.insert(last.clone(), x.clone());
        }
        None => {
            obj.remove(last);
        }
    }
    v
}

/// Mutate one JSON file of `dir` (every key × every value, and cuts), run
/// `check` after each, and put the file back.
fn fuzz_json(
    t: &mut Tally,
    kind: &'static str,
    dir: &Path,
    file: &str,
    max_keys: usize,
    rng: &mut Rng,
    check: &dyn Fn() -> Result<(), String>,
) {
    let path = dir.join(file);
    let original = std::fs::read(&path).unwrap();
    let v: Value = serde_json::from_slice(&original).unwrap();
    let mut paths = key_paths(&v);
    // Large files (tokenizer.json): a seeded subset of the keys.
    while paths.len() > max_keys {
        paths.remove(rng.below(paths.len()));
    }
    for p in &paths {
        for (label, with) in replacements() {
            std::fs::write(&path, replaced(&v, p, &with).to_string()).unwrap();
            t.case(kind, &format!("{file} {} = {label}", p.join(".")), check);
        }
    }
    for i in 0..8 {
        let cut = original.len() * i / 8 + rng.below(original.len() / 8);
        std::fs::write(&path, &original[..cut]).unwrap();
        t.case(kind, &format!("{file} cut at {cut}"), check);
    }
    std::fs::write(&path, &original).unwrap();
}

fn header_len(b: &[u8]) -> usize {
    u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
}

/// Byte-level and structural mutations of one safetensors file.
fn fuzz_safetensors(
    t: &mut Tally,
    dir: &Path,
    file: &str,
    rng: &mut Rng,
    check: &dyn Fn() -> Result<(), String>,
) {
    let path = dir.join(file);
    let original = std::fs::read(&path).unwrap();
    let n = header_len(&original);
    let len = original.len() as u64;
    let run = |t: &mut Tally, label: String, bytes: Vec<u8>| {
        std::fs::write(&path, bytes).unwrap();
        t.case("safetensors", &format!("{file} {label}"), check);
    };
    // The header length field: off by a little, by a lot, past the file.
    let mut lens: Vec<u64> = (1..=9u64)
        .flat_map(|d| [n as u64 - d, n as u64 + d])
        .collect();
    lens.extend([
        0,
        1,
        2,
        len - 8,
        len,
        len + 1,
        100_000_001,
        1 << 63,
        u64::MAX,
    ]);
    for l in lens {
        let mut b = original.clone();
        b[..8].copy_from_slice(&l.to_le_bytes());
        run(t, format!("header length {l} (was {n})"), b);
    }
    for i in 0..24 {
        let cut = rng.below(if i < 12 { n + 16 } else { original.len() });
        run(t, format!("cut at {cut}"), original[..cut].to_vec());
    }
    for _ in 0..120 {
        let pos = 8 + rng.below(n);
        let mut b = original.clone();
        b[pos] = rng.next() as u8;
        run(t, format!("header byte {pos} changed"), b);
    }
    for _ in 0..8 {
        let pos = 8 + n + rng.below(original.len() - 8 - n);
        let mut b = original.clone();
        b[pos] ^= 1 << rng.below(8);
        run(t, format!("data byte {pos} flipped"), b);
    }
    let mut extra = original.clone();
    extra.extend_from_slice(&[0; 4]);
    run(t, "4 extra bytes at the end".into(), extra);
    // Structural: one tensor's offsets, shape or dtype changed, the header
    // re-serialised with a consistent length.
    let header: Value = serde_json::from_slice(&original[8..8 + n]).unwrap();
    let names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let edits: Vec<(&str, HeaderEdit)> = vec![
        ("start+1", Box::new(|e| bump(e, 0, 1))),
        ("start-1", Box::new(|e| bump(e, 0, -1))),
        ("end+1", Box::new(|e| bump(e, 1, 1))),
        ("end-1", Box::new(|e| bump(e, 1, -1))),
        ("end+4", Box::new(|e| bump(e, 1, 4))),
        (
            "shape doubled",
            Box::new(|e| e["shape"][0] = json!(e["shape"][0].as_u64().unwrap() * 2)),
        ),
        (
            "shape 2^62",
            Box::new(|e| e["shape"][0] = json!(1u64 << 62)),
        ),
        ("shape []", Box::new(|e| e["shape"] = json!([]))),
        ("shape -1", Box::new(|e| e["shape"][0] = json!(-1))),
        ("dtype F16", Box::new(|e| e["dtype"] = json!("F16"))),
        ("dtype I8", Box::new(|e| e["dtype"] = json!("I8"))),
        ("dtype F64", Box::new(|e| e["dtype"] = json!("F64"))),
        ("dtype XX", Box::new(|e| e["dtype"] = json!("XX"))),
        (
            "offsets [0,0]",
            Box::new(|e| e["data_offsets"] = json!([0, 0])),
        ),
        (
            "offsets null",
            Box::new(|e| e["data_offsets"] = Value::Null),
        ),
        (
            "no shape",
            Box::new(|e| {
                e.as_object_mut().unwrap().remove("shape");
            }),
        ),
    ];
    for (label, edit) in &edits {
        for _ in 0..2 {
            let name = &names[rng.below(names.len())];
            let mut h = header.clone();
            edit(&mut h[name.as_str()]);
            let text = h.to_string();
            let mut b = (text.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(text.as_bytes());
            b.extend_from_slice(&original[8 + n..]);
            run(t, format!("tensor {name}: {label}"), b);
        }
    }
    std::fs::write(&path, &original).unwrap();
}

/// A change to one tensor's header entry.
type HeaderEdit = Box<dyn Fn(&mut Value)>;

/// name → (dtype, shape, bytes), as write_safetensors takes them.
type Tensors = BTreeMap<String, (DType, Vec<usize>, Vec<u8>)>;

fn bump(e: &mut Value, i: usize, d: i64) {
    let x = e["data_offsets"][i].as_i64().unwrap() + d;
    e["data_offsets"][i] = json!(x);
}

/// The qwen3 fixture as two shards with an index, as the hub stores them.
fn sharded_qwen3() -> PathBuf {
    let src = fixture("qwen3");
    let dir = copy_fixture("qwen3", "sharded");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let ck = Checkpoint::open(&src).unwrap();
    let mut shards: [Tensors; 2] = Default::default();
    let mut map = serde_json::Map::new();
    for (i, (name, e)) in ck.tensors.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        let bytes = ck.bytes(name).unwrap().to_vec();
        shards[i % 2].insert(name.clone(), (DType::F32, e.shape.clone(), bytes));
        map.insert(name.clone(), Value::String(file));
    }
    for (i, s) in shards.iter().enumerate() {
        let f = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        write_safetensors(&f, s, None).unwrap();
    }
    let index = json!({ "metadata": {"total_size": 1}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// GGUF: a small llama file written here (the format as tests/gguf.rs writes it)
// ---------------------------------------------------------------------------

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_kv_u32(b: &mut Vec<u8>, k: &str, v: u32) {
    put_str(b, k);
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_kv_f32(b: &mut Vec<u8>, k: &str, v: f32) {
    put_str(b, k);
    b.extend_from_slice(&6u32.to_le_bytes());
    b.extend_from_slice(&v.to_le_bytes());
}

/// A llama GGUF (v3, alignment 32) with a few metadata keys, a string array
/// and f32 / Q8_0 tensors.
fn small_gguf() -> Vec<u8> {
    let mut kv = Vec::new();
    let mut n_kv = 0u64;
    put_str(&mut kv, "general.architecture");
    kv.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut kv, "llama");
    n_kv += 1;
    for (k, v) in [
        ("llama.block_count", 1),
        ("llama.embedding_length", 32),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 64),
    ] {
        put_kv_u32(&mut kv, k, v);
        n_kv += 1;
    }
    put_kv_f32(&mut kv, "llama.attention.layer_norm_rms_epsilon", 1e-5);
    put_kv_f32(&mut kv, "llama.rope.freq_base", 10000.0);
    n_kv += 2;
    put_str(&mut kv, "tokenizer.ggml.tokens");
    kv.extend_from_slice(&9u32.to_le_bytes());
    kv.extend_from_slice(&8u32.to_le_bytes());
    kv.extend_from_slice(&4u64.to_le_bytes());
    for s in ["<s>", "</s>", "a", "b"] {
        put_str(&mut kv, s);
    }
    n_kv += 1;
    // (name, ggml dims, type, bytes)
    let mut rng = Rng(3);
    let f32s = |n: usize, rng: &mut Rng| -> Vec<u8> {
        (0..n)
            .flat_map(|_| ((rng.below(256) as f32 - 128.0) / 64.0).to_le_bytes())
            .collect()
    };
    let q8 = |blocks: usize, rng: &mut Rng| -> Vec<u8> {
        let mut b = Vec::new();
        for _ in 0..blocks {
            b.extend_from_slice(&half::f16::from_f32(1.0 / 128.0).to_le_bytes());
            b.extend((0..32).map(|_| rng.below(255) as u8));
        }
        b
    };
    let tensors: Vec<(&str, Vec<u64>, u32, Vec<u8>)> = vec![
        ("token_embd.weight", vec![32, 4], 0, f32s(128, &mut rng)),
        ("blk.0.attn_q.weight", vec![32, 32], 8, q8(32, &mut rng)),
        ("output_norm.weight", vec![32], 0, f32s(32, &mut rng)),
    ];
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(&kv);
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, dims, ty, data) in &tensors {
        put_str(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + data.len() as u64).div_ceil(32) * 32;
    }
    let start = (b.len() as u64).div_ceil(32) * 32;
    b.resize(start as usize, 0);
    for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
        b.resize((start + off) as usize, 0);
        b.extend_from_slice(data);
    }
    b
}

/// Parse a GGUF, dequantise every supported tensor (values must be finite
/// where the file's scales are), read the llama parameters.
fn parse_gguf(bytes: Vec<u8>) -> Result<(), String> {
    let g = Gguf::from_bytes(bytes, "fuzz.gguf").map_err(|e| e.to_string())?;
    for t in g.tensors.clone() {
        if boomgpu::model::gguf::is_supported_type(t.ggml_type) {
            g.tensor_f32(&t).map_err(|e| e.to_string())?;
        }
    }
    let _ = g.llama_params().map_err(|e| e.to_string())?;
    Ok(())
}

fn fuzz_gguf(t: &mut Tally, rng: &mut Rng) {
    let original = small_gguf();
    t.case("gguf", "unchanged", || {
        Gguf::from_bytes(original.clone(), "fuzz.gguf")
            .map(|_| ())
            .map_err(|e| format!("{BAD}{e}"))
    });
    let header = Gguf::from_bytes(original.clone(), "x").unwrap().data_start;
    for _ in 0..200 {
        let pos = rng.below(header);
        let mut b = original.clone();
        b[pos] = match rng.below(4) {
            0 => 0,
            1 => 0xff,
            2 => b[pos] ^ (1 << rng.below(8)),
            _ => rng.next() as u8,
        };
        t.case("gguf", &format!("header byte {pos}"), || parse_gguf(b));
    }
    for _ in 0..30 {
        let pos = header + rng.below(original.len() - header);
        let mut b = original.clone();
        b[pos] = rng.next() as u8;
        t.case("gguf", &format!("data byte {pos}"), || parse_gguf(b));
    }
    for _ in 0..40 {
        let cut = rng.below(original.len());
        let b = original[..cut].to_vec();
        t.case("gguf", &format!("cut at {cut}"), || parse_gguf(b));
    }
}

/// The whole in-process suite; returns the tally.
fn run_suite(seed: u64) -> Tally {
    let mut t = Tally::default();
    let mut rng = Rng(seed);
    // Unchanged fixtures must load (the suite tests what it thinks it does).
    for name in ["qwen3", "llama-tied", "neox", "llama-rope3"] {
        let d = fixture(name);
        t.case("baseline", name, || {
            load_folder(&d, None).map_err(|e| format!("{BAD}{e}"))
        });
    }
    for name in ["qwen3", "llama-tied", "neox", "llama-rope3"] {
        let dir = copy_fixture(name, name);
        let check = || load_folder(&dir, None);
        fuzz_json(
            &mut t,
            "config.json",
            &dir,
            "config.json",
            200,
            &mut rng,
            &check,
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let dir = copy_fixture("qwen3", "qwen3-files");
    let check = || load_folder(&dir, None);
    fuzz_safetensors(&mut t, &dir, "model.safetensors", &mut rng, &check);
    fuzz_json(
        &mut t,
        "tokenizer",
        &dir,
        "tokenizer.json",
        40,
        &mut rng,
        &check,
    );
    fuzz_json(
        &mut t,
        "tokenizer",
        &dir,
        "tokenizer_config.json",
        50,
        &mut rng,
        &check,
    );
    // generation_config.json is read by chat only; check it stays JSON the
    // loader tolerates (the folder still loads) under every mutation.
    fuzz_json(
        &mut t,
        "generation",
        &dir,
        "generation_config.json",
        50,
        &mut rng,
        &check,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let dir = copy_fixture("neox", "neox-files");
    let check = || load_folder(&dir, None);
    fuzz_safetensors(&mut t, &dir, "model.safetensors", &mut rng, &check);
    std::fs::remove_dir_all(&dir).unwrap();
    let dir = copy_fixture("qwen3-student", "student");
    let check = || load_folder(&dir, Some(6));
    t.case("baseline", "qwen3-student", || {
        check().map_err(|e| format!("{BAD}{e}"))
    });
    fuzz_json(
        &mut t,
        "student_config",
        &dir,
        "student_config.json",
        50,
        &mut rng,
        &check,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let dir = sharded_qwen3();
    let check = || load_folder(&dir, None);
    t.case("baseline", "sharded", || {
        check().map_err(|e| format!("{BAD}{e}"))
    });
    fuzz_json(
        &mut t,
        "sharded",
        &dir,
        "model.safetensors.index.json",
        12,
        &mut rng,
        &check,
    );
    fuzz_safetensors(
        &mut t,
        &dir,
        "model-00002-of-00002.safetensors",
        &mut rng,
        &check,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    fuzz_gguf(&mut t, &mut rng);
    t
}

#[test]
fn mutated_inputs_are_refused_or_load_sanely() {
    let t0 = Instant::now();
    // A hang fails the test instead of stalling the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_suite(0xB00E_5EED));
    });
    let t = rx
        .recv_timeout(Duration::from_secs(170))
        .expect("the mutation suite did not finish in 170 s (a hang?)");
    eprintln!(
        "fuzz: {} cases: {} refused, {} accepted, {} panics, {} failures in {:.1} s",
        t.cases,
        t.refused,
        t.accepted,
        t.panics,
        t.failures.len(),
        t0.elapsed().as_secs_f64()
    );
    for (k, (acc, refu)) in &t.per_kind {
        eprintln!("  {k:<16} {acc:>5} accepted {refu:>5} refused");
    }
    assert!(
        t.failures.is_empty(),
        "{} of {} cases failed:\n{}",
        t.failures.len(),
        t.cases,
        t.failures.join("\n")
    );
    assert!(t.cases >= 1000, "only {} cases", t.cases);
}

// ---------------------------------------------------------------------------
// The failures the fuzz of `boomgpu eval --json` found, one test each
// ---------------------------------------------------------------------------

fn with_config(name: &str, key: &str, value: Value) -> PathBuf {
    let dir = copy_fixture("qwen3", name);
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&path, v.to_string()).unwrap();
    dir
}

fn with_header_len(name: &str, fixture_name: &str, f: impl Fn(u64) -> u64) -> PathBuf {
    let dir = copy_fixture(fixture_name, name);
    let path = dir.join("model.safetensors");
    let mut b = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
    b[..8].copy_from_slice(&f(n).to_le_bytes());
    std::fs::write(&path, b).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    load_folder(dir, None).expect_err("accepted")
}

#[test]
fn header_length_one_byte_short_is_refused() {
    for fx in ["qwen3", "llama-tied", "neox", "llama-rope3"] {
        let dir = with_header_len(&format!("short-{fx}"), fx, |n| n - 1);
        let e = load_err(&dir);
        assert!(
            e.contains("model.safetensors") && e.contains("end of the file"),
            "{fx}: {e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn header_length_past_the_file_says_how_much_follows() {
    let dir = with_header_len("long", "qwen3", |_| 386_312);
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors")
            && e.contains("says 386312 bytes but only 386304 bytes follow it"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn huge_layer_counts_are_refused_before_allocating() {
    for n in [json!(2147483648u64), json!(9223372036854775808u64)] {
        let dir = with_config("layers", "num_hidden_layers", n.clone());
        let e = load_err(&dir);
        assert!(
            e.contains("'num_hidden_layers'")
                && e.contains(&n.to_string())
                && e.contains("1 to 4096"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Within bounds but not what the checkpoint holds.
    let dir = with_config("layers7", "num_hidden_layers", json!(7));
    let e = load_err(&dir);
    assert!(
        e.contains("'num_hidden_layers'") && e.contains("holds 6"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_positive_eps_is_refused() {
    for eps in [json!(-1), json!(-1e308), json!(0), json!(1e308)] {
        let dir = with_config("eps", "rms_norm_eps", eps.clone());
        let e = load_err(&dir);
        assert!(
            e.contains("'rms_norm_eps'") && e.contains("0 < eps < 1"),
            "{eps}: {e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn eval_json(dir: &Path) -> (bool, Value, String) {
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text.txt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_boomgpu"))
        .args(["eval", "--json", "--seq-len", "32", "--model"])
        .arg(dir)
        .arg("--data")
        .arg(&text)
        .env("BOOMGPU_MATMUL", "portable")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.success(), v, stderr)
}

/// The GPU path: a good model gives a finite perplexity; the inputs the
/// fuzz found, and weights that overflow to NaN, give an `"error"` object
/// and a failing exit status.
#[test]
fn eval_json_reports_errors_not_null_perplexities() {
    let (ok, v, err) = eval_json(&fixture("qwen3"));
    assert!(ok, "{err}");
    assert!(v["perplexity"].as_f64().is_some_and(f64::is_finite), "{v}");

    let short = with_header_len("eval-short", "qwen3", |n| n - 1);
    let eps = with_config("eval-eps", "rms_norm_eps", json!(-1));
    let nan = copy_fixture("qwen3", "eval-nan");
    // The final norm's weights set to NaN: the checkpoint is well-formed,
    // the numbers are not.
    let ck = Checkpoint::open(&nan).unwrap();
    let e = ck.tensors["model.norm.weight"].clone();
    drop(ck);
    let mut b = std::fs::read(nan.join("model.safetensors")).unwrap();
    for c in b[e.start..e.end].chunks_exact_mut(4) {
        c.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(nan.join("model.safetensors"), b).unwrap();
    for (dir, want) in [
        (&short, "end of the file"),
        (&eps, "rms_norm_eps"),
        (&nan, "not a finite number"),
    ] {
        let (ok, v, err) = eval_json(dir);
        assert!(!ok, "{} was accepted: {v}", dir.display());
        let m = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(m.contains(want), "{m}\n{err}");
        assert!(v.get("perplexity").is_none(), "{v}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A teacher whose numbers overflow: distill stops at the first step,
/// names it, and writes no checkpoint.
#[test]
fn distill_stops_on_a_non_finite_loss_before_any_checkpoint() {
    let teacher = copy_fixture("qwen3", "distill-nan");
    let ck = Checkpoint::open(&teacher).unwrap();
    let e = ck.tensors["model.norm.weight"].clone();
    drop(ck);
    let path = teacher.join("model.safetensors");
    let mut b = std::fs::read(&path).unwrap();
    for c in b[e.start..e.end].chunks_exact_mut(4) {
        c.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&path, b).unwrap();
    let out = scratch("distill-nan-out").join("student");
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text.txt");
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_boomgpu"))
        .args(["distill", "--quiet", "--teacher"])
        .arg(&teacher)
        .arg("--student")
        .arg(fixture("qwen3-student"))
        .arg("--data")
        .arg(&text)
        .arg("--out")
        .arg(&out)
        .args([
            "--steps",
            "3",
            "--seq-len",
            "16",
            "--batch",
            "2",
            "--save-every",
            "1",
        ])
        .env("BOOMGPU_MATMUL", "portable")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{stderr}");
    assert!(
        stderr.contains("step 1:") && stderr.contains("not a finite number"),
        "{stderr}"
    );
    assert!(!out.join("checkpoint").exists());
    assert!(!out.join("model.safetensors").exists());
    std::fs::remove_dir_all(&teacher).unwrap();
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

// ---------------------------------------------------------------------------
// Generation: a row of logits that is not finite ends `chat` with an error
// ---------------------------------------------------------------------------

/// A copy of the qwen3 fixture with the values of `tensor` replaced by
/// `f(index, value)`.
fn with_weights(to: &str, tensor: &str, f: impl Fn(usize, f32) -> f32) -> PathBuf {
    let dir = copy_fixture("qwen3", to);
    let ck = Checkpoint::open(&dir).unwrap();
    let e = ck.tensors[tensor].clone();
    drop(ck);
    let path = dir.join("model.safetensors");
    let mut b = std::fs::read(&path).unwrap();
    for (i, c) in b[e.start..e.end].chunks_exact_mut(4).enumerate() {
        let v = f32::from_le_bytes(c.try_into().unwrap());
        c.copy_from_slice(&f(i, v).to_le_bytes());
    }
    std::fs::write(&path, b).unwrap();
    dir
}

/// `boomgpu chat --prompt PROMPT --max-tokens N` with `extra` flags:
/// (success, stdout, stderr).
fn chat(dir: &Path, prompt: &str, max_tokens: usize, extra: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_boomgpu"))
        .arg("chat")
        .arg("--model")
        .arg(dir)
        .args(["--prompt", prompt, "--max-tokens", &max_tokens.to_string()])
        .args(extra)
        .env("BOOMGPU_MATMUL", "portable")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const GREEDY: &[&str] = &["--temperature", "0"];
const SAMPLED: &[&str] = &["--temperature", "0.8", "--top-k", "0", "--seed", "7"];

/// Final norm weights of NaN, or so large that the logits overflow: the
/// prompt pass already has non-finite logits, so `chat` fails at step 1
/// and prints no token, greedy or sampled.
#[test]
fn chat_refuses_non_finite_logits_at_the_prompt_pass() {
    let good = fixture("qwen3");
    for flags in [GREEDY, SAMPLED] {
        let (ok, _, err) = chat(&good, "x", 3, flags);
        assert!(ok, "{flags:?}: the good model failed: {err}");
    }
    let nan = with_weights("chat-nan", "model.norm.weight", |_, _| f32::NAN);
    let huge = with_weights("chat-huge", "model.norm.weight", |_, _| f32::MAX);
    for dir in [&nan, &huge] {
        for flags in [GREEDY, SAMPLED] {
            let (ok, out, err) = chat(dir, "x", 3, flags);
            let case = format!("{} {flags:?}", dir.display());
            assert!(!ok, "{case}: accepted, printed {out:?}\n{err}");
            assert!(out.is_empty(), "{case}: printed {out:?}");
            assert!(
                err.contains("generation step 1 (the prompt pass")
                    && err.contains("not a finite number"),
                "{case}: {err}"
            );
            assert!(!err.contains("panicked"), "{case}: {err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Only the prompt's tokens have finite embeddings: the prompt pass is
/// finite, and the first generated token that is not in the prompt makes
/// the next step's logits NaN. `chat` stops there and names the step; the
/// tokens before it were real.
#[test]
fn chat_refuses_non_finite_logits_at_a_later_step() {
    let src = fixture("qwen3");
    let cfg = ModelConfig::from_file(&src.join("config.json")).unwrap();
    let tok = Tokenizer::from_dir(&src, &cfg.eos_token_ids, cfg.bos_token_id).unwrap();
    let prompt = "The river";
    let mut keep: Vec<u32> = tok.encode(prompt, true).unwrap();
    keep.extend(tok.encode(prompt, false).unwrap());
    let hidden = cfg.hidden_size;
    let dir = with_weights("chat-later", "model.embed_tokens.weight", |i, v| {
        if keep.contains(&((i / hidden) as u32)) {
            v
        } else {
            f32::NAN
        }
    });
    for flags in [GREEDY, SAMPLED] {
        let (ok, out, err) = chat(&dir, prompt, 40, flags);
        assert!(!ok, "{flags:?}: accepted, printed {out:?}\n{err}");
        let step: usize = err
            .split("generation step ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{flags:?}: no step named: {err}"));
        assert!(step >= 2, "{flags:?}: step {step}: {err}");
        assert!(
            err.contains(&format!("token {step} of the answer"))
                && err.contains("not a finite number"),
            "{flags:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
