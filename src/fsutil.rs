//! Safe output handling: write into a temporary sibling, then rename; refuse to overwrite without force.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A directory being written next to its final destination; `commit` renames it into place.
pub struct StagedDir {
    tmp: PathBuf,
    dest: PathBuf,
    force: bool,
    committed: bool,
}

impl StagedDir {
    /// Starts writing `dest`; fails if it exists and `force` is false.
    pub fn create(dest: &Path, force: bool) -> Result<Self> {
        if dest.exists() && !force {
            bail!(
                "output {} already exists (use --force to overwrite)",
                dest.display()
            );
        }
        let tmp = temp_sibling(dest)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).ok();
        }
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            force,
            committed: false,
        })
    }

    /// Path of the temporary directory to write files into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished directory into place (replacing an existing one only when forced).
    pub fn commit(mut self) -> Result<()> {
        if self.dest.exists() {
            if !self.force {
                bail!(
                    "output {} appeared while writing (use --force to overwrite)",
                    self.dest.display()
                );
            }
            let old = self.tmp.with_extension("old");
            std::fs::rename(&self.dest, &old)
                .with_context(|| format!("cannot move aside {}", self.dest.display()))?;
            std::fs::rename(&self.tmp, &self.dest)
                .with_context(|| format!("cannot move output into {}", self.dest.display()))?;
            let _ = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
        } else {
            std::fs::rename(&self.tmp, &self.dest)
                .with_context(|| format!("cannot move output into {}", self.dest.display()))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Refuses an output that exists (without `force`) or that is the input itself.
pub fn check_output(out: &Path, input: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "output {} already exists (use --force to overwrite)",
            out.display()
        );
    }
    if let (Ok(a), Ok(b)) = (out.canonicalize(), input.canonicalize()) {
        if a == b {
            bail!("--out must differ from --model (the input is never modified)");
        }
    }
    Ok(())
}

/// A file being written next to its final destination; `commit` renames it into place.
pub struct StagedFile {
    tmp: PathBuf,
    dest: PathBuf,
    force: bool,
    committed: bool,
}

impl StagedFile {
    /// Starts writing `dest`; fails if it exists and `force` is false.
    pub fn create(dest: &Path, force: bool) -> Result<Self> {
        if dest.exists() && !force {
            bail!(
                "output {} already exists (use --force to overwrite)",
                dest.display()
            );
        }
        if dest.is_dir() {
            bail!("output {} is a directory, not a file", dest.display());
        }
        let tmp = temp_sibling(dest)?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            force,
            committed: false,
        })
    }

    /// Path of the temporary file to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the finished file into place (replacing an existing one only when forced).
    pub fn commit(mut self) -> Result<()> {
        if self.dest.exists() && !self.force {
            bail!(
                "output {} appeared while writing (use --force to overwrite)",
                self.dest.display()
            );
        }
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("cannot move output into {}", self.dest.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `.NAME.tmp-PID` beside `dest`, checking the parent folder exists.
fn temp_sibling(dest: &Path) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .with_context(|| format!("output path {} has no final component", dest.display()))?;
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
    Ok(parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Writes `bytes` to `path` atomically (temp file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename into {}", path.display()))?;
    Ok(())
}

/// Removes a path (file or folder) when dropped: scratch outputs never outlive an error.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0).or_else(|_| std::fs::remove_file(&self.0));
    }
}
