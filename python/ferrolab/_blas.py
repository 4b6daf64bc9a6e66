"""Finds the BLAS that NumPy links and hands it to the native core for ``matmul``.

``fl.ops.matmul`` calls the CBLAS ``?gemm`` of the library NumPy itself loaded: the same kernels, tuned for
this CPU, and the same thread pool as ``a @ b`` (sized by ``OPENBLAS_NUM_THREADS`` and the like, or
threadpoolctl), so the two never compete for the cores. NumPy's wheels ship scipy-openblas (``numpy.libs/`` on
Linux and Windows, ``numpy/.dylibs/`` on macOS); other builds (conda, distributions) link a system BLAS, found
among the libraries the process has loaded.

``FERROLAB_BLAS=0`` (or ``off``, ``none``) keeps the built-in ``gemm`` crate kernels; ``FERROLAB_BLAS=/path/lib``
names a library. :func:`use_blas` switches at run time (the tests cover both paths with it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import _core

_OFF = {"0", "off", "none", "no", "false"}

#: The CBLAS in use (library path and symbol), or ``None`` for the built-in ``gemm`` crate kernels.
in_use: str | None = None


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process (Linux; empty elsewhere)."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/") and parts[5].rstrip() not in paths:
                    paths.append(parts[5].rstrip())
    except OSError:
        pass
    return paths


def candidates() -> list[str]:
    """Libraries that may hold NumPy's CBLAS, most likely first."""
    base = Path(np.__file__).resolve().parent
    dirs = [base.parent / "numpy.libs", base / ".dylibs", base / ".libs"]
    shipped = [str(p) for d in dirs if d.is_dir() for p in sorted(d.iterdir()) if "blas" in p.name.lower()]
    loaded = [
        p
        for p in _loaded_libraries()
        if any(s in os.path.basename(p).lower() for s in ("openblas", "blas", "mkl_rt", "blis"))
    ]
    # NumPy's own first (SciPy's wheels ship a second, LP64 OpenBLAS)
    loaded.sort(key=lambda p: 0 if str(base.parent) in p and "scipy.libs" not in p else 1)
    out: list[str] = []
    for p in shipped + loaded:
        if p not in out:
            out.append(p)
    return out


def use_blas(path: str | None = "auto") -> str | None:
    """Selects the GEMM kernels: ``"auto"`` (NumPy's BLAS when found), a library path, or ``None`` (built-in).

    Returns what is in use (``None``: the built-in ``gemm`` crate kernels); raises ``OSError`` for a named
    library without a usable CBLAS (the previous choice stays).
    """
    global in_use
    if path is None or path == "auto":
        in_use = _core._use_blas(None)
        for p in candidates() if path == "auto" else []:
            try:
                in_use = _core._use_blas(p)
                break
            except OSError:
                continue
    else:
        in_use = _core._use_blas(path)
    return in_use


def _init() -> None:
    setting = os.environ.get("FERROLAB_BLAS", "").strip()
    if setting.lower() in _OFF:
        use_blas(None)
        return
    try:
        use_blas(setting or "auto")
    except OSError:  # a named library that cannot be used: the built-in kernels
        use_blas(None)


_init()
