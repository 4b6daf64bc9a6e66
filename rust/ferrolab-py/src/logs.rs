//! Core `tracing` events into Python's `logging`: a record's target (`ferrolab.backup`, `ferrolab.gpu`, ...) is
//! the logger name, its fields become the `extra` attributes of the `LogRecord`.
//!
//! Records are queued and handed to Python by one thread of ours, never on the thread that emitted them: an
//! event can be emitted while core code holds a lock that a thread attached to the interpreter waits for, and
//! attaching there could deadlock. [`flush`] waits until the queue is delivered.

use crate::errors;
use ferrolab_core::telemetry::logs::{self as core, Level, LevelFilter, Record, Value};
use ferrolab_core::telemetry::seam;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Records waiting at most; more are dropped (and counted).
const CAPACITY: usize = 10_000;

#[derive(Default)]
struct Queue {
    records: VecDeque<Record>,
    /// Records taken by the dispatcher and not yet handed to Python.
    in_flight: usize,
    dropped: u64,
    /// The process the dispatcher thread runs in (a forked child starts its own).
    dispatcher_pid: Option<u32>,
}

static QUEUE: Mutex<Option<Queue>> = Mutex::new(None);
/// Set at interpreter exit ([`shutdown`]): no record is handed to Python any more (a thread that attaches while
/// the interpreter finalizes is ended by CPython, which would abort the process).
static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static WAKE: Condvar = Condvar::new();

fn lock() -> std::sync::MutexGuard<'static, Option<Queue>> {
    QUEUE.lock().unwrap_or_else(|e| e.into_inner())
}

fn sink(r: Record) {
    let mut g = lock();
    let q = g.get_or_insert_with(Queue::default);
    let pid = std::process::id();
    if q.dispatcher_pid.is_some_and(|p| p != pid) {
        // a forked child: the parent's records are the parent's to deliver
        q.records.clear();
        q.dispatcher_pid = None;
    }
    if q.records.len() >= CAPACITY {
        q.dropped += 1;
        return;
    }
    q.records.push_back(r);
    if q.dispatcher_pid.is_none() {
        q.dispatcher_pid = Some(pid);
        q.in_flight = 0;
        let spawned = std::thread::Builder::new()
            .name("ferrolab-logs".into())
            .spawn(dispatch);
        if spawned.is_err() {
            // no thread to deliver with: try again with the next record
            q.dispatcher_pid = None;
        }
    }
    WAKE.notify_all();
}

static EMIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn level_number(l: Level) -> u8 {
    match l {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

fn deliver(py: Python<'_>, batch: Vec<Record>) -> PyResult<()> {
    let emit = EMIT.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("ferrolab._logs")?.getattr("emit")?.unbind())
    })?;
    let mut items = Vec::with_capacity(batch.len());
    for r in batch {
        let fields = PyDict::new(py);
        for (k, v) in r.fields {
            match v {
                Value::Str(s) => fields.set_item(k, s)?,
                Value::I64(v) => fields.set_item(k, v)?,
                Value::U64(v) => fields.set_item(k, v)?,
                Value::F64(v) => fields.set_item(k, v)?,
                Value::Bool(v) => fields.set_item(k, v)?,
            }
        }
        items.push((
            level_number(r.level),
            r.target,
            r.message,
            fields,
            r.timestamp,
        ));
    }
    emit.bind(py).call1((items,))?;
    Ok(())
}

