//! CPU feature dispatch and the bounded, fork-safe thread pool.
//!
//! # SIMD dispatch
//! The inner loops are written once, generically, over fixed-width lane arrays that LLVM turns into vector
//! instructions. [`dispatch`] runs a [`Kernel`] inside a function compiled with `avx2,fma` when the running CPU
//! has them (checked once at run time, cached), and inside a baseline (SSE2) copy otherwise, so the same binary
//! never executes an illegal instruction on an older CPU. `FERROLAB_SIMD=baseline` forces the baseline path
//! (used by the tests to cover both copies).
//!
//! # Threads
//! Work above a size threshold runs on one rayon pool owned by ferrolab. Its size is `FERROLAB_NUM_THREADS`
//! when set (>= 1), else the number of available cores. After `fork()` the pool's threads do not exist in the
//! child; a `pthread_atfork` child handler bumps a generation counter and the child lazily builds a fresh pool
//! instead of waiting forever on the parent's.
//!
//! With `FERROLAB_ADAPTIVE_THREADS=1` the pool steps aside under load: [`usable_threads`] estimates how many
//! cores other processes keep busy (Linux: the machine's busy time from `/proc/stat` minus this process's own CPU
//! time, over the interval since the last estimate, refreshed at most every [`LOAD_REFRESH`]) and gives the work
//! the cores that are left. When one core (or none) is left, [`maybe_parallel`] runs the parallel code on a pool
//! of one thread (the same chunks combined in the same order, so the same results), so that no thread of the op
//! waits at the join for another that shares its core with a busy process. It is off by default: on the 2-core
//! machine the benchmarks ran on, the full pool was as fast or faster under a one-core load (rayon's work stealing
//! over small chunks already rebalances when a thread is descheduled) and clearly faster while other processes
//! kept the machine partly busy (docs/performance.md). rayon's idle threads spin only briefly (yielding) before
//! they sleep.
//!
//! Reductions of long rows (a whole 1-D array, a few long rows), `dot` and the elementwise ops split the work
//! into fixed chunks with [`par_map_chunks`] / [`par_pieces_mut`], where the calling thread computes chunks itself
//! beside the pool's threads instead of handing the work over and sleeping until it is done ([`maybe_parallel`]):
//! on a virtual machine each of those hand-overs and wake-ups costs about 10 µs, which at 10^5-10^6 elements was a
//! third of the call.
//!
//! A process that cannot start threads (at its `RLIMIT_NPROC`, a container's pids limit, out of memory for the
//! stacks) gets no pool: the work then runs on the calling thread, serially, with the same results, and the pool is
//! tried again after [`POOL_RETRY`]. Nothing here panics for want of threads.

use crate::sync::MutexExt;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// How the multiply-add of a kernel is evaluated.
pub trait Mode {
    /// Whether this is the AVX2+FMA instantiation (kernels with explicit 256-bit loops still check the CPU
    /// before using them: see `simd`).
    const FUSED: bool;
    /// `a * b + c`, fused (one rounding) where the instantiation has FMA.
    fn madd<T: crate::kernels::Real>(a: T, b: T, c: T) -> T;
}

/// Instantiation for CPUs with FMA: `mul_add` compiles to `vfmadd`.
pub struct Fused;
/// Baseline instantiation: separate multiply and add (a software `fma` would be slow).
pub struct Unfused;

impl Mode for Fused {
    const FUSED: bool = true;
    #[inline(always)]
    fn madd<T: crate::kernels::Real>(a: T, b: T, c: T) -> T {
        a.mul_add(b, c)
    }
}
impl Mode for Unfused {
    const FUSED: bool = false;
    #[inline(always)]
    fn madd<T: crate::kernels::Real>(a: T, b: T, c: T) -> T {
        a * b + c
    }
}

/// A unit of SIMD work. Implementations mark `run` `#[inline(always)]` so that it is compiled inside the
/// feature-enabled wrapper chosen by [`dispatch`].
pub trait Kernel {
    type Output;
    fn run<M: Mode>(self) -> Self::Output;
}

/// Which instruction set the kernels use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// x86-64 baseline (SSE2) or a non-x86 target.
    Baseline,
    /// AVX2 with FMA (256-bit vectors).
    Avx2Fma,
}

impl SimdLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2Fma => "avx2+fma",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(0); // 0 = unknown, 1 = baseline, 2 = avx2+fma

fn detect() -> SimdLevel {
    if std::env::var("FERROLAB_SIMD").is_ok_and(|v| v.eq_ignore_ascii_case("baseline")) {
        return SimdLevel::Baseline;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx2Fma;
        }
    }
    SimdLevel::Baseline
}

