//! GGUF import: synthetic GGUF files written by a tiny test-only writer, error handling, layout
//! fix-ups, tokenizer rebuilding, and exact dequantization against gguf-py reference values.

use half::f16;
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::{Path, PathBuf};
use twossp_engine::gguf::dequant::{dequantize, GgmlType};
use twossp_engine::gguf::import;

// ---------------------------------------------------------------- test-only GGUF writer

enum Kv {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
}

#[derive(Default)]
struct Gguf {
    version: u32,
    kvs: Vec<(String, Kv)>,
    tensors: Vec<Tensor>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Gguf {
    fn new() -> Self {
        Self {
            version: 3,
            ..Default::default()
        }
    }

    fn kv(&mut self, key: &str, v: Kv) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self.kvs.push((key.to_string(), v));
        self
    }

    fn remove_kv(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    fn tensor_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        assert_eq!(values.len() as u64, dims.iter().product::<u64>());
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id: 0,
            data,
        });
        self
    }

    fn tensor_raw(&mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id,
            data,
        });
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            match v {
                Kv::U32(x) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                Kv::F32(x) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                Kv::Bool(x) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*x as u8);
                }
                Kv::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Kv::Strs(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for s in items {
                        put_str(&mut out, s);
                    }
                }
                Kv::I32s(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
                Kv::F32s(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(6u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.type_id.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off as usize, 0);
            out.extend(&t.data);
        }
        out
    }
}

// ---------------------------------------------------------------- tiny models

const HIDDEN: u64 = 32;
const HEADS: u64 = 2;
const KV_HEADS: u64 = 1;
const HEAD_DIM: u64 = 16;
const FFN: u64 = 64;

/// GPT-2's byte → printable character table.
fn byte_level_alphabet() -> Vec<String> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

fn ramp(n: u64, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i % 97) as f32 - 48.0) * scale).collect()
}

/// Tensors of a one-block model; `gemma` adds the extra norms.
fn add_weights(g: &mut Gguf, vocab: u64, gemma: bool) {
    let q_rows = HEADS * HEAD_DIM;
    let kv_rows = KV_HEADS * HEAD_DIM;
    // attn_q holds its GGUF row index in every column so the unpermutation can be checked.
    let q: Vec<f32> = (0..q_rows)
        .flat_map(|r| std::iter::repeat_n(r as f32, HIDDEN as usize))
        .collect();
    let k: Vec<f32> = (0..kv_rows)
        .flat_map(|r| std::iter::repeat_n(r as f32, HIDDEN as usize))
        .collect();
    g.tensor_f32(
        "token_embd.weight",
        &[HIDDEN, vocab],
        &ramp(HIDDEN * vocab, 0.01),
    )
    .tensor_f32("output_norm.weight", &[HIDDEN], &vec![1.5; HIDDEN as usize])
    .tensor_f32(
        "blk.0.attn_norm.weight",
        &[HIDDEN],
        &vec![2.0; HIDDEN as usize],
    )
    .tensor_f32("blk.0.attn_q.weight", &[HIDDEN, q_rows], &q)
    .tensor_f32("blk.0.attn_k.weight", &[HIDDEN, kv_rows], &k)
    .tensor_f32(
        "blk.0.attn_v.weight",
        &[HIDDEN, kv_rows],
        &ramp(HIDDEN * kv_rows, 0.02),
    )
    .tensor_f32(
        "blk.0.attn_output.weight",
        &[q_rows, HIDDEN],
        &ramp(HIDDEN * q_rows, 0.03),
    )
    .tensor_f32(
        "blk.0.ffn_norm.weight",
        &[HIDDEN],
        &vec![3.0; HIDDEN as usize],
    )
    .tensor_f32(
        "blk.0.ffn_gate.weight",
        &[HIDDEN, FFN],
        &ramp(HIDDEN * FFN, 0.04),
    )
    .tensor_f32(
        "blk.0.ffn_up.weight",
        &[HIDDEN, FFN],
        &ramp(HIDDEN * FFN, 0.05),
    )
    .tensor_f32(
        "blk.0.ffn_down.weight",
        &[FFN, HIDDEN],
        &ramp(HIDDEN * FFN, 0.06),
    );
    if gemma {
        g.tensor_f32(
            "blk.0.attn_q_norm.weight",
            &[HEAD_DIM],
            &vec![1.25; HEAD_DIM as usize],
        )
        .tensor_f32(
            "blk.0.attn_k_norm.weight",
            &[HEAD_DIM],
            &vec![0.75; HEAD_DIM as usize],
        )
        .tensor_f32(
            "blk.0.post_attention_norm.weight",
            &[HIDDEN],
            &vec![4.0; HIDDEN as usize],
        )
        .tensor_f32(
            "blk.0.post_ffw_norm.weight",
            &[HIDDEN],
            &vec![5.0; HIDDEN as usize],
        );
    }
}

