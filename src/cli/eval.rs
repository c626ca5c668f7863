//! `eval`: perplexity of a model on one or more text files, one row per file.

use super::device::{random_windows, Backend, DeviceArgs};
use super::output::{print_json, print_table};
use crate::data::Corpus;
use crate::eval::perplexity::{perplexity_with, Perplexity};
use crate::model::{Model, Workspace};
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

/// Scores windows on the chosen backend.
enum Scorer {
    Cpu(Box<(Model, Workspace)>),
    #[cfg(feature = "cuda")]
    Cuda(Box<(crate::gpu_model::GpuModel, crate::gpu_model::GpuWorkspace)>),
}

impl Scorer {
    fn vocab(&self) -> usize {
        match self {
            Scorer::Cpu(boxed) => boxed.0.config.vocab,
            #[cfg(feature = "cuda")]
            Scorer::Cuda(boxed) => boxed.0.config.vocab,
        }
    }

    /// The matrix precision and the kernels that compute with it (for reports).
    fn kernels(&self) -> String {
        match self {
            Scorer::Cpu(boxed) => crate::backend::cpu::kernels_for(boxed.0.precision()),
            #[cfg(feature = "cuda")]
            Scorer::Cuda(_) => "bf16 weights, CUDA kernels".into(),
        }
    }

    fn window_nll(&mut self, ids: &[u32]) -> Result<(f64, usize)> {
        match self {
            Scorer::Cpu(boxed) => {
                let (model, ws) = &mut **boxed;
                model.window_nll(ids, ws)
            }
            #[cfg(feature = "cuda")]
            Scorer::Cuda(boxed) => {
                let (model, ws) = &mut **boxed;
                model.window_nll(ws, ids)
            }
        }
    }
}

/// The model of `args` on `backend`.
fn scorer(args: &EvalArgs, backend: &Backend) -> Result<Scorer> {
    match backend {
        Backend::Cpu(dtype) => {
            let dir = args
                .model
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("--model is required on the CPU"))?;
            Ok(Scorer::Cpu(Box::new((
                Model::load_as(dir, *dtype)?,
                Workspace::default(),
            ))))
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda(gpu) => {
            use crate::gpu_model::{GpuModel, GpuWorkspace};
            let gpu_model = match (&args.model, args.device.synthetic_model(backend)?) {
                (Some(dir), _) => GpuModel::load(gpu.clone(), dir)?,
                (None, Some(synthetic)) => synthetic,
                (None, None) => anyhow::bail!("--model or --synthetic-weights is required"),
            };
            let ws = GpuWorkspace::new(&gpu_model, args.seq_len, args.seq_len)?;
            Ok(Scorer::Cuda(Box::new((gpu_model, ws))))
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
    let mut scorer = scorer(&args, &backend)?;
    let mut rows = Vec::new();
    if let Some(config) = &args.device.synthetic_weights {
        let vocab = scorer.vocab();
        let n = args.max_windows.unwrap_or(8);
        let windows = random_windows(n, args.seq_len, vocab, args.device.synthetic_seed);
        let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let result = perplexity_with(&refs, "random tokens", |w| scorer.window_nll(w))?;
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
            let result = perplexity_with(&windows, &dataset, |w| scorer.window_nll(w))?;
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
            "backend": backend.describe(), "kernels": scorer.kernels(), "results": rows,
        }));
    }
    eprintln!("kernels: {}", scorer.kernels());
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
