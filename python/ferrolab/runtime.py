"""Facts about the native engine: SIMD level, threads, per-op counters."""

from __future__ import annotations

from typing import Any

from . import _core

__all__ = [
    "simd_level",
    "num_threads",
    "op_stats",
    "set_instrumentation",
    "result_cache",
    "release_result_cache",
    "set_result_cache_limit",
]


def simd_level() -> str:
    """Instruction set of the kernels on this CPU: ``"avx2+fma"`` or ``"baseline"``.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.simd_level() in ("avx2+fma", "baseline")
    True
    """
    return _core.simd_level()


def num_threads() -> int:
    """Worker threads of the kernel pool (``FERROLAB_NUM_THREADS``, default: the available cores).

    1 when the process cannot start threads (e.g. at its ``RLIMIT_NPROC``): the kernels then run on the calling
    thread, with the same results.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.num_threads() >= 1
    True
    """
    return _core.num_threads()


def op_stats() -> list[dict[str, Any]]:
    """Per ``(operation, device)`` counters recorded by the instrumentation seam.

    Each entry has ``operation``, ``device``, ``calls``, ``errors`` and ``seconds``.

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> _ = fl.ops.sum(np.ones(4))
    >>> any(s["operation"] == "sum" and s["calls"] >= 1 for s in fl.op_stats())
    True
    """
    return _core.op_stats()


def set_instrumentation(enabled: bool) -> None:
    """Turn the per-op instrumentation on (default) or off."""
    _core.set_instrumentation(bool(enabled))


def result_cache() -> dict[str, int]:
    """The recycled buffers of large results.

    A result of 4 MiB or more lives in a buffer that goes back to a cache when the array is freed, and the next
    result of a similar size (at least its size, at most twice it) reuses it: a loop that computes a large result
    per iteration then skips mapping and zeroing fresh pages each time. At most 8 buffers and
    ``FERROLAB_RESULT_CACHE_MB`` MiB (default 256; ``0`` turns recycling off) are kept; the oldest are freed
    first. Such arrays do not own their data (``a.flags.owndata`` is False; ``a.base`` is a byte view of the
    buffer), so ``a.resize(...)`` in place is refused, as for any view.

    Returns
    -------
    dict
        ``buffers`` and ``bytes`` kept now, the ``limit`` in bytes, and the counts of results served by a kept
        buffer (``reused``) and by a new allocation (``allocated``).

    Examples
    --------
    >>> import numpy as np, ferrolab as fl
    >>> x = np.ones(1_000_000)
    >>> y = fl.ops.scale(x, 2.0)           # 8 MB: a recycled buffer
    >>> del y
    >>> fl.runtime.result_cache()["buffers"] >= 1
    True
    >>> y = fl.ops.scale(x, 2.0)           # reuses it
    >>> fl.runtime.result_cache()["reused"] >= 1
    True
    """
    return _core.result_cache()


def release_result_cache() -> int:
    """Frees the kept result buffers (see :func:`result_cache`); returns the bytes freed.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.runtime.release_result_cache() >= 0
    True
    >>> fl.runtime.result_cache()["bytes"]
    0
    """
    return _core.release_result_cache()


def set_result_cache_limit(nbytes: int) -> None:
    """Sets the most bytes of result buffers kept for reuse; ``0`` turns recycling off and frees what is kept.

    Parameters
    ----------
    nbytes : int
        The limit in bytes (``FERROLAB_RESULT_CACHE_MB`` sets it at start, default 256 MiB).

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.runtime.set_result_cache_limit(64 << 20)
    >>> fl.runtime.result_cache()["limit"]
    67108864
    >>> fl.runtime.set_result_cache_limit(256 << 20)
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"set_result_cache_limit: nbytes must be an int, got {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"set_result_cache_limit: nbytes must be >= 0, got {nbytes}")
    _core.set_result_cache_limit(nbytes)
