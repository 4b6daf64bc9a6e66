//! `ferrolab._core` kernels: thin wrappers that borrow arrays, pick the dtype, and call the core through the funnel.
//!
//! Each op reads as conversion + dispatch inside [`boundary`] (the device check and the failure count of every
//! call). The functions that `fl.ops` exports as they are carry its documentation (numpydoc, with examples that
//! the test suite runs through `ferrolab.ops.__test__`).

use crate::arrays::{
    alias, check_device, copy_into, dtype_or_class, finish, flat_slice, native_arg, native_array,
    native_kind, native_typed, new_array, opt_out, take, take_out, to_py, Alias, In, Kind,
    NativeArray, NativeKind, Obj, Prepared, Ro, ToNumpy,
};
use crate::errors::{
    arg_type, arg_value, renamed, scalar_arg, str_arg, type_of, value_error, IntoPyResult,
};
use crate::funnel::{counted, run, run_helper, Meta};
use crate::gpu_ops::reduced_py;
use ferrolab_core::gpu::dispatch::{self, Requested};
use ferrolab_core::gpu::exec::GpuFloat;
use ferrolab_core::gpu::ops::{self as gops, Scalars};
use ferrolab_core::kernels::elementwise::{Flat, Input};
use ferrolab_core::kernels::layout::Canon;
use ferrolab_core::kernels::native::{Fresh, Native, Out};
use ferrolab_core::kernels::{
    alloc, distance, elementwise, int, layout, linalg, optim, reduce, stats, Real,
};
use ferrolab_core::telemetry::seam::Op;
use ferrolab_core::Result as CoreResult;
use ndarray::{ArrayBase, ArrayD, ArrayViewD, Ix2, IxDyn, RawData};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyInt, PyTuple};
use smallvec::SmallVec;

/// The boundary of every op call: the one device check, then `body`; a failure is counted once ([`counted`]).
#[inline]
fn boundary<R>(op: Op, device: &str, body: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    counted(
        op,
        device,
        check_device(op.name(), device).and_then(|()| body()),
    )
}

/// [`boundary`] of an op with a GPU path ([`crate::gpu_ops`]): `"cpu"` runs `body`; `"cuda"` runs `gpu` (an error
/// when these inputs have no GPU path); `"auto"` runs `body` unless the cost model sends the call to the GPU (for
/// these O(n) ops on NumPy data only `FERROLAB_AUTO_DEVICE=cuda` does), and `body` again where `gpu` has no path.
#[inline]
fn boundary_gpu<'py>(
    op: Op,
    device: &str,
    gpu: impl FnOnce(Requested) -> Option<PyResult<Obj<'py>>>,
    body: impl FnOnce() -> PyResult<Obj<'py>>,
) -> PyResult<Obj<'py>> {
    let r = (|| match dispatch::parse(op.name(), device).py()? {
        Requested::Cpu => body(),
        Requested::Auto if !dispatch::auto_prefers_gpu(false, 0.0, 0.0) => body(),
        req => match gpu(req) {
            Some(r) => r,
            None if req == Requested::Auto => body(),
            None => Err(crate::gpu_ops::no_gpu_path(op, device)),
        },
    })();
    counted(op, device, r)
}

/// The GPU path of an elementwise op ([`crate::gpu_ops::elementwise`]), its result copied into `out` when given.
fn gpu_elementwise<'py>(
    py: Python<'py>,
    op: Op,
    arrays: &[&Obj<'py>],
    scalars: Option<Scalars>,
    out: Option<&Obj<'py>>,
    req: Requested,
) -> Option<PyResult<Obj<'py>>> {
    let r = crate::gpu_ops::elementwise(py, op, arrays, scalars?, req)?;
    Some(r.and_then(|res| match opt_out(out) {
        Some(o) => copy_into(py, op.name(), o, &res),
        None => Ok(res),
    }))
}

