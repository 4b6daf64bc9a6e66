//! `ferrolab._core` kernels: thin wrappers that borrow arrays, pick the dtype, and call the core through the funnel.

use crate::arrays::{check_device, finish, take, take_out, to_py, In, Kind, Prepared, Ro, ToNumpy};
use crate::errors::IntoPyResult;
use crate::funnel::{counted, run, run_helper, Meta};
use ferrolab_core::kernels::elementwise::Input;
use ferrolab_core::kernels::layout::Canon;
use ferrolab_core::kernels::{
    alloc, distance, elementwise, int, linalg, optim, reduce, stats, Real,
};
use ferrolab_core::telemetry::seam::Op;
use ferrolab_core::Result as CoreResult;
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Ix2};
use numpy::{PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

/// Native element types of the type-preserving ops, mapped to their core implementations.
pub trait Native: ToNumpy + Send + Sync + Default + 'static {
    fn unwrap(a: In<'_>) -> Ro<'_, Self>;
    fn from_py(name: &'static str, func: &'static str, v: &Bound<'_, PyAny>) -> PyResult<Self>;
    fn sum(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<Self>>;
    fn min(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<Self>>;
    fn max(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<Self>>;
    fn argmin(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<i64>>;
    fn argmax(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<i64>>;
    fn dot(x: &ArrayViewD<Self>, y: &ArrayViewD<Self>) -> CoreResult<Self>;
    fn axpy<'a>(
        a: Self,
        x: Input<'a, Self>,
        y: Input<'a, Self>,
        o: Option<ArrayViewMutD<Self>>,
    ) -> CoreResult<Option<ArrayD<Self>>>;
    fn fma<'a>(
        x: Input<'a, Self>,
        y: Input<'a, Self>,
        z: Input<'a, Self>,
        o: Option<ArrayViewMutD<Self>>,
    ) -> CoreResult<Option<ArrayD<Self>>>;
    fn scale(
        x: Input<Self>,
        a: Self,
        o: Option<ArrayViewMutD<Self>>,
    ) -> CoreResult<Option<ArrayD<Self>>>;
    fn clip(
        x: Input<Self>,
        lo: Self,
        hi: Self,
        o: Option<ArrayViewMutD<Self>>,
    ) -> CoreResult<Option<ArrayD<Self>>>;
}

macro_rules! native {
    ($t:ty, $variant:ident, $scalar:ty, $what:literal, $red:ident, $ew:ident) => {
        impl Native for $t {
            fn unwrap(a: In<'_>) -> Ro<'_, Self> {
                match a {
                    In::$variant(a) => a,
                    _ => unreachable!("inputs share one dtype"),
                }
            }
            #[allow(clippy::unnecessary_cast)]
            fn from_py(
                name: &'static str,
                func: &'static str,
                v: &Bound<'_, PyAny>,
            ) -> PyResult<Self> {
                v.extract::<$scalar>().map(|x| x as $t).map_err(|_| {
                    PyTypeError::new_err(format!(
                        "{func}(): argument '{name}' must be {}, got {}",
                        $what,
                        type_name(v)
                    ))
                })
            }
            fn sum(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<Self>> {
                $red::sum(x, axis)
            }
            fn min(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<Self>> {
                $red::min(x, axis)
            }
            fn max(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<Self>> {
                $red::max(x, axis)
            }
            fn argmin(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<i64>> {
                $red::argmin(x, axis)
            }
            fn argmax(x: &ArrayViewD<Self>, axis: Option<isize>) -> CoreResult<ArrayD<i64>> {
                $red::argmax(x, axis)
            }
            fn dot(x: &ArrayViewD<Self>, y: &ArrayViewD<Self>) -> CoreResult<Self> {
                $red::dot(x, y)
            }
            fn axpy<'a>(
                a: Self,
                x: Input<'a, Self>,
                y: Input<'a, Self>,
                o: Option<ArrayViewMutD<Self>>,
            ) -> CoreResult<Option<ArrayD<Self>>> {
                $ew::axpy(a, x, y, o)
            }
            fn fma<'a>(
                x: Input<'a, Self>,
                y: Input<'a, Self>,
                z: Input<'a, Self>,
                o: Option<ArrayViewMutD<Self>>,
            ) -> CoreResult<Option<ArrayD<Self>>> {
                $ew::fma(x, y, z, o)
            }
            fn scale(
                x: Input<Self>,
                a: Self,
                o: Option<ArrayViewMutD<Self>>,
            ) -> CoreResult<Option<ArrayD<Self>>> {
                $ew::scale(x, a, o)
            }
            fn clip(
                x: Input<Self>,
                lo: Self,
                hi: Self,
                o: Option<ArrayViewMutD<Self>>,
            ) -> CoreResult<Option<ArrayD<Self>>> {
                $ew::clip(x, lo, hi, o)
            }
        }
    };
}
native!(f64, F64, f64, "a real number", reduce, elementwise);
native!(f32, F32, f64, "a real number", reduce, elementwise);
native!(i64, I64, i64, "an integer here", int, int);

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn one<'py>(p: Prepared<'py>) -> (In<'py>, Option<Bound<'py, PyAny>>) {
    let mut a = p.arrays;
    (a.remove(0), p.finish)
}

/// Borrows a view, runs `f` through the funnel and converts the result.
fn red<'py, T: numpy::Element + Sync, U: ToNumpy>(
    py: Python<'py>,
    op: Op,
    a: &Ro<'py, T>,
    f: impl FnOnce(ArrayViewD<'_, T>) -> CoreResult<ArrayD<U>> + Send,
) -> PyResult<Bound<'py, PyAny>> {
    let v = a.as_array();
    let r = run(py, op, v.len(), Meta::one::<T>(a.0.shape()), || f(v))?;
    to_py(py, r)
}

/// Fast path for `axis=None` on a non-empty contiguous float64/float32 array: no n-d view is built.
/// `c_only` requires C order (for ops whose result depends on the flattening order).
fn flat_run<'py, T: numpy::Element + Clone + Sync, U: ToNumpy>(
    py: Python<'py>,
    op: Op,
    x: &Bound<'py, PyAny>,
    c_only: bool,
    min_len: f64,
    f: impl FnOnce(Canon<'_, T>) -> CoreResult<ArrayD<U>> + Send,
) -> Option<PyResult<Bound<'py, PyAny>>> {
    let a = x.cast::<PyArrayDyn<T>>().ok()?;
    if !(if c_only {
        a.is_c_contiguous()
    } else {
        a.is_contiguous()
    }) {
        return None;
    }
    // SAFETY: contiguous (checked); read-only use while the array is alive (see `Ro`).
    let s: &[T] = unsafe { a.as_slice() }.ok()?;
    // degenerate inputs (empty, or no degrees of freedom left) take the general path, which warns like NumPy
    if s.is_empty() || (s.len() as f64) <= min_len {
        return None;
    }
    Some(
        run(py, op, s.len(), Meta::one::<T>(a.shape()), move || {
            f(Canon::flat(s))
        })
        .and_then(|r| to_py(py, r)),
    )
}

/// Tries [`flat_run`] for float64 then float32.
macro_rules! flat_fast {
    ($py:expr, $x:expr, $axis:expr, $op:expr, $c_only:expr, $min_len:expr; $f:path $(, $extra:expr)*) => {
        if $axis.is_none() {
            if let Some(r) = flat_run::<f64, _>($py, $op, $x, $c_only, $min_len, |c| $f(c $(, $extra)*)) {
                return r;
            }
            if let Some(r) = flat_run::<f32, _>($py, $op, $x, $c_only, $min_len, |c| $f(c $(, $extra)*)) {
                return r;
            }
        }
    };
}

/// One arm per native dtype; `$T` names the element type inside `$body`.
macro_rules! each_dtype {
    ($a:expr, $T:ident, $arr:ident => $body:expr) => {
        match $a {
            In::F64($arr) => {
                type $T = f64;
                $body
            }
            In::F32($arr) => {
                type $T = f32;
                $body
            }
            In::I64($arr) => {
                type $T = i64;
                $body
            }
        }
    };
}

/// Same for the float-only ops (their `Kind::Float` inputs are never int64).
macro_rules! each_float {
    ($a:expr, $T:ident, $arr:ident => $body:expr) => {
        match $a {
            In::F64($arr) => {
                type $T = f64;
                $body
            }
            In::F32($arr) => {
                type $T = f32;
                $body
            }
            In::I64(_) => unreachable!("float ops convert integers first"),
        }
    };
}

macro_rules! preserving_reduction {
    ($(#[$m:meta])* $name:ident, $op:expr, $kind:expr, $method:ident, $flat:path, $c_only:expr) => {
        $(#[$m])*
        #[pyfunction]
        #[pyo3(signature = (x, axis=None, device="cpu"))]
        pub fn $name<'py>(
            py: Python<'py>,
            x: &Bound<'py, PyAny>,
            axis: Option<isize>,
            device: &str,
        ) -> PyResult<Bound<'py, PyAny>> {
            counted($op, device, (|| -> PyResult<Bound<'py, PyAny>> {
            check_device(stringify!($name), device)?;
            flat_fast!(py, x, axis, $op, $c_only, 0.0; $flat);
            let (a, fin) = one(take(py, stringify!($name), &["x"], &[x], $kind)?);
            let r = each_dtype!(a, T, a => red(py, $op, &a, |v| <T as Native>::$method(&v, axis)))?;
            finish(r, &fin)
                    })())
        }
    };
}

preserving_reduction!(sum, Op::Sum, Kind::Sum, sum, reduce::sum_c, false);
preserving_reduction!(min, Op::Min, Kind::Same, min, reduce::min_c, false);
preserving_reduction!(max, Op::Max, Kind::Same, max, reduce::max_c, false);
preserving_reduction!(
    argmin,
    Op::Argmin,
    Kind::Index,
    argmin,
    reduce::argmin_c,
    true
);
preserving_reduction!(
    argmax,
    Op::Argmax,
    Kind::Index,
    argmax,
    reduce::argmax_c,
    true
);

#[pyfunction]
#[pyo3(signature = (x, axis=None, device="cpu"))]
pub fn mean<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Option<isize>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Mean,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("mean", device)?;
            flat_fast!(py, x, axis, Op::Mean, false, 0.0; reduce::mean_c);
            let (a, fin) = one(take(py, "mean", &["x"], &[x], Kind::Float)?);
            warn_if(py, reduced_len(&a, axis) == Some(0), c"Mean of empty slice")?;
            let r = each_float!(a, T, a => red(py, Op::Mean, &a, |v| reduce::mean::<T>(&v, axis)))?;
            finish(r, &fin)
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, axis=None, device="cpu"))]
pub fn norm<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Option<isize>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Norm,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("norm", device)?;
            flat_fast!(py, x, axis, Op::Norm, false, 0.0; reduce::norm_c);
            let (a, fin) = one(take(py, "norm", &["x"], &[x], Kind::Float)?);
            let r = each_float!(a, T, a => red(py, Op::Norm, &a, |v| reduce::norm::<T>(&v, axis)))?;
            finish(r, &fin)
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, axis=None, ddof=0.0, device="cpu"))]
pub fn var<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Option<isize>,
    ddof: f64,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Var,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("var", device)?;
            flat_fast!(py, x, axis, Op::Var, false, ddof; stats::var_c, ddof);
            let (a, fin) = one(take(py, "var", &["x"], &[x], Kind::Float)?);
            warn_if(
                py,
                reduced_len(&a, axis).is_some_and(|n| n as f64 - ddof <= 0.0),
                c"Degrees of freedom <= 0 for slice",
            )?;
            let r =
                each_float!(a, T, a => red(py, Op::Var, &a, |v| stats::var::<T>(&v, axis, ddof)))?;
            finish(r, &fin)
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, axis=None, ddof=0.0, device="cpu"))]
pub fn std<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Option<isize>,
    ddof: f64,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Std,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("std", device)?;
            flat_fast!(py, x, axis, Op::Std, false, ddof; stats::std_c, ddof);
            let (a, fin) = one(take(py, "std", &["x"], &[x], Kind::Float)?);
            warn_if(
                py,
                reduced_len(&a, axis).is_some_and(|n| n as f64 - ddof <= 0.0),
                c"Degrees of freedom <= 0 for slice",
            )?;
            let r =
                each_float!(a, T, a => red(py, Op::Std, &a, |v| stats::std::<T>(&v, axis, ddof)))?;
            finish(r, &fin)
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, y, device="cpu"))]
pub fn dot<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Dot,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("dot", device)?;
            let p = take(py, "dot", &["x", "y"], &[x, y], Kind::Same)?;
            let fin = p.finish;
            let mut it = p.arrays.into_iter();
            let (a, b) = (it.next().expect("x"), it.next().expect("y"));
            let r = each_dtype!(a, T, a => {
                let b = <T as Native>::unwrap(b);
                let (va, vb) = (a.as_array(), b.as_array());
                let meta = Meta::two::<T>(a.0.shape(), b.0.shape());
                let v = run(py, Op::Dot, va.len(), meta, || <T as Native>::dot(&va, &vb))?;
                <T as ToNumpy>::scalar(py, v)
            })?;
            finish(r, &fin)
        })(),
    )
}

