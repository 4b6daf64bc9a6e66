"""The ``ferrolab`` command line (also ``python -m ferrolab``).

Exit codes: 0 ok, 1 a check failed (unhealthy) or the command could not complete, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .health import HealthReport


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(size=args.size, repeat=args.repeat)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import gpu
    from .runtime import num_threads, simd_level

    print(
        json.dumps(
            {"version": __version__, "simd": simd_level(), "threads": num_threads(), "gpu": gpu.info()},
            indent=2,
        )
    )
    return 0


def _health_table(report: HealthReport) -> str:
    rows = [
        (name, r.status.value, f"{r.duration_seconds:.3f}s", " ".join(r.message.split()))
        for name, r in report.checks.items()
    ]
    lines = []
    if rows:
        header = ("CHECK", "STATUS", "TIME", "MESSAGE")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    else:
        lines.append("no health checks registered")
    n = len(rows)
    lines.append(f"overall: {report.status.value} ({n} check{'' if n == 1 else 's'}, {report.duration_seconds:.3f}s)")
    return "\n".join(line.rstrip() for line in lines)


def _cmd_health(args: argparse.Namespace) -> int:
    from . import health

    if args.imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory can be imported
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported the same way
            print(f"ferrolab health: cannot import {module!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    report = health.run()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(_health_table(report))
    return 0 if report.ok else 1


def _cmd_monitoring(args: argparse.Namespace) -> int:
    from .monitoring import ALERT_RULES_FILE, ALERT_TESTS_FILE, DASHBOARD_FILE, write_monitoring

    if not args.force:
        existing = [os.path.join(args.directory, n) for n in (ALERT_RULES_FILE, ALERT_TESTS_FILE, DASHBOARD_FILE)]
        existing = [p for p in existing if os.path.lexists(p)]
        if existing:
            print(f"ferrolab monitoring: already exists: {', '.join(existing)} (use --force to overwrite)",
                  file=sys.stderr)
            return 1
    try:
        paths = write_monitoring(args.directory, overwrite=args.force)
    except OSError as exc:
        print(f"ferrolab monitoring: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from . import metrics

    if args.imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported the same way
            print(f"ferrolab serve: cannot import {module!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        print(f"ferrolab serve: environment variable {args.token_env} is empty or unset", file=sys.stderr)
        return 2
    try:
        server = metrics.serve(args.host, args.port, token=token)
    except OSError as exc:
        print(f"ferrolab serve: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"serving {server.url}/metrics, /health and /ready (Ctrl-C stops)", flush=True)
        done.wait(args.duration)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferrolab", description="ferrolab: native kernels and ops tooling")
    p.add_argument("--version", action="version", version=f"ferrolab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="run a small instrumented pipeline and compare it with NumPy")
    d.add_argument("--size", type=int, default=2_000_000, help="number of sensor readings (default 2,000,000)")
    d.add_argument("--repeat", type=int, default=3, help="timing repetitions per step (best is shown)")
    d.set_defaults(func=_cmd_demo)
    i = sub.add_parser("info", help="print version, SIMD level, threads and GPU availability as JSON")
    i.set_defaults(func=_cmd_info)
    h = sub.add_parser(
        "health",
        help="run the health checks of the default registry (exit 1 when unhealthy)",
        description="Run the checks of ferrolab.health.default_registry() and print the report. "
        "Exit status: 0 healthy or warning, 1 unhealthy, 2 usage error.",
    )
    h.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    h.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, so that the checks it registers run (repeatable)",
    )
    h.set_defaults(func=_cmd_health)
    m = sub.add_parser(
        "monitoring",
        help="write the Prometheus alert rules, their promtool tests and the Grafana dashboard into DIR",
        description="Write ferrolab-alerts.yml, ferrolab-alerts.test.yml and ferrolab-dashboard.json into DIR "
        "(created if needed). Check them with: promtool test rules DIR/ferrolab-alerts.test.yml",
    )
    m.add_argument("directory", metavar="DIR", help="target directory")
    m.add_argument("--force", action="store_true", help="overwrite files that exist")
    m.set_defaults(func=_cmd_monitoring)
    s = sub.add_parser(
        "serve",
        help="serve /metrics, /health and /ready until interrupted",
        description="Serve the Prometheus exposition (/metrics), the health report (/health: 200 or 503) and /ready "
        "from native threads until SIGINT/SIGTERM (or --duration seconds).",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=9464, help="port (default 9464; 0 picks a free one)")
    s.add_argument(
        "--token-env",
        metavar="VAR",
        help="require 'Authorization: Bearer <token>' with the token read from environment variable VAR",
    )
    s.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    s.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (its metrics and health checks are then served; repeatable)",
    )
    s.set_defaults(func=_cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "size", 1) < 1 or getattr(args, "repeat", 1) < 1:
        parser.error("--size and --repeat must be positive")
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
