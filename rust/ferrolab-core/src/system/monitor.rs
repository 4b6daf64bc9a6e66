//! A background sampler of the machine: one native thread fills ring buffers of `window` samples per metric.
//!
//! Metrics: `cpu_percent` (whole machine, 0-100), `memory_percent`, `load1`, `disk_percent:<mount>` for each
//! mount node_exporter reports ([`super::node::mounts`]), `net_recv_bytes_per_second` and
//! `net_sent_bytes_per_second` (all interfaces) and `process_rss` (bytes). The rates need two samples: they start
//! with the second one. Timestamps are Unix seconds.
//!
//! Fork safety: a forked child has no sampler thread. Every method checks the process id: in a child the monitor
//! is stopped, and its buffers are copied into fresh locks (or dropped when the parent's sampler held them at the
//! fork), so a child never waits on a lock of a thread that does not exist in it. `start()` in the child starts
//! its own sampler.

use crate::sync::MutexExt;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Default, Clone)]
struct Series {
    ts: VecDeque<f64>,
    vs: VecDeque<f64>,
    /// Samples ever pushed (the index of the next one).
    count: u64,
}

#[derive(Default, Clone)]
struct Data {
    series: BTreeMap<String, Series>,
    /// Bumped by every batch of samples.
    seq: u64,
    stop: bool,
}

struct Inner {
    window: usize,
    data: Mutex<Data>,
    cond: Condvar,
    pid: u32,
    running: AtomicBool,
    /// CPU time of the sampler thread, in nanoseconds (its own clock, read after each sample).
    cpu_ns: AtomicU64,
    samples: AtomicU64,
}

/// The sampler and its buffers.
pub struct Monitor {
    interval: Duration,
    window: usize,
    slot: Mutex<Arc<Inner>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn new_inner(window: usize, data: Data) -> Arc<Inner> {
    Arc::new(Inner {
        window,
        data: Mutex::new(data),
        cond: Condvar::new(),
        pid: std::process::id(),
        running: AtomicBool::new(false),
        cpu_ns: AtomicU64::new(0),
        samples: AtomicU64::new(0),
    })
}

fn thread_cpu_ns() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to fill
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        }
    }
    0
}

impl Inner {
    fn push(&self, t: f64, values: &[(String, f64)]) {
        let mut d = self.data.locked();
        for (name, v) in values {
            let s = d.series.entry(name.clone()).or_default();
            if s.ts.len() >= self.window {
                s.ts.pop_front();
                s.vs.pop_front();
            }
            s.ts.push_back(t);
            s.vs.push_back(*v);
            s.count += 1;
        }
        d.seq += 1;
        drop(d);
        self.cond.notify_all();
    }
}

/// What the sampler remembers between two samples (for the rates).
#[derive(Default)]
struct Prev {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    cpu: Option<(f64, f64)>,
    net: Option<(Instant, u64, u64)>,
}

#[cfg(target_os = "linux")]
fn sample(prev: &mut Prev) -> Vec<(String, f64)> {
    use super::node;
    let mut out = Vec::with_capacity(12);
    if let Some((_, (busy, total))) = node::cpu_times() {
        if let Some((b0, t0)) = prev.cpu.replace((busy, total)) {
            let dt = total - t0;
            if dt > 0.0 {
                out.push((
                    "cpu_percent".into(),
                    ((busy - b0) / dt * 100.0).clamp(0.0, 100.0),
                ));
            }
        }
    }
    if let Some((total, avail, _)) = node::meminfo() {
        if total > 0 {
            let used = total.saturating_sub(avail);
            out.push(("memory_percent".into(), used as f64 / total as f64 * 100.0));
        }
    }
    if let Some((l1, _, _)) = node::loadavg() {
        out.push(("load1".into(), l1));
    }
    for (_, mp, _) in node::mounts() {
        if let Some((size, avail, _)) = node::statvfs(&mp) {
            if size > 0 {
                let used = size.saturating_sub(avail.min(size));
                out.push((
                    format!("disk_percent:{mp}"),
                    used as f64 / size as f64 * 100.0,
                ));
            }
        }
    }
    if let Some(nets) = node::net_dev() {
        let (rx, tx) = nets
            .iter()
            .fold((0u64, 0u64), |(a, b), (_, r, t)| (a + r, b + t));
        let now = Instant::now();
        if let Some((t0, rx0, tx0)) = prev.net.replace((now, rx, tx)) {
            let dt = now.duration_since(t0).as_secs_f64();
            if dt > 0.0 {
                out.push((
                    "net_recv_bytes_per_second".into(),
                    rx.saturating_sub(rx0) as f64 / dt,
                ));
                out.push((
                    "net_sent_bytes_per_second".into(),
                    tx.saturating_sub(tx0) as f64 / dt,
                ));
            }
        }
    }
    // resident pages: the second field of /proc/self/statm
    if let Ok(s) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(pages) = s
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u64>().ok())
        {
            // SAFETY: sysconf has no preconditions
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
            out.push(("process_rss".into(), (pages * page) as f64));
        }
    }
    out
}

