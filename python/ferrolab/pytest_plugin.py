"""The ``ferrolab`` pytest plugin (entry point ``pytest11``): operational checks written as tests.

Fixtures
    ``fl_health``: runs :func:`ferrolab.health.default_registry` once for the test and returns the
    :class:`~ferrolab.health.HealthReport`; ``fl_system``: a :func:`ferrolab.system.snapshot`.
Marker
    ``@pytest.mark.ops``: an operational check (registered, so it works under ``--strict-markers``).
Options
    ``--ops-report PATH``: write a JSON report of every ``ops``-marked test: ``name``, ``outcome`` (passed, failed,
    skipped, error), ``duration`` (seconds, all phases), ``message`` (the failure or skip reason, "" when it passed)
    and ``health`` (the report's ``to_dict()`` when the test used ``fl_health``, else None).
    ``--ops-push GATEWAY``: after the session, replace the group ``job=<--ops-push-job>, instance=<host name>`` on
    a Prometheus Pushgateway (HTTP PUT) with ``ferrolab_ops_check_success{check="<test node id>"}`` (1 passed or
    xfailed, 0 failed or error; a skipped check is left out) and ``ferrolab_ops_last_run_timestamp_seconds``.
    The shipped alert rules ``FerrolabOpsCheckFailed`` and ``FerrolabOpsChecksNotRunning`` fire on them. A push
    that fails is reported and makes the exit status 1 (a cron job then notices it).
    ``--ops-push-job NAME``: the ``job`` label of the pushed group (default ``ferrolab_ops``).
pytest-xdist
    With ``-n N`` the report and the push come from the controller and hold the checks of every worker (the
    workers write and push nothing).

Examples
--------
A test module of ops checks::

    import pytest

    @pytest.mark.ops
    def test_machine(fl_health, fl_system):
        assert fl_health.ok, str(fl_health)
        assert fl_system["memory"]["percent"] < 95

run as ``pytest --ops-report ops.json`` or, from cron, ``pytest --ops-push http://pushgateway:9091``.

>>> from ferrolab import pytest_plugin
>>> pytest_plugin.REPORT_VERSION
1
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["fl_health", "fl_system"]

#: ``version`` of the JSON that ``--ops-report`` writes.
REPORT_VERSION = 1

#: ``job`` label of the group that ``--ops-push`` replaces, unless ``--ops-push-job`` names another.
DEFAULT_PUSH_JOB = "ferrolab_ops"

#: Outcome -> value of ``ferrolab_ops_check_success`` (outcomes not listed, i.e. skipped, are not pushed).
_SUCCESS = {"passed": 1, "xfailed": 1, "failed": 0, "error": 0}

_HEALTH = pytest.StashKey[Any]()
_RECORDS = pytest.StashKey[dict[str, dict[str, Any]]]()
_RECORDER = "ferrolab-ops-recorder"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferrolab", "ferrolab operational checks")
    group.addoption(
        "--ops-report",
        metavar="PATH",
        default=None,
        help="write a JSON report of the tests marked ops (name, outcome, duration, message, health report)",
    )
    group.addoption(
        "--ops-push",
        metavar="GATEWAY",
        default=None,
        help="after the session, push ferrolab_ops_check_success{check} (1/0 per ops test) and "
        "ferrolab_ops_last_run_timestamp_seconds to the Pushgateway at GATEWAY (e.g. http://127.0.0.1:9091)",
    )
    group.addoption(
        "--ops-push-job",
        metavar="NAME",
        default=DEFAULT_PUSH_JOB,
        help=f"job label of the pushed group (default {DEFAULT_PUSH_JOB}; the instance label is the host name)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ops: an operational check (ferrolab plugin; reported by --ops-report)"
    )
    recorder = config.pluginmanager.get_plugin(_RECORDER)
    if recorder is None:
        recorder = _Recorder({})
        config.pluginmanager.register(recorder, _RECORDER)
    config.stash[_RECORDS] = recorder.records


@pytest.fixture
def fl_health(request: pytest.FixtureRequest) -> Any:
    """The :class:`~ferrolab.health.HealthReport` of a run of the default registry."""
    from . import health

    report = health.default_registry().run()
    request.node.stash[_HEALTH] = report
    return report


@pytest.fixture
def fl_system() -> dict[str, Any]:
    """A :func:`ferrolab.system.snapshot` taken for the test."""
    from . import system

    return system.snapshot()


def _message(report: pytest.TestReport) -> str:
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    return report.longreprtext


#: Name of the attribute an ``ops`` test's reports carry: ``{"health": <the report's to_dict() or None>}``. A report
#: attribute travels with the report from a pytest-xdist worker to the controller (xdist serializes the
#: attributes of a report), so the controller, which writes the JSON report and pushes, sees every worker's tests.
_REPORT_ATTR = "ferrolab_ops"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if item.get_closest_marker("ops") is not None:
        health = item.stash.get(_HEALTH, None)
        setattr(report, _REPORT_ATTR, {"health": None if health is None else health.to_dict()})
    return report


class _Recorder:
    """Adds each phase of an ``ops`` test to its record, in the process that reports the test: the only process
    without pytest-xdist, the controller with it (registered as a plugin, so the hook sees the config's records)."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ops = getattr(report, _REPORT_ATTR, None)
        # a report without the attribute still counts for a check already recorded: pytest-xdist's own report of a
        # worker that crashed while running it
        if not isinstance(ops, dict) and report.nodeid not in self.records:
            return
        rec = self.records.setdefault(
            report.nodeid,
            {"name": report.nodeid, "outcome": "passed", "duration": 0.0, "message": "", "health": None},
        )
        rec["duration"] += report.duration
        if report.failed:
            rec["outcome"] = "failed" if report.when == "call" else "error"
            rec["message"] = rec["message"] or _message(report)
        elif report.skipped and rec["outcome"] == "passed":
            xfail = hasattr(report, "wasxfail")
            rec["outcome"] = "xfailed" if xfail else "skipped"
            rec["message"] = report.wasxfail if xfail else _message(report)
        if isinstance(ops, dict) and ops.get("health") is not None:
            rec["health"] = ops["health"]


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def push_text(records: list[dict[str, Any]], timestamp: float) -> str:
    """The text exposition that ``--ops-push`` sends for ``records`` (the ``tests`` of the JSON report).

    >>> print(push_text([{"name": "t.py::test_a", "outcome": "passed"},
    ...                  {"name": "t.py::test_b", "outcome": "failed"},
    ...                  {"name": "t.py::test_c", "outcome": "skipped"}], 1700000000.0), end="")
    # HELP ferrolab_ops_check_success 1 when the ops check passed in the last run, 0 when it failed.
    # TYPE ferrolab_ops_check_success gauge
    ferrolab_ops_check_success{check="t.py::test_a"} 1
    ferrolab_ops_check_success{check="t.py::test_b"} 0
    # HELP ferrolab_ops_last_run_timestamp_seconds Unix time at which the last run of the ops checks finished.
    # TYPE ferrolab_ops_last_run_timestamp_seconds gauge
    ferrolab_ops_last_run_timestamp_seconds 1700000000.000
    """
    lines = [
        "# HELP ferrolab_ops_check_success 1 when the ops check passed in the last run, 0 when it failed.",
        "# TYPE ferrolab_ops_check_success gauge",
    ]
    for r in records:
        value = _SUCCESS.get(r["outcome"])
        if value is not None:
            lines.append(f'ferrolab_ops_check_success{{check="{_label_value(r["name"])}"}} {value}')
    if not math.isfinite(timestamp):
        raise ValueError(f"push_text(): the timestamp must be finite, got {timestamp!r}")
    lines += [
        "# HELP ferrolab_ops_last_run_timestamp_seconds Unix time at which the last run of the ops checks finished.",
        "# TYPE ferrolab_ops_last_run_timestamp_seconds gauge",
        f"ferrolab_ops_last_run_timestamp_seconds {timestamp:.3f}",
    ]
    return "\n".join(lines) + "\n"


_PUSH_RESULT = pytest.StashKey[tuple[bool, str]]()


def _push(session: pytest.Session, gateway: str, records: list[dict[str, Any]]) -> None:
    """Push the results; the outcome is shown in the terminal summary, a failure makes the exit status 1."""
    from . import metrics

    job = session.config.getoption("--ops-push-job") or DEFAULT_PUSH_JOB
    try:
        target = metrics._gateway_url("push", gateway, job, {"instance": socket.gethostname()})
        metrics._send("push", "PUT", target, push_text(records, time.time()).encode(), 30.0)
    except (OSError, TypeError, ValueError) as exc:
        session.config.stash[_PUSH_RESULT] = (False, f"ferrolab --ops-push: {exc}")
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if session.config.pluginmanager.get_plugin("terminalreporter") is None:
            print(f"ferrolab --ops-push: {exc}", file=sys.stderr)
        return
    n = sum(1 for r in records if r["outcome"] in _SUCCESS)
    # no gateway password in the summary line
    session.config.stash[_PUSH_RESULT] = (True, f"ferrolab --ops-push: {n} check result(s) pushed to {target.shown}")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    result = config.stash.get(_PUSH_RESULT, None)
    if result is not None:
        ok, line = result
        terminalreporter.write_line(line, red=not ok, bold=not ok)


def _is_xdist_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: it sends its reports to the controller, which writes the report and pushes."""
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _is_xdist_worker(session.config):
        return
    records = list(session.config.stash.get(_RECORDS, {}).values())
    gateway = session.config.getoption("--ops-push", None)
    if gateway:
        _push(session, gateway, records)
    path = session.config.getoption("--ops-report", None)
    if not path:
        return
    counts: dict[str, int] = {}
    for r in records:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    doc = {
        "version": REPORT_VERSION,
        "created": time.time(),
        "host": os.uname().nodename if hasattr(os, "uname") else "",
        "summary": counts,
        "tests": records,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str), encoding="utf-8")
