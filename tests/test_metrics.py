"""fl.metrics: parity with prometheus_client, labels, registry, decorators, threads, exposition and built-in series.

Every test creates metrics under names of its own (``fltest_<word>_<n>``) and unregisters them when it ends, so the
tests are independent of each other and of the order they run in. The parity tests drive one random sequence of
operations on a ferrolab metric and on a prometheus_client metric in a private ``CollectorRegistry`` and compare
every exposed sample (name, labels, value; ``_created`` ignored).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ferrolab as fl
import numpy as np
import prometheus_client as pc
import pytest
from conftest import MISSING
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

M = fl.metrics
REG = M.REGISTRY

_seq = itertools.count()

# Bound on how long a test waits for its threads; never reached when the code is right.
WAIT = 60.0


def unique(word: str = "metric") -> str:
    """A metric name no other test uses (no single-letter tokens: promtool reads those as abbreviated units)."""
    return f"fltest_{word}_{next(_seq)}"


def drop(*metrics: Any) -> None:
    """Unregister ``metrics`` if they are still registered."""
    for m in metrics:
        try:
            REG.unregister(m)
        except KeyError:
            pass


@pytest.fixture
def make() -> Iterator[Callable[..., Any]]:
    """``make(M.Counter, name, doc, ...)``: creates a metric and unregisters it after the test."""
    made: list[Any] = []

    def factory(cls: Any, *args: Any, **kwargs: Any) -> Any:
        m = cls(*args, **kwargs)
        made.append(m)
        return m

    yield factory
    drop(*made)


# --- samples ------------------------------------------------------------------------------------------------------

Sample = tuple[str, tuple[tuple[str, Any], ...], float]


def _norm_labels(labels: dict[str, str]) -> tuple[tuple[str, Any], ...]:
    # both write le="1.0" (compared as numbers all the same)
    return tuple(sorted((k, float(v) if k == "le" else v) for k, v in labels.items()))


def _sample_key(s: Sample) -> tuple:
    return (s[0], s[1])


def fl_samples(family: str, text: str | None = None) -> list[Sample]:
    """Samples of ``family`` (the base name, as prometheus_client names families) in ferrolab's exposition."""
    text = M.exposition() if text is None else text
    out: list[Sample] = []
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            out += [(s.name, _norm_labels(s.labels), float(s.value)) for s in fam.samples]
    return sorted(out, key=_sample_key)


def pc_samples(registry: pc.CollectorRegistry, family: str) -> list[Sample]:
    out: list[Sample] = []
    for fam in registry.collect():
        if fam.name == family:
            out += [
                (s.name, _norm_labels(s.labels), float(s.value)) for s in fam.samples if not s.name.endswith("_created")
            ]
    return sorted(out, key=_sample_key)


def series_order(text: str, family: str) -> list[tuple[tuple[str, str], ...]]:
    """The label sets of ``family``'s series in the order an exposition lists them (``le`` left out)."""
    seen: list[tuple[tuple[str, str], ...]] = []
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            for s in fam.samples:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                if key not in seen:
                    seen.append(key)
    return seen


def assert_same_samples(mine: list[Sample], peer: list[Sample]) -> None:
    assert [_sample_key(s) for s in mine] == [_sample_key(s) for s in peer], "different series"
    for a, b in zip(mine, peer, strict=True):
        assert a[2] == b[2] or (math.isnan(a[2]) and math.isnan(b[2])), f"{a} != prometheus_client's {b}"


def value(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample value from ferrolab's REGISTRY, 0.0 when the sample does not exist (yet)."""
    v = REG.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


# --- parity with prometheus_client: random sequences of operations --------------------------------------------------

LABEL_VALUES = st.sampled_from(
    ["GET", "POST", "", " ", 'say "hi"', "back\\slash", "new\nline", "ünï©ødé 🚀", "a,b=c{}"]
)
AMOUNTS = st.one_of(st.integers(0, 1000).map(float), st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False))
SIGNED = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
OBSERVED = st.one_of(
    st.sampled_from([0.0, 0.005, 0.01, 0.1, 1.0, 2.5, 10.0, 11.0, -1.0]),
    st.floats(-1.0, 20.0, allow_nan=False, allow_infinity=False),
)
# With a negative lowest bound both leave out _sum (prometheus_client's rule, in every format).
BUCKETS = st.one_of(
    st.none(),
    st.lists(st.floats(-100, 100, allow_nan=False, allow_infinity=False), min_size=1, max_size=8, unique=True).map(
        sorted
    ),
)


def _mutations(kind: str):
    if kind == "counter":
        return st.tuples(st.just("inc"), AMOUNTS)
    if kind == "gauge":
        return st.one_of(
            st.tuples(st.just("inc"), SIGNED), st.tuples(st.just("dec"), SIGNED), st.tuples(st.just("set"), SIGNED)
        )
    return st.tuples(st.just("observe"), OBSERVED)


def _apply(metric: Any, op: str, arg: float) -> None:
    getattr(metric, op)(arg)


def _pair(kind: str, name: str, labelnames: tuple[str, ...], buckets: list[float] | None):
    registry = pc.CollectorRegistry()
    if kind == "counter":
        peer = pc.Counter(name, "Parity.", labelnames, registry=registry)
        return M.Counter(name, "Parity.", labelnames), peer, registry
    if kind == "gauge":
        return M.Gauge(name, "Parity.", labelnames), pc.Gauge(name, "Parity.", labelnames, registry=registry), registry
    kw = {} if buckets is None else {"buckets": buckets}
    return (
        M.Histogram(name, "Parity.", labelnames, **kw),
        pc.Histogram(name, "Parity.", labelnames, registry=registry, **kw),
        registry,
    )


@pytest.mark.parametrize("kind", ["counter", "gauge", "histogram"])
@given(data=st.data())
def test_parity_unlabelled(kind: str, data: st.DataObject) -> None:
    buckets = data.draw(BUCKETS) if kind == "histogram" else None
    ops = data.draw(st.lists(_mutations(kind), max_size=40))
    name = unique(kind)
    mine, peer, registry = _pair(kind, name, (), buckets)
    try:
        assert_same_samples(fl_samples(name), pc_samples(registry, name))  # the zero series before any update
        for i, (op, arg) in enumerate(ops):
            _apply(mine, op, arg)
            _apply(peer, op, arg)
            if i % 7 == 0:  # scraping in between must not change what follows
                assert_same_samples(fl_samples(name), pc_samples(registry, name))
        assert_same_samples(fl_samples(name), pc_samples(registry, name))
    finally:
        drop(mine)


@pytest.mark.parametrize("kind", ["counter", "gauge", "histogram"])
@given(data=st.data())
def test_parity_labelled(kind: str, data: st.DataObject) -> None:
    buckets = data.draw(BUCKETS) if kind == "histogram" else None
    labelnames = ("method", "code")
    step = st.one_of(
        st.tuples(
            st.just("update"),
            st.tuples(LABEL_VALUES, LABEL_VALUES),
            st.sampled_from(["position", "name", "reversed_names"]),
            _mutations(kind),
        ),
        st.tuples(st.just("remove"), st.integers(0, 1000)),
        st.tuples(st.just("clear")),
    )
    ops = data.draw(st.lists(step, max_size=40))
    name = unique(kind)
    mine, peer, registry = _pair(kind, name, labelnames, buckets)
    live: list[tuple[str, str]] = []  # label sets that exist, in creation order
    try:
        for op in ops:
            if op[0] == "update":
                _, values, how, (mop, arg) = op
                if how == "position":
                    child = mine.labels(*values)
                elif how == "name":
                    child = mine.labels(method=values[0], code=values[1])
                else:
                    child = mine.labels(code=values[1], method=values[0])
                _apply(child, mop, arg)
                _apply(peer.labels(*values), mop, arg)
                if values not in live:
                    live.append(values)
            elif op[0] == "remove":
                if live:  # removing an absent label set differs (see test_remove_of_an_absent_label_set)
                    values = live.pop(op[1] % len(live))
                    mine.remove(*values)
                    peer.remove(*values)
            else:
                mine.clear()
                peer.clear()
                live.clear()
        assert_same_samples(fl_samples(name), pc_samples(registry, name))
        assert {s[1] for s in fl_samples(name) if not s[0].endswith(("_bucket",))} == {
            (("code", c), ("method", m)) for m, c in live
        }
        # the series in the order they were made, a removed and remade one last, as prometheus_client lists them
        order = series_order(M.exposition(), name)
        assert order == series_order(pc.generate_latest(registry).decode(), name)
        assert order == [(("code", c), ("method", m)) for m, c in live]
    finally:
        drop(mine)


