//! Bindings of `ferrolab_core::breaker`: ``fl.CircuitBreaker``, the functions it decorates and its awaitables.
//!
//! The state machine, its parameters, stats and registry are the core's; this file converts and dispatches, with
//! no `unsafe`: its raw CPython calls are [`crate::ffi`]'s ([`ffi::send`] drives an awaited coroutine without a
//! `StopIteration` per step, `call`/`acall` are `METH_FASTCALL` methods, [`ffi::sole_reference`] frees a chain of
//! `with` entries without a recursion). `CircuitOpenError` is Python (`open_error.py`), and so is decoration
//! (``ferrolab.breaker._decorate``: ``inspect`` picks a [`BreakerFunction`] or a guarded generator function).
//!
//! A [`BreakerFunction`] call is admitted with one atomic load; an ``async def`` call is a [`BreakerCall`]
//! awaitable (the breaker's last completed one, made anew, when nothing else holds it: [`BreakerCall::retire`]),
//! and so is a plain call that returns a coroutine (guarded until awaited to its end); a generator holds
//! a [`Permit`] for its whole iteration; ``with`` / ``async with`` keep the block's permit in a context variable
//! (per thread and per asyncio task). Permits are never held across a lock; a half-open trial that is cancelled
//! (CancelledError, GeneratorExit, KeyboardInterrupt...) or abandoned (its awaitable, generator, permit or context
//! entry dropped) gives its permit back.

use crate::errors::{self, type_of, FerrolabError, IntoPyResult};
use crate::ffi::{self, Sent};
use ferrolab_core::breaker::{
    self as core, Admission, Arg, Breaker, Config, Outcome, Rejection, StatValue, State, Ticket,
    Transition,
};
use ferrolab_core::sync::MutexExt;
use pyo3::exceptions::{
    PyBaseException, PyException, PyGeneratorExit, PyRuntimeWarning, PyStopIteration,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    IntoPyDict, PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType,
    PyWeakrefReference,
};
use pyo3::{intern, PyTraverseError, PyVisit};
use std::ffi::CStr;
use std::sync::{Arc, Mutex};

/// A core permit that gives its ticket back (cancelled) when dropped unreported.
type Held = core::Permit<Arc<Breaker>>;

/// The value of a `Mutex<Option<_>>`, taken (a permit reported once).
fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.locked().take()
}

fn repr(o: &Bound<'_, PyAny>, or: &str) -> String {
    o.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| or.into())
}

/// Drops `o` as a `Bound` (a plain decref: dropping a `Py` first checks the thread's attachment).
fn release(py: Python<'_>, o: Option<Py<impl Sized>>) {
    drop(o.map(|o| o.into_bound(py)));
}

static OPEN_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CORO_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static AWAIT_FALSE: PyOnceLock<Py<BreakerCall>> = PyOnceLock::new();

/// Whether `o` is exactly a native coroutine (one pointer comparison on the hot path).
#[inline]
fn is_coroutine(o: &Bound<'_, PyAny>) -> bool {
    let py = o.py();
    CORO_TYPE
        .import(py, "types", "CoroutineType")
        .is_ok_and(|t| o.get_type().is(t))
}

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

impl CircuitBreaker {
    /// The spare call object ([`BreakerCall::retire`]) when nothing but the breaker holds it.
    fn take_spare<'py>(&self, py: Python<'py>) -> Option<Bound<'py, BreakerCall>> {
        let c = self.spare.take(py)?;
        // otherwise somebody kept the awaitable: it stays theirs
        ffi::sole_reference(&c)
            .then(|| c.cast_into().ok())
            .flatten()
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
        let Some(clock) = self
            .refs
            .locked()
            .clock
            .as_ref()
            .map(|c| c.bind(py).clone())
        else {
            return Ok(core::monotonic()); // cleared by the collector: the breaker is unreachable anyway
        };
        let t = clock.call0()?.extract::<f64>()?;
        if !t.is_finite() {
            return Err(errors::value_error(format!(
                "CircuitBreaker '{}': clock() returned {t}; expected a finite number of seconds",
                self.core.name()
            )));
        }
        Ok(t)
    }

    /// How an exception of class `t` counts; a failure's exception `exc` becomes `last_failure`.
    fn classify(&self, t: &Bound<'_, PyType>, exc: Option<&Bound<'_, PyAny>>) -> Outcome {
        let py = t.py();
        let is = |c: &Py<PyTuple>| t.is_subclass(c.bind(py)).unwrap_or(false);
        let outcome = if self.ignore.as_ref().is_some_and(is) {
            Outcome::Ignored
        } else if !t.is_subclass_of::<PyException>().unwrap_or(false) {
            Outcome::Cancelled // BaseException only: CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit
        } else if self.record_all || is(&self.record) {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        if let (Outcome::Failure, Some(e)) = (outcome, exc) {
            self.set_last_failure(e);
        }
        outcome
    }

    fn set_last_failure(&self, e: &Bound<'_, PyAny>) {
        let old = self.refs.locked().last_failure.replace(e.clone().unbind());
        release(e.py(), old); // outside the lock
    }

    /// The listeners, to call outside the lock.
    fn listeners<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyAny>> {
        self.refs
            .locked()
            .listeners
            .iter()
            .map(|l| l.bind(py).clone())
            .collect()
    }

    fn get<'py>(
        &self,
        py: Python<'py>,
        f: impl Fn(&Refs) -> &Option<Py<PyAny>>,
    ) -> Option<Bound<'py, PyAny>> {
        f(&self.refs.locked()).as_ref().map(|o| o.bind(py).clone())
    }

    fn fallback<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.has_fallback
            .then(|| self.get(py, |r| &r.fallback))
            .flatten()
    }

    /// The `CircuitOpenError` of a rejection: (message, name, retry_after, last_failure), the failure also its cause.
    #[cold]
    fn open_error(&self, py: Python<'_>, r: Rejection) -> PyErr {
        let build = || -> PyResult<PyErr> {
            let i = match r.state {
                State::Open => 0,
                State::HalfOpen => 1,
                _ => 2,
            };
            let retry = r.retry_after.map(|t| PyFloat::new(py, t));
            let lf = self.get(py, |r| &r.last_failure);
            let ty = OPEN_ERROR.get(py).ok_or_else(|| {
                errors::runtime_error("ferrolab: CircuitOpenError not initialized")
            })?;
            let exc = ty
                .bind(py)
                .call1((&self.msgs[i], &self.name, retry, lf.clone()))?;
            if let Some(lf) = lf {
                exc.setattr(intern!(py, "__cause__"), lf)?;
            }
            Ok(PyErr::from_value(exc))
        };
        build().unwrap_or_else(|e| e)
    }
}

