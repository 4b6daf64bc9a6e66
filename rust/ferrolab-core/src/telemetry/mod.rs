//! Instrumentation: the one seam every native op passes through ([`seam`]).

pub mod seam;
pub mod tracing;
