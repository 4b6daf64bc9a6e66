//! Prometheus metrics: the process-wide registry, user metrics and the built-in series.
//!
//! Values live in native atomics (the `prometheus` crate's counters, gauges and histograms, and the seam's
//! per-op cells). [`exposition`] renders everything in the Prometheus text format 0.0.4 the way
//! prometheus_client writes it (`le="1.0"`, values as floats, `_created` samples as gauges).
//!
//! The process-wide registry ([`registry`]) holds the built-in series and is where metrics register by default;
//! [`Registry::new`] makes further ones (per test, per library), which hold only what is registered in them.
//!
//! Built-in series (prefix `ferrolab` by default, see [`set_prefix`]):
//! `<p>_operations_total{operation,device,status}`, `<p>_operation_duration_seconds{operation,device}`
//! (histogram), `<p>_errors_total{operation,error_type}` from the seam, and `<p>_memory_usage_bytes` (process
//! resident memory), `<p>_memory_total_bytes` (the machine's memory), `<p>_gpu_memory_usage_bytes{device}` and
//! `<p>_gpu_memory_total_bytes{device}` (GPUs the process computes on), `<p>_cpu_usage_percent` (the process's
//! CPU use since the previous scrape, 100 = one core fully used).

use super::{openmetrics, seam};
use crate::error::{CoreError, Result};
use crate::sync::{MutexExt, RwLockExt};
use indexmap::IndexMap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{HistogramOpts, Opts};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

