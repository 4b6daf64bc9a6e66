"""fl.health: statuses, the registry, report aggregation, failure handling, timeouts and the /health response."""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import threading

import numpy as np
import pytest
from ferrolab import health
from ferrolab.health import CheckResult, HealthRegistry, HealthReport, Status

H, W, U = Status.HEALTHY, Status.WARNING, Status.UNHEALTHY

# Bound on how long a test waits for a background check thread; never reached when the code is right.
WAIT = 30.0


def run_one(check, **kw) -> CheckResult:
    reg = HealthRegistry()
    reg.register("c", check, **kw)
    report = reg.run()
    assert list(report.checks) == ["c"]
    return report.checks["c"]


# --- Status -------------------------------------------------------------------------------------------------------


def test_status_values_and_lookup():
    assert [s.value for s in Status] == ["healthy", "warning", "unhealthy"]
    assert Status("warning") is W
    assert [s.severity for s in Status] == [0, 1, 2]


def test_status_is_ordered_by_severity():
    assert H < W < U
    assert U > W > H
    assert H <= H and U >= U and not (W < W)
    assert max([H, U, W]) is U
    assert min([U, W]) is W
    assert sorted([U, H, W]) == [H, W, U]


def test_status_does_not_compare_with_other_types():
    with pytest.raises(TypeError):
        _ = H < 1
    with pytest.raises(TypeError):
        _ = U > "healthy"
    assert H != "healthy"


# --- what a check may return ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_plain_status(status):
    r = run_one(lambda: status)
    assert r.status is status
    assert r.message == ""
    assert r.details is None


def test_status_with_message_and_details():
    r = run_one(lambda: (W, "disk 91% full"))
    assert (r.status, r.message, r.details) == (W, "disk 91% full", None)
    r = run_one(lambda: (U, "down", {"host": "db1"}))
    assert (r.status, r.message, r.details) == (U, "down", {"host": "db1"})


def test_check_result_is_kept_and_duration_is_measured():
    r = run_one(lambda: CheckResult(W, "slow", duration_seconds=12345.0, details={"ms": 812}))
    assert (r.status, r.message, r.details) == (W, "slow", {"ms": 812})
    # the registry replaces the duration the check claimed with the one it measured
    assert r.duration_seconds != 12345.0
    assert r.duration_seconds >= 0


def test_bool_results():
    assert run_one(lambda: True).status is H
    r = run_one(lambda: False)
    assert r.status is U
    assert "False" in r.message
    assert run_one(lambda: (True, "fine")).status is H
    assert run_one(lambda: (False, "bad")).message == "bad"
    # a NumPy comparison's result is a bool too
    import numpy as np

    assert run_one(lambda: np.float64(3.0) < 5).status is H
    assert run_one(lambda: np.True_).status is H
    assert run_one(lambda: np.False_).status is U
    assert run_one(lambda: (np.bool_(True), "fine")).status is H


def test_async_check():
    async def check():
        await asyncio.sleep(0)
        return W, "from a coroutine"

    r = run_one(check)
    assert (r.status, r.message) == (W, "from a coroutine")


@pytest.mark.parametrize(
    "value, shown",
    [
        (None, "None"),
        ("healthy", "str 'healthy'"),
        (1, "int 1"),
        ((H,), "tuple"),
        ((H, 3), "tuple"),
        (("healthy", "ok"), "tuple"),
        ((H, "ok", [1, 2]), "tuple"),
        ((H, "a", None, "b"), "tuple"),
        ([H, "ok"], "list"),
    ],
)
def test_bad_return_values_are_unhealthy(value, shown):
    r = run_one(lambda: value)
    assert r.status is U
    assert r.message.startswith(f"check returned {shown}")
    assert "expected a Status" in r.message


# --- exceptions -----------------------------------------------------------------------------------------------------


