//! One interface over the models of every backend: the CPU [`Model`](crate::model::Model) and the
//! device-resident `GpuModel` both implement [`Engine`], so 2SSP (both stages, with suffix reuse),
//! perplexity and the parameter counts are written once, above the forward pass.

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::prune::stage1::NeuronScores;
use crate::weights::Precision;
use anyhow::Result;
use std::ops::Range;
use std::path::Path;

/// A submodule of a decoder block that pruning can remove whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubModule {
    /// The attention submodule (with its norm).
    Attention,
    /// The FFN / MLP submodule (with its norm).
    Mlp,
}

impl SubModule {
    /// `part`, this submodule of block `block`, unless `bypass` names it (a pass that skips it).
    pub(crate) fn unless_bypassed<T>(
        self,
        part: Option<&T>,
        block: usize,
        bypass: Option<(SubModule, usize)>,
    ) -> Option<&T> {
        part.filter(|_| bypass != Some((self, block)))
    }
}

/// What prune and eval need from a loaded model, on any backend. A model is shared between threads
/// only by reference (`&self` passes never change it), each pass with its own workspace.
pub trait Engine: Sync {
    /// A residual stream `[tokens, hidden]` kept aside between blocks (host memory or a device buffer).
    type Hidden: Send + Sync;
    /// Scratch of one forward pass; it holds the live residual stream.
    type Workspace: Send;
    /// An attention submodule held out while a model without it is evaluated.
    type Attention;
    /// An FFN (MLP) submodule held out while a model without it is evaluated.
    type Ffn;
    /// Keys and values of the positions decoded so far.
    type KvCache;
    /// Whether the weights live on a device (reports then give the device memory pruning freed).
    const ON_DEVICE: bool;

    /// The model's configuration (kept in step with pruning).
    fn config(&self) -> &ModelConfig;
    /// Precision of the matrices while computing.
    fn precision(&self) -> Precision;
    /// The matrix precision and the kernels that compute with it (for reports).
    fn kernels(&self) -> String;
    /// Bytes of the weights as this backend holds them.
    fn weight_bytes(&self) -> u64;
    /// Scratch for up to `max_tokens` tokens per call, at positions below `positions`.
    fn workspace(&self, max_tokens: usize, positions: usize) -> Result<Self::Workspace>;
    /// Writes the embeddings of `ids` into the workspace's residual stream.
    fn embed(&self, ws: &mut Self::Workspace, ids: &[u32]) -> Result<()>;
    /// Runs blocks `range` over the first `n` rows of the workspace's residual stream, skipping the
    /// submodule `bypass` names (block `i`'s `part`) as if it were removed.
    fn run_blocks_bypassing(
        &self,
        ws: &mut Self::Workspace,
        n: usize,
        range: Range<usize>,
        bypass: Option<(SubModule, usize)>,
    ) -> Result<()>;
    /// How many independent passes of `tokens` tokens run side by side best, each in its own
    /// workspace, when `passes` are waiting (1: one after the other, each using the whole machine).
    fn concurrent_passes(&self, _passes: usize, _tokens: usize) -> usize {
        1
    }
    /// A copy of the first `n` rows of the residual stream.
    fn save_hidden(&self, ws: &Self::Workspace, n: usize) -> Result<Self::Hidden>;
    /// Overwrites `dst` with the first `n` rows of the residual stream.
    fn store_hidden(&self, ws: &Self::Workspace, dst: &mut Self::Hidden, n: usize) -> Result<()>;
    /// Makes `src` (`n` rows) the residual stream.
    fn load_hidden(&self, ws: &mut Self::Workspace, src: &Self::Hidden, n: usize) -> Result<()>;
    /// NLL of `targets[k]` under the logits of row `first_row + k` of the residual stream after the
    /// last block (final norm and LM head applied here; those rows are clobbered).
    fn target_nlls_from_hidden(
        &self,
        ws: &mut Self::Workspace,
        first_row: usize,
        targets: &[u32],
    ) -> Result<Vec<f32>>;
    /// Logits `[rows, vocab]` (soft cap applied), on the host, of rows `first_row..first_row + rows`
    /// of the residual stream after the last block (final norm and LM head applied here; those
    /// rows are clobbered).
    fn logits_from_hidden(
        &self,
        ws: &mut Self::Workspace,
        first_row: usize,
        rows: usize,
    ) -> Result<Vec<f32>>;
    /// Stage 1: every FFN neuron's mean over samples of its L2 norm over tokens, on the dense model.
    fn score_neurons(&self, samples: &[&[u32]]) -> Result<NeuronScores>;
    /// Keeps only the listed neurons of each block's FFN (ascending indices).
    fn keep_ffn_neurons(&mut self, kept: &[Vec<usize>]) -> Result<()>;
    /// Decoder blocks.
    fn n_blocks(&self) -> usize;
    /// Whether block `i` still has its attention.
    fn has_attention(&self, i: usize) -> bool;
    /// Takes block `i`'s attention out (the block then skips it) until [`Engine::restore_attention`].
    fn take_attention(&mut self, i: usize) -> Option<Self::Attention>;
    /// Puts back what [`Engine::take_attention`] took.
    fn restore_attention(&mut self, i: usize, attention: Option<Self::Attention>);
    /// Removes block `i`'s attention for good (its memory is released).
    fn remove_attention(&mut self, i: usize);
    /// Whether block `i` still has its FFN.
    fn has_ffn(&self, i: usize) -> bool;
    /// Takes block `i`'s FFN out (the block then skips it) until [`Engine::restore_ffn`].
    fn take_ffn(&mut self, i: usize) -> Option<Self::Ffn>;
    /// Puts back what [`Engine::take_ffn`] took.
    fn restore_ffn(&mut self, i: usize, ffn: Option<Self::Ffn>);
    /// Removes block `i`'s FFN for good (the block becomes `h + attention(h)`, or the identity).
    fn remove_ffn(&mut self, i: usize);
    /// Row `row` of the residual stream, copied to the host.
    fn hidden_row(&self, ws: &Self::Workspace, row: usize) -> Result<Vec<f32>>;
    /// Waits for queued work (a no-op where work is synchronous).
    fn sync(&self) -> Result<()>;
    /// An empty KV cache for up to `positions` positions.
    fn kv_cache(&self, positions: usize) -> Result<Self::KvCache>;
    /// Bytes a KV cache of `positions` positions takes on this backend.
    fn kv_cache_bytes(&self, positions: usize) -> u64;
    /// Runs `ids` after the positions already in `cache`, leaving their residual stream in `ws`.
    fn forward_cached_hidden(
        &self,
        ws: &mut Self::Workspace,
        ids: &[u32],
        cache: &mut Self::KvCache,
    ) -> Result<()>;
    /// Forgets the cached positions from `positions` on.
    fn rewind_kv_cache(&self, cache: &mut Self::KvCache, positions: usize);
    /// Runs `ids` after the positions already in `cache` and returns the logits of the last one.
    fn forward_cached(
        &self,
        ws: &mut Self::Workspace,
        ids: &[u32],
        cache: &mut Self::KvCache,
    ) -> Result<Vec<f32>>;

