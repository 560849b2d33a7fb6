//! `boomgpu init-student` on tiny random teachers written from Rust.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};

use boomgpu::boomerang::init::{encode, Rng};
use boomgpu::boomerang::{PrunePlan, StudentConfig};
use boomgpu::gpu::DType;
use boomgpu::model::weights::{to_f32, write_safetensors, Checkpoint};
use boomgpu::model::ModelConfig;

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
        DType::U32 => safetensors::Dtype::U32,
        DType::Q8 => panic!("no 8-bit weights in files"),
    }
}

/// A teacher folder: `config` as config.json and random weights of every
/// tensor it implies, plus `extra` tensors, in `dtype`.
fn write_teacher(dir: &Path, config: Value, dtype: DType, extra: &[(&str, Vec<usize>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let cfg = ModelConfig::from_json(config).unwrap();
    let mut rng = Rng::new(1234);
    let mut tensors = BTreeMap::new();
    let mut all = cfg.expected_tensors();
    all.extend(extra.iter().map(|(n, s)| (n.to_string(), s.clone())));
    for (name, shape) in all {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal_pair().0 as f32).collect();
        tensors.insert(name, (dtype, shape, encode(&v, st_dtype(dtype))));
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
}

fn init(teacher: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "init-student",
        "--teacher",
        teacher.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    boomgpu_run(&args)
}

/// The student in `out` is the teacher with `plan` applied, byte for byte.
fn check_copied_student(teacher: &Path, out: &Path, plan: &PrunePlan) {
    let tcfg_raw = read_json(&teacher.join("config.json"));
    let scfg_raw = read_json(&out.join("config.json"));
    let tcfg = ModelConfig::from_json(tcfg_raw.clone()).unwrap();
    let scfg = ModelConfig::from_json(scfg_raw.clone()).unwrap();
    assert_eq!(scfg.num_layers, plan.copied.len());
    // Everything but the layer count (and per-layer lists) is the teacher's.
    for (k, v) in tcfg_raw.as_object().unwrap() {
        match k.as_str() {
            "num_hidden_layers" => assert_eq!(scfg_raw[k], json!(plan.copied.len())),
            "layer_types" => {
                let want: Vec<Value> = plan.copied.iter().map(|&i| v[i].clone()).collect();
                assert_eq!(scfg_raw[k], Value::Array(want));
            }
            _ => assert_eq!(&scfg_raw[k], v, "config key {k}"),
        }
    }
    assert_eq!(
        scfg_raw.as_object().unwrap().len(),
        tcfg_raw.as_object().unwrap().len()
    );

    let sc_raw = read_json(&out.join("student_config.json"));
    let mut keys: Vec<&String> = sc_raw.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["copied_teacher_layers", "pruned_teacher_layers"]);
    let sc = StudentConfig::read(&out.join("student_config.json")).unwrap();
    assert_eq!(sc.copied_teacher_layers, plan.copied);
    assert_eq!(sc.pruned_teacher_layers, plan.pruned);

    let t = Checkpoint::open(teacher).unwrap();
    let s = Checkpoint::open(out).unwrap();
    s.check(&scfg).unwrap();
    let expected: Vec<String> = scfg.expected_tensors().into_iter().map(|x| x.0).collect();
    let mut have: Vec<String> = s.tensors.keys().cloned().collect();
    let mut exp_sorted = expected.clone();
    have.sort();
    exp_sorted.sort();
    assert_eq!(
        have, exp_sorted,
        "student holds exactly its model's tensors"
    );
    for name in &expected {
        let tname = match name.split('.').collect::<Vec<_>>().as_slice() {
            [a, "layers", j, rest @ ..] => {
                let j: usize = j.parse().unwrap();
                format!("{a}.layers.{}.{}", plan.copied[j], rest.join("."))
            }
            _ => name.clone(),
        };
        assert_eq!(s.tensors[name].dtype, t.tensors[&tname].dtype, "{name}");
        assert_eq!(s.tensors[name].shape, t.tensors[&tname].shape, "{name}");
        assert!(
            s.bytes(name).unwrap() == t.bytes(&tname).unwrap(),
            "{name} is not a copy of the teacher's {tname}"
        );
    }
    assert_eq!(tcfg.tie_word_embeddings, scfg.tie_word_embeddings);
}

fn no_leftovers(parent: &Path) {
    for e in std::fs::read_dir(parent).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp-") && !name.contains(".old-"),
            "left behind: {name}"
        );
    }
}

