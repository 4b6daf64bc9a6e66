//! The instrumentation seam.
//!
//! Every op runs through [`record`], which counts calls and errors and adds up wall time per
//! `(operation, device)` in native atomics. Disabled (`set_enabled(false)`) it is one relaxed load.

use crate::error::Result;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;

use super::clock::CLOCK;

macro_rules! ops {
    ($($v:ident => $s:literal),* $(,)?) => {
        /// The instrumented operations.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Op { $($v),* }
        /// Operation names, indexed by `Op as usize`.
        pub const OP_NAMES: &[&str] = &[$($s),*];
        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$v),*];
            pub fn name(self) -> &'static str { OP_NAMES[self as usize] }
            /// The name of the op's tracing span: `ferrolab.<op>`.
            pub fn span_name(self) -> &'static str { [$(concat!("ferrolab.", $s)),*][self as usize] }
        }
    };
}

ops! {
    Sum => "sum", Mean => "mean", Min => "min", Max => "max", Argmin => "argmin", Argmax => "argmax",
    Var => "var", Std => "std", Dot => "dot", Norm => "norm", Axpy => "axpy", Fma => "fma",
    Scale => "scale", Clip => "clip", Standardize => "standardize", Matmul => "matmul",
    Histogram => "histogram", Quantile => "quantile", ZscoreAnomalies => "zscore_anomalies",
    Cdist => "cdist", AdamStep => "adam_step",
}

const N_OPS: usize = OP_NAMES.len();

/// Where an op ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Device {
    Cpu = 0,
    Cuda = 1,
}

