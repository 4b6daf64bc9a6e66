#!/usr/bin/env python3
"""Side-by-side benchmark of ``fl.CircuitBreaker`` against pybreaker, circuitbreaker, aiobreaker and purgatory.

A breaker's cost is its *overhead*: the time of a guarded call minus the time of the same call made directly. Every
scenario times the direct call and each breaker in one process, interleaved (the order rotates every repetition so
that slow drift hits all alike), timeit-style: each side loops long enough that one repetition lasts at least
``--min-time``; the per-call time is the median over ``--repeat`` repetitions, and

    overhead = median(guarded) - median(direct),    ratio = peer overhead / ferrolab overhead (> 1: ferrolab cheaper)

    python benches/bench_breaker.py                 # full run, table + bench-results/bench_breaker.json
    python benches/bench_breaker.py --smoke         # a few seconds, for CI: every scenario and check runs once
    python benches/bench_breaker.py --repeat 21 --json bench-results/bench_breaker.json
    python benches/bench_breaker.py --timer wall     # wall-clock time instead of the thread's CPU time

The default timer is the thread's CPU time (``time.thread_time``): every timed loop runs in one thread, so it is
the same per-call cost as wall-clock time on an idle machine, and it does not count the time the thread waits for a
core while other processes run. The BLAS pool NumPy starts is limited to one thread (``OPENBLAS_NUM_THREADS=1``
unless set) so that its idle workers do not compete either; nothing here uses BLAS.

Scenarios (the wrapped function is ``f(x) -> x``; ``async def af(x) -> x`` for asyncio): a decorated function in the
closed state with metrics off and on, ``breaker.call(f, 1)``, a ``with`` block, a call rejected while open (caught
with ``try/except``; the direct baseline raises nothing, so the overhead includes raising and catching), the same
for asyncio (decorator, ``acall``/``call_async``, ``async with``, rejection). ferrolab's targets per guarded call
over a direct call: success <= 150 ns, rejected while open <= 700 ns, asyncio <= 300 ns, metrics on <= 200 ns.

Two behaviours are measured besides speed: how many of 8 concurrent callers (threads, then asyncio tasks) a
half-open breaker admits while its trial call is in flight (ferrolab is set to admit 1), and the throughput of 4
threads doing 1 ms of I/O (``time.sleep(0.001)``) through each closed breaker, as a fraction of the unguarded
throughput (a breaker that serializes its calls falls far below 1).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import (
    autorange,
    cores_available,
    cpu_model,
    dist_version,
    doc_header,
    import_ferrolab,
    json_path,
    loadavg,
    print_table,
    warn_if_loaded,
    write_json,
)

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads (through ferrolab): see the docstring

fl = import_ferrolab()

try:
    import pybreaker
except ImportError:  # optional peer
    pybreaker = None
try:
    import circuitbreaker
except ImportError:  # optional peer
    circuitbreaker = None
try:
    import aiobreaker
except ImportError:  # optional peer
    aiobreaker = None
try:
    import purgatory
except ImportError:  # optional peer
    purgatory = None

TARGETS_NS = {
    "success (decorator, metrics off)": 150.0,
    "success (decorator, metrics on)": 200.0,
    "rejected while open": 700.0,
    "asyncio success (decorator)": 300.0,
    "asyncio acall": 300.0,
}

LONG = 3600.0  # seconds a tripped breaker stays open


def f(x: Any) -> Any:
    return x


async def af(x: Any) -> Any:
    return x


def fail(x: Any = None) -> Any:
    raise ConnectionError("down")


async def afail(x: Any = None) -> Any:
    raise ConnectionError("down")


def _name(prefix: str) -> str:
    _name.n += 1  # type: ignore[attr-defined]
    return f"bench_{prefix}_{_name.n}"  # type: ignore[attr-defined]


_name.n = 0  # type: ignore[attr-defined]


def version(mod: Any) -> str | None:
    if mod is None:
        return None
    return dist_version(mod.__name__) or getattr(mod, "__version__", "?")


# ------------------------------------------------------------------------------------------------ loops
# Each implementation is a *loop* ``loop(n)`` that makes n calls with the call written inline, so that the direct
# baseline and the guarded variants differ only in the call itself.


def sync_loop(g: Callable[[Any], Any]) -> Callable[[int], None]:
    def loop(n: int, g: Callable[[Any], Any] = g) -> None:
        for _ in range(n):
            g(1)

    return loop


def call_loop(call: Callable[..., Any]) -> Callable[[int], None]:
    def loop(n: int, call: Callable[..., Any] = call, f: Callable[[Any], Any] = f) -> None:
        for _ in range(n):
            call(f, 1)

    return loop


def with_loop(cm: Callable[[], Any]) -> Callable[[int], None]:
    def loop(n: int, cm: Callable[[], Any] = cm, f: Callable[[Any], Any] = f) -> None:
        for _ in range(n):
            with cm():
                f(1)

    return loop


def direct_with_loop(n: int, f: Callable[[Any], Any] = f) -> None:
    for _ in range(n):
        f(1)


def reject_loop(g: Callable[[Any], Any]) -> Callable[[int], None]:
    def loop(n: int, g: Callable[[Any], Any] = g) -> None:
        for _ in range(n):
            try:
                g(1)
            except Exception:  # noqa: BLE001 - every breaker raises its own class
                pass

    return loop


class AsyncRunner:
    """Runs async loops on one event loop (created once)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def wrap(self, make: Callable[[int], Any]) -> Callable[[int], None]:
        def run(n: int) -> None:
            self.loop.run_until_complete(make(n))

        return run

    def close(self) -> None:
        self.loop.close()


