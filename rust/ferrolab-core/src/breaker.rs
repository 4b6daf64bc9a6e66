//! Circuit breaker: a lock-free state machine (no Python here).
//!
//! A [`Breaker`] is in one of five [`State`]s. Its whole state lives in one atomic word (state, half-open permits
//! taken, half-open successes and a generation that changes on every transition), so admitting a call in the
//! closed state is one atomic load, and nothing is ever locked while a guarded call runs:
//!
//! * `Closed`: calls pass; failures are counted. It trips to `Open` after `failure_threshold` consecutive failures,
//!   or, once `minimum_calls` calls are in the window, when the failure rate (`failure_rate`) or the slow-call rate
//!   (`slow_call_rate`) over the last `window` calls (or the last `window_seconds` seconds) reaches its threshold.
//!   The rules combine: whichever fires first trips.
//! * `Open`: calls are rejected until the open period ends (`reset_timeout`; with `max_reset_timeout`, doubled on
//!   every re-opening up to that cap, with jitter); the first call after it moves the breaker to `HalfOpen`.
//! * `HalfOpen`: exactly `half_open_max_calls` trial calls are admitted; `success_threshold` successful trials close
//!   it, one failed trial reopens it. A trial that ends without a verdict (ignored or cancelled) gives its permit
//!   back.
//! * `ForcedOpen` / `Disabled`: set by hand; every call is rejected / every call passes unrecorded until
//!   [`Breaker::reset`].
//!
//! Each admitted call gets a [`Ticket`] that records the generation it was admitted in; its outcome only moves the
//! state machine while that generation is current (a call that outlives a transition is counted in the metrics but
//! cannot, say, close a breaker that reopened meanwhile). [`Permit`] wraps a ticket and gives it back on drop.
//!
//! Time is `f64` seconds: every entry point takes `now: Option<f64>`; `None` reads a native monotonic clock (the
//! CPU's time-stamp counter where it is invariant), `Some(t)` is an injected clock (tests).
//!
//! Named breakers are listed by [`registered`]; a collector in [`crate::telemetry::metrics::registry`] exports
//! `<prefix>_circuit_breaker_state{name,state}`, `<prefix>_circuit_breaker_calls_total{name,outcome}` and
//! `<prefix>_circuit_breaker_transitions_total{name,from,to}` at scrape time from the breakers' atomics.

use crate::error::{CoreError, Result};
use crate::sync::MutexExt;
use crate::telemetry::clock::CLOCK;
use crate::telemetry::{metrics, seam};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use std::any::Any;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

// ---------------------------------------------------------------------------------------------------------------
// States, outcomes, configuration

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
    ForcedOpen = 3,
    Disabled = 4,
}

impl State {
    /// All states, in the order of their numeric values.
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    /// The state's name as the Python API and the metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }

    fn from_bits(b: u64) -> State {
        match b & STATE_MASK {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::Disabled,
        }
    }
}

/// How a guarded call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Returned normally, or raised an exception that is not recorded as a failure.
    Success,
    /// Raised a recorded exception.
    Failure,
    /// Raised an ignored exception: no verdict, counted as `ignored`.
    Ignored,
    /// Was cancelled or abandoned (asyncio cancellation, interpreter exit, a dropped permit): no verdict, counted as
    /// `ignored`.
    Cancelled,
}

/// The `outcome` label values of `circuit_breaker_calls_total`, in the order of [`Stats::counts`].
pub const OUTCOMES: [&str; 5] = ["success", "failure", "rejected", "ignored", "slow"];
const C_SUCCESS: usize = 0;
const C_FAILURE: usize = 1;
const C_REJECTED: usize = 2;
const C_IGNORED: usize = 3;
const C_SLOW: usize = 4;

/// Whether a breaker counts its calls (the `calls_total` series and the lifetime counts of [`Stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsMode {
    /// Count while the instrumentation seam is enabled (`fl.metrics.configure(enabled=...)`).
    Follow,
    /// Always count and export.
    On,
    /// Never count; the breaker's series are not exported.
    Off,
}

/// The largest count window (the counters of a count window are packed into one atomic word).
pub const MAX_WINDOW: u32 = (1 << FIELD_BITS) - 1;
/// The largest `half_open_max_calls`.
pub const MAX_HALF_OPEN_CALLS: u32 = (1 << TAKEN_BITS) - 1;

/// Parameters of a breaker (the defaults are those of `fl.CircuitBreaker`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Consecutive failures that trip a closed breaker; `None` turns this rule off.
    pub failure_threshold: Option<u32>,
    /// Failure rate in (0, 1] over the window that trips it; `None` turns this rule off.
    pub failure_rate: Option<f64>,
    /// Size of the count window (the last `window` calls).
    pub window: u32,
    /// A time window of this many seconds instead of the count window.
    pub window_seconds: Option<f64>,
    /// Calls that must be in the window before a rate rule can trip (at most `window` for a count window).
    pub minimum_calls: u32,
    /// A call that takes longer than this (seconds) is slow.
    pub slow_call_duration: Option<f64>,
    /// Slow-call rate in (0, 1] over the window that trips it; needs `slow_call_duration`.
    pub slow_call_rate: Option<f64>,
    /// Seconds the breaker stays open.
    pub reset_timeout: f64,
    /// When set, the open period doubles on every re-opening (from half-open) up to this cap, with jitter.
    pub max_reset_timeout: Option<f64>,
    /// Trial calls admitted in one half-open period.
    pub half_open_max_calls: u32,
    /// Successful trials that close the breaker (at most `half_open_max_calls`).
    pub success_threshold: u32,
    /// Whether calls are counted and exported.
    pub metrics: MetricsMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            failure_threshold: Some(5),
            failure_rate: None,
            window: 100,
            window_seconds: None,
            minimum_calls: 10,
            slow_call_duration: None,
            slow_call_rate: None,
            reset_timeout: 30.0,
            max_reset_timeout: None,
            half_open_max_calls: 1,
            success_threshold: 1,
            metrics: MetricsMode::Follow,
        }
    }
}

const FUNC: &str = "CircuitBreaker";

fn rate_ok(r: Option<f64>) -> bool {
    r.is_none_or(|r| r > 0.0 && r <= 1.0)
}

fn seconds_ok(s: Option<f64>, zero: bool) -> bool {
    s.is_none_or(|s| s.is_finite() && (s > 0.0 || (zero && s == 0.0)))
}

impl Config {
    /// Checks every parameter; errors name `CircuitBreaker()` and the argument.
    pub fn validate(&self) -> Result<()> {
        let v = |arg: &'static str, msg: String| Err(CoreError::value(FUNC, arg, msg));
        if self.failure_threshold == Some(0) {
            return v(
                "failure_threshold",
                "is 0; expected an int >= 1 or None".into(),
            );
        }
        if !rate_ok(self.failure_rate) {
            return v(
                "failure_rate",
                format!(
                    "is {}; expected a rate in (0, 1] or None",
                    self.failure_rate.unwrap_or(f64::NAN)
                ),
            );
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return v(
                "window",
                format!("is {}; expected an int in 1..={MAX_WINDOW}", self.window),
            );
        }
        if !seconds_ok(self.window_seconds, false) {
            return v(
                "window_seconds",
                format!(
                    "is {}; expected a positive number of seconds or None",
                    self.window_seconds.unwrap_or(f64::NAN)
                ),
            );
        }
        if self.minimum_calls == 0 {
            return v("minimum_calls", "is 0; expected an int >= 1".into());
        }
        if !seconds_ok(self.slow_call_duration, false) {
            return v(
                "slow_call_duration",
                format!(
                    "is {}; expected a positive number of seconds or None",
                    self.slow_call_duration.unwrap_or(f64::NAN)
                ),
            );
        }
        if !rate_ok(self.slow_call_rate) {
            return v(
                "slow_call_rate",
                format!(
                    "is {}; expected a rate in (0, 1] or None",
                    self.slow_call_rate.unwrap_or(f64::NAN)
                ),
            );
        }
        if self.slow_call_rate.is_some() && self.slow_call_duration.is_none() {
            return v(
                "slow_call_rate",
                "needs slow_call_duration (the time above which a call is slow)".into(),
            );
        }
        if !seconds_ok(Some(self.reset_timeout), true) {
            return v(
                "reset_timeout",
                format!(
                    "is {}; expected a number of seconds >= 0",
                    self.reset_timeout
                ),
            );
        }
        if let Some(m) = self.max_reset_timeout {
            if !(m.is_finite() && m >= self.reset_timeout) {
                return v(
                    "max_reset_timeout",
                    format!(
                        "is {m}; expected None or a number of seconds >= reset_timeout ({})",
                        self.reset_timeout
                    ),
                );
            }
        }
        if self.half_open_max_calls == 0 || self.half_open_max_calls > MAX_HALF_OPEN_CALLS {
            return v(
                "half_open_max_calls",
                format!(
                    "is {}; expected an int in 1..={MAX_HALF_OPEN_CALLS}",
                    self.half_open_max_calls
                ),
            );
        }
        if self.success_threshold == 0 || self.success_threshold > self.half_open_max_calls {
            return v(
                "success_threshold",
                format!(
                    "is {}; expected an int in 1..=half_open_max_calls ({}): only that many trial calls are \
                     admitted while half-open",
                    self.success_threshold, self.half_open_max_calls
                ),
            );
        }
        Ok(())
    }

