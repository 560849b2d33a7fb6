//! Inference: greedy generation against transformers, KV-cache decoding
//! against recomputing the whole sequence, the GPU sampler against its CPU
//! reference (and the reference against transformers' warpers), seeds,
//! streaming text, chat prompts and `boomgpu chat` driven through stdin.

mod common;

use std::io::Write;
use std::process::Stdio;

use boomgpu::gpu::DType;
use boomgpu::infer::chat::{ChatTemplate, Message};
use boomgpu::infer::generate::TextStream;
use boomgpu::infer::{generate, GenOptions, HostRng, KvCache, Session, StopReason};
use boomgpu::model::decoder::{Batch, Decoder};
use boomgpu::model::tokenizer::Tokenizer;
use boomgpu::model::weights::Checkpoint;
use boomgpu::model::ModelConfig;
use boomgpu::ops::sample::{self, SampleParams};
use common::*;

const MODELS: &[&str] = &["llama-tied", "llama-rope3", "qwen3", "neox", "neox-seq"];

fn load(name: &str) -> (Decoder, Tokenizer) {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let dec = Decoder::load(gpu(), &cfg, &ckpt, false).unwrap();
    let tok = Tokenizer::from_dir(&dir, &cfg.eos_token_ids, cfg.bos_token_id).unwrap();
    (dec, tok)
}

fn refs() -> serde_json::Value {
    read_json(&fixture_path("generate.json"))
}

#[test]
fn greedy_ids_match_transformers() {
    let r = refs();
    let n = r["new_tokens"].as_u64().unwrap() as usize;
    for name in MODELS {
        let (dec, tok) = load(name);
        let mut cache = KvCache::for_decoder(gpu(), &dec, 256).unwrap();
        for case in r["models"][name].as_array().unwrap() {
            let prompt = ids_of(&case["prompt_ids"]);
            assert_eq!(
                tok.encode(case["prompt"].as_str().unwrap(), false).unwrap(),
                prompt,
                "{name}: tokenisation"
            );
            let opts = GenOptions {
                max_tokens: n,
                sampling: SampleParams {
                    repetition_penalty: case["repetition_penalty"].as_f64().unwrap() as f32,
                    ..SampleParams::greedy()
                },
                stop: vec![],
                eos_ids: vec![],
            };
            let run = |cache: &mut KvCache| {
                let mut rng = HostRng::new(0);
                generate(
                    gpu(),
                    &dec,
                    cache,
                    &prompt,
                    &opts,
                    &mut rng,
                    None,
                    None,
                    &mut |_| {},
                )
                .unwrap()
            };
            // A fresh cache per case, and also a warm one (prefix re-use).
            cache.clear();
            let g = run(&mut cache);
            let want = ids_of(&case["ids"]);
            assert_eq!(
                g.ids, want,
                "{name} {:?} penalty {}",
                case["prompt"], case["repetition_penalty"]
            );
            assert_eq!(g.stop, StopReason::MaxTokens);
            if case != &r["models"][name][0] {
                continue;
            }
            let again = run(&mut cache);
            assert_eq!(again.ids, want, "{name}: with the prompt's rows cached");
            assert_eq!(again.stats.reused_tokens, prompt.len() - 1);
        }
    }
}

/// Logits of every position of `ids` by the plain forward pass.
fn full_logits(dec: &Decoder, ids: &[u32]) -> Vec<f32> {
    let g = gpu();
    let t = ids.len();
    let tids = g.upload_u32("ids", &[t], ids).unwrap();
    let pos: Vec<u32> = (0..t as u32).collect();
    let tpos = g.upload_u32("pos", &[t], &pos).unwrap();
    let mut rec = g.recorder();
    let b = Batch {
        ids: &tids,
        positions: &tpos,
        batch: 1,
        seq: t,
        mask: None,
    };
    let out = dec.forward(&mut rec, &b, false, false).unwrap();
    rec.run().unwrap();
    boomgpu::model::head::read_logits(g, dec, &out.normed).unwrap()
}

