//! OpenMetrics 1.0 exposition with exemplars.
//!
//! [`exposition`] renders the process-wide registry in the OpenMetrics text format (what Prometheus asks for
//! with `Accept: application/openmetrics-text`). Histogram buckets (and counters) carry the newest exemplar
//! recorded for them: [`put`] stores one, e.g. the trace and span id of the sampled span an observation was
//! made in, so that a latency spike in a dashboard links to its trace.
//!
//! Numbers are written the way prometheus_client writes them (`le="1.0"`, `2.5e+06`), so a histogram keeps its
//! series identity when an application moves between the two libraries.

use super::metrics;
use crate::error::{CoreError, Result};
use crate::sync::RwLockExt;
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The content type of [`exposition`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The combined length of an exemplar's label names and values may not exceed this (OpenMetrics 1.0).
pub const MAX_EXEMPLAR_LABEL_CHARS: usize = 128;

/// Appends the text of collectors outside the core to a native exposition (in OpenMetrics, before its `# EOF`).
pub fn append_foreign(text: &mut String, extra: &str, openmetrics: bool) {
    if extra.is_empty() {
        return;
    }
    if openmetrics {
        text.truncate(text.len() - "# EOF\n".len());
        text.push_str(extra);
        text.push_str("# EOF\n");
    } else {
        text.push_str(extra);
    }
}

/// Seconds since the Unix epoch, now (0 on a clock set before it).
pub fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One exemplar: a labelled example of an observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
}

impl Exemplar {
    /// An exemplar of `value` observed now with these labels; `None` when they exceed
    /// [`MAX_EXEMPLAR_LABEL_CHARS`].
    pub fn new(labels: Vec<(String, String)>, value: f64) -> Option<Exemplar> {
        let chars: usize = labels
            .iter()
            .map(|(k, v)| k.chars().count() + v.chars().count())
            .sum();
        (chars <= MAX_EXEMPLAR_LABEL_CHARS).then(|| Exemplar {
            labels,
            value,
            timestamp: unix_seconds(),
        })
    }

    /// The exemplar that `func` was given as labels `pairs` for an observation of `value`: a `Value` error naming
    /// the argument `exemplar` when a label name is invalid ([`metrics::valid_exemplar_label`]) or the labels
    /// exceed [`MAX_EXEMPLAR_LABEL_CHARS`].
    pub fn from_labels(
        func: &'static str,
        pairs: Vec<(String, String)>,
        value: f64,
    ) -> Result<Exemplar> {
        if let Some((k, _)) = pairs
            .iter()
            .find(|(k, _)| !metrics::valid_exemplar_label(k))
        {
            return Err(CoreError::value(
                func,
                "exemplar",
                format!("has the invalid label name {k:?}"),
            ));
        }
        Exemplar::new(pairs, value).ok_or_else(|| {
            CoreError::value(
                func,
                "exemplar",
                format!(
                    "exceeds {MAX_EXEMPLAR_LABEL_CHARS} characters of label names and values (OpenMetrics' limit)"
                ),
            )
        })
    }

    /// The exemplar of an observation made in a span: labels `trace_id` and `span_id` (lowercase hex).
    pub fn of_span(trace_id: u128, span_id: u64, value: f64) -> Exemplar {
        Exemplar::new(
            vec![
                ("trace_id".into(), format!("{trace_id:032x}")),
                ("span_id".into(), format!("{span_id:016x}")),
            ],
            value,
        )
        .expect("two fixed-size ids fit the exemplar limit")
    }
}

/// Exemplars by family name, then by series (see [`series_key`]), then by slot (the bucket index of a histogram,
/// 0 for a counter).
type Store = HashMap<String, HashMap<String, Vec<Option<Exemplar>>>>;

static STORE: LazyLock<RwLock<Store>> = LazyLock::new(|| RwLock::new(HashMap::new()));
/// Whether any exemplar was ever stored: until then rendering never looks at the store.
static ANY: AtomicBool = AtomicBool::new(false);

