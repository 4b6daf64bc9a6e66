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


# lengths on both sides of the parallel thresholds (dot: 65,536 float64 or 131,072 float32 values per input;
# one-array reductions: 131,072) and of their pieces (dot: 16,384; the others: 65,536)
PARALLEL_EDGES = [16_383, 16_385, 65_535, 65_536, 65_537, 100_001, 131_071, 131_072, 300_001]


def test_parallel_reductions_give_the_same_bits_with_one_thread(tmp_path):
    """The pieces are fixed by the length, not by the threads: one thread and the default pool agree bit for bit."""
    code = f"""
        import numpy as np, ferrolab as fl
        r = np.random.default_rng(5)
        out = {{}}
        for n in {PARALLEL_EDGES}:
            for dt in (np.float64, np.float32):
                x = (r.standard_normal(n) * 3 + 1).astype(dt)
                y = r.standard_normal(n).astype(dt)
                tag = f"{{n}}_{{np.dtype(dt).name}}"
                out["dot_" + tag] = fl.ops.dot(x, y)
                for name in ("sum", "norm", "var"):
                    out[name + "_" + tag] = getattr(fl.ops, name)(x)
        np.savez("child.npz", **out)
    """
    run_python(code, {"FERROLAB_NUM_THREADS": "1"}, tmp_path)
    child = np.load(tmp_path / "child.npz")
    r = np.random.default_rng(5)
    for n in PARALLEL_EDGES:
        for dt in (np.float64, np.float32):
            x = (r.standard_normal(n) * 3 + 1).astype(dt)
            y = r.standard_normal(n).astype(dt)
            tag = f"{n}_{np.dtype(dt).name}"
            d = fl.ops.dot(x, y)
            assert d.tobytes() == child["dot_" + tag].tobytes(), tag
            exact = np.dot(x.astype(np.float64), y.astype(np.float64))
            rtol = 1e-5 if dt == np.float32 else 1e-12
            assert abs(float(d) - exact) <= rtol * float(np.dot(np.abs(x), np.abs(y)).astype(np.float64)), tag
            for name in ("sum", "norm", "var"):
                v = getattr(fl.ops, name)(x)
                assert v.tobytes() == child[name + "_" + tag].tobytes(), (name, tag)


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


# ---- recycled result buffers ----------------------------------------------------------------------------------

BIG = 1 << 20  # float64 elements: an 8 MiB result, above the 4 MiB from which results are recycled


@pytest.fixture
def fresh_cache():
    """An empty cache at the default limit before and after the test."""
    fl.runtime.set_result_cache_limit(256 << 20)
    fl.runtime.release_result_cache()
    yield
    fl.runtime.set_result_cache_limit(256 << 20)
    fl.runtime.release_result_cache()


def test_large_results_are_recycled_and_correct(fresh_cache):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(BIG)
    y = fl.ops.scale(x, 2.0)
    assert not y.flags.owndata and y.flags.writeable and y.flags.c_contiguous and y.flags.aligned
    # its base is a writeable byte view over the buffer, so read-only and back works as for NumPy's own arrays
    assert y.base.dtype == np.uint8 and y.base.nbytes == y.nbytes and type(y.base.base).__name__ == "ResultBuffer"
    y.setflags(write=False)
    y.setflags(write=True)
    before = fl.runtime.result_cache()
    assert before["buffers"] == 0
    addr = y.__array_interface__["data"][0]
    del y
    kept = fl.runtime.result_cache()
    assert kept["buffers"] == 1 and kept["bytes"] >= BIG * 8
    # the next result of the size reuses the buffer, and every element is the new result's (no stale values)
    z = fl.ops.axpy(3.0, x, x)
    assert z.__array_interface__["data"][0] == addr
    after = fl.runtime.result_cache()
    assert after["reused"] == kept["reused"] + 1 and after["buffers"] == 0
    np.testing.assert_array_equal(z, 3.0 * x + x)
    # the array behaves as NumPy's own: writes, copies, pickling, views that outlive it
    z[0] = 7.0
    v = z[::2]
    del z
    assert v[0] == 7.0 and fl.runtime.result_cache()["buffers"] == 0, "a live view keeps the buffer"
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(v)), v)
    del v
    assert fl.runtime.result_cache()["buffers"] == 1


