"""fl.tracing: native spans, op child spans, opentelemetry-python parents, and OTLP/HTTP export to a receiver
running in the test (decoded with the opentelemetry-proto package)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import ferrolab as fl
import numpy as np
import pytest
from certs import Certs, make_certs
from conftest import PLATFORM
from ferrolab import _core
from opentelemetry import trace as otel_trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

# ------------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def mem() -> Iterator[None]:
    """A fresh in-memory pipeline that samples everything."""
    fl.tracing.configure("test-service", endpoint=None)
    yield
    fl.tracing.shutdown()


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {s["name"]: s for s in spans}
    assert len(out) == len(spans), "span names are not unique"
    return out


def any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(any_value(x) for x in v.array_value.values)
    return getattr(v, kind)


class Receiver:
    """An OTLP/HTTP traces receiver on 127.0.0.1 (a thread; stopped on exit)."""

    def __init__(self, status: int = 200, tls: Certs | None = None) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with receiver.lock:
                    receiver.requests.append(req)
                    receiver.paths.append(self.path)
                    receiver.content_types.append(self.headers.get("Content-Type", ""))
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.cert, tls.key)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        fl.tracing.shutdown()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def spans(self) -> list[dict[str, Any]]:
        out = []
        with self.lock:
            reqs = list(self.requests)
        for req in reqs:
            for rs in req.resource_spans:
                resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            {
                                "name": s.name,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex() or None,
                                "attributes": {kv.key: any_value(kv.value) for kv in s.attributes},
                                "status": s.status.code,
                                "events": [e.name for e in s.events],
                                "resource": resource,
                                "scope": ss.scope.name,
                            }
                        )
        return out


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------------------
# in-memory spans


def test_names_attributes_and_ids(mem: None) -> None:
    with fl.tracing.span(
        "load",
        path="/data/x.csv",
        rows=3,
        ratio=0.5,
        ok=True,
        tags=["a", "b"],
        sizes=(1, 2),
        np_float=np.float64(1.5),
        np_int=np.int64(7),
        np_array=np.array([1.0, 2.0]),
        empty=[],
    ) as s:
        assert fl.tracing.current_span() is s
        assert s.is_recording
        s.set_attribute("late", "yes")
        s.add_event("checkpoint", {"step": 1})
    assert fl.tracing.current_span() is None
    (d,) = fl.tracing.finished_spans()
    assert d["name"] == "load"
    assert d["attributes"] == {
        "path": "/data/x.csv",
        "rows": 3,
        "ratio": 0.5,
        "ok": True,
        "tags": ("a", "b"),
        "sizes": (1, 2),
        "np_float": 1.5,
        "np_int": 7,
        "np_array": (1.0, 2.0),
        "empty": (),
        "late": "yes",
    }
    assert d["trace_id"] == s.trace_id and len(d["trace_id"]) == 32 and int(d["trace_id"], 16) != 0
    assert d["span_id"] == s.span_id and len(d["span_id"]) == 16
    assert d["parent_span_id"] is None and s.parent_span_id is None
    assert d["status"] == "UNSET" and d["status_description"] is None
    assert 0 < d["start_time_ns"] <= d["end_time_ns"]
    assert d["events"][0]["name"] == "checkpoint" and d["events"][0]["attributes"] == {"step": 1}
    assert "load" in repr(s)


def test_parent_child_links(mem: None) -> None:
    with fl.tracing.span("root") as root:
        with fl.tracing.span("a") as a:
            with fl.tracing.span("a1"):
                pass
        with fl.tracing.span("b"):
            assert fl.tracing.current_span().name == "b"
        assert fl.tracing.current_span() is root
    with fl.tracing.span("other-root"):
        pass
    spans = by_name(fl.tracing.finished_spans())
    assert [s["name"] for s in fl.tracing.finished_spans()] == ["a1", "a", "b", "root", "other-root"]
    assert spans["a"]["parent_span_id"] == root.span_id
    assert spans["b"]["parent_span_id"] == root.span_id
    assert spans["a1"]["parent_span_id"] == a.span_id
    assert {spans[n]["trace_id"] for n in ("root", "a", "a1", "b")} == {root.trace_id}
    assert spans["other-root"]["trace_id"] != root.trace_id
    assert spans["other-root"]["parent_span_id"] is None


def test_op_child_spans_record_op_shapes_dtype_device(mem: None) -> None:
    x = np.ones(1000)
    fl.ops.sum(x)  # outside any span: nothing recorded
    assert fl.tracing.finished_spans() == []
    with fl.tracing.span("pipeline") as parent:
        fl.ops.sum(x)
        fl.ops.dot(np.ones(4, dtype=np.float32), np.ones(4, dtype=np.float32))
        fl.ops.matmul(np.ones((3, 4)), np.ones((4, 5)))
        fl.ops.sum(np.arange(6, dtype=np.int64).reshape(2, 3), axis=0)
        fl.ops.axpy(2.0, np.ones(5), np.ones(5))
        fl.ops.mean([1, 2, 3])  # a list is converted first: the op computes in float64
    spans = fl.tracing.finished_spans()
    ops = [s for s in spans if s["name"].startswith("ferrolab.")]
    assert [s["name"] for s in ops] == [
        "ferrolab.sum",
        "ferrolab.dot",
        "ferrolab.matmul",
        "ferrolab.sum",
        "ferrolab.axpy",
        "ferrolab.mean",
    ]
    for s in ops:
        assert s["parent_span_id"] == parent.span_id
        assert s["trace_id"] == parent.trace_id
        assert s["attributes"]["ferrolab.device"] == "cpu"
        assert s["status"] == "UNSET"
    attrs = [s["attributes"] for s in ops]
    assert attrs[0] == {
        "ferrolab.op": "sum",
        "ferrolab.shapes": ("(1000,)",),
        "ferrolab.dtype": "float64",
        "ferrolab.device": "cpu",
    }
    assert attrs[1]["ferrolab.shapes"] == ("(4,)", "(4,)") and attrs[1]["ferrolab.dtype"] == "float32"
    assert attrs[2]["ferrolab.shapes"] == ("(3, 4)", "(4, 5)")
    assert attrs[3]["ferrolab.shapes"] == ("(2, 3)",) and attrs[3]["ferrolab.dtype"] == "int64"
    assert attrs[4]["ferrolab.op"] == "axpy" and attrs[4]["ferrolab.shapes"] == ("(5,)", "(5,)")
    assert attrs[5]["ferrolab.shapes"] == ("(3,)",) and attrs[5]["ferrolab.dtype"] == "float64"


def test_op_error_marks_the_op_span(mem: None) -> None:
    with pytest.raises(ValueError):
        with fl.tracing.span("outer"):
            fl.ops.matmul(np.ones((3, 4)), np.ones((5, 2)))
    spans = by_name(fl.tracing.finished_spans())
    op = spans["ferrolab.matmul"]
    assert op["status"] == "ERROR" and "matmul()" in op["status_description"]
    assert op["events"][0]["name"] == "exception"
    assert op["events"][0]["attributes"]["exception.type"] == "ValueError"
    assert spans["outer"]["status"] == "ERROR"


def test_exception_sets_error_and_propagates(mem: None) -> None:
    with pytest.raises(ZeroDivisionError):
        with fl.tracing.span("div"):
            1 / 0  # noqa: B018
    (d,) = fl.tracing.finished_spans()
    assert d["status"] == "ERROR"
    assert d["status_description"] == "ZeroDivisionError: division by zero"
    (ev,) = d["events"]
    assert ev["name"] == "exception"
    assert ev["attributes"]["exception.type"] == "ZeroDivisionError"
    assert ev["attributes"]["exception.message"] == "division by zero"
    assert "Traceback" in ev["attributes"]["exception.stacktrace"]
    assert fl.tracing.current_span() is None


def test_span_status_events_and_record_exception(mem: None) -> None:
    with fl.tracing.span("s") as s:
        s.set_status("ok")
        s.set_status("error", "ignored: OK is final")
        s.record_exception(KeyError("k"))
    (d,) = fl.tracing.finished_spans()
    assert d["status"] == "OK"
    assert d["events"][0]["attributes"]["exception.type"] == "KeyError"
    with pytest.raises(ValueError, match=r"Span.set_status\(\): argument 'status'"):
        s.set_status("bad")


def test_status_rules_of_opentelemetry(mem: None) -> None:
    # OK is final, also against an exception leaving the block (which still adds its event)
    with pytest.raises(ValueError):
        with fl.tracing.span("ok_then_raise") as s:
            s.set_status("ok")
            raise ValueError("x")
    # setting UNSET is ignored
    with fl.tracing.span("error_then_unset") as s:
        s.set_status("error", "bad")
        s.set_status("unset")
    with fl.tracing.span("error_without_description") as s:
        s.set_status("error")
    spans = by_name(fl.tracing.finished_spans())
    assert spans["ok_then_raise"]["status"] == "OK"
    assert [e["name"] for e in spans["ok_then_raise"]["events"]] == ["exception"]
    assert (spans["error_then_unset"]["status"], spans["error_then_unset"]["status_description"]) == ("ERROR", "bad")
    assert spans["error_without_description"]["status_description"] is None  # as opentelemetry-python


class QualifiedError(Exception):
    pass


def test_exception_type_is_qualified_and_a_busy_span_keeps_its_exception_event(mem: None) -> None:
    with pytest.raises(QualifiedError):
        with fl.tracing.span("busy") as s:
            for i in range(130):
                s.add_event(f"tick{i}")
            raise QualifiedError("boom")
    (d,) = fl.tracing.finished_spans()
    # the newest 128 events, as the OpenTelemetry SDKs keep them: the exception is the last
    assert len(d["events"]) == 128
    assert d["events"][0]["name"] == "tick3" and d["events"][-1]["name"] == "exception"
    attrs = d["events"][-1]["attributes"]
    assert attrs["exception.type"] == f"{__name__}.QualifiedError"  # module and qualname, as opentelemetry-python
    assert d["status_description"] == "QualifiedError: boom"


def test_exceptions_that_are_not_errors_leave_the_status(mem: None) -> None:
    def gen() -> Iterator[int]:
        with fl.tracing.span("generator"):
            yield 1
            yield 2

    for _ in gen():
        break  # GeneratorExit closes the span

    @fl.tracing.traced
    def leave() -> None:
        sys.exit(0)

    with pytest.raises(SystemExit):
        leave()

    @fl.tracing.traced("cancelled")
    async def slow() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow(), 0.01)

    asyncio.run(main())
    spans = by_name(fl.tracing.finished_spans())
    for name in ("generator", "test_exceptions_that_are_not_errors_leave_the_status.<locals>.leave", "cancelled"):
        assert spans[name]["status"] == "UNSET", name
        assert spans[name]["events"] == [], name


def test_str_subclass_attributes_keep_their_string_value(mem: None) -> None:
    import enum

    class Color(str, enum.Enum):  # noqa: UP042 (its str() is not its value, unlike a StrEnum's)
        RED = "red"

    with fl.tracing.span("a", color=Color.RED, colors=[Color.RED, "blue"]) as s:
        s.set_attribute("late", Color.RED)
    (d,) = fl.tracing.finished_spans()
    assert d["attributes"] == {"color": "red", "colors": ("red", "blue"), "late": "red"}


def test_traced_methods_descriptors_callables_and_names(mem: None) -> None:
    import functools

    class C:
        @fl.tracing.traced
        @staticmethod
        def s(x: int) -> int:
            return x

        @staticmethod
        @fl.tracing.traced
        def s2(x: int) -> int:
            return x

        @fl.tracing.traced
        @classmethod
        def c(cls) -> str:
            return cls.__name__

        @fl.tracing.traced("named")
        @classmethod
        def c2(cls) -> str:
            return cls.__name__

    assert C().s(1) == 1 and C.s(2) == 2 and C().s2(3) == 3
    assert C.c() == "C" and C().c2() == "C"

    class Job:
        def __call__(self) -> int:
            return 1

    class AsyncJob:
        async def __call__(self) -> int:
            await asyncio.sleep(0.02)
            return 2

    def add(a: int, b: int) -> int:
        return a + b

    assert fl.tracing.traced(Job())() == 1
    assert fl.tracing.traced(functools.partial(add, 1))(2) == 3
    assert asyncio.run(fl.tracing.traced("async_job")(AsyncJob())()) == 2
    spans = fl.tracing.finished_spans()
    names = [d["name"] for d in spans]
    assert names == [
        "test_traced_methods_descriptors_callables_and_names.<locals>.C.s",
        "test_traced_methods_descriptors_callables_and_names.<locals>.C.s",
        "test_traced_methods_descriptors_callables_and_names.<locals>.C.s2",
        "test_traced_methods_descriptors_callables_and_names.<locals>.C.c",
        "named",
        "test_traced_methods_descriptors_callables_and_names.<locals>.Job",
        "test_traced_methods_descriptors_callables_and_names.<locals>.add",
        "async_job",
    ]
    # the span of an async callable covers the await, not only making the coroutine
    assert spans[-1]["end_time_ns"] - spans[-1]["start_time_ns"] >= 15_000_000


def test_a_span_exited_in_another_context_is_no_longer_current(mem: None) -> None:
    import contextvars

    ctx = contextvars.copy_context()
    a = fl.tracing.span("A")
    ctx.run(a.__enter__)
    a.__exit__(None, None, None)
    assert ctx.run(fl.tracing.current_span) is None
    with fl.tracing.span("elsewhere"):  # another span open anywhere must not make the closed one a parent
        child = ctx.run(lambda: fl.tracing.span("B").__enter__())
        child.__exit__(None, None, None)
    assert child.parent_span_id is None
    # under an open parent P, a child closed elsewhere gives way to P: the trace goes on
    ctx2 = contextvars.copy_context()
    p = fl.tracing.span("P")
    ctx2.run(p.__enter__)
    c = ctx2.run(lambda: fl.tracing.span("C"))
    ctx2.run(c.__enter__)
    c.__exit__(None, None, None)
    d = ctx2.run(lambda: fl.tracing.span("D").__enter__())
    d.__exit__(None, None, None)
    ctx2.run(lambda: p.__exit__(None, None, None))
    assert (d.parent_span_id, d.trace_id) == (p.span_id, p.trace_id)


def test_unsampled_spans_record_nothing() -> None:
    fl.tracing.configure("test-service", sample_ratio=0.0)
    try:
        with fl.tracing.span("root") as root:
            assert not root.is_recording
            assert fl.tracing.current_span() is root
            with fl.tracing.span("child") as child:
                fl.ops.sum(np.ones(10))
        assert child.trace_id == root.trace_id and child.parent_span_id == root.span_id
        assert not child.is_recording
        assert fl.tracing.finished_spans() == []
        assert fl.tracing.stats()["open"] == 0
        # an unsampled span does not look at its attributes (like OpenTelemetry's non-recording spans)
        with fl.tracing.span("x", bad={}) as s:
            s.set_attribute("ignored", [1])
    finally:
        fl.tracing.shutdown()


def test_not_configured_records_nothing() -> None:
    fl.tracing.shutdown()
    fl.tracing.finished_spans(clear=True)
    with fl.tracing.span("x") as s:
        fl.ops.sum(np.ones(3))
    assert not s.is_recording
    assert fl.tracing.finished_spans() == []
    assert fl.tracing.stats()["mode"] == "off"


def test_threads_keep_separate_current_spans(mem: None) -> None:
    barrier = threading.Barrier(2)
    seen: dict[str, Any] = {}
    errors: list[BaseException] = []

    def work(tag: str) -> None:
        try:
            assert fl.tracing.current_span() is None  # a new thread starts with no current span
            with fl.tracing.span(f"t-{tag}") as s:
                barrier.wait()  # both spans open at once
                with fl.tracing.span(f"t-{tag}-child"):
                    fl.ops.sum(np.ones(8))
                    seen[tag] = fl.tracing.current_span().name
                barrier.wait()
                assert fl.tracing.current_span() is s
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    with fl.tracing.span("main") as main:
        threads = [threading.Thread(target=work, args=(t,)) for t in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert fl.tracing.current_span() is main
    assert not errors, errors
    assert seen == {"a": "t-a-child", "b": "t-b-child"}
    spans = fl.tracing.finished_spans()
    names = {s["span_id"]: s["name"] for s in spans}
    parents = {s["name"]: names.get(s["parent_span_id"]) for s in spans if s["name"] != "ferrolab.sum"}
    assert parents == {"t-a": None, "t-b": None, "t-a-child": "t-a", "t-b-child": "t-b", "main": None}
    op_parents = sorted(names[s["parent_span_id"]] for s in spans if s["name"] == "ferrolab.sum")
    assert op_parents == ["t-a-child", "t-b-child"]


def test_asyncio_tasks_keep_separate_current_spans(mem: None) -> None:
    async def task(tag: str) -> str:
        with fl.tracing.span(f"task-{tag}"):
            await asyncio.sleep(0)  # the other task runs here with its own current span
            with fl.tracing.span(f"task-{tag}-inner"):
                await asyncio.sleep(0)
                fl.ops.sum(np.ones(4))
                return fl.tracing.current_span().name

    async def main() -> list[str]:
        with fl.tracing.span("main"):
            return await asyncio.gather(task("a"), task("b"))

    assert asyncio.run(main()) == ["task-a-inner", "task-b-inner"]
    spans = fl.tracing.finished_spans()
    names = {s["span_id"]: s["name"] for s in spans}
    parent = {s["name"]: names.get(s["parent_span_id"]) for s in spans if s["name"] != "ferrolab.sum"}
    assert parent == {
        "task-a-inner": "task-a",
        "task-b-inner": "task-b",
        "task-a": "main",
        "task-b": "main",
        "main": None,
    }
    assert sorted(names[s["parent_span_id"]] for s in spans if s["name"] == "ferrolab.sum") == [
        "task-a-inner",
        "task-b-inner",
    ]


@pytest.mark.parametrize("public_api", [False, True])
def test_opentelemetry_python_span_is_the_parent(mem: None, public_api: bool) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    _core._tracing_otel_path(public_api)
    try:
        with tracer.start_as_current_span("otel-outer") as outer:
            with fl.tracing.span("fl-inner") as inner:
                with fl.tracing.span("fl-leaf"):
                    fl.ops.sum(np.ones(3))
        assert _core._tracing_otel_path() == ("public" if public_api else "fast")
    finally:
        _core._tracing_otel_path(False)
    octx = outer.get_span_context()
    spans = by_name(fl.tracing.finished_spans())
    assert spans["fl-inner"]["trace_id"] == format(octx.trace_id, "032x")
    assert spans["fl-inner"]["parent_span_id"] == format(octx.span_id, "016x")
    assert spans["fl-inner"]["parent_is_remote"]
    # below a ferrolab span, the ferrolab span is the parent
    assert spans["fl-leaf"]["parent_span_id"] == inner.span_id
    assert not spans["fl-leaf"]["parent_is_remote"]
    assert spans["ferrolab.sum"]["trace_id"] == format(octx.trace_id, "032x")
    # outside the OpenTelemetry span: a new root again
    with fl.tracing.span("after"):
        pass
    assert fl.tracing.finished_spans()[-1]["parent_span_id"] is None


def test_unsampled_opentelemetry_parent_is_followed(mem: None) -> None:
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with tracer.start_as_current_span("otel-unsampled") as outer:
        assert outer.get_span_context().is_valid
        with fl.tracing.span("fl") as s:
            pass
    assert not s.is_recording
    assert s.trace_id == format(outer.get_span_context().trace_id, "032x")
    assert fl.tracing.finished_spans() == []
    # an invalid (no-op) OpenTelemetry span is no parent
    with otel_trace.use_span(otel_trace.INVALID_SPAN):
        with fl.tracing.span("root") as r:
            pass
    assert r.is_recording and r.parent_span_id is None


def test_traced_sync_async_and_bare(mem: None) -> None:
    @fl.tracing.traced()
    def plain(a: int, b: int = 1) -> int:
        """Adds."""
        return a + b

    @fl.tracing.traced("named")
    async def coro(x: int) -> int:
        await asyncio.sleep(0)
        return plain(x)

    @fl.tracing.traced
    def bare() -> str:
        raise RuntimeError("boom")

    assert plain(1, b=2) == 3
    assert plain.__doc__ == "Adds." and plain.__name__ == "plain"
    assert asyncio.run(coro(4)) == 5
    with pytest.raises(RuntimeError, match="boom"):
        bare()
    spans = fl.tracing.finished_spans()
    names = [s["name"] for s in spans]
    qual = "test_traced_sync_async_and_bare.<locals>."
    assert names == [qual + "plain", qual + "plain", "named", qual + "bare"]
    assert spans[1]["parent_span_id"] == spans[2]["span_id"]
    assert spans[3]["status"] == "ERROR"


def test_a_span_left_open_in_an_ended_context_is_collected(mem: None) -> None:
    # an open span's reset token refers to the context that holds the span: left open (entered, never exited) in
    # a context that ends, the span, the context and what the context holds form a cycle the collector must free
    import contextvars
    import gc
    import weakref

    class Payload:
        pass

    refs = []
    open_before = fl.tracing.stats()["open"]

    def run() -> None:
        span = fl.tracing.span("left open")
        span.__enter__()
        payload = Payload()
        refs.append(weakref.ref(payload))
        contextvars.ContextVar("payload").set(payload)

    for _ in range(50):
        contextvars.copy_context().run(run)
    gc.collect()
    assert all(r() is None for r in refs)
    assert fl.tracing.stats()["open"] == open_before
    assert gc.is_tracked(fl.tracing.span("tracked"))


def test_bad_arguments_name_the_function_and_argument() -> None:
    with pytest.raises(TypeError, match=r"^span\(\): argument 'name' must be str, got int$"):
        fl.tracing.span(1)  # type: ignore[arg-type]
    fl.tracing.configure("test-service")
    try:
        with pytest.raises(TypeError, match=r"span\(\): attribute 'd' must be str, bool, int, float or a sequence"):
            with fl.tracing.span("x", d={"a": 1}):
                pass
        with pytest.raises(TypeError, match=r"span\(\): attribute 'n' .* got NoneType"):
            with fl.tracing.span("x", n=None):
                pass
        with pytest.raises(TypeError, match=r"span\(\): attribute 'm' must be a sequence of one type"):
            with fl.tracing.span("x", m=[1, "a"]):
                pass
        with pytest.raises(ValueError, match=r"span\(\): attribute 'big' .* int64"):
            with fl.tracing.span("x", big=2**70):
                pass
        with fl.tracing.span("ok") as s:
            with pytest.raises(TypeError, match=r"Span.set_attribute\(\): argument 'key' must be str"):
                s.set_attribute(1, 2)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"Span.set_attribute\(\): attribute 'v'"):
                s.set_attribute("v", object())
            with pytest.raises(TypeError, match=r"Span.add_event\(\): argument 'attributes' must be a mapping"):
                s.add_event("e", [1])  # type: ignore[arg-type]
            with pytest.raises(RuntimeError, match="entered only once"):
                s.__enter__()
        assert fl.tracing.current_span() is None
    finally:
        fl.tracing.shutdown()
    with pytest.raises(TypeError, match=r"^configure\(\): argument 'service_name' must be str, got int$"):
        fl.tracing.configure(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^configure\(\): argument 'sample_ratio' must be a float, got str$"):
        fl.tracing.configure("s", sample_ratio="1")  # type: ignore[arg-type]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"^configure\(\): argument 'sample_ratio' is .*expected a number in"):
            fl.tracing.configure("s", sample_ratio=bad)
    with pytest.raises(ValueError, match=r"configure\(\): argument 'headers' has the name \"bad name\""):
        fl.tracing.configure("s", endpoint="https://collector:4318", headers={"bad name": "x"})
    with pytest.raises(ValueError, match=r"configure\(\): argument 'headers' has a bad value for \"x-k\""):
        fl.tracing.configure("s", endpoint="https://collector:4318", headers={"x-k": "line\nbreak"})
    with pytest.raises(TypeError, match=r"configure\(\): argument 'headers' must map str"):
        fl.tracing.configure("s", endpoint="https://collector:4318", headers={"x-k": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"configure\(\): argument 'ca_file' is .*no-such-ca.pem"):
        fl.tracing.configure("s", endpoint="https://collector:4318", ca_file="no-such-ca.pem")
    with pytest.raises(ValueError, match=r"configure\(\): argument 'endpoint' .*expected an OTLP/HTTP collector URL"):
        fl.tracing.configure("s", endpoint="collector:4318")
    with pytest.raises(ValueError, match=r"configure\(\): argument 'service_name' is empty"):
        fl.tracing.configure(" ")
    with pytest.raises(TypeError, match=r"^configure\(\): argument 'endpoint' must be str or None, got int$"):
        fl.tracing.configure("s", endpoint=4318)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^traced\(\): argument 'name' must be str or None, got int$"):
        fl.tracing.traced(3)  # type: ignore[call-overload]

    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"traced\(\): .* is a generator function"):
        fl.tracing.traced()(gen)
    with pytest.raises(ValueError, match=r"shutdown\(\): argument 'timeout'"):
        fl.tracing.shutdown(-1)
    for wrong in (None, "5", "abc"):
        with pytest.raises(TypeError, match=r"^shutdown\(\): argument 'timeout' must be a number"):
            fl.tracing.shutdown(wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^shutdown\(\): argument 'timeout' is inf"):
        fl.tracing.shutdown(10**400)
    with pytest.raises(ValueError, match=r"^configure\(\): argument 'sample_ratio' is an int of 1329 bits"):
        fl.tracing.configure("s", sample_ratio=10**400)
    with pytest.raises(TypeError, match=r"^finished_spans\(\): argument 'clear' must be a bool, got int"):
        fl.tracing.finished_spans(clear=1)  # type: ignore[arg-type]
    with fl.tracing.span("unsampled, not configured") as s:
        with pytest.raises(TypeError, match=r"^Span.set_status\(\): argument 'status' must be a str, got int"):
            s.set_status(1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^Span.set_status\(\): argument 'description' must be a str"):
            s.set_status("error", 5)  # type: ignore[arg-type]


def test_memory_buffer_keeps_the_newest_10000() -> None:
    fl.tracing.configure("test-service")
    try:
        before = fl.tracing.stats()
        for i in range(10_050):
            with fl.tracing.span("s", i=i):
                pass
        spans = fl.tracing.finished_spans()
        assert len(spans) == 10_000
        assert spans[0]["attributes"]["i"] == 50 and spans[-1]["attributes"]["i"] == 10_049
        after = fl.tracing.stats()
        assert after["evicted"] - before["evicted"] == 50
        assert after["ended"] - before["ended"] == 10_050
    finally:
        fl.tracing.shutdown()


def test_reconfigure_clears_and_resource() -> None:
    fl.tracing.configure("a")
    with fl.tracing.span("x"):
        pass
    fl.tracing.configure("b", service_version="2.0", environment="prod")
    try:
        assert fl.tracing.finished_spans() == []
        r = fl.tracing.resource()
        assert r["service.name"] == "b"
        assert r["service.version"] == "2.0"
        assert r["deployment.environment"] == "prod"
        assert r["telemetry.sdk.language"] == "rust"
    finally:
        fl.tracing.shutdown()
    assert fl.tracing.resource() == {}


# ------------------------------------------------------------------------------------------------------------
# OTLP/HTTP export


def test_otlp_export_names_attributes_links_resource() -> None:
    with Receiver() as rcv:
        fl.tracing.configure(
            "otlp-service", service_version="1.2.3", environment="test", endpoint=rcv.url, sample_ratio=1.0
        )
        assert fl.tracing.stats()["endpoint"] == rcv.url + "/v1/traces"
        with fl.tracing.span("request", route="/sum", n=1000, ratio=0.5, ok=True, tags=("x", "y")) as root:
            with fl.tracing.span("compute") as compute:
                fl.ops.sum(np.ones(1000))
        with pytest.raises(KeyError):
            with fl.tracing.span("failing"):
                raise KeyError("missing")
        assert fl.tracing.finished_spans() == []  # exported, not kept in memory
        assert fl.tracing.flush()
        spans = by_name(rcv.spans())
        assert set(rcv.paths) == {"/v1/traces"}
        assert set(rcv.content_types) == {"application/x-protobuf"}
    assert set(spans) == {"request", "compute", "ferrolab.sum", "failing"}
    req = spans["request"]
    assert req["attributes"] == {"route": "/sum", "n": 1000, "ratio": 0.5, "ok": True, "tags": ("x", "y")}
    assert req["span_id"] == root.span_id and req["trace_id"] == root.trace_id and req["parent_span_id"] is None
    assert spans["compute"]["parent_span_id"] == root.span_id
    assert spans["ferrolab.sum"]["parent_span_id"] == compute.span_id
    assert spans["ferrolab.sum"]["attributes"]["ferrolab.shapes"] == ("(1000,)",)
    assert spans["ferrolab.sum"]["attributes"]["ferrolab.dtype"] == "float64"
    assert {s["trace_id"] for n, s in spans.items() if n != "failing"} == {root.trace_id}
    assert spans["failing"]["status"] == 2  # STATUS_CODE_ERROR
    assert spans["failing"]["events"] == ["exception"]
    res = req["resource"]
    assert res["service.name"] == "otlp-service"
    assert res["service.version"] == "1.2.3"
    assert res["deployment.environment"] == "test"
    assert req["scope"] == "ferrolab"


def test_otlp_endpoint_with_a_query_gets_the_path_before_it() -> None:
    with Receiver() as rcv:
        fl.tracing.configure("q", endpoint=rcv.url + "?tenant=a")
        assert fl.tracing.stats()["endpoint"] == rcv.url + "/v1/traces?tenant=a"
        with fl.tracing.span("x"):
            pass
        assert fl.tracing.flush()
        assert rcv.paths == ["/v1/traces?tenant=a"]


def test_otlp_over_https_with_headers(tmp_path, monkeypatch) -> None:
    certs = make_certs(tmp_path)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-env-tenant=acme,x-shared=from-env")
    with Receiver(tls=certs) as rcv:
        assert rcv.url.startswith("https://")
        fl.tracing.configure(
            "tls-service",
            endpoint=rcv.url,
            headers={"authorization": "Bearer s3cret", "x-shared": "from-arg"},
            ca_file=certs.ca,
        )
        with fl.tracing.span("secure") as s:
            pass
        assert fl.tracing.flush()
        spans = by_name(rcv.spans())
        assert spans["secure"]["trace_id"] == s.trace_id
        h = rcv.headers[0]
        assert h["authorization"] == "Bearer s3cret"
        assert h["x-env-tenant"] == "acme"
        assert h["x-shared"] == "from-env"  # the environment wins on a clash (as in opentelemetry-otlp)


def test_otlp_https_refuses_an_unknown_certificate(tmp_path, monkeypatch) -> None:
    certs = make_certs(tmp_path)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_CERTIFICATE", raising=False)
    with Receiver(tls=certs) as rcv:
        # the platform's trust store does not know the test CA: nothing may be delivered
        fl.tracing.configure("tls-untrusted", endpoint=rcv.url)
        with fl.tracing.span("rejected"):
            pass
        assert not fl.tracing.flush()
        assert fl.tracing.stats()["export_failures"] >= 1
        assert rcv.spans() == []
        # the CA from the environment variable is trusted
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(certs.ca))
        fl.tracing.configure("tls-env-ca", endpoint=rcv.url)
        with fl.tracing.span("accepted"):
            pass
        assert fl.tracing.flush()
        assert [s["name"] for s in rcv.spans()] == ["accepted"]


def test_otlp_sampling_ratio_is_honoured() -> None:
    n = 2000
    with Receiver() as rcv:
        fl.tracing.configure("sampled", endpoint=rcv.url, sample_ratio=0.25)
        for i in range(n):
            with fl.tracing.span("root", i=i):
                with fl.tracing.span("child"):
                    pass
        assert fl.tracing.flush()
        spans = rcv.spans()
    roots = [s for s in spans if s["name"] == "root"]
    children = [s for s in spans if s["name"] == "child"]
    # Binomial(2000, 0.25): mean 500, sd 19.4; 7 sd either side cannot flake
    assert 364 <= len(roots) <= 636, len(roots)
    # children follow their parent's decision: exactly the sampled roots have their child exported
    root_ids = {s["span_id"] for s in roots}
    assert len(children) == len(roots)
    assert {c["parent_span_id"] for c in children} == root_ids


def test_shutdown_delivers_everything() -> None:
    with Receiver() as rcv:
        fl.tracing.configure("shutdown", endpoint=rcv.url)
        before = fl.tracing.stats()
        for i in range(1500):  # three batches of 512 at most
            with fl.tracing.span("s", i=i):
                pass
        assert fl.tracing.shutdown()
        got = sorted(s["attributes"]["i"] for s in rcv.spans())
        after = fl.tracing.stats()
    assert got == list(range(1500))
    assert after["exported"] - before["exported"] == 1500
    assert after["dropped"] == before["dropped"]


def test_unreachable_collector_never_blocks_and_counts_drops() -> None:
    fl.tracing.configure("dead", endpoint=f"http://127.0.0.1:{closed_port()}")
    before = fl.tracing.stats()
    n = 20_000
    t0 = time.monotonic()
    for _ in range(n):
        with fl.tracing.span("s"):
            pass
    # sanity bound only (the spans never wait on the network)
    assert time.monotonic() - t0 < 30
    assert fl.tracing.flush() is False
    fl.tracing.shutdown()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # a shutdown that timed out still finishes in the background
        after = fl.tracing.stats()
        if after["dropped"] - before["dropped"] + after["exported"] - before["exported"] >= n:
            break
        time.sleep(0.05)
    assert after["ended"] - before["ended"] == n
    assert after["exported"] == before["exported"]
    assert after["dropped"] - before["dropped"] == n
    assert after["export_failures"] > before["export_failures"]
    assert fl.tracing.dropped_spans() >= n


def test_collector_error_status_counts_failures() -> None:
    with Receiver(status=400) as rcv:  # a non-retryable rejection
        fl.tracing.configure("rejected", endpoint=rcv.url)
        before = fl.tracing.stats()
        for _ in range(10):
            with fl.tracing.span("s"):
                pass
        assert fl.tracing.flush() is False
        after = fl.tracing.stats()
        assert len(rcv.spans()) == 10  # delivered, but the collector said no
    assert after["dropped"] - before["dropped"] == 10
    assert after["export_failures"] - before["export_failures"] >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason=PLATFORM + "needs fork")
def test_forked_child_exports_through_its_own_pipeline() -> None:
    with Receiver() as rcv:
        fl.tracing.configure("forked", endpoint=rcv.url)
        with fl.tracing.span("parent-before-fork"):
            pass
        pid = os.fork()
        if pid == 0:  # child: the export thread did not survive the fork; the pipeline is rebuilt
            code = 1
            try:
                with fl.tracing.span("in-child"):
                    pass
                code = 0 if fl.tracing.flush() else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert fl.tracing.flush()
        names = sorted(s["name"] for s in rcv.spans())
    assert names == ["in-child", "parent-before-fork"]


FORKED_SHUTDOWN = """
import os, sys, time, ferrolab as fl
fl.tracing.configure("forked", endpoint=sys.argv[1])
with fl.tracing.span("parent"):
    pass
