//! The real SmolLM2-135M-Instruct (imported from its GGUF by scripts/fetch-model.sh): perplexity
//! against HF transformers on the same token ids, and 2SSP end to end at reduced settings.
//! scripts/test.sh fetches the model and data first; without them these tests fail with a hint.

mod common;

use std::path::PathBuf;
use std::process::Command;
use twossp_engine::data::Corpus;
use twossp_engine::eval::perplexity::perplexity;
use twossp_engine::model::Model;
use twossp_engine::tokenizer::Tokenizer;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn smollm2() -> PathBuf {
    let dir = repo().join("models/SmolLM2-135M-Instruct.Q4_1");
    assert!(dir.join("config.json").exists(), "{} missing: run scripts/fetch-model.sh (scripts/test.sh does)", dir.display());
    dir
}

fn data(name: &str) -> PathBuf {
    let f = repo().join("data").join(name);
    assert!(f.exists(), "{} missing: run scripts/fetch-data.sh (scripts/test.sh does)", f.display());
    f
}

#[test]
fn smollm2_wiki_perplexity_matches_hf_transformers() {
    let reference = common::reference_json_file(&common::fixtures().join("real/smollm2-wiki.json"));
    let seq_len = reference["seq_len"].as_u64().unwrap() as usize;
    let n_windows = reference["windows"].as_u64().unwrap() as usize;
    let dir = smollm2();
    let model = Model::load(&dir).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let corpus = Corpus::load(&[data("wiki.jsonl")], &tokenizer).unwrap();
    let first: Vec<u32> = serde_json::from_value(reference["first_ids"].clone()).unwrap();
    assert_eq!(&corpus.ids[..first.len()], &first[..], "token ids differ from those HF was given");
    let windows = corpus.windows(seq_len, Some(n_windows)).unwrap();
    let got = perplexity(&model, &windows, "wiki").unwrap();
    let want = reference["hf_ppl"].as_f64().unwrap();
    let rel = (got.ppl - want).abs() / want;
    println!("SmolLM2 wiki ppl {:.5} vs HF transformers {want:.5} (rel {rel:.2e})", got.ppl);
    assert!(rel < 1e-3, "perplexity {} differs from HF's {want} by more than 0.1%", got.ppl);
}

#[test]
fn smollm2_prunes_end_to_end_and_reloads() {
    let out = std::env::temp_dir().join(format!("twossp-smollm2-pruned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args(["prune", "--model", smollm2().to_str().unwrap(), "--sparsity", "0.375", "--out", out.to_str().unwrap()])
        .args(["--calib", data("calib-sotu.jsonl").to_str().unwrap(), "--stage1-samples", "4", "--seq-len", "256", "--json"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let report = common::reference_json_file(&out.join("pruning_report.json"));
    assert_eq!(report["n_attn_removed"], 4, "SPEC: SmolLM2 at 37.5% removes 4 attention submodules");
    assert!(report["ffn_keep"].as_array().unwrap().iter().all(|k| k == 836), "SPEC: 836 neurons kept");
    assert_eq!(report["verification"]["identical"], true);
    let model = Model::load(&out).unwrap();
    let removed: Vec<usize> = serde_json::from_value(report["removed_attention"].clone()).unwrap();
    assert_eq!(model.blocks.iter().filter(|b| b.attention.is_none()).count(), 4);
    assert!(removed.iter().all(|&i| model.blocks[i].attention.is_none()));
    assert!((report["sparsity_achieved"].as_f64().unwrap() - 0.375).abs() < 0.01);
    std::fs::remove_dir_all(&out).unwrap();
}