def async_loop(g: Callable[[Any], Any]) -> Callable[[int], Any]:
    async def loop(n: int, g: Callable[[Any], Any] = g) -> None:
        for _ in range(n):
            await g(1)

    return loop


def async_call_loop(call: Callable[..., Any]) -> Callable[[int], Any]:
    async def loop(n: int, call: Callable[..., Any] = call, af: Callable[[Any], Any] = af) -> None:
        for _ in range(n):
            await call(af, 1)

    return loop


def async_with_loop(cm: Callable[[], Any], awaited: bool = False) -> Callable[[int], Any]:
    if awaited:  # purgatory: ``async with await factory.get_breaker(name):``

        async def loop(n: int, cm: Callable[[], Any] = cm, af: Callable[[Any], Any] = af) -> None:
            for _ in range(n):
                async with await cm():
                    await af(1)

        return loop

    async def loop2(n: int, cm: Callable[[], Any] = cm, af: Callable[[Any], Any] = af) -> None:
        for _ in range(n):
            async with cm():
                await af(1)

    return loop2


def async_reject_loop(g: Callable[[Any], Any]) -> Callable[[int], Any]:
    async def loop(n: int, g: Callable[[Any], Any] = g) -> None:
        for _ in range(n):
            try:
                await g(1)
            except Exception:  # noqa: BLE001 - every breaker raises its own class
                pass

    return loop


# ------------------------------------------------------------------------------------------------ scenarios


@dataclass
class Scenario:
    name: str
    direct: Callable[[int], None]
    impls: dict[str, Callable[[int], None]] = field(default_factory=dict)


def trip(call: Callable[[], Any], times: int = 3) -> None:
    for _ in range(times):
        try:
            call()
        except Exception:  # noqa: BLE001 - tripping on purpose
            pass


def fl_breaker(prefix: str, **kw: Any) -> fl.CircuitBreaker:
    return fl.CircuitBreaker(_name(prefix), **kw)


