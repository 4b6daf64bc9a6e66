//! The one error funnel: every exception the bindings raise is built here.
//!
//! A `CoreError` becomes exactly one Python exception in [`to_py`]. Errors found by the bindings themselves
//! (argument conversion, protocol misuse) are built by the constructors below ([`arg_type`], [`arg_value`],
//! [`type_error`], ...): no other file calls `new_err`. [`error_kind`] names an exception's class for the
//! `error_type` metric label from the one list of kinds, `ferrolab_core::telemetry::seam::ERROR_KINDS`.

use ferrolab_core::telemetry::seam::ERROR_KINDS;
use ferrolab_core::CoreError;
use pyo3::exceptions::{
    PyException, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use std::fmt::Display;

/// Declares ferrolab's exception classes (`module => Name(Base): doc`), and `add_exceptions`, which adds them to
/// the module in [`register`].
macro_rules! exceptions {
    ($($module:expr => $name:ident($base:ty): $doc:expr;)*) => {
        $(pyo3::create_exception!($module, $name, $base, $doc);)*
        fn add_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
            $(m.add(stringify!($name), m.py().get_type::<$name>())?;)*
            Ok(())
        }
    };
}

// CircuitOpenError (a subclass of FerrolabError with properties) is defined in breaker.rs
exceptions! {
    ferrolab => FerrolabError(PyException): "Root of all ferrolab errors.";
    ferrolab => DeviceUnavailableError(FerrolabError):
        "A device (e.g. 'cuda') was requested that is absent or not compiled in.";
    ferrolab => InternalError(FerrolabError):
        "A bug in ferrolab: an operation failed in a way it never should (a Rust panic, caught at the op \
         boundary).\n\nThe message names the operation and carries the panic's message; please report it.";
    ferrolab => BackupError(FerrolabError): "A backup repository operation failed (root of the backup errors).";
    ferrolab => RepositoryNotFound(BackupError): "There is no backup repository at the given URL.";
    ferrolab => WrongPassword(BackupError): "No key of the repository opens with the given password or key file.";
    ferrolab => CorruptionError(BackupError):
        "Stored data failed authentication, a hash check or decoding; the message names the damaged item.";
    ferrolab => LockedError(BackupError):
        "Another live process holds a lock that conflicts with this operation (e.g. a running prune).";
    ferrolab.metrics => DuplicateTimeseries(PyValueError):
        "A metric's series clash with series already registered in the registry (prometheus_client's \
         ``Duplicated timeseries``).";
}

/// Maps a core error to its Python exception.
pub fn to_py(e: CoreError) -> PyErr {
    let msg = e.to_string();
    match e {
        CoreError::Type { .. } => PyTypeError::new_err(msg),
        CoreError::Value { .. } => PyValueError::new_err(msg),
        CoreError::DeviceUnavailable { cause, .. } => {
            let e = DeviceUnavailableError::new_err(msg);
            if let Some(cause) = cause {
                Python::attach(|py| {
                    e.set_cause(py, Some(PyRuntimeError::new_err(cause.to_string())))
                });
            }
            e
        }
        CoreError::Memory { .. } => PyMemoryError::new_err(msg),
        CoreError::Internal { .. } => InternalError::new_err(msg),
        CoreError::Backup { kind, .. } => {
            use ferrolab_core::error::BackupErrorKind as K;
            match kind {
                K::Other => BackupError::new_err(msg),
                K::RepositoryNotFound => RepositoryNotFound::new_err(msg),
                K::WrongPassword => WrongPassword::new_err(msg),
                K::Corruption => CorruptionError::new_err(msg),
                K::Locked => LockedError::new_err(msg),
            }
        }
        CoreError::Io { source, context } => {
            // keep the built-in OSError subclass (FileNotFoundError, PermissionError, ...), also for errors
            // without an errno
            let errno = ferrolab_core::error::io_errno(&source);
            PyOSError::new_err((errno, format!("{context}: {source}")))
        }
    }
}

/// `TypeError`: argument `arg` of `func` has the wrong type (`"{func}(): argument '{arg}' {msg}"`).
#[cold]
pub fn arg_type(func: &'static str, arg: &'static str, msg: impl Display) -> PyErr {
    to_py(CoreError::type_err(func, arg, msg))
}

/// `ValueError`: argument `arg` of `func` has a wrong value or shape (`"{func}(): argument '{arg}' {msg}"`).
#[cold]
pub fn arg_value(func: &'static str, arg: &'static str, msg: impl Display) -> PyErr {
    to_py(CoreError::value(func, arg, msg))
}

