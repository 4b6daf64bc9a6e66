"""OpenTelemetry tracing with native spans.

Configure a pipeline once, then open spans with ``with fl.tracing.span("name", key=value):`` or decorate
functions with ``@fl.tracing.traced()``. Every ``fl.ops`` call made while a sampled span is open in the same
thread or asyncio task records a child span ``ferrolab.<op>`` (for example ``ferrolab.sum``) with the
attributes ``ferrolab.op``, ``ferrolab.shapes`` (the input shapes, e.g. ``("(1000,)",)``), ``ferrolab.dtype``
(the dtype the op computes in) and ``ferrolab.device``; an op that fails gets status ``ERROR``.

Spans are recorded and exported natively (a ``with`` block costs a few percent of an opentelemetry-python SDK
span; see ``benches/bench_tracing.py``), and finished
spans go either to an in-memory buffer (``endpoint=None``, read with :func:`finished_spans`) or to an
OTLP/HTTP (protobuf) collector through a bounded queue and a background thread, so that a slow or unreachable
collector never blocks the caller: spans that do not fit in the queue, or whose export fails, are dropped and
counted (:func:`dropped_spans`, :func:`stats`).

The current span lives in a :mod:`contextvars` variable, so threads and asyncio tasks each have their own.
When ``opentelemetry-python`` is in use (``opentelemetry.trace`` already imported; ferrolab never imports it)
and no ferrolab span is open, the current OpenTelemetry span is the parent of a new ferrolab span (same trace,
and its sampled flag decides ours). ferrolab spans do not become current spans of opentelemetry-python.
Op child spans are recorded only under an open ferrolab span.

Examples
--------
>>> import numpy as np, ferrolab as fl
>>> fl.tracing.configure("demo", endpoint=None)
>>> with fl.tracing.span("load", rows=3) as s:
...     total = fl.ops.sum(np.arange(3.0))
>>> [(d["name"], d["parent_span_id"] == s.span_id) for d in fl.tracing.finished_spans()]
[('ferrolab.sum', True), ('load', False)]
>>> fl.tracing.finished_spans()[0]["attributes"]["ferrolab.shapes"]
('(3,)',)
"""

from __future__ import annotations

import atexit
import functools
import inspect
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar, overload

from . import _coerce, _core

__all__ = [
    "Span",
    "configure",
    "current_span",
    "dropped_spans",
    "finished_spans",
    "flush",
    "resource",
    "shutdown",
    "span",
    "stats",
    "traced",
]

P = ParamSpec("P")
R = TypeVar("R")

#: The native span type returned by :func:`span` (a context manager).
Span = _core.Span

span = _core.tracing_span

# doctest does not look into builtins' docstrings: run the examples above from here
__test__ = {"span": span.__doc__}

_atexit_registered = False


