//! CUDA kernels and the device-resident model against the CPU reference backend.
//!
//! Every kernel test draws fresh inputs from a seeded PRNG, rounds them to bf16 (the device's
//! operand type) and computes the reference with the CPU backend in f32 on those very rounded
//! values, so the only differences left are the device's own roundings (bf16 outputs, bf16
//! activations between GEMMs, bf16 softmax probabilities) and its summation order.
//!
//! Error measure: `rel = max|gpu - ref| / max(max|ref|, 1e-6)` over all compared elements, with
//! any NaN (or infinity) counting as a failure. Bounds: [`BF16_TOL`] (1e-2) for every bf16 path,
//! [`F32_TOL`] (1e-4) for the all-f32 NLL kernel; copies and the f64 score update are exact.
//! Every output buffer is poisoned first (NaN f32, 0x7FC0 bf16) so unwritten elements fail, and
//! the parts of a buffer a kernel must not touch (row-stride padding, cache rows of other
//! positions, rows past the last token) are checked to still hold the poison.
//!
//! Without a CUDA device each test prints `SKIPPED ...: no CUDA device ...` and passes. With one,
//! each check prints one line (`ok`/`FAIL`, label, max rel err); the lines are written to the
//! process's stderr directly, so they show even when the test harness captures output.

#![cfg(feature = "cuda")]

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use twossp_engine::backend::cpu::attention::{causal_attention, AttentionShape};
use twossp_engine::backend::cpu::gemm::linear;
use twossp_engine::backend::cpu::ops::{self, RopeTable};
use twossp_engine::backend::cuda::kernels::{
    self, AttentionArgs, Epilogue, Gather, Matmul, Norm, QkvRope,
};
use twossp_engine::backend::cuda::{Gpu, GpuBuffer};
use twossp_engine::config::{Activation, ModelConfig};
use twossp_engine::engine::Engine;
use twossp_engine::gpu_model::{padded_width, GpuKvCache, GpuModel, GpuWorkspace};
use twossp_engine::model::{Model, Workspace};
use twossp_engine::prune::balance::AttentionBudget;
use twossp_engine::prune::{self, stage1, PruneOptions};

/// `u(seed, i)` of kernels/synthetic.cu: uniform in [-1, 1) from 24 bits of a SplitMix64-style hash.
fn synthetic_uniform(seed: u64, i: u64) -> f32 {
    fn mix64(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let r = mix64(seed ^ mix64(i));
    (r >> 40) as f32 * (1.0 / 8_388_608.0) - 1.0
}

/// Relative error bound of every bf16 path (see the module docs for the measure).
const BF16_TOL: f32 = 1e-2;
/// Relative error bound of the f32 NLL kernel.
const F32_TOL: f32 = 1e-4;
/// bf16 quiet NaN: the poison of bf16 output buffers.
const BF16_NAN: u16 = 0x7FC0;
/// Fixtures shaped for the GPU kernels (tools/make_fixtures.py).
const GPU_FIXTURES: [&str; 4] = ["gpu_llama", "gpu_qwen2", "gpu_qwen3", "gpu_gemma3"];

// ----------------------------------------------------------------------------- harness

/// Writes one line to the process's stderr, bypassing the test harness's output capture.
fn say(line: impl AsRef<str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", line.as_ref());
}

/// The GPU, or `None` (after printing the skip line) when this machine has no CUDA device.
fn gpu(test: &str) -> Option<Arc<Gpu>> {
    if !Gpu::available() {
        let why = match Gpu::new(0) {
            Err(e) => format!("{e:#}"),
            Ok(_) => "the driver reports no device".into(),
        };
        let why = why.strip_prefix("no CUDA device: ").unwrap_or(&why);
        say(format!("SKIPPED: no CUDA device ({test}: {why})"));
        return None;
    }
    let gpu = Gpu::new(0)
        .unwrap_or_else(|e| panic!("a CUDA device is present but cannot be opened: {e:#}"));
    say(format!("== {test} on {}", gpu.name()));
    Some(Arc::new(gpu))
}

/// `max|got - want| / max(max|want|, 1e-6)`; NaN when a length differs or any value is NaN/inf.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() {
        return f32::NAN;
    }
    if got.iter().chain(want).any(|v| !v.is_finite()) {
        return f32::NAN;
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    common::max_abs_diff(got, want) / scale.max(1e-6)
}

/// Collects the checks of one test, prints a line per check and fails the test at the end.
struct Checks {
    test: &'static str,
    passed: usize,
    failures: Vec<String>,
    /// Print nothing (the harness's own test, whose failures are deliberate).
    quiet: bool,
}

impl Checks {
    fn new(test: &'static str) -> Self {
        Self {
            test,
            passed: 0,
            failures: Vec::new(),
            quiet: false,
        }
    }

    fn record(&mut self, ok: bool, line: String) {
        if !self.quiet {
            say(format!("  {} {line}", if ok { "ok  " } else { "FAIL" }));
        }
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(line);
        }
    }

    /// Relative error of `got` against `want` within `tol`; returns the error.
    fn rel(&mut self, label: impl AsRef<str>, got: &[f32], want: &[f32], tol: f32) -> f32 {
        let err = rel_err(got, want);
        let ok = err <= tol; // false for NaN
        self.record(
            ok,
            format!(
                "{}: max rel err {err:.2e} (tol {tol:.0e}, {} values)",
                label.as_ref(),
                want.len()
            ),
        );
        err
    }

    /// Relative error of a scalar.
    fn rel_scalar(&mut self, label: impl AsRef<str>, got: f64, want: f64, tol: f64) {
        let err = (got - want).abs() / want.abs().max(1e-12);
        let ok = got.is_finite() && err <= tol;
        self.record(
            ok,
            format!(
                "{}: {got:.6} vs {want:.6}, rel err {err:.2e} (tol {tol:.0e})",
                label.as_ref()
            ),
        );
    }

    /// Element-wise identity.
    fn exact<T: PartialEq + std::fmt::Debug>(
        &mut self,
        label: impl AsRef<str>,
        got: &[T],
        want: &[T],
    ) {
        let bad = got.iter().zip(want).position(|(g, w)| g != w);
        let ok = got.len() == want.len() && bad.is_none();
        let detail = match bad {
            Some(i) => format!("first mismatch at {i}: {:?} vs {:?}", got[i], want[i]),
            None if ok => format!("{} values identical", want.len()),
            None => format!("length {} vs {}", got.len(), want.len()),
        };
        self.record(ok, format!("{}: {detail}", label.as_ref()));
    }

    /// f32 values a kernel must not have written: still the NaN poison.
    fn untouched_f32(&mut self, label: impl AsRef<str>, values: &[f32]) {
        let bad = values.iter().filter(|v| !v.is_nan()).count();
        self.record(
            bad == 0,
            format!(
                "{}: {bad} of {} must-not-write values changed",
                label.as_ref(),
                values.len()
            ),
        );
    }

    /// bf16 values a kernel must not have written.
    fn untouched_bf16(&mut self, label: impl AsRef<str>, values: &[u16]) {
        let bad = values.iter().filter(|&&v| v != BF16_NAN).count();
        self.record(
            bad == 0,
            format!(
                "{}: {bad} of {} must-not-write values changed",
                label.as_ref(),
                values.len()
            ),
        );
    }

    fn truth(&mut self, label: impl AsRef<str>, ok: bool) {
        self.record(ok, label.as_ref().to_string());
    }

    fn finish(self) {
        say(format!(
            "== {}: {} checks passed, {} failed",
            self.test,
            self.passed,
            self.failures.len()
        ));
        assert!(
            self.failures.is_empty(),
            "{}: {} failed checks:\n{}",
            self.test,
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// SplitMix64: a small seeded PRNG (no extra crates).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` values uniform in [-scale, scale).
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

fn to_bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

fn from_bf16(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

/// bf16 bits of `v` and the rounded values in f32.
fn bf16_round(v: &[f32]) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = v.iter().map(|&x| to_bf16(x)).collect();
    let rounded = bits.iter().map(|&b| from_bf16(b)).collect();
    (bits, rounded)
}

fn bits_to_f32(b: &[u16]) -> Vec<f32> {
    b.iter().map(|&x| from_bf16(x)).collect()
}

/// A device f32 buffer of `n` NaNs.
fn nan_f32(gpu: &Gpu, n: usize) -> GpuBuffer<f32> {
    let mut b = gpu.zeros::<f32>(n).unwrap();
    gpu.write(&vec![f32::NAN; n], &mut b).unwrap();
    b
}

/// A device bf16 buffer of `n` NaNs.
fn nan_bf16(gpu: &Gpu, n: usize) -> GpuBuffer<u16> {
    let mut b = gpu.zeros::<u16>(n).unwrap();
    gpu.write(&vec![BF16_NAN; n], &mut b).unwrap();
    b
}

/// The `[rows, cols]` block at the start of a row-strided matrix.
fn block<T: Copy>(v: &[T], rows: usize, cols: usize, ld: usize) -> Vec<T> {
    (0..rows)
        .flat_map(|r| v[r * ld..r * ld + cols].iter().copied())
        .collect()
}

/// The elements of a row-strided matrix outside its `[rows, cols]` block (the stride padding).
fn padding<T: Copy>(v: &[T], rows: usize, cols: usize, ld: usize) -> Vec<T> {
    (0..rows)
        .flat_map(|r| v[r * ld + cols..(r + 1) * ld].iter().copied())
        .collect()
}

/// Places a contiguous `[rows, cols]` matrix into a row-strided one whose padding is `fill`.
fn strided<T: Copy>(v: &[T], rows: usize, cols: usize, ld: usize, fill: T) -> Vec<T> {
    let mut out = vec![fill; rows * ld];
    for r in 0..rows {
        out[r * ld..r * ld + cols].copy_from_slice(&v[r * cols..(r + 1) * cols]);
    }
    out
}

// ----------------------------------------------------------------------------- (a) GEMM / GEMV

/// Which launcher runs a product.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    Gemm,
    Gemv,
}

/// A random product `A[m, k] . W[rows, k]^T` on the device (row strides `k + pad`) and its CPU value.
/// W has `rows = gate_offset + n` rows so the gated epilogue finds neuron j's up row at
/// `gate_offset + j`; the plain epilogues use the first `n` rows.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    pad: usize,
    gate_offset: usize,
    bias: Vec<f32>,
    a_dev: GpuBuffer<u16>,
    w_dev: GpuBuffer<u16>,
    bias_dev: GpuBuffer<f32>,
    /// `A . W^T` in f32 on the rounded operands, `[m, rows]`.
    full: Vec<f32>,
}

