//! Key/value cache for incremental decoding; blocks without attention keep nothing.

use super::Model;

/// Cached keys and values of every attention block, `[positions, kv_dim]` each.
pub struct KvCache {
    layers: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    positions: usize,
}

/// Mutable view of one block's cache.
pub struct LayerCache<'a> {
    /// Keys of all previous positions (RoPE applied).
    pub keys: &'a mut Vec<f32>,
    /// Values of all previous positions.
    pub values: &'a mut Vec<f32>,
}

impl KvCache {
    /// An empty cache for `model`, with room reserved for `capacity` positions.
    pub fn new(model: &Model, capacity: usize) -> Self {
        let layers = model
            .blocks
            .iter()
            .map(|b| {
                b.attention.as_ref().map(|a| {
                    let len = capacity * a.spec.kv_dim();
                    (Vec::with_capacity(len), Vec::with_capacity(len))
                })
            })
            .collect();
        Self {
            layers,
            positions: 0,
        }
    }

    /// Counts `n` more positions as held (after a forward pass appended their keys and values).
    pub fn advance(&mut self, n: usize) {
        self.positions += n;
    }

    /// Forgets every position from `positions` on.
    pub fn truncate(&mut self, positions: usize) {
        if positions >= self.positions {
            return;
        }
        for (keys, values) in self.layers.iter_mut().flatten() {
            let kv_dim = keys.len() / self.positions;
            keys.truncate(positions * kv_dim);
            values.truncate(positions * kv_dim);
        }
        self.positions = positions;
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.positions
    }

    /// True when nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.positions == 0
    }

    /// The cache of block `i` (which must have attention).
    pub fn layer(&mut self, i: usize) -> LayerCache<'_> {
        let (keys, values) = self.layers[i].as_mut().expect("block has attention");
        LayerCache { keys, values }
    }

    /// Bytes a cache of `positions` positions takes for `model` (f32 keys and values).
    pub fn bytes_for(model: &Model, positions: usize) -> u64 {
        model
            .blocks
            .iter()
            .filter_map(|b| b.attention.as_ref())
            .map(|a| (2 * positions * a.spec.kv_dim() * 4) as u64)
            .sum()
    }
}

impl Model {
    /// Feeds `ids` after the positions already in `cache` and returns the logits of the last one.
    pub fn forward_cached(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        ws: &mut super::Workspace,
    ) -> anyhow::Result<Vec<f32>> {
        let mut x = self.embed_tokens(ids)?;
        self.run_blocks_cached(&mut x, 0..self.blocks.len(), ws, None, Some(cache), None);
        cache.advance(ids.len());
        let hidden = self.config.hidden;
        let last = &mut x[(ids.len() - 1) * hidden..];
        self.apply_final_norm(last);
        Ok(self.head_logits(last))
    }
}
