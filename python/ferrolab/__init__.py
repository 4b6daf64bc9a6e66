"""ferrolab: native kernels, observability, resilience and backups for scientific pipelines and ops scripts.

>>> import numpy as np, ferrolab as fl
>>> fl.ops.std(np.array([1.0, 3.0]))
np.float64(1.0)
"""

from __future__ import annotations

from . import backup, breaker, gpu, health, metrics, monitoring, ops, tracing
from ._core import DeviceUnavailableError, FerrolabError
from ._core import __version__ as _core_version
from .breaker import CircuitBreaker, CircuitOpenError, breakers
from .runtime import num_threads, op_stats, simd_level

__version__ = _core_version

__all__ = [
    "__version__",
    "ops",
    "metrics",
    "health",
    "monitoring",
    "gpu",
    "tracing",
    "FerrolabError",
    "DeviceUnavailableError",
    "breaker",
    "CircuitBreaker",
    "CircuitOpenError",
    "breakers",
    "num_threads",
    "simd_level",
    "op_stats",
    "backup",
]

try:  # the backup errors come with the native backup core
    from ._core import BackupError, CorruptionError, LockedError, RepositoryNotFound, WrongPassword
except ImportError:  # pragma: no cover - only while the native part is being written
    pass
else:
    __all__ += ["BackupError", "RepositoryNotFound", "WrongPassword", "CorruptionError", "LockedError"]
