//! The raw CPython calls of the bindings, in one place, each behind a safe wrapper.
//!
//! Everything else in the bindings is PyO3's safe API. What is here is what PyO3 does not offer at the same cost:
//!
//! * [`FastCall`] + [`install_method`] / [`add_function`]: a `METH_FASTCALL | METH_KEYWORDS` callable whose
//!   keyword arguments arrive as a tuple of names and an array of values ([`FastArgs`]) instead of a dict (PyO3's
//!   `**kwargs` builds one; that dict was most of the cost of `labels(...)` and `span(...)`). Its one C entry
//!   point, [`trampoline`], runs the Rust side under [`guard`], the one `catch_unwind` of the raw entry points;
//! * [`send`]: `PyIter_Send`, which drives an awaited coroutine without a raised and caught `StopIteration`, and
//!   [`raise_stop_iteration`], which ends an await with a value the way CPython's own generators do;
//! * [`call_one`]: a call with one positional argument without an argument tuple (the stable ABI of 3.11 has no
//!   `PyObject_Vectorcall`, so PyO3 builds a tuple per call; the context-variable calls of a span are most of its
//!   cost);
//! * [`modules`]: the interpreter's module dict without an import, [`interpreter_alive`] for threads that must
//!   not attach to a finalized interpreter, and [`sole_reference`] (a reference count of 1).
//!
//! Only the stable ABI (abi3, Python >= 3.11) is used: `PyIter_Send` (3.10), `METH_FASTCALL` (3.10),
//! `PyErr_SetObject`, `PyDescr_NewMethod`, `PyCFunction_NewEx`, `PyImport_GetModuleDict`, `Py_IsInitialized`,
//! `Py_REFCNT`, `PyObject_CallFunctionObjArgs`. The context-variable C API (`PyContextVar_Get/Set/Reset`) is not
//! part of it: spans call the `ContextVar`'s methods instead.

use crate::errors;
use pyo3::ffi as sys;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PyTuple, PyType};
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

// ---------------------------------------------------------------------------------------------------------------
// the one guard of the raw entry points

/// Runs the Rust side of a raw C-ABI entry point named `func`: its result as a new reference, or NULL with the
/// Python exception set, an error returned by `f` or, for a panic, `ferrolab.InternalError` naming `func` with
/// the panic's message (a panic must not unwind into CPython).
#[inline(always)]
pub fn guard(
    py: Python<'_>,
    func: &'static str,
    f: impl FnOnce() -> PyResult<*mut sys::PyObject>,
) -> *mut sys::PyObject {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => {
            e.restore(py);
            null_mut()
        }
        Err(payload) => {
            panicked(py, func, payload);
            null_mut()
        }
    }
}

/// Out of line: the path of every call stays as short as without the guard.
#[cold]
#[inline(never)]
fn panicked(py: Python<'_>, func: &'static str, payload: Box<dyn std::any::Any + Send>) {
    errors::internal(func, errors::panic_message(&*payload)).restore(py);
    // the payload may itself panic when dropped: keep that out of CPython too
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
}

// ---------------------------------------------------------------------------------------------------------------
// METH_FASTCALL | METH_KEYWORDS callables

/// The arguments of a `METH_FASTCALL | METH_KEYWORDS` call: `nargs` positional values, then one value per name
/// in `kwnames`. Borrowed from the caller for the call (`'a`).
pub struct FastArgs<'a, 'py> {
    py: Python<'py>,
    args: &'a [*mut sys::PyObject],
    nargs: usize,
    kwnames: Option<Borrowed<'a, 'py, PyTuple>>,
}

impl<'a, 'py> FastArgs<'a, 'py> {
    /// # Safety
    /// The vectorcall contract of CPython: the thread is attached; `args` points to `nargs` positional values
    /// followed by `len(kwnames)` keyword values (it may be NULL when there are none), every one a live
    /// reference; `kwnames` is NULL or a tuple of str; all of them stay alive for `'a`.
    unsafe fn new(
        py: Python<'py>,
        args: *const *mut sys::PyObject,
        nargs: sys::Py_ssize_t,
        kwnames: *mut sys::PyObject,
    ) -> PyResult<Self> {
        // SAFETY: `kwnames` is NULL or a live object for `'a` (the contract above)
        let kwnames = unsafe { Borrowed::from_ptr_or_opt(py, kwnames) }
            .map(|k| k.cast::<PyTuple>())
            .transpose()
            .map_err(|_| errors::system_error("vectorcall keyword names are not a tuple"))?;
        let nargs = usize::try_from(nargs)
            .map_err(|_| errors::system_error("negative vectorcall argument count"))?;
        let total = nargs + kwnames.as_deref().map_or(0, |k| k.len());
        let args = if total == 0 || args.is_null() {
            &[][..]
        } else {
            // SAFETY: `args` holds `total` pointers, alive for `'a` (the contract above)
            unsafe { std::slice::from_raw_parts(args, total) }
        };
        Ok(FastArgs {
            py,
            args,
            nargs,
            kwnames,
        })
    }

