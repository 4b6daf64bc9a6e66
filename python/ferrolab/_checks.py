"""The built-in health checks of :mod:`ferrolab.health` (re-exported there).

Each function builds a *check*: a zero-argument callable to register with :meth:`HealthRegistry.register`; calling
it returns a :class:`~ferrolab.health.CheckResult` whose message says what was measured and against which limit.

Warning bands: a percentage limit warns from 5 points below it (``memory(max_percent=90)`` warns from 85%),
``disk`` warns from 5 points above its free-space minimum, ``load`` warns from 80% of ``max_per_core``; a
half-open breaker and a missing GPU are warnings. ``backup_fresh``, ``http`` and ``process`` have no warning state.
"""

from __future__ import annotations

import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import _coerce

if TYPE_CHECKING:
    from .health import CheckResult


__all__ = ["memory", "disk", "cpu", "load", "breaker", "backup_fresh", "gpu", "http", "process"]

#: Points below a percentage limit from which a check warns.
WARNING_BAND = 5.0


class _Check:
    """A named, parameterised check; ``repr`` shows how it was built."""

    __slots__ = ("_fn", "_label")

    def __init__(self, label: str, fn: Callable[[], CheckResult]) -> None:
        self._label = label
        self._fn = fn

    def __call__(self) -> CheckResult:
        return self._fn()

    def __repr__(self) -> str:
        return f"<ferrolab.health check {self._label}>"


def _path(func: str, name: str, value: Any) -> str:
    """A str path from a str or an ``os.PathLike`` giving one; else a TypeError naming ``func`` and ``name``."""
    if isinstance(value, str | os.PathLike):
        where = os.fspath(value)
        if isinstance(where, str):
            return where
    raise TypeError(f"{func}(): argument {name!r} must be a str or os.PathLike[str], not {type(value).__name__}")


def _number(func: str, name: str, value: Any, *, lo: float = 0.0, hi: float = math.inf) -> float:
    v = _coerce.real_arg(func, name, value)  # beyond float's range: an infinity, outside any range asked for
    if not (math.isfinite(v) and lo <= v <= hi):
        shown = repr(value) if math.isfinite(v) or not isinstance(value, int) else "an int beyond float's range"
        raise ValueError(f"{func}(): argument {name!r} must be in [{lo:g}, {hi:g}], got {shown}")
    return v


def _snapshot() -> dict[str, Any]:
    from .system import snapshot

    return snapshot()


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def memory(max_percent: float = 90.0) -> Callable[[], CheckResult]:
    """Memory in use (``total - available``) at most ``max_percent`` of the total; warns 5 points below.

    Examples
    --------
    >>> from ferrolab import health
    >>> health.memory(max_percent=100)().status
    <Status.HEALTHY: 'healthy'>
    >>> health.memory(max_percent=0)().message.startswith("memory ")
    True
    """
    limit = _number("memory", "max_percent", max_percent, hi=100.0)

    def check() -> CheckResult:
        m = _snapshot()["memory"]
        pct = m["percent"]
        text = f"memory {pct:.0f}% used ({_gib(m['available'])} of {_gib(m['total'])} available)"
        details = {"percent": pct, "max_percent": limit, **m}
        if pct > limit:
            return CheckResult(Status.UNHEALTHY, f"{text} > {limit:g}%", details=details)
        if pct > limit - WARNING_BAND:
            return CheckResult(Status.WARNING, f"{text}, near the limit of {limit:g}%", details=details)
        return CheckResult(Status.HEALTHY, f"{text} <= {limit:g}%", details=details)

    return _Check(f"memory(max_percent={limit:g})", check)


