//! Packing of GEMM operands into micro-panels, and the per-thread buffers that hold them.

use super::elem::Elem;
use crate::backend::cpu::isa::Isa;
use std::cell::RefCell;
use std::thread::LocalKey;

/// A growable f32 buffer handed out 64-byte aligned.
#[derive(Default)]
pub(super) struct PackBuf {
    v: Vec<f32>,
}

impl PackBuf {
    fn get(&mut self, len: usize) -> &mut [f32] {
        let need = len + 16;
        if self.v.len() < need {
            self.v = vec![0.0; need];
        }
        let off = self.v.as_ptr().align_offset(64).min(16);
        &mut self.v[off..off + len]
    }
}

thread_local! {
    pub(super) static A_BUF: RefCell<PackBuf> = RefCell::new(PackBuf::default());
    pub(super) static B_BUF: RefCell<PackBuf> = RefCell::new(PackBuf::default());
    /// 16-bit weights widened to f32 just before they are packed or streamed.
    pub(super) static W_BUF: RefCell<PackBuf> = RefCell::new(PackBuf::default());
}

/// Lends this thread's buffer `key` (or, if it is already lent further up the stack, a fresh one).
pub(super) fn with_buf<R>(
    key: &'static LocalKey<RefCell<PackBuf>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(buf.get(len)),
        Err(_) => f(PackBuf::default().get(len)),
    })
}

/// Packs `rows` (<= R) rows of a k-contiguous matrix starting at row `r0`, columns `p0..p0 + kc`,
/// as `dst[p * R + r]` in f32; rows `rows..R` are zero. 16-bit elements are widened first.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_panel<const R: usize>(
    isa: Isa,
    src: &[impl Elem],
    ld: usize,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    if let Some(src) = Elem::as_f32(src) {
        return pack_panel_f32::<R>(isa, src, ld, r0, rows, p0, kc, dst);
    }
    with_buf(&W_BUF, rows * kc, |wide| {
        for (r, row) in wide.chunks_exact_mut(kc.max(1)).take(rows).enumerate() {
            let start = (r0 + r) * ld + p0;
            Elem::widen_into(&src[start..start + kc], &mut row[..kc]);
        }
        pack_panel_f32::<R>(isa, wide, kc, 0, rows, 0, kc, dst);
    });
}

/// [`pack_panel`] of f32 elements.
#[inline]
#[allow(clippy::too_many_arguments)]
fn pack_panel_f32<const R: usize>(
    isa: Isa,
    src: &[f32],
    ld: usize,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    let dst = &mut dst[..kc * R];
    if rows == R {
        // Full panel: read R rows side by side, write each depth step as one contiguous group.
        let base = r0 * ld + p0;
        let srcs: [&[f32]; R] = std::array::from_fn(|r| &src[base + r * ld..base + r * ld + kc]);
        let done = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 is available; the R source rows hold kc floats each (sliced above,
            // consecutive rows `ld` apart) and dst holds kc * R.
            Isa::Avx2Fma | Isa::Avx512 => unsafe {
                pack_full_avx2::<R>(srcs[0].as_ptr(), ld, kc, dst.as_mut_ptr())
            },
            _ => 0,
        };
        for (p, d) in dst.chunks_exact_mut(R).enumerate().skip(done) {
            for r in 0..R {
                d[r] = srcs[r][p];
            }
        }
    } else {
        for r in 0..R {
            if r < rows {
                let s = &src[(r0 + r) * ld + p0..(r0 + r) * ld + p0 + kc];
                for (d, &v) in dst.chunks_exact_mut(R).zip(s) {
                    d[r] = v;
                }
            } else {
                for d in dst.chunks_exact_mut(R) {
                    d[r] = 0.0;
                }
            }
        }
    }
}

/// Packs the first `kc - kc % 8` depth steps of a full R-row panel with 8 x 8 transposes; returns
/// how many depth steps it packed.
///
/// # Safety
/// AVX2 is available; rows `0..R` at `src + r * ld` each hold `kc` readable floats; `dst` holds
/// `kc * R` writable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_full_avx2<const R: usize>(
    src: *const f32,
    ld: usize,
    kc: usize,
    dst: *mut f32,
) -> usize {
    use std::arch::x86_64::*;
    let kv = kc - kc % 8;
    for g in 0..R.div_ceil(8) {
        let valid = (R - 8 * g).min(8);
        // Rows past the panel repeat its last row; the mask keeps them out of dst.
        let rp: [*const f32; 8] = std::array::from_fn(|r| src.add((8 * g + r.min(valid - 1)) * ld));
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(valid as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let mut p = 0;
        while p < kv {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rp[i].add(p)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            // s_q: depth steps q (low half) and q + 4 (high half) of rows 0-3 or 4-7.
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (q, &col) in cols.iter().enumerate() {
                let out = dst.add((p + q) * R + 8 * g);
                if valid == 8 {
                    _mm256_storeu_ps(out, col);
                } else {
                    _mm256_maskstore_ps(out, mask, col);
                }
            }
            p += 8;
        }
    }
    kv
}
