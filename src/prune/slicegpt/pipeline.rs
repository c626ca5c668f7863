//! `prune --method slicegpt`: SliceGPT as one library call, sharing the calibration, output
//! claim, reload verification and report writing of the other methods. It runs on the CPU backend
//! (the rotations edit every weight in memory); the output is written from the sliced model.

use super::pca::ExplainedVariance;
use super::{check_sliceable, sliced_width, slicegpt};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::engine::Engine;
use crate::export::{self, Format};
use crate::model::Model;
use crate::prune::block_pipeline::{BlockCalibration, BlockSeconds};
use crate::prune::pipeline::{
    calibration_corpus, calibration_samples, claim_outputs, commit_with_report, verify, PruneJob,
};
use crate::prune::report::{ParamsChange, Verification};
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;

/// Calibration windows SliceGPT scores by default (the 2SSP authors' `main.py`).
pub const DEFAULT_SAMPLES: usize = 256;

/// What `pruning_report.json` holds for SliceGPT.
#[derive(Clone, Debug, Serialize)]
pub struct SliceReport {
    /// `slicegpt`.
    pub method: String,
    /// Requested sparsity (the sliced width is `int((1 - s) · hidden)`, a multiple of 8).
    pub sparsity_target: f64,
    /// Hidden size before slicing.
    pub hidden: usize,
    /// Width every residual site but the last keeps.
    pub sliced_width: usize,
    /// Fraction of P_main removed (the shortcut matrices count as parameters).
    pub sparsity_achieved: f64,
    /// Residual width after the embeddings, after each attention and after each block.
    pub residual_widths: Vec<usize>,
    /// Share of the calibration signal kept at every PCA site, in order.
    pub explained_variance: Vec<ExplainedVariance>,
    /// Mean of `fraction_kept` over the sliced sites (the last block's output keeps every direction).
    pub mean_fraction_kept: f64,
    /// Smallest `fraction_kept`.
    pub min_fraction_kept: f64,
    /// Parameters before and after.
    #[serde(flatten)]
    pub params: ParamsChange,
    /// Calibration text and windows.
    pub calibration: BlockCalibration,
    /// Seconds spent slicing, saving, in all.
    pub seconds: BlockSeconds,
    /// Reload check of the written output.
    pub verification: Option<Verification>,
    /// Backend.
    pub backend: String,
    /// What was written.
    pub export: export::ExportSummary,
}

/// Checks a SliceGPT run's settings before any work; returns the sliced width and the windows.
pub fn check_settings(
    config: &ModelConfig,
    sparsity: f64,
    samples: Option<usize>,
    seq_len: usize,
    format: Option<Format>,
    backend: &Backend,
) -> Result<(usize, usize)> {
    check_sliceable(config)?;
    let width = sliced_width(sparsity, config.hidden)?;
    if matches!(backend, Backend::Cuda(_)) {
        bail!("--method slicegpt runs on the CPU backend (its rotations edit every weight in memory); use --device cpu");
    }
    if format.is_some_and(|f| f != Format::Hf) {
        bail!("--method slicegpt writes the engine's HF layout only (--format hf): no other runtime has SliceGPT's shortcut matrices");
    }
    let samples = samples.unwrap_or(DEFAULT_SAMPLES);
    if samples == 0 {
        bail!("--samples must be at least 1");
    }
    // The residual stream of every calibration token is kept from one block to the next.
    let stream_bytes = (samples as u64)
        .saturating_mul(seq_len as u64)
        .saturating_mul(config.hidden as u64 * 4);
    if let Some(free) = crate::limits::available_memory().filter(|&free| stream_bytes > free) {
        bail!(
            "SliceGPT keeps the residual stream of all {samples} x {seq_len} calibration tokens ({:.1} GB), more than the {:.1} GB of memory available; use fewer --samples",
            stream_bytes as f64 / 1e9,
            free as f64 / 1e9
        );
    }
    Ok((width, samples))
}

/// Runs SliceGPT: slice with the PCA of `samples` calibration windows (`None`: 256), write,
/// verify, report.
pub fn run(job: &PruneJob, samples: Option<usize>, backend: &Backend) -> Result<SliceReport> {
    let start = Instant::now();
    let config = ModelConfig::from_dir(&job.model)?;
    let (width, samples) = check_settings(
        &config,
        job.options.sparsity,
        samples,
        job.seq_len,
        job.format,
        backend,
    )?;
    let job = &PruneJob {
        format: Some(Format::Hf),
        ..job.clone()
    };
    let (claim, format, beside) = claim_outputs(job, &config)?;
    let (calib_files, corpus) = calibration_corpus(job)?;
    let windows = &calibration_samples(&corpus, job, samples)?;
    let Backend::Cpu(precision) = backend else {
        unreachable!("check_settings refused other backends")
    };
    let mut model = Model::load_as(&job.model, *precision)?;
    let params_before = (model.params_main(), model.params_total());
    let t_slice = Instant::now();
    let run = slicegpt(&mut model, windows, width)?;
    let seconds_slicing = t_slice.elapsed().as_secs_f64();
    let params = ParamsChange::new(params_before, (model.params_main(), model.params_total()));
    let ppl_in_memory = job
        .verify
        .then(|| model.perplexity(&windows[..1], "verify"))
        .transpose()?;

    let t_save = Instant::now();
    let dtype = job.dtype.unwrap_or(model.storage_dtype);
    let (staged, summary) = export::sliced::write_staged(&job.model, &model, claim, dtype)?;
    let seconds_save = t_save.elapsed().as_secs_f64();
    let residual_widths = model
        .config
        .slicing
        .as_ref()
        .expect("sliced")
        .widths
        .clone();
    let converted = (dtype != model.precision().stored_dtype()).then_some(dtype);
    drop(model);
    let verification = ppl_in_memory
        .map(|ppl| {
            verify(
                backend,
                staged.path(),
                format,
                ppl,
                converted,
                &windows[..1],
            )
        })
        .transpose()?;
    let sliced: Vec<f64> = run
        .sites
        .iter()
        .filter(|s| s.kept_dims < config.hidden)
        .map(|s| s.fraction_kept)
        .collect();
    let report = SliceReport {
        method: "slicegpt".into(),
        sparsity_target: job.options.sparsity,
        hidden: config.hidden,
        sliced_width: run.width,
        sparsity_achieved: params.sparsity_achieved(),
        residual_widths,
        mean_fraction_kept: sliced.iter().sum::<f64>() / sliced.len() as f64,
        min_fraction_kept: sliced.iter().copied().fold(f64::INFINITY, f64::min),
        explained_variance: run.sites,
        params,
        calibration: BlockCalibration::of(job, &calib_files, samples)?,
        seconds: BlockSeconds {
            scoring: seconds_slicing,
            save: seconds_save,
            total: start.elapsed().as_secs_f64(),
        },
        verification,
        backend: backend.describe(),
        export: summary,
    };
    commit_with_report(staged, format, &beside, &report)?;
    Ok(report)
}
