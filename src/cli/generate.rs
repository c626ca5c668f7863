//! `generate`: greedy continuation of a prompt, for a quick qualitative look at a (pruned) model.

use super::output::print_json;
use crate::config::ModelConfig;
use crate::engine::{Engine, EngineJob};
use crate::generate::{greedy, Generation};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// HF checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to continue (the tokenizer's special tokens, e.g. BOS, are added as it defines).
    #[arg(long)]
    pub prompt: String,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Print JSON instead of plain text.
    #[arg(long)]
    pub json: bool,
    /// Backend and precision.
    #[command(flatten)]
    pub backend: super::device::BackendArgs,
}

/// Greedy generation of a prompt's continuation, as a job for [`Backend::with_model`].
struct Greedy<'a> {
    prompt: &'a [u32],
    max_new: usize,
    stop: &'a [u32],
}

impl EngineJob for Greedy<'_> {
    type Output = Generation;

    fn run<E: Engine>(self, model: E) -> Result<Generation> {
        greedy(&model, self.prompt, self.max_new, self.stop)
    }
}

/// Runs `generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    crate::limits::check_positions(&[("--max-new-tokens", args.max_new_tokens)])?;
    let backend = args.backend.backend()?;
    let config = ModelConfig::from_dir(&args.model)?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let prompt = tokenizer.encode_with_special(&args.prompt)?;
    let stop = stop_tokens(&config);
    let job = Greedy {
        prompt: &prompt,
        max_new: args.max_new_tokens,
        stop: &stop,
    };
    let generation = backend.with_model(&args.model, job)?;
    let text = tokenizer.decode(&generation.tokens)?;
    let decode_rate =
        (generation.tokens.len().saturating_sub(1)) as f64 / generation.decode_seconds.max(1e-9);
    if args.json {
        return print_json(&serde_json::json!({
            "prompt": args.prompt, "completion": text, "new_tokens": generation.tokens.len(),
            "time_to_first_token_s": generation.time_to_first_token, "decode_tokens_per_s": decode_rate,
        }));
    }
    println!("{}{}", args.prompt, text);
    eprintln!(
        "[{} tokens, first after {:.3}s, then {:.1} tok/s]",
        generation.tokens.len(),
        generation.time_to_first_token,
        decode_rate
    );
    Ok(())
}

/// End-of-sequence ids from config.json (`eos_token_id`, a number or a list).
fn stop_tokens(config: &ModelConfig) -> Vec<u32> {
    match &config.raw["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        _ => Vec::new(),
    }
}
