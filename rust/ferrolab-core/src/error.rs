//! The one error type of the core crate.
//!
//! Every fallible core function returns [`Result`]. The binding crate maps each variant to exactly one
//! Python exception (see `ferrolab-py/src/errors.rs`): `Type` -> `TypeError`, `Value` -> `ValueError`,
//! `DeviceUnavailable` -> `ferrolab.DeviceUnavailableError`, `Io` -> the matching built-in `OSError` subclass.

use std::fmt;

/// A core error. Messages always name the function, the argument and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// An argument has the wrong type or dtype.
    #[error("{func}(): argument '{arg}' {msg}")]
    Type {
        func: &'static str,
        arg: &'static str,
        msg: String,
    },
    /// An argument has the wrong shape or value.
    #[error("{func}(): argument '{arg}' {msg}")]
    Value {
        func: &'static str,
        arg: &'static str,
        msg: String,
    },
    /// A device was requested that is not present or not compiled in.
    #[error("{func}(): device '{device}' is not available: {reason}")]
    DeviceUnavailable {
        func: &'static str,
        device: String,
        reason: String,
    },
    /// An operating-system I/O failure.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl CoreError {
    /// A `TypeError`-class error for argument `arg` of function `func`.
    pub fn type_err(func: &'static str, arg: &'static str, msg: impl fmt::Display) -> Self {
        CoreError::Type {
            func,
            arg,
            msg: msg.to_string(),
        }
    }

    /// A `ValueError`-class error for argument `arg` of function `func`.
    pub fn value(func: &'static str, arg: &'static str, msg: impl fmt::Display) -> Self {
        CoreError::Value {
            func,
            arg,
            msg: msg.to_string(),
        }
    }

    /// A short, stable name of the error class, used as the `error_type` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            CoreError::Type { .. } => "TypeError",
            CoreError::Value { .. } => "ValueError",
            CoreError::DeviceUnavailable { .. } => "DeviceUnavailableError",
            CoreError::Io { .. } => "OSError",
        }
    }
}

/// The core crate's result type.
pub type Result<T> = std::result::Result<T, CoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_function_and_argument() {
        let e = CoreError::value("matmul", "b", "has shape (3, 4); expected (5, n)");
        assert_eq!(
            e.to_string(),
            "matmul(): argument 'b' has shape (3, 4); expected (5, n)"
        );
        assert_eq!(e.kind(), "ValueError");
        let e = CoreError::type_err("sum", "x", "has dtype complex128");
        assert_eq!(e.kind(), "TypeError");
        assert!(e.to_string().starts_with("sum(): argument 'x'"));
    }
}
