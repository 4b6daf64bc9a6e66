"""``pytest --ops-push``: the plugin pushes the ops check results to a real Pushgateway (inner pytester sessions).

The Pushgateway is started on 127.0.0.1 by the fixture of test_integration_prometheus (skips with MISSING when the
binary is not installed).
"""

from __future__ import annotations

import socket
import time

import pytest
from test_integration_prometheus import fetch_json, free_port, pushgateway  # noqa: F401 - the fixture is used
from test_pytest_plugin import _plugin_args

pytestmark = pytest.mark.integration

pytest_plugins = ["pytester"]

CHECKS = """
import pytest

@pytest.mark.ops
def test_disk_ok():
    pass

@pytest.mark.ops
def test_db_reachable():
    assert False, "db down"

@pytest.mark.ops
def test_not_here():
    pytest.skip("no GPU")

def test_not_an_ops_check():
    assert False
"""


def _group(gateway: str, job: str) -> dict | None:
    doc = fetch_json(f"{gateway}/api/v1/metrics")
    assert doc["status"] == "success", doc
    for g in doc["data"]:
        if g["labels"].get("job") == job:
            return g
    return None


def _values(g: dict, name: str) -> dict[str, float]:
    return {m["labels"].get("check", ""): float(m["value"]) for m in g[name]["metrics"]}


def test_ops_push_replaces_the_group(pytester: pytest.Pytester, pushgateway) -> None:  # noqa: F811
    pytester.makepyfile(test_inner_push_checks=CHECKS)
    job = "fltest_ops_push_1"
    before = time.time()
    result = pytester.runpytest(*_plugin_args(), f"--ops-push={pushgateway}", f"--ops-push-job={job}")
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*ferrolab --ops-push: 2 check result(s) pushed to*"])
    g = _group(pushgateway, job)
    assert g is not None
    assert g["labels"] == {"job": job, "instance": socket.gethostname()}
    assert g["ferrolab_ops_check_success"]["type"] == "GAUGE"
    assert _values(g, "ferrolab_ops_check_success") == {
        "test_inner_push_checks.py::test_disk_ok": 1.0,
        "test_inner_push_checks.py::test_db_reachable": 0.0,
    }
    (stamp,) = _values(g, "ferrolab_ops_last_run_timestamp_seconds").values()
    assert before - 1 <= stamp <= time.time() + 1

    # the next run replaces the group: the fixed check is 1, a removed check is gone
    pytester.makepyfile(
        test_inner_push_checks="import pytest\n\n@pytest.mark.ops\ndef test_db_reachable():\n    pass\n"
    )
    result = pytester.runpytest(*_plugin_args(), f"--ops-push={pushgateway}", f"--ops-push-job={job}")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    g = _group(pushgateway, job)
    assert g is not None
    assert _values(g, "ferrolab_ops_check_success") == {"test_inner_push_checks.py::test_db_reachable": 1.0}
    (stamp2,) = _values(g, "ferrolab_ops_last_run_timestamp_seconds").values()
    assert stamp2 >= stamp


def test_ops_push_default_job_and_odd_test_ids(pytester: pytest.Pytester, pushgateway) -> None:  # noqa: F811
    pytester.makepyfile(
        test_inner_push_params="import pytest\n\n@pytest.mark.ops\n"
        '@pytest.mark.parametrize("p", [\'a "q"\', "b\\\\c"])\n'
        "def test_param(p):\n    pass\n"
    )
    result = pytester.runpytest(*_plugin_args(), f"--ops-push={pushgateway}")
    result.assert_outcomes(passed=2)
    g = _group(pushgateway, "ferrolab_ops")
    assert g is not None
    assert _values(g, "ferrolab_ops_check_success") == {
        'test_inner_push_params.py::test_param[a "q"]': 1.0,
        "test_inner_push_params.py::test_param[b\\\\c]": 1.0,
    }


def test_ops_push_to_an_unreachable_gateway_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_push_ok="import pytest\n\n@pytest.mark.ops\ndef test_ok():\n    pass\n")
    port = free_port()  # nothing listens there
    result = pytester.runpytest(*_plugin_args(), f"--ops-push=http://127.0.0.1:{port}")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*ferrolab --ops-push: push(): cannot reach*"])


def test_ops_push_and_report_together(pytester: pytest.Pytester, pushgateway) -> None:  # noqa: F811
    pytester.makepyfile(test_inner_push_both="import pytest\n\n@pytest.mark.ops\ndef test_ok():\n    pass\n")
    out = pytester.path / "ops.json"
    result = pytester.runpytest(
        *_plugin_args(), f"--ops-push={pushgateway}", "--ops-push-job=fltest_ops_push_both", f"--ops-report={out}"
    )
    assert result.ret == pytest.ExitCode.OK
    assert out.is_file()
    g = _group(pushgateway, "fltest_ops_push_both")
    assert g is not None and _values(g, "ferrolab_ops_check_success") == {"test_inner_push_both.py::test_ok": 1.0}


def test_ops_push_under_xdist_pushes_every_workers_checks(pytester: pytest.Pytester, pushgateway) -> None:  # noqa: F811
    # the workers push nothing (each would replace the group with its share); the controller pushes all checks
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (pip install pytest-xdist)")
    pytester.makepyfile(test_inner_push_checks=CHECKS)
    job = "fltest_ops_push_xdist"
    result = pytester.runpytest_subprocess(
        *_plugin_args(), "-p", "xdist", "-n", "2", f"--ops-push={pushgateway}", f"--ops-push-job={job}"
    )
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*ferrolab --ops-push: 2 check result(s) pushed to*"])
    g = _group(pushgateway, job)
    assert g is not None
    assert _values(g, "ferrolab_ops_check_success") == {
        "test_inner_push_checks.py::test_disk_ok": 1.0,
        "test_inner_push_checks.py::test_db_reachable": 0.0,
    }
