//! What each block of the output holds (attention kept, omitted or zeroed; which source neurons
//! fill its FFN) and the tensor recipes that follow, in the source family's HF names.

use super::tensors::TensorJob;
use crate::config::{AttentionSpec, ModelConfig};
use crate::weights::TensorStore;
use anyhow::{Context, Result};

/// What an output block does with its attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionOut {
    /// Written as in the source.
    Keep,
    /// Not written at all (DeciLM `no_op`, GGUF `head_count = 0`).
    Omit,
    /// Written as zeros, so that loaders expecting every layer's attention accept it; a zero
    /// `o_proj` adds exactly nothing to the residual stream.
    Zero,
}

/// One output block.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockPlan {
    /// Its attention.
    pub attention: AttentionOut,
    /// Source neuron of each output FFN neuron (`None`: a zero-padding neuron).
    pub neurons: Vec<Option<usize>>,
}

/// Tensors of the output model in HF names: q/k/v and gate/up fused as the family stores them
/// when `fused`, else split (the Llama layout).
pub fn model_jobs(
    config: &ModelConfig,
    store: &TensorStore,
    blocks: &[BlockPlan],
    fused: bool,
) -> Result<Vec<TensorJob>> {
    let (hidden, vocab) = (config.hidden, config.vocab);
    let mut jobs = vec![TensorJob::whole(
        "model.embed_tokens.weight",
        "model.embed_tokens.weight",
        vec![vocab, hidden],
    )];
    for (i, plan) in blocks.iter().enumerate() {
        if fused {
            jobs.extend(fused_block_jobs(config, store, i, plan)?);
        } else {
            jobs.extend(split_block_jobs(config, store, i, plan)?);
        }
    }
    jobs.push(TensorJob::whole(
        "model.norm.weight",
        "model.norm.weight",
        vec![hidden],
    ));
    if store.contains("lm_head.weight") {
        jobs.push(TensorJob::whole(
            "lm_head.weight",
            "lm_head.weight",
            vec![vocab, hidden],
        ));
    }
    Ok(jobs)
}

/// The attention shape of block `i`, or of the first block that has one (for zeroed attention
/// where the source has none).
fn attention_shape(config: &ModelConfig, i: usize) -> Result<&AttentionSpec> {
    config.blocks[i]
        .attention
        .as_ref()
        .or_else(|| config.blocks.iter().find_map(|b| b.attention.as_ref()))
        .context("the model has no attention in any block, so its shape is unknown")
}

/// Tensors of block `i`, split into the canonical q/k/v and gate/up names, then fused again
/// where the family stores them fused (Phi-3).
fn fused_block_jobs(
    config: &ModelConfig,
    store: &TensorStore,
    i: usize,
    plan: &BlockPlan,
) -> Result<Vec<TensorJob>> {
    let split = split_block_jobs(config, store, i, plan)?;
    if !(config.arch.fused_qkv || config.arch.fused_gate_up) {
        return Ok(split);
    }
    let p = format!("model.layers.{i}");
    let mut out = Vec::new();
    let mut pending: Vec<TensorJob> = Vec::new();
    let fuse_target = |name: &str| -> Option<String> {
        let local = name.strip_prefix(&format!("{p}."))?;
        let (fused, parts): (&str, &[&str]) = if config.arch.fused_qkv
            && local.starts_with("self_attn.")
            && ["q_proj", "k_proj", "v_proj"]
                .iter()
                .any(|n| local.contains(n))
        {
            ("self_attn.qkv_proj", &["q_proj", "k_proj", "v_proj"])
        } else if config.arch.fused_gate_up
            && (local.contains("gate_proj") || local.contains("up_proj"))
        {
            ("mlp.gate_up_proj", &["gate_proj", "up_proj"])
        } else {
            return None;
        };
        let suffix = local.rsplit('.').next()?;
        parts
            .iter()
            .any(|part| local.contains(part))
            .then(|| format!("{p}.{fused}.{suffix}"))
    };
    for job in split {
        match fuse_target(&job.name) {
            Some(target) => {
                if let Some(last) = pending.iter_mut().find(|j| j.name == target) {
                    last.append_rows(job)?;
                } else {
                    pending.push(TensorJob {
                        name: target,
                        ..job
                    });
                }
            }
            None => out.push(job),
        }
    }
    out.extend(pending);
    Ok(out)
}

