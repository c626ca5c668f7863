//! Rebuilds a Hugging Face `tokenizer.json` (and its config files) from a GGUF vocabulary so that it
//! tokenizes like llama.cpp with special-token parsing on.
//!
//! * `gpt2` vocabularies become byte-level BPE with the GGUF merges and the pre-tokenizer regexes
//!   llama.cpp uses for `tokenizer.ggml.pre`.
//! * `llama` (SentencePiece) vocabularies become BPE with merges derived from the scores: llama.cpp
//!   repeatedly joins the adjacent pair whose concatenation is the best-scoring token, which is what
//!   HF BPE does when every (left, right) split of a token is a merge ranked by that token's score.
//! * Control, unknown and user-defined tokens become added tokens matched before the model, as
//!   llama.cpp partitions them out of the text first.

use super::hf_config::SpecialIds;
use super::reader::{GgufFile, MetaValue};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// GGUF token types (`tokenizer.ggml.token_type`).
mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// Token texts llama.cpp always treats as control tokens (end-of-generation and FIM markers).
const FORCED_CONTROL: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<|eom_id|>",
    "<end_of_utterance>",
    "<|return|>",
    "<|call|>",
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<reponame>",
    "<|file_sep|>",
];

/// Token texts llama.cpp treats as end of generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// The files describing the tokenizer, plus facts for the summary.
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer_json: Value,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Value,
    /// `generation_config.json`.
    pub generation_config: Value,
    /// Short description, e.g. "gpt2 (byte-level BPE, pre 'smollm')".
    pub model: String,
    /// Number of tokens.
    pub vocab_size: usize,
    /// Special ids for config.json.
    pub ids: SpecialIds,
}

/// The GGUF vocabulary.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i64>,
    scores: Vec<f32>,
    /// Text → id (the last id wins for duplicated texts, as in llama.cpp).
    index: HashMap<String, u32>,
}

impl Vocab {
    fn read(g: &GgufFile) -> Result<Self> {
        let list = g
            .get("tokenizer.ggml.tokens")
            .context("missing metadata key 'tokenizer.ggml.tokens'")?;
        let list = list
            .as_array()
            .context("'tokenizer.ggml.tokens' is not an array")?;
        if list.is_empty() {
            bail!("'tokenizer.ggml.tokens' is empty");
        }
        let mut tokens = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let s = v
                .as_str()
                .with_context(|| format!("tokenizer.ggml.tokens[{i}] is not a string"))?;
            tokens.push(if s.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                s.to_string()
            });
        }
        let n = tokens.len();
        let types = match g.get("tokenizer.ggml.token_type") {
            None => vec![token_type::NORMAL; n],
            Some(v) => per_token(v, n, "tokenizer.ggml.token_type", |x| match x {
                MetaValue::Int(i) => Some(*i),
                MetaValue::Uint(u) => i64::try_from(*u).ok(),
                _ => None,
            })?,
        };
        let scores = match g.get("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(v) => per_token(v, n, "tokenizer.ggml.scores", MetaValue::as_f32)?,
        };
        let mut types = types;
        let mut index = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            index.insert(t.clone(), i as u32);
            if FORCED_CONTROL.contains(&t.as_str()) {
                types[i] = token_type::CONTROL;
            }
        }
        Ok(Self {
            tokens,
            types,
            scores,
            index,
        })
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Tokens matched before the model: control and unknown (special) and user-defined (not special).
    fn is_added(&self, id: usize) -> bool {
        matches!(
            self.types[id],
            token_type::CONTROL | token_type::UNKNOWN | token_type::USER_DEFINED
        )
    }

    fn is_special(&self, id: usize) -> bool {
        matches!(self.types[id], token_type::CONTROL | token_type::UNKNOWN)
    }

    fn vocab_json(&self) -> Value {
        let mut m = Map::new();
        for (i, t) in self.tokens.iter().enumerate() {
            m.insert(t.clone(), json!(i));
        }
        Value::Object(m)
    }

    fn added_tokens_json(&self) -> Value {
        let added: Vec<Value> = (0..self.len())
            .filter(|&i| self.is_added(i))
            .map(|i| {
                json!({"id": i, "content": self.tokens[i], "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": self.is_special(i)})
            })
            .collect();
        Value::Array(added)
    }

    fn text(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }
}

