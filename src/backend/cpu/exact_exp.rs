//! `expf` sixteen lanes at a time that returns exactly what the C library's scalar `expf` returns.
//!
//! The f32 path's results are pinned bit for bit, and its SiLU and NLL call libm's `expf`, which is
//! not correctly rounded: glibc's rounds about 1 argument in 13,000 the other way, always one whose
//! exact exponential lies within 2^-33.2 (relative) of a midpoint between two floats. So each lane
//! computes exp in f64 to about 2^-42 (a 16-entry table of 2^(j/16), a degree-5 polynomial and
//! `scalef`), which rounds to the correctly rounded float; a lane whose value lies within 2^-31 of
//! a midpoint (about 1 lane in 90) is recomputed by libm itself. Everywhere else libm agrees with
//! the correct rounding, as the exhaustive test below checks over every float argument on the
//! machine that runs it.

use std::arch::x86_64::*;
use std::sync::LazyLock;

/// 2^(j/16) for j = 0..16 (the exponent's fractional part in sixteenths).
static POW2_SIXTEENTHS: LazyLock<[f64; 16]> =
    LazyLock::new(|| std::array::from_fn(|j| (j as f64 / 16.0).exp2()));

/// ln(2)/16 split in two doubles (the high part's product with the exponent is exact in an FMA).
const LN2_16_HI: f64 = 0.043_321_698_784_996_58;
const LN2_16_LO: f64 = 1.449_404_258_653_937_2e-18;
/// 16 / ln(2).
const SIXTEEN_OVER_LN2: f64 = 23.083_120_654_223_414;
/// 1.5 * 2^52: adding it rounds a double of magnitude below 2^51 to an integer, held in the low
/// bits of its mantissa.
const ROUND_SHIFT: f64 = 6_755_399_441_055_744.0;
/// Relative distance to a rounding midpoint below which a lane is left to libm (2^-31: four times
/// glibc's largest measured error, a thousand times this code's).
const MIDPOINT_MARGIN: f64 = 1.0 / 2_147_483_648.0;

/// The table of 2^(j/16) in two registers, loaded once per slice.
#[derive(Clone, Copy)]
pub(crate) struct ExpTable {
    lo: __m512d,
    hi: __m512d,
}

impl ExpTable {
    /// Loads the table.
    ///
    /// # Safety
    /// AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn load() -> Self {
        let t = &*POW2_SIXTEENTHS;
        ExpTable {
            lo: _mm512_loadu_pd(t.as_ptr()),
            hi: _mm512_loadu_pd(t.as_ptr().add(8)),
        }
    }
}

/// exp of 8 floats in f64, relative error about 2^-42 (arguments clamped to [-110, 90], where
/// every float result is 0 or infinite already).
#[target_feature(enable = "avx512f")]
unsafe fn exp8_f64(t: ExpTable, x: __m256) -> __m512d {
    let set = _mm512_set1_pd;
    let xd = _mm512_min_pd(_mm512_max_pd(_mm512_cvtps_pd(x), set(-110.0)), set(90.0));
    // x = (k + f) ln2 / 16 with k an integer, |f| <= 1/2: exp(x) = 2^(k/16) exp(r), |r| <= ln2/32.
    let shifted = _mm512_fmadd_pd(xd, set(SIXTEEN_OVER_LN2), set(ROUND_SHIFT));
    let k = _mm512_sub_pd(shifted, set(ROUND_SHIFT));
    let r = _mm512_fnmadd_pd(k, set(LN2_16_HI), xd);
    let r = _mm512_fnmadd_pd(k, set(LN2_16_LO), r);
    // Taylor to r^5: the remainder r^6/720 is below 2^-42.7.
    let mut p = set(1.0 / 120.0);
    for c in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_pd(p, r, set(c));
    }
    // 2^(k/16) = 2^floor(k/16) * 2^((k mod 16)/16); the low 4 bits of `shifted` are k mod 16.
    let frac = _mm512_permutex2var_pd(t.lo, _mm512_castpd_si512(shifted), t.hi);
    _mm512_scalef_pd(_mm512_mul_pd(p, frac), _mm512_mul_pd(k, set(1.0 / 16.0)))
}

