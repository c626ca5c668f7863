//! Upper bounds no real model reaches. Every size read from a file (config.json, GGUF metadata,
//! tokenizer files) is checked against its bound before anything is allocated from it, so a
//! corrupt or hostile file gets an error naming the field instead of an allocation abort.
//!
//! The bounds are far above today's largest public models (Llama-3.1-405B: 126 layers, hidden
//! 16384, FFN 53248; Gemma-3: vocabulary 262144, head_dim 256; 1M-token contexts).

use anyhow::{bail, Result};

/// Decoder blocks (`num_hidden_layers`, `block_count`).
pub const MAX_LAYERS: u64 = 1 << 12;
/// Residual width (`hidden_size`, `embedding_length`).
pub const MAX_HIDDEN: u64 = 1 << 17;
/// FFN neurons per block (`intermediate_size`, `feed_forward_length`).
pub const MAX_FFN: u64 = 1 << 20;
/// Attention heads, query or key/value (`num_attention_heads`, `head_count`).
pub const MAX_HEADS: u64 = 1 << 12;
/// Dimension of one attention head (`head_dim`, `key_length`).
pub const MAX_HEAD_DIM: u64 = 1 << 13;
/// Vocabulary entries (`vocab_size`, token lists).
pub const MAX_VOCAB: u64 = 1 << 24;
/// Positions: context lengths, sliding windows, `--seq-len`.
pub const MAX_CONTEXT: u64 = 1 << 24;

/// `value` as a usize when it is at most `max`, else an error naming `field`.
pub fn bounded(field: &str, value: u64, max: u64) -> Result<usize> {
    if value > max {
        bail!("'{field}' is {value}, larger than any real model's (at most {max}): the file is corrupt or not a model config");
    }
    Ok(value as usize)
}

/// Checks each (flag, positions) pair a command line asks for against [`MAX_CONTEXT`].
pub fn check_positions(flags: &[(&str, usize)]) -> Result<()> {
    for &(flag, n) in flags {
        if n as u64 > MAX_CONTEXT {
            bail!("{flag} {n} is more positions than any model has (at most {MAX_CONTEXT})");
        }
    }
    Ok(())
}

/// Bytes of memory the kernel reports available (`MemAvailable`), where it says (Linux).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_inclusive_and_names_the_field() {
        assert_eq!(bounded("x", MAX_LAYERS, MAX_LAYERS).unwrap(), 4096);
        let err = bounded("num_hidden_layers", 1_000_000_000, MAX_LAYERS)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_hidden_layers") && err.contains("1000000000"),
            "{err}"
        );
    }
}
