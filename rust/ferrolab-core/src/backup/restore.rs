//! `restore`: files, directories and symlinks of a snapshot into a target directory.
//!
//! Every item lands at `target/<its absolute path without the leading slash>` (as restic does). Paths are
//! checked before anything is written: an item path that is absolute, empty, or has `.`/`..` components is
//! refused even if the repository was crafted to contain one (the one exception: the directory with the empty
//! path, the root of a backup of `/`, which is the target itself and is not written); while writing, a parent
//! that is a symlink is refused (never written through), files are opened with `O_NOFOLLOW`, and symlinks are
//! created last; a snapshot naming one path twice is refused, unless both items are identical (as snapshots of
//! overlapping paths made by older versions list them), when it is restored once. Owners, modes and times are applied through the descriptor of
//! what was written (or without following a symlink), never through a path that could lead elsewhere.
//! Every chunk is authenticated and its id re-checked before it is written, and a file gets its name only
//! once it is complete.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::backup::lock::Lock;
use crate::backup::pack::Id;
use crate::backup::repo::{poll_progress, ProgressFn, ProgressInfo, Repository};
use crate::backup::snapshot::{Item, Kind};
use crate::backup::BResult;
use crate::error::{BackupErrorKind, CoreError};

/// Counts of what was restored.
#[derive(Debug, Default, Clone)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

fn refuse(msg: String) -> CoreError {
    CoreError::backup(BackupErrorKind::Other, msg)
}

/// Checks that an item path is relative and has only normal components.
pub fn check_item_path(p: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(p);
    if p.is_empty() {
        return Err("an empty path".into());
    }
    if p.contains(&0) {
        return Err(format!("'{shown}' contains a NUL byte"));
    }
    if p[0] == b'/' {
        return Err(format!("'{shown}' is absolute"));
    }
    for c in p.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(format!(
                "'{shown}' has a '{}' component that could escape the target",
                String::from_utf8_lossy(c)
            ));
        }
    }
    Ok(())
}

/// Creates the parents of `target/rel` (not the last component), refusing symlinks and non-directories.
/// `checked` holds directories already verified (or created) by this restore, so each is checked once.
fn ensure_parents(target: &Path, rel: &[u8], checked: &mut HashSet<PathBuf>) -> BResult<PathBuf> {
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    let mut cur = target.to_path_buf();
    for c in &parts[..parts.len() - 1] {
        cur.push(OsStr::from_bytes(c));
        if checked.contains(&cur) {
            continue;
        }
        checked.insert(cur.clone());
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(format!(
                    "restore: refusing to write through {}: it is a symlink",
                    cur.display()
                )))
            }
            Ok(_) => {
                return Err(refuse(format!(
                    "restore: {} exists and is not a directory",
                    cur.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&cur).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists
                        && cur.is_dir()
                        && !cur.is_symlink()
                    {
                        Ok(())
                    } else {
                        Err(CoreError::io(
                            format!("restore: create {}", cur.display()),
                            e,
                        ))
                    }
                })?;
            }
            Err(e) => return Err(CoreError::io(format!("restore: stat {}", cur.display()), e)),
        }
    }
    cur.push(OsStr::from_bytes(parts[parts.len() - 1]));
    Ok(cur)
}

fn set_times(path: &Path, mtime_ns: i64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let ts = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: valid NUL-terminated path and a 2-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Owner of a symlink (when root), by path without following it.
fn set_owner(path: &Path, it: &Item) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: valid NUL-terminated path; failure is ignored (best effort, like restic).
        unsafe { libc::lchown(c.as_ptr(), it.uid, it.gid) };
    }
}