fn llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 6, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": 64, "tie_word_embeddings": true, "rms_norm_eps": 1e-5,
        "initializer_range": 0.05, "pad_token_id": 3, "torch_dtype": "float32",
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "some_future_field": {"kept": [1, 2]}
    })
}

#[test]
fn llama_student_is_a_byte_copy() {
    let root = tmpdir("llama");
    let teacher = root.join("teacher");
    write_teacher(&teacher, llama_config(), DType::F32, &[]);
    std::fs::write(teacher.join("tokenizer.json"), "{\"not\": \"parsed\"}\n").unwrap();
    std::fs::write(
        teacher.join("generation_config.json"),
        "{\"do_sample\": true}",
    )
    .unwrap();
    let out = root.join("students/s1");
    let stdout = ok(&init(&teacher, &out, &[]));
    assert!(stdout.contains("6 layers"), "{stdout}");
    assert!(
        stdout.contains("student: 4 layers = teacher layers [0, 2, 4, 5]"),
        "{stdout}"
    );
    let plan = PrunePlan::new(6, 2, 1, 2).unwrap();
    check_copied_student(&teacher, &out, &plan);
    for f in ["tokenizer.json", "generation_config.json"] {
        assert_eq!(
            std::fs::read(teacher.join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap()
        );
    }
    assert!(!out.join("tokenizer_config.json").exists());
    no_leftovers(&root.join("students"));

    // A non-empty --out is refused unless --force.
    let e = err(&init(&teacher, &out, &["--every", "3"]));
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    check_copied_student(&teacher, &out, &plan);
    // Other parameters, replacing the first student.
    ok(&init(
        &teacher,
        &out,
        &[
            "--every",
            "3",
            "--keep-first",
            "2",
            "--keep-last",
            "1",
            "--force",
        ],
    ));
    let plan = PrunePlan::new(6, 3, 2, 1).unwrap();
    assert_eq!(plan.copied, vec![0, 1, 4, 5]);
    check_copied_student(&teacher, &out, &plan);
    no_leftovers(&root.join("students"));
    // An empty existing folder is fine.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    ok(&init(&teacher, &empty, &["--keep-last", "1"]));
    check_copied_student(&teacher, &empty, &PrunePlan::new(6, 2, 1, 1).unwrap());

    // Impossible parameters and bad input.
    let e = err(&init(&teacher, &root.join("x"), &["--every", "0"]));
    assert!(e.contains("--every 0"), "{e}");
    let e = err(&init(&teacher, &root.join("x"), &["--keep-first", "5"]));
    assert!(e.contains("more than the teacher's 6 layers"), "{e}");
    assert!(!root.join("x").exists());
    let e = err(&init(&teacher, &root.join("x"), &["--seed", "3"]));
    assert!(e.contains("--random-init"), "{e}");
    let e = err(&init(&teacher, &root, &["--force"]));
    assert!(e.contains("holds the teacher"), "{e}");
    assert!(teacher.join("model.safetensors").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn qwen3_bf16_and_gpt_neox_f16_students() {
    let root = tmpdir("qwen-neox");
    let teacher = root.join("qwen3");
    let types: Vec<&str> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    write_teacher(
        &teacher,
        json!({
            "model_type": "qwen3", "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 4, "vocab_size": 48, "tie_word_embeddings": false,
            "rope_theta": 1000000.0, "layer_types": types, "torch_dtype": "bfloat16"
        }),
        DType::BF16,
        &[],
    );
    let out = root.join("qwen3-student");
    ok(&init(&teacher, &out, &[]));
    let plan = PrunePlan::new(8, 2, 1, 2).unwrap();
    assert_eq!(plan.copied, vec![0, 2, 4, 6, 7]);
    check_copied_student(&teacher, &out, &plan);
    let s = Checkpoint::open(&out).unwrap();
    assert!(s.tensors.contains_key("lm_head.weight"));
    assert!(s
        .tensors
        .contains_key("model.layers.4.self_attn.q_norm.weight"));
    assert_eq!(
        s.tensors["model.layers.0.mlp.up_proj.weight"].dtype,
        safetensors::Dtype::BF16
    );

    let teacher = root.join("neox");
    write_teacher(
        &teacher,
        json!({
            "model_type": "gpt_neox", "hidden_size": 8, "intermediate_size": 32,
            "num_hidden_layers": 5, "num_attention_heads": 2, "vocab_size": 40,
            "rotary_pct": 0.5, "use_parallel_residual": true, "hidden_act": "gelu",
            "tie_word_embeddings": false
        }),
        DType::F16,
        &[
            ("gpt_neox.layers.0.attention.masked_bias", vec![]),
            ("gpt_neox.layers.1.attention.masked_bias", vec![]),
        ],
    );
    let out = root.join("neox-student");
    let stdout = ok(&init(&teacher, &out, &[]));
    // Layer 1 is pruned anyway; layer 0's buffer is not part of the model.
    assert!(
        stdout.contains("1 teacher tensor(s) the model does not use were left out: gpt_neox.layers.0.attention.masked_bias"),
        "{stdout}"
    );
    let plan = PrunePlan::new(5, 2, 1, 2).unwrap();
    assert_eq!(plan.copied, vec![0, 2, 3, 4]);
    check_copied_student(&teacher, &out, &plan);
    let s = Checkpoint::open(&out).unwrap();
    assert!(s.tensors.contains_key("embed_out.weight"));
    assert!(s
        .tensors
        .contains_key("gpt_neox.layers.3.attention.query_key_value.bias"));
    no_leftovers(&root);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn random_init_is_seeded_and_shaped_like_hf() {
    let root = tmpdir("random");
    let teacher = root.join("teacher");
    write_teacher(&teacher, llama_config(), DType::F32, &[]);
    let (a, b, c) = (root.join("a"), root.join("b"), root.join("c"));
    let stdout = ok(&init(&teacher, &a, &["--random-init", "--seed", "7"]));
    assert!(stdout.contains("random (seed 7"), "{stdout}");
    ok(&init(&teacher, &b, &["--random-init", "--seed", "7"]));
    ok(&init(&teacher, &c, &["--random-init", "--seed", "8"]));
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "same seed, same weights");
    assert!(bytes(&a) != bytes(&c), "another seed, other weights");

    let cfg = ModelConfig::from_file(&a.join("config.json")).unwrap();
    assert_eq!(cfg.num_layers, 4);
    let s = Checkpoint::open(&a).unwrap();
    s.check(&cfg).unwrap();
    let t = Checkpoint::open(&teacher).unwrap();
    for (name, shape) in cfg.expected_tensors() {
        let v = to_f32(s.bytes(&name).unwrap(), DType::F32);
        if shape.len() == 1 {
            assert!(v.iter().all(|&x| x == 1.0), "{name}: norms start at 1");
        } else {
            assert_ne!(s.bytes(&name).unwrap(), t.bytes(&name).unwrap(), "{name}");
            assert!(v.iter().all(|x| x.is_finite()));
        }
    }
    let e = to_f32(s.bytes("model.embed_tokens.weight").unwrap(), DType::F32);
    // pad_token_id 3: row 3 is zero (HF padding_idx); the rest ~ normal(0, 0.05).
    assert!(e[24..32].iter().all(|&x| x == 0.0));
    let rest: Vec<f64> = e[..24].iter().chain(&e[32..]).map(|&x| x as f64).collect();
    let std = (rest.iter().map(|x| x * x).sum::<f64>() / rest.len() as f64).sqrt();
    assert!((std - 0.05).abs() < 0.01, "{std}");
    assert!(a.join("student_config.json").exists());
    std::fs::remove_dir_all(&root).unwrap();
}
