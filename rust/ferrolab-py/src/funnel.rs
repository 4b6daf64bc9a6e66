//! The one GIL funnel and the instrumentation seam around every op.
//!
//! Arguments are converted with the GIL held; [`run`] then executes the work through the seam, releasing the GIL
//! (`py.detach`) when the work is large enough for that to pay off.

use crate::errors::IntoPyResult;
use ferrolab_core::telemetry::seam::{record, Device, Op};
use ferrolab_core::Result;
use pyo3::prelude::*;

/// Work (elements) below which the GIL is kept: releasing and re-taking it costs more than the work.
const DETACH_MIN: usize = 1 << 14;

/// Runs `f` as `op` through the seam; detaches from the interpreter when `work` is large.
#[inline]
pub fn run<R: Send>(
    py: Python<'_>,
    op: Op,
    work: usize,
    f: impl FnOnce() -> Result<R> + Send,
) -> PyResult<R> {
    if work < DETACH_MIN {
        record(op, Device::Cpu, f).py()
    } else {
        py.detach(|| record(op, Device::Cpu, f)).py()
    }
}
