//! GGUF architecture metadata → Hugging Face `config.json`, and GGUF → HF tensor names/layouts.

use super::reader::{GgufFile, MetaValue, TensorInfo};
use crate::limits::{bounded, MAX_FFN, MAX_HEADS, MAX_HEAD_DIM, MAX_HIDDEN, MAX_LAYERS};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// Architectures the importer understands (GGUF `general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama family (also SmolLM, Mistral v0.x converted as "llama").
    Llama,
    /// Gemma 3 text decoder.
    Gemma3,
    /// Qwen2 / Qwen2.5 (q/k/v biases).
    Qwen2,
    /// Qwen3 (q/k RMSNorm).
    Qwen3,
}

impl Arch {
    /// Parses `general.architecture`; unknown names are an error naming them.
    pub fn from_gguf(name: &str) -> Result<Self> {
        Ok(match name {
            // llama.cpp's `deci` (DeciLM / nemotron-nas): Llama blocks with per-layer heads and widths.
            "llama" | "deci" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => bail!(
                "unsupported GGUF architecture '{other}' (supported: llama, deci, gemma3, qwen2, qwen3)"
            ),
        })
    }

    /// The HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3_text",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// The HF model class.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// Hyper-parameters read from the GGUF, checked against the tensors.
#[derive(Clone, Debug)]
pub struct ArchParams {
    /// Architecture.
    pub arch: Arch,
    /// The GGUF architecture string (metadata key prefix).
    pub gguf_arch: String,
    /// Residual width.
    pub hidden: usize,
    /// FFN width.
    pub intermediate: usize,
    /// Decoder blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// The GGUF has no `output.weight`: the LM head is the embedding.
    pub tied: bool,
    /// Per-layer shapes (heads 0: no attention), from per-layer metadata arrays where present.
    pub layers: Vec<LayerShape>,
}

/// One layer's shape as llama.cpp's per-layer hyper-parameters give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerShape {
    /// Query heads (0: the layer has no attention).
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// FFN width.
    pub ffn: usize,
}

impl ArchParams {
    /// True when layers differ (removed attention or per-layer FFN widths).
    pub fn heterogeneous(&self) -> bool {
        self.layers.windows(2).any(|w| w[0] != w[1]) || self.layers.iter().any(|l| l.heads == 0)
    }
}

