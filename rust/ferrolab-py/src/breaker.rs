//! Bindings of `ferrolab_core::breaker`: ``fl.CircuitBreaker``, the functions it decorates and its awaitables.
//!
//! The hot paths are plain C slots and METH_FASTCALL methods, with no PyO3 trampoline, no kwargs dict built twice and
//! no Python frame:
//!
//! * a decorated function is a [`BreakerFunction`](FnObj) whose `tp_call` admits the call with one atomic load,
//!   calls the wrapped function with the caller's own argument tuple and dict, and reports the outcome;
//! * an async call (``await breaker.acall(f)``, a decorated ``async def``) is a [`BreakerCall`](CallObj) awaitable
//!   with `am_send`: awaiting it adds no coroutine layer, and its result comes back without a StopIteration;
//! * ``with breaker:`` keeps the call's permit in a context variable (per thread and per asyncio task), so the
//!   same breaker can guard many blocks at once; ``__aenter__``/``__aexit__`` return already-completed awaitables.
//!
//! Permits are never held across a lock; a half-open trial that is cancelled (CancelledError, GeneratorExit,
//! KeyboardInterrupt...) or abandoned (its awaitable or context entry dropped) gives its permit back.

use crate::errors::{CircuitOpenError, IntoPyResult};
use ferrolab_core::breaker::{
    self as core, Admission, Breaker, Config, MetricsMode, Outcome, Rejection, State, Ticket,
    Transition,
};
use pyo3::exceptions::{PyRuntimeError, PySystemError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyString, PyTuple, PyType, PyWeakrefReference};
use pyo3::{intern, PyTraverseError, PyVisit};
use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr};
use std::panic::AssertUnwindSafe;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

type Obj = *mut ffi::PyObject;

/// A Python error is set.
struct Raised;

// ---------------------------------------------------------------------------------------------------------------
// The shared state of one breaker

#[derive(Default)]
struct Refs {
    fallback: Option<Py<PyAny>>,
    clock: Option<Py<PyAny>>,
    listeners: Vec<Py<PyAny>>,
    last_failure: Option<Py<PyAny>>,
    /// What `__aenter__` returns: an awaitable that completes with the breaker, reusable.
    aenter: Option<Py<PyAny>>,
}

/// Everything a breaker's Python objects share (the `CircuitBreaker`, its decorated functions, its awaitables).
pub struct Inner {
    core: Arc<Breaker>,
    name: Py<PyString>,
    /// The messages of a rejection while open, half-open and forced open.
    msgs: [Py<PyString>; 3],
    /// Exception classes recorded as failures (a tuple) and whether it is exactly `(Exception,)`.
    record: Py<PyAny>,
    record_all: bool,
    ignore: Option<Py<PyAny>>,
    has_clock: bool,
    has_fallback: bool,
    /// The Python objects the garbage collector may have to clear (they can refer back to the breaker).
    refs: Mutex<Refs>,
    /// `contextvars.ContextVar` of the `with` entries, its bound `get` and `set`, and `(None,)`.
    var: Py<PyAny>,
    var_get: Py<PyAny>,
    var_set: Py<PyAny>,
    none_args: Py<PyTuple>,
}

fn state_str(py: Python<'_>, s: State) -> Bound<'_, PyString> {
    match s {
        State::Closed => intern!(py, "closed").clone(),
        State::Open => intern!(py, "open").clone(),
        State::HalfOpen => intern!(py, "half_open").clone(),
        State::ForcedOpen => intern!(py, "forced_open").clone(),
        State::Disabled => intern!(py, "disabled").clone(),
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Refs> {
        self.refs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The injected clock's time (`None`: the core reads its native clock).
    #[inline]
    fn now(&self, py: Python<'_>) -> Result<Option<f64>, Raised> {
        if !self.has_clock {
            return Ok(None);
        }
        self.read_clock(py).map(Some)
    }

    #[cold]
    fn read_clock(&self, py: Python<'_>) -> Result<f64, Raised> {
        let clock = self.lock().clock.as_ref().map(|c| c.bind(py).clone());
        let Some(clock) = clock else {
            // cleared by the garbage collector: the breaker is unreachable anyway
            return Ok(core::monotonic());
        };
        let r = clock.call0().and_then(|t| t.extract::<f64>());
        match r {
            Ok(t) if t.is_finite() => Ok(t),
            Ok(t) => {
                PyValueError::new_err(format!(
                    "CircuitBreaker '{}': clock() returned {t}; expected a finite number of seconds",
                    self.core.name()
                ))
                .restore(py);
                Err(Raised)
            }
            Err(e) => {
                e.restore(py);
                Err(Raised)
            }
        }
    }

    /// How an exception of class (or instance) `t` counts.
    unsafe fn classify(&self, t: Obj) -> Outcome {
        unsafe {
            if let Some(ig) = &self.ignore {
                if ffi::PyErr_GivenExceptionMatches(t, ig.as_ptr()) != 0 {
                    return Outcome::Ignored;
                }
            }
            if ffi::PyErr_GivenExceptionMatches(t, ffi::PyExc_Exception) == 0 {
                // BaseException only: CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit
                return Outcome::Cancelled;
            }
            if self.record_all || ffi::PyErr_GivenExceptionMatches(t, self.record.as_ptr()) != 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            }
        }
    }

    fn set_last_failure(&self, exc: &Bound<'_, PyAny>) {
        let old = self.lock().last_failure.replace(exc.clone().unbind());
        // dropped outside the lock (and now, not later: the thread may not be known to PyO3 as attached)
        drop(old.map(|o| o.into_bound(exc.py())));
    }

    fn last_failure<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.lock()
            .last_failure
            .as_ref()
            .map(|e| e.bind(py).clone())
    }

    fn fallback<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        if !self.has_fallback {
            return None;
        }
        self.lock().fallback.as_ref().map(|f| f.bind(py).clone())
    }

    /// Calls the listeners (outside any lock; no Python error may be set). A listener's exception is reported with
    /// `sys.unraisablehook` and does not stop the others or the call.
    fn fire(&self, py: Python<'_>, breaker: Obj, tr: Transition) {
        let ls: Vec<Bound<'_, PyAny>> = self
            .lock()
            .listeners
            .iter()
            .map(|l| l.bind(py).clone())
            .collect();
        if ls.is_empty() {
            return;
        }
        let b = if breaker.is_null() {
            py.None().into_bound(py)
        } else {
            unsafe { Bound::from_borrowed_ptr(py, breaker) }
        };
        let (from, to) = (state_str(py, tr.from), state_str(py, tr.to));
        for l in ls {
            if let Err(e) = l.call1((b.clone(), from.clone(), to.clone())) {
                e.write_unraisable(py, Some(&l));
            }
        }
    }

    #[inline]
    fn fire_opt(&self, py: Python<'_>, breaker: Obj, tr: Option<Transition>) {
        if let Some(tr) = tr {
            self.fire(py, breaker, tr);
        }
    }

    /// Raises `CircuitOpenError` for a rejection.
    #[cold]
    fn raise_open(&self, py: Python<'_>, r: Rejection) {
        if let Err(e) = self.open_error(py, r) {
            e.restore(py);
        }
    }

    fn open_error(&self, py: Python<'_>, r: Rejection) -> PyResult<()> {
        // a message made once per breaker: `__str__` adds the retry time when the exception is printed
        let msg = match r.state {
            State::Open => self.msgs[0].bind(py),
            State::HalfOpen => self.msgs[1].bind(py),
            _ => self.msgs[2].bind(py),
        };
        let ty = py.get_type::<CircuitOpenError>();
        let retry = match r.retry_after {
            Some(t) => PyFloat::new(py, t).into_any(),
            None => py.None().into_bound(py),
        };
        let lf = self.last_failure(py);
        let lf_ptr = lf
            .as_ref()
            .map_or(unsafe { ffi::Py_None() }, |e| e.as_ptr());
        // (message, name, retry_after, last_failure): the attributes read the args, so raising builds no
        // instance dict
        let exc = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyObject_CallFunctionObjArgs(
                    ty.as_ptr(),
                    msg.as_ptr(),
                    self.name.as_ptr(),
                    retry.as_ptr(),
                    lf_ptr,
                    ptr::null_mut::<ffi::PyObject>(),
                ),
            )?
        };
        if let Some(lf) = lf {
            // the failure that opened the circuit is the explicit cause of the rejection
            unsafe { ffi::PyException_SetCause(exc.as_ptr(), lf.into_ptr()) };
        }
        unsafe { ffi::PyErr_SetObject(ty.as_ptr(), exc.as_ptr()) };
        Ok(())
    }

    /// A rejected call: the fallback's result, or NULL with CircuitOpenError set.
    #[cold]
    unsafe fn reject(&self, py: Python<'_>, r: Rejection, call: impl FnOnce(Obj) -> Obj) -> Obj {
        match self.fallback(py) {
            Some(fb) => call(fb.as_ptr()),
            None => {
                self.raise_open(py, r);
                ptr::null_mut()
            }
        }
    }

    /// Reports a call that raised (the error is set on entry and again on return) and fires the listeners.
    #[cold]
    unsafe fn finish_error(&self, py: Python<'_>, breaker: Obj, ticket: Ticket) {
        unsafe {
            let (mut t, mut v, mut tb) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
            ffi::PyErr_Fetch(&mut t, &mut v, &mut tb);
            let mut outcome = if t.is_null() {
                Outcome::Cancelled
            } else {
                self.classify(t)
            };
            if outcome == Outcome::Failure {
                ffi::PyErr_NormalizeException(&mut t, &mut v, &mut tb);
                if !tb.is_null() && !v.is_null() {
                    ffi::PyException_SetTraceback(v, tb);
                }
                if !v.is_null() {
                    self.set_last_failure(&Bound::from_borrowed_ptr(py, v));
                }
            }
            let now = match self.now(py) {
                Ok(n) => n,
                Err(Raised) => {
                    ffi::PyErr_WriteUnraisable(ptr::null_mut());
                    outcome = Outcome::Cancelled;
                    None
                }
            };
            let tr = self.core.complete(ticket, outcome, now);
            self.fire_opt(py, breaker, tr);
            ffi::PyErr_Restore(t, v, tb);
        }
    }

    /// Reports a call that returned. `Err`: the injected clock raised (the permit went back).
    #[inline]
    fn finish_ok(&self, py: Python<'_>, breaker: Obj, ticket: Ticket) -> Result<(), Raised> {
        let now = match self.now(py) {
            Ok(n) => n,
            Err(Raised) => {
                self.core.complete(ticket, Outcome::Cancelled, None);
                return Err(Raised);
            }
        };
        let tr = self.core.complete(ticket, Outcome::Success, now);
        self.fire_opt(py, breaker, tr);
        Ok(())
    }

    /// Admits a call (firing the open -> half-open listeners); `None` and the error set when the clock raised.
    #[inline]
    fn admit(&self, py: Python<'_>, breaker: Obj) -> Result<Admission, Raised> {
        let now = self.now(py)?;
        let (a, tr) = self.core.acquire(now);
        self.fire_opt(py, breaker, tr);
        Ok(a)
    }
}