/// Calls the listeners of `b` for `tr` (outside any lock); a listener's exception goes to `sys.unraisablehook` and
/// stops neither the others nor the call.
#[inline]
fn fire(b: &Bound<'_, CircuitBreaker>, tr: Option<Transition>) {
    if let Some(tr) = tr {
        fire_listeners(b, tr);
    }
}

#[cold]
fn fire_listeners(b: &Bound<'_, CircuitBreaker>, tr: Transition) {
    let py = b.py();
    let (from, to) = (state_str(py, tr.from), state_str(py, tr.to));
    for l in b.get().listeners(py) {
        if let Err(e) = l.call1((b, &from, &to)) {
            e.write_unraisable(py, Some(&l));
        }
    }
}

fn state_str(py: Python<'_>, s: State) -> Bound<'_, PyString> {
    PyString::intern(py, s.name())
}

/// Admits a call (firing the open -> half-open listeners).
#[inline]
fn admit(b: &Bound<'_, CircuitBreaker>) -> PyResult<Admission> {
    let (a, tr) = b.get().core.acquire(b.get().now(b.py())?);
    fire(b, tr);
    Ok(a)
}

/// Reports `ticket` with `outcome` and fires the listeners. `Err`: the injected clock raised (the permit went back).
#[inline]
fn complete(b: &Bound<'_, CircuitBreaker>, ticket: Ticket, outcome: Outcome) -> PyResult<()> {
    let i = b.get();
    match i.now(b.py()) {
        Ok(now) => {
            fire(b, i.core.complete(ticket, outcome, now));
            Ok(())
        }
        Err(e) => {
            i.core.complete(ticket, Outcome::Cancelled, None);
            Err(e)
        }
    }
}

/// Reports a call that ended with `exc` (None: it succeeded): a generator, a `with` block.
fn finish(
    b: &Bound<'_, CircuitBreaker>,
    ticket: Ticket,
    exc: Option<(&Bound<'_, PyType>, Option<&Bound<'_, PyAny>>)>,
) -> PyResult<()> {
    let outcome = exc.map_or(Outcome::Success, |(t, e)| b.get().classify(t, e));
    complete(b, ticket, outcome)
}

/// Reports a call that raised `err`; returns the error to raise (an error of the injected clock is unraisable).
#[cold]
fn finish_error(b: &Bound<'_, CircuitBreaker>, ticket: Ticket, err: PyErr) -> PyErr {
    let py = b.py();
    let outcome = b.get().classify(&err.get_type(py), None);
    let err = if outcome == Outcome::Failure {
        // normalized, with its traceback, so that `last_failure` shows where it failed
        let v = err.into_value(py).into_bound(py).into_any();
        b.get().set_last_failure(&v);
        PyErr::from_value(v)
    } else {
        err
    };
    if let Err(e) = complete(b, ticket, outcome) {
        e.write_unraisable(py, None);
    }
    err
}

/// A rejected call: the fallback's result, or CircuitOpenError.
#[cold]
fn reject<'py>(
    b: &Bound<'py, CircuitBreaker>,
    r: Rejection,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    match b.get().fallback(b.py()) {
        Some(fb) => fb.call(args, kwargs),
        None => Err(b.get().open_error(b.py(), r)),
    }
}

