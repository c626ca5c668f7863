//! An output written into a temporary sibling and renamed into place only when complete, so an
//! error, a full disk or an interrupt leaves nothing partial behind.

use super::claim::OutputClaim;
use super::interrupt::{remove_path, Tracked};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Whether the output is a folder (HF, DeciLM, imports) or one file (GGUF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A checkpoint folder.
    Dir,
    /// A single file.
    File,
}

/// An output being written beside its destination; [`Staged::commit`] renames it into place.
pub struct Staged {
    tmp: PathBuf,
    kind: OutputKind,
    claim: OutputClaim,
    committed: bool,
    _tracked: Tracked,
}

impl Staged {
    /// Starts writing the claimed output (a folder is created; a file is left for the writer).
    pub fn create(claim: OutputClaim, kind: OutputKind) -> Result<Self> {
        let dest = claim.dest();
        if kind == OutputKind::File && dest.is_dir() {
            bail!("output {} is a directory, not a file", dest.display());
        }
        let tmp = claim.temp_path("");
        let tracked = Tracked::new(tmp.clone());
        if kind == OutputKind::Dir {
            std::fs::create_dir(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
        }
        super::stall_point("staged");
        Ok(Self {
            tmp,
            kind,
            claim,
            committed: false,
            _tracked: tracked,
        })
    }

    /// The temporary path being written.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished output into place, replacing an existing one only when forced.
    pub fn commit(mut self) -> Result<()> {
        let dest = self.claim.dest().to_path_buf();
        sync_output(&self.tmp, self.kind)?;
        if dest.exists() && !self.claim.force() {
            bail!(
                "output {} appeared while writing (use --force to overwrite)",
                dest.display()
            );
        }
        let aside = self.claim.temp_path(super::ASIDE_SUFFIX);
        let tracked = &self._tracked;
        let replaced = dest.exists();
        tracked.critical(replaced.then(|| (aside.clone(), dest.clone())), || {
            if replaced {
                std::fs::rename(&dest, &aside)
                    .with_context(|| format!("cannot move aside {}", dest.display()))?;
            }
            let moved = std::fs::rename(&self.tmp, &dest)
                .with_context(|| format!("cannot move output into {}", dest.display()));
            if moved.is_err() && replaced {
                let _ = std::fs::rename(&aside, &dest);
            }
            moved
        })?;
        if replaced {
            remove_path(&aside);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            remove_path(&self.tmp);
        }
    }
}

/// Flushes the finished output to disk before it is renamed into place, so that a write error
/// the file system reports late (a full disk on NFS, an I/O error) fails the run instead.
fn sync_output(path: &Path, kind: OutputKind) -> Result<()> {
    let files: Vec<PathBuf> = match kind {
        OutputKind::File => vec![path.to_path_buf()],
        OutputKind::Dir => std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
    };
    for f in files {
        std::fs::File::open(&f)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot flush {} to disk", f.display()))?;
    }
    Ok(())
}