/// Guards one synchronous call: `call(func)` (or `call(fallback)` when rejected) under the breaker.
#[inline]
unsafe fn guarded(
    py: Python<'_>,
    inner: &Inner,
    breaker: Obj,
    func: Obj,
    call: impl Fn(Obj) -> Obj,
) -> Obj {
    unsafe {
        let ticket = match inner.admit(py, breaker) {
            Ok(Admission::Admitted(t)) => t,
            Ok(Admission::Rejected(r)) => return inner.reject(py, r, call),
            Err(Raised) => return ptr::null_mut(),
        };
        // a panic below (there is none by design) would still give the permit back
        let guard = TicketGuard {
            inner,
            ticket: Some(ticket),
        };
        let res = call(func);
        let ticket = guard.defuse();
        if !res.is_null() {
            if inner.finish_ok(py, breaker, ticket).is_err() {
                ffi::Py_DECREF(res);
                return ptr::null_mut();
            }
            return res;
        }
        inner.finish_error(py, breaker, ticket);
        ptr::null_mut()
    }
}

/// `guarded` for `func(*args, **kwargs)` given as a tuple and a dict.
#[inline]
unsafe fn guarded_call(
    py: Python<'_>,
    inner: &Inner,
    breaker: Obj,
    func: Obj,
    args: Obj,
    kwargs: Obj,
) -> Obj {
    unsafe {
        guarded(py, inner, breaker, func, |c| {
            ffi::PyObject_Call(c, args, kwargs)
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Vectorcall: the arguments of the caller go to the guarded function as they came (no tuple, no dict)

type VectorcallFn = unsafe extern "C" fn(Obj, *const Obj, usize, Obj) -> Obj;
const VECTORCALL_ARGUMENTS_OFFSET: usize = 1 << (usize::BITS - 1);
/// `Py_TPFLAGS_HAVE_VECTORCALL` (the same bit since 3.8; in the limited API from 3.12).
const TPFLAGS_HAVE_VECTORCALL: u64 = 1 << 11;

/// `PyObject_Vectorcall`: in the stable ABI only from Python 3.12, but exported by 3.11 too, so it is looked up at
/// run time. Without it (Windows with 3.11) calls take the tuple path.
static PY_VECTORCALL: std::sync::OnceLock<Option<VectorcallFn>> = std::sync::OnceLock::new();

fn find_vectorcall() -> Option<VectorcallFn> {
    if std::env::var_os("FERROLAB_BREAKER_NO_VECTORCALL").is_some_and(|v| v == "1") {
        return None; // the fallback path, for tests
    }
    #[cfg(unix)]
    {
        // SAFETY: dlsym with a NUL-terminated name; the symbol, when present, has this signature
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"PyObject_Vectorcall".as_ptr()) };
        if !p.is_null() {
            return Some(unsafe { std::mem::transmute::<*mut c_void, VectorcallFn>(p) });
        }
    }
    None
}

/// `func(*args[..nargs], **dict(zip(kwnames, args[nargs..])))`.
#[inline]
unsafe fn call_vector(func: Obj, args: *const Obj, nargsf: usize, kwnames: Obj) -> Obj {
    unsafe {
        if let Some(Some(vc)) = PY_VECTORCALL.get() {
            return vc(func, args, nargsf, kwnames);
        }
        let nargs = (nargsf & !VECTORCALL_ARGUMENTS_OFFSET) as isize;
        let Some((t, d)) = pack(args, 0, nargs, kwnames) else {
            return ptr::null_mut();
        };
        let r = ffi::PyObject_Call(func, t, d);
        ffi::Py_DECREF(t);
        if !d.is_null() {
            ffi::Py_DECREF(d);
        }
        r
    }
}

/// Gives a ticket back as cancelled when dropped (unwinding) before it was reported.
struct TicketGuard<'a> {
    inner: &'a Inner,
    ticket: Option<Ticket>,
}

impl TicketGuard<'_> {
    #[inline]
    fn defuse(mut self) -> Ticket {
        self.ticket.take().expect("ticket present until defused")
    }
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.inner.core.complete(t, Outcome::Cancelled, None);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// C-slot helpers

/// Runs the body of a C slot with the GIL held; a panic becomes SystemError.
#[inline(always)]
unsafe fn trap<R>(on_panic: R, f: impl FnOnce(Python<'_>) -> R) -> R {
    // SAFETY: CPython calls slots and methods with the GIL held
    let py = unsafe { Python::assume_attached() };
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(py))) {
        Ok(r) => r,
        Err(_) => {
            PySystemError::new_err("ferrolab circuit breaker: internal panic").restore(py);
            on_panic
        }
    }
}

#[inline]
unsafe fn incref(o: Obj) -> Obj {
    if !o.is_null() {
        unsafe { ffi::Py_INCREF(o) };
    }
    o
}

#[inline]
unsafe fn clear(slot: &mut Obj) {
    let o = std::mem::replace(slot, ptr::null_mut());
    if !o.is_null() {
        unsafe { ffi::Py_DECREF(o) };
    }
}

#[inline]
unsafe fn visit(o: Obj, visit: ffi::visitproc, arg: *mut c_void) -> c_int {
    if o.is_null() {
        0
    } else {
        unsafe { visit(o, arg) }
    }
}

unsafe fn py_none() -> Obj {
    unsafe { incref(ffi::Py_None()) }
}

/// Sets `StopIteration(value)` (a tuple or exception value is wrapped, as generators do).
unsafe fn set_stop_iteration(value: Obj) {
    unsafe {
        if ffi::PyTuple_Check(value) != 0 || ffi::PyExceptionInstance_Check(value) != 0 {
            let e = ffi::PyObject_CallFunctionObjArgs(
                ffi::PyExc_StopIteration,
                value,
                ptr::null_mut::<ffi::PyObject>(),
            );
            if !e.is_null() {
                ffi::PyErr_SetObject(ffi::PyExc_StopIteration, e);
                ffi::Py_DECREF(e);
            }
        } else {
            ffi::PyErr_SetObject(ffi::PyExc_StopIteration, value);
        }
    }
}

/// The iterator to drive when awaiting `obj`: `obj` itself when it has `am_send` (coroutines, generators, our own
/// awaitables), else `obj.__await__()`. NULL with TypeError when `obj` is not awaitable.
unsafe fn await_iter(py: Python<'_>, obj: Obj) -> Obj {
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        if !ffi::PyType_GetSlot(tp, ffi::Py_am_send).is_null() {
            return incref(obj);
        }
        let aw = ffi::PyType_GetSlot(tp, ffi::Py_am_await);
        if aw.is_null() {
            let tn = Bound::from_borrowed_ptr(py, obj)
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            PyTypeError::new_err(format!(
                "circuit breaker: the guarded function returned a '{tn}' object, which can't be awaited \
                 (use call() or a plain decorator for synchronous functions)"
            ))
            .restore(py);
            return ptr::null_mut();
        }
        let aw: ffi::unaryfunc = std::mem::transmute::<*mut c_void, ffi::unaryfunc>(aw);
        let it = aw(obj);
        if !it.is_null() && ffi::PyIter_Check(it) == 0 {
            ffi::Py_DECREF(it);
            PyTypeError::new_err("__await__() returned a non-iterator").restore(py);
            return ptr::null_mut();
        }
        it
    }
}

unsafe fn is_awaitable(obj: Obj) -> bool {
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        !ffi::PyType_GetSlot(tp, ffi::Py_am_send).is_null()
            || !ffi::PyType_GetSlot(tp, ffi::Py_am_await).is_null()
    }
}

/// Frees an instance of one of our heap types.
unsafe fn free_instance(o: Obj) {
    unsafe {
        let tp = ffi::Py_TYPE(o);
        let free = ffi::PyType_GetSlot(tp, ffi::Py_tp_free);
        if !free.is_null() {
            let free: ffi::freefunc = std::mem::transmute::<*mut c_void, ffi::freefunc>(free);
            free(o.cast());
        }
        ffi::Py_DECREF(tp.cast());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// BreakerFunction: what `@breaker` returns

#[repr(C)]
struct FnObj {
    ob_base: ffi::PyObject,
    /// Where CPython finds this object's vectorcall function (`__vectorcalloffset__`).
    vectorcall: Option<VectorcallFn>,
    dict: Obj,
    weaklist: Obj,
    breaker: Obj,
    func: Obj,
    inner: *const Inner,
    is_async: bool,
}

static FN_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());
static CALL_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());
static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

unsafe fn new_fn<'py>(
    py: Python<'py>,
    breaker: &Bound<'py, CircuitBreaker>,
    func: &Bound<'py, PyAny>,
    is_async: bool,
) -> PyResult<Bound<'py, PyAny>> {
    unsafe {
        let tp = FN_TYPE.load(Ordering::Acquire);
        let o = ffi::PyType_GenericAlloc(tp, 0);
        if o.is_null() {
            return Err(PyErr::fetch(py));
        }
        let f = o.cast::<FnObj>();
        let inner = Arc::into_raw(breaker.get().inner.clone());
        ptr::addr_of_mut!((*f).vectorcall).write(Some(fn_vectorcall as VectorcallFn));
        ptr::addr_of_mut!((*f).dict).write(ptr::null_mut());
        ptr::addr_of_mut!((*f).weaklist).write(ptr::null_mut());
        ptr::addr_of_mut!((*f).breaker).write(incref(breaker.as_ptr()));
        ptr::addr_of_mut!((*f).func).write(incref(func.as_ptr()));
        ptr::addr_of_mut!((*f).inner).write(inner);
        ptr::addr_of_mut!((*f).is_async).write(is_async);
        Ok(Bound::from_owned_ptr(py, o))
    }
}

unsafe extern "C" fn fn_call(o: Obj, args: Obj, kwargs: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let f = &*(o as *const FnObj);
            if f.func.is_null() {
                PyRuntimeError::new_err("circuit breaker function was cleared").restore(py);
                return ptr::null_mut();
            }
            if f.is_async {
                return new_call(py, f.inner, f.breaker, f.func, args, kwargs);
            }
            guarded_call(py, &*f.inner, f.breaker, f.func, args, kwargs)
        })
    }
}

unsafe extern "C" fn fn_vectorcall(o: Obj, args: *const Obj, nargsf: usize, kwnames: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let f = &*(o as *const FnObj);
            if f.func.is_null() {
                PyRuntimeError::new_err("circuit breaker function was cleared").restore(py);
                return ptr::null_mut();
            }
            if f.is_async {
                let nargs = (nargsf & !VECTORCALL_ARGUMENTS_OFFSET) as isize;
                let Some((t, d)) = pack(args, 0, nargs, kwnames) else {
                    return ptr::null_mut();
                };
                return new_call_owned(py, f.inner, f.breaker, f.func, t, d);
            }
            guarded(py, &*f.inner, f.breaker, f.func, |c| {
                call_vector(c, args, nargsf, kwnames)
            })
        })
    }
}

unsafe extern "C" fn fn_descr_get(o: Obj, obj: Obj, _tp: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            if obj.is_null() || obj == ffi::Py_None() {
                return incref(o);
            }
            // a bound method, like a function's
            let mt = match METHOD_TYPE.get_or_try_init(py, || {
                Ok::<_, PyErr>(py.import("types")?.getattr("MethodType")?.unbind())
            }) {
                Ok(m) => m,
                Err(e) => {
                    e.restore(py);
                    return ptr::null_mut();
                }
            };
            ffi::PyObject_CallFunctionObjArgs(mt.as_ptr(), o, obj, ptr::null_mut::<ffi::PyObject>())
        })
    }
}

unsafe extern "C" fn fn_repr(o: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let f = &*(o as *const FnObj);
            let func = if f.func.is_null() {
                "<cleared>".to_string()
            } else {
                Bound::from_borrowed_ptr(py, f.func)
                    .repr()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| "?".into())
            };
            let s = format!(
                "<circuit breaker '{}' guarding {func}>",
                (*f.inner).core.name()
            );
            PyString::new(py, &s).into_ptr()
        })
    }
}

