//! GGML tensor types and their dequantization to f32 (block formats as laid out by ggml).

use anyhow::{bail, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// A GGML tensor element type, as stored in a GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// Name, block length (elements) and block size (bytes) of every known type id.
const TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

/// Element types this importer can turn into f32.
const SUPPORTED: &[u32] = &[0, 1, 30, 8, 2, 3, 6, 7, 12, 13, 14];

impl GgmlType {
    /// Type F32.
    pub const F32: Self = Self(0);
    /// Type F16.
    pub const F16: Self = Self(1);
    /// Type Q4_0.
    pub const Q4_0: Self = Self(2);
    /// Type Q4_1.
    pub const Q4_1: Self = Self(3);
    /// Type Q5_0.
    pub const Q5_0: Self = Self(6);
    /// Type Q5_1.
    pub const Q5_1: Self = Self(7);
    /// Type Q8_0.
    pub const Q8_0: Self = Self(8);
    /// Type Q4_K.
    pub const Q4_K: Self = Self(12);
    /// Type Q5_K.
    pub const Q5_K: Self = Self(13);
    /// Type Q6_K.
    pub const Q6_K: Self = Self(14);
    /// Type BF16.
    pub const BF16: Self = Self(30);

    fn entry(self) -> Option<&'static (u32, &'static str, usize, usize)> {
        TYPES.iter().find(|t| t.0 == self.0)
    }

    /// The ggml name ("Q4_K"), or "unknown type id N".
    pub fn name(self) -> String {
        match self.entry() {
            Some(e) => e.1.to_string(),
            None => format!("unknown type id {}", self.0),
        }
    }

    /// Looks a type up by its ggml name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        TYPES
            .iter()
            .find(|t| t.1.eq_ignore_ascii_case(name))
            .map(|t| Self(t.0))
    }

    /// Whether ggml defines this type id (so its storage size is known).
    pub fn is_known(self) -> bool {
        self.entry().is_some()
    }

    /// Whether `dequantize` handles this type.
    pub fn is_supported(self) -> bool {
        SUPPORTED.contains(&self.0)
    }

    /// (elements per block, bytes per block), for known types.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        self.entry().map(|e| (e.2, e.3))
    }

    /// Storage size in bytes of `n_elements` values; errors when the count is not whole blocks.
    pub fn storage_size(self, n_elements: u64) -> Result<u64> {
        let Some((block, bytes)) = self.block_layout() else {
            bail!("unknown tensor type id {}", self.0);
        };
        if !n_elements.is_multiple_of(block as u64) {
            bail!(
                "{} elements is not a multiple of the {} block size {block}",
                n_elements,
                self.name()
            );
        }
        (n_elements / block as u64)
            .checked_mul(bytes as u64)
            .ok_or_else(|| anyhow::anyhow!("tensor byte size overflows"))
    }
}

/// Blocks handed to one rayon task (keeps scheduling overhead small).
const BLOCKS_PER_TASK: usize = 256;

/// Dequantizes `n` elements of type `ty` from `data` (exactly `storage_size(n)` bytes) into f32.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

