//! `prune --method shortgpt|window|sleb|blockpruner|evopress`: a block-removal baseline as one library
//! call, sharing the calibration, export, reload verification and report writing of the 2SSP
//! pipeline. Whole blocks and attention/MLP submodules are all expressed as [`Decisions`].

use super::block_search::{blockpruner, sleb, SubBlockStep};
use super::block_similarity::{
    blocks_to_remove, last_token_outputs, shortgpt, window, BlockChoice,
};
use super::decisions::Decisions;
use super::evopress::{evopress, EvoPressOptions, Selection, CALIBRATION_TOKENS};
use super::pipeline::{
    calibration_corpus, calibration_files, calibration_samples, claim_outputs, commit_with_report,
    save_verified, PruneJob,
};
use super::report::{CalibrationFile, ParamsChange, Verification};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::engine::{Engine, EngineJob, SubModule};
use crate::export::{self, Format};
use anyhow::{bail, Result};
use serde::Serialize;
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
    /// BlockPruner's iterative search over attention and MLP submodules.
    BlockPruner,
    /// EvoPress's evolutionary search over attention and MLP submodules.
    EvoPress,
}

impl BlockMethod {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            BlockMethod::ShortGpt => "shortgpt",
            BlockMethod::Window => "window",
            BlockMethod::Sleb => "sleb",
            BlockMethod::BlockPruner => "blockpruner",
            BlockMethod::EvoPress => "evopress",
        }
    }

    /// Calibration windows of `seq_len` tokens the method's authors score by default (`--samples`).
    pub fn default_samples(self, seq_len: usize) -> usize {
        match self {
            BlockMethod::ShortGpt | BlockMethod::Window => 256,
            BlockMethod::Sleb | BlockMethod::BlockPruner => 1,
            BlockMethod::EvoPress => CALIBRATION_TOKENS.div_ceil(seq_len.max(1)),
        }
    }

    /// Whether it removes attention and MLP submodules apart (only `--format hf` expresses that).
    pub fn removes_sub_blocks(self) -> bool {
        matches!(self, BlockMethod::BlockPruner | BlockMethod::EvoPress)
    }
}

/// What one step of a method removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// A whole block.
    Block,
    /// An attention submodule.
    Attention,
    /// An MLP submodule.
    Mlp,
}

/// One removal, in the method's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Removal {
    /// What went.
    pub part: Part,
    /// From which block.
    pub block: usize,
}

/// What `pruning_report.json` holds for a block-removal method.
#[derive(Clone, Debug, Serialize)]
pub struct BlockReport {
    /// Method.
    pub method: String,
    /// Requested sparsity (fraction of blocks, rounded up to whole blocks as the authors' main.py).
    pub sparsity_target: f64,
    /// Block equivalents removed / all blocks (BlockPruner: as many attention and MLP submodules
    /// as a whole-block method removes blocks).
    pub block_fraction_removed: f64,
    /// Fraction of P_main removed.
    pub sparsity_achieved: f64,
    /// Blocks removed whole (attention and MLP), ascending.
    pub removed_blocks: Vec<usize>,
    /// Blocks whose attention was removed, ascending.
    pub removed_attention: Vec<usize>,
    /// Blocks whose MLP was removed, ascending.
    pub removed_mlp: Vec<usize>,
    /// The removals in the method's order (ShortGPT: by influence; SLEB, BlockPruner: as removed).
    pub removal_order: Vec<Removal>,
    /// ShortGPT: influence per block; Window: mean cosine per window start; SLEB, BlockPruner:
    /// calibration perplexity after each removal; EvoPress: the best candidate's KL divergence
    /// from the dense model after the initial selection and each generation.
    pub scores: Vec<f64>,
    /// EvoPress: its settings and every selection step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evopress: Option<EvoPressReport>,
    /// Parameters before and after.
    #[serde(flatten)]
    pub params: ParamsChange,
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

/// Calibration of a block-removal run.
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

impl BlockCalibration {
    /// The first `samples` windows of `job`'s calibration files (hashed for the report).
    pub fn of(job: &PruneJob, files: &[std::path::PathBuf], samples: usize) -> Result<Self> {
        Ok(Self {
            files: calibration_files(files)?,
            seq_len: job.seq_len,
            samples,
            window_order: if job.seed.is_some() {
                "shuffled"
            } else {
                "first"
            }
            .into(),
        })
    }
}

/// How an EvoPress search ran.
#[derive(Clone, Debug, Serialize)]
pub struct EvoPressReport {
    /// Settings.
    pub settings: EvoPressOptions,
    /// Generations run.
    pub generations: usize,
    /// Every selection step, in order (minibatch windows, survivors and their KL).
    pub selections: Vec<Selection>,
}

/// Timings of a block-removal run.
#[derive(Clone, Debug, Serialize)]
pub struct BlockSeconds {
    /// Block outputs and scores.
    pub scoring: f64,
    /// Writing the output.
    pub save: f64,
    /// Everything.
    pub total: f64,
}

/// What a method removed, in its order, with the scores behind it.
struct Removed {
    order: Vec<Removal>,
    scores: Vec<f64>,
    evopress: Option<EvoPressReport>,
}

impl Removed {
    /// Whole blocks chosen in `choice`'s order.
    fn blocks(choice: BlockChoice) -> Self {
        Self {
            order: choice
                .removal_order
                .iter()
                .map(|&block| Removal {
                    part: Part::Block,
                    block,
                })
                .collect(),
            scores: choice.scores,
            evopress: None,
        }
    }

