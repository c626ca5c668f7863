//! Device context: driver probing, module loading, buffers, checked launches.

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::PinnedHostSlice;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Arg;

/// Elements per pinned staging buffer (two alternate, so conversion overlaps the copy).
const STAGING_ELEMS: usize = 32 << 20;

include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));

/// A device buffer of `T` (allocation owned; freed on drop).
pub type GpuBuffer<T> = CudaSlice<T>;

/// One GPU: context, the stream every kernel runs on, and the loaded kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _modules: Vec<Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
    sync_each_launch: bool,
    name: String,
    sm_count: usize,
    unavailable: HashMap<String, String>,
    staging: Mutex<Vec<PinnedHostSlice<u16>>>,
}

impl Gpu {
    /// Opens GPU `ordinal`, or fails cleanly when there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<Self> {
        // cudarc's dynamic loading panics when libcuda is missing: look for it first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("no CUDA device: the CUDA driver library (libcuda) is not installed on this machine");
        }
        let count = CudaContext::device_count().map_err(|e| anyhow!("no CUDA device: {e}"))?;
        if count <= 0 {
            bail!("no CUDA device: the driver reports no GPU");
        }
        if ordinal >= count as usize {
            bail!("no CUDA device {ordinal}: this machine has {count} GPU(s)");
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("cannot open CUDA device {ordinal}: {e}"))?;
        // One stream, explicit ordering: cudarc's per-buffer event tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let mut modules = Vec::new();
        let mut functions = HashMap::new();
        for (file, image) in KERNEL_IMAGES {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
                .map_err(|e| anyhow!("cannot load kernels/{file}.cu on this GPU: {e}"))?;
            for name in super::kernels::entry_points(file) {
                let f = module
                    .load_function(name)
                    .map_err(|e| anyhow!("kernel {name} missing from kernels/{file}.cu: {e}"))?;
                functions.insert(name.to_string(), f);
            }
            modules.push(module);
        }
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_or(1, |n| n.max(1) as usize);
        let mut gpu = Self {
            ctx,
            stream,
            _modules: modules,
            functions,
            sync_each_launch: std::env::var("TWOSSP_CUDA_SYNC").is_ok_and(|v| v == "1"),
            name,
            sm_count,
            unavailable: HashMap::new(),
            staging: Mutex::new(Vec::new()),
        };
        super::kernels::configure(&mut gpu);
        Ok(gpu)
    }

    /// Whether a CUDA driver with at least one device is present (never panics).
    pub fn available() -> bool {
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        driver && CudaContext::device_count().is_ok_and(|n| n > 0)
    }

    /// Device name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Streaming multiprocessors.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .context("cannot query device memory")
    }

    /// A zero-filled buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<GpuBuffer<T>> {
        self.stream.alloc_zeros(n.max(1)).with_context(|| {
            format!(
                "out of device memory allocating {} bytes",
                n * std::mem::size_of::<T>()
            )
        })
    }

    /// A buffer holding a copy of `host`.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<GpuBuffer<T>> {
        if host.is_empty() {
            bail!("cannot upload an empty buffer");
        }
        self.stream
            .clone_htod(host)
            .with_context(|| format!("cannot upload {} bytes", std::mem::size_of_val(host)))
    }

    /// f32 values rounded to bf16 (nearest even) on the host and copied through pinned staging buffers.
    pub fn upload_bf16(&self, values: &[f32]) -> Result<GpuBuffer<u16>> {
        let mut dst = self.zeros::<u16>(values.len())?;
        let mut staging = self
            .staging
            .lock()
            .map_err(|_| anyhow!("staging buffers poisoned"))?;
        let full_chunks = values.len() / STAGING_ELEMS;
        if full_chunks > 0 && staging.is_empty() {
            for _ in 0..2 {
                let buf = unsafe { self.ctx.alloc_pinned::<u16>(STAGING_ELEMS) }
                    .context("cannot allocate pinned host memory")?;
                staging.push(buf);
            }
        }
        for (i, chunk) in values.chunks(STAGING_ELEMS).enumerate() {
            let start = i * STAGING_ELEMS;
            let mut view = dst.slice_mut(start..start + chunk.len());
            if i < full_chunks {
                let buf = &mut staging[i % 2];
                // Waits for the previous copy out of this buffer before overwriting it.
                let host = buf
                    .as_mut_slice()
                    .context("pinned staging buffer unavailable")?;
                host.par_iter_mut()
                    .zip(chunk)
                    .for_each(|(d, &v)| *d = half::bf16::from_f32(v).to_bits());
                self.stream
                    .memcpy_htod(&*buf, &mut view)
                    .context("host to device copy failed")?;
            } else {
                let bits: Vec<u16> = chunk
                    .par_iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect();
                self.stream
                    .memcpy_htod(&bits, &mut view)
                    .context("host to device copy failed")?;
            }
        }
        Ok(dst)
    }

    /// Copies `host` into the start of `dst`.
    pub fn write<T: DeviceRepr>(&self, host: &[T], dst: &mut GpuBuffer<T>) -> Result<()> {
        let mut view = dst.slice_mut(..host.len());
        self.stream
            .memcpy_htod(host, &mut view)
            .context("host to device copy failed")
    }

    /// The contents of `src` on the host.
    pub fn download<T: DeviceRepr + Default + Clone>(&self, src: &GpuBuffer<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(src)
            .context("device to host copy failed")
    }

    /// The first `n` elements of `src` on the host.
    pub fn download_prefix<T: DeviceRepr + Default + Clone>(
        &self,
        src: &GpuBuffer<T>,
        n: usize,
    ) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(&src.slice(..n))
            .context("device to host copy failed")
    }

    /// Copies the first `n` elements of `src` into the start of `dst` on the device.
    pub fn copy<T: DeviceRepr>(
        &self,
        src: &GpuBuffer<T>,
        dst: &mut GpuBuffer<T>,
        n: usize,
    ) -> Result<()> {
        super::check_copy(n, src.len(), dst.len())?;
        let mut dst = dst.slice_mut(..n);
        self.stream
            .memcpy_dtod(&src.slice(..n), &mut dst)
            .context("device copy failed")
    }

    /// Waits for all queued work; reports asynchronous kernel faults.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().context("CUDA kernel failed")
    }

    /// Device address of element `offset` of `buf`.
    pub fn ptr<T>(&self, buf: &GpuBuffer<T>, offset: usize) -> u64 {
        let (base, _guard) = buf.device_ptr(&self.stream);
        base + (offset * std::mem::size_of::<T>()) as u64
    }

    /// The raw stream (for cuBLAS in the benchmarks).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Sets a kernel's dynamic shared memory limit (needed above 48 KiB). A GPU with less shared
    /// memory than the kernel needs keeps working; only launches of that kernel then fail, saying why.
    pub(crate) fn allow_shared_memory(&mut self, kernel: &str, bytes: u32) {
        use cudarc::driver::sys::CUfunction_attribute_enum as A;
        let result = self.function(kernel).and_then(|f| {
            f.set_attribute(
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(|e| anyhow!("{e}"))
        });
        if let Err(e) = result {
            let reason = format!(
                "kernel {kernel} needs {bytes} bytes of shared memory, which {} cannot give: {e}",
                self.name
            );
            self.unavailable.insert(kernel.to_string(), reason);
        }
    }

    fn function(&self, kernel: &str) -> Result<&CudaFunction> {
        if let Some(reason) = self.unavailable.get(kernel) {
            bail!("{reason}");
        }
        self.functions
            .get(kernel)
            .ok_or_else(|| anyhow!("kernel {kernel} is not loaded"))
    }

    /// Launches `kernel` and checks the launch (and, with TWOSSP_CUDA_SYNC=1, its completion).
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
        let f = self.function(kernel)?;
        let mut builder = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(v) | Arg::U64(v) => builder.arg(v),
                Arg::I32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
                Arg::Epilogue(v) => builder.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared,
        };
        unsafe { builder.launch(cfg) }.map_err(|e| anyhow!("launching {kernel} failed: {e}"))?;
        if self.sync_each_launch {
            self.sync()
                .with_context(|| format!("kernel {kernel} failed"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Gpu;

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        if Gpu::available() {
            return; // covered on machines without a GPU (CI)
        }
        let err = Gpu::new(0).err().expect("no GPU here").to_string();
        assert!(err.contains("no CUDA device"), "{err}");
    }
}
