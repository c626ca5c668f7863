//! Streaming `.safetensors` writer: tensors are produced one at a time, never all in memory.

use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Name, dtype and shape of one tensor to be written.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Tensor name.
    pub name: String,
    /// Element type (F32, F16 or BF16).
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
}

impl Entry {
    /// Bytes the tensor occupies.
    pub fn n_bytes(&self) -> Result<usize> {
        Ok(self.shape.iter().product::<usize>() * super::dtype_size(self.dtype)?)
    }
}

/// Writes `entries` in order into `path`; `produce(i)` returns the little-endian bytes of entry
/// `i`. Returns the bytes of tensor data written.
pub fn write(
    path: &Path,
    entries: &[Entry],
    mut produce: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<u64> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for e in entries {
        let end = offset + e.n_bytes()?;
        header.insert(
            e.name.clone(),
            json!({"dtype": dtype_name(e.dtype)?, "shape": e.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&Value::Object(header))?;
    // Data starts 8-byte aligned after the length prefix.
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let io = |r: std::io::Result<()>| r.with_context(|| format!("cannot write {}", path.display()));
    io(w.write_all(&(head.len() as u64).to_le_bytes()))?;
    io(w.write_all(&head))?;
    for (i, e) in entries.iter().enumerate() {
        let bytes = produce(i)?;
        if bytes.len() != e.n_bytes()? {
            bail!(
                "tensor '{}' produced {} bytes for {:?} {:?}",
                e.name,
                bytes.len(),
                e.dtype,
                e.shape
            );
        }
        io(w.write_all(&bytes))?;
        if i == 0 {
            crate::fsutil::stall_point("tensor");
        }
    }
    io(w.flush())?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(offset as u64)
}

/// Writes f32 tensors: `produce(i)` returns the values of entry `i` (whose dtype must be F32).
pub fn write_f32(
    path: &Path,
    entries: &[Entry],
    mut produce: impl FnMut(usize) -> Result<Vec<f32>>,
) -> Result<u64> {
    write(path, entries, |i| {
        let values = produce(i)?;
        Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    })
}

/// The safetensors header name of a dtype.
fn dtype_name(dtype: Dtype) -> Result<&'static str> {
    Ok(match dtype {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        other => bail!("cannot write tensors of dtype {other:?}"),
    })
}
