"""Prometheus metrics with values in native atomics, the ``/metrics`` + ``/health`` server and Pushgateway push.

The metric classes have the shapes of ``prometheus_client`` (``Counter``, ``Gauge``, ``Histogram`` with
``labels``, ``inc``, ``dec``, ``set``, ``observe``, ``time``...), but every value is a native atomic, so an update
costs a few tens of nanoseconds and never takes a Python lock. Every ``fl.ops`` call is counted and timed natively
(``ferrolab_operations_total``, ``ferrolab_operation_duration_seconds``, ``ferrolab_errors_total``); the process's
memory and CPU are read at scrape time (``ferrolab_memory_usage_bytes``, ``ferrolab_memory_total_bytes``,
``ferrolab_cpu_usage_percent``).

Examples
--------
>>> import ferrolab as fl
>>> requests = fl.metrics.Counter("doc_requests", "Requests served.", ["route"])
>>> requests.labels(route="/a").inc()
>>> 'doc_requests_total{route="/a"} 1' in fl.metrics.exposition()
True
>>> with fl.metrics.serve(port=0) as server:
...     import urllib.request
...     body = urllib.request.urlopen(server.url + "/metrics").read().decode()
>>> "doc_requests_total" in body
True
>>> fl.metrics.REGISTRY.unregister(requests)
"""

from __future__ import annotations

import atexit
import base64
import copy
import functools
import inspect
import math
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from . import _core, _exposition
from ._exposition import ALLOWUTF8, DOTS, UNDERSCORES, VALUES
from ._exposition import render as _render  # noqa: F401 (the native side renders custom collectors with it)

__all__ = [
    "ALLOWUTF8",
    "CONTENT_TYPE_LATEST",
    "DOTS",
    "UNDERSCORES",
    "VALUES",
    "bridge_to_prometheus_client",
    "disable_legacy_validation",
    "enable_legacy_validation",
    "get_legacy_validation",
    "CollectorRegistry",
    "Counter",
    "DuplicateTimeseries",
    "Enum",
    "Gauge",
    "Histogram",
    "Info",
    "Metric",
    "REGISTRY",
    "Sample",
    "Server",
    "Summary",
    "configure",
    "delete_from_gateway",
    "disable_created_metrics",
    "enable_created_metrics",
    "exposition",
    "generate_latest",
    "push",
    "pushadd",
    "serve",
    "settings",
]

Counter = _core.Counter
Gauge = _core.Gauge
Histogram = _core.Histogram
Summary = _core.Summary
Enum = _core.Enum
Info = _core.Info
Server = _core.Server
CollectorRegistry = _core.CollectorRegistry
DuplicateTimeseries = _core.DuplicateTimeseries
REGISTRY = _core.REGISTRY
exposition = _core.exposition


def generate_latest(registry: CollectorRegistry = REGISTRY, escaping: str = UNDERSCORES) -> bytes:
    """The text exposition of ``registry`` as UTF-8 bytes, like ``prometheus_client.generate_latest``.

    ``escaping`` is how names outside the legacy character set are written: ``UNDERSCORES`` (the default),
    ``DOTS``, ``VALUES`` or ``ALLOWUTF8``.

    Examples
    --------
    >>> import ferrolab as fl
    >>> reg = fl.metrics.CollectorRegistry()
    >>> fl.metrics.Gauge("doc_gen_g", "A gauge.", registry=reg).set(17)
    >>> fl.metrics.generate_latest(reg)
    b'# HELP doc_gen_g A gauge.\\n# TYPE doc_gen_g gauge\\ndoc_gen_g 17.0\\n'
    """
    return exposition(registry, escaping=escaping).encode()


def enable_legacy_validation() -> None:
    """Accept only legacy metric names (``[a-zA-Z_:][a-zA-Z0-9_:]*``) and label names, as prometheus_client's
    ``enable_legacy_validation()`` (also ``PROMETHEUS_LEGACY_NAME_VALIDATION=true`` at start)."""
    _core._legacy_validation(True)


def disable_legacy_validation() -> None:
    """Accept UTF-8 metric names and exemplar label names again (the default)."""
    _core._legacy_validation(False)


