//! twossp-engine: 2SSP structured pruning of LLMs with an exact CPU reference forward pass.

pub mod backend;
pub mod fsutil;
