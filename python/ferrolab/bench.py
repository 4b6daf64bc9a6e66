"""``ferrolab bench``: ferrolab's kernels against NumPy on this machine.

A compact benchmark shipped with the package (the full one, with SciPy, numexpr and bottleneck as peers, is
``benches/bench_ops.py`` in the source tree). Every case first checks that ferrolab's result matches NumPy's, then
times both sides interleaved (the order alternates between repetitions, the garbage collector is off) and reports
the median time per call and the ratio ``numpy / ferrolab`` (> 1: ferrolab is faster).

Modes: the default (two sizes per op, about a minute), ``quick`` (one size, about 10-20 s) and ``smoke`` (tiny
inputs, one repetition: exercises every op and check in well under a second; for tests, not for numbers).

>>> from ferrolab import bench
>>> rows = bench.run("smoke", verbose=False)
>>> sorted({r["op"] for r in rows}) == sorted(bench.OPS)
True
>>> all(r["check"] == "ok" for r in rows)
True
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OPS", "MODES", "run", "main"]

#: The ops that are benchmarked, in the order of the table.
OPS = ("sum", "mean", "var", "dot", "axpy", "standardize", "quantile", "matmul", "cdist", "adam_step")

#: version of the JSON that ``--json`` writes.
JSON_VERSION = 1


@dataclass(frozen=True)
class Mode:
    vector: tuple[int, ...]  # element counts of the 1-d ops
    matmul: tuple[int, ...]  # n of the n x n matrices
    cdist: tuple[tuple[int, int, int], ...]  # (m, n, k): m points against n points in k dimensions
    repeat: int  # timed repetitions per side (the median is reported)
    min_time: float  # seconds one repetition lasts at least (loops of calls)


MODES: dict[str, Mode] = {
    "full": Mode((100_000, 4_000_000), (128, 768), ((500, 500, 16), (2000, 2000, 32)), 7, 0.05),
    "quick": Mode((1_000_000,), (256,), ((1000, 1000, 16),), 7, 0.05),
    "smoke": Mode((1000,), (16,), ((20, 30, 4),), 1, 0.0),
}


@dataclass
class Case:
    op: str
    size: str
    numpy: Callable[[], Any]
    ferrolab: Callable[[], Any]
    check: Callable[[], str]  # "" when the results match, else what differs


def _close(mine: Any, ref: Any, rtol: float, atol: float = 0.0) -> str:
    a = np.asarray(mine, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return f"shape {a.shape} != NumPy's {b.shape}"
    if np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        return ""
    diff = np.abs(a - b)
    i = int(np.nanargmax(diff)) if diff.size else 0
    return f"max abs difference {float(diff.flat[i]):.3g} (ferrolab {float(a.flat[i])!r}, NumPy {float(b.flat[i])!r})"


def _vector_cases(n: int, rng: np.random.Generator) -> list[Case]:
    from . import ops

    eps = float(np.finfo(np.float64).eps)
    x = rng.standard_normal(n)
    y = rng.standard_normal(n)
    a = 0.75
    scale = float(np.abs(x).sum())  # rounding bound of a sum: eps * sum |x| (times a small factor)
    out_np = np.empty_like(x)
    out_fl = np.empty_like(x)
    size = f"n={n:,}"
    cases = [
        Case("sum", size, lambda: np.sum(x), lambda: ops.sum(x),
             lambda: _close(ops.sum(x), np.sum(x), 0.0, 16 * eps * scale)),
        Case("mean", size, lambda: np.mean(x), lambda: ops.mean(x),
             lambda: _close(ops.mean(x), np.mean(x), 0.0, 16 * eps * scale / n)),
        Case("var", size, lambda: np.var(x), lambda: ops.var(x),
             lambda: _close(ops.var(x), np.var(x), 1e-12)),
        Case("dot", size, lambda: np.dot(x, y), lambda: ops.dot(x, y),
             lambda: _close(ops.dot(x, y), np.dot(x, y), 0.0, 16 * eps * float(np.abs(x * y).sum()))),
    ]

    def np_axpy() -> None:  # NumPy's best with out=: two passes
        np.multiply(x, a, out=out_np)
        np.add(out_np, y, out=out_np)

    def fl_axpy() -> None:
        ops.axpy(a, x, y, out=out_fl)

    def chk_axpy() -> str:
        np_axpy()
        fl_axpy()
        return _close(out_fl, out_np, 4 * eps, 4 * eps)

    cases.append(Case("axpy", size + " out=", np_axpy, fl_axpy, chk_axpy))

    def np_standardize() -> Any:
        return (x - x.mean()) / x.std()

    def fl_standardize() -> Any:
        return ops.standardize(x, out=out_fl)

    cases.append(Case("standardize", size, np_standardize, fl_standardize,
                      lambda: _close(ops.standardize(x), np_standardize(), 1e-10, 1e-10)))
    q = np.array([0.01, 0.5, 0.99])
    cases.append(Case("quantile", size + " 3 q", lambda: np.quantile(x, q), lambda: ops.quantile(x, q),
                      lambda: _close(ops.quantile(x, q), np.quantile(x, q), 1e-12, 1e-12)))

    lr, b1, b2, eps_a, t = 1e-3, 0.9, 0.999, 1e-8, 10
    g = 0.1 * rng.standard_normal(n)
    p0 = rng.standard_normal(n)
    m0 = 0.01 * rng.standard_normal(n)
    v0 = 1e-4 * np.abs(rng.standard_normal(n))
    pn, mn, vn, tmp = p0.copy(), m0.copy(), v0.copy(), np.empty_like(p0)
    pf, mf, vf = p0.copy(), m0.copy(), v0.copy()
    step_size = lr / (1.0 - b1**t)
    bc2_sqrt = math.sqrt(1.0 - b2**t)

    def np_adam() -> None:  # PyTorch's Adam arithmetic with NumPy's in-place ufuncs
        np.subtract(g, mn, out=tmp)
        np.multiply(tmp, 1.0 - b1, out=tmp)
        np.add(mn, tmp, out=mn)
        np.multiply(vn, b2, out=vn)
        np.multiply(g, g, out=tmp)
        np.multiply(tmp, 1.0 - b2, out=tmp)
        np.add(vn, tmp, out=vn)
        np.sqrt(vn, out=tmp)
        np.divide(tmp, bc2_sqrt, out=tmp)
        np.add(tmp, eps_a, out=tmp)
        np.divide(mn, tmp, out=tmp)
        np.multiply(tmp, -step_size, out=tmp)
        np.add(pn, tmp, out=pn)

    def fl_adam() -> None:
        ops.adam_step(pf, g, mf, vf, t, lr, b1, b2, eps_a)

    def chk_adam() -> str:
        for arr, src in ((pn, p0), (mn, m0), (vn, v0), (pf, p0), (mf, m0), (vf, v0)):
            arr[...] = src
        np_adam()
        fl_adam()
        for name, mine, ref in (("param", pf, pn), ("m", mf, mn), ("v", vf, vn)):
            msg = _close(mine, ref, 0.0, 8 * eps * float(np.abs(ref).max()))
            if msg:
                return f"{name}: {msg}"
        return ""

    cases.append(Case("adam_step", size + " in place", np_adam, fl_adam, chk_adam))
    return cases


def _matmul_case(n: int, rng: np.random.Generator) -> Case:
    from . import ops

    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    tol = 8 * n * float(np.finfo(np.float64).eps) * float(np.abs(a).max() * np.abs(b).max())
    return Case("matmul", f"{n}x{n}", lambda: a @ b, lambda: ops.matmul(a, b),
                lambda: _close(ops.matmul(a, b), a @ b, 0.0, tol))


def _cdist_case(shape: tuple[int, int, int], rng: np.random.Generator) -> Case:
    from . import ops

    m, n, k = shape
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((n, k))

    def np_cdist() -> Any:  # the NumPy idiom: |a|^2 + |b|^2 - 2 a.b (a GEMM), clipped at 0
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return np.sqrt(np.maximum(d2, 0.0))

    def chk() -> str:
        exact = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)) if m * n * k <= 4_000_000 else np_cdist()
        return _close(ops.cdist(a, b), exact, 1e-9, 1e-9)

    return Case("cdist", f"{m}x{n}x{k}", np_cdist, lambda: ops.cdist(a, b), chk)


def cases(mode: str, seed: int = 20240601) -> list[Case]:
    """The cases of ``mode`` (``"full"``, ``"quick"`` or ``"smoke"``), inputs drawn with ``seed``."""
    m = MODES[mode]
    rng = np.random.default_rng(seed)
    out: list[Case] = []
    for n in m.vector:
        out += _vector_cases(n, rng)
    out += [_matmul_case(n, rng) for n in m.matmul]
    out += [_cdist_case(s, rng) for s in m.cdist]
    order = {op: i for i, op in enumerate(OPS)}
    return sorted(out, key=lambda c: order[c.op])  # stable: sizes stay in order within an op


def _loops(fn: Callable[[], Any], min_time: float) -> int:
    """Calls per repetition (1, 2, 5, 10, ...) so that one repetition lasts at least ``min_time``; also warms up."""
    number = 1
    while True:
        for j in (1, 2, 5):
            t0 = time.perf_counter()
            for _ in range(number * j):
                fn()
            if time.perf_counter() - t0 >= min_time:
                return number * j
        number *= 10


def _time_pair(
    numpy_fn: Callable[[], Any], fl_fn: Callable[[], Any], repeat: int, min_time: float
) -> tuple[float, float]:
    """Median seconds per call of each side, repetitions interleaved with alternating order."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        sides: list[tuple[Callable[[], Any], int, list[float]]] = [
            (numpy_fn, _loops(numpy_fn, min_time), []),
            (fl_fn, _loops(fl_fn, min_time), []),
        ]
        for r in range(repeat):
            for fn, loops, times in sides if r % 2 == 0 else sides[::-1]:
                t0 = time.perf_counter()
                for _ in range(loops):
                    fn()
                times.append((time.perf_counter() - t0) / loops)
        return statistics.median(sides[0][2]), statistics.median(sides[1][2])
    finally:
        if gc_was_enabled:
            gc.enable()


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, versions, SIMD level and threads of ferrolab."""
    from . import __version__
    from .runtime import num_threads, simd_level

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ferrolab": __version__,
        "simd_level": simd_level(),
        "threads": num_threads(),
    }


def _ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.4f}" if ms < 1 else (f"{ms:.2f}" if ms < 100 else f"{ms:.1f}")


def run(mode: str = "quick", *, seed: int = 20240601, verbose: bool = True) -> list[dict[str, Any]]:
    """Check and time every case of ``mode``; one row per case (``check`` is ``"ok"`` or what differs).

    With ``verbose``, progress goes to stderr (except in smoke mode) and the table to stdout. A case whose
    ferrolab call raises is a row with ``check`` ``"error: ..."`` and no times.
    """
    if mode not in MODES:
        raise ValueError(f"run(): unknown mode {mode!r}; choose from {', '.join(MODES)}")
    m = MODES[mode]
    rows: list[dict[str, Any]] = []
    for c in cases(mode, seed):
        row: dict[str, Any] = {"op": c.op, "size": c.size, "numpy_s": None, "ferrolab_s": None, "ratio": None}
        try:
            problem = c.check()
        except Exception as exc:  # noqa: BLE001 - a failing op is reported in its row, the others still run
            row["check"] = f"error: {type(exc).__name__}: {exc}"
        else:
            row["check"] = f"mismatch: {problem}" if problem else "ok"
            numpy_s, fl_s = _time_pair(c.numpy, c.ferrolab, m.repeat, m.min_time)
            row.update(numpy_s=numpy_s, ferrolab_s=fl_s, ratio=numpy_s / fl_s if fl_s > 0 else None)
        rows.append(row)
        if verbose and mode != "smoke":  # progress on stderr: a full run takes a minute
            ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
            print(f"  {c.op:<12} {c.size:<22} {ratio:>8}  {row['check']}", file=sys.stderr, flush=True)
    if verbose:
        print(table(rows))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    header = ("op", "size", "numpy ms", "ferrolab ms", "speed-up", "check")
    lines = [
        (
            r["op"],
            r["size"],
            _ms(r["numpy_s"]) if r["numpy_s"] is not None else "-",
            _ms(r["ferrolab_s"]) if r["ferrolab_s"] is not None else "-",
            f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
            r["check"] if r["check"] == "ok" else f"*** {r['check']} ***",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in (header, *lines)) for i in range(len(header))]
    right = {2, 3, 4}
    out = []
    for x in (header, *lines):
        cells = [v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(x, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def main(mode: str = "full", json_path: str | None = None, seed: int = 20240601) -> int:
    """The ``ferrolab bench`` command: 0 when every result matches NumPy, 1 otherwise."""
    info = machine()
    m = MODES[mode]
    print(f"ferrolab {info['ferrolab']} ({info['simd_level']}, {info['threads']} threads) vs NumPy {info['numpy']}")
    print(f"{info['cpu']}, {info['cores']} cores; {mode} mode: median of {m.repeat} interleaved repetition(s); "
          "speed-up = numpy time / ferrolab time (> 1: ferrolab faster)\n", flush=True)
    t0 = time.perf_counter()
    rows = run(mode, seed=seed)
    elapsed = time.perf_counter() - t0
    bad = [r for r in rows if r["check"] != "ok"]
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else float("nan")
    print(f"\n{len(rows)} cases in {elapsed:.1f} s; geometric mean speed-up {geo:.2f}x")
    if json_path:
        doc = {"version": JSON_VERSION, "created": time.time(), "mode": mode, "seed": seed, "elapsed_s": elapsed,
               "machine": info, "ratio": "numpy_s / ferrolab_s (> 1: ferrolab faster)", "mismatches": len(bad),
               "rows": rows}
        try:
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
        except OSError as exc:
            print(f"ferrolab bench: cannot write {json_path!r}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {json_path}")
    if bad:
        print(f"ferrolab bench: {len(bad)} result(s) do not match NumPy:", file=sys.stderr)
        for r in bad:
            print(f"  {r['op']} {r['size']}: {r['check']}", file=sys.stderr)
        return 1
    return 0
