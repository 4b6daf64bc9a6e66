"""Mixed apps: custom collectors and prometheus_client's registry in ferrolab's, ferrolab's series in
prometheus_client's (``bridge_to_prometheus_client``), ``target_info`` and the name-escaping schemes."""

from __future__ import annotations

import itertools
import urllib.error
import urllib.request
import wsgiref.util

import ferrolab as fl
import prometheus_client as pc
import pytest
from prometheus_client.core import GaugeMetricFamily

M = fl.metrics
_ids = itertools.count()


def unique(stem: str) -> str:
    return f"bridge_{stem}_{next(_ids)}"


class Temperature:
    """A custom collector, as prometheus_client's docs write them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def collect(self):
        self.calls += 1
        g = GaugeMetricFamily(self.name, "Temperature.", labels=["room"])
        g.add_metric(["kitchen"], 21.5)
        yield g

    def describe(self):
        return [GaugeMetricFamily(self.name, "Temperature.")]


def test_custom_collector_in_a_registry() -> None:
    reg = M.CollectorRegistry()
    name = unique("celsius")
    t = Temperature(name)
    reg.register(t)
    M.Counter(unique("jobs"), "Jobs.", registry=reg).inc()
    text = M.generate_latest(reg).decode()
    assert f'{name}{{room="kitchen"}} 21.5\n' in text
    assert f"# TYPE {name} gauge" in text
    assert reg.get_sample_value(name, {"room": "kitchen"}) == 21.5
    assert [m.name for m in reg.collect()][-1] == name
    # its names are reserved: a ferrolab metric of that name clashes, and the other way round
    with pytest.raises(M.DuplicateTimeseries):
        M.Gauge(name, "Clash.", registry=reg)
    with pytest.raises(M.DuplicateTimeseries):
        reg.register(Temperature(name))
    # a restricted view collects only the collectors that reserve one of its names
    calls = t.calls
    assert list(reg.restricted_registry(["other"]).collect()) == []
    assert t.calls == calls
    (only,) = reg.restricted_registry([name]).collect()
    assert [s.value for s in only.samples] == [21.5]
    reg.unregister(t)
    assert name not in M.generate_latest(reg).decode()
    with pytest.raises(KeyError):
        reg.unregister(t)
    M.Gauge(name, "Free again.", registry=reg)


def test_openmetrics_of_a_registry_with_a_collector_ends_once() -> None:
    reg = M.CollectorRegistry()
    reg.register(Temperature(unique("om")))
    M.Counter(unique("om_jobs"), "Jobs.", registry=reg).inc()
    text = M.exposition(reg, openmetrics=True)
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    assert 'room="kitchen"} 21.5' in text


def test_target_info() -> None:
    reg = M.CollectorRegistry(target_info={"service": "api"})
    assert reg.get_target_info() == {"service": "api"}
    assert reg.get_sample_value("target_info", {"service": "api"}) == 1.0
    assert 'target_info{service="api"} 1.0' in M.generate_latest(reg).decode()
    assert next(iter(reg.collect())).name == "target"
    with pytest.raises(ValueError):
        M.Info("target", "Clash.", registry=reg)
    reg.set_target_info({"service": "web"})
    assert reg.get_sample_value("target_info", {"service": "web"}) == 1.0
    reg.set_target_info(None)
    assert reg.get_target_info() is None
    assert "target_info" not in M.generate_latest(reg).decode()
    i = M.Info("target", "Now a metric.", registry=reg)
    with pytest.raises(ValueError):
        reg.set_target_info({"service": "api"})
    reg.unregister(i)
    reg.set_target_info({"service": "api"})


@pytest.mark.parametrize(
    ("escaping", "sample"),
    [
        ("underscores", "utf8_esc_total 1.0"),
        ("dots", "utf8_dot_esc__total 1.0"),
        ("values", "U__utf8_2e_esc__total 1.0"),
        ("allow-utf-8", '{"utf8.esc_total"} 1.0'),
    ],
)
def test_escaping_schemes_match_prometheus_client(escaping: str, sample: str) -> None:
    ours, theirs = M.CollectorRegistry(), pc.CollectorRegistry()
    M.Counter("utf8.esc", "Escaped.", registry=ours).inc()
    pc.Counter("utf8.esc", "Escaped.", registry=theirs).inc()
    text = M.generate_latest(ours, escaping).decode()
    assert f"\n{sample}\n" in text
    drop_created = lambda t: [x for x in t.splitlines() if "created" not in x]  # noqa: E731 (differing times)
    assert drop_created(text) == drop_created(pc.generate_latest(theirs, escaping).decode())
    with pytest.raises(ValueError, match="escaping"):
        M.exposition(ours, escaping="bogus")


def test_bridge_to_prometheus_client_serves_ferrolab_series_on_its_endpoints() -> None:
    theirs = pc.CollectorRegistry()
    ours = M.CollectorRegistry()
    name = unique("bridged")
    M.Counter(name, "Bridged.", ["route"], registry=ours).labels("/a").inc(3)
    bridge = M.bridge_to_prometheus_client(theirs, source=ours)
    assert M.bridge_to_prometheus_client(theirs, source=ours) is bridge  # once per registry
    assert theirs.get_sample_value(f"{name}_total", {"route": "/a"}) == 3.0
    # a WSGI app of prometheus_client's, as frameworks mount it
    app = pc.make_wsgi_app(theirs)
    environ: dict = {}
    wsgiref.util.setup_testing_defaults(environ)
    body = b"".join(app(environ, lambda status, headers: None)).decode()
    assert f'{name}_total{{route="/a"}} 3.0' in body
    theirs.unregister(bridge)
    assert theirs.get_sample_value(f"{name}_total", {"route": "/a"}) is None


def test_both_directions_at_once_show_every_series_once() -> None:
    theirs = pc.CollectorRegistry()
    ours = M.CollectorRegistry()
    mine, peer = unique("mine"), unique("peer")
    M.Gauge(mine, "Ours.", registry=ours).set(1)
    pc.Gauge(peer, "Theirs.", registry=theirs).set(2)
    M.bridge_to_prometheus_client(theirs, source=ours)
    ours.register(theirs)
    for text in (M.generate_latest(ours).decode(), pc.generate_latest(theirs).decode()):
        assert text.count(f"\n{mine} 1.0\n") == 1, text
        assert text.count(f"\n{peer} 2.0\n") == 1, text


def test_serve_shows_a_prometheus_client_registry() -> None:
    theirs = pc.CollectorRegistry()
    peer = unique("served_peer")
    pc.Counter(peer, "Theirs.", registry=theirs).inc(5)
    M.REGISTRY.register(theirs)
    try:
        with M.serve(port=0) as server:
            text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
            req = urllib.request.Request(server.url + "/metrics", headers={"Accept": "application/openmetrics-text"})
            om = urllib.request.urlopen(req, timeout=10).read().decode()
    finally:
        M.REGISTRY.unregister(theirs)
    assert f"{peer}_total 5.0" in text
    assert "ferrolab_memory_usage_bytes" in text
    assert f"{peer}_total 5.0" in om and om.endswith("# EOF\n") and om.count("# EOF") == 1


def test_collect_yields_prometheus_client_metrics_once_it_is_imported() -> None:
    reg = M.CollectorRegistry()
    M.Summary("cmp_s", "help", registry=reg).observe(7)
    m = pc.Metric("cmp_s", "help", "summary")
    m.samples = [pc.samples.Sample("cmp_s_sum", {}, 7)]
    assert [m] == list(reg.restricted_registry(["cmp_s_sum"]).collect())


def test_a_failing_collector_fails_the_exposition_clearly() -> None:
    class Offline:
        def collect(self):
            raise RuntimeError("sensor offline")

        def describe(self):
            return []

    bad = Offline()
    M.REGISTRY.register(bad)
    try:
        # as prometheus_client's generate_latest: the collector's error propagates
        with pytest.raises(RuntimeError, match="sensor offline"):
            M.exposition()
        with M.serve(port=0) as server:
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(server.url + "/metrics", timeout=10)
            assert e.value.code == 500
            assert b"sensor offline" in e.value.read()
            e.value.close()
    finally:
        M.REGISTRY.unregister(bad)
    assert "ferrolab_memory_usage_bytes" in M.exposition()
