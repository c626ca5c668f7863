//! `prune --method shortgpt|window|sleb`: a whole-block baseline as one library call, sharing the
//! calibration, export, reload verification and report writing of the 2SSP pipeline.

use super::block_search::sleb;
use super::block_similarity::{
    blocks_to_remove, last_token_outputs, shortgpt, window, BlockChoice,
};
use super::decisions::Decisions;
use super::pipeline::{
    calibration_corpus, calibration_windows, commit_with_report, report_path_beside, sha256_file,
    verify, PruneJob,
};
use super::report::{CalibrationFile, Verification};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::engine::{Engine, EngineJob};
use crate::export::{self, ExportOptions, Format};
use crate::weights::TensorStore;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// A whole-block method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockMethod {
    /// ShortGPT's block influence.
    ShortGpt,
    /// Gromov et al.'s most similar window of blocks.
    Window,
    /// SLEB's iterative search by calibration perplexity.
    Sleb,
}

impl BlockMethod {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            BlockMethod::ShortGpt => "shortgpt",
            BlockMethod::Window => "window",
            BlockMethod::Sleb => "sleb",
        }
    }

    /// Calibration windows the method's authors score by default (`--samples`).
    pub fn default_samples(self) -> usize {
        match self {
            BlockMethod::ShortGpt | BlockMethod::Window => 256,
            BlockMethod::Sleb => 1,
        }
    }
}

/// What `pruning_report.json` holds for a whole-block method.
#[derive(Clone, Debug, Serialize)]
pub struct BlockReport {
    /// Method.
    pub method: String,
    /// Requested sparsity (fraction of blocks, rounded up to whole blocks as the authors' main.py).
    pub sparsity_target: f64,
    /// Blocks removed / all blocks.
    pub block_fraction_removed: f64,
    /// Fraction of P_main removed.
    pub sparsity_achieved: f64,
    /// Blocks removed, ascending.
    pub removed_blocks: Vec<usize>,
    /// The same in the method's order (ShortGPT: by influence; SLEB: as removed).
    pub removal_order: Vec<usize>,
    /// ShortGPT: influence per block; Window: mean cosine per window start; SLEB: calibration
    /// perplexity after each removal.
    pub scores: Vec<f64>,
    /// Decoder-block parameters before.
    pub params_main_before: u64,
    /// And after.
    pub params_main_after: u64,
    /// All parameters before.
    pub params_total_before: u64,
    /// And after.
    pub params_total_after: u64,
    /// Calibration text and windows.
    pub calibration: BlockCalibration,
    /// Seconds spent scoring, saving, in all.
    pub seconds: BlockSeconds,
    /// Reload check of the written output.
    pub verification: Option<Verification>,
    /// Backend.
    pub backend: String,
    /// The decisions as the exporters apply them.
    pub decisions: Decisions,
    /// What was written.
    pub export: export::ExportSummary,
}

/// Calibration of a whole-block run.
#[derive(Clone, Debug, Serialize)]
pub struct BlockCalibration {
    /// Files and their hashes.
    pub files: Vec<CalibrationFile>,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows scored.
    pub samples: usize,
    /// "first" or "shuffled".
    pub window_order: String,
}

/// Timings of a whole-block run.
#[derive(Clone, Debug, Serialize)]
pub struct BlockSeconds {
    /// Block outputs and scores.
    pub scoring: f64,
    /// Writing the output.
    pub save: f64,
    /// Everything.
    pub total: f64,
}

/// Scores, removes the chosen blocks in memory, and measures what verification compares.
struct ScoreBlocks<'a> {
    method: BlockMethod,
    n: usize,
    windows: &'a [&'a [u32]],
    verify: bool,
}

/// The loaded run's results.
struct Scored {
    choice: BlockChoice,
    params_before: (u64, u64),
    params_after: (u64, u64),
    ppl_in_memory: Option<f64>,
}

impl EngineJob for ScoreBlocks<'_> {
    type Output = Scored;

    fn run<E: Engine>(self, mut model: E) -> Result<Scored> {
        let params_before = (model.params_main(), model.params_total());
        let choice = match self.method {
            BlockMethod::ShortGpt => shortgpt(&last_token_outputs(&model, self.windows)?, self.n),
            BlockMethod::Window => window(&last_token_outputs(&model, self.windows)?, self.n),
            BlockMethod::Sleb => {
                let run = sleb(&mut model, self.windows, self.n)?;
                BlockChoice::from_order(run.removal_order, run.ppl)
            }
        };
        for &b in &choice.removed_blocks {
            model.remove_attention(b);
            model.remove_ffn(b);
        }
        let ppl_in_memory = self
            .verify
            .then(|| model.perplexity(&self.windows[..1], "verify"))
            .transpose()?;
        Ok(Scored {
            choice,
            params_before,
            params_after: (model.params_main(), model.params_total()),
            ppl_in_memory,
        })
    }
}

