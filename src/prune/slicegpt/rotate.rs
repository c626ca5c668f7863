//! The weight edits of SliceGPT, each in f64 and rounded once to the model's precision: folding
//! RMSNorm scales into the next linear layers, centring the embeddings, and rotating a matrix's
//! input (`W·Q[:, :k]`) or output (`Q[:, :k]ᵀ·W`) side into a PCA basis while slicing it to `k`.

use crate::model::Linear;
use crate::weights::Weights;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// Rows of a matrix widened to f64 at a time (bounds the memory of the embedding's rotation).
const ROWS_PER_CHUNK: usize = 4096;

/// `W·Q` for `W` `[rows, q.nrows()]`: every row rotated (and sliced to `q.ncols()`).
pub fn rotate_input(w: &Weights, q: MatRef<'_, f64>) -> Weights {
    let (cols, k) = (q.nrows(), q.ncols());
    let src = w.to_f32();
    let mut out = Vec::with_capacity(src.len() / cols * k);
    for chunk in src.chunks(ROWS_PER_CHUNK * cols) {
        let rows = chunk.len() / cols;
        let wide: Vec<f64> = chunk.iter().map(|&v| v as f64).collect();
        let mut product = Mat::<f64>::zeros(rows, k);
        matmul(
            product.as_mut(),
            Accum::Replace,
            MatRef::from_row_major_slice(&wide, rows, cols),
            q,
            1.0,
            Par::rayon(0),
        );
        out.extend(
            (0..rows)
                .flat_map(|r| (0..k).map(move |c| (r, c)))
                .map(|(r, c)| product[(r, c)] as f32),
        );
    }
    Weights::from_f32(out, w.precision())
}

/// `Qᵀ·W` for `W` `[q.nrows(), cols]` (and its bias): the output side rotated, sliced to
/// `q.ncols()` rows.
pub fn rotate_output(linear: &mut Linear, q: MatRef<'_, f64>) {
    let (rows, cols, k) = (q.nrows(), linear.in_dim, q.ncols());
    let wide: Vec<f64> = linear.weight.to_f32().iter().map(|&v| v as f64).collect();
    let mut product = Mat::<f64>::zeros(k, cols);
    matmul(
        product.as_mut(),
        Accum::Replace,
        q.transpose(),
        MatRef::from_row_major_slice(&wide, rows, cols),
        1.0,
        Par::rayon(0),
    );
    let out = (0..k)
        .flat_map(|r| (0..cols).map(move |c| (r, c)))
        .map(|(r, c)| product[(r, c)] as f32)
        .collect();
    linear.weight = Weights::from_f32(out, linear.weight.precision());
    linear.bias = linear.bias.as_ref().map(|b| {
        (0..k)
            .map(|c| (0..rows).map(|r| q[(r, c)] * b[r] as f64).sum::<f64>() as f32)
            .collect()
    });
    linear.out_dim = k;
}

/// `W·diag(γ)`: a preceding RMSNorm's scale folded into the columns of `W` `[_, γ.len()]`.
pub fn fold_scale(w: &Weights, gamma: &[f32]) -> Weights {
    let cols = gamma.len();
    let out = w
        .to_f32()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v as f64 * gamma[i % cols] as f64) as f32)
        .collect();
    Weights::from_f32(out, w.precision())
}

/// Every row of `W` `[_, cols]` minus its mean (SliceGPT centres the embeddings).
pub fn center_rows(w: &Weights, cols: usize) -> Weights {
    let src = w.to_f32();
    let out = src
        .chunks(cols)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            row.iter().map(move |&v| (v as f64 - mean) as f32)
        })
        .collect();
    Weights::from_f32(out, w.precision())
}

/// `A·B` of two f64 matrices.
pub fn product(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::rayon(0));
    out
}

/// A shortcut matrix `M` (the residual becomes `x·M`) as a linear layer (`[out, in]` = `Mᵀ`).
pub fn shortcut(m: MatRef<'_, f64>, precision: crate::weights::Precision) -> Linear {
    let (w_in, w_out) = (m.nrows(), m.ncols());
    let weight = (0..w_out)
        .flat_map(|o| (0..w_in).map(move |i| (i, o)))
        .map(|(i, o)| m[(i, o)] as f32)
        .collect();
    Linear {
        weight: Weights::from_f32(weight, precision),
        bias: None,
        out_dim: w_out,
        in_dim: w_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Precision;

    fn linear(rows: usize, cols: usize) -> Linear {
        Linear {
            weight: Weights::F32((0..rows * cols).map(|i| (i as f32 * 0.7).sin()).collect()),
            bias: Some((0..rows).map(|i| i as f32).collect()),
            out_dim: rows,
            in_dim: cols,
        }
    }

    /// A rotation of the input side, undone by its transpose, gives the matrix back; the output
    /// side rotates the bias with the rows.
    #[test]
    fn rotations_compose_as_matrices() {
        let q = Mat::<f64>::from_fn(3, 3, |r, c| {
            let (s, co) = (0.6f64, 0.8f64);
            [[co, -s, 0.0], [s, co, 0.0], [0.0, 0.0, 1.0]][r][c]
        });
        let l = linear(2, 3);
        let there = rotate_input(&l.weight, q.as_ref());
        let back = rotate_input(&there, q.transpose());
        let (a, b) = (l.weight.to_f32(), back.to_f32());
        assert!(a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() < 1e-6));

        let mut o = linear(3, 2);
        rotate_output(&mut o, q.as_ref().subcols(0, 2));
        assert_eq!((o.out_dim, o.weight.len()), (2, 4));
        let bias = o.bias.unwrap();
        assert!((bias[0] - (0.0 * 0.8 + 1.0 * 0.6)).abs() < 1e-6);
        assert!((bias[1] - (0.0 * -0.6 + 1.0 * 0.8)).abs() < 1e-6);
        let sc = shortcut(q.as_ref(), Precision::F32);
        assert_eq!(sc.weight.to_f32()[1], q[(1, 0)] as f32);
    }
}
