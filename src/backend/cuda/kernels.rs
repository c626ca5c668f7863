//! Typed launchers for the kernels of `kernels/*.cu`. Buffers are passed as device addresses
//! ([`Gpu::ptr`]); each launcher checks the shape rules its kernel relies on.

use super::{Arg, Gpu};
use crate::config::Activation;
use anyhow::{bail, Result};

/// GEMM tile widths and their dynamic shared memory (mirrors the static_asserts in kernels/gemm.cu).
const GEMM_TILES: [(usize, u32); 2] = [(128, 61_440), (256, 92_160)];
/// Dynamic shared memory of the attention kernels per head dim (mirrors kernels/attention.cu).
const ATTENTION_SMEM: [(usize, u32); 3] = [(64, 46_080), (128, 87_040), (256, 168_960)];
/// Largest token count the GEMV path takes (GEMV_MAX_M in kernels/gemv.cu).
pub const GEMV_MAX_ROWS: usize = 4;
/// Largest head dim of `qkv_rope` (ROPE_MAX_HEAD_DIM).
const ROPE_MAX_HEAD_DIM: usize = 256;

/// Kernel names defined by each file of `kernels/`.
pub fn entry_points(file: &str) -> &'static [&'static str] {
    match file {
        "attention" => &[
            "attention_hd64",
            "attention_hd128",
            "attention_hd256",
            "attention_combine",
        ],
        "embedding" => &["embed_gather"],
        "gemm" => &["gemm_bf16_128", "gemm_bf16_256"],
        "gemv" => &["gemv_bf16"],
        "nll" => &["row_nll"],
        "prune" => &["gather_rows_bf16", "gather_cols_bf16", "accumulate_sqrt"],
        "rmsnorm" => &["rmsnorm_bf16", "add_rmsnorm"],
        "rope" => &["qkv_rope"],
        "synthetic" => &["fill_uniform_bf16", "fill_f32"],
        _ => &[],
    }
}

/// Raises the shared-memory limits of the kernels that need more than 48 KiB.
pub(crate) fn configure(gpu: &mut Gpu) {
    for (bn, bytes) in GEMM_TILES {
        gpu.allow_shared_memory(&format!("gemm_bf16_{bn}"), bytes);
    }
    for (hd, bytes) in ATTENTION_SMEM {
        gpu.allow_shared_memory(&format!("attention_hd{hd}"), bytes);
    }
}

/// The epilogue struct of kernels/common.cuh (same field order and sizes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Epilogue {
    kind: i32,
    act: i32,
    bias: u64,
    out: u64,
    ldo: i64,
    sumsq: u64,
    gate_offset: i64,
    sumsq_ld: i64,
}

unsafe impl cudarc::driver::DeviceRepr for Epilogue {}

impl Epilogue {
    /// `out_f32[m, n] = acc (+ bias)`.
    pub fn store_f32(out: u64, ldo: usize) -> Self {
        Self::new(0, out, ldo)
    }

    /// `out_bf16[m, n] = acc (+ bias)`.
    pub fn store_bf16(out: u64, ldo: usize) -> Self {
        Self::new(1, out, ldo)
    }

    /// `out_f32[m, n] += acc (+ bias)`: a fused residual add.
    pub fn add_f32(out: u64, ldo: usize) -> Self {
        Self::new(2, out, ldo)
    }

    /// `out_bf16[m, n] = act(gate) * up` where neuron n's up row is `gate_offset` rows after its gate row.
    pub fn gated(out: u64, ldo: usize, act: Activation, gate_offset: usize) -> Self {
        Self {
            act: match act {
                Activation::Silu => 0,
                Activation::GeluTanh => 1,
            },
            gate_offset: gate_offset as i64,
            ..Self::new(3, out, ldo)
        }
    }

    /// Adds a bias per weight row (device address of f32 values; 0 for none).
    pub fn with_bias(self, bias: u64) -> Self {
        Self { bias, ..self }
    }