/// The key of one series among its family's: its label pairs sorted by name, each written as
/// `name=len:value;` so that no two label sets share a key.
pub fn series_key<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut v: Vec<(&str, &str)> = pairs.into_iter().collect();
    v.sort_unstable();
    let mut key = String::new();
    for (k, val) in v {
        let _ = write!(key, "{k}={}:{val};", val.len());
    }
    key
}

/// [`series_key`] of a series' labels, written into `buf` (cleared first): without allocating when they come
/// sorted by name, as a collected series' labels do.
pub fn series_key_into(buf: &mut String, labels: &[LabelPair]) {
    buf.clear();
    if labels.windows(2).all(|w| w[0].name() <= w[1].name()) {
        // the same text as `series_key`, without the formatting machinery (once per series and scrape)
        let mut digits = [0u8; 20];
        for l in labels {
            buf.push_str(l.name());
            buf.push('=');
            let mut n = l.value().len();
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            buf.extend(digits[at..].iter().map(|&d| d as char));
            buf.push(':');
            buf.push_str(l.value());
            buf.push(';');
        }
    } else {
        buf.push_str(&series_key(labels.iter().map(|l| (l.name(), l.value()))));
    }
}

/// Stores `ex` as the newest exemplar of slot `slot` of series `series` of family `family` (the family's full
/// name as exposed: a counter's with `_total`).
pub fn put(family: &str, series: String, slot: usize, ex: Exemplar) {
    let mut store = STORE.writing();
    let slots = store
        .entry(family.to_string())
        .or_default()
        .entry(series)
        .or_default();
    if slots.len() <= slot {
        slots.resize(slot + 1, None);
    }
    slots[slot] = Some(ex);
    ANY.store(true, Ordering::Relaxed);
}

/// Forgets the exemplars of one series (`None`: of the whole family), e.g. when it is removed.
pub fn forget(family: &str, series: Option<&str>) {
    if !ANY.load(Ordering::Relaxed) {
        return;
    }
    let mut store = STORE.writing();
    match series {
        None => {
            store.remove(family);
        }
        Some(s) => {
            if let Some(f) = store.get_mut(family) {
                f.remove(s);
            }
        }
    }
}

/// The exemplar stored for one slot of a series (for tests and `get_exemplar`-style lookups).
pub fn get(family: &str, series: &str, slot: usize) -> Option<Exemplar> {
    let store = STORE.reading();
    store.get(family)?.get(series)?.get(slot)?.clone()
}

// ---------------------------------------------------------------------------------------------------------------
// numbers

/// A float the way prometheus_client writes it (`floatToGoString`): Python's `repr`, with Go's switch to an
/// exponent for large numbers, and `+Inf`, `-Inf`, `NaN`.
pub fn go_float(d: f64) -> String {
    if d == f64::INFINITY {
        return "+Inf".into();
    }
    if d == f64::NEG_INFINITY {
        return "-Inf".into();
    }
    if d.is_nan() {
        return "NaN".into();
    }
    let s = py_repr(d);
    if d > 0.0 {
        if let Some(dot) = s.find('.') {
            if dot > 6 {
                let digits = format!("{}{}", &s[1..dot], &s[dot + 1..]);
                let mantissa = format!("{}.{}", &s[..1], digits);
                let mantissa = mantissa.trim_end_matches(['0', '.']);
                return format!("{mantissa}e+{:02}", dot - 1);
            }
        }
    }
    s
}

/// [`go_float`] of `ms / 1000` (a creation time in Unix milliseconds) without formatting a float: the decimal
/// digits of `ms` are the shortest that round-trip (at most 15 significant digits), so they are `repr`'s.
pub fn go_float_ms(ms: i64) -> String {
    let mut out = String::new();
    push_go_float_ms(&mut out, ms);
    out
}

