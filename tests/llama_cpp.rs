//! GGUF exports run in llama.cpp (built by benches/peers/build-llama-cpp.sh, with our
//! tools/llama-logits): the perplexity llama.cpp computes from its own logits equals the engine's,
//! removed attention leaves no tensors, per-layer shapes are written, and `llama-quantize` accepts
//! the file. Without llama.cpp the tests say SKIPPED, unless TWOSSP_REQUIRE_LLAMA_CPP=1 (CI),
//! where its absence fails them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use twossp_engine::gguf::reader::GgufFile;
use twossp_engine::model::Model;
use twossp_engine::tokenizer::Tokenizer;

/// Relative perplexity difference allowed between llama.cpp and the engine on f32 weights.
const PPL_TOL: f64 = 1e-4;

/// llama.cpp's bin folder, or `None` (after saying SKIPPED) when it is not built.
fn llama_bin(test: &str) -> Option<PathBuf> {
    let bin = std::env::var_os("LLAMA_CPP_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../peers/llama.cpp/build/bin"),
        PathBuf::from,
    );
    if bin.join("llama-logits").exists() && bin.join("llama-quantize").exists() {
        return Some(bin);
    }
    if std::env::var("TWOSSP_REQUIRE_LLAMA_CPP").is_ok_and(|v| v == "1") {
        panic!("{test}: llama.cpp is required but {} has no llama-logits (run benches/peers/build-llama-cpp.sh)", bin.display());
    }
    println!(
        "SKIPPED {test}: llama.cpp not built in {} (benches/peers/build-llama-cpp.sh)",
        bin.display()
    );
    None
}

fn engine(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("twossp-llamacpp-{}-{tag}", std::process::id()))
}

