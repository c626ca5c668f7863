//! Streaming GGUF v3 writer: typed metadata, tensor infos with aligned offsets, then each tensor's
//! bytes produced one at a time by a callback, so that only one tensor is ever held in memory.
//!
//! Layout written (all integers little-endian):
//! `"GGUF"`, version `u32` 3, tensor count `u64`, metadata count `u64`, the key/values
//! (key string, value type `u32`, value), the tensor infos (name string, `n_dims` `u32`, the GGML
//! dimensions `u64` fastest first, ggml type `u32`, offset `u64` relative to the data section),
//! zero padding to the alignment, then the tensor data, each tensor padded to the alignment.
//! Strings are a `u64` byte length followed by the UTF-8 bytes.

use super::dequant::GgmlType;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// GGUF format version written.
pub const GGUF_VERSION: u32 = 3;
/// Data alignment llama.cpp assumes when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Metadata key holding a non-default data alignment (must be a `u32`).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Longest tensor name ggml accepts (`GGML_MAX_NAME` is 64 including the terminating NUL).
pub const MAX_TENSOR_NAME: usize = 63;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;

/// On-disk metadata value type ids (`gguf_type`).
pub mod value_type {
    /// `u8`.
    pub const U8: u32 = 0;
    /// `i8`.
    pub const I8: u32 = 1;
    /// `u16`.
    pub const U16: u32 = 2;
    /// `i16`.
    pub const I16: u32 = 3;
    /// `u32`.
    pub const U32: u32 = 4;
    /// `i32`.
    pub const I32: u32 = 5;
    /// `f32`.
    pub const F32: u32 = 6;
    /// `bool` (one byte, 0 or 1).
    pub const BOOL: u32 = 7;
    /// UTF-8 string.
    pub const STRING: u32 = 8;
    /// Homogeneous array.
    pub const ARRAY: u32 = 9;
    /// `u64`.
    pub const U64: u32 = 10;
    /// `i64`.
    pub const I64: u32 = 11;
    /// `f64`.
    pub const F64: u32 = 12;
}

/// A homogeneous metadata array; the variant fixes the on-disk element type.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    /// Array of `u8`.
    U8(Vec<u8>),
    /// Array of `i8`.
    I8(Vec<i8>),
    /// Array of `u16`.
    U16(Vec<u16>),
    /// Array of `i16`.
    I16(Vec<i16>),
    /// Array of `u32`.
    U32(Vec<u32>),
    /// Array of `i32`.
    I32(Vec<i32>),
    /// Array of `u64`.
    U64(Vec<u64>),
    /// Array of `i64`.
    I64(Vec<i64>),
    /// Array of `f32`.
    F32(Vec<f32>),
    /// Array of `f64`.
    F64(Vec<f64>),
    /// Array of `bool`.
    Bool(Vec<bool>),
    /// Array of strings.
    Str(Vec<String>),
}