/// [`go_float_ms`], written to `out` without allocating.
pub fn push_go_float_ms(out: &mut String, ms: i64) {
    if !(0..1_000_000_000_000_000).contains(&ms) {
        out.push_str(&go_float(ms as f64 / 1000.0));
        return;
    }
    let (int, frac) = (ms / 1000, ms % 1000);
    if int < 1_000_000 {
        // below a million: `repr` as it is (`123.456`, `0.5`, `7.0`)
        let _ = write!(out, "{int}.");
        let f = [frac / 100, frac / 10 % 10, frac % 10];
        let keep = if f[2] != 0 {
            3
        } else if f[1] != 0 {
            2
        } else {
            1
        };
        for d in &f[..keep] {
            out.push((b'0' + *d as u8) as char);
        }
        return;
    }
    // a million or more: Go's exponent form (`1.764949600123e+09`), as go_float writes it
    let mut digits = [0u8; 24];
    let mut n = 0;
    let mut v = ms;
    while v > 0 {
        digits[n] = b'0' + (v % 10) as u8;
        v /= 10;
        n += 1;
    }
    digits[..n].reverse();
    let int_len = n - 3;
    let mut end = n;
    while end > 1 && digits[end - 1] == b'0' {
        end -= 1;
    }
    out.push(digits[0] as char);
    if end > 1 {
        out.push('.');
        for d in &digits[1..end] {
            out.push(*d as char);
        }
    }
    let _ = write!(out, "e+{:02}", int_len - 1);
}

