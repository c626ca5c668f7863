//! GGUF import: turns a llama.cpp GGUF file into a Hugging Face checkpoint folder
//! (`config.json`, F32 `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`).

pub mod dequant;
pub mod hf_config;
pub mod reader;
pub mod tokenizer;
pub mod tokenizer_meta;
pub mod writer;

use crate::fsutil::{OutputClaim, OutputKind, Staged};
use crate::weights::writer as safetensors_writer;
use anyhow::{bail, Context, Result};
use hf_config::{ArchParams, TensorPlan};
use reader::GgufFile;
use std::path::{Path, PathBuf};

/// Summary of an import, for the CLI's table/JSON.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportSummary {
    /// GGUF `general.architecture`.
    pub architecture: String,
    /// Tensors written to model.safetensors.
    pub n_tensors: usize,
    /// Parameters written (a tied LM head is counted once).
    pub n_params: u64,
    /// Description of the rebuilt tokenizer.
    pub tokenizer_model: String,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// The checkpoint folder written.
    pub out_dir: PathBuf,
}

/// Reads a GGUF file and writes an HF checkpoint folder (config.json, model.safetensors in f32, tokenizer.json, tokenizer_config.json).
pub fn import(src: &Path, out: &Path, force: bool) -> Result<ImportSummary> {
    let claim = OutputClaim::acquire(out, force)?;
    let g = GgufFile::open(src)?;
    for t in &g.tensors {
        if !t.ggml_type.is_supported() {
            bail!(
                "tensor '{}' has type {}, which is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
                t.name,
                t.ggml_type.name()
            );
        }
    }
    let params = ArchParams::read(&g)?;
    let plans = hf_config::plan_tensors(&params, &g.tensors)?;
    let staged = Staged::create(claim, OutputKind::Dir)?;

    let ctx = g.opt_u64(&format!("{}.context_length", params.gguf_arch))?;
    let tok = tokenizer::build(&g, ctx)?;
    if tok.vocab_size > params.vocab_size {
        bail!(
            "the vocabulary has {} tokens but the embedding only {} rows",
            tok.vocab_size,
            params.vocab_size
        );
    }
    let config = hf_config::config_json(&g, &params, &tok.ids)?;

    let dir = staged.path();
    write_json(&dir.join("config.json"), &config, true)?;
    write_json(
        &dir.join("generation_config.json"),
        &tok.generation_config,
        true,
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tok.tokenizer_config,
        true,
    )?;
    write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json, false)?;
    // The original tokenizer metadata, so that a GGUF export later writes it back exactly.
    tokenizer_meta::write_side_file(&dir.join("tokenizer.gguf"), &g)?;
    write_weights(&g, &plans, &dir.join("model.safetensors"))?;
    staged.commit()?;

    Ok(ImportSummary {
        architecture: params.gguf_arch.clone(),
        n_tensors: plans.len(),
        n_params: plans
            .iter()
            .map(|p| p.shape.iter().product::<usize>() as u64)
            .sum(),
        tokenizer_model: tok.model,
        vocab_size: tok.vocab_size,
        out_dir: out.to_path_buf(),
    })
}

fn write_json(path: &Path, value: &serde_json::Value, pretty: bool) -> Result<()> {
    let mut text = if pretty {
        serde_json::to_string_pretty(value)?
    } else {
        serde_json::to_string(value)?
    };
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Dequantizes every planned tensor, applies its transform and streams it into `path`.
fn write_weights(g: &GgufFile, plans: &[TensorPlan], path: &Path) -> Result<()> {
    let entries: Vec<safetensors_writer::Entry> = plans
        .iter()
        .map(|p| safetensors_writer::Entry {
            name: p.hf_name.clone(),
            dtype: safetensors::Dtype::F32,
            shape: p.shape.clone(),
        })
        .collect();
    safetensors_writer::write_f32(path, &entries, |i| {
        let p = &plans[i];
        let t = &g.tensors[p.index];
        let n = t.n_elements() as usize;
        let values = dequant::dequantize(t.ggml_type, g.tensor_data(t), n)
            .with_context(|| format!("dequantizing tensor '{}'", t.name))?;
        hf_config::apply_transform(p.transform, &p.shape, values)
            .with_context(|| format!("tensor '{}'", t.name))
    })?;
    Ok(())
}