unsafe extern "C" fn fn_traverse(o: Obj, v: ffi::visitproc, arg: *mut c_void) -> c_int {
    unsafe {
        let f = &*(o as *const FnObj);
        for x in [f.dict, f.breaker, f.func] {
            let r = visit(x, v, arg);
            if r != 0 {
                return r;
            }
        }
        0
    }
}

unsafe extern "C" fn fn_clear(o: Obj) -> c_int {
    unsafe {
        let f = &mut *(o as *mut FnObj);
        clear(&mut f.dict);
        clear(&mut f.breaker);
        clear(&mut f.func);
        0
    }
}

unsafe extern "C" fn fn_dealloc(o: Obj) {
    unsafe {
        ffi::PyObject_GC_UnTrack(o.cast());
        let f = &mut *(o as *mut FnObj);
        if !f.weaklist.is_null() {
            ffi::PyObject_ClearWeakRefs(o);
        }
        fn_clear(o);
        if !f.inner.is_null() {
            drop(Arc::from_raw(f.inner));
            f.inner = ptr::null();
        }
        free_instance(o);
    }
}

unsafe extern "C" fn fn_get_breaker(o: Obj, _c: *mut c_void) -> Obj {
    unsafe {
        let f = &*(o as *const FnObj);
        if f.breaker.is_null() {
            py_none()
        } else {
            incref(f.breaker)
        }
    }
}

unsafe extern "C" fn fn_reduce(o: Obj, _a: Obj) -> Obj {
    // pickled by reference, like a function: the qualified name in its module
    unsafe { ffi::PyObject_GetAttrString(o, c"__qualname__".as_ptr()) }
}

// ---------------------------------------------------------------------------------------------------------------
// BreakerCall: the awaitable of an async guarded call (and the completed awaitables of __aenter__/__aexit__)

const NEW: u8 = 0;
const RUNNING: u8 = 1;
const FALLBACK: u8 = 2;
const VALUE: u8 = 3;
const DONE: u8 = 4;
/// Completes with its value every time it is awaited (the results of __aenter__ and __aexit__).
const CONST: u8 = 5;

#[repr(C)]
struct CallObj {
    ob_base: ffi::PyObject,
    breaker: Obj,
    inner: *const Inner,
    func: Obj,
    args: Obj,
    kwargs: Obj,
    /// What is being awaited (the coroutine), once started.
    iter: Obj,
    /// The result of a completed awaitable (VALUE).
    value: Obj,
    ticket: Option<Ticket>,
    phase: u8,
}

unsafe fn alloc_call(py: Python<'_>) -> *mut CallObj {
    unsafe {
        let o = ffi::PyType_GenericAlloc(CALL_TYPE.load(Ordering::Acquire), 0);
        if o.is_null() {
            let _ = py;
            return ptr::null_mut();
        }
        let c = o.cast::<CallObj>();
        ptr::addr_of_mut!((*c).breaker).write(ptr::null_mut());
        ptr::addr_of_mut!((*c).inner).write(ptr::null());
        ptr::addr_of_mut!((*c).func).write(ptr::null_mut());
        ptr::addr_of_mut!((*c).args).write(ptr::null_mut());
        ptr::addr_of_mut!((*c).kwargs).write(ptr::null_mut());
        ptr::addr_of_mut!((*c).iter).write(ptr::null_mut());
        ptr::addr_of_mut!((*c).value).write(ptr::null_mut());
        ptr::addr_of_mut!((*c).ticket).write(None);
        ptr::addr_of_mut!((*c).phase).write(NEW);
        c
    }
}

/// A not-yet-started guarded call of `func(*args, **kwargs)` (`kwargs` may still be changed by the caller: copied).
unsafe fn new_call(
    py: Python<'_>,
    inner: *const Inner,
    breaker: Obj,
    func: Obj,
    args: Obj,
    kwargs: Obj,
) -> Obj {
    unsafe {
        let kw = if kwargs.is_null() {
            ptr::null_mut()
        } else {
            let d = ffi::PyDict_Copy(kwargs);
            if d.is_null() {
                return ptr::null_mut();
            }
            d
        };
        new_call_owned(py, inner, breaker, func, incref(args), kw)
    }
}

/// A not-yet-started guarded call; takes over the references to `args` and `kwargs`.
unsafe fn new_call_owned(
    py: Python<'_>,
    inner: *const Inner,
    breaker: Obj,
    func: Obj,
    args: Obj,
    kwargs: Obj,
) -> Obj {
    unsafe {
        let c = alloc_call(py);
        if c.is_null() {
            let (mut a, mut k) = (args, kwargs);
            clear(&mut a);
            clear(&mut k);
            return ptr::null_mut();
        }
        Arc::increment_strong_count(inner);
        (*c).inner = inner;
        (*c).breaker = incref(breaker);
        (*c).func = incref(func);
        (*c).args = args;
        (*c).kwargs = kwargs;
        c.cast()
    }
}

/// An awaitable that completes at once with `value`.
unsafe fn done_call(py: Python<'_>, value: Obj) -> Obj {
    unsafe {
        let c = alloc_call(py);
        if c.is_null() {
            return ptr::null_mut();
        }
        (*c).value = incref(value);
        (*c).phase = VALUE;
        c.cast()
    }
}

/// Admits and starts the call: RUNNING (the coroutine to drive), FALLBACK (the fallback's awaitable), VALUE (the
/// fallback's plain result) or an error (DONE).
unsafe fn call_start(py: Python<'_>, c: &mut CallObj) -> Result<(), Raised> {
    unsafe {
        c.phase = DONE;
        if c.inner.is_null() || c.func.is_null() {
            PyRuntimeError::new_err("circuit breaker call was cleared").restore(py);
            return Err(Raised);
        }
        let inner = &*c.inner;
        match inner.admit(py, c.breaker)? {
            Admission::Rejected(r) => {
                let Some(fb) = inner.fallback(py) else {
                    inner.raise_open(py, r);
                    return Err(Raised);
                };
                let res = ffi::PyObject_Call(fb.as_ptr(), c.args, c.kwargs);
                if res.is_null() {
                    return Err(Raised);
                }
                if is_awaitable(res) {
                    let it = await_iter(py, res);
                    ffi::Py_DECREF(res);
                    if it.is_null() {
                        return Err(Raised);
                    }
                    c.iter = it;
                    c.phase = FALLBACK;
                } else {
                    c.value = res;
                    c.phase = VALUE;
                }
                Ok(())
            }
            Admission::Admitted(t) => {
                let guard = TicketGuard {
                    inner,
                    ticket: Some(t),
                };
                let res = ffi::PyObject_Call(c.func, c.args, c.kwargs);
                let t = guard.defuse();
                if res.is_null() {
                    inner.finish_error(py, c.breaker, t);
                    return Err(Raised);
                }
                let it = await_iter(py, res);
                ffi::Py_DECREF(res);
                if it.is_null() {
                    inner.core.complete(t, Outcome::Cancelled, None);
                    return Err(Raised);
                }
                c.iter = it;
                c.ticket = Some(t);
                c.phase = RUNNING;
                Ok(())
            }
        }
    }
}

/// Sends `arg` into the running awaitable and accounts for its end.
unsafe fn call_step(py: Python<'_>, c: &mut CallObj, arg: Obj, out: *mut Obj) -> ffi::PySendResult {
    unsafe {
        let mut res: Obj = ptr::null_mut();
        let st = ffi::PyIter_Send(c.iter, arg, &mut res);
        match st {
            ffi::PySendResult::PYGEN_NEXT => {
                *out = res;
                st
            }
            ffi::PySendResult::PYGEN_RETURN => {
                c.phase = DONE;
                clear(&mut c.iter);
                if let Some(t) = c.ticket.take() {
                    if (*c.inner).finish_ok(py, c.breaker, t).is_err() {
                        ffi::Py_DECREF(res);
                        *out = ptr::null_mut();
                        return ffi::PySendResult::PYGEN_ERROR;
                    }
                }
                *out = res;
                st
            }
            ffi::PySendResult::PYGEN_ERROR => {
                c.phase = DONE;
                clear(&mut c.iter);
                if let Some(t) = c.ticket.take() {
                    (*c.inner).finish_error(py, c.breaker, t);
                }
                *out = ptr::null_mut();
                st
            }
        }
    }
}

unsafe fn call_send_impl(py: Python<'_>, o: Obj, arg: Obj, out: *mut Obj) -> ffi::PySendResult {
    unsafe {
        let c = &mut *(o as *mut CallObj);
        *out = ptr::null_mut();
        match c.phase {
            NEW => {
                if !arg.is_null() && arg != ffi::Py_None() {
                    PyTypeError::new_err(
                        "can't send non-None value to a just-started circuit breaker call",
                    )
                    .restore(py);
                    c.phase = DONE;
                    return ffi::PySendResult::PYGEN_ERROR;
                }
                if call_start(py, c).is_err() {
                    return ffi::PySendResult::PYGEN_ERROR;
                }
                if c.phase == VALUE {
                    c.phase = DONE;
                    *out = std::mem::replace(&mut c.value, ptr::null_mut());
                    return ffi::PySendResult::PYGEN_RETURN;
                }
                call_step(py, c, ffi::Py_None(), out)
            }
            RUNNING | FALLBACK => {
                let arg = if arg.is_null() { ffi::Py_None() } else { arg };
                call_step(py, c, arg, out)
            }
            VALUE => {
                c.phase = DONE;
                let v = std::mem::replace(&mut c.value, ptr::null_mut());
                *out = if v.is_null() { py_none() } else { v };
                ffi::PySendResult::PYGEN_RETURN
            }
            CONST => {
                *out = if c.value.is_null() {
                    py_none()
                } else {
                    incref(c.value)
                };
                ffi::PySendResult::PYGEN_RETURN
            }
            _ => {
                PyRuntimeError::new_err("cannot reuse an already awaited circuit breaker call")
                    .restore(py);
                ffi::PySendResult::PYGEN_ERROR
            }
        }
    }
}

unsafe extern "C" fn call_am_send(o: Obj, arg: Obj, out: *mut Obj) -> ffi::PySendResult {
    unsafe {
        trap(ffi::PySendResult::PYGEN_ERROR, |py| {
            call_send_impl(py, o, arg, out)
        })
    }
}

unsafe extern "C" fn call_iternext(o: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let mut r: Obj = ptr::null_mut();
            match call_send_impl(py, o, ffi::Py_None(), &mut r) {
                ffi::PySendResult::PYGEN_NEXT => r,
                ffi::PySendResult::PYGEN_RETURN => {
                    if r != ffi::Py_None() {
                        set_stop_iteration(r);
                    }
                    // NULL without an exception set also means StopIteration (value None)
                    ffi::Py_DECREF(r);
                    ptr::null_mut()
                }
                ffi::PySendResult::PYGEN_ERROR => ptr::null_mut(),
            }
        })
    }
}

unsafe extern "C" fn call_send_meth(o: Obj, arg: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let mut r: Obj = ptr::null_mut();
            match call_send_impl(py, o, arg, &mut r) {
                ffi::PySendResult::PYGEN_NEXT => r,
                ffi::PySendResult::PYGEN_RETURN => {
                    set_stop_iteration(r);
                    ffi::Py_DECREF(r);
                    ptr::null_mut()
                }
                ffi::PySendResult::PYGEN_ERROR => ptr::null_mut(),
            }
        })
    }
}

