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

    /// What the arithmetic of a model of the checkpoint folder `dir` is on this backend: the
    /// device, the precision its matrices are kept in and, on the CPU, the kernels that multiply
    /// them (scores computed otherwise differ, so the resumable cache keys on this).
    pub fn computation(&self, dir: &std::path::Path) -> anyhow::Result<String> {
        let precision = match self {
            Backend::Cpu(Some(p)) => *p,
            Backend::Cpu(None) => crate::weights::TensorStore::open(dir)?.native_precision()?,
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) => return Ok(format!("{} bf16", self.describe())),
        };
        Ok(format!("cpu: {}", cpu::kernels_for(precision)))
    }

    /// Perplexity of the checkpoint folder `dir` on `windows`, loaded on this backend.
    pub fn folder_perplexity(
        &self,
        dir: &std::path::Path,
        windows: &[&[u32]],
    ) -> anyhow::Result<f64> {
        use crate::engine::{Engine, EngineJob};
        struct Verify<'a>(&'a [&'a [u32]]);
        impl EngineJob for Verify<'_> {
            type Output = f64;
            fn run<E: Engine>(self, model: E) -> anyhow::Result<f64> {
                model.perplexity(self.0, "verify")
            }
        }
        self.with_model(dir, Verify(windows))
    }
}
