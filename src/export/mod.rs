//! Writing models for the runtimes users deploy with: DeciLM folders (vLLM, HF remote code),
//! GGUF (llama.cpp) and native HF folders. Every format is written by the same code: the
//! pruning [`Decisions`] applied to the memory-mapped source tensors, one tensor at a time, into a
//! temporary sibling that is renamed into place when complete.

pub mod decilm;
pub mod gguf;
pub mod hf;
pub mod job;
pub mod plan;
pub mod sliced;
pub mod tensors;

use crate::arch::Family;
use crate::config::ModelConfig;
use crate::fsutil::{OutputClaim, OutputKind, Staged};
use crate::prune::decisions::Decisions;
use crate::weights::{writer, TensorStore};
use anyhow::{bail, Context, Result};
use plan::{AttentionOut, BlockPlan};
use safetensors::Dtype;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Tokenizer and generation files copied verbatim from the source folder when present.
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "tokenizer.gguf",
];

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// DeciLM / nemotron-nas folder (vLLM native; HF with trust_remote_code; llama.cpp's converter).
    Decilm,
    /// One GGUF file for llama.cpp (`deci` architecture when blocks differ).
    Gguf,
    /// Native HF folder: uniform FFN width, removed attention kept as zeros.
    Hf,
}

impl Format {
    /// What `prune` writes when no `--format` is given: DeciLM where it can express the family.
    pub fn default_for(config: &ModelConfig) -> Self {
        if decilm::check_expressible(config).is_ok() {
            Format::Decilm
        } else {
            Format::Hf
        }
    }

    /// The format's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Decilm => "decilm",
            Format::Gguf => "gguf",
            Format::Hf => "hf",
        }
    }

    /// True when the format leaves removed attention out entirely (DeciLM, `deci` GGUF) instead
    /// of writing it as zeros. Those runtimes (vLLM's and llama.cpp's DeciLM code, HF's cache)
    /// index layer 0, so they also need attention in block 0.
    pub fn omits_removed_attention(self, config: &ModelConfig) -> bool {
        match self {
            Format::Decilm => true,
            Format::Gguf => uses_deci_gguf(config),
            Format::Hf => false,
        }
    }

    /// True when the output format's runtimes need attention in block 0.
    pub fn needs_block0_attention(self, config: &ModelConfig) -> bool {
        self.omits_removed_attention(config)
    }
}

/// True when a GGUF export of this family uses llama.cpp's `deci` architecture (per-layer heads
/// and widths); other families are written natively with removed attention as zeros.
fn uses_deci_gguf(config: &ModelConfig) -> bool {
    matches!(config.arch.family, Family::Llama | Family::Mistral)
}

/// Choices of one export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Output format.
    pub format: Format,
    /// Output dtype (`None`: each tensor keeps the source's dtype).
    pub dtype: Option<Dtype>,
    /// DeciLM: write the portable `ffn_mult` profile (widths zero-padded to multiples of 256).
    pub ffn_mult: bool,
}

/// What an export wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportSummary {
    /// Output format.
    pub format: Format,
    /// Final output path.
    pub path: PathBuf,
    /// dtype of the weights ("float32", "bfloat16", "float16").
    pub dtype: String,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub weight_bytes: u64,
    /// Blocks whose attention is absent from the output.
    pub attention_omitted: Vec<usize>,
    /// Blocks whose removed attention is written as zeros (still computed by other runtimes).
    pub attention_zeroed: Vec<usize>,
    /// Real FFN width of every block.
    pub ffn_widths: Vec<usize>,
    /// Stored FFN width of every block (wider than the real one where zero-padded).
    pub stored_ffn_widths: Vec<usize>,
    /// Things the user should know about this output.
    pub notes: Vec<String>,
    /// Seconds spent writing.
    pub seconds: f64,
}

