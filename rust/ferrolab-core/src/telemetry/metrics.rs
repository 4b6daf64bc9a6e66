//! Prometheus metrics: the process-wide registry, user metrics and the built-in series.
//!
//! Values live in native atomics (the `prometheus` crate's counters, gauges and histograms, and the seam's
//! per-op cells). [`exposition`] renders everything in the Prometheus text format 0.0.4.
//!
//! Built-in series (prefix `ferrolab` by default, see [`set_prefix`]):
//! `<p>_operations_total{operation,device,status}`, `<p>_operation_duration_seconds{operation,device}`
//! (histogram), `<p>_errors_total{operation,error_type}` from the seam, and `<p>_memory_usage_bytes` (process
//! resident memory), `<p>_memory_total_bytes` (the machine's memory), `<p>_cpu_usage_percent` (the process's
//! CPU use since the previous scrape, 100 = one core fully used).

use super::seam;
use crate::error::{CoreError, Result};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{CounterVec, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, RwLock};

/// prometheus_client's default histogram buckets.
pub const DEFAULT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The content type of [`exposition`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    r.register(Box::new(
        Builtin::new("ferrolab").expect("valid built-in names"),
    ))
    .expect("built-in series register once");
    r
});
static PREFIX: LazyLock<RwLock<String>> = LazyLock::new(|| RwLock::new("ferrolab".to_string()));

