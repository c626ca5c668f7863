//! The forward pass on the CPU backend: embeddings, blocks, final norm, LM head and NLL.

use super::kv_cache::{KvCache, LayerCache};
use super::{Attention, Ffn, Linear, Model};
use crate::backend::cpu::attention::{causal_attention, causal_attention_bf16, AttentionShape};
use crate::backend::cpu::computes_in_bf16;
use crate::backend::cpu::ops::{self, RopeTable};
use crate::config::rope::RopeSpec;
use crate::config::ModelConfig;
use crate::engine::SubModule;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Rows of logits are computed in whole multiples of this many rows (the last `n % 64` rows apart),
/// so results do not depend on how many rows one LM-head pass takes (see [`head_passes`]).
const HEAD_ROW_UNIT: usize = 64;
/// Bytes of logits one LM-head pass may hold: the `[T, vocab]` matrix never exists whole.
const HEAD_PASS_BYTES: usize = 64 << 20;
/// Most rows per LM-head pass. Each pass packs (and for 16-bit weights widens) the whole head
/// once; at 64 rows that packing took as long as the product itself on SmolLM2's 49k-entry head.
const HEAD_ROWS_MAX: usize = 512;

/// Reusable scratch buffers, so a forward pass does not reallocate per block.
#[derive(Default)]
pub struct Workspace {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    shortcut_in: Vec<f32>,
    shortcut_out: Vec<f32>,
    ropes: Vec<(RopeSpec, RopeTable)>,
}

impl Model {
    /// Bytes one forward pass of `tokens` tokens holds beside the weights, at most: the residual
    /// stream, the workspace's buffers for the widest block, and one LM-head pass of logits.
    pub(crate) fn pass_bytes(&self, tokens: usize) -> u64 {
        let blocks = &self.config.blocks;
        let ffn = blocks.iter().map(|b| b.ffn_width).max().unwrap_or(0);
        let attention = blocks
            .iter()
            .filter_map(|b| b.attention.as_ref())
            .map(|a| 2 * (a.q_dim() + 2 * a.kv_dim()) + a.q_dim())
            .max()
            .unwrap_or(0);
        let floats_per_token = 5 * self.config.hidden + attention + 3 * ffn;
        (tokens * floats_per_token * std::mem::size_of::<f32>() + HEAD_PASS_BYTES) as u64
    }
}

/// Resizes `buf` to `len` without caring about its contents.
fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

impl Workspace {
    /// RoPE table for `spec` covering positions `0..n`, built once and reused.
    fn rope(&mut self, spec: &RopeSpec, n: usize) -> usize {
        if let Some(i) = self
            .ropes
            .iter()
            .position(|(s, t)| s == spec && t.cos.len() >= n * t.n_freq)
        {
            return i;
        }
        self.ropes.retain(|(s, _)| s != spec);
        // Grow geometrically so token-by-token decoding rebuilds the table rarely.
        let len = n.next_power_of_two().max(64);
        self.ropes
            .push((spec.clone(), RopeTable::new(&spec.inv_freq(), len)));
        self.ropes.len() - 1
    }
}

/// Called with the FFN intermediate activation `[n_tokens, width]` of a block (for pruning statistics).
pub type FfnObserver<'a> = dyn FnMut(usize, &[f32]) + 'a;

