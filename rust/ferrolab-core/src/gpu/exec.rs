//! Running kernels on a device: one context, stream and kernel module per device, created at first use, and the
//! launch of every kernel of [`super::nvrtc::KERNELS`] on device buffers.
//!
//! Failures are classified the way GPU.md describes: a *sticky* error (illegal address, launch failure, ECC,
//! unknown) poisons the context, so the backend is marked dead for the process with its reason and every later
//! call is refused; any other error (out of memory, no binary for the GPU, ...) fails only the call, which the
//! caller may rerun on the CPU.
//!
//! Not yet run on a GPU: the code compiles and its host-side logic is tested, but every path here awaits a run on
//! a machine with a device (tools/gpu_check.sh).

use super::nvrtc;
use crate::sync::MutexExt;
use cudarc::driver::sys::CUresult;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// Threads per block of every kernel (`FL_BLOCK` in kernels.cu).
pub const BLOCK: u32 = 256;

/// A failed GPU call.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuFailure {
    /// What was being done ("cuMemAlloc", "launching fl_sum_f32", ...).
    pub during: String,
    /// The CUDA error's name, or a description where there is none.
    pub error: String,
    /// Whether the context is poisoned (the backend is then dead for the process).
    pub sticky: bool,
}

impl std::fmt::Display for GpuFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.during, self.error)
    }
}

/// Whether a CUDA error poisons the context (every later call in the process fails).
pub fn is_sticky(e: CUresult) -> bool {
    use CUresult as R;
    matches!(
        e,
        R::CUDA_ERROR_ILLEGAL_ADDRESS
            | R::CUDA_ERROR_LAUNCH_FAILED
            | R::CUDA_ERROR_ECC_UNCORRECTABLE
            | R::CUDA_ERROR_HARDWARE_STACK_ERROR
            | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | R::CUDA_ERROR_MISALIGNED_ADDRESS
            | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | R::CUDA_ERROR_INVALID_PC
            | R::CUDA_ERROR_UNKNOWN
    )
}

static DEAD: OnceLock<String> = OnceLock::new();

/// Why the backend was turned off for the process after a sticky error, if it was.
pub fn dead_reason() -> Option<&'static str> {
    DEAD.get().map(String::as_str)
}

fn fail(during: impl Into<String>, e: DriverError) -> GpuFailure {
    let f = GpuFailure {
        during: during.into(),
        error: format!("{:?}", e.0),
        sticky: is_sticky(e.0),
    };
    mark_dead_if_sticky(&f);
    f
}

/// Turns the backend off for the process when `f` is sticky (its context is poisoned).
pub fn mark_dead_if_sticky(f: &GpuFailure) {
    if f.sticky
        && DEAD
            .set(format!(
                "the GPU backend hit a sticky CUDA error ({f}) and is off for the rest of this process"
            ))
            .is_ok()
    {
        tracing::error!(target: "ferrolab.gpu", error = %f, "sticky CUDA error: the GPU backend is off for the rest of this process");
    }
}

fn other(during: impl Into<String>, error: impl Into<String>) -> GpuFailure {
    GpuFailure {
        during: during.into(),
        error: error.into(),
        sticky: false,
    }
}

/// Runs a cudarc call, turning a panic (a driver without a symbol cudarc looks up) into a failure.
fn guarded<T>(during: &str, f: impl FnOnce() -> Result<T, GpuFailure>) -> Result<T, GpuFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(other(during, crate::error::panic_message(&*p))))
}

/// A device ready to run kernels: its context, one stream, and the kernel module compiled for its architecture.
pub struct Device {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// Blocks of a reduction grid: a few per multiprocessor.
    pub reduce_blocks: u32,
}

static NVRTC_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Folders where NVRTC may be found (set by the Python layer at import: the `nvidia-cuda-nvrtc` wheel, CUDA_HOME).
pub fn set_nvrtc_dirs(dirs: Vec<PathBuf>) {
    *NVRTC_DIRS.locked() = dirs;
}

