"""GPU benchmark: ferrolab's GPU reductions side by side with PyTorch and CuPy on the same GPU, in one process.

What is measured today (the GPU paths that exist): NumPy-in / NumPy-out whole-array reductions (sum, mean, var,
norm, argmax) at several sizes, against ``torch.from_numpy(x).cuda().<op>().item()`` and CuPy's
``cp.asarray(x).<op>()`` (same data, same device), with the effective GB/s (input bytes over the call's wall time)
and the device-to-device copy bandwidth measured in the same run for scale. Device-resident rows (data already on
the GPU) need ferrolab's device arrays, which are not built yet: they are listed as such.

    python benches/bench_gpu.py [--quick] [--smoke] [--json PATH]

Without a usable GPU it prints the reason, writes that to the JSON and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import _common
import numpy as np

fl = _common.import_ferrolab()


def median_time(fn: Callable[[], Any], repeat: int, min_time: float) -> float:
    fn()  # warm-up: kernel compilation, context, allocator
    times = []
    for _ in range(repeat):
        loops, t = 0, 0.0
        t0 = time.perf_counter()
        while t < min_time or loops == 0:
            fn()
            loops += 1
            t = time.perf_counter() - t0
        times.append(t / loops)
    times.sort()
    return times[len(times) // 2]


def peers() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            out["torch"] = torch
    except ImportError:
        pass
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        out["cupy"] = cupy
    except Exception:  # noqa: BLE001 - absent or without a device
        pass
    return out


def d2d_bandwidth(torch: Any, nbytes: int) -> float:
    """GB/s of a device-to-device copy (read + write) of ``nbytes``, with PyTorch."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t = median_time(lambda: (b.copy_(a), torch.cuda.synchronize()), 5, 0.05)
    return 2 * nbytes / t / 1e9


# op -> (the NumPy reference in float64, PyTorch's, CuPy's)
OPS: dict[str, tuple[Callable[[np.ndarray], float], Callable[[Any], Any], Callable[[Any], Any]]] = {
    "sum": (np.sum, lambda t: t.sum(), lambda c: c.sum()),
    "mean": (np.mean, lambda t: t.mean(), lambda c: c.mean()),
    "var": (np.var, lambda t: t.var(correction=0), lambda c: c.var()),
    "norm": (np.linalg.norm, lambda t: t.norm(), lambda c: (c * c).sum() ** 0.5),
    "argmax": (np.argmax, lambda t: t.argmax(), lambda c: c.argmax()),
}


def row_for(name: str, x: np.ndarray, found: dict[str, Any], repeat: int, min_time: float) -> dict[str, Any]:
    ref_op, t_op, c_op = OPS[name]
    fn = getattr(fl.ops, name)
    mine = median_time(lambda: fn(x, device="cuda"), repeat, min_time)
    got, ref = float(fn(x, device="cuda")), float(ref_op(x.astype(np.float64)))
    row: dict[str, Any] = {
        "op": name,
        "size": x.size,
        "dtype": str(x.dtype),
        "input": "numpy",
        "ferrolab_s": mine,
        "ferrolab_gbps": x.nbytes / mine / 1e9,
        "check": "ok" if np.isclose(got, ref, rtol=1e-4) else f"mismatch {got} vs {ref}",
    }
    if "torch" in found:
        torch = found["torch"]
        t = median_time(lambda: t_op(torch.from_numpy(x).cuda()).item(), repeat, min_time)
        row.update(torch_s=t, ratio_vs_torch=t / mine)
    if "cupy" in found:
        cp = found["cupy"]
        t = median_time(lambda: float(c_op(cp.asarray(x))), repeat, min_time)
        row.update(cupy_s=t, ratio_vs_cupy=t / mine)
    return row


def run(sizes: list[int], repeat: int, min_time: float) -> list[dict[str, Any]]:
    found = peers()
    rows = []
    for n in sizes:
        x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        rows.extend(row_for(name, x, found, repeat, min_time) for name in OPS)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="sizes 1e6 and 1e7 (about a minute)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition (for CI)")
    p.add_argument("--json", metavar="PATH", help="where to write the JSON (default bench-results/bench_gpu.json)")
    args = p.parse_args(argv)
    info = fl.gpu.info()
    doc: dict[str, Any] = _common.doc_header("bench_gpu", argv, args.smoke)
    doc.update(
        machine={
            "cpu_model": _common.cpu_model(),
            "cores": os.cpu_count(),
            "loadavg": _common.loadavg(),
            "numpy": np.__version__,
            "ferrolab": fl.__version__,
        },
        gpu=info,
        rows=[],
    )
    out = _common.json_path(args.json, "bench_gpu", args.smoke)
    if not info["available"]:
        print(f"no usable GPU: {info['reason']}")
        _common.write_json(out, doc)
        return 0
    sizes = [1000, 100_000] if args.smoke else [10**6, 10**7] if args.quick else [10**3, 10**6, 10**7, 10**8]
    repeat, min_time = (1, 0.001) if args.smoke else (5, 0.1)
    found = peers()
    if "torch" in found:
        doc["d2d_copy_gbps"] = d2d_bandwidth(found["torch"], 1 << 30 if not args.smoke else 1 << 20)
        print(f"device-to-device copy: {doc['d2d_copy_gbps']:.0f} GB/s")
    doc["rows"] = run(sizes, repeat, min_time)
    doc["not_built"] = [
        "device-resident rows (fl.gpu.asarray / DLPack)",
        "axpy, standardize, adam_step on the GPU",
        "matmul and cdist (cuBLAS)",
    ]
    print(f"{'op':8} {'size':>10} {'ferrolab':>10} {'GB/s':>7} {'torch':>10} {'x torch':>8} {'cupy':>10} {'x cupy':>7}")
    for r in doc["rows"]:
        print(
            f"{r['op']:8} {r['size']:>10} {r['ferrolab_s'] * 1e3:>8.3f}ms {r['ferrolab_gbps']:>7.1f} "
            f"{r.get('torch_s', float('nan')) * 1e3:>8.3f}ms {r.get('ratio_vs_torch', float('nan')):>7.2f}x "
            f"{r.get('cupy_s', float('nan')) * 1e3:>8.3f}ms {r.get('ratio_vs_cupy', float('nan')):>6.2f}x  {r['check']}"
        )
    _common.write_json(out, doc)
    return 0 if all(r["check"] == "ok" for r in doc["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
