//! Safe output handling: claim the output for the whole run, write into a temporary sibling,
//! rename into place when complete, and leave nothing behind on error, interrupt or full disk.

mod claim;
pub mod interrupt;
mod staged;

pub use claim::OutputClaim;
pub use staged::{OutputKind, Staged};

use anyhow::{bail, Context, Result};
use interrupt::Tracked;
use std::path::{Path, PathBuf};

/// Suffix of a previous output moved aside while a forced commit replaces it.
const ASIDE_SUFFIX: &str = ".old";

/// Claims `out` for this run: refuses an existing output (without `force`), the input itself,
/// and an output another run is writing.
pub fn claim_output(out: &Path, input: &Path, force: bool) -> Result<OutputClaim> {
    if let (Ok(a), Ok(b)) = (out.canonicalize(), input.canonicalize()) {
        if a == b {
            bail!("--out must differ from --model (the input is never modified)");
        }
    }
    OutputClaim::acquire(out, force)
}

/// Writes `bytes` to `path` atomically (temporary sibling, flushed, then renamed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _tracked = Tracked::new(tmp.clone());
    let written = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename into {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes a path (file or folder) when dropped, or when the process is interrupted: scratch
/// outputs never outlive an error.
pub struct RemoveOnDrop {
    path: PathBuf,
    _tracked: Tracked,
}

impl RemoveOnDrop {
    /// Takes charge of `path`.
    pub fn new(path: PathBuf) -> Self {
        let tracked = Tracked::new(path.clone());
        Self {
            path,
            _tracked: tracked,
        }
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        interrupt::remove_path(&self.path);
    }
}

/// Test hook: when `TWOSSP_TEST_STALL` names this point, sleep there for its seconds
/// (`staged:30`), so interruption tests can signal a run while its output is half written.
pub(crate) fn stall_point(point: &str) {
    let Ok(spec) = std::env::var("TWOSSP_TEST_STALL") else {
        return;
    };
    if let Some((name, secs)) = spec.split_once(':') {
        if name == point {
            let secs: u64 = secs.parse().unwrap_or(30);
            std::thread::sleep(std::time::Duration::from_secs(secs));
        }
    }
}
