//! Forward-pass parity with HF transformers: logits of every tiny fixture model (perplexity is
//! checked on every backend in tests/engines.rs).

mod common;

use twossp_engine::model::Model;

/// The acceptance bound on max |logit difference| in f32.
const LOGIT_TOL: f32 = 1e-4;

#[test]
fn logits_match_hf_transformers_for_every_fixture() {
    let fixtures = common::model_fixtures();
    assert!(
        fixtures.len() >= 7,
        "expected a fixture per architecture, found {}",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for dir in &fixtures {
        let model = Model::load(dir).unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
        let (ids, expected, vocab) = common::reference(dir);
        assert_eq!(vocab, model.config.vocab);
        let got = model.logits(&ids).unwrap();
        let max_diff = common::max_abs_diff(&got, &expected);
        let scale = expected.iter().map(|v| v.abs()).fold(0f32, f32::max);
        println!(
            "{:<16} max|dlogit| = {max_diff:.3e} (max|logit| {scale:.2})",
            dir.file_name().unwrap().to_string_lossy()
        );
        if max_diff.is_nan() || max_diff > LOGIT_TOL {
            failures.push(format!("{}: {max_diff:e}", dir.display()));
        }
    }
    assert!(failures.is_empty(), "logit mismatch: {failures:?}");
}

#[test]
fn hub_layout_configs_describe_the_same_models() {
    // config.hub.json: the same model in the transformers v4 / Hub layout (rope_theta, rope_scaling,
    // rope_local_base_freq, sliding_window_pattern, ...). Loading it must give the same logits.
    let mut checked = 0;
    for dir in common::model_fixtures() {
        let hub = dir.join("config.hub.json");
        if !hub.exists() {
            continue;
        }
        let raw = serde_json::from_str(&std::fs::read_to_string(&hub).unwrap()).unwrap();
        let config = twossp_engine::config::ModelConfig::from_hf(raw).unwrap();
        let store = twossp_engine::weights::TensorStore::open(&dir).unwrap();
        let model = Model::from_store(config, &store).unwrap();
        let (ids, expected, _) = common::reference(&dir);
        let got = model.logits(&ids).unwrap();
        let max_diff = common::max_abs_diff(&got, &expected);
        assert!(
            max_diff <= LOGIT_TOL,
            "{}: hub config gives max diff {max_diff:e}",
            dir.display()
        );
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} hub-layout configs found");
}

#[test]
fn kv_cache_decoding_matches_the_full_forward_pass() {
    // Prefill half the reference sequence, then feed the rest one token at a time; every step's
    // logits must equal the full forward pass's logits at that position (sliding windows included).
    use twossp_engine::model::{KvCache, Workspace};
    for dir in common::model_fixtures() {
        let model = Model::load(&dir).unwrap();
        let (ids, expected, vocab) = common::reference(&dir);
        let mut cache = KvCache::new(&model, ids.len());
        let mut ws = Workspace::default();
        let split = ids.len() / 2;
        let mut worst = 0f32;
        let mut check = |pos: usize, got: &[f32]| {
            let want = &expected[pos * vocab..(pos + 1) * vocab];
            let diff = common::max_abs_diff(got, want);
            worst = if diff.is_nan() {
                f32::NAN
            } else {
                worst.max(diff)
            };
        };
        check(
            split - 1,
            &model
                .forward_cached(&ids[..split], &mut cache, &mut ws)
                .unwrap(),
        );
        for pos in split..ids.len() {
            check(
                pos,
                &model
                    .forward_cached(&ids[pos..pos + 1], &mut cache, &mut ws)
                    .unwrap(),
            );
        }
        assert_eq!(cache.len(), ids.len());
        assert!(
            worst <= LOGIT_TOL,
            "{}: cached decoding differs by {worst:e}",
            dir.display()
        );
    }
}
