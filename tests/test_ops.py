"""fl.ops against NumPy/SciPy on random shapes, axes, dtypes and memory layouts (hypothesis)."""

from __future__ import annotations

import math
import warnings
import zlib

import ferrolab as fl
import numpy as np
import pytest
from conftest import (
    CDIST_PATHS,
    FLOATS,
    GEMM_KERNELS,
    LAYOUTS,
    MISSING,
    RTOL,
    assert_result,
    axes_for,
    call_like_numpy,
    cdist_path,
    elements,
    eps_of,
    finite_scale,
    float_arrays,
    gemm_kernels,
    layout,
    numpy_call,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

scipy_distance = pytest.importorskip("scipy.spatial.distance", reason=MISSING + "scipy (the cdist reference)")

# ----------------------------------------------------------------------------------------------------------------
# reductions


def _np_norm(x, axis=None):
    return np.linalg.norm(x, axis=axis)


REDUCTIONS = {
    "sum": (fl.ops.sum, np.sum),
    "mean": (fl.ops.mean, np.mean),
    "min": (fl.ops.min, np.min),
    "max": (fl.ops.max, np.max),
    "argmin": (fl.ops.argmin, np.argmin),
    "argmax": (fl.ops.argmax, np.argmax),
    "norm": (fl.ops.norm, _np_norm),
}


def _reduction_atol(name: str, x: np.ndarray) -> float:
    n = x.size + 1
    e = eps_of(x.dtype)
    s = finite_scale(x)
    if name in ("sum", "mean", "norm"):
        return 2 * n * e * s
    if name == "var":
        return 4 * n * e * s * s
    if name == "std":
        return 4 * n * e * s
    return 0.0


def check_reduction(name, fl_fn, np_fn, x, axis, **kw):
    status, expected, warned = numpy_call(lambda: np_fn(x, axis=axis, **kw))
    if status == "err":
        with pytest.raises(expected, match=rf"{name}\(\)"):
            fl_fn(x, axis=axis, **kw)
        return
    actual = call_like_numpy(warned, lambda: fl_fn(x, axis=axis, **kw))
    exact = name in ("min", "max", "argmin", "argmax")
    assert_result(actual, expected, atol=_reduction_atol(name, x), exact=exact)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@settings(max_examples=60)
@given(data=st.data())
def test_reduction_matches_numpy(name, data):
    x0 = data.draw(float_arrays(), label="x")
    how = data.draw(st.sampled_from(LAYOUTS), label="layout")
    x = layout(x0, how)
    axis = data.draw(axes_for(x.ndim), label="axis")
    if name in ("min", "max", "argmin", "argmax") and axis is not None and x.shape[axis] == 0 and x.size == 0:
        # reducing an empty axis to an empty result: covered by test_empty_min_max_is_value_error in
        # test_ops_edge.py; left out here so that it does not hide other counterexamples
        assume(np.prod([s for i, s in enumerate(x.shape) if i != axis % x.ndim]) != 0)
    fl_fn, np_fn = REDUCTIONS[name]
    check_reduction(name, fl_fn, np_fn, x, axis)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@settings(max_examples=40)
@given(data=st.data())
def test_reduction_nan_inf_match_numpy(name, data):
    x0 = data.draw(float_arrays(min_side=1, max_dims=3, nan=True, inf=True), label="x")
    x = layout(x0, data.draw(st.sampled_from(LAYOUTS), label="layout"))
    axis = data.draw(axes_for(x.ndim), label="axis")
    fl_fn, np_fn = REDUCTIONS[name]
    check_reduction(name, fl_fn, np_fn, x, axis)


@pytest.mark.parametrize("name", ["var", "std"])
@settings(max_examples=60)
@given(data=st.data())
def test_var_std_match_numpy(name, data):
    nan = data.draw(st.booleans(), label="with_nan_inf")
    x0 = data.draw(float_arrays(nan=nan, inf=nan), label="x")
    x = layout(x0, data.draw(st.sampled_from(LAYOUTS), label="layout"))
    axis = data.draw(axes_for(x.ndim), label="axis")
    ddof = data.draw(st.sampled_from([0, 1, 2, 0.5]), label="ddof")
    fl_fn = getattr(fl.ops, name)
    np_fn = getattr(np, name)
    check_reduction(name, fl_fn, np_fn, x, axis, ddof=ddof)


@pytest.mark.parametrize("name", ["argmin", "argmax"])
@settings(max_examples=60)
@given(data=st.data())
def test_argminmax_ties_and_nan(name, data):
    # few distinct values: ties are everywhere, NaN sometimes
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5), label="shape")
    x0 = data.draw(
        hnp.arrays(dtype, shape, elements=st.sampled_from([0.0, 1.0, -1.0, 2.0, np.nan, np.inf, -np.inf])),
        label="x",
    )
    x = layout(x0, data.draw(st.sampled_from(LAYOUTS), label="layout"))
    axis = data.draw(axes_for(x.ndim), label="axis")
    fl_fn, np_fn = REDUCTIONS[name]
    check_reduction(name, fl_fn, np_fn, x, axis)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", ["argmin", "argmax"])
