"""The engine around the kernels: SIMD dispatch, the thread pool, fork safety, GIL release, op counters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import ferrolab as fl
import numpy as np
import pytest

SUBPROCESS_TIMEOUT = 120


def run_python(code: str, env_extra: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROLAB_")}
    env.update(env_extra)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_simd_level():
    assert fl.simd_level() in ("avx2+fma", "baseline")


# A fixed workload covering every kernel family; the child and the parent compute it from the same seed.
WORKLOAD = """
import numpy as np, ferrolab as fl

def workload():
    r = np.random.default_rng(42)
    out = {}
    for dt in (np.float32, np.float64):
        x = (r.standard_normal((301, 257)) * 5 + 1).astype(dt)
        y = r.standard_normal((301, 257)).astype(dt)
        tag = np.dtype(dt).name
        for name in ("sum", "mean", "min", "max", "argmin", "argmax", "var", "std", "norm"):
            out[f"{name}_{tag}"] = getattr(fl.ops, name)(x)
            out[f"{name}_{tag}_0"] = getattr(fl.ops, name)(x, axis=0)
            out[f"{name}_{tag}_1"] = getattr(fl.ops, name)(np.asfortranarray(x), axis=1)
        out[f"dot_{tag}"] = fl.ops.dot(x.ravel(), y.ravel())
        out[f"axpy_{tag}"] = fl.ops.axpy(1.5, x, y)
        out[f"fma_{tag}"] = fl.ops.fma(x, y, x)
        out[f"scale_{tag}"] = fl.ops.scale(x, 0.3)
        out[f"clip_{tag}"] = fl.ops.clip(x, -1.0, 2.0)
        out[f"standardize_{tag}"] = fl.ops.standardize(x, axis=0)
        out[f"matmul_{tag}"] = fl.ops.matmul(x[:100], y[:100].T)
        out[f"hist_{tag}"] = fl.ops.histogram(x, bins=50)[0]
        out[f"quantile_{tag}"] = fl.ops.quantile(x, [0.1, 0.5], axis=1)
        out[f"cdist_{tag}"] = fl.ops.cdist(x[:40], y[:30], "euclidean")
        out[f"cos_{tag}"] = fl.ops.cdist(x[:40], y[:30], "cosine")
        p, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
        for t in (1, 2, 3):
            fl.ops.adam_step(p, y, m, v, t, 0.01, 0.9, 0.999, 1e-8, 0.01)
        out[f"adam_{tag}"] = p
    return {k: np.asarray(v) for k, v in out.items()}
"""


def _workload():
    ns: dict = {}
    exec(WORKLOAD, ns)  # noqa: S102
    return ns["workload"]()


def test_baseline_simd_gives_the_same_results(tmp_path):
    code = WORKLOAD + textwrap.dedent(
        """
        import sys
        assert fl.simd_level() == "baseline", fl.simd_level()
        np.savez(sys.argv[0] + ".npz", **workload())
        """
    )
    run_python(code, {"FERROLAB_SIMD": "baseline"}, tmp_path)
    child = np.load(tmp_path / "child.py.npz")
    here = _workload()
    assert set(child.files) == set(here)
    for k, v in here.items():
        c = child[k]
        assert c.dtype == v.dtype and c.shape == v.shape, k
        rtol = 1e-4 if v.dtype == np.float32 else 1e-10
        np.testing.assert_allclose(c, v, rtol=rtol, atol=rtol * 10, err_msg=k)


@pytest.mark.parametrize("n", [1, 2])
def test_num_threads_env(tmp_path, n):
    code = """
        import json, numpy as np, ferrolab as fl
        x = np.arange(4_000_000, dtype=np.float64)
        s = fl.ops.sum(x)
        assert s == x.sum(), (s, x.sum())
        print(json.dumps({"threads": fl.num_threads()}))
    """
    proc = run_python(code, {"FERROLAB_NUM_THREADS": str(n)}, tmp_path)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"threads": n}


def test_num_threads_default():
    assert fl.num_threads() >= 1


def test_fork_after_pool_use():
    """A child forked after the pool ran in the parent can still run a parallel op and exit."""
    x = np.arange(2_000_000, dtype=np.float64)
    expected = float(np.sum(x))
    assert float(fl.ops.sum(x)) == expected  # the parent's pool has run
    assert float(fl.ops.var(x)) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "fork() in a multi-threaded process" (3.12+)
        pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            y = np.arange(2_000_000, dtype=np.float64)
            ok = float(fl.ops.sum(y)) == expected and float(fl.ops.mean(y)) == expected / y.size
            code = 0 if ok else 3
        except BaseException:  # noqa: BLE001
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            status = st
            break
        time.sleep(0.05)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in fl.ops.sum (thread pool not fork-safe)")
    assert os.WIFEXITED(status), f"child died: status {status}"
    assert os.WEXITSTATUS(status) == 0, f"child exit code {os.WEXITSTATUS(status)}"
    assert float(fl.ops.sum(x)) == expected  # the parent's pool still works


def test_heavy_call_releases_the_gil():
    x = np.random.default_rng(0).standard_normal(20_000_000)
    expected = np.var(x)
    state = {"started": False, "done": False, "result": None, "error": None}

    def worker():
        try:
            state["started"] = True
            r = None
            for _ in range(3):
                r = fl.ops.var(x)
            state["result"] = r
        except BaseException as e:  # noqa: BLE001
            state["error"] = e
        finally:
            state["done"] = True

    old = sys.getswitchinterval()
    # With a long switch interval a thread that keeps the GIL is never preempted during the native call: the main
    # thread then only runs before `started` or after `done`, and counts nothing.
    sys.setswitchinterval(1.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        count = 0
        while not state["done"]:
            if state["started"]:
                count += 1
        t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert not t.is_alive()
    assert state["error"] is None, state["error"]
    np.testing.assert_allclose(state["result"], expected, rtol=1e-12)
    assert count > 0, "the main thread made no progress while fl.ops.var ran in a worker thread"


def _calls(op: str) -> int:
    return sum(s["calls"] for s in fl.op_stats() if s["operation"] == op)


def test_op_stats_counts_calls():
    before = _calls("argmax")
    for _ in range(5):
        fl.ops.argmax(np.arange(10.0))
    fl.ops.argmax(np.arange(10, dtype=np.int32))  # through the dtype conversion path
    after = _calls("argmax")
    assert after - before == 6
    entry = next(s for s in fl.op_stats() if s["operation"] == "argmax")
    assert {"operation", "device", "calls", "errors", "seconds"} <= set(entry)
    assert entry["seconds"] >= 0


def test_op_stats_counts_errors():
    def errors():
        return sum(s["errors"] for s in fl.op_stats() if s["operation"] == "min")

    before = errors()
    with pytest.raises(ValueError):
        fl.ops.min(np.array([]))
    assert errors() - before == 1
