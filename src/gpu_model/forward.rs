//! The forward pass on the GPU: the same steps as `model::forward`, each a kernel of `kernels/`.
//! The residual stream stays f32; GEMM inputs are bf16.

use super::{GpuAttention, GpuFfn, GpuMatrix, GpuModel};
use crate::backend::cpu::ops::RopeTable;
use crate::backend::cuda::kernels::{
    self, attention_partial_len, AttentionArgs, Epilogue, Matmul, Norm, QkvRope,
};
use crate::backend::cuda::GpuBuffer;
use crate::config::rope::RopeSpec;
use crate::engine::SubModule;
use anyhow::{bail, Result};

/// Most key splits decoding attention may use (its scratch is sized for this many).
const ATTENTION_SPLITS: usize = 32;

/// Logit bytes computed at once when scoring (rows of the LM head per chunk follow from the vocab).
const LOGIT_CHUNK_BYTES: usize = 256 << 20;

/// Device cos/sin tables of one RoPE spec.
struct GpuRope {
    spec: RopeSpec,
    cos: GpuBuffer<f32>,
    sin: GpuBuffer<f32>,
    n_freq: usize,
}

/// Activation buffers for up to `capacity` tokens, sized for the model they were made for.
pub struct GpuWorkspace {
    capacity: usize,
    positions: usize,
    ids: GpuBuffer<u32>,
    /// Residual stream `[capacity, hidden]` (f32).
    pub x: GpuBuffer<f32>,
    normed: GpuBuffer<u16>,
    qkv: GpuBuffer<u16>,
    q: GpuBuffer<u16>,
    attn: GpuBuffer<u16>,
    act: GpuBuffer<u16>,
    branch: GpuBuffer<f32>,
    k: GpuBuffer<u16>,
    v: GpuBuffer<u16>,
    logits: GpuBuffer<f32>,
    logit_rows: usize,
    nll: GpuBuffer<f32>,
    partial: GpuBuffer<f32>,
    ropes: Vec<GpuRope>,
}

/// Keys and values of every attention block for incremental decoding (bf16, `[capacity, kv_dim]`).
pub struct GpuKvCache {
    layers: Vec<Option<(GpuBuffer<u16>, GpuBuffer<u16>)>>,
    /// Positions filled.
    pub len: usize,
    capacity: usize,
}