def build_scenarios(runner: AsyncRunner) -> list[Scenario]:
    sc: list[Scenario] = []

    # --- sync success through a decorator
    s = Scenario("success (decorator, metrics off)", sync_loop(f))
    s.impls["ferrolab"] = sync_loop(fl_breaker("ok", metrics=False)(f))
    if circuitbreaker:
        s.impls["circuitbreaker"] = sync_loop(circuitbreaker.CircuitBreaker(failure_threshold=5)(f))
    if pybreaker:
        s.impls["pybreaker"] = sync_loop(pybreaker.CircuitBreaker()(f))
    if purgatory:
        s.impls["purgatory"] = sync_loop(purgatory.SyncCircuitBreakerFactory()(_name("purg"))(f))
    sc.append(s)

    s = Scenario("success (decorator, metrics on)", sync_loop(f))
    s.impls["ferrolab"] = sync_loop(fl_breaker("okm", metrics=True)(f))
    sc.append(s)

    # --- breaker.call(f, 1)
    s = Scenario("call(f, 1)", sync_loop(f))
    s.impls["ferrolab"] = call_loop(fl_breaker("call", metrics=False).call)
    if circuitbreaker:
        s.impls["circuitbreaker"] = call_loop(circuitbreaker.CircuitBreaker(failure_threshold=5).call)
    if pybreaker:
        s.impls["pybreaker"] = call_loop(pybreaker.CircuitBreaker().call)
    sc.append(s)

    # --- with block
    s = Scenario("with block", direct_with_loop)
    b = fl_breaker("with", metrics=False)
    s.impls["ferrolab"] = with_loop(lambda b=b: b)
    if circuitbreaker:
        cb = circuitbreaker.CircuitBreaker(failure_threshold=5)
        s.impls["circuitbreaker (never rejects)"] = with_loop(lambda cb=cb: cb)
    if pybreaker:
        s.impls["pybreaker"] = with_loop(pybreaker.CircuitBreaker().calling)
    if purgatory:
        fac = purgatory.SyncCircuitBreakerFactory()
        name = _name("purgw")
        s.impls["purgatory"] = with_loop(lambda fac=fac, name=name: fac.get_breaker(name))
    sc.append(s)

    # --- rejected while open (tripped by failures: the rejection carries the last failure)
    s = Scenario("rejected while open", reject_loop(f))
    b = fl_breaker("rej", failure_threshold=1, reset_timeout=LONG, metrics=False)
    trip(lambda: b.call(fail))
    s.impls["ferrolab"] = reject_loop(b(f))
    if circuitbreaker:
        cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=LONG)
        trip(lambda: cb.call(fail))
        s.impls["circuitbreaker"] = reject_loop(cb(f))
    if pybreaker:
        pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=LONG)
        trip(lambda: pb.call(fail))
        s.impls["pybreaker"] = reject_loop(pb(f))
    if purgatory:
        fac = purgatory.SyncCircuitBreakerFactory(default_threshold=1, default_ttl=LONG)
        name = _name("purgr")
        trip(fac(name)(fail))
        s.impls["purgatory"] = reject_loop(fac(name)(f))
    sc.append(s)

    # --- asyncio
    s = Scenario("asyncio success (decorator)", runner.wrap(async_loop(af)))
    s.impls["ferrolab"] = runner.wrap(async_loop(fl_breaker("aok", metrics=False)(af)))
    if circuitbreaker:
        s.impls["circuitbreaker"] = runner.wrap(async_loop(circuitbreaker.CircuitBreaker(failure_threshold=5)(af)))
    if aiobreaker:
        s.impls["aiobreaker"] = runner.wrap(async_loop(aiobreaker.CircuitBreaker()(af)))
    if purgatory:
        s.impls["purgatory"] = runner.wrap(async_loop(purgatory.AsyncCircuitBreakerFactory()(_name("apurg"))(af)))
    sc.append(s)

    s = Scenario("asyncio acall", runner.wrap(async_loop(af)))
    s.impls["ferrolab"] = runner.wrap(async_call_loop(fl_breaker("acall", metrics=False).acall))
    if aiobreaker:
        s.impls["aiobreaker (call_async)"] = runner.wrap(async_call_loop(aiobreaker.CircuitBreaker().call_async))
    if circuitbreaker:
        s.impls["circuitbreaker (call_async)"] = runner.wrap(
            async_call_loop(circuitbreaker.CircuitBreaker(failure_threshold=5).call_async)
        )
    sc.append(s)

    s = Scenario("async with block", runner.wrap(async_loop(af)))
    b = fl_breaker("awith", metrics=False)
    s.impls["ferrolab"] = runner.wrap(async_with_loop(lambda b=b: b))
    if purgatory:
        afac = purgatory.AsyncCircuitBreakerFactory()
        name = _name("apurgw")
        s.impls["purgatory"] = runner.wrap(async_with_loop(lambda afac=afac, name=name: afac.get_breaker(name), True))
    sc.append(s)

    s = Scenario("asyncio rejected while open", runner.wrap(async_reject_loop(af)))
    b = fl_breaker("arej", failure_threshold=1, reset_timeout=LONG, metrics=False)
    runner.loop.run_until_complete(async_reject_loop(b(afail))(1))
    s.impls["ferrolab"] = runner.wrap(async_reject_loop(b(af)))
    if circuitbreaker:
        cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=LONG)
        runner.loop.run_until_complete(async_reject_loop(cb(afail))(1))
        s.impls["circuitbreaker"] = runner.wrap(async_reject_loop(cb(af)))
    if aiobreaker:
        ab = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(seconds=LONG))
        runner.loop.run_until_complete(async_reject_loop(ab(afail))(2))
        s.impls["aiobreaker"] = runner.wrap(async_reject_loop(ab(af)))
    if purgatory:
        afac = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=LONG)
        name = _name("apurgr")
        runner.loop.run_until_complete(async_reject_loop(afac(name)(afail))(2))
        s.impls["purgatory"] = runner.wrap(async_reject_loop(afac(name)(af)))
    sc.append(s)
    return sc


