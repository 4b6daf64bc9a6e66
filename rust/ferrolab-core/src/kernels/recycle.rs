//! Recycled memory for large result arrays.
//!
//! A fresh result of tens of megabytes costs more to obtain than to fill: the allocator maps new pages (glibc
//! serves requests above its mmap threshold, at most 32 MiB, with `mmap` and returns them with `munmap` on free),
//! and the kernel faults in and zeroes every page on first touch. A loop that computes a same-sized result per
//! iteration (`y = fl.ops.standardize(batch)`) pays that each time, although the previous result was just freed.
//!
//! Buffers of at least [`MIN_BYTES`] are therefore kept when their array dies and handed to the next request of a
//! similar size (at least its size, at most twice it), already mapped and touched. What is kept is bounded: at
//! most [`MAX_BUFFERS`] buffers and [`limit`] bytes in all (`FERROLAB_RESULT_CACHE_MB`, default 256; `0` turns
//! recycling off); the oldest are freed first when a returned buffer would exceed it, and [`release`] frees all
//! of it. A recycled buffer holds the previous result's bytes: like `numpy.empty`, the caller overwrites it.

use crate::sync::MutexExt;
use std::alloc::{alloc, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Results smaller than this come from NumPy's own allocator (the C allocator reuses such blocks already).
pub const MIN_BYTES: usize = 4 << 20;

/// Most buffers kept at once.
pub const MAX_BUFFERS: usize = 8;

/// Alignment of every buffer: a huge page, so that transparent huge pages can back it from its first byte.
const ALIGN: usize = 2 << 20;

/// A block of at least `bytes` bytes, aligned to 2 MiB, owned by this module's allocator: dropping it returns it
/// to the cache (or frees it).
#[derive(Debug)]
pub struct Buffer {
    ptr: NonNull<u8>,
    /// The allocation's size (the layout it was allocated with), which may exceed the request it served.
    cap: usize,
}

// SAFETY: a Buffer is a uniquely owned heap block (like a Box<[u8]>); nothing else refers to it.
unsafe impl Send for Buffer {}
// SAFETY: a shared Buffer gives out only its address; writes through it are the owner's business, as for a
// Box<[u8]> behind a raw pointer.
unsafe impl Sync for Buffer {}

impl Buffer {
    /// The start of the block.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The size of the allocation (at least the size asked for).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    fn layout(cap: usize) -> Option<Layout> {
        Layout::from_size_align(cap, ALIGN).ok()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let b = Buffer {
            ptr: self.ptr,
            cap: self.cap,
        };
        keep_or_free(b);
    }
}

/// Frees the block of `b` without returning it to the cache.
fn free(b: Buffer) {
    let b = std::mem::ManuallyDrop::new(b);
    if let Some(layout) = Buffer::layout(b.cap) {
        // SAFETY: `b.ptr` was allocated by `alloc` with this layout (same size and alignment) and is freed once:
        // the Buffer is not dropped (ManuallyDrop) and nothing else owns the block.
        unsafe { dealloc(b.ptr.as_ptr(), layout) }
    }
}

struct Cache {
    /// Kept buffers, oldest first.
    kept: Vec<Buffer>,
    bytes: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(Cache {
            kept: Vec::new(),
            bytes: 0,
        })
    })
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    // the cache's state is consistent after every statement: a panic elsewhere cannot leave it half-updated
    cache().locked()
}

/// The cache if no other thread holds it. Taking and returning buffers never wait: another thread's turn, or a
/// lock held by a thread that did not survive a `fork`, only means a fresh allocation or a freed buffer.
fn try_lock() -> Option<std::sync::MutexGuard<'static, Cache>> {
    match cache().try_lock() {
        Ok(c) => Some(c),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// `usize::MAX` until the environment has been read.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static REUSED: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// The most bytes kept (`FERROLAB_RESULT_CACHE_MB` MiB, default 256; 0: recycling is off).
pub fn limit() -> usize {
    let l = LIMIT.load(Ordering::Relaxed);
    if l != usize::MAX {
        return l;
    }
    let mb = std::env::var("FERROLAB_RESULT_CACHE_MB")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(256);
    let l = mb.saturating_mul(1 << 20).min(usize::MAX - 1);
    LIMIT.store(l, Ordering::Relaxed);
    l
}

/// Sets the most bytes kept (0 turns recycling off and frees what is kept).
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes.min(usize::MAX - 1), Ordering::Relaxed);
    let mut c = lock();
    evict(&mut c, bytes, MAX_BUFFERS);
}

/// Whether a request of `bytes` is served here ([`take`]) rather than by NumPy's allocator.
#[inline]
pub fn applies(bytes: usize) -> bool {
    bytes >= MIN_BYTES && limit() > 0
}

/// A buffer of at least `bytes` bytes: a kept one of at most twice that size if there is one (the closest in
/// size, the most recent among equals), else a new allocation. `None` when the allocator has no memory left.
pub fn take(bytes: usize) -> Option<Buffer> {
    if let Some(mut c) = try_lock() {
        let best = c
            .kept
            .iter()
            .enumerate()
            .filter(|(_, b)| b.cap >= bytes && b.cap / 2 <= bytes)
            .min_by_key(|(i, b)| (b.cap, usize::MAX - i))
            .map(|(i, _)| i);
        if let Some(i) = best {
            let b = c.kept.remove(i);
            c.bytes -= b.cap;
            REUSED.fetch_add(1, Ordering::Relaxed);
            return Some(b);
        }
    }
    let layout = Buffer::layout(bytes.max(1))?;
    // SAFETY: the layout has a non-zero size.
    let ptr = NonNull::new(unsafe { alloc(layout) })?;
    advise_huge_pages(ptr, layout.size());
    ALLOCATED.fetch_add(1, Ordering::Relaxed);
    Some(Buffer {
        ptr,
        cap: layout.size(),
    })
}