fl.tracing.flush()
results = {}
for mode in ("span+shutdown", "shutdown", "span+exit"):
    pid = os.fork()
    if pid == 0:
        if mode.startswith("span"):
            with fl.tracing.span("child"):
                pass
        if mode.endswith("shutdown"):
            t0 = time.monotonic()
            ok = fl.tracing.shutdown(3.0)
            os._exit(0 if ok and time.monotonic() - t0 < 2.5 else 3)
        sys.exit(0)  # the atexit hook shuts the pipeline down
    _, status = os.waitpid(pid, 0)
    results[mode] = os.waitstatus_to_exitcode(status)
print(results)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason=PLATFORM + "needs fork")
def test_forked_child_shuts_down_without_the_parents_thread(tmp_path: Path) -> None:
    # the pipeline inherited through fork has no export thread: shutting it down (explicitly, at exit, after a
    # rebuild) neither waits for it nor joins a thread id of the parent (a PanicException in the SDK before)
    script = tmp_path / "forked_shutdown.py"
    script.write_text(FORKED_SHUTDOWN)
    with Receiver() as rcv:
        proc = subprocess.run(
            [sys.executable, str(script), rcv.url], capture_output=True, text=True, timeout=120
        )
        names = sorted(s["name"] for s in rcv.spans())
    assert "panicked" not in proc.stderr and "PanicException" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "{'span+shutdown': 0, 'shutdown': 0, 'span+exit': 0}", proc.stdout
    assert names == ["child", "child", "parent"]


@contextmanager
def _no_span_open() -> Iterator[None]:
    yield
    assert fl.tracing.stats()["open"] == 0


def test_no_span_left_open() -> None:
    with _no_span_open():
        fl.tracing.configure("x")
        with fl.tracing.span("a"):
            pass
        fl.tracing.shutdown()


@pytest.mark.bench
def test_bench_tracing_smoke(tmp_path: Path) -> None:
    """The side-by-side benchmark runs in its smoke mode, so it cannot rot (no timing is asserted)."""
    bench = Path(__file__).resolve().parent.parent / "benches" / "bench_tracing.py"
    out = tmp_path / "t.json"
    proc = subprocess.run(
        [sys.executable, str(bench), "--smoke", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True
    cases = [r["case"] for r in doc["rows"]]
    assert cases == [
        "span sampled",
        "span unsampled",
        "ops.sum(1e3) in sampled span",
        "ops.sum(1e3) in unsampled span",
    ]
    for r in doc["rows"]:
        assert r["peer_s"] > 0 and r["ferrolab_s"] > 0
        assert r["ratio"] == r["peer_s"] / r["ferrolab_s"]