# ------------------------------------------------------------------------------------------------ timing


TIMERS = {"cpu": time.thread_time, "wall": time.perf_counter}
_timer = TIMERS["cpu"]


def _time(loop: Callable[[int], None], n: int) -> float:
    t0 = _timer()
    loop(n)
    return _timer() - t0


def run_scenario(s: Scenario, repeat: int, min_time: float) -> list[dict[str, Any]]:
    sides = {"direct": s.direct, **s.impls}
    loops = {k: autorange(lambda n, v=v: _time(v, n), min_time) for k, v in sides.items()}  # also the warm-up
    times: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeat):
            rot = order[r % len(order) :] + order[: r % len(order)]
            for k in rot:
                times[k].append(_time(sides[k], loops[k]) / loops[k])
    finally:
        if gc_was:
            gc.enable()
    direct = statistics.median(times["direct"])
    mine = statistics.median(times["ferrolab"]) - direct
    target = TARGETS_NS.get(s.name)
    rows = []
    for k in order:
        per = statistics.median(times[k])
        over = None if k == "direct" else per - direct
        row = {
            "scenario": s.name,
            "impl": k,
            "per_call_ns": per * 1e9,
            "overhead_ns": over * 1e9 if over is not None else None,
            "ratio": (over / mine) if (over is not None and k != "ferrolab" and mine > 0) else None,
            "target_ns": target if k == "ferrolab" else None,
            "meets_target": (mine * 1e9 <= target) if (k == "ferrolab" and target is not None) else None,
            "loops": loops[k],
            "times_ns": [t * 1e9 for t in times[k]],
        }
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ behaviour


def half_open_threads(smoke: bool) -> list[dict[str, Any]]:
    """How many of 8 threads a half-open breaker admits while its trial is in flight.

    The count is read once every caller has been admitted or rejected, or, for a breaker that makes callers wait
    (a lock held around the trial), once ``window`` has passed and at least one was admitted: a loaded machine that
    starts the threads late delays the reading instead of reading 0 (the trials are held until then either way).
    """
    window = 0.05 if smoke else 0.3
    out = []
    impls: dict[str, Callable[[Callable[[], Any]], Any]] = {}
    b = fl_breaker("ho", failure_threshold=1, reset_timeout=0.02, half_open_max_calls=1, metrics=False)
    trip(lambda: b.call(fail))
    impls["ferrolab (half_open_max_calls=1)"] = b.call
    if pybreaker:
        pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0.02)
        trip(lambda: pb.call(fail))
        impls["pybreaker"] = pb.call
    if circuitbreaker:
        cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=0.02)
        trip(lambda: cb.call(fail))
        impls["circuitbreaker"] = cb.call
    if purgatory:
        fac = purgatory.SyncCircuitBreakerFactory(default_threshold=1, default_ttl=0.02)
        name = _name("purgho")
        trip(fac(name)(fail))
        impls["purgatory"] = lambda fn, fac=fac, name=name: fac(name)(fn)()
    time.sleep(0.05)  # every open period is over: the next call is a trial
    for impl, call in impls.items():
        release = threading.Event()
        admitted = [0]
        rejected = [0]
        lock = threading.Lock()

        def trial(release: threading.Event = release, admitted: list[int] = admitted, lock: Any = lock) -> None:
            with lock:
                admitted[0] += 1
            release.wait(5)

        def worker(
            call: Callable[[Callable[[], Any]], Any] = call,
            trial: Callable[[], None] = trial,
            rejected: list[int] = rejected,
            lock: Any = lock,
        ) -> None:
            try:
                call(trial)
            except Exception:  # noqa: BLE001 - a rejection
                with lock:
                    rejected[0] += 1

        ts = [threading.Thread(target=worker) for _ in range(8)]
        start = time.monotonic()
        for t in ts:
            t.start()
        while time.monotonic() - start < 4.0:  # below the trials' own 5 s limit
            with lock:
                resolved, n = admitted[0] + rejected[0], admitted[0]
            if resolved == len(ts) or (n >= 1 and time.monotonic() - start >= window):
                break
            time.sleep(0.001)
        n = admitted[0]
        release.set()
        for t in ts:
            t.join()
        out.append({"kind": "threads", "impl": impl, "callers": 8, "admitted_while_trial_in_flight": n})
    return out