/// Logits of every position computed by llama.cpp (f32 KV cache, flash attention on).
fn llama_logits(bin: &Path, gguf: &Path, ids: &[u32]) -> Vec<f32> {
    let out = scratch("logits.f32");
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let run = Command::new(bin.join("llama-logits"))
        .arg(gguf)
        .args([
            "--ids",
            &list.join(","),
            "--out",
            out.to_str().unwrap(),
            "-t",
            "2",
            "--kv-f32",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "llama-logits: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// `llama-quantize GGUF OUT Q4_K_M`, which must succeed; returns OUT.
fn quantize_q4_k_m(bin: &Path, gguf: &Path, tag: &str) -> PathBuf {
    let q = scratch(&format!("{tag}-q4km.gguf"));
    let run = Command::new(bin.join("llama-quantize"))
        .arg(gguf)
        .arg(&q)
        .arg("Q4_K_M")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "llama-quantize: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    q
}

/// Perplexity of `ids` given row-major logits (next-token NLL in f64, as the engine's protocol).
fn perplexity(logits: &[f32], ids: &[u32], vocab: usize) -> f64 {
    let mut nll = 0f64;
    for t in 0..ids.len() - 1 {
        let row = &logits[t * vocab..(t + 1) * vocab];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        nll += lse - row[ids[t + 1] as usize] as f64;
    }
    (nll / (ids.len() - 1) as f64).exp()
}

/// The first `n` token ids of the fixture text under `model`'s tokenizer.
fn text_ids(model: &Path, n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(common::fixtures().join("text/sample.txt")).unwrap();
    let ids = Tokenizer::from_dir(model).unwrap().encode(&text).unwrap();
    assert!(ids.len() >= n);
    ids[..n].to_vec()
}

/// Compares llama.cpp and the engine on `gguf`, written from `model_dir` (what the engine runs).
fn same_perplexity(bin: &Path, gguf: &Path, model_dir: &Path, label: &str) -> f64 {
    let model = Model::load(model_dir).unwrap();
    let ids = text_ids(model_dir, 128);
    let ours = perplexity(&model.logits(&ids).unwrap(), &ids, model.config.vocab);
    let theirs = perplexity(&llama_logits(bin, gguf, &ids), &ids, model.config.vocab);
    let rel = (theirs - ours).abs() / ours;
    println!("{label:<28} perplexity engine {ours:.6} llama.cpp {theirs:.6} (rel {rel:.2e})");
    assert!(
        rel <= PPL_TOL,
        "{label}: llama.cpp {theirs} vs engine {ours} (rel {rel:e})"
    );
    rel
}

#[test]
fn deci_gguf_runs_in_llama_cpp_with_the_engines_perplexity() {
    let Some(bin) = llama_bin("deci_gguf_runs_in_llama_cpp_with_the_engines_perplexity") else {
        return;
    };
    let src = common::fixtures().join("hetero_llama"); // blocks 1, 2 without attention; 4 widths
    let gguf = scratch("hetero.gguf");
    let _ = std::fs::remove_file(&gguf);
    engine(&[
        "export",
        "--model",
        src.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        gguf.to_str().unwrap(),
        "--no-verify",
    ]);
    let g = GgufFile::open(&gguf).unwrap();
    assert_eq!(
        g.get("general.architecture").unwrap().as_str(),
        Some("deci")
    );
    let arr = |k: &str| -> Vec<u64> {
        g.get(k)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    assert_eq!(arr("deci.feed_forward_length"), vec![70, 33, 52, 17]);
    assert_eq!(arr("deci.attention.head_count"), vec![4, 0, 0, 4]);
    assert_eq!(arr("deci.attention.head_count_kv"), vec![2, 0, 0, 2]);
    for i in [1, 2] {
        assert!(
            g.tensors
                .iter()
                .all(|t| !t.name.starts_with(&format!("blk.{i}.attn_"))),
            "block {i} holds attention tensors"
        );
    }
    same_perplexity(&bin, &gguf, &src, "hetero_llama (deci, f32)");
    // llama-quantize accepts it (the widths are not multiples of 256: K-quants fall back).
    let q = quantize_q4_k_m(&bin, &gguf, "hetero");
    let ids = text_ids(&src, 16);
    assert!(llama_logits(&bin, &q, &ids).iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_file(&gguf);
    let _ = std::fs::remove_file(&q);
}

#[test]
fn pruned_models_of_each_family_run_in_llama_cpp() {
    let Some(bin) = llama_bin("pruned_models_of_each_family_run_in_llama_cpp") else {
        return;
    };
    let f = common::fixtures();
    for name in ["llama_tied", "qwen2", "qwen3"] {
        let gguf = scratch(&format!("{name}.gguf"));
        let _ = std::fs::remove_file(&gguf);
        let report = PathBuf::from(format!("{}.pruning_report.json", gguf.display()));
        let _ = std::fs::remove_file(&report);
        engine(&[
            "prune",
            "--model",
            f.join(name).to_str().unwrap(),
            "--sparsity",
            "0.3",
            "--remove-attention",
            "1",
            "--calib",
            f.join("text/sample.txt").to_str().unwrap(),
            "--seq-len",
            "64",
            "--stage1-samples",
            "2",
            "--format",
            "gguf",
            "--out",
            gguf.to_str().unwrap(),
        ]);
        let r = common::reference_json_file(&report);
        assert_eq!(r["verification"]["identical"], true, "{name}");
        // The engine runs the GGUF through its importer; llama.cpp runs the same file.
        let imported = scratch(&format!("{name}-imported"));
        engine(&[
            "import",
            gguf.to_str().unwrap(),
            "--out",
            imported.to_str().unwrap(),
            "--force",
        ]);
        same_perplexity(&bin, &gguf, &imported, &format!("{name} pruned (gguf)"));
        let _ = std::fs::remove_dir_all(&imported);
        let _ = std::fs::remove_file(&gguf);
        let _ = std::fs::remove_file(&report);
    }
}

/// A real model folder under models/ (fetched by scripts/fetch-model.sh), or `None` with SKIPPED.
fn real_model(name: &str, test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
    if dir.join("config.json").exists() {
        return Some(dir);
    }
    if std::env::var("TWOSSP_REQUIRE_LLAMA_CPP").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: {} is missing (scripts/fetch-model.sh all)",
            dir.display()
        );
    }
    println!("SKIPPED {test}: {} not fetched", dir.display());
    None
}

#[test]
fn pruned_smollm2_gguf_runs_in_llama_cpp_and_quantizes_to_q4_k_m() {
    let test = "pruned_smollm2_gguf_runs_in_llama_cpp_and_quantizes_to_q4_k_m";
    let (Some(bin), Some(src)) = (
        llama_bin(test),
        real_model("SmolLM2-135M-Instruct.Q4_1", test),
    ) else {
        return;
    };
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/calib-sotu.jsonl");
    let gguf = scratch("smollm2-pruned.gguf");
    let report = PathBuf::from(format!("{}.pruning_report.json", gguf.display()));
    engine(&[
        "prune",
        "--model",
        src.to_str().unwrap(),
        "--sparsity",
        "0.375",
        "--calib",
        data.to_str().unwrap(),
        "--stage1-samples",
        "4",
        "--seq-len",
        "256",
        "--format",
        "gguf",
        "--out",
        gguf.to_str().unwrap(),
        "--force",
    ]);
    let r = common::reference_json_file(&report);
    assert_eq!(r["verification"]["identical"], true);
    let removed: Vec<u64> = r["removed_attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(removed.len(), 4);
    let g = GgufFile::open(&gguf).unwrap();
    for i in &removed {
        assert!(
            g.tensors
                .iter()
                .all(|t| !t.name.starts_with(&format!("blk.{i}.attn_"))),
            "block {i} holds attention tensors"
        );
    }
    // The tokenizer is the original GGUF's, copied through the imported folder's tokenizer.gguf.
    let original = GgufFile::open(&PathBuf::from(format!("{}.gguf", src.display()))).unwrap();
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
    ] {
        assert_eq!(g.get(key), original.get(key), "{key}");
    }
    let imported = scratch("smollm2-pruned-imported");
    engine(&[
        "import",
        gguf.to_str().unwrap(),
        "--out",
        imported.to_str().unwrap(),
        "--force",
    ]);
    let (ids, theirs) =
        same_perplexity_real(&bin, &gguf, &imported, "SmolLM2 pruned 37.5 % (deci gguf)");
    let vocab = Model::load(&imported).unwrap().config.vocab;
    let q = quantize_q4_k_m(&bin, &gguf, "smollm2-pruned");
    let quantized = perplexity(&llama_logits(&bin, &q, &ids), &ids, vocab);
    println!("  Q4_K_M of it in llama.cpp: perplexity {quantized:.4}");
    assert!(quantized.is_finite() && quantized < 4.0 * theirs);
    for p in [&gguf, &report, &q] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&imported);
}

#[test]
fn gemma3_exports_to_a_native_gguf_that_llama_cpp_runs() {
    let test = "gemma3_exports_to_a_native_gguf_that_llama_cpp_runs";
    let (Some(bin), Some(src)) = (llama_bin(test), real_model("gemma-3-270m-q4_k_m", test)) else {
        return;
    };
    let gguf = scratch("gemma3.gguf");
    engine(&[
        "export",
        "--model",
        src.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        gguf.to_str().unwrap(),
        "--force",
        "--no-verify",
    ]);
    same_perplexity_real(&bin, &gguf, &src, "Gemma-3-270M dense (gguf)");
    let _ = std::fs::remove_file(&gguf);
}

/// `same_perplexity` on 256 tokens of the wiki set, bound 1e-3 (real models, f32); returns the
/// ids and llama.cpp's perplexity.
fn same_perplexity_real(bin: &Path, gguf: &Path, model_dir: &Path, label: &str) -> (Vec<u32>, f64) {
    let model = Model::load(model_dir).unwrap();
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/wiki.jsonl"))
            .unwrap();
    let doc: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let ids = Tokenizer::from_dir(model_dir)
        .unwrap()
        .encode(doc["text"].as_str().unwrap())
        .unwrap();
    let ids = &ids[..256];
    let ours = perplexity(&model.logits(ids).unwrap(), ids, model.config.vocab);
    let theirs = perplexity(&llama_logits(bin, gguf, ids), ids, model.config.vocab);
    let rel = (theirs - ours).abs() / ours;
    println!("{label}: engine {ours:.5} llama.cpp {theirs:.5} (rel {rel:.2e})");
    assert!(rel <= 1e-3, "{label}: llama.cpp {theirs} vs engine {ours}");
    (ids.to_vec(), theirs)
}
