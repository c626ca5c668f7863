//! Resumable pruning: finished work kept on disk, keyed by everything it depends on.
//!
//! - Stage-1 neuron scores depend on the model, the stage-1 windows and the backend, not on the
//!   sparsity: a run at 25 % after one at 37.5 % on the same calibration reuses them.
//! - Stage-2 progress (each removal and its perplexity, written after every step) depends also on
//!   the kept neurons, the stage-2 windows and the protected blocks. Greedy removal is a prefix
//!   process, so a run killed after k removals resumes at k + 1 with the same decisions.
//!
//! A cache entry that cannot be read is ignored (the work is redone), never an error.

use super::stage1::NeuronScores;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Bump when the meaning or layout of cached values changes.
const CACHE_VERSION: &str = "2ssp-cache-1";
const SCORES_MAGIC: &[u8; 8] = b"2SSPSCR1";

/// What a run took from the cache instead of computing it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Reused {
    /// Stage-1 neuron scores were read from the cache.
    pub stage1_scores: bool,
    /// Stage-2 removals replayed from the cache (not searched again).
    pub stage2_removals: usize,
    /// The cache folder of this model, when a cache was used.
    pub cache_dir: Option<PathBuf>,
}

impl Reused {
    /// What a run with `cache` reused: the scores (when `scores`) and the replayed removals.
    pub fn of(
        cache: Option<&PruneCache>,
        scores: bool,
        stage2: &super::stage2::Stage2Outcome,
    ) -> Self {
        Self {
            stage1_scores: scores,
            stage2_removals: stage2.replayed,
            cache_dir: cache.map(|c| c.dir().to_path_buf()),
        }
    }
}

/// The cache of one model on one backend: `ROOT/<model key>/`.
#[derive(Clone, Debug)]
pub struct PruneCache {
    dir: PathBuf,
    model_key: String,
}

/// Stage-2 progress as stored: the perplexity before any removal, then each removal.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stage2Progress {
    /// Perplexity of the width-pruned model.
    pub ppl_before: f64,
    /// Removed blocks in removal order.
    pub removed: Vec<usize>,
    /// Perplexity after each removal.
    pub ppl_after: Vec<f64>,
}

/// Where one stage-2 search records its steps (see [`PruneCache::stage2_journal`]).
#[derive(Clone, Debug)]
pub struct Stage2Journal {
    path: PathBuf,
}

impl Stage2Journal {
    /// The progress a previous run recorded, if any.
    pub fn load(&self) -> Option<Stage2Progress> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records the progress so far (atomically: a kill leaves the previous step's record). A
    /// cache that cannot be written costs only the resumability: said once, never an error.
    pub fn record(&self, progress: &Stage2Progress) {
        let text = serde_json::to_string(progress).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_atomic(&self.path, text.as_bytes()) {
            warn_unwritable(&e);
        }
    }
}

impl PruneCache {
    /// The cache of the checkpoint `model_dir` computed on `backend` (e.g. "cpu"), under `root`.
    pub fn open(root: &Path, model_dir: &Path, backend: &str) -> Result<Self> {
        let model_key = model_fingerprint(model_dir, backend)?;
        let dir = root.join(&model_key[..24]);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
        let about = serde_json::json!({
            "model": model_dir,
            "backend": backend,
            "version": CACHE_VERSION,
        });
        let about_path = dir.join("model.json");
        if !about_path.exists() {
            crate::fsutil::write_atomic(&about_path, about.to_string().as_bytes())?;
        }
        Ok(Self { dir, model_key })
    }

    /// The folder of this model's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stage-1 scores for `windows`, if cached and of the expected block widths.
    pub fn scores(&self, windows: &[&[u32]], widths: &[usize]) -> Option<NeuronScores> {
        let bytes = std::fs::read(self.scores_path(windows)).ok()?;
        let scores = decode_scores(&bytes)?;
        let same =
            scores.len() == widths.len() && scores.iter().zip(widths).all(|(s, &w)| s.len() == w);
        same.then_some(scores)
    }

    /// Keeps stage-1 scores for `windows` (a failure to write is only reported).
    pub fn record_scores(&self, windows: &[&[u32]], scores: &NeuronScores) {
        if let Err(e) =
            crate::fsutil::write_atomic(&self.scores_path(windows), &encode_scores(scores))
        {
            warn_unwritable(&e);
        }
    }

    /// Stage-1 scores from the cache, else computed by `compute` and kept; says which.
    pub fn scores_or(
        cache: Option<&Self>,
        windows: &[&[u32]],
        widths: &[usize],
        compute: impl FnOnce() -> Result<NeuronScores>,
    ) -> Result<(NeuronScores, bool)> {
        if let Some(scores) = cache.and_then(|c| c.scores(windows, widths)) {
            return Ok((scores, true));
        }
        let scores = compute()?;
        if let Some(c) = cache {
            c.record_scores(windows, &scores);
        }
        Ok((scores, false))
    }

