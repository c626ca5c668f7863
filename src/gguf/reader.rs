//! GGUF container parsing: header, metadata key/values and tensor infos over a memory-mapped file.

use super::dequant::GgmlType;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Unsigned integer (u8, u16, u32 or u64 on disk).
    Uint(u64),
    /// Signed integer (i8, i16, i32 or i64 on disk).
    Int(i64),
    /// 32-bit float.
    F32(f32),
    /// 64-bit float.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string (invalid bytes replaced).
    Str(String),
    /// Homogeneous array.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::Uint(v) => Some(v),
            MetaValue::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a float, when numeric; an f32 becomes the f64 of its shortest decimal (1e-5, not 9.99999974e-6).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::Uint(v) => Some(v as f64),
            MetaValue::Int(v) => Some(v as f64),
            MetaValue::F32(v) => Some(v.to_string().parse().unwrap_or(v as f64)),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an f32, when numeric (exact for f32 storage).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            _ => self.as_f64().map(|v| v as f32),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool (integers 0/1 accepted).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            MetaValue::Uint(v) if v <= 1 => Some(v == 1),
            MetaValue::Int(v) if v == 0 || v == 1 => Some(v == 1),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Description of one tensor in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// GGUF tensor name ("blk.0.attn_q.weight").
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the fastest-varying (the PyTorch last dimension).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in PyTorch order (slowest dimension first).
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file whose tensor data stays memory-mapped.
pub struct GgufFile {
    map: Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the tensor data (general.alignment, default 32).
    pub alignment: u64,
}

impl GgufFile {
    /// Memory-maps and parses `path`, checking every tensor lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only; the importer does not modify the file while it is mapped.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let len = map.len();
        Self::from_map(map, len).with_context(|| format!("invalid GGUF file {}", path.display()))
    }

    /// Parses a GGUF image held in memory (copied into an anonymous map; fuzzing and tests).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut anon =
            memmap2::MmapMut::map_anon(bytes.len().max(1)).context("cannot map memory")?;
        anon[..bytes.len()].copy_from_slice(bytes);
        let map = anon.make_read_only().context("cannot map memory")?;
        Self::from_map(map, bytes.len())
    }

    /// Parses the first `len` bytes of `map` (an anonymous map is never empty, a file's may be).
    fn from_map(map: Mmap, len: usize) -> Result<Self> {
        let (version, metadata, tensors, alignment) = parse(&map[..len])?;
        Ok(Self {
            map,
            version,
            metadata,
            tensors,
            alignment,
        })
    }

    /// The raw bytes of a tensor (bounds were checked when parsing).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    /// Looks up a tensor by GGUF name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A required string value.
    pub fn req_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            None => bail!("missing metadata key '{key}'"),
            Some(v) => v
                .as_str()
                .with_context(|| format!("metadata key '{key}' is not a string")),
        }
    }

    /// An optional unsigned integer value (error when present with another type).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .with_context(|| format!("metadata key '{key}' is not a non-negative integer")),
        }
    }

    /// A required unsigned integer value.
    pub fn req_u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?
            .with_context(|| format!("missing metadata key '{key}'"))
    }

    /// An optional float value.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .with_context(|| format!("metadata key '{key}' is not numeric")),
        }
    }

    /// An optional bool value.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .with_context(|| format!("metadata key '{key}' is not a bool")),
        }
    }

    /// An optional string value.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .with_context(|| format!("metadata key '{key}' is not a string")),
        }
    }
}

type Parsed = (u32, BTreeMap<String, MetaValue>, Vec<TensorInfo>, u64);

