//! llama.cpp tokenizer metadata (`tokenizer.*` GGUF keys) for GGUF export.
//!
//! * [`from_gguf`] copies the tokenizer of an existing GGUF, re-typed as llama.cpp expects (the reader's
//!   [`MetaValue`] keeps only the value kind, not the on-disk width). [`write_side_file`] stores those keys
//!   in a small tensor-less `tokenizer.gguf` next to an imported checkpoint, so that a later export can
//!   reproduce the original tokenizer exactly.
//! * [`from_hf`] builds the keys from a Hugging Face folder (`tokenizer.json` plus the config files):
//!   byte-level BPE becomes llama.cpp model `gpt2` with merges and a `pre` name recognised from the
//!   pre-tokenizer, byte-fallback ("▁" metaspace, SentencePiece-style) BPE becomes model `llama` with scores.
//!
//! Scores for `llama` vocabularies: llama.cpp's SentencePiece tokenizer repeatedly joins the adjacent pair
//! whose concatenation is the best-scoring token, so a score only has to rank every token that a merge
//! produces as the merge list ranks it. When the vocabulary ids follow the merge order (true of every
//! SentencePiece-derived `tokenizer.json`, and of the ones our importer writes) a normal token scores
//! `-(id - first normal id)`, which is what SentencePiece's BPE trainer itself stores, so the original
//! scores come back exactly for every token formed by a merge. Single-character pieces are never the
//! concatenation of two symbols, so their scores do not influence tokenization and may differ from the
//! original (Gemma 3: by a constant 31). When ids do not follow the merge order, a produced token
//! scores `-(rank of its first merge)` instead (same tokenization, other numbers). Byte tokens
//! `<0xXX>` score 0, the unknown token 0, added (control and user-defined) tokens -1000.

use super::reader::{GgufFile, MetaValue};
use super::tokenizer::bpe_pre_tokenizer;
use super::writer::{write_gguf, GgufArray, GgufValue};
use crate::limits::MAX_VOCAB;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// File name of the tokenizer side file stored in imported model folders.
pub const SIDE_FILE: &str = "tokenizer.gguf";

/// GGUF token types (`tokenizer.ggml.token_type`), as llama.cpp defines them.
pub mod token_type {
    /// An ordinary vocabulary token.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A control (special) token, never produced from text unless special parsing is on.
    pub const CONTROL: i32 = 3;
    /// A user-defined added token, matched in the text before the model runs.
    pub const USER_DEFINED: i32 = 4;
    /// An unused slot.
    pub const UNUSED: i32 = 5;
    /// A byte-fallback token `<0xXX>`.
    pub const BYTE: i32 = 6;
}

/// Score llama.cpp's converters give added (control and user-defined) tokens.
const ADDED_SCORE: f32 = -1000.0;

// ---------------------------------------------------------------------------------------------------
// From an existing GGUF.
// ---------------------------------------------------------------------------------------------------

/// Every `tokenizer.*` key of `g`, re-typed as llama.cpp reads it (ids u32, flags bool, token types i32
/// array, scores f32 array, tokens/merges string arrays, names and templates strings), in key order.
pub fn from_gguf(g: &GgufFile) -> Result<Vec<(String, GgufValue)>> {
    g.metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| Ok((k.clone(), retype(k, v)?)))
        .collect()
}

