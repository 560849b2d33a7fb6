//! `boomgpu patch` and `boomgpu plan` on the committed fixtures: tiny
//! teachers `llama-tied`, `qwen3`, `neox` and their perturbed "distilled"
//! students. Every exported size is checked tensor by tensor against the
//! expected teacher/student tensors, and its perplexity (through
//! `boomgpu eval`) against `patch_ref.json`, made by an independent Python
//! implementation of REFERENCE §4 with transformers.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use boomgpu::boomerang::init::encode;
use boomgpu::gpu::DType;
use boomgpu::model::weights::{to_f32, write_safetensors, Checkpoint};

const TEXT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/text.txt");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Where a part of the expected model comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    S,
    T,
}

/// The expected model, written out by hand from REFERENCE §4 for a teacher
/// of 6 layers and a student copying teacher layers [0, 2, 4, 5]
/// (last-k patch points (1, 2), (2, 4); first-k (0, 0), (1, 2)).
struct Expected {
    layers: Vec<(Src, usize)>,
    embed: Src,
    norm: Src,
    head: Src,
    is_teacher: bool,
}

fn expected(direction: &str, k: usize) -> Expected {
    use Src::{S, T};
    let teacher = Expected {
        layers: (0..6).map(|i| (T, i)).collect(),
        embed: T,
        norm: T,
        head: T,
        is_teacher: true,
    };
    let e = |layers: Vec<(Src, usize)>, embed, norm, head| Expected {
        layers,
        embed,
        norm,
        head,
        is_teacher: false,
    };
    match (direction, k) {
        // (s, t) = (2, 4): student 0..2 + teacher 4..6.
        ("last", 0) => e(vec![(S, 0), (S, 1), (T, 4), (T, 5)], S, T, T),
        // (s, t) = (1, 2): student 0..1 + teacher 2..6.
        ("last", 1) => e(vec![(S, 0), (T, 2), (T, 3), (T, 4), (T, 5)], S, T, T),
        // (s, t) = (0, 0): teacher 0..0 + student 0..4.
        ("first", 0) => e(vec![(S, 0), (S, 1), (S, 2), (S, 3)], T, S, S),
        // (s, t) = (1, 2): teacher 0..2 + student 1..4.
        ("first", 1) => e(vec![(T, 0), (T, 1), (S, 1), (S, 2), (S, 3)], T, S, S),
        (_, 2) => teacher,
        _ => unreachable!(),
    }
}

struct Family {
    /// Fixture folder of the teacher (`<name>-distilled` is the student).
    name: &'static str,
    layer_prefix: &'static str,
    embed: &'static str,
    head: &'static str,
    default_direction: &'static str,
}

const LLAMA: Family = Family {
    name: "llama-tied",
    layer_prefix: "model.layers.",
    embed: "model.embed_tokens.weight",
    head: "lm_head.weight",
    default_direction: "first",
};
const QWEN3: Family = Family {
    name: "qwen3",
    layer_prefix: "model.layers.",
    embed: "model.embed_tokens.weight",
    head: "lm_head.weight",
    default_direction: "last",
};
const NEOX: Family = Family {
    name: "neox",
    layer_prefix: "gpt_neox.layers.",
    embed: "gpt_neox.embed_in.weight",
    head: "embed_out.weight",
    default_direction: "last",
};

fn is_final_norm(name: &str) -> bool {
    name.starts_with("model.norm.") || name.starts_with("gpt_neox.final_layer_norm.")
}

