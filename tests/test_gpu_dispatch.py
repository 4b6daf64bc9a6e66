"""Placement, fallback and the ``gpu`` circuit breaker, against the fake GPU (``_core._gpu_set_fake``: it computes
on the CPU under the ``cuda`` labels and fails its next attempts with an injected CUDA error), so that the host-side
logic of the GPU backend is tested on machines without a GPU. Real-GPU runs: tests marked ``gpu``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import ferrolab as fl
import numpy as np
import pytest
from ferrolab import _core

X = np.arange(1.0, 11.0)
GPU_OPS = {
    "sum": lambda d: fl.ops.sum(X, device=d),
    "mean": lambda d: fl.ops.mean(X, device=d),
    "min": lambda d: fl.ops.min(X, device=d),
    "max": lambda d: fl.ops.max(X, device=d),
    "argmin": lambda d: fl.ops.argmin(X, device=d),
    "argmax": lambda d: fl.ops.argmax(X, device=d),
    "norm": lambda d: fl.ops.norm(X.astype(np.float32), device=d),
    "var": lambda d: fl.ops.var(X, ddof=1, device=d),
    "std": lambda d: fl.ops.std(X.astype(np.float32), device=d),
}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("FERROLAB_AUTO_DEVICE", raising=False)
    _core._gpu_set_fake(True)
    _core._gpu_reset_breaker()
    fl.gpu.set_strict(False)
    yield
    _core._gpu_set_fake(False)
    _core._gpu_reset_breaker()
    fl.gpu.set_strict(False)


def stats(op: str, device: str) -> dict:
    return next(
        (s for s in fl.op_stats() if s["operation"] == op and s["device"] == device),
        {"calls": 0, "errors": 0, "fallbacks": 0},
    )


@pytest.mark.parametrize("op", sorted(GPU_OPS))
def test_cuda_runs_on_the_gpu_with_cpu_results(fake: None, op: str) -> None:
    before = stats(op, "cuda")
    got = GPU_OPS[op]("cuda")
    assert type(got) is type(GPU_OPS[op]("cpu"))
    assert got == GPU_OPS[op]("cpu")
    after = stats(op, "cuda")
    assert after["calls"] == before["calls"] + 1 and after["errors"] == before["errors"]
    assert _core._gpu_fake_attempts() == 1


def test_cuda_n_selects_a_device_and_bad_devices_are_value_errors(fake: None) -> None:
    assert fl.ops.sum(X, device="cuda:0") == 55.0
    for bad in ("cuda:", "cuda:x", "gpu", "CUDA"):
        with pytest.raises(ValueError, match=r"sum\(\): argument 'device' is"):
            fl.ops.sum(X, device=bad)


def test_inputs_without_a_gpu_path_are_refused_on_cuda_and_run_on_cpu_under_auto(fake: None, monkeypatch) -> None:
    m = np.arange(6.0).reshape(2, 3)
    with pytest.raises(fl.DeviceUnavailableError, match=r"sum\(\) runs on the GPU only over all elements"):
        fl.ops.sum(m, axis=0, device="cuda")
    with pytest.raises(fl.DeviceUnavailableError, match=r"only over all elements"):
        fl.ops.sum(np.arange(6), device="cuda")  # int64
    with pytest.raises(fl.DeviceUnavailableError, match=r"matmul\(\) does not run on the GPU yet"):
        fl.ops.matmul(m, m.T, device="cuda")
    monkeypatch.setenv("FERROLAB_AUTO_DEVICE", "cuda")
    np.testing.assert_array_equal(fl.ops.sum(m, axis=0, device="auto"), m.sum(axis=0))
    assert _core._gpu_fake_attempts() == 0


def test_auto_stays_on_the_cpu_for_numpy_data(fake: None) -> None:
    before = stats("sum", "cpu")["calls"]
    assert fl.ops.sum(X, device="auto") == 55.0
    assert stats("sum", "cpu")["calls"] == before + 1
    assert _core._gpu_fake_attempts() == 0


def test_auto_device_environment_sends_calls_to_the_gpu(fake: None, monkeypatch) -> None:
    monkeypatch.setenv("FERROLAB_AUTO_DEVICE", "cuda")
    before = stats("mean", "cuda")["calls"]
    assert fl.ops.mean(X, device="auto") == 5.5
    assert stats("mean", "cuda")["calls"] == before + 1
    monkeypatch.setenv("FERROLAB_AUTO_DEVICE", "cpu")
    assert fl.ops.mean(X, device="auto") == 5.5
    assert _core._gpu_fake_attempts() == 1


def test_cuda_failure_raises_with_the_cuda_error_as_cause(fake: None) -> None:
    _core._gpu_set_fake(True, error="CUDA_ERROR_OUT_OF_MEMORY", times=1)
    before = stats("sum", "cuda")
    failed = r"sum\(\): device 'cuda' is not available: the GPU failed"
    with pytest.raises(fl.DeviceUnavailableError, match=failed) as e:
        fl.ops.sum(X, device="cuda")
    assert isinstance(e.value.__cause__, RuntimeError)
    assert str(e.value.__cause__) == "CUDA_ERROR_OUT_OF_MEMORY"
    after = stats("sum", "cuda")
    assert after["errors"] == before["errors"] + 1 and after["fallbacks"] == before["fallbacks"]
    assert fl.ops.sum(X, device="cuda") == 55.0  # the next attempt succeeds


def test_auto_falls_back_to_the_cpu_and_counts_it(fake: None, monkeypatch) -> None:
    monkeypatch.setenv("FERROLAB_AUTO_DEVICE", "cuda")
    _core._gpu_set_fake(True, error="CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", times=1)
    cuda, cpu = stats("max", "cuda"), stats("max", "cpu")
    assert fl.ops.max(X, device="auto") == 10.0
    assert stats("max", "cuda")["fallbacks"] == cuda["fallbacks"] + 1
    assert stats("max", "cuda")["errors"] == cuda["errors"]
    assert stats("max", "cpu")["calls"] == cpu["calls"] + 1
    text = fl.metrics.exposition()
    line = next(x for x in text.splitlines() if 'device="cuda",operation="max",status="fallback"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_strict_mode_turns_a_fallback_into_an_error(fake: None, monkeypatch) -> None:
    monkeypatch.setenv("FERROLAB_AUTO_DEVICE", "cuda")
    fl.gpu.set_strict(True)
    assert fl.gpu.is_strict()
    _core._gpu_set_fake(True, error="CUDA_ERROR_OUT_OF_MEMORY", times=1)
    with pytest.raises(fl.DeviceUnavailableError, match=r"falling back to the CPU is turned off \(strict mode\)"):
        fl.ops.min(X, device="auto")


def test_three_failures_open_the_gpu_breaker(fake: None, monkeypatch) -> None:
    monkeypatch.setenv("FERROLAB_AUTO_DEVICE", "cuda")
    _core._gpu_set_fake(True, error="CUDA_ERROR_OUT_OF_MEMORY", times=100)
    for _ in range(3):
        assert fl.ops.sum(X, device="auto") == 55.0  # each falls back
    assert fl.gpu.info()["breaker"] == "open"
    assert _core._gpu_fake_attempts() == 3
    before = stats("sum", "cuda")["fallbacks"]
    assert fl.ops.sum(X, device="auto") == 55.0  # straight to the CPU: the GPU is not tried
    assert _core._gpu_fake_attempts() == 3
    assert stats("sum", "cuda")["fallbacks"] == before + 1
    with pytest.raises(fl.DeviceUnavailableError, match=r"the circuit breaker 'gpu' is open after 3 consecutive"):
        fl.ops.sum(X, device="cuda")


STICKY = r"""
import json, numpy as np, ferrolab as fl
from ferrolab import _core
_core._gpu_set_fake(True, error="CUDA_ERROR_ILLEGAL_ADDRESS", sticky=True, times=1)
out = {}
try:
    fl.ops.sum(np.ones(4), device="cuda")
