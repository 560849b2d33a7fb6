//! Bad input never gives a wrong number or a crash: a deterministic, seeded
//! mutation suite over the tiny fixture folders. Every mutated copy of
//! config.json, the safetensors checkpoint (single and sharded), the
//! tokenizer files, student_config.json, a GGUF file, `distill --data`
//! files, chat templates and the commands' numeric flags goes through the
//! same parsers and loaders the commands use, in-process and without a GPU;
//! each case must end as a clear `Err` or as success with sane values —
//! never a panic, a hang or a NaN. A few cases (the ones the fuzz of
//! `boomgpu eval --json` found) also run through the GPU eval path.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boomgpu::boomerang::{Direction, PatchPlan, PruneParams, PrunePlan, StudentConfig};
use boomgpu::commands::chat::{ChatArgs, ChatTarget};
use boomgpu::commands::distill::DistillArgs;
use boomgpu::commands::eval::Sizes;
use boomgpu::gpu::DType;
use boomgpu::infer::chat::{encode_prompt, ChatTemplate, Message};
use boomgpu::model::gguf::Gguf;
use boomgpu::model::tokenizer::Tokenizer;
use boomgpu::model::weights::{write_safetensors, Checkpoint};
use boomgpu::model::ModelConfig;
use boomgpu::ops::sample::SampleParams;
use boomgpu::train::data::{token_stream, Corpus};
use boomgpu::train::run::DistillOptions;
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
        if std::env::var_os("FUZZ_TRACE").is_some() {
            // Which case hangs, if one does.
            eprintln!("case {}: {kind} {label}", self.cases);
        }
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
    fuzz_data(&mut t, &mut rng);
    fuzz_chat_template(&mut t, &mut rng);
    fuzz_cli(&mut t);
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

// ---------------------------------------------------------------------------
// Training data (`distill --data`), chat templates and CLI values
// ---------------------------------------------------------------------------

/// The qwen3 fixture's tokenizer and sizes, for the data reader.
fn qwen3_tokenizer() -> (Tokenizer, u32, usize) {
    let dir = fixture("qwen3");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_dir(&dir, &cfg.eos_token_ids, cfg.bos_token_id).unwrap();
    (tok, cfg.eos_token_ids[0], cfg.vocab_size)
}

/// What distill does with `--data`: read the token stream and pack it into
/// sequences of 8. Accepted ids must be within the vocabulary.
fn read_data(path: &Path, tok: &Tokenizer, eos: u32, vocab: usize) -> Result<(), String> {
    let s = |e: boomgpu::Error| e.to_string();
    let stream = token_stream(&[path.to_path_buf()], tok, eos, vocab).map_err(s)?;
    if let Some(bad) = stream.iter().find(|&&i| i as usize >= vocab) {
        return Err(format!("{BAD}id {bad} beyond the vocabulary of {vocab}"));
    }
    let c = Corpus::pack(&stream, 8, 0).map_err(s)?;
    if c.train.is_empty() || c.train.iter().any(|q| q.len() != 8) {
        return Err(format!("{BAD}{} training sequences", c.train.len()));
    }
    Ok(())
}

