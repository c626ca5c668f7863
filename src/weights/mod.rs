//! Memory-mapped safetensors checkpoints (single file or sharded with an index), read as f32 or
//! kept at their own 16-bit precision.

mod matrix;
pub mod writer;

pub use matrix::{Precision, Weights};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where one tensor lives: shard, dtype, shape and byte range inside the mapped file.
struct TensorEntry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint folder, memory-mapped; nothing is read until asked for.
pub struct TensorStore {
    shards: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, TensorEntry>,
}

impl TensorStore {
    /// Maps every safetensors shard of `dir` (via `model.safetensors.index.json` when present).
    pub fn open(dir: &Path) -> Result<Self> {
        let files = shard_files(dir)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (shard, path) in files.into_iter().enumerate() {
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the file is opened read-only; the engine never writes to its inputs.
            let mmap = unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot map {}", path.display()))?;
            let (header_len, _) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display())
            })?;
            let parsed = SafeTensors::deserialize(&mmap).map_err(|e| {
                anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display())
            })?;
            let base = 8 + header_len;
            for (name, view) in parsed.tensors() {
                let data = view.data();
                let start = data.as_ptr() as usize - mmap.as_ptr() as usize;
                debug_assert!(start >= base);
                entries.insert(
                    name,
                    TensorEntry {
                        shard,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        start,
                        end: start + data.len(),
                    },
                );
            }
            shards.push((path, mmap));
        }
        Ok(Self { shards, entries })
    }

    /// True when the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Storage dtype of a tensor, if present.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// Reads a tensor as f32, checking its shape; bf16/f16 are widened exactly.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.entry(name)?;
        if entry.shape != shape {
            bail!(
                "tensor '{name}' has shape {:?}, expected {:?}",
                entry.shape,
                shape
            );
        }
        let bytes = &self.shards[entry.shard].1[entry.start..entry.end];
        widen(bytes, entry.dtype).with_context(|| format!("tensor '{name}'"))
    }

    /// A matrix at `precision`, checking its shape; its mapped pages are released afterwards, so
    /// the process holds the model once (in the returned copy), not twice.
    pub fn weights(&self, name: &str, shape: &[usize], precision: Precision) -> Result<Weights> {
        let raw = self.raw(name)?;
        if raw.shape != shape {
            bail!(
                "tensor '{name}' has shape {:?}, expected {:?}",
                raw.shape,
                shape
            );
        }
        let w = Weights::from_raw(&raw, precision).with_context(|| format!("tensor '{name}'"))?;
        self.release(name);
        Ok(w)
    }

    /// The precision `--dtype auto` resolves to: the dtype the embeddings are stored in.
    pub fn native_precision(&self) -> Result<Precision> {
        Precision::of_stored(
            self.dtype("model.embed_tokens.weight")
                .unwrap_or(Dtype::F32),
        )
    }

    /// A tensor's dtype, shape and raw little-endian bytes, straight from the mapped file.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let entry = self.entry(name)?;
        Ok(RawTensor {
            dtype: entry.dtype,
            shape: &entry.shape,
            bytes: &self.shards[entry.shard].1[entry.start..entry.end],
        })
    }

    /// Tells the kernel the mapped pages of a tensor are no longer needed, so that streaming a
    /// whole checkpoint through memory keeps the resident set bounded (the file is untouched).
    pub fn release(&self, name: &str) {
        let Some(entry) = self.entries.get(name) else {
            return;
        };
        let map = &self.shards[entry.shard].1;
        let page = 4096;
        let start = entry.start.div_ceil(page) * page;
        let end = entry.end / page * page;
        if end > start {
            // SAFETY: the mapping is read-only and file-backed; dropped pages are re-read from the
            // file on the next access, so no borrowed slice ever observes different contents.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// Decoder blocks the tensors describe: the largest N of `model.layers.N.*`, plus one.
    pub fn layer_count(&self) -> usize {
        self.names()
            .filter_map(|n| {
                n.strip_prefix("model.layers.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }

    /// Shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Names of every tensor in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.entries.get(name).with_context(|| {
            format!(
                "missing tensor '{name}' in {}",
                self.shards
                    .first()
                    .map_or(String::new(), |s| s.0.display().to_string())
            )
        })
    }
}

/// One tensor as stored: dtype, shape and bytes borrowed from the mapped file.
pub struct RawTensor<'a> {
    /// Storage dtype.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: &'a [usize],
    /// Little-endian element bytes.
    pub bytes: &'a [u8],
}

/// Bytes per element of the float dtypes the engine reads.
pub fn dtype_size(dtype: Dtype) -> Result<usize> {
    match dtype {
        Dtype::F32 => Ok(4),
        Dtype::BF16 | Dtype::F16 => Ok(2),
        other => bail!("unsupported dtype {other:?} (supported: F32, F16, BF16)"),
    }
}

/// Converts raw little-endian tensor bytes of a float dtype to f32.
pub fn widen(bytes: &[u8], dtype: Dtype) -> Result<Vec<f32>> {
    const CHUNK: usize = 1 << 16;
    match dtype {
        Dtype::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::BF16 | Dtype::F16 => {
            let mut out = vec![0f32; bytes.len() / 2];
            out.par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(2 * CHUNK))
                .for_each(|(dst, src)| {
                    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                        let bits = u16::from_le_bytes([s[0], s[1]]);
                        *d = if dtype == Dtype::BF16 {
                            half::bf16::from_bits(bits).to_f32()
                        } else {
                            half::f16::from_bits(bits).to_f32()
                        };
                    }
                });
            Ok(out)
        }
        other => bail!("unsupported dtype {other:?} (supported: F32, F16, BF16)"),
    }
}

/// The shard files of a checkpoint folder.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("model folder {} does not exist", dir.display());
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json["weight_map"]
            .as_object()
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(names.into_iter().map(|n| dir.join(n)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.safetensors files in {}", dir.display());
    }
    Ok(files)
}
