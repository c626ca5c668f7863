//! Loading a [`Model`] from an HF checkpoint folder, mapping each family's tensor names.

use super::{Attention, Block, Ffn, Linear, Model, Precision, Weights};
use crate::arch::ArchTraits;
use crate::config::{AttentionSpec, ModelConfig, FFN_WIDTHS_KEY, ZERO_ATTENTION_KEY};
use crate::weights::TensorStore;
use anyhow::{bail, Context, Result};
use std::path::Path;

impl Model {
    /// Loads config.json and the safetensors weights of `dir` as f32 (the exact reference).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_as(dir, Some(Precision::F32))
    }

    /// Loads `dir` with its matrices at `precision` (`None`: as the checkpoint stores them).
    pub fn load_as(dir: &Path, precision: Option<Precision>) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let store = TensorStore::open(dir)?;
        let precision = match precision {
            Some(p) => p,
            None => store.native_precision()?,
        };
        Self::from_store_as(config, &store, precision)
            .with_context(|| format!("cannot load model from {}", dir.display()))
    }

    /// Builds the model from a config and its tensors, in f32.
    pub fn from_store(config: ModelConfig, store: &TensorStore) -> Result<Self> {
        Self::from_store_as(config, store, Precision::F32)
    }

    /// Builds the model from a config and its tensors, matrices at `precision`.
    pub fn from_store_as(
        config: ModelConfig,
        store: &TensorStore,
        precision: Precision,
    ) -> Result<Self> {
        check_config_against_tensors(&config, store)?;
        let (hidden, vocab) = (config.hidden, config.vocab);
        let embed = store.weights(
            "model.embed_tokens.weight",
            &[vocab, config.embedding_width()],
            precision,
        )?;
        let blocks = (0..config.n_layers())
            .map(|i| load_block(&config, store, i, precision))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = match config.slicing {
            Some(_) => Vec::new(), // SliceGPT's weightless RMSN
            None => store.f32("model.norm.weight", &[hidden])?,
        };
        let lm_head = load_lm_head(&config, store, precision)?;
        let storage_dtype = store
            .dtype("model.embed_tokens.weight")
            .unwrap_or(safetensors::Dtype::F32);
        Ok(Self {
            config,
            embed,
            blocks,
            final_norm,
            lm_head,
            storage_dtype,
        })
    }
}

/// Refuses a config whose block count or embedding shape disagrees with the tensors present,
/// naming the config field, before any weight is read.
pub fn check_config_against_tensors(config: &ModelConfig, store: &TensorStore) -> Result<()> {
    let present = store.layer_count();
    if present != config.n_layers() {
        bail!(
            "config.json declares num_hidden_layers = {} but the weights hold {present} blocks (model.layers.0..{present})",
            config.n_layers()
        );
    }
    if let Some(shape) = store.shape("model.embed_tokens.weight") {
        if shape != [config.vocab, config.embedding_width()] {
            let width = match config.slicing {
                Some(_) => "a sliced embedding width",
                None => "hidden_size",
            };
            bail!(
                "config.json declares vocab_size = {} and {width} = {} but model.embed_tokens.weight has shape {shape:?}",
                config.vocab,
                config.embedding_width()
            );
        }
    }
    Ok(())
}

/// The separate LM head, or `None` when tied to the embeddings.
pub(crate) fn load_lm_head(
    config: &ModelConfig,
    store: &TensorStore,
    precision: Precision,
) -> Result<Option<Linear>> {
    if config.tie_embeddings && !store.contains("lm_head.weight") {
        return Ok(None);
    }
    Ok(Some(Linear {
        weight: store.weights("lm_head.weight", &[config.vocab, config.hidden], precision)?,
        bias: None,
        out_dim: config.vocab,
        in_dim: config.hidden,
    }))
}