/// The element types of the type-preserving ops: the core's kernels ([`Native`]) and the Python conversions.
pub trait NativePy: Native + ToNumpy {
    fn unwrap(a: In<'_>) -> Ro<'_, Self>;
    fn from_py(name: &'static str, func: &'static str, v: &Obj<'_>) -> PyResult<Self>;
}

macro_rules! native_py {
    ($t:ty, $variant:ident, $scalar:ty, $what:literal) => {
        impl NativePy for $t {
            fn unwrap(a: In<'_>) -> Ro<'_, Self> {
                match a {
                    In::$variant(a) => a,
                    _ => unreachable!("inputs share one dtype"),
                }
            }
            #[allow(clippy::unnecessary_cast)]
            fn from_py(name: &'static str, func: &'static str, v: &Obj<'_>) -> PyResult<Self> {
                scalar_arg::<$scalar>(func, name, $what, v).map(|x| x as $t)
            }
        }
    };
}
native_py!(f64, F64, f64, "a real number");
native_py!(f32, F32, f64, "a real number");
native_py!(i64, I64, i64, "an integer here");

/// Argument `axis` of `op` as the kernels take it: None, or an int (any object with `__index__` but a bool, as
/// NumPy accepts). Another type is a TypeError and an int beyond the platform's index a ValueError, both naming
/// the function and the argument (PyO3's own conversion named neither in its message), with the conversion's
/// error as their cause; any other error of the conversion (one raised by an `__index__`) passes unchanged. A
/// failure is counted like every failed call.
#[inline(always)]
fn axis_arg(op: Op, device: &str, axis: Option<&Obj<'_>>) -> PyResult<Option<isize>> {
    match axis {
        None => Ok(None),
        Some(a) => axis_of(op, device, a),
    }
}

/// [`axis_arg`] of an axis given (None included), out of line: the default costs the call nothing.
#[inline(never)]
fn axis_of(op: Op, device: &str, a: &Obj<'_>) -> PyResult<Option<isize>> {
    if a.is_none() {
        return Ok(None);
    }
    let wrong_type = || {
        let got = type_of(a);
        arg_type(
            op.name(),
            "axis",
            format!("must be an int or None, got {got}"),
        )
    };
    let r = if a.is_instance_of::<pyo3::types::PyBool>() {
        Err(wrong_type()) // NumPy refuses a bool axis too
    } else {
        a.extract::<isize>().map(Some).map_err(|e| {
            // not the value itself: an int of more than 4,300 digits has no str()
            let beyond =
                |_| arg_value(op.name(), "axis", "is an int beyond any array's dimensions");
            renamed(a.py(), e, beyond, wrong_type)
        })
    };
    counted(op, device, r)
}

/// The scalar arguments of the ops, given to PyO3's `from_py_with` as `name::<{ Op::X as u8 }>`: a wrong type
/// is a TypeError and a number beyond the type an OverflowError, both naming the function and the argument
/// (PyO3's own conversion named neither in its message, only the argument in a note). A default costs nothing
/// (PyO3 calls these only for an argument given). A failure is counted like every failed call, under the
/// default device: the `device` argument may not have been converted yet.
macro_rules! scalar_args {
    ($($(#[$doc:meta])* $f:ident -> $t:ty = $arg:literal, $conv:expr;)*) => {$(
        $(#[$doc])*
        fn $f<const OP: u8>(v: &Obj<'_>) -> PyResult<$t> {
            let op = Op::ALL[OP as usize];
            counted(op, "cpu", $conv(op.name(), $arg, v))
        }
    )*};
}

scalar_args! {
    /// `ddof` of the variance: a real number, as NumPy takes it.
    ddof_arg -> f64 = "ddof", real_of;
    /// `threshold` of `zscore_anomalies`.
    threshold_arg -> f64 = "threshold", real_of;
    /// Adam's step count.
    t_arg -> i64 = "t", int_of;
    lr_arg -> f64 = "lr", real_of;
    beta1_arg -> f64 = "beta1", real_of;
    beta2_arg -> f64 = "beta2", real_of;
    eps_arg -> f64 = "eps", real_of;
    weight_decay_arg -> f64 = "weight_decay", real_of;
    decoupled_arg -> bool = "decoupled", bool_of;
}

/// `device`, as [`scalar_args`] converts the others (a str borrowed from the argument).
fn device_arg<'a, const OP: u8>(v: &'a Obj<'_>) -> PyResult<&'a str> {
    let op = Op::ALL[OP as usize];
    counted(op, "cpu", str_arg(op.name(), "device", v))
}

/// `metric` of `cdist`, as [`device_arg`].
fn metric_arg<'a>(v: &'a Obj<'_>) -> PyResult<&'a str> {
    counted(Op::Cdist, "cpu", str_arg("cdist", "metric", v))
}

/// A real number (any object with `__float__` or `__index__`).
fn real_of(func: &'static str, arg: &'static str, v: &Obj<'_>) -> PyResult<f64> {
    scalar_arg(func, arg, "a real number", v)
}

/// An int (any object with `__index__`, as Python's own int arguments).
fn int_of(func: &'static str, arg: &'static str, v: &Obj<'_>) -> PyResult<i64> {
    scalar_arg(func, arg, "an int", v)
}

/// A bool (Python's or NumPy's; an int is refused, as PyO3 refuses it).
fn bool_of(func: &'static str, arg: &'static str, v: &Obj<'_>) -> PyResult<bool> {
    scalar_arg(func, arg, "a bool", v)
}

/// The one array input `x` of `op`, converted, and the optional `finish` callable.
fn take_one<'py>(
    py: Python<'py>,
    op: Op,
    x: &Obj<'py>,
    kind: Kind,
) -> PyResult<(In<'py>, Option<Obj<'py>>)> {
    let Prepared { mut arrays, finish } = take(py, op.name(), &["x"], &[x], kind)?;
    Ok((arrays.remove(0), finish))
}

/// The two array inputs of `op`, converted to one dtype, and the optional `finish` callable.
fn take_two<'py>(
    py: Python<'py>,
    op: Op,
    names: [&'static str; 2],
    a: &Obj<'py>,
    b: &Obj<'py>,
    kind: Kind,
) -> PyResult<(In<'py>, In<'py>, Option<Obj<'py>>)> {
    let Prepared { arrays, finish } = take(py, op.name(), &names, &[a, b], kind)?;
    let [x, y] = <[In<'py>; 2]>::try_from(arrays).unwrap_or_else(|_| unreachable!("two inputs"));
    Ok((x, y, finish))
}

/// One arm per native dtype; `$T` names the element type inside `$body`. `each_float!`: the same for the
/// float-only ops (their `Kind::Float` inputs are never int64).
macro_rules! each_dtype {
    ($a:expr, $T:ident, $arr:ident => $body:expr) => {
        each_dtype!(@ $a, $T, $arr => $body, In::I64($arr) => { type $T = i64; $body })
    };
    (@ $a:expr, $T:ident, $arr:ident => $body:expr, $($int:tt)+) => {
        match $a {
            In::F64($arr) => { type $T = f64; $body }
            In::F32($arr) => { type $T = f32; $body }
            $($int)+
        }
    };
}
macro_rules! each_float {
    ($a:expr, $T:ident, $arr:ident => $body:expr) => {
        each_dtype!(@ $a, $T, $arr => $body, In::I64(_) => unreachable!("float ops convert integers first"))
    };
}

// ----------------------------------------------------------------------------------------------------------
// reductions

/// Borrows a view of the one input `a`, and runs `f` on it through the funnel.
fn one<'py, T: numpy::Element + Sync, R: Send>(
    py: Python<'py>,
    op: Op,
    a: &Ro<'py, T>,
    f: impl FnOnce(ArrayViewD<'_, T>) -> CoreResult<R> + Send,
) -> PyResult<R> {
    let v = a.as_array();
    run(py, op, v.len(), Meta::one::<T>(a.0.shape()), || f(v))
}

/// [`one`], its result converted.
fn red<'py, T: numpy::Element + Sync, U: ToNumpy>(
    py: Python<'py>,
    op: Op,
    a: &Ro<'py, T>,
    f: impl FnOnce(ArrayViewD<'_, T>) -> CoreResult<ArrayD<U>> + Send,
) -> PyResult<Obj<'py>> {
    to_py(py, one(py, op, a, f)?)
}

/// Fast path for `axis=None` on a non-empty contiguous float64/float32 array: no n-d view is built, and the
/// kernel is the core's whole-array one ([`gops::reduce_flat`]). `None` where it does not apply.
fn flat_fast<'py>(
    py: Python<'py>,
    op: Op,
    x: &Obj<'py>,
    axis: Option<isize>,
    ddof: f64,
) -> Option<PyResult<Obj<'py>>> {
    fn typed<'py, T: Real + ToNumpy>(
        py: Python<'py>,
        op: Op,
        a: &Bound<'py, PyArrayDyn<T>>,
        ddof: f64,
    ) -> Option<PyResult<Obj<'py>>> {
        let s = flat_slice(a, gops::needs_c_order(op))?;
        // degenerate inputs (empty, or no degrees of freedom left) take the general path, which warns like NumPy;
        // an invalid ddof is reported by the kernel
        if !gops::flat_applies(op, s.len(), ddof).unwrap_or(true) {
            return None;
        }
        let meta = Meta::one::<T>(a.shape());
        if reduce::small::applies(s) {
            // a small input: the kernel on the calling thread, straight to a NumPy scalar (no result arrays)
            let r = run(py, op, s.len(), meta, move || {
                gops::reduce_flat_small(op, s, ddof).unwrap_or_else(|| {
                    Err(ferrolab_core::CoreError::internal(
                        op.name(),
                        "not a reduction",
                    ))
                })
            });
            return Some(r.and_then(|r| match r {
                reduce::Scalar::Value(v) => <T as ToNumpy>::scalar(py, v),
                reduce::Scalar::Index(i) => <i64 as ToNumpy>::scalar(py, i),
            }));
        }
        let r = run(py, op, s.len(), meta, move || {
            gops::reduce_flat(op, Canon::flat(s), ddof)
        });
        Some(r.and_then(|r| reduced_py(py, r)))
    }
    if axis.is_some() {
        return None;
    }
    match native_array(x)? {
        NativeArray::F64(a) => typed(py, op, a, ddof),
        NativeArray::F32(a) => typed(py, op, a, ddof),
        NativeArray::I64(a) => {
            // int64 sum/min/max/argmin/argmax of a small contiguous array: its kernel on the calling thread
            let s = flat_slice(a, gops::needs_c_order(op))?;
            if !int::flat_small_applies(op, s) {
                return None;
            }
            let meta = Meta::one::<i64>(a.shape());
            let r = run(py, op, s.len(), meta, move || {
                int::reduce_flat_small(op, s).ok_or_else(|| {
                    ferrolab_core::CoreError::internal(op.name(), "not an int64 reduction")
                })
            });
            Some(
                r.and_then(|(reduce::Scalar::Value(v) | reduce::Scalar::Index(v))| {
                    <i64 as ToNumpy>::scalar(py, v)
                }),
            )
        }
    }
}

/// Length of the reduced axis (all elements for `None`); `None` when the axis is invalid (the op reports it).
fn reduced_len(a: &In<'_>, axis: Option<isize>) -> Option<usize> {
    ferrolab_core::kernels::layout::reduced_len(a.shape(), axis)
}

/// Emits a `RuntimeWarning` like NumPy does for degenerate reductions.
fn warn_if(py: Python<'_>, cond: bool, msg: &::std::ffi::CStr) -> PyResult<()> {
    if cond {
        let cat = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
        PyErr::warn(py, cat.as_any(), msg, 1)?;
    }
    Ok(())
}

/// NumPy's warning when `ddof` leaves no degrees of freedom.
fn warn_ddof(py: Python<'_>, a: &In<'_>, axis: Option<isize>, ddof: f64) -> PyResult<()> {
    let none_left = reduced_len(a, axis).is_some_and(|n| n as f64 - ddof <= 0.0);
    warn_if(py, none_left, c"Degrees of freedom <= 0 for slice")
}

