//! Command-line interface: argument parsing and one module per subcommand.

mod bench;
mod compare;
mod device;
mod eval;
mod evopress;
mod export;
mod generate;
mod import;
mod output;
mod prune;
mod tasks;
mod tokenize;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// twossp-engine: 2SSP structured pruning of LLMs, with an exact CPU reference engine.
#[derive(Parser, Debug)]
#[command(name = "twossp-engine", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a GGUF file (e.g. a quantized llama.cpp model) into an HF checkpoint folder.
    Import(import::ImportArgs),
    /// Perplexity of a model on text files (reference protocol of SPEC-2SSP.md).
    Eval(eval::EvalArgs),
    /// Greedy generation from a prompt (KV cache), for a qualitative look.
    Generate(generate::GenerateArgs),
    /// Prefill/decode speed and memory, optionally against a baseline model.
    Bench(bench::BenchArgs),
    /// Structured pruning: 2SSP (FFN neurons, then attention submodules) or a block-removal baseline (--method).
    Prune(prune::PruneArgs),
    /// Write a model as DeciLM (vLLM, HF), GGUF (llama.cpp) or a native HF folder, verified by reload.
    Export(export::ExportArgs),
    /// Zero-shot multiple-choice accuracy (ARC, HellaSwag, PIQA, WinoGrande, MMLU) as lm-eval computes it.
    Tasks(tasks::TasksArgs),
    /// Every method x sparsity pruned, scored on perplexity and tasks beside the dense model: tables and plots (resumable).
    Compare(compare::CompareArgs),
    /// Token ids of text files as `eval` sees them (for comparisons with other tokenizers).
    Tokenize(tokenize::TokenizeArgs),
}

/// Stack of each rayon worker: 8 MiB, as Linux gives the main thread.
const WORKER_STACK_BYTES: usize = 8 << 20;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    // A worker runs the whole command (below), so the workers get a main thread's stack.
    let mut pool = rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK_BYTES);
    if let Some(n) = cli.threads {
        pool = pool.num_threads(n);
    }
    pool.build_global()?;
    // The command runs on a worker of the pool, so that its parallel kernels share their work
    // with the other workers directly: called from outside the pool, every product would park this
    // thread and wake it again (hundreds of times per decoded token).
    rayon::scope(|_| run_command(cli.command))
}

/// Runs one subcommand (on a worker of the rayon pool).
fn run_command(command: Command) -> Result<()> {
    match command {
        Command::Import(args) => import::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::run(args),
        Command::Tasks(args) => tasks::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Tokenize(args) => tokenize::run(args),
    }
}
