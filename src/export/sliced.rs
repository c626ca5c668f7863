//! Writing a model sliced by SliceGPT from memory: its weights are new (rotated), so they come
//! from the [`Model`], not from the source's tensors. The folder is the source family's HF layout
//! with sliced shapes, no norm weights (SliceGPT's RMSN has none), an untied LM head, the
//! shortcut matrices under the names SliceGPT's authors give them (`attn_shortcut_Q`,
//! `mlp_shortcut_Q`, `[in, out]`), and the widths in `config.json` ([`SLICING_KEY`]). This engine
//! loads it; no other runtime has SliceGPT's shortcut matrices.

use super::{copy_side_files, dtype_config_name, ExportSummary, Format};
use crate::config::slicing::SLICING_KEY;
use crate::fsutil::{OutputClaim, OutputKind, Staged};
use crate::model::{Linear, Model};
use crate::weights::writer;
use anyhow::{Context, Result};
use safetensors::Dtype;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// One tensor: its name, shape and where its values come from.
struct Tensor<'a> {
    name: String,
    shape: Vec<usize>,
    values: Values<'a>,
}

enum Values<'a> {
    /// Rows `start..start + rows` of a linear layer's weight.
    Rows(&'a Linear, usize),
    /// The same rows of its bias.
    Bias(&'a Linear, usize),
    /// A shortcut kept as `[out, in]`, written transposed (`[in, out]`).
    Transposed(&'a Linear),
    /// A vector as it is.
    Vector(&'a [f32]),
    /// The embedding matrix.
    Embedding,
}

impl Tensor<'_> {
    fn values(&self, model: &Model) -> Vec<f32> {
        match self.values {
            Values::Rows(l, start) => {
                let rows = self.shape[0];
                let mut out = vec![0f32; rows * l.in_dim];
                l.weight
                    .widen_range_into(start * l.in_dim..(start + rows) * l.in_dim, &mut out);
                out
            }
            Values::Bias(l, start) => {
                l.bias.as_ref().expect("bias present")[start..start + self.shape[0]].to_vec()
            }
            Values::Transposed(l) => {
                let w = l.weight.to_f32();
                let (w_in, w_out) = (l.in_dim, l.out_dim);
                (0..w_in * w_out)
                    .map(|k| w[(k % w_out) * w_in + k / w_out])
                    .collect()
            }
            Values::Vector(v) => v.to_vec(),
            Values::Embedding => model.embed.to_f32().into_owned(),
        }
    }
}

/// A linear layer written as the named parts its rows stack (`[(name, rows)]`), with biases.
fn parts<'a>(prefix: &str, l: &'a Linear, names: &[(&str, usize)], out: &mut Vec<Tensor<'a>>) {
    let mut start = 0;
    for &(name, rows) in names {
        out.push(Tensor {
            name: format!("{prefix}.{name}.weight"),
            shape: vec![rows, l.in_dim],
            values: Values::Rows(l, start),
        });
        if l.bias.is_some() {
            out.push(Tensor {
                name: format!("{prefix}.{name}.bias"),
                shape: vec![rows],
                values: Values::Bias(l, start),
            });
        }
        start += rows;
    }
}

/// Every tensor of the sliced model, in HF order.
fn tensors(model: &Model) -> Vec<Tensor<'_>> {
    let arch = &model.config.arch;
    let slicing = model.config.slicing.as_ref().expect("a sliced model");
    let mut out = vec![Tensor {
        name: "model.embed_tokens.weight".into(),
        shape: vec![model.config.vocab, slicing.embedding_width()],
        values: Values::Embedding,
    }];
    for (i, block) in model.blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        if let Some(a) = &block.attention {
            let (q, kv) = (a.spec.q_dim(), a.spec.kv_dim());
            let qkv: &[(&str, usize)] = if arch.fused_qkv {
                &[("qkv_proj", q + 2 * kv)]
            } else {
                &[("q_proj", q), ("k_proj", kv), ("v_proj", kv)]
            };
            parts(&format!("{p}.self_attn"), &a.qkv, qkv, &mut out);
            parts(
                &format!("{p}.self_attn"),
                &a.o,
                &[("o_proj", a.o.out_dim)],
                &mut out,
            );
            for (name, norm) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                if let Some(v) = norm {
                    out.push(Tensor {
                        name: format!("{p}.self_attn.{name}.weight"),
                        shape: vec![v.len()],
                        values: Values::Vector(v),
                    });
                }
            }
            if let Some(s) = &a.shortcut {
                out.push(Tensor {
                    name: format!("{p}.attn_shortcut_Q"),
                    shape: vec![s.in_dim, s.out_dim],
                    values: Values::Transposed(s),
                });
            }
        }
        if let Some(f) = &block.ffn {
            let w = f.width();
            let gate_up: &[(&str, usize)] = if arch.fused_gate_up {
                &[("gate_up_proj", 2 * w)]
            } else {
                &[("gate_proj", w), ("up_proj", w)]
            };
            parts(&format!("{p}.mlp"), &f.gate_up, gate_up, &mut out);
            parts(
                &format!("{p}.mlp"),
                &f.down,
                &[("down_proj", f.down.out_dim)],
                &mut out,
            );
            if let Some(s) = &f.shortcut {
                out.push(Tensor {
                    name: format!("{p}.mlp_shortcut_Q"),
                    shape: vec![s.in_dim, s.out_dim],
                    values: Values::Transposed(s),
                });
            }
        }
    }
    let head = model.lm_head.as_ref().expect("SliceGPT unties the head");
    out.push(Tensor {
        name: "lm_head.weight".into(),
        shape: vec![head.out_dim, head.in_dim],
        values: Values::Rows(head, 0),
    });
    out
}

