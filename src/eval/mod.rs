//! Model evaluation.

pub mod perplexity;
pub mod tasks;