    /// Gated only: writes per-neuron sums of squared activations to `partial` (f32 device address),
    /// one row of stride `ld` per 64-token slab ([`sumsq_rows`] rows), for [`accumulate_sqrt`].
    pub fn with_sumsq(self, partial: u64, ld: usize) -> Self {
        Self {
            sumsq: partial,
            sumsq_ld: ld as i64,
            ..self
        }
    }

    fn new(kind: i32, out: u64, ldo: usize) -> Self {
        Self {
            kind,
            act: 0,
            bias: 0,
            out,
            ldo: ldo as i64,
            sumsq: 0,
            gate_offset: 0,
            sumsq_ld: 0,
        }
    }

    fn is_gated(&self) -> bool {
        self.kind == 3
    }
}

/// A product `A[m, k] . W[n, k]^T` of bf16 operands given by device address and row stride.
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    /// Activation rows.
    pub a: u64,
    /// Row stride of `a` (elements).
    pub lda: usize,
    /// Weight rows (HF layout `[out, in]`).
    pub w: u64,
    /// Row stride of `w`.
    pub ldw: usize,
    /// Rows of `a` (tokens).
    pub m: usize,
    /// Output features (gated: neurons).
    pub n: usize,
    /// Reduction length.
    pub k: usize,
}

impl Matmul {
    fn check(&self) -> Result<()> {
        let aligned = [self.k, self.lda, self.ldw]
            .iter()
            .all(|v| v.is_multiple_of(8))
            && self.a.is_multiple_of(16)
            && self.w.is_multiple_of(16);
        if !aligned {
            bail!(
                "GEMM operands must be 16-byte aligned with K a multiple of 8 (k {}, lda {}, ldw {})",
                self.k,
                self.lda,
                self.ldw
            );
        }
        if self.m > i32::MAX as usize || self.n > i32::MAX as usize || self.k > i32::MAX as usize {
            bail!("GEMM shape too large");
        }
        Ok(())
    }

    fn args(&self, ep: Epilogue) -> [Arg; 8] {
        [
            Arg::Ptr(self.a),
            Arg::I64(self.lda as i64),
            Arg::Ptr(self.w),
            Arg::I64(self.ldw as i64),
            Arg::I32(self.m as i32),
            Arg::I32(self.n as i32),
            Arg::I32(self.k as i32),
            Arg::Epilogue(ep),
        ]
    }
}

/// `A . W^T` with `ep`, on the GEMV kernel for up to [`GEMV_MAX_ROWS`] tokens, else on tensor cores.
pub fn matmul(gpu: &Gpu, mm: &Matmul, ep: Epilogue) -> Result<()> {
    if mm.m <= GEMV_MAX_ROWS {
        gemv(gpu, mm, ep)
    } else {
        gemm(gpu, mm, ep)
    }
}

/// Width of the GEMM's block tile (columns of W per block; gated: half as many neurons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmTile {
    /// 128 x 128 blocks (warp tiles 64 x 32): more blocks for small problems.
    N128,
    /// 128 x 256 blocks (warp tiles 64 x 64): fewer shared-memory loads per MMA.
    N256,
}

impl GemmTile {
    /// The wide tile when it still gives every SM a block, else the narrow one;
    /// `TWOSSP_GEMM_TILE=128|256` forces one (for benchmarking).
    pub fn choose(gpu: &Gpu, mm: &Matmul, ep: &Epilogue) -> Self {
        Self::for_shape(gpu.sm_count(), mm, ep)
    }

    /// [`GemmTile::choose`] for a GPU with `sm_count` multiprocessors.
    fn for_shape(sm_count: usize, mm: &Matmul, ep: &Epilogue) -> Self {
        match std::env::var("TWOSSP_GEMM_TILE").as_deref() {
            Ok("128") => return GemmTile::N128,
            Ok("256") => return GemmTile::N256,
            _ => {}
        }
        let w_rows = if ep.is_gated() { 2 * mm.n } else { mm.n };
        let wide_blocks = w_rows.div_ceil(256) * mm.m.div_ceil(128);
        if wide_blocks >= sm_count {
            GemmTile::N256
        } else {
            GemmTile::N128
        }
    }

