"""fl.system.register_metrics() against the real node_exporter: the shared series agree.

Debian's ``prometheus-node-exporter`` is started on 127.0.0.1 with a free port (the test skips with the reason
when the binary is missing); both expositions are scraped back to back and compared family by family: the same
label sets, equal totals (memory, file system sizes) and the moving numbers within a tolerance.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import ferrolab as fl
import pytest
from conftest import MISSING
from test_integration_prometheus import Component, free_port, wait_for

pytestmark = pytest.mark.integration

BINARY = "prometheus-node-exporter"

# family -> how the values must agree: "equal", ("rel", tolerance), ("abs", tolerance)
FAMILIES = {
    "node_load1": ("abs", 1.5),
    "node_load5": ("abs", 1.0),
    "node_load15": ("abs", 1.0),
    "node_cpu_seconds_total": ("abs", 5.0),
    "node_memory_MemTotal_bytes": "equal",
    "node_memory_MemAvailable_bytes": ("rel", 0.05),
    "node_memory_MemFree_bytes": ("rel", 0.10),
    "node_filesystem_size_bytes": "equal",
    "node_filesystem_avail_bytes": ("rel", 0.01),
    "node_filesystem_free_bytes": ("rel", 0.01),
    "node_disk_io_time_seconds_total": ("abs", 5.0),
    "node_network_receive_bytes_total": ("rel", 0.05),
    "node_network_transmit_bytes_total": ("rel", 0.05),
}

Series = dict[str, dict[frozenset[tuple[str, str]], float]]


def parse(text: str) -> tuple[Series, dict[str, str]]:
    """The samples of FAMILIES in a text exposition, and each family's TYPE."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Series = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in FAMILIES:
                out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
                types[s.name] = fam.type
    return out, types


@pytest.fixture(scope="module")
def node_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = shutil.which(BINARY)
    if path is None:
        pytest.skip(f"{MISSING}{BINARY} (tools/install_components.sh)")
    port = free_port()
    log = Path(tmp_path_factory.mktemp("node_exporter")) / "node_exporter.log"
    c = Component(BINARY, [path, f"--web.listen-address=127.0.0.1:{port}"], log)
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def up() -> bool:
            c.check_alive()
            with urllib.request.urlopen(url, timeout=5) as r:
                return b"node_load1" in r.read()

        wait_for("node_exporter's /metrics", up, 60.0, log)
        yield url
    finally:
        c.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="platform: node_exporter's families are Linux's")
def test_shared_series_agree_with_node_exporter(node_exporter: str) -> None:
    fl.system.register_metrics()
    with urllib.request.urlopen(node_exporter, timeout=10) as r:
        theirs_text = r.read().decode()
    ours_text = fl.metrics.exposition()
    t0 = time.monotonic()
    theirs, their_types = parse(theirs_text)
    ours, our_types = parse(ours_text)
    assert time.monotonic() - t0 < 30
    for name, rule in FAMILIES.items():
        if name not in theirs:
            assert name not in ours or not ours[name], f"{name}: node_exporter has none, ferrolab has {ours[name]}"
            continue
        assert name in ours, f"{name} missing from ferrolab's exposition"
        assert our_types[name] == their_types[name], name
        assert set(ours[name]) == set(theirs[name]), f"{name}: label sets differ"
        for labels, want in theirs[name].items():
            got = ours[name][labels]
            where = f"{name}{dict(labels)}: ferrolab {got} vs node_exporter {want}"
            if rule == "equal":
                assert got == want, where
            elif rule[0] == "rel":
                assert abs(got - want) <= rule[1] * max(abs(want), 1e6), where
            else:
                assert abs(got - want) <= rule[1], where


def test_register_twice_is_a_no_op_and_registry_must_be_none() -> None:
    fl.system.register_metrics()
    assert fl.system.register_metrics() is False
    text = fl.metrics.exposition()
    assert text.count("# TYPE node_load1 gauge") == 1
    with pytest.raises(ValueError, match="registry"):
        fl.system.register_metrics(registry=object())  # type: ignore[arg-type]


def test_cli_smoke_of_the_binary_version() -> None:
    path = shutil.which(BINARY)
    if path is None:
        pytest.skip(f"{MISSING}{BINARY} (tools/install_components.sh)")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    assert "node_exporter" in (out.stdout + out.stderr)
