//! Compute backends: the CPU reference backend and, with the `cuda` feature, the CUDA backend.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

/// The backend a command runs on.
pub enum Backend {
    /// The CPU reference backend, keeping matrices at this precision (`None`: the checkpoint's).
    Cpu(Option<crate::weights::Precision>),
    /// A GPU.
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<cuda::Gpu>),
}

impl Backend {
    /// Name for reports: `cpu` or the GPU's name.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu(None) => "cpu".into(),
            Backend::Cpu(Some(p)) => format!("cpu ({})", p.name()),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu) => format!("cuda ({})", gpu.name()),
        }
    }

    /// The precision a model of the checkpoint folder `dir` is kept in on this backend.
    pub fn precision_for(
        &self,
        dir: &std::path::Path,
    ) -> anyhow::Result<crate::weights::Precision> {
        match self {
            Backend::Cpu(Some(p)) => Ok(*p),
            Backend::Cpu(None) => crate::weights::TensorStore::open(dir)?.native_precision(),
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) => Ok(crate::weights::Precision::Bf16),
        }
    }

    /// Perplexity of the checkpoint folder `dir` on `windows`, loaded on this backend.
    pub fn folder_perplexity(
        &self,
        dir: &std::path::Path,
        windows: &[&[u32]],
    ) -> anyhow::Result<f64> {
        use crate::eval::perplexity::perplexity_with;
        match self {
            Backend::Cpu(dtype) => {
                let model = crate::model::Model::load_as(dir, *dtype)?;
                let mut ws = crate::model::Workspace::default();
                Ok(perplexity_with(windows, "verify", |w| model.window_nll(w, &mut ws))?.ppl)
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu) => {
                let model = crate::gpu_model::GpuModel::load(gpu.clone(), dir)?;
                model.perplexity(windows)
            }
        }
    }
}
