//! GGUF files for llama.cpp. Llama-family models use the `deci` architecture when blocks differ
//! (per-layer head counts, 0 for removed attention whose tensors are then absent, per-layer FFN
//! widths) and the native `llama` one otherwise; Qwen2, Qwen3 and Gemma-3 are written natively,
//! removed attention as zeros. Tokenizer metadata is copied from the GGUF the model was imported
//! from (its `tokenizer.gguf` side file), or built from `tokenizer.json`.

use super::plan::{AttentionOut, BlockPlan};
use super::tensors::TensorJob;
use crate::arch::Family;
use crate::config::rope::RopeScaling;
use crate::config::ModelConfig;
use crate::gguf::tokenizer_meta;
use crate::gguf::writer::{GgufValue, TensorDecl, TensorDtype};
use crate::weights::TensorStore;
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use std::path::Path;

/// The llama.cpp architecture a model is written as.
pub fn architecture(config: &ModelConfig, blocks: &[BlockPlan]) -> Result<&'static str> {
    let uniform = blocks
        .windows(2)
        .all(|w| w[0].neurons.len() == w[1].neurons.len())
        && blocks.iter().all(|b| b.attention == AttentionOut::Keep);
    Ok(match config.arch.family {
        Family::Llama | Family::Mistral if uniform => "llama",
        Family::Llama | Family::Mistral => "deci",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Gemma3 => "gemma3",
        Family::Phi3 => bail!("--format gguf does not write Phi-3 yet; use --format decilm or hf"),
    })
}

/// GGUF name of a tensor given its HF name (None for names llama.cpp does not have).
fn gguf_name(hf: &str, gemma: bool) -> Option<String> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, local) = rest.split_once('.')?;
    let mapped = match local {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" if gemma => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "mlp.gate_proj.bias" => "ffn_gate.bias",
        "mlp.up_proj.bias" => "ffn_up.bias",
        "mlp.down_proj.bias" => "ffn_down.bias",
        _ => return None,
    };
    Some(format!("blk.{i}.{mapped}"))
}

/// llama.cpp's q/k row order for Llama-style rope: GGUF row `2i + j` of a head is HF row
/// `j * head_dim/2 + i` (the importer undoes exactly this).
fn permute_rows(job: &mut TensorJob, n_heads: usize) -> Result<()> {
    let rows = job.shape[0];
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        bail!(
            "cannot permute '{}' for rope: {rows} rows for {n_heads} heads",
            job.name
        );
    }
    let src: Vec<Option<usize>> = job
        .rows
        .take()
        .unwrap_or_else(|| (0..rows).map(Some).collect());
    let (head, half) = (rows / n_heads, rows / n_heads / 2);
    let mut out = vec![None; rows];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                out[h * head + 2 * i + j] = src[h * head + j * half + i];
            }
        }
    }
    job.rows = Some(out);
    Ok(())
}

/// The GGUF tensors of the output, in GGUF names, with llama.cpp's layout changes applied.
pub fn tensor_jobs(
    config: &ModelConfig,
    store: &TensorStore,
    blocks: &[BlockPlan],
) -> Result<Vec<TensorJob>> {
    let gemma = config.arch.family == Family::Gemma3;
    let llama_rope = matches!(config.arch.family, Family::Llama | Family::Mistral);
    let hf_jobs = super::plan::model_jobs(config, store, blocks, false)?;
    let template = config
        .blocks
        .iter()
        .find_map(|b| b.attention.as_ref())
        .context("the model has no attention")?;
    hf_jobs
        .into_iter()
        .map(|mut job| {
            let name = gguf_name(&job.name, gemma)
                .with_context(|| format!("tensor '{}' has no GGUF name", job.name))?;
            if llama_rope && (job.name.contains("q_proj") || job.name.contains("k_proj")) {
                let heads = if job.name.contains("q_proj") {
                    template.n_heads
                } else {
                    template.n_kv_heads
                };
                permute_rows(&mut job, heads)?;
            }
            job.add_one = gemma && job.name.ends_with("norm.weight");
            job.name = name;
            Ok(job)
        })
        .collect()
}

/// `general.file_type` of a weights dtype (llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_BF16).
fn file_type(dtype: Dtype) -> u32 {
    match dtype {
        Dtype::F16 => 1,
        Dtype::BF16 => 32,
        _ => 0,
    }
}

