//! `compare` end to end on a tiny model: every method × sparsity beside the dense model, the
//! tables and plots, cells equal to what `eval`, `tasks` and `prune` give on their own, resuming
//! without recomputing, and the refusals (nothing written).

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
}

fn text() -> PathBuf {
    common::fixtures().join("text/sample.txt")
}

fn model() -> PathBuf {
    common::fixtures().join("gemma3")
}

/// `compare` on the gemma3 fixture with small settings, plus `extra` arguments.
fn compare_command(out: &Path, extra: &[&str]) -> Command {
    let mut command = bin();
    command
        .args(["compare", "--model"])
        .arg(model())
        .arg("--out")
        .arg(out)
        .arg("--calib")
        .arg(text())
        .arg("--eval-data")
        .arg(text())
        .args(["--seq-len", "64", "--stage1-samples", "2", "--samples", "2"])
        .args(["--eval-seq-len", "64", "--eval-max-windows", "4"])
        .args(["--task", "arc_easy,piqa", "--json"])
        .args(if extra.contains(&"--limit") {
            &[][..]
        } else {
            &["--limit", "6"][..]
        })
        .args(extra);
    command
}

/// Runs `compare_command` to the end.
fn compare(out: &Path, extra: &[&str]) -> Output {
    let output = compare_command(out, extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    output
}

fn temp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("twossp-compare-{}-{tag}", std::process::id()))
}

#[test]
fn compare_scores_every_cell_as_the_single_commands_do_and_resumes() {
    let out = temp("full");
    let run = compare(&out, &["--sparsity", "0.25,0.5"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let result: Value = serde_json::from_slice(&run.stdout).unwrap();
    let cells = result["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1 + 5 * 2, "dense + 5 methods x 2 sparsities");
    for file in ["compare.md", "compare.csv", "compare.json"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(
            text.contains("blockpruner") && text.contains("dense"),
            "{file}"
        );
    }
    for plot in ["ppl_sample", "mean_accuracy", "prune_seconds"] {
        let svg = std::fs::read_to_string(out.join(format!("{plot}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("2ssp"), "{plot}.svg");
        let png = std::fs::read(out.join(format!("{plot}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}.png");
    }
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + cells.len());

    // The dense cell is what `eval` and `tasks` give on their own.
    let dense = &cells[0];
    assert_eq!(dense["method"], "dense");
    let eval = bin()
        .args([
            "eval",
            "--json",
            "--seq-len",
            "64",
            "--max-windows",
            "4",
            "--model",
        ])
        .arg(model())
        .arg("--data")
        .arg(text())
        .output()
        .unwrap();
    let eval: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(dense["perplexity"][0]["ppl"], eval["results"][0]["ppl"]);
    let tasks = bin()
        .args([
            "tasks",
            "--json",
            "--task",
            "arc_easy,piqa",
            "--limit",
            "6",
            "--model",
        ])
        .arg(model())
        .output()
        .unwrap();
    let tasks: Value = serde_json::from_slice(&tasks.stdout).unwrap();
    for k in 0..2 {
        assert_eq!(dense["tasks"][k]["acc"], tasks["tasks"][k]["acc"]);
    }
    // A pruned cell matches its pruning report, and pruning changed the model.
    for cell in &cells[1..] {
        let name = format!("{}-{}", cell["method"].as_str().unwrap(), cell["sparsity"]);
        let report = common::reference_json_file(&out.join(format!("reports/{name}.json")));
        assert_eq!(
            cell["sparsity_achieved"], report["sparsity_achieved"],
            "{name}"
        );
        assert_eq!(cell["params_main"], report["params_main_after"], "{name}");
        assert!(
            cell["params_main"].as_u64() < dense["params_main"].as_u64(),
            "{name}"
        );
        assert_ne!(
            cell["perplexity"][0]["ppl"], dense["perplexity"][0]["ppl"],
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_dir(out.join("models")).unwrap().count(),
        0,
        "models deleted"
    );

    // A rerun reuses every cell; other settings are refused without --force.
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let cell_file = out.join("cells/sleb-0.5.json");
    let before = stamp(&cell_file);
    let again = compare(&out, &["--sparsity", "0.25,0.5"]);
    assert!(again.status.success());
    let reread: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(reread == result, "a rerun reports the same cells");
    assert_eq!(
        stamp(&cell_file),
        before,
        "a finished cell is never recomputed"
    );
    let other = compare(&out, &["--sparsity", "0.25,0.5", "--stage2-samples", "2"]);
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("computed with other settings"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn compare_refuses_bad_input_before_writing_anything() {
    let cases: [(&str, &[&str], &str); 7] = [
        ("method", &["--methods", "2ssp,obs"], "obs"),
        (
            "slicegpt",
            &["--methods", "2ssp,slicegpt"],
            "slicegpt at sparsity",
        ),
        (
            "sparsity",
            &["--sparsity", "1.5"],
            "--sparsity must be in (0, 1)",
        ),
        (
            "budget",
            &["--methods", "sleb", "--sparsity", "0.75"],
            "SLEB never removes",
        ),
        ("task", &["--task", "arc_medium"], "arc_medium"),
        ("limit", &["--limit", "0"], "--limit must be at least 1"),
        (
            "evopress",
            &[
                "--methods",
                "evopress",
                "--evo-initial",
                "8",
                "--evo-selection-tokens",
                "64,100000000",
            ],
            "EvoPress minibatch of 2048 tokens needs 2 to 128 calibration tokens",
        ),
    ];
    for (tag, args, message) in cases {
        let out = temp(tag);
        let run = compare(&out, args);
        assert!(!run.status.success(), "{tag}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(message), "{tag}: {err}");
        assert!(!out.exists(), "{tag}: nothing may be written");
    }
}

#[test]
fn an_interrupted_compare_keeps_its_finished_cells_and_resumes() {
    let out = temp("interrupted");
    // Stalls after every finished cell: killed after the first, the dense model's.
    let mut child = compare_command(&out, &["--sparsity", "0.25", "--methods", "2ssp,sleb"])
        .env("TWOSSP_TEST_STALL", "compare-cell:60")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dense = out.join("cells/dense-0.json");
    let start = std::time::Instant::now();
    while !dense.exists() {
        assert!(child.try_wait().unwrap().is_none(), "compare ended early");
        assert!(
            start.elapsed().as_secs() < 60,
            "the dense cell never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(!child.wait().unwrap().success(), "SIGINT ends the run");
    let before = std::fs::read(&dense).unwrap();
    let stamp = std::fs::metadata(&dense).unwrap().modified().unwrap();
    let resumed = compare_command(&out, &["--sparsity", "0.25", "--methods", "2ssp,sleb"])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        err.contains("dense at sparsity 0: done in an earlier run"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dense).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&dense).unwrap().modified().unwrap(),
        stamp
    );
    let result: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(result["cells"].as_array().unwrap().len(), 3);
    std::fs::remove_dir_all(&out).unwrap();
}