/// Decoder block `i` (matrices at `precision`), mapped from the family's tensor names. Zero-filled
/// parts a config declares (attention kept as zeros, zero-padding neurons) are checked to be zero
/// and dropped.
pub(crate) fn load_block(
    config: &ModelConfig,
    store: &TensorStore,
    i: usize,
    precision: Precision,
) -> Result<Block> {
    let stored = config.stored_block(i);
    let prefix = format!("model.layers.{i}");
    let arch = &config.arch;
    let widths = |w: Option<(usize, usize)>| Widths {
        io: w.unwrap_or((config.hidden, config.hidden)),
        sliced: w.is_some(),
    };
    let slicing = config.slicing.as_ref();
    let mut attention = stored
        .attention
        .as_ref()
        .map(|a| {
            let w = widths(slicing.map(|s| s.attention_widths(i)));
            load_attention(arch, store, &prefix, a, w, precision)
        })
        .transpose()?;
    let mut ffn = if stored.ffn_width == 0 {
        None
    } else {
        let w = widths(slicing.map(|s| s.ffn_widths(i)));
        Some(load_ffn(
            arch,
            store,
            &prefix,
            stored.ffn_width,
            w,
            precision,
        )?)
    };
    let effective = &config.blocks[i];
    if effective.attention.is_none() {
        if let Some(a) = attention.take() {
            let zero = a.o.weight.all_zero(0..a.o.weight.len())
                && a.o.bias.iter().flatten().all(|&v| v == 0.0);
            if !zero {
                bail!("block {i} is declared without attention ({ZERO_ATTENTION_KEY}) but its o_proj is not zero");
            }
        }
    }
    if let Some(f) = &mut ffn {
        let width = effective.ffn_width;
        if width < f.width() {
            let padded = f.width();
            let up = &f.gate_up.weight;
            let up_zero = up.all_zero((padded + width) * f.gate_up.in_dim..up.len());
            let down_zero = (0..f.down.out_dim)
                .all(|r| f.down.weight.all_zero(r * padded + width..(r + 1) * padded));
            if !(up_zero && down_zero) {
                bail!("block {i}: the FFN neurons past {width} ({FFN_WIDTHS_KEY}) are not zero padding");
            }
            f.keep_neurons(&(0..width).collect::<Vec<_>>());
        }
    }
    if effective.ffn_width == 0 {
        ffn = None; // all zero padding: the FFN was removed
    }
    Ok(Block { attention, ffn })
}

/// Residual widths a submodule reads and writes, and whether SliceGPT sliced it.
#[derive(Clone, Copy)]
struct Widths {
    io: (usize, usize),
    sliced: bool,
}

impl Widths {
    /// The pre-norm: stored, or none for SliceGPT's weightless RMSN.
    fn norm(self, store: &TensorStore, name: &str) -> Result<Vec<f32>> {
        match self.sliced {
            true => Ok(Vec::new()),
            false => store.f32(name, &[self.io.0]),
        }
    }

    /// SliceGPT's shortcut matrix `{prefix}.{name}`, stored `[in, out]` as its authors store
    /// it (`residual @ Q`), kept transposed as a linear layer.
    fn shortcut(
        self,
        store: &TensorStore,
        name: &str,
        precision: Precision,
    ) -> Result<Option<Linear>> {
        if !self.sliced {
            return Ok(None);
        }
        let (w_in, w_out) = self.io;
        let q = store.f32(name, &[w_in, w_out])?;
        let transposed: Vec<f32> = (0..w_out * w_in)
            .map(|k| q[(k % w_in) * w_out + k / w_in])
            .collect();
        Ok(Some(Linear {
            weight: Weights::from_f32(transposed, precision),
            bias: None,
            out_dim: w_out,
            in_dim: w_in,
        }))
    }
}