/// Block `i` in canonical split names (q/k/v and gate/up separate), whatever the source layout.
pub fn split_block_jobs(
    config: &ModelConfig,
    store: &TensorStore,
    i: usize,
    plan: &BlockPlan,
) -> Result<Vec<TensorJob>> {
    let arch = &config.arch;
    let hidden = config.hidden;
    let p = format!("model.layers.{i}");
    let mut jobs = Vec::new();
    let source_has_attention = config.blocks[i].attention.is_some();
    if plan.attention != AttentionOut::Omit {
        let spec = attention_shape(config, i)?;
        let (q, kv, hd) = (spec.q_dim(), spec.kv_dim(), spec.head_dim);
        let zero = plan.attention == AttentionOut::Zero || !source_has_attention;
        let mut add = |job: TensorJob| {
            jobs.push(if zero {
                TensorJob::zeros(job.name, job.shape)
            } else {
                job
            })
        };
        let a = format!("{p}.self_attn");
        add(TensorJob::whole(
            format!("{p}.input_layernorm.weight"),
            format!("{p}.input_layernorm.weight"),
            vec![hidden],
        ));
        let ranges = [
            ("q_proj", 0..q),
            ("k_proj", q..q + kv),
            ("v_proj", q + kv..q + 2 * kv),
        ];
        for (name, range) in ranges.iter().cloned() {
            let n = range.len();
            let (src_w, src_b, rows) = if arch.fused_qkv {
                (
                    format!("{a}.qkv_proj.weight"),
                    format!("{a}.qkv_proj.bias"),
                    range,
                )
            } else {
                (
                    format!("{a}.{name}.weight"),
                    format!("{a}.{name}.bias"),
                    0..n,
                )
            };
            add(TensorJob::row_range(
                format!("{a}.{name}.weight"),
                src_w,
                rows.clone(),
                hidden,
            ));
            if arch.qkv_bias {
                add(TensorJob::row_range(
                    format!("{a}.{name}.bias"),
                    src_b,
                    rows,
                    1,
                ));
            }
        }
        add(TensorJob::whole(
            format!("{a}.o_proj.weight"),
            format!("{a}.o_proj.weight"),
            vec![hidden, q],
        ));
        if arch.o_bias {
            add(TensorJob::whole(
                format!("{a}.o_proj.bias"),
                format!("{a}.o_proj.bias"),
                vec![hidden],
            ));
        }
        if arch.qk_norm {
            for n in ["q_norm", "k_norm"] {
                add(TensorJob::whole(
                    format!("{a}.{n}.weight"),
                    format!("{a}.{n}.weight"),
                    vec![hd],
                ));
            }
        }
        if arch.sandwich_norms {
            add(TensorJob::whole(
                format!("{p}.post_attention_layernorm.weight"),
                format!("{p}.post_attention_layernorm.weight"),
                vec![hidden],
            ));
        }
    }
    if plan.neurons.is_empty() {
        return Ok(jobs);
    }
    let m = format!("{p}.mlp");
    let norm = if arch.sandwich_norms {
        "pre_feedforward_layernorm"
    } else {
        "post_attention_layernorm"
    };
    jobs.push(TensorJob::whole(
        format!("{p}.{norm}.weight"),
        format!("{p}.{norm}.weight"),
        vec![hidden],
    ));
    let (gate_src, up_src, up_offset) = if arch.fused_gate_up {
        let fused = format!("{m}.gate_up_proj.weight");
        let stored = store.raw(&fused)?.shape.first().copied().unwrap_or(0) / 2;
        (fused.clone(), fused, stored)
    } else {
        (
            format!("{m}.gate_proj.weight"),
            format!("{m}.up_proj.weight"),
            0,
        )
    };
    let shifted = |off: usize| -> Vec<Option<usize>> {
        plan.neurons.iter().map(|j| j.map(|j| j + off)).collect()
    };
    jobs.push(TensorJob::rows(
        format!("{m}.gate_proj.weight"),
        gate_src,
        shifted(0),
        hidden,
    ));
    jobs.push(TensorJob::rows(
        format!("{m}.up_proj.weight"),
        up_src,
        shifted(up_offset),
        hidden,
    ));
    if arch.mlp_bias {
        let (gb, ub) = if arch.fused_gate_up {
            (
                format!("{m}.gate_up_proj.bias"),
                format!("{m}.gate_up_proj.bias"),
            )
        } else {
            (format!("{m}.gate_proj.bias"), format!("{m}.up_proj.bias"))
        };
        jobs.push(TensorJob::rows(
            format!("{m}.gate_proj.bias"),
            gb,
            shifted(0),
            1,
        ));
        jobs.push(TensorJob::rows(
            format!("{m}.up_proj.bias"),
            ub,
            shifted(up_offset),
            1,
        ));
    }
    jobs.push(TensorJob {
        cols: Some(plan.neurons.clone()),
        ..TensorJob::whole(
            format!("{m}.down_proj.weight"),
            format!("{m}.down_proj.weight"),
            vec![hidden, plan.neurons.len()],
        )
    });
    if arch.mlp_bias {
        jobs.push(TensorJob::whole(
            format!("{m}.down_proj.bias"),
            format!("{m}.down_proj.bias"),
            vec![hidden],
        ));
    }
    if arch.sandwich_norms {
        jobs.push(TensorJob::whole(
            format!("{p}.post_feedforward_layernorm.weight"),
            format!("{p}.post_feedforward_layernorm.weight"),
            vec![hidden],
        ));
    }
    Ok(jobs)
}
