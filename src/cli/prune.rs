//! `prune`: 2SSP on a checkpoint folder, saved as a new folder with a report, then reloaded and verified.

use super::device::{Backend, DeviceArgs};
use super::output::{print_json, print_table};
use crate::data::Corpus;
use crate::eval::perplexity::perplexity_with;
use crate::export::checkpoint;
use crate::fsutil::StagedDir;
use crate::model::{Model, Workspace};
use crate::prune::balance::AttentionBudget;
use crate::prune::{self, PruneOptions};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default calibration corpus (State of the Union addresses, fetched by scripts/fetch-data.sh).
const DEFAULT_CALIB: &str = "data/calib-sotu.jsonl";

/// Arguments of `prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Dense HF checkpoint folder to prune (never modified).
    #[arg(
        long,
        required_unless_present = "synthetic_weights",
        conflicts_with = "synthetic_weights"
    )]
    pub model: Option<PathBuf>,
    /// Fraction of the decoder-block parameters (P_main) to remove, in (0, 1).
    #[arg(long)]
    pub sparsity: f64,
    /// Output folder for the pruned checkpoint.
    #[arg(
        long,
        required_unless_present = "synthetic_weights",
        conflicts_with = "synthetic_weights"
    )]
    pub out: Option<PathBuf>,
    /// Calibration text files (.jsonl/.txt), joined in order [default: data/calib-sotu.jsonl].
    #[arg(long, num_args = 1..)]
    pub calib: Vec<PathBuf>,
    /// Calibration windows for stage 1 (neuron scores).
    #[arg(long, default_value_t = 32)]
    pub stage1_samples: usize,
    /// Calibration windows for stage 2 (perplexity of each candidate removal).
    #[arg(long, default_value_t = 1)]
    pub stage2_samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Balance exponent of Eq. 5 (derives how many attention submodules go).
    #[arg(long, default_value_t = 1.5, conflicts_with = "remove_attention")]
    pub alpha: f64,
    /// Remove exactly this many attention submodules instead of deriving it from alpha.
    #[arg(long)]
    pub remove_attention: Option<usize>,
    /// Round the kept FFN width to a multiple of N (e.g. 64/128/256) and re-balance (off by default).
    #[arg(long)]
    pub ffn_multiple_of: Option<usize>,
    /// Blocks whose attention is never removed (e.g. --keep-attention 0).
    #[arg(long, value_delimiter = ',')]
    pub keep_attention: Vec<usize>,
    /// Shuffle the calibration windows with this seed before taking samples (default: the first windows, as the reference).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
    /// Skip reloading the saved folder and checking its perplexity.
    #[arg(long)]
    pub no_verify: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backend and synthetic weights (synthetic: random calibration tokens, nothing saved).
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// What a backend's 2SSP run returns.
struct Pruned {
    /// The pruned model on the host, in the checkpoint's precision (what gets saved).
    model: Model,
    /// The decisions and their cost.
    outcome: prune::PruneOutcome,
    /// On a GPU: the device memory released.
    device_memory: Option<serde_json::Value>,
    /// Parameters of the blocks and in total, before pruning.
    params_before: (u64, u64),
}