    fn columns(self) -> usize {
        match self {
            GemmTile::N128 => 128,
            GemmTile::N256 => 256,
        }
    }
}

/// Tensor-core GEMM with the tile chosen for the shape.
pub fn gemm(gpu: &Gpu, mm: &Matmul, ep: Epilogue) -> Result<()> {
    gemm_with_tile(gpu, mm, ep, GemmTile::choose(gpu, mm, &ep))
}

/// Tensor-core GEMM with a given tile width.
pub fn gemm_with_tile(gpu: &Gpu, mm: &Matmul, ep: Epilogue, tile: GemmTile) -> Result<()> {
    mm.check()?;
    let bn = tile.columns();
    let (_, smem) = GEMM_TILES
        .iter()
        .find(|(w, _)| *w == bn)
        .expect("tile listed");
    let cols = if ep.is_gated() { bn / 2 } else { bn };
    let grid = (mm.n.div_ceil(cols) as u32, mm.m.div_ceil(128) as u32, 1);
    gpu.launch(&format!("gemm_bf16_{bn}"), grid, 256, *smem, &mm.args(ep))
}

/// GEMV for at most [`GEMV_MAX_ROWS`] tokens (one warp per output row).
pub fn gemv(gpu: &Gpu, mm: &Matmul, ep: Epilogue) -> Result<()> {
    mm.check()?;
    if mm.m > GEMV_MAX_ROWS {
        bail!("GEMV takes at most {GEMV_MAX_ROWS} rows, got {}", mm.m);
    }
    let grid = (mm.n.div_ceil(8) as u32, 1, 1);
    gpu.launch("gemv_bf16", grid, 256, 0, &mm.args(ep))
}

/// `out_f32[t] = table_bf16[ids[t]] * scale`.
pub fn embed(
    gpu: &Gpu,
    ids: u64,
    table: u64,
    tokens: usize,
    hidden: usize,
    scale: f32,
    out: u64,
) -> Result<()> {
    if !hidden.is_multiple_of(8) || !table.is_multiple_of(16) || !out.is_multiple_of(16) {
        bail!(
            "embedding rows must be 16-byte aligned with hidden a multiple of 8 (hidden {hidden})"
        );
    }
    let args = [
        Arg::Ptr(ids),
        Arg::Ptr(table),
        Arg::I32(tokens as i32),
        Arg::I32(hidden as i32),
        Arg::F32(scale),
        Arg::Ptr(out),
    ];
    gpu.launch("embed_gather", (tokens as u32, 1, 1), 256, 0, &args)
}

/// An RMSNorm weight with its offset (Gemma: 1) and epsilon.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    /// f32 weights (device address).
    pub weight: u64,
    /// Added to every weight.
    pub offset: f32,
    /// Epsilon inside the square root.
    pub eps: f32,
}

/// `out_bf16[t] = rmsnorm(x[t])` for `tokens` rows of `hidden` f32.
pub fn rmsnorm_bf16(
    gpu: &Gpu,
    x: u64,
    norm: Norm,
    tokens: usize,
    hidden: usize,
    out: u64,
) -> Result<()> {
    check_norm_rows(hidden, &[x, norm.weight, out])?;
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(norm.weight),
        Arg::I32(tokens as i32),
        Arg::I32(hidden as i32),
        Arg::F32(norm.offset),
        Arg::F32(norm.eps),
        Arg::Ptr(out),
    ];
    gpu.launch("rmsnorm_bf16", (tokens as u32, 1, 1), 256, 0, &args)
}

/// `x[t] += rmsnorm(branch[t])` (Gemma-3's post-norms).
pub fn add_rmsnorm(
    gpu: &Gpu,
    x: u64,
    branch: u64,
    norm: Norm,
    tokens: usize,
    hidden: usize,
) -> Result<()> {
    check_norm_rows(hidden, &[x, branch, norm.weight])?;
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(branch),
        Arg::Ptr(norm.weight),
        Arg::I32(tokens as i32),
        Arg::I32(hidden as i32),
        Arg::F32(norm.offset),
        Arg::F32(norm.eps),
    ];
    gpu.launch("add_rmsnorm", (tokens as u32, 1, 1), 256, 0, &args)
}

