//! Turning Python objects into typed array views (dtype dispatch) and results back into NumPy objects.
//!
//! Fast path: an ndarray of float64, float32 or int64 (native byte order) is borrowed as it is. Anything else
//! goes once through `ferrolab._coerce.prepare`, which converts it the way NumPy would for that op and may
//! return a `finish` callable that turns the native result into NumPy's result dtype.

use crate::errors::{arg_type, arg_value, IntoPyResult};
pub use ferrolab_core::kernels::layout::Alias;
use ferrolab_core::kernels::layout::{self, Extent};
use ferrolab_core::kernels::{alloc, recycle};
use ndarray::{ArrayD, ArrayViewD};
use numpy::{
    IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadwriteArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

/// A Python object argument or result.
pub type Obj<'py> = Bound<'py, PyAny>;

/// The element types the kernels take as they are (native byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeKind {
    F64,
    F32,
    I64,
}

/// The native element type of ndarray `x`, read from its descriptor's kind, item size and byte order: one check
/// instead of NumPy's type-equivalence call for each candidate dtype (the same arrays it accepts: `int64` whether
/// NumPy calls it `long` or `longlong`). `None` for anything else, and for arrays the kernels cannot take as
/// they are:
/// - unaligned ones: a misaligned buffer, or strides that are not multiples of the item size (a field of a packed
///   structured array), which an n-d view would round to whole elements and so read the wrong memory
///   (`_coerce` copies them);
/// - a `numpy.ma.MaskedArray`, whose mask would be ignored (`_coerce` rejects it). Other subclasses are native.
///
/// An exact `numpy.ndarray` of float64, float32 or int64 takes a shorter path ([`exact_kind`]) to the same
/// answer: about 100 of the 1,200 instructions of a small `fl.ops.argmin` call went to the general one.
#[inline]
pub fn native_kind(x: &Obj<'_>) -> Option<NativeKind> {
    if is_exact_ndarray(x) {
        // SAFETY: `x` is exactly an ndarray (checked), which is all the untyped array's type check requires.
        if let Some(k) = exact_kind(unsafe { x.cast_unchecked::<PyUntypedArray>() }) {
            return k;
        }
    }
    let u = x.cast::<PyUntypedArray>().ok()?;
    if !u.is_aligned() || masked(x) {
        return None;
    }
    let d = u.dtype();
    if d.is_native_byteorder() == Some(false) {
        return None;
    }
    match (d.kind(), d.itemsize()) {
        (b'f', 8) => Some(NativeKind::F64),
        (b'f', 4) => Some(NativeKind::F32),
        (b'i', 8) => Some(NativeKind::I64),
        _ => None,
    }
}

/// Whether `x` is exactly a `numpy.ndarray` (not a subclass): one pointer comparison with ndarray's type object,
/// which is looked up once (NumPy's C API table) and lives as long as the process (NumPy never frees its static
/// types).
#[inline]
pub fn is_exact_ndarray(x: &Obj<'_>) -> bool {
    use pyo3::PyTypeInfo;
    use std::sync::atomic::{AtomicPtr, Ordering};
    static NDARRAY: AtomicPtr<pyo3::ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
    let mut t = NDARRAY.load(Ordering::Relaxed);
    if t.is_null() {
        t = PyUntypedArray::type_object(x.py()).as_type_ptr();
        NDARRAY.store(t, Ordering::Relaxed);
    }
    x.get_type_ptr() == t
}

/// [`native_kind`] of an exact ndarray whose descriptor's type number is one of the three native types' (its
/// fields read, no type checks): `Some(None)` for an unaligned one, `None` (the general path decides) for any
/// other type number or a byte order other than the native one.
#[inline]
fn exact_kind(u: &Bound<'_, PyUntypedArray>) -> Option<Option<NativeKind>> {
    use numpy::npyffi::NPY_TYPES;
    let d = u.dtype();
    let kind = match d.num() {
        n if n == NPY_TYPES::NPY_DOUBLE as i32 => NativeKind::F64,
        n if n == NPY_TYPES::NPY_FLOAT as i32 => NativeKind::F32,
        n if n == NPY_TYPES::NPY_LONGLONG as i32 => NativeKind::I64,
        n if n == NPY_TYPES::NPY_LONG as i32 && std::mem::size_of::<std::ffi::c_long>() == 8 => {
            NativeKind::I64
        }
        _ => return None,
    };
    if d.is_native_byteorder() != Some(true) {
        return None;
    }
    Some(u.is_aligned().then_some(kind))
}

