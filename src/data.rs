//! Text corpora: documents from `.jsonl`/`.txt` files, joined, tokenized once, cut into windows.

use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Separator placed between documents before tokenization (the reference protocol).
pub const DOCUMENT_SEPARATOR: &str = "\n\n";

/// Documents of one file: `.jsonl` (one JSON object with a `text` field per line) or `.txt` (one document).
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read data file {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let docs: Vec<String> = match ext {
        "jsonl" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
                v["text"].as_str().map(str::to_owned).with_context(|| {
                    format!("{}:{}: no string field 'text'", path.display(), i + 1)
                })
            })
            .collect::<Result<_>>()?,
        "txt" => vec![text],
        other => bail!(
            "unsupported data file type '.{other}' for {} (use .jsonl or .txt)",
            path.display()
        ),
    };
    if docs.iter().all(|d| d.trim().is_empty()) {
        bail!("data file {} contains no text", path.display());
    }
    Ok(docs)
}

/// A tokenized corpus and where it came from.
pub struct Corpus {
    /// Source files, in order.
    pub files: Vec<PathBuf>,
    /// Number of documents joined.
    pub n_documents: usize,
    /// Token ids of the joined text.
    pub ids: Vec<u32>,
}

impl Corpus {
    /// Reads `files`, joins all their documents with [`DOCUMENT_SEPARATOR`] and tokenizes once.
    pub fn load(files: &[PathBuf], tokenizer: &Tokenizer) -> Result<Self> {
        let mut docs = Vec::new();
        for f in files {
            docs.extend(read_documents(f)?);
        }
        let ids = tokenizer.encode(&docs.join(DOCUMENT_SEPARATOR))?;
        Ok(Self {
            files: files.to_vec(),
            n_documents: docs.len(),
            ids,
        })
    }

    /// Consecutive non-overlapping windows of `seq_len` tokens (short tail dropped), at most `max`.
    pub fn windows(&self, seq_len: usize, max: Option<usize>) -> Result<Vec<&[u32]>> {
        if seq_len < 2 {
            bail!("sequence length must be at least 2, got {seq_len}");
        }
        let all: Vec<&[u32]> = self
            .ids
            .chunks_exact(seq_len)
            .take(max.unwrap_or(usize::MAX))
            .collect();
        if all.is_empty() {
            bail!(
                "{} holds {} tokens, fewer than one window of {seq_len}",
                self.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.ids.len()
            );
        }
        Ok(all)
    }
}
