//! Compute backends: the CPU reference backend and, with the `cuda` feature, the CUDA backend.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