/// Tensor name → (stored dtype, bytes) of the expected model, built from
/// the two checkpoints by name (independently of boomgpu's model tables).
fn expected_tensors(
    f: &Family,
    e: &Expected,
    teacher: &Checkpoint,
    student: &Checkpoint,
    teacher_tied: bool,
    student_tied: bool,
) -> BTreeMap<String, (safetensors::Dtype, Vec<u8>)> {
    let ck = |p: Src| if p == Src::T { teacher } else { student };
    let tied_of = |p: Src| {
        if p == Src::T {
            teacher_tied
        } else {
            student_tied
        }
    };
    let get = |p: Src, name: &str| {
        let c = ck(p);
        (
            c.tensors[name].dtype,
            c.bytes(name).unwrap_or_else(|| panic!("{name}")).to_vec(),
        )
    };
    let mut out = BTreeMap::new();
    out.insert(f.embed.to_string(), get(e.embed, f.embed));
    for (j, &(p, i)) in e.layers.iter().enumerate() {
        let src = format!("{}{i}.", f.layer_prefix);
        let n = ck(p)
            .tensors
            .keys()
            .filter(|k| k.starts_with(&src))
            .map(|k| {
                let dst = format!("{}{j}.{}", f.layer_prefix, &k[src.len()..]);
                out.insert(dst, get(p, k));
            })
            .count();
        assert!(n >= 9, "{src}: {n} tensors");
    }
    for name in ck(e.norm).tensors.keys().filter(|k| is_final_norm(k)) {
        out.insert(name.clone(), get(e.norm, name));
    }
    let tied = e.embed == e.head && tied_of(e.head);
    if !tied {
        let src = if tied_of(e.head) { f.embed } else { f.head };
        out.insert(f.head.to_string(), get(e.head, src));
    }
    out
}

/// `boomgpu patch --teacher --student --layers k --out` and `extra` flags.
fn patch(teacher: &Path, student: &Path, k: usize, out: &Path, extra: &[&str]) -> Output {
    let ks = k.to_string();
    let mut args = vec![
        "patch",
        "--teacher",
        s(teacher),
        "--student",
        s(student),
        "--layers",
        &ks,
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    boomgpu_run(&args)
}

/// `boomgpu plan --teacher --student` and `extra` flags.
fn plan(teacher: &Path, student: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["plan", "--teacher", s(teacher), "--student", s(student)];
    args.extend_from_slice(extra);
    boomgpu_run(&args)
}

fn perplexity(dir: &Path) -> f64 {
    let out = ok(&boomgpu_run(&[
        "eval",
        "--model",
        s(dir),
        "--data",
        TEXT,
        "--seq-len",
        "32",
        "--json",
    ]));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    v["perplexity"].as_f64().unwrap()
}

fn no_leftovers(parent: &Path) {
    for e in std::fs::read_dir(parent).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".tmp-") && !n.contains(".old-"), "leftover {n}");
    }
}

