//! Text ↔ token ids through an HF `tokenizer.json` (the `tokenizers` crate).

use anyhow::{anyhow, Result};
use rayon::prelude::*;
use std::path::Path;

/// Texts longer than twice this many bytes are tokenized in pieces of about this size: one call
/// over a whole corpus holds some 80 bytes per byte of text (830 MB for a 10 MB corpus).
const PIECE_BYTES: usize = 1 << 18;
/// Bytes on each side of a cut over which [`Tokenizer::cut_is_exact`] compares the tokens.
const CUT_CHECK_BYTES: usize = 4096;
/// Candidate cuts tried near each piece boundary before that boundary is given up.
const CUT_TRIES: usize = 8;

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
        Self::from_json(&text, &path)
    }

    /// The tokenizer described by `text`, the contents of `path` (named in errors).
    fn from_json(text: &str, path: &Path) -> Result<Self> {
        // The syntax is checked first (without building a tree: Gemma-3's 14 MB file would take
        // 4 s and 350 MB as a `serde_json::Value`): the tokenizers crate panics (instead of
        // returning an error) on some syntax errors inside its decoder section (found by fuzzing).
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|e| anyhow!("{} is not valid JSON: {e}", path.display()))?;
        let mut inner: tokenizers::Tokenizer = serde_json::from_str(text)
            .map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        // A corpus is tokenized whole: a truncation or padding set in the file must not apply.
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        inner.with_padding(None);
        Ok(Self { inner })
    }

    /// Token ids of `text`, without special tokens (no BOS), as the perplexity protocol requires.
    ///
    /// The ids of one call over the whole text; a long text is tokenized in pieces, in parallel,
    /// cut only where [`Tokenizer::cut_is_exact`] finds the tokens around the cut unchanged.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let cuts = self.exact_cuts(text)?;
        let starts = std::iter::once(0).chain(cuts.iter().copied());
        let ends = cuts.iter().copied().chain(std::iter::once(text.len()));
        let pieces: Vec<(usize, usize)> = starts.zip(ends).collect();
        let ids = pieces
            .par_iter()
            .map(|&(a, b)| self.ids_in_one_call(&text[a..b]))
            .collect::<Result<Vec<_>>>()?;
        Ok(ids.concat())
    }

    /// Token ids of `text` from one call of the tokenizer (no offsets kept).
    fn ids_in_one_call(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Where a long `text` can be cut into pieces whose ids, joined, are those of the whole
    /// (ascending; empty for a short text or a tokenizer that no cut suits, e.g. one that
    /// prepends "▁" to every text it is given).
    fn exact_cuts(&self, text: &str) -> Result<Vec<usize>> {
        let targets: Vec<usize> = (1..)
            .map(|k| k * PIECE_BYTES)
            .take_while(|&t| t + PIECE_BYTES <= text.len())
            .collect();
        let Some((&first, rest)) = targets.split_first() else {
            return Ok(Vec::new());
        };
        let Some(first_cut) = self.exact_cut_near(text, first)? else {
            return Ok(Vec::new());
        };
        let rest = rest
            .par_iter()
            .map(|&t| self.exact_cut_near(text, t))
            .collect::<Result<Vec<_>>>()?;
        Ok(std::iter::once(first_cut)
            .chain(rest.into_iter().flatten())
            .collect())
    }

    /// The first of up to [`CUT_TRIES`] candidate cuts after byte `target` (just before a
    /// space or newline that follows a non-space) that [`Tokenizer::cut_is_exact`] accepts.
    fn exact_cut_near(&self, text: &str, target: usize) -> Result<Option<usize>> {
        let bytes = text.as_bytes();
        let candidates = (target..target + PIECE_BYTES / 2)
            .filter(|&c| matches!(bytes[c], b' ' | b'\n') && !bytes[c - 1].is_ascii_whitespace())
            .take(CUT_TRIES);
        for cut in candidates {
            if self.cut_is_exact(text, cut)? {
                return Ok(Some(cut));
            }
        }
        Ok(None)
    }

    /// Whether cutting `text` at byte `cut` leaves every token within [`CUT_CHECK_BYTES`] of it
    /// as one call over twice that much context on each side gives it (same ids, same offsets).
    /// Tokens farther away see the same text either way; that they also come out the same
    /// assumes merges that stay local, true of word-splitting tokenizers and checked for the
    /// real SmolLM2 and Gemma-3 ones (whole corpora against llama.cpp in tests/real_model.rs).
    fn cut_is_exact(&self, text: &str, cut: usize) -> Result<bool> {
        let lo = text.floor_char_boundary(cut.saturating_sub(2 * CUT_CHECK_BYTES));
        let hi = text.ceil_char_boundary(cut + 2 * CUT_CHECK_BYTES);
        let (near_lo, near_hi) = (cut.saturating_sub(CUT_CHECK_BYTES), cut + CUT_CHECK_BYTES);
        let near = |piece: &str, base: usize| -> Result<Vec<(usize, usize, u32)>> {
            let enc = self
                .inner
                .encode(piece, false)
                .map_err(|e| anyhow!("tokenization failed: {e}"))?;
            Ok(enc
                .get_offsets()
                .iter()
                .zip(enc.get_ids())
                .map(|(&(s, e), &id)| (base + s, base + e, id))
                .filter(|&(s, e, _)| s >= near_lo && e <= near_hi)
                .collect())
        };
        let mut joined = near(&text[lo..cut], lo)?;
        joined.extend(near(&text[cut..hi], cut)?);
        Ok(near(&text[lo..hi], lo)? == joined)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// About `n` bytes of varied text: words, digits, punctuation, blank lines, multi-byte chars.
    fn long_text(n: usize) -> String {
        let words = [
            "the",
            "cut",
            "Ünïcode",
            "中文",
            "tokens",
            "2048",
            "don't",
            "a.b",
            "  x",
            "end.",
        ];
        let seps = [" ", " ", " ", "\n", "\n\n", ", ", "\t", "   "];
        let (mut text, mut state) = (String::new(), 12345u64);
        while text.len() < n {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(words[(state >> 33) as usize % words.len()]);
            text.push_str(seps[(state >> 45) as usize % seps.len()]);
        }
        text
    }

    /// The byte-level BPE tokenizer of the random test models, with its JSON edited by `edit`.
    fn fixture_tokenizer(edit: impl FnOnce(&mut serde_json::Value)) -> Tokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/tokenizer.json");
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut value);
        Tokenizer::from_json(&value.to_string(), &path).unwrap()
    }

    fn one_call(t: &Tokenizer, text: &str) -> Vec<u32> {
        t.inner.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn long_text_in_pieces_gives_the_ids_of_one_call() {
        let t = fixture_tokenizer(|_| ());
        let text = long_text(5 * PIECE_BYTES / 2);
        let cuts = t.exact_cuts(&text).unwrap();
        assert_eq!(cuts.len(), 1, "one cut expected in 2.5 pieces: {cuts:?}");
        assert_eq!(t.encode(&text).unwrap(), one_call(&t, &text));
    }

    #[test]
    fn tokenizer_that_prepends_to_every_text_is_not_cut() {
        let t = fixture_tokenizer(|v| {
            v["normalizer"] = serde_json::json!({"type": "Prepend", "prepend": "Ġ"});
        });
        let text = long_text(5 * PIECE_BYTES / 2);
        assert!(t.exact_cuts(&text).unwrap().is_empty());
        assert_eq!(t.encode(&text).unwrap(), one_call(&t, &text));
    }

    #[test]
    fn cut_check_rejects_a_cut_inside_a_word() {
        let t = fixture_tokenizer(|_| ());
        let text = long_text(3 * PIECE_BYTES);
        let inside = (PIECE_BYTES..)
            .find(|&c| text.as_bytes()[c - 1] == b't' && text.as_bytes()[c] == b'o')
            .unwrap();
        assert!(!t.cut_is_exact(&text, inside).unwrap());
    }

    #[test]
    fn truncation_in_the_file_does_not_shorten_a_corpus() {
        let t = fixture_tokenizer(|v| {
            v["truncation"] = serde_json::json!({"direction": "Right", "max_length": 8,
                "strategy": "LongestFirst", "stride": 0});
        });
        assert!(t.encode(&long_text(1000)).unwrap().len() > 8);
    }
}
