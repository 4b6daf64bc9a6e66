//! `fl.tracing`: native spans (context managers) over the core's OpenTelemetry pipeline.
//!
//! The current ferrolab span lives in one `contextvars.ContextVar` (so threads and asyncio tasks each see
//! their own), set by `Span.__enter__` and reset by `Span.__exit__`. A span opened with no current ferrolab
//! span takes the current opentelemetry-python span as its (remote) parent when `opentelemetry.trace` is
//! already imported. [`current_recording`] is what the op seam (`funnel::run`) asks for its child spans.

use crate::errors::{self, type_of, IntoPyResult};
use crate::ffi::{self, FastArgs, FastCall};
use ferrolab_core::error::check_seconds;
use ferrolab_core::sync::MutexExt;
use ferrolab_core::telemetry::tracing::{self as core_tr, otel::*, Config, Recording, SpanCtx};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::IntoPyDict;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt, PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

// ----------------------------------------------------------------------------------------------------------
// the context variable

/// The `ContextVar` holding the current [`Span`] (default `None`: no span), with its bound `get`, `set` and
/// `reset` (no method lookup per span; `get` takes no argument, `set`/`reset` go through [`ffi::call_one`]).
struct Cv {
    get: Py<PyAny>,
    set: Py<PyAny>,
    reset: Py<PyAny>,
}

static CV: PyOnceLock<Cv> = PyOnceLock::new();

fn cv(py: Python<'_>) -> PyResult<&Cv> {
    CV.get_or_try_init(py, || {
        let var = py.import("contextvars")?.getattr("ContextVar")?.call(
            ("ferrolab_current_span",),
            Some(&[("default", py.None())].into_py_dict(py)?),
        )?;
        Ok::<_, PyErr>(Cv {
            get: var.getattr("get")?.unbind(),
            set: var.getattr("set")?.unbind(),
            reset: var.getattr("reset")?.unbind(),
        })
    })
}

/// Value of the span variable in the current context (`None`: unset).
fn cv_get(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    let v = cv(py)?.get.bind(py).call0()?;
    Ok((!v.is_none()).then_some(v))
}

/// `var.set(value)`: the reset token.
fn cv_set<'py>(py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    ffi::call_one(cv(py)?.set.bind(py), value)
}

/// `var.reset(token)`; false (and no exception) when the token belongs to another context.
fn cv_reset(py: Python<'_>, token: &Bound<'_, PyAny>) -> bool {
    match cv(py) {
        Ok(cv) => ffi::call_one(cv.reset.bind(py), token).is_ok(),
        Err(_) => false,
    }
}

/// The ferrolab span object in this context's variable, open or not (a span exited in another context than it
/// was entered in stays in the variable of the context it was entered in).
fn stored_object<'py>(py: Python<'py>) -> PyResult<Option<Bound<'py, Span>>> {
    Ok(cv_get(py)?.and_then(|c| c.cast_into::<Span>().ok()))
}

/// The current ferrolab span object of this context, if any: only an open span is current.
fn current_object<'py>(py: Python<'py>) -> PyResult<Option<Bound<'py, Span>>> {
    Ok(stored_object(py)?.filter(|s| s.get().open.load(Ordering::Relaxed)))
}

/// The identity of the current ferrolab span when it is open and sampled (for the op seam's child spans).
pub fn current_recording(py: Python<'_>) -> Option<SpanCtx> {
    let s = current_object(py).ok()??;
    let s = s.get();
    s.ctx.sampled.then_some(s.ctx)
}

// ----------------------------------------------------------------------------------------------------------
// opentelemetry-python parents

/// How to read the current opentelemetry-python span.
struct OtelPy {
    /// When its runtime context is the default contextvars one: the bound `get` of the runtime context's
    /// `ContextVar` and the span key, read directly.
    fast: Option<(Py<PyAny>, Py<PyAny>)>,
    /// Otherwise: `opentelemetry.trace.get_current_span`.
    get_current_span: Py<PyAny>,
}

static OTEL: PyOnceLock<OtelPy> = PyOnceLock::new();
/// Test hook: force the public-API path.
static OTEL_SLOW: AtomicBool = AtomicBool::new(false);