/// Two halves of 8 floats as one register.
#[target_feature(enable = "avx512f")]
unsafe fn join(lo: __m256, hi: __m256) -> __m512 {
    let wide = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(wide, _mm256_castps_pd(hi)))
}

/// `expf` of 16 lanes, each bit for bit what `f32::exp` (libm) returns.
///
/// # Safety
/// AVX-512F present.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp16(t: ExpTable, x: __m512) -> __m512 {
    let halves = [
        _mm512_castps512_ps256(x),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
    ];
    let (mut near, mut below, mut above) = (
        [_mm256_setzero_ps(); 2],
        [_mm256_setzero_ps(); 2],
        [_mm256_setzero_ps(); 2],
    );
    for h in 0..2 {
        let y = exp8_f64(t, halves[h]);
        near[h] = _mm512_cvtpd_ps(y);
        below[h] = _mm512_cvtpd_ps(_mm512_mul_pd(y, _mm512_set1_pd(1.0 - MIDPOINT_MARGIN)));
        above[h] = _mm512_cvtpd_ps(_mm512_mul_pd(y, _mm512_set1_pd(1.0 + MIDPOINT_MARGIN)));
    }
    let result = join(near[0], near[1]);
    let (below, above) = (join(below[0], below[1]), join(above[0], above[1]));
    let unsure = _mm512_cmpneq_epi32_mask(_mm512_castps_si512(below), _mm512_castps_si512(above))
        | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    if unsure == 0 {
        return result;
    }
    let (mut out, mut args) = ([0f32; 16], [0f32; 16]);
    _mm512_storeu_ps(out.as_mut_ptr(), result);
    _mm512_storeu_ps(args.as_mut_ptr(), x);
    let mut lanes = unsure;
    while lanes != 0 {
        let i = lanes.trailing_zeros() as usize;
        out[i] = args[i].exp();
        lanes &= lanes - 1;
    }
    _mm512_loadu_ps(out.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Mismatching bit patterns among 16 consecutive ones starting at `first`.
    fn mismatches(t: ExpTable, first: u32) -> Vec<u32> {
        let bits: [u32; 16] = std::array::from_fn(|i| first.wrapping_add(i as u32));
        let xs = bits.map(f32::from_bits);
        let mut got = [0f32; 16];
        // SAFETY: the caller checked AVX-512F.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(t, _mm512_loadu_ps(xs.as_ptr()))) };
        (0..16)
            .filter(|&i| {
                got[i].to_bits() != xs[i].exp().to_bits()
                    && !(got[i].is_nan() && xs[i].exp().is_nan())
            })
            .map(|i| bits[i])
            .collect()
    }

    #[test]
    fn exp16_equals_libm_expf_for_every_float() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED exact_exp: this CPU has no AVX-512F");
            return;
        }
        // SAFETY: AVX-512F checked above.
        let t = unsafe { ExpTable::load() };
        // Every float from -104 (results round to 0 below) to 89 (infinite above), both signs of
        // the exponent's whole range, in blocks of 16; and a sample of the rest, with the specials.
        let neg = (f32::to_bits(-0.0)..=f32::to_bits(-104.0)).step_by(16);
        let pos = (0..=f32::to_bits(89.0)).step_by(16);
        let starts: Vec<u32> = neg.chain(pos).collect();
        let bad: Vec<u32> = starts
            .par_iter()
            .flat_map_iter(|&s| mismatches(t, s))
            .collect();
        let rest: Vec<u32> = (0..u32::MAX / 4099)
            .map(|i| i * 4099)
            .chain(
                [
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::NAN,
                    f32::MAX,
                    f32::MIN,
                ]
                .map(f32::to_bits),
            )
            .flat_map(|s| mismatches(t, s))
            .collect();
        let shown: Vec<String> = bad
            .iter()
            .chain(&rest)
            .take(5)
            .map(|&b| format!("{:e}", f32::from_bits(b)))
            .collect();
        assert!(
            bad.is_empty() && rest.is_empty(),
            "{} + {} arguments differ from libm, e.g. {shown:?}",
            bad.len(),
            rest.len()
        );
    }
}
