//! The comparison as `compare.md`, `compare.csv` and `compare.json`.

use super::Cell;
use anyhow::Result;
use std::path::Path;

/// Column names and each cell's values, in table order.
fn columns(cells: &[Cell]) -> (Vec<String>, Vec<Vec<String>>) {
    let first = cells.first();
    let corpora: Vec<String> = first.map_or_else(Vec::new, |c| {
        c.scores
            .perplexity
            .iter()
            .map(|p| p.corpus.clone())
            .collect()
    });
    let tasks: Vec<String> = first.map_or_else(Vec::new, |c| {
        c.scores.tasks.iter().map(|t| t.task.clone()).collect()
    });
    let mut head: Vec<String> = ["method", "sparsity", "achieved", "params_main"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    head.extend(corpora.iter().map(|c| format!("ppl_{c}")));
    head.extend(tasks.iter().map(|t| format!("acc_{t}")));
    if !tasks.is_empty() {
        head.push("mean_acc".into());
    }
    head.extend(["prune_seconds".into(), "removed".into()]);
    let rows = cells
        .iter()
        .map(|c| {
            let mut row = vec![
                c.method.clone(),
                format!("{}", c.sparsity),
                format!("{:.4}", c.sparsity_achieved),
                c.scores.params_main.to_string(),
            ];
            row.extend(c.scores.perplexity.iter().map(|p| format!("{:.3}", p.ppl)));
            row.extend(c.scores.tasks.iter().map(|t| format!("{:.4}", t.acc)));
            if let Some(m) = c.mean_acc {
                row.push(format!("{m:.4}"));
            }
            row.push(format!("{:.1}", c.prune_seconds));
            row.push(c.removed.clone());
            row
        })
        .collect();
    (head, rows)
}

/// One CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The table as CSV.
pub fn csv(cells: &[Cell]) -> String {
    let (head, rows) = columns(cells);
    std::iter::once(head)
        .chain(rows)
        .map(|r| r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// The table as Markdown.
pub fn markdown(cells: &[Cell]) -> String {
    let (head, rows) = columns(cells);
    let line = |r: &[String]| format!("| {} |\n", r.join(" | ").replace('\n', " "));
    let mut s = line(&head);
    s += &line(&head.iter().map(|_| "---".to_string()).collect::<Vec<_>>());
    for r in &rows {
        s += &line(r);
    }
    s
}

/// Writes `compare.md`, `compare.csv` and `compare.json` into `out`.
pub fn write_all(out: &Path, cells: &[Cell]) -> Result<()> {
    crate::fsutil::write_atomic(&out.join("compare.md"), markdown(cells).as_bytes())?;
    crate::fsutil::write_atomic(&out.join("compare.csv"), csv(cells).as_bytes())?;
    let json = serde_json::to_string_pretty(&serde_json::json!({ "cells": cells }))?;
    crate::fsutil::write_atomic(&out.join("compare.json"), json.as_bytes())?;
    Ok(())
}
