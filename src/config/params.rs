//! Parameter counts from the configuration alone: the one counter every backend, the pruning
//! budget (Eq. 5) and the reports use. Both models keep their config in step with pruning, so
//! these count the weights a model holds.

use super::{AttentionSpec, BlockSpec, ModelConfig};

impl ModelConfig {
    /// One attention submodule's projections, biases and q/k norms (not its pre/post norms).
    pub fn attention_params(&self, attention: &AttentionSpec) -> u64 {
        let (h, arch) = (self.hidden as u64, &self.arch);
        let (q, kv) = (attention.q_dim() as u64, attention.kv_dim() as u64);
        let qkv_bias = if arch.qkv_bias { q + 2 * kv } else { 0 };
        let o_bias = if arch.o_bias { h } else { 0 };
        let qk_norm = if arch.qk_norm {
            2 * attention.head_dim as u64
        } else {
            0
        };
        h * (q + 2 * kv) + q * h + qkv_bias + o_bias + qk_norm
    }

    /// An FFN of `width` neurons: gate, up and down projections and their biases (not its norms).
    pub fn ffn_params(&self, width: usize) -> u64 {
        let (h, w) = (self.hidden as u64, width as u64);
        let bias = if self.arch.mlp_bias { 2 * w + h } else { 0 };
        3 * h * w + bias
    }

    /// The norm vectors a submodule carries: its pre-norm and, with sandwich norms, its post-norm.
    pub fn submodule_norm_params(&self) -> u64 {
        let per_norm = self.hidden as u64;
        if self.arch.sandwich_norms {
            2 * per_norm
        } else {
            per_norm
        }
    }

    /// One block: the submodules it still has, each with its norms.
    pub fn block_params(&self, block: &BlockSpec) -> u64 {
        let norms = self.submodule_norm_params();
        let attention = block
            .attention
            .as_ref()
            .map_or(0, |a| self.attention_params(a) + norms);
        let ffn = match block.ffn_width {
            0 => 0,
            width => self.ffn_params(width) + norms,
        };
        attention + ffn
    }

    /// Parameters of all decoder blocks (P_main).
    pub fn params_main(&self) -> u64 {
        if let Some(slicing) = &self.slicing {
            return self.sliced_params_main(slicing);
        }
        self.blocks.iter().map(|b| self.block_params(b)).sum()
    }

    /// All parameters: blocks, embeddings, final norm and an untied LM head.
    pub fn params_total(&self) -> u64 {
        if let Some(slicing) = &self.slicing {
            return self.sliced_params_total(slicing);
        }
        let matrix = (self.vocab * self.hidden) as u64;
        let head = if self.tie_embeddings { 0 } else { matrix };
        self.params_main() + matrix + head + self.hidden as u64
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ModelConfig;
    use crate::weights::TensorStore;
    use std::path::Path;

    /// Elements of every tensor the checkpoint stores (HF wrote these files; a tied head is not stored).
    fn stored_elements(dir: &Path) -> u64 {
        let store = TensorStore::open(dir).unwrap();
        let names: Vec<String> = store.names().map(str::to_string).collect();
        names
            .iter()
            .map(|n| store.shape(n).unwrap().iter().product::<usize>() as u64)
            .sum()
    }

    #[test]
    fn the_config_counts_what_hf_stored_for_every_dense_fixture() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut checked = 0;
        for entry in std::fs::read_dir(&fixtures).unwrap() {
            let dir = entry.unwrap().path();
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            // hetero_*: removed submodules are stored as zeros or padding the loader drops.
            if !dir.join("reference.json").exists() || name.starts_with("hetero") {
                continue;
            }
            let config = ModelConfig::from_dir(&dir).unwrap();
            assert_eq!(config.params_total(), stored_elements(&dir), "{name}");
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} fixtures checked");
    }

    #[test]
    fn pruned_blocks_count_only_what_they_keep() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3");
        let mut config = ModelConfig::from_dir(&dir).unwrap();
        let before = config.params_main();
        let attention = config.blocks[1].attention.clone().unwrap();
        let (h, width) = (config.hidden as u64, config.blocks[0].ffn_width);
        config.blocks[1].attention = None;
        config.blocks[0].ffn_width = width - 3;
        // Gemma-3 has sandwich norms: a removed attention takes its pre- and post-norm along.
        let removed = config.attention_params(&attention) + 2 * h + 3 * 3 * h;
        assert_eq!(config.params_main(), before - removed);
        config.blocks[0].ffn_width = 0;
        assert_eq!(
            config.block_params(&config.blocks[0]),
            config.attention_params(&attention) + 2 * h
        );
    }
}
