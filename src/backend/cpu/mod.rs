//! The CPU backend: f32 kernels vectorised with AVX2+FMA where available, parallel with rayon.

pub mod attention;
pub mod gemm;
pub mod ops;