impl ArchParams {
    /// Reads the architecture's hyper-parameters from the metadata and checks the embedding.
    pub fn read(g: &GgufFile) -> Result<Self> {
        let gguf_arch = g.req_str("general.architecture")?.to_string();
        let arch = Arch::from_gguf(&gguf_arch)?;
        let key = |k: &str| format!("{gguf_arch}.{k}");
        let scalar = |k: &str| -> Result<u64> {
            let name = key(k);
            match g.get(&name) {
                Some(v) if v.as_array().is_some() => {
                    bail!("metadata key '{name}' must be a single value, not a per-layer list")
                }
                _ => Ok(g.req_u64(&name)?),
            }
        };
        let hidden = bounded(
            &key("embedding_length"),
            scalar("embedding_length")?,
            MAX_HIDDEN,
        )?;
        let n_layers = bounded(&key("block_count"), scalar("block_count")?, MAX_LAYERS)?;
        // Any of these may be one value or one per layer (llama.cpp's get_key_or_arr).
        let per_layer = |k: &str, max: u64| -> Result<Option<Vec<usize>>> {
            let name = key(k);
            let one = |x: &MetaValue| -> Result<usize> {
                let n = x
                    .as_u64()
                    .with_context(|| format!("metadata key '{name}' holds a non-integer"))?;
                bounded(&name, n, max)
            };
            match g.get(&name) {
                None => Ok(None),
                Some(v) => match v.as_array() {
                    Some(items) if items.len() == n_layers => {
                        items.iter().map(one).collect::<Result<Vec<_>>>().map(Some)
                    }
                    Some(items) => bail!(
                        "metadata key '{name}' lists {} layers but block_count is {n_layers}",
                        items.len()
                    ),
                    None => Ok(Some(vec![one(v)?; n_layers])),
                },
            }
        };
        let ffn = per_layer("feed_forward_length", MAX_FFN)?
            .with_context(|| format!("missing metadata key '{}'", key("feed_forward_length")))?;
        let heads = per_layer("attention.head_count", MAX_HEADS)?
            .with_context(|| format!("missing metadata key '{}'", key("attention.head_count")))?;
        let kv_heads =
            per_layer("attention.head_count_kv", MAX_HEADS)?.unwrap_or_else(|| heads.clone());
        let layers: Vec<LayerShape> = (0..n_layers)
            .map(|i| LayerShape {
                heads: heads[i],
                kv_heads: kv_heads[i],
                ffn: ffn[i],
            })
            .collect();
        if let Some(i) = layers.iter().position(|l| {
            (l.heads == 0) != (l.kv_heads == 0) || (l.heads > 0 && l.heads % l.kv_heads != 0)
        }) {
            bail!("layer {i}: {} heads and {} kv heads are not a valid attention (linear attention is not supported)", heads[i], kv_heads[i]);
        }
        let with_attention = layers.iter().find(|l| l.heads > 0);
        let n_heads = with_attention.map_or(0, |l| l.heads);
        let n_kv_heads = with_attention.map_or(0, |l| l.kv_heads);
        let intermediate = ffn.iter().copied().max().unwrap_or(0);
        if hidden == 0
            || n_layers == 0
            || n_heads == 0
            || n_kv_heads == 0
            || n_heads % n_kv_heads != 0
        {
            bail!("invalid shape metadata: hidden {hidden}, blocks {n_layers}, heads {n_heads}, kv heads {n_kv_heads}");
        }
        let head_dim = match g.opt_u64(&key("attention.key_length"))? {
            Some(k) => bounded(&key("attention.key_length"), k, MAX_HEAD_DIM)?,
            None => hidden / n_heads,
        };
        if let Some(v) = g.opt_u64(&key("attention.value_length"))? {
            if v as usize != head_dim {
                bail!(
                    "attention.value_length {v} differs from key_length {head_dim}: not supported"
                );
            }
        }
        if let Some(rot) = g.opt_u64(&key("rope.dimension_count"))? {
            if rot as usize != head_dim {
                bail!("rope.dimension_count {rot} differs from the head dimension {head_dim}: partial rotary is not supported");
            }
        }
        let embd = g
            .tensor("token_embd.weight")
            .context("missing tensor 'token_embd.weight'")?;
        if embd.dims.len() != 2 || embd.dims[0] as usize != hidden {
            bail!(
                "token_embd.weight has shape {:?}, expected [{hidden}, vocab]",
                embd.dims
            );
        }
        let vocab_size = embd.dims[1] as usize;
        let tied = g.tensor("output.weight").is_none();
        Ok(Self {
            arch,
            gguf_arch,
            hidden,
            intermediate,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            tied,
            layers,
        })
    }
}

/// Token ids that go into config.json.
#[derive(Clone, Debug, Default)]
pub struct SpecialIds {
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Padding token.
    pub pad: Option<u32>,
}

