//! `boomgpu patch` for the encoder family: one interpolated size of a
//! BERT / DistilBERT pair written as a `BertForMaskedLM` folder that
//! transformers loads with the same logits. Every tensor is borrowed from
//! the mapped checkpoints under BERT's names; a DistilBERT embedding gets a
//! zero token-type table (it adds nothing, as DistilBERT adds none), and a
//! head whose decoder is not the exported word embeddings is written
//! untied.

use std::collections::BTreeMap;

use serde_json::json;

use super::encoder::{EncoderFiles, EncoderPair};
use super::init_student::{format_params, COPIED_FILES};
use super::order::OrderChoice;
use super::outdir::OutDir;
use super::patch::PatchOptions;
use crate::boomerang::init::{InitRule, OutTensor, TensorData};
use crate::boomerang::{Direction, LayerSource, Part, PatchOrder, PatchPlan};
use crate::error::{Error, Result};
use crate::model::encoder::norm_names;
use crate::model::encoder_config::{EncoderKind, BERT_LAYER};

/// The encoder pair's direction from the order flags.
pub fn direction(order: &OrderChoice) -> Result<Direction> {
    match order {
        OrderChoice::Default => Ok(Direction::Last),
        OrderChoice::Reference(d) => Ok(*d),
        OrderChoice::Auto(_) => Err(Error::Invalid(
            "--order auto ranks decoder layers by perplexity; encoder pairs take --first or \
             --last (the reference notebook's order is last)"
                .into(),
        )),
    }
}

fn borrow<'a>(f: &'a EncoderFiles, name: &str) -> Result<OutTensor<'a>> {
    let e = f
        .ckpt
        .tensors
        .get(name)
        .ok_or_else(|| Error::Invalid(format!("missing tensor '{name}'")))?;
    Ok(OutTensor {
        dtype: e.dtype,
        shape: e.shape.clone(),
        data: TensorData::Borrowed(f.ckpt.bytes(name).expect("entry exists")),
    })
}