impl Model {
    /// Embedding rows of `ids` (scaled for Gemma), `[n, hidden]`; a SliceGPT model's narrower
    /// rows fill the first columns and the rest are zero.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let hidden = self.config.hidden;
        let width = self.config.embedding_width();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab) {
            bail!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.config.vocab
            );
        }
        let scale = self
            .config
            .arch
            .embed_scaled
            .then(|| (hidden as f32).sqrt());
        let mut x = vec![0f32; ids.len() * hidden];
        x.par_chunks_mut(hidden)
            .zip(ids.par_iter())
            .for_each(|(row, &id)| {
                let start = id as usize * width;
                self.embed
                    .widen_range_into(start..start + width, &mut row[..width]);
                if let Some(s) = scale {
                    row.iter_mut().for_each(|v| *v *= s);
                }
            });
        Ok(x)
    }

    /// Runs blocks `range` over the residual stream `x` (`[n, hidden]`, positions 0..n).
    pub fn run_blocks(
        &self,
        x: &mut [f32],
        range: std::ops::Range<usize>,
        ws: &mut Workspace,
        observer: Option<&mut FfnObserver<'_>>,
    ) {
        self.run_blocks_cached(x, range, ws, observer, None, None);
    }

    /// Like [`Model::run_blocks`], continuing the sequence held in `cache` when one is given and
    /// skipping the submodule `bypass` names as if it were removed.
    pub fn run_blocks_cached(
        &self,
        x: &mut [f32],
        range: std::ops::Range<usize>,
        ws: &mut Workspace,
        mut observer: Option<&mut FfnObserver<'_>>,
        mut cache: Option<&mut KvCache>,
        bypass: Option<(SubModule, usize)>,
    ) {
        let n = x.len() / self.config.hidden;
        for i in range {
            let block = &self.blocks[i];
            let attention =
                SubModule::Attention.unless_bypassed(block.attention.as_ref(), i, bypass);
            let ffn = SubModule::Mlp.unless_bypassed(block.ffn.as_ref(), i, bypass);
            if let Some(att) = attention {
                let layer_cache = cache.as_mut().map(|c| c.layer(i));
                attention_forward(&self.config, att, x, n, ws, layer_cache);
            }
            if let Some(ffn) = ffn {
                let obs = observer.as_mut().map(|o| &mut **o as &mut FfnObserver<'_>);
                ffn_forward(&self.config, ffn, x, n, ws, i, obs);
            }
        }
    }

    /// Final hidden states (after the last norm) of a token sequence.
    pub fn final_hidden(&self, ids: &[u32], ws: &mut Workspace) -> Result<Vec<f32>> {
        let mut x = self.embed_tokens(ids)?;
        self.run_blocks(&mut x, 0..self.blocks.len(), ws, None);
        self.apply_final_norm(&mut x);
        Ok(x)
    }

    /// Applies the final RMSNorm to a residual stream in place.
    pub fn apply_final_norm(&self, x: &mut [f32]) {
        if let Some(slicing) = &self.config.slicing {
            let hidden = self.config.hidden;
            let rows = x.to_vec();
            ops::sliced_rms_norm_into(&rows, hidden, x, hidden, hidden, slicing.rms_eps);
            return;
        }
        ops::rms_norm_rows(
            x,
            &self.final_norm,
            self.config.arch.norm_offset,
            self.config.norm_eps,
        );
    }

    /// Logits `[rows, vocab]` of final hidden states `[rows, hidden]` (LM head, then the soft cap).
    pub(crate) fn head_rows(&self, hidden_states: &[f32], out: &mut [f32]) {
        let (hidden, vocab) = (self.config.hidden, self.config.vocab);
        let rows = hidden_states.len() / hidden;
        self.head_weight()
            .linear(hidden_states, None, out, rows, vocab, hidden);
        if let Some(cap) = self.config.final_logit_softcap {
            ops::soft_cap(out, cap);
        }
    }

    /// Logits of one final hidden state.
    pub fn head_logits(&self, hidden_state: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.config.vocab];
        self.head_rows(hidden_state, &mut out);
        out
    }

    /// Full logits `[n, vocab]` of a token sequence.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut ws = Workspace::default();
        let h = self.final_hidden(ids, &mut ws)?;
        let mut out = vec![0f32; ids.len() * self.config.vocab];
        self.head_rows(&h, &mut out);
        Ok(out)
    }

    /// Sum of next-token NLLs over `n - 1` predicted positions, from final hidden states.
    pub fn nll_from_hidden(&self, hidden_states: &[f32], ids: &[u32]) -> f64 {
        self.token_nlls(hidden_states, ids)
            .iter()
            .map(|&v| v as f64)
            .sum()
    }

    /// Next-token NLL of `ids[r + 1]` at every row `r` of the final-normed hidden states.
    pub fn token_nlls(&self, hidden_states: &[f32], ids: &[u32]) -> Vec<f32> {
        self.target_nlls(hidden_states, ids.get(1..).unwrap_or_default())
    }

    /// NLL of `targets[r]` under the logits of row `r` of the final-normed hidden states.
    pub fn target_nlls(&self, hidden_states: &[f32], targets: &[u32]) -> Vec<f32> {
        let (hidden, vocab) = (self.config.hidden, self.config.vocab);
        let n_pred = targets.len();
        let bf16 = computes_in_bf16(self.precision());
        let passes = head_passes(n_pred, vocab);
        let most = passes.iter().map(|&(_, rows)| rows).max().unwrap_or(0);
        let mut logits = vec![0f32; most * vocab];
        let mut nlls = vec![0f32; n_pred];
        for (start, rows) in passes {
            let out = &mut logits[..rows * vocab];
            self.head_rows(&hidden_states[start * hidden..(start + rows) * hidden], out);
            let span = start..start + rows;
            ops::nll_rows(out, vocab, &targets[span.clone()], &mut nlls[span], bf16);
        }
        nlls
    }

    /// Sum of next-token NLLs of one window and the number of predicted tokens.
    pub fn window_nll(&self, ids: &[u32], ws: &mut Workspace) -> Result<(f64, usize)> {
        let h = self.final_hidden(ids, ws)?;
        Ok((self.nll_from_hidden(&h, ids), ids.len().saturating_sub(1)))
    }
}