/// Whether `x` is a `numpy.ma.MaskedArray`: never a plain ndarray (one type comparison), else asked of
/// `numpy.ma` (none exists before it is imported).
#[inline]
fn masked(x: &Obj<'_>) -> bool {
    !is_exact_ndarray(x) && masked_subclass(x)
}

#[cold]
fn masked_subclass(x: &Obj<'_>) -> bool {
    let class = crate::ffi::modules(x.py())
        .and_then(|m| m.get_item("numpy.ma"))
        .and_then(|ma| ma.map(|ma| ma.getattr("MaskedArray")).transpose());
    matches!(class, Ok(Some(c)) if x.is_instance(&c).unwrap_or(true))
}

/// A native ndarray, typed.
pub enum NativeArray<'a, 'py> {
    F64(&'a Bound<'py, PyArrayDyn<f64>>),
    F32(&'a Bound<'py, PyArrayDyn<f32>>),
    I64(&'a Bound<'py, PyArrayDyn<i64>>),
}

/// `x` as a [`NativeArray`] (see [`native_kind`]).
#[inline]
pub fn native_array<'a, 'py>(x: &'a Obj<'py>) -> Option<NativeArray<'a, 'py>> {
    // SAFETY (all three): `x` is an ndarray whose elements are of the native type named (native_kind checked
    // both), which is all the typed array's type check requires of a dynamic-dimensional array.
    Some(match native_kind(x)? {
        NativeKind::F64 => NativeArray::F64(unsafe { x.cast_unchecked() }),
        NativeKind::F32 => NativeArray::F32(unsafe { x.cast_unchecked() }),
        NativeKind::I64 => NativeArray::I64(unsafe { x.cast_unchecked() }),
    })
}

/// `x` as an ndarray of element type `T`, when that is its native element type ([`native_array`]).
pub fn native_typed<'a, 'py, T: ToNumpy>(x: &'a Obj<'py>) -> Option<&'a Bound<'py, PyArrayDyn<T>>> {
    T::typed(native_array(x)?)
}

/// The elements of a contiguous array (C-contiguous when `c_only`) as one slice; `None` for other layouts.
pub fn flat_slice<'a, T: numpy::Element>(
    a: &'a Bound<'_, PyArrayDyn<T>>,
    c_only: bool,
) -> Option<&'a [T]> {
    if !(if c_only {
        a.is_c_contiguous()
    } else {
        a.is_contiguous()
    }) {
        return None;
    }
    // SAFETY: contiguous (checked); only read while the array is alive (the slice borrows `a`, which holds a
    // reference to it also while the GIL is released), and never aliased by a mutable view (see `Ro`).
    unsafe { a.as_slice() }.ok()
}

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

/// `$e` for the input's array `$x`, whatever its dtype.
macro_rules! each_in {
    ($a:expr, $x:ident => $e:expr) => {
        match $a {
            In::F64($x) => $e,
            In::F32($x) => $e,
            In::I64($x) => $e,
        }
    };
}

impl In<'_> {
    pub fn shape(&self) -> &[usize] {
        each_in!(self, a => a.0.shape())
    }

    /// Whether `o` is a native array ([`native_kind`]) of this input's dtype: one the kernels can write as it is.
    pub fn same_dtype_as(&self, o: &Obj<'_>) -> bool {
        let kind = match self {
            In::F64(_) => NativeKind::F64,
            In::F32(_) => NativeKind::F32,
            In::I64(_) => NativeKind::I64,
        };
        native_kind(o) == Some(kind)
    }
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

