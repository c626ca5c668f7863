//! Exports checked against the runtimes that load them: HF transformers' logits on every export
//! case (fixtures by tools/make_export_fixtures.py), the exporter's bytes pinned by the same
//! fixtures, the DeciLM config read the way vLLM's `nemotron_nas.py` and llama.cpp's converter
//! read it, and bad requests refused with nothing written.

mod common;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use twossp_engine::model::Model;

/// Max |logit difference| against transformers on the same exported folder (f32).
const LOGIT_TOL: f32 = 1e-4;

fn engine(args: &[String]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn scratch(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("twossp-export-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(common::fixtures().join("exports/cases.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["cases"]
        .as_array()
        .unwrap()
        .clone()
}

/// Runs a case's command into a fresh folder.
fn run_case(case: &Value) -> PathBuf {
    let name = case["name"].as_str().unwrap();
    let out = scratch(name);
    let f = common::fixtures();
    let args: Vec<String> = case["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("{F}", f.to_str().unwrap())
                .replace("{OUT}", out.to_str().unwrap())
        })
        .collect();
    let (code, err) = engine(&args);
    assert_eq!(code, 0, "{name}: {err}");
    out
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn exports_match_hf_transformers_and_their_pinned_bytes() {
    let mut failures = Vec::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let out = run_case(&case);
        let fixture = common::fixtures().join("exports").join(name);
        let manifest = common::reference_json_file(&fixture.join("manifest.json"));
        for (file, want) in manifest["files_sha256"].as_object().unwrap() {
            let got = sha256(&out.join(file));
            if got != want.as_str().unwrap() {
                failures.push(format!(
                    "{name}/{file}: the exporter's bytes changed; rerun tools/make_export_fixtures.py"
                ));
            }
        }
        let model = Model::load(&out).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (ids, expected, vocab) = common::reference(&fixture);
        assert_eq!(vocab, model.config.vocab);
        let got = model.logits(&ids).unwrap();
        let diff = common::max_abs_diff(&got, &expected);
        println!(
            "{name:<32} {:<20} max|dlogit| vs transformers {diff:.2e}",
            manifest["hf_class"].as_str().unwrap()
        );
        if diff.is_nan() || diff > LOGIT_TOL {
            failures.push(format!("{name}: max |logit diff| {diff:e}"));
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// vLLM's width rule (`nemotron_nas.py`): `ffn_mult` when the attribute exists, else
/// `intermediate_size`; the formula rounds up to a multiple of 256.
fn vllm_ffn_width(ffn: &Value, hidden: usize) -> usize {
    match ffn.get("ffn_mult") {
        Some(m) => {
            let raw = (2.0 * m.as_f64().unwrap() * hidden as f64 / 3.0) as usize;
            raw.div_ceil(256) * 256
        }
        None => ffn["intermediate_size"].as_u64().unwrap() as usize,
    }
}

/// Tensor shapes of a safetensors file by name.
fn shapes(path: &Path) -> std::collections::BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect()
}

#[test]
fn decilm_configs_read_as_vllm_and_llama_cpp_read_them() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let out = run_case(&case);
        let config = common::reference_json_file(&out.join("config.json"));
        if config["model_type"] != "nemotron-nas" {
            let _ = std::fs::remove_dir_all(&out);
            continue;
        }
        let hidden = config["hidden_size"].as_u64().unwrap() as usize;
        let heads = config["num_attention_heads"].as_u64().unwrap() as usize;
        let tensors = shapes(&out.join("model.safetensors"));
        let blocks = config["block_configs"].as_array().unwrap();
        assert!(
            !blocks[0]["attention"]["no_op"].as_bool().unwrap(),
            "{name}: block 0 needs attention"
        );
        let mut first_kv = None;
        for (i, b) in blocks.iter().enumerate() {
            let (att, ffn) = (&b["attention"], &b["ffn"]);
            // llama.cpp's converter indexes these raw keys; a missing one is a KeyError there.
            for key in ["no_op", "n_heads_in_group", "replace_with_linear"] {
                assert!(
                    att.get(key).is_some(),
                    "{name}: block {i} attention lacks '{key}'"
                );
            }
            assert!(
                ffn.get("ffn_mult").is_none_or(|m| m.is_number()),
                "{name}: ffn_mult must be a number or absent"
            );
            let p = format!("model.layers.{i}");
            let has = |t: &str| tensors.contains_key(&format!("{p}.{t}"));
            if att["no_op"].as_bool().unwrap() {
                // vLLM builds no attention module: any such key is unexpected and raises.
                assert!(
                    !has("input_layernorm.weight") && !has("self_attn.q_proj.weight"),
                    "{name}: block {i}"
                );
                assert!(
                    tensors
                        .keys()
                        .all(|k| !k.starts_with(&format!("{p}.self_attn."))),
                    "{name}: block {i}"
                );
            } else {
                let group = att["n_heads_in_group"].as_u64().unwrap() as usize;
                let kv = heads / group;
                first_kv.get_or_insert(kv);
                let head_dim = config["head_dim"].as_u64().unwrap() as usize;
                assert_eq!(
                    tensors[&format!("{p}.self_attn.k_proj.weight")],
                    vec![kv * head_dim, hidden],
                    "{name}"
                );
                assert!(has("input_layernorm.weight"), "{name}: block {i}");
            }
            let width = vllm_ffn_width(ffn, hidden);
            assert_eq!(
                tensors[&format!("{p}.mlp.gate_proj.weight")],
                vec![width, hidden],
                "{name}: block {i}"
            );
            assert_eq!(
                tensors[&format!("{p}.mlp.down_proj.weight")],
                vec![hidden, width],
                "{name}: block {i}"
            );
        }
        // vLLM takes the global KV heads from the first block with attention.
        assert_eq!(
            first_kv.unwrap(),
            config["num_key_value_heads"].as_u64().unwrap() as usize,
            "{name}"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn ffn_mult_profile_pads_to_multiples_of_256_and_the_engine_skips_the_padding() {
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "hetero_llama-decilm-ffn-mult")
        .unwrap();
    let out = run_case(&case);
    let config = common::reference_json_file(&out.join("config.json"));
    for b in config["block_configs"].as_array().unwrap() {
        assert_eq!(b["ffn"]["intermediate_size"], 256);
        assert!(b["ffn"]["ffn_mult"].is_number());
    }
    let model = Model::load(&out).unwrap();
    let dense = Model::load(&common::fixtures().join("hetero_llama")).unwrap();
    let widths = |m: &Model| {
        m.blocks
            .iter()
            .map(|b| b.ffn.as_ref().map_or(0, |f| f.width()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        widths(&model),
        widths(&dense),
        "padding neurons must not be computed"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn export_refuses_bad_requests_and_writes_nothing() {
    let f = common::fixtures();
    let fixture = |n: &str| f.join(n).to_str().unwrap().to_string();
    let existing = scratch("existing");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let not_a_model = scratch("src-not-a-model");
    std::fs::create_dir_all(&not_a_model).unwrap();
    // Block 0 without attention: a DeciLM config the engine reads, but DeciLM runtimes cannot.
    let no_block0 = common::scratch_copy(&f.join("hetero_llama"), "no-block0");
    let cfg = std::fs::read_to_string(no_block0.join("config.json")).unwrap();
    let mut cfg: Value = serde_json::from_str(&cfg).unwrap();
    cfg["block_configs"][0]["attention"] = serde_json::json!({"no_op": true});
    std::fs::write(no_block0.join("config.json"), cfg.to_string()).unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "gemma-decilm",
            vec![fixture("gemma3"), "decilm".into()],
            "cannot express Gemma-3",
        ),
        (
            "qwen3-decilm",
            vec![fixture("qwen3"), "decilm".into()],
            "cannot express Qwen3",
        ),
        (
            "block0-decilm",
            vec![no_block0.to_str().unwrap().into(), "decilm".into()],
            "needs attention in block 0",
        ),
        (
            "block0-gguf",
            vec![no_block0.to_str().unwrap().into(), "gguf".into()],
            "needs attention in block 0",
        ),
        (
            "format",
            vec![fixture("llama"), "onnx".into()],
            "invalid value 'onnx'",
        ),
        (
            "not-a-model",
            vec![not_a_model.to_str().unwrap().into(), "hf".into()],
            "config.json",
        ),
    ];
    for (tag, a, needle) in cases {
        let out = scratch(tag);
        let args: Vec<String> = [
            "export",
            "--model",
            &a[0],
            "--format",
            &a[1],
            "--out",
            out.to_str().unwrap(),
            "--no-verify",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (code, err) = engine(&args);
        assert_ne!(code, 0, "{tag}");
        assert!(err.contains(needle), "{tag}: expected '{needle}' in {err}");
        if tag != "format" {
            // clap's own usage errors add a usage block; ours are one line.
            assert_eq!(
                err.trim().lines().count(),
                1,
                "{tag}: one line expected: {err}"
            );
        }
        assert!(!out.exists(), "{tag}: output written despite the error");
    }
    let base = |extra: &[&str], out: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "export",
            "--model",
            &fixture("llama"),
            "--format",
            "hf",
            "--out",
            out.to_str().unwrap(),
            "--no-verify",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let out = scratch("dtype");
    let (code, err) = engine(&base(&["--dtype", "int3"], &out));
    assert_ne!(code, 0);
    assert!(err.contains("unknown --dtype 'int3'"), "{err}");
    assert!(!out.exists());
    let (code, err) = engine(&base(&[], &existing));
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 1);
}

#[test]
fn export_verifies_by_reload_and_never_touches_the_input() {
    let f = common::fixtures();
    let src = f.join("hetero_llama");
    let before: Vec<(String, String)> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha256(&p),
            )
        })
        .collect();
    for (format, dtype, identical) in [
        ("decilm", "auto", true),
        ("hf", "auto", true),
        ("decilm", "bf16", false),
    ] {
        let out = scratch(&format!("verify-{format}-{dtype}"));
        let args: Vec<String> = [
            "export",
            "--model",
            src.to_str().unwrap(),
            "--format",
            format,
            "--dtype",
            dtype,
            "--out",
            out.to_str().unwrap(),
            "--calib",
            f.join("text/sample.txt").to_str().unwrap(),
            "--seq-len",
            "64",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let run = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: Value = serde_json::from_slice(&run.stdout).unwrap();
        let v = &report["verification"];
        assert_eq!(v["identical"], identical, "{format} {dtype}: {v}");
        assert!(
            v["relative_difference"].as_f64().unwrap() <= v["bound"].as_f64().unwrap(),
            "{v}"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    let after: Vec<(String, String)> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha256(&p),
            )
        })
        .collect();
    assert_eq!(before, after, "the input folder changed");
}
