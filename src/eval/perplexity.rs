//! Perplexity with the reference protocol: mean next-token NLL per window, token-weighted, exp.

use crate::engine::Engine;
use crate::{parallel, progress};
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

/// Perplexity of `model` (any backend) over `windows`, showing progress on stderr. Windows run side
/// by side where the backend gains from it ([`Engine::concurrent_passes`]); their NLLs are summed
/// in window order, so the result is what one window after another gives, bit for bit.
pub fn perplexity<E: Engine>(model: &E, windows: &[&[u32]], label: &str) -> Result<Perplexity> {
    let seq_len = windows.first().map_or(0, |w| w.len());
    let longest = windows.iter().map(|w| w.len()).max().unwrap_or(1);
    let passes = model.concurrent_passes(windows.len(), longest);
    let mut workspaces = (0..passes)
        .map(|_| model.workspace(longest, longest))
        .collect::<Result<Vec<_>>>()?;
    let bar = progress::bar(windows.len() as u64, &format!("eval {label}"));
    let start = Instant::now();
    let per_window = parallel::map_tasks(&mut workspaces, windows.len(), |ws, i| {
        let nll = model.window_nll(ws, windows[i]);
        bar.inc(1);
        nll
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let (mut total, mut count) = (0f64, 0usize);
    for (nll, n) in per_window {
        total += nll;
        count += n;
    }
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
