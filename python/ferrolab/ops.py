"""Native kernels on NumPy arrays: reductions, fused elementwise ops, statistics, GEMM, distances, Adam.

Every function accepts any array-like of a real dtype, any shape, strides or memory order, read-only and
zero-size arrays. ``float32`` and ``float64`` are computed natively (``float32`` stays ``float32``); integers and
bools are converted the way NumPy converts them for that operation. Results equal NumPy's to floating-point
tolerance, including NaN/inf handling and empty inputs. Inner loops use AVX2/FMA when the CPU has them, large
inputs run on a bounded thread pool (``FERROLAB_NUM_THREADS``), and heavy calls release the GIL.

Each function takes ``device="cpu"`` (default), ``"cuda"`` or ``"auto"``. This build has no CUDA backend:
``"auto"`` runs on the CPU and ``"cuda"`` raises :class:`ferrolab.DeviceUnavailableError`.

Errors: a wrong dtype raises ``TypeError``; a shape mismatch, bad ``axis`` or bad ``out`` raises ``ValueError``; a
result (or a copy of a strided or broadcast input) too large to allocate raises ``MemoryError``. Messages name the
function and the argument (or the size that could not be allocated). No input crashes the interpreter: a bug that
makes a kernel panic raises :class:`ferrolab.InternalError`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _core

__all__ = [
    "sum",
    "mean",
    "min",
    "max",
    "argmin",
    "argmax",
    "var",
    "std",
    "dot",
    "norm",
    "axpy",
    "fma",
    "scale",
    "clip",
    "standardize",
    "matmul",
    "histogram",
    "quantile",
    "zscore_anomalies",
    "cdist",
    "adam_step",
]

ArrayLike = Any

_sum = _core.sum
_mean = _core.mean
_min = _core.min
_max = _core.max
_argmin = _core.argmin
_argmax = _core.argmax
_var = _core.var
_std = _core.std
_dot = _core.dot
_norm = _core.norm
_axpy = _core.axpy
_fma = _core.fma
_scale = _core.scale
_clip = _core.clip
_standardize = _core.standardize
_matmul = _core.matmul
_quantile = _core.quantile
_zscore_anomalies = _core.zscore_anomalies
_cdist = _core.cdist
_adam_step = _core.adam_step


def _counted(func: Any) -> Any:
    """Count a failure raised in a Python-level op wrapper (native failures are counted natively)."""
    name = func.__name__

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as e:
            if not getattr(e, "__ferrolab_counted__", False):
                kind = type(e).__name__
                if kind not in _core.ERROR_KINDS:
                    kind = "Other"
                _core._record_error(name, "cuda" if kwargs.get("device") == "cuda" else "cpu", kind)
            raise

    return wrapper


def _check_device(func: str, device: str) -> None:
    _core.check_device(func, device)


def sum(x: ArrayLike, axis: int | None = None, *, device: str = "cpu") -> Any:  # noqa: A001
    """Sum of array elements over an axis, like :func:`numpy.sum`.

    Blocked SIMD summation with compensated combination: the error does not grow with the input length
    (``float32`` inputs are accumulated in ``float64``).

    Parameters
    ----------
    x : array_like
        Input data.
    axis : int, optional
        Axis to sum over; ``None`` (default) sums all elements.
    device : {"cpu", "cuda", "auto"}, optional
        Where to compute.

    Returns
    -------
    numpy scalar or ndarray
        The sum; 0 for an empty input.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.sum(np.arange(5.0))
    np.float64(10.0)
    >>> fl.ops.sum(np.ones((2, 3), dtype=np.float32), axis=0)
    array([2., 2., 2.], dtype=float32)
    """
    return _sum(x, axis, device)


def mean(x: ArrayLike, axis: int | None = None, *, device: str = "cpu") -> Any:
    """Arithmetic mean over an axis, like :func:`numpy.mean`.

    An empty reduction returns NaN and warns ``RuntimeWarning: Mean of empty slice`` as NumPy does.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.mean(np.array([1.0, 2.0, 6.0]))
    np.float64(3.0)
    """
    return _mean(x, axis, device)


def min(x: ArrayLike, axis: int | None = None, *, device: str = "cpu") -> Any:  # noqa: A001
    """Minimum over an axis, like :func:`numpy.min` (NaN propagates; empty input is a ``ValueError``).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.min(np.array([[3.0, 1.0], [0.5, 7.0]]), axis=1)
    array([1. , 0.5])
    """
    return _min(x, axis, device)


def max(x: ArrayLike, axis: int | None = None, *, device: str = "cpu") -> Any:  # noqa: A001
    """Maximum over an axis, like :func:`numpy.max` (NaN propagates; empty input is a ``ValueError``).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.max(np.array([3, 9, 2], dtype=np.int32))
    np.int32(9)
    """
    return _max(x, axis, device)


def argmin(x: ArrayLike, axis: int | None = None, *, device: str = "cpu") -> Any:
    """Index of the first minimum, like :func:`numpy.argmin` (a NaN counts as the minimum).

    With ``axis=None`` the index refers to the C-order flattened array.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.argmin(np.array([4.0, 1.0, 1.0, 3.0]))
    np.int64(1)
    """
    return _argmin(x, axis, device)


def argmax(x: ArrayLike, axis: int | None = None, *, device: str = "cpu") -> Any:
    """Index of the first maximum, like :func:`numpy.argmax` (a NaN counts as the maximum).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.argmax(np.array([[1.0, 5.0], [7.0, 2.0]]), axis=0)
    array([1, 0])
    """
    return _argmax(x, axis, device)


def var(x: ArrayLike, axis: int | None = None, ddof: float = 0, *, device: str = "cpu") -> Any:
    """Variance over an axis, like :func:`numpy.var`.

    One pass over memory, numerically stable (per-block corrected two-pass moments merged with Chan's
    formula), so a large offset plus small noise keeps its precision.

    Parameters
    ----------
    x : array_like
        Input data.
    axis : int, optional
        Axis to reduce; ``None`` (default) uses all elements.
    ddof : float, optional
        Delta degrees of freedom: the divisor is ``N - ddof``.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.var(np.array([1.0, 2.0, 3.0, 4.0]), ddof=1)
    np.float64(1.6666666666666667)
    """
    return _var(x, axis, float(ddof), device)


def std(x: ArrayLike, axis: int | None = None, ddof: float = 0, *, device: str = "cpu") -> Any:
    """Standard deviation over an axis, like :func:`numpy.std` (see :func:`var`).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.std(np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]))
    np.float64(2.0)
    """
    return _std(x, axis, float(ddof), device)


def dot(x: ArrayLike, y: ArrayLike, *, device: str = "cpu") -> Any:
    """Inner product of two 1-D arrays of equal length, like :func:`numpy.dot`.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.dot(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    np.float64(32.0)
    """
    return _dot(x, y, device)


def norm(x: ArrayLike, axis: int | None = None, *, device: str = "cpu") -> Any:
    """L2 norm, like :func:`numpy.linalg.norm` (of all elements for ``axis=None``, else along ``axis``).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.norm(np.array([3.0, 4.0]))
    np.float64(5.0)
    """
    return _norm(x, axis, device)


def axpy(a: float, x: ArrayLike, y: ArrayLike, out: np.ndarray | None = None, *, device: str = "cpu") -> Any:
    """``a * x + y`` in one pass (fused multiply-add), broadcasting like NumPy.

    Parameters
    ----------
    a : float
        Scalar factor.
    x, y : array_like
        Operands (broadcast together).
    out : ndarray, optional
        Where to write the result; may be ``x`` or ``y`` itself (computed in place). Reusing an output array
        avoids the page faults of a fresh allocation on large inputs.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> y = np.ones(3)
    >>> fl.ops.axpy(2.0, np.arange(3.0), y, out=y)
    array([1., 3., 5.])
    """
    return _axpy(a, x, y, out, device)


def fma(x: ArrayLike, y: ArrayLike, z: ArrayLike, out: np.ndarray | None = None, *, device: str = "cpu") -> Any:
    """``x * y + z`` in one pass (fused multiply-add), broadcasting like NumPy.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.fma(np.array([1.0, 2.0]), np.array([3.0, 4.0]), 1.0)
    array([4., 9.])
    """
    return _fma(x, y, z, out, device)


def scale(x: ArrayLike, a: float, out: np.ndarray | None = None, *, device: str = "cpu") -> Any:
    """``a * x``.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.scale(np.array([1.0, -2.0]), 0.5)
    array([ 0.5, -1. ])
    """
    return _scale(x, a, out, device)


def clip(
    x: ArrayLike, lo: float | None, hi: float | None, out: np.ndarray | None = None, *, device: str = "cpu"
) -> Any:
    """Limit values to ``[lo, hi]``, like :func:`numpy.clip` (NaN stays NaN; ``None`` leaves a side open).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.clip(np.array([-1.0, 0.5, 3.0]), 0.0, 1.0)
    array([0. , 0.5, 1. ])
    """
    return _clip(x, lo, hi, out, device)


def standardize(
    x: ArrayLike,
    axis: int | None = None,
    ddof: float = 0,
    out: np.ndarray | None = None,
    *,
    device: str = "cpu",
) -> Any:
    """``(x - x.mean(axis)) / x.std(axis, ddof=ddof)`` with the statistics broadcast back, in two passes.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.standardize(np.array([1.0, 2.0, 3.0]))
    array([-1.22474487,  0.        ,  1.22474487])
    """
    return _standardize(x, axis, float(ddof), out, device)


def matmul(a: ArrayLike, b: ArrayLike, out: np.ndarray | None = None, *, device: str = "cpu") -> Any:
    """Matrix product of two 2-D arrays, like ``a @ b`` (GEMM from the ``gemm`` crate, multi-threaded).

    Any strides or memory order are used without copying; ``out`` may be Fortran-ordered.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.matmul(np.eye(2), np.array([[1.0, 2.0], [3.0, 4.0]]))
    array([[1., 2.],
           [3., 4.]])
    """
    return _matmul(a, b, out, device)


@_counted
def histogram(
    x: ArrayLike,
    bins: int | Sequence[float] | str = 10,
    range: tuple[float, float] | None = None,  # noqa: A002
    *,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of ``x``, like :func:`numpy.histogram`: returns ``(counts, edges)``.

    Equal-width bins are indexed arithmetically and corrected against the edges exactly like NumPy, so every
    value lands in the same bin; the last bin includes its right edge. ``bins`` may also be an array of
    monotonically increasing edges or one of NumPy's bin-estimator names (``"auto"``, ``"fd"``, ...).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> counts, edges = fl.ops.histogram(np.array([0.0, 0.2, 0.4, 1.0]), bins=2)
    >>> counts
    array([3, 1])
    >>> edges
    array([0. , 0.5, 1. ])
    """
    _check_device("histogram", device)
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"histogram(): argument 'x' has dtype {a.dtype}; expected a real numeric dtype")
    if isinstance(bins, str) or np.ndim(bins) == 1:
        try:
            edges = np.histogram_bin_edges(a, bins=bins, range=range)
        except ValueError as e:
            raise ValueError(f"histogram(): argument 'bins' is invalid: {e}") from e
        uniform = False
    else:
        if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool):
            raise TypeError(f"histogram(): argument 'bins' must be an int, a 1-D array of edges or a str, got {bins!r}")
        if bins < 1:
            raise ValueError(f"histogram(): argument 'bins' must be a positive integer, got {bins}")
        if range is not None:
            first, last = range
            if first > last:
                raise ValueError("histogram(): argument 'range' has max < min")
            if not (np.isfinite(first) and np.isfinite(last)):
                raise ValueError(f"histogram(): argument 'range' [{first}, {last}] is not finite")
        elif a.size == 0:
            first, last = 0, 1
        else:
            first, last = _core.minmax(a)
            if a.dtype.kind == "f":  # NumPy takes min/max in the data's own dtype
                first, last = a.dtype.type(first), a.dtype.type(last)
            if not (np.isfinite(first) and np.isfinite(last)):
                raise ValueError(f"histogram(): autodetected range of [{first}, {last}] is not finite")
        if first == last:
            first, last = first - 0.5, last + 0.5
        bin_type = np.result_type(first, last, a)
        if np.issubdtype(bin_type, np.integer):
            bin_type = np.result_type(bin_type, float)
        edges = np.linspace(first, last, bins + 1, endpoint=True, dtype=bin_type)
        uniform = True
    counts = _core.histogram_counts(a, edges, uniform)
    return counts, edges