impl Product {
    fn new(gpu: &Gpu, rng: &mut Rng, m: usize, n: usize, k: usize, pad: usize) -> Self {
        let gate_offset = n + 3;
        let rows = gate_offset + n;
        let ld = k + pad;
        let (a_bits, a) = bf16_round(&rng.vec(m * k, 1.0));
        let (w_bits, w) = bf16_round(&rng.vec(rows * k, (3.0 / k as f32).sqrt()));
        let bias = rng.vec(rows, 0.5);
        // Stride padding holds large values: a kernel reading past K would be visibly wrong.
        let garbage = to_bf16(1.0e4);
        let a_dev = gpu.upload(&strided(&a_bits, m, k, ld, garbage)).unwrap();
        let w_dev = gpu.upload(&strided(&w_bits, rows, k, ld, garbage)).unwrap();
        let bias_dev = gpu.upload(&bias).unwrap();
        let mut full = vec![0f32; m * rows];
        linear(&a, &w, None, &mut full, m, rows, k);
        Self {
            m,
            n,
            k,
            pad,
            gate_offset,
            bias,
            a_dev,
            w_dev,
            bias_dev,
            full,
        }
    }

    fn rows(&self) -> usize {
        self.gate_offset + self.n
    }

    fn ldo(&self) -> usize {
        self.n + self.pad
    }

    fn matmul(&self, gpu: &Gpu) -> Matmul {
        Matmul {
            a: gpu.ptr(&self.a_dev, 0),
            lda: self.k + self.pad,
            w: gpu.ptr(&self.w_dev, 0),
            ldw: self.k + self.pad,
            m: self.m,
            n: self.n,
            k: self.k,
        }
    }

    /// Columns `c0..c0 + n` of the product, plus the matching bias entries when asked.
    fn columns(&self, c0: usize, bias: bool) -> Vec<f32> {
        let rows = self.rows();
        let mut out = Vec::with_capacity(self.m * self.n);
        for r in 0..self.m {
            for c in c0..c0 + self.n {
                out.push(self.full[r * rows + c] + if bias { self.bias[c] } else { 0.0 });
            }
        }
        out
    }

    /// `act(gate) * up`, `[m, n]`.
    fn gated(&self, act: Activation, bias: bool) -> Vec<f32> {
        let (gate, up) = (self.columns(0, bias), self.columns(self.gate_offset, bias));
        let mut gate_up = Vec::with_capacity(2 * self.m * self.n);
        for r in 0..self.m {
            gate_up.extend_from_slice(&gate[r * self.n..(r + 1) * self.n]);
            gate_up.extend_from_slice(&up[r * self.n..(r + 1) * self.n]);
        }
        let mut out = vec![0f32; self.m * self.n];
        ops::gated_activation(&gate_up, &mut out, self.n, act, false);
        out
    }

    fn launch(&self, gpu: &Gpu, kernel: Kernel, ep: Epilogue) {
        let mm = self.matmul(gpu);
        match kernel {
            Kernel::Gemm => kernels::gemm(gpu, &mm, ep),
            Kernel::Gemv => kernels::gemv(gpu, &mm, ep),
        }
        .unwrap();
        gpu.sync().unwrap();
    }
}

/// Runs every epilogue on one product and compares with the CPU.
fn check_epilogues(gpu: &Gpu, checks: &mut Checks, rng: &mut Rng, p: &Product, kernel: Kernel) {
    let (m, n, ldo) = (p.m, p.n, p.ldo());
    let name = format!("{kernel:?} {m}x{n}x{} pad {}", p.k, p.pad);
    let bias_ptr = gpu.ptr(&p.bias_dev, 0);

    // Plain f32 / bf16 stores, with and without bias.
    for (kind, bias) in [
        ("store_f32", false),
        ("store_f32+bias", true),
        ("store_bf16+bias", true),
    ] {
        let want = p.columns(0, bias);
        let bias = if bias { bias_ptr } else { 0 };
        let got = if kind.starts_with("store_f32") {
            let out = nan_f32(gpu, m * ldo);
            p.launch(
                gpu,
                kernel,
                Epilogue::store_f32(gpu.ptr(&out, 0), ldo).with_bias(bias),
            );
            let all = gpu.download(&out).unwrap();
            checks.untouched_f32(
                format!("{name} {kind} stride padding"),
                &padding(&all, m, n, ldo),
            );
            block(&all, m, n, ldo)
        } else {
            let out = nan_bf16(gpu, m * ldo);
            p.launch(
                gpu,
                kernel,
                Epilogue::store_bf16(gpu.ptr(&out, 0), ldo).with_bias(bias),
            );
            let all = gpu.download(&out).unwrap();
            checks.untouched_bf16(
                format!("{name} {kind} stride padding"),
                &padding(&all, m, n, ldo),
            );
            bits_to_f32(&block(&all, m, n, ldo))
        };
        checks.rel(format!("{name} {kind}"), &got, &want, BF16_TOL);
    }

    // Residual add: out += acc + bias.
    let c0 = rng.vec(m * n, 2.0);
    let out = gpu.upload(&strided(&c0, m, n, ldo, f32::NAN)).unwrap();
    p.launch(
        gpu,
        kernel,
        Epilogue::add_f32(gpu.ptr(&out, 0), ldo).with_bias(bias_ptr),
    );
    let all = gpu.download(&out).unwrap();
    let want: Vec<f32> = c0
        .iter()
        .zip(p.columns(0, true))
        .map(|(c, v)| c + v)
        .collect();
    checks.untouched_f32(
        format!("{name} add_f32+bias stride padding"),
        &padding(&all, m, n, ldo),
    );
    checks.rel(
        format!("{name} add_f32+bias"),
        &block(&all, m, n, ldo),
        &want,
        BF16_TOL,
    );

    // Gated: act(gate + bias) * (up + bias), with per-neuron partial sums of squares (one row per
    // 64-token slab, or one row for GEMV) that add up to the column sums of squares.
    for (act, bias, stats) in [
        (Activation::Silu, true, true),
        (Activation::GeluTanh, true, true),
        (Activation::Silu, false, false),
        (Activation::GeluTanh, false, true),
    ] {
        let kind = format!(
            "gated {act:?}{}{}",
            if bias { "+bias" } else { "" },
            if stats { "+sumsq" } else { "" }
        );
        let out = nan_bf16(gpu, m * ldo);
        let (rows, ld) = (kernels::sumsq_rows(m), n + 8); // columns n.. must stay untouched
        let partial = gpu.upload(&vec![f32::NAN; rows * ld]).unwrap();
        let mut ep = Epilogue::gated(gpu.ptr(&out, 0), ldo, act, p.gate_offset);
        if bias {
            ep = ep.with_bias(bias_ptr);
        }
        if stats {
            ep = ep.with_sumsq(gpu.ptr(&partial, 0), ld);
        }
        p.launch(gpu, kernel, ep);
        let want = p.gated(act, bias);
        let all = gpu.download(&out).unwrap();
        checks.untouched_bf16(
            format!("{name} {kind} stride padding"),
            &padding(&all, m, n, ldo),
        );
        checks.rel(
            format!("{name} {kind}"),
            &bits_to_f32(&block(&all, m, n, ldo)),
            &want,
            BF16_TOL,
        );
        let got = gpu.download(&partial).unwrap();
        if stats {
            let got_sumsq: Vec<f32> = (0..n)
                .map(|j| (0..rows).map(|r| got[r * ld + j]).sum())
                .collect();
            let mut want_sumsq = vec![0f32; n];
            for r in 0..m {
                for (j, s) in want_sumsq.iter_mut().enumerate() {
                    *s += want[r * n + j] * want[r * n + j];
                }
            }
            checks.rel(
                format!("{name} {kind} column sums of squares"),
                &got_sumsq,
                &want_sumsq,
                BF16_TOL,
            );
            checks.untouched_f32(
                format!("{name} {kind} partial sums past the last neuron"),
                &padding(&got, rows, n, ld),
            );
        } else {
            checks.untouched_f32(
                format!("{name} {kind} no statistics asked, none written"),
                &got,
            );
        }
    }
}