fn borrow<'py>(obj: &Obj<'py>) -> Option<In<'py>> {
    Some(match native_array(obj)? {
        NativeArray::F64(a) => In::F64(Ro(a.clone())),
        NativeArray::F32(a) => In::F32(Ro(a.clone())),
        NativeArray::I64(a) => In::I64(Ro(a.clone())),
    })
}

static PREPARE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Converted inputs and the optional `finish` callable.
pub struct Prepared<'py> {
    pub arrays: Vec<In<'py>>,
    pub finish: Option<Obj<'py>>,
}

/// Takes the array inputs `values` (named `names`) of `func`. All of them end up with one common native dtype.
pub fn take<'py>(
    py: Python<'py>,
    func: &'static str,
    names: &[&'static str],
    values: &[&Obj<'py>],
    kind: Kind,
) -> PyResult<Prepared<'py>> {
    // fast path: every input already a native array of one dtype (int64 only where the op keeps integers)
    let fast: Option<Vec<In>> = values.iter().map(|v| borrow(v)).collect();
    if let Some(fast) = fast
        .filter(|f| same_dtype(f) && !(matches!(kind, Kind::Float) && matches!(f[0], In::I64(_))))
    {
        return Ok(Prepared {
            arrays: fast,
            finish: None,
        });
    }
    let prepare = PREPARE.import(py, "ferrolab._coerce", "prepare")?;
    let res = prepare.call1((
        func,
        PyTuple::new(py, names)?,
        PyTuple::new(py, values)?,
        kind.as_str(),
    ))?;
    let (arrays, finish): (Bound<'py, PyTuple>, Obj<'py>) = res.extract()?;
    let mut out = Vec::with_capacity(values.len());
    for (a, name) in arrays.iter().zip(names) {
        match borrow(&a) {
            Some(x) => out.push(x),
            None => {
                return Err(arg_type(
                    func,
                    name,
                    "could not be converted to a native dtype",
                ))
            }
        }
    }
    Ok(Prepared {
        arrays: out,
        finish: if finish.is_none() { None } else { Some(finish) },
    })
}

fn same_dtype(v: &[In]) -> bool {
    v.windows(2)
        .all(|w| std::mem::discriminant(&w[0]) == std::mem::discriminant(&w[1]))
}

/// The native element types: they come back to Python as NumPy scalars or arrays.
pub trait ToNumpy: numpy::Element + Copy {
    /// The typed array of a [`NativeArray`] of this element type (`None` for another one).
    fn typed<'a, 'py>(a: NativeArray<'a, 'py>) -> Option<&'a Bound<'py, PyArrayDyn<Self>>>;

    /// The type's descriptor, looked up once (NumPy's built-in descriptors live as long as the process).
    fn descr(py: Python<'_>) -> &Bound<'_, numpy::PyArrayDescr>;

    /// A NumPy scalar (`np.float64`, `np.float32`, `np.int64`) holding `v`.
    fn scalar<'py>(py: Python<'py>, v: Self) -> PyResult<Obj<'py>> {
        let descr = Self::descr(py);
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
macro_rules! to_numpy {
    ($($t:ty => $variant:ident),*) => {$(
        impl ToNumpy for $t {
            fn typed<'a, 'py>(a: NativeArray<'a, 'py>) -> Option<&'a Bound<'py, PyArrayDyn<Self>>> {
                match a {
                    NativeArray::$variant(a) => Some(a),
                    _ => None,
                }
            }

            fn descr(py: Python<'_>) -> &Bound<'_, numpy::PyArrayDescr> {
                static DESCR: PyOnceLock<Py<numpy::PyArrayDescr>> = PyOnceLock::new();
                DESCR.get_or_init(py, || numpy::dtype::<$t>(py).unbind()).bind(py)
            }
        }
    )*};
}
to_numpy!(f64 => F64, f32 => F32, i64 => I64);

/// A result array: a NumPy scalar when 0-dimensional, else an ndarray.
pub fn to_py<'py, T: ToNumpy>(py: Python<'py>, a: ArrayD<T>) -> PyResult<Obj<'py>> {
    if a.ndim() == 0 {
        T::scalar(py, a[[]])
    } else {
        Ok(a.into_pyarray(py).into_any())
    }
}