/// Parses header, metadata and tensor infos from the whole file's bytes.
fn parse(bytes: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { bytes, pos: 0 };
    if bytes.len() < 4 {
        bail!("file is truncated ({} bytes, no GGUF header)", bytes.len());
    }
    if &bytes[..4] != GGUF_MAGIC {
        bail!("bad magic {:02x?}: not a GGUF file", &bytes[..4]);
    }
    c.pos = 4;
    let version = c.u32().context("reading the version")?;
    if version != 2 && version != 3 {
        bail!("unsupported GGUF version {version} (supported: 2, 3)");
    }
    let n_tensors = c.u64().context("reading the tensor count")?;
    let n_kv = c.u64().context("reading the metadata count")?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c
            .string()
            .with_context(|| format!("reading metadata key #{i}"))?;
        let ty = c
            .u32()
            .with_context(|| format!("reading the type of metadata key '{key}'"))?;
        let value = c
            .value(ty, 0)
            .with_context(|| format!("reading metadata key '{key}'"))?;
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => bail!("general.alignment must be a power of two, got {v:?}"),
        },
    };

    // Each tensor info takes at least 24 bytes: reject absurd counts before allocating.
    if n_tensors > c.remaining() as u64 / 24 {
        bail!("file is truncated: header announces {n_tensors} tensors");
    }
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c
            .string()
            .with_context(|| format!("reading the name of tensor #{i}"))?;
        let n_dims = c
            .u32()
            .with_context(|| format!("reading tensor '{name}'"))?;
        if n_dims == 0 || n_dims > 4 {
            bail!("tensor '{name}' has {n_dims} dimensions (expected 1 to 4)");
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(
                c.u64()
                    .with_context(|| format!("reading the shape of tensor '{name}'"))?,
            );
        }
        let type_id = c
            .u32()
            .with_context(|| format!("reading the type of tensor '{name}'"))?;
        let rel_offset = c
            .u64()
            .with_context(|| format!("reading the offset of tensor '{name}'"))?;
        infos.push((name, dims, GgmlType(type_id), rel_offset));
    }
    let data_start = align_up(c.pos as u64, alignment);

    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, ggml_type, rel_offset) in infos {
        if !ggml_type.is_known() {
            bail!("tensor '{name}' has unknown type id {}", ggml_type.0);
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .with_context(|| format!("tensor '{name}' shape {dims:?} overflows"))?;
        let (block, _) = ggml_type.block_layout().expect("known type");
        if dims[0] % block as u64 != 0 {
            bail!(
                "tensor '{name}' rows of {} elements are not whole {} blocks of {block}",
                dims[0],
                ggml_type.name()
            );
        }
        let n_bytes = ggml_type
            .storage_size(n_elements)
            .with_context(|| format!("tensor '{name}' ({})", ggml_type.name()))?;
        if rel_offset % alignment != 0 {
            bail!("tensor '{name}' data offset {rel_offset} is not aligned to {alignment}");
        }
        let offset = data_start.checked_add(rel_offset);
        let end = offset.and_then(|o| o.checked_add(n_bytes));
        match (offset, end) {
            (Some(offset), Some(end)) if end <= bytes.len() as u64 => {
                tensors.push(TensorInfo { name, dims, ggml_type, offset, n_bytes })
            }
            _ => bail!(
                "tensor '{name}' data (offset {rel_offset}, {n_bytes} bytes) lies outside the file ({} bytes): file is truncated or corrupt",
                bytes.len()
            ),
        }
    }
    Ok((version, metadata, tensors, alignment))
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Nesting limit for metadata arrays of arrays.
const MAX_DEPTH: usize = 8;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            bail!(
                "file is truncated at byte {} (needed {n} more bytes)",
                self.pos
            );
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > self.remaining() as u64 {
            bail!(
                "file is truncated at byte {}: string of {len} bytes announced",
                self.pos
            );
        }
        Ok(String::from_utf8_lossy(self.take(len as usize)?).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::Uint(self.array::<1>()?[0] as u64),
            1 => MetaValue::Int(self.array::<1>()?[0] as i8 as i64),
            2 => MetaValue::Uint(u16::from_le_bytes(self.array()?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.array()?) as i64),
            4 => MetaValue::Uint(self.u32()? as u64),
            5 => MetaValue::Int(i32::from_le_bytes(self.array()?) as i64),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => bail!("invalid bool byte {b}"),
            },
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    bail!("metadata arrays nested deeper than {MAX_DEPTH}");
                }
                let item_ty = self.u32()?;
                let n = self.u64()?;
                // Every item takes at least `min_size` bytes: a larger count cannot fit in the file.
                let min_size: u64 = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => 1,
                };
                if n.saturating_mul(min_size) > self.remaining() as u64 {
                    bail!(
                        "file is truncated at byte {}: array of {n} items announced",
                        self.pos
                    );
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::Uint(self.u64()?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}
