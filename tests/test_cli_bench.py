"""``ferrolab bench``: the kernel benchmark shipped in the package, run in its hidden tiny ``--smoke`` mode.

No test asserts on timings: only on the cases, the checks against NumPy, the output and the exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ferrolab import bench, cli, ops


def test_every_op_runs_and_matches_numpy() -> None:
    rows = bench.run("smoke", verbose=False)
    assert [r["op"] for r in rows] == list(bench.OPS)  # one size per op in smoke mode, in the table's order
    for r in rows:
        assert r["check"] == "ok", r
        assert r["numpy_s"] > 0 and r["ferrolab_s"] > 0 and r["ratio"] > 0


def test_modes_have_the_sizes_they_promise() -> None:
    assert set(bench.MODES) == {"full", "quick", "smoke"}
    assert len(bench.MODES["full"].vector) == 2 and len(bench.MODES["quick"].vector) == 1
    assert {c.op for c in bench.cases("full")} == set(bench.OPS)
    with pytest.raises(ValueError, match="unknown mode"):
        bench.run("huge", verbose=False)


def test_cli_smoke_prints_the_table_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--smoke", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "speed-up" in text and "geometric mean speed-up" in text
    for op in bench.OPS:
        assert f"\n{op} " in text, op
    doc = json.loads(out.read_text())
    assert doc["version"] == 1 and doc["mode"] == "smoke" and doc["mismatches"] == 0
    assert {r["op"] for r in doc["rows"]} == set(bench.OPS)
    assert doc["machine"]["numpy"] == np.__version__


def test_a_mismatch_exits_1(monkeypatch, capsys) -> None:
    real = ops.sum
    monkeypatch.setattr(ops, "sum", lambda x, *a, **k: real(x, *a, **k) + 1.0)
    assert cli.main(["bench", "--smoke"]) == 1
    captured = capsys.readouterr()
    assert "*** mismatch:" in captured.out
    assert "1 result(s) do not match NumPy" in captured.err and "sum n=1,000" in captured.err


def test_an_op_that_raises_is_reported_and_exits_1(monkeypatch, capsys) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(ops, "cdist", broken)
    assert cli.main(["bench", "--smoke"]) == 1
    captured = capsys.readouterr()
    assert "error: RuntimeError: kernel exploded" in captured.out
    assert "matmul" in captured.out  # the other ops still ran


def test_unwritable_json_exits_1(tmp_path, capsys) -> None:
    assert cli.main(["bench", "--smoke", "--json", str(tmp_path / "no" / "such" / "dir" / "b.json")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_usage_errors_exit_2_in_a_subprocess() -> None:
    bad = (["bench", "--quick", "--no-such-option"], ["bench", "--seed", "x"], ["bench", "--smoke", "--seed", "-1"],
           ["bench", "extra"])
    for args in bad:
        proc = subprocess.run([sys.executable, "-m", "ferrolab", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "usage: ferrolab" in proc.stderr and "Traceback" not in proc.stderr


def test_help_shows_examples_and_hides_smoke(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "ferrolab bench --quick" in text and "--json PATH" in text and "exit status" in text
    assert "--smoke" not in text