/// Writes the sliced `model` (tensors at `dtype`) with `source`'s tokenizer files into a staged
/// sibling of the claimed output; nothing is in place until the caller commits.
pub fn write_staged(
    source: &Path,
    model: &Model,
    claim: OutputClaim,
    dtype: Dtype,
) -> Result<(Staged, ExportSummary)> {
    let start = Instant::now();
    let out = claim.dest().to_path_buf();
    let staged = Staged::create(claim, OutputKind::Dir)?;
    let dir = staged.path().to_path_buf();
    let tensors = tensors(model);
    let entries: Vec<writer::Entry> = tensors
        .iter()
        .map(|t| writer::Entry {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let encode = super::tensors::encoder(dtype)?;
    let bar = crate::progress::bar(tensors.len() as u64, "write tensors");
    let bytes = writer::write(&dir.join("model.safetensors"), &entries, |i| {
        bar.inc(1);
        let values = tensors[i].values(model);
        let mut out = Vec::with_capacity(values.len() * 4);
        values.iter().for_each(|&v| encode(v, &mut out));
        Ok(out)
    })?;
    bar.finish_and_clear();
    let config = &model.config;
    let slicing = config.slicing.as_ref().expect("a sliced model");
    let mut c = config.raw.clone();
    if let Some(obj) = c.as_object_mut() {
        obj.insert(SLICING_KEY.into(), slicing.to_json());
        obj.insert("tie_word_embeddings".into(), json!(false));
        obj.insert("dtype".into(), json!(dtype_config_name(dtype)));
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), json!(dtype_config_name(dtype)));
        }
    }
    let text = serde_json::to_string_pretty(&c)? + "\n";
    std::fs::write(dir.join("config.json"), text).context("cannot write config.json")?;
    copy_side_files(source, &dir)?;
    let widths = config.ffn_widths();
    let summary = ExportSummary {
        format: Format::Hf,
        path: out,
        dtype: dtype_config_name(dtype).into(),
        tensors: tensors.len(),
        weight_bytes: bytes,
        attention_omitted: Vec::new(),
        attention_zeroed: Vec::new(),
        ffn_widths: widths.clone(),
        stored_ffn_widths: widths,
        notes: vec![format!(
            "SliceGPT's sliced widths and shortcut matrices ('{SLICING_KEY}' in config.json) load in this engine only; HF transformers, vLLM and llama.cpp have no such layers"
        )],
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((staged, summary))
}