/// Write size `k` of the pair to `opts.out`; returns the summary.
pub fn run(opts: &PatchOptions) -> Result<String> {
    if opts.fit.is_some() {
        return Err(Error::Invalid(
            "--fit chooses a decoder size by its KV cache; for an encoder pair give --layers K"
                .into(),
        ));
    }
    let pair = EncoderPair::open(&opts.teacher, &opts.student, opts.params)?;
    if let Some(n) = &pair.note {
        eprintln!("note: {n}");
    }
    if pair.teacher.cfg.kind != EncoderKind::Bert {
        return Err(Error::Invalid(format!(
            "{}: exports are BertForMaskedLM folders, so the teacher must be a BERT (it is {})",
            pair.teacher.dir.display(),
            pair.teacher.cfg.kind.model_type()
        )));
    }
    let dir = direction(&opts.order)?;
    let max_k = PatchPlan::max_k(&pair.plan, dir);
    let k = opts.k.ok_or_else(|| {
        Error::Invalid(format!(
            "say which size to export: --layers K, K from 0 to {max_k} ({max_k} is the teacher)"
        ))
    })?;
    let plan = PatchPlan::ordered(&pair.plan, k, &PatchOrder::reference(dir))?;
    let (t, s) = (&pair.teacher, &pair.student);
    let pick = |p: Part| if p == Part::Teacher { t } else { s };
    let outdir = OutDir::prepare(
        &opts.out,
        opts.force,
        &[("teacher", &t.dir), ("student", &s.dir)],
    )?;

    let mut out: BTreeMap<String, OutTensor> = BTreeMap::new();
    // Embeddings.
    let ef = pick(plan.embed);
    let en = ef.cfg.embedding_names();
    let words = borrow(ef, &en.words)?;
    let words_dtype = words.dtype;
    out.insert("bert.embeddings.word_embeddings.weight".into(), words);
    out.insert(
        "bert.embeddings.position_embeddings.weight".into(),
        borrow(ef, &en.positions)?,
    );
    let types = match &en.token_types {
        Some(name) => borrow(ef, name)?,
        None => OutTensor {
            dtype: words_dtype,
            shape: vec![t.cfg.type_vocab_size, t.cfg.hidden_size],
            data: TensorData::Random {
                rule: InitRule::Zeros,
                seed: 0,
                name: "token_type_embeddings".into(),
            },
        },
    };
    out.insert("bert.embeddings.token_type_embeddings.weight".into(), types);
    let (w, b) = norm_names(&ef.ckpt, &en.norm);
    out.insert("bert.embeddings.LayerNorm.weight".into(), borrow(ef, &w)?);
    out.insert("bert.embeddings.LayerNorm.bias".into(), borrow(ef, &b)?);
    // Layers, renamed to BERT's parts.
    for (i, src) in plan.layers.iter().enumerate() {
        let (f, l) = match *src {
            LayerSource::Teacher(j) => (t, j),
            LayerSource::Student(j) => (s, j),
        };
        let prefix = f.cfg.layer_prefix(l);
        for ((part, stored), (_, bert)) in f.cfg.layer_parts().into_iter().zip(BERT_LAYER) {
            let full = format!("{prefix}{stored}");
            let (w, b) = match f.cfg.part_shape(part).len() {
                1 => norm_names(&f.ckpt, &full),
                _ => (format!("{full}.weight"), format!("{full}.bias")),
            };
            let to = format!("bert.encoder.layer.{i}.{bert}");
            out.insert(format!("{to}.weight"), borrow(f, &w)?);
            out.insert(format!("{to}.bias"), borrow(f, &b)?);
        }
    }
    // The masked-LM head.
    let hf = pick(plan.head);
    let hn = hf.cfg.head_names();
    let p = "cls.predictions.transform";
    out.insert(
        format!("{p}.dense.weight"),
        borrow(hf, &format!("{}.weight", hn.dense))?,
    );
    out.insert(
        format!("{p}.dense.bias"),
        borrow(hf, &format!("{}.bias", hn.dense))?,
    );
    let (w, b) = norm_names(&hf.ckpt, hn.norm);
    out.insert(format!("{p}.LayerNorm.weight"), borrow(hf, &w)?);
    out.insert(format!("{p}.LayerNorm.bias"), borrow(hf, &b)?);
    let bias = hn
        .bias
        .iter()
        .find(|n| hf.ckpt.tensors.contains_key(**n))
        .expect("checked on open");
    out.insert("cls.predictions.bias".into(), borrow(hf, bias)?);
    // Tied only when the decoder is the exported word embeddings.
    let own_decoder = hf.ckpt.tensors.contains_key(hn.decoder);
    let tied = !own_decoder && plan.head == plan.embed;
    if !tied {
        let name = if own_decoder {
            hn.decoder.to_string()
        } else {
            hf.cfg.embedding_names().words
        };
        out.insert("cls.predictions.decoder.weight".into(), borrow(hf, &name)?);
        // Untied, transformers no longer ties the decoder's bias to
        // `cls.predictions.bias` either: it is written under both names.
        out.insert("cls.predictions.decoder.bias".into(), borrow(hf, bias)?);
    }
    let params: usize = out
        .iter()
        .filter(|(n, _)| n.as_str() != "cls.predictions.decoder.bias")
        .map(|(_, t)| t.shape.iter().product::<usize>())
        .sum();

    let mut cfg = t.cfg.raw.clone();
    cfg["num_hidden_layers"] = json!(plan.num_layers());
    cfg["tie_word_embeddings"] = json!(tied);
    cfg["architectures"] = json!(["BertForMaskedLM"]);
    let path = outdir.path().join("config.json");
    let text = serde_json::to_string_pretty(&cfg).expect("JSON value");
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    let dtypes = outdir.write_weights(out)?;
    let mut names: Vec<&str> = COPIED_FILES.to_vec();
    names.push("vocab.txt");
    let copied = outdir.copy_files(&t.dir, &names)?;
    let written = outdir.commit()?;
    Ok(format!(
        "wrote {}: {}-k = {k} of {max_k}: {} layers ({} from the teacher: {}), {} parameters, \
         {}; embeddings from the {}, head from the {}{}; also {}\n",
        written.display(),
        dir,
        plan.num_layers(),
        plan.teacher_layers(),
        crate::boomerang::patch::compact_sources(&plan.layers),
        format_params(params as u64),
        dtypes.join("+"),
        part_name(plan.embed),
        part_name(plan.head),
        if tied { " (tied)" } else { " (untied)" },
        copied.join(", ")
    ))
}

fn part_name(p: Part) -> &'static str {
    match p {
        Part::Teacher => "teacher",
        Part::Student => "student",
    }
}
