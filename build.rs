//! Build script: with the `cuda` feature, kernels/*.cu are compiled by nvcc (added with the CUDA backend).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
