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
