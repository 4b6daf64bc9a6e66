"""GPU backend: device discovery and device arrays.

This build has no CUDA backend compiled in: :func:`is_available` is ``False``, ops with ``device="auto"`` run
on the CPU, and ``device="cuda"`` or :func:`asarray` raise :class:`ferrolab.DeviceUnavailableError`.
"""

from __future__ import annotations

from typing import Any

from ._core import DeviceUnavailableError

__all__ = ["is_available", "info", "asarray", "from_dlpack"]

_REASON = "this build of ferrolab has no CUDA backend"


def is_available() -> bool:
    """Whether a CUDA device can run ferrolab ops.

    Examples
    --------
    >>> import ferrolab as fl
    >>> isinstance(fl.gpu.is_available(), bool)
    True
    """
    return False


def info() -> dict[str, Any]:
    """Description of the GPU backend: ``{"available": bool, "reason": str, "devices": [...]}``.

    Examples
    --------
    >>> import ferrolab as fl
    >>> sorted(fl.gpu.info())
    ['available', 'devices', 'reason']
    """
    return {"available": False, "reason": _REASON, "devices": []}


def asarray(x: Any) -> Any:
    """Copy an array to the GPU (raises :class:`ferrolab.DeviceUnavailableError` in this build)."""
    raise DeviceUnavailableError(f"asarray(): device 'cuda' is not available: {_REASON}")


def from_dlpack(obj: Any) -> Any:
    """Wrap a CuPy/PyTorch GPU tensor without a copy (raises :class:`ferrolab.DeviceUnavailableError` here)."""
    raise DeviceUnavailableError(f"from_dlpack(): device 'cuda' is not available: {_REASON}")