/// Selects the items under `include` paths (relative to `/`); None selects all.
pub fn select<'a>(items: &'a [Item], include: Option<&[Vec<u8>]>) -> Vec<&'a Item> {
    let wanted = |it: &Item| match include {
        None => true,
        // an empty include path (`/`) is the whole snapshot
        Some(inc) => inc.iter().any(|p| {
            p.is_empty()
                || it.path == *p
                || (it.path.starts_with(p) && it.path.get(p.len()) == Some(&b'/'))
        }),
    };
    let mut seen: HashMap<&[u8], &Item> = HashMap::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        // the root directory of a backup of `/` (path "") is the target itself
        if it.path.is_empty() && it.kind == Kind::Dir {
            continue;
        }
        if !wanted(it) {
            continue;
        }
        // an item listed twice alike (snapshots of overlapping paths made before those were merged) is restored
        // once; two different items of one path stay, for `check_items` to refuse
        match seen.get(it.path.as_slice()) {
            Some(prev) if **prev == *it => continue,
            Some(_) => {}
            None => {
                seen.insert(&it.path, it);
            }
        }
        out.push(it);
    }
    out
}

/// A temporary name for a file being restored, in the file's own folder (renamed to the file's name once all
/// its data is written and checked).
fn temp_name() -> String {
    let mut b = [0u8; 8];
    crate::backup::crypto::random_bytes(&mut b);
    format!(".fl-{}.tmp", crate::backup::crypto::hex(&b))
}

/// Applies owner (when root), permission bits and times through an open descriptor (never by path, so
/// nothing can redirect them), in that order: chown clears setuid bits, so chmod comes after it.
fn apply_meta(f: &File, it: &Item) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let _ = std::os::unix::fs::fchown(f, Some(it.uid), Some(it.gid)); // best effort, like restic
    }
    f.set_permissions(fs::Permissions::from_mode(it.mode & 0o7777))?;
    let t = if it.mtime_ns >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(it.mtime_ns as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_nanos(it.mtime_ns.unsigned_abs())
    };
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
}

/// What a full restore of a snapshot's items would refuse (for `verify`, which must not pass a snapshot that
/// cannot be restored).
pub fn check_restorable(
    all: &[Item],
    idx: &crate::backup::index::Index,
    snap: &str,
) -> BResult<()> {
    check_items(&select(all, None), idx, snap)
}

/// Checks the items a restore writes (after [`select`]) before anything is written: safe paths, each path once,
/// file sizes that match their chunks.
fn check_items(items: &[&Item], idx: &crate::backup::index::Index, snap: &str) -> BResult<()> {
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(items.len());
    for it in items {
        check_item_path(&it.path)
            .map_err(|m| refuse(format!("restore: refusing item {m} (snapshot {snap})")))?;
        if !seen.insert(&it.path) {
            return Err(crate::backup::repo::corrupt(format!(
                "restore: snapshot {snap} lists {} more than once (a crafted or damaged snapshot)",
                it.display()
            )));
        }
        if it.kind == Kind::File {
            let sum: Option<u64> = it
                .chunks
                .iter()
                .map(|c| idx.get(c).map(|(_, l)| l.raw_len as u64))
                .sum();
            if sum.is_some_and(|n| n != it.size) {
                return Err(crate::backup::repo::corrupt(format!(
                    "restore: snapshot {snap}: {} has {} bytes of chunks but a size of {} bytes",
                    it.display(),
                    sum.unwrap_or(0),
                    it.size
                )));
            }
        } else if !it.chunks.is_empty() {
            return Err(crate::backup::repo::corrupt(format!(
                "restore: snapshot {snap}: {} is not a file but has data",
                it.display()
            )));
        }
    }
    Ok(())
}

/// The item paths (relative to '/', no trailing slash) of the absolute original paths `paths` that a restore
/// includes.
pub fn include_items(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    let item = |p: &PathBuf| {
        let b = p.as_os_str().as_bytes();
        let b = b.strip_prefix(b"/").unwrap_or(b);
        b.strip_suffix(b"/").unwrap_or(b).to_vec()
    };
    paths.iter().map(item).collect()
}

/// (item, first chunk, end chunk, offset in the file): the chunks of one file that one unit restores.
type Segment = (usize, usize, usize, u64);