impl GpuKvCache {
    /// An empty cache for up to `capacity` positions.
    pub fn new(model: &GpuModel, capacity: usize) -> Result<Self> {
        let layers = model
            .blocks
            .iter()
            .map(|b| {
                b.attention
                    .as_ref()
                    .map(|a| {
                        Ok((
                            model.gpu.zeros(capacity * a.spec.kv_dim())?,
                            model.gpu.zeros(capacity * a.spec.kv_dim())?,
                        ))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            len: 0,
            capacity,
        })
    }

    /// Device bytes held.
    pub fn device_bytes(&self) -> u64 {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| 2 * (k.len() + v.len()) as u64)
            .sum()
    }
}

impl GpuWorkspace {
    /// Buffers for `model` and windows of up to `capacity` tokens, RoPE tables up to `positions`.
    pub fn new(model: &GpuModel, capacity: usize, positions: usize) -> Result<Self> {
        let gpu = &model.gpu;
        let cfg = &model.config;
        let attn_specs: Vec<_> = cfg
            .blocks
            .iter()
            .filter_map(|b| b.attention.as_ref())
            .collect();
        let max_q = attn_specs.iter().map(|a| a.q_dim()).max().unwrap_or(8);
        let max_kv = attn_specs.iter().map(|a| a.kv_dim()).max().unwrap_or(8);
        let max_heads = attn_specs.iter().map(|a| a.n_heads).max().unwrap_or(1);
        let max_head_dim = attn_specs.iter().map(|a| a.head_dim).max().unwrap_or(8);
        let max_act = model
            .blocks
            .iter()
            .filter_map(|b| b.ffn.as_ref())
            .map(|f| f.padded)
            .max()
            .unwrap_or(8);
        let logit_rows = (LOGIT_CHUNK_BYTES / (4 * cfg.vocab)).clamp(1, capacity.max(1));
        let mut ropes: Vec<GpuRope> = Vec::new();
        for a in &attn_specs {
            if ropes.iter().any(|r| r.spec == a.rope) {
                continue;
            }
            let table = RopeTable::new(&a.rope.inv_freq(), positions);
            ropes.push(GpuRope {
                spec: a.rope.clone(),
                cos: gpu.upload(&table.cos)?,
                sin: gpu.upload(&table.sin)?,
                n_freq: table.n_freq,
            });
        }
        let sandwich = cfg.arch.sandwich_norms;
        Ok(Self {
            capacity,
            positions,
            ids: gpu.zeros(capacity)?,
            x: gpu.zeros(capacity * cfg.hidden)?,
            normed: gpu.zeros(capacity * cfg.hidden)?,
            qkv: gpu.zeros(capacity * (max_q + 2 * max_kv))?,
            q: gpu.zeros(capacity * max_q)?,
            attn: gpu.zeros(capacity * max_q)?,
            act: gpu.zeros(capacity * max_act)?,
            branch: gpu.zeros(if sandwich { capacity * cfg.hidden } else { 1 })?,
            k: gpu.zeros(capacity * max_kv)?,
            v: gpu.zeros(capacity * max_kv)?,
            logits: gpu.zeros(logit_rows * cfg.vocab)?,
            logit_rows,
            nll: gpu.zeros(capacity)?,
            partial: gpu.zeros(attention_partial_len(
                ATTENTION_SPLITS,
                capacity,
                max_heads,
                max_head_dim,
            ))?,
            ropes,
        })
    }
}

/// Stage-1 statistics on the device: per block, the sum over samples of each neuron's L2 norm over
/// the sample's tokens (f64), plus the scratch the gated GEMM writes its partial sums to.
pub struct FfnStats {
    partial: GpuBuffer<f32>,
    ld: usize,
    /// Per block, padded width (1 for blocks without an FFN).
    pub scores: Vec<GpuBuffer<f64>>,
}

impl FfnStats {
    /// Zero scores for every FFN of `model`, for samples of up to `max_tokens` tokens.
    pub fn new(model: &GpuModel, max_tokens: usize) -> Result<Self> {
        let widths: Vec<usize> = model
            .blocks
            .iter()
            .map(|b| b.ffn.as_ref().map_or(1, |f| f.padded))
            .collect();
        let ld = widths.iter().copied().max().unwrap_or(1);
        Ok(Self {
            partial: model.gpu.zeros(kernels::sumsq_rows(max_tokens) * ld)?,
            ld,
            scores: widths
                .iter()
                .map(|&w| model.gpu.zeros(w))
                .collect::<Result<_>>()?,
        })
    }
}

/// Where a block's attention reads and appends keys and values.
struct KvTarget {
    k: u64,
    v: u64,
    /// Positions already cached (the new tokens start here).
    first: usize,
}

impl GpuModel {
    /// Writes the embeddings of `ids` into the residual stream.
    pub fn embed(&self, ws: &mut GpuWorkspace, ids: &[u32]) -> Result<()> {
        let (gpu, cfg) = (&self.gpu, &self.config);
        if ids.is_empty() || ids.len() > ws.capacity {
            bail!(
                "{} tokens do not fit a workspace of {}",
                ids.len(),
                ws.capacity
            );
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= cfg.vocab) {
            bail!(
                "token id {bad} is outside the vocabulary of {} tokens",
                cfg.vocab
            );
        }
        gpu.write(ids, &mut ws.ids)?;
        let scale = if cfg.arch.embed_scaled {
            (cfg.hidden as f32).sqrt()
        } else {
            1.0
        };
        kernels::embed(
            gpu,
            gpu.ptr(&ws.ids, 0),
            gpu.ptr(&self.embed.data, 0),
            ids.len(),
            cfg.hidden,
            scale,
            gpu.ptr(&ws.x, 0),
        )
    }

