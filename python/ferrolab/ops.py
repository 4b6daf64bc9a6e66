"""Native kernels on NumPy arrays: reductions, fused elementwise ops, statistics, GEMM, distances, Adam.

Every function accepts any array-like of a real dtype, any shape, strides or memory order, read-only and
zero-size arrays. ``float32`` and ``float64`` are computed natively (``float32`` stays ``float32``); integers and
bools are converted the way NumPy converts them for that operation. A ``numpy.ma.MaskedArray`` raises
``TypeError`` (its mask would be ignored); other ndarray subclasses are computed as their data. Results equal
NumPy's to floating-point tolerance, including NaN/inf handling and empty inputs. Inner loops use AVX2/FMA when
the CPU has them, large inputs run on a bounded thread pool (``FERROLAB_NUM_THREADS``), and heavy calls release the
GIL.

Each function takes ``device="cpu"`` (default), ``"cuda"`` (``"cuda:N"``) or ``"auto"``. On a GPU (see
:mod:`ferrolab.gpu`) whole-array reductions and the elementwise ops run with ``"cuda"``; other calls with ``"cuda"``
raise :class:`ferrolab.DeviceUnavailableError` with the reason, never run on the CPU instead. ``"auto"`` runs these
O(n) ops on NumPy data on the CPU.

Errors: a wrong dtype raises ``TypeError``; a shape mismatch, bad ``axis`` or bad ``out`` raises ``ValueError``; a
result (or a copy of a strided or broadcast input) too large to allocate raises ``MemoryError``. Messages name the
function and the argument (or the size that could not be allocated). No input crashes the interpreter: a bug that
makes a kernel panic raises :class:`ferrolab.InternalError`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import BuiltinFunctionType
from typing import Any

import numpy as np

from . import (
    _blas,  # noqa: F401  (hands NumPy's BLAS to matmul)
    _coerce,
    _core,
    _lazy,
)
from . import gpu as _gpu

_lazy.load(_gpu)  # gpu tells the native GPU backend where NVRTC is, before any op can use it

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

# The ops whose native function takes the same arguments are exported as they are (signature, docstring and
# failure counting are the native function's).
sum = _core.sum  # noqa: A001
mean = _core.mean
min = _core.min  # noqa: A001
max = _core.max  # noqa: A001
argmin = _core.argmin
argmax = _core.argmax
var = _core.var
std = _core.std
dot = _core.dot
norm = _core.norm
axpy = _core.axpy
fma = _core.fma
scale = _core.scale
clip = _core.clip
standardize = _core.standardize
matmul = _core.matmul
zscore_anomalies = _core.zscore_anomalies
cdist = _core.cdist
adam_step = _core.adam_step

_quantile = _core.quantile


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
                device = kwargs.get("device")
                _core._record_error(name, device if isinstance(device, str) else "cpu", kind)
            raise

    return wrapper


def _check_device(func: str, device: str) -> None:
    _core.check_device(func, device)


def _check_bin_count(bins: Any, expected: str) -> int:
    """``histogram``'s check of an integer ``bins`` (also used by ``fl.dask.histogram``): the count as an int."""
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool):
        raise TypeError(f"histogram(): argument 'bins' must be {expected}, got {bins!r}")
    if bins < 1:
        raise ValueError(f"histogram(): argument 'bins' must be a positive integer, got {bins}")
    if bins >= np.iinfo(np.intp).max:
        # not the value itself: an int of more than 4,300 digits has no str()
        raise ValueError("histogram(): argument 'bins' is too large: more bins than an array can hold")
    return int(bins)