def test_exception_becomes_unhealthy():
    def check():
        raise ConnectionError("connection refused")

    r = run_one(check)
    assert r.status is U
    assert r.message == "ConnectionError: connection refused"
    assert r.details == {"exception": "ConnectionError"}


def test_exception_without_message_and_base_exceptions():
    def empty():
        raise RuntimeError()

    def exits():
        raise SystemExit(3)

    assert run_one(empty).message == "RuntimeError"
    r = run_one(exits)
    assert (r.status, r.message) == (U, "SystemExit: 3")


def test_a_failing_check_does_not_hide_the_others():
    reg = HealthRegistry()
    reg.register("ok", lambda: H)
    reg.register("boom", lambda: 1 / 0)
    reg.register("warn", lambda: (W, "meh"))
    report = reg.run()
    assert list(report.checks) == ["ok", "boom", "warn"]
    assert [r.status for r in report.checks.values()] == [H, U, W]
    assert report.status is U


# --- aggregation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statuses, worst",
    [
        ([], H),
        ([H], H),
        ([H, H], H),
        ([H, W], W),
        ([W, H, W], W),
        ([H, U], U),
        ([U, W, H], U),
    ],
)
def test_report_status_is_the_worst(statuses, worst):
    reg = HealthRegistry()
    for i, s in enumerate(statuses):
        reg.register(f"c{i}", lambda s=s: s)
    report = reg.run()
    assert report.status is worst
    assert report.ok is (worst is not U)
    assert [r.status for r in report.checks.values()] == statuses


def test_report_fields():
    reg = HealthRegistry()
    reg.register("a", lambda: H)
    report = reg.run()
    assert isinstance(report, HealthReport)
    assert isinstance(report.timestamp, float) and report.timestamp > 1.6e9  # seconds since the epoch
    assert report.duration_seconds >= 0


# --- concurrency and timeouts ---------------------------------------------------------------------------------------


def test_checks_run_concurrently():
    # each check waits for the other at a barrier: run one after the other, both would break it
    barrier = threading.Barrier(2, timeout=WAIT)
    reg = HealthRegistry(timeout=2 * WAIT)
    reg.register("a", lambda: barrier.wait() >= 0)
    reg.register("b", lambda: barrier.wait() >= 0)
    report = reg.run()
    assert {n: r.status for n, r in report.checks.items()} == {"a": H, "b": H}


def test_timeout_reports_unhealthy_and_the_run_returns():
    release, finished = threading.Event(), threading.Event()

    def slow():
        try:
            release.wait(WAIT)
            return H
        finally:
            finished.set()

    reg = HealthRegistry()
    reg.register("slow", slow, timeout=0.05)
    reg.register("fast", lambda: (H, "fine"))
    try:
        report = reg.run()
        assert report.status is U
        r = report.checks["slow"]
        assert (r.status, r.message) == (U, "timed out after 0.05s")
        assert r.details == {"timeout_seconds": 0.05}
        assert report.checks["fast"].status is H
        assert not finished.is_set()  # the run did not wait for the check
    finally:
        release.set()
    assert finished.wait(WAIT)
    # once the check returns, it is healthy again
    assert reg.run().checks["slow"].status is H


def test_a_hung_check_is_not_started_again():
    release = threading.Event()
    calls = []

    def hung():
        calls.append(1)
        release.wait(WAIT)
        return H

    reg = HealthRegistry()
    reg.register("hung", hung, timeout=0.02)
    try:
        first = reg.run().checks["hung"]
        second = reg.run().checks["hung"]
        assert first.message == "timed out after 0.02s"
        assert second.status is U
        assert second.message.startswith("timed out after 0.02s (still running from an earlier run, started ")
        assert len(calls) == 1
    finally:
        release.set()


def test_registry_default_timeout_applies():
    release = threading.Event()
    reg = HealthRegistry(timeout=0.02)
    reg.register("slow", lambda: release.wait(WAIT))
    try:
        assert reg.run().checks["slow"].message == "timed out after 0.02s"
    finally:
        release.set()


