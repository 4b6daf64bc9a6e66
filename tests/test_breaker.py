"""fl.CircuitBreaker: table-driven state-machine tests on an injected clock, the decorator, call/acall, with and
async with, CircuitOpenError, listeners, stats, metrics and argument errors."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import math
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import ferrolab as fl
import pytest

_n = [0]


def unique(prefix: str = "t") -> str:
    _n[0] += 1
    return f"test_{prefix}_{_n[0]}"


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("down")


def ok() -> str:
    return "ok"


def wait_until_thread_gone(t: threading.Thread) -> None:
    """join() returns before the OS thread has run its thread-local destructors: wait for those too (Linux)."""
    task = f"/proc/self/task/{t.native_id}"
    for _ in range(10_000):
        if not os.path.exists(task):
            return
        time.sleep(0.001)


def make(clock: Clock | None = None, **kw: Any) -> fl.CircuitBreaker:
    kw.setdefault("metrics", True)
    return fl.CircuitBreaker(unique(), clock=clock or Clock(), **kw)


def run(br: fl.CircuitBreaker, fn: Callable[[], Any]) -> str:
    """'ok', 'fail' (the call raised) or 'rejected'."""
    try:
        br.call(fn)
    except fl.CircuitOpenError:
        return "rejected"
    except Exception:
        return "fail"
    return "ok"


# ------------------------------------------------------------------------------------- the state machine (table)

# Each step: (advance the clock by, call: "ok" | "fail" | None for no call, expected result, expected state after)
TABLE: list[tuple[str, dict[str, Any], list[tuple[float, str | None, str | None, str]]]] = [
    (
        "consecutive failures trip; a success in between resets the count",
        {"failure_threshold": 3, "reset_timeout": 10},
        [
            (0, "fail", "fail", "closed"),
            (0, "fail", "fail", "closed"),
            (0, "ok", "ok", "closed"),
            (0, "fail", "fail", "closed"),
            (0, "fail", "fail", "closed"),
            (1, "fail", "fail", "open"),
            (5, "ok", "rejected", "open"),
            (4.99, "ok", "rejected", "open"),
            (0.01, "ok", "ok", "closed"),
        ],
    ),
    (
        "a failed trial reopens for a new period",
        {"failure_threshold": 1, "reset_timeout": 5},
        [
            (0, "fail", "fail", "open"),
            (5, "fail", "fail", "open"),
            (4, "ok", "rejected", "open"),
            (1, "ok", "ok", "closed"),
        ],
    ),
    (
        "failure_threshold=None: only the failure rate trips, once minimum_calls were seen",
        {"failure_threshold": None, "failure_rate": 0.5, "window": 4, "minimum_calls": 4},
        [
            (0, "fail", "fail", "closed"),
            (0, "fail", "fail", "closed"),
            (0, "fail", "fail", "closed"),
            (0, "ok", "ok", "open"),
        ],
    ),
    (
        "the count window forgets old outcomes",
        {"failure_threshold": None, "failure_rate": 0.75, "window": 4, "minimum_calls": 2},
        [
            (0, "fail", "fail", "closed"),
            (0, "ok", "ok", "closed"),
            (0, "ok", "ok", "closed"),
            (0, "ok", "ok", "closed"),
            (0, "ok", "ok", "closed"),
            (0, "fail", "fail", "closed"),
            (0, "fail", "fail", "closed"),
            (0, "fail", "fail", "open"),
        ],
    ),
    (
        "time window: failures older than window_seconds are forgotten",
        {"failure_threshold": None, "failure_rate": 0.5, "window_seconds": 10, "minimum_calls": 3},
        [
            (0, "fail", "fail", "closed"),
            (0.5, "fail", "fail", "closed"),
            (20, "ok", "ok", "closed"),
            (0.5, "ok", "ok", "closed"),
            (0.5, "fail", "fail", "closed"),
            (1, "fail", "fail", "open"),
        ],
    ),
    (
        "rate and consecutive rules combine",
        {"failure_threshold": 2, "failure_rate": 0.9, "window": 10, "minimum_calls": 10},
        [
            (0, "ok", "ok", "closed"),
            (0, "fail", "fail", "closed"),
            (0, "fail", "fail", "open"),
        ],
    ),
    (
        "two trials needed to close; the breaker admits exactly two",
        {"failure_threshold": 1, "reset_timeout": 1, "half_open_max_calls": 2, "success_threshold": 2},
        [
            (0, "fail", "fail", "open"),
            (1, "ok", "ok", "half_open"),
            (0, "ok", "ok", "closed"),
        ],
    ),
    (
        "reset_timeout=0: the next call is a trial",
        {"failure_threshold": 1, "reset_timeout": 0},
        [
            (0, "fail", "fail", "open"),
            (0, "ok", "ok", "closed"),
        ],
    ),
]


@pytest.mark.parametrize("name,kw,steps", TABLE, ids=[t[0] for t in TABLE])
def test_state_machine_table(name: str, kw: dict[str, Any], steps: list[Any]) -> None:
    clock = Clock()
    br = make(clock, **kw)
    for i, (dt, call, want, state) in enumerate(steps):
        clock.t += dt
        if call is not None:
            got = run(br, ok if call == "ok" else boom)
            assert got == want, f"{name}: step {i}"
        assert br.state == state, f"{name}: step {i}"


def test_slow_calls_count_and_trip() -> None:
    clock = Clock()

    def slow(d: float) -> Callable[[], str]:
        def f() -> str:
            clock.t += d
            return "ok"

        return f

    br = make(clock, failure_threshold=None, slow_call_duration=1.0, slow_call_rate=0.5, window=10, minimum_calls=4)
    for d in (0.5, 1.0, 1.5):
        assert run(br, slow(d)) == "ok"
    s = br.stats()
    assert (s["slow"], s["success"], s["window_slow"], br.state) == (1, 3, 1, "closed")
    assert run(br, slow(2.0)) == "ok"  # 2 of 4 slow
    assert br.state == "open"
    assert br.stats()["slow_call_rate"] == 0.5


def test_slow_call_duration_alone_only_counts() -> None:
    clock = Clock()

    def slow() -> None:
        clock.t += 5

    br = make(clock, slow_call_duration=1.0)
    for _ in range(20):
        br.call(slow)
    s = br.stats()
    assert (s["slow"], s["success"], br.state, s["window_calls"]) == (20, 20, "closed", None)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=1, max_reset_timeout=6)
    run(br, boom)
    for k in range(1, 7):
        full = min(2.0 ** (k - 1), 6.0)
        r = br.stats()["retry_after"]
        assert 0.75 * full <= r <= full, (k, r)
        clock.t += r + 1e-6
        assert run(br, boom) == "fail"  # the trial fails: open again, for longer
    clock.t += 10
    assert run(br, ok) == "ok" and br.state == "closed"
    run(br, boom)
    assert 0.75 <= br.stats()["retry_after"] <= 1.0  # closing reset the exponent


def test_jitter_spreads_the_open_periods() -> None:
    periods = set()
    for _ in range(20):
        clock = Clock()
        br = make(clock, failure_threshold=1, reset_timeout=10, max_reset_timeout=100)
        run(br, boom)
        periods.add(round(br.stats()["retry_after"], 6))
    assert len(periods) > 10
    assert all(7.5 <= p <= 10 for p in periods)


# ------------------------------------------------------------------------------------- outcomes of exceptions


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


class Abort(BaseException):  # noqa: N818
    pass


@pytest.mark.parametrize(
    "exc,outcome",
    [
        (Transient("x"), "failure"),
        (Fatal("x"), "success"),  # not recorded: counts as a success (resets the consecutive count)
        (KeyError("x"), "ignored"),
        (Abort(), "ignored"),  # not an Exception: a cancellation
        (KeyboardInterrupt(), "ignored"),
    ],
)
def test_record_and_ignore(exc: BaseException, outcome: str) -> None:
    br = make(record=(Transient, ConnectionError), ignore=KeyError, failure_threshold=2)

    def f() -> None:
        raise exc

    with pytest.raises(Transient):
        br.call(boom_transient)
    with pytest.raises(type(exc)):
        br.call(f)
    s = br.stats()
    assert s[outcome] == (2 if outcome == "failure" else 1)
    assert s["consecutive_failures"] == {"failure": 2, "success": 0, "ignored": 1}[outcome]
    assert br.state == ("open" if outcome == "failure" else "closed")


def boom_transient() -> None:
    raise Transient("t")


def test_ignored_and_cancelled_trials_give_the_permit_back() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=1, ignore=KeyError)
    run(br, boom)
    clock.t = 1

    def ignored() -> None:
        raise KeyError("k")

    def cancelled() -> None:
        raise Abort

    with pytest.raises(KeyError):
        br.call(ignored)
    with pytest.raises(Abort):
        br.call(cancelled)
    assert br.state == "half_open"
    assert br.stats()["half_open_calls"] == 0
    assert br.call(ok) == "ok" and br.state == "closed"


# ------------------------------------------------------------------------------------- CircuitOpenError


def test_circuit_open_error_carries_name_retry_after_and_the_failure() -> None:
    clock = Clock(100)
    br = make(clock, failure_threshold=1, reset_timeout=30)
    with pytest.raises(Boom) as first:
        br.call(boom)
    clock.t = 110
    with pytest.raises(fl.CircuitOpenError) as ei:
        br.call(ok)
    e = ei.value
    assert isinstance(e, fl.FerrolabError)
    assert e.name == br.name
    assert e.retry_after == 20.0
    assert e.last_failure is first.value is br.last_failure
    assert e.__cause__ is first.value
    assert e.last_failure.__traceback__ is not None  # where it failed stays inspectable
    assert str(e) == f"circuit breaker '{br.name}' is open; retry after 20.000 s"
    again = pickle.loads(pickle.dumps(e))
    assert (type(again), again.name, again.retry_after, str(again)) == (fl.CircuitOpenError, br.name, 20.0, str(e))
    assert type(again.last_failure) is Boom


def test_forced_open_and_half_open_rejections() -> None:
    clock = Clock()
    br = make(clock)
    br.force_open()
    with pytest.raises(fl.CircuitOpenError) as ei:
        br.call(ok)
    assert ei.value.retry_after is None and ei.value.last_failure is None and ei.value.__cause__ is None
    assert "forced open" in str(ei.value)

    br2 = make(clock, failure_threshold=1, reset_timeout=0)
    run(br2, boom)
    inside: list[str] = []

    def trial() -> None:
        inside.append(run(br2, ok))  # a second call while the only trial runs

    br2.call(trial)
    assert inside == ["rejected"]
    assert br2.state == "closed"


def test_user_made_circuit_open_error_has_none_attributes() -> None:
    e = fl.CircuitOpenError("custom")
    assert (str(e), e.name, e.retry_after, e.last_failure) == ("custom", None, None, None)
    assert str(fl.CircuitOpenError()) == ""


def test_fallback_gets_the_call_arguments() -> None:
    seen: list[Any] = []

    def fallback(*a: Any, **k: Any) -> str:
        seen.append((a, k))
        return "fallback"

    br = make(fallback=fallback)
    br.force_open()

    @br
    def f(x: int, *, y: int = 0) -> str:
        return "real"

    assert f(1, y=2) == "fallback"
    assert br.call(f.__wrapped__, 3) == "fallback"
    assert seen == [((1,), {"y": 2}), ((3,), {})]
    br.reset()
    assert f(1) == "real"


# ------------------------------------------------------------------------------------- the decorator


def test_decorated_function_is_native_and_keeps_its_identity() -> None:
    br = make()

    @br
    def add(a: int, b: int = 1, *, c: int = 0) -> int:
        """Adds."""
        return a + b + c

    assert type(add) is fl.breaker.BreakerFunction
    assert add(1) == 2 and add(1, 2, c=3) == 6 and add(a=1, b=1) == 2
    assert add.__name__ == "add" and add.__doc__ == "Adds." and add.__wrapped__(1) == 2
    assert add.__qualname__.endswith("add") and add.__module__ == __name__
    assert add.breaker is br
    assert str(inspect.signature(add)) == "(a: 'int', b: 'int' = 1, *, c: 'int' = 0) -> 'int'"
    assert repr(add).startswith(f"<circuit breaker '{br.name}' guarding <function")
    add.custom = 1  # a __dict__ like a function's
    assert add.custom == 1
    assert weakref.ref(add)() is add
    with pytest.raises(TypeError):
        type(add)()


def test_call_forwards_bound_methods_and_splats() -> None:
    br = make()

    class Acc:
        def __init__(self) -> None:
            self.total = 0

        def add(self, k: int, *, times: int = 1) -> int:
            self.total += k * times
            return self.total

    a = Acc()
    assert br.call(a.add, 2) == 2
    assert br.call(Acc.add, a, 3, times=2) == 8
    args, kwargs = (1,), {"times": 3}
    assert br.call(a.add, *args, **kwargs) == 11
    g = br(a.add)
    assert g(1) == 12 and g(k=1, times=2) == 14 and g(*args, **kwargs) == 17
    assert br.stats()["success"] == 6


def test_keywords_and_fallbacks_in_a_fresh_interpreter(tmp_path: Any) -> None:
    """Positional and keyword arguments reach the function, acall's coroutine and the fallback (a fresh process)."""
    import subprocess

    code = """
import asyncio, ferrolab as fl
b = fl.CircuitBreaker("novc", failure_threshold=1, fallback=lambda *a, **k: ("fb", a, k))
f = b(lambda x, *, y=0: x + y)
assert f(1) == 1 and f(1, y=2) == 3 and b.call(f.__wrapped__, 2, y=3) == 5
async def co(x, y=0):
    return x * y
assert asyncio.run(b.acall(co, 2, y=4)) == 8
try:
    b.call(lambda: 1 / 0)
except ZeroDivisionError:
    pass
assert f(1, y=2) == ("fb", (1,), {"y": 2})
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_decorated_methods_bind() -> None:
    br = make()

    class Service:
        def __init__(self) -> None:
            self.n = 0

        @br
        def hit(self, k: int = 1) -> int:
            self.n += k
            return self.n

    s = Service()
    assert s.hit() == 1 and s.hit(k=2) == 3 and Service.hit(s) == 4
    assert Service.__dict__["hit"].__get__(None, Service) is Service.__dict__["hit"]
    assert br.stats()["success"] == 3


def module_level(x: int) -> int:
    return x + 1


guarded_module_level = fl.CircuitBreaker("test_pickled_breaker", metrics=False)(module_level)
guarded_module_level.__qualname__ = "guarded_module_level"


def test_decorated_function_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(guarded_module_level)) is guarded_module_level


def test_decorator_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        make()(42)


def test_stacked_breakers_both_guard() -> None:
    inner, outer = make(), make()

    @outer
    @inner
    def f() -> str:
        return "x"

    async def g() -> str:
        return "y"

    ag = outer(inner(g))
    assert f() == "x"
    assert asyncio.run(ag()) == "y"
    assert inner.stats()["success"] == outer.stats()["success"] == 2


def test_call_passes_keywords_and_rejects_a_missing_function() -> None:
    br = make()
    assert br.call(lambda a, *, b: (a, b), 1, b=2) == (1, 2)
    assert br.call(dict, x=1) == {"x": 1}
    with pytest.raises(TypeError, match="call\\(\\) missing"):
        br.call()


# ------------------------------------------------------------------------------------- with / async with


def test_with_rejects_when_open_and_records() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=2)
    with br as b:
        assert b is br
    for _ in range(2):
        with pytest.raises(Boom), br:
            raise Boom("x")
    assert br.state == "open"
    entered = False
    with pytest.raises(fl.CircuitOpenError), br:
        entered = True
    assert not entered
    s = br.stats()
    assert (s["success"], s["failure"], s["rejected"]) == (1, 2, 1)


def test_with_nests_and_is_per_thread() -> None:
    br = make()
    with br, br:
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(200):
                    with br:
                        pass
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
    assert br.stats()["success"] == 802


def test_exit_without_enter_is_an_error() -> None:
    br = make()
    with pytest.raises(RuntimeError, match="without a matching __enter__"):
        br.__exit__(None, None, None)
    assert br.__exit__(GeneratorExit, GeneratorExit(), None) is False  # a coroutine closed by the collector


def test_a_thread_ending_inside_a_block_gives_the_permit_back() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=0)
    run(br, boom)
    t = threading.Thread(target=br.__enter__)  # the only trial; the thread ends without __exit__
    t.start()
    t.join()
    wait_until_thread_gone(t)
    assert br.stats()["half_open_calls"] == 0
    assert run(br, ok) == "ok" and br.state == "closed"


def test_a_task_ending_inside_a_block_gives_the_permit_back() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=0)
    run(br, boom)

    async def leaves_the_block_open() -> None:
        br.__enter__()  # in a coroutine: the permit is kept in the task's context, which ends with the task

    async def main() -> None:
        await asyncio.create_task(leaves_the_block_open())
        gc.collect()

    asyncio.run(main())
    assert br.stats()["half_open_calls"] == 0
    assert run(br, ok) == "ok" and br.state == "closed"


def test_a_coroutine_collected_inside_async_with_gives_the_permit_back() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=0)
    run(br, boom)

    class Once:
        def __await__(self):  # noqa: ANN204
            yield

    async def block() -> None:
        async with br:
            await Once()

    ctx = contextvars.copy_context()
    coro = block()
    ctx.run(coro.send, None)  # inside the block, holding the only permit
    assert run(br, ok) == "rejected"
    del coro  # closed by the collector outside its context: no error, and ...
    gc.collect()
    del ctx  # ... the permit goes back with the context
    gc.collect()
    assert run(br, ok) == "ok" and br.state == "closed"


def test_with_in_a_coroutine_keeps_permits_per_task() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=0, half_open_max_calls=2, success_threshold=2)
    run(br, boom)

    async def task(fail: bool, gate: asyncio.Event) -> str:
        try:
            with br:  # a plain with whose block awaits: interleaved with the other task's
                await gate.wait()
                if fail:
                    raise Boom("x")
        except Boom:
            return "fail"
        return "ok"

    async def main() -> list[str]:
        gate = asyncio.Event()
        a = asyncio.create_task(task(False, gate))
        b = asyncio.create_task(task(True, gate))
        await asyncio.sleep(0)
        gate.set()
        return [await b, await a]

    assert asyncio.run(main()) == ["fail", "ok"]
    assert br.state == "open"  # the failed trial reopened it; the other one's success came too late
    s = br.stats()
    assert (s["success"], s["failure"]) == (1, 2)


def test_async_with() -> None:
    br = make(failure_threshold=1)

    async def main() -> list[str]:
        out = []
        async with br as b:
            assert b is br
            await asyncio.sleep(0)
            out.append("in")
        try:
            async with br:
                raise Boom("x")
        except Boom:
            out.append("boom")
        try:
            async with br:
                out.append("never")
        except fl.CircuitOpenError:
            out.append("rejected")
        return out

    assert asyncio.run(main()) == ["in", "boom", "rejected"]


def test_async_with_blocks_of_concurrent_tasks_keep_their_own_permits() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=0, half_open_max_calls=2, success_threshold=2)
    run(br, boom)

    async def task(i: int, gate: asyncio.Event) -> str:
        try:
            async with br:
                await gate.wait()
                if i == 1:
                    raise Boom("trial failed")
            return "ok"
        except fl.CircuitOpenError:
            return "rejected"
        except Boom:
            return "fail"

    async def main() -> list[str]:
        gate = asyncio.Event()
        ts = [asyncio.create_task(task(i, gate)) for i in range(4)]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*ts)

    assert asyncio.run(main()) == ["ok", "fail", "rejected", "rejected"]
    assert br.state == "open"


# ------------------------------------------------------------------------------------- asyncio


def test_async_decorator_and_acall() -> None:
    br = make()

    @br
    async def fetch(x: int, *, y: int = 0) -> int:
        await asyncio.sleep(0)
        return x + y

    assert inspect.iscoroutinefunction(fetch) or sys.version_info < (3, 12)
    assert asyncio.iscoroutinefunction(fetch) if sys.version_info < (3, 14) else True

    async def main() -> list[int]:
        a = await fetch(1, y=2)
        b = await br.acall(fetch.__wrapped__, 3)
        c = await asyncio.gather(*(fetch(i) for i in range(5)))
        return [a, b, *c]

    assert asyncio.run(main()) == [3, 3, 0, 1, 2, 3, 4]
    assert br.stats()["success"] == 7


def test_async_failures_and_rejections() -> None:
    br = make(failure_threshold=2)

    async def bad() -> None:
        await asyncio.sleep(0)
        raise Boom("x")

    async def main() -> list[str]:
        out = []
        for _ in range(3):
            try:
                await br.acall(bad)
            except Boom:
                out.append("fail")
            except fl.CircuitOpenError as e:
                out.append(f"rejected {type(e.last_failure).__name__}")
        return out

    assert asyncio.run(main()) == ["fail", "fail", "rejected Boom"]


def test_a_cancelled_trial_gives_its_permit_back() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=0)
    run(br, boom)

    async def slow() -> str:
        await asyncio.sleep(10)
        return "never"

    async def fast() -> str:
        return "fast"

    async def main() -> list[str]:
        t = asyncio.create_task(br.acall(slow))
        await asyncio.sleep(0)  # the trial is in flight
        assert br.state == "half_open" and br.stats()["half_open_calls"] == 1
        try:
            await br.acall(fast)
        except fl.CircuitOpenError:
            pass
        else:
            raise AssertionError("a second trial was admitted")
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert br.stats()["half_open_calls"] == 0
        return [await br.acall(fast), br.state]

    assert asyncio.run(main()) == ["fast", "closed"]
    assert br.stats()["ignored"] == 1


def test_an_abandoned_awaitable_gives_its_permit_back() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=0)
    run(br, boom)

    class Once:
        def __await__(self):  # noqa: ANN204
            yield

    async def pending() -> None:
        await Once()

    aw = br.acall(pending)
    aw.send(None)  # started: holds the only permit
    assert run(br, ok) == "rejected"
    del aw
    gc.collect()
    assert run(br, ok) == "ok"


RETURNED = [1, None, (), ("a", "tuple"), (None,), [1, 2], ValueError("returned, not raised"), StopIteration(7)]


@pytest.mark.parametrize("value", RETURNED, ids=[repr(v) for v in RETURNED])
def test_an_awaited_guarded_call_returns_its_value_unchanged(value: Any) -> None:
    # a tuple, an exception or a StopIteration returned by the coroutine must come back as that object, as from an
    # unguarded coroutine (StopIteration's argument rules would otherwise unpack or raise it)
    br = make()

    async def plain() -> Any:
        return value

    give = br(plain)

    async def main() -> tuple[Any, Any]:
        return await give(), await br.acall(plain)

    got, via_acall = asyncio.run(main())
    assert got is value and via_acall is value
    with pytest.raises(StopIteration) as si:
        next(give().__await__())
    assert si.value.value is value
    assert br.stats()["success"] == 3


def test_every_breaker_call_is_tracked_by_the_garbage_collector() -> None:
    # a call object made after others were freed must still be visible to the cyclic GC (an object reused from a
    # free list without being tracked would keep a cycle through it, and its permit, alive forever)
    br = make()

    async def ok() -> int:
        return 1

    for _ in range(100):
        call = br.acall(ok)
        assert gc.is_tracked(call)
        call.close()
        del call

    class Holder:
        pass

    async def take(h: Holder) -> Holder:
        return h

    # a cycle through the call: holder -> call -> its argument tuple -> holder
    h = Holder()
    h.call = br.acall(take, h)  # type: ignore[attr-defined]
    ref = weakref.ref(h)
    del h
    with pytest.warns(RuntimeWarning, match="never awaited"):
        gc.collect()
    assert ref() is None


def test_a_completed_call_object_is_reused_only_when_nobody_holds_it() -> None:
    # the breaker keeps its last completed call object and makes the next call out of it, unless the caller
    # still holds it: a kept awaitable stays completed, and every call still gets its own arguments and result
    br = make()

    @br
    async def echo(x: Any) -> Any:
        return x

    async def main() -> None:
        for i in range(5):
            assert await echo(i) == i
        kept = echo("kept")
        assert await kept == "kept"
        other = echo("other")
        assert other is not kept
        with pytest.raises(RuntimeError, match="already awaited"):
            await kept
        assert repr(kept) == "<ferrolab.breaker.BreakerCall (completed)>"
        assert await other == "other"
        del kept, other
        first = echo(1)
        second = echo(2)  # the first is not completed yet: a new object
        assert first is not second
        assert (await second, await first) == (2, 1)
        # a reused object is still tracked, and an unawaited one still warns when dropped
        call = echo(3)
        assert gc.is_tracked(call)
        with pytest.warns(RuntimeWarning, match="never awaited"):
            del call
            gc.collect()

    asyncio.run(main())
    assert br.stats()["success"] == 9


def test_reused_call_objects_keep_nested_and_failing_calls_apart() -> None:
    br = make(failure_threshold=100)

    @br
    async def fact(n: int) -> int:
        if n < 0:
            raise Boom(n)
        return 1 if n <= 1 else n * await fact(n - 1)

    async def main() -> None:
        for n in range(8):
            assert await fact(n) == math.factorial(n)
            with pytest.raises(Boom):
                await fact(-n - 1)

    asyncio.run(main())
    stats = br.stats()
    assert stats["failure"] == 8
    assert stats["success"] == sum(max(n, 1) for n in range(8))


def test_the_spare_call_object_does_not_keep_the_breaker_alive() -> None:
    br = make()

    async def ok() -> int:
        return 1

    guarded = br(ok)
    asyncio.run(guarded())
    ref = weakref.ref(br)
    del br, guarded
    gc.collect()
    assert ref() is None


def test_breaker_call_protocol_send_throw_close() -> None:
    br = make()

    class Step:
        def __await__(self):  # noqa: ANN204
            got = yield "first"
            return got

    async def echo() -> Any:
        return await Step()

    aw = br.acall(echo)
    assert repr(aw).startswith("<ferrolab.breaker.BreakerCall of circuit breaker")
    with pytest.raises(TypeError, match="non-None"):
        br.acall(echo).send(1)
    assert aw.send(None) == "first"
    with pytest.raises(StopIteration) as si:
        aw.send(("a", "tuple"))
    assert si.value.value == ("a", "tuple")
    with pytest.raises(RuntimeError, match="already awaited"):
        aw.send(None)
    assert repr(aw) == "<ferrolab.breaker.BreakerCall (completed)>"

    aw = br.acall(echo)
    assert next(aw) == "first"
    with pytest.raises(Boom):
        aw.throw(Boom("in"))
    assert br.stats()["failure"] == 1

    aw = br.acall(echo)
    aw.send(None)
    aw.close()
    assert br.stats()["ignored"] == 1

    aw = br.acall(echo)
    with pytest.raises(Boom):
        aw.throw(Boom)  # never started: raised here, nothing admitted
    assert br.stats()["failure"] == 1


def test_a_call_never_awaited_warns_like_a_coroutine() -> None:
    br = make()

    async def job() -> None:
        pass

    with pytest.warns(RuntimeWarning, match="never awaited"):
        br.acall(job)
        gc.collect()
    with pytest.warns(RuntimeWarning, match="never awaited"):
        br(job)()
        gc.collect()
    assert br.stats() == {**br.stats(), "success": 0, "ignored": 0}  # nothing ran


def test_acall_of_a_non_async_function_is_a_type_error() -> None:
    br = make(failure_threshold=1)

    async def main() -> None:
        await br.acall(lambda: 42)

    with pytest.raises(TypeError, match="can't be awaited"):
        asyncio.run(main())
    assert br.state == "closed" and br.stats()["ignored"] == 1


def test_async_fallback_may_be_async() -> None:
    async def fb(x: int) -> str:
        return f"cached {x}"

    br = make(fallback=fb)
    br.force_open()

    async def real(x: int) -> str:
        return "real"

    assert asyncio.run(br.acall(real, 7)) == "cached 7"


# ------------------------------------------------------------------------------------- listeners, stats, registry


def test_listeners_see_every_transition_outside_any_lock() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=1)
    seen: list[tuple[Any, str, str, str]] = []

    def listener(b: fl.CircuitBreaker, old: str, new: str) -> None:
        seen.append((b, old, new, b.state))
        b.stats()  # re-entering the breaker from a listener must not deadlock

    br.add_listener(listener)
    run(br, boom)
    clock.t = 1
    run(br, ok)
    br.force_open()
    br.disable()
    br.reset()
    assert [(o, n) for _, o, n, _ in seen] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "forced_open"),
        ("forced_open", "disabled"),
        ("disabled", "closed"),
    ]
    assert all(b is br and n == st for b, _, n, st in seen)
    br.remove_listener(listener)
    br.force_open()
    assert len(seen) == 6
    with pytest.raises(ValueError):
        br.remove_listener(listener)
    with pytest.raises(TypeError):
        br.add_listener(3)

    class Watcher:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_change(self, _b: fl.CircuitBreaker, _old: str, new: str) -> None:
            self.seen.append(new)

    w = Watcher()
    br.add_listener(w.on_change)
    br.reset()
    br.remove_listener(w.on_change)  # an equal bound method, not the same object
    br.force_open()
    assert w.seen == ["closed"]


def test_a_failing_listener_is_reported_and_does_not_break_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    br = make(failure_threshold=1)
    later: list[str] = []

    def bad(*_: Any) -> None:
        raise RuntimeError("listener bug")

    br.add_listener(bad)
    br.add_listener(lambda _b, _o, new: later.append(new))
    with pytest.raises(Boom):
        br.call(boom)
    assert [str(e) for e in reported] == ["listener bug"]
    assert later == ["open"]


def test_stats_shape() -> None:
    clock = Clock()
    br = make(clock, failure_threshold=2, failure_rate=0.5, window=10, minimum_calls=4)
    run(br, ok)
    run(br, boom)
    s = br.stats()
    assert s == {
        "name": br.name,
        "state": "closed",
        "success": 1,
        "failure": 1,
        "rejected": 0,
        "ignored": 0,
        "slow": 0,
        "consecutive_failures": 1,
        "window_calls": 2,
        "window_failures": 1,
        "window_slow": 0,
        "failure_rate": 0.5,
        "slow_call_rate": 0.0,
        "open_count": 0,
        "retry_after": None,
        "half_open_calls": 0,
        "half_open_successes": 0,
        "transitions": {},
    }
    run(br, boom)
    s = br.stats()
    assert (s["state"], s["open_count"], s["retry_after"], s["transitions"]) == ("open", 1, 30.0, {"closed->open": 1})


def test_registry_lists_named_breakers_and_a_new_one_replaces_the_old() -> None:
    name = unique("reg")
    a = fl.CircuitBreaker(name)
    assert fl.breakers()[name] is a
    b = fl.CircuitBreaker(name)
    assert fl.breakers()[name] is b
    assert a.call(ok) == "ok"  # the replaced one keeps working
    del a, b
    gc.collect()
    assert name not in fl.breakers()
    assert list(fl.breakers()) == sorted(fl.breakers())


def _cyclic_breaker() -> weakref.ref[fl.CircuitBreaker]:
    br = make()
    br.add_listener(lambda *a: br)  # the breaker refers to itself through its listener

    @br
    def f() -> None:
        raise Boom("keeps a traceback with frames that refer to the breaker")

    with pytest.raises(Boom):
        f()
    f.breaker_ref = br  # type: ignore[attr-defined]
    return weakref.ref(br)


def test_breakers_in_reference_cycles_are_collected() -> None:
    ref = _cyclic_breaker()
    gc.collect()
    assert ref() is None


def test_metrics_are_exported_and_can_be_switched_off() -> None:
    on = make(failure_threshold=1)
    off = make(metrics=False)
    follow = fl.CircuitBreaker(unique("follow"))
    for b in (on, off, follow):
        b.call(ok)
    run(on, boom)
    run(on, ok)
    text = fl.metrics.exposition()
    n = on.name
    assert f'ferrolab_circuit_breaker_state{{name="{n}",state="open"}} 1' in text
    assert f'ferrolab_circuit_breaker_state{{name="{n}",state="closed"}} 0' in text
    for outcome, v in [("success", 1), ("failure", 1), ("rejected", 1), ("ignored", 0), ("slow", 0)]:
        assert f'ferrolab_circuit_breaker_calls_total{{name="{n}",outcome="{outcome}"}} {v}' in text
    assert f'ferrolab_circuit_breaker_transitions_total{{from="closed",name="{n}",to="open"}} 1' in text
    assert off.name not in text and off.stats()["success"] == 0
    assert fl.metrics.REGISTRY.get_sample_value(
        "ferrolab_circuit_breaker_calls_total", {"name": follow.name, "outcome": "success"}
    ) == 1.0
    fl.metrics.configure(enabled=False)
    try:
        follow.call(ok)
        on.reset()
        on.call(ok)
    finally:
        fl.metrics.configure(enabled=True)
    assert follow.stats()["success"] == 1  # not counted while instrumentation was off
    assert on.stats()["success"] == 2  # metrics=True counts regardless
    fl.metrics.configure(prefix="flx")
    try:
        assert f'flx_circuit_breaker_state{{name="{n}"' in fl.metrics.exposition()
    finally:
        fl.metrics.configure(prefix="ferrolab")


# ------------------------------------------------------------------------------------- clock and arguments


def test_a_failing_clock_raises_and_leaks_no_permit() -> None:
    state = {"fail": False, "t": 0.0}

    def clock() -> float:
        if state["fail"]:
            raise OSError("clock broke")
        return state["t"]

    br = fl.CircuitBreaker(unique(), clock=clock, failure_threshold=1, reset_timeout=0)
    run(br, boom)
    state["fail"] = True
    with pytest.raises(OSError, match="clock broke"):
        br.call(ok)
    state["fail"] = False
    assert br.call(ok) == "ok" and br.state == "closed"
    br2 = fl.CircuitBreaker(unique(), clock=lambda: float("nan"))
    with pytest.raises(ValueError, match="finite"):
        br2.call(ok)


BAD_ARGS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"failure_threshold": 0}, ValueError, "failure_threshold"),
    ({"failure_threshold": 2.0}, TypeError, "failure_threshold"),
    ({"failure_threshold": True}, TypeError, "failure_threshold"),
    ({"failure_rate": 0}, ValueError, "failure_rate"),
    ({"failure_rate": 1.01}, ValueError, "failure_rate"),
    ({"failure_rate": "0.5"}, TypeError, "failure_rate"),
    ({"window": 0}, ValueError, "window"),
    ({"window": None}, TypeError, "window"),
    ({"window_seconds": -1}, ValueError, "window_seconds"),
    ({"window_seconds": math.inf}, ValueError, "window_seconds"),
    ({"minimum_calls": 0}, ValueError, "minimum_calls"),
    ({"slow_call_duration": 0}, ValueError, "slow_call_duration"),
    ({"slow_call_rate": 0.5}, ValueError, "slow_call_rate"),
    ({"slow_call_duration": 1, "slow_call_rate": 2}, ValueError, "slow_call_rate"),
    ({"reset_timeout": -1}, ValueError, "reset_timeout"),
    ({"reset_timeout": math.nan}, ValueError, "reset_timeout"),
    # ints beyond int64 keep their sign: a huge negative number of seconds is negative, not "very long"
    ({"reset_timeout": -(10**30)}, ValueError, "reset_timeout"),
    ({"window_seconds": -(10**30)}, ValueError, "window_seconds"),
    ({"slow_call_duration": -(10**30)}, ValueError, "slow_call_duration"),
    ({"window": -(10**30)}, ValueError, "window"),
    ({"window": 2**32}, ValueError, "window"),
    ({"max_reset_timeout": 1}, ValueError, "max_reset_timeout"),
    ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls"),
    ({"half_open_max_calls": 70000}, ValueError, "half_open_max_calls"),
    ({"success_threshold": 2}, ValueError, "success_threshold"),
    ({"record": ValueError("x")}, TypeError, "record"),
    ({"record": (ValueError, int)}, TypeError, "record"),
    ({"ignore": "KeyError"}, TypeError, "ignore"),
    ({"fallback": 1}, TypeError, "fallback"),
    ({"clock": 1.0}, TypeError, "clock"),
    ({"metrics": 1}, TypeError, "metrics"),
]


@pytest.mark.parametrize("kw,exc,arg", BAD_ARGS, ids=[str(k) for k, _, _ in BAD_ARGS])
def test_bad_arguments_name_the_argument(kw: dict[str, Any], exc: type[Exception], arg: str) -> None:
    with pytest.raises(exc, match=rf"^CircuitBreaker\(\).*argument '{arg}'"):
        fl.CircuitBreaker("bad", **kw)


def test_other_argument_errors() -> None:
    with pytest.raises(TypeError, match="'name' must be a str"):
        fl.CircuitBreaker(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        fl.CircuitBreaker("x", nope=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fl.CircuitBreaker()  # type: ignore[call-arg]


def test_lists_and_single_classes_are_accepted_for_record_and_ignore() -> None:
    br = make(record=[Boom], ignore=KeyError, failure_threshold=1)
    with pytest.raises(ValueError):
        br.call(lambda: int("x"))
    assert br.state == "closed"
    run(br, boom)
    assert br.state == "open"


def test_disabled_breaker_lets_everything_through_and_reset_closes() -> None:
    br = make(failure_threshold=1)
    br.disable()
    for _ in range(5):
        assert run(br, boom) == "fail"
    assert br.state == "disabled"
    assert br.stats()["failure"] == 5
    br.reset()
    assert br.state == "closed" and run(br, boom) == "fail" and br.state == "open"


def test_repr_and_state_names() -> None:
    br = make()
    assert repr(br) == f"<ferrolab.CircuitBreaker '{br.name}' closed>"
    assert fl.breaker.STATES == ("closed", "open", "half_open", "forced_open", "disabled")


# `async with breaker:` / `with breaker:` blocks entered and never left keep a chain of entries in their context;
# a long chain must be freed at interpreter exit without a recursion per entry (a stack overflow before) and the
# abandoned coroutines closed at exit must not walk the whole chain each (quadratic before).
_ABANDONED = r"""
import sys
import ferrolab as fl

n, how = int(sys.argv[1]), sys.argv[2]
b = fl.CircuitBreaker("abandoned")


class Suspend:
    def __await__(self):
        yield


async def hold():
    async with b:
        await Suspend()


kept = []
for _ in range(n):
    if how == "sync":
        b.__enter__()
    else:
        c = hold()
        c.send(None)
        kept.append(c)
if how == "dropped":
    del kept  # each coroutine is closed now: GeneratorExit through __aexit__
print("entered", n)
"""


def _run_abandoned(n: int, how: str) -> None:
    import subprocess

    r = subprocess.run(
        [sys.executable, "-c", _ABANDONED, str(n), how],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == f"entered {n}"


@pytest.mark.parametrize("how", ["kept", "dropped", "sync"])
def test_many_abandoned_with_blocks_exit_cleanly(how: str) -> None:
    _run_abandoned(200_000, how)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kept", "dropped", "sync"])
def test_a_million_abandoned_with_blocks_exit_cleanly(how: str) -> None:
    _run_abandoned(1_000_000, how)