/// Like [`dequantize`], writing into `out` (its length is the element count).
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    if !ty.is_supported() {
        if ty.is_known() {
            bail!(
                "tensor type {} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
                ty.name()
            );
        }
        bail!("unknown tensor type id {}", ty.0);
    }
    let (block, bytes) = ty.block_layout().expect("supported types are known");
    let expected = ty.storage_size(out.len() as u64)?;
    if data.len() as u64 != expected {
        bail!(
            "{} data has {} bytes, expected {expected} for {} elements",
            ty.name(),
            data.len(),
            out.len()
        );
    }
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => block_f32,
        GgmlType::F16 => block_f16,
        GgmlType::BF16 => block_bf16,
        GgmlType::Q8_0 => block_q8_0,
        GgmlType::Q4_0 => block_q4_0,
        GgmlType::Q4_1 => block_q4_1,
        GgmlType::Q5_0 => block_q5_0,
        GgmlType::Q5_1 => block_q5_1,
        GgmlType::Q4_K => block_q4_k,
        GgmlType::Q5_K => block_q5_k,
        GgmlType::Q6_K => block_q6_k,
        _ => unreachable!("SUPPORTED and the kernel table agree"),
    };
    // Plain float types are processed as "blocks" of many elements to amortise the call.
    let (block, bytes) = if block == 1 {
        (1024, bytes * 1024)
    } else {
        (block, bytes)
    };
    out.par_chunks_mut(block * BLOCKS_PER_TASK)
        .zip(data.par_chunks(bytes * BLOCKS_PER_TASK))
        .for_each(|(dst, src)| {
            for (y, x) in dst.chunks_mut(block).zip(src.chunks(bytes)) {
                kernel(x, y);
            }
        });
    Ok(())
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn block_f32(x: &[u8], y: &mut [f32]) {
    for (v, c) in y.iter_mut().zip(x.chunks_exact(4)) {
        *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn block_f16(x: &[u8], y: &mut [f32]) {
    for (v, c) in y.iter_mut().zip(x.chunks_exact(2)) {
        *v = f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

fn block_bf16(x: &[u8], y: &mut [f32]) {
    for (v, c) in y.iter_mut().zip(x.chunks_exact(2)) {
        *v = bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// Q8_0: f16 scale, 32 signed bytes.
fn block_q8_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (v, &q) in y.iter_mut().zip(&x[2..34]) {
        *v = (q as i8) as f32 * d;
    }
}

/// Q4_0: f16 scale, 16 bytes of nibbles (low nibbles first half, high nibbles second half), offset 8.
fn block_q4_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let qs = &x[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: f16 scale and minimum, 16 bytes of unsigned nibbles.
fn block_q4_1(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let m = f16_at(x, 2);
    let qs = &x[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// Q5_0: f16 scale, 32 high bits, 16 bytes of nibbles, offset 16.
fn block_q5_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]);
    let qs = &x[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        let q0 = ((qs[j] & 0x0F) | (h0 << 4)) as i32 - 16;
        let q1 = ((qs[j] >> 4) | (h1 << 4)) as i32 - 16;
        y[j] = q0 as f32 * d;
        y[j + 16] = q1 as f32 * d;
    }
}

/// Q5_1: f16 scale and minimum, 32 high bits, 16 bytes of nibbles.
fn block_q5_1(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let m = f16_at(x, 2);
    let qh = u32::from_le_bytes([x[4], x[5], x[6], x[7]]);
    let qs = &x[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        y[j] = ((qs[j] & 0x0F) | (h0 << 4)) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | (h1 << 4)) as f32 * d + m;
    }
}

/// The 6-bit (scale, min) pair of sub-block `j` from the 12 packed bytes of a K-quant block.
#[inline]
fn k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K: f16 d and dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles (8 sub-blocks of 32).
fn block_q4_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let dmin = f16_at(x, 2);
    let scales = &x[4..16];
    let qs = &x[16..144];
    for pair in 0..4 {
        let (sc0, m0) = k_scale_min(2 * pair, scales);
        let (sc1, m1) = k_scale_min(2 * pair + 1, scales);
        let (d0, min0) = (d * sc0 as f32, dmin * m0 as f32);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let q = &qs[32 * pair..32 * pair + 32];
        let out = &mut y[64 * pair..64 * pair + 64];
        for l in 0..32 {
            out[l] = d0 * (q[l] & 0x0F) as f32 - min0;
            out[l + 32] = d1 * (q[l] >> 4) as f32 - min1;
        }
    }
}

/// Q5_K: like Q4_K plus 32 bytes holding the fifth bit of every value.
fn block_q5_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let dmin = f16_at(x, 2);
    let scales = &x[4..16];
    let qh = &x[16..48];
    let qs = &x[48..176];
    for pair in 0..4 {
        let (sc0, m0) = k_scale_min(2 * pair, scales);
        let (sc1, m1) = k_scale_min(2 * pair + 1, scales);
        let (d0, min0) = (d * sc0 as f32, dmin * m0 as f32);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (bit0, bit1) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        let q = &qs[32 * pair..32 * pair + 32];
        let out = &mut y[64 * pair..64 * pair + 64];
        for l in 0..32 {
            let h0 = if qh[l] & bit0 != 0 { 16 } else { 0 };
            let h1 = if qh[l] & bit1 != 0 { 16 } else { 0 };
            out[l] = d0 * ((q[l] & 0x0F) + h0) as f32 - min0;
            out[l + 32] = d1 * ((q[l] >> 4) + h1) as f32 - min1;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed scales, f16 d; offset 32.
fn block_q6_k(x: &[u8], y: &mut [f32]) {
    let ql_all = &x[0..128];
    let qh_all = &x[128..192];
    let sc_all = &x[192..208];
    let d = f16_at(x, 208);
    for half in 0..2 {
        let ql = &ql_all[64 * half..64 * half + 64];
        let qh = &qh_all[32 * half..32 * half + 32];
        let sc = &sc_all[8 * half..8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_block_layout() {
        assert_eq!(GgmlType::Q4_K.storage_size(512).unwrap(), 288);
        assert_eq!(GgmlType::F16.storage_size(3).unwrap(), 6);
        assert!(GgmlType::Q8_0.storage_size(33).is_err());
        assert!(GgmlType(99)
            .storage_size(32)
            .unwrap_err()
            .to_string()
            .contains("99"));
    }

    #[test]
    fn unsupported_type_is_named() {
        let err = dequantize(GgmlType(10), &[0u8; 84], 256)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Q2_K"), "{err}");
    }

    #[test]
    fn q8_0_block() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 4;
        b[3] = (-6i8) as u8;
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!((y[0], y[1], y[2]), (2.0, -3.0, 0.0));
    }
}
