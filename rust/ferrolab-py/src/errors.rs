//! The one error funnel: every exception the bindings raise is built here.
//!
//! A `CoreError` becomes exactly one Python exception in [`to_py`]. Errors found by the bindings themselves
//! (argument conversion, protocol misuse) are built by the constructors below ([`arg_type`], [`arg_value`],
//! [`type_error`], ...): no other file calls `new_err`. [`error_kind`] names an exception's class for the
//! `error_type` metric label from the one list of kinds, `ferrolab_core::telemetry::seam::ERROR_KINDS`.

use ferrolab_core::telemetry::seam::ERROR_KINDS;
use ferrolab_core::CoreError;
use pyo3::exceptions::{
    PyException, PyKeyError, PyMemoryError, PyOSError, PyRuntimeError, PySystemError, PyTypeError,
    PyValueError,
};
use pyo3::prelude::*;
use std::fmt::Display;

pyo3::create_exception!(
    ferrolab,
    FerrolabError,
    PyException,
    "Root of all ferrolab errors."
);
pyo3::create_exception!(
    ferrolab,
    DeviceUnavailableError,
    FerrolabError,
    "A device (e.g. 'cuda') was requested that is absent or not compiled in."
);

pyo3::create_exception!(
    ferrolab,
    InternalError,
    FerrolabError,
    "A bug in ferrolab: an operation failed in a way it never should (a Rust panic, caught at the op boundary).\n\n\
     The message names the operation and carries the panic's message; please report it."
);

pyo3::create_exception!(
    ferrolab,
    BackupError,
    FerrolabError,
    "A backup repository operation failed (root of the backup errors)."
);
pyo3::create_exception!(
    ferrolab,
    RepositoryNotFound,
    BackupError,
    "There is no backup repository at the given URL."
);
pyo3::create_exception!(
    ferrolab,
    WrongPassword,
    BackupError,
    "No key of the repository opens with the given password or key file."
);
pyo3::create_exception!(
    ferrolab,
    CorruptionError,
    BackupError,
    "Stored data failed authentication, a hash check or decoding; the message names the damaged item."
);
pyo3::create_exception!(
    ferrolab,
    LockedError,
    BackupError,
    "Another live process holds a lock that conflicts with this operation (e.g. a running prune)."
);

pyo3::create_exception!(
    ferrolab.metrics,
    DuplicateTimeseries,
    PyValueError,
    "A metric's series clash with series already registered in the registry (prometheus_client's \
     ``Duplicated timeseries``)."
);

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

/// `TypeError` with a message that is not about one argument (e.g. a protocol a returned object breaks).
#[cold]
pub fn type_error(msg: impl Display) -> PyErr {
    PyTypeError::new_err(msg.to_string())
}

/// `ValueError` with a message that is not about one argument.
#[cold]
pub fn value_error(msg: impl Display) -> PyErr {
    PyValueError::new_err(msg.to_string())
}

/// A registration clash (from `Family::register_in`) as ``DuplicateTimeseries``.
#[cold]
pub fn duplicate_timeseries(e: CoreError) -> PyErr {
    DuplicateTimeseries::new_err(e.to_string())
}

/// The name of `o`'s type, for messages ("must be str, got int").
/// Whether `o` is an exception class (a subclass of `BaseException`).
pub fn is_exception_class(o: &Bound<'_, PyAny>) -> bool {
    o.cast::<pyo3::types::PyType>().is_ok_and(|t| {
        t.is_subclass_of::<pyo3::exceptions::PyBaseException>()
            .unwrap_or(false)
    })
}

pub fn type_of(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn not_implemented(msg: impl Display) -> PyErr {
    pyo3::exceptions::PyNotImplementedError::new_err(msg.to_string())
}

/// `KeyError` (a mapping-like lookup of a name that is not there).
#[cold]
pub fn key_error(msg: impl Display) -> PyErr {
    PyKeyError::new_err(msg.to_string())
}

/// `RuntimeError`: an object used in a state that does not allow the call (e.g. a finished span).
#[cold]
pub fn runtime_error(msg: impl Display) -> PyErr {
    PyRuntimeError::new_err(msg.to_string())
}

/// `SystemError`: the exception a raw C-API entry point sets when it must fail without a better one.
#[cold]
pub fn system_error(msg: impl Display) -> PyErr {
    PySystemError::new_err(msg.to_string())
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
    let classes: [(&str, Bound<'_, pyo3::types::PyType>); 6] = [
        (
            "DeviceUnavailableError",
            py.get_type::<DeviceUnavailableError>(),
        ),
        ("InternalError", py.get_type::<InternalError>()),
        ("MemoryError", py.get_type::<PyMemoryError>()),
        ("TypeError", py.get_type::<PyTypeError>()),
        ("ValueError", py.get_type::<PyValueError>()),
        ("OSError", py.get_type::<PyOSError>()),
    ];
    for (name, class) in classes {
        if e.is_instance(py, &class) {
            return ERROR_KINDS
                .iter()
                .copied()
                .find(|k| *k == name)
                .unwrap_or("Other");
        }
    }
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
    macro_rules! add_exceptions {
        ($($e:ident),*) => { $(m.add(stringify!($e), py.get_type::<$e>())?;)* };
    }
    // CircuitOpenError (a subclass of FerrolabError with properties) is defined in breaker.rs
    add_exceptions!(
        FerrolabError,
        DeviceUnavailableError,
        InternalError,
        BackupError,
        RepositoryNotFound,
        WrongPassword,
        CorruptionError,
        LockedError,
        DuplicateTimeseries
    );
    m.add("ERROR_KINDS", pyo3::types::PyTuple::new(py, ERROR_KINDS)?)?;
    Ok(())
}
