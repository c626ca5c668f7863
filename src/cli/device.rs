//! `--device` and `--synthetic-weights`: where a command computes and what model it uses.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Backend selection shared by `eval`, `prune` and `bench`.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Backend: cpu, cuda or cuda:N [default: cuda when this build has CUDA and a GPU is present, else cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Instead of --model: seeded random weights of this config.json's shapes, generated on the GPU
    /// (to time e.g. a Llama-2-7B shape without its checkpoint); token ids are random too.
    #[arg(long, value_name = "CONFIG_JSON")]
    pub synthetic_weights: Option<PathBuf>,
    /// Seed of the synthetic weights and token ids.
    #[arg(long, default_value_t = 0)]
    pub synthetic_seed: u64,
}

pub use crate::backend::Backend;

impl DeviceArgs {
    /// The `--synthetic-weights` model generated on the GPU, or `None` without the flag.
    #[cfg(feature = "cuda")]
    pub fn synthetic_model(&self, backend: &Backend) -> Result<Option<crate::gpu_model::GpuModel>> {
        let Some(path) = &self.synthetic_weights else {
            return Ok(None);
        };
        let Backend::Cuda(gpu) = backend else {
            bail!("--synthetic-weights needs a CUDA device (--device cuda)");
        };
        let config = crate::config::ModelConfig::from_file(path)?;
        let model =
            crate::gpu_model::GpuModel::synthetic(gpu.clone(), &config, self.synthetic_seed)?;
        Ok(Some(model))
    }

    /// Resolves `--device` (and checks `--synthetic-weights` has a GPU to run on).
    pub fn backend(&self) -> Result<Backend> {
        let backend = select_backend(self.device.as_deref())?;
        if self.synthetic_weights.is_some() && matches!(backend, Backend::Cpu) {
            bail!("--synthetic-weights needs a CUDA device (--device cuda)");
        }
        Ok(backend)
    }
}

/// The backend a `--device` value names (`None`: the default).
pub fn select_backend(device: Option<&str>) -> Result<Backend> {
    match device {
        None => default_backend(),
        Some("cpu") => Ok(Backend::Cpu),
        Some(other) => cuda_backend(other),
    }
}

/// `n` windows of `len` random token ids below `vocab` (for synthetic models), seeded.
pub fn random_windows(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut state = seed ^ 0x5851_F42D_4C95_7F2D;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % vocab as u64) as u32
    };
    (0..n).map(|_| (0..len).map(|_| next()).collect()).collect()
}

#[cfg(feature = "cuda")]
fn default_backend() -> Result<Backend> {
    use crate::backend::cuda::Gpu;
    if Gpu::available() {
        Ok(Backend::Cuda(std::sync::Arc::new(Gpu::new(0)?)))
    } else {
        Ok(Backend::Cpu)
    }
}

#[cfg(not(feature = "cuda"))]
fn default_backend() -> Result<Backend> {
    Ok(Backend::Cpu)
}

#[cfg(feature = "cuda")]
fn cuda_backend(device: &str) -> Result<Backend> {
    use crate::backend::cuda::Gpu;
    let Some(ordinal) = Gpu::parse_ordinal(device) else {
        bail!("unknown --device '{device}' (expected cpu, cuda or cuda:N)");
    };
    Ok(Backend::Cuda(std::sync::Arc::new(Gpu::new(ordinal)?)))
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(device: &str) -> Result<Backend> {
    if device == "cuda" || device.starts_with("cuda:") {
        bail!("this build has no CUDA support: rebuild with `cargo build --release --features cuda` (see README, GPU)");
    }
    bail!("unknown --device '{device}' (expected cpu, cuda or cuda:N)");
}
