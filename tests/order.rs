//! Patch orders other than the reference's: a `patch_order` stored in the
//! student's student_config.json (as `boomgpu patch --order auto` writes
//! it) is followed by eval, patch, plan, --fit and chat, and matches
//! transformers evaluating the same construction
//! (tests/fixtures/make_order_fixture.py builds it independently and
//! checks that boomgpu's exported folder loads there); `--order auto` is
//! deterministic and picks the best candidate it scores.

mod common;

use std::path::Path;

use common::*;
use serde_json::{json, Value};

/// A copy of a fixture student whose student_config.json stores `order`.
fn student_with_order(name: &str, tag: &str, order: Option<Value>) -> Scratch {
    let src = fixture(&format!("{name}-distilled"));
    let dst = tmpdir(&format!("order-{name}-{tag}"));
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let p = dst.join("student_config.json");
    let mut v = read_json(&p);
    if let Some(o) = order {
        v["patch_order"] = o;
    }
    std::fs::write(&p, v.to_string()).unwrap();
    dst
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn eval_json(args: &[&str]) -> Value {
    let out = ok(&boomgpu_run(args));
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn stored_orders_match_transformers_in_eval_and_export() {
    let text = fixture_path("text.txt");
    for name in ["llama-tied", "qwen3", "neox"] {
        let t = fixture(name);
        let r = read_json(&fixture(&format!("{name}-distilled")).join("order_ref.json"));
        let patch_ref = read_json(&fixture(&format!("{name}-distilled")).join("patch_ref.json"));
        for base in ["last", "first"] {
            let want = &r[base];
            let order = json!({"base": base, "student_layers": want["student_layers"]});
            let st = student_with_order(name, base, Some(order));
            let w = tmpdir(&format!("order-out-{name}-{base}"));
            let (csv, svg) = (w.join("c.csv"), w.join("c.svg"));
            // Every size, with the reference's order beside it.
            let rows = eval_json(&[
                "eval",
                "--teacher",
                s(&t),
                "--student",
                s(&st),
                "--layers",
                "all",
                "--json",
                "--seq-len",
                "32",
                "--data",
                s(&text),
                "--csv",
                s(&csv),
                "--svg",
                s(&svg),
            ]);
            let sizes = want["sizes"].as_array().unwrap();
            let p = sizes.len() - 1;
            for row in rows.as_array().unwrap() {
                let Some(k) = row["k"].as_u64().map(|k| k as usize) else {
                    continue;
                };
                let reference = patch_ref[base][k]["perplexity"].as_f64().unwrap();
                close(
                    &format!("{name} {base}-{k}"),
                    row["perplexity"].as_f64().unwrap(),
                    reference,
                    1e-3,
                );
                if k == p {
                    assert!(row.get("auto_perplexity").is_none(), "{row}");
                    continue;
                }
                let got = row["auto_perplexity"].as_f64().unwrap();
                let w = sizes[k]["perplexity"].as_f64().unwrap();
                close(&format!("{name} auto({base})-{k}"), got, w, 1e-3);
                assert_eq!(row["auto_layers"], sizes[k]["layers"], "{name} {base} {k}");
            }
            // The orders differ where they should: at k = 1 the models differ.
            let auto1 = sizes[1]["perplexity"].as_f64().unwrap();
            let ref1 = patch_ref[base][1]["perplexity"].as_f64().unwrap();
            assert!(
                rel_diff(auto1, ref1) > 1e-4,
                "{name} {base}: {auto1} vs {ref1}"
            );
            assert!(std::fs::read_to_string(&csv)
                .unwrap()
                .contains("auto_perplexity"));
            assert!(std::fs::read_to_string(&svg)
                .unwrap()
                .contains("auto order"));

            // One size follows the stored order by default, the reference's on request.
            let one = |extra: &[&str]| {
                let mut a = vec![
                    "eval",
                    "--teacher",
                    s(&t),
                    "--student",
                    s(&st),
                    "--layers",
                    "1",
                    "--json",
                    "--seq-len",
                    "32",
                    "--data",
                    s(&text),
                ];
                a.extend_from_slice(extra);
                eval_json(&a)["perplexity"].as_f64().unwrap()
            };
            close(&format!("{name} {base} stored"), one(&[]), auto1, 1e-3);
            close(
                &format!("{name} {base} --order auto"),
                one(&["--order", "auto"]),
                auto1,
                1e-3,
            );
            close(
                &format!("{name} {base} --order {base}"),
                one(&["--order", base]),
                ref1,
                1e-3,
            );

            // The exported size is an ordinary model, scored as transformers scored it.
            let out = w.join("size1");
            let summary = ok(&boomgpu_run(&[
                "patch",
                "--teacher",
                s(&t),
                "--student",
                s(&st),
                "--layers",
                "1",
                "--out",
                s(&out),
            ]));
            assert!(summary.contains("auto order"), "{summary}");
            let prov = read_json(&out.join("boomgpu.json"));
            assert_eq!(prov["order"], "auto");
            assert_eq!(
                prov["patch_order"]["student_layers"],
                want["student_layers"]
            );
            let exported = &want["exported"];
            let got = eval_json(&[
                "eval",
                "--model",
                s(&out),
                "--json",
                "--seq-len",
                "32",
                "--data",
                s(&text),
            ]);
            close(
                &format!("{name} {base} exported"),
                got["perplexity"].as_f64().unwrap(),
                exported["perplexity"].as_f64().unwrap(),
                1e-3,
            );
            std::fs::remove_dir_all(&w).unwrap();
            std::fs::remove_dir_all(&st).unwrap();
        }
    }
}

#[test]
fn plan_fit_and_chat_follow_a_stored_order() {
    let t = fixture("qwen3");
    let order = json!({"base": "last", "student_layers": [0, 1]});
    let st = student_with_order("qwen3", "plan", Some(order));
    let v: Value = serde_json::from_str(&ok(&boomgpu_run(&[
        "plan",
        "--teacher",
        s(&t),
        "--student",
        s(&st),
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["default_order"], "auto");
    assert_eq!(v["patch_order"]["student_layers"], json!([0, 1]));
    let auto = v["auto"].as_array().unwrap();
    assert_eq!(auto[1]["sources"], "T0-1 S1 T4-5");
    assert_eq!(v["last"][1]["sources"], "S0 T2-5");
    // --fit counts the stored order's sizes and names them so.
    let budget = auto[1]["bytes"].as_u64().unwrap() + 2048;
    let w = tmpdir("order-fit");
    let out = boomgpu_run(&[
        "patch",
        "--teacher",
        s(&t),
        "--student",
        s(&st),
        "--fit",
        &budget.to_string(),
        "--ctx",
        "1",
        "--out",
        s(&w.join("m")),
    ]);
    ok(&out);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--layers 1 is auto-1"), "{e}");
    assert_eq!(
        read_json(&w.join("m/boomgpu.json"))["layers_compact"],
        "T0-1 S1 T4-5"
    );
    // chat says which order /layers follows.
    let out = boomgpu_run(&[
        "chat",
        "--teacher",
        s(&t),
        "--student",
        s(&st),
        "--layers",
        "1",
        "--prompt",
        "the",
        "--max-tokens",
        "2",
    ]);
    ok(&out);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("patch order: auto (last-based), student layers [0, 1]"),
        "{e}"
    );
    assert!(e.contains("auto-k patching"), "{e}");
    std::fs::remove_dir_all(&w).unwrap();
    std::fs::remove_dir_all(&st).unwrap();
}

#[test]
fn auto_order_is_deterministic_and_takes_the_best_candidate() {
    let t = fixture("qwen3");
    let st = fixture("qwen3-distilled");
    let text = fixture_path("text.txt");
    let w = tmpdir("order-auto");
    let search = |out: &str| {
        ok(&boomgpu_run(&[
            "patch",
            "--teacher",
            s(&t),
            "--student",
            s(&st),
            "--order",
            "auto",
            "--calibration",
            s(&text),
            "--out",
            s(&w.join(out)),
        ]));
        read_json(&w.join(out).join("student_config.json"))
    };
    let a = search("a");
    let b = search("b");
    assert_eq!(a, b, "two searches on the same text differ");
    let o = &a["patch_order"];
    assert_eq!(o["base"], "last");
    assert_eq!(o["method"], "greedy calibration perplexity");
    assert_eq!(o["calibration"]["tokens"], 1123);
    // The reference's lists are kept; the weights are the student's.
    let orig = read_json(&st.join("student_config.json"));
    assert_eq!(a["copied_teacher_layers"], orig["copied_teacher_layers"]);
    assert_eq!(
        std::fs::read(w.join("a/model.safetensors")).unwrap(),
        std::fs::read(st.join("model.safetensors")).unwrap()
    );
    // With two units, the first step scores both; the recorded perplexity
    // is the lower, and the order starts with the unit that gave it.
    let score = |order: &[u64]| {
        let sd = student_with_order(
            "qwen3",
            &format!("cand{}", order[0]),
            Some(json!({
                "base": "last", "student_layers": order,
            })),
        );
        let v = eval_json(&[
            "eval",
            "--teacher",
            s(&t),
            "--student",
            s(&sd),
            "--layers",
            "1",
            "--json",
            "--data",
            s(&text),
        ]);
        std::fs::remove_dir_all(&sd).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    let (p10, p01) = (score(&[1, 0]), score(&[0, 1]));
    let best = o["calibration"]["perplexity"][0].as_f64().unwrap();
    close("the chosen step", best, p10.min(p01), 1e-9);
    let first = o["student_layers"][0].as_u64().unwrap();
    assert_eq!(first, if p10 <= p01 { 1 } else { 0 }, "{p10} {p01}");
    // eval --order auto --calibration searches the same order.
    let rows = eval_json(&[
        "eval",
        "--teacher",
        s(&t),
        "--student",
        s(&st),
        "--layers",
        "all",
        "--json",
        "--order",
        "auto",
        "--calibration",
        s(&text),
        "--data",
        s(&text),
        "--csv",
        s(&w.join("c.csv")),
        "--svg",
        s(&w.join("c.svg")),
    ]);
    close(
        "eval's search",
        rows[2]["auto_perplexity"].as_f64().unwrap(),
        best,
        1e-9,
    );
    std::fs::remove_dir_all(&w).unwrap();
}

#[test]
fn order_flags_are_checked_before_work() {
    let t = fixture("qwen3");
    let st = fixture("qwen3-distilled");
    let text = fixture_path("text.txt");
    let base = [
        "eval",
        "--teacher",
        s(&t),
        "--student",
        s(&st),
        "--layers",
        "1",
        "--data",
        s(&text),
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        err(&boomgpu_run(&a))
    };
    let e = run(&["--order", "auto"]);
    assert!(
        e.contains("stores no patch order") && e.contains("--calibration TEXT"),
        "{e}"
    );
    let e = run(&["--calibration", s(&text)]);
    assert!(e.contains("add --order auto"), "{e}");
    let e = run(&["--order", "middle"]);
    assert!(e.contains("--order middle") && e.contains("auto"), "{e}");
    let e = run(&["--order", "auto", "--first"]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = run(&[
        "--order",
        "auto",
        "--calibration",
        s(&text),
        "--calibration-tokens",
        "1",
    ]);
    assert!(e.contains("at least 2 tokens"), "{e}");
    let w = tmpdir("order-flags");
    std::fs::write(w.join("empty.txt"), "").unwrap();
    let e = run(&["--order", "auto", "--calibration", s(&w.join("empty.txt"))]);
    assert!(e.contains("0 token(s)"), "{e}");
    // patch needs a size unless it exports a student with a chosen order.
    let e = err(&boomgpu_run(&[
        "patch",
        "--teacher",
        s(&t),
        "--student",
        s(&st),
        "--out",
        s(&w.join("x")),
    ]));
    assert!(e.contains("--layers K or --fit SIZE"), "{e}");
    assert!(!w.join("x").exists());
    // A stored order that is not a permutation of this pair's units.
    let bad = student_with_order(
        "qwen3",
        "bad",
        Some(json!({"base": "last", "student_layers": [1, 1]})),
    );
    let e = err(&boomgpu_run(&[
        "plan",
        "--teacher",
        s(&t),
        "--student",
        s(&bad),
    ]));
    assert!(e.contains("patch_order") && e.contains("once"), "{e}");
    std::fs::remove_dir_all(&bad).unwrap();
    std::fs::remove_dir_all(&w).unwrap();
}
