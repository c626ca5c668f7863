//! Throughput of the CUDA kernels against the H200's ceilings and cuBLAS:
//! `cargo bench --features cuda --bench cuda_kernels [-- [--json PATH] [FILTER]]`.
//!
//! One row per (kernel, shape) at 2048 tokens (decode rows: 1 token): the median GPU time of the timed
//! reps (CUDA events around each launch, after a warm-up), the achieved TFLOP/s (GEMM, prefill attention)
//! or GB/s (memory-bound kernels: the bytes a kernel must read plus write), and the share of the H200's
//! ceilings: 790 TFLOP/s dense bf16, 4.3 TB/s. The copy ceiling this GPU actually reaches (a 1 GiB
//! device-to-device memcpy) is measured first and printed as a row. Every GEMM and GEMV also runs on
//! cuBLAS (bf16 in, f32 accumulate, the same output type; a gated case as one plain product of 2n rows)
//! and `ours/cuBLAS` is the speed ratio cuBLAS ms / our ms (above 1: faster than cuBLAS).
//!
//! Each timed launch follows a read-only sweep of 128 MiB (the H200's L2 is 50 MB), so every rep starts with a
//! cold L2, as a layer does in a real forward pass. Before the reps the GPU is given enough queued work
//! that the host's launches never starve it. Inputs are uniform bf16 in [-0.05, 0.05) from
//! `fill_uniform_bf16`; nothing is verified (tests/cuda_parity.rs does that). Without a GPU the bench
//! prints "SKIPPED: no CUDA device" and exits 0. FILTER keeps the rows whose kernel or shape contains it.

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{sys::CUevent_flags, CudaEvent};
use std::ffi::c_void;
use std::time::Instant;
use twossp_engine::backend::cuda::kernels::{
    self, AttentionArgs, Epilogue, Gather, GemmTile, Matmul, Norm, QkvRope,
};
use twossp_engine::backend::cuda::{Gpu, GpuBuffer};
use twossp_engine::config::Activation;

/// Dense bf16 tensor-core peak of an H200 SXM (TFLOP/s).
const PEAK_TFLOPS: f64 = 790.0;
/// HBM3e bandwidth of an H200 taken as the copy ceiling (GB/s).
const PEAK_GBPS: f64 = 4300.0;
/// Tokens of every prefill-shaped case.
const TOKENS: usize = 2048;
/// Scale of the random bf16 inputs.
const SCALE: f32 = 0.05;
/// GPU time to spend on the timed reps of one case (ms).
const TARGET_MS: f64 = 20.0;
/// Timed reps per case: at least, at most, and in the probe that sizes them.
const MIN_REPS: usize = 10;
const MAX_REPS: usize = 100;
const PROBE_REPS: usize = 3;
/// f32 columns of the read-only sweep buffer (row_nll rows).
const SWEEP_COLS: usize = 32_768;
/// Rows of the L2 flush before each rep (128 MiB) and of one busy sweep (1 GiB).
const FLUSH_ROWS: usize = 1024;
const BUSY_ROWS: usize = 8192;
/// Bytes of the device-to-device copy that measures the copy ceiling.
const COPY_BYTES: usize = 1 << 30;

/// Model dimensions that shape the cases.
struct Model {
    name: &'static str,
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
}

const LLAMA_7B: Model = Model {
    name: "7B",
    hidden: 4096,
    ffn: 11008,
    heads: 32,
    kv_heads: 32,
    head_dim: 128,
    vocab: 32000,
};
const SMOLLM2: Model = Model {
    name: "SmolLM2",
    hidden: 576,
    ffn: 1536,
    heads: 9,
    kv_heads: 3,
    head_dim: 64,
    vocab: 49152,
};

/// What a product does with its result (the epilogue the model uses for that projection).
#[derive(Clone, Copy, PartialEq)]
enum Out {
    /// `out_bf16 = acc` (qkv).
    Bf16,
    /// `out_f32 = acc` (LM head logits).
    F32,
    /// `out_f32 += acc` (residual add; cuBLAS: beta = 1).
    AddF32,
    /// `out_bf16 = silu(gate) * up` (cuBLAS: the plain 2n-row product in bf16).
    Gated,
    /// Gated plus the per-neuron sum of squares of 2SSP's stage 1.
    GatedSumsq,
}

