"""fl.dask: results equal NumPy's on the computed array for random chunkings, on the threaded scheduler and on a real
distributed.LocalCluster with two worker processes; errors name the function and the argument; worker metrics."""

from __future__ import annotations

import urllib.request
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import MISSING
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    import dask
    import dask.array as da
    import distributed
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"{MISSING}dask[distributed] (pip install -e '.[test]'): {e}", allow_module_level=True)

import ferrolab as fl

EXAMPLES = 15


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A LocalCluster of two single-threaded worker processes, closed at the end of the module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, memory_limit="2GiB"
        )
    c = distributed.Client(cluster, timeout=60)
    try:
        yield c
    finally:
        c.close(timeout=30)
        cluster.close(timeout=30)


def _chunks_for(draw: Any, n: int) -> tuple[int, ...]:
    """A random chunking of a dimension of length n (positive chunk sizes)."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 5)))) if n > 1 else []
    bounds = [0, *cuts, n]
    return tuple(b - a for a, b in zip(bounds, bounds[1:], strict=False))


@st.composite
def arrays(draw: Any, dtypes: tuple[str, ...] = ("float64", "float32", "int64"), max_dims: int = 3) -> Any:
    ndim = draw(st.integers(1, max_dims))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        a = rng.normal(draw(st.sampled_from([0.0, 1e3])), 1.0, size=shape).astype(dtype)
        if draw(st.booleans()):  # ties
            a = np.round(a, 1).astype(dtype)
    else:
        a = rng.integers(-50, 50, size=shape).astype(dtype)
    chunks = tuple(_chunks_for(draw, n) for n in shape)
    return a, da.from_array(a, chunks=chunks)


def _tol(a: np.ndarray) -> dict[str, float]:
    return {"rtol": 2e-4, "atol": 1e-3} if a.dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-9}


def _axes(a: np.ndarray) -> list[int | None]:
    return [None, *range(a.ndim)]


def check_all(a: np.ndarray, x: Any, scheduler: Any) -> None:
    def compute(*objs: Any) -> Any:
        if scheduler == "threads":
            return dask.compute(*objs, scheduler="threads")
        return scheduler.compute(list(objs), sync=True)

    tol = _tol(a)
    for axis in _axes(a):
        ddof = 1 if (a.size if axis is None else a.shape[axis]) > 1 else 0
        got = compute(
            fl.dask.sum(x, axis),
            fl.dask.mean(x, axis),
            fl.dask.min(x, axis),
            fl.dask.max(x, axis),
            fl.dask.var(x, axis),
            fl.dask.std(x, axis, ddof=ddof),
            fl.dask.quantile(x, [0.0, 0.25, 0.5, 0.9, 1.0], axis),
        )
        want = (
            np.sum(a, axis),
            np.mean(a, axis),
            np.min(a, axis),
            np.max(a, axis),
            np.var(a, axis),
            np.std(a, axis, ddof=ddof),
            np.quantile(a, [0.0, 0.25, 0.5, 0.9, 1.0], axis),
        )
        names = ("sum", "mean", "min", "max", "var", "std", "quantile")
        for name, g, w in zip(names, got, want, strict=True):
            g = np.asarray(g)
            assert g.shape == np.shape(w), (name, axis, g.shape, np.shape(w))
            assert g.dtype == np.asarray(w).dtype, (name, axis, g.dtype, np.asarray(w).dtype)
            if name in ("min", "max") or (name == "quantile" and axis is None):
                # exact: the quantile is selected, not approximated
                np.testing.assert_array_equal(g, w, err_msg=f"{name} axis={axis}")
            else:
                np.testing.assert_allclose(g, w, **tol, err_msg=f"{name} axis={axis}")
    counts, edges = compute(*fl.dask.histogram(x, bins=7))
    wc, we = np.histogram(a, bins=7)
    np.testing.assert_array_equal(edges, we)
    np.testing.assert_array_equal(counts, wc)
    (st_,) = compute(fl.dask.standardize(x))
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = (a - a.mean()) / a.std()
    np.testing.assert_allclose(st_, ref, **tol)
    (z,) = compute(fl.dask.zscore_anomalies(x, threshold=1.5))
    np.testing.assert_array_equal(z, fl.ops.zscore_anomalies(a, threshold=1.5))


@settings(max_examples=EXAMPLES)
@given(arrays())
def test_threads_equal_numpy(ax: Any) -> None:
    a, x = ax
    check_all(a, x, "threads")


@settings(max_examples=8)
@given(arrays(max_dims=2))
def test_local_cluster_equals_numpy(client: Any, ax: Any) -> None:
    a, x = ax
    check_all(a, x, client)


def test_processes_scheduler() -> None:
    a = np.random.default_rng(1).normal(size=(40, 30))
    x = da.from_array(a, chunks=(7, 11))
    v, q = dask.compute(fl.dask.var(x, axis=1), fl.dask.quantile(x, 0.3), scheduler="processes", num_workers=2)
    np.testing.assert_allclose(v, a.var(axis=1), rtol=1e-12)
    assert q == np.quantile(a, 0.3)


def test_quantile_refines_past_one_histogram(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny gather limit the quantile goes through several histogram refinements and stays exact."""
    monkeypatch.setattr(fl.dask, "QUANTILE_GATHER", 3)
    monkeypatch.setattr(fl.dask, "QUANTILE_BINS", 4)
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.normal(size=3000), np.full(500, 0.25), rng.normal(size=10) * 1e-12])
    x = da.from_array(a, chunks=700)
    qs = [0.0, 0.01, 0.3, 0.5, 0.51, 0.77, 1.0]
    np.testing.assert_array_equal(fl.dask.quantile(x, qs).compute(scheduler="threads"), np.quantile(a, qs))