def test_check_that_cannot_start_is_unhealthy(monkeypatch):
    def refuse(self):
        raise RuntimeError("can't start new thread")

    reg = HealthRegistry()
    reg.register("c", lambda: H)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    report = reg.run()
    monkeypatch.undo()
    assert report.checks["c"].status is U
    assert report.checks["c"].message == "could not start the check: can't start new thread"
    assert reg.run().checks["c"].status is H


def test_check_sees_the_callers_context():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    reg = HealthRegistry()
    reg.register("ctx", lambda: (H, var.get()))
    token = var.set("from the caller")
    try:
        assert reg.run().checks["ctx"].message == "from the caller"
    finally:
        var.reset(token)


# --- registration ---------------------------------------------------------------------------------------------------


def test_decorator_form_registers_and_returns_the_function():
    reg = HealthRegistry()

    @reg.register("db", timeout=1.5)
    def db():
        return W, "replica lag 12s"

    assert db() == (W, "replica lag 12s")
    assert reg.names() == ["db"]
    assert reg.run().checks["db"].message == "replica lag 12s"


def test_names_unregister_len_contains():
    reg = HealthRegistry()
    assert reg.names() == [] and len(reg) == 0
    reg.register("b", lambda: H)
    reg.register("a", lambda: H)
    assert reg.names() == ["b", "a"]
    assert "a" in reg and "zzz" not in reg and len(reg) == 2
    reg.unregister("b")
    assert reg.names() == ["a"]
    assert list(reg.run().checks) == ["a"]
    assert "a" in repr(reg)


def test_duplicate_and_unknown_names():
    reg = HealthRegistry()
    reg.register("a", lambda: H)
    with pytest.raises(ValueError, match="'a' is already registered"):
        reg.register("a", lambda: H)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: H)
    with pytest.raises(KeyError, match="no check named 'nope'"):
        reg.unregister("nope")
    with pytest.raises(ValueError, match="non-empty"):
        reg.register("  ", lambda: H)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r.register(1, lambda: H), "register(): argument 'name' must be a str, not int"),
        (lambda r: r.register("x", 5), "register(): argument 'check' must be callable, not int"),
        (lambda r: r.register("x")("not callable"), "register(): argument 'check' must be callable, not str"),
        (lambda r: r.register("x", lambda: H, timeout="1"), "register(): argument 'timeout' must be a number"),
        (lambda r: r.register("x", lambda: H, timeout=True), "register(): argument 'timeout' must be a number"),
        (lambda r: r.unregister(None), "unregister(): argument 'name' must be a str, not None"),
    ],
)
def test_type_errors_name_function_and_argument(call, message):
    reg = HealthRegistry()
    with pytest.raises(TypeError) as exc:
        call(reg)
    assert str(exc.value).startswith(message)
    assert reg.names() == []


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan])
def test_bad_timeout_values(timeout):
    with pytest.raises(ValueError, match="register\\(\\): argument 'timeout' must be a positive finite number"):
        HealthRegistry().register("x", lambda: H, timeout=timeout)
    with pytest.raises(ValueError, match="HealthRegistry\\(\\): argument 'timeout'"):
        HealthRegistry(timeout=timeout)


def test_healthregistry_timeout_type():
    with pytest.raises(TypeError, match="HealthRegistry\\(\\): argument 'timeout' must be a number"):
        HealthRegistry(timeout="10")


def test_check_result_validation():
    with pytest.raises(TypeError, match="CheckResult\\(\\): argument 'status' must be a Status, not str"):
        CheckResult("healthy")
    with pytest.raises(TypeError, match="argument 'message' must be a str"):
        CheckResult(H, 1)
    with pytest.raises(TypeError, match="argument 'duration_seconds' must be a number"):
        CheckResult(H, "", "1")
    with pytest.raises(ValueError, match="argument 'duration_seconds' must be finite and >= 0"):
        CheckResult(H, "", -1.0)
    with pytest.raises(TypeError, match="argument 'details' must be a mapping or None, not list"):
        CheckResult(H, "", 0.0, [1])
    r = CheckResult(W, "x", 2, {"a": 1})
    assert r.duration_seconds == 2.0 and isinstance(r.duration_seconds, float)