// ----------------------------------------------------------------------------------------------------------
// elementwise with out=

/// Byte range `[lo, hi)` that an array's elements occupy.
fn extent(a: &Bound<'_, PyAny>) -> Option<(usize, usize, Vec<isize>, Vec<usize>)> {
    let u = a.cast::<numpy::PyUntypedArray>().ok()?;
    // SAFETY: reading the data pointer of a live array object.
    let ptr = unsafe { (*u.as_array_ptr()).fields.data } as isize;
    let item = u.dtype().itemsize() as isize;
    let shape = u.shape().to_vec();
    let strides = u.strides().to_vec();
    if shape.contains(&0) {
        return Some((ptr as usize, ptr as usize, strides, shape));
    }
    let (mut lo, mut hi) = (ptr, ptr + item);
    for (&d, &s) in shape.iter().zip(&strides) {
        let span = (d as isize - 1) * s;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    Some((lo as usize, hi as usize, strides, shape))
}

enum Alias {
    None,
    Same,
    Partial,
}

fn alias(out: &Bound<'_, PyAny>, x: &Bound<'_, PyAny>) -> Alias {
    match (extent(out), extent(x)) {
        (Some(o), Some(v)) => {
            if o.0 == v.0 && o.2 == v.2 && o.3 == v.3 && o.0 != o.1 {
                Alias::Same
            } else if o.0 < v.1 && v.0 < o.1 {
                Alias::Partial
            } else {
                Alias::None
            }
        }
        _ => Alias::None,
    }
}

/// Shared driver of axpy/fma/scale/clip: `arrays` are the array operands (named), `scalars` the scalar ones
/// (they take part in NumPy's result-type rules); `call` runs the core op for the chosen dtype.
/// Runs the core op for the prepared inputs: `(py, arrays, same_as_out, out, scalars) -> new array or None`;
/// `scalars` are the scalar operands in the order given, as converted for the computation (see
/// `_coerce.prepare_elementwise`: e.g. `clip`'s bounds on uint64 data), `None` where absent.
type EwCall<'a, 'py> = &'a dyn Fn(
    Python<'py>,
    Vec<In<'py>>,
    Vec<bool>,
    Option<&Bound<'py, PyAny>>,
    &[&Bound<'py, PyAny>],
) -> PyResult<Option<Bound<'py, PyAny>>>;

fn elementwise_op<'py>(
    py: Python<'py>,
    func: &'static str,
    names: &[&'static str],
    arrays: &[&Bound<'py, PyAny>],
    scalars: &[(&'static str, &Bound<'py, PyAny>)],
    out: Option<&Bound<'py, PyAny>>,
    call: EwCall<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    // fast path: arrays of one native dtype and plain Python scalars (weak under NEP 50) that do not change it;
    // anything else (NumPy scalars are strong, integer arrays with a float scalar promote) goes through
    // NumPy's result-type rules in `_coerce.prepare`
    let all_f64 = arrays.iter().all(|a| a.cast::<PyArrayDyn<f64>>().is_ok());
    let all_f32 = arrays.iter().all(|a| a.cast::<PyArrayDyn<f32>>().is_ok());
    let all_i64 = arrays.iter().all(|a| a.cast::<PyArrayDyn<i64>>().is_ok());
    let plain_int = |s: &Bound<'py, PyAny>| s.is_exact_instance_of::<PyInt>();
    let plain_num = |s: &Bound<'py, PyAny>| s.is_exact_instance_of::<PyFloat>() || plain_int(s);
    // (an int beyond int64 takes NumPy's rules: out-of-range clip bounds are ignored or raise OverflowError)
    let fast = ((all_f64 || all_f32) && scalars.iter().all(|(_, s)| s.is_none() || plain_num(s)))
        || (all_i64
            && scalars
                .iter()
                .all(|(_, s)| s.is_none() || (plain_int(s) && s.extract::<i64>().is_ok())));
    let kind = Kind::Same;
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
    // (at most two: clip's bounds; a stack array, no allocation on the fast path)
    debug_assert!(scalars.len() <= 2);
    let mut converted: Vec<Bound<'py, PyAny>> = Vec::new();
    let prepared = if fast {
        take(py, func, names, arrays, kind)?
    } else {
        let prepare = py
            .import("ferrolab._coerce")?
            .getattr("prepare_elementwise")?;
        let sc: Vec<&Bound<'py, PyAny>> = scalars.iter().map(|(_, s)| *s).collect();
        let sn: Vec<&str> = scalars.iter().map(|(n, _)| *n).collect();
        let res = prepare.call1((func, names.to_vec(), arrays.to_vec(), sc, sn))?;
        #[allow(clippy::type_complexity)]
        let (arrs, fin, sc): (
            Vec<Bound<'py, PyAny>>,
            Bound<'py, PyAny>,
            Vec<Bound<'py, PyAny>>,
        ) = res.extract()?;
        let refs: Vec<&Bound<'py, PyAny>> = arrs.iter().collect();
        let mut p = take(py, func, names, &refs, kind)?;
        p.finish = if fin.is_none() { None } else { Some(fin) };
        // converted copies never alias out
        same.iter_mut().for_each(|s| *s = false);
        converted = sc;
        p
    };
    let none = py.None().into_bound(py);
    let pick = |k: usize| -> &Bound<'py, PyAny> {
        if fast {
            scalars.get(k).map_or(&none, |s| s.1)
        } else {
            converted.get(k).unwrap_or(&none)
        }
    };
    let sc_buf = [pick(0), pick(1)];
    let sc = &sc_buf[..scalars.len().min(2)];
    let fin = prepared.finish.clone();
    let out_dtype_ok = |o: &Bound<'py, PyAny>| -> bool {
        match &prepared.arrays[0] {
            In::F64(_) => o.cast::<PyArrayDyn<f64>>().is_ok(),
            In::F32(_) => o.cast::<PyArrayDyn<f32>>().is_ok(),
            In::I64(_) => o.cast::<PyArrayDyn<i64>>().is_ok(),
        }
    };
    match out {
        Some(o) if fin.is_some() || overlap || !out_dtype_ok(o) => {
            // compute into a fresh array, then copy into out with NumPy's same-kind casting
            if fin.is_none() && !overlap && o.cast::<numpy::PyUntypedArray>().is_ok() {
                let want = match &prepared.arrays[0] {
                    In::F64(_) => "float64",
                    In::F32(_) => "float32",
                    In::I64(_) => "int64",
                };
                let got = o.getattr("dtype")?.to_string();
                if !(want == "float32" && got == "float64") {
                    return Err(PyTypeError::new_err(format!(
                        "{func}(): argument 'out' has dtype {got}; expected {want}"
                    )));
                }
            }
            let r = call(py, prepared.arrays, vec![false; arrays.len()], None, sc)?
                .expect("fresh result");
            let r = finish(r, &fin)?;
            let np = py.import("numpy")?;
            let kw = pyo3::types::PyDict::new(py);
            kw.set_item("casting", "same_kind")?;
            np.getattr("copyto")?
                .call((o, &r), Some(&kw))
                .map_err(|e| {
                    PyValueError::new_err(format!(
                        "{func}(): argument 'out' cannot hold the result: {e}"
                    ))
                })?;
            Ok(o.clone())
        }
        Some(o) => {
            let mut arrs = prepared.arrays;
            // release the borrows of inputs that are out itself before borrowing out for writing
            for (k, s) in same.iter().enumerate() {
                if *s {
                    arrs[k] = match &arrs[k] {
                        In::F64(_) => In::F64(Ro(PyArrayDyn::<f64>::zeros(
                            py,
                            ndarray::IxDyn(&[0]),
                            false,
                        ))),
                        In::F32(_) => In::F32(Ro(PyArrayDyn::<f32>::zeros(
                            py,
                            ndarray::IxDyn(&[0]),
                            false,
                        ))),
                        In::I64(_) => In::I64(Ro(PyArrayDyn::<i64>::zeros(
                            py,
                            ndarray::IxDyn(&[0]),
                            false,
                        ))),
                    };
                }
            }
            call(py, arrs, same, Some(o), sc)?;
            Ok(o.clone())
        }
        None => {
            let r = call(py, prepared.arrays, same, None, sc)?.expect("fresh result");
            finish(r, &fin)
        }
    }
}

