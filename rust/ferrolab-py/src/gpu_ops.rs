//! The GPU path of the ops that have one: whole-array reductions (`axis=None`) of contiguous float32/float64
//! NumPy arrays — sum, mean, min, max, argmin, argmax, norm, var, std. The input is copied to the device, reduced
//! there, and the result returned as NumPy's scalar. Placement, fallback and the `gpu` breaker are
//! `ferrolab_core::gpu::dispatch`'s.

use crate::arrays::{to_py, ToNumpy};
use crate::funnel::{run_dispatched, Meta};
use ferrolab_core::gpu::dispatch::{self, Requested};
use ferrolab_core::gpu::exec::{Device, GpuFailure, GpuFloat};
use ferrolab_core::kernels::layout::Canon;
use ferrolab_core::kernels::{reduce, stats, Real};
use ferrolab_core::telemetry::seam::Op;
use ferrolab_core::{CoreError, Result as CoreResult};
use ndarray::{ArrayD, IxDyn};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

type Obj<'py> = Bound<'py, PyAny>;

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
    if axis.is_some() {
        return None;
    }
    if let Some(r) = typed::<f64>(py, op, x, ddof, requested) {
        return Some(r);
    }
    typed::<f32>(py, op, x, ddof, requested)
}

/// The error of a `device="cuda"` call whose inputs have no GPU path: the reason no GPU is usable, else what the
/// GPU path of `op` takes.
pub fn no_gpu_path(op: Op, device: &str) -> PyErr {
    let takes = match op {
        Op::Axpy | Op::Fma | Op::Scale | Op::Clip => {
            "on C-contiguous float32/float64 arrays of one dtype and one shape (no broadcasting) with Python-number \
             scalars"
        }
        Op::Standardize => "over all elements (axis=None) of a C-contiguous float32/float64 array",
        _ => "over all elements (axis=None) of a contiguous float32/float64 array",
    };
    crate::errors::to_py(CoreError::DeviceUnavailable {
        func: op.name().into(),
        device: device.into(),
        reason: dispatch::unavailable_reason()
            .unwrap_or_else(|| format!("{}() runs on the GPU only {takes}", op.name())),
        cause: None,
    })
}

/// A Python int or float (not a NumPy scalar, whose dtype takes part in the result type) as f64.
pub fn plain_number(v: &Obj<'_>) -> Option<f64> {
    if v.is_instance_of::<pyo3::types::PyFloat>() || v.is_instance_of::<pyo3::types::PyInt>() {
        v.extract::<f64>().ok()
    } else {
        None
    }
}

fn typed<'py, T>(
    py: Python<'py>,
    op: Op,
    x: &Obj<'py>,
    ddof: f64,
    requested: Requested,
) -> Option<PyResult<Obj<'py>>>
where
    T: GpuFloat + Real + numpy::Element + ToNumpy + Sync,
{
    let a = x.cast::<PyArrayDyn<T>>().ok()?;
    let contiguous = if matches!(op, Op::Argmin | Op::Argmax) {
        a.is_c_contiguous()
    } else {
        a.is_contiguous()
    };
    if !contiguous {
        return None;
    }
    // SAFETY: contiguous (checked); only read, while `a` (and so the array) is alive; the GIL is released below
    // but the array cannot be freed while this borrow holds a reference to it.
    let s: &[T] = unsafe { a.as_slice() }.ok()?;
    if s.is_empty() || (matches!(op, Op::Var | Op::Std) && s.len() as f64 <= ddof) {
        return None; // the CPU path raises or warns like NumPy
    }
    if matches!(op, Op::Var | Op::Std) {
        if let Err(e) = stats::check_ddof(op.name(), ddof) {
            return Some(Err(crate::errors::to_py(e)));
        }
    }
    let n = s.len();
    let meta = Meta::one::<T>(a.shape());
    Some(if matches!(op, Op::Argmin | Op::Argmax) {
        let max = op == Op::Argmax;
        let cpu = || -> CoreResult<ArrayD<i64>> {
            if max {
                reduce::argmax_c(Canon::flat(s))
            } else {
                reduce::argmin_c(Canon::flat(s))
            }
        };
        let gpu = |d: &Device| -> Result<ArrayD<i64>, GpuFailure> {
            let buf = d.upload(s)?;
            Ok(scalar(d.arg_extreme(&buf, n, max)?))
        };
        run(py, op, requested, meta, &gpu, &cpu).and_then(|r| to_py(py, r))
    } else {
        let cpu = || -> CoreResult<ArrayD<T>> {
            let c = Canon::flat(s);
            match op {
                Op::Sum => reduce::sum_c(c),
                Op::Mean => reduce::mean_c(c),
                Op::Min => reduce::min_c(c),
                Op::Max => reduce::max_c(c),
                Op::Norm => reduce::norm_c(c),
                Op::Var => stats::var_c(c, ddof),
                _ => stats::std_c(c, ddof),
            }
        };
        let gpu = |d: &Device| -> Result<ArrayD<T>, GpuFailure> {
            let buf = d.upload(s)?;
            let v = match op {
                Op::Sum => d.sum(&buf, n)?,
                Op::Mean => d.sum(&buf, n)? / n as f64,
                Op::Min => d.minmax(&buf, n)?.0,
                Op::Max => d.minmax(&buf, n)?.1,
                Op::Norm => d.sumsq(&buf, n)?.sqrt(),
                _ => {
                    let (count, _, m2) = d.moments(&buf, n)?;
                    let var = m2 / (count - ddof);
                    if op == Op::Var {
                        var
                    } else {
                        var.sqrt()
                    }
                }
            };
            Ok(scalar(<T as GpuFloat>::from_f64(v)))
        };
        run(py, op, requested, meta, &gpu, &cpu).and_then(|r| to_py(py, r))
    })
}

