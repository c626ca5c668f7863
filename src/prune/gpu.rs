//! 2SSP on the GPU: the same decisions as [`super::run`], with the model resident on the device.
//! Stage 1 accumulates per-neuron squared activations in the gated GEMM's epilogue; stage 2 keeps
//! every block's input on the device. The FFNs are compacted and removed attention buffers freed in place.

use super::cache::PruneCache;
use super::stage2::{greedy_removal, SuffixEvaluator};
use super::{stage1, validated_plan, PruneOptions, PruneOutcome};
use crate::backend::cuda::GpuBuffer;
use crate::gpu_model::{FfnStats, GpuModel, GpuWorkspace};
use crate::progress;
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;

/// Device memory released by pruning.
#[derive(Clone, Debug, Serialize)]
pub struct FreedMemory {
    /// Weight bytes on the device before pruning.
    pub bytes_before: u64,
    /// Bytes freed by compacting the FFNs.
    pub bytes_freed_ffn: u64,
    /// Bytes freed by removing attention submodules.
    pub bytes_freed_attention: u64,
    /// Weight bytes on the device after pruning.
    pub bytes_after: u64,
}

/// Prunes `model` on its GPU; windows as in [`super::run`].
pub fn run(
    model: &mut GpuModel,
    opts: &PruneOptions,
    stage1_windows: &[&[u32]],
    stage2_windows: &[&[u32]],
    cache: Option<&PruneCache>,
) -> Result<(PruneOutcome, FreedMemory)> {
    let (counts, plan) = validated_plan(&model.config, opts)?;
    let bytes_before = model.device_bytes();
    let longest = stage1_windows
        .iter()
        .chain(stage2_windows)
        .map(|w| w.len())
        .max()
        .unwrap_or(1);
    let mut ws = GpuWorkspace::new(model, longest, longest)?;

    let t1 = Instant::now();
    let widths = model.config.ffn_widths();
    let (scores, scores_reused) = PruneCache::scores_or(cache, stage1_windows, &widths, || {
        score_neurons(model, &mut ws, stage1_windows)
    })?;
    let ffn_kept = stage1::kept_neurons(&scores, plan.keep);
    let bytes_freed_ffn = model.keep_ffn_neurons(&ffn_kept)?;
    model.gpu.sync()?;
    let seconds_stage1 = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let mut eval = GpuEvaluator::new(model, ws, stage2_windows)?;
    let journal =
        cache.map(|c| c.stage2_journal(&ffn_kept, stage2_windows, &opts.protected_attention));
    let stage2 = greedy_removal(
        &mut eval,
        plan.n_attn,
        &opts.protected_attention,
        journal.as_ref(),
    )?;
    let reused = super::cache::Reused::of(cache, scores_reused, &stage2);
    let bytes_freed_attention = eval.freed;
    model.gpu.sync()?;
    let seconds_stage2 = t2.elapsed().as_secs_f64();
    let memory = FreedMemory {
        bytes_before,
        bytes_freed_ffn,
        bytes_freed_attention,
        bytes_after: model.device_bytes(),
    };
    let outcome = PruneOutcome {
        plan,
        counts,
        ffn_kept,
        stage2,
        seconds_stage1,
        seconds_stage2,
        reused,
    };
    Ok((outcome, memory))
}