#[test]
fn kv_cache_decoding_equals_recomputing() {
    let g = gpu();
    // Every family with the device's choice of kernels, and two (one with
    // biases) with gemv forced for the decode steps.
    let runs = MODELS.iter().map(|m| (*m, None)).chain([
        ("qwen3", Some(true)),
        ("neox", Some(true)),
        ("llama-tied", Some(false)),
    ]);
    // Each model with an f32 cache (the reference: the same values as
    // recomputing) and an f16 one (K and V rounded to f16).
    let runs = runs
        .into_iter()
        .flat_map(|r| [(r, DType::F32, 2e-4f32), (r, DType::F16, 3e-3)]);
    for ((name, gemv), kv_dtype, tol) in runs {
        let (dec, tok) = load(name);
        let dec = dec.with_decode_gemv(gemv).with_kv_dtype(kv_dtype).unwrap();
        let name = format!("{name} (gemv {gemv:?}, {} KV)", kv_dtype.name());
        let vocab = dec.cfg.vocab_size;
        let ids = tok
            .encode(
                "The baker opens his shop before dawn and weighs the flour.",
                false,
            )
            .unwrap();
        assert!(ids.len() >= 14, "{}", ids.len());
        let ids = &ids[..14];
        let full = full_logits(&dec, ids);
        let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
        // Chunks of 4 rows: the cache grows (and copies) several times.
        let kv = dec.cfg.num_kv_heads * dec.cfg.head_dim;
        let cache = KvCache::for_decoder(g, &dec, 64).unwrap();
        assert_eq!(cache.dtype(), kv_dtype);
        let mut cache = KvCache::new(g, dec.layers.len(), kv, (64, 4), kv_dtype).unwrap();
        // Prefill 5, a chunk of 3 (gemv path), a chunk of 5 (matmul path), then one by one.
        let mut at = 0;
        for n in [5usize, 3, 5, 1] {
            let mut rec = g.recorder();
            let logits = dec
                .forward_cached(&mut rec, &ids[at..at + n], &mut cache, true)
                .unwrap();
            rec.run().unwrap();
            let got = g.read_f32(&logits).unwrap();
            assert_close(
                &format!("{name}: rows {at}..{}", at + n),
                &got,
                &full[at * vocab..(at + n) * vocab],
                tol * scale,
                0.0,
            );
            at += n;
        }
        assert_eq!(cache.len(), 14);
        assert!(cache.capacity() >= 14 && cache.capacity() <= 16);
        // Decoding the last token alone (logits of the last row only)
        // after truncating the cache.
        cache.truncate(13);
        let mut rec = g.recorder();
        let logits = dec
            .forward_cached(&mut rec, &ids[13..], &mut cache, false)
            .unwrap();
        rec.run().unwrap();
        assert_eq!(logits.shape(), &[1, vocab]);
        assert_close(
            &format!("{name}: last row"),
            &g.read_f32(&logits).unwrap(),
            &full[13 * vocab..],
            tol * scale,
            0.0,
        );
    }
}