/// The norm kernels use float4 accesses: hidden a multiple of 4, operands 16-byte aligned.
fn check_norm_rows(hidden: usize, addresses: &[u64]) -> Result<()> {
    if !hidden.is_multiple_of(4) || addresses.iter().any(|a| !a.is_multiple_of(16)) {
        bail!("RMSNorm rows must be 16-byte aligned with hidden a multiple of 4 (hidden {hidden})");
    }
    Ok(())
}

/// Inputs of [`qkv_rope`].
#[derive(Clone, Copy, Debug)]
pub struct QkvRope {
    /// bf16 `[tokens, q_dim + 2 kv_dim]` from the fused projection.
    pub qkv: u64,
    /// Tokens in this call.
    pub tokens: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dims per head.
    pub head_dim: usize,
    /// Rotated frequency pairs per head (head_dim / 2 unless partial).
    pub n_freq: usize,
    /// f32 `[positions, n_freq]` cos table.
    pub cos: u64,
    /// f32 `[positions, n_freq]` sin table.
    pub sin: u64,
    /// Per-head query norm (weights address, 0 for none), offset and eps shared with `k_norm`.
    pub q_norm: u64,
    /// Per-head key norm (0 for none).
    pub k_norm: u64,
    /// Norm weight offset.
    pub norm_offset: f32,
    /// Norm epsilon.
    pub eps: f32,
    /// Position of the first token (= cache rows already filled).
    pub first: usize,
    /// bf16 `[tokens, q_dim]` output.
    pub q_out: u64,
    /// bf16 `[capacity, kv_dim]` key cache.
    pub k_cache: u64,
    /// bf16 `[capacity, kv_dim]` value cache.
    pub v_cache: u64,
}

/// Splits q|k|v, applies the per-head norms and RoPE, appends k and v to the cache.
pub fn qkv_rope(gpu: &Gpu, p: &QkvRope) -> Result<()> {
    if p.head_dim > ROPE_MAX_HEAD_DIM || 2 * p.n_freq > p.head_dim {
        bail!(
            "head dim {} / rotary pairs {} not supported on the GPU",
            p.head_dim,
            p.n_freq
        );
    }
    let args = [
        Arg::Ptr(p.qkv),
        Arg::I32(p.tokens as i32),
        Arg::I32(p.n_heads as i32),
        Arg::I32(p.n_kv_heads as i32),
        Arg::I32(p.head_dim as i32),
        Arg::I32(p.n_freq as i32),
        Arg::Ptr(p.cos),
        Arg::Ptr(p.sin),
        Arg::Ptr(p.q_norm),
        Arg::Ptr(p.k_norm),
        Arg::F32(p.norm_offset),
        Arg::F32(p.eps),
        Arg::I32(p.first as i32),
        Arg::Ptr(p.q_out),
        Arg::Ptr(p.k_cache),
        Arg::Ptr(p.v_cache),
    ];
    let heads = (p.n_heads + 2 * p.n_kv_heads).min(32);
    gpu.launch(
        "qkv_rope",
        (p.tokens as u32, 1, 1),
        32 * heads as u32,
        0,
        &args,
    )
}

/// Inputs of [`attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttentionArgs {
    /// bf16 queries `[queries, n_heads * head_dim]`.
    pub q: u64,
    /// bf16 keys `[keys, n_kv_heads * head_dim]`.
    pub k: u64,
    /// bf16 values, same layout as keys.
    pub v: u64,
    /// bf16 output `[queries, n_heads * head_dim]`.
    pub out: u64,
    /// Queries: the last `queries` of the `keys` positions.
    pub queries: usize,
    /// Keys (cached positions including the queries).
    pub keys: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dims per head: 64, 128 or 256.
    pub head_dim: usize,
    /// Score scale.
    pub scale: f32,
    /// Sliding window (None: full causal).
    pub window: Option<usize>,
    /// f32 scratch for split-KV decoding (address, elements), or None: one block per 64 queries and head.
    pub partial: Option<(u64, usize)>,
}

