"""ferrolab's ops on ``dask.array`` arrays: native kernels on every chunk, exact merges, lazy results.

Each function takes a :class:`dask.array.Array` of any chunking and returns a lazy dask array (a 0-d one for a
whole-array reduction), so it runs on whichever scheduler computes it: threads, processes or ``distributed``.
Every chunk goes through the matching :mod:`ferrolab.ops` kernel (native, GIL released); the per-chunk results are
merged exactly:

* ``sum``/``mean``/``min``/``max``: per-chunk reductions combined in a tree;
* ``var``/``std``: per-chunk ``(n, mean, M2)`` combined with Chan's parallel formula, then ``ddof``;
* ``quantile``: NumPy's default ``"linear"`` method, exactly. Over the whole array: a min/max pass, then per-chunk
  histograms narrow each wanted rank to one bin, and the few values in that bin are gathered and selected. Along an
  axis: that axis is made one chunk and each block runs :func:`ferrolab.ops.quantile`;
* ``histogram``: per-chunk counts summed; the edges are NumPy's (``range`` from a min/max pass when not given);
* ``standardize``: ``(x - mean) / std`` with the moments above, as a lazy array of the shape of ``x``;
* ``zscore_anomalies``: the flat indices of :func:`ferrolab.ops.zscore_anomalies`, as a 1-D array of unknown length.

NaN behaves as in :mod:`ferrolab.ops` (it propagates; a quantile of data with NaN is NaN). Results equal NumPy's on
the computed array to floating-point tolerance (a tree of partial sums rounds differently from one pass).

:func:`setup` prepares the workers of a ``distributed`` client: ferrolab tracing configured with the client's
service name, and each worker's ferrolab series served on the worker's own Prometheus endpoint, Dask's ``/metrics``
(:func:`worker_metrics_urls`).

Examples
--------
>>> import dask.array as da, numpy as np, ferrolab as fl
>>> x = da.from_array(np.arange(10.0), chunks=3)
>>> float(fl.dask.var(x).compute())
8.25
>>> fl.dask.quantile(x, [0.1, 0.5]).compute()
array([0.9, 4.5])
>>> counts, edges = fl.dask.histogram(x, bins=2)
>>> counts.compute()
array([5, 5])
"""

from __future__ import annotations

import builtins
import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import _coerce, _core
from . import ops as _ops

__all__ = [
    "sum",
    "mean",
    "min",
    "max",
    "var",
    "std",
    "quantile",
    "histogram",
    "standardize",
    "zscore_anomalies",
    "setup",
    "worker_metrics_urls",
    "WorkerPlugin",  # noqa: F822  (made on first use: module __getattr__)
]

#: bins of one refinement histogram of :func:`quantile`
QUANTILE_BINS = 4096
#: a bracketing bin with at most this many values is gathered; a fuller one is refined by another histogram
QUANTILE_GATHER = 1 << 20
#: refinement steps in the graph of :func:`quantile` (unneeded steps do not touch the data)
QUANTILE_STEPS = 4


def _da() -> Any:
    try:
        import dask.array as da
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ferrolab.dask needs dask: pip install 'ferrolab[dask]'") from e
    return da


def _check(func: str, x: Any, kinds: str = "biuf") -> Any:
    da = _da()
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{func}(): argument 'x' must be a dask.array.Array, got {type(x).__name__} "
            f"(use ferrolab.ops.{func} for NumPy arrays, or dask.array.from_array)"
        )
    if x.dtype.kind not in kinds:
        raise TypeError(f"{func}(): argument 'x' has dtype {x.dtype}; expected a real numeric dtype")
    return da


def _axis(func: str, x: Any, axis: Any) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{func}(): argument 'axis' must be an int or None, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{func}(): argument 'axis' is {axis}, out of bounds for an array of dimension {x.ndim}")
    return int(axis) % x.ndim


def _ddof(func: str, ddof: Any) -> float:
    if isinstance(ddof, bool) or not isinstance(ddof, (int, float, np.integer, np.floating)):
        raise TypeError(f"{func}(): argument 'ddof' must be a number, got {ddof!r}")
    return float(ddof)


def _np_result(func: str, x: Any, axis: int | None, **kw: Any) -> Any:
    """The result NumPy's twin gives on a 1-element array of x's dtype (its dtype)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(np, func)(np.ones((1,) * (x.ndim or 1), dtype=x.dtype), **kw)


def _reduce_one(block: np.ndarray, op: Any, axis: tuple[int, ...], **kw: Any) -> Any:
    """``op`` over the reduced axes of a block (all of them, or one), keeping dims."""
    if len(axis) == block.ndim:
        return np.reshape(np.asarray(op(block, **kw)), (1,) * block.ndim)
    (a,) = axis
    return np.expand_dims(np.asarray(op(block, axis=a, **kw)), a)


def _reduced_size(block: np.ndarray, axis: tuple[int, ...]) -> int:
    return math.prod(block.shape[a] for a in axis)


def _out_shape(block: np.ndarray, axis: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axis else s for i, s in enumerate(block.shape))


def _trace_parent() -> tuple[str, str] | None:
    """(trace_id, span_id) of the caller's recording ferrolab span, carried with the tasks; None without one."""
    from . import tracing

    span = tracing.current_span()
    if span is None or not span.is_recording:
        return None
    return (span.trace_id, span.span_id)


