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
        .map(|s| {
            let d = PyDict::new(py);
            d.set_item("operation", s.operation)?;
            d.set_item("device", s.device)?;
            d.set_item("calls", s.calls)?;
            d.set_item("errors", s.errors)?;
            d.set_item("fallbacks", s.fallbacks)?;
            d.set_item("seconds", s.seconds)?;
            Ok(d)
        })
        .collect()
}

/// Checks `device` for `func` (the one device check): returns the device that runs it ("cpu" or "cuda"); raises
/// `DeviceUnavailableError` with the reason for a GPU that cannot run, `ValueError` for an unknown device.
#[pyfunction]
fn check_device(func: &str, device: &str) -> PyResult<&'static str> {
    ferrolab_core::device::select(func, device)
        .map(|d| d.name())
        .py()
}

/// The recycled result buffers ([`ferrolab_core::kernels::recycle`]): buffers and bytes kept, the limit, and the
/// requests served by a kept buffer (`reused`) or a new allocation (`allocated`).
#[pyfunction]
fn result_cache(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = recycle::stats();
    let d = PyDict::new(py);
    d.set_item("buffers", s.buffers)?;
    d.set_item("bytes", s.bytes)?;
    d.set_item("limit", s.limit)?;
    d.set_item("reused", s.reused)?;
    d.set_item("allocated", s.allocated)?;
    Ok(d)
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
    m.add_function(wrap_pyfunction!(result_cache, m)?)?;
    m.add_function(wrap_pyfunction!(release_result_cache, m)?)?;
    m.add_function(wrap_pyfunction!(set_result_cache_limit, m)?)?;
    m.add_function(wrap_pyfunction!(check_device, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_instrumentation, m)?)?;
    m.add_function(wrap_pyfunction!(op_stats, m)?)?;
    Ok(())
}