/// Builds the HF `config.json` object.
pub fn config_json(g: &GgufFile, p: &ArchParams, ids: &SpecialIds) -> Result<Value> {
    let key = |k: &str| format!("{}.{k}", p.gguf_arch);
    let eps = g
        .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
        .context("missing metadata key 'attention.layer_norm_rms_epsilon'")?;
    let rope_theta = g.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let max_pos = g.opt_u64(&key("context_length"))?.unwrap_or(2048);

    let mut c = Map::new();
    c.insert("architectures".into(), json!([p.arch.hf_class()]));
    c.insert("model_type".into(), json!(p.arch.model_type()));
    c.insert("hidden_size".into(), json!(p.hidden));
    c.insert("intermediate_size".into(), json!(p.intermediate));
    c.insert("num_hidden_layers".into(), json!(p.n_layers));
    c.insert("num_attention_heads".into(), json!(p.n_heads));
    c.insert("num_key_value_heads".into(), json!(p.n_kv_heads));
    c.insert("head_dim".into(), json!(p.head_dim));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(rope_theta));
    c.insert("rope_scaling".into(), rope_scaling(g, &p.gguf_arch)?);
    c.insert("max_position_embeddings".into(), json!(max_pos));
    c.insert("vocab_size".into(), json!(p.vocab_size));
    c.insert("tie_word_embeddings".into(), json!(p.tied));
    c.insert("attention_dropout".into(), json!(0.0));
    for (name, id) in [
        ("bos_token_id", ids.bos),
        ("eos_token_id", ids.eos),
        ("pad_token_id", ids.pad),
    ] {
        if let Some(id) = id {
            c.insert(name.into(), json!(id));
        }
    }
    match p.arch {
        Arch::Llama => {
            c.insert("hidden_act".into(), json!("silu"));
            c.insert("attention_bias".into(), json!(false));
            c.insert("mlp_bias".into(), json!(false));
        }
        Arch::Qwen2 => {
            c.insert("hidden_act".into(), json!("silu"));
            c.insert("use_sliding_window".into(), json!(false));
            c.insert("max_window_layers".into(), json!(p.n_layers));
        }
        Arch::Qwen3 => {
            c.insert("hidden_act".into(), json!("silu"));
            c.insert("attention_bias".into(), json!(false));
            c.insert("use_sliding_window".into(), json!(false));
            c.insert("max_window_layers".into(), json!(p.n_layers));
        }
        Arch::Gemma3 => {
            let window = g.req_u64(&key("attention.sliding_window"))?;
            let scalar = match g.opt_f64(&key("attention.scale"))? {
                Some(s) if s > 0.0 => (1.0 / (s * s)).round() as u64,
                Some(s) => bail!("attention.scale must be positive, got {s}"),
                None => p.head_dim as u64,
            };
            // Per-layer flags (sliding_window_pattern as a bool array), a period, or llama.cpp's 6.
            let pattern_key = key("attention.sliding_window_pattern");
            let sliding: Vec<bool> = match g.get(&pattern_key) {
                Some(v) if v.as_array().is_some() => {
                    let flags: Option<Vec<bool>> = v
                        .as_array()
                        .unwrap_or(&[])
                        .iter()
                        .map(|f| f.as_bool())
                        .collect();
                    flags
                        .filter(|f| f.len() == p.n_layers)
                        .with_context(|| format!("'{pattern_key}' must hold one bool per layer"))?
                }
                Some(v) => {
                    let period = v
                        .as_u64()
                        .filter(|&n| n > 0)
                        .with_context(|| format!("'{pattern_key}' must be a positive integer"))?;
                    (0..p.n_layers)
                        .map(|i| !(i as u64 + 1).is_multiple_of(period))
                        .collect()
                }
                None => (0..p.n_layers).map(|i| (i + 1) % 6 != 0).collect(),
            };
            let layer_types: Vec<&str> = sliding
                .iter()
                .map(|&s| {
                    if s {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect();
            c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
            c.insert("query_pre_attn_scalar".into(), json!(scalar));
            c.insert("sliding_window".into(), json!(window));
            c.insert("sliding_window_pattern".into(), json!(6));
            c.insert("layer_types".into(), json!(layer_types));
            let local = g.opt_f64(&key("rope.freq_base_swa"))?.unwrap_or(10_000.0);
            c.insert("rope_local_base_freq".into(), json!(local));
            c.insert(
                "final_logit_softcapping".into(),
                json!(g.opt_f64(&key("final_logit_softcapping"))?),
            );
            c.insert(
                "attn_logit_softcapping".into(),
                json!(g.opt_f64(&key("attn_logit_softcapping"))?),
            );
            c.insert("attention_bias".into(), json!(false));
        }
    }
    if p.heterogeneous() {
        // Per-layer shapes (llama.cpp `deci`) as the engine's block_configs.
        let blocks: Vec<Value> = p
            .layers
            .iter()
            .map(|l| {
                let attention = if l.heads == 0 {
                    json!({"no_op": true, "n_heads_in_group": null})
                } else {
                    json!({"no_op": false, "n_heads_in_group": l.heads / l.kv_heads})
                };
                json!({"attention": attention, "ffn": {"no_op": l.ffn == 0, "intermediate_size": l.ffn}})
            })
            .collect();
        c.insert("block_configs".into(), Value::Array(blocks));
    }
    c.insert("torch_dtype".into(), json!("float32"));
    c.insert("dtype".into(), json!("float32"));
    Ok(Value::Object(c))
}

/// `rope_scaling` from `{arch}.rope.scaling.*` (or the older `rope.scale_linear`); null when absent.
fn rope_scaling(g: &GgufFile, arch: &str) -> Result<Value> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    if let Some(f) = g.opt_f64(&key("scale_linear"))? {
        if f != 1.0 {
            return Ok(json!({"rope_type": "linear", "type": "linear", "factor": f}));
        }
    }
    let Some(kind) = g.opt_str(&key("scaling.type"))? else {
        return Ok(Value::Null);
    };
    let factor = g.opt_f64(&key("scaling.factor"))?;
    match kind {
        "none" => Ok(Value::Null),
        "linear" => {
            let f = factor.context("rope scaling 'linear' needs rope.scaling.factor")?;
            Ok(json!({"rope_type": "linear", "type": "linear", "factor": f}))
        }
        "yarn" => {
            let f = factor.context("rope scaling 'yarn' needs rope.scaling.factor")?;
            let orig = g
                .opt_u64(&key("scaling.original_context_length"))?
                .context("rope scaling 'yarn' needs rope.scaling.original_context_length")?;
            Ok(
                json!({"rope_type": "yarn", "type": "yarn", "factor": f, "original_max_position_embeddings": orig}),
            )
        }
        other => bail!("unsupported rope scaling type '{other}'"),
    }
}

/// Change applied to a tensor's values on the way to HF layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Values unchanged.
    Copy,
    /// Undo llama.cpp's rotary row permutation for `n_heads` heads (llama q/k projections).
    UnpermuteRope {
        /// Heads whose rows were interleaved.
        n_heads: usize,
    },
    /// Gemma stores RMSNorm weights as (1 + w); HF stores w.
    MinusOne,
}