@pytest.mark.parametrize("kind", ["ulps", "big_ints", "uint64"])
def test_quantile_refines_values_a_few_ulps_apart_and_huge_integers(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Brackets narrower than their bins (values a few ulps apart), and integers beyond 2**53 (several to one
    float64), stay exact through the refinements: no wrap-around near the int64 limits, no lost values."""
    monkeypatch.setattr(fl.dask, "QUANTILE_GATHER", 2)
    monkeypatch.setattr(fl.dask, "QUANTILE_BINS", 4)
    rng = np.random.default_rng(11)
    qs = [0.0, 0.1, 0.25, 0.5, 0.77, 1.0]
    for _ in range(8):
        n = int(rng.integers(5, 150))
        if kind == "ulps":
            a = 1.0 + np.finfo(np.float64).eps * rng.integers(0, int(rng.integers(1, 12)), n)
        elif kind == "big_ints":
            base = int(rng.choice([2**53, 2**62, -(2**62), 2**63 - 200]))
            a = np.concatenate([base + rng.integers(-100, 100, n), [2**63 - 1, -(2**63)]]).astype(np.int64)
        else:
            a = (2**64 - 1 - rng.integers(0, 300, n).astype(np.uint64)).astype(np.uint64)
        for chunks in (1, 7, 200):
            x = da.from_array(a, chunks=chunks)
            got = fl.dask.quantile(x, qs).compute(scheduler="sync")
            np.testing.assert_array_equal(got, np.quantile(a, qs), err_msg=f"{kind} {chunks}")


def test_quantile_refinement_with_empty_chunks_and_a_span_beyond_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fl.dask, "QUANTILE_GATHER", 2)
    monkeypatch.setattr(fl.dask, "QUANTILE_BINS", 4)
    rng = np.random.default_rng(4)
    a = rng.normal(size=200)
    x = da.from_array(a, chunks=20)
    y = x[x > 0.5]  # some chunks become empty (and the sizes unknown)
    qs = [0.0, 0.3, 0.5, 1.0]
    np.testing.assert_array_equal(fl.dask.quantile(y, qs).compute(scheduler="sync"), np.quantile(a[a > 0.5], qs))
    wide = np.array([-1.7e308, 1.7e308, 0.0, 1.0, 2.0])  # finite, but max - min is beyond float64
    got = fl.dask.quantile(da.from_array(wide, chunks=2), qs).compute(scheduler="sync")
    np.testing.assert_array_equal(got, np.quantile(wide, qs))


def test_quantile_result_dtypes_follow_numpy() -> None:
    """float32 q keeps float32 data float32; integer q keeps the data's dtype (the minimum or maximum, exactly)."""
    for dtype in (np.int8, np.uint64, np.int64, np.float16, np.float32, np.float64):
        a = np.array([[1, 7, 3], [100, 0, 5]], dtype=dtype)
        x = da.from_array(a, chunks=1)
        for q in (0.5, np.float32(0.5), np.float16(0.25), [0, 1], np.array([1, 0], np.int8), True, [0.5]):
            for axis in (None, 0, 1):
                want = np.quantile(a, q, axis=axis)
                got = fl.dask.quantile(x, q, axis=axis)
                assert got.dtype == want.dtype, (dtype, q, axis)
                np.testing.assert_array_equal(got.compute(), want)
    big = np.array([2**63 - 1, -(2**63), 5])
    ends = fl.dask.quantile(da.from_array(big, chunks=2), [1, 0]).compute()
    np.testing.assert_array_equal(ends, [2**63 - 1, -(2**63)])


def test_unknown_chunk_sizes_and_0d() -> None:
    a = np.array([0.0] * 10 + [100.0])
    x = da.from_array(a, chunks=4)
    y = x[x > -1]  # chunk sizes unknown until computed
    assert np.isnan(y.shape[0])
    np.testing.assert_array_equal(fl.dask.zscore_anomalies(y).compute(), [10])
    rng = np.random.default_rng(3)
    b = rng.normal(size=(7, 9, 5))
    b[3, 4, 2], b[0, 0, 0] = 50.0, -60.0
    xb = da.from_array(b, chunks=(2, 3, 5))
    for z in (xb, xb[xb[:, 0, 0] > -100]):
        np.testing.assert_array_equal(fl.dask.zscore_anomalies(z, 4).compute(), fl.ops.zscore_anomalies(b, 4))
    m = np.arange(12.0).reshape(6, 2)
    mu = da.from_array(m, chunks=2)
    mu = mu[mu[:, 0] > -1]
    for q in (0.5, [0.5], [[0.25, 0.5], [0.75, 1.0]]):
        np.testing.assert_array_equal(fl.dask.quantile(mu, q, axis=1).compute(), np.quantile(m, q, axis=1))
    ints = np.arange(12).reshape(6, 2)
    iu = da.from_array(ints, chunks=2)
    iu = iu[iu[:, 0] > -1]
    for q in (1, [0, 1]):  # integer q on integers: NumPy's dtype, also on unknown chunk sizes
        got = fl.dask.quantile(iu, q, axis=1)
        want = np.quantile(ints, q, axis=1)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.compute(), want)
    zero_d = da.from_array(np.array(3.0))
    assert np.isnan(fl.dask.standardize(zero_d).compute())
    assert fl.dask.zscore_anomalies(zero_d).compute().size == 0


