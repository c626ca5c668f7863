//! Rotary position embedding settings and their inverse frequencies, computed as HF transformers does (f32).

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How the base inverse frequencies are rescaled.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: f32,
    },
}

/// Rotary embedding of one attention submodule.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    /// Base `theta`.
    pub theta: f32,
    /// Number of leading head dimensions that rotate (the rest pass through).
    pub rotary_dim: usize,
    /// Frequency rescaling.
    pub scaling: RopeScaling,
}

impl RopeSpec {
    /// Parses an HF rope description (`rope_parameters` entry or v4 `rope_scaling`) around a known theta.
    pub fn from_hf(theta: f32, rotary_dim: usize, params: Option<&Value>) -> Result<Self> {
        let scaling = match params {
            None | Some(Value::Null) => RopeScaling::None,
            Some(p) => {
                let kind = p
                    .get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let num = |key: &str| -> Result<f32> {
                    p.get(key)
                        .and_then(Value::as_f64)
                        .map(|v| v as f32)
                        .with_context(|| format!("rope type '{kind}' needs a numeric '{key}'"))
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: num("factor")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position: num("original_max_position_embeddings")?,
                    },
                    other => bail!(
                        "unsupported rope type '{other}' (supported: default, linear, llama3)"
                    ),
                }
            }
        };
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
            bail!("rotary dimension must be even and positive, got {rotary_dim}");
        }
        Ok(Self {
            theta,
            rotary_dim,
            scaling,
        })
    }

    /// Inverse frequencies, one per rotated pair, in the same f32 arithmetic as HF transformers.
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.rotary_dim;
        let base: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0f32 / self.theta.powf((2 * i) as f32 / dim as f32))
            .collect();
        match self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }
}
