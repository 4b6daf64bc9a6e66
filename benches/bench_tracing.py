#!/usr/bin/env python3
"""Side-by-side benchmark of ``fl.tracing`` spans against the opentelemetry-python SDK.

Cases, each timed in one process, interleaved (peer, ferrolab, ferrolab, peer, ...) with :mod:`timeit` (the
statement is compiled into the timing loop, garbage collector off; a loop count per side so that one repetition
lasts at least ``--min-time``; per-execution time = median over ``--repeat`` repetitions):

* ``span sampled``: ``with fl.tracing.span("x", k=1): pass`` (in-memory pipeline, ratio 1.0) vs the SDK's
  ``with tracer.start_as_current_span("x", attributes={"k": 1}): pass`` with a ``SimpleSpanProcessor`` and an
  ``InMemorySpanExporter`` (both buffers are emptied between repetitions, outside the timing);
* ``span unsampled``: the same with ``sample_ratio=0.0`` vs the SDK's ``TraceIdRatioBased(0.0)``;
* ``ops.sum(1e3) in span``: ``fl.ops.sum`` of 1,000 float64 with a sampled span open (each call records a child
  span ``ferrolab.sum``) vs the same call with no span open: the cost of an op span;
* ``ops.sum(1e3) in unsampled span``: the same under an unsampled span vs no span (no op span is recorded).

    python benches/bench_tracing.py                 # table + bench-results/bench_tracing.json
    python benches/bench_tracing.py --smoke         # quick run for CI
    python benches/bench_tracing.py --json bench-results/bench_tracing.json --repeat 11

Columns: ``ratio = peer time / ferrolab time`` (> 1: ferrolab is faster). Targets: sampled >= 10x,
unsampled >= 20x; the op-span rows show the overhead (ratio < 1). opentelemetry-python is imported, so every
ferrolab root span also checks for a current OpenTelemetry span, as it does in an application using both.

Other benchmark files can ``from bench_tracing import run`` (``run(smoke) -> list of row dicts``).
"""

from __future__ import annotations

import argparse
import contextvars
import os
import platform
import sys
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import import_ferrolab, json_path, loadavg, pair_stats, print_table, time_pair, write_json
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

fl = import_ferrolab()

TARGETS = {"span sampled": 10.0, "span unsampled": 20.0}
OP_SIZE = 1000


def time_timers(
    peer: timeit.Timer,
    mine: timeit.Timer,
    repeat: int,
    min_time: float,
    reset: Callable[[], Any] = lambda: None,
    peer_ctx: contextvars.Context | None = None,
    mine_ctx: contextvars.Context | None = None,
) -> dict[str, Any]:
    """Interleaved timing of two statements (timeit: compiled into the timing loop, garbage collector off);
    per-execution seconds of every repetition for each.

    Each side's loops run in its own context (default: a copy of the caller's), so that a span can be open on
    one side only. ``reset`` runs before every repetition, outside the timing.
    """
    pctx = peer_ctx if peer_ctx is not None else contextvars.copy_context()
    mctx = mine_ctx if mine_ctx is not None else contextvars.copy_context()

    def in_context(timer: timeit.Timer, ctx: contextvars.Context) -> Callable[[int], float]:
        def run(number: int) -> float:
            reset()
            return ctx.run(timer.timeit, number)

        return run

    # timeit turns the garbage collector off during its loops
    return time_pair(in_context(peer, pctx), in_context(mine, mctx), repeat, min_time, disable_gc=False)


def _sdk_tracer(ratio: float | None) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider() if ratio is None else TracerProvider(sampler=TraceIdRatioBased(ratio))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("bench"), exporter


def _row(case: str, peer: str, size: str, t: dict[str, Any]) -> dict[str, Any]:
    s = pair_stats(t)
    target = TARGETS.get(case)
    ratio = s["ratio"]
    return {
        "case": case,
        "peer": peer,
        "size": size,
        "peer_s": s["peer_s"],
        "ferrolab_s": s["ferrolab_s"],
        "ratio": ratio,
        "target": target,
        "meets_target": None if target is None or ratio is None else ratio >= target,
        "peer_times_s": s["peer_times_s"],
        "ferrolab_times_s": s["ferrolab_times_s"],
        "peer_loops": s["peer_loops"],
        "ferrolab_loops": s["ferrolab_loops"],
    }


SDK_SPAN = 'with tracer.start_as_current_span("x", attributes={"k": 1}):\n    pass'
FL_SPAN = 'with span("x", k=1):\n    pass'