/// The llama.cpp type of one `tokenizer.*` key, by key name first and value kind otherwise
/// (unknown keys: Uint → u32 (u64 if larger), Int → i32 (i64 if larger), floats and strings as they are).
pub fn retype(key: &str, v: &MetaValue) -> Result<GgufValue> {
    let last = key.rsplit('.').next().unwrap_or(key);
    let bad = |what: &str| format!("GGUF metadata '{key}' is not {what} (got {})", kind(v));
    Ok(match key {
        "tokenizer.ggml.tokens" | "tokenizer.ggml.merges" => {
            let items = v.as_array().with_context(|| bad("an array of strings"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                out.push(
                    x.as_str()
                        .with_context(|| format!("{key}[{i}] is not a string (got {})", kind(x)))?
                        .to_string(),
                );
            }
            GgufValue::Array(GgufArray::Str(out))
        }
        "tokenizer.ggml.token_type" => {
            let items = v.as_array().with_context(|| bad("an array of integers"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                let t = match *x {
                    MetaValue::Int(t) => i32::try_from(t).ok(),
                    MetaValue::Uint(t) => i32::try_from(t).ok(),
                    _ => None,
                };
                out.push(
                    t.with_context(|| format!("{key}[{i}] is not an i32 token type (got {x:?})"))?,
                );
            }
            GgufValue::i32_array(out)
        }
        "tokenizer.ggml.scores" => {
            let items = v.as_array().with_context(|| bad("an array of numbers"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                out.push(
                    x.as_f32()
                        .with_context(|| format!("{key}[{i}] is not a number (got {})", kind(x)))?,
                );
            }
            GgufValue::f32_array(out)
        }
        // llama.cpp accepts u8 or i8 here: keep the signedness the file had.
        "tokenizer.ggml.precompiled_charsmap" => {
            let items = v.as_array().with_context(|| bad("an array of bytes"))?;
            let signed = items.iter().any(|x| matches!(x, MetaValue::Int(_)));
            let mut u = Vec::with_capacity(items.len());
            let mut s = Vec::new();
            for (i, x) in items.iter().enumerate() {
                match *x {
                    MetaValue::Uint(b) if !signed && b <= 255 => u.push(b as u8),
                    MetaValue::Int(b) if signed && (-128..=127).contains(&b) => s.push(b as i8),
                    MetaValue::Uint(b) if signed && b <= 127 => s.push(b as i8),
                    _ => bail!("{key}[{i}] is not a byte (got {x:?})"),
                }
            }
            if signed {
                GgufValue::i8_array(s)
            } else {
                GgufValue::u8_array(u)
            }
        }
        "tokenizer.ggml.model"
        | "tokenizer.ggml.pre"
        | "tokenizer.huggingface.json"
        | "tokenizer.rwkv.world"
        | "tokenizer.chat_template" => {
            GgufValue::Str(v.as_str().with_context(|| bad("a string"))?.to_string())
        }
        _ if key.starts_with("tokenizer.chat_template.") => {
            GgufValue::Str(v.as_str().with_context(|| bad("a string"))?.to_string())
        }
        _ if last.ends_with("_token_id") || last == "token_type_count" => {
            let id = v.as_u64().with_context(|| bad("a non-negative integer"))?;
            GgufValue::U32(u32::try_from(id).with_context(|| bad("a u32"))?)
        }
        _ if last.starts_with("add_") || last == "remove_extra_whitespaces" => {
            GgufValue::Bool(v.as_bool().with_context(|| bad("a bool"))?)
        }
        _ => by_kind(key, v)?,
    })
}

/// A short name of a value's kind, for error messages.
fn kind(v: &MetaValue) -> &'static str {
    match v {
        MetaValue::Uint(_) => "an unsigned integer",
        MetaValue::Int(_) => "a signed integer",
        MetaValue::F32(_) => "an f32",
        MetaValue::F64(_) => "an f64",
        MetaValue::Bool(_) => "a bool",
        MetaValue::Str(_) => "a string",
        MetaValue::Array(_) => "an array",
    }
}

/// The natural GGUF type of a value of an unknown key.
fn by_kind(key: &str, v: &MetaValue) -> Result<GgufValue> {
    Ok(match v {
        &MetaValue::Uint(x) => match u32::try_from(x) {
            Ok(x) => GgufValue::U32(x),
            Err(_) => GgufValue::U64(x),
        },
        &MetaValue::Int(x) => match i32::try_from(x) {
            Ok(x) => GgufValue::I32(x),
            Err(_) => GgufValue::I64(x),
        },
        &MetaValue::F32(x) => GgufValue::F32(x),
        &MetaValue::F64(x) => GgufValue::F64(x),
        &MetaValue::Bool(x) => GgufValue::Bool(x),
        MetaValue::Str(s) => GgufValue::Str(s.clone()),
        MetaValue::Array(items) => {
            let Some(first) = items.first() else {
                // The element type is lost for an empty array; u32 is as good as any.
                return Ok(GgufValue::u32_array(Vec::new()));
            };
            let same = |f: fn(&MetaValue) -> bool| items.iter().all(f);
            let mixed = || format!("GGUF metadata '{key}' is an array of mixed or nested values");
            match first {
                MetaValue::Uint(_) => {
                    let v: Vec<u64> = items.iter().filter_map(MetaValue::as_u64).collect();
                    if v.len() != items.len() || !same(|x| matches!(x, MetaValue::Uint(_))) {
                        bail!(mixed());
                    }
                    if v.iter().all(|&x| x <= u32::MAX as u64) {
                        GgufValue::u32_array(v.into_iter().map(|x| x as u32).collect())
                    } else {
                        GgufValue::u64_array(v)
                    }
                }
                MetaValue::Int(_) => {
                    let mut v = Vec::with_capacity(items.len());
                    for x in items {
                        match *x {
                            MetaValue::Int(i) => v.push(i),
                            _ => bail!(mixed()),
                        }
                    }
                    if v.iter().all(|&x| i32::try_from(x).is_ok()) {
                        GgufValue::i32_array(v.into_iter().map(|x| x as i32).collect())
                    } else {
                        GgufValue::i64_array(v)
                    }
                }
                MetaValue::F32(_) => GgufValue::f32_array(
                    items
                        .iter()
                        .map(|x| match *x {
                            MetaValue::F32(f) => Ok(f),
                            _ => bail!(mixed()),
                        })
                        .collect::<Result<_>>()?,
                ),
                MetaValue::F64(_) => GgufValue::f64_array(
                    items
                        .iter()
                        .map(|x| match *x {
                            MetaValue::F64(f) => Ok(f),
                            _ => bail!(mixed()),
                        })
                        .collect::<Result<_>>()?,
                ),
                MetaValue::Bool(_) => GgufValue::bool_array(
                    items
                        .iter()
                        .map(|x| match *x {
                            MetaValue::Bool(b) => Ok(b),
                            _ => bail!(mixed()),
                        })
                        .collect::<Result<_>>()?,
                ),
                MetaValue::Str(_) => GgufValue::Array(GgufArray::Str(
                    items
                        .iter()
                        .map(|x| match x {
                            MetaValue::Str(s) => Ok(s.clone()),
                            _ => bail!(mixed()),
                        })
                        .collect::<Result<_>>()?,
                )),
                MetaValue::Array(_) => bail!(
                    "GGUF metadata '{key}' is an array of arrays, which llama.cpp cannot read"
                ),
            }
        }
    })
}

/// Writes the `tokenizer.*` keys of `g` (see [`from_gguf`]) to a tensor-less GGUF file at `path`.
pub fn write_side_file(path: &Path, g: &GgufFile) -> Result<()> {
    let kvs = from_gguf(g)?;
    if !kvs.iter().any(|(k, _)| k == "tokenizer.ggml.model") {
        bail!("the GGUF has no 'tokenizer.ggml.model' key: there is no tokenizer to store");
    }
    write_gguf(path, kvs, Vec::new(), |_| unreachable!("no tensors"))
        .with_context(|| format!("writing the tokenizer side file {}", path.display()))
}

/// Reads the `tokenizer.*` keys back from a side file written by [`write_side_file`].
pub fn read_side_file(path: &Path) -> Result<Vec<(String, GgufValue)>> {
    from_gguf(&GgufFile::open(path)?)
}

// ---------------------------------------------------------------------------------------------------
// From a Hugging Face folder.
// ---------------------------------------------------------------------------------------------------

/// The GPT-2 split regex HF's `ByteLevel` pre-tokenizer applies when `use_regex` is true.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// llama.cpp `pre` names tried when recognising a byte-level pre-tokenizer, one per family of the
/// importer's table ([`bpe_pre_tokenizer`]); the first whose pre-tokenizer splits the same way wins.
const PRE_CANDIDATES: &[&str] = &["gpt-2", "smollm", "qwen2", "llama-bpe"];

/// Builds llama.cpp's `tokenizer.ggml.*` keys (plus `tokenizer.chat_template`) from an HF folder:
/// `tokenizer.json` (required), `tokenizer_config.json`, `config.json` and `generation_config.json`.
/// The vocabulary is padded with `[PAD{id}]` tokens to `config.json`'s `vocab_size` when that is larger,
/// as llama.cpp's converter does.
pub fn from_hf(dir: &Path) -> Result<Vec<(String, GgufValue)>> {
    let tj_path = dir.join("tokenizer.json");
    let tj = read_json(&tj_path)?;
    let tcfg = read_json_opt(&dir.join("tokenizer_config.json"))?;
    let cfg = read_json_opt(&dir.join("config.json"))?;
    let gen = read_json_opt(&dir.join("generation_config.json"))?;
    let where_ = tj_path.display();

    let model = tj
        .get("model")
        .filter(|m| m.is_object())
        .with_context(|| format!("{where_} has no 'model' object"))?;
    let model_type = match model.get("type").and_then(Value::as_str) {
        Some(t) => t,
        // Older files omit the type: infer it as HF does from the fields.
        None if model.get("merges").is_some() => "BPE",
        None if model.get("vocab").is_some_and(Value::is_array) => "Unigram",
        None if model.get("max_input_chars_per_word").is_some() => "WordPiece",
        None => "unknown",
    };
    if model_type != "BPE" {
        bail!(
            "unsupported tokenizer type '{model_type}' in {where_} (supported: byte-level BPE and byte-fallback BPE)"
        );
    }
    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let spm = if byte_fallback {
        true
    } else if has_step(tj.get("pre_tokenizer"), "pretokenizers", "ByteLevel")
        || has_step(tj.get("decoder"), "decoders", "ByteLevel")
    {
        false
    } else {
        bail!(
            "unsupported tokenizer type 'BPE' without ByteLevel or byte_fallback in {where_} (supported: byte-level BPE and byte-fallback BPE)"
        );
    };

    let vocab = HfVocab::read(&tj, model, cfg.as_ref(), spm, &where_.to_string())?;
    let merges = parse_merges(model, &where_.to_string())?;
    let n = vocab.tokens.len();

    let mut kv: Vec<(String, GgufValue)> = Vec::new();
    let mut put = |k: &str, v: GgufValue| kv.push((k.to_string(), v));
    put(
        "tokenizer.ggml.model",
        GgufValue::str(if spm { "llama" } else { "gpt2" }),
    );
    let pre = if spm {
        "default"
    } else {
        detect_pre(tj.get("pre_tokenizer").unwrap_or(&Value::Null))
    };
    put("tokenizer.ggml.pre", GgufValue::str(pre));
    let (tokens, types, scores) = if spm {
        let scores = spm_scores(&vocab, &merges);
        (vocab.tokens.clone(), vocab.types.clone(), Some(scores))
    } else {
        (vocab.tokens.clone(), vocab.types.clone(), None)
    };
    put("tokenizer.ggml.tokens", GgufValue::str_array(tokens));
    if let Some(s) = scores {
        put("tokenizer.ggml.scores", GgufValue::f32_array(s));
    }
    put("tokenizer.ggml.token_type", GgufValue::i32_array(types));
    if !spm {
        put(
            "tokenizer.ggml.merges",
            GgufValue::str_array(merges.iter().map(|(a, b)| format!("{a} {b}"))),
        );
    }

    // Special ids: the token text in tokenizer_config.json, else the id in config.json, else in
    // generation_config.json (the first one of a list).
    let model_unk = model.get("unk_token").and_then(Value::as_str);
    let mut special_text: HashMap<&str, String> = HashMap::new();
    for (name, cfg_key, gguf_key) in [
        ("bos", "bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos", "eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("unk", "unk_token_id", "tokenizer.ggml.unknown_token_id"),
        ("sep", "sep_token_id", "tokenizer.ggml.seperator_token_id"),
        ("pad", "pad_token_id", "tokenizer.ggml.padding_token_id"),
        ("cls", "cls_token_id", "tokenizer.ggml.cls_token_id"),
        ("mask", "mask_token_id", "tokenizer.ggml.mask_token_id"),
    ] {
        let from_text = tcfg
            .as_ref()
            .and_then(|c| token_text(c.get(format!("{name}_token").as_str())))
            .or_else(|| (name == "unk").then_some(model_unk).flatten())
            .and_then(|t| vocab.lookup(t));
        let from_ids = || {
            [cfg.as_ref(), gen.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|c| first_id(c.get(cfg_key)).filter(|&i| (i as usize) < n))
        };
        if let Some(id) = from_text.or_else(from_ids) {
            special_text.insert(name, vocab.tokens[id as usize].clone());
            put(gguf_key, GgufValue::U32(id));
        }
    }

    // add_bos / add_eos / add_sep: tokenizer_config.json, else what the post-processor template adds.
    let template = template_flags(
        tj.get("post_processor"),
        special_text.get("bos").map(String::as_str),
        special_text.get("eos").map(String::as_str),
    );
    for (i, name) in ["bos", "eos", "sep"].into_iter().enumerate() {
        let from_cfg = tcfg
            .as_ref()
            .and_then(|c| c.get(format!("add_{name}_token").as_str()))
            .and_then(Value::as_bool);
        if let Some(b) = from_cfg.or(template.map(|t| t[i])) {
            put(
                &format!("tokenizer.ggml.add_{name}_token"),
                GgufValue::Bool(b),
            );
        }
    }
    let space_prefix = if spm {
        spm_space_prefix(&tj)
    } else {
        byte_level_prefix_space(tj.get("pre_tokenizer"))
    };
    put(
        "tokenizer.ggml.add_space_prefix",
        GgufValue::Bool(space_prefix),
    );

    for (key, text) in chat_templates(dir, tcfg.as_ref())? {
        put(&key, GgufValue::Str(text));
    }
    Ok(kv)
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Whether `v` is a step of type `ty`, or a `Sequence` (items under `list_key`) containing one.
fn has_step(v: Option<&Value>, list_key: &str, ty: &str) -> bool {
    let Some(v) = v else { return false };
    match v.get("type").and_then(Value::as_str) {
        Some(t) if t == ty => true,
        Some("Sequence") => v
            .get(list_key)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|s| has_step(Some(s), list_key, ty))),
        _ => false,
    }
}

/// A special token's text in tokenizer_config.json: a string or an `AddedToken` object.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// An id in a config file: an integer, or the first of a list.
fn first_id(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|i| u32::try_from(i).ok()),
        Value::Array(a) => first_id(a.first()),
        _ => None,
    }
}

