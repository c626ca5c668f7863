//! Dense f32 matrix products for the CPU backend: a packed, cache-blocked GEMM and a GEMV-style path.
//!
//! Every product here has the "NT" form of a transformer linear layer: `c = a · bᵀ`, where both `a`
//! (`m x k`, the activations) and `b` (`n x k`, the weights, one output feature per row) are stored
//! row-major with `k` contiguous.
//!
//! Large `m` (prefill) goes through a BLIS-style algorithm:
//!
//! ```text
//! for jc in 0..n step NC              // B block of NC rows, packed once and shared by all threads
//!   for pc in 0..k step KC            //   (KC x NC packed panel lives in L3)
//!     pack B[jc.., pc..] into NR-wide micro-panels           (parallel)
//!     parallel over tasks = (ic block of <= MC rows) x (range of micro-panels)
//!       pack A[ic.., pc..] into MR-tall micro-panels          (per-thread buffer, lives in L2)
//!       for each B micro-panel (KC x NR, reused from L1/L2)
//!         for each A micro-panel: MR x NR register-tiled micro-kernel over KC
//! ```
//!
//! Micro-kernels, chosen once at run time (`is_x86_feature_detected!`, cached):
//! - AVX-512F: 12 x 32, 24 zmm accumulators (`_mm512_fmadd_ps`), used where the CPU has it;
//! - AVX2+FMA: 6 x 16, 12 ymm accumulators (`_mm256_fmadd_ps`);
//! - portable: plain Rust of the 6 x 16 shape that the compiler can auto-vectorise, everywhere else.
//!
//! `TWOSSP_CPU_KERNELS=avx2` or `=portable` in the environment caps the choice (comparisons, tests).
//! Packing full panels uses AVX2 8 x 8 transposes where available. Edges (sizes that are not
//! multiples of the tiles) are handled by zero-padding the packed panels and writing partial tiles
//! through a small stack buffer, so every size, including `k = 1` or `n = 1`, is valid.
//!
//! Small `m` (decode: `m = 1`, or up to 8 rows) is memory bound on reading `b`; it skips packing and
//! streams `b` once, front to back (software-prefetched), multiplying each of its rows by the rows
//! of `a` held in L1, in parallel over `n` when `b` is large enough to repay the threads.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
mod elem;
mod gemv;
mod microkernel;
mod pack;
mod packed;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bf16;

pub use elem::Elem;
#[cfg(target_arch = "x86_64")]
pub(crate) use microkernel::ukr_avx512;
pub(crate) use microkernel::{micro_kernel, MicroKernel, MR, MR512, NR, NR512};
pub(crate) use pack::pack_panel;

use super::isa::{bf16_kernel, detected_isa, Bf16Kernel, Isa};
use gemv::gemv_path;
use packed::{packed_path, BLOCKING_12X32, BLOCKING_6X16};
use rayon::prelude::*;

/// Products with at most this many rows of `a` take the unpacked GEMV-style path.
const GEMV_M_MAX: usize = 8;
/// Below this many flops a product runs on the calling thread only.
const PAR_MIN_FLOPS: usize = 1 << 20;
/// The GEMV path runs on the calling thread only below this many elements of `b`. Measured with
/// `bench` decode on SmolLM2 (2 threads, Intel Xeon with AMX): 2^16 decodes 27-30 % faster than
/// 2^20 (f32 29.8 -> 37.9 tok/s, bf16 41.5 -> 53.7), 2^14 and 2^18 within noise of 2^16. (2^20 had
/// been chosen on a Zen 5, where handing small products to other threads cost more than it saved.)
const GEMV_PAR_MIN_ELEMS: usize = 1 << 16;

/// One product `c[m x n] (+)= a[m x k] · b[n x k]^T (+ bias[n])`: the operands, row-major with
/// leading dimensions (row strides), and the shape; the output `c` is passed separately. `b` (the
/// weights) may be stored as f32, bf16 or f16; `a`, `c` and the arithmetic are f32.
pub(crate) struct Product<'a, B: Elem = f32> {
    a: &'a [f32],
    lda: usize,
    b: &'a [B],
    ldb: usize,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    /// Add to `c` instead of overwriting it.
    accumulate: bool,
    bias: Option<&'a [f32]>,
}

impl<B: Elem> Clone for Product<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Elem> Copy for Product<'_, B> {}

impl<'a, B: Elem> Product<'a, B> {
    /// `y[m x n] = x[m x k] · w[n x k]^T (+ bias)` with every operand contiguous.
    fn dense(
        x: &'a [f32],
        w: &'a [B],
        bias: Option<&'a [f32]>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Self {
        Product {
            a: x,
            lda: k,
            b: w,
            ldb: k,
            ldc: n,
            m,
            n,
            k,
            accumulate: false,
            bias,
        }
    }
}

