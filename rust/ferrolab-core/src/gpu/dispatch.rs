//! Where an op runs, and what happens when the GPU fails.
//!
//! * `device="cpu"` runs on the CPU. `device="cuda"` / `"cuda:N"` runs on that GPU or fails: never silently on
//!   the CPU (a GPU failure is a `DeviceUnavailable` error whose `cause` is the CUDA error).
//! * `device="auto"` runs on the GPU only where it pays off ([`auto_prefers_gpu`], overridable with
//!   `FERROLAB_AUTO_DEVICE=cpu|cuda`), and falls back to the CPU when the GPU fails: the call is counted as
//!   `ferrolab_operations_total{device="cuda",status="fallback"}` and rerun on the CPU.
//! * The GPU sits behind the circuit breaker `gpu` ([`breaker`]): after [`BREAKER_FAILURES`] consecutive GPU
//!   failures `auto` calls go straight to the CPU for [`BREAKER_RESET_SECONDS`], then one trial call tests the GPU
//!   again. A sticky CUDA error turns the backend off for the process ([`super::exec::dead_reason`]).
//! * [`set_strict`] (or `FERROLAB_GPU_STRICT=1`) turns every fallback into an error, for tests.
//! * [`set_fake`] replaces the GPU by a fake that computes on the CPU under the `cuda` labels and can inject
//!   failures: the host-side logic here is tested on machines without a GPU.

use super::exec::{self, GpuFailure};
use crate::breaker::{Admission, Breaker, Config, Outcome};
use crate::telemetry::seam::{self, Device, Op};
use crate::{CoreError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// Consecutive GPU failures that open the `gpu` breaker.
pub const BREAKER_FAILURES: u32 = 3;
/// Seconds the `gpu` breaker stays open before a trial call.
pub const BREAKER_RESET_SECONDS: f64 = 60.0;

/// What the caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Cpu,
    Auto,
    Cuda(usize),
}

/// Parses a `device=` argument: `"cpu"`, `"auto"`, `"cuda"` (device 0) or `"cuda:N"`.
pub fn parse(func: &str, device: &str) -> Result<Requested> {
    match device {
        "cpu" => Ok(Requested::Cpu),
        "auto" => Ok(Requested::Auto),
        "cuda" => Ok(Requested::Cuda(0)),
        d => match d.strip_prefix("cuda:") {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n
                .parse()
                .map(Requested::Cuda)
                .map_err(|_| bad_device(func, d)),
            _ => Err(bad_device(func, d)),
        },
    }
}

fn bad_device(func: &str, d: &str) -> CoreError {
    CoreError::Value {
        func: crate::device::static_name(func),
        arg: "device",
        msg: format!("is {d:?}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'"),
    }
}

/// The fault-injecting fake GPU (tests).
#[derive(Debug, Clone, Default)]
pub struct Fake {
    /// The failure the next `times` GPU attempts return (none: every attempt succeeds).
    pub failure: Option<GpuFailure>,
    pub times: u32,
    /// GPU attempts made so far (successful or not).
    pub attempts: u64,
}

impl Fake {
    /// A fake GPU whose next `times` attempts fail with CUDA error `error` (when given; `sticky` poisons the backend
    /// for the process).
    pub fn failing(error: Option<String>, sticky: bool, times: u32) -> Fake {
        let during = "a kernel launch on the fake GPU".to_string();
        let failure = error.map(|error| GpuFailure {
            during,
            error,
            sticky,
        });
        Fake {
            failure,
            times,
            attempts: 0,
        }
    }
}

static FAKE: Mutex<Option<Fake>> = Mutex::new(None);
static STRICT: LazyLock<AtomicBool> = LazyLock::new(|| {
    AtomicBool::new(
        std::env::var_os("FERROLAB_GPU_STRICT").is_some_and(|v| !v.is_empty() && v != "0"),
    )
});

/// Installs (`Some`) or removes (`None`) the fake GPU.
pub fn set_fake(fake: Option<Fake>) {
    *FAKE.lock().unwrap_or_else(|p| p.into_inner()) = fake;
}

/// The fake GPU's state, if installed.
pub fn fake() -> Option<Fake> {
    FAKE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Makes every fallback an error (`true`) or allows fallbacks again.
pub fn set_strict(strict: bool) {
    STRICT.store(strict, Ordering::Relaxed);
}

/// Whether fallbacks are errors.
pub fn strict() -> bool {
    STRICT.load(Ordering::Relaxed)
}

/// The circuit breaker `gpu`: consecutive GPU failures open it.
pub fn breaker() -> &'static Arc<Breaker> {
    static B: LazyLock<Arc<Breaker>> = LazyLock::new(|| {
        let cfg = Config {
            failure_threshold: Some(BREAKER_FAILURES),
            reset_timeout: BREAKER_RESET_SECONDS,
            ..Config::default()
        };
        let b =
            Arc::new(Breaker::new("gpu", cfg).expect("the gpu breaker's configuration is valid"));
        crate::breaker::register(&b);
        b
    });
    &B
}

/// Why no GPU can run ops now (`None` when one can: a usable device, or the fake).
pub fn unavailable_reason() -> Option<String> {
    if let Some(r) = exec::dead_reason() {
        return Some(r.to_string());
    }
    if FAKE.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
        return None;
    }
    super::status().err()
}

