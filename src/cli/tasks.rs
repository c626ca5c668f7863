//! `tasks`: zero-shot (or few-shot) multiple-choice accuracy as lm-eval 0.4 computes it.

use super::output::{print_json, print_table};
use crate::engine::{Engine, EngineJob};
use crate::eval::tasks::{
    self, load_docs, resolve_split, score_docs, Doc, Selection, TaskResult, TaskSpec,
};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `tasks`.
#[derive(Args, Debug)]
pub struct TasksArgs {
    /// HF checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Comma-separated tasks: arc_easy, arc_challenge, hellaswag, piqa, winogrande, mmlu (or one
    /// subject, mmlu_<subject>).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = tasks::DEFAULT_TASKS
    )]
    pub task: Vec<String>,
    /// Split [default: lm-eval's: test for ARC and MMLU, validation for the others].
    #[arg(long)]
    pub split: Option<String>,
    /// Only the first N documents of the split (per subject for MMLU, as lm-eval's --limit).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Examples before each question, drawn as lm-eval draws them (seed 1234; MMLU: the subject's
    /// dev questions; the others: the validation split, leaving the question itself out).
    #[arg(long, default_value_t = 0)]
    pub num_fewshot: usize,
    /// Folder of the task files [default: data/tasks, written by scripts/fetch-tasks.sh].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// With --json: every document's log-likelihoods and outcome too.
    #[arg(long)]
    pub log_samples: bool,
    /// Backend and precision.
    #[command(flatten)]
    pub backend: super::device::BackendArgs,
}

/// Every task's documents, scored on one loaded model.
struct Score<'a> {
    tokenizer: &'a Tokenizer,
    tasks: &'a [(TaskSpec, &'static str, Vec<Doc>)],
    num_fewshot: usize,
}

impl EngineJob for Score<'_> {
    type Output = Vec<TaskResult>;

    fn run<E: Engine>(self, model: E) -> Result<Vec<TaskResult>> {
        self.tasks
            .iter()
            .map(|(spec, split, docs)| {
                score_docs(&model, self.tokenizer, spec, split, self.num_fewshot, docs)
            })
            .collect()
    }
}

/// "0.4375 ± 0.0212".
fn with_stderr(value: Option<f64>, stderr: Option<f64>) -> String {
    match (value, stderr) {
        (Some(v), Some(se)) => format!("{v:.4} ± {se:.4}"),
        _ => "-".into(),
    }
}

/// Runs `tasks`.
pub fn run(args: TasksArgs) -> Result<()> {
    let specs: Vec<TaskSpec> = args
        .task
        .iter()
        .map(|t| TaskSpec::parse(t))
        .collect::<Result<_>>()?;
    let selection = Selection {
        split: args.split.clone(),
        limit: args.limit,
        num_fewshot: args.num_fewshot,
    };
    let data_dir = tasks::data_dir(args.data_dir.as_deref());
    // Everything that can be refused is checked before the model is loaded.
    let mut work = Vec::new();
    for spec in specs {
        let split = resolve_split(spec.kind, args.split.as_deref())?;
        let docs = load_docs(&data_dir, &spec, &selection)?;
        work.push((spec, split, docs));
    }
    let backend = args.backend.backend()?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let job = Score {
        tokenizer: &tokenizer,
        tasks: &work,
        num_fewshot: args.num_fewshot,
    };
    let mut results = backend.with_model(&args.model, job)?;
    if args.json {
        if !args.log_samples {
            results.iter_mut().for_each(|r| r.docs.clear());
        }
        return print_json(&serde_json::json!({
            "model": args.model, "backend": backend.describe(), "tasks": results,
        }));
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.task.clone(),
                r.split.clone(),
                r.num_fewshot.to_string(),
                r.n.to_string(),
                with_stderr(Some(r.acc), Some(r.acc_stderr)),
                with_stderr(r.acc_norm, r.acc_norm_stderr),
            ]
        })
        .collect();
    print_table(
        &["task", "split", "shots", "docs", "acc", "acc_norm"],
        &rows,
    );
    Ok(())
}
