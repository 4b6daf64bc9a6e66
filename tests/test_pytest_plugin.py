"""The ferrolab pytest plugin, run in inner pytest sessions (pytester)."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

pytest_plugins = ["pytester"]


def _plugin_args() -> list[str]:
    """``-p ferrolab.pytest_plugin`` unless the installed entry point already loads it."""
    names = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    return [] if "ferrolab.pytest_plugin" in names else ["-p", "ferrolab.pytest_plugin"]


TESTS = """
import pytest
from ferrolab import health

@pytest.fixture(autouse=True)
def checks(monkeypatch):
    registry = health.HealthRegistry()
    registry.register("db", lambda: (health.Status.WARNING, "slow replica"))
    monkeypatch.setattr(health, "_DEFAULT", registry)

@pytest.mark.ops
def test_health_ok(fl_health):
    assert fl_health.ok
    assert fl_health.checks["db"].message == "slow replica"

@pytest.mark.ops
def test_system(fl_system):
    assert fl_system["memory"]["total"] > 0

@pytest.mark.ops
def test_fails(fl_health):
    assert fl_health.status is health.Status.HEALTHY, "not healthy: " + str(fl_health.status.value)

@pytest.mark.ops
def test_skipped():
    pytest.skip("no database here")

def test_not_ops():
    pass
"""


def test_fixtures_marker_and_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_ops_checks=TESTS)
    out = pytester.path / "reports" / "ops.json"
    result = pytester.runpytest(*_plugin_args(), "--strict-markers", f"--ops-report={out}")
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    doc = json.loads(out.read_text())
    assert doc["version"] == 1
    assert doc["summary"] == {"passed": 2, "failed": 1, "skipped": 1}
    tests = {t["name"].split("::")[-1]: t for t in doc["tests"]}
    assert set(tests) == {"test_health_ok", "test_system", "test_fails", "test_skipped"}
    ok = tests["test_health_ok"]
    assert ok["outcome"] == "passed" and ok["message"] == "" and ok["duration"] >= 0
    assert ok["health"]["status"] == "warning" and ok["health"]["checks"]["db"]["message"] == "slow replica"
    assert tests["test_system"]["health"] is None
    failed = tests["test_fails"]
    assert failed["outcome"] == "failed" and "not healthy: warning" in failed["message"]
    assert failed["health"]["status"] == "warning"
    assert tests["test_skipped"] == {**tests["test_skipped"], "outcome": "skipped", "message": "no database here"}


def test_marker_is_registered_under_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n\n@pytest.mark.ops\ndef test_a():\n    pass\n")
    result = pytester.runpytest(*_plugin_args(), "--strict-markers", "--markers")
    assert any(line.startswith("@pytest.mark.ops:") for line in result.outlines)
    result = pytester.runpytest(*_plugin_args(), "--strict-markers")
    result.assert_outcomes(passed=1)


def test_no_report_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n\n@pytest.mark.ops\ndef test_a(fl_system):\n    pass\n")
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(passed=1)
    assert not list(pytester.path.glob("*.json"))


def test_setup_error_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n\n@pytest.fixture\ndef broken():\n    raise RuntimeError('no credentials')\n\n"
        "@pytest.mark.ops\ndef test_a(broken):\n    pass\n"
    )
    out = pytester.path / "ops.json"
    result = pytester.runpytest(*_plugin_args(), f"--ops-report={out}")
    result.assert_outcomes(errors=1)
    (rec,) = json.loads(out.read_text())["tests"]
    assert rec["outcome"] == "error" and "no credentials" in rec["message"]


def test_report_under_xdist_has_every_workers_tests(pytester: pytest.Pytester) -> None:
    # with pytest-xdist the tests run in worker processes: the controller writes the report (the workers write
    # nothing), and it holds every test, its outcome and its health report
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (pip install pytest-xdist)")
    pytester.makepyfile(test_inner_ops_checks=TESTS)
    out = pytester.path / "ops.json"
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "xdist", "-n", "2", f"--ops-report={out}")
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    doc = json.loads(out.read_text())
    assert doc["summary"] == {"passed": 2, "failed": 1, "skipped": 1}
    tests = {t["name"].split("::")[-1]: t for t in doc["tests"]}
    assert set(tests) == {"test_health_ok", "test_system", "test_fails", "test_skipped"}
    assert tests["test_health_ok"]["health"]["checks"]["db"]["message"] == "slow replica"
    assert tests["test_fails"]["outcome"] == "failed" and "not healthy: warning" in tests["test_fails"]["message"]
    assert tests["test_skipped"]["message"] == "no database here"
    assert tests["test_system"]["health"] is None


def test_a_check_whose_xdist_worker_crashes_is_not_reported_as_passed(pytester: pytest.Pytester) -> None:
    # xdist reports the crash itself, in a report without the plugin's attribute: it still counts for the check
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (pip install pytest-xdist)")
    pytester.makepyfile(
        test_inner_crash="import os, pytest\n\n@pytest.mark.ops\ndef test_ok():\n    pass\n\n"
        "@pytest.mark.ops\ndef test_crash():\n    os._exit(1)\n"
    )
    out = pytester.path / "ops.json"
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "xdist", "-n", "2", f"--ops-report={out}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    tests = {t["name"].split("::")[-1]: t for t in json.loads(out.read_text())["tests"]}
    assert tests["test_ok"]["outcome"] == "passed"
    assert tests["test_crash"]["outcome"] in ("failed", "error"), tests["test_crash"]
    assert "crashed" in tests["test_crash"]["message"]