def half_open_tasks(smoke: bool) -> list[dict[str, Any]]:
    """How many of 8 asyncio tasks a half-open breaker admits while its trial is in flight."""
    window = 0.05 if smoke else 0.3

    async def run(call: Callable[..., Any]) -> int:
        release = asyncio.Event()
        admitted = [0]

        async def trial() -> None:
            admitted[0] += 1
            await release.wait()

        async def task() -> None:
            try:
                await call(trial)
            except Exception:  # noqa: BLE001 - a rejection
                pass

        ts = [asyncio.create_task(task()) for _ in range(8)]
        await asyncio.sleep(window)
        n = admitted[0]
        release.set()
        await asyncio.gather(*ts)
        return n

    async def main() -> list[dict[str, Any]]:
        impls: dict[str, Callable[..., Any]] = {}
        b = fl_breaker("aho", failure_threshold=1, reset_timeout=0.02, metrics=False)
        trip(lambda: b.call(fail))
        impls["ferrolab (half_open_max_calls=1)"] = b.acall
        if aiobreaker:
            ab = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(seconds=0.02))
            for _ in range(2):
                try:
                    await ab.call_async(afail)
                except Exception:  # noqa: BLE001 - tripping on purpose
                    pass
            impls["aiobreaker"] = ab.call_async
        if circuitbreaker:
            cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=0.02)
            try:
                await cb.call_async(afail)
            except Exception:  # noqa: BLE001 - tripping on purpose
                pass
            impls["circuitbreaker"] = cb.call_async
        if purgatory:
            fac = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=0.02)
            name = _name("apurgho")
            try:
                await fac(name)(afail)()
            except Exception:  # noqa: BLE001 - tripping on purpose
                pass
            impls["purgatory"] = lambda fn, fac=fac, name=name: fac(name)(fn)()
        await asyncio.sleep(0.05)
        out = []
        for impl, call in impls.items():
            out.append(
                {"kind": "asyncio tasks", "impl": impl, "callers": 8, "admitted_while_trial_in_flight": await run(call)}
            )
        return out

    return asyncio.run(main())


def io() -> None:
    time.sleep(0.001)


def throughput(call: Callable[[], Any], threads: int, seconds: float) -> float:
    counts = [0] * threads
    stop = [0.0]
    barrier = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        barrier.wait()
        n = 0
        while time.perf_counter() < stop[0]:
            call()
            n += 1
        counts[k] = n

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    stop[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    barrier.wait()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def io_throughput(smoke: bool, repeat: int) -> list[dict[str, Any]]:
    seconds = 0.05 if smoke else 0.5
    impls: dict[str, Callable[[], Any]] = {"direct": io}
    impls["ferrolab"] = fl_breaker("io")(io)
    if pybreaker:
        impls["pybreaker"] = pybreaker.CircuitBreaker()(io)
    if circuitbreaker:
        impls["circuitbreaker"] = circuitbreaker.CircuitBreaker()(io)
    if purgatory:
        impls["purgatory"] = purgatory.SyncCircuitBreakerFactory()(_name("purgio"))(io)
    best: dict[str, float] = dict.fromkeys(impls, 0.0)
    for _ in range(max(1, min(repeat, 5))):
        for k, call in impls.items():
            best[k] = max(best[k], throughput(call, 4, seconds))
    return [
        {"impl": k, "threads": 4, "calls_per_s": v, "fraction_of_direct": v / best["direct"]} for k, v in best.items()
    ]


# ------------------------------------------------------------------------------------------------ report


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": cores_available(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ferrolab": getattr(fl, "__version__", "?"),
        "ferrolab_path": str(Path(fl.__file__).parent),
        "peers": {
            "pybreaker": version(pybreaker),
            "circuitbreaker": version(circuitbreaker),
            "aiobreaker": version(aiobreaker),
            "purgatory": version(purgatory),
        },
        "loadavg_start": loadavg(),
    }