/// Asks for transparent huge pages for a fresh buffer, as NumPy's allocator does for its large arrays (with the
/// kernel's `madvise` mode, the default of many distributions, memory gets them only when asked).
fn advise_huge_pages(ptr: NonNull<u8>, len: usize) {
    #[cfg(target_os = "linux")]
    {
        let len = len & !4095;
        if len > 0 {
            // SAFETY: `ptr` starts a block of at least `len` bytes that this module owns, aligned to a huge page
            // (hence to a page); the advice changes no contents. Its result is ignored (advice only).
            unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// Frees kept buffers, oldest first, until at most `room` bytes and `buffers` buffers are kept.
fn evict(c: &mut Cache, room: usize, buffers: usize) {
    while c.bytes > room || c.kept.len() > buffers {
        let b = c.kept.remove(0);
        c.bytes -= b.cap;
        free(b);
    }
}

/// A buffer whose array died: kept if it fits under the limit (freeing older ones to make room), else freed.
fn keep_or_free(b: Buffer) {
    let limit = limit();
    if b.cap > limit {
        free(b);
        return;
    }
    let Some(mut c) = try_lock() else {
        free(b);
        return;
    };
    evict(&mut c, limit - b.cap, MAX_BUFFERS - 1);
    c.bytes += b.cap;
    c.kept.push(b);
}

/// Frees every kept buffer; returns the bytes freed.
pub fn release() -> usize {
    let mut c = lock();
    let freed = c.bytes;
    evict(&mut c, 0, 0);
    freed
}

/// What the cache holds and has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Buffers kept now, and their bytes.
    pub buffers: usize,
    pub bytes: usize,
    /// The most bytes kept.
    pub limit: usize,
    /// Requests served by a kept buffer, and by a new allocation.
    pub reused: usize,
    pub allocated: usize,
}

/// The cache's [`Stats`].
pub fn stats() -> Stats {
    let limit = limit();
    let c = lock();
    Stats {
        buffers: c.kept.len(),
        bytes: c.bytes,
        limit,
        reused: REUSED.load(Ordering::Relaxed),
        allocated: ALLOCATED.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache is process-wide: these steps run in one test so that no other test changes it meanwhile.
    #[test]
    fn buffers_are_reused_within_bounds_and_released() {
        set_limit(64 << 20);
        release();
        let s0 = stats();

        // a returned buffer serves the next request of a similar size, at the same address
        let a = take(8 << 20).unwrap();
        assert!(a.capacity() >= 8 << 20 && a.as_ptr() as usize % ALIGN == 0);
        // SAFETY: the buffer holds at least 8 MiB, written and read inside it.
        unsafe {
            a.as_ptr().write_bytes(7, 8 << 20);
            assert_eq!(*a.as_ptr().add((8 << 20) - 1), 7);
        }
        let addr = a.as_ptr();
        drop(a);
        assert_eq!((stats().buffers, stats().bytes), (1, 8 << 20));
        let b = take(6 << 20).unwrap();
        assert_eq!(
            b.as_ptr(),
            addr,
            "a kept buffer of at most twice the size is reused"
        );
        assert_eq!(stats().reused, s0.reused + 1);
        // too large a kept buffer (more than twice the request) is not used for a small request
        drop(b);
        let c = take(3 << 20).unwrap();
        assert_ne!(c.as_ptr(), addr);
        assert_eq!(stats().buffers, 1);

        // the limit: returning more than fits frees the oldest first; a buffer above the limit is freed
        let d = take(40 << 20).unwrap();
        let e = take(30 << 20).unwrap();
        drop(c); // 8 + 3 MiB kept
        drop(d); // 8 + 3 + 40 = 51 MiB
        drop(e); // 81 MiB would exceed 64: the 8 and 3 MiB ones go, then 40 + 30 = 70 still exceeds: 40 goes
        let s = stats();
        assert!(s.bytes <= 64 << 20, "{s:?}");
        assert_eq!((s.buffers, s.bytes), (1, 30 << 20));
        let big = take(100 << 20).unwrap();
        drop(big);
        assert_eq!(
            stats().bytes,
            30 << 20,
            "a buffer above the limit is not kept"
        );

        // at most MAX_BUFFERS
        let many: Vec<_> = (0..MAX_BUFFERS + 2)
            .map(|_| take(MIN_BYTES).unwrap())
            .collect();
        drop(many);
        assert_eq!(stats().buffers, MAX_BUFFERS);

        assert_eq!(release(), MAX_BUFFERS * MIN_BYTES);
        assert_eq!((stats().buffers, stats().bytes), (0, 0));

        // off: nothing applies, nothing is kept
        set_limit(0);
        assert!(!applies(1 << 30));
        drop(take(MIN_BYTES).unwrap());
        assert_eq!(stats().buffers, 0);
        set_limit(256 << 20);
        assert!(applies(MIN_BYTES) && !applies(MIN_BYTES - 1));
    }
}
