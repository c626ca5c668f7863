//! What a pruning method decided, as a value: kept FFN neurons per block and removed attention
//! submodules, independent of any backend or output format (exporters apply it to the source).

use crate::config::{BlockSpec, ModelConfig};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The structural decisions of one pruning run, relative to the source model's blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    /// The method that made them (e.g. "2SSP").
    pub method: String,
    /// Kept FFN neurons per block, ascending indices of the source model's neurons.
    pub ffn_kept: Vec<Vec<usize>>,
    /// Attention submodules removed, in removal order.
    pub removed_attention: Vec<usize>,
}

impl Decisions {
    /// Keeps everything: exporting with these writes the source model as it is.
    pub fn keep_all(config: &ModelConfig) -> Self {
        Self {
            method: "none".into(),
            ffn_kept: config
                .blocks
                .iter()
                .map(|b| (0..b.ffn_width).collect())
                .collect(),
            removed_attention: Vec::new(),
        }
    }

    /// Checks the decisions fit `config` (indices in range, ascending, no repeats).
    pub fn validate(&self, config: &ModelConfig) -> Result<()> {
        let n = config.n_layers();
        if self.ffn_kept.len() != n {
            bail!(
                "decisions list kept neurons for {} blocks but the model has {n}",
                self.ffn_kept.len()
            );
        }
        for (i, (kept, spec)) in self.ffn_kept.iter().zip(&config.blocks).enumerate() {
            if kept.windows(2).any(|w| w[0] >= w[1]) {
                bail!("block {i}: kept neurons must be strictly ascending");
            }
            if kept.last().is_some_and(|&j| j >= spec.ffn_width) {
                bail!(
                    "block {i}: kept neuron {} is outside its {} neurons",
                    kept.last().unwrap_or(&0),
                    spec.ffn_width
                );
            }
        }
        let mut seen = vec![false; n];
        for &b in &self.removed_attention {
            if b >= n {
                bail!("removed attention {b} does not exist (the model has {n} blocks)");
            }
            if config.blocks[b].attention.is_none() {
                bail!("block {b} has no attention to remove");
            }
            if std::mem::replace(&mut seen[b], true) {
                bail!("attention {b} is removed twice");
            }
        }
        Ok(())
    }

    /// The blocks of the pruned model.
    pub fn pruned_blocks(&self, config: &ModelConfig) -> Vec<BlockSpec> {
        config
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| BlockSpec {
                attention: if self.removed_attention.contains(&i) {
                    None
                } else {
                    b.attention.clone()
                },
                ffn_width: self.ffn_kept[i].len(),
            })
            .collect()
    }
}