/// How one GGUF tensor becomes one HF tensor.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    /// Index into `GgufFile::tensors`.
    pub index: usize,
    /// HF name.
    pub hf_name: String,
    /// HF (PyTorch-order) shape.
    pub shape: Vec<usize>,
    /// Value transform.
    pub transform: Transform,
}

/// Maps every GGUF tensor to its HF name, shape and transform, checking shapes and completeness.
pub fn plan_tensors(p: &ArchParams, tensors: &[TensorInfo]) -> Result<Vec<TensorPlan>> {
    let mut plans = Vec::with_capacity(tensors.len());
    for (index, t) in tensors.iter().enumerate() {
        let (hf_name, expected, transform) = map_one(p, &t.name)?;
        let shape = t.torch_shape();
        if shape != expected {
            bail!(
                "tensor '{}' has shape {:?} (HF order), expected {:?} from the metadata",
                t.name,
                shape,
                expected
            );
        }
        plans.push(TensorPlan {
            index,
            hf_name,
            shape,
            transform,
        });
    }
    // Every tensor the HF model needs must be present exactly once.
    let mut names: Vec<&str> = plans.iter().map(|x| x.hf_name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("tensor '{}' appears twice", w[0]);
    }
    for need in required_names(p) {
        if names.binary_search(&need.as_str()).is_err() {
            bail!("missing tensor for HF '{need}'");
        }
    }
    plans.sort_by_key(|x| sort_key(&x.hf_name));
    Ok(plans)
}

