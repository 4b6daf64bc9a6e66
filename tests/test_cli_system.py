"""`ferrolab system`: table, JSON, --watch until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from ferrolab import cli


def test_table(capsys):
    assert cli.main(["system"]) == 0
    out = capsys.readouterr().out
    for key in ("cpu", "memory", "network", "process"):
        assert any(line.startswith(key) for line in out.splitlines()), out


def test_json(capsys):
    assert cli.main(["system", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert set(s) == {"cpu_percent", "cpu_count", "load_avg", "memory", "disks", "network", "process", "gpus"}


def test_watch_rejects_non_positive(capsys):
    for bad in ("0", "-1", "nan", "inf", "1e10"):  # beyond 1e9 s, time.sleep would overflow time_t
        assert cli.main(["system", "--watch", bad]) == 2, bad
        assert "--watch needs a positive number of seconds up to 1e+09" in capsys.readouterr().err


def test_watch_into_a_closed_pipe_ends_quietly():
    proc = subprocess.run(
        f"{sys.executable} -m ferrolab system --watch 0.05 | head -1",
        shell=True, capture_output=True, text=True, timeout=60,
    )
    assert proc.stdout.count("\n") == 1, proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="platform: needs POSIX SIGINT")
@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_watch_prints_lines_and_stops_on_ctrl_c(extra):
    proc = subprocess.Popen([sys.executable, "-m", "ferrolab", "system", "--watch", "0.1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # not a terminal: one line per snapshot
        second = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    if extra:
        assert json.loads(first)["cpu_count"] >= 1 and json.loads(second)
    else:
        assert "cpu=" in first and "mem=" in second
    assert "Traceback" not in err