    /// Submodules removed one by one.
    fn sub_blocks(steps: Vec<SubBlockStep>) -> Self {
        Self {
            order: steps
                .iter()
                .map(|s| Removal {
                    part: match s.part {
                        SubModule::Attention => Part::Attention,
                        SubModule::Mlp => Part::Mlp,
                    },
                    block: s.block,
                })
                .collect(),
            scores: steps.iter().map(|s| s.ppl).collect(),
            evopress: None,
        }
    }

    /// Blocks that lost `part` (a whole block loses both), ascending.
    fn ascending(&self, part: Part) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .order
            .iter()
            .filter(|r| r.part == part || r.part == Part::Block)
            .map(|r| r.block)
            .collect();
        v.sort_unstable();
        v
    }
}

/// Scores, removes the chosen parts in memory (the searches remove them as they go), and measures
/// what verification compares.
struct ScoreBlocks<'a> {
    method: BlockMethod,
    evopress: &'a EvoPressOptions,
    n: usize,
    windows: &'a [&'a [u32]],
    verify: bool,
}

/// The loaded run's results.
struct Scored {
    removed: Removed,
    params: ParamsChange,
    ppl_in_memory: Option<f64>,
}

impl EngineJob for ScoreBlocks<'_> {
    type Output = Scored;

    fn run<E: Engine>(self, mut model: E) -> Result<Scored> {
        let params_before = (model.params_main(), model.params_total());
        let removed = match self.method {
            BlockMethod::ShortGpt | BlockMethod::Window => {
                let outputs = last_token_outputs(&model, self.windows)?;
                let choice = if self.method == BlockMethod::ShortGpt {
                    shortgpt(&outputs, self.n)
                } else {
                    window(&outputs, self.n)
                };
                for &b in &choice.removed_blocks {
                    model.remove_attention(b);
                    model.remove_ffn(b);
                }
                Removed::blocks(choice)
            }
            BlockMethod::Sleb => {
                let run = sleb(&mut model, self.windows, self.n)?;
                Removed::blocks(BlockChoice::from_order(run.removal_order, run.ppl))
            }
            BlockMethod::BlockPruner => {
                Removed::sub_blocks(blockpruner(&mut model, self.windows, self.n)?)
            }
            BlockMethod::EvoPress => {
                let run = evopress(&mut model, self.windows, self.n, self.evopress)?;
                let part = |part, blocks: Vec<usize>| {
                    blocks.into_iter().map(move |block| Removal { part, block })
                };
                Removed {
                    order: part(Part::Attention, run.best.removed_attention())
                        .chain(part(Part::Mlp, run.best.removed_mlp()))
                        .collect(),
                    scores: run.fitness,
                    evopress: Some(EvoPressReport {
                        settings: self.evopress.clone(),
                        generations: run.generations,
                        selections: run.selections,
                    }),
                }
            }
        };
        let ppl_in_memory = self
            .verify
            .then(|| model.perplexity(&self.windows[..1], "verify"))
            .transpose()?;
        Ok(Scored {
            removed,
            params: ParamsChange::new(params_before, (model.params_main(), model.params_total())),
            ppl_in_memory,
        })
    }
}

