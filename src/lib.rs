//! twossp-engine: 2SSP structured pruning of LLMs with an exact CPU reference forward pass.

pub mod arch;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod engine;
pub mod eval;
pub mod export;
pub mod fsutil;
pub mod fuzzing;
pub mod generate;
pub mod gguf;
#[cfg_attr(not(feature = "cuda"), path = "gpu_model/no_cuda.rs")]
pub mod gpu_model;
pub mod limits;
pub mod model;
pub mod parallel;
pub mod progress;
pub mod prune;
pub mod tokenizer;
pub mod weights;
