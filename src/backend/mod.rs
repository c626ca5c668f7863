//! Compute backends: the CPU reference backend and, with the `cuda` feature, the CUDA backend
//! (without it, `cuda` holds stand-ins that cannot be constructed, so call sites need no `cfg`).

pub mod cpu;
#[cfg_attr(not(feature = "cuda"), path = "no_cuda.rs")]
pub mod cuda;

/// The backend a command runs on.
pub enum Backend {
    /// The CPU reference backend, keeping matrices at this precision (`None`: the checkpoint's).
    Cpu(Option<crate::weights::Precision>),
    /// A GPU.
    Cuda(std::sync::Arc<cuda::Gpu>),
}

impl Backend {
    /// Name for reports: `cpu` or the GPU's name.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu(None) => "cpu".into(),
            Backend::Cpu(Some(p)) => format!("cpu ({})", p.name()),
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
            Backend::Cuda(_) => return Ok(format!("{} bf16", self.describe())),
        };
        Ok(format!("cpu: {}", cpu::kernels_for(precision)))
    }

    /// Why this backend cannot run a model of `config` (`None`: it can).
    pub fn refuses(&self, config: &crate::config::ModelConfig) -> Option<String> {
        match self {
            Backend::Cpu(_) => None,
            Backend::Cuda(_) => crate::gpu_model::check_supported(config)
                .err()
                .map(|e| e.to_string()),
        }
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

/// `cuda` or `cuda:N` as given to `--device`; `None` when the string names no CUDA device.
pub fn parse_cuda_ordinal(device: &str) -> Option<usize> {
    match device {
        "cuda" => Some(0),
        _ => device.strip_prefix("cuda:")?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_cuda_ordinal;

    #[test]
    fn device_names_parse() {
        assert_eq!(parse_cuda_ordinal("cuda"), Some(0));
        assert_eq!(parse_cuda_ordinal("cuda:3"), Some(3));
        assert_eq!(parse_cuda_ordinal("cuda:x"), None);
        assert_eq!(parse_cuda_ordinal("gpu"), None);
    }
}
