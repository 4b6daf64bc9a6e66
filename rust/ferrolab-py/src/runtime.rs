//! Runtime facts and switches: SIMD level, thread pool, instrumentation counters.

use crate::errors::IntoPyResult;
use ferrolab_core::kernels::{dispatch, recycle};
use ferrolab_core::telemetry::seam;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The instruction set the kernels use: "avx2+fma" or "baseline".
#[pyfunction]
fn simd_level() -> &'static str {
    dispatch::simd_level().as_str()
}

/// Worker threads of the kernel pool (`FERROLAB_NUM_THREADS`, default: available cores); 1 when no thread can be
/// started (the kernels then run on the calling thread).
#[pyfunction]
fn num_threads() -> usize {
    dispatch::num_threads()
}

/// Turns the per-op instrumentation on or off.
#[pyfunction]
fn set_instrumentation(enabled: bool) {
    seam::set_enabled(enabled);
}

/// Per-(operation, device) counters: list of dicts with calls, errors and seconds.
#[pyfunction]
fn op_stats(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    seam::snapshot()
        .into_iter()
        .map(|s| Ok(dict!(py, s; operation, device, calls, errors, fallbacks, seconds)))
        .collect()
}

/// Checks `device` for `func` (the one device check): returns the device that runs it ("cpu" or "cuda"); raises
/// `DeviceUnavailableError` with the reason for a GPU that cannot run, `ValueError` for an unknown device,
/// `TypeError` for a device that is not a str.
#[pyfunction]
fn check_device(func: &str, device: &Bound<'_, PyAny>) -> PyResult<&'static str> {
    let Ok(device) = device.cast::<pyo3::types::PyString>() else {
        let got = crate::errors::type_of(device);
        return Err(crate::errors::type_error(format!(
            "{func}(): argument 'device' must be a str, got {got}"
        )));
    };
    ferrolab_core::device::select(func, device.to_str()?)
        .map(|d| d.name())
        .py()
}

/// The recycled result buffers ([`ferrolab_core::kernels::recycle`]): buffers and bytes kept, the limit, and the
/// requests served by a kept buffer (`reused`) or a new allocation (`allocated`).
#[pyfunction]
fn result_cache(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = recycle::stats();
    Ok(dict!(py, s; buffers, bytes, limit, reused, allocated))
}

/// Frees the kept result buffers; returns the bytes freed.
#[pyfunction]
fn release_result_cache() -> usize {
    recycle::release()
}

/// Sets the most bytes of result buffers kept for reuse (0 turns recycling off and frees what is kept).
#[pyfunction]
fn set_result_cache_limit(bytes: usize) {
    recycle::set_limit(bytes);
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    add_functions! { m; check_device, simd_level, num_threads, set_instrumentation, op_stats, result_cache,
    release_result_cache, set_result_cache_limit }
    Ok(())
}
