"""benches/bench_system.py runs in its smoke mode, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MISSING, run_bench_smoke

pytestmark = pytest.mark.bench
pytest.importorskip("psutil", reason=MISSING + "psutil (the [test] extra)")



def test_bench_system_smoke(tmp_path: Path) -> None:
    proc, doc = run_bench_smoke("bench_system.py", tmp_path)
    assert doc["benchmark"] == "bench_system" and doc["smoke"] is True
    assert doc["failures"] == 0
    (row,) = doc["rows"]
    assert row["check"] == "ok", row["check_detail"]
    assert row["peer_s"] > 0 and row["ferrolab_s"] > 0
    assert row["ratio"] == row["peer_s"] / row["ferrolab_s"]
    assert len(row["peer_times_s"]) == len(row["ferrolab_times_s"]) == doc["repeat"]
    for key in ("cpu_model", "cores", "python", "ferrolab", "psutil", "partitions", "loadavg_end"):
        assert key in doc["machine"], key
    assert "targets missed" in proc.stdout
