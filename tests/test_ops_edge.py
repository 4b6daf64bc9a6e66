"""fl.ops edge cases: dtype policy, errors and messages, devices, empty/0-d inputs, out= aliasing, argmin/argmax
ties, histogram, quantile, zscore_anomalies, cdist, matmul, adam_step and accuracy."""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction

import ferrolab as fl
import numpy as np
import pytest
from conftest import (
    CDIST_PATHS,
    FLOATS,
    GEMM_KERNELS,
    MISSING,
    OPTIONAL,
    RTOL,
    assert_result,
    cdist_path,
    eps_of,
    finite_scale,
    fsum_exact,
    gemm_kernels,
    layout,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

scipy_distance = pytest.importorskip("scipy.spatial.distance", reason=MISSING + "scipy (the cdist reference)")

RNG = np.random.default_rng(20240607)


def _f64(n=6, seed=0):
    return np.random.default_rng(seed).standard_normal(n)


# A minimal valid call of every op, parametrized by device.
OP_CALLS = {
    "sum": lambda d: fl.ops.sum(_f64(), device=d),
    "mean": lambda d: fl.ops.mean(_f64(), device=d),
    "min": lambda d: fl.ops.min(_f64(), device=d),
    "max": lambda d: fl.ops.max(_f64(), device=d),
    "argmin": lambda d: fl.ops.argmin(_f64(), device=d),
    "argmax": lambda d: fl.ops.argmax(_f64(), device=d),
    "var": lambda d: fl.ops.var(_f64(), device=d),
    "std": lambda d: fl.ops.std(_f64(), device=d),
    "dot": lambda d: fl.ops.dot(_f64(), _f64(seed=1), device=d),
    "norm": lambda d: fl.ops.norm(_f64(), device=d),
    "axpy": lambda d: fl.ops.axpy(2.0, _f64(), _f64(seed=1), device=d),
    "fma": lambda d: fl.ops.fma(_f64(), _f64(seed=1), _f64(seed=2), device=d),
    "scale": lambda d: fl.ops.scale(_f64(), 3.0, device=d),
    "clip": lambda d: fl.ops.clip(_f64(), -0.5, 0.5, device=d),
    "standardize": lambda d: fl.ops.standardize(_f64(), device=d),
    "matmul": lambda d: fl.ops.matmul(_f64().reshape(2, 3), _f64(seed=1).reshape(3, 2), device=d),
    "histogram": lambda d: fl.ops.histogram(_f64(), device=d),
    "quantile": lambda d: fl.ops.quantile(_f64(), 0.3, device=d),
    "zscore_anomalies": lambda d: fl.ops.zscore_anomalies(_f64(), device=d),
    "cdist": lambda d: fl.ops.cdist(_f64().reshape(2, 3), _f64(seed=1).reshape(2, 3), device=d),
    "adam_step": lambda d: fl.ops.adam_step(_f64(), _f64(seed=1), np.zeros(6), np.zeros(6), 1, device=d),
}


def test_every_op_is_covered():
    assert set(OP_CALLS) == set(fl.ops.__all__)


# ----------------------------------------------------------------------------------------------------------------
# devices


@pytest.mark.parametrize("name", sorted(OP_CALLS))
def test_device_cuda_unavailable(name):
    assert issubclass(fl.DeviceUnavailableError, fl.FerrolabError)
    with pytest.raises(fl.DeviceUnavailableError, match=rf"{name}\(\)"):
        OP_CALLS[name]("cuda")


@pytest.mark.parametrize("name", sorted(OP_CALLS))
def test_device_auto_runs_on_cpu(name):
    cpu = OP_CALLS[name]("cpu")
    auto = OP_CALLS[name]("auto")
    if cpu is None:  # adam_step works in place on fresh arrays
        assert auto is None
    elif isinstance(cpu, tuple):
        for c, a in zip(cpu, auto, strict=True):
            np.testing.assert_array_equal(a, c)
    else:
        np.testing.assert_array_equal(auto, cpu)


@pytest.mark.parametrize("name", sorted(OP_CALLS))
@pytest.mark.parametrize("device", ["gpu", "CPU", "", "cuda:0x"])
def test_device_unknown_is_value_error(name, device):
    with pytest.raises(ValueError, match=rf"{name}\(\).*'device'"):
        OP_CALLS[name](device)


# ----------------------------------------------------------------------------------------------------------------
# dtype policy: ints, bool, float16, big-endian


ODD_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "float16", ">f8",
              ">f4", ">i4", "<f4", ">i8"]


def _small(dtype, shape, hi=10, seed=0):
    r = np.random.default_rng(seed).integers(0, hi, size=shape)
    if np.dtype(dtype).kind == "b":
        return (r % 2).astype(dtype)
    return r.astype(dtype)


def _assert_like(actual, expected):
    exp = np.asarray(expected)
    if exp.dtype == np.float16:
        assert_result(actual, expected, rtol=2e-3, atol=2e-3 * max(1.0, float(np.max(np.abs(exp), initial=0))))
    else:
        assert_result(actual, expected, atol=1e-12 * max(1.0, float(np.max(np.abs(exp.astype(float)), initial=0))))


@pytest.mark.parametrize("dtype", ODD_DTYPES)
@pytest.mark.parametrize("name", ["sum", "mean", "min", "max", "argmin", "argmax", "var", "std"])
@pytest.mark.parametrize("axis", [None, 0, -1])
def test_reductions_odd_dtypes(dtype, name, axis):
    x = _small(dtype, (7, 5), seed=len(name))
    expected = getattr(np, name)(x, axis=axis)
    _assert_like(getattr(fl.ops, name)(x, axis=axis), expected)


@pytest.mark.parametrize("dtype", ODD_DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_norm_odd_dtypes(dtype, axis):
    x = _small(dtype, (7, 5))
    _assert_like(fl.ops.norm(x, axis=axis), np.linalg.norm(x, axis=axis))


@pytest.mark.parametrize("dtype", ODD_DTYPES)
def test_elementwise_odd_dtypes(dtype):
    x, y, z = (_small(dtype, (4, 5), seed=s) for s in range(3))
    _assert_like(fl.ops.dot(x[0], y[0]), np.dot(x[0], y[0]))
    _assert_like(fl.ops.axpy(2, x, y), 2 * x + y)
    _assert_like(fl.ops.axpy(2.5, x, y), 2.5 * x + y)
    _assert_like(fl.ops.fma(x, y, z), x * y + z)
    _assert_like(fl.ops.scale(x, 3), 3 * x)
    _assert_like(fl.ops.scale(x, 0.5), 0.5 * x)
    if np.dtype(dtype).kind != "b":
        _assert_like(fl.ops.clip(x, 2, 7), np.clip(x, 2, 7))
        _assert_like(fl.ops.clip(x, 2.5, None), np.clip(x, 2.5, None))


MIXED = ["float64", "float32", "float16", "int64", "int32", "uint8", "bool"]


@pytest.mark.parametrize("xd", MIXED)
@pytest.mark.parametrize("yd", MIXED)
def test_elementwise_mixed_dtypes_give_numpys_expression_types(xd, yd):
    # axpy is `a * x + y` as NumPy evaluates it: `a * x` first (a float `a` with a uint8 or bool `x` is float64
    # before a float32 `y` joins), with Python and NumPy scalars, and a Python scalar `x`
    x, y = _small(xd, (2, 3), seed=1), _small(yd, (2, 3), seed=2)
    for a in (1.5, 2, True, np.float32(1.5), np.int8(2), np.True_):
        _assert_like(fl.ops.axpy(a, x, y), a * x + y)
        _assert_like(fl.ops.axpy(a, 3, y), a * 3 + y)
        _assert_like(fl.ops.axpy(a, 1.5, y), a * 1.5 + y)
        # fma is `x * y + z` the same way: the product first
        _assert_like(fl.ops.fma(a, x, y), a * x + y)
        _assert_like(fl.ops.fma(x, a, y), x * a + y)
        _assert_like(fl.ops.fma(a, 1.5, y), a * 1.5 + y)


@pytest.mark.parametrize("dtype", ODD_DTYPES)
def test_stats_odd_dtypes(dtype):
    x = _small(dtype, (6, 5), hi=4 if dtype != "bool" else 2)
    x[0, 0] = 1  # no constant row/column
    x[0, 1] = 0
    with warnings.catch_warnings():  # bool/constant columns may divide 0 by 0 in both
        warnings.simplefilter("ignore", RuntimeWarning)
        with np.errstate(all="ignore"):
            expected = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
        actual = fl.ops.standardize(x, axis=1)
    _assert_like(actual, expected)
    if dtype != "bool":  # np.quantile rejects bool
        _assert_like(fl.ops.quantile(x, 0.3), np.quantile(x, 0.3))
        _assert_like(fl.ops.quantile(x, [0.3, 0.9], axis=0), np.quantile(x, [0.3, 0.9], axis=0))
    a = _small(dtype, (3, 4), hi=4)
    b = _small(dtype, (4, 2), hi=4, seed=5)
    _assert_like(fl.ops.matmul(a, b), a @ b)
    _hist_equal(x, bins=4)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "float16", ">f8"])
def test_cdist_odd_dtypes_values(dtype):
    a = _small(dtype, (4, 3), hi=5)
    b = _small(dtype, (3, 3), hi=5, seed=9)
    a[:, 0] = 1  # no zero rows (cosine)
    b[:, 0] = 1
    for metric in ["euclidean", "sqeuclidean", "cosine"]:
        expected = scipy_distance.cdist(a, b, metric)
        actual = fl.ops.cdist(a, b, metric)
        rtol = 2e-3 if dtype == "float16" else 1e-12
        np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=rtol)