/// The dispatcher thread: hands queued records to Python while the interpreter lives.
fn dispatch() {
    let me = std::process::id();
    loop {
        let batch: Vec<Record> = {
            let mut g = lock();
            loop {
                match g.as_mut() {
                    Some(q) if q.dispatcher_pid != Some(me) => return,
                    Some(q) if STOPPED.load(std::sync::atomic::Ordering::Relaxed) => {
                        q.records.clear();
                        q.in_flight = 0;
                        WAKE.notify_all();
                        return;
                    }
                    Some(q) if !q.records.is_empty() => {
                        let batch: Vec<Record> = q.records.drain(..).collect();
                        q.in_flight = batch.len();
                        break batch;
                    }
                    _ => {
                        g = WAKE
                            .wait_timeout(g, Duration::from_secs(1))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                }
            }
        };
        if !crate::ffi::interpreter_alive() {
            return;
        }
        let delivered = Python::try_attach(|py| {
            if let Err(e) = deliver(py, batch) {
                // a failing handler is the application's: report it like logging does, and go on
                e.write_unraisable(py, None);
            }
        });
        let mut g = lock();
        if let Some(q) = g.as_mut() {
            q.in_flight = 0;
        }
        WAKE.notify_all();
        if delivered.is_none() {
            return; // the interpreter is shutting down
        }
    }
}

/// Waits until every queued record was handed to Python's ``logging`` (at most ``timeout`` seconds); True when
/// the queue is empty.
#[pyfunction]
#[pyo3(name = "_log_flush", signature = (timeout=5.0))]
fn flush(py: Python<'_>, timeout: f64) -> PyResult<bool> {
    if !(timeout.is_finite() && timeout >= 0.0) {
        return Err(errors::arg_value(
            "flush",
            "timeout",
            format!("is {timeout}; expected a number >= 0"),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    Ok(py.detach(|| {
        let mut g = lock();
        loop {
            let busy = g
                .as_ref()
                .is_some_and(|q| !q.records.is_empty() || q.in_flight > 0);
            let now = Instant::now();
            if !busy || now >= deadline {
                return !busy;
            }
            g = WAKE
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }))
}

/// At interpreter exit (an `atexit` hook): delivers what is queued (at most ``timeout`` seconds), then stops
/// handing records to Python.
#[pyfunction]
#[pyo3(name = "_log_shutdown", signature = (timeout=2.0))]
fn shutdown(py: Python<'_>, timeout: f64) -> PyResult<bool> {
    let delivered = flush(py, timeout)?;
    STOPPED.store(true, std::sync::atomic::Ordering::Relaxed);
    WAKE.notify_all();
    // a delivery that started before the flag was set ends before the interpreter finalizes
    py.detach(|| {
        let mut g = lock();
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.as_ref().is_some_and(|q| q.in_flight > 0) && Instant::now() < deadline {
            g = WAKE
                .wait_timeout(g, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    });
    Ok(delivered)
}

/// The level from which core events reach Python's ``logging`` (``"error"`` ... ``"trace"``, or ``"off"``).
#[pyfunction]
#[pyo3(name = "_log_set_level")]
fn set_level(level: &str) -> PyResult<()> {
    let l: LevelFilter = level.parse().map_err(|_| {
        errors::arg_value(
            "set_level",
            "level",
            format!("is {level:?}; expected off, error, warn, info, debug or trace"),
        )
    })?;
    core::set_sink_level(l);
    Ok(())
}

/// Records dropped because the queue was full.
#[pyfunction]
#[pyo3(name = "_log_dropped")]
fn dropped() -> u64 {
    lock().as_ref().map_or(0, |q| q.dropped)
}

/// The cost in nanoseconds of a core event no output enables (averaged over ``n``), without the GIL.
#[pyfunction]
#[pyo3(name = "_log_disabled_event_ns", signature = (n=10_000_000))]
fn disabled_event_ns(py: Python<'_>, n: u64) -> f64 {
    py.detach(|| core::disabled_event_cost_ns(n))
}

/// Calls of an op at least this long are logged as slow (``ferrolab.ops``, WARNING); ``None``: never.
#[pyfunction]
#[pyo3(name = "_log_slow_op_seconds")]
fn slow_op_seconds(seconds: Option<f64>) -> PyResult<()> {
    if let Some(s) = seconds.filter(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(errors::arg_value(
            "slow_op_seconds",
            "seconds",
            format!("is {s}; expected a number >= 0 or None"),
        ));
    }
    seam::set_slow_threshold(seconds);
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    core::set_sink(Some(Arc::new(sink)));
    m.add_function(wrap_pyfunction!(flush, m)?)?;
    m.add_function(wrap_pyfunction!(shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(set_level, m)?)?;
    m.add_function(wrap_pyfunction!(dropped, m)?)?;
    m.add_function(wrap_pyfunction!(disabled_event_ns, m)?)?;
    m.add_function(wrap_pyfunction!(slow_op_seconds, m)?)?;
    Ok(())
}
