//! Zero-shot tasks against lm-eval 0.4.13 run with HF transformers on the same models and items
//! (fixtures by tools/lmeval_reference.py): the exact request strings, the token split of each
//! pair, every log-likelihood, and the accuracies; plus the refusals of `tasks`.
//! The task files come from scripts/fetch-tasks.sh (scripts/test.sh runs it).

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use twossp_engine::backend::Backend;
use twossp_engine::engine::{Engine, EngineJob};
use twossp_engine::eval::tasks::score::encode_pair;
use twossp_engine::eval::tasks::{load_docs, score_docs, Doc, Selection, TaskResult, TaskSpec};
use twossp_engine::tokenizer::Tokenizer;
use twossp_engine::weights::Precision;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn task_dir() -> PathBuf {
    let dir = repo().join("data/tasks");
    assert!(
        dir.join("mmlu/test.jsonl").exists(),
        "{} missing: run scripts/fetch-tasks.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// Scores already-built documents of one task on the CPU in f32.
struct Score<'a> {
    tokenizer: &'a Tokenizer,
    spec: &'a TaskSpec,
    docs: &'a [Doc],
    shots: usize,
}

impl EngineJob for Score<'_> {
    type Output = TaskResult;
    fn run<E: Engine>(self, model: E) -> anyhow::Result<TaskResult> {
        score_docs(
            &model,
            self.tokenizer,
            self.spec,
            "-",
            self.shots,
            self.docs,
        )
    }
}