/// Applies `finish` (if any) to a result.
pub fn finish<'py>(r: Obj<'py>, finish: &Option<Obj<'py>>) -> PyResult<Obj<'py>> {
    match finish {
        Some(f) => f.call1((r,)),
        None => Ok(r),
    }
}

/// The `dtype` of an array, else its class name (for messages).
pub fn dtype_or_class(o: &Obj<'_>) -> String {
    o.getattr("dtype")
        .map(|d| d.to_string())
        .unwrap_or_else(|_| crate::errors::type_of(o))
}

/// A writeable array of element type `T`: argument `name` (`out`, or an array updated in place) of `func`.
pub fn take_out<'py, T: ToNumpy>(
    func: &'static str,
    name: &'static str,
    out: &Obj<'py>,
) -> PyResult<PyReadwriteArrayDyn<'py, T>> {
    native_arg::<T>(func, name, out)?
        .try_readwrite()
        .map_err(|e| arg_value(func, name, format!("must be a writeable array ({e})")))
}

/// Argument `name` of `func` as a native array of element type `T` ([`native_typed`]), for an array the op works
/// on as it is (`out`, an array updated in place): a masked array or another dtype or layout is a `TypeError`.
pub fn native_arg<'a, 'py, T: ToNumpy>(
    func: &'static str,
    name: &'static str,
    x: &'a Obj<'py>,
) -> PyResult<&'a Bound<'py, PyArrayDyn<T>>> {
    no_mask(func, name, x)?;
    native_typed::<T>(x).ok_or_else(|| {
        let (want, got) = (alloc::dtype_name::<T>(), dtype_or_class(x));
        arg_type(
            func,
            name,
            format!("must be an aligned numpy.ndarray of dtype {want}, got {got}"),
        )
    })
}

/// `TypeError` for a `numpy.ma.MaskedArray` given as argument `name` that ferrolab writes (`out`, `adam_step`'s
/// state): it would read and write the data only, and the mask would stay as it was.
pub fn no_mask(func: &'static str, name: &'static str, out: &Obj<'_>) -> PyResult<()> {
    if masked(out) {
        return Err(arg_type(
            func,
            name,
            "is a masked array, whose mask ferrolab would ignore",
        ));
    }
    Ok(())
}

/// `out` given and not None.
pub fn opt_out<'a, 'py>(out: Option<&'a Obj<'py>>) -> Option<&'a Obj<'py>> {
    out.filter(|o| !o.is_none())
}

static COPYTO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `np.copyto(out, r, casting="same_kind")` for a result computed apart from `out` (`out` overlaps an input
/// partially, or has another dtype than the computation), then `out`. Errors name `func` and `out`: a casting
/// failure stays a `TypeError` (as NumPy raises it), anything else (a shape that does not broadcast, a
/// read-only `out`) is a `ValueError`.
pub fn copy_into<'py>(
    py: Python<'py>,
    func: &'static str,
    out: &Obj<'py>,
    r: &Obj<'py>,
) -> PyResult<Obj<'py>> {
    no_mask(func, "out", out)?;
    let kw = PyDict::new(py);
    kw.set_item(pyo3::intern!(py, "casting"), pyo3::intern!(py, "same_kind"))?;
    match COPYTO
        .import(py, "numpy", "copyto")?
        .call((out, r), Some(&kw))
    {
        Ok(_) => Ok(out.clone()),
        Err(e) => {
            let msg = format!("cannot hold the result: {}", e.value(py));
            Err(if e.is_instance_of::<PyTypeError>(py) {
                arg_type(func, "out", msg)
            } else {
                arg_value(func, "out", msg)
            })
        }
    }
}

