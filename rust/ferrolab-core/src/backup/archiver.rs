//! `backup`: walk the paths, chunk what changed, store new blobs in packs, write the snapshot last.
//!
//! Pipeline (bounded channels, so memory is bounded by the index, not by the data):
//! reader thread (files → content-defined chunks) → workers (keyed hash, dedup, shuffle+zstd, seal) →
//! packer (16 MiB packs) → writer (atomic put of each pack, then an index object every few packs).
//! The snapshot is written after every pack and index it needs is durable, so a process killed at any
//! moment leaves earlier snapshots intact; packs written by a killed run are picked up from their headers
//! by the next run (no data is stored twice) and removed by `prune` if nothing uses them.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backup::chunker::{choose_filter, Chunker, Encoder, Filter, DATA_CHUNKS, TREE_CHUNKS};
use crate::backup::crypto::random_id;
use crate::backup::index::{self, Index};
use crate::backup::lock::{hostname, now, Lock};
use crate::backup::pack::{pack_key, BlobType, FinishedPack, Id, PackBuilder, PackedBlob};
use crate::backup::repo::{ProgressFn, ProgressInfo, Repository};
use crate::backup::snapshot::{encode_items, Item, Kind, Snapshot};
use crate::backup::BResult;
use crate::error::CoreError;

/// Target size of a pack.
pub const PACK_SIZE: usize = 16 * 1024 * 1024;
/// An index object is written after this many packs (and at the end).
const INDEX_EVERY: usize = 8;
/// The reader hands chunks to the workers in batches of about this many bytes (or [`BATCH_PIECES`] chunks),
/// and each worker passes on its results and sealed blobs a batch at a time: with tens of thousands of small
/// files, one channel message per file made waking threads cost as much as compressing the data.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_PIECES: usize = 64;
/// The packer puts the workers' batches into packs in the reader's order (so a file's chunks lie in file
/// order, and a restore reads them with few, long ranged reads); it holds at most this many batches that
/// arrived early, and past that lets them through out of order.
const REORDER_MAX: usize = 64;

/// Sealed blobs for the packer: data blobs of the reader's batch number `Some(n)` (possibly none), or tree
/// blobs (`None`, after all data).
type SealedBatch = (Option<u64>, Vec<Sealed>);

/// What to back up.
pub struct BackupOptions<'a> {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub exclude: Vec<String>,
    pub host: Option<String>,
    pub time: Option<f64>,
    pub progress: Option<ProgressFn<'a>>,
}

/// A chunk of a file, for a worker; workers take them in batches (`Vec<Job>`).
struct Job {
    item: u32,
    seq: u32,
    offset: u64,
    data: Vec<u8>,
    filter: Filter,
}

enum Res {
    Chunk {
        item: u32,
        seq: u32,
        id: Id,
        raw: u64,
    },
    FileDone {
        item: u32,
        chunks: u32,
        bytes: u64,
    },
    FileFailed {
        item: u32,
        msg: String,
    },
}

struct Sealed {
    ty: BlobType,
    id: Id,
    data: Vec<u8>,
    raw_len: u32,
}

/// Shell-style pattern match: `*` and `?` do not match `/`, `**` matches anything, `[...]` a class.
///
/// Backtracking over the stars, with every (pattern, text) position that failed remembered: at most
/// `pattern.len() * (text.len() + 1)` positions are tried, where plain backtracking is exponential in the number
/// of stars (`*a*a*a*a*a*b` against a long name of `a`s took seconds).
pub fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    struct M<'a> {
        p: &'a [u8],
        t: &'a [u8],
        failed: Vec<bool>,
    }
    impl M<'_> {
        fn at(&mut self, pi: usize, ti: usize) -> bool {
            // no table (fewer than two stars: plain backtracking is already polynomial) or the end of the pattern
            let memo = !self.failed.is_empty() && pi < self.p.len();
            let slot = pi * (self.t.len() + 1) + ti;
            if memo && self.failed[slot] {
                return false;
            }
            let r = self.step(pi, ti);
            if !r && memo {
                self.failed[slot] = true;
            }
            r
        }

        fn step(&mut self, pi: usize, ti: usize) -> bool {
            let (p, t) = (self.p, self.t);
            if pi == p.len() {
                return ti == t.len();
            }
            match p[pi] {
                b'*' if p.get(pi + 1) == Some(&b'*') => (ti..=t.len()).any(|i| self.at(pi + 2, i)),
                b'*' => {
                    for i in ti..=t.len() {
                        if self.at(pi + 1, i) {
                            return true;
                        }
                        if i < t.len() && t[i] == b'/' {
                            break;
                        }
                    }
                    false
                }
                b'?' => ti < t.len() && t[ti] != b'/' && self.at(pi + 1, ti + 1),
                b'[' => {
                    let Some(close) = p[pi + 1..]
                        .iter()
                        .position(|&c| c == b']')
                        .map(|i| pi + 1 + i)
                    else {
                        return ti < t.len() && t[ti] == b'[' && self.at(pi + 1, ti + 1);
                    };
                    if ti == t.len() || t[ti] == b'/' {
                        return false;
                    }
                    let mut class = &p[pi + 1..close];
                    let neg = matches!(class.first(), Some(b'!') | Some(b'^'));
                    if neg {
                        class = &class[1..];
                    }
                    let c = t[ti];
                    let mut hit = false;
                    let mut i = 0;
                    while i < class.len() {
                        if i + 2 < class.len() && class[i + 1] == b'-' {
                            hit |= class[i] <= c && c <= class[i + 2];
                            i += 3;
                        } else {
                            hit |= class[i] == c;
                            i += 1;
                        }
                    }
                    hit != neg && self.at(close + 1, ti + 1)
                }
                c => ti < t.len() && t[ti] == c && self.at(pi + 1, ti + 1),
            }
        }
    }
    // the table costs an allocation per call (per path and pattern): only patterns that can backtrack
    // exponentially, with two stars or more, get one
    let stars = pat.iter().filter(|&&c| c == b'*').count();
    let mut m = M {
        p: pat,
        t: text,
        failed: if stars >= 2 {
            vec![false; pat.len() * (text.len() + 1)]
        } else {
            Vec::new()
        },
    };
    m.at(0, 0)
}