/// Checkpoint order: embedding, blocks in order, final norm, head.
fn sort_key(name: &str) -> (usize, usize, String) {
    if name == "model.embed_tokens.weight" {
        return (0, 0, String::new());
    }
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
        return (1, i.parse().unwrap_or(usize::MAX), tail.to_string());
    }
    if name == "lm_head.weight" {
        return (3, 0, String::new());
    }
    (2, 0, name.to_string())
}

fn required_names(p: &ArchParams) -> Vec<String> {
    let mut per_layer = vec![
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ];
    match p.arch {
        Arch::Llama => {}
        Arch::Qwen2 => per_layer.extend([
            "self_attn.q_proj.bias",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.bias",
        ]),
        Arch::Qwen3 => per_layer.extend(["self_attn.q_norm.weight", "self_attn.k_norm.weight"]),
        Arch::Gemma3 => per_layer.extend([
            "self_attn.q_norm.weight",
            "self_attn.k_norm.weight",
            "pre_feedforward_layernorm.weight",
            "post_feedforward_layernorm.weight",
        ]),
    }
    let mut out = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for (i, layer) in p.layers.iter().enumerate() {
        let attention_free = |s: &&&str| {
            layer.heads > 0 || !(s.starts_with("self_attn.") || **s == "input_layernorm.weight")
        };
        out.extend(
            per_layer
                .iter()
                .filter(attention_free)
                .map(|s| format!("model.layers.{i}.{s}")),
        );
    }
    if !p.tied {
        out.push("lm_head.weight".into());
    }
    out
}

/// HF name, expected HF shape and transform of one GGUF tensor.
fn map_one(p: &ArchParams, name: &str) -> Result<(String, Vec<usize>, Transform)> {
    let h = p.hidden;
    let gemma = p.arch == Arch::Gemma3;
    let norm_fix = |t: Transform| if gemma { Transform::MinusOne } else { t };
    match name {
        "token_embd.weight" => {
            return Ok((
                "model.embed_tokens.weight".into(),
                vec![p.vocab_size, h],
                Transform::Copy,
            ))
        }
        "output_norm.weight" => {
            return Ok((
                "model.norm.weight".into(),
                vec![h],
                norm_fix(Transform::Copy),
            ))
        }
        "output.weight" => {
            return Ok((
                "lm_head.weight".into(),
                vec![p.vocab_size, h],
                Transform::Copy,
            ))
        }
        "rope_freqs.weight" => {
            bail!(
                "tensor 'rope_freqs.weight' (llama3-style rope frequency factors) is not supported"
            )
        }
        _ => {}
    }
    let unknown = || {
        anyhow::anyhow!(
            "tensor '{name}' has no Hugging Face counterpart for architecture '{}'",
            p.gguf_arch
        )
    };
    let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (idx, local) = rest.split_once('.').ok_or_else(unknown)?;
    let i: usize = idx.parse().map_err(|_| unknown())?;
    if i >= p.n_layers {
        bail!(
            "tensor '{name}' refers to block {i} but the model has {} blocks",
            p.n_layers
        );
    }
    let layer = p.layers[i];
    let (q_dim, kv_dim) = (layer.heads * p.head_dim, layer.kv_heads * p.head_dim);
    let llama = p.arch == Arch::Llama;
    let rope = |n_heads| {
        if llama {
            Transform::UnpermuteRope { n_heads }
        } else {
            Transform::Copy
        }
    };
    let (hf, shape, transform): (&str, Vec<usize>, Transform) = match (local, p.arch) {
        ("attn_norm.weight", _) => ("input_layernorm.weight", vec![h], norm_fix(Transform::Copy)),
        ("attn_q.weight", _) => ("self_attn.q_proj.weight", vec![q_dim, h], rope(layer.heads)),
        ("attn_k.weight", _) => (
            "self_attn.k_proj.weight",
            vec![kv_dim, h],
            rope(layer.kv_heads),
        ),
        ("attn_v.weight", _) => ("self_attn.v_proj.weight", vec![kv_dim, h], Transform::Copy),
        ("attn_output.weight", _) => ("self_attn.o_proj.weight", vec![h, q_dim], Transform::Copy),
        ("attn_q.bias", Arch::Qwen2 | Arch::Llama) => {
            ("self_attn.q_proj.bias", vec![q_dim], rope(layer.heads))
        }
        ("attn_k.bias", Arch::Qwen2 | Arch::Llama) => {
            ("self_attn.k_proj.bias", vec![kv_dim], rope(layer.kv_heads))
        }
        ("attn_v.bias", Arch::Qwen2 | Arch::Llama) => {
            ("self_attn.v_proj.bias", vec![kv_dim], Transform::Copy)
        }
        ("attn_q_norm.weight", Arch::Gemma3 | Arch::Qwen3) => (
            "self_attn.q_norm.weight",
            vec![p.head_dim],
            norm_fix(Transform::Copy),
        ),
        ("attn_k_norm.weight", Arch::Gemma3 | Arch::Qwen3) => (
            "self_attn.k_norm.weight",
            vec![p.head_dim],
            norm_fix(Transform::Copy),
        ),
        ("ffn_gate.weight", _) => ("mlp.gate_proj.weight", vec![layer.ffn, h], Transform::Copy),
        ("ffn_up.weight", _) => ("mlp.up_proj.weight", vec![layer.ffn, h], Transform::Copy),
        ("ffn_down.weight", _) => ("mlp.down_proj.weight", vec![h, layer.ffn], Transform::Copy),
        ("ffn_norm.weight", Arch::Gemma3) => (
            "pre_feedforward_layernorm.weight",
            vec![h],
            Transform::MinusOne,
        ),
        ("ffn_norm.weight", _) => ("post_attention_layernorm.weight", vec![h], Transform::Copy),
        ("post_attention_norm.weight", Arch::Gemma3) => (
            "post_attention_layernorm.weight",
            vec![h],
            Transform::MinusOne,
        ),
        ("post_ffw_norm.weight", Arch::Gemma3) => (
            "post_feedforward_layernorm.weight",
            vec![h],
            Transform::MinusOne,
        ),
        _ => return Err(unknown()),
    };
    Ok((format!("model.layers.{i}.{hf}"), shape, transform))
}