/// Every k in both orders: tensors byte-exact, config right, perplexity
/// as in patch_ref.json, plan --json sizes equal to the exported sizes.
fn check_family(f: &Family) {
    let tdir = fixture(f.name);
    let sdir = fixture(&format!("{}-distilled", f.name));
    let tmp = tmpdir(f.name);
    let teacher = Checkpoint::open(&tdir).unwrap();
    let student = Checkpoint::open(&sdir).unwrap();
    let tcfg = read_json(&tdir.join("config.json"));
    let scfg = read_json(&sdir.join("config.json"));
    let teacher_tied = tcfg["tie_word_embeddings"].as_bool().unwrap();
    let student_tied = scfg["tie_word_embeddings"].as_bool().unwrap();
    let refs = read_json(&sdir.join("patch_ref.json"));

    let planned: Value = serde_json::from_str(&ok(&plan(&tdir, &sdir, &["--json"]))).unwrap();
    assert_eq!(planned["default_direction"], f.default_direction);

    for direction in ["last", "first"] {
        let rows = planned[direction].as_array().unwrap();
        let refs = refs[direction].as_array().unwrap();
        assert_eq!(rows.len(), 3, "P + 1 rows");
        assert_eq!(refs.len(), 3);
        for k in 0..3 {
            let e = expected(direction, k);
            let out = tmp.join(format!("{direction}-{k}"));
            let flag = format!("--{direction}");
            let text = ok(&patch(&tdir, &sdir, k, &out, &[&flag]));
            assert!(text.contains(&format!("k = {k} of 0..=2")), "{text}");
            let what = format!("{} {direction} k={k}", f.name);

            // Tensors: exactly the expected ones, byte for byte, stored dtypes kept.
            let got = Checkpoint::open(&out).unwrap();
            let want = expected_tensors(f, &e, &teacher, &student, teacher_tied, student_tied);
            let names: Vec<&String> = got.tensors.keys().collect();
            assert_eq!(names, want.keys().collect::<Vec<_>>(), "{what}");
            for (name, (dtype, bytes)) in &want {
                assert_eq!(got.tensors[name].dtype, *dtype, "{what} {name}");
                assert!(
                    got.bytes(name).unwrap() == &bytes[..],
                    "{what}: {name} differs"
                );
            }

            // config.json
            let cfg = read_json(&out.join("config.json"));
            let n = e.layers.len();
            assert_eq!(cfg["num_hidden_layers"], n, "{what}");
            let tied = e.embed == e.head && teacher_tied;
            assert_eq!(
                cfg["tie_word_embeddings"].as_bool().unwrap(),
                tied,
                "{what}"
            );
            assert_eq!(got.tensors.contains_key(f.head), !tied, "{what}");
            if f.name == "llama-tied" {
                // Embedding and head from different models whenever patched.
                assert_eq!(tied, e.is_teacher, "{what}");
            }
            if let Some(types) = cfg.get("layer_types") {
                assert_eq!(types.as_array().unwrap().len(), n, "{what}");
            }
            for (key, v) in tcfg.as_object().unwrap() {
                if !["num_hidden_layers", "tie_word_embeddings", "layer_types"]
                    .contains(&key.as_str())
                {
                    assert_eq!(&cfg[key], v, "{what}: config '{key}'");
                }
            }
            if e.is_teacher {
                assert_eq!(
                    std::fs::read(out.join("config.json")).unwrap(),
                    std::fs::read(tdir.join("config.json")).unwrap(),
                    "{what}: the teacher's own config.json"
                );
            }
            for file in [
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
            ] {
                assert_eq!(
                    std::fs::read(out.join(file)).unwrap(),
                    std::fs::read(tdir.join(file)).unwrap(),
                    "{what}: {file}"
                );
            }
            assert!(!out.join("student_config.json").exists());

            // boomgpu.json
            let prov = read_json(&out.join("boomgpu.json"));
            assert_eq!(prov["k"], k);
            assert_eq!(prov["direction"], direction);
            assert_eq!(prov["is_teacher"], e.is_teacher);
            assert_eq!(prov["num_hidden_layers"], n);
            let srcs: Vec<String> = e.layers.iter().map(|(p, i)| format!("{p:?}{i}")).collect();
            assert_eq!(prov["layers"], serde_json::json!(srcs), "{what}");
            let part = |p: Src| if p == Src::S { "student" } else { "teacher" };
            assert_eq!(prov["embed"], part(e.embed));
            assert_eq!(prov["final_norm"], part(e.norm));
            assert_eq!(prov["lm_head"], part(e.head));
            assert_eq!(prov["teacher"]["ref"], s(&tdir));
            assert_eq!(prov["student"]["ref"], s(&sdir));
            assert_eq!(
                Path::new(prov["student"]["path"].as_str().unwrap()),
                sdir.canonicalize().unwrap()
            );
            assert_eq!(prov["student"]["layers_from"], "student_config.json");

            // plan --json describes what patch wrote.
            let row = &rows[k];
            let params: u64 = got
                .tensors
                .values()
                .map(|t| t.shape.iter().product::<usize>() as u64)
                .sum();
            let bytes: u64 = got.tensors.values().map(|t| (t.end - t.start) as u64).sum();
            assert_eq!(row["k"], k);
            assert_eq!(row["layers"], n, "{what}");
            assert_eq!(row["params"], params, "{what}");
            assert_eq!(row["bytes"], bytes, "{what}");
            assert_eq!(row["is_teacher"], e.is_teacher, "{what}");
            assert_eq!(row["tie_word_embeddings"], tied, "{what}");
            assert_eq!(row["layer_sources"], serde_json::json!(srcs), "{what}");
            assert_eq!(row["default_direction"], direction == f.default_direction);

            // Perplexity of the exported folder vs the Python reference.
            let r = &refs[k];
            assert_eq!(r["k"], k);
            assert_eq!(r["layers"], n, "{what}");
            assert_eq!(r["is_teacher"], e.is_teacher, "{what}");
            let want_ppl = r["perplexity"].as_f64().unwrap();
            let ppl = perplexity(&out);
            assert!(
                ((ppl - want_ppl) / want_ppl).abs() < 1e-3,
                "{what}: perplexity {ppl} vs reference {want_ppl}"
            );
        }
    }

    // Without --first/--last: the family's default order.
    let out = tmp.join("default");
    ok(&patch(&tdir, &sdir, 1, &out, &[]));
    assert_eq!(
        read_json(&out.join("boomgpu.json"))["direction"],
        f.default_direction
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(
            tmp.join(format!("{}-1", f.default_direction))
                .join("model.safetensors")
        )
        .unwrap()
    );
    no_leftovers(&tmp);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn llama_tied_every_size() {
    check_family(&LLAMA);
}

#[test]
fn qwen3_every_size() {
    check_family(&QWEN3);
}

#[test]
fn gpt_neox_every_size() {
    check_family(&NEOX);
}

#[test]
fn errors_out_of_range_existing_out_and_flags() {
    let tmp = tmpdir("errors");
    let (tdir, sdir) = (fixture("qwen3"), fixture("qwen3-distilled"));
    let out = tmp.join("m");
    let e = err(&patch(&tdir, &sdir, 3, &out, &[]));
    assert!(
        e.contains("--layers 3 is out of range") && e.contains("0..=2"),
        "{e}"
    );
    let e = err(&patch(&tdir, &sdir, 3, &out, &["--first"]));
    assert!(e.contains("0..=2"), "{e}");
    assert!(!out.exists());

    ok(&patch(&tdir, &sdir, 0, &out, &[]));
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let e = err(&patch(&tdir, &sdir, 1, &out, &[]));
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    ok(&patch(&tdir, &sdir, 1, &out, &["--force"]));
    assert_eq!(read_json(&out.join("config.json"))["num_hidden_layers"], 5);
    // --out must not hold an input.
    let e = err(&patch(&tdir, &sdir, 1, &sdir, &["--force"]));
    assert!(e.contains("holds the student"), "{e}");
    // --first and --last exclude each other.
    let e = err(&patch(&tdir, &sdir, 1, &out, &["--first", "--last"]));
    assert!(e.contains("cannot be used with"), "{e}");
    // Flags that contradict student_config.json.
    let e = err(&plan(&tdir, &sdir, &["--every", "3"]));
    assert!(e.contains("student_config.json says"), "{e}");
    // A student of another teacher.
    let e = err(&plan(&tdir, &fixture("neox-distilled"), &[]));
    assert!(e.contains("model_type qwen3 vs gpt_neox"), "{e}");
    no_leftovers(&tmp);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A copy of a fixture folder without some files.
fn copy_without(src: &Path, dst: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if !skip.contains(&n.as_str()) {
            std::fs::copy(e.path(), dst.join(&n)).unwrap();
        }
    }
}

#[test]
fn student_without_student_config_needs_the_flags() {
    let tmp = tmpdir("nosc");
    let tdir = fixture("llama-tied");
    let sdir = tmp.join("student");
    copy_without(
        &fixture("llama-tied-distilled"),
        &sdir,
        &["student_config.json", "patch_ref.json"],
    );
    let out = tmp.join("m");
    let e = err(&patch(&tdir, &sdir, 1, &out, &[]));
    assert!(
        e.contains("student_config.json") && e.contains("--every/--keep-first/--keep-last"),
        "{e}"
    );
    let e = err(&plan(&tdir, &sdir, &[]));
    assert!(e.contains("--every/--keep-first/--keep-last"), "{e}");
    assert!(!out.exists());

    // With the flags: the same model as with the file.
    ok(&patch(&tdir, &sdir, 1, &out, &["--every", "2"]));
    let prov = read_json(&out.join("boomgpu.json"));
    assert_eq!(
        prov["student"]["layers_from"],
        "--every 2 --keep-first 1 --keep-last 2"
    );
    let with_file = tmp.join("m2");
    ok(&patch(
        &tdir,
        &fixture("llama-tied-distilled"),
        1,
        &with_file,
        &[],
    ));
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(with_file.join("model.safetensors")).unwrap()
    );
    let planned: Value =
        serde_json::from_str(&ok(&plan(&tdir, &sdir, &["--keep-last", "2", "--json"]))).unwrap();
    assert_eq!(planned["first"].as_array().unwrap().len(), 3);
    // Flags that do not fit the student's layer count.
    let e = err(&plan(&tdir, &sdir, &["--every", "4"]));
    assert!(e.contains("has 4 layers"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn mixed_dtypes_are_kept() {
    // A bf16 copy of the qwen3 student, patched into the f32 teacher.
    let tmp = tmpdir("bf16");
    let tdir = fixture("qwen3");
    let src = fixture("qwen3-distilled");
    let sdir = tmp.join("student");
    copy_without(&src, &sdir, &["model.safetensors", "patch_ref.json"]);
    let ck = Checkpoint::open(&src).unwrap();
    let mut tensors = BTreeMap::new();
    for (name, e) in &ck.tensors {
        let v = to_f32(ck.bytes(name).unwrap(), DType::F32);
        tensors.insert(
            name.clone(),
            (
                DType::BF16,
                e.shape.clone(),
                encode(&v, safetensors::Dtype::BF16),
            ),
        );
    }
    write_safetensors(&sdir.join("model.safetensors"), &tensors, None).unwrap();
    let out = tmp.join("m");
    let text = ok(&patch(&tdir, &sdir, 1, &out, &["--last"]));
    assert!(text.contains("(bf16, f32)"), "{text}");
    let got = Checkpoint::open(&out).unwrap();
    let student = Checkpoint::open(&sdir).unwrap();
    use safetensors::Dtype::{BF16, F32};
    assert_eq!(got.tensors["model.embed_tokens.weight"].dtype, BF16);
    assert_eq!(got.tensors["model.layers.0.mlp.up_proj.weight"].dtype, BF16);
    assert_eq!(got.tensors["model.layers.1.mlp.up_proj.weight"].dtype, F32);
    assert_eq!(got.tensors["model.norm.weight"].dtype, F32);
    assert_eq!(got.tensors["lm_head.weight"].dtype, F32);
    assert_eq!(
        got.bytes("model.layers.0.self_attn.q_norm.weight"),
        student.bytes("model.layers.0.self_attn.q_norm.weight")
    );
    let planned: Value = serde_json::from_str(&ok(&plan(&tdir, &sdir, &["--json"]))).unwrap();
    let bytes: u64 = got.tensors.values().map(|t| (t.end - t.start) as u64).sum();
    assert_eq!(planned["last"][1]["bytes"], bytes);
    assert!(
        planned["student"]["bytes"].as_u64().unwrap() * 2 == {
            let c = Checkpoint::open(&src).unwrap();
            c.tensors
                .values()
                .map(|t| (t.end - t.start) as u64)
                .sum::<u64>()
        }
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn plan_table_marks_default_teacher_and_student() {
    let out = ok(&plan(
        &fixture("llama-tied"),
        &fixture("llama-tied-distilled"),
        &[],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        out.contains("valid --layers: first 0..=2, last 0..=2"),
        "{out}"
    );
    let row = |prefix: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row '{prefix}' in\n{out}"))
    };
    assert!(row("-  ").contains("the student itself"), "{out}");
    assert!(row("first*  1").contains("T0-1 S1-3"), "{out}");
    assert!(row("first*  2").contains("the teacher itself"), "{out}");
    assert!(row("last    0").contains("S0-1 T4-5"), "{out}");
    assert!(row("last    2").contains("the teacher itself"), "{out}");
    assert!(out.contains("* default order for llama"), "{out}");
}