impl GgufArray {
    /// On-disk type id of the elements.
    pub fn elem_type(&self) -> u32 {
        use value_type as t;
        match self {
            GgufArray::U8(_) => t::U8,
            GgufArray::I8(_) => t::I8,
            GgufArray::U16(_) => t::U16,
            GgufArray::I16(_) => t::I16,
            GgufArray::U32(_) => t::U32,
            GgufArray::I32(_) => t::I32,
            GgufArray::U64(_) => t::U64,
            GgufArray::I64(_) => t::I64,
            GgufArray::F32(_) => t::F32,
            GgufArray::F64(_) => t::F64,
            GgufArray::Bool(_) => t::BOOL,
            GgufArray::Str(_) => t::STRING,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::Str(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One metadata value with its explicit on-disk type (llama.cpp checks key types strictly).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Homogeneous array.
    Array(GgufArray),
}

impl GgufValue {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Self {
        GgufValue::Str(s.into())
    }

    /// An array of strings.
    pub fn str_array<I, S>(items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        GgufValue::Array(GgufArray::Str(items.into_iter().map(Into::into).collect()))
    }

    /// An array of `u8`.
    pub fn u8_array(v: Vec<u8>) -> Self {
        GgufValue::Array(GgufArray::U8(v))
    }

    /// An array of `i8`.
    pub fn i8_array(v: Vec<i8>) -> Self {
        GgufValue::Array(GgufArray::I8(v))
    }

    /// An array of `u16`.
    pub fn u16_array(v: Vec<u16>) -> Self {
        GgufValue::Array(GgufArray::U16(v))
    }

    /// An array of `i16`.
    pub fn i16_array(v: Vec<i16>) -> Self {
        GgufValue::Array(GgufArray::I16(v))
    }

    /// An array of `u32`.
    pub fn u32_array(v: Vec<u32>) -> Self {
        GgufValue::Array(GgufArray::U32(v))
    }

    /// An array of `i32`.
    pub fn i32_array(v: Vec<i32>) -> Self {
        GgufValue::Array(GgufArray::I32(v))
    }

    /// An array of `u64`.
    pub fn u64_array(v: Vec<u64>) -> Self {
        GgufValue::Array(GgufArray::U64(v))
    }

    /// An array of `i64`.
    pub fn i64_array(v: Vec<i64>) -> Self {
        GgufValue::Array(GgufArray::I64(v))
    }

    /// An array of `f32`.
    pub fn f32_array(v: Vec<f32>) -> Self {
        GgufValue::Array(GgufArray::F32(v))
    }

    /// An array of `f64`.
    pub fn f64_array(v: Vec<f64>) -> Self {
        GgufValue::Array(GgufArray::F64(v))
    }

    /// An array of `bool`.
    pub fn bool_array(v: Vec<bool>) -> Self {
        GgufValue::Array(GgufArray::Bool(v))
    }

    /// On-disk type id of the value (`value_type::ARRAY` for arrays).
    pub fn type_id(&self) -> u32 {
        use value_type as t;
        match self {
            GgufValue::U8(_) => t::U8,
            GgufValue::I8(_) => t::I8,
            GgufValue::U16(_) => t::U16,
            GgufValue::I16(_) => t::I16,
            GgufValue::U32(_) => t::U32,
            GgufValue::I32(_) => t::I32,
            GgufValue::U64(_) => t::U64,
            GgufValue::I64(_) => t::I64,
            GgufValue::F32(_) => t::F32,
            GgufValue::F64(_) => t::F64,
            GgufValue::Bool(_) => t::BOOL,
            GgufValue::Str(_) => t::STRING,
            GgufValue::Array(_) => t::ARRAY,
        }
    }

    /// Serialized size in bytes of the value (without key and type id).
    fn encoded_len(&self) -> u64 {
        match self {
            GgufValue::U8(_) | GgufValue::I8(_) | GgufValue::Bool(_) => 1,
            GgufValue::U16(_) | GgufValue::I16(_) => 2,
            GgufValue::U32(_) | GgufValue::I32(_) | GgufValue::F32(_) => 4,
            GgufValue::U64(_) | GgufValue::I64(_) | GgufValue::F64(_) => 8,
            GgufValue::Str(s) => 8 + s.len() as u64,
            GgufValue::Array(a) => {
                let n = a.len() as u64;
                12 + match a {
                    GgufArray::U8(_) | GgufArray::I8(_) | GgufArray::Bool(_) => n,
                    GgufArray::U16(_) | GgufArray::I16(_) => 2 * n,
                    GgufArray::U32(_) | GgufArray::I32(_) | GgufArray::F32(_) => 4 * n,
                    GgufArray::U64(_) | GgufArray::I64(_) | GgufArray::F64(_) => 8 * n,
                    GgufArray::Str(v) => v.iter().map(|s| 8 + s.len() as u64).sum(),
                }
            }
        }
    }

    /// Appends the serialized value (without key and type id) to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            GgufValue::U8(v) => out.push(*v),
            GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::Bool(v) => out.push(*v as u8),
            GgufValue::Str(s) => put_str(out, s),
            GgufValue::Array(a) => {
                out.extend_from_slice(&a.elem_type().to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                fn each<T: Copy, const N: usize>(
                    out: &mut Vec<u8>,
                    v: &[T],
                    f: impl Fn(T) -> [u8; N],
                ) {
                    for &x in v {
                        out.extend_from_slice(&f(x));
                    }
                }
                match a {
                    GgufArray::U8(v) => out.extend_from_slice(v),
                    GgufArray::I8(v) => each(out, v, i8::to_le_bytes),
                    GgufArray::U16(v) => each(out, v, u16::to_le_bytes),
                    GgufArray::I16(v) => each(out, v, i16::to_le_bytes),
                    GgufArray::U32(v) => each(out, v, u32::to_le_bytes),
                    GgufArray::I32(v) => each(out, v, i32::to_le_bytes),
                    GgufArray::U64(v) => each(out, v, u64::to_le_bytes),
                    GgufArray::I64(v) => each(out, v, i64::to_le_bytes),
                    GgufArray::F32(v) => each(out, v, f32::to_le_bytes),
                    GgufArray::F64(v) => each(out, v, f64::to_le_bytes),
                    GgufArray::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
                    GgufArray::Str(v) => {
                        for s in v {
                            put_str(out, s);
                        }
                    }
                }
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Element type of a written tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorDtype {
    /// 32-bit float (ggml type 0).
    F32,
    /// IEEE half (ggml type 1).
    F16,
    /// bfloat16 (ggml type 30).
    BF16,
}

impl TensorDtype {
    /// The ggml type id.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            TensorDtype::F32 => GgmlType::F32,
            TensorDtype::F16 => GgmlType::F16,
            TensorDtype::BF16 => GgmlType::BF16,
        }
    }

    /// Bytes per element.
    pub fn elem_size(self) -> u64 {
        match self {
            TensorDtype::F32 => 4,
            TensorDtype::F16 | TensorDtype::BF16 => 2,
        }
    }

    /// Upper-case name as llama.cpp prints it ("F32", "F16", "BF16").
    pub fn name(self) -> &'static str {
        match self {
            TensorDtype::F32 => "F32",
            TensorDtype::F16 => "F16",
            TensorDtype::BF16 => "BF16",
        }
    }
}

/// Declaration of one tensor to write.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDecl {
    /// GGUF tensor name ("blk.0.attn_q.weight"), at most 63 bytes.
    pub name: String,
    /// Shape in PyTorch order (slowest first); written reversed as GGML dims. An empty shape is a scalar, written as `[1]`.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: TensorDtype,
}

impl TensorDecl {
    /// A declaration from its parts.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, dtype: TensorDtype) -> Self {
        Self {
            name: name.into(),
            shape,
            dtype,
        }
    }

    /// GGML dimensions (fastest first), `[1]` for a scalar.
    pub fn ggml_dims(&self) -> Vec<u64> {
        if self.shape.is_empty() {
            vec![1]
        } else {
            self.shape.iter().rev().map(|&d| d as u64).collect()
        }
    }

    /// Number of elements, or `None` on overflow.
    pub fn n_elements(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
    }

    /// Size of the tensor data in bytes, or `None` on overflow.
    pub fn n_bytes(&self) -> Option<u64> {
        self.n_elements()?.checked_mul(self.dtype.elem_size())
    }
}

/// A validated GGUF layout (metadata, tensor infos and data offsets), ready to be written.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<TensorDecl>,
    alignment: u64,
    /// Per tensor: (offset relative to the data section, byte size).
    layout: Vec<(u64, u64)>,
    header_len: u64,
    data_len: u64,
}

