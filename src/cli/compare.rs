//! `compare`: every method × sparsity on one model, with the dense model, as tables and plots.

use super::output::{print_json, print_table};
use crate::compare::evaluate::{Corpus, Task};
use crate::compare::{CompareJob, PruneSettings};
use crate::eval::tasks::{self, load_docs, resolve_split, Selection, TaskSpec};
use crate::prune::Method;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Dense HF checkpoint folder (never modified).
    #[arg(long)]
    pub model: PathBuf,
    /// Methods, in table order (each as `prune --method` runs it); evopress and slicegpt are not in
    /// the default list: EvoPress's authors' search takes hours per cell on a CPU (see the --evo-*
    /// flags), and SliceGPT runs on the CPU backend only.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "2ssp,shortgpt,window,sleb,blockpruner"
    )]
    pub methods: Vec<Method>,
    /// Target sparsities (fractions of the decoder-block parameters), each in (0, 1).
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.375,0.5")]
    pub sparsity: Vec<f64>,
    /// Output folder: compare.md/.csv/.json, plots (.svg, .png), cells/ (finished cells, reused by
    /// a rerun), reports/ (each run's pruning_report.json), models/ (with --keep-models).
    #[arg(long)]
    pub out: PathBuf,
    /// Calibration text files [default: data/calib-sotu.jsonl].
    #[arg(long, num_args = 1..)]
    pub calib: Vec<PathBuf>,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// 2SSP's stage-1 calibration windows.
    #[arg(long, default_value_t = 32)]
    pub stage1_samples: usize,
    /// 2SSP's stage-2 calibration windows.
    #[arg(long, default_value_t = 1)]
    pub stage2_samples: usize,
    /// Calibration windows of the block-removal methods [default: each one's authors' default].
    #[arg(long)]
    pub samples: Option<usize>,
    /// EvoPress's search settings.
    #[command(flatten)]
    pub evopress: super::evopress::EvoPressArgs,
    /// Evaluation corpora; each gives a perplexity column.
    #[arg(
        long,
        num_args = 1..,
        value_delimiter = ',',
        default_value = "data/wiki.jsonl,data/news.jsonl,data/books.jsonl"
    )]
    pub eval_data: Vec<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 2048)]
    pub eval_seq_len: usize,
    /// Evaluate at most this many windows per corpus [default: all].
    #[arg(long)]
    pub eval_max_windows: Option<usize>,
    /// Zero-shot tasks ("none" for perplexity only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = tasks::DEFAULT_TASKS
    )]
    pub task: Vec<String>,
    /// Only the first N documents of each task's split (per subject for MMLU).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Folder of the task files [default: data/tasks, written by scripts/fetch-tasks.sh].
    #[arg(long)]
    pub task_data_dir: Option<PathBuf>,
    /// Keep every pruned checkpoint under OUT/models/ (default: deleted once scored).
    #[arg(long)]
    pub keep_models: bool,
    /// Recompute cells that an earlier run computed under other settings (default: refused).
    #[arg(long)]
    pub force: bool,
    /// Print compare.json instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backend and precision.
    #[command(flatten)]
    pub backend: super::device::BackendArgs,
}

/// The corpora of `args`, tokenized with the model's tokenizer and cut into windows.
fn corpora(args: &CompareArgs, tokenizer: &Tokenizer) -> Result<Vec<Corpus>> {
    args.eval_data
        .iter()
        .map(|file| {
            let corpus = crate::data::Corpus::load(std::slice::from_ref(file), tokenizer)?;
            let windows = corpus.windows(args.eval_seq_len, args.eval_max_windows)?;
            Ok(Corpus {
                name: file
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
                windows: windows.iter().map(|w| w.to_vec()).collect(),
            })
        })
        .collect()
}

/// The tasks of `args` with their documents (none for "none").
fn tasks(args: &CompareArgs) -> Result<Vec<Task>> {
    if args.task.iter().any(|t| t == "none") {
        return Ok(Vec::new());
    }
    let selection = Selection {
        split: None,
        limit: args.limit,
        num_fewshot: 0,
    };
    let data_dir = tasks::data_dir(args.task_data_dir.as_deref());
    args.task
        .iter()
        .map(|name| {
            let spec = TaskSpec::parse(name)?;
            let split = resolve_split(spec.kind, None)?;
            let docs = load_docs(&data_dir, &spec, &selection)?;
            Ok(Task { spec, split, docs })
        })
        .collect()
}

/// Runs `compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    crate::limits::check_positions(&[
        ("--seq-len", args.seq_len),
        ("--eval-seq-len", args.eval_seq_len),
    ])?;
    if let Some(bad) = args.sparsity.iter().find(|s| !(**s > 0.0 && **s < 1.0)) {
        bail!("--sparsity must be in (0, 1), got {bad}");
    }
    let mut sparsities = args.sparsity.clone();
    sparsities.sort_by(f64::total_cmp);
    sparsities.dedup();
    let mut methods = args.methods.clone();
    methods.dedup();
    if args.samples == Some(0) || args.stage1_samples == 0 || args.stage2_samples == 0 {
        bail!("--samples, --stage1-samples and --stage2-samples must be at least 1");
    }
    // Everything that can be refused is checked before any model is loaded.
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let tasks = tasks(&args)?;
    let corpora = corpora(&args, &tokenizer)?;
    let backend = args.backend.backend()?;
    let job = CompareJob {
        model: args.model.clone(),
        methods,
        sparsities,
        out: args.out.clone(),
        prune: PruneSettings {
            calib: args.calib.clone(),
            seq_len: args.seq_len,
            stage1_samples: args.stage1_samples,
            stage2_samples: args.stage2_samples,
            samples: args.samples,
            evopress: args.evopress.options(),
        },
        eval_key: serde_json::json!({
            "data": args.eval_data, "seq_len": args.eval_seq_len,
            "max_windows": args.eval_max_windows, "tasks": args.task, "limit": args.limit,
            "backend": backend.describe(),
        }),
        corpora,
        tasks,
        tokenizer,
        keep_models: args.keep_models,
        force: args.force,
    };
    let cells = job.run(&backend)?;
    if args.json {
        return print_json(&serde_json::json!({ "cells": cells }));
    }
    let mut head = vec!["method".to_string(), "sparsity".into()];
    if let Some(first) = cells.first() {
        head.extend(
            first
                .scores
                .perplexity
                .iter()
                .map(|p| format!("ppl {}", p.corpus)),
        );
        if first.mean_acc.is_some() {
            head.push("mean acc".into());
        }
    }
    head.push("prune s".into());
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|c| {
            let mut row = vec![c.method.clone(), format!("{}", c.sparsity)];
            row.extend(c.scores.perplexity.iter().map(|p| format!("{:.3}", p.ppl)));
            row.extend(c.mean_acc.map(|m| format!("{m:.4}")));
            row.push(format!("{:.1}", c.prune_seconds));
            row
        })
        .collect();
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    print_table(&head, &rows);
    eprintln!("tables and plots in {}", args.out.display());
    Ok(())
}