def _check_range(range: Any) -> tuple[Any, Any]:
    """``histogram``'s check of an explicit ``range``: ``(first, last)``, finite and ordered."""
    try:
        first, last = range
    except TypeError:
        got = type(range).__name__
        raise TypeError(f"histogram(): argument 'range' must be a pair (min, max), got {got}") from None
    except ValueError:
        raise ValueError("histogram(): argument 'range' must be a pair (min, max): it has another length") from None
    try:
        finite = bool(np.isfinite(first) and np.isfinite(last))
    except TypeError:
        if isinstance(first, int) and isinstance(last, int):  # a Python int beyond float64
            raise OverflowError("histogram(): argument 'range' is too large for float64") from None
        got = f"({type(first).__name__}, {type(last).__name__})"
        raise TypeError(f"histogram(): argument 'range' must be a pair of real numbers, got {got}") from None
    if not finite:
        raise ValueError(f"histogram(): argument 'range' [{first}, {last}] is not finite")
    if first > last:
        raise ValueError("histogram(): argument 'range' has max < min")
    return first, last


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
    _coerce.no_mask("histogram", "x", x)
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
        n_bins = _check_bin_count(bins, "an int, a 1-D array of edges or a str")
        if range is not None:
            first, last = _check_range(range)
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
        edges = np.linspace(first, last, n_bins + 1, endpoint=True, dtype=bin_type)
        _coerce.finite_sized_bins("histogram", edges)
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
    qa, q_ints, weak = _quantile_q("quantile", q)
    _coerce.no_mask("quantile", "x", x)
    xa = np.asarray(x)
    if xa.dtype.kind not in "biuf" or xa.dtype.kind == "b":
        raise TypeError(f"quantile(): argument 'x' has dtype {xa.dtype}; expected a real numeric dtype")
    rt = _quantile_dtype(xa.dtype, q, q_ints, weak)
    if rt.kind in "iu" and xa.size:
        # integer q (0 or 1) on integer data: the minimum or the maximum, exactly and in the data's dtype (NumPy)
        ends = {float(v): (max if v else min)(xa, axis=axis, device=device) for v in set(qa.ravel().tolist())}
        res = np.stack([np.asarray(ends[float(v)]) for v in qa.ravel()]).astype(rt, copy=False)
    else:
        work = rt if rt.itemsize >= 4 else np.dtype(np.float32)
        res = _quantile(xa.astype(work, copy=False), qa.ravel().tolist(), axis, device)
        res = np.asarray(res).astype(rt, copy=False)
    if qa.ndim == 0:
        return res[0][()] if res.ndim > 0 else res[()]
    return np.reshape(res, qa.shape + res.shape[1:])


def _quantile_q(func: str, q: Any) -> tuple[np.ndarray, bool, bool]:
    """``q`` of ``func`` checked (numbers in [0, 1], no NaN) as float64, whether it is of integers (or bools), and
    whether it is a Python scalar (weak under NEP 50)."""

    def not_numbers() -> TypeError:
        return TypeError(f"{func}(): argument 'q' must be a number or an array of numbers, got {type(q).__name__}")

    if q is None or isinstance(q, (str, bytes)):
        raise not_numbers()  # as NumPy, also a str that spells a number
    try:
        raw = np.asarray(q)
    except ValueError as e:  # ragged
        raise ValueError(f"{func}(): argument 'q' could not be converted to float64: {e}") from e
    if raw.dtype.kind in "USVMmc":
        kind = {"c": "complex numbers", "M": "dates", "m": "time spans"}.get(raw.dtype.kind, "strings")
        raise TypeError(f"{func}(): argument 'q' must be a number or an array of numbers, not of {kind}")
    try:
        # one conversion for float64 input; an object array: ints beyond float64 overflow, other objects are refused
        qa = raw.astype(np.float64, copy=False)
    except OverflowError as e:
        raise OverflowError(f"{func}(): argument 'q' is too large: {e}") from e
    except (TypeError, ValueError) as e:
        raise not_numbers() from e
    if np.isnan(qa).any():
        raise ValueError(f"{func}(): argument 'q' must not contain NaN")
    if ((qa < 0) | (qa > 1)).any():
        raise ValueError(f"{func}(): argument 'q' must be in the range [0, 1]")
    weak = isinstance(q, (int, float)) and not isinstance(q, np.generic)
    return qa, raw.dtype.kind in "biu", weak


def _quantile_dtype(xdtype: np.dtype, q: Any, q_ints: bool, weak: bool) -> np.dtype:
    """NumPy's result dtype of ``quantile`` (``xdtype`` real): integer q keeps the data's dtype; float q promotes
    with it, a Python float weakly (NEP 50), a NumPy one (float32 too) strongly."""
    if q_ints:
        return np.dtype(xdtype)
    rt = np.result_type(np.empty(0, dtype=xdtype), q) if weak else np.result_type(xdtype, np.asarray(q).dtype)
    return rt if rt.kind == "f" else np.dtype(np.float64)


# doctest does not look into builtins' docstrings: run the native ops' examples from here
__test__ = {name: op.__doc__ for name in __all__ if isinstance(op := globals()[name], BuiltinFunctionType)}
