//! The paper's Eq. 5: how many attention submodules to remove and how many FFN neurons to keep.

use crate::config::ModelConfig;
use anyhow::{bail, Result};
use serde::Serialize;

/// Parameter counts of a dense, homogeneous model (the quantities of SPEC-2SSP.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Decoder blocks.
    pub n_layers: usize,
    /// FFN width of every block.
    pub d_ff: usize,
    /// Parameters of one attention submodule (projections, biases, q/k norms).
    pub p_attn: u64,
    /// Parameters of one FFN (gate, up, down and biases).
    pub p_ffn: u64,
    /// Parameters of all decoder blocks, norms included.
    pub p_main: u64,
}

impl ParamCounts {
    /// Counts from a config alone; the model must be dense (every block with attention, same FFN width).
    pub fn of(config: &ModelConfig) -> Result<Self> {
        let first = config
            .blocks
            .first()
            .ok_or_else(|| anyhow::anyhow!("model has no blocks"))?;
        let d_ff = first.ffn_width;
        let att = match &first.attention {
            Some(a) => a,
            None => bail!("2SSP needs a dense model, but block 0 has no attention"),
        };
        if config
            .blocks
            .iter()
            .any(|b| b.attention.is_none() || b.ffn_width != d_ff)
        {
            bail!("2SSP needs a dense model: this one is already pruned (blocks differ)");
        }
        let p_attn = config.attention_params(att);
        let p_ffn = config.ffn_params(d_ff);
        let p_main = config.params_main();
        Ok(Self {
            n_layers: config.blocks.len(),
            d_ff,
            p_attn,
            p_ffn,
            p_main,
        })
    }

    /// Parameters of one FFN neuron (a gate row, an up row, a down column, and biases).
    pub fn per_neuron(&self) -> u64 {
        self.p_ffn / self.d_ff as u64
    }

    /// P_main after removing `n_attn` attention submodules and keeping `keep` neurons per block, as the reference counts it.
    pub fn main_after(&self, n_attn: usize, keep: usize) -> u64 {
        let removed_ffn = self.n_layers as u64 * (self.d_ff - keep) as u64 * self.per_neuron();
        self.p_main - n_attn as u64 * self.p_attn - removed_ffn
    }
}

/// How many attention submodules to remove.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttentionBudget {
    /// Derived from the balance exponent `alpha` (the paper's default 1.5).
    Alpha(f64),
    /// Fixed by the user.
    Fixed(usize),
}

/// The decisions the balance fixes before any data is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PruningPlan {
    /// Attention submodules to remove in stage 2.
    pub n_attn: usize,
    /// FFN neurons kept in every block by stage 1.
    pub keep: usize,
    /// Parameters to remove, `round(s * P_main)`.
    pub target: u64,
    /// P_main after pruning (reference count).
    pub main_after: u64,
}

/// Python's `round`: half to even.
fn round_py(x: f64) -> f64 {
    x.round_ties_even()
}