/// Raises `typ` (a class or an instance) with `val`, like `generator.throw`.
unsafe fn raise_thrown(py: Python<'_>, typ: Obj, val: Obj) {
    unsafe {
        let no_val = val.is_null() || val == ffi::Py_None();
        if ffi::PyExceptionInstance_Check(typ) != 0 {
            if !no_val {
                PyTypeError::new_err("instance exception may not have a separate value")
                    .restore(py);
                return;
            }
            ffi::PyErr_SetObject(ffi::Py_TYPE(typ).cast(), typ);
        } else if ffi::PyExceptionClass_Check(typ) != 0 {
            if no_val {
                ffi::PyErr_SetNone(typ);
            } else {
                ffi::PyErr_SetObject(typ, val);
            }
        } else {
            PyTypeError::new_err(
                "exceptions must be classes or instances deriving from BaseException",
            )
            .restore(py);
        }
    }
}

unsafe extern "C" fn call_throw(o: Obj, args: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let c = &mut *(o as *mut CallObj);
            let n = ffi::PyTuple_Size(args);
            if !(1..=3).contains(&n) {
                PyTypeError::new_err("throw() takes 1 to 3 arguments").restore(py);
                return ptr::null_mut();
            }
            if c.phase == RUNNING || c.phase == FALLBACK {
                let meth = ffi::PyObject_GetAttrString(c.iter, c"throw".as_ptr());
                if !meth.is_null() {
                    let r = ffi::PyObject_Call(meth, args, ptr::null_mut());
                    ffi::Py_DECREF(meth);
                    if !r.is_null() {
                        return r; // the awaited coroutine caught it and yielded
                    }
                    c.phase = DONE;
                    clear(&mut c.iter);
                    if let Some(t) = c.ticket.take() {
                        if ffi::PyErr_ExceptionMatches(ffi::PyExc_StopIteration) != 0 {
                            // it caught it and returned
                            let (mut et, mut ev, mut etb) =
                                (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
                            ffi::PyErr_Fetch(&mut et, &mut ev, &mut etb);
                            let ok = (*c.inner).finish_ok(py, c.breaker, t);
                            if ok.is_ok() {
                                ffi::PyErr_Restore(et, ev, etb);
                            } else {
                                clear(&mut et);
                                clear(&mut ev);
                                clear(&mut etb);
                            }
                        } else {
                            (*c.inner).finish_error(py, c.breaker, t);
                        }
                    }
                    return ptr::null_mut();
                }
                ffi::PyErr_Clear();
            }
            // not started, finished, or an awaitable without throw(): raise it at this await
            let typ = ffi::PyTuple_GetItem(args, 0);
            let val = if n > 1 {
                ffi::PyTuple_GetItem(args, 1)
            } else {
                ptr::null_mut()
            };
            raise_thrown(py, typ, val);
            if c.phase == CONST {
                return ptr::null_mut(); // shared: stays usable
            }
            c.phase = DONE;
            clear(&mut c.iter);
            if let Some(t) = c.ticket.take() {
                (*c.inner).finish_error(py, c.breaker, t);
            }
            ptr::null_mut()
        })
    }
}

unsafe extern "C" fn call_close(o: Obj, _a: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let c = &mut *(o as *mut CallObj);
            if c.phase == CONST {
                return py_none(); // shared: stays usable
            }
            if (c.phase == RUNNING || c.phase == FALLBACK) && !c.iter.is_null() {
                let meth = ffi::PyObject_GetAttrString(c.iter, c"close".as_ptr());
                if meth.is_null() {
                    ffi::PyErr_Clear();
                } else {
                    let r = ffi::PyObject_CallNoArgs(meth);
                    ffi::Py_DECREF(meth);
                    if r.is_null() {
                        c.phase = DONE;
                        clear(&mut c.iter);
                        if let Some(t) = c.ticket.take() {
                            (*c.inner).finish_error(py, c.breaker, t);
                        }
                        return ptr::null_mut();
                    }
                    ffi::Py_DECREF(r);
                }
            }
            if let Some(t) = c.ticket.take() {
                (*c.inner).core.complete(t, Outcome::Cancelled, None);
            }
            c.phase = DONE;
            clear(&mut c.iter);
            clear(&mut c.value);
            py_none()
        })
    }
}

unsafe extern "C" fn call_await(o: Obj) -> Obj {
    unsafe { incref(o) }
}

unsafe extern "C" fn call_repr(o: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let c = &*(o as *const CallObj);
            let s = if c.inner.is_null() {
                "<ferrolab.breaker.BreakerCall (completed)>".to_string()
            } else {
                format!(
                    "<ferrolab.breaker.BreakerCall of circuit breaker '{}'>",
                    (*c.inner).core.name()
                )
            };
            PyString::new(py, &s).into_ptr()
        })
    }
}

unsafe extern "C" fn call_traverse(o: Obj, v: ffi::visitproc, arg: *mut c_void) -> c_int {
    unsafe {
        let c = &*(o as *const CallObj);
        for x in [c.breaker, c.func, c.args, c.kwargs, c.iter, c.value] {
            let r = visit(x, v, arg);
            if r != 0 {
                return r;
            }
        }
        0
    }
}

unsafe extern "C" fn call_clear(o: Obj) -> c_int {
    unsafe {
        let c = &mut *(o as *mut CallObj);
        clear(&mut c.breaker);
        clear(&mut c.func);
        clear(&mut c.args);
        clear(&mut c.kwargs);
        clear(&mut c.iter);
        clear(&mut c.value);
        0
    }
}

/// Warns like a coroutine that was never awaited (the call never started: nothing ran, nothing was admitted).
unsafe fn warn_never_awaited(c: &CallObj) {
    unsafe {
        let py = Python::assume_attached();
        // a deallocation may happen while an exception is being raised: keep it
        let (mut t, mut v, mut tb) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
        ffi::PyErr_Fetch(&mut t, &mut v, &mut tb);
        let what = Bound::from_borrowed_ptr(py, c.func)
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "a function".into());
        let name = if c.inner.is_null() {
            ""
        } else {
            (*c.inner).core.name()
        };
        let msg = format!("circuit breaker '{name}' call of {what} was never awaited");
        if let Ok(msg) = std::ffi::CString::new(msg) {
            if ffi::PyErr_WarnEx(ffi::PyExc_RuntimeWarning, msg.as_ptr(), 1) < 0 {
                ffi::PyErr_WriteUnraisable(c.func);
            }
        }
        ffi::PyErr_Clear();
        ffi::PyErr_Restore(t, v, tb);
    }
}

unsafe extern "C" fn call_dealloc(o: Obj) {
    unsafe {
        ffi::PyObject_GC_UnTrack(o.cast());
        let c = &mut *(o as *mut CallObj);
        if c.phase == NEW && !c.func.is_null() {
            warn_never_awaited(c);
        }
        if let Some(t) = c.ticket.take() {
            // abandoned mid-flight: the permit goes back
            (*c.inner).core.complete(t, Outcome::Cancelled, None);
        }
        call_clear(o);
        if !c.inner.is_null() {
            drop(Arc::from_raw(c.inner));
            c.inner = ptr::null();
        }
        free_instance(o);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Type objects of the two raw classes

fn leak<T>(v: Vec<T>) -> *mut T {
    Box::leak(v.into_boxed_slice()).as_mut_ptr()
}

fn slot(slot: c_int, pfunc: *mut c_void) -> ffi::PyType_Slot {
    ffi::PyType_Slot { slot, pfunc }
}

fn method(
    name: &'static CStr,
    f: ffi::PyCFunction,
    flags: c_int,
    doc: &'static CStr,
) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: f },
        ml_flags: flags,
        ml_doc: doc.as_ptr(),
    }
}

fn make_type<'py>(
    py: Python<'py>,
    name: &'static CStr,
    basic: usize,
    flags: u64,
    slots: Vec<ffi::PyType_Slot>,
) -> PyResult<Bound<'py, PyType>> {
    let mut slots = slots;
    slots.push(ffi::PyType_Slot::default());
    let spec = Box::leak(Box::new(ffi::PyType_Spec {
        name: name.as_ptr(),
        basicsize: basic as c_int,
        itemsize: 0,
        flags: flags as std::ffi::c_uint,
        slots: leak(slots),
    }));
    unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(spec))
            .map(|t| t.cast_into_unchecked::<PyType>())
    }
}

type SendFn = unsafe extern "C" fn(Obj, Obj, *mut Obj) -> ffi::PySendResult;

fn create_types(py: Python<'_>) -> PyResult<(Bound<'_, PyType>, Bound<'_, PyType>)> {
    let base = ffi::Py_TPFLAGS_DEFAULT
        | ffi::Py_TPFLAGS_HAVE_GC
        | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION
        | ffi::Py_TPFLAGS_IMMUTABLETYPE;
    let members = leak(vec![
        ffi::PyMemberDef {
            name: c"__vectorcalloffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: std::mem::offset_of!(FnObj, vectorcall) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: ptr::null(),
        },
        ffi::PyMemberDef {
            name: c"__dictoffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: std::mem::offset_of!(FnObj, dict) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: ptr::null(),
        },
        ffi::PyMemberDef {
            name: c"__weaklistoffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: std::mem::offset_of!(FnObj, weaklist) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: ptr::null(),
        },
        ffi::PyMemberDef::default(),
    ]);
    let getset = leak(vec![
        ffi::PyGetSetDef {
            name: c"__dict__".as_ptr(),
            get: Some(ffi::PyObject_GenericGetDict),
            set: Some(ffi::PyObject_GenericSetDict),
            doc: ptr::null(),
            closure: ptr::null_mut(),
        },
        ffi::PyGetSetDef {
            name: c"breaker".as_ptr(),
            get: Some(fn_get_breaker),
            set: None,
            doc: c"The CircuitBreaker guarding this function.".as_ptr(),
            closure: ptr::null_mut(),
        },
        ffi::PyGetSetDef::default(),
    ]);
    let fn_methods = leak(vec![
        method(
            c"__reduce__",
            fn_reduce,
            ffi::METH_NOARGS,
            c"Pickled by reference (module and qualified name), like a function.",
        ),
        ffi::PyMethodDef::zeroed(),
    ]);
    let fn_type = make_type(
        py,
        c"ferrolab.breaker.BreakerFunction",
        std::mem::size_of::<FnObj>(),
        base | ffi::Py_TPFLAGS_METHOD_DESCRIPTOR | TPFLAGS_HAVE_VECTORCALL,
        vec![
            slot(ffi::Py_tp_call, fn_call as *mut c_void),
            slot(ffi::Py_tp_descr_get, fn_descr_get as *mut c_void),
            slot(ffi::Py_tp_repr, fn_repr as *mut c_void),
            slot(ffi::Py_tp_traverse, fn_traverse as *mut c_void),
            slot(ffi::Py_tp_clear, fn_clear as *mut c_void),
            slot(ffi::Py_tp_dealloc, fn_dealloc as *mut c_void),
            slot(ffi::Py_tp_members, members.cast()),
            slot(ffi::Py_tp_getset, getset.cast()),
            slot(ffi::Py_tp_methods, fn_methods.cast()),
            slot(
                ffi::Py_tp_doc,
                c"A function guarded by a circuit breaker (what ``@breaker`` returns).\n\nCalling it runs the \
                  wrapped function under the breaker; for an ``async def`` it returns an awaitable \
                  ``BreakerCall``. It keeps the wrapped function's ``__name__``, ``__doc__`` and ``__wrapped__``, \
                  binds as a method and pickles by reference."
                    .as_ptr() as *mut c_void,
            ),
        ],
    )?;
    let send: SendFn = call_am_send;
    let call_methods = leak(vec![
        method(c"send", call_send_meth, ffi::METH_O, c"send($self, value, /)\n--\n\nSends a value into the awaited call (coroutine protocol)."),
        method(c"throw", call_throw, ffi::METH_VARARGS, c"throw($self, typ, val=None, tb=None, /)\n--\n\nRaises an exception in the awaited call (coroutine protocol); a cancellation gives a half-open permit back."),
        method(c"close", call_close, ffi::METH_NOARGS, c"close($self, /)\n--\n\nCloses the awaited call; its half-open permit goes back."),
        ffi::PyMethodDef::zeroed(),
    ]);
    let call_type = make_type(
        py,
        c"ferrolab.breaker.BreakerCall",
        std::mem::size_of::<CallObj>(),
        base,
        vec![
            slot(ffi::Py_am_await, call_await as *mut c_void),
            slot(ffi::Py_am_send, send as *mut c_void),
            slot(ffi::Py_tp_iter, ffi::PyObject_SelfIter as *mut c_void),
            slot(ffi::Py_tp_iternext, call_iternext as *mut c_void),
            slot(ffi::Py_tp_repr, call_repr as *mut c_void),
            slot(ffi::Py_tp_traverse, call_traverse as *mut c_void),
            slot(ffi::Py_tp_clear, call_clear as *mut c_void),
            slot(ffi::Py_tp_dealloc, call_dealloc as *mut c_void),
            slot(ffi::Py_tp_methods, call_methods.cast()),
            slot(
                ffi::Py_tp_doc,
                c"One guarded asynchronous call (from ``acall`` or an ``async def`` decorated with a breaker).\n\n\
                  Await it once: the breaker admits the call when it starts, and records how it ends."
                    .as_ptr() as *mut c_void,
            ),
        ],
    )?;
    Ok((fn_type, call_type))
}

