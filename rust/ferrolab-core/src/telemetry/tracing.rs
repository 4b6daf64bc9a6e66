//! OpenTelemetry tracing: spans recorded natively and exported over OTLP/HTTP (protobuf).
//!
//! A span is a [`SpanCtx`] (trace id, span id, sampled flag) plus, when it is sampled, a [`Recording`] that
//! collects its name, attributes, events and status and becomes an OpenTelemetry
//! [`SpanData`](opentelemetry_sdk::trace::SpanData) when it ends. Finished spans go to the configured
//! pipeline ([`configure`]):
//!
//! * `endpoint: None`: a bounded in-memory buffer (the last [`Config::memory_capacity`] spans), read with
//!   [`finished_spans`];
//! * `endpoint: Some("http://host:4318")`: the SDK's `BatchSpanProcessor` (a background thread) and the
//!   `opentelemetry-otlp` HTTP/protobuf exporter, driven by a small blocking HTTP client ([`ureq`]; `https://`
//!   through rustls, with custom headers for collector auth). No async runtime is involved.
//!
//! The calling thread never waits on the network: a finished span is handed to a bounded queue
//! ([`Config::max_queue_size`]); when the queue is full the span is dropped and counted
//! ([`Stats::dropped`]), and a failed export (collector down, timeout after [`Config::export_timeout`])
//! counts its spans as dropped and the batch as an export failure.
//!
//! Sampling is `ParentBased(TraceIdRatioBased(sample_ratio))`: a root span is sampled by the SDK's
//! trace-id ratio sampler, a child follows its parent's sampled flag (local or remote). Until [`configure`]
//! is called (and after [`shutdown`]) nothing is sampled, like OpenTelemetry's no-op provider.
//!
//! [`active`] is the one relaxed load the op seam does per call: it is true only while a sampled span is
//! open somewhere in the process.

use crate::sync::{MutexExt, RwLockExt};
use opentelemetry::trace::{SpanContext, SpanKind, TraceFlags, TraceState};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingDecision, ShouldSample, SpanEvents,
    SpanExporter, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock};
use std::time::{Duration, SystemTime};

use crate::error::{CoreError, Result};
use crate::telemetry::seam::{Device, Op};

/// OpenTelemetry types the bindings need (re-exported so that they do not depend on the crates directly).
pub mod otel {
    pub use opentelemetry::trace::{Event, SpanId, Status, TraceId};
    pub use opentelemetry::{Array, Key, KeyValue, StringValue, Value};
    pub use opentelemetry_sdk::trace::SpanData;
}
use otel::*;

/// The instrumentation scope of every span.
pub const SCOPE_NAME: &str = "ferrolab";

/// Pipeline settings. [`Config::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// `service.name` resource attribute.
    pub service_name: String,
    /// `service.version` resource attribute.
    pub service_version: Option<String>,
    /// `deployment.environment` (and `deployment.environment.name`) resource attribute.
    pub environment: Option<String>,
    /// OTLP/HTTP collector (`http://host:4318` or `https://...`, `/v1/traces` is appended when the URL has no
    /// path); `None` keeps finished spans in memory.
    pub endpoint: Option<String>,
    /// Extra HTTP headers of every export request (e.g. a collector's `authorization`), on top of
    /// `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS`.
    pub headers: Vec<(String, String)>,
    /// PEM file of the certificate authorities an `https://` collector is verified against (default: the
    /// platform's trust store; `OTEL_EXPORTER_OTLP_CERTIFICATE` when set).
    pub ca_file: Option<String>,
    /// Probability in `[0, 1]` that a root span is sampled.
    pub sample_ratio: f64,
    /// Finished spans waiting for export at most; more are dropped and counted.
    pub max_queue_size: usize,
    /// Spans per export request at most.
    pub max_export_batch_size: usize,
    /// Export at least this often.
    pub scheduled_delay: Duration,
    /// Time budget of one export (all retries included); the HTTP client times out within it.
    pub export_timeout: Duration,
    /// Spans kept in memory (the newest) when `endpoint` is `None`.
    pub memory_capacity: usize,
}

impl Config {
    /// Defaults: in memory, every root sampled, queue 8192, batches of 512 every second, 3 s export budget,
    /// 10,000 spans kept in memory.
    pub fn new(service_name: impl Into<String>) -> Self {
        Config {
            service_name: service_name.into(),
            service_version: None,
            environment: None,
            endpoint: None,
            headers: Vec::new(),
            ca_file: None,
            sample_ratio: 1.0,
            max_queue_size: 8192,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(3),
            memory_capacity: 10_000,
        }
    }
}

/// Identity of a span: what a child needs from its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanCtx {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    /// The span was started outside this pipeline (e.g. by opentelemetry-python).
    pub remote: bool,
}

impl SpanCtx {
    /// The trace and span ids as integers (as exemplars and the op seam hold them).
    pub fn ids(&self) -> (u128, u64) {
        (
            u128::from_be_bytes(self.trace_id.to_bytes()),
            u64::from_be_bytes(self.span_id.to_bytes()),
        )
    }

    /// A parent started elsewhere; `None` when the ids are invalid (zero).
    pub fn remote(trace_id: u128, span_id: u64, sampled: bool) -> Option<SpanCtx> {
        (trace_id != 0 && span_id != 0).then_some(SpanCtx {
            trace_id: TraceId::from(trace_id),
            span_id: SpanId::from(span_id),
            sampled,
            remote: true,
        })
    }
}

// ----------------------------------------------------------------------------------------------------------
// global state

static CONFIGURED: AtomicBool = AtomicBool::new(false);
static RATIO_BITS: AtomicU64 = AtomicU64::new(0);
static OPEN_RECORDING: AtomicUsize = AtomicUsize::new(0);
static FORK_GEN: AtomicU64 = AtomicU64::new(0);
static PIPELINE: RwLock<Option<Arc<Pipeline>>> = RwLock::new(None);
static MEMORY: Mutex<Memory> = Mutex::new(Memory {
    spans: Vec::new(),
    head: 0,
    capacity: 0,
});

static STARTED: AtomicU64 = AtomicU64::new(0);
static ENDED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static EXPORT_FAILURES: AtomicU64 = AtomicU64::new(0);
static EVICTED: AtomicU64 = AtomicU64::new(0);

