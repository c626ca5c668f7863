//! `bench`: prefill, time to first token, decode speed and memory, optionally beside a baseline model.

use super::output::{print_json, print_table};
use crate::bench::{measure, BenchResult, BenchSettings};
use crate::model::Model;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// HF checkpoint folder to measure (e.g. a pruned model).
    #[arg(long)]
    pub model: PathBuf,
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
}

/// Runs `bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.prefill_len >= 1 && args.prompt_len >= 1,
        "--prefill-len and --prompt-len must be positive"
    );
    let settings = BenchSettings {
        prefill_len: args.prefill_len,
        prompt_len: args.prompt_len,
        decode_tokens: args.decode_tokens,
        context: args.context,
        repeats: args.repeats,
    };
    let model = Model::load(&args.model)?;
    let result = measure(&model, &settings)?;
    drop(model);
    let baseline = match &args.baseline {
        Some(dir) => Some(measure(&Model::load(dir)?, &settings)?),
        None => None,
    };
    if args.json {
        return print_json(&serde_json::json!({
            "model": args.model, "baseline": args.baseline, "threads": rayon::current_num_threads(),
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
            "weights (f32)",
            Box::new(|r| mib(r.weight_bytes_f32)),
            Box::new(|m, b| m.weight_bytes_f32 as f64 / b.weight_bytes_f32 as f64),
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