impl Device {
    /// The device a `device=` argument (`"cpu"`, `"auto"`, `"cuda"`, `"cuda:N"`) names in the metrics' `device`
    /// label: the GPU for `"cuda"` and `"cuda:..."`, else the CPU (also for an invalid name such as `"cudax"`,
    /// counted like `"tpu"`).
    pub fn of_str(device: &str) -> Device {
        if device == "cuda" || device.starts_with("cuda:") {
            Device::Cuda
        } else {
            Device::Cpu
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// Upper bounds (nanoseconds) of the `operation_duration_seconds` histogram buckets; a last `+Inf` bucket follows.
pub const BUCKET_BOUNDS_NS: [u64; 20] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];
const N_BUCKETS: usize = BUCKET_BOUNDS_NS.len() + 1;

/// Error classes counted per operation (the `error_type` label), see [`CoreError::kind`].
pub const ERROR_KINDS: [&str; 7] = [
    "TypeError",
    "ValueError",
    "DeviceUnavailableError",
    "OSError",
    "MemoryError",
    "InternalError",
    "Other",
];
const N_KINDS: usize = ERROR_KINDS.len();

fn kind_index(kind: &str) -> usize {
    ERROR_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(N_KINDS - 1)
}

/// One `(operation, device)` pair's counters. `nanos` comes first so that it shares a cache line with the buckets
/// of short calls: a timed call then touches one line.
#[repr(C, align(64))]
struct Cell {
    nanos: AtomicU64,
    /// Timed calls per duration bucket (their sum is the number of timed calls).
    buckets: [AtomicU64; N_BUCKETS],
    /// Failed calls per error class (timed or not).
    errors: [AtomicU64; N_KINDS],
    /// Calls that failed before reaching the kernel (argument conversion): counted, not timed.
    untimed_errors: AtomicU64,
    /// Calls whose GPU attempt failed and that were rerun on the CPU (`device="cuda"` cells only).
    fallbacks: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const CELL: Cell = Cell {
    buckets: [ZERO; N_BUCKETS],
    nanos: ZERO,
    errors: [ZERO; N_KINDS],
    untimed_errors: ZERO,
    fallbacks: ZERO,
};
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [Cell; 2] = [CELL, CELL];
static CELLS: [[Cell; 2]; N_OPS] = [ROW; N_OPS];
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Calibrates the seam's clock now (about 2 ms, asleep) instead of in the first op call, and reads
/// `FERROLAB_SLOW_OP_SECONDS` (see [`set_slow_threshold`]).
pub fn warm_up() {
    LazyLock::force(&CLOCK);
    let secs = std::env::var("FERROLAB_SLOW_OP_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0);
    if let Some(secs) = secs {
        set_slow_threshold(Some(secs));
    }
}

/// Turns instrumentation on or off (on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether instrumentation is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[inline]
fn bucket_of(ns: u64) -> usize {
    // most calls are short: the first bucket without the search
    if ns <= BUCKET_BOUNDS_NS[0] {
        return 0;
    }
    BUCKET_BOUNDS_NS.partition_point(|&b| b < ns)
}

/// Runs `f` as operation `op` on `device`, recording its count, duration and outcome.
#[inline]
pub fn record<R>(op: Op, device: Device, f: impl FnOnce() -> Result<R>) -> Result<R> {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let (r, nanos) = timed(f);
    record_timed(op, device, nanos, r.as_ref().err().map(|e| e.kind()));
    r
}

thread_local! {
    /// Set when [`record`] counted a failure on this thread, so that the binding's boundary does not count the
    /// same failure again (see [`take_counted`]).
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the last failure on this thread was already counted by [`record`] (and clears the mark). The binding
/// calls this when an op call fails: a failure the seam did not see (e.g. a wrong dtype found while converting
/// arguments) is then counted with [`record_untimed_error`].
pub fn take_counted() -> bool {
    COUNTED.with(|f| f.replace(false))
}

/// Times `f` with the seam's clock: its result and its duration in nanoseconds (0 while instrumentation is off).
#[inline]
pub fn timed<R>(f: impl FnOnce() -> R) -> (R, u64) {
    if !ENABLED.load(Ordering::Relaxed) {
        return (f(), 0);
    }
    let clock = &*CLOCK;
    let t0 = clock.raw();
    let r = f();
    (r, clock.delta_as_nanos(t0, clock.raw()))
}

/// Records a call of `op` on `device` that [`timed`] measured: a success, or a failure of error class `kind`.
pub fn record_timed(op: Op, device: Device, nanos: u64, error_kind: Option<&str>) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let c = &CELLS[op as usize][device as usize];
    c.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
    c.nanos.fetch_add(nanos, Ordering::Relaxed);
    if SPAN_SCOPES.load(Ordering::Relaxed) != 0 {
        span_exemplar(op, device, nanos);
    }
    if nanos >= SLOW_NS.load(Ordering::Relaxed) {
        slow(op, device, nanos, error_kind);
    }
    if let Some(kind) = error_kind {
        c.errors[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
        COUNTED.with(|f| f.set(true));
    }
}

/// Calls at least this long (nanoseconds) are logged as slow (`ferrolab.ops`, WARN): 1 s unless
/// `FERROLAB_SLOW_OP_SECONDS` (read by [`warm_up`], at import) or [`set_slow_threshold`] says otherwise. A plain
/// atomic: every op call reads it.
static SLOW_NS: AtomicU64 = AtomicU64::new(1_000_000_000);

/// Sets the duration from which a call is logged as slow (`None`: never).
pub fn set_slow_threshold(seconds: Option<f64>) {
    let ns = seconds.map_or(u64::MAX, |s| (s.max(0.0) * 1e9) as u64);
    SLOW_NS.store(ns, Ordering::Relaxed);
}

#[cold]
#[inline(never)]
fn slow(op: Op, device: Device, nanos: u64, error_kind: Option<&str>) {
    tracing::warn!(
        target: "ferrolab.ops",
        operation = op.name(),
        device = device.name(),
        duration_seconds = nanos as f64 / 1e9,
        error_type = error_kind.unwrap_or(""),
        "slow operation"
    );
}

/// Threads now running an op inside a sampled span ([`in_span`]): while 0, recording a call reads no
/// thread-local.
static SPAN_SCOPES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The (trace id, span id) of the sampled op span this thread is running, if any.
    static SPAN: std::cell::Cell<Option<(u128, u64)>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` (an op recorded through the seam) as the sampled span `(trace_id, span_id)`: the call's duration
/// bucket of `<prefix>_operation_duration_seconds` gets the span as its exemplar.
pub fn in_span<R>(trace_id: u128, span_id: u64, f: impl FnOnce() -> R) -> R {
    struct Scope(Option<(u128, u64)>);
    impl Drop for Scope {
        fn drop(&mut self) {
            SPAN.with(|s| s.set(self.0));
            SPAN_SCOPES.fetch_sub(1, Ordering::Relaxed);
        }
    }
    SPAN_SCOPES.fetch_add(1, Ordering::Relaxed);
    let _scope = Scope(SPAN.with(|s| s.replace(Some((trace_id, span_id)))));
    f()
}

/// The (trace id, span id) of the sampled op span this thread is running, if any.
pub fn current_span() -> Option<(u128, u64)> {
    if SPAN_SCOPES.load(Ordering::Relaxed) == 0 {
        return None;
    }
    SPAN.with(|s| s.get())
}

#[cold]
#[inline(never)]
fn span_exemplar(op: Op, device: Device, nanos: u64) {
    let Some((trace_id, span_id)) = SPAN.with(|s| s.get()) else {
        return;
    };
    let family = format!("{}_operation_duration_seconds", super::metrics::prefix());
    let key = super::openmetrics::series_key([("operation", op.name()), ("device", device.name())]);
    let ex = super::openmetrics::Exemplar::of_span(trace_id, span_id, nanos as f64 / 1e9);
    super::openmetrics::put(&family, key, bucket_of(nanos), ex);
}

/// Counts a call of `op` whose GPU attempt failed and that was rerun on the CPU (the rerun is recorded as a CPU
/// call of its own): `ferrolab_operations_total{device="cuda",status="fallback"}`.
pub fn record_fallback(op: Op) {
    if ENABLED.load(Ordering::Relaxed) {
        CELLS[op as usize][Device::Cuda as usize]
            .fallbacks
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a call of `op` that failed with error class `kind` before it reached the kernel (e.g. a wrong dtype
/// found while converting arguments). It counts as a failed call but has no duration.
pub fn record_untimed_error(op: Op, device: Device, kind: &str) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let c = &CELLS[op as usize][device as usize];
    c.errors[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    c.untimed_errors.fetch_add(1, Ordering::Relaxed);
}

/// Looks an operation up by its name.
pub fn op_by_name(name: &str) -> Option<Op> {
    Op::ALL.iter().copied().find(|o| o.name() == name)
}

/// Counters of one `(operation, device)` pair.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStats {
    pub operation: &'static str,
    pub device: &'static str,
    /// All calls: successful + failed + fallen back.
    pub calls: u64,
    pub errors: u64,
    /// Calls rerun on the CPU after their GPU attempt failed.
    pub fallbacks: u64,
    /// Failed calls per class, in the order of [`ERROR_KINDS`].
    pub errors_by_kind: [u64; N_KINDS],
    /// Wall time of the timed calls.
    pub seconds: f64,
    /// Timed calls per bucket of [`BUCKET_BOUNDS_NS`] (not cumulative; the last is `+Inf`).
    pub buckets: [u64; N_BUCKETS],
}

impl OpStats {
    /// Calls that were timed (the histogram's count).
    pub fn timed_calls(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// All pairs with at least one call.
pub fn snapshot() -> Vec<OpStats> {
    let mut v = Vec::new();
    for op in Op::ALL {
        for dev in [Device::Cpu, Device::Cuda] {
            let c = &CELLS[*op as usize][dev as usize];
            let buckets: [u64; N_BUCKETS] =
                std::array::from_fn(|i| c.buckets[i].load(Ordering::Relaxed));
            let untimed = c.untimed_errors.load(Ordering::Relaxed);
            let fallbacks = c.fallbacks.load(Ordering::Relaxed);
            let timed: u64 = buckets.iter().sum();
            if timed + untimed + fallbacks == 0 {
                continue;
            }
            let errors_by_kind: [u64; N_KINDS] =
                std::array::from_fn(|i| c.errors[i].load(Ordering::Relaxed));
            v.push(OpStats {
                operation: op.name(),
                device: dev.name(),
                calls: timed + untimed + fallbacks,
                errors: errors_by_kind.iter().sum(),
                fallbacks,
                errors_by_kind,
                seconds: c.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
                buckets,
            });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CoreError;

    #[test]
    fn device_labels() {
        assert_eq!(Device::of_str("cuda"), Device::Cuda);
        assert_eq!(Device::of_str("cuda:1"), Device::Cuda);
        assert_eq!(Device::of_str("cpu"), Device::Cpu);
        assert_eq!(Device::of_str("auto"), Device::Cpu);
        assert_eq!(Device::of_str("cudax"), Device::Cpu);
    }

    #[test]
    fn span_names_are_ferrolab_dot_op() {
        assert_eq!(Op::Sum.span_name(), "ferrolab.sum");
        assert_eq!(Op::AdamStep.span_name(), "ferrolab.adam_step");
    }

    #[test]
    fn counts_calls_and_errors() {
        let before = snapshot()
            .into_iter()
            .find(|s| s.operation == "cdist" && s.device == "cpu")
            .map(|s| (s.calls, s.errors))
            .unwrap_or((0, 0));
        record(Op::Cdist, Device::Cpu, || Ok(1)).unwrap();
        let _ = record::<()>(Op::Cdist, Device::Cpu, || {
            Err(CoreError::value("cdist", "a", "bad"))
        });
        let s = snapshot()
            .into_iter()
            .find(|s| s.operation == "cdist")
            .unwrap();
        assert_eq!((s.calls, s.errors), (before.0 + 2, before.1 + 1));
        assert!(s.errors_by_kind[1] >= 1);
        assert_eq!(s.timed_calls(), s.calls);
    }

    #[test]
    fn buckets_are_upper_inclusive() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(10_000_000_000), BUCKET_BOUNDS_NS.len() - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKET_BOUNDS_NS.len());
    }

    #[test]
    fn untimed_errors_count_as_failed_calls() {
        record_untimed_error(Op::Clip, Device::Cpu, "TypeError");
        let s = snapshot()
            .into_iter()
            .find(|s| s.operation == "clip")
            .unwrap();
        assert!(s.calls >= 1 && s.errors >= 1);
        assert!(s.errors_by_kind[0] >= 1);
        assert_eq!(op_by_name("clip"), Some(Op::Clip));
        assert_eq!(op_by_name("nope"), None);
    }
}