def test_sum_int_result_dtypes():
    assert_result(fl.ops.sum(np.arange(10, dtype=np.int32)), np.int64(45))
    assert_result(fl.ops.sum(np.full(1000, 255, dtype=np.uint8)), np.sum(np.full(1000, 255, dtype=np.uint8)))
    assert_result(fl.ops.sum(np.ones(7, dtype=bool)), np.int64(7))
    assert_result(fl.ops.min(np.array([7, 3, 9], dtype=np.uint8)), np.uint8(3))
    assert_result(fl.ops.max(np.array([True, False])), np.True_)
    assert_result(fl.ops.mean(np.arange(4, dtype=np.int16)), np.float64(1.5))
    f16 = np.array([1, 2, 3.5], dtype=np.float16)
    for name in ["sum", "mean", "min", "max", "var", "std"]:
        assert np.asarray(getattr(fl.ops, name)(f16)).dtype == np.float16, name


def test_int64_sum_wraps_like_numpy():
    x = np.array([2**62, 2**62, 2**62], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.sum(x)
    assert_result(fl.ops.sum(x), expected)


def test_uint64_extremes():
    x = np.array([1, 2**63 + 5, 2**64 - 1, 3, 2**63 - 1], dtype=np.uint64)
    for name in ["min", "max", "argmin", "argmax"]:
        assert_result(getattr(fl.ops, name)(x), getattr(np, name)(x))
    y = np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max, -1], dtype=np.int64)
    for name in ["min", "max", "argmin", "argmax"]:
        assert_result(getattr(fl.ops, name)(y), getattr(np, name)(y))


# --- integer clip: values >= 2**63 in uint64, bounds beyond the dtype, as np.clip (NumPy >= 2.1) --------------------

U64_VALUES = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1]),
)


def _clip_like_numpy(x, lo, hi):
    """fl.ops.clip gives np.clip's values and dtype, or raises the exception class np.clip raises."""
    try:
        expected = np.clip(x, lo, hi)
    except Exception as e:
        with pytest.raises(type(e)):
            fl.ops.clip(x, lo, hi)
        return
    got = fl.ops.clip(x, lo, hi)
    assert type(got) is type(expected)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(got, expected)


def test_clip_uint64_above_2_63():
    x = np.array([2**63, 2**64 - 1], dtype=np.uint64)
    r = fl.ops.clip(x, 0, 3)
    assert r.dtype == np.uint64 and r.tolist() == [3, 3]
    assert fl.ops.clip(x, 2**63 + 1, None).tolist() == [2**63 + 1, 2**64 - 1]
    assert fl.ops.clip(x, None, np.uint64(2**63)).tolist() == [2**63, 2**63]
    assert fl.ops.clip(x, -1, 2**64).tolist() == x.tolist()  # both bounds beyond uint64: nothing to clip
    out = np.zeros(2, dtype=np.uint64)
    assert fl.ops.clip(x, 5, 2**63 + 7, out=out) is out and out.tolist() == [2**63, 2**63 + 7]
    # a Python-int bound below a uint64 array's range is ignored when it is the lower bound, an error otherwise
    assert fl.ops.clip(x, -1, 3).tolist() == [3, 3]
    for lo, hi in [(0, -1), (None, -1), (-5, -1), (2**64, None)]:
        _clip_like_numpy(x, lo, hi)
        with pytest.raises(OverflowError):
            fl.ops.clip(x, lo, hi)


@given(
    x=hnp.arrays(np.uint64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=6), elements=U64_VALUES),
    lo=st.one_of(st.none(), st.integers(-(2**65), 2**65), U64_VALUES, U64_VALUES.map(np.uint64)),
    hi=st.one_of(st.none(), st.integers(-(2**65), 2**65), U64_VALUES, U64_VALUES.map(np.uint64)),
    strided=st.booleans(),
)
def test_clip_uint64_matches_numpy(x, lo, hi, strided):
    assume(lo is not None or hi is not None)
    if strided and x.ndim > 0:
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    _clip_like_numpy(x, lo, hi)


@given(data=st.data())
def test_clip_integer_bounds_beyond_the_dtype_match_numpy(data):
    dtype = np.dtype(data.draw(st.sampled_from([np.int8, np.uint8, np.int16, np.uint32, np.int64, np.uint64])))
    info = np.iinfo(dtype)
    x = data.draw(hnp.arrays(dtype, hnp.array_shapes(max_dims=2, max_side=5)), label="x")
    bound = st.one_of(
        st.none(),
        st.integers(info.min - 3, info.max + 3),
        st.integers(-(2**70), 2**70),
        st.sampled_from([info.min - 1, info.min, info.max, info.max + 1]),
    )
    lo, hi = data.draw(bound, label="lo"), data.draw(bound, label="hi")
    assume(lo is not None or hi is not None)
    _clip_like_numpy(x, lo, hi)


def test_python_inputs():
    assert_result(fl.ops.sum([1, 2, 3]), np.sum([1, 2, 3]))
    assert_result(fl.ops.sum([1.0, 2.5]), np.sum([1.0, 2.5]))
    assert_result(fl.ops.mean([1, 2]), np.mean([1, 2]))
    assert_result(fl.ops.max([[1, 5], [7, 2]], axis=0), np.max([[1, 5], [7, 2]], axis=0))
    assert_result(fl.ops.dot([1.0, 2.0], [3.0, 4.0]), np.dot([1.0, 2.0], [3.0, 4.0]))
    assert_result(fl.ops.sum(3.5), np.sum(3.5))


def test_nep50_scalars():
    x = np.arange(5, dtype=np.float32)
    y = np.ones(5, dtype=np.float32)
    assert_result(fl.ops.axpy(2.0, x, y), 2.0 * x + y, atol=1e-6)  # Python float is weak: float32
    assert_result(fl.ops.axpy(np.float64(2.0), x, y), np.float64(2.0) * x + y)  # NumPy scalar is strong
    assert_result(fl.ops.scale(x, np.float64(0.1)), np.float64(0.1) * x)
    assert_result(fl.ops.scale(x, 0.1), 0.1 * x, atol=1e-6)
    assert_result(fl.ops.fma(x, y, 1.0), x * y + 1.0)
    assert_result(fl.ops.axpy(2.0, x, y.astype(np.float64)), 2.0 * x + y.astype(np.float64))
    assert_result(fl.ops.dot(x, y.astype(np.float64)), np.dot(x, y.astype(np.float64)))
    assert_result(fl.ops.matmul(x.reshape(1, 5), y.reshape(5, 1).astype(np.float64)),
                  x.reshape(1, 5) @ y.reshape(5, 1).astype(np.float64))
    i8 = np.arange(5, dtype=np.int8)
    assert_result(fl.ops.scale(i8, 2), 2 * i8)
    assert_result(fl.ops.scale(i8, 2.5), 2.5 * i8)
    assert_result(fl.ops.quantile(x, 0.3), np.quantile(x, 0.3))
    assert_result(fl.ops.quantile(x, np.float64(0.3)), np.quantile(x, np.float64(0.3)))
    assert_result(fl.ops.quantile(x, np.array([0.3])), np.quantile(x, np.array([0.3])))


# ----------------------------------------------------------------------------------------------------------------
# errors


X_ONLY = {
    "sum": lambda x: fl.ops.sum(x),
    "mean": lambda x: fl.ops.mean(x),
    "min": lambda x: fl.ops.min(x),
    "max": lambda x: fl.ops.max(x),
    "argmin": lambda x: fl.ops.argmin(x),
    "argmax": lambda x: fl.ops.argmax(x),
    "var": lambda x: fl.ops.var(x),
    "std": lambda x: fl.ops.std(x),
    "norm": lambda x: fl.ops.norm(x),
    "dot": lambda x: fl.ops.dot(x, np.ones(3)),
    "axpy": lambda x: fl.ops.axpy(2.0, x, np.ones(3)),
    "fma": lambda x: fl.ops.fma(x, np.ones(3), np.ones(3)),
    "scale": lambda x: fl.ops.scale(x, 2.0),
    "clip": lambda x: fl.ops.clip(x, 0.0, 1.0),
    "standardize": lambda x: fl.ops.standardize(x),
    "histogram": lambda x: fl.ops.histogram(x),
    "quantile": lambda x: fl.ops.quantile(x, 0.5),
    "zscore_anomalies": lambda x: fl.ops.zscore_anomalies(x),
}

BAD_DTYPE_INPUTS = {
    "complex": lambda: np.array([1 + 2j, 3.0, 4.0]),
    "object": lambda: np.array([1.0, None, 3.0], dtype=object),
    "str": lambda: np.array(["a", "b", "c"]),
    "datetime": lambda: np.array(["2024-01-01", "2024-01-02", "2024-01-03"], dtype="datetime64[D]"),
}


@pytest.mark.parametrize("name", sorted(X_ONLY))
@pytest.mark.parametrize("kind", sorted(BAD_DTYPE_INPUTS))
def test_wrong_dtype_is_type_error(name, kind):
    with pytest.raises(TypeError, match=rf"{name}\(\).*'x'"):
        X_ONLY[name](BAD_DTYPE_INPUTS[kind]())


@pytest.mark.parametrize("kind", sorted(BAD_DTYPE_INPUTS))
def test_wrong_dtype_two_d_ops(kind):
    bad = BAD_DTYPE_INPUTS[kind]().reshape(1, 3)
    good = np.ones((3, 1))
    with pytest.raises(TypeError, match=r"matmul\(\).*'a'"):
        fl.ops.matmul(bad, good)
    with pytest.raises(TypeError, match=r"matmul\(\).*'b'"):
        fl.ops.matmul(good.T, bad.T)
    with pytest.raises(TypeError, match=r"cdist\(\).*'a'"):
        fl.ops.cdist(bad, np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"cdist\(\).*'b'"):
        fl.ops.cdist(np.ones((2, 3)), bad)
    with pytest.raises(TypeError, match=r"dot\(\).*'y'"):
        fl.ops.dot(np.ones(3), bad.ravel())
    with pytest.raises(TypeError, match=r"axpy\(\).*'y'"):
        fl.ops.axpy(1.0, np.ones(3), bad.ravel())
    with pytest.raises(TypeError, match=r"fma\(\).*'z'"):
        fl.ops.fma(np.ones(3), np.ones(3), bad.ravel())


