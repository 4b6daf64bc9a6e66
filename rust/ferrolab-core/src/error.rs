//! The one error type of the core crate.
//!
//! Every fallible core function returns [`Result`]. The binding crate maps each variant to exactly one
//! Python exception (see `ferrolab-py/src/errors.rs`): `Type` -> `TypeError`, `Value` -> `ValueError`,
//! `DeviceUnavailable` -> `ferrolab.DeviceUnavailableError`, `Io` -> the matching built-in `OSError` subclass,
//! `Memory` -> `MemoryError`, `Internal` -> `ferrolab.InternalError`.

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
        func: Box<str>,
        device: Box<str>,
        reason: String,
        /// The CUDA error behind it, when a GPU call failed (`__cause__` of the Python exception).
        cause: Option<Box<str>>,
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
    /// A buffer (a result, a copy of an input, an intermediate) of `bytes` bytes could not be allocated; `bytes` is
    /// `None` when the size does not even fit in 64 bits. `detail` names the buffer, its shape and its dtype:
    /// `result (100000 x 100000 float64)`. (Kept small: every `Result` of the crate carries this enum.)
    #[error("{}", memory_message(.func, .bytes, .detail))]
    Memory {
        func: &'static str,
        bytes: Option<u64>,
        detail: Box<str>,
    },
    /// A bug: a kernel panicked. The message is the panic's.
    #[error("{func}(): internal error: {msg}")]
    Internal { func: &'static str, msg: String },
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
            CoreError::Memory { .. } => "MemoryError",
            CoreError::Internal { .. } => "InternalError",
        }
    }

    /// A `MemoryError`-class error: `func` cannot allocate `what` (e.g. "result"), `shape` elements of `dtype`
    /// of `item_bytes` bytes each.
    pub fn memory(
        func: &'static str,
        what: impl fmt::Display,
        shape: &[usize],
        dtype: &'static str,
        item_bytes: usize,
    ) -> Self {
        let bytes = shape
            .iter()
            .try_fold(item_bytes as u64, |acc, &d| acc.checked_mul(d as u64));
        let dims = if shape.is_empty() {
            "0-d".to_string()
        } else {
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" x ")
        };
        CoreError::Memory {
            func,
            bytes,
            detail: format!("{what} ({dims} {dtype})").into_boxed_str(),
        }
    }

    /// An `InternalError` (a panic caught at the op boundary) of `func` with the panic's message.
    pub fn internal(func: &'static str, msg: impl fmt::Display) -> Self {
        CoreError::Internal {
            func,
            msg: msg.to_string(),
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

/// `cdist(): cannot allocate the 80.0 GB result (100000 x 100000 float64)`.
fn memory_message(func: &str, bytes: &Option<u64>, detail: &str) -> String {
    match bytes {
        Some(b) => format!("{func}(): cannot allocate the {} {detail}", fmt_bytes(*b)),
        None => {
            format!("{func}(): cannot allocate the {detail}: its size overflows the address space")
        }
    }
}

/// A byte count in decimal units: `512 bytes`, `80.0 GB`, `8.0 TB`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 9] = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    if b < 1000 {
        return format!("{b} bytes");
    }
    let mut v = b as f64;
    let mut i = 0;
    while v >= 999.95 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

/// `v` seconds, argument `arg` of `func`, as a `Duration` (`Duration::MAX` when it does not fit one): a `Value`
/// error unless `v` is a number in `[0, max]` (in `(0, max]` when `positive`).
pub fn check_seconds(
    func: &'static str,
    arg: &'static str,
    v: f64,
    max: f64,
    positive: bool,
) -> Result<std::time::Duration> {
    let above_zero = if positive { v > 0.0 } else { v >= 0.0 };
    if v.is_finite() && above_zero && v <= max {
        return Ok(std::time::Duration::try_from_secs_f64(v).unwrap_or(std::time::Duration::MAX));
    }
    let expected = match (max.is_finite(), positive) {
        (true, true) => format!("seconds in (0, {max}]"),
        (true, false) => format!("seconds in [0, {max}]"),
        (false, true) => "seconds > 0".to_string(),
        (false, false) => "seconds >= 0".to_string(),
    };
    Err(CoreError::value(
        func,
        arg,
        format!("is {v}; expected {expected}"),
    ))
}

/// The errno of an I/O error: its OS error, else the errno of its kind (errors without one, e.g. from the S3
/// store, then still become `FileNotFoundError`, `PermissionError`, ... in Python); 0 when no kind fits.
pub fn io_errno(e: &std::io::Error) -> i32 {
    use std::io::ErrorKind as K;
    e.raw_os_error().unwrap_or(match e.kind() {
        K::NotFound => libc::ENOENT,
        K::PermissionDenied => libc::EACCES,
        K::AlreadyExists => libc::EEXIST,
        K::TimedOut => libc::ETIMEDOUT,
        K::ConnectionRefused => libc::ECONNREFUSED,
        K::ConnectionReset => libc::ECONNRESET,
        K::ConnectionAborted => libc::ECONNABORTED,
        K::NotConnected => libc::ENOTCONN,
        K::Interrupted => libc::EINTR,
        _ => 0,
    })
}

/// The message of a caught panic's payload (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
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

    #[test]
    fn errno_of_io_errors() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            io_errno(&Error::from_raw_os_error(libc::ENOSPC)),
            libc::ENOSPC
        );
        assert_eq!(
            io_errno(&Error::new(ErrorKind::NotFound, "no key")),
            libc::ENOENT
        );
        assert_eq!(
            io_errno(&Error::from(ErrorKind::PermissionDenied)),
            libc::EACCES
        );
        assert_eq!(io_errno(&Error::from(ErrorKind::TimedOut)), libc::ETIMEDOUT);
        assert_eq!(io_errno(&Error::other("s3 said no")), 0);
    }

    #[test]
    fn seconds() {
        use std::time::Duration;
        let inf = f64::INFINITY;
        assert_eq!(
            check_seconds("f", "t", 0.0, inf, false).unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            check_seconds("f", "t", 1.5, 3600.0, true).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            check_seconds("f", "t", 1e300, inf, false).unwrap(),
            Duration::MAX
        );
        for (v, max, positive, expected) in [
            (-1.0, inf, false, "is -1; expected seconds >= 0"),
            (f64::NAN, inf, false, "is NaN; expected seconds >= 0"),
            (inf, inf, false, "is inf; expected seconds >= 0"),
            (0.0, 3600.0, true, "is 0; expected seconds in (0, 3600]"),
            (
                3601.0,
                3600.0,
                true,
                "is 3601; expected seconds in (0, 3600]",
            ),
            (7.0, 5.0, false, "is 7; expected seconds in [0, 5]"),
        ] {
            let e = check_seconds("flush", "timeout", v, max, positive).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("flush(): argument 'timeout' {expected}")
            );
            assert_eq!(e.kind(), "ValueError");
        }
    }

    #[test]
    fn memory_and_internal_messages() {
        let e = CoreError::memory("cdist", "result", &[100_000, 100_000], "float64", 8);
        assert_eq!(
            e.to_string(),
            "cdist(): cannot allocate the 80.0 GB result (100000 x 100000 float64)"
        );
        assert_eq!(e.kind(), "MemoryError");
        let e = CoreError::memory("sum", "copy of 'x'", &[usize::MAX; 9], "float64", 8);
        assert!(e
            .to_string()
            .ends_with("its size overflows the address space"));
        assert_eq!(fmt_bytes(999), "999 bytes");
        assert_eq!(fmt_bytes(1000), "1.0 kB");
        assert_eq!(fmt_bytes(999_999), "1.0 MB");
        assert_eq!(fmt_bytes(8 * 10u64.pow(12)), "8.0 TB");
        assert_eq!(fmt_bytes(u64::MAX), "18.4 EB");
        // every Result of the crate carries the enum: the new variants must not make it larger
        assert!(std::mem::size_of::<CoreError>() <= 72);
        let e = CoreError::internal("sum", "index out of bounds");
        assert_eq!(e.to_string(), "sum(): internal error: index out of bounds");
        assert_eq!(e.kind(), "InternalError");
    }
}
