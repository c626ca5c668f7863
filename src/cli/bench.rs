//! `bench`: prefill, time to first token, decode speed and memory, optionally beside a baseline model.

use super::device::{Backend, DeviceArgs};
use super::output::{print_json, print_table};
use crate::bench::{BenchResult, BenchSettings, Measure};
use crate::engine::Engine;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// HF checkpoint folder to measure (e.g. a pruned model).
    #[arg(
        long,
        required_unless_present = "synthetic_weights",
        conflicts_with = "synthetic_weights"
    )]
    pub model: Option<PathBuf>,
    /// Model to compare against (e.g. the dense original); measured in the same run.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Prefill length (batch 1).
    #[arg(long, default_value_t = 2048)]
    pub prefill_len: usize,
    /// Prompt length before decoding.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Tokens decoded with the KV cache.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Context length for the KV-cache memory figure.
    #[arg(long, default_value_t = 2048)]
    pub context: usize,
    /// Timed repetitions (best kept).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// With --synthetic-weights: measure the dense model, prune it in place with 2SSP at this sparsity
    /// (random calibration tokens, one window per stage) and measure it again as the model.
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Backend and synthetic weights.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Measures the model in `dir` on `backend`.
fn measure_on(
    backend: &Backend,
    dir: &std::path::Path,
    settings: &BenchSettings,
) -> Result<BenchResult> {
    backend.with_model(dir, Measure(settings))
}

/// Synthetic model on the GPU: (model result, baseline result); with `--sparsity` the model is the
/// 2SSP-pruned one and the baseline the dense one.
fn measure_synthetic(
    args: &BenchArgs,
    backend: &Backend,
    settings: &BenchSettings,
) -> Result<(BenchResult, Option<BenchResult>)> {
    use crate::prune::{balance::AttentionBudget, PruneOptions};
    let Some(mut model) = args.device.synthetic_model(backend)? else {
        anyhow::bail!("--model or --synthetic-weights is required");
    };
    let dense = crate::bench::measure(&model, settings)?;
    let Some(sparsity) = args.sparsity else {
        return Ok((dense, None));
    };
    let opts = PruneOptions {
        sparsity,
        budget: AttentionBudget::Alpha(1.5),
        ffn_multiple_of: None,
        protected_attention: Vec::new(),
    };
    let vocab = model.config().vocab;
    let windows =
        super::device::random_windows(1, args.prefill_len, vocab, args.device.synthetic_seed);
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    crate::prune::run(&mut model, &opts, &refs, &refs, None)?;
    Ok((crate::bench::measure(&model, settings)?, Some(dense)))
}

/// Runs `bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    crate::limits::check_positions(&[
        ("--prefill-len", args.prefill_len),
        ("--prompt-len", args.prompt_len),
        ("--decode-tokens", args.decode_tokens),
        ("--context", args.context),
        (
            "--prompt-len + --decode-tokens",
            args.prompt_len.saturating_add(args.decode_tokens),
        ),
    ])?;
    anyhow::ensure!(
        args.prefill_len >= 1 && args.prompt_len >= 1,
        "--prefill-len and --prompt-len must be positive"
    );
    // clap's `requires` is not enforced across the flattened DeviceArgs: say it here.
    anyhow::ensure!(
        args.sparsity.is_none() || args.device.synthetic_weights.is_some(),
        "--sparsity is for --synthetic-weights (prune a real model with `prune`, then bench it with --baseline)"
    );
    let settings = BenchSettings {
        prefill_len: args.prefill_len,
        prompt_len: args.prompt_len,
        decode_tokens: args.decode_tokens,
        context: args.context,
        repeats: args.repeats,
    };
    let backend = args.device.backend()?;
    let (result, baseline) = match &args.model {
        None => measure_synthetic(&args, &backend, &settings)?,
        Some(dir) => {
            let result = measure_on(&backend, dir, &settings)?;
            let baseline = args
                .baseline
                .as_ref()
                .map(|b| measure_on(&backend, b, &settings))
                .transpose()?;
            (result, baseline)
        }
    };
    if args.json {
        return print_json(&serde_json::json!({
            "model": args.model, "baseline": args.baseline, "backend": backend.describe(),
            "synthetic_weights": args.device.synthetic_weights, "sparsity": args.sparsity,
            "threads": rayon::current_num_threads(),
            "prefill_len": args.prefill_len, "prompt_len": args.prompt_len, "decode_tokens": args.decode_tokens,
            "context": args.context, "result": result, "baseline_result": baseline,
            "speedup": baseline.as_ref().map(|b| speedups(&result, b)),
        }));
    }
    let rows = table_rows(&result, baseline.as_ref());
    let mut headers = vec!["metric", "model"];
    if baseline.is_some() {
        headers.extend(["baseline", "model/baseline"]);
    }
    print_table(&headers, &rows);
    Ok(())
}