/// Python's `repr` of a finite float: the shortest digits that round-trip, in fixed notation with at least one
/// decimal when the decimal exponent is in [-4, 16), else `d.ddde±XX`.
fn py_repr(d: f64) -> String {
    // `{:e}` gives the shortest round-trip digits: "1.2345e3", "-5e-7"
    let e = format!("{d:e}");
    let (mant, exp) = e.split_once('e').expect("`{:e}` writes an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` writes an integer exponent");
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (a, b) = digits.split_at((exp + 1) as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// A count (an integral float within the exact range) as an integer, anything else as [`go_float`].
fn count(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        go_float(v)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// rendering

fn escape_label(out: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `,name="value"` (no comma before the first pair). With `utf8_names` (exemplar labels, which may have them), a
/// name outside the legacy set is quoted, as Prometheus 3 reads them; series label names are always legacy names.
fn push_pair(out: &mut String, first: &mut bool, k: &str, v: &str, utf8_names: bool) {
    if !std::mem::take(first) {
        out.push(',');
    }
    if !utf8_names || metrics::valid_label(k) {
        out.push_str(k);
    } else {
        out.push('"');
        escape_label(out, k);
        out.push('"');
    }
    out.push_str("=\"");
    escape_label(out, v);
    out.push('"');
}

fn write_labels(out: &mut String, pairs: &[LabelPair], extra: Option<(&str, &str)>) {
    if pairs.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in pairs.iter().map(|l| (l.name(), l.value())).chain(extra) {
        push_pair(out, &mut first, k, v, false);
    }
    out.push('}');
}

fn write_exemplar(out: &mut String, ex: &Exemplar) {
    out.push_str(" # {");
    let mut first = true;
    for (k, v) in &ex.labels {
        push_pair(out, &mut first, k, v, true);
    }
    out.push_str("} ");
    out.push_str(&go_float(ex.value));
    let _ = write!(out, " {:.3}", ex.timestamp);
}

/// The `_created` sample of series `m` of family `name`, when the series carries its creation time.
fn created_sample(out: &mut String, name: &str, m: &Metric) {
    if m.timestamp_ms() != 0 {
        let t = go_float(metrics::created_of(m));
        sample(out, name, "_created", m.get_label(), None, &t, None);
    }
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    pairs: &[LabelPair],
    extra: Option<(&str, &str)>,
    value: &str,
    ex: Option<&Exemplar>,
) {
    out.push_str(name);
    out.push_str(suffix);
    write_labels(out, pairs, extra);
    out.push(' ');
    out.push_str(value);
    if let Some(ex) = ex {
        write_exemplar(out, ex);
    }
    out.push('\n');
}

fn write_help(out: &mut String, name: &str, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_label(out, help);
    out.push('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// the text format 0.0.4, as prometheus_client's `generate_latest` writes it

/// Writes [`go_float`] of `d` to `out`; integral values below a million (counts, most counters) without
/// allocating.
fn push_go_float(out: &mut String, d: f64) {
    if d.fract() == 0.0 && d.abs() < 1e6 && !(d == 0.0 && d.is_sign_negative()) {
        let _ = write!(out, "{}.0", d as i64);
    } else {
        out.push_str(&go_float(d));
    }
}

/// One sample line of the text format: labels sorted by name (prometheus_client writes them sorted), with `extra`
/// (`le`, `quantile`) in its place among them.
fn text_line(
    out: &mut String,
    name: &str,
    pairs: &[LabelPair],
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    if !pairs.is_empty() || extra.is_some() {
        let sorted = pairs.windows(2).all(|w| w[0].name() <= w[1].name());
        let mut owned: Vec<(&str, &str)> = Vec::new();
        if !sorted {
            owned = pairs.iter().map(|l| (l.name(), l.value())).collect();
            owned.sort_by(|a, b| a.0.cmp(b.0));
        }
        out.push('{');
        let mut first = true;
        let mut extra = extra;
        let mut put = |out: &mut String, k: &str, v: &str| push_pair(out, &mut first, k, v, false);
        let n = if sorted { pairs.len() } else { owned.len() };
        for i in 0..n {
            let (k, v) = if sorted {
                (pairs[i].name(), pairs[i].value())
            } else {
                owned[i]
            };
            if let Some((ek, ev)) = extra {
                if ek < k {
                    put(out, ek, ev);
                    extra = None;
                }
            }
            put(out, k, v);
        }
        if let Some((ek, ev)) = extra {
            put(out, ek, ev);
        }
        out.push('}');
    }
    out.push(' ');
    push_go_float(out, value);
    out.push('\n');
}

fn text_header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// Renders `families` in the Prometheus text format 0.0.4 exactly as prometheus_client's `generate_latest`
/// does: labels sorted by name, values and `le` bounds as floats (`le="1.0"`, `1.0`), and the `_created` samples
/// (when [`metrics::created_enabled`]) as a gauge family after each counter, histogram and summary. With `only`,
/// just the samples of those names (families left without samples are left out).
pub fn render_text(families: &[MetricFamily], only: Option<&[String]>, capacity: usize) -> String {
    let created = metrics::created_enabled();
    let mut out = String::with_capacity(capacity);
    let mut body = String::new();
    let mut created_lines = String::new();
    for mf in families {
        body.clear();
        created_lines.clear();
        let name = mf.name();
        let keep = |n: &str| only.is_none_or(|o| o.iter().any(|x| x == n));
        let (exposed, base, kind) = match mf.get_field_type() {
            MetricType::COUNTER => {
                let base = name.strip_suffix("_total").unwrap_or(name);
                (format!("{base}_total"), base, "counter")
            }
            MetricType::GAUGE => (name.to_string(), name, "gauge"),
            MetricType::HISTOGRAM => (name.to_string(), name, "histogram"),
            MetricType::SUMMARY => (name.to_string(), name, "summary"),
            MetricType::UNTYPED => (name.to_string(), name, "untyped"),
        };
        let created_name = format!("{base}_created");
        let (bucket, count_n, sum_n) = (
            format!("{name}_bucket"),
            format!("{name}_count"),
            format!("{name}_sum"),
        );
        for m in mf.get_metric() {
            let labels = m.get_label();
            match mf.get_field_type() {
                MetricType::COUNTER => {
                    if keep(&exposed) {
                        text_line(
                            &mut body,
                            &exposed,
                            labels,
                            None,
                            m.get_counter().get_value(),
                        );
                    }
                }
                MetricType::GAUGE => {
                    if keep(&exposed) {
                        text_line(&mut body, &exposed, labels, None, m.get_gauge().get_value());
                    }
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    if keep(&bucket) {
                        let mut inf = false;
                        for b in h.get_bucket() {
                            inf |= b.upper_bound() == f64::INFINITY;
                            let le = go_float(b.upper_bound());
                            let c = b.cumulative_count() as f64;
                            text_line(&mut body, &bucket, labels, Some(("le", &le)), c);
                        }
                        if !inf {
                            let c = h.get_sample_count() as f64;
                            text_line(&mut body, &bucket, labels, Some(("le", "+Inf")), c);
                        }
                    }
                    if keep(&count_n) {
                        text_line(
                            &mut body,
                            &count_n,
                            labels,
                            None,
                            h.get_sample_count() as f64,
                        );
                    }
                    if keep(&sum_n) && metrics::histogram_has_sum(h) {
                        text_line(&mut body, &sum_n, labels, None, h.get_sample_sum());
                    }
                }
                MetricType::SUMMARY => {
                    let sm = m.get_summary();
                    for q in sm.get_quantile() {
                        if keep(name) {
                            let qs = go_float(q.quantile());
                            let extra = Some(("quantile", qs.as_str()));
                            text_line(&mut body, name, labels, extra, q.value());
                        }
                    }
                    if keep(&count_n) {
                        text_line(&mut body, &count_n, labels, None, sm.sample_count() as f64);
                    }
                    if keep(&sum_n) {
                        text_line(&mut body, &sum_n, labels, None, sm.sample_sum());
                    }
                }
                MetricType::UNTYPED => {}
            }
            if created
                && m.timestamp_ms() != 0
                && mf.get_field_type() != MetricType::GAUGE
                && keep(&created_name)
            {
                text_line(&mut created_lines, &created_name, labels, None, f64::NAN);
                // the value: the creation time, written without formatting a float
                created_lines.truncate(created_lines.len() - "NaN\n".len());
                push_go_float_ms(&mut created_lines, m.timestamp_ms());
                created_lines.push('\n');
            }
        }
        if !body.is_empty() {
            text_header(&mut out, &exposed, mf.help(), kind);
            out.push_str(&body);
        }
        if !created_lines.is_empty() {
            if body.is_empty() {
                // prometheus_client writes the family's header when any of its samples is left
                text_header(&mut out, &exposed, mf.help(), kind);
            }
            text_header(&mut out, &created_name, mf.help(), "gauge");
            out.push_str(&created_lines);
        }
    }
    out
}

/// Renders `families` in OpenMetrics 1.0, with the exemplars in the store, ending with `# EOF`.
pub fn render(families: &[MetricFamily]) -> String {
    render_only(families, None)
}

/// [`render`], with `only`: just the samples of those names (families left without samples are left out).
pub fn render_only(families: &[MetricFamily], only: Option<&[String]>) -> String {
    let created = metrics::created_enabled();
    let keep = |n: &str| only.is_none_or(|o| o.iter().any(|x| x == n));
    let store = ANY.load(Ordering::Relaxed).then(|| STORE.reading());
    let mut out = String::with_capacity(64 * 1024);
    for mf in families {
        let name = mf.name();
        let exemplars = store.as_ref().and_then(|s| s.get(name));
        let slots = |m: &Metric| {
            exemplars.and_then(|e| {
                e.get(&series_key(
                    m.get_label().iter().map(|l| (l.name(), l.value())),
                ))
            })
        };
        let slot = |s: Option<&Vec<Option<Exemplar>>>, i: usize| -> Option<Exemplar> {
            s.and_then(|v| v.get(i)).and_then(|e| e.clone())
        };
        match mf.get_field_type() {
            MetricType::COUNTER => {
                let base = name.strip_suffix("_total").unwrap_or(name);
                write_help(&mut out, base, mf.help());
                let _ = writeln!(out, "# TYPE {base} counter");
                for m in mf.get_metric() {
                    let ex = slot(slots(m), 0);
                    let v = go_float(m.get_counter().get_value());
                    sample(
                        &mut out,
                        base,
                        "_total",
                        m.get_label(),
                        None,
                        &v,
                        ex.as_ref(),
                    );
                    if created {
                        created_sample(&mut out, base, m);
                    }
                }
            }
            MetricType::GAUGE => {
                write_help(&mut out, name, mf.help());
                let _ = writeln!(out, "# TYPE {name} gauge");
                for m in mf.get_metric() {
                    let v = go_float(m.get_gauge().get_value());
                    sample(&mut out, name, "", m.get_label(), None, &v, None);
                }
            }
            MetricType::HISTOGRAM => {
                write_help(&mut out, name, mf.help());
                let _ = writeln!(out, "# TYPE {name} histogram");
                for m in mf.get_metric() {
                    let h = m.get_histogram();
                    let s = slots(m);
                    let mut inf = false;
                    let buckets = h.get_bucket();
                    for (i, b) in buckets.iter().enumerate() {
                        inf |= b.upper_bound() == f64::INFINITY;
                        let le = go_float(b.upper_bound());
                        let c = count(b.cumulative_count() as f64);
                        let ex = slot(s, i);
                        sample(
                            &mut out,
                            name,
                            "_bucket",
                            m.get_label(),
                            Some(("le", &le)),
                            &c,
                            ex.as_ref(),
                        );
                    }
                    let n = count(h.get_sample_count() as f64);
                    if !inf {
                        let ex = slot(s, buckets.len());
                        sample(
                            &mut out,
                            name,
                            "_bucket",
                            m.get_label(),
                            Some(("le", "+Inf")),
                            &n,
                            ex.as_ref(),
                        );
                    }
                    sample(&mut out, name, "_count", m.get_label(), None, &n, None);
                    if metrics::histogram_has_sum(h) {
                        let sum = go_float(h.get_sample_sum());
                        sample(&mut out, name, "_sum", m.get_label(), None, &sum, None);
                    }
                    if created {
                        created_sample(&mut out, name, m);
                    }
                }
            }
            MetricType::SUMMARY => {
                write_help(&mut out, name, mf.help());
                let _ = writeln!(out, "# TYPE {name} summary");
                for m in mf.get_metric() {
                    let sm = m.get_summary();
                    for q in sm.get_quantile() {
                        let qs = go_float(q.quantile());
                        let v = go_float(q.value());
                        let extra = Some(("quantile", qs.as_str()));
                        sample(&mut out, name, "", m.get_label(), extra, &v, None);
                    }
                    let n = count(sm.sample_count() as f64);
                    sample(&mut out, name, "_count", m.get_label(), None, &n, None);
                    let sum = go_float(sm.sample_sum());
                    sample(&mut out, name, "_sum", m.get_label(), None, &sum, None);
                    if created {
                        created_sample(&mut out, name, m);
                    }
                }
            }
            // the registry's collectors make no untyped families
            MetricType::UNTYPED => {}
        }
    }
    if only.is_some() {
        out = restrict(&out, keep);
    }
    out.push_str("# EOF\n");
    out
}

/// The lines of an OpenMetrics rendering whose sample names `keep` accepts, with the `# HELP`/`# TYPE`/`# UNIT`
/// lines of the families that keep a sample.
fn restrict(text: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut header = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            if line.starts_with("# HELP ") {
                // a new family: the previous one's header goes unless a sample kept it
                header.clear();
            }
            header.push_str(line);
            header.push('\n');
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        if keep(&line[..end]) {
            if !header.is_empty() {
                out.push_str(&header);
                header.clear();
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Renders the process-wide registry in OpenMetrics 1.0 (see [`render`]).
pub fn exposition() -> Result<String> {
    exposition_only(None)
}

/// [`exposition`], with `only`: just the samples of those names (see [`render_only`]).
pub fn exposition_only(only: Option<&[String]>) -> Result<String> {
    let mfs = metrics::registry().gather();
    if mfs.iter().any(|mf| mf.name().is_empty()) {
        return Err(CoreError::value(
            "exposition",
            "registry",
            "a family has no name",
        ));
    }
    Ok(render_only(&mfs, only))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_prometheus_client_writes_them() {
        let cases = [
            (1.0, "1.0"),
            (0.005, "0.005"),
            (2.5, "2.5"),
            (10.0, "10.0"),
            (0.0, "0.0"),
            (-3.0, "-3.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123456.0, "123456.0"),
            (1234567.0, "1.234567e+06"),
            (2.5e6, "2.5e+06"),
            (1e16, "1e+16"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (v, want) in cases {
            assert_eq!(go_float(v), want, "{v}");
        }
    }

    #[test]
    fn large_floats_have_two_exponent_digits_as_prometheus_client_writes_them() {
        let cases = [
            (1e10, "1e+10"),
            (1.5e12, "1.5e+12"),
            (123456789012.0, "1.23456789012e+11"),
            (1e15, "1e+15"),
            (9999999999999998.0, "9.999999999999998e+15"),
            (9999999.0, "9.999999e+06"),
            (-1e10, "-10000000000.0"),
        ];
        for (v, want) in cases {
            assert_eq!(go_float(v), want, "{v}");
        }
        for ms in [
            12_345_678_901_234i64,
            10_000_000_000_000,
            999_999_999_999_999,
        ] {
            assert_eq!(go_float_ms(ms), go_float(ms as f64 / 1000.0), "{ms}");
        }
        assert_eq!(go_float_ms(12_345_678_901_234), "1.2345678901234e+10");
    }

    #[test]
    fn summaries_have_created_and_negative_histograms_no_sum() {
        use metrics::{Child, Family, Kind};
        let reg = metrics::Registry::new();
        let sm = Family::new(Kind::Summary, "om_t_summary", "S", &[], None).unwrap();
        sm.register_in(&reg, "Summary").unwrap();
        let neg = Family::new(Kind::Histogram, "om_t_neg", "N", &[], Some(&[-1.0, 1.0])).unwrap();
        neg.register_in(&reg, "Histogram").unwrap();
        for f in [&sm, &neg] {
            match f.child_at::<&str>(&[], 123.456).unwrap() {
                Child::Histogram(h) => h.observe(-2.0),
                _ => unreachable!(),
            }
        }
        let om = reg.openmetrics(None);
        assert!(
            om.contains("om_t_summary_sum -2.0\nom_t_summary_created 123.456\n"),
            "{om}"
        );
        assert!(
            om.contains("om_t_neg_count 1\nom_t_neg_created 123.456\n"),
            "{om}"
        );
        assert!(!om.contains("om_t_neg_sum"), "{om}");
        let text = reg.exposition(None);
        assert!(
            text.contains("om_t_neg_count 1.0\n") && !text.contains("om_t_neg_sum"),
            "{text}"
        );
        assert!(text.contains("om_t_summary_sum -2.0\n"), "{text}");
        let names: Vec<String> = reg
            .families(None)
            .into_iter()
            .flat_map(|f| f.samples.into_iter().map(|s| s.0))
            .collect();
        assert!(names.contains(&"om_t_neg_count".to_string()), "{names:?}");
        assert!(!names.contains(&"om_t_neg_sum".to_string()), "{names:?}");
        assert!(names.contains(&"om_t_summary_sum".to_string()), "{names:?}");
    }

    #[test]
    fn creation_times_as_go_float_writes_them() {
        for ms in [
            0i64,
            1,
            500,
            123_456,
            1_000,
            999_999_999,
            1_000_000_000,
            1_764_949_600_123,
            1_764_949_600_000,
            1_764_949_600_100,
        ] {
            assert_eq!(go_float_ms(ms), go_float(ms as f64 / 1000.0), "{ms}");
        }
        let pair = |k: &str, v: &str| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        };
        let mut buf = String::new();
        series_key_into(&mut buf, &[pair("a", "1"), pair("b", "2")]);
        assert_eq!(buf, series_key([("b", "2"), ("a", "1")]));
        series_key_into(&mut buf, &[pair("b", "2"), pair("a", "1")]);
        assert_eq!(buf, series_key([("b", "2"), ("a", "1")]));
    }

    #[test]
    fn series_keys_do_not_depend_on_label_order_and_do_not_collide() {
        assert_eq!(
            series_key([("b", "2"), ("a", "1")]),
            series_key([("a", "1"), ("b", "2")])
        );
        assert_ne!(
            series_key([("a", "1;b=1:2")]),
            series_key([("a", "1"), ("b", "2")])
        );
    }

    #[test]
    fn exemplar_labels_are_limited() {
        assert!(Exemplar::new(vec![("a".into(), "x".repeat(127))], 1.0).is_some());
        assert!(Exemplar::new(vec![("a".into(), "x".repeat(128))], 1.0).is_none());
        let e = Exemplar::from_labels("observe", vec![("a".into(), "x".repeat(128))], 1.0);
        assert_eq!(
            e.unwrap_err().to_string(),
            "observe(): argument 'exemplar' exceeds 128 characters of label names and values (OpenMetrics' limit)"
        );
        let e = Exemplar::from_labels("inc", vec![("__a".into(), "x".into())], 1.0);
        assert_eq!(
            e.unwrap_err().to_string(),
            "inc(): argument 'exemplar' has the invalid label name \"__a\""
        );
        let e = Exemplar::from_labels("inc", vec![("trace_id".into(), "ab".into())], 2.0).unwrap();
        assert_eq!((e.labels.len(), e.value), (1, 2.0));
        assert!(e.timestamp > 1.6e9);
        let e = Exemplar::of_span(0xabc, 0x12, 0.5);
        assert_eq!(e.labels[0].1, format!("{:032x}", 0xabc));
        assert_eq!(e.labels[1].1, "0000000000000012");
    }

    #[test]
    fn renders_counters_gauges_histograms_with_exemplars() {
        let fam = metrics::Family::new(
            metrics::Kind::Histogram,
            "om_test_latency_seconds",
            "Latency \"quoted\"\nnext",
            &["route".to_string()],
            Some(&[0.1, 1.0]),
        )
        .unwrap();
        let child = match fam.child(&["/a"]).unwrap() {
            metrics::Child::Histogram(h) => h,
            _ => unreachable!(),
        };
        child.observe(0.5);
        put(
            "om_test_latency_seconds",
            series_key([("route", "/a")]),
            1,
            Exemplar::of_span(1, 2, 0.5),
        );
        let mut mfs = Vec::new();
        for mf in fam.collect_families() {
            mfs.push(mf);
        }
        let text = render(&mfs);
        assert!(
            text.contains("# TYPE om_test_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(text.contains("# HELP om_test_latency_seconds Latency \\\"quoted\\\"\\nnext\n"));
        assert!(text.contains("om_test_latency_seconds_bucket{route=\"/a\",le=\"0.1\"} 0\n"));
        let want = format!(
            "om_test_latency_seconds_bucket{{route=\"/a\",le=\"1.0\"}} 1 # {{trace_id=\"{:032x}\",span_id=\"{:016x}\"}} 0.5 ",
            1, 2
        );
        assert!(text.contains(&want), "{text}");
        assert!(text.contains("om_test_latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 1\n"));
        assert!(text.contains("om_test_latency_seconds_count{route=\"/a\"} 1\n"));
        assert!(text.contains("om_test_latency_seconds_sum{route=\"/a\"} 0.5\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