/// The units of a restore's data: a segment is `(item, first chunk, end chunk, offset)` of one file in one unit; a
/// unit is consecutive segments, of one or several files, that ends where a pack ends once it holds
/// [`Units::MIN`] bytes, or at `max` bytes. A data thread reads a unit's chunks in one go, one ranged read per
/// pack, so a full restore reads each pack in one request, as restic does. (Units of 8 MiB cut across packs: the
/// 1 GB benchmark data set took 256 GET requests against restic's 62, and SeaweedFS spent 0.8 s more CPU serving
/// them.)
struct Units {
    /// bytes from which a unit ends whatever the pack: [`Units::MAX`], or less in a small restore, so that every
    /// data thread gets about two units
    max: u64,
    segs: Vec<Segment>,
    units: Vec<std::ops::Range<usize>>,
    /// first segment and raw bytes of the open unit
    start: usize,
    bytes: u64,
    last_pack: Option<Id>,
    /// first chunk, offset in the file and raw bytes of the open segment (of the file being added)
    first: usize,
    off: u64,
    seg: u64,
}

impl Units {
    const MIN: u64 = 4 << 20;
    const MAX: u64 = 64 << 20;

    /// Units for a restore of `total` bytes by `threads` data threads.
    fn new(total: u64, threads: usize) -> Units {
        Units {
            max: (total / (2 * threads.max(1) as u64)).clamp(Self::MIN, Self::MAX),
            segs: Vec::new(),
            units: Vec::new(),
            start: 0,
            bytes: 0,
            last_pack: None,
            first: 0,
            off: 0,
            seg: 0,
        }
    }

    /// Adds the data of file `item`, its chunks given as (pack, raw length); returns its number of segments.
    fn add_file(&mut self, item: usize, chunks: impl Iterator<Item = (Option<Id>, u64)>) -> usize {
        let before = self.segs.len();
        (self.first, self.off, self.seg) = (0, 0, 0);
        let mut n = 0;
        for (c, (pack, len)) in chunks.enumerate() {
            if pack != self.last_pack && self.bytes + self.seg >= Self::MIN {
                self.cut(item, c);
                self.close();
            }
            self.last_pack = pack;
            self.seg += len;
            n = c + 1;
            if self.bytes + self.seg >= self.max {
                self.cut(item, n);
                self.close();
            }
        }
        self.cut(item, n);
        self.segs.len() - before
    }

    /// Ends the open segment of `item` before chunk `end` (nothing when it is empty).
    fn cut(&mut self, item: usize, end: usize) {
        if end > self.first {
            self.segs.push((item, self.first, end, self.off));
            self.bytes += self.seg;
            (self.first, self.off, self.seg) = (end, self.off + self.seg, 0);
        }
    }

    /// Ends the open unit (nothing when it is empty).
    fn close(&mut self) {
        if self.segs.len() > self.start {
            self.units.push(self.start..self.segs.len());
            (self.start, self.bytes) = (self.segs.len(), 0);
        }
    }

    fn finish(mut self) -> (Vec<Segment>, Vec<std::ops::Range<usize>>) {
        self.close();
        (self.segs, self.units)
    }
}

/// An order of the units (given by the file each one starts with) in which runs of consecutive units of one
/// file are interleaved, `k` runs at a time: a file's units stay in order, files start in order, and `k` threads
/// taking units in this order mostly write `k` different files. (ext4 serializes buffered writes to one file on
/// its inode lock, and threads waiting for it spin: a 100 MiB file cut into 8 MiB units had all data threads
/// writing it at once, and 8.7% of the restore's CPU samples were that spinning.)
fn interleave_runs(first_file: &[usize], k: usize) -> Vec<usize> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (u, &f) in first_file.iter().enumerate() {
        match runs.last_mut() {
            Some(r) if first_file[r.start] == f => r.end = u + 1,
            _ => runs.push(u..u + 1),
        }
    }
    let mut pending = runs.into_iter();
    let mut active: Vec<std::ops::Range<usize>> = pending.by_ref().take(k.max(1)).collect();
    let mut order = Vec::with_capacity(first_file.len());
    while !active.is_empty() {
        // one unit of each active run; a finished run's place goes to the next run
        for r in active.iter_mut() {
            order.extend(r.next());
            if std::ops::Range::is_empty(r) {
                *r = pending.next().unwrap_or_default();
            }
        }
        active.retain(|r| !r.is_empty());
    }
    order
}

