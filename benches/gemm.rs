//! GEMM / attention throughput of the CPU backend: `cargo bench --bench gemm`.
//!
//! Prints, for the linear layers of SmolLM2-135M at 2048 tokens (prefill) and at 1 token (decode),
//! and a 1024^3 square product, the best-of-N wall time, GFLOP/s (2·m·n·k flops) and the share of
//! the machine's measured f32 peak; then causal attention at SmolLM2's shape, counted as
//! 2·2·T·T/2·head_dim·heads flops.
//!
//! Peak: one thread runs a loop of independent `vfmadd` instructions (12 accumulator chains, enough
//! to cover latency x throughput of two FMA pipes) for a fixed count, best of 25 short tries;
//! peak = threads x that single-thread rate (cores x 2 FMA x lanes x 2 flop x clock). The same loop
//! on every rayon worker at once is printed too: far below the nominal peak, it shows that other
//! processes share the cores, and every number below is then pessimistic. It is measured for 8-lane
//! AVX2 (the peak of the 6x16 AVX2 micro-kernel; the portable loop on CPUs without AVX2; "% peak")
//! and, where the CPU has it, 16-lane AVX-512 (the peak of the 12x32 micro-kernel, used by default
//! there; "% 512").
//!
//! `TWOSSP_CPU_KERNELS=avx2` (or `portable`) restricts the library's kernels for a comparison.
//!
//! Environment: `BENCH_SECS` (time budget per case, default 1.0), `BENCH_QUICK=1` (skip the
//! 49152-wide LM head at m = 2048) and `BENCH_FILTER` (only cases whose name contains it).

use std::hint::black_box;
use std::time::{Duration, Instant};
use twossp_engine::backend::cpu::attention::{
    causal_attention, causal_attention_bf16, AttentionShape,
};
use twossp_engine::backend::cpu::gemm::linear;

fn fill(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Best wall time of `f` over repeated runs: at least 3 runs (after one warm-up) and until `budget`
/// has been spent.
fn best_of(budget: Duration, mut f: impl FnMut()) -> (Duration, usize) {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < budget && runs < 1000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    (best, runs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(1.0); 12];
    let m = _mm256_set1_ps(0.999_999);
    let a = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, m, a);
        }
    }
    let mut s = _mm256_setzero_ps();
    for x in acc {
        s = _mm256_add_ps(s, x);
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let m = _mm512_set1_ps(0.999_999);
    let a = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, m, a);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    _mm512_reduce_add_ps(s)
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Flops of one call of [`fma_loop`] with `iters` iterations and `lanes`-wide vectors.
fn fma_loop_flops(iters: u64, lanes: u64) -> f64 {
    (iters * 12 * lanes * 2) as f64
}

