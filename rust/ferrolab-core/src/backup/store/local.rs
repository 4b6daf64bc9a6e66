//! A repository in a local directory.
//!
//! Nothing inside the repository is trusted to be what ferrolab wrote: every object and folder is reached from
//! the repository root one component at a time with `openat(O_NOFOLLOW)` (see [`crate::backup::fsat`]), so a
//! symlink planted in the repository is reported as tampering instead of being followed; reads refuse
//! anything that is not a regular file (a FIFO, a device) and objects larger than their kind can be
//! ([`super::max_object_size`]); objects are created `0600` and folders `0700`; the temp cleanup removes only
//! regular files with ferrolab's own temp names.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{max_object_size, Entry, Store};
use crate::backup::fsat::{is_link_or_not_dir, Dir, EntryKind};
use crate::backup::BResult;
use crate::error::{BackupErrorKind, CoreError};

/// Temporary files are written under this directory of the repository and renamed into place.
const TMP_DIR: &str = "tmp";
/// Mode of every object (before the umask).
const FILE_MODE: u32 = 0o600;
/// Mode of every folder (before the umask).
const DIR_MODE: u32 = 0o700;

/// A repository rooted at a local directory.
pub struct LocalStore {
    root: PathBuf,
    url: String,
    /// folders opened so far, by path relative to the root ("" is the root)
    dirs: RwLock<HashMap<String, Arc<Dir>>>,
    /// folders that received a rename since the last [`Store::sync`] (fsynced there)
    dirty_dirs: Mutex<HashSet<String>>,
    /// objects written since the last [`Store::sync`] (their data is fsynced there; writeback was started
    /// when they were written, so the fsync mostly finds it done)
    dirty_files: Mutex<Vec<String>>,
    /// fsync every object before its rename (on by default; `FERROLAB_BACKUP_FSYNC=0` turns it off)
    fsync: bool,
}

fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

