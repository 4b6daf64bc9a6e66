//! Bindings of `ferrolab_core::telemetry::{metrics, server}`: prometheus_client-shaped metrics whose values live
//! in native atomics, the exposition, and the embedded `/metrics` + `/health` server.

use crate::errors::{self, IntoPyResult};
use crate::ffi::{self, FastArgs, FastCall};
use ferrolab_core::error::check_seconds;
use ferrolab_core::sync::MutexExt;
use ferrolab_core::telemetry::metrics::{self as core, Child, Family, Kind};
use ferrolab_core::telemetry::openmetrics;
use ferrolab_core::telemetry::seam;
use ferrolab_core::telemetry::server::{self, Handler, Reply, Route};
use ferrolab_core::telemetry::tracing as tr;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::PyClassInitializer;
use smallvec::SmallVec;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Which core registry a Python registry object stands for.
#[derive(Clone)]
pub enum RegRef {
    /// The process-wide one (``fl.metrics.REGISTRY``, with the built-in series).
    Global,
    /// One made by ``CollectorRegistry()``.
    Own(Arc<OwnRegistry>),
}

/// A registry made by ``CollectorRegistry()``: its native families and its Python collectors.
pub struct OwnRegistry {
    core: core::Registry,
    foreign: Foreign,
}

static GLOBAL_FOREIGN: Foreign = Foreign::new();

impl RegRef {
    fn get(&self) -> &core::Registry {
        match self {
            RegRef::Global => core::registry(),
            RegRef::Own(r) => &r.core,
        }
    }

    fn foreign(&self) -> &Foreign {
        match self {
            RegRef::Global => &GLOBAL_FOREIGN,
            RegRef::Own(r) => &r.foreign,
        }
    }
}

/// The collectors written in Python that a registry holds beside its native families (any object with
/// ``collect()``, e.g. prometheus_client's registry, and the ``target_info`` collector).
type Foreign = core::ForeignCollectors<Py<PyAny>>;

/// A function of ``ferrolab.metrics`` (the Python half of registries: custom collectors, escaping).
fn helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("ferrolab.metrics")?.unbind())
        })?
        .bind(py)
        .getattr(name)
}

/// The metric objects of ``reg``'s Python collectors (restricted to ``only``): the ``target_info`` collector's
/// (`target`) or the others'.
fn foreign_metrics<'py>(
    py: Python<'py>,
    reg: &RegRef,
    only: Option<&[String]>,
    target: bool,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if !reg.foreign().any() {
        return Ok(Vec::new());
    }
    let listed = reg
        .foreign()
        .list(target, |c, names| (c.clone_ref(py), names.to_vec()));
    helper(py, "_foreign_collect")?
        .call1((listed, only))?
        .extract()
}

/// The exposition of ``reg``'s Python collectors, to append to the native one (in OpenMetrics without the final
/// ``# EOF``); empty when there are none.
fn foreign_exposition(
    py: Python<'_>,
    reg: &RegRef,
    only: Option<&[String]>,
    om: bool,
) -> PyResult<String> {
    let mut metrics = foreign_metrics(py, reg, only, true)?;
    metrics.extend(foreign_metrics(py, reg, only, false)?);
    if metrics.is_empty() {
        return Ok(String::new());
    }
    helper(py, "_render")?
        .call1((metrics, om, "underscores", false))?
        .extract()
}

/// What a metric's `registry=` argument says.
pub enum RegistryArg {
    /// A registry (``fl.metrics.REGISTRY`` by default): register there.
    In(RegRef),
    /// `None`: do not register.
    Unregistered,
}

impl RegistryArg {
    const DEFAULT: RegistryArg = RegistryArg::In(RegRef::Global);
}

impl<'a, 'py> FromPyObject<'a, 'py> for RegistryArg {
    type Error = PyErr;

    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if ob.is_none() {
            Ok(RegistryArg::Unregistered)
        } else if let Ok(r) = ob.cast::<Registry>() {
            Ok(RegistryArg::In(r.get().reg.clone()))
        } else {
            Err(errors::type_error(
                "argument 'registry' must be a ferrolab.metrics.CollectorRegistry (e.g. REGISTRY) or None",
            ))
        }
    }
}

/// A registry of metrics, shaped like ``prometheus_client.CollectorRegistry``.
///
/// ``fl.metrics.REGISTRY`` is the process-wide one: metrics register there by default, next to the built-in
/// series. ``CollectorRegistry()`` makes an empty one (per test, per library); pass it as ``registry=`` and
/// render it with ``exposition(registry)``. ``registry=None`` creates an unregistered metric.
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> reg = fl.metrics.CollectorRegistry()
/// >>> c = fl.metrics.Counter("doc_reg_jobs", "Jobs.", registry=reg)
/// >>> c.inc()
/// >>> reg.get_sample_value("doc_reg_jobs_total")
/// 1.0
/// >>> print(fl.metrics.exposition(reg.restricted_registry(["doc_reg_jobs_total"])), end="")
/// # HELP doc_reg_jobs_total Jobs.
/// # TYPE doc_reg_jobs_total counter
/// doc_reg_jobs_total 1.0
#[pyclass(frozen, name = "CollectorRegistry", module = "ferrolab.metrics")]
pub struct Registry {
    reg: RegRef,
    /// A restricted view's sample names.
    only: Option<Vec<String>>,
    /// Whether a collector without ``describe()`` is collected once at registration to learn its names.
    auto_describe: bool,
}

impl Registry {
    fn new_global() -> Registry {
        Registry {
            reg: RegRef::Global,
            only: None,
            auto_describe: false,
        }
    }
}

#[pymethods]
impl Registry {
    #[new]
    #[pyo3(signature = (auto_describe=false, target_info=None))]
    fn new(
        py: Python<'_>,
        auto_describe: bool,
        target_info: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Registry> {
        let r = Registry {
            reg: RegRef::Own(Arc::new(OwnRegistry {
                core: core::Registry::new(),
                foreign: Foreign::new(),
            })),
            only: None,
            auto_describe,
        };
        r.set_target_info(py, target_info)?;
        Ok(r)
    }

    /// Registers a metric created with ``registry=None`` (or in another registry), or a custom collector: any
    /// object with a ``collect()`` method yielding ``Metric`` objects (prometheus_client's registry is one, so
    /// ``fl.metrics.REGISTRY.register(prometheus_client.REGISTRY)`` serves its series on ``fl.metrics.serve()``).
    ///
    /// A collector's names come from its ``describe()`` (or, with ``auto_describe=True``, one ``collect()``).
    /// Raises ``DuplicateTimeseries`` (a ``ValueError``) when they clash with registered ones.
    fn register(&self, py: Python<'_>, metric: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(fam) = family_of(metric) {
            return fam
                .register_in(self.reg.get(), "register")
                .map_err(errors::duplicate_timeseries);
        }
        let names: Vec<String> = helper(py, "_collector_names")?
            .call1((metric, self.auto_describe))?
            .extract()?;
        self.reg
            .foreign()
            .add(self.reg.get(), metric.clone().unbind(), names, "register")
            .map_err(errors::duplicate_timeseries)
    }

