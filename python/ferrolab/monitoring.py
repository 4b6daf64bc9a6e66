"""Monitoring assets shipped with ferrolab: Prometheus alerting rules, their unit tests, a Grafana dashboard.

The files are package data (``ferrolab/assets``) and use only the series that :mod:`ferrolab.metrics` exports
and those that the pytest plugin's ``--ops-push`` pushes:

* ``ferrolab-alerts.yml``: alerting rules (error rate, p95 latency, process and GPU memory, circuit breakers,
  stale or missing backups, failed ops checks and ops checks that stopped running), each with a ``severity``
  label and ``summary``/``description`` annotations;
* ``ferrolab-alerts.test.yml``: ``promtool test rules`` unit tests of those rules;
* ``ferrolab-dashboard.json``: a Grafana dashboard with a ``datasource`` variable and ``job``/``instance`` filters.

``ferrolab monitoring DIR`` (or :func:`write_monitoring`) copies them into a directory, ready for
``rule_files:`` in ``prometheus.yml`` and for Grafana's dashboard import or provisioning.

Service level objectives (:class:`SLO`: availability from ``ferrolab_operations_total``, latency from the buckets
of ``ferrolab_operation_duration_seconds``) add generated files: ``ferrolab-slo.yml`` with recording rules and the
multi-window, multi-burn-rate alerts of the Google SRE workbook (:func:`slo_rules`), ``ferrolab-slo.test.yml``
with their ``promtool test rules`` tests (:func:`slo_rule_tests`), and an error-budget panel in the dashboard
(:func:`grafana_dashboard` with ``slos``). ``ferrolab monitoring DIR --slo FILE`` reads them from a JSON or YAML
file (:func:`load_slos`).

Examples
--------
>>> import ferrolab.monitoring as monitoring
>>> "alert: FerrolabCircuitBreakerOpen" in monitoring.alert_rules()
True
>>> monitoring.grafana_dashboard()["uid"]
'ferrolab-overview'
>>> slo = monitoring.SLO("api", 0.999, matchers={"job": "api"})
>>> "alert: FerrolabSLOErrorBudgetBurnFast" in monitoring.slo_rules([slo])
True
"""

from __future__ import annotations

import copy
import dataclasses
import decimal
import json
import math
import os
import pathlib
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

__all__ = ["ALERT_RULES_FILE", "ALERT_TESTS_FILE", "BURN_RATE_ALERTS", "DASHBOARD_FILE", "DURATION_BUCKETS",
           "SLO", "SLO_RULES_FILE", "SLO_TESTS_FILE", "alert_rules", "alert_rule_tests", "grafana_dashboard",
           "load_slos", "slo_rule_tests", "slo_rules", "write_monitoring"]

#: File names, as written by :func:`write_monitoring` (the test file refers to the rules file by this name).
ALERT_RULES_FILE = "ferrolab-alerts.yml"
ALERT_TESTS_FILE = "ferrolab-alerts.test.yml"
DASHBOARD_FILE = "ferrolab-dashboard.json"
#: Written by :func:`write_monitoring` only when SLOs are given (the test file refers to the rules file by name).
SLO_RULES_FILE = "ferrolab-slo.yml"
SLO_TESTS_FILE = "ferrolab-slo.test.yml"

_FILES = (ALERT_RULES_FILE, ALERT_TESTS_FILE, DASHBOARD_FILE)


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def alert_rules() -> str:
    """The Prometheus alerting rules (YAML text of ``ferrolab-alerts.yml``).

    Examples
    --------
    >>> import yaml, ferrolab.monitoring as monitoring
    >>> groups = yaml.safe_load(monitoring.alert_rules())["groups"]
    >>> [g["name"] for g in groups]  # doctest: +NORMALIZE_WHITESPACE
    ['ferrolab-targets', 'ferrolab-operations', 'ferrolab-resources', 'ferrolab-resilience', 'ferrolab-backup',
     'ferrolab-ops-checks']
    """
    return _asset(ALERT_RULES_FILE)


def alert_rule_tests() -> str:
    """``promtool test rules`` unit tests of :func:`alert_rules` (YAML text of ``ferrolab-alerts.test.yml``).

    The tests load the rules from ``ferrolab-alerts.yml`` in the same directory, as :func:`write_monitoring`
    lays them out.

    Examples
    --------
    >>> import yaml, ferrolab.monitoring as monitoring
    >>> yaml.safe_load(monitoring.alert_rule_tests())["rule_files"]
    ['ferrolab-alerts.yml']
    """
    return _asset(ALERT_TESTS_FILE)


# --- service level objectives ---------------------------------------------------------------------------------------

#: Upper bounds (seconds) of the ``ferrolab_operation_duration_seconds`` buckets (a ``+Inf`` bucket follows), as the
#: native core defines them; a latency SLO's ``threshold_seconds`` must be one of them.
DURATION_BUCKETS: tuple[float, ...] = (
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
)