def test_parity_of_exposed_values_and_get_sample_value(make) -> None:
    name = unique("requests")
    c = make(M.Counter, name, "Requests.", ["route"])
    c.labels("/a").inc(2.5)
    c.labels(route="/b").inc()
    assert REG.get_sample_value(f"{name}_total", {"route": "/a"}) == 2.5
    assert REG.get_sample_value(f"{name}_total", {"route": "/b"}) == 1.0
    assert REG.get_sample_value(f"{name}_total", {"route": "/c"}) is None
    assert REG.get_sample_value(name, {"route": "/a"}) is None  # a counter's series is <name>_total
    text = M.exposition()
    assert f"# TYPE {name}_total counter" in text
    assert f'{name}_total{{route="/a"}} 2.5' in text


# --- names -----------------------------------------------------------------------------------------------------------

NAME_CASES = [
    # (kind, name, namespace, subsystem, unit)
    ("counter", "jobs", "", "", ""),
    ("counter", "jobs_total", "", "", ""),
    ("counter", "jobs", "app", "", ""),
    ("counter", "jobs", "app", "worker", ""),
    ("counter", "jobs", "", "worker", ""),
    ("counter", "payload", "app", "", "bytes"),
    ("counter", "payload_bytes", "app", "", "bytes"),
    ("counter", "payload_total", "app", "", "bytes"),
    ("gauge", "queue", "app", "worker", "items"),
    ("gauge", "queue_total", "", "", ""),
    ("histogram", "latency", "app", "http", "seconds"),
    ("histogram", "latency_seconds", "", "", "seconds"),
]


@pytest.mark.parametrize(("kind", "name", "namespace", "subsystem", "unit"), NAME_CASES)
def test_name_joining_like_prometheus_client(kind, name, namespace, subsystem, unit) -> None:
    tag = unique("names")
    namespace = f"{tag}_{namespace}" if namespace else tag  # unique per test, still exercising the joining
    registry = pc.CollectorRegistry()
    cls_fl = {"counter": M.Counter, "gauge": M.Gauge, "histogram": M.Histogram}[kind]
    cls_pc = {"counter": pc.Counter, "gauge": pc.Gauge, "histogram": pc.Histogram}[kind]
    kw = {"namespace": namespace, "subsystem": subsystem, "unit": unit}
    mine = cls_fl(name, "Names.", **kw)
    try:
        peer = cls_pc(name, "Names.", registry=registry, **kw)
        assert mine.name == peer._name
        fam = peer._name
        assert_same_samples(fl_samples(fam), pc_samples(registry, fam))
        assert mine.documentation == "Names."
        assert mine.labelnames == ()
    finally:
        drop(mine)


@pytest.mark.parametrize("cls", [M.Counter, M.Gauge, M.Histogram])
def test_an_empty_metric_name_is_a_value_error(cls) -> None:
    with pytest.raises(ValueError):
        cls("", "Bad.")


@pytest.mark.parametrize("cls", [M.Counter, M.Gauge, M.Histogram])
@pytest.mark.parametrize(
    ("name", "kw", "written"),
    [
        ("1abc", {}, "_abc"),
        ("has-dash", {}, "has_dash"),
        ("has.dot", {}, "has_dot"),
        ("\u00fcnicode", {}, "_nicode"),
        ("okname", {"namespace": "9ns"}, "_ns_okname"),
        ("okname", {"unit": "per cent"}, "okname_per_cent"),
    ],
    ids=["digit", "dash", "dot", "unicode", "namespace", "unit"],
)
def test_utf8_metric_names_are_written_with_underscores(cls, name, kw, written) -> None:
    # as prometheus_client 0.26 (UTF-8 names, the text format's default `underscores` escaping)
    reg = M.CollectorRegistry()
    m = cls(name, "UTF-8.", registry=reg, **kw)
    text = M.exposition(reg)
    assert f"# TYPE {written}" in text, text
    reg.unregister(m)


@pytest.mark.parametrize("cls", [M.Counter, M.Gauge, M.Histogram])
@pytest.mark.parametrize(
    "labelnames",
    [["__reserved"], ["1abc"], ["has-dash"], [""], ["ü"], ["ok", "ok"], ["with space"]],
)
def test_invalid_label_names_are_value_errors(cls, labelnames) -> None:
    with pytest.raises(ValueError):
        cls(unique("labels"), "Bad.", labelnames)


def test_histogram_may_not_use_le_and_labelnames_must_be_a_sequence_of_str() -> None:
    with pytest.raises(ValueError):
        M.Histogram(unique("labels"), "Bad.", ["le"])
    with pytest.raises(TypeError):
        M.Counter(unique("labels"), "Bad.", "route")  # a str is not a sequence of label names
    with pytest.raises(TypeError):
        M.Counter(unique("labels"), "Bad.", [1, 2])


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda r: M.Counter(3, "Bad.", registry=r), r"Counter\(\): argument 'name' must be a str, got int"),
        (lambda r: M.Gauge(unique("a"), None, registry=r),
         r"Gauge\(\): argument 'documentation' must be a str, got NoneType"),
        (lambda r: M.Summary(unique("a"), "B.", namespace=1, registry=r),
         r"Summary\(\): argument 'namespace' must be a str"),
        (lambda r: M.Info(unique("a"), "B.", subsystem=[], registry=r),
         r"Info\(\): argument 'subsystem' must be a str"),
        (lambda r: M.Enum(unique("a"), "B.", unit=b"s", registry=r),
         r"Enum\(\): argument 'unit' must be a str, got bytes"),
        (lambda r: M.Gauge(unique("a"), "B.", multiprocess_mode=0, registry=r),
         r"Gauge\(\): argument 'multiprocess_mode'"),
        (lambda r: M.Histogram(unique("a"), "B.", buckets="ab", registry=r),
         r"Histogram\(\): argument 'buckets' must be a sequence of real numbers, got str"),
        (lambda r: M.Histogram(unique("a"), "B.", buckets=5, registry=r), r"argument 'buckets' .* got int"),
        (lambda r: M.Histogram(unique("a"), "B.", buckets=[1.0, "x"], registry=r),
         r"Histogram\(\): argument 'buckets' must be a sequence of real numbers: item 1 is of type str"),
        (lambda r: M.Enum(unique("a"), "B.", states=["on", 3], registry=r),
         r"Enum\(\): argument 'states' must be a sequence of str: item 1 is of type int"),
        (lambda r: M.Counter(unique("a"), "B.", registry=r).inc("1"),
         r"inc\(\): argument 'amount' must be a real number, got str"),
        (lambda r: M.Gauge(unique("a"), "B.", registry=r).inc(None),
         r"inc\(\): argument 'amount' must be a real number"),
        (lambda r: M.Gauge(unique("a"), "B.", registry=r).dec("1"),
         r"dec\(\): argument 'amount' must be a real number"),
        (lambda r: M.Gauge(unique("a"), "B.", registry=r).set([1]),
         r"set\(\): argument 'value' must be a real number, got list"),
        (lambda r: M.Histogram(unique("a"), "B.", registry=r).observe("x"),
         r"observe\(\): argument 'amount' must be a real"),
        (lambda r: M.Summary(unique("a"), "B.", registry=r).observe(None),
         r"observe\(\): argument 'amount' must be a real"),
        (lambda r: M.Enum(unique("a"), "B.", states=["x"], registry=r).state(3),
         r"state\(\): argument 'state' must be a str, got int"),
        (lambda r: M.Info(unique("a"), "B.", registry=r).info([("k", "v")]),
         r"info\(\): argument 'val' must be a dict of str to str, got list"),
    ],
)
def test_arguments_of_another_type_name_the_call_and_the_argument(call, message) -> None:
    with pytest.raises(TypeError, match=message):
        call(M.CollectorRegistry())