/// Refuses to put a file or symlink at `dest` where the target has a directory (it is never replaced).
fn no_dir_at(dest: &Path) -> BResult<()> {
    if fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_dir()) {
        return Err(refuse(format!(
            "restore: {} exists and is a directory",
            dest.display()
        )));
    }
    Ok(())
}

/// Restores snapshot `snapshot_id` into `target`.
///
/// Each file is written under a temporary name in its folder, gets its owner, mode and times through its
/// descriptor, and is renamed to its name only when all its data was written and checked: a failed,
/// cancelled or killed restore leaves no file that looks complete (temporary files are removed on failure;
/// a killed process leaves `.fl-*.tmp` files).
pub fn restore(
    repo: &Repository,
    snapshot_id: &str,
    target: &Path,
    include: Option<&[Vec<u8>]>,
    progress: Option<ProgressFn<'_>>,
) -> BResult<RestoreStats> {
    let _lock = Lock::acquire(repo.store.clone(), repo.key.clone(), false)?;
    let snap = repo.load_snapshot(snapshot_id)?;
    let (idx, _, _) = repo.load_index()?;
    let all = repo.load_items(&snap, &idx)?;
    let items = select(&all, include);
    if let Some(inc) = include {
        // "/" (the empty path) is the whole snapshot, even one that holds only its root directory
        if items.is_empty() && !inc.iter().any(|p| p.is_empty()) {
            let shown: Vec<String> = inc
                .iter()
                .map(|p| format!("/{}", String::from_utf8_lossy(p)))
                .collect();
            return Err(CoreError::value(
                "restore",
                "include",
                format!(
                    "matches nothing in snapshot {}: {}",
                    &snap.id[..8],
                    shown.join(", ")
                ),
            ));
        }
    }
    check_items(&items, &idx, &snap.id)?;
    fs::create_dir_all(target)
        .map_err(|e| CoreError::io(format!("restore: create {}", target.display()), e))?;
    let target = target
        .canonicalize()
        .map_err(|e| CoreError::io(format!("restore: target {}", target.display()), e))?;

    let mut stats = RestoreStats::default();
    // 1. directories; 2. temporary files (folder threads) and their data (data threads) at once, each file
    // renamed into place when complete; 3. symlinks; 4. directory and symlink metadata, deepest first
    // twice the cores: half of a restore is waiting on the file system (creating and writing files)
    let nthreads = std::env::var("FERROLAB_RESTORE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 16);
    let total_bytes: u64 = items
        .iter()
        .filter(|it| it.kind == Kind::File)
        .map(|it| it.size)
        .sum();
    let mut plan = Units::new(total_bytes, nthreads);
    let mut dests: Vec<PathBuf> = Vec::with_capacity(items.len());
    let mut temps: Vec<PathBuf> = vec![PathBuf::new(); items.len()];
    let remaining: Vec<AtomicUsize> = (0..items.len()).map(|_| AtomicUsize::new(0)).collect();
    let mut checked: HashSet<PathBuf> = HashSet::new();
    let mut to_create: Vec<usize> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let dest = ensure_parents(&target, &it.path, &mut checked)?;
        match it.kind {
            Kind::Dir => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => {
                        return Err(refuse(format!(
                            "restore: {} exists and is not a directory",
                            dest.display()
                        )))
                    }
                    Err(_) => fs::create_dir(&dest).map_err(|e| {
                        CoreError::io(format!("restore: create {}", dest.display()), e)
                    })?,
                }
                stats.dirs += 1;
            }
            Kind::File => {
                no_dir_at(&dest)?;
                to_create.push(i);
                temps[i] = dest.with_file_name(temp_name());
                let n = plan.add_file(
                    i,
                    it.chunks.iter().map(|id| {
                        idx.get(id)
                            .map_or((None, 0), |(p, l)| (Some(p), l.raw_len as u64))
                    }),
                );
                remaining[i].store(n, Ordering::Relaxed);
                stats.files += 1;
            }
            Kind::Symlink => {
                // refused now, before any file is written (the symlinks themselves come last)
                no_dir_at(&dest)?;
                stats.symlinks += 1
            }
        }
        dests.push(dest);
    }
    let (segs, units) = plan.finish();

    // a file is complete: metadata through its descriptor, then its temporary name becomes its name
    let finish = |i: usize, f: &File| -> BResult<()> {
        apply_meta(f, items[i]).map_err(|e| {
            CoreError::io(
                format!("restore: set metadata of {}", dests[i].display()),
                e,
            )
        })
    };
    let renamed: Vec<AtomicBool> = (0..items.len()).map(|_| AtomicBool::new(false)).collect();
    let name = |i: usize| -> BResult<()> {
        fs::rename(&temps[i], &dests[i]).map_err(|e| {
            CoreError::io(format!("restore: rename into {}", dests[i].display()), e)
        })?;
        renamed[i].store(true, Ordering::SeqCst);
        Ok(())
    };
    let created: Vec<AtomicBool> = (0..items.len()).map(|_| AtomicBool::new(false)).collect();
    let cleanup = || {
        for &i in &to_create {
            if created[i].load(Ordering::SeqCst) && !renamed[i].load(Ordering::SeqCst) {
                let _ = fs::remove_file(&temps[i]);
            }
        }
    };

    // Folder threads create the temporary files, in order, and rename the complete ones into place, while the
    // data threads fill the files already created (a data thread that gets ahead of them waits). Each folder
    // belongs to one folder thread. Changes to a folder are serialized by the kernel (the folder's lock), and on
    // ext4 creating a file soon after many were deleted costs up to ~1 ms of CPU (its allocator skips recently
    // freed inodes): threads creating and renaming in one folder spun on its lock, and creation as a phase
    // before the data took as long as the data. Files without data are complete at once.
    let nfolder = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let owner: Vec<usize> = dests
        .iter()
        .map(|d| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            d.parent().hash(&mut h);
            (h.finish() % nfolder as u64) as usize
        })
        .collect();
    let ready: Vec<AtomicBool> = (0..items.len()).map(|_| AtomicBool::new(false)).collect();
    let waiting = AtomicBool::new(false);
    let gate = (Mutex::new(()), Condvar::new());
    // the order the data threads take the units in: neighbouring units of one large file spread apart, so that
    // threads writing at the same time mostly write different files
    let order = interleave_runs(
        &units.iter().map(|u| segs[u.start].0).collect::<Vec<_>>(),
        nthreads,
    );
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let err: Mutex<Option<CoreError>> = Mutex::new(None);
    let fail = |e: CoreError| {
        abort.store(true, Ordering::SeqCst);
        err.lock().unwrap().get_or_insert(e);
        let _g = gate.0.lock().unwrap();
        gate.1.notify_all();
    };
    let create = |i: usize| -> BResult<()> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temps[i])
            .map_err(|e| CoreError::io(format!("restore: create {}", dests[i].display()), e))?;
        created[i].store(true, Ordering::SeqCst);
        if items[i].chunks.is_empty() {
            finish(i, &f)?;
            drop(f);
            name(i)
        } else {
            f.set_len(items[i].size)
                .map_err(|e| CoreError::io(format!("restore: create {}", dests[i].display()), e))
        }
    };
    // waits until file `i` exists; false when the restore is failing
    let wait_ready = |i: usize| -> bool {
        while !ready[i].load(Ordering::Acquire) {
            if abort.load(Ordering::Relaxed) {
                return false;
            }
            let g = gate.0.lock().unwrap();
            waiting.store(true, Ordering::SeqCst);
            if ready[i].load(Ordering::Acquire) {
                break;
            }
            // the timeout only bounds a missed wake-up
            drop(
                gate.1
                    .wait_timeout(g, std::time::Duration::from_millis(5))
                    .unwrap(),
            );
        }
        !abort.load(Ordering::Relaxed)
    };
    // complete files, to the folder thread that names them
    let (complete_tx, complete_rx): (Vec<_>, Vec<_>) = (0..nfolder)
        .map(|_| {
            let (tx, rx) = std::sync::mpsc::channel::<usize>();
            (tx, Mutex::new(rx)) // each receiver is used by its folder thread only
        })
        .unzip();
    std::thread::scope(|s| {
        for t in 0..nfolder {
            let (items, to_create, owner, ready, complete_rx) =
                (&items, &to_create, &owner, &ready, &complete_rx);
            let (abort, waiting, gate, create, name, fail) =
                (&abort, &waiting, &gate, &create, &name, &fail);
            s.spawn(move || {
                let rx = complete_rx[t].lock().unwrap();
                let mine = to_create.iter().filter(|&&i| owner[i] == t);
                let with_data = mine
                    .clone()
                    .filter(|&&i| !items[i].chunks.is_empty())
                    .count();
                let mut named = 0usize;
                let run = || -> BResult<()> {
                    for &i in mine {
                        if abort.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        create(i)?;
                        ready[i].store(true, Ordering::Release);
                        if waiting.load(Ordering::SeqCst) {
                            let _g = gate.0.lock().unwrap();
                            gate.1.notify_all();
                        }
                        while let Ok(j) = rx.try_recv() {
                            name(j)?;
                            named += 1;
                        }
                    }
                    // then the files the data threads complete
                    while named < with_data && !abort.load(Ordering::Relaxed) {
                        if let Ok(j) = rx.recv_timeout(std::time::Duration::from_millis(10)) {
                            name(j)?;
                            named += 1;
                        }
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    fail(e);
                }
            });
        }
        for _ in 0..nthreads {
            s.spawn(|| {
                let mut dctx = match zstd::bulk::Decompressor::new() {
                    Ok(d) => d,
                    Err(e) => return fail(CoreError::io("restore: zstd context".to_string(), e)),
                };
                loop {
                    let u = next.fetch_add(1, Ordering::Relaxed);
                    if u >= units.len() || abort.load(Ordering::Relaxed) {
                        return;
                    }
                    let unit = &segs[units[order[u]].clone()];
                    let ids: Vec<Id> = unit
                        .iter()
                        .flat_map(|&(i, a, b, _)| items[i].chunks[a..b].iter().copied())
                        .collect();
                    let k = std::cell::Cell::new(0usize); // the segment being written
                    let what = || {
                        let it = items[unit[k.get()].0];
                        format!("file {} (snapshot {})", it.display(), &snap.id[..8])
                    };
                    let open = |i: usize| -> BResult<File> {
                        if !wait_ready(i) {
                            // failing: the first error is the one recorded
                            return Err(crate::backup::repo::cancelled("restore"));
                        }
                        OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&temps[i])
                            .map_err(|e| {
                                CoreError::io(format!("restore: open {}", dests[i].display()), e)
                            })
                    };
                    let r: BResult<()> = {
                        let mut file: Option<File> = None;
                        let (mut off, mut left) = (unit[0].3, unit[0].2 - unit[0].1);
                        repo.read_blobs(&idx, &ids, &mut dctx, &what, |data| {
                            let i = unit[k.get()].0;
                            if file.is_none() {
                                file = Some(open(i)?);
                            }
                            let f = file.as_ref().expect("opened above");
                            f.write_all_at(&data, off).map_err(|e| {
                                CoreError::io(format!("restore: write {}", dests[i].display()), e)
                            })?;
                            off += data.len() as u64;
                            done.fetch_add(data.len() as u64, Ordering::Relaxed);
                            left -= 1;
                            if left == 0 {
                                // the last segment of a file to finish completes it (its folder thread
                                // names it)
                                let f = file.take().expect("opened above");
                                if remaining[i].fetch_sub(1, Ordering::AcqRel) == 1 {
                                    finish(i, &f)?;
                                    drop(f);
                                    let _ = complete_tx[owner[i]].send(i);
                                }
                                k.set(k.get() + 1);
                                if let Some(&(_, a, b, o)) = unit.get(k.get()) {
                                    (off, left) = (o, b - a);
                                }
                            }
                            Ok(())
                        })
                    };
                    if let Err(e) = r {
                        return fail(e);
                    }
                }
            });
        }
        if let Some(p) = progress {
            let go_on = poll_progress(
                p,
                || next.load(Ordering::Relaxed) < units.len() && !abort.load(Ordering::Relaxed),
                || ProgressInfo {
                    phase: "restore",
                    done_bytes: done.load(Ordering::Relaxed),
                    total_bytes,
                    done_files: 0,
                    total_files: stats.files,
                },
            );
            if !go_on {
                fail(crate::backup::repo::cancelled("restore"));
            }
        }
    });
    if let Some(e) = err.into_inner().unwrap() {
        cleanup();
        return Err(e);
    }
    stats.bytes = done.load(Ordering::Relaxed);

    // symlinks, then metadata of directories and symlinks (deepest first so directory mtimes stick)
    for (i, it) in items.iter().enumerate() {
        if it.kind == Kind::Symlink {
            let dest = ensure_parents(&target, &it.path, &mut checked)?;
            no_dir_at(&dest)?; // (checked before the data too; again in case one appeared since)
            match fs::remove_file(&dest) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    let what = format!("restore: replace {}", dest.display());
                    return Err(CoreError::io(what, e));
                }
                _ => {}
            }
            std::os::unix::fs::symlink(OsStr::from_bytes(&it.target), &dest)
                .map_err(|e| CoreError::io(format!("restore: symlink {}", dest.display()), e))?;
            dests[i] = dest;
        }
    }
    for (i, it) in items.iter().enumerate().rev() {
        let dest = &dests[i];
        match it.kind {
            Kind::File => {}
            Kind::Dir => {
                let d = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                    .open(dest)
                    .and_then(|d| apply_meta(&d, it));
                d.map_err(|e| {
                    CoreError::io(format!("restore: set metadata of {}", dest.display()), e)
                })?;
            }
            Kind::Symlink => {
                set_owner(dest, it);
                set_times(dest, it.mtime_ns).map_err(|e| {
                    CoreError::io(format!("restore: set times of {}", dest.display()), e)
                })?;
            }
        }
    }
    if let Some(p) = progress {
        let _ = p(&ProgressInfo {
            phase: "restore",
            done_bytes: stats.bytes,
            total_bytes,
            done_files: stats.files,
            total_files: stats.files,
        });
    }
    tracing::info!(
        target: "ferrolab.backup",
        repository = %repo.store.url(),
        snapshot = %snap.id,
        target_dir = %target.display(),
        files = stats.files,
        bytes = stats.bytes,
        "restore finished"
    );
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::{check_item_path, include_items, interleave_runs, Units};
    use crate::backup::pack::Id;
    use std::path::PathBuf;

    #[test]
    fn units_end_with_packs_and_cover_every_chunk_once() {
        const MIB: u64 = 1 << 20;
        let pack = |n: u8| Some([n; 32] as Id);
        // file 0: 3 chunks in pack 1, then 2 in pack 2; file 1: one chunk in pack 2, then 3 in pack 3;
        // file 2: no data; file 3: 70 chunks of 1 MiB in pack 4 (more than Units::MAX); file 4: a chunk in pack
        // 5 and one in pack 6
        let files: Vec<Vec<(Option<Id>, u64)>> = vec![
            vec![
                (pack(1), 2 * MIB),
                (pack(1), 2 * MIB),
                (pack(1), MIB),
                (pack(2), MIB),
                (pack(2), MIB),
            ],
            vec![
                (pack(2), 2 * MIB),
                (pack(3), 3 * MIB),
                (pack(3), MIB),
                (pack(3), MIB),
            ],
            vec![],
            vec![(pack(4), MIB); 70],
            vec![(pack(5), MIB), (pack(6), MIB)],
        ];
        let mut plan = Units::new(u64::MAX, 1); // units of at most Units::MAX
        let counts: Vec<usize> = files
            .iter()
            .enumerate()
            .map(|(i, c)| plan.add_file(i, c.iter().copied()))
            .collect();
        let (segs, units) = plan.finish();
        // a pack begins a unit where the unit before holds Units::MIN (4 MiB); pack 4 is cut at Units::MAX
        // (64 MiB); pack 6 follows 1 MiB of pack 5 in its unit
        let unit_chunks: Vec<Vec<(usize, usize, usize)>> = units
            .iter()
            .map(|u| {
                segs[u.clone()]
                    .iter()
                    .map(|&(i, a, b, _)| (i, a, b))
                    .collect()
            })
            .collect();
        assert_eq!(
            unit_chunks,
            vec![
                vec![(0, 0, 3)],
                vec![(0, 3, 5), (1, 0, 1)],
                vec![(1, 1, 4)],
                vec![(3, 0, 64)],
                vec![(3, 64, 70)],
                vec![(4, 0, 2)],
            ]
        );
        assert_eq!(counts, vec![2, 2, 0, 2, 1]);
        // each file's segments follow one another, at the offsets of their first chunks
        for (i, f) in files.iter().enumerate() {
            let mine: Vec<_> = segs.iter().filter(|s| s.0 == i).collect();
            let (mut next, mut off) = (0, 0);
            for &&(_, a, b, o) in &mine {
                assert_eq!((a, o), (next, off), "file {i}");
                off += f[a..b].iter().map(|c| c.1).sum::<u64>();
                next = b;
            }
            assert_eq!(next, f.len(), "file {i}");
        }
        // units are consecutive and non-empty
        assert!(units.iter().all(|u| !u.is_empty()));
        assert!(units.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(units.last().map(|u| u.end), Some(segs.len()));

        // a small restore: 40 MiB in one pack, 4 threads: units of 5 MiB, two per thread
        let mut plan = Units::new(40 * MIB, 4);
        assert_eq!(plan.add_file(0, std::iter::repeat_n((pack(1), MIB), 40)), 8);
        let (segs, units) = plan.finish();
        assert_eq!(units.len(), 8);
        assert!(segs.iter().all(|s| s.2 - s.1 == 5));
    }

    #[test]
    fn interleave_runs_spreads_one_file_and_keeps_every_unit() {
        // units of files: 0 (4 units), 1, 2, 3 (3 units), 4
        let first = [0, 0, 0, 0, 1, 2, 3, 3, 3, 4];
        let order = interleave_runs(&first, 2);
        assert_eq!(order, vec![0, 4, 1, 5, 2, 6, 3, 7, 9, 8]);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..first.len()).collect::<Vec<_>>());
        // one thread: the original order
        assert_eq!(
            interleave_runs(&first, 1),
            (0..first.len()).collect::<Vec<_>>()
        );
        assert!(interleave_runs(&[], 4).is_empty());
        // each file's units stay in order
        for k in 1..6 {
            let order = interleave_runs(&first, k);
            for f in 0..5 {
                let of: Vec<usize> = order.iter().copied().filter(|&u| first[u] == f).collect();
                assert!(of.windows(2).all(|w| w[0] < w[1]), "k={k} file {f}: {of:?}");
            }
        }
    }

    #[test]
    fn include_items_are_relative_to_the_root() {
        let p = |s: &str| PathBuf::from(s);
        let items = include_items(&[p("/data/a/"), p("/x"), p("rel/b")]);
        assert_eq!(
            items,
            vec![b"data/a".to_vec(), b"x".to_vec(), b"rel/b".to_vec()]
        );
    }

    #[test]
    fn item_paths() {
        assert!(check_item_path(b"a/b").is_ok());
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"a/../../x",
            b"..",
            b"a//b",
            b"a/./b",
            b"a/b/",
            b"a\0b",
        ] {
            assert!(
                check_item_path(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