@_counted
def quantile(x: ArrayLike, q: ArrayLike, axis: int | None = None, *, device: str = "cpu") -> Any:
    """Quantiles with NumPy's default ``"linear"`` method, like :func:`numpy.quantile`.

    Uses selection (no full sort). A slice containing NaN gives NaN.

    Parameters
    ----------
    x : array_like
        Input data.
    q : float or array_like of float
        Quantiles in ``[0, 1]``. The result has shape ``q.shape + reduced shape``.
    axis : int, optional
        Axis to reduce; ``None`` (default) uses all elements.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.quantile(np.arange(11.0), [0.1, 0.5])
    array([1., 5.])
    """
    _check_device("quantile", device)
    qa = np.asarray(q, dtype=np.float64)
    if np.isnan(qa).any():
        raise ValueError("quantile(): argument 'q' must not contain NaN")
    xa = np.asarray(x)
    if xa.dtype.kind not in "biuf" or xa.dtype.kind == "b":
        raise TypeError(f"quantile(): argument 'x' has dtype {xa.dtype}; expected a real numeric dtype")
    # NumPy's result type: Python scalars are weak (NEP 50), NumPy scalars and arrays of q are float64
    weak = isinstance(q, (int, float)) and not isinstance(q, np.generic)
    rt = np.result_type(xa, q if weak else qa)
    if rt.kind != "f":
        rt = np.dtype(np.float64)
    work = rt if rt.itemsize >= 4 else np.dtype(np.float32)
    res = _quantile(xa.astype(work, copy=False), qa.ravel().tolist(), axis, device)
    res = np.asarray(res).astype(rt, copy=False)
    if qa.ndim == 0:
        return res[0][()] if res.ndim > 0 else res[()]
    return np.reshape(res, qa.shape + res.shape[1:])


