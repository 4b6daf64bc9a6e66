#!/usr/bin/env python3
"""Side-by-side benchmark of ``ferrolab.metrics`` against ``prometheus_client``, and the cost of op instrumentation.

Both sides run in one process on metrics of the same shape. Each case times the *same statement* (``c.inc()``,
``c.labels("GET", "200").inc()``, ``f()``...) through ``timeit.Timer`` with the ferrolab object or the
prometheus_client object bound to the same name, so the timing loop costs both sides the same. Each side gets a
loop count for which one repetition lasts at least ``--min-time``; repetitions alternate between the sides and the
per-call time is the median over ``--repeat`` repetitions.

    python benches/bench_metrics.py                  # table + bench-results/bench_metrics.json
    python benches/bench_metrics.py --smoke          # tiny repetition counts, a few seconds, for CI
    python benches/bench_metrics.py --repeat 11 --json bench-results/bench_metrics.json

Columns: ``ratio = prometheus_client time / ferrolab time`` (> 1 means ferrolab is faster), next to the target.
``exposition`` renders a registry holding one counter family with 10,000 label values (1,000 with ``--smoke``):
``prometheus_client.generate_latest(registry)`` (bytes) against ``fl.metrics.exposition()`` (str; it also renders the
handful of built-in ``ferrolab_*`` series). ``instrumentation`` times ``fl.ops.sum`` on 1,000 float64 with
``fl.metrics.configure(enabled=True)`` against ``enabled=False`` and reports the time it adds in percent.

``slow clients`` (also with ``--cases slow_clients``) starts each endpoint in a process of its own
(``fl.metrics.serve()`` with its defaults, ``prometheus_client.start_http_server``), opens 1,000 clients that drip
one request-head line a second and 1,000 idle keep-alive connections against it (20 + 20 with ``--smoke``; closed
connections reopen a second later), and scrapes ``/metrics`` on a new connection every 50 ms for 10 s: scrapes
answered, p50/p99 latency, and the server's peak RSS and thread count before and under the load. ``gzip`` renders
the 10,000-series exposition and compresses it as the server does (``Accept-Encoding: gzip``): sizes and the
compression time over the render time.

When ``benches/bench_tracing.py`` exists and has ``run(smoke)``, its rows are printed after these and stored under
``tracing_rows`` in the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
import timeit
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client as pc
from _common import (
    HostileClients,
    cores_available,
    cpu_model,
    dist_version,
    doc_header,
    import_ferrolab,
    json_path,
    loadavg,
    pair_stats,
    print_table,
    proc_status,
    raise_nofile,
    scrape_loop,
    time_pair,
    warn_if_loaded,
    write_json,
)

fl = import_ferrolab()

FULL_SERIES = 10_000
SMOKE_SERIES = 1_000

# case -> the ratio ferrolab should reach (None: no target)
TARGETS = {
    "Counter.inc()": 5.0,
    "labels(method=, code=).inc()": 10.0,
    'labels("GET", "200").inc()': 10.0,
    "Histogram.observe()": 8.0,
    "Gauge.set()": None,
    "exposition": 20.0,
}
INSTRUMENTATION_TARGET_PCT = 5.0
ALL_CASES = [*TARGETS, "instrumentation", "slow_clients", "gzip", "disabled_log"]
# a core `tracing` event no output enables costs at most this (measured natively, no GIL)
DISABLED_LOG_TARGET_NS = 5.0
SLOW_CLIENT_TARGETS = {"ok_pct": 99.0, "p99_ms": 50.0}
GZIP_TARGET_COST = 2.0


# ----------------------------------------------------------------------------------------------- timing


@dataclass
class Side:
    stmt: str
    env: dict[str, Any]
    before: Callable[[], None] = lambda: None  # runs before each of this side's repetitions (not timed)


def time_sides(peer: Side, mine: Side, repeat: int, min_time: float) -> dict[str, Any]:
    """Interleaved timing of the same statement shape on both sides; per-call seconds of every repetition."""
    return time_pair(
        timeit.Timer(peer.stmt, globals=peer.env).timeit,
        timeit.Timer(mine.stmt, globals=mine.env).timeit,
        repeat,
        min_time,
        before_peer=peer.before,
        before_mine=mine.before,
    )


# ------------------------------------------------------------------------------------------------ cases

_seq = iter(range(10**9))


def _name(word: str) -> str:
    return f"bench_{word}_{next(_seq)}"


@dataclass
class Case:
    name: str
    peer: Side
    mine: Side
    check: Callable[[], str]  # "" when fine, else what differs
    size: str = ""
    peer_name: str = "prometheus_client"
    cleanup: list[Any] = field(default_factory=list)


def parse_cases(text: str) -> tuple[list[str], list[str]]:
    """The case names in a comma-separated ``--cases`` value, and the parts that name none. Some names hold a
    comma themselves (``labels(method=, code=).inc()``), so the longest name that starts the rest is taken first;
    spaces around the commas are ignored."""
    wanted: list[str] = []
    unknown: list[str] = []
    rest = text.strip()
    while rest:
        match = max((c for c in ALL_CASES if rest.startswith(c) and rest[len(c) :].lstrip()[:1] in ("", ",")),
                    key=len, default=None)
        if match is None:
            part, _, rest = rest.partition(",")
            if part.strip():
                unknown.append(part.strip())
        else:
            wanted.append(match)
            rest = rest[len(match) :].lstrip().removeprefix(",")
        rest = rest.strip()
    return wanted, unknown


def build_cases(series: int) -> list[Case]:
    cases: list[Case] = []

    def pair(kind: str, labelnames: tuple[str, ...] = ()) -> tuple[Any, Any, pc.CollectorRegistry]:
        name = _name(kind.lower())
        registry = pc.CollectorRegistry()
        peer = getattr(pc, kind)(name, "Benchmark.", labelnames, registry=registry)
        mine = getattr(fl.metrics, kind)(name, "Benchmark.", labelnames)
        return peer, mine, registry

    def same_value(sample: str, labels: dict[str, str], registry: pc.CollectorRegistry) -> Callable[[], str]:
        def check() -> str:
            a = registry.get_sample_value(sample, labels)
            b = fl.metrics.REGISTRY.get_sample_value(sample, labels)
            return "" if a is not None and b is not None and a > 0 and b > 0 else f"{sample}: {a} vs {b}"

        return check

    def add(name: str, stmt: str, peer: Any, mine: Any, check: Callable[[], str]) -> None:
        var = stmt.split(".", 1)[0]
        cases.append(Case(name, Side(stmt, {var: peer}), Side(stmt, {var: mine}), check, cleanup=[mine]))

    p, m, r = pair("Counter")
    add("Counter.inc()", "c.inc()", p, m, same_value(f"{p._name}_total", {}, r))

    p, m, r = pair("Counter", ("method", "code"))
    get_200 = {"method": "GET", "code": "200"}
    add(
        "labels(method=, code=).inc()",
        "c.labels(method='GET', code='200').inc()",
        p,
        m,
        same_value(f"{p._name}_total", get_200, r),
    )

    p, m, r = pair("Counter", ("method", "code"))
    add('labels("GET", "200").inc()', 'c.labels("GET", "200").inc()', p, m, same_value(f"{p._name}_total", get_200, r))

    p, m, r = pair("Histogram")
    add("Histogram.observe()", "h.observe(0.3)", p, m, same_value(f"{p._name}_count", {}, r))

    p, m, r = pair("Gauge")

    def gauge_check(p=p, m=m, r=r) -> str:
        a, b = r.get_sample_value(p._name), fl.metrics.REGISTRY.get_sample_value(m.name)
        return "" if a == b == 12.5 else f"{a} vs {b}"

    add("Gauge.set()", "g.set(12.5)", p, m, gauge_check)

    # exposition of one counter family with `series` label values
    p, m, r = pair("Counter", ("route",))
    for i in range(series):
        p.labels(f"/api/v1/item/{i}").inc(i)
        m.labels(f"/api/v1/item/{i}").inc(i)

    def expo_check(p=p, r=r) -> str:
        prefix = f"{p._name}_total{{"
        a = sum(1 for line in pc.generate_latest(r).decode().splitlines() if line.startswith(prefix))
        b = sum(1 for line in fl.metrics.exposition().splitlines() if line.startswith(prefix))
        return "" if a == b == series else f"{a} vs {b} series lines (expected {series})"

    cases.append(
        Case(
            "exposition",
            Side("f()", {"f": lambda r=r: pc.generate_latest(r)}),
            Side("f()", {"f": fl.metrics.exposition}),
            expo_check,
            size=f"{series:,} series",
            cleanup=[m],
        )
    )
    return cases


def instrumentation_case() -> Case:
    x = np.random.default_rng(1).standard_normal(1000)
    on = Side("f(x)", {"f": fl.ops.sum, "x": x}, lambda: fl.metrics.configure(enabled=True, prefix=_prefix()))
    off = Side("f(x)", {"f": fl.ops.sum, "x": x}, lambda: fl.metrics.configure(enabled=False, prefix=_prefix()))

    def check() -> str:
        return "" if np.isclose(fl.ops.sum(x), x.sum(), rtol=1e-12, atol=1e-12) else "fl.ops.sum differs from NumPy"

    # "peer" = instrumentation off, "mine" = on: ratio = off / on, overhead = on / off - 1
    return Case("instrumentation", off, on, check, size="fl.ops.sum 1e3 f64", peer_name="enabled=False")


def _prefix() -> str:
    return fl.metrics.settings()["prefix"]


# ---------------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": cores_available(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ferrolab": getattr(fl, "__version__", "?"),
        "prometheus_client": getattr(pc, "__version__", None) or dist_version("prometheus_client"),
        "loadavg_start": loadavg(),
    }


# ------------------------------------------------------------------------------------------------ tracing


def tracing_rows(smoke: bool) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Rows of benches/bench_tracing.py's ``run(smoke)`` when that file exists (it lives in another branch)."""
    path = Path(__file__).resolve().parent / "bench_tracing.py"
    if not path.exists():
        return None, None
    try:
        spec = importlib.util.spec_from_file_location("bench_tracing", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        run = getattr(mod, "run", None)
        if not callable(run):
            return None, "bench_tracing.py has no run(smoke)"
        rows = run(smoke)
        return [dict(r) for r in rows], None
    except Exception as exc:  # noqa: BLE001 - a broken neighbour must not break this benchmark
        traceback.print_exc()
        return None, f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------ output


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    return f"{s * 1e3:.2f} ms"


HEADER = ("case", "size", "peer", "peer time", "ferrolab time", "ratio", "target", "met", "check")


def print_rows(rows: list[dict[str, Any]]) -> None:
    lines = []
    for r in rows:
        if r["case"] == "instrumentation":
            ratio = f"{r['overhead_pct']:+.1f}%" if r["overhead_pct"] is not None else "-"
            target = f"<= {r['target']:g}%"
        else:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            target = f">= {r['target']:g}x" if r["target"] is not None else "-"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        peer_label = r["peer"]
        lines.append(
            (
                r["case"],
                r["size"],
                peer_label,
                _fmt_time(r["peer_s"]),
                _fmt_time(r["ferrolab_s"]),
                ratio,
                target,
                met,
                r["check"] if r["check"] == "ok" else f"*** {r['check']} ***",
            )
        )
    print_table(HEADER, lines, right={3, 4, 5, 6})


def print_tracing(rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], list | dict)]
    cells = [[str(r.get(k, "")) if not isinstance(r.get(k), float) else f"{r[k]:.4g}" for k in keys] for r in rows]
    print_table(keys, cells)


