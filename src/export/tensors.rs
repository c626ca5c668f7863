//! One output tensor as a recipe over the memory-mapped source: which rows and columns of which
//! source tensor (or zeros), in which dtype. Producing it touches only that tensor's bytes.

use crate::weights::{dtype_size, TensorStore};
use anyhow::{bail, Result};
use safetensors::Dtype;

/// How to build one output tensor from the source checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorJob {
    /// Output name (in the target format's naming).
    pub name: String,
    /// Output shape, row-major (a 1-D tensor has one column per row).
    pub shape: Vec<usize>,
    /// Source tensor, or `None` for an all-zero tensor.
    pub source: Option<String>,
    /// Source row of each output row (`None`: a zero row); `None` for all rows in order.
    pub rows: Option<Vec<Option<usize>>>,
    /// Source column of each output column (`None`: a zero column); `None` for all columns.
    pub cols: Option<Vec<Option<usize>>>,
    /// Add 1 to every value (Gemma's norms are stored as `1 + w` by llama.cpp).
    pub add_one: bool,
}

impl TensorJob {
    /// A whole source tensor under a (possibly new) name.
    pub fn whole(name: impl Into<String>, source: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            shape,
            source: Some(source.into()),
            rows: None,
            cols: None,
            add_one: false,
        }
    }

    /// An all-zero tensor.
    pub fn zeros(name: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            shape,
            source: None,
            rows: None,
            cols: None,
            add_one: false,
        }
    }

    /// Rows `rows` of `source` (each `None` a zero row).
    pub fn rows(
        name: impl Into<String>,
        source: impl Into<String>,
        rows: Vec<Option<usize>>,
        row_len: usize,
    ) -> Self {
        let mut shape = vec![rows.len()];
        if row_len != 1 {
            shape.push(row_len);
        }
        Self {
            rows: Some(rows),
            ..Self::whole(name, source, shape)
        }
    }

    /// Rows `start..end` of `source`.
    pub fn row_range(
        name: impl Into<String>,
        source: impl Into<String>,
        range: std::ops::Range<usize>,
        row_len: usize,
    ) -> Self {
        Self::rows(name, source, range.map(Some).collect(), row_len)
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Output rows and the length of each (1-D tensors: one element per row).
    fn rows_cols(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [n] => (*n, 1),
            [r, c] => (*r, *c),
            _ => (self.n_elements(), 1),
        }
    }

    /// The output's little-endian bytes in `dtype` (`None`: the source tensor's own dtype).
    pub fn produce(&self, store: &TensorStore, dtype: Option<Dtype>) -> Result<Vec<u8>> {
        let (rows, cols) = self.rows_cols();
        let Some(source) = &self.source else {
            let dtype = dtype.unwrap_or(Dtype::F32);
            let mut zero = Vec::new();
            encoder(dtype)?(self.offset(), &mut zero);
            return Ok(zero.repeat(rows * cols));
        };
        let raw = store.raw(source)?;
        let (src_rows, src_cols) = match raw.shape {
            [n] => (*n, 1),
            [r, c] => (*r, *c),
            s => bail!("tensor '{source}' has {}-D shape {s:?}", s.len()),
        };
        let out_dtype = dtype.unwrap_or(raw.dtype);
        let (in_size, out_size) = (dtype_size(raw.dtype)?, dtype_size(out_dtype)?);
        let check = |what: &str, sel: &Option<Vec<Option<usize>>>, n: usize, limit: usize| match sel
        {
            Some(s) if s.len() != n => bail!(
                "{what} selection of '{}' has {} entries for {n}",
                self.name,
                s.len()
            ),
            Some(s) if s.iter().flatten().any(|&j| j >= limit) => {
                bail!(
                    "{what} selection of '{}' reaches past the {limit} {what}s of '{source}'",
                    self.name
                )
            }
            None if n != limit => bail!(
                "'{}' needs {n} {what}s but '{source}' has {limit} (shape {:?})",
                self.name,
                raw.shape
            ),
            _ => Ok(()),
        };
        check("row", &self.rows, rows, src_rows)?;
        check("column", &self.cols, cols, src_cols)?;
        let decode = decoder(raw.dtype)?;
        let encode = encoder(out_dtype)?;
        let same = raw.dtype == out_dtype && !self.add_one;
        let mut out = Vec::with_capacity(rows * cols * out_size);
        for r in 0..rows {
            let src_row = match &self.rows {
                Some(sel) => sel[r],
                None => Some(r),
            };
            let Some(sr) = src_row else {
                out.extend(std::iter::repeat_n(0u8, cols * out_size));
                continue;
            };
            let row = &raw.bytes[sr * src_cols * in_size..(sr + 1) * src_cols * in_size];
            match &self.cols {
                None if same => out.extend_from_slice(row),
                None => row
                    .chunks_exact(in_size)
                    .for_each(|e| encode(decode(e) + self.offset(), &mut out)),
                Some(sel) => {
                    for c in sel {
                        match c {
                            Some(sc) => {
                                let e = &row[sc * in_size..(sc + 1) * in_size];
                                if same {
                                    out.extend_from_slice(e);
                                } else {
                                    encode(decode(e) + self.offset(), &mut out);
                                }
                            }
                            None => out.extend(std::iter::repeat_n(0u8, out_size)),
                        }
                    }
                }
            }
        }
        store.release(source);
        Ok(out)
    }

    fn offset(&self) -> f32 {
        if self.add_one {
            1.0
        } else {
            0.0
        }
    }
}

/// Reads one little-endian element of `dtype` as f32.
fn decoder(dtype: Dtype) -> Result<fn(&[u8]) -> f32> {
    Ok(match dtype {
        Dtype::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Dtype::BF16 => |b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        Dtype::F16 => |b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        other => bail!("unsupported source dtype {other:?} (supported: F32, F16, BF16)"),
    })
}

/// Appends one f32 as a little-endian element of `dtype` (round to nearest even).
pub(crate) fn encoder(dtype: Dtype) -> Result<fn(f32, &mut Vec<u8>)> {
    Ok(match dtype {
        Dtype::F32 => |v, out| out.extend_from_slice(&v.to_le_bytes()),
        Dtype::BF16 => {
            |v, out| out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes())
        }
        Dtype::F16 => {
            |v, out| out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
        }
        other => bail!("cannot write dtype {other:?}"),
    })
}

impl TensorJob {
    /// Appends `other`'s rows below this job's (both from the same source, or both zeros).
    pub fn append_rows(&mut self, other: TensorJob) -> Result<()> {
        if self.source != other.source || self.cols.is_some() || other.cols.is_some() {
            bail!("cannot fuse '{}' and '{}'", self.name, other.name);
        }
        let (r0, c) = self.rows_cols();
        let (r1, c1) = other.rows_cols();
        if c != c1 {
            bail!(
                "cannot fuse '{}' and '{}': row lengths differ",
                self.name,
                other.name
            );
        }
        if self.source.is_some() {
            let mine = self
                .rows
                .take()
                .unwrap_or_else(|| (0..r0).map(Some).collect());
            let theirs = other.rows.unwrap_or_else(|| (0..r1).map(Some).collect());
            self.rows = Some(mine.into_iter().chain(theirs).collect());
        }
        self.shape[0] = r0 + r1;
        Ok(())
    }
}
