//! What a SIGINT or SIGTERM must undo: every unfinished output of this process is registered
//! here, and [`install`]'s handler thread removes them all before exiting with 128 + the signal.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A path this process is writing and must not leave behind.
struct Entry {
    id: u64,
    path: PathBuf,
    /// A previous output moved aside during a forced commit: `(aside, dest)` is put back.
    restore: Option<(PathBuf, PathBuf)>,
}

static ENTRIES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn entries() -> MutexGuard<'static, Vec<Entry>> {
    ENTRIES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registration of one unfinished path; dropping it unregisters (the owner cleans up itself).
pub struct Tracked(u64);

impl Tracked {
    /// Registers `path` (a file or folder) for removal if the process is interrupted.
    pub fn new(path: PathBuf) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        entries().push(Entry {
            id,
            path,
            restore: None,
        });
        Tracked(id)
    }

    /// Runs `f` with the handler held off, so it never sees the renames of a commit half done.
    /// `aside` is the previous output `f` may move out of `dest`'s way (put back on interrupt).
    pub fn critical<T>(&self, aside: Option<(PathBuf, PathBuf)>, f: impl FnOnce() -> T) -> T {
        let mut list = entries();
        if let Some(e) = list.iter_mut().find(|e| e.id == self.0) {
            e.restore = aside;
        }
        let out = f();
        if let Some(e) = list.iter_mut().find(|e| e.id == self.0) {
            e.restore = None;
        }
        out
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        entries().retain(|e| e.id != self.0);
    }
}

/// Removes every registered path (and puts back a previous output moved aside); returns what
/// was removed.
fn clean_up() -> Vec<PathBuf> {
    let mut list = entries();
    let mut removed = Vec::new();
    for e in list.drain(..) {
        remove_path(&e.path);
        if let Some((aside, dest)) = &e.restore {
            if aside.exists() && !dest.exists() {
                let _ = std::fs::rename(aside, dest);
            }
        }
        removed.push(e.path);
    }
    // The handler exits the process while holding the list, so nothing registers after this.
    std::mem::forget(list);
    removed
}

/// Removes a file or a folder, retrying a folder that another thread was still filling.
pub(crate) fn remove_path(path: &std::path::Path) {
    for _ in 0..5 {
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(path).is_ok()
        } else {
            std::fs::remove_file(path).is_ok() || !path.exists()
        };
        if gone || !path.exists() {
            return;
        }
    }
}

/// Starts the thread that turns SIGINT/SIGTERM into cleanup, a one-line message and exit
/// status 130/143 (the shell convention). Call once, early in `main`.
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                let removed = clean_up();
                let what = if removed.is_empty() {
                    "nothing was written".to_string()
                } else {
                    let list: Vec<String> =
                        removed.iter().map(|p| p.display().to_string()).collect();
                    format!("removed the unfinished output {}", list.join(", "))
                };
                eprintln!("\nerror: interrupted by {name}: {what}");
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}