/// `1234-0123456789abcdef.tmp`: the only names the temp cleanup removes.
fn is_tmp_name(name: &[u8]) -> bool {
    let Some(stem) = name.strip_suffix(b".tmp") else {
        return false;
    };
    let Some(dash) = stem.iter().position(|&b| b == b'-') else {
        return false;
    };
    let (pid, rand) = (&stem[..dash], &stem[dash + 1..]);
    !pid.is_empty()
        && pid.len() <= 10
        && pid.iter().all(u8::is_ascii_digit)
        && rand.len() == 16
        && rand.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl LocalStore {
    /// A store rooted at `path` (nothing is created until [`Store::create`] or the first put).
    pub fn new(path: &str) -> Self {
        let fsync = std::env::var("FERROLAB_BACKUP_FSYNC").map_or(true, |v| v != "0");
        LocalStore {
            root: PathBuf::from(path),
            url: path.to_string(),
            dirs: RwLock::new(HashMap::new()),
            dirty_dirs: Mutex::new(HashSet::new()),
            dirty_files: Mutex::new(Vec::new()),
            fsync,
        }
    }

    fn io(&self, what: &str, key: &str, e: std::io::Error) -> CoreError {
        CoreError::io(format!("{what} {}", self.root.join(key).display()), e)
    }

    /// The error for something in the repository that ferrolab did not create.
    fn tampered(&self, rel: &str, what: &str) -> CoreError {
        CoreError::backup(
            BackupErrorKind::Corruption,
            format!(
                "repository {}: '{rel}' is {what}, which ferrolab never creates (the repository was modified \
                 by something else); refusing to use it",
                self.url
            ),
        )
    }

    /// Explains why opening `name` in `parent` (at `rel`) failed: tampering when it is a symlink or not
    /// what it should be, else the I/O error.
    fn explain(&self, parent: &Dir, name: &str, rel: &str, e: std::io::Error) -> CoreError {
        if is_link_or_not_dir(&e) || e.kind() == ErrorKind::InvalidData {
            let what = match parent.stat(name.as_bytes()) {
                Ok(Some(st)) => match st.kind {
                    EntryKind::Symlink => "a symlink",
                    EntryKind::File => "a file where a folder belongs",
                    EntryKind::Dir => "a folder where a file belongs",
                    EntryKind::Other => "not a regular file (a FIFO, socket or device)",
                },
                _ => "not what it should be",
            };
            return self.tampered(rel, what);
        }
        CoreError::io(format!("open {}", self.root.join(rel).display()), e)
    }

    /// The folder at `rel` ("" is the root), opened without following symlinks below the root. With
    /// `create`, missing folders are made; without, a missing folder is `None`.
    fn dir(&self, rel: &str, create: bool) -> BResult<Option<Arc<Dir>>> {
        if let Some(d) = self.dirs.read().unwrap().get(rel) {
            return Ok(Some(d.clone()));
        }
        let d = if rel.is_empty() {
            match Dir::open(&self.root) {
                Ok(d) => d,
                Err(e) if e.kind() == ErrorKind::NotFound && create => {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(DIR_MODE)
                        .create(&self.root)
                        .map_err(|e| self.io("create directory", "", e))?;
                    Dir::open(&self.root).map_err(|e| self.io("open", "", e))?
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.io("open", "", e)),
            }
        } else {
            let (parent_rel, name) = split_key(rel);
            let Some(parent) = self.dir(parent_rel, create)? else {
                return Ok(None);
            };
            let r = if create {
                parent.open_or_create_dir(name.as_bytes(), DIR_MODE)
            } else {
                parent.open_dir(name.as_bytes())
            };
            match r {
                Ok(d) => d,
                Err(e) if e.kind() == ErrorKind::NotFound && !create => return Ok(None),
                Err(e) => return Err(self.explain(&parent, name, rel, e)),
            }
        };
        let d = Arc::new(d);
        self.dirs
            .write()
            .unwrap()
            .entry(rel.to_string())
            .or_insert(d.clone());
        Ok(Some(d))
    }

    /// Opens the regular file `key` for reading (`NotFound` when it or its folder is missing).
    fn open_object(&self, key: &str) -> BResult<(File, u64)> {
        let (dir_rel, name) = split_key(key);
        let not_found = || self.io("read", key, std::io::Error::from(ErrorKind::NotFound));
        let dir = self.dir(dir_rel, false)?.ok_or_else(not_found)?;
        match dir.open_regular(name.as_bytes()) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(not_found()),
            Err(e) => Err(self.explain(&dir, name, key, e)),
        }
    }

    /// Removes temporary files left by killed writers (older than `min_age`), so they do not accumulate.
    /// Only regular files with ferrolab's temp names are removed; anything else in `tmp/` is left alone.
    pub fn clean_tmp(&self, min_age: Duration) -> BResult<()> {
        let Some(tmp) = self.dir(TMP_DIR, false)? else {
            return Ok(());
        };
        let now = crate::backup::lock::now() as i64;
        let entries = tmp.entries().map_err(|e| self.io("list", TMP_DIR, e))?;
        for (name, kind) in entries {
            if kind != EntryKind::File || !is_tmp_name(&name) {
                continue;
            }
            let old = matches!(tmp.stat(&name), Ok(Some(st))
                if st.kind == EntryKind::File && now - st.mtime >= min_age.as_secs() as i64);
            if old {
                let _ = tmp.unlink(&name);
            }
        }
        Ok(())
    }
}

fn tmp_name() -> String {
    let mut b = [0u8; 8];
    crate::backup::crypto::random_bytes(&mut b);
    format!(
        "{}-{}.tmp",
        std::process::id(),
        crate::backup::crypto::hex(&b)
    )
}

use std::os::unix::fs::DirBuilderExt;