/// Whether a token text looks like a control token although HF marks it non-special (llama.cpp's converter rule).
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>") && t.len() >= 4)
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>") && t.len() >= 8)
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Whether a token text is a byte-fallback token `<0xXX>`.
fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3..5].iter().all(u8::is_ascii_hexdigit)
}

/// The vocabulary of a tokenizer.json in id order, with llama.cpp token types.
struct HfVocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    /// Text → id over the model vocabulary.
    base: HashMap<String, u32>,
    /// Text → id over the added tokens (looked up first).
    added: HashMap<String, u32>,
}

impl HfVocab {
    fn read(
        tj: &Value,
        model: &Value,
        cfg: Option<&Value>,
        spm: bool,
        where_: &str,
    ) -> Result<Self> {
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .with_context(|| format!("{where_}: model.vocab is not an object"))?;
        let as_id = |v: &Value, what: &str| -> Result<u32> {
            v.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .with_context(|| format!("{where_}: {what} has an invalid id {v}"))
        };
        let mut base = HashMap::with_capacity(vocab.len());
        let mut n = 0usize;
        for (text, id) in vocab {
            let id = as_id(id, &format!("vocab token '{text}'"))?;
            base.insert(text.clone(), id);
            n = n.max(id as usize + 1);
        }
        let mut added_list = Vec::new();
        if let Some(list) = tj.get("added_tokens") {
            let list = list
                .as_array()
                .with_context(|| format!("{where_}: added_tokens is not an array"))?;
            for (i, a) in list.iter().enumerate() {
                let content = a
                    .get("content")
                    .and_then(Value::as_str)
                    .with_context(|| format!("{where_}: added_tokens[{i}] has no content"))?;
                let id = as_id(
                    a.get("id").unwrap_or(&Value::Null),
                    &format!("added token '{content}'"),
                )?;
                let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
                added_list.push((id, content.to_string(), special));
                n = n.max(id as usize + 1);
            }
        }
        if let Some(size) = cfg.and_then(config_vocab_size) {
            n = n.max(size);
        }
        if n == 0 {
            bail!("{where_}: the vocabulary is empty");
        }
        if n as u64 > MAX_VOCAB {
            bail!("{where_}: a vocabulary of {n} tokens (largest id or config.json vocab_size) is implausibly large (at most {MAX_VOCAB})");
        }

        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut types = vec![token_type::NORMAL; n];
        for (text, &id) in &base {
            tokens[id as usize] = Some(text.clone());
            if spm && is_byte_token(text) {
                types[id as usize] = token_type::BYTE;
            }
        }
        if spm {
            if let Some(unk) = model.get("unk_token").and_then(Value::as_str) {
                if let Some(&id) = base.get(unk) {
                    types[id as usize] = token_type::UNKNOWN;
                }
            }
        }
        let mut added = HashMap::with_capacity(added_list.len());
        for (id, content, special) in added_list {
            let (text, ty) = if special || looks_special(&content) {
                (content.clone(), token_type::CONTROL)
            } else {
                // llama.cpp expects user-defined tokens pre-normalized: "▁" is a space there.
                (content.replace('\u{2581}', " "), token_type::USER_DEFINED)
            };
            tokens[id as usize] = Some(text);
            types[id as usize] = ty;
            added.insert(content, id);
        }
        let mut out = Vec::with_capacity(n);
        for (i, t) in tokens.into_iter().enumerate() {
            out.push(t.unwrap_or_else(|| {
                types[i] = if spm {
                    token_type::UNUSED
                } else {
                    token_type::USER_DEFINED
                };
                format!("[PAD{i}]")
            }));
        }
        Ok(Self {
            tokens: out,
            types,
            base,
            added,
        })
    }