/// Runs a core elementwise op for element type `T` with `Input`s built from `arrs`/`same` and an optional out.
fn ew_run<'py, T: Native + numpy::Element>(
    py: Python<'py>,
    func: &'static str,
    op: Op,
    arrs: Vec<In<'py>>,
    same: Vec<bool>,
    out: Option<&Bound<'py, PyAny>>,
    f: impl for<'a> FnOnce(
            Vec<Input<'a, T>>,
            Option<ArrayViewMutD<'a, T>>,
        ) -> CoreResult<Option<ArrayD<T>>>
        + Send,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let ro: Vec<Ro<'py, T>> = arrs.into_iter().map(T::unwrap).collect();
    // a fresh result is allocated by NumPy (its allocator asks for huge pages and skips zero-filling), in
    // Fortran order when every input is Fortran-contiguous, and then filled in place like an `out=`
    let fresh = match out {
        Some(_) => None,
        None => {
            let shapes: Vec<(&'static str, Vec<usize>)> =
                ro.iter().map(|a| ("x", a.0.shape().to_vec())).collect();
            let refs: Vec<(&'static str, &[usize])> =
                shapes.iter().map(|(n, s)| (*n, s.as_slice())).collect();
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
    let out_any = fresh.as_ref().map(|a| a.as_any()).or(out);
    let mut rw = match out_any {
        Some(o) => Some(take_out::<T>(func, o)?),
        None => None,
    };
    let work = ro.iter().map(|a| a.as_array().len()).max().unwrap_or(0);
    let inputs: Vec<Input<'_, T>> = ro
        .iter()
        .zip(&same)
        .map(|(a, &s)| {
            if s {
                Input::SameAsOut
            } else {
                Input::View(a.as_array())
            }
        })
        .collect();
    let ov = rw.as_mut().map(|w| w.as_array_mut());
    let shapes = || -> Vec<Vec<usize>> {
        let out_shape = out_any
            .and_then(|o| o.cast::<numpy::PyUntypedArray>().ok())
            .map(|u| u.shape().to_vec());
        ro.iter()
            .zip(&same)
            .map(|(a, &s)| match (&out_shape, s) {
                (Some(o), true) => o.clone(),
                _ => a.0.shape().to_vec(),
            })
            .collect()
    };
    let r = run(py, op, work, Meta::lazy::<T>(&shapes), move || {
        f(inputs, ov)
    })?;
    drop(rw);
    if let Some(a) = fresh {
        // 0-d results are NumPy scalars, as NumPy returns them
        return Ok(Some(if a.ndim() == 0 {
            a.into_any().get_item(pyo3::types::PyTuple::empty(py))?
        } else {
            a.into_any()
        }));
    }
    Ok(match r {
        Some(a) => Some(to_py(py, a)?),
        None => None,
    })
}

fn opt_out<'a, 'py>(out: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    out.filter(|o| !o.is_none())
}

#[pyfunction]
#[pyo3(signature = (a, x, y, out=None, device="cpu"))]
pub fn axpy<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Axpy,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("axpy", device)?;
            let call = |py: Python<'py>,
                        arrs: Vec<In<'py>>,
                        same: Vec<bool>,
                        out: Option<&Bound<'py, PyAny>>,
                        sc: &[&Bound<'py, PyAny>]| {
                each_dtype!(&arrs[0], T, _unused => {
                    let av = <T as Native>::from_py("a", "axpy", sc[0])?;
                    ew_run::<T>(py, "axpy", Op::Axpy, arrs, same, out, move |mut v, o| {
                        let y = v.pop().expect("y");
                        let x = v.pop().expect("x");
                        <T as Native>::axpy(av, x, y, o)
                    })
                })
            };
            elementwise_op(
                py,
                "axpy",
                &["x", "y"],
                &[x, y],
                &[("a", a)],
                opt_out(out),
                &call,
            )
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, y, z, out=None, device="cpu"))]
pub fn fma<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    z: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Fma,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("fma", device)?;
            let call = |py: Python<'py>,
                        arrs: Vec<In<'py>>,
                        same: Vec<bool>,
                        out: Option<&Bound<'py, PyAny>>,
                        _sc: &[&Bound<'py, PyAny>]| {
                each_dtype!(&arrs[0], T, _unused => {
                    ew_run::<T>(py, "fma", Op::Fma, arrs, same, out, move |mut v, o| {
                        let z = v.pop().expect("z");
                        let y = v.pop().expect("y");
                        let x = v.pop().expect("x");
                        <T as Native>::fma(x, y, z, o)
                    })
                })
            };
            elementwise_op(
                py,
                "fma",
                &["x", "y", "z"],
                &[x, y, z],
                &[],
                opt_out(out),
                &call,
            )
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, a, out=None, device="cpu"))]
pub fn scale<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    a: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Scale,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("scale", device)?;
            let call = |py: Python<'py>,
                        arrs: Vec<In<'py>>,
                        same: Vec<bool>,
                        out: Option<&Bound<'py, PyAny>>,
                        sc: &[&Bound<'py, PyAny>]| {
                each_dtype!(&arrs[0], T, _unused => {
                    let av = <T as Native>::from_py("a", "scale", sc[0])?;
                    ew_run::<T>(py, "scale", Op::Scale, arrs, same, out, move |mut v, o| {
                        <T as Native>::scale(v.pop().expect("x"), av, o)
                    })
                })
            };
            elementwise_op(py, "scale", &["x"], &[x], &[("a", a)], opt_out(out), &call)
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, lo, hi, out=None, device="cpu"))]
pub fn clip<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    lo: &Bound<'py, PyAny>,
    hi: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Clip,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("clip", device)?;
            if lo.is_none() && hi.is_none() {
                return Err(PyValueError::new_err(
                    "clip(): arguments 'lo' and 'hi' cannot both be None",
                ));
            }
            let call = |py: Python<'py>,
                        arrs: Vec<In<'py>>,
                        same: Vec<bool>,
                        out: Option<&Bound<'py, PyAny>>,
                        sc: &[&Bound<'py, PyAny>]| {
                let (lo, hi) = (sc[0], sc[1]);
                each_dtype!(&arrs[0], T, _unused => {
                    let l = if lo.is_none() { None } else { Some(<T as Native>::from_py("lo", "clip", lo)?) };
                    let h = if hi.is_none() { None } else { Some(<T as Native>::from_py("hi", "clip", hi)?) };
                    ew_run::<T>(py, "clip", Op::Clip, arrs, same, out, move |mut v, o| {
                        let x = v.pop().expect("x");
                        clip_bounds::<T>(x, l, h, o)
                    })
                })
            };
            elementwise_op(
                py,
                "clip",
                &["x"],
                &[x],
                &[("lo", lo), ("hi", hi)],
                opt_out(out),
                &call,
            )
        })(),
    )
}

