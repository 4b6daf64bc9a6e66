//! Where a repository's objects live: a local directory ([`local::LocalStore`]) or an S3 bucket
//! ([`s3::S3Store`]).
//!
//! A store holds named, immutable objects addressed by slash-separated keys relative to the repository root
//! (`config`, `keys/<id>`, `data/<2 hex>/<id>`, `index/<id>`, `snapshots/<id>`, `locks/<id>`). Its contract,
//! on which the crash safety of the repository rests:
//!
//! * [`Store::put`] is atomic: a reader sees either no object or the whole object, never a prefix, also when
//!   the writing process is killed (local: write to a temporary name, fsync, rename; S3: a single PUT);
//! * [`Store::put`] may replace an existing object only with identical bytes (objects are content-addressed
//!   or carry random names), so a retried or concurrent put of the same key is harmless; the one exception is
//!   a lock refreshing its own object;
//! * [`Store::list`] returns complete objects only (temporary files are not listed).

pub mod local;
pub mod s3;

pub use s3::S3Options;

use crate::backup::BResult;

/// One listed object: its key relative to the listed directory and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
}

/// The largest object of each kind a store reads (larger ones are reported as damaged, so a planted object
/// cannot exhaust memory): 1 MiB for `config`, keys and locks, 64 MiB for snapshots, 256 MiB for index objects
/// and packs (packs are about 16 MiB).
pub fn max_object_size(key: &str) -> u64 {
    match key.split('/').next().unwrap_or("") {
        "config" | "keys" | "locks" => 1 << 20,
        "snapshots" => 64 << 20,
        _ => 256 << 20,
    }
}

/// A repository's object store (see the module docs for the contract).
pub trait Store: Send + Sync {
    /// The URL the store was opened with (for messages and metric labels).
    fn url(&self) -> &str;

    /// Creates the store's root if needed (called by `init`); fails if `config` already exists there.
    fn create(&self) -> BResult<()>;

    /// Stores `data` under `key` atomically (see the module docs).
    fn put(&self, key: &str, data: &[u8]) -> BResult<()>;

    /// Stores the concatenation of `parts` under `key` (same contract as [`Store::put`]).
    fn put_parts(&self, key: &str, parts: &[&[u8]]) -> BResult<()> {
        self.put(key, &parts.concat())
    }

    /// Stores the concatenation of `parts` under `key`, taking them (S3 sends them without a copy).
    fn put_owned(&self, key: &str, parts: Vec<Vec<u8>>) -> BResult<()> {
        let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        self.put_parts(key, &slices)
    }

    /// Reads a whole object. A missing object is an `Io` error of kind `NotFound`; an object larger than
    /// [`max_object_size`] is a `Corruption` error.
    fn get(&self, key: &str) -> BResult<Vec<u8>>;

    /// Reads `len` bytes at `offset` of an object; fewer bytes than asked is an error.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> BResult<Vec<u8>>;

    /// Lists the objects under directory `dir` (recursively), with keys relative to `dir`.
    /// A missing directory lists as empty.
    fn list(&self, dir: &str) -> BResult<Vec<Entry>>;

    /// Deletes an object; deleting a missing object succeeds.
    fn delete(&self, key: &str) -> BResult<()>;

    /// Whether an object exists.
    fn exists(&self, key: &str) -> BResult<bool>;

    /// Removes temporary objects that killed writers left behind, older than `min_age` (local stores; S3
    /// puts are single requests and leave none).
    fn clean_tmp(&self, _min_age: std::time::Duration) -> BResult<()> {
        Ok(())
    }

    /// How many puts of packs a backup keeps in flight at once (S3: several, since each is a round trip; a
    /// local store: one, since the disk is the limit and not the latency).
    fn upload_concurrency(&self) -> usize {
        1
    }

    /// Makes every completed `put` durable (local: fsync the directories written to). A no-op on S3.
    fn sync(&self) -> BResult<()> {
        Ok(())
    }
}

/// Opens the store for `url`: `s3://bucket/optional/prefix` is an S3 bucket (configured by `s3`, else by the
/// `AWS_*` environment variables), `file:///path` or a plain path a local directory.
pub fn open_store(url: &str, s3: Option<&S3Options>) -> BResult<Box<dyn Store>> {
    if url.starts_with("s3://") {
        let default = S3Options::default();
        Ok(Box::new(s3::S3Store::new(url, s3.unwrap_or(&default))?))
    } else {
        let path = url.strip_prefix("file://").unwrap_or(url);
        Ok(Box::new(local::LocalStore::new(path)))
    }
}
