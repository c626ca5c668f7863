//! `pruning_report.json`: what a pruning run decided, what it cost and how it was checked. The
//! field names are read by tools outside this repository; keep them stable.

use super::decisions::Decisions;
use crate::export::ExportSummary;
use serde::Serialize;
use std::path::PathBuf;

/// Parameter counts before and after pruning (every method's report has them).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ParamsChange {
    /// Decoder-block parameters before.
    pub params_main_before: u64,
    /// Decoder-block parameters after.
    pub params_main_after: u64,
    /// All parameters before.
    pub params_total_before: u64,
    /// All parameters after.
    pub params_total_after: u64,
}

impl ParamsChange {
    /// From (P_main, P_total) before and after.
    pub fn new(before: (u64, u64), after: (u64, u64)) -> Self {
        Self {
            params_main_before: before.0,
            params_main_after: after.0,
            params_total_before: before.1,
            params_total_after: after.1,
        }
    }

    /// Fraction of the decoder-block parameters removed.
    pub fn sparsity_achieved(&self) -> f64 {
        1.0 - self.params_main_after as f64 / self.params_main_before as f64
    }
}

/// The report of one `prune` run.
#[derive(Clone, Debug, Serialize)]
pub struct PruningReport {
    /// Method name ("2SSP").
    pub method: String,
    /// Requested fraction of P_main removed.
    pub sparsity_target: f64,
    /// Achieved fraction of the decoder-block parameters removed (engine's count).
    pub sparsity_achieved: f64,
    /// Achieved fraction by the reference implementation's count.
    pub sparsity_achieved_reference_count: f64,
    /// Parameters before and after.
    #[serde(flatten)]
    pub params: ParamsChange,
    /// Decoder-block parameters after, by the reference's count.
    pub params_main_after_reference_count: u64,
    /// Balance exponent of Eq. 5 (absent with `--remove-attention`).
    pub alpha: Option<f64>,
    /// Attention submodules removed.
    pub n_attn_removed: usize,
    /// Removed attention submodules in removal order.
    pub removed_attention: Vec<usize>,
    /// Stage-2 calibration perplexity before any removal.
    pub stage2_ppl_before: f64,
    /// Stage-2 calibration perplexity after each removal.
    pub stage2_ppl: Vec<f64>,
    /// FFN width kept per block.
    pub ffn_keep: Vec<usize>,
    /// Kept neuron indices per block.
    pub ffn_kept: Vec<Vec<usize>>,
    /// Rounding of the kept width, if requested.
    pub ffn_multiple_of: Option<usize>,
    /// Blocks whose attention was never removed.
    pub protected_attention: Vec<usize>,
    /// Why block 0's attention was protected without being asked (the output format needs it).
    pub protected_for_format: Option<String>,
    /// Eq. 5's inputs and target.
    pub balance: Balance,
    /// Calibration data and how it was used.
    pub calibration: Calibration,
    /// Work taken from the resumable-work cache instead of computed (and the cache folder).
    pub reused: super::cache::Reused,
    /// Stage-2 block evaluations with suffix reuse.
    pub block_evals_stage2: u64,
    /// Stage-2 block evaluations the reference's full recomputation needs.
    pub block_evals_stage2_without_suffix_reuse: u64,
    /// Wall time per phase.
    pub seconds: Seconds,
    /// Bytes of weights written.
    pub weight_bytes: u64,
    /// Reload check of the written output (absent with `--no-verify`).
    pub verification: Option<Verification>,
    /// Backend that pruned.
    pub backend: String,
    /// Precision the matrices were kept in while pruning (`--dtype`, resolved): f32, bf16 or f16.
    pub dtype: String,
    /// GPU memory released by the in-place pruning (GPU runs).
    pub device_memory: Option<serde_json::Value>,
    /// CPU worker threads.
    pub threads: usize,
    /// Version of this engine.
    pub engine_version: String,
    /// Calibration shuffle seed, if any.
    pub seed: Option<u64>,
    /// The input model folder.
    pub source_model: PathBuf,
    /// The decisions as one value (what `export` and other tools apply).
    pub decisions: Decisions,
    /// The output written.
    pub export: ExportSummary,
}

/// Inputs and target of the balance (Eq. 5).
#[derive(Clone, Debug, Serialize)]
pub struct Balance {
    /// Parameters of one attention submodule.
    pub p_attn: u64,
    /// Parameters of one dense FFN.
    pub p_ffn: u64,
    /// Decoder-block parameters.
    pub p_main: u64,
    /// Dense FFN width.
    pub d_ff: usize,
    /// Parameters to remove.
    pub target_removed: u64,
}

/// One calibration file.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationFile {
    /// Path as given.
    pub path: PathBuf,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// Calibration provenance.
#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    /// Files, in the order they were joined.
    pub files: Vec<CalibrationFile>,
    /// Documents read.
    pub documents: usize,
    /// Tokens after joining.
    pub tokens: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows for stage 1.
    pub stage1_samples: usize,
    /// Windows for stage 2.
    pub stage2_samples: usize,
    /// "first" or "shuffled".
    pub window_order: String,
}

/// Seconds per phase.
#[derive(Clone, Debug, Serialize)]
pub struct Seconds {
    /// Stage 1.
    pub stage1: f64,
    /// Stage 2.
    pub stage2: f64,
    /// Writing the output.
    pub save: f64,
    /// The whole run.
    pub total: f64,
}

/// A written output reloaded and compared with the model it was written from.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// Calibration perplexity of the model in memory.
    pub ppl_in_memory: f64,
    /// The same after reloading the written output.
    pub ppl_reloaded: f64,
    /// Bit-identical perplexities.
    pub identical: bool,
    /// |ppl_reloaded − ppl_in_memory| / ppl_in_memory.
    pub relative_difference: f64,
    /// The bound the check applied (0 for bit-identical).
    pub bound: f64,
    /// Backend of both evaluations.
    pub backend: String,
}