/// Guards one call of `func(*args, **kwargs)`. A coroutine that the call returns is guarded until it ends: the
/// result is then a [`BreakerCall`] holding the permit.
#[inline]
fn guarded<'py>(
    b: &Bound<'py, CircuitBreaker>,
    func: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let ticket = match admit(b)? {
        Admission::Admitted(t) => t,
        Admission::Rejected(r) => return reject(b, r, args, kwargs),
    };
    let permit = core::Permit::new(&*b.get().core, ticket); // given back if the call unwinds
    let res = func.call(args, kwargs);
    let ticket = permit.into_ticket();
    match res {
        Ok(v) if is_coroutine(&v) => {
            let call = BreakerCall {
                breaker: Some(b.clone().unbind()),
                call: None,
                obj: Some(v.unbind()),
                ticket: Some(ticket),
                phase: Phase::Running,
            };
            Ok(Bound::new(b.py(), call)?.into_any()) // if it can't be created, the ticket goes back
        }
        Ok(v) => complete(b, ticket, Outcome::Success).map(|()| v),
        Err(e) => Err(finish_error(b, ticket, e)),
    }
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
            type_of(obj)
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
        let (b, func) = (self.breaker.bind(py), self.func.bind(py));
        if self.is_async {
            // the caller may change its dict before the call is awaited: copied
            return BreakerCall::new_call(b, func, args, kwargs.map(|d| d.copy()).transpose()?);
        }
        guarded(b, func, args, kwargs)
    }

    /// Binds like a function: a bound method when read from an instance.
    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        obj: Option<&Bound<'py, PyAny>>,
        _owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        match obj {
            Some(o) if !o.is_none() => METHOD_TYPE
                .import(slf.py(), "types", "MethodType")?
                .call1((slf, o)),
            _ => Ok(slf.clone().into_any()),
        }
    }

    /// Whether calls return an awaitable (it guards an ``async def``).
    #[getter]
    fn _is_async(&self) -> bool {
        self.is_async
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
        let name = self.breaker.get().core.name();
        format!(
            "<circuit breaker '{name}' guarding {}>",
            repr(self.func.bind(py), "?")
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.breaker)?;
        visit.call(&self.func)
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

/// The call a `BreakerCall` makes when it starts: `fn`, its argument tuple and keyword dict.
type Pending = (Py<PyAny>, Py<PyTuple>, Option<Py<PyDict>>);

/// One guarded asynchronous call (from ``acall`` or an ``async def`` decorated with a breaker).
///
/// Await it once: the breaker admits the call when it starts, and records how it ends.
// No `freelist`: PyO3 0.30 does not track a reused instance for the cyclic garbage collector (PyO3/pyo3#6442),
// so a cycle through it would never be collected and its permit never given back.
#[pyclass(module = "ferrolab.breaker", name = "BreakerCall")]
pub struct BreakerCall {
    breaker: Option<Py<CircuitBreaker>>,
    /// New: the call to make.
    call: Option<Pending>,
    /// Running, Fallback: what is being awaited; Value, Const: the result.
    obj: Option<Py<PyAny>>,
    ticket: Option<Ticket>,
    phase: Phase,
}

fn cleared() -> PyErr {
    errors::runtime_error("circuit breaker call was cleared")
}

impl BreakerCall {
    /// A not-yet-started guarded call of `func(*args, **kwargs)`.
    fn new_call<'py>(
        b: &Bound<'py, CircuitBreaker>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = (
            func.clone().unbind(),
            args.clone().unbind(),
            kwargs.map(Bound::unbind),
        );
        let breaker = Some(b.clone().unbind());
        if let Some(spare) = b.get().take_spare(b.py()) {
            if let Ok(mut c) = spare.try_borrow_mut() {
                if c.retired() {
                    (c.breaker, c.call, c.phase) = (breaker, Some(call), Phase::New);
                    drop(c);
                    return Ok(spare.into_any());
                }
            }
        }
        let c = BreakerCall {
            breaker,
            call: Some(call),
            obj: None,
            ticket: None,
            phase: Phase::New,
        };
        Ok(Bound::new(b.py(), c)?.into_any())
    }

    /// After a call completed in `__next__`: drops its reference to the breaker and leaves the object to the
    /// breaker as its spare ([`CircuitBreaker::take_spare`]).
    fn retire(slf: &Bound<'_, Self>) {
        let Ok(mut c) = slf.try_borrow_mut() else {
            return;
        };
        if !c.retired() {
            return;
        }
        if let Some(b) = c.breaker.take() {
            drop(c);
            b.get().spare.put(slf.clone().into_any());
        }
    }

    /// Completed, and holding no reference but the breaker.
    fn retired(&self) -> bool {
        self.phase == Phase::Done
            && self.ticket.is_none()
            && self.obj.is_none()
            && self.call.is_none()
    }

    /// An awaitable that completes with `value` every time.
    fn constant(value: &Bound<'_, PyAny>) -> PyResult<Py<BreakerCall>> {
        let obj = Some(value.clone().unbind());
        let (breaker, call, ticket, phase) = (None, None, None, Phase::Const);
        Py::new(
            value.py(),
            BreakerCall {
                breaker,
                call,
                obj,
                ticket,
                phase,
            },
        )
    }

    /// Gives the permit back (cancelled), if one is held.
    fn cancel(&mut self) {
        if let (Some(t), Some(b)) = (self.ticket.take(), &self.breaker) {
            b.get().core.complete(t, Outcome::Cancelled, None);
        }
    }

    /// Admits and starts the call: Running (the coroutine to drive), Fallback (the fallback's awaitable), Value
    /// (the fallback's plain result) or an error (Done).
    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        self.phase = Phase::Done;
        let (Some(b), Some((func, args, kwargs))) = (&self.breaker, self.call.take()) else {
            return Err(cleared());
        };
        let (b, func, args) = (b.bind(py), func.into_bound(py), args.into_bound(py));
        let kwargs = kwargs.map(|k| k.into_bound(py));
        let (res, phase) = match admit(b)? {
            Admission::Rejected(r) => {
                let fb = b
                    .get()
                    .fallback(py)
                    .ok_or_else(|| b.get().open_error(py, r))?;
                let res = fb.call(&args, kwargs.as_ref())?;
                if !is_awaitable(&res) {
                    (self.obj, self.phase) = (Some(res.unbind()), Phase::Value);
                    return Ok(());
                }
                (await_iter(&res)?, Phase::Fallback)
            }
            Admission::Admitted(t) => {
                let permit = core::Permit::new(&*b.get().core, t); // back if the call or `__await__` fails
                let it = match func.call(&args, kwargs.as_ref()) {
                    Ok(r) => await_iter(&r)?,
                    Err(e) => return Err(finish_error(b, permit.into_ticket(), e)),
                };
                self.ticket = Some(permit.into_ticket());
                (it, Phase::Running)
            }
        };
        (self.obj, self.phase) = (Some(res.unbind()), phase);
        Ok(())
    }

    /// Reports the end of the awaited call: `res` is how the last step ended.
    fn report<'py>(&mut self, py: Python<'py>, res: PyResult<Sent<'py>>) -> PyResult<Sent<'py>> {
        if let Ok(Sent::Yielded(_)) = res {
            return res;
        }
        if self.phase != Phase::Const {
            self.phase = Phase::Done;
            release(py, self.obj.take());
        }
        let (Some(t), Some(b)) = (self.ticket.take(), &self.breaker) else {
            return res;
        };
        let b = b.bind(py);
        match res {
            Ok(sent) => complete(b, t, Outcome::Success).map(|()| sent),
            Err(e) => Err(finish_error(b, t, e)),
        }
    }

    /// The value of a completed awaitable (taken unless it is a constant).
    fn value<'py>(&mut self, py: Python<'py>) -> Sent<'py> {
        let v = if self.phase == Phase::Const {
            self.obj.as_ref().map(|v| v.clone_ref(py))
        } else {
            self.phase = Phase::Done;
            self.obj.take()
        };
        Sent::Returned(v.map_or_else(|| py.None().into_bound(py), |v| v.into_bound(py)))
    }

    /// One step of the awaited call: `arg` sent into it (`None`: `__next__`), then how it ended, if it did.
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        arg: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Sent<'py>> {
        match self.phase {
            Phase::New if arg.is_some_and(|a| !a.is_none()) => {
                self.phase = Phase::Done;
                Err(errors::type_error(
                    "can't send non-None value to a just-started circuit breaker call",
                ))
            }
            Phase::New => {
                self.start(py)?;
                self.step(py, None)
            }
            Phase::Running | Phase::Fallback => {
                let none = py.None().into_bound(py);
                let it = self.obj.as_ref().ok_or_else(cleared)?.bind(py);
                let res = ffi::send(it, arg.unwrap_or(&none));
                self.report(py, res)
            }
            Phase::Value | Phase::Const => Ok(self.value(py)),
            Phase::Done => Err(errors::runtime_error(
                "cannot reuse an already awaited circuit breaker call",
            )),
        }
    }

    /// The awaited iterator's method `name`, while it runs.
    fn running_method<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyString>,
    ) -> Option<Bound<'py, PyAny>> {
        match (self.phase, &self.obj) {
            (Phase::Running | Phase::Fallback, Some(it)) => it.bind(py).getattr(name).ok(),
            _ => None,
        }
    }
}