/// The LM-head passes `(first row, rows)` over `n` rows of a `vocab`-wide head: as many whole
/// [`HEAD_ROW_UNIT`]s per pass as [`HEAD_PASS_BYTES`] allow (at most [`HEAD_ROWS_MAX`] rows), then
/// the last `n % HEAD_ROW_UNIT` rows alone. A row's logits depend only on whether its pass has more
/// than the GEMM's GEMV threshold of rows, and every pass but that last one has at least a unit:
/// so each row's result is the same as with one unit per pass.
fn head_passes(n: usize, vocab: usize) -> Vec<(usize, usize)> {
    let fit = HEAD_PASS_BYTES / (vocab.max(1) * std::mem::size_of::<f32>());
    let per_pass = (fit / HEAD_ROW_UNIT).clamp(1, HEAD_ROWS_MAX / HEAD_ROW_UNIT) * HEAD_ROW_UNIT;
    let body = n - n % HEAD_ROW_UNIT;
    let mut passes: Vec<_> = (0..body)
        .step_by(per_pass)
        .map(|start| (start, per_pass.min(body - start)))
        .collect();
    if body < n {
        passes.push((body, n - body));
    }
    passes
}

/// `x += [post_norm](o_proj(attention(rope(qkv(norm(x))))))`; with a cache, `x` continues the cached sequence.
fn attention_forward(
    cfg: &ModelConfig,
    att: &Attention,
    x: &mut [f32],
    n: usize,
    ws: &mut Workspace,
    cache: Option<LayerCache<'_>>,
) {
    let (hidden, eps, offset) = (cfg.hidden, cfg.norm_eps, cfg.arch.norm_offset);
    let spec = &att.spec;
    let (q_dim, kv_dim) = (spec.q_dim(), spec.kv_dim());
    let qkv_dim = q_dim + 2 * kv_dim;
    let first = cache.as_ref().map_or(0, |c| c.keys.len() / kv_dim);
    let rope_idx = ws.rope(&spec.rope, first + n);
    let Workspace {
        normed,
        qkv,
        q,
        k,
        v,
        attn,
        proj,
        shortcut_in,
        shortcut_out,
        ropes,
        ..
    } = ws;

    let normed = pre_norm(
        cfg,
        x,
        normed,
        &att.norm,
        att.shortcut.as_ref(),
        att.qkv.in_dim,
    );
    let qkv = sized(qkv, n * qkv_dim);
    att.qkv.apply(normed, qkv, n);
    let (q, k, v) = (
        sized(q, n * q_dim),
        sized(k, n * kv_dim),
        sized(v, n * kv_dim),
    );
    q.par_chunks_mut(q_dim)
        .zip(k.par_chunks_mut(kv_dim))
        .zip(v.par_chunks_mut(kv_dim))
        .zip(qkv.par_chunks(qkv_dim))
        .for_each(|(((q, k), v), row)| {
            q.copy_from_slice(&row[..q_dim]);
            k.copy_from_slice(&row[q_dim..q_dim + kv_dim]);
            v.copy_from_slice(&row[q_dim + kv_dim..]);
            if let Some(w) = &att.q_norm {
                q.chunks_exact_mut(spec.head_dim)
                    .for_each(|h| ops::rms_norm_row(h, w, offset, eps));
            }
            if let Some(w) = &att.k_norm {
                k.chunks_exact_mut(spec.head_dim)
                    .for_each(|h| ops::rms_norm_row(h, w, offset, eps));
            }
        });
    let table = &ropes[rope_idx].1;
    ops::apply_rope(q, table, first, spec.n_heads, spec.head_dim);
    ops::apply_rope(k, table, first, spec.n_kv_heads, spec.head_dim);
    let (keys, values): (&[f32], &[f32]) = match cache {
        Some(c) => {
            c.keys.extend_from_slice(k);
            c.values.extend_from_slice(v);
            (c.keys, c.values)
        }
        None => (k, v),
    };

    let attn = sized(attn, n * q_dim);
    let shape = AttentionShape {
        n_queries: n,
        n_keys: first + n,
        n_heads: spec.n_heads,
        n_kv_heads: spec.n_kv_heads,
        head_dim: spec.head_dim,
        scale: spec.scale,
        window: spec.window,
    };
    if att.o.weight.precision() == crate::weights::Precision::Bf16 {
        causal_attention_bf16(q, keys, values, attn, &shape);
    } else {
        causal_attention(q, keys, values, attn, &shape);
    }
    let proj = sized(proj, n * att.o.out_dim);
    att.o.apply(attn, proj, n);
    match &att.shortcut {
        Some(s) => add_sliced_residual(x, hidden, s, proj, shortcut_in, shortcut_out),
        None => add_residual(x, proj, att.post_norm.as_deref(), offset, eps),
    }
}