/// f32 scratch that lets [`attention`] split the keys of `queries` tokens over up to `splits` blocks.
pub fn attention_partial_len(
    splits: usize,
    queries: usize,
    n_heads: usize,
    head_dim: usize,
) -> usize {
    splits * queries.min(64) * n_heads * (head_dim + 2)
}

/// Split-KV plan (tiles per split, splits) for few queries over many keys, when it helps and fits.
fn attention_split(sm_count: usize, p: &AttentionArgs) -> Option<(usize, usize)> {
    let (_, scratch_len) = p.partial?;
    if p.queries > 64 || std::env::var("TWOSSP_ATTENTION_SPLIT").is_ok_and(|v| v == "0") {
        return None;
    }
    // Same key range as the kernel's single query tile: [key_begin rounded down to a tile, keys).
    let key_begin = p
        .window
        .map_or(0, |w| (p.keys - p.queries + 1).saturating_sub(w));
    let n_tiles = (p.keys - key_begin / 64 * 64).div_ceil(64);
    let wanted = (2 * sm_count).div_ceil(p.n_heads).min(n_tiles);
    if wanted < 2 {
        return None;
    }
    let split_tiles = n_tiles.div_ceil(wanted);
    let splits = n_tiles.div_ceil(split_tiles);
    let fits = attention_partial_len(splits, p.queries, p.n_heads, p.head_dim) <= scratch_len;
    (splits >= 2 && fits).then_some((split_tiles, splits))
}

/// Causal GQA flash attention.
pub fn attention(gpu: &Gpu, p: &AttentionArgs) -> Result<()> {
    let Some(&(_, smem)) = ATTENTION_SMEM.iter().find(|(hd, _)| *hd == p.head_dim) else {
        bail!(
            "head dim {} is not supported on the GPU (64, 128 or 256)",
            p.head_dim
        );
    };
    if p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) || p.queries > p.keys {
        bail!("bad attention shape {p:?}");
    }
    if [p.q, p.k, p.v, p.out].iter().any(|a| !a.is_multiple_of(16)) {
        bail!("attention operands must be 16-byte aligned");
    }
    let q_dim = p.n_heads * p.head_dim;
    let split = attention_split(gpu.sm_count(), p);
    let (split_tiles, splits, scratch) = match (split, p.partial) {
        (Some((tiles, splits)), Some((scratch, _))) => (tiles, splits, scratch),
        _ => (0, 1, 0),
    };
    let args = [
        Arg::Ptr(p.q),
        Arg::I64(q_dim as i64),
        Arg::Ptr(p.k),
        Arg::Ptr(p.v),
        Arg::I64((p.n_kv_heads * p.head_dim) as i64),
        Arg::Ptr(p.out),
        Arg::I64(q_dim as i64),
        Arg::I32(p.queries as i32),
        Arg::I32(p.keys as i32),
        Arg::I32((p.n_heads / p.n_kv_heads) as i32),
        Arg::F32(p.scale),
        Arg::I32(p.window.map_or(0, |w| w as i32)),
        Arg::I32(split_tiles as i32),
        Arg::Ptr(scratch),
    ];
    let grid = (
        p.queries.div_ceil(64) as u32,
        p.n_heads as u32,
        splits as u32,
    );
    let kernel = format!("attention_hd{}", p.head_dim);
    gpu.launch(&kernel, grid, 128, smem, &args)?;
    if split_tiles == 0 {
        return Ok(());
    }
    let combine = [
        Arg::Ptr(scratch),
        Arg::I32(splits as i32),
        Arg::I32(p.queries as i32),
        Arg::I32(p.head_dim as i32),
        Arg::Ptr(p.out),
        Arg::I64(q_dim as i64),
    ];
    let grid = (p.queries as u32, p.n_heads as u32, 1);
    gpu.launch("attention_combine", grid, p.head_dim as u32, 0, &combine)
}

