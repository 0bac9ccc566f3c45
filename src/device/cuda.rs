//! The CUDA device: one context and stream on GPU 0, every kernel module (embedded fatbins from
//! `kernels/*.cu`) loaded once, allocation, copies and launches. Every CUDA result is checked and
//! turned into an [`Error::Device`] that says what failed (no driver, no GPU, unsupported
//! architecture, out of memory with the size asked, a kernel that failed to launch).
//!
//! With `--features cuda-emu` the same code runs on the emulated device (kernels/emu/): the
//! kernels built by the host C++ compiler and a CPU `libcuda.so`, loaded before cudarc looks for
//! the driver — so every line here is exercised in CI without a GPU.
//!
//! Memory: cudarc's stream-ordered allocator (`cuMemAllocAsync` from the device's default memory
//! pool, which caches freed blocks and reuses them on the same stream) — see benches/RESULTS.md for
//! the comparison with a plain `cuMemAlloc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};
use crate::tensor::DType;

mod modules {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Device memory of one tensor.
#[derive(Debug, Clone)]
pub enum CudaBuf {
    F32(CudaSlice<f32>),
    I64(CudaSlice<i64>),
}

impl PartialEq for CudaBuf {
    /// Device buffers compare by identity (copy to the host to compare values).
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl CudaBuf {
    pub fn dtype(&self) -> DType {
        match self {
            CudaBuf::F32(_) => DType::F32,
            CudaBuf::I64(_) => DType::I64,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            CudaBuf::F32(s) => s.len(),
            CudaBuf::I64(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// When set, every output allocation is filled with NaN bytes (0xFF) before its kernel runs, so an
/// element a kernel forgets to write fails the parity tests instead of reading stale zeros.
static POISON: AtomicBool = AtomicBool::new(false);

pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

pub struct CudaDev {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    cc: (i32, i32),
    /// Streaming multiprocessors (for choosing a GEMM tile that fills the GPU).
    sms: usize,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    funcs: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

static DEV: OnceLock<std::result::Result<Arc<CudaDev>, String>> = OnceLock::new();

impl CudaDev {
    /// The process's GPU 0, initialised on first use; an error (kept) when there is none.
    pub fn get() -> Result<Arc<CudaDev>> {
        DEV.get_or_init(init).clone().map_err(Error::Device)
    }

    pub fn describe(&self) -> String {
        format!("{} (sm_{}{})", self.name, self.cc.0, self.cc.1)
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| self.err("synchronize", e))
    }

    /// A kernel by module (the `.cu` file stem) and function name, looked up once.
    pub fn func(&self, module: &'static str, name: &'static str) -> Result<CudaFunction> {
        let mut funcs = self.funcs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = funcs.get(&(module, name)) {
            return Ok(f.clone());
        }
        let m = self
            .modules
            .get(module)
            .ok_or_else(|| Error::Device(format!("no kernel module '{module}' was compiled into this build")))?;
        let f = m
            .load_function(name)
            .map_err(|e| Error::Device(format!("kernel {module}::{name} not found in its module: {e}")))?;
        funcs.insert((module, name), f.clone());
        Ok(f)
    }

    /// With `ENGRAM_CUDA_SYNC=1`, wait after every launch so an asynchronous fault is reported
    /// against the kernel that caused it.
    pub fn debug_sync(&self, module: &str, func: &str) -> Result<()> {
        static SYNC: OnceLock<bool> = OnceLock::new();
        if *SYNC.get_or_init(|| std::env::var_os("ENGRAM_CUDA_SYNC").is_some_and(|v| v != "0")) {
            self.stream.synchronize().map_err(|e| self.err(&format!("kernel {module}::{func}"), e))?;
        }
        Ok(())
    }

    pub fn err(&self, what: &str, e: DriverError) -> Error {
        Error::Device(format!("CUDA {what} failed on {}: {e}", self.name))
    }

    fn alloc_err(&self, bytes: usize, e: DriverError) -> Error {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let free = self.ctx.mem_get_info().map(|(f, _)| f).unwrap_or(0);
            Error::Device(format!(
                "out of GPU memory on {}: asked for {bytes} bytes, {free} bytes free",
                self.name
            ))
        } else {
            self.err(&format!("allocation of {bytes} bytes"), e)
        }
    }

    /// Uninitialised memory for an output (NaN-poisoned under [`set_poison`]).
    pub fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        let bytes = n * std::mem::size_of::<T>();
        // SAFETY: every caller launches a kernel that writes all n elements before they are read
        // (the poison mode exists to prove it in tests).
        let mut s = unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(|e| self.alloc_err(bytes, e))?;
        if POISON.load(Ordering::Relaxed) {
            let (ptr, _rec) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut s, &self.stream);
            // SAFETY: ptr spans the allocation just made.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes.max(1), self.stream.cu_stream()) }
                .map_err(|e| self.err("poison memset", e))?;
        }
        Ok(s)
    }

    /// Zero-filled memory (gradient slots, accumulators).
    pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        let bytes = n * std::mem::size_of::<T>();
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| self.alloc_err(bytes, e))
    }

