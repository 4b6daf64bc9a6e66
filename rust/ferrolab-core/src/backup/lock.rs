//! Repository locks: `locks/<random id>` objects (sealed JSON).
//!
//! Backups, restores and verifies take shared locks, which never block each other; prune takes an
//! exclusive lock. A lock is stale (removed by the next locker) when its process is gone from this host or
//! it was not refreshed for [`STALE_AFTER`]; holders refresh their lock every [`REFRESH_EVERY`]. Taking a
//! lock writes it first and then lists the others, so two conflicting lockers cannot both succeed.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backup::crypto::{random_id, MasterKey};
use crate::backup::store::Store;
use crate::backup::BResult;
use crate::error::{BackupErrorKind, CoreError};

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub exclusive: bool,
    pub hostname: String,
    pub pid: u32,
    /// seconds since the epoch when the lock was written (refreshed)
    pub time: f64,
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success (we also bound it).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl LockInfo {
    pub fn is_stale(&self, host: &str) -> bool {
        (self.hostname == host && !pid_alive(self.pid))
            || now() - self.time > STALE_AFTER.as_secs_f64()
    }
}

/// A held lock; released (deleted) on drop.
///
/// A keeper thread rewrites it with a fresh time every [`REFRESH_EVERY`] for as long as it is held, whatever the
/// holder is doing (walking a tree, loading the index, pruning, restoring, verifying): a lock held for longer than
/// [`STALE_AFTER`] is never taken for stale while its holder runs.
pub struct Lock {
    store: Arc<dyn Store>,
    name: String,
    keeper: Option<Keeper>,
}

/// The refreshing thread of a [`Lock`] and its stop signal.
struct Keeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    state: Arc<Mutex<Refresh>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// When the lock was last written (monotonic and wall-clock time: other hosts judge staleness by the wall clock,
/// which keeps running while this machine is suspended), the last refresh error (cleared by a successful refresh),
/// and whether another process removed the lock (it is then never written again).
struct Refresh {
    written: Instant,
    written_wall: f64,
    error: Option<String>,
    removed: bool,
}

fn decode(key: &MasterKey, name: &str, data: &[u8]) -> Option<LockInfo> {
    let plain = key.open_object("lock", name, data).ok()?;
    serde_json::from_slice(&plain).ok()
}

fn write_lock(store: &dyn Store, key: &MasterKey, name: &str, info: &LockInfo) -> BResult<()> {
    store.put(
        &format!("locks/{name}"),
        &key.seal_object("lock", name, &serde_json::to_vec(info).expect("json")),
    )
}

impl Lock {
    /// Takes a shared or exclusive lock, removing stale locks on the way.
    pub fn acquire(store: Arc<dyn Store>, key: Arc<MasterKey>, exclusive: bool) -> BResult<Lock> {
        Lock::acquire_refreshing(store, key, exclusive, REFRESH_EVERY)
    }

    /// [`Lock::acquire`], refreshed every `every`.
    pub fn acquire_refreshing(
        store: Arc<dyn Store>,
        key: Arc<MasterKey>,
        exclusive: bool,
        every: Duration,
    ) -> BResult<Lock> {
        let host = hostname();
        let info = LockInfo {
            exclusive,
            hostname: host.clone(),
            pid: std::process::id(),
            time: now(),
        };
        let name = random_id();
        write_lock(&*store, &key, &name, &info)?;
        let mut lock = Lock {
            store: store.clone(),
            name: name.clone(),
            keeper: None,
        };
        for e in store.list("locks")? {
            if e.name == name {
                continue;
            }
            let Ok(data) = store.get(&format!("locks/{}", e.name)) else {
                continue; // released meanwhile
            };
            let Some(other) = decode(&key, &e.name, &data) else {
                continue; // not ours to judge (another key) or damaged: ignored
            };
            if other.is_stale(&host) {
                if store.delete(&format!("locks/{}", e.name)).is_ok() {
                    tracing::warn!(
                        target: "ferrolab.backup",
                        repository = %store.url(),
                        lock = %e.name,
                        pid = other.pid,
                        host = %other.hostname,
                        age_seconds = now() - other.time,
                        "took over a stale lock"
                    );
                }
                continue;
            }
            if exclusive || other.exclusive {
                let age = now() - other.time;
                return Err(CoreError::backup(
                    BackupErrorKind::Locked,
                    format!(
                        "repository {} is locked{} by pid {} on host {} (lock {}, written {:.0} s ago)",
                        store.url(),
                        if other.exclusive { " exclusively" } else { "" },
                        other.pid,
                        other.hostname,
                        &e.name[..12.min(e.name.len())],
                        age
                    ),
                ));
                // `lock` is dropped here, deleting our own lock object
            }
        }
        lock.keeper = Some(Keeper::start(store, key, name, info, every)?);
        Ok(lock)
    }

