//! Scoring documents on any [`Engine`]: lm-eval's tokenization of a (context, continuation) pair,
//! its left truncation, the continuation's log-likelihood, and `acc` / `acc_norm` with their
//! standard errors. Requests run through one KV cache: each reuses the longest prefix the cache
//! already holds, so a question's context is computed once for all its choices.

use super::{Doc, Request, TaskSpec};
use crate::engine::Engine;
use crate::progress;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::Serialize;

/// One scored document.
#[derive(Clone, Debug, Serialize)]
pub struct DocResult {
    /// Position in the split (per subject for MMLU).
    pub index: usize,
    /// MMLU subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Log-likelihood of each choice's continuation.
    pub ll: Vec<f64>,
    /// Index of the right choice.
    pub gold: usize,
    /// The best log-likelihood is the gold choice's.
    pub acc: bool,
    /// The best log-likelihood per character is the gold choice's.
    pub acc_norm: bool,
}

/// A task's scores.
#[derive(Clone, Debug, Serialize)]
pub struct TaskResult {
    /// Task name (`mmlu_<subject>` for one subject).
    pub task: String,
    /// Split evaluated.
    pub split: String,
    /// Few-shot examples per question.
    pub num_fewshot: usize,
    /// Documents scored.
    pub n: usize,
    /// Accuracy.
    pub acc: f64,
    /// Its standard error (sample standard deviation / √n, as lm-eval).
    pub acc_stderr: f64,
    /// Length-normalised accuracy (tasks where lm-eval reports it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    /// Its standard error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    /// MMLU: accuracy and size per subject (the task's accuracy is their size-weighted mean).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<SubjectResult>,
    /// Per document.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub docs: Vec<DocResult>,
}

/// One MMLU subject's accuracy.
#[derive(Clone, Debug, Serialize)]
pub struct SubjectResult {
    /// Subject.
    pub subject: String,
    /// Documents.
    pub n: usize,
    /// Accuracy.
    pub acc: f64,
}

/// Context and continuation tokens as lm-eval's HFLM splits a pair: trailing whitespace of the
/// context moves to the continuation, the pair is encoded whole and the continuation is what
/// follows the context's own encoding (special tokens as the tokenizer's post-processor adds them).
pub fn encode_pair(tokenizer: &Tokenizer, request: &Request) -> Result<(Vec<u32>, Vec<u32>)> {
    let context = request.context.trim_end();
    if context.is_empty() {
        bail!("a request with an empty context (none of the supported tasks makes one)");
    }
    let moved = &request.context[context.len()..];
    let whole =
        tokenizer.encode_with_special(&format!("{context}{moved}{}", request.continuation))?;
    let context_ids = tokenizer.encode_with_special(context)?;
    if whole.len() <= context_ids.len() {
        bail!(
            "the continuation {:?} encodes to no tokens",
            request.continuation
        );
    }
    let continuation_ids = whole[context_ids.len()..].to_vec();
    Ok((context_ids, continuation_ids))
}

/// The model input of a pair (the last `max_length + 1` tokens, the final one dropped) and the
/// row from which its continuation is scored.
fn model_input(
    context: &[u32],
    continuation: &[u32],
    max_length: usize,
) -> Result<(Vec<u32>, usize)> {
    if continuation.len() > max_length {
        bail!(
            "a continuation of {} tokens exceeds the model's {max_length} positions",
            continuation.len()
        );
    }
    let all: Vec<u32> = context.iter().chain(continuation).copied().collect();
    let start = all.len().saturating_sub(max_length + 1);
    let input = all[start..all.len() - 1].to_vec();
    let first_row = input.len() - continuation.len();
    Ok((input, first_row))
}

/// The positions a model of `config` takes, as lm-eval reads them (`n_positions`,
/// `max_position_embeddings`, `n_ctx`; 2048 when none is given).
pub fn max_length(config: &crate::config::ModelConfig) -> usize {
    ["n_positions", "max_position_embeddings", "n_ctx"]
        .iter()
        .find_map(|k| config.raw[*k].as_u64())
        .map_or(2048, |v| v as usize)
}