/// Runs a whole-block method: score on `samples` calibration windows (`None`: the method's
/// default), write, verify, report.
pub fn run(
    job: &PruneJob,
    method: BlockMethod,
    samples: Option<usize>,
    backend: &Backend,
) -> Result<BlockReport> {
    let start = Instant::now();
    let config = ModelConfig::from_dir(&job.model)?;
    let n = blocks_to_remove(job.options.sparsity, config.blocks.len())?;
    if method == BlockMethod::Sleb && n + 2 > config.blocks.len() {
        bail!(
            "SLEB never removes the first or the last block: {n} of {} blocks cannot be removed",
            config.blocks.len()
        );
    }
    let samples = samples.unwrap_or(method.default_samples());
    if samples == 0 {
        bail!("--samples must be at least 1");
    }
    let claim = crate::fsutil::claim_output(&job.out, &job.model, job.force)?;
    let format = job.format.unwrap_or_else(|| Format::default_for(&config));
    let beside = report_path_beside(&job.out);
    if format == Format::Gguf && beside.exists() && !job.force {
        bail!(
            "{} already exists (use --force to overwrite)",
            beside.display()
        );
    }
    let (calib_files, corpus) = calibration_corpus(job)?;
    let windows = calibration_windows(&corpus, job)?;
    if windows.len() < samples {
        bail!(
            "calibration text gives {} windows of {} tokens, but --samples {samples} are needed",
            windows.len(),
            job.seq_len
        );
    }
    let windows = &windows[..samples];
    let t_score = Instant::now();
    let job_on_model = ScoreBlocks {
        method,
        n,
        windows,
        verify: job.verify,
    };
    let scored = backend.with_model(&job.model, job_on_model)?;
    let seconds_scoring = t_score.elapsed().as_secs_f64();
    let removed = scored.choice.removed_blocks.clone();
    if removed.contains(&0) && format.needs_block0_attention(&config) {
        bail!(
            "{} chose to remove block 0, which --format {} cannot express (use --format hf)",
            method.name(),
            format.name()
        );
    }
    let decisions = Decisions {
        method: method.name().into(),
        ffn_kept: config
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if removed.contains(&i) {
                    Vec::new()
                } else {
                    (0..b.ffn_width).collect()
                }
            })
            .collect(),
        removed_attention: removed.clone(),
    };
    let t_save = Instant::now();
    let store = TensorStore::open(&job.model)?;
    let export_opts = ExportOptions {
        format,
        ..job.export.clone()
    };
    let (staged, summary) =
        export::write_staged(&job.model, &config, &store, &decisions, claim, &export_opts)?;
    drop(store);
    let seconds_save = t_save.elapsed().as_secs_f64();
    let verification = match scored.ppl_in_memory {
        Some(ppl) => Some(verify(
            backend,
            staged.path(),
            format,
            ppl,
            job.export.dtype,
            &windows[..1],
        )?),
        None => None,
    };
    let report = BlockReport {
        method: method.name().into(),
        sparsity_target: job.options.sparsity,
        block_fraction_removed: n as f64 / config.blocks.len() as f64,
        sparsity_achieved: 1.0 - scored.params_after.0 as f64 / scored.params_before.0 as f64,
        removed_blocks: removed,
        removal_order: scored.choice.removal_order,
        scores: scored.choice.scores,
        params_main_before: scored.params_before.0,
        params_main_after: scored.params_after.0,
        params_total_before: scored.params_before.1,
        params_total_after: scored.params_after.1,
        calibration: BlockCalibration {
            files: calib_files
                .iter()
                .map(|f: &PathBuf| {
                    Ok(CalibrationFile {
                        path: f.clone(),
                        sha256: sha256_file(f)?,
                    })
                })
                .collect::<Result<_>>()?,
            seq_len: job.seq_len,
            samples,
            window_order: if job.seed.is_some() {
                "shuffled"
            } else {
                "first"
            }
            .into(),
        },
        seconds: BlockSeconds {
            scoring: seconds_scoring,
            save: seconds_save,
            total: start.elapsed().as_secs_f64(),
        },
        verification,
        backend: backend.describe(),
        decisions,
        export: summary,
    };
    commit_with_report(staged, format, &beside, &report)?;
    Ok(report)
}
