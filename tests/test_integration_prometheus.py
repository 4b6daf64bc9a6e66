"""fl.metrics against the real components: a Prometheus server scraping fl.metrics.serve(), and a Pushgateway.

The Debian binaries ``prometheus`` and ``prometheus-pushgateway`` are started on 127.0.0.1 with free ports and
temporary storage; every test skips with the reason when a binary is missing. Each process is started by a fixture
that always terminates it through its own Popen handle. Waits are polls with deadlines.
"""

from __future__ import annotations

import http.client
import itertools
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import ferrolab as fl
import numpy as np
import pytest
from conftest import MISSING

M = fl.metrics

pytestmark = pytest.mark.integration

T = TypeVar("T")

TOKEN = "fltest-scrape-token"
BASIC_USER = "prometheus"
BASIC_PASSWORD = "fltest-scrape-password"
# bcrypt (cost 10) of BASIC_PASSWORD, as a web config holds it (the form `htpasswd -nBC 10 prometheus` prints)
BASIC_HASH = "$2b$10$RlzLcD72RN4qfL9KwPImoOBmshI/Hgrx.LneIR6g7w2w7Gwm9D0BC"
STARTUP = 60.0  # seconds a component may take to come up
SCRAPED = 60.0  # seconds until Prometheus has our series (scrape_interval is 1 s)

_seq = itertools.count()


def unique(word: str) -> str:
    return f"fltest_integration_{word}_{next(_seq)}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, probe: Callable[[], T | None], deadline_s: float, log: Path | None = None) -> T:
    """Calls ``probe`` until it returns something truthy or the deadline passes (then fails with ``what``)."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except (OSError, ValueError, KeyError) as e:  # not up yet / not there yet
            got, last = None, e
        except HTTPStatusError as e:
            if e.code != 503:  # 503 Service Unavailable: up, not ready yet (Prometheus while it opens its TSDB)
                raise
            got, last = None, e
        if got:
            return got
        time.sleep(0.2)  # poll interval; the deadline bounds the wait
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {deadline_s:.0f} s waiting for {what} (last error: {last!r})\n{tail}")


class HTTPStatusError(RuntimeError):
    """An HTTP error status from :func:`fetch` (its response already closed)."""

    def __init__(self, url: str, code: int, body: bytes) -> None:
        super().__init__(f"GET {url}: HTTP {code}: {body!r}")
        self.code = code


def fetch(url: str, timeout: float = 5.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        # an HTTPError holds the open response: close it here (a caller that keeps polling would otherwise
        # leave its socket to the garbage collector, and filterwarnings=error turns that into a failure)
        body = e.read()[:500]
        e.close()
        raise HTTPStatusError(url, e.code, body) from None


def fetch_json(url: str) -> Any:
    return json.loads(fetch(url))


class Component:
    """A process started by a test fixture; ``stop()`` terminates it through its Popen handle."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._log_file.close()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{MISSING}{name} (Debian package {name}); this integration test needs the real binary")
    return path


# --- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user_metrics() -> Iterator[dict[str, Any]]:
    """User series for Prometheus to find: a counter and a gauge with odd label values."""
    jobs = M.Counter(unique("jobs"), "Jobs done.", ["kind"])
    jobs.labels("import").inc(3)
    odd = M.Gauge(unique("odd_labels"), "Odd label values.", ["value"])
    odd_values = ['say "hi"', "back\\slash", "new\nline", "ünï©ødé 🚀"]
    for i, v in enumerate(odd_values):
        odd.labels(v).set(i + 1)
    fl.ops.sum(np.ones(100))  # the built-in operation series exist
    try:
        yield {"jobs": jobs, "odd": odd, "odd_values": odd_values}
    finally:
        M.REGISTRY.unregister(jobs)
        M.REGISTRY.unregister(odd)


