//! Model configuration: an HF `config.json` turned into one common, per-block description.
//!
//! Every block may lack its attention and may have its own FFN width. Heterogeneous models are
//! described with NVIDIA DeciLM / nemotron-nas style `block_configs` (one entry per block with
//! `attention.no_op`, `attention.n_heads_in_group` and `ffn.intermediate_size` or `ffn.ffn_mult`),
//! added to the original config so that every family keeps its own `model_type`.

mod params;
pub mod rope;
pub mod slicing;

use crate::arch::{is_sliding_layer_type, ArchTraits, Family};
use crate::limits::{
    bounded, MAX_CONTEXT, MAX_FFN, MAX_HEADS, MAX_HEAD_DIM, MAX_HIDDEN, MAX_LAYERS, MAX_VOCAB,
};
use anyhow::{bail, Context, Result};
use rope::RopeSpec;
use serde_json::Value;
use std::path::Path;

/// FFN activation applied to the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x * sigmoid(x).
    Silu,
    /// GELU with the tanh approximation.
    GeluTanh,
}

/// Shape and behaviour of one attention submodule.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionSpec {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA groups).
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Multiplier of q·k.
    pub scale: f32,
    /// Sliding window (keys with `pos - j < window` are visible), or full causal.
    pub window: Option<usize>,
    /// Rotary embedding.
    pub rope: RopeSpec,
}

impl AttentionSpec {
    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// One decoder block: optional attention, FFN of its own width (0 = no FFN).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSpec {
    /// The attention submodule, absent when pruned away.
    pub attention: Option<AttentionSpec>,
    /// Number of FFN neurons (intermediate size).
    pub ffn_width: usize,
}

/// The common description of a decoder-only model.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// HF `model_type` as written in config.json.
    pub model_type: String,
    /// Family traits resolved against the config.
    pub arch: ArchTraits,
    /// Residual stream width.
    pub hidden: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// FFN gate activation.
    pub activation: Activation,
    /// The LM head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Gemma-style `tanh(logits / cap) * cap` on the final logits.
    pub final_logit_softcap: Option<f32>,
    /// The decoder blocks.
    pub blocks: Vec<BlockSpec>,
    /// The blocks as stored on disk, where they differ from `blocks`: exports that keep removed
    /// attention as zeros (`twossp_zero_attention`) or pad FFNs with zero neurons
    /// (`twossp_ffn_widths`). Loading reads these shapes, checks the extra weights are zero and
    /// drops them, so the engine never computes them.
    pub stored_blocks: Option<Vec<BlockSpec>>,
    /// Residual widths of a model sliced by SliceGPT (`None`: every site has the hidden size).
    pub slicing: Option<slicing::Slicing>,
    /// The original JSON, kept so pruned models can be written back with every field intact.
    pub raw: Value,
}

