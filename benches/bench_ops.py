#!/usr/bin/env python3
"""Side-by-side benchmark of ``ferrolab.ops`` against its peers (NumPy, numexpr, bottleneck, SciPy).

Every case runs the peer and ferrolab on the *same* input in one process, interleaved (peer, ferrolab,
ferrolab, peer, ...), timeit-style: each side gets a loop count chosen so that one repetition lasts at least
~20 ms (or one call), and the per-call time is the median over ``--repeat`` repetitions. Before timing, the
ferrolab result is checked against the peer's; a mismatch is printed loudly and makes the exit status 1.

    python benches/bench_ops.py                     # full sizes, table + bench-results/bench_ops.json
    python benches/bench_ops.py --smoke             # tiny sizes, repeat 1: a few seconds, for CI
    python benches/bench_ops.py --ops sum,matmul --repeat 11 --json bench-results/bench_ops.json
    python benches/bench_ops.py --contended         # each case also timed while a busy process holds one core
    python benches/bench_ops.py --ops axis          # reductions over axis 0 and 1 of 3000x3000, 100000x16, 16x100000

Columns: ``ratio = peer time / ferrolab time`` (> 1 means ferrolab is faster). ``rate`` is what ferrolab
reaches: GB/s for the memory-bound kernels (the bytes the kernel must move -- inputs read once, outputs
written once, see ``BYTES`` -- over the time), GFLOP/s for ``matmul`` (2 m n k) and ``cdist`` (3 m n k).
``cdist`` has two peers: SciPy, and NumPy's GEMM formulation (``|a|^2 + |b|^2 - 2 a @ b.T``, clipped, sqrt).
NumPy's reductions and elementwise ops run on one thread; ferrolab's kernels, numexpr and the BLAS behind
``np.dot``/``@`` use their own thread pools (their sizes are in the JSON's ``machine`` block). OpenBLAS's threads
spin for about 0.1 s after each call, on the cores ferrolab's pool would then use: in the cases whose peer runs
on them (``matmul``, NumPy's GEMM ``cdist``, ``np.dot`` and ``np.linalg.norm`` of vectors) both sides pause
``BLAS_SETTLE_S`` before each repetition (not with ``--smoke``), so that neither is timed while the other's
threads still spin, and then make one untimed call of the side about to be timed: on this kind of VM the first
call after an idle pause can take several times as long as the next ones (an 80 MB ``sum``: 13 ms, then 2.4 ms),
which had made the paused cases look slower than the rest. Their repetitions last at least ``BLAS_MIN_TIME_S``.

The hardware's limits are measured in the same run (``measure_bandwidth``, float64 at the largest vector size):
the read bandwidth (the fastest of a few NumPy read loops over per-thread slices) and the triad bandwidth
(``a[:] = b + s * c`` with ``out=``, the best of blocked NumPy on 1 and all threads and numexpr). ``of bw`` is
ferrolab's rate at that size as a share of the read bandwidth (reductions) or of the triad bandwidth (the
elementwise ops with ``out=``; their bytes, like STREAM's, do not count the read-for-ownership of the output that
ordinary stores may pay, so kernels with non-temporal stores can pass 100%).

``--contended`` times every case twice: idle, and while a child process (a pure-Python spin loop, stopped with
SIGSTOP between the loaded timings and killed by its pid at the end) holds one core, the peer and ferrolab alike.
A second table gives the speed each side keeps under the load (idle time / loaded time) and marks the cases where
ferrolab keeps less than the peer.

Peers that are left out on purpose: bottleneck's ``nanmean``/``nanstd``/``nansum`` skip NaN while
``fl.ops.mean``/``std``/``sum`` propagate it like NumPy, so they do not compute the same function;
bottleneck's NaN-propagating ``median`` does, and is the peer of ``quantile(x, 0.5)``. The numexpr row of
``standardize`` takes the mean and std from NumPy and evaluates ``(x - m) / s`` into a preallocated output.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    BusyLoad,
    cores_available,
    cpu_flags,
    cpu_model,
    doc_header,
    import_ferrolab,
    json_path,
    loadavg,
    looped,
    pair_stats,
    print_table,
    time_pair,
    time_runs,
    warn_if_loaded,
    write_json,
)

fl = import_ferrolab()

try:
    import numexpr as ne
except ImportError:  # optional peer
    ne = None
try:
    import bottleneck as bn
except ImportError:  # optional peer
    bn = None
try:
    from scipy.spatial.distance import cdist as scipy_cdist
except ImportError:  # optional peer
    scipy_cdist = None

ALL_OPS = [
    "sum",
    "mean",
    "min",
    "max",
    "argmin",
    "argmax",
    "dot",
    "norm",
    "var",
    "std",
    "axpy",
    "fma",
    "scale",
    "clip",
    "standardize",
    "zscore_anomalies",
    "adam_step",
    "quantile",
    "histogram",
    "matmul",
    "cdist",
    "axis",
]

# Bytes a kernel must move per element, in units of the item size (inputs read once, outputs written once;
# standardize and zscore_anomalies need the moments before the second pass, so they read x twice).
BYTES = {
    "sum": 1,
    "mean": 1,
    "min": 1,
    "max": 1,
    "argmin": 1,
    "argmax": 1,
    "dot": 2,
    "norm": 1,
    "var": 1,
    "std": 1,
    "axpy": 3,
    "fma": 4,
    "scale": 2,
    "clip": 2,
    "standardize": 3,
    "zscore_anomalies": 2,
    "adam_step": 7,  # read param, grad, m, v; write param, m, v
}

FULL_SIZES = [10**3, 10**5, 10**7]
FULL_STAT_SIZES = [10**5, 10**7]  # quantile, histogram
FULL_GEMM = [64, 256, 512, 1024, 2048, 4096]
FULL_GEMM_SKINNY = [(10000, 256, 64), (64, 4096, 64)]  # (m, k, n): tall-skinny and inner-product-like
FULL_GEMM_OUT = [1024]  # sizes also timed with out=
FULL_CDIST = [(2000, 2000, 64), (2048, 128, 64), (10000, 100, 16)]
SMOKE_SIZES = [10**3]
SMOKE_STAT_SIZES = [10**3]
SMOKE_GEMM = [64]
SMOKE_GEMM_SKINNY = [(200, 16, 8)]
SMOKE_GEMM_OUT = [64]
SMOKE_CDIST = [(50, 40, 8)]
#: reductions over one axis of a C-order matrix: square, tall and skinny (many short rows), short and wide
FULL_AXIS = [(3000, 3000), (100_000, 16), (16, 100_000)]
SMOKE_AXIS = [(40, 30)]
AXIS_OPS = ["sum", "mean", "min", "max", "argmin", "argmax", "var", "norm"]
DTYPES = [np.float32, np.float64]


# ------------------------------------------------------------------------------------------ correctness


def _eps(dtype: Any) -> float:
    return float(np.finfo(dtype).eps)


def _rtol(dtype: Any) -> float:
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-9


@dataclass
class Check:
    ok: bool
    detail: str = ""


def check_close(
    mine: Any,
    peer: Any,
    dtype: Any,
    *,
    atol: float = 0.0,
    ref: Any = None,
    exact: bool = False,
) -> Check:
    """``np.allclose(mine, peer)`` at a dtype-dependent rtol plus ``atol``.

    Where both differ from each other only because they round differently (float32 accumulations), ``ref`` --
    the same quantity computed in float64 -- decides: ferrolab passes if it is no farther from ``ref`` than
    twice the peer's error (plus ``atol``).
    """
    a = np.asarray(mine)
    b = np.asarray(peer)
    if a.shape != b.shape:
        return Check(False, f"shape {a.shape} != peer {b.shape}")
    if exact:
        if np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            return Check(True)
        bad = int(np.count_nonzero(a != b))
        return Check(False, f"{bad} of {a.size} elements differ (exact comparison)")
    rtol = _rtol(dtype)
    if np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        return Check(True)
    diff = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    if ref is not None:
        r = np.asarray(ref, dtype=np.float64)
        err_mine = float(np.nanmax(np.abs(a.astype(np.float64) - r))) if a.size else 0.0
        err_peer = float(np.nanmax(np.abs(b.astype(np.float64) - r))) if b.size else 0.0
        if err_mine <= 2.0 * err_peer + atol:
            return Check(
                True, f"differs from peer by {diff:.3g}; float64-reference error {err_mine:.3g} vs peer {err_peer:.3g}"
            )
        return Check(False, f"max |diff| {diff:.3g}; float64-reference error {err_mine:.3g} vs peer {err_peer:.3g}")
    return Check(False, f"max |diff| {diff:.3g} (rtol {rtol:g}, atol {atol:.3g})")


def check_indices(mine: Any, peer: Any, x: np.ndarray, threshold: float) -> Check:
    """Anomaly indices: equal, except for points whose float64 z-score sits at the threshold within rounding."""
    a = np.asarray(mine)
    b = np.asarray(peer)
    if a.dtype != np.int64:
        return Check(False, f"index dtype {a.dtype}, expected int64")
    if a.shape == b.shape and np.array_equal(a, b):
        return Check(True)
    odd = np.setxor1d(a, b)
    x64 = x.astype(np.float64)
    z = np.abs(x64[odd] - x64.mean()) / x64.std()
    slack = 1e-4 if x.dtype == np.float32 else 1e-9
    if np.all(np.abs(z - threshold) <= slack * threshold):
        return Check(True, f"{odd.size} index(es) at the threshold within rounding differ")
    return Check(False, f"{odd.size} indices differ (|mine|={a.size}, |peer|={b.size}); z of those: {z[:5]}")


# ------------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    op: str
    variant: str
    peer_name: str
    dtype: str
    size: str
    elements: int
    peer: Callable[[], Any]
    mine: Callable[[], Any]
    check: Callable[[], Check]
    rate_unit: str = ""  # "GB/s" or "GFLOP/s"
    work: float = 0.0  # bytes or flops per call
    notes: list[str] = field(default_factory=list)
    # the peer computes on OpenBLAS's threads, which spin for a while after each call: both sides then pause
    # before each of their repetitions (BLAS_SETTLE_S), so neither runs while the other's threads still spin
    blas_peer: bool = False


#: seconds for OpenBLAS's threads to stop spinning and sleep (its default timeout is 2**28 cycles, ~0.1 s)
BLAS_SETTLE_S = 0.2
#: the least seconds of one repetition in the cases with that pause
BLAS_MIN_TIME_S = 0.1
#: the vector ops whose NumPy peer computes on the BLAS (np.dot, np.linalg.norm)
BLAS_VECTOR_OPS = {"dot", "norm"}


def _size_label(n: int) -> str:
    e = int(round(math.log10(n)))
    return f"1e{e}" if 10**e == n else str(n)


def vector_cases(n: int, dtype: Any, rng: np.random.Generator, ops: set[str]) -> list[Case]:
    dt = np.dtype(dtype)
    name = dt.name
    label = _size_label(n)
    isz = dt.itemsize
    eps = _eps(dt)
    x = rng.standard_normal(n).astype(dt)
    y = rng.standard_normal(n).astype(dt)
    z = rng.standard_normal(n).astype(dt)
    x64 = x.astype(np.float64)
    abs_sum = float(np.abs(x64).sum())
    lg = max(1.0, math.log2(n))
    o_peer = np.empty_like(x)
    o_mine = np.empty_like(x)
    a = 0.75  # a Python float, as user code passes it (NumPy keeps float32 with it: a weak scalar)
    a_ne = dt.type(a)  # numexpr would promote float32 to float64 with a Python float
    cases: list[Case] = []

    def add(op: str, peer: Callable, mine: Callable, check: Callable, variant: str = "", peer_name: str = "numpy"):
        if op not in ops:
            return
        c = Case(op, variant, peer_name, name, label, n, peer, mine, check, "GB/s", float(BYTES[op] * n * isz))
        # np.dot and np.linalg.norm of vectors call the BLAS dot, which OpenBLAS runs on its threads
        c.blas_peer = op in BLAS_VECTOR_OPS and peer_name == "numpy"
        cases.append(c)

    # reductions ---------------------------------------------------------------------------------------
    sum_tol = eps * lg * abs_sum  # one rounding per level of a pairwise/blocked summation tree
    add(
        "sum",
        lambda: x.sum(),
        lambda: fl.ops.sum(x),
        lambda: check_close(fl.ops.sum(x), x.sum(), dt, atol=sum_tol, ref=x64.sum()),
    )
    add(
        "mean",
        lambda: x.mean(),
        lambda: fl.ops.mean(x),
        lambda: check_close(fl.ops.mean(x), x.mean(), dt, atol=sum_tol / n, ref=x64.mean()),
    )
    add("min", lambda: x.min(), lambda: fl.ops.min(x), lambda: check_close(fl.ops.min(x), x.min(), dt, exact=True))
    add("max", lambda: x.max(), lambda: fl.ops.max(x), lambda: check_close(fl.ops.max(x), x.max(), dt, exact=True))
    add(
        "argmin",
        lambda: x.argmin(),
        lambda: fl.ops.argmin(x),
        lambda: check_close(fl.ops.argmin(x), x.argmin(), dt, exact=True),
    )
    add(
        "argmax",
        lambda: x.argmax(),
        lambda: fl.ops.argmax(x),
        lambda: check_close(fl.ops.argmax(x), x.argmax(), dt, exact=True),
    )
    y64 = y.astype(np.float64)
    dot_tol = eps * lg * float(np.abs(x64 * y64).sum())
    add(
        "dot",
        lambda: np.dot(x, y),
        lambda: fl.ops.dot(x, y),
        lambda: check_close(fl.ops.dot(x, y), np.dot(x, y), dt, atol=dot_tol, ref=np.dot(x64, y64)),
    )
    add(
        "norm",
        lambda: np.linalg.norm(x),
        lambda: fl.ops.norm(x),
        lambda: check_close(fl.ops.norm(x), np.linalg.norm(x), dt, ref=np.linalg.norm(x64)),
    )
    add("var", lambda: x.var(), lambda: fl.ops.var(x), lambda: check_close(fl.ops.var(x), x.var(), dt, ref=x64.var()))
    add("std", lambda: x.std(), lambda: fl.ops.std(x), lambda: check_close(fl.ops.std(x), x.std(), dt, ref=x64.std()))

    # elementwise with out= ----------------------------------------------------------------------------
    def elementwise(op: str, np_fn: Callable, fl_fn: Callable, ne_expr: str | None, ne_vars: dict) -> None:
        def chk() -> Check:
            np_fn()
            fl_fn()
            return check_close(o_mine, o_peer, dt, atol=32 * eps)

        add(op, np_fn, fl_fn, chk, "out=")
        if ne is not None and ne_expr is not None:

            def ne_fn() -> None:
                ne.evaluate(ne_expr, local_dict=ne_vars, out=o_peer)

            def chk_ne() -> Check:
                ne_fn()
                fl_fn()
                return check_close(o_mine, o_peer, dt, atol=32 * eps)

            add(op, ne_fn, fl_fn, chk_ne, "out=", "numexpr")

    def np_axpy() -> None:  # the best NumPy can do with out=: two passes over memory
        np.multiply(x, a, out=o_peer)
        np.add(o_peer, y, out=o_peer)

    elementwise("axpy", np_axpy, lambda: fl.ops.axpy(a, x, y, out=o_mine), "a * x + y", {"a": a_ne, "x": x, "y": y})

    def np_fma() -> None:
        np.multiply(x, y, out=o_peer)
        np.add(o_peer, z, out=o_peer)

    elementwise("fma", np_fma, lambda: fl.ops.fma(x, y, z, out=o_mine), "x * y + z", {"x": x, "y": y, "z": z})
    elementwise(
        "scale",
        lambda: np.multiply(x, a, out=o_peer),
        lambda: fl.ops.scale(x, a, out=o_mine),
        "a * x",
        {"a": a_ne, "x": x},
    )
    elementwise(
        "clip", lambda: np.clip(x, -1.0, 1.0, out=o_peer), lambda: fl.ops.clip(x, -1.0, 1.0, out=o_mine), None, {}
    )

    # standardize: allocating (the NumPy idiom) and with out= against numexpr ---------------------------
    std_atol = 1e-5 if dt == np.float32 else 1e-12
    add(
        "standardize",
        lambda: (x - x.mean()) / x.std(),
        lambda: fl.ops.standardize(x),
        lambda: check_close(
            fl.ops.standardize(x), (x - x.mean()) / x.std(), dt, atol=std_atol, ref=(x64 - x64.mean()) / x64.std()
        ),
        "alloc",
    )
    if ne is not None:

        def ne_standardize() -> None:
            m = x.mean()
            s = x.std()
            ne.evaluate("(x - m) / s", local_dict={"x": x, "m": m, "s": s}, out=o_peer)

        def chk_ne_std() -> Check:
            ne_standardize()
            fl.ops.standardize(x, out=o_mine)
            return check_close(o_mine, o_peer, dt, atol=std_atol, ref=(x64 - x64.mean()) / x64.std())

        add("standardize", ne_standardize, lambda: fl.ops.standardize(x, out=o_mine), chk_ne_std, "out=", "numexpr")

    # z-score anomalies: plant a few outliers so the result is not empty ----------------------------------
    xa = x.copy()
    k = max(1, n // 10_000)
    xa[rng.choice(n, size=k, replace=False)] = dt.type(25.0) * rng.choice([-1, 1], size=k).astype(dt)
    add(
        "zscore_anomalies",
        lambda: np.flatnonzero(np.abs(xa - xa.mean()) / xa.std() > 3),
        lambda: fl.ops.zscore_anomalies(xa, 3.0),
        lambda: check_indices(
            fl.ops.zscore_anomalies(xa, 3.0), np.flatnonzero(np.abs(xa - xa.mean()) / xa.std() > 3), xa, 3.0
        ),
    )

    # Adam, in place, PyTorch's arithmetic -----------------------------------------------------------------
    if "adam_step" in ops:
        lr, b1, b2, eps_a, t = 1e-3, 0.9, 0.999, 1e-8, 10
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        step_size = lr / bc1
        bc2_sqrt = math.sqrt(bc2)
        g = (0.1 * rng.standard_normal(n)).astype(dt)
        p0 = rng.standard_normal(n).astype(dt)
        m0 = (0.01 * rng.standard_normal(n)).astype(dt)
        v0 = (1e-4 * np.abs(rng.standard_normal(n))).astype(dt)
        pp, mp, vp = p0.copy(), m0.copy(), v0.copy()
        pm, mm, vm = p0.copy(), m0.copy(), v0.copy()
        tmp = np.empty_like(x)

        def np_adam() -> None:
            np.subtract(g, mp, out=tmp)  # m += (1 - b1) * (g - m)
            np.multiply(tmp, 1.0 - b1, out=tmp)
            np.add(mp, tmp, out=mp)
            np.multiply(vp, b2, out=vp)  # v = v * b2 + (1 - b2) * g * g
            np.multiply(g, g, out=tmp)
            np.multiply(tmp, 1.0 - b2, out=tmp)
            np.add(vp, tmp, out=vp)
            np.sqrt(vp, out=tmp)  # p += -(lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
            np.divide(tmp, bc2_sqrt, out=tmp)
            np.add(tmp, eps_a, out=tmp)
            np.divide(mp, tmp, out=tmp)
            np.multiply(tmp, -step_size, out=tmp)
            np.add(pp, tmp, out=pp)

        def fl_adam() -> None:
            fl.ops.adam_step(pm, g, mm, vm, t, lr, b1, b2, eps_a)

        def chk_adam() -> Check:
            for arr, src in ((pp, p0), (mp, m0), (vp, v0), (pm, p0), (mm, m0), (vm, v0)):
                arr[...] = src
            np_adam()
            fl_adam()
            at = 4 * eps
            for label_, mine_, peer_ in (("param", pm, pp), ("m", mm, mp), ("v", vm, vp)):
                c = check_close(mine_, peer_, dt, atol=at * float(np.abs(peer_).max()))
                if not c.ok:
                    return Check(False, f"{label_}: {c.detail}")
            return Check(True)

        add("adam_step", np_adam, fl_adam, chk_adam, f"in place, t={t}")
    return cases


def stat_cases(n: int, dtype: Any, rng: np.random.Generator, ops: set[str]) -> list[Case]:
    dt = np.dtype(dtype)
    label = _size_label(n)
    x = rng.standard_normal(n).astype(dt)
    cases: list[Case] = []
    if "quantile" in ops:
        q = [0.25, 0.5, 0.75]
        cases.append(
            Case(
                "quantile",
                "q=[.25,.5,.75]",
                "numpy",
                dt.name,
                label,
                n,
                lambda: np.quantile(x, q),
                lambda: fl.ops.quantile(x, q),
                lambda: check_close(fl.ops.quantile(x, q), np.quantile(x, q), dt),
            )
        )
        if bn is not None:  # bottleneck's median propagates NaN and averages the middle pair: same function
            cases.append(
                Case(
                    "quantile",
                    "q=0.5 (median)",
                    "bottleneck",
                    dt.name,
                    label,
                    n,
                    lambda: bn.median(x),
                    lambda: fl.ops.quantile(x, 0.5),
                    lambda: check_close(fl.ops.quantile(x, 0.5), bn.median(x), dt),
                )
            )
    if "histogram" in ops:

        def chk_hist() -> Check:
            c_mine, e_mine = fl.ops.histogram(x, bins=100)
            c_peer, e_peer = np.histogram(x, bins=100)
            c = check_close(c_mine, c_peer, dt, exact=True)
            if not c.ok:
                return Check(False, f"counts: {c.detail}")
            c = check_close(e_mine, e_peer, dt)
            return c if c.ok else Check(False, f"edges: {c.detail}")

        cases.append(
            Case(
                "histogram",
                "bins=100",
                "numpy",
                dt.name,
                label,
                n,
                lambda: np.histogram(x, bins=100),
                lambda: fl.ops.histogram(x, bins=100),
                chk_hist,
                "GB/s",
                float(n * dt.itemsize),
            )
        )
    return cases


def gemm_cases(
    sizes: list[int], skinny: list[tuple[int, int, int]], out_sizes: list[int], rng: np.random.Generator
) -> list[Case]:
    cases = []
    shapes = [(n, n, n, False) for n in sizes] + [(*s, False) for s in skinny] + [(n, n, n, True) for n in out_sizes]
    for dtype in DTYPES:
        dt = np.dtype(dtype)
        for m, k, n, with_out in shapes:
            a = rng.standard_normal((m, k)).astype(dt)
            b = rng.standard_normal((k, n)).astype(dt)
            o1 = np.empty((m, n), dt)
            o2 = np.empty((m, n), dt)

            def chk(a=a, b=b, k=k, dt=dt) -> Check:
                ref = a.astype(np.float64) @ b.astype(np.float64)
                return check_close(fl.ops.matmul(a, b), a @ b, dt, atol=_eps(dt) * k, ref=ref)

            size = f"n={m}" if m == k == n else f"{m}x{k}x{n}"
            if with_out:
                peer = functools.partial(np.matmul, a, b, out=o1)
                mine = functools.partial(fl.ops.matmul, a, b, out=o2)
            else:
                peer = functools.partial(np.matmul, a, b)
                mine = functools.partial(fl.ops.matmul, a, b)
            cases.append(
                Case(
                    "matmul",
                    "a @ b, out=" if with_out else "a @ b",
                    "numpy",
                    dt.name,
                    size,
                    m * n,
                    peer,
                    mine,
                    chk,
                    "GFLOP/s",
                    2.0 * m * n * k,
                    blas_peer=True,
                )
            )
    return cases


def axis_cases(shapes: list[tuple[int, int]], rng: np.random.Generator) -> list[Case]:
    """``op(x, axis=k)`` against NumPy's ``x.op(axis=k)`` (``np.linalg.norm(x, axis=k)``) for k = 0 and 1."""
    cases: list[Case] = []
    for shape in shapes:
        for dt in map(np.dtype, DTYPES):
            x = rng.standard_normal(shape).astype(dt)
            x64 = x.astype(np.float64)
            for op in AXIS_OPS:
                for axis in (0, 1):
                    mine = functools.partial(getattr(fl.ops, op), x, axis=axis)
                    if op == "norm":
                        peer = functools.partial(np.linalg.norm, x, axis=axis)
                        ref = np.linalg.norm(x64, axis=axis)
                    else:
                        peer = functools.partial(getattr(x, op), axis=axis)
                        ref = getattr(x64, op)(axis=axis)
                    exact = op in ("min", "max", "argmin", "argmax")
                    n_red = shape[axis]
                    atol = 0.0  # var and norm: relative error, and the float64 reference
                    if op in ("sum", "mean"):  # one rounding per level of a summation tree, of the |x| sum
                        abs_sum = float(np.abs(x64).sum(axis=axis).max())
                        atol = _eps(dt) * max(1.0, math.log2(n_red)) * abs_sum / (n_red if op == "mean" else 1)

                    def chk(mine=mine, peer=peer, exact=exact, atol=atol, ref=ref, dt=dt) -> Check:
                        if exact:
                            return check_close(mine(), peer(), dt, exact=True)
                        return check_close(mine(), peer(), dt, atol=atol, ref=ref)

                    cases.append(
                        Case(
                            op,
                            f"axis={axis}",
                            "numpy",
                            dt.name,
                            f"{shape[0]}x{shape[1]}",
                            x.size,
                            peer,
                            mine,
                            chk,
                            "GB/s",
                            float(x.nbytes),
                        )
                    )
    return cases