/// The SIMD level the kernels use (detected once).
#[inline]
pub fn simd_level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        2 => SimdLevel::Avx2Fma,
        1 => SimdLevel::Baseline,
        _ => {
            let l = detect();
            LEVEL.store(
                if l == SimdLevel::Avx2Fma { 2 } else { 1 },
                Ordering::Relaxed,
            );
            l
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2_fma<K: Kernel>(k: K) -> K::Output {
    k.run::<Fused>()
}

/// Runs `k` with the best instruction set this CPU has.
#[inline]
pub fn dispatch<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if simd_level() == SimdLevel::Avx2Fma {
            // SAFETY: the CPU was checked to support avx2 and fma.
            return unsafe { run_avx2_fma(k) };
        }
    }
    k.run::<Unfused>()
}

// ---------------------------------------------------------------------------------------------------------
// The thread pool

/// A lazily built, leaked pool that a forked child rebuilds (see the module docs).
struct Slot {
    pool: AtomicPtr<rayon::ThreadPool>,
    gen: AtomicU64,
    /// Guards building the pool; holds the generation and time of the last failed attempt.
    init: Mutex<Option<(u64, Instant)>>,
    name: &'static str,
}

impl Slot {
    const fn new(name: &'static str) -> Slot {
        Slot {
            pool: AtomicPtr::new(std::ptr::null_mut()),
            gen: AtomicU64::new(u64::MAX),
            init: Mutex::new(None),
            name,
        }
    }

