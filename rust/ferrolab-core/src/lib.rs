//! # ferrolab-core
//!
//! The pure-Rust core of ferrolab (no Python here; `cargo test -p ferrolab-core` runs without it):
//!
//! * [`kernels`]: reductions, fused elementwise ops, statistics, GEMM, distances and an Adam step on
//!   `ndarray` views of any layout, SIMD inside ([`kernels::dispatch`]: AVX2+FMA when the CPU has it, a
//!   baseline copy otherwise) and multi-core above a size threshold (a bounded, fork-safe rayon pool sized by
//!   `FERROLAB_NUM_THREADS`; serial on the calling thread where no thread can be started). Every buffer whose
//!   size the input decides is allocated fallibly ([`kernels::alloc`]): an impossible size is an error, not an
//!   abort;
//! * [`telemetry::seam`]: the instrumentation seam every op passes through;
//! * [`telemetry::tracing`]: OpenTelemetry spans, kept in memory or exported over OTLP/HTTP (protobuf) from a
//!   background thread (no async runtime);
//! * [`breaker`]: the circuit-breaker state machine (one atomic word, sliding windows, permits) and its
//!   Prometheus collector;
//! * [`system`]: a snapshot of the machine and this process (`sysinfo`), CPU usage since the previous one;
//! * [`device`]: the one device check (`device=` arguments, why a GPU cannot run);
//! * [`gpu`]: the GPU backend (CUDA loaded at run time; probe, NVRTC-compiled kernels);
//! * [`error`]: the one error enum, mapped to Python exceptions by the binding crate.
//!
//! ## Feature flags
//! None: every build has the CPU engine and the GPU code; CUDA is loaded at run time when present, so building
//! and importing need no CUDA toolkit.
//!
//! ## Environment
//! * `FERROLAB_NUM_THREADS`: worker threads of the pool (default: available cores).
//! * `FERROLAB_SIMD=baseline`: force the baseline (non-AVX2) kernels.

pub mod backup;
pub mod breaker;
pub mod device;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod sync;
pub mod system;
pub mod telemetry;

pub use error::{CoreError, Result};

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