    /// Removes a metric or collector from this registry.
    ///
    /// Raises ``KeyError`` when it is not registered.
    fn unregister(&self, metric: &Bound<'_, PyAny>) -> PyResult<()> {
        let removed = match family_of(metric) {
            Ok(fam) => fam.unregister_from(self.reg.get()),
            Err(_) => self
                .reg
                .foreign()
                .remove(self.reg.get(), |c| c.is(metric))
                .is_some(),
        };
        if removed {
            Ok(())
        } else {
            Err(errors::key_error(
                "unregister(): argument 'metric' is not registered",
            ))
        }
    }

    /// Sets the labels of the ``target_info`` series (``None`` or ``{}`` removes it), as prometheus_client.
    #[pyo3(signature = (labels))]
    fn set_target_info(&self, py: Python<'_>, labels: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let labels = labels.filter(|d| !d.is_empty());
        let collector = match labels {
            Some(d) => Some(helper(py, "_TargetInfo")?.call1((d,))?.unbind()),
            None => None,
        };
        self.reg
            .foreign()
            .set_target(self.reg.get(), collector)
            .map_err(errors::duplicate_timeseries)?;
        Ok(())
    }

    /// The labels of the ``target_info`` series, or ``None``.
    fn get_target_info(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.reg
            .foreign()
            .target(|c| c.clone_ref(py))
            .map(|c| Ok(c.bind(py).getattr("labels")?.call_method0("copy")?.unbind()))
            .transpose()
    }

    /// The metric families, as prometheus_client's ``collect()`` yields them (``name``, ``documentation``,
    /// ``type``, ``samples`` of ``Sample(name, labels, value, timestamp, exemplar)``): ``target_info`` first,
    /// then ferrolab's families, then those of custom collectors.
    fn collect<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let only = self.only.as_deref();
        let native = families_to_py(py, py.detach(|| self.reg.get().families(only)))?;
        let mut out = foreign_metrics(py, &self.reg, only, true)?;
        out.extend(native);
        out.extend(foreign_metrics(py, &self.reg, only, false)?);
        Ok(out)
    }

    /// ferrolab's own families only (no custom collectors, no ``target_info``): what
    /// ``bridge_to_prometheus_client`` hands to prometheus_client.
    fn _collect_native<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        families_to_py(py, py.detach(|| self.reg.get().families(None)))
    }

    /// A view of this registry with only the samples named in ``names`` (for ``exposition``, ``collect``).
    fn restricted_registry(&self, names: Vec<String>) -> Registry {
        Registry {
            reg: self.reg.clone(),
            only: Some(names),
            auto_describe: self.auto_describe,
        }
    }

    /// The value of one sample, like prometheus_client's ``REGISTRY.get_sample_value``.
    ///
    /// ``name`` is the sample name (``requests_total``, ``latency_seconds_bucket``...), ``labels`` a dict of
    /// label values; returns ``None`` when there is no such sample.
    #[pyo3(signature = (name, labels=None))]
    fn get_sample_value(
        slf: &Bound<'_, Self>,
        name: &str,
        labels: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<f64>> {
        let py = slf.py();
        let this = slf.get();
        if this.reg.foreign().any() {
            let metrics = this.collect(py)?;
            return helper(py, "_sample_value")?
                .call1((metrics, name, labels))?
                .extract();
        }
        let want = match labels {
            Some(d) => str_pairs(d, None)?,
            None => Vec::new(),
        };
        Ok(py.detach(|| {
            this.reg
                .get()
                .sample_value(name, want, this.only.as_deref())
        }))
    }

    fn __repr__(&self) -> &'static str {
        match (&self.reg, &self.only) {
            (RegRef::Global, None) => "<ferrolab.metrics.REGISTRY>",
            (_, Some(_)) => "<ferrolab.metrics.CollectorRegistry (restricted)>",
            _ => "<ferrolab.metrics.CollectorRegistry>",
        }
    }
}

/// A dict's items as `(key, value)` strings. The keys must be str; with `not_str`, the values too (else its
/// error), without it the values are converted with ``str()``.
fn str_pairs(
    d: &Bound<'_, PyDict>,
    not_str: Option<&dyn Fn() -> PyErr>,
) -> PyResult<Vec<(String, String)>> {
    d.iter()
        .map(|(k, v)| match not_str {
            Some(err) => match (k.extract::<String>(), v.extract::<String>()) {
                (Ok(k), Ok(v)) => Ok((k, v)),
                _ => Err(err()),
            },
            None => Ok((k.extract()?, v.str()?.to_str()?.to_string())),
        })
        .collect()
}

