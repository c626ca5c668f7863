//! Writing models back to disk as HF checkpoint folders.

pub mod checkpoint;