/// Where `a`'s elements lie, when it is an ndarray.
fn extent(a: &Obj<'_>) -> Option<Extent> {
    let u = a.cast::<PyUntypedArray>().ok()?;
    // SAFETY: reading the data pointer of a live array object.
    let ptr = unsafe { (*u.as_array_ptr()).fields.data } as usize;
    Some(Extent::of(
        ptr,
        u.dtype().itemsize(),
        u.shape(),
        u.strides(),
    ))
}

/// How `out` shares memory with an input `x` (nothing when either is not an ndarray).
pub fn alias(out: &Obj<'_>, x: &Obj<'_>) -> Alias {
    match (extent(out), extent(x)) {
        (Some(o), Some(v)) => layout::alias(&o, &v),
        _ => Alias::None,
    }
}

/// The owner of a recycled result buffer: the end of the result array's base chain. Dropping it (when the last
/// array over the buffer dies) hands the buffer back to [`recycle`].
#[pyclass(frozen, module = "ferrolab._core")]
struct ResultBuffer(#[allow(dead_code)] recycle::Buffer);

/// `PyArray_NewFromDescr` of `shape` elements of `descr` (its reference is stolen) at `data` (NULL: NumPy
/// allocates) with `flags`; NULL with a Python exception set when it fails.
///
/// # Safety
/// `descr` must be a new reference to a descriptor, `data` NULL or valid for the array's bytes for as long as the
/// array lives (its base keeps it alive), `flags` valid array flags.
unsafe fn new_from_descr(
    py: Python<'_>,
    descr: *mut numpy::npyffi::PyArray_Descr,
    shape: &[usize],
    data: *mut ::std::ffi::c_void,
    flags: ::std::ffi::c_int,
) -> *mut pyo3::ffi::PyObject {
    use numpy::npyffi::{get_type_object, npy_intp, NpyTypes, PY_ARRAY_API};
    let mut dims: smallvec::SmallVec<[npy_intp; 4]> =
        shape.iter().map(|&d| d as npy_intp).collect();
    // SAFETY: the caller's; `dims` holds `ndim` extents and null strides ask for C or Fortran strides (by flags).
    unsafe {
        PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            get_type_object(py, NpyTypes::PyArray_Type),
            descr,
            dims.len() as ::std::ffi::c_int,
            dims.as_mut_ptr(),
            ::std::ptr::null_mut(),
            data,
            flags,
            ::std::ptr::null_mut(),
        )
    }
}

/// The new reference `ptr` (a fresh array) as a `Bound`, or the error NumPy set (`MemoryError` as `memory_error`'s,
/// with NumPy's as its cause).
fn fresh_or_err<'py>(
    py: Python<'py>,
    ptr: *mut pyo3::ffi::PyObject,
    memory_error: impl FnOnce() -> PyErr,
) -> PyResult<Bound<'py, PyAny>> {
    if ptr.is_null() {
        let numpy_err = PyErr::fetch(py);
        if numpy_err.is_instance_of::<PyMemoryError>(py) {
            let e = memory_error();
            e.set_cause(py, Some(numpy_err));
            return Err(e);
        }
        return Err(numpy_err);
    }
    // SAFETY: a non-null result of PyArray_NewFromDescr is a new reference.
    Ok(unsafe { Bound::from_owned_ptr(py, ptr) })
}

/// Makes `base` the base of the fresh array `a`.
fn set_base(a: &Bound<'_, PyAny>, base: Bound<'_, PyAny>) -> PyResult<()> {
    use numpy::npyffi::{PyArrayObject, PY_ARRAY_API};
    // SAFETY: `a` is a fresh array without a base; the call steals the reference to `base` (also when it fails).
    let rc = unsafe {
        PY_ARRAY_API.PyArray_SetBaseObject(
            a.py(),
            a.as_ptr().cast::<PyArrayObject>(),
            base.into_ptr(),
        )
    };
    if rc < 0 {
        return Err(PyErr::fetch(a.py()));
    }
    Ok(())
}

