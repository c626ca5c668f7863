//! Structural edits used by pruning: keep a subset of FFN neurons, remove an attention submodule.

use super::{Ffn, Linear, Model};

impl Linear {
    /// Keeps only the output rows `rows` (in order), with their biases.
    fn select_rows(&self, rows: &[usize]) -> Linear {
        let k = self.in_dim;
        let weight = self.weight.select_rows(rows, k);
        let bias = self
            .bias
            .as_ref()
            .map(|b| rows.iter().map(|&r| b[r]).collect());
        Linear {
            weight,
            bias,
            out_dim: rows.len(),
            in_dim: k,
        }
    }

    /// Keeps only the input columns `cols` (in order).
    fn select_cols(&self, cols: &[usize]) -> Linear {
        let k = self.in_dim;
        let weight = self.weight.select_cols(self.out_dim, k, cols);
        Linear {
            weight,
            bias: self.bias.clone(),
            out_dim: self.out_dim,
            in_dim: cols.len(),
        }
    }
}

impl Ffn {
    /// Keeps neurons `kept` (ascending original indices): gate and up rows, down columns.
    pub fn keep_neurons(&mut self, kept: &[usize]) {
        let width = self.width();
        let rows: Vec<usize> = kept
            .iter()
            .copied()
            .chain(kept.iter().map(|&j| width + j))
            .collect();
        self.gate_up = self.gate_up.select_rows(&rows);
        self.down = self.down.select_cols(kept);
    }
}

impl Model {
    /// Keeps, in every block, the FFN neurons listed for it (ascending original indices).
    pub fn keep_ffn_neurons(&mut self, kept: &[Vec<usize>]) {
        for ((block, spec), kept) in self
            .blocks
            .iter_mut()
            .zip(&mut self.config.blocks)
            .zip(kept)
        {
            if let Some(ffn) = &mut block.ffn {
                ffn.keep_neurons(kept);
                spec.ffn_width = kept.len();
            }
        }
    }

    /// Removes block `i`'s attention submodule for good (the block becomes `h + ffn(h)`).
    pub fn remove_attention(&mut self, i: usize) {
        self.blocks[i].attention = None;
        self.config.blocks[i].attention = None;
    }
}