def test_values_of_numpy_types_and_too_large_ints() -> None:
    r = M.CollectorRegistry()
    cn, gn, hn = unique("c"), unique("g"), unique("h")
    c, g = M.Counter(cn, "C.", registry=r), M.Gauge(gn, "G.", registry=r)
    h = M.Histogram(hn, "H.", buckets=np.array([0.5, 2.0]), registry=r)
    c.inc(np.float32(2.0))
    g.set(np.int64(3))
    h.observe(np.float64(1.0))
    assert r.get_sample_value(f"{cn}_total") == 2.0 and r.get_sample_value(gn) == 3.0
    assert h._upper_bounds == [0.5, 2.0, math.inf]
    assert r.get_sample_value(f"{hn}_bucket", {"le": "2.0"}) == 1.0
    with pytest.raises(OverflowError, match=r"set\(\): argument 'value' is too large"):
        g.set(10**400)
    with pytest.raises(TypeError, match=r"Histogram\(\): argument 'buckets' .*: item 1 is too large"):
        M.Histogram(unique("h"), "H.", buckets=[1.0, 10**400], registry=r)

    class Odd:
        def __float__(self):
            raise KeyError("from __float__")

    with pytest.raises(KeyError, match="from __float__"):  # the object's own error is passed on as it is
        g.set(Odd())


# label tuples whose values, written one after the other, give the same bytes ("GET" / "user10" / "2:ab3:x")
CONCATENATING = [("GET", ""), ("", "GET"), ("user1", "0"), ("user", "10"), ("2:ab", "3:x"), ("2:ab3:x", "")]


@pytest.mark.parametrize("kind", ["counter", "gauge", "histogram", "summary"])
def test_label_values_that_concatenate_alike_are_separate_series(kind) -> None:
    r = M.CollectorRegistry()
    name = unique(kind)
    cls = {"counter": M.Counter, "gauge": M.Gauge, "histogram": M.Histogram, "summary": M.Summary}[kind]
    m = cls(name, "Doc.", ["a", "b"], registry=r)
    peer_reg = pc.CollectorRegistry()
    peer = getattr(pc, cls.__name__)(name, "Doc.", ["a", "b"], registry=peer_reg)
    for k, values in enumerate(CONCATENATING):
        for target in (m, peer):
            child = target.labels(*values)
            child.observe(k + 0.5) if kind in ("histogram", "summary") else child.inc(k + 1)
    sample = {"counter": f"{name}_total", "gauge": name, "histogram": f"{name}_sum", "summary": f"{name}_sum"}[kind]
    for k, (a, b) in enumerate(CONCATENATING):
        expected = peer_reg.get_sample_value(sample, {"a": a, "b": b})
        assert expected == (k + 0.5 if kind in ("histogram", "summary") else k + 1)
        assert r.get_sample_value(sample, {"a": a, "b": b}) == expected
    text = M.exposition(r)
    assert 'a="2:ab",b="3:x"' in text and 'a="",b="GET"' in text  # the values as given
    m.remove("user", "10")
    assert r.get_sample_value(sample, {"a": "user", "b": "10"}) is None
    assert r.get_sample_value(sample, {"a": "user1", "b": "0"}) is not None


def test_enum_label_values_that_concatenate_alike_are_separate_series() -> None:
    r = M.CollectorRegistry()
    name = unique("enum")
    e = M.Enum(name, "Doc.", ["a"], states=["on", "xon"], registry=r)
    e.labels("").state("xon")  # the series ("", "xon") and ("x", "on") must not meet
    e.labels("x").state("on")
    assert r.get_sample_value(name, {"a": "", name: "xon"}) == 1.0
    assert r.get_sample_value(name, {"a": "", name: "on"}) == 0.0
    assert r.get_sample_value(name, {"a": "x", name: "on"}) == 1.0
    assert r.get_sample_value(name, {"a": "x", name: "xon"}) == 0.0
    # each series' states in the order given, as prometheus_client lists them
    lines = [ln for ln in M.exposition(r).splitlines() if ln.startswith(name + "{")]
    assert lines == [f'{name}{{a="",{name}="on"}} 0.0', f'{name}{{a="",{name}="xon"}} 1.0',
                     f'{name}{{a="x",{name}="on"}} 1.0', f'{name}{{a="x",{name}="xon"}} 0.0']


def test_le_is_a_valid_label_for_counters_and_gauges(make) -> None:
    name = unique("bounds")
    g = make(M.Gauge, name, "Le.", ["le"])
    g.labels("0.5").set(2)
    assert REG.get_sample_value(name, {"le": "0.5"}) == 2.0


@pytest.mark.parametrize(
    "buckets",
    [[], [2.0, 1.0], [1.0, 1.0], [float("nan")], [1.0, float("nan")], [float("inf")], [0.5, 0.25, float("inf")]],
)
def test_invalid_buckets_are_value_errors(buckets) -> None:
    with pytest.raises(ValueError):
        M.Histogram(unique("latency"), "Bad.", buckets=buckets)


def test_buckets_with_explicit_inf_and_integers(make) -> None:
    name = unique("latency")
    h = make(M.Histogram, name, "Buckets.", buckets=[1, 2, float("inf")])
    h.observe(1.5)
    h.observe(5)
    les = [s for s in fl_samples(name) if s[0] == f"{name}_bucket"]
    assert [(dict(s[1])["le"], s[2]) for s in les] == [(1.0, 0.0), (2.0, 1.0), (math.inf, 2.0)]


# --- labels() --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [M.Counter, M.Gauge, M.Histogram])
def test_labels_by_position_and_name_return_the_same_child(make, cls) -> None:
    m = make(cls, unique("children"), "Children.", ["method", "code"])
    a = m.labels("GET", "200")
    assert m.labels("GET", "200") is a
    assert m.labels(method="GET", code="200") is a
    assert m.labels(code="200", method="GET") is a
    assert m.labels("GET", 200) is a  # values are str()-ed, as in prometheus_client
    assert m.labels("GET", "500") is not a
    assert m.labels("200", "GET") is not a


@pytest.mark.parametrize("cls", [M.Counter, M.Gauge, M.Histogram])
def test_labels_errors(make, cls) -> None:
    m = make(cls, unique("children"), "Children.", ["method", "code"])
    with pytest.raises(ValueError):
        m.labels("GET")  # too few
    with pytest.raises(ValueError):
        m.labels("GET", "200", "extra")  # too many
    with pytest.raises(ValueError):
        m.labels()
    with pytest.raises(ValueError):
        m.labels(method="GET")  # a name missing
    with pytest.raises(ValueError):
        m.labels(method="GET", status="200")  # an unknown name
    with pytest.raises(ValueError):
        m.labels(method="GET", code="200", extra="x")
    with pytest.raises(ValueError):
        m.labels("GET", code="200")  # mixing
    with pytest.raises(ValueError):
        m.labels("GET", "200").labels("GET", "200")  # a child has no labels left
    plain = make(cls, unique("plain"), "No labels.")
    with pytest.raises(ValueError):
        plain.labels("x")
    with pytest.raises(ValueError):
        plain.labels(x="y")


def timed(metric: Any) -> None:
    # as in prometheus_client, a labelled metric's timer fails when its block ends without labels(...) on it
    with metric.time():
        pass


def test_updates_on_a_labelled_parent_are_value_errors(make) -> None:
    c = make(M.Counter, unique("parent"), "Parent.", ["route"])
    g = make(M.Gauge, unique("parent"), "Parent.", ["route"])
    h = make(M.Histogram, unique("parent"), "Parent.", ["route"])
    for call in (
        c.inc,
        lambda: c.inc(2),
        c.reset,
        c.count_exceptions,
        g.inc,
        g.dec,
        lambda: g.set(1),
        g.set_to_current_time,
        g.track_inprogress,
        lambda: timed(g),
        lambda: h.observe(1),
        lambda: timed(h),
    ):
        with pytest.raises(ValueError):
            call()


