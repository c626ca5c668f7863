//! Speed on the GPU: the same measurements as [`crate::bench::measure`], with the model on the device.

use super::{GpuKvCache, GpuModel, GpuWorkspace};
use crate::bench::{synthetic_ids, BenchResult, BenchSettings};
use crate::generate::greedy_with;
use anyhow::Result;
use std::time::Instant;

impl GpuModel {
    /// Measures prefill, time to first token and cached decode speed (bf16 KV cache).
    pub fn measure(&self, settings: &BenchSettings) -> Result<BenchResult> {
        let vocab = self.config.vocab;
        let prefill_ids = synthetic_ids(settings.prefill_len, vocab);
        let prompt = synthetic_ids(settings.prompt_len, vocab);
        let decode_positions = settings.prompt_len + settings.decode_tokens + 1;
        let tokens = settings.prefill_len.max(settings.prompt_len);
        let mut ws = GpuWorkspace::new(self, tokens, tokens.max(decode_positions))?;
        let (mut prefill, mut ttft, mut decode) = (f64::MAX, f64::MAX, 0f64);
        for round in 0..=settings.repeats.max(1) {
            // Round 0 warms up (first launches, allocator) and is not counted.
            let mut cache = GpuKvCache::new(self, settings.prefill_len)?;
            self.gpu.sync()?;
            let t = Instant::now();
            self.forward_cached(&mut ws, &prefill_ids, &mut cache)?;
            let p = t.elapsed().as_secs_f64();

            let mut cache = GpuKvCache::new(self, decode_positions)?;
            self.gpu.sync()?;
            let g = greedy_with(&prompt, settings.decode_tokens + 1, &[], |ids| {
                self.forward_cached(&mut ws, ids, &mut cache)
            })?;
            let first = g.time_to_first_token;
            let d = (g.tokens.len() - 1) as f64 / g.decode_seconds.max(1e-9);
            if round > 0 {
                prefill = prefill.min(p);
                ttft = ttft.min(first);
                decode = decode.max(d);
            }
        }
        let attention: Vec<_> = self
            .config
            .blocks
            .iter()
            .filter_map(|b| b.attention.as_ref())
            .collect();
        Ok(BenchResult {
            prefill_tokens_per_s: settings.prefill_len as f64 / prefill,
            prefill_seconds: prefill,
            time_to_first_token_s: ttft,
            decode_tokens_per_s: decode,
            weight_bytes: self.device_bytes(),
            kv_cache_bytes: attention
                .iter()
                .map(|a| (2 * 2 * settings.context * a.kv_dim()) as u64)
                .sum(),
            params_main: self.params_main(),
            params_total: self.params_total(),
            attention_blocks: attention.len(),
        })
    }
}