/// A linear layer: `n` outputs (gated: neurons, then W has 2n rows) from `k` inputs.
struct Linear {
    name: &'static str,
    n: usize,
    k: usize,
    out: Out,
}

impl Linear {
    /// Rows of W.
    fn rows(&self) -> usize {
        if matches!(self.out, Out::Gated | Out::GatedSumsq) {
            2 * self.n
        } else {
            self.n
        }
    }
}

/// The projections of one model's block and its LM head.
fn linears(m: &Model) -> Vec<Linear> {
    let qkv = (m.heads + 2 * m.kv_heads) * m.head_dim;
    vec![
        Linear {
            name: "qkv",
            n: qkv,
            k: m.hidden,
            out: Out::Bf16,
        },
        Linear {
            name: "o +=",
            n: m.hidden,
            k: m.heads * m.head_dim,
            out: Out::AddF32,
        },
        Linear {
            name: "gate_up swiglu",
            n: m.ffn,
            k: m.hidden,
            out: Out::Gated,
        },
        Linear {
            name: "gate_up swiglu+sumsq",
            n: m.ffn,
            k: m.hidden,
            out: Out::GatedSumsq,
        },
        Linear {
            name: "down +=",
            n: m.hidden,
            k: m.ffn,
            out: Out::AddF32,
        },
        Linear {
            name: "lm_head",
            n: m.vocab,
            k: m.hidden,
            out: Out::F32,
        },
    ]
}

/// What a case did: flops (compute-bound) or bytes moved (memory-bound).
#[derive(Clone, Copy)]
enum Work {
    /// Floating-point operations (TFLOP/s).
    Flops(f64),
    /// Bytes read plus written (GB/s).
    Bytes(f64),
}

/// One line of the table and one object of the JSON output.
#[derive(serde::Serialize)]
struct Row {
    kernel: String,
    shape: String,
    ms: f64,
    tflops: Option<f64>,
    gbps: Option<f64>,
    pct_ceiling: f64,
    cublas_ms: Option<f64>,
    ratio_vs_cublas: Option<f64>,
}

impl Row {
    /// The row of a case that took `ms` (cuBLAS: `cublas_ms`) for `work`.
    fn new(kernel: &str, shape: &str, ms: f64, work: Work, cublas_ms: Option<f64>) -> Self {
        let (tflops, gbps, pct) = match work {
            Work::Flops(f) => (Some(f / ms / 1e9), None, f / ms / 1e9 / PEAK_TFLOPS * 100.0),
            Work::Bytes(b) => (None, Some(b / ms / 1e6), b / ms / 1e6 / PEAK_GBPS * 100.0),
        };
        Self {
            kernel: kernel.into(),
            shape: shape.into(),
            ms,
            tflops,
            gbps,
            pct_ceiling: pct,
            cublas_ms,
            ratio_vs_cublas: cublas_ms.map(|c| c / ms),
        }
    }

    /// Column titles of [`Row::line`].
    fn header() -> String {
        format!(
            "{:<34} {:<26} {:>9} {:>8} {:>8} {:>7} {:>10} {:>11}",
            "kernel", "shape", "ms", "TFLOP/s", "GB/s", "% ceil", "cuBLAS ms", "ours/cuBLAS"
        )
    }

    /// The row as a table line.
    fn line(&self) -> String {
        let opt = |v: Option<f64>, w: usize, p: usize| {
            v.map_or(format!("{:>w$}", "-"), |v| format!("{v:>w$.p$}"))
        };
        format!(
            "{:<34} {:<26} {:>9.4} {} {} {:>6.1}% {} {}",
            self.kernel,
            self.shape,
            self.ms,
            opt(self.tflops, 8, 1),
            opt(self.gbps, 8, 0),
            self.pct_ceiling,
            opt(self.cublas_ms, 10, 4),
            opt(self.ratio_vs_cublas, 11, 2)
        )
    }
}

/// Times launches with CUDA events, each rep behind an L2 flush, with the GPU kept ahead of the host.
struct Timer<'g> {
    gpu: &'g Gpu,
    sweep: GpuBuffer<f32>,
    targets: GpuBuffer<u32>,
    nll: GpuBuffer<f32>,
    busy_ms: f64,
}

