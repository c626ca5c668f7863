//! twossp-engine: 2SSP structured pruning of LLMs with an exact CPU reference forward pass.

pub mod fsutil;
pub mod gguf;