/// Missing bounds are the type's extremes.
trait Bounds: Native {
    const LOWEST: Self;
    const HIGHEST: Self;
}
impl Bounds for f64 {
    const LOWEST: Self = f64::NEG_INFINITY;
    const HIGHEST: Self = f64::INFINITY;
}
impl Bounds for f32 {
    const LOWEST: Self = f32::NEG_INFINITY;
    const HIGHEST: Self = f32::INFINITY;
}
impl Bounds for i64 {
    const LOWEST: Self = i64::MIN;
    const HIGHEST: Self = i64::MAX;
}
fn clip_bounds<T: Bounds>(
    x: Input<'_, T>,
    lo: Option<T>,
    hi: Option<T>,
    o: Option<ArrayViewMutD<'_, T>>,
) -> CoreResult<Option<ArrayD<T>>> {
    T::clip(x, lo.unwrap_or(T::LOWEST), hi.unwrap_or(T::HIGHEST), o)
}

// ----------------------------------------------------------------------------------------------------------
// statistics

#[pyfunction]
#[pyo3(signature = (x, axis=None, ddof=0.0, out=None, device="cpu"))]
pub fn standardize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Option<isize>,
    ddof: f64,
    out: Option<&Bound<'py, PyAny>>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Standardize,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("standardize", device)?;
            let out = opt_out(out);
            if let Some(o) = out {
                if !matches!(alias(o, x), Alias::None) {
                    // out overlaps x: compute fresh, then copy
                    let r = standardize(py, x, axis, ddof, None, device)?;
                    copy_into(py, "standardize", o, &r)?;
                    return Ok(o.clone());
                }
            }
            let (a, fin) = one(take(py, "standardize", &["x"], &[x], Kind::Float)?);
            warn_if(
                py,
                reduced_len(&a, axis).is_some_and(|n| n as f64 - ddof <= 0.0),
                c"Degrees of freedom <= 0 for slice",
            )?;
            if let (Some(o), Some(_)) = (out, &fin) {
                let r = standardize(py, x, axis, ddof, None, device)?;
                copy_into(py, "standardize", o, &r)?;
                return Ok(o.clone());
            }
            let r = each_float!(a, T, a => {
                let v = a.as_array();
                let fresh = match out {
                    Some(_) => None,
                    None => {
                        let fortran = a.0.ndim() > 1 && a.0.is_fortran_contiguous() && !a.0.is_c_contiguous();
                        Some(new_array::<T>(py, "standardize", a.0.shape(), fortran)?)
                    }
                };
                let out = fresh.as_ref().map(|f| f.as_any()).or(out);
                let mut rw = match out {
                    Some(o) => Some(take_out::<T>("standardize", o)?),
                    None => None,
                };
                let ov = rw.as_mut().map(|w| w.as_array_mut());
                let meta = Meta::one::<T>(a.0.shape());
                match run(py, Op::Standardize, v.len(), meta, move || stats::standardize::<T>(&v, axis, ddof, ov))? {
                    Some(r) => to_py(py, r)?,
                    None if fresh.as_ref().is_some_and(|f| f.ndim() == 0) => {
                        out.expect("out").get_item(pyo3::types::PyTuple::empty(py))?
                    }
                    None => out.expect("out").clone(),
                }
            });
            finish(r, &fin)
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, threshold=3.0, device="cpu"))]
pub fn zscore_anomalies<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    threshold: f64,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::ZscoreAnomalies,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("zscore_anomalies", device)?;
            let (a, _fin) = one(take(py, "zscore_anomalies", &["x"], &[x], Kind::Float)?);
            let idx = each_float!(a, T, a => {
                let v = a.as_array();
                let meta = Meta::one::<T>(a.0.shape());
                run(py, Op::ZscoreAnomalies, v.len(), meta, move || stats::zscore_anomalies::<T>(&v, threshold))?
            });
            Ok(numpy::PyArray1::from_vec(py, idx).into_any())
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (x, q, axis=None, device="cpu"))]
pub fn quantile<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    q: Vec<f64>,
    axis: Option<isize>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Quantile,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("quantile", device)?;
            let (a, fin) = one(take(py, "quantile", &["x"], &[x], Kind::Float)?);
            let r = each_float!(a, T, a => {
                let v = a.as_array();
                let meta = Meta::one::<T>(a.0.shape());
                let r = run(py, Op::Quantile, v.len(), meta, move || stats::quantile::<T>(&v, &q, axis))?;
                to_py(py, r)?
            });
            finish(r, &fin)
        })(),
    )
}

