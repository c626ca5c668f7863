//! Suffix reuse and the `prune` command's output folder and refusals (the decisions against the
//! brute-force HF reference are checked on every backend in tests/engines.rs).

mod common;

use std::path::PathBuf;
use std::process::Command;
use twossp_engine::model::{Model, Workspace};
use twossp_engine::prune::balance::AttentionBudget;
use twossp_engine::prune::{self, PruneOptions};

fn sample_text() -> PathBuf {
    common::fixtures().join("text/sample.txt")
}

#[test]
fn suffix_reuse_gives_the_full_forward_perplexity() {
    let dir = common::fixtures().join("llama");
    let mut model = Model::load(&dir).unwrap();
    let windows = common::calibration(&dir, 64);
    let w: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let opts = PruneOptions {
        sparsity: 0.375,
        budget: AttentionBudget::Fixed(2),
        ffn_multiple_of: None,
        protected_attention: vec![],
    };
    let (out, _) = prune::run(&mut model, &opts, &w[..4], &w[..1], None).unwrap();
    assert_eq!(out.stage2.removed.len(), 2);
    let (nll, n) = model.window_nll(w[0], &mut Workspace::default()).unwrap();
    let full = (nll / n as f64).exp();
    assert_eq!(
        full.to_bits(),
        out.stage2.ppl_after[1].to_bits(),
        "suffix {} vs full {full}",
        out.stage2.ppl_after[1]
    );
    assert!(out.stage2.block_evals < out.stage2.block_evals_reference + 2 * 3);
}

#[test]
fn protected_blocks_keep_their_attention() {
    let dir = common::fixtures().join("gemma3");
    let mut model = Model::load(&dir).unwrap();
    let windows = common::calibration(&dir, 64);
    let w: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let opts = PruneOptions {
        sparsity: 0.375,
        budget: AttentionBudget::Fixed(3),
        ffn_multiple_of: None,
        protected_attention: vec![0],
    };
    let (out, _) = prune::run(&mut model, &opts, &w[..2], &w[..1], None).unwrap();
    assert!(!out.stage2.removed.contains(&0));
    assert!(model.blocks[0].attention.is_some());
    assert_eq!(out.stage2.removed.len(), 3);
}

