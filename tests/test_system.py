"""fl.system.snapshot() against psutil on the same machine: totals exactly, moving numbers within tolerance."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import ferrolab as fl
import pytest
from conftest import MISSING

psutil = pytest.importorskip("psutil", reason=MISSING + "psutil (the [test] extra)")

KEYS = {"cpu_percent", "cpu_count", "load_avg", "memory", "disks", "network", "process", "gpus"}


def test_shape_and_types() -> None:
    s = fl.system.snapshot()
    assert set(s) == KEYS
    assert isinstance(s["cpu_percent"], float) and 0.0 <= s["cpu_percent"] <= 100.0
    assert isinstance(s["cpu_count"], int)
    assert isinstance(s["load_avg"], tuple) and len(s["load_avg"]) == 3
    assert set(s["memory"]) == {"total", "available", "used", "percent"}
    for d in s["disks"]:
        assert set(d) == {"mount", "total", "free", "percent"}
        assert 0 <= d["free"] <= d["total"] and 0.0 <= d["percent"] <= 100.0
    assert set(s["network"]) == {"bytes_sent", "bytes_recv", "packets_sent", "packets_recv"}
    assert set(s["process"]) == {"rss", "cpu_percent", "threads"}
    for g in s["gpus"]:
        assert set(g) == {"name", "memory_total", "memory_used", "utilization"}


def test_totals_equal_psutil() -> None:
    s = fl.system.snapshot()
    assert s["cpu_count"] == psutil.cpu_count()
    assert s["memory"]["total"] == psutil.virtual_memory().total
    root = [d for d in s["disks"] if d["mount"] == "/"]
    if not root:
        pytest.skip("platform: / is not a listed file system here")
    assert root[0]["total"] == psutil.disk_usage("/").total


def test_mounts_match_psutil() -> None:
    ours = {d["mount"] for d in fl.system.snapshot()["disks"]}
    theirs = {p.mountpoint for p in psutil.disk_partitions(all=False)}
    assert "/" not in theirs or "/" in ours
    assert ours, "no file system listed"


def test_moving_numbers_close_to_psutil() -> None:
    s = fl.system.snapshot()
    vm = psutil.virtual_memory()
    gib = 1 << 30
    # available memory moves with other processes: within 256 MiB or 5% of the total
    tol = max(gib // 4, vm.total // 20)
    assert abs(s["memory"]["available"] - vm.available) <= tol
    assert s["memory"]["used"] == s["memory"]["total"] - s["memory"]["available"]
    assert abs(s["memory"]["percent"] - 100.0 * (vm.total - vm.available) / vm.total) <= 5.0

    root = [d for d in s["disks"] if d["mount"] == "/"]
    if root:
        du = psutil.disk_usage("/")
        assert abs(root[0]["free"] - du.free) <= max(gib // 4, du.total // 100)
        assert abs(root[0]["percent"] - 100.0 * (du.total - du.free) / du.total) <= 1.0

    la = psutil.getloadavg()
    for ours, theirs in zip(s["load_avg"], la, strict=True):
        assert abs(ours - theirs) <= max(1.0, 0.5 * theirs)


def test_network_counters_between_two_psutil_readings() -> None:
    before = psutil.net_io_counters()
    s = fl.system.snapshot()["network"]
    after = psutil.net_io_counters()
    assert before.bytes_sent <= s["bytes_sent"] <= after.bytes_sent
    assert before.bytes_recv <= s["bytes_recv"] <= after.bytes_recv
    assert before.packets_sent <= s["packets_sent"] <= after.packets_sent
    assert before.packets_recv <= s["packets_recv"] <= after.packets_recv


def test_process_facts() -> None:
    proc = psutil.Process()
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        s = fl.system.snapshot()["process"]
        assert s["threads"] == proc.num_threads()
        rss = proc.memory_info().rss
        assert abs(s["rss"] - rss) <= max(16 << 20, rss // 10)
    finally:
        stop.set()
        worker.join()


def test_cpu_percent_is_since_previous_snapshot() -> None:
    # the process's CPU use over the interval, measured beside the snapshots: on a loaded machine a busy loop gets
    # less than a whole core, and the snapshot must say what it got
    def interval(work: Callable[[], None]) -> tuple[float, float]:
        fl.system.snapshot()
        w0, c0 = time.monotonic(), time.process_time()
        work()
        got = fl.system.snapshot()["process"]["cpu_percent"]
        w1, c1 = time.monotonic(), time.process_time()
        return got, (c1 - c0) / (w1 - w0) * 100.0

    def busy() -> None:
        t_end = time.process_time() + 0.3
        while time.process_time() < t_end:
            pass

    got, measured = interval(busy)
    assert measured > 5.0  # the loop ran
    assert abs(got - measured) <= max(15.0, 0.25 * measured), (got, measured)
    # an idle interval right after: the process's own usage drops
    idle, idle_measured = interval(lambda: time.sleep(0.3))
    assert idle < got and abs(idle - idle_measured) <= 15.0, (idle, idle_measured)


def test_gpus_follow_the_backend() -> None:
    gpus = fl.system.snapshot()["gpus"]
    if fl.gpu.is_available():
        names = [d["name"] for d in fl.gpu.info()["devices"]]
        assert [g["name"] for g in gpus] == names
        assert all(g["memory_used"] is None and g["utilization"] is None for g in gpus)
    else:
        assert gpus == []


def test_snapshot_releases_the_gil_and_is_thread_safe() -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                fl.system.snapshot()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="platform: no fork")
def test_snapshot_in_a_forked_child() -> None:
    fl.system.snapshot()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            s = fl.system.snapshot()
            code = 0 if s["process"]["threads"] >= 1 and s["memory"]["total"] > 0 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, sys.platform