/// Whether an exclude pattern matches `path`, as restic matches them: a pattern without `/` matches a name (at any
/// depth); an absolute one the whole path; a relative one with `/` (`cache/*.tmp`) the path's trailing components at
/// any depth (`/srv/app/cache/x.tmp`).
fn excluded(exclude: &[String], path: &Path) -> bool {
    let full = path.as_os_str().as_bytes();
    let base = path.file_name().map_or(full, |n| n.as_bytes());
    exclude.iter().any(|p| {
        let pb = p.as_bytes();
        if !pb.contains(&b'/') {
            glob_match(pb, base)
        } else if pb[0] == b'/' {
            glob_match(pb, full)
        } else {
            (1..full.len())
                .filter(|&i| full[i - 1] == b'/')
                .any(|i| glob_match(pb, &full[i..]))
        }
    })
}

fn item_from(path: &Path, md: &std::fs::Metadata) -> Item {
    let kind = if md.file_type().is_dir() {
        Kind::Dir
    } else if md.file_type().is_symlink() {
        Kind::Symlink
    } else {
        Kind::File
    };
    let rel = path.as_os_str().as_bytes();
    let rel = rel.strip_prefix(b"/").unwrap_or(rel).to_vec();
    Item {
        path: rel,
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        inode: md.ino(),
        size: if kind == Kind::File { md.len() } else { 0 },
        target: Vec::new(),
        chunks: Vec::new(),
    }
}

/// Normalizes a root: absolute, `.`/`..` resolved in the parent (the last component is kept, so a symlink
/// given as a root is stored as a symlink).
pub fn normalize_root(p: &Path) -> BResult<PathBuf> {
    let abs = std::path::absolute(p)
        .map_err(|e| CoreError::io(format!("backup: path {}", p.display()), e))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = parent
                .canonicalize()
                .map_err(|e| CoreError::io(format!("backup: path {}", p.display()), e))?;
            Ok(parent.join(name))
        }
        _ => abs
            .canonicalize()
            .map_err(|e| CoreError::io(format!("backup: path {}", p.display()), e)),
    }
}

/// The roots to walk, sorted: each once, and none inside another (the walk of `/data` covers `/data/sub`; walking
/// both would store everything below `/data/sub` twice, which a restore refuses as a damaged snapshot), unless
/// the outer walk leaves the inner root out (`exclude` matches it or a directory between them): a path given
/// explicitly is never dropped by another one's exclude patterns.
pub fn outermost(mut roots: Vec<PathBuf>, exclude: &[String]) -> Vec<PathBuf> {
    roots.sort();
    roots.dedup();
    let mut kept: Vec<PathBuf> = Vec::with_capacity(roots.len());
    for r in roots {
        // sorted: a root's ancestors among the roots come before it (`Path::starts_with` compares components)
        let covered = kept.iter().any(|k| {
            r.starts_with(k)
                && !r
                    .ancestors()
                    .take_while(|a| a != k)
                    .any(|a| excluded(exclude, a))
        });
        if !covered {
            kept.push(r);
        }
    }
    kept
}

/// Exclude patterns as restic cleans them (`filepath.Clean`): no leading `./`, no trailing or doubled `/`.
pub fn clean_patterns(patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .map(|p| {
            let mut s = p.clone();
            while s.contains("//") {
                s = s.replace("//", "/");
            }
            while let Some(rest) = s.strip_prefix("./") {
                s = rest.to_string();
            }
            while s.len() > 1 && s.ends_with('/') {
                s.pop();
            }
            s
        })
        .collect()
}

/// One entry the walk found: its absolute path and metadata, a symlink's target (or why it could not be read),
/// a directory's entries in byte order of their names, and the warnings its directory listing gave.
struct Node {
    path: PathBuf,
    md: std::fs::Metadata,
    target: Option<std::io::Result<PathBuf>>,
    children: Vec<Node>,
    warnings: Vec<String>,
}

/// Directories this deep are walked on one thread, without recursion (a tree may be thousands of levels deep).
const PAR_DEPTH: usize = 32;

/// A node for `path` without its entries (a symlink's target read).
fn leaf(path: PathBuf, md: std::fs::Metadata) -> Node {
    Node {
        target: md
            .file_type()
            .is_symlink()
            .then(|| std::fs::read_link(&path)),
        path,
        md,
        children: Vec::new(),
        warnings: Vec::new(),
    }
}