def disk(path: str | os.PathLike[str] = "/", min_free_percent: float = 10.0) -> Callable[[], CheckResult]:
    """The file system holding ``path`` has at least ``min_free_percent`` of its space free; warns 5 points above.

    Free space is what an unprivileged user may still write (``statvfs``'s ``f_bavail``), as in
    :func:`ferrolab.system.snapshot`.

    Examples
    --------
    >>> from ferrolab import health
    >>> health.disk("/", min_free_percent=0)().status
    <Status.HEALTHY: 'healthy'>
    >>> health.disk("/", min_free_percent=100)().message.startswith("disk / ")
    True
    """
    where = _path("disk", "path", path)
    limit = _number("disk", "min_free_percent", min_free_percent, hi=100.0)

    def check() -> CheckResult:
        try:
            st = os.statvfs(where)
        except OSError as exc:
            return CheckResult(Status.UNHEALTHY, f"disk {where}: cannot read its file system: {exc.strerror or exc}")
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        free_pct = 100.0 * free / total if total else 0.0
        full = 100.0 - free_pct
        text = f"disk {where} {full:.0f}% full, {free_pct:.0f}% free ({_gib(free)} of {_gib(total)})"
        details = {"path": where, "total": total, "free": free, "free_percent": free_pct, "min_free_percent": limit}
        if free_pct < limit:
            return CheckResult(Status.UNHEALTHY, f"{text} < {limit:g}%", details=details)
        if free_pct < limit + WARNING_BAND:
            return CheckResult(Status.WARNING, f"{text}, near the minimum of {limit:g}%", details=details)
        return CheckResult(Status.HEALTHY, f"{text} >= {limit:g}%", details=details)

    return _Check(f"disk({where!r}, min_free_percent={limit:g})", check)


def cpu(max_percent: float = 95.0, interval: float = 0.5) -> Callable[[], CheckResult]:
    """CPU usage of the machine over ``interval`` seconds at most ``max_percent``; warns 5 points below.

    The check takes a :func:`ferrolab.system.snapshot`, sleeps ``interval`` and takes another; the usage is that of
    the time between the second snapshot and the one before it, which is shorter when another thread took a
    snapshot meanwhile (the sampler is process-wide).

    Examples
    --------
    >>> from ferrolab import health
    >>> r = health.cpu(max_percent=100, interval=0.05)()
    >>> r.status is not health.Status.UNHEALTHY, r.message.startswith("cpu ")
    (True, True)
    """
    limit = _number("cpu", "max_percent", max_percent, hi=100.0)
    wait = _number("cpu", "interval", interval, hi=60.0)

    def check() -> CheckResult:
        _snapshot()
        time.sleep(wait)
        s = _snapshot()
        pct = s["cpu_percent"]
        text = f"cpu {pct:.0f}% busy on {s['cpu_count']} cores"
        details = {"percent": pct, "max_percent": limit, "cpu_count": s["cpu_count"]}
        if pct > limit:
            return CheckResult(Status.UNHEALTHY, f"{text} > {limit:g}%", details=details)
        if pct > limit - WARNING_BAND:
            return CheckResult(Status.WARNING, f"{text}, near the limit of {limit:g}%", details=details)
        return CheckResult(Status.HEALTHY, f"{text} <= {limit:g}%", details=details)

    return _Check(f"cpu(max_percent={limit:g})", check)


def load(max_per_core: float = 2.0) -> Callable[[], CheckResult]:
    """The 5-minute load average per logical CPU at most ``max_per_core``; warns from 80% of it.

    Examples
    --------
    >>> from ferrolab import health
    >>> health.load(max_per_core=1e9)().status
    <Status.HEALTHY: 'healthy'>
    """
    limit = _number("load", "max_per_core", max_per_core)

    def check() -> CheckResult:
        s = _snapshot()
        load1, load5, load15 = s["load_avg"]
        per_core = load5 / s["cpu_count"]
        n = s["cpu_count"]
        text = f"load {load1:.2f} {load5:.2f} {load15:.2f} on {n} cores ({per_core:.2f} per core over 5 min)"
        details = {"load_avg": [load1, load5, load15], "per_core": per_core, "max_per_core": limit}
        if per_core > limit:
            return CheckResult(Status.UNHEALTHY, f"{text} > {limit:g}", details=details)
        if per_core > 0.8 * limit:
            return CheckResult(Status.WARNING, f"{text}, near the limit of {limit:g}", details=details)
        return CheckResult(Status.HEALTHY, f"{text} <= {limit:g}", details=details)

    return _Check(f"load(max_per_core={limit:g})", check)