/// Reads a per-token metadata array of length `n` with `f` converting each item.
fn per_token<T>(
    v: &MetaValue,
    n: usize,
    key: &str,
    f: impl Fn(&MetaValue) -> Option<T>,
) -> Result<Vec<T>> {
    let items = v
        .as_array()
        .with_context(|| format!("'{key}' is not an array"))?;
    if items.len() != n {
        bail!(
            "'{key}' has {} entries but there are {n} tokens",
            items.len()
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(i, x)| f(x).with_context(|| format!("{key}[{i}] has an unexpected type")))
        .collect()
}

/// Builds the tokenizer files from the GGUF's `tokenizer.ggml.*` metadata.
pub fn build(g: &GgufFile, model_max_length: Option<u64>) -> Result<TokenizerFiles> {
    let model = g.req_str("tokenizer.ggml.model")?.to_string();
    let pre = g
        .opt_str("tokenizer.ggml.pre")?
        .unwrap_or("default")
        .to_string();
    let vocab = Vocab::read(g)?;
    let n = vocab.len();
    let id = |key: &str| -> Result<Option<u32>> {
        Ok(match g.opt_u64(key)? {
            Some(i) if (i as usize) < n => Some(i as u32),
            Some(i) => bail!("metadata '{key}' = {i} is outside the vocabulary of {n} tokens"),
            None => None,
        })
    };
    let is_spm = match model.as_str() {
        "gpt2" => false,
        "llama" => true,
        other => bail!("unsupported tokenizer model '{other}' (supported: gpt2, llama)"),
    };
    let bos = id("tokenizer.ggml.bos_token_id")?.or(if is_spm && n > 1 { Some(1) } else { None });
    let eos = id("tokenizer.ggml.eos_token_id")?.or(if is_spm && n > 2 { Some(2) } else { None });
    let unk = id("tokenizer.ggml.unknown_token_id")?.or(if is_spm { Some(0) } else { None });
    let pad = id("tokenizer.ggml.padding_token_id")?;
    // llama.cpp defaults: SPM adds BOS, BPE does not (unless the pre-tokenizer says so); the GGUF key wins.
    let add_bos_default = is_spm
        || matches!(
            pre.as_str(),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "tekken"
        );
    let add_bos = g
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(add_bos_default)
        && bos.is_some();
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos.is_some();

    let (model_json, normalizer, pre_tokenizer, decoder, description) = if is_spm {
        let add_space_prefix = g
            .opt_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true);
        let (m, nrm, dec) = spm_parts(&vocab, vocab.text(unk), add_space_prefix);
        let what =
            format!("llama (SentencePiece BPE from scores, space prefix {add_space_prefix})");
        (m, nrm, Value::Null, dec, what)
    } else {
        let (pre_tok, ignore_merges) = bpe_pre_tokenizer(&pre)?;
        let m = bpe_model(g, &vocab, ignore_merges)?;
        let dec = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        (
            m,
            Value::Null,
            pre_tok,
            dec,
            format!("gpt2 (byte-level BPE, pre '{pre}')"),
        )
    };

    let post_processor = post_processor(
        &vocab,
        add_bos.then_some(bos).flatten(),
        add_eos.then_some(eos).flatten(),
        is_spm,
    );
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens_json(),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model_json,
    });

    let mut cfg = Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    for (name, tid) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(text) = vocab.text(tid) {
            cfg.insert(name.into(), json!(text));
        }
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(len) = model_max_length {
        cfg.insert("model_max_length".into(), json!(len));
    }
    if let Some(t) = g.opt_str("tokenizer.chat_template")? {
        cfg.insert("chat_template".into(), json!(t));
    }

    let mut eog: Vec<u32> = eos.into_iter().collect();
    for (i, t) in vocab.tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&t.as_str()) && !eog.contains(&(i as u32)) {
            eog.push(i as u32);
        }
    }
    let mut gen = Map::new();
    if let Some(b) = bos {
        gen.insert("bos_token_id".into(), json!(b));
    }
    match eog.len() {
        0 => {}
        1 => {
            gen.insert("eos_token_id".into(), json!(eog[0]));
        }
        _ => {
            gen.insert("eos_token_id".into(), json!(eog));
        }
    }
    if let Some(p) = pad {
        gen.insert("pad_token_id".into(), json!(p));
    }

    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: Value::Object(cfg),
        generation_config: Value::Object(gen),
        model: description,
        vocab_size: n,
        ids: SpecialIds { bos, eos, pad },
    })
}

/// llama.cpp's regex for the "llama3" pre-tokenizer family.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's regex for the "qwen2" pre-tokenizer family.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The HF pre-tokenizer reproducing llama.cpp's regex splits for `pre`, and whether merges are ignored.
pub(super) fn bpe_pre_tokenizer(pre: &str) -> Result<(Value, bool)> {
    Ok(match pre {
        // llama.cpp: "\p{N}" then the GPT-2 regex, i.e. every digit is its own word.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (
                json!({"type": "Sequence", "pretokenizers": [split(r"\p{N}"), byte_level(true)]}),
                false,
            )
        }
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
        | "exaone4" | "a.x-4.0" | "mellum" => (byte_level(true), false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "stablelm2" | "megrez" | "hunyuan" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            true,
        ),
        other => bail!("unsupported BPE pre-tokenizer '{other}' (tokenizer.ggml.pre)"),
    })
}

