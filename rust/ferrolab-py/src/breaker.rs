//! Bindings of `ferrolab_core::breaker`: ``fl.CircuitBreaker``, the functions it decorates and its awaitables.
//!
//! Everything here is PyO3's own machinery (`#[pyclass]`, `#[pymethods]`, PyO3 signatures) and no `unsafe`: the
//! raw CPython calls it needs are the safe wrappers of [`crate::ffi`], `PyIter_Send` ([`ffi::send`]), which drives
//! an awaited coroutine without raising and catching a `StopIteration` per step (see its docs for the benchmark
//! that keeps it), and [`ffi::sole_reference`], which frees a chain of `with` entries without a recursion. Errors
//! are built by [`crate::errors`]; `CircuitOpenError` is a Python class (see `OPEN_ERROR_SRC`) raised as an
//! instance of it.
//!
//! * a decorated function is a [`BreakerFunction`]: calling it admits the call with one atomic load, calls the
//!   wrapped function with the caller's argument tuple and dict, and reports the outcome. A decorated ``async def``
//!   returns a [`BreakerCall`] awaitable; a decorated generator or async generator function is a real Python
//!   generator function (``ferrolab.breaker._guard_generator_function``) that holds a [`Permit`] for the whole
//!   iteration;
//! * sync vs async is decided at decoration time from what the wrapped callable is (``inspect``), and at call time
//!   by what a call returns: a coroutine returned by a plain callable is guarded until it is awaited to its end;
//! * ``with breaker:`` and ``async with breaker:`` keep the block's permit in a context variable (per thread and
//!   per asyncio task), so the same breaker can guard many blocks at once.
//!
//! Permits are never held across a lock; a half-open trial that is cancelled (CancelledError, GeneratorExit,
//! KeyboardInterrupt...) or abandoned (its awaitable, generator, permit or context entry dropped) gives its permit
//! back.

use crate::errors::{self, FerrolabError, IntoPyResult};
use ferrolab_core::breaker::{
    self as core, Admission, Breaker, Config, MetricsMode, Outcome, Rejection, State, Ticket,
    Transition,
};
use pyo3::exceptions::{
    PyBaseException, PyException, PyGeneratorExit, PyRuntimeWarning, PyStopIteration,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyString, PyTuple, PyType, PyWeakrefReference};
use pyo3::{intern, PyTraverseError, PyVisit};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use crate::ffi::{self, Sent};

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
    record: Py<PyTuple>,
    record_all: bool,
    ignore: Option<Py<PyTuple>>,
    has_clock: bool,
    has_fallback: bool,
    /// The Python objects the garbage collector may have to clear (they can refer back to the breaker).
    refs: Mutex<Refs>,
    /// `contextvars.ContextVar` of the `with` entries, its bound `get` and `set`.
    var: Py<PyAny>,
    var_get: Py<PyAny>,
    var_set: Py<PyAny>,
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

static OPEN_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CORO_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static INSPECT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static UPDATE_WRAPPER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GUARD_GENERATOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static AWAIT_FALSE: PyOnceLock<Py<BreakerCall>> = PyOnceLock::new();

fn coro_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    CORO_TYPE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("types")?
                    .getattr("CoroutineType")?
                    .cast_into::<PyType>()?
                    .unbind(),
            )
        })
        .map(|t| t.bind(py))
}