/// Solves Eq. 5 exactly as the reference implementation does; `multiple_of` rounds the FFN width.
pub fn plan(
    counts: &ParamCounts,
    sparsity: f64,
    budget: AttentionBudget,
    multiple_of: Option<usize>,
) -> Result<PruningPlan> {
    if !(sparsity > 0.0 && sparsity < 1.0) {
        bail!("sparsity must be in (0, 1), got {sparsity}");
    }
    let l = counts.n_layers as f64;
    let target = round_py(sparsity * counts.p_main as f64) as u64;
    let n_attn = match budget {
        AttentionBudget::Alpha(alpha) if alpha > 0.0 => {
            let exponent = (counts.p_ffn as f64 / counts.p_attn as f64) / alpha;
            round_py(l * sparsity.powf(exponent)) as usize
        }
        AttentionBudget::Alpha(alpha) => bail!("alpha must be positive, got {alpha}"),
        AttentionBudget::Fixed(n) => n,
    };
    let exact = exact_plan(counts, target, n_attn)?;
    let Some(multiple) = multiple_of else {
        return Ok(exact);
    };
    if multiple == 0 {
        bail!("--ffn-multiple-of must be positive");
    }
    // Re-solve the balance around n_attn so the achieved sparsity stays closest to the target.
    let lo = n_attn.saturating_sub(1);
    let hi = (n_attn + 1).min(counts.n_layers);
    let mut best: Option<(u64, usize, PruningPlan)> = None;
    for n in lo..=hi {
        let Ok(p) = exact_plan(counts, target, n) else {
            continue;
        };
        let down = p.keep / multiple * multiple;
        for keep in [down, down + multiple] {
            if keep == 0 || keep > counts.d_ff {
                continue;
            }
            let main_after = counts.main_after(n, keep);
            let error = (counts.p_main - main_after).abs_diff(target);
            let cand = PruningPlan {
                n_attn: n,
                keep,
                target,
                main_after,
            };
            let better = match &best {
                None => true,
                Some((e, bn, _)) => {
                    error < *e || (error == *e && n.abs_diff(n_attn) < bn.abs_diff(n_attn))
                }
            };
            if better {
                best = Some((error, n, cand));
            }
        }
    }
    best.map(|b| b.2).ok_or_else(|| {
        anyhow::anyhow!("no FFN width that is a multiple of {multiple} fits this sparsity")
    })
}