/// y[m x n] = x[m x k] · w[n x k]^T (+ bias[n]), the linear layer of a transformer; all row-major,
/// contiguous; `w` is f32, bf16 or f16. f16 weights (and bf16 ones with the widening kernel) are
/// widened exactly, so the result is the f32 product's; bf16 weights otherwise go to the bf16
/// kernel [`bf16_kernel`] picks, which rounds `x` to bf16.
pub fn linear<W: Elem>(
    x: &[f32],
    w: &[W],
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    if let Some(b) = bias {
        assert!(
            b.len() >= n,
            "linear: bias has {} elements, need {n}",
            b.len()
        );
    }
    gemm_nt(detected_isa(), Product::dense(x, w, bias, m, n, k), y);
}

/// [`linear`] with bf16 weights through the bf16 kernel `kernel` (benchmarks compare them); a
/// kernel this CPU lacks falls back to widening.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16_with(
    kernel: Bf16Kernel,
    x: &[f32],
    w: &[half::bf16],
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    let kernel = if kernel.available() {
        kernel
    } else {
        Bf16Kernel::Widen
    };
    gemm_with(
        detected_isa(),
        kernel,
        Product::dense(x, w, bias, m, n, k),
        y,
    );
}

/// c[m x n] = a[m x k] · b[n x k]^T with explicit leading dimensions (row strides) for each operand, optionally accumulating into c.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    let p = Product {
        a,
        lda,
        b,
        ldb,
        ldc,
        m,
        n,
        k,
        accumulate,
        bias: None,
    };
    gemm_nt(detected_isa(), p, c);
}

/// Checks shapes and dispatches to the GEMV-style or the packed path.
pub(crate) fn gemm_nt<B: Elem>(isa: Isa, p: Product<B>, c: &mut [f32]) {
    gemm_with(isa, bf16_kernel(), p, c)
}

/// [`gemm_nt`] with the bf16 kernel `bk` for products of bf16 weights.
fn gemm_with<B: Elem>(isa: Isa, bk: Bf16Kernel, p: Product<B>, c: &mut [f32]) {
    let Product {
        a,
        lda,
        b,
        ldb,
        ldc,
        m,
        n,
        k,
        accumulate,
        bias,
    } = p;
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        lda >= k && ldb >= k && ldc >= n,
        "matmul_nt: leading dimensions too small"
    );
    assert!(
        a.len() >= (m - 1) * lda + k,
        "matmul_nt: a has {} elements, too few for {m} x {k} (lda {lda})",
        a.len()
    );
    assert!(
        b.len() >= (n - 1) * ldb + k,
        "matmul_nt: b has {} elements, too few for {n} x {k} (ldb {ldb})",
        b.len()
    );
    assert!(
        c.len() >= (m - 1) * ldc + n,
        "matmul_nt: c has {} elements, too few for {m} x {n} (ldc {ldc})",
        c.len()
    );
    if let Some(bias) = bias {
        assert!(bias.len() >= n);
    }
    if k == 0 {
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            for (j, v) in row.iter_mut().enumerate() {
                let add = bias.map_or(0.0, |b| b[j]);
                *v = if accumulate { *v + add } else { add };
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    if m <= GEMV_M_MAX {
        let parallel = n * k >= GEMV_PAR_MIN_ELEMS && threads > 1;
        return gemv_path(isa, p, c, parallel);
    }
    let parallel = 2 * m * n * k >= PAR_MIN_FLOPS && threads > 1;
    #[cfg(target_arch = "x86_64")]
    if let (Some(b), Bf16Kernel::Amx | Bf16Kernel::Avx512Bf16) = (B::as_bf16(b), bk) {
        let p = Product {
            a,
            lda,
            b,
            ldb,
            ldc,
            m,
            n,
            k,
            accumulate,
            bias,
        };
        return match bk {
            Bf16Kernel::Amx => amx::gemm(p, c, parallel),
            _ => avx512bf16::gemm(p, c, parallel),
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            packed_path::<MR512, NR512, B>(isa, ukr_avx512, BLOCKING_12X32, p, c, parallel)
        }
        _ => packed_path::<MR, NR, B>(isa, micro_kernel(isa), BLOCKING_6X16, p, c, parallel),
    }
}

/// Runs `iters` x 12 independent `VDPBF16PS` (64 flops each; the AVX512-BF16 peak loop of the
/// benchmarks); `None` where the CPU has no AVX512-BF16.
#[cfg(target_arch = "x86_64")]
pub fn vdpbf16ps_loop(iters: usize) -> Option<f32> {
    // SAFETY: only run where the CPU has AVX512-BF16.
    avx512bf16::available().then(|| unsafe { avx512bf16::dot_loop(iters) })
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512bf16::{
    available as avx512bf16_available, outruns_fma as avx512bf16_outruns_fma,
};

/// Runs `f(0..count)`, in parallel on the rayon pool or in order on this thread.
fn for_each_task(parallel: bool, count: usize, f: impl Fn(usize) + Sync + Send) {
    if parallel && count > 1 {
        (0..count).into_par_iter().with_max_len(1).for_each(f);
    } else {
        (0..count).for_each(f);
    }
}

/// Splits `0..total` into `parts` nearly equal contiguous ranges; returns the `i`-th.
fn split_range(total: usize, parts: usize, i: usize) -> (usize, usize) {
    (total * i / parts, total * (i + 1) / parts)
}
