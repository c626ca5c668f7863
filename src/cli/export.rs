//! `export`: a model the engine loads, written as DeciLM, GGUF or a native HF folder, verified.

use super::device::DeviceArgs;
use super::device::DtypeChoice;
use super::output::{print_json, print_table};
use crate::export::job::{self, ExportJob};
use crate::export::{ExportOptions, Format};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Model folder to export (dense or pruned; safetensors or an imported GGUF). Never modified.
    #[arg(long)]
    pub model: PathBuf,
    /// decilm (vLLM, HF trust_remote_code), gguf (llama.cpp) or hf (stock loaders everywhere).
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output folder (a file for gguf).
    #[arg(long)]
    pub out: PathBuf,
    /// Output dtype and DeciLM profile.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Skip reloading the output and comparing its perplexity with the source's.
    #[arg(long)]
    pub no_verify: bool,
    /// Text for the verification window [default: data/calib-sotu.jsonl].
    #[arg(long, num_args = 1..)]
    pub calib: Vec<PathBuf>,
    /// Tokens of the verification window.
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backend of the verification.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// How outputs are written, shared by `export` and `prune` (the weights' dtype is `--dtype`'s).
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// DeciLM: the portable ffn_mult profile (FFN widths zero-padded to multiples of 256) for
    /// TRT-LLM, SGLang, older vLLM and llama.cpp's converter.
    #[arg(long)]
    pub ffn_mult: bool,
}

impl OutputArgs {
    /// The export options for `format`, writing the weights at `dtype` (`--dtype`; `auto`: as the
    /// checkpoint stores them).
    pub fn options(&self, format: Format, dtype: DtypeChoice) -> ExportOptions {
        ExportOptions {
            format,
            dtype: dtype.stored(),
            ffn_mult: self.ffn_mult,
        }
    }
}

/// Runs `export`.
pub fn run(args: ExportArgs) -> Result<()> {
    crate::limits::check_positions(&[("--seq-len", args.seq_len)])?;
    let backend = args.device.backend()?;
    let job = ExportJob {
        model: args.model.clone(),
        out: args.out.clone(),
        options: args.output.options(args.format, args.device.dtype.choice),
        force: args.force,
        verify_with: (!args.no_verify).then(|| args.calib.clone()),
        seq_len: args.seq_len,
    };
    let report = job::run(&job, &backend)?;
    if args.json {
        return print_json(&report);
    }
    let e = &report.export;
    let mut rows = vec![
        vec![
            "format / dtype".into(),
            format!("{} / {}", e.format.name(), e.dtype),
        ],
        vec![
            "tensors / bytes".into(),
            format!("{} / {}", e.tensors, e.weight_bytes),
        ],
        vec![
            "attention omitted".into(),
            format!("{:?}", e.attention_omitted),
        ],
        vec![
            "attention kept as zeros".into(),
            format!("{:?}", e.attention_zeroed),
        ],
        vec!["FFN widths".into(), summarize(&e.ffn_widths)],
        vec!["stored FFN widths".into(), summarize(&e.stored_ffn_widths)],
        vec![
            "verified reload".into(),
            match &report.verification {
                None => "skipped".into(),
                Some(v) if v.identical => format!("identical perplexity ({:.4})", v.ppl_reloaded),
                Some(v) => format!(
                    "ppl {:.4} vs {:.4} (rel. {:.2e}, bound {:.0e})",
                    v.ppl_reloaded, v.ppl_in_memory, v.relative_difference, v.bound
                ),
            },
        ],
        vec!["seconds".into(), format!("{:.1}", e.seconds)],
        vec!["output".into(), e.path.display().to_string()],
    ];
    for note in &e.notes {
        rows.push(vec!["note".into(), note.clone()]);
    }
    print_table(&["export", "value"], &rows);
    Ok(())
}

/// `[w; n]` for uniform lists, else the list.
fn summarize(widths: &[usize]) -> String {
    match widths.first() {
        Some(&w) if widths.iter().all(|&x| x == w) => format!("{w} x {}", widths.len()),
        _ => format!("{widths:?}"),
    }
}