/// `x += [post_norm](down(act(gate(h)) * up(h)))` with `h = norm(x)`.
fn ffn_forward(
    cfg: &ModelConfig,
    ffn: &Ffn,
    x: &mut [f32],
    n: usize,
    ws: &mut Workspace,
    block: usize,
    observer: Option<&mut FfnObserver<'_>>,
) {
    let (hidden, eps, offset) = (cfg.hidden, cfg.norm_eps, cfg.arch.norm_offset);
    let width = ffn.width();
    let Workspace {
        normed,
        gate_up,
        act,
        proj,
        shortcut_in,
        shortcut_out,
        ..
    } = ws;
    let normed = pre_norm(
        cfg,
        x,
        normed,
        &ffn.norm,
        ffn.shortcut.as_ref(),
        ffn.gate_up.in_dim,
    );
    let gate_up = sized(gate_up, n * 2 * width);
    ffn.gate_up.apply(normed, gate_up, n);
    let act = sized(act, n * width);
    let vector_exp = computes_in_bf16(ffn.down.weight.precision());
    ops::gated_activation(gate_up, act, width, cfg.activation, vector_exp);
    if let Some(obs) = observer {
        obs(block, act);
    }
    let proj = sized(proj, n * ffn.down.out_dim);
    ffn.down.apply(act, proj, n);
    match &ffn.shortcut {
        Some(s) => add_sliced_residual(x, hidden, s, proj, shortcut_in, shortcut_out),
        None => add_residual(x, proj, ffn.post_norm.as_deref(), offset, eps),
    }
}

/// A submodule's pre-norm of the residual stream `x` into `normed`: its RMSNorm, or for a
/// SliceGPT submodule (one with a `shortcut`) the weightless RMSN of the first `width` columns.
fn pre_norm<'a>(
    cfg: &ModelConfig,
    x: &[f32],
    normed: &'a mut Vec<f32>,
    weight: &[f32],
    shortcut: Option<&Linear>,
    width: usize,
) -> &'a mut [f32] {
    let hidden = cfg.hidden;
    let normed = sized(normed, x.len() / hidden * width);
    match shortcut {
        Some(_) => {
            let eps = cfg.slicing.as_ref().map_or(cfg.norm_eps, |s| s.rms_eps);
            ops::sliced_rms_norm_into(x, hidden, normed, width, hidden, eps);
        }
        None => ops::rms_norm_into(x, normed, weight, cfg.arch.norm_offset, cfg.norm_eps),
    }
    normed
}