/// The process-wide registry (the built-in collector is registered in it).
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// The prefix of the built-in series.
pub fn prefix() -> String {
    PREFIX.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Renames the built-in series to `<prefix>_...`.
pub fn set_prefix(prefix: &str) -> Result<()> {
    if !valid_name(prefix) {
        return Err(CoreError::value(
            "configure",
            "prefix",
            format!("is {prefix:?}; expected a Prometheus metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
        ));
    }
    let mut cur = PREFIX.write().unwrap_or_else(|e| e.into_inner());
    if *cur == prefix {
        return Ok(());
    }
    let new = Builtin::new(prefix)?;
    // unregister by descriptor ids: a fresh collector with the old names has the same ids
    REGISTRY
        .unregister(Box::new(Builtin::new(&cur)?))
        .map_err(|e| CoreError::value("configure", "prefix", e))?;
    if let Err(e) = REGISTRY.register(Box::new(new)) {
        // put the old one back so the registry stays complete
        let _ = REGISTRY.register(Box::new(Builtin::new(&cur)?));
        return Err(CoreError::value(
            "configure",
            "prefix",
            format!("is {prefix:?}: {e}"),
        ));
    }
    *cur = prefix.to_string();
    Ok(())
}

/// Whether `s` is a valid metric name.
pub fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    match c.next() {
        Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':' => {}
        _ => return false,
    }
    c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Whether `s` is a valid label name (and not reserved).
pub fn valid_label(s: &str) -> bool {
    let mut c = s.chars();
    match c.next() {
        Some(f) if f.is_ascii_alphabetic() || f == '_' => {}
        _ => return false,
    }
    c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_') && !s.starts_with("__")
}

/// Renders all registered metrics in the Prometheus text format 0.0.4.
pub fn exposition() -> Result<String> {
    let mfs = REGISTRY.gather();
    let mut buf = String::with_capacity(64 * 1024);
    prometheus::TextEncoder::new()
        .encode_utf8(&mfs, &mut buf)
        .map_err(|e| CoreError::value("exposition", "registry", e))?;
    Ok(buf)
}

/// All samples as `(name, labels, value)`, e.g. for tests and `get_sample_value`.
#[allow(clippy::type_complexity)]
pub fn samples() -> Vec<(String, Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for mf in REGISTRY.gather() {
        let name = mf.name();
        for m in mf.get_metric() {
            let labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            match mf.get_field_type() {
                MetricType::COUNTER => {
                    out.push((name.to_string(), labels, m.get_counter().get_value()))
                }
                MetricType::GAUGE => {
                    out.push((name.to_string(), labels, m.get_gauge().get_value()))
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let mut inf = false;
                    for b in h.get_bucket() {
                        let mut l = labels.clone();
                        inf |= b.upper_bound() == f64::INFINITY;
                        l.push(("le".into(), fmt_le(b.upper_bound())));
                        out.push((format!("{name}_bucket"), l, b.cumulative_count() as f64));
                    }
                    if !inf {
                        let mut l = labels.clone();
                        l.push(("le".into(), "+Inf".into()));
                        out.push((format!("{name}_bucket"), l, h.get_sample_count() as f64));
                    }
                    out.push((format!("{name}_sum"), labels.clone(), h.get_sample_sum()));
                    out.push((format!("{name}_count"), labels, h.get_sample_count() as f64));
                }
                _ => {}
            }
        }
    }
    out
}

fn fmt_le(b: f64) -> String {
    if b == f64::INFINITY {
        "+Inf".into()
    } else {
        b.to_string()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// User metrics

/// The kind of a user metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn class(self) -> &'static str {
        match self {
            Kind::Counter => "Counter",
            Kind::Gauge => "Gauge",
            Kind::Histogram => "Histogram",
        }
    }
}

/// A labelled family of one kind (an unlabelled metric is a family with no label names).
#[derive(Clone)]
pub enum Family {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

/// One time series of a family.
#[derive(Clone)]
pub enum Child {
    Counter(prometheus::Counter),
    Gauge(prometheus::Gauge),
    Histogram(prometheus::Histogram),
}

/// The full name of a user metric the way prometheus_client builds it: `namespace_subsystem_name_unit`, with
/// `_total` stripped from a counter's name (it is added back on exposition).
pub fn full_name(
    kind: Kind,
    name: &str,
    namespace: &str,
    subsystem: &str,
    unit: &str,
) -> Result<String> {
    let func = kind.class();
    let mut parts: Vec<&str> = Vec::new();
    if !namespace.is_empty() {
        parts.push(namespace);
    }
    if !subsystem.is_empty() {
        parts.push(subsystem);
    }
    parts.push(name);
    let mut full = parts.join("_");
    if kind == Kind::Counter {
        if let Some(s) = full.strip_suffix("_total") {
            full = s.to_string();
        }
    }
    if !unit.is_empty() && !full.ends_with(&format!("_{unit}")) {
        full = format!("{full}_{unit}");
    }
    if !valid_name(&full) {
        return Err(CoreError::value(
            func,
            "name",
            format!("gives the metric name {full:?}; expected [a-zA-Z_:][a-zA-Z0-9_:]*"),
        ));
    }
    Ok(full)
}

impl Family {
    /// Creates a family (not registered yet). `name` is the full name from [`full_name`].
    pub fn new(
        kind: Kind,
        name: &str,
        help: &str,
        labels: &[String],
        buckets: Option<&[f64]>,
    ) -> Result<Family> {
        let func = kind.class();
        for l in labels {
            if !valid_label(l) || (kind == Kind::Histogram && l == "le") {
                return Err(CoreError::value(
                    func,
                    "labelnames",
                    format!("contains the invalid label name {l:?}"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(l) = labels.iter().find(|l| !seen.insert(l.as_str())) {
            return Err(CoreError::value(
                func,
                "labelnames",
                format!("contains {l:?} twice"),
            ));
        }
        let help = if help.is_empty() { name } else { help };
        let names: Vec<&str> = labels.iter().map(String::as_str).collect();
        let err = |e: prometheus::Error| CoreError::value(func, "name", e);
        Ok(match kind {
            Kind::Counter => Family::Counter(
                CounterVec::new(Opts::new(format!("{name}_total"), help), &names).map_err(err)?,
            ),
            Kind::Gauge => {
                Family::Gauge(GaugeVec::new(Opts::new(name, help), &names).map_err(err)?)
            }
            Kind::Histogram => {
                let b = match buckets {
                    None => DEFAULT_BUCKETS.to_vec(),
                    Some(b) => check_buckets(b)?,
                };
                Family::Histogram(
                    HistogramVec::new(HistogramOpts::new(name, help).buckets(b), &names)
                        .map_err(err)?,
                )
            }
        })
    }

    fn collector(&self) -> Box<dyn Collector> {
        match self {
            Family::Counter(v) => Box::new(v.clone()),
            Family::Gauge(v) => Box::new(v.clone()),
            Family::Histogram(v) => Box::new(v.clone()),
        }
    }

    /// Registers the family in the process-wide registry.
    pub fn register(&self, func: &'static str) -> Result<()> {
        REGISTRY.register(self.collector()).map_err(|e| {
            CoreError::value(
                func,
                "name",
                match e {
                    prometheus::Error::AlreadyReg => {
                        "is already registered: a metric with this name exists (unregister it first)".to_string()
                    }
                    e => e.to_string(),
                },
            )
        })
    }

    /// Removes the family from the process-wide registry; `false` when it was not registered.
    pub fn unregister(&self) -> bool {
        REGISTRY.unregister(self.collector()).is_ok()
    }

    /// The series for `values` (created on first use).
    pub fn child<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) -> Result<Child> {
        let err = |e: prometheus::Error| CoreError::value("labels", "labelvalues", e);
        Ok(match self {
            Family::Counter(v) => {
                Child::Counter(v.get_metric_with_label_values(values).map_err(err)?)
            }
            Family::Gauge(v) => Child::Gauge(v.get_metric_with_label_values(values).map_err(err)?),
            Family::Histogram(v) => {
                Child::Histogram(v.get_metric_with_label_values(values).map_err(err)?)
            }
        })
    }

    /// Removes the series for `values`.
    pub fn remove<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) -> Result<()> {
        let err = |e: prometheus::Error| CoreError::value("remove", "labelvalues", e);
        match self {
            Family::Counter(v) => v.remove_label_values(values).map_err(err),
            Family::Gauge(v) => v.remove_label_values(values).map_err(err),
            Family::Histogram(v) => v.remove_label_values(values).map_err(err),
        }
    }

    /// Removes every series.
    pub fn clear(&self) {
        match self {
            Family::Counter(v) => v.reset(),
            Family::Gauge(v) => v.reset(),
            Family::Histogram(v) => v.reset(),
        }
    }
}

fn check_buckets(b: &[f64]) -> Result<Vec<f64>> {
    let mut v: Vec<f64> = b.to_vec();
    if v.last() == Some(&f64::INFINITY) {
        v.pop();
    }
    if v.iter().any(|x| x.is_nan()) || v.windows(2).any(|w| w[0] >= w[1]) {
        return Err(CoreError::value(
            "Histogram",
            "buckets",
            "must be strictly increasing numbers",
        ));
    }
    if v.is_empty() {
        return Err(CoreError::value(
            "Histogram",
            "buckets",
            "must contain at least one finite upper bound",
        ));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------------------------
// Built-in series

struct Builtin {
    prefix: String,
    descs: Vec<Desc>,
}

impl Builtin {
    fn new(prefix: &str) -> Result<Builtin> {
        let p = prefix;
        let d = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                format!("{p}_{name}"),
                help.to_string(),
                labels.iter().map(|s| s.to_string()).collect(),
                HashMap::new(),
            )
            .map_err(|e| CoreError::value("configure", "prefix", e))
        };
        Ok(Builtin {
            prefix: prefix.to_string(),
            descs: vec![
                d(
                    "operations_total",
                    "Native operations by outcome.",
                    &["operation", "device", "status"],
                )?,
                d(
                    "operation_duration_seconds",
                    "Wall time of native operations.",
                    &["operation", "device"],
                )?,
                d(
                    "errors_total",
                    "Failed native operations by error type.",
                    &["operation", "error_type"],
                )?,
                d(
                    "memory_usage_bytes",
                    "Resident memory of this process.",
                    &[],
                )?,
                d("memory_total_bytes", "Physical memory of the machine.", &[])?,
                d(
                    "cpu_usage_percent",
                    "CPU use of this process since the previous scrape (100 = one core).",
                    &[],
                )?,
            ],
        })
    }

    fn family(
        &self,
        name: &str,
        help: &str,
        t: MetricType,
        metrics: Vec<proto::Metric>,
    ) -> MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name(format!("{}_{name}", self.prefix));
        mf.set_help(help.to_string());
        mf.set_field_type(t);
        mf.set_metric(metrics);
        mf
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn counter_metric(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels(pairs));
    let mut c = proto::Counter::default();
    c.set_value(v);
    m.set_counter(c);
    m
}

fn gauge_metric(v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    proto::Metric::from_gauge(g)
}

/// Process facts for the built-in gauges: (resident bytes, CPU percent, machine memory bytes).
pub fn process_stats() -> Option<(u64, f64, u64)> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    static SYS: LazyLock<Mutex<System>> = LazyLock::new(|| Mutex::new(System::new()));
    let pid = Pid::from_u32(std::process::id());
    let mut sys = SYS.lock().unwrap_or_else(|e| e.into_inner());
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory().with_cpu(),
    );
    sys.refresh_memory();
    let p = sys.process(pid)?;
    Some((p.memory(), p.cpu_usage() as f64, sys.total_memory()))
}

impl Collector for Builtin {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = seam::snapshot();
        let mut ops = Vec::new();
        let mut durs = Vec::new();
        let mut errs = Vec::new();
        for s in &stats {
            let (op, dev) = (s.operation, s.device);
            ops.push(counter_metric(
                &[("operation", op), ("device", dev), ("status", "success")],
                (s.calls - s.errors) as f64,
            ));
            ops.push(counter_metric(
                &[("operation", op), ("device", dev), ("status", "error")],
                s.errors as f64,
            ));
            for (kind, n) in seam::ERROR_KINDS.iter().zip(s.errors_by_kind) {
                if n > 0 {
                    errs.push(counter_metric(
                        &[("operation", op), ("error_type", kind)],
                        n as f64,
                    ));
                }
            }
            let mut h = proto::Histogram::default();
            let mut cum = 0u64;
            let mut buckets = Vec::with_capacity(s.buckets.len());
            for (i, n) in s.buckets.iter().enumerate() {
                cum += n;
                // the encoder adds the `+Inf` bucket (from the count) itself
                if let Some(&ns) = seam::BUCKET_BOUNDS_NS.get(i) {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(ns as f64 / 1e9);
                    b.set_cumulative_count(cum);
                    buckets.push(b);
                }
            }
            h.set_bucket(buckets);
            h.set_sample_count(cum);
            h.set_sample_sum(s.seconds);
            let mut m = proto::Metric::from_label(labels(&[("operation", op), ("device", dev)]));
            m.set_histogram(h);
            durs.push(m);
        }
        let mut out = Vec::new();
        if !ops.is_empty() {
            out.push(self.family(
                "operations_total",
                "Native operations by outcome.",
                MetricType::COUNTER,
                ops,
            ));
            out.push(self.family(
                "operation_duration_seconds",
                "Wall time of native operations.",
                MetricType::HISTOGRAM,
                durs,
            ));
        }
        if !errs.is_empty() {
            out.push(self.family(
                "errors_total",
                "Failed native operations by error type.",
                MetricType::COUNTER,
                errs,
            ));
        }
        if let Some((rss, cpu, total)) = process_stats() {
            out.push(self.family(
                "memory_usage_bytes",
                "Resident memory of this process.",
                MetricType::GAUGE,
                vec![gauge_metric(rss as f64)],
            ));
            out.push(self.family(
                "memory_total_bytes",
                "Physical memory of the machine.",
                MetricType::GAUGE,
                vec![gauge_metric(total as f64)],
            ));
            out.push(self.family(
                "cpu_usage_percent",
                "CPU use of this process since the previous scrape (100 = one core).",
                MetricType::GAUGE,
                vec![gauge_metric(cpu)],
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::seam::{record, Device, Op};

    #[test]
    fn builtin_series_appear_after_an_op() {
        record(Op::Norm, Device::Cpu, || Ok(())).unwrap();
        let text = exposition().unwrap();
        assert!(
            text.contains("# TYPE ferrolab_operations_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferrolab_operations_total{device=\"cpu\",operation=\"norm\",status=\"success\"}"
            ) || text.contains("operation=\"norm\"")
        );
        assert!(text.contains("ferrolab_operation_duration_seconds_bucket{"));
        assert!(text.contains("le=\"+Inf\""));
        assert!(text.contains("ferrolab_memory_usage_bytes "));
    }

    #[test]
    fn user_metrics_round_trip() {
        let name = full_name(Kind::Counter, "jobs_total", "core", "", "").unwrap();
        assert_eq!(name, "core_jobs");
        let f = Family::new(Kind::Counter, &name, "Jobs.", &["kind".to_string()], None).unwrap();
        f.register("Counter").unwrap();
        assert!(f.register("Counter").is_err());
        match f.child(&["a"]).unwrap() {
            Child::Counter(c) => c.inc_by(2.5),
            _ => unreachable!(),
        }
        let s = samples();
        let v = s
            .iter()
            .find(|(n, l, _)| {
                n == "core_jobs_total" && l == &[("kind".to_string(), "a".to_string())]
            })
            .unwrap();
        assert_eq!(v.2, 2.5);
        assert!(f.child(&["a", "b"]).is_err());
        assert!(f.unregister());
        assert!(!f.unregister());
    }

    #[test]
    fn bad_names_and_buckets_are_value_errors() {
        assert!(full_name(Kind::Gauge, "1abc", "", "", "").is_err());
        assert!(Family::new(Kind::Gauge, "g_ok", "", &["__x".into()], None).is_err());
        assert!(Family::new(Kind::Gauge, "g_ok", "", &["a".into(), "a".into()], None).is_err());
        assert!(Family::new(Kind::Histogram, "h_ok", "", &[], Some(&[1.0, 0.5])).is_err());
        assert!(Family::new(Kind::Histogram, "h_ok", "", &["le".into()], None).is_err());
        assert!(set_prefix("9bad").is_err());
    }
}