def test_counter_rejects_negative_amounts(make) -> None:
    name = unique("counted")
    c = make(M.Counter, name, "Negative.", ["kind"])
    c.labels("x").inc(3)
    with pytest.raises(ValueError):
        c.labels("x").inc(-1)
    with pytest.raises(ValueError):
        c.labels("x").inc(-1e-300)
    c.labels("x").inc(0)
    plain = make(M.Counter, unique("counted"), "Negative.")
    with pytest.raises(ValueError):
        plain.inc(-0.5)
    assert value(f"{name}_total", {"kind": "x"}) == 3.0


def test_counter_reset_and_gauge_set_to_current_time(make) -> None:
    cname, gname = unique("resettable"), unique("stamp")
    c = make(M.Counter, cname, "Reset.")
    c.inc(5)
    c.reset()
    assert value(f"{cname}_total") == 0.0
    g = make(M.Gauge, gname, "Time.")
    import time

    before = time.time()
    g.set_to_current_time()
    after = time.time()
    assert before - 1 <= value(gname) <= after + 1


# --- remove / clear --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [M.Counter, M.Gauge, M.Histogram])
def test_remove_and_clear(make, cls) -> None:
    name = unique("removable")
    m = make(cls, name, "Remove.", ["route"])
    update = (lambda ch: ch.observe(1.0)) if cls is M.Histogram else (lambda ch: ch.inc())
    for r in ("a", "b", "c"):
        update(m.labels(r))
    old = m.labels("a")
    m.remove("a")
    assert {dict(s[1])["route"] for s in fl_samples(name)} == {"b", "c"}
    fresh = m.labels("a")
    assert fresh is not old  # a removed child is forgotten, as in prometheus_client
    update(fresh)
    assert {dict(s[1])["route"] for s in fl_samples(name)} == {"a", "b", "c"}
    with pytest.raises(ValueError):
        m.remove()  # wrong number of values
    with pytest.raises(ValueError):
        m.remove("a", "b")
    m.clear()
    assert fl_samples(name) == []
    update(m.labels("b"))  # usable after clear()
    assert {dict(s[1])["route"] for s in fl_samples(name)} == {"b"}


def test_remove_on_an_unlabelled_metric_is_a_value_error(make) -> None:
    c = make(M.Counter, unique("plain"), "No labels.")
    with pytest.raises(ValueError):
        c.remove()


def test_remove_of_an_absent_label_set(make) -> None:
    c = make(M.Counter, unique("removable"), "Remove.", ["route"])
    c.remove("never-created")


@pytest.mark.parametrize("cls", [M.Counter, M.Gauge, M.Histogram])
def test_clear_on_an_unlabelled_metric_keeps_its_series(make, cls) -> None:
    name = unique("plain")
    m = make(cls, name, "No labels.")
    update = (lambda: m.observe(1.0)) if cls is M.Histogram else m.inc
    update()
    m.clear()
    update()
    assert fl_samples(name), "the metric vanished from the exposition"


# --- registry ---------------------------------------------------------------------------------------------------------


def test_unregister_and_recreate(make) -> None:
    name = unique("registered")
    c = M.Counter(name, "Registry.", ["route"])
    c.labels("a").inc()
    with pytest.raises(ValueError):
        M.Counter(name, "Registry.", ["route"])  # duplicate name while registered
    with pytest.raises(ValueError):
        M.Gauge(f"{name}_total", "Registry.")  # the counter's series name is taken too
    REG.unregister(c)
    assert fl_samples(name) == []
    with pytest.raises(KeyError):
        REG.unregister(c)
    again = make(M.Counter, name, "Registry.", ["route"])
    assert fl_samples(name) == []  # a new family, no series from the old one
    again.labels("a").inc(2)
    assert value(f"{name}_total", {"route": "a"}) == 2.0
    c.labels("a").inc(100)  # the unregistered one still works, unseen
    assert value(f"{name}_total", {"route": "a"}) == 2.0


@pytest.mark.parametrize("change", ["labelnames", "documentation"])
def test_recreate_after_unregister_with_other_labels_or_help(change) -> None:
    name = unique("registered")
    c = M.Counter(name, "First.", ["route"])
    REG.unregister(c)
    if change == "labelnames":
        again = M.Counter(name, "First.", ["route", "method"])
    else:
        again = M.Counter(name, "Second help.", ["route"])
    drop(again)


def test_colliding_series_names_are_rejected(make) -> None:
    name = unique("latency_seconds")
    make(M.Histogram, name, "Histogram.")
    with pytest.raises(ValueError):
        make(M.Gauge, f"{name}_count", "Collides with the histogram's count.")


def test_builtin_names_are_taken(make) -> None:
    prefix = M.settings()["prefix"]
    with pytest.raises(ValueError):
        M.Counter(f"{prefix}_operations", "Collides with the built-in counter.")


def test_registry_none_is_not_exposed(make) -> None:
    name = unique("private")
    hidden = M.Counter(name, "Unregistered.", ["route"], registry=None)
    hidden.labels("a").inc(7)
    assert value(f"{name}_total", {"route": "a"}) == 0.0
    assert name not in M.exposition()
    with pytest.raises(KeyError):
        REG.unregister(hidden)
    shown = make(M.Counter, name, "Registered.", ["route"])  # the name is still free in REGISTRY
    shown.labels("a").inc()
    assert value(f"{name}_total", {"route": "a"}) == 1.0
    with pytest.raises(TypeError):
        M.Counter(unique("private"), "Bad registry.", registry=pc.CollectorRegistry())


def test_unregister_of_what_is_not_registered_is_a_key_error() -> None:
    # as prometheus_client: unregistering an object the registry does not hold is a KeyError
    with pytest.raises(KeyError, match="not registered"):
        REG.unregister("not a metric")
    with pytest.raises(KeyError, match="not registered"):
        REG.unregister(pc.Counter(unique("peer"), "Peer.", registry=None))


def test_register_wants_a_metric_or_a_collector() -> None:
    with pytest.raises(TypeError, match="collect"):
        REG.register("not a metric")


def test_repr_and_attributes(make) -> None:
    name = unique("described")
    h = make(M.Histogram, name, "Described.", ["route"])
    assert name in repr(h)
    assert h.name == name
    assert h.documentation == "Described."
    assert h.labelnames == ("route",)
    assert repr(REG)


# --- time() / track_inprogress() / count_exceptions() ---------------------------------------------------------------


def test_histogram_time_context_manager_and_decorators(make) -> None:
    name = unique("duration_seconds")
    h = make(M.Histogram, name, "Time.")

    with h.time():
        pass

    @h.time()
    def work(x: int) -> int:
        """Doubles."""
        return 2 * x

    @h.time()
    async def awork(x: int) -> int:
        await asyncio.sleep(0)
        return 3 * x

    @h.time()
    def fails() -> None:
        raise RuntimeError("boom")

    assert work(4) == 8
    assert work.__name__ == "work" and work.__doc__ == "Doubles."
    assert inspect.iscoroutinefunction(awork)
    assert asyncio.run(awork(4)) == 12
    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert value(f"{name}_count") == 4.0  # a failing call is timed too
    assert value(f"{name}_sum") >= 0.0
    assert value(f"{name}_bucket", {"le": "+Inf"}) == 4.0


def test_histogram_time_on_a_child_and_async_overlap(make) -> None:
    name = unique("duration_seconds")
    h = make(M.Histogram, name, "Time.", ["route"])

    @h.labels("slow").time()
    async def handler(gate: asyncio.Event) -> None:
        await gate.wait()

    async def main() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.ensure_future(handler(gate)) for _ in range(5)]
        await asyncio.sleep(0)
        assert value(f"{name}_count", {"route": "slow"}) == 0.0  # still running
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert value(f"{name}_count", {"route": "slow"}) == 5.0


def test_gauge_time_sets_the_duration(make) -> None:
    name = unique("last_run_seconds")
    g = make(M.Gauge, name, "Time.")
    g.set(-1)
    with g.time():
        pass
    assert value(name) >= 0.0

    @g.time()
    async def job() -> str:
        return "done"

    g.set(-1)
    assert asyncio.run(job()) == "done"
    assert value(name) >= 0.0


