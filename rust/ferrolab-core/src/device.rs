//! The one device check: which device an op's `device=` argument selects, or why it cannot run there.
//!
//! Every op and every `fl.gpu` entry point asks [`select`] (or [`gpu_unavailable_reason`]): the
//! `DeviceUnavailable` error is built here and nowhere else.

use crate::telemetry::seam::Device;
use crate::{CoreError, Result};

/// Why no CUDA device can run ferrolab ops in this process, or `None` when one can.
///
/// The GPU probe's reason ([`crate::gpu::status`]) where there is no usable GPU. Where there is one, the ops
/// still run only on the CPU: their GPU path is not built yet, and a `device="cuda"` call says so rather than
/// running on the CPU behind the caller's back.
pub fn gpu_unavailable_reason() -> Option<String> {
    match crate::gpu::status() {
        Err(reason) => Some(reason),
        Ok(gpu) => Some(format!(
            "found {} CUDA device(s) ({}), but ferrolab's ops do not run on the GPU yet",
            gpu.devices.len(),
            gpu.devices.first().map(|d| d.name.as_str()).unwrap_or("")
        )),
    }
}

/// The device that `device` (`"cpu"`, `"auto"`, `"cuda"` or `"cuda:N"`) selects for `func`.
///
/// `"auto"` is the CPU while no GPU is available. `"cuda"` without a usable GPU is a `DeviceUnavailable`
/// error with the reason; anything else is a `Value` error naming the argument.
pub fn select(func: &str, device: &str) -> Result<Device> {
    match device {
        "cpu" | "auto" => Ok(Device::Cpu),
        d if is_cuda(d) => match gpu_unavailable_reason() {
            Some(reason) => Err(CoreError::DeviceUnavailable {
                func: func.into(),
                device: d.to_string(),
                reason,
            }),
            None => Ok(Device::Cuda),
        },
        other => Err(CoreError::Value {
            func: static_name(func),
            arg: "device",
            msg: format!("is {other:?}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'"),
        }),
    }
}

/// `func` as a `&'static str` (the op's name, or `"device"` for a name that is not an op's).
fn static_name(func: &str) -> &'static str {
    crate::telemetry::seam::OP_NAMES
        .iter()
        .copied()
        .chain(["asarray", "from_dlpack"])
        .find(|n| *n == func)
        .unwrap_or("device")
}

/// `"cuda"` or `"cuda:N"` with a decimal device index.
fn is_cuda(d: &str) -> bool {
    d == "cuda"
        || d.strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
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
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let e = select("sum", bad).unwrap_err();
            assert_eq!(e.kind(), "ValueError", "{bad}");
            assert!(e.to_string().starts_with("sum(): argument 'device' is"));
        }
    }
}