def numpy_gemm_cdist(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """The GEMM formulation in NumPy: ``|a|^2 + |b|^2 - 2 a b^T`` clipped at 0 (cosine: ``1 - a b^T / |a||b|``)."""
    if metric == "cosine":
        na = np.sqrt(np.einsum("ij,ij->i", a, a))
        nb = np.sqrt(np.einsum("ij,ij->i", b, b))
        c = a @ b.T
        c /= na[:, None]
        c /= nb[None, :]
        np.clip(c, -1.0, 1.0, out=c)
        return np.subtract(1.0, c, out=c)
    aa = np.einsum("ij,ij->i", a, a)
    bb = np.einsum("ij,ij->i", b, b)
    d = aa[:, None] + bb[None, :] - 2.0 * (a @ b.T)
    np.maximum(d, 0.0, out=d)
    return np.sqrt(d, out=d) if metric == "euclidean" else d


def cdist_cases(shapes: list[tuple[int, int, int]], rng: np.random.Generator) -> list[Case]:
    cases: list[Case] = []
    if scipy_cdist is None:
        return cases
    for dtype in DTYPES:
        dt = np.dtype(dtype)
        for m, n, k in shapes:
            a = rng.standard_normal((m, k)).astype(dt)
            b = rng.standard_normal((n, k)).astype(dt)
            for metric in ("euclidean", "sqeuclidean", "cosine"):

                def mine(a=a, b=b, metric=metric):
                    return fl.ops.cdist(a, b, metric)

                def chk(a=a, b=b, k=k, dt=dt, metric=metric) -> Check:
                    # SciPy computes in float64; a float32 result is compared at float32's precision
                    exp = scipy_cdist(a, b, metric)
                    scale = 1.0 if metric == "cosine" else float(np.abs(exp).max(initial=1.0))
                    return check_close(fl.ops.cdist(a, b, metric), exp, dt, atol=8 * (k + 2) * _eps(dt) * scale)

                for peer_name, peer in (
                    ("scipy", functools.partial(scipy_cdist, a, b, metric)),
                    ("numpy-gemm", functools.partial(numpy_gemm_cdist, a, b, metric)),
                ):
                    cases.append(
                        Case(
                            "cdist",
                            metric,
                            peer_name,
                            dt.name,
                            f"{m}x{n}x{k}",
                            m * n * k,
                            peer,
                            mine,
                            chk,
                            "GFLOP/s",
                            3.0 * m * n * k,
                            blas_peer=peer_name == "numpy-gemm",
                        )
                    )
    return cases


# -------------------------------------------------------------------------------------------- bandwidth

# The streaming ops whose rate is compared with the machine's measured bandwidth (at the largest vector size):
# reductions with the read bandwidth, the elementwise ops with out= with the triad bandwidth.
READ_BW_OPS = {"sum", "mean", "min", "max", "argmin", "argmax", "dot", "norm", "var", "std"}
TRIAD_BW_OPS = {"axpy", "fma", "scale", "clip"}
TRIAD_BLOCK = 1 << 15  # elements per block of the NumPy triad: three blocks of float64 stay in L2


def measure_bandwidth(n: int, repeat: int, min_time: float) -> dict[str, Any]:
    """The machine's read and triad bandwidth in GB/s on float64 arrays of ``n`` elements, in this run.

    Each is the best (median time) over one thread and one thread per available core (NumPy releases the GIL in
    its loops, so the threads run in parallel; each takes one slice of the arrays):

    * read: the fastest of a few plain NumPy read loops over the slice (``max`` of the values, ``max`` of their
      bytes, OR-reduction and ``count_nonzero`` of their 64-bit words, and the BLAS ``np.dot(x, x)`` on its own
      threads), 8 bytes per element;
    * triad: ``a[:] = b + s * c`` with ``out=``, blocked so that a block of ``a`` stays in cache between the
      multiply and the add (one pass over memory), 24 bytes per element as STREAM counts them (the
      read-for-ownership of ``a`` that ordinary stores pay is not counted); numexpr's fused ``evaluate(...,
      out=a)`` on its own threads is tried too where it is installed.
    """
    rng = np.random.default_rng(1)
    x = rng.standard_normal(n)
    b = rng.standard_normal(n)
    c = rng.standard_normal(n)
    a = np.empty(n)
    cores = max(1, cores_available() or 1)
    threads = sorted({1, cores})
    pool = ThreadPoolExecutor(max_workers=cores)

    def sliced(fn: Callable[[int, int], Any], k: int) -> Callable[[], None]:
        bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]
        if k == 1:
            return lambda: fn(0, n)
        return lambda: list(pool.map(lambda ij: fn(*ij), bounds))

    xu64 = x.view(np.uint64)
    xu8 = x.view(np.uint8)
    readers: dict[str, Callable[[int, int], Any]] = {  # NumPy's fastest plain read loops differ by version and CPU
        "np.max": lambda i, j: x[i:j].max(),
        "np.max of the bytes": lambda i, j: xu8[8 * i : 8 * j].max(),
        "np.bitwise_or.reduce of the words": lambda i, j: np.bitwise_or.reduce(xu64[i:j]),
        "np.count_nonzero of the words": lambda i, j: np.count_nonzero(xu64[i:j]),
    }

    def triad(i: int, j: int) -> None:
        for k in range(i, j, TRIAD_BLOCK):
            e = min(k + TRIAD_BLOCK, j)
            np.multiply(c[k:e], 3.0, out=a[k:e])
            np.add(a[k:e], b[k:e], out=a[k:e])

    def best(methods: dict[str, Callable[[], Any]], nbytes: int) -> tuple[float, str, dict[str, float]]:
        rates = {}
        for name, fn in methods.items():
            rates[name] = nbytes / statistics.median(time_runs(looped(fn), repeat, min_time)) / 1e9
        top = max(rates, key=lambda k: rates[k])
        return rates[top], top, rates

    try:
        read_methods = {f"{name}, {k} thread(s)": sliced(fn, k) for name, fn in readers.items() for k in threads}
        # the BLAS dot of x with itself reads x once, on the BLAS's own threads
        read_methods["np.dot(x, x) (BLAS threads)"] = lambda: np.dot(x, x)
        read_bw, read_how, read_all = best(read_methods, 8 * n)
        triads: dict[str, Callable[[], Any]] = {f"numpy blocked, {k} thread(s)": sliced(triad, k) for k in threads}
        if ne is not None:
            triads[f"numexpr, {ne.get_num_threads()} thread(s)"] = lambda: ne.evaluate(
                "b + s * c", local_dict={"b": b, "s": 3.0, "c": c}, out=a
            )
        triad_bw, triad_how, triad_all = best(triads, 24 * n)
    finally:
        pool.shutdown()
    return {
        "elements": n,
        "dtype": "float64",
        "read_GBps": read_bw,
        "read_method": read_how,
        "read_all_GBps": read_all,
        "triad_GBps": triad_bw,
        "triad_method": triad_how,
        "triad_all_GBps": triad_all,
    }