impl Store for LocalStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn create(&self) -> BResult<()> {
        let exists = || {
            CoreError::backup(
                BackupErrorKind::Other,
                format!(
                    "cannot create a repository at {}: the directory is not empty",
                    self.url
                ),
            )
        };
        if std::fs::symlink_metadata(self.root.join("config")).is_ok() {
            return Err(CoreError::backup(
                BackupErrorKind::Other,
                format!("a repository already exists at {}", self.url),
            ));
        }
        match std::fs::symlink_metadata(&self.root) {
            Ok(m) if m.is_dir() || m.file_type().is_symlink() => {
                let mut rd = std::fs::read_dir(&self.root).map_err(|e| self.io("list", "", e))?;
                if rd.next().is_some() {
                    return Err(exists());
                }
            }
            Ok(_) => {
                return Err(CoreError::io(
                    format!("create repository {}", self.url),
                    std::io::Error::new(ErrorKind::AlreadyExists, "exists and is not a directory"),
                ))
            }
            Err(_) => {}
        }
        for d in ["", "keys", "data", "index", "snapshots", "locks", TMP_DIR] {
            self.dir(d, true)?;
        }
        Ok(())
    }

    fn put(&self, key: &str, data: &[u8]) -> BResult<()> {
        self.put_parts(key, &[data])
    }

    fn put_parts(&self, key: &str, parts: &[&[u8]]) -> BResult<()> {
        let (dir_rel, name) = split_key(key);
        let tmp_dir = self.dir(TMP_DIR, true)?.expect("created");
        let tmp = tmp_name();
        let res = (|| -> BResult<()> {
            let mut f = tmp_dir
                .open_file(
                    tmp.as_bytes(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    FILE_MODE,
                )
                .map_err(|e| self.io("write", &format!("{TMP_DIR}/{tmp}"), e))?;
            for data in parts {
                f.write_all(data).map_err(|e| self.io("write", key, e))?;
            }
            if self.fsync {
                start_writeback(&f);
            }
            drop(f);
            let dest = self.dir(dir_rel, true)?.expect("created");
            tmp_dir
                .rename(tmp.as_bytes(), &dest, name.as_bytes())
                .map_err(|e| self.io("write", key, e))
        })();
        if let Err(e) = res {
            let _ = tmp_dir.unlink(tmp.as_bytes());
            return Err(e);
        }
        if self.fsync {
            self.dirty_files.lock().unwrap().push(key.to_string());
            self.dirty_dirs.lock().unwrap().insert(dir_rel.to_string());
        }
        Ok(())
    }

    fn get(&self, key: &str) -> BResult<Vec<u8>> {
        let (f, size) = self.open_object(key)?;
        let max = max_object_size(key);
        if size > max {
            return Err(self.tampered(
                key,
                &format!("{size} bytes, more than the {max} such an object can have"),
            ));
        }
        let mut buf = Vec::with_capacity(size as usize);
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.io("read", key, e))?;
        if buf.len() as u64 > max {
            return Err(self.tampered(key, "growing past the size such an object can have"));
        }
        Ok(buf)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> BResult<Vec<u8>> {
        let what = format!("read {len} bytes at offset {offset} of");
        let (mut f, size) = self.open_object(key)?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(self.io(
                &what,
                key,
                std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("the object has only {size} bytes"),
                ),
            ));
        }
        // read into the buffer's spare capacity: zero-filling it first (`vec![0; len]`) cost a memset of every
        // byte a restore reads
        let mut buf = Vec::with_capacity(len as usize);
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.take(len).read_to_end(&mut buf))
            .map_err(|e| self.io(&what, key, e))?;
        if buf.len() as u64 != len {
            let e = std::io::Error::new(ErrorKind::UnexpectedEof, "the object ended early");
            return Err(self.io(&what, key, e));
        }
        Ok(buf)
    }

    fn list(&self, dir: &str) -> BResult<Vec<Entry>> {
        let mut out = Vec::new();
        let Some(base) = self.dir(dir, false)? else {
            return Ok(out);
        };
        let mut stack: Vec<(String, Arc<Dir>)> = vec![(String::new(), base)];
        while let Some((prefix, d)) = stack.pop() {
            let shown = |name: &str| {
                if prefix.is_empty() {
                    format!("{dir}/{name}")
                } else {
                    format!("{dir}/{prefix}/{name}")
                }
            };
            let entries = d
                .entries()
                .map_err(|e| self.io("list", &format!("{dir}/{prefix}"), e))?;
            for (raw, kind) in entries {
                let Ok(name) = String::from_utf8(raw) else {
                    return Err(self.tampered(
                        &format!("{dir}/{prefix}"),
                        "a folder holding a name that is not UTF-8",
                    ));
                };
                let rel = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                match kind {
                    EntryKind::Dir => match d.open_dir(name.as_bytes()) {
                        Ok(sub) => stack.push((rel, Arc::new(sub))),
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(self.explain(&d, &name, &shown(&name), e)),
                    },
                    EntryKind::File => match d.stat(name.as_bytes()) {
                        Ok(Some(st)) if st.kind == EntryKind::File => out.push(Entry {
                            name: rel,
                            size: st.size,
                        }),
                        Ok(None) => {} // deleted meanwhile
                        Ok(Some(_)) => return Err(self.tampered(&shown(&name), "replaced")),
                        Err(e) => return Err(self.io("stat", &shown(&name), e)),
                    },
                    EntryKind::Symlink => return Err(self.tampered(&shown(&name), "a symlink")),
                    EntryKind::Other => {
                        return Err(self.tampered(
                            &shown(&name),
                            "not a regular file (a FIFO, socket or device)",
                        ))
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, key: &str) -> BResult<()> {
        let (dir_rel, name) = split_key(key);
        let Some(dir) = self.dir(dir_rel, false)? else {
            return Ok(());
        };
        match dir.unlink(name.as_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", key, e)),
        }
    }

    fn exists(&self, key: &str) -> BResult<bool> {
        let (dir_rel, name) = split_key(key);
        let Some(dir) = self.dir(dir_rel, false)? else {
            return Ok(false);
        };
        dir.stat(name.as_bytes())
            .map(|s| s.is_some())
            .map_err(|e| self.io("stat", key, e))
    }

    fn clean_tmp(&self, min_age: Duration) -> BResult<()> {
        LocalStore::clean_tmp(self, min_age)
    }

    fn sync(&self) -> BResult<()> {
        if !self.fsync {
            return Ok(());
        }
        let files: Vec<String> = std::mem::take(&mut *self.dirty_files.lock().unwrap());
        for key in files {
            match self.open_object(&key) {
                Ok((f, _)) => f.sync_data().map_err(|e| self.io("fsync", &key, e))?,
                Err(CoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {} // deleted meanwhile (a released lock)
                Err(e) => return Err(e),
            }
        }
        let dirs: Vec<String> = self.dirty_dirs.lock().unwrap().drain().collect();
        for rel in dirs {
            if let Some(d) = self.dir(&rel, false)? {
                d.sync().map_err(|e| self.io("fsync", &rel, e))?;
            }
        }
        Ok(())
    }
}

/// Starts writing a file's dirty pages back to disk without waiting (Linux `sync_file_range`).
fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; SYNC_FILE_RANGE_WRITE only initiates writeback and does not block on it.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::is_tmp_name;

    #[test]
    fn only_own_temp_names() {
        assert!(is_tmp_name(b"1234-0123456789abcdef.tmp"));
        for bad in [
            &b"notes.txt"[..],
            b"1234-0123456789abcdef",
            b"-0123456789abcdef.tmp",
            b"12a4-0123456789abcdef.tmp",
            b"1234-0123456789ABCDEF.tmp",
            b"1234-0123456789abcde.tmp",
            b"1234-0123456789abcdef0.tmp",
        ] {
            assert!(!is_tmp_name(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
