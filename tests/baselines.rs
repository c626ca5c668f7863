//! Baseline pruning methods against the 2SSP authors' own functions run on the same model and
//! calibration windows (tests/fixtures/baselines_authors.json, made by tools/authors_baselines.py):
//! the same blocks removed, and the scores they came from.

mod common;

use std::path::PathBuf;
use twossp_engine::backend::Backend;
use twossp_engine::engine::{Engine, EngineJob};
use twossp_engine::prune::block_similarity::{
    blocks_to_remove, last_token_outputs, shortgpt, window,
};
use twossp_engine::weights::Precision;

struct Outputs<'a>(&'a [&'a [u32]]);

impl EngineJob for Outputs<'_> {
    type Output = Vec<Vec<Vec<f32>>>;
    fn run<E: Engine>(self, model: E) -> anyhow::Result<Self::Output> {
        last_token_outputs(&model, self.0)
    }
}

#[test]
fn shortgpt_and_window_remove_the_blocks_the_authors_code_removes() {
    let reference = common::reference_json_file(&common::fixtures().join("baselines_authors.json"));
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1");
    assert!(
        model.join("config.json").exists(),
        "run scripts/fetch-model.sh all (scripts/test.sh does)"
    );
    let windows: Vec<Vec<u32>> =
        serde_json::from_value(reference["calibration"]["windows"].clone()).unwrap();
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let outputs = Backend::Cpu(Some(Precision::F32))
        .with_model(&model, Outputs(&refs))
        .unwrap();
    let sparsity = reference["sparsity"].as_f64().unwrap();
    let n = blocks_to_remove(sparsity, outputs[0].len()).unwrap();
    for (name, choice) in [
        ("shortgpt", shortgpt(&outputs, n)),
        ("window", window(&outputs, n)),
    ] {
        let want = &reference["methods"][name];
        assert_eq!(
            n as u64,
            want["blocks_to_remove"].as_u64().unwrap(),
            "{name}"
        );
        let removed: Vec<usize> = serde_json::from_value(want["removed_blocks"].clone()).unwrap();
        let scores: Vec<f64> = match name {
            "shortgpt" => serde_json::from_value(want["block_influence"].clone()).unwrap(),
            _ => {
                let by_start = want["window_mean_cosine"].as_object().unwrap();
                (0..by_start.len())
                    .map(|l| by_start[&l.to_string()].as_f64().unwrap())
                    .collect()
            }
        };
        let max_diff = choice
            .scores
            .iter()
            .zip(&scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        println!(
            "{name}: removed {:?} (authors {removed:?}), max |score difference| {max_diff:.2e}",
            choice.removed_blocks
        );
        assert_eq!(choice.removed_blocks, removed, "{name}");
        assert_eq!(choice.scores.len(), scores.len(), "{name}");
        assert!(max_diff < 1e-4, "{name}: scores differ by {max_diff}");
    }
}
