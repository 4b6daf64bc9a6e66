//! `fl.system`'s native part: the machine snapshot (conversion only; the sampling is in
//! `ferrolab_core::system`, run with the GIL released).

use crate::errors;
use ferrolab_core::system;
use ferrolab_core::system::{monitor, node};
use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::time::Duration;

/// A snapshot of the machine and this process as a dict (see `ferrolab.system.snapshot`).
#[pyfunction]
fn system_snapshot(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = py.detach(system::snapshot);
    let disks: Vec<_> = (s.disks.iter())
        .map(|x| Ok(dict!(py, x; mount, total, free, percent)))
        .collect::<PyResult<_>>()?;
    let gpus: Vec<_> = (s.gpus.iter())
        .map(|g| Ok(dict!(py, g; name, memory_total, memory_used, utilization)))
        .collect::<PyResult<_>>()?;
    Ok(dict!(py, s; cpu_percent, cpu_count, load_avg,
        memory => dict!(py, s.memory; total, available, used, percent),
        disks => disks,
        network => dict!(py, s.network; bytes_sent, bytes_recv, packets_sent, packets_recv),
        process => dict!(py, s.process; rss, cpu_percent, threads),
        gpus => gpus,
    ))
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
        let inner = monitor::Monitor::checked(interval, window).map_err(errors::to_py)?;
        Ok(PyMonitor { inner })
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
    add_functions! { m; system_snapshot, system_register_metrics }
    m.add_class::<PyMonitor>()?;
    Ok(())
}
