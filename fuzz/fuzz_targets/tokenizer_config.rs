//! tokenizer_config.json and its chat template (src/model/tokenizer.rs,
//! src/infer/chat.rs): the input is used twice, as a template source
//! (compiled and rendered for a short conversation) and as the contents of
//! tokenizer_config.json next to the qwen3 fixture's tokenizer.json
//! (loaded as chat loads it, its template rendered and tokenised). Any
//! input must give an error or a prompt — never a panic, a hang (the
//! render fuel) or a runaway allocation.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use boomgpu::infer::chat::{encode_prompt, ChatTemplate, Message};
use boomgpu::model::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn folder() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/qwen3/tokenizer.json");
        let dir = std::env::temp_dir().join(format!("boomgpu-fuzz-tc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::copy(src, dir.join("tokenizer.json")).expect("fixture tokenizer");
        dir
    })
}

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "Be brief."),
        Message::user("Where does the river run?"),
        Message::assistant("South."),
        Message::user("Why?"),
    ]
}

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        if let Ok(t) = ChatTemplate::new(src, "<|bos|>", "<|eos|>") {
            let _ = t.render(&conversation(), true);
        }
    }
    let dir = folder();
    std::fs::write(dir.join("tokenizer_config.json"), data).expect("write");
    let Ok(tok) = Tokenizer::from_dir(dir, &[319], Some(318)) else {
        return;
    };
    if let Ok(Some(t)) = ChatTemplate::from_tokenizer(&tok) {
        let _ = encode_prompt(&tok, Some(&t), &conversation());
    }
});
