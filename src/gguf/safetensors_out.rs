//! Streaming writer for an F32 `.safetensors` file: tensors are produced one at a time, never all in memory.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Name and shape of one tensor to be written.
pub struct Entry {
    /// Tensor name.
    pub name: String,
    /// Shape (row-major).
    pub shape: Vec<usize>,
}

/// Writes `entries` in order; `produce(i)` returns the f32 values of entry `i`.
pub fn write_f32(
    path: &Path,
    entries: &[Entry],
    mut produce: impl FnMut(usize) -> Result<Vec<f32>>,
) -> Result<()> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for e in entries {
        let n: usize = e.shape.iter().product();
        let end = offset + n * 4;
        header.insert(
            e.name.clone(),
            json!({"dtype": "F32", "shape": e.shape, "data_offsets": [offset, end]}),
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
        let values = produce(i)?;
        let n: usize = e.shape.iter().product();
        if values.len() != n {
            bail!(
                "tensor '{}' produced {} values for shape {:?}",
                e.name,
                values.len(),
                e.shape
            );
        }
        if cfg!(target_endian = "little") {
            io(w.write_all(bytemuck::cast_slice(&values)))?;
        } else {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            io(w.write_all(&bytes))?;
        }
    }
    io(w.flush())?;
    Ok(())
}
