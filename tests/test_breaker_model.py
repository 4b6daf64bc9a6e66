"""Property test: fl.CircuitBreaker against a small pure-Python reference model of its state machine.

Hypothesis draws a configuration and a sequence of operations -- immediate calls through ``call()``, calls left in
flight and finished later in any order (an ``acall`` awaitable suspended at an ``await``, an ``async with`` block in
a coroutine driven in its own context, a ``with`` block held open by its own thread), clock advances,
``force_open``/``disable``/``reset`` -- and after every operation the breaker's state, admission decisions and
``stats()`` must equal the model's. At the end the calls still in flight are abandoned (the awaitable and the
context dropped, the thread ended inside its block): their permits must come back. The clock is injected, so
nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import itertools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ferrolab as fl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

OUTCOMES = ["success", "failure", "unrecorded", "ignored", "cancelled"]


class Recorded(Exception):
    """Counts as a failure (the breakers below record only this class)."""


class Unrecorded(Exception):
    """Not in ``record``: counts as a success."""


class Ignored(Exception):
    """In ``ignore``: no verdict."""


class Abort(BaseException):  # noqa: N818 - a cancellation, not an error
    """Not an Exception: the call counts as cancelled."""


EXC = {"failure": Recorded, "unrecorded": Unrecorded, "ignored": Ignored, "cancelled": Abort}


# ------------------------------------------------------------------------------------------------ the model


@dataclass
class Ticket:
    gen: int
    kind: str  # closed | trial | pass
    start: float


@dataclass
class Model:
    failure_threshold: int | None
    failure_rate: float | None
    window: int
    window_seconds: float | None
    minimum_calls: int
    slow_call_duration: float | None
    slow_call_rate: float | None
    reset_timeout: float
    half_open_max_calls: int
    success_threshold: int
    state: str = "closed"
    gen: int = 0
    consecutive: int = 0
    taken: int = 0
    succ: int = 0
    opened: int = 0
    open_until: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ["success", "failure", "rejected", "ignored", "slow"], 0))
    transitions: dict[str, int] = field(default_factory=dict)
    ring: deque[tuple[bool, bool]] = field(default_factory=deque)
    records: list[tuple[int, bool, bool]] = field(default_factory=list)  # (epoch, failure, slow)
    last_epoch: int | None = None

    def __post_init__(self) -> None:
        self.ring = deque(maxlen=self.window)
        if self.window_seconds is not None:
            n = min(max(math.ceil(self.window_seconds), 10), 3600)
            self.n_buckets = n
            self.width = self.window_seconds / n

    @property
    def uses_window(self) -> bool:
        return self.failure_rate is not None or self.slow_call_rate is not None

    def move(self, to: str) -> None:
        key = f"{self.state}->{to}"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self.state = to
        self.gen += 1
        self.taken = self.succ = 0

    # the window ---------------------------------------------------------------------------------------------

    def epoch(self, t: float) -> int:
        e = math.floor(t / self.width)
        self.last_epoch = e if self.last_epoch is None else max(self.last_epoch, e)
        return self.last_epoch

    def window_counts(self, t: float) -> tuple[int, int, int]:
        if self.window_seconds is None:
            items = list(self.ring)
        else:
            e = self.epoch(t)
            items = [(f, s) for (ep, f, s) in self.records if ep > e - self.n_buckets]
        return len(items), sum(f for f, _ in items), sum(s for _, s in items)

    def record(self, failure: bool, slow: bool, t: float) -> tuple[int, int, int]:
        if self.window_seconds is None:
            self.ring.append((failure, slow))
        else:
            self.records.append((self.epoch(t), failure, slow))
        return self.window_counts(t)

    def clear(self) -> None:
        self.consecutive = 0
        self.opened = 0
        self.ring.clear()
        self.records.clear()

    def min_calls(self) -> int:
        if self.window_seconds is not None:
            return self.minimum_calls
        return min(self.minimum_calls, self.window)

    # the state machine --------------------------------------------------------------------------------------

    def acquire(self, t: float) -> Ticket | None:
        if self.state in ("closed", "disabled"):
            return Ticket(self.gen, "closed" if self.state == "closed" else "pass", t)
        if self.state == "forced_open":
            self.counts["rejected"] += 1
            return None
        if self.state == "open":
            if t < self.open_until:
                self.counts["rejected"] += 1
                return None
            self.move("half_open")
        if self.taken >= self.half_open_max_calls:
            self.counts["rejected"] += 1
            return None
        self.taken += 1
        return Ticket(self.gen, "trial", t)

    def trip(self, t: float) -> None:
        self.move("open")
        self.opened += 1
        self.open_until = t + self.reset_timeout

    def complete(self, tk: Ticket, outcome: str, t: float) -> None:
        kind = {"unrecorded": "success", "cancelled": "ignored"}.get(outcome, outcome)
        verdict = kind in ("success", "failure")
        slow = verdict and self.slow_call_duration is not None and (t - tk.start) > self.slow_call_duration
        self.counts[kind] += 1
        if slow:
            self.counts["slow"] += 1
        if tk.kind == "pass" or tk.gen != self.gen:
            return
        if tk.kind == "closed":
            if not verdict:
                return
            trip = False
            if kind == "failure":
                self.consecutive += 1
                trip = self.failure_threshold is not None and self.consecutive >= self.failure_threshold
            else:
                self.consecutive = 0
            if self.uses_window:
                calls, fails, slows = self.record(kind == "failure", slow, t)
                if calls and calls >= self.min_calls():
                    if self.failure_rate is not None and fails / calls >= self.failure_rate:
                        trip = True
                    if self.slow_call_rate is not None and slows / calls >= self.slow_call_rate:
                        trip = True
            if trip:
                self.trip(t)
            return
        # a trial
        if not verdict:
            self.taken = max(0, self.taken - 1)
        elif kind == "failure" or (slow and self.slow_call_rate is not None):
            self.trip(t)
        else:
            self.succ += 1
            if self.succ >= self.success_threshold:
                self.clear()
                self.move("closed")

    def force(self, to: str) -> None:
        if to == "closed":
            self.clear()
            if self.state == "closed":
                self.gen += 1
                return
        elif self.state == to:
            return
        self.move(to)

    def stats(self, t: float) -> dict[str, Any]:
        s: dict[str, Any] = {"state": self.state, **self.counts, "consecutive_failures": self.consecutive}
        if self.uses_window:
            calls, fails, slows = self.window_counts(t)
            s.update(window_calls=calls, window_failures=fails, window_slow=slows,
                     failure_rate=fails / calls if calls else None, slow_call_rate=slows / calls if calls else None)
        else:
            s.update(window_calls=None, window_failures=None, window_slow=None, failure_rate=None,
                     slow_call_rate=None)
        s["open_count"] = self.opened
        s["retry_after"] = max(0.0, self.open_until - t) if self.state == "open" else None
        s["half_open_calls"] = self.taken if self.state == "half_open" else 0
        s["half_open_successes"] = self.succ if self.state == "half_open" else 0
        s["transitions"] = dict(self.transitions)
        return s


# ------------------------------------------------------------------------------------------------ the harness


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Suspend:
    """An awaitable that suspends its coroutine once."""

    def __await__(self):  # noqa: ANN204
        yield "suspended"


class Pending:
    """A call in flight: started (admitted or rejected), finished later with an outcome, or abandoned."""

    def __init__(self, br: fl.CircuitBreaker, via: str, body: Callable[[dict[str, Any]], str]) -> None:
        self.br, self.via, self.body = br, via, body
        self.cell: dict[str, Any] = {"outcome": "success", "duration": 0.0}
        self.ticket: Ticket | None = None
        self.handle: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> bool:
        """True when admitted."""
        br, cell, body = self.br, self.cell, self.body
        if self.via == "await":

            async def job() -> str:
                await Suspend()
                return body(cell)

            aw = br.acall(job)
            try:
                assert aw.send(None) == "suspended"
            except fl.CircuitOpenError:
                return False
            self.handle = aw
            return True
        if self.via == "async with":

            async def block() -> str:
                async with br:
                    await Suspend()
                    return body(cell)

            ctx = contextvars.copy_context()
            coro = block()
            try:
                assert ctx.run(coro.send, None) == "suspended"
            except fl.CircuitOpenError:
                return False
            self.handle = (ctx, coro)
            return True
        # a with block held open by its own thread; the steps run one at a time
        admitted: list[bool] = []
        go, started = threading.Event(), threading.Event()
        finish: dict[str, Any] = {}

        def worker() -> None:
            try:
                br.__enter__()
            except fl.CircuitOpenError:
                admitted.append(False)
                started.set()
                return
            admitted.append(True)
            started.set()
            go.wait()
            if finish.get("abandon"):
                return  # the thread ends inside the block
            exc = None
            try:
                body(cell)
            except BaseException as e:  # noqa: BLE001 - handed to __exit__ like a with statement does
                exc = e
            finish["result"] = br.__exit__(type(exc) if exc else None, exc, None)

        self.thread = threading.Thread(target=worker)
        self.thread.start()
        started.wait()
        self.handle = (go, finish)
        return admitted[0]

    def finish(self, outcome: str, duration: float, throw: bool) -> None:
        self.cell.update(outcome=outcome, duration=duration)
        errors = (StopIteration, Recorded, Unrecorded, Ignored, Abort)
        if self.via == "await":
            if outcome == "cancelled" and throw:
                # cancel the other way: throw a CancelledError into the suspended call
                with pytest.raises(asyncio.CancelledError):
                    self.handle.throw(asyncio.CancelledError)
            else:
                with pytest.raises(errors):
                    self.handle.send(None)
        elif self.via == "async with":
            ctx, coro = self.handle
            if outcome == "cancelled" and throw:
                with pytest.raises(asyncio.CancelledError):
                    ctx.run(coro.throw, asyncio.CancelledError)
            else:
                with pytest.raises(errors):
                    ctx.run(coro.send, None)
        else:
            go, result = self.handle
            go.set()
            assert self.thread is not None
            self.thread.join()
            assert result["result"] is False
        self.handle = None

    def abandon(self) -> None:
        if self.via == "with":
            go, result = self.handle
            result["abandon"] = True
            go.set()
            assert self.thread is not None
            self.thread.join()
            # join() returns before the OS thread runs its thread-local destructors (which give the permit back)
            task = f"/proc/self/task/{self.thread.native_id}"
            for _ in range(10_000):
                if not os.path.exists(task):
                    break
                time.sleep(0.001)
        elif self.via == "async with":
            ctx, coro = self.handle
            # closing the coroutine runs __aexit__(GeneratorExit) in the block's context: the permit goes back
            ctx.run(coro.close)
        self.handle = None


_names = itertools.count()


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    hom = draw(st.integers(1, 3))
    rate = draw(st.sampled_from([None, None, 0.5, 1.0, 0.25]))
    slow_dur = draw(st.sampled_from([None, 0.5, 1.0]))
    slow_rate = draw(st.sampled_from([None, 0.5, 1.0])) if slow_dur is not None else None
    return {
        "failure_threshold": draw(st.sampled_from([None, 1, 2, 3, 5])),
        "failure_rate": rate,
        "window": draw(st.integers(1, 6)),
        "window_seconds": draw(st.sampled_from([None, None, 2.0, 5.0, 12.0])),
        "minimum_calls": draw(st.integers(1, 5)),
        "slow_call_duration": slow_dur,
        "slow_call_rate": slow_rate,
        "reset_timeout": draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        "half_open_max_calls": hom,
        "success_threshold": draw(st.integers(1, hom)),
    }


ops = st.one_of(
    st.tuples(st.just("call"), st.sampled_from(OUTCOMES), st.sampled_from([0.0, 0.25, 0.75, 1.5])),
    st.tuples(st.just("start"), st.sampled_from(["await", "async with", "with"])),
    st.tuples(st.just("finish"), st.integers(0, 7), st.sampled_from(OUTCOMES), st.sampled_from([0.0, 0.5, 2.0])),
    st.tuples(st.just("advance"), st.sampled_from([0.25, 0.5, 1.0, 3.0, 7.0])),
    st.tuples(st.just("force"), st.sampled_from(["forced_open", "disabled", "closed"])),
)


def check(br: fl.CircuitBreaker, model: Model, clock: Clock, where: str) -> None:
    got = br.stats()
    want = model.stats(clock.t)
    assert got.pop("name") == br.name
    for k in ("retry_after", "failure_rate", "slow_call_rate"):
        g, w = got.pop(k), want.pop(k)
        assert (g is None) == (w is None) and (g is None or math.isclose(g, w, abs_tol=1e-9)), f"{where}: {k} {g} {w}"
    assert got == want, where
    assert br.state == model.state, where


@settings(max_examples=250)
@given(cfg=configs(), steps=st.lists(ops, min_size=1, max_size=40))
def test_breaker_matches_the_reference_model(cfg: dict[str, Any], steps: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    br = fl.CircuitBreaker(
        f"model_{next(_names)}", record=Recorded, ignore=Ignored, clock=clock, metrics=True, **cfg
    )
    model = Model(**cfg)
    pending: list[Pending] = []
    started = p = None

    def body(cell: dict[str, Any]) -> str:
        clock.t += cell["duration"]
        exc = EXC.get(cell["outcome"])
        if exc is not None:
            raise exc("boom")
        return "ok"

    for i, op in enumerate(steps):
        where = f"step {i} {op} cfg={cfg}"
        kind = op[0]
        if kind == "call":
            _, outcome, dur = op
            tk = model.acquire(clock.t)
            cell = {"outcome": outcome, "duration": dur}
            try:
                r = br.call(body, cell)
            except fl.CircuitOpenError:
                assert tk is None, where
            except (Recorded, Unrecorded, Ignored, Abort) as e:
                assert tk is not None and type(e) is EXC[outcome], where
                model.complete(tk, outcome, clock.t)
            else:
                assert tk is not None and r == "ok" and outcome == "success", where
                model.complete(tk, outcome, clock.t)
        elif kind == "start":
            tk = model.acquire(clock.t)
            started = Pending(br, op[1], body)
            assert started.start() == (tk is not None), where
            if tk is not None:
                started.ticket = tk
                pending.append(started)
            started = None
        elif kind == "finish":
            if not pending:
                continue
            p = pending.pop(op[1] % len(pending))
            if op[2] == "cancelled" and op[1] % 2 and p.via != "with":
                clock.t += op[3]  # a throw() runs no body: the time passes here
            p.finish(op[2], op[3], throw=bool(op[1] % 2))
            assert p.ticket is not None
            model.complete(p.ticket, op[2], clock.t)
            p = None
        elif kind == "advance":
            clock.t += op[1]
        else:
            {"forced_open": br.force_open, "disabled": br.disable, "closed": br.reset}[op[1]]()
            model.force(op[1])
        check(br, model, clock, where)
    # calls still in flight are abandoned: their permits go back like a cancellation's
    for left in pending:
        left.abandon()
        assert left.ticket is not None
        model.complete(left.ticket, "cancelled", clock.t)
    pending.clear()
    left = started = p = None  # noqa: F841 - no local may keep one alive
    gc.collect()
    check(br, model, clock, "after abandoning the calls in flight")