@contextlib.contextmanager
def _chunk_span(op: str, parent: tuple[str, str] | None) -> Iterator[None]:
    """A ``fl.dask.<op>`` span around one task, a child of the client's span ``parent`` (through
    opentelemetry-python's context, which ferrolab spans take as their parent when no ferrolab span is open; without
    opentelemetry-api the task runs untraced)."""
    if parent is None:
        yield
        return
    from . import tracing

    if tracing.current_span() is not None:  # in the caller's own thread: its span is the parent already
        with tracing.span(f"fl.dask.{op}"):
            yield
        return
    try:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    except ImportError:  # pragma: no cover - opentelemetry-api is optional
        yield
        return
    ctx = SpanContext(int(parent[0], 16), int(parent[1], 16), is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(ctx), end_on_exit=False), tracing.span(f"fl.dask.{op}"):
        yield


class _Traced:
    """A task function that runs in :func:`_chunk_span` (the parent taken when the graph is built)."""

    def __init__(self, op: str, fn: Any) -> None:
        self.op, self.fn, self.parent = op, fn, _trace_parent()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.parent is None:
            return self.fn(*args, **kwargs)
        with _chunk_span(self.op, self.parent):
            return self.fn(*args, **kwargs)


def _reduction(x: Any, chunk: Any, combine: Any, aggregate: Any, axis: int | None, dtype: Any, op: str) -> Any:
    da = _da()
    out_ndim = 0 if axis is None else x.ndim - 1

    traced = _Traced(op, chunk)

    def per_chunk(b: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False) -> Any:
        if computing_meta:  # dask's meta of the intermediate: the result's dtype keeps its casts happy
            return np.zeros(_out_shape(b, axis), dtype=dtype)
        return traced(b, axis, keepdims)

    return da.reduction(
        x,
        per_chunk,
        aggregate,
        combine=combine,
        axis=axis,
        keepdims=False,
        dtype=dtype,
        meta=np.empty((0,) * out_ndim, dtype=dtype),
        concatenate=True,
    )


# --------------------------------------------------------------------------------------------- sum, mean, min, max


