"""The built-in health checks, the configuration file and `ferrolab health --config`."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ferrolab as fl
import pytest
from ferrolab import _checks, cli, health
from ferrolab.health import Status

StatVfs = namedtuple("StatVfs", "f_blocks f_frsize f_bavail")


def _snap(monkeypatch, **over):
    base = fl.system.snapshot()
    base.update(over)
    monkeypatch.setattr(_checks, "_snapshot", lambda: base)


@pytest.mark.parametrize("pct, status", [(50.0, Status.HEALTHY), (87.0, Status.WARNING), (93.0, Status.UNHEALTHY)])
def test_memory_thresholds(monkeypatch, pct, status):
    _snap(monkeypatch, memory={"total": 100 << 30, "available": int((100 - pct) * (1 << 30)),
                               "used": int(pct * (1 << 30)), "percent": pct})
    r = health.memory(max_percent=90)()
    assert r.status is status, r.message
    assert r.message.startswith(f"memory {pct:.0f}% used")
    if status is Status.UNHEALTHY:
        assert r.message.endswith("> 90%")


@pytest.mark.parametrize("free, status", [(50, Status.HEALTHY), (12, Status.WARNING), (7, Status.UNHEALTHY)])
def test_disk_thresholds_and_message(monkeypatch, free, status):
    monkeypatch.setattr(_checks.os, "statvfs", lambda p: StatVfs(100, 1 << 30, free))
    r = health.disk("/", min_free_percent=10)()
    assert r.status is status, r.message
    if status is Status.UNHEALTHY:
        assert r.message.startswith("disk / 93% full, 7% free")
        assert r.message.endswith("< 10%")


def test_disk_missing_path_is_unhealthy(tmp_path):
    r = health.disk(tmp_path / "nope")()
    assert r.status is Status.UNHEALTHY and "cannot read" in r.message


def test_disk_real_root_agrees_with_snapshot():
    root = [d for d in fl.system.snapshot()["disks"] if d["mount"] == "/"]
    r = health.disk("/", min_free_percent=0)()
    assert r.status is Status.HEALTHY
    if root:
        assert r.details["total"] == root[0]["total"]


@pytest.mark.parametrize("pct, status", [(10.0, Status.HEALTHY), (92.0, Status.WARNING), (99.0, Status.UNHEALTHY)])
def test_cpu_thresholds(monkeypatch, pct, status):
    _snap(monkeypatch, cpu_percent=pct)
    r = health.cpu(max_percent=95, interval=0)()
    assert r.status is status, r.message


@pytest.mark.parametrize("load5, status", [(1.0, Status.HEALTHY), (7.0, Status.WARNING), (9.0, Status.UNHEALTHY)])
def test_load_per_core(monkeypatch, load5, status):
    _snap(monkeypatch, cpu_count=4, load_avg=(0.5, load5, 0.5))
    r = health.load(max_per_core=2.0)()
    assert r.status is status, r.message
    assert "4 cores" in r.message


def test_breaker_states():
    now = [1000.0]
    b = fl.CircuitBreaker("test_health_checks_breaker", failure_threshold=1, reset_timeout=10.0,
                          clock=lambda: now[0])
    check = health.breaker("test_health_checks_breaker")
    assert check().status is Status.HEALTHY
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    r = check()
    assert r.status is Status.UNHEALTHY and "open" in r.message and "ZeroDivisionError" in r.message
    now[0] += 11.0
    with b:  # the trial call, in flight
        assert b.state == "half_open"
        r = check()
        assert r.status is Status.WARNING and "half-open" in r.message
    assert check().status is Status.HEALTHY
    r = health.breaker("no_such_breaker_here")()
    assert r.status is Status.UNHEALTHY and "no circuit breaker named" in r.message


def test_backup_fresh(tmp_path, monkeypatch):
    repo_path = tmp_path / "repo"
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    repo = fl.backup.Repository.init(repo_path, password="pw")
    assert health.backup_fresh(repo_path, 60, password="pw")().status is Status.UNHEALTHY
    repo.backup(data, time=datetime.now(UTC) - timedelta(hours=3))
    r = health.backup_fresh(repo_path, 3600, password="pw")()
    assert r.status is Status.UNHEALTHY and "3h 0m old > 1h" in r.message, r.message
    repo.backup(data)
    assert health.backup_fresh(repo_path, 3600, password="pw")().status is Status.HEALTHY
    # credentials from the environment, like `ferrolab backup`
    monkeypatch.setenv("FERROLAB_PASSWORD", "pw")
    assert health.backup_fresh(repo_path, 3600)().status is Status.HEALTHY
    r = health.backup_fresh(repo_path, 3600, password="wrong")()
    assert r.status is Status.UNHEALTHY and "WrongPassword" in r.message
    r = health.backup_fresh(tmp_path / "missing", 3600)()
    assert r.status is Status.UNHEALTHY and "RepositoryNotFound" in r.message


def test_gpu_check_follows_availability():
    r = health.gpu()()
    if fl.gpu.is_available():
        assert r.status is Status.HEALTHY
    else:
        assert r.status is Status.WARNING and r.message.startswith("no usable GPU: ")


@pytest.fixture
def web():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            code = int(self.path.strip("/") or 200)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    t.join()


def test_http(web):
    assert health.http(f"{web}/200")().status is Status.HEALTHY
    r = health.http(f"{web}/503")()
    assert r.status is Status.UNHEALTHY and "-> 503, expected 200" in r.message
    assert health.http(f"{web}/204", expect_status=204)().status is Status.HEALTHY
    with pytest.raises(ValueError):
        health.http("ftp://example.invalid/")
    for bad in (-1, 99, 600, 999):
        with pytest.raises(ValueError, match=r"^http\(\): argument 'expect_status' is -?\d+; expected an HTTP status"):
            health.http(f"{web}/200", expect_status=bad)


def test_builtin_checks_name_the_function_and_argument_of_a_bad_one() -> None:
    for bad in (5, None, b"/"):
        with pytest.raises(TypeError, match=r"^disk\(\): argument 'path' must be a str or os.PathLike\[str\]"):
            health.disk(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^backup_fresh\(\): argument 'repo' must be a str or os.PathLike"):
        health.backup_fresh(5, 60)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^process\(\): argument 'name' must be a str, not int"):
        health.process(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^process\(\): argument 'name' is empty"):
        health.process("")
    assert health.disk(Path("/"), min_free_percent=0)().status is Status.HEALTHY
    with pytest.raises(ValueError, match=r"^disk\(\): argument 'min_free_percent' must be in \[0, 100\], got an int"):
        health.disk("/", min_free_percent=10**400)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="platform: no /proc")
def test_process():
    me = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    r = health.process(me)()
    assert r.status is Status.HEALTHY and str(os.getpid()) in r.message or "..." in r.message
    assert health.process("surely-no-such-process")().status is Status.UNHEALTHY


def test_report_str_and_html():
    reg = health.HealthRegistry()
    reg.register("a<b", lambda: (Status.WARNING, "x & y"))
    report = reg.run()
    text = str(report)
    assert text.splitlines()[0].split() == ["CHECK", "STATUS", "TIME", "MESSAGE"]
    assert "overall: warning (1 check," in text
    html = report._repr_html_()
    assert html.startswith("<table>") and "a&lt;b" in html and "x &amp; y" in html


# --- configuration ---------------------------------------------------------------------------------------------
GOOD = """
[[check]]
name = "root"
kind = "disk"
parameters = { path = "/", min_free_percent = 100 }
severity = "warning"

