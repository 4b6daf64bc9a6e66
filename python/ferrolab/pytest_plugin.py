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

Examples
--------
A test module of ops checks::

    import pytest

    @pytest.mark.ops
    def test_machine(fl_health, fl_system):
        assert fl_health.ok, str(fl_health)
        assert fl_system["memory"]["percent"] < 95

run as ``pytest --ops-report ops.json``.

>>> from ferrolab import pytest_plugin
>>> pytest_plugin.REPORT_VERSION
1
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["fl_health", "fl_system"]

#: ``version`` of the JSON that ``--ops-report`` writes.
REPORT_VERSION = 1

_HEALTH = pytest.StashKey[Any]()
_RECORDS = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferrolab", "ferrolab operational checks")
    group.addoption(
        "--ops-report",
        metavar="PATH",
        default=None,
        help="write a JSON report of the tests marked ops (name, outcome, duration, message, health report)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ops: an operational check (ferrolab plugin; reported by --ops-report)"
    )
    config.stash[_RECORDS] = {}


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if item.get_closest_marker("ops") is None:
        return report
    records = item.config.stash.get(_RECORDS, None)
    if records is None:
        return report
    rec = records.setdefault(
        item.nodeid, {"name": item.nodeid, "outcome": "passed", "duration": 0.0, "message": "", "health": None}
    )
    rec["duration"] += report.duration
    if report.failed:
        rec["outcome"] = "failed" if report.when == "call" else "error"
        rec["message"] = rec["message"] or _message(report)
    elif report.skipped and rec["outcome"] == "passed":
        xfail = hasattr(report, "wasxfail")
        rec["outcome"] = "xfailed" if xfail else "skipped"
        rec["message"] = report.wasxfail if xfail else _message(report)
    health = item.stash.get(_HEALTH, None)
    if health is not None:
        rec["health"] = health.to_dict()
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--ops-report", None)
    if not path:
        return
    records = list(session.config.stash.get(_RECORDS, {}).values())
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
