"""The machine and this process at a glance: CPU, load, memory, disks, network, GPUs.

:func:`snapshot` reads everything natively (``sysinfo``) in one call, with the GIL released while it samples.

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

from typing import Any

from . import _core

__all__ = ["snapshot"]


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