/// The entries of directory `node` that `exclude` keeps, with their metadata, in byte order of their names; what
/// cannot be listed or stat-ed becomes a warning of `node` (an entry gone meanwhile is skipped silently). Each
/// entry is stat-ed relative to the open directory (`DirEntry::metadata`): no path lookup from the root.
fn list(node: &mut Node, exclude: &[String]) -> Vec<(PathBuf, std::fs::Metadata)> {
    let rd = match std::fs::read_dir(&node.path) {
        Ok(rd) => rd,
        Err(e) => {
            node.warnings.push(format!("{}: {e}", node.path.display()));
            return Vec::new();
        }
    };
    let mut entries = Vec::new();
    for ent in rd {
        let ent = match ent {
            Ok(ent) => ent,
            Err(e) => {
                node.warnings.push(format!("{}: {e}", node.path.display()));
                continue;
            }
        };
        let c = ent.path();
        if excluded(exclude, &c) {
            continue;
        }
        match ent.metadata() {
            Ok(m) => entries.push((c, m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => node.warnings.push(format!("{}: {e}", c.display())),
        }
    }
    entries.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    entries
}

/// The tree below `path` (whose metadata is `md`, at `depth` below the root). Sibling directories are listed in
/// parallel on the current pool (the listing is mostly system calls, so a wide tree walks up to a core's count
/// times faster); from [`PAR_DEPTH`] down a subtree is listed on this thread into a flat list of entries in
/// snapshot order. Every node keeps its own sorted entries and warnings, so the result does not depend on the
/// scheduling.
fn scan(path: PathBuf, md: std::fs::Metadata, exclude: &[String], depth: usize) -> Node {
    let mut node = leaf(path, md);
    if !node.md.file_type().is_dir() {
        return node;
    }
    let entries = list(&mut node, exclude);
    if depth >= PAR_DEPTH {
        let mut stack: Vec<_> = entries.into_iter().rev().collect();
        while let Some((c, m)) = stack.pop() {
            let mut n = leaf(c, m);
            if n.md.file_type().is_dir() {
                stack.extend(list(&mut n, exclude).into_iter().rev());
            }
            node.children.push(n);
        }
        return node;
    }
    let dirs = entries.iter().filter(|e| e.1.file_type().is_dir()).count();
    node.children = if dirs > 1 {
        use rayon::prelude::*;
        entries
            .into_par_iter()
            .map(|(c, m)| scan(c, m, exclude, depth + 1))
            .collect()
    } else {
        entries
            .into_iter()
            .map(|(c, m)| scan(c, m, exclude, depth + 1))
            .collect()
    };
    node
}

/// The items of the tree at `root` in the snapshot's order (a directory before its entries, entries in byte
/// order of their names), their absolute paths, and warnings for what could not be read (skipped, as before).
fn walk(
    root: &Path,
    exclude: &[String],
    items: &mut Vec<Item>,
    abs_paths: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
) -> BResult<()> {
    let md = std::fs::symlink_metadata(root)
        .map_err(|e| CoreError::io(format!("backup: path {}", root.display()), e))?;
    let tree = match crate::kernels::dispatch::pool() {
        Some(p) => p.install(|| scan(root.to_path_buf(), md, exclude, 0)),
        None => scan(root.to_path_buf(), md, exclude, 0),
    };
    let mut stack = vec![tree];
    while let Some(node) = stack.pop() {
        if let Some(what) = special_kind(node.md.file_type()) {
            // not stored: restored as an empty regular file it would be something else
            warnings.push(format!(
                "{}: {what}, not backed up (only files, directories and symlinks are)",
                node.path.display()
            ));
            continue;
        }
        let mut it = item_from(&node.path, &node.md);
        match node.target {
            Some(Ok(t)) => it.target = t.as_os_str().as_bytes().to_vec(),
            Some(Err(e)) => {
                warnings.push(format!("{}: {e}", node.path.display()));
                continue;
            }
            None => {}
        }
        items.push(it);
        abs_paths.push(node.path);
        warnings.extend(node.warnings);
        stack.extend(node.children.into_iter().rev());
    }
    Ok(())
}

/// Opens a file the walk found to be a regular file, without blocking if it has become a FIFO or a device since
/// (`O_NONBLOCK`, which regular files ignore), and refuses it if it is no longer a regular file.
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other(
            "is no longer a regular file (skipped)",
        ));
    }
    Ok(f)
}

/// What a special file is called in the warning that it was skipped; `None` for files, directories and symlinks.
fn special_kind(ft: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_char_device() {
        Some("a character device")
    } else {
        None
    }
}

struct Shared<'a> {
    repo: &'a Repository,
    idx: &'a Index,
    pending: Mutex<HashSet<Id>>,
    abort: AtomicBool,
    err: Mutex<Option<CoreError>>,
}

impl Shared<'_> {
    fn fail(&self, e: CoreError) {
        let mut g = self.err.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
        self.abort.store(true, Ordering::SeqCst);
    }
    /// True when `id` is new to the repository and this run (and claims it).
    fn claim(&self, id: &Id) -> bool {
        !self.idx.contains(id) && self.pending.lock().unwrap().insert(*id)
    }
}

/// The reader's outgoing batches: chunks for the workers and per-file results for the main thread.
struct Batcher {
    jobs: SyncSender<(u64, Vec<Job>)>,
    seq: u64,
    results: SyncSender<Vec<Res>>,
    pieces: Vec<Job>,
    bytes: usize,
    done: Vec<Res>,
}

