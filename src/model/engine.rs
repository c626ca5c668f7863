//! The CPU model as an [`Engine`]: the residual stream lives in host memory.

use super::{Attention, Ffn, KvCache, Model, Workspace};
use crate::config::ModelConfig;
use crate::engine::{Engine, SubModule};
use crate::prune::stage1::{self, NeuronScores};
use crate::weights::Precision;
use anyhow::Result;
use std::ops::Range;

/// Activation memory the side-by-side passes of [`Engine::concurrent_passes`] may take together:
/// small models (whose single pass cannot keep every core busy) get one pass per thread, a 7B
/// model's 2048-token pass (about 0.7 GB) runs alone and splits its products across the threads.
const CONCURRENT_PASS_BYTES: u64 = 1 << 30;

/// The CPU forward pass's scratch plus the live residual stream.
#[derive(Default)]
pub struct CpuWorkspace {
    scratch: Workspace,
    x: Vec<f32>,
}

impl Engine for Model {
    type Hidden = Vec<f32>;
    type Workspace = CpuWorkspace;
    type Attention = Attention;
    type Ffn = Ffn;
    type KvCache = KvCache;
    const ON_DEVICE: bool = false;

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn precision(&self) -> Precision {
        Model::precision(self)
    }

    fn kernels(&self) -> String {
        crate::backend::cpu::kernels_for(Model::precision(self))
    }

    fn weight_bytes(&self) -> u64 {
        Model::weight_bytes(self)
    }

    fn workspace(&self, _max_tokens: usize, _positions: usize) -> Result<CpuWorkspace> {
        Ok(CpuWorkspace::default())
    }

    fn embed(&self, ws: &mut CpuWorkspace, ids: &[u32]) -> Result<()> {
        ws.x = self.embed_tokens(ids)?;
        Ok(())
    }

    fn run_blocks_bypassing(
        &self,
        ws: &mut CpuWorkspace,
        n: usize,
        range: Range<usize>,
        bypass: Option<(SubModule, usize)>,
    ) -> Result<()> {
        let rows = n * self.config.hidden;
        let x = &mut ws.x[..rows];
        Model::run_blocks_cached(self, x, range, &mut ws.scratch, None, None, bypass);
        Ok(())
    }

    fn concurrent_passes(&self, passes: usize, tokens: usize) -> usize {
        let per_pass = self.pass_bytes(tokens).max(1);
        let fit = (CONCURRENT_PASS_BYTES / per_pass).max(1);
        passes
            .min(rayon::current_num_threads())
            .min(fit as usize)
            .max(1)
    }

    fn save_hidden(&self, ws: &CpuWorkspace, n: usize) -> Result<Vec<f32>> {
        Ok(ws.x[..n * self.config.hidden].to_vec())
    }

    fn store_hidden(&self, ws: &CpuWorkspace, dst: &mut Vec<f32>, n: usize) -> Result<()> {
        dst.copy_from_slice(&ws.x[..n * self.config.hidden]);
        Ok(())
    }

    fn load_hidden(&self, ws: &mut CpuWorkspace, src: &Vec<f32>, n: usize) -> Result<()> {
        ws.x.clear();
        ws.x.extend_from_slice(&src[..n * self.config.hidden]);
        Ok(())
    }

    fn target_nlls_from_hidden(
        &self,
        ws: &mut CpuWorkspace,
        first_row: usize,
        targets: &[u32],
    ) -> Result<Vec<f32>> {
        let hidden = self.config.hidden;
        let x = &mut ws.x[first_row * hidden..(first_row + targets.len()) * hidden];
        self.apply_final_norm(x);
        Ok(Model::target_nlls(self, x, targets))
    }

    fn logits_from_hidden(
        &self,
        ws: &mut CpuWorkspace,
        first_row: usize,
        rows: usize,
    ) -> Result<Vec<f32>> {
        let hidden = self.config.hidden;
        let x = &mut ws.x[first_row * hidden..(first_row + rows) * hidden];
        self.apply_final_norm(x);
        let mut logits = vec![0f32; rows * self.config.vocab];
        self.head_rows(x, &mut logits);
        Ok(logits)
    }

    fn score_neurons(&self, samples: &[&[u32]]) -> Result<NeuronScores> {
        stage1::score_neurons(self, samples)
    }

    fn keep_ffn_neurons(&mut self, kept: &[Vec<usize>]) -> Result<()> {
        Model::keep_ffn_neurons(self, kept);
        Ok(())
    }

    fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn has_attention(&self, i: usize) -> bool {
        self.blocks[i].attention.is_some()
    }

    fn take_attention(&mut self, i: usize) -> Option<Attention> {
        self.blocks[i].attention.take()
    }

    fn restore_attention(&mut self, i: usize, attention: Option<Attention>) {
        self.blocks[i].attention = attention;
    }

    fn remove_attention(&mut self, i: usize) {
        Model::remove_attention(self, i)
    }

    fn has_ffn(&self, i: usize) -> bool {
        self.blocks[i].ffn.is_some()
    }

    fn take_ffn(&mut self, i: usize) -> Option<Ffn> {
        self.blocks[i].ffn.take()
    }

    fn restore_ffn(&mut self, i: usize, ffn: Option<Ffn>) {
        self.blocks[i].ffn = ffn;
    }

    fn remove_ffn(&mut self, i: usize) {
        self.blocks[i].ffn = None;
        self.config.blocks[i].ffn_width = 0;
    }

    fn hidden_row(&self, ws: &CpuWorkspace, row: usize) -> Result<Vec<f32>> {
        let hidden = self.config.hidden;
        Ok(ws.x[row * hidden..(row + 1) * hidden].to_vec())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn kv_cache(&self, positions: usize) -> Result<KvCache> {
        Ok(KvCache::new(self, positions))
    }

    fn kv_cache_bytes(&self, positions: usize) -> u64 {
        KvCache::bytes_for(self, positions)
    }

    fn forward_cached_hidden(
        &self,
        ws: &mut CpuWorkspace,
        ids: &[u32],
        cache: &mut KvCache,
    ) -> Result<()> {
        ws.x = self.embed_tokens(ids)?;
        self.run_blocks_cached(
            &mut ws.x,
            0..self.blocks.len(),
            &mut ws.scratch,
            None,
            Some(cache),
            None,
        );
        cache.advance(ids.len());
        Ok(())
    }

    fn rewind_kv_cache(&self, cache: &mut KvCache, positions: usize) {
        cache.truncate(positions);
    }

    fn forward_cached(
        &self,
        ws: &mut CpuWorkspace,
        ids: &[u32],
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        Model::forward_cached(self, ids, cache, &mut ws.scratch)
    }
}
