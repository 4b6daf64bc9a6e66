#!/usr/bin/env python3
"""Side-by-side benchmark of ``fl.system.snapshot()`` against the equivalent psutil calls.

One snapshot gives what these psutil calls give together (the peer side, timed as one statement):
``cpu_percent()``, ``cpu_count()``, ``getloadavg()``, ``virtual_memory()``, ``disk_usage(p.mountpoint)`` for every
partition of ``disk_partitions()``, ``net_io_counters()``, and on a ``Process()`` created once:
``memory_info()``, ``cpu_percent()``, ``num_threads()``. Both sides run in one process, interleaved
(``_common.time_pair``), median of ``--repeat`` repetitions, each at least ``--min-time`` long.

    python benches/bench_system.py               # table + bench-results/bench_system.json
    python benches/bench_system.py --smoke       # a second or two, for CI

ratio = psutil / ferrolab (> 1: the snapshot is cheaper); the target is >= 3. Before timing, the snapshot's
totals are checked against psutil's (memory total, CPU count, the total of /).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

from _common import (
    cores_available,
    cpu_model,
    dist_version,
    doc_header,
    import_ferrolab,
    json_path,
    loadavg,
    looped,
    pair_stats,
    print_table,
    time_pair,
    warn_if_loaded,
    write_json,
)

fl = import_ferrolab()
import psutil  # noqa: E402 - after the checkout's ferrolab is importable

TARGET = 3.0


def psutil_equivalent() -> Any:
    proc = psutil.Process()

    def call() -> Any:
        return (
            psutil.cpu_percent(),
            psutil.cpu_count(),
            psutil.getloadavg(),
            psutil.virtual_memory(),
            [psutil.disk_usage(p.mountpoint) for p in psutil.disk_partitions()],
            psutil.net_io_counters(),
            proc.memory_info(),
            proc.cpu_percent(),
            proc.num_threads(),
        )

    return call


def check() -> tuple[str, str]:
    s = fl.system.snapshot()
    problems = []
    if s["cpu_count"] != psutil.cpu_count():
        problems.append(f"cpu_count {s['cpu_count']} != {psutil.cpu_count()}")
    if s["memory"]["total"] != psutil.virtual_memory().total:
        problems.append(f"memory total {s['memory']['total']} != {psutil.virtual_memory().total}")
    root = [d for d in s["disks"] if d["mount"] == "/"]
    if root and root[0]["total"] != psutil.disk_usage("/").total:
        problems.append(f"/ total {root[0]['total']} != {psutil.disk_usage('/').total}")
    return ("ok", "") if not problems else ("mismatch", "; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny repetition counts: a second or two")
    p.add_argument("--json", metavar="PATH", help="where to write the JSON (default bench-results/bench_system.json)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions per side (median; default 9, 3 with --smoke)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per repetition (default 0.2; 0.005 smoke)")
    args = p.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (3 if args.smoke else 9)
    if repeat < 1:
        p.error("--repeat must be >= 1")
    min_time = args.min_time if args.min_time is not None else (0.005 if args.smoke else 0.2)
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": cores_available(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ferrolab": getattr(fl, "__version__", "?"),
        "psutil": getattr(psutil, "__version__", None) or dist_version("psutil"),
        "partitions": [part.mountpoint for part in psutil.disk_partitions()],
        "loadavg_start": loadavg(),
    }
    print(f"ferrolab {info['ferrolab']} vs psutil {info['psutil']}, Python {info['python']}")
    print(
        f"{info['cpu_model']}, {info['cores_available']} cores available; {len(info['partitions'])} partition(s); "
        f"median of {repeat} repetition(s); ratio = psutil / ferrolab (> 1: ferrolab cheaper)\n"
    )
    warn_if_loaded(info["loadavg_start"], info["cores_available"])
    t0 = time.perf_counter()
    status, detail = check()
    t = time_pair(looped(psutil_equivalent()), looped(fl.system.snapshot), repeat, min_time)
    row = {
        "case": "snapshot()",
        "peer": "psutil (9 calls, disk_usage per partition)",
        **pair_stats(t),
        "target": TARGET,
        "check": status,
        "check_detail": detail,
    }
    row["met"] = row["ratio"] is not None and row["ratio"] >= TARGET
    elapsed = time.perf_counter() - t0
    info["loadavg_end"] = loadavg()
    print_table(
        ["case", "psutil", "ferrolab", "ratio", "target", "check"],
        [
            [
                row["case"],
                f"{row['peer_s'] * 1e6:.1f} us",
                f"{row['ferrolab_s'] * 1e6:.1f} us",
                f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-",
                f">= {TARGET:g}x",
                status if not detail else f"{status}: {detail}",
            ]
        ],
        right=(1, 2, 3),
    )
    missed = [] if row["met"] else [row["case"]]
    print(f"\nelapsed {elapsed:.1f} s; targets missed: {', '.join(missed) if missed else 'none'}.")
    doc = {
        **doc_header("bench_system", argv, args.smoke),
        "repeat": repeat,
        "min_time_s": min_time,
        "elapsed_s": elapsed,
        "machine": info,
        "ratio": "peer_s / ferrolab_s (> 1 means ferrolab is cheaper)",
        "failures": 0 if status == "ok" else 1,
        "targets_missed": missed,
        "rows": [row],
    }
    write_json(json_path(args.json, "bench_system", args.smoke), doc)
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
