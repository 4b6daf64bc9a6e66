"""benches/bench_dask.py runs in its smoke mode (a tiny array on a 2-process LocalCluster), so it cannot rot."""

from __future__ import annotations

import pytest
from conftest import MISSING, run_bench_smoke

pytestmark = pytest.mark.bench


def test_bench_dask_smoke(tmp_path) -> None:
    pytest.importorskip("distributed", reason=f"{MISSING}dask[distributed] (pip install -e '.[test]')")
    _proc, doc = run_bench_smoke("bench_dask.py", tmp_path)
    assert doc["benchmark"] == "bench_dask"
    assert doc["smoke"] is True
    assert doc["mismatches"] == 0
    assert [r["op"] for r in doc["rows"]] == ["var", "std", "standardize", "quantile"]
    for r in doc["rows"]:
        assert r["check"] == "ok", r
        assert r["peer_s"] > 0 and r["ferrolab_s"] > 0
        assert r["ratio"] == r["peer_s"] / r["ferrolab_s"]