/// `name(x, axis=None, *, device="cpu")`: the flat fast path, else `$kernel` on the n-d view `$v` of
/// element type `$T`, for each dtype that `$each` (`each_dtype` or `each_float`) admits.
macro_rules! reduction {
    ($(#[$doc:meta])* $name:ident: $op:expr, $kind:expr, $each:ident,
     |$v:ident: $T:ident, $axis:ident| $kernel:expr $(, warn_empty = $msg:literal)?) => {
        $(#[$doc])*
        #[pyfunction]
        #[pyo3(signature = (x, axis=None, *, device="cpu"))]
        pub fn $name<'py>(
            py: Python<'py>,
            x: &Obj<'py>,
            axis: Option<&Obj<'py>>,
            #[pyo3(from_py_with = device_arg::<{ $op as u8 }>)] device: &str,
        ) -> PyResult<Obj<'py>> {
            let axis = axis_arg($op, device, axis)?;
            boundary_gpu($op, device, |req| crate::gpu_ops::reduction(py, $op, x, axis, 0.0, req), || {
                if let Some(r) = flat_fast(py, $op, x, axis, 0.0) {
                    return r;
                }
                let (a, fin) = take_one(py, $op, x, $kind)?;
                $(warn_if(py, reduced_len(&a, axis) == Some(0), $msg)?;)?
                let $axis = axis;
                let r = $each!(a, $T, a => red(py, $op, &a, |$v| $kernel))?;
                finish(r, &fin)
            })
        }
    };
}

reduction! {
    /// Sum of array elements over an axis, like :func:`numpy.sum`.
    ///
    /// Blocked SIMD summation with compensated combination: the error does not grow with the input length
    /// (``float32`` inputs are accumulated in ``float64``).
    ///
    /// Parameters
    /// ----------
    /// x : array_like
    ///     Input data.
    /// axis : int, optional
    ///     Axis to sum over; ``None`` (default) sums all elements.
    /// device : {"cpu", "cuda", "auto"}, optional
    ///     Where to compute.
    ///
    /// Returns
    /// -------
    /// numpy scalar or ndarray
    ///     The sum; 0 for an empty input.
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.sum(np.arange(5.0))
    /// np.float64(10.0)
    /// >>> fl.ops.sum(np.ones((2, 3), dtype=np.float32), axis=0)
    /// array([2., 2., 2.], dtype=float32)
    sum: Op::Sum, Kind::Sum, each_dtype,
    |v: T, axis| <T as Native>::sum(&v, axis)
}

reduction! {
    /// Arithmetic mean over an axis, like :func:`numpy.mean`.
    ///
    /// An empty reduction returns NaN and warns ``RuntimeWarning: Mean of empty slice`` as NumPy does.
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.mean(np.array([1.0, 2.0, 6.0]))
    /// np.float64(3.0)
    mean: Op::Mean, Kind::Float, each_float,
    |v: T, axis| reduce::mean::<T>(&v, axis), warn_empty = c"Mean of empty slice"
}

reduction! {
    /// Minimum over an axis, like :func:`numpy.min` (NaN propagates; empty input is a ``ValueError``).
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.min(np.array([[3.0, 1.0], [0.5, 7.0]]), axis=1)
    /// array([1. , 0.5])
    min: Op::Min, Kind::Same, each_dtype,
    |v: T, axis| <T as Native>::min(&v, axis)
}

reduction! {
    /// Maximum over an axis, like :func:`numpy.max` (NaN propagates; empty input is a ``ValueError``).
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.max(np.array([3, 9, 2], dtype=np.int32))
    /// np.int32(9)
    max: Op::Max, Kind::Same, each_dtype,
    |v: T, axis| <T as Native>::max(&v, axis)
}

reduction! {
    /// Index of the first minimum, like :func:`numpy.argmin` (a NaN counts as the minimum).
    ///
    /// With ``axis=None`` the index refers to the C-order flattened array.
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.argmin(np.array([4.0, 1.0, 1.0, 3.0]))
    /// np.int64(1)
    argmin: Op::Argmin, Kind::Index, each_dtype,
    |v: T, axis| <T as Native>::argmin(&v, axis)
}

reduction! {
    /// Index of the first maximum, like :func:`numpy.argmax` (a NaN counts as the maximum).
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.argmax(np.array([[1.0, 5.0], [7.0, 2.0]]), axis=0)
    /// array([1, 0])
    argmax: Op::Argmax, Kind::Index, each_dtype,
    |v: T, axis| <T as Native>::argmax(&v, axis)
}

reduction! {
    /// L2 norm, like :func:`numpy.linalg.norm` (of all elements for ``axis=None``, else along ``axis``).
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.norm(np.array([3.0, 4.0]))
    /// np.float64(5.0)
    norm: Op::Norm, Kind::Float, each_float,
    |v: T, axis| reduce::norm::<T>(&v, axis)
}

/// `name(x, axis=None, ddof=0.0, *, device="cpu")`: variance or standard deviation.
macro_rules! moment {
    ($(#[$doc:meta])* $name:ident: $op:expr, $kernel:ident) => {
        $(#[$doc])*
        #[pyfunction]
        #[pyo3(signature = (x, axis=None, ddof=0.0, *, device="cpu"))]
        pub fn $name<'py>(
            py: Python<'py>,
            x: &Obj<'py>,
            axis: Option<&Obj<'py>>,
            #[pyo3(from_py_with = ddof_arg::<{ $op as u8 }>)] ddof: f64,
            #[pyo3(from_py_with = device_arg::<{ $op as u8 }>)] device: &str,
        ) -> PyResult<Obj<'py>> {
            let axis = axis_arg($op, device, axis)?;
            boundary_gpu($op, device, |req| crate::gpu_ops::reduction(py, $op, x, axis, ddof, req), || {
                if let Some(r) = flat_fast(py, $op, x, axis, ddof) {
                    return r;
                }
                let (a, fin) = take_one(py, $op, x, Kind::Float)?;
                warn_ddof(py, &a, axis, ddof)?;
                let r = each_float!(a, T, a => red(py, $op, &a, |v| stats::$kernel::<T>(&v, axis, ddof)))?;
                finish(r, &fin)
            })
        }
    };
}

moment! {
    /// Variance over an axis, like :func:`numpy.var`.
    ///
    /// One pass over memory, numerically stable (per-block corrected two-pass moments merged with Chan's
    /// formula), so a large offset plus small noise keeps its precision.
    ///
    /// Parameters
    /// ----------
    /// x : array_like
    ///     Input data.
    /// axis : int, optional
    ///     Axis to reduce; ``None`` (default) uses all elements.
    /// ddof : float, optional
    ///     Delta degrees of freedom: the divisor is ``N - ddof``.
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.var(np.array([1.0, 2.0, 3.0, 4.0]), ddof=1)
    /// np.float64(1.6666666666666667)
    var: Op::Var, var
}

moment! {
    /// Standard deviation over an axis, like :func:`numpy.std` (see :func:`var`).
    ///
    /// Examples
    /// --------
    /// >>> import numpy as np, ferrolab as fl
    /// >>> fl.ops.std(np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]))
    /// np.float64(2.0)
    std: Op::Std, std
}

/// Inner product of two 1-D arrays of equal length, like :func:`numpy.dot`.
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> fl.ops.dot(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
/// np.float64(32.0)
#[pyfunction]
#[pyo3(signature = (x, y, *, device="cpu"))]
pub fn dot<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    y: &Obj<'py>,
    #[pyo3(from_py_with = device_arg::<{ Op::Dot as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    boundary(Op::Dot, device, || {
        let small = match (native_array(x), native_array(y)) {
            (Some(NativeArray::F64(a)), Some(NativeArray::F64(b))) => dot_small(py, a, b),
            (Some(NativeArray::F32(a)), Some(NativeArray::F32(b))) => dot_small(py, a, b),
            _ => None,
        };
        if let Some(r) = small {
            return r;
        }
        let (a, b, fin) = take_two(py, Op::Dot, ["x", "y"], x, y, Kind::Same)?;
        let r = each_dtype!(a, T, a => {
            let b = <T as NativePy>::unwrap(b);
            let (va, vb) = (a.as_array(), b.as_array());
            let meta = Meta::two::<T>(a.0.shape(), b.0.shape());
            let v = run(py, Op::Dot, va.len(), meta, || <T as Native>::dot(&va, &vb))?;
            <T as ToNumpy>::scalar(py, v)
        })?;
        finish(r, &fin)
    })
}