impl GgufWriter {
    /// Validates the metadata (unique non-empty keys; `general.alignment` a `u32` power of two, omitted when 32) and
    /// the tensors (unique names of at most 63 bytes, 1 to 4 dimensions, sizes that fit) and computes the layout.
    pub fn new(metadata: Vec<(String, GgufValue)>, tensors: Vec<TensorDecl>) -> Result<Self> {
        let mut keys = HashSet::with_capacity(metadata.len());
        let mut alignment = DEFAULT_ALIGNMENT as u64;
        let mut kept = Vec::with_capacity(metadata.len());
        for (key, value) in metadata {
            ensure!(!key.is_empty(), "a GGUF metadata key is empty");
            ensure!(
                keys.insert(key.clone()),
                "GGUF metadata key '{key}' is given twice"
            );
            if key == ALIGNMENT_KEY {
                match value {
                    GgufValue::U32(a) if a > 0 && a.is_power_of_two() => {
                        alignment = a as u64;
                        if a == DEFAULT_ALIGNMENT {
                            continue;
                        }
                    }
                    GgufValue::U32(a) => {
                        bail!("{ALIGNMENT_KEY} must be a non-zero power of two, got {a}")
                    }
                    other => bail!(
                        "{ALIGNMENT_KEY} must be a u32 (llama.cpp reads it as one), got {other:?}"
                    ),
                }
            }
            kept.push((key, value));
        }

        let mut names = HashSet::with_capacity(tensors.len());
        let mut layout = Vec::with_capacity(tensors.len());
        let mut data_len = 0u64;
        for t in &tensors {
            ensure!(!t.name.is_empty(), "a GGUF tensor name is empty");
            ensure!(
                t.name.len() <= MAX_TENSOR_NAME,
                "tensor name '{}' is {} bytes long (ggml allows at most {MAX_TENSOR_NAME})",
                t.name,
                t.name.len()
            );
            ensure!(
                names.insert(t.name.as_str()),
                "tensor '{}' is declared twice",
                t.name
            );
            ensure!(
                t.shape.len() <= MAX_DIMS,
                "tensor '{}' has {} dimensions {:?} (ggml allows at most {MAX_DIMS})",
                t.name,
                t.shape.len(),
                t.shape
            );
            let n_bytes = t
                .n_bytes()
                .with_context(|| format!("tensor '{}' shape {:?} overflows", t.name, t.shape))?;
            let end = data_len
                .checked_add(n_bytes)
                .and_then(|e| e.checked_next_multiple_of(alignment))
                .with_context(|| format!("tensor '{}': the data section overflows", t.name))?;
            layout.push((data_len, n_bytes));
            data_len = end;
        }
        drop(names);

        let mut header_len = 4 + 4 + 8 + 8u64;
        for (key, value) in &kept {
            header_len += 8 + key.len() as u64 + 4 + value.encoded_len();
        }
        for t in &tensors {
            header_len += 8 + t.name.len() as u64 + 4 + 8 * t.ggml_dims().len() as u64 + 4 + 8;
        }
        Ok(Self {
            metadata: kept,
            tensors,
            alignment,
            layout,
            header_len,
            data_len,
        })
    }

