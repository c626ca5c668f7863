//! SliceGPT's PCA of the residual stream at one site, as its authors compute it: `H = Σ XᵀX` over
//! every calibration token in f64, damped by 1 % of its mean diagonal, and its eigenvectors by
//! descending eigenvalue (faer's self-adjoint eigensolver).

use anyhow::{anyhow, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};
use serde::Serialize;

/// Rows of a residual stream widened to f64 at a time.
const ROWS_PER_CHUNK: usize = 1024;

/// `H = Σ XᵀX` of one site, accumulated window by window.
pub struct Covariance {
    h: Mat<f64>,
}

/// The principal directions at one site.
pub struct Pca {
    /// Eigenvalues of the damped `H`, descending.
    pub eigenvalues: Vec<f64>,
    /// Their eigenvectors as columns, in the same order (`[dim, dim]`, orthogonal).
    pub basis: Mat<f64>,
}

/// How much of a site's signal the kept directions hold (reported per site).
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedVariance {
    /// `embeddings`, `layer{i}.attn_out_residual` or `layer{i}.layer_out`.
    pub site: String,
    /// Directions kept.
    pub kept_dims: usize,
    /// Sum of all eigenvalues of the damped `H`.
    pub eig_sum_total: f64,
    /// Sum of the kept (largest) ones.
    pub eig_sum_kept: f64,
    /// `eig_sum_kept / eig_sum_total`.
    pub fraction_kept: f64,
}

impl Covariance {
    /// An empty accumulator for rows of `dim` values.
    pub fn new(dim: usize) -> Self {
        Self {
            h: Mat::zeros(dim, dim),
        }
    }

    /// Adds the rows of `x` (`[rows, dim]`, f32) in f64.
    pub fn add(&mut self, x: &[f32]) {
        let dim = self.h.nrows();
        for chunk in x.chunks(ROWS_PER_CHUNK * dim) {
            let rows = chunk.len() / dim;
            let wide: Vec<f64> = chunk.iter().map(|&v| v as f64).collect();
            let xm = MatRef::from_row_major_slice(&wide, rows, dim);
            matmul(
                self.h.as_mut(),
                Accum::Add,
                xm.transpose(),
                xm,
                1.0,
                Par::rayon(0),
            );
        }
    }

    /// The damped `H`'s eigen-decomposition, largest eigenvalue first.
    pub fn pca(mut self) -> Result<Pca> {
        let dim = self.h.nrows();
        let damp = 0.01 * (0..dim).map(|i| self.h[(i, i)]).sum::<f64>() / dim as f64;
        for i in 0..dim {
            self.h[(i, i)] += damp;
        }
        let eigen = self
            .h
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| anyhow!("SliceGPT's eigen-decomposition failed: {e:?}"))?;
        let values = eigen.S().column_vector();
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let vectors = eigen.U();
        Ok(Pca {
            eigenvalues: order.iter().map(|&k| values[k]).collect(),
            basis: Mat::from_fn(dim, dim, |r, c| vectors[(r, order[c])]),
        })
    }
}

impl Pca {
    /// The share of the signal in the first `kept` directions, named `site`.
    pub fn explained(&self, site: String, kept: usize) -> ExplainedVariance {
        let total: f64 = self.eigenvalues.iter().sum();
        let kept_sum: f64 = self.eigenvalues[..kept].iter().sum();
        ExplainedVariance {
            site,
            kept_dims: kept,
            eig_sum_total: total,
            eig_sum_kept: kept_sum,
            fraction_kept: kept_sum / total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points along known orthogonal directions (5x spread along (1,1,0)/√2, 0.5x along (0,0,1)):
    /// PCA finds them in order of spread.
    #[test]
    fn finds_directions_by_spread() {
        let dim = 3;
        let mut x = Vec::new();
        // Each point lies on one direction, so the two are exactly uncorrelated.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        for t in 0..200 {
            let sign = if t % 4 < 2 { 1.0 } else { -1.0 };
            if t % 2 == 0 {
                x.extend_from_slice(&[5.0 * s * sign, 5.0 * s * sign, 0.0]);
            } else {
                x.extend_from_slice(&[0.0, 0.0, 0.5 * sign]);
            }
        }
        let mut cov = Covariance::new(dim);
        cov.add(&x);
        let pca = cov.pca().unwrap();
        assert!(pca.eigenvalues[0] > pca.eigenvalues[1] && pca.eigenvalues[1] > pca.eigenvalues[2]);
        let first = pca.basis.col(0);
        assert!((first[0].abs() - 0.5f64.sqrt()).abs() < 1e-6 && first[2].abs() < 1e-6);
        assert!((pca.basis.col(1)[2].abs() - 1.0).abs() < 1e-6);
        let e = pca.explained("s".into(), 2);
        assert!(e.fraction_kept > 0.99 && e.fraction_kept < 1.0);
    }
}
