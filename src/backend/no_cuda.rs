//! The CUDA device in builds without the `cuda` feature: a type with no values (as candle's dummy
//! CUDA backend), so code that names it compiles everywhere and asking for one says how to get it.

use anyhow::{bail, Result};

/// A GPU: none can exist in this build.
pub enum Gpu {}

impl Gpu {
    /// Whether a GPU can be used: never in this build.
    pub fn available() -> bool {
        false
    }

    /// Refuses: this build has no CUDA support.
    pub fn new(_ordinal: usize) -> Result<Self> {
        bail!("this build has no CUDA support: rebuild with `cargo build --release --features cuda` (see README, GPU)")
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        match *self {}
    }
}
