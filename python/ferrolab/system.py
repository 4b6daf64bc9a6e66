"""The machine and this process at a glance: CPU, load, memory, disks, network, GPUs.

:func:`snapshot` reads everything natively (``sysinfo``) in one call, with the GIL released while it samples.
:func:`register_metrics` adds node_exporter-compatible series of the machine to ferrolab's ``/metrics``, and
:class:`Monitor` samples the machine in a native background thread and keeps a history (summaries, anomalies,
thresholds with callbacks, linear trends).

CPU percentages are rates, so they need two samples. A process-wide sampler keeps the previous one: each snapshot
reports the usage *since the previous snapshot* taken anywhere in the process, like psutil's
``cpu_percent(interval=None)``. The first snapshot of a process reports the machine's average since boot and 0.0 for
the process; call :func:`snapshot` once at start-up (or periodically) when you need a meaningful first value.

Examples
--------
>>> import ferrolab as fl
>>> s = fl.system.snapshot()
>>> sorted(s)
['cpu_count', 'cpu_percent', 'disks', 'gpus', 'load_avg', 'memory', 'network', 'process']
>>> s["memory"]["total"] > 0 and s["cpu_count"] >= 1
True
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _coerce, _core

__all__ = ["Monitor", "Prediction", "ThresholdEvent", "register_metrics", "snapshot"]

_log = logging.getLogger("ferrolab.system")


def snapshot() -> dict[str, Any]:
    """A snapshot of the machine and of this process.

    Returns
    -------
    dict
        * ``cpu_percent`` (float, 0-100): CPU usage of the whole machine since the previous snapshot (see the
          module docstring; the first one is the average since boot);
        * ``cpu_count`` (int): logical CPUs;
        * ``load_avg`` (tuple of 3 floats): 1, 5 and 15 minute load averages (zeros where the platform has none);
        * ``memory``: ``total``, ``available``, ``used`` (``total - available``) in bytes and ``percent``
          (``used / total * 100``);
        * ``disks``: one dict per mounted file system: ``mount``, ``total`` and ``free`` in bytes (``free`` is what
          an unprivileged user may still write, ``statvfs``'s ``f_bavail``) and ``percent``
          (``(total - free) / total * 100``, so space reserved for root counts as used);
        * ``network``: ``bytes_sent``, ``bytes_recv``, ``packets_sent``, ``packets_recv`` summed over every
          interface, loopback included, since boot;
        * ``process``: this process's ``rss`` (bytes), ``cpu_percent`` since the previous snapshot (100 = one core;
          may exceed 100 with several busy threads; 0.0 the first time) and ``threads``;
        * ``gpus``: one dict per CUDA device the GPU backend can use: ``name``, ``memory_total`` (bytes),
          ``memory_used`` and ``utilization`` (None: not known without NVML); empty without a usable GPU.

    Examples
    --------
    >>> import ferrolab as fl
    >>> s = fl.system.snapshot()
    >>> 0.0 <= s["cpu_percent"] <= 100.0 and len(s["load_avg"]) == 3
    True
    >>> m = s["memory"]
    >>> m["used"] == m["total"] - m["available"]
    True
    >>> root = [d for d in s["disks"] if d["mount"] == "/"]
    >>> all(0 <= d["free"] <= d["total"] for d in root)
    True
    >>> s["process"]["threads"] >= 1
    True
    """
    return _core.system_snapshot()


def register_metrics(registry: None = None) -> bool:
    """Adds node_exporter-compatible series of the machine to ferrolab's metrics registry.

    The families have the names, labels, units and types of Debian's ``prometheus-node-exporter``:
    ``node_load1``/``5``/``15``, ``node_cpu_seconds_total{cpu,mode}``, ``node_memory_MemTotal_bytes``,
    ``node_memory_MemAvailable_bytes``, ``node_memory_MemFree_bytes``,
    ``node_filesystem_{size,avail,free}_bytes{device,fstype,mountpoint}`` (the mounts node_exporter reports by
    default: no pseudo file systems), ``node_disk_io_time_seconds_total{device}`` and
    ``node_network_{receive,transmit}_bytes_total{device}``. They are read natively at each scrape of
    :func:`ferrolab.metrics.serve`'s ``/metrics`` or :func:`ferrolab.metrics.exposition`. Their names carry no
    prefix. On platforms other than Linux the CPU and disk I/O families are absent.

    Parameters
    ----------
    registry : None
        The registry; only the process-wide one (None) exists.

    Returns
    -------
    bool
        True when the series were added now, False when they already were (registering twice is a no-op).

    Raises
    ------
    ValueError
        ``registry`` is not None, or a user metric already has one of the names.

    Examples
    --------
    >>> import ferrolab as fl
    >>> _ = fl.system.register_metrics()
    >>> fl.system.register_metrics()
    False
    >>> "# TYPE node_load1 gauge" in fl.metrics.exposition()
    True
    """
    if registry is not None:
        raise ValueError(
            f"register_metrics(): argument 'registry' is {registry!r}; only the process-wide registry (None) exists"
        )
    return _core.system_register_metrics()


@dataclass(frozen=True)
class ThresholdEvent:
    """A threshold crossing passed to a :meth:`Monitor.add_threshold` callback."""

    metric: str
    level: str  # "warning" or "critical"
    value: float
    threshold: float
    timestamp: float


@dataclass(frozen=True)
class Prediction:
    """A linear-trend prediction: ``estimate`` with a 95% band ``low``-``high`` and a human ``message``.

    For :meth:`Monitor.forecast` the numbers are values of the metric; for :meth:`Monitor.time_to` they are
    seconds from the latest sample (``inf`` when the trend never gets there).
    """

    metric: str
    estimate: float
    low: float
    high: float
    message: str


def _number(func: str, arg: str, v: Any, *, finite: bool = True) -> float:
    """``v`` as a float: a real number (not a bool), else TypeError; NaN (and, with ``finite``, an infinity or an
    int beyond float's range) is a ValueError. Both name ``func`` and ``arg``."""
    x = _coerce.real_arg(func, arg, v)
    if math.isnan(x) or (finite and math.isinf(x)):
        raise ValueError(f"{func}(): argument '{arg}' is {x}; expected a finite number")
    return x


def _count(func: str, arg: str, v: Any, least: int) -> int:
    """``v`` as an int of at least ``least``: an integer or an integral float (not a bool), else TypeError; a
    smaller one is a ValueError. Both name ``func`` and ``arg``."""
    integral_float = isinstance(v, float) and v.is_integer()
    if isinstance(v, bool) or not (isinstance(v, numbers.Integral) or integral_float):
        raise TypeError(f"{func}(): argument '{arg}' must be an int, got {type(v).__name__}")
    n = int(v)
    if n < least:
        raise ValueError(f"{func}(): argument '{arg}' is {n}; expected at least {least}")
    return n


def _metric_name(func: str, metric: Any) -> str:
    if not isinstance(metric, str):
        raise TypeError(f"{func}(): argument 'metric' must be a str, got {type(metric).__name__}")
    return metric


def _human(seconds: float) -> tuple[float, str]:
    for unit, size in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if abs(seconds) >= size:
            return size, unit
    return 1.0, "seconds"


class _Threshold:
    def __init__(self, metric: str, warning: float | None, critical: float | None, cooldown: float, callback: Any):
        self.metric, self.warning, self.critical = metric, warning, critical
        self.cooldown, self.callback = cooldown, callback
        self.count = 0  # samples of the metric already looked at
        self.level = 0  # 0 ok, 1 warning, 2 critical
        self.last_fired: dict[int, float] = {}

    def level_of(self, v: float) -> int:
        if self.critical is not None and v >= self.critical:
            return 2
        if self.warning is not None and v >= self.warning:
            return 1
        return 0


_MONITORS: weakref.WeakSet[Monitor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for m in list(_MONITORS):
        m._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Monitor:
    """A background sampler of the machine with history, summaries, anomalies, thresholds and trends.

    A native thread samples every ``interval`` seconds without the GIL and keeps the last ``window`` samples of
    each metric: ``cpu_percent``, ``memory_percent``, ``load1``, ``disk_percent:<mount>`` (each mount
    node_exporter reports), ``net_recv_bytes_per_second``, ``net_sent_bytes_per_second`` and ``process_rss``
    (bytes). The rates start with the second sample. Timestamps are Unix seconds.

    Threshold callbacks run on a Python thread of the monitor (never the sampler); an exception in one is logged
    (logger ``ferrolab.system``) and the sampling goes on.

    Fork safety: a forked child does not inherit a running sampler. In the child the monitor reports
    ``running == False`` and keeps the samples taken before the fork; ``start()`` there starts the child's own.

    Parameters
    ----------
    interval : float
        Seconds between samples (from 0.001 to 1e9).
    window : int
        Samples kept per metric (the ring buffer's length; at least 1).

    Raises
    ------
    TypeError
        ``interval`` is not a number or ``window`` not an int.
    ValueError
        ``interval`` is below 0.001 s or above 1e9 s, or NaN, or ``window`` is below 1.

    Examples
    --------
    >>> import time, ferrolab as fl
    >>> with fl.system.Monitor(interval=0.05, window=100) as mon:
    ...     time.sleep(0.3)
    >>> "memory_percent" in mon.metrics
    True
    >>> t, v = mon.history("memory_percent")
    >>> len(t) == len(v) >= 1
    True
    """

    def __init__(self, interval: float = 1.0, window: int = 3600) -> None:
        every = _number("Monitor", "interval", interval, finite=False)  # the core names a bad value in seconds
        keep = min(_count("Monitor", "window", window, 1), sys.maxsize)  # more than memory holds: keep all
        self._core = _core._Monitor(every, keep)
        self._thresholds: list[_Threshold] = []
        self._lock = threading.Lock()
        self._dispatch_lock = threading.RLock()  # one evaluation of the thresholds at a time
        self._dispatcher: threading.Thread | None = None
        self._stopping = False
        _MONITORS.add(self)

    # --- life cycle -------------------------------------------------------------------------------------------
    @property
    def interval(self) -> float:
        """Seconds between samples."""
        return self._core.interval

    @property
    def window(self) -> int:
        """Samples kept per metric."""
        return self._core.window

    @property
    def running(self) -> bool:
        """Whether the sampler thread runs in this process."""
        return self._core.running

    def start(self) -> Monitor:
        """Starts sampling (no-op when running); returns the monitor.

        Examples
        --------
        >>> import ferrolab as fl
        >>> m = fl.system.Monitor(interval=0.05).start()
        >>> m.running
        True
        >>> m.stop(); m.running
        False
        """
        self._core.start()
        self._start_dispatcher()
        return self

    def stop(self) -> None:
        """Stops sampling and the callback thread, and waits for both (no-op when stopped).

        Examples
        --------
        >>> import ferrolab as fl
        >>> m = fl.system.Monitor(interval=0.05)
        >>> m.stop()
        >>> m.running
        False
        """
        self._core.stop()
        with self._lock:
            d, self._dispatcher = self._dispatcher, None
            self._stopping = True
        if d is not None and d is not threading.current_thread():
            self._core.notify()
            d.join()
        with self._lock:
            self._stopping = False

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _forked(self) -> None:
        # the child has neither the sampler nor the dispatcher thread
        self._lock = threading.Lock()
        self._dispatch_lock = threading.RLock()
        self._dispatcher = None
        self._stopping = False

    # --- data ---------------------------------------------------------------------------------------------------
    @property
    def metrics(self) -> list[str]:
        """The names of the metrics with samples, sorted."""
        return self._core.metrics()

    def history(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps, values)`` of ``metric`` as float64 arrays, oldest first.

        Raises
        ------
        KeyError
            No sample of ``metric`` (see :attr:`metrics`).

        Examples
        --------
        >>> import ferrolab as fl
        >>> m = fl.system.Monitor()
        >>> m._feed("x", 1.0, 5.0); m._feed("x", 2.0, 7.0)
        >>> m.history("x")
        (array([1., 2.]), array([5., 7.]))
        """
        h = self._core.history(_metric_name("history", metric))
        if h is None:
            raise KeyError(f"Monitor has no samples of {metric!r}; it has {self.metrics}")
        return h

    def _feed(self, metric: str, t: float, v: float) -> None:
        """Test hook: adds the sample ``(t, v)`` of ``metric`` as if the sampler had taken it."""
        self._core.feed(metric, float(t), float(v))

    def summary(self, seconds: float = 3600) -> dict[str, dict[str, float]]:
        """``{metric: {current, mean, min, max}}`` over the samples of the last ``seconds`` (before the latest).

        Examples
        --------
        >>> import ferrolab as fl
        >>> m = fl.system.Monitor()
        >>> for i, v in enumerate([1.0, 2.0, 6.0]): m._feed("x", float(i), v)
        >>> m.summary()["x"]
        {'current': 6.0, 'mean': 3.0, 'min': 1.0, 'max': 6.0}
        """
        seconds = _number("summary", "seconds", seconds, finite=False)
        if seconds < 0:
            raise ValueError(f"summary(): argument 'seconds' is {seconds}; expected a number >= 0")
        out: dict[str, dict[str, float]] = {}
        for name in self.metrics:
            t, v = self.history(name)
            if not len(t):
                continue
            keep = v[t >= t[-1] - seconds]
            out[name] = {
                "current": float(v[-1]),
                "mean": float(keep.mean()),
                "min": float(keep.min()),
                "max": float(keep.max()),
            }
        return out

    def anomalies(self, metric: str, sigma: float = 3.0, window: int = 60) -> tuple[np.ndarray, np.ndarray]:
        """Samples further than ``sigma`` rolling standard deviations from the rolling mean.

        Each sample is compared with the mean and standard deviation (``fl.ops``) of the ``window`` samples before
        it; the first ``window`` samples are never anomalies. Returns ``(timestamps, values)`` of the anomalies.
        ``sigma`` must be a positive number and ``window`` an int of at least 2 (else TypeError or ValueError).

        Examples
        --------
        >>> import numpy as np, ferrolab as fl
        >>> m = fl.system.Monitor()
        >>> rng = np.random.default_rng(0)
        >>> for i, v in enumerate(rng.normal(50, 1, 200)): m._feed("x", float(i), v)
        >>> m._feed("x", 200.0, 90.0)
        >>> t, v = m.anomalies("x", sigma=4.0)
        >>> t.tolist(), v.tolist()
        ([200.0], [90.0])
        """
        from . import ops

        sigma = _number("anomalies", "sigma", sigma)
        if sigma <= 0:
            raise ValueError(f"anomalies(): argument 'sigma' is {sigma}; expected a number > 0")
        window = _count("anomalies", "window", window, 2)
        t, v = self.history(metric)
        if len(v) <= window:
            return t[:0], v[:0]
        rows = np.lib.stride_tricks.sliding_window_view(v[:-1], window)
        mean = np.asarray(ops.mean(rows, axis=1))
        std = np.asarray(ops.std(rows, axis=1))
        x = v[window:]
        dev = np.abs(x - mean)
        hit = np.where(std > 0, dev > sigma * std, dev > 0)
        return t[window:][hit], x[hit]

    # --- thresholds ---------------------------------------------------------------------------------------------
    def add_threshold(
        self,
        metric: str,
        warning: float | None = None,
        critical: float | None = None,
        cooldown: float = 300,
        callback: Callable[[ThresholdEvent], Any] | None = None,
    ) -> None:
        """Calls ``callback(event)`` when ``metric`` crosses ``warning`` or ``critical`` (upwards).

        A crossing fires once; the same level fires again only after the metric went back below it *and*
        ``cooldown`` seconds (of sample time) passed since it last fired. Callbacks run on the monitor's Python
        thread; an exception in one is logged and ignored. Without a callback, crossings are logged as warnings.

        Raises
        ------
        TypeError
            ``metric`` is not a str, a level or ``cooldown`` not a number, or ``callback`` not callable.
        ValueError
            Neither level is given, a level is NaN, ``warning`` is above ``critical``, or ``cooldown`` is
            negative or NaN (``inf``: each level fires once).

        Examples
        --------
        >>> import time, ferrolab as fl
        >>> m = fl.system.Monitor()
        >>> seen = []
        >>> m.add_threshold("x", warning=80, critical=95, cooldown=60, callback=seen.append)
        >>> for i, v in enumerate([50, 85, 90, 97, 50, 85]): m._feed("x", float(i), v)
        >>> m._dispatch()
        >>> [(e.level, e.value) for e in seen]
        [('warning', 85.0), ('critical', 97.0)]
        """
        metric = _metric_name("add_threshold", metric)
        if warning is None and critical is None:
            raise ValueError("add_threshold(): give warning, critical or both")
        warn = None if warning is None else _number("add_threshold", "warning", warning, finite=False)
        crit = None if critical is None else _number("add_threshold", "critical", critical, finite=False)
        if warn is not None and crit is not None and warn > crit:
            raise ValueError(
                f"add_threshold(): argument 'warning' is {warn:g}, above 'critical' ({crit:g}); the warning level "
                "must not be above the critical one"
            )
        pause = _number("add_threshold", "cooldown", cooldown, finite=False)  # inf: each level fires once
        if pause < 0:
            raise ValueError(f"add_threshold(): argument 'cooldown' is {pause:g}; expected seconds >= 0")
        if callback is not None and not callable(callback):
            raise TypeError(f"add_threshold(): argument 'callback' must be callable, not {type(callback).__name__}")
        th = _Threshold(metric, warn, crit, pause, callback)
        with self._lock:
            self._thresholds.append(th)
        if self.running:
            self._start_dispatcher()

    def _dispatch(self) -> None:
        """Evaluates the thresholds on the samples not seen yet (the callback thread's step; also a test hook)."""
        with self._lock:
            ths = list(self._thresholds)
        with self._dispatch_lock:
            for th in ths:
                try:
                    self._dispatch_one(th)
                except Exception:  # one threshold's failure must not stop the others (nor the callback thread)
                    _log.exception("evaluating the threshold on %s failed", th.metric)

    def _dispatch_one(self, th: _Threshold) -> None:
        th.count, new = self._core.since(th.metric, th.count)
        for t, v in new:
            lvl = th.level_of(v)
            # an upward crossing fires the level reached, unless that level fired less than `cooldown` ago
            if lvl > th.level:
                last = th.last_fired.get(lvl)
                if last is None or t - last >= th.cooldown:
                    th.last_fired[lvl] = t
                    name, bound = ("critical", th.critical) if lvl == 2 else ("warning", th.warning)
                    assert bound is not None
                    self._fire(th, ThresholdEvent(th.metric, name, v, float(bound), t))
            th.level = lvl

    def _fire(self, th: _Threshold, event: ThresholdEvent) -> None:
        if th.callback is None:
            _log.warning("%s %s: %.6g >= %.6g", event.metric, event.level, event.value, event.threshold)
            return
        try:
            th.callback(event)
        except Exception:
            _log.exception("threshold callback for %s (%s) failed", event.metric, event.level)

    def _start_dispatcher(self) -> None:
        with self._lock:
            if not self._thresholds or self._dispatcher is not None or not self.running:
                return
            d = threading.Thread(target=self._dispatch_loop, name="ferrolab-monitor-callbacks", daemon=True)
            self._dispatcher = d
        d.start()

    def _dispatch_loop(self) -> None:
        seq = 0
        while True:
            seq = self._core.wait(seq, 1.0)
            with self._lock:
                if self._stopping or self._dispatcher is not threading.current_thread():
                    break
            self._dispatch()
        self._dispatch()  # the last samples

    # --- trends -------------------------------------------------------------------------------------------------
    def _fit(self, metric: str) -> tuple[float, float, float, float, float, float, int]:
        t, v = self.history(metric)
        n = len(t)
        if n < 3:
            raise ValueError(f"{metric!r} has {n} samples; a trend needs at least 3")
        t0 = t[-1]
        x = t - t0
        xm, ym = x.mean(), v.mean()
        sxx = float(((x - xm) ** 2).sum())
        if sxx == 0:
            raise ValueError(f"the samples of {metric!r} all have the same timestamp")
        b = float(((x - xm) * (v - ym)).sum()) / sxx
        a = float(ym - b * xm)
        resid = v - (a + b * x)
        s = math.sqrt(float((resid**2).sum()) / (n - 2))
        return a, b, s, float(xm), sxx, float(t0), n

    def forecast(self, metric: str, horizon: float) -> Prediction:
        """The value of ``metric`` ``horizon`` seconds after its latest sample, by a least-squares linear trend.

        ``low``-``high`` is the 95% confidence band of the trend line there.

        Examples
        --------
        >>> import ferrolab as fl
        >>> m = fl.system.Monitor()
        >>> for i in range(10): m._feed("x", 60.0 * i, 10.0 + i)
        >>> p = m.forecast("x", 600)
        >>> round(p.estimate, 6), p.low <= p.estimate <= p.high
        (29.0, True)
        """
        horizon = _number("forecast", "horizon", horizon)
        a, b, s, xm, sxx, _, n = self._fit(metric)
        est = a + b * horizon
        half = 1.96 * s * math.sqrt(1.0 / n + (horizon - xm) ** 2 / sxx)
        size, unit = _human(horizon)
        msg = f"{metric} in {horizon / size:.1f} {unit}: {est:.4g} ({est - half:.4g}-{est + half:.4g})"
        return Prediction(metric, est, est - half, est + half, msg)

    def time_to(self, metric: str, value: float) -> Prediction:
        """Seconds from the latest sample until the linear trend of ``metric`` reaches ``value``.

        ``low``-``high`` come from the 95% confidence interval of the slope; ``inf`` where the trend (or that end
        of the interval) never reaches ``value``.

        Examples
        --------
        >>> import ferrolab as fl
        >>> m = fl.system.Monitor()
        >>> for i in range(20): m._feed("disk_percent:/", 86400.0 * i, 50.0 + 2.0 * i)
        >>> p = m.time_to("disk_percent:/", 100)
        >>> round(p.estimate / 86400, 3)
        6.0
        >>> p.message
        'disk_percent:/ reaches 100 in 6.0 days (6.0-6.0)'
        """
        value = _number("time_to", "value", value)
        a, b, s, xm, sxx, _, n = self._fit(metric)
        se_b = s / math.sqrt(sxx)
        now = a  # the trend's value at the latest sample (x = 0)
        need = value - now

        def until(slope: float) -> float:
            if need == 0:
                return 0.0
            if slope == 0 or (need > 0) != (slope > 0):
                return math.inf
            return need / slope

        est = until(b)
        ends = sorted([until(b - 1.96 * se_b), until(b + 1.96 * se_b)])
        lo, hi = ends[0], ends[1]
        if not (b - 1.96 * se_b) * (b + 1.96 * se_b) > 0:
            hi = math.inf  # the interval holds a flat trend
        if math.isinf(est):
            msg = f"{metric} does not reach {value:g} at its current trend"
        else:
            size, unit = _human(est)
            hi_s = "never" if math.isinf(hi) else f"{hi / size:.1f}"
            msg = f"{metric} reaches {value:g} in {est / size:.1f} {unit} ({lo / size:.1f}-{hi_s})"
        return Prediction(metric, est, lo, hi, msg)

    # --- display ------------------------------------------------------------------------------------------------
    def plot(self, metrics: list[str] | None = None) -> Any:
        """Plots the history of ``metrics`` (default: all but the disks') with matplotlib; returns the figure.

        Raises
        ------
        ImportError
            matplotlib is not installed.

        Examples
        --------
        >>> import ferrolab as fl
        >>> m = fl.system.Monitor()
        >>> for i in range(5): m._feed("cpu_percent", float(i), 10.0 * i)
        >>> try:
        ...     import matplotlib
        ...     matplotlib.use("Agg")
        ...     fig = m.plot()
        ... except ImportError as e:  # matplotlib is optional
        ...     assert "matplotlib" in str(e)
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError("Monitor.plot() needs matplotlib (pip install matplotlib)") from e
        names = metrics if metrics is not None else [m for m in self.metrics if not m.startswith("disk_percent:")]
        fig, axes = plt.subplots(max(1, len(names)), 1, sharex=True, squeeze=False, figsize=(8, 2 * max(1, len(names))))
        for ax, name in zip(axes[:, 0], names, strict=False):
            t, v = self.history(name)
            ax.plot(t - (t[-1] if len(t) else 0.0), v)
            ax.set_ylabel(name, fontsize=8)
        axes[-1, 0].set_xlabel("seconds before the latest sample")
        return fig

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(k)}</td>"
            + "".join(f"<td>{s[c]:.4g}</td>" for c in ("current", "mean", "min", "max"))
            + "</tr>"
            for k, s in self.summary().items()
        )
        state = "running" if self.running else "stopped"
        return (
            f"<div><b>ferrolab Monitor</b> ({state}, every {self.interval:g} s, {self.window} samples)"
            "<table><tr><th>metric</th><th>current</th><th>mean</th><th>min</th><th>max</th></tr>"
            f"{rows}</table></div>"
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Monitor(interval={self.interval!r}, window={self.window!r}, {state})"

