//! `eval`: perplexity of a model on one or more text files, one row per file.

use super::device::{random_windows, Backend, DeviceArgs};
use super::output::{print_json, print_table};
use crate::data::Corpus;
use crate::engine::Engine;
use crate::eval::perplexity::{perplexity, Perplexity};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// Arguments of `eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// HF checkpoint folder (config.json, *.safetensors, tokenizer.json).
    #[arg(
        long,
        required_unless_present = "synthetic_weights",
        conflicts_with = "synthetic_weights"
    )]
    pub model: Option<PathBuf>,
    /// Text files (.jsonl with a "text" field per line, or .txt); each is evaluated separately.
    #[arg(long, num_args = 1.., required_unless_present = "synthetic_weights", conflicts_with = "synthetic_weights")]
    pub data: Vec<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Evaluate at most this many windows per file.
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backend and synthetic weights.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs `eval` on the model of `args`, loaded for `backend`.
fn load_and_evaluate(args: &EvalArgs, backend: &Backend) -> Result<()> {
    match backend {
        Backend::Cpu(dtype) => {
            let dir = args
                .model
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("--model is required on the CPU"))?;
            evaluate(args, backend, Model::load_as(dir, *dtype)?)
        }
        Backend::Cuda(gpu) => {
            let gpu_model = match (&args.model, args.device.synthetic_model(backend)?) {
                (Some(dir), _) => crate::gpu_model::GpuModel::load(gpu.clone(), dir)?,
                (None, Some(synthetic)) => synthetic,
                (None, None) => anyhow::bail!("--model or --synthetic-weights is required"),
            };
            evaluate(args, backend, gpu_model)
        }
    }
}

/// One evaluated file.
#[derive(Serialize)]
struct Row {
    dataset: String,
    file: PathBuf,
    documents: usize,
    corpus_tokens: usize,
    #[serde(flatten)]
    result: Perplexity,
}

/// Runs `eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    crate::limits::check_positions(&[("--seq-len", args.seq_len)])?;
    let backend = args.device.backend()?;
    load_and_evaluate(&args, &backend)
}

/// Perplexity of every file of `args` (or of random tokens) on `model`, printed.
fn evaluate<E: Engine>(args: &EvalArgs, backend: &Backend, model: E) -> Result<()> {
    let mut rows = Vec::new();
    if let Some(config) = &args.device.synthetic_weights {
        let vocab = model.config().vocab;
        let n = args.max_windows.unwrap_or(8);
        let windows = random_windows(n, args.seq_len, vocab, args.device.synthetic_seed);
        let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let result = perplexity(&model, &refs, "random tokens")?;
        rows.push(Row {
            dataset: "random-tokens".into(),
            file: config.clone(),
            documents: 0,
            corpus_tokens: n * args.seq_len,
            result,
        });
    }
    // --data comes with --model (clap: both conflict with --synthetic-weights).
    if let Some(dir) = &args.model {
        let tokenizer = Tokenizer::from_dir(dir)?;
        for file in &args.data {
            let corpus = Corpus::load(std::slice::from_ref(file), &tokenizer)?;
            let windows = corpus.windows(args.seq_len, args.max_windows)?;
            let dataset = file
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let result = perplexity(&model, &windows, &dataset)?;
            rows.push(Row {
                dataset,
                file: file.clone(),
                documents: corpus.n_documents,
                corpus_tokens: corpus.ids.len(),
                result,
            });
        }
    }
    if args.json {
        return print_json(&serde_json::json!({
            "model": args.model, "synthetic_weights": args.device.synthetic_weights,
            "backend": backend.describe(), "kernels": model.kernels(), "results": rows,
        }));
    }
    eprintln!("kernels: {}", model.kernels());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.dataset.clone(),
                r.result.windows.to_string(),
                r.result.predicted_tokens.to_string(),
                format!("{:.4}", r.result.ppl),
                format!("{:.5}", r.result.mean_nll),
                format!("{:.1}", r.result.seconds),
                format!("{:.0}", r.result.tokens_per_second),
            ]
        })
        .collect();
    print_table(
        &[
            "dataset",
            "windows",
            "predicted",
            "ppl",
            "mean_nll",
            "seconds",
            "tok/s",
        ],
        &table,
    );
    Ok(())
}