    /// The id of a token text: an added token first, then the model vocabulary.
    fn lookup(&self, text: &str) -> Option<u32> {
        self.added
            .get(text)
            .or_else(|| self.base.get(text))
            .copied()
            .filter(|&i| (i as usize) < self.tokens.len())
    }
}

/// `vocab_size` of a config.json (or of its `text_config`).
fn config_vocab_size(cfg: &Value) -> Option<usize> {
    cfg.get("vocab_size")
        .or_else(|| cfg.get("text_config").and_then(|t| t.get("vocab_size")))
        .and_then(Value::as_u64)
        .map(|v| v as usize)
}

/// The merges of a BPE model as (left, right); tokenizer.json stores "left right" strings or [left, right] pairs.
fn parse_merges(model: &Value, where_: &str) -> Result<Vec<(String, String)>> {
    let Some(list) = model.get("merges") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .with_context(|| format!("{where_}: model.merges is not an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let pair = match m {
            Value::String(s) => {
                // As llama.cpp: split at the first space after the first character.
                let first = s.chars().next().map_or(0, char::len_utf8);
                s[first..]
                    .find(' ')
                    .map(|p| (s[..first + p].to_string(), s[first + p + 1..].to_string()))
            }
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(l), Some(r)) => Some((l.to_string(), r.to_string())),
                _ => None,
            },
            _ => None,
        };
        out.push(pair.with_context(|| {
            format!("{where_}: merges[{i}] {m} is neither \"left right\" nor [left, right]")
        })?);
    }
    Ok(out)
}

/// Scores for a byte-fallback (SentencePiece-style) vocabulary; see the module documentation.
fn spm_scores(vocab: &HfVocab, merges: &[(String, String)]) -> Vec<f32> {
    let n = vocab.tokens.len();
    let mut first_rank: Vec<Option<usize>> = vec![None; n];
    let mut joined = String::new();
    for (r, (a, b)) in merges.iter().enumerate() {
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        if let Some(&id) = vocab.base.get(joined.as_str()) {
            let slot = &mut first_rank[id as usize];
            if slot.is_none() {
                *slot = Some(r);
            }
        }
    }
    let normal = |i: usize| vocab.types[i] == token_type::NORMAL;
    let first_normal = (0..n).find(|&i| normal(i)).unwrap_or(0);
    let ranks_in_id_order: Vec<usize> = (0..n)
        .filter(|&i| normal(i))
        .filter_map(|i| first_rank[i])
        .collect();
    let ids_follow_merges = ranks_in_id_order.windows(2).all(|w| w[0] < w[1]);
    (0..n)
        .map(|i| match vocab.types[i] {
            token_type::NORMAL if ids_follow_merges => -((i - first_normal) as f32),
            token_type::NORMAL => match first_rank[i] {
                Some(r) => -(r as f32),
                None => -((merges.len() + i - first_normal) as f32),
            },
            token_type::BYTE | token_type::UNKNOWN => 0.0,
            _ => ADDED_SCORE,
        })
        .collect()
}

/// Normalizes a split regex so that HF's `(?i:'s|...)` contractions compare equal to llama.cpp's expansion.
fn normalize_regex(r: &str) -> String {
    r.replace(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
    )
}

/// The sequence of regex splits a byte-level pre-tokenizer applies, or `None` when it has a step we do not model.
fn split_signature(v: &Value, out: &mut Vec<(String, String, bool)>) -> Option<()> {
    let isolated = |r: &str| (normalize_regex(r), "Isolated".to_string(), false);
    match v.get("type")?.as_str()? {
        "Sequence" => {
            for s in v.get("pretokenizers")?.as_array()? {
                split_signature(s, out)?;
            }
        }
        "ByteLevel" => {
            if v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                out.push(isolated(GPT2_REGEX));
            }
        }
        "Split" => {
            let regex = v.get("pattern")?.get("Regex")?.as_str()?;
            let behavior = v.get("behavior")?.as_str()?.to_string();
            let invert = v.get("invert").and_then(Value::as_bool).unwrap_or(false);
            out.push((normalize_regex(regex), behavior, invert));
        }
        "Digits" => {
            let single = v
                .get("individual_digits")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            out.push(isolated(if single { r"\p{N}" } else { r"\p{N}+" }));
        }
        _ => return None,
    }
    Some(())
}

/// The llama.cpp `pre` name whose pre-tokenizer (as the importer rebuilds it) splits like `pre_tokenizer`, else "default".
fn detect_pre(pre_tokenizer: &Value) -> &'static str {
    let mut want = Vec::new();
    if split_signature(pre_tokenizer, &mut want).is_none() {
        return "default";
    }
    for &name in PRE_CANDIDATES {
        let Ok((candidate, _)) = bpe_pre_tokenizer(name) else {
            continue;
        };
        let mut sig = Vec::new();
        if split_signature(&candidate, &mut sig).is_some() && sig == want {
            return name;
        }
    }
    "default"
}

/// Whether a byte-level pre-tokenizer adds a prefix space.
fn byte_level_prefix_space(v: Option<&Value>) -> bool {
    let Some(v) = v else { return false };
    match v.get("type").and_then(Value::as_str) {
        Some("ByteLevel") => v
            .get("add_prefix_space")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Some("Sequence") => v
            .get("pretokenizers")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|s| byte_level_prefix_space(Some(s)))),
        _ => false,
    }
}

/// Whether a SentencePiece-style tokenizer.json prepends "▁" (normalizer `Prepend`, or a `Metaspace` that adds a prefix).
fn spm_space_prefix(tj: &Value) -> bool {
    fn prepends(v: &Value) -> bool {
        match v.get("type").and_then(Value::as_str) {
            Some("Prepend") => v.get("prepend").and_then(Value::as_str) == Some("\u{2581}"),
            Some("Metaspace") => match v.get("prepend_scheme").and_then(Value::as_str) {
                Some(s) => s != "never",
                None => v
                    .get("add_prefix_space")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            },
            Some("Sequence") => ["normalizers", "pretokenizers"]
                .iter()
                .filter_map(|k| v.get(*k).and_then(Value::as_array))
                .flatten()
                .any(prepends),
            _ => false,
        }
    }
    ["normalizer", "pre_tokenizer"]
        .iter()
        .filter_map(|k| tj.get(*k))
        .any(prepends)
}