def breaker(name: str) -> Callable[[], CheckResult]:
    """The circuit breaker ``name`` (see :func:`ferrolab.breakers`): open or forced open is unhealthy, half-open a
    warning, closed or disabled healthy; unhealthy when no breaker has that name.

    Examples
    --------
    >>> import ferrolab as fl
    >>> from ferrolab import health
    >>> b = fl.CircuitBreaker("doc_health_db")
    >>> health.breaker("doc_health_db")().message
    "circuit breaker 'doc_health_db' is closed"
    >>> b.force_open()
    >>> health.breaker("doc_health_db")().status
    <Status.UNHEALTHY: 'unhealthy'>
    """
    if not isinstance(name, str):
        raise TypeError(f"breaker(): argument 'name' must be a str, not {type(name).__name__}")

    def check() -> CheckResult:
        from .breaker import breakers

        b = breakers().get(name)
        if b is None:
            known = ", ".join(repr(n) for n in breakers()) or "none"
            return CheckResult(Status.UNHEALTHY, f"no circuit breaker named {name!r} (alive: {known})")
        state = b.state
        text = f"circuit breaker {name!r} is {state.replace('_', '-')}"
        if state in ("open", "forced_open"):
            why = b.last_failure
            cause = f" (last failure: {type(why).__name__}: {why})" if why is not None else ""
            return CheckResult(Status.UNHEALTHY, f"{text}: calls are rejected{cause}", details={"state": state})
        if state == "half_open":
            msg = f"{text}: trial calls decide whether it closes"
            return CheckResult(Status.WARNING, msg, details={"state": state})
        return CheckResult(Status.HEALTHY, text, details={"state": state})

    return _Check(f"breaker({name!r})", check)


def _age(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    if h or d:
        parts.append(f"{h}h")
    parts.append(f"{m}m" if (m or h or d) else f"{s}s")
    return " ".join(parts)


def backup_fresh(
    repo: str | os.PathLike[str],
    max_age_seconds: float,
    password: str | bytes | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> Callable[[], CheckResult]:
    """The newest snapshot of the backup repository ``repo`` is at most ``max_age_seconds`` old.

    The repository is opened as :meth:`ferrolab.backup.Repository.open` does (without a password or key file, from
    ``FERROLAB_PASSWORD`` or ``FERROLAB_PASSWORD_FILE``, like ``ferrolab backup``) and only its snapshot list is
    read. Unhealthy when it is too old, when there is none, or when the repository cannot be opened.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import ferrolab as fl
    >>> from ferrolab import health
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="pw")
    ...     check = health.backup_fresh(pathlib.Path(tmp, "repo"), 3600, password="pw")
    ...     print(check().message.endswith("has no snapshot"))
    ...     data = pathlib.Path(tmp, "data")
    ...     data.mkdir()
    ...     _ = data.joinpath("a.txt").write_text("hello")
    ...     _ = repo.backup(data)
    ...     print(check().status)
    True
    Status.HEALTHY
    """
    url = _path("backup_fresh", "repo", repo)
    limit = _number("backup_fresh", "max_age_seconds", max_age_seconds, lo=0.0)

    def check() -> CheckResult:
        from .backup import Repository

        try:
            snaps = Repository.open(url, password=password, key_file=key_file).snapshots()
        except Exception as exc:  # noqa: BLE001 - any failure to read the repository is the check's answer
            return CheckResult(Status.UNHEALTHY, f"backup repository {url}: {type(exc).__name__}: {exc}")
        if not snaps:
            return CheckResult(Status.UNHEALTHY, f"backup repository {url} has no snapshot")
        newest = max(snaps, key=lambda s: s.time)
        age = (datetime.now(UTC) - newest.time).total_seconds()
        details = {"snapshot": newest.id, "time": newest.time.isoformat(), "age_seconds": age,
                   "max_age_seconds": limit}
        text = f"newest snapshot {newest.short_id} of {url} is {_age(max(age, 0.0))} old"
        if age > limit:
            return CheckResult(Status.UNHEALTHY, f"{text} > {_age(limit)}", details=details)
        return CheckResult(Status.HEALTHY, f"{text} <= {_age(limit)}", details=details)

    return _Check(f"backup_fresh({url!r}, max_age_seconds={limit:g})", check)


def gpu() -> Callable[[], CheckResult]:
    """Healthy when ferrolab can run ops on a GPU (:func:`ferrolab.gpu.is_available`), a warning with the reason
    otherwise.

    Examples
    --------
    >>> import ferrolab as fl
    >>> from ferrolab import health
    >>> r = health.gpu()()
    >>> r.status is (health.Status.HEALTHY if fl.gpu.is_available() else health.Status.WARNING)
    True
    """

    def check() -> CheckResult:
        from . import _core
        from . import gpu as g

        if g.is_available():
            names = [d.get("name", "?") for d in g.info().get("devices", [])]
            return CheckResult(Status.HEALTHY, f"GPU available: {', '.join(names) or 'yes'}")
        reason = _core.gpu_unavailable_reason() or "unknown reason"
        return CheckResult(Status.WARNING, f"no usable GPU: {reason}")

    return _Check("gpu()", check)


def http(url: str, timeout: float = 5.0, expect_status: int = 200) -> Callable[[], CheckResult]:
    """``GET url`` answers ``expect_status`` within ``timeout`` seconds (redirects are followed).

    Examples
    --------
    >>> from ferrolab import health
    >>> r = health.http("http://127.0.0.1:9/", timeout=1)()
    >>> r.status, r.message.startswith("GET http://127.0.0.1:9/ failed")
    (<Status.UNHEALTHY: 'unhealthy'>, True)
    """
    if not isinstance(url, str):
        raise TypeError(f"http(): argument 'url' must be a str, not {type(url).__name__}")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"http(): argument 'url' must start with http:// or https://, got {url!r}")
    wait = _number("http", "timeout", timeout, lo=0.001)
    if isinstance(expect_status, bool) or not isinstance(expect_status, int):
        raise TypeError(f"http(): argument 'expect_status' must be an int, not {type(expect_status).__name__}")
    if not 100 <= expect_status <= 599:  # no response has another status: the check could never pass
        raise ValueError(f"http(): argument 'expect_status' is {expect_status}; expected an HTTP status in [100, 599]")

    def check() -> CheckResult:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=wait) as resp:  # noqa: S310 - the URL is the user's
                code = resp.status
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
        except Exception as exc:  # noqa: BLE001 - every failure to get an answer is the check's answer
            reason = getattr(exc, "reason", exc)
            return CheckResult(Status.UNHEALTHY, f"GET {url} failed: {type(exc).__name__}: {reason}")
        ms = (time.perf_counter() - t0) * 1e3
        details = {"status_code": code, "expect_status": expect_status, "milliseconds": ms}
        if code != expect_status:
            return CheckResult(Status.UNHEALTHY, f"GET {url} -> {code}, expected {expect_status} ({ms:.0f} ms)",
                               details=details)
        return CheckResult(Status.HEALTHY, f"GET {url} -> {code} in {ms:.0f} ms", details=details)

    return _Check(f"http({url!r}, expect_status={expect_status})", check)