def zscore_anomalies(x: ArrayLike, threshold: float = 3.0, *, device: str = "cpu") -> np.ndarray:
    """Flat indices where ``|x - mean| / std > threshold``, like ``np.flatnonzero(abs(x - x.mean()) / x.std() > t)``.

    Two passes: the moments, then a branch-free scan that collects the few hits.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> x = np.zeros(100); x[42] = 50.0
    >>> fl.ops.zscore_anomalies(x)
    array([42])
    """
    return _zscore_anomalies(x, float(threshold), device)


def cdist(a: ArrayLike, b: ArrayLike, metric: str = "euclidean", *, device: str = "cpu") -> np.ndarray:
    """Distances between every row of ``a`` and every row of ``b``, like :func:`scipy.spatial.distance.cdist`.

    ``metric`` is ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``. Computed directly per pair (no
    ``|a|^2 + |b|^2 - 2ab`` cancellation), so equal points are exactly 0 apart. ``float32`` inputs give a
    ``float32`` result (SciPy always returns ``float64``).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> fl.ops.cdist(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]]))
    array([[5., 1.]])
    """
    return _cdist(a, b, metric, device)


def adam_step(
    param: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    t: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    decoupled: bool = False,
    device: str = "cpu",
) -> None:
    """One in-place Adam step with the arithmetic of PyTorch's ``torch.optim.Adam``.

    ``param``, ``m`` and ``v`` are updated in place (they must be writeable float32/float64 arrays of one dtype
    and shape; ``grad`` the same dtype and shape). ``t`` is the step number, from 1. With ``weight_decay``,
    ``decoupled=False`` adds ``weight_decay * param`` to the gradient (``Adam``); ``decoupled=True`` decays
    the parameters directly (``AdamW``).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> p = np.array([1.0, -1.0]); g = np.array([0.5, -0.5])
    >>> m = np.zeros(2); v = np.zeros(2)
    >>> fl.ops.adam_step(p, g, m, v, t=1, lr=0.1)
    >>> p.round(6)
    array([ 0.9, -0.9])
    """
    _adam_step(param, grad, m, v, int(t), lr, beta1, beta2, eps, weight_decay, decoupled, device)