def test_track_inprogress_sync_and_async(make) -> None:
    name = unique("inflight")
    g = make(M.Gauge, name, "In progress.")
    seen: list[float] = []

    with g.track_inprogress():
        seen.append(value(name))
        with g.track_inprogress():
            seen.append(value(name))
    seen.append(value(name))

    @g.track_inprogress()
    def sync_job() -> float:
        return value(name)

    @g.track_inprogress()
    def failing_job() -> None:
        raise KeyError("x")

    @g.track_inprogress()
    async def async_job(started: asyncio.Event, gate: asyncio.Event) -> None:
        started.set()
        await gate.wait()

    assert sync_job() == 1.0
    with pytest.raises(KeyError):
        failing_job()
    assert value(name) == 0.0

    async def main() -> None:
        gate = asyncio.Event()
        starts = [asyncio.Event() for _ in range(3)]
        tasks = [asyncio.ensure_future(async_job(s, gate)) for s in starts]
        for s in starts:
            await s.wait()
        seen.append(value(name))  # all three are inside
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    seen.append(value(name))
    assert seen == [1.0, 2.0, 0.0, 3.0, 0.0]


def test_count_exceptions_sync_and_async(make) -> None:
    name = unique("failures")
    c = make(M.Counter, name, "Exceptions.")

    with c.count_exceptions():
        pass
    with pytest.raises(ValueError):
        with c.count_exceptions():
            raise ValueError("counted")
    with pytest.raises(KeyError):
        with c.count_exceptions(ValueError):
            raise KeyError("not counted: another type")
    with pytest.raises(KeyError):
        with c.count_exceptions((KeyError, TypeError)):
            raise KeyError("counted: in the tuple")
    with pytest.raises(KeyboardInterrupt):
        with c.count_exceptions():  # the default is Exception, which KeyboardInterrupt is not
            raise KeyboardInterrupt
    assert value(f"{name}_total") == 2.0

    @c.count_exceptions(ZeroDivisionError)
    def divide(a: float, b: float) -> float:
        return a / b

    @c.count_exceptions()
    async def adivide(a: float, b: float) -> float:
        await asyncio.sleep(0)
        return a / b

    assert divide(1, 2) == 0.5
    with pytest.raises(ZeroDivisionError):
        divide(1, 0)
    assert asyncio.run(adivide(1, 4)) == 0.25
    with pytest.raises(ZeroDivisionError):
        asyncio.run(adivide(1, 0))
    assert divide.__name__ == "divide"
    assert value(f"{name}_total") == 4.0


def test_decorating_a_non_callable_is_a_type_error(make) -> None:
    h = make(M.Histogram, unique("duration_seconds"), "Time.")
    with pytest.raises(TypeError):
        h.time()(42)


# --- threads ----------------------------------------------------------------------------------------------------------

THREADS = 8
PER_THREAD = 20_000


def _run_threads(target: Callable[[int], None]) -> None:
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(WAIT)
            target(i)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors


def test_threads_counter_gauge_histogram_exact(make) -> None:
    cname, lname, gname, hname = unique("hits"), unique("hits"), unique("level"), unique("sizes")
    c = make(M.Counter, cname, "Hits.")
    lc = make(M.Counter, lname, "Hits.", ["worker"])
    g = make(M.Gauge, gname, "Level.")
    h = make(M.Histogram, hname, "Sizes.", buckets=[1.0, 2.0])

    def work(i: int) -> None:
        child = lc.labels(str(i % 2))
        for _ in range(PER_THREAD):
            c.inc()
            child.inc(0.5)
            g.inc(2)
            g.dec()
            h.observe(1.0)

    _run_threads(work)
    n = THREADS * PER_THREAD
    assert value(f"{cname}_total") == n
    assert value(f"{lname}_total", {"worker": "0"}) + value(f"{lname}_total", {"worker": "1"}) == n * 0.5
    assert value(gname) == n
    assert value(f"{hname}_count") == n
    assert value(f"{hname}_sum") == n
    assert value(f"{hname}_bucket", {"le": "1.0"}) == n


def test_threads_get_one_child_per_label_set(make) -> None:
    name = unique("hits")
    c = make(M.Counter, name, "Hits.", ["route"])
    got: list[list[Any]] = [[] for _ in range(THREADS)]

    def work(i: int) -> None:
        for k in range(200):
            child = c.labels(f"route-{k}")
            child.inc()
            got[i].append(child)

    _run_threads(work)
    for k in range(200):
        assert len({id(g[k]) for g in got}) == 1, f"route-{k}: several objects for one label set"
        assert value(f"{name}_total", {"route": f"route-{k}"}) == THREADS


def test_threads_update_while_scraping(make) -> None:
    name = unique("hits")
    c = make(M.Counter, name, "Hits.", ["route"])
    stop = threading.Event()
    scrapes: list[int] = []

    def scraper() -> None:
        while not stop.is_set():
            scrapes.append(len(M.exposition()))

    t = threading.Thread(target=scraper)
    t.start()
    try:
        _run_threads(lambda i: [c.labels(f"r{j % 50}").inc() for j in range(5_000)])
    finally:
        stop.set()
        t.join(WAIT)
    assert scrapes
    assert sum(value(f"{name}_total", {"route": f"r{j}"}) for j in range(50)) == THREADS * 5_000


# --- exposition -------------------------------------------------------------------------------------------------------

ODD_VALUES = ['double "quotes"', "back\\slash", "trailing\\", "new\nline", "tab\there", "ünï©ødé ✓ 🚀", "", "{a=b,c}"]


def test_exposition_escapes_odd_label_values_and_help(make) -> None:
    name = unique("requests")
    c = make(M.Counter, name, 'Help with "quotes", back\\slash and a\nnewline.', ["path"])
    for i, v in enumerate(ODD_VALUES):
        c.labels(v).inc(i + 1)
    got = {dict(s[1])["path"]: s[2] for s in fl_samples(name)}
    assert got == {v: float(i + 1) for i, v in enumerate(ODD_VALUES)}
    fam = next(f for f in text_string_to_metric_families(M.exposition()) if f.name == name)
    assert fam.documentation == 'Help with "quotes", back\\slash and a\nnewline.'


NODE_EXPORTER_CAMEL_CASE = r"node_memory_\w+ metric names should be written in 'snake_case' not 'camelCase'"


