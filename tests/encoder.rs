//! The encoder family against transformers (tests/fixtures/
//! make_encoder_fixtures.py): a tiny 12-layer BERT and a DistilBERT made
//! from its layers [0, 2, 4, 7, 9, 11] and perturbed. MLM logits of both,
//! of the reference notebook's interpolated models (n = 1…5 student layers
//! replaced from the top) and of naive layer pruning; pseudo-perplexities
//! through `eval`; exported sizes; and the inputs that must be refused.

mod common;
use common::*;

use boomgpu::boomerang::{Direction, PatchOrder};
use boomgpu::commands::encoder::{EncoderPair, Loaded};
use boomgpu::gpu::DType;
use boomgpu::model::encoder::Encoder;
use boomgpu::model::encoder_config::EncoderConfig;
use boomgpu::model::exec::Eager;
use boomgpu::model::weights::{write_safetensors, Checkpoint};
use serde_json::Value;

fn refs() -> (Value, Checkpoint) {
    let dir = fixture_path("models");
    (
        read_json(&dir.join("encoder_ref.json")),
        Checkpoint::open_file(&dir.join("encoder_ref.safetensors")).unwrap(),
    )
}

fn fixture_str(name: &str) -> String {
    fixture(name).to_str().unwrap().to_string()
}

/// MLM logits `[2·T, vocab]` of the fixture batch (padded, with its mask).
fn batch_logits(enc: &Encoder, r: &Checkpoint) -> Vec<f32> {
    let g = gpu();
    let ids: Vec<u32> = r
        .to_f32("input_ids")
        .unwrap()
        .iter()
        .map(|&x| x as u32)
        .collect();
    let mask: Vec<u32> = r
        .to_f32("attention_mask")
        .unwrap()
        .iter()
        .map(|&x| x as u32)
        .collect();
    let (b, t) = (2, ids.len() / 2);
    let pos: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
    let ids_t = g.upload_u32("ids", &[b * t], &ids).unwrap();
    let pos_t = g.upload_u32("pos", &[b * t], &pos).unwrap();
    let mask_t = g.upload_u32("mask", &[b, t], &mask).unwrap();
    let mut rec = g.recorder();
    let mut e = Eager::new(&mut rec);
    let h = enc
        .hidden(&mut e, &ids_t, &pos_t, (b, t), Some(&mask_t))
        .unwrap();
    rec.run().unwrap();
    enc.read_mlm_logits(g, &h).unwrap()
}

#[track_caller]
fn check_logits(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_close(what, got, want, 1e-4 * scale, 1e-4);
}

fn pair() -> (EncoderPair, Loaded) {
    let p = EncoderPair::open(&fixture_str("bert"), &fixture_str("distilbert"), None).unwrap();
    assert!(
        p.note.as_deref().unwrap().contains("[0, 2, 4, 7, 9, 11]"),
        "{:?}",
        p.note
    );
    let l = Loaded {
        teacher: p.teacher.upload(gpu()).unwrap(),
        student: p.student.upload(gpu()).unwrap(),
    };
    (p, l)
}