/// Eq. 5 for a given number of removed attention submodules.
fn exact_plan(counts: &ParamCounts, target: u64, n_attn: usize) -> Result<PruningPlan> {
    if n_attn > counts.n_layers {
        bail!(
            "cannot remove {n_attn} attention submodules from {} blocks",
            counts.n_layers
        );
    }
    let attn_removed = n_attn as u64 * counts.p_attn;
    if attn_removed > target {
        bail!(
            "infeasible balance: removing {n_attn} attention submodules ({attn_removed} params) exceeds the target of {target}"
        );
    }
    if attn_removed + counts.n_layers as u64 * counts.p_ffn < target {
        bail!("infeasible balance: even removing every FFN neuron and {n_attn} attention submodules cannot reach {target} params");
    }
    let ffn_prune_per_block = round_py((target - attn_removed) as f64 / counts.n_layers as f64);
    let keep =
        round_py(counts.d_ff as f64 * (1.0 - ffn_prune_per_block / counts.p_ffn as f64)) as usize;
    Ok(PruningPlan {
        n_attn,
        keep,
        target,
        main_after: counts.main_after(n_attn, keep),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use serde_json::json;

    fn config(v: serde_json::Value) -> ModelConfig {
        ModelConfig::from_hf(v).unwrap()
    }

    /// Public HF configs (the fields that matter) of the models in SPEC-2SSP.md's table.
    fn llama2_7b() -> ModelConfig {
        config(
            json!({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "rms_norm_eps": 1e-5, "vocab_size": 32000, "rope_theta": 10000.0}),
        )
    }
    fn mistral_7b_v03() -> ModelConfig {
        config(
            json!({"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5, "vocab_size": 32768, "rope_theta": 1000000.0, "sliding_window": null}),
        )
    }
    fn qwen25_7b() -> ModelConfig {
        config(
            json!({"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "rms_norm_eps": 1e-6, "vocab_size": 152064, "rope_theta": 1000000.0,
            "use_sliding_window": false, "sliding_window": 131072, "max_window_layers": 28}),
        )
    }
    fn phi3_medium() -> ModelConfig {
        config(
            json!({"model_type": "phi3", "hidden_size": 5120, "intermediate_size": 17920,
            "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 10,
            "rms_norm_eps": 1e-5, "vocab_size": 32064, "rope_theta": 10000.0, "sliding_window": 2047}),
        )
    }
    fn smollm2_135m() -> ModelConfig {
        config(
            json!({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rms_norm_eps": 1e-5, "vocab_size": 49152, "rope_theta": 100000.0, "tie_word_embeddings": true}),
        )
    }

    fn check(
        cfg: &ModelConfig,
        p_attn: u64,
        p_ffn: u64,
        p_main: u64,
        rows: &[(f64, usize, usize, u64)],
    ) {
        let counts = ParamCounts::of(cfg).unwrap();
        assert_eq!(
            (counts.p_attn, counts.p_ffn, counts.p_main),
            (p_attn, p_ffn, p_main)
        );
        for &(s, n_attn, keep, main_after) in rows {
            let p = plan(&counts, s, AttentionBudget::Alpha(1.5), None).unwrap();
            assert_eq!((p.n_attn, p.keep), (n_attn, keep), "s = {s}");
            if main_after > 0 {
                assert_eq!(p.main_after, main_after, "s = {s}");
            }
        }
    }

    #[test]
    fn spec_table_llama2_7b() {
        check(
            &llama2_7b(),
            67_108_864,
            135_266_304,
            6_476_267_520,
            &[
                (0.25, 5, 7744, 4_857_266_176),
                (0.375, 9, 6368, 4_047_765_504),
                (0.5, 13, 4992, 3_238_264_832),
            ],
        );
    }

    #[test]
    fn spec_table_mistral_7b() {
        check(
            &mistral_7b_v03(),
            41_943_040,
            176_160_768,
            6_979_584_000,
            &[
                (0.25, 1, 10005, 5_234_622_464),
                (0.375, 2, 7893, 4_362_207_232),
                (0.5, 5, 5994, 3_489_660_928),
            ],
        );
    }

    #[test]
    fn spec_table_qwen25_7b() {
        check(
            &qwen25_7b(),
            29_364_736,
            203_685_888,
            6_525_618_176,
            &[
                (0.25, 0, 13525, 4_894_195_712),
                (0.375, 0, 10816, 4_078_635_008),
                (0.5, 1, 8204, 3_262_912_000),
            ],
        );
    }

    #[test]
    fn spec_table_phi3_medium() {
        check(
            &phi3_medium(),
            65_536_000,
            275_251_200,
            13_631_897_600,
            &[
                (0.25, 1, 12480, 10_224_025_600),
                (0.375, 3, 9920, 8_520_089_600),
                (0.5, 6, 7466, 6_815_744_000),
            ],
        );
    }

    #[test]
    fn smollm2_135m_from_the_issue() {
        check(
            &smollm2_135m(),
            884_736,
            2_654_208,
            106_202_880,
            &[(0.25, 2, 1058, 0), (0.375, 4, 836, 0), (0.5, 8, 648, 0)],
        );
    }

    #[test]
    fn infeasible_and_out_of_range_are_refused() {
        let counts = ParamCounts::of(&smollm2_135m()).unwrap();
        assert!(plan(&counts, 0.0, AttentionBudget::Alpha(1.5), None).is_err());
        assert!(plan(&counts, 1.0, AttentionBudget::Alpha(1.5), None).is_err());
        let err = plan(&counts, 0.05, AttentionBudget::Fixed(30), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("infeasible balance"), "{err}");
    }

    #[test]
    fn rounded_width_stays_close_to_target() {
        let counts = ParamCounts::of(&llama2_7b()).unwrap();
        let exact = plan(&counts, 0.375, AttentionBudget::Alpha(1.5), None).unwrap();
        let rounded = plan(&counts, 0.375, AttentionBudget::Alpha(1.5), Some(256)).unwrap();
        assert_eq!(rounded.keep % 256, 0);
        let err = |p: &PruningPlan| (counts.p_main - p.main_after).abs_diff(p.target);
        // No worse than rounding the width alone with the same attention count.
        let naive_keep = (exact.keep + 128) / 256 * 256;
        let naive = PruningPlan {
            main_after: counts.main_after(exact.n_attn, naive_keep),
            keep: naive_keep,
            ..exact
        };
        assert!(err(&rounded) <= err(&naive));
    }
}
