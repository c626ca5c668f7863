//! 2SSP: stage 1 prunes FFN neurons in every block, stage 2 removes whole attention submodules.
//! The exact algorithm is ../shared/SPEC-2SSP.md; [`run`] applies both stages to a model of any
//! backend (an [`Engine`]) in place.

pub mod balance;
pub mod block_pipeline;
pub mod block_search;
pub mod block_similarity;
pub mod cache;
pub mod decisions;
pub mod evopress;
pub mod pipeline;
pub mod report;
pub mod slicegpt;
pub mod stage1;
pub mod stage2;

use crate::config::ModelConfig;
use crate::engine::Engine;
use anyhow::{bail, Result};
use balance::{AttentionBudget, ParamCounts, PruningPlan};
use cache::PruneCache;
use serde::Serialize;
use std::time::Instant;

/// A pruning method (`prune --method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// 2SSP (both stages).
    #[value(name = "2ssp")]
    TwoSsp,
    /// ShortGPT.
    Shortgpt,
    /// Window / angular distance.
    Window,
    /// SLEB.
    Sleb,
    /// BlockPruner.
    Blockpruner,
    /// EvoPress.
    Evopress,
    /// SliceGPT.
    Slicegpt,
}

impl Method {
    /// The block-removal baseline this is, or None for 2SSP and SliceGPT.
    pub fn block_method(self) -> Option<block_pipeline::BlockMethod> {
        use block_pipeline::BlockMethod;
        match self {
            Method::TwoSsp | Method::Slicegpt => None,
            Method::Shortgpt => Some(BlockMethod::ShortGpt),
            Method::Window => Some(BlockMethod::Window),
            Method::Sleb => Some(BlockMethod::Sleb),
            Method::Blockpruner => Some(BlockMethod::BlockPruner),
            Method::Evopress => Some(BlockMethod::EvoPress),
        }
    }

    /// Name as `--method` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Slicegpt => "slicegpt",
            _ => self.block_method().map_or("2ssp", |m| m.name()),
        }
    }
}

/// User choices for one 2SSP run.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Fraction of P_main to remove, in (0, 1).
    pub sparsity: f64,
    /// How the number of removed attention submodules is chosen.
    pub budget: AttentionBudget,
    /// Round the kept FFN width to a multiple of this (off by default).
    pub ffn_multiple_of: Option<usize>,
    /// Blocks whose attention is never removed.
    pub protected_attention: Vec<usize>,
}

/// What both stages decided, and what they cost.
#[derive(Clone, Debug, Serialize)]
pub struct PruneOutcome {
    /// Balance of Eq. 5.
    pub plan: PruningPlan,
    /// Dense counts the plan was derived from.
    pub counts: ParamCounts,
    /// Kept neurons per block (ascending original indices).
    pub ffn_kept: Vec<Vec<usize>>,
    /// Stage 2 decisions.
    pub stage2: stage2::Stage2Outcome,
    /// Seconds spent in stage 1 and stage 2.
    pub seconds_stage1: f64,
    /// Seconds spent in stage 2.
    pub seconds_stage2: f64,
    /// What was taken from the cache instead of computed.
    pub reused: cache::Reused,
}

/// Weight memory released by pruning (bytes as the backend holds the weights).
#[derive(Clone, Debug, Serialize)]
pub struct FreedMemory {
    /// Weight bytes before pruning.
    pub bytes_before: u64,
    /// Bytes freed by compacting the FFNs.
    pub bytes_freed_ffn: u64,
    /// Bytes freed by removing attention submodules.
    pub bytes_freed_attention: u64,
    /// Weight bytes after pruning.
    pub bytes_after: u64,
}

/// Prunes `model` in place: scores on `stage1_windows` (dense), then greedy attention removal on
/// `stage2_windows`; with a `cache`, finished work of earlier runs is reused and new work kept.
pub fn run<E: Engine>(
    model: &mut E,
    opts: &PruneOptions,
    stage1_windows: &[&[u32]],
    stage2_windows: &[&[u32]],
    cache: Option<&PruneCache>,
) -> Result<(PruneOutcome, FreedMemory)> {
    let (counts, plan) = validated_plan(model.config(), opts)?;
    let bytes_before = model.weight_bytes();

    let t1 = Instant::now();
    let widths = model.config().ffn_widths();
    let (scores, scores_reused) = PruneCache::scores_or(cache, stage1_windows, &widths, || {
        model.score_neurons(stage1_windows)
    })?;
    let ffn_kept = stage1::kept_neurons(&scores, plan.keep);
    model.keep_ffn_neurons(&ffn_kept)?;
    model.sync()?;
    let bytes_after_ffn = model.weight_bytes();
    let seconds_stage1 = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let journal =
        cache.map(|c| c.stage2_journal(&ffn_kept, stage2_windows, &opts.protected_attention));
    let stage2 = stage2::greedy_removal(
        &mut stage2::Suffix::new(model, stage2_windows)?,
        plan.n_attn,
        &opts.protected_attention,
        journal.as_ref(),
    )?;
    model.sync()?;
    let seconds_stage2 = t2.elapsed().as_secs_f64();
    let bytes_after = model.weight_bytes();
    let reused = cache::Reused::of(cache, scores_reused, &stage2);
    let outcome = PruneOutcome {
        plan,
        counts,
        ffn_kept,
        stage2,
        seconds_stage1,
        seconds_stage2,
        reused,
    };
    let memory = FreedMemory {
        bytes_before,
        bytes_freed_ffn: bytes_before - bytes_after_ffn,
        bytes_freed_attention: bytes_after_ffn - bytes_after,
        bytes_after,
    };
    Ok((outcome, memory))
}

/// The balance of Eq. 5 for `config`, checked against the protected blocks.
pub fn validated_plan(
    config: &ModelConfig,
    opts: &PruneOptions,
) -> Result<(ParamCounts, PruningPlan)> {
    let counts = ParamCounts::of(config)?;
    let plan = balance::plan(&counts, opts.sparsity, opts.budget, opts.ffn_multiple_of)?;
    if let Some(&bad) = opts
        .protected_attention
        .iter()
        .find(|&&b| b >= counts.n_layers)
    {
        bail!(
            "protected block {bad} does not exist (the model has {} blocks)",
            counts.n_layers
        );
    }
    let removable = counts.n_layers - dedup_len(&opts.protected_attention);
    if plan.n_attn > removable {
        bail!(
            "the plan removes {} attention submodules but only {removable} are not protected",
            plan.n_attn
        );
    }
    Ok((counts, plan))
}

fn dedup_len(v: &[usize]) -> usize {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.dedup();
    s.len()
}