/// Refuses an export that a format or its runtimes cannot take, before anything is written.
pub fn check(config: &ModelConfig, decisions: &Decisions, opts: &ExportOptions) -> Result<()> {
    if config.slicing.is_some() {
        bail!("this model was sliced by SliceGPT: its shortcut matrices and sliced widths exist in no other runtime's format, so it stays in the engine's HF layout");
    }
    decisions.validate(config)?;
    let blocks = decisions.pruned_blocks(config);
    if opts.format == Format::Decilm {
        decilm::check_expressible(config)?;
    }
    if opts.ffn_mult && opts.format != Format::Decilm {
        bail!("--ffn-mult applies to --format decilm only");
    }
    if opts.format.needs_block0_attention(config)
        && blocks.first().is_some_and(|b| b.attention.is_none())
    {
        bail!(
            "--format {} needs attention in block 0 (vLLM, llama.cpp and HF's KV cache index layer 0), \
             but this model has none there; use --format hf (removed attention kept as zeros)",
            opts.format.name()
        );
    }
    if let Some(i) = blocks
        .iter()
        .position(|b| b.ffn_width == 0 && b.attention.is_some())
    {
        if opts.format != Format::Hf {
            bail!("block {i} keeps attention but no FFN, which llama.cpp's DeciLM graph drops; use --format hf");
        }
    }
    Ok(())
}

/// The output blocks of a format: attention kept/omitted/zeroed, FFN neurons with padding.
fn block_plans(
    config: &ModelConfig,
    decisions: &Decisions,
    opts: &ExportOptions,
) -> Vec<BlockPlan> {
    let omit = opts.format.omits_removed_attention(config);
    let removed =
        |i: usize| config.blocks[i].attention.is_none() || decisions.removed_attention.contains(&i);
    let uniform = decisions.ffn_kept.iter().map(Vec::len).max().unwrap_or(0);
    (0..config.n_layers())
        .map(|i| {
            let kept = &decisions.ffn_kept[i];
            let attention = match (removed(i), omit) {
                (false, _) => AttentionOut::Keep,
                (true, true) => AttentionOut::Omit,
                (true, false) => AttentionOut::Zero,
            };
            let width = if opts.ffn_mult && !kept.is_empty() {
                kept.len().div_ceil(256) * 256
            } else if omit {
                kept.len()
            } else {
                uniform
            };
            let mut neurons: Vec<Option<usize>> = kept.iter().copied().map(Some).collect();
            neurons.resize(width, None);
            BlockPlan { attention, neurons }
        })
        .collect()
}

/// The name of a dtype as HF configs write it.
pub fn dtype_config_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        _ => "float32",
    }
}