def bandwidth_share(row: dict[str, Any], bw: dict[str, Any] | None) -> tuple[float | None, str]:
    """The share of the measured bandwidth that ferrolab's rate reaches in a row (streaming ops at the
    bandwidth's size only), and which bandwidth it is."""
    if bw is None or row["ferrolab_rate"] is None or row["elements"] != bw["elements"]:
        return None, ""
    if row["op"] in READ_BW_OPS:
        return row["ferrolab_rate"] / bw["read_GBps"], "read"
    if row["op"] in TRIAD_BW_OPS and row["variant"] == "out=":
        return row["ferrolab_rate"] / bw["triad_GBps"], "triad"
    return None, ""


# ---------------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    blas = None
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        blas = f"{b.get('name')} {b.get('version')}"
    except Exception:  # noqa: BLE001 - older NumPy: best effort only
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(("sse4_2", "avx", "avx2", "fma", "avx512f")),
        "cores": os.cpu_count(),
        "cores_available": cores_available(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas,
        # the CBLAS behind fl.ops.matmul/cdist (None: the built-in gemm crate kernels)
        "ferrolab_blas": fl.ops._blas.in_use,
        "ferrolab": getattr(fl, "__version__", "?"),
        "ferrolab_path": str(Path(fl.__file__).parent),
        "simd_level": fl.simd_level(),
        "num_threads": fl.num_threads(),
        "numexpr": getattr(ne, "__version__", None),
        "numexpr_threads": ne.get_num_threads() if ne is not None else None,
        "bottleneck": getattr(bn, "__version__", None),
        "loadavg_start": loadavg(),
    }
    try:
        import scipy

        info["scipy"] = scipy.__version__
    except ImportError:
        info["scipy"] = None
    return info


