"""The side-by-side benchmark runs in its smoke mode (tiny sizes), so it cannot rot: every op, every check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ferrolab as fl

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benches" / "bench_ops.py"


def test_bench_ops_smoke(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"bench_ops.py --smoke exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    doc = json.loads(out.read_text())
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