impl Batcher {
    /// Adds a chunk, sending the batch when it is full; false when the receivers are gone.
    fn push(&mut self, job: Job) -> bool {
        self.bytes += job.data.len();
        self.pieces.push(job);
        if self.bytes >= BATCH_BYTES || self.pieces.len() >= BATCH_PIECES {
            return self.flush();
        }
        true
    }

    /// Sends what is pending: the file results first (the main thread accepts them in any order).
    fn flush(&mut self) -> bool {
        if !self.done.is_empty() && self.results.send(std::mem::take(&mut self.done)).is_err() {
            return false;
        }
        self.bytes = 0;
        if self.pieces.is_empty() {
            return true;
        }
        self.seq += 1;
        self.jobs
            .send((self.seq - 1, std::mem::take(&mut self.pieces)))
            .is_ok()
    }
}

fn reader(
    sh: &Shared<'_>,
    files: &[(u32, PathBuf)],
    jobs: SyncSender<(u64, Vec<Job>)>,
    results: SyncSender<Vec<Res>>,
) {
    let chunker = Chunker::new(DATA_CHUNKS, &sh.repo.key);
    let mut trial = Encoder::new(1);
    let mut buf = Vec::new();
    let mut out = Batcher {
        jobs,
        seq: 0,
        results,
        pieces: Vec::new(),
        bytes: 0,
        done: Vec::new(),
    };
    for (item, path) in files {
        if sh.abort.load(Ordering::Relaxed) {
            return;
        }
        let f = match open_regular(path) {
            Ok(f) => f,
            Err(e) => {
                out.done.push(Res::FileFailed {
                    item: *item,
                    msg: format!("{}: {e}", path.display()),
                });
                continue;
            }
        };
        let mut seq = 0u32;
        let mut bytes = 0u64;
        let mut filter = Filter::None;
        let mut sent = true;
        let r = chunker.stream(f, &mut buf, |offset, data| {
            if seq == 0 {
                filter = choose_filter(&data, &mut trial);
            }
            bytes += data.len() as u64;
            sent = out.push(Job {
                item: *item,
                seq,
                offset,
                data,
                filter,
            });
            seq += 1;
            sent && !sh.abort.load(Ordering::Relaxed)
        });
        if !sent {
            return;
        }
        out.done.push(match r {
            Ok(()) => Res::FileDone {
                item: *item,
                chunks: seq,
                bytes,
            },
            Err(e) => Res::FileFailed {
                item: *item,
                msg: format!("{}: {e}", path.display()),
            },
        });
    }
    out.flush();
}

fn worker(
    sh: &Shared<'_>,
    jobs: &Mutex<Receiver<(u64, Vec<Job>)>>,
    results: SyncSender<Vec<Res>>,
    sealed: SyncSender<SealedBatch>,
) {
    let mut enc = Encoder::new(sh.repo.config.compression);
    loop {
        let batch = { jobs.lock().unwrap().recv() };
        let Ok((seq, batch)) = batch else { return };
        if sh.abort.load(Ordering::Relaxed) {
            continue; // drain so the reader is not blocked
        }
        let mut new_blobs = Vec::new();
        let mut chunks = Vec::with_capacity(batch.len());
        for job in batch {
            let id = sh.repo.key.blob_id(&job.data);
            if sh.claim(&id) {
                let (hdr, body) = enc.encode_parts(&job.data, job.offset, job.filter);
                let mut out = Vec::new();
                sh.repo
                    .key
                    .seal_parts_into(&[hdr.as_slice(), body], &id, &mut out);
                new_blobs.push(Sealed {
                    ty: BlobType::Data,
                    id,
                    data: out,
                    raw_len: job.data.len() as u32,
                });
            }
            chunks.push(Res::Chunk {
                item: job.item,
                seq: job.seq,
                id,
                raw: job.data.len() as u64,
            });
        }
        // sent even when empty: the packer waits for every batch number
        if sealed.send((Some(seq), new_blobs)).is_err() || results.send(chunks).is_err() {
            return;
        }
    }
}

fn packer(sh: &Shared<'_>, sealed: Receiver<SealedBatch>, packs: SyncSender<FinishedPack>) {
    let mut pb = PackBuilder::default();
    let mut early: std::collections::BTreeMap<u64, Vec<Sealed>> = std::collections::BTreeMap::new();
    let mut want = 0u64; // the next batch number in the reader's order
    let add = |blobs: Vec<Sealed>, pb: &mut PackBuilder| -> bool {
        for s in blobs {
            pb.add_owned(s.ty, s.id, s.data, s.raw_len);
            if pb.len() >= PACK_SIZE {
                let full = std::mem::take(pb);
                if packs.send(full.finish(&sh.repo.key)).is_err() {
                    return false;
                }
            }
        }
        true
    };
    for (seq, blobs) in sealed {
        let mut ok = match seq {
            Some(n) if n == want => {
                want += 1;
                add(blobs, &mut pb)
            }
            Some(n) if n < want => add(blobs, &mut pb), // late: the buffer already let later ones pass
            Some(n) => {
                early.insert(n, blobs);
                true
            }
            None => {
                // tree blobs come after every data batch: let all held batches through first
                let held = std::mem::take(&mut early);
                held.into_values().all(|b| add(b, &mut pb)) && add(blobs, &mut pb)
            }
        };
        // the batches that were waiting for this one, and past REORDER_MAX the oldest out of order
        while ok {
            let next = match early.first_key_value() {
                Some((&n, _)) if n == want || early.len() > REORDER_MAX => n,
                _ => break,
            };
            want = want.max(next + 1);
            let b = early.remove(&next).expect("present");
            ok = add(b, &mut pb);
        }
        if !ok {
            return;
        }
    }
    for b in std::mem::take(&mut early).into_values() {
        if !add(b, &mut pb) {
            return;
        }
    }
    if !pb.is_empty() && !sh.abort.load(Ordering::Relaxed) {
        let _ = packs.send(pb.finish(&sh.repo.key));
    }
}