def _process_ids(name: str) -> list[int]:
    """PIDs whose command name (``/proc/PID/comm``) or program (first word of the command line) is ``name``."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", encoding="utf-8", errors="replace") as f:
                comm = f.read().strip()
            if comm != name:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fb:
                    argv0 = fb.read().split(b"\0", 1)[0].decode("utf-8", "replace")
                if os.path.basename(argv0) != name:
                    continue
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
        pids.append(int(entry.name))
    return sorted(pids)


def process(name: str) -> Callable[[], CheckResult]:
    """At least one process named ``name`` runs (its command name or the program of its command line; Linux).

    Examples
    --------
    >>> import os, sys
    >>> from ferrolab import health
    >>> health.process(os.path.basename(sys.executable))().status
    <Status.HEALTHY: 'healthy'>
    >>> health.process("no-such-program-here")().message
    "no process named 'no-such-program-here' is running"
    """
    if not isinstance(name, str):
        raise TypeError(f"process(): argument 'name' must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("process(): argument 'name' is empty; expected a process name")

    def check() -> CheckResult:
        if not os.path.isdir("/proc"):
            return CheckResult(Status.UNHEALTHY, "cannot list processes: no /proc on this platform")
        pids = _process_ids(name)
        if not pids:
            return CheckResult(Status.UNHEALTHY, f"no process named {name!r} is running")
        shown = ", ".join(map(str, pids[:5])) + (", ..." if len(pids) > 5 else "")
        n = len(pids)
        return CheckResult(Status.HEALTHY, f"{n} process{'es' if n > 1 else ''} named {name!r} (pid {shown})",
                           details={"pids": pids})

    return _Check(f"process({name!r})", check)


# at the end: ferrolab.health imports this module at its own end, and either may be imported first
from .health import CheckResult, Status  # noqa: E402,F811