/// Fast path of [`dot`] for two contiguous 1-D arrays of one float dtype and equal length below the parallel
/// threshold: the kernel on the calling thread, straight to a NumPy scalar. `None` where it does not apply.
fn dot_small<'py, T: Real + ToNumpy>(
    py: Python<'py>,
    a: &Bound<'py, PyArrayDyn<T>>,
    b: &Bound<'py, PyArrayDyn<T>>,
) -> Option<PyResult<Obj<'py>>> {
    if a.ndim() != 1 || b.ndim() != 1 {
        return None;
    }
    let (sa, sb) = (flat_slice(a, false)?, flat_slice(b, false)?);
    if sa.len() != sb.len() || !reduce::small::dot_applies::<T>(sa.len()) {
        return None;
    }
    let meta = Meta::two::<T>(a.shape(), b.shape());
    let r = run(py, Op::Dot, sa.len(), meta, move || {
        Ok(reduce::small::dot(sa, sb))
    });
    Some(r.and_then(|v| <T as ToNumpy>::scalar(py, v)))
}

// ----------------------------------------------------------------------------------------------------------
// elementwise with out=

/// The operands of an elementwise call as prepared by [`elementwise`], ready to run for their element type: the
/// input arrays, which of them are `out` itself (computed in place: `Input::SameAsOut`), and `out`.
struct Ew<'a, 'py>(
    Python<'py>,
    Op,
    &'a [&'static str],
    Vec<In<'py>>,
    Vec<bool>,
    Option<&'a Obj<'py>>,
);

/// Runs an [`Ew`] for its element type; `scalars` are the scalar operands as the kernel uses them (None where
/// absent). Returns the new result, or `None` when it was written into `out`.
type EwCall<'f, 'py> = &'f dyn Fn(Ew<'_, 'py>, &[&Obj<'py>]) -> PyResult<Option<Obj<'py>>>;

static PREPARE_ELEMENTWISE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Shared driver of axpy/fma/scale/clip: `arrays` are the array operands (named), `scalars` the scalar ones
/// (they take part in NumPy's result-type rules); `call` runs the core op for the chosen dtype.
fn elementwise<'py>(
    py: Python<'py>,
    op: Op,
    names: &[&'static str],
    arrays: &[&Obj<'py>],
    scalars: &[(&'static str, &Obj<'py>)],
    out: Option<&Obj<'py>>,
    call: EwCall<'_, 'py>,
) -> PyResult<Obj<'py>> {
    let func = op.name();
    let out = opt_out(out);
    if let Some(r) = flat_elementwise(py, op, arrays, scalars, out) {
        return r;
    }
    // fast path: arrays of one native dtype and plain Python scalars (weak under NEP 50) that do not change it;
    // anything else (NumPy scalars are strong, integer arrays with a float scalar promote) goes through
    // NumPy's result-type rules in `_coerce.prepare_elementwise`
    // the one native dtype of all arrays (`Some(None)` without arrays), `None` when they have none in common
    let kinds: Option<Vec<NativeKind>> = arrays.iter().map(|a| native_kind(a)).collect();
    let common = kinds.and_then(|k| {
        k.windows(2)
            .all(|w| w[0] == w[1])
            .then(|| k.first().copied())
    });
    // (an int beyond int64 takes NumPy's rules: out-of-range clip bounds are ignored or raise OverflowError)
    let fast = match common {
        Some(Some(NativeKind::I64)) => scalars
            .iter()
            .all(|(_, s)| s.is_none() || (plain_int(s) && s.extract::<i64>().is_ok())),
        Some(_) => scalars.iter().all(|(_, s)| s.is_none() || plain_num(s)),
        None => false,
    };
    // exact aliasing of out with an input: compute in place; partial overlap: compute fresh, then copy
    let mut same = vec![false; arrays.len()];
    let mut overlap = false;
    if let Some(o) = out {
        for (k, a) in arrays.iter().enumerate() {
            match alias(o, a) {
                Alias::Same => same[k] = true,
                Alias::Partial => overlap = true,
                Alias::None => {}
            }
        }
    }
    // the scalars as the kernel uses them: as given on the fast path, as converted by prepare_elementwise else
    let none = py.None().into_bound(py);
    let mut converted: Vec<Obj<'py>> = Vec::new();
    let prepared = if fast {
        take(py, func, names, arrays, Kind::Same)?
    } else {
        let prepare = PREPARE_ELEMENTWISE.import(py, "ferrolab._coerce", "prepare_elementwise")?;
        let sc: Vec<&Obj<'py>> = scalars.iter().map(|(_, s)| *s).collect();
        let sn: Vec<&str> = scalars.iter().map(|(n, _)| *n).collect();
        let res = prepare.call1((func, names.to_vec(), arrays.to_vec(), sc, sn))?;
        let (arrs, fin, sc): (Vec<Obj<'py>>, Obj<'py>, Vec<Obj<'py>>) = res.extract()?;
        let refs: Vec<&Obj<'py>> = arrs.iter().collect();
        let mut p = take(py, func, names, &refs, Kind::Same)?;
        p.finish = (!fin.is_none()).then_some(fin);
        same.fill(false); // converted copies never alias out
        converted = sc;
        p
    };
    // (at most two scalars: clip's bounds; a stack array, no allocation on the fast path)
    let pick = |k: usize| match fast {
        true => scalars.get(k).map_or(&none, |s| s.1),
        false => converted.get(k).unwrap_or(&none),
    };
    let sc_buf = [pick(0), pick(1)];
    let sc = &sc_buf[..scalars.len().min(2)];
    let Prepared {
        arrays,
        finish: fin,
    } = prepared;
    let n = arrays.len();
    let other_dtype = out.is_some_and(|o| !arrays[0].same_dtype_as(o));
    let ew = |same, o| Ew(py, op, names, arrays, same, o);
    match out {
        Some(o) if fin.is_some() || overlap || other_dtype => {
            // compute into a fresh array, then copy into out with NumPy's same-kind casting (an out of another
            // dtype takes what a ufunc's out takes: float64 into float32, int64 into float64, ...)
            let r = call(ew(vec![false; n], None), sc)?.expect("fresh result");
            copy_into(py, func, o, &finish(r, &fin)?)
        }
        Some(o) => call(ew(same, Some(o)), sc).map(|_| o.clone()),
        None => finish(call(ew(same, None), sc)?.expect("fresh result"), &fin),
    }
}

/// A plain Python `int` (not a subclass such as `bool`, not a NumPy scalar): weak under NEP 50.
fn plain_int(s: &Obj<'_>) -> bool {
    s.is_exact_instance_of::<PyInt>()
}

/// A plain Python `float` or `int` (see [`plain_int`]).
fn plain_num(s: &Obj<'_>) -> bool {
    s.is_exact_instance_of::<PyFloat>() || plain_int(s)
}

/// The flat path of [`elementwise`]: float64/float32 arrays of one dtype and one shape, all C-contiguous, plain
/// Python numbers as scalars (weak under NEP 50), and `out` (when given) one more such array that shares no
/// memory with an input or is exactly an input's memory (computed in place). The core's [`Flat`] kernels run on
/// the arrays' elements: no views, broadcasting or shape bookkeeping. `None` where it does not apply.
fn flat_elementwise<'py>(
    py: Python<'py>,
    op: Op,
    arrays: &[&Obj<'py>],
    scalars: &[(&'static str, &Obj<'py>)],
    out: Option<&Obj<'py>>,
) -> Option<PyResult<Obj<'py>>> {
    fn flat<'py, T: NativePy + Real>(
        py: Python<'py>,
        op: Op,
        arrays: &[&Obj<'py>],
        v: [Option<f64>; 2],
        out: Option<&Obj<'py>>,
    ) -> Option<PyResult<Obj<'py>>> {
        let t = |k: usize| v[k].map(T::from_f64);
        let flat = match op {
            Op::Axpy => Flat::Axpy(t(0)?),
            Op::Fma => Flat::Fma,
            Op::Scale => Flat::Scale(t(0)?),
            Op::Clip => Flat::Clip(
                t(0).unwrap_or(<T as Native>::LOWEST),
                t(1).unwrap_or(<T as Native>::HIGHEST),
            ),
            _ => return None,
        };
        let shape = native_typed::<T>(arrays[0])?.shape();
        let mut inputs: SmallVec<[Option<&[T]>; 3]> = SmallVec::new();
        for a in arrays {
            let a = native_typed::<T>(a)?;
            inputs.push(Some(flat_slice(a, true).filter(|_| a.shape() == shape)?));
        }
        let fresh;
        let o = match out {
            Some(o) => {
                let o = native_typed::<T>(o)?;
                if !(o.is_c_contiguous() && o.shape() == shape) {
                    return None;
                }
                // an input at out's very memory is read from out; any other overlap takes the general path. The
                // inputs are unregistered views (see `Ro`): this check is what keeps them apart from out's
                // mutable slice.
                let (at, bytes) = (o.data() as usize, ::std::mem::size_of_val(inputs[0]?));
                for i in inputs.iter_mut() {
                    match i.map(|s| layout::alias_flat(at, s.as_ptr() as usize, bytes)) {
                        Some(Alias::Same) => *i = None,
                        Some(Alias::Partial) => return None,
                        _ => {}
                    }
                }
                o
            }
            None => match new_array::<T>(py, op.name(), shape, false) {
                Ok(a) => {
                    fresh = a;
                    &fresh
                }
                Err(e) => return Some(Err(e)),
            },
        };
        Some((|| {
            let mut rw = take_out::<T>(op.name(), "out", o.as_any())?;
            let os = rw.as_slice_mut().map_err(|e| {
                let msg = format!("cannot be written as one slice ({e})");
                arg_value(op.name(), "out", msg)
            })?;
            let shapes = || vec![shape.to_vec(); inputs.len()];
            run(py, op, os.len(), Meta::lazy::<T>(&shapes), || {
                flat.run(&inputs, os);
                Ok(())
            })?;
            drop(rw);
            match out {
                Some(o) => Ok(o.clone()),
                None => scalar_if_0d(py, o.clone().into_any()),
            }
        })())
    }
    // the scalars: plain Python numbers (NumPy scalars are strong: their dtype takes part), or None for clip
    let mut v = [None; 2];
    for (k, (_, s)) in scalars.iter().enumerate() {
        v[k] = if s.is_none() {
            None
        } else if plain_num(s) {
            Some(s.extract::<f64>().ok()?)
        } else {
            return None;
        };
    }
    match native_array(arrays[0])? {
        NativeArray::F64(_) => flat::<f64>(py, op, arrays, v, out),
        NativeArray::F32(_) => flat::<f32>(py, op, arrays, v, out),
        NativeArray::I64(_) => None,
    }
}

