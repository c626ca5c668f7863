//! Shared helpers of the integration tests: fixture paths and reference tensors.

#![allow(dead_code)]

use safetensors::SafeTensors;
use std::path::PathBuf;

/// `tests/fixtures` of this crate (of `TWOSSP_REPO_ROOT` when set: test binaries carried to
/// another machine, such as the GPU packs of scripts/gpu-check.sh).
pub fn fixtures() -> PathBuf {
    let root = std::env::var_os("TWOSSP_REPO_ROOT")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    root.join("tests/fixtures")
}

/// Every model fixture folder (those holding a reference.json), sorted by name.
pub fn model_fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    dirs.sort();
    dirs
}

/// Reference input ids and logits `[T, vocab]` stored by tools/make_fixtures.py.
pub fn reference(dir: &std::path::Path) -> (Vec<u32>, Vec<f32>, usize) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("valid reference");
    let ids_view = st.tensor("input_ids").expect("input_ids");
    let ids: Vec<u32> = ids_view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let logits_view = st.tensor("logits").expect("logits");
    let vocab = logits_view.shape()[1];
    let logits = logits_view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids, logits, vocab)
}

/// reference.json of a fixture.
pub fn reference_json(dir: &std::path::Path) -> serde_json::Value {
    reference_json_file(&dir.join("reference.json"))
}

/// A JSON file, parsed.
pub fn reference_json_file(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Copies a fixture folder into a fresh temporary folder that a test may mutate.
pub fn scratch_copy(dir: &std::path::Path, tag: &str) -> PathBuf {
    let dest = std::env::temp_dir().join(format!("twossp-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dest.join(p.file_name().unwrap())).unwrap();
    }
    dest
}

/// Largest absolute element-wise difference (NaN if any element is NaN).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

/// Calibration windows of `seq_len` tokens of the sample text, with the fixture's tokenizer.
pub fn calibration(dir: &std::path::Path, seq_len: usize) -> Vec<Vec<u32>> {
    use twossp_engine::{data::Corpus, tokenizer::Tokenizer};
    let tok = Tokenizer::from_dir(dir).unwrap();
    let corpus = Corpus::load(&[fixtures().join("text/sample.txt")], &tok).unwrap();
    corpus
        .windows(seq_len, None)
        .unwrap()
        .into_iter()
        .map(<[u32]>::to_vec)
        .collect()
}

/// Every backend this build and machine have: the CPU in f32 (the reference) and, in a CUDA
/// build with a device (a real GPU, or the host emulation of `cuda-host`), the GPU.
#[allow(unreachable_code)] // without CUDA, `Gpu` has no values
pub fn backends() -> Vec<twossp_engine::backend::Backend> {
    use twossp_engine::backend::{cuda::Gpu, Backend};
    let mut out = vec![Backend::Cpu(Some(twossp_engine::weights::Precision::F32))];
    match Gpu::available() {
        true => out.push(Backend::Cuda(std::sync::Arc::new(Gpu::new(0).unwrap()))),
        false if cfg!(feature = "cuda") => println!("SKIPPED on cuda: no GPU on this machine"),
        false => println!(
            "cuda: not in this build (tests/engines.rs runs it with --features cuda or cuda-host)"
        ),
    }
    out
}

/// Kept FFN neurons of a bf16 backend may differ from the reference's only in neurons whose
/// reference score lies within `tol` (relative) of the keep threshold (midway between the last
/// kept and the first dropped score); returns how many differ, or why that is too many.
pub fn kept_differences_near_threshold(
    got: &[usize],
    want: &[usize],
    scores: &[f64],
    tol: f64,
) -> Result<usize, String> {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let keep = want.len();
    if got.len() != keep {
        return Err(format!("keeps {} neurons, the reference {keep}", got.len()));
    }
    let threshold = match sorted.get(keep) {
        Some(next) => 0.5 * (sorted[keep - 1] + next),
        None => f64::NEG_INFINITY,
    };
    let differ: Vec<usize> = got
        .iter()
        .filter(|j| want.binary_search(j).is_err())
        .chain(want.iter().filter(|j| got.binary_search(j).is_err()))
        .copied()
        .collect();
    let far: Vec<usize> = differ
        .iter()
        .copied()
        .filter(|&j| (scores[j] - threshold).abs() > tol * threshold.abs())
        .collect();
    match far.is_empty() {
        true => Ok(differ.len()),
        false => Err(format!(
            "{} neurons differ, {far:?} of them away from the threshold {threshold:.4}",
            differ.len()
        )),
    }
}
