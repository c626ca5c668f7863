//! `eval`: perplexity of a model on one or more text files, one row per file.

use super::output::{print_json, print_table};
use crate::data::Corpus;
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
    #[arg(long)]
    pub model: PathBuf,
    /// Text files (.jsonl with a "text" field per line, or .txt); each is evaluated separately.
    #[arg(long, num_args = 1.., required = true)]
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
    let model = Model::load(&args.model)?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let mut rows = Vec::new();
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
    if args.json {
        return print_json(&serde_json::json!({ "model": args.model, "results": rows }));
    }
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