/// (add_bos, add_eos, add_sep) read off a `TemplateProcessing` post-processor, if there is one: BOS when the
/// single template starts with the BOS token, EOS when it ends with the EOS token, SEP when the pair template
/// puts a special token between A and B other than repeats of those.
fn template_flags(pp: Option<&Value>, bos: Option<&str>, eos: Option<&str>) -> Option<[bool; 3]> {
    let pp = pp?;
    let tp = match pp.get("type").and_then(Value::as_str)? {
        "TemplateProcessing" => pp,
        "Sequence" => pp
            .get("processors")?
            .as_array()?
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("TemplateProcessing"))?,
        _ => return None,
    };
    let special = |item: &Value| -> Option<String> {
        item.get("SpecialToken")?
            .get("id")?
            .as_str()
            .map(str::to_string)
    };
    let single = tp.get("single")?.as_array()?;
    let lead = single.first().and_then(special);
    let trail = if single.len() > 1 {
        single.last().and_then(special)
    } else {
        None
    };
    let add_bos = lead.is_some() && lead.as_deref() == bos;
    let add_eos = trail.is_some() && trail.as_deref() == eos;
    let mut add_sep = false;
    if let Some(pair) = tp.get("pair").and_then(Value::as_array) {
        let seq = |item: &Value, name: &str| {
            item.get("Sequence")
                .and_then(|s| s.get("id"))
                .and_then(Value::as_str)
                == Some(name)
        };
        let a = pair.iter().position(|x| seq(x, "A"));
        let b = pair.iter().position(|x| seq(x, "B"));
        if let (Some(a), Some(b)) = (a, b) {
            if a < b {
                add_sep = pair[a + 1..b]
                    .iter()
                    .filter_map(special)
                    .any(|t| Some(&t) != lead.as_ref() && Some(&t) != trail.as_ref());
            }
        }
    }
    Some([add_bos, add_eos, add_sep])
}

