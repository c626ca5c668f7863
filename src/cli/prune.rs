//! `prune`: 2SSP (or a whole-block baseline) on a checkpoint folder, saved as a new folder with a
//! report, then reloaded and verified.

use super::device::{Backend, DeviceArgs};
use super::output::{print_json, print_table};
use crate::engine::Engine;
use crate::export::Format;
use crate::prune::balance::AttentionBudget;
use crate::prune::block_pipeline;
use crate::prune::pipeline::{self, PruneJob};
use crate::prune::slicegpt;
use crate::prune::Method;
use crate::prune::PruneOptions;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

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
    /// Pruning method: 2ssp (the paper's), or a block-removal baseline as its authors' code runs
    /// it: shortgpt (block influence, Men et al. 2024), window (most similar block window, Gromov
    /// et al. 2024), sleb (iterative block removal by calibration perplexity, Song et al. 2024),
    /// blockpruner (iterative attention and MLP removal by perplexity, Zhong et al. 2024) or
    /// evopress (evolutionary search over attention and MLP removals by KL divergence from the
    /// dense model, Sieberling et al. 2024); or slicegpt (PCA rotation of the residual stream,
    /// sliced to int((1 - sparsity) x hidden) rounded down to a multiple of 8, Ashkboos et al.
    /// 2024; CPU only; written in the engine's HF layout, which only this engine loads).
    #[arg(long, value_enum, default_value = "2ssp")]
    pub method: Method,
    /// Fraction of the decoder-block parameters (P_main) to remove, in (0, 1); whole-block methods
    /// remove ceil(sparsity x blocks) blocks, as the authors' main.py.
    #[arg(long)]
    pub sparsity: f64,
    /// Calibration windows a baseline scores [default: the authors': 256 for shortgpt, window and
    /// slicegpt, 1 for sleb and blockpruner, 131072 tokens' worth for evopress].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Output folder (a .gguf file with --format gguf; the report is then written beside it).
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
    /// Output format [default: decilm for Llama, Mistral, Qwen2 and Phi-3; hf for Qwen3 and Gemma-3,
    /// and for blockpruner and evopress, whose MLP-only removals only hf expresses].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Output dtype and DeciLM profile.
    #[command(flatten)]
    pub output: super::export::OutputArgs,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Skip reloading the saved folder and checking its perplexity.
    #[arg(long)]
    pub no_verify: bool,
    /// Keep stage-1 scores and stage-2 progress here, so a killed run resumes and a run at
    /// another sparsity on the same calibration skips stage 1
    /// [default: $TWOSSP_CACHE_DIR, else $XDG_CACHE_HOME/twossp-engine, else ~/.cache/twossp-engine].
    #[arg(long, conflicts_with = "no_cache")]
    pub cache_dir: Option<PathBuf>,
    /// Compute everything and keep nothing for later runs.
    #[arg(long)]
    pub no_cache: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// EvoPress's search settings.
    #[command(flatten)]
    pub evopress: super::evopress::EvoPressArgs,
    /// Backend and synthetic weights (synthetic: random calibration tokens, nothing saved).
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// 2SSP on a synthetic model on the GPU (timing only: random calibration tokens, nothing saved).
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
    let vocab = model.config().vocab;
    let windows = super::device::random_windows(n, args.seq_len, vocab, args.device.synthetic_seed);
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let (main_before, total_before) = (model.params_main(), model.params_total());
    let (outcome, memory) = crate::prune::run(
        &mut model,
        opts,
        &refs[..args.stage1_samples],
        &refs[..args.stage2_samples],
        None,
    )?;
    let report = serde_json::json!({
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

/// "stage-1 scores, 2 stage-2 removals" / "nothing" / "cache off".
fn reused_summary(r: &crate::prune::cache::Reused) -> String {
    if r.cache_dir.is_none() {
        return "cache off".into();
    }
    let mut parts = Vec::new();
    if r.stage1_scores {
        parts.push("stage-1 scores".to_string());
    }
    if r.stage2_removals > 0 {
        parts.push(format!("{} stage-2 removals", r.stage2_removals));
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// Runs `prune`.
pub fn run(args: PruneArgs) -> Result<()> {
    crate::limits::check_positions(&[("--seq-len", args.seq_len)])?;
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
        if !(args.sparsity > 0.0 && args.sparsity < 1.0) {
            bail!("--sparsity must be in (0, 1), got {}", args.sparsity);
        }
        return prune_synthetic(&args, &backend, &opts, config);
    }
    let (Some(model), Some(out)) = (&args.model, &args.out) else {
        bail!("--model and --out are required (or --synthetic-weights)");
    };
    let job = PruneJob {
        model: model.clone(),
        out: out.clone(),
        force: args.force,
        verify: !args.no_verify,
        options: opts,
        calib: args.calib.clone(),
        seq_len: args.seq_len,
        stage1_samples: args.stage1_samples,
        stage2_samples: args.stage2_samples,
        seed: args.seed,
        format: args.format,
        dtype: args.device.dtype.choice.stored(),
        ffn_mult: args.output.ffn_mult,
        cache_root: if args.no_cache {
            None
        } else {
            args.cache_dir
                .clone()
                .or_else(crate::prune::cache::default_root)
        },
        evopress: args.evopress.options(),
    };
    if args.method == Method::Slicegpt {
        let report = slicegpt::pipeline::run(&job, args.samples, &backend)?;
        if args.json {
            return print_json(&report);
        }
        let rows = vec![
            vec!["method".into(), report.method.clone()],
            vec![
                "hidden -> sliced width".into(),
                format!("{} -> {}", report.hidden, report.sliced_width),
            ],
            vec![
                "P_main removed".into(),
                format!("{:.4}", report.sparsity_achieved),
            ],
            vec![
                "signal kept (mean / min over sites)".into(),
                format!(
                    "{:.5} / {:.5}",
                    report.mean_fraction_kept, report.min_fraction_kept
                ),
            ],
            vec![
                "seconds (slicing / total)".into(),
                format!(
                    "{:.2} / {:.2}",
                    report.seconds.scoring, report.seconds.total
                ),
            ],
            vec!["output".into(), report.export.path.display().to_string()],
        ];
        print_table(&["prune", "value"], &rows);
        return Ok(());
    }
    if let Some(method) = args.method.block_method() {
        let report = block_pipeline::run(&job, method, args.samples, &backend)?;
        if args.json {
            return print_json(&report);
        }
        let rows = vec![
            vec!["method".into(), report.method.clone()],
            vec![
                "removed blocks".into(),
                format!("{:?}", report.removed_blocks),
            ],
            vec![
                "removed attention / MLP".into(),
                format!("{:?} / {:?}", report.removed_attention, report.removed_mlp),
            ],
            vec![
                "blocks / P_main removed".into(),
                format!(
                    "{:.4} / {:.4}",
                    report.block_fraction_removed, report.sparsity_achieved
                ),
            ],
            vec![
                "seconds (scoring / total)".into(),
                format!(
                    "{:.2} / {:.2}",
                    report.seconds.scoring, report.seconds.total
                ),
            ],
            vec!["output".into(), report.export.path.display().to_string()],
        ];
        print_table(&["prune", "value"], &rows);
        return Ok(());
    }
    let report = pipeline::run(&job, &backend)?;
    if args.json {
        return print_json(&report);
    }
    let verified = match &report.verification {
        None => "skipped".to_string(),
        Some(v) if v.identical => "identical perplexity".into(),
        Some(v) => format!(
            "perplexity within {:.1e} (rel. diff {:.2e})",
            v.bound, v.relative_difference
        ),
    };
    let mut rows = vec![
        vec![
            "sparsity target / achieved".into(),
            format!(
                "{:.4} / {:.4}",
                report.sparsity_target, report.sparsity_achieved
            ),
        ],
        vec![
            "params main".into(),
            format!(
                "{} -> {}",
                report.params.params_main_before, report.params.params_main_after
            ),
        ],
        vec![
            "params total".into(),
            format!(
                "{} -> {}",
                report.params.params_total_before, report.params.params_total_after
            ),
        ],
        vec![
            "FFN neurons kept".into(),
            format!(
                "{} of {}",
                report.ffn_keep.first().unwrap_or(&0),
                report.balance.d_ff
            ),
        ],
        vec![
            "attention removed".into(),
            format!("{:?}", report.removed_attention),
        ],
        vec![
            "stage-2 ppl".into(),
            format!(
                "{:.3} -> {:?}",
                report.stage2_ppl_before,
                report
                    .stage2_ppl
                    .iter()
                    .map(|p| format!("{p:.3}"))
                    .collect::<Vec<_>>()
            ),
        ],
        vec![
            "seconds stage1 / stage2".into(),
            format!(
                "{:.1} / {:.1}",
                report.seconds.stage1, report.seconds.stage2
            ),
        ],
        vec!["reused from cache".into(), reused_summary(&report.reused)],
        vec![
            "block evals stage2 (reuse / full)".into(),
            format!(
                "{} / {}",
                report.block_evals_stage2, report.block_evals_stage2_without_suffix_reuse
            ),
        ],
        vec![
            "format / dtype".into(),
            format!("{} / {}", report.export.format.name(), report.export.dtype),
        ],
        vec!["verified reload".into(), verified],
        vec!["backend".into(), report.backend.clone()],
        vec!["output".into(), out.display().to_string()],
    ];
    if let Some(why) = &report.protected_for_format {
        rows.push(vec!["block 0 attention kept".into(), why.clone()]);
    }
    for note in &report.export.notes {
        rows.push(vec!["note".into(), note.clone()]);
    }
    print_table(&["2SSP", "value"], &rows);
    Ok(())
}