/// Built-in exceptions with a message that is not about one argument.
macro_rules! builtin_errors {
    ($($(#[$doc:meta])* $f:ident => $class:ident;)*) => {
        $($(#[$doc])* #[cold] pub fn $f(msg: impl Display) -> PyErr { pyo3::exceptions::$class::new_err(msg.to_string()) })*
    };
}

builtin_errors! {
    /// `TypeError` (e.g. a protocol a returned object breaks).
    type_error => PyTypeError;
    /// `ValueError`.
    value_error => PyValueError;
    /// `KeyError` (a mapping-like lookup of a name that is not there).
    key_error => PyKeyError;
    /// `RuntimeError`: an object used in a state that does not allow the call (e.g. a finished span).
    runtime_error => PyRuntimeError;
    /// `SystemError`: the exception a raw C-API entry point sets when it must fail without a better one.
    system_error => PySystemError;
    /// `NotImplementedError`.
    not_implemented => PyNotImplementedError;
    /// `OverflowError`: a Python number too large for the type it must become (as NumPy raises it).
    overflow_error => PyOverflowError;
}

/// Argument `arg` of `func` converted to `T` (a number): a wrong type is a TypeError ("must be {what}, got str")
/// and a number beyond `T` an OverflowError, both naming the function and the argument (PyO3's own conversion
/// names neither in its message).
#[inline]
pub fn scalar_arg<'py, T>(
    func: &'static str,
    arg: &'static str,
    what: &'static str,
    v: &Bound<'py, PyAny>,
) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
{
    match v.extract::<T>() {
        Ok(x) => Ok(x),
        Err(e) => Err(scalar_arg_error(func, arg, what, v, e)),
    }
}

#[cold]
#[inline(never)]
fn scalar_arg_error(
    func: &'static str,
    arg: &'static str,
    what: &'static str,
    v: &Bound<'_, PyAny>,
    e: PyErr,
) -> PyErr {
    renamed(
        v.py(),
        e,
        |e| overflow_error(format!("{func}(): argument '{arg}' is too large: {e}")),
        || arg_type(func, arg, format!("must be {what}, got {}", type_of(v))),
    )
}

/// The error `e` of converting an argument, renamed: an OverflowError becomes `overflow(message of e)`, a
/// TypeError `wrong_type()`, each with `e` as its cause; any other error (raised by the object's own
/// `__float__` or `__index__`, or an interrupt) is passed on as it is.
#[cold]
pub fn renamed(
    py: Python<'_>,
    e: PyErr,
    overflow: impl FnOnce(String) -> PyErr,
    wrong_type: impl FnOnce() -> PyErr,
) -> PyErr {
    let named = if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(py) {
        overflow(e.value(py).to_string())
    } else if e.is_instance_of::<PyTypeError>(py) {
        wrong_type()
    } else {
        return e;
    };
    named.set_cause(py, Some(e));
    named
}

/// A str argument, as [`scalar_arg`] converts numbers.
pub fn str_arg<'a>(
    func: &'static str,
    arg: &'static str,
    v: &'a Bound<'_, PyAny>,
) -> PyResult<&'a str> {
    match v.cast::<pyo3::types::PyString>() {
        Ok(s) => s.to_str(),
        Err(_) => Err(arg_type(
            func,
            arg,
            format!("must be a str, got {}", type_of(v)),
        )),
    }
}

/// The name of `o`'s type, for messages ("must be str, got int").
pub fn type_of(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A registration clash (from `Family::register_in`) as ``DuplicateTimeseries``.
#[cold]
pub fn duplicate_timeseries(e: CoreError) -> PyErr {
    DuplicateTimeseries::new_err(e.to_string())
}

/// Whether `o` is an exception class (a subclass of `BaseException`).
pub fn is_exception_class(o: &Bound<'_, PyAny>) -> bool {
    o.cast::<pyo3::types::PyType>().is_ok_and(|t| {
        t.is_subclass_of::<pyo3::exceptions::PyBaseException>()
            .unwrap_or(false)
    })
}

/// `ferrolab.InternalError` of `func`: a bug (a panic caught at a boundary), with the panic's message.
#[cold]
pub fn internal(func: &'static str, msg: impl Display) -> PyErr {
    to_py(CoreError::internal(func, msg))
}

pub use ferrolab_core::error::panic_message;

/// The `error_type` label of a Python exception: the first entry of `ERROR_KINDS` whose class it is an
/// instance of (subclasses before their bases), `"Other"` when none.
pub fn error_kind(py: Python<'_>, e: &PyErr) -> &'static str {
    macro_rules! first_of {
        ($($name:literal: $class:ty),*) => {$(
            debug_assert!(ERROR_KINDS.contains(&$name));
            if e.is_instance_of::<$class>(py) {
                return $name;
            }
        )*};
    }
    first_of!("DeviceUnavailableError": DeviceUnavailableError, "InternalError": InternalError,
              "MemoryError": PyMemoryError, "TypeError": PyTypeError, "ValueError": PyValueError,
              "OSError": PyOSError);
    "Other"
}

/// `core_result.py()?` converts through the funnel.
pub trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, CoreError> {
    #[inline]
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    add_exceptions(m)?;
    m.add("ERROR_KINDS", pyo3::types::PyTuple::new(py, ERROR_KINDS)?)?;
    Ok(())
}