def get_legacy_validation() -> bool:
    """Whether legacy name validation is on."""
    return bool(_core._legacy_validation(None))


def disable_created_metrics() -> None:
    """Stop exposing the ``_created`` samples (as ``PROMETHEUS_DISABLE_CREATED_SERIES=true`` does at start)."""
    _core._set_created(False)


def enable_created_metrics() -> None:
    """Expose the ``_created`` samples of counters and histograms again (the default)."""
    _core._set_created(True)


class Sample(NamedTuple):
    """One sample of a collected family, as ``prometheus_client.samples.Sample``."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None
    exemplar: Any = None
    native_histogram: Any = None


class Metric:
    """One collected metric family, as ``prometheus_client.Metric`` (``CollectorRegistry.collect()`` yields these)."""

    def __init__(self, name: str, documentation: str, typ: str) -> None:
        self.name = name
        self.documentation = documentation
        self.type = typ
        self.unit = ""
        self.samples: list[Sample] = []

    def __eq__(self, other: object) -> bool:
        # by value, also against prometheus_client's Metric (code migrating compares the two)
        try:
            theirs = (other.name, other.documentation, other.type, other.unit, other.samples)  # type: ignore[attr-defined]
        except AttributeError:
            return NotImplemented
        return (self.name, self.documentation, self.type, self.unit, self.samples) == theirs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, {self.documentation!r}, {self.type!r}, {self.unit!r}, {self.samples!r})"


def _family(name: str, documentation: str, typ: str, samples: list[tuple[str, dict[str, str], float]]) -> Any:
    """One collected family: a ``prometheus_client.Metric`` when the process has imported prometheus_client (so
    the two compare equal and prometheus_client can render it), else ferrolab's look-alike ``Metric``."""
    pc = sys.modules.get("prometheus_client.metrics_core")
    m = pc.Metric(name, documentation, typ) if pc is not None else Metric(name, documentation, typ)
    m.samples = [Sample(n, labels, value) for n, labels, value in samples]
    return m


# the names a collector's families reserve besides their own, by type (as prometheus_client reserves them)
_TYPE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}


def _collector_names(collector: Any, auto_describe: bool) -> list[str]:
    """The sample names a custom collector reserves: from its ``describe()``, else (``auto_describe``) one
    ``collect()``, else none."""
    if not callable(getattr(collector, "collect", None)):
        raise TypeError(
            f"register(): argument 'metric' must be a ferrolab.metrics metric or a collector with a collect() "
            f"method, not {type(collector).__name__}"
        )
    describe = getattr(collector, "describe", None)
    if callable(describe):
        families = describe()
    elif auto_describe:
        families = collector.collect()
    else:
        return []
    names: list[str] = []
    for m in families:
        names.append(m.name)
        names.extend(m.name + sfx for sfx in _TYPE_SUFFIXES.get(m.type, ()))
    return names


class _TargetInfo:
    """The collector of a registry's ``target_info`` series (``CollectorRegistry(target_info=...)``)."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.labels = dict(labels)

    def collect(self) -> list[Any]:
        return [_family("target", "Target metadata", "info", [("target_info", dict(self.labels), 1.0)])]


# set while ferrolab collects a registry's custom collectors: a bridge into prometheus_client yields nothing then
# (prometheus_client's registry may itself be registered in ferrolab's, and would hand ferrolab's series back)
_collecting = threading.local()


def _foreign_collect(listed: list[tuple[Any, list[str]]], only: list[str] | None) -> list[Any]:
    """The families of custom collectors; with ``only`` (a restricted registry), just the collectors reserving
    one of those names, and of their families the samples of those names."""
    out: list[Any] = []
    wanted = None if only is None else set(only)
    _collecting.active = True
    try:
        for collector, names in listed:
            if wanted is not None and names and wanted.isdisjoint(names):
                continue
            for m in collector.collect():
                if wanted is None:
                    out.append(m)
                    continue
                kept = [s for s in m.samples if s.name in wanted]
                if kept:
                    part = copy.copy(m)
                    part.samples = kept
                    out.append(part)
    finally:
        _collecting.active = False
    return out


def _sample_value(metrics: list[Any], name: str, labels: Mapping[str, str] | None) -> float | None:
    want = dict(labels or {})
    for m in metrics:
        for s in m.samples:
            if s.name == name and s.labels == want:
                return s.value
    return None


class _Bridge:
    """ferrolab's own families as a prometheus_client collector (see ``bridge_to_prometheus_client``)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> list[Any]:
        if getattr(_collecting, "active", False):
            return []
        return self.source._collect_native()

    def describe(self) -> list[Any]:
        # no names reserved: ferrolab's families come and go, and ferrolab's registry already keeps them unique
        return []