/// `typ` (a class or an instance) with `val` as an error to raise, like `generator.throw`.
fn thrown(typ: &Bound<'_, PyAny>, val: Option<&Bound<'_, PyAny>>) -> PyErr {
    let val = val.filter(|v| !v.is_none());
    if typ.is_instance_of::<PyBaseException>() {
        if val.is_some() {
            return errors::type_error("instance exception may not have a separate value");
        }
        return PyErr::from_value(typ.clone());
    }
    match typ.cast::<PyType>() {
        Ok(t) if t.is_subclass_of::<PyBaseException>().unwrap_or(false) => match val {
            Some(v) if v.is_instance(t).unwrap_or(false) => PyErr::from_value(v.clone()),
            Some(v) => PyErr::from_type(t.clone(), v.clone().unbind()),
            None => PyErr::from_type(t.clone(), ()),
        },
        _ => errors::type_error(
            "exceptions must be classes or instances deriving from BaseException",
        ),
    }
}

fn sent_value(r: PyResult<Sent<'_>>) -> PyResult<Bound<'_, PyAny>> {
    r.map(|(Sent::Yielded(v) | Sent::Returned(v))| v)
}

#[pymethods]
impl BreakerCall {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let r = slf.try_borrow_mut()?.step(slf.py(), None);
        if !matches!(r, Ok(Sent::Yielded(_))) {
            BreakerCall::retire(slf);
        }
        match r? {
            Sent::Yielded(v) => Ok(Some(v)),
            // NULL without an exception set is a StopIteration without a value
            Sent::Returned(v) if v.is_none() => Ok(None),
            Sent::Returned(v) => {
                ffi::raise_stop_iteration(&v);
                Ok(None) // NULL with StopIteration(v) set
            }
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
            Sent::Returned(v) => {
                ffi::raise_stop_iteration(&v);
                Err(PyErr::fetch(py))
            }
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
        let Some(meth) = self.running_method(py, intern!(py, "throw")) else {
            // not started, finished, or an awaitable without throw(): raised at this await
            return sent_value(self.report(py, Err(thrown(typ, val))));
        };
        let none = py.None().into_bound(py);
        let r = match (val, tb) {
            (None, None) => meth.call1((typ,)),
            (Some(v), None) => meth.call1((typ, v)),
            (v, Some(t)) => meth.call1((typ, v.unwrap_or(&none), t)),
        };
        match r {
            Ok(v) => Ok(v), // the awaited coroutine caught it and yielded
            Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
                self.report(py, Ok(Sent::Returned(none)))?; // it caught it and returned
                Err(e)
            }
            Err(e) => sent_value(self.report(py, Err(e))),
        }
    }

    /// Closes the awaited call; its half-open permit goes back.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.phase == Phase::Const {
            return Ok(()); // shared: stays usable
        }
        if let Some(meth) = self.running_method(py, intern!(py, "close")) {
            if let Err(e) = meth.call0() {
                return self.report(py, Err(e)).map(|_| ());
            }
        }
        self.phase = Phase::Done;
        self.obj = None;
        self.cancel();
        Ok(())
    }

    fn __repr__(&self) -> String {
        match (&self.breaker, self.phase) {
            (Some(b), phase) if phase != Phase::Done => format!(
                "<ferrolab.breaker.BreakerCall of circuit breaker '{}'>",
                b.get().core.name()
            ),
            _ => "<ferrolab.breaker.BreakerCall (completed)>".to_string(),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.breaker)?;
        visit.call(&self.obj)?;
        if let Some((func, args, kwargs)) = &self.call {
            visit.call(func)?;
            visit.call(args)?;
            visit.call(kwargs)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.cancel(); // while the breaker is still there
        (self.breaker, self.call, self.obj) = (None, None, None);
    }
}