fn resolve_otel(py: Python<'_>) -> PyResult<OtelPy> {
    let modules = py.import("sys")?.getattr("modules")?;
    let fast = || -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let rc = modules
            .get_item("opentelemetry.context")?
            .getattr("_RUNTIME_CONTEXT")?;
        let var = rc.getattr("_current_context")?;
        let cv_type = py.import("contextvars")?.getattr("ContextVar")?;
        let key = modules
            .get_item("opentelemetry.trace.propagation")?
            .getattr("_SPAN_KEY")?;
        if rc.get_type().name()? != "ContextVarsRuntimeContext"
            || !var.is_instance(&cv_type)?
            || !key.is_instance_of::<PyString>()
        {
            return Err(errors::runtime_error("not the contextvars runtime context"));
        }
        Ok((var.getattr("get")?.unbind(), key.unbind()))
    };
    Ok(OtelPy {
        fast: fast().ok(),
        get_current_span: modules
            .get_item("opentelemetry.trace")?
            .getattr("get_current_span")?
            .unbind(),
    })
}

fn otel_loaded(py: Python<'_>) -> bool {
    ffi::modules(py)
        .ok()
        .and_then(|m| m.contains(intern!(py, "opentelemetry.trace")).ok())
        .unwrap_or(false)
}

/// The current opentelemetry-python span as a remote parent, when that package is imported and a valid span
/// is current. Never imports it and never fails (errors read as "no parent").
fn otel_parent(py: Python<'_>) -> Option<SpanCtx> {
    let o = match OTEL.get(py) {
        Some(o) => o,
        None => {
            if !otel_loaded(py) {
                return None;
            }
            OTEL.get_or_try_init(py, || resolve_otel(py)).ok()?
        }
    };
    let span = match &o.fast {
        Some((var_get, key)) if !OTEL_SLOW.load(Ordering::Relaxed) => {
            // the variable's own default (an empty context) when it is not set
            let ctx = var_get.bind(py).call0().ok()?;
            let ctx = ctx.cast::<PyDict>().ok()?;
            ctx.get_item(key.bind(py)).ok()??
        }
        _ => o.get_current_span.bind(py).call0().ok()?,
    };
    let sc = span.call_method0(intern!(py, "get_span_context")).ok()?;
    if !sc.getattr(intern!(py, "is_valid")).ok()?.is_truthy().ok()? {
        return None;
    }
    let trace_id: u128 = sc.getattr(intern!(py, "trace_id")).ok()?.extract().ok()?;
    let span_id: u64 = sc.getattr(intern!(py, "span_id")).ok()?.extract().ok()?;
    let flags: u8 = sc
        .getattr(intern!(py, "trace_flags"))
        .ok()?
        .extract()
        .ok()?;
    SpanCtx::remote(trace_id, span_id, flags & 1 == 1)
}

/// Spans entered and not yet exited, in every thread and context. While it is 0 no context can have an open
/// ferrolab span, so a new span skips the context-variable lookup of its parent (a span that is never exited
/// keeps it above 0: the lookup then always runs).
static OPEN_SPANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The parent of a span opened now: the current ferrolab span, else the current opentelemetry-python span. A span
/// closed elsewhere but still in this context's variable gives way to its own parent (the trace goes on).
fn parent_ctx(py: Python<'_>) -> PyResult<Option<SpanCtx>> {
    if OPEN_SPANS.load(Ordering::Relaxed) > 0 {
        if let Some(s) = stored_object(py)? {
            let s = s.get();
            if s.open.load(Ordering::Relaxed) {
                return Ok(Some(s.ctx));
            }
            if let Some(p) = s.parent {
                return Ok(Some(p));
            }
        }
    }
    Ok(otel_parent(py))
}

// ----------------------------------------------------------------------------------------------------------
// attributes

const ATTR_TYPES: &str = "str, bool, int, float or a sequence of those";

#[derive(Clone, Copy, PartialEq)]
enum Scalar {
    Str,
    Bool,
    Int,
    Float,
}