#: The multi-window, multi-burn-rate alerts of the Google SRE workbook ("Alerting on SLOs"), for a 30-day period:
#: ``(alert, severity, burn rate, long window, short window)`` with the windows in seconds. An alert fires when the
#: error ratio over both windows exceeds ``burn rate * (1 - objective)``. For another period the windows scale with
#: ``period / 30d`` (rounded to whole minutes, never under 5 minutes) and the burn rates stay: each pair still means
#: the same share of the error budget spent (2% in 1h, 5% in 6h, 10% in 1d, 10% in 3d for 30 days).
BURN_RATE_ALERTS: tuple[tuple[str, str, float, int, int], ...] = (
    ("FerrolabSLOErrorBudgetBurnFast", "critical", 14.4, 3600, 300),
    ("FerrolabSLOErrorBudgetBurnFast", "critical", 6.0, 6 * 3600, 1800),
    ("FerrolabSLOErrorBudgetBurnSlow", "warning", 3.0, 86400, 2 * 3600),
    ("FerrolabSLOErrorBudgetBurnSlow", "warning", 1.0, 3 * 86400, 6 * 3600),
)

_BASE_PERIOD = 30 * 86400
_MIN_WINDOW = 300
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LABEL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_LABELS = frozenset({"le", "status", "slo", "severity"})
_KINDS = ("availability", "latency")
_SLO_FIELDS = ("name", "objective", "kind", "period", "threshold_seconds", "matchers")