    /// Runs blocks `range` over the first `n` rows of the residual stream. With a cache, the rows
    /// continue its sequence; with `stats`, every FFN adds its neurons' L2 norms over the `n` tokens.
    pub fn run_blocks(
        &self,
        ws: &mut GpuWorkspace,
        n: usize,
        range: std::ops::Range<usize>,
        mut cache: Option<&mut GpuKvCache>,
        stats: Option<&FfnStats>,
        bypass: Option<(SubModule, usize)>,
    ) -> Result<()> {
        let first = cache.as_ref().map_or(0, |c| c.len);
        if first + n > ws.positions || cache.as_ref().is_some_and(|c| first + n > c.capacity) {
            bail!(
                "{} positions exceed the workspace ({}) or cache",
                first + n,
                ws.positions
            );
        }
        for i in range {
            let block = &self.blocks[i];
            let attention =
                SubModule::Attention.unless_bypassed(block.attention.as_ref(), i, bypass);
            let ffn = SubModule::Mlp.unless_bypassed(block.ffn.as_ref(), i, bypass);
            if let Some(att) = attention {
                let kv = match cache.as_mut() {
                    Some(c) => {
                        let (k, v) = c.layers[i].as_ref().expect("cache matches the model");
                        KvTarget {
                            k: self.gpu.ptr(k, 0),
                            v: self.gpu.ptr(v, 0),
                            first,
                        }
                    }
                    None => KvTarget {
                        k: self.gpu.ptr(&ws.k, 0),
                        v: self.gpu.ptr(&ws.v, 0),
                        first: 0,
                    },
                };
                self.attention_forward(att, ws, n, &kv)?;
            }
            if let Some(ffn) = ffn {
                self.ffn_forward(ffn, ws, n, stats.map(|s| (s, i)))?;
            }
        }
        if let Some(c) = cache {
            c.len += n;
        }
        Ok(())
    }

    fn norm(&self, weight: &GpuBuffer<f32>) -> Norm {
        Norm {
            weight: self.gpu.ptr(weight, 0),
            offset: self.config.arch.norm_offset,
            eps: self.config.norm_eps,
        }
    }

    fn optional_ptr(&self, b: &Option<GpuBuffer<f32>>) -> u64 {
        b.as_ref().map_or(0, |b| self.gpu.ptr(b, 0))
    }

    /// `A[n, k] . W^T` with the given epilogue, `A` a bf16 workspace buffer.
    fn project(
        &self,
        a: &GpuBuffer<u16>,
        w: &GpuMatrix,
        n: usize,
        out_features: usize,
        ep: Epilogue,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let mm = Matmul {
            a: gpu.ptr(a, 0),
            lda: w.cols,
            w: gpu.ptr(&w.data, 0),
            ldw: w.cols,
            m: n,
            n: out_features,
            k: w.cols,
        };
        kernels::matmul(gpu, &mm, ep)
    }

    /// `x += [post_norm](branch)` where the branch is `A . W^T + bias`.
    fn residual_projection(
        &self,
        ws: &GpuWorkspace,
        a: &GpuBuffer<u16>,
        w: &GpuMatrix,
        bias: &Option<GpuBuffer<f32>>,
        post_norm: &Option<GpuBuffer<f32>>,
        n: usize,
    ) -> Result<()> {
        let (gpu, hidden) = (&self.gpu, self.config.hidden);
        let bias = self.optional_ptr(bias);
        match post_norm {
            None => self.project(
                a,
                w,
                n,
                hidden,
                Epilogue::add_f32(gpu.ptr(&ws.x, 0), hidden).with_bias(bias),
            ),
            Some(pn) => {
                self.project(
                    a,
                    w,
                    n,
                    hidden,
                    Epilogue::store_f32(gpu.ptr(&ws.branch, 0), hidden).with_bias(bias),
                )?;
                kernels::add_rmsnorm(
                    gpu,
                    gpu.ptr(&ws.x, 0),
                    gpu.ptr(&ws.branch, 0),
                    self.norm(pn),
                    n,
                    hidden,
                )
            }
        }
    }

