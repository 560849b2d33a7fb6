//! Distillation against PyTorch autograd on the reference formula: loss
//! parts and the gradient of every student parameter, for tiny teacher /
//! student pairs of each family (fixtures from make_fixtures.py).

mod common;

use boomgpu::model::decoder::Decoder;
use boomgpu::model::weights::Checkpoint;
use boomgpu::model::ModelConfig;
use boomgpu::train::loss::{micro_step, MicroBatch};
use boomgpu::train::student::{export_named, StudentParams, Which};
use common::*;

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
        let r = read_json(&sdir.join("distill_ref.json"));
        let (_, teacher) = load(teacher_name, false);
        let (scfg, student) = load(&sname, true);
        let params = StudentParams::new(g, &student).unwrap();
        let refs = Checkpoint::open_file(&sdir.join("distill_grads.safetensors")).unwrap();
        let (ids, shape) = reference_batch(&refs);
        let (pairs, w) =
            reference_loss_setup(&r, student.layers.len() + 1, teacher.layers.len() + 1);
        let mb = MicroBatch {
            ids: &ids,
            batch: shape[0],
            seq: shape[1],
        };
        // One micro-step from zeroed gradients, with or without activation
        // checkpointing.
        let step = |ckpt: bool| {
            let mut rec = g.recorder();
            params.zero_grads(&mut rec);
            rec.run().unwrap();
            micro_step(
                g, &teacher, &student, &params, &mb, &pairs, &w, 1, true, ckpt, None,
            )
            .unwrap()
        };
        // With activation checkpointing first: the same loss and gradients.
        let ck = step(true);
        let ck_grads = export_named(g, &scfg, &params, Which::Grad).unwrap();
        let parts = step(false);
        assert_eq!(ck, parts, "{teacher_name}: checkpointed loss differs");
        check_loss_parts(teacher_name, &parts, &r);
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
            // Recomputing layers in backward gives the same gradients.
            let ck = &ck_grads[name].1;
            assert_close(
                &format!("{teacher_name} checkpointed grad {name}"),
                ck,
                got,
                1e-6 * scale,
                1e-5,
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

mod training {
    use super::*;
    use boomgpu::model::tokenizer::Tokenizer;
    use boomgpu::train::data::{token_stream, Corpus};
    use boomgpu::train::run::{DistillOptions, Trainer};

    fn corpus(seq: usize, eval_tokens: usize) -> Corpus {
        let dir = fixture("llama-tied");
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let tok = Tokenizer::from_dir(&dir, &cfg.eos_token_ids, cfg.bos_token_id).unwrap();
        let text = fixture_path("text.txt");
        let stream = token_stream(&[text], &tok, cfg.eos_token_ids[0], cfg.vocab_size).unwrap();
        Corpus::pack(&stream, seq, eval_tokens).unwrap()
    }

    fn pairs() -> Vec<(usize, usize)> {
        // L = 6: copied 0,2,4,5 → {0:0, 1:2, 2:4, 3:5, -1:-1}.
        vec![(0, 0), (1, 2), (2, 4), (3, 5), (4, 6)]
    }

    #[test]
    fn lr_schedule_is_cosine_with_warmup() {
        let o = DistillOptions {
            steps: 500,
            ..Default::default()
        };
        assert_eq!(o.warmup_steps(), 5);
        assert_eq!(o.lr_at(0), 0.0);
        assert!((o.lr_at(5) - 3e-4).abs() < 1e-10);
        assert!((o.lr_at(2) - 1.2e-4).abs() < 1e-10);
        assert!((o.lr_at(252) - 1.5e-4).abs() < 1e-6, "{}", o.lr_at(252));
        assert!(o.lr_at(499) < 1e-7);
    }

    #[test]
    fn training_lowers_held_out_loss() {
        let g = gpu();
        let c = corpus(24, 96);
        let (_, teacher) = load("llama-tied", false);
        let (_, student) = load("llama-tied-student", true);
        let opts = DistillOptions {
            steps: 12,
            batch: 2,
            lr: 3e-3,
            warmup: 0.0,
            ..Default::default()
        };
        let mut tr = Trainer::new(g, &teacher, student, pairs(), &c, opts).unwrap();
        let before = tr.evaluate().unwrap().unwrap();
        let mut first = None;
        for _ in 0..12 {
            let log = tr.train_step().unwrap();
            assert!(log.loss.is_finite() && log.grad_norm > 0.0);
            first.get_or_insert(log);
        }
        let after = tr.evaluate().unwrap().unwrap();
        assert!(
            after.ce < before.ce,
            "held-out CE {} -> {}",
            before.ce,
            after.ce
        );
        assert!(
            after.cos < before.cos,
            "held-out cos {} -> {}",
            before.cos,
            after.cos
        );
        assert!(after.loss < before.loss);
        assert_eq!(first.unwrap().step, 1);
    }

    #[test]
    fn resume_gives_bit_identical_weights() {
        let g = gpu();
        let c = corpus(16, 0);
        let (_, teacher) = load("llama-tied", false);
        let opts = DistillOptions {
            steps: 4,
            batch: 2,
            grad_accum: 2,
            lr: 1e-3,
            warmup: 1.0,
            seed: 3,
            ..Default::default()
        };
        let (scfg, student) = load("llama-tied-student", true);
        let mut full = Trainer::new(g, &teacher, student, pairs(), &c, opts.clone()).unwrap();
        for _ in 0..4 {
            full.train_step().unwrap();
        }
        let want = export_named(g, &scfg, &full.params, Which::Value).unwrap();
        drop(full);

        let dir = std::env::temp_dir().join(format!("boomgpu-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_, student) = load("llama-tied-student", true);
        let mut first = Trainer::new(g, &teacher, student, pairs(), &c, opts.clone()).unwrap();
        for _ in 0..2 {
            first.train_step().unwrap();
        }
        first.save_checkpoint(&scfg, &dir).unwrap();
        drop(first);
        // A fresh process would load the student from the checkpoint.
        let ck = dir.join("checkpoint");
        let cfg2 = ModelConfig::from_file(&ck.join("config.json")).unwrap();
        let st = Decoder::load(g, &cfg2, &Checkpoint::open(&ck).unwrap(), true).unwrap();
        let mut second = Trainer::new(g, &teacher, st, pairs(), &c, opts).unwrap();
        second.restore(&ck).unwrap();
        assert_eq!(second.step, 2);
        for _ in 0..2 {
            second.train_step().unwrap();
        }
        let got = export_named(g, &cfg2, &second.params, Which::Value).unwrap();
        for (name, (_, w)) in &want {
            let (_, gv) = &got[name];
            let same = w.iter().zip(gv).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name} differs after resume");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
