//! `fl.gpu`'s native part: the GPU probe, NVRTC loading and kernel compilation (conversion only; the work is in
//! `ferrolab_core::gpu`).

use ferrolab_core::gpu::{self, nvrtc};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
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
    let (driver_version, devices, probe_error) = match gpu::status() {
        Ok(g) => {
            let devices = (g.devices.iter())
                .map(|e| {
                    Ok(dict!(py, e; index, name, compute_capability, total_memory, multiprocessors))
                })
                .collect::<PyResult<Vec<_>>>()?;
            (Some(g.driver_version), devices, None)
        }
        Err(reason) => (None, Vec::new(), Some(reason)),
    };
    let d = dict!(py, (); driver_version => driver_version, probe_error => probe_error, devices => devices);
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
    Ok(dict!(py, n; version, library))
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
    let kernels = (c.kernels.iter())
        .map(|k| Ok(dict!(py, k; name, registers, spill_stores, spill_loads, stack_frame)))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(dict!(py, c; arch, cubin => PyBytes::new(py, &c.cubin), log, kernels => kernels))
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
    set_fake(enabled.then(|| Fake::failing(error, sticky, times)));
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
    add_functions! { m; _gpu_set_nvrtc_dirs, _gpu_set_fake, _gpu_fake_attempts, _gpu_reset_breaker,
    _gpu_breaker_state, set_strict, is_strict, gpu_unavailable_reason, _gpu_probe, _gpu_load_nvrtc, _gpu_compile }
    Ok(())
}