def test_recycled_results_keep_the_requested_order(fresh_cache):
    x = np.asfortranarray(np.arange(BIG, dtype=np.float64).reshape(1024, 1024))
    y = fl.ops.scale(x, 0.5)
    np.testing.assert_array_equal(y, x * 0.5)
    assert not y.flags.owndata and y.flags.f_contiguous and not y.flags.c_contiguous, "Fortran in, Fortran out"
    m = fl.ops.matmul(np.ones((1024, 1024)), np.eye(1024))
    assert not m.flags.owndata and m.flags.c_contiguous
    np.testing.assert_array_equal(m, np.ones((1024, 1024)))


def test_recycled_results_are_on_huge_pages_where_numpys_are(fresh_cache):
    def huge_kib() -> int | None:
        try:
            with open("/proc/self/smaps_rollup") as f:
                for line in f:
                    if line.startswith("AnonHugePages:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    x = np.ones(8 << 20)  # 64 MiB
    before = huge_kib()
    if before is None:
        pytest.skip("no /proc/self/smaps_rollup on this system")
    theirs = x * 2.0
    numpy_gain = huge_kib() - before
    del theirs
    if numpy_gain == 0:
        pytest.skip("transparent huge pages are off on this system (NumPy's arrays get none either)")
    before = huge_kib()
    ours = fl.ops.scale(x, 2.0)
    assert not ours.flags.owndata
    assert huge_kib() - before >= numpy_gain // 2, "a fresh recycled buffer asks for huge pages as NumPy does"


def test_small_results_and_an_off_cache_are_numpys(fresh_cache):
    small = fl.ops.scale(np.ones(1000), 2.0)
    assert small.flags.owndata and small.base is None
    fl.runtime.set_result_cache_limit(0)
    assert fl.runtime.result_cache()["limit"] == 0
    y = fl.ops.scale(np.ones(BIG), 2.0)
    assert y.flags.owndata and y.base is None
    del y
    assert fl.runtime.result_cache()["buffers"] == 0


def test_cache_is_bounded_and_released(fresh_cache):
    fl.runtime.set_result_cache_limit(3 * BIG * 8)
    x = np.ones(BIG)
    ys = [fl.ops.scale(x, float(i)) for i in range(5)]
    del ys
    s = fl.runtime.result_cache()
    assert s["bytes"] <= 3 * BIG * 8 and s["buffers"] == 3
    assert fl.runtime.release_result_cache() == s["bytes"]
    assert fl.runtime.result_cache()["bytes"] == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_set_result_cache_limit_checks_its_argument(bad):
    with pytest.raises((TypeError, ValueError), match="set_result_cache_limit"):
        fl.runtime.set_result_cache_limit(bad)


def test_result_cache_env(tmp_path):
    out = run_python(
        """
        import ferrolab as fl, numpy as np
        y = fl.ops.scale(np.ones(1 << 20), 2.0)
        print(fl.runtime.result_cache()["limit"], y.flags.owndata)
        """,
        {"FERROLAB_RESULT_CACHE_MB": "0"},
        tmp_path,
    )
    assert out.stdout.split() == ["0", "True"]
    default = run_python(
        """
        import ferrolab as fl
        print(fl.runtime.result_cache()["limit"])
        """,
        {},
        tmp_path,
    )
    assert default.stdout.split() == [str(256 << 20)], "the README's default of 256 MiB"


def test_recycled_results_across_threads(fresh_cache):
    x = np.random.default_rng(5).standard_normal(BIG)
    want = x * 2.0
    errors: list[str] = []

    def work() -> None:
        for _ in range(20):
            y = fl.ops.scale(x, 2.0)
            if not np.array_equal(y, want):
                errors.append("wrong values")
            del y

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fl.runtime.result_cache()["buffers"] <= 8