/// An uninitialized NumPy array of `shape` for the result of `func` (every element is written by the op before
/// Python sees it), or a `MemoryError` that names `func` and the size when it cannot be allocated.
///
/// A plain-data result of [`recycle::MIN_BYTES`] or more lives in a recycled buffer ([`recycle`], huge pages
/// asked for as NumPy's allocator does). Its base is a writeable `uint8` array over the buffer whose own base owns
/// it ([`ResultBuffer`]): NumPy then lets a result that was made read-only be made writeable again, as for an
/// array that owns its data. Smaller results come from NumPy's allocator.
///
/// rust-numpy's `PyArray::new` panics when NumPy returns NULL (`PanicException: PyObject pointer is null`); this
/// calls the same constructor, `PyArray_NewFromDescr`, and checks for NULL.
pub fn new_array<'py, T: numpy::Element>(
    py: Python<'py>,
    func: &'static str,
    shape: &[usize],
    fortran: bool,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    use numpy::npyffi::flags::{
        NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_F_CONTIGUOUS, NPY_ARRAY_WRITEABLE,
    };
    let memory_error = || crate::errors::to_py(alloc::memory_error::<T>(func, "result", shape));
    // the byte size must fit in an npy_intp (NumPy would raise ValueError "array is too big")
    let bytes = alloc::byte_len::<T>(shape).ok_or_else(memory_error)?;
    // (a recycled buffer holds the previous result's bytes: only for element types that are plain data)
    if !(T::IS_COPY && recycle::applies(bytes)) {
        // SAFETY: a new reference to T's descriptor; null data asks NumPy for a fresh (uninitialized) buffer, in
        // Fortran order when the flags are non-zero.
        let ptr = unsafe {
            new_from_descr(
                py,
                T::get_dtype(py).into_dtype_ptr(),
                shape,
                ::std::ptr::null_mut(),
                ::std::ffi::c_int::from(fortran),
            )
        };
        // SAFETY: an ndarray of T's dtype (PyArray_Type) and `shape.len()` dimensions.
        return Ok(unsafe { fresh_or_err(py, ptr, memory_error)?.cast_into_unchecked() });
    }
    let buffer = recycle::take(bytes).ok_or_else(memory_error)?;
    let data = buffer.as_ptr().cast::<::std::ffi::c_void>();
    // if any step below fails, dropping what was made so far hands the buffer back
    let owner = Bound::new(py, ResultBuffer(buffer))?;
    // SAFETY: a new reference to the uint8 descriptor; `data` holds `bytes` bytes for as long as `owner`, which
    // becomes this array's base right after, lives.
    let raw = unsafe {
        new_from_descr(
            py,
            <u8 as numpy::Element>::get_dtype(py).into_dtype_ptr(),
            &[bytes],
            data,
            NPY_ARRAY_WRITEABLE | NPY_ARRAY_C_CONTIGUOUS,
        )
    };
    let raw = fresh_or_err(py, raw, memory_error)?;
    set_base(&raw, owner.into_any())?;
    let order = if fortran {
        NPY_ARRAY_F_CONTIGUOUS
    } else {
        NPY_ARRAY_C_CONTIGUOUS
    };
    // SAFETY: a new reference to T's descriptor; `data` holds the `bytes` bytes of `shape` elements of T for as
    // long as `raw` (this array's base, set right after) lives.
    let ptr = unsafe {
        new_from_descr(
            py,
            T::get_dtype(py).into_dtype_ptr(),
            shape,
            data,
            NPY_ARRAY_WRITEABLE | order,
        )
    };
    let array = fresh_or_err(py, ptr, memory_error)?;
    set_base(&array, raw)?;
    // SAFETY: an ndarray of T's dtype (PyArray_Type) and `shape.len()` dimensions.
    Ok(unsafe { array.cast_into_unchecked() })
}

/// Checks the `device` argument through the one device check ([`ferrolab_core::device::select`]).
pub fn check_device(func: &'static str, device: &str) -> PyResult<()> {
    ferrolab_core::device::select(func, device).map(|_| ()).py()
}