@pytest.mark.parametrize("name", sorted(X_ONLY))
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32])
def test_masked_arrays_are_type_errors_not_silently_unmasked(name, dtype):
    """The kernels would read masked values as data (``sum`` of [1, --, 3] gave 104): a masked array is refused,
    with the way out in the message, also when nothing is masked (the rule does not depend on the data)."""
    for mask in ([0, 1, 0], np.ma.nomask):
        x = np.ma.array(np.array([1, 100, 3], dtype=dtype), mask=mask)
        with pytest.raises(TypeError, match=rf"{name}\(\): argument 'x' is a masked array.*x\.compressed\(\)"):
            X_ONLY[name](x)


def test_masked_arrays_in_any_argument_are_type_errors():
    m = np.ma.array(np.ones((3, 3)), mask=np.eye(3))
    good = np.ones((3, 3))
    for name, arg, call in [
        ("matmul", "b", lambda: fl.ops.matmul(good, m)),
        ("cdist", "a", lambda: fl.ops.cdist(m, good)),
        ("dot", "y", lambda: fl.ops.dot(good[0], m[0])),
        ("axpy", "y", lambda: fl.ops.axpy(1.0, good, m)),
        ("axpy", "y", lambda: fl.ops.axpy(1.0, good, m, out=np.empty((3, 3)))),
        ("fma", "z", lambda: fl.ops.fma(good, good, m)),
        ("clip", "x", lambda: fl.ops.clip(m, 0.0, 0.5)),
        ("standardize", "x", lambda: fl.ops.standardize(m, axis=0)),
    ]:
        with pytest.raises(TypeError, match=rf"{name}\(\): argument '{arg}' is a masked array"):
            call()
    # other ndarray subclasses are computed as their data, as before
    class Sub(np.ndarray):
        pass

    assert fl.ops.sum(np.arange(4.0).view(Sub)) == 6.0
    np.testing.assert_array_equal(fl.ops.scale(np.arange(3.0).view(Sub), 2.0), [0.0, 2.0, 4.0])


def test_complex_scalars_are_type_errors():
    with pytest.raises(TypeError, match=r"axpy\(\).*'a'"):
        fl.ops.axpy(1j, np.ones(3), np.ones(3))
    with pytest.raises(TypeError, match=r"scale\(\).*'a'"):
        fl.ops.scale(np.ones(3), 2j)
    with pytest.raises(TypeError, match=r"clip\(\).*'lo'"):
        fl.ops.clip(np.ones(3), "0", 1.0)


AXIS_OPS = {
    "sum": lambda x, ax: fl.ops.sum(x, axis=ax),
    "mean": lambda x, ax: fl.ops.mean(x, axis=ax),
    "min": lambda x, ax: fl.ops.min(x, axis=ax),
    "max": lambda x, ax: fl.ops.max(x, axis=ax),
    "argmin": lambda x, ax: fl.ops.argmin(x, axis=ax),
    "argmax": lambda x, ax: fl.ops.argmax(x, axis=ax),
    "var": lambda x, ax: fl.ops.var(x, axis=ax),
    "std": lambda x, ax: fl.ops.std(x, axis=ax),
    "norm": lambda x, ax: fl.ops.norm(x, axis=ax),
    "standardize": lambda x, ax: fl.ops.standardize(x, axis=ax),
    "quantile": lambda x, ax: fl.ops.quantile(x, 0.5, axis=ax),
}