fn scalar_kind(v: &Bound<'_, PyAny>) -> Option<Scalar> {
    if v.is_instance_of::<PyString>() {
        Some(Scalar::Str)
    } else if v.is_instance_of::<PyBool>() {
        Some(Scalar::Bool)
    } else if v.is_instance_of::<PyInt>() {
        Some(Scalar::Int)
    } else if v.is_instance_of::<PyFloat>() {
        Some(Scalar::Float)
    } else {
        None
    }
}

fn is_numpy(v: &Bound<'_, PyAny>) -> bool {
    v.get_type()
        .module()
        .map(|m| m.to_str().is_ok_and(|m| m == "numpy"))
        .unwrap_or(false)
}

fn int_of(func: &str, key: &str, v: &Bound<'_, PyAny>) -> PyResult<i64> {
    v.extract::<i64>().map_err(|_| {
        errors::value_error(format!(
            "{func}: attribute '{key}' is {v}, outside the int64 range of OpenTelemetry attributes"
        ))
    })
}

/// The string data of a `str` (of a subclass too, such as a `str`-valued enum member, whose `__str__` may say
/// something else), a lone surrogate replaced by U+FFFD.
fn str_data(v: &Bound<'_, PyAny>) -> String {
    v.cast::<PyString>()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One attribute value; `convert == false` only validates (returns `None`).
fn attr_value(
    func: &str,
    key: &str,
    v: &Bound<'_, PyAny>,
    convert: bool,
) -> PyResult<Option<Value>> {
    if let Some(k) = scalar_kind(v) {
        return Ok(match k {
            Scalar::Str => convert.then(|| Value::from(str_data(v))),
            Scalar::Bool => convert.then(|| Value::Bool(v.is_truthy().unwrap_or(false))),
            Scalar::Int => {
                let i = int_of(func, key, v)?;
                convert.then_some(Value::I64(i))
            }
            Scalar::Float => convert.then(|| Value::F64(v.extract::<f64>().unwrap_or(f64::NAN))),
        });
    }
    // NumPy scalars and 1-d arrays become their Python equivalents
    if is_numpy(v) {
        if let Ok(ndim) = v.getattr("ndim").and_then(|n| n.extract::<usize>()) {
            let py_value = if ndim == 0 {
                v.call_method0("item")?
            } else {
                v.call_method0("tolist")?
            };
            if scalar_kind(&py_value).is_some() || py_value.is_instance_of::<PyList>() {
                return attr_value(func, key, &py_value, convert);
            }
        }
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = v.try_iter()?.collect::<PyResult<_>>()?;
        let mut kind = None;
        for it in &items {
            let k = scalar_kind(it).ok_or_else(|| {
                errors::type_error(format!(
                    "{func}: attribute '{key}' must be {ATTR_TYPES}, got a sequence holding {}",
                    type_of(it)
                ))
            })?;
            match kind {
                None => kind = Some(k),
                Some(k0) if k0 != k => {
                    return Err(errors::type_error(format!(
                        "{func}: attribute '{key}' must be a sequence of one type (str, bool, int or float), \
                         got {} and {} mixed",
                        type_of(&items[0]),
                        type_of(it)
                    )))
                }
                _ => {}
            }
            if k == Scalar::Int {
                int_of(func, key, it)?;
            }
        }
        if !convert {
            return Ok(None);
        }
        let arr = match kind.unwrap_or(Scalar::Str) {
            Scalar::Str => Array::String(
                items
                    .iter()
                    .map(|i| StringValue::from(str_data(i)))
                    .collect(),
            ),
            Scalar::Bool => Array::Bool(
                items
                    .iter()
                    .map(|i| i.is_truthy().unwrap_or(false))
                    .collect(),
            ),
            Scalar::Int => Array::I64(items.iter().map(|i| i.extract().unwrap_or(0)).collect()),
            Scalar::Float => Array::F64(
                items
                    .iter()
                    .map(|i| i.extract().unwrap_or(f64::NAN))
                    .collect(),
            ),
        };
        return Ok(Some(Value::Array(arr)));
    }
    Err(errors::type_error(format!(
        "{func}: attribute '{key}' must be {ATTR_TYPES}, got {}",
        type_of(v)
    )))
}

/// Converts (or only validates) a mapping of attributes.
fn attrs_of(
    func: &str,
    attrs: Option<&Bound<'_, PyDict>>,
    convert: bool,
) -> PyResult<Vec<KeyValue>> {
    let Some(d) = attrs else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(if convert { d.len() } else { 0 });
    for (k, v) in d.iter() {
        let k = k.cast_into::<PyString>().map_err(|e| {
            errors::type_error(format!(
                "{func}: attribute names must be str, got {}",
                type_of(e.into_inner().as_any())
            ))
        })?;
        let key = k.to_str()?;
        if let Some(val) = attr_value(func, key, &v, convert)? {
            out.push(KeyValue::new(key.to_owned(), val));
        }
    }
    Ok(out)
}

fn mapping_arg<'py>(
    func: &str,
    arg: &str,
    v: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => match v.cast::<PyDict>() {
            Ok(d) => Ok(Some(d.clone())),
            Err(_) => {
                let d = PyDict::new(v.py());
                d.update(v.cast::<pyo3::types::PyMapping>().map_err(|_| {
                    errors::type_error(format!(
                        "{func}: argument '{arg}' must be a mapping of attributes, got {}",
                        type_of(v)
                    ))
                })?)?;
                Ok(Some(d))
            }
        },
    }
}