@pytest.fixture(scope="module")
def scraped(user_metrics, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Two fl.metrics servers (one with a bearer token) and a Prometheus scraping them every second."""
    binary = _binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    plain = M.serve(port=0)
    secured = M.serve(port=0, token=TOKEN)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "ferrolab", "static_configs": [{"targets": [f"127.0.0.1:{plain.port}"]}]},
            {
                "job_name": "ferrolab-token",
                "authorization": {"type": "Bearer", "credentials": TOKEN},
                "static_configs": [{"targets": [f"127.0.0.1:{secured.port}"]}],
            },
            {
                "job_name": "ferrolab-wrong-token",
                "authorization": {"type": "Bearer", "credentials": "not-the-token"},
                "static_configs": [{"targets": [f"127.0.0.1:{secured.port}"]}],
            },
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    (tmp / "data").mkdir()
    prom = Component(
        "prometheus",
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
        ],
        tmp / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            prom.check_alive()
            return fetch(url + "/-/ready") is not None

        wait_for("prometheus /-/ready", ready, STARTUP, prom.log)
        yield {"url": url, "plain": plain, "secured": secured, "prometheus": prom, **user_metrics}
    finally:
        prom.stop()
        plain.stop()
        secured.stop()


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key (PEM), made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip(f"{MISSING}openssl (Debian package openssl); needed to make a test certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def scraped_tls(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """An fl.metrics server with TLS and basic auth (node_exporter's web-config way) and a Prometheus scraping it
    over https with the right and with a wrong password."""
    binary = _binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus_tls")
    cert, key = self_signed(tmp)
    many = M.Counter(unique("tls_series"), "Enough series for a gzip-compressed exposition.", ["n"])
    for i in range(100):
        many.labels(str(i)).inc(i)
    srv = M.serve(port=0, tls_cert=cert, tls_key=key, basic_auth={BASIC_USER: BASIC_HASH})
    port = free_port()
    tls = {"ca_file": str(cert), "server_name": "localhost"}
    target = {"targets": [f"127.0.0.1:{srv.port}"]}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "ferrolab-tls",
                "scheme": "https",
                "tls_config": tls,
                "basic_auth": {"username": BASIC_USER, "password": BASIC_PASSWORD},
                "static_configs": [target],
            },
            {
                "job_name": "ferrolab-tls-wrong-password",
                "scheme": "https",
                "tls_config": tls,
                "basic_auth": {"username": BASIC_USER, "password": "not-the-password"},
                "static_configs": [target],
            },
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config, indent=1))
    (tmp / "data").mkdir()
    prom = Component(
        "prometheus",
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
        ],
        tmp / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            prom.check_alive()
            return fetch(url + "/-/ready") is not None

        wait_for("prometheus /-/ready", ready, STARTUP, prom.log)
        yield {"url": url, "server": srv, "prometheus": prom, "cert": cert}
    finally:
        prom.stop()
        srv.stop()
        M.REGISTRY.unregister(many)


def query(prom_url: str, promql: str) -> list[dict[str, Any]]:
    doc = fetch_json(f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory) -> Iterator[str]:
    binary = _binary("prometheus-pushgateway")
    tmp = tmp_path_factory.mktemp("pushgateway")
    port = free_port()
    gw = Component("pushgateway", [binary, f"--web.listen-address=127.0.0.1:{port}"], tmp / "pushgateway.log")
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            gw.check_alive()
            return fetch(url + "/-/ready") is not None

        wait_for("pushgateway /-/ready", ready, STARTUP, gw.log)
        yield url
    finally:
        gw.stop()


# --- Prometheus scrapes fl.metrics.serve() ----------------------------------------------------------------------------


def test_prometheus_scrapes_builtin_series(scraped) -> None:
    url, prefix = scraped["url"], M.settings()["prefix"]
    instance = f"127.0.0.1:{scraped['plain'].port}"

    def ours() -> list[dict[str, Any]]:
        scraped["prometheus"].check_alive()
        return [
            r
            for r in query(url, f'{prefix}_operations_total{{job="ferrolab"}}')
            if r["metric"].get("operation") == "sum" and r["metric"].get("status") == "success"
        ]

    result = wait_for(f"{prefix}_operations_total in Prometheus", ours, SCRAPED, scraped["prometheus"].log)
    metric = result[0]["metric"]
    assert metric == {
        "__name__": f"{prefix}_operations_total",
        "operation": "sum",
        "device": "cpu",
        "status": "success",
        "job": "ferrolab",
        "instance": instance,
    }
    assert float(result[0]["value"][1]) >= 1

    counts = query(url, f'{prefix}_operation_duration_seconds_count{{job="ferrolab",operation="sum"}}')
    assert counts and float(counts[0]["value"][1]) >= 1
    buckets = query(url, f'{prefix}_operation_duration_seconds_bucket{{job="ferrolab",operation="sum",le="+Inf"}}')
    assert buckets and buckets[0]["value"][1] == counts[0]["value"][1]
    for gauge in ("memory_usage_bytes", "memory_total_bytes", "cpu_usage_percent"):
        r = query(url, f'{prefix}_{gauge}{{job="ferrolab"}}')
        assert r and float(r[0]["value"][1]) >= 0, gauge
    up = query(url, 'up{job="ferrolab"}')
    assert [float(r["value"][1]) for r in up] == [1.0]


def test_prometheus_scrapes_user_series_with_odd_labels(scraped) -> None:
    url = scraped["url"]
    jobs, odd = scraped["jobs"].name, scraped["odd"].name

    def counter() -> list[dict[str, Any]]:
        return query(url, f'{jobs}_total{{job="ferrolab",kind="import"}}')

    result = wait_for(f"{jobs}_total in Prometheus", counter, SCRAPED, scraped["prometheus"].log)
    assert float(result[0]["value"][1]) == 3.0

    def gauge() -> dict[str, float] | None:
        got = {r["metric"]["value"]: float(r["value"][1]) for r in query(url, f'{odd}{{job="ferrolab"}}')}
        return got if len(got) == len(scraped["odd_values"]) else None

    got = wait_for(f"{odd} in Prometheus", gauge, SCRAPED, scraped["prometheus"].log)
    assert got == {v: float(i + 1) for i, v in enumerate(scraped["odd_values"])}


def test_prometheus_scrapes_with_the_bearer_token(scraped) -> None:
    url = scraped["url"]
    jobs = scraped["jobs"].name

    def with_token() -> list[dict[str, Any]]:
        return query(url, f'{jobs}_total{{job="ferrolab-token",kind="import"}}')

    result = wait_for("the token-protected scrape", with_token, SCRAPED, scraped["prometheus"].log)
    assert float(result[0]["value"][1]) == 3.0

    def wrong_token_down() -> dict[str, Any] | None:
        targets = fetch_json(f"{url}/api/v1/targets")["data"]["activeTargets"]
        t = [t for t in targets if t["labels"].get("job") == "ferrolab-wrong-token"]
        return t[0] if t and t[0]["health"] == "down" and t[0]["lastError"] else None

    target = wait_for("the wrong-token target to be down", wrong_token_down, SCRAPED, scraped["prometheus"].log)
    assert "401" in target["lastError"]
    assert [float(r["value"][1]) for r in query(url, 'up{job="ferrolab-wrong-token"}')] == [0.0]
    assert query(url, f'{jobs}_total{{job="ferrolab-wrong-token"}}') == []
    assert scraped["secured"].stats()["unauthorized"] >= 1


# --- Pushgateway -----------------------------------------------------------------------------------------------------


def groups(gw: str) -> list[dict[str, Any]]:
    doc = fetch_json(f"{gw}/api/v1/metrics")
    assert doc["status"] == "success", doc
    return doc["data"]


def group(gw: str, labels: dict[str, str]) -> dict[str, Any] | None:
    for g in groups(gw):
        if g["labels"] == labels:
            return g
    return None


def pushed_values(g: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{label items without job/instance and grouping labels: value}`` of one metric in a pushed group."""
    skip = set(g["labels"]) | {"job", "instance"}
    out = {}
    for m in g[name]["metrics"]:
        key = tuple(sorted((k, v) for k, v in m["labels"].items() if k not in skip))
        out[key] = float(m["value"])
    return out


@pytest.fixture
def pushed_metrics() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for m in made:
        try:
            M.REGISTRY.unregister(m)
        except KeyError:
            pass


def test_push_replaces_the_group(pushgateway, pushed_metrics) -> None:
    job = unique("job")
    key = {"instance": "fltest-host-1"}
    a = M.Counter(unique("records"), "Records.", ["source"])
    b = M.Gauge(unique("queue_depth"), "Queue depth.")
    pushed_metrics += [a, b]
    a.labels("csv").inc(5)
    b.set(42)
    M.push(pushgateway, job, key)
    g = group(pushgateway, {"job": job, **key})
    assert g is not None, groups(pushgateway)
    assert g[f"{a.name}_total"]["type"] == "COUNTER"
    assert pushed_values(g, f"{a.name}_total") == {(("source", "csv"),): 5.0}
    assert pushed_values(g, b.name) == {(): 42.0}
    assert f"{M.settings()['prefix']}_memory_usage_bytes" in g

    M.REGISTRY.unregister(b)
    a.labels("csv").inc()
    M.push(pushgateway, job, key)  # PUT: the group is replaced, b is gone
    g = group(pushgateway, {"job": job, **key})
    assert g is not None
    assert pushed_values(g, f"{a.name}_total") == {(("source", "csv"),): 6.0}
    assert b.name not in g


def test_pushadd_keeps_other_metrics(pushgateway, pushed_metrics) -> None:
    job = unique("job")
    a = M.Counter(unique("records"), "Records.")
    pushed_metrics.append(a)
    a.inc(2)
    M.push(pushgateway, job)
    M.REGISTRY.unregister(a)
    b = M.Counter(unique("records"), "Records.")
    pushed_metrics.append(b)
    b.inc(7)
    M.pushadd(pushgateway, job)  # POST: replaces only metrics of the same names
    g = group(pushgateway, {"job": job})
    assert g is not None
    assert pushed_values(g, f"{a.name}_total") == {(): 2.0}
    assert pushed_values(g, f"{b.name}_total") == {(): 7.0}
    M.push(pushgateway, job)  # PUT again: a is gone
    g = group(pushgateway, {"job": job})
    assert g is not None
    assert f"{a.name}_total" not in g and pushed_values(g, f"{b.name}_total") == {(): 7.0}


def test_grouping_keys_with_slashes_spaces_and_unicode(pushgateway, pushed_metrics) -> None:
    c = M.Counter(unique("records"), "Records.")
    pushed_metrics.append(c)
    c.inc()
    job = unique("team") + "/etl"  # a job with a slash too
    key = {"path": "/data/in/2024", "host": "rack 7 ünï", "percent": "100%", "query": "a=b&c=d"}
    M.push(pushgateway, job, key)
    g = group(pushgateway, {"job": job, **key})
    assert g is not None, [x["labels"] for x in groups(pushgateway)]
    assert pushed_values(g, f"{c.name}_total") == {(): 1.0}
    M.delete_from_gateway(pushgateway, job, key)
    assert group(pushgateway, {"job": job, **key}) is None


def test_delete_from_gateway_removes_only_that_group(pushgateway, pushed_metrics) -> None:
    c = M.Counter(unique("records"), "Records.")
    pushed_metrics.append(c)
    job = unique("job")
    M.push(pushgateway, job, {"instance": "one"})
    M.push(pushgateway, job, {"instance": "two"})
    assert group(pushgateway, {"job": job, "instance": "one"}) is not None
    # the Pushgateway answers a DELETE with 202 and applies it asynchronously: poll (bounded) until it is gone
    M.delete_from_gateway(pushgateway, job, {"instance": "one"})
    wait_for("group one deleted", lambda: group(pushgateway, {"job": job, "instance": "one"}) is None, 10.0)
    assert group(pushgateway, {"job": job, "instance": "two"}) is not None
    M.delete_from_gateway(pushgateway, job, {"instance": "two"})
    wait_for("group two deleted", lambda: group(pushgateway, {"job": job, "instance": "two"}) is None, 10.0)


def test_push_without_scheme_and_with_trailing_slash(pushgateway, pushed_metrics) -> None:
    c = M.Counter(unique("records"), "Records.")
    pushed_metrics.append(c)
    job = unique("job")
    M.push(pushgateway.removeprefix("http://"), job)
    M.pushadd(pushgateway + "/", job)
    assert group(pushgateway, {"job": job}) is not None
    M.delete_from_gateway(pushgateway, job)
    assert group(pushgateway, {"job": job}) is None


def test_gateway_errors_are_os_errors(pushgateway) -> None:
    with pytest.raises(OSError, match="404"):
        M.push(pushgateway.rstrip("/") + "/no/such/prefix", unique("job"))  # the gateway answers 404


@pytest.mark.parametrize("func", [M.push, M.pushadd, M.delete_from_gateway])
def test_push_to_a_closed_port_is_an_os_error(func) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(OSError):
        func(f"http://127.0.0.1:{port}", "fltest", timeout=5)


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (("", "job"), TypeError),
        ((None, "job"), TypeError),
        (("http://127.0.0.1:1", ""), TypeError),
        (("http://127.0.0.1:1", "job", "instance=x"), TypeError),
        (("http://127.0.0.1:1", "job", {"1abc": "x"}), ValueError),
        (("http://127.0.0.1:1", "job", {"has-dash": "x"}), ValueError),
        (("http://127.0.0.1:1", "job", {"__name__": "reserved"}), ValueError),
        (("http://127.0.0.1:1", "job", {"\u00fc": "x"}), ValueError),
    ],
)
def test_push_bad_arguments(args, exc) -> None:
    with pytest.raises(exc):
        M.push(*args)