impl<'g> Timer<'g> {
    /// Allocates the 1 GiB sweep buffer and times one busy sweep.
    fn new(gpu: &'g Gpu) -> Result<Self> {
        let mut timer = Self {
            gpu,
            sweep: gpu.zeros(BUSY_ROWS * SWEEP_COLS)?,
            targets: gpu.zeros(BUSY_ROWS)?,
            nll: gpu.zeros(BUSY_ROWS)?,
            busy_ms: 0.0,
        };
        timer.sweep_rows(BUSY_ROWS)?;
        let (start, end) = (event(gpu)?, event(gpu)?);
        start.record(gpu.stream())?;
        timer.sweep_rows(BUSY_ROWS)?;
        end.record(gpu.stream())?;
        timer.busy_ms = f64::from(start.elapsed_ms(&end)?).max(0.01);
        Ok(timer)
    }

    /// Reads the first `rows` x 128 KiB of the sweep buffer (row_nll writes one float per row).
    fn sweep_rows(&self, rows: usize) -> Result<()> {
        let g = self.gpu;
        kernels::row_nll(
            g,
            g.ptr(&self.sweep, 0),
            g.ptr(&self.targets, 0),
            rows,
            SWEEP_COLS,
            None,
            g.ptr(&self.nll, 0),
        )
    }

    /// Median GPU time (ms) of one call of `f`.
    fn median_ms(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?; // warm-up: first launch, cuBLAS heuristics
        self.gpu.sync()?;
        let (probe, host_ms) = self.run(PROBE_REPS, 0, &mut f)?;
        let reps = ((TARGET_MS / median(probe)).ceil() as usize).clamp(MIN_REPS, MAX_REPS);
        let busy = (2.0 * reps as f64 * host_ms / self.busy_ms).ceil() as usize;
        let (times, _) = self.run(reps, busy.min(32), &mut f)?;
        Ok(median(times))
    }