/// `model` section for byte-level BPE with the GGUF merges.
fn bpe_model(g: &GgufFile, vocab: &Vocab, ignore_merges: bool) -> Result<Value> {
    let list = g
        .get("tokenizer.ggml.merges")
        .context("missing metadata key 'tokenizer.ggml.merges'")?;
    let list = list
        .as_array()
        .context("'tokenizer.ggml.merges' is not an array")?;
    let mut merges = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let s = m
            .as_str()
            .with_context(|| format!("tokenizer.ggml.merges[{i}] is not a string"))?;
        // As llama.cpp: split at the first space after the first byte.
        let Some(pos) = s.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            bail!("tokenizer.ggml.merges[{i}] '{s}' is not 'left right'");
        };
        let (a, b) = (&s[..pos], &s[pos + 1..]);
        // HF needs both sides and the result in the vocabulary; llama.cpp could never emit the result either.
        let joined = format!("{a}{b}");
        if vocab.index.contains_key(a)
            && vocab.index.contains_key(b)
            && vocab.index.contains_key(&joined)
        {
            merges.push(json!([a, b]));
        }
    }
    Ok(json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
        "ignore_merges": ignore_merges, "vocab": vocab.vocab_json(), "merges": merges,
    }))
}

/// Whether a token takes part in SentencePiece merging (it can occur inside a text fragment).
fn spm_mergeable(ty: i64) -> bool {
    !matches!(
        ty,
        token_type::CONTROL | token_type::UNKNOWN | token_type::USER_DEFINED
    )
}

/// `model`, `normalizer` and `decoder` sections for a SentencePiece vocabulary.
fn spm_parts(vocab: &Vocab, unk: Option<&str>, add_space_prefix: bool) -> (Value, Value, Value) {
    // Every split of a mergeable token into two mergeable tokens is a merge, ranked by the score of the
    // result (higher first); ties keep the lower id first, then the shorter left side.
    let mut ranked: Vec<(f32, u32, usize, &str, &str)> = Vec::new();
    for (id, tok) in vocab.tokens.iter().enumerate() {
        if !spm_mergeable(vocab.types[id]) || vocab.index.get(tok) != Some(&(id as u32)) {
            continue;
        }
        for (k, _) in tok.char_indices().skip(1) {
            let (a, b) = tok.split_at(k);
            let ok = |s: &str| {
                vocab
                    .index
                    .get(s)
                    .is_some_and(|&i| spm_mergeable(vocab.types[i as usize]))
            };
            if ok(a) && ok(b) {
                let score = vocab.scores[id];
                ranked.push((
                    if score.is_nan() {
                        f32::NEG_INFINITY
                    } else {
                        score
                    },
                    id as u32,
                    k,
                    a,
                    b,
                ));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges: Vec<Value> = ranked.iter().map(|r| json!([r.3, r.4])).collect();
    let byte_fallback = vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .any(|(t, &ty)| ty == 6 && t.starts_with("<0x"));
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": byte_fallback,
        "ignore_merges": false, "vocab": vocab.vocab_json(), "merges": merges,
    });
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut steps = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    (
        model,
        normalizer,
        json!({"type": "Sequence", "decoders": steps}),
    )
}

/// Adds BOS/EOS around sequences as llama.cpp does with `add_special`.
fn post_processor(vocab: &Vocab, bos: Option<u32>, eos: Option<u32>, is_spm: bool) -> Value {
    if bos.is_none() && eos.is_none() {
        return if is_spm {
            Value::Null
        } else {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        };
    }
    let special = |id: u32, type_id: u32| json!({"SpecialToken": {"id": vocab.tokens[id as usize], "type_id": type_id}});
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    if let Some(b) = bos {
        single.push(special(b, 0));
        pair.push(special(b, 0));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some(e) = eos {
        single.push(special(e, 0));
        pair.push(special(e, 0));
    }
    if let Some(b) = bos {
        pair.push(special(b, 1));
    }
    pair.push(seq("B", 1));
    if let Some(e) = eos {
        pair.push(special(e, 1));
    }
    let mut specials = Map::new();
    for id in bos.into_iter().chain(eos) {
        let text = &vocab.tokens[id as usize];
        specials.insert(
            text.clone(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}
