"""Circuit breakers for functions, coroutines and ``with`` blocks, on a native lock-free state machine.

A :class:`CircuitBreaker` protects a flaky dependency (a remote service, a GPU backend, a database): after enough
failures it *opens* and rejects calls at once with :class:`CircuitOpenError` (or calls a ``fallback``) instead of
letting every caller wait for the same failure; after ``reset_timeout`` seconds it lets a few *trial* calls through
(*half-open*) and closes again when they succeed.

The state lives in native atomics: a guarded call in the closed state costs one atomic load and a couple of
relaxed increments around the call itself, no lock is held while the guarded function runs, and concurrent callers
(threads or asyncio tasks) are never serialized. A decorated function is a native callable (no Python wrapper frame);
an async call is a native awaitable (no extra coroutine layer).

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