fn add_hparams(g: &mut Gguf, arch: &str) {
    g.kv("general.architecture", Kv::Str(arch.into()))
        .kv(&format!("{arch}.block_count"), Kv::U32(1))
        .kv(&format!("{arch}.context_length"), Kv::U32(256))
        .kv(&format!("{arch}.embedding_length"), Kv::U32(HIDDEN as u32))
        .kv(&format!("{arch}.feed_forward_length"), Kv::U32(FFN as u32))
        .kv(
            &format!("{arch}.attention.head_count"),
            Kv::U32(HEADS as u32),
        )
        .kv(
            &format!("{arch}.attention.head_count_kv"),
            Kv::U32(KV_HEADS as u32),
        )
        .kv(
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
            Kv::F32(1e-5),
        )
        .kv(&format!("{arch}.rope.freq_base"), Kv::F32(10000.0));
}

/// A one-block llama with a byte-level BPE vocabulary ("smollm" pre-tokenizer).
fn tiny_llama() -> Gguf {
    let mut tokens = vec![
        "<|endoftext|>".to_string(),
        "<|im_start|>".to_string(),
        "<|im_end|>".to_string(),
    ];
    tokens.extend(byte_level_alphabet());
    tokens.extend(
        [
            "he", "ll", "hell", "hello", "Ġw", "Ġwo", "Ġwor", "Ġworl", "Ġworld", "12",
        ]
        .map(String::from),
    );
    // "l d" makes no token: the tokenizer must drop it (HF rejects merges with unknown results).
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l", "Ġworl d", "l d", "1 2",
    ];
    let mut types = vec![1i32; tokens.len()];
    types[..3].fill(3);
    let vocab = tokens.len() as u64;
    let mut g = Gguf::new();
    add_hparams(&mut g, "llama");
    g.kv("llama.rope.dimension_count", Kv::U32(HEAD_DIM as u32))
        .kv("tokenizer.ggml.model", Kv::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", Kv::Str("smollm".into()))
        .kv("tokenizer.ggml.tokens", Kv::Strs(tokens))
        .kv("tokenizer.ggml.token_type", Kv::I32s(types))
        .kv(
            "tokenizer.ggml.merges",
            Kv::Strs(merges.iter().map(|s| s.to_string()).collect()),
        )
        .kv("tokenizer.ggml.bos_token_id", Kv::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Kv::U32(2))
        .kv("tokenizer.ggml.add_bos_token", Kv::Bool(false));
    add_weights(&mut g, vocab, false);
    g
}

