//! The GGUF reader (src/model/gguf/reader.rs): any bytes must give an
//! error or a file whose supported tensors dequantise to the right number
//! of values and whose llama parameters can be asked for — never a panic.
#![no_main]

use boomgpu::model::gguf::{is_supported_type, Gguf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec(), "fuzz.gguf") else {
        return;
    };
    for t in g.tensors.clone() {
        if is_supported_type(t.ggml_type) {
            if let Ok(v) = g.tensor_f32(&t) {
                let n: u64 = t.dims.iter().product();
                assert_eq!(v.len() as u64, n, "{}", t.name);
            }
        }
    }
    let _ = g.llama_params();
});