// ----------------------------------------------------------------------------------------------------------
// the span object

/// A ferrolab span: use it as a context manager (``with fl.tracing.span("name", key=value):``).
///
/// Created by :func:`ferrolab.tracing.span`, which starts it (as a child of the span current at that moment,
/// like OpenTelemetry's ``start_as_current_span``); entered once. While it is open it is the current span of its
/// thread or asyncio task: spans opened inside it, and ``fl.ops`` calls made inside it, become its children.
/// An exception leaving the block sets status ``ERROR``, adds an ``exception`` event, and propagates.
// No `freelist`: PyO3 0.30 does not track an instance reused from a free list for the cyclic garbage collector
// (PyO3/pyo3#6442), and an abandoned open span is in a cycle (below, `__traverse__`).
#[pyclass(module = "ferrolab.tracing", name = "Span", frozen)]
pub struct Span {
    name: Py<PyString>,
    ctx: SpanCtx,
    parent: Option<SpanCtx>,
    entered: AtomicBool,
    open: AtomicBool,
    /// The context variable's reset token while the span is open.
    token: ffi::Slot,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The recording of a sampled span (`None` for an unsampled one, and after the span ended).
    rec: Option<Box<Recording>>,
}

impl Span {
    fn with_rec(&self, f: impl FnOnce(&mut Recording)) {
        if let Some(r) = self.inner.locked().rec.as_mut() {
            f(r);
        }
    }
}

/// An exception's `exception.type` (the qualified name: `module.QualName`, only `QualName` for a builtin, as
/// opentelemetry-python writes it), its type's short name (for the status description), its message and its
/// formatted traceback.
fn exception_attrs(
    py: Python<'_>,
    exc_type: &Bound<'_, PyAny>,
    exc: &Bound<'_, PyAny>,
    tb: &Bound<'_, PyAny>,
) -> (String, String, String, Option<String>) {
    let attr =
        |n: &Bound<'_, PyString>| exc_type.getattr(n).and_then(|v| v.extract::<String>()).ok();
    let short = attr(intern!(py, "__name__")).unwrap_or_else(|| type_of(exc));
    let qualname = attr(intern!(py, "__qualname__")).unwrap_or_else(|| short.clone());
    let kind = match attr(intern!(py, "__module__")) {
        Some(m) if !m.is_empty() && m != "builtins" => format!("{m}.{qualname}"),
        _ => qualname,
    };
    let message = if exc.is_none() {
        String::new()
    } else {
        exc.str().map(|s| s.to_string()).unwrap_or_default()
    };
    static FORMAT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let stack = FORMAT
        .import(py, "traceback", "format_exception")
        .and_then(|f| f.call1((exc_type, exc, tb)))
        .and_then(|lines| {
            let lines: Vec<String> = lines.extract()?;
            Ok(lines.concat())
        })
        .ok();
    (kind, short, message, stack)
}