/// Writes packs (the store's [`upload_concurrency`](crate::backup::store::Store::upload_concurrency) at
/// once); an indexer thread makes each batch of packs durable and then writes the index object naming them
/// (so the fsyncs overlap with writing the next packs). Returns the bytes written.
fn writer(sh: &Shared<'_>, packs: Receiver<FinishedPack>) -> u64 {
    let store = &*sh.repo.store;
    let (batch_tx, batch_rx) = sync_channel::<Vec<(Id, Vec<PackedBlob>)>>(4);
    let packs = Mutex::new(packs);
    let unindexed: Mutex<Vec<(Id, Vec<PackedBlob>)>> = Mutex::new(Vec::new());
    let written = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let indexer = s.spawn(move || -> u64 {
            let mut n = 0u64;
            for batch in batch_rx {
                if sh.abort.load(Ordering::Relaxed) {
                    continue;
                }
                // packs durable before the index that names them
                let r = store
                    .sync()
                    .and_then(|()| index::put(store, &sh.repo.key, &batch));
                match r {
                    Ok(k) => n += k,
                    Err(e) => sh.fail(e),
                }
            }
            n
        });
        let uploaders: Vec<_> = (0..store.upload_concurrency().max(1))
            .map(|_| {
                let (packs, unindexed, written, batch_tx) =
                    (&packs, &unindexed, &written, batch_tx.clone());
                s.spawn(move || loop {
                    let Ok(fp) = packs.lock().unwrap().recv() else {
                        return;
                    };
                    if sh.abort.load(Ordering::Relaxed) {
                        continue;
                    }
                    let len = fp.len() as u64;
                    let FinishedPack { id, parts, blobs } = fp;
                    match store.put_owned(&pack_key(&id), parts) {
                        Ok(()) => {
                            written.fetch_add(len, Ordering::Relaxed);
                            let full = {
                                let mut u = unindexed.lock().unwrap();
                                u.push((id, blobs));
                                (u.len() >= INDEX_EVERY).then(|| std::mem::take(&mut *u))
                            };
                            if full.is_some_and(|b| batch_tx.send(b).is_err()) {
                                return;
                            }
                        }
                        Err(e) => sh.fail(e),
                    }
                })
            })
            .collect();
        for u in uploaders {
            u.join().expect("upload thread");
        }
        let rest = std::mem::take(&mut *unindexed.lock().unwrap());
        if !sh.abort.load(Ordering::Relaxed) && !rest.is_empty() {
            let _ = batch_tx.send(rest);
        }
        drop(batch_tx);
        written.load(Ordering::Relaxed) + indexer.join().expect("indexer thread")
    })
}