def test_argminmax_rows_of_every_short_width(name, dtype):
    # rows of 1 to 130 values (the scalar pass, the one-mask search of up to 64 values and the block search),
    # with ties everywhere, the extreme at every position, and NaNs in some rows
    rng = np.random.default_rng(7)
    fl_fn, np_fn = REDUCTIONS[name]
    for width in range(1, 131):
        x = rng.integers(-3, 4, size=(3 * width + 2, width)).astype(dtype)
        for r in range(width):
            x[r, r] = 9.0 if name == "argmax" else -9.0
        x[width + 1 :: 7, width // 2] = np.nan
        x[-1, -1] = np.nan
        np.testing.assert_array_equal(fl_fn(x, axis=1), np_fn(x, axis=1), err_msg=f"width {width}")
        for row in (x[0], x[width // 2], x[width + 1], x[-1]):
            assert int(fl_fn(row)) == int(np_fn(row)), (width, row)


@pytest.mark.parametrize("name", ["sum", "mean", "min", "max", "argmin", "argmax", "norm", "var", "std"])
@pytest.mark.parametrize(
    "shape", [(100_003,), (257, 391), (3, 5, 7001), (1031, 2, 3), (640, 400), (20, 9001)]
)
@pytest.mark.parametrize("how", ["C", "F", "T", "neg_strided"])
def test_reduction_large_inputs(name, shape, how):
    """Sizes beyond the SIMD width, block size and parallel threshold, on every axis (with 2 threads, the last two
    shapes take the parallel column reductions that split the rows, one of them wider than a band of columns)."""
    rng = np.random.default_rng(zlib.crc32(repr((name, shape, how)).encode()))
    for dtype in FLOATS:
        x = layout((rng.standard_normal(shape) * 10 + 3).astype(dtype), how)
        fl_fn = getattr(fl.ops, name)
        np_fn = _np_norm if name == "norm" else getattr(np, name)
        for axis in [None, *range(-x.ndim, x.ndim)]:
            check_reduction(name, fl_fn, np_fn, x, axis)


@pytest.mark.parametrize("name", ["sum", "mean", "min", "max", "argmin", "argmax", "norm", "var", "std"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_column_reductions_nan_and_inf_in_every_row_range(name, dtype):
    """Parallel column reductions of narrow columns split the rows into one range per thread (both shapes, with 2
    threads): a NaN or an infinity in the first, a middle or the last row, or in several, gives NumPy's result in
    its column (and the others stay exact)."""
    rng = np.random.default_rng(7)
    fl_fn, np_fn = getattr(fl.ops, name), (_np_norm if name == "norm" else getattr(np, name))
    for shape in [(640, 400), (20, 9001)]:
        x = (rng.standard_normal(shape) * 10 + 3).astype(dtype)
        n, m = shape
        for rows, special in [([0], np.nan), ([n // 2], np.nan), ([n - 1], np.nan), ([1, n - 2], np.nan),
                              ([n // 2 + 1], np.inf), ([n - 1], -np.inf), ([0, n - 1], np.inf)]:
            y = x.copy()
            for k, r in enumerate(rows):
                y[r, (7 + k) % m] = special  # the same column, or a neighbour
                y[r, m - 1] = special  # the last column (the remainder of a band)
            check_reduction(name, fl_fn, np_fn, y, 0)


@pytest.mark.parametrize("name", ["sum", "min", "max", "argmin", "argmax"])
@pytest.mark.parametrize("shape", [(100_003,), (640, 400), (20, 9001), (3, 5, 7001)])
@pytest.mark.parametrize("how", ["C", "F", "T", "neg_strided"])
def test_int64_reductions_large_inputs(name, shape, how):
    """int64 reductions on sizes beyond the lanes and the parallel threshold, on every axis: few distinct values (ties
    everywhere) and values near 2**62, whose sums wrap like NumPy's."""
    rng = np.random.default_rng(zlib.crc32(repr((name, shape, how)).encode()))
    for x0 in (rng.integers(-3, 4, shape), rng.integers(2**62 - 50, 2**62, shape)):
        x = layout(x0.astype(np.int64), how)
        for axis in [None, *range(-x.ndim, x.ndim)]:
            got, want = getattr(fl.ops, name)(x, axis=axis), getattr(np, name)(x, axis=axis)
            np.testing.assert_array_equal(got, want, err_msg=f"{name} axis={axis}")
            assert np.asarray(got).dtype == np.int64


def test_int64_dot_strided_wraps():
    x = np.arange(3 * 10_001, dtype=np.int64)[::3] * (2**40 + 7)
    y = np.arange(10_001, dtype=np.int64)[::-1] * 2**25
    with np.errstate(over="ignore"):
        assert fl.ops.dot(x, y) == np.dot(x, y)


@pytest.mark.parametrize("dtype", FLOATS)
def test_column_argminmax_ties_across_row_ranges(dtype):
    """The first of equal extremes wins also when they lie in different threads' row ranges."""
    for shape in [(640, 400), (20, 9001)]:
        n, m = shape
        x = np.zeros(shape, dtype)
        np.testing.assert_array_equal(fl.ops.argmax(x, axis=0), np.zeros(m, np.int64))
        x[[3, n // 2 + 1, n - 1], 5] = 9.0
        x[[2, n - 2], m - 1] = -9.0
        for name in ("argmin", "argmax"):
            np.testing.assert_array_equal(getattr(fl.ops, name)(x, axis=0), getattr(np, name)(x, axis=0))


# ----------------------------------------------------------------------------------------------------------------
# dot


@settings(max_examples=60)
@given(data=st.data())
def test_dot_matches_numpy(data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    n = data.draw(st.integers(0, 300), label="n")
    el = elements(dtype)
    x0 = data.draw(hnp.arrays(dtype, n, elements=el), label="x")
    y0 = data.draw(hnp.arrays(dtype, n, elements=el), label="y")
    x = layout(x0, data.draw(st.sampled_from(["C", "reversed", "strided", "neg_strided", "readonly"])))
    y = layout(y0, data.draw(st.sampled_from(["C", "reversed", "strided", "neg_strided", "readonly"])))
    expected = np.dot(x, y)
    atol = 2 * (n + 1) * eps_of(dtype) * finite_scale(x) * finite_scale(y)
    assert_result(fl.ops.dot(x, y), expected, atol=atol)


def test_dot_nan_inf():
    x = np.array([1.0, np.inf, 2.0])
    assert np.isinf(fl.ops.dot(x, np.ones(3)))
    assert np.isnan(fl.ops.dot(x, np.array([1.0, 0.0, 1.0])))  # inf * 0
    assert np.isnan(fl.ops.dot(np.array([np.nan, 1.0]), np.ones(2)))


# ----------------------------------------------------------------------------------------------------------------
# elementwise: axpy, fma, scale, clip


def _writeable_layouts():
    return st.sampled_from(["C", "F", "T", "reversed", "strided", "neg_strided"])


@settings(max_examples=60)
@given(data=st.data())
def test_axpy_matches_numpy(data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=5), label="shapes")
    x = layout(data.draw(hnp.arrays(dtype, shapes.input_shapes[0], elements=elements(dtype))), data.draw(
        st.sampled_from(LAYOUTS)))
    y = layout(data.draw(hnp.arrays(dtype, shapes.input_shapes[1], elements=elements(dtype))), data.draw(
        st.sampled_from(LAYOUTS)))
    a = data.draw(st.floats(-10, 10, width=8 * np.dtype(dtype).itemsize), label="a")
    expected = a * x + y
    atol = 2 * eps_of(dtype) * (abs(a) * finite_scale(x) + finite_scale(y))
    assert_result(fl.ops.axpy(a, x, y), expected, atol=atol)


@settings(max_examples=60)
@given(data=st.data())
def test_fma_matches_numpy(data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=4, max_side=5), label="shapes")
    ops = []
    for i in range(3):
        arr = data.draw(hnp.arrays(dtype, shapes.input_shapes[i], elements=elements(dtype, nan=True, inf=True)))
        ops.append(layout(arr, data.draw(st.sampled_from(LAYOUTS))))
    x, y, z = ops
    with np.errstate(all="ignore"):
        expected = x * y + z
    atol = 2 * eps_of(dtype) * (finite_scale(x) * finite_scale(y) + finite_scale(z))
    assert_result(fl.ops.fma(x, y, z), expected, atol=atol)


@settings(max_examples=60)
@given(data=st.data())
def test_scale_matches_numpy(data):
    x0 = data.draw(float_arrays(nan=True, inf=True), label="x")
    x = layout(x0, data.draw(st.sampled_from(LAYOUTS)))
    a = data.draw(st.floats(-10, 10, width=8 * x.dtype.itemsize), label="a")
    with np.errstate(all="ignore"):
        expected = a * x
    assert_result(fl.ops.scale(x, a), expected, atol=eps_of(x.dtype) * abs(a) * finite_scale(x))


@settings(max_examples=60)
@given(data=st.data())
def test_clip_matches_numpy(data):
    x0 = data.draw(float_arrays(nan=True, inf=True), label="x")
    x = layout(x0, data.draw(st.sampled_from(LAYOUTS)))
    w = 8 * x.dtype.itemsize
    lo = data.draw(st.one_of(st.none(), st.floats(-1e3, 1e3, width=w)), label="lo")
    hi = data.draw(st.one_of(st.none(), st.floats(-1e3, 1e3, width=w)), label="hi")
    assume(lo is not None or hi is not None)
    expected = np.clip(x, lo, hi)
    assert_result(fl.ops.clip(x, lo, hi), expected, exact=True)


@pytest.mark.parametrize("op", ["axpy", "fma", "scale", "clip"])
@settings(max_examples=40)
@given(data=st.data())
def test_elementwise_out_variants(op, data):
    """out= a fresh C/Fortran array, a strided view, or exactly one of the inputs."""
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6), label="shape")
    arrs = [layout(data.draw(hnp.arrays(dtype, shape, elements=elements(dtype))), data.draw(_writeable_layouts()))
            for _ in range(3)]
    x, y, z = arrs
    a = 1.5
    funcs = {
        "axpy": (lambda out: fl.ops.axpy(a, x, y, out=out), lambda: a * x + y, [x, y]),
        "fma": (lambda out: fl.ops.fma(x, y, z, out=out), lambda: x * y + z, [x, y, z]),
        "scale": (lambda out: fl.ops.scale(x, a, out=out), lambda: a * x, [x]),
        "clip": (lambda out: fl.ops.clip(x, -100.0, 250.0, out=out), lambda: np.clip(x, -100.0, 250.0), [x]),
    }
    call, ref, inputs = funcs[op]
    expected = ref()
    target = data.draw(st.sampled_from(["C", "F", "strided", "neg_strided", *[f"in{i}" for i in range(len(inputs))]]))
    if target.startswith("in"):
        # zero-size out=<input> is covered by test_out_is_an_input_zero_size in test_ops_edge.py; left out here so
        # that it does not hide other counterexamples
        assume(x.size > 0)
        out = inputs[int(target[2:])]
    else:
        out = layout(np.zeros(shape, dtype), target)
    r = call(out)
    assert r is out, "with out=, the out array itself is returned (like NumPy ufuncs)"
    atol = 4 * eps_of(dtype) * (finite_scale(x) * 1.5 * finite_scale(y) + finite_scale(z))
    assert_result(out, np.asarray(expected), atol=atol)


# ----------------------------------------------------------------------------------------------------------------
# standardize


@settings(max_examples=60)
@given(data=st.data())
def test_standardize_matches_numpy(data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5), label="shape")
    x0 = data.draw(hnp.arrays(dtype, shape, elements=elements(dtype), unique=True), label="x")
    x = layout(x0, data.draw(st.sampled_from(LAYOUTS), label="layout"))
    axis = data.draw(axes_for(x.ndim), label="axis")
    ddof = data.draw(st.sampled_from([0, 1]), label="ddof")

    def ref():
        mu = x.mean(axis=axis, keepdims=True)
        sd = x.std(axis=axis, ddof=ddof, keepdims=True)
        return (x - mu) / sd, sd

    status, res, warned = numpy_call(ref)
    assert status == "ok"
    expected, sd = res
    actual = call_like_numpy(warned, lambda: fl.ops.standardize(x, axis=axis, ddof=ddof))
    sdf = np.asarray(sd, dtype=np.float64)
    if dtype == np.float32:
        # NumPy squares the float32 deviations in float32: below about 1e-19 they underflow (a spread of 1e-38
        # gives a standard deviation of 0 and infinite results) while ferrolab's float64 accumulation is exact;
        # NumPy is no reference for such slices
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sd64 = x.astype(np.float64).std(axis=axis, ddof=ddof, keepdims=True)
        assume(not np.any((sd64 > 0) & (sd64 < 1e-18)))
    pos = sdf[np.isfinite(sdf) & (sdf > 0)]
    smin = float(pos.min()) if pos.size else 1.0
    atol = 8 * (x.size + 1) * eps_of(dtype) * finite_scale(x) / smin
    assert_result(actual, expected, atol=atol)


# ----------------------------------------------------------------------------------------------------------------
# matmul


@pytest.mark.parametrize("kernels", GEMM_KERNELS)
@settings(max_examples=60)
@given(data=st.data())
def test_matmul_matches_numpy(kernels, data):
    dtype = data.draw(st.sampled_from([*FLOATS, np.dtype(np.int64), np.dtype(np.int32)]), label="dtype")
    m, k, n = (data.draw(st.integers(0, 40), label=lbl) for lbl in "mkn")
    if dtype.kind == "f":
        el = elements(dtype, -10, 10)
    else:
        el = st.integers(-1000, 1000)
    a = layout(data.draw(hnp.arrays(dtype, (m, k), elements=el)), data.draw(st.sampled_from(LAYOUTS)))
    b = layout(data.draw(hnp.arrays(dtype, (k, n), elements=el)), data.draw(st.sampled_from(LAYOUTS)))
    expected = a @ b
    atol = 2 * (k + 1) * eps_of(dtype) * finite_scale(a) * finite_scale(b)
    with gemm_kernels(kernels):
        assert_result(fl.ops.matmul(a, b), expected, atol=atol)


@pytest.mark.parametrize("kernels", GEMM_KERNELS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mkn", [(1, 1, 1), (1, 300, 1), (1, 257, 129), (130, 1, 70), (97, 131, 65), (256, 256, 256)])
@pytest.mark.parametrize("order", ["CC", "FF", "CF", "FC"])
def test_matmul_large(kernels, dtype, mkn, order):
    with gemm_kernels(kernels):
        _check_matmul_large(dtype, mkn, order)


def _check_matmul_large(dtype, mkn, order):
    m, k, n = mkn
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    a = np.asfortranarray(a) if order[0] == "F" else a
    b = np.asfortranarray(b) if order[1] == "F" else b
    expected = a @ b
    atol = 2 * (k + 1) * eps_of(dtype) * finite_scale(a) * finite_scale(b)
    assert_result(fl.ops.matmul(a, b), expected, atol=atol)
    for out_order in "CF":
        out = np.zeros((m, n), dtype=dtype, order=out_order)
        r = fl.ops.matmul(a, b, out=out)
        assert r is out
        assert_result(out, expected, atol=atol)
    # a strided out view
    base = np.full((2 * m, 2 * n), 7.0, dtype=dtype)
    out = base[::2, ::2]
    fl.ops.matmul(a, b, out=out)
    assert_result(out, expected, atol=atol)
    np.testing.assert_array_equal(base[1::2, :], 7.0)
    np.testing.assert_array_equal(base[:, 1::2], 7.0)


# ----------------------------------------------------------------------------------------------------------------
# histogram


@settings(max_examples=60)
@given(data=st.data())
def test_histogram_matches_numpy(data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=8), label="shape")
    grid = data.draw(st.booleans(), label="grid")
    if grid:  # values on a grid of tenths: many land exactly on bin edges
        el = st.integers(-20, 20).map(lambda i: i / 10)
    else:
        el = elements(dtype, -100, 100)
    x0 = data.draw(hnp.arrays(dtype, shape, elements=el), label="x")
    x = layout(x0, data.draw(st.sampled_from(LAYOUTS), label="layout"))
    bins = data.draw(st.integers(1, 25), label="bins")
    rng_kind = data.draw(st.sampled_from(["none", "range"]), label="range_kind")
    rng = None
    if rng_kind == "range":
        lo = data.draw(st.integers(-25, 20), label="lo") / 10
        hi = lo + data.draw(st.integers(0, 30), label="width") / 10
        rng = (lo, hi)
    ec, ee = np.histogram(x, bins=bins, range=rng)
    counts, edges = fl.ops.histogram(x, bins=bins, range=rng)
    assert counts.dtype == ec.dtype and edges.dtype == ee.dtype
    np.testing.assert_array_equal(counts, ec)
    np.testing.assert_array_equal(edges, ee)


@settings(max_examples=60)
@given(data=st.data())
def test_histogram_explicit_edges_match_numpy(data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    x = data.draw(hnp.arrays(dtype, data.draw(st.integers(0, 60)), elements=st.integers(-30, 30).map(
        lambda i: i / 10)), label="x")
    edges = np.unique(np.array(data.draw(st.lists(st.integers(-25, 25), min_size=2, max_size=12)), dtype=float) / 10)
    assume(edges.size >= 2)
    edges_in = data.draw(st.sampled_from(["array", "list"]))
    bins = edges if edges_in == "array" else edges.tolist()
    ec, ee = np.histogram(x, bins=bins)
    counts, e = fl.ops.histogram(x, bins=bins)
    np.testing.assert_array_equal(counts, ec)
    np.testing.assert_array_equal(e, ee)
    assert counts.dtype == ec.dtype


# ----------------------------------------------------------------------------------------------------------------
# quantile


@settings(max_examples=60)
@given(data=st.data())
def test_quantile_matches_numpy(data):
    x0 = data.draw(float_arrays(min_side=1, max_dims=3, max_side=6, nan=data.draw(st.booleans())), label="x")
    x = layout(x0, data.draw(st.sampled_from(LAYOUTS), label="layout"))
    axis = data.draw(axes_for(x.ndim), label="axis")
    qs = st.floats(0, 1)
    q_kind = data.draw(st.sampled_from(["scalar", "list", "2d"]), label="q_kind")
    if q_kind == "scalar":
        q = data.draw(st.one_of(qs, st.sampled_from([0.0, 0.5, 1.0])), label="q")
    elif q_kind == "list":
        q = data.draw(st.lists(qs, min_size=1, max_size=4), label="q")
    else:
        q = np.array(data.draw(st.lists(qs, min_size=6, max_size=6)), dtype=np.float64).reshape(2, 3)
    expected = np.quantile(x, q, axis=axis)
    actual = fl.ops.quantile(x, q, axis=axis)
    assert_result(actual, expected, atol=8 * eps_of(x.dtype) * finite_scale(x))


# ----------------------------------------------------------------------------------------------------------------
# zscore_anomalies


@settings(max_examples=60)
@given(data=st.data())
def test_zscore_anomalies_matches_numpy(data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=4, max_side=12), label="shape")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, size=shape) + 5.0
    n_out = data.draw(st.integers(0, 3), label="n_outliers")
    idx = rng.choice(x0.size, size=min(n_out, x0.size // 8), replace=False)
    x0.flat[idx] = 5.0 + rng.choice([-1, 1], size=idx.size) * rng.uniform(50, 100, size=idx.size)
    x = layout(x0.astype(dtype), data.draw(st.sampled_from(LAYOUTS), label="layout"))
    t = data.draw(st.sampled_from([1.5, 2.0, 3.0]), label="threshold")
    z = np.abs(x - x.mean()) / x.std()
    assume(np.all(np.abs(z - t) > 1e-3 * t))  # no value sits on the threshold
    expected = np.flatnonzero(z > t)
    actual = fl.ops.zscore_anomalies(x, threshold=t)
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == np.int64
    np.testing.assert_array_equal(actual, expected)


# ----------------------------------------------------------------------------------------------------------------
# cdist


@pytest.mark.parametrize("path", CDIST_PATHS)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@settings(max_examples=60)
@given(data=st.data())
def test_cdist_matches_scipy(path, metric, data):
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    ma, mb = data.draw(st.integers(0, 9), label="ma"), data.draw(st.integers(0, 9), label="mb")
    k = data.draw(st.integers(1, 20), label="k")
    el = elements(dtype, -100, 100)
    a = layout(data.draw(hnp.arrays(dtype, (ma, k), elements=el), label="a"), data.draw(st.sampled_from(LAYOUTS)))
    b = layout(data.draw(hnp.arrays(dtype, (mb, k), elements=el), label="b"), data.draw(st.sampled_from(LAYOUTS)))
    if metric == "cosine":
        assume(np.all(np.linalg.norm(a.astype(np.float64), axis=1) > 1e-3))
        assume(np.all(np.linalg.norm(b.astype(np.float64), axis=1) > 1e-3))
    expected = scipy_distance.cdist(a, b, metric)
    with cdist_path(path):
        actual = fl.ops.cdist(a, b, metric)
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == dtype  # float32 inputs give float32 (SciPy gives float64: values only)
    assert actual.shape == expected.shape
    e = eps_of(dtype)
    s = max(finite_scale(a), finite_scale(b))
    atol = {"euclidean": 8 * (k + 1) * e * s, "sqeuclidean": 16 * (k + 1) * e * s * s, "cosine": 16 * (k + 1) * e}[
        metric]
    # ferrolab computes in the input's precision, as NumPy's own arithmetic does, where SciPy upcasts to float64: a
    # squared difference below the dtype's smallest normal number underflows (float32: |a - b| < ~1.1e-19)
    tiny = float(np.finfo(dtype).tiny)
    atol += {"euclidean": math.sqrt(4 * (k + 1) * tiny), "sqeuclidean": 4 * (k + 1) * tiny, "cosine": 0.0}[metric]
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=RTOL[dtype], atol=atol)
