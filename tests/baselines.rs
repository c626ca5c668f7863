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
use twossp_engine::prune::evopress::EvoPressOptions;
use twossp_engine::weights::Precision;

struct Outputs<'a>(&'a [&'a [u32]]);

impl EngineJob for Outputs<'_> {
    type Output = Vec<Vec<Vec<f32>>>;
    fn run<E: Engine>(self, model: E) -> anyhow::Result<Self::Output> {
        last_token_outputs(&model, self.0)
    }
}

/// SLEB's search on a loaded model.
struct Sleb<'a>(&'a [&'a [u32]], usize);

impl EngineJob for Sleb<'_> {
    type Output = twossp_engine::prune::block_search::SlebRun;
    fn run<E: Engine>(self, mut model: E) -> anyhow::Result<Self::Output> {
        twossp_engine::prune::block_search::sleb(&mut model, self.0, self.1)
    }
}

/// The authors' fixture, the SmolLM2 folder it was made on, and its calibration windows.
fn authors_reference() -> (serde_json::Value, PathBuf, Vec<Vec<u32>>) {
    let reference = common::reference_json_file(&common::fixtures().join("baselines_authors.json"));
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1");
    assert!(
        model.join("config.json").exists(),
        "run scripts/fetch-model.sh all (scripts/test.sh does)"
    );
    let windows = serde_json::from_value(reference["calibration"]["windows"].clone()).unwrap();
    (reference, model, windows)
}

#[test]
fn sleb_removes_the_blocks_the_sleb_authors_code_removes() {
    let (reference, model, windows) = authors_reference();
    let want = &reference["methods"]["sleb"];
    let search: Vec<usize> = serde_json::from_value(want["calibration_windows"].clone()).unwrap();
    let refs: Vec<&[u32]> = search.iter().map(|&i| windows[i].as_slice()).collect();
    // The search is greedy, so its first rounds are those of the full run: two keep CI short
    // (all 12 agree: BENCHMARKS §13).
    let n = 2.min(want["blocks_to_remove"].as_u64().unwrap() as usize);
    let run = Backend::Cpu(Some(Precision::F32))
        .with_model(&model, Sleb(&refs, n))
        .unwrap();
    let order: Vec<usize> = serde_json::from_value(want["removal_order"].clone()).unwrap();
    let order = order[..n].to_vec();
    let ppl: Vec<f64> = want["steps"]
        .as_array()
        .unwrap()
        .iter()
        .take(n)
        .map(|s| s["ppl"].as_f64().unwrap())
        .collect();
    let worst = run
        .ppl
        .iter()
        .zip(&ppl)
        .map(|(g, w)| (g - w).abs() / w)
        .fold(0f64, f64::max);
    println!(
        "sleb: removed {:?} (SLEB authors {order:?}), perplexities within {worst:.2e}",
        run.removal_order
    );
    assert_eq!(run.removal_order, order);
    assert!(worst < 1e-4, "perplexities differ by {worst}");
}

/// BlockPruner's search on a loaded model.
struct BlockPruner<'a>(&'a [&'a [u32]], usize);

impl EngineJob for BlockPruner<'_> {
    type Output = Vec<twossp_engine::prune::block_search::SubBlockStep>;
    fn run<E: Engine>(self, mut model: E) -> anyhow::Result<Self::Output> {
        twossp_engine::prune::block_search::blockpruner(&mut model, self.0, self.1)
    }
}

#[test]
fn blockpruner_removes_the_submodules_the_authors_code_removes() {
    let (reference, model, windows) = authors_reference();
    let want = &reference["methods"]["blockpruner"];
    let search: Vec<usize> = serde_json::from_value(want["calibration_windows"].clone()).unwrap();
    let refs: Vec<&[u32]> = search.iter().map(|&i| windows[i].as_slice()).collect();
    // Greedy, so the first round is that of the full run: one round (an attention, then an MLP
    // removal) keeps CI short (all 24 removals agree: BENCHMARKS §13).
    let rounds = 1;
    let steps = Backend::Cpu(Some(Precision::F32))
        .with_model(&model, BlockPruner(&refs, rounds))
        .unwrap();
    let expected = want["steps"].as_array().unwrap();
    let mut worst = 0f64;
    for (got, want) in steps.iter().zip(expected) {
        let kind = match got.part {
            twossp_engine::engine::SubModule::Attention => "attn",
            twossp_engine::engine::SubModule::Mlp => "mlp",
        };
        assert_eq!(
            (kind, got.block as u64),
            (
                want["kind"].as_str().unwrap(),
                want["block"].as_u64().unwrap()
            ),
            "removals so far: {steps:?}"
        );
        let ppl = want["ppl"].as_f64().unwrap();
        worst = worst.max((got.ppl - ppl).abs() / ppl);
    }
    println!("blockpruner: {steps:?}, perplexities within {worst:.2e} of the authors'");
    assert_eq!(steps.len(), 2 * rounds);
    assert!(worst < 1e-4, "perplexities differ by {worst}");
}

