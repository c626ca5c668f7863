//! Perplexity with the reference protocol: mean next-token NLL per window, token-weighted, exp.

use crate::model::{Model, Workspace};
use crate::progress;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

/// Perplexity of one dataset.
#[derive(Clone, Debug, Serialize)]
pub struct Perplexity {
    /// Windows evaluated.
    pub windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Predicted positions (windows × (seq_len − 1)).
    pub predicted_tokens: usize,
    /// Token-weighted mean NLL (nats).
    pub mean_nll: f64,
    /// exp(mean_nll).
    pub ppl: f64,
    /// Wall time of the forward passes.
    pub seconds: f64,
    /// Forward throughput (window tokens per second).
    pub tokens_per_second: f64,
}

/// Evaluates `windows` (each `seq_len` ids) on the CPU and returns the perplexity, showing progress on stderr.
pub fn perplexity(model: &Model, windows: &[&[u32]], label: &str) -> Result<Perplexity> {
    let mut ws = Workspace::default();
    perplexity_with(windows, label, |w| model.window_nll(w, &mut ws))
}

/// Perplexity from any backend: `window_nll` returns a window's summed NLL and predicted-token count.
pub fn perplexity_with(
    windows: &[&[u32]],
    label: &str,
    mut window_nll: impl FnMut(&[u32]) -> Result<(f64, usize)>,
) -> Result<Perplexity> {
    let seq_len = windows.first().map_or(0, |w| w.len());
    let bar = progress::bar(windows.len() as u64, &format!("eval {label}"));
    let start = Instant::now();
    let (mut total, mut count) = (0f64, 0usize);
    for w in windows {
        let (nll, n) = window_nll(w)?;
        total += nll;
        count += n;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let mean_nll = total / count.max(1) as f64;
    Ok(Perplexity {
        windows: windows.len(),
        seq_len,
        predicted_tokens: count,
        mean_nll,
        ppl: mean_nll.exp(),
        seconds,
        tokens_per_second: (windows.len() * seq_len) as f64 / seconds.max(1e-9),
    })
}
