//! Directory-relative file operations that never follow a symlink (`openat`, `mkdirat`, `renameat`,
//! `unlinkat`, `fstatat` with `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`).
//!
//! The local store and restore use these so that a symlink planted inside a repository (or created by a
//! crafted snapshot) can never redirect a read, a write, a delete or a permission change to a place outside
//! the directory the operation started from. Every name passed here is one path component.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// What a directory entry is (from `d_type`, or `fstatat` when the file system does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket, device
    Other,
}

/// What [`Dir::stat`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: EntryKind,
    pub size: u64,
    /// seconds since the epoch
    pub mtime: i64,
}

/// An open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// One path component as a C string; `/`, NUL, empty, `.` and `..` are refused.
fn component(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "'{}' is not a single path component",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether an error from an `O_NOFOLLOW` open means "this is a symlink" (`ELOOP`) or "not a directory".
pub fn is_link_or_not_dir(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
}

impl Dir {
    /// Opens the directory at `path`, following symlinks in `path` itself (the caller chose it).
    pub fn open(path: &Path) -> io::Result<Dir> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: a valid NUL-terminated path; the returned descriptor (if any) is owned by the OwnedFd.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens the subdirectory `name`; a symlink is refused (`ELOOP`/`ENOTDIR`).
    pub fn open_dir(&self, name: &[u8]) -> io::Result<Dir> {
        let c = component(name)?;
        // SAFETY: valid directory descriptor and NUL-terminated component.
        let fd = cvt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Creates the subdirectory `name` with `mode` (before the umask).
    pub fn create_dir(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid directory descriptor and NUL-terminated component.
        cvt(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })
            .map(|_| ())
    }

    /// Opens `name`, creating it as a directory with `mode` when it does not exist.
    pub fn open_or_create_dir(&self, name: &[u8], mode: u32) -> io::Result<Dir> {
        match self.open_dir(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match self.create_dir(name, mode) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                    _ => {}
                }
                self.open_dir(name)
            }
            r => r,
        }
    }

    /// Opens the file `name` with `flags` (`O_NOFOLLOW | O_CLOEXEC` are added) and, when created, `mode`.
    pub fn open_file(&self, name: &[u8], flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = component(name)?;
        // SAFETY: valid directory descriptor and NUL-terminated component; mode is passed as the variadic
        // argument openat expects with O_CREAT.
        let fd = cvt(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Opens the regular file `name` for reading without blocking on a FIFO; anything that is not a regular
    /// file is an `InvalidData` error. Returns the file and its size.
    pub fn open_regular(&self, name: &[u8]) -> io::Result<(File, u64)> {
        let f = self.open_file(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        let m = f.metadata()?;
        if !m.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        Ok((f, m.len()))
    }

    /// What `name` is, without following a symlink; `None` when it does not exist.
    pub fn stat(&self, name: &[u8]) -> io::Result<Option<Stat>> {
        let c = component(name)?;
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, NUL-terminated component and a writable stat buffer.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(Stat {
            kind: match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => EntryKind::File,
                libc::S_IFDIR => EntryKind::Dir,
                libc::S_IFLNK => EntryKind::Symlink,
                _ => EntryKind::Other,
            },
            size: st.st_size as u64,
            mtime: st.st_mtime,
        }))
    }

    /// Removes the file (or symlink: the link itself) `name`.
    pub fn unlink(&self, name: &[u8]) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid directory descriptor and NUL-terminated component.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// Renames `from` in this directory to `to_name` in `to` (replacing a file there atomically).
    pub fn rename(&self, from: &[u8], to: &Dir, to_name: &[u8]) -> io::Result<()> {
        let a = component(from)?;
        let b = component(to_name)?;
        // SAFETY: valid directory descriptors and NUL-terminated components.
        cvt(unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                a.as_ptr(),
                to.fd.as_raw_fd(),
                b.as_ptr(),
            )
        })
        .map(|_| ())
    }

    /// The entries of this directory (without `.` and `..`), with their kinds.
    pub fn entries(&self) -> io::Result<Vec<(Vec<u8>, EntryKind)>> {
        // fdopendir takes ownership of a descriptor: give it a duplicate positioned at the start
        // SAFETY: dup of a valid descriptor.
        let dup = cvt(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `dup` is a valid directory descriptor owned by us; fdopendir takes it over on success.
        let dirp = unsafe { libc::fdopendir(dup) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `dup` is still ours to close.
            unsafe { libc::close(dup) };
            return Err(e);
        }
        // SAFETY: a valid DIR*; the duplicate shares its offset with `self.fd`, so start from the beginning.
        unsafe { libc::rewinddir(dirp) };
        let mut out = Vec::new();
        let res = loop {
            // readdir returns NULL at the end and on error; errno tells them apart
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: a valid DIR* used by this thread only.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error().unwrap_or(0) == 0 {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated; it stays valid until the
            // next readdir on this stream, and the name is copied out before that.
            let (name, d_type) = unsafe {
                (
                    std::ffi::CStr::from_ptr((*ent).d_name.as_ptr())
                        .to_bytes()
                        .to_vec(),
                    (*ent).d_type,
                )
            };
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match d_type {
                libc::DT_REG => EntryKind::File,
                libc::DT_DIR => EntryKind::Dir,
                libc::DT_LNK => EntryKind::Symlink,
                libc::DT_UNKNOWN => match self.stat(&name) {
                    Ok(Some(st)) => st.kind,
                    Ok(None) => continue, // removed meanwhile
                    Err(e) => break Err(e),
                },
                _ => EntryKind::Other,
            };
            out.push((name, kind));
        };
        // SAFETY: closes the stream and the duplicate descriptor it owns.
        unsafe { libc::closedir(dirp) };
        res.map(|()| out)
    }

    /// Makes the directory's entries durable (`fsync`).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: valid descriptor.
        cvt(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(|_| ())
    }

    /// The directory as a `File` (for `fchmod`, `futimens`, `fchown` through std), duplicating the descriptor.
    pub fn to_file(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_symlinks() {
        let base = std::env::temp_dir().join(format!("fl-fsat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("root/sub")).unwrap();
        std::fs::create_dir_all(base.join("victim")).unwrap();
        std::fs::write(base.join("victim/v"), b"victim").unwrap();
        std::os::unix::fs::symlink(base.join("victim"), base.join("root/link")).unwrap();
        std::os::unix::fs::symlink(base.join("victim/v"), base.join("root/flink")).unwrap();
        let root = Dir::open(&base.join("root")).unwrap();
        assert!(is_link_or_not_dir(&root.open_dir(b"link").unwrap_err()));
        assert!(root.open_regular(b"flink").is_err());
        assert!(root.open_dir(b"..").is_err());
        assert!(root.open_dir(b"a/b").is_err());
        let mut kinds = root.entries().unwrap();
        kinds.sort();
        assert_eq!(
            kinds,
            vec![
                (b"flink".to_vec(), EntryKind::Symlink),
                (b"link".to_vec(), EntryKind::Symlink),
                (b"sub".to_vec(), EntryKind::Dir),
            ]
        );
        root.unlink(b"flink").unwrap(); // removes the link, not its target
        assert_eq!(std::fs::read(base.join("victim/v")).unwrap(), b"victim");
        let f = root
            .open_file(b"new", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)
            .unwrap();
        drop(f);
        let sub = root.open_dir(b"sub").unwrap();
        root.rename(b"new", &sub, b"moved").unwrap();
        assert_eq!(sub.stat(b"moved").unwrap().unwrap().kind, EntryKind::File);
        assert_eq!(root.stat(b"new").unwrap(), None);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
