//! Zero-shot (and few-shot) multiple-choice tasks scored natively exactly as lm-eval 0.4 scores
//! them: ARC-Easy, ARC-Challenge, HellaSwag, PIQA, WinoGrande and MMLU. Each document becomes one
//! (context, continuation) request per choice; a choice's score is the log-likelihood of its
//! continuation; `acc` takes the best score, `acc_norm` the best score per character.
//! The data are the files `scripts/fetch-tasks.sh` writes under `data/tasks/`.

mod fewshot;
pub mod prompts;
pub mod score;

pub use score::{score_docs, DocResult, TaskResult};

use anyhow::{bail, Context, Result};
use fewshot::{PyRandom, FEWSHOT_SEED};
use prompts::{mmlu_description, prompt_of, Prompt};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where `scripts/fetch-tasks.sh` puts the task files.
pub const DEFAULT_TASK_DIR: &str = "data/tasks";

/// A task family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// AI2 Reasoning Challenge, easy set (Clark et al., 2018).
    ArcEasy,
    /// AI2 Reasoning Challenge, challenge set.
    ArcChallenge,
    /// HellaSwag (Zellers et al., 2019).
    HellaSwag,
    /// Physical Interaction QA (Bisk et al., 2020).
    Piqa,
    /// WinoGrande, xl (Sakaguchi et al., 2020), with partial scoring.
    WinoGrande,
    /// MMLU (Hendrycks et al., 2021), 57 subjects.
    Mmlu,
}

impl TaskKind {
    /// Every task, in the order reports list them.
    pub const ALL: [TaskKind; 6] = [
        TaskKind::ArcEasy,
        TaskKind::ArcChallenge,
        TaskKind::HellaSwag,
        TaskKind::Piqa,
        TaskKind::WinoGrande,
        TaskKind::Mmlu,
    ];

    /// The name `--task` takes (lm-eval's).
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::ArcEasy => "arc_easy",
            TaskKind::ArcChallenge => "arc_challenge",
            TaskKind::HellaSwag => "hellaswag",
            TaskKind::Piqa => "piqa",
            TaskKind::WinoGrande => "winogrande",
            TaskKind::Mmlu => "mmlu",
        }
    }

    /// Splits with data; the first is lm-eval's evaluation split.
    pub fn splits(self) -> &'static [&'static str] {
        match self {
            TaskKind::ArcEasy | TaskKind::ArcChallenge | TaskKind::Mmlu => &["test", "validation"],
            TaskKind::HellaSwag | TaskKind::Piqa | TaskKind::WinoGrande => &["validation"],
        }
    }

    /// Whether lm-eval reports `acc_norm` for this task.
    pub fn has_acc_norm(self) -> bool {
        !matches!(self, TaskKind::WinoGrande | TaskKind::Mmlu)
    }
}

/// One `--task` entry: a task, or one MMLU subject (`mmlu_anatomy`, as lm-eval names them).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// The task.
    pub kind: TaskKind,
    /// For MMLU: only this subject.
    pub subject: Option<String>,
}

impl TaskSpec {
    /// Parses a task name.
    pub fn parse(name: &str) -> Result<Self> {
        let name = name.trim();
        if let Some(kind) = TaskKind::ALL.into_iter().find(|k| k.name() == name) {
            return Ok(Self {
                kind,
                subject: None,
            });
        }
        if let Some(subject) = name.strip_prefix("mmlu_").filter(|s| !s.is_empty()) {
            return Ok(Self {
                kind: TaskKind::Mmlu,
                subject: Some(subject.to_string()),
            });
        }
        let known: Vec<&str> = TaskKind::ALL.iter().map(|k| k.name()).collect();
        bail!(
            "unknown task '{name}' (known: {}, or mmlu_<subject>)",
            known.join(", ")
        )
    }

    /// The name reports use.
    pub fn name(&self) -> String {
        match &self.subject {
            Some(s) => format!("mmlu_{s}"),
            None => self.kind.name().to_string(),
        }
    }
}