/// Ratios model vs baseline: speed-ups (>1 is faster) and size reductions.
fn speedups(m: &BenchResult, b: &BenchResult) -> serde_json::Value {
    serde_json::json!({
        "prefill": m.prefill_tokens_per_s / b.prefill_tokens_per_s,
        "time_to_first_token": b.time_to_first_token_s / m.time_to_first_token_s,
        "decode": m.decode_tokens_per_s / b.decode_tokens_per_s,
        "params_main_ratio": m.params_main as f64 / b.params_main as f64,
        "params_total_ratio": m.params_total as f64 / b.params_total as f64,
        "kv_cache_ratio": m.kv_cache_bytes as f64 / b.kv_cache_bytes.max(1) as f64,
    })
}

/// A table row: its name, how a result shows, and the model/baseline ratio.
type Metric = (
    &'static str,
    Box<dyn Fn(&BenchResult) -> String>,
    Box<dyn Fn(&BenchResult, &BenchResult) -> f64>,
);

fn table_rows(m: &BenchResult, b: Option<&BenchResult>) -> Vec<Vec<String>> {
    fn mib(v: u64) -> String {
        format!("{:.1} MiB", v as f64 / (1 << 20) as f64)
    }
    let metrics: Vec<Metric> = vec![
        (
            "prefill tok/s",
            Box::new(|r| format!("{:.0}", r.prefill_tokens_per_s)),
            Box::new(|m, b| m.prefill_tokens_per_s / b.prefill_tokens_per_s),
        ),
        (
            "time to first token",
            Box::new(|r| format!("{:.3} s", r.time_to_first_token_s)),
            Box::new(|m, b| m.time_to_first_token_s / b.time_to_first_token_s),
        ),
        (
            "decode tok/s",
            Box::new(|r| format!("{:.1}", r.decode_tokens_per_s)),
            Box::new(|m, b| m.decode_tokens_per_s / b.decode_tokens_per_s),
        ),
        (
            "params (blocks)",
            Box::new(|r| r.params_main.to_string()),
            Box::new(|m, b| m.params_main as f64 / b.params_main as f64),
        ),
        (
            "params (total)",
            Box::new(|r| r.params_total.to_string()),
            Box::new(|m, b| m.params_total as f64 / b.params_total as f64),
        ),
        (
            "weights (in memory)",
            Box::new(|r| mib(r.weight_bytes)),
            Box::new(|m, b| m.weight_bytes as f64 / b.weight_bytes as f64),
        ),
        (
            "KV cache @ context",
            Box::new(|r| mib(r.kv_cache_bytes)),
            Box::new(|m, b| m.kv_cache_bytes as f64 / b.kv_cache_bytes.max(1) as f64),
        ),
        (
            "attention blocks",
            Box::new(|r| r.attention_blocks.to_string()),
            Box::new(|m, b| m.attention_blocks as f64 / b.attention_blocks.max(1) as f64),
        ),
    ];
    metrics
        .iter()
        .map(|(name, show, ratio)| {
            let mut row = vec![name.to_string(), show(m)];
            if let Some(b) = b {
                row.push(show(b));
                row.push(format!("{:.3}", ratio(m, b)));
            }
            row
        })
        .collect()
}
