//! CPU backend: cache-blocked GEMM, flash-style attention and element-wise ops, parallel with rayon.

pub mod attention;
pub mod gemm;
pub mod ops;