/// Whether an exception leaving a span is an error: an `Exception`, not a `GeneratorExit`, `KeyboardInterrupt`,
/// `SystemExit` or `asyncio.CancelledError` (as opentelemetry-python's `start_as_current_span` decides).
fn is_error(exc_type: &Bound<'_, PyAny>) -> bool {
    exc_type
        .cast::<pyo3::types::PyType>()
        .map(|t| {
            t.is_subclass_of::<pyo3::exceptions::PyException>()
                .unwrap_or(true)
        })
        .unwrap_or(true)
}

#[pymethods]
impl Span {
    /// An open span's reset token refers to the context it was entered in, which holds the span: a span left open
    /// (entered, never exited) in a context that ends is a cycle the collector must see.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.name)?;
        self.token.visit(&visit)
    }

    fn __clear__(&self) {
        self.token.clear();
    }

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        let py = slf.py();
        let this = slf.get();
        // attached threads are serialized and nothing here runs Python code between a flag's read and its write:
        // plain loads and stores (see `ffi::Slot`)
        if this.entered.load(Ordering::Relaxed) {
            return Err(errors::runtime_error(
                "span(): a span can be entered only once; call fl.tracing.span() again for a new one",
            ));
        }
        this.entered.store(true, Ordering::Relaxed);
        this.token.put(cv_set(py, slf.as_any())?);
        OPEN_SPANS.store(OPEN_SPANS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        this.open.store(true, Ordering::Relaxed);
        Ok(slf.clone())
    }

    #[pyo3(signature = (exc_type=None, exc_value=None, traceback=None))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc_value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if !this.open.load(Ordering::Relaxed) {
            return Ok(false);
        }
        this.open.store(false, Ordering::Relaxed);
        OPEN_SPANS.store(OPEN_SPANS.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        // an unsampled span has no recording: no lock on its path
        let rec = if this.ctx.sampled {
            this.inner.locked().rec.take()
        } else {
            None
        };
        if let Some(t) = this.token.take(py) {
            // a span exited in another context than it was entered in (e.g. across tasks) cannot reset the
            // variable there; the span still ends
            cv_reset(py, &t);
        }
        if let Some(mut rec) = rec {
            if let Some(et) = exc_type.filter(|e| !e.is_none() && is_error(e)) {
                let none = py.None().into_bound(py);
                let (kind, short, message, stack) = exception_attrs(
                    py,
                    et,
                    exc_value.unwrap_or(&none),
                    traceback.unwrap_or(&none),
                );
                rec.record_error(kind, &short, message, stack);
            }
            rec.end();
        }
        Ok(false)
    }

    /// Sets one attribute (``str``, ``bool``, ``int``, ``float`` or a sequence of one of those).
    fn set_attribute(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = key.cast::<PyString>().map_err(|_| {
            errors::arg_type(
                "Span.set_attribute",
                "key",
                format!("must be str, got {}", type_of(key)),
            )
        })?;
        let k = key.to_str()?;
        let recording = self.inner.locked().rec.is_some();
        if let Some(v) = attr_value("Span.set_attribute()", k, value, recording)? {
            let kv = KeyValue::new(k.to_owned(), v);
            self.with_rec(|r| r.set_attribute(kv));
        }
        Ok(())
    }

    /// Adds an event named ``name`` with optional ``attributes`` (a mapping) at the current time.
    #[pyo3(signature = (name, attributes=None))]
    fn add_event(
        &self,
        name: &Bound<'_, PyAny>,
        attributes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let name = name.cast::<PyString>().map_err(|_| {
            errors::arg_type(
                "Span.add_event",
                "name",
                format!("must be str, got {}", type_of(name)),
            )
        })?;
        let attrs = mapping_arg("Span.add_event()", "attributes", attributes)?;
        let recording = self.inner.locked().rec.is_some();
        let attrs = attrs_of("Span.add_event()", attrs.as_ref(), recording)?;
        if recording {
            let n = name.to_str()?.to_owned();
            self.with_rec(|r| r.add_event(n, attrs));
        }
        Ok(())
    }

    /// Adds an ``exception`` event for ``exception`` (the status is not changed).
    fn record_exception(&self, exception: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = exception.py();
        if !exception.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            return Err(errors::arg_type(
                "Span.record_exception",
                "exception",
                format!("must be an exception, got {}", type_of(exception)),
            ));
        }
        if self.inner.locked().rec.is_none() {
            return Ok(());
        }
        let tb = exception.getattr(intern!(py, "__traceback__"))?;
        let (kind, _, message, stack) =
            exception_attrs(py, exception.get_type().as_any(), exception, &tb);
        self.with_rec(|r| r.record_exception(kind, message, stack));
        Ok(())
    }

    /// Sets the status: ``"ok"``, ``"error"`` (with an optional ``description``) or ``"unset"``.
    #[pyo3(signature = (status, description=None))]
    fn set_status(
        &self,
        #[pyo3(from_py_with = status_arg)] status: &str,
        #[pyo3(from_py_with = description_arg)] description: Option<String>,
    ) -> PyResult<()> {
        let s = core_tr::parse_status("Span.set_status", status, description).py()?;
        self.with_rec(|r| r.set_status(s));
        Ok(())
    }

    /// The span name.
    #[getter]
    fn name(&self, py: Python<'_>) -> Py<PyString> {
        self.name.clone_ref(py)
    }

    /// Trace id (32 hex digits).
    #[getter]
    fn trace_id(&self) -> String {
        self.ctx.trace_id.to_string()
    }

    /// Span id (16 hex digits).
    #[getter]
    fn span_id(&self) -> String {
        self.ctx.span_id.to_string()
    }

    /// Parent span id (16 hex digits), ``None`` for a root span.
    #[getter]
    fn parent_span_id(&self) -> Option<String> {
        self.parent.map(|p| p.span_id.to_string())
    }

    /// Whether the span is sampled (its data is recorded and exported).
    #[getter]
    fn is_recording(&self) -> bool {
        self.ctx.sampled
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let name = self.name.bind(py).to_string();
        let c = &self.ctx;
        format!(
            "<Span {name:?} trace_id={} span_id={}{}{}>",
            c.trace_id,
            c.span_id,
            if c.sampled { "" } else { " unsampled" },
            if self.open.load(Ordering::Relaxed) {
                " open"
            } else {
                ""
            },
        )
    }
}

