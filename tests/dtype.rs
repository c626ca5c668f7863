//! `--dtype`: 16-bit checkpoints evaluate and prune at their own precision. Widening is exact, so
//! f16 weights (and bf16 weights through the widening kernel) give bit-for-bit the perplexity of
//! `--dtype f32` on the same checkpoint; the bf16 kernels (AMX, AVX512-BF16) stay close to it;
//! unknown values are refused.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn engine(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn scratch(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("twossp-dtype-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// The fixture Llama exported as an HF folder with `dtype` weights.
fn export(dtype: &str) -> PathBuf {
    let out = scratch(dtype);
    let src = common::fixtures().join("llama");
    let (code, _, err) = engine(
        &[
            "export",
            "--model",
            src.to_str().unwrap(),
            "--format",
            "hf",
            "--dtype",
            dtype,
            "--no-verify",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    out
}

/// Perplexity of `model` on the fixture text with `--dtype dtype`, and the kernels it reports.
fn ppl(model: &Path, dtype: &str, env: &[(&str, &str)]) -> (f64, String) {
    let text = common::fixtures().join("text/sample.txt");
    let (code, out, err) = engine(
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            text.to_str().unwrap(),
            "--seq-len",
            "64",
            "--dtype",
            dtype,
            "--json",
        ],
        env,
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    (
        v["results"][0]["ppl"].as_f64().unwrap(),
        v["kernels"].as_str().unwrap().to_string(),
    )
}

#[test]
fn f16_checkpoint_is_exactly_its_f32_widening() {
    let dir = export("f16");
    let (auto, kernels) = ppl(&dir, "auto", &[]);
    let (exact, _) = ppl(&dir, "f32", &[]);
    assert!(kernels.starts_with("f16 weights"), "{kernels}");
    assert_eq!(auto.to_bits(), exact.to_bits(), "f16 {auto} vs f32 {exact}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bf16_checkpoint_widened_is_exact_and_the_bf16_kernels_are_close() {
    let dir = export("bf16");
    let (exact, _) = ppl(&dir, "f32", &[]);
    let (widened, kernels) = ppl(&dir, "auto", &[("TWOSSP_BF16_KERNEL", "widen")]);
    assert!(kernels.contains("widened"), "{kernels}");
    assert_eq!(
        widened.to_bits(),
        exact.to_bits(),
        "widened {widened} vs f32 {exact}"
    );
    for cap in ["avx512bf16", "amx"] {
        let (bf16, kernels) = ppl(&dir, "auto", &[("TWOSSP_BF16_KERNEL", cap)]);
        let rel = (bf16 - exact).abs() / exact;
        println!(
            "TWOSSP_BF16_KERNEL={cap}: {kernels}: ppl {bf16} vs f32 math {exact} (rel {rel:.2e})"
        );
        assert!(rel < 5e-3, "{kernels}: {bf16} vs {exact}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prune_in_bf16_writes_bf16_and_reports_it() {
    let src = common::fixtures().join("llama");
    let out = scratch("prune-bf16");
    let text = common::fixtures().join("text/sample.txt");
    let (code, stdout, err) = engine(
        &[
            "prune",
            "--model",
            src.to_str().unwrap(),
            "--sparsity",
            "0.375",
            "--out",
            out.to_str().unwrap(),
            "--calib",
            text.to_str().unwrap(),
            "--seq-len",
            "64",
            "--dtype",
            "bf16",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["dtype"], "bf16", "{report}");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, embed) = st
        .tensors()
        .into_iter()
        .find(|(n, _)| n.contains("embed_tokens"))
        .unwrap();
    assert_eq!(embed.dtype(), safetensors::Dtype::BF16);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn unknown_dtype_is_refused() {
    let text = common::fixtures().join("text/sample.txt");
    let model = common::fixtures().join("llama");
    for cmd in ["eval", "prune"] {
        let mut args = vec![cmd, "--model", model.to_str().unwrap(), "--dtype", "int3"];
        args.extend(
            ["--data", text.to_str().unwrap()]
                .iter()
                .filter(|_| cmd == "eval"),
        );
        args.extend(
            ["--sparsity", "0.5", "--out", "/nonexistent/never"]
                .iter()
                .filter(|_| cmd == "prune"),
        );
        let (code, _, err) = engine(&args, &[]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(
            err.contains("unknown --dtype 'int3' (expected auto, f32, bf16 or f16)"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