    fn attention_forward(
        &self,
        att: &GpuAttention,
        ws: &mut GpuWorkspace,
        n: usize,
        kv: &KvTarget,
    ) -> Result<()> {
        let (gpu, hidden, spec) = (&self.gpu, self.config.hidden, &att.spec);
        kernels::rmsnorm_bf16(
            gpu,
            gpu.ptr(&ws.x, 0),
            self.norm(&att.norm),
            n,
            hidden,
            gpu.ptr(&ws.normed, 0),
        )?;
        let qkv_ep = Epilogue::store_bf16(gpu.ptr(&ws.qkv, 0), att.qkv.rows)
            .with_bias(self.optional_ptr(&att.qkv_bias));
        self.project(&ws.normed, &att.qkv, n, att.qkv.rows, qkv_ep)?;
        let rope = ws
            .ropes
            .iter()
            .find(|r| r.spec == spec.rope)
            .expect("workspace has every RoPE table");
        kernels::qkv_rope(
            gpu,
            &QkvRope {
                qkv: gpu.ptr(&ws.qkv, 0),
                tokens: n,
                n_heads: spec.n_heads,
                n_kv_heads: spec.n_kv_heads,
                head_dim: spec.head_dim,
                n_freq: rope.n_freq,
                cos: gpu.ptr(&rope.cos, 0),
                sin: gpu.ptr(&rope.sin, 0),
                q_norm: self.optional_ptr(&att.q_norm),
                k_norm: self.optional_ptr(&att.k_norm),
                norm_offset: self.config.arch.norm_offset,
                eps: self.config.norm_eps,
                first: kv.first,
                q_out: gpu.ptr(&ws.q, 0),
                k_cache: kv.k,
                v_cache: kv.v,
            },
        )?;
        kernels::attention(
            gpu,
            &AttentionArgs {
                q: gpu.ptr(&ws.q, 0),
                k: kv.k,
                v: kv.v,
                out: gpu.ptr(&ws.attn, 0),
                queries: n,
                keys: kv.first + n,
                n_heads: spec.n_heads,
                n_kv_heads: spec.n_kv_heads,
                head_dim: spec.head_dim,
                scale: spec.scale,
                window: spec.window,
                partial: Some((gpu.ptr(&ws.partial, 0), ws.partial.len())),
            },
        )?;
        self.residual_projection(ws, &ws.attn, &att.o, &att.o_bias, &att.post_norm, n)
    }

    fn ffn_forward(
        &self,
        ffn: &GpuFfn,
        ws: &mut GpuWorkspace,
        n: usize,
        stats: Option<(&FfnStats, usize)>,
    ) -> Result<()> {
        let (gpu, hidden) = (&self.gpu, self.config.hidden);
        kernels::rmsnorm_bf16(
            gpu,
            gpu.ptr(&ws.x, 0),
            self.norm(&ffn.norm),
            n,
            hidden,
            gpu.ptr(&ws.normed, 0),
        )?;
        let ep = Epilogue::gated(
            gpu.ptr(&ws.act, 0),
            ffn.padded,
            self.config.activation,
            ffn.padded,
        )
        .with_bias(self.optional_ptr(&ffn.gate_up_bias));
        match stats {
            None => self.project(&ws.normed, &ffn.gate_up, n, ffn.padded, ep)?,
            Some((stats, block)) => {
                let partial = gpu.ptr(&stats.partial, 0);
                let ep = ep.with_sumsq(partial, stats.ld);
                self.project(&ws.normed, &ffn.gate_up, n, ffn.padded, ep)?;
                let scores = gpu.ptr(&stats.scores[block], 0);
                let rows = kernels::sumsq_rows(n);
                kernels::accumulate_sqrt(gpu, partial, rows, stats.ld, scores, ffn.padded)?;
            }
        }
        self.residual_projection(ws, &ws.act, &ffn.down, &ffn.down_bias, &ffn.post_norm, n)
    }

