//! The instrumentation seam.
//!
//! Every op runs through [`record`], which counts calls and errors and adds up wall time per
//! `(operation, device)` in native atomics. Disabled (`set_enabled(false)`) it is one relaxed load.

use crate::error::Result;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

macro_rules! ops {
    ($($v:ident => $s:literal),* $(,)?) => {
        /// The instrumented operations.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Op { $($v),* }
        /// Operation names, indexed by `Op as usize`.
        pub const OP_NAMES: &[&str] = &[$($s),*];
        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$v),*];
            pub fn name(self) -> &'static str { OP_NAMES[self as usize] }
        }
    };
}

ops! {
    Sum => "sum", Mean => "mean", Min => "min", Max => "max", Argmin => "argmin", Argmax => "argmax",
    Var => "var", Std => "std", Dot => "dot", Norm => "norm", Axpy => "axpy", Fma => "fma",
    Scale => "scale", Clip => "clip", Standardize => "standardize", Matmul => "matmul",
    Histogram => "histogram", Quantile => "quantile", ZscoreAnomalies => "zscore_anomalies",
    Cdist => "cdist", AdamStep => "adam_step",
}

const N_OPS: usize = OP_NAMES.len();

/// Where an op ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Device {
    Cpu = 0,
    Cuda = 1,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

struct Cell {
    calls: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const CELL: Cell = Cell {
    calls: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    nanos: AtomicU64::new(0),
};
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [Cell; 2] = [CELL, CELL];
static CELLS: [[Cell; 2]; N_OPS] = [ROW; N_OPS];
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns instrumentation on or off (on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether instrumentation is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `f` as operation `op` on `device`, recording its count, duration and outcome.
#[inline]
pub fn record<R>(op: Op, device: Device, f: impl FnOnce() -> Result<R>) -> Result<R> {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    let dt = t0.elapsed().as_nanos() as u64;
    let c = &CELLS[op as usize][device as usize];
    c.calls.fetch_add(1, Ordering::Relaxed);
    c.nanos.fetch_add(dt, Ordering::Relaxed);
    if r.is_err() {
        c.errors.fetch_add(1, Ordering::Relaxed);
    }
    r
}

/// Counters of one `(operation, device)` pair.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStats {
    pub operation: &'static str,
    pub device: &'static str,
    pub calls: u64,
    pub errors: u64,
    pub seconds: f64,
}

/// All pairs with at least one call.
pub fn snapshot() -> Vec<OpStats> {
    let mut v = Vec::new();
    for op in Op::ALL {
        for dev in [Device::Cpu, Device::Cuda] {
            let c = &CELLS[*op as usize][dev as usize];
            let calls = c.calls.load(Ordering::Relaxed);
            if calls > 0 {
                v.push(OpStats {
                    operation: op.name(),
                    device: dev.name(),
                    calls,
                    errors: c.errors.load(Ordering::Relaxed),
                    seconds: c.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
                });
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CoreError;

    #[test]
    fn counts_calls_and_errors() {
        let before = snapshot()
            .into_iter()
            .find(|s| s.operation == "cdist" && s.device == "cpu")
            .map(|s| (s.calls, s.errors))
            .unwrap_or((0, 0));
        record(Op::Cdist, Device::Cpu, || Ok(1)).unwrap();
        let _ = record::<()>(Op::Cdist, Device::Cpu, || {
            Err(CoreError::value("cdist", "a", "bad"))
        });
        let s = snapshot()
            .into_iter()
            .find(|s| s.operation == "cdist")
            .unwrap();
        assert_eq!((s.calls, s.errors), (before.0 + 2, before.1 + 1));
    }
}