/// A KV cache in blocks of 5 rows (as a long context is over the binding
/// limit): new rows cross block boundaries, blocks grow in 4-row chunks,
/// and attention reads the blocks in turn; the logits of recomputing.
#[test]
fn kv_cache_in_blocks_equals_recomputing() {
    let g = gpu();
    for (name, kv_dtype, tol) in MODELS
        .iter()
        .flat_map(|&m| [(m, DType::F32, 2e-4f32), (m, DType::F16, 3e-3)])
    {
        let (dec, tok) = load(name);
        let vocab = dec.cfg.vocab_size;
        let ids = tok
            .encode(
                "The river below the old mill runs slowly past the stones.",
                false,
            )
            .unwrap();
        let ids = &ids[..14.min(ids.len())];
        let full = full_logits(&dec, ids);
        let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
        let kv = dec.cfg.num_kv_heads * dec.cfg.head_dim;
        let mut cache = KvCache::in_blocks(g, dec.layers.len(), kv, (64, 4, 5), kv_dtype).unwrap();
        let mut at = 0;
        for n in [6usize, 1, 4, 1, 1, 1] {
            let n = n.min(ids.len() - at);
            if n == 0 {
                break;
            }
            let mut rec = g.recorder();
            let logits = dec
                .forward_cached(&mut rec, &ids[at..at + n], &mut cache, true)
                .unwrap();
            rec.run().unwrap();
            assert_close(
                &format!(
                    "{name} ({} KV): rows {at}..{} over {} blocks",
                    kv_dtype.name(),
                    at + n,
                    cache.blocks()
                ),
                &g.read_f32(&logits).unwrap(),
                &full[at * vocab..(at + n) * vocab],
                tol * scale,
                0.0,
            );
            at += n;
        }
        assert!(cache.blocks() >= 3, "{name}: {} blocks", cache.blocks());
        assert_eq!(
            cache.bytes(),
            (2 * dec.layers.len() * cache.capacity() * kv * kv_dtype.size()) as u64
        );
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let (dec, _) = load("qwen3");
    let mut cache = KvCache::for_decoder(gpu(), &dec, 8).unwrap();
    let prompt: Vec<u32> = (0..9).collect();
    let e = generate(
        gpu(),
        &dec,
        &mut cache,
        &prompt,
        &GenOptions::default(),
        &mut HostRng::new(1),
        None,
        None,
        &mut |_| {},
    )
    .err()
    .expect("too long")
    .to_string();
    assert!(
        e.contains("context of 8 tokens") && e.contains("--max-context"),
        "{e}"
    );
    // A prompt that fills the context exactly gets one token, then stops.
    let g = generate(
        gpu(),
        &dec,
        &mut cache,
        &prompt[..8],
        &GenOptions::default(),
        &mut HostRng::new(1),
        None,
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((g.ids.len(), g.stop), (1, StopReason::ContextFull));
}

// ---------------------------------------------------------------- sampling

fn configs() -> Vec<SampleParams> {
    let t = |temperature| SampleParams {
        temperature,
        ..Default::default()
    };
    vec![
        t(1.0),
        t(0.7),
        SampleParams { top_k: 1, ..t(1.0) },
        SampleParams { top_k: 7, ..t(0.8) },
        SampleParams {
            top_k: 50,
            ..t(1.3)
        },
        SampleParams {
            top_p: 0.9,
            ..t(1.0)
        },
        SampleParams {
            top_p: 0.5,
            ..t(0.6)
        },
        SampleParams {
            top_p: 0.0,
            ..t(1.0)
        },
        SampleParams {
            min_p: 0.1,
            ..t(1.0)
        },
        SampleParams {
            top_k: 20,
            top_p: 0.95,
            min_p: 0.05,
            ..t(0.6)
        },
        SampleParams {
            top_k: 40,
            top_p: 0.8,
            repetition_penalty: 1.3,
            ..t(0.9)
        },
        SampleParams {
            repetition_penalty: 0.8,
            ..SampleParams::greedy()
        },
        SampleParams {
            repetition_penalty: 1.5,
            ..SampleParams::greedy()
        },
    ]
}

/// Random logits with some exact ties (rounded to 1/8) and -inf entries.
fn logits(rng: &mut Rng, n: usize, spread: f32) -> Vec<f32> {
    let mut v = rng.vec(n, spread);
    for (i, x) in v.iter_mut().enumerate() {
        if i % 5 == 0 {
            *x = (*x * 8.0).round() / 8.0;
        }
        if i % 97 == 13 {
            *x = f32::NEG_INFINITY;
        }
    }
    v
}

#[test]
fn gpu_sampler_matches_cpu_reference() {
    let g = gpu();
    let mut rng = Rng::new(42);
    // 1 chunk, a ragged last chunk, and more than 256 chunks (several
    // blocks in the final pick).
    for (n, spread) in [(300usize, 3.0f32), (4099, 6.0), (270_000, 10.0)] {
        let l = logits(&mut rng, n, spread);
        let t = g.upload_f32("logits", &[n], &l).unwrap();
        let seen: Vec<u32> = (0..40).map(|_| rng.below(n as u32)).collect();
        let mut uniq = seen.clone();
        uniq.sort();
        uniq.dedup();
        let st = g.upload_u32("seen", &[uniq.len()], &uniq).unwrap();
        for p in configs() {
            for u in [0u32, u32::MAX, rng.next_u64() as u32, rng.next_u64() as u32] {
                let mut rec = g.recorder();
                let tok = sample::sample(&mut rec, &t, &p, Some(&st), u).unwrap();
                rec.run().unwrap();
                let got = g.read_u32(&tok).unwrap()[0];
                let want = sample::cpu::sample(&l, &p, &seen, u);
                assert_eq!(got, want, "n {n}, {p:?}, u {u:#x}");
                assert!(l[got as usize].is_finite(), "picked a -inf logit");
            }
        }
    }
}

/// The finite-value guard of generation: a NaN or ±inf anywhere in the
/// row (first, middle of a chunk, last element of a ragged tail) turns the
/// chosen id into `NOT_FINITE`, greedy or sampled; a finite row keeps it.
#[test]
fn sampler_guard_flags_non_finite_rows() {
    let g = gpu();
    let mut rng = Rng::new(9);
    for n in [1usize, 300, 4099, 70_001] {
        let base = rng.vec(n, 4.0);
        let mut cases: Vec<(Vec<f32>, bool)> = vec![(base.clone(), true)];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
            for at in [0, n / 2, n - 1] {
                let mut l = base.clone();
                l[at] = bad;
                cases.push((l, false));
            }
        }
        // The largest finite values are finite.
        let mut l = base.clone();
        l[n - 1] = f32::MAX;
        l[0] = f32::MIN;
        cases.push((l, true));
        for (l, finite) in cases {
            let t = g.upload_f32("logits", &[n], &l).unwrap();
            for p in [SampleParams::greedy(), SampleParams::default()] {
                let mut rec = g.recorder();
                let tok = sample::sample(&mut rec, &t, &p, None, 12345).unwrap();
                sample::guard_finite(&mut rec, &t, &tok).unwrap();
                rec.run().unwrap();
                let got = g.read_u32(&tok).unwrap()[0];
                if finite {
                    assert_eq!(got, sample::cpu::sample(&l, &p, &[], 12345), "n {n} {p:?}");
                } else {
                    assert_eq!(got, sample::NOT_FINITE, "n {n} {p:?}");
                }
            }
        }
    }
}

/// Transformers' warpers, written with sorting and f64 softmax.
fn hf_kept(z: &[f32], p: &SampleParams) -> Vec<bool> {
    let n = z.len();
    let mut keep = vec![true; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| z[b].partial_cmp(&z[a]).unwrap());
    if p.top_k > 0 && p.top_k < n {
        let kth = z[order[p.top_k - 1]];
        for i in 0..n {
            keep[i] = z[i] >= kth;
        }
    }
    let m = z[order[0]] as f64;
    let probs = |keep: &[bool]| {
        let s: f64 = (0..n)
            .filter(|&i| keep[i])
            .map(|i| (z[i] as f64 - m).exp())
            .sum();
        (0..n)
            .map(|i| {
                if keep[i] {
                    (z[i] as f64 - m).exp() / s
                } else {
                    0.0
                }
            })
            .collect::<Vec<f64>>()
    };
    if p.top_p < 1.0 {
        let pr = probs(&keep);
        // Kept iff the mass of tokens strictly more likely is below top_p
        // (ties at the boundary kept, as our threshold does).
        let mut above = 0.0;
        let mut i = 0;
        let mut next = keep.clone();
        while i < n {
            let mut j = i;
            let mut group = 0.0;
            while j < n && z[order[j]] == z[order[i]] {
                group += pr[order[j]];
                j += 1;
            }
            let ok = above < p.top_p as f64 || i == 0;
            for &o in &order[i..j] {
                next[o] = keep[o] && ok;
            }
            above += group;
            i = j;
        }
        keep = next;
    }
    if p.min_p > 0.0 {
        let pr = probs(&keep);
        let top = pr.iter().cloned().fold(0.0, f64::max);
        for i in 0..n {
            keep[i] = keep[i] && pr[i] >= p.min_p as f64 * top;
        }
    }
    keep
}

#[test]
fn cpu_reference_filters_like_transformers_warpers() {
    let mut rng = Rng::new(7);
    for n in [50usize, 1000] {
        for trial in 0..20 {
            let l = rng.vec(n, 4.0);
            for p in configs().into_iter().filter(|p| !p.is_greedy()) {
                let p = SampleParams {
                    repetition_penalty: 1.0,
                    ..p
                };
                let z: Vec<f32> = l.iter().map(|&v| v * p.inv_temperature()).collect();
                let ours = sample::cpu::kept(&l, &p);
                let hf = hf_kept(&z, &p);
                let diff = (0..n).filter(|&i| ours[i] != hf[i]).count();
                assert_eq!(diff, 0, "n {n} trial {trial} {p:?}");
            }
        }
    }
}

#[test]
fn cpu_sampler_draws_follow_the_kept_distribution() {
    let l = [2.0f32, 1.0, 0.5, 0.0, -1.0, 3.0, 1.0, -2.0];
    let p = SampleParams {
        top_k: 5,
        temperature: 0.8,
        ..Default::default()
    };
    let keep = sample::cpu::kept(&l, &p);
    let z: Vec<f64> = l.iter().map(|&v| v as f64 / 0.8).collect();
    let s: f64 = (0..8).filter(|&i| keep[i]).map(|i| z[i].exp()).sum();
    let mut count = [0usize; 8];
    let draws = 20000u64;
    for k in 0..draws {
        // Evenly spread uniforms: the frequencies are the probabilities.
        let u = ((k * (1u64 << 32)) / draws) as u32;
        count[sample::cpu::sample(&l, &p, &[], u) as usize] += 1;
    }
    for i in 0..8 {
        let want = if keep[i] { z[i].exp() / s } else { 0.0 };
        let got = count[i] as f64 / draws as f64;
        assert!((got - want).abs() < 1e-3, "token {i}: {got} vs {want}");
    }
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let (dec, tok) = load("qwen3");
    let prompt = tok.encode("In the village, the baker", false).unwrap();
    let opts = GenOptions {
        max_tokens: 16,
        sampling: SampleParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            ..Default::default()
        },
        stop: vec![],
        eos_ids: vec![],
    };
    let mut cache = KvCache::for_decoder(gpu(), &dec, 64).unwrap();
    let mut run = |seed| {
        cache.clear();
        generate(
            gpu(),
            &dec,
            &mut cache,
            &prompt,
            &opts,
            &mut HostRng::new(seed),
            Some(&tok),
            None,
            &mut |_| {},
        )
        .unwrap()
    };
    let a = run(7);
    let b = run(7);
    let c = run(8);
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.text, b.text);
    assert_ne!(a.ids, c.ids, "another seed gave the same 16 tokens");
}