/// The blocks (or, for BlockPruner, attention and MLP pairs) `method` removes at `sparsity` from
/// `n_blocks` blocks; refuses a budget it cannot meet.
pub fn check_budget(method: BlockMethod, sparsity: f64, n_blocks: usize) -> Result<usize> {
    let n = blocks_to_remove(sparsity, n_blocks)?;
    if method == BlockMethod::Sleb && n + 2 > n_blocks {
        bail!("SLEB never removes the first or the last block: {n} of {n_blocks} blocks cannot be removed");
    }
    Ok(n)
}

/// Checks a run's settings before any work: returns the blocks (or submodule pairs) to remove and
/// the calibration windows to score (`samples`, or the method's default).
pub fn check_settings(
    method: BlockMethod,
    sparsity: f64,
    n_blocks: usize,
    seq_len: usize,
    samples: Option<usize>,
    evopress: &EvoPressOptions,
) -> Result<(usize, usize)> {
    let n = check_budget(method, sparsity, n_blocks)?;
    let samples = samples.unwrap_or(method.default_samples(seq_len));
    if samples == 0 {
        bail!("--samples must be at least 1");
    }
    if method == BlockMethod::EvoPress {
        evopress.check(n, n_blocks, samples.saturating_mul(seq_len))?;
    }
    Ok((n, samples))
}

/// Runs a block-removal method: score on `samples` calibration windows (`None`: the method's
/// default), write, verify, report.
pub fn run(
    job: &PruneJob,
    method: BlockMethod,
    samples: Option<usize>,
    backend: &Backend,
) -> Result<BlockReport> {
    let start = Instant::now();
    let config = ModelConfig::from_dir(&job.model)?;
    let (n, samples) = check_settings(
        method,
        job.options.sparsity,
        config.blocks.len(),
        job.seq_len,
        samples,
        &job.evopress,
    )?;
    if method.removes_sub_blocks() && job.format.is_some_and(|f| f != Format::Hf) {
        bail!(
            "--method {} removes MLPs without their attention, which only --format hf expresses (its default)",
            method.name()
        );
    }
    let job = &PruneJob {
        format: job
            .format
            .or(method.removes_sub_blocks().then_some(Format::Hf)),
        ..job.clone()
    };
    let (claim, format, beside) = claim_outputs(job, &config)?;
    let (calib_files, corpus) = calibration_corpus(job)?;
    let windows = &calibration_samples(&corpus, job, samples)?;
    let t_score = Instant::now();
    let job_on_model = ScoreBlocks {
        method,
        evopress: &job.evopress,
        n,
        windows,
        verify: job.verify,
    };
    let scored = backend.with_model(&job.model, job_on_model)?;
    let seconds_scoring = t_score.elapsed().as_secs_f64();
    let removed_attention = scored.removed.ascending(Part::Attention);
    let removed_mlp = scored.removed.ascending(Part::Mlp);
    if removed_attention.contains(&0) && format.needs_block0_attention(&config) {
        bail!(
            "{} chose to remove block 0's attention, which --format {} cannot express (use --format hf)",
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
                if removed_mlp.contains(&i) {
                    Vec::new()
                } else {
                    (0..b.ffn_width).collect()
                }
            })
            .collect(),
        removed_attention: scored
            .removed
            .order
            .iter()
            .filter(|r| r.part != Part::Mlp)
            .map(|r| r.block)
            .collect(),
    };
    let export_opts = job.export_options(format);
    let saved = save_verified(
        job,
        &config,
        &export_opts,
        claim,
        &decisions,
        scored.ppl_in_memory,
        &windows[..1],
        backend,
    )?;
    let report = BlockReport {
        method: method.name().into(),
        sparsity_target: job.options.sparsity,
        block_fraction_removed: n as f64 / config.blocks.len() as f64,
        sparsity_achieved: scored.params.sparsity_achieved(),
        removed_blocks: removed_attention
            .iter()
            .copied()
            .filter(|b| removed_mlp.contains(b))
            .collect(),
        removed_attention,
        removed_mlp,
        removal_order: scored.removed.order,
        scores: scored.removed.scores,
        evopress: scored.removed.evopress,
        params: scored.params,
        calibration: BlockCalibration::of(job, &calib_files, samples)?,
        seconds: BlockSeconds {
            scoring: seconds_scoring,
            save: saved.seconds,
            total: start.elapsed().as_secs_f64(),
        },
        verification: saved.verification,
        backend: backend.describe(),
        decisions,
        export: saved.summary,
    };
    commit_with_report(saved.staged, format, &beside, &report)?;
    Ok(report)
}