    #[inline]
    fn get(&'static self, threads: fn() -> usize) -> Option<&'static rayon::ThreadPool> {
        let p = self.pool.load(Ordering::Acquire);
        if !p.is_null() && self.gen.load(Ordering::Acquire) == FORK_GEN.load(Ordering::Acquire) {
            // SAFETY: pools are leaked, never freed.
            return Some(unsafe { &*p });
        }
        self.build(threads)
    }

    #[cold]
    fn build(&'static self, threads: fn() -> usize) -> Option<&'static rayon::ThreadPool> {
        ATFORK.call_once(|| {
            // SAFETY: registering a plain extern "C" function without captured state.
            #[cfg(unix)]
            unsafe {
                libc::pthread_atfork(None, None, Some(after_fork_in_child));
            }
        });
        // In a forked child the parent's lock may be held by a thread that no longer exists: recover from poison
        // and never block on it for long.
        let mut failed = self.init.locked();
        let gen = FORK_GEN.load(Ordering::Acquire);
        let p = self.pool.load(Ordering::Acquire);
        if !p.is_null() && self.gen.load(Ordering::Acquire) == gen {
            // SAFETY: see get().
            return Some(unsafe { &*p });
        }
        if let Some((g, at)) = *failed {
            if g == gen && at.elapsed() < POOL_RETRY {
                return None;
            }
        }
        let name = self.name;
        let pool = match rayon::ThreadPoolBuilder::new()
            .num_threads(threads())
            .thread_name(move |i| format!("{name}-{i}"))
            .build()
        {
            Ok(pool) => pool,
            Err(_) => {
                // no threads (rayon has already stopped the ones it started): run serially for a while
                *failed = Some((gen, Instant::now()));
                return None;
            }
        };
        *failed = None;
        // The parent's pool (if any) is leaked on purpose: its threads do not exist in this process.
        let leaked: &'static rayon::ThreadPool = Box::leak(Box::new(pool));
        self.pool
            .store(leaked as *const _ as *mut _, Ordering::Release);
        self.gen.store(gen, Ordering::Release);
        Some(leaked)
    }
}

static POOL: Slot = Slot::new("ferrolab");
/// One thread: runs parallel code (its chunks, its order of combining them) when load leaves one core.
static SOLO: Slot = Slot::new("ferrolab-solo");
static FORK_GEN: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

/// After a failed attempt to start the pool, how long the work runs serially before the next attempt.
pub const POOL_RETRY: Duration = Duration::from_secs(1);

extern "C" fn after_fork_in_child() {
    FORK_GEN.fetch_add(1, Ordering::SeqCst);
}

/// The number of threads the pool uses: `FERROLAB_NUM_THREADS` if set to a positive integer, else the number of
/// available cores.
pub fn configured_threads() -> usize {
    std::env::var("FERROLAB_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// The pool (built on first use, rebuilt in a forked child), or `None` when its threads cannot be started: the
/// caller then runs the work on its own thread.
#[inline]
pub fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get(configured_threads)
}

/// The one-thread pool that runs parallel code under load (see [`maybe_parallel`]).
fn solo_pool() -> Option<&'static rayon::ThreadPool> {
    SOLO.get(|| 1)
}

/// Threads of the current pool (1 when there is none: the work runs on the calling thread).
pub fn num_threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
}

/// Runs `f` with `parallel = true` inside the pool when `work` (elements) is at least `threshold` and the pool has
/// more than one thread; with adaptation on and other processes leaving this one a single core
/// ([`usable_threads`]), inside a one-thread pool instead (the same code, so the same results). Otherwise (also
/// when the threads cannot be started) runs it on the calling thread with `parallel = false`.
#[inline]
pub fn maybe_parallel<R: Send>(
    work: usize,
    threshold: usize,
    f: impl FnOnce(bool) -> R + Send,
) -> R {
    if work >= threshold {
        if let Some(p) = pool() {
            if p.current_num_threads() > 1 {
                if usable_threads(p) > 1 {
                    return p.install(|| f(true));
                }
                // under load: the same parallel code on one thread, so that the results (which may depend on how
                // the work is split) do not depend on the load
                if let Some(s) = solo_pool() {
                    return s.install(|| f(true));
                }
            }
        }
    }
    f(false)
}

/// How long the calling thread of [`par_map`] waits actively (yielding) for its helpers' last indices before it
/// leaves them to the pool's scope, which puts it to sleep until they are done.
pub const CALLER_WAIT: Duration = Duration::from_micros(50);

/// `f(0), f(1), ..., f(n - 1)` in index order, computed by the calling thread together with the pool's threads.
///
/// [`maybe_parallel`] hands its work to the pool and puts the calling thread to sleep until the pool is done: a
/// hand-over to a pool thread and a wake-up of the caller per call. On a virtual machine, waking a thread whose
/// core has gone idle costs about 10 µs, as much as a 100,000-element reduction. Here the caller claims indices
/// itself, beside as many pool threads as [`usable_threads`] allows less one (a helper that wakes late finds
/// fewer indices left), and waits for the helpers' last indices briefly, yielding ([`CALLER_WAIT`]).
///
/// The values depend on the index only, not on which thread computed them, so the results are the same with
/// any number of threads, also without a pool (the work then runs on the calling thread). A panic in `f`
/// reaches the caller once every helper has stopped.
pub fn par_map<U: Send>(n: usize, f: impl Fn(usize) -> U + Sync) -> Vec<U> {
    use std::sync::atomic::AtomicUsize;
    let pool = pool().filter(|_| n > 1);
    let helpers = pool.map_or(0, |p| usable_threads(p).saturating_sub(1).min(n - 1));
    let Some(pool) = pool.filter(|_| helpers > 0) else {
        return (0..n).map(f).collect();
    };
    let next = AtomicUsize::new(0);
    let stopped = AtomicUsize::new(0);
    let parts: Mutex<Vec<(usize, U)>> = Mutex::new(Vec::with_capacity(n));
    let claim = || {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            mine.push((i, f(i)));
        }
        parts.locked().append(&mut mine);
    };
    pool.in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| {
                claim();
                stopped.fetch_add(1, Ordering::Release);
            });
        }
        claim();
        // a pool thread (a nested call) runs its own unstolen helpers at the scope's end: no wait here
        if pool.current_thread_index().is_none() {
            let t0 = Instant::now();
            while stopped.load(Ordering::Acquire) < helpers && t0.elapsed() < CALLER_WAIT {
                std::thread::yield_now();
            }
        }
    });
    let mut parts = parts.into_inner().unwrap_or_else(|e| e.into_inner());
    parts.sort_unstable_by_key(|&(i, _)| i);
    parts.into_iter().map(|(_, v)| v).collect()
}

/// [`par_map`] over the consecutive ranges of `chunk` indices that cover `0..len` (the last one shorter).
pub fn par_map_chunks<U: Send>(
    len: usize,
    chunk: usize,
    f: impl Fn(std::ops::Range<usize>) -> U + Sync,
) -> Vec<U> {
    par_map(len.div_ceil(chunk), |k| {
        f(k * chunk..((k + 1) * chunk).min(len))
    })
}

/// `f(at, piece)` for the consecutive pieces of `buf` (`group` elements each, the last one shorter; `at` is the
/// piece's offset), computed by the calling thread with the pool's threads as [`par_map`] does. For work whose
/// result does not depend on how it is split (elementwise ops).
pub fn par_pieces_mut<T: Send>(buf: &mut [T], group: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let group = group.max(1);
    let pieces: Vec<Mutex<&mut [T]>> = buf.chunks_mut(group).map(Mutex::new).collect();
    // each index takes its own piece's lock once: never contended
    par_map(pieces.len(), |k| f(k * group, &mut pieces[k].locked()));
}