// ------------------------------------------------------------ text, chat

#[test]
fn streamed_text_is_whole_characters_and_stops_at_stop_strings() {
    let (_, tok) = load("qwen3");
    let text = "Snow ☃ falls on the café — naïve 日本 words. The end.";
    let ids = tok.encode(text, false).unwrap();
    let mut s = TextStream::new(&tok, &[]);
    let mut pieces = Vec::new();
    for &id in &ids {
        let (piece, hit) = s.push(id).unwrap();
        assert!(!hit);
        assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
        pieces.push(piece);
    }
    pieces.push(s.finish());
    assert_eq!(pieces.concat(), tok.decode(&ids, true).unwrap());
    assert_eq!(pieces.concat(), text);

    let mut s = TextStream::new(&tok, &["words.".to_string(), "xyz".to_string()]);
    let mut out = String::new();
    let mut stopped = false;
    for &id in &ids {
        let (piece, hit) = s.push(id).unwrap();
        out += &piece;
        if hit {
            stopped = true;
            break;
        }
    }
    assert!(stopped);
    assert_eq!(out, "Snow ☃ falls on the café — naïve 日本 ");
    assert_eq!(s.text(), out);
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn chat_history_is_trimmed_from_the_oldest_turns() {
    let (dec, mut tok) = load("qwen3");
    tok.chat_template = Some(CHATML.into());
    let opts = GenOptions {
        max_tokens: 6,
        ..Default::default()
    };
    let mut s = Session::new(gpu(), dec, tok, 80, opts, Some(3)).unwrap();
    assert!(s.has_template());
    for q in [
        "The river below the old mill runs slowly.",
        "Children walk along its banks after school.",
        "In the village, the baker opens his shop.",
        "He has kept the same routine for thirty years.",
    ] {
        let g = s.ask(q, None, &mut |_| {}).unwrap();
        assert!(g.ids.len() <= 6);
        assert!(g.stats.prompt_tokens <= 80 - 6, "{}", g.stats.prompt_tokens);
    }
    // Four questions with answers do not fit in 74 tokens: the oldest went.
    assert!(s.history.len() < 8, "{}", s.history.len());
    assert_eq!(s.history.last().unwrap().role, "assistant");
    assert!(s.history[s.history.len() - 2]
        .content
        .starts_with("He has kept"));
    // A question longer than the whole context is an error, and the
    // conversation is unchanged.
    let before = s.history.len();
    let long = "the old mill ".repeat(40);
    let e = s.ask(&long, None, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("context of 80 tokens"), "{e}");
    assert_eq!(s.history.len(), before);
    // Commands.
    assert!(
        matches!(s.command("/layers 3"), boomgpu::infer::Reply::Text(t) if t.contains("--teacher/--student"))
    );
    s.set_resizer(Box::new(|k| {
        let (d, _) = load("qwen3");
        let layers = d.layers[..k].to_vec();
        Ok(Decoder::assemble(
            &d,
            d.embed.clone(),
            layers,
            d.final_norm.clone(),
            d.head.clone(),
        ))
    }));
    assert!(
        matches!(s.command("/layers 3"), boomgpu::infer::Reply::Text(t) if t.contains("now 3 layers"))
    );
    assert_eq!(s.model().layers.len(), 3);
    assert_eq!(s.cache().layers(), 3);
    s.ask("And then?", None, &mut |_| {}).unwrap();
    assert!(
        matches!(s.command("/stats"), boomgpu::infer::Reply::Text(t) if t.contains("3 layers") && t.contains("tokens/s"))
    );
    assert_eq!(
        s.command("/reset"),
        boomgpu::infer::Reply::Text("conversation cleared".into())
    );
    assert!(s.history.is_empty());
}

// -------------------------------------------------------------- the binary

fn run_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = boomgpu_cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `chat --prompt PROMPT` on a fixture: 24 greedy tokens, and `extra`.
fn greedy_answer(family: &str, prompt: &str, extra: &[&str]) -> std::process::Output {
    let dir = fixture(family);
    let mut args = vec![
        "chat",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        "24",
        "--temperature",
        "0",
    ];
    args.extend_from_slice(extra);
    run_with_stdin(&args, "")
}

#[test]
fn chat_prompt_prints_the_answer_alone() {
    let r = refs();
    let case = &r["models"]["llama-tied"][0];
    let (_, tok) = load("llama-tied");
    let want = tok.decode(&ids_of(&case["ids"]), true).unwrap();
    let out = greedy_answer("llama-tied", case["prompt"].as_str().unwrap(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want}\n"));
    assert!(stderr.contains("plain continuation"), "{stderr}");
    assert!(stderr.contains("24 tokens"), "{stderr}");
}

/// `chat --prompt … --json`: the same greedy answer as transformers',
/// and one submission and one 4-byte token id read back per decoded token.
#[test]
fn chat_json_counts_one_submission_per_decoded_token() {
    let r = refs();
    for family in ["llama-tied", "qwen3", "neox"] {
        let case = &r["models"][family][0];
        let (_, tok) = load(family);
        let dir = fixture(family);
        let out = greedy_answer(family, case["prompt"].as_str().unwrap(), &["--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids = ids_of(&case["ids"]);
        assert_eq!(ids_of(&v["token_ids"]), ids, "{family}");
        if family == "llama-tied" {
            // (The byte-level vocabularies end mid-character here.)
            assert_eq!(v["text"], tok.decode(&ids, true).unwrap().as_str());
        }
        assert_eq!(v["generated_tokens"], 24, "{family}");
        // 24 tokens: the prompt pass chose the first, 23 steps the rest.
        assert_eq!(v["decode_steps"], 23, "{family}");
        assert_eq!(
            v["submissions_per_token"].as_f64(),
            Some(1.0),
            "{family}: {v}"
        );
        assert_eq!(
            v["readback_bytes_per_token"].as_f64(),
            Some(4.0),
            "{family}: {v}"
        );
        let layers = read_json(&dir.join("config.json"))["num_hidden_layers"]
            .as_f64()
            .unwrap();
        // Launches per layer of a decode step: Llama 12 (norm, q, k, v,
        // rope + KV write, attention, o + residual, norm, gate, up, SwiGLU,
        // down + residual); Qwen3 2 more (q and k norms); GPT-NeoX 21 (a
        // launch per bias, residuals apart, rotation and KV write apart:
        // its fixture rotates 1 pair per head). 5 more per token: the
        // embedding, final norm, head and sampling; a few more when the
        // test command lowers the binding limit and the vocabulary tables
        // are in blocks (a product per block of the head).
        let per_layer = match family {
            "llama-tied" => 12.0,
            "qwen3" => 14.0,
            _ => 21.0,
        };
        let head = match std::env::var_os("BOOMGPU_MAX_BINDING") {
            Some(_) => 5.0 + 8.0,
            None => 5.0,
        };
        let d = v["dispatches_per_token"].as_f64().unwrap();
        assert!(
            d >= layers && d <= per_layer * layers + head,
            "{family}: {d} dispatches for {layers} layers"
        );
        assert!(v["weight_bytes_per_token"].as_u64().unwrap() > 0);
        assert!(v["peak_bytes"].as_u64().unwrap() > 0);
    }
}

#[test]
fn chat_interactive_through_stdin() {
    // A copy of the qwen3 fixture with a chat template.
    let dir = tmpdir("chat");
    for f in std::fs::read_dir(fixture("qwen3")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg = read_json(&cfg_path);
    cfg["chat_template"] = CHATML.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();

    let out = run_with_stdin(
        &[
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ],
        "/help\nWhere does the river run?\n/stats\n/layers 2\n/quit\nnever read\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("/reset") && stdout.contains("/quit"),
        "{stdout}"
    );
    assert!(stderr.contains("chat template"), "{stderr}");
    assert!(stderr.contains("tokens/s"), "{stderr}");
    assert!(stdout.contains("model: 6 layers"), "{stdout}");
    assert!(stdout.contains("--teacher/--student"), "{stdout}");

    // The answer is the greedy continuation of the rendered prompt.
    let (dec, tok) = load("qwen3");
    let t = ChatTemplate::new(CHATML, "<|bos|>", "<|eos|>").unwrap();
    let prompt = t
        .render(&[Message::user("Where does the river run?")], true)
        .unwrap();
    let ids = tok.encode(&prompt, false).unwrap();
    let mut cache = KvCache::for_decoder(gpu(), &dec, 256).unwrap();
    let g = generate(
        gpu(),
        &dec,
        &mut cache,
        &ids,
        &GenOptions {
            max_tokens: 8,
            eos_ids: tok.eos_ids.clone(),
            ..Default::default()
        },
        &mut HostRng::new(0),
        Some(&tok),
        None,
        &mut |_| {},
    )
    .unwrap();
    let after_help = stdout
        .split_once("Ctrl-C stops the answer being written.\n")
        .unwrap()
        .1;
    assert!(
        after_help.starts_with(&format!("{}\n", g.text)),
        "{stdout:?} should continue with {:?}",
        g.text
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_prompt_longer_than_the_context_fails_clearly() {
    let dir = fixture("qwen3");
    let long = "The river below the old mill runs slowly. ".repeat(10);
    let out = run_with_stdin(
        &[
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            &long,
            "--max-context",
            "16",
        ],
        "",
    );
    let stderr = err(&out);
    assert!(
        stderr.contains("context of 16 tokens") && stderr.contains("--max-context"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