// ---------------------------------------------------------------------------------------------------------------
// `with` entries
//
// `with breaker:` calls `__exit__` on the breaker itself, so the permit of each entered block is kept aside:
// * for a `with` statement in a plain function, on a stack of this thread (such blocks of one thread nest; a thread
//   that ends inside a block gives its permits back);
// * for a `with` statement in a coroutine (its block may `await`) and for every `async with`, in a context
//   variable, so that interleaved asyncio tasks keep their own permits. The variable holds a chain of entries; leaving a block marks its entry done
//   instead of setting the variable again (setting it costs a copy-on-write of the context), and the next block
//   entered in the context skips the done entries. A context that is dropped drops its entries, and an entry
//   dropped while still live gives its permit back.

/// The permits of the `with` blocks entered in this thread outside an event loop, innermost last.
struct ThreadBlocks(Vec<(Arc<Breaker>, Ticket)>);

impl Drop for ThreadBlocks {
    fn drop(&mut self) {
        // the thread ends inside blocks it never left: their permits go back
        for (b, t) in self.0.drain(..) {
            b.complete(t, Outcome::Cancelled, None);
        }
    }
}

thread_local! {
    static THREAD_BLOCKS: std::cell::RefCell<ThreadBlocks> = const { std::cell::RefCell::new(ThreadBlocks(Vec::new())) };
}

fn thread_push(core: &Arc<Breaker>, t: Ticket) -> bool {
    THREAD_BLOCKS
        .try_with(|s| s.borrow_mut().0.push((core.clone(), t)))
        .is_ok()
}

fn thread_pop(core: &Arc<Breaker>) -> Option<Ticket> {
    THREAD_BLOCKS
        .try_with(|s| {
            let mut s = s.borrow_mut();
            let i = s.0.iter().rposition(|(b, _)| Arc::ptr_eq(b, core))?;
            Some(s.0.remove(i).1)
        })
        .ok()
        .flatten()
}

/// Whether the `with` statement runs in a coroutine or an async generator: only there can the block `await`, and
/// so interleave with other blocks of the same thread.
fn frame_is_async(py: Python<'_>) -> Result<bool, Raised> {
    const CO_COROUTINE: std::ffi::c_long = 0x0080;
    const CO_ITERABLE_COROUTINE: std::ffi::c_long = 0x0100;
    const CO_ASYNC_GENERATOR: std::ffi::c_long = 0x0200;
    unsafe {
        let frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            return Ok(false);
        }
        let code = ffi::PyFrame_GetCode(frame);
        if code.is_null() {
            return Err(Raised);
        }
        let flags = ffi::PyObject_GetAttr(code.cast(), intern!(py, "co_flags").as_ptr());
        ffi::Py_DECREF(code.cast());
        if flags.is_null() {
            return Err(Raised);
        }
        let f = ffi::PyLong_AsLong(flags);
        ffi::Py_DECREF(flags);
        if f == -1 && !ffi::PyErr_Occurred().is_null() {
            return Err(Raised);
        }
        Ok(f & (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR) != 0)
    }
}

/// One ``with breaker:`` block entered in a context: its permit (taken when the block is left), and the entry of
/// the enclosing block.
#[pyclass(frozen, module = "ferrolab.breaker", name = "_Entry")]
struct Entry {
    core: Arc<Breaker>,
    ticket: Mutex<Option<Ticket>>,
    prev: Option<Py<PyAny>>,
}

impl Entry {
    fn take(&self) -> Option<Ticket> {
        self.ticket.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn live(&self) -> bool {
        self.ticket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

#[pymethods]
impl Entry {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(p) = &self.prev {
            visit.call(p)?;
        }
        Ok(())
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // dropped without __exit__ (its context is gone): the permit goes back
        let t = self
            .ticket
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = t {
            self.core.complete(t, Outcome::Cancelled, None);
        }
    }
}

/// The innermost live entry of this context, starting at `o` (the variable's value).
fn live_entry<'py>(mut o: Bound<'py, PyAny>) -> Option<Bound<'py, Entry>> {
    loop {
        let e = o.cast_into::<Entry>().ok()?;
        if e.get().live() {
            return Some(e);
        }
        o = e.get().prev.as_ref()?.bind(e.py()).clone();
    }
}

fn var_get<'py>(py: Python<'py>, inner: &Inner) -> Result<Bound<'py, PyAny>, Raised> {
    unsafe {
        let o = ffi::PyObject_Call(
            inner.var_get.as_ptr(),
            inner.none_args.as_ptr(),
            ptr::null_mut(),
        );
        if o.is_null() {
            Err(Raised)
        } else {
            Ok(Bound::from_owned_ptr(py, o))
        }
    }
}

fn context_push(py: Python<'_>, inner: &Inner, t: Ticket) -> Result<(), Raised> {
    let guard = TicketGuard {
        inner,
        ticket: Some(t),
    };
    let top = var_get(py, inner)?;
    let entry = Entry {
        core: inner.core.clone(),
        ticket: Mutex::new(Some(guard.defuse())),
        prev: live_entry(top).map(|e| e.into_any().unbind()),
    };
    let entry = Bound::new(py, entry).map_err(|e| {
        e.restore(py);
        Raised
    })?;
    unsafe {
        let tok = ffi::PyObject_CallFunctionObjArgs(
            inner.var_set.as_ptr(),
            entry.as_ptr(),
            ptr::null_mut::<ffi::PyObject>(),
        );
        if tok.is_null() {
            return Err(Raised);
        }
        ffi::Py_DECREF(tok);
    }
    Ok(())
}

fn context_pop(py: Python<'_>, inner: &Inner) -> Result<Option<Ticket>, Raised> {
    let top = var_get(py, inner)?;
    Ok(live_entry(top).and_then(|e| e.get().take()))
}

unsafe fn enter(
    py: Python<'_>,
    slf: Obj,
    inner: &Inner,
    force_context: bool,
) -> Result<(), Raised> {
    let t = match inner.admit(py, slf)? {
        Admission::Admitted(t) => t,
        Admission::Rejected(r) => {
            inner.raise_open(py, r);
            return Err(Raised);
        }
    };
    let in_context = force_context || {
        let guard = TicketGuard {
            inner,
            ticket: Some(t),
        };
        let running = frame_is_async(py)?;
        guard.defuse();
        running
    };
    if in_context || !thread_push(&inner.core, t) {
        context_push(py, inner, t)?;
    }
    Ok(())
}

unsafe fn exit(
    py: Python<'_>,
    slf: Obj,
    inner: &Inner,
    exc_type: Obj,
    exc: Obj,
    force_context: bool,
) -> Result<(), Raised> {
    unsafe {
        let in_context = force_context || frame_is_async(py)?;
        let ticket = if in_context {
            match context_pop(py, inner)? {
                Some(t) => Some(t),
                None => thread_pop(&inner.core),
            }
        } else {
            match thread_pop(&inner.core) {
                Some(t) => Some(t),
                None => context_pop(py, inner)?,
            }
        };
        let Some(t) = ticket else {
            if !exc_type.is_null()
                && ffi::PyErr_GivenExceptionMatches(exc_type, ffi::PyExc_GeneratorExit) != 0
            {
                // a coroutine closed by the garbage collector outside the context it entered the block in: the
                // permit goes back when that context goes away
                return Ok(());
            }
            PyRuntimeError::new_err(format!(
                "circuit breaker '{}': __exit__ without a matching __enter__ in this thread or context",
                inner.core.name()
            ))
            .restore(py);
            return Err(Raised);
        };
        let no_exc = exc_type.is_null() || exc_type == ffi::Py_None();
        let outcome = if no_exc {
            Outcome::Success
        } else {
            inner.classify(exc_type)
        };
        if outcome == Outcome::Failure && !exc.is_null() && exc != ffi::Py_None() {
            inner.set_last_failure(&Bound::from_borrowed_ptr(py, exc));
        }
        let now = match inner.now(py) {
            Ok(n) => n,
            Err(Raised) => {
                inner.core.complete(t, Outcome::Cancelled, None);
                return Err(Raised);
            }
        };
        let tr = inner.core.complete(t, outcome, now);
        inner.fire_opt(py, slf, tr);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Raw methods of CircuitBreaker (METH_FASTCALL: no argument tuple or kwargs dict built twice)

unsafe fn inner_of<'a>(py: Python<'_>, slf: Obj) -> Option<&'a Arc<Inner>> {
    unsafe {
        let b = Borrowed::from_ptr(py, slf);
        match b.cast::<CircuitBreaker>() {
            // SAFETY: the breaker outlives the method call that borrows it
            Ok(cb) => Some(&*(&cb.get().inner as *const Arc<Inner>)),
            Err(_) => {
                PyTypeError::new_err("not called on a ferrolab CircuitBreaker").restore(py);
                None
            }
        }
    }
}

/// `(args[from..nargs], {kwnames: values})` as a new tuple and a new dict (or NULL).
unsafe fn pack(args: *const Obj, from: isize, nargs: isize, kwnames: Obj) -> Option<(Obj, Obj)> {
    unsafe {
        let t = ffi::PyTuple_New(nargs - from);
        if t.is_null() {
            return None;
        }
        for i in from..nargs {
            ffi::PyTuple_SetItem(t, i - from, incref(*args.offset(i)));
        }
        if kwnames.is_null() {
            return Some((t, ptr::null_mut()));
        }
        let d = ffi::PyDict_New();
        if d.is_null() {
            ffi::Py_DECREF(t);
            return None;
        }
        let nk = ffi::PyTuple_Size(kwnames);
        for j in 0..nk {
            if ffi::PyDict_SetItem(d, ffi::PyTuple_GetItem(kwnames, j), *args.offset(nargs + j)) < 0
            {
                ffi::Py_DECREF(t);
                ffi::Py_DECREF(d);
                return None;
            }
        }
        Some((t, d))
    }
}