/// One (context, continuation) pair whose log-likelihood is scored.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Everything before the answer.
    pub context: String,
    /// The answer as scored (with its leading space).
    pub continuation: String,
}

/// One document: a request per choice.
#[derive(Clone, Debug)]
pub struct Doc {
    /// Position in the split (for MMLU: among its subject's rows).
    pub index: usize,
    /// MMLU subject.
    pub subject: Option<String>,
    /// One request per choice.
    pub requests: Vec<Request>,
    /// The choices as lm-eval's `doc_to_choice` returns them (`acc_norm` divides by their length).
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
}

/// Which documents to build.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Split (`None`: the task's evaluation split).
    pub split: Option<String>,
    /// First N documents of the split (per subject for MMLU, as lm-eval's `--limit`).
    pub limit: Option<usize>,
    /// Examples before each question.
    pub num_fewshot: usize,
}

/// Rows of `data_dir/<task>/<split>.jsonl`.
fn read_rows(data_dir: &Path, kind: TaskKind, split: &str) -> Result<Vec<Value>> {
    let path = data_dir.join(kind.name()).join(format!("{split}.jsonl"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (run scripts/fetch-tasks.sh to fetch the task data)",
            path.display()
        )
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {} is not JSON", path.display(), i + 1))
        })
        .collect()
}

/// The split to evaluate, checked against what the task has.
pub fn resolve_split(kind: TaskKind, split: Option<&str>) -> Result<&'static str> {
    let splits = kind.splits();
    match split {
        None => Ok(splits[0]),
        Some(s) => splits.iter().copied().find(|x| *x == s).ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no '{s}' split (it has: {})",
                kind.name(),
                splits.join(", ")
            )
        }),
    }
}

/// The documents of `spec` as lm-eval builds its requests (few-shot examples drawn as lm-eval
/// draws them with its default seed).
pub fn load_docs(data_dir: &Path, spec: &TaskSpec, selection: &Selection) -> Result<Vec<Doc>> {
    let kind = spec.kind;
    let split = resolve_split(kind, selection.split.as_deref())?;
    if selection.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let rows = read_rows(data_dir, kind, split)?;
    if kind == TaskKind::Mmlu {
        return mmlu_docs(data_dir, spec, &rows, selection);
    }
    let n = selection.limit.map_or(rows.len(), |l| l.min(rows.len()));
    // The few-shot pool: the validation split (the data carry no training split); the evaluated
    // document is left out when the pool is the split it comes from.
    let k = selection.num_fewshot;
    let (pool_rows, exclude_self) = match (k, split) {
        (0, _) => (Vec::new(), false),
        (_, "validation") => (rows.clone(), true),
        _ => (read_rows(data_dir, kind, "validation")?, false),
    };
    let pool: Vec<Prompt> = (0..pool_rows.len())
        .map(|i| prompt_of(kind, &pool_rows, i))
        .collect::<Result<_>>()?;
    let needed = k + exclude_self as usize;
    if needed > pool.len() {
        bail!(
            "--num-fewshot {k} needs {needed} examples, the pool has {}",
            pool.len()
        );
    }
    let mut rng = PyRandom::new(FEWSHOT_SEED);
    (0..n)
        .map(|i| {
            let prompt = prompt_of(kind, &rows, i)?;
            let shots: Vec<&Prompt> = match k {
                0 => Vec::new(),
                _ => rng
                    .sample(pool.len(), needed)
                    .into_iter()
                    .filter(|&j| !(exclude_self && j == i))
                    .take(k)
                    .map(|j| &pool[j])
                    .collect(),
            };
            Ok(build_doc(i, None, "", &shots, prompt))
        })
        .collect()
}

