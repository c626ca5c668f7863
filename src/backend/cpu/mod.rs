//! The CPU backend: f32 kernels vectorised with AVX2+FMA where available, parallel with rayon.

pub mod attention;
pub mod gemm;
mod isa;
pub mod ops;
mod out_ptr;
#[cfg(test)]
mod test_util;