/// A ring of the newest `capacity` spans: once full, a new span overwrites the oldest in place.
struct Memory {
    spans: Vec<SpanData>,
    /// Index of the oldest span once the ring is full.
    head: usize,
    capacity: usize,
}

impl Memory {
    fn push(&mut self, data: SpanData) {
        if self.capacity == 0 {
            EVICTED.fetch_add(1, Ordering::Relaxed);
        } else if self.spans.len() < self.capacity {
            self.spans.push(data);
        } else {
            self.spans[self.head] = data;
            self.head = (self.head + 1) % self.spans.len();
            EVICTED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reset(&mut self, capacity: usize) {
        self.spans = Vec::new();
        self.head = 0;
        self.capacity = capacity;
    }

    /// Oldest first.
    fn take(&mut self) -> Vec<SpanData> {
        let mut v = std::mem::take(&mut self.spans);
        v.rotate_left(self.head);
        self.head = 0;
        v
    }

    fn snapshot(&self) -> Vec<SpanData> {
        let (new, old) = self.spans.split_at(self.head);
        old.iter().chain(new).cloned().collect()
    }
}

/// True while at least one sampled span is open anywhere in the process (one relaxed load).
#[inline]
pub fn active() -> bool {
    OPEN_RECORDING.load(Ordering::Relaxed) != 0
}

/// Whether a pipeline is configured (spans can be sampled).
#[inline]
pub fn configured() -> bool {
    CONFIGURED.load(Ordering::Relaxed)
}

// ----------------------------------------------------------------------------------------------------------
// ids and sampling

mod ids {
    use super::FORK_GEN;
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::Ordering;

    thread_local! {
        // (fork generation + 1 when seeded, wyrand state); reseeded in a forked child so that parent and
        // child never produce the same ids
        static RNG: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }

    fn seed() -> u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        let local = 0u8;
        h.write_usize(&local as *const u8 as usize);
        h.finish()
    }

    /// `N` draws of wyrand (64 uniformly distributed bits each), with one thread-local access.
    #[inline]
    pub fn draw<const N: usize>() -> [u64; N] {
        RNG.with(|c| {
            let gen = FORK_GEN.load(Ordering::Relaxed) + 1;
            let (g, mut s) = c.get();
            if g != gen {
                s = seed();
            }
            let mut out = [0u64; N];
            for o in out.iter_mut() {
                s = s.wrapping_add(0xa076_1d64_78bd_642f);
                let t = (s as u128).wrapping_mul((s ^ 0xe703_7ed1_a0b4_28db) as u128);
                *o = ((t >> 64) as u64) ^ (t as u64);
            }
            c.set((gen, s));
            out
        })
    }

    /// A non-zero span id.
    pub fn span_id() -> u64 {
        loop {
            let [v] = draw::<1>();
            if v != 0 {
                return v;
            }
        }
    }

    /// A non-zero trace id and a non-zero span id.
    pub fn trace_and_span_id() -> (u128, u64) {
        loop {
            let [hi, lo, s] = draw::<3>();
            let t = ((hi as u128) << 64) | lo as u128;
            if t != 0 && s != 0 {
                return (t, s);
            }
        }
    }

    #[cfg(test)]
    pub fn trace_id() -> u128 {
        trace_and_span_id().0
    }
}

/// The root decision of `ParentBased(TraceIdRatioBased(ratio))`, made by the SDK's sampler.
fn sample_root(trace_id: TraceId) -> bool {
    if !configured() {
        return false;
    }
    let ratio = f64::from_bits(RATIO_BITS.load(Ordering::Relaxed));
    // the SDK's decision at the two ends, without the call (AlwaysOn / AlwaysOff)
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let r = Sampler::TraceIdRatioBased(ratio).should_sample(
        None,
        trace_id,
        "",
        &SpanKind::Internal,
        &[],
        &[],
    );
    matches!(r.decision, SamplingDecision::RecordAndSample)
}

/// Identity and sampling decision of a new span under `parent`.
///
/// A child keeps its parent's trace id and follows its sampled flag (`ParentBased` with its default
/// delegates: sampled parent -> sampled, unsampled parent -> dropped, local or remote alike); a root gets a
/// new trace id and the ratio decision.
pub fn new_span(parent: Option<&SpanCtx>) -> SpanCtx {
    match parent {
        Some(p) if p.trace_id != TraceId::INVALID => SpanCtx {
            trace_id: p.trace_id,
            span_id: SpanId::from(ids::span_id()),
            sampled: p.sampled && configured(),
            remote: false,
        },
        _ => {
            let (t, s) = ids::trace_and_span_id();
            let trace_id = TraceId::from(t);
            SpanCtx {
                trace_id,
                span_id: SpanId::from(s),
                sampled: sample_root(trace_id),
                remote: false,
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// recording spans

/// Events kept per span at most (more are counted as dropped).
const MAX_EVENTS: usize = 128;

/// The data of a sampled, open span. Dropping it without [`Recording::end`] discards it.
#[derive(Debug)]
pub struct Recording {
    ctx: SpanCtx,
    parent: Option<SpanCtx>,
    name: Cow<'static, str>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    events: std::collections::VecDeque<Event>,
    dropped_events: u32,
    status: Status,
}

impl Recording {
    /// Starts recording the sampled span `ctx` (child of `parent`) now.
    pub fn start(
        ctx: SpanCtx,
        parent: Option<&SpanCtx>,
        name: impl Into<Cow<'static, str>>,
        attributes: Vec<KeyValue>,
    ) -> Recording {
        OPEN_RECORDING.fetch_add(1, Ordering::Relaxed);
        STARTED.fetch_add(1, Ordering::Relaxed);
        Recording {
            ctx,
            parent: parent.copied(),
            name: name.into(),
            start: SystemTime::now(),
            attributes,
            events: std::collections::VecDeque::new(),
            dropped_events: 0,
            status: Status::Unset,
        }
    }

    pub fn ctx(&self) -> &SpanCtx {
        &self.ctx
    }

    /// Sets (or replaces) one attribute.
    pub fn set_attribute(&mut self, kv: KeyValue) {
        match self.attributes.iter_mut().find(|a| a.key == kv.key) {
            Some(a) => *a = kv,
            None => self.attributes.push(kv),
        }
    }

    /// Adds an event now.
    /// A span keeps its newest [`MAX_EVENTS`] events (as the OpenTelemetry SDKs do): the oldest one goes, and is
    /// counted as dropped, to make room for a new one (an `exception` event at the end of a busy span is kept).
    pub fn add_event(&mut self, name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events
            .push_back(Event::new(name, SystemTime::now(), attributes, 0));
    }

    /// An `exception` event with the OpenTelemetry semantic attributes (`exception.type`: `kind`, the qualified
    /// type name; `exception.message`; `exception.stacktrace` when given); the status is not changed.
    pub fn record_exception(&mut self, kind: String, message: String, stacktrace: Option<String>) {
        let mut attrs = vec![
            KeyValue::new("exception.type", kind),
            KeyValue::new("exception.message", message),
        ];
        if let Some(st) = stacktrace {
            attrs.push(KeyValue::new("exception.stacktrace", st));
        }
        self.add_event("exception", attrs);
    }

    /// [`record_exception`](Self::record_exception), and status `Error` described as `"{name}: {message}"`
    /// (`name`, the type's short name, alone for an empty message), unless the status is already `Ok` (final).
    pub fn record_error(
        &mut self,
        kind: String,
        name: &str,
        message: String,
        stacktrace: Option<String>,
    ) {
        let description = if message.is_empty() {
            name.to_string()
        } else {
            format!("{name}: {message}")
        };
        self.record_exception(kind, message, stacktrace);
        self.set_status(Status::error(description));
    }

    /// Sets the status as OpenTelemetry specifies: `Ok` is final, and setting `Unset` is ignored.
    pub fn set_status(&mut self, status: Status) {
        if self.status != Status::Ok && status != Status::Unset {
            self.status = status;
        }
    }

    /// Ends the span now and hands it to the pipeline (never blocks on the network).
    pub fn end(mut self) {
        let mut events = SpanEvents::default();
        events.events = std::mem::take(&mut self.events).into();
        events.dropped_count = self.dropped_events;
        let data = SpanData {
            span_context: SpanContext::new(
                self.ctx.trace_id,
                self.ctx.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, |p| p.span_id),
            parent_span_is_remote: self.parent.is_some_and(|p| p.remote),
            span_kind: SpanKind::Internal,
            name: std::mem::take(&mut self.name),
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: std::mem::take(&mut self.attributes),
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: std::mem::take(&mut self.status),
            instrumentation_scope: scope(),
        };
        ENDED.fetch_add(1, Ordering::Relaxed);
        submit(data);
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        OPEN_RECORDING.fetch_sub(1, Ordering::Relaxed);
    }
}

fn scope() -> opentelemetry::InstrumentationScope {
    opentelemetry::InstrumentationScope::builder(SCOPE_NAME)
        .with_version(crate::VERSION)
        .build()
}

// ----------------------------------------------------------------------------------------------------------
// op spans

/// Input shapes of an op, read only when a span records the op.
#[derive(Clone, Copy)]
pub enum Shapes<'a> {
    One(&'a [usize]),
    Two(&'a [usize], &'a [usize]),
    Lazy(&'a dyn Fn() -> Vec<Vec<usize>>),
}

/// What an op span records about the op's inputs: their shapes and the dtype the op computes in.
/// Building one costs nothing (borrowed slices and a static name); it is read only when a span records the op.
#[derive(Clone, Copy)]
pub struct Meta<'a> {
    dtype: &'static str,
    shapes: Shapes<'a>,
}

impl<'a> Meta<'a> {
    #[inline]
    fn new<T>(shapes: Shapes<'a>) -> Self {
        let dtype = crate::kernels::alloc::dtype_name::<T>();
        Meta { dtype, shapes }
    }

    /// One input of element type `T`.
    #[inline]
    pub fn one<T>(shape: &'a [usize]) -> Self {
        Self::new::<T>(Shapes::One(shape))
    }

    /// Two inputs of element type `T`.
    #[inline]
    pub fn two<T>(a: &'a [usize], b: &'a [usize]) -> Self {
        Self::new::<T>(Shapes::Two(a, b))
    }

    /// Inputs of element type `T` whose shapes `f` lists.
    #[inline]
    pub fn lazy<T>(f: &'a dyn Fn() -> Vec<Vec<usize>>) -> Self {
        Self::new::<T>(Shapes::Lazy(f))
    }

    /// The shapes in NumPy's notation: (), (n,), (m, n).
    fn shape_strings(&self) -> Vec<StringValue> {
        let fmt = |s: &[usize]| StringValue::from(crate::kernels::layout::fmt_shape(s));
        match self.shapes {
            Shapes::One(a) => vec![fmt(a)],
            Shapes::Two(a, b) => vec![fmt(a), fmt(b)],
            Shapes::Lazy(f) => f().iter().map(|s| fmt(s)).collect(),
        }
    }
}

/// Runs `exec`, a call of `op` on `device`, as a child span `ferrolab.<op>` of `parent` (attributes
/// `ferrolab.op`, `ferrolab.shapes`, `ferrolab.dtype`, `ferrolab.device`; status `ERROR` and an `exception`
/// event when it fails). When the span is sampled, the op's duration bucket gets it as its exemplar.
pub fn op_span<R>(
    parent: &SpanCtx,
    op: Op,
    device: Device,
    meta: Meta<'_>,
    exec: impl FnOnce() -> Result<R>,
) -> Result<R> {
    let ctx = new_span(Some(parent));
    if !ctx.sampled {
        return exec();
    }
    let mut rec = Recording::start(
        ctx,
        Some(parent),
        op.span_name(),
        vec![
            KeyValue::new("ferrolab.op", op.name()),
            KeyValue::new(
                "ferrolab.shapes",
                Value::Array(Array::String(meta.shape_strings())),
            ),
            KeyValue::new("ferrolab.dtype", meta.dtype),
            KeyValue::new("ferrolab.device", device.name()),
        ],
    );
    let (trace_id, span_id) = ctx.ids();
    let r = crate::telemetry::seam::in_span(trace_id, span_id, exec);
    if let Err(e) = &r {
        let kind = e.kind().to_string();
        rec.record_error(kind.clone(), &kind, e.to_string(), None);
    }
    rec.end();
    r
}

// ----------------------------------------------------------------------------------------------------------
// pipeline

/// Where finished spans go.
struct Pipeline {
    config: Config,
    fork_gen: u64,
    otlp: Option<Otlp>,
}

struct Otlp {
    processor: BatchSpanProcessor,
    /// Spans handed to the processor and not yet taken by the exporter (an upper bound of its queue).
    queued: Arc<AtomicUsize>,
    /// Spans lost since the last flush (what `flush` reports).
    lost: Arc<AtomicU64>,
    closed: AtomicBool,
}

impl Otlp {
    fn drop_one(&self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        self.lost.fetch_add(1, Ordering::Relaxed);
    }
}

impl Pipeline {
    fn build(config: Config) -> Result<Pipeline> {
        let otlp = match &config.endpoint {
            None => None,
            Some(ep) => Some(Otlp::build(&config, ep)?),
        };
        Ok(Pipeline {
            fork_gen: FORK_GEN.load(Ordering::Relaxed),
            config,
            otlp,
        })
    }

    fn submit(&self, data: SpanData) {
        match &self.otlp {
            None => {
                MEMORY.locked().push(data);
            }
            Some(o) => {
                if o.closed.load(Ordering::Relaxed) {
                    o.drop_one();
                    return;
                }
                // reserve a queue slot first: the processor's own queue never overflows, and every drop
                // is counted here
                if o.queued.fetch_add(1, Ordering::AcqRel) >= self.config.max_queue_size {
                    o.queued.fetch_sub(1, Ordering::AcqRel);
                    o.drop_one();
                    return;
                }
                o.processor.on_end(data);
            }
        }
    }

    fn flush(&self) -> bool {
        match &self.otlp {
            None => true,
            Some(o) => {
                let ok = o.processor.force_flush().is_ok();
                let lost = o.lost.swap(0, Ordering::AcqRel);
                ok && lost == 0 && o.queued.load(Ordering::Acquire) == 0
            }
        }
    }

    fn shutdown(&self, timeout: Duration) -> bool {
        match &self.otlp {
            None => true,
            Some(o) => {
                o.closed.store(true, Ordering::Relaxed);
                let ok = o.processor.shutdown_with_timeout(timeout).is_ok();
                let lost = o.lost.swap(0, Ordering::AcqRel);
                ok && lost == 0 && o.queued.load(Ordering::Acquire) == 0
            }
        }
    }
}

impl Otlp {
    fn build(config: &Config, endpoint: &str) -> Result<Otlp> {
        let url = traces_url(endpoint)?;
        let client = UreqClient::new(config.export_timeout, tls_config(config)?);
        let mut headers = std::collections::HashMap::new();
        for (k, v) in &config.headers {
            let bad = |what: &str| {
                CoreError::value(
                    "configure",
                    "headers",
                    format!("has {what} {k:?}: not a valid HTTP header"),
                )
            };
            ureq::http::HeaderName::try_from(k.as_str()).map_err(|_| bad("the name"))?;
            ureq::http::HeaderValue::try_from(v.as_str()).map_err(|_| bad("a bad value for"))?;
            headers.insert(k.clone(), v.clone());
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_headers(headers)
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(config.export_timeout)
            .with_http_client(client)
            .with_retry_policy(
                // one quick retry: a collector that is down costs each batch ~0.1 s, not seconds
                RetryPolicy::recommended()
                    .with_max_retries(1)
                    .with_initial_delay(Duration::from_millis(50))
                    .with_max_jitter(Duration::from_millis(50)),
            )
            .build()
            .map_err(|e| CoreError::value("configure", "endpoint", e))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let mut exporter = Counting {
            inner: exporter,
            queued: queued.clone(),
            lost: lost.clone(),
        };
        exporter.set_resource(&resource(config));
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue_size.max(1))
            .with_max_export_batch_size(config.max_export_batch_size.max(1))
            .with_scheduled_delay(config.scheduled_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        Ok(Otlp {
            processor,
            queued,
            lost,
            closed: AtomicBool::new(false),
        })
    }
}

/// `service.name`, `service.version`, `deployment.environment` on top of the SDK's defaults
/// (`telemetry.sdk.*`, `OTEL_RESOURCE_ATTRIBUTES`).
pub fn resource(config: &Config) -> Resource {
    let mut b = Resource::builder().with_service_name(config.service_name.clone());
    if let Some(v) = &config.service_version {
        b = b.with_attribute(KeyValue::new("service.version", v.clone()));
    }
    if let Some(env) = &config.environment {
        b = b
            .with_attribute(KeyValue::new("deployment.environment", env.clone()))
            .with_attribute(KeyValue::new("deployment.environment.name", env.clone()));
    }
    b.build()
}

/// The OTLP/HTTP traces URL of a collector endpoint: `/v1/traces` is appended when the URL has no path.
pub fn traces_url(endpoint: &str) -> Result<String> {
    let ep = endpoint.trim();
    let lower = ep.to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(CoreError::value(
            "configure",
            "endpoint",
            format!(
                "is {ep:?}; expected an OTLP/HTTP collector URL like 'http://localhost:4318' or \
                 'https://collector.example:4318'"
            ),
        ));
    }
    let uri: ureq::http::Uri = ep
        .parse()
        .map_err(|e| CoreError::value("configure", "endpoint", format!("is {ep:?}: {e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(CoreError::value(
            "configure",
            "endpoint",
            format!("is {ep:?}: no host"),
        ));
    }
    let path = uri.path();
    Ok(if path.is_empty() || path == "/" {
        // the signal's path goes before a query (`http://c:4318?tenant=a` -> `http://c:4318/v1/traces?tenant=a`)
        let base = ep.split_once('?').map_or(ep, |(b, _)| b);
        let query = uri.query().map_or(String::new(), |q| format!("?{q}"));
        format!("{}/v1/traces{query}", base.trim_end_matches('/'))
    } else {
        ep.to_string()
    })
}

/// Counts exported spans and failed exports around the OTLP exporter, and releases queue slots.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    lost: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued.fetch_sub(n, Ordering::AcqRel);
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => {
                EXPORTED.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                EXPORT_FAILURES.fetch_add(1, Ordering::Relaxed);
                DROPPED.fetch_add(n as u64, Ordering::Relaxed);
                self.lost.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// TLS for `https://` collectors: rustls (ring), verified against `ca_file` (or `OTEL_EXPORTER_OTLP_CERTIFICATE`)
/// when given, else the platform's trust store.
fn tls_config(config: &Config) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
    let (arg, path) = match &config.ca_file {
        Some(p) => ("ca_file", Some(p.clone())),
        None => (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            std::env::var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
                .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_CERTIFICATE"))
                .ok()
                .filter(|p| !p.is_empty()),
        ),
    };
    let roots = match path {
        None => RootCerts::PlatformVerifier,
        Some(path) => {
            let pem = std::fs::read(&path)
                .map_err(|e| CoreError::value("configure", arg, format!("is {path:?}: {e}")))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(CoreError::value(
                            "configure",
                            arg,
                            format!("is {path:?}: not a PEM file ({e})"),
                        ))
                    }
                }
            }
            if certs.is_empty() {
                return Err(CoreError::value(
                    "configure",
                    arg,
                    format!("is {path:?}: it holds no PEM certificate"),
                ));
            }
            RootCerts::Specific(Arc::new(certs))
        }
    };
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        .build())
}

/// A blocking HTTP/1.1 client for the exporter (runs on the batch processor's thread); https through rustls.
#[derive(Debug)]
struct UreqClient {
    agent: ureq::Agent,
}

impl UreqClient {
    fn new(timeout: Duration, tls: ureq::tls::TlsConfig) -> UreqClient {
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(2))))
            .max_redirects(0)
            .user_agent(format!("ferrolab/{}", crate::VERSION))
            .build();
        UreqClient {
            agent: ureq::Agent::new_with_config(config),
        }
    }
}