// ----------------------------------------------------------------------------------------------------------
// module functions

fn status_arg<'a>(v: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    errors::str_arg("Span.set_status", "status", v)
}

fn description_arg(v: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    if v.is_none() {
        return Ok(None);
    }
    errors::str_arg("Span.set_status", "description", v).map(|d| Some(d.to_owned()))
}

fn clear_arg(v: &Bound<'_, PyAny>) -> PyResult<bool> {
    errors::scalar_arg("finished_spans", "clear", "a bool", v)
}

/// Builds a span named `name` (any object: checked here); `attributes` is called only for a sampled span.
fn new_span_object<'py>(
    name: &Bound<'py, PyAny>,
    attributes: impl FnOnce() -> PyResult<Vec<KeyValue>>,
) -> PyResult<Span> {
    let py = name.py();
    let name = name.cast::<PyString>().map_err(|_| {
        errors::arg_type(
            "span",
            "name",
            format!("must be str, got {}", type_of(name)),
        )
    })?;
    // the span starts now, as a child of the current span (like `start_as_current_span`)
    let parent = parent_ctx(py)?;
    let ctx = core_tr::new_span(parent.as_ref());
    // an unsampled span does not look at its attributes (like OpenTelemetry's non-recording spans)
    let rec = if ctx.sampled {
        Some(Box::new(Recording::start(
            ctx,
            parent.as_ref(),
            name.to_str()?.to_owned(),
            attributes()?,
        )))
    } else {
        None
    };
    Ok(Span {
        name: name.clone().unbind(),
        ctx,
        parent,
        entered: AtomicBool::new(false),
        open: AtomicBool::new(false),
        token: ffi::Slot::new(),
        inner: Mutex::new(Inner { rec }),
    })
}

