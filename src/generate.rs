//! Greedy text generation with the KV cache.

use crate::engine::Engine;
use anyhow::Result;
use std::time::Instant;

/// Tokens produced by [`greedy`] and how long it took.
pub struct Generation {
    /// New token ids (the prompt excluded).
    pub tokens: Vec<u32>,
    /// Seconds from start to the first new token (prefill included).
    pub time_to_first_token: f64,
    /// Seconds spent producing the tokens after the first.
    pub decode_seconds: f64,
}

/// Index of the largest logit (the lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding of up to `max_new` tokens after `prompt`, stopping early at any of `stop` ids.
pub fn greedy<E: Engine>(
    model: &E,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
) -> Result<Generation> {
    let positions = prompt.len() + max_new;
    let mut cache = model.kv_cache(positions)?;
    let mut ws = model.workspace(prompt.len().max(1), positions)?;
    greedy_with(prompt, max_new, stop, |ids| {
        model.forward_cached(&mut ws, ids, &mut cache)
    })
}

/// Greedy decoding driven by `step`, which runs new tokens after the cached ones and returns the
/// logits of the last.
pub fn greedy_with(
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    mut step: impl FnMut(&[u32]) -> Result<Vec<f32>>,
) -> Result<Generation> {
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let start = Instant::now();
    let mut logits = step(prompt)?;
    let mut tokens = Vec::with_capacity(max_new);
    let mut time_to_first_token = 0.0;
    let mut first_done = Instant::now();
    while tokens.len() < max_new {
        let next = argmax(&logits);
        tokens.push(next);
        if tokens.len() == 1 {
            time_to_first_token = start.elapsed().as_secs_f64();
            first_done = Instant::now();
        }
        if stop.contains(&next) || tokens.len() == max_new {
            break;
        }
        logits = step(&[next])?;
    }
    Ok(Generation {
        tokens,
        time_to_first_token,
        decode_seconds: first_done.elapsed().as_secs_f64(),
    })
}
