"""Facts about the native engine: SIMD level, threads, per-op counters."""

from __future__ import annotations

from typing import Any

from . import _core

__all__ = ["simd_level", "num_threads", "op_stats", "set_instrumentation"]


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
