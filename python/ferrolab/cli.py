"""The ``ferrolab`` command line (also ``python -m ferrolab``).

Exit codes: 0 ok, 1 a check failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__


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