    pub fn htod<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        let mut d = self.alloc::<T>(host.len())?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut d).map_err(|e| self.err("host-to-device copy", e))?;
        }
        Ok(d)
    }

    pub fn dtoh<T: cudarc::driver::DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>, n: usize) -> Result<Vec<T>> {
        let mut v = vec![T::default(); dev.len()];
        self.stream.memcpy_dtoh(dev, &mut v).map_err(|e| self.err("device-to-host copy", e))?;
        v.truncate(n);
        Ok(v)
    }
}

fn init() -> std::result::Result<Arc<CudaDev>, String> {
    #[cfg(feature = "cuda-emu")]
    {
        // The emulated driver (soname libcuda.so) loaded first: cudarc's own dlopen("libcuda.so")
        // then finds it instead of a real driver.
        // SAFETY: a library built by build.rs from kernels/emu/driver.cpp; it has no initialisers
        // beyond the C++ runtime's.
        let lib = unsafe { libloading::Library::new(modules::EMU_DRIVER) }
            .map_err(|e| format!("cannot load the emulated CUDA driver {}: {e}", modules::EMU_DRIVER))?;
        std::mem::forget(lib); // stays loaded for the life of the process
    }
    // cudarc panics inside its loader when libcuda is missing: probe first.
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver: libcuda.so could not be loaded (no NVIDIA driver on this machine)".into());
    }
    let count = CudaContext::device_count().map_err(|e| format!("no usable GPU: the CUDA driver failed to start: {e}"))?;
    if count < 1 {
        return Err("no GPU: the CUDA driver is installed but reports 0 devices".into());
    }
    let ctx = CudaContext::new(0).map_err(|e| format!("cannot create a CUDA context on GPU 0: {e}"))?;
    let name = ctx.name().unwrap_or_else(|_| "GPU 0".into());
    let cc = ctx.compute_capability().map_err(|e| format!("cannot read the compute capability of {name}: {e}"))?;
    if cc.0 < 8 {
        return Err(format!(
            "unsupported GPU architecture: {name} is sm_{}{}, engram's kernels need sm_80 (Ampere) or newer",
            cc.0, cc.1
        ));
    }
    // One stream: cudarc's per-buffer event tracking only adds overhead.
    // SAFETY: all work goes to the one default stream, so no cross-stream ordering is needed.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.default_stream();
    let mut loaded = HashMap::new();
    for &(module, image) in modules::MODULES {
        let m = ctx
            .load_module(Ptx::from_binary(image.to_vec()))
            .map_err(|e| format!("cannot load kernel module '{module}' on {name} (sm_{}{}): {e}", cc.0, cc.1))?;
        loaded.insert(module, m);
    }
    let sms = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_or(1, |n| n.max(1) as usize);
    Ok(Arc::new(CudaDev { ctx, stream, name, cc, sms, modules: loaded, funcs: Mutex::new(HashMap::new()) }))
}

