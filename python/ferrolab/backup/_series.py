"""The backup series of :mod:`ferrolab.backup` on ``/metrics``: ``<prefix>_backup_last_success_timestamp_seconds``,
``<prefix>_backup_duration_seconds`` and ``<prefix>_backup_bytes_total`` (see the package docstring)."""

from __future__ import annotations

import math
import threading
import time as _time
from typing import Any, NamedTuple

from .. import _core

_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


class _Series(NamedTuple):
    prefix: str
    last_success: Any
    duration: Any
    bytes: Any


_series: _Series | None = None
_series_lock = threading.Lock()
_last_success: dict[str, float] = {}


def _register(cls: Any, name: str, documentation: str, labelnames: list[str], **kwargs: Any) -> Any:
    """A metric on the default registry; when its name is taken, an unexposed one (with a warning) so that
    recording a backup's metrics can never fail the backup."""
    try:
        return cls(name, documentation, labelnames, **kwargs)
    except ValueError as exc:
        import warnings

        warnings.warn(f"ferrolab.backup: cannot register {name!r} ({exc}); backup metrics will not be exposed",
                      RuntimeWarning, stacklevel=4)
        return cls(name, documentation, labelnames, registry=None, **kwargs)


def _metrics() -> _Series:
    """The backup series, created once (again if ``fl.metrics.configure(prefix=...)`` renamed the built-ins)."""
    global _series
    prefix = _core._settings()[1]
    current = _series
    if current is not None and current.prefix == prefix:
        return current
    from .. import metrics

    with _series_lock:
        current = _series
        if current is not None and current.prefix == prefix:
            return current
        if current is not None:
            for m in current[1:]:
                try:
                    metrics.REGISTRY.unregister(m)
                except KeyError:  # pragma: no cover - unregistered by the user
                    pass
        created = _Series(
            prefix,
            _register(metrics.Gauge, f"{prefix}_backup_last_success_timestamp_seconds",
                      "Time of the newest successful ferrolab backup (seconds since the epoch).", ["repository"]),
            _register(metrics.Histogram, f"{prefix}_backup_duration_seconds",
                      "Duration of ferrolab backup operations (backup, restore, verify, prune).", ["operation"],
                      buckets=_DURATION_BUCKETS),
            _register(metrics.Counter, f"{prefix}_backup_bytes",
                      "Bytes handled by ferrolab backups: read (file bytes scanned), added (stored in the "
                      "repository), restored.", ["kind"]),
        )
        for kind in ("read", "added", "restored"):  # every series exists from the start, at 0
            created.bytes.labels(kind=kind)
        for operation in ("backup", "restore", "verify", "prune"):
            created.duration.labels(operation=operation)
        for repository, value in _last_success.items():  # carried over a prefix change
            created.last_success.labels(repository=repository).set(value)
        _series = created
        return created


class _Timed:
    """Observes ``ferrolab_backup_duration_seconds{operation}`` when the block ends, failed or not."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> _Timed:
        self.start = _time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _metrics().duration.labels(operation=self.operation).observe(_time.perf_counter() - self.start)


def _record_backup(repository: str, read: int, added: int, time: float) -> None:
    """Count a successful backup's bytes and move ``last_success{repository}`` to ``time`` (never backwards)."""
    series = _metrics()
    series.bytes.labels(kind="read").inc(read)
    series.bytes.labels(kind="added").inc(added)
    with _series_lock:
        value = max(_last_success.get(repository, -math.inf), time)
        _last_success[repository] = value
    series.last_success.labels(repository=repository).set(value)