unsafe fn call_like(
    slf: Obj,
    args: *const Obj,
    nargsf: ffi::Py_ssize_t,
    kwnames: Obj,
    what: &str,
    f: impl FnOnce(Python<'_>, &Inner, Obj, Obj, Obj) -> Obj,
) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let Some(inner) = inner_of(py, slf) else {
                return ptr::null_mut();
            };
            let nargs = nargsf;
            if nargs < 1 {
                PyTypeError::new_err(format!("{what}() missing its required argument 'fn'"))
                    .restore(py);
                return ptr::null_mut();
            }
            let func = *args;
            let Some((t, d)) = pack(args, 1, nargs, kwnames) else {
                return ptr::null_mut();
            };
            let r = f(py, inner, func, t, d);
            ffi::Py_DECREF(t);
            if !d.is_null() {
                ffi::Py_DECREF(d);
            }
            r
        })
    }
}

unsafe extern "C" fn meth_call(
    slf: Obj,
    args: *const Obj,
    nargs: ffi::Py_ssize_t,
    kwnames: Obj,
) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let Some(inner) = inner_of(py, slf) else {
                return ptr::null_mut();
            };
            if nargs < 1 {
                PyTypeError::new_err("call() missing its required argument 'fn'").restore(py);
                return ptr::null_mut();
            }
            let func = *args;
            // the rest of the vector goes on as it is; args[0] (already read) may be borrowed by the callee
            let rest = args.offset(1);
            let nargsf = (nargs - 1) as usize | VECTORCALL_ARGUMENTS_OFFSET;
            guarded(py, inner, slf, func, |c| {
                call_vector(c, rest, nargsf, kwnames)
            })
        })
    }
}

unsafe extern "C" fn meth_acall(
    slf: Obj,
    args: *const Obj,
    nargs: ffi::Py_ssize_t,
    kwnames: Obj,
) -> Obj {
    unsafe {
        call_like(
            slf,
            args,
            nargs,
            kwnames,
            "acall",
            |py, inner, func, t, d| new_call(py, inner as *const Inner, slf, func, t, d),
        )
    }
}

unsafe extern "C" fn meth_enter(slf: Obj, _a: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let Some(inner) = inner_of(py, slf) else {
                return ptr::null_mut();
            };
            match enter(py, slf, inner, false) {
                Ok(()) => incref(slf),
                Err(Raised) => ptr::null_mut(),
            }
        })
    }
}

unsafe fn exit_args(args: *const Obj, nargs: ffi::Py_ssize_t) -> (Obj, Obj) {
    unsafe {
        let t = if nargs > 0 { *args } else { ptr::null_mut() };
        let v = if nargs > 1 {
            *args.offset(1)
        } else {
            ptr::null_mut()
        };
        (t, v)
    }
}

unsafe extern "C" fn meth_exit(slf: Obj, args: *mut Obj, nargs: ffi::Py_ssize_t) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let Some(inner) = inner_of(py, slf) else {
                return ptr::null_mut();
            };
            if nargs > 3 {
                PyTypeError::new_err("__exit__() takes at most 3 arguments").restore(py);
                return ptr::null_mut();
            }
            let (t, v) = exit_args(args, nargs);
            match exit(py, slf, inner, t, v, false) {
                Ok(()) => incref(ffi::Py_False()),
                Err(Raised) => ptr::null_mut(),
            }
        })
    }
}

/// An awaitable that completes with `value` every time.
unsafe fn const_call(py: Python<'_>, value: Obj) -> Obj {
    unsafe {
        let c = done_call(py, value);
        if !c.is_null() {
            (*c.cast::<CallObj>()).phase = CONST;
        }
        c
    }
}

static AWAIT_FALSE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

unsafe extern "C" fn meth_aenter(slf: Obj, _a: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let Some(inner) = inner_of(py, slf) else {
                return ptr::null_mut();
            };
            if enter(py, slf, inner, true).is_err() {
                return ptr::null_mut();
            }
            let cached = inner.lock().aenter.as_ref().map(|a| a.as_ptr());
            if let Some(a) = cached {
                return incref(a);
            }
            let a = const_call(py, slf);
            if !a.is_null() {
                let keep = Bound::from_borrowed_ptr(py, a).unbind();
                let old = inner.lock().aenter.replace(keep);
                drop(old.map(|o| o.into_bound(py)));
            }
            a
        })
    }
}

unsafe extern "C" fn meth_aexit(slf: Obj, args: *mut Obj, nargs: ffi::Py_ssize_t) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let Some(inner) = inner_of(py, slf) else {
                return ptr::null_mut();
            };
            if nargs > 3 {
                PyTypeError::new_err("__aexit__() takes at most 3 arguments").restore(py);
                return ptr::null_mut();
            }
            let (t, v) = exit_args(args, nargs);
            if exit(py, slf, inner, t, v, true).is_err() {
                return ptr::null_mut();
            }
            match AWAIT_FALSE.get_or_try_init(py, || {
                Bound::from_owned_ptr_or_err(py, const_call(py, ffi::Py_False())).map(Bound::unbind)
            }) {
                Ok(a) => incref(a.as_ptr()),
                Err(e) => {
                    e.restore(py);
                    ptr::null_mut()
                }
            }
        })
    }
}

fn install_methods(ty: &Bound<'_, PyType>) -> PyResult<()> {
    let fastkw = |f: ffi::PyCFunctionFastWithKeywords| ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: f,
    };
    let fast = |f: ffi::PyCFunctionFast| ffi::PyMethodDefPointer { PyCFunctionFast: f };
    let noargs = |f: ffi::PyCFunction| ffi::PyMethodDefPointer { PyCFunction: f };
    let defs: Vec<(&'static CStr, ffi::PyMethodDefPointer, c_int, &'static CStr)> = vec![
        (
            c"call",
            fastkw(meth_call),
            ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            c"call($self, fn, /, *args, **kwargs)\n--\n\nCalls ``fn(*args, **kwargs)`` under the breaker and \
              returns its result.\n\nRaises CircuitOpenError (or returns ``fallback(*args, **kwargs)``) when the \
              breaker rejects the call; an exception of ``fn`` propagates unchanged after it was recorded.",
        ),
        (
            c"acall",
            fastkw(meth_acall),
            ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            c"acall($self, fn, /, *args, **kwargs)\n--\n\nAn awaitable that calls ``fn(*args, **kwargs)`` under \
              the breaker and awaits its result.\n\nThe breaker admits the call when it is awaited; cancelling it \
              gives a half-open permit back.",
        ),
        (
            c"__enter__",
            noargs(meth_enter),
            ffi::METH_NOARGS,
            c"__enter__($self, /)\n--\n\nAdmits the block or raises CircuitOpenError.",
        ),
        (
            c"__exit__",
            fast(meth_exit),
            ffi::METH_FASTCALL,
            c"__exit__($self, exc_type=None, exc=None, tb=None, /)\n--\n\nRecords how the block ended; never \
              suppresses its exception.",
        ),
        (
            c"__aenter__",
            noargs(meth_aenter),
            ffi::METH_NOARGS,
            c"__aenter__($self, /)\n--\n\nAdmits the block or raises CircuitOpenError (a completed awaitable).",
        ),
        (
            c"__aexit__",
            fast(meth_aexit),
            ffi::METH_FASTCALL,
            c"__aexit__($self, exc_type=None, exc=None, tb=None, /)\n--\n\nRecords how the block ended (a \
              completed awaitable).",
        ),
    ];
    for (name, meth, flags, doc) in defs {
        // one definition per method, alive for the life of the process (the descriptor points to it)
        let def: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: meth,
            ml_flags: flags,
            ml_doc: doc.as_ptr(),
        }));
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(
                ty.py(),
                ffi::PyDescr_NewMethod(ty.as_ptr().cast::<ffi::PyTypeObject>(), def),
            )
        }?;
        ty.setattr(name.to_str().expect("ASCII method name"), descr)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Argument parsing

const NEW_FUNC: &str = "CircuitBreaker()";

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn int_arg(arg: &str, o: &Bound<'_, PyAny>, none_ok: bool) -> PyResult<Option<u32>> {
    if o.is_none() && none_ok {
        return Ok(None);
    }
    let is_int =
        o.is_instance_of::<pyo3::types::PyInt>() && !o.is_instance_of::<pyo3::types::PyBool>();
    if !is_int {
        return Err(PyTypeError::new_err(format!(
            "{NEW_FUNC}: argument '{arg}' must be an int{}, got {}",
            if none_ok { " or None" } else { "" },
            type_name(o)
        )));
    }
    let v: i64 = o.extract().unwrap_or(i64::MAX);
    if v < 0 || v > u32::MAX as i64 {
        // the core checks the real range; this one only has to fit
        return Err(PyValueError::new_err(format!(
            "{NEW_FUNC}: argument '{arg}' is {v}; expected a positive int"
        )));
    }
    Ok(Some(v as u32))
}

fn float_arg(arg: &str, o: &Bound<'_, PyAny>, none_ok: bool) -> PyResult<Option<f64>> {
    if o.is_none() && none_ok {
        return Ok(None);
    }
    let num = (o.is_instance_of::<pyo3::types::PyFloat>()
        || o.is_instance_of::<pyo3::types::PyInt>())
        && !o.is_instance_of::<pyo3::types::PyBool>();
    if !num {
        return Err(PyTypeError::new_err(format!(
            "{NEW_FUNC}: argument '{arg}' must be a number{}, got {}",
            if none_ok { " or None" } else { "" },
            type_name(o)
        )));
    }
    Ok(Some(o.extract::<f64>()?))
}

/// An exception class or a tuple of them, as a tuple.
fn classes_arg<'py>(arg: &str, o: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let py = o.py();
    let items: Vec<Bound<'py, PyAny>> = if let Ok(t) = o.cast::<PyTuple>() {
        t.iter().collect()
    } else if o.is_instance_of::<pyo3::types::PyList>() {
        o.try_iter()?.collect::<PyResult<_>>()?
    } else {
        vec![o.clone()]
    };
    for it in &items {
        if unsafe { ffi::PyExceptionClass_Check(it.as_ptr()) } == 0 {
            return Err(PyTypeError::new_err(format!(
                "{NEW_FUNC}: argument '{arg}' must be an exception class or a tuple of exception classes, got {}",
                it.repr().map(|r| r.to_string()).unwrap_or_else(|_| type_name(it))
            )));
        }
    }
    PyTuple::new(py, items)
}

fn callable_arg(arg: &str, o: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
    if o.is_none() {
        return Ok(None);
    }
    if !o.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "{NEW_FUNC}: argument '{arg}' must be callable or None, got {}",
            type_name(o)
        )));
    }
    Ok(Some(o.clone().unbind()))
}

const KWARGS: [&str; 17] = [
    "failure_threshold",
    "failure_rate",
    "window",
    "window_seconds",
    "minimum_calls",
    "slow_call_duration",
    "slow_call_rate",
    "reset_timeout",
    "max_reset_timeout",
    "half_open_max_calls",
    "success_threshold",
    "record",
    "ignore",
    "fallback",
    "clock",
    "metrics",
    "name",
];

// ---------------------------------------------------------------------------------------------------------------
// The registry of named breakers (Python objects, weakly)