/// Counts for the histogram: `edges` come from NumPy (`_coerce`), `uniform` tells whether they are equal-width.
#[pyfunction]
#[pyo3(signature = (x, edges, uniform))]
pub fn histogram_counts<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    edges: &Bound<'py, PyAny>,
    uniform: bool,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Histogram,
        "cpu",
        (|| -> PyResult<Bound<'py, PyAny>> {
            let p = take(py, "histogram", &["x", "bins"], &[x, edges], Kind::Float)?;
            let mut it = p.arrays.into_iter();
            let (a, e) = (it.next().expect("x"), it.next().expect("edges"));
            let counts = each_float!(a, T, a => {
                let e = <T as Native>::unwrap(e);
                let (v, ev) = (a.as_array(), e.as_array());
                let edges: Vec<T> = alloc::collect("histogram", "copy of the bin edges", ev.shape(), ev.iter().copied()).py()?;
                run(py, Op::Histogram, v.len(), Meta::two::<T>(a.0.shape(), e.0.shape()), move || {
                    stats::histogram_counts::<T>(&v, &stats::Bins { edges: &edges, uniform })
                })?
            });
            Ok(numpy::PyArray1::from_vec(py, counts).into_any())
        })(),
    )
}

/// `(min, max)` of x as NumPy scalars of x's dtype (for the automatic histogram range).
///
/// A helper pass of `fl.ops.histogram`, not an op of its own: it is not counted (the histogram call is, once,
/// by `histogram_counts` or, when this pass fails, by the Python wrapper).
#[pyfunction]
pub fn minmax<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (a, _) = one(take(py, "histogram", &["x"], &[x], Kind::Float)?);
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
    let meta = Meta::one::<f64>(&[]);
    counted(
        Op::Sum,
        "cpu",
        run(py, Op::Sum, 0, meta, move || {
            ferrolab_core::kernels::dispatch::panic_for_tests(&message, parallel);
            Ok(())
        }),
    )
}