def configure(
    service_name: str,
    service_version: str | None = None,
    environment: str | None = None,
    endpoint: str | None = None,
    sample_ratio: float = 1.0,
    *,
    headers: Mapping[str, str] | None = None,
    ca_file: str | os.PathLike[str] | None = None,
) -> None:
    """Installs the tracing pipeline (replacing, and flushing, any previous one).

    Parameters
    ----------
    service_name : str
        ``service.name`` of the resource.
    service_version : str, optional
        ``service.version`` of the resource.
    environment : str, optional
        ``deployment.environment`` (also written as ``deployment.environment.name``) of the resource.
    endpoint : str, optional
        An OTLP/HTTP collector, e.g. ``"http://localhost:4318"`` or ``"https://otlp.example.com"``
        (``/v1/traces`` is appended when the URL has no path). Spans are sent as protobuf in batches from a
        background thread: at most 8192 wait in the queue, one export (retries included) gives up after 3 s.
        ``https://`` goes through rustls, verified against the platform's trust store (or ``ca_file``).
        ``None`` (default) keeps the last 10,000 finished spans in memory for :func:`finished_spans`.
    sample_ratio : float, default 1.0
        Probability that a root span is sampled (``ParentBased(TraceIdRatioBased(sample_ratio))``: child spans
        follow their parent's decision, including a parent from opentelemetry-python).
    headers : mapping of str to str, optional
        HTTP headers of every export request, e.g. ``{"authorization": "Bearer ..."}`` for a collector that
        authenticates (send credentials to ``https://`` endpoints only: over ``http://`` they travel in clear).
        ``OTEL_EXPORTER_OTLP_HEADERS`` / ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` (``k1=v1,k2=v2``) are honoured
        too, and win on a clash (as in the Rust opentelemetry-otlp exporter, so that a deployment can
        override what the code sets).
    ca_file : str or path, optional
        PEM file of the certificate authorities to verify an ``https://`` collector with (e.g. a private CA
        or a self-signed certificate); default ``OTEL_EXPORTER_OTLP_CERTIFICATE`` when set, else the
        platform's trust store.

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        ``sample_ratio`` is outside ``[0, 1]``, ``service_name`` is empty, ``endpoint`` is not an ``http://``
        or ``https://`` URL, a header is not valid HTTP, or ``ca_file`` cannot be read as PEM certificates.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.tracing.configure("billing", service_version="1.4.2", environment="staging", sample_ratio=1.0)
    >>> fl.tracing.resource()["service.name"]
    'billing'
    >>> fl.tracing.configure("billing", sample_ratio=2.0)
    Traceback (most recent call last):
    ...
    ValueError: configure(): argument 'sample_ratio' is 2.0; expected a number in [0, 1]
    """
    global _atexit_registered
    for arg, value in (("service_name", service_name),):
        if not isinstance(value, str):
            raise TypeError(f"configure(): argument '{arg}' must be str, got {type(value).__name__}")
    for arg, optional in (("service_version", service_version), ("environment", environment), ("endpoint", endpoint)):
        if optional is not None and not isinstance(optional, str):
            raise TypeError(f"configure(): argument '{arg}' must be str or None, got {type(optional).__name__}")
    ratio = _coerce.real_arg("configure", "sample_ratio", sample_ratio, "a float")
    if not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
        # an int beyond float's range has too many digits to show
        beyond = isinstance(sample_ratio, int) and math.isinf(ratio)
        shown = f"an int of {int(sample_ratio).bit_length()} bits" if beyond else repr(sample_ratio)
        raise ValueError(f"configure(): argument 'sample_ratio' is {shown}; expected a number in [0, 1]")
    hdrs: list[tuple[str, str]] = []
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise TypeError(
                f"configure(): argument 'headers' must be a mapping of str to str, got {type(headers).__name__}"
            )
        for k, v in headers.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("configure(): argument 'headers' must map str header names to str values")
            hdrs.append((k, v))
    if ca_file is not None and not isinstance(ca_file, str | os.PathLike):
        raise TypeError(f"configure(): argument 'ca_file' must be a path, got {type(ca_file).__name__}")
    ca = os.fspath(ca_file) if ca_file is not None else None
    _core.tracing_configure(service_name, service_version, environment, endpoint, ratio, hdrs, ca)
    if not _atexit_registered:
        atexit.register(_shutdown_at_exit)
        _atexit_registered = True


def _shutdown_at_exit() -> None:
    _core.tracing_shutdown(5.0)