/// Core family views as ``ferrolab.metrics.Metric`` objects (built by ``ferrolab.metrics._family``).
fn families_to_py(py: Python<'_>, fams: Vec<core::FamilyView>) -> PyResult<Vec<Bound<'_, PyAny>>> {
    let make = helper(py, "_family")?;
    fams.into_iter()
        .map(|f| {
            let samples: Vec<(String, Bound<'_, PyDict>, f64)> = f
                .samples
                .into_iter()
                .map(|(n, l, v)| {
                    let d = PyDict::new(py);
                    for (k, val) in l {
                        d.set_item(k, val)?;
                    }
                    Ok((n, d, v))
                })
                .collect::<PyResult<_>>()?;
            make.call1((f.name, f.help, f.kind, samples))
        })
        .collect()
}

fn family_of(metric: &Bound<'_, PyAny>) -> PyResult<Family> {
    if let Ok(m) = metric.cast::<Metric>() {
        return Ok(m.get().shared.family.clone());
    }
    Err(errors::type_error(
        "argument 'metric' must be a ferrolab.metrics Counter, Gauge, Histogram or Summary",
    ))
}

struct Shared {
    kind: Kind,
    family: Family,
    name: String,
    documentation: String,
    labelnames: Vec<String>,
    labelnames_py: Vec<Py<PyString>>,
    /// The Python child objects already handed out, by label values.
    children: core::LabelCache<Py<PyAny>>,
}

/// Label values, names or objects of one call: on the stack for up to 8 labels.
type Few<T> = SmallVec<[T; 8]>;

/// The native object behind ``Counter``, ``Gauge`` and ``Histogram`` (one class per kind below).
#[pyclass(frozen, subclass, module = "ferrolab.metrics")]
pub struct Metric {
    shared: Arc<Shared>,
    child: Option<Child>,
    /// A child's label values, in label-name order (empty for an unlabelled metric and a labelled parent).
    values: Box<[String]>,
}

/// The naming arguments every metric class takes, as prometheus_client's.
struct Names<'a> {
    name: &'a str,
    documentation: &'a str,
    namespace: &'a str,
    subsystem: &'a str,
    unit: &'a str,
}

impl Metric {
    fn create(
        py: Python<'_>,
        kind: Kind,
        names: Names<'_>,
        labelnames: Option<&Bound<'_, PyAny>>,
        buckets: Option<Vec<f64>>,
        registry: RegistryArg,
        states: Option<Vec<String>>,
    ) -> PyResult<Metric> {
        let Names {
            name,
            documentation,
            namespace,
            subsystem,
            unit,
        } = names;
        let empty = PyTuple::empty(py);
        let labelnames = labelnames.unwrap_or(empty.as_any());
        let func = kind.class();
        let labelnames: Vec<String> = if labelnames.is_instance_of::<PyString>() {
            return Err(errors::arg_type(
                func,
                "labelnames",
                "must be a sequence of str, not a str",
            ));
        } else {
            labelnames
                .extract()
                .map_err(|_| errors::arg_type(func, "labelnames", "must be a sequence of str"))?
        };
        let full = core::full_name(kind, name, namespace, subsystem, unit).py()?;
        let family = match states {
            Some(states) => Family::new_enum(&full, documentation, &labelnames, &states).py()?,
            None => {
                Family::new(kind, &full, documentation, &labelnames, buckets.as_deref()).py()?
            }
        };
        if let RegistryArg::In(r) = &registry {
            family
                .register_in(r.get(), func)
                .map_err(errors::duplicate_timeseries)?;
        }
        let child = if labelnames.is_empty() {
            Some(family.child_at::<&str>(&[], py_time(py)?).py()?)
        } else {
            None
        };
        let labelnames_py = labelnames
            .iter()
            .map(|l| PyString::intern(py, l).unbind())
            .collect();
        Ok(Metric {
            shared: Arc::new(Shared {
                kind,
                family,
                name: full,
                documentation: documentation.to_string(),
                labelnames,
                labelnames_py,
                children: core::LabelCache::default(),
            }),
            child,
            values: Box::default(),
        })
    }

    /// Attaches an exemplar to the observation or increment of `value` just made: the `exemplar` labels given,
    /// else the current sampled `fl.tracing` span's `trace_id` and `span_id` (nothing outside one).
    #[cold]
    #[inline(never)]
    fn exemplar(
        &self,
        py: Python<'_>,
        func: &'static str,
        value: f64,
        labels: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let ex = match labels {
            Some(d) => {
                let not_str =
                    || errors::arg_type(func, "exemplar", "must map str label names to str values");
                openmetrics::Exemplar::from_labels(func, str_pairs(d, Some(&not_str))?, value)
                    .py()?
            }
            None => match crate::tracing::current_recording(py) {
                Some(ctx) => {
                    let (trace_id, span_id) = ctx.ids();
                    openmetrics::Exemplar::of_span(trace_id, span_id, value)
                }
                None => return Ok(()),
            },
        };
        self.shared.family.exemplar(&self.values, value, ex);
        Ok(())
    }

    fn child(&self) -> PyResult<&Child> {
        self.child.as_ref().ok_or_else(|| {
            errors::value_error(format!(
                "{} metric {:?} is missing label values: call .labels({}) first",
                self.shared.kind.class().to_lowercase(),
                self.shared.name,
                self.shared.labelnames.join(", ")
            ))
        })
    }

    /// The label values of a `labels(...)` call as Python strings, in label-name order.
    fn label_values<'py>(
        &self,
        positional: &[Bound<'py, PyAny>],
        named: &[(Bound<'py, PyAny>, Bound<'py, PyAny>)],
    ) -> PyResult<Few<Bound<'py, PyString>>> {
        let sh = &self.shared;
        if sh.labelnames.is_empty() {
            return Err(errors::value_error(format!(
                "labels(): metric {:?} has no label names",
                sh.name
            )));
        }
        if self.child.is_some() {
            return Err(errors::value_error(
                "labels(): label values are already set on this child",
            ));
        }
        let n = sh.labelnames.len();
        let text = |v: &Bound<'py, PyAny>| -> PyResult<Bound<'py, PyString>> {
            match v.cast::<PyString>() {
                Ok(s) => Ok(s.clone()),
                Err(_) => v.str(),
            }
        };
        if !named.is_empty() {
            if !positional.is_empty() {
                return Err(errors::value_error(
                    "labels(): pass label values either by position or by name, not both",
                ));
            }
            let got = || named.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>();
            if named.len() != n {
                return Err(self.wrong_labels(got()));
            }
            let mut slots: Few<Option<Bound<'py, PyString>>> = smallvec::smallvec![None; n];
            for (k, v) in named {
                // keyword names are interned: pointer equality is the usual hit
                let j = sh
                    .labelnames_py
                    .iter()
                    .position(|l| l.as_ptr() == k.as_ptr())
                    .or_else(|| {
                        let k = k.cast::<PyString>().ok()?.to_str().ok()?;
                        sh.labelnames.iter().position(|l| l == k)
                    });
                match j {
                    Some(j) if slots[j].is_none() => slots[j] = Some(text(v)?),
                    _ => return Err(self.wrong_labels(got())),
                }
            }
            return Ok(slots.into_iter().flatten().collect());
        }
        if positional.len() != n {
            return Err(errors::value_error(format!(
                "labels(): metric {:?} takes {n} label value(s) ({}), got {}",
                sh.name,
                sh.labelnames.join(", "),
                positional.len()
            )));
        }
        positional.iter().map(text).collect()
    }

    fn wrong_labels(&self, got: Vec<String>) -> PyErr {
        errors::value_error(format!(
            "labels(): metric {:?} has label names ({}), got ({})",
            self.shared.name,
            self.shared.labelnames.join(", "),
            got.join(", ")
        ))
    }

    /// The child for these label values: the cached Python object, or a new one made by `make`.
    fn labeled<'py>(
        &self,
        py: Python<'py>,
        positional: &[Bound<'py, PyAny>],
        named: &[(Bound<'py, PyAny>, Bound<'py, PyAny>)],
    ) -> PyResult<Py<PyAny>> {
        let strs = self.label_values(positional, named)?;
        let vals: Few<&str> = strs.iter().map(|s| s.to_str()).collect::<PyResult<_>>()?;
        let sh = &self.shared;
        if let Some(obj) = sh.children.find(&vals, |o| o.clone_ref(py)) {
            return Ok(obj);
        }
        let child = sh.family.child_at(&vals, py_time(py)?).py()?;
        let key: Box<[String]> = vals.iter().map(|v| v.to_string()).collect();
        let m = Metric {
            shared: sh.clone(),
            child: Some(child),
            values: key,
        };
        // the class of each kind has the kind's name
        macro_rules! object_of_kind {
            ($($k:ident),*) => {
                match sh.kind {
                    $(Kind::$k => Py::new(py, PyClassInitializer::from(m).add_subclass($k))?.into_any(),)*
                }
            };
        }
        let obj = object_of_kind!(Counter, Gauge, Histogram, Summary, Enum, Info);
        // another thread may have made one first: one object is handed out
        Ok(sh.children.insert(&vals, obj, |o| o.clone_ref(py)))
    }
}

#[pymethods]
impl Metric {
    /// The metric's full name (for a counter, without the ``_total`` suffix, as prometheus_client).
    #[getter]
    fn name(&self) -> &str {
        &self.shared.name
    }

    /// prometheus_client's private spelling of ``name`` (code migrating from it reads ``_name``).
    #[getter]
    fn _name(&self) -> &str {
        &self.shared.name
    }

