//! `compare`: the paper's comparison on one model. Every method × sparsity is pruned with the
//! shared pipelines (written, reloaded and verified), then scored on the evaluation corpora and the
//! zero-shot tasks beside the dense model; `compare.md`, `.csv`, `.json` and plots summarise it.
//! Each finished cell is kept in `OUT/cells/`, so an interrupted run resumes where it stopped and a
//! finished cell is never recomputed.

pub mod evaluate;
pub mod plot;
pub mod table;

use crate::backend::Backend;
use crate::prune::balance::AttentionBudget;
use crate::prune::block_pipeline;
use crate::prune::pipeline::{self, PruneJob};
use crate::prune::{Method, PruneOptions};
use anyhow::{bail, Context, Result};
use evaluate::{Corpus, Evaluate, Scores, Task};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How every method prunes (each method's own defaults apply where a field is `None`).
#[derive(Clone, Debug, Serialize)]
pub struct PruneSettings {
    /// Calibration files (empty: the default corpus).
    pub calib: Vec<PathBuf>,
    /// Tokens per calibration window.
    pub seq_len: usize,
    /// 2SSP's stage-1 windows.
    pub stage1_samples: usize,
    /// 2SSP's stage-2 windows.
    pub stage2_samples: usize,
    /// Windows a block-removal method scores (None: its authors' default).
    pub samples: Option<usize>,
    /// EvoPress's search settings (in the cell key of EvoPress only, so adding it left the other
    /// cells' keys as they were).
    #[serde(skip)]
    pub evopress: crate::prune::evopress::EvoPressOptions,
}

/// Everything one `compare` run needs.
pub struct CompareJob {
    /// Dense source checkpoint (never modified).
    pub model: PathBuf,
    /// Methods, in table order.
    pub methods: Vec<Method>,
    /// Target sparsities.
    pub sparsities: Vec<f64>,
    /// Output folder (created; cells in it are reused).
    pub out: PathBuf,
    /// Pruning settings.
    pub prune: PruneSettings,
    /// Evaluation corpora (tokenized).
    pub corpora: Vec<Corpus>,
    /// Evaluation settings as they key the cells (files, window length, tasks, limits).
    pub eval_key: serde_json::Value,
    /// Tasks with their documents.
    pub tasks: Vec<Task>,
    /// The source checkpoint's tokenizer (the pruned ones keep it).
    pub tokenizer: crate::tokenizer::Tokenizer,
    /// Keep each pruned checkpoint under `OUT/models/` (default: deleted once scored).
    pub keep_models: bool,
    /// Recompute cells whose settings differ from this run's (otherwise refused).
    pub force: bool,
}

/// One row of the comparison: a method at a sparsity (or the dense model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Method name ("dense" for the unpruned model).
    pub method: String,
    /// Target sparsity (0 for the dense model).
    pub sparsity: f64,
    /// Fraction of P_main removed.
    pub sparsity_achieved: f64,
    /// What the method removed, in a few words.
    pub removed: String,
    /// Seconds the method spent deciding (calibration forward passes and searches; not writing).
    pub prune_seconds: f64,
    /// Scores of the pruned model.
    #[serde(flatten)]
    pub scores: Scores,
    /// Mean task accuracy (None without tasks).
    pub mean_acc: Option<f64>,
    /// Settings the cell was computed with; a cell is reused only under the same settings.
    pub key: serde_json::Value,
}

/// The file a cell is kept in.
fn cell_path(out: &Path, method: &str, sparsity: f64) -> PathBuf {
    out.join("cells").join(format!("{method}-{sparsity}.json"))
}

/// A finished cell under these settings, if `OUT/cells` has one; a cell computed under other
/// settings is refused unless `force`.
fn finished_cell(path: &Path, key: &serde_json::Value, force: bool) -> Result<Option<Cell>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let cell: Cell = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(_) if force => return Ok(None),
        Err(e) => bail!(
            "{} is not a compare cell ({e}); use --force to recompute it",
            path.display()
        ),
    };
    if &cell.key == key {
        Ok(Some(cell))
    } else if force {
        Ok(None)
    } else {
        bail!(
            "{} was computed with other settings; use --force to recompute it, or another --out",
            path.display()
        )
    }
}