impl ModelConfig {
    /// Reads and parses `config.json` from a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("model folder {} does not exist", dir.display());
        }
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads one config.json file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let raw: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_hf(raw).with_context(|| format!("invalid model config {}", path.display()))
    }

    /// Parses an HF config (transformers v4 or v5 layout, with optional `block_configs`).
    pub fn from_hf(raw: Value) -> Result<Self> {
        if !raw.is_object() {
            bail!("config is not a JSON object");
        }
        let model_type = raw["model_type"]
            .as_str()
            .context("missing 'model_type'")?
            .to_string();
        let family = Family::from_model_type(&model_type)?;
        let arch = family.traits(&raw);
        let hidden = req_usize(&raw, "hidden_size", MAX_HIDDEN)?;
        let vocab = req_usize(&raw, "vocab_size", MAX_VOCAB)?;
        let n_layers = req_usize(&raw, "num_hidden_layers", MAX_LAYERS)?;
        let n_heads = req_usize(&raw, "num_attention_heads", MAX_HEADS)?;
        let n_kv_heads = opt_usize(&raw, "num_key_value_heads", MAX_HEADS)?.unwrap_or(n_heads);
        let head_dim =
            opt_usize(&raw, "head_dim", MAX_HEAD_DIM)?.unwrap_or(hidden / n_heads.max(1));
        let norm_eps = raw["rms_norm_eps"]
            .as_f64()
            .context("missing numeric 'rms_norm_eps'")? as f32;
        let (act_field, act_default) = family.activation_field();
        let activation = parse_activation(raw[act_field].as_str().unwrap_or(act_default))?;
        let tie_embeddings = raw["tie_word_embeddings"]
            .as_bool()
            .unwrap_or(matches!(family, Family::Gemma3));
        let final_logit_softcap = raw["final_logit_softcapping"].as_f64().map(|v| v as f32);
        if !raw["attn_logit_softcapping"].is_null() {
            bail!("attn_logit_softcapping is not supported");
        }
        if hidden == 0 || vocab == 0 || head_dim == 0 {
            bail!("hidden_size ({hidden}), vocab_size ({vocab}) and head_dim ({head_dim}) must be positive");
        }
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            bail!("num_attention_heads ({n_heads}) must be a positive multiple of num_key_value_heads ({n_kv_heads})");
        }

        let sliding = sliding_layers(&raw, family, n_layers)?;
        let window = opt_usize(&raw, "sliding_window", MAX_CONTEXT)?;
        let rotary_dim = rotary_dim(&raw, head_dim)?;
        let scale = family.attention_scale(&raw, head_dim);
        let default_ffn = opt_usize(&raw, "intermediate_size", MAX_FFN)?;
        let block_configs = match &raw["block_configs"] {
            Value::Null => None,
            Value::Array(items) if items.len() == n_layers => Some(items.clone()),
            Value::Array(items) => bail!(
                "block_configs has {} entries but num_hidden_layers is {n_layers}",
                items.len()
            ),
            _ => bail!("block_configs must be a list"),
        };

        let mut blocks = Vec::with_capacity(n_layers);
        for (i, &is_sliding) in sliding.iter().enumerate() {
            let entry = block_configs.as_ref().map(|b| &b[i]);
            let mut kv_heads = n_kv_heads;
            let mut block_window = None;
            let attention_present = match entry.map(|e| &e["attention"]) {
                Some(att) if att.is_object() => {
                    if att["replace_with_linear"].as_bool().unwrap_or(false) {
                        bail!("block {i}: attention.replace_with_linear is not supported");
                    }
                    if let Some(group) = att["n_heads_in_group"].as_u64() {
                        if group == 0 || n_heads % group as usize != 0 {
                            bail!("block {i}: n_heads_in_group {group} does not divide {n_heads} heads");
                        }
                        kv_heads = n_heads / group as usize;
                    }
                    block_window = opt_usize(att, "window_length", MAX_CONTEXT)
                        .with_context(|| format!("block {i}: invalid attention.window_length"))?;
                    !att["no_op"].as_bool().unwrap_or(false)
                }
                _ => true,
            };
            let attention = if attention_present {
                let rope = rope_for_layer(&raw, family, is_sliding, rotary_dim)?;
                let window = if let Some(w) = block_window {
                    Some(w)
                } else if is_sliding {
                    Some(window.with_context(|| {
                        format!("block {i} slides but 'sliding_window' is missing")
                    })?)
                } else {
                    None
                };
                Some(AttentionSpec {
                    n_heads,
                    n_kv_heads: kv_heads,
                    head_dim,
                    scale,
                    window,
                    rope,
                })
            } else {
                None
            };
            let ffn_width = match entry.map(|e| &e["ffn"]) {
                Some(ffn) if ffn.is_object() => ffn_width_of(ffn, hidden)
                    .with_context(|| format!("block {i}: invalid ffn entry in block_configs"))?,
                _ => default_ffn.context("missing 'intermediate_size'")?,
            };
            blocks.push(BlockSpec {
                attention,
                ffn_width,
            });
        }
        let stored_blocks = stored_layout(&raw, &blocks)?;
        if let Some(stored) = &stored_blocks {
            blocks = effective_blocks(&raw, stored)?;
        }
        let slicing = slicing::Slicing::parse(&raw, hidden, n_layers)?;
        if slicing.is_some() && (stored_blocks.is_some() || tie_embeddings) {
            bail!(
                "a SliceGPT model ('{}') has an untied LM head and no zero-padded blocks",
                slicing::SLICING_KEY
            );
        }
        Ok(Self {
            model_type,
            arch,
            hidden,
            vocab,
            norm_eps,
            activation,
            tie_embeddings,
            final_logit_softcap,
            blocks,
            stored_blocks,
            slicing,
            raw,
        })
    }

    /// Block `i` as stored on disk (differs from `blocks[i]` only for zero-padded exports).
    pub fn stored_block(&self, i: usize) -> &BlockSpec {
        self.stored_blocks
            .as_ref()
            .map_or(&self.blocks[i], |s| &s[i])
    }

    /// FFN width of every block.
    pub fn ffn_widths(&self) -> Vec<usize> {
        self.blocks.iter().map(|b| b.ffn_width).collect()
    }

    /// Width of the embedding rows (sliced by SliceGPT, else the hidden size).
    pub fn embedding_width(&self) -> usize {
        self.slicing
            .as_ref()
            .map_or(self.hidden, |s| s.embedding_width())
    }

    /// Number of decoder blocks.
    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }
}

