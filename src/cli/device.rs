//! `--device` and `--synthetic-weights`: where a command computes and what model it uses.

use crate::backend::cuda::Gpu;
use crate::weights::Precision;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

/// `--device` and `--dtype`, shared by the commands that load a real checkpoint only (`tasks`,
/// `generate`, `compare`).
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Backend: cpu, cuda or cuda:N [default: cuda when this build has CUDA and a GPU is present, else cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Precision of the matrices.
    #[command(flatten)]
    pub dtype: DtypeArg,
}

impl BackendArgs {
    /// The selected backend.
    pub fn backend(&self) -> Result<Backend> {
        select_backend(self.device.as_deref(), self.dtype.choice)
    }
}

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
    /// Precision of the matrices.
    #[command(flatten)]
    pub dtype: DtypeArg,
}

/// `--dtype`, shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct DtypeArg {
    /// Precision of the weight matrices on the CPU: auto (as the checkpoint stores them, like
    /// transformers' dtype="auto"), f32 (the exact reference), bf16 or f16. With bf16, products
    /// (and on AMX attention) take bf16 operands with f32 accumulation on AMX, or on AVX512-BF16
    /// where it measurably outruns f32 FMAs (AMD Zen 4/5); otherwise the weights are widened to
    /// f32 as they are used (f32 math on the bf16 weights). TWOSSP_BF16_KERNEL=amx|avx512bf16|widen
    /// caps the choice; norms, residuals, softmax and NLL stay f32. f16
    /// weights are widened to f32 as they are used. The CUDA backend always keeps bf16.
    #[arg(long = "dtype", default_value = "auto", value_parser = parse_dtype, value_name = "DTYPE")]
    pub choice: DtypeChoice,
}

/// A parsed `--dtype`: `None` is `auto`.
#[derive(Clone, Copy, Debug)]
pub struct DtypeChoice(pub Option<Precision>);

impl DtypeChoice {
    /// The dtype an output is written in (`None`: each tensor keeps the source's).
    pub fn stored(self) -> Option<safetensors::Dtype> {
        self.0.map(Precision::stored_dtype)
    }
}

fn parse_dtype(s: &str) -> Result<DtypeChoice> {
    Precision::parse_choice(s).map(DtypeChoice)
}

pub use crate::backend::Backend;

impl DeviceArgs {
    /// The `--synthetic-weights` model generated on the GPU, or `None` without the flag.
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
        let backend = select_backend(self.device.as_deref(), self.dtype.choice)?;
        if self.synthetic_weights.is_some() && matches!(backend, Backend::Cpu(_)) {
            bail!("--synthetic-weights needs a CUDA device (--device cuda)");
        }
        Ok(backend)
    }
}

/// The backend a `--device` value names (`None`: the default), keeping matrices at `dtype`.
pub fn select_backend(device: Option<&str>, dtype: DtypeChoice) -> Result<Backend> {
    let backend = match device {
        None => default_backend(dtype.0)?,
        Some("cpu") => Backend::Cpu(dtype.0),
        Some(other) => cuda_backend(other)?,
    };
    if let (false, Some(p @ (Precision::F32 | Precision::F16))) =
        (matches!(backend, Backend::Cpu(_)), dtype.0)
    {
        bail!(
            "--dtype {} runs on the CPU only: the CUDA backend keeps its matrices in bf16 (use --device cpu, or --dtype auto/bf16)",
            p.name()
        );
    }
    Ok(backend)
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

/// The GPU when one is present and `dtype` allows it, else the CPU.
fn default_backend(dtype: Option<Precision>) -> Result<Backend> {
    // An explicit f32/f16 choice is a CPU-only computation: it keeps the default on the CPU.
    if Gpu::available() && !matches!(dtype, Some(Precision::F32 | Precision::F16)) {
        Ok(Backend::Cuda(Arc::new(Gpu::new(0)?)))
    } else {
        Ok(Backend::Cpu(dtype))
    }
}

/// The GPU a `cuda` / `cuda:N` value names (an error in builds without CUDA).
fn cuda_backend(device: &str) -> Result<Backend> {
    let Some(ordinal) = crate::backend::parse_cuda_ordinal(device) else {
        bail!("unknown --device '{device}' (expected cpu, cuda or cuda:N)");
    };
    Ok(Backend::Cuda(Arc::new(Gpu::new(ordinal)?)))
}
