//! Helpers shared by the bf16 kernels: rounding f32 operands to bf16 and per-thread scratch.

use std::cell::RefCell;

/// Lends this thread's buffer `key` resized to `len` (zeroed), or a fresh one when it is in use.
pub(crate) fn with_zeroed<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            v.resize(len, T::default());
            f(&mut v)
        }
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

/// bf16 bits of `v`, rounded to nearest even (NaN stays NaN), as PyTorch's `.to(torch.bfloat16)`.
#[inline(always)]
pub(crate) fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if v.is_nan() {
        (b >> 16) | 0x40
    } else {
        (b + 0x7fff + ((b >> 16) & 1)) >> 16
    }
}
