"""The side-by-side benchmark runs in its smoke mode (tiny sizes), so it cannot rot: every op, every check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ferrolab as fl
import pytest
from conftest import run_bench_smoke

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parent.parent


def test_bench_ops_smoke(tmp_path: Path) -> None:
    proc, doc = run_bench_smoke("bench_ops.py", tmp_path)
    rows = doc["rows"]
    assert doc["smoke"] is True
    assert doc["mismatches"] == 0

    benched = {r["op"] for r in rows}
    missing = set(fl.ops.__all__) - benched
    assert not missing, f"ops without a benchmark row: {sorted(missing)}"

    for r in rows:
        where = f"{r['op']} [{r['variant']}] {r['dtype']} {r['size']} vs {r['peer']}"
        assert r["check"] == "ok", f"{where}: {r['check']} {r['check_detail']}"
        assert r["peer_s"] > 0 and r["ferrolab_s"] > 0, where
        assert r["ratio"] == r["peer_s"] / r["ferrolab_s"], where

    machine = doc["machine"]
    for key in ("cpu_model", "cores", "numpy", "ferrolab", "simd_level", "num_threads"):
        assert machine.get(key) is not None, key
    assert machine["simd_level"] == fl.simd_level()
    assert machine["num_threads"] == fl.num_threads()

    # the bandwidths of this run, and the streaming rows at their size carry their share of them
    bw = doc["bandwidth"]
    assert bw["read_GBps"] > 0 and bw["triad_GBps"] > 0, bw
    assert bw["read_method"] in bw["read_all_GBps"] and bw["triad_method"] in bw["triad_all_GBps"]
    shared = {(r["op"], r["bw_kind"]) for r in rows if r["bw_share"] is not None}
    assert ("sum", "read") in shared and ("axpy", "triad") in shared, shared
    assert "of bw" in proc.stdout and "measured bandwidth" in proc.stdout
    assert doc["contended"] is False and all("loaded" not in r for r in rows)


def test_bench_ops_smoke_contended(tmp_path: Path) -> None:
    """``--contended``: every case also timed under a one-core busy load, both sides' kept speed reported, and the
    busy child gone afterwards (structure only: no timing is asserted)."""
    out = tmp_path / "ops_contended.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benches" / "bench_ops.py"),
            "--smoke",
            "--contended",
            "--ops",
            "sum,axpy",
            "--json",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["contended"] is True
    assert {r["op"] for r in doc["rows"]} == {"sum", "axpy"}
    for r in doc["rows"]:
        ld = r["loaded"]
        assert ld["peer_s"] > 0 and ld["ferrolab_s"] > 0
        assert ld["peer_kept"] == r["peer_s"] / ld["peer_s"]
        assert ld["ferrolab_kept"] == r["ferrolab_s"] / ld["ferrolab_s"]
        assert isinstance(ld["loses_more"], bool)
    assert "under load" in proc.stdout and "ferrolab kept" in proc.stdout
    with pytest.raises(ProcessLookupError):  # killed and reaped by the benchmark
        os.kill(doc["busy_pid"], 0)


def test_bench_metrics_smoke(tmp_path: Path) -> None:
    proc, doc = run_bench_smoke("bench_metrics.py", tmp_path)
    assert doc["benchmark"] == "bench_metrics"
    assert doc["smoke"] is True
    assert doc["failures"] == 0
    for key in ("created", "repeat", "min_time_s", "series", "elapsed_s", "machine", "ratio", "targets_missed"):
        assert key in doc, key
    assert "tracing_rows" in doc and "tracing_error" in doc
    assert doc["tracing_error"] is None, doc["tracing_error"]
    expected = [
        "Counter.inc()",
        "labels(method=, code=).inc()",
        'labels("GET", "200").inc()',
        "Histogram.observe()",
        "Gauge.set()",
        "exposition",
        "instrumentation",
    ]
    assert doc["cases"] == expected
    rows = {r["case"]: r for r in doc["rows"]}
    assert list(rows) == expected
    for name, r in rows.items():
        assert r["check"] == "ok", f"{name}: {r['check']} {r['check_detail']}"
        assert r["peer_s"] > 0 and r["ferrolab_s"] > 0, name
        assert r["ratio"] == r["peer_s"] / r["ferrolab_s"], name
        assert len(r["peer_times_s"]) == len(r["ferrolab_times_s"]) == doc["repeat"], name
        assert set(r) >= {"target", "met", "size", "peer", "peer_loops", "ferrolab_loops"}, name
    inst = rows["instrumentation"]
    assert inst["overhead_pct"] == (inst["ferrolab_s"] / inst["peer_s"] - 1.0) * 100.0
    assert rows["exposition"]["size"].startswith(f"{doc['series']:,}")
    for key in ("cpu_model", "cores", "python", "ferrolab", "prometheus_client", "loadavg_start", "loadavg_end"):
        assert key in doc["machine"], key
    assert "instrumentation" in proc.stdout and "targets missed" in proc.stdout
    gz = doc["gzip"]
    assert gz["series"] == doc["series"] and 0 < gz["gzip_bytes"] < gz["bytes"], gz
    slow = {r["server"]: r for r in doc["slow_client_rows"]}
    assert list(slow) == ["ferrolab", "prometheus_client"]
    assert slow["ferrolab"]["scrapes_ok"] > 0 and slow["ferrolab"]["threads_under_load"] is not None
    assert "slow clients" in proc.stdout and "gzip of the exposition" in proc.stdout


def test_bench_metrics_cases_option_takes_names_that_hold_commas() -> None:
    sys.path.insert(0, str(REPO / "benches"))
    try:
        import bench_metrics
    finally:
        sys.path.remove(str(REPO / "benches"))
    wanted, unknown = bench_metrics.parse_cases('labels("GET", "200").inc(),labels(method=, code=).inc(), gzip,nope,,')
    assert wanted == ['labels("GET", "200").inc()', "labels(method=, code=).inc()", "gzip"]
    assert unknown == ["nope"]
    assert bench_metrics.parse_cases("labels(method=") == ([], ["labels(method="])


BENCH_GPU = REPO / "benches" / "bench_gpu.py"


@pytest.mark.parametrize("fake", [False, True])
def test_bench_gpu_smoke(tmp_path: Path, fake: bool) -> None:
    """Without a GPU the script says why and exits 0; with the fake GPU of the tests (computing on the CPU under the
    cuda labels) its rows and checks run, so the GPU benchmark cannot rot on machines without a GPU."""
    out = tmp_path / "g.json"
    code = (
        "import runpy, sys\n"
        + ("from ferrolab import _core\n_core._gpu_set_fake(True)\n" if fake else "")
        + f"sys.argv = ['bench_gpu.py', '--smoke', '--json', {str(out)!r}]\n"
        + f"sys.path.insert(0, {str(BENCH_GPU.parent)!r})\n"
        + f"runpy.run_path({str(BENCH_GPU)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and doc["benchmark"] == "bench_gpu"
    if not fake and not fl.gpu.is_available():
        assert doc["rows"] == [] and doc["gpu"]["reason"]
        assert "no usable GPU" in proc.stdout
        return
    assert {r["op"] for r in doc["rows"]} == {"sum", "mean", "var", "norm", "argmax"}
    for r in doc["rows"]:
        assert r["check"] == "ok", r
        assert r["ferrolab_s"] > 0 and r["ferrolab_gbps"] > 0
