"""OpenMetrics 1.0 exposition with exemplars: ``fl.metrics.exposition(openmetrics=True)`` and ``/metrics`` when the
scraper asks for ``application/openmetrics-text``.

The output is parsed with prometheus_client's strict OpenMetrics parser; exemplars come from sampled
``fl.tracing`` spans (user histograms, ``Histogram.time()``, and the built-in op duration histogram) and from the
``exemplar=`` argument of ``inc``/``observe``. A real Prometheus with exemplar storage scrapes a server and its
``/api/v1/query_exemplars`` returns the span's trace id.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
import urllib.request
from typing import Any

import ferrolab as fl
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families

M = fl.metrics
_seq = itertools.count()


def unique(word: str) -> str:
    return f"fltest_om_{word}_{next(_seq)}"


@pytest.fixture
def metrics() -> Any:
    made: list[Any] = []

    def make(cls: Any, *args: Any, **kw: Any) -> Any:
        m = cls(*args, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        M.REGISTRY.unregister(m)


@pytest.fixture
def tracing() -> Any:
    fl.tracing.configure("fltest-om")
    fl.tracing.finished_spans(clear=True)
    yield
    fl.tracing.finished_spans(clear=True)


def families() -> dict[str, Any]:
    text = M.exposition(openmetrics=True)
    assert text.endswith("# EOF\n")
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam: Any, name: str, **labels: str) -> list[Any]:
    return [s for s in fam.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_counter_gauge_histogram_parse_as_openmetrics(metrics) -> None:
    c = metrics(M.Counter, unique("jobs"), "Jobs done.", ["kind"])
    g = metrics(M.Gauge, unique("temp"), 'Odd "help"\nwith a newline \\ and backslash.', ["where"])
    h = metrics(M.Histogram, unique("latency_seconds"), "Latency.", buckets=[0.1, 1, 2.5e6])
    c.labels("import").inc(3)
    g.labels('say "hi"\n\\').set(-1.5)
    h.observe(0.5)
    h.observe(3e6)
    fams = families()
    fc = fams[c.name]
    assert fc.type == "counter"
    assert samples(fc, c.name + "_total", kind="import")[0].value == 3
    fg = fams[g.name]
    assert fg.type == "gauge"
    assert fg.documentation == 'Odd "help"\nwith a newline \\ and backslash.'
    assert samples(fg, g.name, where='say "hi"\n\\')[0].value == -1.5
    fh = fams[h.name]
    assert fh.type == "histogram"
    # bucket bounds are written as prometheus_client writes them: series identity survives a migration
    les = [s.labels["le"] for s in samples(fh, h.name + "_bucket")]
    assert les == ["0.1", "1.0", "2.5e+06", "+Inf"]
    assert [s.value for s in samples(fh, h.name + "_bucket")] == [0, 1, 1, 2]
    assert samples(fh, h.name + "_count")[0].value == 2
    assert samples(fh, h.name + "_sum")[0].value == 3e6 + 0.5


def test_builtin_series_parse_and_text_format_stays_available() -> None:
    fl.ops.sum(np.ones(10))
    fams = families()
    assert fams["ferrolab_operations"].type == "counter"
    assert fams["ferrolab_operation_duration_seconds"].type == "histogram"
    assert fams["ferrolab_memory_usage_bytes"].type == "gauge"
    text = M.exposition()
    assert "# EOF" not in text and "ferrolab_operations_total{" in text


def test_observe_in_a_sampled_span_attaches_the_span(metrics, tracing) -> None:
    h = metrics(M.Histogram, unique("work_seconds"), "Work.", ["route"], buckets=[0.1, 1.0])
    with fl.tracing.span("request") as span:
        h.labels("/a").observe(0.5)
    h.labels("/a").observe(0.05)  # outside a span: no exemplar for the first bucket
    fh = families()[h.name]
    by_le = {s.labels["le"]: s for s in samples(fh, h.name + "_bucket", route="/a")}
    ex = by_le["1.0"].exemplar
    assert ex is not None
    assert ex.labels == {"trace_id": span.trace_id, "span_id": span.span_id}
    assert ex.value == 0.5
    assert abs(float(ex.timestamp) - time.time()) < 60
    assert by_le["0.1"].exemplar is None
    assert by_le["+Inf"].exemplar is None


def test_timer_in_a_span_and_op_duration_get_exemplars(metrics, tracing) -> None:
    h = metrics(M.Histogram, unique("timed_seconds"), "Timed.")
    with fl.tracing.span("batch") as span:
        with h.time():
            pass
        fl.ops.mean(np.ones(1000))
    fams = families()
    exs = [s.exemplar for s in samples(fams[h.name], h.name + "_bucket") if s.exemplar]
    assert [e.labels["trace_id"] for e in exs] == [span.trace_id]
    op_exs = [
        s.exemplar
        for s in samples(fams["ferrolab_operation_duration_seconds"], "ferrolab_operation_duration_seconds_bucket")
        if s.exemplar and s.labels["operation"] == "mean" and s.exemplar.labels["trace_id"] == span.trace_id
    ]
    assert len(op_exs) == 1
    # the exemplar is the op's own child span
    op_span = [d for d in fl.tracing.finished_spans() if d["name"] == "ferrolab.mean"][-1]
    assert op_exs[0].labels["span_id"] == op_span["span_id"]
    assert op_span["parent_span_id"] == span.span_id


def test_unsampled_span_and_no_span_attach_nothing(metrics) -> None:
    fl.tracing.configure("fltest-om", sample_ratio=0.0)
    try:
        h = metrics(M.Histogram, unique("quiet_seconds"), "Quiet.")
        c = metrics(M.Counter, unique("quiet"), "Quiet.")
        with fl.tracing.span("unsampled"):
            h.observe(0.2)
            c.inc()
        h.observe(0.3)
        fams = families()
        assert not [s for s in fams[h.name].samples if s.exemplar]
        assert not [s for s in fams[c.name].samples if s.exemplar]
    finally:
        fl.tracing.configure("fltest-om")


def test_explicit_exemplars_on_inc_and_observe(metrics) -> None:
    c = metrics(M.Counter, unique("events"), "Events.", ["k"])
    h = metrics(M.Histogram, unique("size_bytes"), "Sizes.", buckets=[10, 100])
    c.labels("x").inc(2, exemplar={"trace_id": "abc123"})
    h.observe(50, exemplar={"request": "r-1", "user": "ünï"})
    fams = families()
    ce = samples(fams[c.name], c.name + "_total", k="x")[0].exemplar
    assert ce.labels == {"trace_id": "abc123"} and ce.value == 2
    he = [s.exemplar for s in samples(fams[h.name], h.name + "_bucket") if s.exemplar]
    assert len(he) == 1 and he[0].labels == {"request": "r-1", "user": "ünï"} and he[0].value == 50
    # the newest exemplar of a bucket wins
    h.observe(60, exemplar={"request": "r-2"})
    he = [s.exemplar for s in samples(families()[h.name], h.name + "_bucket") if s.exemplar]
    assert [e.labels["request"] for e in he] == ["r-2"]


def test_bad_exemplars_are_clear_errors(metrics) -> None:
    c = metrics(M.Counter, unique("bad"), "Bad.")
    h = metrics(M.Histogram, unique("bad_seconds"), "Bad.")
    with pytest.raises(ValueError, match=r"inc.*exemplar.*128"):
        c.inc(1, exemplar={"a": "x" * 200})
    # reserved names are refused; UTF-8 names pass unless legacy validation is on (as prometheus_client 0.26)
    with pytest.raises(ValueError, match=r"observe.*exemplar.*invalid label name"):
        h.observe(1, exemplar={"__reserved": "x"})
    h.observe(1, exemplar={"0 utf-8": "x"})
    M.enable_legacy_validation()
    try:
        assert M.get_legacy_validation()
        with pytest.raises(ValueError, match=r"observe.*exemplar.*invalid label name"):
            h.observe(1, exemplar={"0bad": "x"})
        with pytest.raises(ValueError, match="legacy"):
            M.Counter("utf8.legacy", "Refused.", registry=None)
    finally:
        M.disable_legacy_validation()
    assert not M.get_legacy_validation()
    with pytest.raises(TypeError, match=r"observe.*exemplar"):
        h.observe(1, exemplar={"a": 1})
    with pytest.raises(TypeError):
        h.observe(1, exemplar=["a"])


def test_removed_series_loses_its_exemplar(metrics) -> None:
    h = metrics(M.Histogram, unique("gone_seconds"), "Gone.", ["route"])
    h.labels("/a").observe(0.2, exemplar={"id": "1"})
    h.remove("/a")
    h.labels("/a").observe(0.2)
    assert not [s for s in families()[h.name].samples if s.exemplar]


label_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=5),
    label=label_text,
)
def test_values_and_labels_round_trip_through_the_parser(values: list[float], label: str) -> None:
    g = M.Gauge(unique("prop"), "Property test.", ["v"])
    try:
        for i, v in enumerate(values):
            g.labels(f"{label}{i}").set(v)
        fam = families()[g.name]
        got = {s.labels["v"]: s.value for s in fam.samples}
        assert got == {f"{label}{i}": v for i, v in enumerate(values)}
    finally:
        M.REGISTRY.unregister(g)


def _peer_om(registry: Any) -> str:
    from prometheus_client.openmetrics.exposition import generate_latest

    return generate_latest(registry).decode()


def _names(text: str, family: str) -> list[str]:
    """The sample names of ``family`` in an OpenMetrics text, in order, read from its lines (prometheus_client's
    parser refuses a histogram with negative buckets whether or not it has a ``_sum``, its own output included)."""
    names = [line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")]
    return [n for n in names if n.rpartition("_")[0] == family or n == family]


def test_summary_has_created_in_openmetrics_as_prometheus_client(metrics) -> None:
    import prometheus_client as pc

    name = unique("summary")
    s = metrics(M.Summary, name, "A summary.")
    s.observe(2.5)
    peer = pc.CollectorRegistry()
    pc.Summary(name, "A summary.", registry=peer).observe(2.5)
    mine = families()[name]
    assert [x.name for x in mine.samples] == _names(_peer_om(peer), name)
    assert [x.name for x in mine.samples] == [f"{name}_count", f"{name}_sum", f"{name}_created"]
    assert mine.samples[2].value > 1.6e9
    # and in the text format, as before
    assert f"{name}_created " in M.exposition()


@pytest.mark.parametrize("buckets", [[-5.0, 0.0, 5.0], [-1.0], [0.0, 1.0]])
def test_histogram_sum_with_negative_buckets_as_prometheus_client(metrics, buckets: list[float]) -> None:
    import prometheus_client as pc
    from prometheus_client import generate_latest as pc_text
    from prometheus_client.parser import text_string_to_metric_families as parse_text

    name = unique("neg_hist")
    h = metrics(M.Histogram, name, "Negative buckets.", buckets=buckets)
    peer = pc.CollectorRegistry()
    p = pc.Histogram(name, "Negative buckets.", buckets=buckets, registry=peer)
    for v in (-3.0, 0.5, 7.0):
        h.observe(v)
        p.observe(v)
    # OpenMetrics: the same samples
    om = M.exposition(openmetrics=True)
    assert _names(om, name) == _names(_peer_om(peer), name)
    assert (f"{name}_sum" in om) == (buckets[0] >= 0) and f"{name}_count" in om
    # the text format and collect()
    text_names = [x.name for f in parse_text(M.exposition()) if f.name == name for x in f.samples]
    peer_text = [x.name for f in parse_text(pc_text(peer).decode()) if f.name == name for x in f.samples]
    assert text_names == peer_text
    assert [x.name for f in h.collect() for x in f.samples] == [x.name for f in p.collect() for x in f.samples]
    assert (M.REGISTRY.get_sample_value(f"{name}_sum") is None) == (buckets[0] < 0)


# --- the endpoint ---------------------------------------------------------------------------------------------------


def get(url: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def test_metrics_endpoint_negotiates_openmetrics(metrics, tracing) -> None:
    h = metrics(M.Histogram, unique("served_seconds"), "Served.")
    with fl.tracing.span("served") as span:
        h.observe(0.3)
    with M.serve(port=0) as srv:
        ctype, body = get(srv.url + "/metrics")
        assert ctype.startswith("text/plain; version=0.0.4") and "# EOF" not in body
        # what Prometheus sends when exemplar storage is on
        accept = (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )
        ctype, body = get(srv.url + "/metrics", accept)
        assert ctype == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        exs = [s.exemplar for s in fams[h.name].samples if s.exemplar]
        assert [e.labels["trace_id"] for e in exs] == [span.trace_id]


@pytest.mark.integration
def test_prometheus_stores_exemplars(tmp_path, tracing) -> None:
    from test_integration_prometheus import STARTUP, Component, _binary, fetch, free_port, wait_for

    binary = _binary("prometheus")
    with fl.tracing.span("scraped-request") as span:
        fl.ops.std(np.ones(2000))
    srv = M.serve(port=0)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "ferrolab-om", "static_configs": [{"targets": [f"127.0.0.1:{srv.port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    (tmp_path / "data").mkdir()
    prom = Component(
        "prometheus",
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        tmp_path / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("prometheus /-/ready", lambda: prom.check_alive() or fetch(url + "/-/ready"), STARTUP, prom.log)

        def exemplars() -> list[dict[str, Any]]:
            now = time.time()
            q = urllib.parse.urlencode(
                {
                    "query": 'ferrolab_operation_duration_seconds_bucket{operation="std"}',
                    "start": now - 600,
                    "end": now + 60,
                }
            )
            doc = json.loads(fetch(f"{url}/api/v1/query_exemplars?{q}"))
            assert doc["status"] == "success", doc
            return [e for series in doc["data"] for e in series["exemplars"]]

        got = wait_for("exemplars in Prometheus", exemplars, 60.0, prom.log)
        assert span.trace_id in {e["labels"]["trace_id"] for e in got}
    finally:
        prom.stop()
        srv.stop()
