//! The GPU path of the ops that have one (`ferrolab_core::gpu::ops`): whole-array reductions (`axis=None`) of
//! contiguous float32/float64 NumPy arrays, and the elementwise ops on C-contiguous arrays of one shape. Here the
//! arrays are only borrowed and the results converted; placement, fallback and the `gpu` breaker are the core's.

use crate::arrays::{flat_slice, native_typed, to_py, Obj};
use crate::errors::IntoPyResult;
use crate::funnel::{run_dispatched, Meta};
use ferrolab_core::gpu::dispatch::Requested;
use ferrolab_core::gpu::exec::GpuFloat;
use ferrolab_core::gpu::ops::{self, Reduced, Scalars};
use ferrolab_core::kernels::Real;
use ferrolab_core::telemetry::seam::Op;
use numpy::{IntoPyArray, PyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// A reduction's result as NumPy's scalar or array.
pub fn reduced_py<'py, T: crate::arrays::ToNumpy>(
    py: Python<'py>,
    r: Reduced<T>,
) -> PyResult<Obj<'py>> {
    match r {
        Reduced::Value(a) => to_py(py, a),
        Reduced::Index(a) => to_py(py, a),
    }
}

/// Runs a whole-array reduction `op` of `x` as `requested` (`Cuda`, or `Auto` that the cost model sends to the
/// GPU). `None` when these inputs have no GPU path (an axis, another dtype or layout, an empty array): the
/// caller then runs the CPU path for `Auto` and reports the device unavailable for `Cuda` ([`no_gpu_path`]).
pub fn reduction<'py>(
    py: Python<'py>,
    op: Op,
    x: &Obj<'py>,
    axis: Option<isize>,
    ddof: f64,
    requested: Requested,
) -> Option<PyResult<Obj<'py>>> {
    fn typed<'py, T: GpuFloat + Real + crate::arrays::ToNumpy>(
        py: Python<'py>,
        op: Op,
        x: &Obj<'py>,
        ddof: f64,
        req: Requested,
    ) -> Option<PyResult<Obj<'py>>> {
        let a = native_typed::<T>(x)?;
        let s = flat_slice(a, ops::needs_c_order(op))?;
        match ops::flat_applies(op, s.len(), ddof) {
            Ok(false) => None, // the CPU path raises or warns like NumPy
            Err(e) => Some(Err(crate::errors::to_py(e))),
            Ok(true) => Some(
                run_dispatched(py, op, Meta::one::<T>(a.shape()), || {
                    ops::reduction(op, req, s, ddof)
                })
                .and_then(|r| reduced_py(py, r)),
            ),
        }
    }
    if axis.is_some() {
        return None;
    }
    typed::<f64>(py, op, x, ddof, requested).or_else(|| typed::<f32>(py, op, x, ddof, requested))
}

/// The error of a `device="cuda"` call whose inputs have no GPU path (built by the core's one device check).
pub fn no_gpu_path(op: Op, device: &str) -> PyErr {
    crate::errors::to_py(ferrolab_core::device::no_gpu_path(op, device))
}

/// A Python int or float (not a NumPy scalar, whose dtype takes part in the result type) as f64.
pub fn plain_number(v: &Obj<'_>) -> Option<f64> {
    if v.is_instance_of::<pyo3::types::PyFloat>() || v.is_instance_of::<pyo3::types::PyInt>() {
        v.extract::<f64>().ok()
    } else {
        None
    }
}

/// The GPU path of axpy, fma, scale, clip and standardize (`axis=None`): float32/float64 arrays of one dtype, C-
/// contiguous, of one shape (no broadcasting), scalars that are Python numbers. The result is computed on the
/// device and returned as a new array (copied into `out` by the caller). `None` when these inputs have no GPU
/// path.
pub fn elementwise<'py>(
    py: Python<'py>,
    op: Op,
    arrays: &[&Obj<'py>],
    scalars: Scalars,
    requested: Requested,
) -> Option<PyResult<Obj<'py>>> {
    fn typed<'py, T: GpuFloat + Real + crate::arrays::ToNumpy>(
        py: Python<'py>,
        op: Op,
        arrays: &[&Obj<'py>],
        scalars: Scalars,
        req: Requested,
    ) -> Option<PyResult<Obj<'py>>> {
        let typed: Vec<&Bound<'py, PyArrayDyn<T>>> = arrays
            .iter()
            .map(|x| native_typed::<T>(x))
            .collect::<Option<_>>()?;
        let shape = typed[0].shape();
        if typed.iter().any(|a| a.shape() != shape) {
            return None;
        }
        let slices: Vec<&[T]> = typed
            .iter()
            .map(|a| flat_slice(a, true))
            .collect::<Option<_>>()?;
        match scalars.applies(slices[0].len()).py() {
            Ok(false) => None, // the CPU path warns like NumPy
            Err(e) => Some(Err(e)),
            Ok(true) => Some(
                run_dispatched(py, op, Meta::one::<T>(shape), || {
                    ops::elementwise(op, req, scalars, &slices, shape)
                })
                .map(|r| r.into_pyarray(py).into_any()),
            ),
        }
    }
    typed::<f64>(py, op, arrays, scalars, requested)
        .or_else(|| typed::<f32>(py, op, arrays, scalars, requested))
}