def _ns(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = ("scenario", "breaker", "per call ns", "overhead ns", "peer/ferrolab", "ferrolab target")
    lines = []
    last = None
    for r in rows:
        target = ""
        if r["target_ns"] is not None:
            target = f"<= {r['target_ns']:.0f} ns {'ok' if r['meets_target'] else 'MISSED'}"
        lines.append(
            (
                r["scenario"] if r["scenario"] != last else "",
                r["impl"],
                _ns(r["per_call_ns"]),
                _ns(r["overhead_ns"]),
                f"{r['ratio']:.1f}x" if r["ratio"] is not None else "",
                target,
            )
        )
        last = r["scenario"]
    print_table(header, lines, right={2, 3, 4}, rstrip=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="every scenario once, briefly: for CI")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the JSON (default bench-results/bench_breaker.json, "
        "bench-results/bench_breaker_smoke.json with --smoke)",
    )
    p.add_argument("--repeat", type=int, default=None, help="repetitions per side (median; default 15, 1 with --smoke)")
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds one repetition must last at least (default 0.05; 0.001 with --smoke)",
    )
    p.add_argument(
        "--timer", choices=sorted(TIMERS), default="cpu", help="the thread's CPU time (default) or wall-clock time"
    )
    args = p.parse_args(argv)
    global _timer
    _timer = TIMERS[args.timer]
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 15)
    if repeat < 1:
        p.error("--repeat must be >= 1")
    min_time = args.min_time if args.min_time is not None else (0.001 if args.smoke else 0.05)
    out_path = json_path(args.json, "bench_breaker", args.smoke)

    info = machine_info()
    peers = ", ".join(f"{k} {v}" for k, v in info["peers"].items() if v) or "no peers installed"
    print(f"ferrolab {info['ferrolab']} circuit breaker vs {peers}")
    print(
        f"Python {info['python']}, {info['cpu_model']}, {info['cores_available']} cores available; "
        f"{args.timer} time, median of {repeat} repetition(s), each >= {min_time * 1e3:g} ms; "
        f"overhead = guarded - direct per call; "
        f"ratio = peer overhead / ferrolab overhead (> 1: ferrolab cheaper)\n"
    )
    warn_if_loaded(info["loadavg_start"], info["cores_available"])
    sys.stdout.flush()
    t_start = time.perf_counter()
    runner = AsyncRunner()
    rows: list[dict[str, Any]] = []
    try:
        for s in build_scenarios(runner):
            rows.extend(run_scenario(s, repeat, min_time))
            if not args.smoke:
                mine = next(r for r in rows if r["scenario"] == s.name and r["impl"] == "ferrolab")
                print(f"  {s.name:<36} ferrolab +{mine['overhead_ns']:.0f} ns", file=sys.stderr, flush=True)
    finally:
        runner.close()
    half_open = half_open_threads(args.smoke) + half_open_tasks(args.smoke)
    tput = io_throughput(args.smoke, repeat)
    elapsed = time.perf_counter() - t_start
    info["loadavg_end"] = loadavg()

    print_rows(rows)
    print("\nHalf-open with 8 concurrent callers: calls admitted while the trial call is in flight")
    for h in half_open:
        print(f"  {h['kind']:<14} {h['impl']:<34} {h['admitted_while_trial_in_flight']} of {h['callers']}")
    print("\n4 threads doing 1 ms of I/O through a closed breaker (best of the repetitions)")
    for t in tput:
        print(f"  {t['impl']:<16} {t['calls_per_s']:>8,.0f} calls/s  {t['fraction_of_direct']:6.1%} of direct")
    missed = [r for r in rows if r["meets_target"] is False]
    print(
        f"\n{len(rows)} timings in {elapsed:.1f} s; ferrolab targets missed: "
        f"{', '.join(r['scenario'] for r in missed) if missed else 'none'}; load average "
        f"{info['loadavg_start']} -> {info['loadavg_end']}"
    )

    doc = {
        **doc_header("bench_breaker", argv, args.smoke),
        "repeat": repeat,
        "min_time_s": min_time,
        "timer": args.timer,
        "elapsed_s": elapsed,
        "machine": info,
        "ratio": "peer overhead / ferrolab overhead (> 1 means ferrolab is cheaper)",
        "targets_ns": TARGETS_NS,
        "scenarios": sorted({r["scenario"] for r in rows}),
        "rows": rows,
        "half_open": half_open,
        "io_throughput": tput,
    }
    write_json(out_path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
