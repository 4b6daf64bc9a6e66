"""Shared helpers for the fl.ops tests: hypothesis profile, array layouts, NumPy references and tolerances."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# When a hypothesis test fails, its pytest plugin imports libcst to suggest a patch; with this environment's
# mypy_extensions that import emits a DeprecationWarning, which filterwarnings=error turns into an INTERNALERROR
# that hides the real failure. Import it once here with that warning ignored.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # libcst absent: the plugin skips the patch suggestion
        pass

# Every hypothesis test uses at most 60 examples and no deadline; no example database is written into the repo.
settings.register_profile(
    "ferrolab",
    max_examples=60,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ferrolab")

FLOATS = [np.dtype(np.float32), np.dtype(np.float64)]

# Relative tolerance of a result compared with NumPy's, by result dtype.
RTOL = {
    np.dtype(np.float16): 2e-3,
    np.dtype(np.float32): 1e-5,
    np.dtype(np.float64): 1e-12,
}

LAYOUTS = ["C", "F", "T", "reversed", "strided", "neg_strided", "readonly", "F_readonly"]


def eps_of(dtype: Any) -> float:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        return float(np.finfo(np.float64).eps)
    return float(np.finfo(dt).eps)


def finite_scale(x: np.ndarray) -> float:
    """max |x| over the finite elements (1.0 for an input without any)."""
    a = np.asarray(x, dtype=np.float64)
    f = np.abs(a[np.isfinite(a)])
    return float(f.max()) if f.size else 1.0


def layout(a: np.ndarray, how: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout (views where possible).

    Gaps of the strided views are filled with NaN (or a large sentinel for integers) so that a kernel reading
    outside the view changes the answer.
    """
    # (np.ascontiguousarray / np.asfortranarray would turn a 0-d array into shape (1,))
    if how == "C":
        return np.array(a, order="C", copy=True)
    if how == "F":
        return np.array(a, order="F", copy=True)
    if how == "T":
        # a view with permuted strides: transpose of a C-contiguous copy of the swapped array
        if a.ndim < 2:
            return a.copy()
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(a, 0, 1)), 0, 1)
    if how == "reversed":
        if a.ndim == 0:
            return a.copy()
        base = np.ascontiguousarray(a[..., ::-1])
        return base[..., ::-1]
    if how in ("strided", "neg_strided"):
        if a.ndim == 0:
            return a.copy()
        fill = np.nan if a.dtype.kind == "f" else (1 if a.dtype.kind == "b" else 99)
        base = np.full(tuple(2 * s + 1 for s in a.shape), fill, dtype=a.dtype)
        if how == "strided":
            idx = tuple(slice(1, None, 2) for _ in a.shape)
            base[idx] = a
            return base[idx]
        idx = tuple(slice(None, 0, -2) for _ in a.shape)  # negative strides
        base[idx] = a
        return base[idx]
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "F_readonly":
        b = np.array(a, order="F", copy=True)
        b.flags.writeable = False
        return b
    raise AssertionError(how)


def elements(dtype: Any, lo: float = -1e3, hi: float = 1e3, nan: bool = False, inf: bool = False):
    dt = np.dtype(dtype)
    base = st.floats(lo, hi, width=8 * dt.itemsize, allow_subnormal=False)
    extra = []
    if nan:
        extra.append(st.just(float("nan")))
    if inf:
        extra += [st.just(float("inf")), st.just(float("-inf"))]
    if extra:
        return st.one_of(base, *extra) if not nan else st.one_of(base, base, base, *extra)
    return base


@st.composite
def float_arrays(
    draw,
    min_dims: int = 0,
    max_dims: int = 4,
    min_side: int = 0,
    max_side: int = 5,
    nan: bool = False,
    inf: bool = False,
    dtypes=None,
    lo: float = -1e3,
    hi: float = 1e3,
):
    dtype = draw(st.sampled_from(dtypes or FLOATS))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side))
    return draw(hnp.arrays(dtype, shape, elements=elements(dtype, lo, hi, nan=nan, inf=inf)))


def axes_for(ndim: int):
    """None and every axis, negative ones included."""
    return st.sampled_from([None, *range(-ndim, ndim)])


def numpy_call(fn: Callable[[], Any]) -> tuple[str, Any, bool]:
    """Runs the NumPy reference: ('ok', result, warned) or ('err', exception type, False).

    ``warned`` is True when NumPy issued one of the RuntimeWarnings that ferrolab must reproduce (empty slice,
    degrees of freedom); floating-point-error warnings (invalid value, overflow) are ignored.
    """
    with warnings.catch_warnings(record=True) as rec, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001
            return "err", type(e), False
    warned = any(
        issubclass(w.category, RuntimeWarning)
        and ("empty slice" in str(w.message) or "Degrees of freedom" in str(w.message))
        for w in rec
    )
    return "ok", r, warned


def call_like_numpy(warned: bool, fn: Callable[[], Any]) -> Any:
    """Calls ferrolab, requiring a RuntimeWarning exactly where NumPy warned."""
    if warned:
        with pytest.warns(RuntimeWarning):
            return fn()
    return fn()


