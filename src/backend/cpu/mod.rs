//! The CPU backend: f32 kernels vectorised with AVX2+FMA where available, parallel with rayon.

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod bf16;
#[cfg(target_arch = "x86_64")]
mod exact_exp;
pub mod gemm;
pub(crate) mod isa;
pub mod ops;
pub use isa::{bf16_kernel, Bf16Kernel};
mod out_ptr;
#[cfg(test)]
mod test_util;

/// True when matrices at `precision` are multiplied with bf16 operands (AMX or AVX512-BF16); the
/// model then also takes the other bf16-only shortcut (SiLU and NLL with the approximate 16-lane
/// exponential instead of libm's). False for the widening kernel, which is f32 math exactly.
pub fn computes_in_bf16(precision: crate::weights::Precision) -> bool {
    precision == crate::weights::Precision::Bf16 && bf16_kernel() != Bf16Kernel::Widen
}

/// The precision of the matrices and the kernels that multiply by them on this CPU, for reports:
/// e.g. `bf16 weights: AMX tiles for products and attention (decode: widened to f32, ...)`.
pub fn kernels_for(precision: crate::weights::Precision) -> String {
    use crate::weights::Precision;
    let f32_kernels = match isa::detected_isa() {
        isa::Isa::Avx512 => "AVX-512 12x32",
        isa::Isa::Avx2Fma => "AVX2 6x16",
        isa::Isa::Portable => "portable 6x16",
    };
    match (precision, bf16_kernel()) {
        (Precision::F32, _) => format!("f32 weights: {f32_kernels}"),
        (Precision::Bf16, Bf16Kernel::Amx) => {
            format!("bf16 weights: AMX tiles for products and attention (decode: widened to f32, {f32_kernels})")
        }
        (Precision::Bf16, Bf16Kernel::Avx512Bf16) => {
            format!("bf16 weights: AVX512-BF16 products, f32 attention (decode: widened to f32, {f32_kernels})")
        }
        #[cfg(target_arch = "x86_64")]
        (Precision::Bf16, Bf16Kernel::Widen)
            if Bf16Kernel::Avx512Bf16.available() && !Bf16Kernel::Avx512Bf16.pays_off() =>
        {
            format!(
                "bf16 weights widened to f32: {f32_kernels} (AVX512-BF16 measured slower than f32 FMAs on this CPU)"
            )
        }
        (p, _) => format!("{} weights widened to f32: {f32_kernels}", p.name()),
    }
}
