"""What the benchmark scripts in benches/ share: importing ferrolab from a checkout, the machine block, the
interleaved timeit-style timing with medians, the text table and the JSON file.

The scripts run as ``python benches/bench_*.py``, so this directory is first on ``sys.path`` and they import this
module as ``_common``. It imports the standard library only (bench_breaker.py sets ``OPENBLAS_NUM_THREADS`` before
NumPy loads). ``gen_dataset.py`` is a verbatim copy of a shared generator and does not use it.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def import_ferrolab() -> ModuleType:
    """``import ferrolab``, falling back to the checkout's python/ (an extension built in place)."""
    try:
        import ferrolab
    except ImportError:  # running from a checkout whose extension was built in place
        sys.path.insert(0, str(REPO / "python"))
        import ferrolab
    return ferrolab


# ---------------------------------------------------------------------------------------------------- machine


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, rounded (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    """The first ``model name`` of /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: Sequence[str]) -> list[str]:
    """Those of ``wanted`` that the first ``flags`` line of /proc/cpuinfo lists, in the order of ``wanted``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in have]
    except OSError:
        pass
    return []


def cores_available() -> int | None:
    """The cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def dist_version(dist: str) -> str | None:
    """The installed version of a distribution, None when unknown."""
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - best effort only
        return None


def warn_if_loaded(
    load: Sequence[float] | None,
    cores: int | None,
    consequence: str = "other work competes for the CPU and the timings will be noisy",
    end: str = "\n",
) -> None:
    """Prints a warning when the 1-minute load average exceeds half the available cores."""
    if load and cores and load[0] > 0.5 * cores:
        print(f"warning: load average {load[0]:.2f} on {cores} cores before the run: {consequence}{end}")


# ----------------------------------------------------------------------------------------------------- timing
# A *run* is a callable run(number) -> seconds that executes a statement `number` times and returns how long that
# took (timeit.Timer.timeit has this shape).


def looped(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> Callable[[int], float]:
    """A run that calls ``fn`` in a plain Python loop."""

    def run(number: int) -> float:
        t0 = clock()
        for _ in range(number):
            fn()
        return clock() - t0

    return run


def autorange(run: Callable[[int], float], min_time: float) -> int:
    """Loop count (1, 2, 5, 10, 20, ...) for which one repetition lasts at least ``min_time``."""
    i = 1
    while True:
        for j in (1, 2, 5):
            number = i * j
            if run(number) >= min_time:
                return number
        i *= 10


def time_pair(
    peer: Callable[[int], float],
    mine: Callable[[int], float],
    repeat: int,
    min_time: float,
    *,
    before_peer: Callable[[], Any] | None = None,
    before_mine: Callable[[], Any] | None = None,
    disable_gc: bool = True,
) -> dict[str, Any]:
    """Interleaved timing of two runs; per-call seconds of every repetition for each.

    Each side gets a loop count from :func:`autorange` (also the warm-up); the repetitions alternate who goes first,
    so that slow drift hits both sides alike. ``before_*`` runs (untimed) before that side's autorange and before
    each of its repetitions. The garbage collector is off throughout unless ``disable_gc`` is False.
    """
    gc_was_enabled = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        if before_peer is not None:
            before_peer()
        n_peer = autorange(peer, min_time)
        if before_mine is not None:
            before_mine()
        n_mine = autorange(mine, min_time)
        t_peer: list[float] = []
        t_mine: list[float] = []
        for r in range(repeat):
            order = [(peer, before_peer, n_peer, t_peer), (mine, before_mine, n_mine, t_mine)]
            if r % 2:
                order.reverse()
            for run, before, n, out in order:
                if before is not None:
                    before()
                out.append(run(n) / n)
    finally:
        if disable_gc and gc_was_enabled:
            gc.enable()
    return {"peer": t_peer, "mine": t_mine, "peer_loops": n_peer, "mine_loops": n_mine}


def time_runs(run: Callable[[int], float], repeat: int, min_time: float) -> list[float]:
    """Per-call seconds of ``repeat`` repetitions of one run (loop count from :func:`autorange`, also the warm-up),
    with the garbage collector off."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        n = autorange(run, min_time)
        return [run(n) / n for _ in range(repeat)]
    finally:
        if gc_was_enabled:
            gc.enable()


