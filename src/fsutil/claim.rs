//! Exclusive ownership of an output path for the whole run: a lock file beside it (so two runs
//! writing the same `--out` cannot both succeed), and removal of what a killed run left there.

use super::interrupt::{remove_path, Tracked};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The right to write `dest`, held from the start of a run until its output is committed.
pub struct OutputClaim {
    dest: PathBuf,
    force: bool,
    lock_path: PathBuf,
    _lock: File,
    _tracked: Tracked,
}

impl OutputClaim {
    /// Claims `dest`: refuses an existing output without `force` and an output another run is
    /// writing; removes temporaries of earlier runs that were killed, saying so on stderr.
    pub fn acquire(dest: &Path, force: bool) -> Result<Self> {
        if dest.exists() && !force {
            bail!(
                "output {} already exists (use --force to overwrite)",
                dest.display()
            );
        }
        let (parent, name) = split(dest)?;
        let lock_path = parent.join(format!(".{name}.lock"));
        let lock = lock_exclusive(&lock_path, dest)?;
        let tracked = Tracked::new(lock_path.clone());
        for note in remove_stale(&parent, &name, dest)? {
            eprintln!("note: {note}");
        }
        Ok(Self {
            dest: dest.to_path_buf(),
            force,
            lock_path,
            _lock: lock,
            _tracked: tracked,
        })
    }

    /// The claimed output path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Whether an existing output may be replaced.
    pub fn force(&self) -> bool {
        self.force
    }

    /// A temporary sibling of the output for this process: `.NAME.tmp-PID` (plus `suffix`).
    pub fn temp_path(&self, suffix: &str) -> PathBuf {
        let (parent, name) = split(&self.dest).expect("checked when claimed");
        parent.join(format!(".{name}.tmp-{}{suffix}", std::process::id()))
    }
}

impl Drop for OutputClaim {
    fn drop(&mut self) {
        // Removed while still locked: a run that opened the old file re-checks the inode.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Parent folder (which must exist) and final name of an output path.
fn split(dest: &Path) -> Result<(PathBuf, String)> {
    let name = dest
        .file_name()
        .with_context(|| format!("output path {} has no final component", dest.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "parent directory of output {} does not exist",
            dest.display()
        );
    }
    Ok((parent, name))
}

/// Opens and locks `path`, retrying when the file was replaced between open and lock; the
/// holder's pid is written into it for the message another run gets.
fn lock_exclusive(path: &Path, dest: &Path) -> Result<File> {
    for _ in 0..10 {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot create the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another run".to_string()
                } else {
                    format!("another run (pid {holder})")
                };
                bail!(
                    "{who} is writing {}: wait for it to finish or choose another --out",
                    dest.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        let same = match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            continue; // the previous holder removed it while we waited: lock the new one
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())
            .with_context(|| format!("cannot write the lock file {}", path.display()))?;
        return Ok(file);
    }
    bail!("cannot lock {}: it keeps being replaced", path.display())
}

/// Removes `.NAME.tmp-*` and `.NAME.verify-*` entries beside `dest` (their writer is gone, since
/// the lock is ours); a previous output that a killed forced commit had moved aside is put back.
fn remove_stale(parent: &Path, name: &str, dest: &Path) -> Result<Vec<String>> {
    let prefixes = [format!(".{name}.tmp-"), format!(".{name}.verify-")];
    let mut notes = Vec::new();
    let entries =
        std::fs::read_dir(parent).with_context(|| format!("cannot list {}", parent.display()))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if !prefixes.iter().any(|p| file_name.starts_with(p.as_str())) {
            continue;
        }
        let path = entry.path();
        if file_name.ends_with(super::ASIDE_SUFFIX) && !dest.exists() {
            std::fs::rename(&path, dest).with_context(|| {
                format!("cannot restore {} to {}", path.display(), dest.display())
            })?;
            notes.push(format!(
                "restored {} from {}, moved aside by a run that was killed while replacing it",
                dest.display(),
                path.display()
            ));
            continue;
        }
        remove_path(&path);
        if path.exists() {
            bail!(
                "cannot remove {}, left by a run that was killed: remove it by hand",
                path.display()
            );
        }
        notes.push(format!(
            "removed {}, an unfinished output left by a run that was killed",
            path.display()
        ));
    }
    Ok(notes)
}
