//! `fl.system`'s native part: the machine snapshot (conversion only; the sampling is in
//! `ferrolab_core::system`, run with the GIL released).

use ferrolab_core::system;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(system_snapshot, m)?)?;
    Ok(())
}
