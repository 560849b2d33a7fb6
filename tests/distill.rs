//! Distillation against PyTorch autograd on the reference formula: loss
//! parts and the gradient of every student parameter, for tiny teacher /
//! student pairs of each family (fixtures from make_fixtures.py).

mod common;

use std::path::{Path, PathBuf};

use boomgpu::model::decoder::Decoder;
use boomgpu::model::weights::Checkpoint;
use boomgpu::model::ModelConfig;
use boomgpu::train::loss::{micro_step, LossWeights, MicroBatch};
use boomgpu::train::student::{export_named, StudentParams, Which};
use common::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn load(name: &str, as_f32: bool) -> (ModelConfig, Decoder) {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let dec = Decoder::load(gpu(), &cfg, &ckpt, as_f32).unwrap();
    (cfg, dec)
}

#[test]
fn loss_parts_and_gradients_match_pytorch() {
    let g = gpu();
    for teacher_name in ["llama-tied", "qwen3", "neox"] {
        let sname = format!("{teacher_name}-student");
        let sdir = fixture(&sname);
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sdir.join("distill_ref.json")).unwrap())
                .unwrap();
        let (_, teacher) = load(teacher_name, false);
        let (scfg, student) = load(&sname, true);
        let params = StudentParams::new(g, &student).unwrap();
        let refs = Checkpoint::open_file(&sdir.join("distill_grads.safetensors")).unwrap();
        let ids: Vec<u32> = refs
            .to_f32("input_ids")
            .unwrap()
            .iter()
            .map(|&x| x as u32)
            .collect();
        let shape = refs.tensors["input_ids"].shape.clone();
        let (ns, nt) = (student.layers.len() + 1, teacher.layers.len() + 1);
        let pairs: Vec<(usize, usize)> = r["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let s = p[0].as_i64().unwrap();
                let t = p[1].as_i64().unwrap();
                let s = if s < 0 { ns as i64 + s } else { s } as usize;
                let t = if t < 0 { nt as i64 + t } else { t } as usize;
                (s, t)
            })
            .collect();
        let w = LossWeights {
            kl: r["w_kl"].as_f64().unwrap() as f32,
            cos: r["w_cos"].as_f64().unwrap() as f32,
            temperature: r["tau"].as_f64().unwrap() as f32,
        };
        let mb = MicroBatch {
            ids: &ids,
            batch: shape[0],
            seq: shape[1],
        };
        let mut rec = g.recorder();
        params.zero_grads(&mut rec);
        rec.run().unwrap();
        let parts = micro_step(g, &teacher, &student, &params, &mb, &pairs, &w, 1, true).unwrap();
        for (key, got) in [
            ("loss", parts.loss),
            ("ce", parts.ce),
            ("kl", parts.kl),
            ("cos", parts.cos),
        ] {
            let want = r[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1e-3),
                "{teacher_name}: {key} {got} vs PyTorch {want}"
            );
        }
        let grads = export_named(g, &scfg, &params, Which::Grad).unwrap();
        let mut checked = 0;
        for (name, entry) in &refs.tensors {
            if name == "input_ids" {
                continue;
            }
            let want = refs.to_f32(name).unwrap();
            let (shape, got) = grads
                .get(name)
                .unwrap_or_else(|| panic!("{teacher_name}: no gradient for {name}"));
            assert_eq!(shape, &entry.shape, "{name}");
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_close(
                &format!("{teacher_name} grad {name}"),
                got,
                &want,
                1e-3 * scale,
                1e-3,
            );
            checked += 1;
        }
        assert_eq!(
            checked,
            grads.len(),
            "{teacher_name}: every parameter has a reference gradient"
        );
    }
}
