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
//! A process that cannot start threads (at its `RLIMIT_NPROC`, a container's pids limit, out of memory for the
//! stacks) gets no pool: the work then runs on the calling thread, serially, with the same results, and the pool is
//! tried again after [`POOL_RETRY`]. Nothing here panics for want of threads.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// How the multiply-add of a kernel is evaluated.
pub trait Mode {
    /// `a * b + c`, fused (one rounding) where the instantiation has FMA.
    fn madd<T: crate::kernels::Real>(a: T, b: T, c: T) -> T;
}

/// Instantiation for CPUs with FMA: `mul_add` compiles to `vfmadd`.
pub struct Fused;
/// Baseline instantiation: separate multiply and add (a software `fma` would be slow).
pub struct Unfused;

impl Mode for Fused {
    #[inline(always)]
    fn madd<T: crate::kernels::Real>(a: T, b: T, c: T) -> T {
        a.mul_add(b, c)
    }
}
impl Mode for Unfused {
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

static POOL: AtomicPtr<rayon::ThreadPool> = AtomicPtr::new(std::ptr::null_mut());
static POOL_GEN: AtomicU64 = AtomicU64::new(u64::MAX);
static FORK_GEN: AtomicU64 = AtomicU64::new(0);
/// Guards building the pool; holds the generation and time of the last failed attempt.
static POOL_INIT: Mutex<Option<(u64, Instant)>> = Mutex::new(None);
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
pub fn pool() -> Option<&'static rayon::ThreadPool> {
    let p = POOL.load(Ordering::Acquire);
    if !p.is_null() && POOL_GEN.load(Ordering::Acquire) == FORK_GEN.load(Ordering::Acquire) {
        // SAFETY: pools are leaked, never freed.
        return Some(unsafe { &*p });
    }
    build_pool()
}

#[cold]
fn build_pool() -> Option<&'static rayon::ThreadPool> {
    ATFORK.call_once(|| {
        // SAFETY: registering a plain extern "C" function without captured state.
        #[cfg(unix)]
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
    // In a forked child the parent's lock may be held by a thread that no longer exists: recover from poison
    // and never block on it for long.
    let mut failed = POOL_INIT.lock().unwrap_or_else(|e| e.into_inner());
    let gen = FORK_GEN.load(Ordering::Acquire);
    let p = POOL.load(Ordering::Acquire);
    if !p.is_null() && POOL_GEN.load(Ordering::Acquire) == gen {
        // SAFETY: see pool().
        return Some(unsafe { &*p });
    }
    if let Some((g, at)) = *failed {
        if g == gen && at.elapsed() < POOL_RETRY {
            return None;
        }
    }
    let n = configured_threads();
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("ferrolab-{i}"))
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
    POOL.store(leaked as *const _ as *mut _, Ordering::Release);
    POOL_GEN.store(gen, Ordering::Release);
    Some(leaked)
}

/// Threads of the current pool (1 when there is none: the work runs on the calling thread).
pub fn num_threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
}

/// Runs `f` inside the pool when `work` (elements) is at least `threshold` and the pool has more than one
/// thread; otherwise (also when the pool's threads cannot be started) runs it on the calling thread with
/// `parallel = false`.
#[inline]
pub fn maybe_parallel<R: Send>(
    work: usize,
    threshold: usize,
    f: impl FnOnce(bool) -> R + Send,
) -> R {
    if work >= threshold {
        if let Some(p) = pool() {
            if p.current_num_threads() > 1 {
                return p.install(|| f(true));
            }
        }
    }
    f(false)
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
