//! Core `tracing` events into Python's `logging`: a record's target (`ferrolab.backup`, `ferrolab.gpu`, ...) is
//! the logger name, its fields become the `extra` attributes of the `LogRecord`.
//!
//! Records are queued in a core `Relay` and handed to Python by its thread, never on the thread that emitted
//! them: an event can be emitted while core code holds a lock that a thread attached to the interpreter waits
//! for, and attaching there could deadlock. [`flush`] waits until the queue is delivered.

use crate::errors::{self, IntoPyResult};
use ferrolab_core::error::check_seconds;
use ferrolab_core::telemetry::logs::{
    self as core, level_number, LevelFilter, Record, Relay, Value,
};
use ferrolab_core::telemetry::seam;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use std::sync::Arc;
use std::time::Duration;

/// Records waiting at most; more are dropped (and counted).
const CAPACITY: usize = 10_000;

static RELAY: Relay<fn(Vec<Record>) -> bool> =
    Relay::new(CAPACITY, to_python as fn(Vec<Record>) -> bool);

static EMIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn deliver(py: Python<'_>, batch: Vec<Record>) -> PyResult<()> {
    let emit = EMIT.import(py, "ferrolab._logs", "emit")?;
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
    emit.call1((items,))?;
    Ok(())
}

/// The relay's delivery (on its thread): hands a batch to Python while the interpreter lives; `false` once it
/// does not.
fn to_python(batch: Vec<Record>) -> bool {
    if !crate::ffi::interpreter_alive() {
        return false;
    }
    Python::try_attach(|py| {
        if let Err(e) = deliver(py, batch) {
            // a failing handler is the application's: report it like logging does, and go on
            e.write_unraisable(py, None);
        }
    })
    .is_some()
}

/// Waits until every queued record was handed to Python's ``logging`` (at most ``timeout`` seconds); True when
/// the queue is empty.
#[pyfunction]
#[pyo3(name = "_log_flush", signature = (timeout=5.0))]
fn flush(py: Python<'_>, timeout: f64) -> PyResult<bool> {
    let timeout = check_seconds("flush", "timeout", timeout, f64::INFINITY, false).py()?;
    Ok(py.detach(|| RELAY.flush(timeout)))
}

/// At interpreter exit (an `atexit` hook): delivers what is queued (at most ``timeout`` seconds), then stops
/// handing records to Python.
#[pyfunction]
#[pyo3(name = "_log_shutdown", signature = (timeout=2.0))]
fn shutdown(py: Python<'_>, timeout: f64) -> PyResult<bool> {
    let delivered = flush(py, timeout)?;
    // a thread that attaches while the interpreter finalizes is ended by CPython, which would abort the process:
    // a delivery that started before the stop ends before the interpreter finalizes
    py.detach(|| RELAY.stop(Duration::from_secs(5)));
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
    RELAY.dropped()
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
    if let Some(s) = seconds {
        check_seconds("slow_op_seconds", "seconds", s, f64::INFINITY, false).py()?;
    }
    seam::set_slow_threshold(seconds);
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    core::set_sink(Some(Arc::new(|r| RELAY.push(r))));
    add_functions! { m; flush, shutdown, set_level, dropped, disabled_event_ns, slow_op_seconds }
    Ok(())
}