[[check]]
name = "mem"
kind = "memory"
parameters = { max_percent = 100 }
"""


def test_config_severity_caps(tmp_path):
    p = tmp_path / "checks.toml"
    p.write_text(GOOD)
    report = health.load_config(p).run()
    assert report.checks["root"].status is Status.WARNING
    assert report.checks["root"].message.endswith("(severity: warning)")
    assert report.checks["mem"].status is Status.HEALTHY


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[[check]]\nname = 'x'\nkind = 'dsk'\n", "[[check]] #1 ('x'): unknown kind 'dsk'"),
        ("[[check]]\nname = 'x'\nkind = 'disk'\nparameters = { bogus = 1 }\n", "[[check]] #1 ('x'): kind 'disk'"),
        ("[[check]]\nname = 'x'\nkind = 'disk'\nseverity = 'fatal'\n", "'severity' must be one of"),
        ("[[check]]\nkind = 'disk'\n", "[[check]] #1: 'name'"),
        ("[[check]]\nname='a'\nkind='gpu'\n[[check]]\nname='a'\nkind='gpu'\n", "#2 ('a'): a check named 'a'"),
        ("[[check]\nname = 'x'\n", "line 1"),
        ("[[check]]\nname = 'x'\nkind = 'memory'\nparameters = { max_percent = 120 }\n", "must be in [0, 100]"),
    ],
)
def test_config_errors_name_the_entry(tmp_path, text, fragment):
    p = tmp_path / "checks.toml"
    p.write_text(text)
    with pytest.raises(health.ConfigError) as exc:
        health.load_config(p)
    assert fragment in str(exc.value)
    assert str(p) in str(exc.value)


@pytest.fixture
def empty_default(monkeypatch):
    registry = health.HealthRegistry()
    monkeypatch.setattr(health, "_DEFAULT", registry)
    return registry


def test_cli_config_exit_codes(tmp_path, capsys, empty_default):
    p = tmp_path / "checks.toml"
    p.write_text(GOOD)
    assert cli.main(["health", "--config", str(p)]) == 0  # unhealthy capped at warning
    assert "overall: warning (2 checks" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[[check]]\nname = 'x'\nkind = 'disk'\nparameters = { path = '/', min_free_percent = 100 }\n")
    assert cli.main(["health", "--config", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["checks"]["x"]["status"] == "unhealthy"


def test_cli_bad_config_is_exit_2(tmp_path, capsys, empty_default):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[check]]\nname = 'x'\nkind = 'nope'\n")
    assert cli.main(["health", "--config", str(bad)]) == 2
    assert "unknown kind 'nope'" in capsys.readouterr().err
    assert cli.main(["health", "--config", str(tmp_path / "missing.toml")]) == 2


def test_cli_defaults_without_configuration(capsys, empty_default):
    code = cli.main(["health", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert list(report["checks"]) == ["memory", "disk:/", "cpu"]
    assert code == (1 if report["status"] == "unhealthy" else 0)


def test_cli_subprocess_config(tmp_path):
    p = tmp_path / "checks.toml"
    p.write_text(GOOD)
    res = subprocess.run([sys.executable, "-m", "ferrolab", "health", "--config", str(p)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "root" in res.stdout and "severity: warning" in res.stdout