    /// Alignment of the tensor data.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The metadata that will be written, in order (`general.alignment` dropped when it is the default).
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The declared tensors, in file order.
    pub fn tensors(&self) -> &[TensorDecl] {
        &self.tensors
    }

    /// Offset of tensor `i`'s data relative to the data section.
    pub fn tensor_offset(&self, i: usize) -> Option<u64> {
        self.layout.get(i).map(|l| l.0)
    }

    /// Absolute offset of the data section in the file.
    pub fn data_start(&self) -> u64 {
        self.header_len.next_multiple_of(self.alignment)
    }

    /// Total size of the file that `write` produces.
    pub fn file_size(&self) -> u64 {
        self.data_start() + self.data_len
    }

    /// Serializes header, metadata and tensor infos (without the padding before the data).
    fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_len as usize);
        out.extend_from_slice(super::reader::GGUF_MAGIC);
        out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            value.encode(&mut out);
        }
        for (t, &(offset, _)) in self.tensors.iter().zip(&self.layout) {
            put_str(&mut out, &t.name);
            let dims = t.ggml_dims();
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.dtype.ggml_type().0.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        debug_assert_eq!(out.len() as u64, self.header_len);
        out
    }

    /// Writes the file to `path`, asking `data(i)` for tensor `i`'s raw little-endian bytes in declaration order;
    /// a tensor of the wrong byte size is an error. The file is created (or truncated) in place: the caller
    /// handles temp-file + rename, and removes a partial file after an error.
    pub fn write<F>(&self, path: &Path, mut data: F) -> Result<()>
    where
        F: FnMut(usize) -> Result<Vec<u8>>,
    {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = BufWriter::with_capacity(8 << 20, file);
        let io = |e: std::io::Error| {
            anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
        };

        let header = self.header_bytes();
        w.write_all(&header).map_err(io)?;
        let pad = (self.data_start() - header.len() as u64) as usize;
        write_zeros(&mut w, pad).map_err(io)?;

        for (i, (t, &(offset, n_bytes))) in self.tensors.iter().zip(&self.layout).enumerate() {
            let bytes = data(i).with_context(|| {
                format!(
                    "producing tensor '{}' (#{i}) for {}",
                    t.name,
                    path.display()
                )
            })?;
            if bytes.len() as u64 != n_bytes {
                bail!(
                    "tensor '{}' (#{i}) has {} bytes but its declared shape {:?} of {} needs {n_bytes}",
                    t.name,
                    bytes.len(),
                    t.shape,
                    t.dtype.name()
                );
            }
            w.write_all(&bytes).map_err(io)?;
            if i == 0 {
                crate::fsutil::stall_point("tensor");
            }
            let end = offset + n_bytes;
            let pad = (end.next_multiple_of(self.alignment) - end) as usize;
            write_zeros(&mut w, pad).map_err(io)?;
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        ensure!(
            len == self.file_size(),
            "{}: wrote {len} bytes, expected {}",
            path.display(),
            self.file_size()
        );
        Ok(())
    }
}

