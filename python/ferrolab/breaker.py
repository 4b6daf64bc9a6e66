"""Circuit breakers for functions, coroutines and ``with`` blocks, on a native lock-free state machine.

A :class:`CircuitBreaker` protects a flaky dependency (a remote service, a GPU backend, a database): after enough
failures it *opens* and rejects calls at once with :class:`CircuitOpenError` (or calls a ``fallback``) instead of
letting every caller wait for the same failure; after ``reset_timeout`` seconds it lets a few *trial* calls through
(*half-open*) and closes again when they succeed.

The state lives in native atomics: a guarded call in the closed state costs one atomic load and a couple of
relaxed increments around the call itself, no lock is held while the guarded function runs, and concurrent callers
(threads or asyncio tasks) are never serialized. A decorated function is a native callable (no Python wrapper frame);
an async call is a native awaitable (no extra coroutine layer).

What is guarded is decided from what the decorated callable is, when it is decorated, and from what a call returns:

* a function: the call; a coroutine that a plain callable returns is guarded until it has been awaited to its end;
* an ``async def``: the awaitable the call returns (admitted when it is first awaited);
* a generator function or an async generator function: the whole iteration. The call is admitted when the
  iteration starts (the first ``next()``/``__anext__()``: creating the generator admits nothing, so in half-open it
  cannot close the breaker); an exception raised while iterating counts as a failure, the end of the iteration as a
  success, and a generator closed or dropped before its end gives its permit back.

``inspect.iscoroutinefunction``, ``inspect.isgeneratorfunction`` and ``inspect.isasyncgenfunction`` report a
decorated function as the kind it wraps (Python 3.11 and later), and ``__name__``, ``__qualname__``, ``__doc__``,
``__module__``, ``__wrapped__`` and ``inspect.signature`` are those of the wrapped function.

Differences from pybreaker (and circuitbreaker, aiobreaker):

* the call that trips the breaker re-raises its own exception (pybreaker raises ``CircuitBreakerError`` from that
  call); the calls rejected afterwards raise :class:`CircuitOpenError`, whose ``__cause__`` and ``last_failure``
  are that exception;
* an exception in ``ignore=`` counts neither as a failure nor as a success (pybreaker's ``exclude`` counts it as a
  success and resets the failure count); in half-open its permit goes back;
* ``stats()["consecutive_failures"]`` counts the failures of the closed state only: a failed half-open trial reopens
  the breaker but is not added to it (the peers' failure counters include it).

States: ``"closed"``, ``"open"``, ``"half_open"``, ``"forced_open"`` (:meth:`CircuitBreaker.force_open`) and
``"disabled"`` (:meth:`CircuitBreaker.disable`); :meth:`CircuitBreaker.reset` closes it again.

Tripping rules (they combine; the first that fires opens the breaker):

* ``failure_threshold`` consecutive failures (default 5; ``None`` turns the rule off);
* a failure rate ``failure_rate`` over the last ``window`` calls or the last ``window_seconds`` seconds, once
  ``minimum_calls`` calls were seen;
* a slow-call rate ``slow_call_rate`` (calls longer than ``slow_call_duration``), over the same window.

In half-open, exactly ``half_open_max_calls`` trial calls are admitted; ``success_threshold`` successes close the
breaker, one failure reopens it (for longer each time with ``max_reset_timeout``: exponential backoff with jitter). A
trial that is cancelled or abandoned gives its permit back.

Every breaker exports, at scrape time and with no per-call Python cost, ``ferrolab_circuit_breaker_state{name,state}``,
``ferrolab_circuit_breaker_calls_total{name,outcome}`` (success, failure, rejected, ignored, slow) and
``ferrolab_circuit_breaker_transitions_total{name,from,to}`` through :func:`ferrolab.metrics.exposition` and the
``/metrics`` endpoint.

Examples
--------
A decorated function, with an injected clock so that the example needs no sleep:

>>> import ferrolab as fl
>>> now = [0.0]
>>> service = fl.CircuitBreaker("doc_service", failure_threshold=3, reset_timeout=30, clock=lambda: now[0])
>>> @service
... def fetch(ok=True):
...     if not ok:
...         raise TimeoutError("service timed out")
...     return "data"
>>> for _ in range(3):
...     try:
...         fetch(ok=False)
...     except TimeoutError:
...         pass
>>> service.state
'open'
>>> try:
...     fetch()
... except fl.CircuitOpenError as e:
...     print(e)
...     print(type(e.__cause__).__name__)
circuit breaker 'doc_service' is open; retry after 30.000 s
TimeoutError
>>> now[0] += 30
>>> fetch(), service.state
('data', 'closed')
>>> 'ferrolab_circuit_breaker_state{name="doc_service",state="closed"} 1' in fl.metrics.exposition()
True

Coroutines and ``async with`` blocks:

>>> import asyncio
>>> db = fl.CircuitBreaker("doc_async_db", fallback=lambda *a: "cached")
>>> async def query(q):
...     return f"rows for {q}"
>>> async def main():
...     first = await db.acall(query, "a")
...     async with db:
...         second = await query("b")
...     db.force_open()
...     third = await db.acall(query, "c")  # rejected: the fallback answers
...     return first, second, third
>>> asyncio.run(main())
('rows for a', 'rows for b', 'cached')
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from . import _core

__all__ = [
    "STATES",
    "BreakerCall",
    "BreakerFunction",
    "CircuitBreaker",
    "CircuitOpenError",
    "breakers",
]

CircuitBreaker = _core.CircuitBreaker
CircuitOpenError = _core.CircuitOpenError
BreakerFunction = _core.BreakerFunction
BreakerCall = _core.BreakerCall

#: The states of a breaker, as ``CircuitBreaker.state`` and the metrics spell them.
STATES = ("closed", "open", "half_open", "forced_open", "disabled")


def breakers() -> dict[str, CircuitBreaker]:
    """The named breakers that are alive, by name (sorted).

    A breaker created with the name of an earlier one replaces it here and in the metrics (the earlier one keeps
    working). Breakers are held weakly: one that is no longer referenced disappears.

    Returns
    -------
    dict of str to CircuitBreaker

    Examples
    --------
    >>> import ferrolab as fl
    >>> gpu = fl.CircuitBreaker("doc_registry_gpu")
    >>> fl.breakers()["doc_registry_gpu"] is gpu
    True
    """
    return _core.breakers()


def _decorate(breaker: CircuitBreaker, func: Callable[..., Any]) -> Callable[..., Any]:
    """``@breaker`` (``CircuitBreaker.__call__`` sends every decorated callable here): a native ``BreakerFunction``
    for a function or an ``async def``, a guarded generator function for a generator or async generator function.
    ``inspect`` reports the result as the kind it wraps."""
    if not callable(func):
        raise TypeError(
            f"CircuitBreaker '{breaker.name}': the decorated object must be callable, got {type(func).__name__}"
        )
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        return _guard_generator_function(breaker, func)
    # a breaker stacked on another one that guards an async def is async too
    is_async = inspect.iscoroutinefunction(func) or (isinstance(func, BreakerFunction) and func._is_async)
    wrapper = breaker._function(func, is_async)
    functools.update_wrapper(wrapper, func)
    if is_async:
        if sys.version_info >= (3, 12):
            inspect.markcoroutinefunction(wrapper)
        else:
            # inspect.iscoroutinefunction() of 3.11 accepts a "function-like" object (a __code__ and a __name__, as
            # Cython functions have): the wrapped function's code says "coroutine"; the marker is what
            # asyncio.iscoroutinefunction() looks for
            for attr in ("__code__", "__defaults__", "__kwdefaults__"):
                if hasattr(func, attr):
                    setattr(wrapper, attr, getattr(func, attr))
            import asyncio.coroutines  # only here: ``import ferrolab`` does not import asyncio

            wrapper._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
    return wrapper


def _guard_generator_function(breaker: CircuitBreaker, func: Callable[..., Any]) -> Callable[..., Any]:
    """``@breaker`` for a generator or async generator function: a function of the same kind, guarded for the whole
    iteration."""
    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def guarded_async_generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            permit = breaker._admit()
            agen = (func if permit.admitted else permit.fallback)(*args, **kwargs)
            try:
                try:
                    item = await agen.__anext__()
                except StopAsyncIteration:
                    permit.success()
                    return
                while True:
                    try:
                        sent = yield item
                    except GeneratorExit:
                        await agen.aclose()
                        raise
                    except BaseException as e:  # noqa: BLE001 - thrown in: passed on, as yield from does
                        try:
                            item = await agen.athrow(e)
                        except StopAsyncIteration:
                            break
                    else:
                        try:
                            item = await agen.asend(sent)
                        except StopAsyncIteration:
                            break
            except BaseException as e:
                permit.error(e)
                raise
            permit.success()

        guarded_async_generator.breaker = breaker  # type: ignore[attr-defined]
        return guarded_async_generator

    @functools.wraps(func)
    def guarded_generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        permit = breaker._admit()
        if not permit.admitted:
            return (yield from permit.fallback(*args, **kwargs))
        try:
            result = yield from func(*args, **kwargs)
        except BaseException as e:
            permit.error(e)
            raise
        permit.success()
        return result

    guarded_generator.breaker = breaker  # type: ignore[attr-defined]
    return guarded_generator
