//! `ferrolab._core`: the Python bindings of `ferrolab-core`.
//!
//! One file per core module; [`errors`] is the one error funnel, [`funnel`] the one GIL funnel, [`arrays`] the
//! dtype dispatch. The typed, documented surface is the `ferrolab` Python package.

use pyo3::prelude::*;

/// A dict with one item per entry: `field` is `&$s.field` under the key "field", `key => value` any value; `?`
/// returns a failed insertion (the conversion of the results of the core to Python).
macro_rules! dict {
    ($py:expr, $s:expr; $($k:ident $(=> $v:expr)?),* $(,)?) => {{
        let d = pyo3::types::PyDict::new($py);
        $(dict!(@item d, $s, $k $(=> $v)?);)*
        d
    }};
    (@item $d:ident, $s:expr, $k:ident) => { $d.set_item(stringify!($k), &$s.$k)? };
    (@item $d:ident, $s:expr, $k:ident => $v:expr) => { $d.set_item(stringify!($k), $v)? };
}

/// Adds the `#[pyfunction]`s to module `$m`.
macro_rules! add_functions {
    ($m:expr; $($f:path),* $(,)?) => {
        $($m.add_function(wrap_pyfunction!($f, $m)?)?;)*
    };
}

/// Adds the `#[pyclass]`es to module `$m`.
macro_rules! add_classes {
    ($m:expr; $($c:ty),* $(,)?) => {
        $($m.add_class::<$c>()?;)*
    };
}

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
    add_functions! { m; ops::sum, ops::mean, ops::min, ops::max, ops::argmin, ops::argmax, ops::var, ops::std,
    ops::dot, ops::norm, ops::axpy, ops::fma, ops::scale, ops::clip, ops::standardize, ops::zscore_anomalies,
    ops::quantile, ops::histogram_counts, ops::minmax, ops::matmul, ops::cdist, ops::_use_blas,
    ops::_cdist_gemm_min, ops::adam_step, ops::_panic_in_kernel }
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
