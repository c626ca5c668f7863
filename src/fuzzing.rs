//! The fuzz targets: every reader of untrusted bytes, driven as the engine drives it. Each target
//! takes arbitrary bytes and must return (an `Err` is fine); a panic, an abort or a hang is a
//! finding. `fuzz/` runs them under AFL++ (scripts/fuzz.sh); tests/fuzz_regressions.rs replays
//! the committed corpus and findings, plus seeded structure-aware mutations, on every push.

use crate::config::ModelConfig;
use crate::gguf::reader::GgufFile;
use crate::gguf::{dequant, hf_config, tokenizer, tokenizer_meta};
use crate::prune::balance::{self, AttentionBudget, ParamCounts};
use std::path::{Path, PathBuf};

/// A fuzz target: its name and the function that feeds it bytes.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name (the names of `fuzz/`'s binaries and of tests/fixtures/fuzz/ folders).
pub const TARGETS: &[Target] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("config", config),
    ("tokenizer_json", tokenizer_json),
    ("data", data),
];

/// Elements dequantized per tensor at most (keeps one execution fast; the kernels are per block).
const DEQUANT_CAP: u64 = 1 << 16;

/// A GGUF file through the importer's whole read path: container, dequantizers, hyper-parameters,
/// config.json, the tensor plan and both tokenizer rebuilds.
pub fn gguf(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes(data) else {
        return;
    };
    for t in &g.tensors {
        if t.ggml_type.is_supported() && t.n_elements() <= DEQUANT_CAP {
            let _ = dequant::dequantize(t.ggml_type, g.tensor_data(t), t.n_elements() as usize);
        }
    }
    let _ = tokenizer_meta::from_gguf(&g);
    let tok = tokenizer::build(&g, None);
    if let Ok(params) = hf_config::ArchParams::read(&g) {
        let _ = hf_config::plan_tensors(&params, &g.tensors);
        let ids = tok.map(|t| t.ids).unwrap_or_default();
        if let Ok(cfg) = hf_config::config_json(&g, &params, &ids) {
            config_value(cfg);
        }
    }
}

/// A `model.safetensors` beside a fixed tiny config: header, offsets, dtypes, shapes, then the
/// model load that reads every tensor.
pub fn safetensors(data: &[u8]) {
    let dir = scratch_dir("safetensors");
    if std::fs::write(dir.join("model.safetensors"), data).is_err() {
        return;
    }
    let Ok(config) = ModelConfig::from_hf(tiny_config()) else {
        return;
    };
    if let Ok(store) = crate::weights::TensorStore::open(&dir) {
        let names: Vec<String> = store.names().map(str::to_owned).collect();
        for name in names {
            if let Ok(raw) = store.raw(&name) {
                let shape = raw.shape.to_vec();
                let _ = store.f32(&name, &shape);
            }
        }
        let _ = crate::model::Model::from_store(config, &store);
    }
}

/// A `config.json` (any layout: v4, v5, `block_configs`, DeciLM, our zero-part markers) through
/// parsing, the parameter counts and the balance of Eq. 5.
pub fn config(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice(data) {
        config_value(v);
    }
}

fn config_value(v: serde_json::Value) {
    let Ok(c) = ModelConfig::from_hf(v) else {
        return;
    };
    let _ = crate::export::decilm::check_expressible(&c);
    if let Ok(counts) = ParamCounts::of(&c) {
        for s in [0.25, 0.5] {
            let _ = balance::plan(&counts, s, AttentionBudget::Alpha(1.5), None);
        }
    }
}

/// A `tokenizer.json` through the GGUF tokenizer-metadata rebuild and the tokenizer load.
pub fn tokenizer_json(data: &[u8]) {
    let dir = scratch_dir("tokenizer_json");
    if std::fs::write(dir.join("tokenizer.json"), data).is_err() {
        return;
    }
    let _ = tokenizer_meta::from_hf(&dir);
    if let Ok(t) = crate::tokenizer::Tokenizer::from_dir(&dir) {
        let _ = t.encode("Hello world 123 <|im_start|>");
    }
}

/// A calibration/evaluation data file, read as `.jsonl` and as `.txt`.
pub fn data(data: &[u8]) {
    let dir = scratch_dir("data");
    for name in ["d.jsonl", "d.txt"] {
        let path = dir.join(name);
        if std::fs::write(&path, data).is_ok() {
            let _ = crate::data::read_documents(&path);
        }
    }
}

/// A Llama config small enough that any tensor set matching it loads in microseconds.
fn tiny_config() -> serde_json::Value {
    serde_json::json!({"model_type": "llama", "hidden_size": 8, "vocab_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true})
}

/// A per-process, per-target scratch folder (targets overwrite their files).
fn scratch_dir(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twossp-fuzz-{}-{target}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Runs the target `name` on one input (for the harness binaries); false for an unknown name.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

/// Removes this process's scratch folders.
pub fn clean_scratch() {
    for (name, _) in TARGETS {
        let _ = std::fs::remove_dir_all(scratch_dir(name));
    }
}

/// The committed inputs of a target: `tests/fixtures/fuzz/<target>/*` under `root`.
pub fn corpus(root: &Path, target: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(target))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}
