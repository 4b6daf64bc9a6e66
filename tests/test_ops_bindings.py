"""fl.ops bindings: natively exported ops, results copied into out= (strided, Fortran, read-only), counting once."""

from __future__ import annotations

import inspect

import ferrolab as fl
import numpy as np
import pytest

M = fl.metrics

NATIVE = ["sum", "mean", "min", "max", "argmin", "argmax", "var", "std", "dot", "norm", "axpy", "fma", "scale",
          "clip", "standardize", "matmul", "zscore_anomalies", "cdist", "adam_step"]


@pytest.mark.parametrize("name", NATIVE)
def test_pass_through_ops_are_the_native_functions(name):
    op = getattr(fl.ops, name)
    assert op is getattr(fl._core, name)
    params = inspect.signature(op).parameters
    assert params["device"].kind is inspect.Parameter.KEYWORD_ONLY and params["device"].default == "cpu"
    assert "Examples\n--------" in op.__doc__ and ">>> " in op.__doc__


def test_wrappers_that_do_python_work_stay_python():
    assert inspect.isfunction(fl.ops.histogram) and inspect.isfunction(fl.ops.quantile)
    assert inspect.signature(fl.ops.adam_step).parameters["decoupled"].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError):
        fl.ops.sum(np.ones(3), None, "cpu")  # device is keyword-only, as documented


def _outs(shape):
    """out arrays of one shape: strided, Fortran-ordered."""
    strided = np.zeros((shape[0], 2 * shape[1]))[:, ::2]
    fortran = np.zeros(shape, order="F")
    return {"strided": strided, "fortran": fortran}


@pytest.mark.parametrize("layout", ["strided", "fortran"])
def test_elementwise_result_copied_into_out(layout):
    x = np.arange(12, dtype=np.int32).reshape(3, 4)  # converted by NumPy's rules: computed apart, then copied
    out = _outs(x.shape)[layout]
    assert fl.ops.scale(x, 2.5, out=out) is out
    np.testing.assert_array_equal(out, x * 2.5)
    out[...] = 0
    assert fl.ops.axpy(np.float64(2.0), x, x, out=out) is out
    np.testing.assert_array_equal(out, 3.0 * x)


@pytest.mark.parametrize("layout", ["strided", "fortran"])
def test_matmul_and_standardize_result_copied_into_out(layout):
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = _outs((3, 3))[layout]
    assert fl.ops.matmul(a, a.T, out=out) is out
    np.testing.assert_array_equal(out, a @ a.T)
    out = _outs(a.shape)[layout]
    assert fl.ops.standardize(a, axis=0, out=out) is out
    ref = (a - a.mean(axis=0)) / a.std(axis=0)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_partial_overlap_copies_into_strided_out():
    x0 = np.arange(10.0)
    x = x0.copy()
    fl.ops.scale(x[:5], 2.0, out=x[::2])  # overlaps x[:5] partially
    ref = x0.copy()
    ref[::2] = x0[:5] * 2.0
    np.testing.assert_array_equal(x, ref)
    a = np.arange(16.0).reshape(4, 4)
    b = np.eye(4)
    ref = a[:3, :3] @ b[:3, :3]
    fl.ops.matmul(a[:3, :3], b[:3, :3], out=a[1:, ::-1][:3, :3])  # overlaps a, reversed strides
    np.testing.assert_array_equal(a[1:, ::-1][:3, :3], ref)


@pytest.mark.parametrize(
    ("call", "shape"),
    [
        (lambda out: fl.ops.scale(np.arange(3, dtype=np.int32), 2.5, out=out), (3,)),
        (lambda out: fl.ops.clip(np.arange(3, dtype=np.int32), np.float64(0), 1, out=out), (3,)),
        (lambda out: fl.ops.matmul(np.ones((3, 3), np.int32), np.ones((3, 3)), out=out), (3, 3)),
        (lambda out: fl.ops.standardize(np.arange(9, dtype=np.int32).reshape(3, 3), out=out), (3, 3)),
    ],
    ids=["scale", "clip", "matmul", "standardize"],
)
def test_copy_into_read_only_or_uncastable_out(call, shape):
    ro = np.zeros(shape)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"\(\): argument 'out'"):
        call(ro)
    with pytest.raises(TypeError, match=r"\(\): argument 'out'"):
        call(np.zeros(shape, dtype=np.int8))  # float result into int8: NumPy's casting error is a TypeError


def _errors(op: str) -> float:
    labels = {"operation": op, "device": "cpu", "status": "error"}
    v = M.REGISTRY.get_sample_value(f"{M.settings()['prefix']}_operations_total", labels)
    return 0.0 if v is None else v


@pytest.mark.parametrize(
    ("op", "call"),
    [
        ("standardize", lambda: fl.ops.standardize(np.arange(6.0), axis=3, out=np.arange(6.0)[::-1])),
        ("standardize", lambda: fl.ops.standardize(np.arange(6, dtype=np.int32), axis=3, out=np.zeros(6))),
        ("matmul", lambda: (a := np.ones((2, 3)), fl.ops.matmul(a, np.ones((4, 2)), out=a[:, :2]))),
        ("matmul", lambda: fl.ops.matmul(np.ones((2, 3), np.int32), np.ones((4, 2)), out=np.zeros((2, 2)))),
        ("axpy", lambda: (x := np.ones(4), fl.ops.axpy(1.0, x[:3], np.ones(2), out=x[1:]))),
    ],
)
def test_failed_call_counted_once_when_computed_apart_from_out(op, call):
    before = _errors(op)
    with pytest.raises(ValueError):
        call()
    assert _errors(op) == before + 1
