//! The GPU backend: finding a usable NVIDIA GPU without ever crashing the process.
//!
//! CUDA is loaded at run time (cudarc's `dynamic-loading`): the extension has no CUDA `NEEDED` entries and imports on
//! every machine. cudarc panics where a library or a symbol is missing, so before any cudarc call the probe
//! ([`status`]) opens the driver library itself and checks every driver symbol ferrolab calls ([`DRIVER_SYMBOLS`]);
//! the first calls then run inside `catch_unwind`. The verdict is computed once per process and cached with its
//! reason ("no NVIDIA driver: ...", "no CUDA device", "the NVIDIA driver supports CUDA 12.4; ...").
//!
//! CUDA does not survive `fork`: a child of a process that initialised the GPU reports it unavailable.
//! `FERROLAB_DISABLE_GPU=1` turns the backend off (the reason says so).
//!
//! Kernels are CUDA C ([`kernels.cu`](nvrtc::KERNELS)) compiled by NVRTC at first use for the device's architecture
//! ([`nvrtc`]).

pub mod dispatch;
pub mod exec;
pub mod nvrtc;
pub mod ops;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// The oldest driver the backend accepts: CUDA 13.0 (the driver API version cudarc is built against).
pub const MIN_DRIVER_VERSION: i32 = 13000;

/// Every symbol of `libcuda` that ferrolab's GPU code calls through cudarc. The probe checks them all, so that a
/// driver without one is "unavailable" with its name rather than a panic in the middle of an op.
pub const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamSynchronize",
    "cuStreamDestroy_v2",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventDestroy_v2",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuMemAllocAsync",
    "cuMemAlloc_v2",
    "cuMemFreeAsync",
    "cuMemFree_v2",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemGetInfo_v2",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
];

/// One CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// The device ordinal (`cuda:N`).
    pub index: usize,
    /// The product name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability `(major, minor)`, e.g. `(9, 0)`.
    pub compute_capability: (i32, i32),
    /// Device memory in bytes.
    pub total_memory: u64,
    /// Streaming multiprocessors.
    pub multiprocessors: i32,
}

/// A usable GPU backend: the driver's version and its devices.
#[derive(Debug)]
pub struct Gpu {
    /// The CUDA version the driver supports, e.g. 13000 for 13.0.
    pub driver_version: i32,
    /// The devices, by ordinal.
    pub devices: Vec<DeviceInfo>,
}

struct Probed {
    pid: u32,
    verdict: Result<Gpu, String>,
}

static PROBED: OnceLock<Probed> = OnceLock::new();

/// The GPU backend, or why there is none (probed once per process; never panics).
pub fn status() -> Result<&'static Gpu, String> {
    let p = PROBED.get_or_init(|| Probed {
        pid: std::process::id(),
        verdict: probe(),
    });
    if p.pid != std::process::id() {
        return Err(
            "this process is a fork of one that initialised CUDA, and CUDA does not survive fork (start the child \
             with the 'spawn' or 'forkserver' method)"
                .to_string(),
        );
    }
    p.verdict.as_ref().map_err(Clone::clone)
}

/// Why no GPU can run ferrolab ops, or `None` when one can.
pub fn unavailable_reason() -> Option<String> {
    status().err()
}

fn probe() -> Result<Gpu, String> {
    if std::env::var_os("FERROLAB_DISABLE_GPU").is_some_and(|v| !v.is_empty() && v != "0") {
        return Err("disabled by FERROLAB_DISABLE_GPU".to_string());
    }
    preflight_driver()?;
    match catch_unwind(AssertUnwindSafe(probe_driver)) {
        Ok(r) => r,
        Err(payload) => Err(format!(
            "the CUDA driver failed while being probed: {}",
            crate::error::panic_message(&*payload)
        )),
    }
}

/// Opens the driver library the way cudarc will (the same names in the same order) and checks every symbol in
/// [`DRIVER_SYMBOLS`], so that no later cudarc call can panic on a missing library or symbol.
fn preflight_driver() -> Result<(), String> {
    let candidates = cudarc::get_lib_name_candidates("cuda");
    let mut last_err = String::new();
    for name in &candidates {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, which have no preconditions; the
        // handle is only used to look up symbols below and is then dropped (cudarc keeps its own).
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => {
                let missing: Vec<&str> = DRIVER_SYMBOLS
                    .iter()
                    .copied()
                    // SAFETY: a symbol lookup only; the pointer is not called.
                    .filter(|s| unsafe { lib.get::<*const ()>(s.as_bytes()) }.is_err())
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "the NVIDIA driver library {name} lacks {} (a driver for CUDA 13.0 or newer is needed)",
                        missing.join(", ")
                    ));
                }
                return Ok(());
            }
            Err(e) => last_err = dl_error(&e),
        }
    }
    Err(format!(
        "no NVIDIA driver: libcuda.so.1 could not be loaded ({last_err})"
    ))
}

/// libloading's error with its cause (the `dlerror()` text: "libcuda.so.1: cannot open shared object file ...").
pub(crate) fn dl_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => cause.to_string(),
        None => e.to_string(),
    }
}

fn driver_error(call: &str, e: cudarc::driver::DriverError) -> String {
    // the variant's name (CUDA_ERROR_NO_DEVICE, ...): Debug of the enum calls no driver function
    format!("{call} failed: {:?}", e.0)
}

fn probe_driver() -> Result<Gpu, String> {
    use cudarc::driver::{result, sys};
    if let Err(e) = result::init() {
        if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
            return Err(
                "no CUDA device (the NVIDIA driver is installed but finds no GPU)".to_string(),
            );
        }
        return Err(driver_error("cuInit", e));
    }
    let mut version = 0;
    // SAFETY: the symbol is present (preflight) and `version` is a valid out pointer.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| driver_error("cuDriverGetVersion", e))?;
    if version < MIN_DRIVER_VERSION {
        return Err(format!(
            "the NVIDIA driver supports CUDA {}.{}; ferrolab's GPU backend needs a driver for CUDA {}.{} or newer",
            version / 1000,
            (version % 1000) / 10,
            MIN_DRIVER_VERSION / 1000,
            (MIN_DRIVER_VERSION % 1000) / 10
        ));
    }
    let count = result::device::get_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
    if count <= 0 {
        return Err("no CUDA device (the NVIDIA driver is installed but finds no GPU)".to_string());
    }
    let mut devices = Vec::with_capacity(count as usize);
    for i in 0..count {
        let dev = result::device::get(i).map_err(|e| driver_error("cuDeviceGet", e))?;
        let attr = |a| {
            // SAFETY: `dev` is a device handle the driver returned.
            unsafe { result::device::get_attribute(dev, a) }
                .map_err(|e| driver_error("cuDeviceGetAttribute", e))
        };
        use sys::CUdevice_attribute_enum as A;
        devices.push(DeviceInfo {
            index: i as usize,
            name: result::device::get_name(dev).map_err(|e| driver_error("cuDeviceGetName", e))?,
            compute_capability: (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            // SAFETY: as above.
            total_memory: unsafe { result::device::total_mem(dev) }
                .map_err(|e| driver_error("cuDeviceTotalMem", e))? as u64,
            multiprocessors: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        });
    }
    Ok(Gpu {
        driver_version: version,
        devices,
    })
}