/// `nll[r] = logsumexp(cap(logits[r])) - cap(logits[r, targets[r]])` for f32 logits `[rows, vocab]`.
pub fn row_nll(
    gpu: &Gpu,
    logits: u64,
    targets: u64,
    rows: usize,
    vocab: usize,
    cap: Option<f32>,
    nll: u64,
) -> Result<()> {
    let args = [
        Arg::Ptr(logits),
        Arg::Ptr(targets),
        Arg::I32(rows as i32),
        Arg::I32(vocab as i32),
        Arg::F32(cap.unwrap_or(0.0)),
        Arg::Ptr(nll),
    ];
    gpu.launch("row_nll", (rows as u32, 1, 1), 512, 0, &args)
}

/// A bf16 gather by an i32 index list (device addresses, row strides in elements).
#[derive(Clone, Copy, Debug)]
pub struct Gather {
    /// Source matrix.
    pub src: u64,
    /// Source row stride.
    pub ld_src: usize,
    /// Indices (rows of `src` for [`gather_rows`], columns for [`gather_cols`]).
    pub idx: u64,
    /// Number of indices.
    pub n_idx: usize,
    /// Destination matrix.
    pub dst: u64,
    /// Destination row stride.
    pub ld_dst: usize,
}

impl Gather {
    fn args(&self, len: usize) -> [Arg; 7] {
        [
            Arg::Ptr(self.src),
            Arg::I64(self.ld_src as i64),
            Arg::Ptr(self.idx),
            Arg::I32(self.n_idx as i32),
            Arg::I32(len as i32),
            Arg::Ptr(self.dst),
            Arg::I64(self.ld_dst as i64),
        ]
    }
}

/// `dst[i, :cols] = src[idx[i], :cols]`.
pub fn gather_rows(gpu: &Gpu, g: &Gather, cols: usize) -> Result<()> {
    gpu.launch(
        "gather_rows_bf16",
        (g.n_idx as u32, 1, 1),
        256,
        0,
        &g.args(cols),
    )
}

/// `dst[r, i] = src[r, idx[i]]` for `rows` rows.
pub fn gather_cols(gpu: &Gpu, g: &Gather, rows: usize) -> Result<()> {
    gpu.launch(
        "gather_cols_bf16",
        (rows as u32, 1, 1),
        256,
        0,
        &g.args(rows),
    )
}

/// Rows of partial sums a gated product of `m` tokens writes through [`Epilogue::with_sumsq`]: one
/// per 64-token slab on the GEMM (slabs without tokens write nothing), one on the GEMV.
pub fn sumsq_rows(m: usize) -> usize {
    m.div_ceil(64).max(1)
}

/// `scores[j] += sqrt(sum over rows r of partial[r, j])` (f32 partials of stride `ld`, f64 scores),
/// summed in a fixed order: the same inputs give the same scores bit for bit.
pub fn accumulate_sqrt(
    gpu: &Gpu,
    partial: u64,
    rows: usize,
    ld: usize,
    scores: u64,
    n: usize,
) -> Result<()> {
    let args = [
        Arg::Ptr(partial),
        Arg::I32(rows as i32),
        Arg::I64(ld as i64),
        Arg::Ptr(scores),
        Arg::I32(n as i32),
    ];
    gpu.launch(
        "accumulate_sqrt",
        (n.div_ceil(256) as u32, 1, 1),
        256,
        0,
        &args,
    )
}

/// `n` bf16 values uniform in `[-scale, scale)` from `seed` (deterministic).
pub fn fill_uniform_bf16(gpu: &Gpu, out: u64, n: usize, seed: u64, scale: f32) -> Result<()> {
    let args = [
        Arg::Ptr(out),
        Arg::U64(n as u64),
        Arg::U64(seed),
        Arg::F32(scale),
    ];
    gpu.launch(
        "fill_uniform_bf16",
        (n.div_ceil(256).min(65_535) as u32, 1, 1),
        256,
        0,
        &args,
    )
}

