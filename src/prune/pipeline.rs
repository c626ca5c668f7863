//! The whole `prune` job as one library call: calibrate, prune on a backend, write the decisions
//! applied to the memory-mapped source in the chosen format, reload and verify, report.

use super::cache::PruneCache;
use super::decisions::Decisions;
use super::report::{
    Balance, Calibration, CalibrationFile, ParamsChange, PruningReport, Seconds, Verification,
};
use super::{PruneOptions, PruneOutcome};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::data::Corpus;
use crate::engine::{Engine, EngineJob};
use crate::export::{self, ExportOptions, Format};
use crate::tokenizer::Tokenizer;
use crate::weights::TensorStore;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default calibration corpus (State of the Union addresses, fetched by scripts/fetch-data.sh).
pub const DEFAULT_CALIB: &str = "data/calib-sotu.jsonl";

/// Everything one `prune` run needs.
#[derive(Clone, Debug)]
pub struct PruneJob {
    /// Source checkpoint folder (never modified).
    pub model: PathBuf,
    /// Output path (folder, or file for GGUF).
    pub out: PathBuf,
    /// Replace an existing output.
    pub force: bool,
    /// Reload the output and compare perplexities.
    pub verify: bool,
    /// 2SSP settings.
    pub options: PruneOptions,
    /// Calibration files (empty: [`DEFAULT_CALIB`]).
    pub calib: Vec<PathBuf>,
    /// Tokens per calibration window.
    pub seq_len: usize,
    /// Windows for stage 1.
    pub stage1_samples: usize,
    /// Windows for stage 2.
    pub stage2_samples: usize,
    /// Shuffle the windows with this seed.
    pub seed: Option<u64>,
    /// Output format (`None`: [`Format::default_for`] the family).
    pub format: Option<Format>,
    /// Output dtype (`None`: each tensor keeps the source's dtype).
    pub dtype: Option<safetensors::Dtype>,
    /// DeciLM: write the portable `ffn_mult` profile.
    pub ffn_mult: bool,
    /// Root of the resumable-work cache (`None`: compute everything, keep nothing).
    pub cache_root: Option<PathBuf>,
    /// EvoPress's search settings (used by `--method evopress`).
    pub evopress: super::evopress::EvoPressOptions,
}

impl PruneJob {
    /// How the output is written in `format`.
    pub fn export_options(&self, format: Format) -> ExportOptions {
        ExportOptions {
            format,
            dtype: self.dtype,
            ffn_mult: self.ffn_mult,
        }
    }
}

/// What a backend's 2SSP run returns.
struct BackendRun {
    outcome: PruneOutcome,
    params_before: (u64, u64),
    params_after: (u64, u64),
    /// Perplexity of the pruned model in memory on the stage-2 windows (when verifying).
    ppl_in_memory: Option<f64>,
    device_memory: Option<serde_json::Value>,
    /// Precision of the matrices while pruning.
    precision: crate::weights::Precision,
}

/// 2SSP on a loaded model of any backend, keeping only the decisions (the model is then dropped).
struct PruneLoaded<'a> {
    opts: &'a PruneOptions,
    stage1: &'a [&'a [u32]],
    stage2: &'a [&'a [u32]],
    verify: bool,
    cache: Option<&'a PruneCache>,
}

impl EngineJob for PruneLoaded<'_> {
    type Output = BackendRun;

    fn run<E: Engine>(self, mut model: E) -> Result<BackendRun> {
        let params_before = (model.params_main(), model.params_total());
        let (outcome, memory) =
            super::run(&mut model, self.opts, self.stage1, self.stage2, self.cache)?;
        let ppl_in_memory = self
            .verify
            .then(|| model.perplexity(self.stage2, "verify"))
            .transpose()?;
        Ok(BackendRun {
            outcome,
            params_before,
            params_after: (model.params_main(), model.params_total()),
            ppl_in_memory,
            device_memory: E::ON_DEVICE
                .then(|| serde_json::to_value(memory))
                .transpose()?,
            precision: model.precision(),
        })
    }
}