def _parse_duration(text: str) -> int | None:
    """Seconds of a Prometheus duration such as ``30d`` or ``4w2d`` (``None`` when it is not one)."""
    parts = re.findall(r"(\d+)([smhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(n) * _DURATION_UNITS[u] for n, u in parts)


def _format_duration(seconds: int) -> str:
    """The Prometheus duration of a whole number of seconds: ``30d``, ``1h24m``, ``5m``."""
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"


def _percent(x: float) -> str:
    """A share as a percentage for messages: ``0.0015`` -> ``0.15``."""
    return f"{x * 100:.6g}"


def _number(x: float) -> str:
    """A float without exponent or float noise (``0.001``, ``14.4``, ``1``)."""
    s = format(decimal.Decimal(repr(float(x))), "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def _le_values(bound: float) -> list[str]:
    """The spellings of a bucket's ``le`` label: the Go client's and older ferrolab's (``0.000001``, ``1``), and
    prometheus_client's, which the exposition writes and Prometheus 3 normalizes to (``1e-06``, ``1.0``)."""
    return list(dict.fromkeys([_number(bound), repr(float(bound))]))


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclasses.dataclass(frozen=True)
class SLO:
    """A service level objective on the series that ferrolab exports.

    ``availability``: the share of calls counted by ``ferrolab_operations_total`` that do not end with
    ``status="error"`` (a GPU call rerun on the CPU, ``status="fallback"``, counts as good).
    ``latency``: the share of timed calls of ``ferrolab_operation_duration_seconds`` that take at most
    ``threshold_seconds``, which must be one of :data:`DURATION_BUCKETS` (Prometheus can only count calls under a
    bucket boundary).

    Both are evaluated per ``job`` over the series selected by ``matchers``.

    Parameters
    ----------
    name : str
        Identifies the SLO: the ``slo`` label of its recording rules and alerts (letters, digits, ``_.-``; at most
        64 characters).
    objective : float
        The target share of good calls, a fraction in [0.9, 1): ``0.999`` for 99.9%. (Below 90% even an outage,
        every call bad, would not burn the budget 6 times too fast, and the paging alerts could never fire.)
    kind : {"availability", "latency"}, optional
        Default ``"availability"``.
    period : str, optional
        The SLO period as a Prometheus duration, between ``1d`` and ``365d`` (default ``"30d"``).
    threshold_seconds : float, optional
        For ``kind="latency"`` only (and required there): a call is good when it takes at most this long.
    matchers : Mapping[str, str], optional
        Exact label matches that select the series, e.g. ``{"job": "api", "operation": "matmul"}``. The labels
        ``le``, ``status``, ``slo`` and ``severity`` are reserved.

    Raises
    ------
    TypeError
        A field has the wrong type.
    ValueError
        A field has a value out of range (the message names the field).

    Examples
    --------
    >>> import ferrolab.monitoring as monitoring
    >>> monitoring.SLO("api-availability", 0.999).period
    '30d'
    >>> monitoring.SLO("api-latency", 0.95, kind="latency", threshold_seconds=0.25).threshold_seconds
    0.25
    >>> monitoring.SLO("api-latency", 0.95, kind="latency", threshold_seconds=0.5)
    Traceback (most recent call last):
    ...
    ValueError: SLO(): field 'threshold_seconds' must be a bucket boundary of ferrolab_operation_duration_seconds \
(0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, \
0.025, 0.05, 0.1, 0.25, 1, 2.5, 10), got 0.5
    """

    name: str
    objective: float
    kind: str = "availability"
    period: str = "30d"
    threshold_seconds: float | None = None
    matchers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(field: str, what: str) -> str:
            return f"SLO(): field {field!r} {what}"

        if not isinstance(self.name, str):
            raise TypeError(bad("name", f"must be a str, not {type(self.name).__name__}"))
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(bad("name", f"must be 1-64 letters, digits or '_.-' starting with a letter or digit, "
                                 f"got {self.name!r}"))
        if isinstance(self.objective, bool) or not isinstance(self.objective, (int, float)):
            raise TypeError(bad("objective", f"must be a float, not {type(self.objective).__name__}"))
        if not 0.9 <= self.objective < 1:
            percent = 1 < self.objective < 100
            hint = f" (a fraction: {self.objective / 100:g} for {self.objective:g}%)" if percent else ""
            raise ValueError(bad("objective", f"must be in [0.9, 1), got {self.objective!r}{hint}"))
        object.__setattr__(self, "objective", float(self.objective))
        if not isinstance(self.kind, str):
            raise TypeError(bad("kind", f"must be a str, not {type(self.kind).__name__}"))
        if self.kind not in _KINDS:
            raise ValueError(bad("kind", f"must be 'availability' or 'latency', got {self.kind!r}"))
        if not isinstance(self.period, str):
            raise TypeError(bad("period", f"must be a str such as '30d', not {type(self.period).__name__}"))
        seconds = _parse_duration(self.period)
        if seconds is None or not 86400 <= seconds <= 365 * 86400:
            raise ValueError(bad("period", f"must be a Prometheus duration from 1d to 365d such as '30d' or '4w', "
                                 f"got {self.period!r}"))
        if self.kind == "availability":
            if self.threshold_seconds is not None:
                raise ValueError(bad("threshold_seconds", "is for kind='latency' only"))
        else:
            t = self.threshold_seconds
            if t is None:
                raise ValueError(bad("threshold_seconds", "is required for kind='latency'"))
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise TypeError(bad("threshold_seconds", f"must be a float, not {type(t).__name__}"))
            bound = next((b for b in DURATION_BUCKETS if math.isclose(t, b, rel_tol=1e-9)), None)
            if bound is None:
                raise ValueError(bad("threshold_seconds", "must be a bucket boundary of "
                                     "ferrolab_operation_duration_seconds "
                                     f"({', '.join(_number(b) for b in DURATION_BUCKETS)}), got {t!r}"))
            object.__setattr__(self, "threshold_seconds", bound)
        if not isinstance(self.matchers, Mapping):
            raise TypeError(bad("matchers", f"must be a mapping of label names to values, not "
                                f"{type(self.matchers).__name__}"))
        matchers = {}
        for key, value in self.matchers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(bad("matchers", f"must map str to str, got {key!r}: {value!r}"))
            if not _LABEL_RE.fullmatch(key) or key.startswith("__"):
                raise ValueError(bad("matchers", f"has an invalid label name {key!r}"))
            if key in _RESERVED_LABELS:
                raise ValueError(bad("matchers", f"cannot match the reserved label {key!r} "
                                     f"(reserved: {', '.join(sorted(_RESERVED_LABELS))})"))
            matchers[key] = value
        object.__setattr__(self, "matchers", dict(sorted(matchers.items())))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SLO:
        """An SLO from a mapping with the field names as keys (as :func:`load_slos` reads them).

        Examples
        --------
        >>> import ferrolab.monitoring as monitoring
        >>> monitoring.SLO.from_dict({"name": "api", "objective": 0.999, "matchers": {"job": "api"}}).matchers
        {'job': 'api'}
        >>> monitoring.SLO.from_dict({"name": "api", "objective": 0.999, "window": "30d"})
        Traceback (most recent call last):
        ...
        ValueError: SLO.from_dict(): unknown field 'window' (fields: name, objective, kind, period, \
threshold_seconds, matchers)
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"SLO.from_dict(): expected a mapping, not {type(data).__name__}")
        unknown = [k for k in data if k not in _SLO_FIELDS]
        if unknown:
            raise ValueError(f"SLO.from_dict(): unknown field {unknown[0]!r} (fields: {', '.join(_SLO_FIELDS)})")
        missing = [k for k in ("name", "objective") if k not in data]
        if missing:
            raise ValueError(f"SLO.from_dict(): missing field {missing[0]!r}")
        return cls(**data)

    @property
    def error_budget(self) -> float:
        """``1 - objective``, without float noise (``0.001`` for 99.9%)."""
        return float(1 - decimal.Decimal(repr(self.objective)))

    def __hash__(self) -> int:
        return hash((self.name, self.objective, self.kind, self.period, self.threshold_seconds,
                     tuple(self.matchers.items())))

    def windows(self) -> list[tuple[str, str, float, str, str]]:
        """The burn-rate alert conditions for this SLO's period: ``(alert, severity, burn rate, long, short)``.

        Examples
        --------
        >>> import ferrolab.monitoring as monitoring
        >>> [w[2:] for w in monitoring.SLO("api", 0.999, period="7d").windows()]
        [(14.4, '14m', '5m'), (6.0, '1h24m', '7m'), (3.0, '5h36m', '28m'), (1.0, '16h48m', '1h24m')]
        """
        period = _parse_duration(self.period)
        assert period is not None

        def scale(seconds: int) -> str:
            return _format_duration(max(_MIN_WINDOW, round(seconds * period / _BASE_PERIOD / 60) * 60))

        return [(a, sev, burn, scale(long), scale(short)) for a, sev, burn, long, short in BURN_RATE_ALERTS]


def _coerce_slos(func: str, slos: Iterable[SLO | Mapping[str, Any]] | None) -> list[SLO]:
    if slos is None:
        return []
    if isinstance(slos, (str, bytes, Mapping, SLO)) or not isinstance(slos, Iterable):
        raise TypeError(f"{func}: argument 'slos' must be a list of SLO or dict, not {type(slos).__name__}")
    out = []
    for i, item in enumerate(slos):
        if isinstance(item, SLO):
            out.append(item)
        elif isinstance(item, Mapping):
            try:
                out.append(SLO.from_dict(item))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{func}: argument 'slos'[{i}]: {exc}") from None
        else:
            raise TypeError(f"{func}: argument 'slos'[{i}] must be an SLO or a dict, not {type(item).__name__}")
    names = [s.name for s in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"{func}: argument 'slos' names {dup!r} twice (SLO names must be unique)")
    return out


def load_slos(path: str | os.PathLike[str]) -> list[SLO]:
    """Read SLOs from a JSON or YAML file (as ``ferrolab monitoring DIR --slo FILE`` does).

    The file holds a list of SLO mappings (the fields of :class:`SLO`), or a mapping with that list under
    ``slos``. Files named ``*.yml`` or ``*.yaml`` are read as YAML, which needs PyYAML; any other file as JSON.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    list of SLO

    Raises
    ------
    TypeError
        ``path`` is not a path, or an entry has a field of the wrong type.
    ValueError
        The file does not parse, its structure is wrong, an SLO is invalid (the message names the entry and the
        field), two SLOs have the same name, or the file is YAML and PyYAML is not installed.
    OSError
        The file cannot be read.

    Examples
    --------
    >>> import json, pathlib, tempfile, ferrolab.monitoring as monitoring
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     f = pathlib.Path(tmp) / "slos.json"
    ...     _ = f.write_text(json.dumps({"slos": [{"name": "api", "objective": 0.999}]}))
    ...     monitoring.load_slos(f)
    [SLO(name='api', objective=0.999, kind='availability', period='30d', threshold_seconds=None, matchers={})]
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_slos(): argument 'path' must be a str or os.PathLike, not {type(path).__name__}")
    p = pathlib.Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yml", ".yaml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"load_slos(): {p} is YAML, which needs PyYAML (pip install pyyaml); "
                             "or write the SLOs as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"load_slos(): {p} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"load_slos(): {p} is not valid JSON: {exc}") from None
    if isinstance(data, Mapping) and set(data) == {"slos"}:
        data = data["slos"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"load_slos(): {p} must hold a non-empty list of SLOs (or a mapping with it under 'slos')")
    out = []
    for i, item in enumerate(data):
        try:
            out.append(SLO.from_dict(item))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"load_slos(): {p}: SLO #{i + 1}: {exc}") from None
    return _coerce_slos(f"load_slos(): {p}:", out)


