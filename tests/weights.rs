//! Checkpoint loading: sharded safetensors with an index, and the errors a
//! person meets with broken downloads — a missing shard, a wrong shape, a
//! truncated file, an unsupported dtype — each a clear message, never a panic.

mod common;
use common::*;

use std::collections::BTreeMap;

use boomgpu::gpu::DType;
use boomgpu::model::weights::{write_safetensors, Checkpoint};
use boomgpu::model::ModelConfig;

/// name → (dtype, shape, bytes), as write_safetensors takes them.
type Tensors = BTreeMap<String, (DType, Vec<usize>, Vec<u8>)>;

/// A fresh scratch folder for this file's tests.
fn scratch(name: &str) -> Scratch {
    tmpdir(&format!("weights-{name}"))
}

/// The qwen3 fixture split into two shards with an index, as the hub does.
fn sharded(name: &str) -> (Scratch, ModelConfig) {
    let src = fixture("qwen3");
    let cfg = ModelConfig::from_file(&src.join("config.json")).unwrap();
    let ck = Checkpoint::open(&src).unwrap();
    let dir = scratch(name);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut shards: [Tensors; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut map = serde_json::Map::new();
    for (i, (name, e)) in ck.tensors.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        shards[i % 2].insert(
            name.clone(),
            (
                DType::F32,
                e.shape.clone(),
                ck.bytes(name).unwrap().to_vec(),
            ),
        );
        map.insert(name.clone(), serde_json::Value::String(file));
    }
    for (i, s) in shards.iter().enumerate() {
        write_safetensors(
            &dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
            s,
            None,
        )
        .unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    (dir, cfg)
}

#[test]
fn sharded_checkpoints_load_with_every_tensor() {
    let (dir, cfg) = sharded("ok");
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.files.len(), 2);
    ck.check(&cfg).unwrap();
    let one = Checkpoint::open(&fixture("qwen3")).unwrap();
    for name in one.tensors.keys() {
        assert_eq!(ck.bytes(name), one.bytes(name), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_shard_is_named() {
    let (dir, _) = sharded("missing");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = Checkpoint::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_shapes_are_all_reported_before_upload() {
    let src = fixture("qwen3");
    let mut cfg = ModelConfig::from_file(&src.join("config.json")).unwrap();
    // A config that disagrees with the weights: a wider MLP.
    cfg.intermediate_size += 8;
    let e = Checkpoint::open(&src)
        .unwrap()
        .check(&cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not match its config.json"), "{e}");
    // Every layer's three MLP matrices, all in one message.
    assert!(e.matches("mlp.").count() >= 3 * cfg.num_layers, "{e}");
    assert!(e.contains("[64, 32]") && e.contains("[72, 32]"), "{e}");
}

#[test]
fn truncated_files_are_errors_at_every_cut() {
    let src = std::fs::read(fixture("qwen3").join("model.safetensors")).unwrap();
    let dir = scratch("trunc");
    let header_end = 8 + u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
    for cut in [
        0,
        4,
        8,
        20,
        header_end - 1,
        header_end + 10,
        src.len() / 2,
        src.len() - 1,
    ] {
        std::fs::write(dir.join("model.safetensors"), &src[..cut]).unwrap();
        let e = Checkpoint::open(&dir)
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} was accepted"))
            .to_string();
        assert!(
            e.contains("truncated") || e.contains("not valid JSON"),
            "cut at {cut}: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_dtypes_are_named() {
    let src = fixture("qwen3");
    let cfg = ModelConfig::from_file(&src.join("config.json")).unwrap();
    let ck = Checkpoint::open(&src).unwrap();
    let dir = scratch("dtype");
    let mut tensors: Tensors = BTreeMap::new();
    for (name, e) in &ck.tensors {
        tensors.insert(
            name.clone(),
            (
                DType::F32,
                e.shape.clone(),
                ck.bytes(name).unwrap().to_vec(),
            ),
        );
    }
    // The final norm stored as u32 (as an int checkpoint would be).
    let n = tensors.get_mut("model.norm.weight").unwrap();
    n.0 = DType::U32;
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    let e = Checkpoint::open(&dir)
        .unwrap()
        .check(&cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("bf16, f16 and f32"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