/// Runs the whole job and returns its report (also written beside or into the output).
pub fn run(job: &PruneJob, backend: &Backend) -> Result<PruningReport> {
    let start = Instant::now();
    if !(job.options.sparsity > 0.0 && job.options.sparsity < 1.0) {
        bail!("--sparsity must be in (0, 1), got {}", job.options.sparsity);
    }
    if job.stage1_samples == 0 || job.stage2_samples == 0 {
        bail!("--stage1-samples and --stage2-samples must be at least 1");
    }
    let config = ModelConfig::from_dir(&job.model)?;
    let (claim, format, beside) = claim_outputs(job, &config)?;
    let export_opts = job.export_options(format);
    let mut options = job.options.clone();
    let protected_for_format = (format.needs_block0_attention(&config)
        && !options.protected_attention.contains(&0))
    .then(|| {
        options.protected_attention.push(0);
        format!(
            "--format {} needs attention in block 0 (vLLM, llama.cpp and HF's cache index layer 0)",
            format.name()
        )
    });
    // Refuse what cannot be written before any work.
    if format == Format::Decilm {
        export::decilm::check_expressible(&config)?;
    }
    if job.ffn_mult && format != Format::Decilm {
        bail!("--ffn-mult applies to --format decilm only");
    }
    let (calib_files, corpus) = calibration_corpus(job)?;
    let windows = calibration_windows(&corpus, job)?;
    let needed = job.stage1_samples.max(job.stage2_samples);
    if windows.len() < needed {
        bail!(
            "calibration text gives {} windows of {} tokens, but {needed} are needed",
            windows.len(),
            job.seq_len
        );
    }
    let stage1 = &windows[..job.stage1_samples];
    let stage2 = &windows[..job.stage2_samples];
    super::validated_plan(&config, &options)?; // refuse before loading weights
                                               // Scores depend on the precision and the kernels: both are part of the cache key.
    let computed_on = backend.computation(&job.model)?;
    let cache = job.cache_root.as_deref().and_then(|root| {
        match PruneCache::open(root, &job.model, &computed_on) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("note: {e:#}; this run will not be resumable");
                None
            }
        }
    });
    let run = backend.with_model(
        &job.model,
        PruneLoaded {
            opts: &options,
            stage1,
            stage2,
            verify: job.verify,
            cache: cache.as_ref(),
        },
    )?;
    let outcome = &run.outcome;
    let decisions = Decisions {
        method: "2SSP".into(),
        ffn_kept: outcome.ffn_kept.clone(),
        removed_attention: outcome.stage2.removed.clone(),
    };

    let saved = save_verified(
        job,
        &config,
        &export_opts,
        claim,
        &decisions,
        run.ppl_in_memory,
        stage2,
        backend,
    )?;
    let params = ParamsChange::new(run.params_before, run.params_after);
    let report = PruningReport {
        method: "2SSP".into(),
        sparsity_target: options.sparsity,
        sparsity_achieved: params.sparsity_achieved(),
        sparsity_achieved_reference_count: 1.0
            - outcome.plan.main_after as f64 / outcome.counts.p_main as f64,
        params,
        params_main_after_reference_count: outcome.plan.main_after,
        alpha: match options.budget {
            super::balance::AttentionBudget::Alpha(a) => Some(a),
            super::balance::AttentionBudget::Fixed(_) => None,
        },
        n_attn_removed: outcome.stage2.removed.len(),
        removed_attention: outcome.stage2.removed.clone(),
        stage2_ppl_before: outcome.stage2.ppl_before,
        stage2_ppl: outcome.stage2.ppl_after.clone(),
        ffn_keep: outcome.ffn_kept.iter().map(Vec::len).collect(),
        ffn_kept: outcome.ffn_kept.clone(),
        ffn_multiple_of: options.ffn_multiple_of,
        protected_attention: options.protected_attention.clone(),
        protected_for_format,
        balance: Balance {
            p_attn: outcome.counts.p_attn,
            p_ffn: outcome.counts.p_ffn,
            p_main: outcome.counts.p_main,
            d_ff: outcome.counts.d_ff,
            target_removed: outcome.plan.target,
        },
        calibration: Calibration {
            files: calibration_files(&calib_files)?,
            documents: corpus.n_documents,
            tokens: corpus.ids.len(),
            seq_len: job.seq_len,
            stage1_samples: job.stage1_samples,
            stage2_samples: job.stage2_samples,
            window_order: if job.seed.is_some() {
                "shuffled"
            } else {
                "first"
            }
            .into(),
        },
        block_evals_stage2: outcome.stage2.block_evals,
        block_evals_stage2_without_suffix_reuse: outcome.stage2.block_evals_reference,
        seconds: Seconds {
            stage1: outcome.seconds_stage1,
            stage2: outcome.seconds_stage2,
            save: saved.seconds,
            total: start.elapsed().as_secs_f64(),
        },
        weight_bytes: saved.summary.weight_bytes,
        verification: saved.verification,
        backend: backend.describe(),
        dtype: run.precision.name().into(),
        device_memory: run.device_memory.clone(),
        threads: rayon::current_num_threads(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        seed: job.seed,
        source_model: job.model.clone(),
        decisions,
        export: saved.summary,
        reused: outcome.reused.clone(),
    };
    commit_with_report(saved.staged, format, &beside, &report)?;
    Ok(report)
}

