//! Intel AMX basics shared by the AMX kernels (GEMM, attention): the tile permission and the tile
//! configuration.
//!
//! Linux hands out the tile state only on request: [`available`] asks once per process
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`) after checking CPUID and XCR0. Each
//! kernel task then configures the tiles with a [`TileSession`] (all eight as 16 rows x 64 bytes).

use std::arch::asm;
use std::sync::OnceLock;

/// Rows of a tile, and f32 columns of a C tile.
pub(crate) const TILE: usize = 16;
/// bf16 elements per tile row (64 bytes).
pub(crate) const TK: usize = 32;

/// The 64-byte tile configuration `LDTILECFG` reads (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Eight 16 x 64-byte tiles: every tile the kernels use has the full shape.
const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// True when this CPU has AMX-BF16 and the OS lets this process use the tiles (asked once).
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(request_tiles)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tiles() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: CPUID is always available on x86-64; XGETBV only runs when CPUID says OSXSAVE.
    unsafe {
        let leaf1 = __cpuid_count(1, 0);
        if leaf1.ecx & (1 << 27) == 0 || __cpuid_count(0, 0).eax < 7 {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves the tile state.
        // The kernels also pack and convert with AVX-512F/BW/VL and AVX512-BF16 (every AMX CPU has them).
        let avx512bf16 = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bf16");
        if !(amx_bf16 && amx_tile && avx512bf16) || _xgetbv(0) & (0b11 << 17) != 0b11 << 17 {
            return false;
        }
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tiles() -> bool {
    false
}

/// The tiles configured on this thread for the lifetime of the value, released on drop.
pub(crate) struct TileSession(());

impl TileSession {
    /// Configures tmm0-7 as 16 x 64-byte tiles. Only call when [`available`] is true.
    pub(crate) fn start() -> TileSession {
        debug_assert!(available());
        // SAFETY: the process holds the tile permission (available); CONFIG is a valid palette-1
        // configuration, 64-byte aligned.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        TileSession(())
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: releasing configured tiles has no other effect.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Zeroes the accumulator tiles tmm0-3.
///
/// # Safety
/// Tiles configured by a [`TileSession`] on this thread.
#[inline(always)]
pub(crate) unsafe fn zero_accumulators() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// Stores the accumulator tiles tmm0-3 (16 rows x 16 f32 each) at `dst[t]`, rows `stride` bytes apart.
///
/// # Safety
/// Tiles configured by a [`TileSession`]; each `dst[t]` spans 16 rows of 64 bytes at that stride.
#[inline(always)]
pub(crate) unsafe fn store_accumulators(dst: [*mut f32; 4], stride: usize) {
    asm!(
        "tilestored [{o0} + {s}*1], tmm0",
        "tilestored [{o1} + {s}*1], tmm1",
        "tilestored [{o2} + {s}*1], tmm2",
        "tilestored [{o3} + {s}*1], tmm3",
        o0 = in(reg) dst[0],
        o1 = in(reg) dst[1],
        o2 = in(reg) dst[2],
        o3 = in(reg) dst[3],
        s = in(reg) stride,
        options(nostack)
    );
}