/// The metadata llama.cpp reads for `arch`, plus the tokenizer's.
pub fn metadata(
    config: &ModelConfig,
    blocks: &[BlockPlan],
    arch: &str,
    source: &Path,
    dtype: Dtype,
) -> Result<Vec<(String, GgufValue)>> {
    let template = config
        .blocks
        .iter()
        .find_map(|b| b.attention.as_ref())
        .context("the model has no attention")?;
    let raw = &config.raw;
    let k = |s: &str| format!("{arch}.{s}");
    let name = source
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let mut m: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), GgufValue::Str(arch.into())),
        ("general.name".into(), GgufValue::Str(name)),
        ("general.file_type".into(), GgufValue::U32(file_type(dtype))),
        (k("block_count"), GgufValue::U32(blocks.len() as u32)),
        (
            k("context_length"),
            GgufValue::U32(raw["max_position_embeddings"].as_u64().unwrap_or(4096) as u32),
        ),
        (k("embedding_length"), GgufValue::U32(config.hidden as u32)),
        (k("vocab_size"), GgufValue::U32(config.vocab as u32)),
        (
            k("attention.key_length"),
            GgufValue::U32(template.head_dim as u32),
        ),
        (
            k("attention.value_length"),
            GgufValue::U32(template.head_dim as u32),
        ),
        (
            k("rope.dimension_count"),
            GgufValue::U32(template.rope.rotary_dim as u32),
        ),
        (k("rope.freq_base"), GgufValue::F32(template.rope.theta)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(config.norm_eps),
        ),
    ];
    let widths: Vec<u32> = blocks.iter().map(|b| b.neurons.len() as u32).collect();
    let heads: Vec<u32> = blocks
        .iter()
        .map(|b| {
            if b.attention == AttentionOut::Omit {
                0
            } else {
                template.n_heads as u32
            }
        })
        .collect();
    let kv: Vec<u32> = blocks
        .iter()
        .map(|b| {
            if b.attention == AttentionOut::Omit {
                0
            } else {
                template.n_kv_heads as u32
            }
        })
        .collect();
    if arch == "deci" {
        m.push((k("feed_forward_length"), GgufValue::u32_array(widths)));
        m.push((k("attention.head_count"), GgufValue::u32_array(heads)));
        m.push((k("attention.head_count_kv"), GgufValue::u32_array(kv)));
    } else {
        m.push((k("feed_forward_length"), GgufValue::U32(widths[0])));
        m.push((
            k("attention.head_count"),
            GgufValue::U32(template.n_heads as u32),
        ));
        m.push((
            k("attention.head_count_kv"),
            GgufValue::U32(template.n_kv_heads as u32),
        ));
    }
    match template.rope.scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            m.push((k("rope.scaling.type"), GgufValue::Str("linear".into())));
            m.push((k("rope.scaling.factor"), GgufValue::F32(factor)));
        }
        RopeScaling::Llama3 { .. } => {
            bail!("--format gguf does not write llama3 rope scaling (rope_freqs) yet; use --format decilm or hf")
        }
    }
    if config.arch.family == Family::Gemma3 {
        let attn: Vec<_> = config.blocks.iter().map(|b| b.attention.as_ref()).collect();
        let window = attn
            .iter()
            .find_map(|a| a.and_then(|a| a.window))
            .context("Gemma-3 without a sliding window")?;
        let local = attn
            .iter()
            .flatten()
            .find(|a| a.window.is_some())
            .map(|a| a.rope.theta);
        let global = attn
            .iter()
            .flatten()
            .find(|a| a.window.is_none())
            .map(|a| a.rope.theta);
        m.retain(|(key, _)| key != &k("rope.freq_base"));
        m.push((
            k("rope.freq_base"),
            GgufValue::F32(global.unwrap_or(template.rope.theta)),
        ));
        if let Some(local) = local {
            m.push((k("rope.freq_base_swa"), GgufValue::F32(local)));
        }
        m.push((k("attention.sliding_window"), GgufValue::U32(window as u32)));
        let pattern: Vec<bool> = attn
            .iter()
            .map(|a| a.is_none_or(|a| a.window.is_some()))
            .collect();
        m.push((
            k("attention.sliding_window_pattern"),
            GgufValue::bool_array(pattern),
        ));
        if let Some(cap) = config.final_logit_softcap {
            m.push((k("final_logit_softcapping"), GgufValue::F32(cap)));
        }
        // llama.cpp scales queries by 1/sqrt(head_dim) (Gemma-3 27B aside): nothing else is expressible.
        if (template.scale - (template.head_dim as f32).powf(-0.5)).abs() > 1e-7 {
            bail!(
                "--format gguf: llama.cpp's gemma3 scales attention by 1/sqrt(head_dim), but this model uses query_pre_attn_scalar {}; use --format hf",
                template.scale.powi(-2).round()
            );
        }
    }
    let side = source.join("tokenizer.gguf");
    let tokenizer = if side.exists() {
        tokenizer_meta::read_side_file(&side)?
    } else {
        tokenizer_meta::from_hf(source)?
    };
    m.extend(tokenizer);
    Ok(m)
}

/// Declarations of `jobs` in `dtype` (norms and biases stay f32, as llama.cpp's converters write
/// them), and the safetensors dtype each job produces.
pub fn declarations(jobs: &[TensorJob], dtype: Dtype) -> Vec<(TensorDecl, Dtype)> {
    jobs.iter()
        .map(|j| {
            let d = if j.shape.len() == 1 {
                Dtype::F32
            } else {
                dtype
            };
            let t = match d {
                Dtype::F16 => TensorDtype::F16,
                Dtype::BF16 => TensorDtype::BF16,
                _ => TensorDtype::F32,
            };
            (TensorDecl::new(j.name.clone(), j.shape.clone(), t), d)
        })
        .collect()
}
