//! The host emulation of the device (`cuda-host` feature): the same interface as the cudarc runtime,
//! with device memory in bounds-checked host allocations and launches run by kernels/host/runtime.cpp,
//! which executes the kernels of `kernels/*.cu` compiled for the CPU. Launches are synchronous; each
//! runs under every thread schedule of `TWOSSP_HOST_SCHEDULES` (default forward, reversed, shuffled)
//! and fails unless their results are bit-identical.

use super::Arg;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::marker::PhantomData;
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

/// Dynamic shared memory a kernel may use before [`Gpu::allow_shared_memory`] raises it (CUDA's default).
const DEFAULT_DYNAMIC_SHARED: usize = 48 * 1024;
/// The most an H200 gives one block.
const MAX_DYNAMIC_SHARED: u32 = 227 * 1024;
/// Streaming multiprocessors of the emulated device (an H200's), so launch plans match the real GPU's.
const EMULATED_SMS: usize = 132;

type LaunchFn = unsafe extern "C" fn(
    name: *const c_char,
    grid: *const u32,
    block: *const u32,
    dynamic_bytes: usize,
    dynamic_limit: usize,
    args: *const *const c_void,
    sizes: *const usize,
    n_args: c_int,
    threads: c_int,
    err: *mut c_char,
    err_len: usize,
) -> c_int;

type AllocFn = unsafe extern "C" fn(bytes: usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(data: *mut c_void);
type HasKernelFn = unsafe extern "C" fn(name: *const c_char) -> c_int;

/// The entry points of kernels/host/runtime.cpp in the loaded library.
struct HostKernels {
    alloc: AllocFn,
    free: FreeFn,
    has_kernel: HasKernelFn,
    launch: LaunchFn,
}

/// The host build of the kernels, loaded once: from `TWOSSP_HOST_KERNELS` (a path) when set, else
/// the copy embedded in this binary (through an in-memory file).
fn host_kernels() -> Result<&'static HostKernels> {
    static LOADED: OnceLock<std::result::Result<HostKernels, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| load_host_kernels().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("cannot load the host build of the kernels: {e}"))
}

fn load_host_kernels() -> Result<HostKernels> {
    let path = match std::env::var("TWOSSP_HOST_KERNELS") {
        Ok(path) => path,
        Err(_) => {
            let name = CString::new("twossp_host_kernels").expect("no NUL");
            let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
            if fd < 0 {
                bail!("memfd_create: {}", std::io::Error::last_os_error());
            }
            let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            std::io::Write::write_all(&mut file, HOST_KERNELS)?;
            std::mem::forget(file); // the descriptor stays open while the library is mapped
            format!("/proc/self/fd/{fd}")
        }
    };
    let c_path = CString::new(path.clone()).map_err(|_| anyhow!("bad path {path:?}"))?;
    let lib = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if lib.is_null() {
        let why = unsafe { CStr::from_ptr(libc::dlerror()) };
        bail!("{path}: {}", why.to_string_lossy());
    }
    let symbol = |name: &str| -> Result<*mut c_void> {
        let c = CString::new(name).expect("no NUL");
        let f = unsafe { libc::dlsym(lib, c.as_ptr()) };
        if f.is_null() {
            bail!("{path} has no {name}");
        }
        Ok(f)
    };
    unsafe {
        Ok(HostKernels {
            alloc: std::mem::transmute::<*mut c_void, AllocFn>(symbol("twossp_host_alloc")?),
            free: std::mem::transmute::<*mut c_void, FreeFn>(symbol("twossp_host_free")?),
            has_kernel: std::mem::transmute::<*mut c_void, HasKernelFn>(symbol(
                "twossp_host_has_kernel",
            )?),
            launch: std::mem::transmute::<*mut c_void, LaunchFn>(symbol("twossp_host_launch")?),
        })
    }
}

/// A device buffer of `T` in host memory between red zones and guard pages (freed on drop).
pub struct GpuBuffer<T> {
    data: *mut T,
    len: usize,
    _owns: PhantomData<T>,
}

