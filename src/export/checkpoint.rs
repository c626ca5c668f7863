//! Saves a (possibly pruned) model as an HF folder: safetensors with only the kept weights, a
//! config.json with DeciLM-style `block_configs`, and the source's tokenizer files.

use crate::model::{Linear, Model};
use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::Path;

/// Tokenizer and generation files copied verbatim from the source folder when present.
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// Writes `model` into the (empty, staged) folder `out`, copying side files from `source`; returns weight bytes.
pub fn save(model: &Model, source: &Path, out: &Path) -> Result<u64> {
    let tensors = named_tensors(model);
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| Ok((n, s, encode(&v, model.storage_dtype)?)))
        .collect::<Result<_>>()?;
    let bytes: u64 = encoded.iter().map(|t| t.2.len() as u64).sum();
    let views = encoded
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                TensorView::new(model.storage_dtype, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &out.join("model.safetensors"))
        .context("cannot write model.safetensors")?;
    let config = serde_json::to_string_pretty(&config_json(model))?;
    std::fs::write(out.join("config.json"), config + "\n").context("cannot write config.json")?;
    for name in SIDE_FILES {
        let src = source.join(name);
        if src.exists() {
            std::fs::copy(&src, out.join(name))
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(bytes)
}

/// The source config with per-block `block_configs` describing what is left.
pub fn config_json(model: &Model) -> Value {
    let mut raw = model.config.raw.clone();
    let blocks: Vec<Value> = model
        .config
        .blocks
        .iter()
        .map(|b| {
            let attention = match &b.attention {
                Some(a) => json!({"no_op": false, "n_heads_in_group": a.n_heads / a.n_kv_heads}),
                None => json!({"no_op": true, "n_heads_in_group": null}),
            };
            json!({"attention": attention, "ffn": {"no_op": b.ffn_width == 0, "intermediate_size": b.ffn_width}})
        })
        .collect();
    let widths: Vec<usize> = model.config.blocks.iter().map(|b| b.ffn_width).collect();
    if widths.windows(2).all(|w| w[0] == w[1]) {
        raw["intermediate_size"] = json!(widths[0]);
    } else {
        raw["intermediate_size"] = json!(widths.iter().max());
    }
    raw["block_configs"] = Value::Array(blocks);
    raw
}

/// Every weight under its HF name and shape, in the family's own layout (fused or split).
fn named_tensors(model: &Model) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let arch = &model.config.arch;
    let hidden = model.config.hidden;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![model.config.vocab, hidden],
        model.embed.clone(),
    )];
    let push_linear = |out: &mut Vec<_>, name: &str, l: &Linear, rows: std::ops::Range<usize>| {
        let k = l.in_dim;
        out.push((
            format!("{name}.weight"),
            vec![rows.len(), k],
            l.weight[rows.start * k..rows.end * k].to_vec(),
        ));
        if let Some(b) = &l.bias {
            out.push((format!("{name}.bias"), vec![rows.len()], b[rows].to_vec()));
        }
    };
    for (i, block) in model.blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        if let Some(att) = &block.attention {
            out.push((
                format!("{p}.input_layernorm.weight"),
                vec![hidden],
                att.norm.clone(),
            ));
            let (q, kv) = (att.spec.q_dim(), att.spec.kv_dim());
            if arch.fused_qkv {
                push_linear(
                    &mut out,
                    &format!("{p}.self_attn.qkv_proj"),
                    &att.qkv,
                    0..q + 2 * kv,
                );
            } else {
                push_linear(&mut out, &format!("{p}.self_attn.q_proj"), &att.qkv, 0..q);
                push_linear(
                    &mut out,
                    &format!("{p}.self_attn.k_proj"),
                    &att.qkv,
                    q..q + kv,
                );
                push_linear(
                    &mut out,
                    &format!("{p}.self_attn.v_proj"),
                    &att.qkv,
                    q + kv..q + 2 * kv,
                );
            }
            push_linear(
                &mut out,
                &format!("{p}.self_attn.o_proj"),
                &att.o,
                0..hidden,
            );
            for (name, w) in [("q_norm", &att.q_norm), ("k_norm", &att.k_norm)] {
                if let Some(w) = w {
                    out.push((
                        format!("{p}.self_attn.{name}.weight"),
                        vec![w.len()],
                        w.clone(),
                    ));
                }
            }
            if let Some(w) = &att.post_norm {
                out.push((
                    format!("{p}.post_attention_layernorm.weight"),
                    vec![hidden],
                    w.clone(),
                ));
            }
        }
        if let Some(ffn) = &block.ffn {
            let width = ffn.width();
            let norm_name = if arch.sandwich_norms {
                "pre_feedforward_layernorm"
            } else {
                "post_attention_layernorm"
            };
            out.push((
                format!("{p}.{norm_name}.weight"),
                vec![hidden],
                ffn.norm.clone(),
            ));
            if arch.fused_gate_up {
                push_linear(
                    &mut out,
                    &format!("{p}.mlp.gate_up_proj"),
                    &ffn.gate_up,
                    0..2 * width,
                );
            } else {
                push_linear(
                    &mut out,
                    &format!("{p}.mlp.gate_proj"),
                    &ffn.gate_up,
                    0..width,
                );
                push_linear(
                    &mut out,
                    &format!("{p}.mlp.up_proj"),
                    &ffn.gate_up,
                    width..2 * width,
                );
            }
            push_linear(
                &mut out,
                &format!("{p}.mlp.down_proj"),
                &ffn.down,
                0..hidden,
            );
            if let Some(w) = &ffn.post_norm {
                out.push((
                    format!("{p}.post_feedforward_layernorm.weight"),
                    vec![hidden],
                    w.clone(),
                ));
            }
        }
    }
    out.push((
        "model.norm.weight".to_string(),
        vec![hidden],
        model.final_norm.clone(),
    ));
    if let Some(head) = &model.lm_head {
        push_linear(&mut out, "lm_head", head, 0..head.out_dim);
    }
    out
}

/// Little-endian bytes of `values` in `dtype` (exact for values that came from that dtype).
fn encode(values: &[f32], dtype: Dtype) -> Result<Vec<u8>> {
    Ok(match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        other => bail!("cannot save weights as {other:?}"),
    })
}
