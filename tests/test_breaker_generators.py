"""Decorated generators and async generators are guarded for their whole iteration; ``inspect`` sees the kind."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import ferrolab as fl
import pytest


class Boom(Exception):
    pass


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(clock: Clock | None = None, **kw: Any) -> fl.CircuitBreaker:
    return fl.CircuitBreaker("test_gen", metrics=True, clock=clock or Clock(), **kw)


def half_open() -> tuple[fl.CircuitBreaker, Clock]:
    """A breaker that is open and whose open period is over: the next call is its only trial."""
    clock = Clock()
    br = make(clock, failure_threshold=1, reset_timeout=10)
    with pytest.raises(Boom):
        br.call(_boom)
    assert br.state == "open"
    clock.t = 10
    return br, clock


def _boom() -> None:
    raise Boom("down")


# ------------------------------------------------------------------------------------- generators


def test_a_generator_is_guarded_until_its_end() -> None:
    br = make()

    @br
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    assert list(numbers(3)) == [0, 1, 2]
    assert br.stats()["success"] == 1 and br.stats()["failure"] == 0


def test_a_failure_while_iterating_counts() -> None:
    br = make(failure_threshold=2)

    @br
    def flaky() -> Iterator[int]:
        yield 1
        raise Boom("mid-iteration")

    for _ in range(2):
        it = flaky()
        assert next(it) == 1
        with pytest.raises(Boom):
            next(it)
    assert br.state == "open" and br.stats()["failure"] == 2
    assert isinstance(br.last_failure, Boom)
    with pytest.raises(fl.CircuitOpenError):
        next(flaky())


def test_in_half_open_creating_the_generator_does_not_close_the_breaker() -> None:
    br, _ = half_open()

    @br
    def stream() -> Iterator[int]:
        yield 1
        raise Boom("fails after the first item")

    it = stream()
    assert br.state == "open"  # nothing admitted yet
    assert next(it) == 1
    assert br.state == "half_open"  # the trial is in flight for the whole iteration
    with pytest.raises(Boom):
        next(it)
    assert br.state == "open"


def test_a_closed_or_dropped_generator_gives_its_permit_back() -> None:
    br, _ = half_open()

    @br
    def stream() -> Iterator[int]:
        yield 1
        yield 2

    it = stream()
    assert next(it) == 1
    assert br.stats()["half_open_calls"] == 1
    it.close()
    assert br.stats()["half_open_calls"] == 0 and br.state == "half_open"

    it = stream()
    next(it)
    del it
    gc.collect()
    assert br.stats()["half_open_calls"] == 0
    assert list(stream()) == [1, 2] and br.state == "closed"


def test_generator_send_throw_and_return_value_pass_through() -> None:
    br = make()

    @br
    def echo() -> Any:
        got = yield "ready"
        try:
            yield got
        except KeyError:
            yield "caught"
        return "done"

    g = echo()
    assert next(g) == "ready" and g.send("x") == "x" and g.throw(KeyError) == "caught"
    with pytest.raises(StopIteration) as si:
        next(g)
    assert si.value.value == "done" and br.stats()["success"] == 1


def test_a_rejected_generator_uses_the_fallback() -> None:
    br = make(fallback=lambda n: iter(["cached"] * n))

    @br
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    br.force_open()
    assert list(numbers(2)) == ["cached", "cached"]


# ------------------------------------------------------------------------------------- async generators


def test_an_async_generator_is_guarded_until_its_end() -> None:
    br = make(failure_threshold=1)

    @br
    async def ticks(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    @br
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise Boom("mid-iteration")

    async def main() -> list[int]:
        got = [i async for i in ticks(3)]
        assert br.stats()["success"] == 1
        with pytest.raises(Boom):
            async for _ in broken():
                pass
        return got

    assert asyncio.run(main()) == [0, 1, 2]
    assert br.state == "open" and br.stats()["failure"] == 1


def test_async_generator_half_open_and_aclose() -> None:
    br, _ = half_open()

    @br
    async def stream() -> AsyncIterator[int]:
        yield 1
        yield 2

    async def main() -> None:
        agen = stream()
        assert br.state == "open"  # creating it admits nothing
        assert await agen.__anext__() == 1
        assert br.stats()["half_open_calls"] == 1
        await agen.aclose()
        assert br.stats()["half_open_calls"] == 0 and br.state == "half_open"
        assert [i async for i in stream()] == [1, 2]

    asyncio.run(main())
    assert br.state == "closed"


def test_async_generator_asend_and_athrow_pass_through() -> None:
    br = make()

    @br
    async def echo() -> AsyncIterator[Any]:
        got = yield "ready"
        try:
            yield got
        except KeyError:
            yield "caught"

    async def main() -> None:
        g = echo()
        assert await g.asend(None) == "ready"
        assert await g.asend("x") == "x"
        assert await g.athrow(KeyError) == "caught"
        with pytest.raises(StopAsyncIteration):
            await g.__anext__()

    asyncio.run(main())
    assert br.stats()["success"] == 1


# ------------------------------------------------------------------------------------- inspect and metadata


def test_inspect_reports_the_wrapped_kind() -> None:
    br = make()

    def plain(a: int, b: int = 2) -> int:
        """Plain."""
        return a + b

    async def coro(a: int) -> int:
        return a

    def gen(a: int) -> Iterator[int]:
        yield a

    async def agen(a: int) -> AsyncIterator[int]:
        yield a

    for f in (plain, coro, gen, agen):
        g = br(f)
        assert inspect.iscoroutinefunction(g) == inspect.iscoroutinefunction(f), f
        assert inspect.isgeneratorfunction(g) == inspect.isgeneratorfunction(f), f
        assert inspect.isasyncgenfunction(g) == inspect.isasyncgenfunction(f), f
        assert asyncio.iscoroutinefunction(g) == asyncio.iscoroutinefunction(f), f
        assert g.__name__ == f.__name__ and g.__qualname__ == f.__qualname__ and g.__doc__ == f.__doc__
        assert g.__wrapped__ is f and g.__module__ == f.__module__
        assert inspect.signature(g) == inspect.signature(f)
        assert g.breaker is br
        assert functools.wraps(g)(lambda: None).__wrapped__ is g

    stacked = make()(br(coro))
    assert inspect.iscoroutinefunction(stacked) and asyncio.run(stacked(5)) == 5


def test_a_plain_function_returning_a_coroutine_is_guarded_until_awaited() -> None:
    br = make(failure_threshold=1)

    async def fails() -> None:
        await asyncio.sleep(0)
        raise Boom("late")

    def launcher() -> Any:
        return fails()

    g = br(launcher)
    assert not inspect.iscoroutinefunction(g)

    async def main() -> None:
        aw = g()
        assert br.state == "closed"
        with pytest.raises(Boom):
            await aw

    asyncio.run(main())
    assert br.state == "open" and br.stats()["failure"] == 1