/// Response bodies read at most (an OTLP response is a few bytes).
const MAX_RESPONSE: u64 = 4 << 20;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for UreqClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> std::result::Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let (parts, body) = request.into_parts();
        let request = ureq::http::Request::from_parts(parts, &body[..]);
        let response = self.agent.run(request)?;
        let (parts, mut body) = response.into_parts();
        let bytes = body.with_config().limit(MAX_RESPONSE).read_to_vec()?;
        Ok(opentelemetry_http::Response::from_parts(
            parts,
            opentelemetry_http::Bytes::from(bytes),
        ))
    }
}

fn submit(data: SpanData) {
    match current_pipeline() {
        Some(p) => p.submit(data),
        None => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The configured pipeline; rebuilt in a forked child (whose export thread did not survive the fork).
fn current_pipeline() -> Option<Arc<Pipeline>> {
    let p = PIPELINE.reading().as_ref().cloned()?;
    if p.fork_gen == FORK_GEN.load(Ordering::Relaxed) {
        return Some(p);
    }
    let mut w = PIPELINE.writing();
    match w.as_ref() {
        Some(cur) if cur.fork_gen == FORK_GEN.load(Ordering::Relaxed) => Some(cur.clone()),
        Some(cur) => match Pipeline::build(cur.config.clone()) {
            Ok(np) => {
                let np = Arc::new(np);
                if let Some(old) = w.replace(np.clone()) {
                    retire(old, Duration::ZERO);
                }
                Some(np)
            }
            Err(_) => None,
        },
        None => None,
    }
}

/// Ends a pipeline that is no longer installed: shuts it down (waiting at most `timeout`) when this process
/// made it; true when everything was delivered.
///
/// A pipeline inherited through `fork` is left alone and never dropped (true: its spans are the parent's, which
/// exports them): its export thread did not survive the fork, so a shutdown would wait for nobody, and dropping
/// its thread handle would detach a thread id that a thread of this process can have by now (glibc reuses the
/// dead threads' stacks), which then cannot be joined (a panic in the SDK's shutdown).
fn retire(old: Arc<Pipeline>, timeout: Duration) -> bool {
    if old.fork_gen != FORK_GEN.load(Ordering::Relaxed) {
        std::mem::forget(old);
        return true;
    }
    old.shutdown(timeout)
}

extern "C" fn after_fork_child() {
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
}

fn install_fork_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic (async-signal-safe).
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_child));
        }
    });
}