    /// The help text.
    #[getter]
    fn documentation(&self) -> &str {
        &self.shared.documentation
    }

    /// The label names.
    #[getter]
    fn labelnames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shared.labelnames)
    }

    /// Removes the series with these label values.
    #[pyo3(signature = (*values))]
    fn remove(&self, values: &Bound<'_, PyTuple>) -> PyResult<()> {
        let vals: Vec<String> = values
            .iter()
            .map(|v| Ok(v.str()?.to_str()?.to_string()))
            .collect::<PyResult<_>>()?;
        if vals.len() != self.shared.labelnames.len() || self.shared.labelnames.is_empty() {
            return Err(errors::value_error(format!(
                "remove(): metric {:?} takes {} label value(s)",
                self.shared.name,
                self.shared.labelnames.len()
            )));
        }
        self.shared.family.remove(&vals);
        self.shared.children.remove([&vals[..]]);
        Ok(())
    }

    /// Removes every series whose labels include all of ``labels`` (a dict of label names to values).
    fn remove_by_labels(&self, labels: &Bound<'_, PyDict>) -> PyResult<()> {
        let want = str_pairs(labels, None)?;
        let gone = self.shared.family.remove_by_labels(&want).py()?;
        self.shared.children.remove(gone.iter().map(|v| &v[..]));
        Ok(())
    }

    /// The metric's family with its current samples, as prometheus_client's ``collect()``: a list of one
    /// ``Metric``.
    fn collect<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let mfs = self.shared.family.collect_families();
        families_to_py(py, core::families(&mfs, None))
    }

    /// The metric's family without samples, as prometheus_client's ``describe()``.
    fn describe<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let mfs = self.shared.family.collect_families();
        let mut fams = core::families(&mfs, None);
        for f in &mut fams {
            f.samples.clear();
        }
        families_to_py(py, fams)
    }

    /// Removes every labelled series.
    fn clear(&self) {
        self.shared.family.clear();
        self.shared.children.clear();
    }

    fn __repr__(&self) -> String {
        format!(
            "<ferrolab.metrics.{} {:?}>",
            self.shared.kind.class(),
            self.shared.name
        )
    }
}

static TIME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Python's ``time.time()`` (looked up on each call, so that a test's mock of it is honoured, as in
/// prometheus_client): the creation time of a new series.
fn py_time(py: Python<'_>) -> PyResult<f64> {
    let time = TIME.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("time")?.into_any().unbind())
    })?;
    time.bind(py).getattr("time")?.call0()?.extract()
}

/// The numbers the value methods take, converted so that a wrong one names the method and the argument
/// ("inc(): argument 'amount' must be a real number, got str"); PyO3's own conversion named neither.
macro_rules! value_args {
    ($($f:ident: $method:literal, $arg:literal;)*) => {$(
        #[inline]
        fn $f(v: &Bound<'_, PyAny>) -> PyResult<f64> {
            errors::scalar_arg($method, $arg, "a real number", v)
        }
    )*};
}

value_args! {
    inc_amount: "inc", "amount";
    dec_amount: "dec", "amount";
    set_value: "set", "value";
    observe_amount: "observe", "amount";
}

/// A metric class's name, for its constructor's errors ("Counter(): argument 'name' must be a str, got int").
trait ClassName {
    const NAME: &'static str;
}

/// The constructors' str arguments, converted as [`value_args`] converts numbers.
macro_rules! str_args {
    ($($f:ident: $arg:literal;)*) => {$(
        fn $f<'a, C: ClassName>(v: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
            errors::str_arg(C::NAME, $arg, v)
        }
    )*};
}

str_args! {
    name_arg: "name";
    documentation_arg: "documentation";
    namespace_arg: "namespace";
    subsystem_arg: "subsystem";
    unit_arg: "unit";
    multiprocess_mode: "multiprocess_mode";
}

/// `Enum.state(state)`.
fn state_arg<'a>(v: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    errors::str_arg("state", "state", v)
}

/// `Histogram(buckets=...)`: None (the default buckets) or a sequence of real numbers.
fn buckets<C: ClassName>(v: &Bound<'_, PyAny>) -> PyResult<Option<Vec<f64>>> {
    seq_arg(C::NAME, "buckets", "real numbers", v)
}

/// `Enum(states=...)`: None or a sequence of str.
fn states<C: ClassName>(v: &Bound<'_, PyAny>) -> PyResult<Option<Vec<String>>> {
    seq_arg(C::NAME, "states", "str", v)
}

/// None, or a sequence of `T` (`of` in the message): a str, another type or an element of another type is a
/// TypeError naming the function and the argument.
fn seq_arg<'py, T>(
    func: &'static str,
    arg: &'static str,
    of: &str,
    v: &Bound<'py, PyAny>,
) -> PyResult<Option<Vec<T>>>
where
    T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
{
    if v.is_none() {
        return Ok(None);
    }
    if let Ok(items) = v.extract::<Vec<T>>() {
        return Ok(Some(items));
    }
    let msg = match v.extract::<Vec<Bound<'py, PyAny>>>() {
        Ok(items) => match items
            .iter()
            .enumerate()
            .find_map(|(k, i)| Some((k, i.extract::<T>().err()?)))
        {
            Some((k, e)) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(v.py()) => {
                format!("must be a sequence of {of}: item {k} is too large")
            }
            Some((k, _)) => {
                let got = errors::type_of(&items[k]);
                format!("must be a sequence of {of}: item {k} is of type {got}")
            }
            None => format!("must be a sequence of {of}"),
        },
        Err(_) => format!("must be a sequence of {of}, got {}", errors::type_of(v)),
    };
    Err(errors::arg_type(func, arg, msg))
}

/// A metric class (`$cls`, of kind `$kind`) and its methods: the constructor takes prometheus_client's naming
/// arguments plus the class's own `$extra` ones (each converted by the function of its name, e.g. [`buckets`]);
/// `$args`, which sees those, checks them and gives the `(buckets, states)` of the native metric.
macro_rules! metric_class {
    ($cls:ident, $kind:expr, [$($extra:ident: $ty:ty = $default:tt),*], $args:block,
     { $($methods:tt)* }) => {
        impl ClassName for $cls {
            const NAME: &'static str = stringify!($cls);
        }

        #[pymethods]
        impl $cls {
            #[new]
            #[pyo3(signature = (name, documentation, labelnames=None, namespace="", subsystem="", unit="",
                                registry=RegistryArg::DEFAULT $(, $extra=$default)*))]
            #[allow(clippy::too_many_arguments)]
            fn new(
                py: Python<'_>,
                #[pyo3(from_py_with = name_arg::<$cls>)] name: &str,
                #[pyo3(from_py_with = documentation_arg::<$cls>)] documentation: &str,
                labelnames: Option<&Bound<'_, PyAny>>,
                #[pyo3(from_py_with = namespace_arg::<$cls>)] namespace: &str,
                #[pyo3(from_py_with = subsystem_arg::<$cls>)] subsystem: &str,
                #[pyo3(from_py_with = unit_arg::<$cls>)] unit: &str,
                registry: RegistryArg,
                $(#[pyo3(from_py_with = $extra::<$cls>)] $extra: $ty),*
            ) -> PyResult<PyClassInitializer<Self>> {
                let (buckets, states): (Option<Vec<f64>>, Option<Vec<String>>) = $args;
                let names = Names { name, documentation, namespace, subsystem, unit };
                let m = Metric::create(py, $kind, names, labelnames, buckets, registry, states)?;
                Ok(PyClassInitializer::from(m).add_subclass($cls))
            }

            $($methods)*
        }
    };
}