impl Drop for BreakerCall {
    fn drop(&mut self) {
        if let (Phase::New, Some((func, ..))) = (self.phase, self.call.take()) {
            // warns like a coroutine that was never awaited (nothing ran, nothing was admitted)
            let name = self.breaker.as_ref().map_or("", |b| b.get().core.name());
            Python::attach(|py| {
                let pending = PyErr::take(py);
                let func = func.into_bound(py);
                let what = repr(&func, "a function");
                let msg = format!("circuit breaker '{name}' call of {what} was never awaited");
                let warned = std::ffi::CString::new(msg)
                    .map_err(errors::system_error)
                    .and_then(|m| PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &m, 1));
                if let Err(e) = warned {
                    e.write_unraisable(py, Some(&func));
                }
                if let Some(p) = pending {
                    p.restore(py);
                }
            });
        }
        self.cancel(); // abandoned mid-flight: the permit goes back
    }
}

/// ``CircuitBreaker.call`` (`ASYNC` false) and ``.acall`` as `METH_FASTCALL` methods: the arguments after ``fn``
/// become the one tuple ``fn`` is called with (PyO3's ``*args`` slices a tuple that CPython built first), and a
/// dict is made only when keywords are given.
struct Call<const ASYNC: bool>;

impl<const ASYNC: bool> ffi::FastCall for Call<ASYNC> {
    const NAME: &'static CStr = if ASYNC { c"acall" } else { c"call" };
    const FUNC: &'static str = if ASYNC { "acall" } else { "call" };
    const DOC: &'static CStr = if ASYNC {
        c"acall($self, fn, /, *args, **kwargs)
--

An awaitable that calls ``fn(*args, **kwargs)`` under the breaker and awaits its result.

The breaker admits the call when it is awaited; cancelling it gives a half-open permit back."
    } else {
        c"call($self, fn, /, *args, **kwargs)
--

Calls ``fn(*args, **kwargs)`` under the breaker and returns its result.

Raises CircuitOpenError (or returns ``fallback(*args, **kwargs)``) when the breaker rejects the call; an
exception of ``fn`` propagates unchanged after it was recorded."
    };

    fn call<'py>(
        py: Python<'py>,
        slf: Option<Borrowed<'_, 'py, PyAny>>,
        args: &ffi::FastArgs<'_, 'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let name = Self::FUNC;
        let b = slf.and_then(|s| s.cast::<CircuitBreaker>().ok());
        let b = b.ok_or_else(|| errors::type_error(format!("{name}(): not a CircuitBreaker")))?;
        let mut pos = args.positional();
        let func = pos.next().ok_or_else(|| {
            errors::type_error(format!(
                "CircuitBreaker.{name}() missing 1 required positional argument: 'fn'"
            ))
        })?;
        let tuple = PyTuple::new(py, pos)?;
        let kwargs = (args.nkeywords() > 0)
            .then(|| args.keywords().into_py_dict(py))
            .transpose()?;
        if ASYNC {
            BreakerCall::new_call(&b, &func, &tuple, kwargs)
        } else {
            guarded(&b, &func, &tuple, kwargs.as_ref())
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
    breaker: Py<CircuitBreaker>,
    permit: Mutex<Option<Held>>,
    fallback: Option<Py<PyAny>>,
}