# --- JSON -----------------------------------------------------------------------------------------------------------


def test_to_dict_is_json_ready_and_round_trips():
    class Thing:
        def __str__(self):
            return "a thing"

    reg = HealthRegistry()
    reg.register("plain", lambda: H)
    reg.register("rich", lambda: (W, "details", {"n": np.int64(3), "x": np.float32(0.5), "nan": math.nan,
                                                 "tags": {"b"}, "nested": {1: (1, 2)}, "obj": Thing(),
                                                 "status": U}))
    reg.register("boom", lambda: 1 / 0)
    d = reg.run().to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    assert d["status"] == "unhealthy" and d["ok"] is False
    assert set(d) == {"status", "ok", "timestamp", "duration_seconds", "checks"}
    assert list(d["checks"]) == ["plain", "rich", "boom"]
    assert d["checks"]["plain"] == {"status": "healthy", "message": "", "duration_seconds": d["checks"]["plain"][
        "duration_seconds"]}
    assert d["checks"]["rich"]["details"] == {
        "n": 3, "x": 0.5, "nan": "nan", "tags": ["b"], "nested": {"1": [1, 2]}, "obj": "a thing", "status": "unhealthy"
    }
    assert d["checks"]["boom"]["details"] == {"exception": "ZeroDivisionError"}
    # statuses come back from their JSON values
    assert Status(d["checks"]["rich"]["status"]) is W


# --- the /health helper ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, code", [(H, 200), (W, 200), (U, 503)])
def test_http_response_codes(status, code):
    reg = HealthRegistry()
    reg.register("c", lambda: (status, "msg, with: punctuation"))
    got_code, body = health._http_response(reg)
    assert got_code == code
    d = json.loads(body)
    assert d["status"] == status.value
    assert d["checks"]["c"]["message"] == "msg, with: punctuation"
    assert body == json.dumps(d, separators=(",", ":"))  # compact


def test_http_response_never_raises():
    code, body = health._http_response("not a registry")
    assert code == 500
    d = json.loads(body)
    assert d["status"] == "unhealthy" and "must be a HealthRegistry" in d["error"]

    class Broken(HealthRegistry):
        def run(self):
            raise RuntimeError("registry exploded")

    code, body = health._http_response(Broken())
    assert code == 500 and json.loads(body)["error"] == "RuntimeError: registry exploded"


# --- the default registry -------------------------------------------------------------------------------------------


def test_default_registry_is_process_wide():
    assert isinstance(health.default_registry(), HealthRegistry)
    assert health.default_registry() is health.default_registry()


@pytest.fixture
def clean_default(monkeypatch):
    """The module functions work on an empty default registry during the test."""
    registry = HealthRegistry()
    monkeypatch.setattr(health, "_DEFAULT", registry)
    return registry


def test_default_registry_and_module_functions(clean_default):
    assert health.default_registry() is clean_default
    health.register("test-default-a", lambda: (W, "module level"))

    @health.register("test-default-b", timeout=5)
    def b():
        return H

    report = health.run()
    assert list(report.checks) == ["test-default-a", "test-default-b"]
    assert report.checks["test-default-a"].message == "module level"
    assert report.checks["test-default-b"].status is H
    code, body = health._http_response()
    assert code == 200 and "test-default-a" in json.loads(body)["checks"]
    health.register("test-default-c", lambda: U)
    assert health._http_response()[0] == 503
    health.unregister("test-default-c")
    assert "test-default-c" not in health.default_registry()