def test_exposition_passes_promtool_with_many_series(make) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(MISSING + "promtool (Debian package prometheus)")
    fl.ops.sum(np.ones(10))  # the built-in operation series are in the exposition too
    with pytest.raises(ValueError):
        fl.ops.sum(np.ones(3), axis=4)
    c = make(M.Counter, unique("requests"), 'Requests with "odd" \\ help\nand newline.', ["path", "code"])
    g = make(M.Gauge, unique("temperature_celsius"), "Temperature.", ["sensor"])
    h = make(M.Histogram, unique("latency_seconds"), "Latency.", ["route"], buckets=[0.001, 0.5, 1, 100])
    for i in range(600):
        odd = ODD_VALUES[i % len(ODD_VALUES)]
        c.labels(f"{odd}/{i}", str(200 + i % 5)).inc(i)
        g.labels(f"sensor {odd} {i}").set(-i * 0.25)
        h.labels(f"{odd}-{i % 40}").observe(i / 100)
    g.labels("infinite").set(float("inf"))
    g.labels("negative infinite").set(float("-inf"))
    g.labels("not a number").set(float("nan"))
    text = M.exposition()
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=120)
    # node_exporter's own names (node_memory_MemTotal_bytes, ...) are not snake_case: promtool's lint (exit code 3)
    # flags them when an earlier test of this process called fl.system.register_metrics(); nothing else may be found
    findings = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and not re.fullmatch(NODE_EXPORTER_CAMEL_CASE, line)
    ]
    assert proc.returncode == 0 or (proc.returncode == 3 and not findings), (
        f"promtool check metrics: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    assert not findings, findings
    # every line is HELP, TYPE or a sample; the text ends with a newline
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or not line.startswith("#"), line


def test_exposition_is_valid_utf8_text_and_content_type() -> None:
    text = M.exposition()
    assert isinstance(text, str)
    text.encode("utf-8")
    assert M.CONTENT_TYPE_LATEST == "text/plain; version=0.0.4; charset=utf-8"


# --- built-in series --------------------------------------------------------------------------------------------------


def _op_labels(op: str, status: str | None = None) -> dict[str, str]:
    d = {"operation": op, "device": "cpu"}
    if status is not None:
        d["status"] = status
    return d


@pytest.fixture
def builtin_settings() -> Iterator[dict[str, Any]]:
    """The instrumentation settings before the test, put back after it."""
    before = M.settings()
    yield before
    M.configure(enabled=before["enabled"], prefix=before["prefix"])
    assert M.settings() == before


def test_builtin_operation_series(builtin_settings) -> None:
    p = builtin_settings["prefix"]
    ok, err = _op_labels("sum", "success"), _op_labels("sum", "error")
    before_ok = value(f"{p}_operations_total", ok)
    before_err = value(f"{p}_operations_total", err)
    before_count = value(f"{p}_operation_duration_seconds_count", _op_labels("sum"))
    before_sum = value(f"{p}_operation_duration_seconds_sum", _op_labels("sum"))
    before_val = value(f"{p}_errors_total", {"operation": "sum", "error_type": "ValueError"})

    x = np.linspace(0.0, 1.0, 1000)
    for _ in range(5):
        fl.ops.sum(x)
    with pytest.raises(ValueError):
        fl.ops.sum(np.ones((2, 3)), axis=7)  # fails inside the op: counted and timed

    assert value(f"{p}_operations_total", ok) == before_ok + 5
    assert value(f"{p}_operations_total", err) == before_err + 1
    assert value(f"{p}_errors_total", {"operation": "sum", "error_type": "ValueError"}) == before_val + 1
    count = value(f"{p}_operation_duration_seconds_count", _op_labels("sum"))
    assert count == before_count + 6
    assert value(f"{p}_operation_duration_seconds_sum", _op_labels("sum")) > before_sum

    # the histogram is well formed: cumulative buckets, +Inf == count
    buckets = [
        s
        for s in fl_samples(f"{p}_operation_duration_seconds")
        # device="cpu" only: a failed device="cuda" call elsewhere in the session adds an empty series of its own
        if s[0].endswith("_bucket") and dict(s[1])["operation"] == "sum" and dict(s[1])["device"] == "cpu"
    ]
    les = [dict(s[1])["le"] for s in buckets]
    counts = [s[2] for s in buckets]
    assert les == sorted(les) and les[-1] == math.inf
    assert counts == sorted(counts) and counts[-1] == count
    fams = {f.name: f for f in text_string_to_metric_families(M.exposition())}
    assert fams[f"{p}_operations"].type == "counter"
    assert fams[f"{p}_operation_duration_seconds"].type == "histogram"
    labels = {tuple(sorted(s.labels)) for s in fams[f"{p}_operations"].samples}
    assert labels == {("device", "operation", "status")}


def test_histogram_with_automatic_range_counts_once(builtin_settings) -> None:
    """The min/max pass of an automatic-range histogram is part of the histogram call, not a call of its own."""
    p = builtin_settings["prefix"]
    ok, err = _op_labels("histogram", "success"), _op_labels("histogram", "error")
    before_ok, before_err = value(f"{p}_operations_total", ok), value(f"{p}_operations_total", err)
    before_count = value(f"{p}_operation_duration_seconds_count", _op_labels("histogram"))
    mem = {"operation": "histogram", "error_type": "MemoryError"}
    before_mem = value(f"{p}_errors_total", mem)
    x = np.random.default_rng(0).standard_normal(100_000)  # above the size at which the GIL is released
    fl.ops.histogram(x)  # automatic range
    fl.ops.histogram(x[:10])
    fl.ops.histogram(x, bins=4, range=(-1.0, 1.0))
    fl.ops.histogram(x, bins="auto")
    assert value(f"{p}_operations_total", ok) == before_ok + 4
    assert value(f"{p}_operation_duration_seconds_count", _op_labels("histogram")) == before_count + 4
    # a failure of the range pass is one failed call, under its class
    with pytest.raises(MemoryError, match=r"histogram\(\): cannot allocate"):
        fl.ops.histogram(np.broadcast_to(np.ones(1), (10**8, 10**8)))
    assert value(f"{p}_operations_total", err) == before_err + 1
    assert value(f"{p}_errors_total", mem) == before_mem + 1
    assert value(f"{p}_operations_total", ok) == before_ok + 4


def test_builtin_series_for_another_op_and_dot_shape_error(builtin_settings) -> None:
    p = builtin_settings["prefix"]
    err = _op_labels("dot", "error")
    before = value(f"{p}_operations_total", err)
    before_ok = value(f"{p}_operations_total", _op_labels("dot", "success"))
    with pytest.raises(ValueError):
        fl.ops.dot(np.ones(3), np.ones(4))
    assert fl.ops.dot(np.ones(3), np.ones(3)) == 3.0
    assert value(f"{p}_operations_total", err) == before + 1
    assert value(f"{p}_operations_total", _op_labels("dot", "success")) == before_ok + 1


@pytest.mark.parametrize(
    ("call", "exc", "error_type", "op", "device"),
    [
        (lambda: fl.ops.sum(np.array(["a", "b"])), TypeError, "TypeError", "sum", "cpu"),
        (lambda: fl.ops.sum(np.array([1 + 2j])), TypeError, "TypeError", "sum", "cpu"),
        (
            lambda: fl.ops.sum(np.ones(3), device="cuda"),
            fl.DeviceUnavailableError,
            "DeviceUnavailableError",
            "sum",
            "cuda",
        ),
        (
            lambda: fl.ops.sum(np.ones(3), device="cuda:1"),
            fl.DeviceUnavailableError,
            "DeviceUnavailableError",
            "sum",
            "cuda",
        ),
        (
            lambda: fl.ops.histogram(np.ones(3), device="cuda:1"),
            fl.DeviceUnavailableError,
            "DeviceUnavailableError",
            "histogram",
            "cuda",
        ),
        (lambda: fl.ops.sum(np.ones(3), device="tpu"), ValueError, "ValueError", "sum", "cpu"),
        (lambda: fl.ops.histogram(np.ones(3), bins=0), ValueError, "ValueError", "histogram", "cpu"),
        (lambda: fl.ops.quantile(np.ones(3), [float("nan")]), ValueError, "ValueError", "quantile", "cpu"),
        (lambda: fl.ops.quantile(np.ones(3), [2.0]), ValueError, "ValueError", "quantile", "cpu"),
    ],
    ids=[
        "str-dtype",
        "complex-dtype",
        "cuda",
        "cuda-1",
        "cuda-1-python-wrapper",
        "bad-device",
        "histogram-bins",
        "quantile-nan",
        "quantile-native",
    ],
)
def test_errors_before_the_kernel_are_counted(builtin_settings, call, exc, error_type, op, device) -> None:
    """Every failing call is counted once: as a failed call and under its error class, on the device asked for."""
    p = builtin_settings["prefix"]
    labels = {"operation": op, "device": device, "status": "error"}
    before = value(f"{p}_operations_total", labels) or 0.0
    before_kind = value(f"{p}_errors_total", {"operation": op, "error_type": error_type}) or 0.0
    with pytest.raises(exc):
        call()
    assert value(f"{p}_operations_total", labels) == before + 1
    assert value(f"{p}_errors_total", {"operation": op, "error_type": error_type}) == before_kind + 1


def test_python_wrapper_errors_are_labelled_by_the_device_asked_for(builtin_settings) -> None:
    """The Python-level wrappers label a failure with the device they were called with: "cuda:N" is the GPU."""
    p = builtin_settings["prefix"]
    for device, label in (("cuda:1", "cuda"), ("cuda", "cuda"), ("cpu", "cpu"), ("auto", "cpu")):
        labels = {"operation": "quantile", "device": label, "status": "error"}
        before = value(f"{p}_operations_total", labels) or 0.0
        fl._core._record_error("quantile", device, "ValueError")
        assert value(f"{p}_operations_total", labels) == before + 1, device


def _vmrss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _memtotal() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def test_builtin_process_series(builtin_settings) -> None:
    p = builtin_settings["prefix"]
    lo = _vmrss()
    rss = REG.get_sample_value(f"{p}_memory_usage_bytes")
    hi = _vmrss()
    total = REG.get_sample_value(f"{p}_memory_total_bytes")
    cpu = REG.get_sample_value(f"{p}_cpu_usage_percent")
    assert rss is not None and total is not None and cpu is not None
    assert 1 << 20 < rss < total
    if lo is not None and hi is not None:
        assert 0.5 * min(lo, hi) <= rss <= 2 * max(lo, hi), (rss, lo, hi)
    mem = _memtotal()
    if mem is not None:
        assert abs(total - mem) <= 0.01 * mem, (total, mem)
    assert 0.0 <= cpu <= 100.0 * (os.cpu_count() or 1) + 1.0
    fams = {f.name: f.type for f in text_string_to_metric_families(M.exposition())}
    for fam in ("memory_usage_bytes", "memory_total_bytes", "cpu_usage_percent"):
        assert fams[f"{p}_{fam}"] == "gauge"


def test_builtin_cpu_usage_rises_with_work(builtin_settings) -> None:
    p = builtin_settings["prefix"]
    x = np.random.default_rng(0).standard_normal(200_000)
    for _ in range(50):  # a bounded number of rounds of work, each followed by a scrape
        REG.get_sample_value(f"{p}_cpu_usage_percent")
        acc = 0.0
        for _ in range(50):
            acc += float(np.sort(x)[0])
        cpu = REG.get_sample_value(f"{p}_cpu_usage_percent")
        assert cpu is not None and cpu >= 0.0
        if cpu > 0.0:
            return
    pytest.fail("cpu_usage_percent stayed 0 across 50 rounds of CPU-bound work")


def test_configure_disabled_stops_counting(builtin_settings) -> None:
    p = builtin_settings["prefix"]
    ok = _op_labels("mean", "success")
    fl.ops.mean(np.ones(4))
    before = value(f"{p}_operations_total", ok)
    before_count = value(f"{p}_operation_duration_seconds_count", _op_labels("mean"))
    M.configure(enabled=False, prefix=p)
    assert M.settings() == {"enabled": False, "prefix": p}
    for _ in range(3):
        fl.ops.mean(np.ones(4))
    with pytest.raises(ValueError):
        fl.ops.mean(np.ones(4), axis=3)
    assert value(f"{p}_operations_total", ok) == before  # kept, not reset
    assert value(f"{p}_operation_duration_seconds_count", _op_labels("mean")) == before_count
    M.configure(enabled=True, prefix=p)
    fl.ops.mean(np.ones(4))
    assert value(f"{p}_operations_total", ok) == before + 1


def test_configure_prefix_renames_the_builtins(builtin_settings) -> None:
    old = builtin_settings["prefix"]
    new = unique("prefix")
    fl.ops.norm(np.ones(4))
    count = value(f"{old}_operations_total", _op_labels("norm", "success"))
    M.configure(prefix=new)
    assert M.settings()["prefix"] == new
    text = M.exposition()
    assert f"# TYPE {new}_operations_total counter" in text
    assert f"# TYPE {new}_memory_usage_bytes gauge" in text
    assert f"{old}_operations_total" not in text and f"{old}_memory_usage_bytes" not in text
    assert value(f"{new}_operations_total", _op_labels("norm", "success")) == count
    M.configure(prefix=old)
    assert f"{new}_operations_total" not in M.exposition()
    assert value(f"{old}_operations_total", _op_labels("norm", "success")) == count


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"enabled": 1}, TypeError),
        ({"enabled": "yes"}, TypeError),
        ({"enabled": None}, TypeError),
        ({"prefix": 7}, TypeError),
        ({"prefix": None}, TypeError),
        ({"prefix": ""}, ValueError),
        ({"prefix": "9lives"}, ValueError),
        ({"prefix": "has-dash"}, ValueError),
        ({"prefix": "has space"}, ValueError),
    ],
)
def test_configure_bad_arguments(builtin_settings, kwargs, exc) -> None:
    with pytest.raises(exc):
        M.configure(**kwargs)
    assert M.settings() == builtin_settings


