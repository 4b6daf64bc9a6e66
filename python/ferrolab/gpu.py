"""GPU backend: device discovery and device arrays.

This build has no CUDA backend compiled in: :func:`is_available` is ``False``, ops with ``device="auto"`` run
on the CPU, and ``device="cuda"`` or :func:`asarray` raise :class:`ferrolab.DeviceUnavailableError`.
"""

from __future__ import annotations

from typing import Any

from . import _core

__all__ = ["is_available", "info", "asarray", "from_dlpack"]

def is_available() -> bool:
    """Whether a CUDA device can run ferrolab ops.

    Examples
    --------
    >>> import ferrolab as fl
    >>> isinstance(fl.gpu.is_available(), bool)
    True
    """
    return _core.gpu_unavailable_reason() is None


def info() -> dict[str, Any]:
    """Description of the GPU backend: ``{"available": bool, "reason": str, "devices": [...]}``.

    Examples
    --------
    >>> import ferrolab as fl
    >>> sorted(fl.gpu.info())
    ['available', 'devices', 'reason']
    """
    reason = _core.gpu_unavailable_reason()
    return {"available": reason is None, "reason": reason or "", "devices": []}


def asarray(x: Any) -> Any:
    """Copy an array to the GPU (raises :class:`ferrolab.DeviceUnavailableError` in this build)."""
    _core.check_device("asarray", "cuda")
    raise NotImplementedError("asarray(): device arrays are not implemented yet")


def from_dlpack(obj: Any) -> Any:
    """Wrap a CuPy/PyTorch GPU tensor without a copy (raises :class:`ferrolab.DeviceUnavailableError` here)."""
    _core.check_device("from_dlpack", "cuda")
    raise NotImplementedError("from_dlpack(): device arrays are not implemented yet")