def sum(x: Any, axis: int | None = None) -> Any:  # noqa: A001
    """Sum over ``axis`` (``None``: all elements), like :func:`numpy.sum`; a lazy dask array.

    >>> import dask.array as da, ferrolab as fl
    >>> fl.dask.sum(da.ones((4, 6), chunks=(3, 4)), axis=0).compute()
    array([4., 4., 4., 4., 4., 4.])
    """
    _check("sum", x)
    axis = _axis("sum", x, axis)
    dtype = _np_result("sum", x, None).dtype
    wide = np.float64 if dtype.kind == "f" else dtype

    def chunk(b: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False) -> Any:
        if computing_meta or b.size == 0:
            return np.zeros(_out_shape(b, axis), dtype=wide)
        return _reduce_one(b, _ops.sum, axis).astype(wide, copy=False)

    def combine(p: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> Any:
        return np.sum(p, axis=axis, keepdims=True)

    def aggregate(p: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> Any:
        return np.asarray(np.sum(p, axis=axis)).astype(dtype, copy=False)

    return _reduction(x, chunk, combine, aggregate, axis, dtype, "sum")


def mean(x: Any, axis: int | None = None) -> Any:
    """Mean over ``axis``, like :func:`numpy.mean` (float32 stays float32); a lazy dask array.

    >>> import dask.array as da, numpy as np, ferrolab as fl
    >>> float(fl.dask.mean(da.from_array(np.arange(5.0), chunks=2)).compute())
    2.0
    """
    _check("mean", x)
    axis = _axis("mean", x, axis)
    dtype = _np_result("mean", x, None).dtype
    return _moments(x, axis, dtype, lambda n, m, m2: m, with_m2=False, op="mean")


def _extreme(func: str, x: Any, axis: int | None) -> Any:
    _check(func, x)
    axis = _axis(func, x, axis)
    dtype = x.dtype
    npop = np.min if func == "min" else np.max
    op = _ops.min if func == "min" else _ops.max
    fields = [("v", dtype), ("n", np.int64)]

    def chunk(b: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False) -> Any:
        out = np.zeros(_out_shape(b, axis), dtype=fields)
        if computing_meta or _reduced_size(b, axis) == 0:
            return out
        out["v"] = _reduce_one(b, op, axis)
        out["n"] = _reduced_size(b, axis)
        return out

    def merge(p: np.ndarray, axis: tuple[int, ...]) -> Any:
        out = np.zeros(_out_shape(p, axis), dtype=fields)
        n = p["n"].sum(axis=axis, keepdims=True)
        if p.size:
            v = p["v"]
            if v.dtype.kind == "f":
                fill = np.inf if func == "min" else -np.inf
            else:
                info = np.iinfo(v.dtype) if v.dtype.kind in "iu" else None
                fill = (info.max if func == "min" else info.min) if info else (func == "min")
            v = np.where(p["n"] > 0, v, fill)
            out["v"] = npop(v, axis=axis, keepdims=True)
        out["n"] = n
        return out

    def combine(p: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> Any:
        return merge(p, axis)

    def aggregate(p: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> Any:
        r = merge(p, axis)
        if (r["n"] == 0).any():
            raise ValueError(f"{func}(): zero-size array to reduction operation {func} which has no identity")
        return np.squeeze(r["v"], axis=axis)

    return _reduction(x, chunk, combine, aggregate, axis, dtype, func)


def min(x: Any, axis: int | None = None) -> Any:  # noqa: A001
    """Minimum over ``axis``, like :func:`numpy.min` (NaN propagates; an empty reduction raises ``ValueError``).

    >>> import dask.array as da, numpy as np, ferrolab as fl
    >>> int(fl.dask.min(da.from_array(np.array([3, 1, 2]), chunks=1)).compute())
    1
    """
    return _extreme("min", x, axis)


def max(x: Any, axis: int | None = None) -> Any:  # noqa: A001
    """Maximum over ``axis``, like :func:`numpy.max` (NaN propagates; an empty reduction raises ``ValueError``)."""
    return _extreme("max", x, axis)


# ----------------------------------------------------------------------------------------------- moments (Chan)

_MOM = [("n", np.float64), ("mean", np.float64), ("m2", np.float64)]


def _moment_chunk(b: np.ndarray, axis: tuple[int, ...], with_m2: bool) -> np.ndarray:
    out = np.zeros(_out_shape(b, axis), dtype=_MOM)
    n = _reduced_size(b, axis)
    if n == 0:
        return out
    if b.dtype.kind == "b":
        b = b.astype(np.float64)
    out["n"] = n
    out["mean"] = _reduce_one(b, _ops.mean, axis)
    if with_m2:
        if n > 1:
            out["m2"] = _reduce_one(b, _ops.var, axis) * n
        else:  # one value: M2 is 0, or NaN for a non-finite one (as NumPy's var)
            out["m2"] = np.where(np.isfinite(out["mean"]), 0.0, np.nan)
    return out


def _moment_merge(p: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Chan et al.'s parallel merge of (n, mean, M2) over ``axis``, generalised to k parts at once."""
    out = np.zeros(_out_shape(p, axis), dtype=_MOM)
    n = p["n"].sum(axis=axis, keepdims=True)
    some = p["n"] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        wsum = np.where(some, p["n"] * p["mean"], 0.0).sum(axis=axis, keepdims=True)
        m = np.where(n > 0, wsum / np.where(n > 0, n, 1.0), 0.0)
        dev = np.where(some, p["mean"] - m, 0.0)
        m2 = np.where(some, p["m2"], 0.0).sum(axis=axis, keepdims=True) + (np.where(some, p["n"] * dev * dev, 0.0)).sum(
            axis=axis, keepdims=True
        )
    out["n"], out["mean"], out["m2"] = n, m, m2
    return out


def _moments(x: Any, axis: int | None, dtype: Any, finish: Any, with_m2: bool = True, op: str = "var") -> Any:
    def chunk(b: np.ndarray, axis: tuple[int, ...], keepdims: bool, computing_meta: bool = False) -> Any:
        if computing_meta:
            return np.zeros(_out_shape(b, axis), dtype=_MOM)
        return _moment_chunk(b, axis, with_m2)

    def combine(p: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> Any:
        return _moment_merge(p, axis)

    def aggregate(p: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> Any:
        r = np.squeeze(_moment_merge(p, axis), axis=axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            n = r["n"]
            m = np.where(n > 0, r["mean"], np.nan)
            res = finish(n, m, r["m2"])
        if (r["n"] == 0).any():
            msg = "Degrees of freedom <= 0 for slice" if with_m2 else "Mean of empty slice"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return np.asarray(res).astype(dtype, copy=False)

    return _reduction(x, chunk, combine, aggregate, axis, dtype, op)


def _var_finish(ddof: float, sqrt: bool) -> Any:
    def finish(n: np.ndarray, m: np.ndarray, m2: np.ndarray) -> Any:
        v = m2 / np.maximum(n - ddof, 0)
        return np.sqrt(v) if sqrt else v

    return finish


def var(x: Any, axis: int | None = None, ddof: float = 0) -> Any:
    """Variance over ``axis``, like :func:`numpy.var`: per-chunk ``(n, mean, M2)`` merged with Chan's formula.

    >>> import dask.array as da, numpy as np, ferrolab as fl
    >>> float(fl.dask.var(da.from_array(np.array([1.0, 2.0, 3.0, 4.0]), chunks=3), ddof=1).compute())
    1.6666666666666667
    """
    _check("var", x)
    axis = _axis("var", x, axis)
    ddof = _ddof("var", ddof)
    return _moments(x, axis, _np_result("var", x, None).dtype, _var_finish(ddof, False))


def std(x: Any, axis: int | None = None, ddof: float = 0) -> Any:
    """Standard deviation over ``axis``, like :func:`numpy.std` (see :func:`var`)."""
    _check("std", x)
    axis = _axis("std", x, axis)
    ddof = _ddof("std", ddof)
    return _moments(x, axis, _np_result("std", x, None).dtype, _var_finish(ddof, True), op="std")


def standardize(x: Any, axis: int | None = None, ddof: float = 0) -> Any:
    """``(x - x.mean(axis)) / x.std(axis, ddof=ddof)`` as a lazy dask array of the shape and chunks of ``x``.

    One pass for the moments (native, merged exactly), one elementwise pass.

    >>> import dask.array as da, numpy as np, ferrolab as fl
    >>> fl.dask.standardize(da.from_array(np.array([1.0, 3.0]), chunks=1)).compute()
    array([-1.,  1.])
    """
    da = _check("standardize", x)
    axis = _axis("standardize", x, axis)
    ddof = _ddof("standardize", ddof)
    dtype = _np_result("std", x, None).dtype

    def both(n: np.ndarray, m: np.ndarray, m2: np.ndarray) -> Any:
        out = np.empty(np.shape(n), dtype=[("mean", dtype), ("std", dtype)])
        out["mean"] = m
        out["std"] = np.sqrt(m2 / np.maximum(n - ddof, 0))
        return out

    stats = _moments(x, axis, np.dtype([("mean", dtype), ("std", dtype)]), both, op="standardize")
    if axis is not None:
        stats = da.expand_dims(stats, axis)

    def apply(b: np.ndarray, s: np.ndarray) -> np.ndarray:
        out = np.asarray(np.subtract(b, s["mean"], dtype=dtype))  # an array also for a 0-d block
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(out, s["std"], out=out)
        return out

    return da.map_blocks(
        _Traced("standardize", apply), x, stats, dtype=dtype, meta=np.empty((0,) * x.ndim, dtype=dtype)
    )


def zscore_anomalies(x: Any, threshold: float = 3.0) -> Any:
    """Flat (C-order) indices where ``|x - mean| / std > threshold``, like :func:`ferrolab.ops.zscore_anomalies`.

    A lazy int64 dask array of unknown length (the moments pass, then a scan of every chunk).

    >>> import dask.array as da, numpy as np, ferrolab as fl
    >>> fl.dask.zscore_anomalies(da.from_array(np.array([0.0] * 10 + [100.0]), chunks=4)).compute()
    array([10])
    """
    da = _check("zscore_anomalies", x)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"zscore_anomalies(): argument 'threshold' must be a number, got {threshold!r}")
    import dask

    threshold = float(threshold)

    sdt = np.dtype([("mean", np.float64), ("std", np.float64)])

    def both(n: np.ndarray, m: np.ndarray, m2: np.ndarray) -> Any:
        out = np.empty(np.shape(n), dtype=sdt)
        out["mean"], out["std"] = m, np.sqrt(m2 / n)
        return out

    stats = _moments(x, None, sdt, both, op="zscore_anomalies")
    indices = list(np.ndindex(*x.numblocks))

    def hits(b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """The block's hits as local indices (one row per dimension), and the block's shape."""
        with np.errstate(invalid="ignore", divide="ignore"):
            local = np.nonzero(np.atleast_1d(np.abs(b - s["mean"]) / s["std"] > threshold))
        return np.array(local, dtype=np.int64).reshape(len(local), -1), b.shape

    def gather(parts: list[tuple[np.ndarray, tuple[int, ...]]]) -> np.ndarray:
        """Flat indices: the blocks' offsets come from their shapes (also where the chunk sizes were unknown)."""
        if x.ndim == 0:
            return parts[0][0][0]
        sizes = [[0] * n for n in x.numblocks]
        for (_, bshape), idx in zip(parts, indices, strict=True):
            for d, n in enumerate(bshape):
                sizes[d][idx[d]] = n
        offsets = [np.cumsum([0] + sz[:-1]) for sz in sizes]
        shape = tuple(builtins.sum(sz) for sz in sizes)
        flat = [
            np.ravel_multi_index(tuple(loc[d] + offsets[d][idx[d]] for d in range(x.ndim)), shape)
            for (loc, _), idx in zip(parts, indices, strict=True)
            if loc.shape[1]
        ]
        return np.sort(np.concatenate(flat)).astype(np.int64) if flat else np.empty(0, dtype=np.int64)

    blocks = x.to_delayed().ravel()
    parts = [dask.delayed(_Traced("zscore_anomalies", hits), pure=True)(b, stats) for b in blocks]
    out = dask.delayed(gather, pure=True)(parts)
    return da.from_delayed(out, shape=(np.nan,), dtype=np.int64, meta=np.empty(0, dtype=np.int64))


# -------------------------------------------------------------------------------------------------- histogram


def _minmax_delayed(x: Any) -> Any:
    """A delayed ``(min, max, nan_seen, count)`` over all elements (min/max as float64)."""
    import dask

    def part(b: np.ndarray) -> tuple[float, float, int]:
        if b.size == 0:
            return (np.inf, -np.inf, 0)
        lo, hi = _core.minmax(b)  # one native pass; NaN propagates
        return (float(lo), float(hi), b.size)

    def merge(parts: list[tuple[float, float, int]]) -> tuple[float, float, bool, int]:
        los = [p[0] for p in parts]
        his = [p[1] for p in parts]
        nan = any(v != v for v in los + his)
        n = int(np.sum([p[2] for p in parts]))
        if nan:
            return (np.nan, np.nan, True, n)
        return (float(np.min(los)) if los else np.inf, float(np.max(his)) if his else -np.inf, False, n)

    parts = [dask.delayed(_Traced("minmax", part), pure=True)(b) for b in x.to_delayed().ravel()]
    return dask.delayed(merge, pure=True)(parts)


def histogram(
    x: Any,
    bins: int | Sequence[float] = 10,
    range: tuple[float, float] | None = None,  # noqa: A002
) -> tuple[Any, Any]:
    """Histogram of all elements of ``x``, like :func:`numpy.histogram`: lazy ``(counts, edges)`` dask arrays.

    ``bins`` is a number of equal-width bins or a 1-D array of increasing edges (NumPy's estimator names such as
    ``"auto"`` need all the data at once and are refused). Without ``range`` a min/max pass gives it, and the edges
    are NumPy's ``linspace`` over it, so every value lands in the bin NumPy puts it in.

    >>> import dask.array as da, numpy as np, ferrolab as fl
    >>> counts, edges = fl.dask.histogram(da.from_array(np.array([0.0, 0.2, 0.4, 1.0]), chunks=3), bins=2)
    >>> counts.compute(), edges.compute()
    (array([3, 1]), array([0. , 0.5, 1. ]))
    """
    da = _check("histogram", x)
    import dask

    dtype = x.dtype
    if isinstance(bins, str):
        raise ValueError(f"histogram(): argument 'bins' {bins!r}: bin estimators are not supported on dask arrays")
    if np.ndim(bins) == 1:
        edges_np = np.asarray(bins)
        if edges_np.size < 2 or np.any(edges_np[:-1] > edges_np[1:]):
            raise ValueError("histogram(): argument 'bins' must increase monotonically, when an array")
        nb = edges_np.size - 1
        edges = dask.delayed(edges_np)
        uniform = False
    else:
        nb = _ops._check_bin_count(bins, "an int or a 1-D array of edges")
        uniform = True
        if range is not None:
            first, last = _ops._check_range(range)
            edges = dask.delayed(_uniform_edges)(first, last, nb, dtype, False)
        else:
            edges = dask.delayed(_uniform_edges)(_minmax_delayed(x), None, nb, dtype, True)

    def part(b: np.ndarray, e: np.ndarray) -> np.ndarray:
        if b.size == 0:
            return np.zeros(nb, dtype=np.int64)
        if uniform:
            return _ops.histogram(b, bins=nb, range=(e[0], e[-1]))[0]
        return _ops.histogram(b, bins=e)[0]

    def add(parts: list[np.ndarray]) -> np.ndarray:
        return np.asarray(np.sum(parts, axis=0, dtype=np.int64)) if parts else np.zeros(nb, dtype=np.int64)

    parts = [dask.delayed(_Traced("histogram", part), pure=True)(b, edges) for b in x.to_delayed().ravel()]
    counts = da.from_delayed(dask.delayed(add, pure=True)(parts), shape=(nb,), dtype=np.int64)
    edge_dtype = np.result_type(dtype, np.float64) if uniform and dtype.kind in "biu" else dtype
    if not uniform:
        edge_dtype = edges_np.dtype
    edges_arr = da.from_delayed(edges, shape=(nb + 1,), dtype=edge_dtype)
    return counts, edges_arr


def _uniform_edges(first: Any, last: Any, bins: int, dtype: np.dtype, auto: bool) -> np.ndarray:
    """NumPy's (and fl.ops.histogram's) equal-width edges."""
    if auto:
        lo, hi, nan, n = first
        if n == 0:
            first, last = 0, 1
        else:
            if nan or not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"histogram(): autodetected range of [{lo}, {hi}] is not finite")
            first, last = (dtype.type(lo), dtype.type(hi)) if dtype.kind == "f" else (lo, hi)
            if dtype.kind in "iu":
                first, last = int(lo), int(hi)
    if first == last:
        first, last = first - 0.5, last + 0.5
    bin_type = np.result_type(first, last, np.empty(0, dtype=dtype))
    if np.issubdtype(bin_type, np.integer) or bin_type.kind == "b":
        bin_type = np.result_type(bin_type, float)
    edges = np.linspace(first, last, bins + 1, endpoint=True, dtype=bin_type)
    _coerce.finite_sized_bins("histogram", edges)
    return edges


# --------------------------------------------------------------------------------------------------- quantile


# Integers from this magnitude on are not all exact as float64: several share one float, so a rank narrowed to one
# float value is gathered (its integers selected from the data) instead of being taken as that float.
_EXACT_INT = float(2**53)


def _q_plan(mm: tuple[float, float, bool, int], q: np.ndarray, ints: bool = False) -> dict[str, Any]:
    """The ranks wanted for each q (NumPy's linear method) and a first bracket [min, max] for each (``ints``:
    the data are integers, see :data:`_EXACT_INT`)."""
    lo, hi, nan, n = mm
    plan: dict[str, Any] = {"n": n, "nan": nan, "q": q, "ints": ints}
    if nan or n == 0:
        plan["ranks"] = {}
        return plan
    vi = (n - 1) * q
    prev_f = np.floor(vi)
    plan["gamma"] = np.asarray(vi - prev_f, dtype=vi.dtype)
    prev = prev_f.astype(np.int64)
    nxt = prev + 1
    above = vi >= n - 1
    prev[above], nxt[above] = n - 1, n - 1
    below = vi < 0
    prev[below], nxt[below] = 0, 0
    plan["prev"], plan["next"] = prev, nxt
    # an infinity, or finite values spanning more than float64 holds (their histogram's edges would be NaN)
    finite = bool(np.isfinite(lo) and np.isfinite(hi) and np.isfinite(hi - lo))
    ranks: dict[int, dict[str, Any]] = {}
    for k in sorted(set(prev.tolist()) | set(nxt.tolist())):
        # bracket: values v with lo <= v <= hi; `below` values are < lo; count is unknown (-1) at first
        if lo == hi and not (ints and abs(lo) >= _EXACT_INT):
            ranks[k] = {"value": lo}
        elif lo == hi:
            ranks[k] = {"lo": lo, "hi": hi, "below": 0, "count": n, "gather": True}
        elif not finite:  # an infinity: no histogram over the range, gather everything (correct, not fast)
            ranks[k] = {"lo": -np.inf, "hi": np.inf, "below": 0, "count": n, "gather": True}
        else:
            ranks[k] = {"lo": lo, "hi": hi, "below": 0, "count": n, "gather": n <= QUANTILE_GATHER}
    plan["ranks"] = ranks
    return plan


def _q_brackets(plan: dict[str, Any]) -> list[tuple[float, float, bool]]:
    """The distinct open brackets of a plan: (lo, hi, gather)."""
    seen = []
    for r in plan["ranks"].values():
        if "value" not in r:
            b = (r["lo"], r["hi"], r["gather"])
            if b not in seen:
                seen.append(b)
    return seen


def _q_edges(lo: float, hi: float) -> np.ndarray:
    """The edges of a bracket's histogram: NumPy's ``linspace``, which ``fl.ops.histogram(range=(lo, hi))``
    would refuse for a bracket a few ulps wide (repeated edges). The counting kernel bins by these edges exactly,
    also then: a value equal to a repeated edge may land in a bin of no width, whose bracket ``_q_step`` resolves
    to that edge's value (``lo >= hi``), which is the value itself."""
    return np.linspace(lo, hi, QUANTILE_BINS + 1, endpoint=True, dtype=np.float64)


def _q_part(b: np.ndarray, plan: dict[str, Any]) -> list[np.ndarray]:
    """One chunk's share of a step: a histogram or the values of each open bracket."""
    out = []
    if b.size == 0:  # nothing gathered, no value counted
        return [np.empty(0) if gather else np.zeros(QUANTILE_BINS, np.int64) for _lo, _hi, gather in _q_brackets(plan)]
    f = b.astype(np.float64, copy=False).ravel()
    # integers are gathered as they are (as float64, those beyond 2**53 would lose their low bits)
    src = b.ravel() if b.dtype.kind in "iu" else None
    for lo, hi, gather in _q_brackets(plan):
        if gather:
            if np.isfinite(lo) or np.isfinite(hi):
                out.append(_select(f, lo, hi, src))
            else:
                out.append((f if src is None else src).copy())
        else:
            out.append(np.asarray(_core.histogram_counts(f, _q_edges(lo, hi), True)))
    return out


def _select(f: np.ndarray, lo: float, hi: float, src: np.ndarray | None = None, step: int = 1 << 16) -> np.ndarray:
    """``f[(f >= lo) & (f <= hi)]`` in cache-sized pieces (one read of ``f`` from memory, not several); with
    ``src`` (the values ``f`` was converted from), the matching values of ``src``."""
    src = f if src is None else src
    out = []
    m1 = np.empty(builtins.min(step, f.size), dtype=bool)
    m2 = np.empty_like(m1)
    for i in range(0, f.size, step):
        s = f[i : i + step]
        a, b = m1[: s.size], m2[: s.size]
        np.greater_equal(s, lo, out=a)
        np.less_equal(s, hi, out=b)
        np.logical_and(a, b, out=a)
        if a.any():
            out.append(src[i : i + step][a])
    return np.concatenate(out) if out else src[:0].copy()


def _q_step(plan: dict[str, Any], parts: list[list[np.ndarray]], last: bool) -> dict[str, Any]:
    """Merges a step: resolves gathered ranks, narrows histogrammed ones to their bin (to be gathered next when
    ``last``)."""
    brackets = _q_brackets(plan)
    if not brackets:
        return plan
    merged = []
    for i, (_lo, _hi, gather) in enumerate(brackets):
        if gather:
            vals = [p[i] for p in parts if len(p[i])]
            merged.append(np.sort(np.concatenate(vals)) if vals else np.empty(0))
        else:
            merged.append(np.sum([p[i] for p in parts], axis=0))
    ranks = {}
    for k, r in plan["ranks"].items():
        if "value" in r:
            ranks[k] = r
            continue
        i = brackets.index((r["lo"], r["hi"], r["gather"]))
        if r["gather"]:
            ranks[k] = {"value": merged[i][k - r["below"]]}  # as gathered: an integer stays exact
            continue
        counts = merged[i]
        edges = _q_edges(r["lo"], r["hi"])
        cum = r["below"] + np.cumsum(counts)
        j = int(np.searchsorted(cum, k, side="right"))
        lo = float(edges[j])
        hi = float(edges[j + 1]) if j == QUANTILE_BINS - 1 else float(np.nextafter(edges[j + 1], -np.inf))
        below = int(r["below"] + counts[:j].sum())
        if lo >= hi and plan["ints"] and abs(lo) >= _EXACT_INT:
            # one float value, but maybe several integers: gather the bin's values
            ranks[k] = {"lo": lo, "hi": lo, "below": below, "count": int(counts[j]), "gather": True}
        elif lo >= hi:
            ranks[k] = {"value": lo}
        else:
            cnt = int(counts[j])
            ranks[k] = {"lo": lo, "hi": hi, "below": below, "count": cnt, "gather": last or cnt <= QUANTILE_GATHER}
    return {**plan, "ranks": ranks}


def _q_finish(plan: dict[str, Any], dtype: np.dtype, weak: bool, rt: np.dtype) -> Any:
    qa = plan["q"]
    if plan["nan"] or plan["n"] == 0:  # NaN result, or fl.ops's error for an empty input
        sample = np.array([np.nan] if plan["nan"] else [], dtype=dtype)
        res = np.asarray(_ops.quantile(sample, qa.ravel())).reshape(qa.shape)
        return res.astype(rt, copy=False)
    vals = {k: r["value"] for k, r in plan["ranks"].items()}
    if dtype.kind in "iu":  # exact integers (a float value here is an integer below 2**53)
        a = np.array([int(vals[int(k)]) for k in plan["prev"]], dtype=dtype)
        b = np.array([int(vals[int(k)]) for k in plan["next"]], dtype=dtype)
    else:
        a = np.array([vals[int(k)] for k in plan["prev"]]).astype(dtype)
        b = np.array([vals[int(k)] for k in plan["next"]]).astype(dtype)
    t = plan["gamma"]
    # NumPy's _lerp, operation for operation; a Python float q makes gamma a (weak) Python float there
    ge = t >= 0.5
    t, omt = (t.astype(dtype), (1 - t).astype(dtype)) if weak and dtype.kind == "f" else (t, 1 - t)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as in NumPy
        diff = b - a
        res = np.add(a, diff * t)
        np.subtract(b, diff * omt, out=res, where=ge, casting="unsafe", dtype=res.dtype)
    return res.astype(rt, copy=False).reshape(qa.shape)


def quantile(x: Any, q: Any, axis: int | None = None) -> Any:
    """Quantiles with NumPy's default ``"linear"`` method, exactly (no approximation), like :func:`numpy.quantile`.

    ``axis=None``: a min/max pass, then per-chunk histograms of :data:`QUANTILE_BINS` bins narrow each wanted rank
    to one bin until at most :data:`QUANTILE_GATHER` values are left in it; those are gathered and selected. Only
    the steps needed touch the data (usually three passes). With an ``axis``, that axis is made one chunk
    (``rechunk``) and each block runs :func:`ferrolab.ops.quantile`. NaN in a slice gives NaN.

    >>> import dask.array as da, numpy as np, ferrolab as fl
    >>> fl.dask.quantile(da.from_array(np.arange(11.0), chunks=4), [0.1, 0.5]).compute()
    array([1., 5.])
    """
    da = _check("quantile", x, kinds="iuf")
    axis = _axis("quantile", x, axis)
    import dask

    qa, q_ints, weak = _ops._quantile_q("quantile", q)
    rt = _ops._quantile_dtype(x.dtype, q, q_ints, weak)
    if rt.kind in "iu" and axis is None:
        # integer q (0 or 1) on integer data: the minimum or the maximum, exactly and in the data's dtype (NumPy);
        # with an axis, the blocks' fl.ops.quantile does the same
        ends = [max(x) if v else min(x) for v in qa.ravel().tolist()]
        out = da.stack(ends).astype(rt)
        return out.reshape(qa.shape + out.shape[1:])

    if axis is not None:
        xr = x.rechunk({axis: -1})
        rest = tuple(c for i, c in enumerate(xr.chunks) if i != axis)

        def block(b: np.ndarray) -> np.ndarray:
            # q as given: each block computes what fl.ops.quantile computes (its dtype too), of shape q + rest
            return np.asarray(_ops.quantile(b, q, axis=axis)).astype(rt, copy=False)

        # q's axes come first, made by the blocks themselves (no reshape: it fails on unknown chunk sizes)
        return da.map_blocks(
            _Traced("quantile", block),
            xr,
            drop_axis=axis,
            new_axis=list(range(qa.ndim)),
            chunks=tuple((n,) for n in qa.shape) + rest,
            dtype=rt,
            meta=np.empty((0,) * (qa.ndim + x.ndim - 1), dtype=rt),
        )

    dtype = x.dtype
    blocks = x.to_delayed().ravel()
    plan = dask.delayed(_q_plan, pure=True)(_minmax_delayed(x), qa.ravel(), x.dtype.kind in "iu")
    q_part = _Traced("quantile", _q_part)
    for step in range(QUANTILE_STEPS):
        parts = [dask.delayed(q_part, pure=True)(b, plan) for b in blocks]
        plan = dask.delayed(_q_step, pure=True)(plan, parts, step >= QUANTILE_STEPS - 2)  # the last step gathers
    res = dask.delayed(_q_finish, pure=True)(plan, dtype, weak, rt)
    flat = da.from_delayed(res, shape=(qa.size,), dtype=rt)
    return flat.reshape(qa.shape)


# ------------------------------------------------------------------------------------------------ workers


class _WorkerPluginImpl:
    """On each worker: ferrolab tracing configured and the worker's ferrolab series served.

    Tracing gets ``service_name`` and ``endpoint`` (an OTLP/HTTP collector; ``None`` keeps the worker's finished
    spans in its memory, see :func:`ferrolab.tracing.finished_spans`). The series go on the worker's own
    Prometheus endpoint (Dask's ``/metrics``, rendered by prometheus_client) through
    :func:`ferrolab.metrics.bridge_to_prometheus_client`; a worker without prometheus_client (so without that
    endpoint) serves them with :func:`ferrolab.metrics.serve` on a free port of ``host`` instead.
    :func:`worker_metrics_urls` lists where.
    """

    name = "ferrolab"

    def __init__(
        self,
        service_name: str = "ferrolab-worker",
        host: str = "127.0.0.1",
        tracing: bool = True,
        endpoint: str | None = None,
    ) -> None:
        self.service_name = service_name
        self.host = host
        self.tracing = tracing
        self.endpoint = endpoint

    def setup(self, worker: Any) -> None:
        import ferrolab as fl

        if self.tracing:
            fl.tracing.configure(self.service_name, endpoint=self.endpoint)
        http = getattr(worker, "http_server", None)
        try:
            import prometheus_client
        except ImportError:
            prometheus_client = None  # type: ignore[assignment]
        if prometheus_client is not None and http is not None:
            worker._ferrolab_bridge = fl.metrics.bridge_to_prometheus_client(prometheus_client.REGISTRY)
            worker._ferrolab_metrics_url = f"http://{worker.ip}:{http.port}/metrics"
            return
        server = fl.metrics.serve(host=self.host, port=0)
        worker._ferrolab_metrics = server  # kept alive with the worker
        worker._ferrolab_metrics_url = f"http://{self.host}:{server.port}/metrics"

    def teardown(self, worker: Any) -> None:
        bridge = getattr(worker, "_ferrolab_bridge", None)
        if bridge is not None:
            import prometheus_client

            with contextlib.suppress(KeyError):
                prometheus_client.REGISTRY.unregister(bridge)
        server = getattr(worker, "_ferrolab_metrics", None)
        if server is not None:
            server.stop()
        if self.tracing:
            import ferrolab as fl

            fl.tracing.flush()


_worker_plugin_class: Any = None


def _worker_plugin() -> Any:
    """:class:`WorkerPlugin`, made on first use: it derives from distributed's ``WorkerPlugin`` (registering a
    plugin requires that), and ``import ferrolab.dask`` does not import distributed."""
    global _worker_plugin_class
    if _worker_plugin_class is None:
        from distributed.diagnostics.plugin import WorkerPlugin as Base

        cls = type("WorkerPlugin", (_WorkerPluginImpl, Base), {"__module__": __name__, "__qualname__": "WorkerPlugin"})
        cls.__doc__ = _WorkerPluginImpl.__doc__
        _worker_plugin_class = cls
    return _worker_plugin_class


def __getattr__(name: str) -> Any:
    if name == "WorkerPlugin":
        return _worker_plugin()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def setup(
    client: Any,
    *,
    service_name: str | None = None,
    host: str = "127.0.0.1",
    tracing: bool = True,
    endpoint: str | None = None,
) -> None:
    """Installs :class:`WorkerPlugin` on every worker of a ``distributed`` client (and on workers that join later).

    ``service_name`` defaults to the client process's tracing ``service.name`` (see
    :func:`ferrolab.tracing.resource`); ``endpoint`` is the workers' OTLP/HTTP collector (``None``: spans kept in
    each worker's memory). Calling it again replaces the plugin (and its endpoints).

    Trace context: an ``fl.dask`` call made inside a recording ferrolab span carries that span's ids with its tasks;
    on the worker each task runs in a ``fl.dask.<op>`` span whose parent is the client's span (through
    opentelemetry-python's context, so the workers need ``opentelemetry-api``; without it the tasks run untraced),
    and the native op spans are children of that task span.
    """
    try:
        from distributed import Client
    except ImportError as e:  # pragma: no cover
        raise ImportError("ferrolab.dask.setup needs distributed: pip install 'ferrolab[dask]'") from e
    if not isinstance(client, Client):
        raise TypeError(f"setup(): argument 'client' must be a distributed.Client, got {type(client).__name__}")
    if service_name is None:
        import ferrolab as fl

        service_name = fl.tracing.resource().get("service.name") or "ferrolab-worker"
    client.register_plugin(_worker_plugin()(service_name, host, tracing, endpoint), name="ferrolab")


def worker_metrics_urls(client: Any) -> dict[str, str]:
    """``{worker address: URL where its ferrolab series are served}`` for the workers :func:`setup` prepared: the
    worker's own Dask ``/metrics`` (next to Dask's series), or a ferrolab endpoint where the worker has no
    prometheus_client."""

    def url(dask_worker: Any) -> str | None:
        return getattr(dask_worker, "_ferrolab_metrics_url", None)

    return {k: v for k, v in client.run(url).items() if v}