@pytest.mark.parametrize("name", sorted(AXIS_OPS))
@pytest.mark.parametrize("shape,axis", [((3, 4), 2), ((3, 4), -3), ((5,), 1), ((), 0), ((2, 0), 5)])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "int16"])
def test_bad_axis_is_value_error(name, shape, axis, dtype):
    x = np.ones(shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the empty-slice warning may come before the check
        with pytest.raises(ValueError, match=rf"{name}\(\).*'axis'"):
            AXIS_OPS[name](x, axis)


@pytest.mark.parametrize("name", sorted(AXIS_OPS))
def test_axis_of_another_type_is_named_in_the_error(name):
    # the function and the argument are named in the message, as for array arguments
    x = np.arange(12.0).reshape(3, 4) ** 2
    for axis in ("0", 1.0, [0], True):
        with pytest.raises(TypeError, match=rf"{name}\(\): argument 'axis' must be an int or None, got"):
            AXIS_OPS[name](x, axis)
    for huge in (2**70, 10**5000):  # the second has no str() (CPython's 4,300-digit limit)
        with pytest.raises(ValueError, match=rf"{name}\(\): argument 'axis' is an int beyond any array's"):
            AXIS_OPS[name](x, huge)

    class BadIndex:
        def __index__(self):
            raise KeyError("from __index__")

    with pytest.raises(KeyError, match="from __index__"):  # not turned into a TypeError
        AXIS_OPS[name](x, BadIndex())
    # NumPy integers are ints here, as in NumPy, and the axis is the one given
    assert np.array_equal(AXIS_OPS[name](x, np.int64(1)), AXIS_OPS[name](x, 1))
    assert not np.array_equal(AXIS_OPS[name](x, 0), AXIS_OPS[name](x, 1))


_V = np.arange(1.0, 7.0)
_M = np.arange(6.0).reshape(3, 2)


def _adam(**kw):
    """One Adam step from fixed state: the updated parameters."""
    t = kw.pop("t", 1)
    p = _V.copy()
    assert fl.ops.adam_step(p, _V, np.full(6, 0.5), np.full(6, 2.0), t, **kw) is None
    return p


# every native op with a keyword it takes: (call with that keyword, the op's name)
DEVICE_OPS = {
    "sum": lambda **kw: fl.ops.sum(_V, **kw),
    "mean": lambda **kw: fl.ops.mean(_V, **kw),
    "min": lambda **kw: fl.ops.min(_V, **kw),
    "max": lambda **kw: fl.ops.max(_V, **kw),
    "argmin": lambda **kw: fl.ops.argmin(_V, **kw),
    "argmax": lambda **kw: fl.ops.argmax(_V, **kw),
    "var": lambda **kw: fl.ops.var(_V, **kw),
    "std": lambda **kw: fl.ops.std(_V, **kw),
    "norm": lambda **kw: fl.ops.norm(_V, **kw),
    "dot": lambda **kw: fl.ops.dot(_V, _V, **kw),
    "axpy": lambda **kw: fl.ops.axpy(2.0, _V, _V, **kw),
    "fma": lambda **kw: fl.ops.fma(_V, _V, _V, **kw),
    "scale": lambda **kw: fl.ops.scale(_V, 2.0, **kw),
    "clip": lambda **kw: fl.ops.clip(_V, 0.0, 1.0, **kw),
    "standardize": lambda **kw: fl.ops.standardize(_V, **kw),
    "zscore_anomalies": lambda **kw: fl.ops.zscore_anomalies(np.r_[np.zeros(6), 1.0], **kw),  # z of 2.45
    "matmul": lambda **kw: fl.ops.matmul(_M, _M.T, **kw),
    "cdist": lambda **kw: fl.ops.cdist(_M, _M, **kw),
    "adam_step": _adam,
    "histogram": lambda **kw: fl.ops.histogram(_V, **kw),
    "quantile": lambda **kw: fl.ops.quantile(_V, 0.5, **kw),
}

# (op, argument, a valid value, what the message says it must be)
SCALAR_ARGS = [
    ("var", "ddof", 1, "a real number"),
    ("std", "ddof", 1, "a real number"),
    ("standardize", "ddof", 1, "a real number"),
    ("zscore_anomalies", "threshold", 2.0, "a real number"),
    ("adam_step", "lr", 0.1, "a real number"),
    ("adam_step", "beta1", 0.8, "a real number"),
    ("adam_step", "beta2", 0.9, "a real number"),
    ("adam_step", "eps", 1e-6, "a real number"),
    ("adam_step", "weight_decay", 0.01, "a real number"),
    ("adam_step", "t", 2, "an int"),
    ("adam_step", "decoupled", True, "a bool"),
    ("cdist", "metric", "cosine", "a str"),
]


def _errors(op):
    return sum(s["errors"] for s in fl._core.op_stats() if s["operation"] == op)


@pytest.mark.parametrize("name", sorted(DEVICE_OPS))
def test_device_of_another_type_is_named_in_the_error(name):
    call = DEVICE_OPS[name]
    for device in (0, None, b"cpu", ["cpu"]):
        before = _errors(name)
        got = type(device).__name__
        with pytest.raises(TypeError, match=rf"^{name}\(\): argument 'device' must be a str, got {got}\b"):
            call(device=device)
        assert _errors(name) == before + 1  # counted once, as every failed call
    call(device="cpu")


@pytest.mark.parametrize("name,arg,good,what", SCALAR_ARGS)
def test_scalar_argument_of_another_type_is_named_in_the_error(name, arg, good, what):
    call = DEVICE_OPS[name]
    wrong = ["0.5", None, [1.0], object()]
    if what == "an int":
        wrong.append(1.0)  # a float is no step count (PyO3 and Python's int arguments refuse it too)
    if what == "a bool":
        wrong.append(1)
    if what == "a str":
        wrong = [3, None, b"cosine"]
    for v in wrong:
        before = _errors(name)
        with pytest.raises(TypeError, match=rf"^{name}\(\): argument '{arg}' must be {what}, got {type(v).__name__}\b"):
            call(**{arg: v})
        assert _errors(name) == before + 1
    if what in ("a real number", "an int"):
        with pytest.raises(OverflowError, match=rf"^{name}\(\): argument '{arg}' is too large"):
            call(**{arg: 10**400})
    # the types NumPy users pass are taken, and the value given is the one used
    call(**{arg: good})
    if what == "a real number":
        for v in (np.float32(good), np.int64(round(good)) if float(good).is_integer() else np.float64(good)):
            np.testing.assert_array_equal(call(**{arg: v}), call(**{arg: float(v)}))
        assert not np.array_equal(call(**{arg: good}), call())  # the argument is not ignored
    if what == "an int":
        call(**{arg: np.int64(good)})
    if what == "a bool":
        call(**{arg: np.True_})


def test_ddof_and_threshold_given_are_the_ones_used():
    assert fl.ops.var(_V, ddof=1) == pytest.approx(np.var(_V, ddof=1))
    assert fl.ops.std(_V, ddof=np.int64(2)) == pytest.approx(np.std(_V, ddof=2))
    z = np.zeros(100)
    z[7] = 4.0
    assert fl.ops.zscore_anomalies(z, threshold=100.0).size == 0
    assert fl.ops.zscore_anomalies(z, threshold=np.float32(3.0)).tolist() == [7]


@pytest.mark.parametrize("q,cls,msg", [
    ("z", TypeError, "must be a number or an array of numbers, got str"),
    (None, TypeError, "must be a number or an array of numbers, got NoneType"),
    ({}, TypeError, "must be a number or an array of numbers, got dict"),
    (["a", 0.5], TypeError, "must be a number or an array of numbers, not of strings"),
    ("0.5", TypeError, "must be a number or an array of numbers, got str"),  # NumPy refuses it too
    (["0.1"], TypeError, "must be a number or an array of numbers, not of strings"),
    (np.array([0.5 + 1j]), TypeError, "must be a number or an array of numbers, not of complex numbers"),
    (10**400, OverflowError, "is too large"),
    ([0.5, 10**400], OverflowError, "is too large"),
    ([[0.1], [0.2, 0.3]], ValueError, "could not be converted to float64"),
])
def test_quantile_q_of_another_type_is_named_in_the_error(q, cls, msg):
    with pytest.raises(cls, match=rf"^quantile\(\): argument 'q' {msg}"):
        fl.ops.quantile(_V, q)


@pytest.mark.parametrize("rng,cls,msg", [
    (5, TypeError, r"must be a pair \(min, max\), got int"),
    ((1, 2, 3), ValueError, r"must be a pair \(min, max\): it has another length"),
    ([1], ValueError, r"must be a pair \(min, max\): it has another length"),
    (("a", "b"), TypeError, r"must be a pair of real numbers, got \(str, str\)"),
    ((0, np.inf), ValueError, r"\[0, inf\] is not finite"),
    ((2, 1), ValueError, "has max < min"),
    ((0, 10**400), OverflowError, "is too large for float64"),
])
def test_histogram_range_errors_name_the_argument(rng, cls, msg):
    with pytest.raises(cls, match=rf"^histogram\(\): argument 'range' {msg}"):
        fl.ops.histogram(_V, range=rng)


def test_ragged_input_is_value_error():
    with pytest.raises(ValueError, match=r"sum\(\).*'x'"):
        fl.ops.sum([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("name", ["min", "max", "argmin", "argmax"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "uint8"])
def test_empty_min_max_is_value_error(name, dtype):
    with pytest.raises(ValueError, match=rf"{name}\(\).*'x'"):
        getattr(fl.ops, name)(np.array([], dtype=dtype))
    with pytest.raises(ValueError, match=rf"{name}\(\).*'x'"):
        getattr(fl.ops, name)(np.ones((3, 0), dtype=dtype), axis=1)
    with pytest.raises(ValueError, match=rf"{name}\(\)"):  # NumPy raises even though the result is empty
        getattr(fl.ops, name)(np.ones((0, 0), dtype=dtype), axis=0)
    with pytest.raises(ValueError, match=rf"{name}\(\)"):
        getattr(fl.ops, name)(np.ones((0, 4), dtype=dtype))


@pytest.mark.parametrize("dtype", FLOATS)
def test_empty_inputs(dtype):
    e = np.array([], dtype=dtype)
    assert_result(fl.ops.sum(e), np.sum(e))
    assert_result(fl.ops.sum(np.ones((0, 3), dtype), axis=0), np.sum(np.ones((0, 3), dtype), axis=0))
    assert_result(fl.ops.norm(e), np.linalg.norm(e))
    assert_result(fl.ops.dot(e, e), np.dot(e, e))
    for name in ["mean", "var", "std"]:
        with pytest.warns(RuntimeWarning):
            r = getattr(fl.ops, name)(e)
        assert np.isnan(r) and np.asarray(r).dtype == dtype
        with pytest.warns(RuntimeWarning):
            r = getattr(fl.ops, name)(np.ones((3, 0), dtype), axis=1)
        assert r.shape == (3,) and np.isnan(r).all() and r.dtype == dtype
    for name in ["axpy", "fma"]:
        args = (1.0, e, e) if name == "axpy" else (e, e, e)
        r = getattr(fl.ops, name)(*args)
        assert r.shape == (0,) and r.dtype == dtype
    assert fl.ops.matmul(np.ones((0, 3), dtype), np.ones((3, 2), dtype)).shape == (0, 2)


def test_zscore_anomalies_empty_and_degenerate():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = fl.ops.zscore_anomalies(np.array([], dtype=np.float64))
        assert isinstance(r, np.ndarray) and r.shape == (0,) and r.dtype == np.int64
        r = fl.ops.zscore_anomalies(np.full(100, 3.25))  # std 0: 0/0 is NaN, never > threshold
        assert r.shape == (0,) and r.dtype == np.int64
        x = np.zeros(100)
        x[3] = np.nan  # NaN mean/std: no comparison is true
        assert fl.ops.zscore_anomalies(x).shape == (0,)


@pytest.mark.parametrize("dtype", FLOATS)
def test_zero_d_inputs(dtype):
    x = np.array(-2.5, dtype=dtype)
    for name in ["sum", "mean", "min", "max", "argmin", "argmax", "var", "std"]:
        assert_result(getattr(fl.ops, name)(x), getattr(np, name)(x))
    assert_result(fl.ops.norm(x), np.linalg.norm(x))
    assert_result(fl.ops.sum(dtype.type(4.0)), np.sum(dtype.type(4.0)))
    assert_result(fl.ops.axpy(2.0, x, x), 2.0 * x + x)
    assert_result(fl.ops.scale(x, 2.0), 2.0 * x)
    assert_result(fl.ops.clip(x, 0.0, 1.0), np.clip(x, 0.0, 1.0))
    assert_result(fl.ops.quantile(x, 0.5), np.quantile(x, 0.5))


def test_dot_shape_errors():
    with pytest.raises(ValueError, match=r"dot\(\).*'y'"):
        fl.ops.dot(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"dot\(\).*'x'"):
        fl.ops.dot(np.ones((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match=r"dot\(\).*'y'"):
        fl.ops.dot(np.ones(2), np.ones((2, 2)))


def test_elementwise_shape_errors():
    with pytest.raises(ValueError, match=r"axpy\(\).*'(x|y)'"):
        fl.ops.axpy(1.0, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"fma\(\).*'(x|y|z)'"):
        fl.ops.fma(np.ones((2, 3)), np.ones(3), np.ones((4, 1, 2)))


OUT_OPS = {
    "axpy": lambda x, out: fl.ops.axpy(2.0, x, x, out=out),
    "fma": lambda x, out: fl.ops.fma(x, x, x, out=out),
    "scale": lambda x, out: fl.ops.scale(x, 2.0, out=out),
    "clip": lambda x, out: fl.ops.clip(x, 0.0, 1.0, out=out),
    "standardize": lambda x, out: fl.ops.standardize(x, out=out),
    "matmul": lambda x, out: fl.ops.matmul(x, x.T, out=out),
}


@pytest.mark.parametrize("name", sorted(OUT_OPS))
def test_out_errors(name):
    x = np.arange(12.0).reshape(3, 4) / 7
    shape = (3, 3) if name == "matmul" else (3, 4)
    with pytest.raises(ValueError, match=rf"{name}\(\).*'out'"):
        OUT_OPS[name](x, np.zeros((4, 3)) if name != "matmul" else np.zeros((4, 4)))
    with pytest.raises(ValueError, match=rf"{name}\(\).*'out'"):
        OUT_OPS[name](x, np.zeros(shape[:1]))  # fewer dimensions than the result
    ro = np.zeros(shape)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=rf"{name}\(\).*'out'"):
        OUT_OPS[name](x, ro)
    with pytest.raises(TypeError, match=rf"{name}\(\).*'out'"):
        OUT_OPS[name](x, np.zeros(shape, dtype=np.int64))
    with pytest.raises((TypeError, ValueError), match=rf"{name}\(\).*'out'"):
        OUT_OPS[name](x, np.zeros(shape).tolist())  # not an ndarray (NumPy: TypeError; contract: bad out)


# ----------------------------------------------------------------------------------------------------------------
# out= aliasing and partial overlap


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_is_an_input(dtype):
    x0 = RNG.standard_normal((5, 6)).astype(dtype)
    y0 = RNG.standard_normal((5, 6)).astype(dtype)
    tol = dict(atol=4 * eps_of(dtype) * 10)
    y = y0.copy()
    r = fl.ops.axpy(2.0, x0, y, out=y)
    assert r is y
    assert_result(y, 2.0 * x0 + y0, **tol)
    x = x0.copy()
    fl.ops.axpy(2.0, x, y0, out=x)
    assert_result(x, 2.0 * x0 + y0, **tol)
    x = x0.copy()
    fl.ops.fma(x, x, x, out=x)
    assert_result(x, x0 * x0 + x0, **tol)
    x = x0.copy()
    fl.ops.scale(x, 3.0, out=x)
    assert_result(x, 3.0 * x0, **tol)
    x = x0.copy()
    fl.ops.clip(x, -0.5, 0.5, out=x)
    assert_result(x, np.clip(x0, -0.5, 0.5), exact=True)
    x = np.asfortranarray(x0)
    fl.ops.standardize(x, axis=0, out=x)
    assert_result(x, (x0 - x0.mean(0)) / x0.std(0), atol=1e-5 if dtype == np.float32 else 1e-12)
    # broadcasting: y (6,) into out=x (5, 6)
    x = x0.copy()
    fl.ops.axpy(2.0, x, y0[0], out=x)
    assert_result(x, 2.0 * x0 + y0[0], **tol)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3, 1)])
def test_out_is_an_input_zero_size(dtype, shape):
    x = np.ones(shape, dtype)
    y = np.ones(shape, dtype)
    assert fl.ops.axpy(2.0, x, y, out=y) is y
    assert fl.ops.axpy(2.0, x, y, out=x) is x
    assert fl.ops.fma(x, y, y, out=x) is x
    assert fl.ops.scale(x, 2.0, out=x) is x
    assert fl.ops.clip(x, 0.0, 1.0, out=x) is x
    assert fl.ops.matmul(np.ones((0, 0), dtype), np.ones((0, 0), dtype), out=np.ones((0, 0), dtype)).shape == (0, 0)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shift", [1, 3, -1, -3, 100, -100])
def test_out_partially_overlapping(dtype, shift):
    n = 1000
    buf = (np.arange(n + abs(shift), dtype=dtype) % 17 - 8) / 4
    orig = buf.copy()
    if shift > 0:
        x, out = buf[:n], buf[shift:]
        x0 = orig[:n]
    else:
        x, out = buf[-shift:], buf[:n]
        x0 = orig[-shift:]
    y = np.linspace(-1, 1, n).astype(dtype)
    fl.ops.axpy(0.5, x, y, out=out)
    assert_result(out, 0.5 * x0 + y, atol=4 * eps_of(dtype) * 4)

    buf[:] = orig
    fl.ops.scale(x, 2.0, out=out)
    assert_result(out, 2.0 * x0, exact=True)

    buf[:] = orig
    fl.ops.fma(x, y, x, out=out)
    assert_result(out, x0 * y + x0, atol=4 * eps_of(dtype) * 4)

    buf[:] = orig
    fl.ops.clip(x, -0.5, 0.5, out=out)
    assert_result(out, np.clip(x0, -0.5, 0.5), exact=True)


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_reversed_view_of_input(dtype):
    x0 = np.arange(1001, dtype=dtype) / 3
    x = x0.copy()
    fl.ops.scale(x, 2.0, out=x[::-1])
    assert_result(x[::-1], 2.0 * x0, exact=True)
    x = x0.copy()
    fl.ops.axpy(1.0, x, x0, out=x[::-1])
    assert_result(x[::-1], x0 + x0, exact=True)
    sq0 = np.arange(31 * 31, dtype=dtype).reshape(31, 31) / 7
    sq = sq0.copy()
    fl.ops.clip(sq, 10.0, 100.0, out=sq.T)  # out is the transpose of the input (same memory)
    assert_result(sq, np.clip(sq0, 10.0, 100.0).T, exact=True)
    sq = sq0.copy()
    fl.ops.axpy(2.0, sq, sq0, out=sq.T)
    assert_result(sq.T, 2.0 * sq0 + sq0, atol=4 * eps_of(dtype) * 500)


@pytest.mark.parametrize("dtype", FLOATS)
def test_matmul_out_is_an_input(dtype):
    a0 = RNG.standard_normal((37, 37)).astype(dtype)
    b0 = RNG.standard_normal((37, 37)).astype(dtype)
    tol = 4 * 38 * eps_of(dtype) * 16
    a = a0.copy()
    fl.ops.matmul(a, b0, out=a)
    assert_result(a, a0 @ b0, atol=tol)
    b = b0.copy()
    fl.ops.matmul(a0, b, out=b)
    assert_result(b, a0 @ b0, atol=tol)
    a = a0.copy()
    fl.ops.matmul(a, a, out=a)
    assert_result(a, a0 @ a0, atol=tol)
    a = a0.copy()
    fl.ops.matmul(a.T, b0, out=a)
    assert_result(a, a0.T @ b0, atol=tol)


# ----------------------------------------------------------------------------------------------------------------
# argmin / argmax


@pytest.mark.parametrize("dtype", [*FLOATS, np.dtype(np.int64), np.dtype(np.int32)])
def test_argminmax_first_occurrence(dtype):
    x = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 9, 1], dtype=dtype)
    assert fl.ops.argmin(x) == 1
    assert fl.ops.argmax(x) == 5
    # ties across SIMD lanes and blocks
    big = np.zeros(100_003, dtype=dtype)
    big[[70_001, 5, 99_999]] = 7
    big[[40_000, 17, 80_000]] = -7
    assert fl.ops.argmax(big) == 5
    assert fl.ops.argmin(big) == 17
    big2 = np.full(100_003, 3, dtype=dtype)
    assert fl.ops.argmax(big2) == 0 and fl.ops.argmin(big2) == 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_argminmax_nan_wins(dtype):
    x = np.array([1.0, -np.inf, np.nan, np.inf, np.nan, 0.0], dtype=dtype)
    assert fl.ops.argmin(x) == 2
    assert fl.ops.argmax(x) == 2
    big = np.arange(200_000, dtype=dtype)
    big[150_001] = np.nan
    big[190_000] = np.nan
    assert fl.ops.argmin(big) == 150_001
    assert fl.ops.argmax(big) == 150_001
    assert fl.ops.min(big) is not None and np.isnan(fl.ops.min(big)) and np.isnan(fl.ops.max(big))
    m = np.array([[1.0, np.nan, 3.0], [np.nan, 0.0, np.nan]], dtype=dtype)
    for ax in [0, 1, -1]:
        np.testing.assert_array_equal(fl.ops.argmin(m, axis=ax), np.argmin(m, axis=ax))
        np.testing.assert_array_equal(fl.ops.argmax(m, axis=ax), np.argmax(m, axis=ax))
    # signed zeros compare equal: the first one wins
    z = np.array([0.0, -0.0, 0.0], dtype=dtype)
    assert fl.ops.argmin(z) == 0 and fl.ops.argmax(z) == 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_argminmax_fortran_flat_c_index(dtype):
    x = np.asfortranarray(RNG.standard_normal((13, 7, 5)).astype(dtype))
    for name in ["argmin", "argmax"]:
        assert_result(getattr(fl.ops, name)(x), getattr(np, name)(x))
        for ax in range(-3, 3):
            assert_result(getattr(fl.ops, name)(x, axis=ax), getattr(np, name)(x, axis=ax))
    x = np.zeros((4, 5), dtype=dtype, order="F")
    x[2, 1] = 9
    assert fl.ops.argmax(x) == 11  # C-order flat index, not F-order (which would be 6)
    assert fl.ops.argmax(x.T) == 1 * 4 + 2


