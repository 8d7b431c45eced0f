"""W3C trace context on every route, and OpenTelemetry spans (request, compile, execute,
store) when a tracer is configured."""

from __future__ import annotations

import logging

import orjson
import pytest

from service.runtime import tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEADER = f"00-{TRACE}-{PARENT}-01"
SIGMOID = {"expression": "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))",
           "values": {"w0": 2.0, "x0": -1.0, "w1": -3.0, "x1": -2.0, "w2": -3.0}}


@pytest.mark.parametrize("header,expected", [
    (HEADER, (TRACE, PARENT, "01")),
    (f"00-{TRACE}-{PARENT}-00", (TRACE, PARENT, "00")),
    (f"  {HEADER} ", (TRACE, PARENT, "01")),  # optional whitespace
    (f"01-{TRACE}-{PARENT}-01-later-fields", (TRACE, PARENT, "01")),  # a future version
    (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 has exactly four fields
    (f"ff-{TRACE}-{PARENT}-01", None),  # version ff is invalid
    (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero trace id
    (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
    (f"00-{TRACE.upper()}-{PARENT}-01", None),  # lowercase hex only
    (f"00-{TRACE[:-1]}-{PARENT}-01", None),
    ("", None), (None, None), ("garbage", None), ("0" * 10_000, None),
])
def test_parse_traceparent(header, expected):
    assert tracing.parse_traceparent(header) == expected


def _access_lines(caplog):
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gradserve.access"]


@pytest.mark.parametrize("gateway", [True, False])
@pytest.mark.parametrize("path,body,method", [
    ("/v1/gradients", SIGMOID, "POST"),  # the gateway's route (or Flask's, gateway off)
    ("/v1/gradients", {"expression": "x +"}, "POST"),  # an error answer
    ("/healthz", None, "GET"),
])
def test_trace_id_in_the_access_line_and_the_answer(make_app, caplog, gateway, path, body,
                                                     method):
    client = make_app(gateway=gateway).test_client()
    with caplog.at_level(logging.INFO, logger="gradserve.access"):
        resp = client.open(path, method=method, json=body, headers={"traceparent": HEADER})
    (line,) = _access_lines(caplog)
    assert line["trace_id"] == TRACE
    version, trace_id, span_id, flags = resp.headers["traceresponse"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert len(span_id) == 16 and span_id != PARENT


@pytest.mark.parametrize("header", [None, "garbage", f"ff-{TRACE}-{PARENT}-01"])
def test_no_valid_traceparent_no_trace(make_app, caplog, header):
    client = make_app().test_client()
    headers = {"traceparent": header} if header else {}
    with caplog.at_level(logging.INFO, logger="gradserve.access"):
        resp = client.post("/v1/gradients", json=SIGMOID, headers=headers)
    assert resp.status_code == 200
    (line,) = _access_lines(caplog)
    assert line["trace_id"] is None
    assert "traceresponse" not in resp.headers


def test_configure_needs_the_endpoint():
    assert tracing.configure({}) is False
    assert tracing.TRACER is None


def test_configure_exports_to_the_endpoint(monkeypatch):
    monkeypatch.setattr(tracing, "TRACER", None)
    assert tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}) is True
    assert tracing.TRACER is not None
    tracing.use_tracer(None)


@pytest.fixture
def spans():
    """An SDK tracer exporting to memory, for the test's duration."""
    from opentelemetry.sdk import trace as sdk
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer(provider.get_tracer("test"))
    try:
        yield exporter
    finally:
        tracing.use_tracer(None)


@pytest.mark.parametrize("gateway", [True, False])
def test_spans_request_compile_execute_store(make_app, spans, gateway):
    client = make_app(gateway=gateway).test_client()
    gid = client.post("/v1/graphs", json={"expression": SIGMOID["expression"]},
                      headers={"traceparent": HEADER}).get_json()["graph_id"]
    resp = client.post(f"/v1/graphs/{gid}/gradients", json={"values": SIGMOID["values"]},
                       headers={"traceparent": HEADER})
    assert resp.status_code == 200
    finished = spans.get_finished_spans()
    names = [s.name for s in finished]
    assert names.count("request") == 2
    assert {"compile", "store", "execute"} <= set(names), names
    requests = [s for s in finished if s.name == "request"]
    for s in finished:
        assert f"{s.context.trace_id:032x}" == TRACE, s.name
        if s.name == "request":  # a child of the caller's span
            assert f"{s.parent.span_id:016x}" == PARENT
        else:  # inside one of our request spans
            assert s.parent.span_id in {r.context.span_id for r in requests}, s.name
    # The answer names our request span.
    last = [s for s in requests if s.attributes["http.route"].endswith("/gradients")][0]
    assert resp.headers["traceresponse"] == f"00-{TRACE}-{last.context.span_id:016x}-01"
    assert last.attributes["http.response.status_code"] == 200


def test_a_request_without_traceparent_starts_a_trace(make_app, spans):
    client = make_app().test_client()
    resp = client.post("/v1/gradients", json=SIGMOID)
    (req,) = [s for s in spans.get_finished_spans() if s.name == "request"]
    assert req.parent is None
    assert resp.headers["traceresponse"] == (f"00-{req.context.trace_id:032x}-"
                                             f"{req.context.span_id:016x}-01")