def pair_stats(t: dict[str, Any]) -> dict[str, Any]:
    """The row fields of a :func:`time_pair` result: medians, ``ratio = peer / ferrolab``, every repetition."""
    peer_s = statistics.median(t["peer"])
    mine_s = statistics.median(t["mine"])
    return {
        "peer_s": peer_s,
        "ferrolab_s": mine_s,
        "ratio": peer_s / mine_s if mine_s > 0 else None,
        "peer_times_s": t["peer"],
        "ferrolab_times_s": t["mine"],
        "peer_loops": t["peer_loops"],
        "ferrolab_loops": t["mine_loops"],
    }


def median_or_none(xs: Sequence[float | int | None]) -> float | None:
    """The median of the values that are not None, None when there are none."""
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


# ----------------------------------------------------------------------------------------------------- output


def format_table(
    header: Sequence[str],
    lines: Sequence[Sequence[str]],
    right: Collection[int] = (),
    *,
    rstrip: bool = False,
) -> list[str]:
    """A text table: the header, a rule of dashes, the lines; columns two spaces apart, those in ``right``
    right-aligned; ``rstrip`` drops trailing blanks of the header and the lines."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        text = "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return text.rstrip() if rstrip else text

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(line) for line in lines)]


def print_table(
    header: Sequence[str],
    lines: Sequence[Sequence[str]],
    right: Collection[int] = (),
    *,
    rstrip: bool = False,
) -> None:
    """Prints :func:`format_table` and flushes stdout."""
    for line in format_table(header, lines, right, rstrip=rstrip):
        print(line)
    sys.stdout.flush()


def json_path(arg: str | None, name: str, smoke: bool) -> Path:
    """``--json`` when given, else bench-results/NAME.json (NAME_smoke.json with ``--smoke``)."""
    if arg:
        return Path(arg)
    return REPO / "bench-results" / (f"{name}_smoke.json" if smoke else f"{name}.json")


def doc_header(name: str, argv: list[str] | None, smoke: bool) -> dict[str, Any]:
    """The first keys of a benchmark's JSON: its name, when, the arguments and whether it was a smoke run."""
    return {
        "benchmark": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:] if argv is None else argv,
        "smoke": smoke,
    }