    /// Sets the parameter `key` of `CircuitBreaker()` from `v`, checking its type and that it fits (the ranges are
    /// [`validate`](Self::validate)'s). `Ok(false)`: `key` is none of the parameters kept here.
    pub fn set(&mut self, key: &str, v: Arg) -> Result<bool> {
        let Some(&arg) = PARAMS.iter().find(|p| **p == key) else {
            return Ok(false);
        };
        match arg {
            "failure_threshold" => self.failure_threshold = v.int(arg, true)?,
            "failure_rate" => self.failure_rate = v.float(arg, true)?,
            "window" => self.window = v.int(arg, false)?.unwrap_or(0),
            "window_seconds" => self.window_seconds = v.float(arg, true)?,
            "minimum_calls" => self.minimum_calls = v.int(arg, false)?.unwrap_or(0),
            "slow_call_duration" => self.slow_call_duration = v.float(arg, true)?,
            "slow_call_rate" => self.slow_call_rate = v.float(arg, true)?,
            "reset_timeout" => self.reset_timeout = v.float(arg, false)?.unwrap_or(f64::NAN),
            "max_reset_timeout" => self.max_reset_timeout = v.float(arg, true)?,
            "half_open_max_calls" => self.half_open_max_calls = v.int(arg, false)?.unwrap_or(0),
            "success_threshold" => self.success_threshold = v.int(arg, false)?.unwrap_or(0),
            _ => {
                self.metrics = match v {
                    Arg::None => MetricsMode::Follow,
                    Arg::Bool(true) => MetricsMode::On,
                    Arg::Bool(false) => MetricsMode::Off,
                    _ => return Err(v.type_err(arg, "a bool or None")),
                }
            }
        }
        Ok(true)
    }

    /// Whether a rate rule needs the sliding window.
    fn uses_window(&self) -> bool {
        self.failure_rate.is_some() || self.slow_call_rate.is_some()
    }
}

/// The parameters [`Config::set`] takes, as `CircuitBreaker()` names them.
pub const PARAMS: [&str; 12] = [
    "failure_threshold",
    "failure_rate",
    "window",
    "window_seconds",
    "minimum_calls",
    "slow_call_duration",
    "slow_call_rate",
    "reset_timeout",
    "max_reset_timeout",
    "half_open_max_calls",
    "success_threshold",
    "metrics",
];

/// A parameter value as a binding reads it, for [`Config::set`].
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    None,
    Bool(bool),
    /// An integer, saturated to the `i64` range.
    Int(i64),
    Float(f64),
    /// Anything else, by its type's name (for the message).
    Other(String),
}

impl Arg {
    fn type_err(&self, arg: &'static str, expected: &str) -> CoreError {
        let got = match self {
            Arg::None => "NoneType",
            Arg::Bool(_) => "bool",
            Arg::Int(_) => "int",
            Arg::Float(_) => "float",
            Arg::Other(t) => t,
        };
        CoreError::type_err(FUNC, arg, format!("must be {expected}, got {got}"))
    }

    /// An int (not a bool) that fits a `u32`; `None` for None when `none_ok`.
    fn int(&self, arg: &'static str, none_ok: bool) -> Result<Option<u32>> {
        match *self {
            Arg::None if none_ok => Ok(None),
            Arg::Int(v) => u32::try_from(v).map(Some).map_err(|_| {
                let shown = if v == i64::MIN || v == i64::MAX {
                    "at or beyond the limits of int64".to_string() // saturated by the binding
                } else {
                    v.to_string()
                };
                CoreError::value(
                    FUNC,
                    arg,
                    format!("is {shown}; expected an int in [0, {}]", u32::MAX),
                )
            }),
            _ => Err(self.type_err(arg, if none_ok { "an int or None" } else { "an int" })),
        }
    }

    /// A number (int or float, not a bool); `None` for None when `none_ok`.
    fn float(&self, arg: &'static str, none_ok: bool) -> Result<Option<f64>> {
        match *self {
            Arg::None if none_ok => Ok(None),
            Arg::Int(v) => Ok(Some(v as f64)),
            Arg::Float(v) => Ok(Some(v)),
            _ => Err(self.type_err(
                arg,
                if none_ok {
                    "a number or None"
                } else {
                    "a number"
                },
            )),
        }
    }
}