    fn item(&self, i: usize) -> Borrowed<'a, 'py, PyAny> {
        // SAFETY: every pointer of `args` is a live, non-NULL reference for `'a` (checked in `new`)
        unsafe { Borrowed::from_ptr(self.py, self.args[i]) }
    }

    /// How many positional arguments.
    #[inline]
    pub fn nargs(&self) -> usize {
        self.nargs
    }

    /// The positional arguments.
    #[inline]
    pub fn positional(&self) -> impl ExactSizeIterator<Item = Borrowed<'a, 'py, PyAny>> + '_ {
        (0..self.nargs.min(self.args.len())).map(|i| self.item(i))
    }

    /// The keyword arguments as (name, value); the names are str (CPython checks it).
    #[inline]
    pub fn keywords<'s>(
        &'s self,
    ) -> impl Iterator<Item = (Borrowed<'s, 'py, PyAny>, Borrowed<'a, 'py, PyAny>)> + 's {
        let names = self.kwnames.as_deref().map(|k| k.iter_borrowed());
        let first = self.nargs.min(self.args.len());
        names
            .into_iter()
            .flatten()
            .zip(first..self.args.len())
            .map(|(name, i)| (name, self.item(i)))
    }

    /// How many keyword arguments.
    #[inline]
    pub fn nkeywords(&self) -> usize {
        self.args.len() - self.nargs.min(self.args.len())
    }
}

/// A callable implemented with `METH_FASTCALL | METH_KEYWORDS`, installed by [`install_method`] or
/// [`add_function`].
pub trait FastCall {
    /// The name Python sees (`__name__`).
    const NAME: &'static CStr;
    /// The name in messages (an `InternalError` of a panic).
    const FUNC: &'static str;
    /// The docstring, its first lines the text signature (`name($self, /, ...)\n--\n\n...`).
    const DOC: &'static CStr;

    /// The call: `slf` is the object of a method, `None` for a module function.
    fn call<'py>(
        py: Python<'py>,
        slf: Option<Borrowed<'_, 'py, PyAny>>,
        args: &FastArgs<'_, 'py>,
    ) -> PyResult<Bound<'py, PyAny>>;
}

/// The C entry point of `F`.
///
/// # Safety
/// Only CPython calls it, as the `ml_meth` of a `METH_FASTCALL | METH_KEYWORDS` definition: with the thread
/// attached, `slf` the bound object (or NULL) and the arguments as [`FastArgs::new`] requires.
unsafe extern "C" fn trampoline<F: FastCall>(
    slf: *mut sys::PyObject,
    args: *const *mut sys::PyObject,
    nargs: sys::Py_ssize_t,
    kwnames: *mut sys::PyObject,
) -> *mut sys::PyObject {
    // SAFETY: CPython calls a C function only with the thread attached
    let py = unsafe { Python::assume_attached() };
    guard(py, F::FUNC, || {
        // SAFETY: `slf` is NULL or a live reference for the call (the contract above)
        let slf = unsafe { Borrowed::from_ptr_or_opt(py, slf) };
        // SAFETY: the arguments are CPython's, as the contract above says
        let args = unsafe { FastArgs::new(py, args, nargs, kwnames) }?;
        F::call(py, slf, &args).map(Bound::into_ptr)
    })
}

/// The definition of `F`, alive for the rest of the process (CPython keeps pointers to it in every descriptor
/// and function object made from it).
fn definition<F: FastCall>() -> *mut sys::PyMethodDef {
    Box::leak(Box::new(sys::PyMethodDef {
        ml_name: F::NAME.as_ptr(),
        ml_meth: sys::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: trampoline::<F>,
        },
        ml_flags: sys::METH_FASTCALL | sys::METH_KEYWORDS,
        ml_doc: F::DOC.as_ptr(),
    }))
}