/// A fresh result: a 0-d one as a NumPy scalar, as NumPy returns them.
fn scalar_if_0d<'py>(py: Python<'py>, a: Obj<'py>) -> PyResult<Obj<'py>> {
    match a.cast::<PyUntypedArray>()?.ndim() {
        0 => a.get_item(PyTuple::empty(py)),
        _ => Ok(a),
    }
}

impl<'py> Ew<'_, 'py> {
    /// Runs the core elementwise kernel `f` for element type `T` on `Input`s built from the arrays (in order),
    /// into `out` or into a fresh array.
    fn run<T: NativePy>(
        self,
        f: impl for<'a> FnOnce(Vec<Input<'a, T>>, Out<'a, T>) -> Fresh<T> + Send,
    ) -> PyResult<Option<Obj<'py>>> {
        let Ew(py, op, names, arrays, same, out) = self;
        let func = op.name();
        let ro: Vec<Ro<'py, T>> = arrays.into_iter().map(T::unwrap).collect();
        // a fresh result ([`new_array`]: no zero-filling, huge pages for large ones, recycled from 4 MiB), in
        // Fortran order when every input is Fortran-contiguous, and then filled in place like an `out=`
        let fresh = match out {
            Some(_) => None,
            None => {
                let refs: Vec<(&'static str, &[usize])> = names
                    .iter()
                    .zip(&ro)
                    .map(|(n, a)| (*n, a.0.shape()))
                    .collect();
                let shape = elementwise::broadcast_shapes(func, &refs).py()?;
                let fortran = shape.len() > 1
                    && ro.iter().all(|a| {
                        a.0.is_fortran_contiguous()
                            && !a.0.is_c_contiguous()
                            && a.0.shape() == shape.as_slice()
                    });
                Some(new_array::<T>(py, func, &shape, fortran)?)
            }
        };
        let out = fresh
            .as_ref()
            .map(|a| a.as_any())
            .or(out)
            .expect("fresh or out");
        let mut rw = take_out::<T>(func, "out", out)?;
        let work = ro.iter().map(|a| a.0.len()).max().unwrap_or(0);
        let pairs = || ro.iter().zip(same.iter().copied());
        let inputs: Vec<Input<'_, T>> = pairs()
            .map(|(a, s)| match s {
                true => Input::SameAsOut,
                false => Input::View(a.as_array()),
            })
            .collect();
        let ov = rw.as_array_mut();
        let out_shape = ov.shape().to_vec();
        let shapes = || -> Vec<Vec<usize>> {
            pairs()
                .map(|(a, s)| if s { &out_shape[..] } else { a.0.shape() }.to_vec())
                .collect()
        };
        let r = run(py, op, work, Meta::lazy::<T>(&shapes), move || {
            f(inputs, Some(ov))
        })?;
        drop(rw);
        debug_assert!(r.is_none(), "a kernel with an out writes into it");
        fresh.map(|a| scalar_if_0d(py, a.into_any())).transpose()
    }
}

/// ``a * x + y`` in one pass (fused multiply-add), broadcasting like NumPy.
///
/// Parameters
/// ----------
/// a : float
///     Scalar factor.
/// x, y : array_like
///     Operands (broadcast together).
/// out : ndarray, optional
///     Where to write the result; may be ``x`` or ``y`` itself (computed in place). Reusing an output array
///     avoids the page faults of a fresh allocation on large inputs.
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> y = np.ones(3)
/// >>> fl.ops.axpy(2.0, np.arange(3.0), y, out=y)
/// array([1., 3., 5.])
#[pyfunction]
#[pyo3(signature = (a, x, y, out=None, *, device="cpu"))]
pub fn axpy<'py>(
    py: Python<'py>,
    a: &Obj<'py>,
    x: &Obj<'py>,
    y: &Obj<'py>,
    out: Option<&Obj<'py>>,
    #[pyo3(from_py_with = device_arg::<{ Op::Axpy as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    let gpu = |req| {
        let a = crate::gpu_ops::plain_number(a).map(Scalars::Axpy);
        gpu_elementwise(py, Op::Axpy, &[x, y], a, out, req)
    };
    boundary_gpu(Op::Axpy, device, gpu, || {
        let call = |ew: Ew<'_, 'py>, sc: &[&Obj<'py>]| {
            each_dtype!(&ew.3[0], T, _a => {
                let a = <T as NativePy>::from_py("a", "axpy", sc[0])?;
                ew.run::<T>(move |mut v, o| {
                    let y = v.pop().expect("y");
                    <T as Native>::axpy(a, v.pop().expect("x"), y, o)
                })
            })
        };
        elementwise(py, Op::Axpy, &["x", "y"], &[x, y], &[("a", a)], out, &call)
    })
}