# ------------------------------------------------------------------------------------------------- main


def build_cases(args: argparse.Namespace, ops: set[str], rng: np.random.Generator) -> list[Case]:
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    stat_sizes = SMOKE_STAT_SIZES if args.smoke else FULL_STAT_SIZES
    cases: list[Case] = []
    for n in sizes:
        for dt in DTYPES:
            cases += vector_cases(n, dt, rng, ops)
    for n in stat_sizes:
        for dt in DTYPES:
            cases += stat_cases(n, dt, rng, ops)
    if "matmul" in ops:
        if args.smoke:
            cases += gemm_cases(SMOKE_GEMM, SMOKE_GEMM_SKINNY, SMOKE_GEMM_OUT, rng)
        else:
            cases += gemm_cases(FULL_GEMM, FULL_GEMM_SKINNY, FULL_GEMM_OUT, rng)
    if "cdist" in ops:
        cases += cdist_cases(SMOKE_CDIST if args.smoke else FULL_CDIST, rng)
    if "axis" in ops:
        cases += axis_cases(SMOKE_AXIS if args.smoke else FULL_AXIS, rng)
    return cases


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.2g}" if v < 10 else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")


def _fmt_ms(s: float) -> str:
    ms = s * 1e3
    if ms < 0.01:
        return f"{ms:.5f}"
    if ms < 1:
        return f"{ms:.4f}"
    if ms < 100:
        return f"{ms:.2f}"
    return f"{ms:.1f}"