/// 1-D launch over `n` elements with grid-stride loops in the kernel.
pub fn cfg_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535 * 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// One block of `threads` per row.
pub fn cfg_rows(rows: usize, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem }
}

/// Launch `module::func` with `cfg` and the listed kernel arguments (references to device slices
/// or to local scalars that outlive the statement), checking the result.
#[macro_export]
#[doc(hidden)]
macro_rules! cuda_launch {
    ($dev:expr, $module:expr, $func:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        use $crate::device::cuda::PushKernelArg as _;
        let dev: &$crate::device::cuda::CudaDev = &$dev;
        let (module, func): (&'static str, &'static str) = ($module, $func);
        let f = dev.func(module, func)?;
        let mut b = dev.stream().launch_builder(&f);
        $( b.arg($arg); )*
        // SAFETY: the argument list matches the kernel's signature in kernels/<module>.cu, and
        // every buffer holds the element counts passed beside it.
        let r = unsafe { b.launch($cfg) }.map(|_| ()).map_err(|e| dev.err(&format!("launch of {module}::{func}"), e));
        r.and_then(|_| dev.debug_sync(module, func))
    }};
}
pub use crate::cuda_launch as launch;
#[doc(hidden)]
pub use cudarc::driver::{LaunchConfig, PushKernelArg};

/// `y += alpha · x` over f32 buffers (gradient accumulation, scaling).
pub fn axpy(y: &mut CudaSlice<f32>, x: &CudaSlice<f32>, alpha: f32) -> Result<()> {
    let dev = CudaDev::get()?;
    let n = y.len().min(x.len()) as i64;
    launch!(dev, "elementwise", "axpy_v1", cfg_1d(n as usize); y, x, &alpha, &n)
}

/// `x *= s` in place.
pub fn scale_inplace(x: &mut CudaSlice<f32>, s: f32) -> Result<()> {
    let dev = CudaDev::get()?;
    let n = x.len() as i64;
    launch!(dev, "elementwise", "scale_inplace_v1", cfg_1d(n as usize); x, &s, &n)
}

/// Σ x² in f64 (gradient-norm clipping).
pub fn sum_squares(x: &CudaSlice<f32>, n: usize) -> Result<f64> {
    let dev = CudaDev::get()?;
    let mut acc = dev.zeros::<f64>(1)?;
    let n64 = n as i64;
    launch!(dev, "elementwise", "sum_squares_v1", cfg_1d(n).capped(1024); &mut acc, x, &n64)?;
    Ok(dev.dtoh(&acc, 1)?[0])
}

trait CfgExt {
    fn capped(self, cap: u32) -> LaunchConfig;
}
impl CfgExt for LaunchConfig {
    fn capped(mut self, cap: u32) -> LaunchConfig {
        self.grid_dim.0 = self.grid_dim.0.min(cap);
        self
    }
}

/// Integer ids/masks/targets as host values (copied back from the GPU when needed) so the ops can
/// validate them and report the bad value, exactly like the CPU path.
pub fn ids_host(t: &crate::tensor::Tensor, op: &'static str) -> Result<Vec<i64>> {
    match t.cuda() {
        Some(CudaBuf::I64(s)) => CudaDev::get()?.dtoh(s, s.len()),
        Some(_) => Err(Error::DType { op, dtype: t.dtype(), detail: "expected I64 ids".into() }),
        None => Ok(t.ids(op)?.to_vec()),
    }
}

/// All tensors on one device, else an error naming the op and the devices.
pub fn check_cuda(op: &'static str, ts: &[&crate::tensor::Tensor]) -> Result<()> {
    if let Some(t) = ts.iter().find(|t| !t.is_cuda()) {
        return Err(Error::Device(format!(
            "{op}: operands live on different devices ({:?} {:?} on {:?} beside CUDA tensors); move them with to_device",
            t.dtype(),
            t.shape(),
            t.device()
        )));
    }
    Ok(())
}