// ----------------------------------------------------------------------------------------------------------
// linear algebra, distances, optimizer

fn two_d<'a, T>(
    func: &'static str,
    name: &'static str,
    v: ArrayViewD<'a, T>,
) -> PyResult<ndarray::ArrayView2<'a, T>> {
    let nd = v.ndim();
    v.into_dimensionality::<Ix2>().map_err(|_| {
        PyValueError::new_err(format!(
            "{func}(): argument '{name}' must be 2-D, got {nd} dimensions"
        ))
    })
}

#[pyfunction]
#[pyo3(signature = (a, b, out=None, device="cpu"))]
pub fn matmul<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Matmul,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("matmul", device)?;
            let out = opt_out(out);
            if let Some(o) = out {
                if !matches!(alias(o, a), Alias::None) || !matches!(alias(o, b), Alias::None) {
                    let r = matmul(py, a, b, None, device)?;
                    copy_into(py, "matmul", o, &r)?;
                    return Ok(o.clone());
                }
            }
            let p = take(py, "matmul", &["a", "b"], &[a, b], Kind::Same)?;
            let fin = p.finish;
            let mut it = p.arrays.into_iter();
            let (x, y) = (it.next().expect("a"), it.next().expect("b"));
            let r = match x {
                In::F64(x) => mm::<f64>(
                    py,
                    x,
                    f64::unwrap(y),
                    if fin.is_none() { out } else { None },
                )?,
                In::F32(x) => mm::<f32>(
                    py,
                    x,
                    f32::unwrap(y),
                    if fin.is_none() { out } else { None },
                )?,
                In::I64(x) => {
                    let y = i64::unwrap(y);
                    let va = two_d("matmul", "a", x.as_array())?;
                    let vb = two_d("matmul", "b", y.as_array())?;
                    let meta = Meta::two::<i64>(x.0.shape(), y.0.shape());
                    let r = run(
                        py,
                        Op::Matmul,
                        va.len().saturating_mul(vb.ncols()),
                        meta,
                        move || int::matmul(&va, &vb),
                    )?;
                    to_py(py, r.into_dyn())?
                }
            };
            let r = finish(r, &fin)?;
            match out {
                Some(o) if fin.is_some() || r.as_ptr() != o.as_ptr() => {
                    copy_into(py, "matmul", o, &r)?;
                    Ok(o.clone())
                }
                _ => Ok(r),
            }
        })(),
    )
}

