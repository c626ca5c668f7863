//! Pruning edits on the device: FFNs compacted to the kept neurons (gather kernels into new, smaller
//! buffers; the old ones are freed) and attention submodules dropped.

use super::{padded_width, GpuFfn, GpuMatrix, GpuModel};
use crate::backend::cuda::kernels::{self, Gather};
use crate::backend::cuda::{Gpu, GpuBuffer};
use anyhow::Result;

impl GpuFfn {
    /// Lays an FFN built at its exact width (`padded == width`) out at the device width: the
    /// same gather as pruning, keeping every neuron, appends zero neurons. No-op when aligned.
    pub fn pad(&mut self, gpu: &Gpu) -> Result<()> {
        if padded_width(self.width) == self.padded {
            return Ok(());
        }
        self.keep_neurons(gpu, &(0..self.width).collect::<Vec<_>>())
    }

    /// Keeps neurons `kept` (indices into the current neurons, ascending) and frees the old buffers.
    pub fn keep_neurons(&mut self, gpu: &Gpu, kept: &[usize]) -> Result<()> {
        let hidden = self.down.rows;
        let (old_padded, new_padded) = (self.padded, padded_width(kept.len()));
        let idx: Vec<i32> = kept.iter().map(|&j| j as i32).collect();
        let up_idx: Vec<i32> = kept.iter().map(|&j| (old_padded + j) as i32).collect();
        // An empty keep set launches nothing; the placeholder only avoids an empty allocation.
        let device_indices = |v: &[i32]| gpu.upload(if v.is_empty() { &[0] } else { v });
        let (idx_dev, up_idx_dev) = (device_indices(&idx)?, device_indices(&up_idx)?);

        let gate_up = gpu.zeros::<u16>(2 * new_padded * hidden)?;
        let rows = |idx: &GpuBuffer<i32>, dst: u64| Gather {
            src: gpu.ptr(&self.gate_up.data, 0),
            ld_src: hidden,
            idx: gpu.ptr(idx, 0),
            n_idx: kept.len(),
            dst,
            ld_dst: hidden,
        };
        kernels::gather_rows(gpu, &rows(&idx_dev, gpu.ptr(&gate_up, 0)), hidden)?;
        kernels::gather_rows(
            gpu,
            &rows(&up_idx_dev, gpu.ptr(&gate_up, new_padded * hidden)),
            hidden,
        )?;
        let down = gpu.zeros::<u16>(hidden * new_padded)?;
        let cols = Gather {
            src: gpu.ptr(&self.down.data, 0),
            ld_src: old_padded,
            idx: gpu.ptr(&idx_dev, 0),
            n_idx: kept.len(),
            dst: gpu.ptr(&down, 0),
            ld_dst: new_padded,
        };
        kernels::gather_cols(gpu, &cols, hidden)?;
        if let Some(bias) = &self.gate_up_bias {
            let old = gpu.download(bias)?;
            let mut new = vec![0f32; 2 * new_padded];
            for (i, &j) in kept.iter().enumerate() {
                new[i] = old[j];
                new[new_padded + i] = old[old_padded + j];
            }
            self.gate_up_bias = Some(gpu.upload(&new)?);
        }
        gpu.sync()?; // the gathers must finish before the old buffers are freed
        self.gate_up = GpuMatrix {
            data: gate_up,
            rows: 2 * new_padded,
            cols: hidden,
        };
        self.down = GpuMatrix {
            data: down,
            rows: hidden,
            cols: new_padded,
        };
        self.width = kept.len();
        self.padded = new_padded;
        Ok(())
    }
}

impl GpuModel {
    /// Keeps, in every block, the listed FFN neurons (device memory of the rest is released).
    pub fn keep_ffn_neurons(&mut self, kept: &[Vec<usize>]) -> Result<()> {
        for ((block, spec), kept) in self
            .blocks
            .iter_mut()
            .zip(&mut self.config.blocks)
            .zip(kept)
        {
            if let Some(ffn) = &mut block.ffn {
                ffn.keep_neurons(&self.gpu, kept)?;
                spec.ffn_width = kept.len();
            }
        }
        Ok(())
    }

    /// Removes block `i`'s attention for good (its device buffers are freed).
    pub fn remove_attention(&mut self, i: usize) {
        self.config.blocks[i].attention = None;
        self.blocks[i].attention = None;
    }
}