/// Stage 1 on the device: mean over samples of each neuron's L2 norm over tokens.
pub fn score_neurons(
    model: &GpuModel,
    ws: &mut GpuWorkspace,
    samples: &[&[u32]],
) -> Result<stage1::NeuronScores> {
    let gpu = &model.gpu;
    let longest = samples.iter().map(|s| s.len()).max().unwrap_or(1);
    let stats = FfnStats::new(model, longest)?;
    let bar = progress::bar(samples.len() as u64, "stage 1");
    for sample in samples {
        model.embed(ws, sample)?;
        model.run_blocks(ws, sample.len(), 0..model.blocks.len(), None, Some(&stats))?;
        gpu.sync()?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = samples.len().max(1) as f64;
    model
        .blocks
        .iter()
        .zip(&stats.scores)
        .map(|(b, sc)| {
            let width = b.ffn.as_ref().map_or(0, |f| f.width);
            Ok(gpu.download_prefix(sc, width.max(1))?[..width]
                .iter()
                .map(|&v| (v / n) as f32)
                .collect())
        })
        .collect()
}

/// Stage 2 on the device: the residual stream entering every block of every window stays on the GPU.
struct GpuEvaluator<'a> {
    model: &'a mut GpuModel,
    ws: GpuWorkspace,
    windows: &'a [&'a [u32]],
    /// `inputs[w][i]`: input of block i for window w (L + 1 entries, the last is the output).
    inputs: Vec<Vec<GpuBuffer<f32>>>,
    freed: u64,
}

impl<'a> GpuEvaluator<'a> {
    fn new(
        model: &'a mut GpuModel,
        mut ws: GpuWorkspace,
        windows: &'a [&'a [u32]],
    ) -> Result<Self> {
        if windows.is_empty() {
            bail!("stage 2 needs at least one calibration window");
        }
        let (gpu, hidden) = (model.gpu.clone(), model.config.hidden);
        let mut inputs = Vec::with_capacity(windows.len());
        for w in windows {
            let n = w.len() * hidden;
            model.embed(&mut ws, w)?;
            let mut per_block = Vec::with_capacity(model.blocks.len() + 1);
            for i in 0..=model.blocks.len() {
                let mut saved = gpu.zeros::<f32>(n)?;
                gpu.copy(&ws.x, &mut saved, n)?;
                per_block.push(saved);
                if i < model.blocks.len() {
                    model.run_blocks(&mut ws, w.len(), i..i + 1, None, None)?;
                }
            }
            inputs.push(per_block);
        }
        Ok(Self {
            model,
            ws,
            windows,
            inputs,
            freed: 0,
        })
    }
}

impl SuffixEvaluator for GpuEvaluator<'_> {
    fn n_blocks(&self) -> usize {
        self.model.blocks.len()
    }

    fn n_windows(&self) -> usize {
        self.windows.len()
    }

    fn has_attention(&self, i: usize) -> bool {
        self.model.blocks[i].attention.is_some()
    }

    fn ppl_without(&mut self, skip: Option<usize>) -> Result<f64> {
        let n_blocks = self.model.blocks.len();
        let first = skip.unwrap_or(n_blocks);
        let saved = skip.and_then(|i| self.model.blocks[i].attention.take());
        let result = (|| {
            let (mut nll, mut count) = (0f64, 0usize);
            for (cached, w) in self.inputs.iter().zip(self.windows) {
                self.model.gpu.copy(
                    &cached[first],
                    &mut self.ws.x,
                    w.len() * self.model.config.hidden,
                )?;
                self.model
                    .run_blocks(&mut self.ws, w.len(), first..n_blocks, None, None)?;
                nll += self.model.nll_from_hidden(&mut self.ws, w)?;
                count += w.len() - 1;
            }
            Ok((nll / count as f64).exp())
        })();
        if let Some(i) = skip {
            self.model.blocks[i].attention = saved;
        }
        result
    }

    fn remove(&mut self, chosen: usize) -> Result<()> {
        self.freed += self.model.remove_attention(chosen);
        let n_blocks = self.model.blocks.len();
        let hidden = self.model.config.hidden;
        for (per_block, w) in self.inputs.iter_mut().zip(self.windows) {
            let n = w.len() * hidden;
            self.model.gpu.copy(&per_block[chosen], &mut self.ws.x, n)?;
            for j in chosen..n_blocks {
                self.model
                    .run_blocks(&mut self.ws, w.len(), j..j + 1, None, None)?;
                self.model.gpu.copy(&self.ws.x, &mut per_block[j + 1], n)?;
            }
        }
        Ok(())
    }
}