/// Whether `o` is exactly a native coroutine (one pointer comparison on the hot path).
#[inline]
fn is_coroutine(o: &Bound<'_, PyAny>) -> bool {
    coro_type(o.py()).is_ok_and(|t| o.get_type().is(t))
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Refs> {
        self.refs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The injected clock's time (`None`: the core reads its native clock).
    #[inline]
    fn now(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        if !self.has_clock {
            return Ok(None);
        }
        self.read_clock(py).map(Some)
    }

    #[cold]
    fn read_clock(&self, py: Python<'_>) -> PyResult<f64> {
        let clock = self.lock().clock.as_ref().map(|c| c.bind(py).clone());
        let Some(clock) = clock else {
            // cleared by the garbage collector: the breaker is unreachable anyway
            return Ok(core::monotonic());
        };
        let t = clock.call0()?.extract::<f64>()?;
        if t.is_finite() {
            Ok(t)
        } else {
            Err(errors::value_error(format!(
                "CircuitBreaker '{}': clock() returned {t}; expected a finite number of seconds",
                self.core.name()
            )))
        }
    }

    /// How an exception of class `t` counts.
    fn classify_type(&self, t: &Bound<'_, PyType>) -> Outcome {
        let py = t.py();
        if let Some(ig) = &self.ignore {
            if t.is_subclass(ig.bind(py)).unwrap_or(false) {
                return Outcome::Ignored;
            }
        }
        if !t.is_subclass_of::<PyException>().unwrap_or(false) {
            // BaseException only: CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit
            return Outcome::Cancelled;
        }
        if self.record_all || t.is_subclass(self.record.bind(py)).unwrap_or(false) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    fn set_last_failure(&self, exc: &Bound<'_, PyAny>) {
        let old = self.lock().last_failure.replace(exc.clone().unbind());
        // dropped outside the lock
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

    /// Calls the listeners (outside any lock). A listener's exception is reported with `sys.unraisablehook` and
    /// does not stop the others or the call.
    fn fire(&self, py: Python<'_>, breaker: &Bound<'_, PyAny>, tr: Transition) {
        let ls: Vec<Bound<'_, PyAny>> = self
            .lock()
            .listeners
            .iter()
            .map(|l| l.bind(py).clone())
            .collect();
        if ls.is_empty() {
            return;
        }
        let (from, to) = (state_str(py, tr.from), state_str(py, tr.to));
        for l in ls {
            if let Err(e) = l.call1((breaker, from.clone(), to.clone())) {
                e.write_unraisable(py, Some(&l));
            }
        }
    }

    #[inline]
    fn fire_opt(&self, py: Python<'_>, breaker: &Bound<'_, PyAny>, tr: Option<Transition>) {
        if let Some(tr) = tr {
            self.fire(py, breaker, tr);
        }
    }

    /// The `CircuitOpenError` of a rejection.
    #[cold]
    fn open_error(&self, py: Python<'_>, r: Rejection) -> PyErr {
        let build = || -> PyResult<PyErr> {
            let msg = match r.state {
                State::Open => self.msgs[0].bind(py),
                State::HalfOpen => self.msgs[1].bind(py),
                _ => self.msgs[2].bind(py),
            };
            let retry = match r.retry_after {
                Some(t) => PyFloat::new(py, t).into_any(),
                None => py.None().into_bound(py),
            };
            let lf = self.last_failure(py);
            let ty = OPEN_ERROR
                .get(py)
                .ok_or_else(|| errors::runtime_error("ferrolab: CircuitOpenError not initialized"))?
                .bind(py);
            // (message, name, retry_after, last_failure): the properties read the args
            let exc = ty.call1((msg, self.name.bind(py), retry, lf.clone()))?;
            if let Some(lf) = lf {
                // the failure that opened the circuit is the explicit cause of the rejection
                exc.setattr(intern!(py, "__cause__"), lf)?;
            }
            Ok(PyErr::from_value(exc))
        };
        build().unwrap_or_else(|e| e)
    }

    /// A rejected call: the fallback's result, or CircuitOpenError.
    #[cold]
    fn reject<'py>(
        &self,
        py: Python<'py>,
        r: Rejection,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.fallback(py) {
            Some(fb) => fb.call(args, kwargs),
            None => Err(self.open_error(py, r)),
        }
    }

    /// Reports a call that raised `err` and fires the listeners; returns the error to raise.
    #[cold]
    fn finish_error(
        &self,
        py: Python<'_>,
        breaker: &Bound<'_, PyAny>,
        ticket: Ticket,
        err: PyErr,
    ) -> PyErr {
        let mut outcome = self.classify_type(&err.get_type(py));
        let err = if outcome == Outcome::Failure {
            // normalized, with its traceback attached, so that `last_failure` shows where it failed
            let v = err.into_value(py).into_bound(py).into_any();
            self.set_last_failure(&v);
            PyErr::from_value(v)
        } else {
            err
        };
        let now = match self.now(py) {
            Ok(n) => n,
            Err(e) => {
                e.write_unraisable(py, None);
                outcome = Outcome::Cancelled;
                None
            }
        };
        let tr = self.core.complete(ticket, outcome, now);
        self.fire_opt(py, breaker, tr);
        err
    }

    /// Reports a call that ended with `exc` (None: it succeeded), e.g. a generator or a `with` block.
    fn finish_with(
        &self,
        py: Python<'_>,
        breaker: &Bound<'_, PyAny>,
        ticket: Ticket,
        exc_type: Option<&Bound<'_, PyType>>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let outcome = match exc_type {
            None => Outcome::Success,
            Some(t) => self.classify_type(t),
        };
        if outcome == Outcome::Failure {
            if let Some(e) = exc {
                self.set_last_failure(e);
            }
        }
        let now = match self.now(py) {
            Ok(n) => n,
            Err(e) => {
                self.core.complete(ticket, Outcome::Cancelled, None);
                return Err(e);
            }
        };
        let tr = self.core.complete(ticket, outcome, now);
        self.fire_opt(py, breaker, tr);
        Ok(())
    }

    /// Reports a call that returned. `Err`: the injected clock raised (the permit went back).
    #[inline]
    fn finish_ok(
        &self,
        py: Python<'_>,
        breaker: &Bound<'_, PyAny>,
        ticket: Ticket,
    ) -> PyResult<()> {
        let now = match self.now(py) {
            Ok(n) => n,
            Err(e) => {
                self.core.complete(ticket, Outcome::Cancelled, None);
                return Err(e);
            }
        };
        let tr = self.core.complete(ticket, Outcome::Success, now);
        self.fire_opt(py, breaker, tr);
        Ok(())
    }

    /// Admits a call (firing the open -> half-open listeners).
    #[inline]
    fn admit(&self, py: Python<'_>, breaker: &Bound<'_, PyAny>) -> PyResult<Admission> {
        let now = self.now(py)?;
        let (a, tr) = self.core.acquire(now);
        self.fire_opt(py, breaker, tr);
        Ok(a)
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

/// Guards one call of `func(*args, **kwargs)`. A coroutine that the call returns is guarded until it ends: the
/// result is then a [`BreakerCall`] holding the permit.
#[inline]
fn guarded<'py>(
    py: Python<'py>,
    inner: &Arc<Inner>,
    breaker: &Bound<'py, PyAny>,
    func: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let ticket = match inner.admit(py, breaker)? {
        Admission::Admitted(t) => t,
        Admission::Rejected(r) => return inner.reject(py, r, args, kwargs),
    };
    let guard = TicketGuard {
        inner,
        ticket: Some(ticket),
    };
    let res = func.call(args, kwargs);
    let ticket = guard.defuse();
    match res {
        Ok(v) if is_coroutine(&v) => BreakerCall::running(py, inner, breaker, func, v, ticket),
        Ok(v) => {
            inner.finish_ok(py, breaker, ticket)?;
            Ok(v)
        }
        Err(e) => Err(inner.finish_error(py, breaker, ticket, e)),
    }
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The iterator to drive when awaiting `obj`: `obj` itself for a coroutine, else `obj.__await__()`.
fn await_iter<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if is_coroutine(obj) {
        return Ok(obj.clone());
    }
    let py = obj.py();
    let Ok(aw) = obj.getattr(intern!(py, "__await__")) else {
        return Err(errors::type_error(format!(
            "circuit breaker: the guarded function returned a '{}' object, which can't be awaited \
             (use call() or a plain decorator for synchronous functions)",
            type_name(obj)
        )));
    };
    let it = aw.call0()?;
    if !it.hasattr(intern!(py, "__next__"))? {
        return Err(errors::type_error("__await__() returned a non-iterator"));
    }
    Ok(it)
}

fn is_awaitable(obj: &Bound<'_, PyAny>) -> bool {
    is_coroutine(obj) || obj.hasattr(intern!(obj.py(), "__await__")).unwrap_or(false)
}

/// `StopIteration(value)`, made as an instance: on Python 3.11 PyO3 normalizes a lazily built error when it raises
/// it (a fetch and a normalization per completed call), and the awaiting frame reads an instance's value directly.
fn stop_iteration(value: Bound<'_, PyAny>) -> PyErr {
    let py = value.py();
    match py.get_type::<PyStopIteration>().call1((value,)) {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// BreakerFunction: what `@breaker` returns (for functions and `async def`)

/// A function guarded by a circuit breaker (what ``@breaker`` returns).
///
/// Calling it runs the wrapped function under the breaker; for an ``async def`` it returns an awaitable
/// ``BreakerCall``. It keeps the wrapped function's ``__name__``, ``__qualname__``, ``__doc__`` and
/// ``__wrapped__``, binds as a method and pickles by reference.
#[pyclass(
    frozen,
    dict,
    weakref,
    module = "ferrolab.breaker",
    name = "BreakerFunction"
)]
pub struct BreakerFunction {
    breaker: Py<CircuitBreaker>,
    func: Py<PyAny>,
    inner: Arc<Inner>,
    is_async: bool,
}

#[pymethods]
impl BreakerFunction {
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let breaker = self.breaker.bind(py).as_any();
        if self.is_async {
            // the caller may change its dict before the call is awaited: copied
            let kwargs = kwargs.map(|d| d.copy()).transpose()?;
            return BreakerCall::new_call(
                py,
                &self.inner,
                breaker,
                self.func.bind(py),
                args,
                kwargs,
            );
        }
        guarded(py, &self.inner, breaker, self.func.bind(py), args, kwargs)
    }

    /// Binds like a function: a bound method when read from an instance.
    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        obj: Option<&Bound<'py, PyAny>>,
        _owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        match obj {
            Some(o) if !o.is_none() => {
                let mt = METHOD_TYPE.get_or_try_init(py, || {
                    Ok::<_, PyErr>(py.import("types")?.getattr("MethodType")?.unbind())
                })?;
                mt.bind(py).call1((slf, o))
            }
            _ => Ok(slf.clone().into_any()),
        }
    }

    /// The CircuitBreaker guarding this function.
    #[getter]
    fn breaker(&self, py: Python<'_>) -> Py<CircuitBreaker> {
        self.breaker.clone_ref(py)
    }

    /// Pickled by reference (module and qualified name), like a function.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.getattr(intern!(slf.py(), "__qualname__"))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let func = self
            .func
            .bind(py)
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into());
        format!(
            "<circuit breaker '{}' guarding {func}>",
            self.inner.core.name()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.breaker)?;
        visit.call(&self.func)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// BreakerCall: the awaitable of an async guarded call (and the completed awaitables of __aenter__/__aexit__)

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    New,
    Running,
    Fallback,
    Value,
    Done,
    /// Completes with its value every time it is awaited (the results of __aenter__ and __aexit__).
    Const,
}

