//! `ferrolab._core`: the Python bindings of `ferrolab-core`.
//!
//! One file per core module; [`errors`] is the one error funnel, [`funnel`] the one GIL funnel, [`arrays`] the
//! dtype dispatch. The typed, documented surface is the `ferrolab` Python package.

use pyo3::prelude::*;

mod arrays;
mod backup;
mod breaker;
mod errors;
mod ffi;
mod funnel;
mod gpu;
mod gpu_ops;
mod logs;
mod metrics;
mod ops;
mod runtime;
mod system;
mod tracing;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add("__version__", ferrolab_core::VERSION)?;
    m.add_function(wrap_pyfunction!(ops::sum, m)?)?;
    m.add_function(wrap_pyfunction!(ops::mean, m)?)?;
    m.add_function(wrap_pyfunction!(ops::min, m)?)?;
    m.add_function(wrap_pyfunction!(ops::max, m)?)?;
    m.add_function(wrap_pyfunction!(ops::argmin, m)?)?;
    m.add_function(wrap_pyfunction!(ops::argmax, m)?)?;
    m.add_function(wrap_pyfunction!(ops::var, m)?)?;
    m.add_function(wrap_pyfunction!(ops::std, m)?)?;
    m.add_function(wrap_pyfunction!(ops::dot, m)?)?;
    m.add_function(wrap_pyfunction!(ops::norm, m)?)?;
    m.add_function(wrap_pyfunction!(ops::axpy, m)?)?;
    m.add_function(wrap_pyfunction!(ops::fma, m)?)?;
    m.add_function(wrap_pyfunction!(ops::scale, m)?)?;
    m.add_function(wrap_pyfunction!(ops::clip, m)?)?;
    m.add_function(wrap_pyfunction!(ops::standardize, m)?)?;
    m.add_function(wrap_pyfunction!(ops::zscore_anomalies, m)?)?;
    m.add_function(wrap_pyfunction!(ops::quantile, m)?)?;
    m.add_function(wrap_pyfunction!(ops::histogram_counts, m)?)?;
    m.add_function(wrap_pyfunction!(ops::minmax, m)?)?;
    m.add_function(wrap_pyfunction!(ops::matmul, m)?)?;
    m.add_function(wrap_pyfunction!(ops::cdist, m)?)?;
    m.add_function(wrap_pyfunction!(ops::_use_blas, m)?)?;
    m.add_function(wrap_pyfunction!(ops::_cdist_gemm_min, m)?)?;
    m.add_function(wrap_pyfunction!(ops::adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(ops::_panic_in_kernel, m)?)?;
    runtime::register(m)?;
    gpu::register(m)?;
    metrics::register(m)?;
    breaker::register(m)?;
    tracing::register(m)?;
    backup::register(m)?;
    system::register(m)?;
    logs::register(m)?;
    Ok(())
}