/// Runs `prune` on the llama fixture with extra arguments; returns (exit code, stderr, output folder).
fn prune_cli(tag: &str, extra: &[&str]) -> (i32, String, PathBuf) {
    let out_dir = std::env::temp_dir().join(format!("twossp-prune-{}-{tag}", std::process::id()));
    let model = common::fixtures().join("llama");
    let text = sample_text();
    let mut args = vec![
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    args.extend(["--calib", text.to_str().unwrap()]);
    if !extra.contains(&"--stage1-samples") {
        args.extend(["--stage1-samples", "4"]);
    }
    if !extra.contains(&"--seq-len") {
        args.extend(["--seq-len", "64"]);
    }
    args.extend(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr, out_dir)
}

#[test]
fn prune_writes_a_folder_that_reloads_with_the_same_perplexity() {
    let (code, err, dir) = prune_cli(
        "ok",
        &["--sparsity", "0.375", "--remove-attention", "1", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pruning_report.json")).unwrap())
            .unwrap();
    for key in [
        "method",
        "sparsity_target",
        "sparsity_achieved",
        "params_main_before",
        "params_main_after",
        "params_total_before",
        "params_total_after",
        "n_attn_removed",
        "removed_attention",
        "stage2_ppl",
        "ffn_keep",
        "ffn_kept",
        "calibration",
        "seconds",
        "backend",
        "engine_version",
        "seed",
    ] {
        assert!(report.get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(report["verification"]["identical"], true);
    // The default output (DeciLM for Llama) needs attention in block 0: protected, and said so.
    assert_eq!(report["export"]["format"], "decilm");
    assert!(
        report["protected_for_format"].is_string(),
        "{}",
        report["protected_for_format"]
    );
    assert!(report["removed_attention"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b != 0));
    let removed = report["removed_attention"][0].as_u64().unwrap() as usize;
    let model = Model::load(&dir).unwrap();
    assert!(model.blocks[removed].attention.is_none());
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&st)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&format!("model.layers.{removed}.self_attn"))),
        "removed attention saved"
    );
    // A second run without --force must refuse and leave the folder alone.
    let before = std::fs::read(dir.join("pruning_report.json")).unwrap();
    let (code, err, _) = prune_cli("ok", &["--sparsity", "0.375"]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        before,
        std::fs::read(dir.join("pruning_report.json")).unwrap()
    );
}

#[test]
fn prune_to_native_hf_keeps_removed_attention_as_zeros_without_protecting_block_0() {
    let (code, err, dir) = prune_cli(
        "hf",
        &[
            "--sparsity",
            "0.375",
            "--remove-attention",
            "2",
            "--format",
            "hf",
            "--force",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pruning_report.json")).unwrap())
            .unwrap();
    assert!(report["protected_for_format"].is_null());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert!(config.get("block_configs").is_none());
    let mut zeroed: Vec<u64> = config["twossp_zero_attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let mut removed: Vec<u64> = report["removed_attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    zeroed.sort_unstable();
    removed.sort_unstable();
    assert_eq!(zeroed, removed);
    let model = Model::load(&dir).unwrap();
    for &b in &removed {
        assert!(
            model.blocks[b as usize].attention.is_none(),
            "zero attention {b} is computed"
        );
    }
    assert_eq!(report["verification"]["identical"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prune_refuses_bad_requests_and_writes_nothing() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("s0", &["--sparsity", "0"], "--sparsity must be in (0, 1)"),
        ("s1", &["--sparsity", "1.2"], "--sparsity must be in (0, 1)"),
        (
            "infeasible",
            &["--sparsity", "0.05", "--remove-attention", "3"],
            "infeasible balance",
        ),
        (
            "short",
            &["--sparsity", "0.3", "--seq-len", "4096"],
            "fewer than one window of 4096",
        ),
        (
            "samples",
            &["--sparsity", "0.3", "--stage1-samples", "500"],
            "are needed",
        ),
    ];
    for (tag, extra, needle) in cases {
        let (code, err, dir) = prune_cli(tag, extra);
        assert_ne!(code, 0, "{tag}");
        assert!(err.contains(needle), "{tag}: expected '{needle}' in {err}");
        assert!(!dir.exists(), "{tag}: output written despite the error");
    }
}

#[test]
fn prune_refuses_an_unknown_architecture_and_writes_nothing() {
    let model = common::scratch_copy(&common::fixtures().join("llama"), "prune-arch");
    let cfg = std::fs::read_to_string(model.join("config.json"))
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(model.join("config.json"), cfg).unwrap();
    let out_dir =
        std::env::temp_dir().join(format!("twossp-prune-{}-arch-out", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args([
            "prune",
            "--model",
            model.to_str().unwrap(),
            "--sparsity",
            "0.3",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .args([
            "--calib",
            sample_text().to_str().unwrap(),
            "--seq-len",
            "64",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unsupported architecture: model_type 'gpt_neox'"),
        "{err}"
    );
    assert!(!out_dir.exists());
}

/// Runs `f` on a rayon pool of `threads` threads (the engine reads its thread count from the pool).
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Stage 2 scores its candidates side by side, each bypassing its submodule in a shared model: each
/// perplexity must be, bit for bit, that of the model with the submodule taken out, evaluated one
/// window after another on one thread. Llama and Gemma-3 (sliding-window attention), two windows.
#[test]
fn candidates_scored_side_by_side_equal_each_part_taken_out() {
    use twossp_engine::engine::{Engine, SubModule};
    use twossp_engine::prune::stage2::Suffix;
    for fixture in ["llama", "gemma3"] {
        let dir = common::fixtures().join(fixture);
        let windows = common::calibration(&dir, 64);
        let w: Vec<&[u32]> = windows.iter().take(2).map(Vec::as_slice).collect();
        assert_eq!(w.len(), 2);
        let mut shared = Model::load(&dir).unwrap();
        let n_blocks = shared.blocks.len();
        let skips: Vec<_> = [SubModule::Attention, SubModule::Mlp]
            .into_iter()
            .flat_map(|part| (0..n_blocks).map(move |i| Some((part, i))))
            .chain([None])
            .collect();
        let side_by_side = on_threads(4, || {
            assert!(
                shared.concurrent_passes(skips.len(), 64) > 1,
                "{fixture}: no concurrency"
            );
            let mut suffix = Suffix::new(&mut shared, &w).unwrap();
            let done = indicatif::ProgressBar::hidden();
            suffix.ppl_without_each_part(&skips, &done).unwrap()
        });
        let mut model = Model::load(&dir).unwrap();
        for (skip, got) in skips.iter().zip(&side_by_side) {
            let want = on_threads(1, || match *skip {
                Some((SubModule::Attention, i)) => {
                    let held = model.take_attention(i);
                    let ppl = model.perplexity(&w, "one by one").unwrap();
                    model.restore_attention(i, held);
                    ppl
                }
                Some((SubModule::Mlp, i)) => {
                    let held = model.take_ffn(i);
                    let ppl = model.perplexity(&w, "one by one").unwrap();
                    model.restore_ffn(i, held);
                    ppl
                }
                None => model.perplexity(&w, "one by one").unwrap(),
            });
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{fixture} {skip:?}: {got} vs {want}"
            );
        }
    }
}

/// Stage 1's scores and a perplexity over several windows, computed with windows side by side on
/// four threads, equal one window after another on one thread bit for bit.
#[test]
fn side_by_side_windows_give_the_sequential_scores_and_perplexity() {
    use twossp_engine::engine::Engine;
    let dir = common::fixtures().join("gemma3");
    let windows = common::calibration(&dir, 64);
    let w: Vec<&[u32]> = windows.iter().take(5).map(Vec::as_slice).collect();
    assert_eq!(w.len(), 5);
    let model = Model::load(&dir).unwrap();
    let run = |threads| {
        on_threads(threads, || {
            let scores = model.score_neurons(&w).unwrap();
            let ppl = twossp_engine::eval::perplexity::perplexity(&model, &w, "t").unwrap();
            (scores, ppl.mean_nll.to_bits(), ppl.predicted_tokens)
        })
    };
    let (one, four) = (run(1), run(4));
    assert!(on_threads(4, || model.concurrent_passes(w.len(), 64)) > 1);
    assert_eq!(one, four);
}