fn mm<'py, T: linalg::GemmElem + Native + numpy::Element>(
    py: Python<'py>,
    x: Ro<'py, T>,
    y: Ro<'py, T>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let va = two_d("matmul", "a", x.as_array())?;
    let vb = two_d("matmul", "b", y.as_array())?;
    let work = va.len().saturating_mul(vb.ncols());
    // a fresh result comes from NumPy's allocator (huge pages, no zero-fill): gemm writes every element
    let fresh = match out.filter(|o| o.cast::<PyArrayDyn<T>>().is_ok()) {
        Some(_) => None,
        None => Some(new_array::<T>(
            py,
            "matmul",
            &[va.nrows(), vb.ncols()],
            false,
        )?),
    };
    let o = match &fresh {
        Some(f) => f.as_any().clone(),
        None => out.expect("out of dtype T").clone(),
    };
    {
        let mut rw = take_out::<T>("matmul", &o)?;
        let ov = two_d_mut(rw.as_array_mut())?;
        run(
            py,
            Op::Matmul,
            work,
            Meta::two::<T>(x.0.shape(), y.0.shape()),
            move || linalg::matmul(&va, &vb, Some(ov)),
        )?;
    }
    Ok(o)
}

fn two_d_mut<T>(v: ArrayViewMutD<'_, T>) -> PyResult<ndarray::ArrayViewMut2<'_, T>> {
    let nd = v.ndim();
    v.into_dimensionality::<Ix2>().map_err(|_| {
        PyValueError::new_err(format!(
            "matmul(): argument 'out' must be 2-D, got {nd} dimensions"
        ))
    })
}

#[pyfunction]
#[pyo3(signature = (a, b, metric="euclidean", device="cpu"))]
pub fn cdist<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    metric: &str,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    counted(
        Op::Cdist,
        device,
        (|| -> PyResult<Bound<'py, PyAny>> {
            check_device("cdist", device)?;
            let m = distance::Metric::parse(metric).py()?;
            let p = take(py, "cdist", &["a", "b"], &[a, b], Kind::Float)?;
            let fin = p.finish;
            let mut it = p.arrays.into_iter();
            let (x, y) = (it.next().expect("a"), it.next().expect("b"));
            let r = each_float!(x, T, x => {
                let y = <T as Native>::unwrap(y);
                let va = two_d("cdist", "a", x.as_array())?;
                let vb = two_d("cdist", "b", y.as_array())?;
                let work = va.len().saturating_mul(vb.nrows());
                let meta = Meta::two::<T>(x.0.shape(), y.0.shape());
                let r = run(py, Op::Cdist, work, meta, move || distance::cdist(&va, &vb, m))?;
                to_py(py, r.into_dyn())?
            });
            finish(r, &fin)
        })(),
    )
}

#[pyfunction]
#[pyo3(signature = (param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=false, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn adam_step<'py>(
    py: Python<'py>,
    param: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    m: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    t: i64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    device: &str,
) -> PyResult<()> {
    counted(
        Op::AdamStep,
        device,
        (|| -> PyResult<()> {
            check_device("adam_step", device)?;
            if t < 1 {
                return Err(PyValueError::new_err(format!(
                    "adam_step(): argument 't' is {t}; expected the step number, >= 1"
                )));
            }
            let hp = optim::AdamParams {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
                t: t as u64,
            };
            if param.cast::<PyArrayDyn<f64>>().is_ok() {
                adam_t::<f64>(py, param, grad, m, v, hp)
            } else if param.cast::<PyArrayDyn<f32>>().is_ok() {
                adam_t::<f32>(py, param, grad, m, v, hp)
            } else {
                let got = param
                    .getattr("dtype")
                    .map(|d| d.to_string())
                    .unwrap_or_else(|_| type_name(param));
                Err(PyTypeError::new_err(format!(
            "adam_step(): argument 'param' must be a float32 or float64 numpy.ndarray (updated in place), got {got}"
        )))
            }
        })(),
    )
}

