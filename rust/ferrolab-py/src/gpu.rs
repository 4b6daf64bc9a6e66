//! `fl.gpu`'s native part: the GPU probe, NVRTC loading and kernel compilation (conversion only; the work is in
//! `ferrolab_core::gpu`).

use ferrolab_core::gpu::{self, nvrtc};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::path::PathBuf;

/// Why no GPU can run ferrolab ops in this process (`None` when one can).
#[pyfunction]
fn gpu_unavailable_reason() -> Option<String> {
    ferrolab_core::device::gpu_unavailable_reason()
}

/// The GPU probe: `{"driver_version": int | None, "devices": [...], "probe_error": str | None,
/// "driver_symbols": [...]}` (the driver functions ferrolab calls, all checked by the probe).
#[pyfunction]
fn _gpu_probe(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let devices = PyList::empty(py);
    match gpu::status() {
        Ok(g) => {
            d.set_item("driver_version", g.driver_version)?;
            d.set_item("probe_error", py.None())?;
            for dev in &g.devices {
                let e = PyDict::new(py);
                e.set_item("index", dev.index)?;
                e.set_item("name", &dev.name)?;
                e.set_item("compute_capability", dev.compute_capability)?;
                e.set_item("total_memory", dev.total_memory)?;
                e.set_item("multiprocessors", dev.multiprocessors)?;
                devices.append(e)?;
            }
        }
        Err(reason) => {
            d.set_item("driver_version", py.None())?;
            d.set_item("probe_error", reason)?;
        }
    }
    d.set_item("devices", devices)?;
    d.set_item("driver_symbols", gpu::DRIVER_SYMBOLS)?;
    Ok(d)
}

/// Finds and loads NVRTC (the dynamic loader's path first, then `dirs`): `{"version": (major, minor),
/// "library": str}`; `RuntimeError` with the reason when it cannot.
#[pyfunction]
fn _gpu_load_nvrtc(py: Python<'_>, dirs: Vec<PathBuf>) -> PyResult<Bound<'_, PyDict>> {
    let n = py
        .detach(|| nvrtc::load(&dirs))
        .map_err(crate::errors::runtime_error)?;
    let d = PyDict::new(py);
    d.set_item("version", n.version)?;
    d.set_item("library", &n.library)?;
    Ok(d)
}

/// Compiles every GPU kernel for `arch` (e.g. "sm_90") with NVRTC: `{"arch", "cubin": bytes, "log",
/// "kernels": [{"name", "registers", "spill_stores", "spill_loads", "stack_frame"}]}`. `RuntimeError` with the
/// compiler log when compilation fails or NVRTC is not loaded.
#[pyfunction]
fn _gpu_compile<'py>(py: Python<'py>, arch: &str) -> PyResult<Bound<'py, PyDict>> {
    let arch = arch.to_string();
    let c = py
        .detach(|| nvrtc::compile(nvrtc::KERNELS, &arch, &[]))
        .map_err(crate::errors::runtime_error)?;
    let d = PyDict::new(py);
    d.set_item("arch", &c.arch)?;
    d.set_item("cubin", PyBytes::new(py, &c.cubin))?;
    d.set_item("log", &c.log)?;
    let kernels = PyList::empty(py);
    for k in &c.kernels {
        let e = PyDict::new(py);
        e.set_item("name", &k.name)?;
        e.set_item("registers", k.registers)?;
        e.set_item("spill_stores", k.spill_stores)?;
        e.set_item("spill_loads", k.spill_loads)?;
        e.set_item("stack_frame", k.stack_frame)?;
        kernels.append(e)?;
    }
    d.set_item("kernels", kernels)?;
    Ok(d)
}

/// Folders where NVRTC may be found (the Python layer passes them at import).
#[pyfunction]
fn _gpu_set_nvrtc_dirs(dirs: Vec<PathBuf>) {
    gpu::exec::set_nvrtc_dirs(dirs);
}

/// Installs the fake GPU of the tests (computes on the CPU under the `cuda` labels) failing its next `times`
/// attempts with `error` (a CUDA error name; `sticky` poisons the backend for the process), or removes it
/// (`enabled=False`).
#[pyfunction]
#[pyo3(signature = (enabled, error=None, sticky=false, times=0))]
fn _gpu_set_fake(enabled: bool, error: Option<String>, sticky: bool, times: u32) {
    use gpu::dispatch::{set_fake, Fake};
    set_fake(enabled.then(|| Fake {
        failure: error.map(|error| gpu::exec::GpuFailure {
            during: "a kernel launch on the fake GPU".to_string(),
            error,
            sticky,
        }),
        times,
        attempts: 0,
    }));
}

/// GPU attempts the fake GPU has seen (`None` without the fake).
#[pyfunction]
fn _gpu_fake_attempts() -> Option<u64> {
    gpu::dispatch::fake().map(|f| f.attempts)
}

/// Closes the `gpu` breaker (tests).
#[pyfunction]
fn _gpu_reset_breaker() {
    gpu::dispatch::breaker().reset();
}

/// The `gpu` breaker's state ("closed", "open", "half_open", ...).
#[pyfunction]
fn _gpu_breaker_state() -> &'static str {
    gpu::dispatch::breaker().state().name()
}

/// Makes every fallback from the GPU to the CPU an error (`True`), or allows fallbacks again (`False`).
#[pyfunction]
fn set_strict(strict: bool) {
    gpu::dispatch::set_strict(strict);
}

/// Whether fallbacks are errors (`set_strict`, `FERROLAB_GPU_STRICT=1`).
#[pyfunction]
fn is_strict() -> bool {
    gpu::dispatch::strict()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_gpu_set_nvrtc_dirs, m)?)?;
    m.add_function(wrap_pyfunction!(_gpu_set_fake, m)?)?;
    m.add_function(wrap_pyfunction!(_gpu_fake_attempts, m)?)?;
    m.add_function(wrap_pyfunction!(_gpu_reset_breaker, m)?)?;
    m.add_function(wrap_pyfunction!(_gpu_breaker_state, m)?)?;
    m.add_function(wrap_pyfunction!(set_strict, m)?)?;
    m.add_function(wrap_pyfunction!(is_strict, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_unavailable_reason, m)?)?;
    m.add_function(wrap_pyfunction!(_gpu_probe, m)?)?;
    m.add_function(wrap_pyfunction!(_gpu_load_nvrtc, m)?)?;
    m.add_function(wrap_pyfunction!(_gpu_compile, m)?)?;
    Ok(())
}