/// Runs a backup and writes its snapshot.
pub fn backup(repo: &Repository, opts: &BackupOptions<'_>) -> BResult<Snapshot> {
    let t0 = Instant::now();
    let lock = Lock::acquire(repo.store.clone(), repo.key.clone(), false)?;
    repo.store.clean_tmp(Duration::from_secs(3600))?;
    let progress = |info: ProgressInfo| -> bool { opts.progress.is_none_or(|p| p(&info)) };
    // roots
    if opts.paths.is_empty() {
        return Err(CoreError::value("backup", "paths", "is empty"));
    }
    let exclude = clean_patterns(&opts.exclude);
    let mut roots = Vec::new();
    for p in &opts.paths {
        roots.push(normalize_root(p)?);
    }
    let roots = outermost(roots, &exclude);
    let root_bytes: Vec<Vec<u8>> = roots
        .iter()
        .map(|r| r.as_os_str().as_bytes().to_vec())
        .collect();
    let (root_strs, root_hex) = Snapshot::encode_roots(&root_bytes);
    let host = opts.host.clone().unwrap_or_else(hostname);

    // walk the trees on another thread while the index and the parent snapshot load
    if !progress(ProgressInfo {
        phase: "scan",
        ..Default::default()
    }) {
        return Err(crate::backup::repo::cancelled("backup"));
    }
    let walker = {
        let roots = roots.clone();
        std::thread::Builder::new()
            .name("ferrolab-walk".into())
            .spawn(move || -> BResult<_> {
                let (mut items, mut abs, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
                for r in &roots {
                    walk(r, &exclude, &mut items, &mut abs, &mut warnings)?;
                }
                Ok((items, abs, warnings))
            })
            .map_err(|e| CoreError::io("backup: start the tree walk", e))?
    };

    // index (+ packs of interrupted runs)
    let (idx, _bad, recovered) = repo.load_index()?;
    if !recovered.is_empty() {
        index::put(&*repo.store, &repo.key, &recovered)?;
    }

    // parent snapshot: the newest one of the same paths on the same host
    let (snaps, _) = repo.load_snapshots()?;
    let parent = snaps
        .iter()
        .rev()
        .find(|s| s.hostname == host && s.root_bytes() == root_bytes);
    let parent_items: HashMap<Vec<u8>, Item> = match parent {
        Some(p) => match repo.load_items(p, &idx) {
            Ok(items) => items
                .into_iter()
                .filter(|i| i.kind == Kind::File)
                .map(|i| (i.path.clone(), i))
                .collect(),
            Err(_) => HashMap::new(), // a damaged parent only costs re-reading
        },
        None => HashMap::new(),
    };

    // the walk's result (it ran while the index and the parent were loaded)
    let (mut items, abs, mut warnings) = walker
        .join()
        .unwrap_or_else(|_| Err(CoreError::internal("backup", "the tree walk panicked")))?;
    let mut to_read: Vec<(u32, PathBuf)> = Vec::new();
    let mut total_bytes = 0u64;
    let mut done_bytes = 0u64;
    let mut total_files = 0u64;
    for (i, it) in items.iter_mut().enumerate() {
        if it.kind != Kind::File {
            continue;
        }
        total_files += 1;
        total_bytes += it.size;
        if let Some(p) = parent_items.get(&it.path) {
            if p.size == it.size
                && p.mtime_ns == it.mtime_ns
                && p.ctime_ns == it.ctime_ns
                && p.inode == it.inode
                && p.chunks.iter().all(|c| idx.contains(c))
            {
                it.chunks = p.chunks.clone();
                done_bytes += it.size;
                continue;
            }
        }
        if it.size == 0 {
            continue;
        }
        to_read.push((i as u32, abs[i].clone()));
    }
    drop(abs);
    let mut done_files = total_files - to_read.len() as u64;

    let sh = Shared {
        repo,
        idx: &idx,
        pending: Mutex::new(HashSet::new()),
        abort: AtomicBool::new(false),
        err: Mutex::new(None),
    };
    let nworkers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let mut failed: Vec<(u32, String)> = Vec::new();
    let mut chunk_ids: HashMap<u32, Vec<Option<Id>>> = HashMap::new();
    let mut sizes: HashMap<u32, u64> = HashMap::new();
    let mut added = 0u64;
    let mut tree_ids: Vec<Id> = Vec::new();
    let (job_tx, job_rx) = sync_channel::<(u64, Vec<Job>)>(2 * nworkers);
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        let (res_tx, res_rx) = sync_channel::<Vec<Res>>(256);
        let (seal_tx, seal_rx) = sync_channel::<SealedBatch>(2 * nworkers);
        let (pack_tx, pack_rx) = sync_channel(1);
        let shr = &sh;
        let writer_h = s.spawn(move || writer(shr, pack_rx));
        s.spawn(move || packer(shr, seal_rx, pack_tx));
        {
            let res_tx = res_tx.clone();
            let to_read = &to_read;
            s.spawn(move || reader(shr, to_read, job_tx, res_tx));
        }
        let job_rx = &job_rx;
        for _ in 0..nworkers {
            let res_tx = res_tx.clone();
            let seal_tx = seal_tx.clone();
            s.spawn(move || worker(shr, job_rx, res_tx, seal_tx));
        }
        drop(res_tx);
        let mut last = Instant::now();
        loop {
            match res_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(batch) => {
                    for r in batch {
                        match r {
                            Res::Chunk { item, seq, id, raw } => {
                                let v = chunk_ids.entry(item).or_default();
                                if v.len() <= seq as usize {
                                    v.resize(seq as usize + 1, None);
                                }
                                v[seq as usize] = Some(id);
                                done_bytes += raw;
                            }
                            Res::FileDone {
                                item,
                                chunks,
                                bytes,
                            } => {
                                chunk_ids
                                    .entry(item)
                                    .or_default()
                                    .resize(chunks as usize, None);
                                sizes.insert(item, bytes);
                                done_files += 1;
                            }
                            Res::FileFailed { item, msg } => {
                                failed.push((item, msg));
                                done_files += 1;
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last.elapsed() >= Duration::from_millis(100) {
                last = Instant::now();
                if !progress(ProgressInfo {
                    phase: "backup",
                    done_bytes,
                    total_bytes,
                    done_files,
                    total_files,
                }) {
                    sh.fail(crate::backup::repo::cancelled("backup"));
                }
                if let Err(e) = lock.check() {
                    sh.fail(e);
                }
            }
        }
        // all data chunks are in: assemble the items and store the item stream as tree blobs
        if !sh.abort.load(Ordering::SeqCst) {
            let failed_set: HashSet<u32> = failed.iter().map(|f| f.0).collect();
            let mut final_items = Vec::with_capacity(items.len());
            for (i, mut it) in std::mem::take(&mut items).into_iter().enumerate() {
                let i = i as u32;
                if failed_set.contains(&i) {
                    continue;
                }
                if let Some(ids) = chunk_ids.remove(&i) {
                    match ids.into_iter().collect::<Option<Vec<Id>>>() {
                        Some(ids) => it.chunks = ids,
                        None => {
                            sh.fail(CoreError::backup(
                                crate::error::BackupErrorKind::Other,
                                format!(
                                    "backup: internal error: missing chunk of {}",
                                    it.display()
                                ),
                            ));
                            break;
                        }
                    }
                    if let Some(&b) = sizes.get(&i) {
                        it.size = b;
                    }
                }
                final_items.push(it);
            }
            items = final_items;
            let tree_stream = encode_items(&items);
            let tc = Chunker::new(TREE_CHUNKS, &repo.key);
            let mut enc = Encoder::new(repo.config.compression);
            let mut payload = Vec::new();
            for part in tc.split(&tree_stream) {
                let id = repo.key.blob_id(part);
                tree_ids.push(id);
                if sh.claim(&id) {
                    enc.encode(part, 0, Filter::None, &mut payload);
                    let data = repo.key.seal(&payload, &id);
                    if seal_tx
                        .send((
                            None,
                            vec![Sealed {
                                ty: BlobType::Tree,
                                id,
                                data,
                                raw_len: part.len() as u32,
                            }],
                        ))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        drop(seal_tx);
        added = writer_h.join().expect("writer thread");
    });
    if let Some(e) = sh.err.into_inner().unwrap() {
        return Err(e);
    }
    for (_, msg) in &failed {
        warnings.push(msg.clone());
    }
    let files = items.iter().filter(|i| i.kind == Kind::File).count() as u64;
    let dirs = items.iter().filter(|i| i.kind == Kind::Dir).count() as u64;
    let bytes = items
        .iter()
        .filter(|i| i.kind == Kind::File)
        .map(|i| i.size)
        .sum();
    let snap = Snapshot {
        version: 1,
        time: opts.time.unwrap_or_else(now),
        hostname: host,
        paths: root_strs,
        paths_hex: root_hex,
        tags: opts.tags.clone(),
        parent: parent.map(|p| p.id.clone()),
        tree: tree_ids
            .iter()
            .map(|t| crate::backup::crypto::hex(t))
            .collect(),
        files,
        dirs,
        bytes,
        added_bytes: added,
        duration: t0.elapsed().as_secs_f64(),
        warnings,
        id: random_id(),
    };
    repo.store.sync()?;
    repo.store
        .put(&format!("snapshots/{}", snap.id), &snap.encode(&repo.key))?;
    repo.store.sync()?;
    tracing::info!(
        target: "ferrolab.backup",
        repository = %repo.store.url(),
        snapshot = %snap.id,
        files = snap.files,
        bytes = snap.bytes,
        added_bytes = snap.added_bytes,
        duration_seconds = snap.duration,
        warnings = snap.warnings.len() as u64,
        "snapshot saved"
    );
    let _ = progress(ProgressInfo {
        phase: "backup",
        done_bytes: total_bytes,
        total_bytes,
        done_files: total_files,
        total_files,
    });
    drop(lock);
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::{excluded, glob_match, walk};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    /// The walk as it was before it ran in parallel: one thread, a stack, `lstat` by full path.
    fn serial_walk(root: &Path, exclude: &[String]) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let target = if md.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            out.push((p.clone(), target));
            if md.is_dir() {
                let mut kids: Vec<PathBuf> = std::fs::read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|c| !excluded(exclude, c))
                    .collect();
                kids.sort_by(|a, b| b.as_os_str().as_bytes().cmp(a.as_os_str().as_bytes()));
                stack.extend(kids);
            }
        }
        out
    }

    #[test]
    fn the_parallel_walk_lists_a_deep_wide_tree_in_snapshot_order() {
        let root = std::env::temp_dir().join(format!(
            "ferrolab-walk-test-{}",
            &crate::backup::crypto::random_id()[..16]
        ));
        // wide near the root (parallel), and one chain deeper than PAR_DEPTH (walked serially below it)
        for i in 0..12 {
            for j in 0..5 {
                let d = root.join(format!("d{i:02}")).join(format!("e{j}"));
                std::fs::create_dir_all(&d).unwrap();
                for k in 0..4 {
                    std::fs::write(d.join(format!("f{k}.txt")), b"x").unwrap();
                }
                std::fs::write(d.join("skip.tmp"), b"x").unwrap();
            }
            std::os::unix::fs::symlink("../elsewhere", root.join(format!("d{i:02}/link"))).unwrap();
        }
        let mut deep = root.join("deep");
        for level in 0..(super::PAR_DEPTH + 9) {
            deep = deep.join(format!("l{level}"));
            std::fs::create_dir_all(&deep).unwrap();
            std::fs::write(deep.join("a"), b"y").unwrap();
            std::fs::create_dir_all(deep.join("side")).unwrap();
        }
        let exclude = vec!["*.tmp".to_string()];
        let (mut items, mut abs, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
        let walked = walk(&root, &exclude, &mut items, &mut abs, &mut warnings);
        let want = serial_walk(&root, &exclude);
        std::fs::remove_dir_all(&root).unwrap();
        walked.unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(abs, want.iter().map(|w| w.0.clone()).collect::<Vec<_>>());
        let targets: Vec<Vec<u8>> = items.iter().map(|i| i.target.clone()).collect();
        assert_eq!(
            targets,
            want.iter().map(|w| w.1.clone()).collect::<Vec<_>>()
        );
        assert_eq!(
            items.len(),
            1 + 12 * (1 + 5 * 5 + 1) + 1 + 3 * (super::PAR_DEPTH + 9)
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*.tmp", b"a.tmp"));
        assert!(!glob_match(b"*.tmp", b"a/b.tmp"));
        assert!(glob_match(b"/data/**/*.tmp", b"/data/x/y/z.tmp"));
        assert!(glob_match(b"/data/*/z.tmp", b"/data/x/z.tmp"));
        assert!(!glob_match(b"/data/*/z.tmp", b"/data/x/y/z.tmp"));
        assert!(glob_match(b"f?[0-9]", b"fa7"));
        assert!(!glob_match(b"f?[!0-9]", b"fa7"));
        assert!(glob_match(b"cache", b"cache"));
    }

    /// The plain backtracking matcher `glob_match` replaced (exponential in the stars), as the reference.
    fn naive(p: &[u8], t: &[u8]) -> bool {
        if p.is_empty() {
            return t.is_empty();
        }
        match p[0] {
            b'*' if p.get(1) == Some(&b'*') => (0..=t.len()).any(|i| naive(&p[2..], &t[i..])),
            b'*' => {
                for i in 0..=t.len() {
                    if naive(&p[1..], &t[i..]) {
                        return true;
                    }
                    if i < t.len() && t[i] == b'/' {
                        break;
                    }
                }
                false
            }
            b'?' => !t.is_empty() && t[0] != b'/' && naive(&p[1..], &t[1..]),
            b'[' => {
                let Some(close) = p.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                    return !t.is_empty() && t[0] == b'[' && naive(&p[1..], &t[1..]);
                };
                if t.is_empty() || t[0] == b'/' {
                    return false;
                }
                let mut class = &p[1..close];
                let neg = matches!(class.first(), Some(b'!') | Some(b'^'));
                if neg {
                    class = &class[1..];
                }
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == b'-' {
                        hit |= class[i] <= t[0] && t[0] <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == t[0];
                        i += 1;
                    }
                }
                hit != neg && naive(&p[close + 1..], &t[1..])
            }
            c => !t.is_empty() && t[0] == c && naive(&p[1..], &t[1..]),
        }
    }

    #[test]
    fn globs_agree_with_backtracking_and_many_stars_stay_cheap() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        let pat_alpha = b"ab/*?[]!-";
        let text_alpha = b"ab/[";
        for _ in 0..20_000 {
            let p: Vec<u8> = (0..next(8))
                .map(|_| pat_alpha[next(pat_alpha.len())])
                .collect();
            let t: Vec<u8> = (0..next(10))
                .map(|_| text_alpha[next(text_alpha.len())])
                .collect();
            assert_eq!(
                glob_match(&p, &t),
                naive(&p, &t),
                "{:?} against {:?}",
                String::from_utf8_lossy(&p),
                String::from_utf8_lossy(&t)
            );
        }
        // exponential for the plain backtracking: 12 stars against 300 bytes
        let name = [b'a'; 300];
        assert!(!glob_match(b"*a*a*a*a*a*a*a*a*a*a*a*b", &name));
        assert!(!glob_match(b"**a**a**a**a**a**a**a**a**b", &name));
        assert!(glob_match(b"*a*a*a*a*a*a*a*a*a*a*a*a", &name));
    }

    #[test]
    fn relative_patterns_with_a_slash_match_at_any_depth() {
        let ex = |pats: &[&str], p: &str| {
            let pats: Vec<String> = pats.iter().map(|s| s.to_string()).collect();
            excluded(&pats, Path::new(p))
        };
        assert!(ex(&["sub/*.txt"], "/data/sub/x.txt"));
        assert!(ex(&["sub/*.txt"], "/data/deep/sub/x.txt"));
        assert!(!ex(&["sub/*.txt"], "/data/sub/x.log"));
        assert!(
            !ex(&["sub/*.txt"], "/data/xsub/x.txt"),
            "whole components only"
        );
        assert!(!ex(&["sub/*.txt"], "/data/sub/deeper/x.txt"));
        assert!(ex(&["*/sub/*"], "/data/sub/y.log"));
        assert!(ex(&["**/__pycache__"], "/srv/app/pkg/__pycache__"));
        assert!(ex(&["/data/sub"], "/data/sub"));
        assert!(
            !ex(&["/sub"], "/data/sub"),
            "an absolute pattern matches the whole path"
        );
        assert!(ex(&["*.tmp"], "/data/deep/a.tmp"));
    }

    #[test]
    fn outermost_roots() {
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        let ex = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let roots = p(&["/data/sub", "/data", "/data-x", "/data/sub/deeper", "/data"]);
        assert_eq!(super::outermost(roots, &[]), p(&["/data", "/data-x"]));
        assert_eq!(super::outermost(p(&["/etc", "/", "/home"]), &[]), p(&["/"]));
        // an inner root the outer walk would leave out is walked on its own
        let both = p(&["/data", "/data/sub"]);
        assert_eq!(super::outermost(both.clone(), &ex(&["sub"])), both);
        let keep = p(&["/data", "/data/cache/keep"]);
        assert_eq!(super::outermost(keep.clone(), &ex(&["/data/cache"])), keep);
        assert_eq!(super::outermost(both, &ex(&["*.tmp"])), p(&["/data"]));
    }

    #[test]
    fn patterns_are_cleaned_like_restic() {
        let ex = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            super::clean_patterns(&ex(&[
                "cache/",
                "./cache",
                "/abs/cache/",
                "a//b",
                "/",
                "*.tmp"
            ])),
            ex(&["cache", "cache", "/abs/cache", "a/b", "/", "*.tmp"])
        );
    }
}