/// MMLU: the subjects in name order, each with its own description and its first `limit` rows;
/// few-shot examples are the first K rows of the subject's dev split (lm-eval's `first_n`).
fn mmlu_docs(
    data_dir: &Path,
    spec: &TaskSpec,
    rows: &[Value],
    selection: &Selection,
) -> Result<Vec<Doc>> {
    let k = selection.num_fewshot;
    if k > 5 {
        bail!("MMLU's few-shot examples are the 5 dev questions of each subject: --num-fewshot {k} is more than that");
    }
    let dev = if k > 0 {
        read_rows(data_dir, TaskKind::Mmlu, "dev")?
    } else {
        Vec::new()
    };
    let subject_of = |row: &Value| row["subject"].as_str().unwrap_or_default().to_string();
    let mut subjects: Vec<String> = rows.iter().map(subject_of).collect();
    subjects.sort();
    subjects.dedup();
    if let Some(wanted) = &spec.subject {
        if !subjects.contains(wanted) {
            bail!(
                "unknown MMLU subject '{wanted}' (e.g. {})",
                subjects[..3.min(subjects.len())].join(", ")
            );
        }
        subjects.retain(|s| s == wanted);
    }
    let mut docs = Vec::new();
    for subject in &subjects {
        let description = mmlu_description(subject);
        let mine: Vec<Value> = rows
            .iter()
            .filter(|r| subject_of(r) == *subject)
            .cloned()
            .collect();
        let shots_rows: Vec<Value> = dev
            .iter()
            .filter(|r| subject_of(r) == *subject)
            .take(k)
            .cloned()
            .collect();
        if shots_rows.len() < k {
            bail!(
                "MMLU {subject}: only {} dev questions for --num-fewshot {k}",
                shots_rows.len()
            );
        }
        let shots: Vec<Prompt> = (0..shots_rows.len())
            .map(|i| prompt_of(TaskKind::Mmlu, &shots_rows, i))
            .collect::<Result<_>>()?;
        let shots: Vec<&Prompt> = shots.iter().collect();
        let n = selection.limit.map_or(mine.len(), |l| l.min(mine.len()));
        for i in 0..n {
            let prompt = prompt_of(TaskKind::Mmlu, &mine, i)?;
            docs.push(build_doc(i, Some(subject), &description, &shots, prompt));
        }
    }
    Ok(docs)
}

/// The requests of one document: description, few-shot examples, then the question (lm-eval's
/// `fewshot_context` and `construct_requests`; WinoGrande puts each choice into the context).
fn build_doc(
    index: usize,
    subject: Option<&String>,
    description: &str,
    shots: &[&Prompt],
    prompt: Prompt,
) -> Doc {
    let mut prefix = description.to_string();
    for shot in shots {
        let example = match &shot.target {
            Some(target) => format!("{} {target}", shot.choices[shot.gold]),
            None => format!("{} {}", shot.text, shot.choices[shot.gold]),
        };
        prefix.push_str(&example);
        prefix.push_str("\n\n");
    }
    let requests = match &prompt.target {
        Some(target) => prompt
            .choices
            .iter()
            .map(|c| Request {
                context: format!("{prefix}{c}"),
                continuation: format!(" {target}"),
            })
            .collect(),
        None => {
            let context = format!("{prefix}{}", prompt.text);
            prompt
                .choices
                .iter()
                .map(|c| Request {
                    context: context.clone(),
                    continuation: format!(" {c}"),
                })
                .collect()
        }
    };
    Doc {
        index,
        subject: subject.cloned(),
        requests,
        choices: prompt.choices,
        gold: prompt.gold,
    }
}

/// The paper's six tasks, as `--task` spells them.
pub const DEFAULT_TASKS: &str = "arc_easy,arc_challenge,hellaswag,piqa,winogrande,mmlu";

/// The task data folder: `--data-dir`, else [`DEFAULT_TASK_DIR`].
pub fn data_dir(arg: Option<&Path>) -> PathBuf {
    arg.map_or_else(|| PathBuf::from(DEFAULT_TASK_DIR), Path::to_path_buf)
}