impl Permit {
    fn finish(&self, py: Python<'_>, exc: Option<&Bound<'_, PyBaseException>>) -> PyResult<()> {
        let Some(p) = take(&self.permit) else {
            return Ok(());
        };
        let t = exc.map(|e| e.get_type());
        finish(
            self.breaker.bind(py),
            p.into_ticket(),
            t.as_ref().zip(exc.map(|e| Some(e.as_any()))),
        )
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
        self.finish(py, None)
    }

    /// The call ended with ``exc``: counted as its class says (failure, ignored, cancelled...).
    fn error(&self, exc: &Bound<'_, PyBaseException>) -> PyResult<()> {
        self.finish(exc.py(), Some(exc))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.breaker)?;
        visit.call(&self.fallback)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `with` entries
//
// `with breaker:` calls `__exit__` on the breaker itself, so each block's permit is kept in a context variable:
// every thread and asyncio task has its own context, so interleaved blocks keep their own permits (the same rule
// for a `with` in a function, in a coroutine and for `async with`). The variable holds a chain of entries; leaving
// a block marks its entry done instead of setting the variable (a copy-on-write of the context), and the next
// block entered skips the done entries. A dropped context (its thread or task ended) drops its entries, and an
// entry dropped while live gives its permit back.

/// One ``with breaker:`` block entered in a context: its permit (taken when the block is left), and the entry of
/// the enclosing block.
#[pyclass(frozen, module = "ferrolab.breaker", name = "_Entry")]
struct Entry {
    permit: Mutex<Option<Held>>,
    /// The entry of the enclosing block; [`live_entry`] shortens it past entries that are done. Locked only to
    /// read or swap it, never while Python code runs (a reference it replaces is dropped after).
    prev: Mutex<Option<Py<Entry>>>,
}

impl Entry {
    fn live(&self) -> bool {
        self.permit.locked().is_some()
    }

    fn prev<'py>(&self, py: Python<'py>) -> Option<Bound<'py, Entry>> {
        self.prev.locked().as_ref().map(|p| p.bind(py).clone())
    }
}

#[pymethods]
impl Entry {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // never waits: the lock is not held while Python code (and so the collector) runs
        match self.prev.try_lock() {
            Ok(p) => visit.call(&*p),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // (an unreported permit goes back as the field is dropped.) The enclosing entries that only this one holds
        // are freed one at a time: dropping the chain whole would recurse once per entry, and a context holding
        // many blocks never left (a million abandoned `async with breaker:` coroutines) would overflow the stack.
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
                    next = p.get().prev.locked().take();
                }
                drop(p);
            }
        });
    }
}

/// The innermost live entry of this context, starting at `top` (the variable's value).
///
/// Done entries stay in the chain (leaving a block does not set the variable); the ones walked past here are cut
/// out by linking `top` straight to the entry found, so blocks left in any order (or abandoned and closed later)
/// cost one step each, not a walk over all the done entries per exit.
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
        let cut = std::mem::replace(&mut *top.get().prev.locked(), link);
        drop(cut); // after the lock is released
    }
    found
}

fn var_get<'py>(b: &Bound<'py, CircuitBreaker>) -> PyResult<Bound<'py, PyAny>> {
    let py = b.py();
    ffi::call_one(b.get().var_get.bind(py), &py.None().into_bound(py))
}

fn enter(b: &Bound<'_, CircuitBreaker>) -> PyResult<()> {
    let t = match admit(b)? {
        Admission::Admitted(t) => t,
        Admission::Rejected(r) => return Err(b.get().open_error(b.py(), r)),
    };
    let permit = Mutex::new(Some(Held::new(b.get().core.clone(), t)));
    let prev = Mutex::new(live_entry(var_get(b)?).map(Bound::unbind));
    let entry = Bound::new(b.py(), Entry { permit, prev })?;
    ffi::call_one(b.get().var_set.bind(b.py()), entry.as_any())?;
    Ok(())
}

fn exit(
    b: &Bound<'_, CircuitBreaker>,
    exc_type: Option<&Bound<'_, PyAny>>,
    exc: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let exc_type = exc_type.filter(|t| !t.is_none());
    let Some(p) = live_entry(var_get(b)?).and_then(|e| take(&e.get().permit)) else {
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
            b.get().core.name()
        )));
    };
    let exc_type = exc_type.map(|t| {
        t.cast::<PyType>()
            .map_or_else(|_| t.get_type(), |t| t.clone())
    });
    let exc = exc.filter(|e| !e.is_none());
    finish(b, p.into_ticket(), exc_type.as_ref().map(|t| (t, exc)))
}

// ---------------------------------------------------------------------------------------------------------------
// Arguments (the core checks the ones it keeps: `Config::set`)

const NEW_FUNC: &str = "CircuitBreaker()";

/// A parameter value as the core reads it.
fn arg(o: &Bound<'_, PyAny>) -> Arg {
    if o.is_none() {
        Arg::None
    } else if let Ok(b) = o.cast::<PyBool>() {
        Arg::Bool(b.is_true())
    } else if o.is_instance_of::<PyInt>() {
        // saturated to the i64 range, keeping the sign (a huge negative int stays negative)
        Arg::Int(o.extract().unwrap_or_else(|_| {
            if o.lt(0).unwrap_or(false) {
                i64::MIN
            } else {
                i64::MAX
            }
        }))
    } else if let Ok(f) = o.cast::<PyFloat>().map(|f| f.value()) {
        Arg::Float(f)
    } else {
        Arg::Other(type_of(o))
    }
}

