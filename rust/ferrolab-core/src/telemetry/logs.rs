//! Structured logs: core events are `tracing` events with target `ferrolab.<module>` (the Python logger name).
//!
//! [`init`] installs the process's `tracing` subscriber (once) with two outputs:
//! * a **sink** (set with [`set_sink`], e.g. by the Python bindings, which hand records to Python's `logging`):
//!   events at [`sink_level`] and above (INFO by default) become [`Record`]s;
//! * **stderr**, when `FERROLAB_LOG` is set (directives `info`, `ferrolab.backup=debug,warn`: the target/level
//!   syntax of `EnvFilter` without span or field filters), as text lines or, with `FERROLAB_LOG_FORMAT=json`,
//!   one JSON object per line.
//!
//! An event below every output's level is never built: its callsite is disabled once, and it then costs one
//! load and a branch (measured by [`disabled_event_cost_ns`]).
//!
//! A sink that must not run on the emitting thread (the Python one: an event can be emitted while core code
//! holds a lock that an interpreter thread waits for) queues the records in a [`Relay`], whose own thread hands
//! them on in batches.

use crate::sync::{MutexExt, RwLockExt};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
pub use tracing::Level;
use tracing::{Event, Metadata, Subscriber};
pub use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::Layer;

/// One field value of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

/// One log event, as handed to the sink.
#[derive(Debug, Clone)]
pub struct Record {
    pub level: Level,
    /// The event's target: the logger name, e.g. `ferrolab.backup`.
    pub target: String,
    pub message: String,
    /// Structured fields, in the order the event wrote them; `trace_id`/`span_id` are added inside a sampled
    /// op span.
    pub fields: Vec<(String, Value)>,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
}

type Sink = Arc<dyn Fn(Record) + Send + Sync>;

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
/// The sink's level as a `LevelFilter` index: 0 off, 1 error ... 5 trace.
static SINK_LEVEL: AtomicU8 = AtomicU8::new(3);
static INIT: Once = Once::new();

fn level_index(l: LevelFilter) -> u8 {
    match l.into_level() {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

fn index_level(i: u8) -> LevelFilter {
    match i {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Sets the function that receives the records of the sink output (`None` removes it).
pub fn set_sink(sink: Option<Sink>) {
    *SINK.writing() = sink;
    init();
}

/// Sets the level from which events reach the sink (default INFO).
pub fn set_sink_level(level: LevelFilter) {
    SINK_LEVEL.store(level_index(level), Ordering::Relaxed);
    // callsites cached their interest under the old level
    tracing::callsite::rebuild_interest_cache();
}

/// The level from which events reach the sink.
pub fn sink_level() -> LevelFilter {
    index_level(SINK_LEVEL.load(Ordering::Relaxed))
}

/// The sink output's filter: only `ferrolab.*` targets, at the sink level or above.
struct SinkFilter;

impl<S> Filter<S> for SinkFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        meta.target().starts_with("ferrolab") && *meta.level() <= sink_level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(sink_level())
    }
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, Value)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields
                .push((field.name().into(), Value::Str(format!("{value:?}"))));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .push((field.name().into(), Value::Str(value.into())));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name().into(), Value::I64(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name().into(), Value::U64(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name().into(), Value::F64(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name().into(), Value::Bool(value)));
    }
}

fn record_of(event: &Event<'_>) -> Record {
    let mut f = Fields::default();
    event.record(&mut f);
    if let Some((trace_id, span_id)) = super::seam::current_span() {
        f.fields
            .push(("trace_id".into(), Value::Str(format!("{trace_id:032x}"))));
        f.fields
            .push(("span_id".into(), Value::Str(format!("{span_id:016x}"))));
    }
    Record {
        level: *event.metadata().level(),
        target: event.metadata().target().to_string(),
        message: f.message,
        fields: f.fields,
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    }
}

struct SinkLayer;

impl<S: Subscriber> Layer<S> for SinkLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let sink = SINK.reading().clone();
        if let Some(sink) = sink {
            sink(record_of(event));
        }
    }
}

/// Writes events to stderr as text or JSON lines.
struct StderrLayer {
    json: bool,
}

