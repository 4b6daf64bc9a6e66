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
    /// A backup repository failure (see [`BackupErrorKind`]); the message names the repository item.
    #[error("{msg}")]
    Backup { kind: BackupErrorKind, msg: String },
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
            CoreError::Backup { kind, .. } => kind.name(),
            CoreError::Io { .. } => "OSError",
        }
    }

    /// A backup error of the given kind.
    pub fn backup(kind: BackupErrorKind, msg: impl fmt::Display) -> Self {
        CoreError::Backup {
            kind,
            msg: msg.to_string(),
        }
    }

    /// An I/O error with context (what was being done, to which path).
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        CoreError::Io {
            context: context.to_string(),
            source,
        }
    }
}

/// The classes of backup errors; each maps to one Python exception (`ferrolab.BackupError` and subclasses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupErrorKind {
    /// Any other repository failure (bad format, unsupported version, S3 failure, ...).
    Other,
    /// No repository at the URL (no `config` object).
    RepositoryNotFound,
    /// No key of the repository opens with the given password or key file.
    WrongPassword,
    /// Stored data failed authentication, a hash check or decoding; the message names the item.
    Corruption,
    /// An exclusive lock held by another live process blocks the operation.
    Locked,
}

impl BackupErrorKind {
    /// The Python exception class name.
    pub fn name(self) -> &'static str {
        match self {
            BackupErrorKind::Other => "BackupError",
            BackupErrorKind::RepositoryNotFound => "RepositoryNotFound",
            BackupErrorKind::WrongPassword => "WrongPassword",
            BackupErrorKind::Corruption => "CorruptionError",
            BackupErrorKind::Locked => "LockedError",
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