# ----------------------------------------------------------------------------------------------------------------
# histogram


def _hist_equal(x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy: "Converting input from bool to uint8"
        ec, ee = np.histogram(x, **kw)
    c, e = fl.ops.histogram(x, **kw)
    assert isinstance(c, np.ndarray) and isinstance(e, np.ndarray)
    assert c.dtype == ec.dtype, (c.dtype, ec.dtype)
    assert e.dtype == ee.dtype, (e.dtype, ee.dtype)
    np.testing.assert_array_equal(c, ec)
    np.testing.assert_array_equal(e, ee)


@pytest.mark.parametrize("dtype", FLOATS)
def test_histogram_values_on_edges(dtype):
    x = np.linspace(0, 1, 11).astype(dtype)
    _hist_equal(x, bins=10)
    _hist_equal(x, bins=10, range=(0, 1))
    _hist_equal(x, bins=5, range=(0.1, 0.7))
    for lo, hi, bins in [(0.1, 0.7, 7), (-3.3, 1.1, 13), (1e-3, 2e-3, 9), (0.0, 1.0, 3), (-1.0, 1e8, 17)]:
        edges = np.linspace(lo, hi, bins + 1)
        xe = np.concatenate([edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf)]).astype(dtype)
        _hist_equal(xe, bins=bins, range=(lo, hi))
        _hist_equal(xe, bins=bins)
        _hist_equal(xe, bins=edges)


def test_histogram_of_ranges_a_few_ulps_wide_bins_as_numpy():
    """Bins about one ulp wide (a narrow range at a large magnitude): the rounded edges decide, as in NumPy; the
    arithmetic estimate alone put a value on an interior edge into the bin below."""
    u = np.finfo(np.float64).eps
    x = 1.0 + u * np.arange(20.0)
    _hist_equal(x, bins=4, range=(1.0 + 5 * u, 1.0 + 14 * u))
    for lo, width, bins in [(-7.7e6, 1e-7, 86), (-7.7e6, 1e-7, 92), (123.456e6, 1e-6, 40), (1e300, 1e285, 7)]:
        edges = np.linspace(lo, lo + width, bins + 1)
        xe = np.concatenate([edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf)])
        _hist_equal(xe, bins=bins, range=(lo, lo + width))
    # a range too narrow for its bins at its magnitude: refused, as NumPy refuses it
    lo = 123.456e6
    with pytest.raises(ValueError, match=r"Too many bins"):
        np.histogram(np.array([lo]), 40, range=(lo, lo + 1e-7))
    with pytest.raises(ValueError, match=r"^histogram\(\): argument 'bins' is 40: too many bins for the data range"):
        fl.ops.histogram(np.array([lo]), 40, range=(lo, lo + 1e-7))
    with pytest.raises(ValueError, match=r"^histogram\(\): argument 'bins' is 3: too many bins"):
        fl.ops.histogram(1.0 + u * np.arange(2.0), 3)  # the autodetected range is one ulp wide


@pytest.mark.parametrize("dtype", FLOATS)
def test_histogram_large_uniform(dtype):
    x = RNG.uniform(-3, 7, 1_000_003).astype(dtype)
    _hist_equal(x, bins=1000)
    _hist_equal(x, bins=997, range=(-1.0, 5.5))
    _hist_equal(np.asfortranarray(x[:1_000_000].reshape(1000, 1000)), bins=33)
    _hist_equal(x[::-3], bins=101)


