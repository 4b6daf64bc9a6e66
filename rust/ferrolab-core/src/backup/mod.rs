//! Deduplicated, compressed, encrypted, verifiable snapshots of directories (see `docs/backup-format.md`).

pub mod crypto;
pub mod store;

/// Result of backup functions (the crate's one error type).
pub type BResult<T> = crate::error::Result<T>;