/// Config key listing blocks whose attention weights are stored as zeros (removed attention kept
/// so that stock loaders accept the folder).
pub const ZERO_ATTENTION_KEY: &str = "twossp_zero_attention";
/// Config key listing each block's real FFN width when the stored width is zero-padded.
pub const FFN_WIDTHS_KEY: &str = "twossp_ffn_widths";

/// The stored blocks when the config declares zero-filled parts, else `None`.
fn stored_layout(raw: &Value, blocks: &[BlockSpec]) -> Result<Option<Vec<BlockSpec>>> {
    let declared = !raw[ZERO_ATTENTION_KEY].is_null() || !raw[FFN_WIDTHS_KEY].is_null();
    Ok(declared.then(|| blocks.to_vec()))
}

/// The blocks the engine computes: declared zero attention removed, FFNs at their real widths.
fn effective_blocks(raw: &Value, stored: &[BlockSpec]) -> Result<Vec<BlockSpec>> {
    let mut blocks = stored.to_vec();
    if let Some(list) = raw.get(ZERO_ATTENTION_KEY).filter(|v| !v.is_null()) {
        let list = list
            .as_array()
            .with_context(|| format!("'{ZERO_ATTENTION_KEY}' must be a list of block indices"))?;
        for v in list {
            let i = v
                .as_u64()
                .filter(|&i| (i as usize) < blocks.len())
                .with_context(|| format!("'{ZERO_ATTENTION_KEY}' holds {v}, not a block index"))?;
            blocks[i as usize].attention = None;
        }
    }
    if let Some(list) = raw.get(FFN_WIDTHS_KEY).filter(|v| !v.is_null()) {
        let widths = list
            .as_array()
            .filter(|w| w.len() == blocks.len())
            .with_context(|| format!("'{FFN_WIDTHS_KEY}' must list one width per block"))?;
        for (i, (b, w)) in blocks.iter_mut().zip(widths).enumerate() {
            let w = w
                .as_u64()
                .filter(|&w| w as usize <= b.ffn_width)
                .with_context(|| {
                    format!(
                        "block {i}: '{FFN_WIDTHS_KEY}' entry {w} exceeds the stored width {}",
                        b.ffn_width
                    )
                })?;
            b.ffn_width = w as usize;
        }
    }
    Ok(blocks)
}

fn req_usize(raw: &Value, key: &str, max: u64) -> Result<usize> {
    opt_usize(raw, key, max)?.with_context(|| format!("missing '{key}'"))
}