#[cfg(not(target_os = "linux"))]
fn sample(prev: &mut Prev) -> Vec<(String, f64)> {
    // sysinfo through the snapshot (its CPU percentage is shared with fl.system.snapshot())
    let s = super::snapshot();
    let mut out = vec![
        ("cpu_percent".to_string(), s.cpu_percent),
        ("memory_percent".to_string(), s.memory.percent),
        ("load1".to_string(), s.load_avg.0),
    ];
    for d in &s.disks {
        out.push((format!("disk_percent:{}", d.mount), d.percent));
    }
    let now = Instant::now();
    if let Some((t0, rx0, tx0)) =
        prev.net
            .replace((now, s.network.bytes_recv, s.network.bytes_sent))
    {
        let dt = now.duration_since(t0).as_secs_f64();
        if dt > 0.0 {
            out.push((
                "net_recv_bytes_per_second".into(),
                s.network.bytes_recv.saturating_sub(rx0) as f64 / dt,
            ));
            out.push((
                "net_sent_bytes_per_second".into(),
                s.network.bytes_sent.saturating_sub(tx0) as f64 / dt,
            ));
        }
    }
    out.push(("process_rss".into(), s.process.rss as f64));
    out
}

fn run(inner: Arc<Inner>, interval: Duration) {
    let mut prev = Prev::default();
    let mut next = Instant::now();
    loop {
        let values = sample(&mut prev);
        inner.push(now_unix(), &values);
        inner.samples.fetch_add(1, Ordering::Relaxed);
        inner.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now; // fell behind (suspended machine, slow disk): no burst of catch-up samples
        }
        let mut d = inner.data.locked();
        while !d.stop {
            let now = Instant::now();
            if now >= next {
                break;
            }
            d = inner
                .cond
                .wait_timeout(d, next - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if d.stop {
            break;
        }
    }
    inner.running.store(false, Ordering::Release);
}

/// The shortest sampling interval [`Monitor::checked`] takes, in seconds: each sample reads /proc and the mounts,
/// so a shorter interval would keep a core busy with sampling alone.
pub const MIN_INTERVAL_S: f64 = 0.001;

/// The longest sampling interval [`Monitor::checked`] takes, in seconds: the sampler adds the interval to an
/// `Instant`, which a much longer one would overflow.
pub const MAX_INTERVAL_S: f64 = 1e9;

impl Monitor {
    /// [`Monitor::new`] for `interval` seconds, checked: a `ValueError` naming the argument unless `interval` is a
    /// positive number of seconds and `window` at least 1.
    pub fn checked(interval: f64, window: usize) -> crate::Result<Monitor> {
        let bad = |arg, msg: String| Err(crate::CoreError::value("Monitor", arg, msg));
        if !(interval.is_finite() && interval > 0.0) {
            return bad(
                "interval",
                format!("is {interval}; expected a positive number of seconds"),
            );
        }
        if interval < MIN_INTERVAL_S {
            return bad(
                "interval",
                format!(
                    "is {interval} seconds; expected at least {MIN_INTERVAL_S} (a shorter interval would keep the \
                     sampler busy without rest)"
                ),
            );
        }
        if interval > MAX_INTERVAL_S {
            return bad(
                "interval",
                format!(
                    "is {interval} seconds; expected at most {MAX_INTERVAL_S:e} (about 31 years)"
                ),
            );
        }
        let every = Duration::from_secs_f64(interval);
        if window == 0 {
            return bad("window", "is 0; expected at least 1 sample".into());
        }
        Ok(Monitor::new(every, window))
    }

    /// A stopped monitor sampling every `interval` and keeping `window` samples per metric.
    pub fn new(interval: Duration, window: usize) -> Monitor {
        let window = window.max(1);
        Monitor {
            interval,
            window,
            slot: Mutex::new(new_inner(window, Data::default())),
            thread: Mutex::new(None),
        }
    }

    /// The current buffers; in a forked child, fresh ones (see the module docs).
    fn inner(&self) -> Arc<Inner> {
        let mut slot = self.slot.locked();
        if slot.pid != std::process::id() {
            // a forked child: the sampler thread does not exist here
            let data = match slot.data.try_lock() {
                Ok(d) => Data {
                    stop: false,
                    ..d.clone()
                },
                Err(_) => Data::default(),
            };
            *slot = new_inner(self.window, data);
            // the parent's JoinHandle is of no use here (dropping it detaches nothing that runs)
            if let Ok(mut t) = self.thread.try_lock() {
                std::mem::forget(t.take());
            }
        }
        slot.clone()
    }

    /// Starts the sampler thread (no-op when it runs).
    pub fn start(&self) -> std::io::Result<()> {
        let inner = self.inner();
        let mut th = self.thread.locked();
        if inner.running.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(h) = th.take() {
            let _ = h.join();
        }
        inner.data.locked().stop = false;
        inner.running.store(true, Ordering::Release);
        let i2 = inner.clone();
        let interval = self.interval;
        match std::thread::Builder::new()
            .name("ferrolab-monitor".into())
            .spawn(move || run(i2, interval))
        {
            Ok(h) => {
                *th = Some(h);
                Ok(())
            }
            Err(e) => {
                inner.running.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Stops the sampler thread and waits for it (no-op when stopped).
    pub fn stop(&self) {
        let inner = self.inner();
        inner.data.locked().stop = true;
        inner.cond.notify_all();
        let h = self.thread.locked().take();
        if let Some(h) = h {
            let _ = h.join();
        }
        inner.running.store(false, Ordering::Release);
    }

    /// Whether the sampler runs (in this process).
    pub fn running(&self) -> bool {
        self.inner().running.load(Ordering::Acquire)
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn window(&self) -> usize {
        self.window
    }

    /// The metric names with samples, sorted.
    pub fn metrics(&self) -> Vec<String> {
        let inner = self.inner();
        let d = inner.data.locked();
        d.series.keys().cloned().collect()
    }

    /// `(timestamps, values)` of a metric (None: no such metric).
    pub fn history(&self, metric: &str) -> Option<(Vec<f64>, Vec<f64>)> {
        let inner = self.inner();
        let d = inner.data.locked();
        d.series.get(metric).map(|s| {
            (
                s.ts.iter().copied().collect(),
                s.vs.iter().copied().collect(),
            )
        })
    }

    /// The samples of `metric` after the first `count` ever pushed (those still in the buffer), and the new count.
    pub fn since(&self, metric: &str, count: u64) -> (u64, Vec<(f64, f64)>) {
        let inner = self.inner();
        let d = inner.data.locked();
        let Some(s) = d.series.get(metric) else {
            return (0, Vec::new());
        };
        let first = s.count - s.ts.len() as u64; // index of the oldest sample kept
        let skip = count.saturating_sub(first) as usize;
        let out =
            s.ts.iter()
                .zip(&s.vs)
                .skip(skip)
                .map(|(t, v)| (*t, *v))
                .collect();
        (s.count, out)
    }

    /// Adds a sample by hand (a test hook: synthetic data, no sampler needed).
    pub fn feed(&self, metric: &str, t: f64, v: f64) {
        self.inner().push(t, &[(metric.to_string(), v)]);
    }

    /// Blocks until a batch newer than `seq` arrives or `timeout` passes; returns the current sequence number.
    pub fn wait(&self, seq: u64, timeout: Duration) -> u64 {
        let inner = self.inner();
        let deadline = Instant::now() + timeout;
        let mut d = inner.data.locked();
        while d.seq <= seq {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            d = inner
                .cond
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        d.seq
    }

    /// Wakes the threads blocked in [`Monitor::wait`].
    pub fn notify(&self) {
        let inner = self.inner();
        let mut d = inner.data.locked();
        d.seq += 1;
        drop(d);
        inner.cond.notify_all();
    }

    /// `(samples taken, CPU seconds of the sampler thread)` since it started.
    pub fn cost(&self) -> (u64, f64) {
        let inner = self.inner();
        (
            inner.samples.load(Ordering::Relaxed),
            inner.cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if self.slot.lock().map(|s| s.pid).unwrap_or(0) == std::process::id() {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arguments_name_the_bad_one() {
        let err = |i, w| Monitor::checked(i, w).err().unwrap().to_string();
        assert_eq!(
            err(0.0, 5),
            "Monitor(): argument 'interval' is 0; expected a positive number of seconds"
        );
        assert!(err(f64::NAN, 5).contains("argument 'interval' is NaN"));
        assert_eq!(
            err(1.0, 0),
            "Monitor(): argument 'window' is 0; expected at least 1 sample"
        );
        assert!(err(1e-12, 5).contains("expected at least 0.001"));
        assert!(err(1e20, 5).contains("expected at most 1e9"));
        assert!(err(1.1e9, 5).contains("expected at most 1e9"));
        assert_eq!(
            Monitor::checked(1e9, 1).unwrap().interval(),
            Duration::from_secs(1_000_000_000)
        );
        // what the bound protects: the sampler's next deadline (`Instant` + interval) does not overflow, not even
        // a hundred deadlines ahead
        let longest = Duration::from_secs_f64(MAX_INTERVAL_S);
        assert!((0..100u32)
            .try_fold(Instant::now(), |t, _| t.checked_add(longest))
            .is_some());
        let m = Monitor::checked(0.5, 3).unwrap();
        assert_eq!((m.interval(), m.window()), (Duration::from_millis(500), 3));
    }

    #[test]
    fn samples_and_ring_buffer() {
        let m = Monitor::new(Duration::from_millis(20), 5);
        m.start().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        m.stop();
        assert!(!m.running());
        let names = m.metrics();
        assert!(names.iter().any(|n| n == "memory_percent"), "{names:?}");
        let (t, v) = m.history("memory_percent").unwrap();
        assert!(t.len() <= 5 && t.len() == v.len() && !t.is_empty());
        for i in 0..10 {
            m.feed("x", i as f64, i as f64);
        }
        assert_eq!(m.history("x").unwrap().1, vec![5.0, 6.0, 7.0, 8.0, 9.0]);
        let (n, s) = m.since("x", 8);
        assert_eq!((n, s.len()), (10, 2));
        let (n, s) = m.since("x", 0);
        assert_eq!((n, s.len()), (10, 5));
    }
}