/// Claims `job.out` and picks the format; refuses an existing report beside a GGUF output
/// without `--force` (before any work).
pub(super) fn claim_outputs(
    job: &PruneJob,
    config: &ModelConfig,
) -> Result<(crate::fsutil::OutputClaim, Format, PathBuf)> {
    if config.slicing.is_some() {
        bail!(
            "{} was sliced by SliceGPT; prune the dense model instead",
            job.model.display()
        );
    }
    let claim = crate::fsutil::claim_output(&job.out, &job.model, job.force)?;
    let format = job.format.unwrap_or_else(|| Format::default_for(config));
    let beside = report_path_beside(&job.out);
    if format == Format::Gguf && beside.exists() && !job.force {
        bail!(
            "{} already exists (use --force to overwrite)",
            beside.display()
        );
    }
    Ok((claim, format, beside))
}

/// A staged output with what was written and its verification.
pub(super) struct Saved {
    /// The output, not yet moved into place.
    pub staged: crate::fsutil::Staged,
    /// What was written.
    pub summary: export::ExportSummary,
    /// Reload check (None when not verifying).
    pub verification: Option<Verification>,
    /// Seconds spent writing.
    pub seconds: f64,
}

/// Writes `decisions` applied to the memory-mapped source into the claimed output, then (given the
/// in-memory perplexity on `windows`) reloads it and checks it computes the same.
#[allow(clippy::too_many_arguments)]
pub(super) fn save_verified(
    job: &PruneJob,
    config: &ModelConfig,
    export_opts: &ExportOptions,
    claim: crate::fsutil::OutputClaim,
    decisions: &Decisions,
    ppl_in_memory: Option<f64>,
    windows: &[&[u32]],
    backend: &Backend,
) -> Result<Saved> {
    let t_save = Instant::now();
    let store = TensorStore::open(&job.model)?;
    let (staged, summary) =
        export::write_staged(&job.model, config, &store, decisions, claim, export_opts)?;
    drop(store);
    let seconds = t_save.elapsed().as_secs_f64();
    let verification = match ppl_in_memory {
        Some(ppl) => Some(verify(
            backend,
            staged.path(),
            export_opts.format,
            ppl,
            job.dtype,
            windows,
        )?),
        None => None,
    };
    Ok(Saved {
        staged,
        summary,
        verification,
        seconds,
    })
}

/// The calibration files with their SHA-256 hashes (for reports).
pub(super) fn calibration_files(files: &[PathBuf]) -> Result<Vec<CalibrationFile>> {
    files
        .iter()
        .map(|f| {
            Ok(CalibrationFile {
                path: f.clone(),
                sha256: sha256_file(f)?,
            })
        })
        .collect()
}