    /// Queues `busy` sweeps, then `reps` timed calls; returns the times (ms) and host ms per rep.
    fn run(
        &self,
        reps: usize,
        busy: usize,
        f: &mut impl FnMut() -> Result<()>,
    ) -> Result<(Vec<f64>, f64)> {
        let events = (0..reps)
            .map(|_| Ok((event(self.gpu)?, event(self.gpu)?)))
            .collect::<Result<Vec<_>>>()?;
        for _ in 0..busy {
            self.sweep_rows(BUSY_ROWS)?;
        }
        let host = Instant::now();
        for (start, end) in &events {
            self.sweep_rows(FLUSH_ROWS)?;
            start.record(self.gpu.stream())?;
            f()?;
            end.record(self.gpu.stream())?;
        }
        let host_ms = host.elapsed().as_secs_f64() * 1e3 / reps as f64;
        self.gpu.sync()?;
        let times = events
            .iter()
            .map(|(s, e)| Ok(f64::from(s.elapsed_ms(e)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((times, host_ms))
    }
}

/// A CUDA event that records timing.
fn event(gpu: &Gpu) -> Result<CudaEvent> {
    Ok(gpu
        .stream()
        .context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
}

/// Middle value of `v` (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// cuBLAS on the kernels' stream.
struct Cublas(CudaBlas);

impl Cublas {
    /// A handle, or None (with a note) when libcublas cannot be loaded.
    fn new(gpu: &Gpu) -> Option<Self> {
        if !unsafe { blas_sys::is_culib_present() } {
            eprintln!("note: libcublas not found (LD_LIBRARY_PATH): cuBLAS columns left empty");
            return None;
        }
        CudaBlas::new(gpu.stream().clone())
            .map_err(|e| {
                eprintln!("note: cannot create a cuBLAS handle ({e}): cuBLAS columns left empty")
            })
            .ok()
            .map(Self)
    }

    /// `C[m, n] = A[m, k] · W[n, k]^T` (`+=` for AddF32) in bf16 with f32 accumulate: column-major `C^T = W · A^T`.
    fn gemm(
        &self,
        a: u64,
        w: u64,
        c: u64,
        (m, n, k): (usize, usize, usize),
        out: Out,
    ) -> Result<()> {
        use blas_sys::{
            cublasComputeType_t::CUBLAS_COMPUTE_32F, cublasOperation_t as Op, cudaDataType_t as Ty,
        };
        let (alpha, beta) = (1.0f32, if out == Out::AddF32 { 1.0f32 } else { 0.0 });
        let c_type = if matches!(out, Out::F32 | Out::AddF32) {
            Ty::CUDA_R_32F
        } else {
            Ty::CUDA_R_16BF
        };
        let (m, n, k) = (m as i32, n as i32, k as i32);
        // SAFETY: a, w, c are live device buffers of at least m·k, n·k and m·n elements.
        unsafe {
            blas::gemm_ex(
                *self.0.handle(),
                Op::CUBLAS_OP_T,
                Op::CUBLAS_OP_N,
                n,
                m,
                k,
                (&alpha as *const f32).cast::<c_void>(),
                w as usize as *const c_void,
                Ty::CUDA_R_16BF,
                k,
                a as usize as *const c_void,
                Ty::CUDA_R_16BF,
                k,
                (&beta as *const f32).cast::<c_void>(),
                c as usize as *mut c_void,
                c_type,
                n,
                CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow!("cublasGemmEx {m}x{n}x{k} failed: {e}"))
    }
}

/// Runs the cases, prints each row as it is measured and keeps them for the JSON output.
struct Bench<'g> {
    gpu: &'g Gpu,
    timer: Timer<'g>,
    cublas: Option<Cublas>,
    filter: String,
    rows: Vec<Row>,
}

impl Bench<'_> {
    /// Whether FILTER keeps this row.
    fn wants(&self, kernel: &str, shape: &str) -> bool {
        kernel.contains(&self.filter) || shape.contains(&self.filter)
    }

    /// Prints and keeps a row.
    fn push(&mut self, row: Row) {
        println!("{}", row.line());
        self.rows.push(row);
    }

    /// Times `f` and adds its row.
    fn case(
        &mut self,
        kernel: &str,
        shape: &str,
        work: Work,
        f: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        if self.wants(kernel, shape) {
            let ms = self
                .timer
                .median_ms(f)
                .with_context(|| format!("{kernel} {shape}"))?;
            self.push(Row::new(kernel, shape, ms, work, None));
        }
        Ok(())
    }

    /// A uniform random bf16 buffer of `n` values.
    fn random(&self, n: usize, seed: u64) -> Result<GpuBuffer<u16>> {
        let buf = self.gpu.zeros(n)?;
        kernels::fill_uniform_bf16(self.gpu, self.gpu.ptr(&buf, 0), n, seed, SCALE)?;
        Ok(buf)
    }

    /// An f32 buffer of `n` copies of `value`.
    fn filled(&self, n: usize, value: f32) -> Result<GpuBuffer<f32>> {
        let buf = self.gpu.zeros(n)?;
        kernels::fill_f32(self.gpu, self.gpu.ptr(&buf, 0), n, value)?;
        Ok(buf)
    }

    /// The copy ceiling: a device-to-device memcpy of [`COPY_BYTES`] (read + written bytes).
    fn copy_ceiling(&mut self) -> Result<()> {
        let src = self.gpu.zeros::<u8>(COPY_BYTES)?;
        let mut dst = self.gpu.zeros::<u8>(COPY_BYTES)?;
        let ms = self
            .timer
            .median_ms(|| self.gpu.copy(&src, &mut dst, COPY_BYTES))?;
        let row = Row::new(
            "memcpy dtod (copy ceiling)",
            "1 GiB",
            ms,
            Work::Bytes(2.0 * COPY_BYTES as f64),
            None,
        );
        println!(
            "measured copy ceiling: {:.0} GB/s ({:.1}% of {PEAK_GBPS} GB/s)\n",
            row.gbps.unwrap_or(0.0),
            row.pct_ceiling
        );
        println!("{}", Row::header());
        self.push(row);
        Ok(())
    }

    /// Our GEMM (m > 4) or GEMV (m = 1) on `lin` next to cuBLAS on the same operands.
    fn linear(&mut self, model: &str, lin: &Linear, m: usize) -> Result<()> {
        let kind = if m > kernels::GEMV_MAX_ROWS {
            "gemm"
        } else {
            "gemv"
        };
        let kernel = [kind, model, lin.name]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let rows = lin.rows();
        let shape = if rows == lin.n {
            format!("{m}x{}x{}", lin.n, lin.k)
        } else {
            format!("{m}x(2x{})x{}", lin.n, lin.k)
        };
        if !self.wants(&kernel, &shape) {
            return Ok(());
        }
        let g = self.gpu;
        let a = self.random(m * lin.k, 1)?;
        let w = self.random(rows * lin.k, 2)?;
        let out = g.zeros::<f32>(m * rows)?; // room for either output type, also cuBLAS's 2n gated columns
        let sumsq = g.zeros::<f32>(kernels::sumsq_rows(m) * lin.n)?;
        let (pa, pw, pc) = (g.ptr(&a, 0), g.ptr(&w, 0), g.ptr(&out, 0));
        let ep = match lin.out {
            Out::Bf16 => Epilogue::store_bf16(pc, lin.n),
            Out::F32 => Epilogue::store_f32(pc, lin.n),
            Out::AddF32 => Epilogue::add_f32(pc, lin.n),
            Out::Gated => Epilogue::gated(pc, lin.n, Activation::Silu, lin.n),
            Out::GatedSumsq => Epilogue::gated(pc, lin.n, Activation::Silu, lin.n)
                .with_sumsq(g.ptr(&sumsq, 0), lin.n),
        };
        let mm = Matmul {
            a: pa,
            lda: lin.k,
            w: pw,
            ldw: lin.k,
            m,
            n: lin.n,
            k: lin.k,
        };
        let cublas_ms = match &self.cublas {
            Some(cb) => Some(
                self.timer
                    .median_ms(|| cb.gemm(pa, pw, pc, (m, rows, lin.k), lin.out))?,
            ),
            None => None,
        };
        if m <= kernels::GEMV_MAX_ROWS {
            let ms = self.timer.median_ms(|| kernels::gemv(g, &mm, ep))?;
            let work = Work::Bytes(2.0 * (rows * lin.k) as f64); // the weight, read once
            self.push(Row::new(&kernel, &shape, ms, work, cublas_ms));
            return Ok(());
        }
        // Both GEMM tile widths; `*` marks the one the engine picks for this shape.
        let chosen = GemmTile::choose(g, &mm, &ep);
        for tile in [GemmTile::N128, GemmTile::N256] {
            let ms = self
                .timer
                .median_ms(|| kernels::gemm_with_tile(g, &mm, ep, tile))?;
            let width = if tile == GemmTile::N128 { 128 } else { 256 };
            let name = format!("{kernel} t{width}{}", if tile == chosen { "*" } else { "" });
            self.push(Row::new(
                &name,
                &shape,
                ms,
                Work::Flops(2.0 * (m * rows * lin.k) as f64),
                cublas_ms,
            ));
        }
        Ok(())
    }

    /// Causal attention: prefill (T = S = 2048, flops) and decode (T = 1, S = 2048, bytes of K and V).
    fn attention(&mut self, m: &Model) -> Result<()> {
        let (q_dim, kv_dim) = (m.heads * m.head_dim, m.kv_heads * m.head_dim);
        let q = self.random(TOKENS * q_dim, 3)?;
        let k = self.random(TOKENS * kv_dim, 4)?;
        let v = self.random(TOKENS * kv_dim, 5)?;
        let out = self.gpu.zeros::<u16>(TOKENS * q_dim)?;
        let partial_len = kernels::attention_partial_len(32, 1, m.heads, m.head_dim);
        let partial = self.gpu.zeros::<f32>(partial_len)?;
        for queries in [TOKENS, 1] {
            let g = self.gpu;
            let args = AttentionArgs {
                q: g.ptr(&q, 0),
                k: g.ptr(&k, 0),
                v: g.ptr(&v, 0),
                out: g.ptr(&out, 0),
                queries,
                keys: TOKENS,
                n_heads: m.heads,
                n_kv_heads: m.kv_heads,
                head_dim: m.head_dim,
                scale: 1.0 / (m.head_dim as f32).sqrt(),
                window: None,
                partial: Some((g.ptr(&partial, 0), partial_len)),
            };
            let (phase, work) = if queries == TOKENS {
                (
                    "prefill",
                    Work::Flops(4.0 * (TOKENS * TOKENS * q_dim) as f64 / 2.0),
                )
            } else {
                (
                    "decode",
                    Work::Bytes(2.0 * (2 * TOKENS * kv_dim + 2 * q_dim) as f64),
                )
            };
            let shape = format!(
                "T={queries} S={TOKENS} {}x{}/{} kv",
                m.heads, m.head_dim, m.kv_heads
            );
            self.case(
                &format!("attention {} {phase}", m.name),
                &shape,
                work,
                || kernels::attention(g, &args),
            )?;
        }
        Ok(())
    }

    /// The per-token memory-bound kernels of one model: embed, rmsnorm_bf16, add_rmsnorm, qkv_rope.
    fn token_kernels(&mut self, m: &Model) -> Result<()> {
        let (g, t, d) = (self.gpu, TOKENS, m.hidden);
        let ids = g.upload(&pseudo_random_ids(t, m.vocab))?;
        let table = self.random(m.vocab * d, 6)?;
        let x = self.filled(t * d, 0.5)?;
        let branch = self.filled(t * d, 0.25)?;
        let weight = self.filled(d, 1.0)?;
        let normed = g.zeros::<u16>(t * d)?;
        let shape = format!("{t}x{d}");
        let norm = Norm {
            weight: g.ptr(&weight, 0),
            offset: 0.0,
            eps: 1e-5,
        };
        let (px, pb, pn) = (g.ptr(&x, 0), g.ptr(&branch, 0), g.ptr(&normed, 0));
        let rows_bytes =
            |bytes_per_elem: usize| Work::Bytes((t * d * bytes_per_elem + 4 * d) as f64);
        self.case(
            &format!("embed {}", m.name),
            &format!("{shape} of {}", m.vocab),
            Work::Bytes((t * (6 * d + 4)) as f64),
            || kernels::embed(g, g.ptr(&ids, 0), g.ptr(&table, 0), t, d, 1.0, px),
        )?;
        self.case(
            &format!("rmsnorm_bf16 {}", m.name),
            &shape,
            rows_bytes(4 + 2),
            || kernels::rmsnorm_bf16(g, px, norm, t, d, pn),
        )?;
        self.case(
            &format!("add_rmsnorm {}", m.name),
            &shape,
            rows_bytes(4 + 4 + 4),
            || kernels::add_rmsnorm(g, px, pb, norm, t, d),
        )?;

        let (q_dim, kv_dim, n_freq) = (
            m.heads * m.head_dim,
            m.kv_heads * m.head_dim,
            m.head_dim / 2,
        );
        let qkv = self.random(t * (q_dim + 2 * kv_dim), 7)?;
        let cos = self.filled(t * n_freq, 0.6)?;
        let sin = self.filled(t * n_freq, 0.8)?;
        let q_out = g.zeros::<u16>(t * q_dim)?;
        let k_cache = g.zeros::<u16>(t * kv_dim)?;
        let v_cache = g.zeros::<u16>(t * kv_dim)?;
        let p = QkvRope {
            qkv: g.ptr(&qkv, 0),
            tokens: t,
            n_heads: m.heads,
            n_kv_heads: m.kv_heads,
            head_dim: m.head_dim,
            n_freq,
            cos: g.ptr(&cos, 0),
            sin: g.ptr(&sin, 0),
            q_norm: 0,
            k_norm: 0,
            norm_offset: 0.0,
            eps: 1e-5,
            first: 0,
            q_out: g.ptr(&q_out, 0),
            k_cache: g.ptr(&k_cache, 0),
            v_cache: g.ptr(&v_cache, 0),
        };
        let bytes = 2 * 2 * t * (q_dim + 2 * kv_dim) + 2 * 4 * t * n_freq;
        let shape = format!("{t}x{}x{}/{} kv", m.heads, m.head_dim, m.kv_heads);
        self.case(
            &format!("qkv_rope {}", m.name),
            &shape,
            Work::Bytes(bytes as f64),
            || kernels::qkv_rope(g, &p),
        )
    }

    /// row_nll over 2048 x 32000 f32 logits (each logit counted once).
    fn nll(&mut self) -> Result<()> {
        let (g, rows, vocab) = (self.gpu, TOKENS, LLAMA_7B.vocab);
        let logits = self.filled(rows * vocab, 0.0)?;
        let targets = g.upload(&pseudo_random_ids(rows, vocab))?;
        let nll = g.zeros::<f32>(rows)?;
        let bytes = 4 * rows * vocab + 8 * rows;
        self.case(
            "row_nll",
            &format!("{rows}x{vocab}"),
            Work::Bytes(bytes as f64),
            || {
                kernels::row_nll(
                    g,
                    g.ptr(&logits, 0),
                    g.ptr(&targets, 0),
                    rows,
                    vocab,
                    None,
                    g.ptr(&nll, 0),
                )
            },
        )
    }

    /// gather_rows / gather_cols compacting the 7B FFN to 62.5 % of its neurons (2SSP at sparsity 0.375).
    fn gather(&mut self) -> Result<()> {
        let (g, hidden, ffn) = (self.gpu, LLAMA_7B.hidden, LLAMA_7B.ffn);
        let kept = ffn * 5 / 8;
        let idx: Vec<i32> = (0..kept).map(|i| (i * ffn / kept) as i32).collect();
        let idx = g.upload(&idx)?;
        let src = self.random(2 * ffn * hidden, 8)?;
        let dst = g.zeros::<u16>(kept * hidden)?;
        let (ps, pi, pd) = (g.ptr(&src, 0), g.ptr(&idx, 0), g.ptr(&dst, 0));
        let bytes = (2 * 2 * kept * hidden + 4 * kept) as f64;
        let rows_shape = format!("{kept}/{} rows x {hidden}", 2 * ffn);
        self.case(
            "gather_rows 7B gate_up",
            &rows_shape,
            Work::Bytes(bytes),
            || {
                kernels::gather_rows(
                    g,
                    &Gather {
                        src: ps,
                        ld_src: hidden,
                        idx: pi,
                        n_idx: kept,
                        dst: pd,
                        ld_dst: hidden,
                    },
                    hidden,
                )
            },
        )?;
        let cols_shape = format!("{hidden} x {kept}/{ffn} cols");
        self.case(
            "gather_cols 7B down",
            &cols_shape,
            Work::Bytes(bytes),
            || {
                kernels::gather_cols(
                    g,
                    &Gather {
                        src: ps,
                        ld_src: ffn,
                        idx: pi,
                        n_idx: kept,
                        dst: pd,
                        ld_dst: kept,
                    },
                    hidden,
                )
            },
        )
    }
}

/// `n` token ids below `vocab` (xorshift; deterministic).
fn pseudo_random_ids(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x9e37_79b9u32;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s % vocab as u32
        })
        .collect()
}

/// Command line: `--json PATH` and an optional FILTER (cargo's own `--bench` flag is ignored).
fn parse_args() -> Result<(Option<String>, String)> {
    let (mut json, mut filter) = (None, String::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = Some(args.next().context("--json needs a path")?),
            "--bench" => {}
            f if f.starts_with("--") => {
                bail!("unknown option {f} (usage: cuda_kernels [--json PATH] [FILTER])")
            }
            f => filter = f.to_string(),
        }
    }
    Ok((json, filter))
}