fn fuzz_data(t: &mut Tally, rng: &mut Rng) {
    let (tok, eos, vocab) = qwen3_tokenizer();
    let dir = scratch("data");
    let jsonl = dir.join("d.jsonl");
    let txt = dir.join("d.txt");
    let text = "The river below the old mill runs slowly in the summer. ".repeat(4);
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 % vocab) as u32).collect();
    let records = [
        json!({ "text": text }),
        json!({ "input_ids": ids }),
        json!({ "text": "Second document, with a comma.", "meta": {"source": "x"} }),
    ];
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    let good = lines.join("\n") + "\n";
    let check = |p: &Path| read_data(p, &tok, eos, vocab);
    let run = |t: &mut Tally, label: String, path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).unwrap();
        t.case("data", &label, || check(path));
    };
    for (p, body) in [(&jsonl, good.as_bytes()), (&txt, text.as_bytes())] {
        std::fs::write(p, body).unwrap();
        t.case("baseline", &p.display().to_string(), || {
            check(p).map_err(|e| format!("{BAD}{e}"))
        });
    }
    // Every key of every record replaced (or removed).
    for (i, r) in records.iter().enumerate() {
        for path in key_paths(r) {
            for (label, with) in replacements() {
                let mut ls = lines.clone();
                ls[i] = replaced(r, &path, &with).to_string();
                let label = format!("record {i} {} = {label}", path.join("."));
                run(t, label, &jsonl, ls.join("\n").as_bytes());
            }
        }
    }
    // One input id replaced.
    let odd_ids: Vec<(&str, Value)> = vec![
        ("-1", json!(-1)),
        ("vocab", json!(vocab)),
        ("vocab-1", json!(vocab - 1)),
        ("2^32-1", json!(u32::MAX)),
        ("2^32", json!(1u64 << 32)),
        ("2^64-1", json!(u64::MAX)),
        ("1.5", json!(1.5)),
        ("1.0", json!(1.0)),
        ("1e308", json!(1e308)),
        ("string", json!("7")),
        ("null", Value::Null),
        ("list", json!([1])),
        ("bool", json!(true)),
    ];
    for (label, v) in &odd_ids {
        for at in [0, 17, 39] {
            let mut r = records[1].clone();
            r["input_ids"][at] = v.clone();
            let mut ls = lines.clone();
            ls[1] = r.to_string();
            run(
                t,
                format!("input_ids[{at}] = {label}"),
                &jsonl,
                ls.join("\n").as_bytes(),
            );
        }
    }
    // Whole lines and files.
    let odd_files: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("blank lines", b"\n\n  \n\t\n".to_vec()),
        ("a list", b"[1, 2, 3]\n".to_vec()),
        ("null", b"null\n".to_vec()),
        ("a number", b"5\n".to_vec()),
        ("a string", b"\"text\"\n".to_vec()),
        ("empty object", b"{}\n".to_vec()),
        ("empty ids", b"{\"input_ids\": []}\n".to_vec()),
        (
            "two objects on a line",
            b"{\"text\": \"a\"} {\"text\": \"b\"}\n".to_vec(),
        ),
        (
            "byte order mark",
            [b"\xef\xbb\xbf".as_slice(), good.as_bytes()].concat(),
        ),
        ("CRLF", good.replace('\n', "\r\n").into_bytes()),
        ("NUL bytes", good.replace("river", "ri\0ver").into_bytes()),
        ("invalid UTF-8 0xff", [good.as_bytes(), b"\xff\n"].concat()),
        (
            "lone continuation",
            [b"{\"text\": \"\x80\"}\n".as_slice(), good.as_bytes()].concat(),
        ),
        (
            "overlong NUL",
            [good.as_bytes(), b"{\"text\": \"\xc0\x80\"}"].concat(),
        ),
        (
            "surrogate",
            [good.as_bytes(), b"{\"text\": \"\xed\xa0\x80\"}"].concat(),
        ),
        (
            "escaped lone surrogate",
            [good.as_bytes(), b"{\"text\": \"\\ud800\"}\n"].concat(),
        ),
        (
            "100k ids on a line",
            format!("{{\"input_ids\": [{}]}}\n", vec!["3"; 100_000].join(",")).into_bytes(),
        ),
        (
            "deeply nested",
            format!("{}{}\n", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
    ];
    for (label, body) in &odd_files {
        run(t, format!("jsonl {label}"), &jsonl, body);
        run(t, format!("txt {label}"), &txt, body);
    }
    // Cuts, flipped bytes and invalid UTF-8 anywhere.
    let g = good.as_bytes();
    for _ in 0..40 {
        let cut = rng.below(g.len());
        run(t, format!("jsonl cut at {cut}"), &jsonl, &g[..cut]);
    }
    for _ in 0..80 {
        let mut b = g.to_vec();
        let pos = rng.below(b.len());
        b[pos] = match rng.below(3) {
            0 => {
                let syntax = b"{}[]\",:0-e";
                syntax[rng.below(syntax.len())]
            }
            1 => 0x80 | rng.below(128) as u8,
            _ => rng.next() as u8,
        };
        run(t, format!("jsonl byte {pos} changed"), &jsonl, &b);
        let mut b = text.clone().into_bytes();
        let pos = rng.below(b.len());
        b[pos] = rng.next() as u8;
        run(t, format!("txt byte {pos} changed"), &txt, &b);
    }
    // A folder holding both files, one of them broken.
    std::fs::write(&jsonl, &g[..g.len() / 2]).unwrap();
    std::fs::write(&txt, &text).unwrap();
    t.case("data", "folder with a cut .jsonl", || check(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    t.case("data", "no such path", || check(&dir));
}

/// A ChatML template and one in the style of Llama 3's (system message,
/// namespace, loop controls, raise_exception, strftime_now).
const TEMPLATES: [&str; 2] = [
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "{{ bos_token }}{% set ns = namespace(sys='') %}{% if messages[0]['role'] == 'system' %}{% set ns.sys = messages[0]['content'] | trim %}{% set messages = messages[1:] %}{% endif %}{{ '<|start|>system<|end|>' + ns.sys + ' today: ' + strftime_now('%d %b %Y') }}{% for m in messages %}{% if loop.index0 % 2 == 0 and m['role'] != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}{{ '<|start|>' + m['role'] + '<|end|>' + m['content'] | trim + eos_token }}{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant<|end|>' }}{% endif %}",
];

/// Fragments of Jinja spliced into the templates, and hostile templates.
const JINJA_BITS: [&str; 16] = [
    "{%",
    "%}",
    "{{",
    "}}",
    "{#",
    "#}",
    "{% endfor %}",
    "{% endif %}",
    "{% if %}",
    "{{ messages[",
    "|",
    "{% for m in messages %}",
    "{{ raise_exception('no') }}",
    "{{ 1/0 }}",
    "{{ undefined_thing.x.y }}",
    "{% set x = messages[99] %}",
];

const HOSTILE: [&str; 15] = [
    "{% for i in range(1000000000) %}x{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 1000000000 }}",
    "{{ ('x' * 100000) * 100000 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% set l = [1] %}{% for i in range(30) %}{% set l = l + l %}{% endfor %}{{ l | length }}",
    "{{ messages[0]['content'][10000000000] }}",
    "{{ 9223372036854775807 + 1 }}",
    "{{ -9223372036854775808 // -1 }}",
    "{{ '%s' % messages }}",
    "{{ messages | tojson(indent=1000000000) }}",
    "{% include 'chat' %}",
    "{{ messages | tojson(indent=64) }}",
    "{{ messages | tojson(2000000000) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
];

/// Compile and render one template as chat does (a user turn, then a
/// conversation with a system message).
fn render_template(src: &str) -> Result<(), String> {
    let s = |e: boomgpu::Error| e.to_string();
    let t = ChatTemplate::new(src, "<|bos|>", "<|eos|>").map_err(s)?;
    t.render(&[Message::user("Where does the river run?")], true)
        .map_err(s)?;
    let conv = [
        Message::new("system", "Be brief."),
        Message::user("Hi"),
        Message::assistant("Hello."),
        Message::user("Where?"),
    ];
    t.render(&conv, true).map_err(s)?;
    Ok(())
}

fn fuzz_chat_template(t: &mut Tally, rng: &mut Rng) {
    for (i, src) in TEMPLATES.iter().enumerate() {
        t.case("baseline", &format!("template {i}"), || {
            render_template(src).map_err(|e| format!("{BAD}{e}"))
        });
        let chars: Vec<(usize, char)> = src.char_indices().collect();
        for _ in 0..40 {
            let (cut, _) = chars[rng.below(chars.len())];
            t.case(
                "chat_template",
                &format!("template {i} cut at {cut}"),
                || render_template(&src[..cut]),
            );
        }
        for _ in 0..60 {
            let (at, _) = chars[rng.below(chars.len())];
            let bit = JINJA_BITS[rng.below(JINJA_BITS.len())];
            let m = format!("{}{bit}{}", &src[..at], &src[at..]);
            t.case(
                "chat_template",
                &format!("template {i} + {bit:?} at {at}"),
                || render_template(&m),
            );
        }
        for _ in 0..40 {
            let (at, c) = chars[rng.below(chars.len())];
            let with = (b' ' + rng.below(95) as u8) as char;
            let m = format!("{}{with}{}", &src[..at], &src[at + c.len_utf8()..]);
            t.case(
                "chat_template",
                &format!("template {i} char {at} = {with:?}"),
                || render_template(&m),
            );
        }
    }
    for h in HOSTILE {
        t.case("chat_template", h, || render_template(h));
    }
    // Through tokenizer_config.json, as chat loads it: the template as a
    // string, as HF's list of named templates, and as other JSON values.
    let dir = copy_fixture("qwen3", "template");
    let path = dir.join("tokenizer_config.json");
    let cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let values = vec![
        ("string", json!(TEMPLATES[0])),
        ("broken string", json!("{% for m in messages %}{{ m")),
        ("hostile", json!(HOSTILE[0])),
        (
            "named list",
            json!([{ "name": "default", "template": TEMPLATES[1] }]),
        ),
        (
            "named list, broken",
            json!([{ "name": "default", "template": "{{ }}" }]),
        ),
        ("list of junk", json!([1, null, {"name": 5}])),
        ("number", json!(5)),
        ("object", json!({"a": 1})),
        ("null", Value::Null),
    ];
    for (label, v) in values {
        let mut c = cfg.clone();
        c["chat_template"] = v;
        std::fs::write(&path, c.to_string()).unwrap();
        let check = || -> Result<(), String> {
            let s = |e: boomgpu::Error| e.to_string();
            let mc = ModelConfig::from_file(&dir.join("config.json")).map_err(s)?;
            let tok = Tokenizer::from_dir(&dir, &mc.eos_token_ids, mc.bos_token_id).map_err(s)?;
            if let Some(tpl) = ChatTemplate::from_tokenizer(&tok).map_err(s)? {
                let ids = encode_prompt(&tok, Some(&tpl), &[Message::user("Hi")]).map_err(s)?;
                if ids.iter().any(|&i| i as usize >= mc.vocab_size) {
                    return Err(format!("{BAD}prompt id beyond the vocabulary"));
                }
            }
            Ok(())
        };
        t.case("chat_template", &format!("tokenizer_config {label}"), check);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The values every numeric flag gets: each either refused by the
/// command's validation (before anything loads) or within the range the
/// command can run with.
const FLOATS: [f32; 12] = [
    0.0,
    -0.0,
    -1.0,
    0.5,
    1.0,
    2.0,
    1e-45,
    3.4e38,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    -f32::NAN,
];
const SIZES: [usize; 7] = [0, 1, 2, 16, 4096, 1 << 40, usize::MAX];

fn distill_args() -> DistillArgs {
    DistillArgs {
        teacher: "t".into(),
        student: None,
        data: vec![],
        out: Some("o".into()),
        seq_len: 16,
        opts: DistillOptions {
            steps: 2,
            ..Default::default()
        },
        prune: None,
        random_init: false,
        save_every: 0,
        eval_every: 0,
        eval_tokens: 0,
        resume: None,
        log: None,
        save_dtype: None,
        quiet: true,
        memory_budget: None,
        host_budget: None,
        mode: Default::default(),
        teacher_8bit: false,
    }
}

fn chat_args() -> ChatArgs {
    ChatArgs {
        target: ChatTarget::Model("m".into()),
        layers: None,
        order: Default::default(),
        prune: None,
        prompt: Some("x".into()),
        json: false,
        max_tokens: None,
        temperature: None,
        top_k: None,
        top_p: None,
        min_p: None,
        repetition_penalty: None,
        seed: None,
        max_context: None,
        stop: vec![],
        kv_dtype: boomgpu::gpu::DType::F16,
    }
}

/// Accepted distill flags must be ones training can run with.
fn distill_sane(a: &DistillArgs) -> bool {
    let o = &a.opts;
    let w = &o.weights;
    let fin = |v: f32| v.is_finite() && v >= 0.0;
    o.steps >= 1
        && a.seq_len >= 2
        && o.batch >= 1
        && o.grad_accum >= 1
        && (o.batch as u128 * o.grad_accum as u128 * a.seq_len as u128) <= 1 << 40
        && [o.lr, w.kl, w.cos, o.weight_decay, o.max_grad_norm]
            .into_iter()
            .all(fin)
        && o.warmup.is_finite()
        && o.warmup >= 0.0
        && w.temperature > 0.0
        && (1.0 / w.temperature).is_finite()
}

fn chat_sane(a: &ChatArgs) -> bool {
    let t = a.temperature.unwrap_or(0.0);
    let unit = |v: Option<f32>| v.is_none_or(|v| (0.0..=1.0).contains(&v));
    t.is_finite()
        && t >= 0.0
        && (t == 0.0 || (1.0 / t).is_finite())
        && unit(a.top_p)
        && unit(a.min_p)
        && a.repetition_penalty
            .is_none_or(|v| v.is_finite() && v > 0.0)
        && a.max_context != Some(0)
}

fn fuzz_cli(t: &mut Tally) {
    type DistillEdit = (&'static str, fn(&mut DistillArgs, f32));
    let floats: [DistillEdit; 7] = [
        ("lr", |a, v| a.opts.lr = v),
        ("warmup", |a, v| a.opts.warmup = v as f64),
        ("kl-weight", |a, v| a.opts.weights.kl = v),
        ("cos-weight", |a, v| a.opts.weights.cos = v),
        ("temperature", |a, v| a.opts.weights.temperature = v),
        ("weight-decay", |a, v| a.opts.weight_decay = v),
        ("max-grad-norm", |a, v| a.opts.max_grad_norm = v),
    ];
    let check_distill = |a: DistillArgs| -> Result<(), String> {
        a.validate().map_err(|e| e.to_string())?;
        if distill_sane(&a) {
            Ok(())
        } else {
            Err(format!("{BAD}{:?} seq_len {}", a.opts, a.seq_len))
        }
    };
    for (flag, set) in floats {
        for v in FLOATS {
            let mut a = distill_args();
            set(&mut a, v);
            t.case("cli", &format!("distill --{flag} {v}"), || check_distill(a));
        }
    }
    type DistillSize = (&'static str, fn(&mut DistillArgs, usize));
    let sizes: [DistillSize; 7] = [
        ("steps", |a, v| a.opts.steps = v),
        ("seq-len", |a, v| a.seq_len = v),
        ("batch", |a, v| a.opts.batch = v),
        ("grad-accum", |a, v| a.opts.grad_accum = v),
        ("eval-tokens", |a, v| a.eval_tokens = v),
        ("save-every", |a, v| a.save_every = v),
        ("eval-every", |a, v| a.eval_every = v),
    ];
    for (flag, set) in sizes {
        for v in SIZES {
            let mut a = distill_args();
            set(&mut a, v);
            t.case("cli", &format!("distill --{flag} {v}"), || check_distill(a));
        }
    }
    type ChatEdit = (&'static str, fn(&mut ChatArgs, f32));
    let chat_floats: [ChatEdit; 4] = [
        ("temperature", |a, v| a.temperature = Some(v)),
        ("top-p", |a, v| a.top_p = Some(v)),
        ("min-p", |a, v| a.min_p = Some(v)),
        ("repetition-penalty", |a, v| a.repetition_penalty = Some(v)),
    ];
    let check_chat = |a: ChatArgs| -> Result<(), String> {
        a.validate().map_err(|e| e.to_string())?;
        let p = SampleParams {
            temperature: a.temperature.unwrap_or(0.0),
            top_p: a.top_p.unwrap_or(1.0),
            min_p: a.min_p.unwrap_or(0.0),
            repetition_penalty: a.repetition_penalty.unwrap_or(1.0),
            top_k: a.top_k.unwrap_or(0),
        };
        // What chat accepts, the sampler must accept too.
        p.validate().map_err(|e| format!("{BAD}{e}"))?;
        if chat_sane(&a) {
            Ok(())
        } else {
            Err(format!("{BAD}{p:?}"))
        }
    };
    for (flag, set) in chat_floats {
        for v in FLOATS {
            let mut a = chat_args();
            set(&mut a, v);
            t.case("cli", &format!("chat --{flag} {v}"), || check_chat(a));
        }
    }
    type ChatSize = (&'static str, fn(&mut ChatArgs, usize));
    let chat_sizes: [ChatSize; 4] = [
        ("max-context", |a, v| a.max_context = Some(v)),
        ("max-tokens", |a, v| a.max_tokens = Some(v)),
        ("top-k", |a, v| a.top_k = Some(v)),
        ("layers", |a, v| a.layers = Some(v)),
    ];
    for (flag, set) in chat_sizes {
        for v in SIZES {
            let mut a = chat_args();
            set(&mut a, v);
            t.case("cli", &format!("chat --{flag} {v}"), || check_chat(a));
        }
    }
    // eval/chat --layers K | K1,K2 | all, then the sizes a 6-layer teacher
    // and its 4-layer student allow.
    let specs = [
        "0",
        "1",
        "2",
        "3",
        "99",
        "-1",
        "all",
        "ALL",
        "",
        ",",
        "1,",
        "1,2",
        "1,99",
        "2,1,2",
        "1.5",
        "0x2",
        " 1",
        "18446744073709551615",
        "18446744073709551616",
        "1;2",
    ];
    let plan = PrunePlan::from_params(6, Default::default()).unwrap();
    for spec in specs {
        t.case("cli", &format!("eval --layers {spec:?}"), || {
            let sizes: Sizes = spec.parse()?;
            let ks = match &sizes {
                Sizes::One(k) => vec![*k],
                Sizes::List(ks) => ks.clone(),
                Sizes::All => vec![],
            };
            for k in ks {
                let max = PatchPlan::max_k(&plan, Direction::Last);
                PatchPlan::new(&plan, k, Direction::Last).map_err(|e| e.to_string())?;
                if k > max {
                    return Err(format!("{BAD}--layers {k} accepted"));
                }
            }
            Ok(())
        });
    }
    // --every / --keep-first / --keep-last against a 6-layer teacher.
    for every in SIZES {
        for keep_first in [0, 1, 6, usize::MAX] {
            for keep_last in [0, 2, 7, usize::MAX] {
                let p = PruneParams {
                    every,
                    keep_first,
                    keep_last,
                };
                t.case("cli", &format!("prune {p}"), || {
                    let plan = PrunePlan::from_params(6, p).map_err(|e| e.to_string())?;
                    let mut all: Vec<usize> =
                        plan.copied.iter().chain(&plan.pruned).copied().collect();
                    all.sort();
                    if all != (0..6).collect::<Vec<_>>() || plan.pruned.is_empty() {
                        return Err(format!("{BAD}{plan:?}"));
                    }
                    Ok(())
                });
            }
        }
    }
}

/// Found by the mutation suite: a template that loops 10^10 times hung
/// chat, and `tojson(indent=10^9)` spent 16 s and gigabytes on one
/// render. Both are refused now (render fuel, an indent bound), quickly.
#[test]
fn hostile_chat_templates_end_in_errors_quickly() {
    for (src, want) in [
        (HOSTILE[1], "fuel"),
        (HOSTILE[10], "indent 1000000000 is too large"),
        (HOSTILE[13], "indent 2000000000 is too large"),
    ] {
        let t0 = Instant::now();
        let e = render_template(src).expect_err(src);
        assert!(e.contains(want), "{src}: {e}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{src}: {:?}",
            t0.elapsed()
        );
    }
    // A real use of tojson still works.
    let t = ChatTemplate::new("{{ messages | tojson(indent=2) }}", "", "").unwrap();
    let out = t.render(&[Message::user("Hi")], true).unwrap();
    assert!(out.contains("\n  {") && out.contains("\"Hi\""), "{out}");
}

/// The flags through the binary: each bad value ends in `error: --FLAG
/// VALUE: expected ...` and exit status 1, before any model is loaded (so
/// quickly), never a panic; the panics this found (--batch 2^62, --every
/// 2^64-1, --max-context 2^64-1) are among the cases.
#[test]
fn bad_flags_end_in_clear_errors_through_the_cli() {
    let q = fixture("qwen3");
    let s = fixture("qwen3-student");
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text.txt");
    let out = scratch("cli-flags").join("out");
    let (q, s, text, out) = (
        q.to_str().unwrap(),
        s.to_str().unwrap(),
        text.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let distill = [
        "distill",
        "--quiet",
        "--teacher",
        q,
        "--student",
        s,
        "--data",
        text,
        "--out",
        out,
    ];
    let pruned = [
        "distill",
        "--quiet",
        "--teacher",
        q,
        "--data",
        text,
        "--out",
        out,
        "--seq-len",
        "16",
    ];
    let chat = ["chat", "--model", q, "--prompt", "x", "--max-tokens", "2"];
    let pair = ["chat", "--teacher", q, "--student", s, "--prompt", "x"];
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (distill.to_vec(), "--steps=0", "--steps 0: expected"),
        (distill.to_vec(), "--seq-len=0", "--seq-len 0: expected"),
        (distill.to_vec(), "--seq-len=1", "--seq-len 1: expected"),
        (distill.to_vec(), "--lr=NaN", "--lr NaN: expected"),
        (distill.to_vec(), "--lr=-1", "--lr -1: expected"),
        (distill.to_vec(), "--lr=inf", "--lr inf: expected"),
        (distill.to_vec(), "--warmup=NaN", "--warmup NaN: expected"),
        (
            distill.to_vec(),
            "--max-grad-norm=NaN",
            "--max-grad-norm NaN",
        ),
        (distill.to_vec(), "--weight-decay=inf", "--weight-decay inf"),
        (
            distill.to_vec(),
            "--temperature=0",
            "--temperature 0: expected",
        ),
        (
            distill.to_vec(),
            "--batch=4611686018427387904",
            "tokens per optimiser step",
        ),
        (
            distill.to_vec(),
            "--grad-accum=0",
            "--grad-accum 0: expected",
        ),
        (
            pruned.to_vec(),
            "--every=18446744073709551615",
            "prunes nothing",
        ),
        (
            pruned.to_vec(),
            "--keep-first=18446744073709551615",
            "is more than the teacher",
        ),
        (
            chat.to_vec(),
            "--temperature=-1",
            "--temperature -1: expected",
        ),
        (
            chat.to_vec(),
            "--temperature=NaN",
            "--temperature NaN: expected",
        ),
        (
            chat.to_vec(),
            "--temperature=1e-45",
            "--temperature 0.000000000000000000000000000000000000000000001: expected",
        ),
        (chat.to_vec(), "--top-p=2", "--top-p 2: expected"),
        (chat.to_vec(), "--min-p=-0.5", "--min-p -0.5: expected"),
        (
            chat.to_vec(),
            "--repetition-penalty=0",
            "--repetition-penalty 0",
        ),
        (
            chat.to_vec(),
            "--max-context=0",
            "--max-context 0: expected",
        ),
        (pair.to_vec(), "--layers=99", "--layers 99 is out of range"),
        (
            pair.to_vec(),
            "--keep-last=18446744073709551615",
            "is more than the teacher",
        ),
    ];
    // A context of 2^64 - 1 positions is a sane success: the KV cache
    // grows in blocks as tokens arrive, and the note says it is beyond the
    // model's positions.
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_boomgpu"))
        .args(chat)
        .arg("--max-context=18446744073709551615")
        .env("BOOMGPU_MATMUL", "portable")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        r.status.success() && err.contains("beyond the model's max_position_embeddings"),
        "{err}"
    );
    for (base, flag, want) in &cases {
        let t0 = Instant::now();
        let r = std::process::Command::new(env!("CARGO_BIN_EXE_boomgpu"))
            .args(base)
            .arg(flag)
            .env("BOOMGPU_MATMUL", "portable")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{} {flag}: {err}", base[0]);
        assert!(
            err.contains("error: ") && err.contains(want) && !err.contains("panicked"),
            "{} {flag}: {err}",
            base[0]
        );
        assert!(r.stdout.is_empty(), "{} {flag}", base[0]);
        assert!(t0.elapsed() < Duration::from_secs(60), "{} {flag}", base[0]);
    }
    assert!(!Path::new(out).join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(Path::new(out).parent().unwrap());
}

/// Out-of-vocabulary ids in pre-tokenised data used to reach the GPU's
/// embedding lookup; now distill names the line and the id.
#[test]
fn distill_refuses_out_of_vocabulary_ids() {
    let dir = scratch("oov");
    let data = dir.join("ids.jsonl");
    let ids: Vec<u32> = (0..200).map(|i| i % 300).collect();
    let mut bad = ids.clone();
    bad[5] = 320;
    std::fs::write(
        &data,
        format!(
            "{}\n{}\n",
            json!({ "input_ids": ids }),
            json!({ "input_ids": bad })
        ),
    )
    .unwrap();
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_boomgpu"))
        .args([
            "distill",
            "--quiet",
            "--steps",
            "1",
            "--seq-len",
            "16",
            "--teacher",
        ])
        .arg(fixture("qwen3"))
        .arg("--student")
        .arg(fixture("qwen3-student"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.join("out"))
        .env("BOOMGPU_MATMUL", "portable")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(
        err.contains("ids.jsonl:2: input_ids[5] = 320: expected an integer from 0 to 319"),
        "{err}"
    );
    assert!(!dir.join("out/model.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