/// EvoPress's search on a loaded model.
struct EvoPress<'a>(&'a [&'a [u32]], usize, EvoPressOptions);

impl EngineJob for EvoPress<'_> {
    type Output = twossp_engine::prune::evopress::EvoPressRun;
    fn run<E: Engine>(self, mut model: E) -> anyhow::Result<Self::Output> {
        twossp_engine::prune::evopress::evopress(&mut model, self.0, self.1, &self.2)
    }
}

#[test]
fn evopress_makes_the_moves_the_authors_code_makes() {
    let (reference, model, windows) = authors_reference();
    let want = &reference["methods"]["evopress"];
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let overrides = &want["overrides_used"];
    let int = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    let opts = EvoPressOptions {
        // One generation keeps CI short: its three selections (the initial one, then two on
        // growing minibatches) exercise every random draw of the search (all ten: BENCHMARKS §13).
        generations: Some(1),
        offspring: int(&overrides["offspring"]),
        initially_generated: int(&overrides["initially_generated"]),
        initial_tokens: int(&overrides["initial_tokens"]),
        tokens_per_selection: serde_json::from_value(overrides["tokens_per_selection"].clone())
            .unwrap(),
        seed: reference["seed"].as_u64().unwrap(),
        ..EvoPressOptions::default()
    };
    assert_eq!(
        refs.len() * refs[0].len(),
        int(&overrides["calibration_tokens"])
    );
    let n = int(&want["blocks_to_remove"]);
    let run = Backend::Cpu(Some(Precision::F32))
        .with_model(&model, EvoPress(&refs, n, opts))
        .unwrap();
    let expected = want["selections"].as_array().unwrap();
    assert_eq!(run.selections.len(), 3);
    let mut worst = 0f64;
    for (got, want) in run.selections.iter().zip(expected) {
        assert_eq!(got.candidates, int(&want["candidates"]));
        let minibatch: Vec<(usize, usize)> =
            serde_json::from_value(want["minibatch_windows"].clone()).unwrap();
        assert_eq!(got.minibatch, minibatch);
        let survivors = want["survivors"].as_array().unwrap();
        assert_eq!(got.survivors.len(), survivors.len());
        for (g, w) in got.survivors.iter().zip(survivors) {
            let blocks = |v: &serde_json::Value| -> Vec<usize> {
                serde_json::from_value(v.clone()).unwrap()
            };
            assert_eq!(
                (&g.attention, &g.mlp),
                (&blocks(&w["attn"]), &blocks(&w["mlp"]))
            );
            let kl = w["kl"].as_f64().unwrap();
            worst = worst.max((g.kl - kl).abs() / kl);
        }
    }
    println!(
        "evopress: the first generation's 3 selections as the authors', KL within {worst:.2e}"
    );
    assert!(worst < 1e-4, "KL divergences differ by {worst}");
}

