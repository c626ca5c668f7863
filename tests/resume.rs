//! Resumable pruning: a run at another sparsity reuses stage 1, a run killed in stage 2 resumes
//! where it stopped, and both decide exactly what a run without the cache decides.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twossp-resume-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `prune` of the tiny Llama fixture into `out` (folder), with `extra` flags.
fn prune_cmd(out: &Path, sparsity: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twossp-engine"));
    c.env_remove("TWOSSP_TEST_STALL")
        .arg("prune")
        .arg("--model")
        .arg(common::fixtures().join("llama"))
        .args([
            "--sparsity",
            sparsity,
            "--format",
            "hf",
            "--no-verify",
            "--json",
        ])
        .arg("--calib")
        .arg(common::fixtures().join("text/sample.txt"))
        .args([
            "--seq-len",
            "32",
            "--stage1-samples",
            "4",
            "--stage2-samples",
            "2",
        ])
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn report_of(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The decisions of a report (what must not depend on the cache).
fn decisions(r: &Value) -> (Value, Value, Value, Value) {
    (
        r["removed_attention"].clone(),
        r["ffn_kept"].clone(),
        r["stage2_ppl"].clone(),
        r["stage2_ppl_before"].clone(),
    )
}

#[test]
fn another_sparsity_reuses_stage1_and_decides_the_same() {
    let dir = scratch("sparsity");
    let cache = dir.join("cache");
    let cache_flag = ["--cache-dir", cache.to_str().unwrap()];
    let first = report_of(&mut prune_cmd(&dir.join("a"), "0.375", &cache_flag));
    assert_eq!(first["reused"]["stage1_scores"], false);
    assert_eq!(first["reused"]["stage2_removals"], 0);

    let second = report_of(&mut prune_cmd(&dir.join("b"), "0.25", &cache_flag));
    assert_eq!(second["reused"]["stage1_scores"], true, "{second}");
    let fresh = report_of(&mut prune_cmd(&dir.join("c"), "0.25", &["--no-cache"]));
    assert_eq!(fresh["reused"]["cache_dir"], Value::Null);
    assert_eq!(decisions(&second), decisions(&fresh));

    // The same run again replays stage 2 entirely.
    let again = report_of(&mut prune_cmd(&dir.join("d"), "0.25", &cache_flag));
    let removed = again["removed_attention"].as_array().unwrap().len();
    assert_eq!(again["reused"]["stage2_removals"], removed as u64);
    assert_eq!(decisions(&again), decisions(&fresh));
    assert_eq!(again["block_evals_stage2_without_suffix_reuse"], 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_killed_in_stage2_resumes_where_it_stopped() {
    let dir = scratch("kill");
    let cache = dir.join("cache");
    let flags = [
        "--cache-dir",
        cache.to_str().unwrap(),
        "--remove-attention",
        "3",
    ];
    let mut child = prune_cmd(&dir.join("out"), "0.5", &flags)
        .env("TWOSSP_TEST_STALL", "stage2-step:60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first removal is journaled, then kill -9.
    let start = Instant::now();
    let journal = loop {
        let found = std::fs::read_dir(&cache)
            .ok()
            .and_then(|mut models| models.next())
            .and_then(|m| std::fs::read_dir(m.unwrap().path()).ok())
            .and_then(|files| {
                files.flatten().map(|f| f.path()).find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("stage2-")
                })
            });
        if let Some(p) = found {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if text.contains("\"removed\":[") && !text.contains("\"removed\":[]") {
                break p;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "prune ended early");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no journal appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(journal.exists());

    let resumed = report_of(&mut prune_cmd(&dir.join("out"), "0.5", &flags));
    assert_eq!(resumed["reused"]["stage1_scores"], true, "{resumed}");
    assert_eq!(resumed["reused"]["stage2_removals"], 1, "{resumed}");
    let fresh = report_of(&mut prune_cmd(
        &dir.join("fresh"),
        "0.5",
        &["--no-cache", "--remove-attention", "3"],
    ));
    assert_eq!(decisions(&resumed), decisions(&fresh));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_cache_is_ignored() {
    let dir = scratch("damaged");
    let cache = dir.join("cache");
    let flags = ["--cache-dir", cache.to_str().unwrap()];
    let first = report_of(&mut prune_cmd(&dir.join("a"), "0.3", &flags));
    for model in std::fs::read_dir(&cache).unwrap() {
        for f in std::fs::read_dir(model.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.file_name().unwrap() != "model.json" {
                std::fs::write(&p, b"garbage").unwrap();
            }
        }
    }
    let second = report_of(&mut prune_cmd(&dir.join("b"), "0.3", &flags));
    assert_eq!(second["reused"]["stage1_scores"], false);
    assert_eq!(second["reused"]["stage2_removals"], 0);
    assert_eq!(decisions(&first), decisions(&second));
    let _ = std::fs::remove_dir_all(&dir);
}