/// The reference documents of one fixture task, flattened: (subject, reference doc).
fn reference_docs(task: &str, entry: &Value) -> Vec<(Option<String>, Value)> {
    if task != "mmlu" {
        return entry["docs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (None, d.clone()))
            .collect();
    }
    let mut out = Vec::new();
    for (subject, s) in entry["subjects"].as_object().unwrap() {
        // Compact fixtures hold `gold` and `ll` as lists per subject.
        let docs: Vec<Value> = match s.get("docs") {
            Some(d) => d.as_array().unwrap().clone(),
            None => (0..s["n"].as_u64().unwrap() as usize)
                .map(|i| serde_json::json!({"index": i, "gold": s["gold"][i], "ll": s["ll"][i]}))
                .collect(),
        };
        out.extend(docs.into_iter().map(|d| (Some(subject.clone()), d)));
    }
    out
}

/// Checks the engine against one lm-eval fixture; `exact`: every document's outcome must agree,
/// else each task's correct count may differ by one item. `mmlu_subjects` caps the subjects run.
fn check_fixture(fixture: &str, model: &Path, ll_tol: f64, exact: bool, mmlu_subjects: usize) {
    let reference = common::reference_json_file(&common::fixtures().join("tasks").join(fixture));
    let shots = reference["num_fewshot"].as_u64().unwrap_or(0) as usize;
    let tokenizer = Tokenizer::from_dir(model).unwrap();
    let backend = Backend::Cpu(Some(Precision::F32));
    let mut failures = Vec::new();
    for (task, entry) in reference["tasks"].as_object().unwrap() {
        let mut by_subject: Vec<(Option<String>, Vec<Value>)> = Vec::new();
        for (subject, doc) in reference_docs(task, entry) {
            match by_subject.last_mut() {
                Some((s, docs)) if *s == subject => docs.push(doc),
                _ => by_subject.push((subject, vec![doc])),
            }
        }
        by_subject.truncate(if task == "mmlu" { mmlu_subjects } else { 1 });
        let (mut ours_correct, mut ref_correct) = ([0usize; 2], [0usize; 2]);
        let mut max_dll = 0f64;
        for (subject, ref_docs) in &by_subject {
            let spec = TaskSpec::parse(
                &subject
                    .as_ref()
                    .map_or(task.clone(), |s| format!("mmlu_{s}")),
            )
            .unwrap();
            let selection = Selection {
                split: None,
                limit: Some(ref_docs.len()),
                num_fewshot: shots,
            };
            let docs = load_docs(&task_dir(), &spec, &selection).unwrap();
            assert_eq!(docs.len(), ref_docs.len(), "{fixture} {}", spec.name());
            for (doc, want) in docs.iter().zip(ref_docs) {
                let label = format!("{fixture} {} doc {}", spec.name(), doc.index);
                assert_eq!(doc.index as u64, want["index"].as_u64().unwrap(), "{label}");
                assert_eq!(
                    doc.gold as u64,
                    want["gold"].as_u64().unwrap(),
                    "{label} gold"
                );
                if let Some(context) = want["context"].as_str() {
                    let continuations: Vec<&str> = want["continuations"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap())
                        .collect();
                    for (r, c) in doc.requests.iter().zip(&continuations) {
                        assert_eq!(
                            (r.context.as_str(), r.continuation.as_str()),
                            (context, *c),
                            "{label}"
                        );
                    }
                }
                if let Some(contexts) = want["contexts"].as_array() {
                    for (r, c) in doc.requests.iter().zip(contexts) {
                        assert_eq!(r.context, c.as_str().unwrap(), "{label}");
                        assert_eq!(
                            r.continuation,
                            want["continuation"].as_str().unwrap(),
                            "{label}"
                        );
                    }
                }
                if let Some(n_tokens) = want["n_tokens"].as_array() {
                    for (r, n) in doc.requests.iter().zip(n_tokens) {
                        let (ctx, cont) = encode_pair(&tokenizer, r).unwrap();
                        let n = (
                            n[0].as_u64().unwrap() as usize,
                            n[1].as_u64().unwrap() as usize,
                        );
                        assert_eq!((ctx.len(), cont.len()), n, "{label} token split");
                    }
                }
            }
            let job = Score {
                tokenizer: &tokenizer,
                spec: &spec,
                docs: &docs,
                shots,
            };
            let result = backend.with_model(model, job).unwrap();
            for ((doc, got), want) in docs.iter().zip(&result.docs).zip(ref_docs) {
                let ll: Vec<f64> = serde_json::from_value(want["ll"].clone()).unwrap();
                for (g, w) in got.ll.iter().zip(&ll) {
                    max_dll = max_dll.max((g - w).abs());
                }
                let ref_acc = argmax(&ll) == got.gold;
                let normed: Vec<f64> = ll
                    .iter()
                    .zip(&doc.choices)
                    .map(|(l, c)| l / c.chars().count() as f64)
                    .collect();
                let ref_norm = argmax(&normed) == got.gold;
                if let Some(a) = want.get("acc").and_then(Value::as_u64) {
                    assert_eq!(
                        ref_acc,
                        a == 1,
                        "{fixture} {}: the fixture's acc is its lls' argmax",
                        spec.name()
                    );
                }
                ours_correct[0] += got.acc as usize;
                ours_correct[1] += got.acc_norm as usize;
                ref_correct[0] += ref_acc as usize;
                ref_correct[1] += ref_norm as usize;
                if exact && (got.acc != ref_acc || got.acc_norm != ref_norm) {
                    failures.push(format!(
                        "{fixture} {} doc {}: outcome differs",
                        spec.name(),
                        got.index
                    ));
                }
            }
        }
        println!(
            "{fixture:<34} {task:<14} correct {:>3} vs lm-eval {:>3} (norm {:>3} vs {:>3}), max |dll| {max_dll:.2e}",
            ours_correct[0], ref_correct[0], ours_correct[1], ref_correct[1]
        );
        if max_dll > ll_tol {
            failures.push(format!(
                "{fixture} {task}: max |dll| {max_dll:e} > {ll_tol:e}"
            ));
        }
        for k in 0..2 {
            if ours_correct[k].abs_diff(ref_correct[k]) > 1 {
                failures.push(format!(
                    "{fixture} {task}: {ours_correct:?} correct vs lm-eval {ref_correct:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn tiny_models_score_exactly_as_lm_eval() {
    check_fixture(
        "llama.json",
        &common::fixtures().join("llama"),
        5e-4,
        true,
        2,
    );
    check_fixture(
        "gemma3.json",
        &common::fixtures().join("gemma3"),
        5e-4,
        true,
        2,
    );
}

#[test]
fn few_shot_contexts_and_scores_match_lm_eval() {
    check_fixture(
        "llama-3shot.json",
        &common::fixtures().join("llama"),
        5e-4,
        true,
        2,
    );
}

#[test]
fn smollm2_matches_lm_eval_within_one_item() {
    let model = repo().join("models/SmolLM2-135M-Instruct.Q4_1");
    assert!(
        model.join("config.json").exists(),
        "run scripts/fetch-model.sh all (scripts/test.sh does)"
    );
    check_fixture("smollm2-135m-instruct-q4_1.json", &model, 2e-3, false, 3);
}

/// Runs `tasks` on the llama fixture with `args`: (exit code, stderr).
fn tasks_cli(args: &[&str]) -> (i32, String) {
    let model = common::fixtures().join("llama");
    let out = Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .current_dir(repo())
        .args(["tasks", "--model", model.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tasks_refuses_bad_requests_with_one_line() {
    let _ = task_dir();
    let cases: [(&[&str], &str); 6] = [
        (&["--task", "arc_easy,boolq"], "unknown task 'boolq'"),
        (
            &["--task", "hellaswag", "--split", "test"],
            "hellaswag has no 'test' split",
        ),
        (
            &["--task", "piqa", "--limit", "0"],
            "--limit must be at least 1",
        ),
        (
            &["--task", "mmlu_astrology"],
            "unknown MMLU subject 'astrology'",
        ),
        (
            &["--task", "mmlu_anatomy", "--num-fewshot", "6"],
            "--num-fewshot 6",
        ),
        (
            &["--task", "arc_easy", "--data-dir", "/nonexistent"],
            "scripts/fetch-tasks.sh",
        ),
    ];
    for (args, message) in cases {
        let (code, err) = tasks_cli(args);
        assert_ne!(code, 0, "{args:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let (code, err) = tasks_cli(&["--task", "winogrande", "--limit", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
}