/// An exception class or a tuple (or list) of them, as a tuple.
fn classes_arg<'py>(arg: &str, o: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let items: Vec<Bound<'py, PyAny>> = if let Ok(t) = o.cast::<PyTuple>() {
        t.iter().collect()
    } else if o.is_instance_of::<PyList>() {
        o.try_iter()?.collect::<PyResult<_>>()?
    } else {
        vec![o.clone()]
    };
    for it in &items {
        if !errors::is_exception_class(it) {
            return Err(errors::type_error(format!(
                "{NEW_FUNC}: argument '{arg}' must be an exception class or a tuple of exception classes, got {}",
                repr(it, &type_of(it))
            )));
        }
    }
    PyTuple::new(o.py(), items)
}

fn callable_arg(arg: &str, o: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
    if !o.is_none() && !o.is_callable() {
        return Err(errors::type_error(format!(
            "{NEW_FUNC}: argument '{arg}' must be callable or None, got {}",
            type_of(o)
        )));
    }
    Ok((!o.is_none()).then(|| o.clone().unbind()))
}

/// The named breakers alive now, by name (a breaker created with the name of an earlier one replaces it here and
/// in the metrics); ``fl.breakers()`` documents it.
#[pyfunction]
fn breakers(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for b in core::registered() {
        let obj = b
            .attached::<Py<PyWeakrefReference>>()
            .and_then(|w| w.bind(py).upgrade());
        if let Some(obj) = obj {
            d.set_item(b.name(), obj)?;
        }
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
    /// The last completed `BreakerCall`, made into the next call when nothing else holds it any more (an
    /// `async def` call then allocates no object; it holds no references: [`BreakerCall::retire`]).
    spare: ffi::Slot,
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
                type_of(name)
            ))
        })?;
        let mut cfg = Config::default();
        let (mut record, mut ignore, mut fallback, mut clock) = (None, None, None, None);
        for (k, v) in kwargs.map(|kw| kw.iter()).into_iter().flatten() {
            match k.extract::<String>()?.as_str() {
                "record" => record = Some(classes_arg("record", &v)?),
                "ignore" => ignore = Some(classes_arg("ignore", &v)?).filter(|t| !t.is_empty()),
                "fallback" => fallback = callable_arg("fallback", &v)?,
                "clock" => clock = callable_arg("clock", &v)?,
                k => {
                    if !cfg.set(k, arg(&v)).py()? {
                        let msg = format!("{NEW_FUNC} got an unexpected keyword argument '{k}'");
                        return Err(errors::type_error(msg));
                    }
                }
            }
        }
        let exc = py.get_type::<PyException>();
        let record = record.map_or_else(|| PyTuple::new(py, [&exc]), Ok)?;
        let record_all = record.len() == 1 && record.get_item(0)?.is(&exc);
        let name_s = name.to_str()?;
        let core = Arc::new(Breaker::new(name_s, cfg).py()?);
        let var = py
            .import("contextvars")?
            .getattr("ContextVar")?
            .call1((format!("ferrolab.breaker.{name_s}"),))?;
        let msgs = [State::Open, State::HalfOpen, State::ForcedOpen]
            .map(|s| PyString::new(py, &core::rejection_message(name_s, s)).unbind());
        Ok(CircuitBreaker {
            core,
            name: name.clone().unbind(),
            msgs,
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
            spare: ffi::Slot::new(),
        })
    }

    /// Lists the breaker in ``fl.breakers()`` and the metrics (the object exists only now).
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __init__(
        slf: &Bound<'_, Self>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let core = &slf.get().core;
        core.attach(PyWeakrefReference::new(slf)?.unbind());
        core::register(core);
        Ok(())
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
        static DECORATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        DECORATE
            .import(slf.py(), "ferrolab.breaker", "_decorate")?
            .call1((slf, func))
    }

    /// The ``BreakerFunction`` of ``func`` (``ferrolab.breaker._decorate`` makes it look like ``func``).
    fn _function(
        slf: &Bound<'_, Self>,
        func: &Bound<'_, PyAny>,
        is_async: bool,
    ) -> BreakerFunction {
        let (breaker, func) = (slf.clone().unbind(), func.clone().unbind());
        BreakerFunction {
            breaker,
            func,
            is_async,
        }
    }

    /// The breaker's name.
    #[getter]
    fn name<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        self.name.bind(py).clone()
    }

    /// ``"closed"``, ``"open"``, ``"half_open"``, ``"forced_open"`` or ``"disabled"``.
    ///
    /// An open breaker whose open period is over stays ``"open"`` until the next call arrives and is admitted as
    /// a trial.
    #[getter]
    fn state<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        state_str(py, self.core.state())
    }

    /// The exception that last counted as a failure, or None.
    #[getter]
    fn last_failure<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.get(py, |r| &r.last_failure)
    }

    /// Admits one call reported by hand (the generator wrappers of ``ferrolab.breaker``): a ``_Permit``, or
    /// CircuitOpenError when rejected without a fallback.
    fn _admit(slf: &Bound<'_, Self>) -> PyResult<Permit> {
        let (permit, fallback) = match admit(slf)? {
            Admission::Admitted(t) => (Some(Held::new(slf.get().core.clone(), t)), None),
            Admission::Rejected(r) => match slf.get().fallback(slf.py()) {
                Some(fb) => (None, Some(fb.unbind())),
                None => return Err(slf.get().open_error(slf.py(), r)),
            },
        };
        let (breaker, permit) = (slf.clone().unbind(), Mutex::new(permit));
        Ok(Permit {
            breaker,
            permit,
            fallback,
        })
    }

    /// Admits the block or raises CircuitOpenError.
    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        enter(slf)?;
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
        exit(slf, exc_type, exc).map(|()| false)
    }

    /// Admits the block or raises CircuitOpenError (a completed awaitable).
    fn __aenter__(slf: &Bound<'_, Self>) -> PyResult<Py<BreakerCall>> {
        let py = slf.py();
        enter(slf)?;
        if let Some(a) = slf.get().get(py, |r| &r.aenter) {
            return Ok(a.cast_into::<BreakerCall>()?.unbind());
        }
        let a = BreakerCall::constant(slf.as_any())?;
        let old = slf
            .get()
            .refs
            .locked()
            .aenter
            .replace(a.clone_ref(py).into_any());
        release(py, old);
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
        exit(slf, exc_type, exc)?;
        let f = AWAIT_FALSE.get_or_try_init(py, || {
            BreakerCall::constant(PyBool::new(py, false).as_any())
        })?;
        Ok(f.clone_ref(py))
    }

    /// Opens the breaker until ``reset()``: every call is rejected (``retry_after`` is None).
    fn force_open(slf: &Bound<'_, Self>) {
        fire(slf, slf.get().core.force_open());
    }

    /// Lets every call through, recording nothing, until ``reset()``.
    fn disable(slf: &Bound<'_, Self>) {
        fire(slf, slf.get().core.disable());
    }

    /// Closes the breaker and forgets its failures (from any state).
    fn reset(slf: &Bound<'_, Self>) {
        fire(slf, slf.get().core.reset());
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
        let s = self.core.stats(self.now(py)?);
        let d = PyDict::new(py);
        d.set_item("name", self.name.bind(py))?;
        for (k, v) in s.items() {
            match v {
                StatValue::Str(x) => d.set_item(k, x)?,
                StatValue::Int(n) => d.set_item(k, n)?,
                StatValue::Float(x) => d.set_item(k, x)?,
                StatValue::None => d.set_item(k, py.None())?,
            }
        }
        d.set_item("transitions", s.transition_counts().into_py_dict(py)?)?;
        Ok(d)
    }

    /// Calls ``listener(breaker, old_state, new_state)`` after every state change.
    fn add_listener(&self, listener: &Bound<'_, PyAny>) -> PyResult<()> {
        if !listener.is_callable() {
            return Err(errors::type_error(format!(
                "add_listener(): argument 'listener' must be callable, got {}",
                type_of(listener)
            )));
        }
        self.refs.locked().listeners.push(listener.clone().unbind());
        Ok(())
    }

    /// Removes a listener added with ``add_listener`` (ValueError when it is not there).
    fn remove_listener(&self, listener: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = listener.py();
        // compared with == outside the lock (a bound method is a new object at every access, and __eq__ is Python)
        for l in self.listeners(py) {
            if l.is(listener) || l.eq(listener)? {
                let mut r = self.refs.locked();
                if let Some(i) = r.listeners.iter().position(|x| x.as_ptr() == l.as_ptr()) {
                    let removed = r.listeners.remove(i);
                    drop(r);
                    release(py, Some(removed));
                    return Ok(());
                }
            }
        }
        Err(errors::value_error("remove_listener(): listener not found"))
    }

    fn __repr__(&self) -> String {
        let core = &self.core;
        format!(
            "<ferrolab.CircuitBreaker '{}' {}>",
            core.name(),
            core.state().name()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let i = self;
        for o in [&i.var, &i.var_get, &i.var_set] {
            visit.call(o)?;
        }
        visit.call(&i.record)?;
        visit.call(&i.ignore)?;
        i.spare.visit(&visit)?;
        // never block the collector: a held lock means a call is in progress (the objects are reachable)
        if let Ok(r) = i.refs.try_lock() {
            for o in [&r.fallback, &r.clock, &r.last_failure, &r.aenter] {
                visit.call(o)?;
            }
            for l in &r.listeners {
                visit.call(l)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = std::mem::take(&mut *self.refs.locked());
        drop(taken); // outside the lock
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CircuitOpenError(message, name, retry_after, last_failure): a Python class (PyO3 cannot subclass an exception
// on the stable ABI of 3.11), defined by `open_error.py`.

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let src =
        std::ffi::CString::new(include_str!("open_error.py")).map_err(errors::system_error)?;
    let src = PyModule::from_code(
        py,
        &src,
        c"<ferrolab.breaker CircuitOpenError>",
        c"ferrolab._core._open_error",
    )?;
    let ty = src
        .getattr("make")?
        .call1((py.get_type::<FerrolabError>(),))?
        .cast_into::<PyType>()?;
    m.add("CircuitOpenError", &ty)?;
    let _ = OPEN_ERROR.set(py, ty.unbind());
    add_classes! { m; BreakerFunction, BreakerCall, CircuitBreaker }
    ffi::install_method::<Call<false>>(&py.get_type::<CircuitBreaker>())?;
    ffi::install_method::<Call<true>>(&py.get_type::<CircuitBreaker>())?;
    add_functions! { m; breakers }
    Ok(())
}