# --- Prometheus scrapes over TLS with basic auth ----------------------------------------------------------------------


def test_prometheus_scrapes_over_tls_with_basic_auth(scraped_tls) -> None:
    url, prom = scraped_tls["url"], scraped_tls["prometheus"]

    def up(job: str, value: str) -> list[dict[str, Any]]:
        prom.check_alive()
        return [r for r in query(url, f'up{{job="{job}"}}') if r["value"][1] == value]

    wait_for("up == 1 over https with basic auth", lambda: up("ferrolab-tls", "1"), SCRAPED, prom.log)
    wait_for("up == 0 with a wrong password", lambda: up("ferrolab-tls-wrong-password", "0"), SCRAPED, prom.log)
    # the exposition arrived through TLS, gzip-compressed (Prometheus asks for gzip)
    rows = wait_for(
        "scrape_samples_scraped over https",
        lambda: [r for r in query(url, 'scrape_samples_scraped{job="ferrolab-tls"}') if float(r["value"][1]) > 0],
        SCRAPED,
        prom.log,
    )
    assert rows
    stats = scraped_tls["server"].stats()
    assert stats["gzipped"] > 0 and stats["unauthorized"] > 0
    assert scraped_tls["server"].url.startswith("https://127.0.0.1:")


def test_tls_server_answers_https_clients_and_refuses_plain_http(scraped_tls) -> None:
    import base64
    import ssl

    srv = scraped_tls["server"]
    ctx = ssl.create_default_context(cafile=str(scraped_tls["cert"]))
    auth = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    req = urllib.request.Request(f"https://localhost:{srv.port}/ready", headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"https://localhost:{srv.port}/ready", context=ctx, timeout=10)
    assert e.value.code == 401 and e.value.headers["WWW-Authenticate"].startswith("Basic")
    e.value.close()
    before = srv.stats()["tls_errors"]
    with pytest.raises((OSError, http.client.HTTPException)):  # a TLS alert, not an HTTP answer
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/ready", timeout=10).read()
    deadline = time.monotonic() + 10
    while srv.stats()["tls_errors"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.stats()["tls_errors"] > before