/// An optional non-negative integer field, at most `max` (see [`crate::limits`]).
fn opt_usize(raw: &Value, key: &str, max: u64) -> Result<Option<usize>> {
    match &raw[key] {
        Value::Null => Ok(None),
        v => {
            let n = v
                .as_u64()
                .with_context(|| format!("'{key}' must be a non-negative integer, got {v}"))?;
            bounded(key, n, max).map(Some)
        }
    }
}

fn parse_activation(name: &str) -> Result<Activation> {
    match name {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
        other => bail!("unsupported activation '{other}'"),
    }
}

/// Sliding flag per layer: `layer_types` when present, else the family's v4 rule.
fn sliding_layers(raw: &Value, family: Family, n_layers: usize) -> Result<Vec<bool>> {
    match &raw["layer_types"] {
        Value::Array(kinds) => {
            if kinds.len() != n_layers {
                bail!(
                    "layer_types has {} entries but num_hidden_layers is {n_layers}",
                    kinds.len()
                );
            }
            kinds
                .iter()
                .map(|k| is_sliding_layer_type(k.as_str().unwrap_or("?")))
                .collect()
        }
        Value::Null => Ok(family.default_sliding_layers(raw, n_layers)),
        _ => bail!("layer_types must be a list"),
    }
}

/// Rotated dimensions: `partial_rotary_factor` (top level or in `rope_parameters`) of the head.
fn rotary_dim(raw: &Value, head_dim: usize) -> Result<usize> {
    let factor = raw["partial_rotary_factor"]
        .as_f64()
        .or_else(|| raw["rope_parameters"]["partial_rotary_factor"].as_f64())
        .unwrap_or(1.0);
    if !(factor > 0.0 && factor <= 1.0) {
        bail!("partial_rotary_factor must be in (0, 1], got {factor}");
    }
    Ok((head_dim as f64 * factor) as usize)
}

/// RoPE of one layer, from v5 `rope_parameters` (possibly per layer type) or v4 fields.
fn rope_for_layer(
    raw: &Value,
    family: Family,
    sliding: bool,
    rotary_dim: usize,
) -> Result<RopeSpec> {
    let params = &raw["rope_parameters"];
    if params.is_object() {
        let layer_key = if sliding {
            "sliding_attention"
        } else {
            "full_attention"
        };
        let entry = if params[layer_key].is_object() {
            &params[layer_key]
        } else {
            params
        };
        let theta = entry["rope_theta"]
            .as_f64()
            .or_else(|| raw["rope_theta"].as_f64())
            .context("rope_parameters lacks 'rope_theta'")? as f32;
        return RopeSpec::from_hf(theta, rotary_dim, Some(entry));
    }
    let global_theta = raw["rope_theta"].as_f64().unwrap_or(10_000.0) as f32;
    match (sliding, family.local_rope_theta(raw)) {
        (true, Some(local)) => RopeSpec::from_hf(local, rotary_dim, None),
        _ => RopeSpec::from_hf(global_theta, rotary_dim, Some(&raw["rope_scaling"])),
    }
}

