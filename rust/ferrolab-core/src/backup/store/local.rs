//! A repository in a local directory.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Entry, Store};
use crate::backup::BResult;
use crate::error::CoreError;

/// Temporary files are written under this directory of the repository and renamed into place.
const TMP_DIR: &str = "tmp";

/// A repository rooted at a local directory.
pub struct LocalStore {
    root: PathBuf,
    url: String,
    /// directories that received a rename since the last [`Store::sync`] (fsynced there)
    dirty_dirs: Mutex<HashSet<PathBuf>>,
    /// objects written since the last [`Store::sync`] (their data is fsynced there; writeback was started
    /// when they were written, so the fsync mostly finds it done)
    dirty_files: Mutex<Vec<PathBuf>>,
    /// fsync every object before its rename (on by default; `FERROLAB_BACKUP_FSYNC=0` turns it off)
    fsync: bool,
}

impl LocalStore {
    /// A store rooted at `path` (nothing is created until [`Store::create`] or the first put).
    pub fn new(path: &str) -> Self {
        let fsync = std::env::var("FERROLAB_BACKUP_FSYNC").map_or(true, |v| v != "0");
        LocalStore {
            root: PathBuf::from(path),
            url: path.to_string(),
            dirty_dirs: Mutex::new(HashSet::new()),
            dirty_files: Mutex::new(Vec::new()),
            fsync,
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io(&self, what: &str, key: &str, e: std::io::Error) -> CoreError {
        CoreError::io(format!("{what} {}", self.path(key).display()), e)
    }
}

fn tmp_name() -> String {
    let mut b = [0u8; 8];
    crate::backup::crypto::random_bytes(&mut b);
    format!(
        "{}-{}.tmp",
        std::process::id(),
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

impl Store for LocalStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn create(&self) -> BResult<()> {
        if self.path("config").exists() {
            return Err(CoreError::backup(
                crate::error::BackupErrorKind::Other,
                format!("a repository already exists at {}", self.url),
            ));
        }
        if let Ok(mut rd) = fs::read_dir(&self.root) {
            if rd.next().is_some() {
                return Err(CoreError::backup(
                    crate::error::BackupErrorKind::Other,
                    format!(
                        "cannot create a repository at {}: the directory is not empty",
                        self.url
                    ),
                ));
            }
        }
        if self.root.exists() && !self.root.is_dir() {
            return Err(CoreError::io(
                format!("create repository {}", self.url),
                std::io::Error::new(ErrorKind::AlreadyExists, "exists and is not a directory"),
            ));
        }
        for d in ["", "keys", "data", "index", "snapshots", "locks", TMP_DIR] {
            fs::create_dir_all(self.root.join(d)).map_err(|e| self.io("create directory", d, e))?;
        }
        Ok(())
    }

    fn put(&self, key: &str, data: &[u8]) -> BResult<()> {
        self.put_parts(key, &[data])
    }

    fn put_parts(&self, key: &str, parts: &[&[u8]]) -> BResult<()> {
        let dest = self.path(key);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        let tmp_dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&tmp_dir).map_err(|e| self.io("create directory", TMP_DIR, e))?;
        let tmp = tmp_dir.join(tmp_name());
        let res = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            for data in parts {
                f.write_all(data)?;
            }
            if self.fsync {
                start_writeback(&f);
            }
            drop(f);
            match fs::rename(&tmp, &dest) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)?;
                    fs::rename(&tmp, &dest)
                }
                r => r,
            }
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(self.io("write", key, e));
        }
        if self.fsync {
            self.dirty_files.lock().unwrap().push(dest);
            self.dirty_dirs.lock().unwrap().insert(dir);
        }
        Ok(())
    }

    fn get(&self, key: &str) -> BResult<Vec<u8>> {
        fs::read(self.path(key)).map_err(|e| self.io("read", key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> BResult<Vec<u8>> {
        let p = self.path(key);
        let res = (|| -> std::io::Result<Vec<u8>> {
            let mut f = File::open(&p)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        })();
        res.map_err(|e| self.io(&format!("read {len} bytes at offset {offset} of"), key, e))
    }

    fn list(&self, dir: &str) -> BResult<Vec<Entry>> {
        let base = self.path(dir);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(CoreError::io(format!("list {}", d.display()), e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| CoreError::io(format!("list {}", d.display()), e))?;
                let ft = ent
                    .file_type()
                    .map_err(|e| CoreError::io(format!("list {}", d.display()), e))?;
                let p = ent.path();
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    let size = match ent.metadata() {
                        Ok(m) => m.len(),
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(CoreError::io(format!("stat {}", p.display()), e)),
                    };
                    let rel = rel_key(&base, &p);
                    out.push(Entry { name: rel, size });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, key: &str) -> BResult<()> {
        match fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", key, e)),
        }
    }

    fn exists(&self, key: &str) -> BResult<bool> {
        match fs::symlink_metadata(self.path(key)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io("stat", key, e)),
        }
    }

    fn kind(&self) -> super::StoreKind {
        super::StoreKind::Local(self.root.to_string_lossy().into_owned())
    }

    fn sync(&self) -> BResult<()> {
        if !self.fsync {
            return Ok(());
        }
        let files: Vec<PathBuf> = std::mem::take(&mut *self.dirty_files.lock().unwrap());
        for p in files {
            match File::open(&p) {
                Ok(f) => f
                    .sync_data()
                    .map_err(|e| CoreError::io(format!("fsync {}", p.display()), e))?,
                Err(e) if e.kind() == ErrorKind::NotFound => {} // deleted meanwhile (a released lock)
                Err(e) => return Err(CoreError::io(format!("fsync {}", p.display()), e)),
            }
        }
        let dirs: Vec<PathBuf> = self.dirty_dirs.lock().unwrap().drain().collect();
        for d in dirs {
            if let Ok(f) = File::open(&d) {
                f.sync_all()
                    .map_err(|e| CoreError::io(format!("fsync {}", d.display()), e))?;
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

fn rel_key(base: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(base).unwrap_or(p);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Removes temporary files left by killed writers (older than `min_age`), so they do not accumulate.
pub fn clean_tmp(root: &Path, min_age: std::time::Duration) {
    if let Ok(rd) = fs::read_dir(root.join(TMP_DIR)) {
        for ent in rd.flatten() {
            let old = ent
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old {
                let _ = fs::remove_file(ent.path());
            }
        }
    }
}