/// The GEMM kernels of kernels/matmul.cu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmVariant {
    /// 64×64 tile, 4×4 per thread: the first kernel (`ENGRAM_GEMM=v1`).
    V1,
    /// 128×128 tile, 8×8 per thread, double-buffered: production (run on an H100).
    V2,
    /// 64×128 tile of the same kernel, for shapes with too few 128×128 tiles to fill the GPU.
    V2x64,
    /// Tensor cores, 3xTF32 (f32-level accuracy), 128×128 tile (opt-in; run on an H100).
    V3,
    /// The same with a 64×128 tile.
    V3x64,
    /// Tensor cores, one TF32 product per term (~1e-3 relative: reduced precision, opt-in).
    V3Tf32,
    /// The same with a 64×128 tile.
    V3Tf32x64,
    /// Tensor cores, bf16 autocast: operands rounded to bf16, exact products, f32 sums (what a
    /// bf16 tape's linear layers run; not an f32 GEMM, so not in [`GemmVariant::ALL`]).
    V3Bf16,
    /// The same with a 64×128 tile.
    V3Bf16x64,
}

impl GemmVariant {
    pub const ALL: [GemmVariant; 7] = [
        GemmVariant::V1,
        GemmVariant::V2,
        GemmVariant::V2x64,
        GemmVariant::V3,
        GemmVariant::V3x64,
        GemmVariant::V3Tf32,
        GemmVariant::V3Tf32x64,
    ];

    pub fn kernel(self) -> &'static str {
        match self {
            GemmVariant::V1 => "gemm_v1",
            GemmVariant::V2 => "gemm_v2",
            GemmVariant::V2x64 => "gemm_v2_64",
            GemmVariant::V3 => "gemm_v3",
            GemmVariant::V3x64 => "gemm_v3_64",
            GemmVariant::V3Tf32 => "gemm_v3_tf32",
            GemmVariant::V3Tf32x64 => "gemm_v3_tf32_64",
            GemmVariant::V3Bf16 => "gemm_v3_bf16",
            GemmVariant::V3Bf16x64 => "gemm_v3_bf16_64",
        }
    }

    /// Whether the kernel rounds its inputs to TF32 (10-bit mantissa): results within ~1e-3 of
    /// the f32 product, not the f32 tolerances every other variant meets.
    pub fn reduced_precision(self) -> bool {
        matches!(self, GemmVariant::V3Tf32 | GemmVariant::V3Tf32x64)
    }

    /// (rows, columns) of C per block, and threads per block.
    fn tile(self) -> (usize, usize, u32) {
        match self {
            GemmVariant::V1 => (64, 64, 256),
            GemmVariant::V2 | GemmVariant::V3 | GemmVariant::V3Tf32 | GemmVariant::V3Bf16 => (128, 128, 256),
            GemmVariant::V2x64 => (64, 128, 128),
            GemmVariant::V3x64 | GemmVariant::V3Tf32x64 | GemmVariant::V3Bf16x64 => (64, 128, 256),
        }
    }
}