/// The cost model of `device="auto"`: whether the GPU pays off for a call that does `flops` floating-point
/// operations on `bytes` of input and output.
///
/// * data already on the device: always the GPU;
/// * NumPy data: copying it over PCIe (about 25-55 GB/s pinned) costs more than an O(n) op on the CPU (which
///   streams at memory bandwidth), so only compute-heavy calls go to the GPU: at least [`AUTO_MIN_INTENSITY`]
///   flops per byte moved and [`AUTO_MIN_FLOPS`] flops in all (large matmul / cdist).
///
/// `FERROLAB_AUTO_DEVICE=cpu` keeps `auto` on the CPU; `=cuda` sends every call to the GPU when one is available.
pub fn auto_prefers_gpu(on_device: bool, flops: f64, bytes: f64) -> bool {
    match std::env::var("FERROLAB_AUTO_DEVICE").as_deref() {
        Ok("cpu") => return false,
        Ok("cuda") => return true,
        _ => {}
    }
    on_device || (flops >= AUTO_MIN_FLOPS && flops >= AUTO_MIN_INTENSITY * bytes)
}

/// Flops per byte moved over PCIe above which a NumPy-input call goes to the GPU under `auto`.
pub const AUTO_MIN_INTENSITY: f64 = 64.0;
/// Flops below which a NumPy-input call stays on the CPU under `auto` (launch and copy latency dominate).
pub const AUTO_MIN_FLOPS: f64 = 1e9;

/// The GPU path of a call: the work on a set-up device.
pub type GpuPath<'a, R> = &'a dyn Fn(&exec::Device) -> std::result::Result<R, GpuFailure>;

/// Runs `op` where `requested` and `prefers_gpu` (the cost model's verdict for `auto`) say, recording it through
/// the seam under the device it ran on. `gpu` is the GPU path (callers decide beforehand whether the inputs have
/// one); `cpu` the CPU path, used for `cpu`, for `auto` when the GPU does not pay off or is unavailable, and for
/// the fallback.
pub fn run<R>(
    op: Op,
    requested: Requested,
    prefers_gpu: bool,
    gpu: GpuPath<'_, R>,
    cpu: &dyn Fn() -> Result<R>,
) -> Result<R> {
    let ordinal = match requested {
        Requested::Cpu => return seam::record(op, Device::Cpu, cpu),
        Requested::Auto => {
            if !prefers_gpu || unavailable_reason().is_some() {
                return seam::record(op, Device::Cpu, cpu);
            }
            0
        }
        Requested::Cuda(i) => {
            if let Some(reason) = unavailable_reason() {
                return Err(unavailable(op, i, reason, None));
            }
            i
        }
    };
    let explicit = matches!(requested, Requested::Cuda(_));
    let b = breaker();
    let (admission, _) = b.acquire(None);
    let ticket = match admission {
        Admission::Admitted(t) => t,
        Admission::Rejected(r) => {
            let reason = format!(
                "the circuit breaker 'gpu' is {} after {BREAKER_FAILURES} consecutive GPU failures{}",
                r.state.name(),
                r.retry_after.map(|s| format!(" (next trial in {s:.0} s)")).unwrap_or_default()
            );
            return fall_back(op, ordinal, explicit, reason, None, cpu);
        }
    };
    let attempt = || -> std::result::Result<R, GpuFailure> {
        let fake = {
            let mut f = FAKE.lock().unwrap_or_else(|p| p.into_inner());
            f.as_mut().map(|f| {
                f.attempts += 1;
                if f.times > 0 {
                    f.times -= 1;
                    f.failure.clone()
                } else {
                    None
                }
            })
        };
        match fake {
            Some(Some(failure)) => {
                exec::mark_dead_if_sticky(&failure);
                Err(failure)
            }
            Some(None) => cpu().map_err(|e| GpuFailure {
                during: "the fake GPU".into(),
                error: e.to_string(),
                sticky: false,
            }),
            None => {
                let dev = exec::device(ordinal)?;
                match gpu(&dev) {
                    Err(f) if f.error == "CUDA_ERROR_OUT_OF_MEMORY" => {
                        // give cached blocks back once, then retry
                        let _ = dev.stream.synchronize();
                        gpu(&dev)
                    }
                    r => r,
                }
            }
        }
    };
    let (r, nanos) = seam::timed(attempt);
    match r {
        Ok(v) => {
            b.complete(ticket, Outcome::Success, None);
            seam::record_timed(op, Device::Cuda, nanos, None);
            Ok(v)
        }
        Err(failure) => {
            b.complete(ticket, Outcome::Failure, None);
            let reason = format!("the GPU failed: {failure}");
            if explicit || strict() {
                seam::record_timed(op, Device::Cuda, nanos, Some("DeviceUnavailableError"));
            }
            fall_back(op, ordinal, explicit, reason, Some(failure.error), cpu)
        }
    }
}

fn unavailable(op: Op, ordinal: usize, reason: String, cause: Option<String>) -> CoreError {
    CoreError::DeviceUnavailable {
        func: op.name().into(),
        device: if ordinal == 0 {
            "cuda".into()
        } else {
            format!("cuda:{ordinal}").into()
        },
        reason,
        cause: cause.map(String::into_boxed_str),
    }
}

/// After a refused or failed GPU attempt: an error for `cuda` (or in strict mode), else the CPU rerun.
fn fall_back<R>(
    op: Op,
    ordinal: usize,
    explicit: bool,
    reason: String,
    cause: Option<String>,
    cpu: &dyn Fn() -> Result<R>,
) -> Result<R> {
    if explicit {
        return Err(unavailable(op, ordinal, reason, cause));
    }
    if strict() {
        return Err(unavailable(
            op,
            ordinal,
            format!("{reason}; falling back to the CPU is turned off (strict mode)"),
            cause,
        ));
    }
    tracing::warn!(
        target: "ferrolab.gpu",
        operation = op.name(),
        device = if ordinal == 0 { "cuda".to_string() } else { format!("cuda:{ordinal}") },
        reason = %reason,
        "GPU attempt failed; rerunning on the CPU"
    );
    seam::record_fallback(op);
    seam::record(op, Device::Cpu, cpu)
}