/// One guarded asynchronous call (from ``acall`` or an ``async def`` decorated with a breaker).
///
/// Await it once: the breaker admits the call when it starts, and records how it ends.
#[pyclass(module = "ferrolab.breaker", name = "BreakerCall")]
pub struct BreakerCall {
    inner: Option<Arc<Inner>>,
    breaker: Option<Py<PyAny>>,
    func: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    kwargs: Option<Py<PyDict>>,
    /// What is being awaited (the coroutine), once started.
    iter: Option<Py<PyAny>>,
    /// The result of a completed awaitable (Value, Const).
    value: Option<Py<PyAny>>,
    ticket: Option<Ticket>,
    phase: Phase,
}

impl BreakerCall {
    fn empty(phase: Phase) -> Self {
        BreakerCall {
            inner: None,
            breaker: None,
            func: None,
            args: None,
            kwargs: None,
            iter: None,
            value: None,
            ticket: None,
            phase,
        }
    }

    /// A not-yet-started guarded call of `func(*args, **kwargs)`.
    fn new_call<'py>(
        py: Python<'py>,
        inner: &Arc<Inner>,
        breaker: &Bound<'py, PyAny>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut c = Self::empty(Phase::New);
        c.inner = Some(inner.clone());
        c.breaker = Some(breaker.clone().unbind());
        c.func = Some(func.clone().unbind());
        c.args = Some(args.clone().unbind());
        c.kwargs = kwargs.map(Bound::unbind);
        Ok(Bound::new(py, c)?.into_any())
    }

    /// An admitted call whose coroutine `coro` is running: it holds `ticket` until `coro` ends.
    fn running<'py>(
        py: Python<'py>,
        inner: &Arc<Inner>,
        breaker: &Bound<'py, PyAny>,
        func: &Bound<'py, PyAny>,
        coro: Bound<'py, PyAny>,
        ticket: Ticket,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut c = Self::empty(Phase::Running);
        c.inner = Some(inner.clone());
        c.breaker = Some(breaker.clone().unbind());
        c.func = Some(func.clone().unbind());
        c.iter = Some(coro.unbind());
        c.ticket = Some(ticket);
        match Bound::new(py, c) {
            Ok(b) => Ok(b.into_any()),
            // dropping the object (never created) gave the ticket back
            Err(e) => Err(e),
        }
    }

    /// An awaitable that completes with `value` every time.
    fn constant(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<BreakerCall>> {
        let mut c = Self::empty(Phase::Const);
        c.value = Some(value.clone().unbind());
        Py::new(py, c)
    }

    /// Admits and starts the call: Running (the coroutine to drive), Fallback (the fallback's awaitable), Value
    /// (the fallback's plain result) or an error (Done).
    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        self.phase = Phase::Done;
        // taken for the call and put back (no reference count traffic on the Arc)
        let Some(inner) = self.inner.take() else {
            return Err(errors::runtime_error("circuit breaker call was cleared"));
        };
        let r = self.start_with(py, &inner);
        self.inner = Some(inner);
        r
    }

    fn start_with(&mut self, py: Python<'_>, inner: &Arc<Inner>) -> PyResult<()> {
        let (Some(breaker), Some(func)) = (&self.breaker, &self.func) else {
            return Err(errors::runtime_error("circuit breaker call was cleared"));
        };
        let breaker = breaker.bind(py).clone();
        let func = func.bind(py).clone();
        let args = match &self.args {
            Some(a) => a.bind(py).clone(),
            None => PyTuple::empty(py),
        };
        let kwargs = self.kwargs.as_ref().map(|k| k.bind(py).clone());
        match inner.admit(py, &breaker)? {
            Admission::Rejected(r) => {
                let Some(fb) = inner.fallback(py) else {
                    return Err(inner.open_error(py, r));
                };
                let res = fb.call(&args, kwargs.as_ref())?;
                if is_awaitable(&res) {
                    self.iter = Some(await_iter(&res)?.unbind());
                    self.phase = Phase::Fallback;
                } else {
                    self.value = Some(res.unbind());
                    self.phase = Phase::Value;
                }
                Ok(())
            }
            Admission::Admitted(t) => {
                let guard = TicketGuard {
                    inner,
                    ticket: Some(t),
                };
                let res = func.call(&args, kwargs.as_ref());
                let t = guard.defuse();
                let res = match res {
                    Ok(r) => r,
                    Err(e) => return Err(inner.finish_error(py, &breaker, t, e)),
                };
                match await_iter(&res) {
                    Ok(it) => {
                        self.iter = Some(it.unbind());
                        self.ticket = Some(t);
                        self.phase = Phase::Running;
                        Ok(())
                    }
                    Err(e) => {
                        inner.core.complete(t, Outcome::Cancelled, None);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Reports the end of the awaited call: `res` is how the last step ended.
    fn report<'py>(&mut self, py: Python<'py>, res: PyResult<Sent<'py>>) -> PyResult<Sent<'py>> {
        if let Ok(Sent::Yielded(_)) = res {
            return res;
        }
        if self.phase != Phase::Const {
            self.phase = Phase::Done;
            // released as Bound (a plain decref; dropping a Py first checks the thread's attachment)
            drop(self.iter.take().map(|o| o.into_bound(py)));
            drop(self.func.take().map(|o| o.into_bound(py)));
            drop(self.args.take().map(|o| o.into_bound(py)));
            drop(self.kwargs.take().map(|o| o.into_bound(py)));
        }
        let (Some(t), Some(inner), Some(breaker)) =
            (self.ticket.take(), &self.inner, &self.breaker)
        else {
            return res;
        };
        let breaker = breaker.bind(py);
        match res {
            Ok(Sent::Returned(v)) => {
                inner.finish_ok(py, breaker, t)?;
                Ok(Sent::Returned(v))
            }
            Err(e) => Err(inner.finish_error(py, breaker, t, e)),
            Ok(y) => Ok(y),
        }
    }

    /// Sends `arg` into the running awaitable and accounts for its end.
    fn drive<'py>(&mut self, py: Python<'py>, arg: &Bound<'py, PyAny>) -> PyResult<Sent<'py>> {
        let Some(iter) = &self.iter else {
            return Err(errors::runtime_error("circuit breaker call was cleared"));
        };
        let res = ffi::send(iter.bind(py), arg);
        self.report(py, res)
    }

    fn step<'py>(
        &mut self,
        py: Python<'py>,
        arg: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Sent<'py>> {
        let none = || py.None().into_bound(py);
        match self.phase {
            Phase::New => {
                if arg.is_some_and(|a| !a.is_none()) {
                    self.phase = Phase::Done;
                    return Err(errors::type_error(
                        "can't send non-None value to a just-started circuit breaker call",
                    ));
                }
                self.start(py)?;
                if self.phase == Phase::Value {
                    self.phase = Phase::Done;
                    let v = self.value.take().map(|v| v.into_bound(py));
                    return Ok(Sent::Returned(v.unwrap_or_else(none)));
                }
                self.drive(py, &none())
            }
            Phase::Running | Phase::Fallback => match arg {
                Some(a) => self.drive(py, a),
                None => self.drive(py, &none()),
            },
            Phase::Value => {
                self.phase = Phase::Done;
                let v = self.value.take().map(|v| v.into_bound(py));
                Ok(Sent::Returned(v.unwrap_or_else(none)))
            }
            Phase::Const => {
                let v = self.value.as_ref().map(|v| v.bind(py).clone());
                Ok(Sent::Returned(v.unwrap_or_else(none)))
            }
            Phase::Done => Err(errors::runtime_error(
                "cannot reuse an already awaited circuit breaker call",
            )),
        }
    }
}

/// `typ` (a class or an instance) with `val` as an error to raise, like `generator.throw`.
fn thrown(typ: &Bound<'_, PyAny>, val: Option<&Bound<'_, PyAny>>) -> PyErr {
    let no_val = val.is_none_or(|v| v.is_none());
    if typ.is_instance_of::<PyBaseException>() {
        if !no_val {
            return errors::type_error("instance exception may not have a separate value");
        }
        return PyErr::from_value(typ.clone());
    }
    if let Ok(t) = typ.cast::<PyType>() {
        if t.is_subclass_of::<PyBaseException>().unwrap_or(false) {
            return match val {
                Some(v) if !no_val => {
                    if v.is_instance(t).unwrap_or(false) {
                        PyErr::from_value(v.clone())
                    } else {
                        PyErr::from_type(t.clone(), v.clone().unbind())
                    }
                }
                _ => PyErr::from_type(t.clone(), ()),
            };
        }
    }
    errors::type_error("exceptions must be classes or instances deriving from BaseException")
}

#[pymethods]
impl BreakerCall {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.step(py, None)? {
            Sent::Yielded(v) => Ok(Some(v)),
            Sent::Returned(v) if v.is_none() => Ok(None),
            Sent::Returned(v) => Err(stop_iteration(v)),
        }
    }

    /// Sends a value into the awaited call (coroutine protocol).
    #[pyo3(signature = (value, /))]
    fn send<'py>(
        &mut self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.step(py, Some(value))? {
            Sent::Yielded(v) => Ok(v),
            Sent::Returned(v) => Err(stop_iteration(v)),
        }
    }

    /// Raises an exception in the awaited call (coroutine protocol); a cancellation gives a half-open permit back.
    #[pyo3(signature = (typ, val = None, tb = None, /))]
    fn throw<'py>(
        &mut self,
        py: Python<'py>,
        typ: &Bound<'py, PyAny>,
        val: Option<&Bound<'py, PyAny>>,
        tb: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let iter = self.iter.as_ref().map(|i| i.bind(py).clone());
        if let (Phase::Running | Phase::Fallback, Some(iter)) = (self.phase, iter) {
            if let Ok(meth) = iter.getattr(intern!(py, "throw")) {
                let none = py.None().into_bound(py);
                let r = match (val, tb) {
                    (None, None) => meth.call1((typ,)),
                    (Some(v), None) => meth.call1((typ, v)),
                    (v, Some(t)) => meth.call1((typ, v.unwrap_or(&none), t)),
                };
                return match r {
                    // the awaited coroutine caught it and yielded
                    Ok(v) => Ok(v),
                    Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
                        // it caught it and returned
                        self.report(py, Ok(Sent::Returned(none)))?;
                        Err(e)
                    }
                    Err(e) => match self.report(py, Err(e)) {
                        Ok(Sent::Yielded(v) | Sent::Returned(v)) => Ok(v),
                        Err(e) => Err(e),
                    },
                };
            }
        }
        // not started, finished, or an awaitable without throw(): raise it at this await
        let err = thrown(typ, val);
        match self.report(py, Err(err)) {
            Ok(Sent::Yielded(v) | Sent::Returned(v)) => Ok(v),
            Err(e) => Err(e),
        }
    }

    /// Closes the awaited call; its half-open permit goes back.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.phase == Phase::Const {
            return Ok(()); // shared: stays usable
        }
        let iter = self.iter.as_ref().map(|i| i.bind(py).clone());
        if let (Phase::Running | Phase::Fallback, Some(iter)) = (self.phase, iter) {
            if let Ok(meth) = iter.getattr(intern!(py, "close")) {
                if let Err(e) = meth.call0() {
                    return self.report(py, Err(e)).map(|_| ());
                }
            }
        }
        self.phase = Phase::Done;
        self.iter = None;
        self.value = None;
        if let (Some(t), Some(inner)) = (self.ticket.take(), &self.inner) {
            inner.core.complete(t, Outcome::Cancelled, None);
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            None => "<ferrolab.breaker.BreakerCall (completed)>".to_string(),
            Some(i) => format!(
                "<ferrolab.breaker.BreakerCall of circuit breaker '{}'>",
                i.core.name()
            ),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for o in [&self.breaker, &self.func, &self.iter, &self.value]
            .into_iter()
            .flatten()
        {
            visit.call(o)?;
        }
        if let Some(a) = &self.args {
            visit.call(a)?;
        }
        if let Some(k) = &self.kwargs {
            visit.call(k)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.breaker = None;
        self.func = None;
        self.args = None;
        self.kwargs = None;
        self.iter = None;
        self.value = None;
    }
}