/// Validates `config` and installs it as the pipeline, replacing (and shutting down, flushing) any previous
/// one. The in-memory buffer is cleared.
pub fn configure(config: Config) -> Result<()> {
    if !(config.sample_ratio.is_finite() && (0.0..=1.0).contains(&config.sample_ratio)) {
        return Err(CoreError::value(
            "configure",
            "sample_ratio",
            format!("is {}; expected a number in [0, 1]", config.sample_ratio),
        ));
    }
    if config.service_name.trim().is_empty() {
        return Err(CoreError::value(
            "configure",
            "service_name",
            "is empty; expected the name of the service",
        ));
    }
    install_fork_handler();
    let pipeline = Arc::new(Pipeline::build(config)?);
    {
        MEMORY.locked().reset(pipeline.config.memory_capacity);
    }
    let old = {
        let mut w = PIPELINE.writing();
        RATIO_BITS.store(pipeline.config.sample_ratio.to_bits(), Ordering::Relaxed);
        CONFIGURED.store(true, Ordering::Relaxed);
        w.replace(pipeline)
    };
    if let Some(old) = old {
        retire(old, Duration::from_secs(5));
    }
    Ok(())
}

/// Exports everything finished so far (waits at most about 5 s, the SDK's flush timeout). True when every span
/// finished since the previous flush was delivered (always true in memory mode).
pub fn flush() -> bool {
    match current_pipeline() {
        Some(p) => p.flush(),
        None => true,
    }
}