/// The message of a call rejected by breaker `name` in `state` (open, half-open or forced open).
pub fn rejection_message(name: &str, state: State) -> String {
    match state {
        State::Open => format!("circuit breaker '{name}' is open"),
        State::HalfOpen => {
            format!("circuit breaker '{name}' is half-open and its trial calls are in flight")
        }
        _ => format!("circuit breaker '{name}' is forced open"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The state word: state (3 bits) | half-open permits taken (16) | half-open successes (16) | generation (29)

const STATE_MASK: u64 = 0b111;
const TAKEN_SHIFT: u32 = 3;
const TAKEN_BITS: u32 = 16;
const SUCC_SHIFT: u32 = TAKEN_SHIFT + TAKEN_BITS;
const SUCC_BITS: u32 = 16;
const GEN_SHIFT: u32 = SUCC_SHIFT + SUCC_BITS;
const GEN_MASK: u32 = (1 << (64 - GEN_SHIFT)) - 1;
const FIELD16: u64 = (1 << 16) - 1;

#[inline]
fn pack(state: State, taken: u32, succ: u32, gen: u32) -> u64 {
    state as u64
        | ((taken as u64) << TAKEN_SHIFT)
        | ((succ as u64) << SUCC_SHIFT)
        | (((gen & GEN_MASK) as u64) << GEN_SHIFT)
}

#[derive(Debug, Clone, Copy)]
struct Word {
    state: State,
    taken: u32,
    succ: u32,
    gen: u32,
}

#[inline]
fn unpack(w: u64) -> Word {
    Word {
        state: State::from_bits(w),
        taken: ((w >> TAKEN_SHIFT) & FIELD16) as u32,
        succ: ((w >> SUCC_SHIFT) & FIELD16) as u32,
        gen: (w >> GEN_SHIFT) as u32,
    }
}

#[inline]
fn next_gen(g: u32) -> u32 {
    g.wrapping_add(1) & GEN_MASK
}

// ---------------------------------------------------------------------------------------------------------------
// Clock

/// The first reading of the native clock ([`crate::telemetry::clock`]).
static BASE: LazyLock<u64> = LazyLock::new(|| CLOCK.raw());

/// Seconds on the native monotonic clock (since its first use in this process).
#[inline]
pub fn monotonic() -> f64 {
    let base = *BASE;
    CLOCK.delta_as_nanos(base, CLOCK.raw()) as f64 * 1e-9
}

/// A lazily read "now": the injected time, or the native clock read at most once.
struct Now {
    given: Option<f64>,
    read: f64,
}

impl Now {
    #[inline]
    fn new(given: Option<f64>) -> Now {
        Now {
            given,
            read: f64::NAN,
        }
    }

    #[inline]
    fn get(&mut self) -> f64 {
        if let Some(t) = self.given {
            return t;
        }
        if self.read.is_nan() {
            self.read = monotonic();
        }
        self.read
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Sliding windows

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// Calls, failures and slow calls of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

/// The last `n` outcomes in a ring of one byte each; the three totals are packed in one atomic word, so
/// recording is a fetch-add on the ring head, a swap of the slot and a fetch-add of the totals.
struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    totals: AtomicU64,
}

#[inline]
fn slot_packed(s: u8) -> u64 {
    (s & 1) as u64
        | ((((s >> 1) & 1) as u64) << FIELD_BITS)
        | ((((s >> 2) & 1) as u64) << (2 * FIELD_BITS))
}

impl CountWindow {
    fn new(n: u32) -> CountWindow {
        CountWindow {
            slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            totals: AtomicU64::new(0),
        }
    }

    fn decode(&self, p: u64) -> Option<WindowCounts> {
        let c = WindowCounts {
            calls: p & FIELD_MASK,
            failures: (p >> FIELD_BITS) & FIELD_MASK,
            slow: (p >> (2 * FIELD_BITS)) & FIELD_MASK,
        };
        // a reader racing two writers of the same slot may see a transient borrow: no verdict from that
        (c.calls <= self.slots.len() as u64 && c.failures <= c.calls && c.slow <= c.calls)
            .then_some(c)
    }

    fn record(&self, failure: bool, slow: bool) -> Option<WindowCounts> {
        let s = 1 | ((failure as u8) << 1) | ((slow as u8) << 2);
        let i = (self.head.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64) as usize;
        let old = self.slots[i].swap(s, Ordering::AcqRel);
        let delta = slot_packed(s).wrapping_sub(slot_packed(old));
        let p = self
            .totals
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        self.decode(p)
    }

    fn counts(&self) -> WindowCounts {
        self.decode(self.totals.load(Ordering::Acquire))
            .unwrap_or_default()
    }

    fn clear(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            if old != 0 {
                self.totals.fetch_sub(slot_packed(old), Ordering::AcqRel);
            }
        }
    }
}

/// Calls of the last `window_seconds` in `n` buckets (10 to 3600, 1 s each from 10 s to an hour) behind a short
/// lock that is never held while a guarded call runs. The window is the current bucket and the `n - 1` before it.
struct TimeWindow {
    width: f64,
    inner: Mutex<TimeBuckets>,
}

struct TimeBuckets {
    /// (epoch, counts) per bucket; epoch = floor(t / width).
    buckets: Vec<(i64, WindowCounts)>,
    totals: WindowCounts,
    last: i64,
}

impl TimeBuckets {
    fn evict(&mut self, i: usize) {
        let (_, c) = self.buckets[i];
        self.totals.calls -= c.calls;
        self.totals.failures -= c.failures;
        self.totals.slow -= c.slow;
        self.buckets[i].1 = WindowCounts::default();
    }

    /// Moves the window to epoch `e` (time never goes back: an earlier `e` counts in the latest bucket).
    fn advance(&mut self, e: i64) -> i64 {
        let n = self.buckets.len() as i64;
        if e <= self.last {
            return self.last;
        }
        let steps = (e - self.last).min(n);
        for k in 0..steps {
            let ep = e - k;
            let i = ep.rem_euclid(n) as usize;
            self.evict(i);
            self.buckets[i].0 = ep;
        }
        self.last = e;
        e
    }
}

impl TimeWindow {
    fn new(seconds: f64) -> TimeWindow {
        let n = (seconds.ceil() as usize).clamp(10, 3600);
        TimeWindow {
            width: seconds / n as f64,
            inner: Mutex::new(TimeBuckets {
                buckets: vec![(i64::MIN, WindowCounts::default()); n],
                totals: WindowCounts::default(),
                last: i64::MIN,
            }),
        }
    }

    fn epoch(&self, t: f64) -> i64 {
        (t / self.width).floor() as i64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TimeBuckets> {
        self.inner.locked()
    }

    fn record(&self, failure: bool, slow: bool, t: f64) -> WindowCounts {
        let e = self.epoch(t);
        let mut b = self.lock();
        if b.last == i64::MIN {
            b.last = e - b.buckets.len() as i64;
        }
        let e = b.advance(e);
        let i = e.rem_euclid(b.buckets.len() as i64) as usize;
        let c = &mut b.buckets[i].1;
        c.calls += 1;
        c.failures += failure as u64;
        c.slow += slow as u64;
        b.totals.calls += 1;
        b.totals.failures += failure as u64;
        b.totals.slow += slow as u64;
        b.totals
    }

    fn counts(&self, t: f64) -> WindowCounts {
        let e = self.epoch(t);
        let mut b = self.lock();
        if b.last != i64::MIN {
            b.advance(e);
        }
        b.totals
    }

    fn clear(&self) {
        let mut b = self.lock();
        for i in 0..b.buckets.len() {
            b.evict(i);
        }
    }
}

enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    fn record(&self, failure: bool, slow: bool, now: &mut Now) -> Option<WindowCounts> {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => Some(w.record(failure, slow, now.get())),
        }
    }

    fn counts(&self, now: &mut Now) -> WindowCounts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now.get()),
        }
    }

    fn clear(&self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tickets, admissions, transitions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Admitted while closed.
    Closed,
    /// A half-open trial (holds a permit).
    Trial,
    /// Admitted while disabled: counted, never recorded.
    Passthrough,
}

/// An admitted call: give it back with [`Breaker::complete`] exactly once (or use a [`Permit`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ticket {
    gen: u32,
    kind: Kind,
    /// Start time when the breaker times its calls, else NaN.
    start: f64,
}

impl Ticket {
    /// Whether this call is a half-open trial.
    pub fn is_trial(&self) -> bool {
        self.kind == Kind::Trial
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rejection {
    /// The state that rejected it (`Open`, `HalfOpen` with every permit taken, or `ForcedOpen`).
    pub state: State,
    /// Seconds until a call may be admitted again: the rest of the open period; 0 in half-open (the trials decide
    /// soon); `None` when forced open.
    pub retry_after: Option<f64>,
}

/// The answer of [`Breaker::acquire`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Admitted(Ticket),
    Rejected(Rejection),
}

/// A state change (for listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

/// Counters and rates of a breaker, see [`Breaker::stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub state: State,
    /// Lifetime counts by outcome, in the order of [`OUTCOMES`] (counted while metrics are on).
    pub counts: [u64; 5],
    pub consecutive_failures: u64,
    /// The sliding window (`None` without a rate rule).
    pub window: Option<WindowCounts>,
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    /// Openings since the breaker last closed (the backoff exponent).
    pub open_count: u32,
    /// Seconds until the open period ends (open only).
    pub retry_after: Option<f64>,
    /// Half-open permits taken and successful trials so far (half-open only).
    pub half_open_calls: u32,
    pub half_open_successes: u32,
    /// Transitions counted so far, `[from][to]` by state value.
    pub transitions: [[u64; 5]; 5],
}

/// One value of [`Stats::items`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatValue {
    Str(&'static str),
    Int(u64),
    Float(f64),
    None,
}

impl Stats {
    /// The stats as `fl.CircuitBreaker.stats()` lists them (after `name`, before `transitions`), in its order.
    pub fn items(&self) -> Vec<(&'static str, StatValue)> {
        use StatValue::{Float, Int, Str};
        let int = |v: Option<u64>| v.map_or(StatValue::None, Int);
        let float = |v: Option<f64>| v.map_or(StatValue::None, Float);
        let w = self.window;
        let mut v = vec![("state", Str(self.state.name()))];
        v.extend(OUTCOMES.iter().zip(self.counts).map(|(o, n)| (*o, Int(n))));
        v.extend([
            ("consecutive_failures", Int(self.consecutive_failures)),
            ("window_calls", int(w.map(|w| w.calls))),
            ("window_failures", int(w.map(|w| w.failures))),
            ("window_slow", int(w.map(|w| w.slow))),
            ("failure_rate", float(self.failure_rate)),
            ("slow_call_rate", float(self.slow_call_rate)),
            ("open_count", Int(self.open_count.into())),
            ("retry_after", float(self.retry_after)),
            ("half_open_calls", Int(self.half_open_calls.into())),
            ("half_open_successes", Int(self.half_open_successes.into())),
        ]);
        v
    }