type Slot = OnceLock<Result<Arc<Device>, GpuFailure>>;
static DEVICES: OnceLock<Vec<Slot>> = OnceLock::new();

/// The device `ordinal`, set up at first use (context, stream, kernels). Refused when the probe found no usable
/// GPU, when the backend is dead, or in a forked child.
pub fn device(ordinal: usize) -> Result<Arc<Device>, GpuFailure> {
    let gpu = super::status().map_err(|r| other("probing the GPU", r))?;
    if let Some(r) = dead_reason() {
        return Err(other("using the GPU", r));
    }
    let slots = DEVICES.get_or_init(|| (0..gpu.devices.len()).map(|_| OnceLock::new()).collect());
    let Some(slot) = slots.get(ordinal) else {
        return Err(other(
            format!("selecting cuda:{ordinal}"),
            format!("there are {} CUDA device(s)", gpu.devices.len()),
        ));
    };
    slot.get_or_init(|| guarded("setting up the GPU", || set_up(ordinal)))
        .clone()
}

/// `(ordinal, used bytes, total bytes)` of every device this process has set up (none is set up by asking).
pub fn memory() -> Vec<(usize, u64, u64)> {
    let Some(slots) = DEVICES.get() else {
        return Vec::new();
    };
    if super::status().is_err() || dead_reason().is_some() {
        return Vec::new();
    }
    slots
        .iter()
        .filter_map(|slot| slot.get()?.as_ref().ok().cloned())
        .filter_map(|d| {
            guarded("cuMemGetInfo", || {
                d.ctx.mem_get_info().map_err(|e| fail("cuMemGetInfo", e))
            })
            .ok()
            .map(|(free, total)| (d.ordinal, (total - free.min(total)) as u64, total as u64))
        })
        .collect()
}

fn set_up(ordinal: usize) -> Result<Arc<Device>, GpuFailure> {
    let info = &super::status()
        .map_err(|r| other("probing the GPU", r))?
        .devices[ordinal];
    let ctx = CudaContext::new(ordinal).map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
    let stream = ctx.new_stream().map_err(|e| fail("cuStreamCreate", e))?;
    let (major, minor) = info.compute_capability;
    let arch = format!("sm_{major}{minor}");
    let cubin = cubin_for(&arch)?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .map_err(|e| fail("cuModuleLoadData", e))?;
    Ok(Arc::new(Device {
        ordinal,
        ctx,
        stream,
        module,
        functions: Mutex::new(HashMap::new()),
        reduce_blocks: (info.multiprocessors.max(1) as u32) * 4,
    }))
}

/// The kernels' CUBIN for `arch`: from the disk cache, else compiled with NVRTC and cached.
fn cubin_for(arch: &str) -> Result<Vec<u8>, GpuFailure> {
    let dirs = NVRTC_DIRS.locked().clone();
    let nv = nvrtc::load(&dirs).map_err(|e| other("loading NVRTC", e))?;
    let key = {
        let mut h = blake3::Hasher::new();
        h.update(nvrtc::KERNELS.as_bytes());
        h.update(format!("{:?}|{arch}|{:?}", nv.version, nvrtc::OPTIONS).as_bytes());
        h.finalize().to_hex()
    };
    let path = cache_dir().map(|d| d.join(format!("{}-{arch}.cubin", &key[..32])));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if bytes.starts_with(b"\x7fELF") {
                return Ok(bytes);
            }
        }
    }
    let compiled = nvrtc::compile(nvrtc::KERNELS, arch, &[])
        .map_err(|e| other("compiling the GPU kernels", e))?;
    if let Some(p) = &path {
        // best effort: a cache that cannot be written only costs a compile next time
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
            let tmp = p.with_extension(format!("{}.tmp", std::process::id()));
            if std::fs::write(&tmp, &compiled.cubin).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    }
    Ok(compiled.cubin)
}

/// `$FERROLAB_CACHE_DIR/kernels`, else `$XDG_CACHE_HOME/ferrolab/kernels`, else `~/.cache/ferrolab/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("FERROLAB_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ferrolab")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("ferrolab")))
        .map(|d| d.join("kernels"))
}

