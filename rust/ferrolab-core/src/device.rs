//! The one device check: which device an op's `device=` argument selects, or why it cannot run there.
//!
//! Every op and every `fl.gpu` entry point asks [`select`] (or [`gpu_unavailable_reason`]): the
//! `DeviceUnavailable` error is built here and nowhere else.

use crate::gpu::dispatch::{self, Requested};
use crate::telemetry::seam::{Device, Op};
use crate::{CoreError, Result};

/// Why no CUDA device can run ferrolab ops in this process, or `None` when one can (a usable GPU, or the fake GPU
/// of the tests): the probe's reason ([`crate::gpu::status`]) or why the backend was turned off.
pub fn gpu_unavailable_reason() -> Option<String> {
    dispatch::unavailable_reason()
}

/// The device that `device` (`"cpu"`, `"auto"`, `"cuda"` or `"cuda:N"`) selects for `func`, an op or entry point
/// without a GPU path (ops with one go through [`dispatch::run`]).
///
/// `"auto"` is the CPU. `"cuda"` is a `DeviceUnavailable` error: the reason no GPU is usable, or that `func` does
/// not run on the GPU yet. Anything else is a `Value` error naming the argument.
pub fn select(func: &str, device: &str) -> Result<Device> {
    match dispatch::parse(func, device)? {
        Requested::Cpu | Requested::Auto => Ok(Device::Cpu),
        Requested::Cuda(_) => Err(CoreError::DeviceUnavailable {
            func: func.into(),
            device: device.into(),
            reason: gpu_unavailable_reason()
                .unwrap_or_else(|| format!("{func}() does not run on the GPU yet")),
            cause: None,
        }),
    }
}

/// What the GPU path of `op` takes (the reason of [`no_gpu_path`] when a GPU is usable).
fn gpu_path_takes(op: Op) -> &'static str {
    match op {
        Op::Axpy | Op::Fma | Op::Scale | Op::Clip => {
            "on C-contiguous float32/float64 arrays of one dtype and one shape (no broadcasting) with Python-number \
             scalars"
        }
        Op::Standardize => "over all elements (axis=None) of a C-contiguous float32/float64 array",
        Op::AdamStep => {
            "on non-empty C-contiguous float32/float64 arrays param, grad, m and v of one dtype and one shape"
        }
        _ => "over all elements (axis=None) of a contiguous float32/float64 array",
    }
}

/// The error of a `device="cuda"` call of `op` whose inputs have no GPU path: the reason no GPU is usable, else
/// what the GPU path of `op` takes.
pub fn no_gpu_path(op: Op, device: &str) -> CoreError {
    CoreError::DeviceUnavailable {
        func: op.name().into(),
        device: device.into(),
        reason: gpu_unavailable_reason().unwrap_or_else(|| {
            format!(
                "{}() runs on the GPU only {}",
                op.name(),
                gpu_path_takes(op)
            )
        }),
        cause: None,
    }
}

/// `func` as a `&'static str` (the op's name, or `"device"` for a name that is not an op's).
pub(crate) fn static_name(func: &str) -> &'static str {
    crate::telemetry::seam::OP_NAMES
        .iter()
        .copied()
        .chain(["asarray", "from_dlpack"])
        .find(|n| *n == func)
        .unwrap_or("device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        assert_eq!(select("sum", "cpu").unwrap(), Device::Cpu);
        assert_eq!(select("sum", "auto").unwrap(), Device::Cpu);
        let e = select("sum", "cuda:1").unwrap_err();
        assert_eq!(e.kind(), "DeviceUnavailableError");
        assert_eq!(
            e.to_string(),
            format!(
                "sum(): device 'cuda:1' is not available: {}",
                gpu_unavailable_reason().unwrap()
            )
        );
        let e = no_gpu_path(Op::AdamStep, "cuda");
        assert_eq!(e.kind(), "DeviceUnavailableError");
        assert!(e
            .to_string()
            .starts_with("adam_step(): device 'cuda' is not available: "));
        assert!(gpu_path_takes(Op::AdamStep).contains("param, grad, m and v"));
        assert!(gpu_path_takes(Op::Sum).contains("axis=None"));
        assert!(gpu_path_takes(Op::Clip).contains("no broadcasting"));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let e = select("sum", bad).unwrap_err();
            assert_eq!(e.kind(), "ValueError", "{bad}");
            assert!(e.to_string().starts_with("sum(): argument 'device' is"));
        }
    }
}