fn load_attention(
    arch: &ArchTraits,
    store: &TensorStore,
    prefix: &str,
    spec: &AttentionSpec,
    widths: Widths,
    precision: Precision,
) -> Result<Attention> {
    let (w_in, w_out) = widths.io;
    let load_linear =
        |name: &str, out: usize, bias: bool| load_linear(store, name, out, w_in, bias, precision);
    let (q_dim, kv_dim) = (spec.q_dim(), spec.kv_dim());
    let qkv_rows = q_dim + 2 * kv_dim;
    let p = format!("{prefix}.self_attn");
    let qkv = if arch.fused_qkv {
        load_linear(&format!("{p}.qkv_proj"), qkv_rows, arch.qkv_bias)?
    } else {
        let parts = ["q_proj", "k_proj", "v_proj"]
            .iter()
            .zip([q_dim, kv_dim, kv_dim])
            .map(|(name, rows)| load_linear(&format!("{p}.{name}"), rows, arch.qkv_bias))
            .collect::<Result<Vec<_>>>()?;
        concat_rows(&parts)
    };
    let o = self::load_linear(
        store,
        &format!("{p}.o_proj"),
        w_out,
        q_dim,
        arch.o_bias,
        precision,
    )?;
    let head_norm = |name: &str| -> Result<Option<Vec<f32>>> {
        arch.qk_norm
            .then(|| store.f32(&format!("{p}.{name}.weight"), &[spec.head_dim]))
            .transpose()
    };
    let post_norm = arch
        .sandwich_norms
        .then(|| {
            store.f32(
                &format!("{prefix}.post_attention_layernorm.weight"),
                &[w_out],
            )
        })
        .transpose()?;
    Ok(Attention {
        spec: spec.clone(),
        norm: widths.norm(store, &format!("{prefix}.input_layernorm.weight"))?,
        qkv,
        o,
        q_norm: head_norm("q_norm")?,
        k_norm: head_norm("k_norm")?,
        post_norm,
        shortcut: widths.shortcut(store, &format!("{prefix}.attn_shortcut_Q"), precision)?,
    })
}

fn load_ffn(
    arch: &ArchTraits,
    store: &TensorStore,
    prefix: &str,
    width: usize,
    widths: Widths,
    precision: Precision,
) -> Result<Ffn> {
    let (w_in, w_out) = widths.io;
    let p = format!("{prefix}.mlp");
    let load_linear =
        |name: &str, out: usize, bias: bool| load_linear(store, name, out, w_in, bias, precision);
    let gate_up = if arch.fused_gate_up {
        load_linear(&format!("{p}.gate_up_proj"), 2 * width, arch.mlp_bias)?
    } else {
        concat_rows(&[
            load_linear(&format!("{p}.gate_proj"), width, arch.mlp_bias)?,
            load_linear(&format!("{p}.up_proj"), width, arch.mlp_bias)?,
        ])
    };
    let (norm_name, post_norm) = if arch.sandwich_norms {
        (
            "pre_feedforward_layernorm",
            Some(store.f32(
                &format!("{prefix}.post_feedforward_layernorm.weight"),
                &[w_out],
            )?),
        )
    } else {
        ("post_attention_layernorm", None)
    };
    Ok(Ffn {
        norm: widths.norm(store, &format!("{prefix}.{norm_name}.weight"))?,
        gate_up,
        down: self::load_linear(
            store,
            &format!("{p}.down_proj"),
            w_out,
            width,
            arch.mlp_bias,
            precision,
        )?,
        post_norm,
        shortcut: widths.shortcut(store, &format!("{prefix}.mlp_shortcut_Q"), precision)?,
    })
}

fn load_linear(
    store: &TensorStore,
    name: &str,
    out_dim: usize,
    in_dim: usize,
    bias: bool,
    precision: Precision,
) -> Result<Linear> {
    Ok(Linear {
        weight: store.weights(&format!("{name}.weight"), &[out_dim, in_dim], precision)?,
        bias: bias
            .then(|| store.f32(&format!("{name}.bias"), &[out_dim]))
            .transpose()?,
        out_dim,
        in_dim,
    })
}

/// Stacks linear layers with the same input width into one (rows in order).
fn concat_rows(parts: &[Linear]) -> Linear {
    let in_dim = parts[0].in_dim;
    let out_dim = parts.iter().map(|p| p.out_dim).sum();
    let weight = Weights::concat(&parts.iter().map(|p| &p.weight).collect::<Vec<_>>());
    let bias = parts[0].bias.is_some().then(|| {
        parts
            .iter()
            .flat_map(|p| p.bias.iter().flatten().copied())
            .collect()
    });
    Linear {
        weight,
        bias,
        out_dim,
        in_dim,
    }
}