/// A monotonically increasing counter, shaped like ``prometheus_client.Counter``; the exposed series is
/// ``<name>_total``.
///
/// Parameters
/// ----------
/// name : str
///     Metric name (a trailing ``_total`` is accepted and not doubled).
/// documentation : str
///     Help text.
/// labelnames : sequence of str, optional
///     Label names; then use ``.labels(...)`` to get a series.
/// namespace, subsystem, unit : str, optional
///     Joined into the name as ``namespace_subsystem_name_unit``.
/// registry : REGISTRY or None, optional
///     ``None`` creates an unregistered counter.
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> jobs = fl.metrics.Counter("doc_jobs", "Jobs processed.", ["queue"])
/// >>> jobs.labels(queue="fast").inc()
/// >>> jobs.labels("fast").inc(2)
/// >>> fl.metrics.REGISTRY.get_sample_value("doc_jobs_total", {"queue": "fast"})
/// 3.0
/// >>> fl.metrics.REGISTRY.unregister(jobs)
#[pyclass(frozen, extends = Metric, module = "ferrolab.metrics")]
pub struct Counter;

metric_class! {
    Counter, Kind::Counter, [],
    { (None, None) },
    {
    /// Adds ``amount`` (default 1); a negative amount is a ``ValueError``. ``exemplar`` (a dict of str labels,
    /// e.g. ``{"trace_id": "..."}``) is attached to the increment; inside a sampled ``fl.tracing`` span the span's
    /// ids are attached without it.
    #[pyo3(signature = (amount=1.0, exemplar=None))]
    fn inc(
        slf: &Bound<'_, Self>,
        #[pyo3(from_py_with = inc_amount)] amount: f64,
        exemplar: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        if amount.is_nan() || amount < 0.0 {
            return Err(errors::arg_value(
                "inc",
                "amount",
                format!("is {amount}; counters can only be incremented by non-negative amounts"),
            ));
        }
        let m = slf.as_super().get();
        m.child()?.as_counter().inc_by(amount);
        if exemplar.is_some() || tr::active() {
            m.exemplar(slf.py(), "inc", amount, exemplar)?;
        }
        Ok(())
    }

    /// Resets the counter to zero.
    fn reset(slf: &Bound<'_, Self>) -> PyResult<()> {
        let m = slf.as_super().get();
        m.child()?.as_counter().reset();
        m.shared.family.recreated(&m.values, py_time(slf.py())?);
        Ok(())
    }

    /// Counts exceptions of type ``exception`` raised in a ``with`` block or a decorated function (they
    /// propagate).
    #[pyo3(signature = (exception=None))]
    fn count_exceptions(
        slf: &Bound<'_, Self>,
        exception: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Guard> {
        slf.as_super().get().child()?;
        let exc = match exception {
            Some(e) => {
                let valid = match e.cast::<PyTuple>() {
                    Ok(t) => t.iter().all(|x| errors::is_exception_class(&x)),
                    Err(_) => errors::is_exception_class(&e),
                };
                if !valid {
                    return Err(errors::arg_type(
                        "count_exceptions",
                        "exception",
                        "must be an exception class or a tuple of them",
                    ));
                }
                e.unbind()
            }
            None => slf
                .py()
                .get_type::<pyo3::exceptions::PyException>()
                .into_any()
                .unbind(),
        };
        Ok(Guard::new(slf.as_any(), GuardKind::CountExceptions(exc)))
    }
    }
}

/// A value that can go up and down, shaped like ``prometheus_client.Gauge``.
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> queue = fl.metrics.Gauge("doc_queue_depth", "Items waiting.")
/// >>> queue.set(10); queue.inc(2); queue.dec()
/// >>> fl.metrics.REGISTRY.get_sample_value("doc_queue_depth")
/// 11.0
/// >>> with queue.track_inprogress():
/// ...     fl.metrics.REGISTRY.get_sample_value("doc_queue_depth")
/// 12.0
/// >>> fl.metrics.REGISTRY.unregister(queue)
#[pyclass(frozen, extends = Metric, module = "ferrolab.metrics")]
pub struct Gauge;

fn gauge<'a>(slf: &'a Bound<'_, Gauge>) -> PyResult<&'a prometheus::Gauge> {
    Ok(slf.as_super().get().child()?.as_gauge())
}

metric_class! {
    Gauge, Kind::Gauge, [multiprocess_mode: &str = "all"],
    {
        if multiprocess_mode != "all" {
            return Err(errors::not_implemented(format!(
                "Gauge(): multiprocess_mode={multiprocess_mode:?} is not supported: ferrolab's values live in one \
                 process (serve each worker's metrics with fl.metrics.serve() and aggregate in Prometheus)"
            )));
        }
        (None, None)
    },
    {
    /// Adds ``amount`` (default 1).
    #[pyo3(signature = (amount=1.0))]
    fn inc(
        slf: &Bound<'_, Self>,
        #[pyo3(from_py_with = inc_amount)] amount: f64,
    ) -> PyResult<()> {
        gauge(slf)?.add(amount);
        Ok(())
    }

    /// Subtracts ``amount`` (default 1).
    #[pyo3(signature = (amount=1.0))]
    fn dec(
        slf: &Bound<'_, Self>,
        #[pyo3(from_py_with = dec_amount)] amount: f64,
    ) -> PyResult<()> {
        gauge(slf)?.sub(amount);
        Ok(())
    }

    /// Sets the value.
    fn set(
        slf: &Bound<'_, Self>,
        #[pyo3(from_py_with = set_value)] value: f64,
    ) -> PyResult<()> {
        gauge(slf)?.set(value);
        Ok(())
    }

    /// Sets the value to the current Unix time in seconds.
    fn set_to_current_time(slf: &Bound<'_, Self>) -> PyResult<()> {
        gauge(slf)?.set(openmetrics::unix_seconds());
        Ok(())
    }

    /// Makes the gauge report what ``f()`` returns whenever it is collected (a function of no arguments that
    /// returns a number; an exception or a non-number reads as NaN).
    fn set_function(slf: &Bound<'_, Self>, f: Bound<'_, PyAny>) -> PyResult<()> {
        gauge(slf)?;
        if !f.is_callable() {
            return Err(errors::arg_type(
                "set_function",
                "f",
                "must be a callable of no arguments",
            ));
        }
        let f = f.unbind();
        let func: core::GaugeFn = Arc::new(move || {
            if !ffi::interpreter_alive() {
                return f64::NAN;
            }
            Python::attach(|py| {
                f.bind(py)
                    .call0()
                    .and_then(|v| v.extract::<f64>())
                    .unwrap_or(f64::NAN)
            })
        });
        let m = slf.as_super().get();
        m.shared.family.set_function(&m.values, Some(func));
        Ok(())
    }

    /// Adds 1 while a ``with`` block or decorated function runs.
    fn track_inprogress(slf: &Bound<'_, Self>) -> PyResult<Guard> {
        gauge(slf)?;
        Ok(Guard::new(slf.as_any(), GuardKind::InProgress))
    }

    /// Sets the gauge to the duration in seconds of a ``with`` block or decorated function. On a labelled
    /// gauge, call ``labels(...)`` on the timer inside the block (``with g.time() as t: t.labels("a")``).
    fn time(slf: &Bound<'_, Self>) -> PyResult<Guard> {
        Ok(Guard::new(slf.as_any(), GuardKind::SetDuration))
    }
    }
}

/// A histogram of observations, shaped like ``prometheus_client.Histogram`` (same default buckets).
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> lat = fl.metrics.Histogram("doc_latency_seconds", "Latency.", buckets=[0.1, 1.0])
/// >>> lat.observe(0.05); lat.observe(0.5)
/// >>> fl.metrics.REGISTRY.get_sample_value("doc_latency_seconds_bucket", {"le": "0.1"})
/// 1.0
/// >>> with lat.time():
/// ...     pass
/// >>> fl.metrics.REGISTRY.get_sample_value("doc_latency_seconds_count")
/// 3.0
/// >>> fl.metrics.REGISTRY.unregister(lat)
#[pyclass(frozen, extends = Metric, module = "ferrolab.metrics")]
pub struct Histogram;

metric_class! {
    Histogram, Kind::Histogram, [buckets: Option<Vec<f64>> = None],
    { (buckets, None) },
    {
    /// The bucket upper bounds, ``inf`` last (prometheus_client's ``_upper_bounds``).
    #[getter]
    fn _upper_bounds(slf: &Bound<'_, Self>) -> Vec<f64> {
        slf.as_super().get().shared.family.upper_bounds()
    }

    /// Records one observation. ``exemplar`` (a dict of str labels) is attached to its bucket; inside a sampled
    /// ``fl.tracing`` span the span's ``trace_id`` and ``span_id`` are attached without it.
    #[pyo3(signature = (amount, exemplar=None))]
    fn observe(
        slf: &Bound<'_, Self>,
        #[pyo3(from_py_with = observe_amount)] amount: f64,
        exemplar: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let m = slf.as_super().get();
        m.child()?.as_histogram().observe(amount);
        if exemplar.is_some() || tr::active() {
            m.exemplar(slf.py(), "observe", amount, exemplar)?;
        }
        Ok(())
    }

    /// Observes the duration in seconds of a ``with`` block or decorated function. On a labelled histogram,
    /// call ``labels(...)`` on the timer inside the block (``with h.time() as t: t.labels("a")``).
    fn time(slf: &Bound<'_, Self>) -> PyResult<Guard> {
        Ok(Guard::new(slf.as_any(), GuardKind::Observe))
    }
    }
}

/// A count and a sum of observations, shaped like ``prometheus_client.Summary`` (which has no quantiles either):
/// the series ``<name>_count``, ``<name>_sum`` and ``<name>_created``.
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> reg = fl.metrics.CollectorRegistry()
/// >>> size = fl.metrics.Summary("doc_request_size_bytes", "Request size.", registry=reg)
/// >>> size.observe(512); size.observe(1024)
/// >>> reg.get_sample_value("doc_request_size_bytes_sum")
/// 1536.0
#[pyclass(frozen, extends = Metric, module = "ferrolab.metrics")]
pub struct Summary;

metric_class! {
    Summary, Kind::Summary, [],
    { (None, None) },
    {
    /// Records one observation.
    fn observe(
        slf: &Bound<'_, Self>,
        #[pyo3(from_py_with = observe_amount)] amount: f64,
    ) -> PyResult<()> {
        slf.as_super().get().child()?.as_histogram().observe(amount);
        Ok(())
    }

    /// Observes the duration in seconds of a ``with`` block or decorated function.
    fn time(slf: &Bound<'_, Self>) -> PyResult<Guard> {
        Ok(Guard::new(slf.as_any(), GuardKind::Observe))
    }
    }
}

/// One of a set of states, shaped like ``prometheus_client.Enum``: the series ``<name>{<name>="<state>"}`` is 1
/// for the current state and 0 for the others; a new series starts in the first state.
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> reg = fl.metrics.CollectorRegistry()
/// >>> e = fl.metrics.Enum("doc_task_state", "State.", states=["starting", "running"], registry=reg)
/// >>> e.state("running")
/// >>> reg.get_sample_value("doc_task_state", {"doc_task_state": "running"})
/// 1.0
#[pyclass(frozen, extends = Metric, module = "ferrolab.metrics")]
pub struct Enum;

metric_class! {
    Enum, Kind::Enum, [states: Option<Vec<String>> = None],
    { (None, Some(states.unwrap_or_default())) },
    {
    /// Sets the current state; a ``ValueError`` when it is not one of ``states``.
    fn state(slf: &Bound<'_, Self>, #[pyo3(from_py_with = state_arg)] state: &str) -> PyResult<()> {
        let m = slf.as_super().get();
        m.shared.family.enum_state(m.child()?.keyed(), state).py()
    }
    }
}

/// Key-value pairs about a target, shaped like ``prometheus_client.Info``: the series
/// ``<name>_info{key="value",...} 1``.
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> reg = fl.metrics.CollectorRegistry()
/// >>> build = fl.metrics.Info("doc_build", "Build.", registry=reg)
/// >>> build.info({"version": "1.2.3"})
/// >>> reg.get_sample_value("doc_build_info", {"version": "1.2.3"})
/// 1.0
#[pyclass(frozen, extends = Metric, module = "ferrolab.metrics")]
pub struct Info;

metric_class! {
    Info, Kind::Info, [],
    { (None, None) },
    {
    /// Replaces the key-value pairs (a dict of str to str; the keys may not be the metric's label names).
    fn info(slf: &Bound<'_, Self>, val: &Bound<'_, PyAny>) -> PyResult<()> {
        let Ok(val) = val.cast::<PyDict>() else {
            let got = errors::type_of(val);
            return Err(errors::arg_type("info", "val", format!("must be a dict of str to str, got {got}")));
        };
        let not_str = || errors::arg_value("info", "val", "must map str keys to str values");
        let pairs = str_pairs(val, Some(&not_str))?;
        let m = slf.as_super().get();
        m.shared.family.set_info(m.child()?.keyed(), pairs).py()
    }
    }
}

enum GuardKind {
    Observe,
    SetDuration,
    InProgress,
    CountExceptions(Py<PyAny>),
}

/// A context manager / decorator returned by ``time()``, ``track_inprogress()`` and ``count_exceptions()``.
#[pyclass(module = "ferrolab.metrics")]
pub struct Guard {
    metric: Py<PyAny>,
    child: Option<Child>,
    kind: GuardKind,
    start: Option<Instant>,
    /// The seconds the last block took (prometheus_client's ``Timer.duration``).
    duration: Option<f64>,
}

impl Guard {
    fn new(metric: &Bound<'_, PyAny>, kind: GuardKind) -> Guard {
        let child = metric
            .cast::<Metric>()
            .ok()
            .and_then(|m| m.get().child.clone());
        Guard {
            metric: metric.clone().unbind(),
            child,
            kind,
            start: None,
            duration: None,
        }
    }
}

static DECORATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pymethods]
impl Guard {
    /// The seconds the block took, once it has ended (``None`` before).
    #[getter]
    fn duration(&self) -> Option<f64> {
        self.duration
    }