/// Writes `report` as `pruning_report.json` into the staged output (beside it for GGUF) and
/// moves the output into place.
pub(super) fn commit_with_report<R: serde::Serialize>(
    staged: crate::fsutil::Staged,
    format: Format,
    beside: &Path,
    report: &R,
) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if format == Format::Gguf {
        staged.commit()?;
        crate::fsutil::write_atomic(beside, text.as_bytes())?;
    } else {
        crate::fsutil::write_atomic(&staged.path().join("pruning_report.json"), text.as_bytes())?;
        staged.commit()?;
    }
    Ok(())
}

/// `OUT.pruning_report.json` beside a single-file output.
pub fn report_path_beside(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{name}.pruning_report.json"))
}

/// Relative perplexity difference allowed after converting weights to 16-bit floats.
pub const CONVERTED_PPL_BOUND: f64 = 2e-2;

/// Reloads the staged output on `backend` and compares its perplexity with the model in memory:
/// bit-identical when the weights kept their dtype, within [`CONVERTED_PPL_BOUND`] otherwise.
pub fn verify(
    backend: &Backend,
    output: &Path,
    format: Format,
    ppl_in_memory: f64,
    converted_to: Option<safetensors::Dtype>,
    windows: &[&[u32]],
) -> Result<Verification> {
    let ppl_reloaded = export::reload_perplexity(backend, output, format, windows)
        .context("verification: the written model does not reload")?;
    let relative_difference = (ppl_reloaded - ppl_in_memory).abs() / ppl_in_memory;
    let identical = ppl_reloaded.to_bits() == ppl_in_memory.to_bits();
    let bound = match converted_to {
        Some(d) if d != safetensors::Dtype::F32 => CONVERTED_PPL_BOUND,
        _ => 0.0,
    };
    // Written so that a NaN perplexity (on either side) fails.
    if !ppl_reloaded.is_finite() || !(identical || relative_difference <= bound) {
        bail!(
            "verification failed: the written model gives perplexity {ppl_reloaded} but the model in memory gives {ppl_in_memory}"
        );
    }
    Ok(Verification {
        ppl_in_memory,
        ppl_reloaded,
        identical,
        relative_difference,
        bound,
        backend: backend.describe(),
    })
}

/// The calibration files of `job` (default: [`DEFAULT_CALIB`]) and their corpus.
pub(super) fn calibration_corpus(job: &PruneJob) -> Result<(Vec<PathBuf>, Corpus)> {
    let calib_files = if job.calib.is_empty() {
        vec![PathBuf::from(DEFAULT_CALIB)]
    } else {
        job.calib.clone()
    };
    let tokenizer = Tokenizer::from_dir(&job.model)?;
    let corpus = Corpus::load(&calib_files, &tokenizer)?;
    Ok((calib_files, corpus))
}

/// The corpus's windows of `job.seq_len` tokens, shuffled when `job.seed` is set.
pub(super) fn calibration_windows<'c>(
    corpus: &'c Corpus,
    job: &PruneJob,
) -> Result<Vec<&'c [u32]>> {
    let mut windows = corpus.windows(job.seq_len, None)?;
    if let Some(seed) = job.seed {
        shuffle(&mut windows, seed);
    }
    Ok(windows)
}

/// The first `samples` calibration windows of `job`; refuses a text too short for them.
pub(super) fn calibration_samples<'c>(
    corpus: &'c Corpus,
    job: &PruneJob,
    samples: usize,
) -> Result<Vec<&'c [u32]>> {
    let mut windows = calibration_windows(corpus, job)?;
    if windows.len() < samples {
        bail!(
            "calibration text gives {} windows of {} tokens, but --samples {samples} are needed",
            windows.len(),
            job.seq_len
        );
    }
    windows.truncate(samples);
    Ok(windows)
}

/// Hex SHA-256 of a file.
fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Fisher-Yates shuffle with a small deterministic generator (splitmix64).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