def test_nan_and_inf() -> None:
    a = np.arange(20.0)
    a[7] = np.nan
    x = da.from_array(a, chunks=6)
    for name in ("sum", "mean", "min", "max", "var", "std"):
        assert np.isnan(getattr(fl.dask, name)(x).compute()), name
    assert np.isnan(fl.dask.quantile(x, 0.5).compute())
    assert fl.dask.zscore_anomalies(x).compute().size == 0
    b = np.arange(20.0)
    b[3] = np.inf
    y = da.from_array(b, chunks=6)
    with np.errstate(invalid="ignore"):
        want = np.quantile(b, [0.5, 0.99, 1.0])
    np.testing.assert_array_equal(fl.dask.quantile(y, [0.5, 0.99, 1.0]).compute(), want)
    assert np.isnan(fl.dask.var(y).compute())


def test_scalar_q_and_shapes() -> None:
    a = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)
    x = da.from_array(a, chunks=2)
    got = fl.dask.quantile(x, 0.5).compute()
    assert got == np.quantile(a, 0.5) and got.dtype == np.quantile(a, 0.5).dtype
    q2 = np.array([[0.1, 0.2], [0.7, 0.9]])
    np.testing.assert_array_equal(fl.dask.quantile(x, q2).compute(), np.quantile(a, q2))
    np.testing.assert_allclose(fl.dask.quantile(x, q2, axis=1).compute(), np.quantile(a, q2, axis=1), rtol=1e-6)
    counts, edges = fl.dask.histogram(x, bins=[-1.0, 0.0, 0.5, 3.0])
    wc, we = np.histogram(a, bins=[-1.0, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(counts.compute(), wc)
    np.testing.assert_array_equal(edges.compute(), we)
    counts, edges = fl.dask.histogram(x, bins=4, range=(-1, 1))
    np.testing.assert_array_equal(counts.compute(), np.histogram(a, bins=4, range=(-1, 1))[0])


def test_lazy() -> None:
    x = da.ones(100, chunks=10)
    for r in (fl.dask.var(x), fl.dask.quantile(x, 0.5), fl.dask.standardize(x), fl.dask.histogram(x)[0]):
        assert isinstance(r, da.Array)


def test_errors_name_function_and_argument() -> None:
    x = da.ones((3, 4), chunks=2)
    with pytest.raises(TypeError, match=r"var\(\): argument 'x' must be a dask.array.Array"):
        fl.dask.var(np.ones(3))
    with pytest.raises(ValueError, match=r"sum\(\): argument 'axis' is 2, out of bounds"):
        fl.dask.sum(x, axis=2)
    with pytest.raises(TypeError, match=r"mean\(\): argument 'axis' must be an int"):
        fl.dask.mean(x, axis=(0, 1))
    with pytest.raises(ValueError, match=r"quantile\(\): argument 'q'"):
        fl.dask.quantile(x, 1.5)
    with pytest.raises(ValueError, match=r"quantile\(\): argument 'q'"):
        fl.dask.quantile(x, np.nan)
    for q in (None, "a", 0.5j):
        with pytest.raises(TypeError, match=r"^quantile\(\): argument 'q' must be a number or an array of numbers"):
            fl.dask.quantile(x, q)
    with pytest.raises(TypeError, match=r"std\(\): argument 'x' has dtype"):
        fl.dask.std(da.from_array(np.array(["a"])))
    with pytest.raises(ValueError, match=r"histogram\(\): argument 'bins'"):
        fl.dask.histogram(x, bins=0)
    with pytest.raises(ValueError, match=r"histogram\(\): argument 'bins' is too large: more bins than"):
        fl.dask.histogram(x, bins=10**400)
    ulps = da.from_array(1.0 + np.finfo(np.float64).eps * np.arange(2.0), chunks=1)
    with pytest.raises(ValueError, match=r"histogram\(\): argument 'bins' is 3: too many bins for the data range"):
        fl.dask.histogram(ulps, bins=3)[0].compute()
    with pytest.raises(ValueError, match=r"min\(\): zero-size array"):
        fl.dask.min(da.ones(0, chunks=1)).compute()
    with pytest.raises(TypeError, match=r"setup\(\): argument 'client'"):
        fl.dask.setup(object())


def test_worker_metrics(client: Any) -> None:
    fl.dask.setup(client, service_name="dask-test")
    urls = fl.dask.worker_metrics_urls(client)
    assert len(urls) == 2, urls
    x = da.random.default_rng(0).normal(size=200_000, chunks=20_000)
    assert np.isfinite(client.compute(fl.dask.var(x), sync=True))

    def service(dask_worker: Any) -> str:
        return fl.tracing.resource()["service.name"]

    assert set(client.run(service).values()) == {"dask-test"}

    def http_port(dask_worker: Any) -> int:
        return dask_worker.http_server.port

    # the worker's own Prometheus endpoint (Dask's /metrics), not one beside it
    ports = client.run(http_port)
    assert {a: int(u.rsplit(":", 1)[1].split("/")[0]) for a, u in urls.items()} == ports
    bodies = [urllib.request.urlopen(u, timeout=10).read().decode() for u in urls.values()]
    assert all("ferrolab_operations_total" in b and "dask_worker_" in b for b in bodies)
    lines = [line for b in bodies for line in b.splitlines()]
    assert any(line.startswith("ferrolab_operations_total") and 'operation="var"' in line for line in lines)
    # setting up again keeps one bridge: every ferrolab series once
    fl.dask.setup(client, service_name="dask-test")
    for u in fl.dask.worker_metrics_urls(client).values():
        body = urllib.request.urlopen(u, timeout=10).read().decode()
        assert body.count("# TYPE ferrolab_memory_usage_bytes gauge") == 1


def test_worker_spans_are_children_of_the_client_span(client: Any) -> None:
    pytest.importorskip("opentelemetry.trace", reason=f"{MISSING}opentelemetry-api (pip install -e '.[test]')")
    fl.dask.setup(client, service_name="dask-test")
    fl.tracing.configure("dask-test-client")
    try:
        x = da.random.default_rng(1).normal(size=100_000, chunks=25_000)
        with fl.tracing.span("client-run") as root:
            v = fl.dask.var(x)
        assert np.isfinite(client.compute(v, sync=True))

        def spans() -> list[dict[str, Any]]:
            return fl.tracing.finished_spans()

        worker_spans = [s for ss in client.run(spans).values() for s in ss if s["trace_id"] == root.trace_id]
        tasks = [s for s in worker_spans if s["name"] == "fl.dask.var"]
        assert len(tasks) == 4, worker_spans
        assert all(s["parent_span_id"] == root.span_id and s["parent_is_remote"] for s in tasks)
        task_ids = {s["span_id"] for s in tasks}
        ops = [s for s in worker_spans if s["name"] in ("ferrolab.mean", "ferrolab.var")]
        assert len(ops) == 8 and all(s["parent_span_id"] in task_ids for s in ops)
    finally:
        fl.tracing.shutdown()


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("ddof", [0, 1])
def test_standardize_per_axis(axis: int | None, ddof: int) -> None:
    a = np.random.default_rng(3).normal(size=(7, 9))
    x = da.from_array(a, chunks=(3, 4))
    got = fl.dask.standardize(x, axis, ddof)
    assert got.chunks == x.chunks
    np.testing.assert_allclose(got.compute(), fl.ops.standardize(a, axis, ddof), rtol=1e-12)


def test_otlp_receiver_gets_worker_spans_under_the_client_span(client: Any) -> None:
    """The whole trace through a real OTLP/HTTP receiver: the client's span and the workers' spans, linked."""
    pytest.importorskip("opentelemetry.trace", reason=f"{MISSING}opentelemetry-api (pip install -e '.[test]')")
    from test_tracing import Receiver

    with Receiver() as rcv:
        fl.dask.setup(client, service_name="dask-otlp-workers", endpoint=rcv.url)
        fl.tracing.configure("dask-otlp-client", endpoint=rcv.url)
        try:
            x = da.random.default_rng(2).normal(size=40_000, chunks=20_000)
            with fl.tracing.span("client-otlp-run") as root:
                s = fl.dask.std(x)
            assert np.isfinite(client.compute(s, sync=True))
            assert all(client.run(fl.tracing.flush).values())
            assert fl.tracing.flush()
            spans = [d for d in rcv.spans() if d["trace_id"] == root.trace_id]
        finally:
            client.run(fl.tracing.shutdown)
            fl.dask.setup(client, service_name="dask-test")  # back to in-memory spans on the workers
    by_id = {d["span_id"]: d for d in spans}
    assert by_id[root.span_id]["resource"]["service.name"] == "dask-otlp-client"
    tasks = [d for d in spans if d["name"] == "fl.dask.std"]
    assert len(tasks) == 2
    assert all(t["parent_span_id"] == root.span_id for t in tasks)
    assert {t["resource"]["service.name"] for t in tasks} == {"dask-otlp-workers"}
    ops = [d for d in spans if d["name"].startswith("ferrolab.")]
    assert ops and all(by_id[o["parent_span_id"]]["name"] == "fl.dask.std" for o in ops)