    /// Picks the series of a labelled metric's timer inside its block (``with h.time() as t: t.labels("a")``).
    #[pyo3(signature = (*values, **labels))]
    fn labels(
        &mut self,
        py: Python<'_>,
        values: &Bound<'_, PyTuple>,
        labels: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let child = self
            .metric
            .bind(py)
            .call_method("labels", values.clone(), labels)?;
        self.child = child.cast::<Metric>()?.get().child.clone();
        self.metric = child.unbind();
        Ok(())
    }

    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyRefMut<'_, Self> {
        slf.start = Some(Instant::now());
        if let (GuardKind::InProgress, Some(Child::Gauge(g))) = (&slf.kind, &slf.child) {
            g.inc();
        }
        slf
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let secs = self.start.take().map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.duration = Some(secs);
        if self.child.is_none() {
            // a labelled metric's timer whose block picked no series: prometheus_client's error
            if let Ok(m) = self.metric.bind(py).cast::<Metric>() {
                m.get().child()?;
            }
        }
        match (&self.kind, &self.child) {
            (GuardKind::Observe, Some(Child::Histogram(h))) => {
                h.observe(secs);
                if tr::active() {
                    if let Ok(m) = self.metric.bind(py).cast::<Metric>() {
                        m.get().exemplar(py, "time", secs, None)?;
                    }
                }
            }
            (GuardKind::SetDuration, Some(Child::Gauge(g))) => g.set(secs),
            (GuardKind::InProgress, Some(Child::Gauge(g))) => g.dec(),
            (GuardKind::CountExceptions(want), Some(Child::Counter(c))) => {
                if let Some(t) = exc_type.filter(|t| !t.is_none()) {
                    let t = t.cast::<pyo3::types::PyType>()?;
                    let w = want.bind(py);
                    if t.is_subclass(w).unwrap_or(false) {
                        c.inc();
                    }
                }
            }
            _ => {}
        }
        Ok(false)
    }

    /// Decorates ``func`` (sync or async) so that every call runs inside a fresh guard.
    fn __call__(&self, py: Python<'_>, func: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let decorate = DECORATE.import(py, "ferrolab.metrics", "_decorate")?;
        let m = self.metric.bind(py);
        let factory = match &self.kind {
            GuardKind::Observe | GuardKind::SetDuration => m.getattr("time")?,
            GuardKind::InProgress => m.getattr("track_inprogress")?,
            GuardKind::CountExceptions(e) => py
                .import("functools")?
                .getattr("partial")?
                .call1((m.getattr("count_exceptions")?, e.bind(py)))?,
        };
        Ok(decorate.call1((factory, func))?.unbind())
    }
}