/// Index of the largest value (the first on ties, as numpy's argmax).
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Mean and its standard error (sample standard deviation / √n).
fn mean_stderr(values: &[bool]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().filter(|&&v| v).count() as f64 / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values
        .iter()
        .map(|&v| (v as u8 as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Scores every document of one task on `model`.
pub fn score_docs<E: Engine>(
    model: &E,
    tokenizer: &Tokenizer,
    spec: &TaskSpec,
    split: &str,
    num_fewshot: usize,
    docs: &[Doc],
) -> Result<TaskResult> {
    let limit = max_length(model.config());
    let mut inputs = Vec::new();
    for doc in docs {
        let mut per_choice = Vec::new();
        for request in &doc.requests {
            let (context, continuation) = encode_pair(tokenizer, request)?;
            let (input, first_row) = model_input(&context, &continuation, limit)?;
            per_choice.push((input, first_row, continuation));
        }
        inputs.push(per_choice);
    }
    let longest = inputs
        .iter()
        .flatten()
        .map(|(i, _, _)| i.len())
        .max()
        .unwrap_or(1);
    let mut ws = model.workspace(longest, longest)?;
    let mut cache = model.kv_cache(longest)?;
    let mut cached: Vec<u32> = Vec::new();
    let n_requests = inputs.iter().map(Vec::len).sum::<usize>();
    let bar = progress::bar(n_requests as u64, &spec.name());
    let mut results = Vec::with_capacity(docs.len());
    for (doc, per_choice) in docs.iter().zip(&inputs) {
        let mut ll = Vec::with_capacity(per_choice.len());
        for (input, first_row, continuation) in per_choice {
            // Reuse the cached prefix, but recompute from the first scored row on.
            let shared = cached.iter().zip(input).take_while(|(a, b)| a == b).count();
            let keep = shared.min(*first_row);
            model.rewind_kv_cache(&mut cache, keep);
            model.forward_cached_hidden(&mut ws, &input[keep..], &mut cache)?;
            let nlls = model.target_nlls_from_hidden(&mut ws, first_row - keep, continuation)?;
            ll.push(-nlls.iter().map(|&v| v as f64).sum::<f64>());
            cached.clone_from(input);
            bar.inc(1);
        }
        let pred = argmax(ll.iter().copied());
        let pred_norm = argmax(
            ll.iter()
                .zip(&doc.choices)
                .map(|(l, c)| l / c.chars().count().max(1) as f64),
        );
        results.push(DocResult {
            index: doc.index,
            subject: doc.subject.clone(),
            acc: pred == doc.gold,
            acc_norm: pred_norm == doc.gold,
            ll,
            gold: doc.gold,
        });
    }
    bar.finish_and_clear();
    Ok(summarise(spec, split, num_fewshot, results))
}

/// Accuracies of scored documents (MMLU: per subject too).
fn summarise(spec: &TaskSpec, split: &str, num_fewshot: usize, docs: Vec<DocResult>) -> TaskResult {
    let acc: Vec<bool> = docs.iter().map(|d| d.acc).collect();
    let norm: Vec<bool> = docs.iter().map(|d| d.acc_norm).collect();
    let (acc, acc_stderr) = mean_stderr(&acc);
    let (acc_norm, acc_norm_stderr) = mean_stderr(&norm);
    let with_norm = spec.kind.has_acc_norm();
    let mut subjects: Vec<SubjectResult> = Vec::new();
    for doc in &docs {
        let Some(subject) = &doc.subject else {
            continue;
        };
        if subjects.last().is_none_or(|s| &s.subject != subject) {
            subjects.push(SubjectResult {
                subject: subject.clone(),
                n: 0,
                acc: 0.0,
            });
        }
        let last = subjects.last_mut().expect("pushed above");
        last.acc = (last.acc * last.n as f64 + doc.acc as u8 as f64) / (last.n + 1) as f64;
        last.n += 1;
    }
    TaskResult {
        task: spec.name(),
        split: split.to_string(),
        num_fewshot,
        n: docs.len(),
        acc,
        acc_stderr,
        acc_norm: with_norm.then_some(acc_norm),
        acc_norm_stderr: with_norm.then_some(acc_norm_stderr),
        subjects,
        docs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_last_positions_and_scores_the_continuation() {
        let (input, first) = model_input(&[1, 2, 3, 4, 5], &[6, 7], 4).unwrap();
        // lm-eval: (ctx + cont)[-(4 + 1):][:-1] = [3, 4, 5, 6]; the continuation [6, 7] is scored
        // from rows 2 and 3 (tokens 5 and 6 predict 6 and 7).
        assert_eq!(input, [3, 4, 5, 6]);
        assert_eq!(first, 2);
        let (input, first) = model_input(&[1, 2], &[3], 10).unwrap();
        assert_eq!((input, first), (vec![1, 2], 1));
        assert!(model_input(&[1], &[2, 3, 4], 2).is_err());
    }

    #[test]
    fn ties_go_to_the_first_choice_and_stderr_is_the_sample_one() {
        assert_eq!(argmax([1.0, 3.0, 3.0].into_iter()), 1);
        let (m, se) = mean_stderr(&[true, false, true, true]);
        assert_eq!(m, 0.75);
        assert!((se - (0.25f64 / 4.0).sqrt()).abs() < 1e-12);
    }
}