#[test]
fn logits_of_bert_distilbert_interpolated_and_naive_match_transformers() {
    let (j, r) = refs();
    let (p, l) = pair();
    let order = PatchOrder::reference(Direction::Last);
    let models = &j["models"];
    let mut cases: Vec<(String, Encoder)> = vec![
        ("bert".into(), l.teacher.clone()),
        ("distilbert".into(), l.student.clone()),
    ];
    // The notebook's n student layers replaced = last-k patching at k = n − 1.
    for n in 1..=5 {
        let (plan, enc) = l.patched(&p.plan, n - 1, &order).unwrap();
        let want: Vec<String> = models[format!("interp_{n}")]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let got: Vec<String> = plan
            .layers
            .iter()
            .map(|s| match s {
                boomgpu::boomerang::LayerSource::Student(i) => format!("student:{i}"),
                boomgpu::boomerang::LayerSource::Teacher(i) => format!("teacher:{i}"),
            })
            .collect();
        assert_eq!(got, want, "interp_{n} layers");
        cases.push((format!("interp_{n}"), enc));
        cases.push((
            format!("naive_{n}"),
            l.naive(&p.plan, Some(n - 1), &order).unwrap(),
        ));
    }
    for (name, enc) in &cases {
        let m = &models[name.as_str()];
        assert_eq!(
            enc.layers.len() as u64,
            m["num_layers"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(enc.params(), m["params"].as_u64().unwrap(), "{name} params");
        let want = r.to_f32(&format!("logits.{name}")).unwrap();
        check_logits(name, &batch_logits(enc, &r), &want);
    }
}

fn pseudo_of(v: &Value) -> f64 {
    v["pseudo_perplexity"].as_f64().unwrap()
}

#[test]
fn pseudo_perplexity_of_every_size_and_the_baseline_match_the_notebook() {
    let (j, _) = refs();
    let m = &j["models"];
    let dir = tmpdir("mlm-eval");
    let text = fixture_path("text.txt");
    let (t, s) = (fixture_str("bert"), fixture_str("distilbert"));
    let csv = dir.join("c.csv");
    let svg = dir.join("c.svg");
    let out = ok(&boomgpu_run(&[
        "eval",
        "--teacher",
        &t,
        "--student",
        &s,
        "--layers",
        "all",
        "--baseline",
        "--json",
        "--data",
        text.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]));
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 7, "student + k = 0…5: {out}");
    let want = |name: &str| m[name]["corpus"]["pseudo_perplexity"].as_f64().unwrap();
    close("student", pseudo_of(&rows[0]), want("distilbert"), 1e-3);
    // The student's own size, naively pruned: BERT's layers [0,2,4,7,9,11].
    close(
        "student naive",
        rows[0]["naive_pseudo_perplexity"].as_f64().unwrap(),
        want("naive_1"),
        1e-3,
    );
    for (n, r) in rows.iter().enumerate().take(6).skip(1) {
        assert_eq!(r["k"].as_u64(), Some(n as u64 - 1));
        close(
            &format!("interp_{n}"),
            pseudo_of(r),
            want(&format!("interp_{n}")),
            1e-3,
        );
        close(
            &format!("naive_{n}"),
            r["naive_pseudo_perplexity"].as_f64().unwrap(),
            want(&format!("naive_{n}")),
            1e-3,
        );
        assert_eq!(
            r["predicted"].as_u64(),
            m["bert"]["corpus"]["tokens"].as_u64()
        );
    }
    close("teacher", pseudo_of(&rows[6]), want("bert"), 1e-3);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.starts_with("label,k,layers,params,weight_bytes,pseudo_perplexity"));
    assert_eq!(csv.lines().count(), 8);
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("naive pruning"));

    // One model, one text.
    let one = dir.join("one.txt");
    std::fs::write(&one, j["single_text"].as_str().unwrap()).unwrap();
    let out = ok(&boomgpu_run(&[
        "eval",
        "--model",
        &s,
        "--json",
        "--data",
        one.to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let single = &m["distilbert"]["single"];
    close("single text", pseudo_of(&v), pseudo_of(single), 1e-3);
    assert_eq!(v["predicted"], single["tokens"]);
}

#[test]
fn exported_sizes_are_bert_folders_with_the_interpolated_logits() {
    let (j, r) = refs();
    let dir = tmpdir("mlm-patch");
    let (t, s) = (fixture_str("bert"), fixture_str("distilbert"));
    for k in [0usize, 2, 4] {
        let out = dir.join(format!("k{k}"));
        let msg = ok(&boomgpu_run(&[
            "patch",
            "--teacher",
            &t,
            "--student",
            &s,
            "--layers",
            &k.to_string(),
            "--out",
            out.to_str().unwrap(),
        ]));
        let name = format!("interp_{}", k + 1);
        let cfg = read_json(&out.join("config.json"));
        assert_eq!(cfg["model_type"], "bert", "{msg}");
        assert_eq!(cfg["num_hidden_layers"], j["models"][&name]["num_layers"]);
        assert_eq!(
            cfg["tie_word_embeddings"], false,
            "student words, teacher head"
        );
        assert!(out.join("tokenizer.json").exists() && out.join("vocab.txt").exists());
        let c = EncoderConfig::from_file(&out.join("config.json")).unwrap();
        let ck = Checkpoint::open(&out).unwrap();
        // Untied, transformers reads the decoder's bias under its own name.
        assert_eq!(
            ck.bytes("cls.predictions.decoder.bias"),
            ck.bytes("cls.predictions.bias")
        );
        let enc = Encoder::load(gpu(), &c, &ck).unwrap();
        // BERT's format adds a token-type table (zeros: DistilBERT has none).
        let types = 2 * 32;
        assert_eq!(
            enc.params(),
            j["models"][&name]["params"].as_u64().unwrap() + types
        );
        let want = r.to_f32(&format!("logits.{name}")).unwrap();
        check_logits(&format!("export k={k}"), &batch_logits(&enc, &r), &want);
    }
    // The top is the teacher: tied again, BERT's own logits.
    let out = dir.join("k5");
    ok(&boomgpu_run(&[
        "patch",
        "--teacher",
        &t,
        "--student",
        &s,
        "--layers",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(
        read_json(&out.join("config.json"))["tie_word_embeddings"],
        true
    );
    let c = EncoderConfig::from_file(&out.join("config.json")).unwrap();
    let enc = Encoder::load(gpu(), &c, &Checkpoint::open(&out).unwrap()).unwrap();
    check_logits(
        "export k=5",
        &batch_logits(&enc, &r),
        &r.to_f32("logits.bert").unwrap(),
    );
}

/// A DistilBERT of width 16 (random weights) with the fixture's tokenizer.
fn narrow_distilbert(dir: &std::path::Path) {
    let mut cfg = read_json(&fixture("distilbert").join("config.json"));
    cfg["dim"] = 16.into();
    cfg["n_heads"] = 2.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let c = EncoderConfig::from_json(cfg).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let e = c.embedding_names();
    shapes.push((e.words, vec![c.vocab_size, 16]));
    shapes.push((e.positions, vec![c.max_position_embeddings, 16]));
    for p in ["weight", "bias"] {
        shapes.push((format!("{}.{p}", e.norm), vec![16]));
    }
    for l in 0..c.num_layers {
        for (part, stored) in c.layer_parts() {
            let shape = c.part_shape(part);
            let name = format!("{}{stored}", c.layer_prefix(l));
            shapes.push((format!("{name}.bias"), shape[..1].to_vec()));
            shapes.push((format!("{name}.weight"), shape));
        }
    }
    let h = c.head_names();
    shapes.push((format!("{}.weight", h.dense), vec![16, 16]));
    shapes.push((format!("{}.bias", h.dense), vec![16]));
    shapes.push((format!("{}.weight", h.norm), vec![16]));
    shapes.push((format!("{}.bias", h.norm), vec![16]));
    shapes.push((h.bias[0].to_string(), vec![c.vocab_size]));
    let tensors = shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let v = seeded(&name, &shape, i as u64);
            (name, (DType::F32, shape, bytemuck::cast_slice(&v).to_vec()))
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt"] {
        std::fs::copy(fixture("distilbert").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn mixed_families_and_foreign_students_are_refused_before_gpu_work() {
    let dir = tmpdir("mlm-bad");
    let text = fixture_path("text.txt");
    let data = text.to_str().unwrap();
    let (t, s) = (fixture_str("bert"), fixture_str("distilbert"));
    let qwen = fixture_str("qwen3");
    for (teacher, student) in [(&t, &qwen), (&qwen, &s)] {
        let e = err(&boomgpu_run(&[
            "eval",
            "--teacher",
            teacher,
            "--student",
            student,
            "--layers",
            "all",
            "--data",
            data,
        ]));
        assert!(e.contains("one family"), "{e}");
        assert!(!e.contains("GPU:"), "refused after opening the GPU: {e}");
        let out = dir.join("x");
        let e = err(&boomgpu_run(&[
            "patch",
            "--teacher",
            teacher,
            "--student",
            student,
            "--layers",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]));
        assert!(e.contains("one family"), "{e}");
        assert!(!out.exists());
    }
    let narrow = dir.join("narrow");
    std::fs::create_dir_all(&narrow).unwrap();
    narrow_distilbert(&narrow);
    let e = err(&boomgpu_run(&[
        "eval",
        "--teacher",
        &t,
        "--student",
        narrow.to_str().unwrap(),
        "--layers",
        "all",
        "--data",
        data,
    ]));
    assert!(e.contains("width is 16 and the teacher's 32"), "{e}");
    assert!(!e.contains("GPU:"), "{e}");
    // The narrow model is a valid encoder by itself.
    let out = ok(&boomgpu_run(&[
        "eval",
        "--model",
        narrow.to_str().unwrap(),
        "--json",
        "--data",
        data,
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(pseudo_of(&v).is_finite() && pseudo_of(&v) > 1.0, "{out}");
    // Decoder commands name what an encoder is good for.
    let e = err(&boomgpu_run(&["chat", "--model", &t, "--prompt", "hi"]));
    assert!(e.contains("is an encoder"), "{e}");
}
