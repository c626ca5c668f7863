//! Text ↔ token ids through an HF `tokenizer.json` (the `tokenizers` crate).

use anyhow::{anyhow, Result};
use std::path::Path;

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            anyhow::bail!("missing {}", path.display());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        // Parsed to a JSON value first: the tokenizers crate panics (instead of returning an
        // error) on some syntax errors inside its decoder section (found by fuzzing).
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{} is not valid JSON: {e}", path.display()))?;
        let inner: tokenizers::Tokenizer = serde_json::from_value(value)
            .map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        Ok(Self { inner })
    }

    /// Token ids of `text`, without special tokens (no BOS), as the perplexity protocol requires.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with the tokenizer's special tokens (e.g. BOS) added.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of token ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("detokenization failed: {e}"))
    }
}