# ------------------------------------------------------------------------------------------------- main


def run_case(c: Case, repeat: int, min_time: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "case": c.name,
        "size": c.size,
        "peer": c.peer_name,
        "peer_s": None,
        "ferrolab_s": None,
        "ratio": None,
        "overhead_pct": None,
        "target": INSTRUMENTATION_TARGET_PCT if c.name == "instrumentation" else TARGETS.get(c.name),
        "met": None,
        "check": "ok",
        "check_detail": "",
    }
    try:
        t = time_sides(c.peer, c.mine, repeat, min_time)
        detail = c.check()  # after the loops: the statements must have had their effect on both sides
    except Exception as exc:  # noqa: BLE001 - a failing case must be reported, not abort the run
        row["check"] = "ERROR"
        row["check_detail"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        return row
    if detail:
        row["check"] = "MISMATCH"
        row["check_detail"] = detail
    row.update(pair_stats(t))
    peer_s, mine_s = row["peer_s"], row["ferrolab_s"]
    if c.name == "instrumentation":
        row["overhead_pct"] = (mine_s / peer_s - 1.0) * 100.0 if peer_s > 0 else None
        if row["overhead_pct"] is not None:
            row["met"] = row["overhead_pct"] <= INSTRUMENTATION_TARGET_PCT
    elif row["target"] is not None and row["ratio"] is not None:
        row["met"] = row["ratio"] >= row["target"]
    return row


# ----------------------------------------------------------------------------------------------- endpoints

_NOFILE = """
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard == resource.RLIM_INFINITY or soft < hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
"""

SERVERS = {
    "ferrolab": _NOFILE
    + """
import sys
import ferrolab as fl
srv = fl.metrics.serve(port=0)
print(srv.port, flush=True)
sys.stdin.read()
srv.stop()
""",
    "prometheus_client": _NOFILE
    + """
import sys
from prometheus_client import start_http_server
server, _ = start_http_server(0)
print(server.server_port, flush=True)
sys.stdin.read()
""",
}


def slow_client_rows(smoke: bool) -> list[dict[str, Any]]:
    """Scrapes against each endpoint, in a process of its own, under slow and idle clients."""
    import subprocess

    n = 20 if smoke else 1000
    duration = 1.5 if smoke else 10.0
    limit = raise_nofile(2 * n + 500)
    if limit < 2 * n + 200:
        n = max(10, (limit - 200) // 2)
        print(f"open-file limit {limit}: {n} slow + {n} idle clients", file=sys.stderr)
    path = [str(Path(fl.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    rows = []
    for name, script in SERVERS.items():
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            url = f"http://127.0.0.1:{port}/metrics"
            scrape_loop(url, 0.3)  # warm
            before = proc_status(proc.pid)
            with HostileClients(port, slow=n, idle=n, ramp=1.0) as load:
                time.sleep(1.0 if smoke else 3.0)
                r = scrape_loop(url, duration, interval=0.05, timeout=2.0)
                during = proc_status(proc.pid)
                reopened = load.closed_by_server
                connect_errors = load.connect_errors
        finally:
            proc.kill()
            proc.wait(30)
        ok_pct = 100.0 * r["ok"] / max(1, r["total"])
        met = ok_pct >= SLOW_CLIENT_TARGETS["ok_pct"] and (r["p99_ms"] or 1e9) < SLOW_CLIENT_TARGETS["p99_ms"]
        rows.append(
            {
                "server": name,
                "slow": n,
                "idle": n,
                "scrapes_ok": r["ok"],
                "scrapes": r["total"],
                "ok_pct": round(ok_pct, 1),
                "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"],
                "rss_mib_before": round(before.get("VmRSS", 0) / 1024, 1),
                "peak_rss_mib": round(during.get("VmHWM", 0) / 1024, 1),
                "threads_before": before.get("Threads"),
                "threads_under_load": during.get("Threads"),
                "connections_closed_by_server": reopened,
                "client_connect_errors": connect_errors,
                "met": met if name == "ferrolab" else None,
            }
        )
    return rows


def print_slow_client_rows(rows: list[dict[str, Any]]) -> None:
    print(
        f"\nslow clients: {rows[0]['slow']} slow-loris + {rows[0]['idle']} idle keep-alive; scrapes every 50 ms "
        f"(target for ferrolab: >= {SLOW_CLIENT_TARGETS['ok_pct']:g}% ok, p99 < {SLOW_CLIENT_TARGETS['p99_ms']:g} ms)"
    )
    print_table(
        ["server", "scrapes ok", "p50 ms", "p99 ms", "RSS MiB before", "peak RSS MiB", "threads before", "threads"],
        [
            [
                str(v)
                for v in (
                    r["server"],
                    f"{r['scrapes_ok']}/{r['scrapes']}",
                    r["p50_ms"],
                    r["p99_ms"],
                    r["rss_mib_before"],
                    r["peak_rss_mib"],
                    r["threads_before"],
                    r["threads_under_load"],
                )
            ]
            for r in rows
        ],
        right=range(1, 8),
    )


def gzip_row(series: int, repeat: int) -> dict[str, Any]:
    """The exposition of ``series`` counter series: rendered, and gzipped as the server does it."""
    c = fl.metrics.Counter(_name("gzip"), "Gzip bench.", ["key"])
    try:
        for i in range(series):
            c.labels(f"k{i}").inc(i)
        render, compress = [], []
        text = fl.metrics.exposition().encode()
        packed = fl._core._gzip(text)
        for _ in range(max(3, repeat)):
            t0 = time.perf_counter()
            text = fl.metrics.exposition().encode()
            t1 = time.perf_counter()
            packed = fl._core._gzip(text)
            t2 = time.perf_counter()
            render.append(t1 - t0)
            compress.append(t2 - t1)
    finally:
        fl.metrics.REGISTRY.unregister(c)
    render.sort()
    compress.sort()
    r_s, c_s = render[len(render) // 2], compress[len(compress) // 2]
    cost = c_s / r_s
    return {
        "series": series,
        "bytes": len(text),
        "gzip_bytes": len(packed),
        "shrink": round(len(text) / len(packed), 1),
        "render_ms": round(1e3 * r_s, 3),
        "gzip_ms": round(1e3 * c_s, 3),
        "cost_ratio": round(cost, 2),
        "met": cost < GZIP_TARGET_COST and len(packed) < len(text),
    }


def print_gzip_row(g: dict[str, Any]) -> None:
    print(
        f"\ngzip of the exposition ({g['series']:,} series): {g['bytes']:,} -> {g['gzip_bytes']:,} bytes "
        f"({g['shrink']}x smaller); render {g['render_ms']} ms, gzip {g['gzip_ms']} ms: cost {g['cost_ratio']}x the "
        f"render (target < {GZIP_TARGET_COST:g}x)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny repetition counts and 1,000 series: a few seconds")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the JSON (default bench-results/bench_metrics.json, "
        "bench-results/bench_metrics_smoke.json with --smoke)",
    )
    p.add_argument("--repeat", type=int, default=None, help="repetitions per side (median; default 9, 3 with --smoke)")
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds one repetition must last at least (default 0.1; 0.002 with --smoke)",
    )
    p.add_argument("--cases", default=None, help=f"comma-separated subset of: {','.join(ALL_CASES)}")
    args = p.parse_args(argv)
    if args.cases:
        wanted, unknown = parse_cases(args.cases)
        if unknown:
            p.error(f"unknown case(s) {unknown}; choose from {','.join(ALL_CASES)}")
    else:
        wanted = list(ALL_CASES)
    repeat = args.repeat if args.repeat is not None else (3 if args.smoke else 9)
    if repeat < 1:
        p.error("--repeat must be >= 1")
    min_time = args.min_time if args.min_time is not None else (0.002 if args.smoke else 0.1)
    out_path = json_path(args.json, "bench_metrics", args.smoke)
    series = SMOKE_SERIES if args.smoke else FULL_SERIES

    info = machine_info()
    settings_before = fl.metrics.settings()
    print(f"ferrolab {info['ferrolab']} vs prometheus_client {info['prometheus_client']}, Python {info['python']}")
    print(
        f"{info['cpu_model']}, {info['cores_available']} cores available; median of {repeat} repetition(s), each "
        f">= {min_time * 1e3:g} ms or one call; ratio = prometheus_client / ferrolab (> 1: ferrolab faster)\n"
    )
    warn_if_loaded(info["loadavg_start"], info["cores_available"])
    sys.stdout.flush()

    t_start = time.perf_counter()
    built = build_cases(series) + [instrumentation_case()]
    cases = [c for c in built if c.name in wanted]
    rows = []
    slow_rows: list[dict[str, Any]] = []
    gz: dict[str, Any] | None = None
    try:
        for c in cases:
            rows.append(run_case(c, repeat, min_time))
            if not args.smoke:
                r = rows[-1]
                shown = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
                print(f"  {r['case']:<32} {shown:>9}  {r['check']}", file=sys.stderr, flush=True)
    finally:
        fl.metrics.configure(**settings_before)
        for c in built:
            for m in c.cleanup:
                try:
                    fl.metrics.REGISTRY.unregister(m)
                except KeyError:
                    pass
    if "gzip" in wanted:
        gz = gzip_row(series, repeat)
    if "slow_clients" in wanted:
        slow_rows = slow_client_rows(args.smoke)
    log_row: dict[str, Any] | None = None
    if "disabled_log" in wanted:
        from ferrolab import _core

        n = 100_000 if args.smoke else 20_000_000
        runs = sorted(_core._log_disabled_event_ns(n) for _ in range(1 if args.smoke else repeat))
        ns = runs[len(runs) // 2]
        log_row = {
            "events": n,
            "ns_per_event": ns,
            "target_ns": DISABLED_LOG_TARGET_NS,
            "met": ns <= DISABLED_LOG_TARGET_NS,
        }
    trace_rows, trace_error = tracing_rows(args.smoke)
    elapsed = time.perf_counter() - t_start
    info["loadavg_end"] = loadavg()

    if rows:
        print_rows(rows)
    if gz is not None:
        print_gzip_row(gz)
    if slow_rows:
        print_slow_client_rows(slow_rows)
    if log_row is not None:
        print(
            f"\ndisabled log event (a core tracing event below every output's level): {log_row['ns_per_event']:.2f} ns"
            f" per event (target <= {DISABLED_LOG_TARGET_NS:g} ns {'ok' if log_row['met'] else 'MISSED'})"
        )
    if trace_rows is not None:
        print("\nbench_tracing.py:")
        print_tracing(trace_rows)
    elif trace_error:
        print(f"\nbench_tracing.py failed: {trace_error}")
    bad = [r for r in rows if r["check"] != "ok"]
    missed = [r["case"] for r in rows if r["met"] is False]
    if gz is not None and not gz["met"]:
        missed.append("gzip")
    if any(r["met"] is False for r in slow_rows):
        missed.append("slow_clients")
    if log_row is not None and not log_row["met"]:
        missed.append("disabled_log")
    print(f"\n{len(rows)} cases in {elapsed:.1f} s; targets missed: {', '.join(missed) if missed else 'none'}.")
    if bad:
        print(f"\n!!! {len(bad)} case(s) failed their check:", file=sys.stderr)
        for r in bad:
            print(f"!!!   {r['case']}: {r['check']} {r['check_detail']}", file=sys.stderr)

    doc = {
        **doc_header("bench_metrics", argv, args.smoke),
        "repeat": repeat,
        "min_time_s": min_time,
        "series": series,
        "elapsed_s": elapsed,
        "machine": info,
        "ratio": "peer_s / ferrolab_s (> 1 means ferrolab is faster); instrumentation: overhead_pct = "
        "(enabled / disabled - 1) * 100",
        "cases": [r["case"] for r in rows],
        "failures": len(bad),
        "targets_missed": missed,
        "rows": rows,
        "gzip": gz,
        "slow_client_rows": slow_rows,
        "disabled_log": log_row,
        "tracing_rows": trace_rows,
        "tracing_error": trace_error,
    }
    write_json(out_path, doc)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