    /// An error when the lock may be lost: another process removed it, or it could not be refreshed for so long
    /// (by this process's clock or by the wall clock) that another process may take it for stale. Cheap (no store
    /// access): a backup calls it as it goes.
    pub fn check(&self) -> BResult<()> {
        let Some(k) = &self.keeper else {
            return Ok(());
        };
        let st = k.state.lock().unwrap_or_else(|e| e.into_inner());
        let lost = |why: String| {
            Err(CoreError::backup(
                BackupErrorKind::Locked,
                format!("lost the lock on repository {}: {why}", self.store.url()),
            ))
        };
        if st.removed {
            return lost("another process removed it (took it for stale)".into());
        }
        // a margin of one refresh interval before others may call it stale
        let age = st
            .written
            .elapsed()
            .as_secs_f64()
            .max(now() - st.written_wall);
        if age + REFRESH_EVERY.as_secs_f64() >= STALE_AFTER.as_secs_f64() {
            return lost(format!(
                "it could not be refreshed for {age:.0} s ({})",
                st.error.as_deref().unwrap_or("no error recorded")
            ));
        }
        Ok(())
    }

    /// [`Lock::check`], and the lock object still in the store (what prune confirms before it deletes anything).
    pub fn confirm(&self) -> BResult<()> {
        self.check()?;
        if self.keeper.is_some() && !self.store.exists(&format!("locks/{}", self.name))? {
            if let Some(k) = &self.keeper {
                k.state.lock().unwrap_or_else(|e| e.into_inner()).removed = true;
            }
            return self.check();
        }
        Ok(())
    }
}

impl Keeper {
    fn start(
        store: Arc<dyn Store>,
        key: Arc<MasterKey>,
        name: String,
        mut info: LockInfo,
        every: Duration,
    ) -> BResult<Keeper> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let state = Arc::new(Mutex::new(Refresh {
            written: Instant::now(),
            written_wall: info.time,
            error: None,
            removed: false,
        }));
        let (stop2, state2) = (stop.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name("ferrolab-lock".into())
            .spawn(move || {
                let (flag, cv) = &*stop2;
                let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let (g, _) = cv
                        .wait_timeout_while(stopped, every, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner());
                    stopped = g;
                    if *stopped {
                        return;
                    }
                    // a lock another process removed (as stale) is lost: writing it again would hide that
                    if let Ok(false) = store.exists(&format!("locks/{name}")) {
                        tracing::warn!(
                            target: "ferrolab.backup",
                            repository = %store.url(),
                            lock = %name,
                            "the repository lock was removed by another process"
                        );
                        state2.lock().unwrap_or_else(|e| e.into_inner()).removed = true;
                        return;
                    }
                    info.time = now();
                    let r = write_lock(&*store, &key, &name, &info);
                    let mut st = state2.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(()) => {
                            st.written = Instant::now();
                            st.written_wall = info.time;
                            st.error = None;
                        }
                        Err(e) => {
                            tracing::warn!(
                                target: "ferrolab.backup",
                                repository = %store.url(),
                                lock = %name,
                                error = %e,
                                "could not refresh the repository lock (retrying)"
                            );
                            st.error = Some(e.to_string());
                        }
                    }
                }
            })
            .map_err(|e| CoreError::io("lock: start the refresh thread", e))?;
        Ok(Keeper {
            stop,
            state,
            thread: Some(thread),
        })
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // stop refreshing first, so that no refresh rewrites the lock after its deletion
        self.keeper.take();
        let _ = self.store.delete(&format!("locks/{}", self.name));
    }
}

/// Removes stale locks; returns how many.
pub fn remove_stale(store: &dyn Store, key: &MasterKey) -> BResult<usize> {
    let host = hostname();
    let mut n = 0;
    for e in store.list("locks")? {
        let Ok(data) = store.get(&format!("locks/{}", e.name)) else {
            continue;
        };
        if decode(key, &e.name, &data).is_some_and(|l| l.is_stale(&host)) {
            store.delete(&format!("locks/{}", e.name))?;
            tracing::warn!(target: "ferrolab.backup", repository = %store.url(), lock = %e.name, "removed a stale lock");
            n += 1;
        }
    }
    Ok(n)
}