/// Writes `decisions` applied to the source folder `source` as `opts.format` into a staged
/// sibling of `out`; nothing is in place until the caller commits.
pub fn write_staged(
    source: &Path,
    config: &ModelConfig,
    store: &TensorStore,
    decisions: &Decisions,
    claim: OutputClaim,
    opts: &ExportOptions,
) -> Result<(Staged, ExportSummary)> {
    check(config, decisions, opts)?;
    crate::model::check_config_against_tensors(config, store)?;
    let out = claim.dest().to_path_buf();
    let start = Instant::now();
    let blocks = block_plans(config, decisions, opts);
    let exact: Vec<usize> = decisions.ffn_kept.iter().map(Vec::len).collect();
    let model_dtype = opts.dtype.unwrap_or_else(|| {
        store
            .raw("model.embed_tokens.weight")
            .map_or(Dtype::F32, |t| t.dtype)
    });
    let dtype_name = dtype_config_name(model_dtype);
    let mut notes = Vec::new();
    let (staged, n_tensors, weight_bytes) = match opts.format {
        Format::Decilm | Format::Hf => {
            let staged = Staged::create(claim, OutputKind::Dir)?;
            let dir = staged.path().to_path_buf();
            let (config_value, fused) = if opts.format == Format::Decilm {
                std::fs::write(
                    dir.join("configuration_decilm.py"),
                    decilm::CONFIGURATION_PY,
                )?;
                std::fs::write(dir.join("modeling_decilm.py"), decilm::MODELING_PY)?;
                let c = decilm::config_json(config, &blocks, &exact, opts.ffn_mult, dtype_name)?;
                (c, false)
            } else {
                let c = hf::config_json(config, &blocks, &exact, dtype_name);
                (c, config.arch.fused_qkv || config.arch.fused_gate_up)
            };
            let jobs = plan::model_jobs(config, store, &blocks, fused)?;
            let bytes = write_safetensors(
                &dir.join("model.safetensors"),
                store,
                &jobs,
                opts.dtype,
                model_dtype,
            )?;
            let text = serde_json::to_string_pretty(&config_value)? + "\n";
            std::fs::write(dir.join("config.json"), text).context("cannot write config.json")?;
            copy_side_files(source, &dir)?;
            (staged, jobs.len(), bytes)
        }
        Format::Gguf => {
            let staged = Staged::create(claim, OutputKind::File)?;
            let arch = gguf::architecture(config, &blocks)?;
            let jobs = gguf::tensor_jobs(config, store, &blocks)?;
            let metadata = gguf::metadata(config, &blocks, arch, source, model_dtype)?;
            let decls = gguf::declarations(&jobs, model_dtype);
            let writer = crate::gguf::writer::GgufWriter::new(
                metadata,
                decls.iter().map(|d| d.0.clone()).collect(),
            )?;
            let bar = crate::progress::bar(jobs.len() as u64, "write tensors");
            writer.write(staged.path(), |i| {
                bar.inc(1);
                jobs[i].produce(store, Some(decls[i].1))
            })?;
            bar.finish_and_clear();
            if blocks.iter().any(|b| !b.neurons.len().is_multiple_of(256)) {
                notes.push(
                    "FFN widths are not multiples of 256: llama-quantize's K-quants (Q4_K_M...) fall back to \
                     Q5_0/Q5_1/Q8_0 for ffn_down; prune with --ffn-multiple-of 256 for full K-quant coverage"
                        .into(),
                );
            }
            let bytes = std::fs::metadata(staged.path())?.len();
            notes.push(format!("llama.cpp architecture '{arch}'"));
            let windowed = config
                .blocks
                .iter()
                .filter_map(|b| b.attention.as_ref()?.window)
                .next();
            if let (Some(w), true) = (
                windowed,
                matches!(arch, "llama" | "deci" | "qwen2" | "qwen3"),
            ) {
                notes.push(format!(
                    "llama.cpp's {arch} graph has no sliding window: outputs differ from this model's past {w} tokens of context"
                ));
            }
            (staged, jobs.len(), bytes)
        }
    };
    let attention_zeroed: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].attention == AttentionOut::Zero)
        .collect();
    if !attention_zeroed.is_empty() {
        notes.push(format!(
            "removed attention of blocks {attention_zeroed:?} is kept as zeros: exact, but other runtimes still spend its compute and KV cache"
        ));
    }
    let stored: Vec<usize> = blocks.iter().map(|b| b.neurons.len()).collect();
    if stored != exact {
        notes.push("FFN widths are zero-padded (exact; this engine skips the padding)".into());
    }
    let summary = ExportSummary {
        format: opts.format,
        path: out,
        dtype: dtype_name.into(),
        tensors: n_tensors,
        weight_bytes,
        attention_omitted: (0..blocks.len())
            .filter(|&i| blocks[i].attention == AttentionOut::Omit)
            .collect(),
        attention_zeroed,
        ffn_widths: exact,
        stored_ffn_widths: stored,
        notes,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((staged, summary))
}

/// Streams `jobs` into one safetensors file, showing progress.
fn write_safetensors(
    path: &Path,
    store: &TensorStore,
    jobs: &[tensors::TensorJob],
    dtype: Option<Dtype>,
    zeros_dtype: Dtype,
) -> Result<u64> {
    let entries = jobs
        .iter()
        .map(|j| {
            let dtype = match (&j.source, dtype) {
                (_, Some(d)) => d,
                (Some(src), None) => store.raw(src)?.dtype,
                (None, None) => zeros_dtype,
            };
            Ok(writer::Entry {
                name: j.name.clone(),
                dtype,
                shape: j.shape.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let bar = crate::progress::bar(jobs.len() as u64, "write tensors");
    let bytes = writer::write(path, &entries, |i| {
        bar.inc(1);
        jobs[i].produce(store, Some(entries[i].dtype))
    })?;
    bar.finish_and_clear();
    Ok(bytes)
}

/// Copies the tokenizer and generation files that exist in `source`.
fn copy_side_files(source: &Path, dir: &Path) -> Result<()> {
    for name in SIDE_FILES {
        let src = source.join(name);
        if src.exists() {
            std::fs::copy(&src, dir.join(name))
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}

/// Perplexity of a written output reloaded on `backend` (GGUF: through the importer).
pub fn reload_perplexity(
    backend: &crate::backend::Backend,
    output: &Path,
    format: Format,
    windows: &[&[u32]],
) -> Result<f64> {
    match format {
        Format::Decilm | Format::Hf => backend.folder_perplexity(output, windows),
        Format::Gguf => {
            let tmp = output.with_file_name(format!(
                ".{}.verify-{}",
                output
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ));
            let cleanup = crate::fsutil::RemoveOnDrop::new(tmp.clone());
            crate::gguf::import(output, &tmp, true)?;
            let ppl = backend.folder_perplexity(&tmp, windows);
            drop(cleanup);
            ppl
        }
    }
}
