"""``ferrolab demo``: a small instrumented scientific pipeline on generated data.

Steps: standardize sensor readings, flag z-score anomalies, quantiles, a histogram, a feature matmul, pairwise
distances to cluster centres, and ten Adam steps on a parameter vector of half as many values as readings (the
optimizer's update, as a training loop calls it with the gradients backpropagation gave: the gradients are generated
here, so the row times the update itself). Every result is checked against NumPy/the reference formula, and the
timings of ferrolab and NumPy are printed side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ops
from .runtime import num_threads, op_stats, simd_level


@dataclass
class Step:
    name: str
    ferrolab_s: float
    numpy_s: float
    ok: bool
    detail: str = ""

    @property
    def speedup(self) -> float:
        return self.numpy_s / self.ferrolab_s if self.ferrolab_s > 0 else float("inf")


def _best_pair(f: Callable[[], Any], g: Callable[[], Any], repeat: int) -> tuple[float, float, Any, Any]:
    """Best times of `f` and `g` over `repeat` alternating runs, after one untimed run of each (whose results
    are returned for the check): neither side is timed cold, and slow drift of the machine hits both alike."""
    rf, rg = f(), g()
    bf = bg = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        bf = min(bf, time.perf_counter() - t0)
        t0 = time.perf_counter()
        g()
        bg = min(bg, time.perf_counter() - t0)
    return bf, bg, rf, rg


def _np_cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


# Adam steps per run of the demo's last row
ADAM_STEPS = 10


def _np_adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, lr: float) -> None:
    b1, b2, eps = 0.9, 0.999, 1e-8
    m += (1 - b1) * (g - m)
    v *= b2
    v += (1 - b2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - b2**t) + eps
    p += -(lr / (1 - b1**t)) * m / denom


def run(size: int = 2_000_000, repeat: int = 15, seed: int = 7, out: Callable[[str], None] = print) -> int:
    """Run the pipeline; print a table; return 0 when every check passed, else 1."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 50.0, size)
    x = 20.0 + 3.0 * np.sin(t) + rng.normal(0.0, 0.5, size)
    spikes = rng.choice(size, size // 10_000 + 1, replace=False)
    x[spikes] += rng.choice([-1.0, 1.0], spikes.size) * 15.0
    feats = rng.normal(size=(2048, 256))
    proj = rng.normal(size=(256, 128))
    centres = rng.normal(size=(64, 128))
    steps: list[Step] = []

    def step(name: str, f: Callable[[], Any], g: Callable[[], Any], check: Callable[[Any, Any], bool]) -> Any:
        tf, tn, rf, rn = _best_pair(f, g, repeat)
        steps.append(Step(name, tf, tn, bool(check(rf, rn))))
        return rf

    close = lambda a, b: np.allclose(a, b, rtol=1e-9, atol=1e-9)  # noqa: E731
    z_out = np.empty_like(x)
    step(
        "standardize",
        lambda: ops.standardize(x, out=z_out),
        lambda: (x - x.mean()) / x.std(),
        close,
    )
    step(
        "zscore_anomalies",
        lambda: ops.zscore_anomalies(x, 3.0),
        lambda: np.flatnonzero(np.abs(x - x.mean()) / x.std() > 3.0),
        np.array_equal,
    )
    qs = [0.01, 0.5, 0.99]
    step("quantile (3 q)", lambda: ops.quantile(x, qs), lambda: np.quantile(x, qs), close)
    step(
        "histogram (100 bins)",
        lambda: ops.histogram(x, 100),
        lambda: np.histogram(x, 100),
        lambda a, b: np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]),
    )
    step("var + std", lambda: (ops.var(x), ops.std(x)), lambda: (x.var(), x.std()), close)
    emb = step(
        "matmul 2048x256 @ 256x128",
        lambda: ops.matmul(feats, proj),
        lambda: feats @ proj,
        lambda a, b: np.allclose(a, b, rtol=1e-10, atol=1e-8),
    )
    step(
        "cdist 2048x64 (euclidean)",
        lambda: ops.cdist(emb, centres),
        lambda: _np_cdist(emb, centres),
        lambda a, b: np.allclose(a, b, rtol=1e-9, atol=1e-6),
    )
    n_params = max(size // 2, 1)
    p0 = rng.normal(size=n_params)
    grads = [rng.normal(size=n_params), rng.normal(scale=0.1, size=n_params)]

    def adam_loop(update: Callable[..., None]) -> np.ndarray:
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        for it in range(1, ADAM_STEPS + 1):
            update(p, grads[it % 2], m, v, it)
        return p

    step(
        f"{ADAM_STEPS} Adam steps ({n_params:,} params)",
        lambda: adam_loop(lambda p, g, m, v, it: ops.adam_step(p, g, m, v, it, lr=0.05)),
        lambda: adam_loop(lambda p, g, m, v, it: _np_adam(p, g, m, v, it, 0.05)),
        lambda a, b: np.allclose(a, b, rtol=1e-9, atol=1e-12),
    )

    out(f"ferrolab demo: {size:,} sensor readings, simd={simd_level()}, threads={num_threads()}")
    out(f"{'step':<34} {'ferrolab ms':>12} {'numpy ms':>10} {'speed-up':>9}  check")
    for s in steps:
        out(
            f"{s.name:<34} {s.ferrolab_s * 1e3:>12.2f} {s.numpy_s * 1e3:>10.2f} "
            f"{s.speedup:>8.1f}x  {'ok' if s.ok else 'MISMATCH'}"
        )
    calls = {d["operation"]: d["calls"] for d in op_stats()}
    out("instrumented calls: " + ", ".join(f"{k}={v}" for k, v in sorted(calls.items())))
    failed = [s.name for s in steps if not s.ok]
    if failed:
        out("FAILED checks: " + ", ".join(failed))
        return 1
    out("all results match NumPy")
    return 0
