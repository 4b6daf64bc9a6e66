//! `fl.system`'s native part: the machine snapshot (conversion only; the sampling is in
//! `ferrolab_core::system`, run with the GIL released).

use crate::errors;
use ferrolab_core::system;
use ferrolab_core::system::{monitor, node};
use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::time::Duration;

/// A snapshot of the machine and this process as a dict (see `ferrolab.system.snapshot`).
#[pyfunction]
fn system_snapshot(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = py.detach(system::snapshot);
    let d = PyDict::new(py);
    d.set_item("cpu_percent", s.cpu_percent)?;
    d.set_item("cpu_count", s.cpu_count)?;
    d.set_item("load_avg", s.load_avg)?;
    let m = PyDict::new(py);
    m.set_item("total", s.memory.total)?;
    m.set_item("available", s.memory.available)?;
    m.set_item("used", s.memory.used)?;
    m.set_item("percent", s.memory.percent)?;
    d.set_item("memory", m)?;
    let disks = PyList::empty(py);
    for disk in &s.disks {
        let e = PyDict::new(py);
        e.set_item("mount", &disk.mount)?;
        e.set_item("total", disk.total)?;
        e.set_item("free", disk.free)?;
        e.set_item("percent", disk.percent)?;
        disks.append(e)?;
    }
    d.set_item("disks", disks)?;
    let n = PyDict::new(py);
    n.set_item("bytes_sent", s.network.bytes_sent)?;
    n.set_item("bytes_recv", s.network.bytes_recv)?;
    n.set_item("packets_sent", s.network.packets_sent)?;
    n.set_item("packets_recv", s.network.packets_recv)?;
    d.set_item("network", n)?;
    let p = PyDict::new(py);
    p.set_item("rss", s.process.rss)?;
    p.set_item("cpu_percent", s.process.cpu_percent)?;
    p.set_item("threads", s.process.threads)?;
    d.set_item("process", p)?;
    let gpus = PyList::empty(py);
    for g in &s.gpus {
        let e = PyDict::new(py);
        e.set_item("name", &g.name)?;
        e.set_item("memory_total", g.memory_total)?;
        e.set_item("memory_used", g.memory_used)?;
        e.set_item("utilization", g.utilization)?;
        gpus.append(e)?;
    }
    d.set_item("gpus", gpus)?;
    Ok(d)
}

/// Adds the node_exporter-compatible series to the registry; True when added now, False when already there.
#[pyfunction]
fn system_register_metrics() -> PyResult<bool> {
    node::register().map_err(errors::to_py)
}

type History<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>);

/// The native sampler of `ferrolab.system.Monitor` (ring buffers filled by a thread without the GIL).
#[pyclass(module = "ferrolab._core", name = "_Monitor", frozen)]
struct PyMonitor {
    inner: monitor::Monitor,
}

#[pymethods]
impl PyMonitor {
    #[new]
    fn new(interval: f64, window: usize) -> PyResult<Self> {
        if !(interval.is_finite() && interval > 0.0) {
            return Err(errors::arg_value(
                "Monitor",
                "interval",
                format!("is {interval}; expected a positive number of seconds"),
            ));
        }
        if window == 0 {
            return Err(errors::arg_value(
                "Monitor",
                "window",
                "is 0; expected at least 1 sample",
            ));
        }
        Ok(PyMonitor {
            inner: monitor::Monitor::new(Duration::from_secs_f64(interval), window),
        })
    }

    fn start(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.start()).map_err(|e| {
            errors::runtime_error(format!(
                "Monitor.start(): cannot start the sampler thread: {e}"
            ))
        })
    }

    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop())
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.running()
    }

    #[getter]
    fn interval(&self) -> f64 {
        self.inner.interval().as_secs_f64()
    }

    #[getter]
    fn window(&self) -> usize {
        self.inner.window()
    }

    fn metrics(&self) -> Vec<String> {
        self.inner.metrics()
    }

    fn history<'py>(&self, py: Python<'py>, metric: &str) -> Option<History<'py>> {
        let (t, v) = self.inner.history(metric)?;
        Some((t.into_pyarray(py), v.into_pyarray(py)))
    }

    fn since(&self, metric: &str, count: u64) -> (u64, Vec<(f64, f64)>) {
        self.inner.since(metric, count)
    }

    fn feed(&self, metric: &str, t: f64, v: f64) {
        self.inner.feed(metric, t, v)
    }

    fn wait(&self, py: Python<'_>, seq: u64, timeout: f64) -> u64 {
        let d = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        py.detach(|| self.inner.wait(seq, d))
    }

    fn notify(&self) {
        self.inner.notify()
    }

    fn cost(&self) -> (u64, f64) {
        self.inner.cost()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(system_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(system_register_metrics, m)?)?;
    m.add_class::<PyMonitor>()?;
    Ok(())
}