/// FFN width of a `block_configs` entry: `intermediate_size`, or DeciLM's `ffn_mult` formula.
fn ffn_width_of(ffn: &Value, hidden: usize) -> Result<usize> {
    if ffn["no_op"].as_bool().unwrap_or(false) {
        return Ok(0);
    }
    if ffn["replace_with_linear"].as_bool().unwrap_or(false) {
        bail!("ffn.replace_with_linear is not supported");
    }
    if let Some(width) = opt_usize(ffn, "intermediate_size", MAX_FFN)? {
        return Ok(width);
    }
    let mult = ffn["ffn_mult"]
        .as_f64()
        .context("needs 'intermediate_size' or 'ffn_mult'")?;
    let raw_width = 2.0 * mult * hidden as f64 / 3.0;
    if !(raw_width >= 0.0 && raw_width <= MAX_FFN as f64) {
        bail!("'ffn_mult' {mult} gives an FFN width outside 0..={MAX_FFN}");
    }
    Ok((raw_width as usize).div_ceil(256) * 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama_like() -> Value {
        json!({"model_type": "llama", "hidden_size": 64, "vocab_size": 100, "num_hidden_layers": 3,
               "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
               "intermediate_size": 96, "rope_theta": 10000.0})
    }

    #[test]
    fn shipped_synthetic_configs_parse() {
        // configs/*.json drive --synthetic-weights in scripts/gpu-check.sh.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let c = ModelConfig::from_file(&dir.join("llama-2-7b.json")).unwrap();
        assert_eq!(
            (c.hidden, c.vocab, c.n_layers(), c.blocks[0].ffn_width),
            (4096, 32000, 32, 11008)
        );
        assert_eq!(c.blocks[0].attention.as_ref().unwrap().head_dim, 128);
        let c = ModelConfig::from_file(&dir.join("smollm2-135m.json")).unwrap();
        assert_eq!(
            (c.hidden, c.vocab, c.n_layers(), c.blocks[0].ffn_width),
            (576, 49152, 30, 1536)
        );
        assert!(c.tie_embeddings);
    }

    #[test]
    fn homogeneous_llama() {
        let c = ModelConfig::from_hf(llama_like()).unwrap();
        assert_eq!(c.n_layers(), 3);
        let a = c.blocks[0].attention.as_ref().unwrap();
        assert_eq!(
            (a.n_heads, a.n_kv_heads, a.head_dim, a.window),
            (4, 2, 16, None)
        );
        assert_eq!(c.blocks[2].ffn_width, 96);
    }

    #[test]
    fn block_configs_make_blocks_heterogeneous() {
        let mut raw = llama_like();
        raw["block_configs"] = json!([
            {"attention": {"no_op": false, "n_heads_in_group": 4}, "ffn": {"intermediate_size": 40}},
            {"attention": {"no_op": true}, "ffn": {"intermediate_size": 17}},
            {"attention": {"no_op": false}, "ffn": {"ffn_mult": 1.3}},
        ]);
        let c = ModelConfig::from_hf(raw).unwrap();
        assert_eq!(c.blocks[0].attention.as_ref().unwrap().n_kv_heads, 1);
        assert!(c.blocks[1].attention.is_none());
        assert_eq!(
            c.blocks.iter().map(|b| b.ffn_width).collect::<Vec<_>>(),
            vec![40, 17, 256]
        );
    }

    #[test]
    fn unsupported_model_type_is_named() {
        let mut raw = llama_like();
        raw["model_type"] = json!("gpt_neox");
        let err = ModelConfig::from_hf(raw).unwrap_err().to_string();
        assert!(err.contains("gpt_neox"), "{err}");
    }

    #[test]
    fn gemma3_v4_layer_pattern_and_local_base() {
        let raw = json!({"model_type": "gemma3_text", "hidden_size": 32, "vocab_size": 50,
            "num_hidden_layers": 6, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "rms_norm_eps": 1e-6, "intermediate_size": 40, "sliding_window": 8, "sliding_window_pattern": 3,
            "rope_theta": 1e6, "rope_local_base_freq": 1e4, "query_pre_attn_scalar": 24});
        let c = ModelConfig::from_hf(raw).unwrap();
        let windows: Vec<_> = c
            .blocks
            .iter()
            .map(|b| b.attention.as_ref().unwrap().window)
            .collect();
        assert_eq!(
            windows,
            vec![Some(8), Some(8), None, Some(8), Some(8), None]
        );
        assert_eq!(c.blocks[0].attention.as_ref().unwrap().rope.theta, 1e4);
        assert_eq!(c.blocks[2].attention.as_ref().unwrap().rope.theta, 1e6);
        assert!((c.blocks[0].attention.as_ref().unwrap().scale - 24f32.powf(-0.5)).abs() < 1e-7);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert!(c.tie_embeddings);
    }
}