def test_histogram_nan_and_inf():
    x = np.array([0.5, np.nan, 1.5, 2.5, np.nan, 9.0])
    _hist_equal(x, bins=4, range=(0, 4))  # NaN is not counted
    with pytest.raises(ValueError, match=r"histogram\(\)"):
        fl.ops.histogram(x)  # autodetected range is NaN
    with pytest.raises(ValueError, match=r"histogram\(\)"):
        fl.ops.histogram(np.array([1.0, np.inf]))
    _hist_equal(np.array([1.0, np.inf, -np.inf, 2.0]), bins=3, range=(0, 3))
    with pytest.raises(ValueError, match=r"histogram\(\).*'range'"):
        fl.ops.histogram(np.ones(3), bins=3, range=(0, np.nan))
    with pytest.raises(ValueError, match=r"histogram\(\).*'range'"):
        fl.ops.histogram(np.ones(3), bins=3, range=(2, 1))


@pytest.mark.parametrize("bins", ["auto", "fd", "sturges", "doane", "scott", "rice", "sqrt", "stone"])
def test_histogram_estimators(bins):
    x = RNG.standard_normal(5000)
    _hist_equal(x, bins=bins)
    _hist_equal(x.astype(np.float32), bins=bins)
    _hist_equal(x, bins=bins, range=(-1, 2))


def test_histogram_misc():
    _hist_equal(np.array([]), bins=10)
    _hist_equal(np.full(7, 5.0), bins=4)
    _hist_equal(np.array([1, 2, 2, 3, 10], dtype=np.int32), bins=3)
    _hist_equal(np.array([1, 2, 2, 3, 10], dtype=np.uint8), bins=np.int64(4))
    _hist_equal(np.array([True, False, True]), bins=2)
    _hist_equal(np.arange(10.0), bins=3, range=(2, 2))
    _hist_equal(np.arange(10.0).reshape(2, 5), bins=[0, 1, 5, 9])
    _hist_equal(np.arange(10.0), bins=np.array([0.0, 2.5, 2.5, 9.0]))  # repeated edge: empty bin
    _hist_equal(np.arange(10.0).astype(np.float16), bins=3)
    with pytest.raises(ValueError, match=r"histogram\(\).*'bins'"):
        fl.ops.histogram(np.ones(3), bins=0)
    with pytest.raises(ValueError, match=r"histogram\(\).*'bins'"):
        fl.ops.histogram(np.ones(3), bins=np.array([1.0, 0.0, 2.0]))  # not monotonic
    with pytest.raises(TypeError, match=r"histogram\(\).*'bins'"):
        fl.ops.histogram(np.ones(3), bins=2.5)
    for huge in (2**63, 10**400, 10**5000):  # more bins than an index can count: named, not NumPy's bare message
        with pytest.raises(ValueError, match=r"histogram\(\): argument 'bins' is too large: more bins than"):
            fl.ops.histogram(np.ones(3), bins=huge)
    with pytest.raises(TypeError, match=r"histogram\(\).*'x'"):
        fl.ops.histogram(np.array([1j]))


# ----------------------------------------------------------------------------------------------------------------
# quantile


@pytest.mark.parametrize("dtype", FLOATS)
def test_quantile_basics(dtype):
    x = RNG.standard_normal((11, 8)).astype(dtype)
    for q in [0.0, 0.25, 0.5, 1.0, [0.1, 0.9, 0.5], [[0.1, 0.2], [0.3, 0.99]], np.array(0.75)]:
        for axis in [None, 0, 1, -1, -2]:
            assert_result(fl.ops.quantile(x, q, axis=axis), np.quantile(x, q, axis=axis),
                          atol=8 * eps_of(dtype) * finite_scale(x))
    assert fl.ops.quantile(x, 0.0) == x.min()
    assert fl.ops.quantile(x, 1.0) == x.max()


@pytest.mark.parametrize("dtype", FLOATS)
def test_quantile_large(dtype):
    x = RNG.standard_normal(1_000_001).astype(dtype)
    for q in [0.001, 0.5, [0.25, 0.75, 0.999]]:
        assert_result(fl.ops.quantile(x, q), np.quantile(x, q), atol=8 * eps_of(dtype) * finite_scale(x))
    m = RNG.standard_normal((301, 1001)).astype(dtype)
    for axis in [0, 1]:
        assert_result(fl.ops.quantile(m, [0.3, 0.5], axis=axis), np.quantile(m, [0.3, 0.5], axis=axis),
                      atol=8 * eps_of(dtype) * finite_scale(m))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int64, np.uint64, np.float16, np.float32, np.float64])
def test_quantile_result_dtype_follows_numpy(dtype):
    """A NumPy float32 (or float16) q keeps float32 data float32; an integer q keeps the data's dtype (the
    minimum or maximum, exactly: also int64 values beyond 2**53)."""
    x = np.array([[1, 7, 3], [100, 0, 5]], dtype=dtype)
    for q in (0.5, 1, np.float16(0.25), np.float32(0.5), np.float64(0.5), [0, 1], np.array([1, 0], np.int8), True,
              [0.5], np.array([0.5, 0.25], np.float32)):
        for axis in (None, 0, 1):
            want = np.quantile(x, q, axis=axis)
            got = fl.ops.quantile(x, q, axis=axis)
            assert np.asarray(got).dtype == np.asarray(want).dtype, (q, axis)
            np.testing.assert_array_equal(got, want)
    big = np.array([2**63 - 1, -(2**63), 5])
    np.testing.assert_array_equal(fl.ops.quantile(big, [1, 0]), [2**63 - 1, -(2**63)])


def test_quantile_nan_slices():
    x = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]])
    assert np.isnan(fl.ops.quantile(x, 0.5))
    assert_result(fl.ops.quantile(x, 0.5, axis=1), np.quantile(x, 0.5, axis=1))
    assert_result(fl.ops.quantile(x, [0.0, 1.0], axis=0), np.quantile(x, [0.0, 1.0], axis=0))
    x = np.array([np.inf, -np.inf, 1.0, 2.0])
    with np.errstate(invalid="ignore"):
        expected = np.quantile(x, [0.0, 0.5, 1.0])
    assert_result(fl.ops.quantile(x, [0.0, 0.5, 1.0]), expected)


@pytest.mark.parametrize("q", [-0.1, 1.1, [0.5, 2.0], [[0.5], [-1e-9]], np.nan, [0.2, np.nan]])
def test_quantile_bad_q(q):
    with pytest.raises(ValueError, match=r"quantile\(\).*'q'"):
        fl.ops.quantile(np.arange(5.0), q)


def test_quantile_empty_is_value_error():
    with pytest.raises((ValueError, IndexError), match=r"quantile\(\)"):
        fl.ops.quantile(np.array([]), 0.5)


# ----------------------------------------------------------------------------------------------------------------
# zscore_anomalies


@pytest.mark.parametrize("dtype", FLOATS)
def test_zscore_anomalies_large(dtype):
    x = RNG.standard_normal((1000, 1003)) * 0.1
    hits = RNG.choice(x.size, 25, replace=False)
    x.flat[hits] = 40.0 * RNG.choice([-1.0, 1.0], 25)
    x = x.astype(dtype)
    for xx in [x, np.asfortranarray(x), x[:, ::-1]]:
        expected = np.flatnonzero(np.abs(xx - xx.mean()) / xx.std() > 3.0)
        np.testing.assert_array_equal(fl.ops.zscore_anomalies(xx), expected)
        np.testing.assert_array_equal(fl.ops.zscore_anomalies(xx, threshold=6.0),
                                      np.flatnonzero(np.abs(xx - xx.mean()) / xx.std() > 6.0))


# ----------------------------------------------------------------------------------------------------------------
# cdist