/// SliceGPT's residual add: `x[:, :out] = x[:, :in] · shortcutᵀ + branch`, and the columns past
/// `out` (of the `hidden`-wide rows) zero.
fn add_sliced_residual(
    x: &mut [f32],
    hidden: usize,
    shortcut: &Linear,
    branch: &[f32],
    gathered: &mut Vec<f32>,
    mapped: &mut Vec<f32>,
) {
    let (w_in, w_out) = (shortcut.in_dim, shortcut.out_dim);
    let n = x.len() / hidden;
    let gathered = sized(gathered, n * w_in);
    gathered
        .par_chunks_mut(w_in)
        .zip(x.par_chunks(hidden))
        .for_each(|(g, row)| g.copy_from_slice(&row[..w_in]));
    let mapped = sized(mapped, n * w_out);
    shortcut.apply(gathered, mapped, n);
    x.par_chunks_mut(hidden)
        .zip(mapped.par_chunks(w_out).zip(branch.par_chunks(w_out)))
        .for_each(|(row, (m, b))| {
            let (head, tail) = row.split_at_mut(w_out);
            head.iter_mut()
                .zip(m.iter().zip(b))
                .for_each(|(h, (m, b))| *h = m + b);
            tail.fill(0.0);
        });
}

/// `x += [norm](branch)`: the residual add of a submodule's output, with Gemma's optional post-norm.
fn add_residual(
    x: &mut [f32],
    branch: &mut [f32],
    post_norm: Option<&[f32]>,
    offset: f32,
    eps: f32,
) {
    if let Some(w) = post_norm {
        ops::rms_norm_rows(branch, w, offset, eps);
    }
    ops::add_in_place(x, branch);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_passes_cover_rows_in_whole_units_then_the_tail() {
        for (n, vocab) in [(2047, 49_152), (200, 317), (64, 317), (5, 262_144), (0, 10)] {
            let passes = head_passes(n, vocab);
            let mut next = 0;
            for (i, &(start, rows)) in passes.iter().enumerate() {
                assert_eq!(start, next, "n={n}: passes must be consecutive");
                assert!(rows > 0 && rows <= HEAD_ROWS_MAX);
                let last = i + 1 == passes.len();
                assert!(rows.is_multiple_of(HEAD_ROW_UNIT) || (last && rows == n % HEAD_ROW_UNIT));
                assert!(rows * vocab * 4 <= HEAD_PASS_BYTES.max(HEAD_ROW_UNIT * vocab * 4));
                next += rows;
            }
            assert_eq!(next, n);
        }
        // SmolLM2's head: 320 rows per pass (63 MB of logits), the last 63 rows alone.
        assert_eq!(head_passes(2047, 49_152)[..2], [(0, 320), (320, 320)]);
        assert_eq!(head_passes(2047, 49_152).last(), Some(&(1984, 63)));
    }

    #[test]
    fn nlls_equal_those_of_one_unit_per_pass_bit_for_bit() {
        // 200 rows = three units and an 8-row tail, which takes the GEMM's GEMV path: the passes
        // must keep exactly the rows that path sees.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
        let model = Model::load(&dir).unwrap();
        let (hidden, vocab) = (model.config.hidden, model.config.vocab);
        let n = 200;
        let ids: Vec<u32> = (0..=n as u32)
            .map(|i| (i * 37 + 11) % vocab as u32)
            .collect();
        let mut ws = Workspace::default();
        let h = model.final_hidden(&ids[..n], &mut ws).unwrap();
        let got = model.target_nlls(&h, &ids[1..]);
        let mut want = Vec::new();
        for start in (0..n).step_by(HEAD_ROW_UNIT) {
            let rows = HEAD_ROW_UNIT.min(n - start);
            let mut logits = vec![0f32; rows * vocab];
            model.head_rows(&h[start * hidden..(start + rows) * hidden], &mut logits);
            for (r, row) in logits.chunks(vocab).enumerate() {
                want.push(ops::nll(row, ids[start + r + 1] as usize));
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }
}
