//! Deduplicated, compressed, encrypted, verifiable snapshots of directories.
//!
//! The repository format is documented in `docs/backup-format.md`. Modules: [`chunker`] (FastCDC and the
//! blob encoding), [`crypto`] (keys, sealing), [`pack`], [`index`], [`snapshot`], [`store`] (local, S3),
//! [`lock`], [`repo`] (open/init), [`archiver`] (backup), [`restore`], [`verify`], [`prune`].

pub mod archiver;
pub mod chunker;
pub mod crypto;
pub mod fsat;
pub mod index;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod store;
#[cfg(test)]
mod tests;
pub mod verify;

pub use archiver::{backup, BackupOptions};
pub use repo::{ProgressFn, ProgressInfo, Repository};

/// Result of backup functions (the crate's one error type).
pub type BResult<T> = crate::error::Result<T>;
