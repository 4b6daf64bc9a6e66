"""GPU backend: device discovery, kernel compilation and (to come) device arrays.

CUDA is loaded at run time, so this module imports and every CPU feature works on machines without a driver or a
GPU: :func:`is_available` is then ``False`` and ``info()["reason"]`` says why ("no NVIDIA driver: ...", "no CUDA
device ...", "the NVIDIA driver supports CUDA 12.4; ..."). ``FERROLAB_DISABLE_GPU=1`` turns the backend off.

What works today: the probe (:func:`info` lists the devices the driver reports) and the compilation of every GPU
kernel with NVRTC (:func:`compile_kernels`; NVRTC comes from ``pip install nvidia-cuda-nvrtc``, a system CUDA or
PyTorch's wheels). The ops do not run on the GPU yet: ``device="cuda"`` raises
:class:`ferrolab.DeviceUnavailableError` saying so (never a silent CPU run), ``device="auto"`` runs on the CPU, and
:func:`asarray` / :func:`from_dlpack` raise the same error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from . import _core

__all__ = ["is_available", "info", "asarray", "from_dlpack", "compile_kernels"]


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
    """Description of the GPU backend.

    Returns
    -------
    dict
        ``available`` (bool), ``reason`` (why not, ``""`` when available), ``driver_version`` (e.g. 13000 for
        CUDA 13.0; ``None`` without a driver) and ``devices``: one dict per device the driver reports (``index``,
        ``name``, ``compute_capability``, ``total_memory`` in bytes, ``multiprocessors``).

    Examples
    --------
    >>> import ferrolab as fl
    >>> sorted(fl.gpu.info())
    ['available', 'devices', 'driver_version', 'reason']
    """
    probe = _core._gpu_probe()
    reason = _core.gpu_unavailable_reason()
    return {
        "available": reason is None,
        "reason": reason or "",
        "driver_version": probe["driver_version"],
        "devices": probe["devices"],
    }


def _nvrtc_dirs() -> list[str]:
    """Folders that may hold NVRTC, in the order PyTorch and CuPy search them: the ``nvidia-cuda-nvrtc`` wheel
    (``site-packages/nvidia/cu13/lib``) on ``sys.path``, then ``$CUDA_HOME``/``$CUDA_PATH``, then
    ``/usr/local/cuda``."""
    dirs = [os.path.join(p, "nvidia", "cu13", "lib") for p in sys.path if p]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], "lib64"))
    dirs.append("/usr/local/cuda/lib64")
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def compile_kernels(arch: str = "sm_90") -> dict[str, Any]:
    """Compile every GPU kernel with NVRTC for ``arch`` and report what ptxas says about each.

    Needs NVRTC (``pip install nvidia-cuda-nvrtc``), not a GPU: this is how CI checks the kernels on machines
    without one.

    Parameters
    ----------
    arch : str, optional
        A real architecture, e.g. ``"sm_80"`` (A100) or ``"sm_90"`` (H100).

    Returns
    -------
    dict
        ``arch``, ``nvrtc`` (``version``, ``library``), ``cubin`` (bytes), ``log`` (the compiler's) and
        ``kernels``: per kernel ``name``, ``registers``, ``spill_stores``, ``spill_loads``, ``stack_frame``.

    Raises
    ------
    RuntimeError
        NVRTC cannot be found, or compilation failed (the message carries the compiler log).

    Examples
    --------
    >>> import ferrolab as fl
    >>> try:
    ...     report = fl.gpu.compile_kernels("sm_90")
    ... except RuntimeError:  # no NVRTC on this machine
    ...     report = None
    >>> report is None or all(k["spill_stores"] == 0 for k in report["kernels"])
    True
    """
    nvrtc = _core._gpu_load_nvrtc(_nvrtc_dirs())
    report = _core._gpu_compile(arch)
    report["nvrtc"] = nvrtc
    return report


def asarray(x: Any) -> Any:
    """Copy an array to the GPU (not implemented yet: raises :class:`ferrolab.DeviceUnavailableError`)."""
    _core.check_device("asarray", "cuda")
    raise NotImplementedError("asarray(): device arrays are not implemented yet")


def from_dlpack(obj: Any) -> Any:
    """Wrap a CuPy/PyTorch GPU tensor without a copy (not implemented yet: raises
    :class:`ferrolab.DeviceUnavailableError`)."""
    _core.check_device("from_dlpack", "cuda")
    raise NotImplementedError("from_dlpack(): device arrays are not implemented yet")
