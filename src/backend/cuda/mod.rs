//! The CUDA backend: a device context with the kernels of `kernels/*.cu` (compiled by build.rs) and
//! typed launchers for each of them. The model on the device lives in `crate::gpu_model`.

pub mod kernels;
mod runtime;

pub use runtime::{Gpu, GpuBuffer};
