//! What `compare` measures on one model: perplexity on each evaluation corpus and the zero-shot
//! tasks, on any backend.

use crate::engine::{Engine, EngineJob};
use crate::eval::tasks::{score_docs, Doc, TaskSpec};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// An evaluation corpus, tokenized once and cut into windows.
pub struct Corpus {
    /// Name in tables (the file stem).
    pub name: String,
    /// Windows of token ids.
    pub windows: Vec<Vec<u32>>,
}

/// A task with its split and documents.
pub struct Task {
    /// What to score.
    pub spec: TaskSpec,
    /// Split the documents come from.
    pub split: &'static str,
    /// Documents.
    pub docs: Vec<Doc>,
}

/// Perplexity on one corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusScore {
    /// Corpus name.
    pub corpus: String,
    /// Perplexity.
    pub ppl: f64,
    /// Windows evaluated.
    pub windows: usize,
}

/// Accuracy on one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    /// Task name.
    pub task: String,
    /// Accuracy (what the paper and the authors' code report).
    pub acc: f64,
    /// Length-normalised accuracy where lm-eval reports it.
    pub acc_norm: Option<f64>,
    /// Documents scored.
    pub n: usize,
}

/// What one model scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Perplexity per corpus.
    pub perplexity: Vec<CorpusScore>,
    /// Accuracy per task.
    pub tasks: Vec<TaskScore>,
    /// Decoder-block parameters of the evaluated model.
    pub params_main: u64,
    /// All its parameters.
    pub params_total: u64,
}

/// Scores a loaded model on every corpus and task.
pub struct Evaluate<'a> {
    /// Evaluation corpora.
    pub corpora: &'a [Corpus],
    /// Tasks.
    pub tasks: &'a [Task],
    /// The model's tokenizer.
    pub tokenizer: &'a Tokenizer,
}

impl EngineJob for Evaluate<'_> {
    type Output = Scores;

    fn run<E: Engine>(self, model: E) -> Result<Scores> {
        let mut perplexity = Vec::new();
        for corpus in self.corpora {
            let windows: Vec<&[u32]> = corpus.windows.iter().map(Vec::as_slice).collect();
            let result = crate::eval::perplexity::perplexity(&model, &windows, &corpus.name)?;
            perplexity.push(CorpusScore {
                corpus: corpus.name.clone(),
                ppl: result.ppl,
                windows: result.windows,
            });
        }
        let mut tasks = Vec::new();
        for task in self.tasks {
            let r = score_docs(
                &model,
                self.tokenizer,
                &task.spec,
                task.split,
                0,
                &task.docs,
            )?;
            tasks.push(TaskScore {
                task: r.task,
                acc: r.acc,
                acc_norm: r.acc_norm,
                n: r.n,
            });
        }
        Ok(Scores {
            perplexity,
            tasks,
            params_main: model.params_main(),
            params_total: model.params_total(),
        })
    }
}