    /// f32 logits of residual-stream rows `first..first + rows` into `ws.logits` (final norm, then
    /// the LM head; the soft cap is left to the caller).
    fn head_logits(&self, ws: &GpuWorkspace, first: usize, rows: usize) -> Result<()> {
        let (gpu, vocab, hidden) = (&self.gpu, self.config.vocab, self.config.hidden);
        let normed = gpu.ptr(&ws.normed, first * hidden);
        let x = gpu.ptr(&ws.x, first * hidden);
        kernels::rmsnorm_bf16(gpu, x, self.norm(&self.final_norm), rows, hidden, normed)?;
        let mm = Matmul {
            a: normed,
            lda: hidden,
            w: gpu.ptr(&self.head().data, 0),
            ldw: hidden,
            m: rows,
            n: vocab,
            k: hidden,
        };
        kernels::matmul(gpu, &mm, Epilogue::store_f32(gpu.ptr(&ws.logits, 0), vocab))
    }

    /// NLL of `targets[k]` under the logits of row `first_row + k` of the residual stream after
    /// the last block.
    pub fn target_nlls_from_hidden(
        &self,
        ws: &mut GpuWorkspace,
        first_row: usize,
        targets: &[u32],
    ) -> Result<Vec<f32>> {
        let (gpu, vocab) = (&self.gpu, self.config.vocab);
        let n_pred = targets.len();
        if n_pred == 0 {
            return Ok(Vec::new());
        }
        gpu.write(targets, &mut ws.ids)?;
        for start in (0..n_pred).step_by(ws.logit_rows) {
            let rows = ws.logit_rows.min(n_pred - start);
            self.head_logits(ws, first_row + start, rows)?;
            let targets = gpu.ptr(&ws.ids, start);
            kernels::row_nll(
                gpu,
                gpu.ptr(&ws.logits, 0),
                targets,
                rows,
                vocab,
                self.config.final_logit_softcap,
                gpu.ptr(&ws.nll, start),
            )?;
        }
        gpu.download_prefix(&ws.nll, n_pred)
    }

    /// Runs `ids` after the positions already in `cache` and returns the logits of the last one.
    pub fn forward_cached(
        &self,
        ws: &mut GpuWorkspace,
        ids: &[u32],
        cache: &mut GpuKvCache,
    ) -> Result<Vec<f32>> {
        self.forward_cached_hidden(ws, ids, cache)?;
        self.rows_logits(ws, ids.len() - 1, 1)
    }

    /// Runs `ids` after the positions already in `cache`, leaving their residual stream in `ws`.
    pub fn forward_cached_hidden(
        &self,
        ws: &mut GpuWorkspace,
        ids: &[u32],
        cache: &mut GpuKvCache,
    ) -> Result<()> {
        self.embed(ws, ids)?;
        self.run_blocks(ws, ids.len(), 0..self.blocks.len(), Some(cache), None, None)
    }

    /// Logits `[rows, vocab]` of rows `first..first + rows` of the residual stream, on the host
    /// (after the final norm, the LM head and the soft cap).
    pub fn rows_logits(
        &self,
        ws: &mut GpuWorkspace,
        first: usize,
        rows: usize,
    ) -> Result<Vec<f32>> {
        let vocab = self.config.vocab;
        let mut logits = Vec::with_capacity(rows * vocab);
        for start in (0..rows).step_by(ws.logit_rows) {
            let chunk = ws.logit_rows.min(rows - start);
            self.head_logits(ws, first + start, chunk)?;
            logits.extend(self.gpu.download_prefix(&ws.logits, chunk * vocab)?);
        }
        if let Some(cap) = self.config.final_logit_softcap {
            crate::backend::cpu::ops::soft_cap(&mut logits, cap);
        }
        Ok(logits)
    }
}