/// `tracing_span(name, /, **attributes)`, the hot constructor, as a `METH_FASTCALL | METH_KEYWORDS` builtin:
/// keyword arguments arrive as a tuple of names and an array of values, so no dict is built for them (pyo3's
/// `**kwargs` builds one), and an unsampled span never touches them.
struct SpanFn;

impl FastCall for SpanFn {
    const NAME: &'static std::ffi::CStr = c"tracing_span";
    const FUNC: &'static str = "span";
    /// The docstring (its first lines give CPython the text signature).
    const DOC: &'static std::ffi::CStr = cr#"tracing_span(name, /, **attributes)
--

A new span named ``name`` with the given attributes, used as a context manager.

The span starts now, as a child of the current span (the current ferrolab span, else the current
opentelemetry-python span), and ends when its ``with`` block exits.

Parameters
----------
name : str
    The span name (keep it low-cardinality: put values in attributes).
**attributes : str, bool, int, float or a sequence of one of those
    Span attributes (NumPy scalars and 1-d arrays are converted).

Returns
-------
Span
    Enter it once with ``with``. While open it is the current span of the thread or task: spans opened
    inside, and ``fl.ops`` calls made inside, become its children. An exception leaving the block sets
    status ``ERROR``, adds an ``exception`` event and propagates.

Raises
------
TypeError
    ``name`` is not a str, or an attribute value has an unsupported type (an unsampled span does not
    look at its attributes).

Examples
--------
>>> import ferrolab as fl
>>> fl.tracing.configure("demo")
>>> with fl.tracing.span("outer", user="ada") as outer:
...     with fl.tracing.span("inner", n=2) as inner:
...         inner.set_attribute("done", True)
>>> inner.parent_span_id == outer.span_id and inner.trace_id == outer.trace_id
True
>>> [(d["name"], d["attributes"]) for d in fl.tracing.finished_spans()]
[('inner', {'n': 2, 'done': True}), ('outer', {'user': 'ada'})]
"#;

    fn call<'py>(
        py: Python<'py>,
        _module: Option<Borrowed<'_, 'py, PyAny>>,
        args: &FastArgs<'_, 'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let nargs = args.nargs();
        let Some(name) = args.positional().next().filter(|_| nargs == 1) else {
            return Err(errors::type_error(format!(
                "span() takes 1 positional argument (the name) but {nargs} were given"
            )));
        };
        let span = new_span_object(&name, || {
            let mut out = Vec::with_capacity(args.nkeywords());
            for (key, value) in args.keywords() {
                let key = key
                    .cast::<PyString>()
                    .map_err(|_| errors::type_error("span(): attribute names must be str"))?;
                let k = key.to_str()?;
                if let Some(v) = attr_value("span()", k, &value, true)? {
                    out.push(KeyValue::new(k.to_owned(), v));
                }
            }
            Ok(out)
        })?;
        Ok(Bound::new(py, span)?.into_any())
    }
}