// ---------------------------------------------------------------------------------------------------------
// Adapting to load

/// How often (at most) the load estimate is refreshed.
pub const LOAD_REFRESH: Duration = Duration::from_millis(50);

/// Cores that other processes kept busy over the last interval, in 1/1000 core (u64::MAX: unknown).
static OTHERS_BUSY_MILLI: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds since [`load_epoch`] of the last refresh (0: never).
static LOAD_AT: AtomicU64 = AtomicU64::new(0);
/// The previous sample: (wall ns since the epoch, machine busy ns, this process's CPU ns).
static LOAD_PREV: Mutex<Option<(u64, u64, u64)>> = Mutex::new(None);
static ADAPTIVE: AtomicU8 = AtomicU8::new(0); // 0 = unknown, 1 = off, 2 = on

fn load_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn adaptive() -> bool {
    match ADAPTIVE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("FERROLAB_ADAPTIVE_THREADS").is_ok_and(|v| v.trim() == "1");
            ADAPTIVE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Busy time of all CPUs since boot in nanoseconds, from the first line of `/proc/stat` (`None` elsewhere).
fn machine_busy_ns() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let mut f = std::fs::File::open("/proc/stat").ok()?;
        let n = f.read(&mut buf).ok()?;
        let line = std::str::from_utf8(&buf[..n]).ok()?.lines().next()?;
        let mut it = line.split_ascii_whitespace();
        if it.next()? != "cpu" {
            return None;
        }
        // user nice system idle iowait irq softirq steal (guest time is included in user)
        let v: Vec<u64> = it.take(8).filter_map(|t| t.parse().ok()).collect();
        if v.len() < 8 {
            return None;
        }
        let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = if hz > 0 { hz as u64 } else { 100 };
        Some(busy.saturating_mul(1_000_000_000 / hz))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// CPU time of this process (all its threads) in nanoseconds.
fn process_cpu_ns() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write into.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
            return None;
        }
        Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Cores that other processes keep busy (in 1/1000 core), refreshed when the last estimate is older than
/// [`LOAD_REFRESH`]; `None` when unknown (no `/proc/stat`, or adaptation turned off).
fn others_busy_milli() -> Option<u64> {
    if !adaptive() {
        return None;
    }
    let now = load_epoch().elapsed().as_nanos() as u64 + 1;
    let at = LOAD_AT.load(Ordering::Relaxed);
    if at != 0 && now - at.min(now) < LOAD_REFRESH.as_nanos() as u64 {
        let v = OTHERS_BUSY_MILLI.load(Ordering::Relaxed);
        return (v != u64::MAX).then_some(v);
    }
    // one thread refreshes; the others use the previous value
    if let Ok(mut prev) = LOAD_PREV.try_lock() {
        LOAD_AT.store(now, Ordering::Relaxed);
        let est = match (machine_busy_ns(), process_cpu_ns()) {
            (Some(busy), Some(mine)) => {
                let est = prev.and_then(|(t0, b0, m0)| {
                    let wall = now.checked_sub(t0).filter(|&w| w > 0)?;
                    let others = busy
                        .saturating_sub(b0)
                        .saturating_sub(mine.saturating_sub(m0));
                    Some(others.saturating_mul(1000) / wall)
                });
                *prev = Some((now, busy, mine));
                est
            }
            _ => Some(u64::MAX),
        };
        if let Some(v) = est {
            OTHERS_BUSY_MILLI.store(v, Ordering::Relaxed);
        }
    }
    let v = OTHERS_BUSY_MILLI.load(Ordering::Relaxed);
    (v != u64::MAX).then_some(v)
}

/// Threads of `pool` worth using now: with `FERROLAB_ADAPTIVE_THREADS=1`, the pool's size less the cores that
/// other processes keep busy (rounded to the nearest core), at least 1; otherwise (the default, or not Linux) the
/// pool's size.
pub fn usable_threads(pool: &rayon::ThreadPool) -> usize {
    let n = pool.current_num_threads();
    if n <= 1 {
        return n;
    }
    let Some(busy) = others_busy_milli() else {
        return n;
    };
    let cores = std::thread::available_parallelism().map_or(n, |c| c.get());
    let free = cores.saturating_sub(((busy + 500) / 1000) as usize);
    free.clamp(1, n)
}