/// The FMA loop with `lanes`-wide vectors (16: AVX-512, checked by the caller; 8: AVX2 or portable).
fn fma_loop(iters: u64, lanes: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if lanes == 16 {
            // SAFETY: only asked for when has_avx512().
            return unsafe { fma_loop_avx512(iters) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { fma_loop_avx2(iters) };
        }
    }
    let mut acc = [[1.0f32; 8]; 12];
    for _ in 0..iters {
        for x in acc.iter_mut().flatten() {
            *x = x.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().flatten().sum()
}

/// (single-thread GFLOP/s, all-threads GFLOP/s) with `lanes`-wide FMAs, each the best of many tries.
fn measure_peak(lanes: u64) -> (f64, f64) {
    // Many short tries (about 20 ms each): on a shared machine the best one is the quiet one.
    let iters = 2_000_000u64;
    let mut single = 0.0f64;
    for _ in 0..25 {
        let t = Instant::now();
        black_box(fma_loop(black_box(iters), lanes));
        single = single.max(fma_loop_flops(iters, lanes) / t.elapsed().as_secs_f64() / 1e9);
    }
    let threads = rayon::current_num_threads();
    let mut all = 0.0f64;
    for _ in 0..25 {
        let t = Instant::now();
        rayon::broadcast(|_| black_box(fma_loop(black_box(iters), lanes)));
        all = all
            .max(threads as f64 * fma_loop_flops(iters, lanes) / t.elapsed().as_secs_f64() / 1e9);
    }
    (single, all)
}

/// Single-thread GFLOP/s of back-to-back `TDPBF16PS` on four independent accumulator tiles (the
/// AMX peak), best of 25 tries; the caller made sure the tiles are usable.
#[cfg(target_arch = "x86_64")]
fn amx_peak_single() -> f64 {
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut cfg = Config([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64;
        cfg.0[48 + t] = 16;
    }
    let iters = 200_000u64;
    let mut best = 0.0f64;
    for _ in 0..25 {
        let t = Instant::now();
        // SAFETY: tiles granted (bf16_kernel() is Amx); the config describes tiles 0-7.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr());
            std::arch::asm!(
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7"
            );
            for _ in 0..black_box(iters) {
                std::arch::asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack, nomem)
                );
            }
            std::arch::asm!("tilerelease");
        }
        let flops = (iters * 4 * 16 * 16 * 32 * 2) as f64;
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Single-thread GFLOP/s of back-to-back `VDPBF16PS` on 12 independent zmm accumulators (the
/// AVX512-BF16 peak: 16 lanes x 2 products x 2 flops per instruction), best of 25 tries.
#[cfg(target_arch = "x86_64")]
fn vdpbf16ps_peak_single() -> f64 {
    use twossp_engine::backend::cpu::gemm::vdpbf16ps_loop;
    let iters = 1_000_000usize;
    let mut best = 0.0f64;
    for _ in 0..25 {
        let t = Instant::now();
        black_box(vdpbf16ps_loop(black_box(iters)));
        best = best.max((iters * 12 * 16 * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The SmolLM2 (and Llama-2-7B MLP) linear layers with bf16 weights through every bf16 kernel this
/// CPU has, as GFLOP/s and % of that kernel's own peak (the AMX tile loop, the VDPBF16PS loop; the
/// widening path runs f32 arithmetic, against the f32 peak `f32_peak`).
fn bf16_linears(budget: Duration, filter: &str, quick: bool, f32_peak: f64) {
    use twossp_engine::backend::cpu::gemm::linear_bf16_with;
    use twossp_engine::backend::cpu::{bf16_kernel, Bf16Kernel};
    let threads = rayon::current_num_threads() as f64;
    println!();
    println!(
        "bf16 kernel dispatched by default: {}",
        bf16_kernel().name()
    );
    let mut kernels = Vec::new();
    for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16, Bf16Kernel::Widen] {
        if !kernel.available() {
            println!(
                "bf16 kernel {}: SKIPPED (not available on this CPU/OS)",
                kernel.name()
            );
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        let peak = match kernel {
            Bf16Kernel::Amx => amx_peak_single() * threads,
            Bf16Kernel::Avx512Bf16 => vdpbf16ps_peak_single() * threads,
            Bf16Kernel::Widen => f32_peak,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let peak = f32_peak;
        println!(
            "peak, {}: {peak:.1} GFLOP/s for {threads} threads",
            kernel.name()
        );
        kernels.push((kernel, peak));
    }
    println!(
        "{:<28} {:>11} {:>7} {:>6} {:>6} {:>11} {:>9} {:>7}",
        "bf16 linear y = x·wᵀ", "kernel", "m", "n", "k", "best ms", "GFLOP/s", "% peak"
    );
    let shapes = [
        ("q/o proj", 576, 576),
        ("k/v proj", 192, 576),
        ("mlp gate/up", 1536, 576),
        ("mlp down", 576, 1536),
        ("lm head", 49152, 576),
        ("7B mlp gate/up", 11008, 4096),
        ("7B mlp down", 4096, 11008),
    ];
    for m in [2048usize, 1] {
        for &(name, n, k) in &shapes {
            if !name.contains(filter) || (quick && n * k > 30_000_000 && m > 1) {
                continue;
            }
            let x = fill(m * k, 1);
            let w: Vec<half::bf16> = fill(n * k, 2)
                .into_iter()
                .map(half::bf16::from_f32)
                .collect();
            let mut y = vec![0.0f32; m * n];
            // Decode-sized products always stream the widened weights: one row suffices.
            let runs_for: &[(Bf16Kernel, f64)] = if m == 1 { &kernels[..1] } else { &kernels };
            for &(kernel, peak) in runs_for {
                let (t, runs) = best_of(budget, || {
                    linear_bf16_with(
                        kernel,
                        black_box(&x),
                        black_box(&w[..]),
                        None,
                        &mut y,
                        m,
                        n,
                        k,
                    )
                });
                black_box(&y);
                let gflops = 2.0 * (m * n * k) as f64 / t.as_secs_f64() / 1e9;
                let (label, pct, note) = if m == 1 {
                    let gbs = (n * k * 2) as f64 / t.as_secs_f64() / 1e9;
                    (
                        "stream",
                        "-".to_string(),
                        format!("  ({gbs:.1} GB/s of weights, {runs} runs)"),
                    )
                } else {
                    (
                        kernel.name(),
                        format!("{:.1}%", 100.0 * gflops / peak),
                        format!("  ({runs} runs)"),
                    )
                };
                println!(
                    "{:<28} {:>11} {:>7} {:>6} {:>6} {:>11.3} {:>9.1} {:>7}{note}",
                    name,
                    label,
                    m,
                    n,
                    k,
                    t.as_secs_f64() * 1e3,
                    gflops,
                    pct
                );
            }
        }
    }
}

fn main() {
    let budget = Duration::from_secs_f64(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0),
    );
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    let threads = rayon::current_num_threads();
    println!("threads: {threads}");
    let report_peak = |lanes: u64, name: &str| {
        let (single, together) = measure_peak(lanes);
        let peak = single * threads as f64;
        println!(
            "peak, {name} FMA loop: {single:.1} GFLOP/s on one thread -> {peak:.1} GFLOP/s for {threads} threads \
             (measured all at once: {together:.1})"
        );
        peak
    };
    let peak = report_peak(8, "8-lane AVX2");
    let kernels = std::env::var("TWOSSP_CPU_KERNELS").unwrap_or_default();
    let peak512 = (has_avx512() && (kernels.is_empty() || kernels == "avx512"))
        .then(|| report_peak(16, "16-lane AVX-512"));
    println!(
        "GEMM kernels: {}",
        if peak512.is_some() {
            "AVX-512 12x32 (set TWOSSP_CPU_KERNELS=avx2 for the AVX2 6x16 kernel)"
        } else if kernels.is_empty() {
            "best available (AVX2 6x16 where the CPU has it)"
        } else {
            kernels.as_str()
        }
    );
    // "% peak" is against the AVX2 peak (the brief's definition); "% 512" against the AVX-512 one.
    let pct = |g: f64| match peak512 {
        Some(p512) => format!("{:>6.1}% {:>6.1}%", 100.0 * g / peak, 100.0 * g / p512),
        None => format!("{:>6.1}%", 100.0 * g / peak),
    };
    let pct_head = if peak512.is_some() {
        format!("{:>7} {:>7}", "% peak", "% 512")
    } else {
        format!("{:>7}", "% peak")
    };
    println!();
    println!(
        "{:<28} {:>7} {:>6} {:>6} {:>11} {:>9} {pct_head}",
        "linear y = x·wᵀ", "m", "n", "k", "best ms", "GFLOP/s"
    );

    let mut cases: Vec<(&str, usize, usize, usize)> = Vec::new();
    let smol = [
        ("q/o proj", 576, 576),
        ("k/v proj", 192, 576),
        ("mlp gate/up", 1536, 576),
        ("mlp down", 576, 1536),
        ("lm head", 49152, 576),
    ];
    for &(name, n, k) in &smol {
        if !(quick && n == 49152) {
            cases.push((name, 2048, n, k));
        }
    }
    cases.push(("square", 1024, 1024, 1024));
    for &(name, n, k) in &smol {
        cases.push((name, 1, n, k));
    }

    for (name, m, n, k) in cases {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let x = fill(m * k, 1);
        let w = fill(n * k, 2);
        let mut y = vec![0.0f32; m * n];
        let (t, runs) = best_of(budget, || {
            linear(black_box(&x), black_box(&w), None, &mut y, m, n, k)
        });
        black_box(&y);
        let gflops = 2.0 * (m * n * k) as f64 / t.as_secs_f64() / 1e9;
        let note = if m == 1 {
            // Decode is bound by reading w: report the bandwidth too.
            format!(
                "  ({:.1} GB/s of weights, {runs} runs)",
                (n * k * 4) as f64 / t.as_secs_f64() / 1e9
            )
        } else {
            format!("  ({runs} runs)")
        };
        println!(
            "{:<28} {:>7} {:>6} {:>6} {:>11.3} {:>9.1} {}{note}",
            name,
            m,
            n,
            k,
            t.as_secs_f64() * 1e3,
            gflops,
            pct(gflops)
        );
    }

    bf16_linears(budget, &filter, quick, peak512.unwrap_or(peak));

    println!();
    println!(
        "{:<28} {:>7} {:>6} {:>6} {:>11} {:>9} {pct_head}",
        "causal attention", "T", "heads", "hd", "best ms", "GFLOP/s"
    );
    let attn = [
        ("SmolLM2 (9 q / 3 kv)", 2048, 9, 3, 64, None),
        ("Gemma-3 local (4 / 1, w512)", 2048, 4, 1, 256, Some(512)),
    ];
    for (name, t_len, heads, kv, hd, window) in attn {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let q = fill(t_len * heads * hd, 3);
        let k = fill(t_len * kv * hd, 4);
        let v = fill(t_len * kv * hd, 5);
        let mut out = vec![0.0f32; t_len * heads * hd];
        let shape = AttentionShape {
            n_queries: t_len,
            n_keys: t_len,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window,
        };
        // Visible (query, key) pairs: T²/2 causal, or about T·w with a window.
        let pairs = match window {
            None => (t_len * t_len) as f64 / 2.0,
            Some(w) => (t_len * w.min(t_len)) as f64 - (w.min(t_len) * w.min(t_len)) as f64 / 2.0,
        };
        // f32, then the bf16 path (AMX tiles where the CPU has them and the shape suits them; the
        // f32 kernels otherwise, as the model would run it).
        type Attention = fn(&[f32], &[f32], &[f32], &mut [f32], &AttentionShape);
        let paths: [(&str, Attention); 2] =
            [("", causal_attention), (" bf16", causal_attention_bf16)];
        for (suffix, attend) in paths {
            let (t, runs) = best_of(budget, || {
                attend(
                    black_box(&q),
                    black_box(&k),
                    black_box(&v),
                    &mut out,
                    &shape,
                )
            });
            black_box(&out);
            let gflops = 2.0 * 2.0 * pairs * (hd * heads) as f64 / t.as_secs_f64() / 1e9;
            println!(
                "{:<28} {:>7} {:>6} {:>6} {:>11.3} {:>9.1} {}  ({runs} runs)",
                format!("{name}{suffix}"),
                t_len,
                heads,
                hd,
                t.as_secs_f64() * 1e3,
                gflops,
                pct(gflops)
            );
        }
    }
}