/// Element types the kernels exist for.
pub trait GpuFloat: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// The kernel name suffix: "f32" or "f64".
    const SUFFIX: &'static str;
    /// The nearest value of this type.
    fn from_f64(v: f64) -> Self;
}
impl GpuFloat for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl GpuFloat for f64 {
    const SUFFIX: &'static str = "f64";
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Launches the elementwise kernel `$name` of element type `$T` over `n` elements, with `$n64` (the count as the
/// kernel's `u64`) bound for the argument list `[$arg, ...]`. Each call site states the kernel's C signature, which
/// its argument list follows.
macro_rules! launch_elementwise {
    ($dev:expr, $T:ty, $name:literal, $n:expr, |$n64:ident| [$($arg:expr),* $(,)?]) => {
        guarded($name, || {
            let f = $dev.typed::<$T>($name)?;
            let $n64 = $n as u64;
            let mut l = $dev.stream.launch_builder(&f);
            $(l.arg($arg);)*
            // SAFETY: the arguments follow the kernel's C signature (stated at the call site) in order and type,
            // and every buffer holds at least `n` elements
            unsafe { l.launch($dev.elementwise_cfg($n)) }
                .map_err(|e| fail(concat!("launching ", $name), e))?;
            Ok(())
        })
    };
}

impl Device {
    fn function(&self, name: &'static str) -> Result<CudaFunction, GpuFailure> {
        let mut f = self.functions.locked();
        if let Some(func) = f.get(name) {
            return Ok(func.clone());
        }
        let func = self
            .module
            .load_function(name)
            .map_err(|e| fail(format!("cuModuleGetFunction({name})"), e))?;
        f.insert(name, func.clone());
        Ok(func)
    }

    /// The kernel `{op}_{suffix}` (names are static: one per op and type, leaked once per process).
    fn typed<T: GpuFloat>(&self, op: &'static str) -> Result<CudaFunction, GpuFailure> {
        static NAMES: Mutex<Vec<(&str, &str, &'static str)>> = Mutex::new(Vec::new());
        let name = {
            let mut names = NAMES.locked();
            match names.iter().find(|(o, s, _)| *o == op && *s == T::SUFFIX) {
                Some((_, _, n)) => *n,
                None => {
                    let n: &'static str = Box::leak(format!("{op}_{}", T::SUFFIX).into_boxed_str());
                    names.push((op, T::SUFFIX, n));
                    n
                }
            }
        };
        self.function(name)
    }

    fn alloc<T: GpuFloat>(&self, n: usize) -> Result<CudaSlice<T>, GpuFailure> {
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| {
            fail(
                format!("allocating {n} x {} on cuda:{}", T::SUFFIX, self.ordinal),
                e,
            )
        })
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: GpuFloat>(&self, x: &[T]) -> Result<CudaSlice<T>, GpuFailure> {
        guarded("cuMemcpyHtoD", || {
            let mut d = self.alloc::<T>(x.len())?;
            if !x.is_empty() {
                self.stream
                    .memcpy_htod(x, &mut d)
                    .map_err(|e| fail("cuMemcpyHtoDAsync", e))?;
            }
            Ok(d)
        })
    }

    /// Copies the first `n` elements of a device buffer to the host.
    pub fn download<T: GpuFloat>(&self, d: &CudaSlice<T>, n: usize) -> Result<Vec<T>, GpuFailure> {
        let mut out = vec![T::default(); n];
        self.download_into(d, &mut out)?;
        Ok(out)
    }

    fn grid(&self, n: usize) -> u32 {
        let needed = n.div_ceil(BLOCK as usize).max(1);
        (needed.min(self.reduce_blocks as usize)) as u32
    }

    fn cfg(blocks: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Elementwise grid: enough blocks to cover `n` with a grid-stride loop, capped at 64 per multiprocessor.
    fn elementwise_cfg(&self, n: usize) -> LaunchConfig {
        let needed = n.div_ceil(BLOCK as usize).max(1);
        Self::cfg(needed.min(self.reduce_blocks as usize * 16) as u32)
    }

    /// Launches a two-pass reduction of `inputs`: the first kernel writes `stride` doubles per block into the partials, `second`
    /// combines them into `out_len` doubles, which are returned.
    fn two_pass<T: GpuFloat>(
        &self,
        op: &'static str,
        partials_kernel: &'static str,
        n: usize,
        stride: usize,
        out_len: usize,
        inputs: &[&CudaSlice<T>],
    ) -> Result<Vec<f64>, GpuFailure> {
        guarded(op, || {
            let blocks = self.grid(n);
            let mut partial = self.alloc::<f64>(blocks as usize * stride)?;
            let mut out = self.alloc::<f64>(out_len)?;
            let f1 = self.typed::<T>(op)?;
            let n64 = n as u64;
            let mut l = self.stream.launch_builder(&f1);
            for x in inputs {
                l.arg(*x);
            }
            l.arg(&n64).arg(&mut partial);
            // SAFETY: the arguments match the kernel's signature in kernels.cu (pointers to buffers of the sizes
            // the kernel indexes: n inputs, `blocks * stride` partials).
            unsafe { l.launch(Self::cfg(blocks)) }
                .map_err(|e| fail(format!("launching {op}"), e))?;
            let f2 = self.function(partials_kernel)?;
            let m = blocks as u64;
            let mut l = self.stream.launch_builder(&f2);
            l.arg(&partial).arg(&m).arg(&mut out);
            // SAFETY: `partials_kernel(const double*, u64, double*)` reads `m * stride` partials, writes `out_len`.
            unsafe { l.launch(Self::cfg(1)) }
                .map_err(|e| fail(format!("launching {partials_kernel}"), e))?;
            let mut host = vec![0.0f64; out_len];
            self.stream
                .memcpy_dtoh(&out, &mut host)
                .map_err(|e| fail("cuMemcpyDtoHAsync", e))?;
            self.stream
                .synchronize()
                .map_err(|e| fail("cuStreamSynchronize", e))?;
            Ok(host)
        })
    }

    /// Sum of `x` (accumulated in double).
    pub fn sum<T: GpuFloat>(&self, x: &CudaSlice<T>, n: usize) -> Result<f64, GpuFailure> {
        Ok(self.two_pass::<T>("fl_sum", "fl_sum_partials", n, 1, 1, &[x])?[0])
    }

    /// Sum of squares of `x` (for the 2-norm).
    pub fn sumsq<T: GpuFloat>(&self, x: &CudaSlice<T>, n: usize) -> Result<f64, GpuFailure> {
        Ok(self.two_pass::<T>("fl_sumsq", "fl_sum_partials", n, 1, 1, &[x])?[0])
    }

    /// Dot product of `x` and `y`.
    pub fn dot<T: GpuFloat>(
        &self,
        x: &CudaSlice<T>,
        y: &CudaSlice<T>,
        n: usize,
    ) -> Result<f64, GpuFailure> {
        Ok(self.two_pass::<T>("fl_dot", "fl_sum_partials", n, 1, 1, &[x, y])?[0])
    }

    /// `(min, max)` of `x`, NaN when it has one.
    pub fn minmax<T: GpuFloat>(
        &self,
        x: &CudaSlice<T>,
        n: usize,
    ) -> Result<(f64, f64), GpuFailure> {
        let r = self.two_pass::<T>("fl_minmax", "fl_minmax_partials", n, 2, 2, &[x])?;
        Ok((r[0], r[1]))
    }

    /// `(count, mean, M2)` of `x` (Welford per thread, Chan's formula across threads and blocks).
    pub fn moments<T: GpuFloat>(
        &self,
        x: &CudaSlice<T>,
        n: usize,
    ) -> Result<(f64, f64, f64), GpuFailure> {
        let r = self.two_pass::<T>("fl_moments", "fl_moments_partials", n, 3, 3, &[x])?;
        Ok((r[0], r[1], r[2]))
    }

    /// Index of the first minimum (`max == false`) or maximum of `x`; the first NaN wins, as in NumPy.
    pub fn arg_extreme<T: GpuFloat>(
        &self,
        x: &CudaSlice<T>,
        n: usize,
        max: bool,
    ) -> Result<i64, GpuFailure> {
        let (op, partials) = if max {
            ("fl_argmax", "fl_argmax_partials")
        } else {
            ("fl_argmin", "fl_argmin_partials")
        };
        guarded(op, || {
            let blocks = self.grid(n);
            let mut pv = self.alloc::<f64>(blocks as usize)?;
            let mut pi = self
                .stream
                .alloc_zeros::<i64>(blocks as usize)
                .map_err(|e| fail("allocating partials", e))?;
            let mut out = self
                .stream
                .alloc_zeros::<i64>(1)
                .map_err(|e| fail("allocating the result", e))?;
            let f1 = self.typed::<T>(op)?;
            let n64 = n as u64;
            let mut l = self.stream.launch_builder(&f1);
            l.arg(x).arg(&n64).arg(&mut pv).arg(&mut pi);
            // SAFETY: `(const T*, u64, double*, i64*)` with one partial pair per block.
            unsafe { l.launch(Self::cfg(blocks)) }
                .map_err(|e| fail(format!("launching {op}"), e))?;
            let f2 = self.function(partials)?;
            let m = blocks as u64;
            let mut l = self.stream.launch_builder(&f2);
            l.arg(&pv).arg(&pi).arg(&m).arg(&mut out);
            // SAFETY: `(const double*, const i64*, u64, i64*)` over the `m` partials.
            unsafe { l.launch(Self::cfg(1)) }
                .map_err(|e| fail(format!("launching {partials}"), e))?;
            let mut host = [0i64; 1];
            self.stream
                .memcpy_dtoh(&out, &mut host)
                .map_err(|e| fail("cuMemcpyDtoHAsync", e))?;
            self.stream
                .synchronize()
                .map_err(|e| fail("cuStreamSynchronize", e))?;
            Ok(host[0])
        })
    }

    /// `out = a * x + y`.
    pub fn axpy<T: GpuFloat>(
        &self,
        a: T,
        x: &CudaSlice<T>,
        y: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        n: usize,
    ) -> Result<(), GpuFailure> {
        // fl_axpy(T a, const T* x, const T* y, T* out, u64 n)
        launch_elementwise!(self, T, "fl_axpy", n, |n64| [&a, x, y, out, &n64])
    }

    /// `out = a * x`.
    pub fn scale<T: GpuFloat>(
        &self,
        a: T,
        x: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        n: usize,
    ) -> Result<(), GpuFailure> {
        // fl_scale(T a, const T* x, T* out, u64 n)
        launch_elementwise!(self, T, "fl_scale", n, |n64| [&a, x, out, &n64])
    }

    /// `out = x * y + z` (fused).
    pub fn fma<T: GpuFloat>(
        &self,
        x: &CudaSlice<T>,
        y: &CudaSlice<T>,
        z: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        n: usize,
    ) -> Result<(), GpuFailure> {
        // fl_fma(const T* x, const T* y, const T* z, T* out, u64 n)
        launch_elementwise!(self, T, "fl_fma", n, |n64| [x, y, z, out, &n64])
    }

    /// `out = clip(x, lo, hi)` like `np.clip` (NaN stays NaN); `None` leaves a side open.
    pub fn clip<T: GpuFloat>(
        &self,
        x: &CudaSlice<T>,
        lo: Option<T>,
        hi: Option<T>,
        out: &mut CudaSlice<T>,
        n: usize,
    ) -> Result<(), GpuFailure> {
        let (has_lo, has_hi) = (lo.is_some() as i32, hi.is_some() as i32);
        let (lo, hi) = (lo.unwrap_or_default(), hi.unwrap_or_default());
        // fl_clip(const T* x, T lo, T hi, int has_lo, int has_hi, T* out, u64 n)
        launch_elementwise!(self, T, "fl_clip", n, |n64| [
            x, &lo, &hi, &has_lo, &has_hi, out, &n64
        ])
    }

    /// One Adam/AdamW step in place on `p`, `m`, `v` for gradient `g`; `c` = `[b1w, b2, one_b2, wd, decay,
    /// neg_step, bc2s, eps]` and `lerp_hi` as `ferrolab_core::kernels::optim::Consts` (PyTorch's arithmetic).
    #[allow(clippy::too_many_arguments)]
    pub fn adam<T: GpuFloat>(
        &self,
        p: &mut CudaSlice<T>,
        g: &CudaSlice<T>,
        m: &mut CudaSlice<T>,
        v: &mut CudaSlice<T>,
        n: usize,
        c: [T; 8],
        lerp_hi: bool,
    ) -> Result<(), GpuFailure> {
        let hi = lerp_hi as i32;
        let [b1w, b2, one_b2, wd, decay, neg_step, bc2s, eps] = &c;
        // fl_adam(T* p, const T* g, T* m, T* v, u64 n, T b1w, T b2, T one_b2, T wd, T decay, T neg_step, T bc2s,
        //         T eps, int lerp_hi)
        launch_elementwise!(self, T, "fl_adam", n, |n64| [
            p, g, m, v, &n64, b1w, b2, one_b2, wd, decay, neg_step, bc2s, eps, &hi
        ])
    }

    /// Copies a device buffer into a host slice of the same length (and waits for it).
    pub fn download_into<T: GpuFloat>(
        &self,
        d: &CudaSlice<T>,
        host: &mut [T],
    ) -> Result<(), GpuFailure> {
        guarded("cuMemcpyDtoH", || {
            if !host.is_empty() {
                self.stream
                    .memcpy_dtoh(&d.slice(..host.len()), host)
                    .map_err(|e| fail("cuMemcpyDtoHAsync", e))?;
            }
            self.stream
                .synchronize()
                .map_err(|e| fail("cuStreamSynchronize", e))
        })
    }

    /// Allocates a device buffer of `n` elements for a result.
    pub fn alloc_out<T: GpuFloat>(&self, n: usize) -> Result<CudaSlice<T>, GpuFailure> {
        guarded("cuMemAlloc", || self.alloc::<T>(n))
    }

    /// `out = (x - mean) / sd`.
    pub fn standardize<T: GpuFloat>(
        &self,
        x: &CudaSlice<T>,
        mean: f64,
        sd: f64,
        out: &mut CudaSlice<T>,
        n: usize,
    ) -> Result<(), GpuFailure> {
        // fl_standardize(const T* x, double mean, double sd, T* out, u64 n)
        launch_elementwise!(self, T, "fl_standardize", n, |n64| [
            x, &mean, &sd, out, &n64
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_errors_are_the_context_poisoning_ones() {
        assert!(is_sticky(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS));
        assert!(is_sticky(CUresult::CUDA_ERROR_LAUNCH_FAILED));
        assert!(is_sticky(CUresult::CUDA_ERROR_ECC_UNCORRECTABLE));
        assert!(!is_sticky(CUresult::CUDA_ERROR_OUT_OF_MEMORY));
        assert!(!is_sticky(CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU));
        assert!(!is_sticky(CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES));
    }

    #[test]
    fn no_device_without_a_gpu() {
        if super::super::status().is_ok() {
            return; // a machine with a GPU: covered by the GPU tests
        }
        let e = device(0).map(|_| ()).unwrap_err();
        assert_eq!(e.during, "probing the GPU");
        assert!(!e.sticky);
    }

    #[test]
    fn cache_dir_follows_the_environment() {
        // read-only check of the documented order (the variables are not changed: tests run in parallel)
        let d = cache_dir();
        if let Some(v) = std::env::var_os("FERROLAB_CACHE_DIR").filter(|v| !v.is_empty()) {
            assert_eq!(d, Some(PathBuf::from(v).join("kernels")));
        } else if let Some(d) = d {
            assert!(d.ends_with("ferrolab/kernels"), "{d:?}");
        }
    }
}