def test_configure_prefix_that_collides_with_a_user_metric(builtin_settings, make) -> None:
    fl.ops.sum(np.ones(3))  # the built-in operation series exist
    new = unique("prefix")
    make(M.Counter, f"{new}_operations", "Mine.")
    with pytest.raises(ValueError):
        M.configure(prefix=new)
    assert M.settings() == builtin_settings
    assert f"# TYPE {builtin_settings['prefix']}_operations_total counter" in M.exposition()


# --- prometheus_client's surface: registries, Summary, Info, Enum, set_function ------------------------------------


def test_own_registries_hold_only_their_metrics() -> None:
    reg = M.CollectorRegistry()
    c = M.Counter("own_reg_jobs", "Jobs.", ["kind"], registry=reg)
    c.labels("a").inc(2)
    assert reg.get_sample_value("own_reg_jobs_total", {"kind": "a"}) == 2.0
    assert REG.get_sample_value("own_reg_jobs_total", {"kind": "a"}) is None
    text = M.exposition(reg)
    assert "ferrolab_" not in text and 'own_reg_jobs_total{kind="a"} 2.0\n' in text
    assert "# TYPE own_reg_jobs_created gauge\n" in text
    assert M.generate_latest(reg) == M.exposition(reg).encode()
    with pytest.raises(M.DuplicateTimeseries):
        M.Gauge("own_reg_jobs_created", "Clash.", registry=reg)
    assert issubclass(M.DuplicateTimeseries, ValueError)
    # the same name in another registry is fine
    other = M.CollectorRegistry()
    M.Counter("own_reg_jobs", "Jobs.", registry=other).inc()
    fams = reg.collect()
    assert [(f.name, f.type) for f in fams] == [("own_reg_jobs", "counter")]
    assert [s.name for s in fams[0].samples] == ["own_reg_jobs_total", "own_reg_jobs_created"]
    only = reg.restricted_registry(["own_reg_jobs_total"])
    assert M.exposition(only) == (
        '# HELP own_reg_jobs_total Jobs.\n# TYPE own_reg_jobs_total counter\nown_reg_jobs_total{kind="a"} 2.0\n'
    )
    reg.unregister(c)
    with pytest.raises(KeyError):
        reg.unregister(c)
    unregistered = M.Gauge("own_reg_free", "Free.", registry=None)
    reg.register(unregistered)
    assert reg.get_sample_value("own_reg_free") == 0.0


def test_created_samples_follow_the_switch(monkeypatch) -> None:
    reg = M.CollectorRegistry()
    M.Histogram("own_switch_h", "H.", registry=reg).observe(1)
    assert reg.get_sample_value("own_switch_h_created") is not None
    M.disable_created_metrics()
    try:
        assert reg.get_sample_value("own_switch_h_created") is None
        assert "_created" not in M.exposition(reg)
    finally:
        M.enable_created_metrics()
    assert "own_switch_h_created " in M.exposition(reg)
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
    assert "_created" not in M.exposition(reg)


def test_summary_info_enum_and_set_function() -> None:
    reg = M.CollectorRegistry()
    s = M.Summary("own_s", "S.", ["l"], registry=reg)
    s.labels("a").observe(3)
    s.labels("a").observe(4)
    assert (reg.get_sample_value("own_s_count", {"l": "a"}), reg.get_sample_value("own_s_sum", {"l": "a"})) == (2, 7)
    assert "# TYPE own_s summary\n" in M.exposition(reg)
    i = M.Info("own_i", "I.", registry=reg)
    assert reg.get_sample_value("own_i_info") == 1.0
    i.info({"version": "1.0"})
    assert reg.get_sample_value("own_i_info", {"version": "1.0"}) == 1.0
    with pytest.raises(ValueError):
        i.info({"version": None})  # type: ignore[dict-item]
    e = M.Enum("own_e", "E.", states=["a", "b"], registry=reg)
    assert reg.get_sample_value("own_e", {"own_e": "a"}) == 1.0
    e.state("b")
    assert (reg.get_sample_value("own_e", {"own_e": "a"}), reg.get_sample_value("own_e", {"own_e": "b"})) == (0, 1)
    with pytest.raises(ValueError):
        e.state("c")
    x: dict[str, int] = {}
    g = M.Gauge("own_fn", "F.", registry=reg)
    g.set_function(lambda: len(x))
    x["a"] = 1
    assert reg.get_sample_value("own_fn") == 1.0
    with pytest.raises(NotImplementedError, match="multiprocess"):
        M.Gauge("own_mp", "MP.", registry=None, multiprocess_mode="livesum")


