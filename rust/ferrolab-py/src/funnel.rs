//! The one GIL funnel and the instrumentation seam around every op.
//!
//! Arguments are converted with the GIL held; [`run`] then executes the work through the seam, releasing the GIL
//! (`py.detach`) when the work is large enough for that to pay off. When a sampled `fl.tracing` span is open in
//! the calling context, the op also becomes a child span named `ferrolab.<op>` (see [`Meta`]).
//!
//! A panic in the work (a bug) is caught here ([`guarded`]) and becomes `ferrolab.InternalError` with the panic's
//! message, counted as a failed call: never pyo3's `PanicException`, never an abort.

use crate::errors::IntoPyResult;
use ferrolab_core::telemetry::seam::{record, Device, Op};
use ferrolab_core::telemetry::tracing as tr;
pub use ferrolab_core::telemetry::tracing::Meta;
use ferrolab_core::{CoreError, Result};
use pyo3::prelude::*;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Work (elements) below which the GIL is kept: releasing and re-taking it costs more than the work.
const DETACH_MIN: usize = 1 << 14;

/// Runs `f` as `op` through the seam; detaches from the interpreter when `work` is large. When a sampled span is
/// open anywhere (one relaxed load otherwise), the op is recorded as a child of the current context's span.
#[inline]
pub fn run<R: Send>(
    py: Python<'_>,
    op: Op,
    work: usize,
    meta: Meta<'_>,
    f: impl FnOnce() -> Result<R> + Send,
) -> PyResult<R> {
    if tr::active() {
        return run_traced(py, op, Device::Cpu, meta, |py| execute(py, op, work, f));
    }
    execute(py, op, work, f).py()
}

/// [`run`] for work that records itself through the seam under the device it ran on (the GPU dispatch of
/// `ferrolab_core::gpu::dispatch`): always detached (device transfers and synchronisation wait), panic-safe, and
/// a child span with `ferrolab.device = "cuda"` when one is open.
pub fn run_dispatched<R: Send>(
    py: Python<'_>,
    op: Op,
    meta: Meta<'_>,
    f: impl FnOnce() -> Result<R> + Send,
) -> PyResult<R> {
    let exec = |py: Python<'_>| py.detach(|| guarded(op, f));
    if tr::active() {
        return run_traced(py, op, Device::Cuda, meta, exec);
    }
    exec(py).py()
}

/// `f`, detached from the interpreter when `work` is large enough for that to pay off.
#[inline]
fn detached<R: Send>(py: Python<'_>, work: usize, f: impl FnOnce() -> R + Send) -> R {
    if work < DETACH_MIN {
        f()
    } else {
        py.detach(f)
    }
}

#[inline]
fn execute<R: Send>(
    py: Python<'_>,
    op: Op,
    work: usize,
    f: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    detached(py, work, || record(op, Device::Cpu, || guarded(op, f)))
}

/// [`run`] for a helper pass of an op whose call is counted by another call (the automatic range of
/// `histogram`, which the histogram call itself counts): not recorded by the seam and no span of its own, but
/// detached and panic-safe like every op. Its errors are counted by the caller's boundary.
#[inline]
pub fn run_helper<R: Send>(
    py: Python<'_>,
    op: Op,
    work: usize,
    f: impl FnOnce() -> Result<R> + Send,
) -> PyResult<R> {
    detached(py, work, || guarded(op, f)).py()
}

/// Runs `f`, turning a panic into `CoreError::Internal` (`ferrolab.InternalError`) that names `op`.
///
/// A panic on a pool thread reaches here too: rayon resumes it on the thread that waits for the parallel work.
/// `AssertUnwindSafe`: after a panic nothing of the work is used again except what Python owns — a fresh result
/// array is dropped, an `out=` array may hold partial results (as after any failed op).
#[inline(always)]
pub(crate) fn guarded<R>(op: Op, f: impl FnOnce() -> Result<R>) -> Result<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(internal_error(op, payload)),
    }
}

/// The `InternalError` of a panic in `op`, with the panic's message. Out of line: the path of every op call
/// stays as short as without the guard.
#[cold]
#[inline(never)]
fn internal_error(op: Op, payload: Box<dyn Any + Send>) -> CoreError {
    CoreError::internal(op.name(), crate::errors::panic_message(&*payload))
}

/// [`run`] as a child span `ferrolab.<op>` of the current context's span ([`tr::op_span`]), when one is open.
#[cold]
#[inline(never)]
fn run_traced<'py, R: Send>(
    py: Python<'py>,
    op: Op,
    device: Device,
    meta: Meta<'_>,
    exec: impl FnOnce(Python<'py>) -> Result<R>,
) -> PyResult<R> {
    match crate::tracing::current_recording(py) {
        Some(parent) => tr::op_span(&parent, op, device, meta, || exec(py)).py(),
        None => exec(py).py(),
    }
}

/// The boundary of every op call: a failure the seam did not count (raised while converting or checking the
/// arguments, before the kernel ran) is counted here, untimed, under its Python error class. The exception is
/// marked (`__ferrolab_counted__`) so that a Python wrapper around the call does not count it again.
#[inline]
pub fn counted<R>(op: Op, device: &str, r: PyResult<R>) -> PyResult<R> {
    if let Err(e) = &r {
        Python::attach(|py| {
            let _ = e.value(py).setattr("__ferrolab_counted__", true);
        });
        if !ferrolab_core::telemetry::seam::take_counted() {
            let kind = Python::attach(|py| crate::errors::error_kind(py, e));
            ferrolab_core::telemetry::seam::record_untimed_error(op, Device::of_str(device), kind);
        }
    }
    r
}
