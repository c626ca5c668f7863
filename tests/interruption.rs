//! Outputs survive interruption: SIGINT/SIGTERM, SIGKILL, a second run writing the same `--out`,
//! a full disk and a read-only destination each leave nothing partial behind.
//!
//! `TWOSSP_TEST_STALL=tensor:SECS` makes a run sleep after writing its first tensor, so a signal
//! reliably lands while the output is half written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twossp-engine"));
    c.env_remove("TWOSSP_TEST_STALL");
    c
}

/// A tiny Llama with plain RoPE (GGUF-writable; ~200 kB of weights).
fn fixture_model() -> PathBuf {
    common::fixtures().join("llama_tied")
}

fn sample_text() -> PathBuf {
    common::fixtures().join("text/sample.txt")
}

/// A fresh, empty folder for one test's outputs.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twossp-int-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The command line of each job that writes `out`.
fn job_args(job: &str, out: &Path, dir: &Path) -> Vec<String> {
    let model = fixture_model().display().to_string();
    let text = sample_text().display().to_string();
    let out = out.display().to_string();
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match job {
        "export" => strs(&[
            "export",
            "--model",
            &model,
            "--format",
            "hf",
            "--out",
            &out,
            "--no-verify",
        ]),
        "prune" => strs(&[
            "prune",
            "--model",
            &model,
            "--sparsity",
            "0.3",
            "--out",
            &out,
            "--format",
            "gguf",
            "--calib",
            &text,
            "--seq-len",
            "32",
            "--stage1-samples",
            "2",
            "--stage2-samples",
            "2",
            "--no-verify",
        ]),
        "import" => {
            let gguf = dir.join("source.gguf");
            if !gguf.exists() {
                let made = bin()
                    .args([
                        "export",
                        "--model",
                        &model,
                        "--format",
                        "gguf",
                        "--no-verify",
                    ])
                    .arg("--out")
                    .arg(&gguf)
                    .output()
                    .unwrap();
                assert!(
                    made.status.success(),
                    "{}",
                    String::from_utf8_lossy(&made.stderr)
                );
            }
            strs(&["import", &gguf.display().to_string(), "--out", &out])
        }
        other => panic!("unknown job {other}"),
    }
}

/// Starts `args` stalled after its first tensor and waits until its temporary output exists.
fn start_stalled(args: &[String], dir: &Path, out_name: &str) -> Child {
    let mut child = bin()
        .args(args)
        .env("TWOSSP_TEST_STALL", "tensor:60")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = dir.join(format!(".{out_name}.tmp-{}", child.id()));
    let start = Instant::now();
    while !tmp.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("{args:?} ended ({status}) before writing: {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            tmp.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    child
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sigint_and_sigterm_remove_the_unfinished_output() {
    for (job, sig, code) in [
        ("export", "INT", 130),
        ("prune", "TERM", 143),
        ("import", "INT", 130),
        ("export", "TERM", 143),
    ] {
        let dir = scratch(&format!("sig-{job}-{sig}"));
        let out = dir.join("out");
        let args = job_args(job, &out, &dir);
        let before = listing(&dir);
        let child = start_stalled(&args, &dir, "out");
        signal(&child, sig);
        let done = child.wait_with_output().unwrap();
        let err = stderr_of(&done);
        assert_eq!(done.status.code(), Some(code), "{job} SIG{sig}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with(&format!(
                "error: interrupted by SIG{sig}: removed the unfinished output"
            )),
            "{err}"
        );
        assert_eq!(listing(&dir), before, "{job} SIG{sig} left files behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn the_run_after_a_sigkill_removes_what_it_left() {
    for job in ["export", "prune"] {
        let dir = scratch(&format!("kill-{job}"));
        let out = dir.join("out");
        let args = job_args(job, &out, &dir);
        let child = start_stalled(&args, &dir, "out");
        let pid = child.id();
        signal(&child, "KILL");
        child.wait_with_output().unwrap();
        let left = listing(&dir);
        assert!(
            left.contains(&format!(".out.tmp-{pid}")) && left.contains(&".out.lock".to_string()),
            "SIGKILL cannot clean up, so its temporary stays: {left:?}"
        );

        let again = bin().args(&args).output().unwrap();
        let err = stderr_of(&again);
        assert!(again.status.success(), "{job}: {err}");
        assert!(
            err.contains(&format!(
                "note: removed {}",
                dir.join(format!(".out.tmp-{pid}")).display()
            )) && err.contains("left by a run that was killed"),
            "{err}"
        );
        let mut expected = vec!["out".to_string()];
        if job == "prune" {
            expected.push("out.pruning_report.json".into());
        }
        let left: Vec<String> = listing(&dir)
            .into_iter()
            .filter(|n| n != "source.gguf")
            .collect();
        assert_eq!(left, expected, "{job}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn two_runs_cannot_write_the_same_output() {
    let dir = scratch("concurrent");
    let out = dir.join("out");
    let args = job_args("export", &out, &dir);
    let first = start_stalled(&args, &dir, "out");
    for force in [false, true] {
        let mut second = args.clone();
        if force {
            second.push("--force".into());
        }
        let run = bin().args(&second).output().unwrap();
        let err = stderr_of(&run);
        assert_eq!(run.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("another run (pid {}) is writing", first.id())),
            "{err}"
        );
    }
    signal(&first, "TERM");
    first.wait_with_output().unwrap();
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
    // Once the first is gone the output is free again.
    let run = bin().args(&args).output().unwrap();
    assert!(run.status.success(), "{}", stderr_of(&run));
    assert_eq!(listing(&dir), vec!["out"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mounts a tmpfs with `options` on a fresh folder; `None` (with the reason) where this
/// machine does not allow it.
fn mount_tmpfs(tag: &str, options: &str) -> Result<Mounted, String> {
    let dir = scratch(tag);
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(&dir)
        .stderr(Stdio::piped())
        .output();
    match status {
        Ok(o) if o.status.success() => Ok(Mounted(dir)),
        Ok(o) => Err(format!(
            "mount -t tmpfs failed ({}): needs root or CAP_SYS_ADMIN",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run mount: {e}")),
    }
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_nothing() {
    // The fixture model is ~200 kB: 64 kB fills up while writing its weights.
    let fs = match mount_tmpfs("enospc", "size=64k") {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED: full-disk test: {why}");
            return;
        }
    };
    for job in ["export", "import", "prune"] {
        let out = fs.0.join("out");
        let scratch_dir = scratch(&format!("enospc-src-{job}"));
        let mut args = job_args(job, &out, &scratch_dir);
        if job == "prune" {
            // GGUF keeps the report beside the file; write a folder here.
            let i = args.iter().position(|a| a == "gguf").unwrap();
            args[i] = "hf".into();
        }
        let run = bin().args(&args).output().unwrap();
        let err = stderr_of(&run);
        assert_eq!(run.status.code(), Some(1), "{job}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{job}: {err}");
        assert!(err.contains("No space left on device"), "{job}: {err}");
        assert!(listing(&fs.0).is_empty(), "{job}: {:?}", listing(&fs.0));
        let _ = std::fs::remove_dir_all(&scratch_dir);
    }
}

#[test]
fn a_read_only_destination_is_a_clear_error() {
    let fs = match mount_tmpfs("readonly", "ro,size=1m") {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED: read-only test: {why}");
            return;
        }
    };
    let out = fs.0.join("out");
    let run = bin()
        .args(job_args("export", &out, &fs.0))
        .output()
        .unwrap();
    let err = stderr_of(&run);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(listing(&fs.0).is_empty());
}
