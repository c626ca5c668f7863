//! Model evaluation.

pub mod perplexity;