HEADER = ("op", "dtype", "size", "peer", "peer ms", "ferrolab ms", "ratio", "rate", "of bw", "peer rate", "check")


def print_rows(rows: list[dict[str, Any]]) -> None:
    lines = []
    for r in rows:
        op = r["op"] + (f" [{r['variant']}]" if r["variant"] else "")
        unit = r["rate_unit"]
        lines.append(
            (
                op,
                r["dtype"],
                r["size"],
                r["peer"],
                _fmt_ms(r["peer_s"]) if r["peer_s"] is not None else "-",
                _fmt_ms(r["ferrolab_s"]) if r["ferrolab_s"] is not None else "-",
                f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                f"{_fmt_rate(r['ferrolab_rate'])} {unit}" if r["ferrolab_rate"] is not None else "",
                f"{100 * r['bw_share']:.0f}% {r['bw_kind']}" if r.get("bw_share") is not None else "",
                f"{_fmt_rate(r['peer_rate'])} {unit}" if r["peer_rate"] is not None else "",
                r["check"] if r["check"] == "ok" else f"*** {r['check']} ***",
            )
        )
    print_table(HEADER, lines, right={4, 5, 6, 7, 8, 9})


CONTENDED_HEADER = (
    "op",
    "dtype",
    "size",
    "peer",
    "ratio idle",
    "ratio loaded",
    "peer kept",
    "ferrolab kept",
    "",
)
# a row "loses more than the peer" when ferrolab keeps less of its idle speed than the peer, by more than this
# (the retained speeds are ratios of medians of separate timings: a few percent are noise)
KEPT_SLACK = 0.05