# the bridge registered in each prometheus_client registry (weakly: a test's registry may go away)
_bridges: weakref.WeakKeyDictionary[Any, _Bridge] = weakref.WeakKeyDictionary()
_bridges_lock = threading.Lock()


def bridge_to_prometheus_client(registry: Any = None, source: CollectorRegistry = REGISTRY) -> _Bridge:
    """Serve ferrolab's series through a prometheus_client registry (default ``prometheus_client.REGISTRY``).

    Everything that renders that registry (``make_wsgi_app``, ``make_asgi_app``, ``start_http_server``,
    ``generate_latest``, Dask's worker ``/metrics``...) then also shows ferrolab's families of ``source``
    (default ``fl.metrics.REGISTRY``: the ops' series and every metric registered there), read at each scrape.
    Calling it again for the same registry returns the same bridge; ``registry.unregister(bridge)`` removes it.

    The other direction needs no bridge: ``fl.metrics.REGISTRY.register(prometheus_client.REGISTRY)`` makes
    ``fl.metrics.serve()`` and ``exposition()`` show prometheus_client's series (both at once is fine: the bridge
    yields nothing while ferrolab collects prometheus_client's registry, so no series appears twice).

    Examples
    --------
    >>> import ferrolab as fl, prometheus_client
    >>> reg = prometheus_client.CollectorRegistry()
    >>> bridge = fl.metrics.bridge_to_prometheus_client(reg)
    >>> b"ferrolab_memory_usage_bytes" in prometheus_client.generate_latest(reg)
    True
    >>> reg.unregister(bridge)
    """
    import prometheus_client  # the bridge is for apps that already use it

    target = prometheus_client.REGISTRY if registry is None else registry
    with _bridges_lock:
        known = _bridges.get(target)
        # still registered there (prometheus_client's registry keeps its collectors in `_collector_to_names`)
        if known is not None and known.source is source and known in getattr(target, "_collector_to_names", ()):
            return known
        bridge = _Bridge(source)
        target.register(bridge)
        _bridges[target] = bridge
        return bridge


CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