/// `n` f32 values set to `value`.
pub fn fill_f32(gpu: &Gpu, out: u64, n: usize, value: f32) -> Result<()> {
    let args = [Arg::Ptr(out), Arg::U64(n as u64), Arg::F32(value)];
    gpu.launch(
        "fill_f32",
        (n.div_ceil(256).min(65_535) as u32, 1, 1),
        256,
        0,
        &args,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epilogue_matches_the_c_struct_layout() {
        // struct Epilogue in kernels/common.cuh: int, int, then six 8-byte fields.
        assert_eq!(std::mem::size_of::<Epilogue>(), 56);
        assert_eq!(std::mem::offset_of!(Epilogue, bias), 8);
        assert_eq!(std::mem::offset_of!(Epilogue, out), 16);
        assert_eq!(std::mem::offset_of!(Epilogue, ldo), 24);
        assert_eq!(std::mem::offset_of!(Epilogue, sumsq), 32);
        assert_eq!(std::mem::offset_of!(Epilogue, gate_offset), 40);
        assert_eq!(std::mem::offset_of!(Epilogue, sumsq_ld), 48);
    }

    fn decode(queries: usize, keys: usize, n_heads: usize, window: Option<usize>) -> AttentionArgs {
        AttentionArgs {
            q: 0,
            k: 0,
            v: 0,
            out: 0,
            queries,
            keys,
            n_heads,
            n_kv_heads: 1,
            head_dim: 128,
            scale: 1.0,
            window,
            partial: Some((0, usize::MAX)),
        }
    }

    #[test]
    fn split_plans_cover_every_key_tile_exactly() {
        for queries in [1, 3, 64] {
            for keys in [queries, 64, 65, 200, 2048, 4097] {
                for window in [None, Some(1), Some(64), Some(700)] {
                    for heads in [1, 9, 32, 300] {
                        if keys < queries {
                            continue;
                        }
                        let p = decode(queries, keys, heads, window);
                        let key_begin =
                            window.map_or(0, |w| (keys - queries + 1).saturating_sub(w));
                        let tiles = (keys - key_begin / 64 * 64).div_ceil(64);
                        if let Some((per_split, splits)) = attention_split(132, &p) {
                            assert!(splits >= 2 && per_split >= 1, "{p:?}");
                            assert!(splits * per_split >= tiles, "tiles left out: {p:?}");
                            assert!((splits - 1) * per_split < tiles, "an empty split: {p:?}");
                        }
                    }
                }
            }
        }
        assert!(attention_split(132, &decode(1, 2048, 32, None)).is_some());
        assert!(
            attention_split(132, &decode(65, 2048, 32, None)).is_none(),
            "prefill is not split"
        );
        let no_scratch = AttentionArgs {
            partial: None,
            ..decode(1, 2048, 32, None)
        };
        assert!(attention_split(132, &no_scratch).is_none());
        let small_scratch = AttentionArgs {
            partial: Some((0, 10)),
            ..decode(1, 2048, 32, None)
        };
        assert!(
            attention_split(132, &small_scratch).is_none(),
            "must fit the scratch"
        );
    }

    #[test]
    fn wide_gemm_tiles_only_when_they_fill_the_gpu() {
        let mm = |m, n| Matmul {
            a: 0,
            lda: 4096,
            w: 0,
            ldw: 4096,
            m,
            n,
            k: 4096,
        };
        let plain = Epilogue::store_f32(0, 0);
        assert_eq!(
            GemmTile::for_shape(132, &mm(2048, 4096), &plain),
            GemmTile::N256
        );
        assert_eq!(
            GemmTile::for_shape(132, &mm(128, 4096), &plain),
            GemmTile::N128
        );
        // Gated: the tile spans gate and up rows, twice the neurons' count of W rows.
        let gated = Epilogue::gated(0, 0, Activation::Silu, 11008);
        assert_eq!(
            GemmTile::for_shape(132, &mm(512, 8192), &gated),
            GemmTile::N256
        );
        assert_eq!(
            GemmTile::for_shape(132, &mm(512, 8192), &plain),
            GemmTile::N128
        );
    }
}
