//! Instrumentation: the one seam every native op passes through ([`seam`]), the Prometheus registry and
//! built-in series ([`metrics`]), the OpenMetrics exposition with exemplars ([`openmetrics`]) and the embedded `/metrics` + `/health` server ([`server`]).

pub mod clock;
pub mod logs;
pub mod metrics;
pub mod openmetrics;
pub mod seam;
pub mod server;
pub mod tracing;