impl Value {
    fn json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => s.clone().into(),
            Value::I64(v) => (*v).into(),
            Value::U64(v) => (*v).into(),
            Value::F64(v) => (*v).into(),
            Value::Bool(v) => (*v).into(),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// One line of the stderr output (without the newline).
pub fn format_line(r: &Record, json: bool) -> String {
    if json {
        let mut m = serde_json::Map::new();
        m.insert("timestamp".into(), r.timestamp.into());
        m.insert("level".into(), r.level.as_str().into());
        m.insert("target".into(), r.target.clone().into());
        m.insert("message".into(), r.message.clone().into());
        for (k, v) in &r.fields {
            m.insert(k.clone(), v.json());
        }
        serde_json::Value::Object(m).to_string()
    } else {
        let mut line = format!(
            "{:.3} {:>5} {}: {}",
            r.timestamp,
            r.level.as_str(),
            r.target,
            r.message
        );
        for (k, v) in &r.fields {
            let _ = write!(line, " {k}={v}");
        }
        line
    }
}

impl<S: Subscriber> Layer<S> for StderrLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut line = format_line(&record_of(event), self.json);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Lets one event of a kind through per interval (a flood of rejected clients logs one line a second, with
/// the number of events it stands for).
pub struct Throttle {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when an event may be logged now (`n` events were held back since the last one), else `None`.
    pub fn allow(&self, interval_ms: u64) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

/// The level's number in Python's `logging` (`ERROR` 40 ... `DEBUG` 10; TRACE, which it lacks, is 5).
pub fn level_number(l: Level) -> u8 {
    match l {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// A bounded queue of records that one thread of its own hands, in batches, to `deliver`: a sink for a consumer
/// that must not be called on the emitting thread.
///
/// At most `capacity` records wait; more are dropped and counted ([`Relay::dropped`]). The thread starts with the
/// first record, and again in a forked child (whose queue starts empty: the parent's records are the parent's
/// to deliver). `deliver` returns `false` when its consumer is gone for good (the interpreter exits): the thread
/// then ends and records are no longer delivered.
pub struct Relay<F> {
    capacity: usize,
    deliver: F,
    state: Mutex<RelayState>,
    wake: Condvar,
    /// Set by [`Relay::stop`]: nothing is delivered any more.
    stopped: AtomicBool,
}

struct RelayState {
    records: VecDeque<Record>,
    /// Records taken by the thread and not yet delivered.
    in_flight: usize,
    dropped: u64,
    /// The process the delivering thread runs in.
    dispatcher_pid: Option<u32>,
}

impl<F: Fn(Vec<Record>) -> bool + Send + Sync + 'static> Relay<F> {
    pub const fn new(capacity: usize, deliver: F) -> Relay<F> {
        Relay {
            capacity,
            deliver,
            state: Mutex::new(RelayState {
                records: VecDeque::new(),
                in_flight: 0,
                dropped: 0,
                dispatcher_pid: None,
            }),
            wake: Condvar::new(),
            stopped: AtomicBool::new(false),
        }
    }

    /// The state as process `pid` sees it: in a forked child, the parent's queue and its delivery under way are
    /// forgotten (they are the parent's to deliver, and no thread of the child would ever finish them).
    fn lock_as(&self, pid: u32) -> MutexGuard<'_, RelayState> {
        let mut q = self.state.locked();
        if q.dispatcher_pid.is_some_and(|p| p != pid) {
            q.records.clear();
            q.in_flight = 0;
            q.dispatcher_pid = None;
        }
        q
    }

    /// Queues `r` (or counts it as dropped when the queue is full), starting the delivering thread if needed.
    pub fn push(&'static self, r: Record) {
        self.push_as(std::process::id(), r)
    }

    fn push_as(&'static self, pid: u32, r: Record) {
        let mut q = self.lock_as(pid);
        if q.records.len() >= self.capacity {
            q.dropped += 1;
            return;
        }
        q.records.push_back(r);
        if q.dispatcher_pid.is_none() {
            q.dispatcher_pid = Some(pid);
            q.in_flight = 0;
            let spawned = std::thread::Builder::new()
                .name("ferrolab-logs".into())
                .spawn(move || self.run(pid));
            if spawned.is_err() {
                // no thread to deliver with: try again with the next record
                q.dispatcher_pid = None;
            }
        }
        self.wake.notify_all();
    }

    /// The delivering thread of process `me`.
    fn run(&self, me: u32) {
        loop {
            let batch: Vec<Record> = {
                let mut q = self.state.locked();
                loop {
                    if q.dispatcher_pid != Some(me) {
                        return;
                    }
                    if self.stopped.load(Ordering::Relaxed) {
                        q.records.clear();
                        q.in_flight = 0;
                        self.wake.notify_all();
                        return;
                    }
                    if !q.records.is_empty() {
                        let batch: Vec<Record> = q.records.drain(..).collect();
                        q.in_flight = batch.len();
                        break batch;
                    }
                    q = self
                        .wake
                        .wait_timeout(q, Duration::from_secs(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            let go_on = (self.deliver)(batch);
            self.state.locked().in_flight = 0;
            self.wake.notify_all();
            if !go_on {
                return;
            }
        }
    }

    /// Waits until every queued record was delivered (at most `timeout`); `true` when none is left.
    pub fn flush(&self, timeout: Duration) -> bool {
        // no deadline for a timeout beyond the clock's range
        let deadline = Instant::now().checked_add(timeout);
        let mut q = self.lock_as(std::process::id());
        loop {
            let busy = !q.records.is_empty() || q.in_flight > 0;
            let now = Instant::now();
            if !busy || deadline.is_some_and(|d| now >= d) {
                return !busy;
            }
            let left = deadline.map_or(Duration::MAX, |d| d - now);
            q = self
                .wake
                .wait_timeout(q, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops delivering (what is queued is dropped), and waits (at most `grace`) for a delivery under way to end.
    pub fn stop(&self, grace: Duration) {
        self.stopped.store(true, Ordering::Relaxed);
        self.wake.notify_all();
        let deadline = Instant::now() + grace;
        let mut q = self.lock_as(std::process::id());
        while q.in_flight > 0 && Instant::now() < deadline {
            q = self
                .wake
                .wait_timeout(q, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock_as(std::process::id()).dropped
    }
}

/// The stderr filter from `FERROLAB_LOG`, or why it could not be parsed.
pub fn stderr_filter(spec: &str) -> Result<Targets, String> {
    spec.trim().parse::<Targets>().map_err(|e| {
        format!("FERROLAB_LOG={spec:?} is not a valid filter ({e}); logging to stderr is off")
    })
}

/// Installs the subscriber (once per process; later calls do nothing). Fails silently when another global
/// subscriber is already installed (an embedding application's own).
pub fn init() {
    INIT.call_once(|| {
        let stderr = match std::env::var("FERROLAB_LOG") {
            Ok(spec) if !spec.trim().is_empty() => match stderr_filter(&spec) {
                Ok(t) => {
                    let json = std::env::var("FERROLAB_LOG_FORMAT")
                        .is_ok_and(|f| f.eq_ignore_ascii_case("json"));
                    Some(StderrLayer { json }.with_filter(t))
                }
                Err(e) => {
                    eprintln!("ferrolab: {e}");
                    None
                }
            },
            _ => None,
        };
        let subscriber = tracing_subscriber::registry()
            .with(SinkLayer.with_filter(SinkFilter))
            .with(stderr);
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// The cost in nanoseconds of one `tracing` event that no output enables (averaged over `n` events).
pub fn disabled_event_cost_ns(n: u64) -> f64 {
    init();
    let t0 = std::time::Instant::now();
    for i in 0..n {
        tracing::trace!(target: "ferrolab.probe", i = std::hint::black_box(i), "disabled probe event");
    }
    t0.elapsed().as_nanos() as f64 / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn events_reach_the_sink_with_fields_and_levels_apply() {
        let got: Arc<Mutex<Vec<Record>>> = Arc::default();
        let g = got.clone();
        set_sink(Some(Arc::new(move |r| {
            if r.target == "ferrolab.test" {
                g.lock().unwrap().push(r)
            }
        })));
        tracing::info!(target: "ferrolab.test", path = "/data", files = 3u64, ok = true, "snapshot saved");
        tracing::debug!(target: "ferrolab.test", "below the sink level");
        set_sink_level(LevelFilter::DEBUG);
        tracing::debug!(target: "ferrolab.test", ratio = 0.5, "now enabled");
        set_sink_level(LevelFilter::INFO);
        let r = got.lock().unwrap().clone();
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].message, "snapshot saved");
        assert_eq!(r[0].level, Level::INFO);
        assert_eq!(
            r[0].fields,
            vec![
                ("path".into(), Value::Str("/data".into())),
                ("files".into(), Value::U64(3)),
                ("ok".into(), Value::Bool(true)),
            ]
        );
        assert_eq!(r[1].fields, vec![("ratio".into(), Value::F64(0.5))]);
        let line = format_line(&r[0], true);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["message"], "snapshot saved");
        assert_eq!(v["files"], 3);
        assert_eq!(v["level"], "INFO");
        assert!(format_line(&r[0], false)
            .contains("ferrolab.test: snapshot saved path=\"/data\" files=3 ok=true"));
    }

    fn record(n: usize) -> Record {
        Record {
            level: Level::INFO,
            target: "ferrolab.test".into(),
            message: n.to_string(),
            fields: Vec::new(),
            timestamp: 0.0,
        }
    }

    type Delivered = Arc<Mutex<Vec<String>>>;

    type TestRelay = Relay<Box<dyn Fn(Vec<Record>) -> bool + Send + Sync>>;

    /// A relay whose deliveries wait while `gate` is closed (`entered` tells that one started).
    fn gated(
        capacity: usize,
    ) -> (
        &'static TestRelay,
        Delivered,
        Arc<AtomicBool>,
        Arc<AtomicBool>,
    ) {
        let got: Delivered = Arc::default();
        let (gate, entered) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (g, open, e) = (got.clone(), gate.clone(), entered.clone());
        let deliver = move |batch: Vec<Record>| {
            e.store(true, Ordering::SeqCst);
            while !open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            g.lock()
                .unwrap()
                .extend(batch.into_iter().map(|r| r.message));
            true
        };
        let relay: &'static TestRelay =
            Box::leak(Box::new(Relay::new(capacity, Box::new(deliver) as Box<_>)));
        (relay, got, gate, entered)
    }

    fn wait_for(flag: &AtomicBool) {
        let t0 = Instant::now();
        while !flag.load(Ordering::SeqCst) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no delivery started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn relay_bounds_its_queue_and_flush_waits_for_delivery() {
        let (relay, got, gate, entered) = gated(3);
        relay.push(record(0));
        wait_for(&entered); // record 0 is in flight, the queue empty
        for n in 1..=5 {
            relay.push(record(n));
        }
        assert_eq!(relay.dropped(), 2);
        assert!(
            !relay.flush(Duration::from_millis(20)),
            "a delivery is pending"
        );
        gate.store(true, Ordering::SeqCst);
        assert!(relay.flush(Duration::from_secs(10)));
        assert_eq!(*got.lock().unwrap(), ["0", "1", "2", "3"]);
        assert_eq!(relay.dropped(), 2);
    }

    #[test]
    fn relay_stop_waits_for_the_delivery_under_way_then_delivers_nothing() {
        let (relay, got, gate, entered) = gated(10);
        relay.push(record(0));
        wait_for(&entered);
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            gate.store(true, Ordering::SeqCst);
        });
        relay.stop(Duration::from_secs(10));
        assert_eq!(
            *got.lock().unwrap(),
            ["0"],
            "stop returned before the delivery ended"
        );
        relay.push(record(1));
        relay.flush(Duration::from_millis(50)); // dropped, or queued with no thread to deliver it
        assert_eq!(*got.lock().unwrap(), ["0"]);
        opener.join().unwrap();
    }

    #[test]
    fn relay_in_a_forked_child_starts_empty_with_its_own_thread() {
        let (relay, got, gate, entered) = gated(10);
        let parent = std::process::id().wrapping_add(1);
        relay.push_as(parent, record(0));
        wait_for(&entered);
        relay.push_as(parent, record(1)); // queued in the parent
        relay.push(record(2)); // the child's first record
        gate.store(true, Ordering::SeqCst);
        // two threads deliver (the parent's in flight, the child's): wait for both
        let t0 = Instant::now();
        while got.lock().unwrap().len() < 2 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(relay.flush(Duration::from_secs(10)));
        let mut got = got.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, ["0", "2"]);
    }

    #[test]
    fn a_forked_child_does_not_wait_for_the_parents_delivery() {
        let (relay, got, gate, entered) = gated(10);
        let parent = std::process::id().wrapping_add(1);
        relay.push_as(parent, record(0));
        wait_for(&entered); // the parent's delivery is under way and blocked
        relay.push_as(parent, record(1));
        // the child (this process's id) has nothing of its own to flush or to wait for
        let t0 = Instant::now();
        assert!(relay.flush(Duration::from_secs(5)));
        relay.stop(Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        gate.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        while got.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            *got.lock().unwrap(),
            ["0"],
            "the parent's queued record is not the child's"
        );
    }

    #[test]
    fn relay_ends_when_its_consumer_is_gone() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let relay = Box::leak(Box::new(Relay::new(10, move |_: Vec<Record>| {
            c.fetch_add(1, Ordering::SeqCst);
            false
        })));
        relay.push(record(0));
        assert!(relay.flush(Duration::from_secs(10)));
        relay.push(record(1));
        assert!(
            !relay.flush(Duration::from_millis(50)),
            "no thread delivers any more"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(level_number(Level::WARN), 30);
        assert_eq!(level_number(Level::TRACE), 5);
    }

    #[test]
    fn filter_syntax() {
        let t = stderr_filter("warn,ferrolab.backup=debug").unwrap();
        assert!(t.would_enable("ferrolab.backup", &Level::DEBUG));
        assert!(!t.would_enable("ferrolab.server", &Level::INFO));
        assert!(stderr_filter("ferrolab=nope").is_err());
    }
}