// The buffer owns its allocation; access goes through the runtime, as with a device pointer.
unsafe impl<T: Send> Send for GpuBuffer<T> {}
unsafe impl<T: Sync> Sync for GpuBuffer<T> {}

impl<T> GpuBuffer<T> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[T] {
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }
}

impl<T> Drop for GpuBuffer<T> {
    fn drop(&mut self) {
        if let Ok(host) = host_kernels() {
            unsafe { (host.free)(self.data.cast()) }
        }
    }
}

/// The emulated GPU: kernel shared-memory limits and the number of CPU threads that run blocks.
pub struct Gpu {
    dynamic_limits: HashMap<String, usize>,
    unavailable: HashMap<String, String>,
    threads: usize,
    name: String,
}

impl Gpu {
    /// Opens the emulated device (ordinal 0), checking that every kernel the launchers name is built in.
    pub fn new(ordinal: usize) -> Result<Self> {
        if ordinal != 0 {
            bail!("no CUDA device {ordinal}: the host emulation has one device (cuda:0)");
        }
        let host = host_kernels()?;
        for file in KERNEL_FILES {
            for name in super::kernels::entry_points(file) {
                let c = CString::new(*name).expect("kernel names have no NUL");
                if unsafe { (host.has_kernel)(c.as_ptr()) } == 0 {
                    bail!("kernel {name} missing from kernels/{file}.cu (host build)");
                }
            }
        }
        let threads = std::env::var("TWOSSP_HOST_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(rayon::current_num_threads);
        let mut gpu = Self {
            dynamic_limits: HashMap::new(),
            unavailable: HashMap::new(),
            threads,
            name: format!("host emulation of an H200 ({threads} CPU threads)"),
        };
        super::kernels::configure(&mut gpu);
        Ok(gpu)
    }

    /// Always true: the emulated device is this CPU.
    pub fn available() -> bool {
        true
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Streaming multiprocessors of the emulated H200.
    pub fn sm_count(&self) -> usize {
        EMULATED_SMS
    }

    /// Free and total host memory in bytes (the emulated device's memory).
    pub fn memory(&self) -> Result<(usize, usize)> {
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        if unsafe { libc::sysinfo(&mut info) } != 0 {
            bail!("cannot query host memory");
        }
        let unit = info.mem_unit.max(1) as usize;
        Ok((info.freeram as usize * unit, info.totalram as usize * unit))
    }

    /// A zero-filled buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<GpuBuffer<T>> {
        self.alloc(n.max(1))
    }

    /// A buffer holding a copy of `host`.
    pub fn upload<T: DeviceRepr + Copy>(&self, host: &[T]) -> Result<GpuBuffer<T>> {
        if host.is_empty() {
            bail!("cannot upload an empty buffer");
        }
        let mut buf = self.alloc::<T>(host.len())?;
        buf.as_mut_slice().copy_from_slice(host);
        Ok(buf)
    }

    /// f32 values rounded to bf16 (nearest even).
    pub fn upload_bf16(&self, values: &[f32]) -> Result<GpuBuffer<u16>> {
        let bits: Vec<u16> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        if bits.is_empty() {
            return self.zeros(0);
        }
        self.upload(&bits)
    }

    /// Copies `host` into the start of `dst`.
    pub fn write<T: DeviceRepr + Copy>(&self, host: &[T], dst: &mut GpuBuffer<T>) -> Result<()> {
        if host.len() > dst.len {
            bail!(
                "host to device copy of {} elements into a buffer of {}",
                host.len(),
                dst.len
            );
        }
        dst.as_mut_slice()[..host.len()].copy_from_slice(host);
        Ok(())
    }

    /// The contents of `src` on the host.
    pub fn download<T: DeviceRepr + Default + Clone>(&self, src: &GpuBuffer<T>) -> Result<Vec<T>> {
        Ok(src.as_slice().to_vec())
    }

    /// The first `n` elements of `src` on the host.
    pub fn download_prefix<T: DeviceRepr + Default + Clone>(
        &self,
        src: &GpuBuffer<T>,
        n: usize,
    ) -> Result<Vec<T>> {
        if n > src.len {
            bail!(
                "device to host copy of {n} elements from a buffer of {}",
                src.len
            );
        }
        Ok(src.as_slice()[..n].to_vec())
    }

    /// Copies the first `n` elements of `src` into the start of `dst` on the device.
    pub fn copy<T: DeviceRepr + Copy>(
        &self,
        src: &GpuBuffer<T>,
        dst: &mut GpuBuffer<T>,
        n: usize,
    ) -> Result<()> {
        super::check_copy(n, src.len(), dst.len())?;
        dst.as_mut_slice()[..n].copy_from_slice(&src.as_slice()[..n]);
        Ok(())
    }

    /// Nothing to wait for: host launches complete before they return.
    pub fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Device address of element `offset` of `buf`.
    pub fn ptr<T>(&self, buf: &GpuBuffer<T>, offset: usize) -> u64 {
        buf.data as u64 + (offset * std::mem::size_of::<T>()) as u64
    }

    /// Sets a kernel's dynamic shared memory limit (needed above 48 KiB), as the driver would: above an
    /// H200's 227 KiB the kernel becomes unavailable and its launches fail, saying why.
    pub(crate) fn allow_shared_memory(&mut self, kernel: &str, bytes: u32) {
        if bytes > MAX_DYNAMIC_SHARED {
            let reason = format!(
                "kernel {kernel} needs {bytes} bytes of shared memory, which {} cannot give",
                self.name
            );
            self.unavailable.insert(kernel.to_string(), reason);
        } else {
            self.dynamic_limits
                .insert(kernel.to_string(), bytes as usize);
        }
    }

    /// Runs `kernel` to completion on the CPU; any fault the emulation detects is the error.
    pub(crate) fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if let Some(reason) = self.unavailable.get(kernel) {
            bail!("{reason}");
        }
        let (pointers, sizes): (Vec<*const c_void>, Vec<usize>) =
            args.iter().map(arg_bytes).unzip();
        let name = CString::new(kernel).map_err(|_| anyhow!("bad kernel name {kernel:?}"))?;
        let limit = self
            .dynamic_limits
            .get(kernel)
            .copied()
            .unwrap_or(DEFAULT_DYNAMIC_SHARED);
        let mut err = vec![0 as c_char; 512];
        let status = unsafe {
            (host_kernels()?.launch)(
                name.as_ptr(),
                [grid.0, grid.1, grid.2].as_ptr(),
                [block, 1, 1].as_ptr(),
                shared as usize,
                limit,
                pointers.as_ptr(),
                sizes.as_ptr(),
                pointers.len() as c_int,
                self.threads as c_int,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if status != 0 {
            let message = unsafe { CStr::from_ptr(err.as_ptr()) };
            bail!("{}", message.to_string_lossy());
        }
        Ok(())
    }

    /// `n` elements, zero-filled (fresh pages), between red zones and guard pages.
    fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<GpuBuffer<T>> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| anyhow!("allocation of {n} elements overflows"))?;
        let data = unsafe { (host_kernels()?.alloc)(bytes) }.cast::<T>();
        if data.is_null() {
            bail!("out of device memory allocating {bytes} bytes");
        }
        Ok(GpuBuffer {
            data,
            len: n,
            _owns: PhantomData,
        })
    }
}

/// The address and size of an argument's value (cudaLaunchKernel's convention).
fn arg_bytes(arg: &Arg) -> (*const c_void, usize) {
    fn of<T>(v: &T) -> (*const c_void, usize) {
        ((v as *const T).cast(), std::mem::size_of::<T>())
    }
    match arg {
        Arg::Ptr(v) | Arg::U64(v) => of(v),
        Arg::I32(v) => of(v),
        Arg::I64(v) => of(v),
        Arg::F32(v) => of(v),
        Arg::Epilogue(v) => of(v),
    }
}

#[cfg(test)]
mod tests {
    use super::Gpu;

    #[test]
    fn only_device_zero_exists() {
        let err = Gpu::new(1).err().expect("one device").to_string();
        assert!(err.contains("no CUDA device 1"), "{err}");
        assert!(Gpu::new(0).is_ok());
    }
}