/// Chat templates: tokenizer_config.json's `chat_template` (a string, or a list of named templates), else a
/// `chat_template.jinja` / `chat_template.json` file; the "default" (or only) one is `tokenizer.chat_template`.
fn chat_templates(dir: &Path, tcfg: Option<&Value>) -> Result<Vec<(String, String)>> {
    let mut value = tcfg.and_then(|c| c.get("chat_template")).cloned();
    if value.is_none() {
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja)
                .with_context(|| format!("cannot read {}", jinja.display()))?;
            value = Some(Value::String(text));
        } else if let Some(v) = read_json_opt(&json)? {
            value = v.get("chat_template").cloned();
        }
    }
    Ok(match value {
        Some(Value::String(s)) => vec![("tokenizer.chat_template".into(), s)],
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for t in &list {
                let (Some(name), Some(text)) = (
                    t.get("name").and_then(Value::as_str),
                    t.get("template").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let key = if name == "default" {
                    "tokenizer.chat_template".to_string()
                } else {
                    format!("tokenizer.chat_template.{name}")
                };
                out.push((key, text.to_string()));
            }
            out
        }
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::tokenizer;
    use crate::gguf::writer::TensorDtype;
    use serde_json::json;
    use std::path::PathBuf;

    /// A scratch folder removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("twossp-tokmeta-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn get<'a>(kv: &'a [(String, GgufValue)], key: &str) -> Option<&'a GgufValue> {
        kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn strs<'a>(kv: &'a [(String, GgufValue)], key: &str) -> &'a [String] {
        match get(kv, key) {
            Some(GgufValue::Array(GgufArray::Str(v))) => v,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn i32s<'a>(kv: &'a [(String, GgufValue)], key: &str) -> &'a [i32] {
        match get(kv, key) {
            Some(GgufValue::Array(GgufArray::I32(v))) => v,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn f32s<'a>(kv: &'a [(String, GgufValue)], key: &str) -> &'a [f32] {
        match get(kv, key) {
            Some(GgufValue::Array(GgufArray::F32(v))) => v,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn write_files(dir: &Path, files: &[(&str, Value)]) {
        for (name, v) in files {
            std::fs::write(dir.join(name), serde_json::to_string(v).unwrap()).unwrap();
        }
    }

    /// Writes `kvs` to a GGUF (one tiny tensor) and opens it.
    fn gguf_of(dir: &Path, kvs: Vec<(String, GgufValue)>) -> GgufFile {
        let path = dir.join("t.gguf");
        write_gguf(
            &path,
            kvs,
            vec![crate::gguf::writer::TensorDecl::new(
                "x",
                vec![1],
                TensorDtype::F32,
            )],
            |_| Ok(vec![0; 4]),
        )
        .unwrap();
        GgufFile::open(&path).unwrap()
    }

    /// Imports the tokenizer of `g` with the real importer into `dir` (tokenizer.json + config files).
    fn import_tokenizer(g: &GgufFile, dir: &Path) {
        let tok = tokenizer::build(g, Some(2048)).unwrap();
        write_files(
            dir,
            &[
                ("tokenizer.json", tok.tokenizer_json),
                ("tokenizer_config.json", tok.tokenizer_config),
                ("generation_config.json", tok.generation_config),
            ],
        );
    }

    #[test]
    fn fixture_tokenizers_build_gpt2_metadata() {
        let mut seen = 0;
        for entry in std::fs::read_dir(repo().join("tests/fixtures")).unwrap() {
            let dir = entry.unwrap().path();
            let tj_path = dir.join("tokenizer.json");
            if !tj_path.is_file() {
                continue;
            }
            seen += 1;
            let tj: Value =
                serde_json::from_str(&std::fs::read_to_string(&tj_path).unwrap()).unwrap();
            let hf = tokenizers::Tokenizer::from_file(&tj_path).unwrap();
            let kv = from_hf(&dir).unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
            assert_eq!(
                get(&kv, "tokenizer.ggml.model"),
                Some(&GgufValue::str("gpt2"))
            );
            // These fixtures split with the plain GPT-2 ByteLevel regex.
            assert_eq!(
                get(&kv, "tokenizer.ggml.pre"),
                Some(&GgufValue::str("gpt-2"))
            );
            let tokens = strs(&kv, "tokenizer.ggml.tokens");
            let cfg: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                    .unwrap();
            let n = hf
                .get_vocab_size(true)
                .max(cfg["vocab_size"].as_u64().unwrap() as usize);
            assert_eq!(tokens.len(), n, "{}", dir.display());
            for (i, t) in tokens.iter().enumerate() {
                assert_eq!(
                    hf.token_to_id(t),
                    Some(i as u32),
                    "{}: token {i}",
                    dir.display()
                );
            }
            let merges = strs(&kv, "tokenizer.ggml.merges");
            assert_eq!(
                merges.len(),
                tj["model"]["merges"].as_array().unwrap().len()
            );
            assert_eq!(merges[0], "Ġ t");
            let types = i32s(&kv, "tokenizer.ggml.token_type");
            assert_eq!(types.len(), n);
            for (id, ty) in types.iter().enumerate() {
                let added = tj["added_tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["id"] == json!(id) && a["special"] == json!(true));
                let want = if added {
                    token_type::CONTROL
                } else {
                    token_type::NORMAL
                };
                assert_eq!(*ty, want, "token {id}");
            }
            assert!(get(&kv, "tokenizer.ggml.scores").is_none());
            // No tokenizer_config.json: ids only from config.json when it names them.
            for (cfg_key, gguf_key) in [
                ("bos_token_id", "tokenizer.ggml.bos_token_id"),
                ("eos_token_id", "tokenizer.ggml.eos_token_id"),
                ("pad_token_id", "tokenizer.ggml.padding_token_id"),
            ] {
                let want = cfg
                    .get(cfg_key)
                    .and_then(Value::as_u64)
                    .map(|i| GgufValue::U32(i as u32));
                assert_eq!(
                    get(&kv, gguf_key),
                    want.as_ref(),
                    "{}: {cfg_key}",
                    dir.display()
                );
            }
            assert_eq!(
                get(&kv, "tokenizer.ggml.add_space_prefix"),
                Some(&GgufValue::Bool(false))
            );
        }
        assert!(seen > 0, "no fixture tokenizers found");
    }

    /// The tokenizer of the importer's llama-family test vocabulary, as GGUF key/values.
    fn spm_gguf_kvs() -> Vec<(String, GgufValue)> {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        // As in Gemma's GGUF, the unknown token is a control token (HF lists it as a special added token).
        let mut types = vec![token_type::CONTROL; 3];
        let mut scores = vec![-1000.0f32; 3];
        for b in 0..256 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(token_type::BYTE);
            scores.push(0.0);
        }
        // Normal pieces in SentencePiece order: score = -(id - first normal id); chars come last.
        let pieces = [
            "▁t", "he", "▁a", "▁the", "in", "er", "▁s", "▁w", "ll", "▁he", "▁in", "▁ll", "▁", "t",
            "h", "e", "a", "s", "w", "i", "n", "r", "l",
        ];
        for (k, p) in pieces.iter().enumerate() {
            tokens.push(p.to_string());
            types.push(token_type::NORMAL);
            scores.push(-(k as f32));
        }
        tokens.push("<start_of_turn>".into());
        types.push(token_type::CONTROL);
        scores.push(-1000.0);
        tokens.push("\n\n".into());
        types.push(token_type::USER_DEFINED);
        scores.push(-1000.0);
        vec![
            ("tokenizer.ggml.model".into(), GgufValue::str("llama")),
            ("tokenizer.ggml.pre".into(), GgufValue::str("default")),
            ("tokenizer.ggml.tokens".into(), GgufValue::str_array(tokens)),
            ("tokenizer.ggml.scores".into(), GgufValue::f32_array(scores)),
            (
                "tokenizer.ggml.token_type".into(),
                GgufValue::i32_array(types),
            ),
            ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2)),
            ("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0)),
            ("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true)),
            (
                "tokenizer.ggml.add_eos_token".into(),
                GgufValue::Bool(false),
            ),
            (
                "tokenizer.ggml.add_sep_token".into(),
                GgufValue::Bool(false),
            ),
            (
                "tokenizer.ggml.add_space_prefix".into(),
                GgufValue::Bool(true),
            ),
        ]
    }

    #[test]
    fn spm_round_trip_through_the_importer_is_exact() {
        let s = Scratch::new("spm");
        let original = spm_gguf_kvs();
        let g = gguf_of(&s.0, original.clone());
        import_tokenizer(&g, &s.0);
        let kv = from_hf(&s.0).unwrap();
        let mut keys: Vec<&str> = kv.iter().map(|(k, _)| k.as_str()).collect();
        let mut want: Vec<&str> = original.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort();
        want.sort();
        assert_eq!(keys, want);
        for (k, v) in &original {
            assert_eq!(get(&kv, k), Some(v), "{k}");
        }
    }

    #[test]
    fn gpt2_round_trip_through_the_importer_is_exact() {
        let s = Scratch::new("gpt2");
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
        let mut types = vec![token_type::CONTROL, token_type::CONTROL];
        for c in ["Ġ", "t", "h", "e", "1", "2", "Ġt", "he", "Ġthe", "<tool>"] {
            tokens.push(c.into());
            types.push(token_type::NORMAL);
        }
        *types.last_mut().unwrap() = token_type::USER_DEFINED;
        let merges = vec!["Ġ t", "h e", "Ġt he"];
        for pre in PRE_CANDIDATES {
            let original = vec![
                ("tokenizer.ggml.model".to_string(), GgufValue::str("gpt2")),
                ("tokenizer.ggml.pre".into(), GgufValue::str(*pre)),
                (
                    "tokenizer.ggml.tokens".into(),
                    GgufValue::str_array(tokens.clone()),
                ),
                (
                    "tokenizer.ggml.token_type".into(),
                    GgufValue::i32_array(types.clone()),
                ),
                (
                    "tokenizer.ggml.merges".into(),
                    GgufValue::str_array(merges.clone()),
                ),
                ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
                ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(0)),
                ("tokenizer.ggml.padding_token_id".into(), GgufValue::U32(0)),
                (
                    "tokenizer.ggml.add_bos_token".into(),
                    GgufValue::Bool(false),
                ),
                (
                    "tokenizer.ggml.add_eos_token".into(),
                    GgufValue::Bool(false),
                ),
                (
                    "tokenizer.ggml.add_space_prefix".into(),
                    GgufValue::Bool(false),
                ),
                ("tokenizer.chat_template".into(), GgufValue::str("{{ x }}")),
            ];
            let g = gguf_of(&s.0, original.clone());
            import_tokenizer(&g, &s.0);
            let kv = from_hf(&s.0).unwrap();
            assert_eq!(kv.len(), original.len(), "{pre}: {kv:?}");
            for (k, v) in &original {
                assert_eq!(get(&kv, k), Some(v), "{pre}: {k}");
            }
        }
    }

    #[test]
    fn hf_native_pre_tokenizers_are_recognised() {
        let byte_level = |re: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": re});
        let split = |r: &str| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false});
        let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let qwen2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let cases = [
            (byte_level(true), "gpt-2"),
            (
                json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                "smollm",
            ),
            (
                json!({"type": "Sequence", "pretokenizers": [split(llama3), byte_level(false)]}),
                "llama-bpe",
            ),
            (
                json!({"type": "Sequence", "pretokenizers": [split(qwen2), byte_level(false)]}),
                "qwen2",
            ),
            (
                json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": false}, byte_level(true)]}),
                "default",
            ),
            (json!({"type": "Whitespace"}), "default"),
            (Value::Null, "default"),
        ];
        for (pt, want) in cases {
            assert_eq!(detect_pre(&pt), want, "{pt}");
        }
    }

    fn bpe_json(byte_fallback: bool, merges: Value) -> Value {
        json!({
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true, "use_regex": true},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "byte_fallback": byte_fallback, "unk_token": null,
                      "vocab": {"a": 0, "b": 1, "ab": 2, "a b": 3}, "merges": merges},
        })
    }

    #[test]
    fn merges_as_strings_or_pairs_and_config_fallbacks() {
        let s = Scratch::new("merges");
        for merges in [json!(["a b"]), json!([["a", "b"]])] {
            write_files(
                &s.0,
                &[
                    ("tokenizer.json", bpe_json(false, merges)),
                    (
                        "config.json",
                        json!({"vocab_size": 6, "bos_token_id": 0, "eos_token_id": [1, 2]}),
                    ),
                    ("generation_config.json", json!({"pad_token_id": 2})),
                ],
            );
            let kv = from_hf(&s.0).unwrap();
            assert_eq!(strs(&kv, "tokenizer.ggml.merges"), ["a b"]);
            assert_eq!(
                strs(&kv, "tokenizer.ggml.tokens"),
                ["a", "b", "ab", "a b", "[PAD4]", "[PAD5]"]
            );
            assert_eq!(i32s(&kv, "tokenizer.ggml.token_type"), [1, 1, 1, 1, 4, 4]);
            assert_eq!(
                get(&kv, "tokenizer.ggml.bos_token_id"),
                Some(&GgufValue::U32(0))
            );
            assert_eq!(
                get(&kv, "tokenizer.ggml.eos_token_id"),
                Some(&GgufValue::U32(1))
            );
            assert_eq!(
                get(&kv, "tokenizer.ggml.padding_token_id"),
                Some(&GgufValue::U32(2))
            );
            assert_eq!(
                get(&kv, "tokenizer.ggml.add_space_prefix"),
                Some(&GgufValue::Bool(true))
            );
        }
        // A pair with a space inside survives as "left right".
        write_files(
            &s.0,
            &[("tokenizer.json", bpe_json(false, json!([["a b", "b"]])))],
        );
        assert_eq!(
            strs(&from_hf(&s.0).unwrap(), "tokenizer.ggml.merges"),
            ["a b b"]
        );
    }

    #[test]
    fn spm_scores_fall_back_to_merge_ranks_when_ids_do_not_follow_merges() {
        let s = Scratch::new("ranks");
        let tj = json!({
            "added_tokens": [],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                      "vocab": {"<unk>": 0, "<0x41>": 1, "a": 2, "b": 3, "ab": 4, "ba": 5, "aba": 6},
                      "merges": ["b a", "a b", "ab a"]},
        });
        write_files(&s.0, &[("tokenizer.json", tj)]);
        let kv = from_hf(&s.0).unwrap();
        assert_eq!(
            get(&kv, "tokenizer.ggml.model"),
            Some(&GgufValue::str("llama"))
        );
        assert_eq!(
            get(&kv, "tokenizer.ggml.pre"),
            Some(&GgufValue::str("default"))
        );
        // The unknown token is not an added token here, so it keeps its own type.
        assert_eq!(
            i32s(&kv, "tokenizer.ggml.token_type"),
            [2, 6, 1, 1, 1, 1, 1]
        );
        // "ba" (rank 0) before "ab" (rank 1) before "aba" (rank 2); unmerged chars lowest.
        let sc = f32s(&kv, "tokenizer.ggml.scores");
        assert_eq!(sc[0], 0.0);
        assert_eq!(sc[1], 0.0);
        assert_eq!(&sc[4..], [-1.0, -0.0, -2.0]);
        assert!(sc[2] < -2.0 && sc[3] < -2.0);
        assert_eq!(
            get(&kv, "tokenizer.ggml.unknown_token_id"),
            Some(&GgufValue::U32(0))
        );
        assert_eq!(
            get(&kv, "tokenizer.ggml.add_space_prefix"),
            Some(&GgufValue::Bool(true))
        );
        assert!(get(&kv, "tokenizer.ggml.merges").is_none());
    }

    #[test]
    fn unsupported_tokenizers_are_one_line_errors() {
        let s = Scratch::new("bad");
        let cases = [
            (
                json!({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}),
                "'Unigram'",
            ),
            (
                json!({"model": {"type": "WordPiece", "vocab": {"a": 0}}}),
                "'WordPiece'",
            ),
            (json!({"model": {"vocab": [["a", 0.0]]}}), "'Unigram'"),
            (
                json!({"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}),
                "without ByteLevel",
            ),
            (json!({"model": 3}), "no 'model'"),
            (bpe_json(false, json!([3])), "merges[0]"),
            (bpe_json(false, json!(["ab"])), "merges[0]"),
        ];
        for (tj, want) in cases {
            write_files(&s.0, &[("tokenizer.json", tj)]);
            let msg = format!("{:#}", from_hf(&s.0).unwrap_err());
            assert!(msg.contains(want) && !msg.contains('\n'), "{msg}");
        }
        write_files(
            &s.0,
            &[
                ("tokenizer.json", bpe_json(false, json!([]))),
                ("config.json", json!({"vocab_size": 1u64 << 40})),
            ],
        );
        let msg = format!("{:#}", from_hf(&s.0).unwrap_err());
        assert!(msg.contains("implausibly large"), "{msg}");
        std::fs::write(s.0.join("tokenizer.json"), "{").unwrap();
        let msg = format!("{:#}", from_hf(&s.0).unwrap_err());
        assert!(msg.contains("not valid JSON"), "{msg}");
        let msg = format!("{:#}", from_hf(&s.0.join("missing")).unwrap_err());
        assert!(msg.contains("cannot read"), "{msg}");
    }

    #[test]
    fn from_gguf_retypes_and_side_file_round_trips() {
        let s = Scratch::new("retype");
        // Widths llama.cpp would reject, as some writers produce them.
        let kvs = vec![
            ("general.architecture".into(), GgufValue::str("llama")),
            ("tokenizer.ggml.model".into(), GgufValue::str("gpt2")),
            (
                "tokenizer.ggml.tokens".into(),
                GgufValue::str_array(["a", "b", "ab"]),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                GgufValue::u8_array(vec![1, 1, 3]),
            ),
            (
                "tokenizer.ggml.scores".into(),
                GgufValue::f64_array(vec![0.0, -1.0, -2.5]),
            ),
            (
                "tokenizer.ggml.merges".into(),
                GgufValue::str_array(["a b"]),
            ),
            ("tokenizer.ggml.bos_token_id".into(), GgufValue::U64(2)),
            ("tokenizer.ggml.eot_token_id".into(), GgufValue::I32(1)),
            ("tokenizer.ggml.add_bos_token".into(), GgufValue::U8(1)),
            (
                "tokenizer.ggml.precompiled_charsmap".into(),
                GgufValue::i8_array(vec![-1, 2]),
            ),
            (
                "tokenizer.chat_template.tool_use".into(),
                GgufValue::str("{{t}}"),
            ),
            ("tokenizer.x.small".into(), GgufValue::U16(7)),
            ("tokenizer.x.big".into(), GgufValue::U64(1 << 40)),
            ("tokenizer.x.neg".into(), GgufValue::I64(-5)),
            ("tokenizer.x.list".into(), GgufValue::i16_array(vec![-3, 4])),
            ("tokenizer.x.f".into(), GgufValue::F64(0.25)),
        ];
        let g = gguf_of(&s.0, kvs);
        let got = from_gguf(&g).unwrap();
        let want: Vec<(String, GgufValue)> = vec![
            (
                "tokenizer.chat_template.tool_use".into(),
                GgufValue::str("{{t}}"),
            ),
            ("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true)),
            ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(2)),
            ("tokenizer.ggml.eot_token_id".into(), GgufValue::U32(1)),
            (
                "tokenizer.ggml.merges".into(),
                GgufValue::str_array(["a b"]),
            ),
            ("tokenizer.ggml.model".into(), GgufValue::str("gpt2")),
            (
                "tokenizer.ggml.precompiled_charsmap".into(),
                GgufValue::i8_array(vec![-1, 2]),
            ),
            (
                "tokenizer.ggml.scores".into(),
                GgufValue::f32_array(vec![0.0, -1.0, -2.5]),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                GgufValue::i32_array(vec![1, 1, 3]),
            ),
            (
                "tokenizer.ggml.tokens".into(),
                GgufValue::str_array(["a", "b", "ab"]),
            ),
            ("tokenizer.x.big".into(), GgufValue::U64(1 << 40)),
            ("tokenizer.x.f".into(), GgufValue::F64(0.25)),
            ("tokenizer.x.list".into(), GgufValue::i32_array(vec![-3, 4])),
            ("tokenizer.x.neg".into(), GgufValue::I32(-5)),
            ("tokenizer.x.small".into(), GgufValue::U32(7)),
        ];
        assert_eq!(got, want);

        let side = s.0.join(SIDE_FILE);
        write_side_file(&side, &g).unwrap();
        let back = GgufFile::open(&side).unwrap();
        assert!(back.tensors.is_empty());
        assert!(back.get("general.architecture").is_none());
        assert_eq!(read_side_file(&side).unwrap(), want);

        // Bad values are errors naming the key.
        for (key, v) in [
            ("tokenizer.ggml.bos_token_id", GgufValue::I32(-1)),
            ("tokenizer.ggml.tokens", GgufValue::u32_array(vec![1])),
            ("tokenizer.ggml.add_eos_token", GgufValue::str("yes")),
            ("tokenizer.ggml.model", GgufValue::U32(1)),
        ] {
            let g = gguf_of(&s.0, vec![(key.into(), v)]);
            let msg = format!("{:#}", from_gguf(&g).unwrap_err());
            assert!(msg.contains(key), "{msg}");
        }
        let g = gguf_of(&s.0, vec![("general.name".into(), GgufValue::str("x"))]);
        assert!(write_side_file(&s.0.join("none.gguf"), &g).is_err());
    }

    /// Compares `from_hf(imported folder)` with the original GGUF's tokenizer; returns the differences
    /// that are not asserted (printed by the caller).
    fn compare_real(gguf: &str, folder: &str) -> Option<Vec<String>> {
        let gguf = repo().join(gguf);
        let folder = repo().join(folder);
        if !gguf.is_file() || !folder.join("tokenizer.json").is_file() {
            println!(
                "SKIPPED: {} or {} is absent (scripts/fetch-model.sh all)",
                gguf.display(),
                folder.display()
            );
            return None;
        }
        let g = GgufFile::open(&gguf).unwrap();
        let orig = from_gguf(&g).unwrap();
        let ours = from_hf(&folder).unwrap();
        let name = gguf.file_name().unwrap().to_string_lossy().to_string();
        for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre"] {
            assert_eq!(get(&ours, key), get(&orig, key), "{name}: {key}");
        }
        let (ot, nt) = (
            strs(&orig, "tokenizer.ggml.tokens"),
            strs(&ours, "tokenizer.ggml.tokens"),
        );
        assert_eq!(ot.len(), nt.len(), "{name}: token count");
        let bad: Vec<usize> = (0..ot.len()).filter(|&i| ot[i] != nt[i]).collect();
        assert!(
            bad.is_empty(),
            "{name}: {} tokens differ, first {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        let (oty, nty) = (
            i32s(&orig, "tokenizer.ggml.token_type"),
            i32s(&ours, "tokenizer.ggml.token_type"),
        );
        let bad: Vec<(usize, &str, i32, i32)> = (0..oty.len())
            .filter(|&i| oty[i] != nty[i])
            .map(|i| (i, ot[i].as_str(), oty[i], nty[i]))
            .collect();
        assert!(
            bad.is_empty(),
            "{name}: {} token types differ, first {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        match get(&orig, "tokenizer.ggml.merges") {
            Some(m) => assert_eq!(
                get(&ours, "tokenizer.ggml.merges"),
                Some(m),
                "{name}: merges"
            ),
            None => assert!(
                get(&ours, "tokenizer.ggml.merges").is_none(),
                "{name}: merges"
            ),
        }

        let mut notes = Vec::new();
        if let Some(GgufValue::Array(GgufArray::F32(os))) = get(&orig, "tokenizer.ggml.scores") {
            let ns = f32s(&ours, "tokenizer.ggml.scores");
            let differ: Vec<usize> = (0..os.len()).filter(|&i| os[i] != ns[i]).collect();
            // Only single-character pieces may differ: llama.cpp never looks their scores up.
            let multi: Vec<usize> = differ
                .iter()
                .copied()
                .filter(|&i| ot[i].chars().count() > 1)
                .collect();
            assert!(
                multi.is_empty(),
                "{name}: scores of {} multi-character tokens differ, first {:?}",
                multi.len(),
                multi
                    .iter()
                    .take(5)
                    .map(|&i| (i, &ot[i], os[i], ns[i]))
                    .collect::<Vec<_>>()
            );
            if !differ.is_empty() {
                let offsets: std::collections::BTreeSet<i64> =
                    differ.iter().map(|&i| (ns[i] - os[i]) as i64).collect();
                notes.push(format!(
                    "scores of {} single-character tokens differ (ours - original in {offsets:?}); {} of {} scores identical",
                    differ.len(),
                    os.len() - differ.len(),
                    os.len()
                ));
            }
        }
        for (k, v) in &orig {
            if matches!(
                k.as_str(),
                "tokenizer.ggml.tokens"
                    | "tokenizer.ggml.token_type"
                    | "tokenizer.ggml.scores"
                    | "tokenizer.ggml.merges"
            ) {
                continue;
            }
            match get(&ours, k) {
                None => notes.push(format!("missing {k} = {v:?}")),
                Some(o) if o != v => notes.push(format!("{k}: original {v:?}, ours {o:?}")),
                _ => {}
            }
        }
        for (k, v) in &ours {
            if get(&orig, k).is_none() {
                notes.push(format!("extra {k} = {v:?}"));
            }
        }
        // The special ids must agree.
        for k in [
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
        ] {
            assert_eq!(get(&ours, k), get(&orig, k), "{name}: {k}");
        }
        for n in &notes {
            println!("{name}: {n}");
        }
        Some(notes)
    }

    #[test]
    fn real_smollm2_tokenizer_is_reproduced_from_the_imported_folder() {
        compare_real(
            "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "models/SmolLM2-135M-Instruct.Q4_1",
        );
    }

    #[test]
    fn real_gemma3_tokenizer_is_reproduced_from_the_imported_folder() {
        compare_real(
            "models/gemma-3-270m-q4_k_m.gguf",
            "models/gemma-3-270m-q4_k_m",
        );
    }
}