#[test]
fn gemm_epilogues_match_cpu_linear() {
    let Some(gpu) = gpu("gemm_epilogues_match_cpu_linear") else {
        return;
    };
    let mut checks = Checks::new("gemm_epilogues_match_cpu_linear");
    let mut rng = Rng(0xA11CE);
    // (M, N, K, stride padding): partial tiles in M, N and K, a single K step, tiny M, a big case.
    for (m, n, k, pad) in [
        (77, 200, 136, 0),
        (77, 200, 136, 8),
        (129, 64, 8, 0),
        (3, 130, 40, 8),
        (200, 97, 264, 16),
        (512, 1024, 768, 0),
    ] {
        let p = Product::new(&gpu, &mut rng, m, n, k, pad);
        check_epilogues(&gpu, &mut checks, &mut rng, &p, Kernel::Gemm);
    }
    checks.finish();
}

#[test]
fn gemv_epilogues_match_cpu_linear() {
    let Some(gpu) = gpu("gemv_epilogues_match_cpu_linear") else {
        return;
    };
    let mut checks = Checks::new("gemv_epilogues_match_cpu_linear");
    let mut rng = Rng(0x6E3F);
    for m in 1..=kernels::GEMV_MAX_ROWS {
        // K 136: only 17 of 32 lanes hold data; K 264: one lane takes a second chunk.
        for (n, k, pad) in [(200, 136, 0), (37, 264, 8), (1024, 768, 0)] {
            let p = Product::new(&gpu, &mut rng, m, n, k, pad);
            check_epilogues(&gpu, &mut checks, &mut rng, &p, Kernel::Gemv);
        }
    }
    // The dispatcher picks the GEMV below 5 rows and the GEMM above; both must agree with the CPU.
    for m in [4, 5] {
        let p = Product::new(&gpu, &mut rng, m, 72, 128, 0);
        let out = nan_f32(&gpu, m * 72);
        kernels::matmul(
            &gpu,
            &p.matmul(&gpu),
            Epilogue::store_f32(gpu.ptr(&out, 0), 72),
        )
        .unwrap();
        gpu.sync().unwrap();
        checks.rel(
            format!("matmul dispatch M={m} store_f32"),
            &gpu.download(&out).unwrap(),
            &p.columns(0, false),
            BF16_TOL,
        );
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- (b) RMSNorm

#[test]
fn rmsnorm_kernels_match_cpu() {
    let Some(gpu) = gpu("rmsnorm_kernels_match_cpu") else {
        return;
    };
    let mut checks = Checks::new("rmsnorm_kernels_match_cpu");
    let mut rng = Rng(0x2A5);
    let eps = 1e-6;
    for (tokens, d) in [(1, 128), (5, 200), (37, 1000), (3, 4096)] {
        for offset in [0.0f32, 1.0] {
            let name = format!("T={tokens} d={d} offset {offset}");
            let w: Vec<f32> = (0..d)
                .map(|_| {
                    if offset == 0.0 {
                        1.0 + 0.3 * rng.uniform()
                    } else {
                        0.3 * rng.uniform()
                    }
                })
                .collect();
            let w_dev = gpu.upload(&w).unwrap();
            let norm = Norm {
                weight: gpu.ptr(&w_dev, 0),
                offset,
                eps,
            };

            // rmsnorm_bf16: out = bf16(x / rms(x) * (offset + w)).
            let x = rng.vec(tokens * d, 3.0);
            let x_dev = gpu.upload(&x).unwrap();
            let out = nan_bf16(&gpu, (tokens + 1) * d);
            kernels::rmsnorm_bf16(&gpu, gpu.ptr(&x_dev, 0), norm, tokens, d, gpu.ptr(&out, 0))
                .unwrap();
            gpu.sync().unwrap();
            let mut want = vec![0f32; tokens * d];
            ops::rms_norm_into(&x, &mut want, &w, offset, eps);
            let all = gpu.download(&out).unwrap();
            checks.rel(
                format!("rmsnorm_bf16 {name}"),
                &bits_to_f32(&all[..tokens * d]),
                &want,
                BF16_TOL,
            );
            checks.untouched_bf16(
                format!("rmsnorm_bf16 {name} row past the last token"),
                &all[tokens * d..],
            );

            // add_rmsnorm: x += branch / rms(branch) * (offset + w), all f32.
            let branch = rng.vec(tokens * d, 5.0);
            let branch_dev = gpu.upload(&branch).unwrap();
            let mut x_host = x.clone();
            x_host.extend(vec![f32::NAN; d]);
            let x2 = gpu.upload(&x_host).unwrap();
            kernels::add_rmsnorm(
                &gpu,
                gpu.ptr(&x2, 0),
                gpu.ptr(&branch_dev, 0),
                norm,
                tokens,
                d,
            )
            .unwrap();
            gpu.sync().unwrap();
            let mut normed = vec![0f32; tokens * d];
            ops::rms_norm_into(&branch, &mut normed, &w, offset, eps);
            let want: Vec<f32> = x.iter().zip(&normed).map(|(a, b)| a + b).collect();
            let all = gpu.download(&x2).unwrap();
            checks.rel(
                format!("add_rmsnorm {name}"),
                &all[..tokens * d],
                &want,
                F32_TOL,
            );
            checks.untouched_f32(
                format!("add_rmsnorm {name} row past the last token"),
                &all[tokens * d..],
            );
        }
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- (c) embedding

#[test]
fn embedding_gather_matches_table_rows() {
    let Some(gpu) = gpu("embedding_gather_matches_table_rows") else {
        return;
    };
    let mut checks = Checks::new("embedding_gather_matches_table_rows");
    let mut rng = Rng(0xE4B);
    let (vocab, hidden) = (317, 136);
    let (bits, table) = bf16_round(&rng.vec(vocab * hidden, 2.0));
    let table_dev = gpu.upload(&bits).unwrap();
    let mut ids: Vec<u32> = (0..29).map(|_| rng.below(vocab) as u32).collect();
    ids.extend([0, vocab as u32 - 1, 5, 5]);
    let ids_dev = gpu.upload(&ids).unwrap();
    for scale in [1.0f32, (hidden as f32).sqrt()] {
        let out = nan_f32(&gpu, (ids.len() + 1) * hidden);
        kernels::embed(
            &gpu,
            gpu.ptr(&ids_dev, 0),
            gpu.ptr(&table_dev, 0),
            ids.len(),
            hidden,
            scale,
            gpu.ptr(&out, 0),
        )
        .unwrap();
        gpu.sync().unwrap();
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| {
                table[id as usize * hidden..(id as usize + 1) * hidden]
                    .iter()
                    .map(move |v| v * scale)
            })
            .collect();
        let all = gpu.download(&out).unwrap();
        // bf16 -> f32 and one f32 multiply: exact.
        checks.exact(
            format!("embed {} tokens scale {scale}", ids.len()),
            &all[..want.len()]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            &want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        );
        checks.untouched_f32(
            format!("embed scale {scale} row past the last token"),
            &all[want.len()..],
        );
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- (d) q/k/v split, norms, RoPE

struct RopeCase {
    head_dim: usize,
    n_heads: usize,
    n_kv_heads: usize,
    /// Rotated pairs per head.
    n_freq: usize,
    /// Per-head q/k norms with this weight offset.
    norms: Option<f32>,
    first: usize,
    tokens: usize,
}

#[test]
fn qkv_rope_matches_cpu_norms_and_rope() {
    let Some(gpu) = gpu("qkv_rope_matches_cpu_norms_and_rope") else {
        return;
    };
    let mut checks = Checks::new("qkv_rope_matches_cpu_norms_and_rope");
    let mut rng = Rng(0x40BE);
    let eps = 1e-6;
    let cases = [
        RopeCase {
            head_dim: 64,
            n_heads: 2,
            n_kv_heads: 1,
            n_freq: 32,
            norms: None,
            first: 0,
            tokens: 5,
        },
        RopeCase {
            head_dim: 64,
            n_heads: 4,
            n_kv_heads: 2,
            n_freq: 16,
            norms: None,
            first: 9,
            tokens: 3,
        },
        RopeCase {
            head_dim: 128,
            n_heads: 4,
            n_kv_heads: 2,
            n_freq: 64,
            norms: Some(0.0),
            first: 7,
            tokens: 3,
        },
        RopeCase {
            head_dim: 128,
            n_heads: 2,
            n_kv_heads: 1,
            n_freq: 32,
            norms: Some(0.0),
            first: 0,
            tokens: 40,
        },
        RopeCase {
            head_dim: 256,
            n_heads: 2,
            n_kv_heads: 1,
            n_freq: 128,
            norms: Some(1.0),
            first: 33,
            tokens: 17,
        },
        RopeCase {
            head_dim: 256,
            n_heads: 4,
            n_kv_heads: 4,
            n_freq: 64,
            norms: None,
            first: 1,
            tokens: 1,
        },
        // 48 heads > 32 warps: each warp takes a second head.
        RopeCase {
            head_dim: 64,
            n_heads: 32,
            n_kv_heads: 8,
            n_freq: 16,
            norms: Some(1.0),
            first: 100,
            tokens: 2,
        },
    ];
    for c in &cases {
        let (hd, tokens, first) = (c.head_dim, c.tokens, c.first);
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
        let width = q_dim + 2 * kv_dim;
        let name = format!(
            "hd {hd} heads {}/{} n_freq {} norms {:?} first {first} T {tokens}",
            c.n_heads, c.n_kv_heads, c.n_freq, c.norms
        );
        let (bits, qkv) = bf16_round(&rng.vec(tokens * width, 2.0));
        let qkv_dev = gpu.upload(&bits).unwrap();
        let positions = first + tokens + 3;
        let inv_freq: Vec<f32> = (0..c.n_freq)
            .map(|f| 10_000f32.powf(-(f as f32) / c.n_freq as f32))
            .collect();
        let table = RopeTable::new(&inv_freq, positions);
        let (cos, sin) = (
            gpu.upload(&table.cos).unwrap(),
            gpu.upload(&table.sin).unwrap(),
        );
        let offset = c.norms.unwrap_or(0.0);
        let norm_w = |rng: &mut Rng| -> Vec<f32> {
            (0..hd)
                .map(|_| 1.0 - offset + 0.3 * rng.uniform())
                .collect()
        };
        let (qn, kn) = (norm_w(&mut rng), norm_w(&mut rng));
        let (qn_dev, kn_dev) = (gpu.upload(&qn).unwrap(), gpu.upload(&kn).unwrap());
        let q_out = nan_bf16(&gpu, (tokens + 1) * q_dim);
        let k_cache = nan_bf16(&gpu, positions * kv_dim);
        let v_cache = nan_bf16(&gpu, positions * kv_dim);
        kernels::qkv_rope(
            &gpu,
            &QkvRope {
                qkv: gpu.ptr(&qkv_dev, 0),
                tokens,
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: hd,
                n_freq: c.n_freq,
                cos: gpu.ptr(&cos, 0),
                sin: gpu.ptr(&sin, 0),
                q_norm: if c.norms.is_some() {
                    gpu.ptr(&qn_dev, 0)
                } else {
                    0
                },
                k_norm: if c.norms.is_some() {
                    gpu.ptr(&kn_dev, 0)
                } else {
                    0
                },
                norm_offset: offset,
                eps,
                first,
                q_out: gpu.ptr(&q_out, 0),
                k_cache: gpu.ptr(&k_cache, 0),
                v_cache: gpu.ptr(&v_cache, 0),
            },
        )
        .unwrap();
        gpu.sync().unwrap();

        // CPU: split, per-head RMSNorm, RoPE at positions first.., as model::forward does.
        let (mut q, mut k, mut v_bits) = (Vec::new(), Vec::new(), Vec::new());
        for t in 0..tokens {
            let row = &qkv[t * width..(t + 1) * width];
            let mut qr = row[..q_dim].to_vec();
            let mut kr = row[q_dim..q_dim + kv_dim].to_vec();
            if c.norms.is_some() {
                qr.chunks_exact_mut(hd)
                    .for_each(|h| ops::rms_norm_row(h, &qn, offset, eps));
                kr.chunks_exact_mut(hd)
                    .for_each(|h| ops::rms_norm_row(h, &kn, offset, eps));
            }
            q.extend(qr);
            k.extend(kr);
            v_bits.extend_from_slice(&bits[t * width + q_dim + kv_dim..(t + 1) * width]);
        }
        ops::apply_rope(&mut q, &table, first, c.n_heads, hd);
        ops::apply_rope(&mut k, &table, first, c.n_kv_heads, hd);

        let q_all = gpu.download(&q_out).unwrap();
        checks.rel(
            format!("{name} q"),
            &bits_to_f32(&q_all[..tokens * q_dim]),
            &q,
            BF16_TOL,
        );
        checks.untouched_bf16(
            format!("{name} q row past the last token"),
            &q_all[tokens * q_dim..],
        );
        let (k_all, v_all) = (
            gpu.download(&k_cache).unwrap(),
            gpu.download(&v_cache).unwrap(),
        );
        let rows = first * kv_dim..(first + tokens) * kv_dim;
        checks.rel(
            format!("{name} k cache rows {first}..{}", first + tokens),
            &bits_to_f32(&k_all[rows.clone()]),
            &k,
            BF16_TOL,
        );
        checks.exact(
            format!("{name} v cache rows (copied bits)"),
            &v_all[rows.clone()],
            &v_bits,
        );
        for (label, all) in [("k", &k_all), ("v", &v_all)] {
            let others: Vec<u16> = all[..rows.start]
                .iter()
                .chain(&all[rows.end..])
                .copied()
                .collect();
            checks.untouched_bf16(
                format!("{name} {label} cache rows of other positions"),
                &others,
            );
        }
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- (e) attention

#[test]
fn attention_matches_cpu_causal_attention() {
    let Some(gpu) = gpu("attention_matches_cpu_causal_attention") else {
        return;
    };
    let mut checks = Checks::new("attention_matches_cpu_causal_attention");
    let mut rng = Rng(0xA77E);
    // (queries T, keys S, sliding window): prefill T = S around the 64-query tile, decode T < S.
    let shapes: [(usize, usize, Option<usize>); 13] = [
        (1, 1, None),
        (63, 63, None),
        (64, 64, None),
        (65, 65, None),
        (200, 200, None),
        (1, 130, None),
        (3, 130, None),
        (200, 200, Some(16)),
        (65, 65, Some(1)),
        (3, 150, Some(16)),
        (1, 200, Some(64)),
        (130, 190, Some(50)),
        (40, 40, Some(1000)),
    ];
    for hd in [64, 128, 256] {
        for group in [1, 2, 4] {
            let n_kv = 2;
            let n_heads = n_kv * group;
            let (q_dim, kv_dim) = (n_heads * hd, n_kv * hd);
            let scale = 1.0 / (hd as f32).sqrt();
            for &(t, s, window) in &shapes {
                let name = format!("hd {hd} heads {n_heads}/{n_kv} T {t} S {s} window {window:?}");
                let (q_bits, q) = bf16_round(&rng.vec(t * q_dim, 3.0));
                let (k_bits, k) = bf16_round(&rng.vec(s * kv_dim, 1.0));
                let (v_bits, v) = bf16_round(&rng.vec(s * kv_dim, 1.0));
                // Rows past S hold large values: a kernel that reads them would be visibly wrong.
                let extra = vec![to_bf16(100.0); 64 * kv_dim];
                let q_dev = gpu.upload(&q_bits).unwrap();
                let k_dev = gpu.upload(&[k_bits, extra.clone()].concat()).unwrap();
                let v_dev = gpu.upload(&[v_bits, extra].concat()).unwrap();
                let out = nan_bf16(&gpu, (t + 1) * q_dim);
                // Scratch for split-KV: decoding shapes (T <= 64, many key tiles) take that path.
                let partial_len = kernels::attention_partial_len(32, t, n_heads, hd);
                let partial = gpu.zeros::<f32>(partial_len).unwrap();
                kernels::attention(
                    &gpu,
                    &AttentionArgs {
                        q: gpu.ptr(&q_dev, 0),
                        k: gpu.ptr(&k_dev, 0),
                        v: gpu.ptr(&v_dev, 0),
                        out: gpu.ptr(&out, 0),
                        queries: t,
                        keys: s,
                        n_heads,
                        n_kv_heads: n_kv,
                        head_dim: hd,
                        scale,
                        window,
                        partial: Some((gpu.ptr(&partial, 0), partial_len)),
                    },
                )
                .unwrap();
                gpu.sync().unwrap();
                let mut want = vec![0f32; t * q_dim];
                let shape = AttentionShape {
                    n_queries: t,
                    n_keys: s,
                    n_heads,
                    n_kv_heads: n_kv,
                    head_dim: hd,
                    scale,
                    window,
                };
                causal_attention(&q, &k, &v, &mut want, &shape);
                let all = gpu.download(&out).unwrap();
                checks.rel(&name, &bits_to_f32(&all[..t * q_dim]), &want, BF16_TOL);
                checks.untouched_bf16(format!("{name} row past the last query"), &all[t * q_dim..]);
            }
        }
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- (f) NLL

#[test]
fn row_nll_matches_cpu_nll() {
    let Some(gpu) = gpu("row_nll_matches_cpu_nll") else {
        return;
    };
    let mut checks = Checks::new("row_nll_matches_cpu_nll");
    let mut rng = Rng(0x111);
    for (rows, vocab) in [(1, 317), (7, 1000), (33, 32_000), (3, 151_936)] {
        for cap in [None, Some(15.0f32)] {
            let spread = if cap.is_some() { 40.0 } else { 8.0 };
            let logits = rng.vec(rows * vocab, spread);
            let mut targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
            targets[rows - 1] = vocab as u32 - 1;
            targets[0] = 0;
            let (l_dev, t_dev) = (gpu.upload(&logits).unwrap(), gpu.upload(&targets).unwrap());
            let nll = nan_f32(&gpu, rows + 1);
            kernels::row_nll(
                &gpu,
                gpu.ptr(&l_dev, 0),
                gpu.ptr(&t_dev, 0),
                rows,
                vocab,
                cap,
                gpu.ptr(&nll, 0),
            )
            .unwrap();
            gpu.sync().unwrap();
            let want: Vec<f32> = logits
                .chunks_exact(vocab)
                .zip(&targets)
                .map(|(row, &t)| {
                    let mut row = row.to_vec();
                    if let Some(c) = cap {
                        ops::soft_cap(&mut row, c);
                    }
                    ops::nll(&row, t as usize)
                })
                .collect();
            let all = gpu.download(&nll).unwrap();
            let name = format!("row_nll {rows} rows vocab {vocab} cap {cap:?}");
            checks.rel(&name, &all[..rows], &want, F32_TOL);
            checks.untouched_f32(format!("{name} entry past the last row"), &all[rows..]);
        }
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- (g) pruning helpers

#[test]
fn prune_helpers_are_exact() {
    let Some(gpu) = gpu("prune_helpers_are_exact") else {
        return;
    };
    let mut checks = Checks::new("prune_helpers_are_exact");
    let mut rng = Rng(0x6A7);

    // gather_rows: dst[i, :cols] = src[idx[i], :cols]; dst columns cols.. untouched.
    let (src_rows, ld_src, cols, ld_dst) = (50, 136, 128, 144);
    let (src_bits, _) = bf16_round(&rng.vec(src_rows * ld_src, 4.0));
    let mut idx: Vec<i32> = (0..30).map(|_| rng.below(src_rows) as i32).collect();
    idx.extend([0, src_rows as i32 - 1, 7, 7]);
    let (src, idx_dev) = (gpu.upload(&src_bits).unwrap(), gpu.upload(&idx).unwrap());
    let dst = nan_bf16(&gpu, (idx.len() + 1) * ld_dst);
    kernels::gather_rows(
        &gpu,
        &Gather {
            src: gpu.ptr(&src, 0),
            ld_src,
            idx: gpu.ptr(&idx_dev, 0),
            n_idx: idx.len(),
            dst: gpu.ptr(&dst, 0),
            ld_dst,
        },
        cols,
    )
    .unwrap();
    gpu.sync().unwrap();
    let all = gpu.download(&dst).unwrap();
    let want: Vec<u16> = idx
        .iter()
        .flat_map(|&r| src_bits[r as usize * ld_src..][..cols].iter().copied())
        .collect();
    checks.exact("gather_rows", &block(&all, idx.len(), cols, ld_dst), &want);
    let mut outside = padding(&all, idx.len(), cols, ld_dst);
    outside.extend_from_slice(&all[idx.len() * ld_dst..]);
    checks.untouched_bf16(
        "gather_rows columns past cols and rows past n_idx",
        &outside,
    );

    // gather_cols: dst[r, i] = src[r, idx[i]]; dst columns n_idx.. untouched.
    let (rows, ld_src, ld_dst) = (40, 104, 72);
    let (src_bits, _) = bf16_round(&rng.vec(rows * ld_src, 4.0));
    let mut idx: Vec<i32> = (0..57).map(|_| rng.below(100) as i32).collect();
    idx.extend([0, 99, 3, 3]);
    let (src, idx_dev) = (gpu.upload(&src_bits).unwrap(), gpu.upload(&idx).unwrap());
    let dst = nan_bf16(&gpu, (rows + 1) * ld_dst);
    kernels::gather_cols(
        &gpu,
        &Gather {
            src: gpu.ptr(&src, 0),
            ld_src,
            idx: gpu.ptr(&idx_dev, 0),
            n_idx: idx.len(),
            dst: gpu.ptr(&dst, 0),
            ld_dst,
        },
        rows,
    )
    .unwrap();
    gpu.sync().unwrap();
    let all = gpu.download(&dst).unwrap();
    let want: Vec<u16> = (0..rows)
        .flat_map(|r| {
            idx.iter()
                .map(|&c| src_bits[r * ld_src + c as usize])
                .collect::<Vec<_>>()
        })
        .collect();
    checks.exact("gather_cols", &block(&all, rows, idx.len(), ld_dst), &want);
    let mut outside = padding(&all, rows, idx.len(), ld_dst);
    outside.extend_from_slice(&all[rows * ld_dst..]);
    checks.untouched_bf16(
        "gather_cols columns past n_idx and rows past rows",
        &outside,
    );

    // accumulate_sqrt: scores[j] += sqrt(sum_r partial[r, j]), rows summed in order in f64; element n untouched.
    let (n, rows, ld) = (1000, 3, 1003);
    let partial: Vec<f32> = (0..rows * ld).map(|_| 10.0 * rng.uniform().abs()).collect();
    let scores: Vec<f64> = (0..=n).map(|_| rng.uniform() as f64 * 3.0).collect();
    let (p_dev, sc_dev) = (gpu.upload(&partial).unwrap(), gpu.upload(&scores).unwrap());
    kernels::accumulate_sqrt(&gpu, gpu.ptr(&p_dev, 0), rows, ld, gpu.ptr(&sc_dev, 0), n).unwrap();
    gpu.sync().unwrap();
    let mut want_scores: Vec<u64> = (0..n)
        .map(|j| {
            let sum = (0..rows).fold(0f64, |acc, r| acc + partial[r * ld + j] as f64);
            (scores[j] + sum.sqrt()).to_bits()
        })
        .collect();
    want_scores.push(scores[n].to_bits());
    let got_scores: Vec<u64> = gpu
        .download(&sc_dev)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    checks.exact(
        "accumulate_sqrt scores (f64 bits)",
        &got_scores,
        &want_scores,
    );
    checks.finish();
}

// ----------------------------------------------------------------------------- whole-model helpers

/// Why the GPU cannot run a model of this config, if it cannot (the library's own up-front check).
fn gpu_unsupported(cfg: &ModelConfig) -> Option<String> {
    twossp_engine::gpu_model::check_supported(cfg)
        .err()
        .map(|e| e.to_string())
}

/// `model` with every matrix rounded to bf16 as `GpuModel::upload` does (norms and biases stay
/// f32): the CPU reference for the device model.
fn bf16_weights(model: &Model) -> Model {
    fn round(w: &mut twossp_engine::model::Weights) {
        let rounded = w.to_f32().iter().map(|&v| from_bf16(to_bf16(v))).collect();
        *w = twossp_engine::model::Weights::F32(rounded);
    }
    let mut m = model.clone();
    round(&mut m.embed);
    if let Some(h) = &mut m.lm_head {
        round(&mut h.weight);
    }
    for b in &mut m.blocks {
        if let Some(a) = &mut b.attention {
            round(&mut a.qkv.weight);
            round(&mut a.o.weight);
        }
        if let Some(f) = &mut b.ffn {
            round(&mut f.gate_up.weight);
            round(&mut f.down.weight);
        }
    }
    m
}

fn fixture_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// CPU perplexity over `windows` (token-weighted mean NLL).
fn cpu_ppl(model: &Model, windows: &[&[u32]]) -> f64 {
    let mut ws = Workspace::default();
    let (mut nll, mut n) = (0f64, 0usize);
    for w in windows {
        let (s, c) = model.window_nll(w, &mut ws).unwrap();
        nll += s;
        n += c;
    }
    (nll / n as f64).exp()
}

/// Fixtures the GPU can run; prints why the others are skipped.
fn gpu_runnable_fixtures() -> Vec<(std::path::PathBuf, Model)> {
    let mut out = Vec::new();
    for dir in common::model_fixtures() {
        let model = Model::load(&dir).unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
        match gpu_unsupported(&model.config) {
            Some(why) => say(format!("  skip {}: {why}", fixture_name(&dir))),
            None => out.push((dir, model)),
        }
    }
    let names: Vec<String> = out.iter().map(|(d, _)| fixture_name(d)).collect();
    for want in GPU_FIXTURES {
        assert!(
            names.iter().any(|n| n == want),
            "fixture {want} is missing or not GPU-shaped (have {names:?})"
        );
    }
    out
}

// ----------------------------------------------------------------------------- (h) whole model

#[test]
fn device_model_matches_cpu_model() {
    let Some(gpu) = gpu("device_model_matches_cpu_model") else {
        return;
    };
    let mut checks = Checks::new("device_model_matches_cpu_model");
    for (dir, model) in gpu_runnable_fixtures() {
        let name = fixture_name(&dir);
        let cpu = bf16_weights(&model);
        let (ids, _, _) = common::reference(&dir);
        let t = ids.len();
        let gm = GpuModel::upload(gpu.clone(), &model).unwrap();
        let mut ws = GpuWorkspace::new(&gm, t, t).unwrap();

        // A shorter window first (the workspace is larger than needed), then the full one.
        for len in [17, t] {
            let (g, gn) = gm.window_nll(&mut ws, &ids[..len]).unwrap();
            let (c, cn) = cpu
                .window_nll(&ids[..len], &mut Workspace::default())
                .unwrap();
            let (f, _) = model
                .window_nll(&ids[..len], &mut Workspace::default())
                .unwrap();
            checks.truth(
                format!("{name} window_nll of {len} tokens predicts {gn} tokens (CPU {cn})"),
                gn == cn,
            );
            checks.rel_scalar(
                format!("{name} window_nll {len} tokens vs CPU (bf16 weights)"),
                g,
                c,
                BF16_TOL as f64,
            );
            say(format!(
                "       for information: vs CPU with f32 weights {f:.6}, rel {:.2e}",
                (g - f).abs() / f.abs()
            ));
        }

        // Every row's logits after the full window (the residual stream is still in the workspace).
        let want = cpu.logits(&ids).unwrap();
        let got = gm.rows_logits(&mut ws, 0, t).unwrap();
        checks.rel(
            format!("{name} rows_logits of all {t} rows at once"),
            &got,
            &want,
            BF16_TOL,
        );
        let f32_ref = model.logits(&ids).unwrap();
        say(format!(
            "       for information: vs CPU with f32 weights, max rel err {:.2e}",
            rel_err(&got, &f32_ref)
        ));
    }
    checks.finish();
}

#[test]
fn kv_cached_decode_matches_full_forward() {
    let Some(gpu) = gpu("kv_cached_decode_matches_full_forward") else {
        return;
    };
    let mut checks = Checks::new("kv_cached_decode_matches_full_forward");
    for (dir, model) in gpu_runnable_fixtures() {
        let name = fixture_name(&dir);
        let (ids, _, vocab) = common::reference(&dir);
        let t = ids.len();
        let gm = GpuModel::upload(gpu.clone(), &model).unwrap();

        // Full forward on the device and on the CPU.
        let mut ws = GpuWorkspace::new(&gm, t, t).unwrap();
        gm.window_nll(&mut ws, &ids).unwrap();
        let full: Vec<Vec<f32>> = (0..t)
            .map(|r| gm.rows_logits(&mut ws, r, 1).unwrap())
            .collect();
        let cpu = bf16_weights(&model).logits(&ids).unwrap();

        // Prefill 17 tokens, then chunks of 1..4 tokens (GEMV path) until the end.
        let mut cache = GpuKvCache::new(&gm, t).unwrap();
        let mut ws = GpuWorkspace::new(&gm, t, t).unwrap();
        let (mut got, mut want_gpu, mut want_cpu) = (Vec::new(), Vec::new(), Vec::new());
        let (mut pos, mut steps) = (0, 0);
        for chunk in [17, 1, 3, 1, 2, 4, 1, 1].iter().cycle() {
            if pos == t {
                break;
            }
            let end = (pos + chunk).min(t);
            got.extend(
                gm.forward_cached(&mut ws, &ids[pos..end], &mut cache)
                    .unwrap(),
            );
            want_gpu.extend_from_slice(&full[end - 1]);
            want_cpu.extend_from_slice(&cpu[(end - 1) * vocab..end * vocab]);
            pos = end;
            steps += 1;
        }
        checks.truth(
            format!(
                "{name} cache holds {} of {t} positions after {steps} calls",
                cache.len
            ),
            cache.len == t,
        );
        checks.rel(
            format!("{name} cached decode vs device full forward ({steps} steps)"),
            &got,
            &want_gpu,
            BF16_TOL,
        );
        checks.rel(
            format!("{name} cached decode vs CPU full forward ({steps} steps)"),
            &got,
            &want_cpu,
            BF16_TOL,
        );
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- (i) 2SSP

/// Kept neurons that differ between the device and the CPU must have CPU scores within 1e-2
/// (relative) of the keep threshold, the midpoint between the last kept and the first dropped score.
fn check_kept(checks: &mut Checks, label: &str, got: &[usize], want: &[usize], cpu_scores: &[f32]) {
    let scores: Vec<f64> = cpu_scores.iter().map(|&v| v as f64).collect();
    let verdict = common::kept_differences_near_threshold(got, want, &scores, 1e-2);
    let detail = match &verdict {
        Ok(n) => format!("{n} neurons differ from the CPU, all within 1e-2 of the threshold"),
        Err(why) => why.clone(),
    };
    checks.truth(
        format!("{label}: keep {}: {detail}", want.len()),
        verdict.is_ok(),
    );
}

/// EvoPress's fitness of one candidate (KL from the dense model) on the device and on the CPU.
fn evopress_kl<E: Engine>(model: &mut E, windows: &[&[u32]]) -> f64 {
    use twossp_engine::prune::evopress::fitness::{
        minibatch_kl, DenseTargets, Minibatch, DENSE_CACHE_BYTES,
    };
    let longest = windows.iter().map(|w| w.len()).max().unwrap();
    let mut ws = [
        model.workspace(longest, longest).unwrap(),
        model.workspace(longest, longest).unwrap(),
    ];
    let dense = DenseTargets::new(&*model, &mut ws[0], windows).unwrap();
    let last = model.n_blocks() - 1;
    let attention = model.take_attention(last);
    let ffn = model.take_ffn(0);
    let parts = vec![(0, windows[0].len()), (1, windows[1].len() / 2 + 1)];
    // Dense distributions computed for each call, then kept (filled, then read).
    let mut fresh = Minibatch::new(parts.clone(), 0);
    let mut kept = Minibatch::new(parts, DENSE_CACHE_BYTES);
    let kl_fresh = minibatch_kl(&*model, &mut ws, windows, &dense, &mut fresh).unwrap();
    let kl_filled = minibatch_kl(&*model, &mut ws, windows, &dense, &mut kept).unwrap();
    let kl_kept = minibatch_kl(&*model, &mut ws, windows, &dense, &mut kept).unwrap();
    assert_eq!(
        (kl_filled, kl_kept),
        (kl_fresh, kl_fresh),
        "kept and fresh dense distributions differ"
    );
    let kl = kl_fresh;
    model.restore_attention(last, attention);
    model.restore_ffn(0, ffn);
    kl
}

#[test]
fn evopress_fitness_on_gpu_matches_cpu() {
    let Some(gpu) = gpu("evopress_fitness_on_gpu_matches_cpu") else {
        return;
    };
    let mut checks = Checks::new("evopress_fitness_on_gpu_matches_cpu");
    for name in GPU_FIXTURES {
        let dir = common::fixtures().join(name);
        let model = Model::load(&dir).unwrap();
        let mut cpu = bf16_weights(&model);
        let windows = common::calibration(&dir, 32);
        let w: Vec<&[u32]> = windows.iter().take(2).map(Vec::as_slice).collect();
        let mut gm = GpuModel::upload(gpu.clone(), &model).unwrap();
        let (g, c) = (evopress_kl(&mut gm, &w), evopress_kl(&mut cpu, &w));
        checks.truth(
            format!("{name} KL {c:.5} is positive and finite"),
            c > 0.0 && c.is_finite(),
        );
        checks.rel_scalar(
            format!("{name} EvoPress KL fitness vs CPU"),
            g,
            c,
            BF16_TOL as f64,
        );
    }
    checks.finish();
}

#[test]
fn two_stage_pruning_on_gpu_matches_cpu() {
    let Some(gpu) = gpu("two_stage_pruning_on_gpu_matches_cpu") else {
        return;
    };
    let mut checks = Checks::new("two_stage_pruning_on_gpu_matches_cpu");
    for name in GPU_FIXTURES {
        let dir = common::fixtures().join(name);
        let model = Model::load(&dir).unwrap();
        let cpu0 = bf16_weights(&model);
        let windows = common::calibration(&dir, 32);
        let w: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let (s1, s2) = (&w[..4], &w[4..6]);
        let mut opts = PruneOptions {
            sparsity: 0.45,
            budget: AttentionBudget::Fixed(2),
            ffn_multiple_of: None,
            protected_attention: vec![],
        };
        if prune::validated_plan(&model.config, &opts).is_err() {
            opts.budget = AttentionBudget::Fixed(1);
        }

        // Stage-1 scores alone.
        let mut gm = GpuModel::upload(gpu.clone(), &model).unwrap();
        let cpu_scores = stage1::score_neurons(&cpu0, s1).unwrap();
        let gpu_scores = gm.score_neurons(s1).unwrap();
        for (i, (g, c)) in gpu_scores.iter().zip(&cpu_scores).enumerate() {
            checks.rel(format!("{name} block {i} stage-1 scores"), g, c, BF16_TOL);
        }

        // Both runs in full.
        let bytes_fresh = gm.device_bytes();
        checks.truth(
            format!(
                "{name} dense device parameter counts (main {}, total {}) equal the host model's",
                gm.params_main(),
                gm.params_total()
            ),
            gm.params_main() == model.params_main() && gm.params_total() == model.params_total(),
        );
        let attn_bytes: Vec<u64> = gm
            .blocks
            .iter()
            .map(|b| b.attention.as_ref().map_or(0, |a| a.device_bytes()))
            .collect();
        let (out, freed) = prune::run(&mut gm, &opts, s1, s2, None).unwrap();
        let mut cpu_pruned = cpu0.clone();
        let (cpu_out, _) = prune::run(&mut cpu_pruned, &opts, s1, s2, None).unwrap();
        checks.truth(
            format!("{name} plan {:?} equals the CPU's", out.plan),
            out.plan == cpu_out.plan,
        );
        for (i, (g, c)) in out.ffn_kept.iter().zip(&cpu_out.ffn_kept).enumerate() {
            check_kept(
                &mut checks,
                &format!("{name} block {i} kept set"),
                g,
                c,
                &cpu_scores[i],
            );
        }

        // Stage 2: replay the device's removal order on the CPU model with the device's kept sets.
        // Each device choice must be within 1% of the best CPU perplexity at that step (near-ties
        // may go either way under bf16), and the device's perplexities must match the CPU's.
        let mut m = cpu0.clone();
        m.keep_ffn_neurons(&out.ffn_kept);
        let before = cpu_ppl(&m, s2);
        checks.rel_scalar(
            format!("{name} stage-2 ln(ppl) before removal"),
            out.stage2.ppl_before.ln(),
            before.ln(),
            BF16_TOL as f64,
        );
        for (step, &chosen) in out.stage2.removed.iter().enumerate() {
            let candidates: Vec<usize> = (0..m.blocks.len())
                .filter(|&i| m.blocks[i].attention.is_some())
                .collect();
            let ppls: Vec<(usize, f64)> = candidates
                .iter()
                .map(|&i| {
                    let mut c = m.clone();
                    c.remove_attention(i);
                    (i, cpu_ppl(&c, s2))
                })
                .collect();
            let best = ppls.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let Some(&(_, ppl_chosen)) = ppls.iter().find(|p| p.0 == chosen) else {
                checks.truth(format!("{name} stage-2 step {step}: device removed block {chosen}, which is not a candidate"), false);
                break;
            };
            checks.truth(
                format!(
                    "{name} stage-2 step {step}: device removes block {chosen} (CPU ppl {ppl_chosen:.2}), best CPU ppl {best:.2}, candidates {ppls:.2?}"
                ),
                ppl_chosen <= best * 1.01,
            );
            checks.rel_scalar(
                format!("{name} stage-2 step {step} ln(ppl) of the chosen removal"),
                out.stage2.ppl_after[step].ln(),
                ppl_chosen.ln(),
                BF16_TOL as f64,
            );
            m.remove_attention(chosen);
        }
        say(format!(
            "       for information: device removed {:?}, CPU removed {:?}",
            out.stage2.removed, cpu_out.stage2.removed
        ));
        checks.truth(
            format!(
                "{name} stage 2 removed {} attention submodules as planned",
                out.stage2.removed.len()
            ),
            out.stage2.removed.len() == out.plan.n_attn,
        );

        // Device memory.
        let hidden = model.config.hidden as u64;
        let ffn_freed: u64 = model
            .blocks
            .iter()
            .zip(&out.ffn_kept)
            .map(|(b, k)| {
                b.ffn.as_ref().map_or(0, |f| {
                    2 * 3 * hidden * (padded_width(f.width()) - padded_width(k.len())) as u64
                })
            })
            .sum();
        let attn_freed: u64 = out.stage2.removed.iter().map(|&i| attn_bytes[i]).sum();
        checks.truth(
            format!(
                "{name} memory {freed:?}: before {bytes_fresh} = freed ffn + attention + after"
            ),
            freed.bytes_before == bytes_fresh
                && freed.bytes_after == gm.device_bytes()
                && freed.bytes_before
                    == freed.bytes_freed_ffn + freed.bytes_freed_attention + freed.bytes_after
                && freed.bytes_after < freed.bytes_before,
        );
        if !model.config.arch.mlp_bias {
            checks.truth(
                format!("{name} FFN bytes freed {} = 3 x hidden x (padded width lost) x 2 bytes = {ffn_freed}", freed.bytes_freed_ffn),
                freed.bytes_freed_ffn == ffn_freed,
            );
        }
        checks.truth(
            format!(
                "{name} attention bytes freed {} = bytes of the removed blocks {attn_freed}",
                freed.bytes_freed_attention
            ),
            freed.bytes_freed_attention == attn_freed,
        );
        let cfg_ok = gm.config.blocks.iter().enumerate().all(|(i, b)| {
            b.ffn_width == out.plan.keep && b.attention.is_some() != out.stage2.removed.contains(&i)
        }) && gm.blocks.iter().enumerate().all(|(i, b)| {
            b.attention.is_some() != out.stage2.removed.contains(&i)
                && b.ffn.as_ref().is_some_and(|f| {
                    f.width == out.plan.keep && f.padded == padded_width(out.plan.keep)
                })
        });
        checks.truth(
            format!("{name} pruned device model's config and blocks follow the decisions"),
            cfg_ok,
        );

        checks.truth(
            format!(
                "{name} pruned device parameter count {} equals the CPU model's with the same decisions {}",
                gm.params_main(),
                m.params_main()
            ),
            gm.params_main() == m.params_main() && gm.params_total() == m.params_total(),
        );

        // The pruned device model against the CPU model pruned with the same decisions.
        let (ids, _, _) = common::reference(&dir);
        let mut ws = GpuWorkspace::new(&gm, ids.len(), ids.len()).unwrap();
        let (g, _) = gm.window_nll(&mut ws, &ids).unwrap();
        let (c, _) = m.window_nll(&ids, &mut Workspace::default()).unwrap();
        checks.rel_scalar(
            format!("{name} pruned model window_nll vs CPU with the same decisions"),
            g,
            c,
            BF16_TOL as f64,
        );
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- (j) synthetic weights

#[test]
fn synthetic_models_are_finite_and_seeded() {
    let Some(gpu) = gpu("synthetic_models_are_finite_and_seeded") else {
        return;
    };
    let mut checks = Checks::new("synthetic_models_are_finite_and_seeded");
    // The fill kernels against their definition, past one grid-stride step (65,535 blocks x 256).
    for n in [1000, 65_535 * 256 + 1001] {
        let (seed, scale) = (0xC0FFEE_u64, 0.02f32);
        let out = nan_bf16(&gpu, n + 1);
        kernels::fill_uniform_bf16(&gpu, gpu.ptr(&out, 0), n, seed, scale).unwrap();
        let got = gpu.download(&out).unwrap();
        let want: Vec<u16> = (0..n as u64)
            .map(|i| to_bf16(synthetic_uniform(seed, i) * scale))
            .collect();
        checks.exact(format!("fill_uniform_bf16 n={n}"), &got[..n], &want);
        checks.untouched_bf16(
            format!("fill_uniform_bf16 n={n} element past the end"),
            &got[n..],
        );
    }
    let out = nan_f32(&gpu, 1001);
    kernels::fill_f32(&gpu, gpu.ptr(&out, 0), 1000, 0.25).unwrap();
    let got = gpu.download(&out).unwrap();
    checks.exact("fill_f32 n=1000", &got[..1000], &[0.25f32; 1000]);
    checks.untouched_f32("fill_f32 element past the end", &got[1000..]);
    let mut rng = Rng(0x5EED);
    for name in GPU_FIXTURES {
        let cfg = ModelConfig::from_dir(&common::fixtures().join(name)).unwrap();
        let ids: Vec<u32> = (0..40).map(|_| rng.below(cfg.vocab) as u32).collect();
        let nll = |seed: u64| -> (f64, GpuModel) {
            let m = GpuModel::synthetic(gpu.clone(), &cfg, seed).unwrap();
            let mut ws = GpuWorkspace::new(&m, ids.len(), ids.len()).unwrap();
            (m.window_nll(&mut ws, &ids).unwrap().0, m)
        };
        let (a, ma) = nll(7);
        let (b, mb) = nll(7);
        let (c, _) = nll(8);
        let mean = a / (ids.len() - 1) as f64;
        let uniform = (cfg.vocab as f64).ln();
        checks.truth(
            format!("{name} synthetic seed 7: NLL {a:.6} finite, mean {mean:.4} near ln(vocab) {uniform:.4} (std-0.02 weights)"),
            a.is_finite() && (mean - uniform).abs() < 0.5,
        );
        checks.truth(
            format!("{name} same seed gives the same NLL bits ({a} vs {b})"),
            a.to_bits() == b.to_bits(),
        );
        checks.truth(
            format!("{name} another seed gives another NLL ({a} vs {c})"),
            c.is_finite() && a != c,
        );
        checks.truth(
            format!("{name} same seed gives the same device bytes"),
            ma.device_bytes() == mb.device_bytes(),
        );

        // Padding neurons (width rounded up to 8) must be exact zeros in gate, up and down.
        let f = ma.blocks[0].ffn.as_ref().unwrap();
        let (w, p, h) = (f.width, f.padded, cfg.hidden);
        let gate_up = gpu.download(&f.gate_up.data).unwrap();
        let down = gpu.download(&f.down.data).unwrap();
        let mut pad: Vec<u16> = gate_up[w * h..p * h]
            .iter()
            .chain(&gate_up[(p + w) * h..])
            .copied()
            .collect();
        pad.extend(padding(&down, h, w, p));
        let real_nonzero = gate_up[..w * h].iter().any(|&v| v != 0)
            && gate_up[p * h..(p + w) * h].iter().any(|&v| v != 0);
        checks.truth(
            format!(
                "{name} FFN width {w} padded to {p}: {} padding values, all zero; real rows random",
                pad.len()
            ),
            w == cfg.blocks[0].ffn_width
                && p == padded_width(w)
                && gate_up.len() == 2 * p * h
                && pad.iter().all(|&v| v == 0)
                && real_nonzero,
        );
    }
    checks.finish();
}

// ----------------------------------------------------------------------------- the harness itself

/// The helpers above, checked without a GPU (they decide what the GPU tests accept).
#[test]
fn harness_helpers_are_sound() {
    assert_eq!(rel_err(&[1.0, -2.0], &[1.0, -2.0]), 0.0);
    assert!((rel_err(&[1.0, -2.1], &[1.0, -2.0]) - 0.05).abs() < 1e-6);
    assert!(rel_err(&[f32::NAN, 1.0], &[1.0, 1.0]).is_nan());
    assert!(rel_err(&[1.0, 1.0], &[f32::INFINITY, 1.0]).is_nan());
    assert!(rel_err(&[1.0], &[1.0, 1.0]).is_nan());
    assert!(from_bf16(BF16_NAN).is_nan() && to_bf16(1.0) == 0x3F80);

    let m: Vec<u32> = (0..6).collect(); // [2, 3]
    let s = strided(&m, 2, 3, 5, 99);
    assert_eq!(s, [0, 1, 2, 99, 99, 3, 4, 5, 99, 99]);
    assert_eq!(block(&s, 2, 3, 5), m);
    assert_eq!(padding(&s, 2, 3, 5), [99; 4]);

    let mut rng = Rng(1);
    let v = rng.vec(10_000, 1.0);
    assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
    assert!(v.iter().any(|&x| x < -0.99) && v.iter().any(|&x| x > 0.99));
    assert!((0..1000).all(|_| rng.below(7) < 7));

    // Kept sets: a swap across the threshold between near-equal scores passes, any other fails.
    let scores = [5.0, 4.0, 3.001, 3.0, 1.0];
    let mut checks = Checks::new("harness_helpers_are_sound");
    checks.quiet = true;
    check_kept(
        &mut checks,
        "near-tie swap",
        &[0, 1, 3],
        &[0, 1, 2],
        &scores,
    );
    check_kept(&mut checks, "identical", &[0, 1, 2], &[0, 1, 2], &scores);
    assert!(checks.failures.is_empty());
    check_kept(
        &mut checks,
        "far swap (expected to fail)",
        &[0, 1, 4],
        &[0, 1, 2],
        &scores,
    );
    check_kept(
        &mut checks,
        "size (expected to fail)",
        &[0, 1],
        &[0, 1, 2],
        &scores,
    );
    assert_eq!(checks.failures.len(), 2);
}
