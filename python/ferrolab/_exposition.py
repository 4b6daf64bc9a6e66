"""Exposition of metric objects written in Python, in every name-escaping scheme of prometheus_client 0.26.

ferrolab's own families render natively (``_core.exposition``). This module renders what the native side cannot
see: families yielded by custom collectors (for example prometheus_client's registry registered in
``fl.metrics.REGISTRY``), ``target_info``, and any exposition asked for with an escaping other than the default
``underscores`` (it needs the names as they were created, which ``collect()`` gives).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ._core import _go_float as go_float

UNDERSCORES = "underscores"
DOTS = "dots"
VALUES = "values"
ALLOWUTF8 = "allow-utf-8"
ESCAPINGS = (UNDERSCORES, DOTS, VALUES, ALLOWUTF8)

_LEGACY_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LEGACY_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# how the text format writes the OpenMetrics-only types
_TEXT_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_TEXT_SUFFIX = {"counter": "_total", "info": "_info"}


def _quote(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _legacy_rune(c: str, i: int, metric: bool) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or c == "_" or (metric and c == ":") or (i > 0 and "0" <= c <= "9")


def is_legacy(name: str, metric: bool) -> bool:
    """Whether ``name`` is in the legacy character set (a label name: also not reserved, ``__...``)."""
    if metric:
        return _LEGACY_METRIC.fullmatch(name) is not None
    return _LEGACY_LABEL.fullmatch(name) is not None and not name.startswith("__")


def escape_name(name: str, escaping: str = UNDERSCORES, metric: bool = True) -> str:
    """A metric (or label, ``metric=False``) name as ``escaping`` writes it.

    ``underscores`` and ``values`` leave legacy names alone; ``dots`` escapes every name (``_`` -> ``__``,
    ``.`` -> ``_dot_``); ``allow-utf-8`` quotes names outside the legacy character set.

    Examples
    --------
    >>> from ferrolab._exposition import escape_name
    >>> [escape_name("my.metric_x", e) for e in ("underscores", "dots", "values", "allow-utf-8")]
    ['my_metric_x', 'my_dot_metric__x', 'U__my_2e_metric__x', '"my.metric_x"']
    """
    if not name:
        return name
    legacy = is_legacy(name, metric)
    if escaping == ALLOWUTF8:
        return _quote(name) if legacy else f'"{_quote(name)}"'
    if legacy and escaping in (UNDERSCORES, VALUES):
        return name
    out = []
    if escaping == VALUES:
        out.append("U__")
    for i, c in enumerate(name):
        if c == "_" and escaping in (DOTS, VALUES):
            out.append("__")
        elif c == "." and escaping == DOTS:
            out.append("_dot_")
        elif _legacy_rune(c, i, metric):
            out.append(c)
        elif escaping == VALUES:
            out.append(f"_{ord(c):x}_" if not 0xD800 <= ord(c) <= 0xDFFF else "_FFFD_")
        elif escaping == DOTS:
            out.append("__")
        else:
            out.append("_")
    return "".join(out)


def check_escaping(escaping: str) -> str:
    if escaping not in ESCAPINGS:
        raise ValueError(f"exposition(): argument 'escaping' is {escaping!r}; expected one of {', '.join(ESCAPINGS)}")
    return escaping


def _labels(sample: Any, escaping: str, openmetrics: bool) -> str:
    """``{name="value",...}`` of a sample (labels sorted by name), with a quoted UTF-8 metric name inside the
    braces under ``allow-utf-8``."""
    parts = []
    inside = escaping == ALLOWUTF8 and not is_legacy(sample.name, True)
    if inside:
        parts.append(escape_name(sample.name, escaping))
    for k, v in sorted(sample.labels.items()):
        parts.append(f'{escape_name(k, escaping, metric=False)}="{_quote(str(v))}"')
    return "{" + ",".join(parts) + "}" if parts else ""


def _sample_name(sample: Any, escaping: str) -> str:
    if escaping == ALLOWUTF8 and not is_legacy(sample.name, True):
        return ""
    return escape_name(sample.name, escaping)


def _text(metrics: Iterable[Any], escaping: str) -> list[str]:
    out: list[str] = []
    for metric in metrics:
        name = metric.name + _TEXT_SUFFIX.get(metric.type, "")
        kind = _TEXT_TYPE.get(metric.type, metric.type)
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {escape_name(name, escaping)} {help_text}\n# TYPE {escape_name(name, escaping)} {kind}\n")
        # OpenMetrics-only samples go into gauge families of their own after the family
        apart: dict[str, list[str]] = {}
        for s in metric.samples:
            line = f"{_sample_name(s, escaping)}{_labels(s, escaping, False)} {go_float(s.value)}"
            if s.timestamp is not None:
                line += f" {int(float(s.timestamp) * 1000):d}"
            suffix = next((x for x in ("_created", "_gsum", "_gcount") if s.name == metric.name + x), None)
            if suffix is None:
                out.append(line + "\n")
            else:
                apart.setdefault(suffix, []).append(line + "\n")
        for suffix, lines in sorted(apart.items()):
            own = escape_name(metric.name + suffix, escaping)
            out.append(f"# HELP {own} {help_text}\n# TYPE {own} gauge\n")
            out.extend(lines)
    return out


def _exemplar(ex: Any) -> str:
    labels = ",".join(
        f'{escape_name(k, ALLOWUTF8, metric=False)}="{_quote(str(v))}"' for k, v in sorted(ex.labels.items())
    )
    text = f" # {{{labels}}} {go_float(ex.value)}"
    return text if ex.timestamp is None else f"{text} {ex.timestamp}"


def _openmetrics(metrics: Iterable[Any], escaping: str) -> list[str]:
    out: list[str] = []
    for metric in metrics:
        name = escape_name(metric.name, escaping)
        out.append(f"# HELP {name} {_quote(metric.documentation)}\n# TYPE {name} {metric.type}\n")
        if metric.unit:
            out.append(f"# UNIT {name} {metric.unit}\n")
        for s in metric.samples:
            line = f"{_sample_name(s, escaping)}{_labels(s, escaping, True)} {go_float(s.value)}"
            if s.timestamp is not None:
                line += f" {s.timestamp}"
            if getattr(s, "exemplar", None):
                line += _exemplar(s.exemplar)
            out.append(line + "\n")
    return out


def render(metrics: Iterable[Any], openmetrics: bool, escaping: str, full: bool) -> str:
    """The text format 0.0.4 (or OpenMetrics 1.0) of ``metrics`` (objects with ``name``, ``documentation``,
    ``type``, ``unit`` and ``samples``); ``full`` ends OpenMetrics with ``# EOF``."""
    check_escaping(escaping)
    if openmetrics:
        lines = _openmetrics(metrics, escaping)
        if full:
            lines.append("# EOF\n")
    else:
        lines = _text(metrics, escaping)
    return "".join(lines)