/// The exposition of a registry (default: ``REGISTRY``, every registered metric and the built-in series): the
/// Prometheus text format 0.0.4 as prometheus_client writes it, or with ``openmetrics=True`` OpenMetrics 1.0 with
/// exemplars (what Prometheus asks for with exemplar storage on).
///
/// ``escaping`` names how metric and label names outside the legacy character set are written, as in
/// prometheus_client 0.26: ``"underscores"`` (the default: ``utf8.cc`` -> ``utf8_cc``), ``"dots"``,
/// ``"values"`` or ``"allow-utf-8"`` (quoted UTF-8 names, for Prometheus 3).
///
/// Examples
/// --------
/// >>> import ferrolab as fl
/// >>> "# TYPE ferrolab_memory_usage_bytes gauge" in fl.metrics.exposition()
/// True
/// >>> fl.metrics.exposition(openmetrics=True).endswith("# EOF\n")
/// True
#[pyfunction]
#[pyo3(signature = (registry=None, openmetrics=false, escaping=None))]
pub fn exposition(
    py: Python<'_>,
    registry: Option<&Bound<'_, PyAny>>,
    openmetrics: bool,
    escaping: Option<&str>,
) -> PyResult<String> {
    let r = match registry {
        None => None,
        Some(r) => Some(r.cast::<Registry>().map_err(|_| {
            errors::arg_type(
                "exposition",
                "registry",
                "must be a ferrolab.metrics.CollectorRegistry",
            )
        })?),
    };
    let (reg, only) = match r {
        None => (RegRef::Global, None),
        Some(r) => (r.get().reg.clone(), r.get().only.clone()),
    };
    let escaping = escaping.unwrap_or("underscores");
    if escaping != "underscores" {
        // names as created (UTF-8), escaped in Python
        let metrics = match r {
            Some(r) => r.get().collect(py)?,
            None => Registry::new_global().collect(py)?,
        };
        return helper(py, "_render")?
            .call1((metrics, openmetrics, escaping, true))?
            .extract();
    }
    let only = only.as_deref();
    let mut text = if openmetrics {
        py.detach(|| reg.get().openmetrics(only))
    } else {
        py.detach(|| reg.get().exposition(only))
    };
    let extra = foreign_exposition(py, &reg, only, openmetrics)?;
    openmetrics::append_foreign(&mut text, &extra, openmetrics);
    Ok(text)
}

/// ``value`` as the expositions write it (Go's ``strconv.FormatFloat(v, 'g', -1, 64)``: ``1.0``, ``+Inf``).
#[pyfunction]
fn _go_float(value: f64) -> String {
    openmetrics::go_float(value)
}

/// Turns prometheus_client's legacy name validation on or off (``None``: leaves it); returns whether it is on.
#[pyfunction]
#[pyo3(signature = (on=None))]
fn _legacy_validation(on: Option<bool>) -> bool {
    if let Some(on) = on {
        core::set_legacy_validation(on);
    }
    core::legacy_validation()
}

/// Turns the ``_created`` samples on or off (prometheus_client's ``disable_created_metrics()``).
#[pyfunction]
fn _set_created(on: bool) {
    core::set_created_enabled(on);
}

/// Native part of ``fl.metrics.configure``.
#[pyfunction]
fn _configure(enabled: bool, prefix: &str) -> PyResult<()> {
    core::set_prefix(prefix).py()?;
    seam::set_enabled(enabled);
    Ok(())
}

/// Native part of error counting for failures raised before an op reaches the seam.
#[pyfunction]
fn _record_error(operation: &str, device: &str, error_type: &str) {
    if let Some(op) = seam::op_by_name(operation) {
        seam::record_untimed_error(op, seam::Device::of_str(device), error_type);
    }
}