impl Drop for BreakerCall {
    fn drop(&mut self) {
        if self.phase == Phase::New {
            if let Some(func) = self.func.take() {
                // warns like a coroutine that was never awaited (nothing ran, nothing was admitted)
                let name = self.inner.as_ref().map_or("", |i| i.core.name());
                Python::attach(|py| {
                    let pending = PyErr::take(py);
                    let func = func.into_bound(py);
                    let what = func
                        .repr()
                        .map(|r| r.to_string())
                        .unwrap_or_else(|_| "a function".into());
                    let msg = format!("circuit breaker '{name}' call of {what} was never awaited");
                    if let Ok(msg) = std::ffi::CString::new(msg) {
                        let cat = py.get_type::<PyRuntimeWarning>();
                        if let Err(e) = PyErr::warn(py, cat.as_any(), &msg, 1) {
                            e.write_unraisable(py, Some(&func));
                        }
                    }
                    if let Some(p) = pending {
                        p.restore(py);
                    }
                });
            }
        }
        if let (Some(t), Some(inner)) = (self.ticket.take(), &self.inner) {
            // abandoned mid-flight: the permit goes back
            inner.core.complete(t, Outcome::Cancelled, None);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Permit: a call admitted by hand (the generator wrappers of ferrolab.breaker)

/// One admitted call, reported by hand: ``success()``, ``error(exc)``; dropped unreported, its permit goes back.
///
/// When the breaker rejected the call and has a fallback, ``admitted`` is False and ``fallback`` is the fallback.
#[pyclass(frozen, module = "ferrolab.breaker", name = "_Permit")]
pub struct Permit {
    inner: Arc<Inner>,
    breaker: Py<PyAny>,
    ticket: Mutex<Option<Ticket>>,
    fallback: Option<Py<PyAny>>,
}

impl Permit {
    fn take(&self) -> Option<Ticket> {
        self.ticket.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[pymethods]
impl Permit {
    #[getter]
    fn admitted(&self) -> bool {
        self.fallback.is_none()
    }

    #[getter]
    fn fallback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.fallback.as_ref().map(|f| f.clone_ref(py))
    }

    /// The call succeeded.
    fn success(&self, py: Python<'_>) -> PyResult<()> {
        match self.take() {
            Some(t) => self.inner.finish_ok(py, self.breaker.bind(py), t),
            None => Ok(()),
        }
    }

    /// The call ended with ``exc``: counted as its class says (failure, ignored, cancelled...).
    fn error(&self, py: Python<'_>, exc: &Bound<'_, PyBaseException>) -> PyResult<()> {
        match self.take() {
            Some(t) => self.inner.finish_with(
                py,
                self.breaker.bind(py),
                t,
                Some(&exc.get_type()),
                Some(exc.as_any()),
            ),
            None => Ok(()),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.breaker)?;
        if let Some(f) = &self.fallback {
            visit.call(f)?;
        }
        Ok(())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // abandoned before it was reported: the permit goes back
        let t = self
            .ticket
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = t {
            self.inner.core.complete(t, Outcome::Cancelled, None);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `with` entries
//
// `with breaker:` calls `__exit__` on the breaker itself, so the permit of each entered block is kept aside, in a
// context variable: every thread and every asyncio task has its own context, so interleaved blocks keep their own
// permits (no frame inspection: the same rule holds for a `with` statement in a plain function, in a coroutine
// and for `async with`). The variable holds a chain of entries; leaving a block marks its entry done instead of
// setting the variable again (setting it costs a copy-on-write of the context), and the next block entered in the
// context skips the done entries. A context that is dropped (its thread or task ended) drops its entries, and an
// entry dropped while still live gives its permit back.

/// One ``with breaker:`` block entered in a context: its permit (taken when the block is left), and the entry of
/// the enclosing block.
#[pyclass(frozen, module = "ferrolab.breaker", name = "_Entry")]
struct Entry {
    core: Arc<Breaker>,
    ticket: Mutex<Option<Ticket>>,
    /// The entry of the enclosing block; [`live_entry`] shortens it past entries that are done. The lock is held
    /// only to read or swap it, never while Python code runs (a reference it replaces is dropped after).
    prev: Mutex<Option<Py<Entry>>>,
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

    fn prev<'py>(&self, py: Python<'py>) -> Option<Bound<'py, Entry>> {
        self.prev_slot().as_ref().map(|p| p.bind(py).clone())
    }

    fn prev_slot(&self) -> MutexGuard<'_, Option<Py<Entry>>> {
        self.prev.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Entry {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // never waits: the lock is not held while Python code (and so the collector) runs
        if let Ok(p) = self.prev.try_lock() {
            if let Some(p) = &*p {
                visit.call(p)?;
            }
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
        // The enclosing entries that only this one holds are freed one at a time: dropping the chain whole would
        // recurse once per entry, and a context holding many blocks that were never left (e.g. a million
        // abandoned `async with breaker:` coroutines) would overflow the stack.
        let mut next = self
            .prev
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if next.is_none() {
            return;
        }
        // an entry is dropped by its tp_dealloc, with the thread attached
        Python::attach(|py| {
            while let Some(p) = next.take() {
                let p = p.into_bound(py);
                if ffi::sole_reference(p.as_any()) {
                    next = p.get().prev_slot().take();
                }
                drop(p);
            }
        });
    }
}

/// The innermost live entry of this context, starting at `top` (the variable's value).
///
/// Entries that are done stay in the chain (leaving a block does not set the variable); the ones walked past
/// here are cut out of it by linking `top` straight to the entry found, so blocks left in any order (or
/// abandoned and closed later) cost one step each, not a walk over all the done entries per exit.
fn live_entry<'py>(top: Bound<'py, PyAny>) -> Option<Bound<'py, Entry>> {
    let top = top.cast_into::<Entry>().ok()?;
    if top.get().live() {
        return Some(top);
    }
    let py = top.py();
    let mut found = top.get().prev(py);
    let mut steps = 0usize;
    while let Some(e) = &found {
        if e.get().live() {
            break;
        }
        found = e.get().prev(py);
        steps += 1;
    }
    if steps > 0 {
        let link = found.as_ref().map(|e| e.clone().unbind());
        // the cut-out entries are dropped after the lock is released
        let cut = std::mem::replace(&mut *top.get().prev_slot(), link);
        drop(cut);
    }
    found
}

fn var_get<'py>(py: Python<'py>, inner: &Inner) -> PyResult<Bound<'py, PyAny>> {
    inner.var_get.bind(py).call1((py.None(),))
}

fn enter(py: Python<'_>, slf: &Bound<'_, PyAny>, inner: &Inner) -> PyResult<()> {
    let t = match inner.admit(py, slf)? {
        Admission::Admitted(t) => t,
        Admission::Rejected(r) => return Err(inner.open_error(py, r)),
    };
    let guard = TicketGuard {
        inner,
        ticket: Some(t),
    };
    let top = var_get(py, inner)?;
    let entry = Entry {
        core: inner.core.clone(),
        ticket: Mutex::new(Some(guard.defuse())),
        prev: Mutex::new(live_entry(top).map(Bound::unbind)),
    };
    let entry = Bound::new(py, entry)?;
    inner.var_set.bind(py).call1((entry,))?;
    Ok(())
}

fn exit(
    py: Python<'_>,
    slf: &Bound<'_, PyAny>,
    inner: &Inner,
    exc_type: Option<&Bound<'_, PyAny>>,
    exc: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let exc_type = exc_type.filter(|t| !t.is_none());
    let top = var_get(py, inner)?;
    let Some(t) = live_entry(top).and_then(|e| e.get().take()) else {
        if exc_type.is_some_and(|t| {
            t.cast::<PyType>()
                .is_ok_and(|t| t.is_subclass_of::<PyGeneratorExit>().unwrap_or(false))
        }) {
            // a coroutine closed by the garbage collector outside the context it entered the block in: the
            // permit goes back when that context goes away
            return Ok(());
        }
        return Err(errors::runtime_error(format!(
            "circuit breaker '{}': __exit__ without a matching __enter__ in this thread or context",
            inner.core.name()
        )));
    };
    let exc_type = match exc_type {
        None => None,
        Some(t) => match t.cast::<PyType>() {
            Ok(t) => Some(t.clone()),
            Err(_) => Some(t.get_type()),
        },
    };
    let exc = exc.filter(|e| !e.is_none());
    inner.finish_with(py, slf, t, exc_type.as_ref(), exc)
}

// ---------------------------------------------------------------------------------------------------------------
// Argument parsing

const NEW_FUNC: &str = "CircuitBreaker()";

fn int_arg(arg: &str, o: &Bound<'_, PyAny>, none_ok: bool) -> PyResult<Option<u32>> {
    if o.is_none() && none_ok {
        return Ok(None);
    }
    let is_int =
        o.is_instance_of::<pyo3::types::PyInt>() && !o.is_instance_of::<pyo3::types::PyBool>();
    if !is_int {
        return Err(errors::type_error(format!(
            "{NEW_FUNC}: argument '{arg}' must be an int{}, got {}",
            if none_ok { " or None" } else { "" },
            type_name(o)
        )));
    }
    let v: i64 = o.extract().unwrap_or(i64::MAX);
    if v < 0 || v > u32::MAX as i64 {
        // the core checks the real range; this one only has to fit
        return Err(errors::value_error(format!(
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
        return Err(errors::type_error(format!(
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
        let is_exc = it
            .cast::<PyType>()
            .is_ok_and(|t| t.is_subclass_of::<PyBaseException>().unwrap_or(false));
        if !is_exc {
            return Err(errors::type_error(format!(
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
        return Err(errors::type_error(format!(
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

/// A circuit breaker for functions, coroutines, generators and ``with`` / ``async with`` blocks.
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
/// locked while they run. Each ``with`` block keeps its own permit, per thread and per asyncio task (context). A
/// thread or task that ends inside a block, or an awaitable or generator dropped before it finished, gives its
/// half-open permit back.
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
        slf.get().inner.fire_opt(slf.py(), slf.as_any(), tr);
    }
}

/// The `inspect` module.
fn inspect(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    INSPECT
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("inspect")?.into_any().unbind())
        })
        .map(|m| m.bind(py))
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
            errors::type_error(format!(
                "{NEW_FUNC}: argument 'name' must be a str, got {}",
                type_name(name)
            ))
        })?;
        let mut cfg = Config::default();
        let mut record = PyTuple::new(py, [py.get_type::<PyException>()])?;
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
                            return Err(errors::type_error(format!(
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
                        return Err(errors::type_error(format!(
                            "{NEW_FUNC} got an unexpected keyword argument '{k}'{hint}"
                        )));
                    }
                }
            }
        }
        let name_s = name.to_str()?.to_string();
        let core = Arc::new(Breaker::new(&name_s, cfg).py()?);
        let exc = py.get_type::<PyException>();
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
            record: record.unbind(),
            record_all,
            ignore: ignore.map(Bound::unbind),
            has_clock: clock.is_some(),
            has_fallback: fallback.is_some(),
            refs: Mutex::new(Refs {
                fallback,
                clock,
                ..Refs::default()
            }),
            var_get: var.getattr("get")?.unbind(),
            var_set: var.getattr("set")?.unbind(),
            var: var.unbind(),
            core: core.clone(),
        };
        core::register(&core);
        Ok(CircuitBreaker {
            inner: Arc::new(inner),
        })
    }

    /// Lists the breaker in ``fl.breakers()`` (the object exists only now).
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __init__(
        slf: &Bound<'_, Self>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        register_py(slf)
    }

    /// Decorates ``func``: every call runs under the breaker.
    ///
    /// A function or an ``async def`` becomes a ``BreakerFunction``; a generator or async generator function
    /// becomes a generator function of the same kind, guarded for its whole iteration. ``inspect`` reports the
    /// result as the kind it wraps.
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if !func.is_callable() {
            return Err(errors::type_error(format!(
                "CircuitBreaker '{}': the decorated object must be callable, got {}",
                slf.get().inner.core.name(),
                type_name(func)
            )));
        }
        let inspect = inspect(py)?;
        let is_gen = inspect
            .call_method1(intern!(py, "isgeneratorfunction"), (func,))?
            .is_truthy()?
            || inspect
                .call_method1(intern!(py, "isasyncgenfunction"), (func,))?
                .is_truthy()?;
        if is_gen {
            let guard = GUARD_GENERATOR.get_or_try_init(py, || {
                Ok::<_, PyErr>(
                    py.import("ferrolab.breaker")?
                        .getattr("_guard_generator_function")?
                        .unbind(),
                )
            })?;
            return guard.bind(py).call1((slf, func));
        }
        let mut is_async = inspect
            .call_method1(intern!(py, "iscoroutinefunction"), (func,))?
            .is_truthy()?;
        if let Ok(f) = func.cast::<BreakerFunction>() {
            // a breaker stacked on another one that guards an async def
            is_async |= f.get().is_async;
        }
        let wrapper = Bound::new(
            py,
            BreakerFunction {
                breaker: slf.clone().unbind(),
                func: func.clone().unbind(),
                inner: slf.get().inner.clone(),
                is_async,
            },
        )?
        .into_any();
        let update = UPDATE_WRAPPER.get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("functools")?.getattr("update_wrapper")?.unbind())
        })?;
        update.bind(py).call1((&wrapper, func))?;
        if is_async {
            if let Ok(mark) = inspect.getattr("markcoroutinefunction") {
                // Python 3.12+
                mark.call1((&wrapper,))?;
            } else {
                // Python 3.11: inspect.iscoroutinefunction() accepts a "function-like" object (a __code__ and a
                // __name__, as Cython functions have): the wrapped function's code says "coroutine"; the marker
                // is what asyncio.iscoroutinefunction() looks for
                for attr in ["__code__", "__defaults__", "__kwdefaults__"] {
                    if let Ok(v) = func.getattr(attr) {
                        wrapper.setattr(attr, v)?;
                    }
                }
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

    /// Calls ``fn(*args, **kwargs)`` under the breaker and returns its result.
    ///
    /// Raises CircuitOpenError (or returns ``fallback(*args, **kwargs)``) when the breaker rejects the call; an
    /// exception of ``fn`` propagates unchanged after it was recorded.
    #[pyo3(signature = (func, /, *args, **kwargs), text_signature = "($self, fn, /, *args, **kwargs)")]
    fn call<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(slf.py(), &slf.get().inner, slf.as_any(), func, args, kwargs)
    }

    /// An awaitable that calls ``fn(*args, **kwargs)`` under the breaker and awaits its result.
    ///
    /// The breaker admits the call when it is awaited; cancelling it gives a half-open permit back.
    #[pyo3(signature = (func, /, *args, **kwargs), text_signature = "($self, fn, /, *args, **kwargs)")]
    fn acall<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        BreakerCall::new_call(slf.py(), &slf.get().inner, slf.as_any(), func, args, kwargs)
    }

    /// Admits one call reported by hand (the generator wrappers of ``ferrolab.breaker``): a ``_Permit``, or
    /// CircuitOpenError when rejected without a fallback.
    fn _admit(slf: &Bound<'_, Self>) -> PyResult<Permit> {
        let py = slf.py();
        let inner = &slf.get().inner;
        let (ticket, fallback) = match inner.admit(py, slf.as_any())? {
            Admission::Admitted(t) => (Some(t), None),
            Admission::Rejected(r) => match inner.fallback(py) {
                Some(fb) => (None, Some(fb.unbind())),
                None => return Err(inner.open_error(py, r)),
            },
        };
        Ok(Permit {
            inner: inner.clone(),
            breaker: slf.clone().into_any().unbind(),
            ticket: Mutex::new(ticket),
            fallback,
        })
    }

    /// Admits the block or raises CircuitOpenError.
    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        enter(slf.py(), slf.as_any(), &slf.get().inner)?;
        Ok(slf.clone())
    }

    /// Records how the block ended; never suppresses its exception.
    #[pyo3(signature = (exc_type = None, exc = None, _tb = None, /))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        exit(slf.py(), slf.as_any(), &slf.get().inner, exc_type, exc)?;
        Ok(false)
    }

    /// Admits the block or raises CircuitOpenError (a completed awaitable).
    fn __aenter__(slf: &Bound<'_, Self>) -> PyResult<Py<BreakerCall>> {
        let py = slf.py();
        let inner = &slf.get().inner;
        enter(py, slf.as_any(), inner)?;
        let cached = inner.lock().aenter.as_ref().map(|a| a.clone_ref(py));
        if let Some(a) = cached {
            return Ok(a.into_bound(py).cast_into::<BreakerCall>()?.unbind());
        }
        let a = BreakerCall::constant(py, slf.as_any())?;
        let old = inner.lock().aenter.replace(a.clone_ref(py).into_any());
        drop(old.map(|o| o.into_bound(py)));
        Ok(a)
    }

    /// Records how the block ended (a completed awaitable).
    #[pyo3(signature = (exc_type = None, exc = None, _tb = None, /))]
    fn __aexit__(
        slf: &Bound<'_, Self>,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<BreakerCall>> {
        let py = slf.py();
        exit(py, slf.as_any(), &slf.get().inner, exc_type, exc)?;
        let f = AWAIT_FALSE.get_or_try_init(py, || {
            BreakerCall::constant(py, pyo3::types::PyBool::new(py, false).as_any())
        })?;
        Ok(f.clone_ref(py))
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
        let now = self.inner.now(py)?;
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
            return Err(errors::type_error(format!(
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
            None => Err(errors::value_error("remove_listener(): listener not found")),
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

// ---------------------------------------------------------------------------------------------------------------
// CircuitOpenError(message, name, retry_after, last_failure)
//
// PyO3's way, `#[pyclass(extends = PyException)]` with `#[getter]`s (pydantic-core's ValidationError), needs the
// full API or the limited API of Python 3.12+: this crate builds for the stable ABI of 3.11 (`abi3-py311`), where
// PyO3 cannot subclass an exception. The class is therefore defined by Python source run once at import; its
// properties read the exception's args, so that raising builds no instance dict and pickling needs nothing more.

const OPEN_ERROR_SRC: &std::ffi::CStr = cr#"
def make(base):
    class CircuitOpenError(base):
        """A circuit breaker rejected the call: it is open, forced open, or half-open with every trial call in flight.

        ``name`` is the breaker's name, ``retry_after`` the seconds until it admits calls again (None when forced
        open) and ``last_failure`` the exception that last counted as a failure (also the ``__cause__``), or None.
        """

        __module__ = "ferrolab"
        __qualname__ = "CircuitOpenError"

        def _arg(self, i):
            a = self.args
            return a[i] if len(a) > i else None

        @property
        def name(self):
            """The name of the breaker that rejected the call."""
            return self._arg(1)

        @property
        def retry_after(self):
            """Seconds until the breaker admits calls again (0.0 while half-open trials run; None when forced open)."""
            return self._arg(2)

        @property
        def last_failure(self):
            """The exception that last counted as a failure (also ``__cause__``), or None."""
            return self._arg(3)

        def __str__(self):
            a = self.args
            if not a:
                return ""
            msg = str(a[0])
            r = a[2] if len(a) == 4 else None
            if isinstance(r, (int, float)) and r > 0:
                return f"{msg}; retry after {r:.3f} s"
            return msg

    return CircuitOpenError
"#;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let src = PyModule::from_code(
        py,
        OPEN_ERROR_SRC,
        c"<ferrolab.breaker CircuitOpenError>",
        c"ferrolab._core._open_error",
    )?;
    let ty = src
        .getattr("make")?
        .call1((py.get_type::<FerrolabError>(),))?
        .cast_into::<PyType>()?;
    m.add("CircuitOpenError", &ty)?;
    let _ = OPEN_ERROR.set(py, ty.unbind());
    m.add_class::<BreakerFunction>()?;
    m.add_class::<BreakerCall>()?;
    m.add_class::<CircuitBreaker>()?;
    m.add_function(wrap_pyfunction!(breakers, m)?)?;
    Ok(())
}
