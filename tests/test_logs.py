"""Core events as Rust ``tracing`` events: into Python's ``logging`` (loggers ``ferrolab.<module>``, levels
honoured, structured ``extra`` fields, trace ids inside a span), and with ``FERROLAB_LOG`` to stderr as text or
JSON lines (checked in subprocesses, since the subscriber is installed once per process)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import ferrolab as fl
import numpy as np
import pytest
from ferrolab import _core

X = np.arange(1.0, 11.0)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def caught() -> Iterator[Collect]:
    h = Collect()
    logger = logging.getLogger("ferrolab")
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    assert _core._log_flush()  # nothing of earlier tests arrives here
    h.records.clear()
    try:
        yield h
    finally:
        _core._log_slow_op_seconds(None)
        logger.removeHandler(h)
        logger.setLevel(old)


def delivered(h: Collect, name: str, message: str) -> list[logging.LogRecord]:
    assert _core._log_flush(10.0)
    return [r for r in h.records if r.name == name and r.getMessage() == message]


def test_slow_ops_are_warnings_with_fields_and_trace_ids(caught: Collect) -> None:
    _core._log_slow_op_seconds(0.0)  # every call is "slow"
    fl.tracing.configure("fltest-logs")
    try:
        fl.ops.mean(X)
        with fl.tracing.span("job") as span:
            fl.ops.std(X)
        (op_span,) = [d for d in fl.tracing.finished_spans() if d["name"] == "ferrolab.std"]
    finally:
        _core._log_slow_op_seconds(None)
        fl.tracing.shutdown()
    recs = delivered(caught, "ferrolab.ops", "slow operation")
    by_op = {r.operation: r for r in recs}  # type: ignore[attr-defined]
    assert {"mean", "std"} <= set(by_op)
    r = by_op["std"]
    assert r.levelno == logging.WARNING
    assert r.device == "cpu" and r.duration_seconds >= 0  # type: ignore[attr-defined]
    assert r.trace_id == span.trace_id  # type: ignore[attr-defined]
    assert r.span_id == op_span["span_id"]  # type: ignore[attr-defined]
    assert not hasattr(by_op["mean"], "trace_id")  # outside a span: no ids


def test_logger_levels_are_honoured(caught: Collect) -> None:
    logging.getLogger("ferrolab.ops").setLevel(logging.ERROR)
    try:
        _core._log_slow_op_seconds(0.0)
        fl.ops.sum(X)
        _core._log_slow_op_seconds(None)
        assert delivered(caught, "ferrolab.ops", "slow operation") == []
    finally:
        logging.getLogger("ferrolab.ops").setLevel(logging.NOTSET)


def test_no_event_below_the_threshold(caught: Collect) -> None:
    _core._log_slow_op_seconds(3600.0)
    fl.ops.sum(X)
    assert delivered(caught, "ferrolab.ops", "slow operation") == []


def test_backup_milestones(caught: Collect, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello")
    repo = fl.backup.Repository.init(tmp_path / "repo", password="pw")
    snap = repo.backup(data)
    repo.restore(snap, tmp_path / "out")
    (saved,) = delivered(caught, "ferrolab.backup", "snapshot saved")
    assert saved.levelno == logging.INFO
    assert saved.snapshot == snap.id and saved.files == 1  # type: ignore[attr-defined]
    (restored,) = delivered(caught, "ferrolab.backup", "restore finished")
    assert restored.snapshot == snap.id and restored.bytes == 5  # type: ignore[attr-defined]


def test_gpu_fallback_is_a_warning(caught: Collect, monkeypatch) -> None:
    monkeypatch.setenv("FERROLAB_AUTO_DEVICE", "cuda")
    _core._gpu_set_fake(True, error="CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", times=1)
    _core._gpu_reset_breaker()
    try:
        assert fl.ops.sum(X, device="auto") == 55.0
    finally:
        _core._gpu_set_fake(False)
        _core._gpu_reset_breaker()
    (r,) = delivered(caught, "ferrolab.gpu", "GPU attempt failed; rerunning on the CPU")
    assert r.levelno == logging.WARNING
    assert r.operation == "sum" and r.device == "cuda"  # type: ignore[attr-defined]
    assert "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES" in r.reason  # type: ignore[attr-defined]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="set_level.*level"):
        _core._log_set_level("loud")
    with pytest.raises(ValueError, match="flush.*timeout"):
        _core._log_flush(-1)
    with pytest.raises(ValueError, match="slow_op_seconds"):
        _core._log_slow_op_seconds(float("nan"))


SCRIPT = """
import logging
logging.getLogger("ferrolab").addHandler(logging.NullHandler())  # Python's side is checked above
logging.getLogger("ferrolab").propagate = False
import numpy as np, ferrolab as fl
from ferrolab import _core
_core._log_slow_op_seconds(0.0)
fl.ops.sum(np.ones(10))
"""


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", SCRIPT], env=full, capture_output=True, text=True, timeout=120)


def test_stderr_json_lines() -> None:
    p = run_script({"FERROLAB_LOG": "info", "FERROLAB_LOG_FORMAT": "json"})
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stderr.splitlines() if line.startswith("{")]
    (ev,) = [e for e in lines if e["message"] == "slow operation"]
    assert ev["level"] == "WARN" and ev["target"] == "ferrolab.ops" and ev["operation"] == "sum"
    assert isinstance(ev["duration_seconds"], float) and isinstance(ev["timestamp"], float)


def test_stderr_text_and_filters() -> None:
    p = run_script({"FERROLAB_LOG": "info"})
    assert p.returncode == 0, p.stderr
    assert 'WARN ferrolab.ops: slow operation operation="sum" device="cpu"' in p.stderr
    # a per-target directive that turns the ops events off
    p = run_script({"FERROLAB_LOG": "info,ferrolab.ops=error"})
    assert p.returncode == 0 and "slow operation" not in p.stderr
    # nothing on stderr without FERROLAB_LOG
    p = run_script({"FERROLAB_LOG": ""})
    assert p.returncode == 0 and p.stderr == ""
    # a bad filter is reported once, and the program runs on
    p = run_script({"FERROLAB_LOG": "ferrolab=loud"})
    assert p.returncode == 0
    assert 'FERROLAB_LOG="ferrolab=loud" is not a valid filter' in p.stderr


def test_breaker_transitions(caught: Collect) -> None:
    br = fl.CircuitBreaker("fltest-logs-breaker", failure_threshold=1, reset_timeout=60.0)

    def boom() -> None:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        br.call(boom)
    br.reset()
    (opened,) = [
        r
        for r in delivered(caught, "ferrolab.breaker", "circuit breaker opened")
        if r.breaker == "fltest-logs-breaker"  # type: ignore[attr-defined]
    ]
    assert opened.levelno == logging.WARNING
    assert (opened.__dict__["from"], opened.to) == ("closed", "open")  # type: ignore[attr-defined]
    changed = [
        r
        for r in delivered(caught, "ferrolab.breaker", "circuit breaker state changed")
        if r.breaker == "fltest-logs-breaker"  # type: ignore[attr-defined]
    ]
    assert [(r.__dict__["from"], r.to) for r in changed] == [("open", "closed")]  # type: ignore[attr-defined]


def test_server_reports_rejected_clients(caught: Collect) -> None:
    import time
    import urllib.error
    import urllib.request

    with fl.metrics.serve(port=0, token="s3cret") as srv:
        # one line a second per kind: a 401 of another test in the last second may hold this one back
        deadline = time.monotonic() + 5.0
        got: list[logging.LogRecord] = []
        while not got and time.monotonic() < deadline:
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(srv.url + "/metrics", timeout=5)
            assert e.value.code == 401
            e.value.close()
            got = delivered(caught, "ferrolab.server", "request without valid credentials (401)")
            if not got:
                time.sleep(0.6)
    assert got and got[0].levelno == logging.WARNING
    assert isinstance(got[0].similar_events_suppressed, int)  # type: ignore[attr-defined]  # the structured field arrives


def test_slow_op_threshold_from_the_environment() -> None:
    code = (
        "import logging, sys, numpy as np, ferrolab as fl\n"
        "from ferrolab import _core\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format='%(name)s %(message)s')\n"
        "fl.ops.sum(np.ones(10))\n"
        "_core._log_flush(10.0)\n"
    )
    slow = {**os.environ, "FERROLAB_SLOW_OP_SECONDS": "0"}
    r = subprocess.run([sys.executable, "-c", code], env=slow, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ferrolab.ops slow operation" in r.stdout
    default = {k: v for k, v in os.environ.items() if k != "FERROLAB_SLOW_OP_SECONDS"}
    r = subprocess.run([sys.executable, "-c", code], env=default, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "slow operation" not in r.stdout


def test_silent_until_the_application_configures_logging() -> None:
    # a library must not print through logging's "last resort" handler
    code = (
        "import numpy as np, ferrolab as fl\n"
        "from ferrolab import _core\n"
        "fl.ops.sum(np.ones(10))\n"
        "_core._log_flush(10.0)\n"
    )
    env = {**os.environ, "FERROLAB_SLOW_OP_SECONDS": "0"}
    env.pop("FERROLAB_LOG", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "slow operation" not in r.stderr


class Flaky(logging.Handler):
    """Raises on its first record, as a buggy handler does."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.calls = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("handler bug")


def test_a_raising_handler_costs_only_its_record(caught: Collect, capsys) -> None:
    from ferrolab import _logs

    flaky = Flaky()
    ops = logging.getLogger("ferrolab.ops")
    ops.addHandler(flaky)
    try:
        # one batch as the native log thread hands it over: the first record's handling raises
        _logs.emit([(logging.WARNING, "ferrolab.ops", f"event {i}", {"i": i}, 1.0e9 + i) for i in range(5)])
        # (and through the native thread)
        flaky.calls = 0
        _core._log_slow_op_seconds(0.0)
        for _ in range(20):
            fl.ops.sum(X)
        _core._log_slow_op_seconds(None)
        slow = delivered(caught, "ferrolab.ops", "slow operation")
    finally:
        ops.removeHandler(flaky)
    got = [r.getMessage() for r in caught.records if r.getMessage().startswith("event")]
    # as with plain logging calls: the failing record stops at the handler that raised, the others arrive
    assert got == [f"event {i}" for i in range(1, 5)]
    assert [r.i for r in caught.records if r.getMessage().startswith("event")] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    assert len(slow) == 19 and flaky.calls == 20
    # reported as logging reports a handler's failure
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "RuntimeError: handler bug" in err and "event 0" in err