/// Panics with `message` — on a pool thread when `parallel` and the pool runs (rayon hands the panic back to the
/// waiting thread). The binding's test hook for its panic boundary; not for any other use.
#[doc(hidden)]
pub fn panic_for_tests(message: &str, parallel: bool) {
    let threshold = if parallel { 0 } else { usize::MAX };
    maybe_parallel(1, threshold, |_| panic!("{message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe;
    impl Kernel for Probe {
        type Output = f64;
        #[inline(always)]
        fn run<M: Mode>(self) -> f64 {
            M::madd(2.0f64, 3.0, 1.0)
        }
    }

    #[test]
    fn dispatch_runs_a_kernel() {
        assert_eq!(dispatch(Probe), 7.0);
        assert!(matches!(
            simd_level(),
            SimdLevel::Baseline | SimdLevel::Avx2Fma
        ));
    }

    #[test]
    fn pool_is_reused_and_bounded() {
        let a = pool().expect("threads start in the tests") as *const _;
        let b = pool().expect("threads start in the tests") as *const _;
        assert_eq!(a, b);
        assert!(num_threads() >= 1);
        let r = maybe_parallel(10, 5, |par| par || num_threads() == 1);
        assert!(r);
    }

    #[test]
    fn par_map_gives_every_index_once_in_order_from_any_thread() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let want: Vec<usize> = (0..n).map(|i| i * i).collect();
            assert_eq!(par_map(n, |i| i * i), want, "n = {n}");
            // from inside the pool (a nested call) too
            let p = pool().expect("threads start in the tests");
            assert_eq!(p.install(|| par_map(n, |i| i * i)), want, "nested, n = {n}");
        }
        // two threads take part: index 0 waits until another index is done, which only another thread can do
        let p = pool().expect("threads start in the tests");
        if usable_threads(p) < 2 {
            return; // one thread (FERROLAB_NUM_THREADS=1, or adaptation under load): nothing to show
        }
        let seen = Mutex::new(std::collections::HashSet::new());
        let others = std::sync::atomic::AtomicUsize::new(0);
        let ids = par_map(64, |i| {
            let t0 = Instant::now();
            while i == 0
                && others.load(Ordering::Acquire) == 0
                && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_micros(100));
            }
            seen.locked().insert(std::thread::current().id());
            others.fetch_add(usize::from(i != 0), Ordering::Release);
            i
        });
        assert_eq!(ids, (0..64).collect::<Vec<_>>());
        assert!(
            seen.locked().len() >= 2,
            "only one thread computed the indices"
        );
    }

    #[test]
    fn par_pieces_mut_visits_every_element_once() {
        for (n, group) in [(0, 4), (1, 4), (10, 3), (4096 * 5 + 7, 4096), (100, 1000)] {
            let mut buf = vec![0usize; n];
            par_pieces_mut(&mut buf, group, |at, piece| {
                for (i, x) in piece.iter_mut().enumerate() {
                    *x += at + i + 1;
                }
            });
            assert!(
                buf.iter().enumerate().all(|(i, &x)| x == i + 1),
                "n = {n}, group = {group}"
            );
        }
    }

    #[test]
    fn par_map_passes_a_panic_on() {
        let r = std::panic::catch_unwind(|| {
            par_map(50, |i| {
                assert!(i != 37, "index {i} failed");
                i
            })
        });
        let msg = r.expect_err("the panic reaches the caller");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("index 37 failed"), "{msg}");
    }

    #[test]
    fn usable_threads_is_within_the_pool() {
        let p = pool().expect("threads start in the tests");
        if std::env::var_os("FERROLAB_ADAPTIVE_THREADS").is_none() {
            assert_eq!(usable_threads(p), p.current_num_threads(), "off by default");
        }
        ADAPTIVE.store(2, Ordering::Relaxed); // on, for this test (no other test depends on it)
        for _ in 0..3 {
            let t = usable_threads(p);
            assert!((1..=p.current_num_threads()).contains(&t), "{t}");
            std::thread::sleep(LOAD_REFRESH);
        }
        #[cfg(target_os = "linux")]
        {
            assert!(machine_busy_ns().is_some());
            assert!(process_cpu_ns().is_some());
        }
    }

    #[test]
    fn a_panic_on_a_pool_thread_reaches_the_caller() {
        for parallel in [false, true] {
            let r = std::panic::catch_unwind(|| panic_for_tests("boom", parallel));
            let payload = r.expect_err("panicked");
            assert_eq!(
                payload.downcast_ref::<String>().map(String::as_str),
                Some("boom")
            );
        }
    }
}