except fl.DeviceUnavailableError as e:
    out["first"] = str(e)
out["reason"] = fl.gpu.info()["reason"]
out["available"] = fl.gpu.is_available()
try:
    fl.ops.sum(np.ones(4), device="cuda")
except fl.DeviceUnavailableError as e:
    out["second"] = str(e)
out["auto"] = float(fl.ops.sum(np.ones(4), device="auto"))
print(json.dumps(out))
"""


def test_a_sticky_error_turns_the_backend_off_for_the_process() -> None:
    r = subprocess.run([sys.executable, "-c", STICKY], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in out["first"]
    assert out["available"] is False
    assert out["reason"].startswith("the GPU backend hit a sticky CUDA error")
    assert "rest of this process" in out["reason"]
    assert out["second"] == "sum(): device 'cuda' is not available: " + out["reason"]
    assert out["auto"] == 4.0


def test_errors_on_both_devices_are_one_series_per_error_type(fake: None) -> None:
    # the same error class on the cuda cell and on the cpu cell of one op: one ferrolab_errors_total series
    def errors() -> float:
        line = next(
            x
            for x in fl.metrics.exposition().splitlines()
            if x.startswith('ferrolab_errors_total{error_type="ValueError",operation="var"}')
        )
        return float(line.rsplit(" ", 1)[1])

    with pytest.raises(ValueError, match=r"var\(\): argument 'ddof' must be finite"):
        fl.ops.var(X, ddof=float("nan"), device="cuda")
    before = errors()
    with pytest.raises(ValueError, match=r"var\(\): argument 'ddof' must be finite"):
        fl.ops.var(X, ddof=float("nan"))
    assert errors() == before + 1
    cuda, cpu = stats("var", "cuda"), stats("var", "cpu")
    assert cuda["errors"] >= 1 and cpu["errors"] >= 1
    lines = [
        x
        for x in fl.metrics.exposition().splitlines()
        if x.startswith("ferrolab_errors_total{") and 'operation="var"' in x
    ]
    kinds = [x.split('error_type="')[1].split('"')[0] for x in lines]
    assert len(kinds) == len(set(kinds)), lines


def test_gpu_op_spans_say_cuda(fake: None) -> None:
    fl.tracing.configure("gpu-test", endpoint=None)
    try:
        fl.tracing.finished_spans(clear=True)
        with fl.tracing.span("pipeline") as parent:
            fl.ops.sum(X.astype(np.float32), device="cuda")
            fl.ops.sum(X)
        ops = [s for s in fl.tracing.finished_spans() if s["name"] == "ferrolab.sum"]
        assert [s["attributes"]["ferrolab.device"] for s in ops] == ["cuda", "cpu"]
        assert ops[0]["attributes"]["ferrolab.dtype"] == "float32"
        assert ops[0]["attributes"]["ferrolab.shapes"] == ("(10,)",)
        assert all(s["parent_span_id"] == parent.span_id for s in ops)
    finally:
        fl.tracing.shutdown()


M = np.arange(12.0).reshape(3, 4) - 4.5
ELEMENTWISE = {
    "axpy": lambda d, m=M: fl.ops.axpy(2.0, m, m * 0.5, device=d),
    "fma": lambda d, m=M: fl.ops.fma(m, m, m, device=d),
    "scale": lambda d, m=M: fl.ops.scale(m, 3, device=d),
    "clip": lambda d, m=M: fl.ops.clip(m, -1.0, None, device=d),
    "standardize": lambda d, m=M: fl.ops.standardize(m.astype(np.float32), device=d),
}


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_elementwise_cuda_matches_cpu(fake: None, op: str) -> None:
    before = stats(op, "cuda")["calls"]
    got, want = ELEMENTWISE[op]("cuda"), ELEMENTWISE[op]("cpu")
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert stats(op, "cuda")["calls"] == before + 1


def test_elementwise_cuda_writes_out_and_refuses_what_it_cannot_run(fake: None) -> None:
    out = np.empty_like(M)
    assert fl.ops.axpy(2.0, M, M, out=out, device="cuda") is out
    np.testing.assert_array_equal(out, 3 * M)
    f_order = np.asfortranarray(M)
    for call in (
        lambda: fl.ops.axpy(np.float32(2.0), M, M, device="cuda"),  # a NumPy scalar takes part in the dtype
        lambda: fl.ops.axpy(2.0, M, np.ones(4), device="cuda"),  # broadcasting
        lambda: fl.ops.scale(f_order, 2.0, device="cuda"),  # not C-contiguous
        lambda: fl.ops.fma(M, M.astype(np.float32), M, device="cuda"),  # mixed dtypes
        lambda: fl.ops.standardize(M, axis=0, device="cuda"),
    ):
        with pytest.raises(fl.DeviceUnavailableError, match=r"runs on the GPU only"):
            call()


def _adam_state(dtype: str = "float64", shape: tuple[int, ...] = (3, 4)) -> list[np.ndarray]:
    r = np.random.default_rng(5)
    return [r.standard_normal(shape).astype(dtype) for _ in range(2)] + [
        np.zeros(shape, dtype),
        np.zeros(shape, dtype),
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_step_cuda_updates_in_place_like_the_cpu(fake: None, dtype: str) -> None:
    cpu, gpu = _adam_state(dtype), _adam_state(dtype)
    for t in (1, 2, 3):
        fl.ops.adam_step(*cpu, t, lr=0.01, weight_decay=0.1, decoupled=True)
        assert fl.ops.adam_step(*gpu, t, lr=0.01, weight_decay=0.1, decoupled=True, device="cuda") is None
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_array_equal(a, b)
    assert stats("adam_step", "cuda")["calls"] >= 3


def test_adam_step_cuda_refuses_what_it_cannot_run_and_checks_arguments(fake: None) -> None:
    p, g, m, v = _adam_state()
    with pytest.raises(fl.DeviceUnavailableError, match=r"adam_step\(\) runs on the GPU only"):
        fl.ops.adam_step(np.asfortranarray(p), g, m, v, 1, device="cuda")
    with pytest.raises(ValueError, match=r"adam_step\(\): argument 'beta1' is 1.5"):
        fl.ops.adam_step(p, g, m, v, 1, beta1=1.5, device="cuda")
    # a failure injected into the GPU attempt leaves the arrays as they were and raises
    _core._gpu_set_fake(True, error="CUDA_ERROR_OUT_OF_MEMORY", times=1)
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(fl.DeviceUnavailableError, match="CUDA_ERROR_OUT_OF_MEMORY"):
        fl.ops.adam_step(p, g, m, v, 1, device="cuda")
    for a, b in zip((p, m, v), before, strict=True):
        np.testing.assert_array_equal(a, b)