/// Flushes and stops the pipeline (waits at most `timeout`); later spans are not sampled. True when
/// everything was delivered. Finished in-memory spans stay readable.
pub fn shutdown(timeout: Duration) -> bool {
    let old = {
        let mut w = PIPELINE.writing();
        CONFIGURED.store(false, Ordering::Relaxed);
        w.take()
    };
    match old {
        Some(p) => retire(p, timeout),
        None => true,
    }
}

/// The in-memory spans, oldest first (`clear` empties the buffer).
pub fn finished_spans(clear: bool) -> Vec<SpanData> {
    let mut m = MEMORY.locked();
    if clear {
        m.take()
    } else {
        m.snapshot()
    }
}

/// A finished span as the bindings show it: ids in hex, times in nanoseconds since the Unix epoch, the status
/// as `"UNSET"`, `"OK"` or `"ERROR"`.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub parent_is_remote: bool,
    pub start_time_ns: u64,
    pub end_time_ns: u64,
    pub attributes: Vec<KeyValue>,
    pub status: &'static str,
    /// The description of an `"ERROR"` status.
    pub status_description: Option<String>,
    pub events: Vec<FinishedEvent>,
}

/// An event of a [`FinishedSpan`].
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedEvent {
    pub name: String,
    pub time_ns: u64,
    pub attributes: Vec<KeyValue>,
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl FinishedSpan {
    pub fn of(s: &SpanData) -> FinishedSpan {
        let (status, status_description) = match &s.status {
            Status::Unset => ("UNSET", None),
            Status::Ok => ("OK", None),
            // no description is None, as opentelemetry-python shows it
            Status::Error { description } => (
                "ERROR",
                Some(description.to_string()).filter(|d| !d.is_empty()),
            ),
        };
        FinishedSpan {
            name: s.name.to_string(),
            trace_id: s.span_context.trace_id().to_string(),
            span_id: s.span_context.span_id().to_string(),
            parent_span_id: (s.parent_span_id != SpanId::INVALID)
                .then(|| s.parent_span_id.to_string()),
            parent_is_remote: s.parent_span_is_remote,
            start_time_ns: unix_ns(s.start_time),
            end_time_ns: unix_ns(s.end_time),
            attributes: s.attributes.clone(),
            status,
            status_description,
            events: s
                .events
                .iter()
                .map(|e| FinishedEvent {
                    name: e.name.to_string(),
                    time_ns: unix_ns(e.timestamp),
                    attributes: e.attributes.clone(),
                })
                .collect(),
        }
    }
}

/// A span status from its name (`"ok"`, `"error"` with `description`, `"unset"`; any case); a `Value` error of
/// `func` for another name.
pub fn parse_status(
    func: &'static str,
    status: &str,
    description: Option<String>,
) -> Result<Status> {
    match status.to_ascii_lowercase().as_str() {
        "ok" => Ok(Status::Ok),
        "unset" => Ok(Status::Unset),
        "error" => Ok(Status::error(description.unwrap_or_default())),
        _ => Err(CoreError::value(
            func,
            "status",
            format!("is {status:?}; expected 'ok', 'error' or 'unset'"),
        )),
    }
}

/// Counters since the process started, plus the current pipeline's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// `"off"`, `"memory"` or `"otlp"`.
    pub mode: &'static str,
    /// The configured endpoint (traces URL), if any.
    pub endpoint: Option<String>,
    pub sample_ratio: f64,
    /// Sampled spans started / ended.
    pub started: u64,
    pub ended: u64,
    /// Spans delivered to the collector.
    pub exported: u64,
    /// Spans lost: queue full, failed export, or ended after shutdown.
    pub dropped: u64,
    /// Export requests that failed (after retries).
    pub export_failures: u64,
    /// In-memory spans pushed out by newer ones.
    pub evicted: u64,
    /// Spans waiting for export now.
    pub queued: u64,
    /// Sampled spans open now.
    pub open: u64,
}