/// A one-block gemma3 with a SentencePiece vocabulary (scores, byte fallback, user-defined tokens).
fn tiny_gemma() -> Gguf {
    let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>", "\n", "\n\n"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3, 3, 4, 4];
    let mut scores = vec![-1000.0f32; 6];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let normal = [
        "▁", "a", "b", "c", "h", "e", "l", "o", "▁h", "ll", "he", "hell", "hello", "▁hello", "ab",
        "bc", "abc",
    ];
    // Scores: "ab" beats "bc", so "abc" must come out as ["abc"] via "ab"+"c", and "bcab" as ["bc", "ab"].
    let normal_scores = [
        -1.0, -50.0, -51.0, -52.0, -53.0, -54.0, -55.0, -56.0, -10.0, -5.0, -6.0, -7.0, -9.0, -8.0,
        -2.0, -3.0, -4.0,
    ];
    for (t, s) in normal.iter().zip(normal_scores) {
        tokens.push(t.to_string());
        types.push(1);
        scores.push(s);
    }
    let vocab = tokens.len() as u64;
    let mut g = Gguf::new();
    add_hparams(&mut g, "gemma3");
    g.kv("gemma3.attention.key_length", Kv::U32(HEAD_DIM as u32))
        .kv("gemma3.attention.value_length", Kv::U32(HEAD_DIM as u32))
        .kv("gemma3.attention.sliding_window", Kv::U32(64))
        .kv("tokenizer.ggml.model", Kv::Str("llama".into()))
        .kv("tokenizer.ggml.pre", Kv::Str("default".into()))
        .kv("tokenizer.ggml.tokens", Kv::Strs(tokens))
        .kv("tokenizer.ggml.token_type", Kv::I32s(types))
        .kv("tokenizer.ggml.scores", Kv::F32s(scores))
        .kv("tokenizer.ggml.bos_token_id", Kv::U32(2))
        .kv("tokenizer.ggml.eos_token_id", Kv::U32(1))
        .kv("tokenizer.ggml.unknown_token_id", Kv::U32(3))
        .kv("tokenizer.ggml.padding_token_id", Kv::U32(0))
        .kv("tokenizer.ggml.add_bos_token", Kv::Bool(true))
        .kv("tokenizer.ggml.add_space_prefix", Kv::Bool(false));
    add_weights(&mut g, vocab, true);
    g
}