/// Every case in table order.
fn run_all(b: &mut Bench) -> Result<()> {
    b.copy_ceiling()?;
    b.linear(
        "",
        &Linear {
            name: "square",
            n: 4096,
            k: 4096,
            out: Out::Bf16,
        },
        TOKENS,
    )?;
    for model in [&LLAMA_7B, &SMOLLM2] {
        for lin in linears(model) {
            b.linear(model.name, &lin, TOKENS)?;
        }
    }
    for lin in linears(&LLAMA_7B)
        .iter()
        .filter(|l| l.out != Out::GatedSumsq)
    {
        b.linear(LLAMA_7B.name, lin, 1)?;
    }
    for model in [&LLAMA_7B, &SMOLLM2] {
        b.attention(model)?;
    }
    for model in [&LLAMA_7B, &SMOLLM2] {
        b.token_kernels(model)?;
    }
    b.nll()?;
    b.gather()
}

/// Skips without a GPU; else prints the table and writes the JSON (also the rows done when a case fails).
pub fn main() -> Result<()> {
    let (json, filter) = parse_args()?;
    if !Gpu::available() {
        println!("SKIPPED: no CUDA device");
        return Ok(());
    }
    let started = Instant::now();
    let gpu = Gpu::new(0)?;
    let (_, total) = gpu.memory()?;
    println!(
        "device: {} ({:.0} GiB)",
        gpu.name(),
        total as f64 / (1u64 << 30) as f64
    );
    println!("ceilings: {PEAK_TFLOPS} TFLOP/s dense bf16, {PEAK_GBPS} GB/s; ours/cuBLAS = cuBLAS ms / our ms");
    let mut bench = Bench {
        gpu: &gpu,
        timer: Timer::new(&gpu)?,
        cublas: Cublas::new(&gpu),
        filter,
        rows: Vec::new(),
    };
    let result = run_all(&mut bench);
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&bench.rows)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {path}"))?;
        println!("\nwrote {} rows to {path}", bench.rows.len());
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    result
}