@pytest.mark.parametrize("path", CDIST_PATHS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_cdist_equal_rows_exact_zero(path, dtype):
    a = (RNG.standard_normal((6, 33)) * 1e4 + 1e6).astype(dtype)
    b = a[[4, 0, 2]]
    with cdist_path(path):
        for metric in ["euclidean", "sqeuclidean", "cosine"]:
            d = fl.ops.cdist(a, b, metric)
            assert d[4, 0] == 0.0 and d[0, 1] == 0.0 and d[2, 2] == 0.0
            if metric != "cosine":
                assert (np.delete(d, [4, 0, 2], axis=0) > 0).all()
        d = fl.ops.cdist(a, a, "euclidean")
    np.testing.assert_array_equal(np.diag(d), 0.0)


@pytest.mark.parametrize("path", CDIST_PATHS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_cdist_large(path, dtype, metric):
    a = RNG.standard_normal((203, 67)).astype(dtype)
    b = RNG.standard_normal((311, 67)).astype(dtype)
    b[::7] = a[:45:1]  # equal rows
    b[1::7] = a[:45] + 1e-3 * RNG.standard_normal((45, 67))  # near ones
    ro = a.copy()
    ro.flags.writeable = False
    cases = [(a, b), (np.asfortranarray(a), b[::-1]), (a[::2, ::3], b[:, ::3]), (ro, b)]
    for aa, bb in cases:
        expected = scipy_distance.cdist(aa, bb, metric)
        with cdist_path(path):
            actual = fl.ops.cdist(aa, bb, metric)
        assert actual.dtype == dtype
        np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=64 * eps_of(dtype) * 100)
        if metric != "cosine":
            np.testing.assert_array_equal(actual[(expected == 0)], 0.0)
            assert (actual >= 0).all()


# The GEMM formulation: entries with d^2 < tau (|a|^2 + |b|^2) (after shifting by the mean) are recomputed
# directly, so its relative error stays within about (k + 2) eps / tau of the direct sum: tau = 1/8 (float64),
# 1/4 (float32). These cases would fail without the shift and the fix-up.
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_cdist_gemm_near_and_far_points(dtype, metric):
    k = 40
    a = (1e3 + RNG.standard_normal((150, k))).astype(dtype)  # far from the origin: |a|^2 ~ 4e7
    b = np.concatenate([a[:50] + dtype.type(1e-3) * RNG.standard_normal((50, k)).astype(dtype), a[50:90]])
    expected = scipy_distance.cdist(a, b, metric)
    with cdist_path("gemm"):
        actual = fl.ops.cdist(a, b, metric)
    rtol = 4 * (k + 2) * eps_of(dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol * (1 if metric == "sqeuclidean" else 0.5), atol=0)
    assert (actual[50:90, 50:90][np.eye(40, dtype=bool)] == 0).all()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_cdist_gemm_nonfinite_and_huge(dtype, metric):
    a = RNG.standard_normal((40, 9)).astype(dtype)
    b = RNG.standard_normal((30, 9)).astype(dtype)
    a[3, 2] = np.nan
    b[5, 0] = np.inf
    b[6, 1] = -np.inf
    # float64: the squares overflow (the direct path, like SciPy, gives inf); float32 computes in float32, so its
    # huge row stays below float32's overflow
    a[7] = 1e18 if dtype == np.float32 else 1e200
    with cdist_path("gemm"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = scipy_distance.cdist(a.astype(np.float64), b.astype(np.float64), metric).astype(dtype)
        actual = fl.ops.cdist(a, b, metric)
        clean = fl.ops.cdist(a[4:], b[7:], metric)  # the huge row without the NaN and the infinities
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=64 * eps_of(dtype) * 10)
    np.testing.assert_allclose(clean, expected[4:, 7:], rtol=RTOL[dtype], atol=64 * eps_of(dtype) * 10)


def test_cdist_cosine_directions():
    a = RNG.standard_normal((20, 12))
    b = np.concatenate([a[:5], 3.0 * a[5:10], -a[10:15]])
    with cdist_path("gemm"):
        d = fl.ops.cdist(a, b, "cosine")
    np.testing.assert_array_equal(d[np.arange(5), np.arange(5)], 0.0)  # equal rows: exactly 0
    np.testing.assert_allclose(d[np.arange(5, 10), np.arange(5, 10)], 0.0, atol=1e-15)  # same direction
    np.testing.assert_allclose(d[np.arange(10, 15), np.arange(10, 15)], 2.0, rtol=1e-15)
    assert ((d >= 0) & (d <= 2)).all()
    np.testing.assert_allclose(d, scipy_distance.cdist(a, b, "cosine"), rtol=1e-12, atol=1e-14)


def test_cdist_errors():
    with pytest.raises(ValueError, match=r"cdist\(\).*'b'"):
        fl.ops.cdist(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"cdist\(\).*'metric'"):
        fl.ops.cdist(np.ones((2, 3)), np.ones((2, 3)), "manhattan")
    with pytest.raises(ValueError, match=r"cdist\(\).*'a'"):
        fl.ops.cdist(np.ones(3), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"cdist\(\).*'b'"):
        fl.ops.cdist(np.ones((2, 3)), np.ones((1, 2, 3)))


def test_cdist_default_metric_and_zero_rows():
    a = np.array([[0.0, 0.0]])
    b = np.array([[3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_array_equal(fl.ops.cdist(a, b), [[5.0, 1.0]])
    assert fl.ops.cdist(np.ones((0, 3)), np.ones((4, 3))).shape == (0, 4)
    assert fl.ops.cdist(np.ones((2, 3)), np.ones((0, 3)), "cosine").shape == (2, 0)


# ----------------------------------------------------------------------------------------------------------------
# matmul


@pytest.mark.parametrize("kernels", GEMM_KERNELS)
@pytest.mark.parametrize("dtype", [*FLOATS, np.dtype(np.int64), np.dtype(np.int32), np.dtype(np.uint8)])
def test_matmul_shapes(kernels, dtype):
    r = np.random.default_rng(3)
    with gemm_kernels(kernels):
        for m, k, n in [(3, 0, 4), (0, 5, 2), (1, 7, 1), (1, 1, 9), (17, 3, 1), (5, 5, 5), (65, 33, 129)]:
            a = r.integers(0, 4, (m, k)).astype(dtype)
            b = r.integers(0, 4, (k, n)).astype(dtype)
            layouts = [(a, b), (np.asfortranarray(a), np.asfortranarray(b)), (a[::-1], b[:, ::-1])]
            layouts += [(a[:, ::2], b[::2]), (a.T.copy().T, b.T.copy().T)]
            for aa, bb in layouts:
                assert_result(fl.ops.matmul(aa, bb), aa @ bb, atol=0)


@pytest.mark.parametrize("kernels", GEMM_KERNELS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_matmul_nonfinite_like_numpy(kernels, dtype):
    a = RNG.standard_normal((70, 50)).astype(dtype)
    b = RNG.standard_normal((50, 60)).astype(dtype)
    a[3, 4] = np.nan
    b[7, 9] = np.inf
    b[8, 10] = -np.inf
    with gemm_kernels(kernels), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = a @ b
        actual = fl.ops.matmul(a, b)
        out = np.full((60, 70), 5.0, dtype).T  # Fortran-ordered, garbage contents
        fl.ops.matmul(a, b, out=out)
    for r in (actual, out):
        np.testing.assert_array_equal(np.isnan(r), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(r), np.isinf(expected))
        fin = np.isfinite(expected)
        np.testing.assert_allclose(r[fin], expected[fin], rtol=RTOL[dtype], atol=100 * eps_of(dtype) * 50)


def test_blas_found_and_switchable(tmp_path):
    import subprocess
    import sys

    from ferrolab import _blas

    libs = [p for p in _blas.candidates() if "openblas" in p.lower()]
    if not libs:
        pytest.skip("NumPy links no OpenBLAS found next to it")
    assert _blas.in_use is not None  # found at import
    with pytest.raises(OSError):
        fl._core._use_blas(str(tmp_path / "no-such-library.so"))
    assert _blas.in_use == fl._core._use_blas(libs[0]) or _blas.in_use.startswith(libs[0])
    code = "import ferrolab._blas as b; print(b.in_use)"
    for env, want_none in [({"FERROLAB_BLAS": "off"}, True), ({"FERROLAB_BLAS": str(tmp_path / "x.so")}, True),
                           ({"FERROLAB_BLAS": libs[0]}, False)]:
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                             check=True).stdout.strip()
        assert (out == "None") == want_none, (env, out)


def test_matmul_errors():
    with pytest.raises(ValueError, match=r"matmul\(\).*'b'"):
        fl.ops.matmul(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"matmul\(\).*'a'"):
        fl.ops.matmul(np.ones(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"matmul\(\).*'b'"):
        fl.ops.matmul(np.ones((2, 3)), np.ones((2, 3, 2)))
    with pytest.raises(ValueError, match=r"matmul\(\).*'out'"):
        fl.ops.matmul(np.ones((2, 3)), np.ones((3, 2)), out=np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"matmul\(\).*'out'"):
        fl.ops.matmul(np.ones((2, 3)), np.ones((3, 2)), out=np.zeros((2, 2), dtype=np.int64))


# ----------------------------------------------------------------------------------------------------------------
# adam_step


def adam_reference(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled):
    """torch.optim.Adam / AdamW (single-tensor, foreach=False) arithmetic in the arrays' dtype."""
    dt = param.dtype.type
    g = grad.copy()
    if weight_decay != 0:
        if decoupled:
            param *= dt(1 - lr * weight_decay)
        else:
            g = g + dt(weight_decay) * param
    m += (g - m) * dt(1 - beta1)  # torch: exp_avg.lerp_(grad, 1 - beta1)
    v *= dt(beta2)
    v += dt(1 - beta2) * g * g  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bc1 = 1 - beta1**t
    bc2 = 1 - beta2**t
    step_size = lr / bc1
    denom = np.sqrt(v) / dt(math.sqrt(bc2)) + dt(eps)
    param += dt(-step_size) * (m / denom)


HYPER = [
    dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0),
    dict(lr=0.1, beta1=0.8, beta2=0.99, eps=1e-3, weight_decay=0.1),
    dict(lr=0.05, beta1=0.0, beta2=0.5, eps=0.5, weight_decay=0.01),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("hyper", range(len(HYPER)))
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("how", ["C", "F", "strided", "neg_strided", "T"])
def test_adam_step_matches_reference(dtype, hyper, decoupled, how):
    h = HYPER[hyper]
    r = np.random.default_rng(hyper * 10 + decoupled)
    shape = (37, 29)
    p0 = r.standard_normal(shape).astype(dtype)
    p, m, v = (layout(a, how) for a in (p0.copy(), np.zeros(shape, dtype), np.zeros(shape, dtype)))
    pr, mr, vr = p0.copy(), np.zeros(shape, dtype), np.zeros(shape, dtype)
    for t in range(1, 7):
        g = layout(r.standard_normal(shape).astype(dtype), how)
        prev = pr.copy()
        fl.ops.adam_step(p, g, m, v, t, decoupled=decoupled, **h)
        adam_reference(pr, g, mr, vr, t, decoupled=decoupled, **h)
        rtol = 2e-6 if dtype == np.float32 else 1e-13
        e = eps_of(dtype)
        np.testing.assert_allclose(m, mr, rtol=rtol, atol=8 * e)
        np.testing.assert_allclose(v, vr, rtol=rtol, atol=8 * e)
        np.testing.assert_allclose(p, pr, rtol=rtol, atol=8 * e)
        # the update itself (not only the parameters) to a relative precision
        step_ref = pr - prev
        np.testing.assert_allclose(p - prev, step_ref, rtol=1e-3 if dtype == np.float32 else 1e-9,
                                   atol=16 * e * (np.abs(prev).max() + 1))


def test_adam_step_doc_example():
    p = np.array([1.0, -1.0])
    g = np.array([0.5, -0.5])
    m = np.zeros(2)
    v = np.zeros(2)
    assert fl.ops.adam_step(p, g, m, v, t=1, lr=0.1) is None
    np.testing.assert_allclose(p, [0.9, -0.9], rtol=1e-7)


def test_adam_step_errors():
    def fresh(dtype=np.float64, n=4):
        return [np.ones(n, dtype) for _ in range(4)]

    p, g, m, v = fresh()
    p.flags.writeable = False
    with pytest.raises(ValueError, match=r"adam_step\(\).*'param'"):
        fl.ops.adam_step(p, g, m, v, 1)
    p, g, m, v = fresh()
    m.flags.writeable = False
    with pytest.raises(ValueError, match=r"adam_step\(\).*'m'"):
        fl.ops.adam_step(p, g, m, v, 1)
    p, g, m, v = fresh()
    v.flags.writeable = False
    with pytest.raises(ValueError, match=r"adam_step\(\).*'v'"):
        fl.ops.adam_step(p, g, m, v, 1)
    p, g, m, v = fresh()
    with pytest.raises(TypeError, match=r"adam_step\(\).*'grad'"):
        fl.ops.adam_step(p, g.astype(np.float32), m, v, 1)
    with pytest.raises(TypeError, match=r"adam_step\(\).*'m'"):
        fl.ops.adam_step(p, g, m.astype(np.float32), v, 1)
    with pytest.raises(TypeError, match=r"adam_step\(\).*'param'"):
        fl.ops.adam_step(np.ones(4, dtype=np.int64), g, m, v, 1)
    with pytest.raises(TypeError, match=r"adam_step\(\).*'param'"):
        fl.ops.adam_step([1.0, 2.0, 3.0, 4.0], g, m, v, 1)
    with pytest.raises(ValueError, match=r"adam_step\(\).*'grad'"):
        fl.ops.adam_step(p, np.ones(5), m, v, 1)
    with pytest.raises(ValueError, match=r"adam_step\(\).*'v'"):
        fl.ops.adam_step(p, g, m, np.ones((2, 2)), 1)
    for bad_t in [0, -3]:
        with pytest.raises(ValueError, match=r"adam_step\(\).*'t'"):
            fl.ops.adam_step(p, g, m, v, bad_t)
    np.testing.assert_array_equal(p, 1.0)  # nothing was touched by the failed calls
    np.testing.assert_array_equal(m, 1.0)


def test_adam_step_matches_torch():
    torch = pytest.importorskip("torch", reason=OPTIONAL + "torch (the NumPy reference covers the arithmetic)")
    r = np.random.default_rng(0)
    for decoupled in [False, True]:
        p0 = r.standard_normal(50).astype(np.float32)
        tp = torch.nn.Parameter(torch.tensor(p0.copy()))
        opt_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        opt = opt_cls([tp], lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05, foreach=False)
        p, m, v = p0.copy(), np.zeros(50, np.float32), np.zeros(50, np.float32)
        for t in range(1, 6):
            g = r.standard_normal(50).astype(np.float32)
            tp.grad = torch.tensor(g.copy())
            opt.step()
            fl.ops.adam_step(p, g, m, v, t, 0.01, 0.9, 0.99, 1e-6, 0.05, decoupled=decoupled)
            np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# accuracy


def test_sum_float32_accuracy_not_worse_than_numpy():
    x = np.full(10_000_000, 0.1, dtype=np.float32)
    exact = fsum_exact(x)
    err_fl = abs(float(fl.ops.sum(x)) - exact)
    err_np = abs(float(np.sum(x)) - exact)
    assert err_fl <= err_np, (err_fl, err_np)
    assert np.asarray(fl.ops.sum(x)).dtype == np.float32


def test_sum_float64_accuracy():
    r = np.random.default_rng(1)
    x = np.concatenate([r.standard_normal(1_000_000) * 1e6, r.standard_normal(1_000_000) * 1e-3, [1e15, -1e15]])
    r.shuffle(x)
    exact = fsum_exact(x)
    err_fl = abs(float(fl.ops.sum(x)) - exact)
    err_np = abs(float(np.sum(x)) - exact)
    assert err_fl <= max(err_np, 4 * np.finfo(np.float64).eps * abs(exact)), (err_fl, err_np)


def _exact_var(x: np.ndarray) -> Fraction:
    """The exact population variance of the float64 values of ``x``, with integer arithmetic.

    Every value is an integer multiple of 2**-k (k from the smallest exponent), so with X = x * 2**k,
    var = sum((n*X_i - S)**2) / (n**3 * 2**(2k)) where S = sum(X_i), all in Python integers.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    _, e = np.frexp(x[x != 0])
    k = int(53 - e.min())
    scaled = np.ldexp(x, k)
    assert np.all(scaled == np.round(scaled)) and np.all(np.abs(scaled) < 2.0**63)
    ints = scaled.astype(np.int64).tolist()
    n = len(ints)
    s = sum(ints)
    return Fraction(sum((n * v - s) ** 2 for v in ints), n**3 * 2 ** (2 * k))


def test_exact_var_reference():
    x = np.array([1.0, 2.0, 4.0, 0.5])
    assert _exact_var(x) == Fraction(sum((Fraction(v) - Fraction(75, 40)) ** 2 for v in x.tolist()), 4)


@pytest.mark.parametrize("noise", [1.0, 1e-3])
def test_var_large_offset_not_worse_than_numpy(noise):
    r = np.random.default_rng(7)
    x = 1e9 + r.standard_normal(1_000_000) * noise
    exact = _exact_var(x)
    err_fl = abs(Fraction(float(fl.ops.var(x))) - exact)
    err_np = abs(Fraction(float(np.var(x))) - exact)
    half_ulp = Fraction(float(np.spacing(float(exact)))) / 2  # rounding the exact value to float64
    assert err_fl <= max(err_np, half_ulp), (float(err_fl / exact), float(err_np / exact))
    sd = math.sqrt(exact)
    err_std = abs(float(fl.ops.std(x)) - sd)
    assert err_std <= max(abs(float(np.std(x)) - sd), 2 * np.spacing(sd)), (err_std, abs(float(np.std(x)) - sd))


def test_var_float32_large_offset():
    r = np.random.default_rng(8)
    x = (1e4 + r.standard_normal(1_000_000)).astype(np.float32)
    exact = float(_exact_var(x))
    err_fl = abs(float(fl.ops.var(x)) - exact)
    err_np = abs(float(np.var(x)) - exact)
    assert err_fl <= max(err_np, float(np.spacing(np.float32(exact)))), (err_fl, err_np, exact)


def _field(shape, dtype=np.float64):
    """Field 'a' of a packed structured array (field 'b', one byte, set to 7): strides that are not multiples of
    the item size."""
    s = np.zeros(shape, dtype=[("a", dtype), ("b", np.int8)])
    s["b"] = 7
    return s


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_fields_of_packed_structured_arrays_are_read_as_numpy_reads_them(dtype):
    """A field view's strides (9 bytes for float64 + int8) are not multiples of its item size: an n-d view would
    round them to whole elements and read the wrong memory (a float64 + float32 field: sum of 0..39 gave 287.9).
    Such inputs are copied first."""
    s = _field((6, 40), dtype)
    s["a"] = (np.random.default_rng(3).standard_normal((6, 40)) * 10).astype(dtype)
    x = s["a"]
    assert not x.flags.aligned
    for name in ["sum", "min", "max", "argmin", "argmax", "mean"]:
        for axis in (None, 0, 1):
            np.testing.assert_allclose(getattr(fl.ops, name)(x, axis=axis), getattr(np, name)(x, axis=axis),
                                       rtol=1e-6, atol=1e-3 if dtype == np.float32 else 0, err_msg=f"{name} {axis}")
    if dtype != np.int64:
        np.testing.assert_allclose(fl.ops.scale(x, 2.0), x * 2, rtol=1e-6)
        np.testing.assert_allclose(fl.ops.cdist(x, x), scipy_distance.cdist(x, x), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(fl.ops.dot(x[0], x[1]), np.dot(x[0], x[1]), rtol=1e-5)
    assert (s["b"] == 7).all()


def test_fields_of_packed_structured_arrays_as_out_are_written_in_place_of_nothing_else():
    x = np.arange(12.0).reshape(3, 4)
    for call, expect in [
        (lambda o: fl.ops.scale(x, 3.0, out=o), x * 3),
        (lambda o: fl.ops.axpy(2.0, x, x, out=o), 3 * x),
        (lambda o: fl.ops.clip(x, 2.0, 5.0, out=o), np.clip(x, 2.0, 5.0)),
        (lambda o: fl.ops.matmul(x[:, :3], np.eye(3, 4), out=o), x[:, :3] @ np.eye(3, 4)),
        (lambda o: fl.ops.standardize(x, axis=0, out=o), (x - x.mean(0)) / x.std(0)),
    ]:
        s = _field((3, 4))
        assert call(s["a"]) is not None
        np.testing.assert_allclose(s["a"], expect, rtol=1e-12)
        assert (s["b"] == 7).all(), "the other field was overwritten"
    p = _field(5)
    with pytest.raises(TypeError, match=r"adam_step\(\): argument 'param' must be an aligned"):
        fl.ops.adam_step(p["a"], np.ones(5), np.zeros(5), np.zeros(5), t=1)


def test_masked_arrays_written_by_an_op_are_type_errors():
    m = np.ma.array(np.zeros(3), mask=[0, 1, 0])
    with pytest.raises(TypeError, match=r"scale\(\): argument 'out' is a masked array"):
        fl.ops.scale(np.ones(3), 2.0, out=m)
    with pytest.raises(TypeError, match=r"adam_step\(\): argument 'grad' is a masked array"):
        fl.ops.adam_step(np.ones(3), m, np.zeros(3), np.zeros(3), t=1)
    with pytest.raises(TypeError, match=r"matmul\(\): argument 'out' is a masked array"):
        fl.ops.matmul(np.ones((3, 1)), np.ones((1, 1)), out=np.ma.array(np.zeros((3, 1)), mask=[[0], [1], [0]]))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "int64", "int16", "uint8", "uint64"])
def test_clip_with_both_bounds_none_is_a_copy_as_in_numpy(dtype):
    # NumPy >= 2.1 takes clip(x, None, None) and returns a copy (NumPy 1.26 raised ValueError)
    x = np.array([0, 1, 7, 3], dtype=dtype)
    r = fl.ops.clip(x, None, None)
    assert r.dtype == x.dtype and np.array_equal(r, x) and not np.shares_memory(r, x)
    out = np.zeros_like(x)
    assert fl.ops.clip(x, None, None, out=out) is out and np.array_equal(out, x)
