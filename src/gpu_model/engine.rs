//! The GPU model as an [`Engine`]: the residual stream and every saved block input stay on the device;
//! stage 1 accumulates the neurons' squared activations in the gated GEMM's epilogue.

use super::{FfnStats, GpuAttention, GpuFfn, GpuKvCache, GpuModel, GpuWorkspace};
use crate::backend::cuda::GpuBuffer;
use crate::config::ModelConfig;
use crate::engine::{Engine, SubModule};
use crate::progress;
use crate::prune::stage1::NeuronScores;
use crate::weights::Precision;
use anyhow::Result;
use std::ops::Range;

impl Engine for GpuModel {
    type Hidden = GpuBuffer<f32>;
    type Workspace = GpuWorkspace;
    type Attention = GpuAttention;
    type Ffn = GpuFfn;
    type KvCache = GpuKvCache;
    const ON_DEVICE: bool = true;

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn precision(&self) -> Precision {
        Precision::Bf16
    }

    fn kernels(&self) -> String {
        "bf16 weights, CUDA kernels".into()
    }

    fn weight_bytes(&self) -> u64 {
        self.device_bytes()
    }

    fn workspace(&self, max_tokens: usize, positions: usize) -> Result<GpuWorkspace> {
        GpuWorkspace::new(self, max_tokens, positions.max(max_tokens))
    }

    fn embed(&self, ws: &mut GpuWorkspace, ids: &[u32]) -> Result<()> {
        GpuModel::embed(self, ws, ids)
    }

    fn run_blocks_bypassing(
        &self,
        ws: &mut GpuWorkspace,
        n: usize,
        range: Range<usize>,
        bypass: Option<(SubModule, usize)>,
    ) -> Result<()> {
        GpuModel::run_blocks(self, ws, n, range, None, None, bypass)
    }

    fn save_hidden(&self, ws: &GpuWorkspace, n: usize) -> Result<GpuBuffer<f32>> {
        let n = n * self.config.hidden;
        let mut saved = self.gpu.zeros::<f32>(n)?;
        self.gpu.copy(&ws.x, &mut saved, n)?;
        Ok(saved)
    }

    fn store_hidden(&self, ws: &GpuWorkspace, dst: &mut GpuBuffer<f32>, n: usize) -> Result<()> {
        self.gpu.copy(&ws.x, dst, n * self.config.hidden)
    }

    fn load_hidden(&self, ws: &mut GpuWorkspace, src: &GpuBuffer<f32>, n: usize) -> Result<()> {
        self.gpu.copy(src, &mut ws.x, n * self.config.hidden)
    }

    fn target_nlls_from_hidden(
        &self,
        ws: &mut GpuWorkspace,
        first_row: usize,
        targets: &[u32],
    ) -> Result<Vec<f32>> {
        GpuModel::target_nlls_from_hidden(self, ws, first_row, targets)
    }

    fn logits_from_hidden(
        &self,
        ws: &mut GpuWorkspace,
        first_row: usize,
        rows: usize,
    ) -> Result<Vec<f32>> {
        self.rows_logits(ws, first_row, rows)
    }

    fn score_neurons(&self, samples: &[&[u32]]) -> Result<NeuronScores> {
        let longest = samples.iter().map(|s| s.len()).max().unwrap_or(1);
        let mut ws = GpuWorkspace::new(self, longest, longest)?;
        let stats = FfnStats::new(self, longest)?;
        let bar = progress::bar(samples.len() as u64, "stage 1");
        for sample in samples {
            GpuModel::embed(self, &mut ws, sample)?;
            GpuModel::run_blocks(
                self,
                &mut ws,
                sample.len(),
                0..self.blocks.len(),
                None,
                Some(&stats),
                None,
            )?;
            self.gpu.sync()?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let n = samples.len().max(1) as f64;
        self.blocks
            .iter()
            .zip(&stats.scores)
            .map(|(b, sc)| {
                let width = b.ffn.as_ref().map_or(0, |f| f.width);
                Ok(self.gpu.download_prefix(sc, width.max(1))?[..width]
                    .iter()
                    .map(|&v| (v / n) as f32)
                    .collect())
            })
            .collect()
    }

    fn keep_ffn_neurons(&mut self, kept: &[Vec<usize>]) -> Result<()> {
        GpuModel::keep_ffn_neurons(self, kept)
    }

    fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn has_attention(&self, i: usize) -> bool {
        self.blocks[i].attention.is_some()
    }

    fn take_attention(&mut self, i: usize) -> Option<GpuAttention> {
        self.blocks[i].attention.take()
    }

    fn restore_attention(&mut self, i: usize, attention: Option<GpuAttention>) {
        self.blocks[i].attention = attention;
    }

    fn remove_attention(&mut self, i: usize) {
        GpuModel::remove_attention(self, i)
    }

    fn has_ffn(&self, i: usize) -> bool {
        self.blocks[i].ffn.is_some()
    }

    fn take_ffn(&mut self, i: usize) -> Option<GpuFfn> {
        self.blocks[i].ffn.take()
    }

    fn restore_ffn(&mut self, i: usize, ffn: Option<GpuFfn>) {
        self.blocks[i].ffn = ffn;
    }

    fn remove_ffn(&mut self, i: usize) {
        self.config.blocks[i].ffn_width = 0;
        self.blocks[i].ffn = None;
    }

    fn hidden_row(&self, ws: &GpuWorkspace, row: usize) -> Result<Vec<f32>> {
        let hidden = self.config.hidden;
        let rows = self.gpu.download_prefix(&ws.x, (row + 1) * hidden)?;
        Ok(rows[row * hidden..].to_vec())
    }

    fn sync(&self) -> Result<()> {
        self.gpu.sync()
    }

    fn kv_cache(&self, positions: usize) -> Result<GpuKvCache> {
        GpuKvCache::new(self, positions)
    }

    fn kv_cache_bytes(&self, positions: usize) -> u64 {
        self.config
            .blocks
            .iter()
            .filter_map(|b| b.attention.as_ref())
            .map(|a| (2 * 2 * positions * a.kv_dim()) as u64) // bf16 keys and values
            .sum()
    }

    fn forward_cached_hidden(
        &self,
        ws: &mut GpuWorkspace,
        ids: &[u32],
        cache: &mut GpuKvCache,
    ) -> Result<()> {
        GpuModel::forward_cached_hidden(self, ws, ids, cache)
    }

    fn rewind_kv_cache(&self, cache: &mut GpuKvCache, positions: usize) {
        cache.len = cache.len.min(positions);
    }

    fn forward_cached(
        &self,
        ws: &mut GpuWorkspace,
        ids: &[u32],
        cache: &mut GpuKvCache,
    ) -> Result<Vec<f32>> {
        GpuModel::forward_cached(self, ws, ids, cache)
    }
}