def print_contended(rows: list[dict[str, Any]]) -> None:
    lines = []
    for r in rows:
        ld = r.get("loaded")
        if not ld:
            continue
        op = r["op"] + (f" [{r['variant']}]" if r["variant"] else "")
        lines.append(
            (
                op,
                r["dtype"],
                r["size"],
                r["peer"],
                f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                f"{ld['ratio']:.2f}x" if ld["ratio"] is not None else "-",
                f"{100 * ld['peer_kept']:.0f}%",
                f"{100 * ld['ferrolab_kept']:.0f}%",
                "loses more" if ld["loses_more"] else "",
            )
        )
    print_table(CONTENDED_HEADER, lines, right={4, 5, 6, 7})


def _settle_then(settle: float, call: Callable[[], Any]) -> Callable[[], None]:
    """Waits ``settle`` seconds (OpenBLAS's spinning threads go to sleep), then makes one untimed ``call``: the
    first call after an idle pause is slow on this kind of VM, for either side."""

    def before() -> None:
        time.sleep(settle)
        call()

    return before


def run_case(
    c: Case, repeat: int, min_time: float, load: BusyLoad | None = None, settle: float = BLAS_SETTLE_S
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "op": c.op,
        "variant": c.variant,
        "dtype": c.dtype,
        "size": c.size,
        "elements": c.elements,
        "peer": c.peer_name,
        "peer_s": None,
        "ferrolab_s": None,
        "ratio": None,
        "rate_unit": c.rate_unit,
        "work": c.work,
        "ferrolab_rate": None,
        "peer_rate": None,
        "check": "ok",
        "check_detail": "",
    }
    try:
        chk = c.check()
    except Exception as exc:  # noqa: BLE001 - a failing op must be reported, not abort the run
        row["check"] = "ERROR"
        row["check_detail"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        return row
    if not chk.ok:
        row["check"] = "MISMATCH"
    row["check_detail"] = chk.detail
    if load is not None:
        load.pause()
    pause_peer = pause_mine = None
    if c.blas_peer and settle > 0:
        pause_peer, pause_mine = _settle_then(settle, c.peer), _settle_then(settle, c.mine)
        # long repetitions: what the pause leaves behind (threads and caches gone cold) weighs little
        min_time = max(min_time, BLAS_MIN_TIME_S)
    row.update(
        pair_stats(
            time_pair(looped(c.peer), looped(c.mine), repeat, min_time, before_peer=pause_peer, before_mine=pause_mine)
        )
    )
    if c.rate_unit and c.work:
        row["ferrolab_rate"] = c.work / row["ferrolab_s"] / 1e9
        row["peer_rate"] = c.work / row["peer_s"] / 1e9
    if load is not None:
        # the same pair again while the busy child holds a core (then stopped again for the next idle timing)
        load.resume()
        try:
            ld = pair_stats(
                time_pair(
                    looped(c.peer), looped(c.mine), repeat, min_time, before_peer=pause_peer, before_mine=pause_mine
                )
            )
        finally:
            load.pause()
        peer_kept = row["peer_s"] / ld["peer_s"]
        mine_kept = row["ferrolab_s"] / ld["ferrolab_s"]
        row["loaded"] = {
            **ld,
            "peer_kept": peer_kept,
            "ferrolab_kept": mine_kept,
            "loses_more": mine_kept < peer_kept - KEPT_SLACK,
        }
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, repeat 1: exercises every op and check quickly")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the JSON (default bench-results/bench_ops.json, "
        "bench-results/bench_ops_smoke.json with --smoke)",
    )
    p.add_argument("--repeat", type=int, default=None, help="repetitions per side (median; default 7, 1 with --smoke)")
    p.add_argument("--ops", default=None, help=f"comma-separated subset of: {','.join(ALL_OPS)}")
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds one repetition must last at least (default 0.02; 0.001 with --smoke)",
    )
    p.add_argument("--seed", type=int, default=20240601, help="seed of np.random.default_rng")
    p.add_argument(
        "--contended",
        action="store_true",
        help="also time every case while a busy child process holds one core (for the peer and ferrolab alike) "
        "and report the speed each side keeps under that load",
    )
    p.add_argument("--no-bandwidth", action="store_true", help="skip measuring the read and triad bandwidth")
    args = p.parse_args(argv)

    if args.ops:
        ops = {o.strip() for o in args.ops.split(",") if o.strip()}
        unknown = ops - set(ALL_OPS)
        if unknown:
            p.error(f"unknown op(s) {sorted(unknown)}; choose from {','.join(ALL_OPS)}")
    else:
        ops = set(ALL_OPS)
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 7)
    if repeat < 1:
        p.error("--repeat must be >= 1")
    min_time = args.min_time if args.min_time is not None else (0.001 if args.smoke else 0.02)
    out_path = json_path(args.json, "bench_ops", args.smoke)

    info = machine_info()
    print(
        f"ferrolab {info['ferrolab']} ({info['simd_level']}, {info['num_threads']} threads) vs "
        f"NumPy {info['numpy']} ({info['numpy_blas']}), numexpr {info['numexpr']} "
        f"({info['numexpr_threads']} threads), bottleneck {info['bottleneck']}, SciPy {info['scipy']}"
    )
    print(
        f"{info['cpu_model']}, {info['cores_available']} cores available; "
        f"median of {repeat} repetition(s), each >= {min_time * 1e3:g} ms or one call; "
        f"ratio = peer / ferrolab (> 1: ferrolab faster)\n"
    )
    sys.stdout.flush()

    warn_if_loaded(info["loadavg_start"], info["cores_available"])
    t_start = time.perf_counter()
    bw = None
    if not args.no_bandwidth:
        bw_n = max(SMOKE_SIZES if args.smoke else FULL_SIZES)
        bw = measure_bandwidth(bw_n, repeat, min_time)
        print(
            f"measured bandwidth (float64, {_size_label(bw_n)} elements): read {bw['read_GBps']:.1f} GB/s "
            f"({bw['read_method']}), triad {bw['triad_GBps']:.1f} GB/s ({bw['triad_method']}); "
            f"'of bw' = ferrolab's rate at that size / the read (reductions) or triad (out=) bandwidth\n"
        )
        sys.stdout.flush()
    rng = np.random.default_rng(args.seed)
    cases = build_cases(args, ops, rng)
    rows = []
    load = BusyLoad(limit_s=60.0 if args.smoke else 3600.0) if args.contended else None
    try:
        for c in cases:
            rows.append(run_case(c, repeat, min_time, load, settle=0.0 if args.smoke else BLAS_SETTLE_S))
            share, kind = bandwidth_share(rows[-1], bw)
            rows[-1]["bw_share"], rows[-1]["bw_kind"] = share, kind
            if not args.smoke:  # progress on stderr for long runs
                r = rows[-1]
                ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
                kept = ""
                if r.get("loaded"):
                    kept = f"  kept: peer {r['loaded']['peer_kept']:.0%} ferrolab {r['loaded']['ferrolab_kept']:.0%}"
                print(
                    f"  {r['op']:<17} {r['variant']:<26} {r['dtype']:<8} {r['size']:<14} {ratio:>8}  "
                    f"{r['check']}{kept}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if load is not None:
            load.stop()
    elapsed = time.perf_counter() - t_start
    info["loadavg_end"] = loadavg()
    print_rows(rows)
    losing: list[dict[str, Any]] = []
    if args.contended:
        print(
            f"\nunder load: a busy process holds one of {info['cores_available']} cores; 'kept' = idle time / loaded "
            f"time of the same call (100%: no speed lost); 'loses more': ferrolab keeps more than "
            f"{100 * KEPT_SLACK:.0f} points less than the peer\n"
        )
        print_contended(rows)
        losing = [r for r in rows if r.get("loaded") and r["loaded"]["loses_more"]]
        print(f"\nferrolab loses more of its speed than the peer under load in {len(losing)} of {len(rows)} cases.")

    bad = [r for r in rows if r["check"] != "ok"]
    slower = [r for r in rows if r["ratio"] is not None and r["ratio"] < 1.0]
    present = {r["op"] for r in rows} | {"axis" for r in rows if r["variant"].startswith("axis=")}
    missing = sorted(ops - present)
    print(f"\n{len(rows)} cases in {elapsed:.1f} s; ferrolab slower than the peer in {len(slower)}.")
    if missing:
        print(f"not run (peer missing): {', '.join(missing)}")
    if bad:
        print(f"\n!!! {len(bad)} case(s) where ferrolab's result does not match the peer:", file=sys.stderr)
        for r in bad:
            print(
                f"!!!   {r['op']} [{r['variant']}] {r['dtype']} {r['size']} vs {r['peer']}: {r['check']} "
                f"{r['check_detail']}",
                file=sys.stderr,
            )

    doc = {
        **doc_header("bench_ops", argv, args.smoke),
        "repeat": repeat,
        "min_time_s": min_time,
        "seed": args.seed,
        "elapsed_s": elapsed,
        "machine": info,
        "ratio": "peer_s / ferrolab_s (> 1 means ferrolab is faster)",
        "rates": "ferrolab_rate/peer_rate = work / time / 1e9: GB/s (bytes the kernel must move) or GFLOP/s "
        "(matmul 2n^3, cdist 3mnk)",
        "ops": sorted({r["op"] for r in rows}),
        "bandwidth": bw,
        "bw_share": "ferrolab_rate / the measured read (reductions) or triad (elementwise out=) bandwidth, for the "
        "streaming ops at the bandwidth's size",
        "contended": args.contended,
        "busy_pid": load.pid if load is not None else None,
        "loaded": "with --contended: the same timings while a busy child process holds one core; peer_kept / "
        "ferrolab_kept = idle time / loaded time",
        "loses_more_under_load": len(losing),
        "mismatches": len(bad),
        "rows": rows,
    }
    write_json(out_path, doc)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
