//! Speed and memory of a model: prefill throughput, time to first token, cached decode rate.

use crate::engine::{Engine, EngineJob};
use crate::generate::greedy_with;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchSettings {
    /// Tokens of the timed prefill (batch 1), the paper's measurement.
    pub prefill_len: usize,
    /// Prompt tokens before decoding (time to first token).
    pub prompt_len: usize,
    /// Tokens decoded one by one with the KV cache.
    pub decode_tokens: usize,
    /// Context length at which the KV cache size is reported.
    pub context: usize,
    /// Timed repetitions (the best is kept).
    pub repeats: usize,
}

/// Measurements of one model.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Prefill tokens per second (best of the repeats).
    pub prefill_tokens_per_s: f64,
    /// Seconds of the best prefill.
    pub prefill_seconds: f64,
    /// Seconds from a `prompt_len` prompt to the first new token (best).
    pub time_to_first_token_s: f64,
    /// Decoded tokens per second after the first (best).
    pub decode_tokens_per_s: f64,
    /// Bytes of the weights as the backend holds them (CPU: the matrices' precision; GPU: bf16
    /// matrices, f32 norms).
    pub weight_bytes: u64,
    /// Bytes of the KV cache at `context` positions (CPU: f32; GPU: bf16).
    pub kv_cache_bytes: u64,
    /// Parameters of the decoder blocks.
    pub params_main: u64,
    /// All parameters.
    pub params_total: u64,
    /// Blocks that still compute attention.
    pub attention_blocks: usize,
}

/// Deterministic token ids spread over the vocabulary (speed does not depend on the text).
pub fn synthetic_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i as u64 * 7919 + 13) % vocab as u64) as u32)
        .collect()
}

/// Measures `model` with `settings`: a warm-up round (first launches, allocator, page faults of the
/// mapped weights), then the best of `repeats` timed rounds.
pub fn measure<E: Engine>(model: &E, settings: &BenchSettings) -> Result<BenchResult> {
    let vocab = model.config().vocab;
    let prefill_ids = synthetic_ids(settings.prefill_len, vocab);
    let prompt = synthetic_ids(settings.prompt_len, vocab);
    let decode_positions = settings.prompt_len + settings.decode_tokens + 1;
    let tokens = settings.prefill_len.max(settings.prompt_len);
    let mut ws = model.workspace(tokens, tokens.max(decode_positions))?;
    let (mut prefill, mut ttft, mut decode) = (f64::MAX, f64::MAX, 0f64);
    for round in 0..=settings.repeats.max(1) {
        let mut cache = model.kv_cache(settings.prefill_len)?;
        model.sync()?;
        let t = Instant::now();
        model.forward_cached(&mut ws, &prefill_ids, &mut cache)?;
        let p = t.elapsed().as_secs_f64();

        let mut cache = model.kv_cache(decode_positions)?;
        model.sync()?;
        let g = greedy_with(&prompt, settings.decode_tokens + 1, &[], |ids| {
            model.forward_cached(&mut ws, ids, &mut cache)
        })?;
        if round > 0 {
            prefill = prefill.min(p);
            ttft = ttft.min(g.time_to_first_token);
            decode = decode.max((g.tokens.len() - 1) as f64 / g.decode_seconds.max(1e-9));
        }
    }
    Ok(BenchResult {
        prefill_tokens_per_s: settings.prefill_len as f64 / prefill,
        prefill_seconds: prefill,
        time_to_first_token_s: ttft,
        decode_tokens_per_s: decode,
        weight_bytes: model.weight_bytes(),
        kv_cache_bytes: model.kv_cache_bytes(settings.context),
        params_main: model.params_main(),
        params_total: model.params_total(),
        attention_blocks: (0..model.n_blocks())
            .filter(|&i| model.has_attention(i))
            .count(),
    })
}

/// [`measure`] as a job for [`crate::backend::Backend::with_model`].
pub struct Measure<'a>(pub &'a BenchSettings);

impl EngineJob for Measure<'_> {
    type Output = BenchResult;

    fn run<E: Engine>(self, model: E) -> Result<BenchResult> {
        measure(&model, self.0)
    }
}
