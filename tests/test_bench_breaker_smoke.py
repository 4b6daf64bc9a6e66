"""The breaker benchmark runs in its smoke mode, so it cannot rot: every scenario, peer and behaviour check."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from conftest import run_bench_smoke

pytestmark = pytest.mark.bench


SCENARIOS = {
    "success (decorator, metrics off)",
    "success (decorator, metrics on)",
    "call(f, 1)",
    "with block",
    "rejected while open",
    "asyncio success (decorator)",
    "asyncio acall",
    "async with block",
    "asyncio rejected while open",
}


def test_bench_breaker_smoke(tmp_path: Path) -> None:
    proc, doc = run_bench_smoke("bench_breaker.py", tmp_path)
    assert "peer/ferrolab" in proc.stdout
    assert doc["smoke"] is True and doc["timer"] == "cpu"
    rows = doc["rows"]
    assert {r["scenario"] for r in rows} == SCENARIOS
    for s in SCENARIOS:
        impls = {r["impl"]: r for r in rows if r["scenario"] == s}
        assert {"direct", "ferrolab"} <= set(impls), s
        mine = impls["ferrolab"]
        assert math.isclose(mine["overhead_ns"], mine["per_call_ns"] - impls["direct"]["per_call_ns"]), s
        for name, r in impls.items():
            assert r["per_call_ns"] > 0 and r["loops"] >= 1, (s, name)
            if name not in ("direct", "ferrolab") and mine["overhead_ns"] > 0:
                assert math.isclose(r["ratio"], r["overhead_ns"] / mine["overhead_ns"]), (s, name)
        if s in doc["targets_ns"]:
            assert mine["target_ns"] == doc["targets_ns"][s] and isinstance(mine["meets_target"], bool), s

    installed = {p for p in ("pybreaker", "circuitbreaker", "aiobreaker", "purgatory") if importlib.util.find_spec(p)}
    benched = {r["impl"].split(" ")[0] for r in rows} | {h["impl"].split(" ")[0] for h in doc["half_open"]}
    assert installed <= benched, f"installed peers without a benchmark row: {sorted(installed - benched)}"
    assert set(doc["machine"]["peers"]) == {"pybreaker", "circuitbreaker", "aiobreaker", "purgatory"}

    # behaviour, not speed: ferrolab admits exactly one trial of 8 concurrent callers, and does not serialize I/O
    for h in doc["half_open"]:
        assert 0 <= h["admitted_while_trial_in_flight"] <= h["callers"] == 8
        if h["impl"].startswith("ferrolab"):
            assert h["admitted_while_trial_in_flight"] == 1, h
    tput = {t["impl"]: t for t in doc["io_throughput"]}
    assert {"direct", "ferrolab"} <= set(tput)
    assert all(t["calls_per_s"] > 0 for t in tput.values())