def write_json(path: Path, doc: dict[str, Any], *, indent: int = 1, prefix: str = "") -> None:
    """Writes ``doc`` to ``path`` (creating its directory) and prints where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=indent))
    print(f"{prefix}JSON: {path}")


# ---------------------------------------------------------------------------------------------------- slow clients


def raise_nofile(need: int) -> int:
    """Raises the soft open-file limit towards the hard one (as far as ``need``); returns the soft limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class HostileClients:
    """``slow`` clients that send one request-head line per second (a slow-loris drip) and ``idle`` clients that
    make one request and then hold their keep-alive connection open, all on 127.0.0.1:``port``, driven by one
    thread. A connection the server closes is opened again a second later (as a real client would), so the load
    stays at its size. ``stop()`` closes everything."""

    def __init__(self, port: int, slow: int, idle: int, ramp: float = 1.0) -> None:
        import threading

        self.port, self.n_slow, self.n_idle, self.ramp = port, slow, idle, ramp
        self.closed_by_server = 0
        self.connect_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile-clients", daemon=True)

    def __enter__(self) -> HostileClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _open(self) -> Any:
        """A socket connecting without blocking (a server slow to accept must not slow down the load itself)."""
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))
        return s

    def _run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        kinds = ["slow"] * self.n_slow + ["idle"] * self.n_idle
        first = {"slow": b"GET /metrics HTTP/1.1\r\n", "idle": b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"}
        # interleave the two kinds, spread over the ramp
        order = sorted(range(len(kinds)), key=lambda i: (i % 2, i)) if kinds else []
        start = time.monotonic()
        due: dict[int, float] = {i: start + self.ramp * n / max(1, len(order)) for n, i in enumerate(order)}
        socks: dict[int, Any] = {}
        lines: dict[int, int] = {}  # header lines sent; -1 until the first bytes are out (still connecting)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for i, t in list(due.items()):
                    if t > now:
                        continue
                    s = socks.get(i)
                    if s is None:
                        s = socks[i] = self._open()
                        lines[i] = -1
                        sel.register(s, selectors.EVENT_READ, i)
                        due[i] = now + 0.02
                        continue
                    try:
                        if lines[i] < 0:
                            s.send(first[kinds[i]])
                            lines[i] = 0
                        else:  # a slow client's next header line
                            lines[i] += 1
                            s.send(b"X-Slow-%d: v\r\n" % lines[i])
                        due[i] = now + 1.0 if kinds[i] == "slow" else float("inf")
                    except (BlockingIOError, InterruptedError):
                        due[i] = now + 0.05  # still connecting, or the send buffer is full
                    except OSError:
                        due[i] = now + 0.05  # the selector reports the close
                for key, _ in sel.select(timeout=0.05):
                    i, s = key.data, key.fileobj
                    try:
                        data = s.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:  # closed by the server (408, the cap or idle): open again a second later
                        if lines.get(i, 0) < 0:
                            self.connect_errors += 1
                        else:
                            self.closed_by_server += 1
                        sel.unregister(s)
                        s.close()
                        socks.pop(i, None)
                        due[i] = time.monotonic() + 1.0
        finally:
            for s in socks.values():
                s.close()
            sel.close()


def scrape_loop(url: str, duration: float, interval: float = 0.05, timeout: float = 2.0) -> dict[str, Any]:
    """GETs ``url`` on a new connection every ``interval`` seconds for ``duration``; returns ok/total and the
    p50/p99 latency in milliseconds (failed scrapes count as ``timeout``)."""
    import urllib.request

    lat: list[float] = []
    ok = total = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        total += 1
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                r.read()
                ok += r.status == 200
        except OSError:
            pass
        dt = time.perf_counter() - t0
        lat.append(dt if dt < timeout else timeout)
        time.sleep(max(0.0, interval - dt))
    lat.sort()

    def q(p: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

    return {"ok": ok, "total": total, "p50_ms": q(0.50), "p99_ms": q(0.99)}


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) in KiB and Threads of a process, from /proc (empty where there is none)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


# ------------------------------------------------------------------------------------------------------ busy load


class BusyLoad:
    """A child process that keeps one core busy (a pure-Python spin loop), for timings "under load".

    The child ends by itself after ``limit_s`` seconds (so a crashed benchmark cannot leave it behind); ``pause()``
    and ``resume()`` stop and continue it (SIGSTOP/SIGCONT to its pid), so that one child serves interleaved idle
    and loaded timings; ``stop()`` kills it by its pid and reaps it. Use it as a context manager.
    """

    SPIN = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"

    def __init__(self, limit_s: float = 600.0) -> None:
        import subprocess

        self._proc = subprocess.Popen([sys.executable, "-c", self.SPIN.format(limit=float(limit_s))])
        self.pid = self._proc.pid
        self.running = True

    def __enter__(self) -> BusyLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def pause(self) -> None:
        import signal

        if self.running and self.alive():
            os.kill(self.pid, signal.SIGSTOP)
        self.running = False

    def resume(self, settle_s: float = 0.02) -> None:
        """Continues the child and waits ``settle_s`` so that the scheduler has placed it before timing starts."""
        import signal

        if not self.running and self.alive():
            os.kill(self.pid, signal.SIGCONT)
        self.running = True
        time.sleep(settle_s)

    def stop(self) -> None:
        import signal

        if self.alive():
            try:
                os.kill(self.pid, signal.SIGCONT)  # a stopped process dies of SIGKILL too; continue it to be tidy
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc.wait()
        self.running = False