/// The current ferrolab span of this thread or task, or ``None``.
#[pyfunction]
#[pyo3(name = "tracing_current_span")]
fn current_span(py: Python<'_>) -> PyResult<Option<Bound<'_, Span>>> {
    current_object(py)
}

/// Installs the pipeline (arguments are validated by `ferrolab.tracing.configure`).
#[pyfunction]
#[pyo3(name = "tracing_configure", signature = (service_name, service_version=None, environment=None, endpoint=None, sample_ratio=1.0, headers=Vec::new(), ca_file=None))]
#[allow(clippy::too_many_arguments)]
fn configure(
    py: Python<'_>,
    service_name: String,
    service_version: Option<String>,
    environment: Option<String>,
    endpoint: Option<String>,
    sample_ratio: f64,
    headers: Vec<(String, String)>,
    ca_file: Option<String>,
) -> PyResult<()> {
    let config = Config {
        service_version,
        environment,
        endpoint,
        sample_ratio,
        headers,
        ca_file,
        ..Config::new(service_name)
    };
    py.detach(|| core_tr::configure(config)).py()
}

/// Exports what has finished (waits at most about 5 s); True when everything was delivered.
#[pyfunction]
#[pyo3(name = "tracing_flush")]
fn flush(py: Python<'_>) -> bool {
    py.detach(core_tr::flush)
}

/// Flushes and stops the pipeline (waits at most ``timeout`` seconds); True when everything was delivered.
#[pyfunction]
#[pyo3(name = "tracing_shutdown", signature = (timeout=5.0))]
fn shutdown(py: Python<'_>, timeout: f64) -> PyResult<bool> {
    let timeout = check_seconds("shutdown", "timeout", timeout, f64::INFINITY, false).py()?;
    Ok(py.detach(|| core_tr::shutdown(timeout)))
}

fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Bool(b) => b.into_bound_py_any(py)?,
        Value::I64(i) => i.into_bound_py_any(py)?,
        Value::F64(f) => f.into_bound_py_any(py)?,
        Value::String(s) => s.as_str().into_bound_py_any(py)?,
        Value::Array(a) => match a {
            Array::Bool(v) => PyTuple::new(py, v)?.into_any(),
            Array::I64(v) => PyTuple::new(py, v)?.into_any(),
            Array::F64(v) => PyTuple::new(py, v)?.into_any(),
            Array::String(v) => PyTuple::new(py, v.iter().map(|s| s.as_str()))?.into_any(),
            _ => a.to_string().into_bound_py_any(py)?,
        },
        _ => v.to_string().into_bound_py_any(py)?,
    })
}

fn attrs_to_py<'py>(py: Python<'py>, attrs: &[KeyValue]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for kv in attrs {
        d.set_item(kv.key.as_str(), value_to_py(py, &kv.value)?)?;
    }
    Ok(d)
}

/// The spans kept in memory (``endpoint=None``), oldest first, as dicts.
#[pyfunction]
#[pyo3(name = "tracing_finished_spans", signature = (clear=false))]
fn finished_spans(
    py: Python<'_>,
    #[pyo3(from_py_with = clear_arg)] clear: bool,
) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let spans = core_tr::finished_spans(clear);
    spans
        .iter()
        .map(|s| {
            let s = core_tr::FinishedSpan::of(s);
            let events = s
                .events
                .iter()
                .map(|e| Ok(dict!(py, e; name, time_ns, attributes => attrs_to_py(py, &e.attributes)?)))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(dict!(py, s; name, trace_id, span_id, parent_span_id, parent_is_remote, start_time_ns,
                end_time_ns, attributes => attrs_to_py(py, &s.attributes)?, status, status_description,
                events => PyList::new(py, events)?))
        })
        .collect()
}

/// Counters and state of the pipeline.
#[pyfunction]
#[pyo3(name = "tracing_stats")]
fn stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = core_tr::stats();
    Ok(
        dict!(py, s; mode, endpoint, sample_ratio, started, ended, exported, dropped, export_failures, evicted,
        queued, open),
    )
}

/// Resource attributes of the current pipeline (``{}`` when not configured).
#[pyfunction]
#[pyo3(name = "tracing_resource")]
fn resource(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in core_tr::resource_attributes() {
        d.set_item(k, v)?;
    }
    Ok(d)
}

/// Test hook: read opentelemetry-python's current span through its public API instead of the fast path;
/// returns which path is in use ("fast", "public" or "unresolved").
#[pyfunction]
#[pyo3(name = "_tracing_otel_path", signature = (force_public=None))]
fn otel_path(py: Python<'_>, force_public: Option<bool>) -> &'static str {
    if let Some(f) = force_public {
        OTEL_SLOW.store(f, Ordering::Relaxed);
    }
    match OTEL.get(py) {
        None => "unresolved",
        Some(o) if o.fast.is_some() && !OTEL_SLOW.load(Ordering::Relaxed) => "fast",
        Some(_) => "public",
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Span>()?;
    ffi::add_function::<SpanFn>(m)?;
    add_functions! { m; current_span, configure, flush, shutdown, finished_spans, stats, resource, otel_path }
    Ok(())
}