/// ``x * y + z`` in one pass (fused multiply-add), broadcasting like NumPy.
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> fl.ops.fma(np.array([1.0, 2.0]), np.array([3.0, 4.0]), 1.0)
/// array([4., 9.])
#[pyfunction]
#[pyo3(signature = (x, y, z, out=None, *, device="cpu"))]
pub fn fma<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    y: &Obj<'py>,
    z: &Obj<'py>,
    out: Option<&Obj<'py>>,
    #[pyo3(from_py_with = device_arg::<{ Op::Fma as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    let gpu = |req| {
        let s = Some(Scalars::Fma);
        gpu_elementwise(py, Op::Fma, &[x, y, z], s, out, req)
    };
    boundary_gpu(Op::Fma, device, gpu, || {
        let call = |ew: Ew<'_, 'py>, _: &[&Obj<'py>]| {
            each_dtype!(&ew.3[0], T, _a => ew.run::<T>(|mut v, o| {
                let (z, y) = (v.pop().expect("z"), v.pop().expect("y"));
                <T as Native>::fma(v.pop().expect("x"), y, z, o)
            }))
        };
        elementwise(py, Op::Fma, &["x", "y", "z"], &[x, y, z], &[], out, &call)
    })
}

/// ``a * x``.
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> fl.ops.scale(np.array([1.0, -2.0]), 0.5)
/// array([ 0.5, -1. ])
#[pyfunction]
#[pyo3(signature = (x, a, out=None, *, device="cpu"))]
pub fn scale<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    a: &Obj<'py>,
    out: Option<&Obj<'py>>,
    #[pyo3(from_py_with = device_arg::<{ Op::Scale as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    let gpu = |req| {
        let a = crate::gpu_ops::plain_number(a).map(Scalars::Scale);
        gpu_elementwise(py, Op::Scale, &[x], a, out, req)
    };
    boundary_gpu(Op::Scale, device, gpu, || {
        let call = |ew: Ew<'_, 'py>, sc: &[&Obj<'py>]| {
            each_dtype!(&ew.3[0], T, _a => {
                let a = <T as NativePy>::from_py("a", "scale", sc[0])?;
                ew.run::<T>(move |mut v, o| <T as Native>::scale(v.pop().expect("x"), a, o))
            })
        };
        elementwise(py, Op::Scale, &["x"], &[x], &[("a", a)], out, &call)
    })
}

/// Limit values to ``[lo, hi]``, like :func:`numpy.clip` (NaN stays NaN; ``None`` leaves a side open).
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> fl.ops.clip(np.array([-1.0, 0.5, 3.0]), 0.0, 1.0)
/// array([0. , 0.5, 1. ])
#[pyfunction]
#[pyo3(signature = (x, lo, hi, out=None, *, device="cpu"))]
pub fn clip<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    lo: &Obj<'py>,
    hi: &Obj<'py>,
    out: Option<&Obj<'py>>,
    #[pyo3(from_py_with = device_arg::<{ Op::Clip as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    let gpu = |req| {
        let bound = |v: &Obj<'py>| match v.is_none() {
            true => Some(None),
            false => crate::gpu_ops::plain_number(v)
                .filter(|b| !b.is_nan())
                .map(Some),
        };
        let s = match (bound(lo), bound(hi)) {
            (Some(l), Some(h)) => Some(Scalars::Clip(l, h)), // both None: a copy, as on the CPU
            _ => None,
        };
        gpu_elementwise(py, Op::Clip, &[x], s, out, req)
    };
    boundary_gpu(Op::Clip, device, gpu, || {
        // both bounds None: a copy, as NumPy (>= 2.1) gives
        let call = |ew: Ew<'_, 'py>, sc: &[&Obj<'py>]| {
            each_dtype!(&ew.3[0], T, _a => {
                let bound = |name, v: &Obj<'py>, missing: T| match v.is_none() {
                    true => Ok(missing),
                    false => <T as NativePy>::from_py(name, "clip", v),
                };
                let lo = bound("lo", sc[0], <T as Native>::LOWEST)?;
                let hi = bound("hi", sc[1], <T as Native>::HIGHEST)?;
                ew.run::<T>(move |mut v, o| <T as Native>::clip(v.pop().expect("x"), lo, hi, o))
            })
        };
        elementwise(
            py,
            Op::Clip,
            &["x"],
            &[x],
            &[("lo", lo), ("hi", hi)],
            out,
            &call,
        )
    })
}

// ----------------------------------------------------------------------------------------------------------
// statistics

/// ``(x - x.mean(axis)) / x.std(axis, ddof=ddof)`` with the statistics broadcast back, in two passes.
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> fl.ops.standardize(np.array([1.0, 2.0, 3.0]))
/// array([-1.22474487,  0.        ,  1.22474487])
#[pyfunction]
#[pyo3(signature = (x, axis=None, ddof=0.0, out=None, *, device="cpu"))]
pub fn standardize<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    axis: Option<&Obj<'py>>,
    #[pyo3(from_py_with = ddof_arg::<{ Op::Standardize as u8 }>)] ddof: f64,
    out: Option<&Obj<'py>>,
    #[pyo3(from_py_with = device_arg::<{ Op::Standardize as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    let axis = axis_arg(Op::Standardize, device, axis)?;
    let gpu = |req| {
        let s = axis.is_none().then_some(Scalars::Standardize(ddof));
        gpu_elementwise(py, Op::Standardize, &[x], s, out, req)
    };
    boundary_gpu(Op::Standardize, device, gpu, || {
        standardize_into(py, x, axis, ddof, opt_out(out))
    })
}

fn standardize_into<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    axis: Option<isize>,
    ddof: f64,
    out: Option<&Obj<'py>>,
) -> PyResult<Obj<'py>> {
    let (a, fin) = take_one(py, Op::Standardize, x, Kind::Float)?;
    if let Some(o) =
        out.filter(|o| fin.is_some() || alias(o, x) != Alias::None || !a.same_dtype_as(o))
    {
        // out overlaps x, x was converted, or out is not a native array of x's dtype: compute fresh, then copy
        // (with NumPy's same-kind casting)
        let r = standardize_into(py, x, axis, ddof, None)?;
        return copy_into(py, "standardize", o, &r);
    }
    warn_ddof(py, &a, axis, ddof)?;
    let ew = Ew(py, Op::Standardize, &["x"], vec![a], vec![false], out);
    let r = each_float!(&ew.3[0], T, _a => ew.run::<T>(move |mut v, o| match v.pop() {
        Some(Input::View(v)) => stats::standardize::<T>(&v, axis, ddof, o),
        _ => unreachable!("one input, not out"),
    })?);
    let r = r.or_else(|| out.cloned()).expect("fresh or out");
    finish(r, &fin)
}

/// Flat indices where ``|x - mean| / std > threshold``, like ``np.flatnonzero(abs(x - x.mean()) / x.std() > t)``.
///
/// Two passes: the moments, then a branch-free scan that collects the few hits.
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> x = np.zeros(100); x[42] = 50.0
/// >>> fl.ops.zscore_anomalies(x)
/// array([42])
#[pyfunction]
#[pyo3(signature = (x, threshold=3.0, *, device="cpu"))]
pub fn zscore_anomalies<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    #[pyo3(from_py_with = threshold_arg::<{ Op::ZscoreAnomalies as u8 }>)] threshold: f64,
    #[pyo3(from_py_with = device_arg::<{ Op::ZscoreAnomalies as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    boundary(Op::ZscoreAnomalies, device, || {
        let (a, _) = take_one(py, Op::ZscoreAnomalies, x, Kind::Float)?;
        let op = Op::ZscoreAnomalies;
        let idx = each_float!(a, T, a => one(py, op, &a, |v| stats::zscore_anomalies::<T>(&v, threshold))?);
        Ok(numpy::PyArray1::from_vec(py, idx).into_any())
    })
}

/// Quantiles of `x` (converted to float32/float64 by `fl.ops.quantile`) for the flat list `q`.
#[pyfunction]
#[pyo3(signature = (x, q, axis=None, device="cpu"))]
pub fn quantile<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    q: Vec<f64>,
    axis: Option<&Obj<'py>>,
    #[pyo3(from_py_with = device_arg::<{ Op::Quantile as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    let axis = axis_arg(Op::Quantile, device, axis)?;
    boundary(Op::Quantile, device, || {
        let (a, fin) = take_one(py, Op::Quantile, x, Kind::Float)?;
        let r = each_float!(a, T, a => red(py, Op::Quantile, &a, |v| stats::quantile::<T>(&v, &q, axis))?);
        finish(r, &fin)
    })
}