/// Whether native instrumentation is on, and the built-in series' prefix.
#[pyfunction]
fn _settings() -> (bool, String) {
    (seam::enabled(), core::prefix())
}

struct PyHandler;

static HEALTH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl Handler for PyHandler {
    fn handle(&self, route: Route) -> Reply {
        match route {
            // collectors written in Python (e.g. prometheus_client's registry) need the interpreter
            Route::Metrics { openmetrics, names } => {
                let only = names.as_deref();
                Reply::metrics(openmetrics, only, || {
                    if !GLOBAL_FOREIGN.any() || !ffi::interpreter_alive() {
                        return Ok(String::new());
                    }
                    Python::attach(|py| foreign_exposition(py, &RegRef::Global, only, openmetrics))
                        .map_err(|e| e.to_string())
                })
            }
            Route::Ready => Reply::json(200, "{\"status\":\"ready\"}"),
            Route::Health => {
                if !ffi::interpreter_alive() {
                    return Reply::unhealthy(503, "shutting down");
                }
                Python::attach(|py| {
                    let r = HEALTH
                        .import(py, "ferrolab.health", "_http_response")
                        .and_then(|f| f.call0())
                        .and_then(|r| r.extract::<(u16, String)>());
                    match r {
                        Ok((code, body)) => Reply::json(code, body),
                        Err(e) => Reply::unhealthy(500, &e.to_string()),
                    }
                })
            }
        }
    }
}

/// A running ``/metrics`` + ``/health`` server (from ``fl.metrics.serve``); a context manager.
#[pyclass(frozen, weakref, module = "ferrolab.metrics")]
pub struct Server {
    inner: Mutex<Option<server::Server>>,
    addr: std::net::SocketAddr,
    token: bool,
    tls: bool,
    basic_auth: bool,
}

#[pymethods]
impl Server {
    /// ``http://host:port`` (``https://`` with TLS).
    #[getter]
    fn url(&self) -> String {
        // (an IPv6 address is written in brackets)
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    #[getter]
    fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// The bound port (the real one when started with ``port=0``).
    #[getter]
    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Whether the server is still running.
    #[getter]
    fn running(&self) -> bool {
        self.inner.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Counters: requests, rejected (503 at the connection cap), evicted (closed at the cap to make room),
    /// bad_requests, timeouts, unauthorized, tls_errors, gzipped, open_connections.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        if let Some(s) = self.inner.locked().as_ref() {
            for (k, v) in s.counters().snapshot() {
                d.set_item(k, v)?;
            }
        }
        Ok(d)
    }

    /// Stops serving and closes open connections (idempotent).
    fn stop(&self, py: Python<'_>) {
        let srv = self.inner.locked().take();
        if let Some(mut s) = srv {
            // a /health request may be waiting for the GIL: release it while the server stops
            py.detach(move || s.stop());
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.stop(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<ferrolab.metrics.Server {} {}{}{}>",
            self.url(),
            if self.running() { "running" } else { "stopped" },
            if self.token { ", token" } else { "" },
            if self.basic_auth { ", basic auth" } else { "" }
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let srv = self
            .inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut s) = srv {
            // dropped by the garbage collector with the GIL held: release it while the workers finish
            Python::attach(|py| py.detach(move || s.stop()));
        }
    }
}

/// gzip as the server compresses ``/metrics`` (for the benchmark: its size and cost against the render).
#[pyfunction]
fn _gzip(py: Python<'_>, data: &[u8]) -> PyResult<Vec<u8>> {
    let data = data.to_vec();
    py.detach(move || server::gzip_bytes(&data))
        .ok_or_else(|| errors::internal("_gzip", "compression failed"))
}

/// Native part of ``fl.metrics.serve``.
#[pyfunction]
#[pyo3(signature = (host, port, token, workers, header_timeout, max_header_bytes, max_connections, tls_cert, tls_key, basic_auth))]
#[allow(clippy::too_many_arguments)]
fn _serve(
    py: Python<'_>,
    host: &str,
    port: u16,
    token: Option<String>,
    workers: usize,
    header_timeout: f64,
    max_header_bytes: usize,
    max_connections: usize,
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
    basic_auth: Vec<(String, String)>,
) -> PyResult<Server> {
    let header_timeout =
        check_seconds("serve", "header_timeout", header_timeout, 3600.0, true).py()?;
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(server::TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            return Err(errors::arg_value(
                "serve",
                "tls_cert",
                "tls_cert and tls_key go together",
            ))
        }
    };
    let cfg = server::Config {
        host: host.to_string(),
        port,
        token: token.clone(),
        basic_auth,
        tls,
        workers,
        max_connections,
        header_timeout,
        max_header_bytes,
        ..server::Config::default()
    };
    let (tls, basic) = (cfg.tls.is_some(), !cfg.basic_auth.is_empty());
    let s = py
        .detach(|| server::Server::start(cfg, Arc::new(PyHandler)))
        .py()?;
    Ok(Server {
        addr: s.local_addr(),
        token: token.is_some(),
        tls,
        basic_auth: basic,
        inner: Mutex::new(Some(s)),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// `labels(*values, **labels)` as a METH_FASTCALL | METH_KEYWORDS method: it reads the keyword names and values
// straight from the vectorcall arguments instead of building a kwargs dict (that dict was most of its cost).

/// `labels` of `Counter`, `Gauge` and `Histogram`.
struct Labels;

impl FastCall for Labels {
    const NAME: &'static std::ffi::CStr = c"labels";
    const FUNC: &'static str = "labels";
    const DOC: &'static std::ffi::CStr = c"labels($self, /, *values, **labels)
--

The series with these label values, by position (in label-name order) or by name; the same values always give
the same object. Raises ValueError when the count or the names do not match the metric's label names.";

    fn call<'py>(
        py: Python<'py>,
        slf: Option<Borrowed<'_, 'py, PyAny>>,
        args: &FastArgs<'_, 'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let metric = slf
            .and_then(|s| s.cast::<Metric>().ok())
            .ok_or_else(|| errors::type_error("labels(): not called on a ferrolab metric"))?;
        let positional: Few<Bound<'py, PyAny>> =
            args.positional().map(Borrowed::to_owned).collect();
        let named: Few<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = args
            .keywords()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(metric
            .get()
            .labeled(py, &positional, &named)?
            .into_bound(py))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    seam::warm_up();
    add_classes! { m; Registry, Metric, Counter, Gauge, Histogram, Summary, Enum, Info, Guard, Server }
    let py = m.py();
    for class in [
        py.get_type::<Counter>(),
        py.get_type::<Gauge>(),
        py.get_type::<Histogram>(),
        py.get_type::<Summary>(),
        py.get_type::<Enum>(),
        py.get_type::<Info>(),
    ] {
        ffi::install_method::<Labels>(&class)?;
    }
    m.add("REGISTRY", Py::new(py, Registry::new_global())?)?;
    add_functions! { m; _set_created, _legacy_validation, _go_float, exposition, _configure, _record_error,
    _settings, _serve, _gzip }
    Ok(())
}
