//! `import`: a GGUF file becomes an HF checkpoint folder the engine (and HF transformers) can load.

use super::output::{print_json, print_table};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// GGUF file (v2/v3).
    pub src: PathBuf,
    /// Output folder (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `import`.
pub fn run(args: ImportArgs) -> Result<()> {
    let start = Instant::now();
    let summary = crate::gguf::import(&args.src, &args.out, args.force)?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        return print_json(&serde_json::json!({ "summary": summary, "seconds": seconds }));
    }
    print_table(
        &[
            "architecture",
            "tensors",
            "params",
            "tokenizer",
            "vocab",
            "seconds",
            "output",
        ],
        &[vec![
            summary.architecture.clone(),
            summary.n_tensors.to_string(),
            summary.n_params.to_string(),
            summary.tokenizer_model.clone(),
            summary.vocab_size.to_string(),
            format!("{seconds:.1}"),
            summary.out_dir.display().to_string(),
        ]],
    );
    Ok(())
}