/// Counts for the histogram: `edges` come from NumPy (`_coerce`), `uniform` tells whether they are equal-width.
#[pyfunction]
#[pyo3(signature = (x, edges, uniform))]
pub fn histogram_counts<'py>(
    py: Python<'py>,
    x: &Obj<'py>,
    edges: &Obj<'py>,
    uniform: bool,
) -> PyResult<Obj<'py>> {
    boundary(Op::Histogram, "cpu", || {
        let (a, e, _) = take_two(py, Op::Histogram, ["x", "bins"], x, edges, Kind::Float)?;
        let counts = each_float!(a, T, a => {
            let e = <T as NativePy>::unwrap(e);
            let (v, ev) = (a.as_array(), e.as_array());
            let what = "copy of the bin edges";
            let edges: Vec<T> = alloc::collect("histogram", what, ev.shape(), ev.iter().copied()).py()?;
            let bins = stats::Bins { edges: &edges, uniform };
            let meta = Meta::two::<T>(a.0.shape(), e.0.shape());
            run(py, Op::Histogram, v.len(), meta, move || stats::histogram_counts::<T>(&v, &bins))?
        });
        Ok(numpy::PyArray1::from_vec(py, counts).into_any())
    })
}

/// `(min, max)` of x as NumPy scalars of x's dtype (for the automatic histogram range).
///
/// A helper pass of `fl.ops.histogram`, not an op of its own: it is not counted (the histogram call is, once,
/// by `histogram_counts` or, when this pass fails, by the Python wrapper).
#[pyfunction]
pub fn minmax<'py>(py: Python<'py>, x: &Obj<'py>) -> PyResult<(Obj<'py>, Obj<'py>)> {
    let (a, _) = take_one(py, Op::Histogram, x, Kind::Float)?;
    each_float!(a, T, a => {
        let v = a.as_array();
        let (lo, hi) = run_helper(py, Op::Histogram, v.len(), move || stats::finite_range::<T>(&v))?;
        Ok((<T as ToNumpy>::scalar(py, lo)?, <T as ToNumpy>::scalar(py, hi)?))
    })
}

/// Test hook, not API: panics inside the GIL funnel as op `sum` (on a pool thread when `parallel`), so that the
/// tests can check that a panic in a kernel becomes `ferrolab.InternalError`, counted as a failed call.
#[pyfunction]
#[pyo3(signature = (message, parallel=false))]
pub fn _panic_in_kernel(py: Python<'_>, message: String, parallel: bool) -> PyResult<()> {
    boundary(Op::Sum, "cpu", || {
        run(py, Op::Sum, 0, Meta::one::<f64>(&[]), move || {
            ferrolab_core::kernels::dispatch::panic_for_tests(&message, parallel);
            Ok(())
        })
    })
}

// ----------------------------------------------------------------------------------------------------------
// linear algebra, distances, optimizer

/// A 2-D view (read-only or mutable) of argument `name` of `func`.
fn two_d<S: RawData>(
    func: &'static str,
    name: &'static str,
    v: ArrayBase<S, IxDyn>,
) -> PyResult<ArrayBase<S, Ix2>> {
    let nd = v.ndim();
    v.into_dimensionality::<Ix2>()
        .map_err(|_| arg_value(func, name, format!("must be 2-D, got {nd} dimensions")))
}

/// Matrix product of two 2-D arrays, like ``a @ b``.
///
/// float32/float64 products run on the BLAS NumPy itself links when one was found (the same kernels and threads
/// as ``a @ b``), else, and for strides a BLAS cannot take, on the ``gemm`` crate's multi-threaded kernels. Any
/// strides or memory order are used without copying; ``out`` may be Fortran-ordered.
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> fl.ops.matmul(np.eye(2), np.array([[1.0, 2.0], [3.0, 4.0]]))
/// array([[1., 2.],
///        [3., 4.]])
#[pyfunction]
#[pyo3(signature = (a, b, out=None, *, device="cpu"))]
pub fn matmul<'py>(
    py: Python<'py>,
    a: &Obj<'py>,
    b: &Obj<'py>,
    out: Option<&Obj<'py>>,
    #[pyo3(from_py_with = device_arg::<{ Op::Matmul as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    boundary(Op::Matmul, device, || matmul_into(py, a, b, opt_out(out)))
}

fn matmul_into<'py>(
    py: Python<'py>,
    a: &Obj<'py>,
    b: &Obj<'py>,
    out: Option<&Obj<'py>>,
) -> PyResult<Obj<'py>> {
    if let Some(o) = out.filter(|o| alias(o, a) != Alias::None || alias(o, b) != Alias::None) {
        let r = matmul_into(py, a, b, None)?;
        return copy_into(py, "matmul", o, &r);
    }
    let (x, y, fin) = take_two(py, Op::Matmul, ["a", "b"], a, b, Kind::Same)?;
    let direct_out = out.filter(|_| fin.is_none());
    let r = match x {
        In::F64(x) => gemm::<f64>(py, x, f64::unwrap(y), direct_out)?,
        In::F32(x) => gemm::<f32>(py, x, f32::unwrap(y), direct_out)?,
        In::I64(x) => {
            let y = i64::unwrap(y);
            let (va, vb) = (
                two_d("matmul", "a", x.as_array())?,
                two_d("matmul", "b", y.as_array())?,
            );
            let (work, meta) = (
                va.len().saturating_mul(vb.ncols()),
                Meta::two::<i64>(x.0.shape(), y.0.shape()),
            );
            let r = run(py, Op::Matmul, work, meta, move || int::matmul(&va, &vb))?;
            to_py(py, r.into_dyn())?
        }
    };
    let r = finish(r, &fin)?;
    match out {
        Some(o) if !r.is(o) => copy_into(py, "matmul", o, &r),
        _ => Ok(r),
    }
}

/// Float GEMM into `out` when it has dtype `T`, else into a fresh array (the caller copies it into `out`).
fn gemm<'py, T: linalg::GemmElem + NativePy>(
    py: Python<'py>,
    x: Ro<'py, T>,
    y: Ro<'py, T>,
    out: Option<&Obj<'py>>,
) -> PyResult<Obj<'py>> {
    let (va, vb) = (
        two_d("matmul", "a", x.as_array())?,
        two_d("matmul", "b", y.as_array())?,
    );
    let work = va.len().saturating_mul(vb.ncols());
    let o = match out.filter(|o| native_typed::<T>(o).is_some()) {
        Some(o) => o.clone(),
        // a fresh result (no zero-fill, huge pages, recycled when large; [`new_array`]): gemm writes every element
        None => new_array::<T>(py, "matmul", &[va.nrows(), vb.ncols()], false)?.into_any(),
    };
    let mut rw = take_out::<T>("matmul", "out", &o)?;
    let ov = two_d("matmul", "out", rw.as_array_mut())?;
    let meta = Meta::two::<T>(x.0.shape(), y.0.shape());
    run(py, Op::Matmul, work, meta, move || {
        linalg::matmul(&va, &vb, Some(ov))
    })?;
    drop(rw);
    Ok(o)
}

/// Uses the CBLAS ``?gemm`` of the shared library at ``path`` (the BLAS NumPy links; ``ferrolab.ops`` passes it
/// at import) for ``matmul``, or, with ``None``, the built-in ``gemm`` crate kernels. Returns what is
/// in use (``None``: the built-in kernels); raises ``OSError`` when ``path`` has no usable CBLAS.
#[pyfunction]
#[pyo3(signature = (path))]
pub fn _use_blas(path: Option<::std::path::PathBuf>) -> PyResult<Option<String>> {
    match path {
        None => ferrolab_core::kernels::blas::unload(),
        Some(p) => {
            ferrolab_core::kernels::blas::load(p.as_os_str())
                .map_err(pyo3::exceptions::PyOSError::new_err)?;
        }
    }
    Ok(ferrolab_core::kernels::blas::info())
}

