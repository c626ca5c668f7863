//! Instruction-set selection shared by the CPU kernels: which SIMD variant to run, detected once.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which micro-kernels to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Isa {
    /// x86-64 AVX-512F/BW/VL: 12 x 32 micro-kernel, AVX-512 GEMV and softmax (packing stays AVX2).
    Avx512,
    /// x86-64 AVX2 + FMA intrinsics.
    Avx2Fma,
    /// Plain Rust, auto-vectorised for whatever the target offers.
    Portable,
}

/// The best kernels this CPU supports; detected on first use, then cached.
///
/// The environment variable `TWOSSP_CPU_KERNELS` (`avx512`, `avx2` or `portable`) caps the choice,
/// for comparisons and for testing the fallbacks.
pub(crate) fn detected_isa() -> Isa {
    static CACHE: AtomicU8 = AtomicU8::new(0);
    const ISAS: [Isa; 3] = [Isa::Avx512, Isa::Avx2Fma, Isa::Portable];
    match CACHE.load(Ordering::Relaxed) {
        i @ 1..=3 => ISAS[i as usize - 1],
        _ => {
            let isa = detect_isa();
            CACHE.store(
                ISAS.iter().position(|&x| x == isa).unwrap() as u8 + 1,
                Ordering::Relaxed,
            );
            isa
        }
    }
}

fn detect_isa() -> Isa {
    let cap = std::env::var("TWOSSP_CPU_KERNELS").unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    {
        if cap != "portable"
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            // BW/VL too: the bf16 decode path reads 16-bit lanes (every AVX-512 CPU since
            // Skylake-SP has them).
            if cap != "avx2"
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
            {
                return Isa::Avx512;
            }
            return Isa::Avx2Fma;
        }
    }
    let _ = cap;
    Isa::Portable
}

/// How products with bf16 weights are computed (prefill-sized; decode always streams the weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// Intel AMX tiles (`TDPBF16PS`): activations rounded to bf16, f32 accumulation.
    Amx,
    /// AVX512-BF16 (`VDPBF16PS`): activations rounded to bf16, f32 accumulation.
    Avx512Bf16,
    /// The weights widened to f32 as they are packed: f32 math on the bf16 weights, exactly.
    Widen,
}

/// The bf16 kernel this CPU runs; detected on first use, then cached.
///
/// AMX where the CPU and the OS offer it; otherwise AVX512-BF16 where it measurably outruns f32
/// FMAs (AMD Zen 4/5; not the Intel Xeons without AMX tiles measured here, where `VDPBF16PS`
/// delivers half the FMA flops); otherwise widening. `TWOSSP_BF16_KERNEL` (`amx`, `avx512bf16` or
/// `widen`) caps the choice, for comparisons and tests; naming `avx512bf16` skips the measurement.
pub fn bf16_kernel() -> Bf16Kernel {
    static CACHE: std::sync::OnceLock<Bf16Kernel> = std::sync::OnceLock::new();
    *CACHE.get_or_init(|| {
        let cap = std::env::var("TWOSSP_BF16_KERNEL").unwrap_or_default();
        let order = [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16, Bf16Kernel::Widen];
        let start = order.iter().position(|k| k.name() == cap).unwrap_or(0);
        order[start..]
            .iter()
            .copied()
            .find(|&k| k.available() && (cap == k.name() || k.pays_off()))
            .unwrap_or(Bf16Kernel::Widen)
    })
}

impl Bf16Kernel {
    /// Name as in `TWOSSP_BF16_KERNEL` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx",
            Bf16Kernel::Avx512Bf16 => "avx512bf16",
            Bf16Kernel::Widen => "widen",
        }
    }

    /// True when the kernel is faster than widening on this CPU (measured once for AVX512-BF16).
    pub(crate) fn pays_off(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => super::gemm::avx512bf16_outruns_fma(),
            _ => true,
        }
    }

    /// True when this CPU (and, for AMX, the OS) can run the kernel.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Amx => super::amx::available(),
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => super::gemm::avx512bf16_available(),
            Bf16Kernel::Widen => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}