def span_case(sampled: bool, repeat: int, min_time: float) -> dict[str, Any]:
    ratio = 1.0 if sampled else 0.0
    fl.tracing.configure("bench", sample_ratio=ratio)
    tracer, exporter = _sdk_tracer(None if sampled else 0.0)
    peer = timeit.Timer(SDK_SPAN, globals={"tracer": tracer})
    mine = timeit.Timer(FL_SPAN, globals={"span": fl.tracing.span})

    def reset() -> None:
        exporter.clear()
        fl.tracing.finished_spans(clear=True)

    # both sides record (or drop) what they should
    reset()
    peer.timeit(1)
    mine.timeit(1)
    assert len(exporter.get_finished_spans()) == (1 if sampled else 0)
    assert len(fl.tracing.finished_spans()) == (1 if sampled else 0)
    t = time_timers(peer, mine, repeat, min_time, reset)
    reset()
    case = "span sampled" if sampled else "span unsampled"
    peer_name = "opentelemetry-sdk " + ("(always on)" if sampled else "TraceIdRatioBased(0.0)")
    return _row(case, peer_name, "1 span", t)


def op_case(sampled: bool, repeat: int, min_time: float) -> dict[str, Any]:
    fl.tracing.configure("bench", sample_ratio=1.0 if sampled else 0.0)
    x = np.random.default_rng(1).standard_normal(OP_SIZE)
    call = timeit.Timer("fsum(x)", globals={"fsum": fl.ops.sum, "x": x})

    def reset() -> None:
        fl.tracing.finished_spans(clear=True)

    outside = contextvars.copy_context()
    inside = contextvars.copy_context()
    enclosing = fl.tracing.span("enclosing")
    inside.run(enclosing.__enter__)  # the span is open, and current in `inside` only
    assert enclosing.is_recording == sampled
    reset()
    inside.run(call.timeit, 1)
    assert len(fl.tracing.finished_spans()) == (1 if sampled else 0)
    reset()
    outside.run(call.timeit, 1)
    assert fl.tracing.finished_spans() == []
    t = time_timers(call, call, repeat, min_time, reset, peer_ctx=outside, mine_ctx=inside)
    inside.run(enclosing.__exit__, None, None, None)
    reset()
    case = f"ops.sum(1e3) in {'sampled' if sampled else 'unsampled'} span"
    return _row(case, "fl.ops.sum, no span open", f"{OP_SIZE} float64", t)


def run(smoke: bool = False, repeat: int | None = None, min_time: float | None = None) -> list[dict[str, Any]]:
    """All cases; ``smoke`` uses one repetition of about 1 ms per side (for CI)."""
    rep = repeat if repeat is not None else (1 if smoke else 7)
    mt = min_time if min_time is not None else (0.001 if smoke else 0.05)
    rows = [
        span_case(True, rep, mt),
        span_case(False, rep, mt),
        op_case(True, rep, mt),
        op_case(False, rep, mt),
    ]
    fl.tracing.shutdown()
    return rows


def _fmt_t(s: float) -> str:
    return f"{s * 1e9:,.0f} ns" if s < 1e-5 else f"{s * 1e6:,.1f} us"


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = ("case", "size", "peer", "peer", "ferrolab", "ratio", "target")
    lines = [
        (
            r["case"],
            r["size"],
            r["peer"],
            _fmt_t(r["peer_s"]),
            _fmt_t(r["ferrolab_s"]),
            f"{r['ratio']:.2f}x",
            "-" if r["target"] is None else f">= {r['target']:.0f}x " + ("ok" if r["meets_target"] else "MISSED"),
        )
        for r in rows
    ]
    print_table(header, lines, right={3, 4, 5})


def machine_info() -> dict[str, Any]:
    import opentelemetry.sdk.version as sdk_version

    return {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "ferrolab": fl.__version__,
        "opentelemetry_sdk": sdk_version.__version__,
        "loadavg": loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="one short repetition per side (for CI)")
    p.add_argument("--json", metavar="PATH", help="where to write the JSON (default bench-results/bench_tracing.json)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions per side (median; default 7, 1 with --smoke)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per repetition at least (default 0.05)")
    args = p.parse_args(argv)
    machine = machine_info()
    rows = run(args.smoke, args.repeat, args.min_time)
    print_rows(rows)
    doc = {"smoke": args.smoke, "machine": machine, "rows": rows}
    write_json(json_path(args.json, "bench_tracing", smoke=False), doc, indent=2, prefix="\n")  # one default name
    return 0


if __name__ == "__main__":
    sys.exit(main())
