//! Weight matrices kept at a chosen precision: f32, or 16-bit as a bf16/f16 checkpoint stores them.

use super::RawTensor;
use crate::backend::cpu::gemm;
use anyhow::{bail, Result};
use half::{bf16, f16};
use safetensors::Dtype;
use std::borrow::Cow;
use std::ops::Range;

/// The precision a model's matrices are kept in (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 4-byte floats (GGUF imports, f32 checkpoints, and the exact reference of any checkpoint).
    F32,
    /// bfloat16, as most HF checkpoints store their weights.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl Precision {
    /// Parses a `--dtype` value: `auto` (`None`: the checkpoint's own dtype), `f32`, `bf16`, `f16`,
    /// or their long PyTorch names.
    pub fn parse_choice(s: &str) -> Result<Option<Precision>> {
        Ok(match s {
            "auto" => None,
            "f32" | "float32" => Some(Precision::F32),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            "f16" | "float16" => Some(Precision::F16),
            other => bail!("unknown --dtype '{other}' (expected auto, f32, bf16 or f16)"),
        })
    }

    /// The precision of a stored dtype (`auto` resolves to it).
    pub fn of_stored(dtype: Dtype) -> Result<Precision> {
        Ok(match dtype {
            Dtype::F32 => Precision::F32,
            Dtype::BF16 => Precision::Bf16,
            Dtype::F16 => Precision::F16,
            other => bail!("unsupported dtype {other:?} (supported: F32, F16, BF16)"),
        })
    }

    /// Name as in `--dtype` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The safetensors dtype that stores this precision.
    pub fn stored_dtype(self) -> Dtype {
        match self {
            Precision::F32 => Dtype::F32,
            Precision::Bf16 => Dtype::BF16,
            Precision::F16 => Dtype::F16,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 | Precision::F16 => 2,
        }
    }
}

/// A row-major weight matrix's elements at their precision (the shape lives with the owner).
#[derive(Clone, Debug, PartialEq)]
pub enum Weights {
    /// f32 elements.
    F32(Vec<f32>),
    /// bf16 elements.
    Bf16(Vec<bf16>),
    /// f16 elements.
    F16(Vec<f16>),
}

/// Evaluates `$body` with `$v` bound to the element vector of any variant, and wraps a vector
/// result back into the same variant.
macro_rules! map_elems {
    ($w:expr, $v:ident => $body:expr) => {
        match $w {
            Weights::F32($v) => Weights::F32($body),
            Weights::Bf16($v) => Weights::Bf16($body),
            Weights::F16($v) => Weights::F16($body),
        }
    };
}

/// Evaluates `$body` with `$v` bound to the element vector of any variant.
macro_rules! with_elems {
    ($w:expr, $v:ident => $body:expr) => {
        match $w {
            Weights::F32($v) => $body,
            Weights::Bf16($v) => $body,
            Weights::F16($v) => $body,
        }
    };
}

impl Weights {
    /// A stored tensor at `precision`: copied as it is when the dtypes agree, else converted
    /// (widening is exact; narrowing rounds to nearest even, as PyTorch's `.to()` does).
    pub fn from_raw(raw: &RawTensor<'_>, precision: Precision) -> Result<Weights> {
        let stored = Precision::of_stored(raw.dtype)?;
        let halves = || -> Vec<u16> {
            raw.bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        };
        Ok(match (stored, precision) {
            (_, Precision::F32) => Weights::F32(super::widen(raw.bytes, raw.dtype)?),
            (Precision::Bf16, Precision::Bf16) => {
                Weights::Bf16(halves().into_iter().map(bf16::from_bits).collect())
            }
            (Precision::F16, Precision::F16) => {
                Weights::F16(halves().into_iter().map(f16::from_bits).collect())
            }
            (_, Precision::Bf16) => Weights::Bf16(
                super::widen(raw.bytes, raw.dtype)?
                    .into_iter()
                    .map(bf16::from_f32)
                    .collect(),
            ),
            (_, Precision::F16) => Weights::F16(
                super::widen(raw.bytes, raw.dtype)?
                    .into_iter()
                    .map(f16::from_f32)
                    .collect(),
            ),
        })
    }

