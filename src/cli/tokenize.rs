//! `tokenize`: token ids of text files exactly as `eval` sees them (documents joined, no special tokens).

use super::output::print_json;
use crate::data::Corpus;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// HF checkpoint folder holding tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Text files (.jsonl or .txt), joined into one corpus.
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Print at most this many ids.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON ({"n_tokens", "ids"}) instead of one id per line.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tokenize`.
pub fn run(args: TokenizeArgs) -> Result<()> {
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let corpus = Corpus::load(&args.data, &tokenizer)?;
    let ids = &corpus.ids[..corpus.ids.len().min(args.limit.unwrap_or(usize::MAX))];
    if args.json {
        return print_json(&serde_json::json!({ "n_tokens": corpus.ids.len(), "ids": ids }));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for id in ids {
        writeln!(out, "{id}")?;
    }
    Ok(())
}
