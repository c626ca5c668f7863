//! SliceGPT's sliced widths (Ashkboos et al., "SliceGPT", ICLR 2024), as `config.json` records them
//! under [`SLICING_KEY`]: the residual stream's width at every site, and the parameter counts that
//! follow (no norm weights: SliceGPT folds them into the next linear layers).

use super::ModelConfig;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

/// Config key of a model sliced by SliceGPT.
pub const SLICING_KEY: &str = "twossp_slicegpt";

/// The residual widths of a sliced model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Slicing {
    /// Width after the embeddings (site 0), after block `i`'s attention (site `2i + 1`) and after
    /// block `i` (site `2i + 2`); the last equals the hidden size (the LM head is not sliced).
    pub widths: Vec<usize>,
    /// Epsilon of the weightless RMSNorms, whose mean is over the original hidden size.
    pub rms_eps: f32,
}

impl Slicing {
    /// Widths of the embeddings.
    pub fn embedding_width(&self) -> usize {
        self.widths[0]
    }

    /// Input and output widths of block `i`'s attention.
    pub fn attention_widths(&self, i: usize) -> (usize, usize) {
        (self.widths[2 * i], self.widths[2 * i + 1])
    }

    /// Input and output widths of block `i`'s MLP.
    pub fn ffn_widths(&self, i: usize) -> (usize, usize) {
        (self.widths[2 * i + 1], self.widths[2 * i + 2])
    }

    /// Reads [`SLICING_KEY`] from a raw config (`None` when absent), checked against the shape.
    pub fn parse(raw: &Value, hidden: usize, n_layers: usize) -> Result<Option<Self>> {
        let Some(entry) = raw.get(SLICING_KEY).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let widths: Vec<usize> = entry["residual_widths"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|w| w as usize)).collect())
            .with_context(|| format!("'{SLICING_KEY}.residual_widths' must be a list of widths"))?;
        if widths.len() != 2 * n_layers + 1 {
            bail!(
                "'{SLICING_KEY}.residual_widths' has {} entries, but {n_layers} blocks need {}",
                widths.len(),
                2 * n_layers + 1
            );
        }
        if let Some(w) = widths.iter().find(|&&w| w == 0 || w > hidden) {
            bail!("'{SLICING_KEY}': width {w} is outside 1..={hidden}");
        }
        if widths[2 * n_layers] != hidden {
            bail!("'{SLICING_KEY}': the last block's output must have the hidden size {hidden}");
        }
        let rms_eps = entry["rms_norm_eps"]
            .as_f64()
            .with_context(|| format!("'{SLICING_KEY}.rms_norm_eps' must be a number"))?
            as f32;
        Ok(Some(Self { widths, rms_eps }))
    }

    /// The config entry.
    pub fn to_json(&self) -> Value {
        json!({ "residual_widths": self.widths, "rms_norm_eps": self.rms_eps })
    }
}

impl ModelConfig {
    /// P_main of a sliced model: each submodule's sliced projections, biases, q/k norms and its
    /// shortcut matrix (`in × out`).
    pub(super) fn sliced_params_main(&self, slicing: &Slicing) -> u64 {
        let arch = &self.arch;
        (0..self.blocks.len())
            .map(|i| {
                let block = &self.blocks[i];
                let (a_in, a_out) = slicing.attention_widths(i);
                let (f_in, f_out) = slicing.ffn_widths(i);
                let attention = block.attention.as_ref().map_or(0, |a| {
                    let (q, kv) = (a.q_dim(), a.kv_dim());
                    let qkv_bias = if arch.qkv_bias { q + 2 * kv } else { 0 };
                    let o_bias = if arch.o_bias { a_out } else { 0 };
                    let qk_norm = if arch.qk_norm { 2 * a.head_dim } else { 0 };
                    a_in * (q + 2 * kv) + q * a_out + qkv_bias + o_bias + qk_norm + a_in * a_out
                });
                let w = block.ffn_width;
                let bias = if arch.mlp_bias { 2 * w + f_out } else { 0 };
                let ffn = 2 * w * f_in + w * f_out + bias + f_in * f_out;
                (attention + ffn) as u64
            })
            .sum()
    }

    /// All parameters of a sliced model: blocks, sliced embeddings and the (untied) LM head.
    pub(super) fn sliced_params_total(&self, slicing: &Slicing) -> u64 {
        let embed = (self.vocab * slicing.embedding_width()) as u64;
        let head = (self.vocab * self.hidden) as u64;
        self.sliced_params_main(slicing) + embed + head
    }
}