/// Sets the size (``m * n * k``) from which ``cdist`` uses the GEMM formulation (0: always; a huge value:
/// never) and returns the previous one. For tests.
#[pyfunction]
pub fn _cdist_gemm_min(work: usize) -> usize {
    distance::set_gemm_min(work)
}

/// Distances between every row of ``a`` and every row of ``b``, like :func:`scipy.spatial.distance.cdist`.
///
/// ``metric`` is ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``. Large problems use one matrix product
/// (``|a|^2 + |b|^2 - 2ab`` on mean-shifted rows) and recompute directly, in the same pass, every entry that
/// cancellation could spoil: equal points are exactly 0 apart, no squared distance is negative, and the other
/// entries are within a few ``k * eps`` (relative) of the exact value. Small problems and inputs with NaN or
/// infinity are computed directly per pair. ``float32`` inputs give a ``float32`` result (SciPy always returns
/// ``float64``).
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> fl.ops.cdist(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]]))
/// array([[5., 1.]])
#[pyfunction]
#[pyo3(signature = (a, b, metric="euclidean", *, device="cpu"))]
pub fn cdist<'py>(
    py: Python<'py>,
    a: &Obj<'py>,
    b: &Obj<'py>,
    #[pyo3(from_py_with = metric_arg)] metric: &str,
    #[pyo3(from_py_with = device_arg::<{ Op::Cdist as u8 }>)] device: &str,
) -> PyResult<Obj<'py>> {
    boundary(Op::Cdist, device, || {
        let m = distance::Metric::parse(metric).py()?;
        let (x, y, fin) = take_two(py, Op::Cdist, ["a", "b"], a, b, Kind::Float)?;
        let r = each_float!(x, T, x => {
            let y = <T as NativePy>::unwrap(y);
            let va = two_d("cdist", "a", x.as_array())?;
            let vb = two_d("cdist", "b", y.as_array())?;
            distance::check_shapes(&va, &vb).py()?;
            let work = va.len().saturating_mul(vb.nrows());
            let meta = Meta::two::<T>(x.0.shape(), y.0.shape());
            // a fresh result (no zero-fill, huge pages and recycled when large; [`new_array`]): every element is written
            let o = new_array::<T>(py, "cdist", &[va.nrows(), vb.nrows()], false)?.into_any();
            let mut rw = take_out::<T>("cdist", "out", &o)?;
            let mut ov = rw.as_array_mut();
            let buf = ov.as_slice_mut().expect("fresh C array");
            run(py, Op::Cdist, work, meta, move || distance::cdist_into(&va, &vb, m, buf))?;
            drop(rw);
            o
        });
        finish(r, &fin)
    })
}

/// One in-place Adam step with the arithmetic of PyTorch's ``torch.optim.Adam``.
///
/// ``param``, ``m`` and ``v`` are updated in place (they must be writeable float32/float64 arrays of one dtype
/// and shape; ``grad`` the same dtype and shape). ``t`` is the step number, from 1. With ``weight_decay``,
/// ``decoupled=False`` adds ``weight_decay * param`` to the gradient (``Adam``); ``decoupled=True`` decays
/// the parameters directly (``AdamW``).
///
/// Examples
/// --------
/// >>> import numpy as np, ferrolab as fl
/// >>> p = np.array([1.0, -1.0]); g = np.array([0.5, -0.5])
/// >>> m = np.zeros(2); v = np.zeros(2)
/// >>> fl.ops.adam_step(p, g, m, v, t=1, lr=0.1)
/// >>> p.round(6)
/// array([ 0.9, -0.9])
#[pyfunction]
#[pyo3(signature = (param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, *, decoupled=false, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn adam_step<'py>(
    py: Python<'py>,
    param: &Obj<'py>,
    grad: &Obj<'py>,
    m: &Obj<'py>,
    v: &Obj<'py>,
    #[pyo3(from_py_with = t_arg::<{ Op::AdamStep as u8 }>)] t: i64,
    #[pyo3(from_py_with = lr_arg::<{ Op::AdamStep as u8 }>)] lr: f64,
    #[pyo3(from_py_with = beta1_arg::<{ Op::AdamStep as u8 }>)] beta1: f64,
    #[pyo3(from_py_with = beta2_arg::<{ Op::AdamStep as u8 }>)] beta2: f64,
    #[pyo3(from_py_with = eps_arg::<{ Op::AdamStep as u8 }>)] eps: f64,
    #[pyo3(from_py_with = weight_decay_arg::<{ Op::AdamStep as u8 }>)] weight_decay: f64,
    #[pyo3(from_py_with = decoupled_arg::<{ Op::AdamStep as u8 }>)] decoupled: bool,
    #[pyo3(from_py_with = device_arg::<{ Op::AdamStep as u8 }>)] device: &str,
) -> PyResult<()> {
    let body = || {
        let req = match dispatch::parse("adam_step", device).py()? {
            Requested::Auto if !dispatch::auto_prefers_gpu(false, 0.0, 0.0) => Requested::Cpu,
            r => r,
        };
        let hp = optim::AdamParams::new(t, lr, beta1, beta2, eps, weight_decay, decoupled).py()?;
        if param.cast::<PyArrayDyn<f64>>().is_ok() {
            adam_t::<f64>(py, [param, grad, m, v], hp, req, device)
        } else if param.cast::<PyArrayDyn<f32>>().is_ok() {
            adam_t::<f32>(py, [param, grad, m, v], hp, req, device)
        } else {
            let what = "must be a float32 or float64 numpy.ndarray (updated in place)";
            Err(arg_type(
                "adam_step",
                "param",
                format!("{what}, got {}", dtype_or_class(param)),
            ))
        }
    };
    counted(Op::AdamStep, device, body())
}

fn adam_t<'py, T: Real + NativePy + GpuFloat>(
    py: Python<'py>,
    args: [&Obj<'py>; 4],
    hp: optim::AdamParams,
    req: Requested,
    device: &str,
) -> PyResult<()> {
    const NAMES: [&str; 4] = ["param", "grad", "m", "v"];
    let [param, grad, m, v] = args;
    // (updated in place: a masked or unaligned array cannot be computed on a copy)
    let want = |k: usize| native_arg::<T>("adam_step", NAMES[k], args[k]).cloned();
    let (pa, ga, ma, va) = (want(0)?, want(1)?, want(2)?, want(3)?);
    for (n1, a1, n2, a2) in [
        ("param", param, "m", m),
        ("param", param, "v", v),
        ("m", m, "v", v),
    ] {
        if alias(a1, a2) != Alias::None {
            return Err(value_error(format!(
                "adam_step(): arguments '{n1}' and '{n2}' must not share memory"
            )));
        }
    }
    // a gradient that overlaps a state array is copied first
    let ga = if [param, m, v].iter().any(|s| alias(s, grad) != Alias::None) {
        ga.call_method0("copy")?.cast_into::<PyArrayDyn<T>>()?
    } else {
        ga
    };
    let rw = |name, a: &Bound<'py, PyArrayDyn<T>>| take_out::<T>("adam_step", name, a.as_any());
    let (mut p, mut mm, mut vv) = (rw("param", &pa)?, rw("m", &ma)?, rw("v", &va)?);
    let g = ga.readonly();
    let shapes = || -> Vec<Vec<usize>> {
        [&pa, &ga, &ma, &va]
            .iter()
            .map(|a| a.shape().to_vec())
            .collect()
    };
    let views = (
        p.as_array_mut(),
        g.as_array(),
        mm.as_array_mut(),
        vv.as_array_mut(),
    );
    let gpu_path = gops::adam_has_gpu_path(&views);
    if req == Requested::Cpu || (req == Requested::Auto && !gpu_path) {
        let n = views.0.len();
        return run(py, Op::AdamStep, n, Meta::lazy::<T>(&shapes), move || {
            let (pv, gv, mv, vvv) = views;
            optim::adam_step(pv, gv, mv, vvv, hp)
        });
    }
    if !gpu_path {
        return Err(crate::gpu_ops::no_gpu_path(Op::AdamStep, device));
    }
    crate::funnel::run_dispatched(py, Op::AdamStep, Meta::lazy::<T>(&shapes), || {
        gops::adam_step(req, views, hp)
    })
}
