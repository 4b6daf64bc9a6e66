"""fl.dask side by side with dask.array's own reductions on the same distributed.LocalCluster (two worker processes).

The array (float64, ``--size`` elements, default 2e8 = 1.6 GB) is generated on the workers with ``da.random`` and
persisted there, so neither side pays for shipping it; each timed run is end to end from the client: building the
graph, scheduling, the work on the workers and bringing the (small) result back. ``standardize`` persists its
full-size result on the workers (and drops it after the run).

Cases (ratio = dask.array seconds / ferrolab seconds, medians of ``--repeat`` runs, the two sides interleaved):

* ``var``, ``std``: ``x.var()`` / ``x.std()`` vs ``fl.dask.var(x)`` / ``fl.dask.std(x)``;
* ``standardize``: ``(x - x.mean()) / x.std()`` vs ``fl.dask.standardize(x)``;
* ``quantile``: ``da.percentile(x, [25, 50, 75])`` (dask's own, an approximation merged from per-chunk
  percentiles) vs ``fl.dask.quantile(x, [0.25, 0.5, 0.75])`` (exact).

Each worker runs one task at a time (``threads_per_worker=1``) and ferrolab's kernels one thread per worker
(``FERROLAB_NUM_THREADS=1``), so both sides use the same two cores.

    python benches/bench_dask.py [--size 2e8] [--chunk 1e7] [--repeat 5] [--smoke] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

from _common import (
    cores_available,
    cpu_model,
    dist_version,
    doc_header,
    json_path,
    loadavg,
    looped,
    pair_stats,
    print_table,
    time_pair,
    write_json,
)
from _common import import_ferrolab as _import_ferrolab

fl = _import_ferrolab()

import numpy as np  # noqa: E402

try:
    import dask.array as da  # noqa: E402
    import distributed  # noqa: E402
    from dask.graph_manipulation import clone  # noqa: E402
except ImportError as e:  # pragma: no cover
    sys.exit(f"bench_dask.py needs dask[distributed]: pip install 'ferrolab[dask]' ({e})")


def cases(x: Any) -> list[tuple[str, Any, Any, str]]:
    """(name, dask.array expression, fl.dask expression, how the result is taken)."""
    qs = [0.25, 0.5, 0.75]
    return [
        ("var", x.var(), fl.dask.var(x), "compute"),
        ("std", x.std(), fl.dask.std(x), "compute"),
        ("standardize", (x - x.mean()) / x.std(), fl.dask.standardize(x), "persist"),
        ("quantile", da.percentile(x, [100 * q for q in qs]), fl.dask.quantile(x, qs), "compute"),
    ]


def runner(client: Any, expr: Any, how: str, x: Any) -> Any:
    def once() -> Any:
        if how == "persist":
            # a copy of the graph with fresh keys (the persisted input x kept), so that a run never finds the
            # result of the previous one still in memory
            r = client.persist(clone(expr, omit=x))
            distributed.wait(r)
            del r
            return None
        return client.compute(expr, sync=True)

    return once


def check(name: str, peer: Any, mine: Any, ref: dict[str, Any] | None) -> tuple[str, str]:
    """ok/mismatch against NumPy (``ref``, smoke sizes) or against dask.array's result."""
    if name == "standardize":
        if ref is None:
            return "ok", "persisted on the workers"
        good = np.allclose(np.asarray(mine), ref["standardize"], rtol=1e-9, atol=1e-12)
        return ("ok" if good else "mismatch"), "vs NumPy"
    mine = np.asarray(mine)
    if ref is not None:
        want = np.asarray(ref[name])
        exact = name == "quantile"
        good = np.array_equal(mine, want) if exact else np.allclose(mine, want, rtol=1e-9)
        return ("ok" if good else "mismatch"), f"vs NumPy{' (exact)' if exact else ''}"
    if name == "quantile":  # dask's percentile is an approximation: report how far it is from the exact value
        return "ok", f"dask.percentile max abs. diff {float(np.max(np.abs(mine - np.asarray(peer)))):.1e}"
    rel = float(np.max(np.abs(mine - np.asarray(peer)) / np.maximum(np.abs(mine), 1e-300)))
    return ("ok" if rel < 1e-9 else "mismatch"), f"rel. diff to dask {rel:.1e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=float, default=2e8, help="elements of the float64 array (default 2e8 = 1.6 GB)")
    p.add_argument("--chunk", type=float, default=1e7, help="elements per chunk (default 1e7)")
    p.add_argument("--repeat", type=int, default=None, help="runs per side (median; default 5, 1 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="a tiny array, every case once: for CI")
    p.add_argument("--json", default=None, help="where to write the JSON (default bench-results/bench_dask.json)")
    args = p.parse_args(argv)
    size, chunk = (200_000, 50_000) if args.smoke else (int(args.size), int(args.chunk))
    repeat = args.repeat or (1 if args.smoke else 5)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            env={"FERROLAB_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        )
    client = distributed.Client(cluster)
    rows = []
    t_start = time.perf_counter()
    try:
        x = da.random.default_rng(42).standard_normal(size, chunks=chunk).persist()
        distributed.wait(x)
        ref = None
        if args.smoke:
            a = x.compute()
            ref = {"var": a.var(), "std": a.std(), "quantile": np.quantile(a, [0.25, 0.5, 0.75])}
            ref["standardize"] = (a - a.mean()) / a.std()
        print(f"bench_dask: {size:.3g} float64 elements ({size * 8 / 1e9:.2f} GB) in chunks of {chunk:.3g}, 2 workers")
        for name, peer_expr, mine_expr, how in cases(x):
            peer, mine = runner(client, peer_expr, how, x), runner(client, mine_expr, how, x)
            peer_res, mine_res = peer(), mine()  # also the warm-up
            t = time_pair(looped(peer), looped(mine), repeat, 0.0)
            if how == "persist" and ref is not None:
                mine_res = client.compute(mine_expr, sync=True)
            status, detail = check(name, peer_res, mine_res, ref)
            row = {"op": name, "size": size, "chunk": chunk, "peer": "dask.array", **pair_stats(t)}
            row.update(check=status, check_detail=detail)
            rows.append(row)
            print(f"  {name}: dask {row['peer_s']:.3f} s, ferrolab {row['ferrolab_s']:.3f} s, x{row['ratio']:.2f}")
    finally:
        client.close()
        cluster.close()

    header = ["op", "size", "dask.array s", "fl.dask s", "ratio", "check"]
    lines = [
        [r["op"], f"{r['size']:.3g}", f"{r['peer_s']:.3f}", f"{r['ferrolab_s']:.3f}", f"{r['ratio']:.2f}", r["check"]]
        for r in rows
    ]
    print_table(header, lines, right={1, 2, 3, 4})
    doc = {
        **doc_header("bench_dask", argv, args.smoke),
        "size": size,
        "chunk": chunk,
        "repeat": repeat,
        "workers": 2,
        "threads_per_worker": 1,
        "rows": rows,
        "mismatches": sum(r["check"] != "ok" for r in rows),
        "elapsed_s": time.perf_counter() - t_start,
        "machine": {
            "cpu_model": cpu_model(),
            "cores": cores_available(),
            "loadavg": loadavg(),
            "numpy": np.__version__,
            "dask": dist_version("dask"),
            "distributed": dist_version("distributed"),
            "ferrolab": fl.__version__,
            "simd_level": fl.simd_level(),
        },
    }
    write_json(json_path(args.json, "bench_dask", args.smoke), doc)
    return 1 if doc["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