pub fn stats() -> Stats {
    let p = PIPELINE.reading().as_ref().cloned();
    let (mode, endpoint, queued) = match &p {
        None => ("off", None, 0),
        Some(p) => match &p.otlp {
            None => ("memory", None, 0),
            Some(o) => (
                "otlp",
                p.config
                    .endpoint
                    .as_deref()
                    .and_then(|e| traces_url(e).ok()),
                o.queued.load(Ordering::Relaxed) as u64,
            ),
        },
    };
    Stats {
        mode,
        endpoint,
        sample_ratio: p.as_ref().map_or(0.0, |p| p.config.sample_ratio),
        started: STARTED.load(Ordering::Relaxed),
        ended: ENDED.load(Ordering::Relaxed),
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        export_failures: EXPORT_FAILURES.load(Ordering::Relaxed),
        evicted: EVICTED.load(Ordering::Relaxed),
        queued,
        open: OPEN_RECORDING.load(Ordering::Relaxed) as u64,
    }
}

/// The resource of the current pipeline, as key/value strings (for inspection and tests).
pub fn resource_attributes() -> Vec<(String, String)> {
    let p = PIPELINE.reading().as_ref().cloned();
    match p {
        None => Vec::new(),
        Some(p) => resource(&p.config)
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry::Context;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// The global pipeline is shared: tests that configure it run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn status_names() {
        assert_eq!(parse_status("f", "OK", None).unwrap(), Status::Ok);
        assert_eq!(
            parse_status("f", "unset", Some("x".into())).unwrap(),
            Status::Unset
        );
        assert_eq!(
            parse_status("f", "Error", Some("boom".into())).unwrap(),
            Status::error("boom")
        );
        assert_eq!(parse_status("f", "error", None).unwrap(), Status::error(""));
        assert_eq!(
            parse_status("Span.set_status", "bad", None)
                .unwrap_err()
                .to_string(),
            "Span.set_status(): argument 'status' is \"bad\"; expected 'ok', 'error' or 'unset'"
        );
    }

    #[test]
    fn root_sampling_matches_sdk_parent_based_ratio() {
        let _g = SERIAL.locked();
        for ratio in [0.0, 0.1, 0.25, 0.5, 1.0] {
            configure(Config {
                sample_ratio: ratio,
                ..Config::new("t")
            })
            .unwrap();
            let sdk = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
            let mut n = 0;
            for _ in 0..4000 {
                let c = new_span(None);
                let want = sdk
                    .should_sample(None, c.trace_id, "x", &SpanKind::Internal, &[], &[])
                    .decision;
                assert_eq!(c.sampled, matches!(want, SamplingDecision::RecordAndSample));
                n += c.sampled as usize;
            }
            // 4000 draws: 7 standard deviations either side
            let sd = (4000.0 * ratio * (1.0 - ratio)).sqrt();
            assert!(
                (n as f64 - 4000.0 * ratio).abs() <= 7.0 * sd + 1e-9,
                "{ratio}: {n}"
            );
        }
        shutdown(Duration::from_secs(1));
    }

    #[test]
    fn children_follow_parent_like_the_sdk() {
        let _g = SERIAL.locked();
        configure(Config {
            sample_ratio: 0.5,
            ..Config::new("t")
        })
        .unwrap();
        let sdk = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5)));
        for (remote, sampled) in [(false, false), (false, true), (true, false), (true, true)] {
            let parent = SpanCtx {
                trace_id: TraceId::from(ids::trace_id()),
                span_id: SpanId::from(ids::span_id()),
                sampled,
                remote,
            };
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let sc = SpanContext::new(
                parent.trace_id,
                parent.span_id,
                flags,
                remote,
                TraceState::NONE,
            );
            let cx = Context::new().with_remote_span_context(sc);
            for _ in 0..50 {
                let c = new_span(Some(&parent));
                assert_eq!(c.trace_id, parent.trace_id);
                assert_ne!(c.span_id, parent.span_id);
                let want = sdk
                    .should_sample(Some(&cx), c.trace_id, "x", &SpanKind::Internal, &[], &[])
                    .decision;
                assert_eq!(c.sampled, matches!(want, SamplingDecision::RecordAndSample));
            }
        }
        shutdown(Duration::from_secs(1));
        // not configured: nothing is sampled
        assert!(!new_span(None).sampled);
    }

    #[test]
    fn status_rules_and_the_newest_events_as_in_opentelemetry() {
        let _g = SERIAL.locked();
        configure(Config::new("t")).unwrap();
        let ended = |f: &dyn Fn(&mut Recording)| {
            let mut r = Recording::start(new_span(None), None, "s", vec![]);
            f(&mut r);
            r.end();
            finished_spans(true).pop().unwrap()
        };
        // Ok is final: an exception afterwards adds its event but leaves the status
        let s = ended(&|r| {
            r.set_status(Status::Ok);
            r.record_error("mod.E".into(), "E", "x".into(), None);
        });
        assert_eq!(s.status, Status::Ok);
        assert_eq!(s.events.events[0].name, "exception");
        // setting Unset is ignored
        let s = ended(&|r| {
            r.set_status(Status::error("bad"));
            r.set_status(Status::Unset);
        });
        assert_eq!(s.status, Status::error("bad"));
        // an error's description uses the short name; exception.type the qualified one
        let s = ended(&|r| r.record_error("mod.E".into(), "E", "x".into(), None));
        assert_eq!(s.status, Status::error("E: x"));
        assert_eq!(
            s.events.events[0].attributes[0],
            KeyValue::new("exception.type", "mod.E")
        );
        // the newest MAX_EVENTS events are kept: the exception at the end of a busy span survives
        let s = ended(&|r| {
            for i in 0..MAX_EVENTS + 5 {
                r.add_event(format!("tick{i}"), vec![]);
            }
            r.record_error("E".into(), "E", String::new(), None);
        });
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(s.events.dropped_count, 6);
        assert_eq!(s.events.events[0].name, "tick6");
        assert_eq!(s.events.events[MAX_EVENTS - 1].name, "exception");
        assert_eq!(s.status, Status::error("E"));
        shutdown(Duration::from_secs(1));
    }

    #[test]
    fn memory_pipeline_keeps_the_newest_spans() {
        let _g = SERIAL.locked();
        configure(Config {
            memory_capacity: 3,
            ..Config::new("t")
        })
        .unwrap();
        let before = stats();
        let root = new_span(None);
        assert!(root.sampled);
        let mut r = Recording::start(root, None, "root", vec![KeyValue::new("k", 1)]);
        assert!(active());
        for i in 0..4 {
            let c = new_span(Some(&root));
            let mut rec = Recording::start(c, Some(&root), format!("child{i}"), vec![]);
            if i == 3 {
                rec.record_error("ValueError".into(), "ValueError", "bad".into(), None);
            }
            rec.end();
        }
        r.set_attribute(KeyValue::new("k", 2));
        r.end();
        let spans = finished_spans(false);
        assert_eq!(
            spans.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>(),
            ["child2", "child3", "root"]
        );
        let child = &spans[1];
        assert_eq!(child.parent_span_id, root.span_id);
        assert_eq!(child.span_context.trace_id(), root.trace_id);
        assert!(matches!(child.status, Status::Error { .. }));
        assert_eq!(child.events.events[0].name, "exception");
        assert_eq!(spans[2].attributes, vec![KeyValue::new("k", 2)]);
        assert_eq!(spans[2].parent_span_id, SpanId::INVALID);
        let v = FinishedSpan::of(child);
        assert_eq!(v.name, "child3");
        assert_eq!(
            v.trace_id,
            format!("{:032x}", u128::from_be_bytes(root.trace_id.to_bytes()))
        );
        assert_eq!(
            v.parent_span_id,
            Some(format!(
                "{:016x}",
                u64::from_be_bytes(root.span_id.to_bytes())
            ))
        );
        assert_eq!(
            (v.status, v.status_description.as_deref()),
            ("ERROR", Some("ValueError: bad"))
        );
        assert_eq!(v.events[0].name, "exception");
        assert!(v.start_time_ns > 0 && v.end_time_ns >= v.start_time_ns);
        let v = FinishedSpan::of(&spans[2]);
        assert_eq!((v.parent_span_id, v.status), (None, "UNSET"));
        let after = stats();
        assert_eq!(after.mode, "memory");
        assert_eq!(after.evicted - before.evicted, 2);
        assert_eq!(after.ended - before.ended, 5);
        let taken = finished_spans(true);
        assert_eq!(
            taken.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>(),
            ["child2", "child3", "root"]
        );
        assert!(finished_spans(false).is_empty());
        shutdown(Duration::from_secs(1));
        assert_eq!(stats().mode, "off");
    }

    #[test]
    fn op_spans_record_the_op_and_its_failure() {
        let _g = SERIAL.locked();
        configure(Config {
            memory_capacity: 8,
            ..Config::new("t")
        })
        .unwrap();
        let _ = finished_spans(true);
        let parent = new_span(None);
        let shapes = || vec![vec![2, 3], vec![]];
        let ok = op_span(
            &parent,
            Op::Sum,
            Device::Cpu,
            Meta::one::<f32>(&[4]),
            || Ok(crate::telemetry::seam::current_span()),
        );
        let in_span = ok.unwrap().expect("the op runs as the span");
        let meta = Meta::lazy::<f64>(&shapes);
        let err = op_span(&parent, Op::Dot, Device::Cuda, meta, || -> Result<()> {
            Err(CoreError::value("dot", "x", "is bad"))
        });
        assert!(err.is_err());
        let spans = finished_spans(true);
        let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["ferrolab.sum", "ferrolab.dot"]);
        let (sum, dot) = (&spans[0], &spans[1]);
        assert_eq!(sum.parent_span_id, parent.span_id);
        assert_eq!(
            in_span.1,
            u64::from_be_bytes(sum.span_context.span_id().to_bytes())
        );
        let attr = |s: &SpanData, k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key.as_str() == k)
                .map(|a| a.value.to_string())
        };
        assert_eq!(attr(sum, "ferrolab.op").as_deref(), Some("sum"));
        assert_eq!(attr(sum, "ferrolab.dtype").as_deref(), Some("float32"));
        assert_eq!(attr(sum, "ferrolab.device").as_deref(), Some("cpu"));
        assert_eq!(attr(sum, "ferrolab.shapes").as_deref(), Some("[\"(4,)\"]"));
        assert_eq!(
            attr(dot, "ferrolab.shapes").as_deref(),
            Some("[\"(2, 3)\",\"()\"]")
        );
        assert_eq!(attr(dot, "ferrolab.device").as_deref(), Some("cuda"));
        assert!(matches!(dot.status, Status::Error { .. }));
        assert_eq!(dot.events.events[0].name, "exception");
        // an unsampled parent: the op runs without a span
        let unsampled = SpanCtx {
            sampled: false,
            ..parent
        };
        let r = op_span(
            &unsampled,
            Op::Sum,
            Device::Cpu,
            Meta::one::<f64>(&[]),
            || Ok(crate::telemetry::seam::current_span()),
        );
        assert_eq!(r.unwrap(), None);
        assert!(finished_spans(true).is_empty());
        shutdown(Duration::from_secs(1));
    }

    #[test]
    fn endpoint_validation() {
        assert_eq!(
            traces_url("http://localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://localhost:4318/").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/custom/v1/traces").unwrap(),
            "http://c:4318/custom/v1/traces"
        );
        assert_eq!(
            traces_url("https://collector:4318").unwrap(),
            "https://collector:4318/v1/traces"
        );
        // the signal's path goes before a query
        assert_eq!(
            traces_url("http://c:4318?tenant=a").unwrap(),
            "http://c:4318/v1/traces?tenant=a"
        );
        assert_eq!(
            traces_url("http://c:4318/?tenant=a&x=1").unwrap(),
            "http://c:4318/v1/traces?tenant=a&x=1"
        );
        assert_eq!(
            traces_url("http://c:4318/custom?tenant=a").unwrap(),
            "http://c:4318/custom?tenant=a"
        );
        assert!(traces_url("ftp://collector:4318").is_err());
        assert!(traces_url("localhost:4318").is_err());
        assert!(traces_url("http://").is_err());
        let e = configure(Config {
            sample_ratio: 1.5,
            ..Config::new("t")
        })
        .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("configure(): argument 'sample_ratio'"));
    }

    /// A minimal OTLP/HTTP receiver: answers 200 to every POST and sends the bodies to the test.
    fn receiver() -> (String, mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                    if tx.send(body).is_err() {
                        return;
                    }
                }
            }
        });
        (url, rx)
    }

    #[test]
    fn exports_over_otlp_http() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let _g = SERIAL.locked();
        let (url, rx) = receiver();
        configure(Config {
            endpoint: Some(url),
            service_version: Some("1.2.3".into()),
            environment: Some("test".into()),
            ..Config::new("svc")
        })
        .unwrap();
        let root = new_span(None);
        let r = Recording::start(root, None, "root", vec![KeyValue::new("k", "v")]);
        let c = new_span(Some(&root));
        Recording::start(c, Some(&root), "child", vec![]).end();
        r.end();
        assert!(flush());
        let mut spans = Vec::new();
        let mut resource = Vec::new();
        while spans.len() < 2 {
            let body = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
            for rs in req.resource_spans {
                for kv in rs.resource.unwrap().attributes {
                    resource.push(kv.key);
                }
                for ss in rs.scope_spans {
                    assert_eq!(ss.scope.unwrap().name, "ferrolab");
                    spans.extend(ss.spans);
                }
            }
        }
        for k in ["service.name", "service.version", "deployment.environment"] {
            assert!(resource.iter().any(|r| r == k), "{k} in {resource:?}");
        }
        let root_pb = spans.iter().find(|s| s.name == "root").unwrap();
        let child_pb = spans.iter().find(|s| s.name == "child").unwrap();
        assert_eq!(child_pb.parent_span_id, root_pb.span_id);
        assert_eq!(child_pb.trace_id, root_pb.trace_id);
        assert_eq!(root_pb.attributes[0].key, "k");
        assert!(shutdown(Duration::from_secs(5)));
    }

    #[test]
    fn unreachable_collector_drops_and_counts() {
        let _g = SERIAL.locked();
        // a port that was free a moment ago: connections are refused
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        configure(Config {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            max_queue_size: 16,
            max_export_batch_size: 8,
            export_timeout: Duration::from_millis(500),
            ..Config::new("t")
        })
        .unwrap();
        let before = stats();
        for _ in 0..100 {
            let c = new_span(None);
            Recording::start(c, None, "x", vec![]).end();
        }
        assert!(!flush());
        shutdown(Duration::from_secs(10));
        let after = stats();
        assert_eq!(after.exported, before.exported);
        // every span is either dropped at the queue or in a failed export
        assert_eq!(after.dropped - before.dropped, 100);
        assert!(after.export_failures > before.export_failures);
    }
}
