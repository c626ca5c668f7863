//! Compute backends: the kernels the forward pass runs on (the CPU reference backend today).

pub mod cpu;
