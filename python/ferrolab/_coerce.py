"""Dtype policy of ``fl.ops`` for inputs that are not float64/float32/int64 ndarrays.

The native core computes float64, float32 and int64. Every other input goes once through :func:`prepare`, which
converts it the way NumPy would for that operation and may return a ``finish`` callable that turns the native
result into NumPy's result dtype (e.g. ``uint8`` for ``np.min`` of a ``uint8`` array).
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_SIGN = np.int64(-(2**63))
_FLOAT_KINDS = "biuf"


def no_mask(func: str, name: str, v: Any) -> None:
    """``TypeError`` for a ``numpy.ma.MaskedArray``: the kernels would read its masked values as data."""
    ma = sys.modules.get("numpy.ma")  # (no masked array exists before numpy.ma is imported)
    if ma is not None and isinstance(v, ma.MaskedArray):
        raise TypeError(
            f"{func}(): argument '{name}' is a masked array, whose mask ferrolab would ignore; pass "
            f"{name}.compressed() to drop the masked values or {name}.filled(value) to replace them"
        )


def _as_array(func: str, name: str, v: Any) -> np.ndarray:
    no_mask(func, name, v)
    try:
        a = np.asarray(v)
    except MemoryError:
        raise
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{func}(): argument '{name}' is not array-like: {e}") from e
    if a.dtype.kind not in _FLOAT_KINDS:
        raise TypeError(
            f"{func}(): argument '{name}' has dtype {a.dtype}; expected a real numeric dtype "
            "(float32, float64, an integer or bool)"
        )
    # a misaligned buffer, or strides that are not multiples of the item size (a field of a packed structured
    # array): the kernels take a copy
    return a if a.flags.aligned else a.copy()


@functools.lru_cache(maxsize=32)
def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _cast(dtype: np.dtype) -> Callable[[Any], Any]:
    def finish(r: Any) -> Any:
        return np.asarray(r).astype(dtype)[()]

    return finish


def _uint64_order(func: str) -> Callable[[Any], Any] | None:
    if func in ("min", "max", "clip"):

        def finish(r: Any) -> Any:
            return (np.asarray(r, dtype=np.int64) ^ _SIGN).view(np.uint64)[()]

        return finish
    return None


def prepare(
    func: str,
    names: Sequence[str],
    values: Sequence[Any],
    kind: str,
    scalars: Sequence[Any] = (),
    scalar_names: Sequence[str] = (),
) -> tuple[tuple[np.ndarray, ...], Callable[[Any], Any] | None]:
    """Convert ``values`` to one native dtype for ``func``; return ``(arrays, finish)``.

    ``kind`` is ``"float"`` (result is floating point), ``"sum"`` (NumPy's sum rules), ``"same"``
    (type-preserving) or ``"index"`` (argmin/argmax). ``scalars`` take part in the result type (NEP 50: Python
    scalars are weak).
    """
    arrays = [_as_array(func, n, v) for n, v in zip(names, values, strict=True)]
    converted, finish, _ = _prepare(func, arrays, values, kind, list(scalars), scalar_names)
    return converted, finish


def prepare_elementwise(
    func: str,
    names: Sequence[str],
    values: Sequence[Any],
    scalars: Sequence[Any],
    scalar_names: Sequence[str],
) -> tuple[tuple[np.ndarray, ...], Callable[[Any], Any] | None, list[Any]]:
    """:func:`prepare` for the type-preserving elementwise ops (axpy, fma, scale, clip).

    Returns ``(arrays, finish, scalars)``: the scalars as the native kernel must use them (``None`` where absent).
    Like NumPy, a Python int operand of an integer result must fit that dtype (``OverflowError`` otherwise), and
    ``clip`` ignores a Python-int bound beyond the range of the data's integer dtype. uint64 data computes in int64:
    operands are wrapped to int64 (modular arithmetic gives the same bits), and ``clip`` maps values and bounds
    with an order-preserving flip of the sign bit.
    """
    arrays = [_as_array(func, n, v) for n, v in zip(names, values, strict=True)]
    sc = list(scalars)
    if func == "clip" and arrays[0].dtype.kind in "iu" and (type(sc[0]) is int or type(sc[1]) is int):
        # np.clip (NumPy >= 2.1): a Python-int bound at or beyond the dtype's range leaves that side open
        dmin, dmax = _int_range(arrays[0].dtype)
        lo, hi = sc
        if type(lo) is int and lo <= dmin:
            sc[0] = None
        if type(hi) is int and hi >= dmax:
            sc[1] = None
    return _prepare(func, arrays, values, "same", sc, scalar_names)


def _product_type(p: Any, q: Any) -> Any:
    """What NumPy's ``p * q`` promotes like: a Python number (weak, NEP 50) when both are Python numbers, else the
    product's dtype."""
    if type(p) in (bool, int, float) and type(q) in (bool, int, float):
        return 0.0 if float in (type(p), type(q)) else 0
    return np.result_type(p, q)


def _prepare(
    func: str,
    arrays: list[np.ndarray],
    values: Sequence[Any],
    kind: str,
    scalars: list[Any],
    scalar_names: Sequence[str],
) -> tuple[tuple[np.ndarray, ...], Callable[[Any], Any] | None, list[Any]]:
    weak = [s for s in scalars if s is not None]
    names = list(scalar_names or ["scalar"] * len(scalars))
    for name, s in zip(names, scalars, strict=True):
        if s is None:
            continue
        if not isinstance(s, (bool, int, float, np.bool_, np.integer, np.floating)):
            raise TypeError(f"{func}(): argument '{name}' must be a real number, got {type(s).__name__}")
    # Python scalars passed where arrays go stay weak (NEP 50), like NumPy's own operators
    typing = [v if isinstance(v, (bool, int, float)) else a for v, a in zip(values, arrays, strict=True)]
    if func == "axpy" and weak:
        # ``a * x + y`` as NumPy evaluates it: ``a * x`` first, so a float ``a`` with an integer or bool ``x`` is
        # float64 (and an int ``a`` with a bool ``x`` int64) before ``y`` joins
        rt = np.result_type(_product_type(weak[0], typing[0]), typing[1])
    elif func == "fma":
        rt = np.result_type(_product_type(typing[0], typing[1]), typing[2])  # ``x * y + z``
    else:
        rt = np.result_type(*typing, *weak) if arrays else np.dtype(np.float64)
    finish: Callable[[Any], Any] | None = None
    if rt.kind in "iu" and any(type(s) is int for s in scalars):
        # a weak Python int must fit the integer result dtype, as in NumPy (`np.int8(1) * 1000` raises)
        rmin, rmax = _int_range(rt)
        for name, s in zip(names, scalars, strict=True):
            if type(s) is int and not (rmin <= s <= rmax):
                raise OverflowError(f"{func}(): argument '{name}' is {s}: Python integer {s} out of bounds for {rt}")
    if rt.kind == "f":
        target: np.dtype[Any]
        if rt.itemsize < 4:  # float16: compute in float32, return float16 like NumPy
            target = np.dtype(np.float32)
            if kind != "index":
                finish = _cast(rt)
        elif rt.itemsize == 4:
            target = np.dtype(np.float32)
        else:  # float64 and longdouble
            target = np.dtype(np.float64)
    elif kind == "float":
        target = np.dtype(np.float64)
    else:
        target = np.dtype(np.int64)
        # a NumPy bool scalar has no __index__: an integer kernel takes it as the int it promotes to
        scalars = [int(s) if isinstance(s, np.bool_) else s for s in scalars]
        if kind == "sum":
            if rt.kind == "u":
                finish = _cast(np.dtype(np.uint64))
        elif kind == "same" and rt != np.int64:
            finish = _cast(rt)
        if rt == np.uint64 and kind in ("same", "index"):
            # order-preserving map of uint64 onto int64 (flip the sign bit) for comparisons
            order = _uint64_order(func)
            if kind == "index" or order is not None:
                # (np.asarray, not np.ascontiguousarray: that one turns a 0-d array into shape (1,))
                converted = tuple((np.asarray(a, dtype=np.uint64, order="C").view(np.int64) ^ _SIGN) for a in arrays)
                # clip's bounds go through the same map: v ^ 2**63 as int64 is v - 2**63
                scalars = [None if s is None else int(s) - 2**63 for s in scalars]
                return converted, order, scalars
            # uint64 arithmetic in int64: the same bits modulo 2**64
            scalars = [None if s is None else int(np.array(s, dtype=np.uint64).view(np.int64)) for s in scalars]
    converted = tuple(a.astype(target, copy=False) for a in arrays)
    return converted, finish, scalars


def finite_sized_bins(func: str, edges: np.ndarray) -> None:
    """NumPy's check of equal-width edges: a range too narrow for the bins (at its magnitude) gives repeated edges,
    which NumPy refuses rather than counting into bins of no width."""
    if np.any(edges[:-1] >= edges[1:]):
        n = edges.size - 1
        raise ValueError(
            f"{func}(): argument 'bins' is {n}: too many bins for the data range, which cannot hold {n} "
            "finite-sized bins"
        )


def real_arg(func: str, arg: str, v: Any, what: str = "a number") -> float:
    """Argument ``arg`` of ``func`` as a float: a real number (not a bool), else a TypeError naming both; a number
    beyond float's range (a huge int, a Fraction) is an infinity of its sign, for the caller's range check."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{func}(): argument '{arg}' must be {what}, got {type(v).__name__}")
    try:
        return float(v)
    except OverflowError:
        return math.inf if operator.gt(v, 0) else -math.inf
