//! Element types the weight operand `b` of a product may be stored in: f32, bf16 and f16.
//!
//! The kernels compute in f32. A 16-bit weight is widened (exactly: every bf16 and f16 value is an
//! f32 value) into a small per-thread f32 buffer right before it is packed or streamed, so a
//! product over bf16 weights is bit-for-bit the product over the same weights widened to f32,
//! while the weights stay at half the bytes in memory.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A storage type of GEMM weights.
pub trait Elem: Copy + Send + Sync + 'static {
    /// The elements themselves when they already are f32 (no widening needed).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    /// The elements themselves when they are bf16 (the AMX kernel's operand type).
    fn as_bf16(_: &[Self]) -> Option<&[bf16]> {
        None
    }
    /// Widens `src` into `dst` (same length), exactly.
    fn widen_into(src: &[Self], dst: &mut [f32]);
}

impl Elem for f32 {
    #[inline]
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline]
    fn widen_into(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Elem for bf16 {
    #[inline]
    fn as_f32(_: &[bf16]) -> Option<&[f32]> {
        None
    }
    #[inline]
    fn as_bf16(s: &[bf16]) -> Option<&[bf16]> {
        Some(s)
    }
    #[inline]
    fn widen_into(src: &[bf16], dst: &mut [f32]) {
        // A bf16 is the upper half of an f32: a shift the compiler vectorises.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

impl Elem for f16 {
    #[inline]
    fn as_f32(_: &[f16]) -> Option<&[f32]> {
        None
    }
    #[inline]
    fn widen_into(src: &[f16], dst: &mut [f32]) {
        // `half` uses the F16C conversion instructions where the CPU has them.
        src.convert_to_f32_slice(dst);
    }
}
