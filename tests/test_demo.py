"""``ferrolab demo`` (python/ferrolab/demo.py) runs end to end in a fresh interpreter: exit 0, the header, one table
row per step with every check ``ok``, the instrumented call counts and the closing line. Timings are printed by the
demo but never asserted (only that they are numbers)."""

from __future__ import annotations

import re
import subprocess
import sys

import ferrolab as fl
import pytest
from ferrolab.demo import ADAM_STEPS

TIMEOUT_S = 300

STEPS = [
    "standardize",
    "zscore_anomalies",
    "quantile (3 q)",
    "histogram (100 bins)",
    "var + std",
    "matmul 2048x256 @ 256x128",
    "cdist 2048x64 (euclidean)",
]
# operations the steps call through the instrumentation seam (a step may call some more than once per repetition)
OPERATIONS = {"standardize", "zscore_anomalies", "quantile", "histogram", "var", "std", "matmul", "cdist", "adam_step"}

NUMBER = r"\d+\.\d+"
RATIO = r"(?:\d+\.\d|inf)x"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferrolab", "demo", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.mark.parametrize(
    ("args", "size", "repeat"),
    [((), 2_000_000, 15), (("--size", "20000", "--repeat", "2"), 20_000, 2)],
    ids=["defaults", "small"],
)
def test_demo_prints_the_table_and_every_check_passes(args: tuple[str, ...], size: int, repeat: int) -> None:
    proc = run_demo(*args)
    where = f"ferrolab demo {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, where
    assert "Traceback" not in proc.stderr, where
    lines = proc.stdout.splitlines()

    assert lines[0] == f"ferrolab demo: {size:,} sensor readings, simd={fl.simd_level()}, threads={fl.num_threads()}"
    assert re.fullmatch(r"step\s+ferrolab ms\s+numpy ms\s+speed-up\s+check", lines[1]), lines[1]

    steps = [*STEPS, f"{ADAM_STEPS} Adam steps ({size // 2:,} params)"]
    rows = lines[2 : 2 + len(steps)]
    assert len(rows) == len(steps), where
    for name, row in zip(steps, rows, strict=True):
        assert re.fullmatch(rf"{re.escape(name)}\s+{NUMBER}\s+{NUMBER}\s+{RATIO}\s+ok", row), row

    calls_line = lines[2 + len(steps)]
    assert calls_line.startswith("instrumented calls: "), calls_line
    calls = dict(item.split("=") for item in calls_line.removeprefix("instrumented calls: ").split(", "))
    counts = {k: int(v) for k, v in calls.items()}
    assert OPERATIONS <= set(counts), counts
    # every step runs once untimed (its result is checked) and `repeat` times timed on the ferrolab side; the Adam
    # step calls adam_step ADAM_STEPS times per run
    runs = repeat + 1
    assert counts["adam_step"] == ADAM_STEPS * runs, counts
    assert all(counts[op] >= runs and counts[op] % runs == 0 for op in OPERATIONS), counts

    assert lines[3 + len(steps) :] == ["all results match NumPy"], where


def test_demo_rejects_an_unknown_option() -> None:
    proc = run_demo("--no-such-option")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-option" in proc.stderr