/// Applies `transform` to a tensor whose rows are `shape[0]` (row-major, HF layout).
pub fn apply_transform(
    transform: Transform,
    shape: &[usize],
    values: Vec<f32>,
) -> Result<Vec<f32>> {
    match transform {
        Transform::Copy => Ok(values),
        Transform::MinusOne => Ok(values.into_iter().map(|v| v - 1.0).collect()),
        Transform::UnpermuteRope { n_heads } => unpermute_rope_rows(&values, shape, n_heads),
    }
}

/// Inverts llama.cpp's q/k row permutation.
///
/// The converter views the rows of each head as (2, head_dim/2) and transposes them to
/// (head_dim/2, 2), so GGUF row `2*i + j` of a head holds HF row `j*head_dim/2 + i`.
fn unpermute_rope_rows(values: &[f32], shape: &[usize], n_heads: usize) -> Result<Vec<f32>> {
    let rows = shape.first().copied().unwrap_or(0);
    let cols: usize = shape.iter().skip(1).product();
    if n_heads == 0 || rows % n_heads != 0 || !(rows / n_heads).is_multiple_of(2) {
        bail!("cannot undo the rotary permutation: {rows} rows for {n_heads} heads");
    }
    let head = rows / n_heads;
    let half = head / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head + 2 * i + j;
                let dst = h * head + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // Converter: HF row (h, j, i) -> GGUF row (h, i, j) with head rows viewed as (2, half).
        let (n_heads, head, cols) = (2usize, 8usize, 3usize);
        let rows = n_heads * head;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..n_heads {
            for j in 0..2 {
                for i in 0..head / 2 {
                    let src = h * head + j * head / 2 + i;
                    let dst = h * head + 2 * i + j;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        let back = unpermute_rope_rows(&gguf, &[rows, cols], n_heads).unwrap();
        assert_eq!(back, hf);
    }
}
