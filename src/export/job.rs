//! The `export` job: any model the engine loads, written in a deployable format, then reloaded
//! and checked against the source's perplexity.

use super::{ExportOptions, ExportSummary};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::data::Corpus;
use crate::prune::decisions::Decisions;
use crate::prune::pipeline::{verify, DEFAULT_CALIB};
use crate::prune::report::Verification;
use crate::tokenizer::Tokenizer;
use crate::weights::TensorStore;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// One export request.
#[derive(Clone, Debug)]
pub struct ExportJob {
    /// Source model folder (never modified).
    pub model: PathBuf,
    /// Output path (folder, or file for GGUF).
    pub out: PathBuf,
    /// Format, dtype and profile.
    pub options: ExportOptions,
    /// Replace an existing output.
    pub force: bool,
    /// Calibration text for the check (`None`: skip the check).
    pub verify_with: Option<Vec<PathBuf>>,
    /// Tokens of the verification window.
    pub seq_len: usize,
}

/// What an export wrote and how it was checked.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    /// The source folder.
    pub source_model: PathBuf,
    /// What was written.
    pub export: ExportSummary,
    /// The reload check (absent with `--no-verify`).
    pub verification: Option<Verification>,
}

/// Runs an export on `backend` (which computes the verification perplexities).
pub fn run(job: &ExportJob, backend: &Backend) -> Result<ExportReport> {
    let claim = crate::fsutil::claim_output(&job.out, &job.model, job.force)?;
    let config = ModelConfig::from_dir(&job.model)?;
    let decisions = Decisions::keep_all(&config);
    super::check(&config, &decisions, &job.options)?;
    let tokens = match &job.verify_with {
        Some(files) => {
            let files = if files.is_empty() {
                vec![PathBuf::from(DEFAULT_CALIB)]
            } else {
                files.clone()
            };
            let tokenizer = Tokenizer::from_dir(&job.model)?;
            let corpus = Corpus::load(&files, &tokenizer)?;
            let window = corpus
                .windows(job.seq_len, Some(1))?
                .first()
                .map(|w| w.to_vec());
            Some(window.unwrap_or_default())
        }
        None => None,
    };
    let store = TensorStore::open(&job.model)?;
    let (staged, summary) =
        super::write_staged(&job.model, &config, &store, &decisions, claim, &job.options)?;
    drop(store);
    let verification = match &tokens {
        Some(window) => {
            let windows = [window.as_slice()];
            let ppl = backend.folder_perplexity(&job.model, &windows)?;
            Some(verify(
                backend,
                staged.path(),
                job.options.format,
                ppl,
                job.options.dtype,
                &windows,
            )?)
        }
        None => None,
    };
    staged.commit()?;
    Ok(ExportReport {
        source_model: job.model.clone(),
        export: summary,
        verification,
    })
}