/// Sets `F` as the method `F::NAME` of the class `ty` (a method descriptor, like a method written in C).
pub fn install_method<F: FastCall>(ty: &Bound<'_, PyType>) -> PyResult<()> {
    let def = definition::<F>();
    // SAFETY: `ty` is a live type object and `def` lives for the rest of the process; the result is a new
    // reference or NULL with an exception set
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            ty.py(),
            sys::PyDescr_NewMethod(ty.as_ptr().cast::<sys::PyTypeObject>(), def),
        )
    }?;
    ty.setattr(F::NAME.to_str().map_err(errors::system_error)?, descr)
}

/// Adds `F` to the module `m` as the builtin function `F::NAME` (its `__module__` is the module's name).
pub fn add_function<F: FastCall>(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let def = definition::<F>();
    let module_name = m.name()?;
    // SAFETY: `def` lives for the rest of the process and `module_name` is a live str; the result is a new
    // reference or NULL with an exception set
    let f = unsafe {
        Bound::from_owned_ptr_or_err(
            m.py(),
            sys::PyCFunction_NewEx(def, null_mut(), module_name.as_ptr()),
        )
    }?;
    m.add(F::NAME.to_str().map_err(errors::system_error)?, f)
}

// ---------------------------------------------------------------------------------------------------------------
// awaiting