def test_remove_by_labels_timer_labels_and_signatures() -> None:
    import inspect

    reg = M.CollectorRegistry()
    c = M.Counter("own_rbl", "R.", ["tenant", "endpoint"], registry=reg)
    for t, ep in [("acme", "/"), ("acme", "/x"), ("globex", "/")]:
        c.labels(t, ep).inc()
    c.remove_by_labels({"tenant": "acme"})
    assert reg.get_sample_value("own_rbl_total", {"tenant": "acme", "endpoint": "/"}) is None
    assert reg.get_sample_value("own_rbl_total", {"tenant": "globex", "endpoint": "/"}) == 1.0
    with pytest.raises(ValueError):
        c.remove_by_labels({"nope": "x"})
    h = M.Histogram("own_timer", "T.", ["l"], registry=reg)
    with h.time() as t:
        t.labels("a")
    assert reg.get_sample_value("own_timer_count", {"l": "a"}) == 1.0
    assert t.duration is not None and t.duration >= 0

    @h.labels("b").time()
    def f(a, b=1, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        return a

    assert inspect.getfullargspec(f).args == ["a", "b"]
    assert f(5) == 5
    assert [m.name for m in h.describe()] == ["own_timer"] and h.describe()[0].samples == []


FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(1e5, 1e17),
    st.integers(-(10**17), 10**17).map(float),
    st.sampled_from([1e6, 1e7, 1e9, 1e10, 1e11, 1.5e12, 1e15, 9999999999999998.0, 1e16, 1234567.0, 5e-324, -0.0]),
)


@given(FLOATS)
def test_floats_are_written_as_prometheus_client_writes_them(v: float) -> None:
    from prometheus_client.utils import floatToGoString

    assert fl._core._go_float(v) == floatToGoString(v)


def test_large_bucket_bounds_and_values_as_prometheus_client(make) -> None:
    name = unique("big")
    buckets = [1e6, 2.5e9, 1e10, 1.5e12, 1e15]
    h = make(M.Histogram, name, "Big.", buckets=buckets)
    registry = pc.CollectorRegistry()
    p = pc.Histogram(name, "Big.", buckets=buckets, registry=registry)
    g = make(M.Gauge, unique("big_gauge"), "Big.")
    for m in (h, p):
        m.observe(3e10)
    g.set(12345678901.5)
    text = M.exposition()
    peer = pc.generate_latest(registry).decode()
    mine = [line for line in text.splitlines() if line.startswith(f"{name}_bucket")]
    assert mine == [line for line in peer.splitlines() if line.startswith(f"{name}_bucket")]
    assert f'{name}_bucket{{le="1e+10"}} 0.0' in mine
    assert f"{name}_sum 3e+10" in text
    assert f"{g.name} 1.23456789015e+10" in text


@pytest.mark.parametrize("func", [M.push, M.pushadd, M.delete_from_gateway])
def test_push_errors_do_not_show_the_gateway_password(func) -> None:
    import traceback

    with pytest.raises(OSError) as e:
        func("http://ci:hunter2@127.0.0.1:9", "nightly", timeout=5)
    assert "http://ci:***@127.0.0.1:9/metrics/job/nightly" in str(e.value)
    chain: list[BaseException] = []
    exc: BaseException | None = e.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert len(chain) > 1 and not any("hunter2" in "".join(traceback.format_exception_only(x)) for x in chain)
    gateways = ("https://u:p%40ss@gw:9091", "http://token@gw", "gw:9091")
    shown = [M._gateway_url("push", g, "j", None).shown for g in gateways]
    assert shown == [
        "https://u:***@gw:9091/metrics/job/j",
        "http://***@gw/metrics/job/j",  # a user name without a password is a token
        "http://gw:9091/metrics/job/j",
    ]


def _exception_chain_text(e: BaseException) -> str:
    """Every exception of ``e``'s chain, as ``traceback`` prints each one."""
    import traceback

    parts = []
    exc: BaseException | None = e
    while exc is not None:
        parts.append("".join(traceback.format_exception_only(exc)))
        exc = exc.__cause__ or exc.__context__
    return "".join(parts)


@pytest.mark.parametrize(
    ("gateway", "shown"),
    [
        # a password with an unencoded "/", "?" or "#" would end the URL's authority early (host "ci", port "pw1")
        ("http://ci:pw1/t0p@127.0.0.1:9", "http://ci:***@127.0.0.1:9/metrics/job@base64/YS9i"),
        ("http://ci:pw1?t0p@127.0.0.1:9", "http://ci:***@127.0.0.1:9/metrics/job@base64/YS9i"),
        ("http://ci:pw1#t0p@127.0.0.1:9", "http://ci:***@127.0.0.1:9/metrics/job@base64/YS9i"),
        ("http://ci:/pw1t0p@127.0.0.1:9", "http://ci:***@127.0.0.1:9/metrics/job@base64/YS9i"),
        ("http://ci:1234/pw1t0p@127.0.0.1:9", "http://ci:***@127.0.0.1:9/metrics/job@base64/YS9i"),
    ],
)
def test_a_password_with_reserved_characters_never_shows(gateway, shown) -> None:
    # the job "a/b" puts an "@" in the path, which must not move the split of the credentials
    with pytest.raises(OSError) as e:
        M.push(gateway, "a/b", timeout=5)
    assert shown in str(e.value)
    assert "pw1" not in _exception_chain_text(e.value)
    assert "t0p" not in _exception_chain_text(e.value)


def test_an_invalid_gateway_url_is_a_value_error_without_the_password() -> None:
    # http.client.InvalidURL (quoting the URL) for a control character
    with pytest.raises(ValueError, match=r"push\(\): argument 'gateway' is not a valid URL") as e:
        M.push("http://ci:hunter2@127.0.0.1:9/x\ny", "nightly", timeout=5)
    assert "hunter2" not in _exception_chain_text(e.value)
    assert "***" in str(e.value)


def test_gateway_credentials_are_sent_as_basic_auth() -> None:
    import base64
    import http.server

    seen: list[tuple[str, str | None]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        port = srv.server_address[1]
        M.push(f"http://ci:p%40ss@127.0.0.1:{port}", "nightly", timeout=10)
        # reserved characters, unencoded, and a job whose encoding puts an "@" in the path
        M.push(f"http://ci:p/w?d@127.0.0.1:{port}", "a/b", {"instance": ""}, timeout=10)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)
    assert seen == [
        ("/metrics/job/nightly", "Basic " + base64.b64encode(b"ci:p@ss").decode()),
        ("/metrics/job@base64/YS9i/instance@base64/=", "Basic " + base64.b64encode(b"ci:p/w?d").decode()),
    ]
    with pytest.raises(ValueError, match="':' in its user name"):
        M.push("http://c%3Ai:pw@127.0.0.1:9", "nightly", timeout=5)


def test_a_redirect_is_an_error_and_the_credentials_stay_with_the_gateway() -> None:
    import http.server

    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.headers.get("Authorization")))
            if self.server is gateway:
                self.send_response(303)
                self.send_header("Location", f"http://127.0.0.1:{other.server_address[1]}/elsewhere")
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _answer  # noqa: N815 (http.server's names)

        def log_message(self, *args: Any) -> None:
            pass

    gateway = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (gateway, other)]
    for t in threads:
        t.start()
    try:
        answered = r"pushadd\(\): POST http://ci:\*\*\*@127.0.0.1:\d+/metrics/job/j answered 303"
        with pytest.raises(OSError, match=answered):
            M.pushadd(f"http://ci:hunter2@127.0.0.1:{gateway.server_address[1]}", "j", timeout=10)
    finally:
        for s in (gateway, other):
            s.shutdown()
            s.server_close()
        for t in threads:
            t.join(10)
    assert [c for c, _ in seen] == ["POST"], "the redirect was followed"


@pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), (float("nan"), ValueError), ("5", TypeError)])
def test_push_timeout_is_checked(timeout, error) -> None:
    with pytest.raises(error, match=r"push\(\): argument 'timeout'"):
        M.push("http://127.0.0.1:9", "j", timeout=timeout)
