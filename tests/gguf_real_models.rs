//! Imports the real GGUF models (fetched into models/ by scripts/fetch-model.sh, or the paths in
//! TWOSSP_GGUF_SMOLLM2 / TWOSSP_GGUF_GEMMA3) and checks the rebuilt tokenizer (loaded with the Rust
//! `tokenizers` crate) against llama.cpp's token ids in tests/fixtures/gguf/llama_tokenize_ids.json.

use serde_json::Value;
use std::path::{Path, PathBuf};

fn check(env: &str, default: &str, key: &str) {
    let src = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(default)
    });
    assert!(
        src.exists(),
        "{} missing: run scripts/fetch-model.sh all (scripts/test.sh does) or set {env}",
        src.display()
    );
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/llama_tokenize_ids.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let text = doc["text"].as_str().unwrap();
    let want: Vec<u32> = doc[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();

    let out = std::env::temp_dir().join(format!("gguf-real-{key}-{}", std::process::id()));
    let summary = twossp_engine::gguf::import(&src, &out, true).unwrap();
    let result = std::panic::catch_unwind(|| {
        let tk = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let got = tk.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(
            got.len(),
            want.len(),
            "{key}: token count differs from llama.cpp"
        );
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{key}: first difference at token {i}: ours {:?}, llama.cpp {:?}",
                &got[i..],
                &want[i..]
            );
        }
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            cfg["vocab_size"].as_u64().unwrap() as usize,
            summary.vocab_size
        );
    });
    let _ = std::fs::remove_dir_all(&out);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    check(
        "TWOSSP_GGUF_SMOLLM2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2",
    );
}

#[test]
fn gemma3_tokenizer_matches_llama_cpp() {
    check("TWOSSP_GGUF_GEMMA3", "gemma-3-270m-q4_k_m.gguf", "gemma3");
}