// ---------------------------------------------------------------- helpers

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("gguf-import-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn import_err(tag: &str, bytes: &[u8]) -> String {
    let s = Scratch::new(tag);
    let src = s.write("m.gguf", bytes);
    let out = s.0.join("out");
    let err = import(&src, &out, false).expect_err("import should fail");
    assert!(
        !out.exists(),
        "a failed import must not leave an output folder"
    );
    format!("{err:#}")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

// ---------------------------------------------------------------- error handling

#[test]
fn truncated_header_is_an_error() {
    let bytes = tiny_llama().bytes();
    for cut in [0, 2, 10, 40, 300] {
        let err = import_err(&format!("trunc{cut}"), &bytes[..cut]);
        assert!(err.contains("truncated"), "cut at {cut}: {err}");
    }
}

#[test]
fn truncated_tensor_data_is_an_error() {
    let bytes = tiny_llama().bytes();
    let err = import_err("truncdata", &bytes[..bytes.len() - 100]);
    assert!(err.contains("outside the file"), "{err}");
}

#[test]
fn bad_magic_is_an_error() {
    let mut bytes = tiny_llama().bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let err = import_err("magic", &bytes);
    assert!(err.contains("not a GGUF file"), "{err}");
}

#[test]
fn unsupported_version_is_an_error() {
    let mut g = tiny_llama();
    g.version = 7;
    let err = import_err("version", &g.bytes());
    assert!(err.contains("unsupported GGUF version 7"), "{err}");
}

#[test]
fn unknown_quant_type_id_is_an_error() {
    let mut g = tiny_llama();
    g.tensor_raw("blk.0.extra.weight", &[32], 77, vec![0; 32]);
    let err = import_err("qtype", &g.bytes());
    assert!(err.contains("unknown type id 77"), "{err}");
}

#[test]
fn known_but_unsupported_quant_type_is_named() {
    let mut g = tiny_llama();
    g.tensors.retain(|t| t.name != "blk.0.ffn_up.weight");
    g.tensor_raw(
        "blk.0.ffn_up.weight",
        &[256, HIDDEN * FFN / 256],
        10,
        vec![0; 84 * 8],
    );
    let err = import_err("q2k", &g.bytes());
    assert!(
        err.contains("Q2_K") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn unknown_architecture_is_an_error() {
    let mut g = tiny_llama();
    g.kv("general.architecture", Kv::Str("mamba9".into()));
    let err = import_err("arch", &g.bytes());
    assert!(
        err.contains("unsupported GGUF architecture 'mamba9'"),
        "{err}"
    );
}

#[test]
fn tensor_out_of_bounds_is_an_error() {
    let mut bytes = tiny_llama().bytes();
    // Append nothing but claim a tensor far beyond the end: patch the first tensor's offset.
    let g = tiny_llama();
    let name = &g.tensors[0].name;
    let pos = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    let off_pos = pos + name.len() + 4 + 8 * g.tensors[0].dims.len() + 4;
    bytes[off_pos..off_pos + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = import_err("oob", &bytes);
    assert!(
        err.contains("token_embd.weight") && err.contains("outside the file"),
        "{err}"
    );
}

#[test]
fn missing_metadata_is_an_error() {
    let mut g = tiny_llama();
    g.remove_kv("llama.attention.head_count");
    let err = import_err("meta", &g.bytes());
    assert!(err.contains("llama.attention.head_count"), "{err}");
}

#[test]
fn wrong_metadata_type_is_an_error() {
    let mut g = tiny_llama();
    g.kv("llama.block_count", Kv::Str("one".into()));
    let err = import_err("metatype", &g.bytes());
    assert!(
        err.contains("llama.block_count") && err.contains("not a non-negative integer"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_an_error() {
    let mut g = tiny_llama();
    g.tensors.retain(|t| t.name != "blk.0.ffn_down.weight");
    let err = import_err("missing", &g.bytes());
    assert!(err.contains("model.layers.0.mlp.down_proj.weight"), "{err}");
}

#[test]
fn refuses_to_overwrite_without_force() {
    let s = Scratch::new("force");
    let src = s.write("m.gguf", &tiny_llama().bytes());
    let out = s.0.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious").unwrap();
    let err = format!("{:#}", import(&src, &out, false).unwrap_err());
    assert!(err.contains("already exists"), "{err}");
    assert!(out.join("keep.txt").exists());
    import(&src, &out, true).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").exists());
}

// ---------------------------------------------------------------- successful imports

#[test]
fn llama_import_writes_a_consistent_checkpoint() {
    let s = Scratch::new("llama");
    let src = s.write("m.gguf", &tiny_llama().bytes());
    let out = s.0.join("out");
    let summary = import(&src, &out, false).unwrap();
    assert_eq!(summary.architecture, "llama");
    assert_eq!(summary.n_tensors, 11);
    assert_eq!(summary.vocab_size, 3 + 256 + 10);

    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["num_key_value_heads"], 1);
    assert_eq!(cfg["head_dim"], 16);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(cfg["vocab_size"], 269);

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 11);
    assert!(
        st.tensor("lm_head.weight").is_err(),
        "tied head must not be written"
    );
    let (shape, _) = tensor(&st, "model.embed_tokens.weight");
    assert_eq!(shape, vec![269, 32]);
    let (shape, down) = tensor(&st, "model.layers.0.mlp.down_proj.weight");
    assert_eq!(shape, vec![32, 64]);
    assert_eq!(down[..3], ramp(3, 0.06)[..]);
    // q: HF row j*8 + i of a head was GGUF row 2i + j.
    let (shape, q) = tensor(&st, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(shape, vec![32, 32]);
    let row = |r: usize| q[r * 32];
    assert_eq!(
        (row(0), row(1), row(7), row(8), row(9), row(15)),
        (0.0, 2.0, 14.0, 1.0, 3.0, 15.0)
    );
    assert_eq!((row(16), row(17), row(24)), (16.0, 18.0, 17.0));
    let (_, k) = tensor(&st, "model.layers.0.self_attn.k_proj.weight");
    assert_eq!((k[0], k[32], k[8 * 32]), (0.0, 2.0, 1.0));
    // llama norms are copied unchanged.
    let (_, n) = tensor(&st, "model.layers.0.post_attention_layernorm.weight");
    assert_eq!(n[0], 3.0);
}

#[test]
fn llama_tokenizer_loads_in_rust_and_splits_digits() {
    let s = Scratch::new("llamatok");
    let src = s.write("m.gguf", &tiny_llama().bytes());
    let out = s.0.join("out");
    import(&src, &out, false).unwrap();
    let tk = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let enc = tk.encode("hello world 12<|im_end|>", true).unwrap();
    let toks: Vec<&str> = enc.get_tokens().iter().map(String::as_str).collect();
    // "12" is a token, but the smollm pre-tokenizer isolates every digit; no BOS is added.
    assert_eq!(toks, ["hello", "Ġworld", "Ġ", "1", "2", "<|im_end|>"]);
    assert_eq!(*enc.get_ids().last().unwrap(), 2);
    assert_eq!(
        tk.decode(enc.get_ids(), false).unwrap(),
        "hello world 12<|im_end|>"
    );
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(tc["eos_token"], "<|im_end|>");
}

#[test]
fn gemma3_import_fixes_norms_and_describes_layers() {
    let s = Scratch::new("gemma");
    let src = s.write("m.gguf", &tiny_gemma().bytes());
    let out = s.0.join("out");
    let summary = import(&src, &out, false).unwrap();
    assert_eq!(summary.n_tensors, 15);

    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["model_type"], "gemma3_text");
    assert_eq!(cfg["architectures"][0], "Gemma3ForCausalLM");
    assert_eq!(cfg["head_dim"], 16);
    assert_eq!(cfg["query_pre_attn_scalar"], 16);
    assert_eq!(cfg["sliding_window"], 64);
    assert_eq!(cfg["rope_local_base_freq"].as_f64(), Some(10000.0));
    assert_eq!(cfg["layer_types"], serde_json::json!(["sliding_attention"]));
    assert_eq!(cfg["hidden_activation"], "gelu_pytorch_tanh");
    assert!(cfg["final_logit_softcapping"].is_null());
    assert_eq!(cfg["bos_token_id"], 2);

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (name, want) in [
        ("model.norm.weight", 0.5),
        ("model.layers.0.input_layernorm.weight", 1.0),
        ("model.layers.0.post_attention_layernorm.weight", 3.0),
        ("model.layers.0.pre_feedforward_layernorm.weight", 2.0),
        ("model.layers.0.post_feedforward_layernorm.weight", 4.0),
        ("model.layers.0.self_attn.q_norm.weight", 0.25),
        ("model.layers.0.self_attn.k_norm.weight", -0.25),
    ] {
        assert_eq!(tensor(&st, name).1[0], want, "{name}");
    }
    // gemma q/k are not permuted.
    let (_, q) = tensor(&st, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!((q[0], q[32], q[64]), (0.0, 1.0, 2.0));
}

#[test]
fn gemma3_tokenizer_follows_scores_and_byte_fallback() {
    let s = Scratch::new("gemmatok");
    let src = s.write("m.gguf", &tiny_gemma().bytes());
    let out = s.0.join("out");
    import(&src, &out, false).unwrap();
    let tk = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let toks = |text: &str| -> Vec<String> { tk.encode(text, true).unwrap().get_tokens().to_vec() };
    // BOS added; no prefix space; "abc" via the best-scoring merges; 'z' falls back to bytes.
    assert_eq!(toks("abc"), ["<bos>", "abc"]);
    assert_eq!(toks("bcab"), ["<bos>", "bc", "ab"]);
    assert_eq!(toks("hello z"), ["<bos>", "hello", "▁", "<0x7A>"]);
    assert_eq!(toks(" hello\n\nab"), ["<bos>", "▁hello", "\n\n", "ab"]);
    let enc = tk.encode("ab\nhello", true).unwrap();
    assert_eq!(tk.decode(enc.get_ids(), true).unwrap(), "ab\nhello");
}

// ---------------------------------------------------------------- dequantization vs gguf-py

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/quant_blocks.json");
    let doc = read_json(&path);
    let cases = doc["cases"].as_array().unwrap();
    let mut seen = Vec::new();
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let ty = GgmlType(case["type_id"].as_u64().unwrap() as u32);
        assert_eq!(ty.name(), name);
        let hex = case["hex"].as_str().unwrap();
        let data: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let n = case["n_elements"].as_u64().unwrap() as usize;
        let got = dequantize(ty, &data, n).unwrap();
        let want: Vec<u32> = case["expected_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                *w,
                "{name} element {i}: got {g}, want {}",
                f32::from_bits(*w)
            );
        }
        seen.push(name.to_string());
    }
    for t in [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K",
    ] {
        assert!(seen.iter().any(|s| s == t), "fixture lacks {t}");
    }
}

#[test]
fn dequantize_rejects_wrong_sizes() {
    let err = dequantize(GgmlType::Q8_0, &[0u8; 33], 32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("33 bytes"), "{err}");
    let one = f16::from_f32(1.0).to_le_bytes();
    assert_eq!(dequantize(GgmlType::F16, &one, 1).unwrap(), vec![1.0]);
}

#[test]
fn qwen2_import_keeps_q_rows_and_writes_biases() {
    let mut g = tiny_llama();
    let arch_keys: Vec<String> = g
        .kvs
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| k.starts_with("llama."))
        .collect();
    for k in arch_keys {
        let pos = g.kvs.iter().position(|(key, _)| *key == k).unwrap();
        g.kvs[pos].0 = k.replacen("llama.", "qwen2.", 1);
    }
    g.kv("general.architecture", Kv::Str("qwen2".into()))
        .kv("tokenizer.ggml.pre", Kv::Str("qwen2".into()));
    g.tensor_f32(
        "blk.0.attn_q.bias",
        &[HEADS * HEAD_DIM],
        &ramp(HEADS * HEAD_DIM, 1.0),
    )
    .tensor_f32(
        "blk.0.attn_k.bias",
        &[KV_HEADS * HEAD_DIM],
        &ramp(KV_HEADS * HEAD_DIM, 1.0),
    )
    .tensor_f32(
        "blk.0.attn_v.bias",
        &[KV_HEADS * HEAD_DIM],
        &ramp(KV_HEADS * HEAD_DIM, 1.0),
    );
    let s = Scratch::new("qwen2");
    let src = s.write("m.gguf", &g.bytes());
    let out = s.0.join("out");
    let summary = import(&src, &out, false).unwrap();
    assert_eq!(
        (summary.architecture.as_str(), summary.n_tensors),
        ("qwen2", 14)
    );
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["model_type"], "qwen2");
    assert_eq!(cfg["architectures"][0], "Qwen2ForCausalLM");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, q) = tensor(&st, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(
        (q[0], q[32], q[64]),
        (0.0, 1.0, 2.0),
        "qwen2 q rows are not permuted"
    );
    assert_eq!(
        tensor(&st, "model.layers.0.self_attn.q_proj.bias").0,
        vec![32]
    );
    let tk = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let toks = tk.encode("hello 12", false).unwrap().get_tokens().to_vec();
    assert_eq!(toks, ["hello", "Ġ", "1", "2"]);
}

#[test]
fn absurd_block_count_is_named_not_allocated() {
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
    ] {
        let mut g = tiny_llama();
        g.kv(key, Kv::U32(4_000_000_000));
        let err = import_err("absurd", &g.bytes());
        assert!(
            err.contains(&format!(
                "'{key}' is 4000000000, larger than any real model's"
            )),
            "{key}: {err}"
        );
    }
}
