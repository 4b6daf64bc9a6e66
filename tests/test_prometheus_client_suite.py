"""prometheus_client's own test suites, run with ferrolab's metric classes swapped in.

The sdist of the installed prometheus_client version is fetched with pip into pytest's cache (never copied into this
repository); its ``tests/test_core.py`` and ``tests/test_exposition.py`` run in a child pytest whose conftest swaps
ferrolab's classes into the ``prometheus_client`` modules (``Counter``, ``Gauge``, ``Histogram``,
``CollectorRegistry``, ``generate_latest``...; what ferrolab does not have raises ``NotImplementedError``). The pass
rate of the tests that build a Counter, Gauge, Histogram, Summary, Info or Enum is asserted; the README's "Migrating
from prometheus_client" section lists every remaining failure and its reason.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import MISSING

SUITES = ("tests/test_core.py", "tests/test_exposition.py")
# the tests that build one of these metric classes are the ones a migration is judged by
TOUCHES = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(")
# the pass rate reached (of the tests that touch the classes above); it may only go up
MIN_PASS_RATE = 0.95

SHIM = '''
"""Swaps ferrolab's metric classes into prometheus_client before its tests are imported."""
import prometheus_client
import prometheus_client.core
import prometheus_client.exposition
import prometheus_client.metrics
import prometheus_client.openmetrics.exposition as om
import prometheus_client.validation

import ferrolab as fl


def _missing(name):
    class Missing:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError(f"ferrolab.metrics has no {name}")

    Missing.__name__ = name
    return Missing


_text = prometheus_client.exposition.generate_latest
_om = om.generate_latest


def generate_latest(registry=fl.metrics.REGISTRY, escaping=om.UNDERSCORES):
    if isinstance(registry, fl.metrics.CollectorRegistry):
        return fl.metrics.generate_latest(registry, escaping)
    return _text(registry, escaping)


def om_generate_latest(registry=fl.metrics.REGISTRY, escaping=om.UNDERSCORES, version="1.0.0"):
    if isinstance(registry, fl.metrics.CollectorRegistry):
        return fl.metrics.exposition(registry, openmetrics=True, escaping=escaping).encode()
    return _om(registry, escaping, version)


# the validation switch: ferrolab's, kept in step with prometheus_client's own (its parser and Metric use it)
def enable_legacy_validation():
    fl.metrics.enable_legacy_validation()
    _validation_on()


def disable_legacy_validation():
    fl.metrics.disable_legacy_validation()
    _validation_off()


_validation_on = prometheus_client.validation.enable_legacy_validation
_validation_off = prometheus_client.validation.disable_legacy_validation
prometheus_client.validation.enable_legacy_validation = enable_legacy_validation
prometheus_client.validation.disable_legacy_validation = disable_legacy_validation


SWAP = {
    name: getattr(fl.metrics, name, None) or _missing(name)
    for name in ("Counter", "Gauge", "Histogram", "Summary", "Info", "Enum", "CollectorRegistry",
                 "DuplicateTimeseries")
}
SWAP["REGISTRY"] = fl.metrics.REGISTRY
SWAP["generate_latest"] = generate_latest
for mod in (prometheus_client, prometheus_client.core, prometheus_client.metrics, prometheus_client.exposition):
    for name, value in SWAP.items():
        if hasattr(mod, name):
            setattr(mod, name, value)
om.generate_latest = om_generate_latest
'''


def _sdist(cache: Path, version: str) -> Path:
    """prometheus_client's sdist of ``version``, downloaded into ``cache`` once."""
    found = sorted(cache.glob(f"prometheus_client-{version}.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", f"prometheus-client=={version}", "--no-binary", ":all:"]
    cmd += ["--no-deps", "-d", str(cache)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    found = sorted(cache.glob(f"prometheus_client-{version}.tar.gz"))
    if r.returncode != 0 or not found:
        pytest.skip(f"{MISSING}prometheus_client's sdist {version} (pip download failed: {r.stderr.strip()[-300:]})")
    return found[0]


def _touching(path: Path) -> set[str]:
    """The ids (``Class::test``) of the tests in ``path`` that build one of the migrated metric classes."""
    src = path.read_text()
    tree = ast.parse(src)
    out: set[str] = set()
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
        setup = "".join(ast.get_source_segment(src, n) or "" for n in methods if n.name == "setUp")
        for n in methods:
            if n.name.startswith("test") and TOUCHES.search(setup + (ast.get_source_segment(src, n) or "")):
                out.add(f"{cls.name}::{n.name}")
    return out


@pytest.fixture(scope="module")
def suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    version = importlib.metadata.version("prometheus_client")
    # pytest's cache when it is on, else next to the temporary directories of the runs (kept between runs)
    cache_plugin = getattr(request.config, "cache", None)
    if cache_plugin is not None:
        cache = Path(cache_plugin.mkdir("prometheus_client_sdist"))
    else:
        cache = tmp_path_factory.getbasetemp().parent / "prometheus_client_sdist"
        cache.mkdir(exist_ok=True)
    tarball = _sdist(cache, version)
    work = tmp_path_factory.mktemp("prometheus_client_tests")
    with tarfile.open(tarball) as tf:
        for m in tf.getmembers():
            rel = m.name.split("/", 1)[-1]
            if rel in SUITES or (rel.startswith("tests/certs/") and m.isfile()):
                # the suites, and the certificates of their TLS tests (next to them, where they look)
                m.name = rel.removeprefix("tests/")
                tf.extract(m, work, filter="data")
    (work / "conftest.py").write_text(SHIM)
    report = work / "report.xml"
    # a child interpreter: the swap must not leak into this session's prometheus_client
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", str(work)]
    cmd += [f"--junitxml={report}", *(Path(s).name for s in SUITES)]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    results: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        cls = case.get("classname", "").rsplit(".", 1)[-1]
        key = f"{cls}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                message = (child.get("message") or "").splitlines()
                outcome = f"failed: {message[0][:200] if message else ''}"
            elif child.tag == "skipped":
                outcome = "skipped"
        results[key] = outcome
    touching = set().union(*(_touching(work / Path(s).name) for s in SUITES))
    return {"results": results, "touching": touching, "output": proc.stdout[-4000:]}


def test_pass_rate_of_prometheus_client_suites(suite: dict[str, object]) -> None:
    results: dict[str, str] = suite["results"]  # type: ignore[assignment]
    touching: set[str] = suite["touching"]  # type: ignore[assignment]
    judged = {k: v for k, v in results.items() if k in touching and v != "skipped"}
    assert judged, suite["output"]
    passed = sum(v == "passed" for v in judged.values())
    rate = passed / len(judged)
    failing = "\n".join(f"  {k}: {v}" for k, v in sorted(judged.items()) if v != "passed")
    print(f"\nprometheus_client suites, tests that build a metric: {passed}/{len(judged)} pass ({rate:.0%})")
    print(failing)
    assert rate >= MIN_PASS_RATE, f"{passed}/{len(judged)} pass ({rate:.0%}); failing:\n{failing}"