@overload
def traced(name: Callable[P, R]) -> Callable[P, R]: ...
@overload
def traced(name: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def traced(name: Any = None) -> Any:
    """Decorator: each call of the function runs inside a span.

    Works for plain and ``async`` functions (the span covers the whole coroutine, in the task that awaits
    it), methods, ``staticmethod`` and ``classmethod`` objects (either order of the decorators), and other
    callables. Use as ``@traced()``, ``@traced("name")`` or bare ``@traced``.

    Parameters
    ----------
    name : str, optional
        The span name; default: the function's ``__qualname__`` (of the wrapped function for a
        ``functools.partial``, of the class for another callable object: never its ``repr``, which may hold a
        memory address and so make every process's spans differ).

    Raises
    ------
    TypeError
        ``name`` is not a str, or the decorated object is a generator function (open a span inside it
        instead) or not callable.

    Examples
    --------
    >>> import asyncio, ferrolab as fl
    >>> fl.tracing.configure("demo")
    >>> @fl.tracing.traced("load")
    ... def load(n):
    ...     return list(range(n))
    >>> @fl.tracing.traced()
    ... async def fetch():
    ...     return load(2)
    >>> asyncio.run(fetch())
    [0, 1]
    >>> [d["name"] for d in fl.tracing.finished_spans()]
    ['load', 'fetch']
    """
    if isinstance(name, staticmethod | classmethod) or (callable(name) and not isinstance(name, str)):
        return traced(None)(name)  # type: ignore[arg-type]
    if name is not None and not isinstance(name, str):
        raise TypeError(f"traced(): argument 'name' must be str or None, got {type(name).__name__}")

    def decorate(fn: Any) -> Any:
        if isinstance(fn, staticmethod | classmethod):
            # the function inside, traced, in a new descriptor of the same kind
            return type(fn)(decorate(fn.__func__))
        if not callable(fn):
            raise TypeError(f"traced(): can only decorate a callable, got {type(fn).__name__}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"traced(): {getattr(fn, '__qualname__', fn)!r} is a generator function; a span around it would "
                "only cover creating the generator: open fl.tracing.span() inside it instead"
            )
        span_name = name if name is not None else _default_name(fn)
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with span(span_name):
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with span(span_name):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def _default_name(fn: Any) -> str:
    """A callable's span name: its ``__qualname__``, that of the function a ``functools.partial`` wraps, else
    that of its class."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    qualname = getattr(fn, "__qualname__", None)
    return qualname if isinstance(qualname, str) and qualname else type(fn).__qualname__


def current_span() -> Span | None:
    """The ferrolab span open in this thread or task, or ``None``.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.tracing.configure("demo")
    >>> with fl.tracing.span("work") as s:
    ...     fl.tracing.current_span() is s
    True
    >>> fl.tracing.current_span() is None
    True
    """
    return _core.tracing_current_span()


def finished_spans(*, clear: bool = False) -> list[dict[str, Any]]:
    """The finished spans kept in memory (``endpoint=None``), oldest first.

    Each span is a dict with ``name``, ``trace_id`` (32 hex digits), ``span_id`` and ``parent_span_id``
    (16 hex digits; ``None`` for a root), ``parent_is_remote``, ``start_time_ns``, ``end_time_ns`` (Unix
    epoch nanoseconds), ``attributes`` (dict; sequences as tuples), ``status`` (``"UNSET"``, ``"OK"`` or
    ``"ERROR"``), ``status_description`` and ``events`` (dicts with ``name``, ``time_ns``, ``attributes``).
    The buffer keeps the newest 10,000 spans and is emptied by :func:`configure`; with an endpoint it stays
    empty.

    Parameters
    ----------
    clear : bool, default False
        Also empty the buffer.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.tracing.configure("demo")
    >>> try:
    ...     with fl.tracing.span("risky"):
    ...         raise KeyError("k")
    ... except KeyError:
    ...     pass
    >>> d = fl.tracing.finished_spans(clear=True)[0]
    >>> d["status"], d["status_description"], d["events"][0]["name"]
    ('ERROR', "KeyError: 'k'", 'exception')
    >>> fl.tracing.finished_spans()
    []
    """
    return _core.tracing_finished_spans(clear)


def flush() -> bool:
    """Exports the spans finished so far and waits for it (at most about 5 s).

    Returns
    -------
    bool
        True when every span finished since the previous flush was delivered (always True in memory mode);
        False when spans were dropped or the collector did not accept them in time.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.tracing.configure("demo")
    >>> fl.tracing.flush()
    True
    """
    return _core.tracing_flush()


def shutdown(timeout: float = 5.0) -> bool:
    """Flushes and stops the pipeline; spans opened afterwards are not recorded until :func:`configure`.

    Also runs at interpreter exit. Spans already kept in memory stay readable.

    Parameters
    ----------
    timeout : float, default 5.0
        Seconds to wait for the last export at most.

    Returns
    -------
    bool
        True when everything was delivered.

    Raises
    ------
    TypeError
        ``timeout`` is not a number.
    ValueError
        ``timeout`` is negative or not finite.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.tracing.configure("demo")
    >>> with fl.tracing.span("last"):
    ...     pass
    >>> fl.tracing.shutdown()
    True
    >>> with fl.tracing.span("after") as s:
    ...     s.is_recording
    False
    >>> [d["name"] for d in fl.tracing.finished_spans()]
    ['last']
    """
    # an int beyond float's range is an infinity: refused as not finite
    return _core.tracing_shutdown(_coerce.real_arg("shutdown", "timeout", timeout, "a number of seconds"))


def stats() -> dict[str, Any]:
    """Counters of the tracing pipeline.

    ``mode`` (``"off"``, ``"memory"`` or ``"otlp"``), ``endpoint`` (the traces URL), ``sample_ratio``, and
    counts since the process started: ``started``/``ended`` (sampled spans), ``exported`` (delivered to the
    collector), ``dropped`` (queue full, failed export, or ended after shutdown), ``export_failures`` (export
    requests that failed after retries), ``evicted`` (pushed out of the in-memory buffer), plus ``queued``
    (waiting for export now) and ``open`` (sampled spans open now).

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.tracing.configure("demo")
    >>> s = fl.tracing.stats()
    >>> s["mode"], s["open"]
    ('memory', 0)
    """
    return _core.tracing_stats()


def dropped_spans() -> int:
    """Spans lost since the process started: the export queue was full, their export failed, or they ended
    after :func:`shutdown`.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.tracing.dropped_spans() >= 0
    True
    """
    return int(_core.tracing_stats()["dropped"])


def resource() -> dict[str, str]:
    """Resource attributes of the current pipeline (``{}`` when tracing is not configured).

    Besides ``service.name``, ``service.version`` and ``deployment.environment`` it holds the SDK's
    ``telemetry.sdk.*`` attributes and anything from ``OTEL_RESOURCE_ATTRIBUTES``.

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.tracing.configure("demo", environment="dev")
    >>> fl.tracing.resource()["deployment.environment"]
    'dev'
    """
    return _core.tracing_resource()