    /// The transitions that happened, as `("closed->open", n)`, in state order.
    pub fn transition_counts(&self) -> Vec<(String, u64)> {
        State::ALL
            .iter()
            .flat_map(|&from| State::ALL.iter().map(move |&to| (from, to)))
            .filter_map(|(from, to)| {
                let n = self.transitions[from as usize][to as usize];
                (n > 0).then(|| (format!("{}->{}", from.name(), to.name()), n))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The breaker

/// A circuit breaker. Share it with `Arc`; every method takes `&self`.
pub struct Breaker {
    name: String,
    cfg: Config,
    word: AtomicU64,
    consecutive: AtomicU64,
    /// End of the open period (f64 bits), valid for generation `open_gen`.
    open_until: AtomicU64,
    open_gen: AtomicU32,
    /// Openings since the last close.
    opened: AtomicU32,
    window: Option<Window>,
    /// Whether calls need a start time (slow-call detection).
    timed: bool,
    counts: [AtomicU64; 5],
    transitions: [[AtomicU64; 5]; 5],
    rng: AtomicU64,
    /// An opaque value of the embedding (see [`Breaker::attach`]).
    handle: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicU64; 5] = [ZERO; 5];

impl Breaker {
    /// A closed breaker (not registered: see [`register`]).
    pub fn new(name: &str, cfg: Config) -> Result<Breaker> {
        cfg.validate()?;
        let window = if !cfg.uses_window() {
            None
        } else if let Some(s) = cfg.window_seconds {
            Some(Window::Time(TimeWindow::new(s)))
        } else {
            Some(Window::Count(CountWindow::new(cfg.window)))
        };
        let seed = {
            // a per-breaker seed for the backoff jitter: address, time and name
            let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ (monotonic().to_bits());
            for b in name.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
            h | 1
        };
        Ok(Breaker {
            name: name.to_string(),
            timed: cfg.slow_call_duration.is_some(),
            cfg,
            word: AtomicU64::new(pack(State::Closed, 0, 0, 0)),
            consecutive: AtomicU64::new(0),
            open_until: AtomicU64::new(0f64.to_bits()),
            open_gen: AtomicU32::new(u32::MAX),
            opened: AtomicU32::new(0),
            window,
            counts: ROW,
            transitions: [ROW; 5],
            rng: AtomicU64::new(seed),
            handle: OnceLock::new(),
        })
    }

    /// Attaches `h`, an opaque value of the embedding (the Python bindings attach a weak reference to their
    /// object, so that [`registered`] lists the Python objects too); `false` if a value is attached already.
    pub fn attach<T: Any + Send + Sync>(&self, h: T) -> bool {
        self.handle.set(Box::new(h)).is_ok()
    }

    /// The value attached with [`attach`](Self::attach), if it is a `T`.
    pub fn attached<T: Any>(&self) -> Option<&T> {
        self.handle.get()?.downcast_ref()
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current state.
    #[inline]
    pub fn state(&self) -> State {
        State::from_bits(self.word.load(Ordering::Acquire))
    }

    /// Whether calls are counted now.
    #[inline]
    pub fn counting(&self) -> bool {
        match self.cfg.metrics {
            MetricsMode::Follow => seam::enabled(),
            MetricsMode::On => true,
            MetricsMode::Off => false,
        }
    }

    #[inline]
    fn count(&self, i: usize) {
        if self.counting() {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks to run a call. A `Rejected` answer has been counted; an `Admitted` one must be completed. The
    /// transition, if any, is the open period ending (open -> half-open).
    #[inline]
    pub fn acquire(&self, now: Option<f64>) -> (Admission, Option<Transition>) {
        let w = self.word.load(Ordering::Acquire);
        if w & STATE_MASK == State::Closed as u64 {
            let start = if self.timed {
                now.unwrap_or_else(monotonic)
            } else {
                f64::NAN
            };
            let gen = unpack(w).gen;
            return (
                Admission::Admitted(Ticket {
                    gen,
                    kind: Kind::Closed,
                    start,
                }),
                None,
            );
        }
        self.acquire_slow(w, now)
    }

    #[cold]
    fn acquire_slow(&self, mut w: u64, now: Option<f64>) -> (Admission, Option<Transition>) {
        let mut now = Now::new(now);
        let mut tr = None;
        loop {
            let cur = unpack(w);
            let start = |now: &mut Now| if self.timed { now.get() } else { f64::NAN };
            match cur.state {
                State::Closed | State::Disabled => {
                    let kind = if cur.state == State::Closed {
                        Kind::Closed
                    } else {
                        Kind::Passthrough
                    };
                    let t = Ticket {
                        gen: cur.gen,
                        kind,
                        start: start(&mut now),
                    };
                    return (Admission::Admitted(t), tr);
                }
                State::ForcedOpen => {
                    self.count(C_REJECTED);
                    let r = Rejection {
                        state: State::ForcedOpen,
                        retry_after: None,
                    };
                    return (Admission::Rejected(r), tr);
                }
                State::Open => {
                    let t = now.get();
                    let until = if self.open_gen.load(Ordering::Acquire) == cur.gen {
                        f64::from_bits(self.open_until.load(Ordering::Acquire))
                    } else {
                        // opened a moment ago by another thread that is still writing the end of the period
                        f64::INFINITY
                    };
                    if t < until {
                        self.count(C_REJECTED);
                        let retry = if until.is_finite() {
                            until - t
                        } else {
                            self.cfg.reset_timeout
                        };
                        let r = Rejection {
                            state: State::Open,
                            retry_after: Some(retry),
                        };
                        return (Admission::Rejected(r), tr);
                    }
                    let nw = pack(State::HalfOpen, 0, 0, next_gen(cur.gen));
                    match self
                        .word
                        .compare_exchange(w, nw, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            tr = Some(self.note(State::Open, State::HalfOpen));
                            w = nw;
                        }
                        Err(actual) => w = actual,
                    }
                }
                State::HalfOpen => {
                    if cur.taken >= self.cfg.half_open_max_calls {
                        self.count(C_REJECTED);
                        let r = Rejection {
                            state: State::HalfOpen,
                            retry_after: Some(0.0),
                        };
                        return (Admission::Rejected(r), tr);
                    }
                    let nw = pack(State::HalfOpen, cur.taken + 1, cur.succ, cur.gen);
                    match self
                        .word
                        .compare_exchange(w, nw, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            let t = Ticket {
                                gen: cur.gen,
                                kind: Kind::Trial,
                                start: start(&mut now),
                            };
                            return (Admission::Admitted(t), tr);
                        }
                        Err(actual) => w = actual,
                    }
                }
            }
        }
    }

    /// Reports how an admitted call ended; returns the transition it caused, if any.
    #[inline]
    pub fn complete(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        now: Option<f64>,
    ) -> Option<Transition> {
        let mut now = Now::new(now);
        let verdict = matches!(outcome, Outcome::Success | Outcome::Failure);
        let slow = verdict
            && match self.cfg.slow_call_duration {
                Some(d) if !ticket.start.is_nan() => now.get() - ticket.start > d,
                _ => false,
            };
        if self.counting() {
            let i = match outcome {
                Outcome::Success => C_SUCCESS,
                Outcome::Failure => C_FAILURE,
                Outcome::Ignored | Outcome::Cancelled => C_IGNORED,
            };
            self.counts[i].fetch_add(1, Ordering::Relaxed);
            if slow {
                self.counts[C_SLOW].fetch_add(1, Ordering::Relaxed);
            }
        }
        match ticket.kind {
            Kind::Passthrough => None,
            Kind::Closed if verdict => self.complete_closed(ticket.gen, outcome, slow, &mut now),
            Kind::Closed => None,
            Kind::Trial => self.complete_trial(ticket.gen, outcome, slow, &mut now),
        }
    }

    #[inline]
    fn complete_closed(
        &self,
        gen: u32,
        outcome: Outcome,
        slow: bool,
        now: &mut Now,
    ) -> Option<Transition> {
        let w = self.word.load(Ordering::Acquire);
        if w != pack(State::Closed, 0, 0, gen) {
            return None; // admitted before a transition: no say in the new state
        }
        let failure = outcome == Outcome::Failure;
        let mut trip = false;
        if failure {
            let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
            trip = self.cfg.failure_threshold.is_some_and(|th| n >= th as u64);
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if let Some(win) = &self.window {
            if let Some(c) = win.record(failure, slow, now) {
                trip |= self.rates_trip(&c);
            }
        }
        if trip {
            self.open(w, State::Closed, now).ok()
        } else {
            None
        }
    }

    fn min_calls(&self) -> u64 {
        match self.cfg.window_seconds {
            Some(_) => self.cfg.minimum_calls as u64,
            None => self.cfg.minimum_calls.min(self.cfg.window) as u64,
        }
    }

    fn rates_trip(&self, c: &WindowCounts) -> bool {
        if c.calls == 0 || c.calls < self.min_calls() {
            return false;
        }
        let n = c.calls as f64;
        self.cfg
            .failure_rate
            .is_some_and(|r| c.failures as f64 / n >= r)
            || self
                .cfg
                .slow_call_rate
                .is_some_and(|r| c.slow as f64 / n >= r)
    }

    fn complete_trial(
        &self,
        gen: u32,
        outcome: Outcome,
        slow: bool,
        now: &mut Now,
    ) -> Option<Transition> {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let cur = unpack(w);
            if cur.state != State::HalfOpen || cur.gen != gen {
                return None;
            }
            let fail = outcome == Outcome::Failure || (slow && self.cfg.slow_call_rate.is_some());
            let res = match outcome {
                Outcome::Ignored | Outcome::Cancelled => {
                    // no verdict: the permit goes back
                    let nw = pack(State::HalfOpen, cur.taken.saturating_sub(1), cur.succ, gen);
                    match self
                        .word
                        .compare_exchange(w, nw, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => return None,
                        Err(a) => Err(a),
                    }
                }
                _ if fail => self.open(w, State::HalfOpen, now).map(Some),
                _ => {
                    let succ = cur.succ + 1;
                    if succ >= self.cfg.success_threshold {
                        self.close_from(w, State::HalfOpen).map(Some)
                    } else {
                        let nw = pack(State::HalfOpen, cur.taken, succ, gen);
                        self.word
                            .compare_exchange(w, nw, Ordering::AcqRel, Ordering::Acquire)
                            .map(|_| None)
                    }
                }
            };
            match res {
                Ok(tr) => return tr,
                Err(actual) => w = actual,
            }
        }
    }

    /// Length of the `k`-th open period since the last close (k >= 1).
    fn open_period(&self, k: u32) -> f64 {
        let base = self.cfg.reset_timeout;
        let Some(max) = self.cfg.max_reset_timeout else {
            return base;
        };
        let d = (base * 2f64.powi(k.saturating_sub(1).min(1023) as i32)).min(max);
        // jitter: up to a quarter shorter, so many clients do not all come back at once
        d * (1.0 - 0.25 * self.random())
    }

    /// A uniform number in [0, 1) (xorshift64*).
    fn random(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// CAS `w` -> open (next generation), then publishes the end of the open period.
    fn open(&self, w: u64, from: State, now: &mut Now) -> std::result::Result<Transition, u64> {
        let gen = next_gen(unpack(w).gen);
        let nw = pack(State::Open, 0, 0, gen);
        self.word
            .compare_exchange(w, nw, Ordering::AcqRel, Ordering::Acquire)?;
        let k = self.opened.fetch_add(1, Ordering::AcqRel) + 1;
        let until = now.get() + self.open_period(k);
        self.open_until.store(until.to_bits(), Ordering::Release);
        self.open_gen.store(gen, Ordering::Release);
        Ok(self.note(from, State::Open))
    }

    fn reset_counters(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.opened.store(0, Ordering::Relaxed);
        if let Some(win) = &self.window {
            win.clear();
        }
    }

    fn close_from(&self, w: u64, from: State) -> std::result::Result<Transition, u64> {
        // nobody records into the window while it is not closed: clear it before closing
        self.reset_counters();
        let nw = pack(State::Closed, 0, 0, next_gen(unpack(w).gen));
        self.word
            .compare_exchange(w, nw, Ordering::AcqRel, Ordering::Acquire)?;
        Ok(self.note(from, State::Closed))
    }

    fn note(&self, from: State, to: State) -> Transition {
        self.transitions[from as usize][to as usize].fetch_add(1, Ordering::Relaxed);
        if to == State::Open || to == State::ForcedOpen {
            tracing::warn!(target: "ferrolab.breaker", breaker = %self.name, from = from.name(), to = to.name(), "circuit breaker opened");
        } else {
            tracing::info!(target: "ferrolab.breaker", breaker = %self.name, from = from.name(), to = to.name(), "circuit breaker state changed");
        }
        Transition { from, to }
    }

    fn set_state(&self, to: State) -> Option<Transition> {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let cur = unpack(w);
            if cur.state == to && to != State::Closed {
                return None;
            }
            if to == State::Closed {
                self.reset_counters();
            }
            let nw = pack(to, 0, 0, next_gen(cur.gen));
            match self
                .word
                .compare_exchange(w, nw, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (cur.state != to).then(|| self.note(cur.state, to)),
                Err(a) => w = a,
            }
        }
    }

    /// Opens the breaker until [`reset`](Self::reset): every call is rejected.
    pub fn force_open(&self) -> Option<Transition> {
        self.set_state(State::ForcedOpen)
    }

    /// Lets every call through unrecorded until [`reset`](Self::reset).
    pub fn disable(&self) -> Option<Transition> {
        self.set_state(State::Disabled)
    }

    /// Closes the breaker and clears its failure counts and window (calls in flight no longer count).
    pub fn reset(&self) -> Option<Transition> {
        self.set_state(State::Closed)
    }

    /// Counters and rates now.
    pub fn stats(&self, now: Option<f64>) -> Stats {
        let mut now = Now::new(now);
        let cur = unpack(self.word.load(Ordering::Acquire));
        let window = self.window.as_ref().map(|w| w.counts(&mut now));
        let rate = |x: u64| {
            window
                .filter(|c| c.calls > 0)
                .map(|c| x as f64 / c.calls as f64)
        };
        let retry_after = (cur.state == State::Open).then(|| {
            if self.open_gen.load(Ordering::Acquire) == cur.gen {
                (f64::from_bits(self.open_until.load(Ordering::Acquire)) - now.get()).max(0.0)
            } else {
                self.cfg.reset_timeout
            }
        });
        Stats {
            state: cur.state,
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            failure_rate: window.and_then(|c| rate(c.failures)),
            slow_call_rate: window.and_then(|c| rate(c.slow)),
            window,
            open_count: self.opened.load(Ordering::Relaxed),
            retry_after,
            half_open_calls: if cur.state == State::HalfOpen {
                cur.taken
            } else {
                0
            },
            half_open_successes: if cur.state == State::HalfOpen {
                cur.succ
            } else {
                0
            },
            transitions: std::array::from_fn(|i| {
                std::array::from_fn(|j| self.transitions[i][j].load(Ordering::Relaxed))
            }),
        }
    }
}

/// An admitted call that gives its permit back (as [`Outcome::Cancelled`]) when dropped without
/// [`complete`](Self::complete): a half-open trial that panics, is cancelled or is abandoned frees its slot.
pub struct Permit<B: Deref<Target = Breaker>> {
    breaker: B,
    ticket: Option<Ticket>,
}

impl<B: Deref<Target = Breaker>> Permit<B> {
    /// Wraps a ticket admitted by `breaker`.
    pub fn new(breaker: B, ticket: Ticket) -> Self {
        Permit {
            breaker,
            ticket: Some(ticket),
        }
    }

    /// Reports the outcome (consumes the permit).
    pub fn complete(mut self, outcome: Outcome, now: Option<f64>) -> Option<Transition> {
        let t = self.ticket.take()?;
        self.breaker.complete(t, outcome, now)
    }

    /// The ticket, to be completed by the caller (the permit no longer gives it back).
    pub fn into_ticket(mut self) -> Ticket {
        self.ticket
            .take()
            .expect("a permit holds its ticket until consumed")
    }
}

impl<B: Deref<Target = Breaker>> Drop for Permit<B> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.breaker.complete(t, Outcome::Cancelled, None);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Registry and Prometheus collector

static BREAKERS: LazyLock<Mutex<HashMap<String, Weak<Breaker>>>> = LazyLock::new(|| {
    // registered once, with the first breaker; families are named with the prefix current at scrape time
    let _ = metrics::registry().register(Box::new(BreakerCollector::new()));
    Mutex::new(HashMap::new())
});

/// Lists `breaker` under its name (replacing an earlier breaker of the same name) and exports its series.
pub fn register(breaker: &Arc<Breaker>) {
    let mut map = BREAKERS.locked();
    map.retain(|_, w| w.strong_count() > 0);
    map.insert(breaker.name.clone(), Arc::downgrade(breaker));
}

/// Removes `breaker` from the list if it is the one listed under its name.
pub fn unregister(breaker: &Breaker) {
    let mut map = BREAKERS.locked();
    if map
        .get(&breaker.name)
        .is_some_and(|w| std::ptr::eq(w.as_ptr(), breaker))
    {
        map.remove(&breaker.name);
    }
}

/// The live registered breakers, sorted by name.
pub fn registered() -> Vec<Arc<Breaker>> {
    let map = BREAKERS.locked();
    let mut v: Vec<Arc<Breaker>> = map.values().filter_map(Weak::upgrade).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

const STATE_HELP: &str =
    "State of each circuit breaker (1 for the current state, 0 for the others).";
const CALLS_HELP: &str =
    "Calls through each circuit breaker by outcome (slow counts slow calls a second time).";
const TRANSITIONS_HELP: &str = "State transitions of each circuit breaker.";

/// Transitions exported even at zero, so that `increase()` sees the first one.
const USUAL: [(State, State); 4] = [
    (State::Closed, State::Open),
    (State::Open, State::HalfOpen),
    (State::HalfOpen, State::Closed),
    (State::HalfOpen, State::Open),
];

struct BreakerCollector {
    descs: Vec<Desc>,
}

impl BreakerCollector {
    fn new() -> BreakerCollector {
        let p = metrics::prefix();
        let d = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                format!("{p}_{name}"),
                help.to_string(),
                labels.iter().map(|s| s.to_string()).collect(),
                HashMap::new(),
            )
            .expect("valid breaker series names")
        };
        BreakerCollector {
            descs: vec![
                d("circuit_breaker_state", STATE_HELP, &["name", "state"]),
                d(
                    "circuit_breaker_calls_total",
                    CALLS_HELP,
                    &["name", "outcome"],
                ),
                d(
                    "circuit_breaker_transitions_total",
                    TRANSITIONS_HELP,
                    &["name", "from", "to"],
                ),
            ],
        }
    }
}

fn metric(pairs: &[(&str, &str)]) -> proto::Metric {
    proto::Metric::from_label(
        pairs
            .iter()
            .map(|(k, v)| {
                let mut l = proto::LabelPair::default();
                l.set_name(k.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect(),
    )
}

fn family(name: String, help: &str, t: MetricType, ms: Vec<proto::Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(name);
    mf.set_help(help.to_string());
    mf.set_field_type(t);
    mf.set_metric(ms);
    mf
}

impl Collector for BreakerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut states = Vec::new();
        let mut calls = Vec::new();
        let mut trans = Vec::new();
        for b in registered() {
            if b.cfg.metrics == MetricsMode::Off {
                continue;
            }
            let name = b.name.as_str();
            let cur = b.state();
            for s in State::ALL {
                let mut m = metric(&[("name", name), ("state", s.name())]);
                let mut g = proto::Gauge::default();
                g.set_value(if s == cur { 1.0 } else { 0.0 });
                m.set_gauge(g);
                states.push(m);
            }
            for (i, o) in OUTCOMES.iter().enumerate() {
                let mut m = metric(&[("name", name), ("outcome", o)]);
                let mut c = proto::Counter::default();
                c.set_value(b.counts[i].load(Ordering::Relaxed) as f64);
                m.set_counter(c);
                calls.push(m);
            }
            for from in State::ALL {
                for to in State::ALL {
                    let n = b.transitions[from as usize][to as usize].load(Ordering::Relaxed);
                    if n > 0 || USUAL.contains(&(from, to)) {
                        let mut m =
                            metric(&[("name", name), ("from", from.name()), ("to", to.name())]);
                        let mut c = proto::Counter::default();
                        c.set_value(n as f64);
                        m.set_counter(c);
                        trans.push(m);
                    }
                }
            }
        }
        if states.is_empty() {
            return Vec::new();
        }
        let p = metrics::prefix();
        vec![
            family(
                format!("{p}_circuit_breaker_state"),
                STATE_HELP,
                MetricType::GAUGE,
                states,
            ),
            family(
                format!("{p}_circuit_breaker_calls_total"),
                CALLS_HELP,
                MetricType::COUNTER,
                calls,
            ),
            family(
                format!("{p}_circuit_breaker_transitions_total"),
                TRANSITIONS_HELP,
                MetricType::COUNTER,
                trans,
            ),
        ]
    }
}

// ---------------------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    #[test]
    fn set_checks_types_and_fit() {
        let mut c = Config::default();
        assert!(c.set("failure_threshold", Arg::None).unwrap());
        assert_eq!(c.failure_threshold, None);
        assert!(c.set("window", Arg::Int(7)).unwrap());
        assert_eq!(c.window, 7);
        assert!(c.set("reset_timeout", Arg::Int(2)).unwrap());
        assert_eq!(c.reset_timeout, 2.0);
        assert!(c.set("failure_rate", Arg::Float(0.5)).unwrap());
        assert!(c.set("metrics", Arg::Bool(false)).unwrap());
        assert_eq!(c.metrics, MetricsMode::Off);
        assert!(!c.set("record", Arg::None).unwrap());
        let msg = |k, v| c.clone().set(k, v).unwrap_err().to_string();
        assert_eq!(
            msg("window", Arg::None),
            "CircuitBreaker(): argument 'window' must be an int, got NoneType"
        );
        assert_eq!(
            msg("failure_threshold", Arg::Bool(true)),
            "CircuitBreaker(): argument 'failure_threshold' must be an int or None, got bool"
        );
        assert_eq!(
            msg("failure_rate", Arg::Other("str".into())),
            "CircuitBreaker(): argument 'failure_rate' must be a number or None, got str"
        );
        assert_eq!(
            msg("window", Arg::Int(-1)),
            "CircuitBreaker(): argument 'window' is -1; expected an int in [0, 4294967295]"
        );
        assert_eq!(
            msg("window", Arg::Int(i64::MIN)),
            "CircuitBreaker(): argument 'window' is at or beyond the limits of int64; expected an int in \
             [0, 4294967295]"
        );
        // a huge negative number of seconds is negative (the binding saturates it to i64::MIN)
        let mut neg = c.clone();
        neg.set("reset_timeout", Arg::Int(i64::MIN)).unwrap();
        assert!(matches!(neg.validate(), Err(CoreError::Value { .. })));
        assert_eq!(
            msg("metrics", Arg::Int(1)),
            "CircuitBreaker(): argument 'metrics' must be a bool or None, got int"
        );
        assert!(matches!(
            c.clone().set("window", Arg::Float(1.0)),
            Err(CoreError::Type { .. })
        ));
        assert!(matches!(
            c.clone().set("window", Arg::Int(1 << 40)),
            Err(CoreError::Value { .. })
        ));
    }

    #[test]
    fn stats_items_and_transitions() {
        let br = b(Config {
            failure_threshold: Some(1),
            ..cfg()
        });
        call(&br, 0.0, 0.0, F);
        let s = br.stats(Some(0.0));
        let items = s.items();
        assert_eq!(items[0], ("state", StatValue::Str("open")));
        assert_eq!(items[2], ("failure", StatValue::Int(1)));
        assert!(items.contains(&("window_calls", StatValue::None)));
        assert!(items.contains(&("retry_after", StatValue::Float(30.0))));
        assert_eq!(items.len(), 16);
        assert_eq!(s.transition_counts(), vec![("closed->open".to_string(), 1)]);
        assert_eq!(rejection_message("x", Open), "circuit breaker 'x' is open");
    }

    #[test]
    fn attached_values_and_permit_tickets() {
        let br = Arc::new(b(cfg()));
        assert!(br.attached::<u8>().is_none());
        assert!(br.attach(7u8));
        assert!(!br.attach(8u8));
        assert_eq!(br.attached::<u8>(), Some(&7));
        assert!(br.attached::<u16>().is_none());
        let (Admission::Admitted(t), _) = br.acquire(Some(0.0)) else {
            panic!("closed breaker rejected")
        };
        let t2 = Permit::new(&*br, t).into_ticket();
        assert_eq!(format!("{t:?}"), format!("{t2:?}")); // (its start time is NaN)
        br.complete(t2, S, Some(0.0));
        assert_eq!(br.stats(None).counts[0], 1);
    }

    fn cfg() -> Config {
        Config {
            metrics: MetricsMode::On,
            ..Config::default()
        }
    }

    fn b(c: Config) -> Breaker {
        Breaker::new("test", c).unwrap()
    }

    /// Runs one call at time `t` with `outcome` lasting `dur`; `None` when rejected.
    fn call(br: &Breaker, t: f64, dur: f64, outcome: Outcome) -> Option<Vec<Transition>> {
        let mut trs = Vec::new();
        let (a, tr) = br.acquire(Some(t));
        trs.extend(tr);
        match a {
            Admission::Admitted(tk) => {
                trs.extend(br.complete(tk, outcome, Some(t + dur)));
                Some(trs)
            }
            Admission::Rejected(_) => None,
        }
    }

    use Outcome::{Cancelled, Failure as F, Ignored, Success as S};

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// (time, duration, outcome, expect admitted, expected state after)
        Call(f64, f64, Outcome, bool, State),
        Force,
        Disable,
        Reset,
    }
    use Step::*;

    fn run(name: &str, c: Config, steps: &[Step]) {
        let br = b(c);
        for (i, s) in steps.iter().enumerate() {
            match *s {
                Call(t, d, o, admitted, after) => {
                    let r = call(&br, t, d, o);
                    assert_eq!(r.is_some(), admitted, "{name}: step {i} {s:?} admission");
                    assert_eq!(br.state(), after, "{name}: step {i} {s:?} state");
                }
                Force => {
                    br.force_open();
                }
                Disable => {
                    br.disable();
                }
                Reset => {
                    br.reset();
                }
            }
        }
    }

    #[test]
    fn state_machine_table() {
        let consecutive = Config {
            failure_threshold: Some(3),
            reset_timeout: 10.0,
            ..cfg()
        };
        let cases: Vec<(&str, Config, Vec<Step>)> = vec![
            (
                "three consecutive failures trip, a success in between resets",
                consecutive.clone(),
                vec![
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, S, true, Closed),
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, F, true, Closed),
                    Call(1.0, 0.0, F, true, Open),
                    Call(5.0, 0.0, S, false, Open),
                    Call(10.99, 0.0, S, false, Open),
                    // 1.0 + 10 = 11.0: half-open, the trial succeeds and closes it
                    Call(11.0, 0.0, S, true, Closed),
                ],
            ),
            (
                "a failed trial reopens for a new period",
                consecutive.clone(),
                vec![
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, F, true, Open),
                    Call(10.0, 0.0, F, true, Open),
                    Call(19.9, 0.0, S, false, Open),
                    Call(20.0, 0.0, S, true, Closed),
                ],
            ),
            (
                "ignored and cancelled calls neither count nor reset",
                consecutive.clone(),
                vec![
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, Ignored, true, Closed),
                    Call(0.0, 0.0, Cancelled, true, Closed),
                    Call(0.0, 0.0, F, true, Open),
                ],
            ),
            (
                "forced open rejects until reset; disabled admits failures without tripping",
                consecutive.clone(),
                vec![
                    Force,
                    Call(100.0, 0.0, S, false, ForcedOpen),
                    Disable,
                    Call(100.0, 0.0, F, true, Disabled),
                    Call(100.0, 0.0, F, true, Disabled),
                    Call(100.0, 0.0, F, true, Disabled),
                    Call(100.0, 0.0, F, true, Disabled),
                    Reset,
                    Call(100.0, 0.0, S, true, Closed),
                ],
            ),
            (
                "failure rate over a count window once minimum_calls were seen",
                Config {
                    failure_threshold: None,
                    failure_rate: Some(0.5),
                    window: 4,
                    minimum_calls: 4,
                    ..cfg()
                },
                vec![
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, F, true, Closed),
                    // 4 calls, 4 failures: trips at the 4th
                    Call(0.0, 0.0, S, true, Open),
                ],
            ),
            (
                "the count window forgets old failures",
                Config {
                    failure_threshold: None,
                    failure_rate: Some(0.5),
                    window: 4,
                    minimum_calls: 4,
                    ..cfg()
                },
                vec![
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, S, true, Closed),
                    Call(0.0, 0.0, S, true, Closed),
                    Call(0.0, 0.0, S, true, Closed),
                    Call(0.0, 0.0, S, true, Closed),
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.0, 0.0, S, true, Closed),
                    // window now S F S F: 2/4 = 0.5 trips
                    Call(0.0, 0.0, F, true, Open),
                ],
            ),
            (
                "slow-call rate trips even when every call succeeds",
                Config {
                    failure_threshold: None,
                    slow_call_duration: Some(1.0),
                    slow_call_rate: Some(0.5),
                    window: 10,
                    minimum_calls: 2,
                    ..cfg()
                },
                vec![
                    Call(0.0, 0.5, S, true, Closed),
                    Call(1.0, 1.0, S, true, Closed),
                    Call(2.0, 1.5, S, true, Closed),
                    // 4 calls, 2 slow
                    Call(4.0, 2.0, S, true, Open),
                ],
            ),
            (
                "time window: failures older than window_seconds are forgotten",
                Config {
                    failure_threshold: None,
                    failure_rate: Some(0.5),
                    window_seconds: Some(10.0),
                    minimum_calls: 3,
                    ..cfg()
                },
                vec![
                    Call(0.0, 0.0, F, true, Closed),
                    Call(0.5, 0.0, F, true, Closed),
                    Call(20.0, 0.0, S, true, Closed),
                    Call(20.5, 0.0, S, true, Closed),
                    Call(21.0, 0.0, F, true, Closed),
                    // window 20..30 holds S S F F: 2/4 trips
                    Call(22.0, 0.0, F, true, Open),
                ],
            ),
        ];
        for (name, c, steps) in cases {
            run(name, c, &steps);
        }
    }

    #[test]
    fn half_open_admits_exactly_n_and_permits_come_back() {
        let br = b(Config {
            failure_threshold: Some(1),
            reset_timeout: 1.0,
            half_open_max_calls: 3,
            success_threshold: 2,
            ..cfg()
        });
        call(&br, 0.0, 0.0, F);
        assert_eq!(br.state(), Open);
        let mut tickets = Vec::new();
        for _ in 0..10 {
            if let (Admission::Admitted(t), _) = br.acquire(Some(2.0)) {
                assert!(t.is_trial());
                tickets.push(t);
            }
        }
        assert_eq!(tickets.len(), 3);
        assert_eq!(br.state(), HalfOpen);
        // a cancelled trial gives its permit back: exactly one more is admitted
        br.complete(tickets.pop().unwrap(), Cancelled, Some(2.0));
        let (a, _) = br.acquire(Some(2.0));
        let Admission::Admitted(t) = a else {
            panic!("permit not returned")
        };
        tickets.push(t);
        assert!(matches!(br.acquire(Some(2.0)).0, Admission::Rejected(_)));
        // a dropped permit too
        {
            let _p = Permit::new(&br, tickets.pop().unwrap());
        }
        assert!(matches!(br.acquire(Some(2.0)).0, Admission::Admitted(_)));
        // two successes close it
        assert_eq!(br.complete(tickets[0], S, Some(2.0)), None);
        assert_eq!(
            br.complete(tickets[1], S, Some(2.0)),
            Some(Transition {
                from: HalfOpen,
                to: Closed
            })
        );
        let s = br.stats(Some(2.0));
        assert_eq!(s.transitions[Closed as usize][Open as usize], 1);
        assert_eq!(s.transitions[Open as usize][HalfOpen as usize], 1);
        assert_eq!(s.transitions[HalfOpen as usize][Closed as usize], 1);
        assert_eq!(s.counts[C_REJECTED], 8);
    }

    #[test]
    fn stale_calls_do_not_move_the_new_state() {
        let br = b(Config {
            failure_threshold: Some(1),
            reset_timeout: 1.0,
            ..cfg()
        });
        let Admission::Admitted(old) = br.acquire(Some(0.0)).0 else {
            panic!()
        };
        call(&br, 0.0, 0.0, F);
        assert_eq!(br.state(), Open);
        let Admission::Admitted(trial) = br.acquire(Some(5.0)).0 else {
            panic!()
        };
        // the call admitted while closed succeeds late: it cannot close the half-open breaker
        assert_eq!(br.complete(old, S, Some(5.0)), None);
        assert_eq!(br.state(), HalfOpen);
        assert!(br.complete(trial, S, Some(5.0)).is_some());
        assert_eq!(br.state(), Closed);
        assert_eq!(br.stats(None).counts[C_SUCCESS], 2);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let br = b(Config {
            failure_threshold: Some(1),
            reset_timeout: 1.0,
            max_reset_timeout: Some(5.0),
            ..cfg()
        });
        let mut t = 0.0;
        call(&br, t, 0.0, F);
        for k in 1..=6u32 {
            let full = (2f64.powi(k as i32 - 1)).min(5.0);
            let r = br.stats(Some(t)).retry_after.unwrap();
            assert!(r <= full && r >= 0.75 * full, "k={k}: {r} vs {full}");
            assert!(matches!(
                br.acquire(Some(t + r - 1e-9)).0,
                Admission::Rejected(_)
            ));
            t += r + 1e-6;
            // the trial fails: open again, for longer
            let trs = call(&br, t, 0.0, F).unwrap();
            assert_eq!(trs.len(), 2);
            assert_eq!(br.state(), Open);
        }
        // a success closes it and resets the exponent
        t += 5.0;
        call(&br, t, 0.0, S).unwrap();
        call(&br, t, 0.0, F).unwrap();
        let r = br.stats(Some(t)).retry_after.unwrap();
        assert!((0.75..=1.0).contains(&r), "{r}");
    }

    #[test]
    fn rejection_reports_retry_after() {
        let br = b(Config {
            failure_threshold: Some(1),
            reset_timeout: 30.0,
            ..cfg()
        });
        call(&br, 100.0, 0.0, F);
        let (a, _) = br.acquire(Some(110.0));
        assert_eq!(
            a,
            Admission::Rejected(Rejection {
                state: Open,
                retry_after: Some(20.0)
            })
        );
        br.force_open();
        let (a, _) = br.acquire(Some(110.0));
        assert_eq!(
            a,
            Admission::Rejected(Rejection {
                state: ForcedOpen,
                retry_after: None
            })
        );
    }

    #[test]
    fn slow_trial_reopens_only_with_a_slow_rate_rule() {
        let c = Config {
            failure_threshold: Some(1),
            reset_timeout: 1.0,
            slow_call_duration: Some(0.1),
            ..cfg()
        };
        let br = b(c.clone());
        call(&br, 0.0, 0.0, F);
        call(&br, 1.0, 0.5, S);
        assert_eq!(br.state(), Closed);
        assert_eq!(br.stats(None).counts[C_SLOW], 1);
        let br = b(Config {
            slow_call_rate: Some(1.0),
            ..c
        });
        call(&br, 0.0, 0.0, F);
        call(&br, 1.0, 0.5, S);
        assert_eq!(br.state(), Open);
    }

    #[test]
    fn invalid_configs_name_the_argument() {
        let bad = [
            (
                Config {
                    failure_rate: Some(0.0),
                    ..cfg()
                },
                "failure_rate",
            ),
            (
                Config {
                    failure_rate: Some(1.5),
                    ..cfg()
                },
                "failure_rate",
            ),
            (
                Config {
                    half_open_max_calls: 0,
                    ..cfg()
                },
                "half_open_max_calls",
            ),
            (
                Config {
                    success_threshold: 2,
                    ..cfg()
                },
                "success_threshold",
            ),
            (
                Config {
                    slow_call_rate: Some(0.5),
                    ..cfg()
                },
                "slow_call_rate",
            ),
            (
                Config {
                    max_reset_timeout: Some(1.0),
                    ..cfg()
                },
                "max_reset_timeout",
            ),
            (
                Config {
                    reset_timeout: -1.0,
                    ..cfg()
                },
                "reset_timeout",
            ),
            (Config { window: 0, ..cfg() }, "window"),
            (
                Config {
                    window_seconds: Some(f64::NAN),
                    ..cfg()
                },
                "window_seconds",
            ),
            (
                Config {
                    failure_threshold: Some(0),
                    ..cfg()
                },
                "failure_threshold",
            ),
        ];
        for (c, arg) in bad {
            let e = Breaker::new("x", c).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("CircuitBreaker(): argument '{arg}'")),
                "{e}"
            );
        }
    }

    #[test]
    fn metrics_off_counts_nothing_and_exports_nothing() {
        let br = Arc::new(
            Breaker::new(
                "core_test_off",
                Config {
                    metrics: MetricsMode::Off,
                    ..Config::default()
                },
            )
            .unwrap(),
        );
        register(&br);
        call(&br, 0.0, 0.0, S);
        assert_eq!(br.stats(None).counts, [0; 5]);
        let text = metrics::exposition().unwrap();
        assert!(!text.contains("core_test_off"), "{text}");
    }

    #[test]
    fn series_are_exported_from_the_atomics() {
        let br = Arc::new(
            Breaker::new(
                "core_test_series",
                Config {
                    failure_threshold: Some(1),
                    ..cfg()
                },
            )
            .unwrap(),
        );
        register(&br);
        call(&br, 0.0, 0.0, S);
        call(&br, 0.0, 0.0, F);
        assert!(call(&br, 1.0, 0.0, S).is_none());
        let text = metrics::exposition().unwrap();
        let has = |s: &str| assert!(text.contains(s), "missing {s}\n{text}");
        has("# TYPE ferrolab_circuit_breaker_state gauge");
        has("ferrolab_circuit_breaker_state{name=\"core_test_series\",state=\"open\"} 1");
        has("ferrolab_circuit_breaker_state{name=\"core_test_series\",state=\"closed\"} 0");
        has("ferrolab_circuit_breaker_state{name=\"core_test_series\",state=\"disabled\"} 0");
        has("ferrolab_circuit_breaker_calls_total{name=\"core_test_series\",outcome=\"rejected\"} 1");
        has("ferrolab_circuit_breaker_calls_total{name=\"core_test_series\",outcome=\"slow\"} 0");
        has(
            "ferrolab_circuit_breaker_transitions_total{from=\"closed\",name=\"core_test_series\",to=\"open\"} 1",
        );
        has("ferrolab_circuit_breaker_transitions_total{from=\"half_open\",name=\"core_test_series\",to=\"closed\"} 0");
        assert!(registered().iter().any(|b| b.name() == "core_test_series"));
        unregister(&br);
        assert!(!registered().iter().any(|b| b.name() == "core_test_series"));
        drop(br);
    }

    #[test]
    fn concurrent_half_open_admits_exactly_n() {
        for n in [1u32, 3, 8] {
            let br = Arc::new(b(Config {
                failure_threshold: Some(1),
                reset_timeout: 0.0,
                half_open_max_calls: n,
                ..cfg()
            }));
            call(&br, 0.0, 0.0, F);
            let admitted = std::sync::atomic::AtomicU32::new(0);
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        barrier.wait();
                        for _ in 0..100 {
                            if let (Admission::Admitted(_), _) = br.acquire(Some(1.0)) {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(admitted.load(Ordering::Relaxed), n);
        }
    }

    #[test]
    fn concurrent_count_window_stays_consistent() {
        let br = Arc::new(b(Config {
            failure_threshold: None,
            failure_rate: Some(1.0),
            window: 16,
            minimum_calls: 16,
            ..cfg()
        }));
        std::thread::scope(|s| {
            for k in 0..4 {
                let br = &br;
                s.spawn(move || {
                    for i in 0..10_000 {
                        let o = if (i + k) % 2 == 0 { S } else { F };
                        call(br, 0.0, 0.0, o);
                    }
                });
            }
        });
        let st = br.stats(None);
        let w = st.window.unwrap();
        assert_eq!(w.calls, 16);
        assert!(w.failures <= 16);
        assert_eq!(st.counts[C_SUCCESS] + st.counts[C_FAILURE], 40_000);
        assert_eq!(br.state(), Closed);
    }

    #[test]
    fn native_clock_is_monotonic() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a && a >= 0.0);
    }
}
