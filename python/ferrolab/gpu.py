"""GPU backend: device discovery, kernel compilation, the GPU paths of the ops (device arrays to come).

CUDA is loaded at run time, so this module imports and every CPU feature works on machines without a driver or a
GPU: :func:`is_available` is then ``False`` and ``info()["reason"]`` says why ("no NVIDIA driver: ...", "no CUDA
device ...", "the NVIDIA driver supports CUDA 12.4; ..."). ``FERROLAB_DISABLE_GPU=1`` turns the backend off.

What runs on a GPU with ``device="cuda"`` (or ``"cuda:N"``): whole-array reductions (``axis=None``) of contiguous
float32/float64 NumPy arrays — ``sum``, ``mean``, ``min``, ``max``, ``argmin``, ``argmax``, ``norm``, ``var``,
``std`` — and ``axpy``, ``fma``, ``scale``, ``clip``, ``standardize`` (``axis=None``) and ``adam_step`` (in place)
on C-contiguous float arrays of one dtype and shape with Python-number scalars: the data is copied to the device,
computed there by kernels compiled with NVRTC at first use (``pip install nvidia-cuda-nvrtc``, a system CUDA or
PyTorch's wheels provide it; compiled kernels are cached under ``~/.cache/ferrolab/kernels``), and the result comes
back as NumPy's (``out=`` is filled from it). Other ops and inputs with ``device="cuda"`` raise
:class:`ferrolab.DeviceUnavailableError` saying so — never a silent CPU run. These GPU paths have not yet been run
on a real GPU (``tools/gpu_check.sh`` runs them where one is at hand).

``device="auto"`` keeps O(n) ops on NumPy data on the CPU (the copy over PCIe costs more than the op);
``FERROLAB_AUTO_DEVICE=cuda`` sends them to the GPU, ``=cpu`` keeps everything on the CPU. An ``auto`` call whose GPU
attempt fails is rerun on the CPU and counted as ``ferrolab_operations_total{device="cuda",status="fallback"}``;
three consecutive GPU failures open the circuit breaker ``gpu`` (``info()["breaker"]``) for 60 s; a sticky CUDA
error (illegal address, launch failure, ECC) turns the backend off for the process. :func:`set_strict` (or
``FERROLAB_GPU_STRICT=1``) makes every fallback an error. Device arrays (:func:`asarray`, :func:`from_dlpack`) are
not built yet.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from . import _core

__all__ = ["is_available", "info", "asarray", "from_dlpack", "compile_kernels", "set_strict", "is_strict"]

set_strict = _core.set_strict
is_strict = _core.is_strict


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
        CUDA 13.0; ``None`` without a driver), ``devices``: one dict per device the driver reports (``index``,
        ``name``, ``compute_capability``, ``total_memory`` in bytes, ``multiprocessors``), and ``breaker``: the
        state of the circuit breaker ``gpu`` ("closed", "open", "half_open").

    Examples
    --------
    >>> import ferrolab as fl
    >>> sorted(fl.gpu.info())
    ['available', 'breaker', 'devices', 'driver_version', 'reason']
    """
    probe = _core._gpu_probe()
    reason = _core.gpu_unavailable_reason()
    return {
        "available": reason is None,
        "reason": reason or "",
        "driver_version": probe["driver_version"],
        "devices": probe["devices"],
        "breaker": _core._gpu_breaker_state(),
    }


# where NVIDIA's wheels put NVRTC: nvidia-cuda-nvrtc 13 (nvidia/cu13/lib), the CUDA 12 layout PyTorch wheels use
# (nvidia/cuda_nvrtc/lib)
_WHEEL_DIRS = (("nvidia", "cu13", "lib"), ("nvidia", "cuda_nvrtc", "lib"))


def _nvrtc_dirs() -> list[str]:
    """Folders that may hold NVRTC, in the order PyTorch and CuPy search them: NVIDIA's wheels on ``sys.path``
    (``nvidia-cuda-nvrtc``, or those PyTorch installed), then ``$CUDA_HOME``/``$CUDA_PATH``, then
    ``/usr/local/cuda``."""
    dirs = [os.path.join(p, *sub) for sub in _WHEEL_DIRS for p in sys.path if p]
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


_core._gpu_set_nvrtc_dirs(_nvrtc_dirs())
