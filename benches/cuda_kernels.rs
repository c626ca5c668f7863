//! CUDA kernel throughput on a real GPU against cuBLAS (see `cuda_kernels/gpu.rs`):
//! `cargo bench --features cuda --bench cuda_kernels [-- [--json PATH] [FILTER]]`. The host
//! emulation (`cuda-host`) has no GPU time to measure: there the bench says so and exits 2.

#[cfg(not(feature = "cuda-host"))]
#[path = "cuda_kernels/gpu.rs"]
mod gpu;

#[cfg(not(feature = "cuda-host"))]
fn main() -> anyhow::Result<()> {
    gpu::main()
}

#[cfg(feature = "cuda-host")]
fn main() {
    eprintln!("error: cuda_kernels times a real GPU against cuBLAS; build it with --features cuda, not cuda-host");
    std::process::exit(2);
}
