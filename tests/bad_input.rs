//! Bad input: every case gives a clear one-line error and a non-zero exit, never a panic.

mod common;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the binary and returns (exit code, stderr), asserting the error is one clean line.
fn run_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args(args)
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic on {args:?}: {stderr}");
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "error should be one line: {stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
    }
    (code, stderr)
}

/// `eval` on `model` with the fixture text, expecting failure mentioning `needle`.
fn eval_fails_with(model: &Path, needle: &str) {
    let text = common::fixtures().join("text/sample.txt");
    let (code, err) = run_cli(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--seq-len",
        "16",
    ]);
    assert_ne!(code, 0, "expected failure for {needle}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

fn base_model() -> PathBuf {
    common::fixtures().join("llama")
}

/// Rewrites model.safetensors of `dir`, letting `edit` change each tensor's (dtype, shape, bytes) or drop it.
fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((d, s, b)) = edit(
            &name,
            view.dtype(),
            view.shape().to_vec(),
            view.data().to_vec(),
        ) {
            kept.push((name, d, s, b));
        }
    }
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn missing_config_json() {
    let dir = common::scratch_copy(&base_model(), "noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    eval_fails_with(&dir, "config.json");
}

#[test]
fn garbled_config_json() {
    let dir = common::scratch_copy(&base_model(), "garbled");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\", oops").unwrap();
    eval_fails_with(&dir, "not valid JSON");
}

#[test]
fn unsupported_architecture() {
    let dir = common::scratch_copy(&base_model(), "arch");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    eval_fails_with(&dir, "unsupported architecture: model_type 'gpt_neox'");
}

#[test]
fn truncated_safetensors() {
    let dir = common::scratch_copy(&base_model(), "trunc");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    eval_fails_with(&dir, "not a valid safetensors file");
}

#[test]
fn unknown_dtype() {
    let dir = common::scratch_copy(&base_model(), "dtype");
    rewrite_weights(&dir, |name, d, s, b| {
        Some(if name == "model.norm.weight" {
            (Dtype::I32, s, b)
        } else {
            (d, s, b)
        })
    });
    eval_fails_with(&dir, "unsupported dtype I32");
}

#[test]
fn wrong_tensor_shape() {
    let dir = common::scratch_copy(&base_model(), "shape");
    rewrite_weights(&dir, |name, d, mut s, mut b| {
        if name == "model.norm.weight" {
            s[0] -= 1;
            b.truncate(b.len() - 4);
        }
        Some((d, s, b))
    });
    eval_fails_with(&dir, "tensor 'model.norm.weight' has shape");
}

#[test]
fn missing_tensor() {
    let dir = common::scratch_copy(&base_model(), "missing");
    rewrite_weights(&dir, |name, d, s, b| {
        (name != "model.layers.1.mlp.down_proj.weight").then_some((d, s, b))
    });
    eval_fails_with(&dir, "missing tensor 'model.layers.1.mlp.down_proj.weight'");
}

#[test]
fn missing_model_folder() {
    eval_fails_with(Path::new("/nonexistent/model"), "does not exist");
}

/// `eval` of the base model on a data file `name` holding `contents`, expecting failure mentioning `needle`.
fn eval_data_fails_with(name: &str, contents: &str, needle: &str) {
    let data = std::env::temp_dir().join(format!("twossp-{}-{name}", std::process::id()));
    std::fs::write(&data, contents).unwrap();
    let (code, err) = run_cli(&[
        "eval",
        "--model",
        base_model().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "expected failure for {name}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

#[test]
fn empty_data_file() {
    eval_data_fails_with("empty.txt", "  \n", "contains no text");
}

#[test]
fn data_shorter_than_one_window() {
    eval_data_fails_with(
        "short.txt",
        "Just a few words.",
        "fewer than one window of 2048",
    );
}

#[test]
fn malformed_jsonl_line_is_located() {
    let lines = "{\"text\": \"fine\"}\n{\"body\": \"no text field\"}\n";
    eval_data_fails_with("bad.jsonl", lines, ":2: no string field 'text'");
}

#[test]
fn unsupported_data_extension() {
    eval_data_fails_with("bad.csv", "a,b\n", "unsupported data file type '.csv'");
}

#[test]
fn device_options_are_checked() {
    let model = base_model();
    let model = model.to_str().unwrap();
    let text = common::fixtures().join("text/sample.txt");
    let text = text.to_str().unwrap();
    let (code, err) = run_cli(&["eval", "--model", model, "--data", text, "--device", "tpu"]);
    assert!(code != 0 && err.contains("unknown --device 'tpu'"), "{err}");
    let (code, err) = run_cli(&["bench", "--model", model, "--sparsity", "0.3"]);
    assert!(
        code != 0 && err.contains("--sparsity is for --synthetic-weights"),
        "{err}"
    );
    let (code, err) = run_cli(&[
        "eval",
        "--synthetic-weights",
        "configs/llama-2-7b.json",
        "--device",
        "cpu",
    ]);
    assert!(code != 0 && err.contains("needs a CUDA device"), "{err}");
}

/// The fixture's config.json with `field` set to `value` (a JSON literal).
fn with_config_field(tag: &str, field: &str, value: &str) -> PathBuf {
    let dir = common::scratch_copy(&base_model(), tag);
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[field] = serde_json::from_str(value).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dir
}

#[test]
fn absurd_sizes_in_config_are_named_not_allocated() {
    // Each of these once sized an allocation before any tensor was looked at (88 GB for the layers).
    for field in [
        "num_hidden_layers",
        "hidden_size",
        "vocab_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "sliding_window",
    ] {
        for value in ["1000000000", "18446744073709551615"] {
            let dir = with_config_field(&format!("absurd-{field}"), field, value);
            eval_fails_with(
                &dir,
                &format!("'{field}' is {value}, larger than any real model's"),
            );
        }
    }
}

#[test]
fn absurd_ffn_width_in_block_configs_is_named() {
    let dir = with_config_field(
        "absurd-block-ffn",
        "block_configs",
        r#"[{"ffn": {"intermediate_size": 99999999999}}, {}, {}]"#,
    );
    eval_fails_with(&dir, "'intermediate_size' is 99999999999");
    let dir = with_config_field(
        "absurd-block-mult",
        "block_configs",
        r#"[{"ffn": {"ffn_mult": 1e300}}, {}, {}]"#,
    );
    eval_fails_with(&dir, "gives an FFN width outside 0..=1048576");
}

#[test]
fn config_layer_count_must_match_the_tensors() {
    let dir = with_config_field("layers-more", "num_hidden_layers", "7");
    eval_fails_with(
        &dir,
        "config.json declares num_hidden_layers = 7 but the weights hold 3 blocks",
    );
    let dir = with_config_field("layers-fewer", "num_hidden_layers", "2");
    eval_fails_with(
        &dir,
        "config.json declares num_hidden_layers = 2 but the weights hold 3 blocks",
    );
}

#[test]
fn config_vocab_must_match_the_embedding() {
    let dir = with_config_field("vocab-mismatch", "vocab_size", "5000");
    eval_fails_with(
        &dir,
        "config.json declares vocab_size = 5000 and hidden_size = 36 but model.embed_tokens.weight has shape [317, 36]",
    );
}

#[test]
fn absurd_seq_len_is_refused_before_allocating() {
    let text = common::fixtures().join("text/sample.txt");
    let (code, err) = run_cli(&[
        "eval",
        "--model",
        base_model().to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--seq-len",
        "100000000000",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--seq-len"), "{err}");
}
