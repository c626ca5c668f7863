//! The CUDA backend: a device context with the kernels of `kernels/*.cu` (compiled by build.rs) and
//! typed launchers for each of them. The model on the device lives in `crate::gpu_model`.
//! Two runtimes give the same interface: cudarc on a real GPU (`cuda` feature), and the host
//! emulation that runs the same kernel sources on the CPU (`cuda-host`; kernels/host/).

pub mod kernels;
#[cfg_attr(feature = "cuda-host", path = "host_runtime.rs")]
mod runtime;

pub use runtime::{Gpu, GpuBuffer};

/// A kernel argument, passed by value.
pub(crate) enum Arg {
    /// Device address (buffer start plus an element offset, already applied).
    Ptr(u64),
    /// `int`.
    I32(i32),
    /// `long long`.
    I64(i64),
    /// `unsigned long long`.
    U64(u64),
    /// `float`.
    F32(f32),
    /// The GEMM/GEMV epilogue struct.
    Epilogue(kernels::Epilogue),
}

/// Refuses a device copy of `n` elements that does not fit the source or the destination.
fn check_copy(n: usize, src_len: usize, dst_len: usize) -> anyhow::Result<()> {
    if n > src_len || n > dst_len {
        anyhow::bail!("device copy of {n} elements exceeds a buffer ({src_len} / {dst_len})");
    }
    Ok(())
}