# --- SLO rules, tests and panel -------------------------------------------------------------------------------------


_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf"})


def _yaml(obj: Any, indent: int = 0) -> str:
    """A small YAML emitter for what the SLO files hold (dicts, lists, str, numbers); PyYAML is not a dependency.

    Strings are written as JSON strings (valid YAML) or, when they span lines, as literal blocks."""
    pad = " " * indent

    def scalar(v: Any, at: int) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return _number(v) if isinstance(v, float) else str(v)
        if isinstance(v, str):
            if "\n" in v:
                body = v[:-1] if v.endswith("\n") else v
                head = "|" if v.endswith("\n") else "|-"
                return head + "".join("\n" + " " * (at + 2) + line if line else "\n" for line in body.split("\n"))
            plain = re.fullmatch(r"[A-Za-z][A-Za-z0-9_:./-]*", v) and v.lower() not in _YAML_WORDS
            return v if plain else json.dumps(v)
        raise TypeError(type(v).__name__)

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else json.dumps(k)

    lines = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(v, (Mapping, list)) and v:
                lines.append(f"{pad}{key(k)}:\n{_yaml(v, indent + 2)}")
            elif isinstance(v, (Mapping, list)):
                lines.append(f"{pad}{key(k)}: {'{}' if isinstance(v, Mapping) else '[]'}")
            else:
                lines.append(f"{pad}{key(k)}: {scalar(v, indent)}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (Mapping, list)) and v:
                inner = _yaml(v, indent + 2)
                lines.append(f"{pad}- {inner[indent + 2:]}")
            else:
                lines.append(f"{pad}- {scalar(v, indent)}")
    return "\n".join(lines)


def _selector(slo: SLO, extra: str = "") -> str:
    parts = [f"{k}={_promql_string(v)}" for k, v in slo.matchers.items()]
    if extra:
        parts.insert(0, extra)
    return "{" + ", ".join(parts) + "}" if parts else ""


def _error_ratio_expr(slo: SLO, window: str) -> str:
    if slo.kind == "availability":
        sel_bad, sel_all = _selector(slo, 'status="error"'), _selector(slo)
        return (f"sum by (job) (rate(ferrolab_operations_total{sel_bad}[{window}]))\n"
                f"/\nsum by (job) (rate(ferrolab_operations_total{sel_all}[{window}]))\n")
    assert slo.threshold_seconds is not None
    le = "|".join(v.replace(".", "\\\\.").replace("+", "\\\\+") for v in _le_values(slo.threshold_seconds))
    sel_good, sel_all = _selector(slo, f'le=~"{le}"'), _selector(slo)
    return (f"1 - (\n  sum by (job) (rate(ferrolab_operation_duration_seconds_bucket{sel_good}[{window}]))\n"
            f"  /\n  sum by (job) (rate(ferrolab_operation_duration_seconds_count{sel_all}[{window}]))\n)\n")


def _ratio_record(window: str) -> str:
    return f"ferrolab:slo_errors_per_request:ratio_rate{window}"


def _describe(slo: SLO) -> str:
    what = ("of calls succeed" if slo.kind == "availability"
            else f"of calls take at most {_number(slo.threshold_seconds or 0)}s")
    where = f" for {', '.join(f'{k}={v}' for k, v in slo.matchers.items())}" if slo.matchers else ""
    percent = decimal.Decimal(repr(slo.objective)) * 100
    return f"{_number(float(percent))}% {what} over {slo.period}{where}"


def _alert_rules_of(slo: SLO) -> list[dict[str, Any]]:
    budget = _number(slo.error_budget)
    out = []
    windows = slo.windows()
    for alert in dict.fromkeys(w[0] for w in windows):
        conds = [w for w in windows if w[0] == alert]
        severity = conds[0][1]
        terms = [
            f"(\n  {_ratio_record(long)}{{slo=\"{slo.name}\"}} > ({_number(burn)} * {budget})\nand\n"
            f"  {_ratio_record(short)}{{slo=\"{slo.name}\"}} > ({_number(burn)} * {budget})\n)"
            for _, _, burn, long, short in conds
        ]
        expr = "\nor\n".join(terms) + "\n"
        how = ", or ".join(f"{'once' if burn == 1 else f'{_number(burn)} times'} over {long} and {short}"
                           for _, _, burn, long, short in conds)
        speed = "fast" if severity == "critical" else "slowly"
        out.append({
            "alert": alert,
            "expr": expr,
            "labels": {"severity": severity, "slo": slo.name},
            "annotations": {
                "summary": f"SLO {slo.name} burns its error budget {speed} (job {{{{ $labels.job }}}})",
                "description": f"Job {{{{ $labels.job }}}} spends the error budget of SLO {slo.name} "
                               f"({_describe(slo)}) faster than the rate that would use it up in {slo.period}: "
                               f"{how}.",
            },
        })
    return out


def _slo_group(slo: SLO) -> dict[str, Any]:
    windows = [w for _, _, _, long, short in slo.windows() for w in (short, long)]
    windows = sorted(set(windows) | {slo.period}, key=lambda w: _parse_duration(w) or 0)
    records: list[dict[str, Any]] = [
        {"record": _ratio_record(w), "expr": _error_ratio_expr(slo, w), "labels": {"slo": slo.name}} for w in windows
    ]
    records.append({
        "record": "ferrolab:slo_error_budget_remaining:ratio",
        "expr": f"1 - {_ratio_record(slo.period)}{{slo=\"{slo.name}\"}} / {_number(slo.error_budget)}\n",
        "labels": {"slo": slo.name},
    })
    return {"name": f"ferrolab-slo-{slo.name}", "rules": records + _alert_rules_of(slo)}


def slo_rules(slos: Iterable[SLO | Mapping[str, Any]]) -> str:
    """Recording and multi-window, multi-burn-rate alerting rules for ``slos`` (YAML text of ``ferrolab-slo.yml``).

    One rule group per SLO (``ferrolab-slo-NAME``): recording rules
    ``ferrolab:slo_errors_per_request:ratio_rateWINDOW{slo="NAME"}`` (the share of bad calls per ``job`` over each
    window the alerts use, and over the period), ``ferrolab:slo_error_budget_remaining:ratio{slo="NAME"}`` (1: all
    of the budget left, 0: spent, below 0: overspent), and two alerts read from them:

    * ``FerrolabSLOErrorBudgetBurnFast`` (``severity: critical``, page): 14.4x the sustainable burn rate over 1h and
      5m, or 6x over 6h and 30m;
    * ``FerrolabSLOErrorBudgetBurnSlow`` (``severity: warning``, ticket): 3x over 1d and 2h, or 1x over 3d and 6h.

    The windows are those of a 30-day period; see :data:`BURN_RATE_ALERTS` for other periods. A fast burn fires
    both alerts: an Alertmanager inhibit rule (source ``alertname=FerrolabSLOErrorBudgetBurnFast``, target
    ``alertname=FerrolabSLOErrorBudgetBurnSlow``, ``equal: [job, slo]``) keeps the ticket quiet while the page is on.

    Parameters
    ----------
    slos : iterable of SLO or dict
        The objectives (dicts as for :meth:`SLO.from_dict`); names must be unique.

    Returns
    -------
    str

    Examples
    --------
    >>> import ferrolab.monitoring as monitoring
    >>> text = monitoring.slo_rules([monitoring.SLO("api", 0.999)])
    >>> "record: ferrolab:slo_errors_per_request:ratio_rate5m" in text
    True
    >>> fast = text.split("- alert: FerrolabSLOErrorBudgetBurnFast")[1].split("labels:")[0]
    >>> print(fast.strip())
    expr: |
              (
                ferrolab:slo_errors_per_request:ratio_rate1h{slo="api"} > (14.4 * 0.001)
              and
                ferrolab:slo_errors_per_request:ratio_rate5m{slo="api"} > (14.4 * 0.001)
              )
              or
              (
                ferrolab:slo_errors_per_request:ratio_rate6h{slo="api"} > (6 * 0.001)
              and
                ferrolab:slo_errors_per_request:ratio_rate30m{slo="api"} > (6 * 0.001)
              )
    """
    items = _coerce_slos("slo_rules()", slos)
    if not items:
        raise ValueError("slo_rules(): argument 'slos' is empty")
    header = ("# SLO recording and burn-rate alerting rules generated by ferrolab (ferrolab.monitoring.slo_rules).\n"
              "# Multi-window, multi-burn-rate alerts after the Google SRE workbook; unit tests: "
              f"`promtool test rules {SLO_TESTS_FILE}`.\n")
    return header + _yaml({"groups": [_slo_group(s) for s in items]}) + "\n"


_TEST_RATE = 1000  # calls per minute in the generated unit tests
_TEST_EVAL = 5  # minutes between rule evaluations in the generated unit tests (series have a sample a minute)


def _counter(start: float, per_minute: float, minutes: int) -> str:
    return f"{_number(start)}+{_number(per_minute)}x{minutes}"


def _scenario_series(slo: SLO, job: str, bad: Sequence[tuple[float, int]], extra: Mapping[str, str] | None = None,
                     ) -> list[dict[str, str]]:
    """Input series of one job: ``bad`` is ``[(share of bad calls, minutes), ...]`` in order."""
    labels = {"job": job, "instance": "host:9464", "operation": "sum", "device": "cpu"}
    labels.update({k: v for k, v in slo.matchers.items()})
    labels["job"] = job
    labels.update(extra or {})

    def series(name: str, more: Mapping[str, str], shares: Sequence[tuple[float, int]]) -> dict[str, str]:
        lab = ",".join(f"{k}={json.dumps(v)}" for k, v in {**labels, **more}.items())
        values, total = [], 0.0
        for i, (share, minutes) in enumerate(shares):
            step = _TEST_RATE * share
            values.append(_counter(total if i == 0 else total + step, step, minutes - (0 if i == 0 else 1)))
            total += step * minutes
        return {"series": f"{name}{{{lab}}}", "values": " ".join(values)}

    if slo.kind == "availability":
        return [series("ferrolab_operations_total", {"status": "error"}, bad),
                series("ferrolab_operations_total", {"status": "success"}, [(1 - r, m) for r, m in bad])]
    assert slo.threshold_seconds is not None
    i = DURATION_BUCKETS.index(slo.threshold_seconds)
    # the spelling the exposition writes (prometheus_client's: ``1e-06``, ``1.0``)
    above = repr(DURATION_BUCKETS[i + 1]) if i + 1 < len(DURATION_BUCKETS) else "+Inf"
    return [series("ferrolab_operation_duration_seconds_bucket", {"le": repr(float(slo.threshold_seconds))},
                   [(1 - r, m) for r, m in bad]),
            series("ferrolab_operation_duration_seconds_bucket", {"le": above}, [(1.0, m) for _, m in bad]),
            series("ferrolab_operation_duration_seconds_count", {}, [(1.0, m) for _, m in bad])]


def _alerts_check(slo: SLO, minute: int, alert: str, job: str | None) -> dict[str, Any]:
    """A ``promql_expr_test`` on the ``ALERTS`` series: ``alert`` of ``slo`` fires for ``job`` (or for none).

    (An ``alert_rule_test`` would also see the alerts of the other SLOs, whose rules may select the same series.)"""
    severity = "critical" if alert.endswith("Fast") else "warning"
    selector = f'alertname="{alert}", alertstate="firing", slo="{slo.name}"'
    samples = [] if job is None else [
        {"labels": f'ALERTS{{{selector}, job={json.dumps(job)}, severity="{severity}"}}', "value": 1}]
    return {"expr": f"ALERTS{{{selector}}}", "eval_time": f"{minute}m", "exp_samples": samples}


def _slo_tests(slo: SLO) -> list[dict[str, Any]]:
    budget = slo.error_budget
    windows = slo.windows()
    minutes = [(_parse_duration(long) or 0) // 60 for *_, long, _ in windows]
    shorts = [(_parse_duration(short) or 0) // 60 for *_, short in windows]
    fast, slow = "FerrolabSLOErrorBudgetBurnFast", "FerrolabSLOErrorBudgetBurnSlow"
    job = slo.matchers.get("job", "app")
    # checks when the windows of the alerts in question are full, at rule evaluations (every _TEST_EVAL minutes)
    def up(minute: int) -> int:
        return -(-minute // _TEST_EVAL) * _TEST_EVAL

    t_page = up(max(shorts[:2]) + 5)
    t_ticket = up(shorts[2] + 5)
    t_end = up(shorts[3] + 5)
    what = "errors" if slo.kind == "availability" else f"calls slower than {_number(slo.threshold_seconds or 0)}s"
    fast_share = min(1.0, 20 * budget)  # 20x, or every call bad when 20x is more than all calls
    tests: list[dict[str, Any]] = []

    def case(name: str, bad: Sequence[tuple[float, int]], checks: Sequence[tuple[int, str, bool]],
             extra_series: Sequence[dict[str, str]] = ()) -> None:
        tests.append({
            "name": f"SLO {slo.name}: {name}",
            "interval": "1m",
            "input_series": _scenario_series(slo, job, bad) + list(extra_series),
            "promql_expr_test": [_alerts_check(slo, t, a, job if fires else None) for t, a, fires in checks],
        })

    burn = fast_share / budget
    case(f"{_percent(fast_share)}% {what} ({burn:.3g}x the budget) pages within minutes",
         [(fast_share, t_page)], [(5, fast, True), (5, slow, True), (t_page, fast, True)])
    # a fast burn that stopped: the long windows still show it, the short ones are clean, the page resolves
    stop = minutes[0]
    quiet_from = up(stop + max(shorts[:2]) + 5)
    case("a fast burn that stopped pages no more once the short windows are clean",
         [(fast_share, stop), (0.0, quiet_from - stop)],
         [(stop // _TEST_EVAL * _TEST_EVAL, fast, True), (quiet_from, fast, False)])
    case(f"{_percent(4 * budget)}% {what} (4x the budget) opens a ticket and does not page",
         [(4 * budget, t_ticket)], [(t_ticket, slow, True), (t_ticket, fast, False)])
    case(f"{_percent(1.5 * budget)}% {what} (1.5x the budget) opens a ticket and does not page",
         [(1.5 * budget, t_end)], [(t_end, slow, True), (t_end, fast, False)])
    # within budget: nothing fires; series that the matchers exclude burn fast beside it and must not count
    decoys = [s for k, v in slo.matchers.items()
              for s in _scenario_series(slo, job, [(1.0, t_end)], {k: v + "-other"})]
    within = 0.5 * budget
    case(f"{_percent(within)}% {what} (half the budget) fires nothing"
         + (", nor do series the matchers exclude" if decoys else ""),
         [(within, t_end)], [(t_end, fast, False), (t_end, slow, False)], decoys)
    tests[-1]["promql_expr_test"].append({
        "expr": f'(ferrolab:slo_error_budget_remaining:ratio{{slo="{slo.name}"}} > bool 0.49) '
                f'* (ferrolab:slo_error_budget_remaining:ratio{{slo="{slo.name}"}} < bool 0.51)',
        "eval_time": f"{t_end}m",
        "exp_samples": [{"labels": f'{{job={json.dumps(job)}, slo="{slo.name}"}}', "value": 1}],
    })
    return tests


def slo_rule_tests(slos: Iterable[SLO | Mapping[str, Any]]) -> str:
    """``promtool test rules`` unit tests of :func:`slo_rules` (YAML text of ``ferrolab-slo.test.yml``).

    For each SLO, with series that its matchers select: a fast burn (20 times the error budget, or every call
    bad) pages; a fast burn that stopped pages no more once the short windows are clean; 4x and 1.5x the budget
    open a ticket and do not page; half the budget fires nothing (series that the matchers exclude burn beside
    it) and leaves half the error budget. The tests load ``ferrolab-slo.yml`` from the same directory.

    Examples
    --------
    >>> import ferrolab.monitoring as monitoring
    >>> text = monitoring.slo_rule_tests([monitoring.SLO("api", 0.999)])
    >>> text.splitlines()[2:4]
    ['rule_files:', '  - ferrolab-slo.yml']
    """
    items = _coerce_slos("slo_rule_tests()", slos)
    if not items:
        raise ValueError("slo_rule_tests(): argument 'slos' is empty")
    header = (f"# Unit tests of {SLO_RULES_FILE} generated by ferrolab: `promtool test rules {SLO_TESTS_FILE}` "
              "(run from this directory).\n")
    doc = {"rule_files": [SLO_RULES_FILE], "evaluation_interval": f"{_TEST_EVAL}m",
           "tests": [t for s in items for t in _slo_tests(s)]}
    return header + "\n" + _yaml(doc) + "\n"


def _slo_panels(slos: Sequence[SLO], top: int, first_id: int) -> list[dict[str, Any]]:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    names = "|".join(re.escape(s.name).replace("\\", "\\\\") for s in slos)
    row = {"type": "row", "title": "Service level objectives", "id": first_id, "collapsed": False,
           "gridPos": {"h": 1, "w": 24, "x": 0, "y": top}, "panels": []}
    descriptions = "; ".join(f"{s.name}: {_describe(s)}" for s in slos)
    panel = {
        "type": "stat",
        "title": "Error budget remaining",
        "id": first_id + 1,
        "datasource": ds,
        "description": "Share of each SLO's error budget left over its period (1 = untouched, 0 = spent, negative "
                       f"= overspent), from ferrolab:slo_error_budget_remaining:ratio. {descriptions}.",
        "gridPos": {"h": 8, "w": 24, "x": 0, "y": top + 1},
        "targets": [{
            "refId": "A",
            "datasource": ds,
            "editorMode": "code",
            "expr": f'ferrolab:slo_error_budget_remaining:ratio{{slo=~"{names}", job=~"$job"}}',
            "legendFormat": "{{slo}} ({{job}})",
            "range": True,
            "instant": False,
        }],
        "fieldConfig": {
            "defaults": {
                "unit": "percentunit",
                "decimals": 1,
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                             {"color": "orange", "value": 0},
                                                             {"color": "green", "value": 0.25}]},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value_and_name",
            "wideLayout": True,
            "showPercentChange": False,
        },
    }
    return [row, panel]


def grafana_dashboard(slos: Iterable[SLO | Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The Grafana dashboard as a dict (a new copy on every call).

    With ``slos``, a row "Service level objectives" follows the others, with a panel of the error budget left
    per SLO and job (from the recording rules of :func:`slo_rules`, which must be loaded too).

    Parameters
    ----------
    slos : iterable of SLO or dict, optional
        As for :func:`slo_rules`.

    Examples
    --------
    >>> import ferrolab.monitoring as monitoring
    >>> d = monitoring.grafana_dashboard()
    >>> [v["name"] for v in d["templating"]["list"]]
    ['datasource', 'job', 'instance']
    >>> d = monitoring.grafana_dashboard([monitoring.SLO("api", 0.999)])
    >>> d["panels"][-1]["title"], d["panels"][-1]["targets"][0]["expr"]
    ('Error budget remaining', 'ferrolab:slo_error_budget_remaining:ratio{slo=~"api", job=~"$job"}')
    """
    items = _coerce_slos("grafana_dashboard()", slos)
    d = json.loads(_asset(DASHBOARD_FILE))
    if items:
        panels = d["panels"] + [q for p in d["panels"] for q in p.get("panels", [])]
        top = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
        d["panels"] = copy.deepcopy(d["panels"]) + _slo_panels(items, top, max(p["id"] for p in panels) + 1)
    return d


def write_monitoring(directory: str | os.PathLike[str], *, overwrite: bool = False,
                     slos: Iterable[SLO | Mapping[str, Any]] | None = None) -> list[pathlib.Path]:
    """Write the alerting rules, their unit tests and the dashboard into ``directory``; with ``slos``, also the SLO
    rules and their unit tests.

    The directory (and its parents) is created if needed. Nothing is written when one of the files already
    exists, unless ``overwrite=True``. Each file is written to a temporary file first and then renamed, so a
    reader never sees half a file.

    Parameters
    ----------
    directory : str or os.PathLike
        Where to write ``ferrolab-alerts.yml``, ``ferrolab-alerts.test.yml`` and ``ferrolab-dashboard.json``
        (and with ``slos``, ``ferrolab-slo.yml`` and ``ferrolab-slo.test.yml``).
    overwrite : bool, optional
        Replace files that exist (default False).
    slos : iterable of SLO or dict, optional
        Service level objectives: their recording and burn-rate alerting rules (:func:`slo_rules`), the unit
        tests of those (:func:`slo_rule_tests`) and an error-budget panel in the dashboard.

    Returns
    -------
    list of pathlib.Path
        The paths written, in the order above.

    Raises
    ------
    TypeError
        ``directory`` is not a path, ``overwrite`` is not a bool, or ``slos`` is not a list of SLOs or dicts.
    ValueError
        An SLO is invalid, or two have the same name.
    FileExistsError
        One of the files exists and ``overwrite`` is False (or ``directory`` is a file).

    Examples
    --------
    >>> import pathlib, tempfile, ferrolab.monitoring as monitoring
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = monitoring.write_monitoring(pathlib.Path(tmp) / "monitoring")
    ...     print([p.name for p in paths])
    ...     try:
    ...         monitoring.write_monitoring(pathlib.Path(tmp) / "monitoring")
    ...     except FileExistsError as e:
    ...         print("refused")
    ...     slos = [monitoring.SLO("api", 0.999),
    ...             monitoring.SLO("api-latency", 0.95, kind="latency", threshold_seconds=0.25)]
    ...     paths = monitoring.write_monitoring(pathlib.Path(tmp) / "slo", slos=slos)
    ...     print([p.name for p in paths][3:])
    ['ferrolab-alerts.yml', 'ferrolab-alerts.test.yml', 'ferrolab-dashboard.json']
    refused
    ['ferrolab-slo.yml', 'ferrolab-slo.test.yml']
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"write_monitoring(): argument 'directory' must be a str or os.PathLike, "
                        f"not {type(directory).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"write_monitoring(): argument 'overwrite' must be a bool, not {type(overwrite).__name__}")
    items = _coerce_slos("write_monitoring()", slos)
    root = pathlib.Path(directory)
    names = list(_FILES) + ([SLO_RULES_FILE, SLO_TESTS_FILE] if items else [])
    targets = [root / name for name in names]
    if not overwrite:
        existing = [str(p) for p in targets if p.exists() or p.is_symlink()]
        if existing:
            raise FileExistsError(
                f"write_monitoring(): {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''} "
                "(pass overwrite=True to replace)"
            )
    # everything is read or generated before touching the directory
    contents = [alert_rules(), alert_rule_tests(),
                _asset(DASHBOARD_FILE) if not items else json.dumps(grafana_dashboard(items), indent=2) + "\n"]
    if items:
        contents += [slo_rules(items), slo_rule_tests(items)]
    root.mkdir(parents=True, exist_ok=True)
    for path, text in zip(targets, contents, strict=True):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
    return targets