#[test]
fn shortgpt_and_window_remove_the_blocks_the_authors_code_removes() {
    let (reference, model, windows) = authors_reference();
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

/// Runs `prune` on the llama fixture; returns (exit code, stderr, output folder).
fn prune_cli(tag: &str, args: &[&str]) -> (i32, String, PathBuf) {
    prune_fixture("llama", tag, args)
}

/// Runs `prune` on fixture `fixture`; returns (exit code, stderr, output folder).
fn prune_fixture(fixture: &str, tag: &str, args: &[&str]) -> (i32, String, PathBuf) {
    let out = std::env::temp_dir().join(format!("twossp-baselines-{}-{tag}", std::process::id()));
    let model = common::fixtures().join(fixture);
    let text = common::fixtures().join("text/sample.txt");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args([
            "prune",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args([
            "--calib",
            text.to_str().unwrap(),
            "--seq-len",
            "64",
            "--samples",
            "4",
        ])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.code().unwrap_or(-1), stderr, out)
}

#[test]
fn block_removal_methods_write_verified_models_and_refuse_impossible_budgets() {
    let evopress_settings = [
        "--evo-initial",
        "8",
        "--evo-offspring",
        "4",
        "--evo-generations",
        "2",
        "--evo-initial-tokens",
        "64",
        "--evo-selection-tokens",
        "64,128",
    ];
    for method in ["shortgpt", "window", "sleb", "blockpruner", "evopress"] {
        let mut args = vec!["--method", method, "--sparsity", "0.25"];
        if method == "evopress" {
            args.extend(evopress_settings);
        }
        let (code, err, out) = prune_cli(method, &args);
        assert_eq!(code, 0, "{err}");
        let report = common::reference_json_file(&out.join("pruning_report.json"));
        assert_eq!(report["method"], method);
        assert!(
            report["verification"]["identical"].as_bool().unwrap(),
            "{report}"
        );
        let list =
            |key: &str| -> Vec<usize> { serde_json::from_value(report[key].clone()).unwrap() };
        let (attention, mlp) = (list("removed_attention"), list("removed_mlp"));
        let config = twossp_engine::config::ModelConfig::from_dir(&out).unwrap();
        let n = config.blocks.len();
        assert_eq!(attention.len(), blocks_to_remove(0.25, n).unwrap());
        assert_eq!(mlp.len(), attention.len());
        if method == "evopress" {
            let selections = report["evopress"]["selections"].as_array().unwrap();
            assert_eq!(
                selections.len(),
                1 + 2 * 2,
                "initial + 2 steps x 2 generations"
            );
            let best = &selections.last().unwrap()["survivors"][0];
            assert_eq!(best["attention"], report["removed_attention"]);
            assert_eq!(best["mlp"], report["removed_mlp"]);
        }
        if !["blockpruner", "evopress"].contains(&method) {
            assert_eq!(attention, list("removed_blocks"), "{method}");
            assert_eq!(mlp, attention, "{method}");
        }
        for (i, block) in config.blocks.iter().enumerate() {
            assert_eq!(
                block.attention.is_none(),
                attention.contains(&i),
                "{method} block {i}"
            );
            assert_eq!(block.ffn_width == 0, mlp.contains(&i), "{method} block {i}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    let (code, err, out) = prune_cli("too-many", &["--method", "window", "--sparsity", "0.99"]);
    assert_ne!(code, 0);
    assert!(err.contains("a whole-block method needs"), "{err}");
    assert!(!out.exists(), "nothing may be written");
    let (code, err, out) = prune_cli("sleb-ends", &["--method", "sleb", "--sparsity", "0.5"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("SLEB never removes the first or the last block"),
        "{err}"
    );
    assert!(!out.exists(), "nothing may be written");
    let (code, err, out) = prune_cli(
        "bp-decilm",
        &[
            "--method",
            "blockpruner",
            "--sparsity",
            "0.25",
            "--format",
            "decilm",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("only --format hf expresses"), "{err}");
    assert!(!out.exists(), "nothing may be written");
    let (code, err, out) = prune_cli(
        "evo-initial",
        &[
            "--method",
            "evopress",
            "--sparsity",
            "0.25",
            "--evo-initial-tokens",
            "64",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("exceeds the 9 distinct candidates"), "{err}");
    assert!(!out.exists(), "nothing may be written");
    let (code, err, out) = prune_cli(
        "evo-tokens",
        &[
            &["--method", "evopress", "--sparsity", "0.25"],
            &evopress_settings[..8],
            &["--evo-selection-tokens", "64,4096"],
        ]
        .concat(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("needs 2 to 256 calibration tokens"), "{err}");
    assert!(!out.exists(), "nothing may be written");
    let (code, err, _) = prune_cli("unknown", &["--method", "sleb2", "--sparsity", "0.25"]);
    assert_ne!(code, 0);
    assert!(err.contains("sleb2"), "{err}");
}

#[test]
fn slicegpt_keeps_the_signal_and_perplexity_the_authors_code_keeps() {
    use twossp_engine::model::Model;
    use twossp_engine::prune::slicegpt::{sliced_width, slicegpt};
    let (reference, model_dir, windows) = authors_reference();
    let want = &reference["methods"]["slicegpt"];
    let pick = |key: &str| -> Vec<&[u32]> {
        let ids: Vec<usize> = serde_json::from_value(want[key].clone()).unwrap();
        ids.iter().map(|&i| windows[i].as_slice()).collect()
    };
    let calibration = pick("calibration_windows");
    let mut model = Model::load(&model_dir).unwrap();
    let sparsity = reference["sparsity"].as_f64().unwrap();
    let width = sliced_width(sparsity, model.config.hidden).unwrap();
    assert_eq!(width as u64, want["sliced_dim"].as_u64().unwrap());
    let run = slicegpt(&mut model, &calibration, width).unwrap();

    // The same shapes: parameter counts to the unit.
    assert_eq!(
        model.params_main(),
        want["params_main_after"].as_u64().unwrap()
    );
    assert_eq!(
        model.params_total(),
        want["params_total_after"].as_u64().unwrap()
    );

    // The quantity SliceGPT optimises: the share of each site's signal the kept directions hold.
    let sites = want["explained_variance"].as_array().unwrap();
    assert_eq!(run.sites.len(), sites.len());
    let mut worst = 0f64;
    for (got, want) in run.sites.iter().zip(sites) {
        assert_eq!(got.site, want["site"].as_str().unwrap());
        assert_eq!(got.kept_dims as u64, want["kept_dims"].as_u64().unwrap());
        let lost = |kept: f64| 1.0 - kept;
        let (g, w) = (
            lost(got.fraction_kept),
            lost(want["fraction_kept"].as_f64().unwrap()),
        );
        if w > 0.0 {
            worst = worst.max((g - w).abs() / w);
        }
    }
    let ppl = model.perplexity(&calibration, "ppl").unwrap();
    let rel =
        |g: f64, key: &str| (g - want[key].as_f64().unwrap()).abs() / want[key].as_f64().unwrap();
    println!(
        "slicegpt: discarded signal within {worst:.2e} (relative) at {} sites; ppl {ppl:.4} (authors {})",
        sites.len(),
        want["ppl_calibration_windows"],
    );
    assert!(worst < 1e-4, "discarded signal differs by {worst}");
    assert!(rel(ppl, "ppl_calibration_windows") < 1e-4);
}

#[test]
fn slicegpt_writes_verified_models_of_every_family_it_can_slice_and_refuses_the_rest() {
    use twossp_engine::engine::Engine;
    for family in ["llama", "llama_tied", "qwen2", "qwen3", "phi3", "mistral"] {
        let (code, err, out) = prune_fixture(
            family,
            &format!("slicegpt-{family}"),
            &["--method", "slicegpt", "--sparsity", "0.25"],
        );
        assert_eq!(code, 0, "{family}: {err}");
        let report = common::reference_json_file(&out.join("pruning_report.json"));
        assert!(
            report["verification"]["identical"].as_bool().unwrap(),
            "{family}: {report}"
        );
        let model = twossp_engine::model::Model::load(&out).unwrap();
        let hidden = model.config.hidden;
        let width = report["sliced_width"].as_u64().unwrap() as usize;
        assert_eq!(width, (hidden * 3 / 4) / 8 * 8, "{family}");
        let widths = &model.config.slicing.as_ref().unwrap().widths;
        assert!(
            widths[..widths.len() - 1].iter().all(|&w| w == width),
            "{family}: {widths:?}"
        );
        assert_eq!(widths.last(), Some(&hidden));
        assert_eq!(
            model.params_main(),
            report["params_main_after"].as_u64().unwrap()
        );
        // A sliced model refuses to be pruned again, by any method, before anything is written.
        for method in ["slicegpt", "2ssp", "shortgpt"] {
            let again = out.with_extension(method);
            let run = std::process::Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
                .args(["prune", "--method", method, "--sparsity", "0.25", "--model"])
                .arg(&out)
                .arg("--out")
                .arg(&again)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&run.stderr);
            assert!(
                !run.status.success() && err.contains("sliced by SliceGPT"),
                "{method}: {err}"
            );
            assert!(!again.exists());
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    // More calibration tokens than memory holds: refused before loading anything.
    let huge = std::process::Command::new(env!("CARGO_BIN_EXE_twossp-engine"))
        .args([
            "prune",
            "--method",
            "slicegpt",
            "--sparsity",
            "0.25",
            "--samples",
            "1000000000000",
        ])
        .arg("--model")
        .arg(common::fixtures().join("llama"))
        .arg("--out")
        .arg(std::env::temp_dir().join(format!("twossp-slicegpt-huge-{}", std::process::id())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&huge.stderr);
    assert!(
        !huge.status.success() && err.contains("memory available"),
        "{err}"
    );
    let refusals: [(&str, &[&str], &str); 3] = [
        ("gemma3", &["--sparsity", "0.25"], "post-norms"),
        ("llama", &["--sparsity", "0.95"], "leaves SliceGPT no width"),
        (
            "llama",
            &["--sparsity", "0.25", "--format", "gguf"],
            "--format hf",
        ),
    ];
    for (fixture, args, message) in refusals {
        let mut all = vec!["--method", "slicegpt"];
        all.extend(args);
        let (code, err, out) = prune_fixture(fixture, "slicegpt-refused", &all);
        assert!(
            code != 0 && err.contains(message),
            "{fixture} {args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
}