    /// f32 elements kept at `precision` (narrowing rounds to nearest even).
    pub fn from_f32(v: Vec<f32>, precision: Precision) -> Weights {
        match precision {
            Precision::F32 => Weights::F32(v),
            Precision::Bf16 => Weights::Bf16(v.into_iter().map(bf16::from_f32).collect()),
            Precision::F16 => Weights::F16(v.into_iter().map(f16::from_f32).collect()),
        }
    }

    /// The precision the elements are kept in.
    pub fn precision(&self) -> Precision {
        match self {
            Weights::F32(_) => Precision::F32,
            Weights::Bf16(_) => Precision::Bf16,
            Weights::F16(_) => Precision::F16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_elems!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the elements occupy.
    pub fn n_bytes(&self) -> u64 {
        (self.len() * self.precision().size()) as u64
    }

    /// The elements as f32: borrowed when they are f32, widened otherwise.
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Weights::F32(v) => Cow::Borrowed(v),
            other => {
                let mut out = vec![0f32; other.len()];
                with_elems!(other, v => gemm::Elem::widen_into(v, &mut out));
                Cow::Owned(out)
            }
        }
    }

    /// Widens the elements `range` into `dst` (same length).
    pub fn widen_range_into(&self, range: Range<usize>, dst: &mut [f32]) {
        with_elems!(self, v => gemm::Elem::widen_into(&v[range], dst));
    }

    /// True when every element of `range` is zero (either sign).
    pub fn all_zero(&self, range: Range<usize>) -> bool {
        with_elems!(self, v => all_default(&v[range]))
    }

    /// `y[m x n] = x[m x k] · selfᵀ (+ bias)` with `self` as `[n, k]`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        m: usize,
        n: usize,
        k: usize,
    ) {
        with_elems!(self, v => gemm::linear(x, v, bias, y, m, n, k));
    }

    /// The rows `rows` (in order) of `self` as `[_, k]`.
    pub fn select_rows(&self, rows: &[usize], k: usize) -> Weights {
        map_elems!(self, v => rows.iter().flat_map(|&r| v[r * k..(r + 1) * k].iter().copied()).collect())
    }

    /// The columns `cols` (in order) of `self` as `[out, k]`.
    pub fn select_cols(&self, out: usize, k: usize, cols: &[usize]) -> Weights {
        map_elems!(self, v => (0..out).flat_map(|r| cols.iter().map(move |&c| v[r * k + c])).collect())
    }

    /// The matrices stacked (rows in order); all must share one precision.
    pub fn concat(parts: &[&Weights]) -> Weights {
        fn stack<'a, T: Copy + 'a>(parts: impl Iterator<Item = Option<&'a Vec<T>>>) -> Vec<T> {
            parts
                .flat_map(|p| p.expect("concat: mixed precisions").iter().copied())
                .collect()
        }
        let all = parts.iter();
        match parts[0] {
            Weights::F32(_) => Weights::F32(stack(all.map(|p| match p {
                Weights::F32(v) => Some(v),
                _ => None,
            }))),
            Weights::Bf16(_) => Weights::Bf16(stack(all.map(|p| match p {
                Weights::Bf16(v) => Some(v),
                _ => None,
            }))),
            Weights::F16(_) => Weights::F16(stack(all.map(|p| match p {
                Weights::F16(v) => Some(v),
                _ => None,
            }))),
        }
    }
}

/// True when every element equals the type's zero (`-0.0 == 0.0`).
fn all_default<T: Copy + Default + PartialEq>(v: &[T]) -> bool {
    let zero = T::default();
    v.iter().all(|&x| x == zero)
}