fn adam_t<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    param: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    m: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    hp: optim::AdamParams,
) -> PyResult<()> {
    let dt = T::DTYPE;
    let want = |name: &'static str, o: &Bound<'py, PyAny>| -> PyResult<Bound<'py, PyArrayDyn<T>>> {
        o.cast::<PyArrayDyn<T>>().cloned().map_err(|_| {
            let got = o.getattr("dtype").map(|d| d.to_string()).unwrap_or_else(|_| type_name(o));
            PyTypeError::new_err(format!("adam_step(): argument '{name}' must be a numpy.ndarray of dtype {dt} like param, got {got}"))
        })
    };
    let (pa, ga, ma, va) = (
        want("param", param)?,
        want("grad", grad)?,
        want("m", m)?,
        want("v", v)?,
    );
    for (n1, a1, n2, a2) in [
        ("param", param, "m", m),
        ("param", param, "v", v),
        ("m", m, "v", v),
    ] {
        if !matches!(alias(a1, a2), Alias::None) {
            return Err(PyValueError::new_err(format!(
                "adam_step(): arguments '{n1}' and '{n2}' must not share memory"
            )));
        }
    }
    // a gradient that overlaps a state array is copied first
    let gcopy;
    let ga = if [param, m, v]
        .iter()
        .any(|s| !matches!(alias(s, grad), Alias::None))
    {
        gcopy = ga.call_method0("copy")?.cast_into::<PyArrayDyn<T>>()?;
        gcopy.clone()
    } else {
        ga
    };
    let rw = |name: &'static str, a: &Bound<'py, PyArrayDyn<T>>| {
        a.try_readwrite().map_err(|e| {
            PyValueError::new_err(format!(
                "adam_step(): argument '{name}' must be a writeable array ({e})"
            ))
        })
    };
    let (mut p, mut mm_, mut vv) = (rw("param", &pa)?, rw("m", &ma)?, rw("v", &va)?);
    let g = ga.readonly();
    let (pv, gv, mv, vvv) = (
        p.as_array_mut(),
        g.as_array(),
        mm_.as_array_mut(),
        vv.as_array_mut(),
    );
    let n = pv.len();
    let shapes = || {
        vec![
            pa.shape().to_vec(),
            ga.shape().to_vec(),
            ma.shape().to_vec(),
            va.shape().to_vec(),
        ]
    };
    run(py, Op::AdamStep, n, Meta::lazy::<T>(&shapes), move || {
        optim::adam_step(pv, gv, mv, vvv, hp)
    })
}

/// Length of the reduced axis (all elements for `None`); `None` when the axis is invalid (the op reports it).
fn reduced_len(a: &In<'_>, axis: Option<isize>) -> Option<usize> {
    let shape: Vec<usize> = match a {
        In::F64(a) => a.0.shape().to_vec(),
        In::F32(a) => a.0.shape().to_vec(),
        In::I64(a) => a.0.shape().to_vec(),
    };
    match axis {
        None => Some(shape.iter().product()),
        Some(ax) => {
            let nd = shape.len() as isize;
            let k = if ax < 0 { ax + nd } else { ax };
            (0..nd).contains(&k).then(|| shape[k as usize])
        }
    }
}

/// Emits a `RuntimeWarning` like NumPy does for degenerate reductions.
fn warn_if(py: Python<'_>, cond: bool, msg: &::std::ffi::CStr) -> PyResult<()> {
    if cond {
        let cat = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
        PyErr::warn(py, cat.as_any(), msg, 1)?;
    }
    Ok(())
}

/// `np.copyto(out, r, casting="same_kind")`, with errors that name the function and `out`.
fn copy_into<'py>(
    py: Python<'py>,
    func: &str,
    out: &Bound<'py, PyAny>,
    r: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let kw = pyo3::types::PyDict::new(py);
    kw.set_item("casting", "same_kind")?;
    py.import("numpy")?
        .getattr("copyto")?
        .call((out, r), Some(&kw))
        .map_err(|e| {
            let msg = format!(
                "{func}(): argument 'out' cannot hold the result: {}",
                e.value(py)
            );
            if e.is_instance_of::<PyTypeError>(py) {
                PyTypeError::new_err(msg)
            } else {
                PyValueError::new_err(msg)
            }
        })?;
    Ok(())
}

/// An uninitialized NumPy array of `shape` for the result of `func` (every element is written by the op before
/// Python sees it), or a `MemoryError` that names `func` and the size when it cannot be allocated.
///
/// rust-numpy's `PyArray::new` panics when NumPy returns NULL (`PanicException: PyObject pointer is null`); this
/// calls the same constructor, `PyArray_NewFromDescr`, and checks for NULL.
fn new_array<'py, T: numpy::Element>(
    py: Python<'py>,
    func: &'static str,
    shape: &[usize],
    fortran: bool,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    use numpy::npyffi::{get_type_object, npy_intp, NpyTypes, PY_ARRAY_API};
    let memory_error = || {
        let dtype = alloc::dtype_name::<T>();
        crate::errors::to_py(ferrolab_core::CoreError::memory(
            func,
            "result",
            shape,
            dtype,
            ::std::mem::size_of::<T>(),
        ))
    };
    // the byte size must fit in an npy_intp (NumPy would raise ValueError "array is too big")
    let bytes = shape
        .iter()
        .try_fold(::std::mem::size_of::<T>(), |a, &d| a.checked_mul(d));
    if bytes.is_none_or(|b| b > isize::MAX as usize) {
        return Err(memory_error());
    }
    let mut dims: smallvec::SmallVec<[npy_intp; 4]> =
        shape.iter().map(|&d| d as npy_intp).collect();
    // SAFETY: the type object and the descriptor come from NumPy's API table (the descriptor's new reference is
    // stolen by the call); `dims` holds `ndim` extents, each <= isize::MAX (their product fits, checked above);
    // null strides and data ask NumPy for a fresh C- or Fortran-ordered (uninitialized) buffer. The call returns a
    // new reference, or NULL with a Python exception set.
    let ptr = unsafe {
        PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            get_type_object(py, NpyTypes::PyArray_Type),
            T::get_dtype(py).into_dtype_ptr(),
            dims.len() as ::std::ffi::c_int,
            dims.as_mut_ptr(),
            ::std::ptr::null_mut(),
            ::std::ptr::null_mut(),
            ::std::ffi::c_int::from(fortran),
            ::std::ptr::null_mut(),
        )
    };
    if ptr.is_null() {
        let numpy_err = PyErr::fetch(py);
        if numpy_err.is_instance_of::<pyo3::exceptions::PyMemoryError>(py) {
            let e = memory_error();
            e.set_cause(py, Some(numpy_err));
            return Err(e);
        }
        return Err(numpy_err);
    }
    // SAFETY: a non-null result of PyArray_NewFromDescr with PyArray_Type is a new reference to an ndarray of
    // T's dtype and `shape.len()` dimensions.
    Ok(unsafe { Bound::from_owned_ptr(py, ptr).cast_into_unchecked() })
}
