"""ferrolab: native kernels, observability, resilience and backups for scientific pipelines and ops scripts.

>>> import numpy as np, ferrolab as fl
>>> fl.ops.std(np.array([1.0, 3.0]))
np.float64(1.0)
"""

from __future__ import annotations

import atexit
import logging
from typing import TYPE_CHECKING

from . import _lazy, breaker
from ._core import (
    BackupError,
    CorruptionError,
    DeviceUnavailableError,
    FerrolabError,
    InternalError,
    LockedError,
    RepositoryNotFound,
    WrongPassword,
    _log_shutdown,
)
from ._core import __version__ as _core_version
from .breaker import CircuitBreaker, CircuitOpenError, breakers
from .runtime import num_threads, op_stats, simd_level

# core log events still queued are handed to logging before the interpreter finalizes
atexit.register(_log_shutdown)
# as a library: ferrolab's loggers say nothing until the application configures logging (no "last resort"
# lines on stderr, such as a bare "slow operation")
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from . import backup, dask, gpu, health, metrics, monitoring, ops, system, tracing

__version__ = _core_version

# Submodules run on first use (``fl.ops``, ``import ferrolab.ops`` and ``from ferrolab import ops`` all work): they
# bring NumPy (ops), asyncio (health) and urllib (metrics), which commands such as ``ferrolab backup`` do not need, so
# that ``import ferrolab`` stays cheap. No module ``__getattr__``: it would slow every ``fl.ops.x`` call (see _lazy).
_lazy.attach(globals(), ("backup", "dask", "gpu", "health", "metrics", "monitoring", "ops", "system", "tracing"))

__all__ = [
    "__version__",
    "ops",
    "dask",
    "metrics",
    "health",
    "monitoring",
    "system",
    "gpu",
    "tracing",
    "FerrolabError",
    "DeviceUnavailableError",
    "InternalError",
    "breaker",
    "CircuitBreaker",
    "CircuitOpenError",
    "breakers",
    "num_threads",
    "simd_level",
    "op_stats",
    "backup",
    "BackupError",
    "RepositoryNotFound",
    "WrongPassword",
    "CorruptionError",
    "LockedError",
]