    /// The journal of a stage-2 search from the model pruned to `ffn_kept`.
    pub fn stage2_journal(
        &self,
        ffn_kept: &[Vec<usize>],
        windows: &[&[u32]],
        protected: &[usize],
    ) -> Stage2Journal {
        let mut protected = protected.to_vec();
        protected.sort_unstable();
        protected.dedup();
        let mut h = Sha256::new();
        h.update(self.model_key.as_bytes());
        h.update(b"stage2");
        for kept in ffn_kept {
            h.update((kept.len() as u64).to_le_bytes());
            for &k in kept {
                h.update((k as u64).to_le_bytes());
            }
        }
        hash_windows(&mut h, windows);
        for p in protected {
            h.update((p as u64).to_le_bytes());
        }
        Stage2Journal {
            path: self
                .dir
                .join(format!("stage2-{}.json", &hex(&h.finalize())[..24])),
        }
    }

    fn scores_path(&self, windows: &[&[u32]]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.model_key.as_bytes());
        h.update(b"stage1");
        hash_windows(&mut h, windows);
        self.dir
            .join(format!("stage1-{}.bin", &hex(&h.finalize())[..24]))
    }
}

/// Reports, once per process, that the cache cannot be written.
fn warn_unwritable(e: &anyhow::Error) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        eprintln!(
            "note: the pruning cache cannot be written ({e:#}); this run will not be resumable"
        )
    });
}

/// The default cache root: `$TWOSSP_CACHE_DIR`, else `$XDG_CACHE_HOME/twossp-engine`, else
/// `~/.cache/twossp-engine` (as Hugging Face's hub cache).
pub fn default_root() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("TWOSSP_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("twossp-engine")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/twossp-engine")))
}

/// Identity of a checkpoint and of the code computing on it: config.json, each weight file's
/// name, size, modification time and safetensors header (hashing gigabytes of weights would cost
/// more than stage 1 saves), the backend, and this executable's size and build time (a rebuilt
/// engine may compute differently, so it never reads an older build's results).
fn model_fingerprint(dir: &Path, backend: &str) -> Result<String> {
    let mut h = Sha256::new();
    h.update(CACHE_VERSION.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(backend.as_bytes());
    if let Some(exe) = std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::metadata(p).ok())
    {
        h.update(exe.len().to_le_bytes());
        hash_mtime(&mut h, &exe);
    }
    let config = std::fs::read(dir.join("config.json"))
        .with_context(|| format!("cannot read {}/config.json", dir.display()))?;
    h.update(&config);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let meta = std::fs::metadata(&f)?;
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(meta.len().to_le_bytes());
        hash_mtime(&mut h, &meta);
        h.update(safetensors_header(&f).unwrap_or_default());
    }
    Ok(hex(&h.finalize()))
}

/// The length prefix and JSON header of a safetensors file (at most 100 MB, as the format says).
fn safetensors_header(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len).min(100 << 20);
    let mut header = Vec::new();
    f.take(n).read_to_end(&mut header).ok()?;
    Some(header)
}

fn hash_mtime(h: &mut Sha256, meta: &std::fs::Metadata) {
    if let Ok(d) = meta
        .modified()
        .map(|t| t.duration_since(std::time::UNIX_EPOCH))
    {
        h.update(d.unwrap_or_default().as_nanos().to_le_bytes());
    }
}

fn hash_windows(h: &mut Sha256, windows: &[&[u32]]) {
    h.update((windows.len() as u64).to_le_bytes());
    for w in windows {
        h.update((w.len() as u64).to_le_bytes());
        h.update(bytemuck::cast_slice::<u32, u8>(w));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn encode_scores(scores: &NeuronScores) -> Vec<u8> {
    let mut out = SCORES_MAGIC.to_vec();
    out.extend((scores.len() as u64).to_le_bytes());
    for s in scores {
        out.extend((s.len() as u64).to_le_bytes());
    }
    for s in scores {
        out.extend(bytemuck::cast_slice::<f32, u8>(s));
    }
    out
}

fn decode_scores(bytes: &[u8]) -> Option<NeuronScores> {
    let rest = bytes.strip_prefix(SCORES_MAGIC)?;
    let word = |b: &[u8], i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let n = word(rest, 0)? as usize;
    if n > crate::limits::MAX_LAYERS as usize {
        return None;
    }
    let widths: Vec<usize> = (0..n)
        .map(|i| word(rest, 1 + i).map(|w| w as usize))
        .collect::<Option<_>>()?;
    let mut data = rest.get((1 + n) * 8..)?;
    let total: usize = widths.iter().try_fold(0usize, |a, &w| a.checked_add(w))?;
    if data.len() != total.checked_mul(4)? {
        return None;
    }
    let mut scores = Vec::with_capacity(n);
    for w in widths {
        let (head, tail) = data.split_at(w * 4);
        scores.push(
            head.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        );
        data = tail;
    }
    Some(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_round_trip_and_reject_damage() {
        let scores = vec![vec![1.5f32, -2.0, 3.25], vec![], vec![0.5]];
        let bytes = encode_scores(&scores);
        assert_eq!(decode_scores(&bytes), Some(scores));
        assert_eq!(decode_scores(&bytes[..bytes.len() - 1]), None);
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(decode_scores(&bad), None);
        let mut huge = bytes;
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_scores(&huge), None);
    }
}