/// Mean accuracy over tasks.
fn mean_acc(scores: &Scores) -> Option<f64> {
    (!scores.tasks.is_empty())
        .then(|| scores.tasks.iter().map(|t| t.acc).sum::<f64>() / scores.tasks.len() as f64)
}

impl CompareJob {
    /// The settings a cell of `method` at `sparsity` depends on.
    fn key(&self, method: &str, sparsity: f64) -> serde_json::Value {
        let mut prune = serde_json::to_value(&self.prune).unwrap_or_default();
        if method == Method::Evopress.name() {
            prune["evopress"] = serde_json::to_value(&self.prune.evopress).unwrap_or_default();
        }
        serde_json::json!({
            "model": self.model, "method": method, "sparsity": sparsity,
            "prune": if method == "dense" { serde_json::Value::Null } else { prune },
            "eval": self.eval_key,
        })
    }

    /// Scores the checkpoint in `dir` (pruning keeps the source's tokenizer, loaded once).
    fn evaluate(&self, dir: &Path, backend: &Backend) -> Result<Scores> {
        backend.with_model(
            dir,
            Evaluate {
                corpora: &self.corpora,
                tasks: &self.tasks,
                tokenizer: &self.tokenizer,
            },
        )
    }

    /// Refuses, before any work, a budget a method cannot meet.
    fn check_budgets(&self, backend: &Backend) -> Result<()> {
        let config = crate::config::ModelConfig::from_dir(&self.model)?;
        for &s in &self.sparsities {
            for &m in &self.methods {
                if m == Method::Slicegpt {
                    let (samples, seq_len) = (self.prune.samples, self.prune.seq_len);
                    crate::prune::slicegpt::pipeline::check_settings(
                        &config, s, samples, seq_len, None, backend,
                    )
                    .with_context(|| format!("slicegpt at sparsity {s}"))?;
                    continue;
                }
                match m.block_method() {
                    None => {
                        crate::prune::validated_plan(&config, &self.options(s))
                            .with_context(|| format!("2ssp at sparsity {s}"))?;
                    }
                    Some(b) => {
                        let (seq_len, samples) = (self.prune.seq_len, self.prune.samples);
                        let evo = &self.prune.evopress;
                        block_pipeline::check_settings(
                            b,
                            s,
                            config.blocks.len(),
                            seq_len,
                            samples,
                            evo,
                        )
                        .with_context(|| format!("{} at sparsity {s}", m.name()))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// 2SSP's options at `sparsity` (the paper's defaults).
    fn options(&self, sparsity: f64) -> PruneOptions {
        PruneOptions {
            sparsity,
            budget: AttentionBudget::Alpha(1.5),
            ffn_multiple_of: None,
            protected_attention: Vec::new(),
        }
    }

    /// Prunes with `method` at `sparsity` into `dir`; returns (decision seconds, what was removed,
    /// achieved sparsity) and keeps the report in `OUT/reports/`.
    fn prune(
        &self,
        method: Method,
        sparsity: f64,
        dir: &Path,
        backend: &Backend,
    ) -> Result<(f64, String, f64)> {
        let job = PruneJob {
            model: self.model.clone(),
            out: dir.to_path_buf(),
            force: true,
            verify: true,
            options: self.options(sparsity),
            calib: self.prune.calib.clone(),
            seq_len: self.prune.seq_len,
            stage1_samples: self.prune.stage1_samples,
            stage2_samples: self.prune.stage2_samples,
            seed: None,
            format: Some(crate::export::Format::Hf),
            dtype: None,
            ffn_mult: false,
            cache_root: None,
            evopress: self.prune.evopress.clone(),
        };
        let (seconds, removed, achieved) = match method.block_method() {
            None if method == Method::Slicegpt => {
                let r = crate::prune::slicegpt::pipeline::run(&job, self.prune.samples, backend)?;
                let removed = format!("residual width {} -> {}", r.hidden, r.sliced_width);
                (r.seconds.scoring, removed, r.sparsity_achieved)
            }
            None => {
                let r = pipeline::run(&job, backend)?;
                let removed = format!(
                    "attention {:?}; FFN {} of {} neurons kept",
                    r.removed_attention,
                    r.ffn_keep.first().unwrap_or(&0),
                    r.balance.d_ff
                );
                let seconds = r.seconds.stage1 + r.seconds.stage2;
                (seconds, removed, r.sparsity_achieved)
            }
            Some(b) => {
                let r = block_pipeline::run(&job, b, self.prune.samples, backend)?;
                let removed = if r.removed_attention == r.removed_mlp {
                    format!("blocks {:?}", r.removed_blocks)
                } else {
                    format!(
                        "attention {:?}; MLP {:?}",
                        r.removed_attention, r.removed_mlp
                    )
                };
                (r.seconds.scoring, removed, r.sparsity_achieved)
            }
        };
        let written = dir.join("pruning_report.json");
        let report = std::fs::read(&written)
            .with_context(|| format!("cannot read {}", written.display()))?;
        let kept = self
            .out
            .join("reports")
            .join(format!("{}-{sparsity}.json", method.name()));
        crate::fsutil::write_atomic(&kept, &report)?;
        Ok((seconds, removed, achieved))
    }

    /// Runs every cell not finished yet (the dense model first), rewriting the summary after each.
    pub fn run(&self, backend: &Backend) -> Result<Vec<Cell>> {
        self.check_budgets(backend)?;
        for sub in ["cells", "reports", "models"] {
            std::fs::create_dir_all(self.out.join(sub))
                .with_context(|| format!("cannot create {}", self.out.join(sub).display()))?;
        }
        let mut plan: Vec<(Option<Method>, f64)> = vec![(None, 0.0)];
        for &m in &self.methods {
            plan.extend(self.sparsities.iter().map(|&s| (Some(m), s)));
        }
        let mut cells = Vec::new();
        for (k, &(method, sparsity)) in plan.iter().enumerate() {
            let name = method.map_or("dense", Method::name);
            let key = self.key(name, sparsity);
            let path = cell_path(&self.out, name, sparsity);
            let label = format!("[{}/{}] {name} at sparsity {sparsity}", k + 1, plan.len());
            if let Some(cell) = finished_cell(&path, &key, self.force)? {
                eprintln!("{label}: done in an earlier run");
                cells.push(cell);
                continue;
            }
            eprintln!("{label}");
            let start = Instant::now();
            let cell = match method {
                None => {
                    let scores = self.evaluate(&self.model, backend)?;
                    Cell {
                        method: name.into(),
                        sparsity: 0.0,
                        sparsity_achieved: 0.0,
                        removed: "nothing".into(),
                        prune_seconds: 0.0,
                        mean_acc: mean_acc(&scores),
                        scores,
                        key,
                    }
                }
                Some(m) => {
                    let dir = self.out.join("models").join(format!("{name}-{sparsity}"));
                    let (prune_seconds, removed, sparsity_achieved) =
                        self.prune(m, sparsity, &dir, backend)?;
                    let scores = self.evaluate(&dir, backend)?;
                    if !self.keep_models {
                        std::fs::remove_dir_all(&dir)
                            .with_context(|| format!("cannot remove {}", dir.display()))?;
                    }
                    Cell {
                        method: name.into(),
                        sparsity,
                        sparsity_achieved,
                        removed,
                        prune_seconds,
                        mean_acc: mean_acc(&scores),
                        scores,
                        key,
                    }
                }
            };
            crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&cell)?.as_bytes())?;
            crate::fsutil::stall_point("compare-cell");
            eprintln!("{label}: {:.0} s", start.elapsed().as_secs_f64());
            cells.push(cell);
            if k + 1 < plan.len() {
                table::write_all(&self.out, &cells)?;
            }
        }
        table::write_all(&self.out, &cells)?;
        plot::write_all(&self.out, &cells)?;
        Ok(cells)
    }
}
