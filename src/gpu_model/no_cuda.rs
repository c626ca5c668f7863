//! The device model in builds without the `cuda` feature: a type with no values, since no
//! [`Gpu`] can exist to load it on; it lets prune, eval and bench name it without `cfg`.

use crate::backend::cuda::Gpu;
use crate::config::ModelConfig;
use crate::engine::{Engine, SubModule};
use crate::prune::stage1::NeuronScores;
use crate::weights::Precision;
use anyhow::Result;
use std::convert::Infallible;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// A model on a GPU: none can exist in this build.
pub enum GpuModel {}

impl GpuModel {
    /// Loads a checkpoint onto `gpu` (unreachable: there is no GPU).
    pub fn load(gpu: Arc<Gpu>, _dir: &Path) -> Result<Self> {
        match *gpu {}
    }

    /// Seeded random weights of `config`'s shapes on `gpu` (unreachable: there is no GPU).
    pub fn synthetic(gpu: Arc<Gpu>, _config: &ModelConfig, _seed: u64) -> Result<Self> {
        match *gpu {}
    }
}

/// Refuses every model: this build has no GPU backend.
pub fn check_supported(_config: &ModelConfig) -> Result<()> {
    Gpu::new(0).map(|gpu| match gpu {})
}

impl Engine for GpuModel {
    type Hidden = Infallible;
    type Workspace = Infallible;
    type Attention = Infallible;
    type Ffn = Infallible;
    type KvCache = Infallible;
    const ON_DEVICE: bool = true;

    fn config(&self) -> &ModelConfig {
        match *self {}
    }
    fn precision(&self) -> Precision {
        match *self {}
    }
    fn kernels(&self) -> String {
        match *self {}
    }
    fn weight_bytes(&self) -> u64 {
        match *self {}
    }
    fn workspace(&self, _: usize, _: usize) -> Result<Infallible> {
        match *self {}
    }
    fn embed(&self, _: &mut Infallible, _: &[u32]) -> Result<()> {
        match *self {}
    }
    fn run_blocks_bypassing(
        &self,
        _: &mut Infallible,
        _: usize,
        _: Range<usize>,
        _: Option<(SubModule, usize)>,
    ) -> Result<()> {
        match *self {}
    }
    fn save_hidden(&self, _: &Infallible, _: usize) -> Result<Infallible> {
        match *self {}
    }
    fn store_hidden(&self, _: &Infallible, _: &mut Infallible, _: usize) -> Result<()> {
        match *self {}
    }
    fn load_hidden(&self, _: &mut Infallible, _: &Infallible, _: usize) -> Result<()> {
        match *self {}
    }
    fn target_nlls_from_hidden(&self, _: &mut Infallible, _: usize, _: &[u32]) -> Result<Vec<f32>> {
        match *self {}
    }
    fn logits_from_hidden(&self, _: &mut Infallible, _: usize, _: usize) -> Result<Vec<f32>> {
        match *self {}
    }
    fn forward_cached_hidden(
        &self,
        _: &mut Infallible,
        _: &[u32],
        _: &mut Infallible,
    ) -> Result<()> {
        match *self {}
    }
    fn rewind_kv_cache(&self, _: &mut Infallible, _: usize) {
        match *self {}
    }
    fn score_neurons(&self, _: &[&[u32]]) -> Result<NeuronScores> {
        match *self {}
    }
    fn keep_ffn_neurons(&mut self, _: &[Vec<usize>]) -> Result<()> {
        match *self {}
    }
    fn n_blocks(&self) -> usize {
        match *self {}
    }
    fn has_attention(&self, _: usize) -> bool {
        match *self {}
    }
    fn take_attention(&mut self, _: usize) -> Option<Infallible> {
        match *self {}
    }
    fn restore_attention(&mut self, _: usize, _: Option<Infallible>) {
        match *self {}
    }
    fn remove_attention(&mut self, _: usize) {
        match *self {}
    }
    fn has_ffn(&self, _: usize) -> bool {
        match *self {}
    }
    fn take_ffn(&mut self, _: usize) -> Option<Infallible> {
        match *self {}
    }
    fn restore_ffn(&mut self, _: usize, _: Option<Infallible>) {
        match *self {}
    }
    fn remove_ffn(&mut self, _: usize) {
        match *self {}
    }
    fn hidden_row(&self, _: &Infallible, _: usize) -> Result<Vec<f32>> {
        match *self {}
    }
    fn sync(&self) -> Result<()> {
        match *self {}
    }
    fn kv_cache(&self, _: usize) -> Result<Infallible> {
        match *self {}
    }
    fn kv_cache_bytes(&self, _: usize) -> u64 {
        match *self {}
    }
    fn forward_cached(
        &self,
        _: &mut Infallible,
        _: &[u32],
        _: &mut Infallible,
    ) -> Result<Vec<f32>> {
        match *self {}
    }
}