fn scalar<U: Clone>(v: U) -> ArrayD<U> {
    ArrayD::from_elem(IxDyn(&[]), v)
}

/// [`dispatch::run`] through the funnel (without the GIL, panics as `InternalError`, a `cuda` op span).
fn run<R: Send>(
    py: Python<'_>,
    op: Op,
    requested: Requested,
    meta: Meta<'_>,
    gpu: &(dyn Fn(&Device) -> Result<R, GpuFailure> + Sync),
    cpu: &(dyn Fn() -> CoreResult<R> + Sync),
) -> PyResult<R> {
    run_dispatched(py, op, meta, || {
        dispatch::run(op, requested, true, &|d: &Device| gpu(d), &|| cpu())
    })
}

/// The scalar operands of an elementwise op (as f64; converted to the arrays' type on the device).
pub enum Scalars {
    Axpy(f64),
    Fma,
    Scale(f64),
    Clip(Option<f64>, Option<f64>),
    Standardize(f64),
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
    if let Some(r) = elementwise_typed::<f64>(py, op, arrays, &scalars, requested) {
        return Some(r);
    }
    elementwise_typed::<f32>(py, op, arrays, &scalars, requested)
}

fn elementwise_typed<'py, T>(
    py: Python<'py>,
    op: Op,
    arrays: &[&Obj<'py>],
    scalars: &Scalars,
    requested: Requested,
) -> Option<PyResult<Obj<'py>>>
where
    T: GpuFloat + Real + numpy::Element + Sync,
{
    let mut typed = Vec::with_capacity(arrays.len());
    for x in arrays {
        let a = x.cast::<PyArrayDyn<T>>().ok()?;
        if !a.is_c_contiguous() {
            return None;
        }
        typed.push(a.clone());
    }
    let shape: Vec<usize> = typed[0].shape().to_vec();
    if typed.iter().any(|a| a.shape() != shape.as_slice()) || shape.iter().product::<usize>() == 0 {
        return None;
    }
    if let Scalars::Standardize(ddof) = scalars {
        if let Err(e) = stats::check_ddof("standardize", *ddof) {
            return Some(Err(crate::errors::to_py(e)));
        }
        if shape.iter().product::<usize>() as f64 <= *ddof {
            return None; // the CPU path warns like NumPy
        }
    }
    // SAFETY: C-contiguous (checked); only read, while the arrays are alive (held by `typed`).
    let slices: Vec<&[T]> = typed
        .iter()
        .map(|a| unsafe { a.as_slice() })
        .collect::<Result<_, _>>()
        .ok()?;
    let n = slices[0].len();
    let t = <T as GpuFloat>::from_f64;
    let cpu = || -> CoreResult<ArrayD<T>> {
        use ferrolab_core::kernels::elementwise::{self as ew, Input};
        let view = |i: usize| {
            ndarray::ArrayViewD::from_shape(IxDyn(&shape), slices[i]).expect("shape of the slice")
        };
        let fresh =
            |r: CoreResult<Option<ArrayD<T>>>| r.map(|o| o.expect("a fresh result without out"));
        match scalars {
            Scalars::Axpy(a) => fresh(ew::axpy(
                t(*a),
                Input::View(view(0)),
                Input::View(view(1)),
                None,
            )),
            Scalars::Fma => fresh(ew::fma(
                Input::View(view(0)),
                Input::View(view(1)),
                Input::View(view(2)),
                None,
            )),
            Scalars::Scale(a) => fresh(ew::scale(Input::View(view(0)), t(*a), None)),
            Scalars::Clip(lo, hi) => fresh(ew::clip(
                Input::View(view(0)),
                lo.map(t).unwrap_or(T::NEG_INFINITY),
                hi.map(t).unwrap_or(T::INFINITY),
                None,
            )),
            Scalars::Standardize(ddof) => fresh(stats::standardize(&view(0), None, *ddof, None)),
        }
    };
    let gpu = |d: &Device| -> Result<ArrayD<T>, GpuFailure> {
        let bufs: Vec<_> = slices
            .iter()
            .map(|s| d.upload(s))
            .collect::<Result<_, _>>()?;
        let mut out = d.alloc_out::<T>(n)?;
        match scalars {
            Scalars::Axpy(a) => d.axpy(t(*a), &bufs[0], &bufs[1], &mut out, n)?,
            Scalars::Fma => d.fma(&bufs[0], &bufs[1], &bufs[2], &mut out, n)?,
            Scalars::Scale(a) => d.scale(t(*a), &bufs[0], &mut out, n)?,
            Scalars::Clip(lo, hi) => d.clip(&bufs[0], lo.map(t), hi.map(t), &mut out, n)?,
            Scalars::Standardize(ddof) => {
                let (count, mean, m2) = d.moments(&bufs[0], n)?;
                d.standardize(&bufs[0], mean, (m2 / (count - ddof)).sqrt(), &mut out, n)?
            }
        }
        let host = d.download(&out, n)?;
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), host).expect("n elements of the shape"))
    };
    let meta = Meta::one::<T>(&shape);
    Some(
        run(py, op, requested, meta, &gpu, &cpu)
            .map(|r| numpy::IntoPyArray::into_pyarray(r, py).into_any()),
    )
}