/// What one step of an awaited object gave.
pub enum Sent<'py> {
    Yielded(Bound<'py, PyAny>),
    Returned(Bound<'py, PyAny>),
}

/// Sends `value` into `iter` (a coroutine, a generator, an `__await__` iterator) with `PyIter_Send` (stable
/// ABI since 3.10): a coroutine's return value comes back as a value, not as a raised and caught
/// `StopIteration`. PyO3's `PyIterator::send` is the same call but takes only iterators, and a coroutine is
/// not one; calling its `send` method instead costs a `StopIteration` per completed call (the asyncio rows of
/// `benches/bench_breaker.py`).
pub fn send<'py>(iter: &Bound<'py, PyAny>, value: &Bound<'py, PyAny>) -> PyResult<Sent<'py>> {
    let py = iter.py();
    let mut out: *mut sys::PyObject = null_mut();
    // SAFETY: `py` proves the thread is attached; `iter` and `value` are live references for the whole call;
    // `out` is a valid place for the one new reference (or NULL) that PyIter_Send writes.
    let r = unsafe { sys::PyIter_Send(iter.as_ptr(), value.as_ptr(), &mut out) };
    match r {
        sys::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
        // SAFETY: on NEXT and RETURN `out` is a new, non-NULL reference that we now own.
        sys::PySendResult::PYGEN_NEXT => {
            Ok(Sent::Yielded(unsafe { Bound::from_owned_ptr(py, out) }))
        }
        // SAFETY: as above.
        sys::PySendResult::PYGEN_RETURN => {
            Ok(Sent::Returned(unsafe { Bound::from_owned_ptr(py, out) }))
        }
    }
}

/// Raises `StopIteration(value)` as CPython's generators do when they return (`_PyGen_SetStopIterationValue`).
///
/// A plain value is raised as the exception's argument: `PyErr_SetObject(StopIteration, value)` leaves the
/// exception unnormalized on Python 3.11, and the awaiting frame reads the value straight from it
/// (`_PyGen_FetchStopIterationValue`): no exception object, no argument tuple. A tuple or an exception would be
/// taken for the argument tuple or for the exception itself, so for them the instance is made first. An iterator's
/// `__next__` then returns NULL through PyO3 (`Ok(None)`) as for a plain `StopIteration`: PyO3 would normalize a
/// lazily made error when it raises it (3.11's stable ABI).
pub fn raise_stop_iteration(value: &Bound<'_, PyAny>) {
    let py = value.py();
    let made;
    let arg = if value.is_instance_of::<PyTuple>()
        || value.is_instance_of::<pyo3::exceptions::PyBaseException>()
    {
        match py
            .get_type::<pyo3::exceptions::PyStopIteration>()
            .call1((value,))
        {
            Ok(e) => {
                made = e;
                &made
            }
            Err(e) => return e.restore(py),
        }
    } else {
        value
    };
    // SAFETY: the thread is attached (`py`); `PyExc_StopIteration` is a live class for the interpreter's lifetime;
    // PyErr_SetObject takes its own references to both arguments.
    unsafe { sys::PyErr_SetObject(sys::PyExc_StopIteration, arg.as_ptr()) };
}

// ---------------------------------------------------------------------------------------------------------------
// calling

/// `callable(arg)` without an argument tuple: `PyObject_CallFunctionObjArgs` (stable ABI) collects its arguments
/// on the C stack and makes a vectorcall, where PyO3's `call1` on the 3.11 stable ABI (no `PyObject_Vectorcall`
/// before 3.12) builds a tuple per call.
pub fn call_one<'py>(
    callable: &Bound<'py, PyAny>,
    arg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    // SAFETY: the thread is attached (`py`); `callable` and `arg` are live for the call; the argument list ends
    // with the NULL the variadic function requires; the result is a new reference or NULL with an exception set
    unsafe {
        let r = sys::PyObject_CallFunctionObjArgs(
            callable.as_ptr(),
            arg.as_ptr(),
            null_mut::<sys::PyObject>(),
        );
        Bound::from_owned_ptr_or_err(py, r)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// the interpreter

/// The interpreter's module dict (`sys.modules` as the import system sees it), without importing anything.
pub fn modules(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // SAFETY: the thread is attached (`py`); the result is a borrowed reference owned by the interpreter (or
    // NULL during finalization), which we take a new reference to at once
    let m = unsafe { Bound::from_borrowed_ptr_or_opt(py, sys::PyImport_GetModuleDict()) };
    m.ok_or_else(|| errors::system_error("the interpreter has no module dict"))?
        .cast_into::<PyDict>()
        .map_err(|_| errors::system_error("the interpreter's module dict is not a dict"))
}

/// Whether the interpreter is initialized and not finalized: callable from any thread, attached or not (a
/// thread of ours that must not attach to a finalizing interpreter asks first).
pub fn interpreter_alive() -> bool {
    // SAFETY: Py_IsInitialized only reads a flag of the runtime; it may be called without an attached thread
    unsafe { sys::Py_IsInitialized() != 0 }
}

/// Whether the caller holds the only reference to `obj` (dropping it frees it). Lets a chain of objects be
/// freed one link at a time instead of by a recursion as deep as the chain.
pub fn sole_reference(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a live object and the thread is attached (`Bound`); Py_REFCNT only reads its count
    unsafe { sys::Py_REFCNT(obj.as_ptr()) == 1 }
}

// ---------------------------------------------------------------------------------------------------------------
// a lock-free object slot

/// At most one owned object reference, kept in a `frozen` pyclass and used only by attached threads. The
/// interpreter serializes attached threads (the stable ABI has no free-threaded build) and nothing between a
/// read and the write after it can run Python code, so plain loads and stores suffice: no lock and no
/// read-modify-write on the path of every span. [`Slot::visit`] shows the object to the cyclic collector.
pub struct Slot(UnsafeCell<Option<Py<PyAny>>>);

// SAFETY: the cell is read and written only by attached threads (`take` and `put` take a `Python` token, `visit`
// runs inside the collector, `clear` inside `tp_clear`), which the interpreter serializes; no reference into the
// cell outlives one of these calls, and none of them runs Python code while it holds one.
unsafe impl Sync for Slot {}

impl Slot {
    pub const fn new() -> Self {
        Slot(UnsafeCell::new(None))
    }

    /// Replaces the object, returning the one the slot held.
    fn swap(&self, new: Option<Py<PyAny>>) -> Option<Py<PyAny>> {
        // SAFETY: see the `Sync` impl; the old object is returned, not dropped, while the cell is accessed
        unsafe { std::mem::replace(&mut *self.0.get(), new) }
    }

    /// Stores `obj`, releasing what the slot held once `obj` is in (freeing it may run Python code, which may use
    /// the slot).
    pub fn put(&self, obj: Bound<'_, PyAny>) {
        drop(self.swap(Some(obj.unbind())));
    }

    /// Takes the object out, leaving the slot empty.
    pub fn take<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.swap(None).map(|o| o.into_bound(py))
    }

    /// Visits the object, for the `__traverse__` of the class that holds the slot.
    pub fn visit(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        // SAFETY: see the `Sync` impl (the collector runs on an attached thread, between bytecodes)
        visit.call(unsafe { &*self.0.get() })
    }

    /// Releases the object, for the `__clear__` of the class that holds the slot.
    pub fn clear(&self) {
        drop(self.swap(None));
    }
}