thread_local! {
    /// A variant forced for this thread's launches (tests and benchmarks compare them).
    static GEMM_FORCED: std::cell::Cell<Option<GemmVariant>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with every GEMM launched from this thread using `v` (tests, benchmarks).
pub fn with_gemm_variant<R>(v: GemmVariant, f: impl FnOnce() -> R) -> R {
    let prev = GEMM_FORCED.with(|c| c.replace(Some(v)));
    let r = f();
    GEMM_FORCED.with(|c| c.set(prev));
    r
}

/// The GEMM for a launch: the forced one, else by `ENGRAM_GEMM` — unset or `v2`: v2, the
/// production kernel since its H100 run (2026-11-24: the whole CUDA suite, memcheck clean, no
/// racecheck hazard in the op tests, a MiniLM training step in 0.69× v1's time); `v1`: the first kernel; `v3`: the 3xTF32
/// tensor-core kernel; `tf32`: its TF32 form (reduced precision, like PyTorch's `allow_tf32`).
/// v2 and v3 take their 64-row tile when the 128×128 tiles would not give every SM a block.
fn gemm_variant(dev: &CudaDev, batch: usize, m: usize, n: usize) -> GemmVariant {
    if let Some(v) = GEMM_FORCED.with(|c| c.get()) {
        return v;
    }
    static ENV: OnceLock<u8> = OnceLock::new();
    let family = *ENV.get_or_init(|| match std::env::var("ENGRAM_GEMM").as_deref() {
        Ok("v1") => 1,
        Ok("v3") => 3,
        Ok("tf32") => 4,
        Ok("v2") | Err(_) => 2,
        Ok(other) => {
            eprintln!("warning: ENGRAM_GEMM={other:?} is not one of v1, v2, v3, tf32; using v2");
            2
        }
    });
    match (family, fills_the_gpu(dev, batch, m, n)) {
        (2, true) => GemmVariant::V2,
        (2, false) => GemmVariant::V2x64,
        (3, true) => GemmVariant::V3,
        (3, false) => GemmVariant::V3x64,
        (4, true) => GemmVariant::V3Tf32,
        (4, false) => GemmVariant::V3Tf32x64,
        (1, _) => GemmVariant::V1,
        (_, true) => GemmVariant::V2,
        (_, false) => GemmVariant::V2x64,
    }
}

/// Whether 128×128 tiles give every SM a block (else the 64-row tile of v2/v3).
fn fills_the_gpu(dev: &CudaDev, batch: usize, m: usize, n: usize) -> bool {
    m.div_ceil(128) * n.div_ceil(128) * batch >= dev.sms
}

/// The GEMM of a launch in bf16 autocast ([`crate::Tape::bf16`]): the bf16 tensor-core kernel,
/// whatever `ENGRAM_GEMM` or a forced f32 variant says (those choose among f32 GEMMs).
fn gemm_variant_bf16(dev: &CudaDev, batch: usize, m: usize, n: usize) -> GemmVariant {
    if fills_the_gpu(dev, batch, m, n) {
        GemmVariant::V3Bf16
    } else {
        GemmVariant::V3Bf16x64
    }
}

/// GEMM launch: C[b] (=, or += when `acc`) op(A[b])·op(B[b]); see kernels/matmul.cu. With
/// `bf16` the autocast product: operands rounded to bf16, exact products summed in f32
/// (`gemm_v3_bf16`; the CPU's `ops::gemm_bf16` up to the order of the sums).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dev: &CudaDev,
    c: &mut CudaSlice<f32>,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    strides: (usize, usize, usize),
    acc: bool,
    bf16: bool,
) -> Result<()> {
    let (mi, ni, ki, tai, tbi, acci) = (m as i32, n as i32, k as i32, ta as i32, tb as i32, acc as i32);
    let (sa, sb, sc) = (strides.0 as i64, strides.1 as i64, strides.2 as i64);
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    let v = if bf16 { gemm_variant_bf16(dev, batch, m, n) } else { gemm_variant(dev, batch, m, n) };
    let (bm, bn, threads) = v.tile();
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(bn) as u32, m.div_ceil(bm) as u32, batch as u32), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    launch!(dev, "matmul", v.kernel(), cfg; c, a, b, &mi, &ni, &ki, &tai, &tbi, &sa, &sb, &sc, &acci)
}

/// Wrap a device f32 buffer as tensor storage.
pub fn wrap(s: CudaSlice<f32>) -> crate::tensor::Buf {
    crate::tensor::Buf::Cuda(CudaBuf::F32(s))
}

/// The upstream gradient of a CUDA op (always a device f32 buffer).
pub fn dout_f32<'a>(dout: &'a crate::tensor::Buf, op: &'static str) -> Result<&'a CudaSlice<f32>> {
    match dout {
        crate::tensor::Buf::Cuda(CudaBuf::F32(s)) => Ok(s),
        other => Err(Error::Autograd(format!("{op}: upstream gradient of a CUDA op is {:?} on {:?}", other.dtype(), other.device()))),
    }
}