    /// Parameters of the decoder blocks (counted from the config, which pruning keeps in step).
    fn params_main(&self) -> u64 {
        self.config().params_main()
    }

    /// All parameters.
    fn params_total(&self) -> u64 {
        self.config().params_total()
    }

    /// Runs blocks `range` over the first `n` rows of the workspace's residual stream.
    fn run_blocks(&self, ws: &mut Self::Workspace, n: usize, range: Range<usize>) -> Result<()> {
        self.run_blocks_bypassing(ws, n, range, None)
    }

    /// Sum of the next-token NLLs of `ids` from the residual stream after the last block
    /// (accumulated in f64).
    fn nll_from_hidden(&self, ws: &mut Self::Workspace, ids: &[u32]) -> Result<f64> {
        let nlls = self.target_nlls_from_hidden(ws, 0, ids.get(1..).unwrap_or_default())?;
        Ok(nlls.iter().map(|&v| v as f64).sum())
    }

    /// Sum of next-token NLLs of one window and the number of predicted tokens.
    fn window_nll(&self, ws: &mut Self::Workspace, ids: &[u32]) -> Result<(f64, usize)> {
        self.embed(ws, ids)?;
        self.run_blocks(ws, ids.len(), 0..self.n_blocks())?;
        Ok((self.nll_from_hidden(ws, ids)?, ids.len().saturating_sub(1)))
    }

    /// Perplexity over `windows` (with a progress bar labelled `label`).
    fn perplexity(&self, windows: &[&[u32]], label: &str) -> Result<f64>
    where
        Self: Sized,
    {
        crate::eval::perplexity::perplexity(self, windows, label).map(|p| p.ppl)
    }
}

/// Work that runs on a loaded model of any backend; [`Backend::with_model`] loads it.
pub trait EngineJob {
    /// What the job returns.
    type Output;
    /// Runs the job on `model`.
    fn run<E: Engine>(self, model: E) -> Result<Self::Output>;
}

impl Backend {
    /// Loads the checkpoint in `dir` for this backend (the one place that does) and runs `job` on it.
    pub fn with_model<J: EngineJob>(&self, dir: &Path, job: J) -> Result<J::Output> {
        match self {
            Backend::Cpu(dtype) => job.run(crate::model::Model::load_as(dir, *dtype)?),
            Backend::Cuda(gpu) => job.run(crate::gpu_model::GpuModel::load(gpu.clone(), dir)?),
        }
    }
}