static PY_REGISTRY: LazyLock<Mutex<HashMap<String, Py<PyAny>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn register_py(obj: &Bound<'_, CircuitBreaker>) -> PyResult<()> {
    let py = obj.py();
    let wr = PyWeakrefReference::new(obj)?;
    let name = obj.get().inner.core.name().to_string();
    let dropped: Vec<Py<PyAny>> = {
        let mut reg = PY_REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped: Vec<Py<PyAny>> = reg
            .insert(name, wr.into_any().unbind())
            .into_iter()
            .collect();
        // forget the names whose breaker is gone (dereferencing a weak reference runs no Python code)
        let dead: Vec<String> = reg
            .iter()
            .filter(|(_, w)| {
                w.bind(py)
                    .cast::<PyWeakrefReference>()
                    .map_or(true, |w| w.upgrade().is_none())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            dropped.extend(reg.remove(&k));
        }
        dropped
    };
    // released outside the lock
    drop(
        dropped
            .into_iter()
            .map(|o| o.into_bound(py))
            .collect::<Vec<_>>(),
    );
    Ok(())
}

/// The named breakers alive now, by name (a breaker created with the name of an earlier one replaces it here and
/// in the metrics); ``fl.breakers()`` documents it.
#[pyfunction]
fn breakers(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let refs: Vec<(String, Bound<'_, PyAny>)> = {
        let reg = PY_REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        reg.iter()
            .map(|(k, v)| (k.clone(), v.bind(py).clone()))
            .collect()
    };
    let mut live: Vec<(String, Bound<'_, PyAny>)> = Vec::new();
    for (name, r) in refs {
        let obj = r.call0()?;
        if !obj.is_none() {
            live.push((name, obj));
        }
    }
    live.sort_by(|a, b| a.0.cmp(&b.0));
    let d = PyDict::new(py);
    for (name, obj) in live {
        d.set_item(name, obj)?;
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------------------------------
// CircuitBreaker

static INSPECT_ISCORO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static UPDATE_WRAPPER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A circuit breaker for functions, coroutines and ``with`` / ``async with`` blocks.
///
/// Parameters
/// ----------
/// name : str
///     Names the breaker in ``fl.breakers()``, in errors and in the metrics (a later breaker with the same name
///     replaces this one there).
/// failure_threshold : int or None, optional
///     Consecutive failures that open a closed breaker (default 5); ``None`` turns this rule off.
/// failure_rate : float or None, optional
///     Failure rate in (0, 1] over the window that opens it, once ``minimum_calls`` calls are in the window.
/// window : int, optional
///     The window of the rate rules: the last ``window`` calls (default 100) ...
/// window_seconds : float or None, optional
///     ... or the calls of the last ``window_seconds`` seconds.
/// minimum_calls : int, optional
///     Calls the window must hold before a rate rule can open the breaker (default 10, at most ``window``).
/// slow_call_duration : float or None, optional
///     A call that takes longer (seconds) is slow: counted with outcome ``slow`` besides its success or failure.
/// slow_call_rate : float or None, optional
///     Slow-call rate in (0, 1] over the window that opens the breaker (then a slow trial call reopens it too).
/// reset_timeout : float, optional
///     Seconds the breaker stays open before it admits trial calls (default 30).
/// max_reset_timeout : float or None, optional
///     Turns on exponential backoff: every re-opening from half-open doubles the open period up to this cap,
///     each period shortened by a random jitter of up to 25 %.
/// half_open_max_calls : int, optional
///     Trial calls admitted in one half-open period (default 1); the rest are rejected.
/// success_threshold : int, optional
///     Successful trial calls that close the breaker (default 1, at most ``half_open_max_calls``); one failed trial
///     reopens it.
/// record : exception class or tuple, optional
///     Exceptions that count as failures (default ``(Exception,)``); other exceptions count as successes.
/// ignore : exception class or tuple, optional
///     Exceptions that count as neither (outcome ``ignored``; a half-open permit goes back).
/// fallback : callable or None, optional
///     Called with the call's arguments instead of raising CircuitOpenError when a call is rejected (not for
///     ``with`` blocks).
/// clock : callable or None, optional
///     A zero-argument function returning seconds, replacing the native monotonic clock (for tests).
/// metrics : bool or None, optional
///     Count calls for ``stats()`` and the ``ferrolab_circuit_breaker_*`` series: ``None`` (default) follows
///     ``fl.metrics.configure(enabled=...)``, ``False`` exports no series for this breaker.
///
/// Notes
/// -----
/// Exceptions that do not derive from ``Exception`` (``asyncio.CancelledError``, ``KeyboardInterrupt``,
/// ``SystemExit``, ``GeneratorExit``) never count: the call is treated as cancelled and a half-open permit goes
/// back. A call admitted before a state change is counted in the metrics but does not move the new state.
/// Listeners are called as ``listener(breaker, old_state, new_state)`` after the change, outside any lock; an
/// exception in a listener goes to ``sys.unraisablehook``.
///
/// One breaker may guard any number of concurrent calls and blocks, from threads and asyncio tasks; nothing is
/// locked while they run. Each ``with`` block keeps its own permit: per thread for a ``with`` statement in a plain
/// function, per asyncio task (context) for one in a coroutine and for ``async with``. A thread or task that ends
/// inside a block, or an awaitable dropped before it finished, gives its half-open permit back.
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> now = [0.0]
/// >>> db = fl.CircuitBreaker("doc_db", failure_threshold=2, reset_timeout=10, clock=lambda: now[0])
/// >>> @db
/// ... def query(x):
/// ...     if x < 0:
/// ...         raise ConnectionError("db down")
/// ...     return x * 2
/// >>> query(21)
/// 42
/// >>> for _ in range(2):
/// ...     try:
/// ...         query(-1)
/// ...     except ConnectionError:
/// ...         pass
/// >>> db.state
/// 'open'
/// >>> try:
/// ...     query(1)
/// ... except fl.CircuitOpenError as e:
/// ...     print(e.retry_after, repr(e.last_failure))
/// 10.0 ConnectionError('db down')
/// >>> now[0] = 10.0
/// >>> query(1), db.state
/// (2, 'closed')
#[pyclass(frozen, weakref, module = "ferrolab.breaker", name = "CircuitBreaker")]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl CircuitBreaker {
    fn fire(slf: &Bound<'_, Self>, tr: Option<Transition>) {
        slf.get().inner.fire_opt(slf.py(), slf.as_ptr(), tr);
    }
}

#[pymethods]
impl CircuitBreaker {
    #[new]
    #[pyo3(
        signature = (name, **kwargs),
        text_signature = "(name, *, failure_threshold=5, failure_rate=None, window=100, window_seconds=None, \
                          minimum_calls=10, slow_call_duration=None, slow_call_rate=None, reset_timeout=30.0, \
                          max_reset_timeout=None, half_open_max_calls=1, success_threshold=1, record=(Exception,), \
                          ignore=(), fallback=None, clock=None, metrics=None)"
    )]
    fn new(
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let name = name.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "{NEW_FUNC}: argument 'name' must be a str, got {}",
                type_name(name)
            ))
        })?;
        let mut cfg = Config::default();
        let mut record = PyTuple::new(py, [py.get_type::<pyo3::exceptions::PyException>()])?;
        let mut ignore: Option<Bound<'_, PyTuple>> = None;
        let mut fallback = None;
        let mut clock = None;
        if let Some(kw) = kwargs {
            for (k, v) in kw.iter() {
                let k: String = k.extract()?;
                match k.as_str() {
                    "failure_threshold" => cfg.failure_threshold = int_arg(&k, &v, true)?,
                    "failure_rate" => cfg.failure_rate = float_arg(&k, &v, true)?,
                    "window" => cfg.window = int_arg(&k, &v, false)?.unwrap_or(0),
                    "window_seconds" => cfg.window_seconds = float_arg(&k, &v, true)?,
                    "minimum_calls" => cfg.minimum_calls = int_arg(&k, &v, false)?.unwrap_or(0),
                    "slow_call_duration" => cfg.slow_call_duration = float_arg(&k, &v, true)?,
                    "slow_call_rate" => cfg.slow_call_rate = float_arg(&k, &v, true)?,
                    "reset_timeout" => {
                        cfg.reset_timeout = float_arg(&k, &v, false)?.unwrap_or(f64::NAN)
                    }
                    "max_reset_timeout" => cfg.max_reset_timeout = float_arg(&k, &v, true)?,
                    "half_open_max_calls" => {
                        cfg.half_open_max_calls = int_arg(&k, &v, false)?.unwrap_or(0)
                    }
                    "success_threshold" => {
                        cfg.success_threshold = int_arg(&k, &v, false)?.unwrap_or(0)
                    }
                    "record" => record = classes_arg(&k, &v)?,
                    "ignore" => {
                        let t = classes_arg(&k, &v)?;
                        ignore = (!t.is_empty()).then_some(t);
                    }
                    "fallback" => fallback = callable_arg(&k, &v)?,
                    "clock" => clock = callable_arg(&k, &v)?,
                    "metrics" => {
                        cfg.metrics = if v.is_none() {
                            MetricsMode::Follow
                        } else if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
                            if b.is_true() {
                                MetricsMode::On
                            } else {
                                MetricsMode::Off
                            }
                        } else {
                            return Err(PyTypeError::new_err(format!(
                                "{NEW_FUNC}: argument 'metrics' must be a bool or None, got {}",
                                type_name(&v)
                            )));
                        }
                    }
                    _ => {
                        let hint = if KWARGS.contains(&k.as_str()) {
                            " (pass it by position)"
                        } else {
                            ""
                        };
                        return Err(PyTypeError::new_err(format!(
                            "{NEW_FUNC} got an unexpected keyword argument '{k}'{hint}"
                        )));
                    }
                }
            }
        }
        let name_s = name.to_str()?.to_string();
        let core = Arc::new(Breaker::new(&name_s, cfg).py()?);
        let exc = py.get_type::<pyo3::exceptions::PyException>();
        let record_all = record.len() == 1 && record.get_item(0)?.is(&exc);
        let var = py
            .import("contextvars")?
            .getattr("ContextVar")?
            .call1((format!("ferrolab.breaker.{name_s}"),))?;
        let inner = Inner {
            name: name.clone().unbind(),
            msgs: [
                PyString::new(py, &format!("circuit breaker '{name_s}' is open")).unbind(),
                PyString::new(
                    py,
                    &format!(
                        "circuit breaker '{name_s}' is half-open and its trial calls are in flight"
                    ),
                )
                .unbind(),
                PyString::new(py, &format!("circuit breaker '{name_s}' is forced open")).unbind(),
            ],
            record: record.into_any().unbind(),
            record_all,
            ignore: ignore.map(|t| t.into_any().unbind()),
            has_clock: clock.is_some(),
            has_fallback: fallback.is_some(),
            refs: Mutex::new(Refs {
                fallback,
                clock,
                listeners: Vec::new(),
                last_failure: None,
                aenter: None,
            }),
            var_get: var.getattr("get")?.unbind(),
            var_set: var.getattr("set")?.unbind(),
            var: var.unbind(),
            none_args: PyTuple::new(py, [py.None()])?.unbind(),
            core: core.clone(),
        };
        core::register(&core);
        Ok(CircuitBreaker {
            inner: Arc::new(inner),
        })
    }

    /// Decorates ``func`` (a function or an ``async def``): every call runs under the breaker.
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if !func.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "CircuitBreaker '{}': the decorated object must be callable, got {}",
                slf.get().inner.core.name(),
                type_name(func)
            )));
        }
        let iscoro = INSPECT_ISCORO.get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("inspect")?
                    .getattr("iscoroutinefunction")?
                    .unbind(),
            )
        })?;
        let mut is_async = iscoro.bind(py).call1((func,))?.is_truthy()?;
        if !is_async {
            // a breaker stacked on another one that guards an async def
            if func.get_type().as_ptr() == FN_TYPE.load(Ordering::Acquire).cast() {
                is_async = unsafe { (*(func.as_ptr() as *const FnObj)).is_async };
            }
        }
        let wrapper = unsafe { new_fn(py, slf, func, is_async)? };
        let update = UPDATE_WRAPPER.get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("functools")?.getattr("update_wrapper")?.unbind())
        })?;
        update.bind(py).call1((&wrapper, func))?;
        if is_async {
            let inspect = py.import("inspect")?;
            if let Ok(mark) = inspect.getattr("markcoroutinefunction") {
                mark.call1((&wrapper,))?;
            } else {
                // Python 3.11: the marker asyncio.iscoroutinefunction() looks for
                let m = py.import("asyncio.coroutines")?.getattr("_is_coroutine")?;
                wrapper.setattr("_is_coroutine", m)?;
            }
        }
        Ok(wrapper)
    }

    /// The breaker's name.
    #[getter]
    fn name<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        self.inner.name.bind(py).clone()
    }

    /// ``"closed"``, ``"open"``, ``"half_open"``, ``"forced_open"`` or ``"disabled"``.
    ///
    /// An open breaker whose open period is over stays ``"open"`` until the next call arrives and is admitted as
    /// a trial.
    #[getter]
    fn state<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        state_str(py, self.inner.core.state())
    }

    /// The exception that last counted as a failure, or None.
    #[getter]
    fn last_failure<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.inner.last_failure(py)
    }

    /// Opens the breaker until ``reset()``: every call is rejected (``retry_after`` is None).
    fn force_open(slf: &Bound<'_, Self>) {
        let tr = slf.get().inner.core.force_open();
        Self::fire(slf, tr);
    }

    /// Lets every call through, recording nothing, until ``reset()``.
    fn disable(slf: &Bound<'_, Self>) {
        let tr = slf.get().inner.core.disable();
        Self::fire(slf, tr);
    }

    /// Closes the breaker and forgets its failures (from any state).
    fn reset(slf: &Bound<'_, Self>) {
        let tr = slf.get().inner.core.reset();
        Self::fire(slf, tr);
    }

    /// Counts and rates.
    ///
    /// ``success``, ``failure``, ``rejected``, ``ignored``, ``slow``: calls by outcome since creation (counted
    /// while metrics are on); ``consecutive_failures``; ``window_calls``, ``window_failures``, ``window_slow``,
    /// ``failure_rate``, ``slow_call_rate`` over the sliding window (None without a rate rule, or an empty
    /// window); ``open_count`` (openings since it last closed); ``retry_after`` (seconds, while open);
    /// ``half_open_calls`` and ``half_open_successes`` (trial permits taken and successful trials, while
    /// half-open); ``transitions`` (``{"closed->open": n, ...}``).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let now = self.inner.now(py).map_err(|_| PyErr::fetch(py))?;
        let s = self.inner.core.stats(now);
        let d = PyDict::new(py);
        d.set_item("name", self.inner.name.bind(py))?;
        d.set_item("state", state_str(py, s.state))?;
        for (i, o) in core::OUTCOMES.iter().enumerate() {
            d.set_item(*o, s.counts[i])?;
        }
        d.set_item("consecutive_failures", s.consecutive_failures)?;
        d.set_item("window_calls", s.window.map(|w| w.calls))?;
        d.set_item("window_failures", s.window.map(|w| w.failures))?;
        d.set_item("window_slow", s.window.map(|w| w.slow))?;
        d.set_item("failure_rate", s.failure_rate)?;
        d.set_item("slow_call_rate", s.slow_call_rate)?;
        d.set_item("open_count", s.open_count)?;
        d.set_item("retry_after", s.retry_after)?;
        d.set_item("half_open_calls", s.half_open_calls)?;
        d.set_item("half_open_successes", s.half_open_successes)?;
        let tr = PyDict::new(py);
        for from in State::ALL {
            for to in State::ALL {
                let n = s.transitions[from as usize][to as usize];
                if n > 0 {
                    tr.set_item(format!("{}->{}", from.name(), to.name()), n)?;
                }
            }
        }
        d.set_item("transitions", tr)?;
        Ok(d)
    }

    /// Calls ``listener(breaker, old_state, new_state)`` after every state change.
    fn add_listener(&self, listener: &Bound<'_, PyAny>) -> PyResult<()> {
        if !listener.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "add_listener(): argument 'listener' must be callable, got {}",
                type_name(listener)
            )));
        }
        self.inner.lock().listeners.push(listener.clone().unbind());
        Ok(())
    }

    /// Removes a listener added with ``add_listener`` (ValueError when it is not there).
    fn remove_listener(&self, listener: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = listener.py();
        // compared with == outside the lock (a bound method is a new object at every access, and __eq__ is Python)
        let ls: Vec<Bound<'_, PyAny>> = self
            .inner
            .lock()
            .listeners
            .iter()
            .map(|l| l.bind(py).clone())
            .collect();
        let mut found = None;
        for l in ls {
            if l.is(listener) || l.eq(listener)? {
                found = Some(l);
                break;
            }
        }
        let removed = found.and_then(|f| {
            let mut r = self.inner.lock();
            let i = r.listeners.iter().position(|l| l.as_ptr() == f.as_ptr())?;
            Some(r.listeners.remove(i))
        });
        match removed {
            Some(l) => {
                drop(l.into_bound(py));
                Ok(())
            }
            None => Err(PyValueError::new_err(
                "remove_listener(): listener not found",
            )),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<ferrolab.CircuitBreaker '{}' {}>",
            self.inner.core.name(),
            self.inner.core.state().name()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let i = &self.inner;
        visit.call(&i.record)?;
        if let Some(ig) = &i.ignore {
            visit.call(ig)?;
        }
        visit.call(&i.var)?;
        visit.call(&i.var_get)?;
        visit.call(&i.var_set)?;
        // never block the collector: a held lock means a call is in progress (the objects are reachable)
        if let Ok(r) = i.refs.try_lock() {
            for o in [&r.fallback, &r.clock, &r.last_failure, &r.aenter]
                .into_iter()
                .flatten()
            {
                visit.call(o)?;
            }
            for l in &r.listeners {
                visit.call(l)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = std::mem::take(&mut *self.inner.lock());
        drop(taken);
    }
}

/// The `__init__` of CircuitBreaker: lists the new breaker in `fl.breakers()` (the object exists only now).
unsafe extern "C" fn breaker_init(slf: Obj, _args: Obj, _kw: Obj) -> c_int {
    unsafe {
        trap(-1, |py| {
            let b = Borrowed::from_ptr(py, slf);
            match b.cast::<CircuitBreaker>() {
                Ok(cb) => match register_py(&cb.to_owned()) {
                    Ok(()) => 0,
                    Err(e) => {
                        e.restore(py);
                        -1
                    }
                },
                Err(_) => 0,
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CircuitOpenError(message, name, retry_after, last_failure): attributes read from the args

unsafe fn exc_args(o: Obj) -> Obj {
    unsafe {
        let py = Python::assume_attached();
        ffi::PyObject_GetAttr(o, intern!(py, "args").as_ptr())
    }
}

unsafe fn open_error_arg(o: Obj, i: isize) -> Obj {
    unsafe {
        let args = exc_args(o);
        if args.is_null() {
            return ptr::null_mut();
        }
        let r = if ffi::PyTuple_Check(args) != 0 && ffi::PyTuple_Size(args) > i {
            incref(ffi::PyTuple_GetItem(args, i))
        } else {
            py_none()
        };
        ffi::Py_DECREF(args);
        r
    }
}

unsafe extern "C" fn open_error_name(o: Obj, _c: *mut c_void) -> Obj {
    unsafe { open_error_arg(o, 1) }
}

unsafe extern "C" fn open_error_retry(o: Obj, _c: *mut c_void) -> Obj {
    unsafe { open_error_arg(o, 2) }
}

unsafe extern "C" fn open_error_last(o: Obj, _c: *mut c_void) -> Obj {
    unsafe { open_error_arg(o, 3) }
}

unsafe extern "C" fn open_error_str(o: Obj, _a: Obj) -> Obj {
    unsafe {
        trap(ptr::null_mut(), |py| {
            let args = exc_args(o);
            if args.is_null() {
                return ptr::null_mut();
            }
            let args = Bound::from_owned_ptr(py, args);
            let Ok(t) = args.cast::<PyTuple>() else {
                return ffi::PyObject_Str(args.as_ptr());
            };
            if t.is_empty() {
                return PyString::new(py, "").into_ptr();
            }
            let msg = match t.get_item(0).and_then(|m| m.str()) {
                Ok(m) => m,
                Err(e) => {
                    e.restore(py);
                    return ptr::null_mut();
                }
            };
            // a breaker's rejection (message, name, retry_after, last_failure): the retry time, if any
            let retry = (t.len() == 4)
                .then(|| t.get_item(2).ok()?.extract::<f64>().ok())
                .flatten()
                .filter(|r| *r > 0.0);
            match retry {
                Some(r) => PyString::new(py, &format!("{msg}; retry after {r:.3} s")).into_ptr(),
                None => msg.into_ptr(),
            }
        })
    }
}

fn install_open_error(py: Python<'_>) -> PyResult<()> {
    let ty = py.get_type::<CircuitOpenError>();
    let tp = ty.as_ptr().cast::<ffi::PyTypeObject>();
    let getters: [(&'static CStr, ffi::getter, &'static CStr); 3] = [
        (c"name", open_error_name, c"The name of the breaker that rejected the call."),
        (
            c"retry_after",
            open_error_retry,
            c"Seconds until the breaker admits calls again (0.0 while half-open trials run; None when forced open).",
        ),
        (
            c"last_failure",
            open_error_last,
            c"The exception that last counted as a failure (also ``__cause__``), or None.",
        ),
    ];
    for (name, get, doc) in getters {
        let def: &'static mut ffi::PyGetSetDef = Box::leak(Box::new(ffi::PyGetSetDef {
            name: name.as_ptr(),
            get: Some(get),
            set: None,
            doc: doc.as_ptr(),
            closure: ptr::null_mut(),
        }));
        let d = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewGetSet(tp, def)) }?;
        ty.setattr(name.to_str().expect("ASCII"), d)?;
    }
    let def: &'static mut ffi::PyMethodDef = Box::leak(Box::new(method(
        c"__str__",
        open_error_str,
        ffi::METH_NOARGS,
        c"__str__($self, /)\n--\n\nThe message (the first argument).",
    )));
    let d = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(tp, def)) }?;
    ty.setattr("__str__", d)?;
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    PY_VECTORCALL.get_or_init(find_vectorcall);
    install_open_error(py)?;
    let (fn_type, call_type) = create_types(py)?;
    FN_TYPE.store(fn_type.as_ptr().cast(), Ordering::Release);
    CALL_TYPE.store(call_type.as_ptr().cast(), Ordering::Release);
    m.add("BreakerFunction", fn_type)?;
    m.add("BreakerCall", call_type)?;
    m.add_class::<CircuitBreaker>()?;
    let ty = py.get_type::<CircuitBreaker>();
    install_methods(&ty)?;
    let init: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: c"__init__".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionWithKeywords: init_meth,
        },
        ml_flags: ffi::METH_VARARGS | ffi::METH_KEYWORDS,
        ml_doc: c"__init__($self, /, *args, **kwargs)\n--\n\nLists the breaker in fl.breakers()."
            .as_ptr(),
    }));
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyDescr_NewMethod(ty.as_ptr().cast::<ffi::PyTypeObject>(), init),
        )
    }?;
    ty.setattr("__init__", descr)?;
    m.add_function(wrap_pyfunction!(breakers, m)?)?;
    Ok(())
}

unsafe extern "C" fn init_meth(slf: Obj, args: Obj, kw: Obj) -> Obj {
    unsafe {
        if breaker_init(slf, args, kw) < 0 {
            ptr::null_mut()
        } else {
            py_none()
        }
    }
}