/// Runs 2SSP on `backend`. On a GPU the model is streamed to the device, pruned there, and the
/// decisions are then applied to the checkpoint loaded on the host (so nothing is saved in bf16).
fn prune_on(
    backend: &Backend,
    dir: &Path,
    opts: &PruneOptions,
    stage1: &[&[u32]],
    stage2: &[&[u32]],
) -> Result<Pruned> {
    match backend {
        Backend::Cpu => {
            let mut model = Model::load(dir)?;
            let params_before = (model.params_main(), model.params_total());
            let outcome = prune::run(&mut model, opts, stage1, stage2)?;
            Ok(Pruned {
                model,
                outcome,
                device_memory: None,
                params_before,
            })
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda(gpu) => {
            let mut gpu_model = crate::gpu_model::GpuModel::load(gpu.clone(), dir)?;
            let params_before = (gpu_model.params_main(), gpu_model.params_total());
            let (outcome, memory) = prune::gpu::run(&mut gpu_model, opts, stage1, stage2)?;
            drop(gpu_model);
            let mut model = Model::load(dir)?;
            model.keep_ffn_neurons(&outcome.ffn_kept);
            for &block in &outcome.stage2.removed {
                model.remove_attention(block);
            }
            Ok(Pruned {
                model,
                outcome,
                device_memory: Some(serde_json::to_value(memory)?),
                params_before,
            })
        }
    }
}

/// 2SSP on a synthetic model on the GPU (timing only: random calibration tokens, nothing saved).
#[cfg(feature = "cuda")]
fn prune_synthetic(
    args: &PruneArgs,
    backend: &Backend,
    opts: &PruneOptions,
    config_path: &Path,
) -> Result<()> {
    let Some(mut model) = args.device.synthetic_model(backend)? else {
        bail!("--synthetic-weights is required here");
    };
    let n = args.stage1_samples.max(args.stage2_samples);
    let vocab = model.config.vocab;
    let windows = super::device::random_windows(n, args.seq_len, vocab, args.device.synthetic_seed);
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let (main_before, total_before) = (model.params_main(), model.params_total());
    let (outcome, memory) = prune::gpu::run(
        &mut model,
        opts,
        &refs[..args.stage1_samples],
        &refs[..args.stage2_samples],
    )?;
    let report = json!({
        "method": "2SSP", "synthetic_weights": config_path, "backend": backend.describe(),
        "sparsity_target": args.sparsity,
        "sparsity_achieved": 1.0 - model.params_main() as f64 / main_before as f64,
        "params_main_before": main_before, "params_main_after": model.params_main(),
        "params_total_before": total_before, "params_total_after": model.params_total(),
        "n_attn_removed": outcome.stage2.removed.len(), "removed_attention": outcome.stage2.removed,
        "ffn_keep": outcome.plan.keep, "seq_len": args.seq_len,
        "stage1_samples": args.stage1_samples, "stage2_samples": args.stage2_samples,
        "seconds": {"stage1": outcome.seconds_stage1, "stage2": outcome.seconds_stage2,
                    "total": outcome.seconds_stage1 + outcome.seconds_stage2},
        "device_memory": memory,
    });
    if args.json {
        return print_json(&report);
    }
    let rows = vec![
        vec!["device".into(), backend.describe()],
        vec![
            "params main".into(),
            format!("{main_before} -> {}", model.params_main()),
        ],
        vec![
            "attention removed".into(),
            format!("{:?}", outcome.stage2.removed),
        ],
        vec![
            "seconds stage1 / stage2".into(),
            format!(
                "{:.2} / {:.2}",
                outcome.seconds_stage1, outcome.seconds_stage2
            ),
        ],
        vec![
            "device weights".into(),
            format!("{} -> {} bytes", memory.bytes_before, memory.bytes_after),
        ],
    ];
    print_table(&["2SSP (synthetic)", "value"], &rows);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn prune_synthetic(_: &PruneArgs, _: &Backend, _: &PruneOptions, _: &Path) -> Result<()> {
    bail!("--synthetic-weights needs a CUDA build (--features cuda)")
}

/// Runs `prune`.
pub fn run(args: PruneArgs) -> Result<()> {
    let start = Instant::now();
    if !(args.sparsity > 0.0 && args.sparsity < 1.0) {
        bail!("--sparsity must be in (0, 1), got {}", args.sparsity);
    }
    if args.stage1_samples == 0 || args.stage2_samples == 0 {
        bail!("--stage1-samples and --stage2-samples must be at least 1");
    }
    let backend = args.device.backend()?;
    let opts = PruneOptions {
        sparsity: args.sparsity,
        budget: args
            .remove_attention
            .map_or(AttentionBudget::Alpha(args.alpha), AttentionBudget::Fixed),
        ffn_multiple_of: args.ffn_multiple_of,
        protected_attention: args.keep_attention.clone(),
    };
    if let Some(config) = &args.device.synthetic_weights {
        return prune_synthetic(&args, &backend, &opts, config);
    }
    let (Some(model_dir), Some(out)) = (&args.model, &args.out) else {
        bail!("--model and --out are required (or --synthetic-weights)");
    };
    if out.exists() && !args.force {
        bail!(
            "output {} already exists (use --force to overwrite)",
            out.display()
        );
    }
    if same_path(out, model_dir) {
        bail!("--out must differ from --model (the input is never modified)");
    }
    let calib_files = if args.calib.is_empty() {
        vec![PathBuf::from(DEFAULT_CALIB)]
    } else {
        args.calib.clone()
    };
    let config = crate::config::ModelConfig::from_dir(model_dir)?;
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    let corpus = Corpus::load(&calib_files, &tokenizer)?;
    let mut windows = corpus.windows(args.seq_len, None)?;
    if let Some(seed) = args.seed {
        shuffle(&mut windows, seed);
    }
    let needed = args.stage1_samples.max(args.stage2_samples);
    if windows.len() < needed {
        bail!(
            "calibration text gives {} windows of {} tokens, but {needed} are needed",
            windows.len(),
            args.seq_len
        );
    }
    let stage1 = &windows[..args.stage1_samples];
    let stage2 = &windows[..args.stage2_samples];
    prune::validated_plan(&config, &opts)?; // refuse before loading weights
    let Pruned {
        model,
        outcome,
        device_memory,
        params_before: (main_before, total_before),
    } = prune_on(&backend, model_dir, &opts, stage1, stage2)?;

    let staged = StagedDir::create(out, args.force)?;
    let t_save = Instant::now();
    let weight_bytes = checkpoint::save(&model, model_dir, staged.path())?;
    let seconds_save = t_save.elapsed().as_secs_f64();
    let verification = if args.no_verify {
        None
    } else {
        Some(verify(&backend, &model, staged.path(), stage2)?)
    };

    let (main_after, total_after) = (model.params_main(), model.params_total());
    let report = json!({
        "method": "2SSP",
        "sparsity_target": args.sparsity,
        "sparsity_achieved": 1.0 - main_after as f64 / main_before as f64,
        "sparsity_achieved_reference_count": 1.0 - outcome.plan.main_after as f64 / outcome.counts.p_main as f64,
        "params_main_before": main_before,
        "params_main_after": main_after,
        "params_main_after_reference_count": outcome.plan.main_after,
        "params_total_before": total_before,
        "params_total_after": total_after,
        "alpha": if args.remove_attention.is_some() { None } else { Some(args.alpha) },
        "n_attn_removed": outcome.stage2.removed.len(),
        "removed_attention": outcome.stage2.removed,
        "stage2_ppl_before": outcome.stage2.ppl_before,
        "stage2_ppl": outcome.stage2.ppl_after,
        "ffn_keep": model.config.blocks.iter().map(|b| b.ffn_width).collect::<Vec<_>>(),
        "ffn_kept": outcome.ffn_kept,
        "ffn_multiple_of": args.ffn_multiple_of,
        "protected_attention": args.keep_attention,
        "balance": {"p_attn": outcome.counts.p_attn, "p_ffn": outcome.counts.p_ffn, "p_main": outcome.counts.p_main,
                    "d_ff": outcome.counts.d_ff, "target_removed": outcome.plan.target},
        "calibration": {
            "files": calib_files.iter().map(|f| Ok(json!({"path": f, "sha256": sha256_file(f)?}))).collect::<Result<Vec<_>>>()?,
            "documents": corpus.n_documents,
            "tokens": corpus.ids.len(),
            "seq_len": args.seq_len,
            "stage1_samples": args.stage1_samples,
            "stage2_samples": args.stage2_samples,
            "window_order": if args.seed.is_some() { "shuffled" } else { "first" },
        },
        "block_evals_stage2": outcome.stage2.block_evals,
        "block_evals_stage2_without_suffix_reuse": outcome.stage2.block_evals_reference,
        "seconds": {"stage1": outcome.seconds_stage1, "stage2": outcome.seconds_stage2, "save": seconds_save,
                    "total": start.elapsed().as_secs_f64()},
        "weight_bytes": weight_bytes,
        "verification": verification,
        "backend": backend.describe(),
        "device_memory": device_memory,
        "threads": rayon::current_num_threads(),
        "engine_version": env!("CARGO_PKG_VERSION"),
        "seed": args.seed,
        "source_model": model_dir,
    });
    crate::fsutil::write_atomic(
        &staged.path().join("pruning_report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    staged.commit()?;
    if args.json {
        return print_json(&report);
    }
    let rows = vec![
        vec![
            "sparsity target / achieved".into(),
            format!(
                "{:.4} / {:.4}",
                args.sparsity,
                report["sparsity_achieved"].as_f64().unwrap_or(0.0)
            ),
        ],
        vec![
            "params main".into(),
            format!("{main_before} -> {main_after}"),
        ],
        vec![
            "params total".into(),
            format!("{total_before} -> {total_after}"),
        ],
        vec![
            "FFN neurons kept".into(),
            format!("{} of {}", outcome.plan.keep, outcome.counts.d_ff),
        ],
        vec![
            "attention removed".into(),
            format!("{:?}", outcome.stage2.removed),
        ],
        vec![
            "stage-2 ppl".into(),
            format!(
                "{:.3} -> {:?}",
                outcome.stage2.ppl_before,
                outcome
                    .stage2
                    .ppl_after
                    .iter()
                    .map(|p| format!("{p:.3}"))
                    .collect::<Vec<_>>()
            ),
        ],
        vec![
            "seconds stage1 / stage2".into(),
            format!(
                "{:.1} / {:.1}",
                outcome.seconds_stage1, outcome.seconds_stage2
            ),
        ],
        vec![
            "block evals stage2 (reuse / full)".into(),
            format!(
                "{} / {}",
                outcome.stage2.block_evals, outcome.stage2.block_evals_reference
            ),
        ],
        vec![
            "verified reload".into(),
            if args.no_verify {
                "skipped".into()
            } else {
                "identical perplexity".into()
            },
        ],
        vec!["backend".into(), backend.describe()],
        vec!["output".into(), out.display().to_string()],
    ];
    print_table(&["2SSP", "value"], &rows);
    Ok(())
}

/// Reloads the saved folder and checks its perplexity on the stage-2 windows equals the in-memory
/// model's, bit for bit, on the backend that pruned (on a GPU both copies are rounded to bf16 the
/// same way, so they must agree exactly too).
fn verify(
    backend: &Backend,
    model: &Model,
    dir: &Path,
    windows: &[&[u32]],
) -> Result<serde_json::Value> {
    let not_reloadable = "verification: the saved model does not reload";
    let (in_memory, from_disk) = match backend {
        Backend::Cpu => {
            let reloaded = Model::load(dir).context(not_reloadable)?;
            let mut ws = Workspace::default();
            let in_memory = perplexity_with(windows, "verify", |w| model.window_nll(w, &mut ws))?;
            let from_disk =
                perplexity_with(windows, "verify", |w| reloaded.window_nll(w, &mut ws))?;
            (in_memory.ppl, from_disk.ppl)
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda(gpu) => {
            use crate::gpu_model::{GpuModel, GpuWorkspace};
            let longest = windows.iter().map(|w| w.len()).max().unwrap_or(1);
            let gpu_ppl = |m: GpuModel| -> Result<f64> {
                let mut ws = GpuWorkspace::new(&m, longest, longest)?;
                Ok(perplexity_with(windows, "verify", |w| m.window_nll(&mut ws, w))?.ppl)
            };
            let in_memory = gpu_ppl(GpuModel::upload(gpu.clone(), model)?)?;
            (
                in_memory,
                gpu_ppl(GpuModel::load(gpu.clone(), dir).context(not_reloadable)?)?,
            )
        }
    };
    if in_memory.to_bits() != from_disk.to_bits() {
        bail!("verification failed: saved model gives perplexity {from_disk} but the pruned model in memory gives {in_memory}");
    }
    Ok(
        json!({"ppl_in_memory": in_memory, "ppl_reloaded": from_disk, "identical": true, "backend": backend.describe()}),
    )
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

/// True when two paths name the same existing location.
fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
