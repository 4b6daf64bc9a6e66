//! Turning Python objects into typed array views (dtype dispatch) and results back into NumPy objects.
//!
//! Fast path: an ndarray of float64, float32 or int64 (native byte order) is borrowed as it is. Anything else
//! goes once through `ferrolab._coerce.prepare`, which converts it the way NumPy would for that op and may
//! return a `finish` callable that turns the native result into NumPy's result dtype.

use crate::errors::IntoPyResult;
use ndarray::ArrayD;
use ndarray::ArrayViewD;
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadwriteArrayDyn};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

/// A read-only input array.
///
/// Inputs are read through unregistered views (like NumPy's own kernels, and without the cost of rust-numpy's
/// dynamic borrow tracking); the one place where an input could alias a mutable array, an `out=` argument,
/// is resolved explicitly by the callers (`Input::SameAsOut`, or a copy for partial overlaps).
pub struct Ro<'py, T>(pub Bound<'py, PyArrayDyn<T>>);

impl<'py, T: numpy::Element> Ro<'py, T> {
    pub fn as_array(&self) -> ArrayViewD<'_, T> {
        // SAFETY: the array is alive for 'py; no mutable Rust view of the same memory exists while this view
        // is used (see the type's documentation).
        unsafe { self.0.as_array() }
    }
}

/// An input array of a natively computed dtype.
pub enum In<'py> {
    F64(Ro<'py, f64>),
    F32(Ro<'py, f32>),
    I64(Ro<'py, i64>),
}

/// How NumPy types the result of an op (see `_coerce.py`).
#[derive(Clone, Copy)]
pub enum Kind {
    /// Result is floating point: integers and bool become float64, float16 computes in float32.
    Float,
    /// `np.sum` rules: integers accumulate in int64 (uint64 for unsigned), bool counts.
    Sum,
    /// Type-preserving arithmetic (min, max, clip, scale, axpy, fma, dot, matmul).
    Same,
    /// Order-based selection returning an index (argmin, argmax).
    Index,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Float => "float",
            Kind::Sum => "sum",
            Kind::Same => "same",
            Kind::Index => "index",
        }
    }
}

fn borrow<'py>(obj: &Bound<'py, PyAny>) -> Option<In<'py>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<f64>>() {
        return Some(In::F64(Ro(a.clone())));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        return Some(In::F32(Ro(a.clone())));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<i64>>() {
        return Some(In::I64(Ro(a.clone())));
    }
    None
}

static PREPARE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Converted inputs and the optional `finish` callable.
pub struct Prepared<'py> {
    pub arrays: Vec<In<'py>>,
    pub finish: Option<Bound<'py, PyAny>>,
}

/// Takes the array inputs `values` (named `names`) of `func`. All of them end up with one common native dtype.
pub fn take<'py>(
    py: Python<'py>,
    func: &'static str,
    names: &[&'static str],
    values: &[&Bound<'py, PyAny>],
    kind: Kind,
) -> PyResult<Prepared<'py>> {
    // fast path: every input already a native array of one dtype (int64 only where the op keeps integers)
    let mut fast = Vec::with_capacity(values.len());
    for v in values {
        match borrow(v) {
            Some(a) => fast.push(a),
            None => break,
        }
    }
    if fast.len() == values.len()
        && same_dtype(&fast)
        && !(matches!(kind, Kind::Float) && matches!(fast[0], In::I64(_)))
    {
        return Ok(Prepared {
            arrays: fast,
            finish: None,
        });
    }
    drop(fast);
    let prepare = PREPARE.import(py, "ferrolab._coerce", "prepare")?;
    let res = prepare.call1((
        func,
        PyTuple::new(py, names)?,
        PyTuple::new(py, values)?,
        kind.as_str(),
    ))?;
    let (arrays, finish): (Bound<'py, PyTuple>, Bound<'py, PyAny>) = res.extract()?;
    let mut out = Vec::with_capacity(values.len());
    for (a, name) in arrays.iter().zip(names) {
        match borrow(&a) {
            Some(x) => out.push(x),
            None => {
                return Err(PyTypeError::new_err(format!(
                    "{func}(): argument '{name}' could not be converted to a native dtype"
                )))
            }
        }
    }
    Ok(Prepared {
        arrays: out,
        finish: if finish.is_none() { None } else { Some(finish) },
    })
}

fn same_dtype(v: &[In]) -> bool {
    v.windows(2).all(|w| {
        matches!(
            (&w[0], &w[1]),
            (In::F64(_), In::F64(_)) | (In::F32(_), In::F32(_)) | (In::I64(_), In::I64(_))
        )
    })
}

/// Element types that come back to Python as NumPy scalars or arrays.
pub trait ToNumpy: numpy::Element + Copy {
    /// A NumPy scalar (`np.float64`, `np.float32`, `np.int64`) holding `v`.
    fn scalar<'py>(py: Python<'py>, v: Self) -> PyResult<Bound<'py, PyAny>> {
        let descr = numpy::dtype::<Self>(py);
        let mut v = v;
        // SAFETY: PyArray_Scalar copies `itemsize` bytes from `v`, which is a value of the descriptor's type;
        // the descriptor is borrowed (not stolen) and stays alive for the call.
        unsafe {
            let p = numpy::npyffi::PY_ARRAY_API.PyArray_Scalar(
                py,
                (&mut v as *mut Self).cast(),
                descr.as_ptr().cast(),
                std::ptr::null_mut(),
            );
            Bound::from_owned_ptr_or_err(py, p)
        }
    }
}
impl ToNumpy for f64 {}
impl ToNumpy for f32 {}
impl ToNumpy for i64 {}

/// A result array: a NumPy scalar when 0-dimensional, else an ndarray.
pub fn to_py<'py, T: ToNumpy>(py: Python<'py>, a: ArrayD<T>) -> PyResult<Bound<'py, PyAny>> {
    if a.ndim() == 0 {
        T::scalar(py, a[[]])
    } else {
        Ok(a.into_pyarray(py).into_any())
    }
}

/// Applies `finish` (if any) to a result.
pub fn finish<'py>(
    r: Bound<'py, PyAny>,
    finish: &Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match finish {
        Some(f) => f.call1((r,)),
        None => Ok(r),
    }
}

/// A writeable `out` array of element type `T`.
pub fn take_out<'py, T: numpy::Element>(
    func: &'static str,
    out: &Bound<'py, PyAny>,
) -> PyResult<PyReadwriteArrayDyn<'py, T>> {
    let a = out.cast::<PyArrayDyn<T>>().map_err(|_| {
        let got = out
            .getattr("dtype")
            .map(|d| d.to_string())
            .unwrap_or_else(|_| out.get_type().to_string());
        PyTypeError::new_err(format!(
            "{func}(): argument 'out' must be a numpy.ndarray of dtype {}, got {got}",
            std::any::type_name::<T>()
                .replace("f64", "float64")
                .replace("f32", "float32")
                .replace("i64", "int64")
        ))
    })?;
    a.try_readwrite().map_err(|e| {
        PyValueError::new_err(format!(
            "{func}(): argument 'out' must be a writeable array ({e})"
        ))
    })
}

/// Checks the `device` argument through the one device check ([`ferrolab_core::device::select`]).
pub fn check_device(func: &'static str, device: &str) -> PyResult<()> {
    ferrolab_core::device::select(func, device).map(|_| ()).py()
}
