//! The safetensors checker (`Checkpoint::open_file`, src/model/weights.rs):
//! any bytes must give an error or a checkpoint whose every tensor lies
//! inside the file with dtype size × shape bytes, readable as f32, and
//! checkable against the qwen3 fixture's config.json — never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use boomgpu::model::weights::Checkpoint;
use boomgpu::model::ModelConfig;
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static (PathBuf, ModelConfig) {
    static F: OnceLock<(PathBuf, ModelConfig)> = OnceLock::new();
    F.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cfg = root.join("tests/fixtures/models/qwen3/config.json");
        let cfg = ModelConfig::from_file(&cfg).expect("fixture config");
        let dir = std::env::temp_dir().join(format!("boomgpu-fuzz-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        (dir.join("model.safetensors"), cfg)
    })
}

fuzz_target!(|data: &[u8]| {
    let (path, cfg) = fixture();
    std::fs::write(path, data).expect("write");
    let Ok(ck) = Checkpoint::open_file(path) else {
        return;
    };
    for (name, t) in &ck.tensors {
        let bytes = ck.bytes(name).expect("a listed tensor has bytes");
        let elems: usize = t.shape.iter().product();
        assert_eq!(bytes.len() * 8, elems * t.dtype.bitsize(), "{name}: {t:?}");
        if let Ok(v) = ck.to_f32(name) {
            assert_eq!(v.len(), elems, "{name}");
        }
    }
    let _ = ck.check(cfg);
    let _ = ck.layer_count(cfg);
});