/// prometheus_client's default histogram buckets.
pub const DEFAULT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The content type of [`exposition`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Objects kept per tuple of label values (the binding's Python child objects: `labels(...)` with the same
/// values returns the same object, as in prometheus_client), found by a hash of the values.
pub struct LabelCache<V> {
    map: RwLock<Buckets<V>>,
}

/// The objects of each hash of label values, with their values.
type Buckets<V> = HashMap<u64, Vec<(Box<[String]>, V)>, BuildHasherDefault<Prehashed>>;

/// The cache's keys are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ *b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// FNV-1a over label values (each followed by a separator).
fn hash_values<'a>(vals: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in vals {
        for b in v.bytes().chain(std::iter::once(0xff)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl<V> Default for LabelCache<V> {
    fn default() -> Self {
        LabelCache {
            map: RwLock::new(HashMap::default()),
        }
    }
}

impl<V> LabelCache<V> {
    /// `f` of the object cached for `vals`, if there is one.
    pub fn find<R>(&self, vals: &[&str], f: impl FnOnce(&V) -> R) -> Option<R> {
        let map = self.map.reading();
        let bucket = map.get(&hash_values(vals.iter().copied()))?;
        let (_, v) = bucket
            .iter()
            .find(|(k, _)| k.iter().map(String::as_str).eq(vals.iter().copied()))?;
        Some(f(v))
    }

    /// Caches `v` for `vals`, unless another caller cached an object for them first (then `v` is dropped): `f`
    /// of the object now cached.
    pub fn insert<R>(&self, vals: &[&str], v: V, f: impl FnOnce(&V) -> R) -> R {
        let mut map = self.map.writing();
        let bucket = map.entry(hash_values(vals.iter().copied())).or_default();
        let same = |k: &[String]| k.iter().map(String::as_str).eq(vals.iter().copied());
        if let Some((_, existing)) = bucket.iter().find(|(k, _)| same(k)) {
            return f(existing);
        }
        let key: Box<[String]> = vals.iter().map(|v| v.to_string()).collect();
        bucket.push((key, v));
        f(&bucket.last().expect("just pushed").1)
    }

    /// Forgets the objects of these tuples of values.
    pub fn remove<'a>(&self, gone: impl IntoIterator<Item = &'a [String]>) {
        let mut map = self.map.writing();
        for vals in gone {
            if let Some(bucket) = map.get_mut(&hash_values(vals.iter().map(String::as_str))) {
                bucket.retain(|(k, _)| **k != *vals);
            }
        }
    }

    /// Forgets every object.
    pub fn clear(&self) {
        self.map.writing().clear();
    }
}

/// The process-wide registry of collectors.
///
/// Unlike the `prometheus` crate's registry it reserves every sample name a family exposes (a histogram `h`
/// reserves `h`, `h_bucket`, `h_sum`, `h_count`, `h_created`; a counter `c` reserves `c`, `c_total`,
/// `c_created`), as prometheus_client does, so two metrics can never write the same series; and an unregistered
/// name is free again whatever labels or help text it comes back with.
pub struct Registry {
    entries: RwLock<Vec<Entry>>,
}

struct Entry {
    /// A [`Family`]'s id, or the hash of a foreign collector's descriptor ids.
    key: u64,
    names: Vec<String>,
    collector: Arc<dyn Collector>,
}

fn desc_key(c: &dyn Collector) -> u64 {
    c.desc().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, d| {
        (h ^ d.id).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry (the process-wide one, [`registry`], also holds the built-in series).
    pub fn new() -> Registry {
        Registry {
            entries: RwLock::new(Vec::new()),
        }
    }

    /// Registers a collector; the names of its descriptors are reserved. `Err(AlreadyReg)` on a clash.
    pub fn register(&self, c: Box<dyn Collector>) -> prometheus::Result<()> {
        let names = c.desc().iter().map(|d| d.fq_name.clone()).collect();
        let key = desc_key(c.as_ref());
        self.insert(key, names, c)
    }

    /// Removes a collector registered with [`Registry::register`] (found by its descriptors).
    pub fn unregister(&self, c: Box<dyn Collector>) -> prometheus::Result<()> {
        if self.remove(desc_key(c.as_ref())) {
            Ok(())
        } else {
            Err(prometheus::Error::Msg("collector is not registered".into()))
        }
    }

    fn insert(
        &self,
        key: u64,
        names: Vec<String>,
        collector: Box<dyn Collector>,
    ) -> prometheus::Result<()> {
        let mut entries = self.entries.writing();
        for e in entries.iter() {
            if e.key == key || e.names.iter().any(|n| names.contains(n)) {
                return Err(prometheus::Error::AlreadyReg);
            }
        }
        entries.push(Entry {
            key,
            names,
            collector: Arc::from(collector),
        });
        Ok(())
    }

    fn remove(&self, key: u64) -> bool {
        let mut entries = self.entries.writing();
        let before = entries.len();
        entries.retain(|e| e.key != key);
        entries.len() != before
    }

    /// Reserves sample `names` for a collector that lives outside this registry (one written in Python): no
    /// family may take them until [`Registry::release`]. Returns the reservation's key.
    pub fn reserve(&self, names: Vec<String>, func: &'static str) -> Result<u64> {
        let key = NEXT_FAMILY.fetch_add(1, Ordering::Relaxed);
        let clash = names.clone();
        self.insert(key, names, Box::new(Reserved)).map_err(|_| {
            let taken = self.taken(&clash);
            CoreError::value(
                func,
                "collector",
                format!("clashes with registered series {taken:?}: duplicated timeseries"),
            )
        })?;
        Ok(key)
    }

    /// Ends a reservation made by [`Registry::reserve`]; `false` when there was none with that key.
    pub fn release(&self, key: u64) -> bool {
        self.remove(key)
    }

    /// The sample names already taken among `names`.
    fn taken(&self, names: &[String]) -> Vec<String> {
        let entries = self.entries.reading();
        let mut out: Vec<String> = entries
            .iter()
            .flat_map(|e| e.names.iter())
            .filter(|n| names.contains(n))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Collects every family, sorted by name. The series of a family are not sorted (Prometheus does not need it,
    /// and sorting 10,000 series would cost a third of the exposition): a user metric lists them in the order they
    /// were made, as prometheus_client does.
    pub fn gather(&self) -> Vec<MetricFamily> {
        // collected outside the lock: a gauge's function (`set_function`) may wait for the GIL, whose holder may
        // be registering a metric
        let collectors: Vec<Arc<dyn Collector>> = {
            let entries = self.entries.reading();
            entries.iter().map(|e| e.collector.clone()).collect()
        };
        let mut mfs: Vec<MetricFamily> = collectors.iter().flat_map(|c| c.collect()).collect();
        mfs.retain(|mf| !mf.get_metric().is_empty());
        mfs.sort_by(|a, b| a.name().cmp(b.name()));
        mfs
    }

    /// Renders this registry in the Prometheus text format 0.0.4 (see [`exposition`]); with `only`, just the
    /// samples of those names (prometheus_client's `restricted_registry`).
    pub fn exposition(&self, only: Option<&[String]>) -> String {
        // the previous exposition's size: one allocation instead of a chain of doublings and copies
        static LAST_LEN: AtomicU64 = AtomicU64::new(64 * 1024);
        let mfs = self.gather();
        let cap = LAST_LEN.load(Ordering::Relaxed) as usize + 4096;
        let buf = openmetrics::render_text(&mfs, only, cap);
        LAST_LEN.store(buf.len() as u64, Ordering::Relaxed);
        buf
    }

    /// Renders this registry in OpenMetrics 1.0 with exemplars; with `only`, just the samples of those names.
    pub fn openmetrics(&self, only: Option<&[String]>) -> String {
        openmetrics::render_only(&self.gather(), only)
    }

    /// The families of this registry as prometheus_client's `collect()` shows them (see [`families`]).
    pub fn families(&self, only: Option<&[String]>) -> Vec<FamilyView> {
        families(&self.gather(), only)
    }

    /// All samples as `(name, labels, value)` with prometheus_client's names (`x_total`, `x_bucket`,
    /// `x_created`...).
    pub fn samples(&self) -> Vec<Sample> {
        self.families(None)
            .into_iter()
            .flat_map(|f| f.samples)
            .collect()
    }

    /// The value of the sample `name` whose labels are exactly `labels` (in any order), among the samples
    /// `only` names (all without it): prometheus_client's `get_sample_value`.
    pub fn sample_value(
        &self,
        name: &str,
        mut labels: Vec<(String, String)>,
        only: Option<&[String]>,
    ) -> Option<f64> {
        labels.sort();
        self.families(only)
            .into_iter()
            .flat_map(|f| f.samples)
            .find_map(|(n, mut l, v)| {
                l.sort();
                (n == name && l == labels).then_some(v)
            })
    }
}

/// A reservation of sample names (see [`Registry::reserve`]): it collects nothing.
struct Reserved;

impl Collector for Reserved {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        Vec::new()
    }
}

/// The collectors that live outside a [`Registry`] beside its families (written in Python: any object with
/// `collect()`, and the `target_info` collector), each held by a handle `H`. Their sample names are reserved in
/// the registry ([`Registry::reserve`]), which keeps them and the native families apart.
pub struct ForeignCollectors<H> {
    entries: Mutex<Vec<ForeignEntry<H>>>,
    /// Whether there is any entry (read without the lock on every exposition).
    any: AtomicBool,
}

struct ForeignEntry<H> {
    /// The reservation's key.
    key: u64,
    handle: H,
    names: Vec<String>,
    /// The `target_info` collector (there is at most one).
    target: bool,
}

impl<H> Default for ForeignCollectors<H> {
    fn default() -> Self {
        ForeignCollectors::new()
    }
}

impl<H> ForeignCollectors<H> {
    pub const fn new() -> Self {
        ForeignCollectors {
            entries: Mutex::new(Vec::new()),
            any: AtomicBool::new(false),
        }
    }

    /// Whether any collector is held.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Adds a collector with sample `names`, reserved in `reg`; a `Value` error of `func` when they clash with
    /// registered series.
    pub fn add(
        &self,
        reg: &Registry,
        handle: H,
        names: Vec<String>,
        func: &'static str,
    ) -> Result<()> {
        self.insert(reg, handle, names, false, func)
    }

    fn insert(
        &self,
        reg: &Registry,
        handle: H,
        names: Vec<String>,
        target: bool,
        func: &'static str,
    ) -> Result<()> {
        let key = reg.reserve(names.clone(), func)?;
        self.entries.locked().push(ForeignEntry {
            key,
            handle,
            names,
            target,
        });
        self.any.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Removes the first collector (not the `target_info` one, with `target` false) that `pick` selects and
    /// releases its names in `reg`; returns its handle (dropped by the caller, outside the lock).
    fn remove_where(&self, reg: &Registry, target: bool, pick: impl Fn(&H) -> bool) -> Option<H> {
        let mut entries = self.entries.locked();
        let i = entries
            .iter()
            .position(|e| e.target == target && pick(&e.handle))?;
        let e = entries.remove(i);
        reg.release(e.key);
        self.any.store(!entries.is_empty(), Ordering::Relaxed);
        Some(e.handle)
    }

    /// Removes the collector (other than the `target_info` one) that `pick` selects; `None` when there is none.
    pub fn remove(&self, reg: &Registry, pick: impl Fn(&H) -> bool) -> Option<H> {
        self.remove_where(reg, false, pick)
    }

    /// Sets the `target_info` collector: replaces the one held, adds one (reserving `target_info` in `reg`), or
    /// with `None` removes it. Returns the handle it replaced or removed.
    pub fn set_target(&self, reg: &Registry, handle: Option<H>) -> Result<Option<H>> {
        match handle {
            Some(h) => {
                if let Some(e) = self.entries.locked().iter_mut().find(|e| e.target) {
                    return Ok(Some(std::mem::replace(&mut e.handle, h)));
                }
                self.insert(reg, h, vec!["target_info".to_string()], true, "register")?;
                Ok(None)
            }
            None => Ok(self.remove_where(reg, true, |_| true)),
        }
    }

    /// `f` of the `target_info` collector's handle, when there is one.
    pub fn target<T>(&self, f: impl FnOnce(&H) -> T) -> Option<T> {
        self.entries
            .locked()
            .iter()
            .find(|e| e.target)
            .map(|e| f(&e.handle))
    }

    /// `f(handle, names)` of each collector: the `target_info` one (`target`) or the others, in the order added.
    pub fn list<T>(&self, target: bool, f: impl Fn(&H, &[String]) -> T) -> Vec<T> {
        self.entries
            .locked()
            .iter()
            .filter(|e| e.target == target)
            .map(|e| f(&e.handle, &e.names))
            .collect()
    }
}

/// Whether `_created` samples are exposed, as switched by [`set_created_enabled`].
static CREATED: AtomicBool = AtomicBool::new(true);

/// Whether `_created` samples are exposed: unless [`set_created_enabled`] turned them off or
/// `PROMETHEUS_DISABLE_CREATED_SERIES` is `true`, `1` or `t` (any case; prometheus_client's switch, read at each
/// exposition).
pub fn created_enabled() -> bool {
    CREATED.load(Ordering::Relaxed)
        && !std::env::var("PROMETHEUS_DISABLE_CREATED_SERIES")
            .is_ok_and(|v| matches!(v.to_lowercase().as_str(), "true" | "1" | "t"))
}

/// Turns the `_created` samples on or off (prometheus_client's `disable_created_metrics()`).
pub fn set_created_enabled(on: bool) {
    CREATED.store(on, Ordering::Relaxed)
}

/// One family as prometheus_client's `collect()` yields it: its name (a counter's without `_total`), help, type
/// (`counter`, `gauge`, `histogram`, `summary`) and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyView {
    pub name: String,
    pub help: String,
    pub kind: &'static str,
    pub samples: Vec<Sample>,
}

/// The families as prometheus_client's `collect()` shows them; with `only`, just the samples of those names
/// (families left without samples are dropped).
pub fn families(mfs: &[MetricFamily], only: Option<&[String]>) -> Vec<FamilyView> {
    let created = created_enabled();
    let mut out = Vec::with_capacity(mfs.len());
    for mf in mfs {
        let name = mf.name();
        let (base, kind) = match mf.get_field_type() {
            MetricType::COUNTER => (name.strip_suffix("_total").unwrap_or(name), "counter"),
            MetricType::GAUGE => (name, "gauge"),
            MetricType::HISTOGRAM => (name, "histogram"),
            MetricType::SUMMARY => (name, "summary"),
            MetricType::UNTYPED => (name, "unknown"),
        };
        // the name it was created with (as prometheus_client's `collect()` shows a UTF-8 name)
        let original = original_name(base);
        let base = original.as_deref().unwrap_or(base);
        let mut samples: Vec<Sample> = Vec::new();
        let mut push = |n: String, l: Vec<(String, String)>, v: f64| {
            if only.is_none_or(|o| o.contains(&n)) {
                samples.push((n, l, v));
            }
        };
        for m in mf.get_metric() {
            let labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let created_at = (created && m.timestamp_ms() != 0).then(|| created_of(m));
            // a histogram's and a summary's count and sum
            let count_sum = match mf.get_field_type() {
                MetricType::COUNTER => {
                    let v = m.get_counter().get_value();
                    push(format!("{base}_total"), labels.clone(), v);
                    None
                }
                MetricType::GAUGE => {
                    push(base.to_string(), labels.clone(), m.get_gauge().get_value());
                    None
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let mut inf = false;
                    for b in h.get_bucket() {
                        let mut l = labels.clone();
                        inf |= b.upper_bound() == f64::INFINITY;
                        l.push(("le".into(), openmetrics::go_float(b.upper_bound())));
                        push(format!("{base}_bucket"), l, b.cumulative_count() as f64);
                    }
                    if !inf {
                        let mut l = labels.clone();
                        l.push(("le".into(), "+Inf".into()));
                        push(format!("{base}_bucket"), l, h.get_sample_count() as f64);
                    }
                    let sum = histogram_has_sum(h).then(|| h.get_sample_sum());
                    Some((h.get_sample_count(), sum))
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    Some((s.sample_count(), Some(s.sample_sum())))
                }
                MetricType::UNTYPED => None,
            };
            if let Some((count, sum)) = count_sum {
                push(format!("{base}_count"), labels.clone(), count as f64);
                if let Some(sum) = sum {
                    push(format!("{base}_sum"), labels.clone(), sum);
                }
            }
            if let Some(t) = created_at.filter(|_| {
                matches!(
                    mf.get_field_type(),
                    MetricType::COUNTER | MetricType::HISTOGRAM | MetricType::SUMMARY
                )
            }) {
                push(format!("{base}_created"), labels, t);
            }
        }
        if !samples.is_empty() {
            out.push(FamilyView {
                name: base.to_string(),
                help: mf.help().to_string(),
                kind,
                samples,
            });
        }
    }
    out
}

/// Whether a histogram exposes its `_sum`: not when its first bucket bound is negative (the sum of observations
/// is then no counter), as prometheus_client leaves it out in every format.
pub fn histogram_has_sum(h: &proto::Histogram) -> bool {
    h.get_bucket()
        .first()
        .is_none_or(|b| b.upper_bound() >= 0.0)
}

/// The creation time (Unix seconds) a user family's series carries in its `timestamp_ms` (see
/// [`Family::collect_families`]: the registry never exposes sample timestamps, so the field is free for it).
pub fn created_of(m: &proto::Metric) -> f64 {
    m.timestamp_ms() as f64 / 1000.0
}

/// The sample names a family of `kind` named `name` (its full name, `_total` included for counters) reserves.
fn reserved_names(kind: Kind, name: &str) -> Vec<String> {
    match kind {
        Kind::Counter => {
            let base = name.strip_suffix("_total").unwrap_or(name);
            vec![
                base.into(),
                format!("{base}_total"),
                format!("{base}_created"),
            ]
        }
        Kind::Gauge | Kind::Enum => vec![name.into()],
        // the family's name is already `<name>_info`
        Kind::Info => vec![name.into()],
        Kind::Summary => ["", "_sum", "_count", "_created"]
            .iter()
            .map(|sfx| format!("{name}{sfx}"))
            .collect(),
        Kind::Histogram => ["", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .map(|sfx| format!("{name}{sfx}"))
            .collect(),
    }
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    let b = Builtin::new("ferrolab").expect("valid built-in names");
    r.insert(BUILTIN_KEY, b.names(), Box::new(b))
        .expect("built-in series register once");
    r
});
const BUILTIN_KEY: u64 = 0;
static PREFIX: LazyLock<RwLock<String>> = LazyLock::new(|| RwLock::new("ferrolab".to_string()));

/// The process-wide registry (the built-in collector is registered in it).
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// The prefix of the built-in series.
pub fn prefix() -> String {
    PREFIX.reading().clone()
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
    let mut cur = PREFIX.writing();
    if *cur == prefix {
        return Ok(());
    }
    let new = Builtin::new(prefix)?;
    let old = Builtin::new(&cur)?;
    REGISTRY.remove(BUILTIN_KEY);
    if let Err(e) = REGISTRY.insert(BUILTIN_KEY, new.names(), Box::new(new)) {
        // put the old one back so the registry stays complete
        let _ = REGISTRY.insert(BUILTIN_KEY, old.names(), Box::new(old));
        return Err(CoreError::value(
            "configure",
            "prefix",
            format!("is {prefix:?}: its series clash with registered metrics ({e})"),
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

/// prometheus_client's name validation scheme: UTF-8 metric names (the default) or only the legacy character set.
static LEGACY: LazyLock<AtomicBool> = LazyLock::new(|| {
    AtomicBool::new(
        std::env::var("PROMETHEUS_LEGACY_NAME_VALIDATION")
            .is_ok_and(|v| matches!(v.to_lowercase().as_str(), "true" | "1" | "t")),
    )
});

/// Whether names are checked against the legacy character set only (prometheus_client's
/// `enable_legacy_validation()`, or `PROMETHEUS_LEGACY_NAME_VALIDATION=true` at start).
pub fn legacy_validation() -> bool {
    LEGACY.load(Ordering::Relaxed)
}

/// Switches legacy name validation on or off (see [`legacy_validation`]).
pub fn set_legacy_validation(on: bool) {
    LEGACY.store(on, Ordering::Relaxed)
}

/// Whether `s` may name an exemplar label: any UTF-8 name not starting with `__`, or under legacy validation
/// only a valid legacy label name (as prometheus_client checks them).
pub fn valid_exemplar_label(s: &str) -> bool {
    if legacy_validation() {
        valid_label(s)
    } else {
        !s.starts_with("__")
    }
}

/// The UTF-8 names of families whose names are outside the legacy character set, by their escaped name (see
/// [`escape_name`]); empty unless such a family was created.
static ORIGINALS: LazyLock<RwLock<HashMap<String, String>>> = LazyLock::new(Default::default);
static ANY_ORIGINAL: AtomicBool = AtomicBool::new(false);

/// The name a family was created with, given the escaped name the exposition writes (`utf8_cc` for
/// `utf8.cc`); `None` for names that needed no escaping.
pub fn original_name(escaped: &str) -> Option<String> {
    if !ANY_ORIGINAL.load(Ordering::Relaxed) {
        return None;
    }
    ORIGINALS.reading().get(escaped).cloned()
}

/// Renders all metrics of the process-wide registry in the Prometheus text format 0.0.4.
pub fn exposition() -> Result<String> {
    Ok(REGISTRY.exposition(None))
}

/// One sample: `(name, labels, value)`.
pub type Sample = (String, Vec<(String, String)>, f64);

/// All samples of the process-wide registry as `(name, labels, value)`, e.g. for tests and `get_sample_value`.
pub fn samples() -> Vec<Sample> {
    REGISTRY.samples()
}

// ---------------------------------------------------------------------------------------------------------------
// User metrics

/// The kind of a user metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// A count and a sum of observations (prometheus_client's `Summary`, which has no quantiles either).
    Summary,
    /// Key-value pairs about a target (prometheus_client's `Info`): the series `<name>_info{...} 1`.
    Info,
    /// One of a set of states (prometheus_client's `Enum`): a gauge per state, labelled with the metric's name,
    /// 1 for the current state and 0 for the others.
    Enum,
}

impl Kind {
    pub fn class(self) -> &'static str {
        match self {
            Kind::Counter => "Counter",
            Kind::Gauge => "Gauge",
            Kind::Histogram => "Histogram",
            Kind::Summary => "Summary",
            Kind::Enum => "Enum",
            Kind::Info => "Info",
        }
    }
}

/// A labelled family of one kind (an unlabelled metric is a family with no label names).
#[derive(Clone)]
pub struct Family {
    id: u64,
    kind: Kind,
    name: String,
    labels: Vec<String>,
    /// A histogram's finite bucket bounds (the exemplar slot of an observation).
    bounds: Vec<f64>,
    vec: Vecs,
    /// When each series was created (Unix milliseconds) by [`series_key`](openmetrics::series_key): the
    /// `_created` samples of counters and histograms.
    created: Arc<Mutex<CreatedTimes>>,
    /// Gauges whose value a function gives at collection (`set_function`), by series key.
    functions: Arc<RwLock<HashMap<String, GaugeFn>>>,
    /// An enum's states (the first is a new series' state).
    states: Vec<String>,
}

/// Creation times (Unix milliseconds) by series key; looked up once per series at every collection, so hashed
/// with FxHash rather than SipHash (the keys are the process's own label values).
type CreatedTimes = HashMap<String, i64, rustc_hash::FxBuildHasher>;

/// The function behind a gauge (`Gauge.set_function`), called at each collection.
pub type GaugeFn = Arc<dyn Fn() -> f64 + Send + Sync>;

/// A family's collector: its series, each carrying its creation time in `timestamp_ms`.
struct UserCollector {
    inner: Box<dyn Collector>,
    created: Arc<Mutex<CreatedTimes>>,
    /// A summary's histogram of one bucket is exposed as a summary: its count and sum.
    summary: bool,
    functions: Arc<RwLock<HashMap<String, GaugeFn>>>,
}

impl Collector for UserCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut mfs = self.inner.collect();
        if self.summary {
            for mf in &mut mfs {
                mf.set_field_type(MetricType::SUMMARY);
                for m in mf.mut_metric() {
                    let h = m.get_histogram();
                    let mut s = proto::Summary::default();
                    s.set_sample_count(h.get_sample_count());
                    s.set_sample_sum(h.get_sample_sum());
                    m.set_summary(s);
                }
            }
        }
        let functions: Vec<(String, GaugeFn)> = {
            let f = self.functions.reading();
            f.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if !functions.is_empty() {
            for mf in &mut mfs {
                for m in mf.mut_metric() {
                    let key = openmetrics::series_key(
                        m.get_label().iter().map(|l| (l.name(), l.value())),
                    );
                    if let Some((_, f)) = functions.iter().find(|(k, _)| *k == key) {
                        let mut g = proto::Gauge::default();
                        g.set_value(f());
                        m.set_gauge(g);
                    }
                }
            }
        }
        let created = self.created.locked();
        if created.is_empty() {
            return mfs;
        }
        let mut key = String::with_capacity(64);
        for mf in &mut mfs {
            for m in mf.mut_metric() {
                openmetrics::series_key_into(&mut key, m.get_label());
                if let Some(t) = created.get(key.as_str()) {
                    m.set_timestamp_ms(*t);
                }
            }
        }
        mfs
    }
}

/// The series of a counter, gauge or histogram family, by their label values, in the order they were made (the
/// order prometheus_client lists them in). The `prometheus` crate's own vectors are not used: they find a series
/// by a 64-bit hash of its label values written one after the other, without separators, and keep one series per
/// hash, so ("GET", "") and ("", "GET"), or any two tuples whose hashes collide, would be one series with their
/// updates merged. Here a series is found by its values themselves (a map with SipHash and equality checks).
struct SeriesSet<M> {
    desc: Desc,
    field_type: MetricType,
    /// Makes a new series: an unlabelled metric of the family's name and help (its labels are set at collection).
    make: Box<dyn Fn() -> prometheus::Result<M> + Send + Sync>,
    series: RwLock<IndexMap<Box<[String]>, M>>,
}

impl<M: prometheus::core::Metric> SeriesSet<M> {
    fn new(
        name: &str,
        help: &str,
        labels: &[String],
        field_type: MetricType,
        make: Box<dyn Fn() -> prometheus::Result<M> + Send + Sync>,
    ) -> prometheus::Result<Arc<Self>> {
        let desc = Desc::new(
            name.to_string(),
            help.to_string(),
            labels.to_vec(),
            HashMap::new(),
        )?;
        // a series made now reports what would stop every later one (a histogram's buckets, say)
        make()?;
        Ok(Arc::new(SeriesSet {
            desc,
            field_type,
            make,
            series: RwLock::new(IndexMap::new()),
        }))
    }

    /// The series for `values`, made on first use.
    fn get<V: AsRef<str>>(&self, values: &[V]) -> prometheus::Result<M> {
        let expect = self.desc.variable_labels.len();
        if values.len() != expect {
            let got = values.len();
            return Err(prometheus::Error::InconsistentCardinality { expect, got });
        }
        let key: Box<[String]> = values.iter().map(|v| v.as_ref().to_owned()).collect();
        if let Some(m) = self.series.reading().get(&key) {
            return Ok(m.clone());
        }
        let mut series = self.series.writing();
        if let Some(m) = series.get(&key) {
            return Ok(m.clone());
        }
        let m = (self.make)()?;
        series.insert(key, m.clone());
        Ok(m)
    }

    /// Removes the series for `values` (the others keep their order).
    fn remove<V: AsRef<str>>(&self, values: &[V]) {
        let key: Box<[String]> = values.iter().map(|v| v.as_ref().to_owned()).collect();
        self.series.writing().shift_remove(&key);
    }

    fn clear(&self) {
        self.series.writing().clear();
    }
}

impl<M: prometheus::core::Metric> Collector for SeriesSet<M> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let names = &self.desc.variable_labels;
        let series = self.series.reading();
        let metrics: Vec<proto::Metric> = series
            .iter()
            .map(|(values, m)| {
                let mut pairs: Vec<(&str, &str)> = names
                    .iter()
                    .map(String::as_str)
                    .zip(values.iter().map(String::as_str))
                    .collect();
                pairs.sort_unstable();
                let mut pm = m.metric();
                pm.set_label(labels(&pairs));
                pm
            })
            .collect();
        let mut mf = MetricFamily::default();
        mf.set_name(self.desc.fq_name.clone());
        mf.set_help(self.desc.help.clone());
        mf.set_field_type(self.field_type);
        mf.set_metric(metrics);
        vec![mf]
    }
}

#[derive(Clone)]
enum Vecs {
    Counter(Arc<SeriesSet<prometheus::Counter>>),
    Gauge(Arc<SeriesSet<prometheus::Gauge>>),
    Histogram(Arc<SeriesSet<prometheus::Histogram>>),
    Info(Arc<InfoStore>),
}

/// One info series: its label values and its key-value pairs.
type InfoSeries = (Vec<String>, Vec<(String, String)>);

/// The collector of a counter, gauge or histogram family.
struct SetCollector<M>(Arc<SeriesSet<M>>);

impl<M: prometheus::core::Metric> Collector for SetCollector<M> {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

/// The collector of an info family.
struct InfoCollector(Arc<InfoStore>);

impl Collector for InfoCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

/// An info family's series: the key-value pairs of each, by label values.
struct InfoStore {
    /// The exposed name (`<name>_info`) and help.
    name: String,
    help: String,
    labels: Vec<String>,
    desc: Desc,
    series: RwLock<Vec<InfoSeries>>,
}

impl Collector for InfoStore {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.series.reading();
        let metrics: Vec<proto::Metric> = series
            .iter()
            .map(|(values, pairs)| {
                let mut all: Vec<(&str, &str)> = self
                    .labels
                    .iter()
                    .map(String::as_str)
                    .zip(values.iter().map(String::as_str))
                    .chain(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .collect();
                all.sort();
                let mut m = gauge_metric(1.0);
                m.set_label(labels(&all));
                m
            })
            .collect();
        let mut mf = MetricFamily::default();
        mf.set_name(self.name.clone());
        mf.set_help(self.help.clone());
        mf.set_field_type(MetricType::GAUGE);
        mf.set_metric(metrics);
        vec![mf]
    }
}

static NEXT_FAMILY: AtomicU64 = AtomicU64::new(1);

/// One time series of a family.
#[derive(Clone)]
pub enum Child {
    Counter(prometheus::Counter),
    Gauge(prometheus::Gauge),
    Histogram(prometheus::Histogram),
    /// An enum's or an info's series: its label values (see [`Family::enum_state`], [`Family::set_info`]).
    Enum(Vec<String>),
}

impl Child {
    /// The series of a counter family (every series of a family has the family's kind: another is a bug).
    pub fn as_counter(&self) -> &prometheus::Counter {
        match self {
            Child::Counter(c) => c,
            _ => unreachable!("a counter family holds counters"),
        }
    }

    /// The series of a gauge family.
    pub fn as_gauge(&self) -> &prometheus::Gauge {
        match self {
            Child::Gauge(g) => g,
            _ => unreachable!("a gauge family holds gauges"),
        }
    }

    /// The series of a histogram or summary family (a summary is a histogram of one bucket).
    pub fn as_histogram(&self) -> &prometheus::Histogram {
        match self {
            Child::Histogram(h) => h,
            _ => unreachable!("a histogram or summary family holds histograms"),
        }
    }

    /// The label values of an enum's or an info's series.
    pub fn keyed(&self) -> &[String] {
        match self {
            Child::Enum(values) => values,
            _ => unreachable!("an enum or info family holds keyed series"),
        }
    }
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
    if matches!(kind, Kind::Enum | Kind::Info) && !unit.is_empty() {
        let why = format!("is not supported: an {func} has no unit");
        return Err(CoreError::value(func, "unit", why));
    }
    if name.is_empty() {
        // as prometheus_client: a namespace or subsystem does not make up for a missing name
        return Err(CoreError::value(func, "name", "is empty"));
    }
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
    if full.is_empty() {
        return Err(CoreError::value(func, "name", "is empty"));
    }
    if legacy_validation() && !valid_name(&full) {
        return Err(CoreError::value(
            func,
            "name",
            format!(
                "{full:?} is not a legacy metric name ([a-zA-Z_:][a-zA-Z0-9_:]*; legacy name validation is on)"
            ),
        ));
    }
    Ok(full)
}

/// A metric name as the exposition writes it: a valid legacy name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) as it is, any
/// other UTF-8 name with each character outside that set replaced by `_` (prometheus_client 0.26's default
/// `underscores` escaping: `utf8.cc` is written `utf8_cc`).
pub fn escape_name(name: &str) -> String {
    if valid_name(name) {
        return name.to_string();
    }
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Family {
    /// Creates a family (not registered yet). `name` is the full name from [`full_name`]; a UTF-8 name outside
    /// the legacy character set is exposed escaped (see [`escape_name`]).
    pub fn new(
        kind: Kind,
        name: &str,
        help: &str,
        labels: &[String],
        buckets: Option<&[f64]>,
    ) -> Result<Family> {
        let func = kind.class();
        let escaped = escape_name(name);
        if escaped != name {
            ANY_ORIGINAL.store(true, Ordering::Relaxed);
            let mut originals = ORIGINALS.writing();
            originals.insert(escaped.clone(), name.to_string());
        }
        let name = escaped.as_str();
        for l in labels {
            if !valid_label(l)
                || (kind == Kind::Histogram && l == "le")
                || (kind == Kind::Summary && l == "quantile")
            {
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
        let err = |e: prometheus::Error| CoreError::value(func, "name", e);
        let mut bounds = Vec::new();
        let vec = match kind {
            Kind::Counter => {
                let total = format!("{name}_total");
                let opts = Opts::new(total.clone(), help);
                let set = SeriesSet::new(
                    &total,
                    help,
                    labels,
                    MetricType::COUNTER,
                    Box::new(move || prometheus::Counter::with_opts(opts.clone())),
                );
                Vecs::Counter(set.map_err(err)?)
            }
            Kind::Gauge | Kind::Enum => {
                let opts = Opts::new(name, help);
                let set = SeriesSet::new(
                    name,
                    help,
                    labels,
                    MetricType::GAUGE,
                    Box::new(move || prometheus::Gauge::with_opts(opts.clone())),
                );
                Vecs::Gauge(set.map_err(err)?)
            }
            Kind::Info => {
                let exposed = format!("{name}_info");
                let desc = Desc::new(
                    exposed.clone(),
                    help.to_string(),
                    labels.to_vec(),
                    HashMap::new(),
                )
                .map_err(err)?;
                Vecs::Info(Arc::new(InfoStore {
                    name: exposed,
                    help: help.to_string(),
                    labels: labels.to_vec(),
                    desc,
                    series: RwLock::new(Vec::new()),
                }))
            }
            Kind::Histogram | Kind::Summary => {
                let b = match (kind, buckets) {
                    // a count and a sum: a histogram of one bucket, exposed as a summary (see `UserCollector`)
                    (Kind::Summary, _) => vec![f64::MAX],
                    (_, None) => DEFAULT_BUCKETS.to_vec(),
                    (_, Some(b)) => check_buckets(b)?,
                };
                if kind == Kind::Histogram {
                    bounds = b.clone();
                }
                let opts = HistogramOpts::new(name, help).buckets(b);
                let set = SeriesSet::new(
                    name,
                    help,
                    labels,
                    MetricType::HISTOGRAM,
                    Box::new(move || prometheus::Histogram::with_opts(opts.clone())),
                );
                Vecs::Histogram(set.map_err(err)?)
            }
        };
        let full = if kind == Kind::Counter {
            format!("{name}_total")
        } else if kind == Kind::Info {
            format!("{name}_info")
        } else {
            name.to_string()
        };
        Ok(Family {
            id: NEXT_FAMILY.fetch_add(1, Ordering::Relaxed),
            kind,
            name: full,
            labels: labels.to_vec(),
            bounds,
            vec,
            created: Arc::new(Mutex::new(CreatedTimes::default())),
            functions: Arc::new(RwLock::new(HashMap::new())),
            states: Vec::new(),
        })
    }

    /// Creates an enum family (not registered yet): one gauge per state and label values, labelled with the
    /// metric's name (which may therefore not be one of `labels`).
    pub fn new_enum(
        name: &str,
        help: &str,
        labels: &[String],
        states: &[String],
    ) -> Result<Family> {
        if states.is_empty() {
            return Err(CoreError::value(
                "Enum",
                "states",
                "is empty: no states provided",
            ));
        }
        let escaped = escape_name(name);
        if labels.contains(&escaped) {
            return Err(CoreError::value(
                "Enum",
                "labelnames",
                format!("contains the metric's name {escaped:?} (overlapping labels for an Enum)"),
            ));
        }
        if !valid_label(&escaped) {
            return Err(CoreError::value(
                "Enum",
                "name",
                format!("{escaped:?} must also be a valid label name (the state's label)"),
            ));
        }
        let mut all = labels.to_vec();
        all.push(escaped);
        let mut f = Family::new(Kind::Gauge, name, help, &all, None)?;
        f.kind = Kind::Enum;
        f.labels = labels.to_vec();
        f.states = states.to_vec();
        Ok(f)
    }

    /// Sets the key-value pairs of the info series `values` (replacing the previous ones). The keys must be
    /// valid label names other than the family's label names.
    pub fn set_info<V: AsRef<str>>(
        &self,
        values: &[V],
        pairs: Vec<(String, String)>,
    ) -> Result<()> {
        let Vecs::Info(store) = &self.vec else {
            return Err(CoreError::value("info", "self", "is not an Info"));
        };
        for (k, _) in &pairs {
            if !valid_label(k) || self.labels.contains(k) {
                return Err(CoreError::value(
                    "info",
                    "val",
                    format!("has the key {k:?}: an invalid label name or one of the metric's label names"),
                ));
            }
        }
        let mut series = store.series.writing();
        let vals: Vec<String> = values.iter().map(|v| v.as_ref().to_string()).collect();
        match series.iter_mut().find(|(v, _)| *v == vals) {
            Some((_, p)) => *p = pairs,
            None => series.push((vals, pairs)),
        }
        Ok(())
    }

    /// Sets the state of the enum series `values` (a `ValueError`-class error for an unknown state).
    pub fn enum_state<V: AsRef<str>>(&self, values: &[V], state: &str) -> Result<()> {
        let Some(i) = self.states.iter().position(|s| s == state) else {
            return Err(CoreError::value(
                "state",
                "state",
                format!("is {state:?}; expected one of {:?}", self.states),
            ));
        };
        let Vecs::Gauge(v) = &self.vec else {
            return Err(CoreError::value("state", "self", "is not an Enum"));
        };
        for (j, st) in self.states.iter().enumerate() {
            let mut vals: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
            vals.push(st);
            let g = v
                .get(&vals)
                .map_err(|e| CoreError::value("state", "labelvalues", e))?;
            g.set(if i == j { 1.0 } else { 0.0 });
        }
        Ok(())
    }

    /// The family's current series (whether it is registered or not).
    pub fn collect_families(&self) -> Vec<MetricFamily> {
        self.collector().collect()
    }

    /// Stores `ex` as the exemplar of the series `values` for an observation (histogram) or increment (counter)
    /// of `value`; gauges have none.
    pub fn exemplar<V: AsRef<str>>(&self, values: &[V], value: f64, ex: openmetrics::Exemplar) {
        let slot = match self.kind {
            Kind::Gauge | Kind::Summary | Kind::Enum | Kind::Info => return,
            Kind::Counter => 0,
            Kind::Histogram => self.bounds.partition_point(|b| *b < value),
        };
        let key = openmetrics::series_key(
            self.labels
                .iter()
                .map(String::as_str)
                .zip(values.iter().map(AsRef::as_ref)),
        );
        openmetrics::put(&self.name, key, slot, ex);
    }

    fn collector(&self) -> Box<dyn Collector> {
        let inner: Box<dyn Collector> = match &self.vec {
            Vecs::Counter(v) => Box::new(SetCollector(v.clone())),
            Vecs::Gauge(v) => Box::new(SetCollector(v.clone())),
            Vecs::Histogram(v) => Box::new(SetCollector(v.clone())),
            Vecs::Info(v) => Box::new(InfoCollector(v.clone())),
        };
        Box::new(UserCollector {
            inner,
            created: self.created.clone(),
            summary: self.kind == Kind::Summary,
            functions: self.functions.clone(),
        })
    }

    /// A histogram's bucket upper bounds, `+Inf` last (empty for other kinds).
    pub fn upper_bounds(&self) -> Vec<f64> {
        if self.kind != Kind::Histogram {
            return Vec::new();
        }
        self.bounds.iter().copied().chain([f64::INFINITY]).collect()
    }

    /// The family's full name as exposed (a counter's with `_total`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers the family in the process-wide registry; a `ValueError`-class error names the series that are
    /// already taken.
    pub fn register(&self, func: &'static str) -> Result<()> {
        self.register_in(&REGISTRY, func)
    }

    /// Registers the family in `reg`; the only error is a clash: a `ValueError`-class error that names the series
    /// already taken (prometheus_client's `Duplicated timeseries`).
    pub fn register_in(&self, reg: &Registry, func: &'static str) -> Result<()> {
        let names = reserved_names(self.kind, &self.name);
        reg.insert(self.id, names.clone(), self.collector())
            .map_err(|_| {
                let taken = reg.taken(&names);
                CoreError::value(
                    func,
                    "name",
                    format!(
                        "clashes with registered series {taken:?}: duplicated timeseries (unregister the other \
                         metric first)"
                    ),
                )
            })
    }

    /// Removes the family from the process-wide registry; `false` when it was not registered.
    pub fn unregister(&self) -> bool {
        self.unregister_from(&REGISTRY)
    }

    /// Removes the family from `reg`; `false` when it was not registered there.
    pub fn unregister_from(&self, reg: &Registry) -> bool {
        openmetrics::forget(&self.name, None);
        reg.remove(self.id)
    }

    /// The series for `values` (created on first use, then stamped `now`, Unix seconds, as its creation time).
    pub fn child_at<V: AsRef<str> + std::fmt::Debug>(
        &self,
        values: &[V],
        now: f64,
    ) -> Result<Child> {
        let c = self.child(values)?;
        if self.kind != Kind::Gauge {
            let key = self.key(values);
            let mut created = self.created.locked();
            if let std::collections::hash_map::Entry::Vacant(e) = created.entry(key) {
                e.insert((now * 1000.0).round() as i64);
                if self.kind == Kind::Enum {
                    // a new enum series starts in the first state
                    self.enum_state(values, &self.states[0])?;
                }
            }
        }
        Ok(c)
    }

    /// Makes the gauge series `values` report what `f` returns at each collection (prometheus_client's
    /// `set_function`); `None` goes back to the stored value.
    pub fn set_function<V: AsRef<str>>(&self, values: &[V], f: Option<GaugeFn>) {
        let key = self.key(values);
        let mut fs = self.functions.writing();
        match f {
            Some(f) => fs.insert(key, f),
            None => fs.remove(&key),
        };
    }

    /// Removes every series whose labels include all of `labels` (prometheus_client's `remove_by_labels`); the
    /// label values of the removed series.
    pub fn remove_by_labels(&self, labels: &[(String, String)]) -> Result<Vec<Vec<String>>> {
        if labels.is_empty() {
            // as prometheus_client: no labels select nothing
            return Ok(Vec::new());
        }
        if let Some((k, _)) = labels.iter().find(|(k, _)| !self.labels.contains(k)) {
            return Err(CoreError::value(
                "remove_by_labels",
                "labels",
                format!("has {k:?}, which is not a label name of {:?}", self.name),
            ));
        }
        let mut gone = Vec::new();
        for mf in self.collector().collect() {
            for m in mf.get_metric() {
                let pairs: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels
                    .iter()
                    .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v))
                {
                    let values: Vec<String> = self
                        .labels
                        .iter()
                        .map(|n| {
                            pairs
                                .iter()
                                .find(|(k, _)| k == n)
                                .map_or(String::new(), |(_, v)| v.to_string())
                        })
                        .collect();
                    gone.push(values);
                }
            }
        }
        for v in &gone {
            self.remove(v);
        }
        Ok(gone)
    }

    /// Restamps the creation time of the series `values` (a counter's `reset()`).
    pub fn recreated<V: AsRef<str>>(&self, values: &[V], now: f64) {
        let key = self.key(values);
        let mut created = self.created.locked();
        created.insert(key, (now * 1000.0).round() as i64);
    }

    fn key<V: AsRef<str>>(&self, values: &[V]) -> String {
        openmetrics::series_key(
            self.labels
                .iter()
                .map(String::as_str)
                .zip(values.iter().map(AsRef::as_ref)),
        )
    }

    /// An enum's or an info's label values must be complete (no default series to fall back on).
    fn check_arity(&self, n: usize) -> Result<()> {
        if n == self.labels.len() {
            return Ok(());
        }
        let msg = format!("has {n} values; expected {}", self.labels.len());
        Err(CoreError::value("labels", "labelvalues", msg))
    }

    /// The series for `values` (created on first use).
    pub fn child<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) -> Result<Child> {
        let err = |e: prometheus::Error| CoreError::value("labels", "labelvalues", e);
        if let Vecs::Info(store) = &self.vec {
            self.check_arity(values.len())?;
            let vals: Vec<String> = values.iter().map(|v| v.as_ref().to_string()).collect();
            let mut series = store.series.writing();
            if !series.iter().any(|(v, _)| *v == vals) {
                series.push((vals.clone(), Vec::new()));
            }
            return Ok(Child::Enum(vals));
        }
        if self.kind == Kind::Enum {
            self.check_arity(values.len())?;
            return Ok(Child::Enum(
                values.iter().map(|v| v.as_ref().to_string()).collect(),
            ));
        }
        Ok(match &self.vec {
            Vecs::Counter(v) => Child::Counter(v.get(values).map_err(err)?),
            Vecs::Gauge(v) => Child::Gauge(v.get(values).map_err(err)?),
            Vecs::Histogram(v) => Child::Histogram(v.get(values).map_err(err)?),
            Vecs::Info(_) => unreachable!("info series are handled above"),
        })
    }

    /// Removes the series for `values` (nothing happens when there is none, as in prometheus_client).
    pub fn remove<V: AsRef<str> + std::fmt::Debug>(&self, values: &[V]) {
        let key = openmetrics::series_key(
            self.labels
                .iter()
                .map(String::as_str)
                .zip(values.iter().map(AsRef::as_ref)),
        );
        openmetrics::forget(&self.name, Some(&key));
        self.created.locked().remove(&key);
        self.functions.writing().remove(&key);
        if let (Kind::Enum, Vecs::Gauge(v)) = (self.kind, &self.vec) {
            for st in &self.states {
                let mut vals: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
                vals.push(st);
                v.remove(&vals);
            }
            return;
        }
        match &self.vec {
            Vecs::Counter(v) => v.remove(values),
            Vecs::Gauge(v) => v.remove(values),
            Vecs::Histogram(v) => v.remove(values),
            Vecs::Info(v) => {
                let mut series = v.series.writing();
                series.retain(|(vals, _)| {
                    !vals
                        .iter()
                        .map(String::as_str)
                        .eq(values.iter().map(AsRef::as_ref))
                });
            }
        }
    }

    /// Removes every series of a labelled family (an unlabelled one keeps its single series, as in
    /// prometheus_client).
    pub fn clear(&self) {
        if self.labelled() {
            openmetrics::forget(&self.name, None);
            self.created.locked().clear();
            match &self.vec {
                Vecs::Counter(v) => v.clear(),
                Vecs::Gauge(v) => v.clear(),
                Vecs::Histogram(v) => v.clear(),
                Vecs::Info(v) => v.series.writing().clear(),
            }
        }
    }

    fn labelled(&self) -> bool {
        let c = self.collector();
        c.desc()
            .first()
            .is_some_and(|d| !d.variable_labels.is_empty())
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
                d(
                    "gpu_memory_usage_bytes",
                    "Memory in use on a GPU this process computes on (all processes' use, as the driver reports it).",
                    &["device"],
                )?,
                d(
                    "gpu_memory_total_bytes",
                    "Memory of a GPU this process computes on.",
                    &["device"],
                )?,
            ],
        })
    }

    /// Every sample name the built-in series may use.
    fn names(&self) -> Vec<String> {
        let p = &self.prefix;
        let mut v = reserved_names(Kind::Counter, &format!("{p}_operations_total"));
        v.extend(reserved_names(
            Kind::Histogram,
            &format!("{p}_operation_duration_seconds"),
        ));
        v.extend(reserved_names(Kind::Counter, &format!("{p}_errors_total")));
        for g in [
            "memory_usage_bytes",
            "memory_total_bytes",
            "cpu_usage_percent",
            "gpu_memory_usage_bytes",
            "gpu_memory_total_bytes",
        ] {
            v.push(format!("{p}_{g}"));
        }
        v
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
    let mut sys = SYS.locked();
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
        let mut errs_by: Vec<(&str, &str, u64)> = Vec::new();
        for s in &stats {
            let (op, dev) = (s.operation, s.device);
            ops.push(counter_metric(
                &[("operation", op), ("device", dev), ("status", "success")],
                (s.calls - s.errors - s.fallbacks) as f64,
            ));
            if dev == "cuda" {
                ops.push(counter_metric(
                    &[("operation", op), ("device", dev), ("status", "fallback")],
                    s.fallbacks as f64,
                ));
            }
            ops.push(counter_metric(
                &[("operation", op), ("device", dev), ("status", "error")],
                s.errors as f64,
            ));
            // one series per (operation, error_type): the devices' counts add up
            for (kind, n) in seam::ERROR_KINDS.iter().zip(s.errors_by_kind) {
                if n > 0 {
                    match errs_by.iter_mut().find(|(o, k, _)| *o == op && k == kind) {
                        Some((_, _, total)) => *total += n,
                        None => errs_by.push((op, *kind, n)),
                    }
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
        let errs: Vec<proto::Metric> = errs_by
            .into_iter()
            .map(|(op, kind, n)| {
                counter_metric(&[("operation", op), ("error_type", kind)], n as f64)
            })
            .collect();
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
        // GPUs this process has set up (a scrape never initialises CUDA)
        let gpus = crate::gpu::exec::memory();
        if !gpus.is_empty() {
            let (mut used, mut total) = (Vec::new(), Vec::new());
            for (ordinal, u, t) in gpus {
                let dev = format!("cuda:{ordinal}");
                let mut m = gauge_metric(u as f64);
                m.set_label(labels(&[("device", &dev)]));
                used.push(m);
                let mut m = gauge_metric(t as f64);
                m.set_label(labels(&[("device", &dev)]));
                total.push(m);
            }
            out.push(self.family(
                "gpu_memory_usage_bytes",
                "Memory in use on a GPU this process computes on (all processes' use, as the driver reports it).",
                MetricType::GAUGE,
                used,
            ));
            out.push(self.family(
                "gpu_memory_total_bytes",
                "Memory of a GPU this process computes on.",
                MetricType::GAUGE,
                total,
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
    fn label_values_that_concatenate_alike_are_separate_series_in_creation_order() {
        let labels = ["a".to_string(), "b".to_string()];
        let f = Family::new(Kind::Counter, "concat_test", "Doc.", &labels, None).unwrap();
        let tuples = [
            ["GET", ""],
            ["", "GET"],
            ["user1", "0"],
            ["user", "10"],
            ["2:ab", "3:x"],
        ];
        for (k, t) in tuples.iter().enumerate() {
            f.child(t).unwrap().as_counter().inc_by((k + 1) as f64);
        }
        let series = |f: &Family| -> Vec<(Vec<String>, f64)> {
            f.collect_families()[0]
                .get_metric()
                .iter()
                .map(|m| {
                    let vals = m
                        .get_label()
                        .iter()
                        .map(|l| l.value().to_string())
                        .collect();
                    (vals, m.get_counter().get_value())
                })
                .collect()
        };
        let mut want: Vec<(Vec<String>, f64)> = tuples
            .iter()
            .enumerate()
            .map(|(k, t)| (t.iter().map(|v| v.to_string()).collect(), (k + 1) as f64))
            .collect();
        assert_eq!(series(&f), want);
        // a removed series is gone; made again, it starts from zero and comes last (as in prometheus_client)
        f.remove(&["user", "10"]);
        let again = want.remove(3);
        assert_eq!(series(&f), want);
        f.child(&["user", "10"]).unwrap().as_counter().inc();
        want.push((again.0, 1.0));
        assert_eq!(series(&f), want);
        f.clear();
        assert!(series(&f).is_empty());
        let err = f
            .child(&["only one"])
            .err()
            .expect("two label values are needed");
        assert!(err.to_string().contains("labelvalues"), "{err}");
    }

    #[test]
    fn label_cache_hands_out_the_first_object_per_values() {
        let c: LabelCache<u32> = LabelCache::default();
        assert_eq!(c.find(&["a", "b"], |v| *v), None);
        assert_eq!(c.insert(&["a", "b"], 1, |v| *v), 1);
        // a second insert for the same values keeps the first object
        assert_eq!(c.insert(&["a", "b"], 2, |v| *v), 1);
        // values are compared as a tuple, not as their concatenation
        assert_eq!(c.insert(&["ab", ""], 3, |v| *v), 3);
        assert_eq!(c.find(&["a", "b"], |v| *v), Some(1));
        let gone = [vec!["a".to_string(), "b".to_string()]];
        c.remove(gone.iter().map(|v| &v[..]));
        assert_eq!(c.find(&["a", "b"], |v| *v), None);
        assert_eq!(c.find(&["ab", ""], |v| *v), Some(3));
        c.clear();
        assert_eq!(c.find(&["ab", ""], |v| *v), None);
    }

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
        // a gauge may not take a name the counter's series use
        let g = Family::new(Kind::Gauge, "core_jobs_created", "", &[], None).unwrap();
        assert!(g.register("Gauge").is_err());
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
        // the name is free again, with other labels and help
        let f2 = Family::new(
            Kind::Counter,
            &name,
            "Other.",
            &["a".into(), "b".into()],
            None,
        )
        .unwrap();
        f2.register("Counter").unwrap();
        assert!(f2.unregister());
    }

    #[test]
    fn own_registries_render_like_prometheus_client() {
        let reg = Registry::new();
        let c = Family::new(Kind::Counter, "own_c", "A counter", &[], None).unwrap();
        c.register_in(&reg, "Counter").unwrap();
        // the same names may live in another registry, not twice in one
        let c2 = Family::new(Kind::Counter, "own_c", "A counter", &[], None).unwrap();
        assert!(c2.register_in(&reg, "Counter").is_err());
        match c.child_at::<&str>(&[], 123.456).unwrap() {
            Child::Counter(x) => x.inc(),
            _ => unreachable!(),
        }
        let h = Family::new(
            Kind::Histogram,
            "own_h",
            "A histogram",
            &["a".into()],
            Some(&[1.0]),
        )
        .unwrap();
        h.register_in(&reg, "Histogram").unwrap();
        match h.child_at(&["x"], 123.456).unwrap() {
            Child::Histogram(x) => x.observe(0.5),
            _ => unreachable!(),
        }
        let text = reg.exposition(None);
        assert_eq!(
            text,
            "# HELP own_c_total A counter\n# TYPE own_c_total counter\nown_c_total 1.0\n\
             # HELP own_c_created A counter\n# TYPE own_c_created gauge\nown_c_created 123.456\n\
             # HELP own_h A histogram\n# TYPE own_h histogram\n\
             own_h_bucket{a=\"x\",le=\"1.0\"} 1.0\nown_h_bucket{a=\"x\",le=\"+Inf\"} 1.0\n\
             own_h_count{a=\"x\"} 1.0\nown_h_sum{a=\"x\"} 0.5\n\
             # HELP own_h_created A histogram\n# TYPE own_h_created gauge\nown_h_created{a=\"x\"} 123.456\n"
        );
        let labels = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let le = labels(&[("le", "1.0"), ("a", "x")]);
        assert_eq!(reg.sample_value("own_h_bucket", le, None), Some(1.0));
        assert_eq!(
            reg.sample_value("own_h_sum", labels(&[("a", "x")]), None),
            Some(0.5)
        );
        assert_eq!(reg.sample_value("own_h_sum", labels(&[]), None), None);
        let only = ["own_c_total".to_string()];
        assert_eq!(
            reg.sample_value("own_c_total", labels(&[]), Some(&only)),
            Some(1.0)
        );
        assert_eq!(
            reg.sample_value("own_h_sum", labels(&[("a", "x")]), Some(&only)),
            None
        );
        // nothing of the process-wide registry
        assert!(!text.contains("ferrolab_"));
        let only = reg.exposition(Some(&["own_h_count".to_string()]));
        assert_eq!(
            only,
            "# HELP own_h A histogram\n# TYPE own_h histogram\nown_h_count{a=\"x\"} 1.0\n"
        );
        let s = reg.samples();
        assert!(s.contains(&("own_c_created".into(), vec![], 123.456)));
        assert!(c.unregister_from(&reg));
        assert!(!reg.exposition(None).contains("own_c"));
    }

    #[test]
    fn foreign_collectors_reserve_their_names_and_keep_one_target_info() {
        let reg = Registry::new();
        let own = Family::new(Kind::Counter, "fc_native", "", &[], None).unwrap();
        own.register_in(&reg, "Counter").unwrap();
        let fc: ForeignCollectors<&str> = ForeignCollectors::new();
        assert!(!fc.any());
        fc.add(&reg, "a", vec!["fc_a".into()], "register").unwrap();
        let e = fc
            .add(&reg, "b", vec!["fc_native_total".into()], "register")
            .unwrap_err();
        assert!(e.to_string().contains("duplicated timeseries"), "{e}");
        assert!(fc.add(&reg, "b", vec!["fc_a".into()], "register").is_err());
        assert_eq!(
            fc.list(false, |h, n| (*h, n.to_vec())),
            [("a", vec!["fc_a".to_string()])]
        );
        assert!(fc.any());
        // target_info: added, replaced, removed; it is not one of the others
        assert_eq!(fc.set_target(&reg, Some("t1")).unwrap(), None);
        assert_eq!(fc.set_target(&reg, Some("t2")).unwrap(), Some("t1"));
        assert_eq!(fc.target(|h| *h), Some("t2"));
        assert_eq!(fc.list(true, |h, _| *h), ["t2"]);
        assert_eq!(fc.remove(&reg, |h| *h == "t2"), None);
        assert!(reg.reserve(vec!["target_info".into()], "x").is_err());
        assert_eq!(fc.set_target(&reg, None).unwrap(), Some("t2"));
        assert_eq!(fc.set_target(&reg, None).unwrap(), None);
        assert_eq!(fc.target(|h| *h), None);
        // removal frees the names
        assert_eq!(fc.remove(&reg, |h| *h == "a"), Some("a"));
        assert!(!fc.any());
        assert_eq!(fc.remove(&reg, |h| *h == "a"), None);
        fc.add(
            &reg,
            "b",
            vec!["fc_a".into(), "target_info".into()],
            "register",
        )
        .unwrap();
    }

    #[test]
    fn summaries_functions_and_removal_by_labels() {
        let reg = Registry::new();
        let s = Family::new(
            Kind::Summary,
            "own_s",
            "A summary",
            &["a".into(), "b".into()],
            None,
        )
        .unwrap();
        s.register_in(&reg, "Summary").unwrap();
        for (v, lab) in [(1.0, ["x", "1"]), (2.0, ["x", "2"]), (4.0, ["y", "1"])] {
            s.child_at(&lab, 1.0).unwrap().as_histogram().observe(v);
        }
        let text = reg.exposition(None);
        assert!(text.contains("# TYPE own_s summary\n"), "{text}");
        assert!(text.contains("own_s_sum{a=\"x\",b=\"2\"} 2.0\n"), "{text}");
        let gone = s
            .remove_by_labels(&[("a".to_string(), "x".to_string())])
            .unwrap();
        assert_eq!(gone.len(), 2);
        assert!(!reg.exposition(None).contains("a=\"x\""));
        assert!(s
            .remove_by_labels(&[("zz".to_string(), "x".to_string())])
            .is_err());
        let g = Family::new(Kind::Gauge, "own_g", "A gauge", &[], None).unwrap();
        g.register_in(&reg, "Gauge").unwrap();
        g.child_at::<&str>(&[], 1.0).unwrap().as_gauge().set(3.0);
        assert!(reg.exposition(None).contains("own_g 3.0\n"));
        g.set_function::<&str>(&[], Some(Arc::new(|| 42.0)));
        assert!(reg.exposition(None).contains("own_g 42.0\n"));
        assert!(Family::new(Kind::Summary, "own_s2", "", &["quantile".into()], None).is_err());
        let e =
            Family::new_enum("own_e", "An enum", &["l".into()], &["a".into(), "b".into()]).unwrap();
        e.register_in(&reg, "Enum").unwrap();
        assert_eq!(e.child_at(&["x"], 1.0).unwrap().keyed(), ["x"]);
        let text = reg.exposition(None);
        assert!(text.contains("own_e{l=\"x\",own_e=\"a\"} 1.0\n"), "{text}");
        assert!(text.contains("own_e{l=\"x\",own_e=\"b\"} 0.0\n"), "{text}");
        e.enum_state(&["x"], "b").unwrap();
        assert!(reg
            .exposition(None)
            .contains("own_e{l=\"x\",own_e=\"b\"} 1.0\n"));
        assert!(e.enum_state(&["x"], "zz").is_err());
        assert!(Family::new_enum("own_e2", "", &["own_e2".into()], &["a".into()]).is_err());
        assert!(Family::new_enum("own_e3", "", &[], &[]).is_err());
        let i = Family::new(Kind::Info, "own_i", "Info", &["l".into()], None).unwrap();
        i.register_in(&reg, "Info").unwrap();
        i.child_at(&["x"], 1.0).unwrap();
        i.set_info(&["x"], vec![("v".into(), "1.2".into())])
            .unwrap();
        assert!(reg
            .exposition(None)
            .contains("# TYPE own_i_info gauge\nown_i_info{l=\"x\",v=\"1.2\"} 1.0\n"));
        assert!(i.set_info(&["x"], vec![("l".into(), "".into())]).is_err());
    }

    #[test]
    fn bad_names_and_buckets_are_value_errors() {
        assert!(full_name(Kind::Gauge, "", "", "", "").is_err());
        assert_eq!(
            full_name(Kind::Gauge, "g", "", "", "bytes").unwrap(),
            "g_bytes"
        );
        for kind in [Kind::Enum, Kind::Info] {
            let e = full_name(kind, "e", "", "", "bytes")
                .unwrap_err()
                .to_string();
            assert!(e.contains("argument 'unit' is not supported"), "{e}");
        }
        assert_eq!(
            full_name(Kind::Gauge, "utf8.g", "", "", "").unwrap(),
            "utf8.g"
        );
        assert_eq!(escape_name("utf8.g"), "utf8_g");
        assert_eq!(escape_name("1abc"), "_abc");
        assert_eq!(escape_name("ok:name_1"), "ok:name_1");
        assert!(Family::new(Kind::Gauge, "g_ok", "", &["__x".into()], None).is_err());
        assert!(Family::new(Kind::Gauge, "g_ok", "", &["a".into(), "a".into()], None).is_err());
        assert!(Family::new(Kind::Histogram, "h_ok", "", &[], Some(&[1.0, 0.5])).is_err());
        assert!(Family::new(Kind::Histogram, "h_ok", "", &["le".into()], None).is_err());
        assert!(set_prefix("9bad").is_err());
    }
}
