"""fl.ops bindings: natively exported ops, results copied into out= (strided, Fortran, read-only), counting once."""

from __future__ import annotations

import inspect

import ferrolab as fl
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _strided(a):
    """The values of ``a`` flattened, with one more value after them, as every other element of a buffer: an input
    that is never contiguous (not even for 0 or 1 values), so the general path runs."""
    s = np.empty(2 * (a.size + 1), a.dtype)[::2]
    s[: a.size] = a.reshape(-1)
    s[a.size] = 1
    return s


def _values(draw_data, dtype, shape):
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300 if dtype == np.float64 else 3e38]
    v = np.random.default_rng(draw_data).standard_normal(shape).astype(dtype)
    if v.size:
        flat = v.reshape(-1)
        flat[:: max(1, v.size // 3)] = specials[draw_data % len(specials)]
    return v


@settings(max_examples=120, deadline=None)
@given(
    op=st.sampled_from(["axpy", "fma", "scale", "clip", "clip_lo", "clip_nan"]),
    dtype=st.sampled_from([np.float64, np.float32]),
    shape=st.sampled_from([(), (0,), (1,), (7,), (4095,), (4097,), (3, 5000), (2, 0, 3), (300_001,)]),
    target=st.sampled_from(["fresh", "out", "out=x", "out=last"]),
    seed=st.integers(0, 2**16),
)
def test_the_flat_elementwise_path_gives_the_general_paths_bits(op, dtype, shape, target, seed):
    """C-contiguous operands of one shape and dtype take the flat path; the same values in strided views (one
    value longer) take the general path. Both run the same kernels on the same values, so their results are
    identical bit for bit, in place or not, serial or parallel (300,001 elements)."""
    arity = {"axpy": 2, "fma": 3}.get(op, 1)
    xs = [_values(seed + k, dtype, shape) for k in range(arity)]
    call = {
        "axpy": lambda a, out: fl.ops.axpy(1.5, *a, out=out),
        "fma": lambda a, out: fl.ops.fma(*a, out=out),
        "scale": lambda a, out: fl.ops.scale(a[0], -3, out=out),
        "clip": lambda a, out: fl.ops.clip(a[0], -0.5, 0.25, out=out),
        "clip_lo": lambda a, out: fl.ops.clip(a[0], None, 0.5, out=out),
        "clip_nan": lambda a, out: fl.ops.clip(a[0], float("nan"), 1.0, out=out),
    }[op]
    general = call([_strided(a) for a in xs], None)[: xs[0].size].reshape(shape)
    flat_in = [a.copy() for a in xs]
    if target == "fresh":
        got = call(flat_in, None)
    else:
        out = {"out": np.full(shape, 7, dtype), "out=x": flat_in[0], "out=last": flat_in[-1]}[target]
        got = call(flat_in, out)
        assert got is out
    assert got.dtype == dtype and np.shape(got) == shape
    assert target != "fresh" or isinstance(got, np.generic if shape == () else np.ndarray)
    assert np.asarray(got).tobytes() == np.asarray(general).tobytes()
    # against NumPy: a fused multiply-add rounds once, NumPy twice (within an ulp of either term)
    terms = {"axpy": lambda: (1.5 * xs[0], xs[1]), "fma": lambda: (xs[0] * xs[1], xs[2]),
             "scale": lambda: (xs[0] * dtype(-3), 0), "clip": lambda: (np.clip(xs[0], -0.5, 0.25), 0),
             "clip_lo": lambda: (np.clip(xs[0], None, 0.5), 0), "clip_nan": lambda: (np.full(shape, np.nan, dtype), 0)}
    with np.errstate(all="ignore"):
        p, q = terms[op]()
        expect = p + q
        slack = 2 * np.finfo(dtype).eps * (np.abs(p) + np.abs(q))
        close = (got == expect) | (np.isnan(got) & np.isnan(expect)) | (np.abs(got - expect) <= slack)
    assert np.all(close)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_flat_elementwise_path_keeps_numpys_result_types_and_errors(dtype):
    x = np.arange(6, dtype=dtype)
    # a NumPy scalar is strong (NEP 50): float32 with a float64 scalar gives float64, through the general path
    r = fl.ops.scale(x, np.float64(2.0))
    assert r.dtype == np.result_type(x, np.float64(2.0))
    assert fl.ops.scale(x, True).dtype == dtype and fl.ops.scale(x, 2).dtype == dtype
    r = fl.ops.scale(x, 2.0)
    assert r.dtype == dtype and isinstance(r, np.ndarray)
    assert isinstance(fl.ops.scale(np.array(2.0, dtype), 2.0), np.generic)  # 0-d: a NumPy scalar, as NumPy
    ro = np.zeros(6, dtype)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"scale\(\): argument 'out'"):
        fl.ops.scale(x, 2.0, out=ro)
    with pytest.raises(ValueError, match=r"axpy\(\): argument 'y'"):
        fl.ops.axpy(1.0, x, np.ones(5, dtype))
    with pytest.raises(ValueError, match=r"argument 'out'"):
        fl.ops.scale(x, 2.0, out=np.zeros(5, dtype))
    with pytest.raises(OverflowError, match=r"scale\(\): argument 'a' is too large"):  # as NumPy
        fl.ops.scale(x, 10**400)
    with pytest.raises(OverflowError, match=r"clip\(\): argument 'hi' is too large"):
        fl.ops.clip(x, 0.0, -(10**400))
    # a misaligned out (C-contiguous, writeable) is written through the general path, as NumPy writes it
    itemsize = np.dtype(dtype).itemsize
    odd = np.frombuffer(bytearray(itemsize * 6 + 1), dtype, offset=1)
    assert not odd.flags.aligned
    for call in (lambda: fl.ops.scale(x, 2.0, out=odd), lambda: fl.ops.clip(x, 0, 1, out=odd),
                 lambda: fl.ops.axpy(2.0, x, x, out=odd), lambda: fl.ops.fma(x, x, x, out=odd)):
        assert call() is odd
    np.testing.assert_array_equal(odd, x * x + x)


@pytest.mark.parametrize("out_dtype", ["float32", ">f8", "float64", "float16", "int32", "int64", "complex128", "bool"])
@pytest.mark.parametrize("in_dtype", ["float64", "float32", "int64"])
def test_an_out_of_another_dtype_is_taken_as_numpys_ufuncs_take_it(in_dtype, out_dtype):
    """NumPy writes a ufunc's result into an ``out`` of any dtype it can reach by same-kind casting (float64 into
    float32, int64 into float64 or int32, into a byte-swapped array), and raises TypeError otherwise."""
    x = np.arange(6, dtype=in_dtype).reshape(2, 3)
    calls = {
        "scale": (lambda out: fl.ops.scale(x, 2, out=out), lambda out: np.multiply(x, 2, out=out)),
        "axpy": (lambda out: fl.ops.axpy(2, x, x, out=out), lambda out: np.add(np.multiply(x, 2), x, out=out)),
        "clip": (lambda out: fl.ops.clip(x, 1, 4, out=out), lambda out: np.clip(x, 1, 4, out=out)),
        "fma": (lambda out: fl.ops.fma(x, x, x, out=out), lambda out: np.add(np.multiply(x, x), x, out=out)),
        "standardize": (
            lambda out: fl.ops.standardize(x, axis=0, out=out),
            lambda out: np.divide(x - x.mean(0), x.std(0), out=out),
        ),
    }
    for name, (mine, peer) in calls.items():
        expect = np.zeros(x.shape, out_dtype)
        try:
            peer(expect)
        except TypeError:
            with pytest.raises(TypeError, match=rf"{name}\(\): argument 'out'"):
                mine(np.zeros(x.shape, out_dtype))
            continue
        out = np.zeros(x.shape, out_dtype)
        assert mine(out) is out
        if name == "standardize":  # (two passes against NumPy's mean and std: within rounding)
            np.testing.assert_allclose(out, expect, rtol=1e-3 if out_dtype == "float16" else 1e-6)
        else:
            np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
def test_inputs_broadcast_to_a_larger_out_as_in_numpy(dtype):
    x = np.arange(3, dtype=dtype)
    for mine, peer in [
        (lambda o: fl.ops.scale(x, 2, out=o), lambda o: np.multiply(x, 2, out=o)),
        (lambda o: fl.ops.axpy(2, x, x[:1], out=o), lambda o: np.add(np.multiply(x, 2), x[:1], out=o)),
        (lambda o: fl.ops.fma(x, x, x, out=o), lambda o: np.add(np.multiply(x, x), x, out=o)),
        (lambda o: fl.ops.clip(x, 1, 1, out=o), lambda o: np.clip(x, 1, 1, out=o)),
    ]:
        for out_dtype in (dtype, "float64"):
            expect, out = np.zeros((2, 3), out_dtype), np.zeros((2, 3), out_dtype)
            peer(expect)
            assert mine(out) is out
            np.testing.assert_array_equal(out, expect)
        with pytest.raises(ValueError, match=r"argument 'out' has shape \(2, 4\)"):
            mine(np.zeros((2, 4), dtype))
