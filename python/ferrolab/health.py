"""Health checks: a registry of named checks, run concurrently with timeouts into one report.

A check is a zero-argument callable (plain or ``async``) that returns one of

* a :class:`Status`,
* a ``(Status, message)`` or ``(Status, message, details)`` tuple,
* a :class:`CheckResult`,
* a ``bool`` (``True`` is healthy, ``False`` unhealthy).

A check never breaks the report: one that raises, returns anything else or runs past its timeout is reported as
:attr:`Status.UNHEALTHY` with a message saying why. The report's status is the worst status of its checks.
:func:`default_registry` is the process-wide registry that ``GET /health`` of :func:`ferrolab.metrics.serve` and
``ferrolab health`` run.

Built-in checks (each call builds a check to register; see their docstrings for the warning bands):
:func:`memory`, :func:`disk`, :func:`cpu`, :func:`load`, :func:`breaker`, :func:`backup_fresh`, :func:`gpu`,
:func:`http`, :func:`process`. :func:`load_config` registers the checks a TOML file declares (``ferrolab health
--config FILE``); :func:`default_checks` are the machine checks ``ferrolab health`` runs when nothing is registered.

Examples
--------
>>> from ferrolab.health import HealthRegistry, Status
>>> registry = HealthRegistry()
>>> registry.register("database", lambda: Status.HEALTHY)
>>> @registry.register("queue")
... def queue():
...     return Status.WARNING, "backlog of 1200 jobs"
>>> report = registry.run()
>>> report.status
<Status.WARNING: 'warning'>
>>> report.checks["queue"].message
'backlog of 1200 jobs'
>>> report.ok
True
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import enum
import inspect
import json
import logging
import math
import numbers
import os
import reprlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "Status",
    "CheckResult",
    "HealthReport",
    "HealthRegistry",
    "default_registry",
    "register",
    "unregister",
    "run",
    "memory",
    "disk",
    "cpu",
    "load",
    "breaker",
    "backup_fresh",
    "gpu",
    "http",
    "process",
    "default_checks",
    "load_config",
    "ConfigError",
]

_log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Timeout of a check registered without one, in seconds (a health endpoint must answer).
DEFAULT_TIMEOUT = 10.0

_EXPECTED = "expected a Status, a (Status, message) tuple, a CheckResult or a bool"


class Status(enum.Enum):
    """Outcome of a check, ordered by severity: ``HEALTHY < WARNING < UNHEALTHY``.

    The values are the strings used in JSON reports, so ``Status("warning")`` turns one back into a member.

    Examples
    --------
    >>> from ferrolab.health import Status
    >>> max([Status.HEALTHY, Status.UNHEALTHY, Status.WARNING])
    <Status.UNHEALTHY: 'unhealthy'>
    >>> Status.WARNING > Status.HEALTHY, Status("healthy") is Status.HEALTHY
    (True, True)
    """

    HEALTHY = "healthy"
    WARNING = "warning"
    UNHEALTHY = "unhealthy"

    @property
    def severity(self) -> int:
        """0 for healthy, 1 for warning, 2 for unhealthy."""
        return _SEVERITY[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return _SEVERITY[self] < _SEVERITY[other]

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return _SEVERITY[self] <= _SEVERITY[other]

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return _SEVERITY[self] > _SEVERITY[other]

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return _SEVERITY[self] >= _SEVERITY[other]


_SEVERITY = {Status.HEALTHY: 0, Status.WARNING: 1, Status.UNHEALTHY: 2}


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _check_timeout(func: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: argument 'timeout' must be a number of seconds or None, not {_type_name(value)}")
    t = float(value)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"{func}: argument 'timeout' must be a positive finite number of seconds, got {value!r}")
    return t


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Result of one check.

    Parameters
    ----------
    status : Status
        Outcome of the check.
    message : str, optional
        A short human-readable explanation (empty by default).
    duration_seconds : float, optional
        How long the check ran. The registry sets it to the measured time, whatever the check put here.
    details : Mapping, optional
        Extra data for the JSON report (made JSON-ready by :meth:`to_dict`).

    Raises
    ------
    TypeError
        When an argument has the wrong type.
    ValueError
        When ``duration_seconds`` is negative or not finite.

    Examples
    --------
    >>> from ferrolab.health import CheckResult, Status
    >>> r = CheckResult(Status.WARNING, "disk 91% full", details={"mount": "/"})
    >>> r.to_dict()
    {'status': 'warning', 'message': 'disk 91% full', 'duration_seconds': 0.0, 'details': {'mount': '/'}}
    """

    status: Status
    message: str = ""
    duration_seconds: float = 0.0
    details: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            raise TypeError(f"CheckResult(): argument 'status' must be a Status, not {_type_name(self.status)}")
        if not isinstance(self.message, str):
            raise TypeError(f"CheckResult(): argument 'message' must be a str, not {_type_name(self.message)}")
        d = self.duration_seconds
        if isinstance(d, bool) or not isinstance(d, numbers.Real):
            raise TypeError(f"CheckResult(): argument 'duration_seconds' must be a number, not {_type_name(d)}")
        if not math.isfinite(d) or d < 0:
            raise ValueError(f"CheckResult(): argument 'duration_seconds' must be finite and >= 0, got {d!r}")
        object.__setattr__(self, "duration_seconds", float(d))
        if self.details is not None:
            if not isinstance(self.details, Mapping):
                raise TypeError(
                    f"CheckResult(): argument 'details' must be a mapping or None, not {_type_name(self.details)}"
                )
            object.__setattr__(self, "details", dict(self.details))

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (``details`` only when present)."""
        d: dict[str, Any] = {
            "status": self.status.value,
            "message": self.message,
            "duration_seconds": self.duration_seconds,
        }
        if self.details is not None:
            d["details"] = _jsonable(self.details)
        return d


@dataclasses.dataclass(frozen=True)
class HealthReport:
    """Outcome of :meth:`HealthRegistry.run`.

    Attributes
    ----------
    status : Status
        The worst status of the checks (:attr:`Status.HEALTHY` when there are none).
    checks : dict of str to CheckResult
        One result per check, in registration order.
    timestamp : float
        When the run started, in seconds since the Unix epoch.
    duration_seconds : float
        How long the whole run took.

    Examples
    --------
    >>> import json
    >>> from ferrolab.health import HealthRegistry, Status
    >>> registry = HealthRegistry()
    >>> registry.register("cache", lambda: (Status.UNHEALTHY, "connection refused"))
    >>> report = registry.run()
    >>> report.ok
    False
    >>> d = json.loads(json.dumps(report.to_dict()))
    >>> d["status"], d["checks"]["cache"]["message"]
    ('unhealthy', 'connection refused')
    """

    status: Status
    checks: dict[str, CheckResult]
    timestamp: float
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True unless the status is unhealthy (warnings are ok, as for ``GET /health``)."""
        return self.status is not Status.UNHEALTHY

    def __str__(self) -> str:
        """A text table: one line per check (name, status, time, message), then the overall status."""
        rows = [
            (name, r.status.value, f"{r.duration_seconds:.3f}s", " ".join(r.message.split()))
            for name, r in self.checks.items()
        ]
        lines = []
        if rows:
            header = ("CHECK", "STATUS", "TIME", "MESSAGE")
            widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
            for row in [header, *rows]:
                lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
        else:
            lines.append("no health checks registered")
        n = len(rows)
        lines.append(
            f"overall: {self.status.value} ({n} check{'' if n == 1 else 's'}, {self.duration_seconds:.3f}s)"
        )
        return "\n".join(line.rstrip() for line in lines)

    def _repr_html_(self) -> str:
        """An HTML table for notebooks (statuses coloured)."""
        import html

        colour = {Status.HEALTHY: "#1a7f37", Status.WARNING: "#9a6700", Status.UNHEALTHY: "#cf222e"}

        def cell(status: Status) -> str:
            return f'<td style="color:{colour[status]};font-weight:bold">{status.value}</td>'

        rows = "".join(
            f"<tr><td>{html.escape(name)}</td>{cell(r.status)}<td>{r.duration_seconds:.3f}s</td>"
            f"<td style=\"text-align:left\">{html.escape(r.message)}</td></tr>"
            for name, r in self.checks.items()
        )
        n = len(self.checks)
        return (
            "<table><thead><tr><th>check</th><th>status</th><th>time</th><th>message</th></tr></thead>"
            f"<tbody>{rows}</tbody><tfoot><tr><td>overall</td>{cell(self.status)}"
            f"<td>{self.duration_seconds:.3f}s</td><td>{n} check{'' if n == 1 else 's'}</td></tr></tfoot></table>"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict: ``status``, ``ok``, ``timestamp``, ``duration_seconds``, ``checks``."""
        return {
            "status": self.status.value,
            "ok": self.ok,
            "timestamp": self.timestamp,
            "duration_seconds": self.duration_seconds,
            "checks": {name: result.to_dict() for name, result in self.checks.items()},
        }


def _jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts (unknown objects become strings)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if math.isfinite(f) else str(f)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


def _is_bool(value: Any) -> bool:
    """A bool, or NumPy's (what a comparison of NumPy values returns, e.g. ``np.float64(x) < limit``)."""
    t = type(value)
    return isinstance(value, bool) or (t.__module__ == "numpy" and t.__name__ in ("bool", "bool_"))


def _coerce(value: Any) -> tuple[Status, str, Mapping[str, Any] | None]:
    """What a check returned, as (status, message, details); anything unexpected is unhealthy."""
    if isinstance(value, CheckResult):
        return value.status, value.message, value.details
    if isinstance(value, Status):
        return value, "", None
    if _is_bool(value):
        return (Status.HEALTHY, "", None) if value else (Status.UNHEALTHY, "check returned False", None)
    if isinstance(value, tuple) and len(value) in (2, 3):
        status, message = value[0], value[1]
        details = value[2] if len(value) == 3 else None
        if _is_bool(status):
            status = Status.HEALTHY if status else Status.UNHEALTHY
        details_ok = details is None or isinstance(details, Mapping)
        if isinstance(status, Status) and isinstance(message, str) and details_ok:
            return status, message, (dict(details) if details is not None else None)
    what = f"{_type_name(value)} {reprlib.repr(value)}" if value is not None else "None"
    return Status.UNHEALTHY, f"check returned {what}; {_EXPECTED}", None


async def _await(awaitable: Any) -> Any:
    return await awaitable


class _Entry:
    __slots__ = ("name", "check", "timeout", "inflight")

    def __init__(self, name: str, check: Callable[[], Any], timeout: float) -> None:
        self.name = name
        self.check = check
        self.timeout = timeout
        self.inflight: _Job | None = None  # the invocation still running, if any (guarded by the registry lock)


class _Job:
    """One invocation of a check on its own daemon thread."""

    __slots__ = ("done", "started", "result", "previous_run")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.started = time.monotonic()
        self.result: CheckResult | None = None
        self.previous_run = False


class HealthRegistry:
    """A set of named health checks.

    Checks run concurrently, each on its own daemon thread, so a slow check delays a run by at most its
    timeout and a check that never returns cannot keep the process from exiting. While an invocation of a check
    is still running, later runs wait for that invocation instead of starting another one, so a hung check costs
    one thread, not one per run.

    Parameters
    ----------
    timeout : float, optional
        Timeout in seconds of checks registered without one (default 10).

    Examples
    --------
    >>> import threading
    >>> from ferrolab.health import HealthRegistry, Status
    >>> registry = HealthRegistry()
    >>> release = threading.Event()
    >>> registry.register("slow", lambda: release.wait() and Status.HEALTHY, timeout=0.05)
    >>> registry.register("broken", lambda: 1 / 0)
    >>> report = registry.run()
    >>> report.checks["slow"].message
    'timed out after 0.05s'
    >>> report.checks["broken"].message
    'ZeroDivisionError: division by zero'
    >>> release.set()
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._timeout = _check_timeout("HealthRegistry()", timeout)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"<HealthRegistry checks={self.names()!r}>"

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def register(self, name: str, check: Callable[[], Any] | None = None, *, timeout: float | None = None) -> Any:
        """Add a check under ``name``; without ``check``, return a decorator that registers the function.

        Parameters
        ----------
        name : str
            Unique, non-empty name of the check (the key in the report).
        check : callable, optional
            Zero-argument callable (or ``async`` function); see the module docstring for what it may return.
        timeout : float, optional
            Seconds after which the check is reported unhealthy; default: the registry's timeout.

        Returns
        -------
        None, or a decorator that registers its function and returns it unchanged.

        Raises
        ------
        TypeError
            ``name`` is not a str, ``check`` is not callable, ``timeout`` is not a number.
        ValueError
            ``name`` is empty or already registered, ``timeout`` is not positive.

        Examples
        --------
        >>> from ferrolab.health import HealthRegistry, Status
        >>> registry = HealthRegistry()
        >>> registry.register("always", lambda: True)
        >>> @registry.register("api", timeout=2.0)
        ... def api():
        ...     return Status.HEALTHY, "200 OK in 12 ms"
        >>> registry.names()
        ['always', 'api']
        >>> api()
        (<Status.HEALTHY: 'healthy'>, '200 OK in 12 ms')
        """
        if not isinstance(name, str):
            raise TypeError(f"register(): argument 'name' must be a str, not {_type_name(name)}")
        if not name.strip():
            raise ValueError("register(): argument 'name' must be a non-empty string")
        t = self._timeout if timeout is None else _check_timeout("register()", timeout)
        if check is None:

            def decorator(fn: _F) -> _F:
                self._add(name, fn, t)
                return fn

            return decorator
        self._add(name, check, t)
        return None

    def _add(self, name: str, check: Any, timeout: float) -> None:
        if not callable(check):
            raise TypeError(f"register(): argument 'check' must be callable, not {_type_name(check)}")
        with self._lock:
            if name in self._entries:
                raise ValueError(f"register(): a check named {name!r} is already registered (unregister it first)")
            self._entries[name] = _Entry(name, check, timeout)

    def unregister(self, name: str) -> None:
        """Remove the check ``name``.

        Raises
        ------
        TypeError
            ``name`` is not a str.
        KeyError
            No check has that name.

        Examples
        --------
        >>> from ferrolab.health import HealthRegistry
        >>> registry = HealthRegistry()
        >>> registry.register("x", lambda: True)
        >>> registry.unregister("x")
        >>> registry.names()
        []
        """
        if not isinstance(name, str):
            raise TypeError(f"unregister(): argument 'name' must be a str, not {_type_name(name)}")
        with self._lock:
            if name not in self._entries:
                raise KeyError(f"unregister(): no check named {name!r}")
            del self._entries[name]

    def names(self) -> list[str]:
        """Names of the registered checks, in registration order."""
        with self._lock:
            return list(self._entries)

    def run(self) -> HealthReport:
        """Run every check concurrently and collect a :class:`HealthReport`; never raises because of a check.

        Examples
        --------
        >>> from ferrolab.health import HealthRegistry
        >>> HealthRegistry().run().status
        <Status.HEALTHY: 'healthy'>
        """
        timestamp = time.time()
        t0 = time.monotonic()
        with self._lock:
            entries = list(self._entries.values())
        jobs = [(entry, self._start(entry)) for entry in entries]
        checks: dict[str, CheckResult] = {}
        for entry, job in jobs:
            if isinstance(job, CheckResult):  # the thread could not be started
                checks[entry.name] = job
                continue
            # all checks started together, so each one's deadline counts from the start of the run
            if job.done.wait(max(0.0, t0 + entry.timeout - time.monotonic())) and job.result is not None:
                checks[entry.name] = job.result
            else:
                running = time.monotonic() - job.started
                message = f"timed out after {entry.timeout:g}s"
                if job.previous_run:
                    message += f" (still running from an earlier run, started {running:.1f}s ago)"
                checks[entry.name] = CheckResult(Status.UNHEALTHY, message, running, {"timeout_seconds": entry.timeout})
        status = max((r.status for r in checks.values()), default=Status.HEALTHY)
        return HealthReport(status, checks, timestamp, time.monotonic() - t0)

    def _start(self, entry: _Entry) -> _Job | CheckResult:
        with self._lock:
            job = entry.inflight
            if job is not None and not job.done.is_set():
                job.previous_run = True
                return job
            job = entry.inflight = _Job()
        ctx = contextvars.copy_context()  # the check sees the caller's context (an active trace span, ...)
        thread = threading.Thread(
            target=ctx.run, args=(self._work, entry, job), name=f"ferrolab-health-{entry.name}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # e.g. "can't start new thread"
            with self._lock:
                entry.inflight = None
            return CheckResult(Status.UNHEALTHY, f"could not start the check: {exc}", 0.0)
        return job

    def _work(self, entry: _Entry, job: _Job) -> None:
        t = time.perf_counter()
        try:
            value = entry.check()
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            status, message, details = _coerce(value)
        except BaseException as exc:  # noqa: BLE001 - a check must not break the report, whatever it raises
            _log.debug("health check %r raised", entry.name, exc_info=True)
            status, details = Status.UNHEALTHY, {"exception": type(exc).__qualname__}
            text = str(exc)
            message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        job.result = CheckResult(status, message, time.perf_counter() - t, details)
        with self._lock:
            if entry.inflight is job:
                entry.inflight = None
        job.done.set()


_DEFAULT = HealthRegistry()


def default_registry() -> HealthRegistry:
    """The process-wide registry that ``GET /health`` and ``ferrolab health`` run.

    Examples
    --------
    >>> import ferrolab.health as health
    >>> health.default_registry() is health.default_registry()
    True
    """
    return _DEFAULT


def register(name: str, check: Callable[[], Any] | None = None, *, timeout: float | None = None) -> Any:
    """:meth:`HealthRegistry.register` on :func:`default_registry` (also a decorator).

    Examples
    --------
    >>> import ferrolab.health as health
    >>> @health.register("example-worker")
    ... def worker():
    ...     return health.Status.HEALTHY, "3 of 3 workers alive"
    >>> health.run().checks["example-worker"].message
    '3 of 3 workers alive'
    >>> health.unregister("example-worker")
    """
    return _DEFAULT.register(name, check, timeout=timeout)


def unregister(name: str) -> None:
    """:meth:`HealthRegistry.unregister` on :func:`default_registry`."""
    _DEFAULT.unregister(name)


def run() -> HealthReport:
    """:meth:`HealthRegistry.run` on :func:`default_registry`."""
    return _DEFAULT.run()


def _dumps(d: Mapping[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"), allow_nan=False)


def _http_response(registry: HealthRegistry | None = None) -> tuple[int, str]:
    """Status code and compact JSON body for ``GET /health``; never raises.

    200 when the report is healthy or warning, 503 when it is unhealthy, 500 (with an ``error`` member) when the
    report itself could not be produced.

    Examples
    --------
    >>> from ferrolab.health import HealthRegistry, Status, _http_response
    >>> registry = HealthRegistry()
    >>> registry.register("db", lambda: Status.UNHEALTHY)
    >>> code, body = _http_response(registry)
    >>> code, body.startswith('{"status":"unhealthy","ok":false,')
    (503, True)
    """
    try:
        reg = _DEFAULT if registry is None else registry
        if not isinstance(reg, HealthRegistry):
            raise TypeError(f"_http_response(): argument 'registry' must be a HealthRegistry, not {_type_name(reg)}")
        report = reg.run()
        return (503 if report.status is Status.UNHEALTHY else 200), _dumps(report.to_dict())
    except Exception as exc:  # noqa: BLE001 - the HTTP server must always get an answer
        _log.warning("health report failed", exc_info=True)
        error = f"{type(exc).__name__}: {exc}"
        return 500, _dumps({"status": Status.UNHEALTHY.value, "ok": False, "error": error})


# --- built-in checks and configuration files ------------------------------------------------------------------
from ._checks import backup_fresh, breaker, cpu, disk, gpu, http, load, memory, process  # noqa: E402

#: The built-in checks a configuration file may name as ``kind``.
KINDS: dict[str, Callable[..., Callable[[], CheckResult]]] = {
    "memory": memory,
    "disk": disk,
    "cpu": cpu,
    "load": load,
    "breaker": breaker,
    "backup_fresh": backup_fresh,
    "gpu": gpu,
    "http": http,
    "process": process,
}

SEVERITIES = ("critical", "warning")


class ConfigError(ValueError):
    """A health-check configuration file that cannot be used; the message names the file and the entry."""


def default_checks() -> dict[str, Callable[[], CheckResult]]:
    """The machine checks ``ferrolab health`` runs when nothing else is configured: memory, disk (/) and cpu.

    Examples
    --------
    >>> from ferrolab import health
    >>> registry = health.HealthRegistry()
    >>> for name, check in health.default_checks().items():
    ...     registry.register(name, check)
    >>> registry.names()
    ['memory', 'disk:/', 'cpu']
    """
    return {"memory": memory(), "disk:/": disk("/"), "cpu": cpu()}


def _capped(check: Callable[[], CheckResult]) -> Callable[[], CheckResult]:
    """``check`` with an unhealthy result reported as a warning (severity "warning")."""

    def capped() -> CheckResult:
        r = check()
        if r.status is Status.UNHEALTHY:
            return dataclasses.replace(r, status=Status.WARNING, message=f"{r.message} (severity: warning)")
        return r

    return capped


def load_config(path: str | os.PathLike[str], registry: HealthRegistry | None = None) -> HealthRegistry:
    """Register the checks a TOML file declares (into ``registry``, a new one by default) and return the registry.

    Each ``[[check]]`` table has ``name`` (unique), ``kind`` (one of :data:`KINDS`), optionally ``parameters`` (a
    table of the keyword arguments of that built-in), ``severity`` (``"critical"``, the default, keeps unhealthy
    results; ``"warning"`` caps them at warning) and ``timeout`` (seconds).

    Raises
    ------
    ConfigError
        The file is not valid TOML (the message has the line and column), or an entry is wrong (named by its
        position and name).
    OSError
        The file cannot be read.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from ferrolab import health
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp, "checks.toml")
    ...     _ = path.write_text('''
    ... [[check]]
    ... name = "root disk"
    ... kind = "disk"
    ... severity = "warning"
    ... parameters = { path = "/", min_free_percent = 0 }
    ... ''')
    ...     registry = health.load_config(path)
    >>> registry.names()
    ['root disk']
    >>> registry.run().checks["root disk"].status
    <Status.HEALTHY: 'healthy'>
    """
    import tomllib

    where = os.fspath(path)
    with open(where, "rb") as f:
        raw = f.read()
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    unknown = set(doc) - {"check"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; expected [[check]] tables")
    entries = doc.get("check", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{where}: 'check' must be an array of tables ([[check]])")
    reg = HealthRegistry() if registry is None else registry
    seen: set[str] = set()
    built = []
    for i, entry in enumerate(entries, start=1):
        label = f"{where}: [[check]] #{i}"
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{label}: 'name' must be a non-empty string")
        label += f" ({name!r})"
        extra = set(entry) - {"name", "kind", "parameters", "severity", "timeout"}
        if extra:
            raise ConfigError(f"{label}: unknown key(s) {sorted(extra)}; allowed: name, kind, parameters, "
                              "severity, timeout")
        if name in seen or name in reg:
            raise ConfigError(f"{label}: a check named {name!r} is already declared")
        seen.add(name)
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{label}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
        params = entry.get("parameters", {})
        if not isinstance(params, dict):
            raise ConfigError(f"{label}: 'parameters' must be a table")
        severity = entry.get("severity", "critical")
        if severity not in SEVERITIES:
            raise ConfigError(f"{label}: 'severity' must be one of {SEVERITIES}, got {severity!r}")
        factory = KINDS[kind]
        try:
            inspect.signature(factory).bind(**params)
            check = factory(**params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{label}: kind {kind!r}: {exc}") from None
        timeout = entry.get("timeout")
        if timeout is not None:
            try:
                timeout = _check_timeout("timeout", timeout)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{label}: {exc}") from None
        built.append((name, _capped(check) if severity == "warning" else check, timeout))
    for name, check, timeout in built:
        reg.register(name, check, timeout=timeout)
    return reg
