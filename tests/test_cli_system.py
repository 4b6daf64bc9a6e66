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
    assert cli.main(["system", "--watch", "0"]) == 2
    assert "--watch" in capsys.readouterr().err


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