def assert_result(actual: Any, expected: Any, atol: float = 0.0, rtol: float | None = None, exact: bool = False):
    """Same kind of object (scalar vs array), same dtype and shape, equal values (NaN positions included)."""
    exp = np.asarray(expected)
    act = np.asarray(actual)
    assert act.dtype == exp.dtype, f"dtype {act.dtype} != NumPy's {exp.dtype}"
    assert act.shape == exp.shape, f"shape {act.shape} != NumPy's {exp.shape}"
    if isinstance(expected, np.generic):
        assert isinstance(actual, np.generic), f"expected a NumPy scalar like NumPy, got {type(actual).__name__}"
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"expected an ndarray like NumPy, got {type(actual).__name__}"
    if exact or exp.dtype.kind not in "fc":
        np.testing.assert_array_equal(act, exp)
        return
    if rtol is None:
        rtol = RTOL.get(exp.dtype, 1e-12)
    np.testing.assert_allclose(
        act.astype(np.float64), exp.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True
    )


GEMM_KERNELS = ["blas", "builtin"]
CDIST_PATHS = ["gemm", "direct"]


@contextlib.contextmanager
def gemm_kernels(which: str) -> Any:
    """``matmul`` on NumPy's BLAS (``"blas"``; skips where none was found) or on the built-in
    ``gemm`` crate kernels (``"builtin"``); the import-time choice is restored afterwards."""
    from ferrolab import _blas

    try:
        if which == "blas":
            if _blas.use_blas("auto") is None:
                pytest.skip("no CBLAS found next to NumPy")
        else:
            assert _blas.use_blas(None) is None
        yield
    finally:
        _blas._init()


@contextlib.contextmanager
def cdist_path(which: str) -> Any:
    """``cdist`` through its GEMM formulation at every size (``"gemm"``) or directly per pair (``"direct"``)."""
    from ferrolab import _core

    prev = _core._cdist_gemm_min(0 if which == "gemm" else 2**63)
    try:
        yield
    finally:
        _core._cdist_gemm_min(prev)


def fsum_exact(x: np.ndarray) -> float:
    return math.fsum(np.asarray(x, dtype=np.float64).ravel().tolist())


# --- skips under CI --------------------------------------------------------------------------------------------------
# Under CI (CI=true, 1 or yes; .ci/run exports CI=true) everything the tests use is installed -- the [test] extra
# (pip install -e ".[test]") and the components of tools/install_components.sh (Prometheus, promtool, the Pushgateway,
# restic; binutils' objdump) -- so a skip there is a silent gap, and it is turned into a failure: a skip in a test, a
# fixture or a skipif mark (pytest_runtest_makereport below) and one while a module is collected, such as a
# module-level `pytest.importorskip` or `pytest.skip(allow_module_level=True)` (pytest_make_collect_report below,
# which bypasses the runtest hooks; it stops the run as a collection error).
#
# The explicit exceptions, for what CI legitimately lacks or what does not apply to its platform:
#   * tests with a marker in CI_SKIP_MARKERS: `gpu` (CI has no CUDA device);
#   * skips whose reason starts with OPTIONAL: an optional package that is in no extra CI installs (torch);
#   * skips whose reason starts with PLATFORM: the test does not apply to this operating system (no fork, no tzset).
# Any other skip fails under CI. A test that skips because a component is missing says so with MISSING, so that the
# failure names what to install; an expected failure (xfail) is not a skip and is left alone. Locally (CI unset)
# every skip stays a skip.
MISSING = "missing component: "
OPTIONAL = "optional: "
PLATFORM = "platform: "
CI_SKIP_MARKERS = frozenset({"gpu"})
CI_SKIP_REASONS = (OPTIONAL, PLATFORM)


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skip_reason(longrepr: Any) -> str:
    reason = str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _ci_failure(reason: str, markers: set[str]) -> str | None:
    """The failure message for a skip that CI does not allow, None for an allowed one."""
    if markers & CI_SKIP_MARKERS or reason.startswith(CI_SKIP_REASONS):
        return None
    if reason.startswith(MISSING):
        return f"CI=true but {reason} (install it: pip install -e '.[test]', tools/install_components.sh)"
    return (
        f"CI=true forbids this skip ({reason}): under CI only tests marked {', '.join(sorted(CI_SKIP_MARKERS))} and "
        f"skips whose reason starts with one of {CI_SKIP_REASONS} may skip (tests/conftest.py)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and is_ci():
        message = _ci_failure(_skip_reason(report.longrepr), {m.name for m in item.iter_markers()})
        if message is not None:
            report.outcome = "failed"
            report.longrepr = message


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if report.skipped and is_ci():
        message = _ci_failure(_skip_reason(report.longrepr), {m.name for m in collector.iter_markers()})
        if message is not None:
            report.outcome = "failed"
            report.longrepr = f"{collector.nodeid}: {message}"
    return report


# --- benchmark smoke runs --------------------------------------------------------------------------------------------
BENCHES = Path(__file__).resolve().parent.parent / "benches"


def run_bench_smoke(script: str, tmp_path: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Runs ``benches/<script> --smoke --json`` in ``tmp_path``, checks that it exited 0, and returns the process
    and its JSON document."""
    out = tmp_path / f"{Path(script).stem}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHES / script), "--smoke", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(out.read_text())
