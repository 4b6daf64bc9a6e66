"""The GPU paths on a real CUDA device (marked ``gpu``; skipped, with the reason, where no GPU is usable).

Self-contained (no conftest helpers, no hypothesis) so that ``tools/gpu_check.sh`` can run it with
``--noconftest`` on a GPU machine that has only NumPy, PyTorch and pytest. Compared with NumPy: every GPU op, float32
and float64, sizes around the block and grid boundaries, NaN and inf; plus the device list, the memory series, the
kernel cache and 8 threads calling at once.
"""

from __future__ import annotations

import concurrent.futures
import os

import ferrolab as fl
import numpy as np
import pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not fl.gpu.is_available(), reason=f"no usable GPU: {fl.gpu.info()['reason']}"),
]

SIZES = [1, 7, 255, 256, 257, 4096 + 3, 1 << 20, (1 << 22) + 11]
OPS = {
    "sum": (lambda x, d: fl.ops.sum(x, device=d), np.sum),
    "mean": (lambda x, d: fl.ops.mean(x, device=d), np.mean),
    "min": (lambda x, d: fl.ops.min(x, device=d), np.min),
    "max": (lambda x, d: fl.ops.max(x, device=d), np.max),
    "argmin": (lambda x, d: fl.ops.argmin(x, device=d), np.argmin),
    "argmax": (lambda x, d: fl.ops.argmax(x, device=d), np.argmax),
    "norm": (lambda x, d: fl.ops.norm(x, device=d), np.linalg.norm),
    "var": (lambda x, d: fl.ops.var(x, ddof=1, device=d), lambda x: np.var(x, ddof=1)),
    "std": (lambda x, d: fl.ops.std(x, device=d), np.std),
}


def data(n: int, dtype: str, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 10 + 3).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_op_matches_numpy(op: str, n: int, dtype: str) -> None:
    x = data(n, dtype)
    if op in ("var",) and n == 1:
        pytest.skip("ddof=1 of one element: the CPU path warns (not a GPU case)")
    ours, ref = OPS[op]
    got = ours(x, "cuda")
    cpu = ours(x, "cpu")
    assert type(got) is type(cpu)
    if op in ("argmin", "argmax", "min", "max"):
        assert got == ref(x)
    else:
        rtol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(got, cpu, rtol=rtol)
        np.testing.assert_allclose(got, ref(x.astype(np.float64)), rtol=max(rtol, 1e-6 if dtype == "float32" else 0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_and_inf_follow_numpy(dtype: str) -> None:
    x = data(100_003, dtype)
    x[5000] = np.nan
    x[90_000] = np.nan
    for op in ("sum", "mean", "min", "max", "var"):
        assert np.isnan(OPS[op][0](x, "cuda")), op
    assert fl.ops.argmin(x, device="cuda") == np.argmin(x) == 5000
    assert fl.ops.argmax(x, device="cuda") == np.argmax(x) == 5000
    y = data(100_003, dtype)
    y[7] = np.inf
    y[8] = -np.inf
    assert fl.ops.max(y, device="cuda") == np.inf and fl.ops.min(y, device="cuda") == -np.inf
    assert fl.ops.argmax(y, device="cuda") == 7 and fl.ops.argmin(y, device="cuda") == 8
    z = np.zeros(1000, dtype)
    z[[3, 500]] = 5  # ties: the first index, as NumPy
    assert fl.ops.argmax(z, device="cuda") == 3


def test_devices_and_memory_series() -> None:
    info = fl.gpu.info()
    assert info["available"] and info["devices"]
    d = info["devices"][0]
    assert d["total_memory"] > 0 and d["multiprocessors"] > 0 and d["compute_capability"][0] >= 7
    fl.ops.sum(data(1000, "float32"), device="cuda:0")
    text = fl.metrics.exposition()
    assert 'ferrolab_gpu_memory_total_bytes{device="cuda:0"}' in text
    assert 'device="cuda",operation="sum",status="success"' in text


def test_kernel_cache_is_written() -> None:
    fl.ops.sum(data(10, "float64"), device="cuda")
    home = os.environ.get("FERROLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ferrolab"
    )
    cached = [f for f in os.listdir(os.path.join(home, "kernels")) if f.endswith(".cubin")]
    assert cached


def test_eight_threads_at_once() -> None:
    xs = [data(1 << 18, "float32", seed=i) for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda x: fl.ops.sum(x, device="cuda"), xs))
    for g, x in zip(got, xs, strict=True):
        np.testing.assert_allclose(g, x.astype(np.float64).sum(), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 255, 257, (1 << 20) + 5])
def test_elementwise_matches_the_cpu(n: int, dtype: str) -> None:
    x, y, z = data(n, dtype, 1), data(n, dtype, 2), data(n, dtype, 3)
    x[0] = np.nan
    rtol = 1e-6 if dtype == "float32" else 1e-14
    for f in (
        lambda d: fl.ops.axpy(2.5, x, y, device=d),
        lambda d: fl.ops.fma(x, y, z, device=d),
        lambda d: fl.ops.scale(x, -3.0, device=d),
        lambda d: fl.ops.clip(x, -1.0, 2.0, device=d),
    ):
        np.testing.assert_allclose(f("cuda"), f("cpu"), rtol=rtol, equal_nan=True)
    if n > 1:
        np.testing.assert_allclose(
            fl.ops.standardize(y, device="cuda"), fl.ops.standardize(y), rtol=1e-5 if dtype == "float32" else 1e-12
        )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_step_matches_the_cpu_and_torch(dtype: str) -> None:
    r = np.random.default_rng(3)
    state = [r.standard_normal(10_001).astype(dtype) for _ in range(2)]
    p_cpu, g = state[0].copy(), state[1]
    p_gpu = p_cpu.copy()
    m_cpu, v_cpu, m_gpu, v_gpu = (np.zeros(10_001, dtype) for _ in range(4))
    for t in range(1, 6):
        fl.ops.adam_step(p_cpu, g, m_cpu, v_cpu, t, lr=1e-2)
        fl.ops.adam_step(p_gpu, g, m_gpu, v_gpu, t, lr=1e-2, device="cuda")
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(p_gpu, p_cpu, rtol=rtol)
    np.testing.assert_allclose(v_gpu, v_cpu, rtol=rtol)
    torch = pytest.importorskip("torch", reason="optional: torch")
    tp = torch.nn.Parameter(torch.from_numpy(state[0].copy()))
    opt = torch.optim.Adam([tp], lr=1e-2)
    p_ref = state[0].copy()
    m_ref, v_ref = np.zeros_like(p_ref), np.zeros_like(p_ref)
    for t in range(1, 6):
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        fl.ops.adam_step(p_ref, g, m_ref, v_ref, t, lr=1e-2, device="cuda")
    np.testing.assert_allclose(p_ref, tp.detach().numpy(), rtol=1e-5 if dtype == "float32" else 1e-10)