def configure(enabled: bool = True, prefix: str = "ferrolab") -> None:
    """Switch the built-in instrumentation and name its series.

    Parameters
    ----------
    enabled : bool, optional
        ``False`` removes the per-op cost (one relaxed atomic load remains); the counters keep their values.
    prefix : str, optional
        Prefix of the built-in series (``<prefix>_operations_total`` ...).

    Examples
    --------
    >>> import ferrolab as fl
    >>> fl.metrics.configure(enabled=False)
    >>> fl.metrics.settings()
    {'enabled': False, 'prefix': 'ferrolab'}
    >>> fl.metrics.configure()
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"configure(): argument 'enabled' must be a bool, got {type(enabled).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"configure(): argument 'prefix' must be a str, got {type(prefix).__name__}")
    _core._configure(enabled, prefix)


def settings() -> dict[str, Any]:
    """The current instrumentation settings: ``{"enabled": bool, "prefix": str}``."""
    enabled, prefix = _core._settings()
    return {"enabled": enabled, "prefix": prefix}


_servers: weakref.WeakSet[Server] = weakref.WeakSet()
_servers_lock = threading.Lock()


def serve(
    host: str = "127.0.0.1",
    port: int = 9464,
    token: str | None = None,
    *,
    workers: int = 4,
    header_timeout: float = 5.0,
    max_header_bytes: int = 16384,
    max_connections: int = 1024,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    basic_auth: Mapping[str, str] | None = None,
) -> Server:
    """Serve ``GET /metrics``, ``/health`` and ``/ready`` (also ``/healthz``, ``/readyz``) from native code.

    ``/metrics`` is the text exposition (rendered without the GIL, gzip-compressed when the client accepts it);
    ``/health`` runs :func:`ferrolab.health.default_registry` and answers JSON with 200 (healthy or warning) or
    503 (unhealthy); ``/ready`` answers 200 while the server runs.
    The server (hyper on two native I/O threads) binds 127.0.0.1 unless told otherwise and keeps connections
    alive; slow or idle clients hold no thread, so they cannot starve a scrape. At most ``max_connections`` are
    open: a new one closes the connection idle the longest (503 only when all are busy answering; with TLS such a
    connection is closed without an answer, since plain text before the handshake would be garbage). A request head
    must arrive within ``header_timeout`` seconds (408) and fit in ``max_header_bytes`` (431); only GET and HEAD
    are answered (405); the head deadline and size limit apply to each request of a keep-alive connection. The
    handlers (rendering, ``/health``) run on at most ``workers`` threads (at least two), ``/health`` on at most
    ``workers - 1`` of them at once, so a scrape never waits behind slow health checks. ``/metrics?name[]=x``
    (repeatable) exposes just the samples named, as prometheus_client's endpoint does.

    Parameters
    ----------
    host : str, optional
        Address to bind (``"0.0.0.0"`` exposes it on every interface).
    port : int, optional
        Port; 0 picks a free one (see ``Server.port``).
    token : str, optional
        When given, every request needs ``Authorization: Bearer <token>`` (compared in constant time), else 401.
        Over plain HTTP the token travels in clear text: anyone who can watch the network can read it; use
        ``tls_cert``/``tls_key`` when the network is not trusted.
    max_connections : int, optional
        Connections open at once; mind the process's open-file limit (``ulimit -n``).
    tls_cert, tls_key : str or path, optional
        PEM files of the certificate chain and its private key: serve HTTPS (TLS 1.2/1.3, rustls).
    basic_auth : mapping, optional
        ``{user: bcrypt_hash}`` as in node_exporter's web config (``htpasswd -nBC 10 user``, or
        ``bcrypt.hashpw``): requests need ``Authorization: Basic ...`` (a bearer ``token`` is accepted too when
        both are given). Each distinct credential is checked with bcrypt once; the verdict is cached.

    Returns
    -------
    Server
        ``.url``, ``.port``, ``.stats()``, ``.stop()``; a context manager that stops on exit. Servers still
        running stop when the interpreter exits.

    Examples
    --------
    >>> import urllib.request, ferrolab as fl
    >>> with fl.metrics.serve(port=0, token="s3cret") as srv:
    ...     req = urllib.request.Request(srv.url + "/ready", headers={"Authorization": "Bearer s3cret"})
    ...     urllib.request.urlopen(req).status
    200
    """
    if not isinstance(host, str):
        raise TypeError(f"serve(): argument 'host' must be a str, got {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"serve(): argument 'port' must be an int, got {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"serve(): argument 'port' is {port}; expected 0..65535")
    if token is not None and not isinstance(token, str):
        raise TypeError(f"serve(): argument 'token' must be a str or None, got {type(token).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ValueError(f"serve(): argument 'workers' is {workers!r}; expected an int in 1..256")
    if isinstance(header_timeout, bool) or not isinstance(header_timeout, (int, float)):
        raise TypeError(f"serve(): argument 'header_timeout' must be a number, got {type(header_timeout).__name__}")
    if isinstance(max_header_bytes, bool) or not isinstance(max_header_bytes, int) or max_header_bytes < 256:
        raise ValueError(f"serve(): argument 'max_header_bytes' is {max_header_bytes!r}; expected an int >= 256")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not 1 <= max_connections <= 1 << 20:
        raise ValueError(f"serve(): argument 'max_connections' is {max_connections!r}; expected an int in 1..1048576")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("serve(): arguments 'tls_cert' and 'tls_key' go together")
    users: list[tuple[str, str]] = []
    if basic_auth is not None:
        if not isinstance(basic_auth, Mapping):
            raise TypeError(f"serve(): argument 'basic_auth' must be a mapping, got {type(basic_auth).__name__}")
        for user, hashed in basic_auth.items():
            if not isinstance(user, str) or not isinstance(hashed, (str, bytes)):
                raise TypeError("serve(): argument 'basic_auth' maps str users to bcrypt hashes (str)")
            users.append((user, hashed.decode() if isinstance(hashed, bytes) else hashed))
    server = _core._serve(
        host,
        port,
        token,
        workers,
        float(header_timeout),
        max_header_bytes,
        max_connections,
        None if tls_cert is None else os.fspath(tls_cert),
        None if tls_key is None else os.fspath(tls_key),
        users,
    )
    with _servers_lock:
        _servers.add(server)
    return server


@atexit.register
def _stop_servers() -> None:
    with _servers_lock:
        servers = list(_servers)
    for s in servers:
        s.stop()


def _decorate(factory: Callable[[], Any], func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``func`` (sync or async) so that each call runs inside ``with factory():``."""
    if not callable(func):
        raise TypeError(f"decorator: argument must be callable, got {type(func).__name__}")
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with factory():
                return await func(*args, **kwargs)

        return _same_signature(async_wrapper, func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with factory():
            return func(*args, **kwargs)

    return _same_signature(wrapper, func)


def _same_signature(wrapper: Callable[..., Any], func: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``wrapper`` ``func``'s signature, so that ``inspect.getfullargspec`` (which does not follow
    ``__wrapped__``) sees ``func``'s arguments, as with prometheus_client's decorators."""
    try:
        wrapper.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # builtins without a signature
        pass
    return wrapper


def _escape(name: str, value: str) -> str:
    """One ``/name/value`` path segment of a Pushgateway URL (base64 when the value needs it)."""
    if not isinstance(value, str):
        value = str(value)
    if value == "":
        return f"/{name}@base64/="
    if "/" in value:
        enc = base64.urlsafe_b64encode(value.encode()).decode()
        return f"/{name}@base64/{enc}"
    import urllib.parse  # imported here: most processes never push

    return f"/{name}/{urllib.parse.quote(value, safe='')}"


class _Gateway(NamedTuple):
    """Where a push goes: the URL without credentials, the URL as messages show it, the Authorization header."""

    url: str
    shown: str
    auth: str | None


def _gateway_url(func: str, gateway: str, job: str, grouping_key: Mapping[str, Any] | None) -> _Gateway:
    if not isinstance(gateway, str) or not gateway:
        raise TypeError(f"{func}(): argument 'gateway' must be a non-empty str")
    if not isinstance(job, str) or not job:
        raise TypeError(f"{func}(): argument 'job' must be a non-empty str")
    if grouping_key is not None and not isinstance(grouping_key, Mapping):
        raise TypeError(f"{func}(): argument 'grouping_key' must be a mapping of label names to values")
    if "://" not in gateway:
        gateway = "http://" + gateway
    path = "/metrics" + _escape("job", job)
    for k, v in (grouping_key or {}).items():
        if not isinstance(k, str) or not _exposition.is_legacy(k, metric=False):
            raise ValueError(f"{func}(): argument 'grouping_key' has the invalid label name {k!r}")
        path += _escape(k, v)
    base, shown, auth = _credentials(func, gateway)
    return _Gateway(base.rstrip("/") + path, shown.rstrip("/") + path, auth)


def _credentials(func: str, gateway: str) -> tuple[str, str, str | None]:
    """``gateway`` without its credentials, as messages show it, and the basic-auth header of the credentials.

    Everything before the address's last ``@`` is credentials (``user:password``, percent-encoded where needed),
    also when the password holds a ``/``, ``?`` or ``#``, which would otherwise end the URL's authority early (the
    path is added only after this split, so a job or label value with an ``@`` cannot move it). The password, and a
    user name given without one (a token), show as ``***``.

    Examples
    --------
    >>> from ferrolab.metrics import _credentials
    >>> _credentials("push", "http://ci:pa/ss@127.0.0.1:9091")[:2], _credentials("push", "http://gw:9091")
    (('http://127.0.0.1:9091', 'http://ci:***@127.0.0.1:9091'), ('http://gw:9091', 'http://gw:9091', None))
    """
    import urllib.parse  # imported here: most processes never push

    scheme, sep, rest = gateway.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return gateway, gateway, None
    raw_user, colon, raw_password = userinfo.partition(":")
    user, password = urllib.parse.unquote(raw_user), urllib.parse.unquote(raw_password)
    if ":" in user:  # RFC 7617: the server splits user and password at the first colon
        raise ValueError(
            f"{func}(): argument 'gateway' has a ':' in its user name, which basic authentication cannot carry"
        )
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    shown = f"{scheme}{sep}{raw_user}:***@{host}" if colon else f"{scheme}{sep}***@{host}"
    return f"{scheme}{sep}{host}", shown, f"Basic {token}"


def _send(func: str, method: str, target: _Gateway, body: bytes | None, timeout: float) -> None:
    import http.client  # imported here: most processes never push
    import urllib.error
    import urllib.request

    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{func}(): argument 'timeout' must be a number of seconds, got {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"{func}(): argument 'timeout' must be a positive number of seconds, got {timeout!r}")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        # a redirect would send the credentials to another address (and urllib turns a POST into a GET there)
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    headers = {} if body is None else {"Content-Type": CONTENT_TYPE_LATEST}
    if target.auth is not None:
        headers["Authorization"] = target.auth
    invalid = ""  # the errors of an invalid URL quote the URL (with its credentials): raised after the handler
    try:
        req = urllib.request.Request(target.url, data=body, headers=headers, method=method)
        with urllib.request.build_opener(NoRedirect).open(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace").strip()
        raise OSError(f"{func}(): {method} {target.shown} answered {e.code} {e.reason}: {detail}") from e
    except urllib.error.URLError as e:
        raise OSError(f"{func}(): cannot reach {target.shown}: {e.reason}") from e
    except (ValueError, http.client.InvalidURL) as e:  # (the timeout, the other ValueError, is checked above)
        invalid = type(e).__name__
    if invalid:
        raise ValueError(f"{func}(): argument 'gateway' is not a valid URL ({invalid}): {target.shown}")


def push(gateway: str, job: str, grouping_key: Mapping[str, Any] | None = None, timeout: float = 30.0) -> None:
    """Replace this job's group on a Prometheus Pushgateway with the current exposition (HTTP PUT).

    Parameters
    ----------
    gateway : str
        The Pushgateway's address, e.g. ``"http://127.0.0.1:9091"`` (``http://`` is assumed when missing).
        Credentials in it (``"https://user:password@gw:9091"``; everything before its last ``@``, percent-encoded
        where needed) are sent as HTTP basic authentication, as a gateway started with ``--web.config.file`` asks;
        messages show the password as ``***``. A redirect is an error (it would carry the credentials elsewhere).
    job : str
        The ``job`` label of the group.
    grouping_key : mapping, optional
        Further labels of the group (e.g. ``{"instance": "host-1"}``); values with ``/`` are base64-encoded.
    timeout : float, optional
        Seconds to wait for the gateway.

    Raises
    ------
    OSError
        The gateway cannot be reached, rejects the push or redirects it (the message has its answer).
    ValueError
        ``gateway`` is not a valid URL, or ``timeout`` is not positive.
    """
    _send("push", "PUT", _gateway_url("push", gateway, job, grouping_key), exposition().encode(), timeout)


def pushadd(gateway: str, job: str, grouping_key: Mapping[str, Any] | None = None, timeout: float = 30.0) -> None:
    """Like :func:`push` but only replaces the metrics with the same names in the group (HTTP POST)."""
    _send("pushadd", "POST", _gateway_url("pushadd", gateway, job, grouping_key), exposition().encode(), timeout)


def delete_from_gateway(
    gateway: str, job: str, grouping_key: Mapping[str, Any] | None = None, timeout: float = 30.0
) -> None:
    """Delete this job's group from a Pushgateway (HTTP DELETE)."""
    target = _gateway_url("delete_from_gateway", gateway, job, grouping_key)
    _send("delete_from_gateway", "DELETE", target, None, timeout)