/// Writes `n` zero bytes (alignment padding) without allocating `n` bytes.
fn write_zeros(w: &mut impl Write, mut n: usize) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len());
        w.write_all(&ZEROS[..k])?;
        n -= k;
    }
    Ok(())
}

/// Writes a GGUF v3 file in one call: see [`GgufWriter::new`] and [`GgufWriter::write`].
pub fn write_gguf<F>(
    path: &Path,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<TensorDecl>,
    data: F,
) -> Result<()>
where
    F: FnMut(usize) -> Result<Vec<u8>>,
{
    GgufWriter::new(metadata, tensors)?.write(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::reader::{GgufFile, MetaValue};
    use std::path::PathBuf;

    /// A scratch file removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            Self(std::env::temp_dir().join(format!(
                "twossp-gguf-writer-{tag}-{}.gguf",
                std::process::id()
            )))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Walks the metadata section and returns (key, type id, array element type id) in file order.
    fn raw_kv_types(bytes: &[u8]) -> Vec<(String, u32, Option<u32>)> {
        let mut p = 24usize;
        let n_kv = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let u32_at = |p: &mut usize| {
            let v = u32::from_le_bytes(bytes[*p..*p + 4].try_into().unwrap());
            *p += 4;
            v
        };
        let u64_at = |p: &mut usize| {
            let v = u64::from_le_bytes(bytes[*p..*p + 8].try_into().unwrap());
            *p += 8;
            v
        };
        fn size(t: u32) -> usize {
            match t {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                _ => 8,
            }
        }
        let mut out = Vec::new();
        for _ in 0..n_kv {
            let n = u64_at(&mut p) as usize;
            let key = String::from_utf8(bytes[p..p + n].to_vec()).unwrap();
            p += n;
            let ty = u32_at(&mut p);
            let mut elem = None;
            match ty {
                8 => {
                    let n = u64_at(&mut p) as usize;
                    p += n;
                }
                9 => {
                    let et = u32_at(&mut p);
                    elem = Some(et);
                    let n = u64_at(&mut p);
                    for _ in 0..n {
                        if et == 8 {
                            let l = u64_at(&mut p) as usize;
                            p += l;
                        } else {
                            p += size(et);
                        }
                    }
                }
                t => p += size(t),
            }
            out.push((key, ty, elem));
        }
        out
    }

    fn tensor_bytes(t: &TensorDecl, seed: usize) -> Vec<u8> {
        let n = t.n_bytes().unwrap() as usize;
        (0..n).map(|k| (k * 31 + seed * 7 + 1) as u8).collect()
    }

    #[test]
    fn every_value_type_and_dtype_round_trips() {
        let metadata: Vec<(String, GgufValue)> = vec![
            ("general.architecture".into(), GgufValue::str("llama")),
            ("t.u8".into(), GgufValue::U8(200)),
            ("t.i8".into(), GgufValue::I8(-100)),
            ("t.u16".into(), GgufValue::U16(60000)),
            ("t.i16".into(), GgufValue::I16(-30000)),
            ("t.u32".into(), GgufValue::U32(4_000_000_000)),
            ("t.i32".into(), GgufValue::I32(-2_000_000_000)),
            ("t.u64".into(), GgufValue::U64(u64::MAX)),
            ("t.i64".into(), GgufValue::I64(i64::MIN)),
            ("t.f32".into(), GgufValue::F32(1e-5)),
            ("t.f64".into(), GgufValue::F64(-2.5e300)),
            ("t.bool".into(), GgufValue::Bool(true)),
            ("t.str".into(), GgufValue::str("héllo ▁ wörld")),
            ("t.empty_str".into(), GgufValue::str("")),
            ("t.a_u8".into(), GgufValue::u8_array(vec![0, 1, 255])),
            ("t.a_i8".into(), GgufValue::i8_array(vec![-128, 0, 127])),
            ("t.a_u16".into(), GgufValue::u16_array(vec![1, 65535])),
            ("t.a_i16".into(), GgufValue::i16_array(vec![-32768, 32767])),
            ("t.a_u32".into(), GgufValue::u32_array(vec![7, 8, 9])),
            ("t.a_i32".into(), GgufValue::i32_array(vec![-1, 1, 3, 6])),
            ("t.a_u64".into(), GgufValue::u64_array(vec![u64::MAX, 0])),
            ("t.a_i64".into(), GgufValue::i64_array(vec![i64::MIN, 5])),
            ("t.a_f32".into(), GgufValue::f32_array(vec![0.5, -1000.0])),
            ("t.a_f64".into(), GgufValue::f64_array(vec![0.1, 1e-300])),
            ("t.a_bool".into(), GgufValue::bool_array(vec![true, false])),
            ("t.a_str".into(), GgufValue::str_array(["a b", "", "Ġthe"])),
            (
                "t.a_empty".into(),
                GgufValue::str_array(Vec::<String>::new()),
            ),
        ];
        let mut tensors = Vec::new();
        for (k, dtype) in [TensorDtype::F32, TensorDtype::F16, TensorDtype::BF16]
            .into_iter()
            .enumerate()
        {
            tensors.push(TensorDecl::new(format!("t{k}.odd"), vec![3, 5], dtype));
            tensors.push(TensorDecl::new(format!("t{k}.vec"), vec![7], dtype));
            tensors.push(TensorDecl::new(
                format!("t{k}.cube"),
                vec![2, 3, 1, 5],
                dtype,
            ));
            tensors.push(TensorDecl::new(format!("t{k}.scalar"), vec![], dtype));
        }
        let w = GgufWriter::new(metadata.clone(), tensors.clone()).unwrap();
        assert_eq!(w.alignment(), 32);
        let f = Scratch::new("all");
        let mut asked = Vec::new();
        w.write(&f.0, |i| {
            asked.push(i);
            Ok(tensor_bytes(&tensors[i], i))
        })
        .unwrap();
        assert_eq!(asked, (0..tensors.len()).collect::<Vec<_>>());

        let g = GgufFile::open(&f.0).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.metadata.len(), metadata.len());
        assert!(g.get(ALIGNMENT_KEY).is_none());
        use MetaValue as M;
        let arr = |v: Vec<M>| M::Array(v);
        let expect: Vec<(&str, M)> = vec![
            ("general.architecture", M::Str("llama".into())),
            ("t.u8", M::Uint(200)),
            ("t.i8", M::Int(-100)),
            ("t.u16", M::Uint(60000)),
            ("t.i16", M::Int(-30000)),
            ("t.u32", M::Uint(4_000_000_000)),
            ("t.i32", M::Int(-2_000_000_000)),
            ("t.u64", M::Uint(u64::MAX)),
            ("t.i64", M::Int(i64::MIN)),
            ("t.f32", M::F32(1e-5)),
            ("t.f64", M::F64(-2.5e300)),
            ("t.bool", M::Bool(true)),
            ("t.str", M::Str("héllo ▁ wörld".into())),
            ("t.empty_str", M::Str(String::new())),
            ("t.a_u8", arr(vec![M::Uint(0), M::Uint(1), M::Uint(255)])),
            ("t.a_i8", arr(vec![M::Int(-128), M::Int(0), M::Int(127)])),
            ("t.a_u16", arr(vec![M::Uint(1), M::Uint(65535)])),
            ("t.a_i16", arr(vec![M::Int(-32768), M::Int(32767)])),
            ("t.a_u32", arr(vec![M::Uint(7), M::Uint(8), M::Uint(9)])),
            (
                "t.a_i32",
                arr(vec![M::Int(-1), M::Int(1), M::Int(3), M::Int(6)]),
            ),
            ("t.a_u64", arr(vec![M::Uint(u64::MAX), M::Uint(0)])),
            ("t.a_i64", arr(vec![M::Int(i64::MIN), M::Int(5)])),
            ("t.a_f32", arr(vec![M::F32(0.5), M::F32(-1000.0)])),
            ("t.a_f64", arr(vec![M::F64(0.1), M::F64(1e-300)])),
            ("t.a_bool", arr(vec![M::Bool(true), M::Bool(false)])),
            (
                "t.a_str",
                arr(vec![
                    M::Str("a b".into()),
                    M::Str(String::new()),
                    M::Str("Ġthe".into()),
                ]),
            ),
            ("t.a_empty", arr(vec![])),
        ];
        for (key, value) in &expect {
            assert_eq!(g.get(key), Some(value), "key {key}");
        }

        // The on-disk types are the declared ones, in the declared order.
        let bytes = std::fs::read(&f.0).unwrap();
        let raw = raw_kv_types(&bytes);
        assert_eq!(raw.len(), metadata.len());
        for ((key, ty, elem), (mkey, mval)) in raw.iter().zip(&metadata) {
            assert_eq!(key, mkey);
            assert_eq!(*ty, mval.type_id(), "key {key}");
            let want_elem = match mval {
                GgufValue::Array(a) => Some(a.elem_type()),
                _ => None,
            };
            assert_eq!(*elem, want_elem, "key {key}");
        }

        assert_eq!(g.tensors.len(), tensors.len());
        let data_start = w.data_start();
        assert_eq!(data_start % 32, 0);
        let mut expected_rel = 0u64;
        for (i, (info, decl)) in g.tensors.iter().zip(&tensors).enumerate() {
            assert_eq!(info.name, decl.name);
            assert_eq!(info.dims, decl.ggml_dims());
            if !decl.shape.is_empty() {
                assert_eq!(info.torch_shape(), decl.shape);
            }
            assert_eq!(info.ggml_type, decl.dtype.ggml_type());
            assert_eq!(
                info.offset,
                data_start + expected_rel,
                "tensor {}",
                decl.name
            );
            assert_eq!(info.offset % 32, 0);
            assert_eq!(w.tensor_offset(i), Some(expected_rel));
            assert_eq!(g.tensor_data(info), &tensor_bytes(decl, i)[..]);
            expected_rel = (expected_rel + decl.n_bytes().unwrap()).next_multiple_of(32);
        }
        assert_eq!(bytes.len() as u64, w.file_size());
        assert_eq!(bytes.len() as u64, data_start + expected_rel);
    }

    #[test]
    fn non_default_alignment_is_written_and_default_is_omitted() {
        let tensors = vec![
            TensorDecl::new("a", vec![3], TensorDtype::F16),
            TensorDecl::new("b", vec![1, 5], TensorDtype::F32),
        ];
        let f = Scratch::new("align64");
        write_gguf(
            &f.0,
            vec![
                ("general.alignment".into(), GgufValue::U32(64)),
                ("x".into(), GgufValue::Bool(false)),
            ],
            tensors.clone(),
            |i| Ok(tensor_bytes(&tensors[i], i)),
        )
        .unwrap();
        let g = GgufFile::open(&f.0).unwrap();
        assert_eq!(g.alignment, 64);
        assert_eq!(g.get(ALIGNMENT_KEY), Some(&MetaValue::Uint(64)));
        assert_eq!(g.tensors[1].offset - g.tensors[0].offset, 64);
        assert_eq!(g.tensors[0].offset % 64, 0);
        for (i, t) in g.tensors.iter().enumerate() {
            assert_eq!(g.tensor_data(t), &tensor_bytes(&tensors[i], i)[..]);
        }

        let w = GgufWriter::new(
            vec![("general.alignment".into(), GgufValue::U32(32))],
            vec![],
        )
        .unwrap();
        assert!(w.metadata().is_empty());

        for bad in [GgufValue::U32(0), GgufValue::U32(48), GgufValue::U64(64)] {
            let err = GgufWriter::new(vec![("general.alignment".into(), bad)], vec![]).unwrap_err();
            assert!(format!("{err:#}").contains("general.alignment"), "{err:#}");
        }
    }

    #[test]
    fn tensor_less_file_reads_back() {
        let f = Scratch::new("empty");
        write_gguf(
            &f.0,
            vec![("k".into(), GgufValue::str("v"))],
            vec![],
            |_| unreachable!(),
        )
        .unwrap();
        let g = GgufFile::open(&f.0).unwrap();
        assert!(g.tensors.is_empty());
        assert_eq!(g.get("k"), Some(&MetaValue::Str("v".into())));
    }

    #[test]
    fn wrong_sizes_and_bad_declarations_are_errors() {
        let tensors = vec![
            TensorDecl::new("ok", vec![2, 3], TensorDtype::F32),
            TensorDecl::new("short", vec![5], TensorDtype::BF16),
        ];
        let f = Scratch::new("bad");
        let err = write_gguf(&f.0, vec![], tensors.clone(), |i| {
            Ok(vec![0u8; tensors[i].n_bytes().unwrap() as usize - i])
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("'short'") && msg.contains("9 bytes") && msg.contains("10"),
            "{msg}"
        );

        let err = write_gguf(&f.0, vec![], tensors.clone(), |i| {
            if i == 1 {
                bail!("source exhausted")
            }
            Ok(vec![0u8; 24])
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("'short'") && msg.contains("source exhausted"),
            "{msg}"
        );

        let long = "x".repeat(64);
        for (meta, decls, what) in [
            (
                vec![
                    ("k".into(), GgufValue::U8(1)),
                    ("k".into(), GgufValue::U8(2)),
                ],
                vec![],
                "twice",
            ),
            (
                vec![],
                vec![TensorDecl::new(long, vec![1], TensorDtype::F32)],
                "63",
            ),
            (
                vec![],
                vec![
                    TensorDecl::new("d", vec![1], TensorDtype::F32),
                    TensorDecl::new("d", vec![1], TensorDtype::F16),
                ],
                "declared twice",
            ),
            (
                vec![],
                vec![TensorDecl::new("t", vec![1, 1, 1, 1, 1], TensorDtype::F32)],
                "dimensions",
            ),
            (
                vec![],
                vec![TensorDecl::new("t", vec![usize::MAX, 4], TensorDtype::F32)],
                "overflows",
            ),
        ] {
            let err = GgufWriter::new(meta, decls).unwrap_err();
            assert!(format!("{err:#}").contains(what), "{err:#}");
        }

        let err = write_gguf(Path::new("/nonexistent-dir/x.gguf"), vec![], vec![], |_| {
            Ok(vec![])
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent-dir/x.gguf"),
            "{err:#}"
        );
    }
}
